//! Scripted tests of the [`Engine`] against an in-memory driver: no sockets, no files.
//!
//! The driver ([`Harness`]) owns
//! - a fake file system ([`FakeFs`]): names pointing at inodes, an open-file table keyed by
//!   [`FileId`], the durable copy of each inode as of its last `Sync`, and injectable failures
//!   (`WriteAt` runs out of space after N bytes, `Rename` fails);
//! - fake connections answered by scripted servers: each request is parsed with httparse and
//!   handed to a closure that returns a [`Reply`] (bytes cut into pieces, optionally delayed,
//!   then EOF, a reset, or nothing: a stall); connects can fail or hang; [`serve_range`]
//!   answers `Range: bytes=a-` and `bytes=a-b` with a 206 (honouring `If-Range` against a
//!   strong ETag); the harness records how many bytes each connection delivered and the most
//!   connections open at once per origin;
//! - a virtual clock that jumps to the next deadline ([`Engine::poll_timeout`] or the next
//!   scripted delivery) when no request can complete.
//!
//! On every step it checks the call contract: request ids are never reused, every request is
//! completed exactly once (the engine and the driver agree on what is pending, nothing is
//! left pending or open when the jobs end), operations on one file run in issue order, a tick
//! at a deadline never leaves the deadline in the past (no busy loop), and every state file
//! written names a durable prefix of the partial whose SHA-256 matches. Operations may run in
//! issue order or in a seeded random order (within the per-file rule), and some may be
//! deferred behind everything else or held until a given instant to play a slow disk.
//!
//! The harness is `pub(crate)` so that `engine_sched_tests` (scheduling, segments, limits)
//! reuses it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quickcheck::{Gen, QuickCheck, TestResult};
use sha2::{Digest, Sha256};

use crate::config::{Config, LowSpeedLimit, RetryPolicy};
use crate::download::{Download, Outcome};
use crate::engine::{CancelMode, Engine, Event, Input, JobId, Output};
use crate::error::{DownloadError, TimeoutKind};
use crate::http::{HttpError, Origin};
use crate::io::{
    AfterClose, ConnId, FileId, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult,
};
use crate::resume::{PartState, Validator, STATE_VERSION};
use crate::rng::SeededRng;
use crate::time::Instant;

/// Steps (completions and clock jumps) one harness may take before it is declared spinning.
pub(crate) const MAX_STEPS: usize = 200_000;

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) fn at(d: Duration) -> Instant {
    Instant::from_duration(d)
}

pub(crate) fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(sha(bytes))
}

/// Deterministic, non-repeating-looking test content.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 7) ^ u64::from(seed).wrapping_mul(97)) as u8)
        .collect()
}

pub(crate) fn failure(kind: IoErrorKind, message: &str) -> IoResult {
    IoResult::Failed(IoFailure::new(kind, message))
}

// ------------------------------------------------------------------------ fake file system

#[derive(Debug, Default, Clone)]
pub(crate) struct Inode {
    pub(crate) data: Vec<u8>,
    /// The contents as of the last `Sync` (what a crash would leave).
    pub(crate) durable: Vec<u8>,
}

/// Files by name, inodes, open files; executes the file operations of [`IoOp`].
#[derive(Debug, Default)]
pub(crate) struct FakeFs {
    pub(crate) names: BTreeMap<PathBuf, u64>,
    pub(crate) inodes: BTreeMap<u64, Inode>,
    pub(crate) open: BTreeMap<FileId, u64>,
    pub(crate) next_inode: u64,
    /// Bytes `WriteAt` may still write; the write that needs more fails with `NoSpace`
    /// after writing what fits.
    pub(crate) space_left: Option<u64>,
    pub(crate) fail_rename: bool,
    /// Every `Rename` fails as the runtime's executor fails one whose partial another
    /// process replaced meanwhile (`Replaced`), the partial and state being that process's
    /// now: the test checks they stay.
    pub(crate) partial_replaced: bool,
    /// Every `Sync` fails (an I/O error writing the file back).
    pub(crate) fail_sync: bool,
    /// `ReadAt` returns at most this many bytes (a short read, as `pread` may).
    pub(crate) max_read: Option<u64>,
    /// Paths another process holds locked (it downloads there): an `Open` of one fails
    /// with `Busy` and changes nothing, as the runtime's executor does.
    pub(crate) held_elsewhere: BTreeSet<PathBuf>,
    /// Paths this process may not open (another user's files): `RemoveUnheld` of one fails
    /// with `PermissionDenied`.
    pub(crate) not_ours: BTreeSet<PathBuf>,
    /// Files whose `Open` failed with `Busy`: their later operations fail as not open.
    pub(crate) refused: BTreeSet<FileId>,
    /// Every state file written, in order.
    pub(crate) state_writes: Vec<PartState>,
    pub(crate) violations: Vec<String>,
}

/// `<dest>.haul-part` for `<dest>.haul-state`.
pub(crate) fn part_for_state(state: &Path) -> PathBuf {
    let s = state.to_string_lossy();
    PathBuf::from(format!("{}.haul-part", s.trim_end_matches(".haul-state")))
}

impl FakeFs {
    pub(crate) fn new_inode(&mut self, data: Vec<u8>) -> u64 {
        self.next_inode += 1;
        let inode = Inode {
            durable: data.clone(),
            data,
        };
        self.inodes.insert(self.next_inode, inode);
        self.next_inode
    }

    pub(crate) fn put(&mut self, path: impl Into<PathBuf>, data: &[u8]) {
        let ino = self.new_inode(data.to_vec());
        self.names.insert(path.into(), ino);
    }

    pub(crate) fn get(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        let ino = self.names.get(path.as_ref())?;
        Some(&self.inodes[ino].data)
    }

    pub(crate) fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.names.contains_key(path.as_ref())
    }

    pub(crate) fn open_inode(&mut self, file: FileId, what: &str) -> Result<&mut Inode, IoResult> {
        if self.refused.contains(&file) {
            // Issued behind an open that failed, before its failure was known.
            return Err(failure(IoErrorKind::Other, "file is not open"));
        }
        match self.open.get(&file) {
            Some(ino) => Ok(self.inodes.get_mut(ino).expect("an open file has an inode")),
            None => {
                self.violations
                    .push(format!("{what} on {file:?}, which is not open"));
                Err(failure(IoErrorKind::Other, "bad file descriptor"))
            }
        }
    }

    pub(crate) fn execute(&mut self, op: &IoOp) -> IoResult {
        match op {
            IoOp::ReadFile { path, max_len } => match self.names.get(path) {
                None => IoResult::NotFound,
                Some(ino) => {
                    let data = &self.inodes[ino].data;
                    if data.len() as u64 > *max_len {
                        failure(IoErrorKind::Other, "file larger than max_len")
                    } else {
                        IoResult::Data(Bytes::copy_from_slice(data))
                    }
                }
            },
            IoOp::WriteFileAtomic { path, data } => {
                let ino = self.new_inode(data.to_vec());
                self.names.insert(path.clone(), ino);
                if path.to_string_lossy().ends_with(".haul-state") {
                    self.check_state_write(path, data);
                }
                IoResult::Done
            }
            IoOp::Open {
                file,
                path,
                truncate,
            } => {
                if self.open.contains_key(file) {
                    self.violations
                        .push(format!("{file:?} opened while already open"));
                }
                if self.held_elsewhere.contains(path) {
                    self.refused.insert(*file);
                    return failure(IoErrorKind::Busy, "locked by another process");
                }
                let ino = match self.names.get(path) {
                    Some(ino) => *ino,
                    None => {
                        let ino = self.new_inode(Vec::new());
                        self.names.insert(path.clone(), ino);
                        ino
                    }
                };
                let inode = self.inodes.get_mut(&ino).expect("named inode exists");
                if *truncate {
                    inode.data.clear();
                }
                let len = inode.data.len() as u64;
                self.open.insert(*file, ino);
                IoResult::Opened { len }
            }
            IoOp::OpenUnnamed { file, .. } => {
                if self.open.contains_key(file) {
                    self.violations
                        .push(format!("{file:?} opened while already open"));
                }
                let ino = self.new_inode(Vec::new());
                self.open.insert(*file, ino);
                IoResult::Opened { len: 0 }
            }
            IoOp::Publish {
                file,
                path,
                to,
                sync,
            } => {
                let Some(ino) = self.open.remove(file) else {
                    self.violations
                        .push(format!("Publish of {file:?}, which is not open"));
                    return failure(IoErrorKind::Other, "bad file descriptor");
                };
                // Replacing a file goes through the partial's name, which another process
                // downloading there holds (as the runtime's executor does).
                if self.names.contains_key(to) && self.held_elsewhere.contains(path) {
                    return failure(IoErrorKind::Busy, "partial locked by another process");
                }
                if *sync && self.fail_sync {
                    return failure(IoErrorKind::Other, "injected: sync failed");
                }
                if self.fail_rename {
                    return failure(IoErrorKind::PermissionDenied, "scripted rename failure");
                }
                if *sync {
                    let inode = self.inodes.get_mut(&ino).expect("open inode");
                    inode.durable = inode.data.clone();
                }
                self.names.insert(to.clone(), ino);
                IoResult::Done
            }
            IoOp::OpenRead { file, path } => match self.names.get(path) {
                Some(ino) => {
                    if self.open.contains_key(file) {
                        self.violations
                            .push(format!("{file:?} opened while already open"));
                    }
                    let len = self.inodes[ino].data.len() as u64;
                    self.open.insert(*file, *ino);
                    IoResult::Opened { len }
                }
                None => IoResult::NotFound,
            },
            IoOp::CopyFile { from, to } => match self.names.get(from) {
                Some(ino) => {
                    let data = self.inodes[ino].data.clone();
                    let new = self.new_inode(data.clone());
                    self.inodes.get_mut(&new).expect("new inode").durable = data;
                    self.names.insert(to.clone(), new);
                    IoResult::Done
                }
                None => failure(IoErrorKind::Other, "copy: no such file"),
            },
            IoOp::ReadAt { file, offset, len } => {
                let len = self.max_read.map_or(*len, |max| max.min(*len));
                match self.open_inode(*file, "ReadAt") {
                    Err(e) => e,
                    Ok(inode) => {
                        let start = (*offset as usize).min(inode.data.len());
                        let end = start.saturating_add(len as usize).min(inode.data.len());
                        IoResult::Data(Bytes::copy_from_slice(&inode.data[start..end]))
                    }
                }
            }
            IoOp::Digest { file, len, .. } => match self.open_inode(*file, "Digest") {
                Err(e) => e,
                Ok(inode) => match inode.data.get(..*len as usize) {
                    Some(bytes) => IoResult::Digest(Sha256::digest(bytes).into()),
                    None => failure(IoErrorKind::Other, "file shorter than its digest"),
                },
            },
            IoOp::WriteAt { file, offset, data } => {
                let room = match self.space_left {
                    Some(left) => data.len().min(left as usize),
                    None => data.len(),
                };
                if let Some(left) = &mut self.space_left {
                    *left -= room as u64;
                }
                match self.open_inode(*file, "WriteAt") {
                    Err(e) => e,
                    Ok(inode) => {
                        if room > 0 {
                            let start = *offset as usize;
                            let end = start + room;
                            if inode.data.len() < end {
                                inode.data.resize(end, 0);
                            }
                            inode.data[start..end].copy_from_slice(&data[..room]);
                        }
                        if room < data.len() {
                            failure(IoErrorKind::NoSpace, "no space left on device")
                        } else {
                            IoResult::Done
                        }
                    }
                }
            }
            IoOp::SetLen { file, len } => match self.open_inode(*file, "SetLen") {
                Err(e) => e,
                Ok(inode) => {
                    inode.data.resize(*len as usize, 0);
                    IoResult::Done
                }
            },
            IoOp::Sync { .. } if self.fail_sync => {
                failure(IoErrorKind::Other, "injected: sync failed")
            }
            IoOp::Sync { file } => match self.open_inode(*file, "Sync") {
                Err(e) => e,
                Ok(inode) => {
                    inode.durable = inode.data.clone();
                    IoResult::Done
                }
            },
            IoOp::CloseFile { file, .. } if self.refused.contains(file) => {
                failure(IoErrorKind::Other, "file is not open")
            }
            IoOp::CloseFile { file, .. } => match self.open.remove(file) {
                Some(_) => IoResult::Done,
                None => {
                    self.violations
                        .push(format!("CloseFile on {file:?}, which is not open"));
                    failure(IoErrorKind::Other, "bad file descriptor")
                }
            },
            IoOp::Rename { from, to, .. } => {
                if self.partial_replaced {
                    return failure(IoErrorKind::Replaced, "replaced by another process");
                }
                if self.fail_rename {
                    return failure(IoErrorKind::PermissionDenied, "scripted rename failure");
                }
                match self.names.remove(from) {
                    Some(ino) => {
                        self.names.insert(to.clone(), ino);
                        IoResult::Done
                    }
                    None => failure(IoErrorKind::Other, "rename: no such file"),
                }
            }
            IoOp::Remove { path } => {
                self.names.remove(path);
                IoResult::Done
            }
            IoOp::RemoveUnheld { path } => {
                if self.held_elsewhere.contains(path) {
                    return failure(IoErrorKind::Busy, "locked by another process");
                }
                if self.not_ours.contains(path) {
                    return failure(IoErrorKind::PermissionDenied, "another user's file");
                }
                match self.names.remove(path) {
                    Some(_) => IoResult::Done,
                    None => IoResult::NotFound,
                }
            }
            IoOp::Connect { .. } | IoOp::Send { .. } | IoOp::Recv { .. } | IoOp::Close { .. } => {
                unreachable!("network operation sent to the file system: {op:?}")
            }
        }
    }

    /// A state file may only name bytes that are durable and whose digest it records.
    pub(crate) fn check_state_write(&mut self, path: &Path, data: &[u8]) {
        let state: PartState = match serde_json::from_slice(data) {
            Ok(s) => s,
            Err(e) => {
                self.violations.push(format!(
                    "unparsable state written to {}: {e}",
                    path.display()
                ));
                return;
            }
        };
        let part = part_for_state(path);
        match self.names.get(&part) {
            None => self.violations.push(format!(
                "state {} (verified {}) written while {} does not exist",
                path.display(),
                state.verified,
                part.display()
            )),
            Some(ino) => {
                let durable = &self.inodes[ino].durable;
                let verified = state.verified as usize;
                if verified > durable.len() {
                    self.violations.push(format!(
                        "state names {verified} verified bytes but only {} are durable",
                        durable.len()
                    ));
                } else if sha_hex(&durable[..verified]) != state.prefix_sha256 {
                    self.violations.push(format!(
                        "state names {verified} bytes whose digest does not match the durable partial"
                    ));
                }
            }
        }
        self.state_writes.push(state);
    }

    /// Every state file at rest describes a prefix of its partial.
    pub(crate) fn check_resting_states(&mut self) {
        let states: Vec<PathBuf> = self
            .names
            .keys()
            .filter(|p| p.to_string_lossy().ends_with(".haul-state"))
            .cloned()
            .collect();
        for path in states {
            let data = self.get(&path).expect("listed").to_vec();
            let Ok(state) = serde_json::from_slice::<PartState>(&data) else {
                continue; // a planted state file the engine never touched
            };
            let part = part_for_state(&path);
            let problem = match self.get(&part) {
                None => Some("its partial does not exist".to_string()),
                Some(p) if (p.len() as u64) < state.verified => {
                    Some(format!("its partial holds only {} bytes", p.len()))
                }
                Some(p) if sha_hex(&p[..state.verified as usize]) != state.prefix_sha256 => {
                    Some("its prefix digest does not match the partial".to_string())
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                self.violations.push(format!(
                    "state {} at rest names {} bytes but {problem}",
                    path.display(),
                    state.verified
                ));
            }
        }
    }
}

// ------------------------------------------------------------------------ scripted servers

/// One request as a scripted server sees it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) conn: ConnId,
    /// Requests served on this connection before this one.
    pub(crate) conn_seq: usize,
    /// Requests served by this origin before this one.
    pub(crate) seq: usize,
    pub(crate) at: Instant,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does after the reply's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing: the connection stays open (keep-alive, or a stall).
    Open,
    /// Close cleanly.
    Eof,
    /// Reset the connection.
    Reset,
}

/// A server's answer to one request.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) bytes: Vec<u8>,
    /// Piece sizes in order; the last one repeats. Empty: one piece.
    pub(crate) pieces: Vec<usize>,
    /// Between two pieces.
    pub(crate) gap: Duration,
    pub(crate) then: After,
}

impl Reply {
    pub(crate) fn new(bytes: Vec<u8>) -> Reply {
        Reply {
            bytes,
            pieces: Vec::new(),
            gap: Duration::ZERO,
            then: After::Open,
        }
    }

    pub(crate) fn pieces(mut self, sizes: &[usize]) -> Reply {
        self.pieces = sizes.to_vec();
        self
    }

    pub(crate) fn gap(mut self, gap: Duration) -> Reply {
        self.gap = gap;
        self
    }

