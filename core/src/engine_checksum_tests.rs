//! Scripted tests of a download's other checksum ([`Download::checksum`]): streamed beside
//! the SHA-256 where the engine hashes the file, else read back before the commit; its
//! mismatch, and a cancel or pause while the read-back runs. The driver is `engine_tests`'
//! [`Harness`].

use sha2::Digest;

use crate::download::{ChecksumAlgorithm, Download};
use crate::engine::{CancelMode, Event, JobId};
use crate::engine_tests::{
    assert_committed, assert_nothing_left, at, config, dest, download, file_server, part, pattern,
    secs, sha_hex, Harness, ORIGIN, URL,
};
use crate::error::DownloadError;
use crate::io::IoOp;
use crate::rng::SeededRng;
use crate::Config;

/// `bytes`' digest of `algorithm` in hex, from the algorithms' crates directly.
fn digest_hex(algorithm: ChecksumAlgorithm, bytes: &[u8]) -> String {
    match algorithm {
        ChecksumAlgorithm::Sha1 => hex::encode(sha1::Sha1::digest(bytes)),
        ChecksumAlgorithm::Sha224 => hex::encode(sha2::Sha224::digest(bytes)),
        ChecksumAlgorithm::Sha384 => hex::encode(sha2::Sha384::digest(bytes)),
        ChecksumAlgorithm::Sha512 => hex::encode(sha2::Sha512::digest(bytes)),
        ChecksumAlgorithm::Md5 => hex::encode(md5::Md5::digest(bytes)),
        ChecksumAlgorithm::Adler32 => hex::encode(adler2::adler32_slice(bytes).to_be_bytes()),
    }
}

fn with_checksum(algorithm: ChecksumAlgorithm, bytes: &[u8]) -> Download {
    download()
        .checksum(algorithm, &digest_hex(algorithm, bytes))
        .expect("valid checksum")
}

/// The tests' configurations: a named partial, an unnamed file, and each hashed by the
/// executor (no read-back of the engine's own for the SHA-256).
fn configs() -> [(&'static str, Config); 4] {
    let named = config();
    let unnamed = Config {
        unnamed_max: u64::MAX,
        ..config()
    };
    [
        ("named", named.clone()),
        ("unnamed", unnamed.clone()),
        (
            "named, executor digests",
            Config {
                executor_digests: true,
                ..named
            },
        ),
        (
            "unnamed, executor digests",
            Config {
                executor_digests: true,
                ..unnamed
            },
        ),
    ]
}

/// The configurations whose SHA-256 the executor computes (a download written in order):
/// the engine sees no bytes, and the other checksum is read back.
fn read_back_configs() -> Vec<(&'static str, Config)> {
    configs()
        .into_iter()
        .filter(|(_, c)| c.executor_digests)
        .collect()
}

/// (offset, length) of every `ReadAt` issued after the last `WriteAt`: the checksum's reads.
fn read_backs_after_the_writes(h: &Harness) -> Vec<(u64, u64)> {
    let last_write = h
        .ops
        .iter()
        .rposition(|(_, op)| matches!(op, IoOp::WriteAt { .. }))
        .expect("the file was written");
    h.ops[last_write..]
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::ReadAt { offset, len, .. } => Some((*offset, *len)),
            _ => None,
        })
        .collect()
}

/// Every `ReadAt` completes only at t = 100 s: the job sits in its read-back until then.
fn hold_reads(h: &mut Harness) {
    h.hold = Some(Box::new(|op| {
        matches!(op, IoOp::ReadAt { .. }).then(|| at(secs(100)))
    }));
}

fn run_until_reading_back(h: &mut Harness) {
    h.run_until("the checksum's read-back", |h| {
        h.pending_has(|op| matches!(op, IoOp::ReadAt { .. }))
    });
}

