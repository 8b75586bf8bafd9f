//! Asset install layout, driver slots, `.revision` and asset states.
//!
//! Layout under the game data root:
//! - cars: `cars/models/<directory>/`
//! - tracks: `tracks/<category>/<directory>/`
//! - drivers: `drivers/<category>/<index>/`, where `<index>` is the slot already used by
//!   a driver of the same name, else the smallest non-negative integer not taken by any
//!   entry in `drivers/<category>/`.
//!
//! Driver slots: the game refers to drivers by index, and what it writes into a slot
//! does not reliably carry the catalog name, so haul records it itself: every driver
//! install writes `.haul-driver` (the asset name and a newline) into the slot, as part
//! of the staged tree. A numbered slot without that file (shipped with the game, or
//! made by hand) is never reused for a catalog driver; it only counts as taken.
//!
//! Every install writes `.revision` (decimal and a newline) into the staged tree, so it
//! appears atomically with the files; the old folder is replaced as a whole by
//! [`crate::extract::Staged::commit`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Asset, AssetKind};
use crate::error::InstallError;
use crate::extract::{recover, ExtractLimits, ModePolicy, RecoverReport, ValidatedArchive};
use crate::fsutil;

/// Holds the installed revision inside an asset folder.
pub const REVISION_FILE: &str = ".revision";
/// Holds a driver slot's catalog name.
pub const DRIVER_NAME_FILE: &str = ".haul-driver";

/// Where an asset stands on disk compared with a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetState {
    /// Not installed.
    Available,
    /// Installed at a revision at least the catalog's.
    Installed { revision: u64 },
    /// Installed at a lower revision than the catalog's.
    UpdateAvailable { installed: u64, available: u64 },
    /// The folder exists but its `.revision` is missing, unreadable or not a number
    /// (an install by something else, or damage); reinstalling repairs it.
    Broken { reason: String },
}

/// What [`install_asset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledAsset {
    pub dir: PathBuf,
    pub revision: u64,
    /// An older folder was replaced.
    pub replaced: bool,
    /// Files written from the archive (plus `.revision` and, for drivers, `.haul-driver`).
    pub files: u64,
}

/// The folder identity used to detect two different assets installing to one place
/// (`None` for drivers, whose slot is chosen at install time).
pub(crate) fn folder_key(asset: &Asset) -> Option<String> {
    match asset.kind {
        AssetKind::Car => Some(asset.directory.clone()),
        AssetKind::Track => Some(format!("{}/{}", asset.category, asset.directory)),
        AssetKind::Driver => None,
    }
}

fn category_dir(root: &Path, asset: &Asset) -> PathBuf {
    match asset.kind {
        AssetKind::Car => root.join("cars").join("models"),
        AssetKind::Track => root.join("tracks").join(&asset.category),
        AssetKind::Driver => root.join("drivers").join(&asset.category),
    }
}

/// The slot of the installed driver named `name`, if any.
fn find_driver_slot(category_dir: &Path, name: &str) -> Result<Option<PathBuf>, InstallError> {
    let rd = match fs::read_dir(category_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(InstallError::io("read directory", category_dir)(e)),
    };
    let mut slots = Vec::new();
    for item in rd {
        let item = item.map_err(InstallError::io("read directory", category_dir))?;
        let Some(index) = item.file_name().to_str().and_then(slot_number) else {
            continue;
        };
        slots.push((index, item.path()));
    }
    slots.sort();
    for (_, slot) in slots {
        match fs::read_to_string(slot.join(DRIVER_NAME_FILE)) {
            Ok(recorded) if recorded.strip_suffix('\n').unwrap_or(&recorded) == name => {
                return Ok(Some(slot))
            }
            _ => {}
        }
    }
    Ok(None)
}

/// `0`, `1`, `17` (no sign, no leading zeros) -> the number.
fn slot_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

