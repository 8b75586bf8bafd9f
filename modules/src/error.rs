//! The crate's error type for manifests, signatures and loads.
//!
//! Owns [`ModuleError`] and its classification (`is_network`). Store failures keep their own
//! type ([`crate::store::StoreError`]) and are wrapped here; fetch failures come from the engine
//! as [`crate::loader::FetchError`].

use crate::loader::FetchError;
use crate::store::StoreError;

/// What failed while parsing, verifying or loading a module manifest.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The manifest is bigger than [`crate::MANIFEST_MAX_BYTES`].
    #[error("manifest is {size} bytes, more than the {max}-byte limit")]
    ManifestTooLarge { size: usize, max: usize },

    /// The manifest is not valid JSON or does not have the manifest's shape.
    #[error("manifest is not a valid manifest document: {0}")]
    ManifestSyntax(#[source] serde_json::Error),

    /// The manifest's top level is JSON but not an object.
    #[error("manifest's top level is not a JSON object")]
    ManifestNotObject,

    /// The signed part of the manifest holds something the signed bytes would not keep as
    /// written (a key given twice in one object, a number that does not come back as
    /// written): two documents that read differently would share a signature.
    #[error("manifest cannot be verified as written: {reason}")]
    ManifestNotSignable { reason: String },

    /// A module's `sha256` is not 64 hex digits.
    #[error("module {module:?} has sha256 {value:?}, expected 64 hex digits")]
    InvalidSha256 { module: String, value: String },

    /// A module depends on an id that is not in `modules`.
    #[error("module {module:?} depends on {dependency:?}, which is not in the manifest")]
    UnknownDependency { module: String, dependency: String },

    /// The modules' dependencies form a cycle; the ids are listed in cycle order.
    #[error("module dependency cycle: {}", cycle_text(.cycle))]
    DependencyCycle { cycle: Vec<String> },

    /// `mainModuleId` names a module that is not in `modules`.
    #[error("mainModuleId {main:?} is not in the manifest's modules")]
    MissingMainModule { main: String },

    /// A module id asked for is not in the manifest.
    #[error("module {id:?} is not in the manifest")]
    UnknownModule { id: String },

    /// A URL (base, manifest or module) could not be resolved.
    #[error("cannot resolve {what} URL {value:?}: {source}")]
    InvalidUrl {
        what: String,
        value: String,
        #[source]
        source: url::ParseError,
    },

    /// A module URL resolved to a scheme haul does not fetch (only http and https).
    #[error("module {id:?} resolves to {url:?}: only http and https URLs are fetched")]
    UnsupportedModuleUrl { id: String, url: String },

    /// A trusted key given by the caller is malformed.
    #[error("invalid trusted key {input:?}: {reason}")]
    InvalidTrustedKey { input: String, reason: String },

    /// Two trusted keys have the same name.
    #[error("trusted key name {name:?} is given more than once")]
    DuplicateTrustedKey { name: String },

    /// A signature for a trusted key is present but is not valid hex / DER / length.
    #[error("signature for trusted key {key:?} is malformed: {reason}")]
    MalformedSignature { key: String, reason: String },

    /// A signature for a trusted key is present and does not verify.
    #[error("signature for trusted key {key:?} does not verify")]
    SignatureMismatch { key: String },

    /// None of the trusted key names has a signature in the manifest.
    #[error(
        "no signature from a trusted key: manifest is signed by [{}], trusted keys are [{}]",
        present.join(", "),
        trusted.join(", ")
    )]
    NoTrustedSignature {
        present: Vec<String>,
        trusted: Vec<String>,
    },

    /// The app name cannot be used as a file name in the embedded directory.
    #[error("app name {app:?} is not usable (empty, or contains a path separator, `..` or NUL)")]
    InvalidAppName { app: String },

    /// Fetching the manifest failed.
    #[error("fetching manifest {url} failed: {source}")]
    ManifestFetch {
        url: String,
        #[source]
        source: FetchError,
    },

    /// Fetching a module failed.
    #[error("fetching module {id:?} from {url} failed: {source}")]
    ModuleFetch {
        id: String,
        url: String,
        #[source]
        source: FetchError,
    },

    /// Another load in this process was downloading the same module and failed.
    #[error("shared download of module {id:?} (sha256 {sha256}) failed: {reason}")]
    SharedDownloadFailed {
        id: String,
        sha256: String,
        reason: String,
        is_network: bool,
    },

    /// A module is neither stored nor embedded and this load may not use the network (a
    /// fallback after a network failure).
    #[error("module {id:?} (sha256 {sha256}) is not stored or embedded, and this load does not use the network")]
    ModuleUnavailable { id: String, sha256: String },

    /// A downloaded or embedded module is larger than the request allows.
    #[error("module {id:?} is {size} bytes, more than the {max}-byte limit")]
    ModuleTooLarge { id: String, size: u64, max: u64 },

    /// A module's bytes could not be committed to the store (wrong hash, I/O, index).
    #[error("module {id:?} could not be stored: {source}")]
    ModuleCommit {
        id: String,
        #[source]
        source: StoreError,
    },

    /// The offered manifest is older than the app's pinned one, or than the release the app
    /// ships with (its embedded manifest): [`Rollback::floor`] says which.
    ///
    /// [`Rollback::floor`]: ModuleError::Rollback::floor
    #[error(
        "rollback refused for app {app:?}: offered manifest {} is older than {floor} \
         freshAtEpochMs {pinned_fresh_at_ms}",
        offered_freshness(*offered_fresh_at_ms)
    )]
    Rollback {
        app: String,
        /// The floor's `freshAtEpochMs` (the pinned manifest's, or the embedded one's).
        pinned_fresh_at_ms: u64,
        offered_fresh_at_ms: Option<u64>,
        floor: RollbackFloor,
    },

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which manifest set the rollback floor an offered one is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackFloor {
    /// The app's pinned manifest (its `freshAtEpochMs` as recorded when it was pinned).
    Pinned,
    /// The manifest the app ships with (the embedded directory), newer than the pinned one
    /// or with none pinned yet.
    Embedded,
}

