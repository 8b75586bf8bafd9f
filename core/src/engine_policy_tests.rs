//! Scripted tests of the engine's resilience policies: circuit breakers shared per origin,
//! the retry budget, mirrors with failover and preference, and the one retry after a failed
//! verification. They reuse the harness of `engine_tests`.

use std::time::Duration;

use crate::config::Config;
use crate::download::Download;
use crate::engine::{Event, JobId};
use crate::engine_tests::*;
use crate::error::DownloadError;
use crate::io::IoErrorKind;
use crate::policy::BreakerState;

const MIRROR: &str = "http://b.test";
const MIRROR_URL: &str = "http://b.test/pub/f.bin";
const THIRD: &str = "http://c.test";
const THIRD_URL: &str = "http://c.test/f.bin";

/// Runs each of `jobs` to its end, which must be a connect failure or `CircuitOpen`, then
/// `check`s it; how many ended `CircuitOpen`.
fn run_to_connect_failures(
    h: &mut Harness,
    jobs: &[JobId],
    check: impl Fn(&Harness, JobId),
) -> usize {
    let mut circuit_open = 0;
    for &job in jobs {
        match h.run(job) {
            Err(DownloadError::Connect { .. }) => {}
            Err(DownloadError::CircuitOpen { .. }) => circuit_open += 1,
            other => panic!("{job}: expected a connect failure or CircuitOpen, got {other:?}"),
        }
        check(h, job);
    }
    circuit_open
}

fn policy_config() -> Config {
    let mut c = config();
    c.retry.max_attempts = 6;
    c.retry.max_elapsed = secs(3600);
    c
}

fn failovers(h: &Harness, job: JobId) -> Vec<(String, String)> {
    h.events_of(job)
        .into_iter()
        .filter_map(|e| match e {
            Event::Failover { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect()
}

/// The test download with the mirror and the sha256 of `body`.
fn mirrored_with_sha256(body: &[u8]) -> Download {
    download()
        .mirror(MIRROR_URL)
        .unwrap()
        .sha256(&sha_hex(body))
        .unwrap()
}

fn requests_to(h: &Harness, host: &str) -> usize {
    h.requests
        .iter()
        .filter(|r| {
            // Requests carry their origin in the Host header.
            r.header("host") == Some(host)
        })
        .count()
}

fn origin(url: &str) -> crate::http::Origin {
    crate::http::Origin::of(&url::Url::parse(url).unwrap()).unwrap()
}

#[test]
fn a_refused_primary_fails_over_to_the_mirror_at_once() {
    let body = pattern(50_000, 1);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(body.clone()));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    h.serve(MIRROR, file_server(body.clone()));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    let out = h.run(job).expect("the mirror serves the file");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert_eq!(out.final_url, MIRROR_URL);
    assert_eq!(
        failovers(&h, job),
        [(URL.to_string(), MIRROR_URL.to_string())]
    );
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].2, Duration::ZERO, "failover does not back off");
    assert!(matches!(retries[0].3, DownloadError::Connect { .. }));
}

#[test]
fn when_every_mirror_failed_the_job_backs_off_before_the_next_round() {
    let body = pattern(10_000, 2);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, |r| {
        if r.seq < 1 {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(pattern(10_000, 2))(r)
        }
    });
    h.serve(MIRROR, |_| Reply::new(with_length(502, &[], b"")));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run(job).expect("the primary recovers");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    let delays: Vec<Duration> = h.retries(job).iter().map(|r| r.2).collect();
    assert_eq!(delays.len(), 2, "{delays:?}");
    assert_eq!(delays[0], Duration::ZERO, "first failure: fail over");
    assert!(
        delays[1] >= Duration::from_millis(500),
        "both failed: back off ({delays:?})"
    );
}

/// A harness whose breakers open after 3 failures for 60 s (and close after two successful
/// probes), jobs making up to `max_attempts` attempts, and whose origin answers 503 for its
/// first 30 s, then `body`.
fn unhealthy_for_30_s(max_attempts: u32, body: Vec<u8>) -> Harness {
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 3;
    cfg.breaker.cooldown = secs(60);
    cfg.breaker.success_threshold = 2;
    cfg.retry.max_attempts = max_attempts;
    let mut h = Harness::new(cfg);
    let healthy_from = at(secs(30));
    h.serve(ORIGIN, move |r| {
        if r.at < healthy_from {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(body.clone())(r)
        }
    });
    h
}

#[test]
fn the_breaker_opens_after_consecutive_failures_and_other_jobs_wait_instead_of_hammering() {
    let mut h = unhealthy_for_30_s(3, pattern(5_000, 3));
    let first = h.submit(download());
    assert!(matches!(
        h.run(first),
        Err(DownloadError::Status { status: 503, .. })
    ));
    assert_eq!(h.requests.len(), 3);
    assert!(h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::BreakerOpened { .. })));
    assert!(matches!(
        h.engine.breaker_state(&origin(URL)),
        BreakerState::Open { .. }
    ));
    // A second job to the same origin sends nothing until the cool-down ends, then probes.
    let opened_at = h.requests.last().unwrap().at;
    let second = h.submit(Download::new("http://a.test/files/g.bin", "/dl/g.bin").unwrap());
    h.run(second)
        .expect("the probe succeeds once the origin is healthy");
    assert_eq!(
        h.requests.len(),
        4,
        "exactly one request after the cool-down"
    );
    let probe = h.requests[3].at;
    assert!(
        probe >= opened_at + secs(60),
        "probe at {probe}, breaker opened at {opened_at}"
    );
    // One success is not enough to close it (success_threshold 2) ...
    assert!(matches!(
        h.engine.breaker_state(&origin(URL)),
        BreakerState::HalfOpen { .. }
    ));
    // ... a second one is.
    let third = h.submit(Download::new("http://a.test/files/h.bin", "/dl/h.bin").unwrap());
    h.run(third).expect("another probe");
    assert_eq!(
        h.engine.breaker_state(&origin(URL)),
        BreakerState::Closed { failures: 0 }
    );
    assert_eq!(
        h.engine.breakers_held(),
        0,
        "a closed breaker with no failures is pruned"
    );
}

/// Serves `body` at `origin`, except that its first request is answered 503; counts requests.
fn serve_failing_once(
    h: &mut Harness,
    origin: &str,
    body: Vec<u8>,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    h.serve(origin, move |r| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(body.clone())(r)
        }
    });
    calls
}

#[test]
fn stats_are_kept_for_a_bounded_number_of_origins_forgetting_the_least_informative() {
    use crate::engine::ORIGIN_STATS_MAX;
    let mut h = Harness::new(policy_config());
    let body = pattern(2_000, 9);
    // One origin that failed once before it served: its failure is what is remembered longest.
    serve_failing_once(&mut h, "http://flaky.test", body.clone());
    let job = h.submit(Download::new("http://flaky.test/f.bin", "/dl/flaky.bin").unwrap());
    h.run(job).expect("the retry is served");
    let hosts: Vec<String> = (0..ORIGIN_STATS_MAX + 10)
        .map(|i| format!("http://h{i:05}.test"))
        .collect();
    for host in &hosts {
        h.serve(host, file_server(body.clone()));
        let job = h.submit(Download::new(&format!("{host}/f.bin"), "/dl/f.bin").unwrap());
        h.run(job).expect("served");
        assert!(h.engine.origin_stats_held() <= ORIGIN_STATS_MAX);
    }
    assert_eq!(h.engine.origin_stats_held(), ORIGIN_STATS_MAX);
    let last = hosts.last().unwrap();
    assert!(
        h.engine.has_origin_stats(&origin(&format!("{last}/f.bin"))),
        "the newest origin is remembered"
    );
    assert!(
        !h.engine
            .has_origin_stats(&origin(&format!("{}/f.bin", hosts[0]))),
        "the first of the equally measured origins is forgotten first"
    );
    assert!(
        h.engine
            .has_origin_stats(&origin("http://flaky.test/f.bin")),
        "an origin with a failure to remember outlives the others"
    );
}