    pub(crate) fn then(mut self, then: After) -> Reply {
        self.then = then;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectPlan {
    Accept,
    Fail(IoErrorKind),
    /// Never completes until the engine closes the connection.
    Hang,
}

pub(crate) type Handler = Box<dyn FnMut(&Req) -> Reply>;
pub(crate) type ConnectScript = Box<dyn FnMut(usize) -> ConnectPlan>;

pub(crate) struct Server {
    pub(crate) handler: Handler,
    pub(crate) connect: ConnectScript,
    pub(crate) connects: usize,
    pub(crate) requests: usize,
}

/// What a connection delivers to `Recv`.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    Data(Bytes),
    Eof,
    Reset,
}

#[derive(Debug)]
pub(crate) struct NetConn {
    pub(crate) origin: String,
    pub(crate) plan: ConnectPlan,
    /// Closed by the engine.
    pub(crate) closed: bool,
    /// Request bytes not yet parsed.
    pub(crate) inbox: Vec<u8>,
    /// Scripted deliveries and when they become available.
    pub(crate) queue: VecDeque<(Instant, Wire)>,
    /// The server's side ended (EOF or reset already delivered); it repeats.
    pub(crate) terminal: Option<Wire>,
    pub(crate) served: usize,
    /// The engine issued `Close` for it.
    pub(crate) close_issued: bool,
    /// Its `Connect` completed with a failure.
    pub(crate) connect_failed: bool,
    /// Bytes handed to the engine by `Recv`.
    pub(crate) delivered: usize,
}

impl NetConn {
    pub(crate) fn recv_ready(&self, now: Instant) -> bool {
        self.closed
            || self.queue.front().is_some_and(|(t, _)| *t <= now)
            || (self.queue.is_empty() && self.terminal.is_some())
    }
}

pub(crate) fn enqueue(queue: &mut VecDeque<(Instant, Wire)>, now: Instant, reply: Reply) {
    let mut t = now;
    let mut rest: &[u8] = &reply.bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let size = reply
            .pieces
            .get(i)
            .or(reply.pieces.last())
            .copied()
            .unwrap_or(usize::MAX)
            .clamp(1, rest.len());
        if i > 0 {
            t = t + reply.gap;
        }
        queue.push_back((t, Wire::Data(Bytes::copy_from_slice(&rest[..size]))));
        rest = &rest[size..];
        i += 1;
    }
    match reply.then {
        After::Open => {}
        After::Eof => queue.push_back((t, Wire::Eof)),
        After::Reset => queue.push_back((t, Wire::Reset)),
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A header for [`response`].
pub(crate) fn hdr(name: &str, value: impl ToString) -> (&str, String) {
    (name, value.to_string())
}

/// A response with exactly these headers and body bytes (no framing added).
pub(crate) fn response(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    wire
}

/// A response framed by `Content-Length`.
pub(crate) fn with_length(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut all = headers.to_vec();
    all.push(hdr("Content-Length", body.len()));
    response(status, &all, body)
}

/// A chunked response with chunks of `chunk` bytes.
pub(crate) fn chunked(
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    chunk: usize,
) -> Vec<u8> {
    let mut all = headers.to_vec();
    all.push(hdr("Transfer-Encoding", "chunked"));
    let mut encoded = Vec::new();
    for piece in body.chunks(chunk) {
        encoded.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    response(status, &all, &encoded)
}

/// Length of the response head at the start of `wire`.
pub(crate) fn head_len(wire: &[u8]) -> usize {
    wire.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4
}

pub(crate) const ETAG: &str = "\"v1\"";

/// The byte range `[first, last]` a `Range: bytes=first-` or `bytes=first-last` header asks
/// for (`last` defaults to the end), or None when there is no such header.
pub(crate) fn requested_range(req: &Req) -> Option<(usize, Option<usize>)> {
    let spec = req.header("range")?.strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse().ok()?),
    };
    Some((first, last))
}

/// What a correct server sends for `body` with a strong ETag: 200, or 206 for
/// `Range: bytes=a-` or `bytes=a-b` (when `If-Range` is absent or matches), or 416 past the
/// end.
pub(crate) fn serve_range(body: &[u8], req: &Req) -> Vec<u8> {
    let range = requested_range(req);
    let if_range_ok = req.header("if-range").is_none_or(|v| v == ETAG);
    let len = body.len();
    match range {
        Some((first, _)) if if_range_ok && first >= len => response(
            416,
            &[
                hdr("Content-Range", format!("bytes */{len}")),
                hdr("Content-Length", 0),
            ],
            b"",
        ),
        Some((first, last)) if if_range_ok && last.is_none_or(|l| l >= first) => {
            let last = last.map_or(len - 1, |l| l.min(len - 1));
            with_length(
                206,
                &[
                    hdr("ETag", ETAG),
                    hdr("Content-Range", format!("bytes {first}-{last}/{len}")),
                ],
                &body[first..=last],
            )
        }
        _ => with_length(200, &[hdr("ETag", ETAG)], body),
    }
}

pub(crate) fn file_server(body: Vec<u8>) -> impl FnMut(&Req) -> Reply {
    move |req| Reply::new(serve_range(&body, req))
}

// ------------------------------------------------------------------------ the driver

pub(crate) enum Schedule {
    /// Complete requests in issue order (skipping those that cannot complete yet).
    Fifo,
    /// Complete a random eligible request (still in issue order per file).
    Random(SeededRng),
}

pub(crate) type Defer = Box<dyn Fn(&IoOp) -> bool>;
pub(crate) type Hold = Box<dyn Fn(&IoOp) -> Option<Instant>>;

pub(crate) struct Harness {
    pub(crate) engine: Engine,
    pub(crate) now: Instant,
    pub(crate) fs: FakeFs,
    pub(crate) servers: BTreeMap<String, Server>,
    pub(crate) conns: BTreeMap<ConnId, NetConn>,
    /// Issued and not completed, in issue order.
    pub(crate) pending: Vec<IoRequest>,
    pub(crate) issued: BTreeSet<IoId>,
    pub(crate) ops: Vec<(Instant, IoOp)>,
    pub(crate) events: Vec<(Instant, Event)>,
    pub(crate) requests: Vec<Req>,
    pub(crate) schedule: Schedule,
    /// Operations that run only when nothing else can (a slow disk, say).
    pub(crate) defer: Option<Defer>,
    /// Operations that cannot complete before the instant it names (a disk that stalls).
    pub(crate) hold: Option<Hold>,
    pub(crate) violations: Vec<String>,
    pub(crate) steps: usize,
    /// Feed a spurious `Tick` after every completion (the contract says they are no-ops).
    pub(crate) spurious_ticks: bool,
    /// Most bytes ever handed to pending `WriteAt`s at once.
    pub(crate) max_write_backlog: u64,
    /// Most connections open at once per origin (connected or connecting, not yet closed),
    /// sampled after every step.
    pub(crate) max_open: BTreeMap<String, usize>,
}

pub(crate) fn origin_key(url: &str) -> String {
    let url = url::Url::parse(url).expect("test URL");
    Origin::of(&url).expect("http URL").to_string()
}

pub(crate) fn file_of(op: &IoOp) -> Option<FileId> {
    match op {
        IoOp::Open { file, .. }
        | IoOp::OpenUnnamed { file, .. }
        | IoOp::Publish { file, .. }
        | IoOp::OpenRead { file, .. }
        | IoOp::ReadAt { file, .. }
        | IoOp::WriteAt { file, .. }
        | IoOp::SetLen { file, .. }
        | IoOp::Digest { file, .. }
        | IoOp::Sync { file }
        | IoOp::CloseFile { file, .. } => Some(*file),
        _ => None,
    }
}

pub(crate) fn job_of(e: &Event) -> JobId {
    e.job().unwrap_or(JobId(0))
}

impl Harness {
    pub(crate) fn new(config: Config) -> Harness {
        Harness {
            engine: Engine::new(config, Instant::ZERO).expect("valid test config"),
            now: Instant::ZERO,
            fs: FakeFs::default(),
            servers: BTreeMap::new(),
            conns: BTreeMap::new(),
            pending: Vec::new(),
            issued: BTreeSet::new(),
            ops: Vec::new(),
            events: Vec::new(),
            requests: Vec::new(),
            schedule: Schedule::Fifo,
            defer: None,
            hold: None,
            violations: Vec::new(),
            steps: 0,
            spurious_ticks: false,
            max_write_backlog: 0,
            max_open: BTreeMap::new(),
        }
    }

    pub(crate) fn serve(&mut self, origin: &str, handler: impl FnMut(&Req) -> Reply + 'static) {
        let server = Server {
            handler: Box::new(handler),
            connect: Box::new(|_| ConnectPlan::Accept),
            connects: 0,
            requests: 0,
        };
        self.servers.insert(origin_key(origin), server);
    }

    pub(crate) fn connect_plan(
        &mut self,
        origin: &str,
        plan: impl FnMut(usize) -> ConnectPlan + 'static,
    ) {
        let server = self
            .servers
            .get_mut(&origin_key(origin))
            .expect("serve() the origin first");
        server.connect = Box::new(plan);
    }

    pub(crate) fn submit(&mut self, d: Download) -> JobId {
        let job = self.engine.submit(self.now, d);
        self.drain();
        job
    }

    pub(crate) fn cancel(&mut self, job: JobId, mode: CancelMode) {
        self.engine.cancel(self.now, job, mode);
        self.drain();
    }

    /// Take every output; returns how many there were.
    pub(crate) fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(out) = self.engine.poll_output() {
            n += 1;
            match out {
                Output::Io(req) => {
                    assert!(self.issued.insert(req.id), "{:?} issued twice", req.id);
                    self.on_issue(&req);
                    self.ops.push((self.now, req.op.clone()));
                    self.pending.push(req);
                }
                Output::Event(e) => {
                    let job = job_of(&e);
                    if self.finished(job).is_some() {
                        self.violations
                            .push(format!("event after {job} finished: {e:?}"));
                    }
                    self.events.push((self.now, e));
                }
            }
        }
        assert_eq!(
            self.engine.pending_io(),
            self.pending.len(),
            "the engine and the driver disagree on how many requests are pending"
        );
        let backlog: u64 = self
            .pending
            .iter()
            .map(|r| match &r.op {
                IoOp::WriteAt { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        self.max_write_backlog = self.max_write_backlog.max(backlog);
        let mut open: BTreeMap<String, usize> = BTreeMap::new();
        for c in self.conns.values() {
            if !c.close_issued && !c.connect_failed {
                *open.entry(c.origin.clone()).or_default() += 1;
            }
        }
        for (origin, n) in open {
            let max = self.max_open.entry(origin).or_default();
            *max = (*max).max(n);
        }
        n
    }

    pub(crate) fn on_issue(&mut self, req: &IoRequest) {
        match &req.op {
            IoOp::Connect { conn, origin, .. } => {
                let key = origin.to_string();
                let plan = match self.servers.get_mut(&key) {
                    Some(server) => {
                        let i = server.connects;
                        server.connects += 1;
                        (server.connect)(i)
                    }
                    None => ConnectPlan::Fail(IoErrorKind::Dns),
                };
                let fresh = NetConn {
                    origin: key,
                    plan,
                    closed: false,
                    inbox: Vec::new(),
                    queue: VecDeque::new(),
                    terminal: None,
                    served: 0,
                    close_issued: false,
                    connect_failed: false,
                    delivered: 0,
                };
                if self.conns.insert(*conn, fresh).is_some() {
                    self.violations.push(format!("{conn} connected twice"));
                }
            }
            IoOp::Send { conn, .. } | IoOp::Recv { conn, .. } | IoOp::Close { conn } => {
                match self.conns.get(conn) {
                    None => self
                        .violations
                        .push(format!("{:?} on unknown {conn}", req.op)),
                    Some(c) if c.closed => self
                        .violations
                        .push(format!("{:?} on {conn} after it was closed", req.op)),
                    Some(_) => {}
                }
                if let (IoOp::Close { .. }, Some(c)) = (&req.op, self.conns.get_mut(conn)) {
                    c.close_issued = true;
                }
            }
            _ => {}
        }
    }

    pub(crate) fn completable(&self, req: &IoRequest) -> bool {
        match &req.op {
            IoOp::Connect { conn, .. } => {
                let c = &self.conns[conn];
                c.closed || c.plan != ConnectPlan::Hang
            }
            IoOp::Recv { conn, .. } => self.conns.get(conn).is_some_and(|c| c.recv_ready(self.now)),
            op => self
                .hold
                .as_ref()
                .and_then(|hold| hold(op))
                .is_none_or(|until| until <= self.now),
        }
    }

    /// Indices of pending requests that may complete now.
    pub(crate) fn eligible(&self) -> Vec<usize> {
        let mut files_seen = BTreeSet::new();
        let (mut ready, mut deferred) = (Vec::new(), Vec::new());
        for (i, req) in self.pending.iter().enumerate() {
            if let Some(file) = file_of(&req.op) {
                if !files_seen.insert(file) {
                    continue; // an earlier operation on this file goes first
                }
            }
            if !self.completable(req) {
                continue;
            }
            if self.defer.as_ref().is_some_and(|d| d(&req.op)) {
                deferred.push(i);
            } else {
                ready.push(i);
            }
        }
        if ready.is_empty() {
            deferred
        } else {
            ready
        }
    }

    pub(crate) fn count_step(&mut self) {
        self.steps += 1;
        assert!(
            self.steps <= MAX_STEPS,
            "{MAX_STEPS} steps without the job ending: the engine spins"
        );
    }

    /// Complete one request, if any can complete now.
    pub(crate) fn step_io(&mut self) -> bool {
        let eligible = self.eligible();
        if eligible.is_empty() {
            return false;
        }
        self.count_step();
        let pick = match &mut self.schedule {
            Schedule::Fifo => eligible[0],
            Schedule::Random(rng) => eligible[(rng.next_u64() % eligible.len() as u64) as usize],
        };
        let req = self.pending.remove(pick);
        let result = self.execute(&req);
        self.engine
            .handle_input(self.now, Input::Io { id: req.id, result });
        self.drain();
        if self.spurious_ticks {
            self.engine.handle_input(self.now, Input::Tick);
            self.drain();
        }
        true
    }

    /// Move the clock to the next deadline or delivery; tick the engine if a deadline came.
    pub(crate) fn advance(&mut self) -> bool {
        let timer = self.engine.poll_timeout();
        let delivery = self
            .pending
            .iter()
            .filter_map(|r| match &r.op {
                IoOp::Recv { conn, .. } => self.conns.get(conn)?.queue.front().map(|(t, _)| *t),
                _ => None,
            })
            .min();
        let released = self
            .pending
            .iter()
            .filter_map(|r| self.hold.as_ref().and_then(|hold| hold(&r.op)))
            .filter(|t| *t > self.now)
            .min();
        let Some(wake) = timer.into_iter().chain(delivery).chain(released).min() else {
            return false;
        };
        self.count_step();
        if wake > self.now {
            self.now = wake;
        }
        if timer.is_some_and(|t| t <= self.now) {
            self.engine.handle_input(self.now, Input::Tick);
            let produced = self.drain();
            let again = self.engine.poll_timeout();
            assert!(
                produced > 0 || again.is_none_or(|t| t > self.now),
                "busy loop: a tick at {} did nothing and the next deadline is {again:?}",
                self.now
            );
        }
        true
    }

    pub(crate) fn step(&mut self) -> bool {
        self.step_io() || self.advance()
    }

    pub(crate) fn execute(&mut self, req: &IoRequest) -> IoResult {
        let cancelled = || failure(IoErrorKind::Cancelled, "connection closed");
        match &req.op {
            IoOp::Connect { conn, .. } => {
                let c = self.conns.get_mut(conn).expect("known conn");
                match c.plan {
                    _ if c.closed => cancelled(),
                    ConnectPlan::Accept => IoResult::Done,
                    ConnectPlan::Fail(kind) => {
                        c.connect_failed = true;
                        failure(kind, "scripted connect failure")
                    }
                    ConnectPlan::Hang => unreachable!("a hanging connect is not completable"),
                }
            }
            IoOp::Send { conn, data } => self.on_send(*conn, data),
            IoOp::Recv { conn, max } => {
                let now = self.now;
                let c = self.conns.get_mut(conn).expect("known conn");
                if c.closed {
                    return cancelled();
                }
                let wire = match c.queue.front() {
                    Some((t, _)) if *t <= now => c.queue.pop_front().expect("front").1,
                    _ => c.terminal.clone().expect("recv_ready"),
                };
                match wire {
                    Wire::Data(mut b) => {
                        if b.len() > *max {
                            // At most `max`: the rest is the next read's, available at once.
                            let rest = b.split_off(*max);
                            c.queue.push_front((now, Wire::Data(rest)));
                        }
                        c.delivered += b.len();
                        IoResult::Data(b)
                    }
                    Wire::Eof => {
                        c.terminal = Some(Wire::Eof);
                        IoResult::Eof
                    }
                    Wire::Reset => {
                        c.terminal = Some(Wire::Reset);
                        failure(IoErrorKind::Reset, "connection reset by peer")
                    }
                }
            }
            IoOp::Close { conn } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.closed = true;
                }
                IoResult::Done
            }
            other => self.fs.execute(other),
        }
    }

