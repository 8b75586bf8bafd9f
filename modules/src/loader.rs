//! Load orchestration: which manifest to use, which modules to fetch, and what to pin.
//!
//! Owns the tier order, rollback protection, the fallback to the last good manifest, and the
//! in-process sharing of downloads. It does not speak HTTP: the download engine implements
//! [`Fetcher`], and this module only hands it URLs, expected hashes, size limits and the
//! store's temp paths.
//!
//! # Tiers
//!
//! 1. Local candidates: the embedded directory's `<app>.manifest.json` (a flat directory that
//!    also holds module files named by their lowercase SHA-256) and the app's pinned manifest
//!    in the store. Each is signature-checked against the request's trusted keys every time
//!    (so revoking a key also revokes cached manifests); one that fails is skipped with a
//!    warning in [`LoadResult::warnings`], never fatal. The newer of the two (by
//!    `freshAtEpochMs`; the pinned one on a tie) is used without the network when it is fresh:
//!    its freshness instant is less than `freshness_window_ms` before `now_ms`. The freshness
//!    instant of a pinned manifest is when it was last fetched from the network (or, if it came
//!    from the embedded directory, its `freshAtEpochMs`); of an embedded one, its
//!    `freshAtEpochMs`.
//! 2. Otherwise the network: fetch the manifest, verify it, apply rollback protection, fetch
//!    the modules that are neither stored nor embedded, commit them, and pin.
//! 3. If that fails, fall back to the pinned manifest, then the embedded one, provided all
//!    their modules are stored or embedded ([`LoadSource::PinnedFallback`] /
//!    [`LoadSource::EmbeddedFallback`] say why). Whatever the network offered fails so:
//!    unreachable, a 404, a captive portal's page, a bad signature, a rollback, a module with
//!    the wrong bytes ([`ModuleError::allows_fallback`]); only a configuration error or a
//!    cancellation fails the load at once. With no local manifest to use, the network's
//!    failure is the load's error.
//!
//! After a successful load from the network or the embedded directory the app's pins become
//! exactly that manifest and its modules ([`Store::set_pins`], one transaction). A failed load
//! changes no pins. A load that reuses the pinned manifest leaves the pins and its freshness
//! instant alone and only touches the files.
//!
//! # Rollback protection
//!
//! A manifest whose `freshAtEpochMs` (absent counts as 0) is older than the pinned manifest's
//! is refused unless `allow_rollback`. `freshAtEpochMs` lives in the unsigned section, so this
//! stops stale mirrors and caches, not an attacker who holds a validly signed old manifest.
//!
//! # One download per hash
//!
//! [`Loader`] keeps a map of hashes being obtained in this process. The first load that needs
//! a hash becomes its leader and downloads (or copies from the embedded directory); every other
//! load that needs it meanwhile waits on the leader's condition variable and then uses the
//! stored file. The check "in the map, else in the store, else lead" happens under the map's
//! lock, and a leader commits to the store before it leaves the map, so a hash is never fetched
//! twice by concurrent loads in one process. A leader finishes all its own downloads before it
//! waits for anyone else's, so loads cannot wait on each other in a cycle. Another process
//! waits for the store's lock (see [`crate::store`]).
//!
//! Lock order: the in-flight map, then the store. The store lock is never held while the
//! fetcher runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};
use url::Url;

use crate::manifest::{Manifest, ModuleId, MANIFEST_MAX_BYTES};
use crate::signature::{check_trusted_keys, verify_parsed, TrustedKey};
use crate::store::{FileKind, PendingFile, PinPlan, RecoveryReport, Store, StoreError};
use crate::{ModuleError, RollbackFloor};

/// What kind of failure a fetch was, as the download engine classifies it. The kind says
/// whether the network failed ([`FetchError::is_network`]: a later try may succeed) and lets
/// callers report the failure precisely (the CLI maps kinds to exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// Connect, DNS, reset, timeout, truncated body, broken HTTP.
    Network,
    /// The server answered this (non-success) HTTP status.
    HttpStatus(u16),
    /// The server's redirects went in a loop or on past the limit: its answers are wrong,
    /// not the network (no fallback, as for a 404).
    Redirects,
    /// The bytes were not the expected ones: hash, size, larger than allowed.
    Verification,
    /// The local file system failed.
    LocalIo,
    /// The request could not be made at all (bad URL, unsupported scheme).
    InvalidRequest,
    /// The caller cancelled the fetch.
    Cancelled,
}

/// A failed fetch, as the download engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// What went wrong, for people.
    pub message: String,
    pub kind: FetchErrorKind,
}

impl FetchError {
    pub fn new(kind: FetchErrorKind, message: impl Into<String>) -> FetchError {
        FetchError {
            message: message.into(),
            kind,
        }
    }

    /// A network failure ([`FetchErrorKind::Network`]).
    pub fn network(message: impl Into<String>) -> FetchError {
        FetchError::new(FetchErrorKind::Network, message)
    }

    /// A failure of the content itself ([`FetchErrorKind::Verification`]).
    pub fn content(message: impl Into<String>) -> FetchError {
        FetchError::new(FetchErrorKind::Verification, message)
    }

    /// True when the network failed, so a later try may succeed: every
    /// [`FetchErrorKind::Network`] failure, and the statuses that say the server is unreachable
    /// or overloaded rather than that the URL is wrong (408, 429 and 5xx). Other 4xx statuses,
    /// wrong bytes, local I/O, invalid requests and cancellation are not. (Whether a load
    /// falls back to local data is [`ModuleError::allows_fallback`]: for all of these but a
    /// cancellation.)
    pub fn is_network(&self) -> bool {
        match self.kind {
            FetchErrorKind::Network => true,
            FetchErrorKind::HttpStatus(status) => matches!(status, 408 | 429 | 500..=599),
            FetchErrorKind::Verification
            | FetchErrorKind::Redirects
            | FetchErrorKind::LocalIo
            | FetchErrorKind::InvalidRequest
            | FetchErrorKind::Cancelled => false,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.kind {
            FetchErrorKind::Network => "network error",
            FetchErrorKind::HttpStatus(_) if self.is_network() => "server unavailable",
            FetchErrorKind::HttpStatus(_) => "HTTP error",
            FetchErrorKind::Verification => "wrong content",
            FetchErrorKind::LocalIo => "local I/O error",
            FetchErrorKind::InvalidRequest => "invalid request",
            FetchErrorKind::Cancelled => "cancelled",
            FetchErrorKind::Redirects => "bad redirects",
        };
        write!(f, "{} ({class})", self.message)
    }
}

impl std::error::Error for FetchError {}

/// One module download for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFetch {
    pub url: Url,
    /// Other URLs the manifest lists the same bytes under (modules with one sha256): a
    /// fetcher fails over to them.
    pub mirrors: Vec<Url>,
    /// Lowercase hex SHA-256 the bytes must have.
    pub sha256: String,
    /// Stop and fail beyond this many bytes.
    pub max_bytes: u64,
    /// Where to write the bytes for the store to check: its temp path. The loader re-hashes
    /// the file there before committing it ([`Delivery::Temp`]).
    pub dest: PathBuf,
    /// The module's final place in the store, `files/<sha256>`, for a fetcher that verifies
    /// and commits by itself ([`Delivery::Committed`]).
    pub store_path: PathBuf,
}

/// Where a fetcher left a module's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// At the job's `dest`, unverified: the store re-hashes, syncs and renames them.
    Temp,
    /// At the job's `store_path`: verified against its sha256 as they arrived and renamed into
    /// place whole (synced or not). The store syncs them all at once and records them (one
    /// create, one rename and one sync per module instead of two of each plus a re-read).
    /// `size`: the bytes the fetcher wrote (checked against the load's module size limit
    /// without asking the file system again).
    Committed { size: u64 },
}

/// A fetched manifest: its bytes, and the URL they finally came from (after redirects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// Where the bytes came from: the URL asked for, or where its redirects led. Module URLs
    /// (and a relative `baseUrl`) resolve against it, as a browser resolves a page's links:
    /// a manifest URL that redirects to a versioned directory (`/app/manifest.json` to
    /// `/app/v42/manifest.json`) has its modules beside the versioned copy.
    pub url: Url,
}

/// The download engine as the loader sees it.
pub trait Fetcher {
    /// The bytes at `url`, at most `max_bytes`, and where they came from.
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError>;

    /// Downloads every job (in parallel if the engine can), each limited to its `max_bytes`
    /// and delivered as the [`Delivery`] says. Returns one result per job, in job order.
    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>>;
}

impl<F: Fetcher + ?Sized> Fetcher for &F {
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
        (**self).fetch_manifest(url, max_bytes)
    }

    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
        (**self).fetch_modules(jobs)
    }
}

/// A fetcher whose first fetch of one manifest was made ahead: [`open_for_load`] fetches the
/// manifest of a new store (which has nothing cached to use instead) while the store's index
/// is being created. The first [`Fetcher::fetch_manifest`] of that URL and limit answers what
/// was fetched; everything else goes to the inner fetcher.
pub struct Prefetched<F> {
    inner: F,
    manifest: Mutex<Option<PrefetchedManifest>>,
}

type PrefetchedManifest = (Url, u64, Result<FetchedManifest, FetchError>);

impl<F: Fetcher> Prefetched<F> {
    /// `inner`, with `answer` as the first fetch of the manifest at `url` with `max_bytes`.
    pub fn new(
        inner: F,
        url: Url,
        max_bytes: u64,
        answer: Result<FetchedManifest, FetchError>,
    ) -> Prefetched<F> {
        Prefetched {
            inner,
            manifest: Mutex::new(Some((url, max_bytes, answer))),
        }
    }

    /// `inner` with nothing fetched ahead.
    pub fn none(inner: F) -> Prefetched<F> {
        Prefetched {
            inner,
            manifest: Mutex::new(None),
        }
    }
}

/// Opens (and recovers) the store in `dir` for one load of `request`, and the fetcher for that
/// load. A store that does not exist yet has nothing to load from but the network: unless the
/// request has an embedded directory (or an app name the loader refuses at once), its
/// manifest is fetched through `fetcher` on this thread while another creates the store, and
/// the loader's own fetch of it gets that answer ([`Prefetched`]). On a disk that syncs, the
/// store's creation then costs the load nothing but its excess over the fetch.
#[allow(clippy::type_complexity)]
pub fn open_for_load<F: Fetcher>(
    dir: &Path,
    request: &LoadRequest,
    fetcher: F,
) -> (Result<(Store, RecoveryReport), StoreError>, Prefetched<F>) {
    let cold = request.embedded_dir.is_none()
        && Store::is_new(dir)
        && check_app_name(&request.app).is_ok();
    if !cold {
        return (Store::open(dir, request.now_ms), Prefetched::none(fetcher));
    }
    let max_bytes = MANIFEST_MAX_BYTES as u64;
    let (opened, answer) = std::thread::scope(|scope| {
        let opening = scope.spawn(|| Store::open(dir, request.now_ms));
        let answer = fetcher.fetch_manifest(&request.manifest_url, max_bytes);
        let opened = opening
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (opened, answer)
    });
    let fetcher = Prefetched::new(fetcher, request.manifest_url.clone(), max_bytes, answer);
    (opened, fetcher)
}

impl<F: Fetcher> Fetcher for Prefetched<F> {
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
        let ahead = lock(&self.manifest).take();
        match ahead {
            Some((ahead_url, ahead_max, answer)) if ahead_url == *url && ahead_max == max_bytes => {
                answer
            }
            _ => self.inner.fetch_manifest(url, max_bytes),
        }
    }

    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
        self.inner.fetch_modules(jobs)
    }
}

impl<F: Fetcher + ?Sized> Fetcher for Arc<F> {
    fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
        (**self).fetch_manifest(url, max_bytes)
    }

    fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
        (**self).fetch_modules(jobs)
    }
}

/// What to load and under which rules.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The app's name: the pin owner and the embedded manifest's file name stem.
    pub app: String,
    pub manifest_url: Url,
    pub trusted_keys: Vec<TrustedKey>,
    /// A flat directory with `<app>.manifest.json` and module files named by sha256.
    pub embedded_dir: Option<PathBuf>,
    /// Accept a manifest older than the pinned one.
    pub allow_rollback: bool,
    /// How long a local manifest may be used without asking the network.
    pub freshness_window_ms: u64,
    pub now_ms: u64,
    /// The largest module accepted.
    pub module_max_bytes: u64,
}

/// Where the manifest that was loaded came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadSource {
    /// The embedded directory's manifest, fresh enough to skip the network.
    Embedded,
    /// The pinned manifest in the store, fresh enough to skip the network.
    Store,
    /// Fetched from the network.
    Network,
    /// The network failed; the last good pinned manifest was used.
    PinnedFallback { reason: String },
    /// The network failed and nothing usable was pinned; the embedded manifest was used.
    EmbeddedFallback { reason: String },
}

/// Where a module's bytes came from in this load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource {
    Embedded,
    Store,
    Network,
}

/// A module ready to run: its verified file in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    pub id: ModuleId,
    pub sha256: String,
    pub path: PathBuf,
    pub source: ModuleSource,
}

