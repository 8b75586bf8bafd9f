//! Files: every runtime executes the engine's file operations with these std calls, off its
//! async threads.
//!
//! Owns: one worker per open file that runs that file's operations in issue order (the
//! engine's contract), with `Sync` handed to a companion worker so writes keep flowing while
//! the disk flushes (a `Sync` may complete after later `WriteAt`s; `CloseFile` waits for
//! outstanding syncs so its completion follows everything before it); a pool of workers for
//! whole-file operations (state files, renames, removals); one durability worker that makes
//! commits durable in groups (see `Pending`); optionally
//! ([`Files::inline_small_ops`]) small operations run on the caller's thread when nothing of
//! their file is pending on a worker, which keeps each file's order. Workers are long-lived blocking
//! tasks started through a [`BlockingSpawner`] (plain threads for the blocking runtime,
//! `spawn_blocking` / `unblock` for the async ones) and report through a [`Completions`] sink.
//! Does not own deciding anything about the bytes (the engine hashes and verifies).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use haul_core::{AfterClose, FileId, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult};

use crate::digests::{read_back_into, Behind, DigestDone, Digests, Running};
use crate::spares::Spares;

/// The files this driver's downloads write, each claimed from its open until it is named
/// (committed) or discarded, so that two downloads never write one file.
///
/// A named partial is also held with an exclusive `flock` from its open until the rename that
/// commits it or the removal that discards it (the lock stays through the close before a
/// commit's rename, on a descriptor of its own). Another process that downloads to the same
/// destination opens the same partial: its open fails with [`IoErrorKind::Busy`] and changes
/// nothing, where it would otherwise truncate and overwrite the bytes this process has
/// already hashed. A later open of the same path in this process (the engine never has two)
/// first lets go of the earlier claim.
///
/// The engine refuses two downloads to one destination path, but one file has many
/// spellings: `d/x/../f` and `d/f`, or a path through a symbolic link to a directory. Claims
/// are therefore also keyed by what a path names (its directory's device and inode, and its
/// name): an open of a path that names a file claimed under another spelling fails with
/// [`IoErrorKind::SameFile`] and changes nothing. That covers unnamed files too, which take no
/// lock (nobody else can open them) and would otherwise both be published, the later one
/// silently replacing the earlier.
#[derive(Clone, Default)]
pub struct Leases(Arc<Mutex<Claims>>);

/// What [`Leases`] holds.
#[derive(Default)]
struct Claims {
    /// By the path as the engine spells it.
    by_path: BTreeMap<PathBuf, Claim>,
    /// The spelling each claimed file was claimed under.
    by_identity: BTreeMap<Identity, PathBuf>,
}

/// One claimed file.
struct Claim {
    id: FileId,
    /// A descriptor holding the partial's lock; `None` for an unnamed file (or once the
    /// lock is let go ahead of the claim, see [`Leases::unlock_file`]).
    lock: Option<File>,
    identity: Option<Identity>,
}

/// What a path names, whatever its spelling: the device and inode of its directory, and its
/// file name.
type Identity = (u64, u64, std::ffi::OsString);

/// What `path` names; `None` if its directory cannot be looked at (its open then fails or
/// creates it, and nothing else can be claimed in a directory that did not exist).
fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let name = path.file_name()?.to_os_string();
    let dir = fs::metadata(parent_dir(path)).ok()?;
    Some((dir.dev(), dir.ino(), name))
}

impl Claims {
    /// Drop the claim at `path`, if any.
    fn remove(&mut self, path: &Path) {
        if let Some(claim) = self.by_path.remove(path) {
            self.forget_identity(claim, path);
        }
    }

    fn forget_identity(&mut self, claim: Claim, path: &Path) {
        if let Some(identity) = claim.identity {
            if self.by_identity.get(&identity).is_some_and(|p| p == path) {
                self.by_identity.remove(&identity);
            }
        }
    }
}

impl Leases {
    /// Claim the file at `path` for `id` (see [`Leases`]): refused with a failure of kind
    /// [`IoErrorKind::SameFile`] when another spelling of the same file is claimed. An
    /// earlier claim of this very spelling is let go.
    fn claim(&self, path: &Path, id: FileId) -> Result<(), IoFailure> {
        let identity = identity(path);
        let mut claims = lock(&self.0);
        claims.remove(path);
        if let Some(identity) = &identity {
            if let Some(other) = claims.by_identity.get(identity) {
                let what = format!("{} and {} name one file", path.display(), other.display());
                return Err(IoFailure::new(IoErrorKind::SameFile, what));
            }
            claims
                .by_identity
                .insert(identity.clone(), path.to_path_buf());
        }
        let claim = Claim {
            id,
            lock: None,
            identity,
        };
        claims.by_path.insert(path.to_path_buf(), claim);
        Ok(())
    }

    /// Claim `file`, just opened at `path`, for `id`, and lock it for this process.
    fn take(&self, path: &Path, id: FileId, file: &File) -> Result<Lease, IoFailure> {
        self.claim(path, id)?;
        let lease = lock_named(path, file)
            .and_then(|lease| Ok((lease, file.try_clone()?)))
            .map_err(|e| {
                self.release(path);
                local_failure(&e, "lock", Some(path))
            })?;
        match lease {
            (Lease::Taken, clone) => {
                if let Some(claim) = lock(&self.0).by_path.get_mut(path) {
                    claim.lock = Some(clone);
                }
            }
            _ => self.release(path),
        }
        Ok(lease.0)
    }

    /// The partial at `path` was renamed or removed: its claim and lock go.
    fn release(&self, path: &Path) {
        lock(&self.0).remove(path);
    }

    /// `id` is closed with nothing to follow (see [`AfterClose`]), or is named: its claim
    /// goes. (Its own descriptor holds any lock until it is closed; this one need not wait
    /// for that.)
    fn release_file(&self, id: FileId) {
        let mut claims = lock(&self.0);
        let paths: Vec<PathBuf> = claims
            .by_path
            .iter()
            .filter(|(_, claim)| claim.id == id)
            .map(|(path, _)| path.clone())
            .collect();
        for path in paths {
            claims.remove(&path);
        }
    }

    /// `id` is about to be named by a `Publish` elsewhere: the lock this map holds goes now
    /// (the file's own descriptor keeps it until it is closed after the rename), the claim
    /// when the file is named ([`PublishClaim`]).
    fn unlock_file(&self, id: FileId) {
        for claim in lock(&self.0).by_path.values_mut() {
            if claim.id == id {
                claim.lock = None;
            }
        }
    }

    /// Whether `path`, a partial this driver locked, still names the file it locked: another
    /// process may have removed it (and another download made a new one there) while this
    /// one wrote it. A path not locked here is taken as it is.
    fn still_names(&self, path: &Path) -> std::io::Result<bool> {
        let claims = lock(&self.0);
        match claims.by_path.get(path).and_then(|c| c.lock.as_ref()) {
            Some(file) => names_same_file(path, file),
            None => Ok(true),
        }
    }

    /// The failure of a commit (or removal) of the partial at `path` that no longer names
    /// the file this driver locked and wrote: nothing is renamed (or removed), since what is
    /// there is another download's, or nothing.
    fn check_still_names(&self, path: &Path) -> Result<(), IoFailure> {
        match self.still_names(path) {
            Ok(true) => Ok(()),
            Ok(false) => Err(replaced(path)),
            Err(e) => Err(local_failure(&e, "look at", Some(path))),
        }
    }

    /// How many files are claimed (for tests).
    pub fn held(&self) -> usize {
        lock(&self.0).by_path.len()
    }
}

/// The claim of a file on its way to its name: let go when dropped, that is once the file
/// is named or its publish has failed.
struct PublishClaim {
    leases: Leases,
    id: Option<FileId>,
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.leases.release_file(id);
        }
    }
}

/// `path`, a partial, no longer names the file this download wrote.
fn replaced(path: &Path) -> IoFailure {
    IoFailure::new(
        IoErrorKind::Replaced,
        format!(
            "{} was removed or replaced by another process while this download wrote it",
            path.display()
        ),
    )
}

/// What [`Leases::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// The file is this process's until it is renamed or removed.
    Taken,
    /// Another process holds it.
    HeldElsewhere,
    /// The lock was had, but `path` no longer names the file (another process committed or
    /// removed it meanwhile): open the path again.
    Moved,
}

/// Lock `file`, just opened at `path`, unless another process holds it, and check that the
/// path still names it once locked. A file system without locks refuses nothing.
fn lock_named(path: &Path, file: &File) -> std::io::Result<Lease> {
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Lease::HeldElsewhere),
        Err(std::fs::TryLockError::Error(error)) => {
            tracing::debug!(%error, path = %path.display(), "partial not locked");
            return Ok(Lease::Taken);
        }
    }
    if !names_same_file(path, file)? {
        return Ok(Lease::Moved);
    }
    Ok(Lease::Taken)
}

/// Whether `path` still names the open `file` (same device and inode).
fn names_same_file(path: &Path, file: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Workers for whole-file operations.
const PATH_WORKERS: usize = 8;

/// Where a runtime's I/O completions go (the driver's channel).
pub trait Completions: Clone + Send + 'static {
    /// Deliver the single completion of request `id`.
    fn complete(&self, id: IoId, result: IoResult);
}

/// A blocking task that runs until its queue closes.
pub type BlockingWork = Box<dyn FnOnce() + Send + 'static>;

/// Starts long-lived blocking work off the async threads.
pub trait BlockingSpawner: Clone + Send + 'static {
    /// Run `work` on a thread where blocking is allowed; `name` is for debugging.
    fn spawn_blocking(&self, name: String, work: BlockingWork) -> std::io::Result<()>;
}

/// How long a pooled thread waits for more work before it exits.
const IDLE_THREAD_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many pooled threads wait for work; more exit when their work ends.
const MAX_IDLE_THREADS: usize = 64;

/// Plain OS threads, kept and reused: the blocking runtime's spawner.
///
/// Every open file has a worker (and a sync companion while it syncs), so a run of many small
/// downloads would otherwise create and tear down two threads per file; in a process with
/// many threads that costs far more kernel time than the downloads' own file operations
/// (each new stack is mapped, protected and unmapped, and each unmap is a TLB shootdown on
/// every core). A thread whose work ends waits up to `IDLE_THREAD_TIMEOUT` for the next
/// piece (at most `MAX_IDLE_THREADS` wait at once); a spawn takes a waiting thread if there
/// is one, else starts a new thread. Dropping every clone releases the waiting threads.
/// Like tokio's `spawn_blocking` pool, which the async runtimes use instead.
#[derive(Debug, Clone, Default)]
pub struct Threads {
    idle: Arc<Mutex<IdleThreads>>,
}

/// Threads waiting for work, each by its id and the sender of its next piece.
#[derive(Debug, Default)]
struct IdleThreads {
    waiting: Vec<(u64, SyncSender<BlockingWork>)>,
    next_id: u64,
}

impl BlockingSpawner for Threads {
    fn spawn_blocking(&self, name: String, work: BlockingWork) -> std::io::Result<()> {
        let mut work = work;
        loop {
            let taken = lock(&self.idle).waiting.pop();
            let Some((_, tx)) = taken else { break };
            // A thread taken from the list waits until it gets its piece (see `pooled`), so
            // this send fails only if that thread is gone; then try the next one.
            match tx.send(work) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => work = back,
            }
        }
        let idle = Arc::downgrade(&self.idle);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || pooled(work, idle))
            .map(drop)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pooled thread's life: run the work, then offer itself for more until it times out, the
/// list is full or the pool is gone.
fn pooled(first: BlockingWork, idle: Weak<Mutex<IdleThreads>>) {
    let mut work = first;
    loop {
        work();
        let Some(pool) = idle.upgrade() else { return };
        let (tx, rx) = mpsc::sync_channel::<BlockingWork>(1);
        let id = {
            let mut list = lock(&pool);
            if list.waiting.len() >= MAX_IDLE_THREADS {
                return;
            }
            list.next_id += 1;
            let id = list.next_id;
            list.waiting.push((id, tx));
            id
        };
        // Hold no strong reference while waiting: dropping the last `Threads` drops the
        // senders, which ends this wait.
        drop(pool);
        work = match rx.recv_timeout(IDLE_THREAD_TIMEOUT) {
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let Some(pool) = idle.upgrade() else { return };
                let mut list = lock(&pool);
                match list.waiting.iter().position(|(waiting, _)| *waiting == id) {
                    // Still listed: nobody can send any more once it is removed.
                    Some(at) => {
                        list.waiting.swap_remove(at);
                        return;
                    }
                    // A spawn took it and is sending (or has sent) the next piece.
                    None => {
                        drop(list);
                        match rx.recv() {
                            Ok(next) => next,
                            Err(_) => return,
                        }
                    }
                }
            }
        };
    }
}

/// The largest read or write that [`Files::inline_small_ops`] runs on the caller's thread.
const INLINE_MAX_BYTES: usize = 64 * 1024;

/// One open file: its handle, shared by inline execution and its worker, and the worker's
/// queue once it has one.
struct OpenFile {
    state: Arc<Mutex<FileWorker>>,
    /// Operations handed to the worker and not completed yet.
    outstanding: Arc<AtomicUsize>,
    queue: Option<Sender<Work>>,
    /// A `Sync` not started yet: if the next operation is `CloseFile` (a commit), the two go
    /// to the durability worker together; anything else, or [`Files::flush`], starts it.
    held_sync: Option<IoId>,
}

/// What a file worker is asked to do.
enum Work {
    /// One of the engine's operations on the file.
    Op(IoRequest),
    /// A commit: after every earlier operation, hand the file to the durability worker,
    /// which completes `sync` once its data is durable and then `close`.
    Commit {
        sync: IoId,
        close: IoId,
        file: FileId,
    },
    /// A durable `Publish` (`id`): after every earlier operation, hand the file to the
    /// durability worker, which names it `to` once its data is durable.
    Publish {
        id: IoId,
        file: FileId,
        to: std::path::PathBuf,
    },
}

/// A file worker's completions: each also counts the file's outstanding operations down
/// (after it is delivered, so a later inline operation's completion follows it).
#[derive(Clone)]
struct Counted<C> {
    sink: C,
    outstanding: Arc<AtomicUsize>,
}