#[test]
fn origins_that_only_succeed_leave_no_breaker_behind() {
    let mut h = Harness::new(policy_config());
    let body = pattern(2_000, 5);
    for host in ["a.test", "b.test", "c.test"] {
        h.serve(&format!("http://{host}"), file_server(body.clone()));
    }
    for host in ["a.test", "b.test", "c.test"] {
        let job = h.submit(Download::new(&format!("http://{host}/f.bin"), "/dl/f.bin").unwrap());
        h.run(job).expect("served");
    }
    assert_eq!(h.engine.breakers_held(), 0);

    // A failure makes a breaker; the success after it removes it again.
    let mut cfg = policy_config();
    cfg.retry.max_attempts = 2;
    let mut h = Harness::new(cfg);
    let calls = serve_failing_once(&mut h, ORIGIN, body.clone());
    let job = h.submit(Download::new("http://a.test/f.bin", "/dl/f.bin").unwrap());
    h.run(job).expect("the retry is served");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        h.engine.breakers_held(),
        0,
        "the success cleared the failure"
    );
}

#[test]
fn an_open_breaker_sends_jobs_to_a_mirror() {
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 2;
    let mut h = Harness::new(cfg);
    let body = pattern(20_000, 4);
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    h.serve(MIRROR, file_server(body.clone()));
    // Failures to the primary open its breaker.
    for name in ["x", "y"] {
        let d = Download::new(&format!("http://a.test/{name}"), format!("/dl/{name}")).unwrap();
        let job = h.submit(d);
        assert!(h.run(job).is_err());
    }
    let before = requests_to(&h, "a.test");
    assert!(matches!(
        h.engine.breaker_state(&origin(URL)),
        BreakerState::Open { .. }
    ));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    let out = h.run(job).expect("served by the mirror");
    assert_eq!(out.final_url, MIRROR_URL);
    assert_eq!(
        requests_to(&h, "a.test"),
        before,
        "no request to the origin whose breaker is open"
    );
    assert!(h.retries(job).is_empty(), "no failed attempt was needed");
}

#[test]
fn every_url_behind_an_open_breaker_longer_than_the_policy_allows_fails_with_circuit_open() {
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.cooldown = secs(600);
    cfg.breaker.max_cooldown = secs(600);
    cfg.retry.max_elapsed = secs(120);
    cfg.retry.max_attempts = 1;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    let first = h.submit(download());
    assert!(h.run(first).is_err());
    let second = h.submit(Download::new("http://a.test/other", "/dl/other").unwrap());
    match h.run(second) {
        Err(DownloadError::CircuitOpen {
            origin,
            retry_in,
            last_failure,
        }) => {
            assert_eq!(origin, "http://a.test:80");
            assert!(retry_in > secs(500));
            // Why the origin is failing: the first job's 503.
            assert!(last_failure.contains("503"), "{last_failure}");
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1, "nothing was sent for the second job");
}

#[test]
fn the_retry_budget_spaces_out_a_storm_of_retries() {
    let mut cfg = policy_config();
    cfg.retry.budget_per_minute = 2;
    cfg.retry.max_attempts = 2;
    cfg.breaker.failure_threshold = 100;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    let jobs: Vec<JobId> = (0..4)
        .map(|i| {
            h.submit(Download::new(&format!("http://a.test/{i}"), format!("/dl/{i}")).unwrap())
        })
        .collect();
    for job in &jobs {
        assert!(h.run(*job).is_err());
    }
    let mut delays: Vec<Duration> = jobs.iter().map(|j| h.retries(*j)[0].2).collect();
    delays.sort();
    // Two tokens at once, then one every 30 s.
    assert!(delays[1] <= secs(1), "{delays:?}");
    assert!(delays[2] >= secs(29), "{delays:?}");
    assert!(delays[3] >= secs(59), "{delays:?}");
}

#[test]
fn a_hash_mismatch_on_one_mirror_is_retried_on_another_from_zero() {
    let good = pattern(30_000, 5);
    let bad = pattern(30_000, 6);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(bad));
    h.serve(MIRROR, file_server(good.clone()));
    let job = h.submit(
        download()
            .mirror(MIRROR_URL)
            .unwrap()
            .sha256(&sha_hex(&good))
            .unwrap(),
    );
    let out = h.run(job).expect("the mirror has the right bytes");
    assert_eq!(out.final_url, MIRROR_URL);
    assert_eq!(h.fs.get(dest()), Some(&good[..]));
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    assert!(matches!(retries[0].3, DownloadError::HashMismatch { .. }));
    assert_eq!(h.requests[1].header("range"), None, "from zero");
}

#[test]
fn every_mirror_gets_one_chance_to_serve_the_right_bytes() {
    let good = pattern(30_000, 7);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(pattern(30_000, 8)));
    h.serve(MIRROR, file_server(pattern(30_000, 9)));
    h.serve(THIRD, file_server(good.clone()));
    let job = h.submit(
        download()
            .mirror(MIRROR_URL)
            .unwrap()
            .mirror(THIRD_URL)
            .unwrap()
            .sha256(&sha_hex(&good))
            .unwrap(),
    );
    let out = h.run(job).expect("the third URL has the right bytes");
    assert_eq!(out.final_url, THIRD_URL);
    assert_eq!(h.requests.len(), 3, "each URL asked once");
    assert_eq!(h.fs.get(dest()), Some(&good[..]));
    // Each failure names the URL whose bytes were wrong (it named the download's own URL
    // for the mirror's bytes too).
    let blamed: Vec<String> = h
        .retries(job)
        .into_iter()
        .map(|r| match r.3 {
            DownloadError::HashMismatch { url, .. } => url,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(blamed, [URL, MIRROR_URL]);
}

#[test]
fn when_every_url_served_wrong_bytes_the_job_fails_without_asking_twice() {
    let good = pattern(30_000, 14);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(pattern(30_000, 15)));
    h.serve(MIRROR, file_server(pattern(30_000, 16)));
    let job = h.submit(
        download()
            .mirror(MIRROR_URL)
            .unwrap()
            .sha256(&sha_hex(&good))
            .unwrap(),
    );
    assert!(matches!(
        h.run(job),
        Err(DownloadError::HashMismatch { .. })
    ));
    assert_eq!(
        h.requests.len(),
        2,
        "a URL that served wrong bytes is not used again"
    );
    assert!(!h.fs.exists(dest()));
}

