//! Typed errors of a download: what failed, where, and whether a retry could help.
//!
//! Every terminal failure of a job is a [`DownloadError`]. [`DownloadError::retryable`] is the
//! single place that classifies failures for the retry policy, and [`DownloadError::class`]
//! groups them for callers (the CLI maps classes to exit codes).

use std::path::PathBuf;
use std::time::Duration;

use crate::download::ChecksumAlgorithm;
use crate::http::HttpError;
use crate::io::{IoErrorKind, IoFailure};

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The connection was not established in time (TCP, a proxy's tunnel, or the TLS
    /// handshake: an https URL pointing at a plain-http port ends here).
    Connect,
    /// The response head did not arrive in time after the request was sent.
    ResponseHead,
    /// No byte arrived for the idle timeout.
    Idle,
    /// Fewer bytes than the low-speed limit arrived over the low-speed window.
    LowSpeed,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect (TCP, tunnel or TLS handshake)",
            TimeoutKind::ResponseHead => "response head",
            TimeoutKind::Idle => "idle",
            TimeoutKind::LowSpeed => "low speed",
        })
    }
}

/// The SHA-256 of no bytes, hex.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What a hash mismatch adds when the digest it got is of no bytes: the server sent an
/// empty file (a 204 No Content, say), which a bare digest leaves the reader to recognise.
fn empty_note(actual: &str) -> &'static str {
    if actual == EMPTY_SHA256 {
        " (the digest of no bytes: the server sent an empty file)"
    } else {
        ""
    }
}

