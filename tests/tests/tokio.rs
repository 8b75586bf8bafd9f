//! Every scenario against the tokio runtime.

haul_tests::all_scenarios!(haul_tests::Tokio);
haul_tests::batch_scenarios!(haul_tests::Tokio);

/// A multi-threaded tokio runtime with `workers` threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// A transfer whose runtime shut down mid-download ends with `ClientStopped`, not
/// `Cancelled` (nobody cancelled it), and nothing is committed.
#[test]
fn a_transfer_whose_runtime_shut_down_ends_with_client_stopped() {
    use haul_core::{Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    origin.route(
        "/s.bin",
        haul_tests::body(5, 3 << 20),
        Behavior::Stall { after: 1 << 20 },
    );
    let dir = tempfile::TempDir::new().unwrap();
    let dest = dir.path().join("s.bin");
    let runtime = runtime(1);
    let client = haul_async::Client::with_runtime(
        haul_tokio::Tokio::new(runtime.handle().clone()),
        haul_tests::fast_config(),
    )
    .unwrap();
    let mut transfer = client.start(Download::new(&origin.url("/s.bin"), &dest).unwrap());
    runtime.block_on(async {
        use futures_util::StreamExt;
        while let Some(ev) = transfer.next().await {
            if matches!(ev, Event::Progress { bytes, .. } if bytes >= 1 << 20) {
                break;
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let result = smol::block_on(transfer.result());
    assert!(
        matches!(result, Err(DownloadError::ClientStopped)),
        "{result:?}"
    );
    assert!(!dest.exists(), "nothing committed");
}

/// One destination file spelled two ways (`d/x/../f`, or through a symbolic link to `d`)
/// is written by one download at a time: while one downloads to `d/f`, another to the
/// other spelling fails with `SameFileInUse` naming it and changes nothing of the first
/// one's file; once the first is gone, the other spelling downloads normally. Small files
/// (written unnamed) and large ones (named partials) alike.
#[test]
fn a_destination_spelled_two_ways_is_written_by_one_download_at_a_time() {
    use futures_util::StreamExt;
    use haul_core::{Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    for len in [64 << 10, 3 << 20] {
        let origin = Origin::start().unwrap();
        let first = haul_tests::body(1, len);
        let second = haul_tests::body(2, len);
        origin.route(
            "/first",
            first.clone(),
            Behavior::Stall {
                after: len as u64 / 2,
            },
        );
        origin.route("/second", second.clone(), Behavior::Normal);
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("d/x")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("d"), dir.path().join("link")).unwrap();
        let runtime = runtime(2);
        runtime.block_on(async {
            let client = haul_tokio::Client::new(haul_tests::fast_config()).unwrap();
            let dest = dir.path().join("d/f");
            let mut writing = client.start(Download::new(&origin.url("/first"), &dest).unwrap());
            while let Some(ev) = writing.next().await {
                if matches!(ev, Event::Progress { bytes, .. } if bytes >= len as u64 / 2) {
                    break;
                }
            }
            let spellings = [dir.path().join("d/x/../f"), dir.path().join("link/f")];
            for other in &spellings {
                let d = Download::new(&origin.url("/second"), other).unwrap();
                match client.download(d).await {
                    Err(DownloadError::SameFileInUse { path, detail }) => {
                        assert_eq!(&path, other);
                        assert!(detail.contains("name one file"), "{detail}");
                    }
                    result => panic!("{len} bytes, {}: {result:?}", other.display()),
                }
            }
            assert!(!dest.exists(), "nothing committed at {}", dest.display());
            // The first download was not disturbed: it is still at its half.
            let stats = client.stats().await;
            assert_eq!(stats.active, 1, "{stats:?}");
            writing.cancel();
            let _ = writing.result().await;
            let d = Download::new(&origin.url("/second"), &spellings[1]).unwrap();
            client
                .download(d)
                .await
                .expect("free once the first is gone");
            assert_eq!(std::fs::read(&dest).unwrap(), second);
        });
        let mut left: Vec<_> = std::fs::read_dir(dir.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["f", "x"], "{len} bytes: no partial or state left");
    }
}

/// A transfer tells its job's id once its first event was taken (it could only be read off
/// that event), and a download started after it may then depend on it.
#[test]
fn a_transfer_tells_its_job_once_its_first_event_was_taken() {
    use futures_util::StreamExt;
    use haul_core::{Download, Event};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    origin.route("/a", haul_tests::body(7, 10_000), Behavior::Normal);
    origin.route("/b", haul_tests::body(8, 10_000), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let runtime = runtime(2);
    runtime.block_on(async {
        let client = haul_tokio::Client::new(haul_tests::fast_config()).unwrap();
        let mut first =
            client.start(Download::new(&origin.url("/a"), dir.path().join("a")).unwrap());
        assert_eq!(first.job(), None);
        let ev = first.next().await.expect("an event");
        assert!(matches!(ev, Event::Queued { .. }), "{ev:?}");
        assert_eq!(first.job(), ev.job());
        let job = first.job().expect("known");
        let second = Download::new(&origin.url("/b"), dir.path().join("b"))
            .unwrap()
            .after(job);
        let b = client.start(second);
        first.await.expect("a");
        b.await.expect("b, after a");
    });
}