#[test]
fn a_chunked_body_longer_than_the_expected_size_fails_over_to_a_mirror() {
    let good = pattern(20_000, 17);
    let mut h = Harness::new(policy_config());
    let long = pattern(25_000, 18);
    h.serve(ORIGIN, move |_| Reply::new(chunked(200, &[], &long, 4_096)));
    h.serve(MIRROR, file_server(good.clone()));
    let job = h.submit(download().size(20_000).mirror(MIRROR_URL).unwrap());
    let out = h.run(job).expect("the mirror has the expected size");
    assert_eq!(out.final_url, MIRROR_URL);
    assert_eq!(h.fs.get(dest()), Some(&good[..]));
}

#[test]
fn a_faster_mirror_is_preferred_once_measured() {
    let body = pattern(400_000, 10);
    let mut cfg = policy_config();
    cfg.seed = 11;
    let mut h = Harness::new(cfg);
    let b1 = body.clone();
    h.serve(ORIGIN, move |r| {
        file_server(b1.clone())(r)
            .pieces(&[16_384])
            .gap(Duration::from_millis(40))
    });
    let b2 = body.clone();
    h.serve(MIRROR, move |r| {
        file_server(b2.clone())(r).pieces(&[65_536])
    });
    // Measure both: one download from each.
    let a = h.submit(Download::new("http://a.test/f0", "/dl/f0").unwrap());
    h.run(a).unwrap();
    let b = h.submit(Download::new("http://b.test/f0", "/dl/g0").unwrap());
    h.run(b).unwrap();
    let mut from_mirror = 0;
    for i in 1..=10 {
        let d = Download::new(&format!("http://a.test/f{i}"), format!("/dl/f{i}"))
            .unwrap()
            .mirror(&format!("http://b.test/f{i}"))
            .unwrap();
        let job = h.submit(d);
        let out = h.run(job).unwrap();
        if out.final_url.starts_with("http://b.test/") {
            from_mirror += 1;
        }
    }
    assert!(
        from_mirror >= 8,
        "the fast mirror served {from_mirror} of 10"
    );
}

#[test]
fn switching_mirrors_without_a_sha256_starts_over_and_with_one_resumes() {
    for with_hash in [false, true] {
        let body = pattern(200_000, 12);
        let mut h = Harness::new(policy_config());
        let b1 = body.clone();
        // The primary resets the connection after 100,000 bytes of the body and then refuses.
        h.serve(ORIGIN, move |r| {
            let wire = serve_range(&b1, r);
            let cut = head_len(&wire) + 100_000;
            Reply::new(wire[..cut].to_vec()).then(After::Reset)
        });
        h.connect_plan(ORIGIN, |n| {
            if n == 0 {
                ConnectPlan::Accept
            } else {
                ConnectPlan::Fail(IoErrorKind::ConnectFailed)
            }
        });
        h.serve(MIRROR, file_server(body.clone()));
        let mut d = download().mirror(MIRROR_URL).unwrap();
        if with_hash {
            d = d.sha256(&sha_hex(&body)).unwrap();
        }
        let job = h.submit(d);
        h.run(job).expect("the mirror completes it");
        assert_eq!(h.fs.get(dest()), Some(&body[..]));
        let to_mirror: Vec<&Req> = h
            .requests
            .iter()
            .filter(|r| r.header("host") == Some("b.test"))
            .collect();
        assert_eq!(to_mirror.len(), 1);
        let range = to_mirror[0].header("range").map(str::to_string);
        if with_hash {
            assert!(
                range.as_deref().is_some_and(|r| r.starts_with("bytes=")),
                "resumes with a Range: {range:?}"
            );
        } else {
            assert_eq!(range, None, "starts over without a hash");
        }
    }
}

/// The first run of [`a_resume_continues_a_mirrors_bytes_only_from_that_mirror`]: the
/// primary down, the mirror's bytes (`mirror_body`, ETag "fixed") kept after a cancel.
fn partial_from_the_mirror(mirror_body: &[u8]) -> Harness {
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(Vec::new()));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    let b = mirror_body.to_vec();
    h.serve(MIRROR, move |r| {
        Reply::new(serve_range(&b, r))
            .pieces(&[10_000])
            .gap(Duration::from_millis(100))
    });
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run_until("40,000 bytes from the mirror", |h| {
        h.progress(job).last().is_some_and(|&b| b >= 40_000)
    });
    h.cancel(job, crate::engine::CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    let saved = crate::resume::PartState::decode_for(h.fs.get(state()).unwrap(), URL).unwrap();
    assert_eq!(saved.source.as_deref(), Some(MIRROR_URL), "{saved:?}");
    h
}

#[test]
fn a_resume_continues_a_mirrors_bytes_only_from_that_mirror() {
    // Two servers gave one ETag to different bytes. The mirror's bytes, kept by one run,
    // were resumed by the next from the primary (If-Range matched): the mirror's head and
    // the primary's tail, committed without a sha256 to catch it.
    let (primary_body, mirror_body) = (pattern(200_000, 21), pattern(200_000, 22));
    for mirror_up in [true, false] {
        let mut h = partial_from_the_mirror(&mirror_body);
        let b = primary_body.clone();
        h.serve(ORIGIN, move |r| Reply::new(serve_range(&b, r)));
        h.connect_plan(ORIGIN, |_| ConnectPlan::Accept);
        if mirror_up {
            h.serve(MIRROR, file_server(mirror_body.clone()));
        } else {
            h.connect_plan(MIRROR, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
        }
        let again = h.submit(download().mirror(MIRROR_URL).unwrap());
        let out = h.run(again).expect("completes");
        // Continued from the mirror, or started over from the primary: one server's bytes.
        let got = h.fs.get(dest()).expect("committed");
        if got == &mirror_body[..] {
            assert!(mirror_up && out.resumed_from >= 40_000, "{out:?}");
            assert!(out.final_url.starts_with(MIRROR), "{out:?}");
        } else {
            assert_eq!(got, &primary_body[..], "mirror up: {mirror_up}");
            assert_eq!(out.resumed_from, 0, "{out:?}");
        }
    }
}

#[test]
fn credentials_go_only_to_the_first_url() {
    let body = pattern(1_000, 13);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    h.serve(MIRROR, file_server(body));
    let job = h.submit(
        download()
            .header("Authorization", "Bearer secret")
            .mirror(MIRROR_URL)
            .unwrap(),
    );
    h.run(job).unwrap();
    assert_eq!(h.requests[0].header("authorization"), Some("Bearer secret"));
    assert_eq!(h.requests[1].header("authorization"), None);
}

#[test]
fn mirrors_are_deduplicated_and_must_be_http() {
    let d = download()
        .mirror(MIRROR_URL)
        .unwrap()
        .mirror(MIRROR_URL)
        .unwrap()
        .mirror(URL)
        .unwrap();
    assert_eq!(d.mirrors().len(), 1);
    assert!(matches!(
        download().mirror("ftp://x/y"),
        Err(DownloadError::InvalidRequest(_))
    ));
}

#[test]
fn segments_failing_together_count_as_one_failure_of_their_origin() {
    let body = pattern(4 * 1024 * 1024, 19);
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 2;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    // The probe streams slowly; every other (segment) request gets its head and 1 KiB, then
    // a reset.
    h.serve(ORIGIN, move |r| {
        let wire = serve_range(&b, r);
        let head = head_len(&wire);
        if r.seq == 0 {
            Reply::new(wire)
                .pieces(&[head, 64 * 1024])
                .gap(Duration::from_millis(50))
        } else {
            Reply::new(wire[..head + 1024].to_vec()).then(After::Reset)
        }
    });
    let job = h.submit(download().segments(8).min_segment(256 * 1024));
    h.run_until("the segments fail", |h| {
        h.now > at(Duration::from_millis(300))
    });
    let resets = h.requests.len() - 1;
    assert!(resets >= 7, "{resets} segment requests");
    assert!(
        !matches!(
            h.engine.breaker_state(&origin(URL)),
            BreakerState::Open { .. }
        ),
        "one job's {resets} segments failing opened the breaker"
    );
    h.cancel(job, crate::engine::CancelMode::Discard);
    let _ = h.run(job);
}

#[test]
fn a_404_on_one_url_fails_over_to_a_mirror_and_a_404_everywhere_ends_after_one_request_each() {
    let body = pattern(20_000, 71);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, |_| Reply::new(with_length(404, &[], b"")));
    h.serve(MIRROR, file_server(body.clone()));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run(job).expect("the mirror serves the file");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert_eq!(requests_to(&h, "a.test"), 1, "the 404 is not retried");
    assert_eq!(failovers(&h, job).len(), 1);

    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, |_| Reply::new(with_length(404, &[], b"")));
    h.serve(MIRROR, |_| Reply::new(with_length(410, &[], b"")));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    match h.run(job) {
        Err(DownloadError::Status { status: 410, .. }) => {}
        other => panic!("expected the mirror's 410, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 2, "each URL asked once");
    assert!(!h.fs.exists(dest()));
}

#[test]
fn a_tls_failure_on_the_primary_fails_over_to_the_mirror() {
    let body = pattern(20_000, 72);
    let mut h = Harness::new(policy_config());
    h.serve(ORIGIN, file_server(body.clone()));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::Tls));
    h.serve(MIRROR, file_server(body.clone()));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run(job).expect("the mirror serves the file");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
}