/// Coarse classes of failure; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The network failed (after retries): connect, reset, timeout, truncation, protocol
    /// (a malformed response head included).
    Network,
    /// The server answered with an HTTP status that is not success, or with redirects that
    /// lead nowhere (a loop, too many).
    HttpStatus,
    /// The bytes were not the expected ones: size, hash or signature.
    Verification,
    /// The local disk or file system failed.
    LocalIo,
    /// The request itself was invalid (bad URL, bad option).
    Usage,
    /// The job was cancelled by the caller.
    Cancelled,
}

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The request could not be made at all.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Connecting to the origin failed.
    #[error("cannot connect to {origin}: {failure}")]
    Connect { origin: String, failure: IoFailure },
    /// The connection failed while in use (it was established: reset, closed or broken
    /// while a request or its answer went over it).
    #[error("connection to {origin} broke while in use: {failure}")]
    Connection { origin: String, failure: IoFailure },
    /// A timeout fired.
    #[error("{kind} timeout after {after:?} talking to {origin}")]
    Timeout {
        kind: TimeoutKind,
        origin: String,
        after: Duration,
    },
    /// The server's bytes broke HTTP/1.1 (or the body was truncated).
    #[error("HTTP protocol error from {origin}: {source}")]
    Protocol { origin: String, source: HttpError },
    /// The server answered with an unexpected status.
    #[error("{url} answered HTTP {status}{}", retry_after_text(*retry_after))]
    Status {
        url: String,
        status: u16,
        /// How long the server asked us to wait (Retry-After), if it said.
        retry_after: Option<Duration>,
    },
    /// More than the allowed number of redirects.
    #[error("too many redirects (more than {limit}), last to {url}")]
    TooManyRedirects { limit: u32, url: String },
    /// A redirect led back to a URL already visited.
    #[error("redirect loop: {url} was already visited")]
    RedirectLoop { url: String },
    /// A redirect to where haul cannot follow: a `Location` that is not an http or https
    /// URL with a host (`ftp://`, `mailto:`, garbage). The server's answer is at fault,
    /// like a redirect loop; another URL of the file may serve it.
    #[error("{from} redirects to {location:?}, which cannot be followed: {reason}")]
    BadRedirect {
        from: String,
        location: String,
        reason: String,
    },
    /// A 206 answer did not fit what was asked for: not the range asked for, another
    /// representation than the bytes held, or no range asked for at all (`detail` says which).
    #[error("the server's partial response does not fit the download: {detail}")]
    RangeMismatch { detail: String },
    /// The body's size differed from the expected size. `url` is the URL the body came from
    /// (as given: the download's own, or the mirror whose answer it was; the download's own
    /// when its segments came from several) and `path` its destination, so that the failure
    /// of one file of a list says which. With `at_least`, the body went on past the expected
    /// size without a length announced, and was not read further: `actual` is what was
    /// read.
    #[error("size mismatch for {url} (to {path}): expected {expected} bytes, got {}{actual}", if *at_least { "at least " } else { "" }, path = path.display())]
    SizeMismatch {
        url: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
        at_least: bool,
    },
    /// The body exceeded the maximum size (`url`, `path`: as for `SizeMismatch`).
    #[error("body of {url} (to {path}) exceeds the maximum size of {limit} bytes (at least {seen} bytes)", path = path.display())]
    TooLarge {
        url: String,
        path: PathBuf,
        limit: u64,
        seen: u64,
    },
    /// The body's SHA-256 differed from the expected one (`url`, `path`: as for
    /// `SizeMismatch`).
    #[error("sha256 mismatch for {url} (to {path}): expected {expected}, got {actual}{}", empty_note(actual), path = path.display())]
    HashMismatch {
        url: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The file's digest of the download's other checksum algorithm
    /// ([`crate::Download::checksum`]) differed from the expected one (`url`, `path`: as for
    /// `SizeMismatch`; `expected` and `actual` in lowercase hex).
    #[error("{algorithm} checksum mismatch for {url} (to {path}): expected {expected}, got {actual}", path = path.display())]
    ChecksumMismatch {
        algorithm: ChecksumAlgorithm,
        url: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A local file operation failed.
    #[error("local I/O failed on {path}: {failure}", path = path.display())]
    LocalIo { path: PathBuf, failure: IoFailure },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The client's driver stopped before the job ended: the async runtime it ran on shut
    /// down (or its driver task was dropped). Nothing was committed; what the partial and
    /// its last checkpoint hold stays for a later resume.
    #[error("the client's runtime shut down before the download ended")]
    ClientStopped,
    /// A job this one depends on failed, with `cause` (which the error's class is): the
    /// failure that began the chain, when the dependency itself failed for a dependency of
    /// its own (see [`DownloadError::dependency_failed`]), so that a chain of thousands of
    /// dependants holds no chain of errors. The cause is printed as part of this error's
    /// message, not also given as its `source`: a printer of source chains would otherwise
    /// say it twice.
    #[error("dependency job#{dependency} failed: {cause}")]
    DependencyFailed {
        dependency: u64,
        cause: Box<DownloadError>,
    },
    /// A job this one depends on is unknown to the engine: it was not submitted before this
    /// one (a job depends only on earlier jobs, so no cycle can form), or it finished before
    /// the last `kept` jobs to finish and its outcome is no longer held.
    #[error("dependency job#{dependency} is unknown: not submitted before this download, or finished before the last {kept} jobs to finish and forgotten")]
    DependencyUnknown { dependency: u64, kept: usize },
    /// Every URL of the download is behind an open circuit breaker for longer than the
    /// retry policy allows waiting; `last_failure` is the last failure counted against
    /// `origin` (of this or another download), which says why it is failing.
    #[error("{origin} is failing (circuit breaker open for another {retry_in:.1?}; last failure: {last_failure}) and no mirror is available")]
    CircuitOpen {
        origin: String,
        retry_in: Duration,
        last_failure: String,
    },
    /// Another unfinished job of the engine writes the same destination (two downloads to
    /// one file would share, and corrupt, one partial file): this one was refused.
    #[error("{path} is already the destination of job#{job}", path = path.display())]
    DestinationInUse { path: PathBuf, job: u64 },
    /// Another process (or another client of this one) is downloading to the same
    /// destination: it holds the partial file (`path`) locked. Nothing of that partial was changed; this job was refused.
    #[error("{path} is being written by another download (another process, or another client in this one, holds the partial file locked)", path = path.display())]
    PartialInUse { path: PathBuf },
    /// Another unfinished job writes the same file under another spelling of its path
    /// (`d/x/../f` and `d/f`, or a path through a symbolic link to a directory): the
    /// executor found that when the file was opened. Nothing of the file was changed; this
    /// job was refused. `detail` says which paths.
    #[error("{path} is the destination of another download under another spelling ({detail})", path = path.display())]
    SameFileInUse { path: PathBuf, detail: String },
    /// The server named the file (`Content-Disposition`) after one that already exists in
    /// the destination directory: a name the server chose never replaces a file. Nothing
    /// was committed.
    #[error("the server names the file {path}, which already exists; a name the server chose never replaces a file (remove it, or name the download's file yourself)", path = path.display())]
    ServerNameTaken { path: PathBuf },
    /// Neither the URL nor the response named the file (the URL's name is empty or unusable,
    /// such as `a.haul-part` or one holding a `/`), so haul named it `path`
    /// ([`crate::download::FALLBACK_NAME`]), and a file of that name exists: a name haul
    /// chose never replaces a file. Nothing was committed.
    #[error("neither the URL nor the server gives the file a usable name, and {path}, the name haul would give it, already exists; a name haul chose never replaces a file (name the download's file yourself)", path = path.display())]
    FallbackNameTaken { path: PathBuf },
}

/// How a `Status` error says when the server asked to be asked again: the error then
/// tells why a download that gave up did not wait (`--retry-max-time` shorter than that).
fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!(" (Retry-After: {}s)", wait.as_secs()),
        None => String::new(),
    }
}

