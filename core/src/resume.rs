//! The small state file kept beside a partial download (`<dest>.haul-state`).
//!
//! It records which representation the partial bytes belong to (the URL asked for and a
//! strong validator) and how many leading bytes of the partial file are durable: synced to
//! disk before the state file was written. A resume trusts exactly that prefix, re-hashes it,
//! and asks the server to continue it with `If-Range`, so bytes of two different
//! representations are never spliced. A state file that does not parse, names another URL or
//! has no strong validator is ignored and the download starts from zero.

use serde::{Deserialize, Serialize};

/// Format version written into every state file.
pub const STATE_VERSION: u32 = 1;

/// Largest state file read back (anything bigger is not ours).
pub const STATE_MAX_BYTES: u64 = 16 * 1024;

/// A strong validator: what `If-Range` sends to ask "only if still the same bytes".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// A strong entity tag, quotes included.
    Etag(String),
    /// A `Last-Modified` date that the server's `Date` shows is at least a second old.
    LastModified(String),
}

impl Validator {
    /// The header value for `If-Range`.
    pub fn if_range_value(&self) -> &str {
        match self {
            Validator::Etag(v) | Validator::LastModified(v) => v,
        }
    }

    /// The strong validator of a response, if it has one (RFC 9110 section 8.8.2.2: a
    /// `Last-Modified` is strong only when it is at least one second before `Date`).
    pub fn of_response(head: &crate::http::ResponseHead) -> Option<Validator> {
        if let Some(etag) = head.headers.get("etag") {
            if crate::http::is_strong_etag(etag) {
                return Some(Validator::Etag(etag.to_string()));
            }
            return None;
        }
        let lm = head.headers.get("last-modified")?;
        let date = head.headers.get("date")?;
        let lm_t = httpdate::parse_http_date(lm).ok()?;
        let date_t = httpdate::parse_http_date(date).ok()?;
        let gap = date_t.duration_since(lm_t).ok()?;
        (gap.as_secs() >= 1).then(|| Validator::LastModified(lm.to_string()))
    }

    /// Whether a response carries this same validator (a 206 must).
    pub fn matches_response(&self, head: &crate::http::ResponseHead) -> bool {
        match self {
            Validator::Etag(v) => head.headers.get("etag") == Some(v.as_str()),
            Validator::LastModified(v) => match head.headers.get("etag") {
                Some(_) => false,
                None => head.headers.get("last-modified") == Some(v.as_str()),
            },
        }
    }
}

/// Contents of the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The URL the caller asked for (before redirects).
    pub url: String,
    /// The validator of the representation the partial bytes belong to.
    pub validator: Validator,
    /// The file that gave `validator`: the last path segment of the URL it came from after
    /// redirects. A resume answered for another file starts over, whatever its validator
    /// (ETags are only comparable for one resource), unless a sha256 proves the result.
    /// Absent in state files of earlier versions, which are then resumed on the validator
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The URL, as the download gives it, whose responses gave `validator` and the bytes,
    /// when it is one of the download's mirrors rather than its own URL. A resume on another
    /// URL (the one the attempt picks) starts over unless a sha256 proves the result: two
    /// servers may give one validator to different bytes. Absent: the download's own URL (and state files of earlier
    /// versions, whose bytes were resumed from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The representation's complete length, when known.
    pub total: Option<u64>,
    /// Leading bytes of the partial file known to be durable and to belong to `validator`.
    pub verified: u64,
    /// Lowercase hex SHA-256 of those `verified` bytes. A resume re-hashes the prefix and
    /// starts over on a mismatch, so a crash that lost unsynced data, or a partial file
    /// changed behind haul's back, can never be spliced onto fresh bytes.
    pub prefix_sha256: String,
    /// Durable ranges `[start, end)` beyond the prefix (a segmented download's other
    /// segments). They are hashed when the prefix reaches them; the final hash check covers
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<(u64, u64)>,
    /// The server's answers to segments did not fit together in the run that wrote this
    /// (see `Event::SingleConnection`): a resume keeps to one connection too, instead of
    /// splitting, failing the same way, and starting over from zero.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_connection: bool,
}

impl PartState {
    /// Serialized form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("state serializes");
        v.push(b'\n');
        v
    }

    /// Parses a state file written for `url`; None when it is unusable for that URL.
    pub fn decode_for(bytes: &[u8], url: &str) -> Option<PartState> {
        let st: PartState = serde_json::from_slice(bytes).ok()?;
        if st.version != STATE_VERSION || st.url != url {
            return None;
        }
        if let Some(total) = st.total {
            if st.verified > total || st.ranges.iter().any(|r| r.1 > total) {
                return None;
            }
        }
        if st.ranges.iter().any(|r| r.0 >= r.1 || r.0 < st.verified) {
            return None;
        }
        Some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Headers, ResponseHead};

    fn head(headers: &[(&str, &str)]) -> ResponseHead {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.push(*k, *v);
        }
        ResponseHead {
            version_minor: 1,
            status: 200,
            reason: "OK".into(),
            headers: h,
        }
    }

    #[test]
    fn state_roundtrips_and_rejects_other_urls() {
        let st = PartState {
            version: STATE_VERSION,
            url: "http://h/a".into(),
            validator: Validator::Etag("\"abc\"".into()),
            resource: None,
            source: None,
            total: Some(100),
            verified: 40,
            prefix_sha256: "00".repeat(32),
            ranges: Vec::new(),
            single_connection: false,
        };
        let bytes = st.encode();
        assert_eq!(PartState::decode_for(&bytes, "http://h/a"), Some(st));
        assert_eq!(PartState::decode_for(&bytes, "http://h/b"), None);
        assert_eq!(PartState::decode_for(b"{garbage", "http://h/a"), None);
    }

    #[test]
    fn single_connection_is_written_only_when_set_and_read_as_false_from_older_files() {
        let mut st = PartState {
            version: STATE_VERSION,
            url: "u".into(),
            validator: Validator::Etag("\"a\"".into()),
            resource: None,
            source: None,
            total: Some(10),
            verified: 1,
            prefix_sha256: "00".repeat(32),
            ranges: Vec::new(),
            single_connection: false,
        };
        let older = st.encode();
        assert!(!String::from_utf8_lossy(&older).contains("single_connection"));
        assert_eq!(PartState::decode_for(&older, "u"), Some(st.clone()));
        st.single_connection = true;
        assert_eq!(PartState::decode_for(&st.encode(), "u"), Some(st));
    }

    #[test]
    fn verified_beyond_total_is_rejected() {
        let st = PartState {
            version: STATE_VERSION,
            url: "u".into(),
            validator: Validator::Etag("\"a\"".into()),
            resource: None,
            source: None,
            total: Some(10),
            verified: 11,
            prefix_sha256: "00".repeat(32),
            ranges: Vec::new(),
            single_connection: false,
        };
        assert_eq!(PartState::decode_for(&st.encode(), "u"), None);
    }

    #[test]
    fn weak_etags_are_not_validators_and_last_modified_needs_a_second() {
        assert_eq!(Validator::of_response(&head(&[("ETag", "W/\"x\"")])), None);
        assert_eq!(
            Validator::of_response(&head(&[("ETag", "\"x\"")])),
            Some(Validator::Etag("\"x\"".into()))
        );
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            Validator::of_response(&head(&[("Last-Modified", lm), ("Date", lm)])),
            None
        );
        assert_eq!(
            Validator::of_response(&head(&[
                ("Last-Modified", lm),
                ("Date", "Sun, 06 Nov 1994 08:49:39 GMT")
            ])),
            Some(Validator::LastModified(lm.into()))
        );
    }
}
