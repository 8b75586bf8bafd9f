//! Byte-range decisions (RFC 9110 §14): parsing one `Range` header, evaluating `If-Range`,
//! and deciding between a full 200, a 206 slice and a 416. This is the reference haul's
//! client is tested against, so it is pure and unit-tested; it does not build responses.

use std::time::SystemTime;

/// What to send for a request, given its Range and If-Range headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeDecision {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `first..=last`.
    Partial { first: u64, last: u64 },
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// One parsed `Range` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// Malformed, empty, or a unit other than `bytes`: the header is ignored.
    Ignored,
    /// More than one range: answered with the full body.
    Several,
    /// `bytes=N-`
    From(u64),
    /// `bytes=N-M` with M >= N
    Between(u64, u64),
    /// `bytes=-S`
    Suffix(u64),
}

/// The representation's validators, for `If-Range`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validators<'a> {
    pub(crate) etag: &'a str,
    pub(crate) last_modified: SystemTime,
}

/// Decides how to answer a GET with `range` and `if_range` header values for a
/// representation of `len` bytes.
pub(crate) fn decide(
    range: Option<&str>,
    if_range: Option<&str>,
    validators: Validators<'_>,
    len: u64,
) -> RangeDecision {
    let Some(range) = range else {
        return RangeDecision::Full;
    };
    let request = parse_range(range);
    if matches!(request, RangeRequest::Ignored | RangeRequest::Several) {
        return RangeDecision::Full;
    }
    if let Some(if_range) = if_range {
        if !if_range_matches(if_range, validators) {
            return RangeDecision::Full;
        }
    }
    match request {
        RangeRequest::Ignored | RangeRequest::Several => RangeDecision::Full,
        RangeRequest::From(first) if first < len => RangeDecision::Partial {
            first,
            last: len - 1,
        },
        RangeRequest::Between(first, last) if first < len => RangeDecision::Partial {
            first,
            last: last.min(len - 1),
        },
        RangeRequest::Suffix(suffix) if suffix > 0 && len > 0 => RangeDecision::Partial {
            first: len - suffix.min(len),
            last: len - 1,
        },
        RangeRequest::From(_) | RangeRequest::Between(..) | RangeRequest::Suffix(_) => {
            RangeDecision::Unsatisfiable
        }
    }
}

fn parse_range(value: &str) -> RangeRequest {
    let Some((unit, set)) = value.split_once('=') else {
        return RangeRequest::Ignored;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Ignored;
    }
    // RFC 9110 list syntax allows empty elements ("bytes=0-1,,").
    let mut specs = set
        .split(',')
        .map(str::trim)
        .filter(|spec| !spec.is_empty());
    let Some(spec) = specs.next() else {
        return RangeRequest::Ignored;
    };
    let parsed = parse_spec(spec);
    if specs.next().is_some() {
        return if parsed == RangeRequest::Ignored {
            RangeRequest::Ignored
        } else {
            RangeRequest::Several
        };
    }
    parsed
}

fn parse_spec(spec: &str) -> RangeRequest {
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        (true, true) => RangeRequest::Ignored,
        (true, false) => parse_position(last).map_or(RangeRequest::Ignored, RangeRequest::Suffix),
        (false, true) => parse_position(first).map_or(RangeRequest::Ignored, RangeRequest::From),
        (false, false) => match (parse_position(first), parse_position(last)) {
            (Some(first), Some(last)) if last >= first => RangeRequest::Between(first, last),
            _ => RangeRequest::Ignored,
        },
    }
}