impl<C: Completions> Completions for Counted<C> {
    fn complete(&self, id: IoId, result: IoResult) {
        self.sink.complete(id, result);
        // Saturating: a commit handed to a worker whose open failed completes two
        // operations that were never counted (see `file_worker`).
        let _ = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// Executes file operations on blocking workers, each open file's in order.
pub struct Files<C: Completions, S: BlockingSpawner> {
    sink: C,
    spawner: S,
    open: BTreeMap<FileId, OpenFile>,
    /// Files whose open failed on their worker: the worker has ended (the engine sends
    /// nothing more for a file it could not open, not even `CloseFile`); forgotten at the
    /// next open.
    failed_opens: Arc<Mutex<Vec<FileId>>>,
    misc: Option<Sender<IoRequest>>,
    /// The durability worker's queue, once started.
    durable: Option<Sender<Pending>>,
    /// Files that may hold a `Sync` (see [`OpenFile::held_sync`]).
    held: Vec<FileId>,
    inline: bool,
    /// Unnamed files made ahead of their opens (see [`crate::spares`]).
    spares: Spares,
    /// Keep running digests of unnamed files ([`Files::running_digests`]); the thread once
    /// started.
    running_digests: bool,
    digests: Option<Digests>,
    /// Hand inline writes of unnamed files to the digest thread ([`Files::writes_behind`]).
    write_behind: bool,
    /// Named partials locked for this process until renamed or removed.
    leases: Leases,
}

impl<C: Completions, S: BlockingSpawner> Drop for Files<C, S> {
    fn drop(&mut self) {
        self.spares.close();
        if let Some(digests) = &self.digests {
            digests.stop();
        }
    }
}

impl<C: Completions, S: BlockingSpawner> Files<C, S> {
    /// An executor reporting to `sink`; workers start on demand.
    pub fn new(sink: C, spawner: S) -> Files<C, S> {
        Files {
            sink,
            spawner,
            open: BTreeMap::new(),
            failed_opens: Arc::default(),
            misc: None,
            durable: None,
            held: Vec::new(),
            inline: false,
            spares: Spares::default(),
            running_digests: false,
            digests: None,
            write_behind: false,
            leases: Leases::default(),
        }
    }

    /// The named partials this executor holds locked.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Hash unnamed files as they are written, on a thread of their own, and answer the
    /// engine's `Digest` from that (see [`crate::digests`]); for an engine configured with
    /// [`haul_core::Config::executor_digests`]. Without it a `Digest` reads the file back.
    pub fn running_digests(mut self) -> Files<C, S> {
        self.running_digests = true;
        self
    }

    /// With [`Files::inline_small_ops`] and [`Files::running_digests`]: a small write of an
    /// unnamed file that would run inline is handed to the digest thread instead, which
    /// writes and then hashes it (see [`crate::digests`]); the write completes at once. The
    /// calling thread then never waits in the kernel's write path for a small download; a
    /// failed write fails the file's next operation (its `Digest`, `Publish`, ...).
    pub fn writes_behind(mut self) -> Files<C, S> {
        self.write_behind = true;
        self
    }

    /// The digest thread, started on first use; `None` if it is not wanted or cannot start.
    fn digests(&mut self) -> Option<Digests> {
        if !self.running_digests {
            return None;
        }
        if self.digests.is_none() {
            match Digests::start(&self.spawner) {
                Ok(digests) => self.digests = Some(digests),
                Err(error) => {
                    tracing::debug!(%error, "no digest thread: digests read files back");
                    self.running_digests = false;
                }
            }
        }
        self.digests.clone()
    }

    /// `count` downloads are about to open unnamed files in `dir`: make them ahead, on a
    /// thread of their own, so that the opens find them ready (see [`crate::spares`]).
    pub fn expect_unnamed(&self, dir: &Path, count: usize) {
        self.spares.expect(dir, count, &self.spawner);
    }

    /// Run small operations on the calling thread when nothing of the same file is pending
    /// on a worker: opens, closes, truncation, reads and writes of at most 64 KiB, state file
    /// reads, removals and renames without a sync. Each of them takes microseconds, less than
    /// handing it to a worker and its completion back (two thread switches); a download of a
    /// small file is then mostly done without any. Syncs and large transfers stay on workers.
    /// For a runtime whose calling thread may block briefly (the blocking runtime's driver),
    /// never for an async executor's thread.
    pub fn inline_small_ops(mut self) -> Files<C, S> {
        self.inline = true;
        self
    }

    fn fail(&self, id: IoId, what: String) {
        self.sink.complete(
            id,
            IoResult::Failed(IoFailure::new(IoErrorKind::Other, what)),
        );
    }

    /// Start one file operation; its completion goes to the sink.
    ///
    /// A `Sync` is held until the next operation on its file or [`Files::flush`]: a commit
    /// (`Sync` then `CloseFile`, issued together) then goes to the durability worker as one
    /// piece. The runtime calls `flush` once it has started every request the engine had.
    pub fn start(&mut self, req: IoRequest) {
        crate::digests::mark_driver_thread();
        let file = match &req.op {
            IoOp::Open { file, .. }
            | IoOp::OpenUnnamed { file, .. }
            | IoOp::Publish { file, .. }
            | IoOp::OpenRead { file, .. }
            | IoOp::ReadAt { file, .. }
            | IoOp::WriteAt { file, .. }
            | IoOp::SetLen { file, .. }
            | IoOp::Digest { file, .. }
            | IoOp::Sync { file }
            | IoOp::CloseFile { file, .. } => *file,
            _ => return self.start_path_op(req),
        };
        if let IoOp::Open { .. } | IoOp::OpenUnnamed { .. } | IoOp::OpenRead { .. } = req.op {
            for gone in std::mem::take(&mut *lock(&self.failed_opens)) {
                self.open.remove(&gone);
            }
            // A file opened empty is written from 0: its writes may feed a running digest.
            let (spare, digests) = match &req.op {
                IoOp::OpenUnnamed { path, .. } => (
                    self.spares.take(parent_dir(path), &self.spawner),
                    self.digests(),
                ),
                IoOp::Open { truncate: true, .. } => (None, self.digests()),
                _ => (None, None),
            };
            self.open.insert(
                file,
                OpenFile {
                    state: Arc::new(Mutex::new(FileWorker {
                        spare,
                        digests,
                        leases: self.leases.clone(),
                        ..FileWorker::default()
                    })),
                    outstanding: Arc::default(),
                    queue: None,
                    held_sync: None,
                },
            );
        }
        if let IoOp::CloseFile {
            then: AfterClose::Done,
            ..
        } = req.op
        {
            self.leases.release_file(file);
        }
        let Some(open) = self.open.get_mut(&file) else {
            return self.fail(req.id, "file is not open".into());
        };
        let held = open.held_sync.take();
        match (held, &req.op) {
            (Some(sync), IoOp::CloseFile { .. }) => return self.commit(file, sync, req.id),
            (Some(sync), _) => self.dispatch(file, sync_request(sync, file)),
            (None, _) => {}
        }
        if let IoOp::Publish { sync: true, .. } = req.op {
            return self.publish_durably(file, req);
        }
        if let IoOp::Sync { .. } = req.op {
            if let Some(open) = self.open.get_mut(&file) {
                open.held_sync = Some(req.id);
                self.held.push(file);
                return;
            }
        }
        self.dispatch(file, req);
    }

    /// Start the `Sync`s still held: the engine has nothing more to ask for now.
    pub fn flush(&mut self) {
        if let Some(digests) = &self.digests {
            digests.kick();
        }
        for file in std::mem::take(&mut self.held) {
            let held = self.open.get_mut(&file).and_then(|o| o.held_sync.take());
            if let Some(sync) = held {
                self.dispatch(file, sync_request(sync, file));
            }
        }
    }

    /// A commit of `file`: its data made durable (completing `sync`), then closed
    /// (completing `close`), by the durability worker.
    fn commit(&mut self, file: FileId, sync: IoId, close: IoId) {
        let Some(open) = self.open.remove(&file) else {
            return;
        };
        let Some(durable) = self.durable() else {
            self.fail(sync, "start durability worker failed".into());
            return self.sink.complete(close, IoResult::Done);
        };
        if open.outstanding.load(Ordering::Acquire) == 0 {
            // Nothing of the file is pending on a worker (which, if there is one, waits for
            // its next operation and ends when `open.queue` drops): take the file here.
            let taken = lock(&open.state).take();
            return hand_over(
                Some(&durable),
                Pending::data(sync, close, file, taken),
                &self.sink,
            );
        }
        if let Some(q) = &open.queue {
            if q.send(Work::Commit { sync, close, file }).is_ok() {
                return;
            }
        }
        self.fail(sync, "file worker stopped".into());
        self.sink.complete(close, IoResult::Done);
    }

    /// A durable `Publish` of `file`: its data made durable, then named, then its directory
    /// synced, by the durability worker.
    fn publish_durably(&mut self, file: FileId, req: IoRequest) {
        let IoOp::Publish { to, .. } = req.op else {
            return;
        };
        // A partial named after a failed unnamed open: the lock this driver holds goes now
        // (it stays with the file's own descriptor until it is closed after the rename); the
        // claim goes once the file is named.
        self.leases.unlock_file(file);
        let Some(open) = self.open.remove(&file) else {
            return self.fail(req.id, "file is not open".into());
        };
        let Some(durable) = self.durable() else {
            return self.fail(req.id, "start durability worker failed".into());
        };
        if open.outstanding.load(Ordering::Acquire) == 0 {
            let taken = lock(&open.state).take_unpublished();
            let pending = Pending::Publish {
                id: req.id,
                file_id: file,
                file: taken,
                to,
            };
            return hand_over(Some(&durable), pending, &self.sink);
        }
        if let Some(q) = &open.queue {
            let work = Work::Publish {
                id: req.id,
                file,
                to,
            };
            if q.send(work).is_ok() {
                return;
            }
        }
        self.fail(req.id, "file worker stopped".into());
    }

    /// The durability worker's queue, started on first use.
    fn durable(&mut self) -> Option<Sender<Pending>> {
        if self.durable.is_none() {
            let (q, rx) = mpsc::channel::<Pending>();
            let sink = self.sink.clone();
            let work = Box::new(move || durability_worker(rx, sink));
            if let Err(e) = self.spawner.spawn_blocking("haul-durable".into(), work) {
                tracing::warn!("start durability worker: {e}");
                return None;
            }
            self.durable = Some(q);
        }
        self.durable.clone()
    }

    /// Run `req` on `file`: inline when allowed, else on the file's worker (started here if
    /// it has none).
    fn dispatch(&mut self, file: FileId, req: IoRequest) {
        // A new worker gets the durability worker's queue for its commit.
        let starts_worker = self.open.get(&file).is_some_and(|o| o.queue.is_none());
        let durable = if starts_worker { self.durable() } else { None };
        let Some(open) = self.open.get_mut(&file) else {
            return self.fail(req.id, "file is not open".into());
        };
        let closing = matches!(req.op, IoOp::CloseFile { .. } | IoOp::Publish { .. });
        // Creating a file is no small operation when no spare was made ahead: the inode
        // allocation can cost a tenth of a millisecond (see `crate::spares`), which a worker
        // pays instead of the thread that reads the network.
        let creates =
            matches!(req.op, IoOp::OpenUnnamed { .. }) && lock(&open.state).spare.is_none();
        // Nor is a digest that must read the file back (its running digest was dropped):
        // the file may be large.
        let reads_back = match req.op {
            IoOp::Digest { len, .. } => !lock(&open.state).running_covers(len),
            _ => false,
        };
        // A file with a worker closes there: the worker first ends its companion syncer,
        // whose descriptor of the file would otherwise outlive the close (and hold the
        // partial's lock, see `Leases`, a moment longer).
        let closes_worker = closing && open.queue.is_some();
        if self.inline
            && small_op(&req.op)
            && !creates
            && !reads_back
            && !closes_worker
            && open.outstanding.load(Ordering::Acquire) == 0
        {
            if let IoOp::Digest { len, keep, .. } = req.op {
                // Answered now (read back) or by the digest thread; for the final digest the
                // engine asks nothing more of the file until it has the answer.
                let (sink, id) = (self.sink.clone(), req.id);
                lock(&open.state).digest(len, keep, Box::new(move |r| sink.complete(id, r)));
                return;
            }
            if let (IoOp::WriteAt { offset, data, .. }, true) = (&req.op, self.write_behind) {
                if lock(&open.state).write_behind(*offset, data) {
                    return self.sink.complete(req.id, IoResult::Done);
                }
            }
            let result = lock(&open.state).execute(&req.op);
            let opened = matches!(result, IoResult::Opened { .. });
            self.sink.complete(req.id, result);
            let failed_open = matches!(
                req.op,
                IoOp::Open { .. } | IoOp::OpenUnnamed { .. } | IoOp::OpenRead { .. }
            ) && !opened;
            if closing || failed_open {
                // Dropping the queue ends the worker, if the file had one.
                self.open.remove(&file);
            }
            return;
        }
        if open.queue.is_none() {
            let (q, rx) = mpsc::channel::<Work>();
            let sink = Counted {
                sink: self.sink.clone(),
                outstanding: open.outstanding.clone(),
            };
            let (state, spawner) = (open.state.clone(), self.spawner.clone());
            let failed_opens = self.failed_opens.clone();
            let work = Box::new(move || {
                file_worker(rx, &state, sink, spawner, durable, (&failed_opens, file));
            });
            if let Err(e) = self
                .spawner
                .spawn_blocking(format!("haul-file-{}", file.0), work)
            {
                self.open.remove(&file);
                return self.fail(req.id, format!("start file worker: {e}"));
            }
            open.queue = Some(q);
        }
        open.outstanding.fetch_add(1, Ordering::AcqRel);
        // Held while sending: a worker whose open failed drains its queue under this lock,
        // so an operation is either drained (and failed) there or refused here.
        let failed_opens = lock(&self.failed_opens);
        let sent = match &open.queue {
            Some(_) if failed_opens.contains(&file) => Err(Work::Op(req)),
            Some(q) => q.send(Work::Op(req)).map_err(|e| e.0),
            None => Err(Work::Op(req)),
        };
        drop(failed_opens);
        if let Err(Work::Op(req)) = sent {
            open.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.fail(req.id, "file is not open".into());
        }
        if closing {
            self.open.remove(&file);
        }
    }

    fn start_path_op(&mut self, req: IoRequest) {
        // A rename takes microseconds; only its directory sync is slow, and that goes to the
        // durability worker.
        let durable_rename = matches!(req.op, IoOp::Rename { sync: true, .. });
        let inline = self.inline && (small_op(&req.op) || durable_rename);
        // The pool's workers, once started, keep the queue for their durable renames.
        let durable = if durable_rename || (!inline && self.misc.is_none()) {
            self.durable()
        } else {
            None
        };
        if inline {
            return run_path_op(req, &self.sink, durable.as_ref(), &self.leases);
        }
        if self.misc.is_none() {
            // A small pool: whole-file operations of different jobs (renames with their
            // directory syncs, state files) run concurrently, so the file system can commit
            // their syncs together instead of one after another. The engine never has two
            // operations on one path outstanding when their order matters.
            let (q, rx) = mpsc::channel::<IoRequest>();
            let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
            for n in 0..PATH_WORKERS {
                let sink = self.sink.clone();
                let rx = rx.clone();
                let durable = durable.clone();
                let leases = self.leases.clone();
                let work = Box::new(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(req) = next else { return };
                    run_path_op(req, &sink, durable.as_ref(), &leases);
                });
                if let Err(e) = self.spawner.spawn_blocking(format!("haul-files-{n}"), work) {
                    if n == 0 {
                        return self.fail(req.id, format!("start file worker: {e}"));
                    }
                    break;
                }
            }
            self.misc = Some(q);
        }
        let q = self.misc.as_ref().expect("started above");
        if let Err(mpsc::SendError(req)) = q.send(req) {
            self.misc = None;
            self.fail(req.id, "file worker stopped".into());
        }
    }
}

/// Run a whole-file operation and complete it. A rename that must be durable is done here
/// and its directory sync left to the durability worker, which completes it.
/// Run a whole-file operation; a partial renamed (committed) or removed is no longer leased
/// (released before the completion, so that a later open in this process finds it free).
fn run_path_op<C: Completions>(
    req: IoRequest,
    sink: &C,
    durable: Option<&Sender<Pending>>,
    leases: &Leases,
) {
    if let (
        IoOp::Rename {
            from,
            to,
            sync: true,
        },
        Some(durable),
    ) = (&req.op, durable)
    {
        if let Err(failure) = leases.check_still_names(from) {
            leases.release(from);
            return sink.complete(req.id, IoResult::Failed(failure));
        }
        if let Err(e) = in_dir(to, || rename_over(from, to)) {
            let failure = local_failure(&e, "rename to", Some(to));
            return sink.complete(req.id, IoResult::Failed(failure));
        }
        leases.release(from);
        let entry = Pending::Entry {
            id: req.id,
            path: to.clone(),
        };
        return hand_over(Some(durable), entry, sink);
    }
    if let IoOp::RemoveUnheld { path } = &req.op {
        // This process's own lock on it (a commit's rename that failed) is no other
        // process's hold: let go of it first.
        leases.release(path);
    }
    // A partial renamed (committed) or removed by its path: only if the path still names the
    // file locked and written here.
    match &req.op {
        IoOp::Rename { from, .. } => {
            if let Err(failure) = leases.check_still_names(from) {
                // What is at the path is not this download's: nothing of it to hold.
                leases.release(from);
                return sink.complete(req.id, IoResult::Failed(failure));
            }
        }
        IoOp::Remove { path } if matches!(leases.still_names(path), Ok(false)) => {
            // This download's partial is gone already; what is there is not its own.
            leases.release(path);
            return sink.complete(req.id, IoResult::Done);
        }
        _ => {}
    }
    let result = execute_path_op(&req.op);
    match (&req.op, &result) {
        (IoOp::Rename { from, .. }, IoResult::Done) => leases.release(from),
        (IoOp::Remove { path }, _) => leases.release(path),
        _ => {}
    }
    sink.complete(req.id, result);
}

fn sync_request(id: IoId, file: FileId) -> IoRequest {
    IoRequest {
        id,
        op: IoOp::Sync { file },
    }
}

/// Whether `op` is small enough for [`Files::inline_small_ops`].
fn small_op(op: &IoOp) -> bool {
    match op {
        IoOp::Open { .. }
        | IoOp::OpenUnnamed { .. }
        | IoOp::Publish { sync: false, .. }
        | IoOp::OpenRead { .. }
        | IoOp::SetLen { .. }
        | IoOp::CloseFile { .. }
        | IoOp::ReadFile { .. }
        | IoOp::Remove { .. }
        | IoOp::RemoveUnheld { .. }
        | IoOp::Rename { sync: false, .. } => true,
        IoOp::WriteAt { data, .. } => data.len() <= INLINE_MAX_BYTES,
        // Inline it only hands the work over (or reads a small file back).
        IoOp::Digest { .. } => true,
        IoOp::ReadAt { len, .. } => *len as usize <= INLINE_MAX_BYTES,
        IoOp::Sync { .. }
        | IoOp::Rename { sync: true, .. }
        | IoOp::Publish { sync: true, .. }
        | IoOp::WriteFileAtomic { .. }
        | IoOp::CopyFile { .. }
        | IoOp::Connect { .. }
        | IoOp::Send { .. }
        | IoOp::Recv { .. }
        | IoOp::Close { .. } => false,
    }
}

/// Runs one file's operations in issue order. `Sync` is handed to a companion worker so that
/// writes keep flowing while earlier data is flushed (the engine's checkpoints would otherwise
/// stall the download for as long as the disk takes); `CloseFile` and a commit wait for
/// outstanding syncs, so their completions still follow every earlier operation's. A commit
/// hands the file to the durability worker (`durable`), or runs here without one.
///
/// If its open fails, the file joins `failed` (the executor forgets it at its next open and
/// refuses its operations until then) and every operation already queued behind the open
/// fails: the engine may have issued writes, even a commit, before it learnt of the failure,
/// and each needs its completion.
fn file_worker<C: Completions, S: BlockingSpawner>(
    rx: mpsc::Receiver<Work>,
    state: &Mutex<FileWorker>,
    sink: C,
    spawner: S,
    durable: Option<Sender<Pending>>,
    failed: (&Mutex<Vec<FileId>>, FileId),
) {
    // The companion's queue and a channel that closes when it has finished.
    let mut syncer: Option<(Sender<IoId>, mpsc::Receiver<()>)> = None;
    let finish_syncs = |syncer: &mut Option<(Sender<IoId>, mpsc::Receiver<()>)>| {
        if let Some((tx, finished)) = syncer.take() {
            drop(tx);
            // Returns once the companion dropped its end, after its last sync.
            let _ = finished.recv();
        }
    };
    loop {
        let Ok(work) = rx.recv() else {
            return;
        };
        let req = match work {
            Work::Op(req) => req,
            Work::Commit { sync, close, file } => {
                finish_syncs(&mut syncer);
                let pending = Pending::data(sync, close, file, lock(state).take());
                hand_over(durable.as_ref(), pending, &sink);
                return;
            }
            Work::Publish { id, file, to } => {
                finish_syncs(&mut syncer);
                let pending = Pending::Publish {
                    id,
                    file_id: file,
                    file: lock(state).take_unpublished(),
                    to,
                };
                hand_over(durable.as_ref(), pending, &sink);
                return;
            }
        };
        match req.op {
            IoOp::Open { .. } | IoOp::OpenUnnamed { .. } | IoOp::OpenRead { .. } => {
                let result = lock(state).execute(&req.op);
                let opened = matches!(result, IoResult::Opened { .. });
                sink.complete(req.id, result);
                if !opened {
                    let (failed_opens, file) = failed;
                    let mut failed_opens = lock(failed_opens);
                    failed_opens.push(file);
                    let not_open =
                        || IoResult::Failed(IoFailure::new(IoErrorKind::Other, "file is not open"));
                    while let Ok(work) = rx.try_recv() {
                        match work {
                            Work::Op(req) => sink.complete(req.id, not_open()),
                            Work::Commit { sync, close, .. } => {
                                sink.complete(sync, not_open());
                                sink.complete(close, IoResult::Done);
                            }
                            Work::Publish { id, .. } => sink.complete(id, not_open()),
                        }
                    }
                    drop(rx);
                    drop(failed_opens);
                    return;
                }
            }
            IoOp::Sync { .. } => {
                if syncer.is_none() {
                    syncer = start_syncer(&lock(state), &sink, &spawner);
                }
                match &syncer {
                    Some((tx, _)) => {
                        let _ = tx.send(req.id);
                    }
                    None => sink.complete(req.id, lock(state).execute(&req.op)),
                }
            }
            IoOp::Digest { len, keep, .. } => {
                let (sink, id) = (sink.clone(), req.id);
                let mut state = lock(state);
                state.digest(len, keep, Box::new(move |r| sink.complete(id, r)));
                // Off the driver's thread: no flush follows to wake the digest thread.
                if let Some(digests) = &state.digests {
                    digests.kick();
                }
            }
            IoOp::CloseFile { .. } | IoOp::Publish { .. } => {
                finish_syncs(&mut syncer);
                sink.complete(req.id, lock(state).execute(&req.op));
                return;
            }
            _ => sink.complete(req.id, lock(state).execute(&req.op)),
        }
    }
}

/// From how many pieces in one round the durability worker makes them durable with one
/// `syncfs` per file system instead of a sync each.
const SYNCFS_MIN: usize = 8;

/// A piece of a commit that must reach stable storage before it completes; the durability
/// worker takes them in rounds.
///
/// A round takes whatever has queued up while the previous one ran. A small round syncs
/// each piece (fdatasync of a file, fsync of a directory, once per directory). A round of
/// [`SYNCFS_MIN`] or more on Linux calls `syncfs` once per file system instead: it writes
/// every dirty page and inode of that file system and flushes the device once, where a sync
/// per piece flushes it once per piece. With 2,000 small downloads committing into one
/// directory that is the difference between 4,000 device flushes and a few dozen. The price:
/// a syncfs also waits for other programs' dirty data on the same file system, so a round
/// goes piece by piece while much of that waits ([`syncfs_pays`]). If a syncfs
/// fails, each piece of its file system is synced on its own, so a failure reaches the
/// piece it belongs to.
enum Pending {
    /// A commit's file: its data made durable completes `sync`; then it is closed, which
    /// completes `close`. The failure instead if the file was not open or one of its writes
    /// failed.
    Data {
        sync: IoId,
        close: IoId,
        /// The engine's id of the file; ids grow in the order files are opened.
        id: FileId,
        file: Result<(File, std::path::PathBuf), IoFailure>,
    },
    /// A rename to `path` is done; making its directory entry durable completes `id`.
    Entry { id: IoId, path: std::path::PathBuf },
    /// A durable `Publish` (`id`) of file `file_id`: its data made durable, it is named `to`
    /// and closed, and the name goes on as an [`Pending::Entry`] to the next round.
    Publish {
        id: IoId,
        file_id: FileId,
        file: Result<Unpublished, IoFailure>,
        to: std::path::PathBuf,
    },
}

impl Pending {
    fn data(
        sync: IoId,
        close: IoId,
        id: FileId,
        file: Option<Result<(File, std::path::PathBuf), IoFailure>>,
    ) -> Pending {
        Pending::Data {
            sync,
            close,
            id,
            file: file.unwrap_or_else(|| {
                Err(IoFailure::new(IoErrorKind::Other, "sync: file is not open"))
            }),
        }
    }
}

/// How long a round waits for more pieces while commits stream in (see
/// [`durability_worker`]).
const GATHER: Duration = Duration::from_millis(2);

/// A round stops gathering at this many pieces.
const ROUND_MAX: usize = 512;

/// A round that already holds this many pieces does not wait to gather more (see
/// [`durability_worker`]).
const GATHERED: usize = 32;

/// Give `pending` to the durability worker, or, without one (it never goes away while its
/// queue has a sender), make it durable and complete it on this thread.
fn hand_over<C: Completions>(durable: Option<&Sender<Pending>>, pending: Pending, sink: &C) {
    let pending = match durable {
        Some(q) => match q.send(pending) {
            Ok(()) => return,
            Err(mpsc::SendError(pending)) => pending,
        },
        None => pending,
    };
    let mut next = Some(pending);
    while let Some(pending) = next {
        let results = make_durable(std::slice::from_ref(&pending));
        next = complete_durable(sink, pending, results.into_iter().next());
    }
}

/// The durability worker: rounds of [`Pending`] pieces until its queue closes.
///
/// While commits stream in (the previous round was a syncfs round that ended moments ago),
/// a round of fewer than [`GATHERED`] pieces first gathers more for up to [`GATHER`]: a
/// syncfs round costs about the same with 10 pieces as with 50 (the device flush
/// dominates), so fewer, larger rounds keep the worker ahead of a run of small downloads.
/// A round that found that many waiting starts at once: the wait would only add to every
/// piece's latency, and a run of small files has at most `max_committing_jobs` commits in
/// flight, so latency is what paces it (2,000 files of 16 KiB, 16 at a time: 115 ms when
/// every streaming round waited, 98 ms this way; curl without any sync took 92 ms). A lone
/// commit never waits: its rounds follow no busy round.
///
/// A round whose syncs panicked (a bug) fails its pieces rather than losing them: their
/// commits end with an error instead of waiting forever, and the worker goes on.
fn durability_worker<C: Completions>(rx: mpsc::Receiver<Pending>, sink: C) {
    durability_rounds(rx, sink, make_durable)
}

/// [`durability_worker`], making each round durable with `make_durable`.
fn durability_rounds<C: Completions>(
    rx: mpsc::Receiver<Pending>,
    sink: C,
    make_durable: fn(&[Pending]) -> Vec<Result<(), IoFailure>>,
) {
    let mut last: Option<(std::time::Instant, usize)> = None;
    // Pieces that follow from the last round (published names to make durable).
    let mut carry: Vec<Pending> = Vec::new();
    loop {
        let mut round = std::mem::take(&mut carry);
        if round.is_empty() {
            match rx.recv() {
                Ok(first) => round.push(first),
                Err(_) => return,
            }
        }
        round.extend(rx.try_iter());
        let streaming =
            last.is_some_and(|(ended, pieces)| pieces >= SYNCFS_MIN && ended.elapsed() < GATHER);
        if streaming && round.len() < GATHERED {
            // Sleep rather than wait on the queue: a waiting receiver is woken by every
            // piece sent, which costs the sender (the driver's thread) a wake-up each.
            std::thread::sleep(GATHER);
            let room = ROUND_MAX - round.len();
            round.extend(rx.try_iter().take(room));
        }
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_durable(&round)))
                .unwrap_or_else(|_| {
                    let failure = IoFailure::new(
                        IoErrorKind::Other,
                        "the durability worker failed (a bug in haul); this commit did not finish",
                    );
                    vec![Err(failure); round.len()]
                });
        last = Some((std::time::Instant::now(), round.len()));
        for (pending, result) in round.into_iter().zip(results) {
            carry.extend(complete_durable(&sink, pending, Some(result)));
        }
    }
}

