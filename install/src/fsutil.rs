//! Small filesystem helpers shared by the installers: sibling names for staging, old
//! and trash trees, crash recovery, directory fsync, atomic small-file writes, and the
//! Linux `renameat2(RENAME_EXCHANGE)` swap.
//!
//! Owns the naming scheme `.<name>.haul-<kind>-<n>` and what `recover` does with each
//! kind. Does not own deciding when to recover (callers run it at start, while holding
//! whatever lock keeps a second installer away from the same directory), nor the mapping
//! of a name too long for that scheme to a shortened stem
//! ([`haul_core::working_name::working_stem`]): `.<stem>.haul-<kind>-<n>` then. An old
//! tree of such a name is moved aside into a `haul-old` directory under its own name (see
//! [`move_aside`]), so that recovery can still put it back where it was.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use haul_core::working_name::{has_shortened_form, is_shortened, working_stem, MAX_NAME_BYTES};

use crate::error::InstallError;

/// The kinds of sibling an install leaves behind while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// A tree being extracted (or, after an exchange, the old tree being deleted).
    Staging,
    /// An old tree moved aside by the non-exchange fallback; restored if its
    /// destination is missing.
    Old,
    /// A tree being deleted (uninstall, remove).
    Trash,
    /// A small file being written atomically.
    Tmp,
}

impl Leftover {
    fn tag(self) -> &'static str {
        match self {
            Leftover::Staging => "haul-staging",
            Leftover::Old => "haul-old",
            Leftover::Trash => "haul-trash",
            Leftover::Tmp => "haul-tmp",
        }
    }

    const ALL: [Leftover; 4] = [
        Leftover::Staging,
        Leftover::Old,
        Leftover::Trash,
        Leftover::Tmp,
    ];
}

/// Most attempts at finding a free sibling name.
const MAX_SIBLING_ATTEMPTS: u64 = 10_000;

/// Bytes a sibling name adds to its destination's stem: the leading dot and the longest
/// `.haul-<kind>-<n>` (`n` below [`MAX_SIBLING_ATTEMPTS`]). All siblings of one destination
/// share one stem.
const SIBLING_ROOM: usize = ".".len() + ".haul-staging-".len() + 4;

/// What stands for the destination `name` in its siblings' names: `name` itself, unless
/// that would make a sibling name too long for a file name.
fn sibling_stem(name: &OsStr) -> std::borrow::Cow<'_, OsStr> {
    working_stem(name, SIBLING_ROOM)
}

pub(crate) fn parent_of(path: &Path) -> Result<PathBuf, InstallError> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(PathBuf::from(".")),
        Some(p) => Ok(p.to_path_buf()),
        None => Err(InstallError::BadName {
            what: "destination",
            value: path.display().to_string(),
            reason: "has no parent directory".into(),
        }),
    }
}

/// `dest`'s file name: one a file system takes (at most [`MAX_NAME_BYTES`]), so that an
/// install into a name no file system takes fails before any work, not at its last rename.
pub(crate) fn dest_name(dest: &Path) -> Result<&OsStr, InstallError> {
    let name = dest.file_name().ok_or_else(|| InstallError::BadName {
        what: "destination",
        value: dest.display().to_string(),
        reason: "has no final component".into(),
    })?;
    let len = name.as_encoded_bytes().len();
    if len > MAX_NAME_BYTES {
        return Err(InstallError::BadName {
            what: "destination",
            value: dest.display().to_string(),
            reason: format!(
                "has a file name of {len} bytes; file systems take at most {MAX_NAME_BYTES}"
            ),
        });
    }
    Ok(name)
}

fn sibling_name(dest: &Path, kind: Leftover, n: u64) -> Result<PathBuf, InstallError> {
    let mut s = OsString::from(".");
    s.push(sibling_stem(dest_name(dest)?));
    s.push(format!(".{}-{n}", kind.tag()));
    Ok(parent_of(dest)?.join(s))
}

/// Creates a new, empty directory `.<dest-name>.haul-<kind>-<n>` beside `dest`; the
/// creation itself is what reserves the name.
pub(crate) fn create_unique_dir(dest: &Path, kind: Leftover) -> Result<PathBuf, InstallError> {
    for n in 0..MAX_SIBLING_ATTEMPTS {
        let path = sibling_name(dest, kind, n)?;
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(InstallError::io("create directory", &path)(e)),
        }
    }
    Err(InstallError::io("create directory", dest)(
        io::Error::other("no free staging name (run recover)"),
    ))
}

