//! Signed module loading on this runtime: [`Client`] as the [`Fetcher`] of a
//! [`haul_modules::Loader`].
//!
//! Owns: turning the loader's fetches into [`Download`]s (expected SHA-256, size limit,
//! destination), classifying [`DownloadError`]s into [`FetchErrorKind`]s, cleaning up what a
//! failed module download leaves beside its destination, and bounding how many module downloads
//! run at once. Does not own: manifests, signatures, the store, tiers or the fallback policy
//! (all in `haul-modules`), nor retries, resume and verification of the bytes (the engine's).
//!
//! Two ways to load:
//! - [`Client::load_app`] opens the store, runs one load and returns its result together with
//!   what the store's crash recovery cleaned up;
//! - or build the loader yourself, to share one store between several loads or threads:
//!   `Loader::new(store, client.module_fetcher(16))` (or `Loader::new(store, &client)` for the
//!   default concurrency).
//!
//! Error classes (decided here, applied by [`FetchError::is_network`] in `haul-modules`):
//! connect, reset, timeouts, truncated bodies, broken HTTP and redirect trouble are
//! [`FetchErrorKind::Network`]; an HTTP status keeps its code ([`FetchErrorKind::HttpStatus`]),
//! and 408, 429 and 5xx count as network failures there, other 4xx do not; wrong hash, wrong
//! size and too large are [`FetchErrorKind::Verification`]; local file failures
//! [`FetchErrorKind::LocalIo`]; an unusable URL [`FetchErrorKind::InvalidRequest`].

use std::path::Path;

use haul_core::{Download, DownloadError, ErrorClass, Outcome};
use haul_modules::{
    open_for_load, Delivery, FetchError, FetchErrorKind, FetchedManifest, Fetcher, LoadRequest,
    LoadResult, Loader, ModuleError, ModuleFetch, RecoveryReport,
};
use url::Url;

use crate::Client;

/// How many module downloads run at once unless the caller says otherwise.
pub const DEFAULT_MODULE_CONCURRENCY: usize = 16;

/// The file name of the manifest inside its private temporary directory.
const MANIFEST_TEMP_NAME: &str = "manifest.json";

/// A [`Client`] lent to a [`Loader`] with a bound on concurrent module downloads.
#[derive(Clone, Copy)]
pub struct ModuleFetcher<'a> {
    client: &'a Client,
    concurrency: usize,
}

impl ModuleFetcher<'_> {
    /// How many module downloads run at once (at least 1).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// What [`Client::load_app`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLoad {
    pub result: LoadResult,
    /// What opening the store cleaned up after an earlier unclean stop.
    pub recovery: RecoveryReport,
}

impl Client {
    /// This client as a module fetcher running at most `concurrency` downloads at once
    /// (0 counts as 1).
    pub fn module_fetcher(&self, concurrency: usize) -> ModuleFetcher<'_> {
        ModuleFetcher {
            client: self,
            concurrency: concurrency.max(1),
        }
    }

    /// Opens (and recovers) the store in `store_dir` and loads one app into it, downloading
    /// at most `concurrency` modules at once. The store's clock is `request.now_ms`. A store
    /// that does not exist yet is created while the manifest is fetched
    /// ([`haul_modules::open_for_load`]).
    pub fn load_app(
        &self,
        store_dir: &Path,
        request: &LoadRequest,
        concurrency: usize,
    ) -> Result<AppLoad, ModuleError> {
        let (opened, fetcher) = open_for_load(store_dir, request, self.module_fetcher(concurrency));
        let (store, recovery) = opened?;
        let loader = Loader::new(store, fetcher);
        let result = loader.load(request)?;
        Ok(AppLoad { result, recovery })
    }
}