#[test]
fn broken_paths_answering_500_do_not_open_the_breaker_for_the_good_files_of_the_origin() {
    let body = pattern(5_000, 73);
    let mut cfg = policy_config();
    cfg.retry.max_attempts = 2;
    let mut h = Harness::new(cfg);
    let good = body.clone();
    h.serve(ORIGIN, move |r| {
        if r.path.starts_with("/broken") {
            Reply::new(with_length(500, &[], b""))
        } else {
            file_server(good.clone())(r)
        }
    });
    for n in 0..8 {
        let url = format!("http://a.test/broken{n}");
        let job = h.submit(Download::new(&url, format!("/dl/broken{n}")).unwrap());
        assert!(matches!(
            h.run(job),
            Err(DownloadError::Status { status: 500, .. })
        ));
    }
    assert_eq!(
        h.engine.breaker_state(&origin(URL)),
        BreakerState::Closed { failures: 0 }
    );
    let job = h.submit(download());
    h.run(job)
        .expect("a good file of the same origin downloads");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
}

#[test]
fn the_retry_time_limit_counts_from_when_a_job_starts_not_from_when_it_was_queued() {
    let body = pattern(5_000, 74);
    let mut cfg = policy_config();
    cfg.max_active_jobs = 1;
    cfg.retry.max_elapsed = secs(5);
    let mut h = Harness::new(cfg);
    // The first job takes 10 s (its body arrives in two pieces 10 s apart); the second's
    // first request is answered 503, then it is served.
    let slow = body.clone();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    h.serve(ORIGIN, move |r| {
        if r.path == "/slow" {
            let half = slow.len() / 2 + 200;
            return file_server(slow.clone())(r).pieces(&[half]).gap(secs(10));
        }
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(slow.clone())(r)
        }
    });
    let first = h.submit(Download::new("http://a.test/slow", "/dl/slow").unwrap());
    let second = h.submit(download());
    h.run(first).expect("the slow file");
    h.run(second)
        .expect("queued behind it for longer than the limit, it still gets its retry");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A server (a CDN filling its cache, say) that answers the first request for each file
/// 503 with `Retry-After: 1`, and serves it from the second.
fn serve_each_file_after_one_503(h: &mut Harness, origin: &str, body: Vec<u8>) {
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    h.serve(origin, move |r| {
        if seen.insert(r.path.clone()) {
            Reply::new(with_length(503, &[hdr("Retry-After", 1)], b""))
        } else {
            file_server(body.clone())(r)
        }
    });
}

#[test]
fn a_503_with_retry_after_for_each_new_file_does_not_open_the_breaker_on_a_list() {
    // Sixteen jobs start at once and each first request is refused "for a second": counted
    // against the breaker these opened it for its cool-down (60 s then), longer than the jobs may
    // wait, and the list failed with CircuitOpen though every file was served a second later.
    let body = pattern(3_000, 75);
    let mut cfg = config();
    cfg.retry.max_elapsed = secs(20);
    cfg.breaker.cooldown = secs(60);
    let mut h = Harness::new(cfg);
    serve_each_file_after_one_503(&mut h, ORIGIN, body.clone());
    let jobs: Vec<(JobId, String)> = (0..30)
        .map(|n| {
            let dest = format!("/dl/f{n}.bin");
            let d = Download::new(&format!("http://a.test/files/f{n}.bin"), &dest).unwrap();
            (h.submit(d), dest)
        })
        .collect();
    for (job, dest) in &jobs {
        let out = h.run(*job).expect("every file is served on its retry");
        assert_eq!(out.attempts, 2, "{dest}");
        assert_eq!(h.fs.get(dest), Some(&body[..]), "{dest}");
    }
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::BreakerOpened { .. })),
        "the breaker stayed closed"
    );
    assert_eq!(requests_to(&h, "a.test"), 60, "two requests per file");
}

#[test]
fn a_half_open_probe_answered_503_with_retry_after_does_not_double_the_cooldown() {
    let body = pattern(3_000, 76);
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 1;
    let cooldown = cfg.breaker.cooldown;
    let mut h = Harness::new(cfg);
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let b = body.clone();
    h.serve(ORIGIN, move |r| {
        if r.path == "/down" {
            // Garbage for a head: counted against the origin (opening its breaker, with a
            // threshold of one) and not retried, so the job ends at once.
            Reply::new(b"HTTP/1.1 OK\r\n\r\n".to_vec())
        } else if seen.insert(r.path.clone()) {
            Reply::new(with_length(503, &[hdr("Retry-After", 1)], b""))
        } else {
            file_server(b.clone())(r)
        }
    });
    let first = h.submit(Download::new("http://a.test/down", "/dl/down").unwrap());
    assert!(h.run(first).is_err());
    let openings = |h: &Harness| {
        h.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::BreakerOpened { .. }))
            .count()
    };
    assert_eq!(openings(&h), 1);
    let opened_at = h
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::BreakerOpened { .. }))
        .map(|(t, _)| *t)
        .unwrap();
    // After the cool-down this job's first request is the probe; its 503 says "in a second"
    // and the retry is served.
    let job = h.submit(download());
    h.run(job)
        .expect("served on the retry after the probe's 503");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert_eq!(
        openings(&h),
        1,
        "the probe's 503 did not reopen the breaker"
    );
    assert!(
        h.finished_at(job) < opened_at + cooldown + secs(10),
        "finished at {}, opened at {opened_at}",
        h.finished_at(job)
    );
}

