//! Pins haul-origin's wire behaviour with a hand-written HTTP/1.1 client over a raw
//! std::net::TcpStream, so what is checked is exactly what goes over the socket.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use haul_origin::{Behavior, Origin};
use sha2::{Digest, Sha256};

const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How the response body ended on the wire.
#[derive(Debug, PartialEq, Eq)]
enum BodyEnd {
    /// All announced bytes arrived (or the terminating chunk, or no body at all).
    Complete,
    /// The connection ended (EOF or reset) before the announced length.
    Early,
    /// Close-delimited body ended by the server closing.
    Closed,
}

#[derive(Debug)]
struct RawResponse {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: usize,
    end: BodyEnd,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    fn connect(origin: &Origin) -> RawClient {
        let stream = TcpStream::connect(origin.addr()).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        RawClient {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, method: &str, path: &str, extra_headers: &[(&str, &str)]) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
    }

    fn get(&mut self, path: &str, extra_headers: &[(&str, &str)]) -> RawResponse {
        self.send("GET", path, extra_headers);
        self.read_response(false)
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    fn read_head(&mut self) -> (String, u16, Vec<(String, String)>) {
        let status_line = self.read_line();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        (version, status, headers)
    }

    /// Reads up to `len` bytes, stopping early at EOF or a reset.
    fn read_up_to(&mut self, len: usize) -> (Vec<u8>, bool) {
        let mut body = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.reader.read(&mut body[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
                Err(error) => panic!("reading body: {error}"),
            }
        }
        body.truncate(filled);
        (body, filled == len)
    }

    fn read_to_close(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        match self.reader.read_to_end(&mut body) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
            Err(error) => panic!("reading to close: {error}"),
        }
        body
    }

    fn read_response(&mut self, is_head: bool) -> RawResponse {
        let (version, status, headers) = self.read_head();
        let mut response = RawResponse {
            version,
            status,
            headers,
            body: Vec::new(),
            chunks: 0,
            end: BodyEnd::Complete,
        };
        if is_head {
            return response;
        }
        if let Some(len) = response.header("content-length") {
            let (body, complete) = self.read_up_to(len.parse().unwrap());
            response.body = body;
            if !complete {
                response.end = BodyEnd::Early;
            }
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.read_line(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.read_line(), "", "no trailers expected");
                    break;
                }
                let (chunk, complete) = self.read_up_to(size);
                assert!(complete, "chunk cut short");
                response.body.extend_from_slice(&chunk);
                response.chunks += 1;
                assert_eq!(self.read_line(), "");
            }
        } else {
            response.body = self.read_to_close();
            response.end = BodyEnd::Closed;
        }
        response
    }

    /// True if the server closed the connection (EOF) within the read timeout.
    fn sees_eof(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => true,
            Ok(_) => panic!("unexpected byte after response"),
            Err(error) => panic!("waiting for close: {error}"),
        }
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn expected_etag(body: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(body))[..16])
}

fn origin_with(path: &str, body: &[u8], behavior: Behavior) -> Origin {
    let origin = Origin::start().unwrap();
    origin.route(path, body.to_vec(), behavior);
    origin
}

#[test]
fn normal_get_is_200_with_strong_etag_length_and_validators() {
    let body = content(1000);
    let origin = origin_with("/file.bin", &body, Behavior::Normal);
    let response = RawClient::connect(&origin).get("/file.bin", &[]);
    assert_eq!(response.version, "HTTP/1.1");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("1000"));
    assert_eq!(response.header("etag"), Some(expected_etag(&body).as_str()));
    assert_eq!(origin.etag("/file.bin"), Some(expected_etag(&body)));
    assert_eq!(response.header("accept-ranges"), Some("bytes"));
    let last_modified = response.header("last-modified").unwrap();
    assert!(httpdate::parse_http_date(last_modified).is_ok());
    assert!(response.header("date").is_some());
    assert_eq!(response.body, body);
    assert_eq!(response.end, BodyEnd::Complete);
}

#[test]
fn unknown_path_is_404() {
    let origin = Origin::start().unwrap();
    let response = RawClient::connect(&origin).get("/nothing", &[]);
    assert_eq!(response.status, 404);
}

