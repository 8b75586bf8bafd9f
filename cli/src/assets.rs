//! `haul assets`: Speed Dreams-style asset catalogs, from the command line.
//!
//! Owns: the command lines (`repo add|rm|ls`, `ls`, `install`, `update`, `rm`), resolving
//! haul's home directory, fetching catalogs (capped at 2 MiB, falling back to the cached
//! copy when the network fails), downloading asset zips through the engine (exact size and
//! sha256 required, at most `-j N` at once) into `<home>/downloads`, handing each
//! verified zip to the installer, and showing states and results. Does not own parsing,
//! merging, the install layout, `.revision` or the atomic swap (`haul_install::catalog`),
//! nor HTTP (`haul-blocking`).
//!
//! # When extraction starts
//!
//! As each download is verified: the engine's `Finished` event (seen in the `on_event`
//! callback) hands the zip to one installer thread, which extracts and swaps it in while
//! the other downloads keep going. One thread means installs into one root are serialised,
//! as `haul-install` requires (driver slots are chosen at install time). Each installed zip
//! is then deleted from the downloads directory; failed downloads leave their
//! `.haul-part`/`.haul-state` there, so the same command resumes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, Subcommand};
use haul_blocking::Client;
use haul_core::{CancelMode, Config, Download, DownloadError, Event};
use haul_install::catalog::{
    asset_state, install_asset_or_stop, recover_root, remove_asset, Asset, AssetKind, AssetState,
    CatalogParse, Home, InstalledAsset, MergedAsset, MergedCatalog, CATALOG_MAX_BYTES,
};
use haul_install::extract::{create_and_lock_dir, lock_dir, DirLock};
use haul_install::InstallError;
use serde_json::json;

use crate::exit;
use crate::extract::exit_code_for;
use crate::progress::{Mode, Reporter};
use crate::units::human_bytes;

/// Downloads running at once unless `-j` says otherwise.
pub const DEFAULT_JOBS: usize = 8;

/// Options of `haul assets`.
#[derive(Args, Debug, Clone)]
pub struct AssetsArgs {
    #[command(subcommand)]
    pub command: AssetsCommand,
}

/// The `haul assets` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum AssetsCommand {
    /// Configure catalog repositories: add URL, rm URL, ls.
    Repo(RepoArgs),
    /// List every asset of every catalog with its state under --root.
    Ls(LsArgs),
    /// Download, verify and install assets by name (or --all).
    Install(InstallArgs),
    /// Install every asset whose catalog revision is newer than the installed one.
    Update(UpdateArgs),
    /// Remove installed assets by name.
    Rm(RmArgs),
}

/// Where haul keeps its configuration and caches.
#[derive(Args, Debug, Clone)]
pub struct HomeArg {
    /// haul's home: repositories.json, cached catalogs, downloads (default:
    /// $XDG_DATA_HOME/haul, else ~/.local/share/haul).
    #[arg(long, env = "HAUL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
}

/// The game's data directory plus haul's home.
#[derive(Args, Debug, Clone)]
pub struct Places {
    /// The game's data directory (cars/, tracks/, drivers/ live under it).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    #[command(flatten)]
    pub home: HomeArg,
    /// Use the cached catalogs; do not ask the network.
    #[arg(long)]
    pub offline: bool,
}

/// Download settings of `install` and `update`.
#[derive(Args, Debug, Clone)]
pub struct FetchOptions {
    /// Downloads running at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
    /// Attempts after the first one for retryable failures, per asset.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Options of `haul assets repo`.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    #[command(subcommand)]
    pub command: RepoCommand,
}

