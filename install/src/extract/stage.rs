//! Writing a validated archive into a staging directory beside the destination, and
//! swapping it in.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::names::check_entry_name;
use super::stop::{self, Stop, STOP_CHECK_BYTES};
use super::validate::{check_collisions, EntryInfo, EntryKind, ValidatedArchive};
use super::{is_executable_magic, Durability, ModePolicy};
use crate::error::InstallError;
use crate::fsutil::{self, Leftover};

/// Size of the one buffer reused for every entry (constant memory, few syscalls).
const COPY_BUFFER: usize = 256 * 1024;

/// Streams one entry through `sink`, refusing more or fewer bytes than the declared
/// size. The zip reader verifies the CRC when it reaches the end of the entry. `stop` is
/// looked at every [`STOP_CHECK_BYTES`].
pub(crate) fn copy_entry(
    archive: &mut ValidatedArchive,
    entry: &EntryInfo,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), InstallError>,
    stop: Option<&Stop>,
) -> Result<u64, InstallError> {
    let path = archive.path.clone();
    let mut reader = archive
        .zip
        .by_index(entry.index)
        .map_err(|source| InstallError::Zip {
            path: path.clone(),
            source,
        })?;
    let corrupt = |reason: String| InstallError::CorruptEntry {
        entry: entry.name.clone(),
        reason,
    };
    let mut written: u64 = 0;
    let mut next_check = STOP_CHECK_BYTES;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::InvalidData
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::InvalidInput => corrupt(e.to_string()),
                    _ => InstallError::Io {
                        op: "read archive",
                        path,
                        source: e,
                    },
                })
            }
        };
        written += n as u64;
        if written > entry.size {
            return Err(corrupt(format!(
                "produced more than its declared {} bytes",
                entry.size
            )));
        }
        sink(&buf[..n])?;
        if written >= next_check {
            next_check = written + STOP_CHECK_BYTES;
            stop::check(stop)?;
        }
    }
    if written != entry.size {
        return Err(corrupt(format!(
            "declared {} bytes, produced {written}",
            entry.size
        )));
    }
    Ok(written)
}

/// Counts of what a staging directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    /// Files written with an exec bit.
    pub executables: u64,
}

/// What [`Staged::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub dest: PathBuf,
    /// An old tree was at `dest` and has been replaced as a whole.
    pub replaced: bool,
    pub stats: StageStats,
}

/// A fully written staging directory beside its destination. Dropping it without
/// committing removes the staging directory.
#[derive(Debug)]
pub struct Staged {
    staging: PathBuf,
    dest: PathBuf,
    stats: StageStats,
    created_dirs: HashSet<String>,
    durability: Durability,
    /// Looked at by [`Staged::commit`] up to the swap.
    stop: Option<Stop>,
    finished: bool,
    /// The permissions of the tree's root, set at the commit: those of the tree it
    /// replaces, else 755 less the umask.
    root_mode: u32,
}

impl Staged {
    /// Creates `.<dest-name>.haul-staging-<n>` beside `dest` (creating `dest`'s parent
    /// directories if needed).
    pub(crate) fn create(dest: &Path) -> Result<Staged, InstallError> {
        let parent = fsutil::parent_of(dest)?;
        fs::create_dir_all(&parent).map_err(InstallError::io("create directory", &parent))?;
        let staging = fsutil::create_unique_dir(dest, Leftover::Staging)?;
        // The tree it replaces keeps its permissions (a private `chmod 700` directory came
        // back 755); a new one has 755 less the umask. Set at the commit: the tree is
        // written first (a read-only root would refuse its entries).
        // Not through a symbolic link (the link is what is replaced: a link to a shared,
        // world-writable directory made the new tree 1777), and without the sticky and
        // setuid bits (setgid, which a shared group's directory uses, is kept).
        let root_mode = match fs::symlink_metadata(dest) {
            Ok(old) if old.is_dir() => old.permissions().mode() & 0o2777,
            _ => 0o755 & !fsutil::umask(),
        };
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
            .map_err(InstallError::io("chmod", &staging))?;
        tracing::debug!(staging = %staging.display(), dest = %dest.display(), "staging created");
        Ok(Staged {
            staging,
            dest: dest.to_path_buf(),
            stats: StageStats::default(),
            created_dirs: HashSet::new(),
            durability: Durability::default(),
            stop: None,
            finished: false,
            root_mode,
        })
    }

    /// The staging directory (what will become `dest`).
    pub fn staging_path(&self) -> &Path {
        &self.staging
    }

