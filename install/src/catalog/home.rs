//! The repositories configuration and catalog cache under haul's home directory, and
//! merging catalogs from several repositories.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    install, parse_catalog, Asset, AssetKind, CatalogParse, RejectedEntry, CATALOG_MAX_BYTES,
};
use crate::error::InstallError;
use crate::fsutil;

/// haul's home directory for assets (the CLI resolves `--home DIR` / `HAUL_HOME`):
///
/// - `repositories.json`: `{"repositories": ["https://...", ...]}`, in the order added;
/// - `catalogs/<sha256 of the URL>.json`: the last fetched copy of each catalog.
///
/// Every write is atomic (temporary sibling, fsync, rename, fsync the directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RepositoriesFile {
    repositories: Vec<String>,
}

impl Home {
    pub fn new(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn repositories_path(&self) -> PathBuf {
        self.dir.join("repositories.json")
    }

    /// The configured catalog URLs, in the order added. No file means none.
    pub fn repositories(&self) -> Result<Vec<String>, InstallError> {
        let path = self.repositories_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(InstallError::io("read", &path)(e)),
        };
        let file: RepositoriesFile =
            serde_json::from_slice(&bytes).map_err(|e| InstallError::BadConfig {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(file.repositories)
    }

    fn write_repositories(&self, repositories: Vec<String>) -> Result<(), InstallError> {
        let json = serde_json::to_vec_pretty(&RepositoriesFile { repositories })
            .expect("a list of strings serialises");
        fsutil::atomic_write(&self.repositories_path(), &json)
    }

    /// Adds a catalog URL (http or https). Returns false when it was already there.
    pub fn add_repository(&self, url: &str) -> Result<bool, InstallError> {
        let url = url.trim();
        check_repository_url(url)?;
        let mut repos = self.repositories()?;
        if repos.iter().any(|r| r == url) {
            return Ok(false);
        }
        repos.push(url.to_string());
        self.write_repositories(repos)?;
        tracing::info!(url, "repository added");
        Ok(true)
    }

    /// Removes a catalog URL and its cached copy. Returns false when it was not there.
    pub fn remove_repository(&self, url: &str) -> Result<bool, InstallError> {
        let url = url.trim();
        let mut repos = self.repositories()?;
        let before = repos.len();
        repos.retain(|r| r != url);
        if repos.len() == before {
            return Ok(false);
        }
        self.write_repositories(repos)?;
        let cached = self.catalog_path(url);
        match fs::remove_file(&cached) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstallError::io("remove", &cached)(e)),
        }
        tracing::info!(url, "repository removed");
        Ok(true)
    }

    /// Where the cached copy of the catalog at `url` lives.
    pub fn catalog_path(&self, url: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(url.as_bytes()));
        self.dir.join("catalogs").join(format!("{digest}.json"))
    }

    /// Stores freshly fetched catalog bytes. They are parsed first: a catalog that cannot
    /// be read at all is refused and the previous cached copy is kept.
    pub fn store_catalog(&self, url: &str, bytes: &[u8]) -> Result<CatalogParse, InstallError> {
        let parsed = parse_catalog(bytes)?;
        fsutil::atomic_write(&self.catalog_path(url), bytes)?;
        Ok(parsed)
    }

    /// The cached catalog for `url`, parsed; `None` when never fetched.
    pub fn cached_catalog(&self, url: &str) -> Result<Option<CatalogParse>, InstallError> {
        let path = self.catalog_path(url);
        match fs::metadata(&path) {
            Ok(m) if m.len() > CATALOG_MAX_BYTES => {
                return Err(InstallError::BadCatalog {
                    reason: format!("cached copy {path:?} is over the size limit"),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(InstallError::io("stat", &path)(e)),
        }
        let bytes = fs::read(&path).map_err(InstallError::io("read", &path))?;
        parse_catalog(&bytes).map(Some)
    }

    /// Merges the cached catalogs of every configured repository (in configured order;
    /// repositories never fetched are skipped).
    pub fn merged(&self) -> Result<MergedCatalog, InstallError> {
        let mut sources = Vec::new();
        for url in self.repositories()? {
            if let Some(parsed) = self.cached_catalog(&url)? {
                sources.push((url, parsed));
            }
        }
        Ok(merge_catalogs(sources.iter().map(|(u, p)| (u.as_str(), p))))
    }
}

fn check_repository_url(url: &str) -> Result<(), InstallError> {
    let bad = |reason: String| InstallError::BadName {
        what: "repository URL",
        value: url.to_string(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".into()));
    }
    Ok(())
}

/// One asset after merging, with the repository its chosen listing came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedAsset {
    pub asset: Asset,
    /// The repository whose listing was kept (highest revision; the earliest
    /// repository on a tie).
    pub repository: String,
    /// Other repositories listing the same asset.
    pub also_listed_by: Vec<String>,
}

/// A rejected entry and the repository it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedFrom {
    pub repository: String,
    pub entry: RejectedEntry,
}

/// The union of several catalogs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedCatalog {
    /// Sorted by kind, then name.
    pub assets: Vec<MergedAsset>,
    pub rejected: Vec<RejectedFrom>,
}

impl MergedCatalog {
    pub fn find(&self, kind: AssetKind, name: &str) -> Option<&MergedAsset> {
        self.assets
            .iter()
            .find(|m| m.asset.kind == kind && m.asset.name == name)
    }
}

/// Merges catalogs given as `(repository URL, parsed catalog)` in priority order. The
/// same asset (kind + name) listed twice is one asset: the highest revision wins, the
/// earlier repository on a tie. A different asset that would install into a folder
/// already taken by another is rejected.
pub fn merge_catalogs<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a CatalogParse)>,
) -> MergedCatalog {
    let mut merged: BTreeMap<(AssetKind, String), MergedAsset> = BTreeMap::new();
    let mut rejected = Vec::new();
    for (repo, parsed) in sources {
        rejected.extend(parsed.rejected.iter().map(|entry| RejectedFrom {
            repository: repo.to_string(),
            entry: entry.clone(),
        }));
        for asset in &parsed.assets {
            match merged.get_mut(&(asset.kind, asset.name.clone())) {
                Some(current) => {
                    if asset.revision > current.asset.revision {
                        let previous = std::mem::replace(&mut current.repository, repo.to_string());
                        current.asset = asset.clone();
                        current.also_listed_by.push(previous);
                    } else {
                        current.also_listed_by.push(repo.to_string());
                    }
                }
                None => {
                    merged.insert(
                        (asset.kind, asset.name.clone()),
                        MergedAsset {
                            asset: asset.clone(),
                            repository: repo.to_string(),
                            also_listed_by: Vec::new(),
                        },
                    );
                }
            }
        }
    }
    // Folder collisions between different assets: keep the first in sorted order.
    let mut folders: BTreeMap<(AssetKind, String), String> = BTreeMap::new();
    let mut assets = Vec::with_capacity(merged.len());
    for (_, m) in merged {
        if let Some(folder) = install::folder_key(&m.asset) {
            if let Some(owner) = folders.get(&(m.asset.kind, folder.clone())) {
                rejected.push(RejectedFrom {
                    repository: m.repository.clone(),
                    entry: RejectedEntry {
                        kind: m.asset.kind,
                        index: None,
                        name: Some(m.asset.name.clone()),
                        field: Some("directory"),
                        reason: format!("installs to the same folder as {owner:?}"),
                    },
                });
                continue;
            }
            folders.insert((m.asset.kind, folder), m.asset.name.clone());
        }
        assets.push(m);
    }
    MergedCatalog { assets, rejected }
}
