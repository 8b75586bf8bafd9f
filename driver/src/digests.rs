//! Running digests: the SHA-256 of unnamed files, computed from their writes on a thread of
//! its own, for the engine's [`IoOp::Digest`](haul_core::IoOp::Digest) (see
//! [`haul_core::Config::executor_digests`]).
//!
//! A download of a small file is written in order from offset 0 into an unnamed file. Each
//! write hands its bytes (a shared [`Bytes`], not a copy) to the digest thread, which hashes
//! them while the thread that drives the engine reads the network; the engine's `Digest` at
//! the end is answered by that thread once it has hashed the file's last write. A file whose
//! writes were not in order (or that was truncated to anything but 0) loses its running
//! digest and is read back instead ([`read_back_digest`]): slower, never wrong.
//!
//! Write-behind ([`Running::write_behind`]): the thread that drives the engine may also hand
//! an unnamed file's small writes themselves to the digest thread, which writes each one
//! (`pwrite`) before it hashes it. The write completes for the engine at once; the file's
//! [`Behind`] counts the writes not done yet and keeps the first failure, and every other
//! operation on the file waits for them first ([`Behind::settle`]) and reports that failure.
//! The engine's `Digest` needs no wait: the thread answers it after the file's writes, with
//! the failure instead of a digest if one failed. The driver's thread then spends no time in
//! the kernel's write path for small downloads.
//!
//! Handing work over does not wake the thread: the driver calls [`Digests::kick`] once it
//! has started everything the engine asked for (a waiting thread is woken once per batch of
//! files, not once per write), and a digest finished off the driver's thread kicks at once.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use haul_core::IoResult;
use sha2::{Digest as _, Sha256};

use crate::files::{local_failure, lock, BlockingSpawner};

/// Where a digest goes once computed.
pub type DigestDone = Box<dyn FnOnce(IoResult) + Send>;

enum Msg {
    Feed {
        key: u64,
        data: Bytes,
    },
    /// Write `data` at `offset` of `file`, then hash it like a `Feed`.
    Write {
        key: u64,
        file: Arc<File>,
        offset: u64,
        data: Bytes,
        behind: Arc<Behind>,
    },
    Finish {
        key: u64,
        done: DigestDone,
    },
    /// The digest so far, the hashing going on.
    Snapshot {
        key: u64,
        done: DigestDone,
    },
    Forget {
        key: u64,
    },
}

thread_local! {
    static DRIVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the one that drives the engine: its writes never wait for
/// the digest thread (see [`Digests`]).
pub fn mark_driver_thread() {
    DRIVER_THREAD.with(|d| d.set(true));
}

/// The digest thread's queue, shared by the files of one executor.
#[derive(Clone)]
pub struct Digests {
    shared: Arc<Shared>,
    next_key: Arc<AtomicU64>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Signalled when the thread took the queue while a sender waited for room.
    room: Condvar,
}

/// Bytes handed over and not yet taken by the thread, beyond which a write waits: a large
/// download arriving faster than it is hashed must not pile up in memory. The wait holds
/// the write's completion back, and with it the engine's next reads.
pub const QUEUED_MAX: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Queue {
    msgs: Vec<Msg>,
    /// Bytes of the queued `Feed`s (bounded by [`QUEUED_MAX`]).
    bytes: usize,
    /// A sender waits for the queue to shrink.
    full: bool,
    /// The thread waits for work (a kick must wake it).
    waiting: bool,
    /// No more work is taken; the thread ends once the queue is empty.
    stopped: bool,
}

impl Digests {
    /// Starts the digest thread with `spawner`.
    pub fn start(spawner: &impl BlockingSpawner) -> std::io::Result<Digests> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let thread_shared = shared.clone();
        spawner.spawn_blocking(
            "haul-digests".into(),
            Box::new(move || digest_thread(&thread_shared)),
        )?;
        Ok(Digests {
            shared,
            next_key: Arc::default(),
        })
    }

    /// Wake the thread if work waits for it (see the module docs).
    pub fn kick(&self) {
        let queue = lock(&self.shared.queue);
        if queue.waiting && !queue.msgs.is_empty() {
            drop(queue);
            self.shared.wake.notify_one();
        }
    }

    /// A new, empty running digest.
    pub fn running(&self) -> Running {
        Running {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            len: 0,
            digests: self.clone(),
        }
    }

    /// Queue `msg` for the thread, without waking it unless the queue is full (see
    /// [`QUEUED_MAX`]): then a write waits for room, except on the thread that drives the
    /// engine ([`mark_driver_thread`]), which must not stall every socket behind another
    /// file's hashing: its write is refused, and that file is read back instead.
    fn send(&self, msg: Msg) -> Result<(), Msg> {
        let mut queue = lock(&self.shared.queue);
        let feed = matches!(msg, Msg::Feed { .. } | Msg::Write { .. });
        if feed && queue.bytes >= QUEUED_MAX && DRIVER_THREAD.with(Cell::get) {
            return Err(msg);
        }
        while feed && queue.bytes >= QUEUED_MAX && !queue.stopped {
            queue.full = true;
            if queue.waiting {
                self.shared.wake.notify_one();
            }
            queue = self
                .shared
                .room
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
        if queue.stopped {
            return Err(msg);
        }
        if let Msg::Feed { data, .. } | Msg::Write { data, .. } = &msg {
            queue.bytes += data.len();
        }
        queue.msgs.push(msg);
        Ok(())
    }

    /// Ends the thread once it has answered everything queued.
    pub fn stop(&self) {
        lock(&self.shared.queue).stopped = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
    }
}

/// One running digest on the thread: the hash so far, or the failure of one of its writes.
#[derive(Default)]
struct Hashing {
    hasher: Sha256,
    failed: Option<haul_core::IoFailure>,
}

fn digest_thread(shared: &Shared) {
    let mut hashers: BTreeMap<u64, Hashing> = BTreeMap::new();
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            loop {
                if !queue.msgs.is_empty() {
                    queue.bytes = 0;
                    if std::mem::take(&mut queue.full) {
                        shared.room.notify_all();
                    }
                    break std::mem::take(&mut queue.msgs);
                }
                if queue.stopped {
                    return;
                }
                queue.waiting = true;
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                queue.waiting = false;
            }
        };
        for msg in batch {
            digest_step(&mut hashers, msg);
        }
    }
}