    pub(crate) fn on_send(&mut self, conn: ConnId, data: &Bytes) -> IoResult {
        let now = self.now;
        let c = self.conns.get_mut(&conn).expect("known conn");
        if c.closed {
            return failure(IoErrorKind::Cancelled, "connection closed");
        }
        if c.terminal.is_some() {
            return IoResult::Done; // the server is gone; the request is lost
        }
        c.inbox.extend_from_slice(data);
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&c.inbox) {
                Ok(httparse::Status::Complete(n)) => Ok(Some((
                    n,
                    r.method.unwrap_or_default().to_string(),
                    r.path.unwrap_or_default().to_string(),
                    r.headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_string(), value)
                        })
                        .collect::<Vec<_>>(),
                ))),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let (n, method, path, headers) = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => return IoResult::Done,
            Err(e) => {
                self.violations
                    .push(format!("unparsable request on {conn}: {e}"));
                return IoResult::Done;
            }
        };
        c.inbox.drain(..n);
        let conn_seq = c.served;
        c.served += 1;
        let server = self
            .servers
            .get_mut(&c.origin)
            .expect("connected to a server");
        let req = Req {
            method,
            path,
            headers,
            conn,
            conn_seq,
            seq: server.requests,
            at: now,
        };
        server.requests += 1;
        let reply = (server.handler)(&req);
        enqueue(&mut c.queue, now, reply);
        self.requests.push(req);
        IoResult::Done
    }

    pub(crate) fn run_until(&mut self, what: &str, stop: impl Fn(&Harness) -> bool) {
        while !stop(self) {
            assert!(
                self.step(),
                "stuck before {what}; pending: {:#?}",
                self.pending
            );
        }
    }

    /// Run until `job` finishes, let everything that can complete complete, check the
    /// invariants, and return the job's result.
    pub(crate) fn run(&mut self, job: JobId) -> Result<Outcome, DownloadError> {
        loop {
            if let Some((_, result)) = self.finished(job) {
                self.settle();
                return result;
            }
            assert!(
                self.step(),
                "{job} is stuck: nothing can complete and no deadline is set; pending: {:#?}",
                self.pending
            );
        }
    }

    pub(crate) fn settle(&mut self) {
        while self.step_io() {}
        if self.engine.active_jobs() == 0 {
            assert!(
                self.pending.is_empty(),
                "requests never completed after every job ended: {:#?}",
                self.pending
            );
            assert!(
                self.engine.is_idle(),
                "engine not idle after every job ended"
            );
            assert!(
                self.fs.open.is_empty(),
                "files left open: {:?}",
                self.fs.open
            );
            self.fs.check_resting_states();
        }
        assert!(
            self.violations.is_empty(),
            "contract violations: {:#?}",
            self.violations
        );
        assert!(
            self.fs.violations.is_empty(),
            "file system violations: {:#?}",
            self.fs.violations
        );
    }

    pub(crate) fn finished(&self, job: JobId) -> Option<(Instant, Result<Outcome, DownloadError>)> {
        self.events.iter().find_map(|(t, e)| match e {
            Event::Finished { job: j, result } if *j == job => Some((*t, result.clone())),
            _ => None,
        })
    }

    pub(crate) fn finished_at(&self, job: JobId) -> Instant {
        self.finished(job).expect("job finished").0
    }

    pub(crate) fn events_of(&self, job: JobId) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(_, e)| job_of(e) == job)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// (time, attempt, delay, error) of every `Retrying` event.
    pub(crate) fn retries(&self, job: JobId) -> Vec<(Instant, u32, Duration, DownloadError)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Retrying {
                    job: j,
                    attempt,
                    delay,
                    error,
                } if *j == job => Some((*t, *attempt, *delay, error.clone())),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn progress(&self, job: JobId) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Progress { job: j, bytes, .. } if *j == job => Some(*bytes),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn connects(&self) -> usize {
        self.count_ops(|op| matches!(op, IoOp::Connect { .. }))
    }

    /// How many operations the engine issued that `pred` matches.
    pub(crate) fn count_ops(&self, pred: impl Fn(&IoOp) -> bool) -> usize {
        self.ops.iter().filter(|(_, op)| pred(op)).count()
    }

    pub(crate) fn bytes_written(&self) -> u64 {
        self.ops
            .iter()
            .map(|(_, op)| match op {
                IoOp::WriteAt { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub(crate) fn pending_has(&self, pred: impl Fn(&IoOp) -> bool) -> bool {
        self.pending.iter().any(|r| pred(&r.op))
    }
}

// ------------------------------------------------------------------------ fixtures

pub(crate) const ORIGIN: &str = "http://a.test";
pub(crate) const URL: &str = "http://a.test/files/f.bin";

pub(crate) fn dest() -> PathBuf {
    PathBuf::from("/dl/f.bin")
}

pub(crate) fn part() -> PathBuf {
    PathBuf::from("/dl/f.bin.haul-part")
}

pub(crate) fn state() -> PathBuf {
    PathBuf::from("/dl/f.bin.haul-state")
}

pub(crate) fn download() -> Download {
    Download::new(URL, dest()).expect("valid download")
}

/// The tests' engine configuration. Their bodies are small, and most pin the named
/// partial (resume, checkpoints, keep on cancel): unnamed files are off here, on in their
/// own tests and in half the runs of the property tests.
pub(crate) fn config() -> Config {
    Config {
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: secs(1),
            max_delay: secs(8),
            max_elapsed: secs(600),
            budget_per_minute: 1000,
        },
        unnamed_max: 0,
        ..Config::default()
    }
}

/// A state file that vouches for the first `verified` bytes of `body`.
pub(crate) fn valid_state(body: &[u8], verified: usize) -> PartState {
    PartState {
        version: STATE_VERSION,
        url: URL.to_string(),
        validator: Validator::Etag(ETAG.to_string()),
        resource: None,
        source: None,
        total: Some(body.len() as u64),
        verified: verified as u64,
        prefix_sha256: sha_hex(&body[..verified]),
        ranges: Vec::new(),
        single_connection: false,
    }
}

pub(crate) fn assert_nothing_left(h: &Harness) {
    assert!(!h.fs.exists(dest()), "destination exists");
    assert!(!h.fs.exists(part()), "partial exists");
    assert!(!h.fs.exists(state()), "state file exists");
}

pub(crate) fn assert_committed(h: &Harness, body: &[u8]) {
    assert!(
        h.fs.get(dest()) == Some(body),
        "destination does not hold the body"
    );
    assert!(!h.fs.exists(part()), "partial left after commit");
    assert!(!h.fs.exists(state()), "state file left after commit");
}

pub(crate) fn header_of(h: &Harness, i: usize, name: &str) -> Option<String> {
    h.requests[i].header(name).map(str::to_string)
}

// ------------------------------------------------------------------------ plain downloads

#[test]
fn plain_download_commits_exact_bytes_removes_part_and_state_and_reports_size_and_sha256() {
    let body = pattern(10_000, 1);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let d = download()
        .sha256(&sha_hex(&body))
        .unwrap()
        .size(body.len() as u64);
    let job = h.submit(d);
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.path, dest());
    assert_eq!(out.size, body.len() as u64);
    assert_eq!(out.sha256, sha(&body));
    assert_eq!(out.sha256_hex(), sha_hex(&body));
    assert_eq!(out.attempts, 1);
    assert_eq!(out.resumed_from, 0);
    assert_eq!(out.bytes_fetched, body.len() as u64);
    assert_eq!(out.final_url, URL);
    assert_eq!(h.requests.len(), 1);
    let req = &h.requests[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("GET", "/files/f.bin")
    );
    assert_eq!(req.header("host"), Some("a.test"));
    assert_eq!(req.header("range"), None);
    let events = h.events_of(job);
    assert!(matches!(events.first(), Some(Event::Queued { .. })));
    assert!(matches!(events.get(1), Some(Event::Started { .. })));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Response {
            status: 200,
            total: Some(10_000),
            offset: 0,
            ..
        }
    )));
}

#[test]
fn a_download_that_defers_sync_is_verified_and_renamed_into_place_without_any_sync() {
    let body = pattern(10_000, 2);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap().defer_sync());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert!(
        !h.ops.iter().any(|(_, op)| matches!(op, IoOp::Sync { .. })),
        "no file sync"
    );
    let renames: Vec<bool> = h
        .ops
        .iter()
        .filter_map(|(_, op)| match op {
            IoOp::Rename { sync, .. } => Some(*sync),
            _ => None,
        })
        .collect();
    assert_eq!(renames, vec![false], "one rename, its directory not synced");

    // The same download with the default syncs the file before the rename, and the rename.
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    let synced_at = h
        .ops
        .iter()
        .position(|(_, op)| matches!(op, IoOp::Sync { .. }))
        .expect("a sync");
    let renamed_at = h
        .ops
        .iter()
        .position(|(_, op)| matches!(op, IoOp::Rename { sync: true, .. }))
        .expect("a synced rename");
    assert!(synced_at < renamed_at);
}

#[test]
fn a_download_marked_fresh_looks_for_neither_its_destination_nor_a_state_file() {
    let body = pattern(10_000, 5);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap().fresh());
    let out = h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, 0);
    let probes: Vec<&IoOp> = h
        .ops
        .iter()
        .map(|(_, op)| op)
        .filter(|op| matches!(op, IoOp::OpenRead { .. } | IoOp::ReadFile { .. }))
        .collect();
    assert!(probes.is_empty(), "probes issued: {probes:?}");

    // Without `fresh` the same download hashes its destination's absence and reads its
    // state file's absence first.
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    assert!(h
        .ops
        .iter()
        .any(|(_, op)| matches!(op, IoOp::OpenRead { path, .. } if *path == dest())));
    assert!(h
        .ops
        .iter()
        .any(|(_, op)| matches!(op, IoOp::ReadFile { path, .. } if *path == state())));
}

#[test]
fn a_fresh_download_over_leftovers_starts_at_byte_zero_and_replaces_the_destination() {
    // The caller's promise is broken: a partial and a wrong file at the destination are
    // there. Nothing of them ends up in the committed file.
    let body = pattern(5_000, 6);
    let mut h = Harness::new(config());
    h.fs.put(part(), &body[..2_000]);
    h.fs.put(dest(), b"an older, different file");
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap().fresh());
    let out = h.run(job).expect("download succeeds");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert!(!h.fs.exists(part()), "partial left after commit");
    assert_eq!(out.resumed_from, 0);
    assert_eq!(out.bytes_fetched, body.len() as u64);
    assert_eq!(h.requests.len(), 1);
    assert_eq!(header_of(&h, 0, "range"), None, "no resume of the leftover");
}

#[test]
fn progress_events_carry_the_jobs_rate_and_the_time_left_at_that_rate() {
    // 40 pieces of 1000 bytes, one every 250 ms: 4000 bytes/s for 10 s.
    let body = pattern(40_000, 3);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req))
            .pieces(&[1000])
            .gap(Duration::from_millis(250))
    });
    let job = h.submit(download());
    h.run(job).expect("download succeeds");
    let progress: Vec<(u64, u64, Option<Duration>)> = h
        .events_of(job)
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                bytes, rate, eta, ..
            } => Some((*bytes, *rate, *eta)),
            _ => None,
        })
        .collect();
    assert_eq!(progress[0].1, 0, "no rate from the first piece alone");
    assert_eq!(progress[0].2, None, "and so no estimate");
    // After the first seconds every event has a rate near 4000 bytes/s and the matching ETA.
    let steady = &progress[8..progress.len() - 1];
    assert!(!steady.is_empty());
    for &(bytes, rate, eta) in steady {
        assert!((3000..=5000).contains(&rate), "rate {rate} at {bytes}");
        let eta = eta.expect("length and rate known");
        let want = (40_000 - bytes) as f64 / rate as f64;
        assert!(
            (eta.as_secs_f64() - want).abs() < 0.01,
            "eta {eta:?} for {bytes} bytes at {rate} B/s"
        );
    }
    assert_eq!(
        progress.last().unwrap().2,
        Some(Duration::ZERO),
        "nothing left"
    );
}

#[test]
fn progress_events_are_monotonic_and_end_at_the_file_size() {
    let body = pattern(9_999, 2);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[333])
    });
    let job = h.submit(download());
    h.run(job).expect("download succeeds");
    let progress = h.progress(job);
    assert!(
        progress.len() > 20,
        "one progress event per piece, got {}",
        progress.len()
    );
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {progress:?}"
    );
    assert_eq!(progress.last(), Some(&(body.len() as u64)));
    let totals_known = h.events_of(job).iter().all(|e| match e {
        Event::Progress { total, .. } => *total == Some(body.len() as u64),
        _ => true,
    });
    assert!(
        totals_known,
        "Progress must carry the Content-Length as total"
    );
}

#[test]
fn sha256_mismatch_is_retried_once_from_zero_then_leaves_no_file_and_no_partial() {
    let body = pattern(4_000, 3);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let wrong = sha_hex(b"something else");
    let job = h.submit(download().sha256(&wrong).unwrap());
    match h.run(job) {
        Err(DownloadError::HashMismatch {
            url,
            path,
            expected,
            actual,
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha_hex(&body));
            // Which download of a list failed: its URL and destination.
            assert_eq!((url.as_str(), path), (URL, dest()));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_nothing_left(&h);
    assert_eq!(h.requests.len(), 2, "a hash mismatch is retried once");
    assert_eq!(
        h.requests[1].header("range"),
        None,
        "the retry starts from zero"
    );
}

#[test]
fn a_203_non_authoritative_answer_is_a_full_response_and_is_committed() {
    // A transforming proxy's 203 carries the whole body, like a 200: the expected sha256
    // decides whether it is the file.
    let body = pattern(4_000, 31);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(203, &[hdr("ETag", ETAG)], &b))
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("a 203 serves the file");
    assert_committed(&h, &body);
    assert_eq!(out.size, 4_000);
    assert_eq!(h.requests.len(), 1);
    assert!(h
        .events_of(job)
        .iter()
        .any(|e| matches!(e, Event::Response { status: 203, .. })));
}

#[test]
fn a_204_no_content_is_an_empty_file() {
    for segments in [1, 4] {
        let mut h = Harness::new(config());
        h.serve(ORIGIN, |_| Reply::new(response(204, &[], b"")));
        let job = h.submit(download().segments(segments));
        let out = h.run(job).expect("a 204 is an empty file");
        assert_committed(&h, b"");
        assert_eq!(out.size, 0, "{segments} segments");
        assert_eq!(out.sha256, sha(b""));
        assert_eq!(h.requests.len(), 1, "{segments} segments");
        assert!(h.events_of(job).iter().any(|e| matches!(
            e,
            Event::Response {
                status: 204,
                total: Some(0),
                ..
            }
        )));
    }
}

#[test]
fn a_204_no_content_for_a_file_expected_to_hold_bytes_fails_verification() {
    let body = pattern(4_000, 32);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| Reply::new(response(204, &[], b"")));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::HashMismatch { .. }) => {
            let DownloadError::HashMismatch {
                expected, actual, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*expected, sha_hex(&body));
            assert_eq!(*actual, sha_hex(b""), "the empty file's digest");
            assert!(
                e.to_string().contains("the server sent an empty file"),
                "{e}"
            );
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_nothing_left(&h);
    assert_eq!(h.requests.len(), 2, "retried once like any other mismatch");

    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| Reply::new(response(204, &[], b"")));
    let job = h.submit(download().size(4_000));
    assert_eq!(
        h.run(job).unwrap_err(),
        DownloadError::SizeMismatch {
            url: URL.to_string(),
            path: dest(),
            expected: 4_000,
            actual: 0,
            at_least: false
        }
    );
    assert_nothing_left(&h);
}

#[test]
fn expected_size_mismatch_from_content_length_fails_before_writing_the_body() {
    let body = pattern(4_000, 4);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().size(3_999));
    match h.run(job) {
        Err(DownloadError::SizeMismatch {
            url,
            path,
            expected,
            actual,
            at_least: false,
        }) => {
            assert_eq!((expected, actual), (3_999, 4_000));
            assert_eq!((url.as_str(), path), (URL, dest()));
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(h.bytes_written(), 0, "no body byte may be written");
    assert!(
        !h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::Open { .. } | IoOp::OpenUnnamed { .. })),
        "the partial must not even be created"
    );
    assert_nothing_left(&h);
}

