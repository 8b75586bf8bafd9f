//! What only the async clients promise, written once for tokio and smol: progress as a
//! stream, many downloads on one client, cancellation when a transfer is dropped (partial
//! kept, nothing committed), and held transfers outliving their client.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use haul_core::{Config, Download, DownloadError, Event};
use haul_origin::{Behavior, Origin};
use tempfile::TempDir;

use crate::{body, fast_config, with_suffix};

/// Takes `transfer`'s events until it reports at least `bytes` received (or ends).
fn until_bytes<H: AsyncHarness>(h: &H, transfer: &mut haul_async::Transfer, bytes: u64) {
    h.block_on(async {
        while let Some(ev) = transfer.next().await {
            if matches!(ev, Event::Progress { bytes: got, .. } if got >= bytes) {
                break;
            }
        }
    });
}

/// An async runtime as the scenarios need it.
pub trait AsyncHarness {
    /// The runtime the client runs on.
    type Rt: haul_async::AsyncRuntime;
    /// A fresh runtime.
    fn new() -> Self;
    /// A client on it.
    fn client(&self, config: Config) -> haul_async::Client<Self::Rt>;
    /// Run `f` to completion.
    fn block_on<F: Future>(&self, f: F) -> F::Output;
}

/// tokio, multi-threaded.
pub struct TokioHarness(tokio::runtime::Runtime);

impl AsyncHarness for TokioHarness {
    type Rt = haul_tokio::Tokio;
    fn new() -> Self {
        TokioHarness(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
        )
    }
    fn client(&self, config: Config) -> haul_tokio::Client {
        haul_async::Client::with_runtime(haul_tokio::Tokio::new(self.0.handle().clone()), config)
            .expect("valid config")
    }
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.0.block_on(f)
    }
}

/// smol's global executor.
pub struct SmolHarness;

