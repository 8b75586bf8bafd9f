//! Scenarios, each generic over the runtime. Every one names the behaviour it pins.

use std::time::Duration;

use haul_core::{Download, DownloadError, ErrorClass, Event, TimeoutKind};
use haul_origin::{Behavior, Origin};
use tempfile::TempDir;

use crate::{body, fast_config, listing, sha256_hex, with_suffix, BatchRuntime, Runtime};

/// The delay of every `Retrying` event, in order.
fn retry_delays(events: &[Event]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Retrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect()
}

fn setup(path: &str, data: &[u8], behavior: Behavior) -> (Origin, TempDir) {
    let origin = Origin::start().expect("origin starts");
    origin.route(path, data.to_vec(), behavior);
    (origin, TempDir::new().expect("temp dir"))
}

pub fn plain_download_commits_exact_bytes<R: Runtime>() {
    let data = body(1, 3 * 1024 * 1024 + 17);
    let (origin, dir) = setup("/f.bin", &data, Behavior::Normal);
    let dest = dir.path().join("f.bin");
    let rt = R::with_config(fast_config());
    let mut ev = Vec::new();
    let out = rt
        .download(
            Download::new(&origin.url("/f.bin"), &dest).unwrap(),
            &mut ev,
        )
        .expect("download succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.size, data.len() as u64);
    assert_eq!(out.sha256_hex(), sha256_hex(&data));
    assert_eq!(
        listing(dir.path()),
        vec!["f.bin"],
        "no partial or state left"
    );
    let req = &origin.requests_to("/f.bin")[0];
    assert_eq!(req.header("accept-encoding"), Some("identity"));
    assert!(req.header("range").is_none());
    let progress: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Progress { bytes, .. } => Some(*bytes),
            _ => None,
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "progress is monotonic"
    );
    assert_eq!(progress.last(), Some(&(data.len() as u64)));
}

pub fn sha256_match_commits<R: Runtime>() {
    let data = body(2, 100_000);
    let (origin, dir) = setup("/f", &data, Behavior::Normal);
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data).to_uppercase())
        .unwrap();
    R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .expect("matching hash commits");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

pub fn sha256_mismatch_leaves_nothing_at_destination<R: Runtime>() {
    let data = body(3, 200_000);
    let (origin, dir) = setup("/f", &data, Behavior::Normal);
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .sha256(&"00".repeat(32))
        .unwrap();
    let err = R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, DownloadError::HashMismatch { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Verification);
    // One failure of a list says which download it is.
    let message = err.to_string();
    assert!(message.contains(&origin.url("/f")), "{message}");
    assert!(message.contains(&dest.display().to_string()), "{message}");
    assert!(
        listing(dir.path()).is_empty(),
        "left: {:?}",
        listing(dir.path())
    );
    let requests = origin.requests_to("/f");
    assert_eq!(requests.len(), 2, "a hash mismatch is retried once");
    assert_eq!(requests[1].header("range"), None, "from zero");
}

pub fn wrong_expected_size_fails_before_commit<R: Runtime>() {
    let data = body(4, 50_000);
    let (origin, dir) = setup("/f", &data, Behavior::Normal);
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .size(49_999);
    let err = R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        DownloadError::SizeMismatch {
            url: origin.url("/f"),
            path: dest,
            expected: 49_999,
            actual: 50_000,
            at_least: false
        }
    );
    assert!(listing(dir.path()).is_empty());
}