impl DownloadError {
    /// The error of a job whose dependency `dependency` failed with `error`: its cause is
    /// `error`, or the cause `error` carries when it is itself a dependency's failure.
    pub fn dependency_failed(dependency: u64, error: DownloadError) -> DownloadError {
        let cause = match error {
            DownloadError::DependencyFailed { cause, .. } => cause,
            other => Box::new(other),
        };
        DownloadError::DependencyFailed { dependency, cause }
    }

    /// Whether trying again (after a delay) could succeed.
    pub fn retryable(&self) -> bool {
        match self {
            DownloadError::Connect { failure, .. } => {
                !matches!(failure.kind, IoErrorKind::Tls | IoErrorKind::ProxyRefused)
            }
            DownloadError::Connection { failure, .. } => failure.kind != IoErrorKind::Tls,
            DownloadError::Timeout { .. } => true,
            DownloadError::Protocol { source, .. } => matches!(
                source,
                HttpError::Truncated { .. } | HttpError::ShortRange { .. }
            ),
            DownloadError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            DownloadError::RangeMismatch { .. } | DownloadError::CircuitOpen { .. } => true,
            DownloadError::InvalidRequest(_)
            | DownloadError::DestinationInUse { .. }
            | DownloadError::PartialInUse { .. }
            | DownloadError::SameFileInUse { .. }
            | DownloadError::ServerNameTaken { .. }
            | DownloadError::FallbackNameTaken { .. }
            | DownloadError::TooManyRedirects { .. }
            | DownloadError::RedirectLoop { .. }
            | DownloadError::BadRedirect { .. }
            | DownloadError::SizeMismatch { .. }
            | DownloadError::TooLarge { .. }
            | DownloadError::HashMismatch { .. }
            | DownloadError::ChecksumMismatch { .. }
            | DownloadError::LocalIo { .. }
            | DownloadError::Cancelled
            | DownloadError::ClientStopped
            | DownloadError::DependencyFailed { .. }
            | DownloadError::DependencyUnknown { .. } => false,
        }
    }

    /// Whether this failure says the origin is unhealthy (it lowers the mirror's score, and
    /// but for the exception of [`DownloadError::counts_toward_breaker`] counts towards the
    /// origin's circuit breaker): it could not be reached, broke the connection or the
    /// protocol, timed out, or answered 408, 429, 502, 503 or 504. A 500
    /// is retried but not counted: it is usually one path's failure (a broken file or
    /// handler), and counting it let a few broken files of a list open the breaker for the
    /// good ones. A proxy refusing the tunnel says nothing about the origin either.
    pub fn counts_against_origin(&self) -> bool {
        match self {
            DownloadError::Connect { failure, .. } => !matches!(
                failure.kind,
                IoErrorKind::ProxyRefused | IoErrorKind::ProxyUnreachable
            ),
            DownloadError::Connection { .. }
            | DownloadError::Timeout { .. }
            | DownloadError::Protocol { .. } => true,
            DownloadError::Status { status, .. } => self.retryable() && *status != 500,
            _ => false,
        }
    }

