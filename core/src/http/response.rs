//! Response side: the incremental head parser, body framing and connection reuse rules.
//! Owns the status line and header section; the body itself belongs to
//! [`super::BodyDecoder`].

use super::{Headers, HttpError, Method};

/// A parsed response status line and header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version_minor: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

/// Incremental response-head parser; input may arrive split at any byte.
///
/// The end of the head (an empty line, `\r\n\r\n` or `\n\n`) is searched incrementally, so
/// feeding one byte at a time stays linear; `httparse` runs once per complete head.
#[derive(Debug, Clone)]
pub struct HeadParser {
    max_head_bytes: usize,
    /// Bytes received and not yet handed out as a final head.
    buf: Vec<u8>,
    /// Start of the current message in `buf` (after skipped 1xx heads and blank lines).
    head_start: usize,
    /// Start of the current message including blank lines before it; the limit counts
    /// from here.
    message_start: usize,
    /// Next position in `buf` to examine for the end of the head.
    scan_from: usize,
    /// How many times `httparse` ran (once per complete head); pins linearity in tests.
    heads_parsed: usize,
    /// The first error; every later feed returns it again.
    failed: Option<HttpError>,
}

impl HeadParser {
    pub fn new(max_head_bytes: usize) -> Self {
        HeadParser {
            max_head_bytes,
            buf: Vec::new(),
            head_start: 0,
            message_start: 0,
            scan_from: 0,
            heads_parsed: 0,
            failed: None,
        }
    }

    /// Feed the next received bytes.
    ///
    /// Returns `Ok(None)` when more bytes are needed (they were buffered), or
    /// `Ok(Some((head, consumed)))` where `consumed` is how many bytes of this `input`
    /// belong to the head; the rest of `input` is body. 1xx informational responses other
    /// than 101 are skipped. `Err(HeadTooLarge)` once a head exceeds the limit. After a
    /// head is returned the parser is ready for the next response on the connection; after
    /// an error it returns that error for every later feed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_unchecked(input);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn feed_unchecked(&mut self, input: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
        let already_buffered = self.buf.len();
        let mut fed = 0;
        // Copied in growing steps: a head is usually far smaller than the first read that
        // carries it (with a small body behind it), so most of that body is never copied.
        let mut step = HEAD_STEP;
        loop {
            // Copy only what can still belong to a head within the limit (plus one byte to
            // detect overflow): body bytes behind the head are never buffered in bulk.
            let in_message = self.buf.len() - self.message_start;
            let window = self
                .max_head_bytes
                .saturating_add(1)
                .saturating_sub(in_message)
                .min(input.len() - fed)
                .min(step);
            self.buf.extend_from_slice(&input[fed..fed + window]);
            fed += window;

            self.skip_blank_lines();
            let Some(end) = self.find_head_end() else {
                self.scan_from = self.buf.len();
                if self.buf.len() - self.message_start > self.max_head_bytes {
                    return Err(self.too_large());
                }
                if fed < input.len() {
                    // More input, still within the limit: the next step.
                    step = step.saturating_mul(2);
                    continue;
                }
                self.compact();
                return Ok(None);
            };
            if end - self.message_start > self.max_head_bytes {
                return Err(self.too_large());
            }
            self.heads_parsed += 1;
            let head = parse_head(&self.buf[self.head_start..end])?;
            self.head_start = end;
            self.message_start = end;
            self.scan_from = end;
            if is_skipped_informational(head.status) {
                tracing::trace!(status = head.status, "skipping informational response");
                continue;
            }
            // The final head ends inside this input: earlier bytes held no complete head.
            let consumed = end - already_buffered;
            self.reset();
            return Ok(Some((head, consumed)));
        }
    }

    fn too_large(&self) -> HttpError {
        HttpError::HeadTooLarge {
            limit: self.max_head_bytes,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.head_start = 0;
        self.message_start = 0;
        self.scan_from = 0;
    }

    /// Drop bytes of already skipped informational heads.
    fn compact(&mut self) {
        if self.message_start > 0 {
            self.buf.drain(..self.message_start);
            self.head_start -= self.message_start;
            self.scan_from -= self.message_start;
            self.message_start = 0;
        }
    }

    /// Skip empty lines before a status line (RFC 9112 section 2.2 robustness).
    fn skip_blank_lines(&mut self) {
        loop {
            match &self.buf[self.head_start..] {
                [b'\n', ..] => self.head_start += 1,
                [b'\r', b'\n', ..] => self.head_start += 2,
                _ => break,
            }
        }
        self.scan_from = self.scan_from.max(self.head_start);
    }

    /// Position just past the empty line that ends the head, if it has arrived.
    fn find_head_end(&self) -> Option<usize> {
        let start = self.head_start;
        let buf = &self.buf;
        (self.scan_from..buf.len()).find_map(|i| {
            if buf[i] != b'\n' {
                return None;
            }
            let lf_lf = i > start && buf[i - 1] == b'\n';
            let lf_cr_lf = i >= start + 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n';
            (lf_lf || lf_cr_lf).then_some(i + 1)
        })
    }
}