/// The `haul assets repo` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum RepoCommand {
    /// Fetch the catalog at URL, store it, and add URL to the repositories.
    Add {
        #[arg(value_name = "URL")]
        url: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Remove URL and its cached catalog (absent is success).
    Rm {
        #[arg(value_name = "URL")]
        url: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List the configured repositories and their cached catalogs.
    Ls {
        #[command(flatten)]
        home: HomeArg,
    },
}

/// Options of `haul assets ls`.
#[derive(Args, Debug, Clone)]
pub struct LsArgs {
    #[command(flatten)]
    pub places: Places,
    /// Print one JSON object on stdout: assets, rejected entries, catalog sources.
    #[arg(long)]
    pub json: bool,
}

/// Options of `haul assets install`.
#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    /// Asset names as the catalog writes them; `car:NAME`, `track:NAME` or `driver:NAME`
    /// when a name is used by two kinds.
    #[arg(
        value_name = "NAME",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub names: Vec<String>,
    /// Every asset of every catalog.
    #[arg(long)]
    pub all: bool,
    /// Reinstall assets that are already installed at the catalog's revision.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub places: Places,
    #[command(flatten)]
    pub fetch: FetchOptions,
}

/// Options of `haul assets update`.
#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub places: Places,
    #[command(flatten)]
    pub fetch: FetchOptions,
}

/// Options of `haul assets rm`.
#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    /// Asset names (see `install`).
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    /// The game's data directory.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    #[command(flatten)]
    pub home: HomeArg,
}

/// Run `haul assets`; returns the exit code.
pub fn run(args: AssetsArgs) -> i32 {
    let result = match args.command {
        AssetsCommand::Repo(a) => repo(a),
        AssetsCommand::Ls(a) => ls(a),
        AssetsCommand::Install(a) => install(a),
        AssetsCommand::Update(a) => update(a),
        AssetsCommand::Rm(a) => rm(a),
    };
    match result {
        Ok(code) => code,
        Err(Failure { code, message }) => {
            eprintln!("haul assets: {message}");
            code
        }
    }
}

/// A failure that ends the command: what to say and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<InstallError> for Failure {
    fn from(e: InstallError) -> Failure {
        Failure {
            code: exit_code_for(&e),
            message: e.to_string(),
        }
    }
}

/// `--home`, else `HAUL_HOME` (clap reads it), else `$XDG_DATA_HOME/haul`, else
/// `~/.local/share/haul`.
pub fn resolve_home(arg: &HomeArg) -> Result<Home, Failure> {
    if let Some(dir) = &arg.home {
        return Ok(Home::new(dir.clone()));
    }
    let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = nonempty("XDG_DATA_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Ok(Home::new(xdg.join("haul")));
        }
    }
    if let Some(home) = nonempty("HOME") {
        return Ok(Home::new(
            PathBuf::from(home)
                .join(".local")
                .join("share")
                .join("haul"),
        ));
    }
    Err(Failure::usage(
        "no home directory: pass --home DIR or set HAUL_HOME",
    ))
}

/// A client for catalogs: few, quick retries, so an unreachable repository falls back to
/// the cached copy within a second or two.
pub fn catalog_client() -> Client {
    let mut config = Config {
        connect_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    config.retry.max_attempts = 2;
    config.retry.base_delay = Duration::from_millis(300);
    Client::new(config).expect("the catalog client's config is valid")
}

/// A client for asset zips: at most `jobs` downloads transfer at once (the engine's
/// scheduler queues the rest, so a slow download never holds back the others).
pub fn asset_client(retries: u32, jobs: usize) -> Client {
    let mut config = Config {
        max_active_jobs: jobs.max(1),
        ..Config::default()
    };
    config.retry.max_attempts = retries.saturating_add(1);
    Client::new(config).expect("the asset client's config is valid")
}

fn dir_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure {
        code: exit::LOCAL_IO,
        message: format!("cannot {what} {}: {e}", path.display()),
    }
}

/// Why a catalog could not be fetched and stored.
#[derive(Debug)]
pub struct CatalogFetchError {
    pub code: i32,
    pub message: String,
}