    /// Where [`Staged::commit`] puts the tree.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn stats(&self) -> StageStats {
        self.stats
    }

    /// Whether [`Staged::commit`] will sync.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Chooses whether [`Staged::commit`] syncs (default: [`Durability::SyncBeforeCommit`]).
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), InstallError> {
        match self.durability {
            Durability::SyncBeforeCommit => fsutil::sync_dir(dir),
            Durability::NoSync => Ok(()),
        }
    }

    /// Adds (or overwrites) a small file in the staged tree, e.g. `.revision`, so it
    /// appears atomically with the extracted files.
    pub fn write_file(
        &mut self,
        relative: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), InstallError> {
        let checked = check_entry_name(relative.as_bytes(), 4096).map_err(|reason| {
            InstallError::UnsafeEntry {
                entry: relative.to_string(),
                reason,
            }
        })?;
        if let Some((parent, _)) = checked.path.rsplit_once('/') {
            self.ensure_dir(parent)?;
        }
        let path = self.staging.join(&checked.path);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(InstallError::io("create", &path))?;
        file.write_all(contents)
            .map_err(InstallError::io("write", &path))?;
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777 & !fsutil::umask()))
            .map_err(InstallError::io("chmod", &path))?;
        self.stats.files += 1;
        self.stats.bytes += contents.len() as u64;
        Ok(())
    }

    /// Creates `relative` (and its ancestors) inside the staging tree with mode 0o755 less
    /// the umask.
    fn ensure_dir(&mut self, relative: &str) -> Result<(), InstallError> {
        if self.created_dirs.contains(relative) {
            return Ok(());
        }
        if let Some((parent, _)) = relative.rsplit_once('/') {
            self.ensure_dir(parent)?;
        }
        let path = self.staging.join(relative);
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755 & !fsutil::umask()))
                    .map_err(InstallError::io("chmod", &path))?;
                self.stats.directories += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(InstallError::io("create directory", &path)(e)),
        }
        self.created_dirs.insert(relative.to_string());
        Ok(())
    }

    fn write_entry(
        &mut self,
        archive: &mut ValidatedArchive,
        entry: &EntryInfo,
        relative: &str,
        modes: ModePolicy,
        buf: &mut [u8],
        stop: Option<&Stop>,
    ) -> Result<(), InstallError> {
        if let Some((parent, _)) = relative.rsplit_once('/') {
            self.ensure_dir(parent)?;
        }
        let path = self.staging.join(relative);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(InstallError::io("create", &path))?;
        let mut magic = [0u8; 4];
        let mut magic_len = 0;
        let written = {
            let mut sink = |chunk: &[u8]| {
                if magic_len < magic.len() {
                    let take = (magic.len() - magic_len).min(chunk.len());
                    magic[magic_len..magic_len + take].copy_from_slice(&chunk[..take]);
                    magic_len += take;
                }
                file.write_all(chunk)
                    .map_err(InstallError::io("write", &path))
            };
            copy_entry(archive, entry, buf, &mut sink, stop)?
        };
        let mode = file_mode(modes, entry.unix_permissions, &magic[..magic_len]) & !fsutil::umask();
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(InstallError::io("chmod", &path))?;
        self.stats.files += 1;
        self.stats.bytes += written;
        if mode & 0o111 != 0 {
            self.stats.executables += 1;
        }
        Ok(())
    }

    /// Makes the staged tree durable and swaps it into `dest` as a whole.
    ///
    /// - `dest` absent: one `rename`.
    /// - `dest` present, Linux: `renameat2(RENAME_EXCHANGE)` swaps the two trees in one
    ///   step; the old tree, now under the staging name, is then deleted (a crash during
    ///   the delete leaves a staging-named leftover for [`super::recover`]).
    /// - `dest` present elsewhere (or a filesystem without exchange support): `dest` is
    ///   renamed to `.<name>.haul-old-<n>` (into it, for a long name: see
    ///   `fsutil::move_aside`), the staging tree is renamed to `dest`, the old tree is
    ///   deleted. A crash between the two renames leaves no `dest` but a `haul-old`
    ///   sibling, which [`super::recover`] renames back.
    ///
    /// Durability: files are not fsynced one by one while extracting; instead the
    /// whole filesystem holding the staging tree is synced once here (`syncfs` on Linux,
    /// unless much of other programs' data waits for writeback; then, and elsewhere, a
    /// walk with `fsync` per file and directory), then the parent directory is fsynced
    /// after the rename.
    ///
    /// A [`Stop`] given to the extraction that made this tree is looked at before the sync
    /// and after it: when set, the staging directory is removed, `dest` is untouched and the
    /// error is [`InstallError::Interrupted`]. Once the swap has begun it is finished.
    pub fn commit(mut self) -> Result<Committed, InstallError> {
        stop::check(self.stop.as_ref())?;
        fs::set_permissions(&self.staging, fs::Permissions::from_mode(self.root_mode))
            .map_err(InstallError::io("chmod", &self.staging))?;
        if self.durability == Durability::SyncBeforeCommit {
            fsutil::sync_tree(
                &self.staging,
                self.stats.files + self.stats.directories,
                self.stats.bytes,
            )?;
        }
        let parent = fsutil::parent_of(&self.dest)?;
        // The last point of no return: a stop seen here still leaves `dest` as it was (the
        // staging tree goes when `self` drops). Past it the swap below (the exchange, or the
        // move aside and the rename) runs to its end whatever a stop says, so that a stop
        // never leaves a mix of the two trees, nor no tree.
        stop::check(self.stop.as_ref())?;
        let replaced = match fs::symlink_metadata(&self.dest) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(InstallError::io("stat", &self.dest)(e)),
        };
        if replaced {
            match fsutil::exchange(&self.staging, &self.dest) {
                Ok(()) => {
                    self.finished = true;
                    self.sync_dir(&parent)?;
                    // The old tree now sits at the staging name.
                    fsutil::remove_quietly(&self.staging);
                }
                Err(fsutil::ExchangeError::Unsupported) => {
                    let old = fsutil::move_aside(&self.dest)?;
                    if let Err(e) = fs::rename(&self.staging, &self.dest) {
                        if fs::rename(&old.tree, &self.dest).is_ok() {
                            // An emptied holder (nothing, when the tree was the leftover).
                            let _ = fs::remove_dir(&old.leftover);
                        }
                        return Err(InstallError::io("rename", &self.staging)(e));
                    }
                    self.finished = true;
                    self.sync_dir(&parent)?;
                    fsutil::remove_quietly(&old.leftover);
                }
                Err(fsutil::ExchangeError::Failed(e)) => return Err(e),
            }
        } else {
            fs::rename(&self.staging, &self.dest)
                .map_err(InstallError::io("rename", &self.staging))?;
            self.finished = true;
            self.sync_dir(&parent)?;
        }
        tracing::info!(dest = %self.dest.display(), replaced, files = self.stats.files, "committed");
        Ok(Committed {
            dest: self.dest.clone(),
            replaced,
            stats: self.stats,
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.finished {
            fsutil::remove_quietly(&self.staging);
        }
    }
}