/// The first step in which [`HeadParser`] copies input while looking for the end of a head.
const HEAD_STEP: usize = 2048;

fn is_skipped_informational(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

/// Parse one complete head (status line through the empty line).
fn parse_head(bytes: &[u8]) -> Result<ResponseHead, HttpError> {
    // Every header field needs its own line, so the line count bounds the field count.
    let max_fields = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut fields = vec![httparse::EMPTY_HEADER; max_fields];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::MalformedHead(
                "head ended before the status line and headers were complete".into(),
            ))
        }
        Err(e) => return Err(HttpError::MalformedHead(e.to_string())),
    }
    let (Some(version_minor), Some(status)) = (response.version, response.code) else {
        return Err(HttpError::MalformedHead("missing version or status".into()));
    };
    if !(100..=999).contains(&status) {
        return Err(HttpError::MalformedHead(format!(
            "status code {status} is not a three-digit code"
        )));
    }
    let mut headers = Headers::new();
    for field in response.headers.iter() {
        headers.push(
            field.name,
            String::from_utf8_lossy(field.value).trim().to_string(),
        );
    }
    Ok(ResponseHead {
        version_minor,
        status,
        reason: response.reason.unwrap_or_default().to_string(),
        headers,
    })
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body ends when the server closes the connection.
    CloseDelimited,
}

/// Body framing by RFC 9112 section 6.3: responses to HEAD, 1xx, 204 and 304 are empty;
/// a Transfer-Encoding of exactly `chunked` is chunked (any other coding, or chunked not
/// last, is [`HttpError::UnsupportedTransferEncoding`]; Transfer-Encoding wins over
/// Content-Length); Content-Length (duplicates and comma lists only if all identical) gives
/// a length; otherwise the body is close-delimited.
pub fn framing(method: Method, head: &ResponseHead) -> Result<Framing, HttpError> {
    if method == Method::Head
        || (100..200).contains(&head.status)
        || matches!(head.status, 204 | 304)
    {
        return Ok(Framing::Empty);
    }
    let codings: Vec<&str> = head
        .headers
        .get_all("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if head.headers.get("transfer-encoding").is_some() {
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(HttpError::UnsupportedTransferEncoding(codings.join(", "))),
        };
    }
    let mut length: Option<u64> = None;
    for item in head
        .headers
        .get_all("content-length")
        .flat_map(|v| v.split(','))
    {
        let item = item.trim();
        let parsed = if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
            item.parse::<u64>().ok()
        } else {
            None
        };
        let Some(n) = parsed else {
            return Err(HttpError::InvalidContentLength(format!(
                "{item:?} is not a non-negative integer"
            )));
        };
        match length {
            Some(previous) if previous != n => {
                return Err(HttpError::InvalidContentLength(format!(
                    "conflicting values {previous} and {n}"
                )))
            }
            _ => length = Some(n),
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::CloseDelimited,
    })
}