impl Fetcher for ModuleFetcher<'_> {
    /// Downloads the manifest into a private temporary directory (removed afterwards) with
    /// `max_bytes` as the size limit, and reads it back.
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
        let dir = tempfile::Builder::new()
            .prefix("haul-manifest-")
            .tempdir()
            .map_err(|error| {
                FetchError::new(
                    FetchErrorKind::LocalIo,
                    format!("cannot create a temporary directory for manifest {url}: {error}"),
                )
            })?;
        let dest = dir.path().join(MANIFEST_TEMP_NAME);
        // A throwaway copy, read back at once (the store keeps the verified manifest with its
        // own durability): no syncs.
        let download = Download::new(url.as_str(), &dest)
            .map_err(|error| fetch_error(&error))?
            .max_size(max_bytes)
            .defer_sync();
        let outcome = self
            .client
            .download(download, |_| {})
            .map_err(|error| fetch_error(&error))?;
        let bytes = std::fs::read(&dest).map_err(|error| {
            FetchError::new(
                FetchErrorKind::LocalIo,
                format!(
                    "cannot read downloaded manifest {}: {error}",
                    dest.display()
                ),
            )
        })?;
        if bytes.len() as u64 > max_bytes {
            return Err(FetchError::new(
                FetchErrorKind::Verification,
                format!(
                    "manifest {url} is {} bytes, more than the {max_bytes}-byte limit",
                    bytes.len()
                ),
            ));
        }
        // The engine's final URL is one it fetched from, so it parses; if not, the URL asked
        // for is the base modules resolve against.
        let from = Url::parse(&outcome.final_url).unwrap_or_else(|_| url.clone());
        Ok(FetchedManifest { bytes, url: from })
    }

    /// Downloads every module straight to its `store_path`, verified against its SHA-256 and
    /// limited to its `max_bytes`, at most [`ModuleFetcher::concurrency`] at a time, and
    /// renamed into place only after the hash matched; each answers [`Delivery::Committed`].
    /// The files are not synced ([`Download::defer_sync`]): the store syncs them all at once
    /// before it records them. A failed job leaves nothing beside its `store_path` (its
    /// partial and state files are removed: a later load starts over, and the store's
    /// recovery would remove them anyway).
    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
        let downloads = jobs.iter().map(module_download).collect();
        let results = download_in_batches(self.client, downloads, self.concurrency);
        results
            .into_iter()
            .zip(&jobs)
            .map(|(result, job)| match result {
                Ok(outcome) => Ok(Delivery::Committed { size: outcome.size }),
                Err(error) => {
                    // What a failed download may leave beside its destination.
                    if let Ok(download) = module_download(job) {
                        remove_leftover(&download.part_path());
                        remove_leftover(&download.state_path());
                    }
                    Err(fetch_error(&error))
                }
            })
            .collect()
    }
}

impl Fetcher for Client {
    /// See [`ModuleFetcher`]'s implementation.
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
        self.module_fetcher(DEFAULT_MODULE_CONCURRENCY)
            .fetch_manifest(url, max_bytes)
    }

    /// See [`ModuleFetcher`]'s implementation; at most [`DEFAULT_MODULE_CONCURRENCY`] at once.
    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
        self.module_fetcher(DEFAULT_MODULE_CONCURRENCY)
            .fetch_modules(jobs)
    }
}

/// Runs `downloads` with at most `concurrency` at once; results in the order given (a
/// request that could not be built keeps its error in place).
///
/// When the client's engine runs no more than `concurrency` jobs at once, every download goes
/// in one [`Client::download_many`] call and the engine's queue starts the next one as soon
/// as any finishes. Otherwise they go in calls of `concurrency` downloads, each of which
/// waits for its slowest download.
fn download_in_batches(
    client: &Client,
    downloads: Vec<Result<Download, DownloadError>>,
    concurrency: usize,
) -> Vec<Result<Outcome, DownloadError>> {
    let concurrency = if client.max_active_jobs() <= concurrency.max(1) {
        usize::MAX
    } else {
        concurrency.max(1)
    };
    let mut results: Vec<Option<Result<Outcome, DownloadError>>> =
        Vec::with_capacity(downloads.len());
    let mut batch: Vec<(usize, Download)> = Vec::with_capacity(concurrency.min(downloads.len()));
    for (index, download) in downloads.into_iter().enumerate() {
        match download {
            Ok(download) => {
                results.push(None);
                batch.push((index, download));
                if batch.len() == concurrency {
                    run_batch(client, &mut batch, &mut results);
                }
            }
            Err(error) => results.push(Some(Err(error))),
        }
    }
    run_batch(client, &mut batch, &mut results);
    results
        .into_iter()
        .map(|result| result.expect("every download ran in a batch"))
        .collect()
}