/// Downloads the catalog at `url` (at most [`CATALOG_MAX_BYTES`]) into a temporary
/// directory under home and stores it as the cached copy if it parses.
pub fn fetch_catalog(
    client: &Client,
    home: &Home,
    url: &str,
) -> Result<CatalogParse, CatalogFetchError> {
    let local = |message: String| CatalogFetchError {
        code: exit::LOCAL_IO,
        message,
    };
    std::fs::create_dir_all(home.dir())
        .map_err(|e| local(format!("cannot create {}: {e}", home.dir().display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".haul-fetch-")
        .tempdir_in(home.dir())
        .map_err(|e| {
            local(format!(
                "cannot create a temporary directory in {}: {e}",
                home.dir().display()
            ))
        })?;
    let dest = tmp.path().join("catalog.json");
    let download = Download::new(url, &dest)
        .map_err(|e| CatalogFetchError {
            code: exit::USAGE,
            message: e.to_string(),
        })?
        .max_size(CATALOG_MAX_BYTES);
    let outcome = client
        .download(download, |_| {})
        .map_err(|e| CatalogFetchError {
            code: exit::for_download(&e),
            message: e.to_string(),
        })?;
    let bytes = std::fs::read(&outcome.path)
        .map_err(|e| local(format!("cannot read {}: {e}", outcome.path.display())))?;
    home.store_catalog(url, &bytes)
        .map_err(|e| CatalogFetchError {
            code: exit_code_for(&e),
            message: e.to_string(),
        })
}

/// Where a repository's catalog came from this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogSource {
    /// Fetched now.
    Network,
    /// The network failed (or `--offline`); the cached copy was used.
    Cache { why: String },
    /// The network failed and there is no cached copy: its assets are missing.
    Missing { why: String, code: i32 },
}

/// The catalogs after a refresh.
#[derive(Debug, Clone)]
pub struct Catalogs {
    pub merged: MergedCatalog,
    /// Every configured repository, in order, with where its catalog came from.
    pub sources: Vec<(String, CatalogSource)>,
}

impl Catalogs {
    /// The first failure of a repository without any usable catalog, if any.
    pub fn missing_code(&self) -> i32 {
        exit::combine(self.sources.iter().map(|(_, s)| match s {
            CatalogSource::Missing { code, .. } => *code,
            _ => exit::OK,
        }))
    }
}

/// Refreshes every configured repository's catalog from the network (unless `offline`),
/// falling back to the cached copy, and merges them. Says on stderr when a cached copy
/// is used and which entries were skipped.
pub fn refresh_catalogs(client: &Client, home: &Home, offline: bool) -> Result<Catalogs, Failure> {
    let repos = home.repositories()?;
    if repos.is_empty() {
        return Err(Failure::usage(format!(
            "no repositories configured in {}; add one with `haul assets repo add URL`",
            home.dir().display()
        )));
    }
    let mut sources = Vec::new();
    for url in repos {
        let fetched = if offline {
            Err(CatalogFetchError {
                code: exit::OK,
                message: "--offline".into(),
            })
        } else {
            fetch_catalog(client, home, &url)
        };
        let source = match fetched {
            Ok(_) => CatalogSource::Network,
            Err(e) => match home.cached_catalog(&url) {
                Ok(Some(_)) => {
                    if !offline {
                        eprintln!(
                            "haul assets: cannot refresh {url} ({}); using the cached copy",
                            e.message
                        );
                    }
                    CatalogSource::Cache { why: e.message }
                }
                Ok(None) => {
                    eprintln!(
                        "haul assets: cannot fetch {url} ({}) and there is no cached copy; its assets are not listed",
                        e.message
                    );
                    CatalogSource::Missing {
                        why: e.message,
                        code: if e.code == exit::OK {
                            exit::NETWORK
                        } else {
                            e.code
                        },
                    }
                }
                Err(cache_error) => {
                    eprintln!(
                        "haul assets: cannot fetch {url} ({}) and its cached copy is unusable ({cache_error})",
                        e.message
                    );
                    CatalogSource::Missing {
                        why: e.message,
                        code: exit_code_for(&cache_error),
                    }
                }
            },
        };
        sources.push((url, source));
    }
    let merged = home.merged()?;
    for r in &merged.rejected {
        eprintln!(
            "haul assets: skipping bad catalog entry in {}: {}",
            r.repository, r.entry
        );
    }
    Ok(Catalogs { merged, sources })
}

fn repo(args: RepoArgs) -> Result<i32, Failure> {
    match args.command {
        RepoCommand::Add { url, home } => {
            let home = resolve_home(&home)?;
            let url = url.trim().to_string();
            let parsed = fetch_catalog(&catalog_client(), &home, &url).map_err(|e| Failure {
                code: e.code,
                message: format!("{url}: {}", e.message),
            })?;
            let added = home.add_repository(&url)?;
            for r in &parsed.rejected {
                eprintln!("haul assets: skipping bad catalog entry in {url}: {r}");
            }
            println!(
                "{} {url}: {} assets{}",
                if added {
                    "added"
                } else {
                    "refreshed (already configured)"
                },
                parsed.assets.len(),
                if parsed.rejected.is_empty() {
                    String::new()
                } else {
                    format!(", {} bad entries skipped", parsed.rejected.len())
                }
            );
            Ok(exit::OK)
        }
        RepoCommand::Rm { url, home } => {
            let home = resolve_home(&home)?;
            if home.remove_repository(&url)? {
                println!("removed {}", url.trim());
            } else {
                eprintln!("{} is not configured; nothing to do", url.trim());
            }
            Ok(exit::OK)
        }
        RepoCommand::Ls { home } => {
            let home = resolve_home(&home)?;
            for url in home.repositories()? {
                let cached = match home.cached_catalog(&url) {
                    Ok(Some(p)) => format!("{} assets cached", p.assets.len()),
                    Ok(None) => "never fetched".to_string(),
                    Err(e) => format!("cached copy unusable: {e}"),
                };
                println!("{url}  ({cached})");
            }
            Ok(exit::OK)
        }
    }
}

/// One row of `haul assets ls`.
#[derive(Debug, Clone)]
pub struct AssetRow {
    pub merged: MergedAsset,
    pub state: AssetState,
}

impl AssetRow {
    pub fn installed_revision(&self) -> Option<u64> {
        match &self.state {
            AssetState::Installed { revision } => Some(*revision),
            AssetState::UpdateAvailable { installed, .. } => Some(*installed),
            AssetState::Available | AssetState::Broken { .. } => None,
        }
    }
}

/// `available`, `installed`, `update-available` or `broken`.
pub fn state_name(state: &AssetState) -> &'static str {
    match state {
        AssetState::Available => "available",
        AssetState::Installed { .. } => "installed",
        AssetState::UpdateAvailable { .. } => "update-available",
        AssetState::Broken { .. } => "broken",
    }
}

