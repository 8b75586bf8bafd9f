//! Scripted tests of the engine's scheduling features against the in-memory driver of
//! [`crate::engine_tests`]: segmented downloads (probe, split, out-of-order hashing, resets,
//! work stealing, servers that ignore ranges, resume from recorded ranges, connection
//! limits), the priority queue and dependencies, deduplication, the existing-destination
//! check, rate limits, pause/resume and the statistics.
//!
//! The harness checks the call contract on every step (see `engine_tests`); these tests pin
//! what the features do on the wire, on the disk and in the events.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

use crate::config::Config;
use crate::download::Download;
use crate::engine::{CancelMode, Engine, Event, JobId};
use crate::engine_tests::{
    assert_nothing_left, assert_two_reads_in_flight_covering, at, config, dest, download, hdr,
    head_len, job_of, origin_key, part, pattern, requested_range, response, serve_range, sha,
    sha_hex, state, with_length, After, Harness, Reply, Req, Schedule, ETAG, ORIGIN, URL,
};
use crate::error::DownloadError;
use crate::http::HttpError;
use crate::io::{ConnId, IoOp};
use crate::resume::{PartState, Validator, STATE_VERSION};
use crate::rng::SeededRng;
use crate::sched::Priority;
use crate::time::Instant;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A download of [`URL`] to [`dest`] over up to `segments` connections.
fn segmented(segments: u32, min_segment: u64) -> Download {
    download().segments(segments).min_segment(min_segment)
}

/// The reply `wire` with its head delivered alone, then the body in `piece`-sized pieces.
fn head_first(wire: Vec<u8>, piece: usize) -> Reply {
    let head = head_len(&wire);
    Reply::new(wire).pieces(&[head, piece])
}

/// `[first, last]` of a request's `Range`, with an open end as `None`.
fn range_of(req: &Req) -> Option<(u64, Option<u64>)> {
    requested_range(req).map(|(f, l)| (f as u64, l.map(|l| l as u64)))
}

/// The files the engine opened (`Open`, `OpenUnnamed` or `OpenRead`) at `path`.
fn files_at(h: &Harness, path: &Path) -> BTreeSet<crate::io::FileId> {
    h.ops
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::Open { file, path: p, .. }
            | IoOp::OpenUnnamed { file, path: p }
            | IoOp::OpenRead { file, path: p }
                if p == path =>
            {
                Some(*file)
            }
            _ => None,
        })
        .collect()
}

/// (issued at, start, end) of every `WriteAt` to a file opened at `path`.
fn writes_to(h: &Harness, path: &Path) -> Vec<(Instant, u64, u64)> {
    let files = files_at(h, path);
    h.ops
        .iter()
        .filter_map(|(t, op)| match op {
            IoOp::WriteAt { file, offset, data } if files.contains(file) => {
                Some((*t, *offset, *offset + data.len() as u64))
            }
            _ => None,
        })
        .collect()
}

/// Bytes written to files opened at `path` by `WriteAt`s issued no later than `until`.
fn written_until(h: &Harness, path: &Path, until: Instant) -> u64 {
    writes_to(h, path)
        .iter()
        .filter(|(t, _, _)| *t <= until)
        .map(|(_, s, e)| e - s)
        .sum()
}

/// The ranges cover `[0, len)` exactly once: no byte written twice, none missing.
fn assert_exact_cover(mut ranges: Vec<(u64, u64)>, len: u64) {
    ranges.sort_unstable();
    let mut at = 0;
    for (s, e) in &ranges {
        assert_eq!(*s, at, "written ranges overlap or leave a hole: {ranges:?}");
        at = *e;
    }
    assert_eq!(at, len, "written ranges end at {at}, not {len}");
}

fn segmented_events(h: &Harness, job: JobId) -> Vec<u32> {
    h.events_of(job)
        .iter()
        .filter_map(|e| match e {
            Event::Segmented { segments, .. } => Some(*segments),
            _ => None,
        })
        .collect()
}

fn started_order(h: &Harness) -> Vec<JobId> {
    h.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Started { job, .. } => Some(*job),
            _ => None,
        })
        .collect()
}

/// Index in the event log of `job`'s first event matching `what`.
fn event_index(h: &Harness, job: JobId, what: impl Fn(&Event) -> bool) -> usize {
    h.events
        .iter()
        .position(|(_, e)| what(e) && job_of(e) == job)
        .expect("event present")
}

fn pause(h: &mut Harness, job: JobId) {
    h.engine.pause(h.now, job);
    h.drain();
}

fn resume(h: &mut Harness, job: JobId) {
    h.engine.resume(h.now, job);
    h.drain();
}

fn assert_committed_at(h: &Harness, path: &Path, body: &[u8]) {
    assert!(
        h.fs.get(path) == Some(body),
        "{} does not hold the body",
        path.display()
    );
}

fn assert_committed(h: &Harness, body: &[u8]) {
    assert_committed_at(h, &dest(), body);
    assert!(!h.fs.exists(part()), "partial left after commit");
    assert!(!h.fs.exists(state()), "state file left after commit");
}

// ------------------------------------------------------------------------ segmented

#[test]
fn segmented_download_probes_with_an_open_range_then_fetches_each_other_segment_once() {
    let body = pattern(100_000, 1);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| head_first(serve_range(&b, req), 4096));
    // Segments of 25 000 bytes can never be stolen from (halves would be under the minimum).
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("segmented download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    assert_eq!(out.bytes_fetched, 100_000, "no byte fetched twice");
    assert_eq!(segmented_events(&h, job), vec![4]);
    let ranges: Vec<_> = h.requests.iter().map(range_of).collect();
    assert_eq!(ranges[0], Some((0, None)), "the probe asks for bytes=0-");
    let rest: BTreeSet<_> = ranges[1..].iter().cloned().collect();
    let expected: BTreeSet<_> = [
        Some((25_000, Some(49_999))),
        Some((50_000, Some(74_999))),
        Some((75_000, Some(99_999))),
    ]
    .into_iter()
    .collect();
    assert_eq!(h.requests.len(), 4, "requests: {ranges:?}");
    assert_eq!(rest, expected);
    for req in &h.requests[1..] {
        assert_eq!(
            req.header("if-range"),
            Some(ETAG),
            "segments carry If-Range"
        );
    }
    let writes = writes_to(&h, &part()).iter().map(|w| (w.1, w.2)).collect();
    assert_exact_cover(writes, 100_000);
    // The probe's connection is cut at its segment's end; the others are reused or idle.
    let probe_conn = h.requests[0].conn;
    assert!(h.conns[&probe_conn].close_issued, "the cut probe is closed");
}

#[test]
fn segmented_download_with_small_segments_writes_every_byte_exactly_once() {
    let body = pattern(300_000, 2);
    let mut h = Harness::new(config());
    h.schedule = Schedule::Random(SeededRng::new(7));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[1500, 3000, 700])
    });
    let job = h.submit(segmented(4, 4096).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("segmented download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 300_000);
    assert!(h.requests.len() > 4, "stealing made more requests");
    assert_eq!(range_of(&h.requests[0]), Some((0, None)));
    for req in &h.requests[1..] {
        assert!(
            matches!(range_of(req), Some((_, Some(_)))),
            "segment requests are bytes=a-b: {:?}",
            req.header("range")
        );
    }
    let writes = writes_to(&h, &part()).iter().map(|w| (w.1, w.2)).collect();
    assert_exact_cover(writes, 300_000);
    // Requested ranges overlap only where a response was cut: the earlier request was the
    // last on its connection and the engine closed that connection.
    for (i, a) in h.requests.iter().enumerate() {
        let (a0, a1) = range_of(a).expect("ranged");
        let a1 = a1.unwrap_or(299_999);
        for b in &h.requests[i + 1..] {
            let (b0, b1) = range_of(b).expect("ranged");
            let b1 = b1.unwrap_or(299_999);
            if a0 <= b1 && b0 <= a1 {
                let last_on_conn = !h.requests[i + 1..].iter().any(|r| r.conn == a.conn);
                assert!(
                    last_on_conn && h.conns[&a.conn].close_issued,
                    "{:?} overlaps {:?} but was not cut",
                    a.header("range"),
                    b.header("range")
                );
            }
        }
    }
}

/// Serves `body` with ranges; the probe (`bytes=0-`, the first segment) trickles `slow` bytes
/// a second while every other range comes at once in pieces of `fast`: the later segments
/// are complete before the first, so the hash reads them back.
fn serve_with_a_trickling_first_segment(h: &mut Harness, body: &[u8], slow: usize, fast: usize) {
    let b = body.to_vec();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if range_of(req) == Some((0, None)) {
            head_first(wire, slow).gap(secs(1))
        } else {
            head_first(wire, fast)
        }
    });
}

#[test]
fn segments_completing_out_of_order_are_hashed_by_reading_them_back() {
    let body = pattern(100_000, 3);
    let mut h = Harness::new(config());
    serve_with_a_trickling_first_segment(&mut h, &body, 5000, 8192);
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    let writes = writes_to(&h, &part());
    let last_of_first = writes
        .iter()
        .filter(|w| w.2 <= 25_000)
        .map(|w| w.0)
        .max()
        .expect("first segment written");
    let last_of_rest = writes
        .iter()
        .filter(|w| w.1 >= 25_000)
        .map(|w| w.0)
        .max()
        .expect("other segments written");
    assert!(
        last_of_rest < last_of_first,
        "later segments finished first ({last_of_rest} vs {last_of_first})"
    );
    // The frontier reached 25 000 last, and the bytes after it were read back to be hashed.
    let files = files_at(&h, &part());
    let reads: Vec<(u64, u64)> = h
        .ops
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::ReadAt { file, offset, len } if files.contains(file) => Some((*offset, *len)),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![(25_000, 75_000)], "one catch-up read");
}

#[test]
fn once_every_segment_is_in_the_sync_runs_while_the_hash_reads_back_and_the_commit_does_not_sync_again(
) {
    let body = pattern(100_000, 5);
    let mut h = Harness::new(config());
    serve_with_a_trickling_first_segment(&mut h, &body, 5000, 8192);
    // Read-backs take until t = 20 s.
    h.hold = Some(Box::new(|op| {
        matches!(op, IoOp::ReadAt { .. }).then(|| at(secs(20)))
    }));
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    let files = files_at(&h, &part());
    let last_write = writes_to(&h, &part())
        .iter()
        .map(|w| w.0)
        .max()
        .expect("written");
    let syncs: Vec<Instant> = h
        .ops
        .iter()
        .filter_map(|(t, op)| match op {
            IoOp::Sync { file } if files.contains(file) && *t >= last_write => Some(*t),
            _ => None,
        })
        .collect();
    // (A checkpoint's sync may be issued at the same moment as the early one.)
    assert!(!syncs.is_empty(), "no sync after the last write");
    assert!(
        syncs.iter().all(|t| *t < at(secs(20))),
        "a sync waited for the read-back: issued at {syncs:?}"
    );
}

