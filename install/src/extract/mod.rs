//! Safe zip extraction shared by every installer.
//!
//! Owns: validating a whole archive before writing anything, streaming the selected
//! entries into a staging directory beside the destination, and swapping that tree in
//! as a whole (see [`Staged::commit`]); cleaning what a crash left ([`recover`]).
//! Does not own: downloading or verifying the archive's hash (the caller hands over a
//! verified local file), nor deciding which entries an installer wants (its `select`).
//!
//! # What is refused, and when
//!
//! [`ValidatedArchive::open`] reads the central directory and every local header and
//! refuses, naming the entry, before a byte is written:
//!
//! - names with `..` or `.` components, absolute paths (`/x`, `//server/x`), any `:`
//!   (drive letters `C:`, NTFS streams), any backslash (so `\\server\x` and `a\..\x`
//!   never reach a Windows path parser), NUL and control characters, empty components
//!   (`a//b`), names that are not UTF-8 (the raw bytes are the name; the Info-ZIP
//!   Unicode-path extra field is ignored), names over the length limit;
//! - **all symlink entries** (a Unix mode of type `S_IFLNK`): haul never creates links,
//!   so a link can never redirect a later write outside the tree; devices, FIFOs and
//!   sockets too;
//! - duplicate names (case-sensitive, after dropping a directory's trailing `/`, so a
//!   file `a` and a directory `a/` collide) and a file that another entry uses as a
//!   directory (`a` and `a/b`);
//! - entries whose bytes `[local header start, data start + compressed size)` overlap
//!   another entry's (shared data = non-recursive zip bomb) or reach the central
//!   directory; local file headers hidden in uncovered bytes, from the file's first byte
//!   to the central directory (between entries, in bytes prepended to the archive, or all
//!   of them when an end record hidden in the comment lists none); a self-extracting stub
//!   without a local header signature is accepted;
//! - a local header whose name, compression method or data-descriptor flag differs
//!   from the central directory, or (when bit 3 is clear) whose CRC or sizes differ;
//! - encrypted entries and compression methods other than stored and deflate;
//! - more entries than [`ExtractLimits::max_entries`], a declared total over
//!   [`ExtractLimits::max_total_uncompressed`], a ratio over
//!   [`ExtractLimits::max_ratio`] per entry or for the whole archive (only above
//!   [`ExtractLimits::ratio_applies_above`] bytes, so small highly compressible files
//!   such as blank configs are not refused).
//!
//! While extracting, each entry may produce exactly its declared size: one byte more
//! stops the copy ([`InstallError::CorruptEntry`]), as does a CRC mismatch (checked by
//! the zip reader at the end of the entry).
//!
//! # Writing
//!
//! Entries stream through one reused 256 KiB buffer into files created with
//! `O_CREAT|O_EXCL` in `.<dest-name>.haul-staging-<n>` beside the destination (same
//! filesystem, so the final rename is atomic). Memory stays constant: neither the
//! archive nor an entry is ever read whole (except [`ValidatedArchive::read_small`],
//! which is capped). Modes follow [`ModePolicy`]; setuid, setgid and sticky bits are
//! always dropped; directories are 0o755. There is no fsync per file: the tree is made
//! durable once in [`Staged::commit`] (`syncfs` on Linux), which is what keeps
//! extraction of many small files close to `unzip`'s speed while a crash still leaves
//! either the old tree or the new one. On any error the staging directory is removed
//! and the destination is untouched. Archive modification times are not restored.
//!
//! # Stopping
//!
//! An extraction cannot be resumed, so one asked to stop ([`ExtractOptions::stop`], a
//! [`Stop`] set from another thread) ends like a failure: the staging directory is removed
//! and the destination is untouched ([`InstallError::Interrupted`]). The flag is looked at
//! between entries, every [`STOP_CHECK_BYTES`] inside an entry and in [`Staged::commit`]
//! up to the swap; once the swap has begun it runs to its end.
//!
//! Unix only: modes and `pread` are used directly.

mod names;
mod stage;
mod stop;
mod validate;

use std::path::Path;

pub use crate::fsutil::{create_and_lock_dir, lock_dir, recover, DirLock, RecoverReport};
pub use names::{check_component, MAX_COMPONENT_LEN};
pub use stage::{Committed, StageStats, Staged};
pub use stop::{Stop, STOP_CHECK_BYTES};
pub use validate::{EntryInfo, EntryKind, ValidatedArchive};

pub(crate) use stage::read_magic;

use crate::error::InstallError;

/// Limits checked against the central directory before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Most entries (files and directories) an archive may list.
    pub max_entries: u64,
    /// Most bytes all entries may declare uncompressed, together.
    pub max_total_uncompressed: u64,
    /// Highest uncompressed:compressed ratio, per entry and for the whole archive.
    pub max_ratio: u64,
    /// The ratio is only checked for entries (and archives) declaring more than this
    /// many uncompressed bytes.
    pub ratio_applies_above: u64,
    /// Longest entry name in bytes.
    pub max_name_len: usize,
    /// Most directories the entries may create, listed or implied by their paths. Each one
    /// also counts as [`DIRECTORY_BYTES`] towards `max_total_uncompressed` and the
    /// archive's ratio: a few hundred entries of deeply nested empty folders otherwise make
    /// hundreds of thousands of directories from a kilobyte-sized archive.
    pub max_directories: u64,
}