/// A successful load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadResult {
    pub manifest_source: LoadSource,
    pub manifest_sha256: String,
    /// The trusted key whose signature verified the manifest.
    pub verified_by: String,
    /// The URL of the manifest loaded: the one asked for, or, for a pinned manifest, the
    /// one it was fetched with (a fallback's is not the URL that just failed).
    pub manifest_url: String,
    /// In load order (dependencies first).
    pub modules: Vec<LoadedModule>,
    /// Things that were skipped on the way (tampered local manifests, bad embedded files, ...).
    pub warnings: Vec<String>,
    pub version: Option<String>,
    pub main_module_id: Option<ModuleId>,
    pub main_function: Option<String>,
}

/// Where a candidate manifest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Embedded,
    Pinned,
    Network,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Embedded => "embedded",
            Origin::Pinned => "cached",
            Origin::Network => "network",
        })
    }
}

/// A verified manifest that a load may use.
struct Candidate {
    origin: Origin,
    raw: Vec<u8>,
    sha256: String,
    manifest: Manifest,
    order: Vec<ModuleId>,
    verified_by: String,
    /// The manifest URL the load asked for (for a pinned one, the one it was fetched with).
    manifest_url: Url,
    /// Module URLs resolve against this: where a manifest fetched now came from (after
    /// redirects); for others, `manifest_url`.
    module_base: Url,
    /// The freshness instant (see the module docs).
    fresh_at_ms: Option<u64>,
}

impl Candidate {
    fn verified(
        origin: Origin,
        raw: Vec<u8>,
        trusted_keys: &[TrustedKey],
        manifest_url: Url,
        fresh_at_ms: Option<u64>,
    ) -> Result<Candidate, ModuleError> {
        check_trusted_keys(trusted_keys)?;
        let manifest = Manifest::parse(&raw)?;
        let verified_by = verify_parsed(&raw, &manifest, trusted_keys)?.0;
        let order = manifest.load_order()?;
        Ok(Candidate {
            origin,
            sha256: hex::encode(Sha256::digest(&raw)),
            raw,
            manifest,
            order,
            verified_by,
            module_base: manifest_url.clone(),
            manifest_url,
            fresh_at_ms,
        })
    }

    /// Fresh enough to skip the network. A pinned manifest fetched from another URL than the
    /// one asked for is never fresh (it may still serve as a fallback).
    fn is_fresh(&self, request: &LoadRequest) -> bool {
        if self.origin == Origin::Pinned && self.manifest_url != request.manifest_url {
            return false;
        }
        // An instant later than now (the clock was ahead then, or is behind now) says
        // nothing of the manifest's age: not fresh.
        self.fresh_at_ms.is_some_and(|fresh_at| {
            fresh_at <= request.now_ms && request.now_ms - fresh_at < request.freshness_window_ms
        })
    }

    fn manifest_fresh_at(&self) -> u64 {
        self.manifest.fresh_at_epoch_ms().unwrap_or(0)
    }
}

/// Whether a load may download modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetworkUse {
    Allowed,
    Forbidden,
}

/// How one hash a load led ended.
type Led = (Wanted, Result<ModuleSource, ModuleError>);

/// Every module of a load in the store, where each came from, and whether the load's pins
/// were set with them (see [`Store::adopt_many_and_pin`]).
struct Obtained {
    sources: BTreeMap<String, ModuleSource>,
    pinned: bool,
}

/// A module hash this load needs and does not have yet.
struct Wanted {
    id: ModuleId,
    sha256: String,
    url: Url,
    /// The URLs of other module ids with the same sha256: the same bytes, so mirrors.
    mirrors: Vec<Url>,
    embedded: Option<PathBuf>,
}

/// How obtaining one hash ended, as published to loads waiting for it.
#[derive(Debug, Clone)]
enum FlightOutcome {
    Stored(ModuleSource),
    Failed {
        reason: String,
        is_network: bool,
    },
    /// The leader could not use the network; a waiter that may should try itself.
    NotAttempted,
}

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<FlightOutcome>>,
    done: Condvar,
}

type FlightMap = HashMap<String, Arc<Flight>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Completes the flights a load leads, even if the load returns early or panics.
struct LeadGuard<'a> {
    in_flight: &'a Mutex<FlightMap>,
    open: BTreeMap<String, Arc<Flight>>,
}

impl LeadGuard<'_> {
    fn complete(&mut self, sha256: &str, outcome: FlightOutcome) {
        if let Some(flight) = self.open.remove(sha256) {
            lock(self.in_flight).remove(sha256);
            *lock(&flight.outcome) = Some(outcome);
            flight.done.notify_all();
        }
    }
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        let open: Vec<String> = self.open.keys().cloned().collect();
        for sha256 in open {
            self.complete(
                &sha256,
                FlightOutcome::Failed {
                    reason: "the leading load stopped before finishing".to_owned(),
                    is_network: false,
                },
            );
        }
    }
}

/// Loads apps' modules into a [`Store`] through a [`Fetcher`], sharing downloads between
/// concurrent loads in this process. `Loader<F>` is `Sync` when `F` is, so threads can share
/// one behind an `Arc`.
pub struct Loader<F> {
    store: Mutex<Store>,
    fetcher: F,
    in_flight: Mutex<FlightMap>,
    /// How many times a load waited for another load's download (observability and tests).
    shared_waits: AtomicUsize,
}

impl<F: Fetcher> Loader<F> {
    pub fn new(store: Store, fetcher: F) -> Loader<F> {
        Loader {
            store: Mutex::new(store),
            fetcher,
            in_flight: Mutex::new(HashMap::new()),
            shared_waits: AtomicUsize::new(0),
        }
    }

    /// Runs `work` with the store locked (for pruning, listing, ...).
    pub fn with_store<R>(&self, work: impl FnOnce(&mut Store) -> R) -> R {
        work(&mut lock(&self.store))
    }

    pub fn fetcher(&self) -> &F {
        &self.fetcher
    }

    /// How many times a load waited for a download another load was doing.
    pub fn shared_waits(&self) -> usize {
        self.shared_waits.load(Ordering::SeqCst)
    }

    pub fn into_parts(self) -> (Store, F) {
        (
            self.store
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
            self.fetcher,
        )
    }