#[test]
fn a_failed_early_sync_fails_the_segmented_download_and_leaves_nothing() {
    let body = pattern(100_000, 6);
    let mut h = Harness::new(config());
    h.fs.fail_sync = true;
    serve_with_a_trickling_first_segment(&mut h, &body, 5000, 8192);
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    match h.run(job) {
        Err(DownloadError::LocalIo { failure, .. }) => {
            assert!(failure.to_string().contains("sync failed"), "{failure}")
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert_nothing_left(&h);
}

#[test]
fn a_long_read_back_reads_the_next_chunk_while_the_previous_one_is_hashed() {
    let body = pattern(10_000_000, 7);
    let mut h = Harness::new(config());
    serve_with_a_trickling_first_segment(&mut h, &body, 50_000, 65_536);
    // Read-backs take until t = 1000 s: whatever is issued before then was in flight at once.
    h.hold = Some(Box::new(|op| {
        matches!(op, IoOp::ReadAt { .. }).then(|| at(secs(1000)))
    }));
    let job = h.submit(segmented(4, 1_000_000).sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    let files = files_at(&h, &part());
    let reads: Vec<(Instant, u64, u64)> = h
        .ops
        .iter()
        .filter_map(|(t, op)| match op {
            IoOp::ReadAt { file, offset, len } if files.contains(file) => Some((*t, *offset, *len)),
            _ => None,
        })
        .collect();
    assert!(reads.len() >= 3, "{reads:?}");
    assert_two_reads_in_flight_covering(&reads, at(secs(1000)), body.len() as u64);
}

#[test]
fn short_read_backs_still_hash_every_byte_once_in_order() {
    let body = pattern(10_000_000, 8);
    let mut h = Harness::new(config());
    h.fs.max_read = Some(1_000_000);
    serve_with_a_trickling_first_segment(&mut h, &body, 50_000, 65_536);
    let job = h.submit(segmented(4, 1_000_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds despite short reads");
    assert_eq!(out.sha256, sha(&body));
    assert_committed(&h, &body);
}

#[test]
fn segment_reset_midway_is_refetched_from_where_it_stopped() {
    let body = pattern(100_000, 4);
    let mut h = Harness::new(config());
    let b = body.clone();
    let mut reset_done = false;
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if range_of(req) == Some((50_000, Some(74_999))) && !reset_done {
            reset_done = true;
            let cut = head_len(&wire) + 10_000;
            return head_first(wire[..cut].to_vec(), 4000).then(After::Reset);
        }
        head_first(wire, 4096)
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(
        out.bytes_fetched, 100_000,
        "nothing before the reset is fetched again"
    );
    let ranges: Vec<_> = h.requests.iter().map(range_of).collect();
    assert_eq!(
        ranges.last(),
        Some(&Some((60_000, Some(74_999)))),
        "the rest of the reset segment is asked for: {ranges:?}"
    );
    assert_eq!(h.requests.len(), 5);
    let writes = writes_to(&h, &part()).iter().map(|w| (w.1, w.2)).collect();
    assert_exact_cover(writes, 100_000);
}

/// A server that serves one request at a time and turns away the others with 503 and
/// `Retry-After` (a mirror limiting connections per client): once its extra connections are
/// refused, the download keeps to the connections it has, instead of sending the refused
/// ranges again, all at once, each time one of them finishes.
#[test]
fn a_server_refusing_extra_connections_gets_no_more_than_it_takes() {
    let body = pattern(400_000, 9);
    let mut h = Harness::new(config());
    let b = body.clone();
    let busy_until = Rc::new(Cell::new(Instant::ZERO));
    let refused = Rc::new(Cell::new(0usize));
    let (busy, count) = (busy_until.clone(), refused.clone());
    h.serve(ORIGIN, move |req| {
        if req.at < busy.get() {
            count.set(count.get() + 1);
            return Reply::new(with_length(503, &[hdr("retry-after", 1)], b"busy"));
        }
        let wire = serve_range(&b, req);
        let pieces = (wire.len() - head_len(&wire)).div_ceil(4096) as u64;
        busy.set(req.at + millis(5 * (pieces + 1)));
        head_first(wire, 4096).gap(millis(5))
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    // The three extra segments are refused, and one more request: this server still counts
    // the probe's connection, cut by the client at its segment's end, as busy for the
    // whole file. Without a limit the refused ranges went out again each time a
    // connection freed, and the attempts ran out.
    assert!(
        refused.get() <= 4,
        "{} requests refused (the first extra segments only): {:?}",
        refused.get(),
        h.requests.iter().map(range_of).collect::<Vec<_>>()
    );
}

/// A segmented download (4 segments) of `len` bytes from a server that turns extra
/// connections away with 503 and `Retry-After: retry_after` for its first 2 s (a storage
/// service asking clients to slow down), then takes them; 80 KB/s per connection. Runs it
/// to the end.
fn download_from_a_server_busy_at_first(
    len: usize,
    seed: u8,
    retry_after: u64,
) -> (Harness, JobId) {
    let body = pattern(len, seed);
    let mut h = Harness::new(config());
    let b = body.clone();
    let calm_from = at(secs(2));
    h.serve(ORIGIN, move |req| {
        // Busy at first: one connection at a time (the first, with the whole file).
        if req.at < calm_from && req.seq > 0 {
            return Reply::new(with_length(
                503,
                &[hdr("retry-after", retry_after)],
                b"slow down",
            ));
        }
        head_first(serve_range(&b, req), 4096).gap(millis(50))
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    (h, job)
}

/// The most connections open at once while the clock is in `[from, until)`.
fn most_connections_open(h: &Harness, from: Instant, until: Instant) -> usize {
    let (mut open, mut most) = (BTreeSet::new(), 0);
    for (when, op) in &h.ops {
        match op {
            IoOp::Connect { conn, .. } => {
                open.insert(*conn);
            }
            IoOp::Close { conn } => {
                open.remove(conn);
            }
            _ => continue,
        }
        if *when >= from && *when < until {
            most = most.max(open.len());
        }
    }
    most
}

/// The job keeps to the connection it has, and 30 s later tries one more, which the
/// server now takes. The cap held for the job's whole life: 4 MB at 80 KB/s on the one
/// connection left took 51 s.
#[test]
fn a_connection_cap_learnt_from_a_busy_server_is_tried_again_after_30_s() {
    let (h, job) = download_from_a_server_busy_at_first(4_000_000, 10, 1);
    assert_eq!(most_connections_open(&h, at(secs(2)), at(secs(30))), 1);
    assert!(most_connections_open(&h, at(secs(30)), at(secs(1000))) >= 2);
    let finished = h.finished_at(job);
    assert!(
        finished < at(secs(45)),
        "finished at {finished}, as on one connection"
    );
}

/// As above, but the refusal said `Retry-After: 60`: the next connection waits 60 s, not 30.
#[test]
fn a_connection_cap_learnt_with_a_retry_after_is_tried_again_no_sooner_than_it_said() {
    let (h, _) = download_from_a_server_busy_at_first(8_000_000, 14, 60);
    assert_eq!(
        most_connections_open(&h, at(secs(2)), at(secs(60))),
        1,
        "one connection until the 60 s the server asked for"
    );
    assert!(most_connections_open(&h, at(secs(60)), at(secs(1000))) >= 2);
}

#[test]
fn a_finished_connection_steals_half_of_a_slow_segment_and_the_victim_stops_at_the_split() {
    let body = pattern(100_000, 5);
    let mut cfg = config();
    cfg.low_speed = None;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if range_of(req) == Some((50_000, Some(74_999))) {
            // Slow, but never silent long enough to count as stalled.
            head_first(wire, 2000).gap(millis(40))
        } else {
            head_first(wire, 4096)
        }
    });
    let job = h.submit(segmented(4, 2000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 100_000);
    let slow = h
        .requests
        .iter()
        .find(|r| range_of(r) == Some((50_000, Some(74_999))))
        .expect("the slow segment was requested")
        .clone();
    let thieves: Vec<u64> = h
        .requests
        .iter()
        .filter(|r| r.at >= slow.at && r.conn != slow.conn)
        .filter_map(range_of)
        .map(|(s, _)| s)
        .filter(|s| (50_001..75_000).contains(s))
        .collect();
    assert!(
        !thieves.is_empty(),
        "no later request starts inside the slow segment"
    );
    // The first steal takes the second half of what the victim had left.
    let first_steal = thieves[0];
    assert!(
        (62_500..=63_500).contains(&first_steal),
        "first steal at {first_steal}, not in the middle of the slow segment"
    );
    // The victim's final end is the lowest split point; it stops right there.
    let split = *thieves.iter().min().expect("a thief");
    let victim = &h.conns[&slow.conn];
    assert!(victim.close_issued, "the victim's connection is closed");
    assert!(
        !victim.queue.is_empty(),
        "the victim was closed before its server sent everything"
    );
    let head = head_len(&serve_range(&body, &slow));
    let victim_body = (victim.delivered - head) as u64;
    assert!(
        victim_body >= split - 50_000 && victim_body < split - 50_000 + 2000,
        "victim delivered {victim_body} body bytes, split at {split}"
    );
    let slow_alone = at(millis(25_000 / 2000 * 40));
    assert!(
        h.finished_at(job) < slow_alone,
        "stealing did not speed anything up: finished at {}",
        h.finished_at(job)
    );
}

/// A segmented download of 100,000 bytes in four segments too short to split (minimum
/// 20,000), where the request for `50_000-74_999` sends its head and 10,000 bytes, then
/// nothing for 20 s; `takeovers_stall_too` makes every later request inside that segment
/// stall the same way after 1,000 bytes.
fn stalled_segment_run(takeovers_stall_too: bool) -> (Harness, JobId, Vec<u8>) {
    let body = pattern(100_000, 9);
    let mut cfg = config();
    cfg.low_speed = None;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let head = head_len(&wire);
        match range_of(req) {
            Some((50_000, Some(74_999))) => Reply::new(wire).pieces(&[head + 10_000]).gap(secs(20)),
            Some((s, _)) if takeovers_stall_too && (50_001..75_000).contains(&s) => {
                Reply::new(wire).pieces(&[head + 1_000]).gap(secs(20))
            }
            _ => head_first(wire, 4096),
        }
    });
    let job = h.submit(segmented(4, 20_000).sha256(&sha_hex(&body)).unwrap());
    (h, job, body)
}

/// After a run where the segment `50_000-74_999` was slow: a request on another connection
/// took over the rest of it (its start and when it was sent returned), the slow connection
/// was closed, the download ended before `by`, and no byte was fetched twice.
fn assert_taken_over(
    h: &Harness,
    job: JobId,
    out: &crate::Outcome,
    by: Duration,
) -> (u64, Instant) {
    let slow = h
        .requests
        .iter()
        .find(|r| range_of(r) == Some((50_000, Some(74_999))))
        .unwrap_or_else(|| {
            panic!(
                "the slow segment was requested: {:?}",
                h.requests.iter().map(range_of).collect::<Vec<_>>()
            )
        });
    let takeover: Vec<_> = h
        .requests
        .iter()
        .filter(|r| r.conn != slow.conn)
        .filter_map(|r| range_of(r).map(|range| (range, r.at)))
        .filter(|((s, _), _)| (50_001..75_000).contains(s))
        .collect();
    assert_eq!(
        takeover.len(),
        1,
        "one request takes over the rest: {takeover:?}"
    );
    let ((start, end), sent) = takeover[0];
    assert_eq!(
        end,
        Some(74_999),
        "it takes everything the segment had left"
    );
    assert!(
        h.conns[&slow.conn].close_issued,
        "the slow connection is closed"
    );
    assert!(
        h.finished_at(job) < at(by),
        "the download waited for the slow segment: finished at {:?}",
        h.finished_at(job)
    );
    assert_eq!(out.bytes_fetched, 100_000, "no byte is fetched twice");
    (start, sent)
}

#[test]
fn a_stalled_segment_too_short_to_split_is_taken_over_by_a_free_connection() {
    let (mut h, job, body) = stalled_segment_run(false);
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    let (start, sent) = assert_taken_over(&h, job, &out, secs(2));
    assert_eq!(
        start, 60_000,
        "after the 10,000 bytes the stalled segment got"
    );
    let asked = h
        .requests
        .iter()
        .find(|r| range_of(r) == Some((50_000, Some(74_999))))
        .expect("the stalled segment")
        .at;
    let waited = sent.saturating_since(asked);
    assert!(
        waited >= millis(50) && waited < secs(1),
        "taken over after {waited:?} of silence"
    );
}

/// A segment that goes on, but hundreds of times slower than the others (a slow mirror),
/// with too little left to split, is taken over by a free connection once the others are
/// done: the download does not wait seconds for its trickle while fast connections idle.
#[test]
fn a_lagging_segment_too_short_to_split_is_taken_over_by_a_free_connection() {
    let body = pattern(100_000, 10);
    let mut cfg = config();
    cfg.low_speed = None;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let head = head_len(&wire);
        match range_of(req) {
            // 50 bytes every 10 ms: 5 kB/s, its 25,000 bytes would take five seconds, and
            // never silent long enough to count as stalled.
            Some((50_000, Some(74_999))) => {
                Reply::new(wire).pieces(&[head + 50, 50]).gap(millis(10))
            }
            // The probe at once (so the file splits in quarters); the other segments at
            // about 2 MB/s.
            Some((0, None)) => head_first(wire, 4096),
            _ => Reply::new(wire).pieces(&[head + 4096, 4096]).gap(millis(2)),
        }
    });
    let job = h.submit(segmented(4, 20_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_taken_over(&h, job, &out, secs(1));
}

#[test]
fn a_segment_started_by_a_takeover_is_not_taken_over_again() {
    let (mut h, job, body) = stalled_segment_run(true);
    h.run(job).expect("download succeeds after the stall");
    assert_committed(&h, &body);
    let inside: Vec<_> = h
        .requests
        .iter()
        .filter_map(range_of)
        .filter(|(s, _)| (50_001..75_000).contains(s))
        .collect();
    assert_eq!(
        inside,
        vec![(60_000, Some(74_999))],
        "one take-over, then the download waits for that connection"
    );
    assert!(h.finished_at(job) >= at(secs(20)));
}

const SEG_MIRROR: &str = "http://m.test";
const SEG_MIRROR_URL: &str = "http://m.test/pub/f.bin";

/// Requested ranges: `(first byte, last byte)`.
type Ranges = Vec<(u64, Option<u64>)>;

/// The ranges requested from the main URL and from the mirror (`/pub/...`).
fn ranges_by_url(h: &Harness) -> (Ranges, Ranges) {
    let pick = |mirror: bool| {
        h.requests
            .iter()
            .filter(|r| r.path.starts_with("/pub/") == mirror)
            .filter_map(range_of)
            .collect()
    };
    (pick(false), pick(true))
}

/// A segmented download of 100 000 bytes with a mirror; the mirror answers with `mirror`.
fn mirrored_run(
    sha256: bool,
    mirror: impl FnMut(&Req) -> Reply + 'static,
) -> (Harness, JobId, Vec<u8>) {
    mirrored_run_with(config(), sha256, mirror)
}

/// [`mirrored_run`] with the engine configured by `cfg`.
fn mirrored_run_with(
    cfg: Config,
    sha256: bool,
    mirror: impl FnMut(&Req) -> Reply + 'static,
) -> (Harness, JobId, Vec<u8>) {
    let body = pattern(100_000, 21);
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| head_first(serve_range(&b, req), 4096));
    h.serve(SEG_MIRROR, mirror);
    let mut d = segmented(4, 25_000).mirror(SEG_MIRROR_URL).unwrap();
    if sha256 {
        d = d.sha256(&sha_hex(&body)).unwrap();
    }
    let job = h.submit(d);
    (h, job, body)
}

#[test]
fn segments_of_a_job_with_a_sha256_spread_over_its_mirrors_and_assemble_exactly() {
    let body = pattern(100_000, 21);
    let b = body.clone();
    let (mut h, job, body) = mirrored_run(true, move |req| {
        // Another validator: the mirror's segments cannot carry the main URL's If-Range.
        assert_eq!(req.header("if-range"), None, "If-Range sent to a mirror");
        head_first(serve_range(&b, req), 4096)
    });
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 100_000, "no byte fetched twice");
    let (main, mirror) = ranges_by_url(&h);
    assert_eq!(main[0], (0, None), "the probe goes to the main URL");
    assert!(
        !mirror.is_empty() && main.len() >= 2,
        "segments on both URLs: main {main:?}, mirror {mirror:?}"
    );
    let spread: Vec<String> = h
        .events_of(job)
        .iter()
        .filter_map(|e| match e {
            Event::Spread { url, .. } => Some(url.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        spread,
        [SEG_MIRROR_URL],
        "one Spread event, naming the mirror"
    );
    let writes = writes_to(&h, &part()).iter().map(|w| (w.1, w.2)).collect();
    assert_exact_cover(writes, 100_000);
}

#[test]
fn without_a_sha256_every_segment_stays_on_one_url() {
    let (mut h, job, body) = mirrored_run(false, |_| panic!("the mirror was asked"));
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    let (main, mirror) = ranges_by_url(&h);
    assert_eq!(main.len(), 4, "ranges: {main:?}");
    assert!(mirror.is_empty());
}

#[test]
fn a_mirror_that_answers_a_range_with_the_whole_file_gets_no_more_segments() {
    let body = pattern(100_000, 21);
    let b = body.clone();
    let (mut h, job, body) =
        mirrored_run(true, move |_| head_first(with_length(200, &[], &b), 4096));
    let out = h.run(job).expect("the main URL completes the download");
    assert_committed(&h, &body);
    let (main, mirror) = ranges_by_url(&h);
    assert!(!mirror.is_empty(), "the mirror got segments");
    for range in &mirror {
        assert!(
            main.contains(range),
            "the mirror's range {range:?} went back to the main URL: {main:?}"
        );
    }
    // Segments already on their way to the mirror fail too; none is sent after the first
    // refusal.
    let first_refusal = h
        .requests
        .iter()
        .filter(|r| !r.path.starts_with("/pub/"))
        .find(|r| range_of(r).is_some_and(|r| mirror.contains(&r)))
        .expect("a mirror range re-requested")
        .at;
    assert!(h
        .requests
        .iter()
        .filter(|r| r.path.starts_with("/pub/"))
        .all(|r| r.at <= first_refusal));
    assert_eq!(out.final_url, URL);
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Retrying { .. })),
        "the attempt carried on without a retry"
    );
}

#[test]
fn a_corrupt_mirror_in_an_assembled_download_leads_to_one_retry_on_one_url() {
    let mut bad = pattern(100_000, 21);
    bad[80_000] ^= 1;
    let (mut h, job, body) =
        mirrored_run(true, move |req| head_first(serve_range(&bad, req), 4096));
    let out = h.run(job).expect("the retry on one URL succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    let retries = h.retries(job);
    assert_eq!(
        retries.len(),
        1,
        "the mixed download was retried once: {retries:?}"
    );
    assert!(matches!(retries[0].3, DownloadError::HashMismatch { .. }));
    // The second attempt keeps all its segments on one URL: the attempt's own.
    assert_eq!(out.final_url, URL);
    assert!(
        after_start_over(&h)
            .iter()
            .all(|r| !r.path.starts_with("/pub/")),
        "after the start-over only the main URL"
    );
}

/// The requests from the start-over of a mirrored run on: from the second request to the
/// main URL for a range that begins at byte 0 (the first is the first attempt's probe; a
/// start-over from zero asks for byte 0 again, and the first attempt never does).
fn after_start_over(h: &Harness) -> &[Req] {
    let start = h
        .requests
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.path.starts_with("/pub/"))
        .filter(|(_, r)| range_of(r).is_some_and(|(first, _)| first == 0))
        .nth(1)
        .map(|(i, _)| i)
        .expect("the start-over asks the main URL for byte 0 again");
    &h.requests[start..]
}

#[test]
fn an_assembled_download_that_fails_verification_starts_over_on_its_own_url_not_the_mirror() {
    // The mirror serves other bytes of the same length. With two attempts in all, the
    // start-over on one URL must be made on the URL of the attempt (the good primary): a
    // failover to the mirror would spend the last attempt on the URL that served the bad
    // segments.
    let mut cfg = config();
    cfg.retry.max_attempts = 2;
    let other = pattern(100_000, 99);
    let (mut h, job, body) = mirrored_run_with(cfg, true, move |req| {
        head_first(serve_range(&other, req), 4096)
    });
    let out = h.run(job).expect("the start-over on the primary succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.final_url, URL);
    let (_, mirror) = ranges_by_url(&h);
    assert!(!mirror.is_empty(), "the first attempt spread to the mirror");
    let events = h.events_of(job);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Failover { .. })),
        "no failover: {events:?}"
    );
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(matches!(retries[0].3, DownloadError::HashMismatch { .. }));
    assert_eq!(
        retries[0].2,
        Duration::ZERO,
        "the primary did not fail: no backoff"
    );
    assert!(
        after_start_over(&h)
            .iter()
            .all(|r| !r.path.starts_with("/pub/")),
        "after the start-over only the primary is asked"
    );
    // Nothing was held against either origin: no failure recorded that could open a breaker.
    for url in [URL, SEG_MIRROR_URL] {
        let origin = crate::http::Origin::of(&url::Url::parse(url).unwrap()).unwrap();
        assert_eq!(
            h.engine.breaker_state(&origin),
            crate::policy::BreakerState::Closed { failures: 0 },
            "{url}"
        );
    }
}

#[test]
fn a_server_that_ignores_ranges_gives_a_single_stream_download() {
    let body = pattern(80_000, 6);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b)).pieces(&[4096])
    });
    let job = h.submit(segmented(4, 1000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 80_000);
    assert_eq!(h.requests.len(), 1, "one request, one stream");
    assert_eq!(range_of(&h.requests[0]), Some((0, None)));
    assert!(segmented_events(&h, job).is_empty(), "not segmented");
    assert!(h
        .events_of(job)
        .iter()
        .any(|e| matches!(e, Event::Response { status: 200, .. })));
}

