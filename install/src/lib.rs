//! haul-install: the file side of haul's installers.
//!
//! Owns: safe zip extraction into a staging directory swapped in atomically
//! ([`extract`]), VS Code extension installs ([`vsix`]), and Speed Dreams-style asset
//! catalogs, repositories and asset installs ([`catalog`]).
//! Does not own: downloading. Every installer takes a local archive the caller has
//! already fetched and verified (size, SHA-256); the size a catalog declares is checked
//! again here because it costs nothing.
//!
//! Crash safety: run [`extract::recover`] (or [`catalog::recover_root`]) at start; a crash
//! at any point leaves the old tree or the new one, never a mix. Installers assume one
//! installer at a time per install root; callers serialise.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod error;
pub mod extract;
mod fsutil;
pub mod vsix;

#[cfg(test)]
mod testzip;

pub use error::{InstallError, UnsafeReason};