#[test]
fn a_paused_job_resumes_on_the_url_it_was_fetching_from_never_fails_over() {
    // A pause is no failure of the URL: the resumed attempt continues where it was, though
    // a fresh choice among measured mirrors explores another one now and then (one in ten).
    // Large enough for a throughput sample (64 KiB).
    let body = pattern(200_000, 61);
    let mut moved = 0;
    for seed in 0..60 {
        let mut cfg = policy_config();
        cfg.seed = seed;
        let mut h = Harness::new(cfg);
        for (origin, gap) in [(ORIGIN, 1), (MIRROR, 2)] {
            let b = body.clone();
            h.serve(origin, move |req| {
                Reply::new(serve_range(&b, req))
                    .pieces(&[20_000])
                    .gap(secs(gap))
            });
        }
        // Both origins measured first: the primary faster.
        for (url, to) in [(URL, "/dl/a.bin"), (MIRROR_URL, "/dl/b.bin")] {
            let first = h.submit(Download::new(url, to).unwrap());
            h.run(first).expect("measured");
        }
        let job = h.submit(mirrored_with_sha256(&body));
        let start = h.now;
        h.run_until("three seconds in", |h| h.now >= start + secs(3));
        let seen = h.requests.len();
        let host = h.requests[seen - 1].header("host").unwrap().to_string();
        let before = failovers(&h, job).len();
        h.engine.pause(h.now, job);
        h.drain();
        h.now = h.now + secs(10);
        h.engine.resume(h.now, job);
        h.drain();
        h.run(job).expect("resumed");
        assert_eq!(h.fs.get(dest()), Some(&body[..]));
        let after_pause = failovers(&h, job).split_off(before);
        assert!(after_pause.is_empty(), "seed {seed}: {after_pause:?}");
        let after = &h.requests[seen];
        assert!(after.header("range").is_some(), "seed {seed}: it resumed");
        assert_eq!(after.header("host"), Some(&host[..]), "seed {seed}");
        moved += usize::from(host != "a.test");
    }
    // The first choice did explore now and then: the seeds cover a choice that would move.
    assert!(moved > 0, "no seed started on the mirror");
}

#[test]
fn a_paused_job_whose_url_breaker_opened_meanwhile_resumes_on_its_mirror() {
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cooldown = secs(600);
    cfg.retry.max_elapsed = secs(300);
    cfg.retry.max_attempts = 1;
    let mut h = Harness::new(cfg);
    let body = pattern(200_000, 62);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.path == "/files/f.bin" {
            Reply::new(serve_range(&b, req))
                .pieces(&[20_000])
                .gap(secs(1))
        } else {
            Reply::new(with_length(503, &[], b""))
        }
    });
    h.serve(MIRROR, file_server(body.clone()));
    let job = h.submit(mirrored_with_sha256(&body));
    h.run_until("three seconds in", |h| h.now >= at(secs(3)));
    assert_eq!(requests_to(&h, "b.test"), 0, "on the primary so far");
    h.engine.pause(h.now, job);
    h.drain();
    // Meanwhile other downloads from the primary's origin fail: its breaker opens.
    for path in ["/x", "/y"] {
        let other = h.submit(Download::new(&format!("{ORIGIN}{path}"), "/dl/x").unwrap());
        assert!(h.run(other).is_err());
    }
    assert!(
        matches!(
            h.engine.breaker_state(&origin(URL)),
            BreakerState::Open { .. }
        ),
        "the breaker is open"
    );
    let resumed_at = h.now;
    h.engine.resume(h.now, job);
    h.drain();
    let out = h.run(job).expect("finished on the mirror");
    assert_eq!(out.final_url, MIRROR_URL);
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert!(
        h.now < resumed_at + secs(60),
        "it did not wait out the breaker: {:?}",
        h.now.saturating_since(resumed_at)
    );
}

/// A retry whose every URL is behind an open breaker says how long it really waits: until
/// the first breaker lets a probe through (it said the backoff's second or two, and the
/// next request came a minute later).
#[test]
fn a_retry_behind_an_open_breaker_announces_the_breaker_s_wait() {
    let mut h = unhealthy_for_30_s(5, pattern(5_000, 4));
    let job = h.submit(download());
    h.run(job).expect("the probe after the cool-down succeeds");
    let retries = h.retries(job);
    assert_eq!(retries.len(), 3, "{retries:?}");
    let (said_at, _, delay, _) = retries[2].clone();
    let probe = h.requests.last().unwrap().at;
    assert!(delay >= secs(59), "announced {delay:?}");
    assert!(
        probe.saturating_since(said_at + delay) < secs(1),
        "announced {delay:?} at {said_at}, probed at {probe}"
    );
}

/// `max_attempts` bounds the tries of the file, not of its URLs: with one attempt allowed
/// (`--retries 0`), a 404 and a 503 still fail over to the next mirror, each URL being
/// tried once; it is the backoff after every URL failed that the limit stops (mirrors were
/// never tried with `--retries 0`).
#[test]
fn moving_on_to_an_untried_mirror_is_not_a_retry() {
    let good = pattern(3_000, 91);
    let mut cfg = policy_config();
    cfg.retry.max_attempts = 1;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(404, &[], b"")));
    h.serve(MIRROR, |_| Reply::new(with_length(503, &[], b"")));
    h.serve(THIRD, file_server(good.clone()));
    let job = h.submit(
        download()
            .mirror(MIRROR_URL)
            .unwrap()
            .mirror(THIRD_URL)
            .unwrap(),
    );
    let out = h.run(job).expect("the third URL serves the file");
    assert_eq!(out.final_url, THIRD_URL);
    assert_eq!(h.requests.len(), 3, "each URL once");
    assert_eq!(h.fs.get(dest()), Some(&good[..]));
    // Every URL failing: one round, no retry after it.
    let mut h = Harness::new({
        let mut c = policy_config();
        c.retry.max_attempts = 1;
        c
    });
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    h.serve(MIRROR, |_| Reply::new(with_length(503, &[], b"")));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    assert!(matches!(
        h.run(job),
        Err(DownloadError::Status { status: 503, .. })
    ));
    assert_eq!(h.requests.len(), 2, "each URL once, then no backoff retry");
}

/// The engine's default retry policy and breaker, with a budget that never holds a retry.
fn default_policies() -> Config {
    let mut cfg = config();
    cfg.retry = crate::config::RetryPolicy {
        budget_per_minute: 100_000,
        ..Default::default()
    };
    cfg.breaker = Default::default();
    cfg
}

/// Twenty jobs (sixteen run at once) for files of `h`'s origin; each job's number is in
/// its file's name.
fn submit_twenty(h: &mut Harness) -> Vec<JobId> {
    (0..20)
        .map(|n| {
            let d = Download::new(
                &format!("http://a.test/files/f{n}.bin"),
                format!("/dl/f{n}.bin"),
            )
            .unwrap();
            h.submit(d)
        })
        .collect()
}