/// A sibling name that does not exist right now (used as a rename target).
pub(crate) fn unique_sibling(dest: &Path, kind: Leftover) -> Result<PathBuf, InstallError> {
    for n in 0..MAX_SIBLING_ATTEMPTS {
        let path = sibling_name(dest, kind, n)?;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(InstallError::io("stat", &path)(e)),
            Ok(_) => continue,
        }
    }
    Err(InstallError::io("rename", dest)(io::Error::other(
        "no free sibling name (run recover)",
    )))
}

/// A tree [`move_aside`] moved out of its destination's way.
#[derive(Debug)]
pub(crate) struct MovedAside {
    /// Where the tree is now.
    pub(crate) tree: PathBuf,
    /// What to remove once the tree is no longer needed: the tree, or the directory
    /// holding it.
    pub(crate) leftover: PathBuf,
}

/// Moves the tree at `dest` aside before another takes its place, where [`recover`] puts it
/// back if `dest` is still missing then: to a free `.<name>.haul-old-<n>`, or, when the
/// name is too long for that (the sibling then has a shortened stem, which does not say
/// where the tree came from), into a new directory of that name, under its own name.
pub(crate) fn move_aside(dest: &Path) -> Result<MovedAside, InstallError> {
    let name = dest_name(dest)?;
    if !is_shortened(name, SIBLING_ROOM) {
        let old = unique_sibling(dest, Leftover::Old)?;
        fs::rename(dest, &old).map_err(InstallError::io("rename", dest))?;
        return Ok(MovedAside {
            tree: old.clone(),
            leftover: old,
        });
    }
    let holder = create_unique_dir(dest, Leftover::Old)?;
    let tree = holder.join(name);
    if let Err(e) = fs::rename(dest, &tree) {
        let _ = fs::remove_dir(&holder);
        return Err(InstallError::io("rename", dest)(e));
    }
    Ok(MovedAside {
        tree,
        leftover: holder,
    })
}

/// What a `haul-old` leftover holds (see [`move_aside`]).
enum HeldTree {
    /// It is the old tree itself (its destination's name fits in the leftover's).
    NotAHolder,
    /// A holder whose tree was not moved in yet (a crash right after creating it).
    NotYet,
    /// A holder of the old tree of this name.
    Named(OsString),
}

/// What the `haul-old` leftover at `leftover`, named with `stem`, holds. A holder is told
/// by its content, one entry whose name has `stem` for its stem; an empty one by the form
/// of its stem (of a name that fits, only an empty tree of a name chosen to look shortened
/// would be taken for an empty holder, and removed rather than restored).
fn held_tree(leftover: &Path, stem: &str) -> HeldTree {
    let Ok(mut entries) = fs::read_dir(leftover) else {
        return HeldTree::NotAHolder;
    };
    let Some(first) = entries.next() else {
        return if has_shortened_form(OsStr::new(stem), SIBLING_ROOM) {
            HeldTree::NotYet
        } else {
            HeldTree::NotAHolder
        };
    };
    let Ok(only) = first.map(|e| e.file_name()) else {
        return HeldTree::NotAHolder;
    };
    if entries.next().is_some() {
        return HeldTree::NotAHolder;
    }
    if is_shortened(&only, SIBLING_ROOM) && sibling_stem(&only) == OsStr::new(stem) {
        HeldTree::Named(only)
    } else {
        HeldTree::NotAHolder
    }
}

/// Splits `.<dest>.haul-<kind>-<n>` into its kind and destination name (or the shortened
/// stem standing for it).
fn parse_leftover(file_name: &str) -> Option<(Leftover, &str)> {
    let rest = file_name.strip_prefix('.')?;
    for kind in Leftover::ALL {
        let marker = format!(".{}-", kind.tag());
        if let Some(at) = rest.rfind(&marker) {
            let n = &rest[at + marker.len()..];
            let dest = &rest[..at];
            if !dest.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return Some((kind, dest));
            }
        }
    }
    None
}

/// An exclusive lock on a directory, held until dropped (see [`lock_dir`]).
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

