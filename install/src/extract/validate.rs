//! Whole-archive validation: everything is checked from the central directory and the
//! local headers before a single byte is written.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zip::{CompressionMethod, System, ZipArchive};

use super::names::check_entry_name;
use super::ExtractLimits;
use crate::error::{InstallError, UnsafeReason};

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIG: u32 = 0x0201_4b50;
const LOCAL_HEADER_LEN: u64 = 30;
const CENTRAL_HEADER_LEN: u64 = 46;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_DATA_DESCRIPTOR: u16 = 0x0008;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// What an entry is once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

/// One validated entry of the central directory.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// The entry name without its trailing `/` (already checked safe).
    pub name: String,
    pub kind: EntryKind,
    /// Declared uncompressed size.
    pub size: u64,
    /// Declared compressed size.
    pub compressed_size: u64,
    /// Permission bits from the archive (`& 0o7777`), when the archive was made on Unix.
    pub unix_permissions: Option<u32>,
    pub(crate) index: usize,
}

/// An archive whose central directory and local headers passed every check in the
/// module documentation. Holds the open file; nothing has been written yet.
pub struct ValidatedArchive {
    pub(crate) path: PathBuf,
    pub(crate) zip: ZipArchive<File>,
    pub(crate) entries: Vec<EntryInfo>,
}

impl std::fmt::Debug for ValidatedArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedArchive")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish()
    }
}

struct LocalRange {
    start: u64,
    end: u64,
    entry: usize,
}