#[test]
fn a_matching_checksum_of_each_algorithm_is_streamed_or_read_back_in_chunks_then_committed() {
    // Three chunks of 1 MiB and a bit: more than the two reads in flight at once.
    let body = pattern(3 * 1024 * 1024 + 1_000, 90);
    for (name, cfg) in configs() {
        for algorithm in ChecksumAlgorithm::ALL {
            let mut h = Harness::new(cfg.clone());
            h.serve(ORIGIN, file_server(body.clone()));
            let job = h.submit(with_checksum(algorithm, &body));
            let out = h
                .run(job)
                .unwrap_or_else(|e| panic!("{name}, {algorithm}: {e}"));
            assert_committed(&h, &body);
            assert_eq!(out.sha256_hex(), sha_hex(&body));
            let reads = read_backs_after_the_writes(&h);
            let chunk = 1024 * 1024;
            let expected: Vec<(u64, u64)> = if cfg.executor_digests {
                (0..4)
                    .map(|i| (i * chunk, chunk.min(body.len() as u64 - i * chunk)))
                    .collect()
            } else {
                // The engine hashed every byte as it came: the checksum with it.
                Vec::new()
            };
            assert_eq!(reads, expected, "{name}, {algorithm}: every byte, once");
            if expected.is_empty() {
                continue;
            }
            // Read back before the file is named at its destination.
            let last_read = h
                .ops
                .iter()
                .rposition(|(_, op)| matches!(op, IoOp::ReadAt { .. }));
            let commit = h
                .ops
                .iter()
                .position(|(_, op)| matches!(op, IoOp::Rename { .. } | IoOp::Publish { .. }));
            assert!(last_read < commit, "{name}, {algorithm}");
        }
    }
}

#[test]
fn the_checksum_read_back_survives_short_reads_and_any_completion_order() {
    let body = pattern(2 * 1024 * 1024 + 77, 91);
    for seed in 0..20u64 {
        let (name, cfg) = configs()[seed as usize % 4].clone();
        let algorithm = ChecksumAlgorithm::ALL[seed as usize % 6];
        let mut h = Harness::new(cfg);
        h.schedule = crate::engine_tests::Schedule::Random(SeededRng::new(seed));
        h.fs.max_read = Some(300_000 + seed * 1_000);
        h.serve(ORIGIN, file_server(body.clone()));
        let job = h.submit(with_checksum(algorithm, &body).segments(1 + seed as u32 % 3));
        h.run(job)
            .unwrap_or_else(|e| panic!("seed {seed} ({name}, {algorithm}): {e}"));
        assert_committed(&h, &body);

        // The same download expecting the digest of a file one byte different fails.
        let mut other = body.clone();
        other[body.len() / 2] ^= 1;
        let mut h = Harness::new(configs()[seed as usize % 4].1.clone());
        h.schedule = crate::engine_tests::Schedule::Random(SeededRng::new(seed));
        h.fs.max_read = Some(300_000 + seed * 1_000);
        h.serve(ORIGIN, file_server(body.clone()));
        let job = h.submit(with_checksum(algorithm, &other).segments(1 + seed as u32 % 3));
        let result = h.run(job);
        assert!(
            matches!(result, Err(DownloadError::ChecksumMismatch { .. })),
            "seed {seed} ({name}, {algorithm}): {result:?}"
        );
        assert_nothing_left(&h);
    }
}

#[test]
fn a_checksum_mismatch_is_retried_once_from_zero_then_fails_and_commits_nothing() {
    let body = pattern(200_000, 92);
    for (name, cfg) in configs() {
        let mut h = Harness::new(cfg);
        h.serve(ORIGIN, file_server(body.clone()));
        let wrong = digest_hex(ChecksumAlgorithm::Sha512, b"other bytes");
        let job = h.submit(
            download()
                .sha256(&sha_hex(&body))
                .unwrap()
                .checksum(ChecksumAlgorithm::Sha512, &wrong)
                .unwrap(),
        );
        match h.run(job) {
            Err(DownloadError::ChecksumMismatch {
                algorithm,
                url,
                path,
                expected,
                actual,
            }) => {
                assert_eq!(algorithm, ChecksumAlgorithm::Sha512, "{name}");
                assert_eq!((url.as_str(), path), (URL, dest()), "{name}");
                assert_eq!(expected, wrong, "{name}");
                assert_eq!(
                    actual,
                    digest_hex(ChecksumAlgorithm::Sha512, &body),
                    "{name}"
                );
            }
            other => panic!("{name}: expected ChecksumMismatch, got {other:?}"),
        }
        assert_nothing_left(&h);
        assert_eq!(h.requests.len(), 2, "{name}: retried once");
        assert_eq!(h.requests[1].header("range"), None, "{name}: from zero");
        let retries = h.retries(job);
        assert!(
            matches!(
                retries.as_slice(),
                [(_, 2, _, DownloadError::ChecksumMismatch { .. })]
            ),
            "{name}: {retries:?}"
        );
        assert!(
            !h.ops
                .iter()
                .any(|(_, op)| matches!(op, IoOp::Rename { .. } | IoOp::Publish { .. })),
            "{name}: nothing was committed"
        );
    }
}