#[test]
fn expected_size_exceeded_by_a_chunked_body_fails_as_bytes_arrive() {
    let body = pattern(5_000, 46);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |_| {
        Reply::new(chunked(200, &[hdr("ETag", ETAG)], &body, 256)).pieces(&[100])
    });
    let job = h.submit(download().size(1_000));
    match h.run(job) {
        Err(
            e @ DownloadError::SizeMismatch {
                expected,
                actual,
                at_least: true,
                ..
            },
        ) => {
            assert_eq!(expected, 1_000);
            assert!(actual > 1_000 && actual <= 1_100, "actual {actual}");
            let message = e.to_string();
            assert!(
                message.contains(&format!("got at least {actual}")),
                "{message}"
            );
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert!(h.bytes_written() <= 1_000);
    assert_eq!(h.requests.len(), 1);
    assert_nothing_left(&h);
}

#[test]
fn max_size_exceeded_by_content_length_fails_before_writing_the_body() {
    let body = pattern(4_000, 5);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download().max_size(1_000));
    match h.run(job) {
        Err(DownloadError::TooLarge {
            url,
            path,
            limit,
            seen,
        }) => {
            assert_eq!((limit, seen), (1_000, 4_000));
            assert_eq!((url.as_str(), path), (URL, dest()));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(h.bytes_written(), 0);
    assert_nothing_left(&h);
}

fn assert_too_large_as_bytes_arrive(wire: Vec<u8>, then: After) {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |_| {
        Reply::new(wire.clone()).pieces(&[100]).then(then)
    });
    let job = h.submit(download().max_size(1_000));
    match h.run(job) {
        Err(DownloadError::TooLarge {
            url,
            path,
            limit,
            seen,
        }) => {
            assert_eq!((url.as_str(), path), (URL, dest()));
            assert_eq!(limit, 1_000);
            assert!(
                seen > 1_000 && seen <= 1_100,
                "seen {seen}: checked piece by piece"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        h.bytes_written() <= 1_000,
        "wrote {} bytes past the limit",
        h.bytes_written()
    );
    assert_eq!(h.requests.len(), 1, "too large is not retried");
    assert_nothing_left(&h);
}

#[test]
fn max_size_exceeded_by_a_chunked_body_fails_as_bytes_arrive() {
    let body = pattern(5_000, 6);
    assert_too_large_as_bytes_arrive(chunked(200, &[hdr("ETag", ETAG)], &body, 512), After::Open);
}

#[test]
fn max_size_exceeded_by_a_close_delimited_body_fails_as_bytes_arrive() {
    let body = pattern(5_000, 7);
    let wire = response(200, &[hdr("Connection", "close")], &body);
    assert_too_large_as_bytes_arrive(wire, After::Eof);
}

#[test]
fn chunked_body_is_decoded_and_committed() {
    let body = pattern(7_777, 8);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(chunked(200, &[hdr("ETag", ETAG)], &b, 1_000)).pieces(&[7])
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("chunked download succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.size, body.len() as u64);
}

#[test]
fn close_delimited_body_ends_at_eof_and_is_committed() {
    let body = pattern(3_000, 9);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(response(200, &[], &b))
            .pieces(&[250])
            .then(After::Eof)
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("close-delimited download succeeds");
    assert_committed(&h, &body);
}

#[test]
fn body_delivered_one_byte_at_a_time_commits_exact_bytes() {
    let body = pattern(1_500, 10);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[1])
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert_eq!(
        h.progress(job).len(),
        body.len(),
        "every byte is hashed as it arrives"
    );
}

// ------------------------------------------------------------------------ redirects

#[test]
fn relative_redirect_chain_is_followed_on_the_same_connection() {
    let body = pattern(2_000, 11);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| match req.path.as_str() {
        "/dir/start" => Reply::new(with_length(
            302,
            &[hdr("Location", "next")],
            b"moved here\r\n",
        )),
        "/dir/next" => Reply::new(chunked(
            301,
            &[hdr("Location", "/final/f.bin")],
            b"<html>moved</html>",
            5,
        )),
        "/final/f.bin" => Reply::new(serve_range(&b, req)),
        other => panic!("unexpected path {other}"),
    });
    let job = h.submit(Download::new("http://a.test/dir/start", dest()).unwrap());
    let out = h.run(job).expect("redirects are followed");
    assert_committed(&h, &body);
    assert_eq!(out.final_url, "http://a.test/final/f.bin");
    let paths: Vec<&str> = h.requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/dir/start", "/dir/next", "/final/f.bin"]);
    let redirects: Vec<(u16, String, String)> = h
        .events_of(job)
        .into_iter()
        .filter_map(|e| match e {
            Event::Redirected {
                status, from, to, ..
            } => Some((status, from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        redirects,
        [
            (
                302,
                "http://a.test/dir/start".into(),
                "http://a.test/dir/next".into()
            ),
            (
                301,
                "http://a.test/dir/next".into(),
                "http://a.test/final/f.bin".into()
            ),
        ]
    );
    assert_eq!(
        h.connects(),
        1,
        "drained redirect bodies let the connection be reused"
    );
}

#[test]
fn redirect_loop_fails_with_redirect_loop_error_and_is_not_retried() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |req| {
        let to = if req.path == "/a" { "/b" } else { "/a" };
        Reply::new(with_length(302, &[hdr("Location", to)], b""))
    });
    let job = h.submit(Download::new("http://a.test/a", dest()).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::RedirectLoop { .. }) => {
            assert_eq!(
                e,
                DownloadError::RedirectLoop {
                    url: "http://a.test/a".into()
                }
            );
            // The server's answers went in a circle: an HTTP failure, not the network's.
            assert_eq!(e.class(), crate::ErrorClass::HttpStatus);
        }
        other => panic!("expected RedirectLoop, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 2);
    assert!(h.retries(job).is_empty());
    assert_nothing_left(&h);
}

#[test]
fn more_than_ten_redirects_fail_with_too_many_redirects() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |req| {
        let n: u32 = req.path.trim_start_matches("/r").parse().expect("/rN");
        Reply::new(with_length(
            307,
            &[hdr("Location", format!("/r{}", n + 1))],
            b"",
        ))
    });
    let job = h.submit(Download::new("http://a.test/r0", dest()).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::TooManyRedirects { .. }) => {
            let DownloadError::TooManyRedirects { limit, url } = &e else {
                unreachable!()
            };
            assert_eq!(*limit, 10);
            assert_eq!(url, "http://a.test/r11");
            assert_eq!(e.class(), crate::ErrorClass::HttpStatus);
        }
        other => panic!("expected TooManyRedirects, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 11, "the first request and ten redirects");
    assert!(h.retries(job).is_empty());
    assert_nothing_left(&h);
}

#[test]
fn a_malformed_response_head_is_a_protocol_failure_that_says_the_head_was_malformed() {
    for (wire, detail) in [
        (
            &b"HTTP/1.1 2x0 OK\r\nContent-Length: 3\r\n\r\nabc"[..],
            "status",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"[..],
            "Content-Length",
        ),
    ] {
        let mut h = Harness::new(config());
        let wire = wire.to_vec();
        h.serve(ORIGIN, move |_| Reply::new(wire.clone()));
        let job = h.submit(download());
        let e = h.run(job).expect_err("no file from a malformed head");
        assert!(
            matches!(e, DownloadError::Protocol { .. }),
            "{detail}: expected a protocol failure, got {e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains("malformed HTTP response head") && message.contains(detail),
            "{message}"
        );
        assert!(message.contains("protocol error"), "{message}");
        // Not the server's status: the network class (exit 3 of the CLI).
        assert_eq!(e.class(), crate::ErrorClass::Network);
        assert!(h.retries(job).is_empty(), "not retried");
        assert_nothing_left(&h);
    }
}

/// Authorization seen by each request of a download of `/x` redirected to `target`.
fn authorization_across_redirect(target: &str, serve_target_at: &str) -> Vec<Option<String>> {
    let body = pattern(500, 12);
    let mut h = Harness::new(config());
    let to = target.to_string();
    let b = body.clone();
    h.serve(ORIGIN, move |req| match req.path.as_str() {
        "/x" => Reply::new(with_length(302, &[hdr("Location", &to)], b"")),
        _ => Reply::new(serve_range(&b, req)),
    });
    if serve_target_at != ORIGIN {
        h.serve(serve_target_at, file_server(body.clone()));
    }
    let d = Download::new("http://a.test/x", dest())
        .unwrap()
        .header("Authorization", "Bearer secret");
    let job = h.submit(d);
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    h.requests
        .iter()
        .map(|r| r.header("authorization").map(str::to_string))
        .collect()
}

#[test]
fn authorization_is_not_sent_after_a_redirect_to_another_host() {
    let seen = authorization_across_redirect("http://b.test/y", "http://b.test");
    assert_eq!(seen, [Some("Bearer secret".to_string()), None]);
}

#[test]
fn authorization_is_not_sent_after_a_redirect_to_another_port() {
    let seen = authorization_across_redirect("http://a.test:8080/y", "http://a.test:8080");
    assert_eq!(seen, [Some("Bearer secret".to_string()), None]);
}

#[test]
fn authorization_is_kept_on_a_same_origin_redirect() {
    let seen = authorization_across_redirect("/y", ORIGIN);
    let secret = Some("Bearer secret".to_string());
    assert_eq!(seen, [secret.clone(), secret]);
}

// ------------------------------------------------------------------------ resume

/// A harness holding a partial of `body`: `verified` vouched bytes, then `junk` bytes that
/// no state vouches for, and a state file written by `state`.
fn with_partial(body: &[u8], verified: usize, junk: usize, state: PartState) -> Harness {
    let mut h = Harness::new(config());
    let mut partial = body[..verified].to_vec();
    partial.resize(verified + junk, 0xEE);
    h.fs.put(part(), &partial);
    h.fs.put(self::state(), &state.encode());
    h
}

/// `Event::Response` says whether the bytes go to a named partial that a cancel keeps: not
/// for a small file written unnamed; yes for a resumed partial whose file changed and shrank
/// below the unnamed limit (the 200 restarts it from zero in the named partial already open).
#[test]
fn response_events_say_whether_a_cancel_would_keep_the_partial() {
    let resumable = |h: &Harness, job| -> Vec<bool> {
        h.events_of(job)
            .iter()
            .filter_map(|e| match e {
                Event::Response { resumable, .. } => Some(*resumable),
                _ => None,
            })
            .collect()
    };
    let small = Config {
        unnamed_max: 1 << 20,
        ..config()
    };
    let body = pattern(5_000, 50);
    let mut h = Harness::new(small.clone());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run(job).expect("downloads");
    assert_eq!(
        resumable(&h, job),
        [false],
        "a small file is written unnamed"
    );

    // A kept partial of an 8,000-byte version; the server now has a 2,000-byte one under
    // another ETag and answers the resume with a 200.
    let old = pattern(8_000, 51);
    let new = pattern(2_000, 52);
    let mut h = Harness::new(small);
    h.fs.put(part(), &old[..4_000]);
    h.fs.put(state(), &valid_state(&old, 4_000).encode());
    let n = new.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[hdr("ETag", "\"v2\"")], &n))
    });
    let job = h.submit(download());
    h.run(job).expect("the new version downloads");
    assert_committed(&h, &new);
    assert_eq!(resumable(&h, job), [true], "the named partial goes on");
}

#[test]
fn resume_rehashes_the_prefix_with_the_next_read_in_flight_while_one_is_hashed() {
    let body = pattern(4_000_000, 41);
    let n = 3_500_000;
    let mut h = with_partial(&body, n, 0, valid_state(&body, n));
    h.serve(ORIGIN, file_server(body.clone()));
    // Reads take until t = 100 s: whatever is issued before then was in flight at once.
    h.hold = Some(Box::new(|op| {
        matches!(op, IoOp::ReadAt { .. }).then(|| at(secs(100)))
    }));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("resume succeeds");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, n as u64);
    let reads: Vec<(Instant, u64, u64)> = h
        .ops
        .iter()
        .filter_map(|(t, op)| match op {
            IoOp::ReadAt { offset, len, .. } => Some((*t, *offset, *len)),
            _ => None,
        })
        .collect();
    assert_two_reads_in_flight_covering(&reads, at(secs(100)), n as u64);
}

/// `reads` (issued at, offset, length), whose completions were held until `held_until`: the
/// first two were issued before that (in flight at once), and together they read each byte up
/// to `end` once, in order.
pub(crate) fn assert_two_reads_in_flight_covering(
    reads: &[(Instant, u64, u64)],
    held_until: Instant,
    end: u64,
) {
    let first_batch = reads.iter().filter(|r| r.0 < held_until).count();
    assert_eq!(first_batch, 2, "two reads in flight at once: {reads:?}");
    for pair in reads.windows(2) {
        assert_eq!(
            pair[0].1 + pair[0].2,
            pair[1].1,
            "reads not contiguous: {reads:?}"
        );
    }
    let last = reads.last().expect("reads");
    assert_eq!(
        last.1 + last.2,
        end,
        "not read exactly once up to {end}: {reads:?}"
    );
}

#[test]
fn resume_rehash_with_short_reads_still_checks_the_whole_prefix() {
    let body = pattern(4_000_000, 42);
    let n = 3_500_000;
    let mut h = with_partial(&body, n, 0, valid_state(&body, n));
    h.fs.max_read = Some(300_000);
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("resume succeeds");
    assert_committed(&h, &body);
    assert_eq!(
        out.resumed_from, n as u64,
        "the prefix verified despite short reads"
    );
}

#[test]
fn resume_from_a_valid_partial_sends_range_and_if_range_and_continues_the_206() {
    let body = pattern(5_000, 13);
    let n = 2_000;
    // Junk past the vouched prefix, long enough to show up if it were not cut off.
    let mut h = with_partial(&body, n, 4_000, valid_state(&body, n));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("resume succeeds");
    assert_committed(&h, &body);
    assert_eq!(h.requests.len(), 1);
    assert_eq!(header_of(&h, 0, "range").as_deref(), Some("bytes=2000-"));
    assert_eq!(header_of(&h, 0, "if-range").as_deref(), Some(ETAG));
    assert_eq!(out.resumed_from, n as u64);
    assert_eq!(out.bytes_fetched, (body.len() - n) as u64);
    let events = h.events_of(job);
    assert!(events.contains(&Event::Resuming { job, offset: 2_000 }));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Response {
            status: 206,
            offset: 2_000,
            total: Some(5_000),
            ..
        }
    )));
    assert!(
        h.progress(job).iter().all(|&b| b > n as u64),
        "progress counts the resumed prefix"
    );
}

#[test]
fn a_partial_another_process_holds_ends_the_job_and_stays_as_it_was() {
    // Fresh: no state file, so the job downloads and opens the partial to write it.
    let body = pattern(5_000, 15);
    let theirs = pattern(1_234, 16);
    let mut h = Harness::new(config());
    h.fs.put(part(), &theirs);
    h.fs.held_elsewhere.insert(part());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::PartialInUse { .. }) => {
            assert_eq!(e, DownloadError::PartialInUse { path: part() });
            assert_eq!(e.class(), crate::ErrorClass::Usage);
        }
        other => panic!("expected PartialInUse, got {other:?}"),
    }
    assert_eq!(
        h.fs.get(part()),
        Some(&theirs[..]),
        "their partial is untouched"
    );
    assert!(!h.fs.exists(dest()), "nothing committed");
    assert!(!h.fs.exists(state()), "no state file written");
    assert!(h.fs.violations.is_empty(), "{:?}", h.fs.violations);

    // Resumable: their state vouches for a prefix; neither it nor the partial changes.
    let n = 2_000;
    let mut h = with_partial(&body, n, 0, valid_state(&body, n));
    h.fs.held_elsewhere.insert(part());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    assert!(matches!(
        h.run(job),
        Err(DownloadError::PartialInUse { .. })
    ));
    assert_eq!(h.fs.get(part()), Some(&body[..n]));
    assert_eq!(h.fs.get(state()), Some(&valid_state(&body, n).encode()[..]));
    assert!(!h.fs.exists(dest()));
    assert!(
        h.requests.is_empty(),
        "the refused resume asked for nothing"
    );

    // Whatever order the open's answer takes among the writes, the hashing and the commit
    // (all bytes may be in before it), with and without executor digests.
    for seed in 0..200u64 {
        let mut cfg = config();
        cfg.executor_digests = seed % 2 == 0;
        let mut h = Harness::new(cfg);
        h.schedule = Schedule::Random(SeededRng::new(seed));
        h.fs.put(part(), &theirs);
        h.fs.held_elsewhere.insert(part());
        h.serve(ORIGIN, file_server(body.clone()));
        let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
        let result = h.run(job);
        assert!(
            matches!(result, Err(DownloadError::PartialInUse { .. })),
            "seed {seed}: {result:?}"
        );
        assert_eq!(h.fs.get(part()), Some(&theirs[..]), "seed {seed}");
        assert!(!h.fs.exists(dest()) && !h.fs.exists(state()), "seed {seed}");
    }
}

/// Submit `d` to `h` with every operation `held_op` answers at t = 100 s, run until the job
/// waits for one (`what`), cancel it with `Discard`, and run it to its end: `Cancelled`.
fn discard_while(h: &mut Harness, d: Download, what: &str, held_op: fn(&IoOp) -> bool) {
    h.hold = Some(Box::new(move |op| held_op(op).then(|| at(secs(100)))));
    let job = h.submit(d);
    h.run_until(what, |h| h.pending_has(held_op));
    h.cancel(job, CancelMode::Discard);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
}

/// A job cancelled with `Discard` (or failing for good) before it opened its partial asks for
/// it to be removed only if no process holds it (`RemoveUnheld`): a partial another process
/// holds stays as it was, with its state file; one nobody holds goes, with its state file.
#[test]
fn a_discard_before_the_partial_was_opened_removes_only_a_partial_nobody_holds() {
    let body = pattern(5_000, 17);
    let n = 2_000;
    for held in [true, false] {
        // While the state file is read (an earlier run's, or the other process's).
        let mut h = with_partial(&body, n, 0, valid_state(&body, n));
        if held {
            h.fs.held_elsewhere.insert(part());
        }
        h.serve(ORIGIN, file_server(body.clone()));
        discard_while(&mut h, download(), "reading the state file", |op| {
            matches!(op, IoOp::ReadFile { .. })
        });
        if held {
            assert_eq!(h.fs.get(part()), Some(&body[..n]), "their partial stays");
            assert_eq!(h.fs.get(state()), Some(&valid_state(&body, n).encode()[..]));
        } else {
            assert!(!h.fs.exists(part()) && !h.fs.exists(state()), "discarded");
        }
        assert!(h.fs.violations.is_empty(), "{:?}", h.fs.violations);

        // While connecting, with no state file: the same.
        let mut h = Harness::new(config());
        let theirs = pattern(1_234, 18);
        h.fs.put(part(), &theirs);
        if held {
            h.fs.held_elsewhere.insert(part());
        }
        h.serve(ORIGIN, file_server(body.clone()));
        discard_while(&mut h, download(), "connecting", |op| {
            matches!(op, IoOp::Connect { .. })
        });
        assert_eq!(h.fs.exists(part()), held, "held: {held}");
        if held {
            assert_eq!(h.fs.get(part()), Some(&theirs[..]));
        }
        assert!(h.fs.violations.is_empty(), "{:?}", h.fs.violations);
    }
    // One that cannot even be looked at (another user's): left as it is, with its state.
    let mut h = with_partial(&body, n, 0, valid_state(&body, n));
    h.fs.not_ours.insert(part());
    h.serve(ORIGIN, file_server(body.clone()));
    discard_while(&mut h, download(), "reading the state file", |op| {
        matches!(op, IoOp::ReadFile { .. })
    });
    assert_eq!(h.fs.get(part()), Some(&body[..n]), "their partial stays");
    assert!(h.fs.exists(state()), "and its state");
}

/// An unnamed download (its file has no name until the commit) that is discarded leaves a
/// partial another process holds at `<dest>.haul-part`, and that process's state file.
#[test]
fn a_discarded_unnamed_download_leaves_another_process_s_partial_alone() {
    let body = pattern(50_000, 21);
    let cfg = Config {
        unnamed_max: u64::MAX,
        ..config()
    };
    let mut h = Harness::new(cfg);
    let theirs = pattern(1_234, 22);
    h.fs.put(part(), &theirs);
    h.fs.put(state(), b"their state");
    h.fs.held_elsewhere.insert(part());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req))
            .pieces(&[5_000])
            .gap(secs(1))
    });
    let job = h.submit(download());
    h.run_until("two seconds in", |h| h.now >= at(secs(2)));
    assert!(
        h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::OpenUnnamed { .. })),
        "an unnamed download"
    );
    h.cancel(job, CancelMode::Discard);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert_eq!(h.fs.get(part()), Some(&theirs[..]), "their partial stays");
    assert_eq!(
        h.fs.get(state()),
        Some(&b"their state"[..]),
        "and their state"
    );
    assert!(!h.fs.exists(dest()));
}

/// The same while the job still checks what its destination holds (a file is open then, the
/// destination's, not the partial).
#[test]
fn a_discard_while_the_destination_is_checked_removes_only_a_partial_nobody_holds() {
    let body = pattern(5_000, 19);
    for held in [true, false] {
        let mut h = Harness::new(config());
        h.fs.put(dest(), b"an older file at the destination");
        let theirs = pattern(1_234, 20);
        h.fs.put(part(), &theirs);
        h.fs.put(state(), b"their state");
        if held {
            h.fs.held_elsewhere.insert(part());
        }
        h.serve(ORIGIN, file_server(body.clone()));
        let d = download().sha256(&sha_hex(&body)).unwrap();
        discard_while(&mut h, d, "checking the destination", |op| {
            matches!(op, IoOp::ReadAt { .. })
        });
        if held {
            assert_eq!(h.fs.get(part()), Some(&theirs[..]), "their partial stays");
            assert_eq!(h.fs.get(state()), Some(&b"their state"[..]));
        } else {
            assert!(!h.fs.exists(part()) && !h.fs.exists(state()), "discarded");
        }
        assert_eq!(
            h.fs.get(dest()),
            Some(&b"an older file at the destination"[..])
        );
        assert!(h.fs.violations.is_empty(), "{:?}", h.fs.violations);
    }
}

#[test]
fn resume_answered_with_200_restarts_from_zero_and_never_appends() {
    let body = pattern(5_000, 14);
    let n = 3_000;
    let mut h = with_partial(&body, n, 6_000, valid_state(&body, n));
    let b = body.clone();
    // This server ignores Range.
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b))
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("restart succeeds");
    assert_committed(&h, &body);
    assert_eq!(header_of(&h, 0, "range").as_deref(), Some("bytes=3000-"));
    assert_eq!(out.resumed_from, 0);
    assert_eq!(out.bytes_fetched, body.len() as u64);
    assert_eq!(h.requests.len(), 1, "a 200 is used as it is, not retried");
}