#[test]
fn open_ended_range_is_206_with_content_range() {
    let body = content(1000);
    let origin = origin_with("/f", &body, Behavior::Normal);
    let response = RawClient::connect(&origin).get("/f", &[("Range", "bytes=600-")]);
    assert_eq!(response.status, 206);
    assert_eq!(response.header("content-range"), Some("bytes 600-999/1000"));
    assert_eq!(response.header("content-length"), Some("400"));
    assert_eq!(response.body, &body[600..]);
}

#[test]
fn bounded_range_is_clipped_and_suffix_range_takes_the_tail() {
    let body = content(100);
    let origin = origin_with("/f", &body, Behavior::Normal);
    let mut client = RawClient::connect(&origin);
    let clipped = client.get("/f", &[("Range", "bytes=90-500")]);
    assert_eq!(clipped.status, 206);
    assert_eq!(clipped.header("content-range"), Some("bytes 90-99/100"));
    assert_eq!(clipped.body, &body[90..]);
    let exact = client.get("/f", &[("Range", "bytes=10-19")]);
    assert_eq!(exact.header("content-range"), Some("bytes 10-19/100"));
    assert_eq!(exact.body, &body[10..20]);
    let suffix = client.get("/f", &[("Range", "bytes=-5")]);
    assert_eq!(suffix.header("content-range"), Some("bytes 95-99/100"));
    assert_eq!(suffix.body, &body[95..]);
}

#[test]
fn range_beyond_length_is_416_with_star_content_range() {
    let origin = origin_with("/f", &content(100), Behavior::Normal);
    let mut client = RawClient::connect(&origin);
    let response = client.get("/f", &[("Range", "bytes=100-")]);
    assert_eq!(response.status, 416);
    assert_eq!(response.header("content-range"), Some("bytes */100"));
    assert!(response.body.is_empty());
    // The connection stays usable after the 416.
    assert_eq!(client.get("/f", &[]).status, 200);
}

#[test]
fn if_range_mismatch_gets_full_200_and_match_gets_206() {
    let body = content(100);
    let origin = origin_with("/f", &body, Behavior::Normal);
    let mut client = RawClient::connect(&origin);
    let stale = client.get(
        "/f",
        &[("Range", "bytes=50-"), ("If-Range", "\"0000000000000000\"")],
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, body);
    let etag = expected_etag(&body);
    let fresh = client.get("/f", &[("Range", "bytes=50-"), ("If-Range", &etag)]);
    assert_eq!(fresh.status, 206);
    assert_eq!(fresh.body, &body[50..]);
}

#[test]
fn set_body_changes_etag_so_old_if_range_gets_the_new_full_body() {
    let old = content(100);
    let origin = origin_with("/f", &old, Behavior::Normal);
    let old_etag = origin.etag("/f").unwrap();
    let new = b"a different representation".to_vec();
    origin.set_body("/f", new.clone());
    assert_eq!(origin.etag("/f"), Some(expected_etag(&new)));
    let response =
        RawClient::connect(&origin).get("/f", &[("Range", "bytes=50-"), ("If-Range", &old_etag)]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, new);
}

#[test]
fn ignore_range_answers_full_200() {
    let body = content(100);
    let origin = origin_with("/f", &body, Behavior::IgnoreRange);
    let response = RawClient::connect(&origin).get("/f", &[("Range", "bytes=50-")]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-range"), None);
    assert_eq!(response.header("accept-ranges"), None);
    assert_eq!(response.body, body);
}

#[test]
fn range_from_zero_only_honours_ranges_from_byte_0_and_answers_others_with_the_full_body() {
    let body = content(100);
    let origin = origin_with("/f", &body, Behavior::RangeFromZeroOnly);
    let mut client = RawClient::connect(&origin);
    let first = client.get("/f", &[("Range", "bytes=0-")]);
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), Some("bytes 0-99/100"));
    let head = client.get("/f", &[("Range", "bytes=0-9")]);
    assert_eq!(head.status, 206);
    assert_eq!(head.body, &body[..10]);
    let later = client.get("/f", &[("Range", "bytes=50-")]);
    assert_eq!(later.status, 200);
    assert_eq!(later.header("content-range"), None);
    assert_eq!(later.header("etag"), Some(expected_etag(&body).as_str()));
    assert_eq!(later.body, body);
}

