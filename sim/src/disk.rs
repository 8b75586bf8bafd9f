//! The virtual disk: files with a volatile and a durable image, a namespace with a volatile
//! and a durable view, and crashes that keep only what was durable.
//!
//! # Model
//!
//! - An inode holds `data` (what reads see) and `durable` (what survives a crash).
//!   `WriteAt`, `SetLen` and `Open { truncate }` change only `data`. `Sync` copies the file's
//!   `data` to `durable` (fsync/fdatasync of file contents).
//! - The namespace (path -> inode) also has two views. Creating a file (`Open` of a missing
//!   path) and `Remove` change only the volatile view. A directory sync copies the volatile
//!   view of that directory into the durable one, as POSIX `fsync` on a directory does.
//!   `Rename` and `WriteFileAtomic` are atomic and end with a sync of the destination's
//!   directory (the io.rs contract; haul-blocking calls `sync_parent`), so they are durable
//!   when they complete, and they also make every earlier create/remove in that directory
//!   durable. A file fsync does not make its own directory entry durable (stricter than
//!   ext4, as POSIX allows). `OpenUnnamed` makes an inode in no view of the namespace;
//!   `Publish` names it (with `sync`: its data and the name made durable) and closes it.
//! - [`VirtualDisk::crash`] keeps the durable namespace and every inode's durable image and
//!   forgets open files. Operations still pending at a crash never happened.
//! - Every change bumps a generation number, so the invariant checker re-verifies a
//!   destination only when something it depends on changed.
//!
//! This module executes operations; it does not schedule them (the world keeps per-file
//! order) and it does not judge the engine (the checker does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use haul_core::{FileId, IoErrorKind, IoFailure, IoOp, IoResult};

/// What a write fault does to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Nothing is written; the write fails with "no space".
    NoSpace,
    /// Only `keep` bytes are written, then the write fails with "no space".
    Short { keep: usize },
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Bumped whenever `data` or `durable` changes.
    generation: u64,
}

/// A file's identity and version as seen through one view of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The inode the path names.
    pub inode: u64,
    /// The inode's generation.
    pub generation: u64,
}

/// The simulated file system.
#[derive(Debug, Default)]
pub struct VirtualDisk {
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    open: BTreeMap<FileId, u64>,
    /// Files whose open was refused: what the engine queued behind the open fails, as the
    /// runtimes fail it, until the file's close.
    refused: std::collections::BTreeSet<FileId>,
    next_inode: u64,
    next_generation: u64,
    /// Contract breaches seen while executing (an operation on a file that is not open...).
    pub misuse: Vec<String>,
}