/// A harness holding `body`'s first `n` bytes as a valid partial, whose server answers the
/// first request with a 206 of `content_range` carrying `body[from..]`, and every later one
/// as it should.
fn resumed_and_answered_first(body: &[u8], n: usize, content_range: &str, from: usize) -> Harness {
    let mut h = with_partial(body, n, 0, valid_state(body, n));
    let (b, cr) = (body.to_vec(), content_range.to_string());
    h.serve(ORIGIN, move |req| {
        if req.seq == 0 {
            Reply::new(with_length(
                206,
                &[hdr("ETag", ETAG), hdr("Content-Range", cr.clone())],
                &b[from..],
            ))
        } else {
            Reply::new(serve_range(&b, req))
        }
    });
    h
}

#[test]
fn resume_with_a_206_starting_elsewhere_is_a_range_mismatch_then_a_restart_gives_exact_bytes() {
    let body = pattern(5_000, 15);
    // A broken server: answers the range from the start of the file.
    let mut h = resumed_and_answered_first(&body, 1_000, "bytes 0-4999/5000", 0);
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("restart succeeds");
    assert_committed(&h, &body);
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    assert!(
        matches!(retries[0].3, DownloadError::RangeMismatch { .. }),
        "got {:?}",
        retries[0].3
    );
    assert_eq!(h.requests.len(), 2);
    assert_eq!(header_of(&h, 0, "range").as_deref(), Some("bytes=1000-"));
    assert_eq!(
        header_of(&h, 1, "range"),
        None,
        "the restart asks for the whole file"
    );
    assert_eq!(out.resumed_from, 0);
    assert_eq!(out.attempts, 2);
    assert_eq!(
        h.bytes_written(),
        body.len() as u64,
        "no byte of the bad 206 is written"
    );
}

#[test]
fn a_resume_answered_for_a_file_of_another_length_says_so_not_where_its_range_ends() {
    // `bytes 1000-4999/5001`: the range ends where the partial's file ended, but the file
    // is now a byte longer. The retry said "range ends at 4999, expected 5000".
    let body = pattern(5_000, 15);
    let mut h = resumed_and_answered_first(&body, 1_000, "bytes 1000-4999/5001", 1_000);
    let job = h.submit(download());
    h.run(job).expect("the restart succeeds");
    let retries = h.retries(job);
    assert!(
        matches!(&retries[0].3, DownloadError::RangeMismatch { detail }
            if detail.contains("complete length 5001 differs from the 5000 bytes known")),
        "got {:?}",
        retries[0].3
    );
}

#[test]
fn resume_answered_416_with_the_partials_length_commits_without_a_body() {
    let body = pattern(5_000, 16);
    let mut h = with_partial(&body, body.len(), 0, valid_state(&body, body.len()));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the complete partial is committed");
    assert_committed(&h, &body);
    assert_eq!(header_of(&h, 0, "range").as_deref(), Some("bytes=5000-"));
    assert_eq!(h.bytes_written(), 0);
    assert_eq!(out.resumed_from, body.len() as u64);
    assert_eq!(out.bytes_fetched, 0);
    assert_eq!(out.sha256, sha(&body));
}

#[test]
fn a_416_for_another_version_restarts_from_zero_instead_of_committing_the_old_prefix() {
    // The partial holds the first 2,000 bytes of an 8,000-byte version; the server, which
    // ignores If-Range, now has a 2,000-byte file under another ETag.
    let old = pattern(8_000, 40);
    let new = pattern(2_000, 41);
    for (etag, what) in [("\"v2\"", "another validator"), (ETAG, "another length")] {
        let mut h = with_partial(&old, 2_000, 0, valid_state(&old, 2_000));
        let n = new.clone();
        h.serve(ORIGIN, move |req| {
            if req.header("range").is_some() {
                Reply::new(response(
                    416,
                    &[
                        hdr("ETag", etag),
                        hdr("Content-Range", "bytes */2000"),
                        hdr("Content-Length", 0),
                    ],
                    b"",
                ))
            } else {
                Reply::new(with_length(200, &[hdr("ETag", etag)], &n))
            }
        });
        let job = h.submit(download());
        let out = h.run(job).expect("the new version downloads");
        assert_committed(&h, &new);
        assert_eq!(out.resumed_from, 0, "{what}");
        assert_eq!(out.sha256, sha(&new), "{what}");
    }
}

#[test]
fn state_whose_prefix_digest_does_not_match_the_partial_starts_from_zero_without_range() {
    let body = pattern(5_000, 17);
    let n = 2_500;
    let mut lying = valid_state(&body, n);
    lying.prefix_sha256 = sha_hex(b"not these bytes");
    let mut h = with_partial(&body, n, 0, lying);
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("fresh download succeeds");
    assert_committed(&h, &body);
    assert_eq!(header_of(&h, 0, "range"), None);
    assert_eq!(header_of(&h, 0, "if-range"), None);
    assert_eq!(out.resumed_from, 0);
    assert!(!h
        .events_of(job)
        .iter()
        .any(|e| matches!(e, Event::Resuming { .. })));
}

/// Serves `body` (with ranges) at `h`'s origin: the first response ends after `k` bytes of
/// body (a clean close), each later one is `later` of what a correct server sends.
fn serve_cut_once(
    h: &mut Harness,
    body: &[u8],
    k: usize,
    later: impl Fn(Vec<u8>) -> Vec<u8> + 'static,
) {
    let body = body.to_vec();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&body, req);
        if req.seq == 0 {
            let cut = head_len(&wire) + k;
            return Reply::new(wire[..cut].to_vec())
                .pieces(&[1_000])
                .then(After::Eof);
        }
        Reply::new(later(wire))
    });
}

#[test]
fn truncated_body_is_retried_with_range_from_the_received_offset() {
    let body = pattern(6_000, 18);
    let mut h = Harness::new(config());
    serve_cut_once(&mut h, &body, 2_345, |wire| wire);
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the retry finishes the file");
    assert_committed(&h, &body);
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    assert!(matches!(
        retries[0].3,
        DownloadError::Protocol {
            source: HttpError::Truncated {
                expected: Some(6_000),
                received: 2_345
            },
            ..
        }
    ));
    assert_eq!(header_of(&h, 1, "range").as_deref(), Some("bytes=2345-"));
    assert_eq!(header_of(&h, 1, "if-range").as_deref(), Some(ETAG));
    assert_eq!(out.attempts, 2);
    assert_eq!(
        out.bytes_fetched,
        body.len() as u64,
        "no byte is fetched twice"
    );
}

#[test]
fn a_resume_answered_without_the_complete_length_continues_where_it_was() {
    // `Content-Range: bytes N-M/*` (complete length unknown to the server, as RFC 9110
    // allows) to a resume whose length is known was "unusable": the file started over.
    let body = pattern(6_000, 18);
    let mut h = Harness::new(config());
    serve_cut_once(&mut h, &body, 2_345, |wire| {
        let head = head_len(&wire);
        let text = String::from_utf8_lossy(&wire[..head]).replace("/6000\r\n", "/*\r\n");
        [text.as_bytes(), &wire[head..]].concat()
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the resume finishes the file");
    assert_committed(&h, &body);
    assert_eq!(header_of(&h, 1, "range").as_deref(), Some("bytes=2345-"));
    assert_eq!(
        out.bytes_fetched,
        body.len() as u64,
        "no byte fetched twice"
    );
    assert_eq!(h.requests.len(), 2);
}

#[test]
fn connection_reset_mid_body_is_retried_with_range() {
    let body = pattern(6_000, 19);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        if req.seq == 0 {
            let cut = head_len(&wire) + 4_000;
            Reply::new(wire[..cut].to_vec()).then(After::Reset)
        } else {
            Reply::new(wire)
        }
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run(job).expect("the retry finishes the file");
    assert_committed(&h, &body);
    assert!(matches!(
        h.retries(job)[0].3,
        DownloadError::Connection { ref failure, .. } if failure.kind == IoErrorKind::Reset
    ));
    assert_eq!(header_of(&h, 1, "range").as_deref(), Some("bytes=4000-"));
}

// ------------------------------------------------------------------------ timeouts

#[test]
fn stall_fires_the_idle_timeout_on_time_and_keeps_a_resumable_partial() {
    let body = pattern(5_000, 20);
    let mut cfg = config();
    cfg.idle_timeout = secs(10);
    cfg.retry.max_attempts = 2;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    // Every response delivers its head and 100 body bytes, then nothing.
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        Reply::new(wire[..head_len(&wire) + 100].to_vec())
    });
    let job = h.submit(download());
    let err = h.run(job).expect_err("both attempts stall");
    let idle = |e: &DownloadError| matches!(e, DownloadError::Timeout { kind: TimeoutKind::Idle, after, .. } if *after == secs(10));
    assert!(idle(&err), "got {err:?}");
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    let (retry_at, _, delay, ref first) = retries[0];
    assert!(idle(first), "got {first:?}");
    assert_eq!(
        retry_at,
        at(secs(10)),
        "the idle timeout fires 10 s after the last byte"
    );
    assert_eq!(h.requests[1].at, at(secs(10) + delay));
    assert_eq!(h.finished_at(job), at(secs(20) + delay));
    assert_eq!(header_of(&h, 1, "range").as_deref(), Some("bytes=100-"));
    // The partial is kept and vouched for up to every byte received.
    let saved =
        PartState::decode_for(h.fs.get(state()).expect("state kept"), URL).expect("state is valid");
    assert_eq!(saved.verified, 200);
    assert_eq!(saved.validator, Validator::Etag(ETAG.into()));
    assert_eq!(saved.prefix_sha256, sha_hex(&body[..200]));
    assert_eq!(h.fs.get(part()).map(|p| &p[..200]), Some(&body[..200]));
    assert!(!h.fs.exists(dest()));
}

#[test]
fn trickle_below_the_low_speed_limit_fails_with_a_low_speed_timeout() {
    let body = pattern(50_000, 21);
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    cfg.low_speed = Some(LowSpeedLimit {
        bytes_per_sec: 1_000,
        window: secs(5),
    });
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let head = head_len(&wire);
        Reply::new(wire).pieces(&[head, 10]).gap(secs(1))
    });
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Timeout { kind, after, .. }) => {
            assert_eq!((kind, after), (TimeoutKind::LowSpeed, secs(5)));
        }
        other => panic!("expected a low-speed timeout, got {other:?}"),
    }
    assert_eq!(h.finished_at(job), at(secs(5)));
}

#[test]
fn transfer_above_the_low_speed_limit_is_not_aborted() {
    let body = pattern(40_000, 22);
    let mut cfg = config();
    cfg.low_speed = Some(LowSpeedLimit {
        bytes_per_sec: 1_000,
        window: secs(5),
    });
    let mut h = Harness::new(cfg);
    let b = body.clone();
    // 2 000 bytes per second for 20 s: several low-speed windows, each fast enough.
    h.serve(ORIGIN, move |req| {
        let wire = serve_range(&b, req);
        let head = head_len(&wire);
        Reply::new(wire)
            .pieces(&[head, 500])
            .gap(Duration::from_millis(250))
    });
    let job = h.submit(download());
    h.run(job).expect("fast enough");
    assert_committed(&h, &body);
    assert!(h.retries(job).is_empty());
    assert!(h.finished_at(job) >= at(secs(19)));
}

#[test]
fn connect_timeout_fires_when_the_connect_hangs() {
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    cfg.connect_timeout = secs(5);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(pattern(10, 23)));
    h.connect_plan(ORIGIN, |_| ConnectPlan::Hang);
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Timeout { kind, after, .. }) => {
            assert_eq!((kind, after), (TimeoutKind::Connect, secs(5)));
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    assert_eq!(h.finished_at(job), at(secs(5)));
    assert!(h.requests.is_empty());
    assert_nothing_left(&h);
}

#[test]
fn response_head_timeout_fires_when_the_server_never_answers() {
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    cfg.head_timeout = secs(7);
    cfg.idle_timeout = secs(30);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(Vec::new()));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Timeout { kind, .. }) => assert_eq!(kind, TimeoutKind::ResponseHead),
        other => panic!("expected a head timeout, got {other:?}"),
    }
    assert_eq!(h.finished_at(job), at(secs(7)));
}

/// A server may think up to the head timeout before it answers, even past a shorter idle
/// timeout: the idle one also ran until the head was complete, and
/// `--head-timeout 10 --idle-timeout 3` gave up after 3 s on a server that answered in 5.
#[test]
fn a_server_may_think_up_to_the_head_timeout_though_the_idle_timeout_is_shorter() {
    let body = pattern(1_000, 24);
    let mut cfg = config();
    cfg.retry.max_attempts = 1;
    cfg.head_timeout = secs(10);
    cfg.idle_timeout = secs(3);
    let mut h = Harness::new(cfg);
    let b = body.clone();
    // The head's first byte at once, the rest 5 s later.
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[], &b))
            .pieces(&[1, 1 << 20])
            .gap(secs(5))
    });
    let job = h.submit(download());
    h.run(job).expect("answered within the head timeout");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert_eq!(h.finished_at(job), at(secs(5)));
}

// ------------------------------------------------------------------------ retries and statuses

#[test]
fn connect_failures_are_retried_until_a_connect_succeeds() {
    let body = pattern(1_000, 24);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    h.connect_plan(ORIGIN, |i| match i {
        0 => ConnectPlan::Fail(IoErrorKind::ConnectFailed),
        1 => ConnectPlan::Fail(IoErrorKind::Dns),
        _ => ConnectPlan::Accept,
    });
    let job = h.submit(download());
    let out = h.run(job).expect("third connect works");
    assert_committed(&h, &body);
    assert_eq!(out.attempts, 3);
    let kinds: Vec<IoErrorKind> = h
        .retries(job)
        .into_iter()
        .map(|(_, _, _, e)| match e {
            DownloadError::Connect { failure, .. } => failure.kind,
            other => panic!("expected Connect errors, got {other:?}"),
        })
        .collect();
    assert_eq!(kinds, [IoErrorKind::ConnectFailed, IoErrorKind::Dns]);
}

#[test]
fn retry_after_on_a_503_makes_the_retry_wait_at_least_that_long() {
    let body = pattern(1_000, 25);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.seq == 0 {
            Reply::new(with_length(503, &[hdr("Retry-After", 7)], b"busy"))
        } else {
            Reply::new(serve_range(&b, req))
        }
    });
    let job = h.submit(download());
    h.run(job).expect("the retry succeeds");
    assert_committed(&h, &body);
    let retries = h.retries(job);
    assert_eq!(retries.len(), 1);
    assert!(
        retries[0].2 >= secs(7),
        "delay {:?} ignores Retry-After",
        retries[0].2
    );
    assert!(matches!(
        retries[0].3,
        DownloadError::Status { status: 503, retry_after: Some(d), .. } if d == secs(7)
    ));
    let waited = h.requests[1].at.saturating_since(h.requests[0].at);
    assert!(waited >= secs(7), "retried after {waited:?}");
}

#[test]
fn not_found_is_a_status_error_not_retried_and_leaves_no_partial() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(404, &[], b"no such file"))
    });
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Status {
            status,
            url,
            retry_after,
        }) => {
            assert_eq!((status, url.as_str(), retry_after), (404, URL, None));
        }
        other => panic!("expected a 404 Status error, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1);
    assert!(h.retries(job).is_empty());
    assert_nothing_left(&h);
}

/// A 416 to a request without a Range (no partial to resume) is the server's own error, a
/// status error like any other 4xx: not blamed on a partial that does not exist (it was a
/// retried `RangeMismatch`), and nothing is left.
#[test]
fn a_416_to_a_request_without_a_range_is_a_status_error() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(416, &[hdr("Content-Range", "bytes */0")], b""))
    });
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Status { status: 416, .. }) => {}
        other => panic!("expected a 416 Status error, got {other:?}"),
    }
    assert_eq!(header_of(&h, 0, "range"), None);
    assert_eq!(h.requests.len(), 1, "not retried");
    assert_nothing_left(&h);
}

#[test]
fn backoff_delays_grow_and_respect_max_delay() {
    let mut cfg = config();
    cfg.retry = RetryPolicy {
        max_attempts: 7,
        base_delay: secs(1),
        max_delay: secs(4),
        max_elapsed: secs(600),
        budget_per_minute: 1000,
    };
    // Backoff alone: the origin's breaker would otherwise open after five failures.
    cfg.breaker.failure_threshold = 100;
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(500, &[], b"")));
    let job = h.submit(download());
    assert!(matches!(
        h.run(job),
        Err(DownloadError::Status { status: 500, .. })
    ));
    let retries = h.retries(job);
    let attempts: Vec<u32> = retries.iter().map(|r| r.1).collect();
    assert_eq!(attempts, [2, 3, 4, 5, 6, 7]);
    let delays: Vec<Duration> = retries.iter().map(|r| r.2).collect();
    assert!(
        delays[0] < delays[2],
        "attempt 2 waits {:?}, attempt 4 {:?}",
        delays[0],
        delays[2]
    );
    assert!(
        delays[0] >= Duration::from_millis(500),
        "equal jitter keeps half the base"
    );
    assert!(
        delays.iter().all(|d| *d <= secs(4)),
        "max_delay exceeded: {delays:?}"
    );
    assert!(
        delays[3..].iter().all(|d| *d >= secs(2)),
        "capped delays keep half the cap"
    );
    // The clock really waits that long between two requests.
    for (i, d) in delays.iter().enumerate() {
        let gap = h.requests[i + 1].at.saturating_since(h.requests[i].at);
        assert_eq!(gap, *d, "gap before attempt {}", i + 2);
    }
}

#[test]
fn max_elapsed_stops_retries_that_would_start_too_late() {
    let mut cfg = config();
    cfg.retry = RetryPolicy {
        max_attempts: 100,
        base_delay: secs(1),
        max_delay: secs(4),
        max_elapsed: secs(20),
        budget_per_minute: 1000,
    };
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, |_| Reply::new(with_length(500, &[], b"")));
    let job = h.submit(download());
    assert!(h.run(job).is_err());
    let last = h.requests.last().expect("some request").at;
    assert!(last <= at(secs(20)), "a retry started at {last}");
    assert!(h.requests.len() < 100);
}