#[test]
fn head_sends_headers_only_and_keeps_the_connection_usable() {
    let body = content(300);
    let origin = origin_with("/f", &body, Behavior::Normal);
    let mut client = RawClient::connect(&origin);
    client.send("HEAD", "/f", &[]);
    let head = client.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300"));
    assert_eq!(head.header("etag"), Some(expected_etag(&body).as_str()));
    // Had the HEAD response carried a body, this GET's status line would be garbage.
    let get = client.get("/f", &[]);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, body);
}

#[test]
fn head_of_unsized_bodies_claims_no_content_length() {
    let origin = Origin::start().unwrap();
    origin.route("/chunked", content(100), Behavior::Chunked { chunk: 10 });
    origin.route("/closing", content(100), Behavior::CloseDelimited);
    let mut client = RawClient::connect(&origin);
    client.send("HEAD", "/chunked", &[]);
    let chunked = client.read_response(true);
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.header("content-length"), None);
    // The connection is still usable, so no body was sent.
    client.send("HEAD", "/closing", &[]);
    let closing = client.read_response(true);
    assert_eq!(closing.status, 200);
    assert_eq!(closing.header("content-length"), None);
    assert!(client.sees_eof());
}

#[test]
fn chunked_sends_transfer_encoding_chunked_in_chunks_of_the_given_size() {
    let body = content(1000);
    let origin = origin_with("/f", &body, Behavior::Chunked { chunk: 300 });
    let mut client = RawClient::connect(&origin);
    let response = client.get("/f", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.chunks, 4);
    assert_eq!(response.body, body);
    // Keep-alive still works after a chunked body.
    assert_eq!(client.get("/f", &[]).body, body);
}

#[test]
fn close_delimited_has_neither_length_nor_chunking_and_closes() {
    let body = content(5000);
    let origin = origin_with("/f", &body, Behavior::CloseDelimited);
    let response = RawClient::connect(&origin).get("/f", &[]);
    assert_eq!(response.status, 200);
    // hyper delimits by close only on an HTTP/1.0 status line.
    assert_eq!(response.version, "HTTP/1.0");
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.end, BodyEnd::Closed);
    assert_eq!(response.body, body);
}

#[test]
fn truncate_declares_full_length_and_closes_after_the_prefix() {
    let body = content(10_000);
    let origin = origin_with("/f", &body, Behavior::Truncate { after: 1234 });
    let response = RawClient::connect(&origin).get("/f", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("10000"));
    assert_eq!(response.end, BodyEnd::Early);
    assert_eq!(response.body, &body[..1234]);
}

#[test]
fn truncate_counts_from_the_start_of_a_range_response() {
    let body = content(10_000);
    let origin = origin_with("/f", &body, Behavior::Truncate { after: 100 });
    let response = RawClient::connect(&origin).get("/f", &[("Range", "bytes=5000-")]);
    assert_eq!(response.status, 206);
    assert_eq!(response.header("content-length"), Some("5000"));
    assert_eq!(response.end, BodyEnd::Early);
    assert_eq!(response.body, &body[5000..5100]);
}

#[test]
fn stall_sends_the_prefix_then_nothing() {
    let body = content(10_000);
    let origin = origin_with("/f", &body, Behavior::Stall { after: 500 });
    let mut client = RawClient::connect(&origin);
    client.send("GET", "/f", &[]);
    let (_, status, headers) = client.read_head();
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-length".into(), "10000".into())));
    let (prefix, complete) = client.read_up_to(500);
    assert!(complete);
    assert_eq!(prefix, &body[..500]);
    client
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let waited = Instant::now();
    let mut byte = [0u8; 1];
    let error = client.reader.read(&mut byte).unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{error}"
    );
    assert!(waited.elapsed() >= Duration::from_millis(300));
}