    /// Whether an established connection broke under the request: reset, closed, or a body
    /// cut short. This is what every connection in flight suffers at once when a server
    /// restarts or a network path blips, so for the breaker such failures of requests in
    /// flight together are one incident (see
    /// [`Breaker::on_request_failure`](crate::policy::Breaker::on_request_failure)). A
    /// timeout, a refused connection or an error answer is not: each concurrent request that
    /// waited out its timeout or got its own answer says something of its own.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            DownloadError::Connection { .. }
                | DownloadError::Protocol {
                    source: crate::http::HttpError::Truncated { .. },
                    ..
                }
        )
    }

    /// Whether this failure counts towards the origin's circuit breaker: one that counts
    /// against the origin, except a 429 or 503 that says when to come back (`Retry-After`).
    /// That answer comes from a server that is up and chose to say "not now" to one request,
    /// and the retry already waits as long as it asked. Many servers give it per file (a
    /// CDN filling its cache, a mirror syncing a file on its first request): counted, the
    /// first requests of a list's concurrent jobs opened the breaker for a minute or more,
    /// and each half-open probe (a new file, refused once again) doubled the cool-down, so
    /// a list whose every file was served a second later failed with `CircuitOpen`. It
    /// still lowers the origin's mirror score (`counts_against_origin`). The cost: an origin
    /// that answers every request so (down for maintenance) is not cut off by its breaker;
    /// each job still waits as told, and gives up when that is past its retry time limit.
    pub fn counts_toward_breaker(&self) -> bool {
        match self {
            DownloadError::Status {
                status: 429 | 503,
                retry_after: Some(_),
                ..
            } => false,
            _ => self.counts_against_origin(),
        }
    }

    /// Whether the failure belongs to the URL rather than to the file: it answered a client
    /// error (404, 403, 410, ...), its TLS or its proxy failed, or its redirects went wrong.
    /// Another URL of the same file (a mirror) may well serve it, though retrying this one
    /// cannot help.
    pub fn another_url_may_serve(&self) -> bool {
        match self {
            DownloadError::Status { .. }
            | DownloadError::Connect { .. }
            | DownloadError::Connection { .. }
            | DownloadError::TooManyRedirects { .. }
            | DownloadError::RedirectLoop { .. }
            | DownloadError::BadRedirect { .. } => !self.retryable(),
            _ => false,
        }
    }

    /// The coarse class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            DownloadError::InvalidRequest(_)
            | DownloadError::DestinationInUse { .. }
            | DownloadError::PartialInUse { .. }
            | DownloadError::SameFileInUse { .. }
            | DownloadError::ServerNameTaken { .. }
            | DownloadError::FallbackNameTaken { .. }
            | DownloadError::DependencyUnknown { .. } => ErrorClass::Usage,
            DownloadError::Connect { .. }
            | DownloadError::Connection { .. }
            | DownloadError::Timeout { .. }
            | DownloadError::Protocol { .. }
            | DownloadError::RangeMismatch { .. }
            | DownloadError::CircuitOpen { .. } => ErrorClass::Network,
            // Why the dependant did not run is why its dependency failed: a dependency
            // whose bytes failed verification is a verification failure of the set.
            DownloadError::DependencyFailed { cause, .. } => cause.class(),
            // Redirects that go in a circle, or on and on, are what the server answered: its
            // HTTP responses are at fault, not the network that carried them.
            DownloadError::Status { .. }
            | DownloadError::TooManyRedirects { .. }
            | DownloadError::RedirectLoop { .. }
            | DownloadError::BadRedirect { .. } => ErrorClass::HttpStatus,
            DownloadError::SizeMismatch { .. }
            | DownloadError::TooLarge { .. }
            | DownloadError::HashMismatch { .. }
            | DownloadError::ChecksumMismatch { .. } => ErrorClass::Verification,
            DownloadError::LocalIo { .. } => ErrorClass::LocalIo,
            DownloadError::Cancelled | DownloadError::ClientStopped => ErrorClass::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> DownloadError {
        DownloadError::Status {
            url: "http://x/".into(),
            status: code,
            retry_after: None,
        }
    }

    #[test]
    fn only_transient_statuses_are_retryable() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code).retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 416, 501] {
            assert!(!status(code).retryable(), "{code}");
        }
    }

    #[test]
    fn verification_failures_are_not_retryable_and_classified() {
        let e = DownloadError::HashMismatch {
            url: "http://x/a".into(),
            path: "d/a".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert!(!e.retryable());
        assert_eq!(e.class(), ErrorClass::Verification);
    }

    #[test]
    fn verification_failures_say_which_download_failed() {
        let (url, path) = (String::from("http://h/b.iso"), PathBuf::from("d/b.iso"));
        let hash = DownloadError::HashMismatch {
            url: url.clone(),
            path: path.clone(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(
            hash.to_string(),
            "sha256 mismatch for http://h/b.iso (to d/b.iso): expected aa, got bb"
        );
        let size = DownloadError::SizeMismatch {
            url: url.clone(),
            path: path.clone(),
            expected: 10,
            actual: 12,
            at_least: false,
        };
        assert_eq!(
            size.to_string(),
            "size mismatch for http://h/b.iso (to d/b.iso): expected 10 bytes, got 12"
        );
        let large = DownloadError::TooLarge {
            url,
            path,
            limit: 10,
            seen: 12,
        };
        assert_eq!(
            large.to_string(),
            "body of http://h/b.iso (to d/b.iso) exceeds the maximum size of 10 bytes (at least 12 bytes)"
        );
        assert_eq!(large.class(), ErrorClass::Verification);
    }

    #[test]
    fn a_checksum_mismatch_names_its_algorithm_and_download_and_is_a_verification_failure() {
        let e = DownloadError::ChecksumMismatch {
            algorithm: ChecksumAlgorithm::Md5,
            url: "http://h/b.iso".into(),
            path: "d/b.iso".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(
            e.to_string(),
            "md5 checksum mismatch for http://h/b.iso (to d/b.iso): expected aa, got bb"
        );
        assert_eq!(e.class(), ErrorClass::Verification);
        assert!(!e.retryable());
        assert!(!e.counts_against_origin());
        assert!(!e.another_url_may_serve());
    }

    #[test]
    fn a_failed_dependency_says_why_and_takes_its_class() {
        let hash = DownloadError::HashMismatch {
            url: "http://h/a".into(),
            path: "d/a".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        let e = DownloadError::DependencyFailed {
            dependency: 3,
            cause: Box::new(hash),
        };
        assert_eq!(
            e.to_string(),
            "dependency job#3 failed: sha256 mismatch for http://h/a (to d/a): expected aa, got bb"
        );
        assert_eq!(e.class(), ErrorClass::Verification);
        assert!(!e.retryable());
        // A chain of dependants carries the first failure, and its class, to its end, one
        // level deep however long the chain.
        let mut chained = status(404);
        for dependency in 3..3_000 {
            chained = DownloadError::dependency_failed(dependency, chained);
        }
        assert_eq!(chained.class(), ErrorClass::HttpStatus);
        assert_eq!(
            chained.to_string(),
            "dependency job#2999 failed: http://x/ answered HTTP 404"
        );
        let DownloadError::DependencyFailed { cause, .. } = &chained else {
            unreachable!()
        };
        assert_eq!(**cause, status(404));
    }

    #[test]
    fn tls_failures_are_not_retryable_but_resets_are() {
        let tls = DownloadError::Connect {
            origin: "https://h:443".into(),
            failure: IoFailure::new(IoErrorKind::Tls, "bad cert"),
        };
        assert!(!tls.retryable());
        let reset = DownloadError::Connection {
            origin: "http://h:80".into(),
            failure: IoFailure::new(IoErrorKind::Reset, "reset"),
        };
        assert!(reset.retryable());
        let truncated = DownloadError::Protocol {
            origin: "http://h:80".into(),
            source: HttpError::Truncated {
                expected: Some(10),
                received: 5,
            },
        };
        assert!(truncated.retryable());
    }

    #[test]
    fn redirects_that_lead_nowhere_are_the_servers_http_answer_not_a_network_failure() {
        let errors = [
            DownloadError::RedirectLoop {
                url: "http://h/a".into(),
            },
            DownloadError::TooManyRedirects {
                limit: 10,
                url: "http://h/r11".into(),
            },
        ];
        for e in errors {
            assert_eq!(e.class(), ErrorClass::HttpStatus, "{e}");
            assert!(!e.retryable() && e.another_url_may_serve(), "{e}");
        }
    }

    #[test]
    fn a_malformed_head_is_a_protocol_failure_whose_message_says_so() {
        for source in [
            HttpError::MalformedHead("invalid response status".into()),
            HttpError::InvalidContentLength("conflicting values 3 and 4".into()),
        ] {
            let e = DownloadError::Protocol {
                origin: "http://h:80".into(),
                source,
            };
            assert_eq!(e.class(), ErrorClass::Network);
            assert!(!e.retryable());
            let message = e.to_string();
            assert!(
                message.starts_with(
                    "HTTP protocol error from http://h:80: malformed HTTP response head: "
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn a_429_or_503_saying_when_to_come_back_lowers_the_score_but_does_not_trip_the_breaker() {
        let status = |status, retry_after| DownloadError::Status {
            url: "http://h/f".into(),
            status,
            retry_after,
        };
        let later = Some(Duration::from_secs(1));
        for code in [429, 503] {
            assert!(status(code, later).counts_against_origin(), "{code}");
            assert!(!status(code, later).counts_toward_breaker(), "{code}");
            assert!(status(code, None).counts_toward_breaker(), "{code}");
        }
        // Other failures count where they count against the origin.
        assert!(status(502, later).counts_toward_breaker());
        assert!(!status(500, None).counts_toward_breaker());
    }

    #[test]
    fn a_status_error_says_the_retry_after_it_carried() {
        let asked = DownloadError::Status {
            url: "http://h/f".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            asked.to_string(),
            "http://h/f answered HTTP 429 (Retry-After: 3600s)"
        );
        let plain = DownloadError::Status {
            url: "http://h/f".into(),
            status: 503,
            retry_after: None,
        };
        assert_eq!(plain.to_string(), "http://h/f answered HTTP 503");
    }

    #[test]
    fn an_open_breaker_says_how_long_in_tenths_of_a_second() {
        let e = DownloadError::CircuitOpen {
            origin: "http://h:80".into(),
            retry_in: Duration::from_nanos(239_000_336_276),
            last_failure: "server answered 503".into(),
        };
        assert_eq!(
            e.to_string(),
            "http://h:80 is failing (circuit breaker open for another 239.0s; last failure: server answered 503) and no mirror is available"
        );
    }

    #[test]
    fn a_proxy_refusing_the_tunnel_is_final_says_nothing_of_the_origin_and_a_mirror_may_serve() {
        let refused = DownloadError::Connect {
            origin: "https://h:443".into(),
            failure: IoFailure::new(IoErrorKind::ProxyRefused, "proxy answered 407"),
        };
        assert!(!refused.retryable());
        assert!(!refused.counts_against_origin());
        assert!(refused.another_url_may_serve());
        // A proxy that is down: worth another try, but not the origin's fault either.
        let down = DownloadError::Connect {
            origin: "https://h:443".into(),
            failure: IoFailure::new(
                IoErrorKind::ProxyUnreachable,
                "proxy 127.0.0.1:9 unreachable",
            ),
        };
        assert!(down.retryable());
        assert!(!down.counts_against_origin());
        let status = |status| DownloadError::Status {
            url: "http://h/f".into(),
            status,
            retry_after: None,
        };
        // A broken path's 500 is retried but not held against its origin; a 503 is both.
        assert!(status(500).retryable() && !status(500).counts_against_origin());
        assert!(status(503).retryable() && status(503).counts_against_origin());
        assert!(status(404).another_url_may_serve() && !status(503).another_url_may_serve());
    }
}
