//! `haul load`: load an app's signed modules into a content-addressed cache.
//!
//! Owns the command line of a load (turning it into a [`LoadRequest`] with the wall clock),
//! how a load's result is shown (load order, where each module came from, the manifest's
//! source and any fallback, warnings) and the mapping of [`ModuleError`]s to exit codes. It
//! does not own tiers, fallback, pins or verification (`haul-modules`) nor downloads
//! (`haul-blocking`).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use haul_blocking::Client;
use haul_core::{CancelMode, Config};
use haul_modules::{
    open_for_load, FetchErrorKind, LoadRequest, LoadResult, LoadSource, Loader, ModuleError,
    ModuleSource, RecoveryReport, TrustedKey,
};
use serde::Serialize;
use serde_json::json;
use url::Url;

use crate::cache::{recovery_json, recovery_summary, store_exit_code};
use crate::exit;
use crate::units::parse_size;

/// Options of `haul load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The app's name: owner of the pins in the cache, and `<NAME>.manifest.json` in --embedded.
    #[arg(long, value_name = "NAME")]
    pub app: String,
    /// The signed manifest's URL (http or https). Module URLs are relative to it (or to the
    /// manifest's baseUrl).
    #[arg(long = "manifest", value_name = "URL", value_parser = parse_manifest_url)]
    pub manifest: Url,
    /// A trusted signing key, NAME:ALG:HEX with ALG ed25519 (32-byte key) or ecdsa-p256
    /// (65-byte uncompressed point, 04||X||Y). Repeat for several keys (rotation).
    #[arg(long = "key", value_name = "NAME:ALG:HEX", required = true, value_parser = parse_key)]
    pub keys: Vec<TrustedKey>,
    /// The module cache: files/<sha256> shared by all apps, plus index.sqlite. Created if
    /// missing. One haul process uses a cache at a time (a second one waits).
    #[arg(long, value_name = "DIR")]
    pub cache: PathBuf,
    /// A directory shipped with the app: <NAME>.manifest.json and module files named by
    /// their sha256, used before the network and as a last fallback.
    #[arg(long, value_name = "DIR")]
    pub embedded: Option<PathBuf>,
    /// Accept a manifest older (by freshAtEpochMs) than the one pinned for this app.
    #[arg(long = "allow-rollback")]
    pub allow_rollback: bool,
    /// Use the pinned (or embedded) manifest without asking the network if it was fetched
    /// less than this many seconds ago (0: always ask the network; the pinned manifest is
    /// still the fallback when the network fails).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub freshness: u64,
    /// Refuse modules larger than this (e.g. 512K, 32M).
    #[arg(long = "max-module-size", value_name = "BYTES", value_parser = parse_size, default_value = "32M")]
    pub max_module_size: u64,
    /// Module downloads running at once.
    #[arg(long, value_name = "N", default_value_t = haul_blocking::modules::DEFAULT_MODULE_CONCURRENCY)]
    pub concurrency: usize,
    /// Attempts after the first one for retryable failures, per file. Few by default, so a
    /// network failure falls back to the pinned manifest quickly.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Seconds to establish a connection.
    #[arg(long = "connect-timeout", value_name = "S", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds without receiving a byte before an attempt fails.
    #[arg(long = "idle-timeout", value_name = "S", default_value_t = 30.0)]
    pub idle_timeout: f64,
    /// Seconds from sending a request to the end of the response's head [default: 30, or
    /// --idle-timeout if longer].
    #[arg(long = "head-timeout", value_name = "S")]
    pub head_timeout: Option<f64>,
    /// Minimum rate in bytes/s over --low-speed-time, else the attempt fails (0 = off): a
    /// server that trickles fails over to the pinned manifest instead of holding the load
    /// (and the cache) for minutes.
    #[arg(long = "low-speed-limit", value_name = "BYTES", value_parser = parse_size, default_value = "1K")]
    pub low_speed_limit: u64,
    /// Window in seconds for --low-speed-limit.
    #[arg(long = "low-speed-time", value_name = "S", default_value_t = 15.0)]
    pub low_speed_time: f64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_manifest_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some_and(|host| !host.is_empty()) => Ok(url),
        "http" | "https" => Err(format!("{text:?} has no host")),
        other => Err(format!(
            "unsupported scheme {other:?} in {text:?} (http and https only)"
        )),
    }
}

fn parse_key(text: &str) -> Result<TrustedKey, String> {
    TrustedKey::parse(text).map_err(|error| error.to_string())
}