    /// Loads an app (see the module docs for tiers, fallback, rollback and pinning).
    pub fn load(&self, request: &LoadRequest) -> Result<LoadResult, ModuleError> {
        check_app_name(&request.app)?;
        let mut warnings = Vec::new();
        let (pinned, pinned_floor) = self.pinned_candidate(request, &mut warnings);
        let pinned_floor = pinned_floor.map(|ms| (ms, RollbackFloor::Pinned));
        let embedded = self.embedded_candidate(request, pinned_floor, &mut warnings);
        // The network's manifest may be no older than the release the app ships with either
        // (an empty cache pinned an older, replayed release over it).
        let network_floor = embedded
            .as_ref()
            .and_then(|e| e.manifest.rollback_floor_at(request.now_ms))
            .filter(|&ms| pinned_floor.is_none_or(|(pinned, _)| ms > pinned))
            .map(|ms| (ms, RollbackFloor::Embedded))
            .or(pinned_floor);

        let newest_local = match (&pinned, &embedded) {
            (Some(pinned), Some(embedded))
                if embedded.manifest_fresh_at() > pinned.manifest_fresh_at() =>
            {
                Some(embedded)
            }
            (Some(pinned), _) => Some(pinned),
            (None, embedded) => embedded.as_ref(),
        };
        if let Some(local) = newest_local.filter(|candidate| candidate.is_fresh(request)) {
            let source = match local.origin {
                Origin::Embedded => LoadSource::Embedded,
                _ => LoadSource::Store,
            };
            match self.materialize(local, request, NetworkUse::Allowed, &mut warnings) {
                Ok(got) => return self.finish(local, got, source, request, warnings),
                Err(error) => warnings.push(format!(
                    "fresh {} manifest could not be loaded, asking the network: {error}",
                    local.origin
                )),
            }
        }

        let network_error = match self.network_candidate(request, network_floor, &mut warnings) {
            Ok(candidate) => {
                match self.materialize(&candidate, request, NetworkUse::Allowed, &mut warnings) {
                    // Pinning the new release can fail too (a disk too full for the index):
                    // nothing of it is pinned then, and the pinned release may still load.
                    Ok(got) => match self.finish(
                        &candidate,
                        got,
                        LoadSource::Network,
                        request,
                        warnings.clone(),
                    ) {
                        Ok(result) => return Ok(result),
                        Err(error) => error,
                    },
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        if !network_error.allows_fallback() {
            return Err(network_error);
        }
        // Said by the result (`LoadSource::PinnedFallback`), or by the error if no local
        // manifest can stand in: not a warning of its own.
        tracing::info!(app = %request.app, error = %network_error, "the network's manifest cannot be used; trying local manifests");
        let reason = network_error.to_string();
        // The newer first, as for a fresh load (the pinned one on a tie): an app shipped with
        // a newer release than the one pinned fell back to the older one.
        let locals = match (&pinned, &embedded) {
            (Some(pinned), Some(embedded))
                if embedded.manifest_fresh_at() > pinned.manifest_fresh_at() =>
            {
                [Some(embedded), Some(pinned)]
            }
            (pinned, embedded) => [pinned.as_ref(), embedded.as_ref()],
        };
        for local in locals.into_iter().flatten() {
            match self.materialize(local, request, NetworkUse::Forbidden, &mut warnings) {
                Ok(got) => {
                    let source = match local.origin {
                        Origin::Embedded => LoadSource::EmbeddedFallback {
                            reason: reason.clone(),
                        },
                        _ => LoadSource::PinnedFallback {
                            reason: reason.clone(),
                        },
                    };
                    return self.finish(local, got, source, request, warnings);
                }
                Err(error) => warnings.push(format!(
                    "{} manifest cannot replace the network: {error}",
                    local.origin
                )),
            }
        }
        // The error goes back alone: what was tried instead, and why it did not do, goes to
        // the log (a caller sees no result to read warnings from).
        for warning in &warnings {
            tracing::warn!(app = %request.app, "{warning}");
        }
        Err(network_error)
    }

    /// The app's pinned manifest if it still verifies, and the rollback floor (the pinned
    /// manifest's `freshAtEpochMs`) whether or not it verifies.
    fn pinned_candidate(
        &self,
        request: &LoadRequest,
        warnings: &mut Vec<String>,
    ) -> (Option<Candidate>, Option<u64>) {
        // Recorded with the pins: the floor holds even when the pinned file does not.
        let recorded_floor = lock(&self.store)
            .rollback_floor(&request.app)
            .unwrap_or_else(|error| {
                warnings.push(format!("rollback floor unreadable: {error}"));
                None
            });
        let pinned = match lock(&self.store).pinned_manifest(&request.app) {
            Ok(Some(pinned)) => pinned,
            Ok(None) => return (None, recorded_floor),
            Err(error) => {
                warnings.push(format!("cached manifest skipped: {error}"));
                return (None, recorded_floor);
            }
        };
        // The recorded floor is the pinned manifest's `freshAtEpochMs` as it was believed when
        // pinned (see `Manifest::rollback_floor_at`); the file's own value counts only for a
        // store from before floors were recorded (it is unsigned: a changed file must not
        // raise the floor).
        // Either is believed no further past the clock of its load than a new floor is (see
        // `Manifest::rollback_floor_at`): a floor recorded unclamped, by an older haul, from
        // a far future that a mirror wrote, would refuse every later release.
        let believable = pinned
            .loaded_at_ms
            .saturating_add(crate::manifest::FUTURE_TOLERANCE_MS);
        let floor = recorded_floor
            .or_else(|| {
                Manifest::parse(&pinned.bytes)
                    .ok()
                    .map(|manifest| manifest.fresh_at_epoch_ms().unwrap_or(0))
            })
            .map(|floor| floor.min(believable));
        let manifest_url = Url::parse(&pinned.manifest_url).unwrap_or_else(|_| {
            warnings.push(format!(
                "cached manifest URL {:?} is not a URL; resolving modules against {}",
                pinned.manifest_url, request.manifest_url
            ));
            request.manifest_url.clone()
        });
        match Candidate::verified(
            Origin::Pinned,
            pinned.bytes,
            &request.trusted_keys,
            manifest_url,
            pinned.fresh_at_ms,
        ) {
            Ok(candidate) => (Some(candidate), floor),
            Err(error) => {
                tracing::warn!(app = %request.app, %error, "cached manifest skipped");
                warnings.push(format!("cached manifest skipped: {error}"));
                (None, floor)
            }
        }
    }

    fn embedded_candidate(
        &self,
        request: &LoadRequest,
        rollback_floor: Option<(u64, RollbackFloor)>,
        warnings: &mut Vec<String>,
    ) -> Option<Candidate> {
        let path = request
            .embedded_dir
            .as_ref()?
            .join(format!("{}.manifest.json", request.app));
        let raw = match read_capped(&path, MANIFEST_MAX_BYTES as u64) {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(reason) => {
                warnings.push(format!(
                    "embedded manifest {} skipped: {reason}",
                    path.display()
                ));
                return None;
            }
        };
        match Candidate::verified(
            Origin::Embedded,
            raw,
            &request.trusted_keys,
            request.manifest_url.clone(),
            None,
        ) {
            Ok(mut candidate) => {
                candidate.fresh_at_ms = candidate.manifest.fresh_at_epoch_ms();
                // An embedded manifest older than the pinned one is the normal state after an
                // update from the network: not worth a warning.
                if let Err(error) = check_rollback(&candidate, rollback_floor, request, warnings) {
                    tracing::debug!(%error, "embedded manifest is older than the pinned one");
                    return None;
                }
                Some(candidate)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "embedded manifest skipped");
                warnings.push(format!(
                    "embedded manifest {} skipped: {error}",
                    path.display()
                ));
                None
            }
        }
    }

    fn network_candidate(
        &self,
        request: &LoadRequest,
        rollback_floor: Option<(u64, RollbackFloor)>,
        warnings: &mut Vec<String>,
    ) -> Result<Candidate, ModuleError> {
        let fetched = self
            .fetcher
            .fetch_manifest(&request.manifest_url, MANIFEST_MAX_BYTES as u64)
            .map_err(|source| ModuleError::ManifestFetch {
                url: request.manifest_url.to_string(),
                source,
            })?;
        tracing::debug!(bytes = fetched.bytes.len(), from = %fetched.url, "manifest fetched");
        let html = fetched
            .bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'<');
        let from = fetched.url.clone();
        let mut candidate = Candidate::verified(
            Origin::Network,
            fetched.bytes,
            &request.trusted_keys,
            request.manifest_url.clone(),
            Some(request.now_ms),
        )
        .map_err(|error| match error {
            // Named with where it came from: a captive portal's page answered in place of
            // the manifest said only "expected value at line 1 column 1".
            ModuleError::ManifestSyntax(_) | ModuleError::ManifestNotObject => {
                let what = if html {
                    "an HTML page, not a manifest (a captive portal or a login page?)"
                } else {
                    "not a manifest"
                };
                ModuleError::ManifestFetch {
                    url: request.manifest_url.to_string(),
                    source: FetchError::content(format!("{from} sent {what}: {error}")),
                }
            }
            other => other,
        })?;
        candidate.module_base = fetched.url;
        check_rollback(&candidate, rollback_floor, request, warnings)?;
        Ok(candidate)
    }

    /// Makes every module of `candidate` present in the store; returns each hash's source.
    fn materialize(
        &self,
        candidate: &Candidate,
        request: &LoadRequest,
        network: NetworkUse,
        warnings: &mut Vec<String>,
    ) -> Result<Obtained, ModuleError> {
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in &candidate.order {
            let entry = candidate
                .manifest
                .modules
                .get(id.as_str())
                .ok_or_else(|| ModuleError::UnknownModule { id: id.to_string() })?;
            let url = candidate
                .manifest
                .module_url(id.as_str(), &candidate.module_base)?;
            if !seen.insert(entry.sha256.clone()) {
                // The same bytes under another id: its URL serves them too. Fetched once,
                // from either (the result no longer depends on which id comes first).
                if let Some(first) = wanted.iter_mut().find(|w| w.sha256 == entry.sha256) {
                    if first.url != url && !first.mirrors.contains(&url) {
                        first.mirrors.push(url);
                    }
                }
                continue;
            }
            let embedded = request
                .embedded_dir
                .as_ref()
                .map(|dir| dir.join(&entry.sha256))
                .filter(|path| path.is_file());
            wanted.push(Wanted {
                id: id.clone(),
                sha256: entry.sha256.clone(),
                url,
                mirrors: Vec::new(),
                embedded,
            });
        }
        // A manifest that is not stored yet goes into the store with the modules' batch (one
        // sync for all); `finish` then finds it there.
        let manifest = match candidate.origin {
            Origin::Network | Origin::Embedded => {
                Some((candidate.sha256.as_str(), candidate.raw.as_slice()))
            }
            Origin::Pinned => None,
        };
        // Its pins too, if nothing else can fail the load by then (see `Loader::finish`).
        let pins = manifest.map(|(sha256, _)| PinPlan {
            app: request.app.clone(),
            manifest_sha256: sha256.to_owned(),
            module_hashes: wanted.iter().map(|item| item.sha256.clone()).collect(),
            fresh_at_ms: candidate.fresh_at_ms,
            manifest_url: candidate.manifest_url.to_string(),
            rollback_floor_ms: candidate.manifest.rollback_floor_at(request.now_ms),
        });
        self.obtain(wanted, request, network, manifest, pins.as_ref(), warnings)
    }

    /// Gets every wanted hash into the store, leading or following in-process flights.
    fn obtain(
        &self,
        mut wanted: Vec<Wanted>,
        request: &LoadRequest,
        network: NetworkUse,
        mut manifest: Option<(&str, &[u8])>,
        mut pins: Option<&PinPlan>,
        warnings: &mut Vec<String>,
    ) -> Result<Obtained, ModuleError> {
        let mut sources = BTreeMap::new();
        let mut pinned = false;
        // A follower whose leader could not use the network tries again as leader; bounded.
        for _round in 0..3 {
            if wanted.is_empty() {
                break;
            }
            let mut leads = LeadGuard {
                in_flight: &self.in_flight,
                open: BTreeMap::new(),
            };
            let mut to_lead = Vec::new();
            let mut follows = Vec::new();
            {
                let mut in_flight = lock(&self.in_flight);
                let mut store = lock(&self.store);
                let mut stored = Vec::new();
                let hashes: Vec<&str> = wanted.iter().map(|item| item.sha256.as_str()).collect();
                let mut present = store.contains_many(&hashes)?;
                // A stored module is hashed again before it is handed out: one changed on disk
                // since is dropped, and fetched again like a missing one.
                let stored_hashes: Vec<&str> = hashes
                    .iter()
                    .zip(&present)
                    .filter(|(_, present)| **present)
                    .map(|(sha256, _)| *sha256)
                    .collect();
                if !stored_hashes.is_empty() {
                    let mut kept = store.recheck_many(&stored_hashes)?.into_iter();
                    for (sha256, present) in hashes.iter().zip(present.iter_mut()) {
                        if *present && !kept.next().unwrap_or(false) {
                            *present = false;
                            warnings.push(format!(
                                "stored module {sha256} no longer matched its hash, or could not be read, and was removed"
                            ));
                        }
                    }
                }
                for (item, present) in wanted.drain(..).zip(present) {
                    if let Some(flight) = in_flight.get(&item.sha256) {
                        follows.push((item, Arc::clone(flight)));
                    } else if present {
                        stored.push(item.sha256);
                    } else {
                        let flight = Arc::new(Flight::default());
                        in_flight.insert(item.sha256.clone(), Arc::clone(&flight));
                        leads.open.insert(item.sha256.clone(), flight);
                        to_lead.push(item);
                    }
                }
                let stored_hashes: Vec<&str> = stored.iter().map(String::as_str).collect();
                if let Err(error) = store.touch_many(&stored_hashes, request.now_ms) {
                    // Only the order of a later prune depends on it (see `Loader::finish`).
                    warnings.push(format!("last-used times not recorded: {error}"));
                }
                for sha256 in stored {
                    sources.insert(sha256, ModuleSource::Store);
                }
            }

            let mut errors = Vec::new();
            // The pins may go with the batch only when no other load's download can still
            // fail this one.
            let pins = pins.take().filter(|_| follows.is_empty());
            let (led, pinned_here) =
                self.lead(to_lead, request, network, manifest.take(), pins, warnings);
            pinned |= pinned_here;
            for (item, outcome) in led {
                match &outcome {
                    Ok(source) => {
                        sources.insert(item.sha256.clone(), *source);
                        leads.complete(&item.sha256, FlightOutcome::Stored(*source));
                    }
                    Err(error) => {
                        let published = match error {
                            ModuleError::ModuleUnavailable { .. } => FlightOutcome::NotAttempted,
                            other => FlightOutcome::Failed {
                                reason: other.to_string(),
                                is_network: other.is_network(),
                            },
                        };
                        leads.complete(&item.sha256, published);
                    }
                }
                if let Err(error) = outcome {
                    errors.push(error);
                }
            }
            drop(leads);

            for (item, flight) in follows {
                self.shared_waits.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(sha256 = %item.sha256, "waiting for another load's download");
                let outcome = {
                    let mut outcome = lock(&flight.outcome);
                    while outcome.is_none() {
                        outcome = flight
                            .done
                            .wait(outcome)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    outcome.clone().unwrap_or(FlightOutcome::NotAttempted)
                };
                match outcome {
                    FlightOutcome::Stored(source) => {
                        sources.insert(item.sha256.clone(), source);
                    }
                    FlightOutcome::Failed { reason, is_network } => {
                        errors.push(ModuleError::SharedDownloadFailed {
                            id: item.id.to_string(),
                            sha256: item.sha256.clone(),
                            reason,
                            is_network,
                        })
                    }
                    FlightOutcome::NotAttempted => wanted.push(item),
                }
            }
            if !errors.is_empty() {
                // A cancellation goes first (a Ctrl-C must not end in a fallback because
                // another module failed before it); then a content failure, which must not be
                // hidden behind a network one: it is the one reported (the load's error, or
                // its fallback's reason).
                let position = errors
                    .iter()
                    .position(|error| !error.allows_fallback())
                    .or_else(|| errors.iter().position(|error| !error.is_network()))
                    .unwrap_or(0);
                return Err(errors.swap_remove(position));
            }
        }
        if let Some(item) = wanted.into_iter().next() {
            return Err(ModuleError::ModuleUnavailable {
                id: item.id.to_string(),
                sha256: item.sha256,
            });
        }
        Ok(Obtained { sources, pinned })
    }

    /// Obtains hashes this load leads: embedded copy first, then one batch to the fetcher.
    fn lead(
        &self,
        items: Vec<Wanted>,
        request: &LoadRequest,
        network: NetworkUse,
        manifest: Option<(&str, &[u8])>,
        pins: Option<&PinPlan>,
        warnings: &mut Vec<String>,
    ) -> (Vec<Led>, bool) {
        let mut done = Vec::new();
        let mut to_fetch = Vec::new();
        for item in items {
            if let Some(path) = &item.embedded {
                match self.copy_embedded(&item, path, request) {
                    Ok(()) => {
                        done.push((item, Ok(ModuleSource::Embedded)));
                        continue;
                    }
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "embedded module skipped");
                        warnings.push(format!(
                            "embedded module file {} skipped: {reason}",
                            path.display()
                        ));
                    }
                }
            }
            if network == NetworkUse::Forbidden {
                let error = ModuleError::ModuleUnavailable {
                    id: item.id.to_string(),
                    sha256: item.sha256.clone(),
                };
                done.push((item, Err(error)));
                continue;
            }
            to_fetch.push(item);
        }
        if to_fetch.is_empty() {
            return (done, false);
        }

        // One index transaction to start every write and one to finish them: per-file
        // transactions (each an fsync of the index) dominate a load of many small modules.
        // The first one (the DIRTY rows) runs on a thread of its own while the modules are
        // fetched; nothing is committed before it ended.
        let mut pending: Vec<(Wanted, PendingFile)> = Vec::new();
        // The manifest's write, placed on the recording thread once its DIRTY row is there
        // (a file creation and its bytes off the path to the first module request).
        let manifest_write: Mutex<Option<(PendingFile, &[u8])>> = Mutex::new(None);
        let mut writes: Vec<(String, FileKind)> = Vec::new();
        let ahead = {
            let mut store = lock(&self.store);
            let mut planned_writes: Vec<(&str, FileKind)> = to_fetch
                .iter()
                .map(|item| (item.sha256.as_str(), FileKind::Module))
                .collect();
            if let Some((sha256, _)) = manifest {
                planned_writes.push((sha256, FileKind::Manifest));
            }
            let mut planned = store.plan_writes(&planned_writes);
            if let Some((sha256, raw)) = manifest {
                if let Some(Ok(file)) = planned.pop() {
                    // First in `writes` (and in what recording them answers).
                    writes.push((sha256.to_owned(), FileKind::Manifest));
                    *lock(&manifest_write) = Some((file, raw));
                }
            }
            for (item, planned) in to_fetch.into_iter().zip(planned) {
                match planned {
                    Ok(file) => {
                        writes.push((item.sha256.clone(), FileKind::Module));
                        pending.push((item, file));
                    }
                    Err(source) => {
                        let error = ModuleError::ModuleCommit {
                            id: item.id.to_string(),
                            source,
                        };
                        done.push((item, Err(error)));
                    }
                }
            }
            // The batch's final sync is then mostly done by the time the last module arrives.
            (!pending.is_empty())
                .then(|| store.sync_ahead(pending.len()))
                .flatten()
        };
        let jobs: Vec<ModuleFetch> = pending
            .iter()
            .map(|(item, file)| ModuleFetch {
                url: item.url.clone(),
                mirrors: item.mirrors.clone(),
                sha256: item.sha256.clone(),
                max_bytes: request.module_max_bytes,
                dest: file.temp_path().to_path_buf(),
                store_path: file.store_path().to_path_buf(),
            })
            .collect();
        let job_count = jobs.len();
        if job_count > 0 {
            tracing::debug!(app = %request.app, modules = job_count, "fetching modules");
        }
        let write_refs: Vec<(&str, FileKind)> = writes
            .iter()
            .map(|(sha256, kind)| (sha256.as_str(), *kind))
            .collect();
        let manifest_planned = lock(&manifest_write).is_some();
        let (results, (recorded, manifest_file)) = std::thread::scope(|scope| {
            let (store, write_refs, manifest_write) = (&self.store, &write_refs, &manifest_write);
            let record = move || {
                let mut store = lock(store);
                let recorded = store.record_writes(write_refs);
                // The manifest goes to its store path once its row is DIRTY; a row that says
                // it is stored already (or could not be written) leaves it as it is.
                let placed = lock(manifest_write).take().and_then(|(file, raw)| {
                    let row_recorded =
                        matches!(&recorded, Ok(rows) if matches!(rows.first(), Some(Ok(_))));
                    if row_recorded {
                        return place_manifest(&mut store, file, raw);
                    }
                    if let Err(error) = store.abort(file) {
                        tracing::warn!(%error, "could not clean up the manifest's write");
                    }
                    None
                });
                (recorded, placed)
            };
            let recording = std::thread::Builder::new()
                .name("haul-store-dirty".into())
                .spawn_scoped(scope, record);
            let results = match job_count {
                0 => Vec::new(),
                _ => self.fetcher.fetch_modules(jobs),
            };
            let recorded = match recording {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread: recorded here, after the fetch.
                Err(_) => record(),
            };
            (results, recorded)
        });
        if let Some(ahead) = ahead {
            let rounds = ahead.finish();
            tracing::debug!(rounds, "synced ahead of the batch");
        }
        if job_count > 0 {
            tracing::debug!(app = %request.app, modules = job_count, "fetched modules");
        }
        let mut results = results.into_iter();
        // Per write, in `writes` order (the manifest first when it is there): whether its
        // DIRTY row was recorded.
        let mut recorded: Vec<Result<(), StoreError>> = match recorded {
            Ok(rows) => rows
                .into_iter()
                .map(|row| row.map(|_| ()))
                .collect::<Vec<_>>(),
            Err(source) => {
                let reason = source.to_string();
                let mut source = Some(source);
                writes
                    .iter()
                    .map(|_| {
                        Err(source.take().unwrap_or_else(|| StoreError::Io {
                            op: "start writing",
                            path: lock(&self.store).dir().to_path_buf(),
                            source: std::io::Error::other(reason.clone()),
                        }))
                    })
                    .collect()
            }
        }
        .into_iter()
        .rev()
        .collect();
        let mut store = lock(&self.store);
        if manifest_planned {
            // Settled on the recording thread (`manifest_file`).
            recorded.pop();
        }
        let mut to_commit: Vec<(Wanted, PendingFile)> = Vec::new();
        let mut to_adopt: Vec<(Wanted, PendingFile)> = Vec::new();
        for (index, (item, file)) in pending.into_iter().enumerate() {
            let result = results.next().unwrap_or_else(|| {
                Err(FetchError::content(format!(
                    "the fetcher returned no result for job {index} of {job_count}"
                )))
            });
            match recorded.pop() {
                Some(Ok(())) => {}
                Some(Err(StoreError::AlreadyReady { .. })) => {
                    // Stored meanwhile (by another process): what it fetched is the same.
                    if let Err(error) = store.abort(file) {
                        tracing::warn!(%error, "could not clean up a module's write");
                    }
                    done.push((item, Ok(ModuleSource::Store)));
                    continue;
                }
                other => {
                    let source = match other {
                        Some(Err(source)) => source,
                        _ => StoreError::Io {
                            op: "start writing",
                            path: store.dir().to_path_buf(),
                            source: std::io::Error::other("no DIRTY row recorded"),
                        },
                    };
                    // Without a row the file is not the store's: removed (or, if that
                    // fails, by the next open, as an orphan).
                    if let Err(error) = store.abort(file) {
                        tracing::warn!(%error, "could not clean up a module's write");
                    }
                    let error = ModuleError::ModuleCommit {
                        id: item.id.to_string(),
                        source,
                    };
                    done.push((item, Err(error)));
                    continue;
                }
            }
            match result {
                Ok(delivery) => {
                    match check_fetched_size(&mut store, &item, file, delivery, request) {
                        Ok(file) => match delivery {
                            Delivery::Committed { size } => {
                                to_adopt.push((item, file.written(size)))
                            }
                            Delivery::Temp => to_commit.push((item, file)),
                        },
                        Err(error) => done.push((item, Err(error))),
                    }
                }
                Err(source) => {
                    if let Err(error) = store.abort(file) {
                        tracing::warn!(%error, "could not clean up a failed download");
                    }
                    let error = ModuleError::ModuleFetch {
                        id: item.id.to_string(),
                        url: item.url.to_string(),
                        source,
                    };
                    done.push((item, Err(error)));
                }
            }
        }
        let (items, files): (Vec<Wanted>, Vec<PendingFile>) = to_commit.into_iter().unzip();
        let mut committed = store.commit_many(files, request.now_ms);
        let (adopted_items, adopted): (Vec<Wanted>, Vec<PendingFile>) =
            to_adopt.into_iter().unzip();
        let failed = done.iter().any(|(_, outcome)| outcome.is_err())
            || committed.iter().any(Result::is_err);
        let (adopted, pinned) = adopt_with_manifest(
            &mut store,
            adopted,
            manifest_file,
            failed,
            pins.filter(|_| !failed),
            request.now_ms,
        );
        committed.extend(adopted);
        for (item, result) in items.into_iter().chain(adopted_items).zip(committed) {
            let outcome =
                result
                    .map(|_| ModuleSource::Network)
                    .map_err(|source| ModuleError::ModuleCommit {
                        id: item.id.to_string(),
                        source,
                    });
            done.push((item, outcome));
        }
        (done, pinned)
    }

