//! haul-origin: a local HTTP/1.1 origin on 127.0.0.1 with scriptable faults.
//!
//! It exists for haul's integration tests, the `haul demo` command and benchmarks: a test
//! starts an [`Origin`], registers content at paths with a [`Behavior`] (normal, range
//! ignored, chunked, close-delimited, truncated, stalled, trickling, redirects, error
//! statuses, an origin that recovers, ...), points the client at [`Origin::url`], and then
//! inspects what the client sent through [`Origin::requests`].
//!
//! It owns: the server (axum + hyper 1 on a 2-worker tokio runtime driven from a background
//! std thread, so it is usable from plain blocking code), the route table, the reference
//! implementation of byte ranges that haul's client is tested against, and the request log
//! with per-connection ids. It does not own: TLS, HTTP/2, compression, or anything a
//! production server needs (limits, timeouts against slow clients, access control). It is
//! **not a production server**: bind it only to loopback and only for tests and demos.
//!
//! Shutdown happens on [`Drop`]: the server stops accepting, lets in-flight responses finish
//! for a short grace period, then tears the runtime down, so a stalled response never keeps
//! `drop` waiting much longer than about 1 s.

#![forbid(unsafe_code)]

mod body;
mod range;
mod respond;
mod server;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::state::Shared;

/// How long in-flight responses may keep running after shutdown was requested before the
/// runtime is torn down (stalled responses are then dropped).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);
/// How long the runtime teardown may wait for blocking file reads to finish.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(500);

/// What went wrong while configuring the origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// A directory given to [`Origin::try_serve_dir`] could not be walked.
    #[error("cannot read directory {path} to serve it: {source}")]
    ReadDir {
        /// The directory (or subdirectory) that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// A running origin server on `127.0.0.1:<ephemeral port>`. Shuts down on drop.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server_thread: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts an empty origin (every path answers 404) on `127.0.0.1:0`.
    pub fn start() -> std::io::Result<Origin> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("haul-origin-worker")
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared::new());
        let router = respond::router(Arc::clone(&shared));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server_thread = std::thread::Builder::new()
            .name(format!("haul-origin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(server::accept_loop(
                    listener,
                    router,
                    shutdown_rx,
                    SHUTDOWN_GRACE,
                ));
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
            })?;
        tracing::debug!(%addr, "haul-origin started");
        Ok(Origin {
            addr,
            shared,
            shutdown,
            server_thread: Some(server_thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"http://127.0.0.1:PORT"` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `body` at `path` with `behavior`, replacing any previous route at `path`
    /// (its request counter for [`Behavior::FailTimes`] starts again at zero).
    pub fn route(&self, path: &str, body: impl Into<Bytes>, behavior: Behavior) {
        self.shared.set_route(path, body.into(), behavior);
    }

    /// Serves every regular file under `dir` (recursively) at `"/" + relative path` with
    /// [`Behavior::Normal`]. Files are read from disk in chunks per request, never loaded
    /// whole. Panics if `dir` cannot be walked (use [`Origin::try_serve_dir`] to handle that).
    pub fn serve_dir(&self, dir: &Path) {
        if let Err(error) = self.try_serve_dir(dir) {
            panic!("haul-origin: {error}");
        }
    }

    /// Like [`Origin::serve_dir`] but reports a directory that cannot be walked; returns
    /// how many files were registered.
    pub fn try_serve_dir(&self, dir: &Path) -> Result<usize, OriginError> {
        self.shared.add_dir(dir)
    }

    /// Replaces the content at `path` (so its ETag and Last-Modified change), keeping the
    /// route's behaviour and request counter. Creates a [`Behavior::Normal`] route if
    /// `path` has none.
    pub fn set_body(&self, path: &str, body: impl Into<Bytes>) {
        self.shared.replace_body(path, body.into());
    }

    /// The ETag the origin currently sends for the in-memory content at `path`, with its
    /// quotes (`None` for unknown paths and for files from [`Origin::serve_dir`]).
    pub fn etag(&self, path: &str) -> Option<String> {
        self.shared.memory_etag(path)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// The requests whose path (ignoring any query) or path+query equals `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RequestRecord> {
        self.shared
            .requests()
            .into_iter()
            .filter(|record| record.path == path || record.path_without_query() == path)
            .collect()
    }

    /// Forgets the request log (routes and their counters stay).
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // The receiver may already be gone if the server thread died; nothing to signal then.
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.server_thread.take() {
            if thread.join().is_err() {
                tracing::error!(addr = %self.addr, "haul-origin server thread panicked");
            }
        }
        tracing::debug!(addr = %self.addr, "haul-origin stopped");
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish()
    }
}

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The method, e.g. `"GET"`.
    pub method: String,
    /// Path and query as sent, e.g. `"/file.bin?x=1"`.
    pub path: String,
    /// Header names (lowercase) and values in the order received; non-UTF-8 bytes are
    /// replaced lossily.
    pub headers: Vec<(String, String)>,
    /// Distinct per accepted TCP connection (starting at 1): equal ids mean the client
    /// reused a keep-alive connection.
    pub connection_id: u64,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The path without its query string.
    pub fn path_without_query(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(&self.path, |(path, _)| path)
    }
}