impl std::fmt::Display for RollbackFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollbackFloor::Pinned => "the pinned",
            RollbackFloor::Embedded => "the embedded release's",
        })
    }
}

impl ModuleError {
    /// Whether a load whose network path failed with this falls back to a local manifest
    /// (the pinned one, then the embedded one). Every failure of what the network offered
    /// does: an unreachable or refusing server, a status such as 404 or 403, a captive
    /// portal's page in place of the manifest, a signature that does not verify, a rollback,
    /// a module missing or wrong, a store that could not take the new modules. The pinned
    /// manifest was verified when it was stored and every module is checked by hash, so the
    /// fallback never runs anything the network offered, and an app with a good pinned
    /// release still starts (the failure did not stop the load; it is its reason,
    /// [`crate::LoadSource::PinnedFallback`]). Not a configuration error (trusted keys, app
    /// name, a manifest URL the engine refuses), which the local manifests fail too or which
    /// would load the old release for ever, nor a cancelled fetch. A module URL the engine
    /// refuses for the credentials in it is the offered manifest's fault and falls back.
    pub fn allows_fallback(&self) -> bool {
        match self {
            ModuleError::InvalidTrustedKey { .. }
            | ModuleError::DuplicateTrustedKey { .. }
            | ModuleError::InvalidAppName { .. } => false,
            ModuleError::ManifestFetch { source, .. } => !matches!(
                source.kind,
                crate::FetchErrorKind::Cancelled | crate::FetchErrorKind::InvalidRequest
            ),
            // A module's URL is the offered manifest's (its `baseUrl` is not even signed): a
            // URL the engine refuses for what it holds (credentials) is the offer's fault.
            // Any other refusal is the caller's setup (a proxy it cannot use), which every
            // release would meet.
            ModuleError::ModuleFetch { source, url, .. } => match source.kind {
                crate::FetchErrorKind::Cancelled => false,
                crate::FetchErrorKind::InvalidRequest => url::Url::parse(url)
                    .is_ok_and(|u| !u.username().is_empty() || u.password().is_some()),
                _ => true,
            },
            _ => true,
        }
    }

    /// Whether the failure came from the network (so a later retry may succeed).
    pub fn is_network(&self) -> bool {
        match self {
            ModuleError::ManifestFetch { source, .. } | ModuleError::ModuleFetch { source, .. } => {
                source.is_network()
            }
            ModuleError::SharedDownloadFailed { is_network, .. } => *is_network,
            _ => false,
        }
    }
}

fn cycle_text(cycle: &[String]) -> String {
    let mut text = cycle
        .iter()
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(" -> ");
    if let Some(first) = cycle.first() {
        text.push_str(&format!(" -> {first:?}"));
    }
    text
}

/// How an offered manifest's freshness reads in a message: its `freshAtEpochMs`, or that it
/// has none (which counts as 0, older than any pinned one).
pub(crate) fn offered_freshness(fresh_at_ms: Option<u64>) -> String {
    match fresh_at_ms {
        Some(ms) => format!("freshAtEpochMs {ms}"),
        None => "without freshAtEpochMs".to_string(),
    }
}
