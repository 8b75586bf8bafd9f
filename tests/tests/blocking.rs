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

/// Cancelling a long call (more downloads than run at once) ends every download of it, those
/// waiting for a dependency too; with
/// `cancel_with(CancelMode::KeepPartial)` the partials stay for resume, with a plain
/// `cancel()` (which discards) none does.
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
        // Every other download depends on the one before it: cancelled too, not failed for
        // its cancelled dependency (the dependency was cancelled first).
        let downloads: Vec<Download> = (0..200)
            .map(|n| {
                let d =
                    Download::new(&origin.url("/stall"), dir.path().join(format!("f{n}"))).unwrap();
                if n % 2 == 1 {
                    d.after_index(n - 1)
                } else {
                    d
                }
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
            match mode {
                CancelMode::KeepPartial => cancel.cancel_with(mode),
                CancelMode::Discard => cancel.cancel(),
            }
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

/// `CancelHandle::pause(job)` from the event callback holds that one job of the call: no
/// progress of it arrives while the call's other job goes on, and `resume(job)` continues it
/// from the bytes it has (a ranged request) to the exact file.
#[test]
fn pausing_one_job_of_a_call_holds_it_while_the_others_go_on_and_resume_completes_it() {
    use haul_core::{Download, Event, JobId};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    let a = haul_tests::body(11, 1_500_000);
    let b = haul_tests::body(12, 600_000);
    let trickle = |bytes_per_sec| Behavior::Trickle { bytes_per_sec };
    origin.route("/a", a.clone(), trickle(1_000_000));
    origin.route("/b", b.clone(), trickle(500_000));
    let dir = tempfile::TempDir::new().unwrap();
    let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
    let handle = client.cancel_handle();
    let (dest_a, dest_b) = (dir.path().join("a"), dir.path().join("b"));
    let downloads = vec![
        Download::new(&origin.url("/a"), &dest_a).unwrap(),
        Download::new(&origin.url("/b"), &dest_b).unwrap(),
    ];
    let (mut job_a, mut job_b) = (None::<JobId>, None::<JobId>);
    // The progress events of both jobs, in order, and where the pause and resume were asked.
    let mut log: Vec<(JobId, u64)> = Vec::new();
    let (mut paused_at, mut resumed_at) = (None, None);
    let results = client.download_many(downloads, |e| match e {
        Event::Queued { job, url } if url.ends_with("/a") => job_a = Some(*job),
        Event::Queued { job, .. } => job_b = Some(*job),
        Event::Progress { job, bytes, .. } => {
            log.push((*job, *bytes));
            if Some(*job) == job_a && paused_at.is_none() {
                handle.pause(*job);
                paused_at = Some(log.len());
            }
        }
        Event::Finished { job, .. } if Some(*job) == job_b => {
            handle.resume(job_a.expect("a was queued"));
            resumed_at = Some(log.len());
        }
        _ => {}
    });
    let (job_a, job_b) = (job_a.unwrap(), job_b.unwrap());
    assert_eq!(
        results[1].as_ref().expect("b completes").size,
        b.len() as u64
    );
    assert_eq!(
        results[0].as_ref().expect("a completes").size,
        a.len() as u64
    );
    assert_eq!(std::fs::read(&dest_a).unwrap(), a);
    assert_eq!(std::fs::read(&dest_b).unwrap(), b);
    let (paused_at, resumed_at) = (paused_at.unwrap(), resumed_at.unwrap());
    // The pause takes effect at the driver's next turn: progress of `a` already on its way
    // may follow the request, but none once `b` has gone on receiving.
    let held = &log[paused_at..resumed_at];
    let last_a = held.iter().rposition(|(job, _)| *job == job_a);
    let b_after = held[last_a.map_or(0, |i| i + 1)..]
        .iter()
        .filter(|(job, _)| *job == job_b)
        .count();
    assert!(
        b_after >= 3,
        "b went on receiving while a was held ({b_after} progress events of b after a's last)"
    );
    let a_held = log[..resumed_at]
        .iter()
        .rev()
        .find(|(job, _)| *job == job_a)
        .map(|(_, bytes)| *bytes)
        .unwrap();
    assert!(
        a_held < a.len() as u64,
        "a was held before its end ({a_held} bytes)"
    );
    assert!(
        log[resumed_at..].iter().any(|(job, _)| *job == job_a),
        "a received again once resumed"
    );
    let last_range = origin
        .requests_to("/a")
        .last()
        .and_then(|r| r.header("range").map(str::to_string));
    assert!(
        last_range.as_deref().is_some_and(|r| r != "bytes=0-"),
        "the resume asks for the rest: {last_range:?}"
    );
}

/// `CancelHandle::cancel_job(job, mode)` ends that one job of the call (`Cancelled`), keeping
/// its partial or, with `CancelMode::Discard`, leaving none, while the call's other job
/// succeeds; a command naming a job that is not the call's is ignored.
#[test]
fn cancelling_one_job_of_a_call_ends_only_that_job_and_discard_leaves_no_partial() {
    use haul_core::{CancelMode, Download, DownloadError, Event, JobId};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    origin.route(
        "/stall",
        haul_tests::body(13, 2 << 20),
        Behavior::Stall { after: 1_000_000 },
    );
    let ok = haul_tests::body(14, 800_000);
    origin.route(
        "/ok",
        ok.clone(),
        Behavior::Trickle {
            bytes_per_sec: 1_000_000,
        },
    );
    for mode in [CancelMode::KeepPartial, CancelMode::Discard] {
        let dir = tempfile::TempDir::new().unwrap();
        let mut config = haul_tests::fast_config();
        config.idle_timeout = std::time::Duration::from_secs(600);
        let client = haul_blocking::Client::new(config).unwrap();
        let handle = client.cancel_handle();
        let (stalled, done) = (dir.path().join("stalled"), dir.path().join("ok"));
        let downloads = vec![
            Download::new(&origin.url("/stall"), &stalled).unwrap(),
            Download::new(&origin.url("/ok"), &done).unwrap(),
        ];
        let (mut stalling, mut cancelled) = (None::<JobId>, false);
        let results = client.download_many(downloads, |e| match e {
            Event::Queued { job, url } if url.ends_with("/stall") => stalling = Some(*job),
            Event::Progress { job, bytes, .. }
                if Some(*job) == stalling && *bytes >= 1_000_000 && !cancelled =>
            {
                // Not the call's jobs: ignored (the call still ends with both results).
                handle.pause(JobId(u64::MAX));
                handle.cancel_job(JobId(u64::MAX - 1), mode);
                handle.cancel_job(*job, mode);
                cancelled = true;
            }
            _ => {}
        });
        assert!(
            matches!(results[0], Err(DownloadError::Cancelled)),
            "{mode:?}: {:?}",
            results[0]
        );
        assert_eq!(
            results[1].as_ref().expect("the other job succeeds").size,
            ok.len() as u64
        );
        assert_eq!(std::fs::read(&done).unwrap(), ok);
        assert!(!stalled.exists(), "nothing committed for the cancelled job");
        let part = haul_tests::with_suffix(&stalled, ".haul-part");
        let state = haul_tests::with_suffix(&stalled, ".haul-state");
        match mode {
            CancelMode::KeepPartial => assert!(part.exists(), "the partial stays for resume"),
            CancelMode::Discard => {
                assert!(!part.exists(), "no partial stays");
                assert!(!state.exists(), "nor its state");
            }
        }
    }
}

/// The client's counters can be read while a call runs (here from its own callback: one
/// download active with bytes counted) and add up afterwards: two done, one failed (404),
/// their bytes, nothing active or queued.
#[test]
fn the_clients_stats_are_readable_during_a_call_and_add_up_after_it() {
    use haul_core::{Download, Event};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    let (a, b) = (haul_tests::body(3, 300_000), haul_tests::body(4, 20_000));
    origin.route("/a", a.clone(), Behavior::Normal);
    origin.route("/b", b.clone(), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
    let downloads = ["/a", "/b", "/missing"]
        .iter()
        .map(|p| Download::new(&origin.url(p), dir.path().join(&p[1..])).unwrap())
        .collect();
    let mut during = None;
    let results = client.download_many(downloads, |e| {
        if during.is_none() && matches!(e, Event::Progress { bytes, .. } if *bytes > 0) {
            during = Some(client.stats());
        }
    });
    assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
    let during = during.expect("progress was seen");
    assert!(during.active + during.queued >= 1, "{during:?}");
    let after = client.stats();
    assert_eq!((after.done, after.failed, after.cancelled), (2, 1, 0));
    assert_eq!((after.active, after.queued), (0, 0));
    assert_eq!(after.bytes, (a.len() + b.len()) as u64);
    assert!(after.bytes >= during.bytes);
}

/// Between calls the counters are as of now: the current rate of a download that ran at
/// 400 kB/s falls once no bytes have come for two seconds (it used to stay at its last
/// value until the next call).
#[test]
fn the_clients_current_rate_decays_between_calls() {
    use haul_core::Download;
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    let data = haul_tests::body(6, 600_000);
    origin.route(
        "/t",
        data,
        Behavior::Trickle {
            bytes_per_sec: 400_000,
        },
    );
    let dir = tempfile::TempDir::new().unwrap();
    let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
    client
        .download(
            Download::new(&origin.url("/t"), dir.path().join("t")).unwrap(),
            |_| {},
        )
        .expect("download");
    let at_end = client.stats().current_rate;
    assert!(at_end > 100_000.0, "measured while it ran: {at_end}");
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let idle = client.stats().current_rate;
    assert!(idle < at_end / 2.0, "decays while idle: {at_end} -> {idle}");
}

/// While every job of a call is paused, the client's counters still move: the current rate
/// decays (the driver, otherwise asleep until a resume, wakes to publish it).
#[test]
fn the_clients_rate_decays_while_every_job_of_a_call_is_paused() {
    use haul_core::{Download, Event};
    use haul_origin::{Behavior, Origin};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route(
        "/t",
        haul_tests::body(7, 2_000_000),
        Behavior::Trickle {
            bytes_per_sec: 400_000,
        },
    );
    let dir = tempfile::TempDir::new().unwrap();
    let client =
        std::sync::Arc::new(haul_blocking::Client::new(haul_tests::fast_config()).unwrap());
    let handle = client.cancel_handle();
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let watcher = {
        let (client, handle) = (client.clone(), handle.clone());
        std::thread::spawn(move || {
            let job = paused_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let at_pause = client.stats().current_rate;
            std::thread::sleep(Duration::from_millis(3_000));
            let later = client.stats().current_rate;
            handle.resume(job);
            (at_pause, later)
        })
    };
    let mut paused = false;
    client
        .download(
            Download::new(&origin.url("/t"), dir.path().join("t")).unwrap(),
            |e| {
                if let Event::Progress { job, bytes, .. } = e {
                    if !paused && *bytes >= 600_000 {
                        paused = true;
                        handle.pause(*job);
                        paused_tx.send(*job).unwrap();
                    }
                }
            },
        )
        .expect("completes once resumed");
    let (at_pause, later) = watcher.join().unwrap();
    assert!(
        at_pause > 100_000.0,
        "measured before the pause: {at_pause}"
    );
    assert!(
        later < at_pause / 2.0,
        "decays while paused: {at_pause} -> {later}"
    );
}

/// `CancelHandle::stop_all` before a call (a signal that came just before the call began,
/// which a cancel of the running call would miss) cancels that call and every later one: each
/// download ends `Cancelled`, no request reaches the server and nothing is written; the
/// client's earlier downloads are untouched.
#[test]
fn stop_all_cancels_the_calls_that_start_after_it() {
    use haul_core::{CancelMode, Download, DownloadError};
    use haul_origin::{Behavior, Origin};
    let origin = Origin::start().unwrap();
    let body = haul_tests::body(21, 200_000);
    origin.route("/f", body.clone(), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
    let before = dir.path().join("before");
    client
        .download(Download::new(&origin.url("/f"), &before).unwrap(), |_| {})
        .expect("a download before the stop");
    let handle = client.cancel_handle();
    handle.stop_all(CancelMode::KeepPartial);
    for call in 0..2 {
        let downloads: Vec<Download> = (0..3)
            .map(|i| {
                let dest = dir.path().join(format!("after-{call}-{i}"));
                Download::new(&origin.url("/f"), dest).unwrap()
            })
            .collect();
        let results = client.download_many(downloads, |_| {});
        assert_eq!(results.len(), 3);
        for result in results {
            assert!(
                matches!(result, Err(DownloadError::Cancelled)),
                "call {call}: {result:?}"
            );
        }
    }
    assert_eq!(
        origin.requests_to("/f").len(),
        1,
        "only the first download's"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["before"]);
    assert_eq!(std::fs::read(&before).unwrap(), body);
}

/// Calls of a client made from its own event callback do not wait for the call they run
/// in (they used to deadlock): a download returns an `InvalidRequest` saying why,
/// `max_active_jobs` answers, and `set_rate_schedule` takes effect at the call's next turn,
/// as it does from another thread while a call runs.
#[test]
fn calls_from_the_clients_own_callback_do_not_wait_for_themselves() {
    use haul_core::{Download, DownloadError, Event, RateSchedule};
    use haul_origin::{Behavior, Origin};
    use std::sync::mpsc;
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    let body = haul_tests::body(31, 300_000);
    origin.route("/f", body.clone(), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let url = origin.url("/f");
    let dest = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
        let mut inner = None;
        let mut max_active = 0;
        let outer = client.download(Download::new(&url, dest.join("outer")).unwrap(), |ev| {
            if inner.is_none() && matches!(ev, Event::Started { .. }) {
                max_active = client.max_active_jobs();
                client.set_rate_schedule(RateSchedule::new(vec![(0, None)]).unwrap(), 0);
                inner =
                    Some(client.download(Download::new(&url, dest.join("inner")).unwrap(), |_| {}));
            }
        });
        let _ = tx.send((outer, inner, max_active));
    });
    let (outer, inner, max_active) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the call and the calls from its callback end");
    assert_eq!(outer.expect("the outer download").size, body.len() as u64);
    match inner {
        Some(Err(DownloadError::InvalidRequest(why))) => {
            assert!(why.contains("own event callback"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(max_active, haul_tests::fast_config().max_active_jobs);
    assert!(!dir.path().join("inner").exists());
}

/// `set_rate_schedule` from another thread while a call runs returns at once (it waited
/// for the call to end): here the call ends only because that thread cancels it after.
#[test]
fn a_rate_schedule_set_from_another_thread_does_not_wait_for_the_running_call() {
    use haul_core::{CancelMode, Download, DownloadError, RateSchedule};
    use haul_origin::{Behavior, Origin};
    use std::sync::mpsc;
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route(
        "/stall",
        haul_tests::body(32, 2 << 20),
        Behavior::Stall { after: 1_500_000 },
    );
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = haul_tests::fast_config();
    config.idle_timeout = Duration::from_secs(600);
    let client = std::sync::Arc::new(haul_blocking::Client::new(config).unwrap());
    let (tx, rx) = mpsc::channel();
    let other = {
        let client = client.clone();
        let part = dir.path().join("f.haul-part");
        std::thread::spawn(move || {
            while std::fs::metadata(&part).map_or(true, |m| m.len() < 1_000_000) {
                std::thread::sleep(Duration::from_millis(10));
            }
            client.set_rate_schedule(RateSchedule::new(vec![(0, Some(1 << 20))]).unwrap(), 0);
            client.cancel_handle().cancel_with(CancelMode::KeepPartial);
        })
    };
    let url = origin.url("/stall");
    let dest = dir.path().join("f");
    let runner = std::thread::spawn(move || {
        let _ = tx.send(client.download(Download::new(&url, dest).unwrap(), |_| {}));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the call was cancelled after the schedule was set");
    assert!(
        matches!(result, Err(DownloadError::Cancelled)),
        "{result:?}"
    );
    other.join().unwrap();
    runner.join().unwrap();
}

/// A rate schedule set from a call's callback after its last turn waits for the next call;
/// one set after the call returned is later and wins: the waiting one is not applied over
/// it (it was, and a 1 MiB download then crawled at 64 KiB/s).
#[test]
fn a_rate_schedule_set_later_is_not_overridden_by_one_that_waited_for_a_call() {
    use haul_core::{Download, Event, RateSchedule};
    use haul_origin::{Behavior, Origin};
    use std::sync::mpsc;
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route("/small", haul_tests::body(33, 1_000), Behavior::Normal);
    let big = haul_tests::body(34, 1 << 20);
    origin.route("/big", big.clone(), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let client = haul_blocking::Client::new(haul_tests::fast_config()).unwrap();
    client
        .download(
            Download::new(&origin.url("/small"), dir.path().join("small")).unwrap(),
            |ev| {
                if matches!(ev, Event::Finished { .. }) {
                    client.set_rate_schedule(
                        RateSchedule::new(vec![(0, Some(64 << 10))]).unwrap(),
                        0,
                    );
                }
            },
        )
        .unwrap();
    client.set_rate_schedule(RateSchedule::new(vec![(0, None)]).unwrap(), 0);
    let (tx, rx) = mpsc::channel();
    let url = origin.url("/big");
    let dest = dir.path().join("big");
    std::thread::spawn(move || {
        let _ = tx.send(client.download(Download::new(&url, dest).unwrap(), |_| {}));
    });
    // Unlimited it takes milliseconds; at 64 KiB/s sixteen seconds.
    let result = rx
        .recv_timeout(Duration::from_secs(8))
        .expect("the download runs without the older limit");
    assert_eq!(result.unwrap().size, big.len() as u64);
}

/// Calls from several threads run at once: a download on a second thread finishes while the
/// first thread's call is still stalled (it waited for that call before), with its events
/// on its own thread; when the first call returns while the second's download runs, the
/// second drives the engine on and gets every byte.
#[test]
fn calls_from_several_threads_run_at_once_and_hand_the_engine_over() {
    use haul_core::{CancelMode, Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route(
        "/stall",
        haul_tests::body(40, 2 << 20),
        Behavior::Stall { after: 1 << 20 },
    );
    let quick = haul_tests::body(41, 300_000);
    origin.route("/quick", quick.clone(), Behavior::Normal);
    let slow = haul_tests::body(42, 400_000);
    origin.route(
        "/slow",
        slow.clone(),
        Behavior::Trickle {
            bytes_per_sec: 1_000_000,
        },
    );
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = haul_tests::fast_config();
    config.idle_timeout = Duration::from_secs(600);
    let client = Arc::new(haul_blocking::Client::new(config).unwrap());
    // A call that stalls: the first thread drives the engine.
    let (stalled_tx, stalled_rx) = mpsc::channel();
    let (first_tx, first_rx) = mpsc::channel();
    let first = {
        let (client, url, dest) = (client.clone(), origin.url("/stall"), dir.path().join("s"));
        std::thread::spawn(move || {
            let result = client.download(Download::new(&url, dest).unwrap(), |e| {
                if let Event::Progress { job, bytes, .. } = e {
                    if *bytes >= 1 << 20 {
                        let _ = stalled_tx.send(*job);
                    }
                }
            });
            let _ = first_tx.send(result);
        })
    };
    let first_job = stalled_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the first call stalls");
    // A second thread's call is not held up by it.
    let (second_tx, second_rx) = mpsc::channel();
    let second = {
        let (client, url, dest) = (client.clone(), origin.url("/quick"), dir.path().join("q"));
        std::thread::spawn(move || {
            let on_this_thread = std::thread::current().id();
            let mut seen = Vec::new();
            let result = client.download(Download::new(&url, dest).unwrap(), |e| {
                assert_eq!(std::thread::current().id(), on_this_thread);
                seen.push(e.clone());
            });
            let _ = second_tx.send((result, seen));
        })
    };
    let (result, seen) = second_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the second call ends while the first stalls");
    let out = result.expect("the second call's download");
    assert_eq!(std::fs::read(dir.path().join("q")).unwrap(), quick);
    assert_eq!(out.size, quick.len() as u64);
    let finished = seen
        .iter()
        .filter(|e| matches!(e, Event::Finished { .. }))
        .count();
    assert_eq!(finished, 1, "{seen:?}");
    let job = seen.iter().find_map(Event::job).expect("a job's events");
    assert!(
        seen.iter().all(|e| e.job() == Some(job)),
        "only its own job's events: {seen:?}"
    );
    second.join().unwrap();
    // A third call starts while the first stalls; the first is cancelled once the third
    // has bytes, so the third finishes after the first returned.
    let (third_tx, third_rx) = mpsc::channel();
    let (progress_tx, progress_rx) = mpsc::channel();
    let third = {
        let (client, url, dest) = (client.clone(), origin.url("/slow"), dir.path().join("slow"));
        std::thread::spawn(move || {
            let result = client.download(Download::new(&url, dest).unwrap(), |e| {
                if matches!(e, Event::Progress { .. }) {
                    let _ = progress_tx.send(());
                }
            });
            let _ = third_tx.send(result);
        })
    };
    progress_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the third call has bytes");
    client
        .cancel_handle()
        .cancel_job(first_job, CancelMode::Discard);
    let result = first_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the first call ends when its job is cancelled");
    assert!(
        matches!(result, Err(DownloadError::Cancelled)),
        "{result:?}"
    );
    let result = third_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the third call ends after the first returned");
    result.expect("the third call's download, driven by its own thread at the end");
    assert_eq!(std::fs::read(dir.path().join("slow")).unwrap(), slow);
    first.join().unwrap();
    third.join().unwrap();
    // Nothing is left of the cancelled download.
    assert!(!dir.path().join("s").exists());
    assert!(!dir.path().join("s.haul-part").exists());
}

/// A guest call (one made while another thread's call drives the engine) whose callback
/// panics ends with that panic once its download is cancelled and cleaned up, leaving the
/// driving call alone; a download started from a guest's own callback is refused as from
/// the driving call's; and a cancel from the client's handle reaches every running call.
#[test]
fn a_guest_call_panics_alone_and_a_cancel_reaches_every_call() {
    use haul_core::{Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    for path in ["/a", "/b", "/c"] {
        origin.route(
            path,
            haul_tests::body(43, 2 << 20),
            Behavior::Stall { after: 1 << 20 },
        );
    }
    origin.route("/small", haul_tests::body(44, 1000), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = haul_tests::fast_config();
    config.idle_timeout = Duration::from_secs(600);
    let client = Arc::new(haul_blocking::Client::new(config).unwrap());
    // Starts a call on its own thread; its result comes on the returned channel once it
    // ends, and a message on the other once its download has stalled.
    let start = |path: &str, panics: bool| {
        let (client, url) = (client.clone(), origin.url(path));
        let (small, dest) = (origin.url("/small"), dir.path().join(&path[1..]));
        let (stalled_tx, stalled_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                client.download(Download::new(&url, dest).unwrap(), |e| {
                    if matches!(e, Event::Progress { bytes, .. } if *bytes >= 1 << 20) {
                        let nested = client
                            .download(Download::new(&small, "/nonexistent/never").unwrap(), |_| {});
                        let _ = stalled_tx.send(nested);
                        if panics {
                            panic!("the guest's callback fails");
                        }
                    }
                })
            }));
            let _ = done_tx.send(caught.map_err(|_| "panicked"));
        });
        (stalled_rx, done_rx)
    };
    let refused = |rx: &mpsc::Receiver<Result<_, DownloadError>>| {
        let nested = rx.recv_timeout(Duration::from_secs(30)).expect("stalls");
        assert!(
            matches!(nested, Err(DownloadError::InvalidRequest(_))),
            "{nested:?}"
        );
    };
    let (a_stalled, a_done) = start("/a", false);
    refused(&a_stalled);
    let (b_stalled, b_done) = start("/b", true);
    refused(&b_stalled);
    let b = b_done
        .recv_timeout(Duration::from_secs(30))
        .expect("b ends");
    assert!(matches!(b, Err("panicked")), "{b:?}");
    assert!(!dir.path().join("b").exists() && !dir.path().join("b.haul-part").exists());
    let (c_stalled, c_done) = start("/c", false);
    refused(&c_stalled);
    assert!(a_done.try_recv().is_err(), "the driving call goes on");
    client.cancel_handle().cancel();
    for done in [a_done, c_done] {
        let result = done.recv_timeout(Duration::from_secs(30)).expect("ends");
        assert!(
            matches!(result, Ok(Err(DownloadError::Cancelled))),
            "{result:?}"
        );
    }
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert!(left.is_empty(), "{left:?}");
}

/// A cancel of every running call sent before another thread's call starts does not cancel
/// that call, also when the driving call takes both messages in one turn (it applied the
/// cancel after the new call's downloads were submitted, and cancelled them).
#[test]
fn a_cancel_sent_before_a_guest_call_starts_does_not_cancel_it() {
    use haul_core::{CancelMode, Download, DownloadError, Event};
    use haul_origin::{Behavior, Origin};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;
    let origin = Origin::start().unwrap();
    origin.route(
        "/a",
        haul_tests::body(50, 2 << 20),
        Behavior::Stall { after: 1 << 20 },
    );
    origin.route("/g", haul_tests::body(51, 5000), Behavior::Normal);
    let dir = tempfile::TempDir::new().unwrap();
    let client = Arc::new(haul_blocking::Client::new(haul_tests::fast_config()).unwrap());
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (a_tx, a_rx) = mpsc::channel();
    {
        let (client, url, dest) = (client.clone(), origin.url("/a"), dir.path().join("a"));
        std::thread::spawn(move || {
            let mut held = false;
            let r = client.download(Download::new(&url, dest).unwrap(), |e| {
                if !held && matches!(e, Event::Progress { .. }) {
                    held = true;
                    let _ = held_tx.send(());
                    // The driving thread waits in its callback while both messages arrive.
                    let _ = go_rx.recv();
                }
            });
            let _ = a_tx.send(r);
        });
    }
    held_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a runs");
    client.cancel_handle().cancel_with(CancelMode::KeepPartial);
    let (g_tx, g_rx) = mpsc::channel();
    {
        let (client, url, dest) = (client.clone(), origin.url("/g"), dir.path().join("g"));
        std::thread::spawn(move || {
            let _ = g_tx.send(client.download(Download::new(&url, dest).unwrap(), |_| {}));
        });
    }
    // The guest has sent its downloads.
    std::thread::sleep(Duration::from_millis(300));
    go_tx.send(()).unwrap();
    let a = a_rx.recv_timeout(Duration::from_secs(30)).expect("a ends");
    assert!(matches!(a, Err(DownloadError::Cancelled)), "{a:?}");
    let g = g_rx.recv_timeout(Duration::from_secs(30)).expect("g ends");
    assert!(
        g.is_ok(),
        "a call started after the cancel was cancelled: {g:?}"
    );
}