/// Milliseconds since the Unix epoch, by the wall clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LoadArgs {
    fn config(&self) -> Result<Config, String> {
        let mut config = Config {
            connect_timeout: crate::get::secs("connect-timeout", self.connect_timeout)?,
            idle_timeout: crate::get::secs("idle-timeout", self.idle_timeout)?,
            head_timeout: crate::get::head_timeout(self.head_timeout, self.idle_timeout)?,
            low_speed: crate::get::low_speed(self.low_speed_limit, self.low_speed_time)?,
            ..Config::default()
        };
        config.retry.max_attempts = self.retries.saturating_add(1);
        // The engine's queue bounds the module downloads running at once.
        config.max_active_jobs = self.concurrency.max(1);
        config.validate().map_err(|error| error.to_string())?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        for (index, key) in self.keys.iter().enumerate() {
            if self.keys[..index]
                .iter()
                .any(|earlier| earlier.name == key.name)
            {
                return Err(format!("--key name {:?} is given more than once", key.name));
            }
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".to_owned());
        }
        // A shipped directory that is not there is a mistake (a typo), not an empty tier.
        if let Some(embedded) = &self.embedded {
            if !embedded.is_dir() {
                return Err(format!(
                    "--embedded {} is not a directory",
                    embedded.display()
                ));
            }
        }
        Ok(())
    }

    fn request(&self, now_ms: u64) -> LoadRequest {
        LoadRequest {
            app: self.app.clone(),
            manifest_url: self.manifest.clone(),
            trusted_keys: self.keys.clone(),
            embedded_dir: self.embedded.clone(),
            allow_rollback: self.allow_rollback,
            freshness_window_ms: self.freshness.saturating_mul(1000),
            now_ms,
            module_max_bytes: self.max_module_size,
        }
    }
}

/// Run `haul load`; returns the exit code.
pub fn run(args: LoadArgs) -> i32 {
    let config = match args.check().and_then(|()| args.config()) {
        Ok(config) => config,
        Err(message) => return fail(&args, exit::USAGE, &message),
    };
    let client = match Client::new(config) {
        Ok(client) => client,
        Err(error) => return fail(&args, exit::USAGE, &error.to_string()),
    };
    let cancel = client.cancel_handle();
    crate::signals::on_interrupt(move || cancel.stop_all(CancelMode::KeepPartial));

    tracing::debug!("started");
    let now_ms = now_ms();
    let request = args.request(now_ms);
    let (opened, fetcher) = open_for_load(
        &args.cache,
        &request,
        client.module_fetcher(args.concurrency),
    );
    let (store, recovery) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            return fail(
                &args,
                store_exit_code(&error),
                &format!(
                    "cannot open the cache {}: {}",
                    args.cache.display(),
                    crate::cache::open_error_text(&args.cache, &error)
                ),
            )
        }
    };
    if !recovery.is_clean() && !args.json {
        eprintln!(
            "note: opening the cache cleaned up what a crash or a change from outside left: {}",
            recovery_summary(&recovery)
        );
    }
    let loader = Loader::new(store, fetcher);
    let code = match loader.load(&request) {
        Ok(result) => {
            if args.json {
                println!("{}", result_json(&args, &result, &recovery));
            } else {
                print_result(&args, &result);
            }
            tracing::debug!("printed");
            exit::OK
        }
        Err(error @ ModuleError::Rollback { .. }) => fail(
            &args,
            module_exit_code(&error),
            &format!("{error} (--allow-rollback loads it anyway)"),
        ),
        Err(error) => fail(&args, module_exit_code(&error), &error.to_string()),
    };
    // The process ends now: everything the load did is committed (its index transactions
    // are synced, its files durable). Closing the index, the connections and the helper
    // threads one by one would only delay the exit (about a millisecond); the OS reclaims
    // them at once.
    std::mem::forget(loader);
    std::mem::forget(client);
    code
}

fn fail(args: &LoadArgs, code: i32, message: &str) -> i32 {
    eprintln!("haul load: {message}");
    if args.json {
        println!(
            "{}",
            json!({"app": args.app, "error": message, "exit_code": exit::as_exited(code)})
        );
    }
    code
}

fn source_name(source: &LoadSource) -> &'static str {
    match source {
        LoadSource::Embedded => "embedded",
        LoadSource::Store => "store",
        LoadSource::Network => "network",
        LoadSource::PinnedFallback { .. } => "pinned-fallback",
        LoadSource::EmbeddedFallback { .. } => "embedded-fallback",
    }
}

fn module_source_name(source: ModuleSource) -> &'static str {
    match source {
        ModuleSource::Embedded => "embedded",
        ModuleSource::Store => "store",
        ModuleSource::Network => "network",
    }
}

