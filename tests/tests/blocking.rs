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