pub fn max_size_guard_stops_a_server_that_sends_more<R: Runtime>() {
    let data = body(5, 10_000);
    let (origin, dir) = setup(
        "/f",
        &data,
        Behavior::Endless {
            extra: 50 * 1024 * 1024,
        },
    );
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .max_size(64 * 1024);
    let err = R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap_err();
    match err {
        DownloadError::TooLarge {
            url,
            path,
            limit,
            seen,
        } => {
            assert_eq!((url, path), (origin.url("/f"), dest));
            assert_eq!(limit, 64 * 1024);
            assert!(
                seen > limit && seen < 64 * 1024 + 1024 * 1024,
                "stopped early: {seen}"
            );
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(listing(dir.path()).is_empty());
}

pub fn chunked_response_is_decoded<R: Runtime>() {
    let data = body(6, 700_001);
    let (origin, dir) = setup("/c", &data, Behavior::Chunked { chunk: 4093 });
    let dest = dir.path().join("out");
    let out = R::with_config(fast_config())
        .download(
            Download::new(&origin.url("/c"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.size, data.len() as u64);
}

pub fn close_delimited_response_is_complete_at_close<R: Runtime>() {
    let data = body(7, 300_000);
    let (origin, dir) = setup("/c", &data, Behavior::CloseDelimited);
    let dest = dir.path().join("out");
    R::with_config(fast_config())
        .download(
            Download::new(&origin.url("/c"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

pub fn redirect_chain_is_followed<R: Runtime>() {
    let data = body(8, 10_000);
    let (origin, dir) = setup("/final", &data, Behavior::Normal);
    let redirect = |status: u16, to: &str| Behavior::Redirect {
        status,
        location: to.into(),
    };
    origin.route("/a", Vec::new(), redirect(301, "/b"));
    origin.route("/b", Vec::new(), redirect(302, "c")); // relative to /b
    origin.route("/c", Vec::new(), redirect(307, &origin.url("/d"))); // absolute
    origin.route("/d", Vec::new(), redirect(308, "/final"));
    let dest = dir.path().join("out");
    let mut ev = Vec::new();
    let out = R::with_config(fast_config())
        .download(Download::new(&origin.url("/a"), &dest).unwrap(), &mut ev)
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(out.final_url.ends_with("/final"));
    let hops = ev
        .iter()
        .filter(|e| matches!(e, Event::Redirected { .. }))
        .count();
    assert_eq!(hops, 4);
}

pub fn redirect_loop_is_an_error<R: Runtime>() {
    let (origin, dir) = setup(
        "/a",
        b"",
        Behavior::Redirect {
            status: 302,
            location: "/b".into(),
        },
    );
    origin.route(
        "/b",
        Vec::new(),
        Behavior::Redirect {
            status: 302,
            location: "/a".into(),
        },
    );
    let dest = dir.path().join("out");
    let err = R::with_config(fast_config())
        .download(
            Download::new(&origin.url("/a"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, DownloadError::RedirectLoop { .. }), "{err}");
    assert!(!err.retryable());
    assert!(listing(dir.path()).is_empty());
}

pub fn authorization_is_not_forwarded_to_another_origin<R: Runtime>() {
    let data = body(9, 1000);
    let other = Origin::start().unwrap();
    other.route("/x", data.clone(), Behavior::Normal);
    let (origin, dir) = setup(
        "/start",
        b"",
        Behavior::Redirect {
            status: 302,
            location: other.url("/x"),
        },
    );
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/start"), &dest)
        .unwrap()
        .header("Authorization", "Bearer secret")
        .header("Cookie", "session=1")
        .header("X-Trace", "kept");
    R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let first = &origin.requests_to("/start")[0];
    assert_eq!(first.header("authorization"), Some("Bearer secret"));
    let second = &other.requests_to("/x")[0];
    assert_eq!(second.header("authorization"), None, "credential leaked");
    assert_eq!(second.header("cookie"), None, "cookie leaked");
    assert_eq!(second.header("x-trace"), Some("kept"));
}

pub fn authorization_is_kept_on_same_origin_redirect<R: Runtime>() {
    let data = body(10, 1000);
    let (origin, dir) = setup(
        "/private",
        &data,
        Behavior::RequireAuth {
            expected: "Bearer secret".into(),
        },
    );
    origin.route(
        "/start",
        Vec::new(),
        Behavior::Redirect {
            status: 302,
            location: "/private".into(),
        },
    );
    let dest = dir.path().join("out");
    let d = Download::new(&origin.url("/start"), &dest)
        .unwrap()
        .header("Authorization", "Bearer secret");
    R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

pub fn interrupted_download_resumes_with_range_in_a_new_run<R: Runtime>() {
    let data = body(11, 2 * 1024 * 1024);
    let cut = 700_000u64;
    let (origin, dir) = setup("/big", &data, Behavior::Truncate { after: cut });
    let dest = dir.path().join("big");
    let mut cfg = fast_config();
    cfg.retry.max_attempts = 1;
    let err = R::with_config(cfg.clone())
        .download(
            Download::new(&origin.url("/big"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, DownloadError::Protocol { .. }), "{err}");
    assert!(!dest.exists());
    assert!(
        with_suffix(&dest, ".haul-part").exists(),
        "partial kept for resume"
    );
    assert!(
        with_suffix(&dest, ".haul-state").exists(),
        "state kept for resume"
    );

    // The server recovers; a new run (new client, as after a restart) resumes.
    origin.route("/big", data.clone(), Behavior::Normal);
    origin.clear_requests();
    let mut ev = Vec::new();
    let out = R::with_config(cfg)
        .download(Download::new(&origin.url("/big"), &dest).unwrap(), &mut ev)
        .expect("resume succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.resumed_from, cut);
    assert_eq!(
        out.bytes_fetched,
        data.len() as u64 - cut,
        "no byte fetched twice"
    );
    let reqs = origin.requests_to("/big");
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("range"),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(reqs[0].header("if-range"), origin.etag("/big").as_deref());
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Resuming { offset, .. } if *offset == cut)));
    assert_eq!(listing(dir.path()), vec!["big"]);
}

pub fn small_downloads_are_named_only_at_their_destination<R: Runtime>() {
    let data = body(40, 64 * 1024);
    let (origin, dir) = setup("/s.bin", &data, Behavior::Normal);
    // One destination new, one replacing an older file.
    let fresh = dir.path().join("fresh.bin");
    let old = dir.path().join("old.bin");
    std::fs::write(&old, b"an older version").unwrap();
    let rt = R::with_config(fast_config());
    for dest in [&fresh, &old] {
        let out = rt
            .download(
                Download::new(&origin.url("/s.bin"), dest)
                    .unwrap()
                    .sha256(&sha256_hex(&data))
                    .unwrap(),
                &mut Vec::new(),
            )
            .expect("download succeeds");
        assert_eq!(std::fs::read(dest).unwrap(), data);
        assert_eq!(out.size, data.len() as u64);
    }
    assert_eq!(
        listing(dir.path()),
        vec!["fresh.bin", "old.bin"],
        "no partial or state left"
    );
}

/// A destination whose parent is a regular file: the open fails (on a worker, where the
/// engine may already have queued writes behind it); every size of file ends the download
/// with a local I/O error naming the path, instead of waiting for completions that never
/// came.
pub fn a_destination_under_a_regular_file_fails_at_once_with_local_io<R: Runtime>() {
    for len in [200_000, 3 * 1024 * 1024] {
        let data = body(13, len);
        let (origin, dir) = setup("/f", &data, Behavior::Normal);
        std::fs::write(dir.path().join("afile"), b"x").unwrap();
        let dest = dir.path().join("afile").join("x");
        let (tx, rx) = std::sync::mpsc::channel();
        let url = origin.url("/f");
        let dest2 = dest.clone();
        std::thread::spawn(move || {
            let result = R::with_config(fast_config())
                .download(Download::new(&url, &dest2).unwrap(), &mut Vec::new());
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("a {len}-byte download under a file never ended"));
        match result {
            Err(DownloadError::LocalIo { .. }) => {}
            other => panic!("{len} bytes: expected LocalIo, got {other:?}"),
        }
        assert_eq!(std::fs::read(dir.path().join("afile")).unwrap(), b"x");
    }
}

/// A file destination that is an existing directory (or a FIFO) is refused when the
/// download is submitted: no request is made, the directory and what it holds are untouched,
/// and nothing is left beside it (found only at the commit, the whole file was fetched for
/// nothing).
pub fn a_destination_that_is_a_directory_is_refused_before_any_request<R: Runtime>() {
    let data = body(14, 300_000);
    let (origin, dir) = setup("/f", &data, Behavior::Normal);
    let dest = dir.path().join("sub");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("kept"), b"k").unwrap();
    let fifo = dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, what) in [(&dest, "a directory"), (&fifo, "not a regular file")] {
        let result = R::with_config(fast_config()).download(
            Download::new(&origin.url("/f"), path).unwrap(),
            &mut Vec::new(),
        );
        match result {
            Err(e @ DownloadError::LocalIo { .. }) => {
                assert!(e.to_string().contains(what), "{what}: {e}");
                assert_eq!(e.class(), ErrorClass::LocalIo);
            }
            other => panic!("{}: expected LocalIo, got {other:?}", path.display()),
        }
    }
    assert!(origin.requests_to("/f").is_empty(), "no request was made");
    assert_eq!(listing(dir.path()), vec!["pipe", "sub"]);
    assert_eq!(listing(&dest), vec!["kept"]);
}

pub fn server_ignoring_range_yields_a_correct_file<R: Runtime>() {
    let data = body(12, 1024 * 1024);
    let (origin, dir) = setup("/f", &data, Behavior::Truncate { after: 300_000 });
    let dest = dir.path().join("f");
    let mut cfg = fast_config();
    // A named partial, kept for the next run (small files are unnamed by default).
    cfg.unnamed_max = 0;
    cfg.retry.max_attempts = 1;
    R::with_config(cfg.clone())
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    origin.route("/f", data.clone(), Behavior::IgnoreRange);
    origin.clear_requests();
    let out = R::with_config(cfg)
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        data,
        "never appended to the partial"
    );
    assert_eq!(out.resumed_from, 0);
    assert!(origin.requests_to("/f")[0].header("range").is_some());
}

pub fn truncated_body_is_an_error_not_a_success<R: Runtime>() {
    let data = body(13, 500_000);
    let (origin, dir) = setup("/f", &data, Behavior::Truncate { after: 123_456 });
    let dest = dir.path().join("f");
    let mut cfg = fast_config();
    cfg.retry.max_attempts = 1;
    let err = R::with_config(cfg)
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Protocol { .. } | DownloadError::Connection { .. }
        ),
        "{err}"
    );
    assert!(err.retryable());
    assert!(!dest.exists(), "a truncated body is never committed");
}

pub fn truncated_body_is_resumed_by_retries<R: Runtime>() {
    let data = body(14, 1_000_000);
    let (origin, dir) = setup("/f", &data, Behavior::Truncate { after: 300_000 });
    let dest = dir.path().join("f");
    let out = R::with_config(fast_config())
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.attempts, 4);
    assert_eq!(out.bytes_fetched, data.len() as u64);
    let ranges: Vec<Option<String>> = origin
        .requests_to("/f")
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some("bytes=300000-".into()),
            Some("bytes=600000-".into()),
            Some("bytes=900000-".into())
        ]
    );
}

pub fn stalled_server_trips_the_idle_timeout<R: Runtime>() {
    let data = body(15, 400_000);
    let (origin, dir) = setup("/f", &data, Behavior::Stall { after: 100_000 });
    let dest = dir.path().join("f");
    let mut cfg = fast_config();
    // A named partial, kept for the next run (small files are unnamed by default).
    cfg.unnamed_max = 0;
    cfg.idle_timeout = Duration::from_millis(300);
    cfg.retry.max_attempts = 1;
    let started = std::time::Instant::now();
    let err = R::with_config(cfg)
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Timeout {
                kind: TimeoutKind::Idle,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stall was caught"
    );
    assert!(!dest.exists());
    assert!(
        with_suffix(&dest, ".haul-part").exists(),
        "resumable partial kept"
    );
}

pub fn not_found_is_a_status_error_without_retries<R: Runtime>() {
    let (origin, dir) = setup(
        "/missing",
        b"",
        Behavior::Status {
            status: 404,
            retry_after: None,
        },
    );
    let dest = dir.path().join("f");
    let err = R::with_config(fast_config())
        .download(
            Download::new(&origin.url("/missing"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::HttpStatus);
    assert_eq!(origin.requests_to("/missing").len(), 1);
    assert!(listing(dir.path()).is_empty());
}

pub fn origin_that_fails_then_recovers_is_retried<R: Runtime>() {
    let data = body(16, 64_000);
    let (origin, dir) = setup(
        "/f",
        &data,
        Behavior::FailTimes {
            times: 2,
            status: 503,
        },
    );
    let dest = dir.path().join("f");
    let mut ev = Vec::new();
    let out = R::with_config(fast_config())
        .download(Download::new(&origin.url("/f"), &dest).unwrap(), &mut ev)
        .unwrap();
    assert_eq!(out.attempts, 3);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let delays: Vec<Duration> = retry_delays(&ev);
    assert_eq!(delays.len(), 2);
}

pub fn changed_representation_between_runs_restarts_from_zero<R: Runtime>() {
    let old = body(17, 800_000);
    let new = body(18, 900_000);
    let (origin, dir) = setup("/f", &old, Behavior::Truncate { after: 400_000 });
    let dest = dir.path().join("f");
    let mut cfg = fast_config();
    // A named partial, kept for the next run (small files are unnamed by default).
    cfg.unnamed_max = 0;
    cfg.retry.max_attempts = 1;
    R::with_config(cfg.clone())
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    origin.route("/f", new.clone(), Behavior::Normal);
    origin.clear_requests();
    let out = R::with_config(cfg)
        .download(
            Download::new(&origin.url("/f"), &dest).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        new,
        "no splice of two versions"
    );
    let reqs = origin.requests_to("/f");
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("range"),
        Some("bytes=400000-"),
        "resume attempted"
    );
    assert_eq!(out.resumed_from, 0, "the server's 200 restarted the file");
    assert_eq!(out.bytes_fetched, new.len() as u64);
}

pub fn sequential_downloads_reuse_one_connection<R: Runtime>() {
    let a = body(19, 100_000);
    let b = body(20, 100_000);
    let (origin, dir) = setup("/a", &a, Behavior::Normal);
    origin.route("/b", b.clone(), Behavior::Normal);
    let rt = R::with_config(fast_config());
    rt.download(
        Download::new(&origin.url("/a"), dir.path().join("a")).unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    rt.download(
        Download::new(&origin.url("/b"), dir.path().join("b")).unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    let reqs = origin.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].connection_id, reqs[1].connection_id,
        "keep-alive reuse"
    );
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b);
}

/// A server that sends, on a keep-alive connection left idle, bytes no request asked for
/// (an answer ahead of any request; a `408` before it closes is the common case): the next
/// download over that connection took them for its response and saved them as its file. It
/// goes on a new connection instead.
pub fn input_on_an_idle_connection_is_not_taken_for_the_next_response<R: Runtime>() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while let Ok(1) = stream.read(&mut byte) {
                    head.push(byte[0]);
                    if !head.ends_with(b"\r\n\r\n") {
                        continue;
                    }
                    let request = String::from_utf8_lossy(&head).into_owned();
                    head.clear();
                    let answer: &[u8] = if request.starts_with("GET /a ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nworld!"
                    };
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                    if request.starts_with("GET /a ") {
                        // Then, unasked, another answer while the connection is idle.
                        std::thread::sleep(Duration::from_millis(50));
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nEVIL!\n");
                    }
                }
            });
        }
    });
    let dir = TempDir::new().unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let rt = R::with_config(fast_config());
    rt.download(
        Download::new(&url("/a"), dir.path().join("a")).unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    // The unasked answer has arrived by now.
    std::thread::sleep(Duration::from_millis(300));
    rt.download(
        Download::new(&url("/b"), dir.path().join("b")).unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"world!");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a new connection for /b"
    );
}

