//! Speed Dreams-style asset catalogs: parsing, repositories, merging and installs.
//!
//! Owns: turning catalog bytes into checked [`Asset`]s (a bad entry is skipped and
//! reported, the rest of the catalog survives), the repositories configuration and
//! catalog cache under a [`Home`] directory, merging several repositories into one
//! list, the install layout (cars, tracks, driver slots), `.revision` bookkeeping and
//! [`AssetState`]. Does not own: fetching catalogs, thumbnails or assets (the
//! downloader uses [`CATALOG_MAX_BYTES`], [`THUMBNAIL_MAX_BYTES`] and each asset's
//! declared `size` and `sha256` as its limits), nor any user interface.
//!
//! Where the original download manager had bugs, haul does the right thing: an
//! upper-case hash is accepted and stored lower-case; `..` inside `<directory>/...`
//! entries is refused (by [`crate::extract`], before anything is written); the old
//! folder is replaced by an atomic swap instead of delete-then-rename.

mod home;
mod install;

use std::collections::HashMap;

pub use home::{merge_catalogs, Home, MergedAsset, MergedCatalog, RejectedFrom};
pub use install::{
    asset_state, install_asset, install_asset_or_stop, install_dir, recover_root, remove_asset,
    AssetState, InstalledAsset, DRIVER_NAME_FILE, REVISION_FILE,
};

use crate::error::InstallError;

/// Largest catalog accepted (the game's limit).
pub const CATALOG_MAX_BYTES: u64 = 2 * 1024 * 1024;
/// Largest thumbnail the downloader should accept (the game's limit).
pub const THUMBNAIL_MAX_BYTES: u64 = 1024 * 1024;
/// Track categories the game knows; a track's category is its install subfolder.
pub const TRACK_CATEGORIES: [&str; 7] = [
    "circuit",
    "development",
    "dirt",
    "gprix",
    "karting",
    "road",
    "speedway",
];
/// Driver categories name robots; these two are not robots.
pub const FORBIDDEN_DRIVER_CATEGORIES: [&str; 2] = ["human", "networkhuman"];
/// The only hash type the catalog format defines today.
pub const SUPPORTED_HASHTYPE: &str = "sha256";

/// The three kinds of asset a catalog lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AssetKind {
    Car,
    Track,
    Driver,
}

impl AssetKind {
    pub const ALL: [AssetKind; 3] = [AssetKind::Car, AssetKind::Track, AssetKind::Driver];

    /// `car`, `track` or `driver`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Car => "car",
            AssetKind::Track => "track",
            AssetKind::Driver => "driver",
        }
    }

    /// The catalog's array key: `cars`, `tracks` or `drivers`.
    pub fn catalog_key(self) -> &'static str {
        match self {
            AssetKind::Car => "cars",
            AssetKind::Track => "tracks",
            AssetKind::Driver => "drivers",
        }
    }
}

impl std::fmt::Display for AssetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One checked catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub kind: AssetKind,
    /// Human-readable name; with `kind`, the asset's identity across repositories.
    pub name: String,
    /// Free for cars; one of [`TRACK_CATEGORIES`] for tracks; a robot for drivers.
    pub category: String,
    pub author: String,
    pub license: String,
    /// Where the zip is (http or https).
    pub url: String,
    /// Expected SHA-256 of the zip, lower-case hex.
    pub sha256: String,
    /// Exact size of the zip in bytes.
    pub size: u64,
    /// Thumbnail URL (http or https).
    pub thumbnail: String,
    /// Top-level folder inside the zip and install folder name.
    pub directory: String,
    pub revision: u64,
}

/// A catalog entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEntry {
    pub kind: AssetKind,
    /// Position in its catalog array; `None` for a rejection made while merging.
    pub index: Option<usize>,
    /// The entry's `name`, when it had a usable one.
    pub name: Option<String>,
    /// The field at fault (`None` when the entry as a whole is wrong).
    pub field: Option<&'static str>,
    pub reason: String,
}

impl std::fmt::Display for RejectedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.catalog_key())?;
        if let Some(index) = self.index {
            write!(f, " #{index}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(field) = self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The result of [`parse_catalog`]: the usable assets, in catalog order (cars, tracks,
/// drivers), and every skipped entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogParse {
    pub assets: Vec<Asset>,
    pub rejected: Vec<RejectedEntry>,
}

struct FieldProblem {
    field: Option<&'static str>,
    reason: String,
}

fn problem(field: &'static str, reason: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: Some(field),
        reason: reason.into(),
    }
}

