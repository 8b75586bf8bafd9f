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
    Feed { key: u64, data: Bytes },
    Finish { key: u64, done: DigestDone },
    Forget { key: u64 },
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
        let feed = matches!(msg, Msg::Feed { .. });
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
        if let Msg::Feed { data, .. } = &msg {
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

fn digest_thread(shared: &Shared) {
    let mut hashers: BTreeMap<u64, Sha256> = BTreeMap::new();
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

fn digest_step(hashers: &mut BTreeMap<u64, Sha256>, msg: Msg) {
    match msg {
        Msg::Feed { key, data } => hashers.entry(key).or_default().update(&data),
        Msg::Finish { key, done } => {
            let digest: [u8; 32] = hashers.remove(&key).unwrap_or_default().finalize().into();
            done(IoResult::Digest(digest));
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

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.digests.send(Msg::Forget { key: self.key });
    }
}

/// The SHA-256 of the first `len` bytes of `file`, read back.
pub fn read_back_digest(file: &File, len: u64, path: &std::path::Path) -> IoResult {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], offset) {
            Ok(0) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file holds {offset} bytes, {len} were written"),
                );
                return IoResult::Failed(local_failure(&e, "digest", Some(path)));
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return IoResult::Failed(local_failure(&e, "digest", Some(path))),
        }
    }
    IoResult::Digest(hasher.finalize().into())
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
