//! Files: one thread per open file runs its operations in issue order; one more thread runs
//! whole-file operations (small state files, renames, removals).
//!
//! Also the std file effects other runtimes reuse: [`execute_path_op`] and [`FileWorker`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use bytes::{Bytes, BytesMut};
use haul_core::{FileId, IoErrorKind, IoFailure, IoOp, IoRequest, IoResult};

use crate::Msg;

pub(crate) struct Files {
    tx: Sender<Msg>,
    open: BTreeMap<FileId, Sender<IoRequest>>,
    misc: Sender<IoRequest>,
}

impl Files {
    pub(crate) fn new(tx: Sender<Msg>) -> Files {
        let (misc, rx) = mpsc::channel::<IoRequest>();
        let done = tx.clone();
        std::thread::Builder::new()
            .name("haul-files".into())
            .spawn(move || {
                for req in rx {
                    let r = execute_path_op(&req.op);
                    let _ = done.send(Msg::Done(req.id, r));
                }
            })
            .expect("spawn file thread");
        Files {
            tx,
            open: BTreeMap::new(),
            misc,
        }
    }

    pub(crate) fn start(&mut self, req: IoRequest) {
        let file = match &req.op {
            IoOp::Open { file, .. }
            | IoOp::ReadAt { file, .. }
            | IoOp::WriteAt { file, .. }
            | IoOp::SetLen { file, .. }
            | IoOp::Sync { file }
            | IoOp::CloseFile { file } => *file,
            _ => {
                let _ = self.misc.send(req);
                return;
            }
        };
        if let IoOp::Open { .. } = req.op {
            let (q, rx) = mpsc::channel::<IoRequest>();
            let done = self.tx.clone();
            std::thread::Builder::new()
                .name(format!("haul-file-{}", file.0))
                .spawn(move || file_thread(rx, done))
                .expect("spawn file thread");
            self.open.insert(file, q);
        }
        let closing = matches!(req.op, IoOp::CloseFile { .. });
        let sent = match self.open.get(&file) {
            Some(q) => q.send(req).map_err(|e| e.0),
            None => Err(req),
        };
        if let Err(req) = sent {
            let _ = self.tx.send(Msg::Done(
                req.id,
                IoResult::Failed(IoFailure::new(IoErrorKind::Other, "file is not open")),
            ));
        }
        if closing {
            self.open.remove(&file);
        }
    }
}

/// Runs one file's operations in issue order. `Sync` is handed to a companion thread so that
/// writes keep flowing while earlier data is flushed (the engine's checkpoints would otherwise
/// stall the download for as long as the disk takes); `CloseFile` waits for outstanding syncs,
/// so its completion still follows every earlier operation's.
fn file_thread(rx: mpsc::Receiver<IoRequest>, done: Sender<Msg>) {
    let mut worker = FileWorker::default();
    let mut syncer: Option<(Sender<haul_core::IoId>, std::thread::JoinHandle<()>)> = None;
    for req in rx {
        match req.op {
            IoOp::Sync { .. } => {
                if syncer.is_none() {
                    let clone = worker.file.as_ref().map(File::try_clone);
                    if let Some(Ok(f)) = clone {
                        let (tx, srx) = mpsc::channel::<haul_core::IoId>();
                        let sdone = done.clone();
                        let path = worker.path.clone();
                        let handle = std::thread::spawn(move || {
                            for id in srx {
                                let r = match f.sync_data() {
                                    Ok(()) => IoResult::Done,
                                    Err(e) => {
                                        IoResult::Failed(local_failure(&e, "sync", Some(&path)))
                                    }
                                };
                                let _ = sdone.send(Msg::Done(id, r));
                            }
                        });
                        syncer = Some((tx, handle));
                    }
                }
                match &syncer {
                    Some((tx, _)) => {
                        let _ = tx.send(req.id);
                    }
                    None => {
                        let r = worker.execute(&req.op);
                        let _ = done.send(Msg::Done(req.id, r));
                    }
                }
            }
            IoOp::CloseFile { .. } => {
                if let Some((tx, handle)) = syncer.take() {
                    drop(tx);
                    let _ = handle.join();
                }
                let r = worker.execute(&req.op);
                let _ = done.send(Msg::Done(req.id, r));
                return;
            }
            _ => {
                let r = worker.execute(&req.op);
                let _ = done.send(Msg::Done(req.id, r));
            }
        }
    }
}