/// A run of ASCII digits; values beyond u64 saturate (they are beyond any length anyway).
fn parse_position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// `If-Range` holds either an entity tag (compared strongly: a weak tag never matches) or
/// an HTTP date (matches only if equal to Last-Modified).
fn if_range_matches(if_range: &str, validators: Validators<'_>) -> bool {
    let if_range = if_range.trim();
    if if_range.starts_with("W/") {
        return false;
    }
    if if_range.starts_with('"') {
        return if_range == validators.etag;
    }
    httpdate::parse_http_date(if_range).is_ok_and(|date| {
        httpdate::fmt_http_date(date) == httpdate::fmt_http_date(validators.last_modified)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ETAG: &str = "\"0123456789abcdef\"";

    fn last_modified() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn validators() -> Validators<'static> {
        Validators {
            etag: ETAG,
            last_modified: last_modified(),
        }
    }

    fn decide_range(range: &str, len: u64) -> RangeDecision {
        decide(Some(range), None, validators(), len)
    }

    fn partial(first: u64, last: u64) -> RangeDecision {
        RangeDecision::Partial { first, last }
    }

    #[test]
    fn no_range_header_means_full() {
        assert_eq!(decide(None, None, validators(), 10), RangeDecision::Full);
    }

    #[test]
    fn open_ended_range_runs_to_the_end() {
        assert_eq!(decide_range("bytes=0-", 10), partial(0, 9));
        assert_eq!(decide_range("bytes=4-", 10), partial(4, 9));
        assert_eq!(decide_range("bytes=9-", 10), partial(9, 9));
    }

    #[test]
    fn start_at_or_beyond_length_is_unsatisfiable() {
        assert_eq!(decide_range("bytes=10-", 10), RangeDecision::Unsatisfiable);
        assert_eq!(
            decide_range("bytes=11-20", 10),
            RangeDecision::Unsatisfiable
        );
        assert_eq!(
            decide_range("bytes=99999999999999999999999-", 10),
            RangeDecision::Unsatisfiable
        );
    }

    #[test]
    fn bounded_range_is_clipped_to_last_byte() {
        assert_eq!(decide_range("bytes=2-5", 10), partial(2, 5));
        assert_eq!(decide_range("bytes=2-100", 10), partial(2, 9));
        assert_eq!(decide_range("bytes=3-3", 10), partial(3, 3));
    }

    #[test]
    fn suffix_range_takes_the_last_bytes_or_all_of_them() {
        assert_eq!(decide_range("bytes=-3", 10), partial(7, 9));
        assert_eq!(decide_range("bytes=-10", 10), partial(0, 9));
        assert_eq!(decide_range("bytes=-50", 10), partial(0, 9));
        assert_eq!(decide_range("bytes=-0", 10), RangeDecision::Unsatisfiable);
    }

    #[test]
    fn every_range_of_an_empty_representation_is_unsatisfiable() {
        assert_eq!(decide_range("bytes=0-", 0), RangeDecision::Unsatisfiable);
        assert_eq!(decide_range("bytes=-5", 0), RangeDecision::Unsatisfiable);
    }

    #[test]
    fn malformed_ranges_and_other_units_are_ignored() {
        for value in [
            "bytes=5-3",
            "bytes=-",
            "bytes=a-",
            "bytes=1-b",
            "bytes=",
            "bytes 0-1",
            "items=0-1",
            "bytes=+1-2",
        ] {
            assert_eq!(decide_range(value, 10), RangeDecision::Full, "{value}");
        }
    }

    #[test]
    fn unit_is_case_insensitive_and_whitespace_is_tolerated() {
        assert_eq!(decide_range("Bytes= 2 - 4 ", 10), partial(2, 4));
    }

    #[test]
    fn several_ranges_get_the_full_body() {
        assert_eq!(decide_range("bytes=0-1,4-5", 10), RangeDecision::Full);
        assert_eq!(decide_range("bytes=0-1,", 10), partial(0, 1));
    }

    #[test]
    fn if_range_with_matching_etag_allows_the_range() {
        assert_eq!(
            decide(Some("bytes=2-"), Some(ETAG), validators(), 10),
            partial(2, 9)
        );
    }

    #[test]
    fn if_range_with_other_or_weak_etag_gives_full() {
        for if_range in ["\"ffffffffffffffff\"", "W/\"0123456789abcdef\"", "garbage"] {
            assert_eq!(
                decide(Some("bytes=2-"), Some(if_range), validators(), 10),
                RangeDecision::Full,
                "{if_range}"
            );
        }
    }

    #[test]
    fn if_range_mismatch_beats_unsatisfiable() {
        assert_eq!(
            decide(Some("bytes=50-"), Some("\"other\""), validators(), 10),
            RangeDecision::Full
        );
    }

    #[test]
    fn if_range_date_must_equal_last_modified() {
        let same = httpdate::fmt_http_date(last_modified());
        let later = httpdate::fmt_http_date(last_modified() + Duration::from_secs(1));
        assert_eq!(
            decide(Some("bytes=2-"), Some(&same), validators(), 10),
            partial(2, 9)
        );
        assert_eq!(
            decide(Some("bytes=2-"), Some(&later), validators(), 10),
            RangeDecision::Full
        );
    }
}