#[test]
fn a_200_to_a_segment_request_restarts_from_zero_on_one_connection_and_commits_exact_bytes() {
    let body = pattern(100_000, 7);
    let mut h = Harness::new(config());
    let b = body.clone();
    let mut answered_200 = false;
    h.serve(ORIGIN, move |req| {
        if range_of(req) == Some((50_000, Some(74_999))) && !answered_200 {
            answered_200 = true;
            let headers = [hdr("ETag", ETAG)];
            return head_first(with_length(200, &headers, &b), 4096);
        }
        head_first(serve_range(&b, req), 4096)
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(matches!(retries[0].3, DownloadError::RangeMismatch { .. }));
    assert_eq!(out.attempts, 2);
    // The server ignored one range: it may ignore the next split's too, so the job does
    // not split again.
    assert_eq!(segmented_events(&h, job), vec![4]);
    assert_eq!(single_connection_reasons(&h, job).len(), 1);
    assert_one_plain_request_after_the_retry(&h, job);
}

/// The reasons of `job`'s [`Event::SingleConnection`] events.
fn single_connection_reasons(h: &Harness, job: JobId) -> Vec<String> {
    h.events_of(job)
        .into_iter()
        .filter_map(|e| match e {
            Event::SingleConnection { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// After `job`'s only retry, one request fetched the whole file: no `Range`, no `If-Range`.
fn assert_one_plain_request_after_the_retry(h: &Harness, job: JobId) {
    let (at, _, delay, _) = h.retries(job)[0].clone();
    let after: Vec<&Req> = h.requests.iter().filter(|r| r.at >= at + delay).collect();
    assert_eq!(after.len(), 1, "one request after the retry");
    assert_eq!(after[0].header("range"), None);
    assert_eq!(after[0].header("if-range"), None);
}

#[test]
fn a_server_that_answers_every_later_segment_with_the_whole_file_is_used_over_one_connection() {
    let body = pattern(100_000, 22);
    let mut h = Harness::new(config());
    let b = body.clone();
    // Ranges from byte 0 are honoured (the probe); any other gets the whole file.
    h.serve(ORIGIN, move |req| match range_of(req) {
        Some((first, _)) if first > 0 => {
            head_first(with_length(200, &[hdr("ETag", ETAG)], &b), 4096)
        }
        _ => head_first(serve_range(&b, req), 4096),
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("one connection completes the download");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    assert_eq!(out.attempts, 2, "split once, then one connection");
    assert_eq!(segmented_events(&h, job), vec![4]);
    let reasons = single_connection_reasons(&h, job);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("200"), "{reasons:?}");
    assert_one_plain_request_after_the_retry(&h, job);
}

/// Serves `body` from two nodes that tag it with different ETags: each new connection goes to
/// the next node in turn. A node that `honours_if_range` answers a range whose `If-Range`
/// names the other node's tag with the whole file (200); otherwise with the range all the
/// same (206, under its own tag).
fn serve_from_two_nodes(h: &mut Harness, body: &[u8], honours_if_range: bool) {
    let b = body.to_vec();
    let mut node_of: BTreeMap<ConnId, usize> = BTreeMap::new();
    h.serve(ORIGIN, move |req| {
        let next = node_of.len() % 2;
        let node = *node_of.entry(req.conn).or_insert(next);
        let etag = format!("\"node{node}\"");
        let other_tag = req.header("if-range").is_some_and(|v| v != etag);
        let wire = match requested_range(req) {
            Some((first, last)) if !(other_tag && honours_if_range) => {
                let last = last.map_or(b.len() - 1, |l| l.min(b.len() - 1));
                let range = format!("bytes {first}-{last}/{}", b.len());
                let headers = [hdr("ETag", &etag), hdr("Content-Range", range)];
                with_length(206, &headers, &b[first..=last])
            }
            _ => with_length(200, &[hdr("ETag", &etag)], &b),
        };
        head_first(wire, 4096)
    });
}

fn two_nodes_run(honours_if_range: bool) -> (Harness, JobId) {
    let body = pattern(100_000, 23);
    // Checkpoints every 16 KiB, so that some come after the decision.
    let mut cfg = config();
    cfg.checkpoint_bytes = 16 * 1024;
    let mut h = Harness::new(cfg);
    serve_from_two_nodes(&mut h, &body, honours_if_range);
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("one connection completes the download");
    assert_committed(&h, &body);
    assert_eq!(out.sha256, sha(&body));
    assert_eq!(out.attempts, 2, "split once, then one connection");
    assert_eq!(segmented_events(&h, job), vec![4]);
    assert_one_plain_request_after_the_retry(&h, job);
    (h, job)
}

#[test]
fn segments_whose_206s_carry_another_nodes_etag_make_the_job_use_one_connection() {
    let (h, job) = two_nodes_run(false);
    let reasons = single_connection_reasons(&h, job);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("validator"), "{reasons:?}");
    // Checkpoints written from then on record it, for a resume after a crash.
    let since = event_index(&h, job, |e| matches!(e, Event::SingleConnection { .. }));
    let decided_at = h.events[since].0;
    let states: Vec<PartState> = h
        .ops
        .iter()
        .filter(|(at, _)| *at >= decided_at)
        .filter_map(|(_, op)| match op {
            IoOp::WriteFileAtomic { path, data } if *path == state() => {
                PartState::decode_for(data, URL)
            }
            _ => None,
        })
        .collect();
    assert!(!states.is_empty(), "a checkpoint after the decision");
    assert!(states.iter().all(|s| s.single_connection), "{states:?}");
}

#[test]
fn segments_answered_200_by_a_node_with_another_etag_make_the_job_use_one_connection() {
    let (h, job) = two_nodes_run(true);
    let reasons = single_connection_reasons(&h, job);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("200"), "{reasons:?}");
}

#[test]
fn a_resume_keeps_to_one_connection_when_the_run_that_saved_the_partial_had_to() {
    let body = pattern(100_000, 23);
    let mut attempts = Vec::new();
    for single_connection in [true, false] {
        let mut h = Harness::new(config());
        serve_from_two_nodes(&mut h, &body, false);
        h.fs.put(part(), &body[..25_000]);
        let saved = PartState {
            version: STATE_VERSION,
            url: URL.to_string(),
            validator: Validator::Etag("\"node0\"".into()),
            resource: None,
            source: None,
            total: Some(100_000),
            verified: 25_000,
            prefix_sha256: sha_hex(&body[..25_000]),
            ranges: Vec::new(),
            single_connection,
        };
        h.fs.put(state(), &saved.encode());
        let job = h.submit(segmented(4, 10_000).sha256(&sha_hex(&body)).unwrap());
        let out = h.run(job).expect("completes");
        assert_committed(&h, &body);
        if single_connection {
            assert_eq!(out.resumed_from, 25_000, "resumed on one connection");
            assert!(segmented_events(&h, job).is_empty(), "never split");
        }
        attempts.push(out.attempts);
    }
    assert_eq!(attempts[0], 1, "kept to one connection: one attempt");
    assert!(
        attempts[1] > 1,
        "without the record it splits, fails and starts over: {attempts:?}"
    );
}

/// A partial from an earlier run of a 100 000-byte file, recorded under `validator`: the
/// first quarter of `kept` (hashed) and its third quarter, so that a resume fetches the
/// second and fourth quarters as two segments.
fn with_a_split_partial(h: &mut Harness, kept: &[u8], validator: &str) {
    h.fs.put(part(), &kept[..75_000]);
    let saved = PartState {
        version: STATE_VERSION,
        url: URL.to_string(),
        validator: Validator::Etag(validator.to_string()),
        resource: None,
        source: None,
        total: Some(100_000),
        verified: 25_000,
        prefix_sha256: sha_hex(&kept[..25_000]),
        ranges: vec![(50_000, 75_000)],
        single_connection: false,
    };
    h.fs.put(state(), &saved.encode());
}

#[test]
fn a_partial_from_an_earlier_run_of_a_file_changed_since_starts_over_and_still_splits() {
    let old = pattern(100_000, 24);
    let body = pattern(100_000, 25);
    let mut h = Harness::new(config());
    with_a_split_partial(&mut h, &old, "\"v0\"");
    // The server now has `body` under ETAG: the old validator's If-Range gets the whole file.
    let b = body.clone();
    h.serve(ORIGIN, move |req| head_first(serve_range(&b, req), 4096));
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the new file downloads");
    assert_committed(&h, &body);
    // Started over at once: no failed attempt, no backoff.
    assert_eq!(out.attempts, 1, "{:?}", h.retries(job));
    assert_eq!(out.resumed_from, 0, "nothing of the old file kept");
    // Only the old partial's validator disagreed, not two answers of this server: the new
    // file is split as usual.
    assert!(single_connection_reasons(&h, job).is_empty());
    assert_eq!(segmented_events(&h, job), vec![4]);
}

#[test]
fn once_a_resumed_segment_confirmed_the_partials_validator_a_200_to_another_means_one_connection() {
    let body = pattern(100_000, 26);
    let mut h = Harness::new(config());
    with_a_split_partial(&mut h, &body, ETAG);
    // The segment from 25 000 is honoured at once; the one from 75 000 gets the whole file,
    // a second later.
    let b = body.clone();
    h.serve(ORIGIN, move |req| match range_of(req) {
        Some((first, _)) if first >= 75_000 => {
            let whole = with_length(200, &[hdr("ETag", ETAG)], &b);
            Reply::new(whole).pieces(&[1, 100_000]).gap(secs(1))
        }
        _ => head_first(serve_range(&b, req), 4096),
    });
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("one connection completes the download");
    assert_committed(&h, &body);
    // Two answers of this run disagreed: no second split before the job keeps to one
    // connection.
    assert_eq!(out.attempts, 2);
    assert_eq!(single_connection_reasons(&h, job).len(), 1);
    assert!(segmented_events(&h, job).is_empty());
    assert_one_plain_request_after_the_retry(&h, job);
}

#[test]
fn a_read_back_still_running_when_the_download_restarts_does_not_feed_the_new_hash() {
    let body = pattern(100_000, 18);
    let mut h = Harness::new(config());
    let b = body.clone();
    let mut answered_200 = false;
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        match range_of(req) {
            // The first segment ends after the second: its end triggers a read-back of the
            // second segment.
            Some((0, None)) => head_first(wire, 5000).gap(millis(100)),
            // The third answers 200 a second later: the download starts over.
            Some((50_000, _)) if !answered_200 => {
                answered_200 = true;
                let whole = with_length(200, &[hdr("ETag", ETAG)], &b);
                Reply::new(whole).pieces(&[1, 100_000]).gap(secs(1))
            }
            _ => head_first(wire, 8192),
        }
    });
    // The disk takes ten seconds to answer the read-back (and everything queued behind it).
    h.hold = Some(Box::new(|op| {
        matches!(op, IoOp::ReadAt { offset: 25_000, .. }).then(|| at(secs(10)))
    }));
    let job = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the restarted download verifies");
    assert_committed(&h, &body);
    assert_eq!(out.attempts, 2);
    let read_back_at = h
        .ops
        .iter()
        .find(|(_, op)| matches!(op, IoOp::ReadAt { offset: 25_000, .. }))
        .expect("a read-back")
        .0;
    let (restart_at, ..) = h.retries(job)[0].clone();
    assert!(
        read_back_at < restart_at,
        "the read-back was running at the restart"
    );
}

#[test]
fn resume_of_a_segmented_download_refetches_only_the_missing_ranges() {
    let body = pattern(100_000, 8);
    let mut h = Harness::new(config());
    let b = body.clone();
    let slow = Rc::new(Cell::new(true));
    let slow_in_server = slow.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let trickles = matches!(range_of(req), Some((25_000 | 75_000, _)));
        if slow_in_server.get() && trickles {
            head_first(wire, 5000).gap(secs(1))
        } else {
            head_first(wire, 4096)
        }
    });
    let first = h.submit(segmented(4, 25_000));
    h.run_until("two seconds of trickle", |h| h.now >= at(secs(2)));
    while h.step_io() {}
    h.cancel(first, CancelMode::KeepPartial);
    assert_eq!(h.run(first), Err(DownloadError::Cancelled));
    let saved =
        PartState::decode_for(h.fs.get(state()).expect("state kept"), URL).expect("valid state");
    assert_eq!(
        saved.verified,
        25_000 + 10_000,
        "first two segments' prefix"
    );
    assert_eq!(
        saved.ranges,
        vec![(50_000, 85_000)],
        "the segments beyond the prefix"
    );
    let partial = h.fs.get(part()).expect("partial kept").to_vec();
    for (s, e) in &saved.ranges {
        assert_eq!(
            &partial[*s as usize..*e as usize],
            &body[*s as usize..*e as usize]
        );
    }

    slow.set(false);
    let seen = h.requests.len();
    let again = h.submit(segmented(4, 25_000).sha256(&sha_hex(&body)).unwrap());
    let out = h.run(again).expect("resumed download succeeds");
    assert_committed(&h, &body);
    let kept = 35_000 + 35_000;
    assert_eq!(out.resumed_from, kept);
    assert_eq!(
        out.bytes_fetched,
        100_000 - kept,
        "only the missing bytes are fetched"
    );
    assert!(h.events_of(again).contains(&Event::Resuming {
        job: again,
        offset: kept
    }));
    let asked: BTreeSet<_> = h.requests[seen..].iter().map(range_of).collect();
    let expected: BTreeSet<_> = [Some((35_000, Some(49_999))), Some((85_000, Some(99_999)))]
        .into_iter()
        .collect();
    assert_eq!(asked, expected);
    for req in &h.requests[seen..] {
        assert_eq!(req.header("if-range"), Some(ETAG));
    }
}

#[test]
fn connections_per_origin_never_exceed_the_limit() {
    let mut cfg = config();
    cfg.max_connections_per_origin = 2;
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(11));
    let bodies: BTreeMap<String, Vec<u8>> = (0..3u8)
        .map(|i| (format!("/f{i}"), pattern(150_000 + usize::from(i) * 7, i)))
        .collect();
    let served = bodies.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&served[&req.path], req)).pieces(&[6000])
    });
    let jobs: Vec<(JobId, PathBuf)> = bodies
        .keys()
        .map(|p| {
            let to = PathBuf::from(format!("/dl{p}"));
            let d = Download::new(&format!("{ORIGIN}{p}"), &to)
                .unwrap()
                .segments(4)
                .min_segment(5000);
            (h.submit(d), to)
        })
        .collect();
    for (job, _) in &jobs {
        h.run(*job).expect("download succeeds");
    }
    for (p, body) in &bodies {
        assert_committed_at(&h, &PathBuf::from(format!("/dl{p}")), body);
    }
    assert_eq!(
        h.max_open.get(&origin_key(ORIGIN)).copied(),
        Some(2),
        "the limit is reached and never exceeded"
    );
    assert!(h.requests.len() > 3, "the jobs were segmented");
}

#[test]
fn a_segment_whose_body_ends_short_of_its_range_is_a_truncated_body_and_retries_end() {
    // A server that took a range's end as exclusive: every 206 ended, closing, one byte short
    // of the range it announced. Each was taken as the segment done; the missing byte was
    // asked for again, forever (2,700 requests a second, whatever the retry limits).
    let body = pattern(400_000, 9);
    let mut cfg = config();
    cfg.retry.max_attempts = 3;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| match requested_range(req) {
        Some((first, last)) => {
            let last = last.map_or(b.len() - 1, |l| l.min(b.len() - 1));
            let wire = response(
                206,
                &[
                    hdr("ETag", ETAG),
                    hdr("Content-Range", format!("bytes {first}-{last}/{}", b.len())),
                ],
                &b[first..last],
            );
            Reply::new(wire)
                .pieces(&[10_000])
                .gap(millis(20))
                .then(After::Eof)
        }
        None => Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b)),
    });
    let job = h.submit(segmented(4, 50_000));
    let err = h.run(job).expect_err("every segment arrives short");
    assert!(
        matches!(
            err,
            DownloadError::Protocol {
                source: HttpError::ShortRange { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        h.requests.len() < 40,
        "{} requests: {:?}",
        h.requests.len(),
        h.requests
            .iter()
            .map(|r| r.header("range"))
            .collect::<Vec<_>>()
    );
    assert!(
        h.requests
            .iter()
            .filter(|r| r.header("range").is_some())
            .count()
            > 2,
        "split into segments"
    );
    assert!(h.fs.get(dest()).is_none());
}

#[test]
fn a_server_that_answers_416_to_the_segments_probe_is_downloaded_on_one_connection() {
    // `bytes=0-` answered 416 (`bytes */N`, N > 0) was asked again on every retry, and the
    // download failed although a plain GET worked.
    let body = pattern(40_000, 8);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| match requested_range(req) {
        Some(_) => Reply::new(with_length(
            416,
            &[hdr("Content-Range", format!("bytes */{}", b.len()))],
            b"",
        )),
        None => Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b)),
    });
    let job = h.submit(segmented(4, 1000));
    h.run(job).expect("a plain GET after the 416");
    assert_committed(&h, &body);
    assert_eq!(h.requests.len(), 2, "the probe, then one plain GET");
}

#[test]
fn an_empty_file_downloads_with_segments_requested() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |req| Reply::new(serve_range(b"", req)));
    let job = h.submit(segmented(4, 1000).sha256(&sha_hex(b"")).unwrap());
    let out = h.run(job).expect("an empty file is a valid download");
    assert_committed(&h, b"");
    assert_eq!(out.size, 0);
    assert_eq!(h.requests.len(), 1, "no retry for an empty file");
}

// ------------------------------------------------------------------------ scheduling

/// A server for any path under [`ORIGIN`]: the body for a path is `pattern(20_000, len)`.
fn any_path_server(h: &mut Harness, gap: Duration) {
    h.serve(ORIGIN, move |req| {
        let body = pattern(20_000, req.path.len() as u8);
        Reply::new(serve_range(&body, req)).pieces(&[5000]).gap(gap)
    });
}

/// A harness with one download slot and [`any_path_server`] (50 ms between pieces).
fn one_slot_any_path() -> Harness {
    let mut cfg = config();
    cfg.max_active_jobs = 1;
    let mut h = Harness::new(cfg);
    any_path_server(&mut h, millis(50));
    h
}

fn job_at(name: &str) -> Download {
    Download::new(&format!("{ORIGIN}/{name}"), format!("/dl/{name}")).unwrap()
}

/// Jobs a, b, c and d run to the end with `max_active_jobs` slots and at most
/// `max_committing_jobs` commits in flight, on a disk that finishes no sync before t = 10 s.
fn run_with_a_slow_disk(
    max_active_jobs: usize,
    max_committing_jobs: usize,
) -> (Harness, Vec<JobId>) {
    let mut cfg = config();
    cfg.max_active_jobs = max_active_jobs;
    cfg.max_committing_jobs = max_committing_jobs;
    run_four_holding(cfg, |op| matches!(op, IoOp::Sync { .. }))
}

/// Jobs a, b, c and d run to the end with `cfg`, the operations `held` names finishing no
/// earlier than t = 10 s.
fn run_four_holding(cfg: Config, held: fn(&IoOp) -> bool) -> (Harness, Vec<JobId>) {
    let mut h = Harness::new(cfg);
    any_path_server(&mut h, millis(10));
    h.hold = Some(Box::new(move |op| held(op).then(|| at(secs(10)))));
    let ids: Vec<JobId> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| h.submit(job_at(name)))
        .collect();
    for id in &ids {
        h.run(*id).expect("every job succeeds");
    }
    (h, ids)
}

#[test]
fn a_committing_job_leaves_its_slot_to_the_next_download_but_commits_in_flight_are_bounded() {
    let (h, ids) = run_with_a_slow_disk(2, 2);
    let started =
        |h: &Harness, k: usize| event_index(h, ids[k], |e| matches!(e, Event::Started { .. }));
    let finished =
        |h: &Harness, k: usize| event_index(h, ids[k], |e| matches!(e, Event::Finished { .. }));
    // a and b download; a's commit waits for the disk, c starts meanwhile.
    assert!(
        started(&h, 2) < finished(&h, 0),
        "c waited for a's commit to finish"
    );
    let c_started_at = h.events[started(&h, 2)].0;
    assert!(c_started_at < at(secs(10)), "c started at {c_started_at:?}");
    // Then a and b are both committing: two commits in flight hold d back until one ends.
    let first_commit_done = finished(&h, 0).min(finished(&h, 1));
    assert!(
        started(&h, 3) > first_commit_done,
        "d started with two commits in flight"
    );
}

#[test]
fn commits_in_flight_are_bounded_by_their_own_limit_not_by_the_slots() {
    let (h, ids) = run_with_a_slow_disk(1, 3);
    let started = |k: usize| {
        let i = event_index(&h, ids[k], |e| matches!(e, Event::Started { .. }));
        h.events[i].0
    };
    // One slot, yet a, b and c all download while the disk holds their commits.
    assert!(started(2) < at(secs(10)), "c waited for a commit");
    // Three commits in flight hold d back until the disk lets one finish.
    assert!(
        started(3) >= at(secs(10)),
        "d started with three commits in flight"
    );
}

/// Jobs a, b, c and d (unnamed files hashed by the executor) run to the end with one slot
/// and at most `max_committing_jobs` commits in flight, with an executor whose digests
/// take until t = 10 s.
fn run_with_slow_digests(max_committing_jobs: usize) -> (Harness, Vec<JobId>) {
    let mut cfg = config();
    cfg.unnamed_max = u64::MAX;
    cfg.executor_digests = true;
    cfg.max_active_jobs = 1;
    cfg.max_committing_jobs = max_committing_jobs;
    run_four_holding(cfg, |op| matches!(op, IoOp::Digest { .. }))
}

#[test]
fn a_job_waiting_for_its_executor_digest_leaves_its_slot_but_counts_as_a_commit_in_flight() {
    let (h, ids) = run_with_slow_digests(3);
    let started = |k: usize| {
        let i = event_index(&h, ids[k], |e| matches!(e, Event::Started { .. }));
        h.events[i].0
    };
    // One slot, yet a, b and c all download while their digests are being computed.
    assert!(started(1) < at(secs(10)), "b waited for a's digest");
    assert!(started(2) < at(secs(10)), "c waited for a digest");
    // Three waiting for their digest hold d back until one has it.
    assert!(
        started(3) >= at(secs(10)),
        "d started with three digests in flight"
    );
    assert_eq!(
        h.count_ops(|op| matches!(op, IoOp::Digest { .. })),
        4,
        "each file verified by the executor's digest"
    );
}