#[test]
fn drop_returns_promptly_while_a_client_is_stalled() {
    let origin = origin_with("/f", &content(10_000), Behavior::Stall { after: 10 });
    let mut client = RawClient::connect(&origin);
    client.send("GET", "/f", &[]);
    client.read_head();
    assert!(client.read_up_to(10).1);
    let dropping = Instant::now();
    drop(origin);
    let took = dropping.elapsed();
    assert!(took < Duration::from_millis(1500), "drop took {took:?}");
    // The stalled connection is gone with the server.
    assert!(client.sees_eof());
}

#[test]
fn trickle_paces_the_body() {
    let body = content(3000);
    let origin = origin_with(
        "/f",
        &body,
        Behavior::Trickle {
            bytes_per_sec: 10_000,
        },
    );
    let started = Instant::now();
    let response = RawClient::connect(&origin).get("/f", &[]);
    let took = started.elapsed();
    assert_eq!(response.body, body);
    // 3000 bytes at 10 kB/s: the last 500-byte piece is due at 250 ms.
    assert!(took >= Duration::from_millis(240), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn redirect_sends_status_and_verbatim_location() {
    let origin = origin_with(
        "/old",
        b"",
        Behavior::Redirect {
            status: 302,
            location: "../new?x=1".into(),
        },
    );
    let response = RawClient::connect(&origin).get("/old", &[]);
    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some("../new?x=1"));
}

#[test]
fn status_answers_with_retry_after() {
    let origin = origin_with(
        "/busy",
        b"unused",
        Behavior::Status {
            status: 503,
            retry_after: Some("7".into()),
        },
    );
    let mut client = RawClient::connect(&origin);
    for _ in 0..2 {
        let response = client.get("/busy", &[]);
        assert_eq!(response.status, 503);
        assert_eq!(response.header("retry-after"), Some("7"));
        assert_ne!(response.body, b"unused");
    }
}

#[test]
fn fail_times_fails_then_serves_normally() {
    let body = content(100);
    let origin = origin_with(
        "/f",
        &body,
        Behavior::FailTimes {
            times: 2,
            status: 500,
        },
    );
    let mut client = RawClient::connect(&origin);
    assert_eq!(client.get("/f", &[]).status, 500);
    assert_eq!(client.get("/f", &[]).status, 500);
    let ok = client.get("/f", &[("Range", "bytes=10-")]);
    assert_eq!(ok.status, 206);
    assert_eq!(ok.body, &body[10..]);
    assert_eq!(client.get("/f", &[]).status, 200);
}

#[test]
fn endless_sends_more_than_the_content_without_length_then_closes() {
    let body = content(100);
    let origin = origin_with("/f", &body, Behavior::Endless { extra: 5000 });
    let response = RawClient::connect(&origin).get("/f", &[]);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.end, BodyEnd::Closed);
    assert_eq!(response.body.len(), 5100);
    assert_eq!(&response.body[..100], body);
}

#[test]
fn attachment_adds_content_disposition() {
    let origin = origin_with(
        "/download",
        b"data",
        Behavior::Attachment {
            filename: "report.pdf".into(),
        },
    );
    let response = RawClient::connect(&origin).get("/download", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-disposition"),
        Some("attachment; filename=\"report.pdf\"")
    );
    assert_eq!(response.body, b"data");
}

#[test]
fn require_auth_rejects_missing_or_wrong_credentials() {
    let origin = origin_with(
        "/private",
        b"secret",
        Behavior::RequireAuth {
            expected: "Bearer t0ken".into(),
        },
    );
    let mut client = RawClient::connect(&origin);
    let missing = client.get("/private", &[]);
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").is_some());
    assert_eq!(
        client
            .get("/private", &[("Authorization", "Bearer wrong")])
            .status,
        401
    );
    let allowed = client.get("/private", &[("Authorization", "Bearer t0ken")]);
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.body, b"secret");
}