pub fn content_disposition_names_the_file_in_a_directory<R: Runtime>() {
    let data = body(21, 5000);
    let (origin, dir) = setup(
        "/download",
        &data,
        Behavior::Attachment {
            filename: "report.pdf".into(),
        },
    );
    let out = R::with_config(fast_config())
        .download(
            Download::into_dir(&origin.url("/download?id=7"), dir.path()).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(out.path, dir.path().join("report.pdf"));
    assert_eq!(std::fs::read(&out.path).unwrap(), data);
    assert_eq!(listing(dir.path()), vec!["report.pdf"]);
}

// ------------------------------------------------------------------ many downloads at once

pub fn priority_order_is_respected_when_slots_are_scarce<R: BatchRuntime>() {
    use haul_core::Priority::*;
    let origin = Origin::start().unwrap();
    let dir = TempDir::new().unwrap();
    let classes = [Background, Low, Normal, High, Critical, Normal];
    let mut ds = Vec::new();
    for (i, p) in classes.iter().enumerate() {
        let path = format!("/p{i}");
        origin.route(&path, body(100 + i as u64, 20_000), Behavior::Normal);
        ds.push(
            Download::new(&origin.url(&path), dir.path().join(format!("p{i}")))
                .unwrap()
                .priority(*p),
        );
    }
    let mut cfg = fast_config();
    cfg.max_active_jobs = 1;
    let results = R::with_config(cfg).download_many(ds, &mut Vec::new());
    assert!(results.iter().all(|r| r.is_ok()));
    let order: Vec<String> = origin.requests().iter().map(|r| r.path.clone()).collect();
    // Critical, High, then the two Normals in submission order, Low, Background.
    assert_eq!(order, vec!["/p4", "/p3", "/p2", "/p5", "/p1", "/p0"]);
}

/// A long batch of one class keeps its order (a runtime may hand it over in parts); one
/// more urgent download at its end still goes first (such a batch is taken whole).
pub fn a_long_batch_keeps_its_order_and_an_urgent_download_at_its_end_goes_first<
    R: BatchRuntime,
>() {
    let origin = Origin::start().unwrap();
    let dir = TempDir::new().unwrap();
    let n = 150;
    let downloads = |urgent: bool| -> Vec<Download> {
        (0..n)
            .map(|i| {
                let path = format!("/l{i}");
                let d = Download::new(&origin.url(&path), dir.path().join(format!("l{i}")))
                    .unwrap()
                    .sha256(&sha256_hex(&body(200 + i, 2_000)))
                    .unwrap();
                match urgent && i == n - 1 {
                    true => d.priority(haul_core::Priority::High),
                    false => d,
                }
            })
            .collect()
    };
    for i in 0..n {
        origin.route(&format!("/l{i}"), body(200 + i, 2_000), Behavior::Normal);
    }
    let mut cfg = fast_config();
    cfg.max_active_jobs = 1;
    let results = R::with_config(cfg.clone()).download_many(downloads(false), &mut Vec::new());
    for (i, result) in results.iter().enumerate() {
        let outcome = result.as_ref().expect("downloaded");
        assert_eq!(
            outcome.path,
            dir.path().join(format!("l{i}")),
            "result {i} in order"
        );
    }
    let order: Vec<String> = origin.requests().iter().map(|r| r.path.clone()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("/l{i}")).collect();
    assert_eq!(order, want, "requested in submission order");

    for i in 0..n {
        std::fs::remove_file(dir.path().join(format!("l{i}"))).unwrap();
    }
    let before = origin.requests().len();
    let results = R::with_config(cfg).download_many(downloads(true), &mut Vec::new());
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let first = &origin.requests()[before];
    assert_eq!(first.path, format!("/l{}", n - 1), "the urgent one first");
}

pub fn dependent_job_waits_for_its_dependency<R: BatchRuntime>() {
    let (origin, dir) = setup(
        "/base",
        &body(30, 50_000),
        Behavior::Trickle {
            bytes_per_sec: 500_000,
        },
    );
    origin.route("/addon", body(31, 1000), Behavior::Normal);
    let ds = vec![
        Download::new(&origin.url("/base"), dir.path().join("base")).unwrap(),
        Download::new(&origin.url("/addon"), dir.path().join("addon"))
            .unwrap()
            .after_index(0),
    ];
    let results = R::with_config(fast_config()).download_many(ds, &mut Vec::new());
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let order: Vec<String> = origin.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(order, vec!["/base", "/addon"], "the dependant waited");
}

pub fn dependent_job_fails_clearly_when_its_dependency_fails<R: BatchRuntime>() {
    let (origin, dir) = setup(
        "/base",
        b"",
        Behavior::Status {
            status: 404,
            retry_after: None,
        },
    );
    origin.route("/addon", body(32, 1000), Behavior::Normal);
    let ds = vec![
        Download::new(&origin.url("/base"), dir.path().join("base")).unwrap(),
        Download::new(&origin.url("/addon"), dir.path().join("addon"))
            .unwrap()
            .after_index(0),
    ];
    let results = R::with_config(fast_config()).download_many(ds, &mut Vec::new());
    assert!(matches!(
        results[0],
        Err(DownloadError::Status { status: 404, .. })
    ));
    match &results[1] {
        Err(e @ DownloadError::DependencyFailed { cause, .. }) => {
            assert_eq!(Err(&**cause), results[0].as_ref(), "it carries why");
            assert!(e.to_string().ends_with("answered HTTP 404"), "{e}");
            assert_eq!(e.class(), haul_core::ErrorClass::HttpStatus);
        }
        other => panic!("expected DependencyFailed, got {other:?}"),
    }
    assert!(
        origin.requests_to("/addon").is_empty(),
        "the dependant never ran"
    );
    assert!(listing(dir.path()).is_empty());
}

pub fn same_url_twice_makes_one_request<R: BatchRuntime>() {
    let data = body(33, 300_000);
    let (origin, dir) = setup("/shared", &data, Behavior::Normal);
    let ds = vec![
        Download::new(&origin.url("/shared"), dir.path().join("one")).unwrap(),
        Download::new(&origin.url("/shared"), dir.path().join("two")).unwrap(),
    ];
    let results = R::with_config(fast_config()).download_many(ds, &mut Vec::new());
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(origin.requests_to("/shared").len(), 1, "deduplicated");
    assert_eq!(std::fs::read(dir.path().join("one")).unwrap(), data);
    assert_eq!(std::fs::read(dir.path().join("two")).unwrap(), data);
    assert_eq!(results[1].as_ref().unwrap().bytes_fetched, 0);
}

pub fn destination_that_already_verifies_is_not_downloaded_again<R: Runtime>() {
    let data = body(34, 100_000);
    let (origin, dir) = setup("/f", &data, Behavior::Normal);
    let dest = dir.path().join("f");
    std::fs::write(&dest, &data).unwrap();
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap();
    let out = R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap();
    assert_eq!(out.bytes_fetched, 0);
    assert!(
        origin.requests().is_empty(),
        "no request for a verified file"
    );
    // Different bytes at the destination are replaced.
    std::fs::write(&dest, b"stale").unwrap();
    let d = Download::new(&origin.url("/f"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap();
    R::with_config(fast_config())
        .download(d, &mut Vec::new())
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

pub fn segmented_download_reassembles_the_exact_bytes<R: Runtime>() {
    let data = body(35, 6 * 1024 * 1024 + 123);
    let (origin, dir) = setup("/big", &data, Behavior::Normal);
    let dest = dir.path().join("big");
    let d = Download::new(&origin.url("/big"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap()
        .segments(4)
        .min_segment(256 * 1024);
    let mut ev = Vec::new();
    let out = R::with_config(fast_config()).download(d, &mut ev).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        out.bytes_fetched,
        data.len() as u64,
        "no byte fetched twice"
    );
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Segmented { segments: 4, .. })));
    let ranges: Vec<String> = origin
        .requests_to("/big")
        .iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    assert!(ranges.len() >= 4, "{ranges:?}");
    assert_eq!(ranges[0], "bytes=0-");
    let connections: std::collections::BTreeSet<u64> = origin
        .requests_to("/big")
        .iter()
        .map(|r| r.connection_id)
        .collect();
    assert!(
        connections.len() >= 4,
        "several connections: {connections:?}"
    );
}

/// A server that caps what one range reply carries (`bytes=0-` answered with the first
/// 100 000 bytes) cannot be split on: a download asked to use segments says so and goes on
/// one connection without Range, getting the exact bytes after one failed attempt (it
/// retried the same capped request until its attempts ran out).
pub fn a_server_capping_range_replies_is_downloaded_on_one_connection<R: Runtime>() {
    let data = body(37, 1024 * 1024 + 5);
    let (origin, dir) = setup("/big", &data, Behavior::CapRange { max: 100_000 });
    let dest = dir.path().join("big");
    let d = Download::new(&origin.url("/big"), &dest)
        .unwrap()
        .segments(8)
        .min_segment(64 * 1024);
    let mut ev = Vec::new();
    let out = R::with_config(fast_config())
        .download(d, &mut ev)
        .expect("the download succeeds on one connection");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.attempts, 2, "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::SingleConnection { .. })),
        "{ev:?}"
    );
    let ranges: Vec<Option<String>> = origin
        .requests_to("/big")
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, vec![Some("bytes=0-".to_string()), None]);
}

