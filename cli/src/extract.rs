//! `haul extract` and `haul hash`: the local-file commands, and the exit code of an
//! installer error.
//!
//! Owns: the command lines of a safe extraction of any zip into a directory (replaced as a
//! whole) and of a SHA-256 of local files printed like `sha256sum`; the mapping of
//! [`InstallError`] to exit codes shared by `haul vsix` and `haul assets`. Does not own the
//! extraction rules themselves (`haul-install`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use haul_install::extract::{self, Durability, ExtractOptions};
use haul_install::InstallError;
use sha2::{Digest, Sha256};

use crate::exit;
use crate::units::{human_bytes, human_rate};

/// Read buffer of `haul hash` (large reads keep the syscall count low on big files).
pub const HASH_BUFFER: usize = 1 << 20;

/// Options of `haul extract`.
#[derive(Args, Debug, Clone)]
pub struct ExtractArgs {
    /// The zip archive to extract.
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,
    /// Destination directory; an existing one is replaced as a whole, atomically.
    #[arg(short = 'd', long = "dir", value_name = "DIR", required = true)]
    pub dir: PathBuf,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not make the tree durable before swapping it in (no syncfs): for scratch
    /// extractions and for timing extraction alone against `unzip -q`.
    #[arg(long = "no-sync")]
    pub no_sync: bool,
}

/// Options of `haul hash`.
#[derive(Args, Debug, Clone)]
pub struct HashArgs {
    /// Files to hash (`-`: stdin); each prints `HEX  FILE` like sha256sum (a name with a
    /// backslash or a line break escaped as sha256sum does).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// The exit code for an installer error: unsafe or invalid archives, manifests, catalogs
/// and configuration files are 6, local I/O is 7, an unusable name given on the command
/// line is a usage error, an extraction stopped by a signal is interrupted.
pub fn exit_code_for(e: &InstallError) -> i32 {
    if e.is_io() {
        exit::LOCAL_IO
    } else if e.is_interrupted() {
        exit::INTERRUPTED
    } else if matches!(
        e,
        InstallError::BadName { .. }
            | InstallError::DestinationNotDirectory { .. }
            | InstallError::ArchiveInsideDestination { .. }
            | InstallError::ArchiveNotAFile { .. }
    ) {
        exit::USAGE
    } else {
        // is_unsafe_archive(), and bad manifests, catalogs, catalog entries and
        // configuration files: all invalid input.
        exit::UNSAFE_INPUT
    }
}

/// Run `haul extract`; returns the exit code.
pub fn run_extract(args: ExtractArgs) -> i32 {
    let started = Instant::now();
    let parent = match args.dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The parent is created here (and removed again if the extraction fails) so that it can
    // be locked: another `haul extract` into it waits instead of having its staging tree
    // taken for a crash's leftover and deleted by this one's recovery. One that waited while
    // this one removed the parent notices and locks the parent created again
    // (see `create_and_lock_dir`).
    let mut created: Vec<PathBuf> = Vec::new();
    let locked = extract::create_and_lock_dir(&parent, || {
        let made = create_dir_tracked(&parent).map_err(|source| InstallError::Io {
            op: "create directory",
            path: parent.clone(),
            source,
        })?;
        created.extend(made);
        Ok(())
    });
    let undo_created = || remove_made_dirs(&created);
    let _lock = match locked {
        Ok(lock) => lock,
        Err(e) => {
            undo_created();
            crate::say(format_args!("haul extract: {e}"));
            return exit_code_for(&e);
        }
    };
    // An extraction cannot be resumed: a signal stops it like a failure (staging tree
    // removed, destination as it was, the parents made above removed). Taken only now, so
    // that a Ctrl-C while waiting for the lock still ends the wait at once.
    // The command's extraction stop: set in the signal handler itself (see
    // `signals::on_interrupt`).
    let stop = crate::signals::extraction_stop();
    crate::signals::on_interrupt(|| {});
    // Leftovers of a crashed extraction into this parent (staging, old trees).
    if let Err(e) = extract::recover(&parent) {
        undo_created();
        crate::say(format_args!("haul extract: {e}"));
        return exit_code_for(&e);
    }
    let options = ExtractOptions {
        durability: if args.no_sync {
            Durability::NoSync
        } else {
            Durability::SyncBeforeCommit
        },
        stop: Some(stop),
        ..ExtractOptions::default()
    };
    match extract::extract_and_commit(
        &args.archive,
        &args.dir,
        |name| Some(name.to_string()),
        &options,
    ) {
        Ok(done) => {
            if !args.quiet {
                let secs = started.elapsed().as_secs_f64();
                crate::say(format_args!(
                    "extracted {} files, {} directories ({}) into {}{} in {secs:.3}s ({})",
                    done.stats.files,
                    done.stats.directories,
                    human_bytes(done.stats.bytes),
                    done.dest.display(),
                    if done.replaced {
                        ", replacing the old tree"
                    } else {
                        ""
                    },
                    human_rate(done.stats.bytes as f64 / secs.max(1e-9)),
                ));
            }
            exit::OK
        }
        Err(e) if e.is_interrupted() => {
            undo_created();
            crate::say(format_args!(
                "haul extract: interrupted; nothing was changed ({} left as it was)",
                args.dir.display()
            ));
            exit::INTERRUPTED
        }
        Err(e) => {
            undo_created();
            crate::say(format_args!(
                "haul extract: {}: {e}",
                args.archive.display()
            ));
            exit_code_for(&e)
        }
    }
}

/// Removes the directories of `made` (outermost first, as [`create_dir_tracked`] returns
/// them) that are empty, innermost first: one that holds anything stays, and so do its
/// ancestors.
pub(crate) fn remove_made_dirs(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Creates `dir` and its missing ancestors; the directories it created, outermost first.
pub(crate) fn create_dir_tracked(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(path) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(path.to_path_buf()),
            Err(e) => return Err(e),
        }
        at = path.parent();
    }
    missing.reverse();
    let mut created = Vec::new();
    for path in missing {
        match std::fs::create_dir(&path) {
            Ok(()) => created.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for dir in created.iter().rev() {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e);
            }
        }
    }
    Ok(created)
}