fn fallback_reason(source: &LoadSource) -> Option<&str> {
    match source {
        LoadSource::PinnedFallback { reason } | LoadSource::EmbeddedFallback { reason } => {
            Some(reason)
        }
        LoadSource::Embedded | LoadSource::Store | LoadSource::Network => None,
    }
}

fn print_result(args: &LoadArgs, result: &LoadResult) {
    let where_from = match &result.manifest_source {
        LoadSource::Network => format!("network ({})", args.manifest),
        LoadSource::Store => "pinned in the cache, fresh enough to skip the network".to_owned(),
        LoadSource::Embedded => "embedded directory, fresh enough to skip the network".to_owned(),
        LoadSource::PinnedFallback { .. } => "pinned in the cache (fallback)".to_owned(),
        LoadSource::EmbeddedFallback { .. } => "embedded directory (fallback)".to_owned(),
    };
    println!("app: {}", args.app);
    println!("manifest: {where_from}");
    if let Some(reason) = fallback_reason(&result.manifest_source) {
        let what = match result.manifest_source {
            LoadSource::EmbeddedFallback { .. } => "the embedded manifest",
            _ => "the last good pinned manifest",
        };
        // The loader's reason for a refused rollback is `ModuleError::Rollback`'s message.
        let hint = if reason.starts_with("rollback refused") {
            " (--allow-rollback loads it anyway)"
        } else {
            ""
        };
        println!(
            "fallback: the network's release could not be used, so {what} was loaded instead: {reason}{hint}"
        );
    }
    println!(
        "manifest sha256: {} (verified by key {:?}{})",
        result.manifest_sha256,
        result.verified_by,
        result
            .version
            .as_deref()
            .map(|version| format!(", version {version}"))
            .unwrap_or_default()
    );
    if let Some(main) = &result.main_module_id {
        match &result.main_function {
            Some(function) => println!("main: {main} ({function})"),
            None => println!("main: {main}"),
        }
    }
    println!("load order ({} modules):", result.modules.len());
    let id_width = result
        .modules
        .iter()
        .map(|module| module.id.as_str().len())
        .max()
        .unwrap_or(0);
    // One write for the whole list, not one per line (stdout is line-buffered).
    let mut listing = String::new();
    for (position, module) in result.modules.iter().enumerate() {
        listing.push_str(&format!(
            "  {:>3}. {:<id_width$}  {:<8}  {}\n",
            position + 1,
            module.id.as_str(),
            module_source_name(module.source),
            module.path.display()
        ));
    }
    print!("{listing}");
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
}

fn result_json(args: &LoadArgs, result: &LoadResult, recovery: &RecoveryReport) -> String {
    // Written straight from the result (no intermediate JSON tree): a load of many modules
    // prints one entry per module.
    #[derive(Serialize)]
    struct Report<'a> {
        app: &'a str,
        manifest: ManifestReport<'a>,
        modules: Vec<ModuleReport<'a>>,
        warnings: &'a [String],
        recovered: serde_json::Value,
    }
    #[derive(Serialize)]
    struct ManifestReport<'a> {
        source: &'static str,
        fallback_reason: Option<&'a str>,
        url: &'a str,
        sha256: &'a str,
        verified_by: &'a str,
        version: &'a Option<String>,
        main_module_id: Option<&'a str>,
        main_function: &'a Option<String>,
    }
    #[derive(Serialize)]
    struct ModuleReport<'a> {
        id: &'a str,
        sha256: &'a str,
        source: &'static str,
        path: std::borrow::Cow<'a, str>,
    }
    let report = Report {
        app: &args.app,
        manifest: ManifestReport {
            source: source_name(&result.manifest_source),
            fallback_reason: fallback_reason(&result.manifest_source),
            url: &result.manifest_url,
            sha256: &result.manifest_sha256,
            verified_by: &result.verified_by,
            version: &result.version,
            main_module_id: result.main_module_id.as_ref().map(|id| id.as_str()),
            main_function: &result.main_function,
        },
        modules: result
            .modules
            .iter()
            .map(|module| ModuleReport {
                id: module.id.as_str(),
                sha256: &module.sha256,
                source: module_source_name(module.source),
                path: module.path.to_string_lossy(),
            })
            .collect(),
        warnings: &result.warnings,
        recovered: recovery_json(recovery),
    };
    serde_json::to_string(&report).expect("a load report serializes")
}

