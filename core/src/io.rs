//! The I/O vocabulary between the engine and a runtime.
//!
//! The engine asks for I/O with [`IoRequest`]s and learns the outcome from exactly one
//! [`IoResult`] per request, delivered as [`crate::Input::Io`]. Everything the engine knows
//! about sockets and files arrives through this module; runtimes (blocking, tokio, smol, the
//! simulator) are interchangeable because they all speak it.
//!
//! Ownership: sockets are named by [`ConnId`] and open files by [`FileId`]; both are chosen by
//! the engine. A runtime keeps a table from those ids to its own handles. A runtime must
//! complete every request exactly once, including requests on a connection that was closed
//! while they were pending (complete them with [`IoResult::Failed`]).

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;

use crate::http::Origin;

/// Identifies one I/O request and its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// Identifies a connection chosen by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Identifies an open file chosen by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// One request for I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    /// Echoed back in the completion.
    pub id: IoId,
    /// What to do.
    pub op: IoOp,
}

/// The operations a runtime performs for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    /// Open a connection to `origin`, ready for plaintext HTTP/1.1: resolve and connect
    /// (to the proxy when `via` is set), then, for a tunnelling hop, send `CONNECT
    /// host:port` (with `Proxy-Authorization` when the hop has credentials) and require a
    /// 2xx answer, then, for an https origin, complete a TLS handshake with SNI and
    /// certificate verification for `origin.host`. Completes with [`IoResult::Done`];
    /// failures use [`IoErrorKind::Dns`], [`IoErrorKind::ConnectFailed`] (also a proxy that
    /// refuses the tunnel) or [`IoErrorKind::Tls`] (the message names the host).
    Connect {
        conn: ConnId,
        origin: Origin,
        via: Option<crate::proxy::ProxyHop>,
    },
    /// Write all of `data` to the connection. Completes with [`IoResult::Done`].
    Send { conn: ConnId, data: Bytes },
    /// Read the next bytes available on the connection: any amount the runtime likes up to
    /// `max` bytes (the engine asks for less only under a rate limit, so that one read does
    /// not take more than the limit allows). Completes with [`IoResult::Data`] (never empty,
    /// at most `max` bytes) or [`IoResult::Eof`].
    Recv { conn: ConnId, max: usize },
    /// Close the connection; pending requests on it complete with a failure.
    /// Completes with [`IoResult::Done`].
    Close { conn: ConnId },
    /// Read a whole small file (at most `max_len` bytes). Completes with [`IoResult::Data`]
    /// (possibly empty) or [`IoResult::NotFound`].
    ReadFile { path: PathBuf, max_len: u64 },
    /// Replace a small file atomically (temporary sibling, fsync, rename).
    /// Completes with [`IoResult::Done`].
    WriteFileAtomic { path: PathBuf, data: Bytes },
    /// Open (creating if absent) a file for reading and writing. With `truncate` the file
    /// is emptied. Completes with [`IoResult::Opened`] carrying its current length.
    Open {
        file: FileId,
        path: PathBuf,
        truncate: bool,
    },
    /// Create a new, empty file for reading and writing in `path`'s directory without a
    /// name (Linux `O_TMPFILE`); it is named by [`IoOp::Publish`], and vanishes if closed or
    /// lost (a crash) before. An executor that cannot create unnamed files creates (and
    /// truncates) the file at `path` instead. Completes with [`IoResult::Opened`] (length 0).
    OpenUnnamed { file: FileId, path: PathBuf },
    /// Give the file opened by [`IoOp::OpenUnnamed`] (with the same `path`) the name `to`,
    /// replacing a file there atomically, and close it. With `sync`, a [`IoOp::Sync`] of the
    /// file issued just before has made its data durable first, and the new name is made
    /// durable (the directory synced) before completion. Completes with [`IoResult::Done`];
    /// on failure nothing at `to` changed, the file is closed, and what is left at `path`
    /// (only after the fallback) is the caller's to remove.
    Publish {
        file: FileId,
        path: PathBuf,
        to: PathBuf,
        sync: bool,
    },
    /// Open an existing file for reading only (never creating it). Completes with
    /// [`IoResult::Opened`] or [`IoResult::NotFound`].
    OpenRead { file: FileId, path: PathBuf },
    /// Copy `from` to `to` atomically (temporary sibling, fsync, rename, directory sync).
    /// Completes with [`IoResult::Done`].
    CopyFile { from: PathBuf, to: PathBuf },
    /// Read up to `len` bytes at `offset`. Completes with [`IoResult::Data`] (empty at EOF).
    ReadAt { file: FileId, offset: u64, len: u64 },
    /// Write all of `data` at `offset`. Completes with [`IoResult::Done`].
    WriteAt {
        file: FileId,
        offset: u64,
        data: Bytes,
    },
    /// The SHA-256 of the file's first `len` bytes, issued after every write of them.
    /// Completes with [`IoResult::Digest`]. Asked only with
    /// [`Config::executor_digests`](crate::Config::executor_digests), for a file the engine opened empty and wrote from
    /// offset 0 with one transfer (unnamed files, downloads without segments): an executor
    /// may keep a running digest of writes made in order from offset 0 (off the thread that
    /// drives the engine) and must otherwise read the bytes back.
    ///
    /// `keep`: a checkpoint's digest of the bytes written so far, which the state file
    /// records so that a resume can prove the partial still holds them. The engine writes
    /// on after it: an executor keeps its running digest going (it only looks at it).
    /// Without `keep` it is the final digest, and nothing more is written to the file.
    Digest { file: FileId, len: u64, keep: bool },
    /// Set the file's length. Completes with [`IoResult::Done`].
    SetLen { file: FileId, len: u64 },
    /// Flush the file's data to stable storage. Completes with [`IoResult::Done`].
    Sync { file: FileId },
    /// Close the file. Completes with [`IoResult::Done`]. `then` says whether a `Rename` of
    /// the file's path follows (a commit): an executor that locks partials against other
    /// processes keeps the lock until that rename, so that nobody opens the path between.
    CloseFile { file: FileId, then: AfterClose },
    /// Rename `from` over `to` atomically, then, if `sync`, make the rename durable (sync the
    /// parent directory). Completes with [`IoResult::Done`].
    Rename {
        from: PathBuf,
        to: PathBuf,
        sync: bool,
    },
    /// Remove a file; a missing file is success. Completes with [`IoResult::Done`].
    Remove { path: PathBuf },
    /// Remove the partial at `path` unless another process holds it (the lock an executor
    /// that locks partials takes at [`IoOp::Open`]): it is removed while this request holds
    /// the lock, so no other process's download can be in it. Nothing is created or
    /// followed: no missing directory is made, and a symbolic link there is removed itself.
    /// Completes with [`IoResult::Done`], [`IoResult::NotFound`] when nothing is there, or a
    /// failure of kind [`IoErrorKind::Busy`] when it is held (and left as it is).
    RemoveUnheld { path: PathBuf },
}