#[test]
fn with_one_slot_jobs_start_by_priority_class_and_in_submission_order_within_a_class() {
    let mut cfg = config();
    cfg.max_active_jobs = 1;
    // One job in flight at a time, its commit included.
    cfg.max_committing_jobs = 1;
    let mut h = Harness::new(cfg);
    any_path_server(&mut h, millis(100));
    let blocker = h.submit(job_at("blocker"));
    let plan = [
        ("low1", Priority::Low),
        ("background", Priority::Background),
        ("high1", Priority::High),
        ("normal", Priority::Normal),
        ("critical", Priority::Critical),
        ("high2", Priority::High),
        ("low2", Priority::Low),
    ];
    let ids: BTreeMap<&str, JobId> = plan
        .iter()
        .map(|(name, p)| (*name, h.submit(job_at(name).priority(*p))))
        .collect();
    for id in ids.values() {
        h.run(*id).expect("every job succeeds");
    }
    let expected: Vec<JobId> = std::iter::once(blocker)
        .chain(
            [
                "critical",
                "high1",
                "high2",
                "normal",
                "low1",
                "low2",
                "background",
            ]
            .iter()
            .map(|n| ids[n]),
        )
        .collect();
    assert_eq!(started_order(&h), expected);
    // One at a time: each job starts after the previous one finished.
    for pair in expected.windows(2) {
        let done = event_index(&h, pair[0], |e| matches!(e, Event::Finished { .. }));
        let started = event_index(&h, pair[1], |e| matches!(e, Event::Started { .. }));
        assert!(
            done < started,
            "{} started before {} finished",
            pair[1],
            pair[0]
        );
    }
}

#[test]
fn a_dependent_job_starts_only_after_its_dependency_succeeded() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(500));
    let a = h.submit(job_at("first"));
    let b = h.submit(job_at("second").after(a));
    h.run(b).expect("dependent succeeds");
    assert!(h.finished(a).expect("a finished").1.is_ok());
    let a_done = event_index(&h, a, |e| matches!(e, Event::Finished { .. }));
    let b_started = event_index(&h, b, |e| matches!(e, Event::Started { .. }));
    assert!(a_done < b_started, "b started before a finished");
    let first_b_request = h
        .requests
        .iter()
        .find(|r| r.path == "/second")
        .expect("b made a request");
    assert!(first_b_request.at >= h.finished_at(a));
}

#[test]
fn a_dependent_of_a_failed_job_fails_with_dependency_failed_and_makes_no_request() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |req| {
        if req.path == "/missing" {
            Reply::new(with_length(404, &[], b"no"))
        } else {
            Reply::new(serve_range(&pattern(1000, 1), req))
        }
    });
    let a = h.submit(job_at("missing"));
    let b = h.submit(job_at("dependent").after(a));
    let c = h.submit(job_at("transitive").after(b));
    assert!(matches!(
        h.run(a),
        Err(DownloadError::Status { status: 404, .. })
    ));
    let b_err = h.run(b).expect_err("b fails with a");
    let a_err = h.run(a).expect_err("a failed");
    assert_eq!(
        b_err,
        DownloadError::DependencyFailed {
            dependency: a.0,
            cause: Box::new(a_err.clone())
        }
    );
    assert_eq!(
        b_err.to_string(),
        format!("dependency {a} failed: {a_err}"),
        "it says why"
    );
    assert_eq!(b_err.class(), crate::ErrorClass::HttpStatus, "a's class");
    // A chain carries its first failure, not a chain of errors.
    assert_eq!(
        h.run(c),
        Err(DownloadError::DependencyFailed {
            dependency: b.0,
            cause: Box::new(a_err)
        })
    );
    assert!(h.requests.iter().all(|r| r.path == "/missing"));
    assert!(!h
        .events_of(b)
        .iter()
        .any(|e| matches!(e, Event::Started { .. })));
    let stats = h.engine.stats();
    assert_eq!((stats.done, stats.failed, stats.cancelled), (0, 3, 0));
}

#[test]
fn a_dependency_on_an_unknown_job_fails_at_once_naming_that_job() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, Duration::ZERO);
    let unknown = JobId(9_999);
    let b = h.submit(job_at("orphan").after(unknown));
    let err = h
        .run(b)
        .expect_err("cannot depend on a job never submitted");
    assert_eq!(
        err,
        DownloadError::DependencyUnknown {
            dependency: 9_999,
            kept: crate::FINISHED_KEPT
        }
    );
    assert!(err.to_string().contains("job#9999"), "{err}");
    assert_eq!(h.finished_at(b), Instant::ZERO);
    assert!(h.requests.is_empty());
}

#[test]
fn a_job_may_not_depend_on_itself_or_on_a_later_job_so_no_cycle_waits_for_ever() {
    // Job ids are predictable: a job named itself, or two of one batch named each other,
    // and they waited for ever (with any download of the same URL behind them).
    let mut h = Harness::new(config());
    any_path_server(&mut h, Duration::ZERO);
    let next = h.submit(job_at("first"));
    let itself = JobId(next.0 + 1);
    let own = h.submit(job_at("own").after(itself));
    assert_eq!(own, itself);
    assert_eq!(
        h.run(own),
        Err(DownloadError::InvalidRequest(format!(
            "job {} cannot depend on itself",
            own.0
        )))
    );
    let (b, c) = (JobId(own.0 + 1), JobId(own.0 + 2));
    let ids = h
        .engine
        .submit_batch(h.now, vec![job_at("b").after(c), job_at("c").after(b)]);
    h.drain();
    assert_eq!(ids, vec![b, c]);
    assert_eq!(
        h.run(b),
        Err(DownloadError::DependencyUnknown {
            dependency: c.0,
            kept: crate::FINISHED_KEPT
        })
    );
    assert!(matches!(
        h.run(c),
        Err(DownloadError::DependencyFailed { dependency, .. }) if dependency == b.0
    ));
    // The same URL without a dependency is no duplicate of the refused ones.
    let free = h.submit(job_at("c"));
    h.run(free).expect("runs");
    h.run(next).expect("the first one");
}

#[test]
fn a_download_without_dependencies_does_not_follow_a_duplicate_that_waits_for_its_own() {
    // C (no dependency) fetched the URL of B, which waited behind A: C was attached to B as
    // its duplicate and waited for A too (6.7 s when A failed after its retries).
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |req| {
        let body = pattern(20_000, req.path.len() as u8);
        let gap = if req.path.contains("slow") { 500 } else { 10 };
        Reply::new(serve_range(&body, req))
            .pieces(&[5000])
            .gap(millis(gap))
    });
    let a = h.submit(job_at("slow-dependency-of-b"));
    let b = h.submit(job_at("f").after(a));
    let c = h.submit(Download::new(&format!("{ORIGIN}/f"), "/dl/f-now").unwrap());
    h.run(c).expect("c runs on its own");
    assert!(
        h.finished(a).is_none(),
        "c finished before a: it did not wait for b's dependency"
    );
    h.run(b).expect("b after a");
    assert_committed_at(&h, Path::new("/dl/f-now"), &pattern(20_000, 2));
}

/// A long-running engine keeps the outcomes of the last `FINISHED_KEPT` jobs to finish, not
/// of every job it ever ran; one a waiting dependant needs stays however old it is (the
/// dependant starts and succeeds after thousands of later jobs), and a job submitted
/// depending on a job whose outcome is gone fails at once, saying so.
#[test]
fn finished_outcomes_are_bounded_but_kept_while_a_waiting_job_depends_on_them() {
    let mut cfg = config();
    cfg.max_active_jobs = 1;
    let mut h = Harness::new(cfg);
    any_path_server(&mut h, millis(10));
    let early = h.submit(job_at("early"));
    h.run(early).expect("early succeeds");
    // The only slot is taken: the dependant waits in the queue, its dependency long done.
    let busy = h.submit(job_at("busy"));
    let dependant = h.submit(job_at("dependant").after(early));
    let mut gone = Vec::new();
    for n in 0..3 * crate::FINISHED_KEPT {
        let job = h.submit(job_at(&format!("n{n}")));
        h.cancel(job, CancelMode::Discard);
        gone.push(job);
        assert!(
            h.engine.finished_kept() <= crate::FINISHED_KEPT + 1,
            "{} outcomes kept after {n} more jobs",
            h.engine.finished_kept()
        );
    }
    let orphan = h.submit(job_at("orphan").after(gone[0]));
    assert_eq!(
        h.run(orphan),
        Err(DownloadError::DependencyUnknown {
            dependency: gone[0].0,
            kept: crate::FINISHED_KEPT
        })
    );
    let recent = h.submit(job_at("recent").after(*gone.last().unwrap()));
    assert_eq!(
        h.run(recent),
        Err(DownloadError::DependencyFailed {
            dependency: gone.last().unwrap().0,
            cause: Box::new(DownloadError::Cancelled)
        }),
        "a recent dependency's outcome is still known"
    );
    h.run(busy).expect("busy succeeds");
    h.run(dependant)
        .expect("the dependant of an old success still starts and succeeds");
    assert!(h.requests.iter().any(|r| r.path == "/dependant"));
}

#[test]
fn a_queued_job_whose_dependency_is_cancelled_fails_at_once_even_with_every_slot_taken() {
    let mut cfg = config();
    cfg.max_active_jobs = 1;
    let mut h = Harness::new(cfg);
    // Slow responses: the first job holds the only slot for seconds.
    any_path_server(&mut h, secs(5));
    let busy = h.submit(job_at("busy"));
    let waiting = h.submit(job_at("waiting"));
    let dependent = h.submit(job_at("dependent").after(waiting));
    h.drain();
    h.cancel(waiting, CancelMode::Discard);
    let cancelled_at = h.now;
    assert_eq!(
        h.run(dependent),
        Err(DownloadError::DependencyFailed {
            dependency: waiting.0,
            cause: Box::new(DownloadError::Cancelled)
        })
    );
    assert_eq!(
        h.finished_at(dependent),
        cancelled_at,
        "the dependent waited for a slot before failing"
    );
    h.run(busy).expect("the busy job still succeeds");
    assert!(h.finished_at(busy) > cancelled_at);
    assert!(h.requests.iter().all(|r| r.path == "/busy"));
}

#[test]
fn a_job_paused_or_cancelled_while_its_digest_is_computed_resumes_or_ends_cleanly() {
    // (cancel, let the digest come while paused)
    for (cancel, digest_while_paused) in [(false, false), (false, true), (true, false)] {
        let body = pattern(6_000, 71);
        let mut cfg = config();
        cfg.unnamed_max = u64::MAX;
        cfg.executor_digests = true;
        let mut h = Harness::new(cfg);
        h.serve(ORIGIN, crate::engine_tests::file_server(body.clone()));
        h.hold = Some(Box::new(|op| {
            matches!(op, IoOp::Digest { .. }).then(|| at(secs(10)))
        }));
        let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
        h.run_until("the digest is asked for", |h| {
            h.count_ops(|op| matches!(op, IoOp::Digest { .. })) > 0
        });
        if cancel {
            h.cancel(job, CancelMode::Discard);
            assert!(matches!(h.run(job), Err(DownloadError::Cancelled)));
            assert_nothing_left(&h);
        } else {
            pause(&mut h, job);
            if digest_while_paused {
                h.run_until("the digest came back", |h| h.pending.is_empty());
                assert!(h.finished(job).is_none(), "a paused job does not commit");
            }
            resume(&mut h, job);
            h.run(job).expect("committed after the pause");
            assert_committed(&h, &body);
            assert_eq!(
                h.count_ops(|op| matches!(op, IoOp::Digest { .. })),
                1,
                "nothing fetched or hashed again"
            );
        }
    }
}

#[test]
fn a_batch_may_be_split_only_if_one_class_without_indexes_or_shared_transfers() {
    let d = |name: &str| job_at(name);
    let hashed = |name: &str, byte: u8| job_at(name).sha256(&hex::encode([byte; 32])).unwrap();
    assert!(Engine::may_split_batch(&[]));
    assert!(Engine::may_split_batch(&[d("a"), d("b"), d("c")]));
    assert!(!Engine::may_split_batch(&[
        d("a"),
        d("b").priority(Priority::High)
    ]));
    assert!(!Engine::may_split_batch(&[d("a"), d("b").after_index(0)]));
    // The same URL twice, or the same expected bytes under two URLs: one transfer.
    assert!(!Engine::may_split_batch(&[d("a"), d("b"), d("a")]));
    assert!(!Engine::may_split_batch(&[hashed("a", 1), hashed("b", 1)]));
    // Other bytes from one URL to one file: the second is refused only while the first runs.
    assert!(!Engine::may_split_batch(&[hashed("a", 1), hashed("a", 2)]));
    let elsewhere = Download::new(&format!("{ORIGIN}/a"), "/elsewhere/a")
        .unwrap()
        .sha256(&hex::encode([2u8; 32]))
        .unwrap();
    assert!(Engine::may_split_batch(&[hashed("a", 1), elsewhere]));
}

// ------------------------------------------------------------------------ dedup

#[test]
fn two_jobs_for_the_same_url_make_one_request_and_the_second_gets_a_copy() {
    let body = pattern(30_000, 9);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req))
            .pieces(&[3000])
            .gap(millis(50))
    });
    let other = PathBuf::from("/other/copy.bin");
    let leader = h.submit(download());
    let follower = h.submit(Download::new(URL, &other).unwrap());
    let lo = h.run(leader).expect("leader succeeds");
    let fo = h.run(follower).expect("follower succeeds");
    assert_eq!(h.requests.len(), 1, "one request for both");
    assert_committed(&h, &body);
    assert_committed_at(&h, &other, &body);
    let copies: Vec<_> = h
        .ops
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::CopyFile { from, to } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(copies, vec![(dest(), other.clone())]);
    assert_eq!(lo.bytes_fetched, 30_000);
    assert_eq!(fo.path, other);
    assert_eq!(
        (fo.bytes_fetched, fo.attempts),
        (0, 0),
        "the leader's, not its own"
    );
    assert_eq!(fo.sha256, sha(&body));
    assert!(!h.fs.exists("/other/copy.bin.haul-part"));
}

#[test]
fn the_same_sha256_under_different_urls_is_fetched_once() {
    let body = pattern(30_000, 10);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[3000])
    });
    let digest = sha_hex(&body);
    let one = Download::new(&format!("{ORIGIN}/mirror1/f"), "/dl/one")
        .unwrap()
        .sha256(&digest)
        .unwrap();
    let two = Download::new(&format!("{ORIGIN}/mirror2/f"), "/dl/two")
        .unwrap()
        .sha256(&digest)
        .unwrap();
    let a = h.submit(one);
    let b = h.submit(two);
    h.run(a).expect("first succeeds");
    let out = h.run(b).expect("second succeeds");
    assert_eq!(h.requests.len(), 1);
    assert_eq!(h.requests[0].path, "/mirror1/f");
    assert_committed_at(&h, Path::new("/dl/one"), &body);
    assert_committed_at(&h, Path::new("/dl/two"), &body);
    assert_eq!(out.bytes_fetched, 0);
}

#[test]
fn the_same_url_with_other_credentials_or_headers_is_its_own_transfer() {
    // A list with one URL for alice and for bob (`http-user=`), or for two tenants: one
    // request with alice's Authorization, and bob's file was alice's bytes.
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |req| {
        let who = req.header("authorization").unwrap_or("nobody").to_string();
        let tenant = req.header("x-tenant").unwrap_or("-").to_string();
        let body = format!("{who} {tenant}").into_bytes();
        Reply::new(with_length(200, &[], &body))
    });
    let as_user = |user: &str, to: &str| {
        Download::new(URL, to)
            .unwrap()
            .header("Authorization", &format!("Basic {user}"))
    };
    let jobs = [
        as_user("alice", "/dl/alice"),
        as_user("bob", "/dl/bob"),
        Download::new(URL, "/dl/one")
            .unwrap()
            .header("X-Tenant", "one"),
        Download::new(URL, "/dl/two")
            .unwrap()
            .header("X-Tenant", "two"),
        // The same headers in another order and case: the same request, one transfer.
        as_user("alice", "/dl/alice2").header("X-Tenant", "one"),
        Download::new(URL, "/dl/alice3")
            .unwrap()
            .header("x-tenant", "one")
            .header("authorization", "Basic alice"),
    ]
    .map(|d| h.submit(d));
    for job in jobs {
        h.run(job).expect("each succeeds");
    }
    for (path, body) in [
        ("/dl/alice", "Basic alice -"),
        ("/dl/bob", "Basic bob -"),
        ("/dl/one", "nobody one"),
        ("/dl/two", "nobody two"),
        ("/dl/alice2", "Basic alice one"),
        ("/dl/alice3", "Basic alice one"),
    ] {
        assert_committed_at(&h, Path::new(path), body.as_bytes());
    }
    assert_eq!(h.requests.len(), 5, "alice2 and alice3 share one transfer");
}

#[test]
fn a_duplicate_into_a_directory_is_saved_under_its_own_name_not_the_leaders() {
    let body = pattern(30_000, 12);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[3000])
    });
    let digest = sha_hex(&body);
    // The same bytes under two URLs into one directory: each keeps its URL's name.
    let one = Download::into_dir(&format!("{ORIGIN}/x/big.bin"), "/dl")
        .unwrap()
        .sha256(&digest)
        .unwrap();
    let two = Download::into_dir(&format!("{ORIGIN}/y/big2.bin"), "/dl")
        .unwrap()
        .sha256(&digest)
        .unwrap();
    // The first URL again, once to a named file and once into another directory.
    let named = Download::new(&format!("{ORIGIN}/x/big.bin"), "/dl/renamed.bin")
        .unwrap()
        .sha256(&digest)
        .unwrap();
    let same_url = Download::into_dir(&format!("{ORIGIN}/x/big.bin"), "/d2").unwrap();
    let ids: Vec<JobId> = [one, two, named].into_iter().map(|d| h.submit(d)).collect();
    let outs: Vec<_> = ids
        .iter()
        .map(|id| h.run(*id).expect("each succeeds"))
        .collect();
    assert_eq!(h.requests.len(), 1, "one transfer for all");
    for (out, path) in outs
        .iter()
        .zip(["/dl/big.bin", "/dl/big2.bin", "/dl/renamed.bin"])
    {
        assert_eq!(out.path, Path::new(path));
        assert_committed_at(&h, Path::new(path), &body);
    }
    // Led by the named download, a directory download of its URL takes the URL's name.
    let lead = h.submit(Download::new(&format!("{ORIGIN}/x/big.bin"), "/d2/out.bin").unwrap());
    let follow = h.submit(same_url);
    h.run(lead).expect("lead");
    let out = h.run(follow).expect("follower");
    assert_eq!(out.path, Path::new("/d2/big.bin"));
    assert_committed_at(&h, Path::new("/d2/big.bin"), &body);
}