/// Deliver a piece's completions: a file's sync, then (closing it) its close. A published
/// file is named now; its name is the piece returned, for the next round.
fn complete_durable<C: Completions>(
    sink: &C,
    pending: Pending,
    result: Option<Result<(), IoFailure>>,
) -> Option<Pending> {
    let result = match result {
        Some(Ok(())) => IoResult::Done,
        Some(Err(f)) => IoResult::Failed(f),
        None => IoResult::Failed(IoFailure::new(IoErrorKind::Other, "not synced")),
    };
    match pending {
        Pending::Data {
            sync, close, file, ..
        } => {
            sink.complete(sync, result);
            drop(file);
            sink.complete(close, IoResult::Done);
        }
        Pending::Entry { id, .. } => sink.complete(id, result),
        Pending::Publish { id, file, to, .. } => {
            let named = match (result, file) {
                (IoResult::Done, Ok(u)) => u.publish(&to),
                (IoResult::Failed(f), _) | (_, Err(f)) => Err(f),
                (_, _) => Err(IoFailure::new(IoErrorKind::Other, "file is not open")),
            };
            match named {
                Ok(()) => return Some(Pending::Entry { id, path: to }),
                Err(f) => sink.complete(id, IoResult::Failed(f)),
            }
        }
    }
    None
}

/// Make every piece of `round` durable; one result per piece, in order.
fn make_durable(round: &[Pending]) -> Vec<Result<(), IoFailure>> {
    make_durable_given(round, system_pending_writeback)
}

/// [`make_durable`], with `pending_writeback` saying how many bytes wait for writeback
/// system-wide (see [`syncfs_pays`]).
#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn make_durable_given(
    round: &[Pending],
    pending_writeback: fn() -> Option<u64>,
) -> Vec<Result<(), IoFailure>> {
    let mut results: Vec<Option<Result<(), IoFailure>>> = round.iter().map(|_| None).collect();
    #[cfg(target_os = "linux")]
    if round.len() >= SYNCFS_MIN {
        if syncfs_pays(round, pending_writeback()) {
            sync_file_systems(round, &mut results);
        } else {
            sync_data_in_parallel(round, &mut results);
        }
    }
    // A directory is synced once per round, however many entries of it are pending.
    let mut dirs: std::collections::HashMap<&Path, Result<(), IoFailure>> = Default::default();
    for (pending, result) in round.iter().zip(results.iter_mut()) {
        if result.is_some() {
            continue;
        }
        *result = Some(match pending {
            Pending::Data { file: Err(f), .. } | Pending::Publish { file: Err(f), .. } => {
                Err(f.clone())
            }
            Pending::Data { .. } | Pending::Publish { .. } => {
                sync_piece_data(pending).expect("an open file's piece")
            }
            Pending::Entry { path, .. } => {
                let dir = parent_dir(path);
                dirs.entry(dir)
                    .or_insert_with(|| {
                        File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| local_failure(&e, "sync directory of", Some(path)))
                    })
                    .clone()
            }
        });
    }
    results
        .into_iter()
        .map(|r| r.expect("every piece has a result"))
        .collect()
}

/// Bytes dirty or under writeback system-wide (`/proc/meminfo`); `None` where unknown.
fn system_pending_writeback() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| haul_core::writeback::pending_writeback(&text))
}

/// The data sync of a piece whose file is open; `None` for any other piece.
fn sync_piece_data(pending: &Pending) -> Option<Result<(), IoFailure>> {
    match pending {
        Pending::Data {
            file: Ok((f, path)),
            ..
        } => Some(
            f.sync_data()
                .map_err(|e| local_failure(&e, "sync", Some(path))),
        ),
        Pending::Publish {
            file: Ok(u), to, ..
        } => Some(
            u.file
                .sync_data()
                .map_err(|e| local_failure(&e, "sync the file to publish as", Some(to))),
        ),
        _ => None,
    }
}

/// Threads [`sync_data_in_parallel`] syncs a round's files on.
#[cfg(target_os = "linux")]
const SYNC_THREADS: usize = 8;

/// Syncs the data of `round`'s open files on up to [`SYNC_THREADS`] threads (their results
/// in place; directory entries are left to the caller): a large round that does not take
/// one syncfs gives the disk its syncs together rather than one after another. With 1 GB
/// of another program's data waiting for writeback, `haul get` of 2,000 files of 16 KiB took
/// 525 ms with syncfs rounds, as long with a sync per file one after another, and 252 ms
/// this way (on this project's 2-core VM).
#[cfg(target_os = "linux")]
fn sync_data_in_parallel(round: &[Pending], results: &mut [Option<Result<(), IoFailure>>]) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let synced: Vec<(usize, Result<(), IoFailure>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SYNC_THREADS.min(round.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut synced = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(pending) = round.get(n) else {
                            break synced;
                        };
                        if let Some(result) = sync_piece_data(pending) {
                            synced.push((n, result));
                        }
                    }
                })
            })
            .collect();
        // A worker that panicked leaves its pieces to the caller's loop.
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    for (n, result) in synced {
        results[n] = Some(result);
    }
}

/// Whether one `syncfs` should make `round` durable ([`haul_core::writeback::syncfs_pays`]):
/// not while much more than the round's own data waits for writeback system-wide (another
/// program's gigabyte would hold every commit of the round back). The round's files' sizes
/// (an upper bound of its own data waiting) are asked only when the system has more waiting
/// than the smallest budget.
#[cfg(target_os = "linux")]
fn syncfs_pays(round: &[Pending], pending: Option<u64>) -> bool {
    use haul_core::writeback::{syncfs_pays, FOREIGN_BUDGET_FLOOR};
    if pending.is_none_or(|bytes| bytes <= FOREIGN_BUDGET_FLOOR) {
        return true;
    }
    let own: u64 = round
        .iter()
        .filter_map(|piece| match piece {
            Pending::Data {
                file: Ok((f, _)), ..
            } => f.metadata().ok(),
            Pending::Publish { file: Ok(u), .. } => u.file.metadata().ok(),
            _ => None,
        })
        .map(|metadata| metadata.len())
        .sum();
    let pays = syncfs_pays(round.len(), own, pending);
    if !pays {
        tracing::debug!(
            pieces = round.len(),
            "others' data waits for writeback: syncing the round piece by piece"
        );
    }
    pays
}

/// One `syncfs` per file system the pieces of `round` live on; the pieces of each file system
/// whose syncfs succeeded get their result.
#[cfg(target_os = "linux")]
fn sync_file_systems(round: &[Pending], results: &mut [Option<Result<(), IoFailure>>]) {
    for (handle, pieces) in syncfs_handles(round).into_values() {
        match rustix::fs::syncfs(&handle) {
            Ok(()) => {
                for n in pieces {
                    results[n] = Some(Ok(()));
                }
            }
            Err(e) => tracing::warn!("syncfs failed ({e}); syncing each piece instead"),
        }
    }
}

