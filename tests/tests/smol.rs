//! Every scenario against the smol runtime.

haul_tests::all_scenarios!(haul_tests::Smol);
haul_tests::batch_scenarios!(haul_tests::Smol);

/// A client on an executor of the application's (`Smol::on`) whose executor stops and is
/// dropped mid-download: its transfer ends with `ClientStopped` (it waited for ever, the
/// client's own tasks keeping the executor alive), nothing is committed, and the partial is
/// free again for a later download of the same file.
#[test]
fn a_transfer_whose_executor_was_dropped_ends_with_client_stopped() {
    use futures_util::StreamExt;
    use haul_core::{Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    use std::sync::Arc;
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    let data = haul_tests::body(6, 3 << 20);
    origin.route("/s.bin", data.clone(), Behavior::Stall { after: 1 << 20 });
    origin.route("/ok.bin", data.clone(), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let dest = dir.path().join("s.bin");
    let executor = Arc::new(smol::Executor::new());
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let running = {
        let executor = executor.clone();
        std::thread::spawn(move || smol::block_on(executor.run(stop_rx.recv())))
    };
    let client = haul_smol::Client::with_runtime(
        haul_smol::Smol::on(executor.clone()),
        haul_tests::fast_config(),
    )
    .unwrap();
    let mut transfer = client.start(Download::new(&origin.url("/s.bin"), &dest).unwrap());
    smol::block_on(async {
        while let Some(ev) = transfer.next().await {
            if matches!(ev, Event::Progress { bytes, .. } if bytes >= 1 << 20) {
                break;
            }
        }
    });
    stop_tx.send_blocking(()).unwrap();
    let _ = running.join().unwrap();
    drop(executor);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(smol::block_on(transfer.result()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the transfer ends once its executor is gone");
    assert!(
        matches!(result, Err(DownloadError::ClientStopped)),
        "{result:?}"
    );
    assert!(!dest.exists(), "nothing committed");
    drop(client);
    // The partial is free: another client downloads the same file (its lock went with the
    // dropped tasks' files, closed by their workers).
    let other = haul_smol::Client::new(haul_tests::fast_config()).unwrap();
    let mut last = None;
    for _ in 0..50 {
        let d = Download::new(&origin.url("/ok.bin"), &dest).unwrap();
        match smol::block_on(other.download(d)) {
            Err(DownloadError::PartialInUse { .. }) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => {
                last = Some(result);
                break;
            }
        }
    }
    last.expect("the partial was freed").expect("downloaded");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}
