//! `haul cache`: look at and maintain a module cache (`ls`, `prune`, `verify`, `pins`).
//!
//! Owns the command lines and output of those subcommands and the exit codes of store
//! failures. Every subcommand opens the store, which first cleans up what an unclean stop left
//! (the report is shown); `ls` and `pins` read a cache this user cannot write as it is. It does not own the store's rules (`haul_modules::store`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use haul_modules::{FileKind, FileState, RecoveryReport, Store, StoreError};
use serde_json::json;

use crate::exit;
use crate::load::now_ms;
use crate::units::{human_bytes, parse_size};

/// Options of `haul cache`.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// The `haul cache` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum CacheCommand {
    /// List the stored files: hash, kind, size, last use and the apps that pin them.
    Ls(CacheDir),
    /// Evict least-recently-used files no app pins until the cache fits --budget.
    Prune(PruneArgs),
    /// Re-hash every stored file; corrupt files are removed, missing ones forgotten
    /// (exit 5 if any were found).
    Verify(CacheDir),
    /// Show each app's pinned manifest and the files it pins.
    Pins(CacheDir),
}

/// The cache a subcommand works on.
#[derive(Args, Debug, Clone)]
pub struct CacheDir {
    /// The module cache directory (as given to `haul load --cache`).
    #[arg(long, value_name = "DIR")]
    pub cache: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of `haul cache prune`.
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub dir: CacheDir,
    /// The most the cache may hold (e.g. 0, 512K, 10M, 1G); pinned files are kept even if
    /// they alone exceed it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub budget: u64,
}

/// The index file whose presence makes a directory a cache.
const INDEX_FILE: &str = "index.sqlite";

/// Run `haul cache`; returns the exit code.
pub fn run(args: CacheArgs) -> i32 {
    match args.command {
        CacheCommand::Ls(dir) => with_store(&dir, "ls", Access::ReadOnlyIfNeeded, ls),
        CacheCommand::Prune(prune_args) => {
            let budget = prune_args.budget;
            with_store(
                &prune_args.dir,
                "prune",
                Access::Write,
                |store, dir, now_ms, recovered| prune(store, dir, now_ms, recovered, budget),
            )
        }
        CacheCommand::Verify(dir) => with_store(&dir, "verify", Access::Write, verify),
        CacheCommand::Pins(dir) => with_store(&dir, "pins", Access::ReadOnlyIfNeeded, pins),
    }
}

/// What a subcommand's body reports.
type Report = Result<(i32, serde_json::Value), StoreError>;

/// What a subcommand needs of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// It writes (prune, verify): a cache this user cannot write is an error.
    Write,
    /// It only reads (ls, pins): a cache this user cannot write is read as it is, without
    /// the clean-up of an unclean stop.
    ReadOnlyIfNeeded,
}

fn with_store(
    dir: &CacheDir,
    name: &str,
    access: Access,
    body: impl FnOnce(&mut Store, &CacheDir, u64, &RecoveryReport) -> Report,
) -> i32 {
    if !is_cache(&dir.cache) {
        return fail(
            dir,
            name,
            exit::USAGE,
            &format!(
                "{} is not a module cache (no {INDEX_FILE}); `haul load --cache` creates one",
                dir.cache.display()
            ),
        );
    }
    let now_ms = now_ms();
    let opened = if access == Access::ReadOnlyIfNeeded && !Store::is_writable(&dir.cache) {
        Store::open_read_only(&dir.cache).map(|store| (store, RecoveryReport::default()))
    } else {
        Store::open(&dir.cache, now_ms)
    };
    let (mut store, recovery) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            return fail(
                dir,
                name,
                store_exit_code(&error),
                &open_error_text(&dir.cache, &error),
            )
        }
    };
    if !recovery.is_clean() && !dir.json {
        eprintln!(
            "note: opening the cache cleaned up what a crash or a change from outside left: {}",
            recovery_summary(&recovery)
        );
    }
    match body(&mut store, dir, now_ms, &recovery) {
        Ok((code, mut value)) => {
            if dir.json {
                value["recovered"] = recovery_json(&recovery);
                println!("{value}");
            }
            code
        }
        Err(error) => fail(dir, name, store_exit_code(&error), &error.to_string()),
    }
}