/// Per file system (device) of `round`'s pieces: the handle to call syncfs on, and the pieces.
///
/// syncfs reports a writeback error of the file system only if it happened after its handle
/// was opened. The handle is therefore the earliest opened file of the round on that device
/// (every file's writes came after its own open, so after that one's), and a directory only
/// when the device has no file in the round (a rename's file was synced in an earlier round).
#[cfg(target_os = "linux")]
fn syncfs_handles(round: &[Pending]) -> BTreeMap<u64, (File, Vec<usize>)> {
    // Per device: the handle's rank (file id, directories last), the handle, the pieces.
    let mut devices: BTreeMap<u64, (u64, File, Vec<usize>)> = BTreeMap::new();
    let mut dir_devices: std::collections::HashMap<&Path, u64> = std::collections::HashMap::new();
    for (n, pending) in round.iter().enumerate() {
        // A file's device is read through its own descriptor; it is duplicated only when it
        // becomes its device's handle (two syscalls less per file of a round).
        let opened_dir;
        let mut entry_dir = None;
        let (rank, file) = match pending {
            Pending::Data {
                id,
                file: Ok((f, _)),
                ..
            } => (id.0, f),
            Pending::Publish {
                file_id,
                file: Ok(u),
                ..
            } => (file_id.0, &u.file),
            Pending::Data { file: Err(_), .. } | Pending::Publish { file: Err(_), .. } => continue,
            Pending::Entry { path, .. } => {
                // A round often names many files in one directory: open it once.
                if let Some(slot) = dir_devices
                    .get(parent_dir(path))
                    .and_then(|dev| devices.get_mut(dev))
                {
                    slot.2.push(n);
                    continue;
                }
                match File::open(parent_dir(path)) {
                    Ok(dir) => {
                        opened_dir = dir;
                        entry_dir = Some(parent_dir(path));
                        (u64::MAX, &opened_dir)
                    }
                    Err(_) => continue,
                }
            }
        };
        let Ok(stat) = rustix::fs::fstat(file) else {
            continue;
        };
        if let Some(dir) = entry_dir.take() {
            dir_devices.insert(dir, stat.st_dev);
        }
        match devices.entry(stat.st_dev) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                let Ok(handle) = file.try_clone() else {
                    continue;
                };
                slot.insert((rank, handle, vec![n]));
            }
            std::collections::btree_map::Entry::Occupied(slot) => {
                let slot = slot.into_mut();
                if rank < slot.0 {
                    let Ok(handle) = file.try_clone() else {
                        continue;
                    };
                    (slot.0, slot.1) = (rank, handle);
                }
                slot.2.push(n);
            }
        }
    }
    devices
        .into_iter()
        .map(|(dev, (_, handle, pieces))| (dev, (handle, pieces)))
        .collect()
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn start_syncer<C: Completions, S: BlockingSpawner>(
    worker: &FileWorker,
    sink: &C,
    spawner: &S,
) -> Option<(Sender<IoId>, mpsc::Receiver<()>)> {
    let f = worker.file.as_ref()?.try_clone().ok()?;
    let (tx, rx) = mpsc::channel::<IoId>();
    let (finished_tx, finished) = mpsc::channel::<()>();
    let sink = sink.clone();
    let path = worker.path.clone();
    let work = Box::new(move || {
        for id in rx {
            let r = match f.sync_data() {
                Ok(()) => IoResult::Done,
                Err(e) => IoResult::Failed(local_failure(&e, "sync", Some(&path))),
            };
            sink.complete(id, r);
        }
        // Its descriptor is closed before the worker hears it finished: once a close
        // completes, nothing of the file is open (its lock, see `Leases`, is gone).
        drop(f);
        drop(finished_tx);
    });
    spawner
        .spawn_blocking("haul-sync".into(), work)
        .ok()
        .map(|()| (tx, finished))
}

/// Locks that serialize the calls changing one directory's entries (create, rename, remove).
///
/// The kernel serializes them anyway (it holds the directory's lock for each), but its waiters
/// spin on the CPU while the holder works: with 16 downloads creating files in one ext4
/// directory, a third of a 2-core machine went to that spinning (`rwsem_spin_on_owner`) while
/// the holders allocated inodes. Waiting here sleeps instead. Striped by the directory's path:
/// two directories sharing a stripe only wait for each other.
static DIR_LOCKS: [Mutex<()>; 32] = [const { Mutex::new(()) }; 32];

/// Run `op`, which adds, renames or removes an entry of `path`'s directory, under that
/// directory's lock.
fn in_dir<T>(path: &Path, op: impl FnOnce() -> T) -> T {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.parent().hash(&mut hasher);
    let _held = lock(&DIR_LOCKS[hasher.finish() as usize % DIR_LOCKS.len()]);
    op()
}

/// Map a std I/O error to the engine's classes.
pub fn local_failure(e: &std::io::Error, what: &str, path: Option<&Path>) -> IoFailure {
    let kind = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => IoErrorKind::NoSpace,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            IoErrorKind::PermissionDenied
        }
        _ => IoErrorKind::Other,
    };
    let msg = match path {
        Some(p) => format!("{what} {}: {e}", p.display()),
        None => format!("{what}: {e}"),
    };
    IoFailure::new(kind, msg)
}

/// Execute one of the whole-file operations (`ReadFile`, `WriteFileAtomic`, `Rename`,
/// `CopyFile`, `Remove`) with blocking std calls.
pub fn execute_path_op(op: &IoOp) -> IoResult {
    match op {
        IoOp::ReadFile { path, max_len } => match File::open(path) {
            Ok(f) => {
                let mut buf = Vec::new();
                match f.take(*max_len).read_to_end(&mut buf) {
                    Ok(_) => IoResult::Data(Bytes::from(buf)),
                    Err(e) => IoResult::Failed(local_failure(&e, "read", Some(path))),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => IoResult::NotFound,
            Err(e) => IoResult::Failed(local_failure(&e, "open", Some(path))),
        },
        IoOp::WriteFileAtomic { path, data } => match write_atomic(path, data) {
            Ok(()) => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "write", Some(path))),
        },
        IoOp::Rename { from, to, sync } => {
            let renamed = in_dir(to, || rename_over(from, to));
            match renamed.and_then(|()| if *sync { sync_parent(to) } else { Ok(()) }) {
                Ok(()) => IoResult::Done,
                Err(e) => IoResult::Failed(local_failure(&e, "rename to", Some(to))),
            }
        }
        IoOp::CopyFile { from, to } => match copy_atomic(from, to) {
            Ok(()) => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "copy to", Some(to))),
        },
        IoOp::Remove { path } => match in_dir(path, || fs::remove_file(path)) {
            Ok(()) => IoResult::Done,
            Err(e) if e.kind() == ErrorKind::NotFound => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "remove", Some(path))),
        },
        IoOp::RemoveUnheld { path } => remove_unheld(path),
        other => IoResult::Failed(IoFailure::new(
            IoErrorKind::Other,
            format!("not a whole-file operation: {other:?}"),
        )),
    }
}

/// Open `path` for reading if it is a regular file, without waiting for a writer should a
/// FIFO be swapped in after the look (`O_NONBLOCK` on Linux, which changes nothing for a
/// regular file).
fn open_read_nonblocking(path: &Path) -> std::io::Result<File> {
    // Nothing but a regular file is opened at all (opening a device may act on it); the
    // open that follows does not wait, for one swapped in meanwhile.
    if let Ok(m) = fs::metadata(path) {
        if !m.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
        OpenOptions::new()
            .read(true)
            .custom_flags(nonblock)
            .open(path)
    }
    #[cfg(not(target_os = "linux"))]
    File::open(path)
}

/// [`IoOp::RemoveUnheld`]: remove the partial at `path` while holding its lock, unless
/// another process holds it. Only an existing regular file is opened (never created, no
/// directory made); anything else there (a symbolic link, ...) is removed by name, as it is
/// no partial of anyone's.
fn remove_unheld(path: &Path) -> IoResult {
    let failed = |e: &std::io::Error| IoResult::Failed(local_failure(e, "remove", Some(path)));
    let remove = || match in_dir(path, || fs::remove_file(path)) {
        Ok(()) => IoResult::Done,
        Err(e) if e.kind() == ErrorKind::NotFound => IoResult::NotFound,
        Err(e) => failed(&e),
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return remove(),
        Err(e) if e.kind() == ErrorKind::NotFound => return IoResult::NotFound,
        Err(e) => return failed(&e),
    }
    // Read-only is enough for the lock, and opens another user's readable partial too.
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return IoResult::NotFound,
        Err(e) => return failed(&e),
    };
    // Under the lock, the name must still be this file: another process may have committed
    // or removed it meanwhile, and a new one there is its own.
    let busy = |what: &str| {
        let what = format!("{} {what}", path.display());
        IoResult::Failed(IoFailure::new(IoErrorKind::Busy, what))
    };
    match lock_named(path, &file) {
        Ok(Lease::Taken) => remove(),
        Ok(Lease::HeldElsewhere) => busy("is locked by another process"),
        Ok(Lease::Moved) => busy("was replaced by another process"),
        Err(e) => failed(&e),
    }
}

/// Open `path` with `options` (which may create it) without following a symbolic link at
/// its last component: a working name (`<dest>.haul-part`, `.haul-copy`) is haul's own, and
/// a link planted there by someone who may write the directory would send a download's
/// bytes to the link's target, anywhere. A link found there is removed (only the link: its
/// target is left alone) and the open tried again.
fn open_no_follow(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let is_link = || fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let mut tries = 0;
    loop {
        // Without O_NOFOLLOW (elsewhere than Linux) look first, which leaves a race.
        if cfg!(not(target_os = "linux")) && is_link() {
            remove_link(path)?;
        }
        match options.open(path) {
            Err(e) if tries < 3 && is_link() => {
                tracing::warn!(path = %path.display(), "removed a symbolic link found at a working file's name ({e})");
                remove_link(path)?;
                tries += 1;
            }
            opened => return opened,
        }
    }
}

/// Remove the symbolic link at `path` (gone already is fine).
fn remove_link(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replace `path` through `<path>.tmp` (the engine writes only state files this way, whose
/// names leave room for it: see [`haul_core::download::working_sibling`]). The sibling is
/// created anew (whatever was at its name removed first, never written through).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    {
        let mut f = in_dir(&tmp, || {
            remove_link(&tmp)?;
            OpenOptions::new().write(true).create_new(true).open(&tmp)
        })?;
        f.write_all(data)?;
        f.sync_data()?;
    }
    in_dir(path, || fs::rename(&tmp, path))?;
    sync_parent(path)
}

/// Rename `from` over `to`, unless `to` is something a download must not replace: a
/// directory, or a device, FIFO or socket (`/dev/null` as root would become a regular
/// file). A symbolic link is replaced itself, as a rename does.
fn rename_over(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(to) {
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::IsADirectory,
                "the destination is a directory",
            ));
        }
        if !kind.is_file() && !kind.is_symlink() {
            return Err(std::io::Error::other(
                "the destination is not a regular file (a device, FIFO or socket); a download \
                 replaces only files",
            ));
        }
    }
    fs::rename(from, to)
}

/// Copy through a temporary sibling so `to` is either absent/old or complete.
///
/// The sibling has one name per destination, so two copies to one destination (two
/// processes, or two clients of one) would write it at once and one could rename the
/// other's half-written bytes into place. Each copy therefore holds the sibling locked
/// (`flock`, waiting for another holder) from before it empties it until after the rename;
/// a copy that gets the lock only once the sibling was renamed away opens the path again.
fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = haul_core::download::working_sibling(to, ".haul-copy");
    if let Some(dir) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut file = loop {
        let file = in_dir(&tmp, || {
            open_no_follow(
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false),
                &tmp,
            )
        })?;
        match file.lock() {
            Ok(()) => {}
            // A file system without locks: copy as before.
            Err(e) if e.kind() == ErrorKind::Unsupported => break file,
            Err(e) => return Err(e),
        }
        if names_same_file(&tmp, &file)? {
            break file;
        }
    };
    let result = (|| {
        file.set_len(0)?;
        std::io::copy(&mut File::open(from)?, &mut file)?;
        file.sync_all()?;
        rename_over(&tmp, to)?;
        sync_parent(to)
    })();
    if result.is_err() && names_same_file(&tmp, &file).unwrap_or(false) {
        let _ = fs::remove_file(&tmp);
    }
    // The lock goes with the descriptor, after the rename.
    drop(file);
    result
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Make a rename or creation in `path`'s directory durable.
///
/// Group commit: callers syncing one directory at the same time share syncs. A caller
/// counts itself in after its change and returns once a sync that started after that has
/// finished: its own if none is running, else the next one, which one of the waiters starts
/// as soon as the running one ends and which covers every waiter counted in by then. Many
/// small downloads committing into one directory then sync it a few times instead of once
/// each.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entry = lock(&DIR_SYNCS)
        .get_or_insert_with(Default::default)
        .entry(parent.to_path_buf())
        .or_default()
        .clone();
    let result = entry.sync(parent);
    let mut syncs = lock(&DIR_SYNCS);
    if let Some(map) = syncs.as_mut() {
        // Only the map and this caller hold it: nobody waits on it any more.
        if Arc::strong_count(&entry) == 2 {
            map.remove(parent);
        }
    }
    result
}

/// Directories being synced, for [`sync_parent`]'s group commit.
#[allow(clippy::type_complexity)]
static DIR_SYNCS: Mutex<Option<std::collections::HashMap<std::path::PathBuf, Arc<DirSync>>>> =
    Mutex::new(None);