fn next_free_slot(category_dir: &Path) -> Result<PathBuf, InstallError> {
    let mut taken = std::collections::BTreeSet::new();
    match fs::read_dir(category_dir) {
        Ok(rd) => {
            for item in rd {
                let item = item.map_err(InstallError::io("read directory", category_dir))?;
                if let Some(n) = item.file_name().to_str().and_then(slot_number) {
                    taken.insert(n);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(InstallError::io("read directory", category_dir)(e)),
    }
    let free = (0..)
        .find(|n| !taken.contains(n))
        .expect("a free integer exists");
    Ok(category_dir.join(free.to_string()))
}

/// The folder `asset` is (or would be) installed in. For a driver that is not installed
/// this is the next free slot, which is only reserved by installing.
pub fn install_dir(root: &Path, asset: &Asset) -> Result<PathBuf, InstallError> {
    asset.check()?;
    let dir = category_dir(root, asset);
    match asset.kind {
        AssetKind::Driver => match find_driver_slot(&dir, &asset.name)? {
            Some(slot) => Ok(slot),
            None => next_free_slot(&dir),
        },
        _ => Ok(dir.join(&asset.directory)),
    }
}

/// The installed folder of `asset`, or `None` when not installed.
fn installed_dir(root: &Path, asset: &Asset) -> Result<Option<PathBuf>, InstallError> {
    asset.check()?;
    let dir = category_dir(root, asset);
    let candidate = match asset.kind {
        AssetKind::Driver => return find_driver_slot(&dir, &asset.name),
        _ => dir.join(&asset.directory),
    };
    match fs::symlink_metadata(&candidate) {
        Ok(_) => Ok(Some(candidate)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InstallError::io("stat", &candidate)(e)),
    }
}

/// Compares what is on disk under `root` with the catalog's `asset`.
pub fn asset_state(root: &Path, asset: &Asset) -> Result<AssetState, InstallError> {
    let Some(dir) = installed_dir(root, asset)? else {
        return Ok(AssetState::Available);
    };
    if !dir.is_dir() {
        return Ok(AssetState::Broken {
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    let revision_path = dir.join(REVISION_FILE);
    let text = match fs::read_to_string(&revision_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(AssetState::Broken {
                reason: format!("{REVISION_FILE} is missing"),
            })
        }
        Err(e) => {
            return Ok(AssetState::Broken {
                reason: format!("{REVISION_FILE} is unreadable: {e}"),
            })
        }
    };
    let digits = text.strip_suffix('\n').unwrap_or(&text);
    let installed = match digits.parse::<u64>() {
        Ok(n) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => {
            return Ok(AssetState::Broken {
                reason: format!("{REVISION_FILE} holds {text:?}, not a revision number"),
            })
        }
    };
    Ok(if asset.revision > installed {
        AssetState::UpdateAvailable {
            installed,
            available: asset.revision,
        }
    } else {
        AssetState::Installed {
            revision: installed,
        }
    })
}

/// Installs a verified asset zip: checks its length against the catalog's `size`,
/// validates the whole archive, extracts only the entries under `<directory>/` (prefix
/// stripped; everything else is ignored) with `.revision` (and `.haul-driver` for
/// drivers) into a staging folder, and swaps it in, replacing any old folder as a whole.
pub fn install_asset(
    zip: &Path,
    asset: &Asset,
    root: &Path,
) -> Result<InstalledAsset, InstallError> {
    install_asset_or_stop(zip, asset, root, None)
}

/// [`install_asset`] that another thread can stop through `stop` until the new folder is
/// swapped in: [`InstallError::Interrupted`], the installed folder as it was (see
/// [`crate::extract::Stop`]).
pub fn install_asset_or_stop(
    zip: &Path,
    asset: &Asset,
    root: &Path,
    stop: Option<crate::extract::Stop>,
) -> Result<InstalledAsset, InstallError> {
    asset.check()?;
    let actual = fs::metadata(zip)
        .map_err(InstallError::io("stat", zip))?
        .len();
    if actual != asset.size {
        return Err(InstallError::ArchiveSizeMismatch {
            path: zip.to_path_buf(),
            expected: asset.size,
            actual,
        });
    }
    let archive = ValidatedArchive::open(zip, &ExtractLimits::default())?;
    let prefix = format!("{}/", asset.directory);
    if !archive
        .entries()
        .iter()
        .any(|e| e.name.starts_with(&prefix))
    {
        return Err(InstallError::EmptyPayload { prefix });
    }
    // The folder's bookkeeping files are haul's to write: an entry of that name (a file,
    // or a directory that would make the write fail) is refused before anything is written.
    for entry in archive.entries() {
        let Some(rel) = entry.name.strip_prefix(&prefix) else {
            continue;
        };
        let first = rel.split('/').next().unwrap_or_default();
        if first == REVISION_FILE || (asset.kind == AssetKind::Driver && first == DRIVER_NAME_FILE)
        {
            return Err(InstallError::UnsupportedEntry {
                entry: entry.name.clone(),
                reason: format!("{first} is the installed folder's own bookkeeping file"),
            });
        }
    }
    let dest = install_dir(root, asset)?;
    let mut staged = archive.extract_to_staging_or_stop(
        &dest,
        |name| name.strip_prefix(&prefix).map(str::to_string),
        ModePolicy::FromArchive,
        stop,
    )?;
    staged.write_file(
        REVISION_FILE,
        format!("{}\n", asset.revision).as_bytes(),
        0o644,
    )?;
    if asset.kind == AssetKind::Driver {
        staged.write_file(
            DRIVER_NAME_FILE,
            format!("{}\n", asset.name).as_bytes(),
            0o644,
        )?;
    }
    let committed = staged.commit()?;
    tracing::info!(kind = %asset.kind, name = asset.name, revision = asset.revision, dir = %dest.display(), "asset installed");
    Ok(InstalledAsset {
        dir: dest,
        revision: asset.revision,
        replaced: committed.replaced,
        files: committed.stats.files,
    })
}

/// Removes an installed asset's folder (renamed aside first, then deleted). Returns
/// false when it was not installed.
pub fn remove_asset(root: &Path, asset: &Asset) -> Result<bool, InstallError> {
    match installed_dir(root, asset)? {
        Some(dir) => {
            let removed = fsutil::remove_tree(&dir)?;
            tracing::info!(kind = %asset.kind, name = asset.name, dir = %dir.display(), "asset removed");
            Ok(removed)
        }
        None => Ok(false),
    }
}

/// Runs [`recover`] in every folder an asset install stages in: `cars/models`, each
/// `tracks/<category>` and each `drivers/<category>`.
pub fn recover_root(root: &Path) -> Result<RecoverReport, InstallError> {
    let mut parents = vec![root.join("cars").join("models")];
    for top in ["tracks", "drivers"] {
        let dir = root.join(top);
        match fs::read_dir(&dir) {
            Ok(rd) => {
                for item in rd {
                    let item = item.map_err(InstallError::io("read directory", &dir))?;
                    if item.file_type().is_ok_and(|t| t.is_dir()) {
                        parents.push(item.path());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstallError::io("read directory", &dir)(e)),
        }
    }
    parents.sort();
    let mut report = RecoverReport::default();
    for parent in parents {
        let r = recover(&parent)?;
        report.removed.extend(r.removed);
        report.restored.extend(r.restored);
    }
    Ok(report)
}