/// How the origin answers requests to one path.
///
/// Unless stated otherwise a behaviour serves `GET` and `HEAD` (other methods get 405),
/// sends a strong ETag (`"` + first 16 hex digits of the body's SHA-256 + `"`),
/// `Last-Modified`, and honours a single byte range exactly like [`Behavior::Normal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with Content-Length, strong ETag, Last-Modified, `Accept-Ranges: bytes`.
    /// Honours `Range: bytes=N-`, `bytes=N-M` (M clipped to length-1) and `bytes=-S` with
    /// 206 + Content-Range; an unsatisfiable range gets 416 with `Content-Range: bytes */LEN`;
    /// `If-Range` that does not match (ETag compared strongly, or an HTTP date compared with
    /// Last-Modified) gets the full 200; several ranges get the full 200; a malformed Range
    /// or a unit other than `bytes` is ignored (200). Range is ignored for HEAD (RFC 9110).
    Normal,
    /// Like Normal but ignores Range entirely (always 200 with the full body) and sends no
    /// `Accept-Ranges`.
    IgnoreRange,
    /// Like Normal, but honours only ranges that start at byte 0 (`bytes=0-`, `bytes=0-M`):
    /// any other range gets the full 200, as from a cache that ignores ranges it does not
    /// hold. A client that splits a download over several connections sees its first
    /// request honoured and its other segments answered with the whole file.
    RangeFromZeroOnly,
    /// Like Normal, but a 206 covers at most `max` bytes from the range's start (its
    /// Content-Range says so), as some CDNs and media servers cap what one reply carries.
    CapRange {
        /// The most bytes one range reply carries (0 is treated as 1).
        max: u64,
    },
    /// `Transfer-Encoding: chunked` (no Content-Length), one HTTP chunk per `chunk` bytes.
    Chunked {
        /// Bytes per HTTP chunk (0 is treated as 1).
        chunk: usize,
    },
    /// No Content-Length and no chunking: the body ends when the server closes the
    /// connection. The status line is `HTTP/1.0` with `Connection: close`, which is how
    /// hyper produces a close-delimited body.
    CloseDelimited,
    /// Declares the full Content-Length but sends only the first `after` bytes of the
    /// response body, then aborts the connection.
    Truncate {
        /// Body bytes sent before the abort.
        after: u64,
    },
    /// Declares the full Content-Length, sends the first `after` bytes of the response body,
    /// then nothing more, keeping the connection open until shutdown.
    Stall {
        /// Body bytes sent before stalling.
        after: u64,
    },
    /// Sends the body at about `bytes_per_sec`, in pieces of about 1/20 s.
    Trickle {
        /// Target rate (0 is treated as 1).
        bytes_per_sec: u64,
    },
    /// Answers `status` with the `Location` header value sent verbatim (may be relative).
    Redirect {
        /// 301, 302, 303, 307 or 308 (any valid status code is sent as given).
        status: u16,
        /// The `Location` value.
        location: String,
    },
    /// Always answers `status` with a short text body; `retry_after` adds `Retry-After`.
    Status {
        /// The status code to send.
        status: u16,
        /// The `Retry-After` value, sent verbatim.
        retry_after: Option<String>,
    },
    /// Answers `status` to the first `times` requests to this path, then behaves like Normal.
    FailTimes {
        /// How many requests fail.
        times: u32,
        /// The failing status code.
        status: u16,
    },
    /// A body with no Content-Length (close-delimited, like [`Behavior::CloseDelimited`])
    /// made of the content followed by `extra` further `#` bytes, then close: the client
    /// receives more data than the content it expected. Range is ignored.
    Endless {
        /// Bytes sent after the content.
        extra: u64,
    },
    /// Normal, plus `Content-Disposition: attachment; filename="<filename>"`.
    Attachment {
        /// The file name put in the header.
        filename: String,
    },
    /// Normal when the request's Authorization header equals `expected`, else 401 with
    /// `WWW-Authenticate: Basic realm="haul-origin"`.
    RequireAuth {
        /// The exact Authorization value accepted.
        expected: String,
    },
}