/// Why the cache in `cache` could not be opened, with what to do about a damaged index.
pub fn open_error_text(cache: &Path, error: &StoreError) -> String {
    if error.index_damaged() {
        format!(
            "{error} (the index {} is damaged; remove it and the next `haul load` starts the \
             cache afresh, fetching its files again)",
            cache.join(INDEX_FILE).display()
        )
    } else {
        error.to_string()
    }
}

fn fail(dir: &CacheDir, name: &str, code: i32, message: &str) -> i32 {
    eprintln!("haul cache {name}: {message}");
    if dir.json {
        println!(
            "{}",
            json!({"error": message, "exit_code": exit::as_exited(code)})
        );
    }
    code
}

/// Apps pinning each hash.
fn pinned_by(store: &Store) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let mut apps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pin in store.pins()? {
        apps.entry(pin.sha256).or_default().push(pin.app);
    }
    Ok(apps)
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Module => "module",
        FileKind::Manifest => "manifest",
    }
}

fn state_name(state: FileState) -> &'static str {
    match state {
        FileState::Dirty => "dirty",
        FileState::Ready => "ready",
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0 => "just now".to_owned(),
        1..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn ls(store: &mut Store, dir: &CacheDir, now_ms: u64, _: &RecoveryReport) -> Report {
    let files = store.list()?;
    let pinned_by = pinned_by(store)?;
    let no_apps = Vec::new();
    let mut total = 0u64;
    let mut pinned_total = 0u64;
    let mut rows = Vec::with_capacity(files.len());
    for file in &files {
        let apps = pinned_by.get(&file.sha256).unwrap_or(&no_apps);
        total += file.size;
        if !apps.is_empty() {
            pinned_total += file.size;
        }
        if !dir.json {
            let pins = if apps.is_empty() {
                "not pinned".to_owned()
            } else {
                format!("pinned by {}", apps.join(", "))
            };
            println!(
                "{}  {:<8}  {:>10}  {:<8}  {}{}",
                file.sha256,
                kind_name(file.kind),
                human_bytes(file.size),
                ago(now_ms, file.last_used_ms),
                pins,
                match file.state {
                    FileState::Ready => "",
                    FileState::Dirty => "  (being written)",
                }
            );
        }
        rows.push(json!({
            "sha256": file.sha256,
            "kind": kind_name(file.kind),
            "state": state_name(file.state),
            "size": file.size,
            "last_used_ms": file.last_used_ms,
            "pinned_by": apps,
        }));
    }
    if !dir.json {
        println!(
            "{} files, {} ({} pinned)",
            files.len(),
            human_bytes(total),
            human_bytes(pinned_total)
        );
    }
    Ok((
        exit::OK,
        json!({"files": rows, "total_bytes": total, "pinned_bytes": pinned_total}),
    ))
}

fn prune(store: &mut Store, dir: &CacheDir, _: u64, _: &RecoveryReport, budget: u64) -> Report {
    let report = store.prune(budget)?;
    if !dir.json {
        for sha256 in &report.evicted {
            println!("evicted {sha256}");
        }
        println!(
            "evicted {} files, freed {}; {} left, of which {} pinned",
            report.evicted.len(),
            human_bytes(report.freed_bytes),
            human_bytes(report.remaining_bytes),
            human_bytes(report.pinned_bytes)
        );
        if !report.fits_budget {
            println!(
                "note: pinned files alone exceed the budget of {}; they are kept",
                human_bytes(budget)
            );
        }
    }
    Ok((
        exit::OK,
        json!({
            "budget_bytes": budget,
            "evicted": report.evicted,
            "freed_bytes": report.freed_bytes,
            "remaining_bytes": report.remaining_bytes,
            "pinned_bytes": report.pinned_bytes,
            "fits_budget": report.fits_budget,
        }),
    ))
}

fn verify(store: &mut Store, dir: &CacheDir, _: u64, recovery: &RecoveryReport) -> Report {
    let report = store.verify_all()?;
    // Opening the store already dealt with stored files that were missing or of the wrong
    // size: damage this verify found too.
    let (missing, wrong_size) = (
        &recovery.missing_files_forgotten,
        &recovery.wrong_size_removed,
    );
    let damaged = report.damaged() + missing.len() + wrong_size.len();
    if !dir.json {
        for sha256 in wrong_size {
            println!("wrong size, removed: {sha256}");
        }
        for sha256 in missing {
            println!("missing, forgotten: {sha256}");
        }
        for sha256 in &report.corrupt_removed {
            println!("corrupt, removed: {sha256}");
        }
        for sha256 in &report.missing_forgotten {
            println!("missing, forgotten: {sha256}");
        }
        for sha256 in &report.unreadable_removed {
            println!("unreadable, removed: {sha256}");
        }
        for (sha256, why) in &report.unremovable {
            println!("unreadable, kept: {sha256}");
            eprintln!("haul cache verify: {why}");
        }
        println!(
            "checked {} files: {} good, {} corrupt, {} missing, {} unreadable",
            report.checked + missing.len() + wrong_size.len(),
            report.checked - report.damaged() - report.unremovable.len(),
            report.corrupt_removed.len() + wrong_size.len(),
            report.missing_forgotten.len() + missing.len(),
            report.unreadable_removed.len() + report.unremovable.len(),
        );
        if let Some((unchecked, why)) = &report.stopped {
            eprintln!("haul cache verify: stopped with {unchecked} files unchecked: {why}");
        }
    }
    let mut code = if damaged == 0 {
        exit::OK
    } else {
        exit::VERIFICATION
    };
    if !report.unremovable.is_empty() || report.stopped.is_some() {
        code = exit::combine([code, exit::LOCAL_IO]);
    }
    Ok((
        code,
        json!({
            "checked": report.checked + missing.len() + wrong_size.len(),
            "corrupt_removed": report.corrupt_removed.iter().chain(wrong_size).collect::<Vec<_>>(),
            "missing_forgotten": report.missing_forgotten.iter().chain(missing).collect::<Vec<_>>(),
            "unreadable_removed": report.unreadable_removed,
            "unremovable": report
                .unremovable
                .iter()
                .map(|(sha256, error)| json!({"sha256": sha256, "error": error}))
                .collect::<Vec<_>>(),
            "unchecked": report.stopped.as_ref().map_or(0, |(n, _)| *n),
            "stopped": report.stopped.as_ref().map(|(_, why)| why),
        }),
    ))
}

fn pins(store: &mut Store, dir: &CacheDir, _: u64, _: &RecoveryReport) -> Report {
    let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pin in store.pins()? {
        by_app.entry(pin.app).or_default().push(pin.sha256);
    }
    // Pinned files no longer stored (a verify or a load removed them as corrupt, or they
    // went missing): the next load of the app fetches them again.
    let mut missing = std::collections::BTreeSet::new();
    for hashes in by_app.values() {
        let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
        for (sha256, stored) in hashes.iter().zip(store.contains_many(&refs)?) {
            if !stored {
                missing.insert(sha256.clone());
            }
        }
    }
    let mut apps = Vec::new();
    for record in store.apps()? {
        let hashes = by_app.remove(&record.app).unwrap_or_default();
        if !dir.json {
            let floor = match record.rollback_floor_ms {
                Some(ms) => format!(", rollback floor freshAtEpochMs {ms}"),
                None => String::new(),
            };
            println!(
                "{}: manifest {} from {}{floor}",
                record.app, record.manifest_sha256, record.manifest_url
            );
            for sha256 in &hashes {
                let what = if *sha256 == record.manifest_sha256 {
                    "  (manifest)"
                } else {
                    ""
                };
                // A module is fetched again by the next load from the network; a manifest
                // never is by its hash (the next load fetches whatever the URL serves now),
                // and without it the app has no release to fall back to.
                let gone = match (missing.contains(sha256), what.is_empty()) {
                    (false, _) => "",
                    (true, true) => {
                        "  (not stored: the next load from the network fetches it again)"
                    }
                    (true, false) => {
                        "  (not stored: no fallback until the next load from the network)"
                    }
                };
                println!("  {sha256}{what}{gone}");
            }
        }
        apps.push(json!({
            "app": record.app,
            "manifest_sha256": record.manifest_sha256,
            "manifest_url": record.manifest_url,
            "fresh_at_ms": record.fresh_at_ms,
            "loaded_at_ms": record.loaded_at_ms,
            "rollback_floor_ms": record.rollback_floor_ms,
            "missing": hashes.iter().filter(|h| missing.contains(*h)).collect::<Vec<_>>(),
            "pins": hashes,
        }));
    }
    // Pins without a manifest record cannot be made by the loader; show them if present.
    for (app, hashes) in by_app {
        if !dir.json {
            println!("{app}: no manifest record");
            for sha256 in &hashes {
                println!("  {sha256}");
            }
        }
        apps.push(json!({"app": app, "manifest_sha256": null, "pins": hashes}));
    }
    if !dir.json && apps.is_empty() {
        println!("no pins");
    }
    Ok((exit::OK, json!({ "apps": apps })))
}

/// The exit code for a store failure: 5 for bytes that do not match their hash, 6 for an
/// invalid hash, 7 for everything local (I/O, the index, missing files).
pub fn store_exit_code(error: &StoreError) -> i32 {
    match error {
        StoreError::HashMismatch { .. } | StoreError::Corrupt { .. } => exit::VERIFICATION,
        StoreError::InvalidHash { .. } => exit::UNSAFE_INPUT,
        StoreError::Io { .. }
        | StoreError::Index { .. }
        | StoreError::AlreadyReady { .. }
        | StoreError::NotFound { .. }
        | StoreError::FileMissing { .. }
        | StoreError::NotReady { .. }
        | StoreError::Unreadable { .. }
        | StoreError::NotWritable { .. } => exit::LOCAL_IO,
        StoreError::NoSchema { .. }
        | StoreError::NotAStore { .. }
        | StoreError::NotADirectory { .. } => exit::USAGE,
    }
}

/// One line saying what recovery removed.
pub fn recovery_summary(report: &RecoveryReport) -> String {
    let parts = [
        (
            report.dirty_kept.len(),
            "interrupted writes found complete and kept",
        ),
        (report.dirty_removed.len(), "interrupted writes removed"),
        (report.temp_files_removed.len(), "temporary files removed"),
        (report.orphan_files_removed.len(), "unindexed files removed"),
        (
            report.missing_files_forgotten.len(),
            "missing files forgotten",
        ),
        (
            report.wrong_size_removed.len(),
            "files of the wrong size removed",
        ),
        (
            report.evicted_for_room.len(),
            "unpinned files removed to make room on a full disk",
        ),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
    if text.is_empty() {
        "nothing".to_owned()
    } else {
        text.join(", ")
    }
}

/// The recovery report as JSON.
pub fn recovery_json(report: &RecoveryReport) -> serde_json::Value {
    json!({
        "dirty_kept": report.dirty_kept,
        "dirty_removed": report.dirty_removed,
        "temp_files_removed": report.temp_files_removed,
        "orphan_files_removed": report.orphan_files_removed,
        "missing_files_forgotten": report.missing_files_forgotten,
        "wrong_size_removed": report.wrong_size_removed,
        "evicted_for_room": report.evicted_for_room,
    })
}

/// Whether `path` holds a module cache.
fn is_cache(path: &Path) -> bool {
    path.join(INDEX_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!(ago(10_000, 10_000), "just now");
        assert_eq!(ago(70_000, 10_000), "60s ago");
        assert_eq!(ago(10 * 60_000, 0), "10m ago");
        assert_eq!(ago(5 * 3_600_000, 0), "5h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3d ago");
        // A clock that went back does not underflow.
        assert_eq!(ago(0, 10_000), "just now");
    }

    #[test]
    fn recovery_summary_names_only_what_happened() {
        let report = RecoveryReport {
            dirty_kept: vec!["k".into()],
            dirty_removed: vec!["a".into()],
            temp_files_removed: vec!["b".into(), "c".into()],
            ..RecoveryReport::default()
        };
        assert_eq!(
            recovery_summary(&report),
            "1 interrupted writes found complete and kept, 1 interrupted writes removed, \
             2 temporary files removed"
        );
        assert_eq!(recovery_summary(&RecoveryReport::default()), "nothing");
    }

    #[test]
    fn a_directory_without_an_index_is_not_a_cache() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(!is_cache(dir.path()));
        Store::open(dir.path(), 1).unwrap();
        assert!(is_cache(dir.path()));
    }
}