/// Whether the connection may carry another request after this response: HTTP/1.1 unless
/// `Connection` lists `close`; HTTP/1.0 only with `Connection: keep-alive`; never when the
/// body is close-delimited.
/// A chunked response that also carries Content-Length is a smuggling hazard
/// (RFC 9112 section 6.3): the body is decoded as chunked but the connection is not reused.
pub fn keep_alive(head: &ResponseHead, framing: Framing) -> bool {
    if framing == Framing::CloseDelimited || head.headers.has_token("connection", "close") {
        return false;
    }
    if framing == Framing::Chunked && head.headers.get("content-length").is_some() {
        return false;
    }
    head.version_minor >= 1 || head.headers.has_token("connection", "keep-alive")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"abc\"\r\nX-Empty:\r\nX-Pad:   spaced out  \r\n\r\nhello";
    const SAMPLE_HEAD_LEN: usize = SAMPLE.len() - 5;

    fn parse_whole(bytes: &[u8]) -> (ResponseHead, usize) {
        HeadParser::new(64 * 1024)
            .feed(bytes)
            .unwrap()
            .expect("complete head")
    }

    fn head(status: u16, minor: u8, headers: &[(&str, &str)]) -> ResponseHead {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.push(*n, *v);
        }
        ResponseHead {
            version_minor: minor,
            status,
            reason: String::new(),
            headers: h,
        }
    }

    #[test]
    fn parses_status_line_and_trimmed_headers() {
        let (head, consumed) = parse_whole(SAMPLE);
        assert_eq!(consumed, SAMPLE_HEAD_LEN);
        assert_eq!(head.version_minor, 1);
        assert_eq!(head.status, 200);
        assert_eq!(head.reason, "OK");
        assert_eq!(head.headers.get("content-length"), Some("5"));
        assert_eq!(head.headers.get("etag"), Some("\"abc\""));
        assert_eq!(head.headers.get("x-empty"), Some(""));
        assert_eq!(head.headers.get("x-pad"), Some("spaced out"));
        assert_eq!(head.headers.len(), 4);
    }

    #[test]
    fn one_byte_feeds_equal_one_piece() {
        let whole = parse_whole(SAMPLE);
        let mut parser = HeadParser::new(64 * 1024);
        let mut result = None;
        for (i, b) in SAMPLE.iter().enumerate() {
            if let Some(r) = parser.feed(std::slice::from_ref(b)).unwrap() {
                result = Some((i, r));
                break;
            }
        }
        let (at, (head, consumed)) = result.expect("head completes");
        assert_eq!(at, SAMPLE_HEAD_LEN - 1);
        assert_eq!(consumed, 1);
        assert_eq!(head, whole.0);
    }

    #[test]
    fn every_split_point_gives_the_same_head_and_consumed() {
        let (whole_head, _) = parse_whole(SAMPLE);
        for split in 0..=SAMPLE.len() {
            let (first, second) = SAMPLE.split_at(split);
            let mut parser = HeadParser::new(64 * 1024);
            let (head, body_start) = match parser.feed(first).unwrap() {
                Some((head, consumed)) => (head, consumed),
                None => {
                    let (head, consumed) = parser.feed(second).unwrap().expect("complete");
                    (head, split + consumed)
                }
            };
            assert_eq!(head, whole_head, "split at {split}");
            assert_eq!(body_start, SAMPLE_HEAD_LEN, "split at {split}");
        }
    }

    #[test]
    fn every_split_point_with_informational_prefix_gives_the_same_result() {
        let sample: &[u8] = b"\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\nLink: </a>\n\nHTTP/1.0 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\n\r\nbody";
        let body_start = sample.len() - 4;
        let (whole_head, whole_consumed) = parse_whole(sample);
        assert_eq!(whole_consumed, body_start);
        assert_eq!(whole_head.status, 206);
        for split in 0..=sample.len() {
            for limit in [64, 1024] {
                let (first, second) = sample.split_at(split);
                let mut parser = HeadParser::new(limit);
                let (head, start) = match parser.feed(first).unwrap() {
                    Some((head, consumed)) => (head, consumed),
                    None => {
                        let (head, consumed) = parser.feed(second).unwrap().expect("complete");
                        (head, split + consumed)
                    }
                };
                assert_eq!(head, whole_head, "split at {split}, limit {limit}");
                assert_eq!(start, body_start, "split at {split}, limit {limit}");
            }
        }
    }

    #[test]
    fn large_input_behind_the_head_is_left_for_the_body() {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
        let head_len = bytes.len();
        bytes.resize(head_len + 1024 * 1024, b'x');
        let mut parser = HeadParser::new(100);
        let (head, consumed) = parser.feed(&bytes).unwrap().unwrap();
        assert_eq!(head.headers.get("content-length"), Some("1048576"));
        assert_eq!(consumed, head_len);
        // Each informational head counts against the limit on its own.
        let mut many = Vec::new();
        for _ in 0..20 {
            many.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        many.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nbody");
        let (head, consumed) = HeadParser::new(40).feed(&many).unwrap().unwrap();
        assert_eq!((head.status, &many[consumed..]), (200, &b"body"[..]));
    }

    #[test]
    fn one_byte_feeds_run_httparse_once_per_head() {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            bytes.extend_from_slice(format!("X-Header-{i}: value {i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        let mut parser = HeadParser::new(64 * 1024);
        let mut found = None;
        for b in &bytes {
            if let Some(r) = parser.feed(std::slice::from_ref(b)).unwrap() {
                found = Some(r);
            }
        }
        let (head, consumed) = found.expect("complete head");
        assert_eq!((head.headers.len(), consumed), (2000, 1));
        assert_eq!(parser.heads_parsed, 1);
    }

    #[test]
    fn errors_are_sticky() {
        let mut parser = HeadParser::new(1024);
        let err = parser.feed(b"garbage\r\n\r\n").unwrap_err();
        assert_eq!(parser.feed(b"HTTP/1.1 200 OK\r\n\r\n"), Err(err));
    }

    #[test]
    fn informational_responses_are_skipped() {
        let bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\nrest";
        let (head, consumed) = parse_whole(bytes);
        assert_eq!(head.status, 204);
        assert_eq!(head.headers.get("x"), Some("y"));
        assert_eq!(head.headers.get("link"), None);
        assert_eq!(&bytes[consumed..], b"rest");

        // Same, one byte at a time: consumed counts only the final byte.
        let mut parser = HeadParser::new(1024);
        let mut total = 0;
        for b in bytes {
            total += 1;
            if let Some((h, c)) = parser.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(h, head);
                assert_eq!(c, 1);
                break;
            }
        }
        assert_eq!(total, consumed);
    }

    #[test]
    fn switching_protocols_is_returned_not_skipped() {
        let (head, _) = parse_whole(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n");
        assert_eq!(head.status, 101);
    }

    #[test]
    fn leading_blank_lines_are_tolerated_and_consumed() {
        let bytes = b"\r\n\nHTTP/1.1 200 OK\n\nbody";
        let (head, consumed) = parse_whole(bytes);
        assert_eq!(head.status, 200);
        assert_eq!(&bytes[consumed..], b"body");
    }

    #[test]
    fn head_limit_is_enforced() {
        let mut parser = HeadParser::new(32);
        assert_eq!(parser.feed(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert_eq!(
            parser.feed(b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            Err(HttpError::HeadTooLarge { limit: 32 })
        );
        // A complete head longer than the limit is also rejected.
        let mut parser = HeadParser::new(20);
        assert_eq!(
            parser.feed(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"),
            Err(HttpError::HeadTooLarge { limit: 20 })
        );
        // Exactly at the limit is fine.
        let exact = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut parser = HeadParser::new(exact.len());
        assert!(parser.feed(exact).unwrap().is_some());
    }

    #[test]
    fn endless_blank_lines_hit_the_limit() {
        let mut parser = HeadParser::new(100);
        let mut result = Ok(None);
        for _ in 0..200 {
            result = parser.feed(b"\r\n");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(HttpError::HeadTooLarge { limit: 100 }));
    }

    #[test]
    fn obs_fold_and_garbage_are_malformed() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"\x00\x01\x02\n\n",
        ] {
            let result = HeadParser::new(1024).feed(bad);
            assert!(
                matches!(result, Err(HttpError::MalformedHead(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn non_utf8_header_values_are_converted_lossily() {
        let (head, _) = parse_whole(b"HTTP/1.1 200 OK\r\nX: caf\xe9\r\n\r\n");
        assert_eq!(head.headers.get("x"), Some("caf\u{fffd}"));
    }

    #[test]
    fn parser_is_reusable_for_the_next_response() {
        let mut parser = HeadParser::new(1024);
        let (first, _) = parser.feed(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        let (second, _) = parser
            .feed(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((first.status, second.status), (200, 404));
    }

    #[test]
    fn framing_empty_for_head_204_304_and_1xx() {
        let with_length = [("Content-Length", "10")];
        assert_eq!(
            framing(Method::Head, &head(200, 1, &with_length)),
            Ok(Framing::Empty)
        );
        for status in [204, 304, 101] {
            assert_eq!(
                framing(Method::Get, &head(status, 1, &with_length)),
                Ok(Framing::Empty),
                "{status}"
            );
        }
    }

    #[test]
    fn framing_transfer_encoding_chunked_beats_content_length() {
        let h = head(
            200,
            1,
            &[("Content-Length", "10"), ("Transfer-Encoding", "Chunked")],
        );
        assert_eq!(framing(Method::Get, &h), Ok(Framing::Chunked));
    }

    #[test]
    fn framing_rejects_other_transfer_codings() {
        for te in [
            &[("Transfer-Encoding", "gzip")][..],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked"),
            ],
            &[("Transfer-Encoding", "chunked, gzip")],
            &[("Transfer-Encoding", "chunked, chunked")],
            &[("Transfer-Encoding", "")],
        ] {
            assert!(
                matches!(
                    framing(Method::Get, &head(200, 1, te)),
                    Err(HttpError::UnsupportedTransferEncoding(_))
                ),
                "{te:?}"
            );
        }
    }

    #[test]
    fn framing_content_length_rules() {
        let get = |h: &[(&str, &str)]| framing(Method::Get, &head(200, 1, h));
        assert_eq!(get(&[("Content-Length", "42")]), Ok(Framing::Length(42)));
        assert_eq!(get(&[("Content-Length", "0")]), Ok(Framing::Length(0)));
        assert_eq!(
            get(&[("Content-Length", "42"), ("content-length", "42")]),
            Ok(Framing::Length(42))
        );
        assert_eq!(
            get(&[("Content-Length", "42, 42")]),
            Ok(Framing::Length(42))
        );
        assert_eq!(
            get(&[("Content-Length", "18446744073709551615")]),
            Ok(Framing::Length(u64::MAX))
        );
        for bad in [
            &[("Content-Length", "42"), ("Content-Length", "43")][..],
            &[("Content-Length", "42, 43")],
            &[("Content-Length", "-1")],
            &[("Content-Length", "+1")],
            &[("Content-Length", "")],
            &[("Content-Length", "1 2")],
            &[("Content-Length", "0x10")],
            &[("Content-Length", "18446744073709551616")],
        ] {
            assert!(
                matches!(get(bad), Err(HttpError::InvalidContentLength(_))),
                "{bad:?}"
            );
        }
        assert_eq!(get(&[]), Ok(Framing::CloseDelimited));
    }

    #[test]
    fn keep_alive_rules() {
        let len = Framing::Length(1);
        assert!(keep_alive(&head(200, 1, &[]), len));
        assert!(!keep_alive(&head(200, 1, &[("Connection", "close")]), len));
        assert!(!keep_alive(
            &head(200, 1, &[("Connection", "Upgrade, Close")]),
            len
        ));
        assert!(!keep_alive(&head(200, 0, &[]), len));
        assert!(keep_alive(
            &head(200, 0, &[("Connection", "Keep-Alive")]),
            len
        ));
        assert!(!keep_alive(&head(200, 1, &[]), Framing::CloseDelimited));
        assert!(keep_alive(&head(204, 1, &[]), Framing::Empty));
        assert!(keep_alive(
            &head(200, 1, &[("Transfer-Encoding", "chunked")]),
            Framing::Chunked
        ));
        assert!(!keep_alive(
            &head(
                200,
                1,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]
            ),
            Framing::Chunked
        ));
    }

    quickcheck::quickcheck! {
        fn head_parser_never_panics_on_arbitrary_split_bytes(data: Vec<u8>, splits: Vec<u8>) -> bool {
            let mut parser = HeadParser::new(512);
            let mut rest = &data[..];
            let mut sizes = splits.iter().map(|&s| usize::from(s) % 17 + 1).cycle();
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                match parser.feed(piece) {
                    Ok(None) => {}
                    Ok(Some((_, consumed))) => {
                        if consumed > piece.len() { return false; }
                        break;
                    }
                    Err(_) => break,
                }
            }
            true
        }

        fn head_parser_never_panics_on_http_like_bytes(lines: Vec<(u8, String)>) -> bool {
            let mut data = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (sep, line) in &lines {
                data.extend_from_slice(line.as_bytes());
                data.extend_from_slice(match sep % 4 { 0 => b"\r\n", 1 => b"\n", 2 => b":", _ => b"\r" });
            }
            data.extend_from_slice(b"\r\n\r\n");
            let mut parser = HeadParser::new(4096);
            for b in &data {
                match parser.feed(std::slice::from_ref(b)) {
                    Ok(None) => {}
                    Ok(Some(_)) | Err(_) => break,
                }
            }
            true
        }
    }
}