    /// Copies an embedded module into the store; the store's commit re-checks the hash.
    fn copy_embedded(
        &self,
        item: &Wanted,
        path: &Path,
        request: &LoadRequest,
    ) -> Result<(), String> {
        let max = request.module_max_bytes;
        let metadata = std::fs::metadata(path).map_err(|error| error.to_string())?;
        // A regular file only, and no more than the limit of it (see `read_capped`).
        let (source, _) = open_regular(&metadata, path, max)?;
        let mut store = lock(&self.store);
        let file = store
            .begin_write(&item.sha256, FileKind::Module)
            .map_err(|error| error.to_string())?;
        let copied = std::fs::File::create(file.temp_path()).and_then(|mut temp| {
            std::io::copy(&mut std::io::Read::take(source, max + 1), &mut temp)
        });
        let failed = match copied {
            Ok(n) if n > max => Some(format!("more than the {max}-byte limit")),
            Ok(_) => None,
            Err(error) => Some(format!("copy failed: {error}")),
        };
        if let Some(reason) = failed {
            let _ = store.abort(file);
            return Err(reason);
        }
        store
            .commit(file, request.now_ms)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// Builds the result and, for a manifest that is not the pinned one, stores and pins it.
    fn finish(
        &self,
        candidate: &Candidate,
        obtained: Obtained,
        manifest_source: LoadSource,
        request: &LoadRequest,
        mut warnings: Vec<String>,
    ) -> Result<LoadResult, ModuleError> {
        let Obtained { sources, pinned } = obtained;
        let mut store = lock(&self.store);
        let mut modules = Vec::with_capacity(candidate.order.len());
        let mut module_hashes = Vec::new();
        let mut seen_hashes = std::collections::BTreeSet::new();
        for id in &candidate.order {
            let entry = candidate
                .manifest
                .modules
                .get(id.as_str())
                .ok_or_else(|| ModuleError::UnknownModule { id: id.to_string() })?;
            if seen_hashes.insert(entry.sha256.as_str()) {
                module_hashes.push(entry.sha256.clone());
            }
            modules.push(LoadedModule {
                id: id.clone(),
                sha256: entry.sha256.clone(),
                path: store.path(&entry.sha256)?,
                source: sources
                    .get(&entry.sha256)
                    .copied()
                    .unwrap_or(ModuleSource::Store),
            });
        }
        match candidate.origin {
            // Best effort: the last-used time orders a later prune among unpinned files, and
            // a disk too full for the index to take it (the pinned release is all stored)
            // failed the load, the fallback included.
            Origin::Pinned => {
                if let Err(error) = store.touch(&candidate.sha256, request.now_ms) {
                    warnings.push(format!("last-used time not recorded: {error}"));
                }
            }
            // Stored and pinned with the modules' batch, in its transaction.
            Origin::Embedded | Origin::Network if pinned => {}
            Origin::Embedded | Origin::Network => {
                store.insert_manifest_and_pin(
                    &request.app,
                    &candidate.sha256,
                    &candidate.raw,
                    &module_hashes,
                    candidate.fresh_at_ms,
                    candidate.manifest_url.as_str(),
                    request.now_ms,
                )?;
            }
        }
        tracing::info!(
            app = %request.app,
            source = ?manifest_source,
            modules = modules.len(),
            "app loaded"
        );
        Ok(LoadResult {
            manifest_source,
            manifest_sha256: candidate.sha256.clone(),
            verified_by: candidate.verified_by.clone(),
            manifest_url: candidate.manifest_url.to_string(),
            modules,
            warnings,
            version: candidate.manifest.version.clone(),
            main_module_id: candidate.manifest.main_module_id.clone(),
            main_function: candidate.manifest.main_function.clone(),
        })
    }
}

/// Puts a manifest's bytes at `file`'s store path (written beside it, renamed in place) for
/// the batch's sync and READY rows; `None` (and the write abandoned) if that fails, and the
/// manifest is then stored after the load as before.
fn place_manifest(store: &mut Store, file: PendingFile, raw: &[u8]) -> Option<PendingFile> {
    let placed = std::fs::write(file.temp_path(), raw)
        .and_then(|()| std::fs::rename(file.temp_path(), file.store_path()));
    match placed {
        Ok(()) => Some(file.written(raw.len() as u64)),
        Err(error) => {
            tracing::debug!(%error, "manifest not written with the batch");
            if let Err(error) = store.abort(file) {
                tracing::warn!(%error, "could not clean up the manifest's write");
            }
            None
        }
    }
}

/// Records `files` (written at their store paths) and the load's `manifest` together: one
/// sync and one READY transaction for all; the results of `files`, in order. A load that
/// `failed` leaves the store's files as they were, so its manifest is abandoned instead (if
/// the batch itself then fails to record a module, the manifest stays stored, unpinned, until
/// a prune). A manifest the batch could not record is stored by `finish` on its own.
fn adopt_with_manifest(
    store: &mut Store,
    mut files: Vec<PendingFile>,
    manifest: Option<PendingFile>,
    failed: bool,
    pins: Option<&PinPlan>,
    now_ms: u64,
) -> (Vec<Result<crate::store::FileEntry, StoreError>>, bool) {
    let manifest = match manifest {
        Some(file) if failed => {
            if let Err(error) = store.abort(file) {
                tracing::warn!(%error, "could not clean up the manifest's write");
            }
            None
        }
        other => other,
    };
    let with_manifest = manifest.is_some();
    files.extend(manifest);
    if files.is_empty() {
        return (Vec::new(), false);
    }
    let (mut results, pinned) = store.adopt_many_and_pin(files, now_ms, pins);
    if with_manifest {
        if let Some(Err(error)) = results.pop() {
            tracing::debug!(%error, "manifest not stored with the batch");
        }
    }
    (results, pinned)
}

/// Abandons a fetched module larger than the request allows (the engine should have stopped
/// it already; this does not trust it to).
fn check_fetched_size(
    store: &mut Store,
    item: &Wanted,
    file: PendingFile,
    delivery: Delivery,
    request: &LoadRequest,
) -> Result<PendingFile, ModuleError> {
    let size = match delivery {
        Delivery::Temp => std::fs::metadata(file.temp_path())
            .map(|metadata| metadata.len())
            .unwrap_or(0),
        Delivery::Committed { size } => size,
    };
    if size > request.module_max_bytes {
        store.abort(file)?;
        return Err(ModuleError::ModuleTooLarge {
            id: item.id.to_string(),
            size,
            max: request.module_max_bytes,
        });
    }
    Ok(file)
}

/// Whether `app` can name an app: a plain name, not a path (the loader refuses others with
/// [`ModuleError::InvalidAppName`] before anything else).
pub fn check_app_name(app: &str) -> Result<(), ModuleError> {
    let unusable = app.is_empty()
        || app == "."
        || app == ".."
        || app.contains(['/', '\\', '\0'])
        || app.contains("..");
    if unusable {
        return Err(ModuleError::InvalidAppName {
            app: app.to_owned(),
        });
    }
    Ok(())
}

fn check_rollback(
    candidate: &Candidate,
    rollback_floor: Option<(u64, RollbackFloor)>,
    request: &LoadRequest,
    warnings: &mut Vec<String>,
) -> Result<(), ModuleError> {
    let Some((floor, floor_source)) = rollback_floor else {
        return Ok(());
    };
    let offered = candidate.manifest.fresh_at_epoch_ms();
    if offered.unwrap_or(0) >= floor {
        return Ok(());
    }
    if request.allow_rollback {
        warnings.push(format!(
            "rollback allowed: {} manifest {} is older than {floor_source} freshAtEpochMs \
             {floor}",
            candidate.origin,
            crate::error::offered_freshness(offered)
        ));
        return Ok(());
    }
    Err(ModuleError::Rollback {
        app: request.app.clone(),
        pinned_fresh_at_ms: floor,
        offered_fresh_at_ms: offered,
        floor: floor_source,
    })
}

/// The file's bytes, `None` if it does not exist, an error if it is larger than `max`.
///
/// Only a regular file is read (a device such as `/dev/zero` reports no length and never
/// ends; a FIFO would block the open), and never more than `max + 1` bytes of it, so a file
/// that grows after its length was looked at is refused too.
fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let (file, len) = open_regular(&metadata, path, max)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("more than the {max}-byte limit"));
    }
    Ok(Some(bytes))
}