// ------------------------------------------------------------------------ connections

#[test]
fn keep_alive_connection_is_reused_by_sequential_jobs_to_the_same_origin() {
    let body = pattern(3_000, 26);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let first = h.submit(download());
    h.run(first).expect("first job");
    let second_dest = PathBuf::from("/dl/g.bin");
    let second = h.submit(Download::new("http://a.test/files/g.bin", &second_dest).unwrap());
    let out = h.run(second).expect("second job");
    assert_eq!(h.fs.get(&second_dest), Some(&body[..]));
    assert_eq!(h.connects(), 1);
    assert_eq!(h.requests.len(), 2);
    assert_eq!(h.requests[0].conn, h.requests[1].conn);
    assert_eq!(h.requests[1].conn_seq, 1);
    assert_eq!(out.attempts, 1);
}

#[test]
fn connection_is_not_reused_when_the_response_said_close() {
    let body = pattern(3_000, 27);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(
            200,
            &[hdr("Connection", "close"), hdr("ETag", ETAG)],
            &b,
        ))
        .then(After::Eof)
    });
    let first = h.submit(download());
    h.run(first).expect("first job");
    let second = h.submit(Download::new("http://a.test/files/g.bin", "/dl/g.bin").unwrap());
    h.run(second).expect("second job");
    assert_eq!(h.connects(), 2);
}

#[test]
fn stale_reused_connection_is_replaced_without_a_retrying_event() {
    let body = pattern(3_000, 28);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.conn_seq > 0 {
            // The server closed the idle connection; the request on it is lost.
            Reply::new(Vec::new()).then(After::Eof)
        } else {
            Reply::new(serve_range(&b, req))
        }
    });
    let first = h.submit(download());
    h.run(first).expect("first job");
    let second_dest = PathBuf::from("/dl/g.bin");
    let second = h.submit(Download::new("http://a.test/files/g.bin", &second_dest).unwrap());
    let out = h.run(second).expect("second job");
    assert_eq!(h.fs.get(&second_dest), Some(&body[..]));
    assert!(
        h.retries(second).is_empty(),
        "a stale connection is not a failed attempt"
    );
    assert_eq!(out.attempts, 1);
    assert_eq!(h.connects(), 2);
    assert_eq!(h.requests.len(), 3);
    assert_ne!(h.requests[1].conn, h.requests[2].conn);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_its_timeout() {
    let mut cfg = config();
    cfg.idle_connection_timeout = secs(30);
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(pattern(100, 29)));
    let job = h.submit(download());
    h.run(job).expect("job");
    assert!(!h.pending_has(|op| matches!(op, IoOp::Close { .. })));
    assert_eq!(h.engine.poll_timeout(), Some(at(secs(30))));
    assert!(h.step(), "the clock moves to the connection's timeout");
    assert!(h.pending_has(|op| matches!(op, IoOp::Close { .. })));
    h.settle();
    assert_eq!(h.engine.poll_timeout(), None);
}

// ------------------------------------------------------------------------ local failures

#[test]
fn no_space_mid_body_fails_with_local_io_and_removes_the_partial() {
    let body = pattern(10_000, 30);
    let mut h = Harness::new(config());
    h.fs.space_left = Some(3_000);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[1_000])
    });
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { path, failure }) => {
            assert_eq!(path, part());
            assert_eq!(failure.kind, IoErrorKind::NoSpace);
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1, "a full disk is not retried");
    assert_nothing_left(&h);
}

#[test]
fn no_space_on_the_last_write_fails_with_local_io_and_commits_nothing() {
    let body = pattern(10_000, 31);
    let mut h = Harness::new(config());
    h.fs.space_left = Some(body.len() as u64 - 1);
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { failure, .. }) => {
            assert_eq!(failure.kind, IoErrorKind::NoSpace)
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert_nothing_left(&h);
}

#[test]
fn rename_failure_fails_with_local_io_and_leaves_nothing_at_the_destination() {
    let body = pattern(2_000, 32);
    let mut h = Harness::new(config());
    h.fs.fail_rename = true;
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { path, failure }) => {
            assert_eq!(path, dest());
            assert_eq!(failure.kind, IoErrorKind::PermissionDenied);
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert_nothing_left(&h);
}

/// The tests' configuration with unnamed files for downloads of up to `max` bytes.
fn unnamed_config(max: u64) -> Config {
    Config {
        unnamed_max: max,
        ..config()
    }
}

#[test]
fn a_small_download_of_known_length_is_written_unnamed_and_named_only_by_its_commit() {
    let body = pattern(5_000, 60);
    let mut h = Harness::new(unnamed_config(5_000));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    let ops: Vec<&IoOp> = h.ops.iter().map(|(_, op)| op).collect();
    assert!(ops
        .iter()
        .any(|op| matches!(op, IoOp::OpenUnnamed { path, .. } if *path == part())));
    assert!(
        !ops.iter().any(|op| matches!(
            op,
            IoOp::Open { .. } | IoOp::Rename { .. } | IoOp::WriteFileAtomic { .. }
        )),
        "a named partial, a rename or a state file: {ops:?}"
    );
    let publish = ops
        .iter()
        .position(|op| matches!(op, IoOp::Publish { to, sync: true, .. } if *to == dest()));
    let last_write = ops
        .iter()
        .rposition(|op| matches!(op, IoOp::WriteAt { .. }));
    assert!(
        publish > last_write,
        "published (with sync) after the last write: {ops:?}"
    );
    let ino = h.fs.names[&dest()];
    assert_eq!(
        h.fs.inodes[&ino].durable, body,
        "the destination's bytes are durable"
    );
}

/// Unnamed files up to `max` bytes, hashed by the executor.
fn executor_digest_config(max: u64) -> Config {
    Config {
        executor_digests: true,
        ..unnamed_config(max)
    }
}

#[test]
fn with_executor_digests_an_unnamed_file_is_verified_by_the_executors_digest_before_its_publish() {
    let body = pattern(5_000, 63);
    let mut h = Harness::new(executor_digest_config(u64::MAX));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let outcome = h.run(job).expect("downloaded");
    assert_eq!(hex::encode(outcome.sha256), sha_hex(&body));
    assert_committed(&h, &body);
    let ops: Vec<&IoOp> = h.ops.iter().map(|(_, op)| op).collect();
    let digests: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], IoOp::Digest { len: 5_000, .. }))
        .collect();
    assert_eq!(digests.len(), 1, "one digest of the whole file: {ops:?}");
    let last_write = ops
        .iter()
        .rposition(|op| matches!(op, IoOp::WriteAt { .. }));
    let publish = ops.iter().position(|op| matches!(op, IoOp::Publish { .. }));
    assert!(
        last_write < Some(digests[0]) && Some(digests[0]) < publish,
        "after the last write, before the publish: {ops:?}"
    );
    // A named partial (too large for an unnamed file) written by one transfer too.
    let mut named = Harness::new(executor_digest_config(4_999));
    named.serve(ORIGIN, file_server(body.clone()));
    let job = named.submit(download().sha256(&sha_hex(&body)).unwrap());
    named.run(job).expect("downloaded");
    assert_committed(&named, &body);
    assert_eq!(
        named.count_ops(|op| matches!(op, IoOp::Digest { len: 5_000, .. })),
        1
    );
}

#[test]
fn a_kept_partial_listed_as_one_complete_received_range_commits_after_a_416_without_a_body() {
    // What a checkpoint of an executor-hashed file that had every byte leaves behind.
    let body = pattern(6_000, 68);
    let state = PartState {
        verified: 0,
        prefix_sha256: sha_hex(b""),
        ranges: vec![(0, body.len() as u64)],
        ..valid_state(&body, 0)
    };
    let mut h = with_partial(&body, body.len(), 0, state);
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("committed from the kept bytes");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, body.len() as u64);
    // The server confirms the kept bytes are still its representation (416 for the range
    // after them), nothing is fetched, and the kept bytes are hashed back.
    assert_eq!(header_of(&h, 0, "range").as_deref(), Some("bytes=6000-"));
    assert_eq!(h.requests.len(), 1);
    assert_eq!(out.bytes_fetched, 0);
    assert!(
        h.count_ops(|op| matches!(op, IoOp::ReadAt { .. })) > 0,
        "hashed back"
    );
}

#[test]
fn with_executor_digests_a_segmented_download_is_hashed_by_the_engine() {
    let body = pattern(40_000, 66);
    let mut h = Harness::new(executor_digest_config(0));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[1_000])
    });
    let job = h.submit(
        download()
            .sha256(&sha_hex(&body))
            .unwrap()
            .segments(4)
            .min_segment(4_000),
    );
    h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    assert!(
        h.requests.len() > 1,
        "segmented: {} requests",
        h.requests.len()
    );
    assert_eq!(h.count_ops(|op| matches!(op, IoOp::Digest { .. })), 0);
}

/// A harness whose digests are the executor's, checkpointing every 1,000 bytes, serving a
/// 10,000-byte body at 500 bytes a second; the body.
fn trickled_with_executor_digests() -> (Harness, Vec<u8>) {
    let body = pattern(10_000, 67);
    let mut cfg = executor_digest_config(0);
    cfg.checkpoint_bytes = 1_000;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[500]).gap(secs(1))
    });
    (h, body)
}

#[test]
fn with_executor_digests_checkpoints_vouch_for_their_bytes_with_the_executors_digest_and_a_resume_checks_it(
) {
    let (mut h, body) = trickled_with_executor_digests();
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    h.run_until("3000 bytes arrived", |h| {
        h.progress(job).last().is_some_and(|&b| b >= 3_000)
    });
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert!(!h.fs.state_writes.is_empty(), "checkpoints were written");
    // The engine hashed nothing itself: each checkpoint records the executor's digest of the
    // bytes written, as a verified prefix a resume checks.
    for s in &h.fs.state_writes {
        let n = s.verified as usize;
        assert!(n > 0 && s.ranges.is_empty(), "{s:?}");
        assert_eq!(s.prefix_sha256, sha_hex(&body[..n]), "{s:?}");
    }
    assert!(h.count_ops(|op| matches!(op, IoOp::Digest { keep: true, .. })) > 0);
    let saved =
        PartState::decode_for(h.fs.get(state()).expect("state kept"), URL).expect("valid state");
    let kept = saved.verified;
    assert!(kept >= 3_000, "{saved:?}");
    // A new job re-hashes the kept prefix (no executor digest: the file was not written
    // from zero by this job), resumes after it and commits the exact bytes.
    let digests_before = h.count_ops(|op| matches!(op, IoOp::Digest { .. }));
    let again = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(again).expect("resumed job");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, kept);
    assert_eq!(
        h.count_ops(|op| matches!(op, IoOp::Digest { .. })),
        digests_before
    );
    assert!(
        h.count_ops(|op| matches!(op, IoOp::ReadAt { .. })) > 0,
        "read back"
    );
}

/// A new run over a state file and a partial that a killed run left (SIGKILL: the bytes
/// written stay, the state is whatever was last written).
fn after_a_kill(h: Harness, cfg: Config) -> Harness {
    let mut fs = h.fs;
    fs.open.clear();
    fs.refused.clear();
    let mut again = Harness::new(cfg);
    again.fs = fs;
    again
}

#[test]
fn a_state_left_from_before_a_restart_from_zero_never_splices_the_old_version_onto_the_new() {
    // With executor digests, checkpoints recorded their bytes as unverified ranges. The file
    // changed (a 200 answered the resume), the partial was emptied and refilled with the new
    // version, and the process was killed before the next checkpoint: the next run trusted
    // "v1, bytes 0..3000" and appended v1's tail to v2's head.
    let v1 = pattern(10_000, 81);
    let v2 = pattern(10_000, 82);
    let cfg = executor_digest_config(0);
    let mut h = Harness::new(cfg.clone());
    let (a, b) = (v1.clone(), v2.clone());
    h.serve(ORIGIN, move |req| {
        if req.seq == 0 {
            // v1, cut after 3,000 bytes: the retry checkpoints "v1, 0..3000".
            let wire = with_length(200, &[hdr("ETag", "\"v1\"")], &a);
            let cut = head_len(&wire) + 3_000;
            return Reply::new(wire[..cut].to_vec()).then(After::Eof);
        }
        // The file changed: a 200 of v2; 5,000 bytes arrive, then the connection stalls.
        let wire = with_length(200, &[hdr("ETag", "\"v2\"")], &b);
        let cut = head_len(&wire) + 5_000;
        Reply::new(wire[..cut].to_vec())
    });
    let _job = h.submit(download());
    h.run_until("5,000 bytes of v2 written", |h| {
        h.fs.get(part())
            .is_some_and(|p| p.len() >= 5_000 && p[..5_000] == v2[..5_000])
    });
    let mut h = after_a_kill(h, cfg);
    // The origin serves v1 again (a rollback, or a node that still has v1).
    let a = v1.clone();
    h.serve(ORIGIN, move |req| {
        let range = req.header("range").and_then(|r| r.strip_prefix("bytes="));
        match (range, req.header("if-range")) {
            (Some(r), Some("\"v1\"")) => {
                let first: usize = r.trim_end_matches('-').parse().unwrap();
                let content_range = format!("bytes {first}-9999/10000");
                Reply::new(with_length(
                    206,
                    &[hdr("ETag", "\"v1\""), hdr("Content-Range", content_range)],
                    &a[first..],
                ))
            }
            _ => Reply::new(with_length(200, &[hdr("ETag", "\"v1\"")], &a)),
        }
    });
    let job = h.submit(download());
    let out = h.run(job).expect("downloads v1");
    assert_committed(&h, &v1);
    assert_eq!(out.resumed_from, 0, "nothing of the partial is v1's");
}

#[test]
fn a_partial_changed_on_disk_behind_a_state_of_the_executors_digest_starts_over() {
    let (mut h, body) = trickled_with_executor_digests();
    let cfg = h.engine.config().clone();
    h.submit(download());
    h.run_until("a checkpoint of 3,000 bytes", |h| {
        h.fs.state_writes.iter().any(|s| s.verified >= 3_000)
    });
    let mut h = after_a_kill(h, cfg);
    let mut partial = h.fs.get(part()).expect("partial").to_vec();
    partial[100] ^= 0xff;
    h.fs.put(part(), &partial);
    let b = body.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    let again = h.submit(download());
    let out = h.run(again).expect("downloads again");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, 0, "the changed partial is not continued");
}

#[test]
fn with_executor_digests_a_mismatch_is_retried_from_zero_then_publishes_nothing() {
    let body = pattern(4_000, 64);
    let mut h = Harness::new(executor_digest_config(u64::MAX));
    h.serve(ORIGIN, file_server(body.clone()));
    let wrong = sha_hex(b"something else");
    let job = h.submit(download().sha256(&wrong).unwrap());
    match h.run(job) {
        Err(DownloadError::HashMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha_hex(&body), "the executor's digest of the bytes");
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_nothing_left(&h);
    assert_eq!(h.requests.len(), 2, "retried once");
    assert_eq!(
        h.count_ops(|op| matches!(op, IoOp::Digest { len: 4_000, .. })),
        2,
        "each attempt asks for its own digest"
    );
    assert_eq!(h.count_ops(|op| matches!(op, IoOp::Publish { .. })), 0);
}

#[test]
fn a_download_longer_than_unnamed_max_or_of_unknown_length_uses_a_named_partial() {
    let body = pattern(5_000, 61);
    let mut h = Harness::new(unnamed_config(4_999));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    let b = body.clone();
    let mut chunked_run = Harness::new(unnamed_config(u64::MAX));
    chunked_run.serve(ORIGIN, move |_| {
        Reply::new(chunked(200, &[hdr("ETag", ETAG)], &b, 700))
    });
    let job = chunked_run.submit(download());
    chunked_run.run(job).expect("downloaded");
    assert_committed(&chunked_run, &body);
    for h in [&h, &chunked_run] {
        let ops: Vec<&IoOp> = h.ops.iter().map(|(_, op)| op).collect();
        assert!(
            ops.iter().any(|op| matches!(op, IoOp::Open { .. }))
                && ops.iter().any(|op| matches!(op, IoOp::Rename { .. }))
                && !ops.iter().any(|op| matches!(op, IoOp::OpenUnnamed { .. })),
            "{ops:?}"
        );
    }
}

#[test]
fn a_failed_publish_fails_with_local_io_and_leaves_nothing_at_the_destination() {
    let body = pattern(2_000, 62);
    let mut h = Harness::new(unnamed_config(u64::MAX));
    h.fs.fail_rename = true;
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { path, failure }) => {
            assert_eq!(path, dest());
            assert_eq!(failure.kind, IoErrorKind::PermissionDenied);
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert_nothing_left(&h);
}

#[test]
fn a_write_failure_of_an_unnamed_file_publishes_nothing() {
    let body = pattern(10_000, 63);
    let mut h = Harness::new(unnamed_config(u64::MAX));
    h.fs.space_left = Some(body.len() as u64 - 1);
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { failure, .. }) => {
            assert_eq!(failure.kind, IoErrorKind::NoSpace)
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert!(
        !h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::Publish { .. })),
        "published after a failed write"
    );
    assert_nothing_left(&h);
}

#[test]
fn an_unnamed_download_interrupted_mid_body_keeps_no_partial_and_writes_no_state() {
    let body = pattern(10_000, 64);
    let mut h = Harness::new(unnamed_config(u64::MAX));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[500]).gap(secs(1))
    });
    let job = h.submit(download());
    h.run_until("3000 bytes arrived", |h| {
        h.progress(job).last().is_some_and(|&b| b >= 3_000)
    });
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert_nothing_left(&h);
    assert!(
        !h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::WriteFileAtomic { .. })),
        "a state file was written for an unnamed file"
    );
}

// ------------------------------------------------------------------------ cancel

/// Starts a 10 000-byte download trickling 500 bytes a second and runs it until 3 000 bytes
/// arrived; the harness, the job and the bytes received.
fn trickled_to_3000() -> (Harness, JobId, u64) {
    let body = pattern(10_000, 33);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&body, req))
            .pieces(&[500])
            .gap(secs(1))
    });
    let job = h.submit(download());
    h.run_until("3000 bytes arrived", |h| {
        h.progress(job).last().is_some_and(|&b| b >= 3_000)
    });
    let received = *h.progress(job).last().expect("progress");
    (h, job, received)
}