#[test]
fn a_list_for_a_dead_origin_fails_after_its_retries_not_through_doubling_cooldowns() {
    // Jobs waited through every doubled cool-down (30, 60, 120 s...) up to their time limit,
    // and those that left the queue later waited again on their own limit: 20 URLs to a port
    // nobody listened on took 421 s. A job now waits behind the breaker only as long as its
    // own retries would have lasted (1 + 2 + 4 + 8 + 16 s).
    let mut h = Harness::new(default_policies());
    h.serve(ORIGIN, file_server(pattern(1_000, 9)));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    let jobs = submit_twenty(&mut h);
    let cooldown = h.engine.config().breaker.cooldown;
    let circuit_open = run_to_connect_failures(&mut h, &jobs, |_, _| {});
    let last = jobs.iter().map(|&j| h.finished_at(j)).max().unwrap();
    assert!(
        last <= at(secs(31).max(cooldown) + secs(5)),
        "the list ended at {last}; the retries' backoffs add up to 31 s"
    );
    // Sixteen first tries (each refusal counts: the fifth opens the breaker) and one probe
    // per cool-down (at 10 and 30 s: the breaker's doubling waits). The jobs that tried
    // end with their own failure; only the four that left the queue last, which never
    // tried, with CircuitOpen.
    assert_eq!(h.connects(), 18);
    assert_eq!(circuit_open, 4, "jobs that failed with CircuitOpen");
}

#[test]
fn a_host_that_never_answers_opens_its_breaker_after_the_first_wave_of_timeouts() {
    // Every connect hangs until the connect timeout. Sixteen that time out together are
    // sixteen requests that each waited in vain, not one broken-connection incident: counted
    // as one per wave, the breaker opened only after five waves (84 s), when the downloads
    // had spent their retries.
    let mut h = Harness::new(default_policies());
    h.serve(ORIGIN, file_server(pattern(1_000, 9)));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Hang);
    let jobs: Vec<JobId> = (0..40)
        .map(|n| {
            let url = format!("http://a.test/files/f{n}.bin");
            h.submit(Download::new(&url, format!("/dl/f{n}.bin")).unwrap())
        })
        .collect();
    for &job in &jobs {
        assert!(h.run(job).is_err());
    }
    let opened = h
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::BreakerOpened { .. }))
        .map(|(t, _)| *t);
    let connect_timeout = h.engine.config().connect_timeout;
    assert!(
        opened.is_some_and(|t| t <= at(connect_timeout + secs(1))),
        "breaker opened at {opened:?}, connects {}",
        h.connects()
    );
}

#[test]
fn without_retries_a_list_for_a_dead_origin_ends_at_once_not_after_a_cool_down() {
    // With one try per download, those that left the queue after the breaker opened waited
    // its whole cool-down (10 s) for a probe, though they may not retry anyway.
    let mut cfg = default_policies();
    cfg.retry.max_attempts = 1;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(pattern(1_000, 9)));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    let jobs: Vec<JobId> = (0..40)
        .map(|n| {
            let url = format!("http://a.test/files/f{n}.bin");
            h.submit(Download::new(&url, format!("/dl/f{n}.bin")).unwrap())
        })
        .collect();
    let circuit_open = run_to_connect_failures(&mut h, &jobs, |h, job| {
        assert!(h.finished_at(job) < at(secs(1)), "{job} waited");
    });
    assert!(
        h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::BreakerOpened { .. })),
        "the breaker opened"
    );
    assert!(circuit_open > 0, "some downloads never tried");
    assert_eq!(
        h.connects() + circuit_open,
        40,
        "one try or none per download"
    );
}

#[test]
fn every_connection_reset_by_one_blip_counts_once_and_the_list_goes_on_at_once() {
    // The server restarts while sixteen downloads receive: every connection is reset at
    // the same moment. Counted as sixteen consecutive failures, that opened the breaker
    // and held every download for its cool-down; it is one incident, and the retries
    // (sent after it) find the server back.
    let body = pattern(5_000, 12);
    let mut h = Harness::new(default_policies());
    let b = body.clone();
    h.serve(ORIGIN, move |r| {
        let wire = serve_range(&b, r);
        if r.seq < 16 {
            let cut = head_len(&wire) + 1_000;
            Reply::new(wire[..cut].to_vec()).then(After::Reset)
        } else {
            Reply::new(wire)
        }
    });
    let jobs = submit_twenty(&mut h);
    let cooldown = h.engine.config().breaker.cooldown;
    for (n, &job) in jobs.iter().enumerate() {
        h.run(job).expect("served on its retry");
        assert_eq!(h.fs.get(format!("/dl/f{n}.bin")), Some(&body[..]));
        assert!(
            h.finished_at(job) < at(cooldown),
            "f{n} waited for a cool-down"
        );
    }
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::BreakerOpened { .. })),
        "the breaker stayed closed"
    );
    assert_eq!(
        h.engine
            .breaker_state(&origin("http://a.test/files/f0.bin")),
        BreakerState::Closed { failures: 0 }
    );
}

#[test]
fn a_list_whose_server_refuses_each_files_first_request_completes() {
    // Each file's first request is answered 503 (a cache filling, without Retry-After): the
    // first requests open the breaker; after its cool-down the probe (a retry) succeeded,
    // but a second probe was needed to close it, which went to a new file's first request:
    // its 503 reopened the breaker for 60 s and ended every waiting download, 1 file of 20.
    let body = pattern(2_000, 11);
    let mut h = Harness::new(default_policies());
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    let serve = body.clone();
    h.serve(ORIGIN, move |r| {
        if seen.insert(r.path.clone()) {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(serve.clone())(r)
        }
    });
    let jobs = submit_twenty(&mut h);
    for (n, &job) in jobs.iter().enumerate() {
        h.run(job).expect("served on its retry");
        assert_eq!(h.fs.get(format!("/dl/f{n}.bin")), Some(&body[..]));
    }
}

#[test]
fn a_list_waits_out_the_first_cooldown_of_an_origin_down_for_ten_seconds() {
    // Failing fast must not give up on a short outage: the breaker's first cool-down is
    // waited (it is within the retry policy's longest pause), and its probe finds the
    // origin back.
    let body = pattern(2_000, 10);
    let mut h = Harness::new(default_policies());
    let healthy_from = at(secs(10));
    let serve = body.clone();
    h.serve(ORIGIN, move |r| {
        if r.at < healthy_from {
            Reply::new(with_length(502, &[], b""))
        } else {
            file_server(serve.clone())(r)
        }
    });
    let jobs = submit_twenty(&mut h);
    for (n, &job) in jobs.iter().enumerate() {
        h.run(job).expect("served once the origin is back");
        assert_eq!(h.fs.get(format!("/dl/f{n}.bin")), Some(&body[..]));
    }
    assert!(h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::BreakerOpened { .. })));
}

/// A harness with the default retry and breaker policies but `max_attempts`, whose origin
/// answers 502 for its first `down` and then serves `body`.
fn origin_down_for(down: Duration, max_attempts: u32, body: Vec<u8>) -> Harness {
    let mut cfg = default_policies();
    cfg.retry.max_attempts = max_attempts;
    let mut h = Harness::new(cfg);
    let healthy_from = at(down);
    h.serve(ORIGIN, move |r| {
        if r.at < healthy_from {
            Reply::new(with_length(502, &[], b""))
        } else {
            file_server(body.clone())(r)
        }
    });
    h
}

#[test]
fn a_download_asked_for_many_retries_waits_out_an_origin_down_for_two_minutes() {
    // `--retries 20`: its own backoffs (1, 2, 4 ... 32 s) would go on for minutes, but a
    // fixed 32 s limit behind the breaker ended it after the first failed probe, at about
    // 40 s (curl with `--retry 20` got the file). It now waits as long as its retries would.
    let body = pattern(3_000, 12);
    let mut h = origin_down_for(secs(120), 21, body.clone());
    let job = h.submit(download());
    let outcome = h
        .run(job)
        .expect("the origin came back within the retries asked for");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert!(h.finished_at(job) >= at(secs(120)));
    // Behind the breaker it sent only probes: five failures opened it, then one probe per
    // cool-down (10, 20, 40 s, then the one that got through).
    assert!(
        outcome.attempts <= 9,
        "{} attempts; the breaker let through only its probes",
        outcome.attempts
    );
}

