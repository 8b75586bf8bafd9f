//! The content-addressed module store: `files/<sha256>` shared by all apps, plus
//! `index.sqlite` with file states, per-app manifests and pins.
//!
//! Owns the directory layout, crash recovery, the write protocols (DIRTY row -> temp file ->
//! verify -> fsync -> rename -> fsync dir -> READY row; or, for a writer that verifies as it
//! writes, DIRTY row -> file renamed into place by the writer -> fsync -> fsync dir -> READY
//! row, see [`Store::adopt_many`]), hash re-checks on read, pins and LRU pruning. It does
//! not download anything, verify signatures or know about manifests' content;
//! [`crate::loader`] drives it.
//!
//! Rules:
//! - A READY row means the file at `files/<sha256>` was verified and synced before the row was
//!   written. At start, [`Store::open`] commits the file of a DIRTY row whose bytes are
//!   complete (they hash to its name: a writer killed after its download, before its commit),
//!   verified and synced as any commit is; anything else found (other DIRTY rows, files
//!   without a READY row, temp files `*.haul-part`, READY rows without a file or with the
//!   wrong size) is removed. A directory in a file's place is left alone.
//! - One [`Store`] handle per directory at a time: recovery at open removes other writers'
//!   in-progress files, so [`Store::open`] waits for an exclusive `flock` on the directory,
//!   held by the handle (a second open, in this process or another, waits for the first
//!   handle to be dropped). The handle is `Send` but not `Sync`; share it behind a `Mutex`
//!   (as [`crate::Loader`] does).
//! - The store never reads the clock: every timestamp is a parameter.
//! - A [`PendingFile`] dropped without [`Store::commit`] or [`Store::abort`] leaves a DIRTY row
//!   and maybe a temp file; the next [`Store::open`] removes them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::manifest::is_sha256_hex;

const FILES_DIR: &str = "files";
const INDEX_FILE: &str = "index.sqlite";
const TEMP_SUFFIX: &str = ".haul-part";
/// 2: `manifests.rollback_floor_ms` (version 1 stores gain the column when opened).
const SCHEMA_VERSION: i64 = 2;

/// What failed in the store, and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store index failed to {op}: {source}")]
    Index {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{value:?} is not a sha256 (64 hex digits)")]
    InvalidHash { value: String },
    #[error("{sha256} is already stored")]
    AlreadyReady { sha256: String },
    #[error("{sha256} is not in the store")]
    NotFound { sha256: String },
    #[error("{path} has sha256 {actual}, expected {expected}; discarded")]
    HashMismatch {
        expected: String,
        actual: String,
        path: PathBuf,
    },
    #[error("stored file {path} is corrupt (sha256 {actual}, expected {sha256}); removed from the store")]
    Corrupt {
        sha256: String,
        actual: String,
        path: PathBuf,
    },
    #[error("stored file {path} for {sha256} is missing; forgotten")]
    FileMissing { sha256: String, path: PathBuf },
    #[error("cannot pin {sha256} for app {app:?}: it is not a stored (READY) file")]
    NotReady { sha256: String, app: String },
    #[error("the module cache {path} is not writable by this user; only `haul cache ls` and `haul cache pins` work on it")]
    NotWritable { path: PathBuf },
    #[error("{path} holds no module cache index (an empty file, or not a haul cache)")]
    NoSchema { path: PathBuf },
    #[error("{path} is not a module cache: it has no index.sqlite, and its files/ holds {name:?}, which haul did not write; give --cache a new or empty directory")]
    NotAStore { path: PathBuf, name: String },
    #[error("the module cache {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("stored file {path} cannot be read ({read}) nor removed ({source}); fix its permissions or delete it")]
    Unreadable {
        path: PathBuf,
        read: io::Error,
        #[source]
        source: io::Error,
    },
}

fn index_error(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Index { op, source }
}

/// The index could not write for want of space ("database or disk is full").
fn disk_full(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// A read that failed for want of the process's or the system's resources (open files,
/// memory) or was interrupted: it says nothing of the file, which must not be removed for it.
fn short_of_resources(error: &io::Error) -> bool {
    // EMFILE and ENFILE (the same numbers on Linux and the BSDs); no stable ErrorKind yet.
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(
        error.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || (cfg!(unix) && matches!(error.raw_os_error(), Some(EMFILE | ENFILE)))
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A file's state in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Being written; not to be trusted.
    Dirty,
    /// Verified and durable.
    Ready,
}

impl FileState {
    fn as_sql(self) -> &'static str {
        match self {
            FileState::Dirty => "DIRTY",
            FileState::Ready => "READY",
        }
    }

    fn from_sql(text: &str) -> Option<FileState> {
        match text {
            "DIRTY" => Some(FileState::Dirty),
            "READY" => Some(FileState::Ready),
            _ => None,
        }
    }
}

/// What a stored file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Module,
    Manifest,
}

impl FileKind {
    fn as_sql(self) -> &'static str {
        match self {
            FileKind::Module => "MODULE",
            FileKind::Manifest => "MANIFEST",
        }
    }

    fn from_sql(text: &str) -> Option<FileKind> {
        match text {
            "MODULE" => Some(FileKind::Module),
            "MANIFEST" => Some(FileKind::Manifest),
            _ => None,
        }
    }
}

/// One row of the files table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub sha256: String,
    pub state: FileState,
    pub size: u64,
    pub last_used_ms: u64,
    pub kind: FileKind,
}

/// One pin: `app` needs `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pin {
    pub app: String,
    pub sha256: String,
}

/// The manifest an app last loaded successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedManifest {
    pub app: String,
    pub sha256: String,
    pub bytes: Vec<u8>,
    /// When the manifest was last known to be current (the loader's freshness clock).
    pub fresh_at_ms: Option<u64>,
    pub manifest_url: String,
    pub loaded_at_ms: u64,
}

/// One row of the manifests table: the manifest an app last loaded successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub app: String,
    pub manifest_sha256: String,
    /// The freshness instant: when the manifest was fetched from the network (or, from the
    /// embedded directory, its `freshAtEpochMs`).
    pub fresh_at_ms: Option<u64>,
    pub manifest_url: String,
    pub loaded_at_ms: u64,
    /// The rollback floor: an offered manifest with an older `freshAtEpochMs` is refused.
    pub rollback_floor_ms: Option<u64>,
}

/// A write in progress: fill `temp_path`, then [`Store::commit`] or [`Store::abort`]; or have
/// a writer that verifies and commits by itself put the file at `store_path`, then
/// [`Store::adopt_many`].
#[derive(Debug)]
pub struct PendingFile {
    sha256: String,
    temp_path: PathBuf,
    store_path: PathBuf,
    /// The size its writer says it wrote at `store_path` (see [`PendingFile::written`]).
    written: Option<u64>,
}

impl PendingFile {
    /// Where the caller writes the bytes (a sibling of the final file).
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// The file's final place, `files/<sha256>`.
    pub fn store_path(&self) -> &Path {
        &self.store_path
    }

    /// The lowercase hash the bytes must have.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Says that the writer put `size` bytes at [`PendingFile::store_path`]. A large batch of
    /// such files is then recorded with that size without asking the file system for each one
    /// first: [`Store::adopt_many`] checks the files beside its sync instead, off the caller's
    /// path, and one that is missing or of another size is reported as before.
    pub fn written(mut self, size: u64) -> PendingFile {
        self.written = Some(size);
        self
    }
}

impl StoreError {
    /// Whether the index file is damaged or not a database at all (SQLite says so): the
    /// store cannot be read until the index is removed (a new one is made at the next open,
    /// and the files it held are then fetched again).
    pub fn index_damaged(&self) -> bool {
        matches!(
            self,
            StoreError::Index {
                source: rusqlite::Error::SqliteFailure(failure, _),
                ..
            } if matches!(
                failure.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            )
        )
    }
}

/// What [`Store::open`] cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Interrupted writes whose file was there but incomplete or wrong: removed (a DIRTY
    /// row without any file is forgotten without a word).
    pub dirty_removed: Vec<String>,
    /// Interrupted writes whose file was complete (its bytes hash to its name): committed.
    pub dirty_kept: Vec<String>,
    /// Files in `files/` with no READY row, removed.
    pub orphan_files_removed: Vec<String>,
    /// Temp files (`*.haul-part`) removed.
    pub temp_files_removed: Vec<String>,
    /// READY rows whose file was missing, forgotten.
    pub missing_files_forgotten: Vec<String>,
    /// READY rows whose file had another size than recorded, removed with the file.
    pub wrong_size_removed: Vec<String>,
    /// Unpinned files (least recently used first) removed with their rows to make room on
    /// a full disk, where the index could not even forget the interrupted writes' rows.
    pub evicted_for_room: Vec<String>,
}

impl RecoveryReport {
    pub fn is_clean(&self) -> bool {
        *self == RecoveryReport::default()
    }
}

/// What [`Store::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Evicted hashes, least recently used first.
    pub evicted: Vec<String>,
    pub freed_bytes: u64,
    /// Bytes of READY files after pruning.
    pub remaining_bytes: u64,
    /// Bytes of pinned files (never evicted).
    pub pinned_bytes: u64,
    /// Whether the store now fits the budget (false when pinned files alone exceed it).
    pub fits_budget: bool,
}

/// What [`Store::verify_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// READY files checked.
    pub checked: usize,
    /// Files whose content no longer matched their hash; removed.
    pub corrupt_removed: Vec<String>,
    /// READY rows whose file was missing; forgotten.
    pub missing_forgotten: Vec<String>,
    /// Files that could not be read (permissions, I/O errors); removed like corrupt ones.
    pub unreadable_removed: Vec<String>,
    /// Files that could not be read nor removed: each one's hash and why; left in place.
    pub unremovable: Vec<(String, String)>,
    /// Set when the check stopped early because the process ran short of resources (file
    /// descriptors, memory): how many READY files were left unchecked, and the error. The
    /// files are not at fault and stay; what was found before the stop is in the report.
    pub stopped: Option<(usize, String)>,
}

impl VerifyReport {
    /// Files found bad and dealt with (removed or forgotten).
    pub fn damaged(&self) -> usize {
        self.corrupt_removed.len() + self.missing_forgotten.len() + self.unreadable_removed.len()
    }
}

/// The store handle. See the module docs for the rules.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    files_dir: PathBuf,
    index: Connection,
    next_temp_id: u64,
    /// This process's id, part of temp names (asked once, not per file).
    process_id: u32,
    /// How many bytes wait for writeback system-wide, for [`Store::syncfs_pays`].
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pending_writeback: fn() -> Option<u64>,
    /// The store directory, open with an exclusive `flock` for as long as this handle
    /// lives (see [`lock_store`]).
    _lock: Option<File>,
}

/// Waits for, then takes, an exclusive `flock` on the store directory (no lock file): one
/// process at a time uses a store. Opening runs recovery, which takes another process's
/// in-flight writes (DIRTY rows, temp files) for a crash's leftovers; a second `haul load`,
/// or even a `haul cache ls`, on a cache in use used to delete a running load's files.
/// Released when the [`Store`] is dropped, or by the kernel when the process ends.
#[cfg(target_os = "linux")]
fn lock_store(dir: &Path) -> Result<Option<File>, StoreError> {
    use rustix::fs::{flock, FlockOperation};
    let handle = File::open(dir).map_err(io_error("open", dir))?;
    match flock(&handle, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => return Ok(Some(handle)),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            tracing::warn!(dir = %dir.display(), "another process is using the store; waiting for it");
        }
        Err(error) => return Err(io_error("lock", dir)(error.into())),
    }
    flock(&handle, FlockOperation::LockExclusive)
        .map_err(|error| io_error("lock", dir)(error.into()))?;
    Ok(Some(handle))
}

#[cfg(not(target_os = "linux"))]
fn lock_store(_dir: &Path) -> Result<Option<File>, StoreError> {
    Ok(None)
}

/// Bytes dirty or under writeback system-wide (`/proc/meminfo`); `None` where unknown.
fn system_pending_writeback() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| haul_core::writeback::pending_writeback(&text))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

fn to_sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_sql_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn check_hash(sha256: &str) -> Result<String, StoreError> {
    if is_sha256_hex(sha256) {
        Ok(sha256.to_ascii_lowercase())
    } else {
        Err(StoreError::InvalidHash {
            value: sha256.to_owned(),
        })
    }
}

/// SHA-256 (lowercase hex) and length of a file, read in chunks.
fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    hash_reader(&mut file)
}

fn hash_reader(reader: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut length = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        length += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), length))
}

/// Runs a statement through the connection's statement cache: the loops over many files run
/// the same few statements hundreds of times, and parsing them again each time dominated.
fn cached_execute(
    index: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    index.prepare_cached(sql)?.execute(params)
}

/// [`cached_execute`] for a statement that returns one row.
fn cached_row<T>(
    index: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    index.prepare_cached(sql)?.query_row(params, row)
}

fn remove_file_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// How many written files are re-hashed and fsynced at once: fsyncs issued together share
/// the file system's journal commits, and hashing uses more than one core.
const CHECK_THREADS: usize = 8;

/// Re-hashes a written temp file against its expected hash and fsyncs it; its size if good.
fn check_written(pending: &PendingFile) -> Result<u64, StoreError> {
    let temp_path = &pending.temp_path;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(temp_path)
        .map_err(io_error("read written file", temp_path))?;
    let (actual, size) =
        hash_reader(&mut file).map_err(io_error("read written file", temp_path))?;
    if actual != pending.sha256 {
        return Err(StoreError::HashMismatch {
            expected: pending.sha256.clone(),
            actual,
            path: temp_path.clone(),
        });
    }
    file.sync_all().map_err(io_error("fsync", temp_path))?;
    Ok(size)
}

/// The size of a file written in place. A missing file (or anything but a regular file) is
/// [`StoreError::FileMissing`].
fn placed_size(path: &Path) -> Result<u64, StoreError> {
    let missing = || StoreError::FileMissing {
        sha256: path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
    };
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(metadata.len()),
        Ok(_) => Err(missing()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(missing()),
        Err(error) => Err(io_error("inspect written file", path)(error)),
    }
}

/// [`placed_size`], after syncing the file's data.
fn sync_placed(path: &Path) -> Result<u64, StoreError> {
    let size = placed_size(path)?;
    File::open(path)
        .and_then(|file| file.sync_data())
        .map_err(io_error("fsync", path))?;
    Ok(size)
}

/// From how many files a batch is made durable with one `syncfs` of the store's file system
/// instead of an fdatasync per file. One syncfs writes every dirty page of the file system
/// with one device cache flush: 500 files of 32 KiB take ~15 ms that way against ~45 ms of
/// fdatasyncs on 8 threads (and ~90 ms on one). The price: it also waits for other writers'
/// dirty data on the same file system. The install crate makes trees durable the same way.
#[cfg(target_os = "linux")]
const SYNCFS_MIN_FILES: usize = 8;