/// Waits for, then takes, an exclusive `flock` on directory `dir` (no file is created):
/// installers into one parent directory hold it from [`recover`] to their commit, so that
/// one's recovery never deletes the staging tree another is still writing. Released when
/// the [`DirLock`] is dropped, or by the kernel when the process ends, however it ends.
///
/// The lock is on the directory's inode, not its path: a holder may remove the directory
/// (an extraction that fails removes the parents it created), and whoever waited on it
/// would then hold a lock on a deleted directory while another process creates and locks a
/// new one under the same name. So once granted, the lock is checked against the directory
/// now at `dir`; when that is another one, it is dropped and the new one locked instead,
/// and when nothing is there any more this fails with [`io::ErrorKind::NotFound`] (see
/// [`create_and_lock_dir`] for a caller that creates the directory again).
pub fn lock_dir(dir: &Path) -> Result<DirLock, InstallError> {
    loop {
        if let Some(lock) = lock_if_current(dir)? {
            return Ok(lock);
        }
    }
}

/// Creates `dir` with `create` (which must succeed when `dir` already exists) and locks it
/// as [`lock_dir`] does; when a holder of the lock removed the directory while this one
/// waited, `create` runs again and the new directory is locked.
pub fn create_and_lock_dir(
    dir: &Path,
    mut create: impl FnMut() -> Result<(), InstallError>,
) -> Result<DirLock, InstallError> {
    loop {
        create()?;
        match lock_dir(dir) {
            Err(InstallError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(dir = %dir.display(), "the directory was removed while waiting for its lock; creating it again");
            }
            other => return other,
        }
    }
}

/// One attempt of [`lock_dir`]: the lock when the directory locked is still the one at
/// `dir`, `None` when another directory took its name while this one waited.
fn lock_if_current(dir: &Path) -> Result<Option<DirLock>, InstallError> {
    let handle = File::open(dir).map_err(InstallError::io("open directory", dir))?;
    let locking = |op| {
        rustix::fs::flock(&handle, op)
            .map_err(|e| InstallError::io("lock directory", dir)(e.into()))
    };
    match rustix::fs::flock(
        &handle,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            // Said, or the command seems to hang: another install or extraction into the
            // same parent holds it until it commits.
            tracing::warn!(
                dir = %dir.display(),
                "waiting for another install or extraction in this directory to finish"
            );
            locking(rustix::fs::FlockOperation::LockExclusive)?;
        }
        Err(_) => locking(rustix::fs::FlockOperation::LockExclusive)?,
    }
    let locked = handle.metadata().map_err(InstallError::io("stat", dir))?;
    let now = fs::metadata(dir).map_err(InstallError::io("open directory", dir))?;
    if (locked.dev(), locked.ino()) == (now.dev(), now.ino()) {
        Ok(Some(DirLock { _dir: handle }))
    } else {
        tracing::debug!(dir = %dir.display(), "the directory locked was replaced while waiting; locking the new one");
        Ok(None)
    }
}

/// What [`recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverReport {
    /// Leftovers deleted.
    pub removed: Vec<PathBuf>,
    /// `haul-old` trees renamed back because their destination was missing.
    pub restored: Vec<PathBuf>,
}

/// Cleans what a crashed install left in `parent`: `*.haul-staging-*`,
/// `*.haul-trash-*` and `*.haul-tmp-*` are deleted; a `*.haul-old-*` tree is renamed
/// back to its destination when the destination is missing (a crash inside the
/// non-exchange fallback), otherwise deleted; so is the tree a `*.haul-old-*` directory of
/// a long name holds (see `move_aside`). A missing `parent` is fine.
///
/// Run it before installing, never while another installer works in `parent`.
pub fn recover(parent: &Path) -> Result<RecoverReport, InstallError> {
    let mut report = RecoverReport::default();
    let dir = match fs::read_dir(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(InstallError::io("read directory", parent)(e)),
    };
    let mut found = Vec::new();
    for item in dir {
        let item = item.map_err(InstallError::io("read directory", parent))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((kind, dest)) = parse_leftover(name) {
            found.push((kind, dest.to_string(), item.path()));
        }
    }
    found.sort_by(|a, b| a.2.cmp(&b.2));
    for (kind, dest, path) in found {
        if kind == Leftover::Old {
            match held_tree(&path, &dest) {
                HeldTree::Named(held) => {
                    let dest_path = parent.join(&held);
                    if fs::symlink_metadata(&dest_path).is_err() {
                        let tree = path.join(&held);
                        fs::rename(&tree, &dest_path).map_err(InstallError::io("rename", &tree))?;
                        remove_any(&path)?;
                        tracing::warn!(restored = %dest_path.display(), "restored a tree a crashed install moved aside");
                        report.restored.push(dest_path);
                        continue;
                    }
                }
                HeldTree::NotYet => {}
                HeldTree::NotAHolder => {
                    let dest_path = parent.join(&dest);
                    if fs::symlink_metadata(&dest_path).is_err() {
                        fs::rename(&path, &dest_path).map_err(InstallError::io("rename", &path))?;
                        tracing::warn!(restored = %dest_path.display(), "restored a tree a crashed install moved aside");
                        report.restored.push(dest_path);
                        continue;
                    }
                }
            }
        }
        // A leftover that cannot go (a read-only directory in an old tree, a file system
        // mounted inside it) stays, with a warning at each install: it held up every later
        // install into this directory, even `assets ls`.
        match remove_any(&path) {
            Ok(()) => {
                tracing::warn!(removed = %path.display(), "removed a leftover of an earlier install");
                report.removed.push(path);
            }
            Err(e) => tracing::warn!(
                "{} (left by an earlier install) could not be removed and stays: {e}; remove it by hand",
                path.display()
            ),
        }
    }
    if !report.removed.is_empty() || !report.restored.is_empty() {
        sync_dir(parent)?;
    }
    Ok(report)
}