/// The state of every merged asset under `root` (an unreadable one counts as broken).
pub fn rows(root: &Path, merged: &MergedCatalog) -> Vec<AssetRow> {
    merged
        .assets
        .iter()
        .map(|m| AssetRow {
            merged: m.clone(),
            state: asset_state(root, &m.asset).unwrap_or_else(|e| AssetState::Broken {
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// Prints the table of `haul assets ls` on stdout.
pub fn print_table(rows: &[AssetRow]) {
    println!(
        "{:<28} {:<7} {:<12} {:>10} {:>9} {:>8}  STATE",
        "NAME", "TYPE", "CATEGORY", "SIZE", "INSTALLED", "CATALOG"
    );
    for r in rows {
        let a = &r.merged.asset;
        let state = match &r.state {
            AssetState::Broken { reason } => format!("broken ({reason})"),
            s => state_name(s).to_string(),
        };
        println!(
            "{:<28} {:<7} {:<12} {:>10} {:>9} {:>8}  {state}",
            a.name,
            a.kind.as_str(),
            a.category,
            human_bytes(a.size),
            r.installed_revision()
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            a.revision,
        );
    }
}

fn ls(args: LsArgs) -> Result<i32, Failure> {
    let home = resolve_home(&args.places.home)?;
    let _lock = recover(&args.places.root)?;
    let catalogs = refresh_catalogs(&catalog_client(), &home, args.places.offline)?;
    let rows = rows(&args.places.root, &catalogs.merged);
    if args.json {
        let assets: Vec<_> = rows
            .iter()
            .map(|r| {
                let a = &r.merged.asset;
                json!({
                    "name": a.name,
                    "type": a.kind.as_str(),
                    "category": a.category,
                    "size": a.size,
                    "directory": a.directory,
                    "installed_revision": r.installed_revision(),
                    "catalog_revision": a.revision,
                    "state": state_name(&r.state),
                    "broken_reason": match &r.state {
                        AssetState::Broken { reason } => Some(reason.as_str()),
                        _ => None,
                    },
                    "repository": r.merged.repository,
                })
            })
            .collect();
        let rejected: Vec<_> = catalogs
            .merged
            .rejected
            .iter()
            .map(|r| {
                json!({
                    "repository": r.repository,
                    "type": r.entry.kind.as_str(),
                    "index": r.entry.index,
                    "name": r.entry.name,
                    "field": r.entry.field,
                    "reason": r.entry.reason,
                })
            })
            .collect();
        let sources: Vec<_> = catalogs
            .sources
            .iter()
            .map(|(url, s)| match s {
                CatalogSource::Network => json!({"url": url, "source": "network"}),
                CatalogSource::Cache { why } => {
                    json!({"url": url, "source": "cache", "why": why})
                }
                CatalogSource::Missing { why, .. } => {
                    json!({"url": url, "source": "missing", "why": why})
                }
            })
            .collect();
        println!(
            "{}",
            json!({"assets": assets, "rejected": rejected, "catalogs": sources})
        );
    } else {
        print_table(&rows);
    }
    Ok(catalogs.missing_code())
}

/// Why one asset was not installed.
#[derive(Debug)]
pub enum AssetFailure {
    Download(DownloadError),
    Install(InstallError),
}

impl AssetFailure {
    pub fn code(&self) -> i32 {
        match self {
            AssetFailure::Download(e) => exit::for_download(e),
            AssetFailure::Install(e) => exit_code_for(e),
        }
    }
}

impl std::fmt::Display for AssetFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetFailure::Download(e) => write!(f, "download failed: {e}"),
            AssetFailure::Install(e) => write!(f, "install failed: {e}"),
        }
    }
}

/// What happened to each asset given to [`install_assets`], in the order given.
pub type InstallResults = Vec<(Asset, Result<InstalledAsset, AssetFailure>)>;

/// Downloads (exact size, sha256) and installs `assets` under `root`, extracting each zip
/// as soon as its download is verified (see the module docs). Zips go to
/// `<home>/downloads/<directory>-<first 16 hex digits of sha256>.zip`, one download per
/// distinct sha256 (a verified zip already there from an interrupted run is not
/// downloaded again: the engine checks the destination first).
pub fn install_assets(
    client: &Client,
    home: &Home,
    root: &Path,
    assets: Vec<Asset>,
    mode: Mode,
) -> Result<InstallResults, Failure> {
    let downloads_dir = home.dir().join("downloads");
    std::fs::create_dir_all(&downloads_dir)
        .map_err(|e| dir_failure("create", &downloads_dir, e))?;

    // One download per distinct zip (two catalog entries may share one).
    let mut groups: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    let mut by_hash: HashMap<&str, usize> = HashMap::new();
    for (i, a) in assets.iter().enumerate() {
        match by_hash.get(a.sha256.as_str()) {
            Some(&g) => groups[g].1.push(i),
            None => {
                by_hash.insert(&a.sha256, groups.len());
                let short = a.sha256.get(..16).unwrap_or(&a.sha256);
                let file = format!("{}-{short}.zip", a.directory);
                groups.push((downloads_dir.join(file), vec![i]));
            }
        }
    }

    let (to_installer, installer_inbox) = mpsc::channel::<(PathBuf, Vec<usize>)>();
    let installer = {
        let assets = assets.clone();
        let root = root.to_path_buf();
        // A signal stops the extraction under way (its folder stays as it was).
        let stop = crate::signals::extraction_stop();
        std::thread::spawn(move || {
            let mut done = Vec::new();
            for (zip, indexes) in installer_inbox {
                let mut interrupted = false;
                for i in indexes {
                    let stop = Some(stop.clone());
                    let result = install_asset_or_stop(&zip, &assets[i], &root, stop);
                    interrupted |= result.as_ref().is_err_and(InstallError::is_interrupted);
                    done.push((i, result));
                }
                // A zip left behind is only disk space: the next run re-verifies it. One
                // whose install a signal stopped is kept for the same command again.
                if !interrupted {
                    let _ = std::fs::remove_file(&zip);
                }
            }
            done
        })
    };

    let mut download_failures: HashMap<usize, DownloadError> = HashMap::new();
    let mut pending: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    let mut downloads = Vec::new();
    let mut download_groups = Vec::new();
    for (zip, indexes) in groups {
        let asset = &assets[indexes[0]];
        let d = Download::new(&asset.url, &zip)
            .and_then(|d| d.sha256(&asset.sha256))
            .map(|d| d.size(asset.size));
        match d {
            Ok(d) => {
                downloads.push(d);
                download_groups.push(indexes.clone());
                pending.insert(zip, indexes);
            }
            Err(e) => {
                for i in indexes {
                    download_failures.insert(i, e.clone());
                }
            }
        }
    }

    let mut reporter = Reporter::new(mode, downloads.len());
    let results = client.download_many(downloads, |ev| {
        reporter.event(ev);
        if let Event::Finished {
            result: Ok(outcome),
            ..
        } = ev
        {
            if let Some(indexes) = pending.remove(&outcome.path) {
                let _ = to_installer.send((outcome.path.clone(), indexes));
            }
        }
    });
    let mut fetched = 0;
    let mut ok = 0;
    for (result, indexes) in results.iter().zip(&download_groups) {
        match result {
            Ok(outcome) => {
                ok += 1;
                fetched += outcome.bytes_fetched;
                // Normally sent from the Finished event already.
                if let Some(indexes) = pending.remove(&outcome.path) {
                    let _ = to_installer.send((outcome.path.clone(), indexes));
                }
            }
            Err(e) => {
                for &i in indexes {
                    download_failures.insert(i, e.clone());
                }
            }
        }
    }
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Err(DownloadError::Cancelled)))
        .count();
    reporter.summary(ok, results.len() - ok - cancelled, cancelled, fetched);
    drop(to_installer);
    let mut installed: HashMap<usize, Result<InstalledAsset, InstallError>> = installer
        .join()
        .map_err(|_| Failure {
            code: exit::LOCAL_IO,
            message: "the installer thread panicked".into(),
        })?
        .into_iter()
        .collect();

    Ok(assets
        .into_iter()
        .enumerate()
        .map(|(i, asset)| {
            let result = match (installed.remove(&i), download_failures.remove(&i)) {
                (Some(r), _) => r.map_err(AssetFailure::Install),
                (None, Some(e)) => Err(AssetFailure::Download(e)),
                (None, None) => Err(AssetFailure::Download(DownloadError::Cancelled)),
            };
            (asset, result)
        })
        .collect())
}

