//! The crate's one error type. Every failure names the archive entry, path or field that
//! failed, so a user (or the CLI) can say exactly what was refused.
//!
//! Owns: [`InstallError`], [`UnsafeReason`] and the classification the CLI maps to exit
//! codes ([`InstallError::is_unsafe_archive`] -> 6, [`InstallError::is_io`] -> 7,
//! [`InstallError::is_interrupted`] -> 128 + the signal).
//! Does not own: deciding what to do about an error (retry, fall back): that is the caller's.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why an entry name or entry kind was refused before anything was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeReason {
    /// A `..` component (`../x`, `a/../../x`).
    ParentComponent,
    /// A `.` component (`./x`, `a/./b`); refused instead of normalised.
    DotComponent,
    /// Starts with `/` (this also covers `//server/share`).
    AbsolutePath,
    /// Contains `:` (drive letters such as `C:x`, NTFS alternate streams).
    Colon,
    /// Contains a backslash (Windows separators, `\\server` UNC paths).
    Backslash,
    /// Contains NUL or another control character.
    ControlCharacter,
    /// An empty component (`a//b`), or an empty name.
    EmptyComponent,
    /// The name is not valid UTF-8.
    NotUtf8,
    /// Longer than the configured limit, or a component longer than 255 bytes.
    NameTooLong,
    /// A symbolic link entry; haul refuses all symlinks.
    Symlink,
    /// A device, FIFO or socket entry.
    SpecialFile,
    /// A directory entry that carries data.
    DirectoryWithData,
    /// A `/` where a single path component is required (installer folder names).
    Separator,
}

impl UnsafeReason {
    fn text(self) -> &'static str {
        match self {
            UnsafeReason::ParentComponent => "contains a `..` component",
            UnsafeReason::DotComponent => "contains a `.` component",
            UnsafeReason::AbsolutePath => "is an absolute path",
            UnsafeReason::Colon => "contains `:` (drive letter or stream name)",
            UnsafeReason::Backslash => "contains a backslash",
            UnsafeReason::ControlCharacter => "contains NUL or a control character",
            UnsafeReason::EmptyComponent => "has an empty path component",
            UnsafeReason::NotUtf8 => "is not valid UTF-8",
            UnsafeReason::NameTooLong => "is too long",
            UnsafeReason::Symlink => "is a symbolic link (symlinks are never installed)",
            UnsafeReason::SpecialFile => "is a device, FIFO or socket",
            UnsafeReason::DirectoryWithData => "is a directory entry that carries data",
            UnsafeReason::Separator => "contains `/` where one path component is required",
        }
    }
}