#[test]
fn a_cancel_during_the_checksum_read_back_ends_cleanly() {
    let body = pattern(3 * 1024 * 1024, 93);
    for (name, cfg) in read_back_configs() {
        for mode in [CancelMode::Discard, CancelMode::KeepPartial] {
            let mut h = Harness::new(cfg.clone());
            h.serve(ORIGIN, file_server(body.clone()));
            hold_reads(&mut h);
            let job = h.submit(with_checksum(ChecksumAlgorithm::Sha1, &body));
            run_until_reading_back(&mut h);
            h.cancel(job, mode);
            // The reads in flight complete (at t = 100 s) before the job reports.
            assert_eq!(
                h.run(job),
                Err(DownloadError::Cancelled),
                "{name}, {mode:?}"
            );
            assert!(!h.fs.exists(dest()), "{name}, {mode:?}: nothing committed");
            let kept = h.fs.get(part());
            if mode == CancelMode::KeepPartial && !name.starts_with("unnamed") {
                assert_eq!(kept, Some(&body[..]), "{name}: the whole file kept");
            } else {
                assert_eq!(kept, None, "{name}, {mode:?}: nothing kept");
            }
        }
    }
}

#[test]
fn a_partial_kept_by_a_cancel_during_the_read_back_is_checked_again_and_committed() {
    let body = pattern(3 * 1024 * 1024, 94);
    let (_, cfg) = read_back_configs().remove(0);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(body.clone()));
    hold_reads(&mut h);
    let spec = with_checksum(ChecksumAlgorithm::Md5, &body);
    let job = h.submit(spec.clone());
    run_until_reading_back(&mut h);
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    let requests = h.requests.len();
    h.hold = None;
    let again = h.submit(spec);
    let out = h.run(again).expect("resumed and checked");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, body.len() as u64);
    assert_eq!(out.bytes_fetched, 0);
    assert_eq!(h.requests.len(), requests + 1, "one request to confirm");
}

#[test]
fn a_pause_during_the_read_back_lets_a_passing_file_commit_and_stops_a_failing_one() {
    let body = pattern(3 * 1024 * 1024, 95);
    for (name, cfg) in read_back_configs() {
        // Passing: the pause finds nothing left to fetch; the file is committed.
        let mut h = Harness::new(cfg.clone());
        h.serve(ORIGIN, file_server(body.clone()));
        hold_reads(&mut h);
        let job = h.submit(with_checksum(ChecksumAlgorithm::Sha224, &body));
        run_until_reading_back(&mut h);
        h.engine.pause(h.now, job);
        h.drain();
        h.run(job).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_committed(&h, &body);

        // Failing: it stops where its retry would start, and goes on when resumed.
        let mut h = Harness::new(cfg);
        h.serve(ORIGIN, file_server(body.clone()));
        hold_reads(&mut h);
        let wrong = "0".repeat(56);
        let job = h.submit(
            download()
                .checksum(ChecksumAlgorithm::Sha224, &wrong)
                .unwrap(),
        );
        run_until_reading_back(&mut h);
        h.engine.pause(h.now, job);
        h.drain();
        while h.step() {}
        assert!(
            h.finished(job).is_none(),
            "{name}: paused, not ended: {:#?}",
            h.events_of(job)
        );
        assert_eq!(h.requests.len(), 1, "{name}: no retry while paused");
        assert!(h.pending.is_empty(), "{name}: {:?}", h.pending);
        assert!(!h.fs.exists(dest()), "{name}");
        h.engine.resume(h.now, job);
        h.drain();
        assert!(
            matches!(h.run(job), Err(DownloadError::ChecksumMismatch { .. })),
            "{name}"
        );
        assert_eq!(h.requests.len(), 2, "{name}: the retry ran once resumed");
        assert_nothing_left(&h);
    }
}