/// [`trickled_to_3000`], then cancelled; also the job's result.
fn cancel_mid_body(mode: CancelMode) -> (Harness, JobId, Result<Outcome, DownloadError>, u64) {
    let (mut h, job, received) = trickled_to_3000();
    h.cancel(job, mode);
    let result = h.run(job);
    (h, job, result, received)
}

#[test]
fn a_discard_after_a_cancel_that_keeps_removes_the_partial_while_it_is_still_open() {
    // The second, explicit cancel was ignored: the partial and its state stayed.
    let (mut h, job, _) = trickled_to_3000();
    h.engine.cancel(h.now, job, CancelMode::KeepPartial);
    h.engine.cancel(h.now, job, CancelMode::Discard);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert_nothing_left(&h);
}

#[test]
fn a_state_from_a_mirror_no_longer_listed_is_not_rewritten_as_the_primarys() {
    // The partial's first 2,000 bytes came from a mirror the download no longer lists (same
    // ETag, other bytes). Run 1 has a sha256, so it resumes from the primary; its
    // checkpoints must not claim that the bytes came from the primary.
    let gone = pattern(10_000, 91);
    let primary = pattern(10_000, 92);
    let mut st = valid_state(&gone, 2_000);
    st.source = Some("http://gone.test/f.bin".into());
    let mut cfg = config();
    cfg.checkpoint_bytes = 1_000;
    let mut h = Harness::new(cfg);
    h.fs.put(part(), &gone[..2_000]);
    h.fs.put(state(), &st.encode());
    let b = primary.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[500]).gap(secs(1))
    });
    let job = h.submit(download().sha256(&sha_hex(&primary)).unwrap());
    h.run_until("a checkpoint", |h| {
        h.fs.state_writes.iter().any(|s| s.verified >= 4_000)
    });
    h.cancel(job, CancelMode::KeepPartial);
    let _ = h.run(job);
    let written = h.fs.state_writes.last().expect("a checkpoint").clone();
    // Run 2, the same URL without the sha256: it resumes from the primary.
    let b = primary.clone();
    h.serve(ORIGIN, move |req| Reply::new(serve_range(&b, req)));
    let again = h.submit(download());
    let out = h.run(again);
    assert!(
        h.fs.get(dest()) != Some(&[&gone[..2_000], &primary[2_000..]].concat()[..]),
        "committed the gone mirror's bytes spliced onto the primary's (state source {:?}, \
         outcome {out:?})",
        written.source
    );
}

#[test]
fn cancel_keep_partial_mid_body_keeps_part_and_state_and_a_later_job_resumes() {
    let (mut h, job, result, received) = cancel_mid_body(CancelMode::KeepPartial);
    assert_eq!(result, Err(DownloadError::Cancelled));
    assert!(
        h.finished_at(job) < at(secs(10)),
        "cancel does not wait for the body"
    );
    assert!(!h.fs.exists(dest()));
    let saved =
        PartState::decode_for(h.fs.get(state()).expect("state kept"), URL).expect("valid state");
    assert_eq!(
        saved.verified, received,
        "every received byte is vouched for"
    );
    let body = pattern(10_000, 33);
    assert_eq!(
        &h.fs.get(part()).expect("partial kept")[..received as usize],
        &body[..received as usize]
    );
    // A new job picks it up.
    let again = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(again).expect("resumed job");
    assert_committed(&h, &body);
    assert_eq!(out.resumed_from, received);
    assert_eq!(
        h.requests
            .last()
            .and_then(|r| r.header("range"))
            .map(str::to_string),
        Some(format!("bytes={received}-"))
    );
}

#[test]
fn a_download_submitted_while_its_cancelled_predecessor_tidies_up_waits_and_resumes_its_partial() {
    let body = pattern(10_000, 33);
    let b = body.clone();
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[500]).gap(secs(1))
    });
    let first = h.submit(download());
    h.run_until("3000 bytes arrived", |h| {
        h.progress(first).last().is_some_and(|&b| b >= 3_000)
    });
    let received = *h.progress(first).last().expect("progress");
    h.cancel(first, CancelMode::KeepPartial);
    assert!(
        h.finished(first).is_none(),
        "the cancelled job still closes its partial and writes its state"
    );
    // The same download again, at once (a caller restarting what it just cancelled).
    let again = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    assert_eq!(h.run(first), Err(DownloadError::Cancelled));
    let out = h
        .run(again)
        .expect("not refused: it waited for its predecessor to end");
    assert_committed(&h, &body);
    assert_eq!(
        out.resumed_from, received,
        "and resumed the partial it kept"
    );
}

#[test]
fn cancel_discard_mid_body_removes_part_and_state() {
    let (h, _job, result, _) = cancel_mid_body(CancelMode::Discard);
    assert_eq!(result, Err(DownloadError::Cancelled));
    assert_nothing_left(&h);
    // The partial is closed holding its lock for the removal that follows.
    let close = h
        .ops
        .iter()
        .rposition(|(_, op)| matches!(op, IoOp::CloseFile { .. }))
        .expect("closed");
    assert!(matches!(
        h.ops[close].1,
        IoOp::CloseFile {
            then: AfterClose::Removed,
            ..
        }
    ));
    assert!(h.ops[close..]
        .iter()
        .any(|(_, op)| matches!(op, IoOp::Remove { path } if *path == part())));
}

#[test]
fn cancel_while_the_state_file_is_read_finishes_cancelled_without_touching_the_partial() {
    let body = pattern(5_000, 34);
    let planted = valid_state(&body, 2_000);
    let mut h = with_partial(&body, 2_000, 0, planted.clone());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    assert!(h.pending_has(|op| matches!(op, IoOp::ReadFile { .. })));
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert!(h.requests.is_empty(), "a cancelled job contacts no server");
    assert_eq!(h.fs.get(part()), Some(&body[..2_000]));
    assert_eq!(h.fs.get(state()), Some(&planted.encode()[..]));
}

#[test]
fn cancel_while_the_partial_is_opened_finishes_cancelled() {
    let body = pattern(5_000, 35);
    let mut h = with_partial(&body, 2_000, 0, valid_state(&body, 2_000));
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run_until("the partial is being opened", |h| {
        h.pending_has(|op| matches!(op, IoOp::Open { .. }))
    });
    h.cancel(job, CancelMode::Discard);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert!(h.requests.is_empty());
    assert_nothing_left(&h);
}

#[test]
fn cancel_keep_partial_while_rehashing_keeps_the_partial_and_its_state() {
    let body = pattern(5_000, 36);
    let planted = valid_state(&body, 2_000);
    let mut h = with_partial(&body, 2_000, 0, planted.clone());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run_until("the prefix is being re-hashed", |h| {
        h.pending_has(|op| matches!(op, IoOp::ReadAt { .. }))
    });
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert!(h.requests.is_empty());
    assert_eq!(
        h.fs.get(part()),
        Some(&body[..2_000]),
        "the partial is kept as it was"
    );
    assert_eq!(h.fs.get(state()), Some(&planted.encode()[..]));
}

// ------------------------------------------------------------------------ checkpoints

#[test]
fn checkpoints_advance_while_streaming_and_name_a_durable_prefix_with_a_matching_digest() {
    let body = pattern(20_000, 37);
    let mut cfg = config();
    cfg.checkpoint_bytes = 1_000;
    let mut h = Harness::new(cfg);
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[700])
    });
    let job = h.submit(download());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    // Each write was checked against the durable partial when it happened (see FakeFs).
    let verified: Vec<u64> = h.fs.state_writes.iter().map(|s| s.verified).collect();
    assert!(verified.len() >= 5, "too few checkpoints: {verified:?}");
    assert!(
        verified.windows(2).all(|w| w[0] < w[1]),
        "not advancing: {verified:?}"
    );
    assert!(
        *verified.last().expect("some") >= 15_000,
        "checkpoints stopped early: {verified:?}"
    );
    assert!(h
        .fs
        .state_writes
        .iter()
        .all(|s| s.url == URL && s.validator == Validator::Etag(ETAG.into())));
}

#[test]
fn checkpoint_still_writing_when_the_body_ends_leaves_no_state_file_after_commit() {
    let body = pattern(5_000, 38);
    let mut cfg = config();
    cfg.checkpoint_bytes = 1_000;
    let mut h = Harness::new(cfg);
    // A slow state-file write: it runs only when nothing else can.
    h.defer = Some(Box::new(|op| matches!(op, IoOp::WriteFileAtomic { .. })));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[1_000])
    });
    let job = h.submit(download());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
}

// ------------------------------------------------------------------------ more behaviours

#[test]
fn slow_disk_pauses_reading_so_the_write_backlog_stays_bounded() {
    let body = pattern(400_000, 40);
    let mut cfg = config();
    cfg.max_write_backlog = 64 * 1024;
    let mut h = Harness::new(cfg);
    // Writes complete only when nothing else can: the network is always ahead of the disk.
    h.defer = Some(Box::new(|op| matches!(op, IoOp::WriteAt { .. })));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        Reply::new(serve_range(&b, req)).pieces(&[4_096])
    });
    let job = h.submit(download());
    h.run(job).expect("download succeeds");
    assert_committed(&h, &body);
    assert!(
        h.max_write_backlog <= 64 * 1024 + 4_096,
        "{} bytes waited for the disk",
        h.max_write_backlog
    );
    assert!(h.max_write_backlog > 32 * 1024, "the disk was never behind");
}

#[test]
fn concurrent_jobs_use_their_own_connections_and_each_get_their_bytes() {
    let (one, two) = (pattern(6_000, 41), pattern(7_000, 42));
    let mut h = Harness::new(config());
    let (b1, b2) = (one.clone(), two.clone());
    h.serve(ORIGIN, move |req| {
        let body = if req.path.ends_with("one") { &b1 } else { &b2 };
        Reply::new(serve_range(body, req))
            .pieces(&[333])
            .gap(Duration::from_millis(10))
    });
    let first = h.submit(Download::new("http://a.test/one", "/dl/one").unwrap());
    let second = h.submit(Download::new("http://a.test/two", "/dl/two").unwrap());
    h.run(first).expect("first");
    h.run(second).expect("second");
    assert_eq!(h.fs.get("/dl/one"), Some(&one[..]));
    assert_eq!(h.fs.get("/dl/two"), Some(&two[..]));
    assert_eq!(h.connects(), 2);
    assert_ne!(h.requests[0].conn, h.requests[1].conn);
}

#[test]
fn directory_destination_takes_its_name_from_content_disposition() {
    let body = pattern(1_000, 43);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        let cd = hdr("Content-Disposition", "attachment; filename=\"real.bin\"");
        Reply::new(with_length(200, &[cd], &b))
    });
    let job = h.submit(Download::into_dir(URL, "/dl").unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_eq!(out.path, PathBuf::from("/dl/real.bin"));
    assert_eq!(h.fs.get("/dl/real.bin"), Some(&body[..]));
    assert!(!h.fs.exists(part()), "the partial was named after the URL");
}

/// A server's name never replaces a file that is there: the job fails with
/// `ServerNameTaken`, the existing file untouched; once it is gone, the same download
/// commits under the server's name.
#[test]
fn a_name_from_content_disposition_never_replaces_an_existing_file() {
    let body = pattern(1_000, 45);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        let cd = hdr("Content-Disposition", "attachment; filename=\"real.bin\"");
        Reply::new(with_length(200, &[cd], &b))
    });
    h.fs.put("/dl/real.bin", b"the user's own file");
    let job = h.submit(Download::into_dir(URL, "/dl").unwrap());
    let result = h.run(job);
    assert_eq!(
        result,
        Err(DownloadError::ServerNameTaken {
            path: PathBuf::from("/dl/real.bin")
        })
    );
    assert_eq!(result.unwrap_err().class(), crate::ErrorClass::Usage);
    assert_eq!(h.fs.get("/dl/real.bin"), Some(&b"the user's own file"[..]));
    h.settle();
    assert_eq!(h.engine.active_jobs(), 0);

    h.fs.names.remove(Path::new("/dl/real.bin"));
    let again = h.submit(Download::into_dir(URL, "/dl").unwrap());
    let out = h.run(again).expect("the name is free now");
    assert_eq!(out.path, PathBuf::from("/dl/real.bin"));
    assert_eq!(h.fs.get("/dl/real.bin"), Some(&body[..]));
}

/// A taken name ends the download as soon as the probe says so, not after the whole body;
/// also when the answer finds the download paused (nothing more is fetched when resumed).
#[test]
fn a_taken_server_name_ends_the_download_before_its_body_is_fetched() {
    let body = pattern(40_000, 47);
    for paused in [false, true] {
        let mut h = Harness::new(config());
        let b = body.clone();
        h.serve(ORIGIN, move |_| {
            let cd = hdr("Content-Disposition", "attachment; filename=\"real.bin\"");
            Reply::new(with_length(200, &[cd, hdr("ETag", ETAG)], &b))
                .pieces(&[4_000])
                .gap(secs(1))
        });
        h.fs.put("/dl/real.bin", b"the user's own file");
        if paused {
            // The probe answers at 5 s; the download is paused at 2 s.
            h.hold = Some(Box::new(|op| {
                matches!(op, IoOp::OpenRead { .. }).then(|| at(secs(5)))
            }));
        }
        let job = h.submit(Download::into_dir(URL, "/dl").unwrap());
        if paused {
            h.run_until("two seconds in", |h| h.now >= at(secs(2)));
            h.engine.pause(h.now, job);
            h.drain();
        }
        assert_eq!(
            h.run(job),
            Err(DownloadError::ServerNameTaken {
                path: PathBuf::from("/dl/real.bin")
            }),
            "paused: {paused}"
        );
        assert!(
            h.now < at(secs(6)),
            "paused: {paused}: ended at {:?}",
            h.now
        );
        let fetched = h.bytes_written();
        assert!(fetched < 20_000, "{fetched} bytes fetched for nothing");
        assert_eq!(h.fs.get("/dl/real.bin"), Some(&b"the user's own file"[..]));
    }
}

/// A hidden name from a server (`.bashrc`) is not taken: the URL's name is used.
#[test]
fn a_hidden_name_from_content_disposition_is_ignored_for_the_urls() {
    let body = pattern(1_000, 46);
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |_| {
        let cd = hdr("Content-Disposition", "attachment; filename=\".bashrc\"");
        Reply::new(with_length(200, &[cd], &b))
    });
    h.fs.put("/dl/.bashrc", b"alias ls='ls -F'");
    let job = h.submit(Download::into_dir(URL, "/dl").unwrap());
    let out = h.run(job).expect("download succeeds");
    assert_eq!(out.path, dest());
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert_eq!(h.fs.get("/dl/.bashrc"), Some(&b"alias ls='ls -F'"[..]));
}