/// Open `path` (whose `metadata` was looked at) for reading if it is a regular file of at
/// most `max` bytes; its length.
fn open_regular(
    metadata: &std::fs::Metadata,
    path: &Path,
    max: u64,
) -> Result<(std::fs::File, u64), String> {
    let not_a_file = || "not a regular file".to_string();
    if !metadata.is_file() {
        return Err(not_a_file());
    }
    if metadata.len() > max {
        return Err(format!(
            "{} bytes, more than the {max}-byte limit",
            metadata.len()
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Replaced by a FIFO since the look: the open must not wait for a writer.
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path).map_err(|error| error.to_string())?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(not_a_file());
    }
    Ok((file, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Pin;
    use crate::test_support::{ed25519_signer, manifest_json, sha256_hex, ModuleSpec, Signer};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// An in-memory engine: serves registered bytes by URL, records every call, and can fail
    /// or hold back chosen downloads. It does not verify hashes, so tampering reaches the
    /// loader's own check.
    #[derive(Default)]
    struct FakeFetcher {
        manifests: Mutex<HashMap<String, Result<Vec<u8>, FetchError>>>,
        /// Manifest URLs that redirect, and where to.
        redirects: Mutex<HashMap<String, Url>>,
        modules: Mutex<HashMap<String, Vec<u8>>>,
        module_failure: Mutex<Option<FetchError>>,
        /// Failures of single module URLs.
        failing_modules: Mutex<HashMap<String, FetchError>>,
        manifest_calls: AtomicUsize,
        fetched_hashes: Mutex<Vec<String>>,
        /// Jobs for this hash block until `gate_open`.
        gated_hash: Mutex<Option<String>>,
        gate_entered: AtomicBool,
        gate_open: Mutex<bool>,
        gate_changed: Condvar,
        /// Write modules straight to their store path and answer [`Delivery::Committed`]
        /// (with the size written).
        in_place: AtomicBool,
        /// Run once at the next manifest fetch / module batch (before serving it).
        on_manifest: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        on_modules: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl FakeFetcher {
        fn serve_manifest(&self, url: &Url, raw: &[u8]) {
            lock(&self.manifests).insert(url.to_string(), Ok(raw.to_vec()));
        }

        fn fail_manifest(&self, url: &Url, error: FetchError) {
            lock(&self.manifests).insert(url.to_string(), Err(error));
        }

        fn serve_module(&self, url: Url, bytes: &[u8]) {
            lock(&self.modules).insert(url.to_string(), bytes.to_vec());
        }

        fn manifest_calls(&self) -> usize {
            self.manifest_calls.load(Ordering::SeqCst)
        }

        fn fetched(&self) -> Vec<String> {
            lock(&self.fetched_hashes).clone()
        }

        fn open_gate(&self) {
            *lock(&self.gate_open) = true;
            self.gate_changed.notify_all();
        }
    }

    impl Fetcher for FakeFetcher {
        fn fetch_manifest(&self, url: &Url, max_bytes: u64) -> Result<FetchedManifest, FetchError> {
            self.manifest_calls.fetch_add(1, Ordering::SeqCst);
            if let Some(hook) = lock(&self.on_manifest).take() {
                hook();
            }
            let url = lock(&self.redirects)
                .get(url.as_str())
                .cloned()
                .unwrap_or_else(|| url.clone());
            let served = lock(&self.manifests)
                .get(url.as_str())
                .cloned()
                .unwrap_or_else(|| Err(FetchError::content(format!("404 for {url}"))))?;
            assert!(served.len() as u64 <= max_bytes);
            Ok(FetchedManifest { bytes: served, url })
        }

        fn fetch_modules(&self, jobs: Vec<ModuleFetch>) -> Vec<Result<Delivery, FetchError>> {
            if let Some(hook) = lock(&self.on_modules).take() {
                hook();
            }
            let gated = lock(&self.gated_hash).clone();
            if jobs.iter().any(|job| Some(&job.sha256) == gated.as_ref()) {
                self.gate_entered.store(true, Ordering::SeqCst);
                let mut open = lock(&self.gate_open);
                while !*open {
                    open = self.gate_changed.wait(open).unwrap();
                }
            }
            jobs.into_iter()
                .map(|job| {
                    lock(&self.fetched_hashes).push(job.sha256.clone());
                    if let Some(error) = lock(&self.module_failure).clone() {
                        return Err(error);
                    }
                    // The first of its URLs that serves, as the engine fails over.
                    let serve = |url: &Url| {
                        if let Some(error) = lock(&self.failing_modules).get(url.as_str()) {
                            return Err(error.clone());
                        }
                        lock(&self.modules)
                            .get(url.as_str())
                            .cloned()
                            .ok_or_else(|| FetchError::content(format!("404 for {url}")))
                    };
                    let bytes = job.mirrors.iter().fold(serve(&job.url), |got, mirror| {
                        got.or_else(|_| serve(mirror))
                    })?;
                    let (path, delivery) = if self.in_place.load(Ordering::SeqCst) {
                        let size = bytes.len() as u64;
                        (&job.store_path, Delivery::Committed { size })
                    } else {
                        (&job.dest, Delivery::Temp)
                    };
                    std::fs::write(path, bytes)
                        .map(|()| delivery)
                        .map_err(|error| FetchError::content(error.to_string()))
                })
                .collect()
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        embedded_dir: PathBuf,
        loader: Loader<Arc<FakeFetcher>>,
        fetcher: Arc<FakeFetcher>,
        signer: Signer,
    }

    fn world() -> World {
        let dir = tempfile::TempDir::new().unwrap();
        let (mut store, _) = Store::open(&dir.path().join("store"), 0).unwrap();
        store.decide_syncs_as_on_a_quiet_machine();
        let embedded_dir = dir.path().join("embedded");
        std::fs::create_dir_all(&embedded_dir).unwrap();
        let fetcher = Arc::new(FakeFetcher::default());
        World {
            loader: Loader::new(store, Arc::clone(&fetcher)),
            fetcher,
            embedded_dir,
            _dir: dir,
            signer: ed25519_signer("release", 42),
        }
    }

    fn manifest_url(app: &str) -> Url {
        Url::parse(&format!("https://apps.test/{app}/manifest.json")).unwrap()
    }

    impl World {
        fn request(&self, app: &str, now_ms: u64) -> LoadRequest {
            LoadRequest {
                app: app.to_owned(),
                manifest_url: manifest_url(app),
                trusted_keys: vec![self.signer.trusted()],
                embedded_dir: None,
                allow_rollback: false,
                freshness_window_ms: 0,
                now_ms,
                module_max_bytes: 1 << 20,
            }
        }

        /// Serves a signed manifest for `app` and its modules; returns the manifest bytes.
        fn publish(&self, app: &str, modules: &[ModuleSpec], fresh_at: u64) -> Vec<u8> {
            let raw = manifest_json(modules, Some(fresh_at), &[&self.signer]);
            self.fetcher.serve_manifest(&manifest_url(app), &raw);
            let manifest = Manifest::parse(&raw).unwrap();
            for module in modules {
                let url = manifest.module_url(&module.id, &manifest_url(app)).unwrap();
                self.fetcher.serve_module(url, &module.bytes);
            }
            raw
        }

        fn pins(&self) -> Vec<Pin> {
            self.loader.with_store(|store| store.pins().unwrap())
        }

        fn stored(&self, sha256: &str) -> bool {
            self.loader
                .with_store(|store| store.contains(sha256).unwrap())
        }

        /// Where the store keeps the file of `sha256`.
        fn store_path(&self, sha256: &str) -> std::path::PathBuf {
            self.loader.with_store(|store| store.path(sha256).unwrap())
        }
    }

    /// A world whose app "news" (kotlin and news.js v1, freshAtEpochMs 100) was loaded
    /// once, at 1,000: v1 is pinned.
    fn news_v1_pinned() -> World {
        let world = world();
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        world
    }

    /// The error of loading "news" at `now_ms`, which must fail.
    fn load_error(world: &World, now_ms: u64) -> ModuleError {
        world
            .loader
            .load(&world.request("news", now_ms))
            .unwrap_err()
    }

    fn kotlin() -> ModuleSpec {
        ModuleSpec::new("./kotlin_kotlin.js", b"kotlin stdlib bytecode", &[])
    }

    fn app_module(name: &str, version: &str) -> ModuleSpec {
        ModuleSpec::new(
            &format!("./{name}.js"),
            format!("{name} code {version}").as_bytes(),
            &["./kotlin_kotlin.js"],
        )
    }

    fn sources(result: &LoadResult) -> Vec<(String, ModuleSource)> {
        result
            .modules
            .iter()
            .map(|module| (module.id.to_string(), module.source))
            .collect()
    }

    #[test]
    fn network_load_verifies_orders_stores_and_pins_the_modules() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        let raw = world.publish("news", &modules, 100);
        let result = world.loader.load(&world.request("news", 1_000)).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(result.verified_by, "release");
        assert_eq!(result.main_module_id, Some(ModuleId::from("./news.js")));
        assert_eq!(result.main_function.as_deref(), Some("com.example.main"));
        assert_eq!(result.version.as_deref(), Some("test-1"));
        assert_eq!(
            sources(&result),
            vec![
                ("./kotlin_kotlin.js".to_owned(), ModuleSource::Network),
                ("./news.js".to_owned(), ModuleSource::Network)
            ]
        );
        for (loaded, spec) in result.modules.iter().zip(&modules) {
            assert_eq!(std::fs::read(&loaded.path).unwrap(), spec.bytes);
        }
        let mut expected: Vec<Pin> = [sha256_hex(&raw), modules[0].sha256(), modules[1].sha256()]
            .into_iter()
            .map(|sha256| Pin {
                app: "news".into(),
                sha256,
            })
            .collect();
        expected.sort();
        assert_eq!(world.pins(), expected);
    }

    #[test]
    fn a_module_another_process_stores_during_the_fetch_is_taken_from_the_store() {
        // Another process (its own connection to the index) holds the index's write lock from
        // before this load records its DIRTY rows, and stores the shared module while this
        // load fetches it: the load's DIRTY row for it is refused (READY already), its own
        // copy is abandoned without touching the stored file, and the module counts as
        // coming from the store.
        let world = world();
        world.fetcher.in_place.store(true, Ordering::SeqCst);
        let modules = [kotlin(), app_module("news", "v1")];
        world.publish("news", &modules, 100);
        let (store_dir, files_dir) = world
            .loader
            .with_store(|store| (store.dir().to_path_buf(), store.dir().join("files")));
        let other = Arc::new(Mutex::new(Some(
            rusqlite::Connection::open(store_dir.join("index.sqlite")).unwrap(),
        )));
        let holder = Arc::clone(&other);
        *lock(&world.fetcher.on_manifest) = Some(Box::new(move || {
            let guard = lock(&holder);
            let connection = guard.as_ref().unwrap();
            connection.busy_timeout(Duration::from_secs(10)).unwrap();
            connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        }));
        let kotlin = modules[0].clone();
        let stored_by_other = kotlin.sha256();
        let (stored, files) = (stored_by_other.clone(), files_dir.clone());
        *lock(&world.fetcher.on_modules) = Some(Box::new(move || {
            std::fs::write(files.join(&stored), &kotlin.bytes).unwrap();
            let connection = lock(&other).take().unwrap();
            connection
                .execute(
                    "INSERT INTO files (sha256, state, size, last_used_ms, kind)
                     VALUES (?1, 'READY', ?2, 1, 'MODULE')",
                    rusqlite::params![stored, kotlin.bytes.len() as i64],
                )
                .unwrap();
            connection.execute_batch("COMMIT").unwrap();
        }));
        let result = world.loader.load(&world.request("news", 1_000)).unwrap();
        assert_eq!(
            sources(&result),
            vec![
                ("./kotlin_kotlin.js".to_owned(), ModuleSource::Store),
                ("./news.js".to_owned(), ModuleSource::Network)
            ]
        );
        for (loaded, spec) in result.modules.iter().zip(&modules) {
            assert_eq!(std::fs::read(&loaded.path).unwrap(), spec.bytes);
        }
        assert!(world.pins().iter().any(|pin| pin.sha256 == stored_by_other));
        let mut names: Vec<String> = std::fs::read_dir(&files_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            3,
            "the manifest and two modules, nothing else: {names:?}"
        );
        let report = world.loader.with_store(|store| store.verify_all().unwrap());
        assert_eq!(
            (
                report.checked,
                report.corrupt_removed.len(),
                report.missing_forgotten.len()
            ),
            (3, 0, 0)
        );
    }

    #[test]
    fn two_apps_sharing_a_module_download_and_store_it_once() {
        let world = world();
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.publish("mail", &[kotlin(), app_module("mail", "v1")], 100);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        let mail = world.loader.load(&world.request("mail", 1_001)).unwrap();
        assert_eq!(mail.modules[0].source, ModuleSource::Store);
        assert_eq!(mail.modules[1].source, ModuleSource::Network);
        let kotlin_hash = kotlin().sha256();
        let fetched = world.fetcher.fetched();
        assert_eq!(
            fetched.iter().filter(|hash| **hash == kotlin_hash).count(),
            1
        );
        let files = world.loader.with_store(|store| store.list().unwrap());
        // two manifests, kotlin once, one module per app
        assert_eq!(files.len(), 5);
        let pinned_by: Vec<String> = world
            .pins()
            .into_iter()
            .filter(|pin| pin.sha256 == kotlin_hash)
            .map(|pin| pin.app)
            .collect();
        assert_eq!(pinned_by, vec!["mail".to_owned(), "news".to_owned()]);
    }

    #[test]
    fn a_stored_module_changed_on_disk_is_hashed_again_removed_and_fetched_again() {
        let world = news_v1_pinned();
        let kotlin_hash = kotlin().sha256();
        let path = world.store_path(&kotlin_hash);
        // Same size, other bytes: only a hash tells.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        world.publish("mail", &[kotlin(), app_module("mail", "v1")], 100);
        let mail = world.loader.load(&world.request("mail", 2_000)).unwrap();
        assert_eq!(mail.modules[0].sha256, kotlin_hash);
        assert_eq!(
            mail.modules[0].source,
            ModuleSource::Network,
            "not the changed copy"
        );
        assert_eq!(
            sha256_hex(&std::fs::read(&mail.modules[0].path).unwrap()),
            kotlin_hash
        );
        assert!(
            mail.warnings.iter().any(|w| w.contains(&kotlin_hash)),
            "{:?}",
            mail.warnings
        );
        let fetched = world.fetcher.fetched();
        assert_eq!(
            fetched.iter().filter(|hash| **hash == kotlin_hash).count(),
            2
        );
    }

    /// Loads news at `now_ms`, which must fall back to the pinned manifest; returns why.
    fn expect_pinned_fallback(world: &World, now_ms: u64) -> String {
        let result = world.loader.load(&world.request("news", now_ms)).unwrap();
        match result.manifest_source {
            LoadSource::PinnedFallback { reason } => reason,
            other => panic!("expected a fallback to the pinned manifest, got {other:?}"),
        }
    }

    /// Publishes news v2 whose app module is served as other bytes; returns its manifest.
    fn publish_tampered_v2(world: &World) -> (Vec<u8>, ModuleSpec) {
        let v2 = app_module("news", "v2");
        let raw = world.publish("news", &[kotlin(), v2.clone()], 200);
        let url = Manifest::parse(&raw)
            .unwrap()
            .module_url(&v2.id, &manifest_url("news"))
            .unwrap();
        world.fetcher.serve_module(url, b"evil bytes");
        (raw, v2)
    }

    #[test]
    fn a_tampered_module_fails_the_new_release_and_the_pinned_one_loads_with_its_pins_kept() {
        // Without a pinned release, the tampered module is the load's error.
        let first = world();
        let error = {
            publish_tampered_v2(&first);
            first
                .loader
                .load(&first.request("news", 1_000))
                .unwrap_err()
        };
        assert!(
            matches!(
                &error,
                ModuleError::ModuleCommit { id, source: StoreError::HashMismatch { .. } }
                    if id == "./news.js"
            ),
            "{error:?}"
        );
        assert!(!error.is_network());

        let world = news_v1_pinned();
        let pins_before = world.pins();
        let (raw, v2) = publish_tampered_v2(&world);
        // The pinned release was verified when stored, and its modules are checked by hash:
        // the app starts, and says why it runs the old release.
        let reason = expect_pinned_fallback(&world, 2_000);
        assert!(
            reason.contains("\"./news.js\" could not be stored"),
            "{reason}"
        );
        assert_eq!(world.pins(), pins_before);
        assert!(!world.stored(&v2.sha256()));
        assert!(!world.stored(&sha256_hex(b"evil bytes")));
        assert!(
            !world.stored(&sha256_hex(&raw)),
            "nor the manifest of the failed load"
        );
    }

    /// `n` library modules of `version` and the app's module depending on all of them.
    fn many_modules(n: usize, version: &str) -> Vec<ModuleSpec> {
        let ids: Vec<String> = (0..n).map(|i| format!("./lib{i}.js")).collect();
        let mut modules: Vec<ModuleSpec> = ids
            .iter()
            .map(|id| ModuleSpec::new(id, format!("{id} {version}").as_bytes(), &[]))
            .collect();
        let deps: Vec<&str> = ids.iter().map(String::as_str).collect();
        let main = format!("main {version}");
        modules.push(ModuleSpec::new("./news.js", main.as_bytes(), &deps));
        modules
    }

    #[test]
    fn a_large_load_pins_exactly_its_modules_and_a_failed_one_keeps_the_old_pins() {
        // Enough modules for the store's batch path, whose transaction takes the pins too.
        for in_place in [true, false] {
            let world = world();
            world.fetcher.in_place.store(in_place, Ordering::SeqCst);
            let v1 = many_modules(12, "v1");
            let raw = world.publish("news", &v1, 100);
            world.loader.load(&world.request("news", 1_000)).unwrap();
            let mut want: Vec<Pin> = v1
                .iter()
                .map(ModuleSpec::sha256)
                .chain([sha256_hex(&raw)])
                .map(|sha256| Pin {
                    app: "news".into(),
                    sha256,
                })
                .collect();
            want.sort();
            assert_eq!(world.pins(), want, "in place: {in_place}");
            let app = world.loader.with_store(|store| store.apps().unwrap());
            assert_eq!(app[0].manifest_sha256, sha256_hex(&raw));

            let v2 = many_modules(12, "v2");
            let raw2 = world.publish("news", &v2, 200);
            let url = Manifest::parse(&raw2)
                .unwrap()
                .module_url(&v2[5].id, &manifest_url("news"))
                .unwrap();
            // One module of the batch is not there (404): the new release fails, and the
            // pinned one is loaded instead.
            lock(&world.fetcher.modules).remove(url.as_str());
            let reason = expect_pinned_fallback(&world, 2_000);
            assert!(reason.contains("./lib5.js"), "{reason}");
            assert_eq!(
                world.pins(),
                want,
                "the old pins stay (in place: {in_place})"
            );
            let app = world.loader.with_store(|store| store.apps().unwrap());
            assert_eq!(app[0].manifest_sha256, sha256_hex(&raw));
        }
    }

    #[test]
    fn oversized_module_is_rejected_whether_delivered_to_a_temp_file_or_in_place() {
        for in_place in [false, true] {
            let world = world();
            world.fetcher.in_place.store(in_place, Ordering::SeqCst);
            world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
            let mut request = world.request("news", 1_000);
            request.module_max_bytes = 5;
            let error = world.loader.load(&request).unwrap_err();
            assert!(
                matches!(error, ModuleError::ModuleTooLarge { max: 5, .. }),
                "{error:?}"
            );
            assert!(world.pins().is_empty());
            let files = world.loader.with_store(|store| store.list().unwrap());
            assert!(
                files.iter().all(|file| file.kind == FileKind::Manifest),
                "no module row is left (in place: {in_place}): {files:?}"
            );
        }
    }

    #[test]
    fn modules_a_fetcher_committed_in_place_are_recorded_where_they_are() {
        let world = world();
        world.fetcher.in_place.store(true, Ordering::SeqCst);
        let modules = [kotlin(), app_module("news", "v1")];
        world.publish("news", &modules, 100);
        let result = world.loader.load(&world.request("news", 2_000)).unwrap();
        for (loaded, spec) in result.modules.iter().zip(&modules) {
            assert_eq!(loaded.source, ModuleSource::Network);
            let store_path = world.store_path(&spec.sha256());
            assert_eq!(loaded.path, store_path);
            assert!(world.stored(&spec.sha256()));
            let bytes = world
                .loader
                .with_store(|store| store.read(&spec.sha256()).unwrap());
            assert_eq!(bytes, spec.bytes);
        }
        let store_dir = world.loader.with_store(|store| store.dir().join("files"));
        let mut names: Vec<String> = std::fs::read_dir(&store_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.retain(|name| name.len() != 64);
        assert!(names.is_empty(), "only content-addressed files: {names:?}");
    }

    #[test]
    fn manifest_network_failure_falls_back_to_the_pinned_manifest() {
        let world = world();
        let raw = world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        world.fetcher.fail_manifest(
            &manifest_url("news"),
            FetchError::network("connection refused"),
        );
        let result = world.loader.load(&world.request("news", 9_000)).unwrap();
        match &result.manifest_source {
            LoadSource::PinnedFallback { reason } => {
                assert!(reason.contains("connection refused"), "{reason}")
            }
            other => panic!("expected a pinned fallback, got {other:?}"),
        }
        assert_eq!(result.manifest_sha256, sha256_hex(&raw));
        assert!(result
            .modules
            .iter()
            .all(|module| module.source == ModuleSource::Store));
        assert_eq!(world.fetcher.manifest_calls(), 2);
    }

    #[test]
    fn module_network_failure_falls_back_to_the_pinned_manifest_and_keeps_pins() {
        let world = world();
        let raw_v1 = world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        let pins_before = world.pins();
        world.publish("news", &[kotlin(), app_module("news", "v2")], 200);
        *lock(&world.fetcher.module_failure) = Some(FetchError::network("reset by peer"));
        let result = world.loader.load(&world.request("news", 2_000)).unwrap();
        assert!(matches!(
            result.manifest_source,
            LoadSource::PinnedFallback { .. }
        ));
        assert_eq!(result.manifest_sha256, sha256_hex(&raw_v1));
        assert_eq!(world.pins(), pins_before);
    }

    #[test]
    fn network_failure_without_local_manifest_is_a_network_error() {
        let world = world();
        world
            .fetcher
            .fail_manifest(&manifest_url("news"), FetchError::network("dns failure"));
        let error = load_error(&world, 1_000);
        assert!(error.is_network(), "{error:?}");
    }

    #[test]
    fn only_unreachable_or_overloaded_servers_count_as_network_failures() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                FetchError::new(FetchErrorKind::HttpStatus(status), "x").is_network(),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 410] {
            assert!(
                !FetchError::new(FetchErrorKind::HttpStatus(status), "x").is_network(),
                "{status}"
            );
        }
        for kind in [
            FetchErrorKind::Verification,
            FetchErrorKind::Redirects,
            FetchErrorKind::LocalIo,
            FetchErrorKind::InvalidRequest,
            FetchErrorKind::Cancelled,
        ] {
            assert!(!FetchError::new(kind, "x").is_network(), "{kind:?}");
        }
        assert!(FetchError::network("x").is_network());
    }

    #[test]
    fn a_manifest_answered_503_or_404_falls_back_to_the_pinned_one_and_fails_without_one() {
        let world = news_v1_pinned();
        world.fetcher.fail_manifest(
            &manifest_url("news"),
            FetchError::new(FetchErrorKind::HttpStatus(503), "answered HTTP 503"),
        );
        let result = world.loader.load(&world.request("news", 2_000)).unwrap();
        assert!(
            matches!(result.manifest_source, LoadSource::PinnedFallback { .. }),
            "{:?}",
            result.manifest_source
        );
        // A 404 (a CDN not yet updated, a withdrawn URL): the pinned release still starts.
        // It was a load error; the app did not start although its last good release was
        // stored and verified.
        let not_found = FetchError::new(FetchErrorKind::HttpStatus(404), "answered HTTP 404");
        world
            .fetcher
            .fail_manifest(&manifest_url("news"), not_found.clone());
        let reason = expect_pinned_fallback(&world, 3_000);
        assert!(reason.contains("answered HTTP 404"), "{reason}");
        // Nothing pinned: the 404 is the load's error.
        let empty = self::world();
        empty
            .fetcher
            .fail_manifest(&manifest_url("news"), not_found);
        let error = load_error(&empty, 3_000);
        assert!(
            matches!(
                &error,
                ModuleError::ManifestFetch { source, .. }
                    if source.kind == FetchErrorKind::HttpStatus(404)
            ),
            "{error:?}"
        );
        assert!(!error.is_network());
    }

    #[test]
    fn rollback_is_refused_unless_allowed() {
        let world = world();
        world.publish("news", &[kotlin(), app_module("news", "v2")], 200);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        let pins_before = world.pins();

        let old = world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        // The offered release is refused, and the newer pinned one loads instead.
        let reason = expect_pinned_fallback(&world, 2_000);
        assert_eq!(
            reason,
            "rollback refused for app \"news\": offered manifest freshAtEpochMs 100 is older \
             than the pinned freshAtEpochMs 200"
        );
        assert_eq!(world.pins(), pins_before);

        let mut request = world.request("news", 3_000);
        request.allow_rollback = true;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(result.manifest_sha256, sha256_hex(&old));
        assert!(
            result.warnings.iter().any(|w| w.ends_with(
                "manifest freshAtEpochMs 100 is older than the pinned freshAtEpochMs 200"
            ) && w.starts_with("rollback allowed")),
            "{:?}",
            result.warnings
        );
        assert!(world
            .pins()
            .iter()
            .any(|pin| pin.sha256 == sha256_hex(&old)));
    }

    #[test]
    fn the_rollback_floor_holds_when_the_pinned_manifest_file_is_lost_or_changed() {
        for damage in ["delete", "change"] {
            let world = world();
            let pinned = world.publish("news", &[kotlin(), app_module("news", "v2")], 200);
            world.loader.load(&world.request("news", 1_000)).unwrap();
            let path = world.store_path(&sha256_hex(&pinned));
            match damage {
                "delete" => std::fs::remove_file(&path).unwrap(),
                _ => std::fs::write(&path, b"{\"modules\":{}}").unwrap(),
            }
            world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
            expect_rollback_refused(&world, damage);
        }
    }

    /// A `freshAtEpochMs` far past the clock (written by a mirror: the value is unsigned)
    /// raises the rollback floor only to an hour past the clock when it was pinned: the next
    /// genuine release loads once that hour is over, and an older one is still refused.
    #[test]
    fn a_fresh_at_far_in_the_future_cannot_freeze_later_releases() {
        let hour = crate::manifest::FUTURE_TOLERANCE_MS;
        let world = world();
        let year_2100 = 4_102_444_800_000;
        world.publish("news", &[kotlin(), app_module("news", "v1")], year_2100);
        let now = 1_000_000;
        world.loader.load(&world.request("news", now)).unwrap();
        world.publish("news", &[kotlin(), app_module("news", "v0")], now - 10);
        let reason = expect_pinned_fallback(&world, now + 10);
        assert!(
            reason.ends_with(&format!("the pinned freshAtEpochMs {}", now + hour)),
            "{reason}"
        );
        let later = now + hour + 5_000;
        world.publish("news", &[kotlin(), app_module("news", "v2")], later);
        let result = world
            .loader
            .load(&world.request("news", later + 1))
            .unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert!(result
            .modules
            .iter()
            .any(|m| m.path.ends_with(sha256_hex(b"news code v2"))));
    }

    /// A floor from a far future recorded by a haul from before the clamp (or, where none
    /// was recorded, the pinned file's own value) is believed only an hour past the clock of
    /// the load that pinned it: the cache heals.
    #[test]
    fn a_far_future_floor_recorded_earlier_is_believed_only_an_hour_past_its_load() {
        let world = world();
        let now = 1_000_000;
        let raw = world.publish(
            "news",
            &[kotlin(), app_module("news", "v1")],
            4_102_444_800_000,
        );
        world.loader.load(&world.request("news", now)).unwrap();
        // Pinned again as a store from before recorded floors has it: no floor recorded.
        let app = world
            .loader
            .with_store(|store| store.apps().unwrap().remove(0));
        let modules = vec![
            sha256_hex(&kotlin().bytes),
            sha256_hex(&app_module("news", "v1").bytes),
        ];
        world.loader.with_store(|store| {
            store
                .set_pins(
                    "news",
                    &sha256_hex(&raw),
                    &modules,
                    app.fresh_at_ms,
                    &app.manifest_url,
                    now,
                )
                .unwrap()
        });
        let app = world
            .loader
            .with_store(|store| store.apps().unwrap().remove(0));
        assert_eq!(app.rollback_floor_ms, None, "{app:?}");
        let later = now + crate::manifest::FUTURE_TOLERANCE_MS + 5_000;
        world.publish("news", &[kotlin(), app_module("news", "v2")], later);
        let result = world
            .loader
            .load(&world.request("news", later + 1))
            .unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
    }

    /// A cached manifest whose freshness instant is later than the clock (the clock was
    /// ahead when it was fetched, or is behind now) is not fresh: the network is asked.
    #[test]
    fn a_freshness_instant_in_the_future_is_not_fresh() {
        let world = world();
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        let mut request = world.request("news", 1_000_000_000);
        request.freshness_window_ms = 60_000;
        world.loader.load(&request).unwrap();
        assert_eq!(world.fetcher.manifest_calls(), 1);
        // The clock is put back a year.
        request.now_ms = 1_000_000_000 - 365 * 86_400_000 / 1000;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(world.fetcher.manifest_calls(), 2);
    }

    /// Loading news (now at `freshAtEpochMs` 100, pinned at 200) fails as a rollback.
    fn expect_rollback_refused(world: &World, case: &str) {
        let error = load_error(world, 2_000);
        assert!(
            matches!(
                error,
                ModuleError::Rollback {
                    pinned_fresh_at_ms: 200,
                    offered_fresh_at_ms: Some(100),
                    floor: RollbackFloor::Pinned,
                    ..
                }
            ),
            "{case}: {error:?}"
        );
        // The numbers as numbers (not Rust's `Some(100)`).
        assert_eq!(
            error.to_string(),
            "rollback refused for app \"news\": offered manifest freshAtEpochMs 100 is older \
             than the pinned freshAtEpochMs 200",
            "{case}"
        );
    }

    #[test]
    fn fresh_cached_manifest_is_used_without_the_network() {
        let world = world();
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        let mut request = world.request("news", 10_000);
        request.freshness_window_ms = 1_000;
        world.loader.load(&request).unwrap();
        assert_eq!(world.fetcher.manifest_calls(), 1);
        let fetched = world.fetcher.fetched().len();

        request.now_ms = 10_999;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Store);
        assert_eq!(world.fetcher.manifest_calls(), 1);
        assert_eq!(world.fetcher.fetched().len(), fetched);

        // A cached load does not extend freshness: the window counts from the network fetch.
        request.now_ms = 11_000;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(world.fetcher.manifest_calls(), 2);

        // Another manifest URL for the same app is not answered from the cache.
        let mut moved = request.clone();
        moved.now_ms = 11_001;
        moved.manifest_url = Url::parse("https://mirror.test/news/manifest.json").unwrap();
        let raw = lock(&world.fetcher.manifests)[manifest_url("news").as_str()].clone();
        world
            .fetcher
            .serve_manifest(&moved.manifest_url, &raw.unwrap());
        let result = world.loader.load(&moved).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(world.fetcher.manifest_calls(), 3);
        assert_eq!(world.fetcher.fetched().len(), fetched);
    }

    fn write_embedded(world: &World, app: &str, raw: &[u8], modules: &[ModuleSpec]) {
        std::fs::write(world.embedded_dir.join(format!("{app}.manifest.json")), raw).unwrap();
        for module in modules {
            std::fs::write(world.embedded_dir.join(module.sha256()), &module.bytes).unwrap();
        }
    }

    #[test]
    fn fresh_embedded_manifest_loads_without_the_network_and_is_pinned() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        let raw = manifest_json(&modules, Some(5_000), &[&world.signer]);
        write_embedded(&world, "news", &raw, &modules);
        let mut request = world.request("news", 5_500);
        request.embedded_dir = Some(world.embedded_dir.clone());
        request.freshness_window_ms = 1_000;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Embedded);
        assert!(result
            .modules
            .iter()
            .all(|module| module.source == ModuleSource::Embedded));
        assert_eq!(world.fetcher.manifest_calls(), 0);
        assert!(world.fetcher.fetched().is_empty());
        assert!(world
            .pins()
            .iter()
            .any(|pin| pin.sha256 == sha256_hex(&raw)));
        for module in &modules {
            assert!(world.stored(&module.sha256()));
        }
    }

    #[test]
    fn tampered_embedded_manifest_is_skipped_with_a_warning() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        let raw = manifest_json(&modules, Some(5_000), &[&world.signer]);
        let tampered = String::from_utf8(raw)
            .unwrap()
            .replace("\"version\": \"test-1\"", "\"version\": \"evil\"");
        write_embedded(&world, "news", tampered.as_bytes(), &modules);
        world.publish("news", &modules, 5_000);
        let mut request = world.request("news", 5_500);
        request.embedded_dir = Some(world.embedded_dir.clone());
        request.freshness_window_ms = 1_000;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(result.version.as_deref(), Some("test-1"));
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.contains("embedded manifest") && w.contains("does not verify")),
            "{:?}",
            result.warnings
        );
        // The embedded module files are still good and are copied instead of downloaded.
        assert!(result
            .modules
            .iter()
            .all(|module| module.source == ModuleSource::Embedded));
        assert!(world.fetcher.fetched().is_empty());
    }

    #[test]
    fn embedded_module_with_wrong_bytes_is_skipped_and_downloaded() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        world.publish("news", &modules, 100);
        std::fs::write(world.embedded_dir.join(modules[0].sha256()), b"not kotlin").unwrap();
        let mut request = world.request("news", 1_000);
        request.embedded_dir = Some(world.embedded_dir.clone());
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.modules[0].source, ModuleSource::Network);
        assert!(result
            .warnings
            .iter()
            .any(|w| w.contains("embedded module file")));
    }

    /// An embedded manifest or module that is a device (a link to `/dev/zero`) was read
    /// until memory or the disk ran out: it reports no length and never ends.
    #[cfg(unix)]
    #[test]
    fn embedded_files_that_are_no_regular_files_are_skipped_not_read_forever() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        world.publish("news", &modules, 100);
        let zero = Path::new("/dev/zero");
        std::os::unix::fs::symlink(zero, world.embedded_dir.join("news.manifest.json")).unwrap();
        std::os::unix::fs::symlink(zero, world.embedded_dir.join(modules[0].sha256())).unwrap();
        let mut request = world.request("news", 1_000);
        request.embedded_dir = Some(world.embedded_dir.clone());
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert_eq!(result.modules[0].source, ModuleSource::Network);
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.contains("embedded manifest") && w.contains("not a regular file")),
            "{:?}",
            result.warnings
        );
    }

    #[test]
    fn corrupt_cached_manifest_is_skipped_with_a_warning() {
        let world = world();
        let raw = world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.loader.load(&world.request("news", 1_000)).unwrap();
        let path = world.store_path(&sha256_hex(&raw));
        std::fs::write(&path, b"{\"modules\":{}}").unwrap();
        let result = world.loader.load(&world.request("news", 2_000)).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.contains("cached manifest skipped")),
            "{:?}",
            result.warnings
        );
    }

    #[test]
    fn network_failure_with_only_an_embedded_manifest_falls_back_to_it() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v1")];
        let raw = manifest_json(&modules, Some(100), &[&world.signer]);
        write_embedded(&world, "news", &raw, &modules);
        world
            .fetcher
            .fail_manifest(&manifest_url("news"), FetchError::network("offline"));
        let mut request = world.request("news", 1_000_000);
        request.embedded_dir = Some(world.embedded_dir.clone());
        let result = world.loader.load(&request).unwrap();
        assert!(matches!(
            result.manifest_source,
            LoadSource::EmbeddedFallback { .. }
        ));
        assert!(world
            .pins()
            .iter()
            .any(|pin| pin.sha256 == sha256_hex(&raw)));
    }

    /// The release an app ships with is a rollback floor too: on an empty cache, an older
    /// signed manifest from the network (a replayed release) was loaded and pinned over it.
    #[test]
    fn a_network_manifest_older_than_the_embedded_release_is_refused_and_the_embedded_loads() {
        let world = world();
        let modules = [kotlin(), app_module("news", "v2")];
        let raw = manifest_json(&modules, Some(200), &[&world.signer]);
        write_embedded(&world, "news", &raw, &modules);
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        let mut request = world.request("news", 1_000_000);
        request.embedded_dir = Some(world.embedded_dir.clone());
        let result = world.loader.load(&request).unwrap();
        let LoadSource::EmbeddedFallback { reason } = &result.manifest_source else {
            panic!("{:?}", result.manifest_source);
        };
        assert_eq!(
            reason,
            "rollback refused for app \"news\": offered manifest freshAtEpochMs 100 is older \
             than the embedded release's freshAtEpochMs 200"
        );
        assert_eq!(result.manifest_sha256, sha256_hex(&raw));
        assert!(
            world.fetcher.fetched().is_empty(),
            "no module of the old release"
        );
        // Allowed, the older release loads (with a warning).
        request.allow_rollback = true;
        let result = world.loader.load(&request).unwrap();
        assert_eq!(result.manifest_source, LoadSource::Network);
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.contains("rollback allowed")),
            "{:?}",
            result.warnings
        );
    }

    #[test]
    fn a_cancelled_load_ends_cancelled_though_another_module_failed_first() {
        // A module failed (404) before the rest of the batch was cancelled (Ctrl-C): the
        // content failure was reported first, and the load fell back and succeeded.
        let world = news_v1_pinned();
        let v2 = [kotlin(), app_module("lib", "v2"), app_module("news", "v2")];
        let raw = world.publish("news", &v2, 200);
        let manifest = Manifest::parse(&raw).unwrap();
        let url = |id: &str| {
            manifest
                .module_url(id, &manifest_url("news"))
                .unwrap()
                .to_string()
        };
        let mut failing = lock(&world.fetcher.failing_modules);
        failing.insert(url(&v2[1].id), FetchError::content("404"));
        failing.insert(
            url(&v2[2].id),
            FetchError::new(FetchErrorKind::Cancelled, "cancelled"),
        );
        drop(failing);
        let error = load_error(&world, 2_000);
        assert!(!error.allows_fallback(), "{error:?}");
    }

    #[test]
    fn a_manifest_url_the_engine_refuses_is_an_error_not_a_fallback() {
        let world = news_v1_pinned();
        world.fetcher.fail_manifest(
            &manifest_url("news"),
            FetchError::new(FetchErrorKind::InvalidRequest, "credentials in the URL"),
        );
        let error = load_error(&world, 2_000);
        assert!(
            matches!(&error, ModuleError::ManifestFetch { source, .. } if source.kind == FetchErrorKind::InvalidRequest),
            "{error:?}"
        );
    }

    #[test]
    fn one_hash_under_two_ids_is_fetched_once_from_either_url() {
        // Which id came first decided: with the failing URL first the load failed, with
        // it second the load succeeded without asking it. Either URL now serves.
        for failing_first in [true, false] {
            let world = world();
            let shared = b"shared runtime bytes";
            let x = ModuleSpec::new("./x.js", shared, &[]);
            let y = ModuleSpec::new("./y.js", shared, &[]);
            let main = ModuleSpec::new("./main.js", b"main", &["./x.js", "./y.js"]);
            let raw = world.publish("news", &[x.clone(), y.clone(), main], 100);
            let manifest = Manifest::parse(&raw).unwrap();
            let failing = if failing_first { &x } else { &y };
            let url = manifest
                .module_url(&failing.id, &manifest_url("news"))
                .unwrap();
            lock(&world.fetcher.failing_modules)
                .insert(url.to_string(), FetchError::content("404"));
            let result = world.loader.load(&world.request("news", 1_000)).unwrap();
            assert_eq!(result.modules.len(), 3, "failing first: {failing_first}");
            let hash = sha256_hex(shared);
            let fetched = world.fetcher.fetched();
            assert_eq!(fetched.iter().filter(|h| **h == hash).count(), 1);
        }
    }

    #[test]
    fn a_module_url_refused_for_its_credentials_falls_back_and_another_refusal_does_not() {
        // An offered manifest's module URL with credentials in it (its unsigned `baseUrl`
        // can say so) was taken for a configuration error: no fallback, and the app with a
        // good pinned release did not start.
        let refused = |url: &str| ModuleError::ModuleFetch {
            id: "./news.js".into(),
            url: url.into(),
            source: FetchError::new(FetchErrorKind::InvalidRequest, "refused"),
        };
        assert!(refused("https://u:p@apps.test/news.zipline").allows_fallback());
        assert!(refused("https://u@apps.test/news.zipline").allows_fallback());
        // Refused for the caller's setup (a proxy it cannot use): every release would be,
        // and the old one must not load for ever in silence.
        let world = news_v1_pinned();
        let v2 = [kotlin(), app_module("news", "v2")];
        let raw = world.publish("news", &v2, 200);
        let manifest = Manifest::parse(&raw).unwrap();
        let url = manifest
            .module_url(&v2[1].id, &manifest_url("news"))
            .unwrap()
            .to_string();
        lock(&world.fetcher.failing_modules).insert(
            url,
            FetchError::new(
                FetchErrorKind::InvalidRequest,
                "needs a proxy that cannot be used",
            ),
        );
        let error = load_error(&world, 2_000);
        assert!(!error.allows_fallback(), "{error:?}");
    }

    #[test]
    fn an_html_page_in_place_of_the_manifest_is_named_as_such_with_its_url() {
        let world = world();
        world.fetcher.serve_manifest(
            &manifest_url("news"),
            b"\n  <!DOCTYPE html><html><body>Log in to the hotel wifi</body></html>",
        );
        let error = load_error(&world, 1_000);
        let text = error.to_string();
        assert!(
            text.contains("https://apps.test/news/manifest.json sent an HTML page, not a manifest"),
            "{text}"
        );
        assert!(
            matches!(&error, ModuleError::ManifestFetch { source, .. } if source.kind == FetchErrorKind::Verification),
            "{error:?}"
        );
    }

    #[test]
    fn a_fallback_takes_the_newer_of_the_pinned_and_the_embedded_release_and_names_its_url() {
        let world = news_v1_pinned();
        let modules = [kotlin(), app_module("news", "v2")];
        let raw = manifest_json(&modules, Some(200), &[&world.signer]);
        write_embedded(&world, "news", &raw, &modules);
        // The manifest moved; its new URL fails.
        let moved = Url::parse("https://apps.test/news/v9/manifest.json").unwrap();
        world
            .fetcher
            .fail_manifest(&moved, FetchError::network("offline"));
        let mut request = world.request("news", 2_000);
        request.manifest_url = moved.clone();
        let without_embedded = world.loader.load(&request).unwrap();
        assert!(matches!(
            without_embedded.manifest_source,
            LoadSource::PinnedFallback { .. }
        ));
        // The pinned release says where it came from, not the URL that failed.
        assert_eq!(without_embedded.manifest_url, manifest_url("news").as_str());
        request.embedded_dir = Some(world.embedded_dir.clone());
        let result = world.loader.load(&request).unwrap();
        assert!(
            matches!(result.manifest_source, LoadSource::EmbeddedFallback { .. }),
            "{:?}",
            result.manifest_source
        );
        assert_eq!(result.manifest_sha256, sha256_hex(&raw));
    }

    #[test]
    fn a_bad_network_signature_loads_the_pinned_release_and_says_why_or_fails_without_one() {
        let forger = ed25519_signer("release", 99);
        let forged = manifest_json(&[kotlin(), app_module("news", "v2")], Some(200), &[&forger]);
        let empty = world();
        empty.fetcher.serve_manifest(&manifest_url("news"), &forged);
        let error = load_error(&empty, 2_000);
        assert!(
            matches!(error, ModuleError::SignatureMismatch { ref key } if key == "release"),
            "{error:?}"
        );
        // With a pinned release, nothing the forged manifest names is fetched or run: the
        // pinned release loads, and the reason names the failed signature.
        let world = news_v1_pinned();
        let fetched = world.fetcher.fetched().len();
        world.fetcher.serve_manifest(&manifest_url("news"), &forged);
        let reason = expect_pinned_fallback(&world, 2_000);
        assert_eq!(
            reason,
            "signature for trusted key \"release\" does not verify"
        );
        assert_eq!(world.fetcher.fetched().len(), fetched, "nothing fetched");
        assert!(!world.stored(&sha256_hex(&forged)));
    }

    #[test]
    fn opening_a_new_store_fetches_the_manifest_meanwhile_and_the_load_uses_that_fetch() {
        let world = world();
        world.publish("app", &[kotlin()], 1_000);
        let dir = tempfile::TempDir::new().unwrap();
        let store_dir = dir.path().join("new-store");
        let request = world.request("app", 2_000);
        let (opened, fetcher) = open_for_load(&store_dir, &request, &*world.fetcher);
        let (store, recovery) = opened.unwrap();
        assert!(recovery.is_clean());
        assert_eq!(
            world.fetcher.manifest_calls(),
            1,
            "fetched while the store was created"
        );
        let loaded = Loader::new(store, fetcher).load(&request).unwrap();
        assert_eq!(loaded.manifest_source, LoadSource::Network);
        assert_eq!(
            world.fetcher.manifest_calls(),
            1,
            "the load used the fetch made ahead"
        );

        // A store that exists has more to load from: nothing is fetched ahead.
        let (opened, _) = open_for_load(&store_dir, &request, &*world.fetcher);
        drop(opened.unwrap());
        assert_eq!(world.fetcher.manifest_calls(), 1);
        // Nor for a load with an embedded directory, even into a new store, nor for an app
        // name the load refuses.
        let mut embedded = world.request("app", 3_000);
        embedded.embedded_dir = Some(world.embedded_dir.clone());
        let (opened, _) = open_for_load(&dir.path().join("other"), &embedded, &*world.fetcher);
        drop(opened.unwrap());
        let refused = world.request("../app", 3_000);
        let (opened, _) = open_for_load(&dir.path().join("third"), &refused, &*world.fetcher);
        drop(opened.unwrap());
        assert_eq!(world.fetcher.manifest_calls(), 1);
    }

    #[test]
    fn modules_resolve_against_the_url_a_redirected_manifest_came_from() {
        // `/news/manifest.json` redirects to a versioned copy with its modules beside it;
        // they were looked for beside the URL asked for (`/news/kotlin_kotlin.zipline`).
        let world = world();
        world.publish("news-v2", &[kotlin(), app_module("news", "v2")], 1_000);
        lock(&world.fetcher.redirects)
            .insert(manifest_url("news").to_string(), manifest_url("news-v2"));
        let result = world
            .loader
            .load(&world.request("news", 2_000))
            .expect("the modules are beside the manifest's final URL");
        assert_eq!(result.modules.len(), 2);
        // The pinned manifest keeps the URL asked for: a later load of it may find it fresh.
        let pinned = world
            .loader
            .with_store(|store| store.pinned_manifest("news").unwrap())
            .expect("pinned");
        assert_eq!(pinned.manifest_url, manifest_url("news").as_str());
    }

    #[test]
    fn an_index_that_takes_no_writes_still_loads_the_pinned_release() {
        // A disk too full for the index: the last-used time of a pinned load failed the load,
        // fallback included, and pinning a new release failed without a fallback, though
        // the pinned release was all stored.
        let world = news_v1_pinned();
        let pins_before = world.pins();
        world.loader.with_store(|store| store.refuse_index_writes());
        // The network offers v2, which cannot be stored or pinned.
        world.publish("news", &[kotlin(), app_module("news", "v2")], 200);
        let reason = expect_pinned_fallback(&world, 2_000);
        assert!(reason.contains("readonly"), "{reason}");
        // The network down: the pinned release, its last-used time not recorded.
        world
            .fetcher
            .fail_manifest(&manifest_url("news"), FetchError::network("offline"));
        let result = world.loader.load(&world.request("news", 3_000)).unwrap();
        assert!(
            matches!(result.manifest_source, LoadSource::PinnedFallback { .. }),
            "{:?}",
            result.manifest_source
        );
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.starts_with("last-used time not recorded")),
            "{:?}",
            result.warnings
        );
        assert_eq!(world.pins(), pins_before);
    }

    #[test]
    fn a_prefetched_manifest_answers_the_first_fetch_of_its_url_only() {
        let world = world();
        let raw = world.publish("app", &[kotlin()], 1_000);
        let url = manifest_url("app");
        let ahead = || {
            Ok(FetchedManifest {
                bytes: b"made ahead".to_vec(),
                url: url.clone(),
            })
        };
        let prefetched = Prefetched::new(
            &world.fetcher,
            url.clone(),
            MANIFEST_MAX_BYTES as u64,
            ahead(),
        );
        let other = manifest_url("other");
        assert!(prefetched
            .fetch_manifest(&other, MANIFEST_MAX_BYTES as u64)
            .is_err());
        assert_eq!(
            world.fetcher.manifest_calls(),
            1,
            "another URL asks the network"
        );
        // The other URL's call used up the answer made ahead (it is for the first fetch).
        assert_eq!(
            prefetched
                .fetch_manifest(&url, MANIFEST_MAX_BYTES as u64)
                .unwrap()
                .bytes,
            raw
        );
        let fresh = Prefetched::new(
            &world.fetcher,
            url.clone(),
            MANIFEST_MAX_BYTES as u64,
            ahead(),
        );
        assert_eq!(
            fresh
                .fetch_manifest(&url, MANIFEST_MAX_BYTES as u64)
                .unwrap()
                .bytes,
            b"made ahead".to_vec()
        );
        let calls = world.fetcher.manifest_calls();
        assert_eq!(
            fresh
                .fetch_manifest(&url, MANIFEST_MAX_BYTES as u64)
                .unwrap()
                .bytes,
            raw,
            "the second fetch asks the network"
        );
        assert_eq!(world.fetcher.manifest_calls(), calls + 1);
    }

    #[test]
    fn app_names_that_are_paths_are_rejected() {
        let world = world();
        for app in ["", "..", "../etc", "a/b", "a\\b"] {
            assert!(matches!(
                world.loader.load(&world.request(app, 1)),
                Err(ModuleError::InvalidAppName { .. })
            ));
        }
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn concurrent_loads_sharing_a_module_fetch_it_once() {
        let world = Arc::new(world());
        world.publish("news", &[kotlin(), app_module("news", "v1")], 100);
        world.publish("mail", &[kotlin(), app_module("mail", "v1")], 100);
        let kotlin_hash = kotlin().sha256();
        *lock(&world.fetcher.gated_hash) = Some(kotlin_hash.clone());

        let first = {
            let world = Arc::clone(&world);
            std::thread::spawn(move || world.loader.load(&world.request("news", 1_000)))
        };
        wait_until("the first load is downloading kotlin", || {
            world.fetcher.gate_entered.load(Ordering::SeqCst)
        });
        let second = {
            let world = Arc::clone(&world);
            std::thread::spawn(move || world.loader.load(&world.request("mail", 1_000)))
        };
        let waited = Instant::now() + Duration::from_secs(5);
        while world.loader.shared_waits() == 0 && Instant::now() < waited {
            std::thread::sleep(Duration::from_millis(2));
        }
        let shared_waits = world.loader.shared_waits();
        world.fetcher.open_gate();
        let news = first.join().unwrap().unwrap();
        let mail = second.join().unwrap().unwrap();
        assert_eq!(
            shared_waits, 1,
            "the second load should wait for the first's download"
        );
        let fetched = world.fetcher.fetched();
        assert_eq!(
            fetched.iter().filter(|hash| **hash == kotlin_hash).count(),
            1,
            "{fetched:?}"
        );
        assert_eq!(news.modules[0].path, mail.modules[0].path);
        assert_eq!(mail.modules[0].source, ModuleSource::Network);
        assert!(world.stored(&kotlin_hash));
    }
}