/// Writeback while a batch is still being written: a thread that syncs the store's file
/// system round after round (see [`Store::sync_ahead`]), stopped by [`SyncAhead::finish`] or
/// when dropped.
///
/// The final sync of a batch ([`Store::adopt_many`], [`Store::commit_many`]) still makes every
/// file durable before its READY row; these rounds only move that work earlier, into the time
/// the network takes. A syncfs of 500 new 32 KiB files takes ~30 ms at the end of a load on
/// its own, and ~1 ms when rounds ran during the downloads.
pub struct SyncAhead {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The pause between two [`SyncAhead`] rounds: the downloads' writes gather in it, and the
/// syncing thread leaves the CPU to them.
#[cfg(target_os = "linux")]
const SYNC_AHEAD_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl SyncAhead {
    /// How many rounds have completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops the rounds without waiting for the one running, if any: it ends on its own (a
    /// syncfs in flight covers only what was written before it began, so the batch's own
    /// sync starts at once rather than after it). How many rounds had completed.
    pub fn finish(mut self) -> u64 {
        self.signal_stop();
        // Dropping the handle detaches the thread; `Drop` finds nothing left to join.
        drop(self.thread.take());
        self.rounds()
    }

    fn signal_stop(&self) {
        let (stopped, wake) = &*self.stop;
        *stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_all();
    }
}

impl Drop for SyncAhead {
    /// Dropped without [`SyncAhead::finish`] (a load that failed early): stops the rounds and
    /// waits for the thread.
    fn drop(&mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread only ends the rounds early.
            let _ = thread.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn sync_ahead_rounds(
    dir: File,
    stop: &(std::sync::Mutex<bool>, std::sync::Condvar),
    rounds: &std::sync::atomic::AtomicU64,
) {
    let (stopped, wake) = stop;
    loop {
        if let Err(error) = rustix::fs::syncfs(&dir) {
            // Only an early start is lost: the batch's own sync reports real failures.
            tracing::debug!(%error, "syncfs ahead of a batch failed; no more rounds");
            return;
        }
        rounds.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let guard = stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = wake
            .wait_timeout_while(guard, SYNC_AHEAD_PAUSE, |stopped| !*stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *guard {
            return;
        }
    }
}

/// The result of a helper thread of [`Store::adopt_many_overlapped`]; a thread that could
/// not start or panicked is an error of `op` on `dir`.
#[cfg(target_os = "linux")]
fn joined(
    thread: io::Result<std::thread::ScopedJoinHandle<'_, Result<(), StoreError>>>,
    op: &'static str,
    dir: &Path,
) -> Result<(), StoreError> {
    match thread {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|_| Err(io_error(op, dir)(io::Error::other("its thread panicked")))),
        Err(error) => Err(io_error(op, dir)(error)),
    }
}

/// Makes the data of files written in place durable, each file on its own (on up to
/// `CHECK_THREADS` threads); their sizes, in order. Large batches on Linux take
/// [`Store::adopt_many_overlapped`]'s one syncfs instead.
fn sync_all_in_place(pending: &[PendingFile]) -> Vec<Result<u64, StoreError>> {
    in_parallel(pending, |file| sync_placed(&file.store_path))
}

/// [`check_written`] for every file, on up to `CHECK_THREADS` threads; results in order.
fn check_written_files(pending: &[PendingFile]) -> Vec<Result<u64, StoreError>> {
    in_parallel(pending, check_written)
}

/// `work` for every file, on up to `CHECK_THREADS` threads: syncs issued together share the
/// disk's queue, and hashing uses more than one core. Results in order.
fn in_parallel<T: Sync, R: Send>(pending: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = pending.len().min(CHECK_THREADS);
    if threads <= 1 {
        return pending.iter().map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = pending.get(index) else {
                            break done;
                        };
                        done.push((index, work(file)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a check thread panicked"))
            .collect()
    });
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("fsync directory", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    // Directory handles cannot be fsynced portably off Unix; renames there are durable once
    // the file system journals them.
    Ok(())
}

/// [`StoreError::NotAStore`] if `files_dir` holds a name haul never writes there (see
/// [`written_by_haul`]).
fn refuse_foreign_files(dir: &Path, files_dir: &Path) -> Result<(), StoreError> {
    let entries = match fs::read_dir(files_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("list", files_dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list", files_dir))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(written_by_haul) {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
                name: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// An existing `index.sqlite` without haul's schema (`user_version` 0, which haul sets in
/// the transaction that creates its tables) is either another program's database
/// ([`StoreError::NoSchema`]: haul's tables are not added to it) or an empty file (a new
/// store, whose `files/` must then pass [`refuse_foreign_files`]). Nothing is written.
fn refuse_unless_store_index(
    index: &Connection,
    dir: &Path,
    index_path: &Path,
    files_dir: &Path,
) -> Result<(), StoreError> {
    let version: i64 = index
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(index_error("read schema version"))?;
    if version != 0 {
        return Ok(());
    }
    let tables: i64 = index
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(index_error("read schema"))?;
    if tables > 0 {
        return Err(StoreError::NoSchema {
            path: index_path.to_path_buf(),
        });
    }
    refuse_foreign_files(dir, files_dir)
}

/// Whether `name` is one haul writes into `files/`: a stored file (`<sha256>`, 64 lowercase
/// hex digits), a pending write (`<sha256>.<pid>-<n>.haul-part`), or the working files the
/// download engine keeps beside either while it fetches (`.haul-part`, `.haul-state`,
/// `.haul-state.tmp`, `.haul-copy` appended).
fn written_by_haul(name: &str) -> bool {
    let Some((sha256, mut rest)) = name.split_at_checked(64) else {
        return false;
    };
    if !sha256
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return false;
    }
    // A pending write's `.<pid>-<n>`.
    if let Some(id) = rest
        .strip_prefix('.')
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let pid = digits(id);
        let Some(n) = id[pid..].strip_prefix('-') else {
            return false;
        };
        let count = digits(n);
        if count == 0 {
            return false;
        }
        rest = &n[count..];
    }
    // Then working-file suffixes, possibly stacked (a pending write's own partial); the
    // longest first (`.haul-state.tmp` before `.haul-state`).
    let mut suffixes = haul_core::download::RESERVED_SUFFIXES;
    suffixes.sort_by_key(|suffix| std::cmp::Reverse(suffix.len()));
    while !rest.is_empty() {
        match suffixes.iter().find_map(|suffix| rest.strip_prefix(suffix)) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    true
}

impl Store {
    /// Whether `dir` holds no store yet (no index): [`Store::open`] would create one, and it
    /// would have no manifest, pin or file to offer.
    pub fn is_new(dir: &Path) -> bool {
        !dir.join(INDEX_FILE).exists()
    }

    /// Opens (creating if needed) the store in `dir` and cleans up what a crash left: DIRTY rows
    /// (their complete files committed, the others removed), orphan and temp files, rows whose
    /// file is missing or has the wrong size.
    /// `last_used_ms` values later than `now_ms` (a clock that went back) are clamped to it.
    ///
    /// A directory without an index whose `files/` holds a name haul never writes is refused
    /// ([`StoreError::NotAStore`]): the clean-up would delete it as an orphan.
    pub fn open(dir: &Path, now_ms: u64) -> Result<(Store, RecoveryReport), StoreError> {
        if fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(StoreError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        if !Store::is_writable(dir) {
            return Err(StoreError::NotWritable {
                path: dir.to_path_buf(),
            });
        }
        let files_dir = dir.join(FILES_DIR);
        fs::create_dir_all(&files_dir).map_err(io_error("create directory", &files_dir))?;
        let lock = lock_store(dir)?;
        let index_path = dir.join(INDEX_FILE);
        let index_existed = index_path.exists();
        if !index_existed {
            // A new store, or one whose index a crash lost before its first synced commit
            // (its files/ then holds only names haul writes, which the clean-up removes).
            refuse_foreign_files(dir, &files_dir)?;
        }
        let index = Connection::open(&index_path).map_err(index_error("open index.sqlite"))?;
        index
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(index_error("set busy timeout"))?;
        if index_existed {
            refuse_unless_store_index(&index, dir, &index_path, &files_dir)?;
        }
        // Creating the store syncs nothing (WAL at synchronous=NORMAL: consistent after a
        // crash, not durable): its first synced commit makes the schema durable with it, and
        // a store lost before that is created again. That saves a new cache two or three
        // fsyncs.
        index
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(index_error("set synchronous=NORMAL"))?;
        index
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(index_error("enable WAL"))?;
        // The WAL is checkpointed as it grows (SQLite's autocheckpoint), not when the store
        // closes: a checkpoint at close costs a process that loads and exits several fsyncs,
        // and a WAL left behind is read by the next open like any other.
        index
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(index_error("keep the WAL at close"))?;
        let version: i64 = index
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(index_error("read schema version"))?;
        // Version 1 had no rollback floor per app.
        let migrate = if version == 1 {
            "ALTER TABLE manifests ADD COLUMN rollback_floor_ms INTEGER;"
        } else {
            ""
        };
        // One transaction for the schema: each statement on its own would be a commit (an
        // fsync of the WAL) when the store is created. A store already at this version is
        // not written at all: on a disk too full for the index to take a page, a write here
        // failed the open, and with it every load of the releases the store holds.
        if version != SCHEMA_VERSION {
            index
                .execute_batch(&format!(
                    "BEGIN;
                CREATE TABLE IF NOT EXISTS files (
                    sha256 TEXT PRIMARY KEY NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('DIRTY', 'READY')),
                    size INTEGER NOT NULL DEFAULT 0,
                    last_used_ms INTEGER NOT NULL DEFAULT 0,
                    kind TEXT NOT NULL CHECK (kind IN ('MODULE', 'MANIFEST'))
                );
                CREATE TABLE IF NOT EXISTS manifests (
                    app TEXT PRIMARY KEY NOT NULL,
                    manifest_sha256 TEXT NOT NULL,
                    fresh_at_ms INTEGER,
                    manifest_url TEXT NOT NULL,
                    loaded_at_ms INTEGER NOT NULL,
                    rollback_floor_ms INTEGER
                );
                {migrate}
                CREATE TABLE IF NOT EXISTS pins (
                    sha256 TEXT NOT NULL,
                    app TEXT NOT NULL,
                    PRIMARY KEY (sha256, app)
                );
                CREATE INDEX IF NOT EXISTS pins_by_app ON pins (app);
                PRAGMA user_version = {SCHEMA_VERSION};
                COMMIT;"
                ))
                .map_err(index_error("create schema"))?;
        }
        index
            .pragma_update(None, "synchronous", "FULL")
            .map_err(index_error("set synchronous=FULL"))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            files_dir,
            index,
            next_temp_id: 0,
            process_id: std::process::id(),
            pending_writeback: system_pending_writeback,
            _lock: lock,
        };
        tracing::debug!(dir = %dir.display(), "index opened");
        let report = store.recover(now_ms)?;
        tracing::debug!("store recovered");
        if !report.is_clean() {
            tracing::info!(dir = %dir.display(), ?report, "store recovered after an unclean stop");
        }
        Ok((store, report))
    }

    /// Whether this process may write the store in `dir` (its directory, `files/` and index,
    /// those that exist), as [`Store::open`] must. A missing `dir` counts as writable: open
    /// creates it, or says why it cannot.
    pub fn is_writable(dir: &Path) -> bool {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{accessat, Access, AtFlags, CWD};
            [dir.to_path_buf(), dir.join(FILES_DIR), dir.join(INDEX_FILE)]
                .iter()
                .all(
                    |path| match accessat(CWD, path, Access::WRITE_OK, AtFlags::EACCESS) {
                        Ok(()) => true,
                        Err(rustix::io::Errno::NOENT) => true,
                        Err(_) => false,
                    },
                )
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dir;
            true
        }
    }

    /// Opens the store in `dir` to read it only: for a cache this process cannot write
    /// (another user's, or on a read-only file system). Nothing is created, cleaned or locked:
    /// what an unclean stop left shows as it is (DIRTY rows), and reads see the index as of
    /// their start. Only the listings ([`Store::list`], [`Store::pins`], [`Store::apps`])
    /// are meant for such a handle; anything that writes fails.
    ///
    /// An index without the store's tables (an empty file, another program's database) is
    /// [`StoreError::NoSchema`].
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        use rusqlite::OpenFlags;
        let index_path = dir.join(INDEX_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let open = |immutable: bool| -> Result<(Connection, i64), rusqlite::Error> {
            let index = if immutable {
                // Reading a WAL-mode index needs its shared-memory file, which a read-only
                // directory cannot gain: read the main file as is. A WAL left there would
                // hold only what the last writer did not checkpoint before it stopped.
                let mut uri = url::Url::from_file_path(
                    std::path::absolute(&index_path).unwrap_or_else(|_| index_path.clone()),
                )
                .map_err(|()| rusqlite::Error::InvalidPath(index_path.clone()))?;
                uri.set_query(Some("immutable=1"));
                Connection::open_with_flags(uri.as_str(), flags)?
            } else {
                Connection::open_with_flags(&index_path, flags)?
            };
            let version = index.pragma_query_value(None, "user_version", |row| row.get(0))?;
            Ok((index, version))
        };
        let (index, version) = open(false)
            .or_else(|_| open(true))
            .map_err(index_error("open index.sqlite read-only"))?;
        let has_files_table: bool = index
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files')",
                [],
                |row| row.get(0),
            )
            .map_err(index_error("read the schema"))?;
        if version == 0 || !has_files_table {
            return Err(StoreError::NoSchema { path: index_path });
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            files_dir: dir.join(FILES_DIR),
            index,
            next_temp_id: 0,
            process_id: std::process::id(),
            pending_writeback: system_pending_writeback,
            _lock: None,
        })
    }

    fn recover(&mut self, now_ms: u64) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();

        // 1. Interrupted writes. A write whose file is complete (in place, or still under a
        // temp name: a load killed after its downloads, before their commit) is committed
        // now, checked and synced as any commit is, so the next load does not fetch it
        // again; the others' files are removed and their rows forgotten.
        let dirty: Vec<String> = self.hashes_in_state(FileState::Dirty)?;
        let mut temps: std::collections::BTreeMap<String, PathBuf> = Default::default();
        for entry in fs::read_dir(&self.files_dir).map_err(io_error("list", &self.files_dir))? {
            let name = entry
                .map_err(io_error("list", &self.files_dir))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let (Some((sha256, _)), true) = (name.split_once('.'), name.ends_with(TEMP_SUFFIX)) {
                temps
                    .entry(sha256.to_owned())
                    .or_insert_with(|| self.files_dir.join(&name));
            }
        }
        let mut complete = Vec::new();
        for sha256 in &dirty {
            let store_path = self.files_dir.join(sha256);
            let temp_path = match fs::symlink_metadata(&store_path) {
                Ok(meta) if meta.is_file() => store_path.clone(),
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    remove_file_if_present(&store_path)?;
                    continue;
                }
                // Only a regular temp file is read (a FIFO would block the open).
                Err(_) => match temps
                    .get(sha256)
                    .filter(|temp| fs::symlink_metadata(temp).is_ok_and(|meta| meta.is_file()))
                {
                    Some(temp) => temp.clone(),
                    None => continue,
                },
            };
            complete.push(PendingFile {
                sha256: sha256.clone(),
                temp_path,
                store_path,
                written: None,
            });
        }
        let tried: Vec<String> = complete.iter().map(|p| p.sha256.clone()).collect();
        for (sha256, result) in tried.into_iter().zip(self.commit_many(complete, now_ms)) {
            match result {
                Ok(_) => report.dirty_kept.push(sha256),
                Err(error) => {
                    tracing::info!(%error, "interrupted write incomplete; removed");
                    report.dirty_removed.push(sha256);
                }
            }
        }
        for sha256 in &dirty {
            if report.dirty_kept.contains(sha256) || report.dirty_removed.contains(sha256) {
                continue;
            }
            let path = self.files_dir.join(sha256);
            if path.is_dir() {
                tracing::warn!(path = %path.display(), "unexpected directory in the store; left alone");
            } else if remove_file_if_present(&path)? {
                report.dirty_removed.push(sha256.clone());
            }
        }
        report.evicted_for_room = self.forget_dirty_rows()?;

        // 2. Files without a READY row, and temp files.
        let ready: std::collections::BTreeMap<String, u64> = {
            let mut statement = self
                .index
                .prepare("SELECT sha256, size FROM files WHERE state = 'READY'")
                .map_err(index_error("list READY rows"))?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, from_sql_ms(row.get::<_, i64>(1)?)))
                })
                .map_err(index_error("list READY rows"))?;
            rows.collect::<Result<_, _>>()
                .map_err(index_error("list READY rows"))?
        };
        let mut seen = std::collections::BTreeSet::new();
        let entries = fs::read_dir(&self.files_dir).map_err(io_error("list", &self.files_dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.files_dir))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let path = self.files_dir.join(&name);
            let name = name.to_string_lossy().into_owned();
            let file_type = fs::symlink_metadata(&path).map_err(io_error("inspect", &path))?;
            if file_type.is_dir() {
                tracing::warn!(path = %path.display(), "unexpected directory in the store; left alone");
                continue;
            }
            if name.ends_with(TEMP_SUFFIX) {
                remove_file_if_present(&path)?;
                report.temp_files_removed.push(name);
                continue;
            }
            match ready.get(&name) {
                Some(&size) if file_type.is_file() && file_type.len() == size => {
                    seen.insert(name);
                }
                Some(_) => {
                    remove_file_if_present(&path)?;
                    self.delete_row(&name)?;
                    report.wrong_size_removed.push(name);
                }
                None => {
                    remove_file_if_present(&path)?;
                    report.orphan_files_removed.push(name);
                }
            }
        }

        // 3. READY rows whose file is gone.
        for sha256 in ready.keys() {
            if !seen.contains(sha256) && !report.wrong_size_removed.contains(sha256) {
                self.delete_row(sha256)?;
                report.missing_files_forgotten.push(sha256.clone());
            }
        }

        // 4. A clock that went backwards must not make files look used in the future.
        cached_execute(
            &self.index,
            "UPDATE files SET last_used_ms = ?1 WHERE last_used_ms > ?1",
            params![to_sql_ms(now_ms)],
        )
        .map_err(index_error("clamp last_used_ms"))?;
        Ok(report)
    }

    /// Delete the DIRTY rows (their files are dealt with). On a full disk the index cannot
    /// grow its journal for even that, and every later command (a load of a pinned app,
    /// the prune that would free space) failed at this point: room is made first, by
    /// removing the store's temp files and then unpinned files, least recently used first,
    /// one at a time until the index takes the change; their rows go in the same
    /// transaction. A crash meanwhile leaves READY rows whose file is gone, which the next
    /// open forgets. Returns the files evicted.
    fn forget_dirty_rows(&mut self) -> Result<Vec<String>, StoreError> {
        let mut evicted: Vec<String> = Vec::new();
        let mut candidates: Option<std::vec::IntoIter<String>> = None;
        loop {
            let tried = self.index.transaction().and_then(|transaction| {
                cached_execute(&transaction, "DELETE FROM files WHERE state = 'DIRTY'", [])?;
                for sha256 in &evicted {
                    cached_execute(
                        &transaction,
                        "DELETE FROM files WHERE sha256 = ?1",
                        params![sha256],
                    )?;
                }
                transaction.commit()
            });
            let error = match tried {
                Ok(()) => break,
                Err(error) if disk_full(&error) => error,
                Err(error) => return Err(index_error("remove DIRTY rows")(error)),
            };
            let next = match &mut candidates {
                Some(candidates) => candidates.next(),
                None => {
                    // First what costs nothing: the temp files (nothing refers to them; a
                    // directory under such a name is left alone, as below) and the
                    // index's journal, emptied into the database (its pages are reused
                    // rather than grown). Then try again.
                    for entry in fs::read_dir(&self.files_dir)
                        .map_err(io_error("list", &self.files_dir))?
                        .flatten()
                    {
                        let temp = entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX);
                        if temp && entry.file_type().is_ok_and(|t| !t.is_dir()) {
                            remove_file_if_present(&entry.path())?;
                        }
                    }
                    let _ = self
                        .index
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                    candidates = Some(self.eviction_order()?.into_iter());
                    continue;
                }
            };
            let Some(sha256) = next else {
                return Err(index_error("remove DIRTY rows")(error));
            };
            remove_file_if_present(&self.files_dir.join(&sha256))?;
            evicted.push(sha256);
        }
        if !evicted.is_empty() {
            tracing::warn!(
                files = evicted.len(),
                "the disk was full: unpinned cached files removed to make room for the index"
            );
        }
        Ok(evicted)
    }

    /// Unpinned READY files, least recently used first: what a prune evicts, in its order.
    fn eviction_order(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .index
            .prepare(
                "SELECT sha256 FROM files
                 WHERE state = 'READY' AND sha256 NOT IN (SELECT sha256 FROM pins)
                 ORDER BY last_used_ms ASC, sha256 ASC",
            )
            .map_err(index_error("list eviction candidates"))?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(index_error("list eviction candidates"))?;
        rows.collect::<Result<_, _>>()
            .map_err(index_error("list eviction candidates"))
    }

    fn hashes_in_state(&self, state: FileState) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .index
            .prepare("SELECT sha256 FROM files WHERE state = ?1 ORDER BY sha256")
            .map_err(index_error("list rows by state"))?;
        let rows = statement
            .query_map(params![state.as_sql()], |row| row.get::<_, String>(0))
            .map_err(index_error("list rows by state"))?;
        rows.collect::<Result<_, _>>()
            .map_err(index_error("list rows by state"))
    }

    fn delete_row(&self, sha256: &str) -> Result<(), StoreError> {
        cached_execute(
            &self.index,
            "DELETE FROM files WHERE sha256 = ?1",
            params![sha256],
        )
        .map_err(index_error("delete file row"))?;
        Ok(())
    }

    fn state_of(&self, sha256: &str) -> Result<Option<FileState>, StoreError> {
        let state: Option<String> = cached_row(
            &self.index,
            "SELECT state FROM files WHERE sha256 = ?1",
            params![sha256],
            |row| row.get(0),
        )
        .optional()
        .map_err(index_error("read file state"))?;
        Ok(state.as_deref().and_then(FileState::from_sql))
    }

    /// Starts syncing the store's file system round after round on a thread of its own, for
    /// a batch of `files` about to be written into the store; `None` when the batch is too
    /// small for the batch sync to use syncfs (it then syncs file by file), off Linux, or when
    /// the thread cannot start. See [`SyncAhead`].
    pub fn sync_ahead(&self, files: usize) -> Option<SyncAhead> {
        #[cfg(target_os = "linux")]
        {
            if files < SYNCFS_MIN_FILES || !self.syncfs_pays(files, 0) {
                return None;
            }
            let dir = File::open(&self.files_dir).ok()?;
            let stop =
                std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
            let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (thread_stop, thread_rounds) = (stop.clone(), rounds.clone());
            let thread = std::thread::Builder::new()
                .name("haul-sync-ahead".into())
                .spawn(move || sync_ahead_rounds(dir, &thread_stop, &thread_rounds))
                .ok()?;
            Some(SyncAhead {
                stop,
                rounds,
                thread: Some(thread),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = files;
            None
        }
    }

    /// Whether one syncfs should make a batch of `files` durable, `own_bytes` of them the
    /// batch's (see [`haul_core::writeback`]): not when another program's data waiting for
    /// writeback would make the load wait for it too.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn syncfs_pays(&self, files: usize, own_bytes: u64) -> bool {
        haul_core::writeback::syncfs_pays(files, own_bytes, (self.pending_writeback)())
    }

    /// Whatever this machine has waiting for writeback, batches are synced as if nothing
    /// were: tests must not depend on the builds running beside them.
    #[cfg(test)]
    pub(crate) fn decide_syncs_as_on_a_quiet_machine(&mut self) {
        self.pending_writeback = || None;
    }

    /// From now on every write to the index fails, as on a disk too full to take a page.
    #[cfg(test)]
    pub(crate) fn refuse_index_writes(&mut self) {
        self.index
            .pragma_update(None, "query_only", true)
            .expect("query_only");
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file with this hash lives (whether or not it is stored).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        Ok(self.files_dir.join(check_hash(sha256)?))
    }

    /// [`Store::contains`] for several hashes, read in one index transaction; in order.
    pub fn contains_many(&self, hashes: &[&str]) -> Result<Vec<bool>, StoreError> {
        let hashes = hashes
            .iter()
            .map(|sha256| check_hash(sha256))
            .collect::<Result<Vec<String>, StoreError>>()?;
        // A new store (a cold load) has none: one cheap query instead of the set below.
        let any_ready: bool = self
            .index
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM files WHERE state = 'READY')")
            .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
            .map_err(index_error("find stored files"))?;
        if !any_ready {
            return Ok(vec![false; hashes.len()]);
        }
        // Set-based: one query for the READY rows among them (json_each), not one each.
        let hashes_json = serde_json::to_string(&hashes).expect("strings serialize");
        let ready: std::collections::BTreeSet<String> = {
            let mut statement = self
                .index
                .prepare_cached(
                    "SELECT sha256 FROM files
                     WHERE state = 'READY' AND sha256 IN (SELECT value FROM json_each(?1))",
                )
                .map_err(index_error("find stored files"))?;
            let rows = statement
                .query_map(params![hashes_json], |row| row.get::<_, String>(0))
                .map_err(index_error("find stored files"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(index_error("find stored files"))?
        };
        Ok(hashes
            .iter()
            .map(|sha256| ready.contains(sha256) && self.files_dir.join(sha256).is_file())
            .collect())
    }

    /// Hashes the stored (READY) files `hashes` again, on up to `CHECK_THREADS` threads, before
    /// they are handed out: each one whose bytes no longer match its name (changed on disk
    /// since it was stored) or that cannot be read (permissions, I/O errors) is removed with
    /// its row, as is the row of one that went missing; one that can be neither read nor
    /// removed fails the call ([`StoreError::Unreadable`], naming it), and so does a read that
    /// failed for want of resources (too many open files, no memory: [`StoreError::Io`]),
    /// with the file kept.
    /// Per hash, in order: whether it is still stored.
    pub fn recheck_many(&mut self, hashes: &[&str]) -> Result<Vec<bool>, StoreError> {
        let paths = hashes
            .iter()
            .map(|sha256| self.path(sha256))
            .collect::<Result<Vec<PathBuf>, StoreError>>()?;
        let hashed = in_parallel(&paths, |path| hash_file(path));
        let mut kept = Vec::with_capacity(hashes.len());
        for ((sha256, path), hashed) in hashes.iter().zip(paths).zip(hashed) {
            match hashed {
                Ok((actual, _)) if actual == *sha256 => kept.push(true),
                Ok((actual, _)) => {
                    tracing::warn!(%sha256, %actual, "stored file is corrupt; removing it");
                    remove_file_if_present(&path)?;
                    self.delete_row(sha256)?;
                    kept.push(false);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.delete_row(sha256)?;
                    kept.push(false);
                }
                // Out of descriptors or memory: the file is not at fault and stays.
                Err(read) if short_of_resources(&read) => {
                    return Err(io_error("read", &path)(read));
                }
                Err(read) => {
                    // As good as corrupt: it cannot be handed out, and files/ is this
                    // store's to write, so it goes and is fetched again.
                    self.remove_unreadable(sha256, &path, read)?;
                    kept.push(false);
                }
            }
        }
        Ok(kept)
    }

    /// Whether a verified (READY) file with this hash is stored and present on disk.
    pub fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        let sha256 = check_hash(sha256)?;
        Ok(self.state_of(&sha256)? == Some(FileState::Ready)
            && self.files_dir.join(&sha256).is_file())
    }

    /// Starts writing the file with this hash: records a DIRTY row (in a transaction) and
    /// returns a temp path beside the final one. Fails if the hash is already stored.
    pub fn begin_write(&mut self, sha256: &str, kind: FileKind) -> Result<PendingFile, StoreError> {
        self.begin_writes(&[(sha256, kind)])?
            .pop()
            .expect("one result per write")
    }

    /// [`Store::begin_write`] for several hashes, with one index transaction for all of them.
    /// The outer error means the transaction failed and no write started; otherwise one result
    /// per hash, in order (a hash that is invalid or already stored fails alone). A hash given
    /// twice gets two pending writes; the second to commit finds the file already there.
    ///
    /// The DIRTY rows are committed without syncing the index (`synchronous=NORMAL` for that
    /// one transaction: consistent, not durable): a power failure that loses them only turns
    /// the files being written into orphans, which the next open removes like DIRTY ones. The
    /// next synced commit makes them durable with it.
    pub fn begin_writes(
        &mut self,
        writes: &[(&str, FileKind)],
    ) -> Result<Vec<Result<PendingFile, StoreError>>, StoreError> {
        let started = self.record_writes(writes)?;
        Ok(started
            .into_iter()
            .map(|started| started.map(|sha256| self.pending_file(sha256)))
            .collect())
    }

    /// [`Store::begin_writes`] in two steps, for a writer that records the DIRTY rows while
    /// it already writes: the pending files of `writes` (one result per write, in order; an
    /// invalid hash fails alone), with no index work. The files may be written at once;
    /// [`Store::record_writes`] of the same `writes` must follow before any of them is
    /// committed or adopted. A crash in between leaves files without a row, which the next
    /// open removes as orphans, like files of DIRTY rows.
    pub fn plan_writes(
        &mut self,
        writes: &[(&str, FileKind)],
    ) -> Vec<Result<PendingFile, StoreError>> {
        writes
            .iter()
            .map(|&(sha256, _)| check_hash(sha256).map(|sha256| self.pending_file(sha256)))
            .collect()
    }

    /// The DIRTY rows of [`Store::plan_writes`] (or of [`Store::begin_writes`]), in one index
    /// transaction that is not synced (see [`Store::begin_writes`]). The outer error means
    /// none was recorded; otherwise one result per write, in order: its normalised hash, or
    /// why it cannot be written ([`StoreError::AlreadyReady`] if the hash is stored).
    pub fn record_writes(
        &mut self,
        writes: &[(&str, FileKind)],
    ) -> Result<Vec<Result<String, StoreError>>, StoreError> {
        self.unsynced_commits(|store| store.record_dirty(writes))
    }

    /// A new pending write of `sha256` (normalised): a temp path of its own beside its store
    /// path.
    fn pending_file(&mut self, sha256: String) -> PendingFile {
        self.next_temp_id += 1;
        let temp_path = self.files_dir.join(format!(
            "{sha256}.{}-{}{TEMP_SUFFIX}",
            self.process_id, self.next_temp_id
        ));
        let store_path = self.files_dir.join(&sha256);
        PendingFile {
            sha256,
            temp_path,
            store_path,
            written: None,
        }
    }

    /// Runs `work` with the index's commits not synced (`synchronous=NORMAL`: consistent, not
    /// durable until the next synced commit), then puts back the level there was before (so
    /// calls nest).
    fn unsynced_commits<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let before: i64 = self
            .index
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .map_err(index_error("read synchronous"))?;
        self.index
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(index_error("set synchronous=NORMAL"))?;
        let result = work(self);
        let restored = self
            .index
            .pragma_update(None, "synchronous", before)
            .map_err(index_error("restore synchronous"));
        let value = result?;
        restored?;
        Ok(value)
    }

    /// The DIRTY rows of [`Store::begin_writes`], in one transaction; per write, its
    /// normalised hash or why it cannot start.
    fn record_dirty(
        &mut self,
        writes: &[(&str, FileKind)],
    ) -> Result<Vec<Result<String, StoreError>>, StoreError> {
        let transaction = self
            .index
            .transaction()
            .map_err(index_error("begin write transaction"))?;
        let checked: Vec<Result<String, StoreError>> = writes
            .iter()
            .map(|&(sha256, _)| check_hash(sha256))
            .collect();
        // Set-based: every row in one statement (json_each), not one statement each. A new
        // row, or an existing non-READY one made DIRTY again, is returned; a READY row is
        // left as it is and not returned.
        let rows: Vec<(&str, &str)> = checked
            .iter()
            .zip(writes)
            .filter_map(|(sha256, &(_, kind))| {
                Some((sha256.as_ref().ok()?.as_str(), kind.as_sql()))
            })
            .collect();
        let rows_json = serde_json::to_string(&rows).expect("strings serialize");
        let dirty: std::collections::HashSet<String> = {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO files (sha256, state, size, last_used_ms, kind)
                         SELECT value ->> 0, 'DIRTY', 0, 0, value ->> 1 FROM json_each(?1)
                         WHERE true
                     ON CONFLICT (sha256) DO UPDATE
                         SET state = 'DIRTY', size = 0, last_used_ms = 0, kind = excluded.kind
                         WHERE files.state <> 'READY'
                     RETURNING sha256",
                )
                .map_err(index_error("record DIRTY rows"))?;
            let returned = statement
                .query_map(params![rows_json], |row| row.get::<_, String>(0))
                .map_err(index_error("record DIRTY rows"))?;
            returned
                .collect::<rusqlite::Result<_>>()
                .map_err(index_error("record DIRTY rows"))?
        };
        let started = checked
            .into_iter()
            .map(|sha256| {
                let sha256 = sha256?;
                if dirty.contains(&sha256) {
                    Ok(sha256)
                } else {
                    Err(StoreError::AlreadyReady { sha256 })
                }
            })
            .collect();
        transaction
            .commit()
            .map_err(index_error("commit DIRTY rows"))?;
        Ok(started)
    }

    /// Finishes a write: re-hashes the temp file, and if it matches, fsyncs it, renames it to
    /// `files/<sha256>`, fsyncs the directory and marks the row READY. On a mismatch or a
    /// missing temp file the write is abandoned (temp file and DIRTY row removed).
    pub fn commit(&mut self, pending: PendingFile, now_ms: u64) -> Result<FileEntry, StoreError> {
        self.commit_many(vec![pending], now_ms)
            .pop()
            .expect("one result per write")
    }

    /// [`Store::commit`] for several writes, with one directory fsync and one index
    /// transaction for all of them (the protocol per file is unchanged: no READY row before
    /// its file is verified, synced, renamed and the directory synced). One result per write,
    /// in order; a write that fails verification fails alone.
    pub fn commit_many(
        &mut self,
        pending: Vec<PendingFile>,
        now_ms: u64,
    ) -> Vec<Result<FileEntry, StoreError>> {
        let mut results: Vec<Option<Result<FileEntry, StoreError>>> = Vec::new();
        let mut renamed: Vec<(usize, String, u64)> = Vec::new();
        let checked = check_written_files(&pending);
        for (index, (pending, checked)) in pending.into_iter().zip(checked).enumerate() {
            results.push(None);
            match self.rename_checked(pending, checked) {
                Ok((sha256, size)) => renamed.push((index, sha256, size)),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        self.record_placed(&renamed, results, now_ms)
    }

    /// Renames a checked temp file into place, or abandons the write if the check failed.
    fn rename_checked(
        &mut self,
        pending: PendingFile,
        checked: Result<u64, StoreError>,
    ) -> Result<(String, u64), StoreError> {
        let size = match checked {
            Ok(size) => size,
            Err(error) => {
                if let StoreError::HashMismatch {
                    expected, actual, ..
                } = &error
                {
                    tracing::warn!(%expected, %actual, "written file has the wrong hash; discarded");
                }
                self.abort(pending)?;
                return Err(error);
            }
        };
        let final_path = self.files_dir.join(&pending.sha256);
        if let Err(error) = fs::rename(&pending.temp_path, &final_path)
            .map_err(io_error("rename into place", &pending.temp_path))
        {
            self.abort(pending)?;
            return Err(error);
        }
        Ok((pending.sha256, size))
    }

    /// Marks renamed files READY in one transaction, keeping each row's kind.
    fn mark_ready(
        &mut self,
        renamed: &[(usize, String, u64)],
        now_ms: u64,
    ) -> Result<Vec<FileEntry>, StoreError> {
        Ok(self.mark_ready_after(renamed, now_ms, None, || Ok(()))??.0)
    }

    /// [`Store::mark_ready`] whose transaction commits only once `gate` (called after the rows
    /// are written, before the commit) succeeds: the index work overlaps whatever `gate`
    /// waits for. With `pins`, the app's pins are replaced in the same transaction, if they
    /// can be (every pinned hash READY, these rows included; else they are left as they
    /// were): the `bool` says whether they were. The outer error is the index's; the inner
    /// one is `gate`'s, in which case nothing was committed.
    #[allow(clippy::type_complexity)]
    fn mark_ready_after(
        &mut self,
        renamed: &[(usize, String, u64)],
        now_ms: u64,
        pins: Option<&PinPlan>,
        gate: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<Result<(Vec<FileEntry>, bool), StoreError>, StoreError> {
        let transaction = self
            .index
            .transaction()
            .map_err(index_error("begin commit transaction"))?;
        // Set-based: the rows are normally there (DIRTY, from begin_writes): one UPDATE for
        // all of them, which also says each one's kind; an INSERT only for one that went
        // missing.
        let rows: Vec<(&str, i64)> = renamed
            .iter()
            .map(|(_, sha256, size)| (sha256.as_str(), to_sql_ms(*size)))
            .collect();
        let rows_json = serde_json::to_string(&rows).expect("strings serialize");
        let kinds: std::collections::HashMap<String, String> = {
            let mut statement = transaction
                .prepare_cached(
                    "UPDATE files SET state = 'READY', size = w.value ->> 1, last_used_ms = ?2
                         FROM json_each(?1) AS w WHERE files.sha256 = w.value ->> 0
                     RETURNING sha256, kind",
                )
                .map_err(index_error("mark READY"))?;
            let returned = statement
                .query_map(params![rows_json, to_sql_ms(now_ms)], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(index_error("mark READY"))?;
            returned
                .collect::<rusqlite::Result<_>>()
                .map_err(index_error("mark READY"))?
        };
        let mut entries = Vec::with_capacity(renamed.len());
        for (_, sha256, size) in renamed {
            let kind = match kinds.get(sha256) {
                Some(kind) => FileKind::from_sql(kind).unwrap_or(FileKind::Module),
                None => {
                    // Also a second copy of the same hash in the batch finds this row.
                    cached_execute(
                        &transaction,
                        "INSERT INTO files (sha256, state, size, last_used_ms, kind)
                             VALUES (?1, 'READY', ?2, ?3, ?4)
                         ON CONFLICT (sha256) DO UPDATE SET state = 'READY',
                             size = excluded.size, last_used_ms = excluded.last_used_ms",
                        params![
                            sha256,
                            to_sql_ms(*size),
                            to_sql_ms(now_ms),
                            FileKind::Module.as_sql()
                        ],
                    )
                    .map_err(index_error("mark READY"))?;
                    FileKind::Module
                }
            };
            entries.push(FileEntry {
                sha256: sha256.clone(),
                state: FileState::Ready,
                size: *size,
                last_used_ms: now_ms,
                kind,
            });
        }
        let pinned = match pins {
            Some(plan) => {
                let marked: std::collections::HashSet<&str> = renamed
                    .iter()
                    .map(|(_, sha256, _)| sha256.as_str())
                    .collect();
                pin_in_savepoint(&transaction, plan, now_ms, &marked)?
            }
            None => false,
        };
        if let Err(error) = gate() {
            // Dropping the transaction rolls it back.
            return Ok(Err(error));
        }
        transaction
            .commit()
            .map_err(index_error("commit READY rows"))?;
        tracing::debug!(files = entries.len(), pinned, "stored files");
        Ok(Ok((entries, pinned)))
    }

    /// Records files that a writer put straight at their [`PendingFile::store_path`] (renamed
    /// into place whole), instead of [`Store::commit_many`]'s re-hash and rename: the writer
    /// vouches that the bytes were verified against the hash while they were written (haul's
    /// engine does that for a download with an expected sha256). Makes them durable first
    /// (one syncfs for a large batch on Linux, else each file's data synced on up to
    /// `CHECK_THREADS` threads; then the directory once), then marks them READY in one
    /// index transaction, so the writer need not sync anything:
    /// until the rows are READY, a crash leaves DIRTY rows whose files the next open removes.
    /// Reads still re-check the hash. A write whose file is missing or cannot be synced fails
    /// alone and is abandoned; one result per write, in order. In a large batch, the sizes
    /// writers reported ([`PendingFile::written`]) go into the rows while the sync thread
    /// checks the files against them; a file that is missing or of another size sends the
    /// batch the per-file way (each file checked and synced on its own).
    pub fn adopt_many(
        &mut self,
        pending: Vec<PendingFile>,
        now_ms: u64,
    ) -> Vec<Result<FileEntry, StoreError>> {
        self.adopt_many_and_pin(pending, now_ms, None).0
    }

    /// [`Store::adopt_many`], and with `pins`, for a batch whose every file is adopted, the
    /// app's pins replaced in the same index transaction (see [`Store::set_pins`]): a load's
    /// last sync then commits its files and its pins together. The `bool` says whether the
    /// pins were replaced (if not, they are as they were: the caller sets them on its own).
    pub fn adopt_many_and_pin(
        &mut self,
        pending: Vec<PendingFile>,
        now_ms: u64,
        pins: Option<&PinPlan>,
    ) -> (Vec<Result<FileEntry, StoreError>>, bool) {
        #[cfg(target_os = "linux")]
        if pending.len() >= SYNCFS_MIN_FILES {
            let own: u64 = pending.iter().filter_map(|file| file.written).sum();
            if self.syncfs_pays(pending.len(), own) {
                return self.adopt_many_overlapped(pending, now_ms, pins);
            }
            tracing::debug!(
                files = pending.len(),
                "others' data waits for writeback: syncing the batch file by file"
            );
        }
        let _ = pins;
        let mut results: Vec<Option<Result<FileEntry, StoreError>>> = Vec::new();
        let mut present: Vec<(usize, String, u64)> = Vec::new();
        let synced = sync_all_in_place(&pending);
        for (index, (pending, synced)) in pending.into_iter().zip(synced).enumerate() {
            results.push(None);
            match synced {
                Ok(size) => present.push((index, pending.sha256, size)),
                Err(error) => results[index] = Some(self.abort(pending).and(Err(error))),
            }
        }
        (self.record_placed(&present, results, now_ms), false)
    }

    /// [`Store::adopt_many`] for a batch made durable by one syncfs: the syncfs runs on a
    /// thread of its own while the READY rows are written, and the transaction commits only
    /// after it succeeded (the order of the protocol is kept: no READY row is durable before
    /// its file). If the syncfs fails, nothing is committed and every file is synced on its
    /// own instead, so a failure is reported per file.
    #[cfg(target_os = "linux")]
    fn adopt_many_overlapped(
        &mut self,
        pending: Vec<PendingFile>,
        now_ms: u64,
        pins: Option<&PinPlan>,
    ) -> (Vec<Result<FileEntry, StoreError>>, bool) {
        // Files whose writer said what it wrote are checked on a thread of their own while
        // the syncfs runs on another and the rows are written here: a file missing or of
        // another size then fails the gate, and the batch goes the per-file way below, which
        // reports it alone.
        let claimed: Vec<(PathBuf, u64)> = pending
            .iter()
            .filter_map(|file| Some((file.store_path.clone(), file.written?)))
            .collect();
        let check = move || -> Result<(), StoreError> {
            for (path, size) in &claimed {
                let placed = placed_size(path)?;
                if placed != *size {
                    return Err(StoreError::Io {
                        op: "check written file",
                        path: path.clone(),
                        source: io::Error::other(format!(
                            "{placed} bytes, its writer reported {size}"
                        )),
                    });
                }
            }
            Ok(())
        };
        let files_dir = self.files_dir.clone();
        let syncfs = move || -> Result<(), StoreError> {
            let dir = File::open(&files_dir).map_err(io_error("open", &files_dir))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_error("syncfs", &files_dir)(e.into()))?;
            // The names too (syncfs writes directories, but say so explicitly).
            dir.sync_all()
                .map_err(io_error("fsync directory", &files_dir))
        };
        let mut results: Vec<Option<Result<FileEntry, StoreError>>> = Vec::new();
        let mut present: Vec<(usize, String, u64)> = Vec::new();
        let mut present_files: Vec<PendingFile> = Vec::new();
        let marked = std::thread::scope(|scope| {
            let syncing = std::thread::Builder::new()
                .name("haul-store-sync".into())
                .spawn_scoped(scope, syncfs);
            let checking = std::thread::Builder::new()
                .name("haul-store-check".into())
                .spawn_scoped(scope, check);
            for (index, pending) in pending.into_iter().enumerate() {
                results.push(None);
                let size = match pending.written {
                    Some(size) => Ok(size),
                    None => placed_size(&pending.store_path),
                };
                match size {
                    Ok(size) => {
                        present.push((index, pending.sha256.clone(), size));
                        present_files.push(pending);
                    }
                    Err(error) => results[index] = Some(self.abort(pending).and(Err(error))),
                }
            }
            if present.is_empty() {
                return Ok(Ok((Vec::new(), false)));
            }
            // Pins only for a batch without a failure: the load may still fail otherwise.
            let pins = pins.filter(|_| results.iter().all(Option::is_none));
            let dir = self.files_dir.clone();
            let gate = move || {
                let checked = joined(checking, "check the written files in", &dir);
                let synced = joined(syncing, "syncfs", &dir);
                checked.and(synced)
            };
            self.mark_ready_after(&present, now_ms, pins, gate)
        });
        match marked {
            Ok(Ok((entries, pinned))) => {
                for ((index, _, _), entry) in present.iter().zip(entries) {
                    results[*index] = Some(Ok(entry));
                }
                let results = results
                    .into_iter()
                    .map(|result| result.expect("every write has a result"))
                    .collect();
                (results, pinned)
            }
            Ok(Err(sync_error)) => {
                tracing::warn!(
                    error = %sync_error,
                    dir = %self.files_dir.display(),
                    "the batch's check or syncfs failed; checking and syncing each written file instead"
                );
                let synced = in_parallel(&present_files, |file| sync_placed(&file.store_path));
                let mut placed = Vec::new();
                for ((entry, file), synced) in present.into_iter().zip(present_files).zip(synced) {
                    match synced {
                        Ok(size) => placed.push((entry.0, entry.1, size)),
                        Err(error) => results[entry.0] = Some(self.abort(file).and(Err(error))),
                    }
                }
                (self.record_placed(&placed, results, now_ms), false)
            }
            Err(index_error) => {
                let mut results = results;
                self.unmark(&present, index_error, &mut results);
                let results = results
                    .into_iter()
                    .map(|result| result.expect("every write has a result"))
                    .collect();
                (results, false)
            }
        }
    }

    /// Makes the renames of files now in place durable (one directory sync) and marks them
    /// READY in one transaction; `results` holds the other writes' outcomes, by index. If that
    /// fails the rows are still DIRTY: the files are removed now (see [`Store::unmark`]).
    fn record_placed(
        &mut self,
        placed: &[(usize, String, u64)],
        mut results: Vec<Option<Result<FileEntry, StoreError>>>,
        now_ms: u64,
    ) -> Vec<Result<FileEntry, StoreError>> {
        if !placed.is_empty() {
            let marked = sync_dir(&self.files_dir).and_then(|()| self.mark_ready(placed, now_ms));
            match marked {
                Ok(entries) => {
                    for ((index, _, _), entry) in placed.iter().zip(entries) {
                        results[*index] = Some(Ok(entry));
                    }
                }
                Err(error) => self.unmark(placed, error, &mut results),
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every write has a result"))
            .collect()
    }

    /// Undoes files put in place whose rows could not be marked READY (recovery at the next
    /// open would remove them anyway). The first write gets the error itself, the others its
    /// text.
    fn unmark(
        &mut self,
        placed: &[(usize, String, u64)],
        error: StoreError,
        results: &mut [Option<Result<FileEntry, StoreError>>],
    ) {
        tracing::warn!(%error, "could not mark written files READY; removing them");
        let reason = error.to_string();
        let mut error = Some(error);
        for (index, sha256, _) in placed {
            let path = self.files_dir.join(sha256);
            let _ = remove_file_if_present(&path);
            let _ = cached_execute(
                &self.index,
                "DELETE FROM files WHERE sha256 = ?1 AND state = 'DIRTY'",
                params![sha256],
            );
            results[*index] = Some(Err(error.take().unwrap_or_else(|| StoreError::Io {
                op: "commit",
                path,
                source: io::Error::other(reason.clone()),
            })));
        }
    }

    /// Abandons a write: removes the temp file, whatever was put at the store path (not a
    /// stored file: its row is DIRTY) and the DIRTY row.
    pub fn abort(&mut self, pending: PendingFile) -> Result<(), StoreError> {
        remove_file_if_present(&pending.temp_path)?;
        // A directory in the file's place (put there by hand) is left alone.
        if self.state_of(&pending.sha256)? == Some(FileState::Dirty) && !pending.store_path.is_dir()
        {
            remove_file_if_present(&pending.store_path)?;
        }
        cached_execute(
            &self.index,
            "DELETE FROM files WHERE sha256 = ?1 AND state = 'DIRTY'",
            params![pending.sha256],
        )
        .map_err(index_error("remove DIRTY row"))?;
        Ok(())
    }

    /// Stores `bytes` under `sha256` (begin, write, commit). If the file is already stored it
    /// is only touched.
    pub fn insert_bytes(
        &mut self,
        sha256: &str,
        kind: FileKind,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.contains(sha256)? {
            return self.touch(sha256, now_ms);
        }
        let pending = self.begin_write(sha256, kind)?;
        let written = File::create(pending.temp_path())
            .and_then(|mut file| file.write_all(bytes))
            .map_err(io_error("write", pending.temp_path()));
        if let Err(error) = written {
            self.abort(pending)?;
            return Err(error);
        }
        self.commit(pending, now_ms)?;
        Ok(())
    }

    /// Reads a stored file and re-checks its hash. A mismatch removes the entry and fails with
    /// [`StoreError::Corrupt`]; a missing file forgets the row ([`StoreError::FileMissing`]).
    pub fn read(&mut self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let sha256 = check_hash(sha256)?;
        if self.state_of(&sha256)? != Some(FileState::Ready) {
            return Err(StoreError::NotFound { sha256 });
        }
        let path = self.files_dir.join(&sha256);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.delete_row(&sha256)?;
                return Err(StoreError::FileMissing { sha256, path });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            tracing::warn!(%sha256, %actual, "stored file is corrupt; removing it");
            remove_file_if_present(&path)?;
            self.delete_row(&sha256)?;
            return Err(StoreError::Corrupt {
                sha256,
                actual,
                path,
            });
        }
        Ok(bytes)
    }

    /// Records that a stored file was used at `now_ms` (for LRU pruning).
    pub fn touch(&mut self, sha256: &str, now_ms: u64) -> Result<(), StoreError> {
        self.touch_many(&[sha256], now_ms)
    }

    /// [`Store::touch`] for several files in one index transaction (one index sync instead of
    /// one per file).
    pub fn touch_many(&mut self, hashes: &[&str], now_ms: u64) -> Result<(), StoreError> {
        let hashes = hashes
            .iter()
            .map(|sha256| check_hash(sha256))
            .collect::<Result<Vec<String>, StoreError>>()?;
        let transaction = self
            .index
            .transaction()
            .map_err(index_error("begin touch transaction"))?;
        for sha256 in &hashes {
            cached_execute(
                &transaction,
                "UPDATE files SET last_used_ms = ?2 WHERE sha256 = ?1 AND state = 'READY'",
                params![sha256, to_sql_ms(now_ms)],
            )
            .map_err(index_error("touch"))?;
        }
        transaction.commit().map_err(index_error("commit touch"))?;
        Ok(())
    }

    /// [`Store::insert_bytes`] of `app`'s manifest, then [`Store::set_pins`]. The manifest's
    /// rows are committed without syncing the index (`synchronous=NORMAL`): the pins' commit
    /// right after them is synced, which makes both durable with one index sync instead of
    /// two (the manifest file itself is synced before its READY row, as always). If pinning
    /// fails, the manifest stays stored, as after the two calls.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_manifest_and_pin(
        &mut self,
        app: &str,
        manifest_sha256: &str,
        manifest_bytes: &[u8],
        module_hashes: &[String],
        fresh_at_ms: Option<u64>,
        manifest_url: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.unsynced_commits(|store| {
            store.insert_bytes(manifest_sha256, FileKind::Manifest, manifest_bytes, now_ms)
        })?;
        let plan = PinPlan {
            app: app.to_owned(),
            manifest_sha256: manifest_sha256.to_owned(),
            module_hashes: module_hashes.to_vec(),
            fresh_at_ms,
            manifest_url: manifest_url.to_owned(),
            rollback_floor_ms: crate::manifest::Manifest::parse(manifest_bytes)
                .ok()
                .and_then(|manifest| manifest.rollback_floor_at(now_ms)),
        };
        self.pin(&plan, now_ms)
    }

    /// Replaces `app`'s pins with exactly `manifest_sha256` and `module_hashes`, and records
    /// the app's manifest, in one transaction. Every hash must be READY, else nothing changes.
    /// Call after a successful load only.
    pub fn set_pins(
        &mut self,
        app: &str,
        manifest_sha256: &str,
        module_hashes: &[String],
        fresh_at_ms: Option<u64>,
        manifest_url: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let plan = PinPlan {
            app: app.to_owned(),
            manifest_sha256: manifest_sha256.to_owned(),
            module_hashes: module_hashes.to_vec(),
            fresh_at_ms,
            manifest_url: manifest_url.to_owned(),
            rollback_floor_ms: None,
        };
        self.pin(&plan, now_ms)
    }

    fn pin(&mut self, plan: &PinPlan, now_ms: u64) -> Result<(), StoreError> {
        let transaction = self
            .index
            .transaction()
            .map_err(index_error("begin pin transaction"))?;
        write_pins(&transaction, plan, now_ms, &Default::default())?;
        transaction.commit().map_err(index_error("commit pins"))?;
        Ok(())
    }

    /// The rollback floor recorded with `app`'s pins (its pinned manifest's
    /// `freshAtEpochMs`), whatever became of the manifest's file.
    pub fn rollback_floor(&self, app: &str) -> Result<Option<u64>, StoreError> {
        let floor: Option<Option<i64>> = self
            .index
            .query_row(
                "SELECT rollback_floor_ms FROM manifests WHERE app = ?1",
                params![app],
                |row| row.get(0),
            )
            .optional()
            .map_err(index_error("read rollback floor"))?;
        Ok(floor.flatten().map(from_sql_ms))
    }
}

/// What [`Store::set_pins`] records: the app, its manifest and the modules it pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPlan {
    pub app: String,
    pub manifest_sha256: String,
    pub module_hashes: Vec<String>,
    pub fresh_at_ms: Option<u64>,
    pub manifest_url: String,
    /// The manifest's `freshAtEpochMs`, kept beside the pins: the app's rollback floor
    /// outlives its pinned manifest file (corrupt, deleted, removed by `verify`).
    pub rollback_floor_ms: Option<u64>,
}

/// [`write_pins`] inside a savepoint of `transaction`: `true` if the pins were replaced,
/// `false` if a pinned hash is not READY (the pins then stay as they were; the rest of the
/// transaction is kept). An index failure fails the transaction.
fn pin_in_savepoint(
    transaction: &rusqlite::Transaction<'_>,
    plan: &PinPlan,
    now_ms: u64,
    ready: &std::collections::HashSet<&str>,
) -> Result<bool, StoreError> {
    transaction
        .execute_batch("SAVEPOINT pins")
        .map_err(index_error("begin pins"))?;
    match write_pins(transaction, plan, now_ms, ready) {
        Ok(()) => {
            transaction
                .execute_batch("RELEASE pins")
                .map_err(index_error("release pins"))?;
            Ok(true)
        }
        Err(error @ (StoreError::NotReady { .. } | StoreError::InvalidHash { .. })) => {
            tracing::debug!(%error, "pins left to the load's end");
            transaction
                .execute_batch("ROLLBACK TO pins; RELEASE pins")
                .map_err(index_error("undo pins"))?;
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The statements of [`Store::set_pins`], in `transaction`; `ready`: hashes this
/// transaction has marked READY already (not looked up again).
fn write_pins(
    transaction: &rusqlite::Transaction<'_>,
    plan: &PinPlan,
    now_ms: u64,
    ready: &std::collections::HashSet<&str>,
) -> Result<(), StoreError> {
    let app = plan.app.as_str();
    let manifest_sha256 = check_hash(&plan.manifest_sha256)?;
    let mut hashes = vec![manifest_sha256.clone()];
    for hash in &plan.module_hashes {
        hashes.push(check_hash(hash)?);
    }
    // Set-based: the hashes go in as one JSON array (json_each), not one statement each.
    let hashes_json = serde_json::to_string(&hashes).expect("strings serialize");
    let unchecked: Vec<&str> = hashes
        .iter()
        .map(String::as_str)
        .filter(|sha256| !ready.contains(sha256))
        .collect();
    let not_ready: Option<String> = match unchecked.len() {
        0 => None,
        _ => cached_row(
            transaction,
            "SELECT wanted.value FROM json_each(?1) AS wanted
                 WHERE NOT EXISTS (SELECT 1 FROM files
                                   WHERE sha256 = wanted.value AND state = 'READY')
                 ORDER BY wanted.key LIMIT 1",
            params![serde_json::to_string(&unchecked).expect("strings serialize")],
            |row| row.get(0),
        )
        .optional()
        .map_err(index_error("check pinned files"))?,
    };
    if let Some(sha256) = not_ready {
        return Err(StoreError::NotReady {
            sha256,
            app: app.to_owned(),
        });
    }
    cached_execute(transaction, "DELETE FROM pins WHERE app = ?1", params![app])
        .map_err(index_error("clear pins"))?;
    cached_execute(
        transaction,
        "INSERT OR IGNORE INTO pins (sha256, app) SELECT value, ?2 FROM json_each(?1)",
        params![hashes_json, app],
    )
    .map_err(index_error("insert pins"))?;
    cached_execute(
        transaction,
        "INSERT OR REPLACE INTO manifests
                 (app, manifest_sha256, fresh_at_ms, manifest_url, loaded_at_ms, rollback_floor_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            app,
            manifest_sha256,
            plan.fresh_at_ms.map(to_sql_ms),
            plan.manifest_url,
            to_sql_ms(now_ms),
            plan.rollback_floor_ms.map(to_sql_ms)
        ],
    )
    .map_err(index_error("record app manifest"))?;
    Ok(())
}

impl Store {
    /// The manifest `app` last loaded successfully, its bytes re-checked against its hash.
    pub fn pinned_manifest(&mut self, app: &str) -> Result<Option<PinnedManifest>, StoreError> {
        let record: Option<(String, Option<i64>, String, i64)> = self
            .index
            .query_row(
                "SELECT manifest_sha256, fresh_at_ms, manifest_url, loaded_at_ms
                 FROM manifests WHERE app = ?1",
                params![app],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(index_error("read app manifest"))?;
        let Some((sha256, fresh_at_ms, manifest_url, loaded_at_ms)) = record else {
            return Ok(None);
        };
        let bytes = self.read(&sha256)?;
        Ok(Some(PinnedManifest {
            app: app.to_owned(),
            sha256,
            bytes,
            fresh_at_ms: fresh_at_ms.map(from_sql_ms),
            manifest_url,
            loaded_at_ms: from_sql_ms(loaded_at_ms),
        }))
    }

    /// Evicts least-recently-used READY files that no app pins until the READY files total at
    /// most `budget_bytes`. Pinned files are never evicted.
    pub fn prune(&mut self, budget_bytes: u64) -> Result<PruneReport, StoreError> {
        let (total, pinned_bytes): (i64, i64) = self
            .index
            .query_row(
                "SELECT COALESCE(SUM(size), 0),
                        COALESCE(SUM(CASE WHEN sha256 IN (SELECT sha256 FROM pins)
                                     THEN size ELSE 0 END), 0)
                 FROM files WHERE state = 'READY'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(index_error("sum file sizes"))?;
        let mut remaining = from_sql_ms(total);
        let mut report = PruneReport {
            pinned_bytes: from_sql_ms(pinned_bytes),
            ..PruneReport::default()
        };
        if remaining > budget_bytes {
            let candidates: Vec<(String, u64)> = {
                let mut statement = self
                    .index
                    .prepare(
                        "SELECT sha256, size FROM files
                         WHERE state = 'READY' AND sha256 NOT IN (SELECT sha256 FROM pins)
                         ORDER BY last_used_ms ASC, sha256 ASC",
                    )
                    .map_err(index_error("list eviction candidates"))?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, from_sql_ms(row.get::<_, i64>(1)?)))
                    })
                    .map_err(index_error("list eviction candidates"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(index_error("list eviction candidates"))?
            };
            for (sha256, size) in candidates {
                if remaining <= budget_bytes {
                    break;
                }
                remaining -= size;
                report.freed_bytes += size;
                report.evicted.push(sha256);
            }
            // Rows first: a crash before the files are removed leaves orphans, which the next
            // open removes; never a READY row without its file being trusted.
            let transaction = self
                .index
                .transaction()
                .map_err(index_error("begin prune transaction"))?;
            for sha256 in &report.evicted {
                cached_execute(
                    &transaction,
                    "DELETE FROM files WHERE sha256 = ?1",
                    params![sha256],
                )
                .map_err(index_error("evict row"))?;
            }
            transaction.commit().map_err(index_error("commit prune"))?;
            for sha256 in &report.evicted {
                remove_file_if_present(&self.files_dir.join(sha256))?;
            }
        }
        report.remaining_bytes = remaining;
        report.fits_budget = remaining <= budget_bytes;
        if !report.evicted.is_empty() {
            tracing::info!(
                evicted = report.evicted.len(),
                freed = report.freed_bytes,
                "pruned store"
            );
        }
        Ok(report)
    }

    /// All rows of the files table, by hash.
    pub fn list(&self) -> Result<Vec<FileEntry>, StoreError> {
        let mut statement = self
            .index
            .prepare("SELECT sha256, state, size, last_used_ms, kind FROM files ORDER BY sha256")
            .map_err(index_error("list files"))?;
        let rows = statement
            .query_map([], |row| {
                let state: String = row.get(1)?;
                let kind: String = row.get(4)?;
                Ok(FileEntry {
                    sha256: row.get(0)?,
                    state: FileState::from_sql(&state).unwrap_or(FileState::Dirty),
                    size: from_sql_ms(row.get(2)?),
                    last_used_ms: from_sql_ms(row.get(3)?),
                    kind: FileKind::from_sql(&kind).unwrap_or(FileKind::Module),
                })
            })
            .map_err(index_error("list files"))?;
        rows.collect::<Result<_, _>>()
            .map_err(index_error("list files"))
    }

    /// All pins, by app then hash.
    pub fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        let mut statement = self
            .index
            .prepare("SELECT app, sha256 FROM pins ORDER BY app, sha256")
            .map_err(index_error("list pins"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Pin {
                    app: row.get(0)?,
                    sha256: row.get(1)?,
                })
            })
            .map_err(index_error("list pins"))?;
        rows.collect::<Result<_, _>>()
            .map_err(index_error("list pins"))
    }

    /// Every app with a pinned manifest, by app name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let mut statement = self
            .index
            .prepare(
                "SELECT app, manifest_sha256, fresh_at_ms, manifest_url, loaded_at_ms,
                        rollback_floor_ms
                 FROM manifests ORDER BY app",
            )
            .map_err(index_error("list apps"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(AppRecord {
                    app: row.get(0)?,
                    manifest_sha256: row.get(1)?,
                    fresh_at_ms: row.get::<_, Option<i64>>(2)?.map(from_sql_ms),
                    manifest_url: row.get(3)?,
                    loaded_at_ms: from_sql_ms(row.get(4)?),
                    rollback_floor_ms: row.get::<_, Option<i64>>(5)?.map(from_sql_ms),
                })
            })
            .map_err(index_error("list apps"))?;
        rows.collect::<Result<_, _>>()
            .map_err(index_error("list apps"))
    }

    /// Re-hashes every READY file; corrupt and unreadable files are removed and missing ones
    /// forgotten. One file that can be neither read nor removed does not stop the others: it
    /// is listed in [`VerifyReport::unremovable`]. A read that fails for want of resources
    /// (open files, memory) stops the check, removing nothing for it: the report says so in
    /// [`VerifyReport::stopped`], with what was found before.
    pub fn verify_all(&mut self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let ready = self.hashes_in_state(FileState::Ready)?;
        let total = ready.len();
        for sha256 in ready {
            let path = self.files_dir.join(&sha256);
            let read = match hash_file(&path) {
                Err(error) if short_of_resources(&error) => {
                    // Every file after it would fail the same way: stop, and say what was
                    // found so far (the files removed before the stop among it).
                    let error = io_error("read", &path)(error);
                    report.stopped = Some((total - report.checked, error.to_string()));
                    break;
                }
                read => read,
            };
            report.checked += 1;
            match read {
                Ok((actual, _)) if actual == sha256 => {}
                Ok((actual, _)) => {
                    tracing::warn!(%sha256, %actual, "stored file is corrupt; removing it");
                    remove_file_if_present(&path)?;
                    self.delete_row(&sha256)?;
                    report.corrupt_removed.push(sha256);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.delete_row(&sha256)?;
                    report.missing_forgotten.push(sha256);
                }
                Err(read) => match self.remove_unreadable(&sha256, &path, read) {
                    Ok(()) => report.unreadable_removed.push(sha256),
                    Err(error @ StoreError::Unreadable { .. }) => {
                        report.unremovable.push((sha256, error.to_string()));
                    }
                    Err(error) => return Err(error),
                },
            }
        }
        Ok(report)
    }

    /// Removes a stored file that could not be read (`read`), and its row. One that cannot
    /// be removed either is [`StoreError::Unreadable`], naming it; its row stays.
    fn remove_unreadable(
        &mut self,
        sha256: &str,
        path: &Path,
        read: io::Error,
    ) -> Result<(), StoreError> {
        tracing::warn!(%sha256, path = %path.display(), error = %read, "stored file cannot be read; removing it");
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Unreadable {
                    path: path.to_path_buf(),
                    read,
                    source,
                })
            }
        }
        self.delete_row(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sha256_hex;

    /// The store in `dir`, deciding its batch syncs as on a quiet machine.
    fn open(dir: &Path, now_ms: u64) -> (Store, RecoveryReport) {
        let (mut store, report) = Store::open(dir, now_ms).unwrap();
        store.decide_syncs_as_on_a_quiet_machine();
        (store, report)
    }

    fn put(store: &mut Store, bytes: &[u8], now_ms: u64) -> String {
        let sha256 = sha256_hex(bytes);
        store
            .insert_bytes(&sha256, FileKind::Module, bytes, now_ms)
            .unwrap();
        sha256
    }

    fn files_on_disk(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(FILES_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Starts a write of each of `contents` (module files); their hashes and pending files.
    fn begin_all(store: &mut Store, contents: &[Vec<u8>]) -> (Vec<String>, Vec<PendingFile>) {
        let hashes: Vec<String> = contents.iter().map(|bytes| sha256_hex(bytes)).collect();
        let writes: Vec<(&str, FileKind)> = hashes
            .iter()
            .map(|sha256| (sha256.as_str(), FileKind::Module))
            .collect();
        let pending = store
            .begin_writes(&writes)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        (hashes, pending)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_second_open_of_a_store_in_use_waits_and_recovers_nothing_of_the_first() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut first, _) = open(dir.path(), 1_000);
        // A write in flight: its DIRTY row and temp file are what a recovery would remove.
        let pending = first
            .begin_write(&sha256_hex(b"in flight"), FileKind::Module)
            .unwrap();
        fs::write(pending.temp_path(), b"in flight").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let second = std::thread::spawn(move || {
            let opened = Store::open(&path, 2_000).map(|(_, report)| report);
            tx.send(()).unwrap();
            opened
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second open went ahead while the store was in use"
        );
        assert!(
            pending.temp_path().is_file(),
            "the in-flight write was touched"
        );
        let entry = first.commit(pending, 1_500).unwrap();
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second open once the first handle was dropped");
        let report = second.join().unwrap().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(entry.state, FileState::Ready);
    }

    #[test]
    fn a_version_1_index_gains_the_rollback_floor_column_when_opened() {
        let dir = tempfile::TempDir::new().unwrap();
        fs::create_dir_all(dir.path().join(FILES_DIR)).unwrap();
        {
            let old = Connection::open(dir.path().join(INDEX_FILE)).unwrap();
            old.execute_batch(
                "CREATE TABLE files (sha256 TEXT PRIMARY KEY NOT NULL,
                     state TEXT NOT NULL CHECK (state IN ('DIRTY', 'READY')),
                     size INTEGER NOT NULL DEFAULT 0, last_used_ms INTEGER NOT NULL DEFAULT 0,
                     kind TEXT NOT NULL CHECK (kind IN ('MODULE', 'MANIFEST')));
                 CREATE TABLE manifests (app TEXT PRIMARY KEY NOT NULL,
                     manifest_sha256 TEXT NOT NULL, fresh_at_ms INTEGER,
                     manifest_url TEXT NOT NULL, loaded_at_ms INTEGER NOT NULL);
                 CREATE TABLE pins (sha256 TEXT NOT NULL, app TEXT NOT NULL,
                     PRIMARY KEY (sha256, app));
                 INSERT INTO manifests VALUES ('old', 'aa', 1, 'u', 1);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let (mut store, _) = open(dir.path(), 10);
        assert_eq!(store.rollback_floor("old").unwrap(), None);
        let manifest = br#"{"modules": {}, "unsigned": {"freshAtEpochMs": 42}}"#;
        store
            .insert_manifest_and_pin("new", &sha256_hex(manifest), manifest, &[], None, "u", 11)
            .unwrap();
        assert_eq!(store.rollback_floor("new").unwrap(), Some(42));
        drop(store);
        let (store, _) = open(dir.path(), 12);
        assert_eq!(
            store.rollback_floor("new").unwrap(),
            Some(42),
            "kept across opens"
        );
    }

    #[test]
    fn store_handle_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    #[test]
    fn commit_then_read_returns_the_bytes_under_their_hash() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, report) = open(dir.path(), 1);
        assert!(report.is_clean());
        let bytes = b"module bytes".to_vec();
        let sha256 = sha256_hex(&bytes);
        assert!(!store.contains(&sha256).unwrap());
        let pending = store
            .begin_write(&sha256.to_uppercase(), FileKind::Module)
            .unwrap();
        assert_eq!(
            pending.temp_path().parent(),
            Some(dir.path().join(FILES_DIR).as_path())
        );
        assert_eq!(store.list().unwrap()[0].state, FileState::Dirty);
        fs::write(pending.temp_path(), &bytes).unwrap();
        let entry = store.commit(pending, 5).unwrap();
        assert_eq!(entry.size, bytes.len() as u64);
        assert!(store.contains(&sha256).unwrap());
        assert_eq!(store.read(&sha256).unwrap(), bytes);
        assert_eq!(fs::read(store.path(&sha256).unwrap()).unwrap(), bytes);
        assert_eq!(files_on_disk(dir.path()), vec![sha256.clone()]);
        assert!(matches!(
            store.begin_write(&sha256, FileKind::Module),
            Err(StoreError::AlreadyReady { .. })
        ));
    }

    #[test]
    fn commit_with_wrong_bytes_fails_and_leaves_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let sha256 = sha256_hex(b"expected");
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        fs::write(pending.temp_path(), b"something else").unwrap();
        assert!(matches!(
            store.commit(pending, 2),
            Err(StoreError::HashMismatch { expected, .. }) if expected == sha256
        ));
        assert!(store.list().unwrap().is_empty());
        assert!(files_on_disk(dir.path()).is_empty());
    }

    #[test]
    fn batch_write_commits_good_files_and_discards_only_the_wrong_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stored = put(&mut store, b"already here", 1);
        let good_a = sha256_hex(b"good a");
        let good_b = sha256_hex(b"good b");
        let wrong = sha256_hex(b"expected c");
        let started = store
            .begin_writes(&[
                (&good_a, FileKind::Module),
                ("not a hash", FileKind::Module),
                (&stored, FileKind::Module),
                (&wrong, FileKind::Module),
                (&good_b, FileKind::Manifest),
            ])
            .unwrap();
        assert_eq!(started.len(), 5);
        assert!(matches!(started[1], Err(StoreError::InvalidHash { .. })));
        assert!(matches!(started[2], Err(StoreError::AlreadyReady { .. })));
        let pending: Vec<PendingFile> = started.into_iter().filter_map(Result::ok).collect();
        assert_eq!(pending.len(), 3);
        let dirty = store
            .list()
            .unwrap()
            .into_iter()
            .filter(|entry| entry.state == FileState::Dirty)
            .count();
        assert_eq!(dirty, 3);
        for (file, bytes) in
            pending
                .iter()
                .zip([&b"good a"[..], &b"tampered c"[..], &b"good b"[..]])
        {
            fs::write(file.temp_path(), bytes).unwrap();
        }
        let results = store.commit_many(pending, 7);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().sha256, good_a);
        assert!(matches!(
            &results[1],
            Err(StoreError::HashMismatch { expected, .. }) if *expected == wrong
        ));
        let entry_b = results[2].as_ref().unwrap();
        assert_eq!(
            (entry_b.kind, entry_b.size, entry_b.last_used_ms),
            (FileKind::Manifest, 6, 7)
        );
        let mut expected = vec![stored, good_a, good_b];
        expected.sort();
        assert_eq!(files_on_disk(dir.path()), expected);
        let rows: Vec<(String, FileState)> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|entry| (entry.sha256, entry.state))
            .collect();
        let expected_rows: Vec<(String, FileState)> = expected
            .into_iter()
            .map(|sha256| (sha256, FileState::Ready))
            .collect();
        assert_eq!(rows, expected_rows);
    }

    #[test]
    fn dirty_rows_skip_the_index_sync_but_every_later_commit_is_synced_again() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let synchronous = |store: &Store| -> i64 {
            store
                .index
                .query_row("PRAGMA synchronous", [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&store), 2, "FULL from the open");
        let ready = sha256_hex(b"ready");
        store
            .insert_bytes(&ready, FileKind::Module, b"ready", 1)
            .unwrap();
        let fresh = sha256_hex(b"fresh");
        let started = store
            .begin_writes(&[(&fresh, FileKind::Module), (&ready, FileKind::Module)])
            .unwrap();
        assert!(started[0].is_ok());
        assert!(
            matches!(&started[1], Err(StoreError::AlreadyReady { sha256 }) if *sha256 == ready),
            "a READY row is left alone: {:?}",
            started[1]
        );
        assert_eq!(synchronous(&store), 2, "FULL again after the DIRTY rows");
        assert_eq!(store.state_of(&fresh).unwrap(), Some(FileState::Dirty));
        assert_eq!(store.state_of(&ready).unwrap(), Some(FileState::Ready));
    }

    #[test]
    fn adopt_records_files_written_in_place_and_abandons_only_a_missing_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let present = sha256_hex(b"written in place");
        let missing = sha256_hex(b"never written");
        let pending: Vec<PendingFile> = store
            .begin_writes(&[(&present, FileKind::Module), (&missing, FileKind::Module)])
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pending[0].store_path(), store.path(&present).unwrap());
        fs::write(pending[0].store_path(), b"written in place").unwrap();
        let results = store.adopt_many(pending, 5);
        let entry = results[0].as_ref().unwrap();
        assert_eq!(
            (entry.state, entry.size, entry.last_used_ms, entry.kind),
            (FileState::Ready, 16, 5, FileKind::Module)
        );
        assert!(matches!(
            &results[1],
            Err(StoreError::FileMissing { sha256, .. }) if *sha256 == missing
        ));
        assert_eq!(store.read(&present).unwrap(), b"written in place");
        let rows: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        assert_eq!(
            rows,
            vec![present.clone()],
            "the missing one's DIRTY row is gone"
        );
        assert_eq!(files_on_disk(dir.path()), vec![present]);
    }

    #[test]
    fn a_large_adopted_batch_is_recorded_with_one_sync_and_a_missing_file_fails_alone() {
        // Enough files for the batch path (one syncfs on Linux instead of a sync per file).
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let contents: Vec<Vec<u8>> = (0..20).map(|n| vec![b'a' + n as u8; 100 + n]).collect();
        let (hashes, pending) = begin_all(&mut store, &contents);
        for (index, (file, bytes)) in pending.iter().zip(&contents).enumerate() {
            if index != 7 {
                fs::write(file.store_path(), bytes).unwrap();
            }
        }
        let results = store.adopt_many(pending, 9);
        drop(store);
        all_stored_but_one(dir.path(), &results, &hashes, &contents, 7);
    }

    /// Every write of a batch is READY with its bytes' size except `missing`'s, which failed
    /// as missing; a reopened store is clean and holds exactly the others' bytes.
    fn all_stored_but_one(
        dir: &Path,
        results: &[Result<FileEntry, StoreError>],
        hashes: &[String],
        contents: &[Vec<u8>],
        missing: usize,
    ) {
        for (index, (result, bytes)) in results.iter().zip(contents).enumerate() {
            if index == missing {
                assert!(
                    matches!(result, Err(StoreError::FileMissing { sha256, .. }) if *sha256 == hashes[missing]),
                    "{result:?}"
                );
            } else {
                let entry = result.as_ref().unwrap();
                assert_eq!(
                    (entry.state, entry.size),
                    (FileState::Ready, bytes.len() as u64)
                );
            }
        }
        let (mut store, report) = open(dir, 100);
        assert!(report.is_clean(), "{report:?}");
        for (index, (sha256, bytes)) in hashes.iter().zip(contents).enumerate() {
            if index == missing {
                assert!(!store.contains(sha256).unwrap());
            } else {
                assert_eq!(&store.read(sha256).unwrap(), bytes);
            }
        }
    }

    /// Writes each planned file's bytes at its store path (all but `missing`'s) and claims
    /// the size written, as the engine's writer does.
    fn write_and_claim(
        pending: Vec<PendingFile>,
        contents: &[Vec<u8>],
        missing: Option<usize>,
    ) -> Vec<PendingFile> {
        pending
            .into_iter()
            .zip(contents)
            .enumerate()
            .map(|(index, (file, bytes))| {
                if Some(index) != missing {
                    fs::write(file.store_path(), bytes).unwrap();
                }
                file.written(bytes.len() as u64)
            })
            .collect()
    }

    #[test]
    fn a_batch_recorded_with_its_writers_sizes_still_finds_a_missing_or_resized_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let contents: Vec<Vec<u8>> = (0..20).map(|n| vec![b'k' + n as u8; 200 + n]).collect();
        let (hashes, pending) = begin_all(&mut store, &contents);
        let mut claimed = Vec::new();
        for (index, (file, bytes)) in pending.into_iter().zip(&contents).enumerate() {
            if index != 7 {
                fs::write(file.store_path(), bytes).unwrap();
            }
            // File 3's writer reports a byte more than is there.
            let reported = bytes.len() as u64 + u64::from(index == 3);
            claimed.push(file.written(reported));
        }
        let results = store.adopt_many(claimed, 4);
        drop(store);
        // What is there is recorded (file 3's real size), not what was reported.
        all_stored_but_one(dir.path(), &results, &hashes, &contents, 7);
    }

    #[test]
    fn a_batch_recorded_with_its_writers_sizes_takes_them_when_they_hold() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let contents: Vec<Vec<u8>> = (0..20).map(|n| vec![b'A' + n as u8; 50 + n]).collect();
        let (hashes, pending) = begin_all(&mut store, &contents);
        let claimed = write_and_claim(pending, &contents, None);
        let plan = PinPlan {
            app: "app".into(),
            manifest_sha256: hashes[0].clone(),
            module_hashes: hashes[1..].to_vec(),
            fresh_at_ms: Some(1),
            manifest_url: "http://127.0.0.1:1/m.json".into(),
            rollback_floor_ms: Some(3),
        };
        let (results, pinned) = store.adopt_many_and_pin(claimed, 6, Some(&plan));
        assert!(pinned, "every pinned hash was made READY by the batch");
        assert_eq!(store.rollback_floor("app").unwrap(), Some(3));
        for (result, bytes) in results.iter().zip(&contents) {
            let entry = result.as_ref().unwrap();
            assert_eq!(
                (entry.state, entry.size),
                (FileState::Ready, bytes.len() as u64)
            );
        }
        let mut want = hashes.clone();
        want.sort();
        assert_eq!(pins_of(&store, "app"), want);
    }

    /// The pins of `app`, sorted.
    fn pins_of(store: &Store, app: &str) -> Vec<String> {
        let mut pins: Vec<String> = store
            .pins()
            .unwrap()
            .into_iter()
            .filter(|pin| pin.app == app)
            .map(|pin| pin.sha256)
            .collect();
        pins.sort();
        pins
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_batch_adopted_whole_takes_the_apps_pins_in_its_transaction_unless_one_is_not_ready() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let old = put(&mut store, b"old module", 1);
        let old_manifest = put(&mut store, b"old manifest", 1);
        store
            .set_pins(
                "app",
                &old_manifest,
                std::slice::from_ref(&old),
                None,
                "http://h/m",
                1,
            )
            .unwrap();
        let before = pins_of(&store, "app");
        // A batch large enough for one syncfs: 11 modules and the manifest; the second plan
        // also names a module that is nowhere.
        for (round, missing) in [(0u8, true), (1, false)] {
            let contents: Vec<Vec<u8>> = (0..12)
                .map(|n| vec![b'a' + n as u8 + 20 * round; 50])
                .collect();
            let (hashes, pending) = begin_all(&mut store, &contents);
            for (file, bytes) in pending.iter().zip(&contents) {
                fs::write(file.store_path(), bytes).unwrap();
            }
            let mut modules = hashes[..11].to_vec();
            if missing {
                modules.push(sha256_hex(b"nowhere"));
            }
            let plan = PinPlan {
                app: "app".into(),
                manifest_sha256: hashes[11].clone(),
                module_hashes: modules.clone(),
                fresh_at_ms: Some(7),
                manifest_url: "http://h/new".into(),
                rollback_floor_ms: None,
            };
            let (results, pinned) = store.adopt_many_and_pin(pending, 2, Some(&plan));
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            // Recorded either way; pinned only when every pinned hash is READY.
            assert!(hashes.iter().all(|sha256| store.contains(sha256).unwrap()));
            assert_eq!(pinned, !missing, "round {round}");
            if missing {
                assert_eq!(pins_of(&store, "app"), before, "the old pins stay");
            } else {
                let mut want = hashes.clone();
                want.sort();
                assert_eq!(pins_of(&store, "app"), want);
                let app = store
                    .apps()
                    .unwrap()
                    .into_iter()
                    .find(|a| a.app == "app")
                    .unwrap();
                assert_eq!(app.manifest_sha256, hashes[11]);
            }
        }
        // Committed for good: a reopened store has the same pins.
        let after = pins_of(&store, "app");
        drop(store);
        let (store, report) = open(dir.path(), 3);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(pins_of(&store, "app"), after);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn syncing_ahead_runs_rounds_until_finished_and_only_for_batches_that_use_syncfs() {
        let dir = tempfile::TempDir::new().unwrap();
        let (store, _) = open(dir.path(), 1);
        assert!(
            store.sync_ahead(SYNCFS_MIN_FILES - 1).is_none(),
            "a batch synced file by file gains nothing from syncfs rounds"
        );
        let ahead = store.sync_ahead(SYNCFS_MIN_FILES).expect("rounds start");
        fs::write(dir.path().join(FILES_DIR).join("written-meanwhile"), b"x").unwrap();
        // Round after round until finished (a syncfs may take long on a busy disk: wait for
        // the rounds, not for a time).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ahead.rounds() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(SYNC_AHEAD_PAUSE);
        }
        let rounds = ahead.finish();
        assert!(rounds >= 3, "{rounds} rounds");

        // Dropped without `finish`, the thread still stops (the drop joins it).
        let ahead = store.sync_ahead(SYNCFS_MIN_FILES).expect("rounds start");
        drop(ahead);
    }

    #[test]
    fn a_batch_is_synced_file_by_file_while_others_have_much_data_waiting_for_writeback() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        // A quiet machine: one syncfs (and rounds ahead of it).
        store.pending_writeback = || Some(1 << 20);
        assert!(store.syncfs_pays(SYNCFS_MIN_FILES, 0));
        drop(store.sync_ahead(SYNCFS_MIN_FILES).expect("rounds start"));
        // 4 GiB written by someone else and not on disk yet: a syncfs would wait for it all.
        store.pending_writeback = || Some(4 << 30);
        assert!(!store.syncfs_pays(SYNCFS_MIN_FILES, 16 << 20));
        assert!(
            store.sync_ahead(SYNCFS_MIN_FILES).is_none(),
            "no syncfs rounds while others' data waits"
        );
        // The batch still ends durable and recorded, file by file; a missing file fails alone.
        let contents: Vec<Vec<u8>> = (0..20).map(|n| vec![b'k' + n as u8; 50 + n]).collect();
        let (hashes, pending) = begin_all(&mut store, &contents);
        let results = store.adopt_many(write_and_claim(pending, &contents, Some(3)), 9);
        drop(store);
        all_stored_but_one(dir.path(), &results, &hashes, &contents, 3);
    }

    #[test]
    fn a_file_written_in_place_but_never_adopted_is_kept_if_complete_and_removed_if_not() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let complete = sha256_hex(b"crash before adopt");
        let pending = store.begin_write(&complete, FileKind::Module).unwrap();
        fs::write(pending.store_path(), b"crash before adopt").unwrap();
        let cut = sha256_hex(b"cut short by the crash");
        let pending = store.begin_write(&cut, FileKind::Module).unwrap();
        fs::write(pending.store_path(), b"cut short").unwrap();
        drop(store);
        let (mut store, report) = open(dir.path(), 2);
        assert_eq!(report.dirty_kept, vec![complete.clone()]);
        assert_eq!(report.dirty_removed, vec![cut.clone()]);
        assert!(store.contains(&complete).unwrap());
        assert!(!store.contains(&cut).unwrap());
        assert_eq!(files_on_disk(dir.path()), vec![complete.clone()]);
        assert_eq!(store.read(&complete).unwrap(), b"crash before adopt");
    }

    #[test]
    fn planned_writes_get_their_rows_only_when_recorded_and_a_crash_before_removes_the_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stored = put(&mut store, b"stored", 1);
        let new = sha256_hex(b"planned");
        let writes = [
            (new.as_str(), FileKind::Module),
            ("not a hash", FileKind::Module),
            (stored.as_str(), FileKind::Module),
        ];
        let planned = store.plan_writes(&writes);
        assert!(matches!(planned[1], Err(StoreError::InvalidHash { .. })));
        let file = planned.into_iter().next().unwrap().unwrap();
        assert_eq!(
            store.state_of(&new).unwrap(),
            None,
            "no row before it is recorded"
        );
        fs::write(file.store_path(), b"planned").unwrap();
        let recorded = store.record_writes(&writes).unwrap();
        assert_eq!(recorded[0].as_deref().ok(), Some(new.as_str()));
        assert!(matches!(recorded[1], Err(StoreError::InvalidHash { .. })));
        assert!(matches!(recorded[2], Err(StoreError::AlreadyReady { .. })));
        assert_eq!(store.state_of(&new).unwrap(), Some(FileState::Dirty));
        assert!(store.adopt_many(vec![file], 2)[0].is_ok());
        assert!(store.contains(&new).unwrap());
        // Planned and written, never recorded (a crash first): an orphan the next open removes.
        let lost = sha256_hex(b"lost");
        let file = store
            .plan_writes(&[(&lost, FileKind::Module)])
            .pop()
            .unwrap()
            .unwrap();
        fs::write(file.store_path(), b"lost").unwrap();
        drop(store);
        let (store, _) = open(dir.path(), 3);
        assert!(!store.contains(&lost).unwrap());
        assert_eq!(files_on_disk(dir.path()), {
            let mut kept = vec![stored, new];
            kept.sort();
            kept
        });
    }

    #[test]
    fn an_empty_store_contains_nothing_and_still_refuses_a_bad_hash() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let a = sha256_hex(b"a");
        assert_eq!(store.contains_many(&[&a, &a]).unwrap(), vec![false, false]);
        assert!(matches!(
            store.contains_many(&[&a, "nope"]),
            Err(StoreError::InvalidHash { .. })
        ));
        put(&mut store, b"a", 1);
        assert_eq!(
            store.contains_many(&[&a, &sha256_hex(b"b")]).unwrap(),
            vec![true, false]
        );
    }

    #[test]
    fn abort_of_a_write_in_place_removes_its_file_but_never_a_stored_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let sha256 = sha256_hex(b"aborted");
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        fs::write(pending.store_path(), b"aborted").unwrap();
        store.abort(pending).unwrap();
        assert!(files_on_disk(dir.path()).is_empty());
        // A hash given twice: the second write's abort leaves the first's stored file.
        let twice = store
            .begin_writes(&[(&sha256, FileKind::Module), (&sha256, FileKind::Module)])
            .unwrap();
        let mut twice = twice.into_iter().map(Result::unwrap);
        let (first, second) = (twice.next().unwrap(), twice.next().unwrap());
        fs::write(first.store_path(), b"aborted").unwrap();
        assert!(store.adopt_many(vec![first], 2)[0].is_ok());
        store.abort(second).unwrap();
        assert_eq!(store.read(&sha256).unwrap(), b"aborted");
    }

    #[test]
    fn read_rechecks_the_hash_and_removes_a_corrupt_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let sha256 = put(&mut store, b"original", 1);
        fs::write(store.path(&sha256).unwrap(), b"flipped!").unwrap();
        assert!(matches!(
            store.read(&sha256),
            Err(StoreError::Corrupt { sha256: reported, .. }) if reported == sha256
        ));
        assert!(!store.contains(&sha256).unwrap());
        assert!(files_on_disk(dir.path()).is_empty());
        assert!(matches!(
            store.read(&sha256),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn path_rejects_non_hash_names() {
        let dir = tempfile::TempDir::new().unwrap();
        let (store, _) = open(dir.path(), 1);
        assert!(matches!(
            store.path("../index.sqlite"),
            Err(StoreError::InvalidHash { .. })
        ));
    }

    #[test]
    fn reopen_after_crash_before_commit_commits_a_complete_temp_file_and_removes_the_rest() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let kept = put(&mut store, b"kept", 1);
        let sha256 = sha256_hex(b"interrupted");
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        fs::write(pending.temp_path(), b"interrupted").unwrap();
        let cut = sha256_hex(b"interrupted midway");
        let pending_cut = store.begin_write(&cut, FileKind::Module).unwrap();
        fs::write(pending_cut.temp_path(), b"interrupted mid").unwrap();
        // A row whose download never started: forgotten, not reported.
        let unstarted = sha256_hex(b"never started");
        store.begin_write(&unstarted, FileKind::Module).unwrap();
        drop((pending, pending_cut));
        drop(store);

        let (mut store, report) = open(dir.path(), 2);
        assert_eq!(report.dirty_kept, vec![sha256.clone()]);
        assert_eq!(report.dirty_removed, vec![cut.clone()]);
        assert!(report.temp_files_removed.is_empty(), "{report:?}");
        let mut expected = vec![kept.clone(), sha256.clone()];
        expected.sort();
        assert_eq!(files_on_disk(dir.path()), expected);
        let mut hashes: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        hashes.sort();
        assert_eq!(hashes, expected);
        assert_eq!(store.read(&sha256).unwrap(), b"interrupted");
    }

    /// A small tmpfs mounted for a test, unmounted when dropped; `None` where this process
    /// may not mount (not root, or no CAP_SYS_ADMIN).
    #[cfg(target_os = "linux")]
    struct SmallDisk(tempfile::TempDir);

    #[cfg(target_os = "linux")]
    impl SmallDisk {
        fn mount(size: &str) -> Option<SmallDisk> {
            let dir = tempfile::TempDir::new().unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            mounted.then_some(SmallDisk(dir))
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        /// Fills what space is left with a file of someone else's.
        fn fill(&self) {
            let mut file = fs::File::create(self.path().join("filler")).unwrap();
            while std::io::Write::write_all(&mut file, &[0u8; 4096]).is_ok() {}
        }
    }

    #[cfg(target_os = "linux")]
    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_store_on_a_full_disk_evicts_unpinned_files_to_open_and_keeps_the_pinned_ones() {
        // A load that ran out of space left DIRTY rows the index could not delete, and every
        // later command (a load of the pinned app, the prune that would free space) failed
        // when the store opened, for want of room for the index's journal.
        let Some(disk) = SmallDisk::mount("2m") else {
            eprintln!("skipped: this process may not mount a tmpfs (needs root)");
            return;
        };
        let cache = disk.path().join("cache");
        let (mut store, _) = open(&cache, 1);
        let pinned = put(&mut store, &[7u8; 20_000], 1);
        store
            .set_pins("app", &pinned, &[], None, "https://a.test/m.json", 1)
            .unwrap();
        let unpinned: Vec<String> = (0..3u8)
            .map(|n| put(&mut store, &vec![n; 200_000], 2 + u64::from(n)))
            .collect();
        // Interrupted writes, and a disk filled to the last byte by someone else.
        for n in 0..5u32 {
            let sha256 = sha256_hex(&n.to_le_bytes());
            store.begin_write(&sha256, FileKind::Module).unwrap();
        }
        drop(store);
        disk.fill();

        let (mut store, report) = open(&cache, 10);
        assert!(!report.evicted_for_room.is_empty(), "{report:?}");
        assert_eq!(
            report.evicted_for_room[..],
            unpinned[..report.evicted_for_room.len()],
            "least recently used first"
        );
        assert!(store.contains(&pinned).unwrap(), "the pinned file stays");
        assert_eq!(store.read(&pinned).unwrap(), vec![7u8; 20_000]);
        for sha256 in &report.evicted_for_room {
            assert!(!store.contains(sha256).unwrap());
            assert!(!cache.join("files").join(sha256).exists());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_store_on_a_full_disk_with_a_directory_under_a_temp_name_still_opens() {
        // Making room removed every temp name with remove_file, which fails on a directory
        // (recovery leaves those alone), and the store did not open.
        let Some(disk) = SmallDisk::mount("2m") else {
            eprintln!("skipped: this process may not mount a tmpfs (needs root)");
            return;
        };
        let cache = disk.path().join("cache");
        let (mut store, _) = open(&cache, 1);
        for n in 0..3u8 {
            put(&mut store, &vec![n; 200_000], 2 + u64::from(n));
        }
        for n in 0..5u32 {
            let sha256 = sha256_hex(&n.to_le_bytes());
            let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
            if n == 0 {
                fs::create_dir(pending.temp_path()).unwrap();
            }
        }
        drop(store);
        disk.fill();
        let opened = Store::open(&cache, 10);
        assert!(opened.is_ok(), "{:?}", opened.err());
    }

    #[test]
    fn a_directory_in_place_of_an_interrupted_write_is_left_alone_and_the_store_opens() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let sha256 = sha256_hex(b"a directory took its place");
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        fs::create_dir(pending.store_path()).unwrap();
        fs::write(pending.temp_path(), b"a directory took its place").unwrap();
        // The write's commit fails (its name is taken by a directory) and leaves it alone.
        assert!(store.commit(pending, 2).is_err());
        assert!(store.path(&sha256).unwrap().is_dir());
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        drop(pending);
        drop(store);
        let (store, report) = open(dir.path(), 3);
        assert!(
            report.dirty_kept.is_empty() && report.dirty_removed.is_empty(),
            "{report:?}"
        );
        assert!(store.path(&sha256).unwrap().is_dir(), "left alone");
        assert!(!store.contains(&sha256).unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn reopen_after_crash_between_rename_and_index_update_keeps_a_complete_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let sha256 = sha256_hex(b"renamed but not indexed");
        let pending = store.begin_write(&sha256, FileKind::Module).unwrap();
        fs::write(pending.temp_path(), b"renamed but not indexed").unwrap();
        let final_path = store.path(&sha256).unwrap();
        fs::rename(pending.temp_path(), &final_path).unwrap();
        drop(store);

        let (mut store, report) = open(dir.path(), 2);
        assert_eq!(report.dirty_kept, vec![sha256.clone()]);
        assert!(store.contains(&sha256).unwrap());
        // One damaged by the crash instead (its last write lost): removed, and it can be
        // written again.
        let other = sha256_hex(b"renamed, then cut");
        let other_path = store.path(&other).unwrap();
        store.begin_write(&other, FileKind::Module).unwrap();
        fs::write(&other_path, b"renamed, th").unwrap();
        drop(store);
        let (mut store, report) = open(dir.path(), 3);
        assert_eq!(report.dirty_removed, vec![other.clone()]);
        assert!(!other_path.exists());
        assert!(!store.contains(&other).unwrap());
        let pending = store.begin_write(&other, FileKind::Module).unwrap();
        fs::write(pending.temp_path(), b"renamed, then cut").unwrap();
        store.commit(pending, 4).unwrap();
        assert!(store.contains(&other).unwrap());
        assert!(store.contains(&sha256).unwrap());
    }

    #[test]
    fn reopen_removes_orphan_files_and_forgets_rows_without_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let vanished = put(&mut store, b"vanishes", 1);
        let kept = put(&mut store, b"kept", 1);
        let truncated = put(&mut store, b"truncated later", 1);
        drop(store);
        let orphan = sha256_hex(b"orphan");
        fs::write(dir.path().join(FILES_DIR).join(&orphan), b"orphan").unwrap();
        fs::write(dir.path().join(FILES_DIR).join("junk.txt"), b"junk").unwrap();
        fs::write(
            dir.path().join(FILES_DIR).join(format!("x{TEMP_SUFFIX}")),
            b"t",
        )
        .unwrap();
        fs::remove_file(dir.path().join(FILES_DIR).join(&vanished)).unwrap();
        fs::write(dir.path().join(FILES_DIR).join(&truncated), b"trunc").unwrap();

        let (store, report) = open(dir.path(), 2);
        let mut orphans = vec![orphan, "junk.txt".to_owned()];
        orphans.sort();
        assert_eq!(report.orphan_files_removed, orphans);
        assert_eq!(report.temp_files_removed, vec![format!("x{TEMP_SUFFIX}")]);
        assert_eq!(report.missing_files_forgotten, vec![vanished]);
        assert_eq!(report.wrong_size_removed, vec![truncated]);
        assert_eq!(files_on_disk(dir.path()), vec![kept.clone()]);
        let hashes: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        assert_eq!(hashes, vec![kept]);
    }

    #[test]
    fn prune_evicts_least_recently_used_first_and_never_pinned_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        // 10 bytes each.
        let pinned_oldest = put(&mut store, b"pinned-000", 10);
        let manifest = put(&mut store, b"manifest-0", 11);
        let old = put(&mut store, b"unpinned-1", 20);
        let middle = put(&mut store, b"unpinned-2", 30);
        let recent = put(&mut store, b"unpinned-3", 40);
        store.touch(&old, 50).unwrap(); // `old` is now the most recently used
        store
            .set_pins(
                "app",
                &manifest,
                std::slice::from_ref(&pinned_oldest),
                Some(5),
                "https://x/m",
                60,
            )
            .unwrap();

        let report = store.prune(30).unwrap();
        assert_eq!(report.evicted, vec![middle.clone(), recent.clone()]);
        assert_eq!(report.freed_bytes, 20);
        assert_eq!(report.remaining_bytes, 30);
        assert_eq!(report.pinned_bytes, 20);
        assert!(report.fits_budget);
        assert!(store.contains(&old).unwrap());

        // A budget below the pinned bytes evicts everything else, never the pins.
        let report = store.prune(0).unwrap();
        assert_eq!(report.evicted, vec![old]);
        assert!(!report.fits_budget);
        assert!(store.contains(&pinned_oldest).unwrap());
        assert!(store.contains(&manifest).unwrap());
        let mut expected_files = vec![pinned_oldest, manifest];
        expected_files.sort();
        assert_eq!(files_on_disk(dir.path()), expected_files);
    }

    #[test]
    fn a_manifest_inserted_and_pinned_together_is_ready_pinned_and_leaves_the_index_synced() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let module = sha256_hex(b"module");
        store
            .insert_bytes(&module, FileKind::Module, b"module", 1)
            .unwrap();
        let manifest = sha256_hex(b"{}");
        store
            .insert_manifest_and_pin(
                "app",
                &manifest,
                b"{}",
                std::slice::from_ref(&module),
                Some(7),
                "u",
                2,
            )
            .unwrap();
        assert_eq!(store.read(&manifest).unwrap(), b"{}");
        let pinned: Vec<String> = {
            let mut statement = store
                .index
                .prepare("SELECT sha256 FROM pins WHERE app = 'app' ORDER BY sha256")
                .unwrap();
            let rows = statement.query_map([], |row| row.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        let mut expected = vec![manifest.clone(), module.clone()];
        expected.sort();
        assert_eq!(pinned, expected);
        let synchronous: i64 = store
            .index
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            synchronous, 2,
            "FULL again after the manifest's deferred commit"
        );

        // A module that is not stored: the manifest is stored, the old pins stay.
        let other = sha256_hex(b"{\"v\":2}");
        let missing = sha256_hex(b"missing");
        let error = store
            .insert_manifest_and_pin(
                "app",
                &other,
                b"{\"v\":2}",
                std::slice::from_ref(&missing),
                None,
                "u",
                3,
            )
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::NotReady { sha256, .. } if *sha256 == missing),
            "{error:?}"
        );
        assert_eq!(store.state_of(&other).unwrap(), Some(FileState::Ready));
        assert_eq!(
            store.pinned_manifest("app").unwrap().map(|m| m.sha256),
            Some(manifest)
        );
    }

    #[test]
    fn set_pins_replaces_the_apps_pins_and_rejects_unstored_hashes() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let manifest_v1 = put(&mut store, b"manifest v1", 1);
        let manifest_v2 = put(&mut store, b"manifest v2", 1);
        let shared = put(&mut store, b"shared module", 1);
        let old_only = put(&mut store, b"old module", 1);
        store
            .set_pins(
                "a",
                &manifest_v1,
                &[shared.clone(), old_only.clone()],
                Some(1),
                "u1",
                2,
            )
            .unwrap();
        store
            .set_pins(
                "b",
                &manifest_v1,
                std::slice::from_ref(&shared),
                None,
                "u1",
                2,
            )
            .unwrap();
        store
            .set_pins(
                "a",
                &manifest_v2,
                std::slice::from_ref(&shared),
                Some(3),
                "u2",
                4,
            )
            .unwrap();
        let mut expected = vec![
            Pin {
                app: "a".into(),
                sha256: manifest_v2.clone(),
            },
            Pin {
                app: "a".into(),
                sha256: shared.clone(),
            },
            Pin {
                app: "b".into(),
                sha256: manifest_v1.clone(),
            },
            Pin {
                app: "b".into(),
                sha256: shared.clone(),
            },
        ];
        expected.sort();
        assert_eq!(store.pins().unwrap(), expected);

        let missing = sha256_hex(b"never stored");
        assert!(matches!(
            store.set_pins("a", &manifest_v1, &[missing], Some(9), "u3", 5),
            Err(StoreError::NotReady { .. })
        ));
        assert_eq!(store.pins().unwrap(), expected);
        let pinned = store.pinned_manifest("a").unwrap().unwrap();
        assert_eq!(pinned.bytes, b"manifest v2");
        assert_eq!(pinned.fresh_at_ms, Some(3));
        assert_eq!(pinned.manifest_url, "u2");
        assert_eq!(pinned.loaded_at_ms, 4);
        assert!(store.pinned_manifest("nobody").unwrap().is_none());
        let apps: Vec<(String, String, Option<u64>)> = store
            .apps()
            .unwrap()
            .into_iter()
            .map(|record| (record.app, record.manifest_sha256, record.fresh_at_ms))
            .collect();
        assert_eq!(
            apps,
            vec![
                ("a".to_owned(), manifest_v2.clone(), Some(3)),
                ("b".to_owned(), manifest_v1.clone(), None)
            ]
        );
    }

    #[test]
    fn verify_all_removes_corrupt_files_and_forgets_missing_ones() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let good = put(&mut store, b"good", 1);
        let corrupt = put(&mut store, b"corrupt", 1);
        let missing = put(&mut store, b"missing", 1);
        fs::write(store.path(&corrupt).unwrap(), b"CORRUPT").unwrap();
        fs::remove_file(store.path(&missing).unwrap()).unwrap();
        let report = store.verify_all().unwrap();
        assert_eq!(report.checked, 3);
        assert_eq!(report.corrupt_removed, vec![corrupt]);
        assert_eq!(report.missing_forgotten, vec![missing]);
        let hashes: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        assert_eq!(hashes, vec![good]);
    }

    /// Makes the stored file of `sha256` unreadable in a way that holds even for root (who
    /// reads files whatever their mode): a symlink to itself, which fails to open (ELOOP) but
    /// can be removed.
    #[cfg(unix)]
    fn make_unreadable(store: &Store, sha256: &str) -> PathBuf {
        let path = store.path(sha256).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&path, &path).unwrap();
        assert!(File::open(&path).is_err());
        path
    }

    /// Makes the stored file of `sha256` unreadable and impossible to remove as a file: a
    /// directory with something in it.
    fn make_unremovable(store: &Store, sha256: &str) -> PathBuf {
        let path = store.path(sha256).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn recheck_removes_an_unreadable_stored_file_like_a_corrupt_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let good = put(&mut store, b"good", 1);
        let unreadable = put(&mut store, b"unreadable", 1);
        let path = make_unreadable(&store, &unreadable);
        let kept = store.recheck_many(&[&good, &unreadable]).unwrap();
        assert_eq!(kept, vec![true, false]);
        assert!(fs::symlink_metadata(&path).is_err(), "the file stayed");
        assert!(!store.contains(&unreadable).unwrap());
        // It can be stored again.
        put(&mut store, b"unreadable", 2);
        assert_eq!(store.recheck_many(&[&unreadable]).unwrap(), vec![true]);
    }

    /// In the test process: runs the test `name` again in a child of the test binary under
    /// `ulimit -n 64` (its exhaustion of descriptors must not touch the other tests'
    /// threads), checks that it passed, and returns true. In that child: false (go on).
    #[cfg(target_os = "linux")]
    fn ran_in_a_child_with_few_descriptors(name: &str) -> bool {
        const CHILD: &str = "HAUL_TEST_FD_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return false;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" --exact \"$1\" --test-threads=1 --nocapture")
            .arg(exe)
            .arg(name)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        true
    }

    /// Run in a child of the test binary under `ulimit -n 64` (the exhaustion of descriptors
    /// below must not touch the other tests' threads): with every descriptor taken, the
    /// re-check fails with `Io` and the stored file, not at fault, stays.
    #[cfg(target_os = "linux")]
    #[test]
    fn recheck_out_of_file_descriptors_fails_and_removes_nothing() {
        if ran_in_a_child_with_few_descriptors(
            "store::tests::recheck_out_of_file_descriptors_fails_and_removes_nothing",
        ) {
            return;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stored = put(&mut store, b"stored", 1);
        let path = store.path(&stored).unwrap();
        let mut held = Vec::new();
        while let Ok(f) = File::open("/dev/null") {
            held.push(f);
        }
        let result = store.recheck_many(&[&stored]);
        drop(held);
        match result {
            Err(StoreError::Io { op: "read", .. }) => {}
            other => panic!("expected Io on read, got {other:?}"),
        }
        assert!(path.is_file(), "the stored file stays");
        assert!(store.contains(&stored).unwrap());
        assert_eq!(store.recheck_many(&[&stored]).unwrap(), vec![true]);
    }

    /// Like the re-check above, in a child under `ulimit -n 64`: `verify_all` out of file
    /// descriptors stops with a report (not an error that would lose what it found), saying
    /// how many files it left unchecked and why; it removes nothing for it.
    #[cfg(target_os = "linux")]
    #[test]
    fn verify_all_out_of_file_descriptors_reports_what_it_left_unchecked() {
        if ran_in_a_child_with_few_descriptors(
            "store::tests::verify_all_out_of_file_descriptors_reports_what_it_left_unchecked",
        ) {
            return;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stored = [put(&mut store, b"one", 1), put(&mut store, b"two", 1)];
        let mut held = Vec::new();
        while let Ok(f) = File::open("/dev/null") {
            held.push(f);
        }
        let report = store.verify_all();
        drop(held);
        let report = report.expect("a report, not an error");
        assert_eq!(report.checked, 0);
        assert_eq!(report.damaged(), 0);
        let (unchecked, why) = report.stopped.expect("stopped early");
        assert_eq!(unchecked, 2);
        assert!(why.contains("read"), "{why}");
        for sha256 in &stored {
            assert!(store.path(sha256).unwrap().is_file(), "{sha256} stays");
        }
        let report = store.verify_all().unwrap();
        assert_eq!((report.checked, report.stopped), (2, None));
    }

    /// A directory without an index is adopted only if its files/ holds nothing but names
    /// haul writes: one with other files (a directory given to --cache by mistake) is refused
    /// and keeps them (the clean-up used to delete them as orphans); one whose index a crash
    /// lost is cleaned up as usual.
    #[test]
    fn open_refuses_a_directory_without_index_whose_files_haul_did_not_write() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = dir.path().join(FILES_DIR);
        fs::create_dir_all(&files).unwrap();
        fs::write(files.join("thesis.txt"), b"years of work").unwrap();
        let lost = sha256_hex(b"lost");
        fs::write(files.join(&lost), b"lost").unwrap();
        match Store::open(dir.path(), 1) {
            Err(error @ StoreError::NotAStore { .. }) => {
                assert!(error.to_string().contains("thesis.txt"), "{error}");
            }
            other => panic!("expected NotAStore, got {other:?}"),
        }
        assert_eq!(
            fs::read(files.join("thesis.txt")).unwrap(),
            b"years of work"
        );
        assert!(files.join(&lost).is_file());
        assert!(!dir.path().join(INDEX_FILE).exists(), "no index created");
        // An empty index.sqlite (made by hand, or a crash right after its creation) is a new
        // store too.
        fs::write(dir.path().join(INDEX_FILE), b"").unwrap();
        assert!(matches!(
            Store::open(dir.path(), 1),
            Err(StoreError::NotAStore { .. })
        ));
        assert!(files.join("thesis.txt").is_file());
        // Another program's database is not taken over: no table of haul's is added.
        fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        {
            let other = Connection::open(dir.path().join(INDEX_FILE)).unwrap();
            other
                .execute_batch("CREATE TABLE notes (text TEXT);")
                .unwrap();
        }
        assert!(matches!(
            Store::open(dir.path(), 1),
            Err(StoreError::NoSchema { .. })
        ));
        assert!(files.join("thesis.txt").is_file());
        let tables: i64 = Connection::open(dir.path().join(INDEX_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .unwrap();
        assert_eq!(tables, 1, "only its own table");
        fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        // Only haul's names (a stored file, a pending write, the engine's working files of
        // a download into files/): a store whose index was lost.
        fs::remove_file(files.join("thesis.txt")).unwrap();
        let pending = format!("{lost}.123-4{TEMP_SUFFIX}");
        fs::write(files.join(&pending), b"lo").unwrap();
        let working = [
            format!("{lost}.haul-state"),
            format!("{lost}.haul-state.tmp"),
            format!("{lost}.haul-copy"),
        ];
        for name in &working {
            fs::write(files.join(name), b"w").unwrap();
        }
        let (_store, report) = open(dir.path(), 1);
        let mut orphans = working.to_vec();
        orphans.push(lost);
        orphans.sort();
        assert_eq!(report.orphan_files_removed, orphans);
        assert_eq!(report.temp_files_removed, vec![pending]);
    }

    #[test]
    fn names_written_by_haul_are_hashes_pending_writes_and_working_files() {
        let sha = sha256_hex(b"x");
        for ours in [
            sha.clone(),
            format!("{sha}.12-3.haul-part"),
            format!("{sha}.haul-part"),
            format!("{sha}.haul-state.tmp"),
            format!("{sha}.12-3.haul-part.haul-state"),
        ] {
            assert!(written_by_haul(&ours), "{ours}");
        }
        for foreign in [
            "thesis.txt".to_string(),
            sha.to_uppercase(),
            format!("{sha}.txt"),
            format!("{sha}.12-.haul-part"),
            format!("{sha}.-3.haul-part"),
            format!("{sha}x"),
            sha[..63].to_string(),
        ] {
            assert!(!written_by_haul(&foreign), "{foreign}");
        }
    }

    #[test]
    fn open_of_a_regular_file_says_it_is_not_a_directory() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("cache");
        fs::write(&file, b"").unwrap();
        match Store::open(&file, 1) {
            Err(error @ StoreError::NotADirectory { .. }) => {
                assert!(error.to_string().contains("not a directory"), "{error}");
            }
            other => panic!("expected NotADirectory, got {other:?}"),
        }
    }

    #[test]
    fn short_of_resources_is_only_descriptors_memory_or_interruption() {
        for short in [24, 23] {
            assert!(short_of_resources(&io::Error::from_raw_os_error(short)));
        }
        assert!(short_of_resources(&io::ErrorKind::OutOfMemory.into()));
        assert!(!short_of_resources(&io::ErrorKind::PermissionDenied.into()));
        // EIO: the disk failed this file; it goes and is fetched again.
        assert!(!short_of_resources(&io::Error::from_raw_os_error(5)));
    }

    #[test]
    fn recheck_names_a_stored_file_it_can_neither_read_nor_remove() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stuck = put(&mut store, b"stuck", 1);
        let path = make_unremovable(&store, &stuck);
        match store.recheck_many(&[&stuck]) {
            Err(error @ StoreError::Unreadable { .. }) => {
                assert!(error.to_string().contains(&path.display().to_string()));
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn verify_all_reports_every_unreadable_file_and_carries_on() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1);
        let stuck = put(&mut store, b"a stuck one", 1);
        let unreadable = put(&mut store, b"an unreadable one", 1);
        let corrupt = put(&mut store, b"a corrupt one", 1);
        let good = put(&mut store, b"a good one", 1);
        make_unremovable(&store, &stuck);
        make_unreadable(&store, &unreadable);
        fs::write(store.path(&corrupt).unwrap(), b"CORRUPT").unwrap();
        let report = store.verify_all().unwrap();
        assert_eq!(report.checked, 4);
        assert_eq!(report.corrupt_removed, vec![corrupt]);
        assert_eq!(report.unreadable_removed, vec![unreadable.clone()]);
        assert_eq!(report.unremovable.len(), 1);
        assert_eq!(report.unremovable[0].0, stuck);
        assert_eq!(report.damaged(), 2);
        let mut left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        left.sort();
        let mut expected = vec![good, stuck];
        expected.sort();
        assert_eq!(left, expected, "the stuck file keeps its row");
    }

    #[test]
    fn open_clamps_last_used_times_from_the_future() {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = open(dir.path(), 1_000);
        let sha256 = put(&mut store, b"future", 5_000);
        drop(store);
        let (store, _) = open(dir.path(), 2_000);
        assert_eq!(store.list().unwrap()[0].last_used_ms, 2_000);
        assert_eq!(store.list().unwrap()[0].sha256, sha256);
    }
}