#[test]
fn when_the_leader_fails_the_follower_downloads_on_its_own() {
    let body = pattern(30_000, 11);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.path == "/broken" {
            Reply::new(with_length(404, &[], b"gone"))
        } else {
            Reply::new(serve_range(&b, req)).pieces(&[3000])
        }
    });
    let digest = sha_hex(&body);
    let leader = h.submit(
        Download::new(&format!("{ORIGIN}/broken"), "/dl/one")
            .unwrap()
            .sha256(&digest)
            .unwrap(),
    );
    let follower = h.submit(
        Download::new(&format!("{ORIGIN}/good"), "/dl/two")
            .unwrap()
            .sha256(&digest)
            .unwrap(),
    );
    assert!(matches!(
        h.run(leader),
        Err(DownloadError::Status { status: 404, .. })
    ));
    let out = h.run(follower).expect("follower succeeds alone");
    assert_eq!(out.bytes_fetched, 30_000);
    let paths: Vec<&str> = h.requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec!["/broken", "/good"]);
    assert_committed_at(&h, Path::new("/dl/two"), &body);
    assert!(!h.fs.exists("/dl/one"));
    assert!(!h
        .ops
        .iter()
        .any(|(_, op)| matches!(op, IoOp::CopyFile { .. })));
}

#[test]
fn a_job_waiting_for_a_failed_dependency_is_not_completed_by_a_duplicate_download() {
    let body = pattern(20_000, 19);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.path == "/missing" {
            Reply::new(with_length(404, &[], b"no"))
                .gap(secs(1))
                .pieces(&[10])
        } else {
            Reply::new(serve_range(&b, req))
                .pieces(&[2000])
                .gap(millis(100))
        }
    });
    let failing = h.submit(job_at("missing"));
    let same = h.submit(job_at("shared"));
    // The same URL as `same`, to a file of its own (one destination twice is refused).
    let dependant = h.submit(
        Download::new(&format!("{ORIGIN}/shared"), "/dl/shared-too")
            .unwrap()
            .after(failing),
    );
    h.run(same).expect("the independent copy succeeds");
    let failure = h.run(failing).expect_err("the missing file fails");
    assert_eq!(
        h.run(dependant),
        Err(DownloadError::DependencyFailed {
            dependency: failing.0,
            cause: Box::new(failure)
        })
    );
    assert!(!h.fs.exists("/dl/shared-too"));
    assert!(h
        .ops
        .iter()
        .all(|(_, op)| !matches!(op, IoOp::CopyFile { .. })));
}

// ------------------------------------------------------------------------ one destination

#[test]
fn a_second_job_for_a_destination_in_use_is_refused_and_the_first_commits_its_own_bytes() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let first = h.submit(Download::new(&format!("{ORIGIN}/a"), "/dl/same").unwrap());
    let second = h.submit(Download::new(&format!("{ORIGIN}/bb"), "/dl/same").unwrap());
    assert_eq!(
        h.run(second),
        Err(DownloadError::DestinationInUse {
            path: PathBuf::from("/dl/same"),
            job: first.0
        })
    );
    h.run(first).expect("the first job is unaffected");
    let paths: Vec<&str> = h.requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec!["/a"], "the refused job made no request");
    assert_committed_at(&h, Path::new("/dl/same"), &pattern(20_000, 2));
    // Once the first has ended, the destination is free again.
    let again = h.submit(Download::new(&format!("{ORIGIN}/bb"), "/dl/same").unwrap());
    h.run(again).expect("a later job may replace the file");
    assert_committed_at(&h, Path::new("/dl/same"), &pattern(20_000, 3));
}

#[test]
fn a_paused_job_gives_its_slot_to_the_next_download_and_resumes_at_once() {
    let mut h = one_slot_any_path();
    let a = h.submit(job_at("a"));
    let b = h.submit(job_at("bb"));
    h.run_until("a has bytes", |h| !h.progress(a).is_empty());
    assert_eq!(started_order(&h), vec![a], "one slot");
    pause(&mut h, a);
    assert_eq!(
        started_order(&h),
        vec![a, b],
        "b takes the paused job's slot"
    );
    assert_eq!(h.engine.stats().active, 1, "a paused job is not active");
    h.run(b).expect("b");
    resume(&mut h, a);
    h.run(a).expect("a");
    assert_committed_at(&h, Path::new("/dl/a"), &pattern(20_000, 2));
}

#[test]
fn a_job_resumed_while_every_slot_is_taken_waits_for_one_and_goes_before_the_queue() {
    let mut h = one_slot_any_path();
    let a = h.submit(job_at("a"));
    let b = h.submit(job_at("bb"));
    let c = h.submit(job_at("ccc"));
    h.run_until("a has bytes", |h| !h.progress(a).is_empty());
    pause(&mut h, a);
    assert_eq!(
        started_order(&h),
        vec![a, b],
        "b takes the paused job's slot"
    );
    resume(&mut h, a);
    assert_eq!(
        h.engine.stats().active,
        1,
        "the limit holds: a waits for b's slot"
    );
    let resumed_at = h.events.len();
    h.run(b).expect("b");
    h.run(a).expect("a, once b's slot was free");
    let b_done = event_index(&h, b, |e| matches!(e, Event::Finished { .. }));
    let a_again = resumed_at
        + h.events[resumed_at..]
            .iter()
            .position(|(_, e)| matches!(e, Event::Progress { job, .. } if *job == a))
            .expect("a made progress after its resume");
    assert!(
        a_again > b_done,
        "a fetched nothing before b's slot was free"
    );
    assert!(
        h.finished(c).is_none(),
        "the resumed job went before c, queued after it started"
    );
    h.run(c).expect("c");
    assert_committed_at(&h, Path::new("/dl/a"), &pattern(20_000, 2));

    // Paused again before a slot came: it stays paused.
    let d = h.submit(job_at("dddd"));
    let e = h.submit(job_at("eeeee"));
    h.run_until("d has bytes", |h| !h.progress(d).is_empty());
    pause(&mut h, d);
    resume(&mut h, d);
    pause(&mut h, d);
    h.run(e).expect("e");
    h.settle();
    assert!(h.finished(d).is_none(), "d stays paused");
    resume(&mut h, d);
    h.run(d).expect("d once resumed again");
}

#[test]
fn a_job_paused_in_its_backoff_and_resumed_waits_out_the_rest_of_it() {
    let mut h = Harness::new(config());
    let body = pattern(20_000, 7);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.seq == 0 {
            Reply::new(with_length(503, &[], b"busy"))
        } else {
            Reply::new(serve_range(&b, req)).pieces(&[5000])
        }
    });
    let job = h.submit(job_at("a"));
    h.run_until("a retry is due", |h| {
        h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Retrying { .. }))
    });
    let until = h
        .events
        .iter()
        .find_map(|(t, e)| match e {
            Event::Retrying { delay, .. } => Some(*t + *delay),
            _ => None,
        })
        .expect("a retry");
    assert!(until > h.now, "the backoff is not over");
    pause(&mut h, job);
    resume(&mut h, job);
    h.run(job).expect("the retry succeeds");
    assert_eq!(h.requests.len(), 2);
    assert!(
        h.requests[1].at >= until,
        "the retry went at {:?}, before its backoff ended at {until:?}",
        h.requests[1].at
    );
    assert_committed_at(&h, Path::new("/dl/a"), &body);
}

#[test]
fn jobs_are_numbered_in_submission_order_apart_from_io_ids() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(5));
    let ids: Vec<JobId> = ["a", "bb", "ccc"].map(|p| h.submit(job_at(p))).to_vec();
    assert_eq!(ids, vec![JobId(1), JobId(2), JobId(3)]);
    for id in &ids {
        h.run(*id).expect("each");
    }
    assert_eq!(h.submit(job_at("dddd")), JobId(4));
}

#[test]
fn a_job_paused_before_it_started_stays_queued_until_resumed() {
    let mut h = one_slot_any_path();
    let a = h.submit(job_at("a"));
    let b = h.submit(job_at("bb"));
    pause(&mut h, b);
    h.run(a).expect("a");
    h.settle();
    assert!(h.finished(b).is_none());
    assert_eq!(started_order(&h), vec![a], "the paused job did not start");
    resume(&mut h, b);
    h.run(b).expect("b once resumed");
    assert_eq!(started_order(&h), vec![a, b]);
}

#[test]
fn a_job_paused_while_it_checks_its_files_stops_before_its_first_request() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let a = h.submit(job_at("a"));
    assert!(
        !h.pending.is_empty(),
        "checking its destination and state file"
    );
    pause(&mut h, a);
    h.settle();
    assert!(h.finished(a).is_none());
    assert!(h.requests.is_empty(), "no request while paused");
    assert_eq!(h.engine.stats().active, 0);
    resume(&mut h, a);
    h.run(a).expect("a once resumed");
    assert_committed_at(&h, Path::new("/dl/a"), &pattern(20_000, 2));
}

/// Submits `d`, lets it receive bytes and cancels it keeping its partial: it holds its
/// destination while it tidies up.
fn cancelled_holder(h: &mut Harness, d: Download) -> JobId {
    let holder = h.submit(d);
    h.run_until("the holder has bytes", |h| !h.progress(holder).is_empty());
    h.cancel(holder, CancelMode::KeepPartial);
    holder
}

#[test]
fn jobs_queued_behind_a_cancelled_holder_of_their_destination_each_fetch_and_verify_their_own() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let same = "/dl/same";
    let at_same = |path: &str| Download::new(&format!("{ORIGIN}{path}"), same).unwrap();
    let holder = cancelled_holder(&mut h, at_same("/a"));
    assert!(h.finished(holder).is_none(), "still tidying up");
    let dep = h.submit(job_at("dep"));
    h.cancel(dep, CancelMode::Discard);
    // Three downloads of other bytes to the destination, submitted while it is held.
    let (bb, ccc) = (pattern(20_000, 3), pattern(20_000, 4));
    let b = h.submit(at_same("/bb").sha256(&sha_hex(&bb)).unwrap());
    let c = h.submit(at_same("/ccc").sha256(&sha_hex(&ccc)).unwrap());
    let d = h.submit(at_same("/dddd").after(dep));
    assert_eq!(h.run(holder), Err(DownloadError::Cancelled));
    assert_eq!(h.run(b).expect("b").sha256, sha(&bb));
    let out = h.run(c).expect("c fetches its own bytes, not b's");
    assert_eq!(out.sha256, sha(&ccc));
    assert!(out.bytes_fetched > 0);
    assert!(
        matches!(h.run(d), Err(DownloadError::DependencyFailed { dependency, .. }) if dependency == dep.0),
        "d's dependency is checked"
    );
    assert_committed_at(&h, Path::new(same), &ccc);
    let paths: Vec<&str> = h.requests.iter().map(|r| r.path.as_str()).collect();
    assert!(
        paths.contains(&"/bb") && paths.contains(&"/ccc"),
        "{paths:?}"
    );
    assert!(!paths.contains(&"/dddd"), "{paths:?}");
}

#[test]
fn a_job_that_depends_on_a_refused_one_fails_as_its_dependant() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let first = h.submit(job_at("a"));
    let refused = h.submit(Download::new(&format!("{ORIGIN}/bb"), "/dl/a").unwrap());
    let dependant = h.submit(job_at("ccc").after(refused));
    h.run(first).expect("first");
    let refusal = h.run(refused).expect_err("refused");
    assert!(matches!(refusal, DownloadError::DestinationInUse { .. }));
    assert_eq!(
        h.run(dependant),
        Err(DownloadError::DependencyFailed {
            dependency: refused.0,
            cause: Box::new(refusal)
        })
    );
}

#[test]
fn followers_bound_for_a_failed_leaders_destination_retry_it_once_not_side_by_side() {
    let body = pattern(30_000, 21);
    let mut h = Harness::new(config());
    let b = body.clone();
    let mut first_answer = true;
    h.serve(ORIGIN, move |req| {
        if std::mem::take(&mut first_answer) {
            Reply::new(with_length(404, &[], b"not yet"))
                .gap(millis(100))
                .pieces(&[2])
        } else {
            Reply::new(serve_range(&b, req))
                .pieces(&[3000])
                .gap(millis(10))
        }
    });
    // Three jobs for the same URL and file: the second and third follow the first.
    let leader = h.submit(download());
    let followers = [h.submit(download()), h.submit(download())];
    assert!(matches!(
        h.run(leader),
        Err(DownloadError::Status { status: 404, .. })
    ));
    for job in followers {
        h.run(job).expect("each follower ends with the file");
    }
    assert_eq!(
        h.requests.len(),
        2,
        "the 404, then one retry for both followers"
    );
    assert_committed(&h, &body);
}

#[test]
fn duplicates_of_a_download_that_failed_after_its_retries_end_with_its_failure() {
    // One URL listed four times, answering 500: each duplicate went through every retry
    // again after the one before it failed (12 requests for what 3 showed).
    let mut h = Harness::new(cfg_with_attempts(3));
    h.serve(ORIGIN, |_| Reply::new(with_length(500, &[], b"")));
    let jobs: Vec<JobId> = (0..4)
        .map(|n| h.submit(Download::new(URL, format!("/dl/copy{n}")).unwrap()))
        .collect();
    for &job in &jobs {
        assert!(matches!(
            h.run(job),
            Err(DownloadError::Status { status: 500, .. })
        ));
    }
    assert_eq!(h.requests.len(), 3, "the first job's three attempts only");
    // Another URL for the same file, or other headers, is another request: it tries.
    let mut h = Harness::new(cfg_with_attempts(3));
    h.serve(ORIGIN, |_| Reply::new(with_length(500, &[], b"")));
    let first = h.submit(Download::new(URL, "/dl/a").unwrap());
    let other = h.submit(Download::new(URL, "/dl/b").unwrap().header("X-Tenant", "b"));
    assert!(h.run(first).is_err() && h.run(other).is_err());
    assert_eq!(h.requests.len(), 6);
}

#[test]
fn duplicates_of_a_download_that_failed_without_a_retry_try_once_more_together() {
    // Five entries of one URL answering 404, each to its own file: after the first 404 each
    // duplicate made its own request, one after the other (five in all).
    for later in [404, 200] {
        let body = pattern(10_000, 5);
        let mut h = Harness::new(config());
        let b = body.clone();
        h.serve(ORIGIN, move |req| match (req.seq, later) {
            (0, _) | (_, 404) => Reply::new(with_length(404, &[], b"no")),
            _ => Reply::new(serve_range(&b, req)),
        });
        let jobs: Vec<JobId> = (0..5)
            .map(|n| h.submit(Download::new(URL, format!("/dl/copy{n}")).unwrap()))
            .collect();
        assert!(matches!(
            h.run(jobs[0]),
            Err(DownloadError::Status { status: 404, .. })
        ));
        for &job in &jobs[1..] {
            let result = h.run(job);
            match later {
                404 => assert!(
                    matches!(result, Err(DownloadError::Status { status: 404, .. })),
                    "{result:?}"
                ),
                _ => assert!(result.is_ok(), "{result:?}"),
            }
        }
        assert_eq!(
            h.requests.len(),
            2,
            "the 404, then one more try for the four others (then {later})"
        );
    }
}

#[test]
fn a_duplicate_whose_own_destination_holds_its_bytes_succeeds_though_its_leader_failed() {
    // (From a review.) It followed at submit and never looked at its own destination; it
    // ended with its leader's 503.
    let body = pattern(20_000, 3);
    let mut h = Harness::new(cfg_with_attempts(2));
    h.serve(ORIGIN, |_| Reply::new(with_length(503, &[], b"")));
    h.fs.put("/dl2/f.bin", &body);
    let first = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let second = h.submit(
        Download::new(URL, "/dl2/f.bin")
            .unwrap()
            .sha256(&sha_hex(&body))
            .unwrap(),
    );
    assert!(h.run(first).is_err());
    let out = h
        .run(second)
        .expect("its destination already holds the expected bytes");
    assert_eq!(out.delivery, crate::Delivery::AlreadyPresent);
}

#[test]
fn a_download_submitted_while_its_failed_predecessor_tidies_up_runs_on_its_own() {
    // (From a review.) It followed the predecessor only for its destination, and got the
    // predecessor's failure without asking the server.
    let body = pattern(10_000, 34);
    let b = body.clone();
    let mut h = Harness::new(cfg_with_attempts(1));
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if req.seq == 0 {
            let cut = head_len(&wire) + 3_000;
            Reply::new(wire[..cut].to_vec()).then(After::Reset)
        } else {
            Reply::new(wire)
        }
    });
    let first = h.submit(download());
    h.run_until("the failed job tidies up", |h| {
        h.pending_has(|op| matches!(op, IoOp::CloseFile { .. } | IoOp::WriteFileAtomic { .. }))
    });
    assert!(h.finished(first).is_none());
    let again = h.submit(download());
    assert!(h.run(first).is_err());
    let out = h.run(again);
    assert_eq!(h.requests.len(), 2, "the second asked the server: {out:?}");
    out.expect("the server answers the second request");
    assert_committed(&h, &body);
}

fn cfg_with_attempts(n: u32) -> Config {
    let mut cfg = config();
    cfg.retry.max_attempts = n;
    cfg
}

/// Like [`any_path_server`], with every answer naming the file `name`
/// (`Content-Disposition`).
fn naming_server(h: &mut Harness, name: &'static str) {
    h.serve(ORIGIN, move |req| {
        let body = pattern(20_000, req.path.len() as u8);
        let disposition = (
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        );
        Reply::new(with_length(200, &[disposition], &body))
            .pieces(&[5000])
            .gap(millis(50))
    });
}

#[test]
fn two_downloads_into_a_directory_named_alike_by_the_server_do_not_share_a_file() {
    let mut h = Harness::new(config());
    naming_server(&mut h, "same.bin");
    let a = h.submit(Download::into_dir(&format!("{ORIGIN}/a"), "/dl").unwrap());
    let b = h.submit(Download::into_dir(&format!("{ORIGIN}/bb"), "/dl").unwrap());
    let first = h.run(a).expect("the first named the file");
    assert_eq!(first.path, PathBuf::from("/dl/same.bin"));
    assert_eq!(
        h.run(b),
        Err(DownloadError::DestinationInUse {
            path: PathBuf::from("/dl/same.bin"),
            job: a.0
        })
    );
    assert_committed_at(&h, Path::new("/dl/same.bin"), &pattern(20_000, 2));
    assert!(
        !h.fs.exists("/dl/bb.haul-part"),
        "the refused job left nothing"
    );
}

#[test]
fn the_same_url_twice_into_one_directory_is_one_file_under_the_servers_name() {
    let mut h = Harness::new(config());
    naming_server(&mut h, "served.bin");
    // A file of the user's at the URL's own name: no copy may land on it.
    h.fs.put("/dl/a", b"mine");
    let url = format!("{ORIGIN}/a");
    let first = h.submit(Download::into_dir(&url, "/dl").unwrap());
    let second = h.submit(Download::into_dir(&url, "/dl").unwrap());
    let a = h.run(first).expect("first");
    let b = h.run(second).expect("its duplicate");
    let served = PathBuf::from("/dl/served.bin");
    assert_eq!((a.path, b.path), (served.clone(), served.clone()));
    assert_eq!(h.requests.len(), 1, "one transfer");
    assert_committed_at(&h, &served, &pattern(20_000, 2));
    assert_eq!(h.fs.get("/dl/a"), Some(&b"mine"[..]), "untouched");
    assert!(
        !h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::CopyFile { .. })),
        "nothing copied"
    );
}