fn failed(kind: IoErrorKind, message: impl Into<String>) -> IoResult {
    IoResult::Failed(IoFailure::new(kind, message))
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl VirtualDisk {
    /// An empty disk.
    pub fn new() -> VirtualDisk {
        VirtualDisk::default()
    }

    fn bump(&mut self, inode: u64) {
        self.next_generation += 1;
        if let Some(i) = self.inodes.get_mut(&inode) {
            i.generation = self.next_generation;
        }
    }

    fn new_inode(&mut self, data: Vec<u8>, durable: Vec<u8>) -> u64 {
        self.next_inode += 1;
        self.next_generation += 1;
        let inode = Inode {
            data,
            durable,
            generation: self.next_generation,
        };
        self.inodes.insert(self.next_inode, inode);
        self.next_inode
    }

    fn sync_dir(&mut self, dir: &Path) {
        self.durable_names.retain(|p, _| parent(p) != dir);
        for (p, ino) in &self.names {
            if parent(p) == dir {
                self.durable_names.insert(p.clone(), *ino);
            }
        }
    }

    /// Whether `file` is open.
    pub fn is_open(&self, file: FileId) -> bool {
        self.open.contains_key(&file)
    }

    /// Files currently open.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// What reads of `path` see now.
    pub fn read(&self, path: &Path) -> Option<&[u8]> {
        let ino = self.names.get(path)?;
        Some(&self.inodes[ino].data)
    }

    /// What `path` would hold after a crash now.
    pub fn read_durable(&self, path: &Path) -> Option<&[u8]> {
        let ino = self.durable_names.get(path)?;
        Some(&self.inodes[ino].durable)
    }

    /// The version of `path` in the volatile view.
    pub fn version(&self, path: &Path) -> Option<Version> {
        let ino = *self.names.get(path)?;
        Some(Version {
            inode: ino,
            generation: self.inodes[&ino].generation,
        })
    }

    /// The version of `path` in the durable view.
    pub fn durable_version(&self, path: &Path) -> Option<Version> {
        let ino = *self.durable_names.get(path)?;
        Some(Version {
            inode: ino,
            generation: self.inodes[&ino].generation,
        })
    }

    /// The durable image of the file `path` names in the volatile view (what a sync made
    /// durable, whether or not its name is durable yet).
    pub fn durable_data_of(&self, path: &Path) -> Option<&[u8]> {
        let ino = self.names.get(path)?;
        Some(&self.inodes[ino].durable)
    }

    /// Paths in the volatile view, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.names.keys().map(PathBuf::as_path)
    }

    /// A crash: only durable names and durable images survive; nothing stays open.
    pub fn crash(&mut self) {
        self.open.clear();
        self.refused.clear();
        self.names = self.durable_names.clone();
        let live: std::collections::BTreeSet<u64> = self.names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        let inodes: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in inodes {
            let i = self.inodes.get_mut(&ino).expect("listed");
            if i.data != i.durable {
                i.data = i.durable.clone();
                self.bump(ino);
            }
        }
        // Every view changed meaning: let checkers re-verify.
        self.next_generation += 1;
    }

    /// Execute one file operation. `fault` applies to `WriteAt` and `WriteFileAtomic`.
    pub fn execute(&mut self, op: &IoOp, fault: Option<WriteFault>) -> IoResult {
        match op {
            IoOp::ReadFile { path, max_len } => match self.names.get(path) {
                None => IoResult::NotFound,
                Some(ino) => {
                    let data = &self.inodes[ino].data;
                    if data.len() as u64 > *max_len {
                        failed(IoErrorKind::Other, "file larger than max_len")
                    } else {
                        IoResult::Data(Bytes::copy_from_slice(data))
                    }
                }
            },
            IoOp::WriteFileAtomic { path, data } => {
                if fault.is_some() {
                    return failed(IoErrorKind::NoSpace, "no space left on device");
                }
                let ino = self.new_inode(data.to_vec(), data.to_vec());
                self.names.insert(path.clone(), ino);
                self.sync_dir(&parent(path));
                IoResult::Done
            }
            IoOp::Open {
                file,
                path,
                truncate,
            } => {
                if self.open.contains_key(file) {
                    self.misuse
                        .push(format!("{file:?} opened while already open"));
                }
                let ino = match self.names.get(path) {
                    Some(ino) => *ino,
                    None => {
                        let ino = self.new_inode(Vec::new(), Vec::new());
                        self.names.insert(path.clone(), ino);
                        ino
                    }
                };
                if *truncate && !self.inodes[&ino].data.is_empty() {
                    self.inodes.get_mut(&ino).expect("named").data.clear();
                    self.bump(ino);
                }
                let len = self.inodes[&ino].data.len() as u64;
                self.open.insert(*file, ino);
                IoResult::Opened { len }
            }
            IoOp::OpenUnnamed { file, .. } => {
                if self.open.contains_key(file) {
                    self.misuse
                        .push(format!("{file:?} opened while already open"));
                }
                // In no view of the namespace: a crash loses it.
                let ino = self.new_inode(Vec::new(), Vec::new());
                self.open.insert(*file, ino);
                IoResult::Opened { len: 0 }
            }
            IoOp::Publish { file, to, sync, .. } => match self.open.remove(file) {
                Some(ino) => {
                    if *sync {
                        let inode = self.inodes.get_mut(&ino).expect("open inode");
                        if inode.durable != inode.data {
                            inode.durable = inode.data.clone();
                            self.bump(ino);
                        }
                    }
                    self.names.insert(to.clone(), ino);
                    if *sync {
                        self.sync_dir(&parent(to));
                    }
                    self.next_generation += 1;
                    IoResult::Done
                }
                None => {
                    self.misuse
                        .push(format!("Publish of {file:?}, which is not open"));
                    failed(IoErrorKind::Other, "bad file descriptor")
                }
            },
            IoOp::OpenRead { file, path } => {
                if self.open.contains_key(file) {
                    self.misuse
                        .push(format!("{file:?} opened while already open"));
                }
                match self.names.get(path) {
                    None => IoResult::NotFound,
                    Some(ino) => {
                        let len = self.inodes[ino].data.len() as u64;
                        self.open.insert(*file, *ino);
                        IoResult::Opened { len }
                    }
                }
            }
            IoOp::CopyFile { from, to } => {
                if fault.is_some() {
                    return failed(IoErrorKind::NoSpace, "no space left on device");
                }
                match self.names.get(from) {
                    None => failed(
                        IoErrorKind::Other,
                        format!("copy: {} does not exist", from.display()),
                    ),
                    Some(ino) => {
                        let data = self.inodes[ino].data.clone();
                        let copy = self.new_inode(data.clone(), data);
                        self.names.insert(to.clone(), copy);
                        self.sync_dir(&parent(to));
                        IoResult::Done
                    }
                }
            }
            IoOp::ReadAt { file, offset, len } => match self.open_inode(*file, "ReadAt") {
                Err(e) => e,
                Ok(ino) => {
                    let data = &self.inodes[&ino].data;
                    let start = (*offset as usize).min(data.len());
                    let end = start.saturating_add(*len as usize).min(data.len());
                    IoResult::Data(Bytes::copy_from_slice(&data[start..end]))
                }
            },
            IoOp::Digest { file, len, .. } => match self.open_inode(*file, "Digest") {
                Err(e) => e,
                Ok(ino) => {
                    use sha2::Digest as _;
                    let data = &self.inodes[&ino].data;
                    match data.get(..*len as usize) {
                        Some(bytes) => IoResult::Digest(sha2::Sha256::digest(bytes).into()),
                        None => failed(IoErrorKind::Other, "file shorter than its digest"),
                    }
                }
            },
            IoOp::WriteAt { file, offset, data } => match self.open_inode(*file, "WriteAt") {
                Err(e) => e,
                Ok(ino) => {
                    let keep = match fault {
                        None => data.len(),
                        Some(WriteFault::NoSpace) => 0,
                        Some(WriteFault::Short { keep }) => keep.min(data.len()),
                    };
                    if keep > 0 {
                        let inode = self.inodes.get_mut(&ino).expect("open inode");
                        let start = *offset as usize;
                        let end = start + keep;
                        if inode.data.len() < end {
                            inode.data.resize(end, 0);
                        }
                        inode.data[start..end].copy_from_slice(&data[..keep]);
                        self.bump(ino);
                    }
                    if keep < data.len() {
                        failed(IoErrorKind::NoSpace, "no space left on device")
                    } else {
                        IoResult::Done
                    }
                }
            },
            IoOp::SetLen { file, len } => match self.open_inode(*file, "SetLen") {
                Err(e) => e,
                Ok(ino) => {
                    let inode = self.inodes.get_mut(&ino).expect("open inode");
                    if inode.data.len() as u64 != *len {
                        inode.data.resize(*len as usize, 0);
                        self.bump(ino);
                    }
                    IoResult::Done
                }
            },
            IoOp::Sync { file } => match self.open_inode(*file, "Sync") {
                Err(e) => e,
                Ok(ino) => {
                    let inode = self.inodes.get_mut(&ino).expect("open inode");
                    if inode.durable != inode.data {
                        inode.durable = inode.data.clone();
                        self.bump(ino);
                    }
                    IoResult::Done
                }
            },
            IoOp::CloseFile { file, .. } => match self.open.remove(file) {
                Some(_) => IoResult::Done,
                None if self.refused.remove(file) => {
                    failed(IoErrorKind::Other, "the file's open failed")
                }
                None => {
                    self.misuse
                        .push(format!("CloseFile on {file:?}, which is not open"));
                    failed(IoErrorKind::Other, "bad file descriptor")
                }
            },
            IoOp::Rename { from, to, sync } => match self.names.remove(from) {
                Some(ino) => {
                    self.names.insert(to.clone(), ino);
                    if *sync {
                        self.sync_dir(&parent(from));
                        self.sync_dir(&parent(to));
                    }
                    self.next_generation += 1;
                    IoResult::Done
                }
                None => failed(
                    IoErrorKind::Other,
                    format!("rename: {} does not exist", from.display()),
                ),
            },
            IoOp::Remove { path } => {
                self.names.remove(path);
                IoResult::Done
            }
            // Held partials are refused before they reach the disk (the world's fault plan).
            IoOp::RemoveUnheld { path } => match self.names.remove(path) {
                Some(_) => IoResult::Done,
                None => IoResult::NotFound,
            },
            IoOp::Connect { .. } | IoOp::Send { .. } | IoOp::Recv { .. } | IoOp::Close { .. } => {
                self.misuse
                    .push(format!("network operation sent to the disk: {op:?}"));
                failed(IoErrorKind::Other, "not a file operation")
            }
        }
    }

    /// The open of `file` at `path` was refused: another process holds the file there
    /// locked (made now, with `data`, if nothing was there: that process is writing it).
    /// Nothing of this engine's was opened, and the operations queued behind the open fail.
    pub fn refuse_open(&mut self, file: FileId, path: &Path, data: &[u8]) {
        self.refused.insert(file);
        self.hold_elsewhere(path, data);
    }

    /// Another process holds the file at `path` locked (made now, with `data`, if nothing
    /// was there: that process is writing it).
    pub fn hold_elsewhere(&mut self, path: &Path, data: &[u8]) {
        if !self.names.contains_key(path) {
            let ino = self.new_inode(data.to_vec(), Vec::new());
            self.names.insert(path.to_path_buf(), ino);
        }
    }

    fn open_inode(&mut self, file: FileId, what: &str) -> Result<u64, IoResult> {
        match self.open.get(&file) {
            Some(ino) => Ok(*ino),
            None if self.refused.contains(&file) => {
                Err(failed(IoErrorKind::Other, "the file's open failed"))
            }
            None => {
                self.misuse
                    .push(format!("{what} on {file:?}, which is not open"));
                Err(failed(IoErrorKind::Other, "bad file descriptor"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(disk: &mut VirtualDisk, id: u64, path: &str) -> FileId {
        let file = FileId(id);
        let r = disk.execute(
            &IoOp::Open {
                file,
                path: path.into(),
                truncate: false,
            },
            None,
        );
        assert!(matches!(r, IoResult::Opened { .. }));
        file
    }

    fn write(disk: &mut VirtualDisk, file: FileId, offset: u64, data: &[u8]) {
        let op = IoOp::WriteAt {
            file,
            offset,
            data: Bytes::copy_from_slice(data),
        };
        assert_eq!(disk.execute(&op, None), IoResult::Done);
    }

    #[test]
    fn a_crash_keeps_synced_bytes_and_loses_the_rest() {
        let mut disk = VirtualDisk::new();
        let f = open(&mut disk, 1, "/d/a");
        write(&mut disk, f, 0, b"hello");
        disk.execute(&IoOp::Sync { file: f }, None);
        write(&mut disk, f, 5, b" world");
        // Make the name durable (a rename in the same directory syncs it).
        disk.execute(
            &IoOp::WriteFileAtomic {
                path: "/d/s".into(),
                data: Bytes::from_static(b"x"),
            },
            None,
        );
        assert_eq!(disk.read(Path::new("/d/a")), Some(&b"hello world"[..]));
        disk.crash();
        assert_eq!(disk.read(Path::new("/d/a")), Some(&b"hello"[..]));
        assert_eq!(disk.open_files(), 0);
    }

    #[test]
    fn a_created_file_whose_directory_was_never_synced_vanishes_in_a_crash() {
        let mut disk = VirtualDisk::new();
        let f = open(&mut disk, 1, "/d/a");
        write(&mut disk, f, 0, b"data");
        disk.execute(&IoOp::Sync { file: f }, None);
        disk.crash();
        assert_eq!(disk.read(Path::new("/d/a")), None);
    }

    #[test]
    fn rename_is_atomic_and_durable_but_carries_only_synced_data() {
        let mut disk = VirtualDisk::new();
        let f = open(&mut disk, 1, "/d/a.part");
        write(&mut disk, f, 0, b"abc");
        disk.execute(&IoOp::Sync { file: f }, None);
        write(&mut disk, f, 3, b"def");
        disk.execute(
            &IoOp::CloseFile {
                file: f,
                then: haul_core::AfterClose::Done,
            },
            None,
        );
        let r = disk.execute(
            &IoOp::Rename {
                from: "/d/a.part".into(),
                to: "/d/a".into(),
                sync: true,
            },
            None,
        );
        assert_eq!(r, IoResult::Done);
        assert_eq!(disk.read_durable(Path::new("/d/a")), Some(&b"abc"[..]));
        assert_eq!(disk.read(Path::new("/d/a.part")), None);
        disk.crash();
        assert_eq!(disk.read(Path::new("/d/a")), Some(&b"abc"[..]));
    }

    #[test]
    fn a_remove_is_undone_by_a_crash_unless_the_directory_was_synced() {
        let mut disk = VirtualDisk::new();
        let put = |disk: &mut VirtualDisk, p: &str| {
            disk.execute(
                &IoOp::WriteFileAtomic {
                    path: p.into(),
                    data: Bytes::from_static(b"s"),
                },
                None,
            )
        };
        put(&mut disk, "/d/state");
        disk.execute(
            &IoOp::Remove {
                path: "/d/state".into(),
            },
            None,
        );
        disk.crash();
        assert!(disk.read(Path::new("/d/state")).is_some());
        disk.execute(
            &IoOp::Remove {
                path: "/d/state".into(),
            },
            None,
        );
        put(&mut disk, "/d/other");
        disk.crash();
        assert!(disk.read(Path::new("/d/state")).is_none());
    }

    #[test]
    fn short_writes_store_a_prefix_and_fail() {
        let mut disk = VirtualDisk::new();
        let f = open(&mut disk, 1, "/d/a");
        let op = IoOp::WriteAt {
            file: f,
            offset: 0,
            data: Bytes::from_static(b"abcdef"),
        };
        let r = disk.execute(&op, Some(WriteFault::Short { keep: 2 }));
        assert!(matches!(r, IoResult::Failed(f) if f.kind == IoErrorKind::NoSpace));
        assert_eq!(disk.read(Path::new("/d/a")), Some(&b"ab"[..]));
    }

    #[test]
    fn operations_on_unopened_files_are_reported_as_misuse() {
        let mut disk = VirtualDisk::new();
        let r = disk.execute(&IoOp::Sync { file: FileId(9) }, None);
        assert!(matches!(r, IoResult::Failed(_)));
        assert_eq!(disk.misuse.len(), 1);
    }
}
