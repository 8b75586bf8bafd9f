//! Response header storage and parsers for the header values downloads depend on
//! (Content-Range, Retry-After, ETag, Content-Disposition). Pure string functions: no
//! clocks (Retry-After dates are relative to the response's own `Date`), no file system.

use std::time::{Duration, SystemTime};

use super::HttpError;

/// Upper bound applied by [`parse_retry_after`]: one day.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 60 * 60);

/// Response headers in received order; names compared case-insensitively; values kept as
/// `String` (lossy UTF-8, trimmed of surrounding whitespace by the parser).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a field, keeping received order. Duplicates are kept.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.fields.push((name.into(), value.into()));
    }

    /// Value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Values of every field named `name` (ASCII case-insensitive), in received order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field as `(name, value)`, in received order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether any field named `name` contains `token` in its comma-separated list
    /// (both compared ASCII case-insensitively), e.g. `Connection: keep-alive, close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A parsed `Content-Range` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete` (complete `None` when `*`). `last` is inclusive;
    /// `first <= last` and `last < complete` are guaranteed.
    Bytes {
        first: u64,
        last: u64,
        complete: Option<u64>,
    },
    /// `bytes */complete` (sent with 416 Range Not Satisfiable).
    Unsatisfied { complete: u64 },
}

/// Parse a non-empty run of ASCII digits into a u64 (no sign, no whitespace, no overflow).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parse a `Content-Range` value (`bytes 0-499/1234`, `bytes 0-499/*`, `bytes */1234`).
/// Errors are [`HttpError::MalformedHead`] with a detail.
pub fn parse_content_range(value: &str) -> Result<ContentRange, HttpError> {
    let bad = |why: &str| HttpError::MalformedHead(format!("Content-Range {value:?}: {why}"));
    let v = value.trim();
    let unit_len = "bytes".len();
    if v.len() <= unit_len || !v.is_char_boundary(unit_len) {
        return Err(bad("expected \"bytes <range>/<length>\""));
    }
    let (unit, rest) = v.split_at(unit_len);
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(bad("range unit is not \"bytes\""));
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(bad("expected whitespace after the range unit"));
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (range, complete) = rest
        .split_once('/')
        .ok_or_else(|| bad("missing '/' before the complete length"))?;
    let complete = match complete {
        "*" => None,
        digits => Some(parse_digits(digits).ok_or_else(|| bad("complete length is not a number"))?),
    };
    if range == "*" {
        return match complete {
            Some(complete) => Ok(ContentRange::Unsatisfied { complete }),
            None => Err(bad("\"*/*\" carries no information")),
        };
    }
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| bad("range is not \"first-last\""))?;
    let first = parse_digits(first).ok_or_else(|| bad("first byte position is not a number"))?;
    let last = parse_digits(last).ok_or_else(|| bad("last byte position is not a number"))?;
    if first > last {
        return Err(bad("first byte position is after the last"));
    }
    if let Some(c) = complete {
        if last >= c {
            return Err(bad("last byte position is not below the complete length"));
        }
    }
    Ok(ContentRange::Bytes {
        first,
        last,
        complete,
    })
}

/// Parse `Retry-After`: delta-seconds, or an HTTP-date interpreted relative to the
/// response's `Date` header value (`date`). An HTTP-date without a parsable `date` gives
/// `None` (this module never reads a clock); a date in the past gives `Duration::ZERO`;
/// garbage gives `None`. The result is capped at [`RETRY_AFTER_CAP`] (one day).
pub fn parse_retry_after(value: &str, date: Option<&str>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Any all-digit value is valid delta-seconds; huge values saturate to the cap.
        let secs = parse_digits(v).unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP));
    }
    let at: SystemTime = httpdate::parse_http_date(v).ok()?;
    let now: SystemTime = httpdate::parse_http_date(date?.trim()).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(RETRY_AFTER_CAP))
}