/// The lowercase hex SHA-256 of a file. For a file larger than one buffer a reader thread fills [`HASH_BUFFER`]-sized buffers
/// while this thread hashes the previous ones, so reading (a copy out of the page cache, or
/// the disk) overlaps hashing instead of adding to it; a few buffers circulate between them.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    const IN_FLIGHT: usize = 3;
    let mut file = File::open(path)?;
    if file.metadata()?.len() <= HASH_BUFFER as u64 {
        // One buffer's worth: nothing to overlap, no thread.
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        return Ok(hex::encode(Sha256::digest(&data)));
    }
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
    for _ in 0..IN_FLIGHT {
        let _ = empty_tx.send(vec![0u8; HASH_BUFFER]);
    }
    let reader = std::thread::spawn(move || {
        while let Ok(mut buf) = empty_rx.recv() {
            buf.resize(HASH_BUFFER, 0);
            let mut filled = 0;
            // Fill the whole buffer (or reach the end) so every message carries a full piece.
            while filled < buf.len() {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                }
            }
            buf.truncate(filled);
            let end = filled == 0;
            if full_tx.send(Ok(buf)).is_err() || end {
                return;
            }
        }
    });
    let mut hasher = Sha256::new();
    let result = loop {
        match full_rx.recv() {
            Ok(Ok(buf)) if buf.is_empty() => break Ok(()),
            Ok(Ok(buf)) => {
                hasher.update(&buf);
                let _ = empty_tx.send(buf);
            }
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(std::io::Error::other("the reader thread stopped")),
        }
    };
    drop(empty_tx);
    let _ = reader.join();
    result.map(|()| hex::encode(hasher.finalize()))
}

/// Run `haul hash`; returns the exit code (7 if any file could not be read; the others
/// are still printed).
pub fn run_hash(args: HashArgs) -> i32 {
    let mut code = exit::OK;
    let mut out = std::io::stdout().lock();
    for path in &args.files {
        // `-` is stdin, as for sha256sum (a file of that name is `./-`).
        let digest = match path.as_os_str() == "-" {
            true => sha256_reader(std::io::stdin().lock()),
            false => sha256_file(path),
        };
        match digest {
            Ok(hex) => {
                if let Err(e) = out.write_all(&sum_line(&hex, path)) {
                    return output_failed(&e);
                }
            }
            Err(e) => {
                crate::say(format_args!("haul hash: {}: {e}", path.display()));
                code = exit::combine([code, exit::LOCAL_IO]);
            }
        }
    }
    if let Err(e) = out.flush() {
        return output_failed(&e);
    }
    code
}

/// The exit code when stdout cannot be written: a reader that stopped (`haul hash * | head
/// -1`) ends the command silently with 128 + SIGPIPE, as sha256sum ends; another failure
/// is said and is a local I/O failure.
fn output_failed(e: &std::io::Error) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return 141;
    }
    crate::say(format_args!("haul hash: cannot write the output: {e}"));
    exit::LOCAL_IO
}

/// The lowercase hex SHA-256 of everything `reader` gives.
fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// sha256sum's line for `path`: `HEX  NAME`, the name's bytes as they are; but a name
/// holding a backslash, a line feed or a carriage return has them written `\\`, `\n` and
/// `\r`, and the line starts with a backslash, as GNU coreutils writes it (so that `sha256sum
/// -c` reads it back, and a name cannot fake a line of its own).
fn sum_line(hex: &str, path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let name = path.as_os_str().as_bytes();
    let escaped = name.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut line = Vec::with_capacity(hex.len() + name.len() + 8);
    if escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(hex.as_bytes());
    line.extend_from_slice(b"  ");
    for &b in name {
        match (escaped, b) {
            (true, b'\\') => line.extend_from_slice(b"\\\\"),
            (true, b'\n') => line.extend_from_slice(b"\\n"),
            (true, b'\r') => line.extend_from_slice(b"\\r"),
            _ => line.push(b),
        }
    }
    line.push(b'\n');
    line
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn pipelined_file_hash_equals_the_one_shot_hash_at_every_buffer_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            HASH_BUFFER - 1,
            HASH_BUFFER,
            HASH_BUFFER + 1,
            5 * HASH_BUFFER + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(
                sha256_file(&path).unwrap(),
                hex::encode(Sha256::digest(&data)),
                "length {len}"
            );
        }
        assert!(sha256_file(&dir.path().join("missing")).is_err());
    }
}