#[test]
fn a_download_to_a_name_a_cancelled_job_got_from_the_server_waits_for_it_to_tidy_up() {
    let mut h = Harness::new(config());
    naming_server(&mut h, "named.bin");
    let a = cancelled_holder(
        &mut h,
        Download::into_dir(&format!("{ORIGIN}/a"), "/dl").unwrap(),
    );
    assert!(h.finished(a).is_none(), "still tidying up");
    let b = h.submit(Download::new(&format!("{ORIGIN}/bb"), "/dl/named.bin").unwrap());
    assert_eq!(h.run(a), Err(DownloadError::Cancelled));
    h.run(b)
        .expect("not refused: it waited for the cancelled job");
    assert_committed_at(&h, Path::new("/dl/named.bin"), &pattern(20_000, 3));
}

#[test]
fn of_the_jobs_waiting_for_a_cancelled_holder_the_most_urgent_takes_the_destination_first() {
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let same = "/dl/same";
    let at_same = |path: &str| Download::new(&format!("{ORIGIN}{path}"), same).unwrap();
    let holder = cancelled_holder(&mut h, at_same("/a"));
    let low = h.submit(at_same("/bb").priority(Priority::Low));
    let high = h.submit(at_same("/ccc").priority(Priority::High));
    h.run(low).expect("low");
    h.run(high).expect("high");
    assert_eq!(started_order(&h), vec![holder, high, low]);
    assert_committed_at(&h, Path::new(same), &pattern(20_000, 3));
}

#[test]
fn a_duplicate_does_not_wait_for_the_resume_of_the_download_it_followed() {
    // The same URL to another file shares the running download; paused, that download kept
    // its follower waiting for its own caller's resume (21 s, until the resume came).
    let mut h = Harness::new(config());
    any_path_server(&mut h, millis(50));
    let a = h.submit(job_at("a"));
    h.run_until("a receives", |h| {
        h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Progress { job, .. } if *job == a))
    });
    let b = h.submit(Download::new(&format!("{ORIGIN}/a"), "/dl/other").unwrap());
    h.drain();
    pause(&mut h, a);
    h.run(b).expect("b runs on its own");
    assert!(h.finished(a).is_none(), "a stays paused");
    assert_committed_at(&h, Path::new("/dl/other"), &pattern(20_000, 2));
    // The paused one goes on when resumed.
    resume(&mut h, a);
    h.run(a).expect("a resumed");
    assert_committed_at(&h, Path::new("/dl/a"), &pattern(20_000, 2));
}

/// A Critical download of `/u` (a Background job's URL, in the tests below) to a file of its
/// own: a duplicate that follows the Background job.
fn submit_critical_copy_of_u(h: &mut Harness) -> JobId {
    h.submit(
        Download::new(&format!("{ORIGIN}/u"), "/dl/u-now")
            .unwrap()
            .priority(Priority::Critical),
    )
}

fn run_all<'a>(h: &mut Harness, jobs: impl IntoIterator<Item = &'a JobId>) {
    for &job in jobs {
        h.run(job).expect("every download");
    }
}

#[test]
fn a_download_for_a_host_out_of_connections_lets_one_for_another_host_take_the_slot() {
    // Four slots, one connection per host, six downloads from one host listed before six
    // from another: the first host's took every slot (three of them only waiting for its one
    // connection) and the second host sat idle until they were done.
    let mut cfg = config();
    cfg.max_active_jobs = 4;
    cfg.max_connections_per_origin = 1;
    let mut h = Harness::new(cfg);
    const OTHER: &str = "http://other.test";
    for origin in [ORIGIN, OTHER] {
        h.serve(origin, move |req| {
            Reply::new(serve_range(&pattern(20_000, 3), req))
                .pieces(&[5000])
                .gap(millis(50))
        });
    }
    let at = |origin: &str, n: usize| {
        Download::new(
            &format!("{origin}/f{n}"),
            format!("/dl/{}-{n}", &origin[7..]),
        )
        .unwrap()
    };
    let first: Vec<JobId> = (0..6).map(|n| h.submit(at(ORIGIN, n))).collect();
    let second: Vec<JobId> = (0..6).map(|n| h.submit(at(OTHER, n))).collect();
    for &job in first.iter().chain(&second) {
        h.run(job).expect("every download");
    }
    let order = started_order(&h);
    assert_eq!(&order[..2], &[first[0], second[0]], "{order:?}");
    // Within each host the list's order holds.
    let of = |jobs: &[JobId]| -> Vec<JobId> {
        order.iter().copied().filter(|j| jobs.contains(j)).collect()
    };
    assert_eq!(of(&first), first);
    assert_eq!(of(&second), second);
}

#[test]
fn a_queued_download_that_a_more_urgent_duplicate_follows_starts_at_its_class() {
    // A Critical download of what a queued Background download fetches followed it, and the
    // Background one kept its place behind every Normal one: the Critical file came last.
    let mut h = one_slot_any_path();
    let x = h.submit(job_at("x"));
    let background = h.submit(job_at("u").priority(Priority::Background));
    let normal: Vec<JobId> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| h.submit(job_at(n)))
        .collect();
    let critical = submit_critical_copy_of_u(&mut h);
    h.run(critical).expect("the critical copy");
    run_all(&mut h, normal.iter().chain([&x, &background]));
    let order = started_order(&h);
    assert_eq!(&order[..2], &[x, background], "{order:?}");
    assert!(
        h.finished_at(critical) < h.finished_at(normal[0]),
        "the critical download came before the normal ones"
    );
    assert_committed_at(&h, Path::new("/dl/u-now"), &pattern(20_000, 2));
}

#[test]
fn a_duplicate_of_a_queued_download_paused_before_it_started_does_not_wait_for_its_resume() {
    let mut h = one_slot_any_path();
    let x = h.submit(job_at("x"));
    let a = h.submit(job_at("a"));
    let b = h.submit(Download::new(&format!("{ORIGIN}/a"), "/dl/other").unwrap());
    pause(&mut h, a);
    h.run(x).expect("x");
    h.run(b).expect("b runs on its own");
    assert!(h.finished(a).is_none(), "a stays paused");
    assert_committed_at(&h, Path::new("/dl/other"), &pattern(20_000, 2));
}

/// One slot, busy with `x`; queued behind it two Normal downloads, then a Background one of
/// `/u`, then a Critical copy of `/u` that follows it: the four in the order they start when
/// the copy lends no class, and the copy.
fn one_slot_normal_then_background_and_a_critical_copy() -> (Harness, [JobId; 4], JobId) {
    let mut h = one_slot_any_path();
    let x = h.submit(job_at("x"));
    let n1 = h.submit(job_at("n1"));
    let n2 = h.submit(job_at("n2"));
    let background = h.submit(job_at("u").priority(Priority::Background));
    let critical = submit_critical_copy_of_u(&mut h);
    (h, [x, n1, n2, background], critical)
}

fn assert_started_in_order(h: &mut Harness, jobs: &[JobId]) {
    run_all(h, jobs);
    let order = started_order(h);
    assert_eq!(order, jobs, "{order:?}");
}

#[test]
fn a_class_lent_by_a_duplicate_goes_back_when_the_duplicate_is_cancelled() {
    let (mut h, in_order, critical) = one_slot_normal_then_background_and_a_critical_copy();
    h.engine.cancel(h.now, critical, CancelMode::KeepPartial);
    h.drain();
    assert!(h.run(critical).is_err());
    assert_started_in_order(&mut h, &in_order);
}

#[test]
fn a_paused_duplicate_lends_no_class_until_it_is_resumed() {
    // A Critical duplicate paused while it followed a queued Background download kept that
    // download at Critical: the paused caller's file jumped the Normal ones.
    let (mut h, in_order, critical) = one_slot_normal_then_background_and_a_critical_copy();
    pause(&mut h, critical);
    assert_started_in_order(&mut h, &in_order);
    // Paused before it started, it still takes the bytes its leader fetched (a copy, no
    // attempt of its own).
    resume(&mut h, critical);
    h.run(critical).expect("the duplicate");
    assert_committed_at(&h, Path::new("/dl/u-now"), &pattern(20_000, 2));
}

#[test]
fn resuming_a_paused_duplicate_lends_its_class_again() {
    let mut h = one_slot_any_path();
    let x = h.submit(job_at("x"));
    let background = h.submit(job_at("u").priority(Priority::Background));
    let normal: Vec<JobId> = ["n1", "n2"].iter().map(|n| h.submit(job_at(n))).collect();
    let critical = submit_critical_copy_of_u(&mut h);
    pause(&mut h, critical);
    resume(&mut h, critical);
    h.run(critical).expect("the critical copy");
    run_all(&mut h, normal.iter().chain([&x, &background]));
    let order = started_order(&h);
    assert_eq!(&order[..2], &[x, background], "{order:?}");
}

#[test]
fn a_job_paused_before_it_started_is_no_leader_for_a_later_duplicate() {
    let mut h = one_slot_any_path();
    let x = h.submit(job_at("x"));
    let a = h.submit(job_at("a"));
    pause(&mut h, a);
    // The same URL to another file: it must not wait on the paused job's caller.
    let b = h.submit(Download::new(&format!("{ORIGIN}/a"), "/dl/other").unwrap());
    h.run(x).expect("x");
    h.run(b).expect("b runs on its own");
    assert!(h.finished(a).is_none(), "a stays paused");
    assert_committed_at(&h, Path::new("/dl/other"), &pattern(20_000, 2));
}

// ------------------------------------------------------------------------ existing destination

#[test]
fn a_file_the_url_names_in_a_directory_destination_is_not_fetched_again_when_it_matches() {
    let body = pattern(50_000, 43);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    h.fs.put(dest(), &body);
    let job = h.submit(
        Download::into_dir(URL, "/dl")
            .unwrap()
            .sha256(&sha_hex(&body))
            .unwrap(),
    );
    let out = h.run(job).expect("already there");
    assert_eq!(out.path, dest());
    assert_eq!(out.bytes_fetched, 0);
    assert!(h.requests.is_empty() && h.connects() == 0, "no network");
    // Other bytes under that name: fetched and replaced.
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    h.fs.put(dest(), b"old bytes");
    let job = h.submit(
        Download::into_dir(URL, "/dl")
            .unwrap()
            .sha256(&sha_hex(&body))
            .unwrap(),
    );
    h.run(job).expect("fetched");
    assert_eq!(h.requests.len(), 1);
    assert_committed(&h, &body);
}

#[test]
fn a_destination_already_holding_the_expected_sha256_finishes_without_a_request() {
    let body = pattern(50_000, 12);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    h.fs.put(dest(), &body);
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap().size(50_000));
    let out = h.run(job).expect("already there");
    assert_eq!(out.bytes_fetched, 0);
    assert_eq!(out.size, 50_000);
    assert_eq!(out.sha256, sha(&body));
    assert!(h.requests.is_empty() && h.connects() == 0, "no network");
    assert_committed(&h, &body);
    assert!(h
        .ops
        .iter()
        .all(|(_, op)| !matches!(op, IoOp::WriteAt { .. } | IoOp::Rename { .. })));
}

#[test]
fn a_destination_already_holding_its_bytes_removes_the_partial_an_earlier_run_left() {
    // An interrupted run left its partial and state file; the file then got there another
    // way. The job found it and finished, and left the partial (megabytes) beside it.
    let body = pattern(50_000, 12);
    let mut h = Harness::new(config());
    h.fs.put(dest(), &body);
    h.fs.put(part(), &body[..20_000]);
    h.fs.put(state(), b"an earlier run's state");
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("already there");
    assert_eq!(out.delivery, crate::Delivery::AlreadyPresent);
    assert!(h.requests.is_empty());
    assert_committed(&h, &body);
    assert!(!h.fs.exists(part()) && !h.fs.exists(state()));

    // A partial another process holds (it downloads there now) stays, with its state.
    let mut h = Harness::new(config());
    h.fs.put(dest(), &body);
    h.fs.put(part(), &body[..20_000]);
    h.fs.put(state(), b"another process's state");
    h.fs.held_elsewhere.insert(part());
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("already there");
    assert_eq!(out.delivery, crate::Delivery::AlreadyPresent);
    assert!(h.fs.exists(part()) && h.fs.exists(state()));
}

#[test]
fn a_destination_holding_other_bytes_is_downloaded_and_replaced() {
    let body = pattern(50_000, 13);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    // Same length, different bytes: only the hash tells them apart.
    h.fs.put(dest(), &pattern(50_000, 14));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("downloaded");
    assert_eq!(out.bytes_fetched, 50_000);
    assert_eq!(h.requests.len(), 1);
    assert_committed(&h, &body);
}

#[test]
fn cancel_while_the_destination_check_opens_it_finishes_cancelled_and_closes_nothing_unopened() {
    let body = pattern(5_000, 20);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    let job = h.submit(segmented(4, 1000).sha256(&sha_hex(&body)).unwrap());
    assert!(h.pending_has(|op| matches!(op, IoOp::OpenRead { .. })));
    h.cancel(job, CancelMode::KeepPartial);
    // The harness flags a CloseFile on a file that never opened (the destination is absent).
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert!(h.requests.is_empty());
    assert!(!h.fs.exists(dest()) && !h.fs.exists(part()) && !h.fs.exists(state()));
}

// ------------------------------------------------------------------------ rate limits

const RATE: u64 = 512 * 1024;
const PIECE: usize = 64 * 1024;

/// A server that sends `len` bytes at once in 64 KiB pieces for any path.
fn fast_server(h: &mut Harness, len: usize) {
    h.serve(ORIGIN, move |req| {
        let body = pattern(len, req.path.len() as u8);
        Reply::new(serve_range(&body, req)).pieces(&[PIECE])
    });
}

fn assert_rate_within_five_percent(got: u64, rate: u64, what: &str) {
    // No burst at the start: the bucket starts empty.
    let ten_seconds = rate * 10;
    let expected = ten_seconds;
    let tolerance = ten_seconds / 20;
    assert!(
        got.abs_diff(expected) <= tolerance,
        "{what}: {got} bytes in 10 s, expected {expected} ± {tolerance}"
    );
}

#[test]
fn a_global_rate_limit_holds_received_bytes_to_the_rate_over_ten_seconds() {
    let mut cfg = config();
    cfg.rate_limit = Some(RATE);
    let mut h = Harness::new(cfg);
    fast_server(&mut h, 16 * 1024 * 1024);
    let job = h.submit(download());
    h.run_until("ten seconds", |h| h.now >= at(secs(10)));
    let got = written_until(&h, &part(), at(secs(10)));
    assert_rate_within_five_percent(got, RATE, "global limit");
    // Steady: the last five seconds carry five seconds' worth.
    let late = got - written_until(&h, &part(), at(secs(5)));
    assert!(
        late.abs_diff(5 * RATE) <= RATE / 4,
        "{late} bytes in the last five seconds"
    );
    h.cancel(job, CancelMode::Discard);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
}

#[test]
fn a_global_rate_below_the_low_speed_minimum_per_download_fails_no_download() {
    // `--limit-rate 4K` over eight downloads gives each 512 B/s, below the default
    // low-speed minimum (1 KiB/s over 60 s): every download failed with a low-speed
    // timeout, and the healthy origin's breaker opened. Time held back by haul's own limit
    // is no slowness of the server.
    let mut cfg = config();
    cfg.rate_limit = Some(4 * 1024);
    cfg.retry.max_attempts = 1;
    cfg.low_speed = Some(crate::config::LowSpeedLimit {
        bytes_per_sec: 1024,
        window: secs(10),
    });
    let mut h = Harness::new(cfg);
    fast_server(&mut h, 20_000);
    let jobs: Vec<JobId> = (0..8).map(|n| h.submit(job_at(&format!("f{n}")))).collect();
    for job in jobs {
        h.run(job).expect("slowed by the limit, not failed");
    }
    assert!(h.now >= at(secs(30)), "the limit held: {}", h.now);
}

#[test]
fn a_per_download_rate_limit_holds_that_download_to_its_rate() {
    let mut h = Harness::new(config());
    fast_server(&mut h, 16 * 1024 * 1024);
    let limited = h.submit(download().rate_limit(RATE));
    let free = h.submit(job_at("unlimited"));
    h.run_until("ten seconds", |h| h.now >= at(secs(10)));
    let got = written_until(&h, &part(), at(secs(10)));
    assert_rate_within_five_percent(got, RATE, "per-download limit");
    h.run(free)
        .expect("the unlimited download is not held back");
    assert!(h.finished_at(free) < at(secs(1)));
    h.cancel(limited, CancelMode::Discard);
    assert_eq!(h.run(limited), Err(DownloadError::Cancelled));
}

#[test]
fn a_low_class_alone_uses_the_whole_rate_of_the_global_limit() {
    // 1.5 s worth of bytes at the rate. Holding back a reserve for more urgent classes that
    // are not there would take longer.
    let len = RATE as usize * 3 / 2;
    let mut cfg = config();
    cfg.rate_limit = Some(RATE);
    let mut h = Harness::new(cfg);
    fast_server(&mut h, len);
    let job = h.submit(download().priority(Priority::Background));
    h.run(job).expect("downloaded");
    let took = h.finished_at(job);
    assert!(
        took <= at(Duration::from_millis(1_600)),
        "finished at {took}; the rate was not all used"
    );
}

/// A high and a low job under one global limit for ten seconds, after `idle` downloads
/// from another origin left that many idle connections in the pool.
fn high_and_low_under_a_global_limit(idle: usize) {
    let mut cfg = config();
    cfg.rate_limit = Some(RATE);
    cfg.max_active_jobs = idle.max(2);
    cfg.max_connections_per_origin = idle.max(2);
    cfg.idle_connection_timeout = secs(600);
    let mut h = Harness::new(cfg);
    fast_server(&mut h, 16 * 1024 * 1024);
    h.serve(
        "http://other.test",
        crate::engine_tests::file_server(pattern(1_000, 3)),
    );
    let small: Vec<JobId> = (0..idle)
        .map(|i| {
            h.submit(
                Download::new(&format!("http://other.test/s{i}"), format!("/dl/s{i}")).unwrap(),
            )
        })
        .collect();
    for job in small {
        h.run(job).expect("a small download");
    }
    let start = h.now;
    let high = h.submit(job_at("high").priority(Priority::High));
    let low = h.submit(job_at("low").priority(Priority::Low));
    let ten = start + secs(10);
    h.run_until("ten seconds", |h| h.now >= ten);
    let got_high = written_until(&h, Path::new("/dl/high.haul-part"), ten);
    let got_low = written_until(&h, Path::new("/dl/low.haul-part"), ten);
    assert!(
        got_high > 2 * got_low,
        "high {got_high} bytes, low {got_low} bytes"
    );
    // Past the initial burst the low class still gets reads: it is held back, not starved
    // (each of its reads is its connection's share of an eighth of a second of the rate,
    // shared among the busy connections only: idle ones in the pool read nothing).
    let five = start + secs(5);
    let late_low = got_low - written_until(&h, Path::new("/dl/low.haul-part"), five);
    assert!(
        late_low >= 2 * PIECE as u64,
        "the low-priority job got {late_low} bytes in the last five seconds ({idle} idle)"
    );
    assert_rate_within_five_percent(got_high + got_low, RATE, "both jobs together");
    for job in [high, low] {
        h.cancel(job, CancelMode::Discard);
        assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    }
}