/// A body cut after 1 000 bytes on the first attempt, served with `validator` headers.
fn cut_once_without_strong_validator(validator: &[(&'static str, String)]) {
    let body = pattern(3_000, 44);
    let mut h = Harness::new(config());
    let (b, v) = (body.clone(), validator.to_vec());
    h.serve(ORIGIN, move |req| {
        let wire = with_length(200, &v, &b);
        if req.seq == 0 {
            Reply::new(wire[..head_len(&wire) + 1_000].to_vec()).then(After::Eof)
        } else {
            Reply::new(wire)
        }
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job).expect("the retry fetches everything");
    assert_committed(&h, &body);
    assert_eq!(out.bytes_fetched, 4_000);
    assert_eq!(header_of(&h, 1, "range"), None, "no validator, no resume");
}

#[test]
fn truncated_body_without_a_validator_restarts_from_zero_without_range() {
    cut_once_without_strong_validator(&[]);
}

#[test]
fn truncated_body_with_only_a_weak_etag_restarts_from_zero_without_range() {
    cut_once_without_strong_validator(&[hdr("ETag", "W/\"weak\"")]);
}

#[test]
fn cancel_keep_partial_without_a_strong_validator_removes_the_partial() {
    let body = pattern(10_000, 45);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, move |_| {
        Reply::new(with_length(200, &[], &body))
            .pieces(&[500])
            .gap(secs(1))
    });
    let job = h.submit(download());
    h.run_until("some bytes arrived", |h| !h.progress(job).is_empty());
    h.cancel(job, CancelMode::KeepPartial);
    assert_eq!(h.run(job), Err(DownloadError::Cancelled));
    assert_nothing_left(&h);
}

// ------------------------------------------------------------------------ property

/// Any body, cut into any pieces, optionally cut short on the first attempt (inside the head
/// or the body, length-delimited or chunked), with I/O completing in a random order: the job
/// ends with exactly the body at the destination and nothing else left.
fn exact_bytes_whatever_the_network_does(
    body: Vec<u8>,
    pieces: Vec<u8>,
    truncate_at: Option<u16>,
    chunked_first: bool,
    seed: u64,
) -> TestResult {
    let sizes: Vec<usize> = pieces.iter().map(|p| usize::from(*p % 97) + 1).collect();
    let mut cfg = config();
    cfg.checkpoint_bytes = 300;
    cfg.seed = seed;
    cfg.unnamed_max = if seed & 2 == 0 { u64::MAX } else { 0 };
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(seed));
    h.spurious_ticks = seed & 1 == 0;
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        if req.seq > 0 {
            return Reply::new(serve_range(&b, req)).pieces(&sizes);
        }
        let wire = if chunked_first {
            chunked(200, &[hdr("ETag", ETAG)], &b, 64)
        } else {
            serve_range(&b, req)
        };
        match truncate_at {
            Some(t) => {
                let cut = usize::from(t) % (wire.len() + 1);
                Reply::new(wire[..cut].to_vec())
                    .pieces(&sizes)
                    .then(After::Eof)
            }
            None => Reply::new(wire).pieces(&sizes),
        }
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let out = h.run(job);
    // A correct server continues every cut: no byte is fetched twice.
    let len = body.len() as u64;
    let ok = matches!(&out, Ok(o) if o.size == len && o.bytes_fetched == len)
        && h.fs.get(dest()) == Some(&body[..])
        && !h.fs.exists(part())
        && !h.fs.exists(state());
    if h.requests.iter().any(|r| r.header("range").is_some()) {
        RANGED_RUNS.fetch_add(1, Ordering::Relaxed);
    }
    if !ok {
        return TestResult::error(format!(
            "result {out:?}, {} requests, dest holds {:?} bytes",
            h.requests.len(),
            h.fs.get(dest()).map(<[u8]>::len)
        ));
    }
    TestResult::passed()
}

/// Property runs that resumed with a `Range` request (the property must not be vacuous).
static RANGED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn any_body_any_pieces_any_truncation_ends_with_exactly_the_body_at_the_destination() {
    QuickCheck::new()
        .tests(150)
        .rng(Gen::new(3_000))
        .quickcheck(
            exact_bytes_whatever_the_network_does
                as fn(Vec<u8>, Vec<u8>, Option<u16>, bool, u64) -> TestResult,
        );
    let ranged = RANGED_RUNS.load(Ordering::Relaxed);
    assert!(ranged >= 20, "only {ranged} runs exercised a ranged retry");
}

/// Each request meets a fault chosen by `faults` (a good answer, a 206 from the wrong offset,
/// a cut followed by EOF, a reset or a stall, a 503, a 200 that ignores `Range`), with I/O completing in a random
/// order: a success holds exactly the body, a failure leaves nothing at the destination, and
/// any state file left behind describes its partial (checked by the harness).
fn ends_exact_or_clean_whatever_faults(
    body: Vec<u8>,
    faults: Vec<u8>,
    pieces: Vec<u8>,
    seed: u64,
) -> TestResult {
    let sizes: Vec<usize> = pieces.iter().map(|p| usize::from(*p % 61) + 1).collect();
    let mut cfg = config();
    cfg.checkpoint_bytes = 200;
    cfg.idle_timeout = secs(5);
    cfg.seed = seed;
    cfg.unnamed_max = if seed & 2 == 0 { u64::MAX } else { 0 };
    cfg.retry = RetryPolicy {
        max_attempts: 8,
        base_delay: secs(1),
        max_delay: secs(4),
        max_elapsed: secs(600),
        budget_per_minute: 1000,
    };
    let mut h = Harness::new(cfg);
    h.schedule = Schedule::Random(SeededRng::new(seed));
    let b = body.clone();
    h.serve(ORIGIN, move |req| {
        let fault = faults.get(req.seq).copied().unwrap_or(0);
        let wire = serve_range(&b, req);
        let cut = (usize::from(fault) * 37 + req.seq * 11) % (wire.len() + 1);
        let reply = match fault % 7 {
            0 => Reply::new(wire),
            1 if !b.is_empty() => {
                // A 206 from the first byte, whatever was asked.
                let cr = format!("bytes 0-{}/{}", b.len() - 1, b.len());
                let headers = [hdr("ETag", ETAG), hdr("Content-Range", cr)];
                Reply::new(with_length(206, &headers, &b))
            }
            1 => Reply::new(wire),
            2 => Reply::new(wire[..cut].to_vec()).then(After::Eof),
            3 => Reply::new(wire[..cut].to_vec()).then(After::Reset),
            4 => Reply::new(wire[..cut].to_vec()),
            5 => Reply::new(with_length(503, &[], b"busy")),
            _ => Reply::new(with_length(200, &[hdr("ETag", ETAG)], &b)),
        };
        reply.pieces(&sizes)
    });
    let job = h.submit(download().sha256(&sha_hex(&body)).unwrap());
    let result = h.run(job);
    let outcomes = if result.is_ok() {
        &FAULT_RUNS_OK
    } else {
        &FAULT_RUNS_FAILED
    };
    outcomes.fetch_add(1, Ordering::Relaxed);
    let ok = match &result {
        Ok(_) => h.fs.get(dest()) == Some(&body[..]) && !h.fs.exists(part()),
        Err(e) => e.retryable() && !h.fs.exists(dest()),
    };
    if !ok {
        return TestResult::error(format!(
            "result {result:?} after {} requests",
            h.requests.len()
        ));
    }
    TestResult::passed()
}

/// Runs of the fault property that succeeded and that failed (both must happen).
static FAULT_RUNS_OK: AtomicUsize = AtomicUsize::new(0);
static FAULT_RUNS_FAILED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn any_sequence_of_faults_ends_with_exact_bytes_or_a_clean_retryable_failure() {
    QuickCheck::new()
        .tests(150)
        .rng(Gen::new(1_500))
        .quickcheck(
            ends_exact_or_clean_whatever_faults as fn(Vec<u8>, Vec<u8>, Vec<u8>, u64) -> TestResult,
        );
    let ok = FAULT_RUNS_OK.load(Ordering::Relaxed);
    let failed = FAULT_RUNS_FAILED.load(Ordering::Relaxed);
    assert!(ok >= 20 && failed >= 1, "{ok} succeeded, {failed} failed");
}

#[test]
fn a_fresh_download_without_checkpoints_removes_no_state_file_it_never_wrote() {
    let body = pattern(5_000, 41);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    let job = h.submit(download());
    h.run(job).expect("downloaded");
    assert_eq!(h.fs.get(dest()), Some(&body[..]));
    assert!(
        !h.ops
            .iter()
            .any(|(_, op)| matches!(op, IoOp::Remove { .. })),
        "a Remove was issued: {:?}",
        h.ops
    );
}

#[test]
fn a_state_file_found_at_the_start_is_removed_by_the_commit() {
    let body = pattern(40_000, 42);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    h.fs.put(part(), &body[..10_000]);
    h.fs.put(state(), &valid_state(&body, 10_000).encode());
    let job = h.submit(download());
    let out = h.run(job).expect("resumed");
    assert_eq!(out.resumed_from, 10_000);
    assert!(
        !h.fs.exists(state()),
        "the state file is gone after the commit"
    );
}

/// A URL that redirects elsewhere than it did when the partial's bytes arrived (`/latest`
/// to `v2.iso` instead of `v1.iso`) is not resumed there, even when that resource answers
/// the range under the same ETag (ETags are only comparable for one resource; nginx's
/// `mtime-size` ETags collide for files of one size and time): the file starts over and
/// holds exactly `v2.iso`, in this run and from a state file of an earlier one. Without
/// the check both committed a splice of the two files, with no sha256 to catch it.
#[test]
fn a_resume_redirected_to_another_resource_starts_over_instead_of_splicing_two_files() {
    let v1 = pattern(6_000, 61);
    let v2 = pattern(6_000, 62);
    let cut = 2_000;
    let serve = |v1: Vec<u8>, v2: Vec<u8>, first_to_v1: bool| {
        move |req: &Req| match req.path.as_str() {
            "/latest" => {
                let to = match req.seq == 0 && first_to_v1 {
                    true => "/v1.iso",
                    false => "/v2.iso",
                };
                Reply::new(with_length(302, &[hdr("Location", to)], b""))
            }
            "/v1.iso" => {
                let wire = serve_range(&v1, req);
                Reply::new(wire[..head_len(&wire) + cut].to_vec()).then(After::Eof)
            }
            "/v2.iso" => Reply::new(serve_range(&v2, req)),
            other => panic!("unexpected path {other}"),
        }
    };
    // In one run: the retry after the cut is redirected to v2.
    let mut h = Harness::new(config());
    h.serve(ORIGIN, serve(v1.clone(), v2.clone(), true));
    let job = h.submit(Download::new("http://a.test/latest", dest()).unwrap());
    h.run(job).expect("the restart gets v2 whole");
    assert_committed(&h, &v2);
    let ranges: Vec<Option<String>> = (0..h.requests.len())
        .map(|i| header_of(&h, i, "range"))
        .collect();
    assert_eq!(
        ranges.last().unwrap(),
        &None,
        "the last request asks for the whole file: {ranges:?}"
    );
    // From a state file written when `/latest` led to v1.
    let mut state = valid_state(&v1, cut);
    state.url = "http://a.test/latest".into();
    state.resource = Some("v1.iso".into());
    let mut h = with_partial(&v1, cut, 0, state);
    h.serve(ORIGIN, serve(v1.clone(), v2.clone(), false));
    let job = h.submit(Download::new("http://a.test/latest", dest()).unwrap());
    let out = h.run(job).expect("the restart gets v2 whole");
    assert_committed(&h, &v2);
    assert_eq!(out.resumed_from, 0);
    let retries = h.retries(job);
    assert!(
        matches!(&retries[0].3, DownloadError::RangeMismatch { detail } if detail.contains("v1.iso")),
        "{retries:?}"
    );
}

/// A URL that gives no usable file name (none at all, a working file's name, a name with a
/// `/` in it) downloads into a directory as `download`, a name haul chose, which never
/// replaces a file that is there: `FallbackNameTaken`, the file untouched. A URL that names
/// `download` itself replaces it, as any URL's own name does.
#[test]
fn the_fallback_name_never_replaces_an_existing_file() {
    let body = pattern(1_000, 48);
    for url in [
        "http://a.test/",
        "http://a.test/x/name.haul-part",
        "http://a.test/x/..%2F..%2Fevil.bin",
    ] {
        let mut h = Harness::new(config());
        h.serve(ORIGIN, file_server(body.clone()));
        h.fs.put("/dl/download", b"the user's own file");
        let job = h.submit(Download::into_dir(url, "/dl").unwrap());
        let result = h.run(job);
        assert_eq!(
            result,
            Err(DownloadError::FallbackNameTaken {
                path: PathBuf::from("/dl/download")
            }),
            "{url}"
        );
        assert_eq!(h.fs.get("/dl/download"), Some(&b"the user's own file"[..]));
        // Free: the fallback name is used.
        h.fs.names.remove(Path::new("/dl/download"));
        let again = h.submit(Download::into_dir(url, "/dl").unwrap());
        let out = h.run(again).expect("the name is free now");
        assert_eq!(out.path, PathBuf::from("/dl/download"));
        assert_eq!(h.fs.get("/dl/download"), Some(&body[..]));
    }
    let mut h = Harness::new(config());
    h.serve(ORIGIN, file_server(body.clone()));
    h.fs.put("/dl/download", b"an older download");
    let job = h.submit(Download::into_dir("http://a.test/get/download", "/dl").unwrap());
    h.run(job).expect("the URL's own name replaces the file");
    assert_eq!(h.fs.get("/dl/download"), Some(&body[..]));
}

/// A small download whose destination exists is published through its partial's name; when
/// another process downloading to the same destination holds that name, the job ends with
/// `PartialInUse`, and that process's partial and state file, and the destination, are left
/// as they were (its partial was removed, and its state after the commit).
#[test]
fn a_small_download_yields_to_another_process_holding_its_partial_s_name() {
    let body = pattern(5_000, 63);
    let mut h = Harness::new(unnamed_config(5_000));
    h.serve(ORIGIN, file_server(body));
    h.fs.put(dest(), b"an older file");
    h.fs.put(part(), b"theirs");
    h.fs.put(state(), b"their state");
    h.fs.held_elsewhere.insert(part());
    let job = h.submit(download());
    assert_eq!(
        h.run(job),
        Err(DownloadError::PartialInUse { path: part() })
    );
    assert_eq!(h.fs.get(dest()), Some(&b"an older file"[..]));
    assert_eq!(h.fs.get(part()), Some(&b"theirs"[..]));
    assert_eq!(h.fs.get(state()), Some(&b"their state"[..]));
}

/// A redirect to where haul cannot follow (`ftp://`) is the server's answer at fault, as a
/// redirect loop is: `BadRedirect` naming both URLs, an HTTP-status class failure, not
/// retried (it was a network-class protocol error).
#[test]
fn a_redirect_to_another_scheme_fails_with_bad_redirect_and_is_not_retried() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(
            302,
            &[hdr("Location", "ftp://a.test/f.bin")],
            b"",
        ))
    });
    let job = h.submit(Download::new("http://a.test/a", dest()).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::BadRedirect { .. }) => {
            assert_eq!(e.class(), crate::ErrorClass::HttpStatus);
            let message = e.to_string();
            assert!(
                message.contains("http://a.test/a") && message.contains("ftp://a.test/f.bin"),
                "{message}"
            );
        }
        other => panic!("expected BadRedirect, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1, "not retried");
    assert!(!h.fs.exists(dest()));
}

/// A download whose scheme's proxy variable names a proxy haul cannot use (`socks5://`)
/// fails as a usage error naming the variable, before connecting anywhere; one of the
/// other scheme, or bypassing the proxy, goes on.
#[test]
fn a_download_through_an_unusable_proxy_fails_naming_the_variable_and_others_go_on() {
    let body = pattern(1_000, 64);
    let mut cfg = config();
    cfg.proxy = crate::ProxyConfig::from_lookup(|k| match k {
        "http_proxy" => Some("socks5://u:SECRET@p:1080".into()),
        "no_proxy" => Some("b.test".into()),
        _ => None,
    })
    .unwrap();
    let mut h = Harness::new(cfg);
    h.serve(ORIGIN, file_server(body.clone()));
    h.serve("http://b.test:80", file_server(body.clone()));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::InvalidRequest(why)) => {
            assert!(why.contains("http_proxy"), "{why}");
            assert!(!why.contains("SECRET"), "{why}");
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert_eq!(h.connects(), 0);
    let bypassing = h.submit(Download::new("http://b.test/f.bin", "/dl/b.bin").unwrap());
    h.run(bypassing).expect("no_proxy: direct");
    assert_eq!(h.fs.get("/dl/b.bin"), Some(&body[..]));
}

/// A redirect to a URL with user-info is not followed (`BadRedirect`), and no message
/// shows the password: it would land in events, errors and state files.
#[test]
fn a_redirect_to_a_url_with_credentials_is_not_followed_and_hides_them() {
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(
            302,
            &[hdr("Location", "http://ruser:SECRET@a.test/f.bin")],
            b"",
        ))
    });
    let job = h.submit(Download::new("http://a.test/a", dest()).unwrap());
    match h.run(job) {
        Err(e @ DownloadError::BadRedirect { .. }) => {
            let message = e.to_string();
            assert!(!message.contains("SECRET"), "{message}");
            assert!(message.contains("credentials"), "{message}");
        }
        other => panic!("expected BadRedirect, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1);
    assert!(h
        .events
        .iter()
        .all(|(_, e)| !format!("{e:?}").contains("SECRET")));
}

/// A commit refused because the partial's path names another process's file now (it
/// removed this download's partial and started its own): the job fails, and the partial and
/// state file at those paths, that process's, are left alone (the clean-up of a failed
/// commit removed them).
#[test]
fn a_commit_refused_for_a_replaced_partial_leaves_the_other_process_s_files() {
    let body = pattern(2_000, 33);
    let mut h = Harness::new(config());
    h.fs.partial_replaced = true;
    h.serve(ORIGIN, file_server(body));
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::LocalIo { failure, .. }) => {
            assert_eq!(failure.kind, IoErrorKind::Replaced)
        }
        other => panic!("expected LocalIo, got {other:?}"),
    }
    assert!(
        h.fs.exists(part()),
        "the partial at the path is not this job's"
    );
    assert!(!h.fs.exists(dest()));
    assert_eq!(
        h.count_ops(
            |op| matches!(op, IoOp::Remove { path } if *path == part() || *path == state())
        ),
        0
    );
}

/// Segments through a load-balancing redirector (each request sent to another node, same
/// bytes and ETag) split as usual: the file is the same whatever the host.
#[test]
fn segments_through_a_load_balancing_redirector_still_split() {
    let body = pattern(40_000, 71);
    let mut h = Harness::new(config());
    h.serve(ORIGIN, |req: &Req| {
        let to = format!("http://n{}.test{}", req.seq % 4, req.path);
        Reply::new(with_length(302, &[hdr("Location", to)], b""))
    });
    for n in 0..4 {
        let b = body.clone();
        h.serve(&format!("http://n{n}.test"), move |req: &Req| {
            Reply::new(serve_range(&b, req))
                .pieces(&[1_000])
                .gap(secs(1))
        });
    }
    let job = h.submit(download().segments(4).min_segment(4_000));
    h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    assert!(h.retries(job).is_empty(), "retries: {:?}", h.retries(job));
    assert!(!h
        .events_of(job)
        .iter()
        .any(|e| matches!(e, Event::SingleConnection { .. })));
}

/// A resume through a redirect to a signed path (`/dl/<token>/f.bin`, a new token each
/// time) continues the partial: the file is the same.
#[test]
fn a_resume_through_a_signed_path_redirect_continues_the_partial() {
    let body = pattern(6_000, 72);
    let cut = 2_000;
    let mut h = Harness::new(config());
    let b = body.clone();
    h.serve(ORIGIN, move |req: &Req| {
        if req.path == "/files/f.bin" {
            let to = format!("/dl/token{}/f.bin", req.seq);
            return Reply::new(with_length(302, &[hdr("Location", to)], b""));
        }
        let wire = serve_range(&b, req);
        if req.path == "/dl/token0/f.bin" {
            return Reply::new(wire[..head_len(&wire) + cut].to_vec()).then(After::Eof);
        }
        Reply::new(wire)
    });
    let job = h.submit(download());
    let out = h.run(job).expect("downloaded");
    assert_committed(&h, &body);
    assert_eq!(
        out.bytes_fetched,
        body.len() as u64,
        "nothing fetched twice"
    );
    assert!(h
        .retries(job)
        .iter()
        .all(|r| !matches!(r.3, DownloadError::RangeMismatch { .. })));
}

/// A 407 answered through a forwarding proxy (a plain-http download) is the proxy's refusal
/// of its credentials, not the origin's answer: a final connect failure naming the proxy,
/// as for a refused tunnel (it was an HTTP status error of the origin, exit 4 instead of 3).
#[test]
fn a_407_from_a_forwarding_proxy_is_the_proxy_s_refusal() {
    let mut cfg = config();
    cfg.proxy.http = Some(crate::proxy::parse_proxy_url("http://proxy.test:3128").unwrap());
    let mut h = Harness::new(cfg);
    // The harness answers for the origin whatever carries the request: here, the proxy.
    h.serve(ORIGIN, |_| {
        Reply::new(with_length(
            407,
            &[hdr("Proxy-Authenticate", "Basic realm=\"p\"")],
            b"",
        ))
    });
    let job = h.submit(download());
    match h.run(job) {
        Err(DownloadError::Connect { failure, .. }) => {
            assert_eq!(failure.kind, IoErrorKind::ProxyRefused, "{failure}");
            assert!(failure.message.contains("proxy.test:3128"), "{failure}");
        }
        other => panic!("expected a proxy refusal, got {other:?}"),
    }
    assert_eq!(h.requests.len(), 1, "not retried");
}