fn remove_any(path: &Path) -> Result<(), InstallError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(InstallError::io("stat", path)(e)),
    };
    let result = if meta.is_dir() {
        remove_dir_on_its_file_system(path, meta.dev())
    } else {
        fs::remove_file(path).map_err(|e| (path.to_path_buf(), e))
    };
    match result {
        Ok(()) => Ok(()),
        Err((_, e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err((at, e)) => Err(InstallError::io("remove", &at)(e)),
    }
}

/// Removes the directory `dir` (on device `dev`) and everything in it, never following
/// symbolic links (`remove_dir_all`), once a walk of the tree found no directory of another
/// file system in it: a file system mounted inside an old tree is not emptied (it was),
/// and the tree stays, with an error naming the mount point. The walk also gives haul's own
/// read-only directories their owner's write access back, so that the old copy of a
/// read-only tree does not stay beside it at every install.
fn remove_dir_on_its_file_system(dir: &Path, dev: u64) -> Result<(), (PathBuf, io::Error)> {
    fn at(p: &Path) -> impl FnOnce(io::Error) -> (PathBuf, io::Error) + '_ {
        move |e| (p.to_path_buf(), e)
    }
    fn prepare(dir: &Path, mode: u32, dev: u64) -> Result<(), (PathBuf, io::Error)> {
        if mode & 0o700 != 0o700 {
            // Best effort: another user's directory stays as it is (its removal fails).
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
        }
        for item in fs::read_dir(dir).map_err(at(dir))? {
            let path = item.map_err(at(dir))?.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err((path, e)),
            };
            if !meta.is_dir() {
                continue;
            }
            if meta.dev() != dev {
                let why = "another file system is mounted there; it is left alone";
                return Err((path, io::Error::other(why)));
            }
            prepare(&path, meta.permissions().mode(), dev)?;
        }
        Ok(())
    }
    let mode = fs::symlink_metadata(dir)
        .map_err(at(dir))?
        .permissions()
        .mode();
    prepare(dir, mode, dev)?;
    fs::remove_dir_all(dir).map_err(at(dir))
}

/// Removes a file or tree, logging instead of failing (what is left is a leftover that
/// [`recover`] tries again at the next install into its directory).
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = remove_any(path) {
        tracing::warn!(
            "could not remove {}: {e}; the next install into its directory tries again",
            path.display()
        );
    }
}

/// Removes a tree by first renaming it to a `haul-trash` sibling, so a crash mid-delete
/// never leaves a half-deleted tree under its real name. Returns false when absent.
pub(crate) fn remove_tree(path: &Path) -> Result<bool, InstallError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(InstallError::io("stat", path)(e)),
        Ok(_) => {}
    }
    let trash = unique_sibling(path, Leftover::Trash)?;
    fs::rename(path, &trash).map_err(InstallError::io("rename", path))?;
    sync_dir(&parent_of(path)?)?;
    remove_any(&trash)?;
    Ok(true)
}