#[test]
fn under_a_shared_global_limit_the_higher_priority_job_receives_more() {
    high_and_low_under_a_global_limit(0);
}

/// Idle pooled connections do not shrink the busy ones' share of a global limit (they were
/// counted as readers: with 40 idle, the low class got a quarter of its share).
#[test]
fn idle_pooled_connections_do_not_shrink_the_share_of_a_global_limit() {
    high_and_low_under_a_global_limit(40);
}

// ------------------------------------------------------------------------ pause and resume

/// Pause after three seconds of a slow download, wait, resume; returns the harness, the job,
/// the bytes present at the pause and the number of requests before the resume.
fn pause_and_resume(d: Download, body: &[u8]) -> (Harness, JobId, u64, usize) {
    let mut h = Harness::new(config());
    let b = body.to_vec();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req))
            .pieces(&[2500])
            .gap(secs(1))
    });
    let job = h.submit(d);
    h.run_until("three seconds", |h| h.now >= at(secs(3)));
    let paused_at = h.now;
    let ops_before = h.ops.len();
    pause(&mut h, job);
    let present = *h.progress(job).last().expect("progress before the pause");
    // Every connection of the job is closed at once.
    let closed: BTreeSet<_> = h.ops[ops_before..]
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::Close { conn } => Some(*conn),
            _ => None,
        })
        .collect();
    let used: BTreeSet<_> = h.requests.iter().map(|r| r.conn).collect();
    assert!(
        used.iter()
            .all(|c| closed.contains(c) || h.conns[c].close_issued),
        "connections left open by pause"
    );
    // Paused: nothing wakes the job; time passes without a single network request.
    while h.step_io() {}
    assert_eq!(
        h.engine.poll_timeout(),
        None,
        "a paused job sets no deadline"
    );
    h.now = paused_at + secs(60);
    let paused_ops = h.ops.len();
    resume(&mut h, job);
    assert!(h.ops[ops_before..paused_ops]
        .iter()
        .all(|(_, op)| !matches!(
            op,
            IoOp::Recv { .. } | IoOp::Send { .. } | IoOp::Connect { .. }
        )));
    let seen = h.requests.len();
    (h, job, present, seen)
}

#[test]
fn pause_closes_connections_and_resume_continues_with_a_range_from_the_received_offset() {
    let body = pattern(20_000, 15);
    let d = download().sha256(&sha_hex(&body)).unwrap();
    let (mut h, job, present, seen) = pause_and_resume(d, &body);
    assert!(present > 0 && present < 20_000);
    let out = h.run(job).expect("resumed");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 20_000, "nothing fetched twice");
    assert_eq!(
        h.requests[seen].header("range").map(str::to_string),
        Some(format!("bytes={present}-"))
    );
    assert_eq!(h.requests[seen].header("if-range"), Some(ETAG));
    let stats = h.engine.stats();
    assert_eq!((stats.done, stats.failed, stats.cancelled), (1, 0, 0));
    assert_eq!(stats.bytes, 20_000);
}

#[test]
fn a_paused_segmented_download_resumes_only_its_missing_ranges() {
    let body = pattern(40_000, 16);
    let d = segmented(4, 2000).sha256(&sha_hex(&body)).unwrap();
    let (mut h, job, _present, seen) = pause_and_resume(d, &body);
    let out = h.run(job).expect("resumed");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 40_000, "nothing fetched twice");
    assert!(h.requests.len() > seen);
    for req in &h.requests[seen..] {
        assert!(matches!(range_of(req), Some((_, Some(_)))));
    }
    let writes = writes_to(&h, &part()).iter().map(|w| (w.1, w.2)).collect();
    assert_exact_cover(writes, 40_000);
}

// ------------------------------------------------------------------------ stats

#[test]
fn stats_count_done_failed_cancelled_and_body_bytes() {
    let mut h = Harness::new(config());
    let body = pattern(12_000, 17);
    let b = body.clone();
    h.serve(ORIGIN, move |req| match req.path.as_str() {
        "/missing" => Reply::new(with_length(404, &[], b"no")),
        "/slow" => Reply::new(serve_range(&pattern(50_000, 1), req))
            .pieces(&[1000])
            .gap(secs(1)),
        _ => Reply::new(serve_range(&b, req)).pieces(&[4000]),
    });
    let ok = h.submit(job_at("ok"));
    let missing = h.submit(job_at("missing"));
    let slow = h.submit(job_at("slow"));
    h.run(ok).expect("ok");
    h.run(missing).expect_err("404");
    h.run_until("some slow bytes", |h| h.now >= at(secs(3)));
    let slow_bytes = *h.progress(slow).last().expect("slow progress");
    h.cancel(slow, CancelMode::Discard);
    assert_eq!(h.run(slow), Err(DownloadError::Cancelled));
    let stats = h.engine.stats();
    assert_eq!(stats.done, 1);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.cancelled, 1);
    assert_eq!(stats.bytes, 12_000 + slow_bytes);
    assert_eq!((stats.active, stats.queued), (0, 0));
    assert!(stats.average_rate > 0.0 && stats.peak_rate >= stats.current_rate);
}

#[test]
fn the_peak_rate_is_never_below_the_average_once_a_second_has_passed() {
    // A steady second, then a burst the end cut short of a window: the one window that
    // closed (10 kB/s) was read as the peak against an average of 40 kB/s.
    let mut h = Harness::new(config());
    let mut body = pattern(11_000, 4);
    body.extend(pattern(50_000, 5));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let head = head_len(&wire);
        let mut sizes = vec![head];
        sizes.extend([1000; 11]);
        sizes.push(50_000);
        Reply::new(wire).pieces(&sizes).gap(millis(100))
    });
    let job = h.submit(download());
    h.run(job).expect("downloads");
    let stats = h.engine.stats();
    assert!(
        stats.peak_rate >= stats.average_rate && stats.average_rate > 20_000.0,
        "{stats:?}"
    );
}

#[test]
fn a_paused_duplicate_is_not_made_the_one_that_tries_again_for_the_others() {
    // L answers 404; F1 and F2 followed it (own destinations, no sha256). F1 was paused
    // while it followed. After the 404, F2 must not wait for paused F1's caller.
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |_req| {
        Reply::new(with_length(404, &[], b"no")).gap(millis(100))
    });
    let l = h.submit(Download::new(URL, "/dl/copy0").unwrap());
    let f1 = h.submit(Download::new(URL, "/dl/copy1").unwrap());
    let f2 = h.submit(Download::new(URL, "/dl/copy2").unwrap());
    h.engine.pause(h.now, f1);
    assert!(matches!(
        h.run(l),
        Err(DownloadError::Status { status: 404, .. })
    ));
    // F2 ends (its own try, or the 404 shared) without anyone resuming F1.
    let r = h.run(f2);
    assert!(
        matches!(r, Err(DownloadError::Status { status: 404, .. })),
        "{r:?}"
    );
}

#[test]
fn a_download_redirected_to_another_host_does_not_hold_its_first_hosts_room() {
    // One connection per host, four slots. ORIGIN/f0 redirects to a CDN host and downloads
    // slowly from there; ORIGIN/f1 is served by ORIGIN itself, whose connection is idle.
    let mut cfg = config();
    cfg.max_active_jobs = 4;
    cfg.max_connections_per_origin = 1;
    let mut h = Harness::new(cfg);
    const CDN: &str = "http://cdn.test";
    h.serve(ORIGIN, move |req| {
        if req.path.starts_with("/f0") {
            return Reply::new(with_length(
                302,
                &[hdr("Location", "http://cdn.test/f0")],
                b"",
            ));
        }
        Reply::new(serve_range(&pattern(20_000, 3), req))
    });
    h.serve(CDN, move |req| {
        Reply::new(serve_range(&pattern(20_000, 4), req))
            .pieces(&[1000])
            .gap(millis(500))
    });
    let f0 = h.submit(Download::new(&format!("{ORIGIN}/f0"), "/dl/f0").unwrap());
    let f1 = h.submit(Download::new(&format!("{ORIGIN}/f1"), "/dl/f1").unwrap());
    h.run(f0).expect("f0");
    h.run(f1).expect("f1");
    assert!(
        h.finished_at(f1) < h.finished_at(f0),
        "f1 waited for f0's CDN download: f1 done at {:?}, f0 at {:?}",
        h.finished_at(f1),
        h.finished_at(f0)
    );
}

// ------------------------------------------------------------------------ property

/// One random segmented download.
#[derive(Debug, Clone)]
struct SegCase {
    len: usize,
    segments: u32,
    min_segment: u64,
    pieces: Vec<usize>,
    seed: u64,
    /// Reset the response to request number `.0` after `.1` per mille of its bytes.
    reset: Option<(usize, u16)>,
    /// File writes and reads run only when nothing else can.
    slow_disk: bool,
}

impl Arbitrary for SegCase {
    fn arbitrary(g: &mut Gen) -> SegCase {
        let pick = |g: &mut Gen, n: u64| u64::arbitrary(g) % n;
        let len = match pick(g, 10) {
            0 => pick(g, 64) as usize,
            _ => pick(g, 2 * 1024 * 1024 + 1) as usize,
        };
        let min_segment = 1 << pick(g, 21);
        let pieces = (0..1 + pick(g, 4))
            .map(|_| {
                let scale = 1usize << (8 + pick(g, 9));
                scale + pick(g, scale as u64) as usize
            })
            .collect();
        SegCase {
            len,
            segments: 1 + pick(g, 8) as u32,
            min_segment,
            pieces,
            seed: u64::arbitrary(g),
            reset: bool::arbitrary(g).then(|| (pick(g, 6) as usize, pick(g, 1000) as u16)),
            slow_disk: bool::arbitrary(g),
        }
    }
}

fn segmented_download_is_exact(case: SegCase) -> TestResult {
    let body = pattern(case.len, case.seed as u8);
    let mut cfg: Config = config();
    cfg.seed = case.seed;
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(case.seed));
    if case.slow_disk {
        h.defer = Some(Box::new(|op| {
            matches!(op, IoOp::WriteAt { .. } | IoOp::ReadAt { .. })
        }));
    }
    let b = body.clone();
    let (pieces, reset) = (case.pieces.clone(), case.reset);
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        match reset {
            Some((n, permille)) if n == req.seq => {
                let cut = wire.len() * usize::from(permille) / 1000;
                Reply::new(wire[..cut].to_vec())
                    .pieces(&pieces)
                    .then(After::Reset)
            }
            _ => Reply::new(wire).pieces(&pieces),
        }
    });
    let d = segmented(case.segments, case.min_segment)
        .sha256(&sha_hex(&body))
        .unwrap();
    let job = h.submit(d);
    let out = h.run(job);
    let ok = matches!(&out, Ok(o) if o.size == case.len as u64)
        && h.fs.get(dest()) == Some(&body[..])
        && !h.fs.exists(part())
        && !h.fs.exists(state());
    if !segmented_events(&h, job).is_empty() {
        SEGMENTED_RUNS.fetch_add(1, Ordering::Relaxed);
    }
    if case.reset.is_some_and(|(n, _)| n < h.requests.len()) {
        RESET_RUNS.fetch_add(1, Ordering::Relaxed);
    }
    if !ok {
        return TestResult::error(format!(
            "result {out:?} after {} requests; dest holds {:?} bytes",
            h.requests.len(),
            h.fs.get(dest()).map(<[u8]>::len)
        ));
    }
    TestResult::passed()
}

/// Property runs that were split over several connections, and runs whose reset happened
/// (the property must not be vacuous).
static SEGMENTED_RUNS: AtomicUsize = AtomicUsize::new(0);
static RESET_RUNS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn any_segmented_download_with_any_pieces_order_and_one_reset_commits_exactly_the_body() {
    QuickCheck::new()
        .tests(60)
        .max_tests(60)
        .rng(Gen::new(100))
        .quickcheck(segmented_download_is_exact as fn(SegCase) -> TestResult);
    let segmented = SEGMENTED_RUNS.load(Ordering::Relaxed);
    let reset = RESET_RUNS.load(Ordering::Relaxed);
    assert!(
        segmented >= 15 && reset >= 5,
        "{segmented} runs segmented, {reset} runs reset"
    );
}

/// Each request meets a fault chosen by `faults` (a good answer, a 206 from byte 0 whatever
/// was asked, a cut then EOF, a reset or a stall, a 503, a 200 that ignores `Range`) on a
/// segmented download over a random number of connections, with a slow disk half the time
/// and, when `two_attempts`, a retry policy that gives up after the second attempt (a 200 or
/// a misfit 206 to a segment leaves the job on one connection, which most faults then only
/// slow down: without a short budget nearly every run would succeed, and the failure path go
/// untested): a success holds exactly the body, a failure is retryable and leaves nothing at
/// the destination (the harness checks every state file left behind).
fn segmented_ends_exact_or_clean_whatever_faults(
    len: u32,
    faults: Vec<u8>,
    pieces: Vec<u8>,
    seed: u64,
    two_attempts: bool,
) -> TestResult {
    let body = pattern(len as usize % 300_000, seed as u8);
    let sizes: Vec<usize> = pieces.iter().map(|p| usize::from(*p) * 97 + 700).collect();
    let mut cfg = config();
    cfg.checkpoint_bytes = 20_000;
    cfg.idle_timeout = secs(5);
    cfg.seed = seed;
    cfg.max_connections_per_origin = 1 + (seed % 4) as usize;
    cfg.retry.max_attempts = if two_attempts { 2 } else { 8 };
    cfg.retry.max_delay = secs(4);
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(seed));
    if seed & 16 == 0 {
        h.defer = Some(Box::new(|op| {
            matches!(
                op,
                IoOp::WriteAt { .. } | IoOp::ReadAt { .. } | IoOp::Sync { .. }
            )
        }));
    }
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let fault = faults.get(req.seq).copied().unwrap_or(0);
        let wire = serve_range(&b, req);
        let cut = (usize::from(fault) * 3701 + req.seq * 11) % (wire.len() + 1);
        let reply = match fault % 8 {
            1 if !b.is_empty() => {
                let cr = format!("bytes 0-{}/{}", b.len() - 1, b.len());
                let headers = [hdr("ETag", ETAG), hdr("Content-Range", cr)];
                Reply::new(with_length(206, &headers, &b))
            }
            2 => Reply::new(wire[..cut].to_vec()).then(After::Eof),
            3 => Reply::new(wire[..cut].to_vec()).then(After::Reset),
            4 => Reply::new(wire[..cut].to_vec()),
            5 => Reply::new(with_length(503, &[], b"busy")),
            6 => Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b)),
            _ => Reply::new(wire),
        };
        reply.pieces(&sizes)
    });
    let segments = 2 + (seed >> 4) as u32 % 6;
    let min_segment = 1 + (seed >> 8) % 40_000;
    let job = h.submit(
        segmented(segments, min_segment)
            .sha256(&sha_hex(&body))
            .unwrap(),
    );
    let result = h.run(job);
    let ok = match &result {
        Ok(_) => h.fs.get(dest()) == Some(&body[..]) && !h.fs.exists(part()),
        Err(e) => e.retryable() && !h.fs.exists(dest()),
    };
    let outcomes = if result.is_ok() {
        &FAULT_RUNS_OK
    } else {
        &FAULT_RUNS_FAILED
    };
    outcomes.fetch_add(1, Ordering::Relaxed);
    if !single_connection_reasons(&h, job).is_empty() {
        FAULT_RUNS_SINGLE.fetch_add(1, Ordering::Relaxed);
    }
    if !ok {
        return TestResult::error(format!(
            "result {result:?} after {} requests",
            h.requests.len()
        ));
    }
    TestResult::passed()
}

/// Property runs that succeeded, that failed, and that went on over one connection (the
/// property must cover each).
static FAULT_RUNS_OK: AtomicUsize = AtomicUsize::new(0);
static FAULT_RUNS_FAILED: AtomicUsize = AtomicUsize::new(0);
static FAULT_RUNS_SINGLE: AtomicUsize = AtomicUsize::new(0);

#[test]
fn any_faults_on_a_segmented_download_end_with_exact_bytes_or_a_clean_retryable_failure() {
    QuickCheck::new()
        .tests(300)
        .max_tests(300)
        .rng(Gen::new(200))
        .quickcheck(
            segmented_ends_exact_or_clean_whatever_faults
                as fn(u32, Vec<u8>, Vec<u8>, u64, bool) -> TestResult,
        );
    let ok = FAULT_RUNS_OK.load(Ordering::Relaxed);
    let failed = FAULT_RUNS_FAILED.load(Ordering::Relaxed);
    let single = FAULT_RUNS_SINGLE.load(Ordering::Relaxed);
    assert!(
        ok >= 100 && failed >= 5 && single >= 20,
        "{ok} succeeded, {failed} failed, {single} went on over one connection"
    );
}

/// One job of [`any_mix_of_jobs_ends_consistently`].
#[derive(Debug, Clone)]
struct MixJob {
    /// Which of three files (several jobs may share one: dedup).
    file: u8,
    priority: Priority,
    /// Depend on an earlier job (index modulo the jobs so far).
    after: Option<u8>,
    segments: u32,
    with_sha256: bool,
}

impl Arbitrary for MixJob {
    fn arbitrary(g: &mut Gen) -> MixJob {
        MixJob {
            file: u8::arbitrary(g) % 3,
            priority: *g.choose(&Priority::ALL).expect("non-empty"),
            after: bool::arbitrary(g).then(|| u8::arbitrary(g)),
            segments: 1 + u32::from(u8::arbitrary(g) % 5),
            with_sha256: bool::arbitrary(g),
        }
    }
}

/// What happens to one job while the others run.
#[derive(Debug, Clone, Copy)]
enum Disturb {
    CancelKeep,
    CancelDiscard,
    PauseResume,
}