/// A `status` answer whose head's last byte comes `after` the rest.
fn slow_head(status: u16, headers: &[(&str, String)], after: Duration) -> Reply {
    let bytes = with_length(status, headers, b"");
    let n = bytes.len();
    Reply::new(bytes).pieces(&[n - 1, 1]).gap(after)
}

#[test]
fn a_second_outage_is_waited_for_after_a_retry_after_outlasted_the_first() {
    // The job's 503 with Retry-After: 60 comes at 2 s while the breaker is open (until
    // 30 s); its limit behind the breaker was kept though it waited for its own Retry-After.
    // The origin recovers at 30 s (a probe closes the breaker), then a new outage opens it at
    // about 41 s until about 71 s. The job woke at 62 s and ended at once, behind an outage
    // it had never waited for, with retries left; the origin is back at 65 s.
    // (From a review.)
    let body = pattern(3_000, 12);
    let mut h = Harness::new(default_policies());
    let file = body.clone();
    h.serve(ORIGIN, move |r| {
        let t = r.at.since_epoch();
        if r.path == "/files/f.bin" {
            if t < secs(5) {
                return slow_head(503, &[hdr("Retry-After", 60)], secs(2));
            }
            return file_server(file.clone())(r);
        }
        if t < secs(25) {
            Reply::new(with_length(502, &[], b""))
        } else if t <= Duration::from_millis(30_500) || t >= secs(65) {
            file_server(file.clone())(r)
        } else {
            slow_head(502, &[], secs(10))
        }
    });
    let job = h.submit(download());
    h.run_until("the job's request", |h| {
        h.requests.iter().any(|r| r.path == "/files/f.bin")
    });
    // Others that open the breaker, and later probe it.
    for n in 0..10 {
        let d = Download::new(
            &format!("http://a.test/files/h{n}.bin"),
            format!("/dl/h{n}.bin"),
        )
        .unwrap();
        h.submit(d);
    }
    let opened = |h: &Harness| {
        h.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::BreakerOpened { .. }))
            .count()
    };
    let result = h.run(job);
    assert!(opened(&h) >= 2, "two outages");
    assert!(
        result.is_ok(),
        "ended at {} with {result:?}",
        h.finished_at(job)
    );
}

#[test]
fn a_download_with_the_default_retries_ends_behind_an_origin_that_stays_down() {
    // The other side of the same rule: with the default retries (their backoffs add up to
    // 31 s) the download ends when the probe after the first cool-down fails, not when the
    // origin comes back two minutes later.
    let mut h = origin_down_for(secs(120), 6, pattern(3_000, 12));
    let job = h.submit(download());
    assert!(matches!(
        h.run(job),
        Err(DownloadError::Status { status: 502, .. })
    ));
    assert!(
        h.finished_at(job) <= at(secs(60)),
        "ended at {}",
        h.finished_at(job)
    );
}

#[test]
fn a_url_that_asked_for_an_hour_is_not_asked_again_while_a_mirror_may_go() {
    // The primary answers 429 "in an hour", the mirror 503 each time: the primary was asked
    // again after each of the mirror's backoffs, a second after it said an hour.
    let mut cfg = policy_config();
    cfg.retry.max_attempts = 4;
    cfg.retry.max_elapsed = secs(120);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(429, &[hdr("Retry-After", 3600)], b""))
    });
    h.serve(MIRROR, |_| Reply::new(with_length(503, &[], b"")));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    assert!(h.run(job).is_err(), "neither URL serves");
    assert_eq!(
        requests_to(&h, "a.test"),
        1,
        "the primary asked for an hour"
    );
    assert!(requests_to(&h, "b.test") >= 2, "the mirror was tried again");
}

#[test]
fn a_download_longer_than_the_retry_time_limit_is_still_retried_after_a_late_failure() {
    // 3 MB over 60 s with a 20 s retry time limit: a reset after 2.5 MB came 50 s after the
    // download left the queue, and it was not retried at all (50 s + backoff > 20 s). Its
    // progress now counts the limit again from the failure.
    let body = pattern(3_000_000, 31);
    let mut cfg = default_policies();
    cfg.retry.max_elapsed = secs(20);
    cfg.idle_timeout = secs(5);
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if req.seq == 0 {
            let cut = head_len(&wire) + 2_500_000;
            Reply::new(wire[..cut].to_vec())
                .pieces(&[50_000])
                .gap(secs(1))
                .then(After::Reset)
        } else {
            Reply::new(wire)
        }
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("retried from where it got to");
    assert_committed(&h, &body);
    assert_eq!(out.attempts, 2);
    assert!(out.bytes_fetched < 3_100_000, "resumed, not fetched again");
    assert!(
        h.finished_at(job) > at(secs(40)),
        "the first response took its time"
    );
}

#[test]
fn a_download_that_gets_further_with_each_try_is_not_out_of_tries() {
    // A server cutting every response after 1.5 MB: each try resumed and got 1.5 MB
    // further, but `--retries 2` gave three responses (4.5 MB of 6), each after a longer
    // pause. Progress renews the tries and the backoff.
    let body = pattern(6_000_000, 32);
    let mut cfg = default_policies();
    cfg.retry.max_attempts = 3;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let cut = (head_len(&wire) + 1_500_000).min(wire.len());
        Reply::new(wire[..cut].to_vec()).then(After::Reset)
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("each try got further");
    assert_committed(&h, &body);
    assert_eq!(out.attempts, 4);
    // Every pause the first backoff's (1 s at most), not 1, 2, 4 s.
    for (_, _, delay, _) in h.retries(job) {
        assert!(delay <= secs(1), "{delay:?}");
    }
}

#[test]
fn a_primary_that_asked_for_time_is_waited_for_when_its_mirror_is_behind_a_breaker() {
    // The primary answers 503 with Retry-After: 40 and is fine from 35 s; the mirror refuses
    // every connection, and its failures open its breaker. The primary was asked again after
    // the next backoff, at about 19 s, and its second 503 ended the download (a black-box
    // tester's run; without the mirror the same download succeeded at 40 s).
    let body = pattern(2_000, 7);
    let mut h = Harness::new(default_policies());
    let serve = body.clone();
    h.serve(ORIGIN, move |r| {
        if r.at < at(secs(35)) {
            Reply::new(with_length(503, &[hdr("Retry-After", 40)], b""))
        } else {
            file_server(serve.clone())(r)
        }
    });
    h.serve(MIRROR, |_| Reply::new(b"".to_vec()));
    h.connect_plan(MIRROR, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run(job).expect("the primary, asked when it said");
    assert_committed(&h, &body);
    let primary: Vec<String> = h
        .requests
        .iter()
        .filter(|r| r.path == "/files/f.bin")
        .map(|r| r.at.to_string())
        .collect();
    assert_eq!(primary.len(), 2, "asked at 0 and after 40 s: {primary:?}");
    assert!(h.requests.last().unwrap().at >= at(secs(40)));
}

#[test]
fn a_mirror_back_after_its_breaker_is_probed_though_the_primary_asked_for_an_hour() {
    // (From a review.) Waiting for the primary's hour passed the retry time limit, and the
    // download ended at once, though the mirror's breaker let a probe through.
    let body = pattern(2_000, 7);
    let mut cfg = default_policies();
    cfg.retry.max_attempts = 10;
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.cooldown = secs(1);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(429, &[hdr("Retry-After", 3600)], b""))
    });
    h.serve(MIRROR, file_server(body.clone()));
    h.connect_plan(MIRROR, |n| {
        if n < 2 {
            ConnectPlan::Fail(IoErrorKind::ConnectFailed)
        } else {
            ConnectPlan::Accept
        }
    });
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    h.run(job)
        .expect("the mirror serves once its breaker lets a probe through");
    assert_committed(&h, &body);
}

