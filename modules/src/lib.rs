//! haul-modules: Zipline-style signed module manifests, a content-addressed module store with
//! per-app pins, and the load orchestration that ties them to an abstract download engine.
//!
//! What this crate owns:
//! - [`manifest`]: parsing the manifest format, the exact bytes a signature covers, the
//!   dependency order of modules and where each module's URL points.
//! - [`signature`]: trusted keys (Ed25519, ECDSA P-256) and the signature policy.
//! - [`store`]: the on-disk content-addressed store (`files/<sha256>` + `index.sqlite`), crash
//!   recovery, pins and LRU pruning.
//! - [`loader`]: the tiers (embedded directory, store, network), rollback protection, fallback
//!   to the last good pinned manifest, and in-process sharing of one download per hash.
//!
//! What it does not own: HTTP, retries, resume and parallelism. Those belong to the download
//! engine, which plugs in through [`loader::Fetcher`]. No function here reads the clock; every
//! timestamp (`now_ms`) is a parameter.
#![forbid(unsafe_code)]

pub mod error;
pub mod loader;
pub mod manifest;
pub mod signature;
pub mod store;

#[cfg(test)]
pub(crate) mod test_support;

pub use error::{ModuleError, RollbackFloor};
pub use loader::{
    check_app_name, open_for_load, Delivery, FetchError, FetchErrorKind, FetchedManifest, Fetcher,
    LoadRequest, LoadResult, LoadSource, LoadedModule, Loader, ModuleFetch, ModuleSource,
    Prefetched,
};
pub use manifest::{
    signed_bytes, Manifest, ModuleEntry, ModuleId, ModuleMap, Unsigned, MANIFEST_MAX_BYTES,
};
pub use signature::{verify, Algorithm, TrustedKey, VerifiedBy};
pub use store::{
    AppRecord, FileEntry, FileKind, FileState, PendingFile, Pin, PinPlan, PinnedManifest,
    PruneReport, RecoveryReport, Store, StoreError, VerifyReport,
};