/// What follows the close of a file ([`IoOp::CloseFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Nothing that needs the file held: any lock on it goes with the close.
    Done,
    /// A `Rename` of its path (the commit of a partial): its lock is held until then.
    Renamed,
    /// A `Remove` of its path (a discarded partial): its lock is held until then, so no
    /// other process opens the partial between the close and the removal.
    Removed,
}

/// The single completion of an [`IoRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoResult {
    /// The operation succeeded and has nothing to report.
    Done,
    /// Bytes read from a connection or file.
    Data(Bytes),
    /// The peer closed its side of the connection cleanly.
    Eof,
    /// A file was opened; its length at open time.
    Opened { len: u64 },
    /// The file asked for does not exist.
    NotFound,
    /// The SHA-256 asked for by [`IoOp::Digest`].
    Digest([u8; 32]),
    /// The operation failed.
    Failed(IoFailure),
}

/// Why an I/O operation failed, as far as the engine needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure {
    /// The class of failure.
    pub kind: IoErrorKind,
    /// A human-readable detail from the runtime (e.g. the OS error message).
    pub message: String,
}

impl IoFailure {
    /// A failure of `kind` with a message.
    pub fn new(kind: IoErrorKind, message: impl Into<String>) -> Self {
        IoFailure {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for IoFailure {
    /// The failure's class in words, then its message (`connection failed: 127.0.0.1:1:
    /// Connection refused`); a failure of no particular class is its message alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.kind {
            IoErrorKind::Dns => "name resolution failed",
            IoErrorKind::ConnectFailed => "connection failed",
            IoErrorKind::Reset => "connection broken",
            IoErrorKind::Tls => "TLS failed",
            IoErrorKind::ProxyRefused => "the proxy refused",
            IoErrorKind::ProxyUnreachable => "the proxy is unreachable",
            IoErrorKind::Cancelled => "abandoned",
            IoErrorKind::NoSpace => "no space left",
            IoErrorKind::PermissionDenied => "permission denied",
            IoErrorKind::Busy => "in use by another process",
            IoErrorKind::SameFile => "already being written",
            IoErrorKind::Replaced => "no longer this download's",
            IoErrorKind::Other => return f.write_str(&self.message),
        };
        write!(f, "{class}: {}", self.message)
    }
}

/// Failure classes the engine decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    /// The host name could not be resolved.
    Dns,
    /// The connection was refused or could not be established.
    ConnectFailed,
    /// The connection was reset or broke while in use.
    Reset,
    /// The TLS handshake or certificate check failed (not worth retrying).
    Tls,
    /// The proxy refused to open a tunnel: it answered `CONNECT` with a client error (407
    /// without or with wrong credentials, 403 for a port it does not allow). Retrying
    /// cannot help, and it says nothing about the origin behind the proxy.
    ProxyRefused,
    /// The proxy itself could not be reached: its name did not resolve or it refused or
    /// dropped the connection. Worth retrying, but it says nothing about the origin behind
    /// the proxy, so it does not count against the origin's breaker.
    ProxyUnreachable,
    /// The operation was abandoned because its connection or file was closed.
    Cancelled,
    /// The disk is full or a quota was hit.
    NoSpace,
    /// Permission denied.
    PermissionDenied,
    /// Another process holds the file (an exclusive lock on a partial): it is writing it.
    /// Nothing of the file was changed.
    Busy,
    /// The path names a file that another download of this executor is writing under
    /// another spelling of its path (through `..` or a symbolic link to a directory).
    /// Nothing of the file was changed.
    SameFile,
    /// A partial's path no longer names the file this download wrote (another process
    /// removed it, and perhaps made its own there): nothing was renamed, published or
    /// removed, and what is at the path now is not this download's to touch.
    Replaced,
    /// Any other local I/O failure.
    Other,
}

impl IoErrorKind {
    /// Whether this failure concerns the network rather than the local disk.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            IoErrorKind::Dns
                | IoErrorKind::ConnectFailed
                | IoErrorKind::Reset
                | IoErrorKind::Tls
                | IoErrorKind::ProxyRefused
                | IoErrorKind::ProxyUnreachable
                | IoErrorKind::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages read as words, not as Rust's name of the variant (`ConnectFailed: ...`).
    #[test]
    fn failures_display_their_class_in_words_then_the_message() {
        let refused = IoFailure::new(
            IoErrorKind::ConnectFailed,
            "127.0.0.1:1: Connection refused",
        );
        assert_eq!(
            refused.to_string(),
            "connection failed: 127.0.0.1:1: Connection refused"
        );
        let other = IoFailure::new(IoErrorKind::Other, "sync: file is not open");
        assert_eq!(other.to_string(), "sync: file is not open");
    }
}