fn file_mode(modes: ModePolicy, archive: Option<u32>, magic: &[u8]) -> u32 {
    let archive = archive.map(|m| m & 0o777).filter(|m| *m != 0);
    match modes {
        ModePolicy::FromArchive => archive.unwrap_or(0o644),
        ModePolicy::ExecutableByContent => {
            if archive.is_some_and(|m| m & 0o111 != 0) || is_executable_magic(magic) {
                0o755
            } else {
                0o644
            }
        }
    }
}

impl ValidatedArchive {
    /// Writes the selected entries into a new staging directory beside `dest`.
    /// `select` maps an entry name (no trailing `/`) to its path inside `dest`, or `None`
    /// to skip it; its output is checked with the same rules as entry names. On error the
    /// staging directory is removed.
    pub fn extract_to_staging(
        self,
        dest: &Path,
        select: impl Fn(&str) -> Option<String>,
        modes: ModePolicy,
    ) -> Result<Staged, InstallError> {
        self.extract_to_staging_or_stop(dest, select, modes, None)
    }

    /// [`ValidatedArchive::extract_to_staging`] that another thread can stop through `stop`
    /// (see [`Stop`]): [`InstallError::Interrupted`], with the staging directory removed.
    /// The [`Staged`] returned keeps `stop` for its [`Staged::commit`].
    pub fn extract_to_staging_or_stop(
        mut self,
        dest: &Path,
        select: impl Fn(&str) -> Option<String>,
        modes: ModePolicy,
        stop: Option<Stop>,
    ) -> Result<Staged, InstallError> {
        let mut plan: Vec<(EntryInfo, String)> = Vec::new();
        for entry in &self.entries {
            let Some(output) = select(&entry.name) else {
                continue;
            };
            let checked = check_entry_name(output.as_bytes(), usize::MAX).map_err(|reason| {
                InstallError::UnsafeEntry {
                    entry: entry.name.clone(),
                    reason,
                }
            })?;
            plan.push((entry.clone(), checked.path));
        }
        check_collisions(
            plan.iter()
                .map(|(e, out)| (out.as_str(), e.kind, e.name.as_str())),
        )?;

        stop::check(stop.as_ref())?;
        let mut staged = Staged::create(dest)?;
        let mut buf = vec![0u8; COPY_BUFFER];
        for (entry, output) in &plan {
            // An error here (a stop too) drops `staged`, which removes the staging tree.
            stop::check(stop.as_ref())?;
            match entry.kind {
                EntryKind::Directory => staged.ensure_dir(output)?,
                EntryKind::File => {
                    staged.write_entry(&mut self, entry, output, modes, &mut buf, stop.as_ref())?
                }
            }
        }
        staged.stop = stop;
        Ok(staged)
    }
}

/// Used by the VSIX heal pass: reads up to 4 bytes from the start of a file.
pub(crate) fn read_magic(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut magic = Vec::with_capacity(4);
    (&mut file).take(4).read_to_end(&mut magic)?;
    Ok(magic)
}
