//! Every scenario against the tokio runtime.

haul_tests::all_scenarios!(haul_tests::Tokio);
haul_tests::batch_scenarios!(haul_tests::Tokio);

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
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