/// The process's file mode creation mask: the permissions a tree is created with leave
/// out what it masks (`umask 077` gave other users read access to every directory haul
/// made, at 0755). Read once from `/proc/self/status` (setting it to read it back would
/// race with other threads creating files); 022 where that cannot be read.
pub(crate) fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    let f = File::open(dir).map_err(InstallError::io("open directory", dir))?;
    f.sync_all()
        .map_err(InstallError::io("fsync directory", dir))
}

/// Flushes a freshly written tree (`entries` files and directories, `bytes` bytes of data)
/// to stable storage before it is renamed into place: on Linux one `syncfs` of its file
/// system, unless much of other programs' data waits for writeback there (see
/// [`haul_core::writeback`]: a syncfs would wait for all of it); otherwise, and off Linux,
/// every file and directory of the tree synced on its own ([`sync_each`]).
pub(crate) fn sync_tree(root: &Path, entries: u64, bytes: u64) -> Result<(), InstallError> {
    #[cfg(target_os = "linux")]
    {
        let pending = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| haul_core::writeback::pending_writeback(&text));
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        if haul_core::writeback::syncfs_pays(entries, bytes, pending) {
            let f = File::open(root).map_err(InstallError::io("open directory", root))?;
            return rustix::fs::syncfs(&f).map_err(|e| InstallError::io("syncfs", root)(e.into()));
        }
        tracing::debug!(
            root = %root.display(),
            "others' data waits for writeback: syncing the tree file by file"
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (entries, bytes);
    sync_each(root).map(|_| ())
}

/// Threads [`sync_each`] syncs files on.
const SYNC_THREADS: usize = 8;

/// Syncs every regular file under `root` (on up to [`SYNC_THREADS`] threads, the disk takes
/// their syncs together), then every directory, `root` last; how many files. The first
/// failure is returned (the other files are still synced).
pub(crate) fn sync_each(root: &Path) -> Result<usize, InstallError> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = dirs.get(walked).cloned() {
        walked += 1;
        for item in fs::read_dir(&dir).map_err(InstallError::io("read directory", &dir))? {
            let item = item.map_err(InstallError::io("read directory", &dir))?;
            let ty = item
                .file_type()
                .map_err(InstallError::io("stat", &item.path()))?;
            if ty.is_dir() {
                dirs.push(item.path());
            } else if ty.is_file() {
                files.push(item.path());
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures: Vec<InstallError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SYNC_THREADS.min(files.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = files.get(n) else {
                            break failures;
                        };
                        if let Err(e) = sync_file(path) {
                            failures.push(InstallError::io("fsync", path)(e));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a sync thread panicked"))
            .collect()
    });
    if let Some(failure) = failures.into_iter().next() {
        return Err(failure);
    }
    // Deepest first: each directory's entries are durable before its parent's.
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    Ok(files.len())
}

/// Syncs the file at `path` (data and metadata). A file whose final mode denies its owner
/// reading (an archive may ask for 0o200 or 0o111) cannot be opened to sync it: it gets
/// read permission for the open, and its mode back through the open handle before the sync,
/// so the sync covers the mode it keeps.
fn sync_file(path: &Path) -> io::Result<()> {
    let denied = match open_for_sync(path) {
        Ok(file) => return file.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => e,
        Err(e) => return Err(e),
    };
    let mode = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o400)).is_err() {
        return Err(denied);
    }
    let file = File::open(path);
    let restored = match &file {
        Ok(file) => file.set_permissions(fs::Permissions::from_mode(mode)),
        Err(_) => fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    };
    let file = file?;
    restored?;
    file.sync_all()
}

#[cfg(test)]
thread_local! {
    /// Lets a test (which may run as root, whom no mode stops) see opens denied.
    pub(crate) static DENY_SYNC_OPENS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn open_for_sync(path: &Path) -> io::Result<File> {
    #[cfg(test)]
    if DENY_SYNC_OPENS.with(|deny| deny.replace(false)) {
        return Err(io::ErrorKind::PermissionDenied.into());
    }
    File::open(path)
}

pub(crate) enum ExchangeError {
    /// The OS or filesystem cannot exchange; use the two-rename fallback.
    Unsupported,
    Failed(InstallError),
}

#[cfg(test)]
thread_local! {
    /// Lets a test exercise the two-rename fallback on Linux.
    pub(crate) static FORCE_EXCHANGE_FALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Atomically swaps two directory entries.
#[cfg(target_os = "linux")]
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<(), ExchangeError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    #[cfg(test)]
    if FORCE_EXCHANGE_FALLBACK.with(|f| f.get()) {
        return Err(ExchangeError::Unsupported);
    }
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            tracing::debug!(error = %e, "renameat2 exchange unsupported here; using fallback");
            Err(ExchangeError::Unsupported)
        }
        Err(e) => Err(ExchangeError::Failed(InstallError::io(
            "renameat2 exchange",
            b,
        )(e.into()))),
    }
}