pub fn segmented_download_survives_a_segment_connection_dying<R: Runtime>() {
    let data = body(36, 4 * 1024 * 1024);
    // Every response is cut after 700 KB: each 1 MiB segment dies midway and its rest is
    // fetched again from where it stopped.
    let (origin, dir) = setup("/big", &data, Behavior::Truncate { after: 700_000 });
    let dest = dir.path().join("big");
    let d = Download::new(&origin.url("/big"), &dest)
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap()
        .segments(4)
        .min_segment(512 * 1024);
    let mut cfg = fast_config();
    cfg.retry.max_attempts = 10;
    R::with_config(cfg).download(d, &mut Vec::new()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(origin.requests_to("/big").len() > 4);
}

/// Breaker settings on a test's time scale: opens after 3 failures, cools down 400 ms
/// (doubling after a failed probe).
fn breaker_config() -> haul_core::Config {
    let mut c = fast_config();
    c.retry.max_attempts = 10;
    c.breaker.failure_threshold = 3;
    c.breaker.cooldown = Duration::from_millis(400);
    c.breaker.max_cooldown = Duration::from_secs(2);
    c
}

/// An address on 127.0.0.1 where nothing listens (connections are refused).
fn dead_address() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub fn failing_origin_opens_its_breaker_and_a_probe_closes_it_after_recovery<R: Runtime>() {
    let data = body(30, 40_000);
    let (origin, dir) = setup(
        "/f",
        &data,
        Behavior::FailTimes {
            times: 3,
            status: 503,
        },
    );
    origin.route("/g", data.clone(), Behavior::Normal);
    let rt = R::with_config(breaker_config());
    let mut ev = Vec::new();
    let started = std::time::Instant::now();
    let out = rt
        .download(
            Download::new(&origin.url("/f"), dir.path().join("f")).unwrap(),
            &mut ev,
        )
        .unwrap();
    let took = started.elapsed();
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data);
    // Three failures open the breaker; nothing is sent while it is open; the probe after
    // 400 ms succeeds.
    assert_eq!(origin.requests_to("/f").len(), 4);
    assert_eq!(out.attempts, 4);
    assert!(
        took >= Duration::from_millis(400),
        "the breaker's cool-down (400 ms) was not waited: {took:?}"
    );
    // Recovered: the next download goes straight through.
    let mut ev2 = Vec::new();
    let out2 = rt
        .download(
            Download::new(&origin.url("/g"), dir.path().join("g")).unwrap(),
            &mut ev2,
        )
        .unwrap();
    assert_eq!(out2.attempts, 1);
    assert_eq!(origin.requests_to("/g").len(), 1);
}