fn run_batch(
    client: &Client,
    batch: &mut Vec<(usize, Download)>,
    results: &mut [Option<Result<Outcome, DownloadError>>],
) {
    if batch.is_empty() {
        return;
    }
    let (indexes, downloads): (Vec<usize>, Vec<Download>) = batch.drain(..).unzip();
    let outcomes = client.download_many(downloads, |_| {});
    for (index, outcome) in indexes.into_iter().zip(outcomes) {
        results[index] = Some(outcome);
    }
}

fn module_download(job: &ModuleFetch) -> Result<Download, DownloadError> {
    // The store syncs the load's modules together before it records them; and nothing of an
    // earlier download is at a store path it hands out (a hash without a READY row has no
    // file: a failed fetch's leftovers are removed below, and the store's recovery removes
    // any file it has not recorded), so there is nothing for the engine to look for.
    let mut download = Download::from_url(job.url.clone(), &job.store_path)?;
    for mirror in &job.mirrors {
        // Another id's URL the engine refuses (credentials in it) is only not used: the
        // module's own URL may well serve.
        match download.clone().mirror(mirror.as_str()) {
            Ok(with) => download = with,
            Err(error) => tracing::debug!(%mirror, %error, "a module's other URL is not used"),
        }
    }
    Ok(download
        .sha256(&job.sha256)?
        .max_size(job.max_bytes)
        .defer_sync()
        .fresh())
}

fn remove_leftover(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed a failed module download's leftover")
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot remove a failed module download's leftover")
        }
    }
}