impl ValidatedArchive {
    /// Opens and validates `path`. Reads the central directory and every local header;
    /// never decompresses and never writes.
    pub fn open(path: &Path, limits: &ExtractLimits) -> Result<ValidatedArchive, InstallError> {
        let file = File::open(path).map_err(InstallError::io("open archive", path))?;
        let meta = file
            .metadata()
            .map_err(InstallError::io("stat archive", path))?;
        if meta.is_dir() {
            return Err(InstallError::ArchiveNotAFile {
                path: path.to_path_buf(),
            });
        }
        let archive_len = meta.len();
        let probe = file
            .try_clone()
            .map_err(InstallError::io("open archive", path))?;
        // Refuse a huge entry count before the zip crate allocates the whole directory.
        if let Some(count) = declared_entry_count(&probe, archive_len) {
            if count > limits.max_entries {
                return Err(InstallError::TooManyEntries {
                    count,
                    limit: limits.max_entries,
                });
            }
        }
        let zip = ZipArchive::new(file).map_err(|source| InstallError::Zip {
            path: path.to_path_buf(),
            source,
        })?;

        let count = zip.len() as u64;
        if count > limits.max_entries {
            return Err(InstallError::TooManyEntries {
                count,
                limit: limits.max_entries,
            });
        }
        let cd_start = zip.central_directory_start();
        if zip.has_duplicate_names() {
            return Err(name_raw_duplicate(&probe, path, cd_start, limits));
        }

        let mut raw_names = Vec::with_capacity(zip.len());
        let mut entries = Vec::with_capacity(zip.len());
        let mut total: u64 = 0;
        for index in 0..zip.len() {
            let data = zip
                .by_index_data(index)
                .map_err(|source| InstallError::Zip {
                    path: path.to_path_buf(),
                    source,
                })?;
            let raw = data.name_raw().to_vec();
            let display = String::from_utf8_lossy(&raw).into_owned();
            let unsafe_entry = |reason| InstallError::UnsafeEntry {
                entry: display.clone(),
                reason,
            };
            let checked = check_entry_name(&raw, limits.max_name_len).map_err(unsafe_entry)?;
            let mode = match data.system() {
                System::Unix => Some(data.external_attributes() >> 16),
                _ => None,
            }
            .filter(|m| *m != 0);
            let file_type = mode.map(|m| m & S_IFMT).unwrap_or(0);
            let kind = match file_type {
                S_IFLNK => return Err(unsafe_entry(UnsafeReason::Symlink)),
                0 | S_IFREG if !checked.trailing_slash => EntryKind::File,
                0 | S_IFREG | S_IFDIR => EntryKind::Directory,
                _ => return Err(unsafe_entry(UnsafeReason::SpecialFile)),
            };
            if kind == EntryKind::Directory && data.size() > 0 {
                return Err(unsafe_entry(UnsafeReason::DirectoryWithData));
            }
            if data.flags().as_u16() & FLAG_ENCRYPTED != 0 || data.encrypted() {
                return Err(InstallError::UnsupportedEntry {
                    entry: display,
                    reason: "encrypted entries are not supported".into(),
                });
            }
            match data.compression() {
                CompressionMethod::Stored | CompressionMethod::Deflated => {}
                other => {
                    return Err(InstallError::UnsupportedEntry {
                        entry: display,
                        reason: format!("compression method {other} (only stored and deflate)"),
                    })
                }
            }
            check_ratio(Some(&display), data.size(), data.compressed_size(), limits)?;
            total = total.saturating_add(data.size());
            if total > limits.max_total_uncompressed {
                return Err(InstallError::TooLarge {
                    total,
                    limit: limits.max_total_uncompressed,
                });
            }
            entries.push(EntryInfo {
                name: checked.path,
                kind,
                size: data.size(),
                compressed_size: data.compressed_size(),
                unix_permissions: mode.map(|m| m & 0o7777),
                index,
            });
            raw_names.push(display);
        }
        // Directories cost disk space no entry declares: count them (listed, or implied by
        // a path) and charge each one block.
        let directories = count_directories(&entries, limits.max_directories)?;
        let total = total.saturating_add(directories.saturating_mul(super::DIRECTORY_BYTES));
        if total > limits.max_total_uncompressed {
            return Err(InstallError::TooLarge {
                total,
                limit: limits.max_total_uncompressed,
            });
        }
        check_ratio(None, total, archive_len, limits)?;
        check_collisions(
            entries
                .iter()
                .zip(raw_names.iter())
                .map(|(e, raw)| (e.name.as_str(), e.kind, raw.as_str())),
        )?;

        // Local headers and byte ranges.
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let data = zip
                .by_index_data(entry.index)
                .map_err(|source| InstallError::Zip {
                    path: path.to_path_buf(),
                    source,
                })?;
            let central = CentralFacts {
                name_raw: data.name_raw(),
                // Only stored and deflate got past the first pass.
                method: if data.compression() == CompressionMethod::Stored {
                    0
                } else {
                    8
                },
                flags: data.flags().as_u16(),
                crc32: data.crc32(),
                compressed_size: data.compressed_size(),
                size: data.size(),
                header_start: data.header_start(),
            };
            let data_start = check_local_header(&probe, path, &raw_names[i], &central)?;
            let end = data_start
                .checked_add(central.compressed_size)
                .filter(|end| *end <= cd_start)
                .ok_or_else(|| InstallError::OverlapsCentralDirectory {
                    entry: raw_names[i].clone(),
                })?;
            ranges.push(LocalRange {
                start: central.header_start,
                end,
                entry: i,
            });
        }
        check_overlaps(&mut ranges, &raw_names)?;
        // From byte 0, not from where the archive starts: bytes prepended to it (another
        // zip, `cat evil.zip ok.zip`) may hide local headers too. A self-extracting stub
        // holds none and passes.
        scan_gaps(&probe, path, &ranges, 0, cd_start)?;

        tracing::debug!(archive = %path.display(), entries = entries.len(), total, "archive validated");
        Ok(ValidatedArchive {
            path: path.to_path_buf(),
            zip,
            entries,
        })
    }

    /// The validated entries, in central-directory order.
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one file entry (by its checked name) into memory, refusing entries whose
    /// declared size exceeds `max_bytes`. `Ok(None)` when there is no such file entry.
    pub fn read_small(
        &mut self,
        name: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, InstallError> {
        let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.name == name && e.kind == EntryKind::File)
            .cloned()
        else {
            return Ok(None);
        };
        if entry.size > max_bytes {
            return Err(InstallError::EntryTooLarge {
                name: entry.name.clone(),
                size: entry.size,
                limit: max_bytes,
            });
        }
        let mut out = Vec::with_capacity(entry.size as usize);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sink = |chunk: &[u8]| {
            out.extend_from_slice(chunk);
            Ok(())
        };
        super::stage::copy_entry(self, &entry, &mut buf, &mut sink, None)?;
        Ok(Some(out))
    }
}