#[test]
fn a_destination_holding_the_bytes_is_kept_only_if_its_other_checksum_matches_too() {
    let body = pattern(50_000, 96);
    let sha = sha_hex(&body);
    // Both match: finished without a request.
    let mut h = Harness::new(config());
    h.fs.put(dest(), &body);
    h.serve(ORIGIN, file_server(body.clone()));
    let right = digest_hex(ChecksumAlgorithm::Md5, &body);
    let job = h.submit(
        download()
            .sha256(&sha)
            .unwrap()
            .checksum(ChecksumAlgorithm::Md5, &right)
            .unwrap(),
    );
    let out = h.run(job).expect("already there");
    assert_eq!((out.bytes_fetched, h.requests.len()), (0, 0));

    // The SHA-256 matches, the checksum does not: not taken as done; the download's own
    // check fails it, and the destination is left as it was.
    let mut h = Harness::new(config());
    h.fs.put(dest(), &body);
    h.serve(ORIGIN, file_server(body.clone()));
    let wrong = digest_hex(ChecksumAlgorithm::Md5, b"other");
    let job = h.submit(
        download()
            .sha256(&sha)
            .unwrap()
            .checksum(ChecksumAlgorithm::Md5, &wrong)
            .unwrap(),
    );
    assert!(matches!(
        h.run(job),
        Err(DownloadError::ChecksumMismatch { .. })
    ));
    assert!(!h.requests.is_empty(), "fetched, not taken from the disk");
    assert_eq!(h.fs.get(dest()), Some(&body[..]), "destination untouched");
}

#[test]
fn jobs_of_one_url_with_different_checksums_do_not_share_a_result() {
    let body = pattern(40_000, 97);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let right = with_checksum(ChecksumAlgorithm::Sha384, &body);
    let wrong = Download::new(URL, "/dl/other.bin")
        .unwrap()
        .checksum(ChecksumAlgorithm::Sha384, &"1".repeat(96))
        .unwrap();
    let same = Download::new(URL, "/dl/same.bin")
        .unwrap()
        .checksum(
            ChecksumAlgorithm::Sha384,
            &digest_hex(ChecksumAlgorithm::Sha384, &body),
        )
        .unwrap();
    let jobs: Vec<JobId> = [right, wrong, same].map(|d| h.submit(d)).to_vec();
    assert!(h.run(jobs[0]).is_ok());
    // The one expecting another checksum did not wait for the first: it started at once.
    let started = h
        .events
        .iter()
        .position(|(_, e)| matches!(e, Event::Started { job, .. } if *job == jobs[1]));
    let first_done = h
        .events
        .iter()
        .position(|(_, e)| matches!(e, Event::Finished { job, .. } if *job == jobs[0]));
    assert!(started < first_done, "{:#?}", h.events_of(jobs[1]));
    assert!(matches!(
        h.run(jobs[1]),
        Err(DownloadError::ChecksumMismatch { .. })
    ));
    assert!(h.run(jobs[2]).is_ok());
    assert_eq!(h.fs.get("/dl/same.bin"), Some(&body[..]));
    assert!(!h.fs.exists("/dl/other.bin"));
    // The one with the same expectations copied the first one's file; it fetched nothing.
    assert!(h.events_of(jobs[2]).iter().any(|e| matches!(
        e,
        Event::Finished {
            result: Ok(o),
            ..
        } if o.bytes_fetched == 0
    )));
}

/// Paused while the read-back runs and resumed after the check failed: the retry goes to
/// the mirror, never back to the URL that served the wrong bytes (a resume goes on where it
/// was only after a pause in the middle of an attempt).
#[test]
fn a_job_paused_during_a_failing_read_back_retries_on_its_mirror_when_resumed() {
    let good = pattern(3 * 1024 * 1024, 98);
    let bad = pattern(3 * 1024 * 1024, 99);
    let (_, cfg) = read_back_configs().remove(0);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(bad));
    h.serve("http://b.test", file_server(good.clone()));
    hold_reads(&mut h);
    let d = download()
        .mirror("http://b.test/pub/f.bin")
        .unwrap()
        .checksum(
            ChecksumAlgorithm::Md5,
            &digest_hex(ChecksumAlgorithm::Md5, &good),
        )
        .unwrap();
    let job = h.submit(d);
    run_until_reading_back(&mut h);
    h.engine.pause(h.now, job);
    h.drain();
    while h.step() {}
    assert!(h.finished(job).is_none(), "paused where its retry starts");
    h.hold = None;
    h.engine.resume(h.now, job);
    h.drain();
    h.run(job).expect("the mirror's bytes pass");
    let hosts: Vec<_> = h.requests.iter().map(|r| r.header("host")).collect();
    assert_eq!(hosts, [Some("a.test"), Some("b.test")]);
    assert_committed(&h, &good);
}