/// Parses a catalog. Fails as a whole only when the bytes are over
/// [`CATALOG_MAX_BYTES`], not JSON, not an object, or `cars`/`tracks`/`drivers` is
/// present but not an array; any single bad entry is skipped and reported. Unknown
/// top-level keys and unknown entry fields are ignored. Two entries of one kind with
/// one name, or two cars/tracks that would install to one folder, keep the first.
pub fn parse_catalog(bytes: &[u8]) -> Result<CatalogParse, InstallError> {
    if bytes.len() as u64 > CATALOG_MAX_BYTES {
        return Err(InstallError::BadCatalog {
            reason: format!("{} bytes, limit is {CATALOG_MAX_BYTES}", bytes.len()),
        });
    }
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| InstallError::BadCatalog {
            reason: format!("not JSON: {e}"),
        })?;
    let obj = doc.as_object().ok_or_else(|| InstallError::BadCatalog {
        reason: "not a JSON object".into(),
    })?;
    let mut out = CatalogParse::default();
    let mut names: HashMap<(AssetKind, String), usize> = HashMap::new();
    let mut folders: HashMap<(AssetKind, String), String> = HashMap::new();
    for kind in AssetKind::ALL {
        let Some(list) = obj.get(kind.catalog_key()) else {
            continue;
        };
        let list = list.as_array().ok_or_else(|| InstallError::BadCatalog {
            reason: format!("{:?} is not an array", kind.catalog_key()),
        })?;
        for (index, entry) in list.iter().enumerate() {
            let name = entry
                .get("name")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let reject = |p: FieldProblem| RejectedEntry {
                kind,
                index: Some(index),
                name: name.clone(),
                field: p.field,
                reason: p.reason,
            };
            let asset = match parse_entry(kind, entry) {
                Ok(a) => a,
                Err(p) => {
                    out.rejected.push(reject(p));
                    continue;
                }
            };
            if let Some(first) = names.get(&(kind, asset.name.clone())) {
                out.rejected.push(reject(FieldProblem {
                    field: Some("name"),
                    reason: format!("duplicate of {} #{first}", kind.catalog_key()),
                }));
                continue;
            }
            if let Some(folder) = install::folder_key(&asset) {
                if let Some(other) = folders.get(&(kind, folder.clone())) {
                    out.rejected.push(reject(FieldProblem {
                        field: Some("directory"),
                        reason: format!("installs to the same folder as {other:?}"),
                    }));
                    continue;
                }
                folders.insert((kind, folder), asset.name.clone());
            }
            names.insert((kind, asset.name.clone()), index);
            out.assets.push(asset);
        }
    }
    for r in &out.rejected {
        tracing::debug!(entry = %r, "catalog entry skipped");
    }
    Ok(out)
}

fn parse_entry(kind: AssetKind, entry: &serde_json::Value) -> Result<Asset, FieldProblem> {
    let obj = entry.as_object().ok_or(FieldProblem {
        field: None,
        reason: "entry is not a JSON object".into(),
    })?;
    let string = |field: &'static str| -> Result<String, FieldProblem> {
        match obj.get(field) {
            None => Err(problem(field, "missing")),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(problem(field, "not a string")),
        }
    };
    let name = string("name")?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(problem("name", "empty or holds control characters"));
    }
    let hashtype = string("hashtype")?;
    if hashtype != SUPPORTED_HASHTYPE {
        return Err(problem(
            "hashtype",
            format!("unsupported hash type {hashtype:?} (only {SUPPORTED_HASHTYPE} is supported)"),
        ));
    }
    let asset = Asset {
        kind,
        category: string("category")?,
        author: string("author")?,
        license: string("license")?,
        url: string("url")?,
        sha256: string("hash")?.to_ascii_lowercase(),
        size: decimal("size", &string("size")?)?,
        thumbnail: string("thumbnail")?,
        directory: string("directory")?,
        revision: decimal("revision", &string("revision")?)?,
        name,
    };
    check_url("url", &asset.url)?;
    check_url("thumbnail", &asset.thumbnail)?;
    asset.check_fields()?;
    Ok(asset)
}

fn decimal(field: &'static str, s: &str) -> Result<u64, FieldProblem> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(problem(
            field,
            format!("{s:?} is not an unsigned decimal integer"),
        ));
    }
    s.parse()
        .map_err(|_| problem(field, format!("{s:?} does not fit in 64 bits")))
}

fn check_url(field: &'static str, s: &str) -> Result<(), FieldProblem> {
    let parsed =
        url::Url::parse(s).map_err(|e| problem(field, format!("{s:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(problem(
            field,
            format!("{s:?}: only http and https are supported"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(problem(field, format!("{s:?} has no host")));
    }
    Ok(())
}

/// Letters, digits, `-` and `_`; 1 to 255 bytes.
fn is_safe_folder_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Asset {
    fn check_fields(&self) -> Result<(), FieldProblem> {
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(problem(
                "hash",
                format!("{:?} is not 64 hex digits", self.sha256),
            ));
        }
        if !is_safe_folder_name(&self.directory) {
            return Err(problem(
                "directory",
                format!("{:?} must be letters, digits, '-' or '_'", self.directory),
            ));
        }
        match self.kind {
            AssetKind::Car => {}
            AssetKind::Track => {
                if !TRACK_CATEGORIES.contains(&self.category.as_str()) {
                    return Err(problem(
                        "category",
                        format!(
                            "{:?} is not a track category ({})",
                            self.category,
                            TRACK_CATEGORIES.join(", ")
                        ),
                    ));
                }
            }
            AssetKind::Driver => {
                if FORBIDDEN_DRIVER_CATEGORIES
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(&self.category))
                {
                    return Err(problem(
                        "category",
                        format!("{:?} is not a robot", self.category),
                    ));
                }
                if !is_safe_folder_name(&self.category) {
                    return Err(problem(
                        "category",
                        format!("{:?} must be letters, digits, '-' or '_'", self.category),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the fields an install turns into paths (and the hash format), for assets
    /// built by hand rather than parsed.
    pub fn check(&self) -> Result<(), InstallError> {
        self.check_fields()
            .map_err(|p| InstallError::BadCatalogEntry {
                kind: self.kind.as_str(),
                name: self.name.clone(),
                field: p.field.unwrap_or("entry"),
                reason: p.reason,
            })
    }
}

#[cfg(test)]
mod tests;
