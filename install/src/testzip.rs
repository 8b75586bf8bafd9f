//! Test helpers: archives built with the zip crate's writer, and raw hand-built bytes
//! for what the writer refuses to produce (shared data, lying headers, duplicates).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// One entry for [`write_zip`]: a name ending in `/` is a directory.
pub struct Item<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub mode: Option<u32>,
}

pub fn file<'a>(name: &'a str, data: &'a [u8]) -> Item<'a> {
    Item {
        name,
        data,
        mode: None,
    }
}

pub fn file_mode<'a>(name: &'a str, data: &'a [u8], mode: u32) -> Item<'a> {
    Item {
        name,
        data,
        mode: Some(mode),
    }
}

pub fn dir(name: &str) -> Item<'_> {
    Item {
        name,
        data: b"",
        mode: None,
    }
}

/// Writes a deflate archive with the zip crate's writer.
pub fn write_zip(path: &Path, items: &[Item<'_>]) {
    let mut w = ZipWriter::new(File::create(path).unwrap());
    for item in items {
        let mut opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        if let Some(mode) = item.mode {
            opts = opts.unix_permissions(mode);
        }
        if item.name.ends_with('/') {
            w.add_directory(item.name, opts).unwrap();
        } else {
            w.start_file(item.name, opts).unwrap();
            w.write_all(item.data).unwrap();
        }
    }
    w.finish().unwrap();
}

/// A sorted listing of everything under `root` (relative paths, dirs end with `/`).
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), small and independent of the crate under test.
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One hand-built entry, stored (method 0) unless `method` says otherwise. Every
/// `local_*`/`cd_*` field overrides what would be written in that header.
#[derive(Clone, Default)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    /// Unix mode including the file type; None writes a DOS entry.
    pub mode: Option<u32>,
    pub method: u16,
    pub flags: u16,
    pub uncompressed_size: Option<u32>,
    pub local_name: Option<Vec<u8>>,
    pub local_method: Option<u16>,
    pub local_crc: Option<u32>,
    pub local_size: Option<u32>,
    pub local_flags: Option<u16>,
    pub local_compressed_size: Option<u32>,
    pub crc: Option<u32>,
    /// Write a data descriptor (signature, CRC, sizes) after the data.
    pub descriptor: bool,
    /// Extra fields, written in both headers.
    pub extra: Vec<u8>,
}

impl RawEntry {
    pub fn stored(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            data: data.to_vec(),
            ..RawEntry::default()
        }
    }

    fn crc_value(&self) -> u32 {
        self.crc.unwrap_or_else(|| crc32(&self.data))
    }

    fn usize_value(&self) -> u32 {
        self.uncompressed_size.unwrap_or(self.data.len() as u32)
    }

    pub fn local_header(&self) -> Vec<u8> {
        let name = self.local_name.as_ref().unwrap_or(&self.name);
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&self.local_flags.unwrap_or(self.flags).to_le_bytes());
        h.extend_from_slice(&self.local_method.unwrap_or(self.method).to_le_bytes());
        h.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
        h.extend_from_slice(&self.local_crc.unwrap_or(self.crc_value()).to_le_bytes());
        h.extend_from_slice(
            &self
                .local_compressed_size
                .unwrap_or(self.data.len() as u32)
                .to_le_bytes(),
        );
        h.extend_from_slice(&self.local_size.unwrap_or(self.usize_value()).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(self.extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name);
        h.extend_from_slice(&self.extra);
        h
    }

    /// The data descriptor written after the data when `descriptor` is set.
    pub fn data_descriptor(&self) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        d.extend_from_slice(&self.crc_value().to_le_bytes());
        d.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        d.extend_from_slice(&self.usize_value().to_le_bytes());
        d
    }

    pub fn central_header(&self, local_offset: u32) -> Vec<u8> {
        let (made_by, external) = match self.mode {
            Some(mode) => (3u16 << 8 | 20, mode << 16),
            None => (20u16, 0),
        };
        let mut h = Vec::new();
        h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        h.extend_from_slice(&made_by.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&self.flags.to_le_bytes());
        h.extend_from_slice(&self.method.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0x21, 0]);
        h.extend_from_slice(&self.crc_value().to_le_bytes());
        h.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        h.extend_from_slice(&self.usize_value().to_le_bytes());
        h.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(self.extra.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // comment
        h.extend_from_slice(&0u16.to_le_bytes()); // disk
        h.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        h.extend_from_slice(&external.to_le_bytes());
        h.extend_from_slice(&local_offset.to_le_bytes());
        h.extend_from_slice(&self.name);
        h.extend_from_slice(&self.extra);
        h
    }
}

/// A hand-assembled archive: raw bytes for the entry area and central records.
#[derive(Default)]
pub struct RawZip {
    pub body: Vec<u8>,
    central: Vec<u8>,
    count: u64,
}

impl RawZip {
    /// Appends a local header + data and a matching central record; returns the local
    /// header offset.
    pub fn add(&mut self, entry: &RawEntry) -> u32 {
        let offset = self.body.len() as u32;
        self.body.extend_from_slice(&entry.local_header());
        self.body.extend_from_slice(&entry.data);
        if entry.descriptor {
            self.body.extend_from_slice(&entry.data_descriptor());
        }
        self.add_central(entry, offset);
        offset
    }

    /// Appends only a central record pointing at `offset`.
    pub fn add_central(&mut self, entry: &RawEntry, offset: u32) {
        self.central
            .extend_from_slice(&entry.central_header(offset));
        self.count += 1;
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.body.clone();
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&self.central);
        let count16 = if self.count > 0xfffe {
            // Zip64 end record and locator carry the real count.
            let eocd64 = out.len() as u64;
            out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&45u16.to_le_bytes());
            out.extend_from_slice(&45u16.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&self.count.to_le_bytes());
            out.extend_from_slice(&self.count.to_le_bytes());
            out.extend_from_slice(&(self.central.len() as u64).to_le_bytes());
            out.extend_from_slice(&u64::from(cd_offset).to_le_bytes());
            out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&eocd64.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            0xffffu16
        } else {
            self.count as u16
        };
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&count16.to_le_bytes());
        out.extend_from_slice(&count16.to_le_bytes());
        out.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
}

pub fn raw_zip(entries: &[RawEntry]) -> RawZip {
    let mut z = RawZip::default();
    for e in entries {
        z.add(e);
    }
    z
}