/// Atomically swaps two directory entries (not available: callers use the fallback).
#[cfg(not(target_os = "linux"))]
pub(crate) fn exchange(_a: &Path, _b: &Path) -> Result<(), ExchangeError> {
    Err(ExchangeError::Unsupported)
}

/// Writes a small file atomically: a `haul-tmp` sibling, fsync, rename, fsync the
/// directory.
pub(crate) fn atomic_write(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let parent = parent_of(path)?;
    fs::create_dir_all(&parent).map_err(InstallError::io("create directory", &parent))?;
    let tmp = unique_sibling(path, Leftover::Tmp)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(InstallError::io("create", &tmp))?;
        f.write_all(contents)
            .map_err(InstallError::io("write", &tmp))?;
        f.sync_all().map_err(InstallError::io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(InstallError::io("rename", &tmp))?;
        sync_dir(&parent)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(
            parse_leftover(".my.dir.haul-staging-12"),
            Some((Leftover::Staging, "my.dir"))
        );
        assert_eq!(parse_leftover(".x.haul-old-0"), Some((Leftover::Old, "x")));
        assert_eq!(
            parse_leftover(".x.haul-trash-3"),
            Some((Leftover::Trash, "x"))
        );
        assert_eq!(parse_leftover("x.haul-staging-1"), None);
        assert_eq!(parse_leftover(".x.haul-staging-"), None);
        assert_eq!(parse_leftover(".x.haul-staging-1a"), None);
        assert_eq!(parse_leftover(".haul-staging-1"), None);
        assert_eq!(parse_leftover(".gitignore"), None);
    }

    #[test]
    fn siblings_of_a_long_name_fit_and_are_still_recognised() {
        let parent = Path::new("/root");
        let short = parent.join("x".repeat(255 - SIBLING_ROOM));
        let name = sibling_name(&short, Leftover::Staging, 9999).unwrap();
        assert_eq!(
            name.file_name().unwrap().to_str().unwrap(),
            format!(".{}.haul-staging-9999", "x".repeat(255 - SIBLING_ROOM))
        );
        for len in [255 - SIBLING_ROOM + 1, 250, 255] {
            let dest = parent.join("y".repeat(len));
            let stem = sibling_stem(dest.file_name().unwrap()).into_owned();
            for kind in Leftover::ALL {
                for n in [0, 9999] {
                    let sibling = sibling_name(&dest, kind, n).unwrap();
                    let file_name = sibling.file_name().unwrap().to_str().unwrap();
                    assert!(file_name.len() <= MAX_NAME_BYTES, "{len} {file_name}");
                    assert_eq!(
                        parse_leftover(file_name),
                        Some((kind, stem.to_str().unwrap()))
                    );
                }
            }
        }
        let other = parent.join("y".repeat(249) + "z");
        assert_ne!(
            sibling_name(&other, Leftover::Old, 0).unwrap(),
            sibling_name(&parent.join("y".repeat(250)), Leftover::Old, 0).unwrap()
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
    }

    #[test]
    fn syncing_a_tree_file_by_file_reaches_every_nested_file_and_names_a_missing_root() {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        for (n, sub) in ["", "a", "a/b", "a/b/c", "a/b/c"].iter().enumerate() {
            fs::write(root.join(sub).join(format!("f{n}")), b"x").unwrap();
        }
        std::os::unix::fs::symlink("f0", root.join("link")).unwrap();
        assert_eq!(sync_each(&root).unwrap(), 5, "files only, every level");
        let missing = sync_each(&dir.path().join("nothing")).unwrap_err();
        assert!(missing.to_string().contains("nothing"), "{missing}");
        // The whole-tree sync, whichever way it goes here.
        sync_tree(&root, 11, 5).unwrap();
    }

    #[test]
    fn a_file_its_owner_may_not_read_is_synced_and_keeps_its_mode() {
        let dir = tempfile::TempDir::new().unwrap();
        for mode in [0o200, 0o111, 0o000] {
            let path = dir.path().join(format!("f{mode:o}"));
            fs::write(&path, b"x").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            DENY_SYNC_OPENS.with(|deny| deny.set(true));
            sync_file(&path).unwrap();
            let kept = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(kept, mode, "mode {mode:o} changed to {kept:o}");
        }
        // Another failure is not retried.
        assert_eq!(
            sync_file(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_directory_lock_is_exclusive_until_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let _second = lock_dir(&path).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a second lock was granted while the first was held"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second lock once the first was dropped");
        waiter.join().unwrap();
        assert!(lock_dir(&dir.path().join("missing")).is_err());
    }

    /// Whether some process waits for an `flock` on the inode `ino` (`/proc/locks` lists a
    /// blocked request as `-> FLOCK ... <dev>:<ino> ...`).
    fn someone_waits_for_lock_on(ino: u64) -> bool {
        let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
        locks.lines().any(|line| {
            line.contains("->")
                && line.contains("FLOCK")
                && line
                    .split_whitespace()
                    .any(|field| field.rsplit(':').next() == Some(&ino.to_string()))
        })
    }

    #[test]
    fn a_waiter_whose_locked_directory_was_removed_locks_the_one_created_again() {
        let top = tempfile::TempDir::new().unwrap();
        let dir = top.path().join("parent");
        fs::create_dir(&dir).unwrap();
        let first_ino = fs::metadata(&dir).unwrap().ino();
        let held = lock_dir(&dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let path = dir.clone();
        let waiter = std::thread::spawn(move || {
            let lock = create_and_lock_dir(&path, || {
                fs::create_dir_all(&path).map_err(InstallError::io("create directory", &path))
            })
            .unwrap();
            tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(lock);
        });
        // The waiter is blocked on the first directory's lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !someone_waits_for_lock_on(first_ino) {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never blocked on the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The holder removes the directory (as a failed extraction removes the parents it
        // created), then releases it.
        fs::remove_dir(&dir).unwrap();
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiter's lock");
        // The waiter holds the directory now at that path, not the deleted one (whose inode
        // number the new one may reuse once no handle keeps the old one): a third locker must
        // wait.
        let now = File::open(&dir).expect("the waiter created the directory again");
        assert_eq!(
            rustix::fs::flock(&now, rustix::fs::FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK),
            "the waiter holds a lock on the removed directory, not on the one at its path"
        );
        release_tx.send(()).unwrap();
        waiter.join().unwrap();
        // Without a creator, a directory removed under the waiter is an error, not a lock.
        let held = lock_dir(&dir).unwrap();
        let path = dir.clone();
        let plain = std::thread::spawn(move || lock_dir(&path).map(drop));
        let ino = fs::metadata(&dir).unwrap().ino();
        while !someone_waits_for_lock_on(ino) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fs::remove_dir(&dir).unwrap();
        drop(held);
        match plain.join().unwrap() {
            Err(InstallError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn remove_tree_of_absent_path_reports_false() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(!remove_tree(&dir.path().join("nothing")).unwrap());
        fs::create_dir_all(dir.path().join("t/a")).unwrap();
        assert!(remove_tree(&dir.path().join("t")).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn removing_a_tree_stops_at_directories_of_another_file_system() {
        // A file system mounted inside an old tree was emptied with it (`remove_dir_all`).
        // Its directories are told apart by their device: here every directory is taken for
        // another file system's, by asking for the removal of a tree on another device.
        let top = tempfile::TempDir::new().unwrap();
        let tree = top.path().join("old");
        fs::create_dir_all(tree.join("mnt/deep")).unwrap();
        fs::write(tree.join("mnt/deep/precious"), b"x").unwrap();
        fs::write(tree.join("top.txt"), b"x").unwrap();
        let dev = fs::metadata(&tree).unwrap().dev();
        let (at, e) = remove_dir_on_its_file_system(&tree, dev + 1).unwrap_err();
        assert_eq!(at, tree.join("mnt"));
        assert!(e.to_string().contains("another file system"), "{e}");
        assert!(tree.join("mnt/deep/precious").exists());
        // On its own device, the whole tree goes (symbolic links not followed).
        std::os::unix::fs::symlink(top.path(), tree.join("link")).unwrap();
        remove_dir_on_its_file_system(&tree, dev).unwrap();
        assert!(!tree.exists() && top.path().exists());
    }
}