impl fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Everything that can go wrong while validating, extracting or installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// An entry whose name or kind is unsafe to write.
    #[error("archive entry {entry:?} {reason}")]
    UnsafeEntry { entry: String, reason: UnsafeReason },

    /// Two entries map to the same path (after stripping a trailing `/`), or a file is
    /// also used as a directory by another entry.
    #[error("archive entry {entry:?} collides with entry {other:?}")]
    DuplicateEntry { entry: String, other: String },

    /// The local header and data of two entries share bytes (a non-recursive zip bomb).
    #[error("archive entries {a:?} and {b:?} overlap")]
    OverlappingEntries { a: String, b: String },

    /// An entry's header or data reaches into the central directory.
    #[error("archive entry {entry:?} overlaps the central directory")]
    OverlapsCentralDirectory { entry: String },

    /// The local file header says something different from the central directory.
    #[error("archive entry {entry:?}: local header disagrees with central directory on {field}")]
    HeaderMismatch { entry: String, field: &'static str },

    /// Bytes between entries hold a local file header the central directory does not
    /// list (a streaming extractor would see a different archive).
    #[error("archive holds a local file header at offset {offset} that the central directory does not list")]
    UnlistedLocalHeader { offset: u64 },

    /// More entries than the limit.
    #[error("archive has {count} entries, limit is {limit}")]
    TooManyEntries { count: u64, limit: u64 },

    /// The entries' paths would create more directories (listed or implied by a path) than
    /// the limit: deep paths of empty folders are a bomb no byte count sees.
    #[error("archive creates more than {limit} directories")]
    TooManyDirectories { limit: u64 },

    /// The archive lies inside the destination, which the extraction replaces: it would go
    /// with the old tree.
    #[error(
        "archive {archive:?} is inside the destination {dest:?}, which the extraction replaces"
    )]
    ArchiveInsideDestination {
        archive: std::path::PathBuf,
        dest: std::path::PathBuf,
    },

    /// The archive named is no file (a directory).
    #[error("archive {path:?} is a directory, not a file")]
    ArchiveNotAFile { path: std::path::PathBuf },

    /// The destination exists and is not a directory: extracting would replace it (a file,
    /// perhaps the archive itself) with the tree.
    #[error("destination {path:?} exists and is not a directory")]
    DestinationNotDirectory { path: std::path::PathBuf },

    /// Declared total uncompressed size over the limit.
    #[error("archive declares {total} bytes uncompressed, limit is {limit}")]
    TooLarge { total: u64, limit: u64 },

    /// One entry read whole (a manifest) is larger than its limit.
    #[error("archive entry {name:?} is {size} bytes uncompressed, limit is {limit}")]
    EntryTooLarge { name: String, size: u64, limit: u64 },

    /// Compression ratio over the limit; `entry` is `None` for the archive as a whole.
    #[error("{} compresses {ratio}:1, limit is {limit}:1", match entry { Some(e) => format!("archive entry {e:?}"), None => "archive".to_string() })]
    RatioTooHigh {
        entry: Option<String>,
        ratio: u64,
        limit: u64,
    },

    /// The entry produced a different number of bytes than its header declared, or its
    /// CRC did not match.
    #[error("archive entry {entry:?} is corrupt: {reason}")]
    CorruptEntry { entry: String, reason: String },

    /// Encrypted entries and compression methods other than stored/deflate.
    #[error("archive entry {entry:?} is not supported: {reason}")]
    UnsupportedEntry { entry: String, reason: String },

    /// The archive has no entries under the prefix that holds the payload.
    #[error("archive has no entries under {prefix:?}")]
    EmptyPayload { prefix: String },

    /// The archive file's length is not the size the catalog declared.
    #[error("archive {path:?} is {actual} bytes, catalog declares {expected}")]
    ArchiveSizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// A VSIX manifest that is missing, unparseable or has an unusable field.
    #[error("bad extension manifest: {reason}")]
    BadManifest { reason: String },

    /// A catalog that cannot be read at all (too big, not JSON, wrong shape).
    #[error("bad asset catalog: {reason}")]
    BadCatalog { reason: String },

    /// One catalog entry (or an `Asset` built by hand) with an unusable field.
    #[error("bad catalog entry {name:?} ({kind}): field {field}: {reason}")]
    BadCatalogEntry {
        kind: &'static str,
        name: String,
        field: &'static str,
        reason: String,
    },

    /// A configuration file of haul's own (e.g. `repositories.json`) that cannot be read.
    #[error("bad configuration file {path:?}: {reason}")]
    BadConfig { path: PathBuf, reason: String },

    /// A name used to build a path (extension id, repository URL, ...) that is unusable.
    #[error("bad {what} {value:?}: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// The zip container itself could not be parsed.
    #[error("archive {path:?} is not a readable zip: {source}")]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },

    /// The caller asked the extraction to stop ([`crate::extract::Stop`]) before the swap
    /// into place began: the staging directory has been removed and the destination is as
    /// it was. Nothing failed, so there is nothing to name.
    #[error("interrupted before the new tree was put in place; nothing was changed")]
    Interrupted,

    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl InstallError {
    /// True for every refusal caused by the archive's content: unsafe or colliding names,
    /// overlaps, header disagreements, limits, corrupt data, unsupported entries. The CLI
    /// maps these to exit code 6.
    pub fn is_unsafe_archive(&self) -> bool {
        matches!(
            self,
            InstallError::UnsafeEntry { .. }
                | InstallError::DuplicateEntry { .. }
                | InstallError::OverlappingEntries { .. }
                | InstallError::OverlapsCentralDirectory { .. }
                | InstallError::HeaderMismatch { .. }
                | InstallError::UnlistedLocalHeader { .. }
                | InstallError::TooManyEntries { .. }
                | InstallError::TooManyDirectories { .. }
                | InstallError::TooLarge { .. }
                | InstallError::EntryTooLarge { .. }
                | InstallError::RatioTooHigh { .. }
                | InstallError::CorruptEntry { .. }
                | InstallError::UnsupportedEntry { .. }
                | InstallError::EmptyPayload { .. }
                | InstallError::ArchiveSizeMismatch { .. }
                | InstallError::Zip { .. }
        )
    }

    /// True for local filesystem failures (the CLI maps these to exit code 7).
    pub fn is_io(&self) -> bool {
        matches!(self, InstallError::Io { .. })
    }

    /// True when the caller's [`crate::extract::Stop`] ended the extraction (the CLI exits
    /// 128 + the signal that asked for it).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, InstallError::Interrupted)
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
        let path = path.to_path_buf();
        move |source| InstallError::Io { op, path, source }
    }
}
