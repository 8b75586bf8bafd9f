//! Every scenario against the blocking runtime.

haul_tests::all_scenarios!(haul_tests::Blocking);
haul_tests::batch_scenarios!(haul_tests::Blocking);

/// An application callback that panics ends its call (the panic reaches the caller) and its
/// downloads: the client goes on, a later call sees only its own jobs' events, and the
/// abandoned download's destination is free again.
#[test]
fn a_panicking_callback_ends_its_call_and_its_jobs_and_the_client_goes_on() {
    use haul_core::{Download, Event};
    use haul_origin::{Behavior, Origin};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    let slow = haul_tests::body(1, 2 << 20);
    origin.route(
        "/slow",
        slow.clone(),
        Behavior::Trickle {
            bytes_per_sec: 1_000_000,
        },
    );
    origin.route("/ok", haul_tests::body(2, 100_000), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let client =
        std::sync::Arc::new(haul_blocking::Client::new(haul_tests::fast_config()).unwrap());
    let dest = dir.path().join("slow");
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        client.download(Download::new(&origin.url("/slow"), &dest).unwrap(), |e| {
            if matches!(e, Event::Progress { .. }) {
                panic!("the application's callback fails");
            }
        })
    }));
    assert!(unwound.is_err(), "the panic reaches the caller");
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, url, ok_dest) = (client.clone(), origin.url("/ok"), dir.path().join("ok"));
    std::thread::spawn(move || {
        let mut jobs = std::collections::BTreeSet::new();
        let result = c.download(Download::new(&url, &ok_dest).unwrap(), |e| {
            jobs.extend(e.job());
        });
        let _ = tx.send((result.map(|o| o.size), jobs));
    });
    let (result, jobs) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the next call ends");
    assert_eq!(result.unwrap(), 100_000);
    assert_eq!(jobs.len(), 1, "only its own job's events: {jobs:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, url) = (client.clone(), origin.url("/slow"));
    std::thread::spawn(move || {
        let _ = tx.send(
            c.download(Download::new(&url, &dest).unwrap(), |_| {})
                .map(|o| o.size),
        );
    });
    let again = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the same destination again ends");
    assert_eq!(again.unwrap(), slow.len() as u64);
}

/// Cancelling a long call (more downloads than run at once) ends every download of it; with
/// `CancelMode::KeepPartial` the partials stay for resume, with `CancelMode::Discard` none
/// does.
#[test]
fn cancelling_a_long_call_ends_every_download_and_discard_leaves_no_partial() {
    use haul_core::{CancelMode, Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route(
        "/stall",
        haul_tests::body(3, 2 << 20),
        Behavior::Stall { after: 1_500_000 },
    );
    for mode in [CancelMode::KeepPartial, CancelMode::Discard] {
        let dir = tempfile::TempDir::new().unwrap();
        let mut config = haul_tests::fast_config();
        config.max_active_jobs = 2;
        config.idle_timeout = Duration::from_secs(600);
        let client = haul_blocking::Client::new(config).unwrap();
        let cancel = client.cancel_handle();
        let downloads: Vec<Download> = (0..200)
            .map(|n| {
                Download::new(&origin.url("/stall"), dir.path().join(format!("f{n}"))).unwrap()
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let results = client.download_many(downloads, |e| {
                    if matches!(e, Event::Progress { bytes, .. } if *bytes >= 1_000_000) {
                        started.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                });
                let _ = tx.send(results);
            });
            while !started.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            cancel.cancel_with(mode);
            let results = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the cancelled call returns");
            assert_eq!(results.len(), 200);
            assert!(
                results
                    .iter()
                    .all(|r| matches!(r, Err(DownloadError::Cancelled))),
                "{mode:?}: every download is cancelled"
            );
        });
        let parts = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".haul-part"))
            })
            .count();
        match mode {
            CancelMode::KeepPartial => assert!(parts >= 1, "the partials stay for resume"),
            CancelMode::Discard => assert_eq!(parts, 0, "no partial stays"),
        }
    }
}