/// Map a std I/O error to the engine's classes.
pub fn local_failure(e: &std::io::Error, what: &str, path: Option<&Path>) -> IoFailure {
    let kind = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => IoErrorKind::NoSpace,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            IoErrorKind::PermissionDenied
        }
        _ => IoErrorKind::Other,
    };
    let msg = match path {
        Some(p) => format!("{what} {}: {e}", p.display()),
        None => format!("{what}: {e}"),
    };
    IoFailure::new(kind, msg)
}

/// Execute one of the whole-file operations (`ReadFile`, `WriteFileAtomic`, `Rename`,
/// `Remove`) with blocking std calls.
pub fn execute_path_op(op: &IoOp) -> IoResult {
    match op {
        IoOp::ReadFile { path, max_len } => match File::open(path) {
            Ok(f) => {
                let mut buf = Vec::new();
                match f.take(*max_len).read_to_end(&mut buf) {
                    Ok(_) => IoResult::Data(Bytes::from(buf)),
                    Err(e) => IoResult::Failed(local_failure(&e, "read", Some(path))),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => IoResult::NotFound,
            Err(e) => IoResult::Failed(local_failure(&e, "open", Some(path))),
        },
        IoOp::WriteFileAtomic { path, data } => match write_atomic(path, data) {
            Ok(()) => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "write", Some(path))),
        },
        IoOp::Rename { from, to } => match fs::rename(from, to).and_then(|()| sync_parent(to)) {
            Ok(()) => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "rename to", Some(to))),
        },
        IoOp::Remove { path } => match fs::remove_file(path) {
            Ok(()) => IoResult::Done,
            Err(e) if e.kind() == ErrorKind::NotFound => IoResult::Done,
            Err(e) => IoResult::Failed(local_failure(&e, "remove", Some(path))),
        },
        other => IoResult::Failed(IoFailure::new(
            IoErrorKind::Other,
            format!("not a whole-file operation: {other:?}"),
        )),
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = crate::files::with_suffix(path, ".tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    sync_parent(path)
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Make a rename or creation in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Executes the operations of one open file, in order.
#[derive(Default)]
pub struct FileWorker {
    file: Option<File>,
    path: std::path::PathBuf,
}

impl FileWorker {
    /// Execute one per-file operation.
    pub fn execute(&mut self, op: &IoOp) -> IoResult {
        let path = self.path.clone();
        let fail =
            |e: std::io::Error, what: &str| IoResult::Failed(local_failure(&e, what, Some(&path)));
        match op {
            IoOp::Open { path, truncate, .. } => {
                self.path = path.clone();
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if let Err(e) = fs::create_dir_all(dir) {
                        return IoResult::Failed(local_failure(&e, "create directory", Some(dir)));
                    }
                }
                let opened = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(*truncate)
                    .open(path)
                    .and_then(|f| f.metadata().map(|m| (f, m.len())));
                match opened {
                    Ok((f, len)) => {
                        self.file = Some(f);
                        IoResult::Opened { len }
                    }
                    Err(e) => IoResult::Failed(local_failure(&e, "open", Some(path))),
                }
            }
            IoOp::CloseFile { .. } => {
                self.file = None;
                IoResult::Done
            }
            _ => {
                let Some(f) = self.file.as_ref() else {
                    return IoResult::Failed(IoFailure::new(
                        IoErrorKind::Other,
                        "file is not open",
                    ));
                };
                match op {
                    IoOp::ReadAt { offset, len, .. } => {
                        let mut buf = BytesMut::zeroed(*len as usize);
                        let mut got = 0;
                        while got < buf.len() {
                            match f.read_at(&mut buf[got..], offset + got as u64) {
                                Ok(0) => break,
                                Ok(n) => got += n,
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(e) => return fail(e, "read"),
                            }
                        }
                        buf.truncate(got);
                        IoResult::Data(buf.freeze())
                    }
                    IoOp::WriteAt { offset, data, .. } => match f.write_all_at(data, *offset) {
                        Ok(()) => IoResult::Done,
                        Err(e) => fail(e, "write"),
                    },
                    IoOp::SetLen { len, .. } => match f.set_len(*len) {
                        Ok(()) => IoResult::Done,
                        Err(e) => fail(e, "truncate"),
                    },
                    IoOp::Sync { .. } => match f.sync_data() {
                        Ok(()) => IoResult::Done,
                        Err(e) => fail(e, "sync"),
                    },
                    other => IoResult::Failed(IoFailure::new(
                        IoErrorKind::Other,
                        format!("not a per-file operation: {other:?}"),
                    )),
                }
            }
        }
    }
}
