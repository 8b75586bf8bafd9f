//! `haul vsix`: install, inspect, uninstall and list VS Code extensions.
//!
//! Owns: the command lines, fetching a `.vsix` given as a URL (through the engine, verified
//! when a sha256 is given, into `.haul-vsix-downloads/` beside the root, where the same
//! command again resumes an interrupted download; removed once installed) and how results are
//! shown. Does not own the install rules (manifest checks, folder names, exec bits,
//! atomic swap): those are `haul_install::vsix`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use haul_blocking::Client;
use haul_core::{CancelMode, Config, Download};
use haul_install::extract::{create_and_lock_dir, lock_dir, recover, DirLock};
use haul_install::vsix::{self, InstalledExtension, VsixInstall};
use haul_install::InstallError;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::exit;
use crate::extract::{exit_code_for, sha256_file};
use crate::progress::{Mode, Reporter};

/// Options of `haul vsix`.
#[derive(Args, Debug, Clone)]
pub struct VsixArgs {
    #[command(subcommand)]
    pub command: VsixCommand,
}

/// The `haul vsix` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum VsixCommand {
    /// Install a .vsix (a file, or an http/https URL) under --root.
    Install(VsixInstallArgs),
    /// Print an extension's package.json (the archive is validated first).
    Manifest(VsixManifestArgs),
    /// Remove PUBLISHER.NAME (every version) or PUBLISHER.NAME-VERSION; absent is success.
    Uninstall(VsixUninstallArgs),
    /// List the extensions installed under --root.
    List(VsixListArgs),
}