#[test]
fn request_log_records_headers_and_connection_ids() {
    let origin = origin_with("/f", b"x", Behavior::Normal);
    let mut first = RawClient::connect(&origin);
    first.get("/f?attempt=1", &[("X-Test", "one"), ("Range", "bytes=0-")]);
    first.get("/f", &[("X-Test", "two")]);
    let mut second = RawClient::connect(&origin);
    second.get("/other", &[("X-Test", "three")]);

    let log = origin.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/f?attempt=1");
    assert_eq!(log[0].header("x-test"), Some("one"));
    assert_eq!(log[0].header("RANGE"), Some("bytes=0-"));
    assert!(log[0].headers.iter().any(|(name, _)| name == "x-test"));
    assert_eq!(log[1].header("x-test"), Some("two"));
    assert_eq!(log[0].connection_id, log[1].connection_id);
    assert_ne!(log[0].connection_id, log[2].connection_id);

    let to_f = origin.requests_to("/f");
    assert_eq!(to_f.len(), 2);
    assert_eq!(origin.requests_to("/other").len(), 1);
    origin.clear_requests();
    assert!(origin.requests().is_empty());
}

#[test]
fn other_methods_get_405() {
    let origin = origin_with("/f", b"x", Behavior::Normal);
    let mut client = RawClient::connect(&origin);
    client.send("DELETE", "/f", &[]);
    let response = client.read_response(false);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
}

#[test]
fn serve_dir_serves_nested_files_with_ranges() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    let body = content(200_000);
    std::fs::write(dir.path().join("sub/big file.bin"), &body).unwrap();
    std::fs::write(dir.path().join("top.txt"), b"top").unwrap();
    let origin = Origin::start().unwrap();
    assert_eq!(origin.try_serve_dir(dir.path()).unwrap(), 2);

    let mut client = RawClient::connect(&origin);
    let full = client.get("/sub/big%20file.bin", &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-length"), Some("200000"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18);
    assert_eq!(full.body, body);

    let part = client.get(
        "/sub/big%20file.bin",
        &[("Range", "bytes=150000-160000"), ("If-Range", &etag)],
    );
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some("bytes 150000-160000/200000")
    );
    assert_eq!(part.body, &body[150_000..=160_000]);
    assert_eq!(client.get("/top.txt", &[]).body, b"top");
    assert_eq!(client.get("/sub", &[]).status, 404);
}

#[test]
fn serve_dir_of_a_missing_directory_is_an_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let origin = Origin::start().unwrap();
    let error = origin
        .try_serve_dir(&dir.path().join("missing"))
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn url_points_at_the_listening_address() {
    let origin = Origin::start().unwrap();
    assert_eq!(
        origin.url("/a/b"),
        format!("http://127.0.0.1:{}/a/b", origin.addr().port())
    );
}

/// Peak resident set size of this process, from /proc (Linux only).
#[cfg(target_os = "linux")]
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn serve_dir_streams_a_large_file_in_bounded_memory() {
    const LEN: u64 = 256 * 1024 * 1024;
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("large.bin");
    {
        // Sparse: zeros except a marker in the last bytes.
        let mut file = std::fs::File::create(&path).unwrap();
        file.set_len(LEN - 4).unwrap();
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).unwrap();
        file.write_all(b"tail").unwrap();
    }
    let origin = Origin::start().unwrap();
    origin.serve_dir(dir.path());
    let peak_before = peak_rss_bytes();

    let mut client = RawClient::connect(&origin);
    client.send("GET", "/large.bin", &[]);
    let (_, status, headers) = client.read_head();
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-length".into(), LEN.to_string())));
    let mut buffer = vec![0u8; 256 * 1024];
    let mut received: u64 = 0;
    let mut last_bytes = Vec::new();
    while received < LEN {
        let read = client.reader.read(&mut buffer).unwrap();
        assert!(read > 0, "EOF after {received} bytes");
        received += read as u64;
        last_bytes.extend_from_slice(&buffer[..read]);
        let keep = last_bytes.len().saturating_sub(4);
        last_bytes.drain(..keep);
    }
    assert_eq!(received, LEN);
    assert_eq!(last_bytes, b"tail");
    let growth = peak_rss_bytes().saturating_sub(peak_before);
    assert!(growth < 64 * 1024 * 1024, "peak RSS grew by {growth} bytes");
}

#[test]
fn origin_can_be_started_and_dropped_inside_an_async_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let origin = origin_with("/f", b"x", Behavior::Normal);
        let status = RawClient::connect(&origin).get("/f", &[]).status;
        drop(origin);
        status
    });
    assert_eq!(status, 200);
}