/// One directory's group commit.
#[derive(Default)]
struct DirSync {
    state: Mutex<DirSyncState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct DirSyncState {
    /// Callers counted in so far.
    joined: u64,
    /// Every caller up to this one is covered by a finished sync.
    covered: u64,
    running: bool,
    /// How the last finished sync failed, if it did.
    failure: Option<(ErrorKind, String)>,
}

impl DirSync {
    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        state.joined += 1;
        let me = state.joined;
        loop {
            if state.covered >= me {
                return match &state.failure {
                    None => Ok(()),
                    Some((kind, what)) => Err(std::io::Error::new(*kind, what.clone())),
                };
            }
            if !state.running {
                state.running = true;
                let target = state.joined;
                drop(state);
                let result = File::open(dir).and_then(|d| d.sync_all());
                state = lock(&self.state);
                state.running = false;
                state.covered = target;
                state.failure = result
                    .as_ref()
                    .err()
                    .map(|e| (e.kind(), format!("sync directory: {e}")));
                self.done.notify_all();
                return result;
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Create a file without a name in `path`'s directory (Linux `O_TMPFILE`).
#[cfg(target_os = "linux")]
pub(crate) fn open_unnamed(path: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
    let fd = rustix::fs::open(parent_dir(path), flags, Mode::from_raw_mode(0o666))?;
    Ok(File::from(fd))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn open_unnamed(_path: &Path) -> std::io::Result<File> {
    Err(ErrorKind::Unsupported.into())
}

/// An open file waiting for its `Publish`: unnamed, or (where unnamed files are not
/// supported) at `path`.
struct Unpublished {
    file: File,
    path: std::path::PathBuf,
    unnamed: bool,
    /// Let go once the file is named, or its publish failed (dropped with it).
    _claim: PublishClaim,
}

impl Unpublished {
    /// Name the file `to`, replacing what is there (data and directory syncs are the
    /// caller's), then close it.
    fn publish(self, to: &Path) -> Result<(), IoFailure> {
        let fail = |e: std::io::Error| local_failure(&e, "publish as", Some(to));
        if !self.unnamed {
            // A partial named after a failed unnamed open: renamed only if its path still
            // names it (another process may have replaced it).
            if !names_same_file(&self.path, &self.file).map_err(fail)? {
                return Err(replaced(&self.path));
            }
            return in_dir(to, || rename_over(&self.path, to)).map_err(fail);
        }
        match in_dir(to, || link_open_file(&self.file, to)) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // A link cannot replace a file: name it at its partial's path, then rename
                // that over the destination (atomic, as for a named partial). What is at
                // that path goes first, unless another process holds it: that is its
                // download to the same destination, under way.
                let held = in_dir(&self.path, || {
                    // Locked (if anything is there) until it is replaced.
                    // Read-only: a lock needs no more (a stale partial this user may read
                    // but not write is still replaced, the directory being writable).
                    let there = match OpenOptions::new().read(true).open(&self.path) {
                        Ok(there) => Some(there),
                        Err(e) if e.kind() == ErrorKind::NotFound => None,
                        Err(e) => return Err(e),
                    };
                    if let Some(there) = &there {
                        match lock_named(&self.path, there)? {
                            // Another process's partial; or one replaced as it was looked
                            // at, which is another process at work there too.
                            Lease::HeldElsewhere | Lease::Moved => return Ok(true),
                            Lease::Taken => {}
                        }
                        let _ = fs::remove_file(&self.path);
                    }
                    // Locked once it has that name, until the rename (it is closed after):
                    // another process's download that opens the path meanwhile finds it
                    // held, instead of taking it for a partial of its own.
                    if let Err(e) = self.file.try_lock() {
                        tracing::debug!(%e, "file to publish not locked");
                    }
                    link_open_file(&self.file, &self.path)?;
                    Ok(false)
                })
                .map_err(fail)?;
                if held {
                    let what = format!(
                        "{} is locked by another process downloading to {}",
                        self.path.display(),
                        to.display()
                    );
                    return Err(IoFailure::new(IoErrorKind::Busy, what));
                }
                in_dir(to, || rename_over(&self.path, to)).map_err(|e| {
                    let _ = fs::remove_file(&self.path);
                    fail(e)
                })
            }
            other => other.map_err(fail),
        }
    }
}

/// Give the open (unnamed) `file` the name `to`: by `AT_EMPTY_PATH` on the descriptor itself
/// where the kernel allows it (it needs `CAP_DAC_READ_SEARCH`), else through its
/// `/proc/self/fd` link. The first skips resolving a `/proc` path for every file: a quarter
/// of the cost of naming a small download. Which one works is learnt once per process.
#[cfg(target_os = "linux")]
fn link_open_file(file: &File, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{linkat, AtFlags, CWD};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicBool;
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    let refused = EMPTY_PATH_REFUSED.load(Ordering::Relaxed);
    if !refused {
        match linkat(file, "", CWD, to, AtFlags::EMPTY_PATH) {
            // Without the capability the kernel answers ENOENT (or EPERM on some versions);
            // ENOENT may also mean `to`'s directory is missing: the `/proc` link tells.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {}
            other => return Ok(other?),
        }
    }
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(CWD, proc_path.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW)?;
    if !refused {
        // The name could be given, so the descriptor itself was refused: remember it.
        EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn link_open_file(_file: &File, _to: &Path) -> std::io::Result<()> {
    Err(ErrorKind::Unsupported.into())
}

/// The file itself once nobody else holds it: the digest thread lets go of it before the
/// writes it did for it count as done, so after [`FileWorker::settle`] this is the only
/// reference (a duplicate descriptor otherwise).
fn owned(file: Arc<File>) -> Result<File, IoFailure> {
    Arc::try_unwrap(file).or_else(|shared| {
        shared
            .try_clone()
            .map_err(|e| local_failure(&e, "duplicate the descriptor of", None))
    })
}

/// Executes the operations of one open file, in order.
#[derive(Default)]
pub struct FileWorker {
    /// Shared with the digest thread while it writes for the file (see `behind`).
    file: Option<Arc<File>>,
    path: std::path::PathBuf,
    /// `file` was created without a name (`OpenUnnamed`); otherwise it is at `path`.
    unnamed: bool,
    /// An unnamed file made ahead in the directory of this file's `OpenUnnamed`.
    spare: Option<File>,
    /// The digest thread, for an unnamed file's running digest.
    digests: Option<Digests>,
    /// The digest of what was written from offset 0 in order, while that holds.
    running: Option<Running>,
    /// Without a running digest, the hash of the first bytes as a checkpoint's `Digest`
    /// read them back: the next read-back goes on from there (each checkpoint of a large
    /// file read it back from zero), while no write or truncation has touched them.
    read_prefix: Option<(u64, sha2::Sha256)>,
    /// Writes handed to the digest thread ([`FileWorker::write_behind`]); every other
    /// operation waits for them ([`FileWorker::settle`]).
    behind: Option<Arc<Behind>>,
    /// The files this driver writes (see [`Leases`]).
    leases: Leases,
    /// The engine's id of the file opened last.
    id: Option<FileId>,
}

impl FileWorker {
    /// Take the open file and its path out (a commit hands them on), once its writes are
    /// done; `None` if it is not open.
    fn take(&mut self) -> Option<Result<(File, std::path::PathBuf), IoFailure>> {
        let settled = self.settle();
        let file = owned(self.file.take()?);
        Some(settled.and(file).map(|file| (file, self.path.clone())))
    }

    /// Take the open file out for its `Publish`, once its writes are done.
    fn take_unpublished(&mut self) -> Result<Unpublished, IoFailure> {
        let claim = PublishClaim {
            leases: self.leases.clone(),
            id: self.id,
        };
        let settled = self.settle();
        let file = self
            .file
            .take()
            .ok_or_else(|| IoFailure::new(IoErrorKind::Other, "file is not open"))?;
        settled?;
        Ok(Unpublished {
            file: owned(file)?,
            path: self.path.clone(),
            unnamed: self.unnamed,
            _claim: claim,
        })
    }

    /// Waits for the writes handed to the digest thread; the first of them that failed.
    fn settle(&mut self) -> Result<(), IoFailure> {
        match &self.behind {
            Some(behind) => behind.settle(self.digests.as_ref()),
            None => Ok(()),
        }
    }

    /// A write of an unnamed file that follows its running digest, handed to the digest
    /// thread (see [`crate::digests`]): `true` if it was (it is then as good as done; a
    /// failure comes with the file's next operation), `false` if the caller must execute it.
    pub fn write_behind(&mut self, offset: u64, data: &Bytes) -> bool {
        self.touched_from(offset);
        let (Some(file), Some(running), true) = (&self.file, &mut self.running, self.unnamed)
        else {
            return false;
        };
        let behind = self
            .behind
            .get_or_insert_with(|| Arc::new(Behind::new(self.path.clone())));
        if running.write_behind(file, offset, data, behind) {
            return true;
        }
        // Written by the caller instead: the digest no longer covers the file in order.
        self.running = None;
        false
    }

    /// Open (creating) the file at `path`, locked for this process (see [`Leases`]);
    /// emptied when `truncate`, which happens only once the lock is had: a partial another
    /// process writes fails the open with [`IoErrorKind::Busy`] and is left as it was.
    fn open_named(&mut self, id: FileId, path: &Path, truncate: bool) -> IoResult {
        // A file this worker still has open would hold the lock against the new open.
        self.file = None;
        // A few tries: each one that finds the path renamed or removed under the lock lost
        // a race with another process's commit or clean-up, which leaves the path free.
        for _ in 0..3 {
            let file = match self.open_named_unlocked(path) {
                Ok(file) => file,
                Err(failure) => return IoResult::Failed(failure),
            };
            let lease = match self.leases.take(path, id, &file) {
                Ok(lease) => lease,
                Err(failure) => return IoResult::Failed(failure),
            };
            let len = match lease {
                Lease::Moved => continue,
                Lease::HeldElsewhere => {
                    let what = format!("{} is locked by another process", path.display());
                    return IoResult::Failed(IoFailure::new(IoErrorKind::Busy, what));
                }
                Lease::Taken if truncate => file.set_len(0).map(|()| 0),
                Lease::Taken => file.metadata().map(|m| m.len()),
            };
            return match len {
                Ok(len) => {
                    self.file = Some(Arc::new(file));
                    IoResult::Opened { len }
                }
                Err(e) => {
                    self.leases.release(path);
                    IoResult::Failed(local_failure(&e, "open", Some(path)))
                }
            };
        }
        let what = format!("{} keeps being replaced by another process", path.display());
        IoResult::Failed(IoFailure::new(IoErrorKind::Busy, what))
    }

    /// Open (creating) the file at `path` for reading and writing, as it is; never through
    /// a symbolic link (see [`open_no_follow`]).
    fn open_named_unlocked(&self, path: &Path) -> Result<File, IoFailure> {
        let open = || {
            in_dir(path, || {
                open_no_follow(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false),
                    path,
                )
            })
        };
        // Open first and create the parent directory only if it is missing: looking
        // first would cost a stat per file, and `create_dir_all` tries `mkdir`, which
        // takes the directory's lock even when it exists (many parallel downloads
        // into one directory would queue on it).
        let opened = match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) => {
                        if let Err(e) = fs::create_dir_all(dir) {
                            return Err(local_failure(&e, "create directory", Some(dir)));
                        }
                        open()
                    }
                    None => Err(e),
                }
            }
            other => other,
        };
        opened.map_err(|e| local_failure(&e, "open", Some(path)))
    }

    /// Whether the running digest covers exactly the first `len` bytes (a `Digest` of them
    /// then needs no read-back).
    fn running_covers(&self, len: u64) -> bool {
        self.running.as_ref().is_some_and(|r| r.len() == len)
    }

    /// Answer a `Digest` of the first `len` bytes through `done`: from the running digest
    /// (later, on the digest thread) when it covers exactly those bytes, else read back now.
    /// A checkpoint's digest (`keep`) only looks at the running digest, which goes on.
    pub fn digest(&mut self, len: u64, keep: bool, done: DigestDone) {
        if keep {
            let done = match &self.running {
                Some(running) if running.len() == len => match running.snapshot(done) {
                    Ok(()) => return,
                    Err(done) => done,
                },
                _ => done,
            };
            return done(self.read_back(len, true));
        }
        let done = match self.running.take() {
            Some(running) if running.len() == len => match running.finish(done) {
                Ok(()) => return,
                Err(done) => done,
            },
            _ => done,
        };
        done(self.read_back(len, false));
    }

    /// The digest of the first `len` bytes read back, from where the last checkpoint's
    /// read-back ended if it still holds; kept for the next one when `keep`.
    fn read_back(&mut self, len: u64, keep: bool) -> IoResult {
        use sha2::Digest as _;
        if let Err(failure) = self.settle() {
            return IoResult::Failed(failure);
        }
        let Some(f) = self.file.as_ref() else {
            return IoResult::Failed(IoFailure::new(IoErrorKind::Other, "file is not open"));
        };
        let (from, mut hasher) = match self.read_prefix.take() {
            Some((read, hasher)) if read <= len => (read, hasher),
            _ => (0, sha2::Sha256::new()),
        };
        if let Err(failure) = read_back_into(f, &mut hasher, from, len, &self.path) {
            return IoResult::Failed(failure);
        }
        if keep {
            self.read_prefix = Some((len, hasher.clone()));
        }
        IoResult::Digest(hasher.finalize().into())
    }

    /// Bytes from `offset` on changed: a read-back prefix over them no longer holds.
    fn touched_from(&mut self, offset: u64) {
        if self
            .read_prefix
            .as_ref()
            .is_some_and(|(read, _)| offset < *read)
        {
            self.read_prefix = None;
        }
    }