pub fn an_origin_still_down_after_a_cooldown_ends_its_downloads_after_one_probe<R: Runtime>() {
    // Waiting through doubling cool-downs made a list for a dead host take minutes: a failed
    // probe after the first cool-down now ends the download, and the next one for that
    // origin fails at once with `CircuitOpen`, sending nothing.
    let data = body(33, 20_000);
    let (origin, dir) = setup(
        "/f",
        &data,
        Behavior::FailTimes {
            times: 1000,
            status: 503,
        },
    );
    origin.route("/g", data.clone(), Behavior::Normal);
    let rt = R::with_config(breaker_config());
    let started = std::time::Instant::now();
    let err = rt
        .download(
            Download::new(&origin.url("/f"), dir.path().join("f")).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::Status { status: 503, .. }),
        "{err}"
    );
    // Three failures open the breaker; the probe after its 400 ms cool-down is the fourth
    // request, and it fails too: the breaker reopens for 800 ms, longer than this policy
    // waits (`max_delay` 100 ms; the first cool-down is waited as it is longer).
    assert_eq!(origin.requests_to("/f").len(), 4);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(!dir.path().join("f").exists());
    let err = rt
        .download(
            Download::new(&origin.url("/g"), dir.path().join("g")).unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, DownloadError::CircuitOpen { .. }), "{err}");
    assert!(origin.requests_to("/g").is_empty());
    assert!(!dir.path().join("g").exists());
}