/// The exit code for a failed load: 5 for signatures and wrong bytes, 6 for an invalid or
/// unsafe manifest (including a refused rollback), 3/4 for network and HTTP failures, 7 for
/// the local disk or cache index, 2 for bad input.
pub fn module_exit_code(error: &ModuleError) -> i32 {
    match error {
        ModuleError::ManifestTooLarge { .. }
        | ModuleError::ManifestSyntax(_)
        | ModuleError::ManifestNotObject
        | ModuleError::ManifestNotSignable { .. }
        | ModuleError::InvalidSha256 { .. }
        | ModuleError::UnknownDependency { .. }
        | ModuleError::DependencyCycle { .. }
        | ModuleError::MissingMainModule { .. }
        | ModuleError::UnknownModule { .. }
        | ModuleError::InvalidUrl { .. }
        | ModuleError::UnsupportedModuleUrl { .. }
        | ModuleError::Rollback { .. } => exit::UNSAFE_INPUT,
        ModuleError::InvalidTrustedKey { .. }
        | ModuleError::DuplicateTrustedKey { .. }
        | ModuleError::InvalidAppName { .. } => exit::USAGE,
        ModuleError::MalformedSignature { .. }
        | ModuleError::SignatureMismatch { .. }
        | ModuleError::NoTrustedSignature { .. }
        | ModuleError::ModuleTooLarge { .. } => exit::VERIFICATION,
        // A manifest is fetched with no expected hash, only a size cap: wrong content there
        // is a manifest over the cap, as invalid as one read from disk over it.
        ModuleError::ManifestFetch { source, .. }
            if source.kind == FetchErrorKind::Verification =>
        {
            exit::UNSAFE_INPUT
        }
        ModuleError::ManifestFetch { source, .. } | ModuleError::ModuleFetch { source, .. } => {
            match source.kind {
                FetchErrorKind::Network => exit::NETWORK,
                FetchErrorKind::HttpStatus(_) | FetchErrorKind::Redirects => exit::HTTP_STATUS,
                FetchErrorKind::Verification => exit::VERIFICATION,
                FetchErrorKind::LocalIo => exit::LOCAL_IO,
                FetchErrorKind::InvalidRequest => exit::USAGE,
                FetchErrorKind::Cancelled => exit::INTERRUPTED,
            }
        }
        ModuleError::SharedDownloadFailed { is_network, .. } => {
            if *is_network {
                exit::NETWORK
            } else {
                exit::VERIFICATION
            }
        }
        ModuleError::ModuleUnavailable { .. } => exit::NETWORK,
        ModuleError::ModuleCommit { source, .. } | ModuleError::Store(source) => {
            store_exit_code(source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_modules::{FetchError, StoreError};

    #[test]
    fn fetch_failures_map_to_the_exit_code_of_their_kind() {
        let fetch = |kind| ModuleError::ModuleFetch {
            id: "./a.js".into(),
            url: "http://x/a".into(),
            source: FetchError::new(kind, "x"),
        };
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::Network)), 3);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::HttpStatus(503))), 4);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::HttpStatus(404))), 4);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::Redirects)), 4);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::Verification)), 5);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::LocalIo)), 7);
        assert_eq!(module_exit_code(&fetch(FetchErrorKind::Cancelled)), 130);
    }

    #[test]
    fn signature_and_manifest_failures_are_5_and_6() {
        assert_eq!(
            module_exit_code(&ModuleError::SignatureMismatch { key: "k".into() }),
            5
        );
        assert_eq!(
            module_exit_code(&ModuleError::NoTrustedSignature {
                present: vec![],
                trusted: vec!["k".into()]
            }),
            5
        );
        assert_eq!(
            module_exit_code(&ModuleError::DependencyCycle {
                cycle: vec!["a".into()]
            }),
            6
        );
        assert_eq!(
            module_exit_code(&ModuleError::Rollback {
                app: "a".into(),
                pinned_fresh_at_ms: 2,
                offered_fresh_at_ms: Some(1),
                floor: haul_modules::RollbackFloor::Pinned,
            }),
            6
        );
        assert_eq!(
            module_exit_code(&ModuleError::ModuleCommit {
                id: "a".into(),
                source: StoreError::HashMismatch {
                    expected: "a".into(),
                    actual: "b".into(),
                    path: "p".into()
                }
            }),
            5
        );
    }

    #[test]
    fn keys_and_urls_are_checked_when_parsed() {
        assert!(parse_key("k:ed25519:00").is_err());
        assert!(parse_key("k:rsa:00").is_err());
        assert!(parse_manifest_url("ftp://host/m.json").is_err());
        assert!(parse_manifest_url("not a url").is_err());
        assert!(parse_manifest_url("http://127.0.0.1:9/m.json").is_ok());
    }
}