/// How many distinct directories `entries` create: every directory entry and every
/// ancestor of an entry's path; [`InstallError::TooManyDirectories`] once more than `limit`.
/// Each path's ancestors are walked from the deepest up and the walk stops at the first one
/// already counted (its own ancestors are counted too), so the work is bounded by the
/// limit, not by the depth of every path.
fn count_directories(entries: &[EntryInfo], limit: u64) -> Result<u64, InstallError> {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for entry in entries {
        let name = entry.name.as_str();
        let mut dir = match entry.kind {
            EntryKind::Directory => Some(name),
            EntryKind::File => name.rfind('/').map(|at| &name[..at]),
        };
        while let Some(path) = dir.filter(|path| !path.is_empty()) {
            if !seen.insert(path) {
                break;
            }
            if seen.len() as u64 > limit {
                return Err(InstallError::TooManyDirectories { limit });
            }
            dir = path.rfind('/').map(|at| &path[..at]);
        }
    }
    Ok(seen.len() as u64)
}

fn check_ratio(
    entry: Option<&str>,
    size: u64,
    compressed: u64,
    limits: &ExtractLimits,
) -> Result<(), InstallError> {
    if size <= limits.ratio_applies_above {
        return Ok(());
    }
    let ratio = size / compressed.max(1);
    let over = size > limits.max_ratio.saturating_mul(compressed);
    if over {
        return Err(InstallError::RatioTooHigh {
            entry: entry.map(str::to_string),
            ratio,
            limit: limits.max_ratio,
        });
    }
    Ok(())
}

/// Refuses two entries with one path (after dropping the trailing `/`, case-sensitive),
/// and a file that another entry uses as a directory.
pub(crate) fn check_collisions<'a>(
    items: impl Iterator<Item = (&'a str, EntryKind, &'a str)> + Clone,
) -> Result<(), InstallError> {
    let mut seen: HashMap<&str, (EntryKind, &str)> = HashMap::new();
    for (path, kind, raw) in items.clone() {
        if let Some((_, other)) = seen.insert(path, (kind, raw)) {
            return Err(InstallError::DuplicateEntry {
                entry: raw.to_string(),
                other: other.to_string(),
            });
        }
    }
    for (path, _, raw) in items {
        let mut pos = 0;
        while let Some(slash) = path[pos..].find('/') {
            let ancestor = &path[..pos + slash];
            if let Some((EntryKind::File, other)) = seen.get(ancestor) {
                return Err(InstallError::DuplicateEntry {
                    entry: raw.to_string(),
                    other: other.to_string(),
                });
            }
            pos += slash + 1;
        }
    }
    Ok(())
}

struct CentralFacts<'a> {
    name_raw: &'a [u8],
    method: u16,
    flags: u16,
    crc32: u32,
    compressed_size: u64,
    size: u64,
    header_start: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The UTF-8 name an Info-ZIP Unicode Path extra field (0x7075) in `extra` gives the
