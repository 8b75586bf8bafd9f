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

use std::path::{Path, PathBuf};

use haul_core::{Download, DownloadError, ErrorClass, Outcome};
use haul_modules::{
    FetchError, FetchErrorKind, Fetcher, LoadRequest, LoadResult, Loader, ModuleError,
    ModuleFetch, RecoveryReport, Store,
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
    /// at most `concurrency` modules at once. The store's clock is `request.now_ms`.
    pub fn load_app(
        &self,
        store_dir: &Path,
        request: &LoadRequest,
        concurrency: usize,
    ) -> Result<AppLoad, ModuleError> {
        let (store, recovery) = Store::open(store_dir, request.now_ms)?;
        let loader = Loader::new(store, self.module_fetcher(concurrency));
        let result = loader.load(request)?;
        Ok(AppLoad { result, recovery })
    }
}

impl Fetcher for ModuleFetcher<'_> {
    /// Downloads the manifest into a private temporary directory (removed afterwards) with
    /// `max_bytes` as the size limit, and reads it back.
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
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
        let download = Download::new(url.as_str(), &dest)
            .map_err(|error| fetch_error(&error))?
            .max_size(max_bytes);
        self.client
            .download(download, |_| {})
            .map_err(|error| fetch_error(&error))?;
        let bytes = std::fs::read(&dest).map_err(|error| {
            FetchError::new(
                FetchErrorKind::LocalIo,
                format!("cannot read downloaded manifest {}: {error}", dest.display()),
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
        Ok(bytes)
    }

    /// Downloads every module to its `dest`, verified against its SHA-256 and limited to its
    /// `max_bytes`, at most [`ModuleFetcher::concurrency`] at a time. A failed job leaves
    /// nothing beside its `dest` (its partial and state files are removed: the loader's temp
    /// names are never reused, so they could not be resumed).
    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<(), FetchError>> {
        let mut downloads = Vec::with_capacity(jobs.len());
        let mut leftovers: Vec<Vec<PathBuf>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            match module_download(job) {
                Ok(download) => {
                    leftovers.push(vec![download.part_path(), download.state_path()]);
                    downloads.push(Ok(download));
                }
                Err(error) => {
                    leftovers.push(Vec::new());
                    downloads.push(Err(error));
                }
            }
        }
        let results = download_in_batches(self.client, downloads, self.concurrency);
        results
            .into_iter()
            .zip(leftovers)
            .map(|(result, leftover)| match result {
                Ok(_) => Ok(()),
                Err(error) => {
                    for path in leftover {
                        remove_leftover(&path);
                    }
                    Err(fetch_error(&error))
                }
            })
            .collect()
    }
}

impl Fetcher for Client {
    /// See [`ModuleFetcher`]'s implementation.
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        self.module_fetcher(DEFAULT_MODULE_CONCURRENCY)
            .fetch_manifest(url, max_bytes)
    }

    /// See [`ModuleFetcher`]'s implementation; at most [`DEFAULT_MODULE_CONCURRENCY`] at once.
    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<(), FetchError>> {
        self.module_fetcher(DEFAULT_MODULE_CONCURRENCY)
            .fetch_modules(jobs)
    }
}

/// Runs `downloads` at most `concurrency` per [`Client::download_many`] call; results in the
/// order given (a request that could not be built keeps its error in place).
///
/// A stopgap: the engine starts every job of a call at once, so batching is the only bound
/// today, and each batch waits for its slowest download. Replace with one `download_many`
/// call once the engine schedules concurrency itself.
fn download_in_batches(
    client: &Client,
    downloads: Vec<Result<Download, DownloadError>>,
    concurrency: usize,
) -> Vec<Result<Outcome, DownloadError>> {
    let concurrency = concurrency.max(1);
    let mut results: Vec<Option<Result<Outcome, DownloadError>>> =
        Vec::with_capacity(downloads.len());
    let mut batch: Vec<(usize, Download)> = Vec::with_capacity(concurrency);
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
    Ok(Download::new(job.url.as_str(), &job.dest)?
        .sha256(&job.sha256)?
        .max_size(job.max_bytes))
}

fn remove_leftover(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a failed module download's leftover"),
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
            _ => FetchErrorKind::Network,
        },
        ErrorClass::Verification => FetchErrorKind::Verification,
        ErrorClass::LocalIo => FetchErrorKind::LocalIo,
        ErrorClass::Usage => FetchErrorKind::InvalidRequest,
        ErrorClass::Cancelled => FetchErrorKind::Cancelled,
    };
    FetchError::new(kind, error.to_string())
}