#[test]
fn a_download_kept_from_its_mirror_by_a_breaker_ends_with_circuit_open_not_its_primarys_404() {
    // The primary answers 404 and is dropped; the mirror's breaker, reopened by another
    // download, keeps this one waiting past the limit. It ended with the primary's 404 (exit
    // "HTTP status": the user concludes the file is missing), having asked the mirror nothing.
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.cooldown = secs(20);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(404, &[], b"")));
    let body = pattern(1_000, 12);
    let mirror_body = body.clone();
    h.serve(MIRROR, move |r| {
        if r.path.ends_with("/down.bin") {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(mirror_body.clone())(r)
        }
    });
    // Opens the mirror's breaker, and its failed probe after 20 s reopens it for 40 s.
    let other = h.submit(Download::new("http://b.test/pub/down.bin", "/dl/down.bin").unwrap());
    assert!(h.run(other).is_err());
    let mirror_requests = requests_to(&h, "b.test");
    let job = h.submit(download().mirror(MIRROR_URL).unwrap());
    match h.run(job) {
        Err(DownloadError::CircuitOpen { origin, .. }) => assert_eq!(origin, "http://b.test:80"),
        other => panic!("expected CircuitOpen for the mirror, got {other:?}"),
    }
    assert_eq!(
        requests_to(&h, "b.test"),
        mirror_requests,
        "the mirror was not asked"
    );
}

#[test]
fn a_download_resumed_behind_a_reopened_breaker_does_not_end_with_a_failure_it_got_past() {
    // Its first request failed (502), its retry was answered and downloading when it was
    // paused; another download reopened the origin's breaker past the limit meanwhile. On
    // resume it ended with the 502 from the start, long since overcome.
    let mut cfg = policy_config();
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.cooldown = secs(20);
    let mut h = Harness::new(cfg);
    let body = pattern(100_000, 13);
    let mut first = true;
    h.serve(ORIGIN, move |r| {
        if r.path.ends_with("/down.bin") {
            return Reply::new(with_length(503, &[], b""));
        }
        if std::mem::take(&mut first) {
            return Reply::new(with_length(502, &[], b""));
        }
        let wire = serve_range(&body, r);
        let head = head_len(&wire);
        Reply::new(wire).pieces(&[head, 1_000]).gap(secs(1))
    });
    let job = h.submit(download());
    h.run_until("the retry downloads", |h| h.progress(job).len() > 3);
    h.engine.pause(h.now, job);
    h.drain();
    let other = h.submit(Download::new("http://a.test/files/down.bin", "/dl/down.bin").unwrap());
    assert!(h.run(other).is_err());
    h.engine.resume(h.now, job);
    h.drain();
    match h.run(job) {
        Err(DownloadError::CircuitOpen { .. }) => {}
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
}

#[test]
fn downloads_waiting_behind_a_breaker_leave_their_slots_to_other_origins() {
    // Downloads from a dead host took the slots while they waited 30 s for its breaker,
    // and the downloads from a working host queued behind them waited as long. As many dead
    // downloads as slots (all fail, then park), and more (the later ones park as they start,
    // on a path that did not schedule: their slots stayed idle).
    for (dead, slots) in [(4, 4), (6, 2)] {
        downloads_behind_a_dead_host_leave_their_slots(dead, slots);
    }
}

fn downloads_behind_a_dead_host_leave_their_slots(dead: usize, slots: usize) {
    let mut cfg = default_policies();
    cfg.max_active_jobs = slots;
    cfg.breaker.failure_threshold = 2;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(pattern(1_000, 15)));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Fail(IoErrorKind::ConnectFailed));
    let body = pattern(1_000, 16);
    h.serve(MIRROR, file_server(body.clone()));
    let dead: Vec<JobId> = (0..dead)
        .map(|n| {
            h.submit(Download::new(&format!("{URL}.{n}"), format!("/dl/dead{n}.bin")).unwrap())
        })
        .collect();
    let good: Vec<JobId> = (0..4)
        .map(|n| {
            h.submit(
                Download::new(&format!("{MIRROR}/pub/g{n}.bin"), format!("/dl/g{n}.bin")).unwrap(),
            )
        })
        .collect();
    for &job in &good {
        h.run(job).expect("the working host serves");
        assert!(
            h.finished_at(job) < at(secs(5)),
            "{job} finished at {}, behind the dead host's breaker ({} slots)",
            h.finished_at(job),
            slots
        );
    }
    for &job in &dead {
        assert!(h.run(job).is_err());
    }
}

#[test]
fn a_parked_download_whose_wait_is_over_does_not_go_before_a_more_urgent_queued_one() {
    use crate::sched::Priority;
    let mut cfg = default_policies();
    cfg.max_active_jobs = 1;
    cfg.breaker.failure_threshold = 1;
    cfg.breaker.cooldown = secs(10);
    let mut h = Harness::new(cfg);
    // The low download's origin refuses its first request, which opens its breaker.
    let mut first = true;
    h.serve(ORIGIN, move |r| {
        if std::mem::take(&mut first) {
            Reply::new(with_length(503, &[], b""))
        } else {
            file_server(pattern(1_000, 17))(r)
        }
    });
    // A long download holds the slot for about 50 s (at 4 KB/s, above the low-speed
    // limit); a critical one queues behind it.
    let long = pattern(200_000, 18);
    h.serve(MIRROR, move |r| {
        if r.path.ends_with("/long.bin") {
            let wire = serve_range(&long, r);
            let head = head_len(&wire);
            Reply::new(wire).pieces(&[head, 4_000]).gap(secs(1))
        } else {
            file_server(pattern(1_000, 19))(r)
        }
    });
    let low = h.submit(download().priority(Priority::Low));
    h.run_until("the low download parks", |h| !h.retries(low).is_empty());
    let long_job = h.submit(Download::new("http://b.test/pub/long.bin", "/dl/long.bin").unwrap());
    let critical = h.submit(
        Download::new("http://b.test/pub/c.bin", "/dl/c.bin")
            .unwrap()
            .priority(Priority::Critical),
    );
    h.run(long_job).expect("long");
    h.run(critical).expect("critical");
    h.run(low).expect("low");
    // When the slot freed, the low download's wait was long over; the critical one went
    // first.
    let critical_asked = h
        .requests
        .iter()
        .position(|r| r.path.ends_with("/c.bin"))
        .expect("critical asked");
    let low_retried = h
        .requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.header("host") == Some("a.test"))
        .map(|(n, _)| n)
        .nth(1)
        .expect("low retried");
    assert!(
        critical_asked < low_retried,
        "the low download's retry (request {low_retried}) went before the critical one \
         (request {critical_asked})"
    );
}