pub fn backoff_delays_grow_exponentially_with_jitter<R: Runtime>() {
    let data = body(32, 10_000);
    let (origin, dir) = setup(
        "/f",
        &data,
        Behavior::FailTimes {
            times: 3,
            status: 500,
        },
    );
    let mut config = fast_config();
    config.retry.base_delay = Duration::from_millis(40);
    config.retry.max_delay = Duration::from_millis(1000);
    let mut ev = Vec::new();
    let started = std::time::Instant::now();
    R::with_config(config)
        .download(
            Download::new(&origin.url("/f"), dir.path().join("f")).unwrap(),
            &mut ev,
        )
        .unwrap();
    let delays: Vec<Duration> = retry_delays(&ev);
    assert_eq!(delays.len(), 3);
    // Equal jitter: attempt n waits between half and all of 40 ms * 2^(n-2).
    for (i, d) in delays.iter().enumerate() {
        let exp = Duration::from_millis(40 << i);
        assert!(
            *d >= exp / 2 && *d <= exp,
            "retry {} waited {d:?}, outside [{:?}, {exp:?}]",
            i + 1,
            exp / 2
        );
    }
    let waited: Duration = delays.iter().sum();
    assert!(started.elapsed() >= waited, "the delays were really waited");
}

pub fn a_mirror_serves_while_the_primary_is_down<R: Runtime>() {
    let data = body(33, 200_000);
    let (mirror, dir) = setup("/pub/f.bin", &data, Behavior::Normal);
    let primary = format!("http://{}/f.bin", dead_address());
    let rt = R::with_config(fast_config());
    let mut ev = Vec::new();
    let dest = dir.path().join("f.bin");
    let d = Download::new(&primary, &dest)
        .unwrap()
        .mirror(&mirror.url("/pub/f.bin"))
        .unwrap()
        .sha256(&sha256_hex(&data))
        .unwrap();
    let out = rt.download(d, &mut ev).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(out.final_url, mirror.url("/pub/f.bin"));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Failover { to, .. } if *to == mirror.url("/pub/f.bin"))),
        "a Failover event names the mirror"
    );
    let delays: Vec<Duration> = retry_delays(&ev);
    assert_eq!(delays, [Duration::ZERO], "failing over does not back off");
    // The dead primary now ranks below the mirror that delivered: the next download with
    // the same URLs goes to the mirror first and fails nothing.
    let mut ev2 = Vec::new();
    let dest2 = dir.path().join("again.bin");
    let d2 = Download::new(&primary, &dest2)
        .unwrap()
        .mirror(&mirror.url("/pub/f.bin"))
        .unwrap();
    rt.download(d2, &mut ev2).unwrap();
    assert_eq!(std::fs::read(&dest2).unwrap(), data);
    assert!(
        !ev2.iter().any(|e| matches!(e, Event::Retrying { .. })),
        "{ev2:?}"
    );
}

pub fn a_mirror_with_other_bytes_is_left_for_one_with_the_right_ones<R: Runtime>() {
    let good = body(34, 120_000);
    let (good_origin, dir) = setup("/f", &good, Behavior::Normal);
    let stale = Origin::start().expect("origin starts");
    stale.route("/f", body(35, 120_000), Behavior::Normal);
    let dest = dir.path().join("f");
    let d = Download::new(&stale.url("/f"), &dest)
        .unwrap()
        .mirror(&good_origin.url("/f"))
        .unwrap()
        .sha256(&sha256_hex(&good))
        .unwrap();
    let mut ev = Vec::new();
    let out = R::with_config(fast_config()).download(d, &mut ev).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    assert_eq!(out.final_url, good_origin.url("/f"));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Retrying {
            error: DownloadError::HashMismatch { .. },
            ..
        }
    )));
    assert!(listing(dir.path()).iter().all(|n| n == "f"));
}