    /// Execute one per-file operation (after the writes handed to the digest thread, except
    /// another write: the engine's writes of a file never overlap while they are in flight).
    pub fn execute(&mut self, op: &IoOp) -> IoResult {
        if !matches!(op, IoOp::WriteAt { .. }) {
            let settled = self.settle();
            if let (Err(failure), false) = (settled, matches!(op, IoOp::CloseFile { .. })) {
                if let IoOp::Publish { .. } = op {
                    // Not published: the file goes, as after any failed publish, and its
                    // claim with it.
                    self.file = None;
                    if let Some(id) = self.id {
                        self.leases.release_file(id);
                    }
                }
                return IoResult::Failed(failure);
            }
        }
        let path = self.path.clone();
        let fail =
            |e: std::io::Error, what: &str| IoResult::Failed(local_failure(&e, what, Some(&path)));
        match op {
            IoOp::Open {
                file,
                path,
                truncate,
            } => {
                self.path = path.clone();
                self.unnamed = false;
                self.read_prefix = None;
                self.running = truncate
                    .then(|| self.digests.as_ref().map(Digests::running))
                    .flatten();
                self.id = Some(*file);
                self.open_named(*file, path, *truncate)
            }
            IoOp::OpenUnnamed { file, path } => {
                self.path = path.clone();
                self.read_prefix = None;
                self.id = Some(*file);
                if let Err(failure) = self.leases.claim(path, *file) {
                    return IoResult::Failed(failure);
                }
                let opened = match self.spare.take() {
                    Some(spare) => Ok(spare),
                    None => open_unnamed(path),
                };
                self.running = self.digests.as_ref().map(Digests::running);
                match opened {
                    Ok(f) => {
                        self.unnamed = true;
                        self.file = Some(Arc::new(f));
                        IoResult::Opened { len: 0 }
                    }
                    // Not supported here (or the directory is missing): a named partial.
                    Err(_) => {
                        self.unnamed = false;
                        let opened = self.open_named(*file, path, true);
                        if !matches!(opened, IoResult::Opened { .. }) {
                            // Nothing was opened: nothing of this path is claimed.
                            self.leases.release(path);
                        }
                        opened
                    }
                }
            }
            // The file's claim goes with the `Unpublished`, named or not.
            IoOp::Publish { to, .. } => match self.take_unpublished() {
                Ok(u) => match u.publish(to) {
                    Ok(()) => IoResult::Done,
                    Err(f) => IoResult::Failed(f),
                },
                Err(f) => IoResult::Failed(f),
            },
            IoOp::OpenRead { path, .. } => {
                self.path = path.clone();
                // Only a regular file is taken: opening a FIFO (a name probe, an existing
                // destination checked) would block this worker until a writer came, so the
                // open does not wait (Linux), and the file opened is checked.
                match open_read_nonblocking(path).and_then(|f| f.metadata().map(|m| (f, m))) {
                    Ok((_, m)) if !m.is_file() => IoResult::Failed(IoFailure::new(
                        IoErrorKind::Other,
                        format!("{} is not a regular file", path.display()),
                    )),
                    Ok((f, m)) => {
                        self.file = Some(Arc::new(f));
                        IoResult::Opened { len: m.len() }
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => IoResult::NotFound,
                    Err(e) => IoResult::Failed(local_failure(&e, "open", Some(path))),
                }
            }
            IoOp::CloseFile { .. } => {
                self.file = None;
                IoResult::Done
            }
            _ => {
                let Some(f) = self.file.as_ref() else {
                    return IoResult::Failed(IoFailure::new(
                        IoErrorKind::Other,
                        "file is not open",
                    ));
                };
                match op {
                    IoOp::ReadAt { offset, len, .. } => {
                        let mut buf = BytesMut::zeroed(*len as usize);
                        let mut got = 0;
                        while got < buf.len() {
                            match f.read_at(&mut buf[got..], offset + got as u64) {
                                Ok(0) => break,
                                Ok(n) => got += n,
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(e) => return fail(e, "read"),
                            }
                        }
                        buf.truncate(got);
                        IoResult::Data(buf.freeze())
                    }
                    IoOp::WriteAt { offset, data, .. } => match f.write_all_at(data, *offset) {
                        Ok(()) => {
                            self.touched_from(*offset);
                            if let Some(running) = self.running.as_mut() {
                                if !running.wrote(*offset, data) {
                                    self.running = None;
                                }
                            }
                            IoResult::Done
                        }
                        Err(e) => fail(e, "write"),
                    },
                    IoOp::SetLen { len, .. } => match f.set_len(*len) {
                        Ok(()) => {
                            self.touched_from(*len);
                            // Emptied: the digest starts over; cut or grown: of no use.
                            if *len == 0 {
                                self.running = self.digests.as_ref().map(Digests::running);
                            } else if self.running.as_ref().is_some_and(|r| r.len() != *len) {
                                self.running = None;
                            }
                            IoResult::Done
                        }
                        Err(e) => fail(e, "truncate"),
                    },
                    IoOp::Digest { len, keep, .. } => {
                        if !keep {
                            self.running = None;
                        }
                        self.read_back(*len, *keep)
                    }
                    IoOp::Sync { .. } => match f.sync_data() {
                        Ok(()) => IoResult::Done,
                        Err(e) => fail(e, "sync"),
                    },
                    other => IoResult::Failed(IoFailure::new(
                        IoErrorKind::Other,
                        format!("not a per-file operation: {other:?}"),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` on `pool` and waits until it has run; the id of the thread it ran on.
    fn run_on(pool: &Threads) -> std::thread::ThreadId {
        let (tx, rx) = mpsc::channel();
        pool.spawn_blocking(
            "test".into(),
            Box::new(move || tx.send(std::thread::current().id()).unwrap()),
        )
        .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the work ran")
    }

    /// Waits until `pool` lists `n` waiting threads.
    fn wait_idle(pool: &Threads, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&pool.idle).waiting.len() != n {
            assert!(std::time::Instant::now() < deadline, "no idle thread");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_thread_whose_work_ended_runs_the_next_piece_instead_of_a_new_thread() {
        let pool = Threads::default();
        let first = run_on(&pool);
        wait_idle(&pool, 1);
        assert_eq!(run_on(&pool), first);
    }

    #[test]
    fn work_spawned_while_every_thread_is_busy_gets_a_new_thread() {
        let pool = Threads::default();
        let (release, blocked) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        pool.spawn_blocking(
            "busy".into(),
            Box::new(move || {
                started_tx.send(std::thread::current().id()).unwrap();
                let _ = blocked.recv();
            }),
        )
        .unwrap();
        let busy = started.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_ne!(run_on(&pool), busy);
        drop(release);
    }

    /// Completions into a channel.
    #[derive(Clone)]
    struct ToChannel(Sender<(IoId, IoResult)>);

    impl Completions for ToChannel {
        fn complete(&self, id: IoId, result: IoResult) {
            let _ = self.0.send((id, result));
        }
    }

    /// An executor reporting to a channel, running small operations inline or not.
    fn files_to_channel(
        inline: bool,
    ) -> (Files<ToChannel, Threads>, mpsc::Receiver<(IoId, IoResult)>) {
        let (tx, done) = mpsc::channel();
        let files = Files::new(ToChannel(tx), Threads::default());
        match inline {
            true => (files.inline_small_ops(), done),
            false => (files, done),
        }
    }

    #[test]
    fn remove_unheld_removes_only_an_unlocked_partial_and_creates_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let remove = |path: &Path| execute_path_op(&IoOp::RemoveUnheld { path: path.into() });
        // Nothing there, not even its directory: nothing made.
        let missing = dir.path().join("new/deep/f.bin.haul-part");
        assert_eq!(remove(&missing), IoResult::NotFound);
        assert!(!dir.path().join("new").exists());
        // Held (another open file description's lock, as another process's): left.
        let held = dir.path().join("held.haul-part");
        fs::write(&held, b"theirs").unwrap();
        let theirs = File::open(&held).unwrap();
        theirs.lock().unwrap();
        match remove(&held) {
            IoResult::Failed(f) => assert_eq!(f.kind, IoErrorKind::Busy, "{f:?}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(fs::read(&held).unwrap(), b"theirs");
        drop(theirs);
        // Free: removed.
        assert_eq!(remove(&held), IoResult::Done);
        assert!(!held.exists());
        // A dangling symbolic link: the link goes, its target is not created.
        let link = dir.path().join("link.haul-part");
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(remove(&link), IoResult::Done);
        assert!(fs::symlink_metadata(&link).is_err() && !target.exists());
    }

    #[test]
    fn a_published_fallback_partial_lets_go_of_its_lease_durable_or_not() {
        for sync in [false, true] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(true);
            let file = FileId(1);
            // A missing directory fails the unnamed open: the partial is named.
            let part = dir.path().join("sub").join("f.haul-part");
            let mut run = |id: u64, op: IoOp| {
                files.start(request(id, op));
                files.flush();
                done.recv_timeout(Duration::from_secs(10)).unwrap().1
            };
            let open = IoOp::OpenUnnamed {
                file,
                path: part.clone(),
            };
            assert_eq!(run(1, open), IoResult::Opened { len: 0 });
            assert!(part.exists(), "the fallback named the partial");
            let to = dir.path().join("sub").join("f");
            let publish = IoOp::Publish {
                file,
                path: part.clone(),
                to: to.clone(),
                sync,
            };
            assert_eq!(run(2, publish), IoResult::Done);
            assert!(to.exists() && !part.exists());
            assert_eq!(files.leases().held(), 0, "sync: {sync}");
        }
    }

    /// A write of `b"mine"` at offset 0 of `file`.
    fn write_mine(file: FileId) -> IoOp {
        IoOp::WriteAt {
            file,
            offset: 0,
            data: Bytes::from_static(b"mine"),
        }
    }

    /// Someone removes the partial at `part`, and another process's download makes its own
    /// there ("theirs, unfinished") and locks it: the lock lasts as long as the file returned.
    fn replaced_by_another_process(part: &Path) -> File {
        fs::remove_file(part).unwrap();
        fs::write(part, b"theirs, unfinished").unwrap();
        let theirs = File::open(part).unwrap();
        theirs.lock().unwrap();
        theirs
    }

    /// Start `ops` together on `files`; their results in order.
    fn run_all(
        files: &mut Files<ToChannel, Threads>,
        done: &mpsc::Receiver<(IoId, IoResult)>,
        ops: Vec<(u64, IoOp)>,
    ) -> Vec<IoResult> {
        let count = ops.len();
        for (id, op) in ops {
            files.start(request(id, op));
        }
        files.flush();
        let mut results: Vec<(IoId, IoResult)> = (0..count)
            .map(|_| done.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        results.sort_by_key(|(id, _)| id.0);
        results.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn a_partial_replaced_by_another_process_is_neither_committed_nor_removed() {
        for (commit, sync) in [(true, false), (true, true), (false, false)] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(true);
            macro_rules! run {
                ($id:expr, $op:expr) => {
                    run_all(&mut files, &done, vec![($id, $op)]).remove(0)
                };
            }
            let part = dir.path().join("x.haul-part");
            let open = IoOp::Open {
                file: FileId(1),
                path: part.clone(),
                truncate: true,
            };
            assert_eq!(run!(1, open), IoResult::Opened { len: 0 });
            let write = write_mine(FileId(1));
            assert_eq!(run!(2, write), IoResult::Done);
            let _theirs = replaced_by_another_process(&part);
            let close = IoOp::CloseFile {
                file: FileId(1),
                then: match commit {
                    true => AfterClose::Renamed,
                    false => AfterClose::Removed,
                },
            };
            assert_eq!(run!(3, close), IoResult::Done);
            let dest = dir.path().join("x");
            if commit {
                let rename = IoOp::Rename {
                    from: part.clone(),
                    to: dest.clone(),
                    sync,
                };
                match run!(4, rename) {
                    IoResult::Failed(f) => {
                        assert_eq!(f.kind, IoErrorKind::Replaced, "{f}");
                        assert!(f.message.contains("removed or replaced"), "{f}")
                    }
                    other => panic!("expected a failure, got {other:?}"),
                }
                assert!(!dest.exists(), "nothing committed");
            } else {
                let remove = IoOp::Remove { path: part.clone() };
                assert_eq!(run!(4, remove), IoResult::Done);
            }
            assert_eq!(fs::read(&part).unwrap(), b"theirs, unfinished");
            assert_eq!(files.leases().held(), 0);
        }
    }

    #[test]
    fn an_unnamed_file_replacing_its_destination_leaves_another_process_s_partial_alone() {
        for (held, sync) in [(true, false), (true, true), (false, false), (false, true)] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(true);
            macro_rules! run {
                ($id:expr, $op:expr) => {
                    run_all(&mut files, &done, vec![($id, $op)]).remove(0)
                };
            }
            let (part, dest) = (dir.path().join("x.haul-part"), dir.path().join("x"));
            fs::write(&dest, b"an older x").unwrap();
            // Another process's download to x, under way (or a stale partial).
            fs::write(&part, b"theirs").unwrap();
            let theirs = File::open(&part).unwrap();
            if held {
                theirs.lock().unwrap();
            }
            let open = IoOp::OpenUnnamed {
                file: FileId(1),
                path: part.clone(),
            };
            assert_eq!(run!(1, open), IoResult::Opened { len: 0 });
            let write = write_mine(FileId(1));
            assert_eq!(run!(2, write), IoResult::Done);
            if sync {
                assert_eq!(run!(3, IoOp::Sync { file: FileId(1) }), IoResult::Done);
            }
            let publish = IoOp::Publish {
                file: FileId(1),
                path: part.clone(),
                to: dest.clone(),
                sync,
            };
            let result = run!(4, publish);
            if held {
                match result {
                    IoResult::Failed(f) => assert_eq!(f.kind, IoErrorKind::Busy, "{f}"),
                    other => panic!("expected Busy, got {other:?}"),
                }
                assert_eq!(fs::read(&part).unwrap(), b"theirs");
                assert_eq!(fs::read(&dest).unwrap(), b"an older x");
            } else {
                assert_eq!(result, IoResult::Done);
                assert_eq!(fs::read(&dest).unwrap(), b"mine");
                assert!(!part.exists(), "the stale partial was replaced");
            }
        }
    }

    #[test]
    fn a_fallback_partial_replaced_by_another_process_is_not_published() {
        for sync in [true, false] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(true);
            macro_rules! run {
                ($id:expr, $op:expr) => {
                    run_all(&mut files, &done, vec![($id, $op)]).remove(0)
                };
            }
            // A missing directory fails the unnamed open: a named partial.
            let part = dir.path().join("sub").join("x.haul-part");
            let open = IoOp::OpenUnnamed {
                file: FileId(1),
                path: part.clone(),
            };
            assert_eq!(run!(1, open), IoResult::Opened { len: 0 });
            let write = write_mine(FileId(1));
            assert_eq!(run!(2, write), IoResult::Done);
            let _theirs = replaced_by_another_process(&part);
            let dest = dir.path().join("sub").join("x");
            let publish = IoOp::Publish {
                file: FileId(1),
                path: part.clone(),
                to: dest.clone(),
                sync,
            };
            match run!(3, publish) {
                IoResult::Failed(f) => assert_eq!(f.kind, IoErrorKind::Replaced, "{f}"),
                other => panic!("sync {sync}: expected Replaced, got {other:?}"),
            }
            assert!(
                !dest.exists(),
                "sync {sync}: another process's partial published"
            );
            assert_eq!(fs::read(&part).unwrap(), b"theirs, unfinished");
        }
    }

    #[test]
    fn a_failed_unnamed_open_leaves_no_claim() {
        let (mut files, done) = files_to_channel(true);
        // The directory exists, yet no file can be made there.
        let part = PathBuf::from("/proc/self/x.haul-part");
        let open = IoOp::OpenUnnamed {
            file: FileId(1),
            path: part,
        };
        let result = run_all(&mut files, &done, vec![(1, open)]).remove(0);
        assert!(matches!(result, IoResult::Failed(_)), "{result:?}");
        assert_eq!(files.leases().held(), 0);
    }

    #[test]
    fn two_spellings_of_one_file_are_not_written_at_once_unnamed_or_named_durable_or_not() {
        for (unnamed, sync) in [(true, false), (true, true), (false, false), (false, true)] {
            let dir = tempfile::TempDir::new().unwrap();
            fs::create_dir_all(dir.path().join("d/x")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("d"), dir.path().join("link")).unwrap();
            let (mut files, done) = files_to_channel(true);
            macro_rules! run {
                ($id:expr, $op:expr) => {
                    run_all(&mut files, &done, vec![($id, $op)]).remove(0)
                };
            }
            let part = dir.path().join("d/f.haul-part");
            let open = |file: u64, path: &Path| match unnamed {
                true => IoOp::OpenUnnamed {
                    file: FileId(file),
                    path: path.into(),
                },
                false => IoOp::Open {
                    file: FileId(file),
                    path: path.into(),
                    truncate: true,
                },
            };
            assert_eq!(run!(1, open(1, &part)), IoResult::Opened { len: 0 });
            let written = IoOp::WriteAt {
                file: FileId(1),
                offset: 0,
                data: Bytes::from_static(b"first"),
            };
            assert_eq!(run!(2, written), IoResult::Done);
            // The same file through `..` and through a link to its directory: refused, and
            // the first file is left as it is.
            let dotdot = dir.path().join("d/x/../f.haul-part");
            let linked = dir.path().join("link/f.haul-part");
            for (n, alias) in [(3, &dotdot), (4, &linked)] {
                match run!(n, open(n, alias)) {
                    IoResult::Failed(f) => {
                        assert_eq!(f.kind, IoErrorKind::SameFile, "{f:?}");
                        assert!(f.message.contains(&*part.to_string_lossy()), "{f}");
                    }
                    other => panic!("{}: expected SameFile, got {other:?}", alias.display()),
                }
            }
            if !unnamed {
                assert_eq!(fs::read(&part).unwrap(), b"first", "not truncated");
            }
            // Another file of the directory is free.
            let other = dir.path().join("d/x/../g.haul-part");
            assert_eq!(run!(5, open(5, &other)), IoResult::Opened { len: 0 });
            // Once the first is named, its other spellings are free again.
            let dest = dir.path().join("d/f");
            let named = match unnamed {
                true => IoOp::Publish {
                    file: FileId(1),
                    path: part.clone(),
                    to: dest.clone(),
                    sync,
                },
                false => {
                    let sync_op = IoOp::Sync { file: FileId(1) };
                    let close = IoOp::CloseFile {
                        file: FileId(1),
                        then: AfterClose::Renamed,
                    };
                    let results = run_all(&mut files, &done, vec![(6, sync_op), (7, close)]);
                    assert_eq!(results, [IoResult::Done, IoResult::Done]);
                    IoOp::Rename {
                        from: part.clone(),
                        to: dest.clone(),
                        sync,
                    }
                }
            };
            assert_eq!(run!(8, named), IoResult::Done);
            assert_eq!(fs::read(&dest).unwrap(), b"first");
            assert_eq!(run!(9, open(9, &linked)), IoResult::Opened { len: 0 });
            // Closed with nothing to follow: free again.
            let close = IoOp::CloseFile {
                file: FileId(9),
                then: AfterClose::Done,
            };
            assert_eq!(run!(10, close), IoResult::Done);
            assert_eq!(run!(11, open(11, &dotdot)), IoResult::Opened { len: 0 });
        }
    }

    #[test]
    fn remove_unheld_lets_go_of_this_process_s_own_lock_first() {
        let dir = tempfile::TempDir::new().unwrap();
        let part = dir.path().join("f.haul-part");
        let (mut files, done) = files_to_channel(true);
        let mut run = |id: u64, op: IoOp| {
            files.start(request(id, op));
            files.flush();
            done.recv_timeout(Duration::from_secs(10)).unwrap().1
        };
        let open = IoOp::Open {
            file: FileId(1),
            path: part.clone(),
            truncate: true,
        };
        assert_eq!(run(1, open), IoResult::Opened { len: 0 });
        // Closed for a rename that then failed: the lease is still held.
        let close = IoOp::CloseFile {
            file: FileId(1),
            then: AfterClose::Renamed,
        };
        assert_eq!(run(2, close), IoResult::Done);
        let remove = IoOp::RemoveUnheld { path: part.clone() };
        assert_eq!(run(3, remove), IoResult::Done);
        assert!(!part.exists());
    }

    #[cfg(unix)]
    #[test]
    fn open_read_of_a_fifo_fails_at_once_instead_of_waiting_for_a_writer() {
        let dir = tempfile::TempDir::new().unwrap();
        let fifo = dir.path().join("name.bin");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (mut files, done) = files_to_channel(false);
        files.start(IoRequest {
            id: IoId(1),
            op: IoOp::OpenRead {
                file: FileId(3),
                path: fifo.clone(),
            },
        });
        files.flush();
        let (id, result) = done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(id, IoId(1));
        match result {
            IoResult::Failed(f) => assert!(f.message.contains("not a regular file"), "{f:?}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_file_whose_open_failed_gives_its_worker_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let pool = Threads::default();
        let (tx, done) = mpsc::channel();
        let mut files = Files::new(ToChannel(tx), pool.clone());
        // The engine sends nothing more (not even CloseFile) for a file it could not open.
        files.start(IoRequest {
            id: IoId(1),
            op: IoOp::OpenRead {
                file: FileId(7),
                path: dir.path().join("absent"),
            },
        });
        let (id, result) = done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((id, result), (IoId(1), IoResult::NotFound));
        wait_idle(&pool, 1);
        // The next file forgets the failed one and runs on the same thread.
        let path = dir.path().join("present");
        for (n, op) in [
            IoOp::Open {
                file: FileId(8),
                path: path.clone(),
                truncate: true,
            },
            IoOp::Sync { file: FileId(8) },
            IoOp::CloseFile {
                file: FileId(8),
                then: AfterClose::Done,
            },
        ]
        .into_iter()
        .enumerate()
        {
            files.start(IoRequest {
                id: IoId(10 + n as u64),
                op,
            });
        }
        let results: Vec<(IoId, IoResult)> = (0..3)
            .map(|_| done.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(
            results,
            vec![
                (IoId(10), IoResult::Opened { len: 0 }),
                (IoId(11), IoResult::Done),
                (IoId(12), IoResult::Done)
            ]
        );
        assert_eq!(files.open.len(), 0, "no file is left open");
        wait_idle(&pool, 1);
    }

    /// Threads that start their work only once the test opens the gate.
    #[derive(Clone)]
    struct Gated(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Gated {
        fn open(&self) {
            *lock(&self.0 .0) = true;
            self.0 .1.notify_all();
        }
    }

    impl BlockingSpawner for Gated {
        fn spawn_blocking(&self, name: String, work: BlockingWork) -> std::io::Result<()> {
            let gate = self.0.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let mut open = lock(&gate.0);
                    while !*open {
                        open = gate.1.wait(open).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(open);
                    work()
                })
                .map(drop)
        }
    }

    fn request(id: u64, op: IoOp) -> IoRequest {
        IoRequest { id: IoId(id), op }
    }

    #[test]
    fn a_partial_is_locked_from_its_open_to_its_rename_against_other_executors() {
        let dir = tempfile::TempDir::new().unwrap();
        let (part, dest) = (dir.path().join("f.haul-part"), dir.path().join("f"));
        let (tx, done) = mpsc::channel();
        let mut ours = Files::new(ToChannel(tx.clone()), Threads::default()).inline_small_ops();
        let mut theirs = Files::new(ToChannel(tx), Threads::default()).inline_small_ops();
        let open = |file: u64| IoOp::Open {
            file: FileId(file),
            path: part.clone(),
            truncate: true,
        };
        let run = |files: &mut Files<ToChannel, Threads>, id: u64, op: IoOp| {
            files.start(request(id, op));
            files.flush();
            let (got, result) = done.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, IoId(id));
            result
        };
        let busy = |result: IoResult| match result {
            IoResult::Failed(f) => f.kind == IoErrorKind::Busy,
            _ => false,
        };
        assert_eq!(run(&mut ours, 1, open(1)), IoResult::Opened { len: 0 });
        let data = Bytes::from_static(b"ours!");
        let write = IoOp::WriteAt {
            file: FileId(1),
            offset: 0,
            data,
        };
        assert_eq!(run(&mut ours, 2, write), IoResult::Done);
        // Their open (which would truncate) is refused and changes nothing.
        assert!(busy(run(&mut theirs, 3, open(7))));
        assert_eq!(fs::read(&part).unwrap(), b"ours!");
        // Still refused between our close and our rename (a commit's order).
        let close = IoOp::CloseFile {
            file: FileId(1),
            then: AfterClose::Renamed,
        };
        assert_eq!(run(&mut ours, 4, close), IoResult::Done);
        assert!(busy(run(&mut theirs, 5, open(8))));
        assert_eq!(ours.leases().held(), 1);
        let rename = IoOp::Rename {
            from: part.clone(),
            to: dest.clone(),
            sync: false,
        };
        assert_eq!(run(&mut ours, 6, rename), IoResult::Done);
        assert_eq!(ours.leases().held(), 0, "the committed partial is let go");
        // Now a new partial: theirs to write, our committed file untouched.
        assert_eq!(run(&mut theirs, 7, open(9)), IoResult::Opened { len: 0 });
        assert_eq!(fs::read(&dest).unwrap(), b"ours!");
        assert!(busy(run(&mut ours, 8, open(2))));
        // A partial closed with nothing to follow (kept for a later resume) is free again.
        let close = IoOp::CloseFile {
            file: FileId(9),
            then: AfterClose::Done,
        };
        assert_eq!(run(&mut theirs, 9, close), IoResult::Done);
        assert_eq!(theirs.leases().held(), 0, "a kept partial is let go");
        assert_eq!(run(&mut ours, 10, open(3)), IoResult::Opened { len: 0 });
        // Until it is removed (a failed download's clean-up: close, then remove), theirs is
        // refused, also between the close and the removal.
        assert!(busy(run(&mut theirs, 11, open(10))));
        let close = IoOp::CloseFile {
            file: FileId(3),
            then: AfterClose::Removed,
        };
        assert_eq!(run(&mut ours, 12, close), IoResult::Done);
        assert!(busy(run(&mut theirs, 13, open(11))));
        let remove = IoOp::Remove { path: part.clone() };
        assert_eq!(run(&mut ours, 14, remove), IoResult::Done);
        assert_eq!(ours.leases().held(), 0, "a removed partial is let go");
        assert_eq!(run(&mut theirs, 15, open(12)), IoResult::Opened { len: 0 });
    }

    /// Inline executor whose workers wait for the gate, with file 1 opened (inline) at `f`
    /// in a new directory and a write too large to run inline (request 2) waiting on its
    /// worker: the directory, the path, the gate, the completions, the executor.
    #[allow(clippy::type_complexity)]
    fn gated_with_a_big_write_pending() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Gated,
        mpsc::Receiver<(IoId, IoResult)>,
        Files<ToChannel, Gated>,
    ) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("f");
        let gate = Gated(Arc::default());
        let (tx, done) = mpsc::channel();
        let mut files = Files::new(ToChannel(tx), gate.clone()).inline_small_ops();
        files.start(request(
            1,
            IoOp::Open {
                file: FileId(1),
                path: path.clone(),
                truncate: true,
            },
        ));
        // Inline: completed before `start` returned, although no worker may run yet.
        assert_eq!(
            done.try_recv().unwrap(),
            (IoId(1), IoResult::Opened { len: 0 })
        );
        let big = Bytes::from(vec![b'a'; INLINE_MAX_BYTES + 1]);
        files.start(request(
            2,
            IoOp::WriteAt {
                file: FileId(1),
                offset: 0,
                data: big,
            },
        ));
        (dir, path, gate, done, files)
    }

    #[test]
    fn small_operations_run_inline_unless_their_file_has_work_pending_on_a_worker() {
        let (_dir, path, gate, done, mut files) = gated_with_a_big_write_pending();
        let file = FileId(1);
        // Small, but behind the big write on the (blocked) worker: it must wait its turn.
        let small = Bytes::from_static(b"bb");
        files.start(request(
            3,
            IoOp::WriteAt {
                file,
                offset: 0,
                data: small,
            },
        ));
        assert!(
            done.try_recv().is_err(),
            "nothing ran ahead of the big write"
        );
        gate.open();
        let order: Vec<IoId> = (0..2)
            .map(|_| done.recv_timeout(Duration::from_secs(10)).unwrap().0)
            .collect();
        assert_eq!(order, vec![IoId(2), IoId(3)]);
        files.start(request(
            4,
            IoOp::CloseFile {
                file,
                then: AfterClose::Done,
            },
        ));
        assert_eq!(
            done.recv_timeout(Duration::from_secs(10)).unwrap(),
            (IoId(4), IoResult::Done)
        );
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..3], b"bba");
        assert!(files.open.is_empty());
    }

    fn recv(done: &mpsc::Receiver<(IoId, IoResult)>) -> (IoId, IoResult) {
        done.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn open_creates_missing_directories_and_reports_the_length_it_keeps() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("a/b/f");
        let mut worker = FileWorker::default();
        let open = |truncate| IoOp::Open {
            file: FileId(1),
            path: path.clone(),
            truncate,
        };
        assert_eq!(worker.execute(&open(false)), IoResult::Opened { len: 0 });
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(worker.execute(&open(false)), IoResult::Opened { len: 5 });
        assert_eq!(worker.execute(&open(true)), IoResult::Opened { len: 0 });
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "truncated");
        // A parent that is a file: a clear failure naming the directory.
        let under_file = IoOp::Open {
            file: FileId(2),
            path: path.join("g"),
            truncate: true,
        };
        let IoResult::Failed(f) = worker.execute(&under_file) else {
            panic!("opened under a file")
        };
        assert!(f.message.contains("a/b/f"), "{}", f.message);
    }

    #[test]
    fn a_sync_waits_for_the_next_operation_of_its_file_or_the_flush() {
        let dir = tempfile::TempDir::new().unwrap();
        let (tx, done) = mpsc::channel();
        let mut files = Files::new(ToChannel(tx), Threads::default()).inline_small_ops();
        let file = FileId(1);
        let path = dir.path().join("f");
        files.start(request(
            1,
            IoOp::Open {
                file,
                path,
                truncate: true,
            },
        ));
        files.start(request(2, IoOp::Sync { file }));
        assert_eq!(recv(&done).0, IoId(1));
        // Held: a CloseFile might follow in the same batch of requests.
        std::thread::sleep(Duration::from_millis(50));
        assert!(done.try_recv().is_err(), "the sync was held");
        files.flush();
        assert_eq!(recv(&done), (IoId(2), IoResult::Done));
        // A write after a held sync starts the sync first.
        files.start(request(3, IoOp::Sync { file }));
        let data = Bytes::from_static(b"x");
        files.start(request(
            4,
            IoOp::WriteAt {
                file,
                offset: 0,
                data,
            },
        ));
        let mut got = vec![recv(&done), recv(&done)];
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(
            got,
            vec![(IoId(3), IoResult::Done), (IoId(4), IoResult::Done)]
        );
        files.start(request(
            5,
            IoOp::CloseFile {
                file,
                then: AfterClose::Done,
            },
        ));
        assert_eq!(recv(&done), (IoId(5), IoResult::Done));
        assert!(files.open.is_empty());
    }

    /// Open, write, sync and close `n` files, then rename each durably; each file's
    /// completions in the order they arrived.
    fn commit_files(files: &mut Files<ToChannel, impl BlockingSpawner>, dir: &Path, n: u64) {
        for f in 0..n {
            let file = FileId(f);
            let part = dir.join(format!("{f}.part"));
            let data = Bytes::from(format!("file {f}"));
            let ops = [
                IoOp::Open {
                    file,
                    path: part,
                    truncate: true,
                },
                IoOp::WriteAt {
                    file,
                    offset: 0,
                    data,
                },
                IoOp::Sync { file },
                IoOp::CloseFile {
                    file,
                    then: AfterClose::Renamed,
                },
            ];
            for (k, op) in ops.into_iter().enumerate() {
                files.start(request(f * 10 + k as u64, op));
            }
        }
        files.flush();
    }

    /// Wait for `n` files' four completions each; then rename them durably and wait for that.
    fn finish_commits(
        files: &mut Files<ToChannel, impl BlockingSpawner>,
        done: &mpsc::Receiver<(IoId, IoResult)>,
        dir: &Path,
        n: u64,
    ) {
        let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for _ in 0..4 * n {
            let (id, result) = recv(done);
            assert!(!matches!(result, IoResult::Failed(_)), "{id:?}: {result:?}");
            seen.entry(id.0 / 10).or_default().push(id.0 % 10);
        }
        for (f, order) in &seen {
            assert_eq!(
                order,
                &vec![0, 1, 2, 3],
                "file {f}: open, write, sync, close"
            );
        }
        for f in 0..n {
            files.start(request(
                1000 + f,
                IoOp::Rename {
                    from: dir.join(format!("{f}.part")),
                    to: dir.join(format!("{f}")),
                    sync: true,
                },
            ));
        }
        for _ in 0..n {
            assert_eq!(recv(done).1, IoResult::Done);
        }
        for f in 0..n {
            let got = std::fs::read(dir.join(format!("{f}"))).unwrap();
            assert_eq!(got, format!("file {f}").into_bytes());
            assert!(!dir.join(format!("{f}.part")).exists());
        }
    }

    #[test]
    fn many_commits_at_once_complete_sync_before_close_and_land_renamed() {
        for inline in [true, false] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(inline);
            commit_files(&mut files, dir.path(), 40);
            finish_commits(&mut files, &done, dir.path(), 40);
            assert!(files.open.is_empty());
        }
    }

    #[test]
    fn a_digest_of_an_unnamed_file_covers_its_bytes_whatever_order_they_were_written_in() {
        use sha2::Digest as _;
        let sha = |data: &[u8]| -> [u8; 32] { sha2::Sha256::digest(data).into() };
        let big = vec![5u8; INLINE_MAX_BYTES + 10];
        // (writes, truncate to 0 after the first write?, expected bytes)
        type Case = (Vec<(u64, Vec<u8>)>, bool, Vec<u8>);
        let cases: Vec<Case> = vec![
            (
                vec![(0, b"hello ".to_vec()), (6, b"world".to_vec())],
                false,
                b"hello world".to_vec(),
            ),
            // Out of order: the running digest is dropped, the file read back.
            (
                vec![(6, b"world".to_vec()), (0, b"hello ".to_vec())],
                false,
                b"hello world".to_vec(),
            ),
            // Started over from zero: the digest starts over too.
            (
                vec![(0, b"stale bytes".to_vec()), (0, b"fresh".to_vec())],
                true,
                b"fresh".to_vec(),
            ),
            // A write too large to run inline goes to the file's worker, the digest after it.
            (vec![(0, big.clone())], false, big.clone()),
        ];
        // Inline, with inline writes handed to the digest thread, on workers.
        for (inline, behind) in [(true, false), (true, true), (false, false)] {
            for (n, (writes, restart, want)) in cases.iter().enumerate() {
                let dir = tempfile::TempDir::new().unwrap();
                let (files, done) = files_to_channel(inline);
                let mut files = files.running_digests();
                if behind {
                    files = files.writes_behind();
                }
                let file = FileId(1);
                let mut ops = vec![IoOp::OpenUnnamed {
                    file,
                    path: dir.path().join("f.part"),
                }];
                for (k, (offset, data)) in writes.iter().enumerate() {
                    ops.push(IoOp::WriteAt {
                        file,
                        offset: *offset,
                        data: Bytes::from(data.clone()),
                    });
                    if *restart && k == 0 {
                        ops.push(IoOp::SetLen { file, len: 0 });
                    }
                }
                ops.push(IoOp::Digest {
                    file,
                    len: want.len() as u64,
                    keep: false,
                });
                // What the file holds (a write handed over lands before anything after it).
                ops.push(IoOp::ReadAt {
                    file,
                    offset: 0,
                    len: want.len() as u64 + 16,
                });
                let count = ops.len();
                for (k, op) in ops.into_iter().enumerate() {
                    files.start(request(k as u64, op));
                }
                files.flush();
                let (mut digest, mut data) = (None, None);
                for _ in 0..count {
                    let (id, result) = recv(&done);
                    match result {
                        IoResult::Digest(d) => digest = Some(d),
                        IoResult::Data(d) => data = Some(d),
                        IoResult::Failed(f) => panic!("case {n}: {id:?} failed: {f:?}"),
                        _ => {}
                    }
                }
                let case = format!("case {n}, inline {inline}, behind {behind}");
                assert_eq!(digest, Some(sha(want)), "{case}");
                assert_eq!(data.as_deref(), Some(&want[..]), "{case}");
            }
        }
    }

    #[test]
    fn a_checkpoints_digest_of_a_named_partial_covers_the_bytes_so_far_and_the_final_one_all() {
        use sha2::Digest as _;
        let sha = |data: &[u8]| -> [u8; 32] { sha2::Sha256::digest(data).into() };
        let big = vec![7u8; INLINE_MAX_BYTES + 10];
        for inline in [true, false] {
            for head in [b"first part ".to_vec(), big.clone()] {
                let dir = tempfile::TempDir::new().unwrap();
                let (files, done) = files_to_channel(inline);
                let mut files = files.running_digests();
                let file = FileId(1);
                let tail = b"and the rest".to_vec();
                let all = [head.clone(), tail.clone()].concat();
                let n = head.len() as u64;
                let ops = vec![
                    IoOp::Open {
                        file,
                        path: dir.path().join("f.haul-part"),
                        truncate: true,
                    },
                    IoOp::WriteAt {
                        file,
                        offset: 0,
                        data: Bytes::from(head.clone()),
                    },
                    IoOp::Sync { file },
                    IoOp::Digest {
                        file,
                        len: n,
                        keep: true,
                    },
                    // Written on after the checkpoint's digest.
                    IoOp::WriteAt {
                        file,
                        offset: n,
                        data: Bytes::from(tail.clone()),
                    },
                    IoOp::Digest {
                        file,
                        len: all.len() as u64,
                        keep: false,
                    },
                ];
                let count = ops.len();
                for (k, op) in ops.into_iter().enumerate() {
                    files.start(request(k as u64, op));
                }
                files.flush();
                let mut digests = BTreeMap::new();
                for _ in 0..count {
                    let (id, result) = recv(&done);
                    match result {
                        IoResult::Digest(d) => {
                            digests.insert(id, d);
                        }
                        IoResult::Failed(f) => panic!("{id:?} failed: {f:?}"),
                        _ => {}
                    }
                }
                let case = format!("inline {inline}, {n} bytes first");
                let digests: Vec<[u8; 32]> = digests.into_values().collect();
                assert_eq!(digests, vec![sha(&head), sha(&all)], "{case}");
            }
        }
    }

    #[test]
    fn checkpoint_digests_read_back_only_the_bytes_since_the_last_one_while_they_hold() {
        use sha2::Digest as _;
        let sha = |data: &[u8]| -> [u8; 32] { sha2::Sha256::digest(data).into() };
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("f.haul-part");
        // No digest thread: every digest is read back.
        let mut worker = FileWorker::default();
        let file = FileId(1);
        let open = IoOp::Open {
            file,
            path: path.clone(),
            truncate: true,
        };
        assert_eq!(worker.execute(&open), IoResult::Opened { len: 0 });
        let write = |worker: &mut FileWorker, offset: u64, data: &[u8]| {
            let op = IoOp::WriteAt {
                file,
                offset,
                data: Bytes::copy_from_slice(data),
            };
            assert_eq!(worker.execute(&op), IoResult::Done);
        };
        let digest = |worker: &mut FileWorker, len: u64, keep: bool| {
            worker.execute(&IoOp::Digest { file, len, keep })
        };
        write(&mut worker, 0, b"first part ");
        assert_eq!(
            digest(&mut worker, 11, true),
            IoResult::Digest(sha(b"first part "))
        );
        write(&mut worker, 11, b"then more");
        // Changed on disk behind the worker: a read-back from zero would see it; the one
        // that goes on from the last checkpoint does not read those bytes again.
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        other.write_all_at(b"F", 0).unwrap();
        assert_eq!(
            digest(&mut worker, 20, true),
            IoResult::Digest(sha(b"first part then more"))
        );
        // A write inside the hashed prefix: read back from zero again.
        write(&mut worker, 0, b"f");
        assert_eq!(
            digest(&mut worker, 20, false),
            IoResult::Digest(sha(b"first part then more"))
        );
        other.write_all_at(b"X", 1).unwrap();
        write(&mut worker, 19, b"E");
        assert_eq!(
            digest(&mut worker, 20, true),
            IoResult::Digest(sha(b"fXrst part then morE")),
            "the final digest kept nothing; a write after it is read from zero"
        );
    }

    #[test]
    fn operations_after_writes_handed_to_the_digest_thread_wait_for_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let digests = Digests::start(&Threads::default()).unwrap();
        // Let the thread reach its wait: nothing queued below is taken until a kick.
        std::thread::sleep(Duration::from_millis(50));
        // Another file's bytes ahead in the queue keep the thread busy once it is woken.
        let mut other = digests.running();
        assert!(other.wrote(0, &Bytes::from(vec![9u8; 3 << 20])));
        let mut worker = FileWorker {
            digests: Some(digests.clone()),
            ..FileWorker::default()
        };
        let path = dir.path().join("f.part");
        let opened = worker.execute(&IoOp::OpenUnnamed {
            file: FileId(1),
            path: path.clone(),
        });
        assert_eq!(opened, IoResult::Opened { len: 0 });
        assert!(worker.unnamed, "this file system makes unnamed files");
        let data = Bytes::from_static(b"written behind");
        assert!(worker.write_behind(0, &data), "handed over");
        // Not written yet (nobody kicked); the read waits for it.
        let read = worker.execute(&IoOp::ReadAt {
            file: FileId(1),
            offset: 0,
            len: 64,
        });
        assert_eq!(read, IoResult::Data(data.clone()));
        let published = dir.path().join("f");
        assert_eq!(
            worker.execute(&IoOp::Publish {
                file: FileId(1),
                path,
                to: published.clone(),
                sync: false,
            }),
            IoResult::Done
        );
        assert_eq!(std::fs::read(&published).unwrap(), &data[..]);
        drop(other);
    }

    #[test]
    fn expected_unnamed_opens_take_spares_made_ahead_and_publish_them_with_their_bytes() {
        for inline in [true, false] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(inline);
            let n = 12u64;
            files.expect_unnamed(dir.path(), n as usize);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while files.spares.ready(dir.path()) < n as usize {
                assert!(std::time::Instant::now() < deadline, "spares were not made");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "spares are unnamed"
            );
            publish_unnamed(&mut files, &done, dir.path(), n);
            assert_eq!(files.spares.ready(dir.path()), 0, "every spare was taken");
        }
    }

    /// Opens, writes and publishes `n` unnamed files `0..n` in `dir` (every other one with a
    /// sync), then checks that only the destinations exist, each with its bytes.
    fn publish_unnamed(
        files: &mut Files<ToChannel, impl BlockingSpawner>,
        done: &mpsc::Receiver<(IoId, IoResult)>,
        dir: &Path,
        n: u64,
    ) {
        for f in 0..n {
            let file = FileId(f);
            let part = dir.join(format!("{f}.part"));
            let ops = [
                IoOp::OpenUnnamed {
                    file,
                    path: part.clone(),
                },
                IoOp::WriteAt {
                    file,
                    offset: 0,
                    data: Bytes::from(format!("file {f}")),
                },
                IoOp::Publish {
                    file,
                    path: part,
                    to: dir.join(format!("{f}")),
                    sync: f % 2 == 0,
                },
            ];
            for (k, op) in ops.into_iter().enumerate() {
                files.start(request(f * 10 + k as u64, op));
            }
        }
        files.flush();
        for _ in 0..3 * n {
            let (id, result) = recv(done);
            assert!(!matches!(result, IoResult::Failed(_)), "{id:?}: {result:?}");
        }
        for f in 0..n {
            let got = std::fs::read(dir.join(format!("{f}"))).unwrap();
            assert_eq!(got, format!("file {f}").into_bytes());
        }
        let names = std::fs::read_dir(dir).unwrap().count() as u64;
        assert_eq!(names, n, "only the destinations exist: no partial left");
    }

    #[test]
    fn unnamed_files_are_published_at_their_destination_and_never_appear_at_their_partial() {
        for (inline, n) in [(true, 40u64), (false, 40), (true, 1)] {
            let dir = tempfile::TempDir::new().unwrap();
            let (mut files, done) = files_to_channel(inline);
            // One destination exists already: the publish replaces it.
            std::fs::write(dir.path().join("0"), b"old").unwrap();
            publish_unnamed(&mut files, &done, dir.path(), n);
            assert!(files.open.is_empty());
        }
    }

    #[test]
    fn a_publish_into_a_missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let (tx, done) = mpsc::channel();
        let mut files = Files::new(ToChannel(tx), Threads::default()).inline_small_ops();
        let file = FileId(1);
        let part = dir.path().join("f.part");
        files.start(request(
            1,
            IoOp::OpenUnnamed {
                file,
                path: part.clone(),
            },
        ));
        assert!(matches!(recv(&done).1, IoResult::Opened { len: 0 }));
        let to = dir.path().join("gone").join("f");
        files.start(request(
            2,
            IoOp::Publish {
                file,
                path: part,
                to,
                sync: true,
            },
        ));
        files.flush();
        assert!(matches!(recv(&done).1, IoResult::Failed(_)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(files.open.is_empty());
    }

    #[test]
    fn a_commit_behind_a_pending_write_follows_it() {
        let (_dir, path, gate, done, mut files) = gated_with_a_big_write_pending();
        let file = FileId(1);
        files.start(request(3, IoOp::Sync { file }));
        files.start(request(
            4,
            IoOp::CloseFile {
                file,
                then: AfterClose::Done,
            },
        ));
        files.flush();
        assert!(done.try_recv().is_err(), "nothing ran ahead of the write");
        gate.open();
        let order: Vec<(IoId, IoResult)> = (0..3).map(|_| recv(&done)).collect();
        assert_eq!(
            order,
            vec![
                (IoId(2), IoResult::Done),
                (IoId(3), IoResult::Done),
                (IoId(4), IoResult::Done)
            ]
        );
        assert_eq!(std::fs::read(&path).unwrap().len(), INLINE_MAX_BYTES + 1);
    }

    /// A round of `files` written files, each followed by its rename's entry, and last a
    /// file that was not open.
    fn round_of_files(dir: &Path, files: u64) -> Vec<Pending> {
        let mut round = Vec::new();
        for n in 0..files {
            let path = dir.join(format!("{n}"));
            std::fs::write(&path, b"bytes").unwrap();
            let f = File::options().write(true).open(&path).unwrap();
            round.push(Pending::data(
                IoId(n),
                IoId(100 + n),
                FileId(n),
                Some(Ok((f, path.clone()))),
            ));
            round.push(Pending::Entry {
                id: IoId(200 + n),
                path,
            });
        }
        round.push(Pending::data(IoId(300), IoId(301), FileId(300), None));
        round
    }

    /// Every piece of [`round_of_files`]'s round done but the last, which failed as not open.
    fn all_done_but_the_file_not_open(round: &[Pending], results: &[Result<(), IoFailure>]) {
        assert_eq!(results.len(), round.len());
        assert!(results[..results.len() - 1].iter().all(|r| r.is_ok()));
        let last = results.last().unwrap().as_ref().unwrap_err();
        assert!(last.message.contains("not open"), "{}", last.message);
    }

    #[test]
    fn a_round_of_many_pieces_succeeds_except_a_file_that_was_not_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let round = round_of_files(dir.path(), SYNCFS_MIN as u64);
        all_done_but_the_file_not_open(&round, &make_durable(&round));
    }

    #[test]
    fn a_round_whose_syncs_panic_fails_its_pieces_and_the_worker_goes_on() {
        let dir = tempfile::TempDir::new().unwrap();
        let (done, completions) = mpsc::channel();
        let sink = ToChannel(done);
        let (tx, rx) = mpsc::channel();
        // The first round panics, later ones are made durable as usual.
        fn panics_once(round: &[Pending]) -> Vec<Result<(), IoFailure>> {
            static CALLS: AtomicUsize = AtomicUsize::new(0);
            if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a bug in a round");
            }
            make_durable(round)
        }
        let worker = std::thread::spawn(move || durability_rounds(rx, sink, panics_once));
        let file = |n: u64| {
            let path = dir.path().join(format!("{n}"));
            std::fs::write(&path, b"bytes").unwrap();
            let f = File::options().write(true).open(&path).unwrap();
            Pending::data(IoId(n), IoId(100 + n), FileId(n), Some(Ok((f, path))))
        };
        let mut results = std::collections::BTreeMap::new();
        for n in 0..2 {
            tx.send(file(n)).unwrap();
            // The file's sync and then its close.
            for _ in 0..2 {
                let (id, result) = completions
                    .recv_timeout(Duration::from_secs(10))
                    .expect("every piece of a round completes");
                results.insert(id.0, result);
            }
        }
        match &results[&0] {
            IoResult::Failed(f) => assert!(f.message.contains("a bug in haul"), "{}", f.message),
            other => panic!("the panicked round's sync: {other:?}"),
        }
        assert!(
            matches!(results[&100], IoResult::Done),
            "its file is closed"
        );
        assert!(
            matches!(results[&1], IoResult::Done),
            "the next round syncs"
        );
        assert!(matches!(results[&101], IoResult::Done));
        drop(tx);
        worker
            .join()
            .expect("the worker ends when its queue closes");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_round_syncs_its_files_in_parallel_while_others_have_much_waiting_for_writeback() {
        let dir = tempfile::TempDir::new().unwrap();
        let round = round_of_files(dir.path(), 2 * SYNCFS_MIN as u64);
        assert!(!syncfs_pays(&round, Some(8 << 30)), "8 GiB waiting");
        assert!(syncfs_pays(&round, Some(1 << 20)));
        assert!(syncfs_pays(&round, None));

        // The files' data, on several threads; entries and the file not open are left over.
        let mut results: Vec<Option<Result<(), IoFailure>>> = round.iter().map(|_| None).collect();
        sync_data_in_parallel(&round, &mut results);
        for (pending, result) in round.iter().zip(&results) {
            match pending {
                Pending::Data { file: Ok(_), .. } => assert!(matches!(result, Some(Ok(())))),
                _ => assert!(result.is_none()),
            }
        }
        // The whole round that way: every piece done, the file not open failed alone.
        all_done_but_the_file_not_open(&round, &make_durable_given(&round, || Some(8 << 30)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn syncfs_goes_through_the_earliest_opened_file_of_a_device_and_covers_every_piece() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::TempDir::new().unwrap();
        let mut round = vec![Pending::Entry {
            id: IoId(1),
            path: dir.path().join("renamed"),
        }];
        for (n, id) in [(0u64, 7u64), (1, 3), (2, 5)] {
            let path = dir.path().join(format!("{n}"));
            std::fs::write(&path, format!("file {n}")).unwrap();
            let f = File::open(&path).unwrap();
            round.push(Pending::data(
                IoId(10 + n),
                IoId(20 + n),
                FileId(id),
                Some(Ok((f, path))),
            ));
        }
        let handles = syncfs_handles(&round);
        assert_eq!(handles.len(), 1, "one file system");
        let (handle, pieces) = handles.into_values().next().unwrap();
        assert_eq!(pieces, vec![0, 1, 2, 3]);
        // FileId(3), the earliest opened, is the round's second file (piece 2).
        let ino = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().ino();
        assert_eq!(handle.metadata().unwrap().ino(), ino("1"));
    }

    #[test]
    fn a_copy_and_a_state_file_beside_a_255_byte_name_are_written() {
        let dir = tempfile::TempDir::new().unwrap();
        let from = dir.path().join("from");
        std::fs::write(&from, b"bytes").unwrap();
        let to = dir.path().join("c".repeat(255));
        let copy = IoOp::CopyFile {
            from,
            to: to.clone(),
        };
        assert!(matches!(execute_path_op(&copy), IoResult::Done));
        assert_eq!(std::fs::read(&to).unwrap(), b"bytes");
        // The state file of a download to that name, replaced through its temporary.
        let state = haul_core::Download::new("http://h/x", &to)
            .unwrap()
            .state_path();
        for data in ["{}", "{ }"] {
            let write = IoOp::WriteFileAtomic {
                path: state.clone(),
                data: Bytes::from(data),
            };
            assert!(matches!(execute_path_op(&write), IoResult::Done));
        }
        assert_eq!(std::fs::read(&state).unwrap(), b"{ }");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn copies_to_one_destination_at_once_each_put_a_whole_source_in_place() {
        // Eight copies of different 2 MiB files to one destination, at once, several
        // times: with one shared temporary sibling and no lock, one copy renamed another's
        // half-written bytes into place.
        let dir = tempfile::TempDir::new().unwrap();
        let sources: Vec<(PathBuf, Vec<u8>)> = (0..8u8)
            .map(|i| {
                let path = dir.path().join(format!("src{i}"));
                let data = vec![i; 2 << 20];
                std::fs::write(&path, &data).unwrap();
                (path, data)
            })
            .collect();
        let to = dir.path().join("dest");
        for _ in 0..4 {
            std::thread::scope(|s| {
                for (from, _) in &sources {
                    let to = &to;
                    s.spawn(move || copy_atomic(from, to).expect("copy"));
                }
            });
            let got = std::fs::read(&to).unwrap();
            assert!(
                sources.iter().any(|(_, data)| *data == got),
                "the destination holds one whole source ({} bytes, first byte {:?})",
                got.len(),
                got.first()
            );
        }
        assert!(
            !haul_core::download::working_sibling(&to, ".haul-copy").exists(),
            "no temporary left"
        );
    }

    #[test]
    fn a_durable_rename_of_a_missing_file_fails_naming_the_destination() {
        let dir = tempfile::TempDir::new().unwrap();
        let (tx, done) = mpsc::channel();
        for inline in [true, false] {
            let mut files = Files::new(ToChannel(tx.clone()), Threads::default());
            if inline {
                files = files.inline_small_ops();
            }
            let to = dir.path().join("dest");
            files.start(request(
                1,
                IoOp::Rename {
                    from: dir.path().join("absent"),
                    to: to.clone(),
                    sync: true,
                },
            ));
            let (_, result) = recv(&done);
            let IoResult::Failed(f) = result else {
                panic!("{result:?}")
            };
            assert!(f.message.contains("rename to"), "{}", f.message);
            assert!(!to.exists());
        }
    }

    /// A commit never replaces a directory, or a FIFO (like a device or socket: `/dev/null`
    /// as root would become a regular file): the rename fails saying why, and both stay.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_rename_over_a_directory_or_a_fifo_fails_and_replaces_nothing() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::TempDir::new().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let subdir = dir.path().join("subdir");
        fs::create_dir(&subdir).unwrap();
        let (tx, done) = mpsc::channel();
        let mut n = 0;
        for inline in [true, false] {
            for sync in [true, false] {
                for (to, why) in [(&fifo, "not a regular file"), (&subdir, "is a directory")] {
                    let mut files = Files::new(ToChannel(tx.clone()), Threads::default());
                    if inline {
                        files = files.inline_small_ops();
                    }
                    n += 1;
                    let from = dir.path().join(format!("new-{n}"));
                    fs::write(&from, b"downloaded").unwrap();
                    files.start(request(
                        1,
                        IoOp::Rename {
                            from: from.clone(),
                            to: to.clone(),
                            sync,
                        },
                    ));
                    let (_, result) = recv(&done);
                    let IoResult::Failed(f) = result else {
                        panic!("{result:?}")
                    };
                    assert!(f.message.contains(why), "{}", f.message);
                    assert!(from.is_file());
                }
            }
        }
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert!(subdir.is_dir());
    }

    #[test]
    fn directory_syncs_at_the_same_time_all_succeed_and_leave_nothing_registered() {
        let dir = tempfile::TempDir::new().unwrap();
        std::thread::scope(|scope| {
            for n in 0..16 {
                let path = dir.path().join(format!("f{n}"));
                scope.spawn(move || {
                    std::fs::write(&path, b"x").unwrap();
                    sync_parent(&path).unwrap();
                });
            }
        });
        let registered = lock(&DIR_SYNCS)
            .as_ref()
            .is_some_and(|map| map.contains_key(dir.path()));
        assert!(
            !registered,
            "the directory's group commit was not forgotten"
        );
    }

    #[test]
    fn a_failed_directory_sync_is_reported_to_its_caller() {
        let dir = tempfile::TempDir::new().unwrap();
        let error = sync_parent(&dir.path().join("gone").join("f")).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn dropping_the_pool_ends_its_waiting_threads() {
        thread_local! {
            static ON_EXIT: std::cell::RefCell<Option<Sender<()>>> = const { std::cell::RefCell::new(None) };
        }
        let pool = Threads::default();
        let (exit_tx, exited) = mpsc::channel::<()>();
        pool.spawn_blocking(
            "test".into(),
            // The sender lives until the thread ends (thread-local destructors run at exit).
            Box::new(move || ON_EXIT.with(|slot| *slot.borrow_mut() = Some(exit_tx))),
        )
        .unwrap();
        wait_idle(&pool, 1);
        assert_eq!(
            exited.recv_timeout(Duration::from_millis(50)),
            Err(RecvTimeoutError::Timeout),
            "the thread waits for more work"
        );
        drop(pool);
        assert_eq!(
            exited.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected),
            "the thread ended"
        );
    }
}