/// header name `name`, if it has a valid one: version 1 and the CRC-32 of `name` (the field
/// is ignored otherwise, as APPNOTE 4.6.9 says). The zip reader takes the central
/// directory's name from that field, so a local header naming the entry in its legacy
/// encoding (a zip made on Windows with non-ASCII names: `caf\x82.txt` and `café.txt`)
/// agrees with it through the same field.
fn unicode_path<'a>(name: &[u8], mut extra: &'a [u8]) -> Option<&'a [u8]> {
    while extra.len() >= 4 {
        let (id, len) = (le16(extra, 0), usize::from(le16(extra, 2)));
        let body = extra.get(4..4 + len)?;
        if id == 0x7075 && len >= 5 && body[0] == 1 && le32(body, 1) == crc32fast::hash(name) {
            return Some(&body[5..]);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Reads the local header at `central.header_start` and compares it with the central
/// directory. Returns the offset where the entry's data starts.
fn check_local_header(
    file: &File,
    path: &Path,
    entry: &str,
    central: &CentralFacts<'_>,
) -> Result<u64, InstallError> {
    let mismatch = |field| InstallError::HeaderMismatch {
        entry: entry.to_string(),
        field,
    };
    let mut fixed = [0u8; LOCAL_HEADER_LEN as usize];
    read_at(file, path, &mut fixed, central.header_start).map_err(|e| match e {
        ReadAt::Short => mismatch("local header position"),
        ReadAt::Io(e) => e,
    })?;
    if le32(&fixed, 0) != LOCAL_HEADER_SIG {
        return Err(mismatch("local header signature"));
    }
    let flags = le16(&fixed, 6);
    let method = le16(&fixed, 8);
    let crc = le32(&fixed, 14);
    let csize32 = le32(&fixed, 18);
    let usize32 = le32(&fixed, 22);
    let name_len = u64::from(le16(&fixed, 26));
    let extra_len = u64::from(le16(&fixed, 28));
    let mut variable = vec![0u8; (name_len + extra_len) as usize];
    read_at(
        file,
        path,
        &mut variable,
        central.header_start + LOCAL_HEADER_LEN,
    )
    .map_err(|e| match e {
        ReadAt::Short => mismatch("name"),
        ReadAt::Io(e) => e,
    })?;
    let (name, extra) = variable.split_at(name_len as usize);
    if name != central.name_raw && unicode_path(name, extra) != Some(central.name_raw) {
        return Err(mismatch("name"));
    }
    if method != central.method {
        return Err(mismatch("compression method"));
    }
    if flags & FLAG_DATA_DESCRIPTOR != central.flags & FLAG_DATA_DESCRIPTOR {
        return Err(mismatch("data descriptor flag"));
    }
    if flags & FLAG_DATA_DESCRIPTOR == 0 {
        if crc != central.crc32 {
            return Err(mismatch("crc32"));
        }
        let (size, csize) = local_sizes(usize32, csize32, extra).ok_or(mismatch("zip64 sizes"))?;
        if csize != central.compressed_size {
            return Err(mismatch("compressed size"));
        }
        if size != central.size {
            return Err(mismatch("uncompressed size"));
        }
    }
    Ok(central.header_start + LOCAL_HEADER_LEN + name_len + extra_len)
}

/// Resolves the local header's sizes, reading the zip64 extra field when a 32-bit size
/// is saturated. Returns (uncompressed, compressed).
fn local_sizes(usize32: u32, csize32: u32, extra: &[u8]) -> Option<(u64, u64)> {
    if usize32 != u32::MAX && csize32 != u32::MAX {
        return Some((u64::from(usize32), u64::from(csize32)));
    }
    let mut pos = 0;
    while pos + 4 <= extra.len() {
        let id = le16(extra, pos);
        let len = le16(extra, pos + 2) as usize;
        let body = extra.get(pos + 4..pos + 4 + len)?;
        if id == 0x0001 {
            let mut at = 0;
            let mut take = |saturated: bool, small: u32| -> Option<u64> {
                if saturated {
                    let v = (at + 8 <= body.len()).then(|| le64(body, at))?;
                    at += 8;
                    Some(v)
                } else {
                    Some(u64::from(small))
                }
            };
            let size = take(usize32 == u32::MAX, usize32)?;
            let csize = take(csize32 == u32::MAX, csize32)?;
            return Some((size, csize));
        }
        pos += 4 + len;
    }
    None
}

fn check_overlaps(ranges: &mut [LocalRange], names: &[String]) -> Result<(), InstallError> {
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    let mut furthest: Option<&LocalRange> = None;
    for range in ranges.iter() {
        if let Some(prev) = furthest {
            if prev.end > range.start {
                return Err(InstallError::OverlappingEntries {
                    a: names[prev.entry].clone(),
                    b: names[range.entry].clone(),
                });
            }
        }
        if furthest.is_none_or(|p| range.end > p.end) {
            furthest = Some(range);
        }
    }
    Ok(())
}

/// Looks for local header signatures in the bytes no entry covers, from `scan_start` (the
/// file's first byte) to the central directory. Data descriptors live there and are tiny;
/// a whole hidden local header is not allowed. An end record hidden in the archive comment
/// (an empty central directory placed after every entry) leaves all the entries uncovered,
/// so it is refused here too.
fn scan_gaps(
    file: &File,
    path: &Path,
    sorted: &[LocalRange],
    scan_start: u64,
    cd_start: u64,
) -> Result<(), InstallError> {
    let mut cursor = scan_start;
    let mut gaps = Vec::new();
    for r in sorted {
        if r.start > cursor {
            gaps.push((cursor, r.start));
        }
        cursor = cursor.max(r.end);
    }
    if cd_start > cursor {
        gaps.push((cursor, cd_start));
    }
    let sig = LOCAL_HEADER_SIG.to_le_bytes();
    let mut buf = Vec::new();
    for (start, end) in gaps {
        // A local header is at least 30 bytes; shorter gaps cannot hide one.
        if end - start < LOCAL_HEADER_LEN {
            continue;
        }
        let mut at = start;
        while at + LOCAL_HEADER_LEN <= end {
            let len = (end - at).min(64 * 1024) as usize;
            buf.resize(len, 0);
            read_at(file, path, &mut buf, at).map_err(|e| match e {
                ReadAt::Short => InstallError::UnlistedLocalHeader { offset: at },
                ReadAt::Io(e) => e,
            })?;
            if let Some(hit) = buf.windows(4).position(|w| w == sig) {
                let offset = at + hit as u64;
                if offset + LOCAL_HEADER_LEN <= end {
                    return Err(InstallError::UnlistedLocalHeader { offset });
                }
            }
            // Overlap chunks by 3 bytes so a signature split across chunks is seen.
            at += (len as u64).saturating_sub(3).max(1);
        }
    }
    Ok(())
}

enum ReadAt {
    Short,
    Io(InstallError),
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), ReadAt> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadAt::Short),
        Err(e) => Err(ReadAt::Io(InstallError::Io {
            op: "read archive",
            path: path.to_path_buf(),
            source: e,
        })),
    }
}