/// What one directory costs on disk (one block), in the size and ratio limits.
pub const DIRECTORY_BYTES: u64 = 4096;

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_entries: 50_000,
            max_total_uncompressed: 4 * 1024 * 1024 * 1024,
            max_ratio: 200,
            ratio_applies_above: 1024 * 1024,
            max_name_len: 1024,
            max_directories: 50_000,
        }
    }
}

/// How file modes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModePolicy {
    /// The archive's permission bits masked to 0o777; 0o644 when the archive has none.
    #[default]
    FromArchive,
    /// 0o755 when the archive mode has any exec bit or the content starts with an
    /// executable magic ([`is_executable_magic`]), otherwise 0o644 (VSIX rule).
    ExecutableByContent,
}

/// Whether [`Staged::commit`] makes the tree durable before swapping it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Sync once before the swap (`syncfs` on Linux: it also flushes unrelated dirty
    /// data on the same filesystem, which is the price of not fsyncing every file),
    /// and fsync the parent directory after it. A crash leaves the old or the new tree.
    #[default]
    SyncBeforeCommit,
    /// No sync at all: for scratch extractions and for measuring extraction alone. A
    /// crash right after commit may leave files with missing data.
    NoSync,
}

/// Everything [`extract_to_staging`] needs besides the archive and destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    pub limits: ExtractLimits,
    pub modes: ModePolicy,
    pub durability: Durability,
    /// A flag another thread may set to stop the extraction (and the commit, up to the
    /// swap): it then returns [`InstallError::Interrupted`] with its staging directory
    /// removed and the destination untouched. `None`: it runs to its end.
    pub stop: Option<Stop>,
}

/// Validates `archive`, then writes the entries `select` keeps into a staging directory
/// beside `dest`. Call [`Staged::commit`] to swap it in; drop it to throw it away.
///
/// `select` receives each entry name without a trailing `/` and returns the path inside
/// `dest` (checked with the same rules as entry names), or `None` to skip the entry.
pub fn extract_to_staging(
    archive: &Path,
    dest: &Path,
    select: impl Fn(&str) -> Option<String>,
    options: &ExtractOptions,
) -> Result<Staged, InstallError> {
    check_destination(dest)?;
    check_archive_outside(archive, dest)?;
    stop::check(options.stop.as_ref())?;
    let mut staged = ValidatedArchive::open(archive, &options.limits)?.extract_to_staging_or_stop(
        dest,
        select,
        options.modes,
        options.stop.clone(),
    )?;
    staged.set_durability(options.durability);
    Ok(staged)
}

/// The archive must not lie inside the destination: the old tree goes at the commit, and the
/// archive with it (`haul extract inside/pack.zip -d inside` deleted pack.zip). A missing
/// destination holds nothing.
fn check_archive_outside(archive: &Path, dest: &Path) -> Result<(), InstallError> {
    // A symbolic link as the destination is replaced itself: what it points to stays.
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
        return Ok(());
    }
    let (Ok(archive_at), Ok(dest_at)) =
        (std::fs::canonicalize(archive), std::fs::canonicalize(dest))
    else {
        return Ok(());
    };
    if archive_at.starts_with(&dest_at) {
        return Err(InstallError::ArchiveInsideDestination {
            archive: archive.to_path_buf(),
            dest: dest.to_path_buf(),
        });
    }
    Ok(())
}

/// A destination may be missing, a directory (replaced as a whole) or a symlink (the link
/// is replaced, not what it points to); anything else (a file, perhaps the archive itself)
/// is refused, and so is a name no file system takes.
fn check_destination(dest: &Path) -> Result<(), InstallError> {
    crate::fsutil::dest_name(dest)?;
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if !meta.is_dir() && !meta.file_type().is_symlink() => {
            Err(InstallError::DestinationNotDirectory {
                path: dest.to_path_buf(),
            })
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InstallError::io("stat", dest)(e)),
    }
}

/// Validates, extracts and commits in one call; returns what the commit did. With
/// [`ExtractOptions::stop`] set before the swap begins: [`InstallError::Interrupted`], and
/// the destination as it was.
pub fn extract_and_commit(
    archive: &Path,
    dest: &Path,
    select: impl Fn(&str) -> Option<String>,
    options: &ExtractOptions,
) -> Result<Committed, InstallError> {
    extract_to_staging(archive, dest, select, options)?.commit()
}

/// True when `prefix` (the first bytes of a file) starts with `#!`, the ELF magic or a
/// Mach-O magic (32/64-bit either byte order, or fat `0xcafebabe`, which Java class
/// files share).
pub fn is_executable_magic(prefix: &[u8]) -> bool {
    if prefix.starts_with(b"#!") || prefix.starts_with(b"\x7fELF") {
        return true;
    }
    let Some(first) = prefix.get(..4) else {
        return false;
    };
    let word = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    matches!(
        word,
        0xfeed_face | 0xfeed_facf | 0xcefa_edfe | 0xcffa_edfe | 0xcafe_babe
    )
}

#[cfg(test)]
mod tests;