fn digest_step(hashers: &mut BTreeMap<u64, Hashing>, msg: Msg) {
    match msg {
        Msg::Feed { key, data } => hashers.entry(key).or_default().hasher.update(&data),
        Msg::Write {
            key,
            file,
            offset,
            data,
            behind,
        } => {
            let written = file.write_all_at(&data, offset);
            // The file's last reference from here goes before the count says done: once
            // settled, the file's owner holds the only one.
            drop(file);
            let hashing = hashers.entry(key).or_default();
            match written {
                Ok(()) => hashing.hasher.update(&data),
                Err(e) => {
                    let failure = local_failure(&e, "write", Some(&behind.path));
                    hashing.failed.get_or_insert(failure.clone());
                    behind.done(Some(failure));
                    return;
                }
            }
            behind.done(None);
        }
        Msg::Finish { key, done } => {
            let hashing = hashers.remove(&key).unwrap_or_default();
            done(match hashing.failed {
                Some(failure) => IoResult::Failed(failure),
                None => IoResult::Digest(hashing.hasher.finalize().into()),
            });
        }
        Msg::Snapshot { key, done } => {
            let hashing = hashers.entry(key).or_default();
            done(match &hashing.failed {
                Some(failure) => IoResult::Failed(failure.clone()),
                None => IoResult::Digest(hashing.hasher.clone().finalize().into()),
            });
        }
        Msg::Forget { key } => {
            hashers.remove(&key);
        }
    }
}

/// The running digest of one file: the bytes `[0, len)` have been handed to the thread.
pub struct Running {
    key: u64,
    len: u64,
    digests: Digests,
}