/// Options of `haul vsix install`.
#[derive(Args, Debug, Clone)]
pub struct VsixInstallArgs {
    /// A .vsix file, or an http/https URL to download it from.
    #[arg(value_name = "FILE|URL")]
    pub source: String,
    /// The extensions directory (e.g. ~/.vscode/extensions).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Expected SHA-256 of the .vsix; checked while downloading (or on the local file).
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub sha256: Option<String>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of `haul vsix manifest`.
#[derive(Args, Debug, Clone)]
pub struct VsixManifestArgs {
    /// A .vsix file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Options of `haul vsix uninstall`.
#[derive(Args, Debug, Clone)]
pub struct VsixUninstallArgs {
    /// PUBLISHER.NAME or PUBLISHER.NAME-VERSION (case-insensitive).
    #[arg(value_name = "ID")]
    pub id: String,
    /// The extensions directory.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Print the removed extensions as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of `haul vsix list`.
#[derive(Args, Debug, Clone)]
pub struct VsixListArgs {
    /// The extensions directory.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Print a JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `haul vsix`; returns the exit code.
pub fn run(args: VsixArgs) -> i32 {
    match args.command {
        VsixCommand::Install(a) => install(a),
        VsixCommand::Manifest(a) => manifest(a),
        VsixCommand::Uninstall(a) => uninstall(a),
        VsixCommand::List(a) => list(a),
    }
}

fn is_url(source: &str) -> bool {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The directory that holds `root` (where a downloaded .vsix waits before install).
fn parent_of(root: &Path) -> PathBuf {
    match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 64 hex digits (either case), for `--sha256`.
fn parse_sha256(text: &str) -> Result<String, String> {
    let hex = text.trim();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_string())
    } else {
        Err(format!("{text:?} is not a sha256 (64 hex digits)"))
    }
}

/// Locks `root` for this command (another install into it waits instead of having its
/// staging tree taken for a crash's leftover) and cleans what an interrupted install left.
/// A missing `root` is created first when `create` is given (the directories made are
/// pushed to it, outermost first), else left alone (nothing to clean).
fn lock_and_recover(
    root: &Path,
    create: Option<&mut Vec<PathBuf>>,
) -> Result<Option<DirLock>, InstallError> {
    let lock = if let Some(created) = create {
        create_and_lock_dir(root, || {
            let made =
                crate::extract::create_dir_tracked(root).map_err(|source| InstallError::Io {
                    op: "create directory",
                    path: root.to_path_buf(),
                    source,
                })?;
            created.extend(made);
            Ok(())
        })?
    } else if !root.is_dir() {
        return Ok(None);
    } else {
        lock_dir(root)?
    };
    recover(root)?;
    Ok(Some(lock))
}

fn install(args: VsixInstallArgs) -> i32 {
    if std::fs::metadata(&args.root).is_ok_and(|m| !m.is_dir()) {
        eprintln!(
            "haul vsix: --root {} is not a directory",
            args.root.display()
        );
        return exit::USAGE;
    }
    // Directories made for the root are removed again if the install fails.
    let mut created = Vec::new();
    let lock = match lock_and_recover(&args.root, Some(&mut created)) {
        Ok(lock) => lock,
        Err(e) => {
            crate::extract::remove_made_dirs(&created);
            eprintln!("haul vsix: {e}");
            return exit_code_for(&e);
        }
    };
    let code = install_locked(&args);
    if code != exit::OK {
        drop(lock);
        crate::extract::remove_made_dirs(&created);
    }
    code
}

fn install_locked(args: &VsixInstallArgs) -> i32 {
    // Kept alive until the install is done: it holds the downloaded .vsix.
    let mut held_download = None;
    let archive = if is_url(&args.source) {
        match fetch(args, &mut held_download) {
            Ok(path) => path,
            Err(code) => return code,
        }
    } else {
        // A signal stops the extraction (`fetch` sets this up for a download).
        crate::signals::on_interrupt(|| {});
        let path = PathBuf::from(&args.source);
        if let Some(expected) = &args.sha256 {
            match sha256_file(&path) {
                Ok(actual) if actual.eq_ignore_ascii_case(expected.trim()) => {}
                Ok(actual) => {
                    eprintln!(
                        "haul vsix: {}: sha256 mismatch: expected {}, got {actual}",
                        path.display(),
                        expected.trim()
                    );
                    return exit::VERIFICATION;
                }
                Err(e) => {
                    eprintln!("haul vsix: {}: {e}", path.display());
                    return exit::LOCAL_IO;
                }
            }
        }
        path
    };
    match vsix::install_vsix_or_stop(
        &archive,
        &args.root,
        Some(crate::signals::extraction_stop()),
    ) {
        Ok(done) => {
            report_install(&done, args);
            exit::OK
        }
        Err(e) => {
            if e.is_interrupted() {
                // The verified .vsix stays for the same command again.
                if let Some(held) = &mut held_download {
                    held.keep = true;
                }
            }
            eprintln!("haul vsix: {}: {e}", args.source);
            exit_code_for(&e)
        }
    }
}

/// Downloads the .vsix at `args.source` into the root's downloads directory beside it (see
/// [`downloads_dir`]; stored in `holder` so it lives until the install is done).
fn fetch(args: &VsixInstallArgs, holder: &mut Option<Downloaded>) -> Result<PathBuf, i32> {
    let dir = downloads_dir(&args.root);
    let dest = dir.join(download_name(&args.source));
    let mut download = Download::new(&args.source, &dest).map_err(|e| {
        eprintln!("haul vsix: {e}");
        exit::USAGE
    })?;
    if let Some(hex) = &args.sha256 {
        download = download.sha256(hex).map_err(|e| {
            eprintln!("haul vsix: {e}");
            exit::USAGE
        })?;
    }
    let client = Client::new(Config::default()).map_err(|e| {
        eprintln!("haul vsix: {e}");
        exit::USAGE
    })?;
    // Made only once the download is known to be valid, so that a refused one leaves none.
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("haul vsix: cannot create {}: {e}", dir.display());
        return Err(exit::LOCAL_IO);
    }
    let cancel = client.cancel_handle();
    crate::signals::on_interrupt(move || cancel.stop_all(CancelMode::KeepPartial));
    let mode = if args.json {
        Mode::Quiet
    } else {
        Mode::choose(false, args.quiet)
    };
    let mut reporter = Reporter::new(mode, 1);
    let outcome = client
        .download(download, |ev| reporter.event(ev))
        // The reporter has shown the error (in every mode but JSON, which is not used here).
        .map_err(|e| {
            // Left if it holds a partial kept for the next run.
            let _ = std::fs::remove_dir(&dir);
            exit::for_download(&e)
        })?;
    *holder = Some(Downloaded {
        path: outcome.path.clone(),
        keep: false,
    });
    Ok(outcome.path)
}

/// Where .vsix files from URLs for `root` are downloaded: beside the root (not in it, where
/// VS Code looks for extensions), one directory per root
/// (`.haul-vsix-downloads-<16 hex digits of the root's absolute path's sha256>`), so that
/// the root's lock, which every install into it holds, covers the directory too.
fn downloads_dir(root: &Path) -> PathBuf {
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    // `ext` and `ext/` are one root.
    let normal: PathBuf = absolute.components().collect();
    let digest = hex::encode(Sha256::digest(normal.as_os_str().as_encoded_bytes()));
    parent_of(root).join(format!(".haul-vsix-downloads-{}", &digest[..16]))
}

/// The file a .vsix from `url` is downloaded to in its root's [`downloads_dir`]: the same
/// for the same command, so that it resumes the partial an interruption kept.
fn download_name(url: &str) -> String {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    format!("{}.vsix", &digest[..16])
}

/// A downloaded .vsix: removed (and its directory, once empty) when the install step is
/// over, unless a signal stopped it (`keep`: with `--sha256` the same command again finds it
/// verified and installs it without fetching it again; without, it is fetched again over it).
struct Downloaded {
    path: PathBuf,
    keep: bool,
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn report_install(done: &VsixInstall, args: &VsixInstallArgs) {
    let id = done.manifest.id();
    let version = &done.manifest.version;
    if args.json {
        println!(
            "{}",
            json!({
                "id": id,
                "version": version,
                "dir": done.dir.to_string_lossy(),
                "already_installed": done.already_installed,
                "files": done.files,
                "made_executable": done.healed.made_executable,
            })
        );
        return;
    }
    if args.quiet {
        return;
    }
    if done.already_installed {
        println!("{id} {version} already installed in {}", done.dir.display());
        if !done.healed.made_executable.is_empty() {
            println!(
                "  made {} file(s) executable",
                done.healed.made_executable.len()
            );
        }
    } else {
        println!(
            "installed {id} {version} in {} ({} files)",
            done.dir.display(),
            done.files
        );
    }
}

fn manifest(args: VsixManifestArgs) -> i32 {
    match vsix::read_manifest(&args.file) {
        Ok(m) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&m.json).expect("a JSON value serialises")
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("haul vsix: {}: {e}", args.file.display());
            exit_code_for(&e)
        }
    }
}

fn extension_json(e: &InstalledExtension) -> serde_json::Value {
    json!({
        "id": e.id,
        "publisher": e.publisher,
        "name": e.name,
        "version": e.version,
        "dir": e.dir.to_string_lossy(),
    })
}

fn uninstall(args: VsixUninstallArgs) -> i32 {
    let removed = match lock_and_recover(&args.root, None)
        .and_then(|lock| vsix::uninstall(&args.id, &args.root).map(|r| (r, lock)))
        .map(|(r, _lock)| r)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haul vsix: {e}");
            return exit_code_for(&e);
        }
    };
    if args.json {
        let list: Vec<_> = removed.iter().map(extension_json).collect();
        println!("{}", json!({ "removed": list }));
    } else if removed.is_empty() {
        eprintln!("{} is not installed; nothing to do", args.id);
    } else {
        for e in &removed {
            println!("removed {} {} from {}", e.id, e.version, e.dir.display());
        }
    }
    exit::OK
}

fn list(args: VsixListArgs) -> i32 {
    let found = match vsix::list(&args.root) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("haul vsix: {e}");
            return exit_code_for(&e);
        }
    };
    if args.json {
        let list: Vec<_> = found.iter().map(extension_json).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for e in &found {
            println!("{:<40} {:<16} {}", e.id, e.version, e.dir.display());
        }
    }
    exit::OK
}