impl AsyncHarness for SmolHarness {
    type Rt = haul_smol::Smol;
    fn new() -> Self {
        SmolHarness
    }
    fn client(&self, config: Config) -> haul_smol::Client {
        haul_smol::Client::new(config).expect("valid config")
    }
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        smol::block_on(f)
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `cancel_with(CancelMode::KeepPartial)` mid-body, then dropping the transfer: nothing at
/// the destination, the partial and its state stay (the drop does not discard what the
/// cancel kept), and a later download resumes from them.
pub fn cancelling_with_keep_partial_keeps_it_for_resume<H: AsyncHarness>() {
    let h = H::new();
    let data = body(90, 3 * 1024 * 1024);
    let origin = Origin::start().expect("origin");
    origin.route("/s.bin", data.clone(), Behavior::Stall { after: 1_000_000 });
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("s.bin");
    // No checkpoint and no timeout fires during the test: only the cancel writes the state.
    let mut config = fast_config();
    config.checkpoint_interval = Duration::from_secs(600);
    config.idle_timeout = Duration::from_secs(600);
    let client = h.client(config.clone());
    let mut transfer = client.start(Download::new(&origin.url("/s.bin"), &dest).unwrap());
    until_bytes(&h, &mut transfer, 1_000_000);
    transfer.cancel_with(haul_core::CancelMode::KeepPartial);
    drop(transfer);
    let state = with_suffix(&dest, ".haul-state");
    wait_until("the cancelled job's state file", || state.exists());
    assert!(!dest.exists(), "nothing committed");
    assert!(with_suffix(&dest, ".haul-part").exists());

    origin.route("/s.bin", data.clone(), Behavior::Normal);
    origin.clear_requests();
    // The state file is written before the cancelled job has closed its files and ended:
    // the new download may find it still tidying up, and then waits for it.
    let out = h
        .block_on(client.download(Download::new(&origin.url("/s.bin"), &dest).unwrap()))
        .expect("resume succeeds");
    assert!(out.resumed_from > 0, "resumed from the kept partial");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let range = origin.requests_to("/s.bin")[0]
        .header("range")
        .map(str::to_string);
    assert_eq!(range, Some(format!("bytes={}-", out.resumed_from)));
}

/// Dropping a transfer mid-body cancels it and removes what it wrote: nothing at the
/// destination, no partial, no state file, and the next download of the file starts at 0.
pub fn dropping_a_transfer_cancels_and_removes_its_partial<H: AsyncHarness>() {
    let h = H::new();
    let data = body(94, 3 * 1024 * 1024);
    let origin = Origin::start().expect("origin");
    origin.route("/p.bin", data.clone(), Behavior::Stall { after: 1_000_000 });
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("p.bin");
    let mut config = fast_config();
    config.idle_timeout = Duration::from_secs(600);
    let client = h.client(config);
    let mut transfer = client.start(Download::new(&origin.url("/p.bin"), &dest).unwrap());
    until_bytes(&h, &mut transfer, 1_000_000);
    drop(transfer);
    let part = with_suffix(&dest, ".haul-part");
    // The cancel is done once the client has no job left.
    wait_until("the dropped job's end", || {
        let stats = h.block_on(client.stats());
        stats.active + stats.queued == 0 && stats.cancelled == 1
    });
    assert!(!dest.exists(), "nothing committed");
    assert!(!part.exists(), "the partial is removed");
    assert!(!with_suffix(&dest, ".haul-state").exists(), "its state too");

    origin.route("/p.bin", data.clone(), Behavior::Normal);
    let out = h
        .block_on(client.download(Download::new(&origin.url("/p.bin"), &dest).unwrap()))
        .expect("the next download succeeds");
    assert_eq!(out.resumed_from, 0, "nothing was kept to resume from");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

/// One client runs several downloads at once: two finish while a third is stalled, and
/// each transfer's stream carries only its own job's events.
pub fn many_downloads_on_one_client_run_at_once<H: AsyncHarness>() {
    let h = H::new();
    let origin = Origin::start().expect("origin");
    let (a, b) = (body(91, 900_000), body(92, 1_200_000));
    origin.route("/a", a.clone(), Behavior::Normal);
    origin.route("/b", b.clone(), Behavior::Normal);
    origin.route("/stuck", body(93, 500_000), Behavior::Stall { after: 1000 });
    let dir = TempDir::new().unwrap();
    let client = h.client(fast_config());
    let stuck =
        client.start(Download::new(&origin.url("/stuck"), dir.path().join("stuck")).unwrap());
    let mut ta = client.start(Download::new(&origin.url("/a"), dir.path().join("a")).unwrap());
    let tb = client.start(Download::new(&origin.url("/b"), dir.path().join("b")).unwrap());
    let (events_a, result_b) = h.block_on(async {
        let mut events = Vec::new();
        while let Some(ev) = ta.next().await {
            events.push(ev);
        }
        (events, tb.await)
    });
    assert_eq!(result_b.expect("b").size, b.len() as u64);
    let jobs: std::collections::BTreeSet<_> =
        events_a.iter().filter_map(haul_driver::event_job).collect();
    assert_eq!(jobs.len(), 1, "only a's events on a's stream: {events_a:?}");
    assert!(matches!(
        events_a.last(),
        Some(Event::Finished { result: Ok(_), .. })
    ));
    assert_eq!(h.block_on(ta.result()).expect("a").size, a.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), a);
    drop(stuck);
    assert!(
        !dir.path().join("stuck").exists(),
        "the stalled one never committed"
    );
}

/// A transfer still held when its client is dropped runs to the end.
pub fn held_transfer_outlives_its_client<H: AsyncHarness>() {
    let h = H::new();
    let origin = Origin::start().expect("origin");
    let data = body(94, 2_000_000);
    origin.route("/f", data.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let client = h.client(fast_config());
    let t = client.start(Download::new(&origin.url("/f"), dir.path().join("f")).unwrap());
    drop(client);
    let out = h.block_on(t.result()).expect("finishes without its client");
    assert_eq!(out.size, data.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data);
}

/// `download_many` submits one batch: results come in the order given, and a download that
/// waits for an earlier one of the batch (`after_index`) fails when that one fails.
pub fn download_many_is_one_batch_with_results_in_order<H: AsyncHarness>() {
    let h = H::new();
    let origin = Origin::start().expect("origin");
    let data = body(95, 400_000);
    origin.route("/ok", data.clone(), Behavior::Normal);
    origin.route(
        "/missing",
        Vec::new(),
        Behavior::Status {
            status: 404,
            retry_after: None,
        },
    );
    let dir = TempDir::new().unwrap();
    let client = h.client(fast_config());
    let url = |p: &str| origin.url(p);
    let results = h.block_on(client.download_many(vec![
        Download::new(&url("/missing"), dir.path().join("m")).unwrap(),
        Download::new(&url("/ok"), dir.path().join("after-missing"))
            .unwrap()
            .after_index(0),
        Download::new(&url("/ok"), dir.path().join("ok")).unwrap(),
    ]));
    assert_eq!(results.len(), 3);
    assert!(
        matches!(results[0], Err(DownloadError::Status { status: 404, .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(DownloadError::DependencyFailed { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(
        results[2].as_ref().expect("independent one").size,
        data.len() as u64
    );
    assert!(!dir.path().join("after-missing").exists());
}

/// Instantiate every async-client scenario for the harness type `$h`.
/// A transfer paused mid-body asks for nothing more until it is resumed; then it continues
/// from the bytes it has and commits the exact file.
pub fn a_paused_transfer_fetches_nothing_until_resumed_and_then_commits<H: AsyncHarness>() {
    let h = H::new();
    let data = body(91, 3 * 1024 * 1024);
    let origin = Origin::start().expect("origin");
    origin.route(
        "/p.bin",
        data.clone(),
        Behavior::Trickle {
            bytes_per_sec: 2_000_000,
        },
    );
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("p.bin");
    let client = h.client(fast_config());
    let mut transfer = client.start(Download::new(&origin.url("/p.bin"), &dest).unwrap());
    until_bytes(&h, &mut transfer, 500_000);
    transfer.pause();
    std::thread::sleep(Duration::from_millis(300));
    let requests = origin.requests_to("/p.bin").len();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        origin.requests_to("/p.bin").len(),
        requests,
        "nothing asked while paused"
    );
    assert!(!dest.exists(), "nothing committed while paused");
    transfer.resume();
    let out = h
        .block_on(transfer.result())
        .expect("resumed and committed");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(
        out.bytes_fetched < 2 * data.len() as u64,
        "continued, not restarted twice"
    );
    let resumed = origin
        .requests_to("/p.bin")
        .last()
        .and_then(|r| r.header("range").map(str::to_string));
    assert!(
        resumed.as_deref().is_some_and(|r| r != "bytes=0-"),
        "the resume asks for the rest: {resumed:?}"
    );
}

/// `cancel_with(CancelMode::Discard)` ends the download and removes its partial and state.
pub fn cancelling_with_discard_removes_the_partial_and_its_state<H: AsyncHarness>() {
    let h = H::new();
    let data = body(92, 3 * 1024 * 1024);
    let origin = Origin::start().expect("origin");
    origin.route("/d.bin", data, Behavior::Stall { after: 1_000_000 });
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("d.bin");
    let client = h.client(fast_config());
    let mut transfer = client.start(Download::new(&origin.url("/d.bin"), &dest).unwrap());
    until_bytes(&h, &mut transfer, 1_000_000);
    transfer.cancel_with(haul_core::CancelMode::Discard);
    let result = h.block_on(transfer.result());
    assert!(
        matches!(result, Err(DownloadError::Cancelled)),
        "{result:?}"
    );
    assert!(!dest.exists());
    assert!(
        !with_suffix(&dest, ".haul-part").exists(),
        "the partial is removed"
    );
    assert!(!with_suffix(&dest, ".haul-state").exists(), "its state too");
}

/// A rate schedule set on the client limits the downloads it runs: 3 MB under an all-day
/// limit of 1 MB/s (with its one-second burst allowance) takes about two seconds, at least
/// 1.5 (the last read's debt is not waited for); unlimited, it takes milliseconds. Only a
/// lower bound is checked: a slow machine makes the download slower, never faster.
pub fn a_rate_schedule_limits_the_clients_downloads<H: AsyncHarness>() {
    let h = H::new();
    let data = body(93, 3_000_000);
    let origin = Origin::start().expect("origin");
    origin.route("/r.bin", data.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let dest = dir.path().join("r.bin");
    let client = h.client(fast_config());
    let all_day = haul_core::RateSchedule::new(vec![(0, Some(1_000_000))]).unwrap();
    client.set_rate_schedule(all_day, 0);
    let started = Instant::now();
    h.block_on(client.download(Download::new(&origin.url("/r.bin"), &dest).unwrap()))
        .expect("download");
    let took = started.elapsed();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(
        took >= Duration::from_millis(1_500),
        "3 MB at 1 MB/s after a 1 MB burst took only {took:?}"
    );
}

/// The client's counters add up: two downloads done, one failed (404), their bytes, and
/// nothing active or queued afterwards.
pub fn the_clients_stats_count_its_downloads_and_bytes<H: AsyncHarness>() {
    let h = H::new();
    let origin = Origin::start().expect("origin");
    let (a, b) = (body(94, 300_000), body(95, 20_000));
    origin.route("/a.bin", a.clone(), Behavior::Normal);
    origin.route("/b.bin", b.clone(), Behavior::Normal);
    let dir = TempDir::new().unwrap();
    let client = h.client(fast_config());
    let downloads = ["/a.bin", "/b.bin", "/missing.bin"]
        .iter()
        .map(|p| Download::new(&origin.url(p), dir.path().join(&p[1..])).unwrap())
        .collect();
    let results = h.block_on(client.download_many(downloads));
    assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
    let stats = h.block_on(client.stats());
    assert_eq!((stats.done, stats.failed, stats.cancelled), (2, 1, 0));
    assert_eq!((stats.active, stats.queued), (0, 0));
    assert_eq!(stats.bytes, (a.len() + b.len()) as u64);
    assert!(
        stats.peak_rate >= 0.0 && stats.average_rate > 0.0,
        "{stats:?}"
    );
}

#[macro_export]
macro_rules! async_scenarios {
    ($h:ty) => {
        $crate::async_scenarios!($h;
            cancelling_with_keep_partial_keeps_it_for_resume,
            dropping_a_transfer_cancels_and_removes_its_partial,
            many_downloads_on_one_client_run_at_once,
            held_transfer_outlives_its_client,
            download_many_is_one_batch_with_results_in_order,
            a_paused_transfer_fetches_nothing_until_resumed_and_then_commits,
            cancelling_with_discard_removes_the_partial_and_its_state,
            a_rate_schedule_limits_the_clients_downloads,
            the_clients_stats_count_its_downloads_and_bytes,
        );
    };
    ($h:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::async_scenarios::$name::<$h>();
            }
        )*
    };
}