/// Up to ten jobs over three files with random priorities, dependencies, duplicates and
/// segments, random job and connection limits and an optional global rate limit; the server
/// resets, answers 503 or trickles at random; one job may be cancelled or paused and resumed.
/// Every job ends; every success holds its file's bytes; a dependant never starts before its
/// dependency succeeded and fails with `DependencyFailed` when it did not; the counters add up.
fn any_mix_of_jobs_ends_consistently(
    jobs: Vec<MixJob>,
    faults: Vec<u8>,
    seed: u64,
    disturb: Option<(u8, u8)>,
    rate_limited: bool,
) -> TestResult {
    if jobs.is_empty() {
        return TestResult::discard();
    }
    let jobs: Vec<MixJob> = jobs.into_iter().take(10).collect();
    let mut cfg = config();
    cfg.seed = seed;
    cfg.idle_timeout = secs(5);
    cfg.max_active_jobs = 1 + (seed % 3) as usize;
    cfg.max_connections_per_origin = 1 + ((seed >> 4) % 4) as usize;
    cfg.max_connections = 1 + ((seed >> 8) % 6) as usize;
    cfg.rate_limit = rate_limited.then_some(200_000);
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(seed));
    let bodies: Vec<Vec<u8>> = (0..3u8)
        .map(|i| pattern(10_000 + usize::from(i) * 30_011, i))
        .collect();
    let served = bodies.clone();
    h.serve(ORIGIN, move |req| {
        let file: usize = req.path[2..].parse().expect("/f<n>");
        let wire = serve_range(&served[file], req);
        let fault = faults.get(req.seq).copied().unwrap_or(0);
        let cut = (usize::from(fault) * 3701 + req.seq * 11) % (wire.len() + 1);
        match fault % 6 {
            1 => Reply::new(wire[..cut].to_vec())
                .pieces(&[4000])
                .then(After::Reset),
            2 => Reply::new(with_length(503, &[], b"busy")),
            3 => Reply::new(wire).pieces(&[3000]).gap(millis(200)),
            _ => Reply::new(wire).pieces(&[5000]),
        }
    });
    let mut ids: Vec<JobId> = Vec::new();
    let mut deps: Vec<Option<JobId>> = Vec::new();
    for (k, j) in jobs.iter().enumerate() {
        let url = format!("{ORIGIN}/f{}", j.file);
        let mut d = Download::new(&url, format!("/dl/j{k}"))
            .unwrap()
            .priority(j.priority)
            .segments(j.segments)
            .min_segment(3000);
        if j.with_sha256 {
            d = d.sha256(&sha_hex(&bodies[usize::from(j.file)])).unwrap();
        }
        let dep = j
            .after
            .filter(|_| !ids.is_empty())
            .map(|a| ids[usize::from(a) % ids.len()]);
        if let Some(dep) = dep {
            d = d.after(dep);
        }
        deps.push(dep);
        ids.push(h.submit(d));
    }
    if let Some((which, steps)) = disturb {
        let victim = ids[usize::from(which) % ids.len()];
        for _ in 0..steps {
            if !h.step() {
                break;
            }
        }
        match [
            Disturb::CancelKeep,
            Disturb::CancelDiscard,
            Disturb::PauseResume,
        ][usize::from(which) % 3]
        {
            Disturb::CancelKeep => h.cancel(victim, CancelMode::KeepPartial),
            Disturb::CancelDiscard => h.cancel(victim, CancelMode::Discard),
            Disturb::PauseResume => {
                pause(&mut h, victim);
                for _ in 0..steps / 4 {
                    if !h.step() {
                        break;
                    }
                }
                h.now = h.now + secs(3);
                resume(&mut h, victim);
            }
        }
    }
    let results: Vec<_> = ids.iter().map(|id| h.run(*id)).collect();
    for (k, result) in results.iter().enumerate() {
        if let Ok(out) = result {
            if h.fs.get(&out.path) != Some(&bodies[usize::from(jobs[k].file)][..]) {
                return TestResult::error(format!("job {k} committed the wrong bytes"));
            }
        }
        let Some(dep) = deps[k] else { continue };
        let dep_result = h.finished(dep).expect("dependency finished").1;
        let dep_ok = dep_result.is_ok();
        let dep_done = event_index(&h, dep, |e| matches!(e, Event::Finished { .. }));
        let started = h
            .events
            .iter()
            .position(|(_, e)| matches!(e, Event::Started { job, .. } if *job == ids[k]));
        if started.is_some_and(|s| s < dep_done || !dep_ok) {
            return TestResult::error(format!("job {k} started without its dependency"));
        }
        let cancelled = *result == Err(DownloadError::Cancelled);
        let dep_failed = dep_result.as_ref().err().is_some_and(|cause| {
            *result == Err(DownloadError::dependency_failed(dep.0, cause.clone()))
        });
        if !dep_ok && !cancelled && !dep_failed {
            return TestResult::error(format!("job {k}: dependency failed, got {result:?}"));
        }
    }
    let stats = h.engine.stats();
    let ended = stats.done + stats.failed + stats.cancelled;
    let done = results.iter().filter(|r| r.is_ok()).count();
    if ended != ids.len() || stats.done != done {
        return TestResult::error(format!("stats {stats:?} for {} jobs", ids.len()));
    }
    TestResult::passed()
}

#[test]
fn any_mix_of_jobs_limits_duplicates_dependencies_and_faults_ends_consistently() {
    QuickCheck::new()
        .tests(300)
        .max_tests(300)
        .rng(Gen::new(20))
        .quickcheck(
            any_mix_of_jobs_ends_consistently
                as fn(Vec<MixJob>, Vec<u8>, u64, Option<(u8, u8)>, bool) -> TestResult,
        );
}

#[test]
fn a_206_of_unknown_complete_length_to_the_probe_is_the_whole_file_on_one_connection() {
    let body = pattern(60_000, 77);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        let range = format!("bytes 0-{}/*", b.len() - 1);
        Reply::new(with_length(
            206,
            &[hdr("Content-Range", range), hdr("ETag", ETAG)],
            &b,
        ))
    });
    let job = h.submit(segmented(4, 10_000).sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("the one answer holds the file");
    assert_committed(&h, &body);
    assert_eq!(
        h.requests.len(),
        1,
        "no retry, no segment: the length was never vouched for"
    );
}

#[test]
fn an_after_index_naming_no_earlier_download_of_the_batch_is_an_invalid_request() {
    let mut h = Harness::new(config());
    fast_server(&mut h, 3_000);
    let d = |name: &str| {
        Download::new(&format!("http://a.test/{name}"), format!("/dl/{name}")).unwrap()
    };
    let batch = vec![
        d("a"),
        d("b").after_index(5),
        d("c").after_index(2),
        d("e").after_index(0),
    ];
    let ids = h.engine.submit_batch(h.now, batch);
    h.drain();
    for (n, index) in [(1, 5), (2, 2)] {
        match h.finished(ids[n]) {
            Some((_, Err(DownloadError::InvalidRequest(why)))) => {
                assert!(why.contains(&format!("after_index({index})")), "{why}")
            }
            other => panic!("download {n}: expected InvalidRequest, got {other:?}"),
        }
    }
    h.run(ids[3])
        .expect("a valid after_index still waits and runs");
    h.run(ids[0]).expect("the first download");
}

#[test]
fn a_rate_limited_read_takes_no_more_than_the_tokens_so_a_small_file_cannot_outrun_the_limit() {
    // 300 000 bytes at 20 000 B/s with one second of burst: 14 s, less at most one smallest
    // read past the tokens (an eighth of a second), although the server sends the whole file at once
    // (one read used to take it all, far past the tokens: 0.1 s).
    const RATE: u64 = 20_000;
    let body = pattern(300_000, 79);
    let mut cfg = config();
    cfg.rate_limit = Some(RATE);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, crate::engine_tests::file_server(body.clone()));
    let job = h.submit(download());
    h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    let took = h.finished_at(job).saturating_since(Instant::ZERO);
    assert!(
        took >= Duration::from_millis(13_500),
        "300 kB at 20 kB/s took {took:?}"
    );
    assert!(took <= secs(15), "and not much longer: {took:?}");
    for (_, op) in &h.ops {
        if let IoOp::Recv { max, .. } = op {
            assert!(*max <= 2 * RATE as usize, "a read may take {max} bytes");
        }
    }
}

/// `jobs` downloads of `size` bytes at once (each its own connection) under one global
/// limit of `rate`, run to the end.
fn downloads_under_a_global_limit(
    rate: u64,
    jobs: usize,
    size: usize,
    seed: u8,
) -> (Harness, Vec<JobId>) {
    let mut cfg = config();
    cfg.rate_limit = Some(rate);
    cfg.max_active_jobs = jobs;
    cfg.max_connections_per_origin = jobs;
    let mut h = Harness::new(cfg);
    let body = pattern(size, seed);
    h.serve(ORIGIN, crate::engine_tests::file_server(body));
    let ids: Vec<JobId> = (0..jobs)
        .map(|i| {
            h.submit(Download::new(&format!("{ORIGIN}/f{i}.bin"), format!("/dl/f{i}.bin")).unwrap())
        })
        .collect();
    for id in &ids {
        h.run(*id).expect("downloaded");
    }
    (h, ids)
}

/// When each read was asked for, and how many bytes it might take.
fn reads_of(h: &Harness) -> Vec<(Instant, usize)> {
    h.ops
        .iter()
        .filter_map(|(at, op)| match op {
            IoOp::Recv { max, .. } => Some((*at, *max)),
            _ => None,
        })
        .collect()
}

/// The bytes the reads issued at t = 0 might take, together.
fn asked_at_start(h: &Harness) -> usize {
    reads_of(h)
        .iter()
        .filter(|(at, _)| *at == Instant::ZERO)
        .map(|(_, max)| max)
        .sum()
}

/// When the last of `ids` finished, from t = 0.
fn last_finished(h: &Harness, ids: &[JobId]) -> Duration {
    ids.iter()
        .map(|id| h.finished_at(*id))
        .max()
        .expect("jobs")
        .saturating_since(Instant::ZERO)
}

/// Sixteen downloads under one global limit share its one-second allowance from the start:
/// the reads issued together at t = 0 (every connection's first, before any byte of them is
/// counted) ask for a share each, not the whole allowance each (the start burst was sixteen
/// seconds of the limit: every file at once, then nothing for seconds).
#[test]
fn reads_issued_together_share_the_global_allowance() {
    const RATE: u64 = 200_000;
    const JOBS: usize = 16;
    let (h, ids) = downloads_under_a_global_limit(RATE, JOBS, 100_000, 80);
    let first_reads = asked_at_start(&h);
    // The allowance, and at most about one smallest read more per connection for
    // the reads that follow at once.
    assert!(
        first_reads <= 2 * RATE as usize,
        "the reads at t = 0 asked for {first_reads} bytes"
    );
    // 1.6 MB at 200 kB/s with one second of burst: at least 7 s.
    let last = last_finished(&h, &ids);
    assert!(last >= Duration::from_millis(6_500), "took {last:?}");
}

/// A pause and resume while a start-over (on one URL, after an assembled download failed
/// verification) waits for its executor digest starts no new attempt, and leaves nothing
/// behind that would send the retry after a second failure back to the URL that served
/// the wrong bytes: the mirror's bytes are committed.
#[test]
fn a_pause_while_a_start_over_waits_for_its_digest_leaves_the_retry_to_the_good_mirror() {
    for paused in [false, true] {
        let body = pattern(100_000, 21);
        let other = pattern(100_000, 99);
        let mut cfg = config();
        cfg.unnamed_max = u64::MAX;
        cfg.executor_digests = true;
        cfg.retry.max_attempts = 3;
        let mut h = Harness::new(cfg);
        let o = other.clone();
        h.serve(ORIGIN, move |req| head_first(serve_range(&o, req), 4096));
        let b = body.clone();
        h.serve(SEG_MIRROR, move |req| {
            head_first(serve_range(&b, req), 4096)
        });
        let seen = Rc::new(Cell::new(0usize));
        let s = seen.clone();
        h.hold = Some(Box::new(move |op| {
            if matches!(op, IoOp::Digest { .. }) {
                s.set(s.get() + 1);
                if s.get() == 2 {
                    return Some(at(secs(1000)));
                }
            }
            None
        }));
        let d = segmented(4, 25_000)
            .mirror(SEG_MIRROR_URL)
            .unwrap()
            .sha256(&sha_hex(&body))
            .unwrap();
        let job = h.submit(d);
        h.run_until("the start-over's digest is asked for", |h| {
            h.count_ops(|op| matches!(op, IoOp::Digest { .. })) >= 2
        });
        if paused {
            pause(&mut h, job);
            resume(&mut h, job);
        }
        let out = h.run(job);
        let retries = h.retries(job);
        assert!(
            out.is_ok(),
            "paused={paused}: {out:?}; retries {retries:?}; events {:?}",
            h.events_of(job)
        );
    }
}

/// Nodes behind one URL that serve other bytes under one ETag (a segment from offset 0
/// comes from the right file, later ones from another): the segments fit together by
/// validator, range and length, and the file fails its sha256. The one retry from zero then
/// keeps to one connection, which gets the right file whole; it used to split again and
/// fail the same way.
#[test]
fn a_split_download_that_fails_its_sha256_retries_over_one_connection() {
    let good = pattern(400_000, 71);
    let other = pattern(400_000, 72);
    let mut h = Harness::new(config());
    let (g, o) = (good.clone(), other.clone());
    h.serve(ORIGIN, move |req| {
        let from_zero = range_of(req).is_none_or(|(first, _)| first == 0);
        let body = if from_zero { &g } else { &o };
        head_first(serve_range(body, req), 16 * 1024)
    });
    let job = h.submit(segmented(4, 64 * 1024).sha256(&sha_hex(&good)).unwrap());
    let out = h
        .run(job)
        .expect("the retry over one connection gets the right file");
    assert_committed(&h, &good);
    assert_eq!(out.attempts, 2);
    let reasons = single_connection_reasons(&h, job);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("verification"), "{reasons:?}");
}

/// A connection freed by a small job's finished segment goes to that job's next segment
/// before the extra segments of a big job submitted earlier: a job none of whose
/// transfers has a connection comes first within its class. The freed connection went to
/// the big job, and the small one waited for the big one's end (small files of a list sat
/// still for a minute behind four split 200 MB files).
#[test]
fn a_job_with_no_connection_comes_before_another_job_s_extra_segments() {
    let mut cfg = config();
    cfg.max_connections_per_origin = 4;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, move |req| {
        let len = if req.path.contains("big") {
            4 << 20
        } else {
            256 << 10
        };
        let body = pattern(len, req.path.len() as u8);
        Reply::new(serve_range(&body, req))
            .pieces(&[16 * 1024])
            .gap(millis(25))
    });
    let seg = |d: Download| d.segments(4).min_segment(64 * 1024);
    let big = h.submit(seg(job_at("big")));
    let small = h.submit(seg(job_at("small")));
    h.run(small).expect("the small job");
    h.run(big).expect("the big job");
    assert!(
        h.finished_at(small) < h.finished_at(big),
        "small at {}, big at {}",
        h.finished_at(small),
        h.finished_at(big)
    );
}

/// A segmented partial of an earlier run whose file changed since: its segments' ranges,
/// asked `If-Range`, are answered with the new file whole (200, another ETag). The first
/// such answer starts the download over at once, without a failed attempt and a backoff (it
/// was taken for a server that ignores ranges: a retry after a backoff).
#[test]
fn a_split_resume_of_a_changed_file_takes_the_whole_new_file_at_once() {
    let old = pattern(400_000, 81);
    let new = pattern(400_000, 82);
    let mut h = Harness::new(config());
    // Two segments' worth held: the start, and a range further on.
    let mut partial = old.clone();
    partial.truncate(300_000);
    h.fs.put(part(), &partial);
    let mut saved = crate::engine_tests::valid_state(&old, 100_000);
    saved.ranges = vec![(200_000, 300_000)];
    h.fs.put(state(), &saved.encode());
    let n = new.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[hdr("ETag", "\"new\"")], &n))
            .pieces(&[16 * 1024])
            .gap(millis(5))
    });
    let job = h.submit(segmented(4, 64 * 1024));
    let out = h.run(job).expect("the new file");
    assert_eq!(h.fs.get(dest()), Some(&new[..]));
    assert_eq!(out.attempts, 1, "no failed attempt: {:?}", h.retries(job));
    assert_eq!(out.resumed_from, 0);
}

/// Small files listed after a large split one, with slots for two downloads at once: the
/// connection each small file frees is kept for the next one in the queue (which starts
/// once the first commits, moments later), not taken by the large file's waiting extra
/// segment, so every small file finishes long before the large one (they waited for it:
/// the large file took each freed connection, and the next small file found none).
#[test]
fn a_connection_freed_while_downloads_wait_in_the_queue_is_kept_for_them() {
    let mut cfg = config();
    cfg.max_connections_per_origin = 4;
    cfg.max_active_jobs = 2;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, move |req| {
        let len = if req.path.contains("big") {
            4 << 20
        } else {
            16 << 10
        };
        let body = pattern(len, req.path.len() as u8);
        Reply::new(serve_range(&body, req))
            .pieces(&[16 * 1024])
            .gap(millis(25))
    });
    let big = h.submit(job_at("big").segments(4).min_segment(64 * 1024));
    let small: Vec<JobId> = (0..4)
        .map(|i| h.submit(job_at(&format!("small{i}"))))
        .collect();
    h.run(big).expect("the big job");
    for &s in &small {
        h.run(s).expect("a small job");
        assert!(
            h.finished_at(s) + secs(1) < h.finished_at(big),
            "small at {}, big at {}",
            h.finished_at(s),
            h.finished_at(big)
        );
    }
}

/// At a very low global limit over a few connections, no read goes far past the limit's
/// one-second allowance: every read's smallest size was 8 KiB, 8 s of a 1 KB/s limit at
/// once (32 s over four connections, then nothing for half a minute).
#[test]
fn a_very_low_limit_reads_about_its_one_second_allowance_at_once_not_seconds_of_it() {
    const RATE: u64 = 1_000;
    const JOBS: usize = 4;
    let (h, ids) = downloads_under_a_global_limit(RATE, JOBS, 3_000, 81);
    let reads = reads_of(&h);
    let at_start = asked_at_start(&h);
    assert!(
        at_start <= 2 * RATE as usize,
        "the reads at t = 0 asked for {at_start} bytes"
    );
    let largest = reads.iter().map(|(_, max)| *max).max().unwrap();
    assert!(largest <= RATE as usize, "a read asked for {largest} bytes");
    // 12 kB at 1 kB/s with one second of burst.
    let last = last_finished(&h, &ids);
    assert!(last >= secs(10), "took {last:?}");
}