/// The loader's view of a download failure (see the module docs for the classes).
pub fn fetch_error(error: &DownloadError) -> FetchError {
    let kind = match error.class() {
        ErrorClass::Network => FetchErrorKind::Network,
        ErrorClass::HttpStatus => match error {
            DownloadError::Status { status, .. } => FetchErrorKind::HttpStatus(*status),
            DownloadError::DependencyFailed { cause, .. } => return fetch_error(cause),
            _ => FetchErrorKind::Redirects,
        },
        ErrorClass::Verification => FetchErrorKind::Verification,
        ErrorClass::LocalIo => FetchErrorKind::LocalIo,
        ErrorClass::Usage => FetchErrorKind::InvalidRequest,
        ErrorClass::Cancelled => FetchErrorKind::Cancelled,
    };
    FetchError::new(kind, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;
    use haul_core::Config;
    use haul_modules::{LoadSource, ModuleSource, TrustedKey};
    use haul_origin::{Behavior, Origin};
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    fn client() -> Client {
        let mut config = Config::default();
        config.retry.max_attempts = 1;
        Client::new(config).unwrap()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// A job whose store path is `store_path` (its temp path is a sibling never written).
    fn job(url_text: &str, expected: &[u8], max_bytes: u64, store_path: PathBuf) -> ModuleFetch {
        let mut temp_name = store_path.file_name().unwrap().to_os_string();
        temp_name.push(".temp");
        ModuleFetch {
            url: url(url_text),
            mirrors: Vec::new(),
            sha256: sha256_hex(expected),
            max_bytes,
            dest: store_path.with_file_name(temp_name),
            store_path,
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A port nothing listens on.
    fn refused_url(path: &str) -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}{path}")
    }

    #[test]
    fn another_url_the_engine_refuses_does_not_fail_a_fetch_whose_own_url_serves() {
        let origin = Origin::start().unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let body = vec![7u8; 3000];
        origin.route("/good", body.clone(), Behavior::Normal);
        let mut fetch = job(&origin.url("/good"), &body, 1 << 20, dir.path().join("m"));
        let with_credentials = origin.url("/other").replace("http://", "http://user:pw@");
        fetch.mirrors.push(url(&with_credentials));
        let results = client().module_fetcher(2).fetch_modules(vec![fetch]);
        assert!(results[0].is_ok(), "{:?}", results[0]);
    }

    #[test]
    fn a_module_listed_under_several_urls_is_fetched_from_the_next_when_one_fails() {
        let origin = Origin::start().unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let body = vec![7u8; 3000];
        origin.route("/good", body.clone(), Behavior::Normal);
        let mut fetch = job(&origin.url("/gone"), &body, 1 << 20, dir.path().join("m"));
        fetch.mirrors.push(url(&origin.url("/good")));
        let client = client();
        let results = client.module_fetcher(2).fetch_modules(vec![fetch]);
        assert_eq!(results.len(), 1);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert_eq!(std::fs::read(dir.path().join("m")).unwrap(), body);
    }

    #[test]
    fn module_downloads_land_at_their_destinations_with_results_in_job_order() {
        let origin = Origin::start().unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        for (index, body) in bodies.iter().enumerate() {
            if index != 2 {
                origin.route(&format!("/m{index}"), body.clone(), Behavior::Normal);
            }
        }
        let mut jobs: Vec<ModuleFetch> = bodies
            .iter()
            .enumerate()
            .map(|(index, body)| {
                job(
                    &origin.url(&format!("/m{index}")),
                    body,
                    1 << 20,
                    dir.path().join(format!("dest{index}")),
                )
            })
            .collect();
        jobs.push(job(
            "ftp://127.0.0.1/m",
            b"x",
            1 << 20,
            dir.path().join("dest-ftp"),
        ));
        let client = client();
        let results = client.module_fetcher(2).fetch_modules(jobs);
        let kinds: Vec<Option<FetchErrorKind>> = results
            .iter()
            .map(|result| result.as_ref().err().map(|error| error.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                None,
                None,
                Some(FetchErrorKind::HttpStatus(404)),
                None,
                None,
                Some(FetchErrorKind::InvalidRequest)
            ]
        );
        assert!(!results[2].as_ref().unwrap_err().is_network());
        for index in [0, 1, 3, 4] {
            assert_eq!(
                std::fs::read(dir.path().join(format!("dest{index}"))).unwrap(),
                bodies[index]
            );
        }
        assert_eq!(names_in(dir.path()), ["dest0", "dest1", "dest3", "dest4"]);
    }

    #[test]
    fn wrong_bytes_and_oversized_modules_are_verification_failures_that_leave_nothing() {
        let origin = Origin::start().unwrap();
        origin.route("/tampered", b"evil bytes".to_vec(), Behavior::Normal);
        origin.route("/big", vec![7u8; 10_000], Behavior::Normal);
        let dir = tempfile::TempDir::new().unwrap();
        let results = client().fetch_modules(vec![
            job(
                &origin.url("/tampered"),
                b"good bytes",
                1 << 20,
                dir.path().join("tampered"),
            ),
            job(
                &origin.url("/big"),
                &[7u8; 10_000],
                4_096,
                dir.path().join("big"),
            ),
        ]);
        for result in &results {
            let error = result.as_ref().unwrap_err();
            assert_eq!(error.kind, FetchErrorKind::Verification, "{error}");
            assert!(!error.is_network());
        }
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }

    #[test]
    fn manifest_fetch_returns_the_bytes_and_classifies_failures_for_the_fallback() {
        let origin = Origin::start().unwrap();
        origin.route("/m.json", b"{\"modules\":{}}".to_vec(), Behavior::Normal);
        origin.route(
            "/busy.json",
            b"x".to_vec(),
            Behavior::Status {
                status: 503,
                retry_after: None,
            },
        );
        origin.route("/huge.json", vec![b' '; 5_000], Behavior::Normal);
        origin.route(
            "/latest.json",
            Vec::new(),
            Behavior::Redirect {
                status: 302,
                location: "/v2/m.json".into(),
            },
        );
        origin.route("/v2/m.json", b"{\"modules\":{}}".to_vec(), Behavior::Normal);
        let client = client();
        let fetched = client
            .fetch_manifest(&url(&origin.url("/m.json")), 1_000)
            .unwrap();
        assert_eq!(fetched.bytes, b"{\"modules\":{}}");
        assert_eq!(fetched.url, url(&origin.url("/m.json")));
        // Where a redirect led: the base its module URLs resolve against.
        let redirected = client
            .fetch_manifest(&url(&origin.url("/latest.json")), 1_000)
            .unwrap();
        assert_eq!(redirected.url, url(&origin.url("/v2/m.json")));
        let missing = client
            .fetch_manifest(&url(&origin.url("/missing.json")), 1_000)
            .unwrap_err();
        assert_eq!(missing.kind, FetchErrorKind::HttpStatus(404));
        assert!(!missing.is_network());
        let busy = client
            .fetch_manifest(&url(&origin.url("/busy.json")), 1_000)
            .unwrap_err();
        assert_eq!(busy.kind, FetchErrorKind::HttpStatus(503));
        assert!(busy.is_network());
        let huge = client
            .fetch_manifest(&url(&origin.url("/huge.json")), 1_000)
            .unwrap_err();
        assert_eq!(huge.kind, FetchErrorKind::Verification, "{huge}");
        let refused = client
            .fetch_manifest(&url(&refused_url("/m.json")), 1_000)
            .unwrap_err();
        assert_eq!(refused.kind, FetchErrorKind::Network, "{refused}");
        assert!(refused.is_network());
    }

    fn signed_manifest(key: &ed25519_dalek::SigningKey, modules: &[(&str, &[u8])]) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        for (name, bytes) in modules {
            map.insert(
                format!("./{name}.js"),
                serde_json::json!({"url": format!("{name}.zipline"), "sha256": sha256_hex(bytes)}),
            );
        }
        let mut document = serde_json::json!({
            "unsigned": {"signatures": {}, "freshAtEpochMs": 100},
            "modules": map,
        });
        let message = haul_modules::signed_bytes(&serde_json::to_vec(&document).unwrap()).unwrap();
        document["unsigned"]["signatures"]["test"] =
            serde_json::json!(hex::encode(key.sign(&message).to_bytes()));
        serde_json::to_vec(&document).unwrap()
    }

    #[test]
    fn load_app_stores_a_signed_apps_modules_and_falls_back_to_them_when_the_origin_is_gone() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let trusted = TrustedKey::new(
            "test",
            haul_modules::Algorithm::Ed25519,
            key.verifying_key().to_bytes().to_vec(),
        )
        .unwrap();
        let origin = Origin::start().unwrap();
        let modules: [(&str, &[u8]); 2] = [("base", b"base module"), ("app", b"app module")];
        origin.route(
            "/app/manifest.json",
            signed_manifest(&key, &modules),
            Behavior::Normal,
        );
        for (name, bytes) in modules {
            origin.route(
                &format!("/app/{name}.zipline"),
                bytes.to_vec(),
                Behavior::Normal,
            );
        }
        let store_dir = tempfile::TempDir::new().unwrap();
        let mut request = LoadRequest {
            app: "app".to_owned(),
            manifest_url: url(&origin.url("/app/manifest.json")),
            trusted_keys: vec![trusted],
            embedded_dir: None,
            allow_rollback: false,
            freshness_window_ms: 0,
            now_ms: 1_000,
            module_max_bytes: 1 << 20,
        };
        let client = client();
        let loaded = client.load_app(store_dir.path(), &request, 4).unwrap();
        assert!(loaded.recovery.is_clean());
        assert_eq!(loaded.result.manifest_source, LoadSource::Network);
        for (module, (_, bytes)) in loaded.result.modules.iter().zip(modules) {
            assert_eq!(module.source, ModuleSource::Network);
            assert_eq!(std::fs::read(&module.path).unwrap(), bytes);
        }

        drop(origin);
        request.now_ms = 2_000;
        let fallback = client.load_app(store_dir.path(), &request, 4).unwrap();
        assert!(
            matches!(
                fallback.result.manifest_source,
                LoadSource::PinnedFallback { .. }
            ),
            "{:?}",
            fallback.result.manifest_source
        );
        assert!(fallback
            .result
            .modules
            .iter()
            .all(|module| module.source == ModuleSource::Store));
    }
}