/// True for a strong entity tag: `"opaque"` (quoted, not `W/`-prefixed, valid etagc
/// characters inside).
pub fn is_strong_etag(value: &str) -> bool {
    let v = value.trim().as_bytes();
    if v.len() < 2 || v[0] != b'"' || v[v.len() - 1] != b'"' {
        return false;
    }
    v[1..v.len() - 1]
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

/// Split a header value at `sep` outside of quoted strings.
fn split_unquoted(value: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == sep {
            parts.push(&value[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Decode a quoted-string (with surrounding quotes) or return a token as is.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    let Some(inner) = raw.strip_prefix('"') else {
        return raw.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            '"' => break,
            other => out.push(other),
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Decode an RFC 8187 ext-value (`charset'lang'pct-encoded`). UTF-8 and ISO-8859-1 only.
fn decode_ext_value(raw: &str) -> Option<String> {
    let mut parts = raw.trim().splitn(3, '\'');
    let charset = parts.next()?;
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let bytes = percent_decode(encoded)?;
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.into_iter().map(char::from).collect())
    } else {
        None
    }
}

/// The file name suggested by a `Content-Disposition` value, safe to use as one path
/// component. Prefers `filename*=UTF-8''percent-encoded` (RFC 8187; UTF-8 or ISO-8859-1);
/// falls back to `filename="quoted"` (backslash escapes) or `filename=token` when
/// `filename*` is absent or undecodable. Returns `None` when there is no name or the chosen
/// name is empty, `.`, `..`, or contains `/`, `\`, NUL or another control character: a path
/// is never returned, not even its last component.
pub fn content_disposition_filename(value: &str) -> Option<String> {
    let mut plain: Option<String> = None;
    let mut extended: Option<String> = None;
    // The first element is the disposition type (attachment, inline, ...).
    for param in split_unquoted(value, ';').into_iter().skip(1) {
        let Some((name, raw)) = param.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("filename*") {
            if extended.is_none() {
                extended = decode_ext_value(raw);
            }
        } else if name.eq_ignore_ascii_case("filename") && plain.is_none() {
            plain = Some(unquote(raw));
        }
    }
    let name = extended.or(plain)?;
    let unsafe_char = |c: char| c == '/' || c == '\\' || c.is_control();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(unsafe_char) {
        return None;
    }
    Some(name)
}

/// The content coding of a response to a request that asked for `identity` only, when the
/// server applied one anyway (`Content-Encoding` other than `identity`): its value, as sent.
pub fn unrequested_content_coding(head: &crate::http::ResponseHead) -> Option<&str> {
    let value = head.headers.get("content-encoding")?.trim();
    let applied = value
        .split(',')
        .map(str::trim)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    applied.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_lookup_is_case_insensitive_and_ordered() {
        let mut h = Headers::new();
        assert!(h.is_empty());
        h.push("Set-Cookie", "a=1");
        h.push("Content-Type", "text/plain");
        h.push("set-cookie", "b=2");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("SET-COOKIE"), Some("a=1"));
        assert_eq!(h.get_all("set-cookie").collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert_eq!(h.get("missing"), None);
        let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Set-Cookie", "Content-Type", "set-cookie"]);
    }

    #[test]
    fn has_token_splits_comma_lists() {
        let mut h = Headers::new();
        h.push("Connection", "Keep-Alive, Upgrade");
        h.push("connection", "CLOSE");
        assert!(h.has_token("connection", "keep-alive"));
        assert!(h.has_token("Connection", "close"));
        assert!(!h.has_token("Connection", "clos"));
    }

    #[test]
    fn content_range_parses_bytes_forms() {
        assert_eq!(
            parse_content_range("bytes 0-499/1234"),
            Ok(ContentRange::Bytes {
                first: 0,
                last: 499,
                complete: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range("  bytes 500-999/*  "),
            Ok(ContentRange::Bytes {
                first: 500,
                last: 999,
                complete: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */1234"),
            Ok(ContentRange::Unsatisfied { complete: 1234 })
        );
        assert_eq!(
            parse_content_range("Bytes 7-7/8"),
            Ok(ContentRange::Bytes {
                first: 7,
                last: 7,
                complete: Some(8)
            })
        );
    }

    #[test]
    fn content_range_rejects_inconsistent_or_garbage_values() {
        for bad in [
            "",
            "bytes",
            "bytes ",
            "items 0-1/2",
            "bytes0-1/2",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes 0-1",
            "bytes -1-2/3",
            "bytes 0-/3",
            "bytes 1-2/x",
            "bytes */*",
            "bytes 0-18446744073709551616/*",
            "bytes +0-1/2",
            "bytés 0-1/2",
        ] {
            assert!(
                matches!(parse_content_range(bad), Err(HttpError::MalformedHead(_))),
                "{bad:?} must be rejected"
            );
        }
    }

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(
            parse_retry_after("120", None),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", None), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999999", None), Some(RETRY_AFTER_CAP));
        assert_eq!(
            parse_retry_after("99999999999999999999999999", None),
            Some(RETRY_AFTER_CAP)
        );
    }

    #[test]
    fn retry_after_date_is_relative_to_the_date_header() {
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", Some(DATE)),
            Some(Duration::from_secs(120))
        );
        // No Date header: no clock to compare with.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", None),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", Some("garbage")),
            None
        );
        // More than a day away is capped.
        assert_eq!(
            parse_retry_after("Tue, 08 Nov 1994 08:49:37 GMT", Some(DATE)),
            Some(RETRY_AFTER_CAP)
        );
    }

    #[test]
    fn retry_after_past_date_is_zero() {
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", Some(DATE)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_none() {
        for bad in ["", "soon", "-5", "1.5", "12s", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, Some(DATE)), None, "{bad:?}");
        }
    }

    #[test]
    fn strong_etag_detection() {
        assert!(is_strong_etag("\"abc123\""));
        assert!(is_strong_etag(" \"\" "));
        assert!(!is_strong_etag("W/\"abc\""));
        assert!(!is_strong_etag("abc"));
        assert!(!is_strong_etag("\"abc"));
        assert!(!is_strong_etag("\""));
        assert!(!is_strong_etag("\"a\"b\""));
        assert!(!is_strong_etag("\"a b\""));
    }

    #[test]
    fn content_disposition_quoted_token_and_escapes() {
        assert_eq!(
            content_disposition_filename("attachment; filename=\"report 1.pdf\""),
            Some("report 1.pdf".into())
        );
        assert_eq!(
            content_disposition_filename("attachment; filename=plain.txt"),
            Some("plain.txt".into())
        );
        assert_eq!(
            content_disposition_filename("attachment; filename=\"a\\\"b;c.txt\"; size=3"),
            Some("a\"b;c.txt".into())
        );
        assert_eq!(
            content_disposition_filename("attachment; FILENAME = \"x.bin\""),
            Some("x.bin".into())
        );
    }

    #[test]
    fn content_disposition_prefers_extended_filename() {
        assert_eq!(
            content_disposition_filename(
                "attachment; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt"
            ),
            Some("€ rates.txt".into())
        );
        assert_eq!(
            content_disposition_filename("attachment; filename*=iso-8859-1'en'%A3.txt"),
            Some("£.txt".into())
        );
        // Undecodable extended value: fall back to the plain one.
        assert_eq!(
            content_disposition_filename(
                "attachment; filename*=UTF-8''%ZZbad; filename=\"good.txt\""
            ),
            Some("good.txt".into())
        );
        assert_eq!(
            content_disposition_filename("attachment; filename*=UTF-8''%FF%FE"),
            None
        );
    }

    #[test]
    fn content_disposition_never_returns_a_path() {
        for hostile in [
            "attachment; filename=\"../../etc/passwd\"",
            "attachment; filename=\"/etc/passwd\"",
            "attachment; filename=\"..\\\\..\\\\windows\\\\win.ini\"",
            "attachment; filename=\"dir/file\"",
            "attachment; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd",
            "attachment; filename*=UTF-8''a%5Cb",
            "attachment; filename*=UTF-8''a%00b",
            "attachment; filename*=UTF-8''..%2Fx; filename=\"safe.txt\"",
            "attachment; filename=\"..\"",
            "attachment; filename=\".\"",
            "attachment; filename=\"\"",
            "attachment; filename=\"a\nb\"",
            "attachment",
            "inline; name=x",
            "",
        ] {
            assert_eq!(content_disposition_filename(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn a_content_coding_other_than_identity_is_reported_as_unrequested() {
        let coding = |value: Option<&str>| {
            let mut text = String::from("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n");
            if let Some(v) = value {
                text.push_str(&format!("Content-Encoding: {v}\r\n"));
            }
            text.push_str("\r\n");
            let (head, _) = crate::http::HeadParser::new(4096)
                .feed(text.as_bytes())
                .unwrap()
                .unwrap();
            unrequested_content_coding(&head).map(str::to_string)
        };
        assert_eq!(coding(None), None);
        assert_eq!(coding(Some("identity")), None);
        assert_eq!(coding(Some("Identity ")), None);
        assert_eq!(coding(Some("gzip")), Some("gzip".to_string()));
        assert_eq!(
            coding(Some("identity, br")),
            Some("identity, br".to_string())
        );
    }
}