/// Prints one line per asset (stdout for installs, stderr for failures) and returns the
/// combined exit code.
pub fn report_results(results: &InstallResults, quiet: bool) -> i32 {
    let mut code = exit::OK;
    for (asset, result) in results {
        match result {
            Ok(done) => {
                if !quiet {
                    println!(
                        "installed {} {:?} revision {} in {}{}",
                        asset.kind,
                        asset.name,
                        done.revision,
                        done.dir.display(),
                        if done.replaced {
                            " (replaced the old folder)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Err(e) => {
                eprintln!("haul assets: {} {:?}: {e}", asset.kind, asset.name);
                code = exit::combine([code, e.code()]);
            }
        }
    }
    code
}

/// What a name on the command line refers to.
enum Resolved<'a> {
    Found(&'a MergedAsset),
    /// Listed, but its catalog entry was skipped.
    Rejected(String),
}

fn parse_kind(s: &str) -> Option<AssetKind> {
    AssetKind::ALL.into_iter().find(|k| k.as_str() == s)
}

/// Finds `name` (or `kind:name`) among the merged assets; unknown and ambiguous names
/// are usage errors.
fn resolve<'a>(merged: &'a MergedCatalog, name: &str) -> Result<Resolved<'a>, Failure> {
    let exact: Vec<_> = merged
        .assets
        .iter()
        .filter(|m| m.asset.name == name)
        .collect();
    match exact.as_slice() {
        [one] => return Ok(Resolved::Found(one)),
        [] => {}
        several => {
            let kinds: Vec<_> = several
                .iter()
                .map(|m| format!("{}:{name}", m.asset.kind))
                .collect();
            return Err(Failure::usage(format!(
                "{name:?} names several assets; write one of {}",
                kinds.join(", ")
            )));
        }
    }
    if let Some((kind, rest)) = name.split_once(':') {
        if let Some(kind) = parse_kind(kind) {
            if let Some(m) = merged.find(kind, rest) {
                return Ok(Resolved::Found(m));
            }
        }
    }
    let bare = name
        .split_once(':')
        .filter(|(k, _)| parse_kind(k).is_some())
        .map_or(name, |(_, rest)| rest);
    if let Some(r) = merged
        .rejected
        .iter()
        .find(|r| r.entry.name.as_deref() == Some(bare))
    {
        return Ok(Resolved::Rejected(format!(
            "{bare:?} is listed by {} but its catalog entry is bad: {}",
            r.repository, r.entry
        )));
    }
    Err(Failure::usage(format!(
        "no asset named {name:?} in the catalogs (see `haul assets ls`)"
    )))
}

/// Creates `root`, locks it for this command (another `haul` command that installs into it
/// waits: its recovery would take this one's staging trees for a crash's leftovers) and
/// cleans what an interrupted install left in it. The lock lasts as long as the guard.
pub fn prepare_root(root: &Path) -> Result<DirLock, Failure> {
    let lock = create_and_lock_dir(root, || {
        std::fs::create_dir_all(root).map_err(|source| InstallError::Io {
            op: "create directory",
            path: root.to_path_buf(),
            source,
        })
    })
    .map_err(|e| match e {
        InstallError::Io {
            op: "create directory",
            source,
            ..
        } => dir_failure("create", root, source),
        e => e.into(),
    })?;
    recover_locked(root)?;
    Ok(lock)
}

/// [`prepare_root`] for a command that creates nothing: a missing `root` holds nothing to
/// clean or lock.
fn recover(root: &Path) -> Result<Option<DirLock>, Failure> {
    if !root.is_dir() {
        return Ok(None);
    }
    let lock = lock_dir(root)?;
    recover_locked(root)?;
    Ok(Some(lock))
}

fn recover_locked(root: &Path) -> Result<(), Failure> {
    let report = recover_root(root)?;
    for p in &report.removed {
        eprintln!(
            "haul assets: removed {} left by an interrupted install",
            p.display()
        );
    }
    for p in &report.restored {
        eprintln!(
            "haul assets: restored {} after an interrupted install",
            p.display()
        );
    }
    Ok(())
}

fn set_cancel(clients: [&Client; 2]) {
    let handles: Vec<_> = clients.iter().map(|c| c.cancel_handle()).collect();
    crate::signals::on_interrupt(move || {
        for h in &handles {
            h.stop_all(CancelMode::KeepPartial);
        }
    });
}

fn install(args: InstallArgs) -> Result<i32, Failure> {
    let home = resolve_home(&args.places.home)?;
    let root = &args.places.root;
    let _lock = prepare_root(root)?;
    let catalogs_client = catalog_client();
    let assets_client = asset_client(args.fetch.retries, args.fetch.jobs);
    set_cancel([&catalogs_client, &assets_client]);
    let catalogs = refresh_catalogs(&catalogs_client, &home, args.places.offline)?;
    let mut code = exit::OK;
    let mut chosen: Vec<&MergedAsset> = Vec::new();
    if args.all {
        chosen.extend(&catalogs.merged.assets);
    } else {
        for name in &args.names {
            match resolve(&catalogs.merged, name)? {
                Resolved::Found(m) => {
                    if !chosen.iter().any(|c| std::ptr::eq(*c, m)) {
                        chosen.push(m);
                    }
                }
                Resolved::Rejected(why) => {
                    eprintln!("haul assets: {why}");
                    code = exit::combine([code, exit::UNSAFE_INPUT]);
                }
            }
        }
    }
    let mut targets = Vec::new();
    for m in chosen {
        let state = asset_state(root, &m.asset)?;
        match state {
            AssetState::Installed { revision } if !args.force => {
                if !args.fetch.quiet {
                    println!(
                        "{} {:?} revision {revision} is already installed",
                        m.asset.kind, m.asset.name
                    );
                }
            }
            _ => targets.push(m.asset.clone()),
        }
    }
    let mode = Mode::choose(false, args.fetch.quiet);
    let results = install_assets(&assets_client, &home, root, targets, mode)?;
    code = exit::combine([code, report_results(&results, args.fetch.quiet)]);
    Ok(exit::combine([code, catalogs.missing_code()]))
}

fn update(args: UpdateArgs) -> Result<i32, Failure> {
    let home = resolve_home(&args.places.home)?;
    let root = &args.places.root;
    let _lock = prepare_root(root)?;
    let catalogs_client = catalog_client();
    let assets_client = asset_client(args.fetch.retries, args.fetch.jobs);
    set_cancel([&catalogs_client, &assets_client]);
    let catalogs = refresh_catalogs(&catalogs_client, &home, args.places.offline)?;
    let targets: Vec<Asset> = rows(root, &catalogs.merged)
        .into_iter()
        .filter(|r| matches!(r.state, AssetState::UpdateAvailable { .. }))
        .map(|r| r.merged.asset)
        .collect();
    if targets.is_empty() {
        if !args.fetch.quiet {
            println!("every installed asset is up to date");
        }
        return Ok(catalogs.missing_code());
    }
    let mode = Mode::choose(false, args.fetch.quiet);
    let results = install_assets(&assets_client, &home, root, targets, mode)?;
    let code = report_results(&results, args.fetch.quiet);
    Ok(exit::combine([code, catalogs.missing_code()]))
}

fn rm(args: RmArgs) -> Result<i32, Failure> {
    let home = resolve_home(&args.home)?;
    // Removing needs no network: the cached catalogs say where each asset lives.
    let merged = home.merged()?;
    let mut found = Vec::new();
    for name in &args.names {
        match resolve(&merged, name)? {
            Resolved::Found(m) => found.push(m),
            Resolved::Rejected(why) => return Err(Failure::usage(why)),
        }
    }
    let _lock = recover(&args.root)?;
    for m in found {
        if remove_asset(&args.root, &m.asset)? {
            println!("removed {} {:?}", m.asset.kind, m.asset.name);
        } else {
            eprintln!(
                "{} {:?} is not installed; nothing to do",
                m.asset.kind, m.asset.name
            );
        }
    }
    Ok(exit::OK)
}