/// The entry count the last end-of-central-directory record declares (the zip64 record's
/// when the 16-bit field is saturated). `None` when no record is found; the zip crate
/// then reports the archive as unreadable.
fn declared_entry_count(file: &File, archive_len: u64) -> Option<u64> {
    const EOCD_LEN: u64 = 22;
    let window = archive_len.min(EOCD_LEN + 0xffff);
    let start = archive_len - window;
    let mut tail = vec![0u8; window as usize];
    file.read_exact_at(&mut tail, start).ok()?;
    let sig = 0x0605_4b50u32.to_le_bytes();
    let at = (0..tail.len().checked_sub(EOCD_LEN as usize)? + 1)
        .rev()
        .find(|&i| tail[i..i + 4] == sig)?;
    let count16 = le16(&tail, at + 10);
    if count16 != 0xffff {
        return Some(u64::from(count16));
    }
    // Zip64 locator sits right before the EOCD and points at the zip64 record.
    let locator = (start + at as u64).checked_sub(20)?;
    let mut loc = [0u8; 20];
    file.read_exact_at(&mut loc, locator).ok()?;
    if le32(&loc, 0) != 0x0706_4b50 {
        return Some(u64::from(count16));
    }
    let record = le64(&loc, 8);
    let mut rec = [0u8; 56];
    file.read_exact_at(&mut rec, record).ok()?;
    (le32(&rec, 0) == 0x0606_4b50).then(|| le64(&rec, 32))
}

/// The zip crate keeps one entry per raw name; walk the central directory ourselves to
/// name the duplicate.
fn name_raw_duplicate(
    file: &File,
    path: &Path,
    cd_start: u64,
    limits: &ExtractLimits,
) -> InstallError {
    let mut seen = std::collections::HashSet::new();
    let mut pos = cd_start;
    let mut header = [0u8; CENTRAL_HEADER_LEN as usize];
    for _ in 0..=limits.max_entries {
        if file.read_exact_at(&mut header, pos).is_err() || le32(&header, 0) != CENTRAL_HEADER_SIG {
            break;
        }
        let name_len = le16(&header, 28) as usize;
        let rest = u64::from(le16(&header, 30)) + u64::from(le16(&header, 32));
        let mut name = vec![0u8; name_len];
        if file
            .read_exact_at(&mut name, pos + CENTRAL_HEADER_LEN)
            .is_err()
        {
            break;
        }
        let display = String::from_utf8_lossy(&name).into_owned();
        if !seen.insert(name) {
            return InstallError::DuplicateEntry {
                other: display.clone(),
                entry: display,
            };
        }
        pos += CENTRAL_HEADER_LEN + name_len as u64 + rest;
    }
    tracing::warn!(archive = %path.display(), "zip reader saw duplicate names the central directory walk did not");
    InstallError::DuplicateEntry {
        entry: "<unknown>".into(),
        other: "<unknown>".into(),
    }
}