impl Running {
    /// Bytes covered so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is covered yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `data` was written at `offset`: extends the digest if it follows what it covers;
    /// `false` if it does not (the digest is then of no use and should be dropped).
    pub fn wrote(&mut self, offset: u64, data: &Bytes) -> bool {
        if offset != self.len {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let key = self.key;
        match self.digests.send(Msg::Feed {
            key,
            data: data.clone(),
        }) {
            Ok(()) => {
                self.len += data.len() as u64;
                true
            }
            Err(_) => false,
        }
    }

    /// Hands `data`, to be written at `offset` of `file`, to the thread, which writes it and
    /// then extends the digest (see the module docs); `behind` counts it until it is written.
    /// `false` if it cannot (not in order, the queue is full on the driver's thread, or the
    /// thread is gone): the caller writes it itself and drops the digest.
    pub fn write_behind(
        &mut self,
        file: &Arc<File>,
        offset: u64,
        data: &Bytes,
        behind: &Arc<Behind>,
    ) -> bool {
        if offset != self.len {
            return false;
        }
        // Counted before it is sent: the thread may write it at once.
        behind.add();
        let msg = Msg::Write {
            key: self.key,
            file: file.clone(),
            offset,
            data: data.clone(),
            behind: behind.clone(),
        };
        match self.digests.send(msg) {
            Ok(()) => {
                self.len += data.len() as u64;
                true
            }
            Err(_) => {
                behind.done(None);
                false
            }
        }
    }

    /// Hands the digest to the thread, which calls `done` with it after hashing every byte
    /// handed to it before; gives `done` back if the thread is gone. The thread is not woken:
    /// the caller kicks ([`Digests::kick`]) before it waits for `done`.
    pub fn finish(self, done: DigestDone) -> Result<(), DigestDone> {
        let key = self.key;
        let digests = self.digests.clone();
        // Finishing forgets the key: no `Forget` from the drop.
        std::mem::forget(self);
        match digests.send(Msg::Finish { key, done }) {
            Ok(()) => Ok(()),
            Err(Msg::Finish { done, .. }) => Err(done),
            Err(_) => unreachable!("send gives its message back"),
        }
    }
}

impl Running {
    /// Hands a look at the digest to the thread, which calls `done` with the digest of
    /// every byte handed to it before, and goes on hashing what comes after; gives `done`
    /// back if the thread is gone. Not woken, as for [`Running::finish`].
    pub fn snapshot(&self, done: DigestDone) -> Result<(), DigestDone> {
        match self.digests.send(Msg::Snapshot {
            key: self.key,
            done,
        }) {
            Ok(()) => Ok(()),
            Err(Msg::Snapshot { done, .. }) => Err(done),
            Err(_) => unreachable!("send gives its message back"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.digests.send(Msg::Forget { key: self.key });
    }
}

/// The writes of one file handed to the digest thread ([`Running::write_behind`]) and not
/// done yet, and the first that failed.
pub struct Behind {
    state: Mutex<BehindState>,
    settled: Condvar,
    /// The file's path, for the failure's message.
    path: std::path::PathBuf,
}

#[derive(Default)]
struct BehindState {
    pending: usize,
    failed: Option<haul_core::IoFailure>,
}

impl Behind {
    /// No writes pending yet for the file at `path`.
    pub fn new(path: std::path::PathBuf) -> Behind {
        Behind {
            state: Mutex::default(),
            settled: Condvar::new(),
            path,
        }
    }

    fn add(&self) {
        lock(&self.state).pending += 1;
    }

    fn done(&self, failed: Option<haul_core::IoFailure>) {
        let mut state = lock(&self.state);
        state.pending -= 1;
        if state.failed.is_none() {
            state.failed = failed;
        }
        if state.pending == 0 {
            self.settled.notify_all();
        }
    }

    /// Waits until every write handed over is done (kicking `digests`, whose thread may be
    /// waiting for work); the first failure among them, if any (it stays: the file's bytes
    /// are not what the engine wrote).
    pub fn settle(&self, digests: Option<&Digests>) -> Result<(), haul_core::IoFailure> {
        let mut state = lock(&self.state);
        if state.pending > 0 {
            if let Some(digests) = digests {
                drop(state);
                digests.kick();
                state = lock(&self.state);
            }
            while state.pending > 0 {
                state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
        match &state.failed {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}

/// The SHA-256 of the first `len` bytes of `file`, read back.
pub fn read_back_digest(file: &File, len: u64, path: &std::path::Path) -> IoResult {
    let mut hasher = Sha256::new();
    match read_back_into(file, &mut hasher, 0, len, path) {
        Ok(()) => IoResult::Digest(hasher.finalize().into()),
        Err(failure) => IoResult::Failed(failure),
    }
}

/// Feeds bytes `[from, len)` of `file`, read back, to `hasher`.
pub fn read_back_into(
    file: &File,
    hasher: &mut Sha256,
    from: u64,
    len: u64,
    path: &std::path::Path,
) -> Result<(), haul_core::IoFailure> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = from;
    while offset < len {
        let want = (len - offset).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], offset) {
            Ok(0) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file holds {offset} bytes, {len} were written"),
                );
                return Err(local_failure(&e, "digest", Some(path)));
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(local_failure(&e, "digest", Some(path))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Threads;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn finish(running: Running) -> IoResult {
        let (tx, rx) = std::sync::mpsc::channel();
        let digests = running.digests.clone();
        running
            .finish(Box::new(move |r| tx.send(r).unwrap()))
            .map_err(|_| "thread gone")
            .unwrap();
        digests.kick();
        rx.recv().unwrap()
    }

    #[test]
    fn writes_in_order_give_the_digest_of_their_bytes_for_each_file_apart() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let (mut a, mut b) = (digests.running(), digests.running());
        assert!(a.wrote(0, &Bytes::from_static(b"hello ")));
        assert!(b.wrote(0, &Bytes::from_static(b"other")));
        assert!(a.wrote(6, &Bytes::from_static(b"world")));
        assert_eq!(a.len(), 11);
        assert_eq!(finish(a), IoResult::Digest(sha(b"hello world")));
        assert_eq!(finish(b), IoResult::Digest(sha(b"other")));
        assert_eq!(finish(digests.running()), IoResult::Digest(sha(b"")));
    }

    #[test]
    fn a_write_out_of_order_is_refused_and_a_stopped_thread_gives_the_answer_back() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let mut a = digests.running();
        assert!(a.wrote(0, &Bytes::from_static(b"abc")));
        assert!(!a.wrote(10, &Bytes::from_static(b"x")), "a gap");
        assert!(!a.wrote(1, &Bytes::from_static(b"x")), "an overwrite");
        assert_eq!(a.len(), 3);
        digests.stop();
        assert!(!a.wrote(3, &Bytes::from_static(b"d")), "no thread");
        assert!(a.finish(Box::new(|_| ())).is_err());
    }

    #[test]
    fn writes_beyond_the_queue_bound_wake_the_thread_and_wait_for_room_instead_of_piling_up() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let chunk = Bytes::from(vec![3u8; QUEUED_MAX / 2]);
        let (tx, rx) = std::sync::mpsc::channel();
        let feeder = {
            let (digests, chunk) = (digests.clone(), chunk.clone());
            std::thread::spawn(move || {
                let mut running = digests.running();
                // Nobody kicks: the third write finds the queue full and must wake the
                // thread itself.
                for i in 0..4u64 {
                    assert!(running.wrote(i * chunk.len() as u64, &chunk));
                    assert!(lock(&digests.shared.queue).bytes <= QUEUED_MAX);
                }
                tx.send(running).unwrap();
            })
        };
        let running = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the writes went through without a kick");
        feeder.join().unwrap();
        let all = vec![3u8; 4 * chunk.len()];
        assert_eq!(finish(running), IoResult::Digest(sha(&all)));
    }

    #[test]
    fn on_the_driver_thread_a_write_to_a_full_queue_is_refused_instead_of_waiting() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let big = Bytes::from(vec![1u8; QUEUED_MAX]);
        let driver = std::thread::spawn(move || {
            mark_driver_thread();
            let mut filler = digests.running();
            // Nobody kicks: the queue stays full.
            assert!(filler.wrote(0, &big));
            let mut small = digests.running();
            let refused = !small.wrote(0, &Bytes::from_static(b"x"));
            (refused, small.len())
        });
        let (refused, len) = driver.join().unwrap();
        assert!(refused, "the driver's write is refused, not queued");
        assert_eq!(len, 0, "nothing counted: the file will be read back");
    }

    #[test]
    fn writes_handed_over_are_written_then_hashed_and_settle_once_done() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let behind = Arc::new(Behind::new(path.clone()));
        let mut running = digests.running();
        assert!(running.write_behind(&file, 0, &Bytes::from_static(b"hello "), &behind));
        assert!(running.write_behind(&file, 6, &Bytes::from_static(b"world"), &behind));
        assert!(
            !running.write_behind(&file, 20, &Bytes::from_static(b"gap"), &behind),
            "out of order: the caller writes it"
        );
        // Nobody else kicks: settling wakes the thread itself.
        behind.settle(Some(&digests)).expect("written");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(Arc::strong_count(&file), 1, "the thread let go of the file");
        assert_eq!(finish(running), IoResult::Digest(sha(b"hello world")));
    }

    #[test]
    fn a_write_handed_over_that_fails_fails_the_digest_and_every_settle_naming_the_file() {
        let digests = Digests::start(&Threads::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: the write fails (EBADF).
        let file = Arc::new(File::open(&path).unwrap());
        let behind = Arc::new(Behind::new(path.clone()));
        let mut running = digests.running();
        assert!(running.write_behind(&file, 0, &Bytes::from_static(b"abc"), &behind));
        let failure = behind.settle(Some(&digests)).expect_err("the write failed");
        assert!(
            failure.message.contains("read-only"),
            "names the file: {}",
            failure.message
        );
        assert!(behind.settle(None).is_err(), "the failure stays");
        match finish(running) {
            IoResult::Failed(f) => assert_eq!(f, failure),
            other => panic!("a digest of bytes that were not written: {other:?}"),
        }
    }

    #[test]
    fn read_back_hashes_the_prefix_and_fails_on_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 600_000]).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(
            read_back_digest(&file, 500_000, &path),
            IoResult::Digest(sha(&vec![7u8; 500_000]))
        );
        assert!(matches!(
            read_back_digest(&file, 700_000, &path),
            IoResult::Failed(_)
        ));
    }
}
