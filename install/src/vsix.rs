//! VS Code extension (`.vsix`) installs.
//!
//! Owns: reading `extension/package.json` without extracting, installing the
//! `extension/` payload to `<root>/<publisher>.<name>-<version>/`, the executable-bit
//! rule and its heal pass, uninstall and listing. Does not own: downloading, gallery
//! lookups, or telling a running editor about the change.
//!
//! # Identity and folder names
//!
//! VS Code compares extension ids case-insensitively, so haul does too: an extension's
//! id is `publisher.name` lowercased, and the install folder is the lowercased id,
//! `-`, and the version exactly as the manifest writes it (pre-release tags are
//! case-sensitive in semver). An existing install is found by reading the manifests
//! under the root, not by folder name, so a folder some other tool created with
//! different case (`MS-Python.python-1.0.0`) still counts as installed.
//!
//! # Executable bits
//!
//! Packagers on some platforms drop Unix modes, so shipped language servers arrive as
//! 0644. A file is installed 0o755 when the archive's mode has any exec bit or its
//! content starts with `#!`, `\x7fELF` or a Mach-O magic; every other file is 0o644,
//! whatever folder it sits in. [`heal_exec_bits`] applies the same content rule to an
//! existing tree (it only adds exec bits; it never removes them), and runs on every
//! reinstall of an installed version.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::InstallError;
use crate::extract::{
    check_component, is_executable_magic, read_magic, ExtractLimits, ModePolicy, ValidatedArchive,
    MAX_COMPONENT_LEN,
};
use crate::fsutil;

/// Where the manifest lives inside a `.vsix`.
pub const MANIFEST_ENTRY: &str = "extension/package.json";
/// The payload prefix; only entries under it are installed, without it.
pub const PAYLOAD_PREFIX: &str = "extension/";
/// Largest `package.json` read into memory.
pub const MANIFEST_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The manifest fields an install needs, plus the whole document.
#[derive(Debug, Clone, PartialEq)]
pub struct VsixManifest {
    pub publisher: String,
    pub name: String,
    pub version: String,
    /// The full `package.json`.
    pub json: serde_json::Value,
}

impl VsixManifest {
    /// Parses and checks a `package.json`: `publisher`, `name` and `version` must be
    /// non-empty strings that are safe single path components.
    pub fn from_json(bytes: &[u8]) -> Result<VsixManifest, InstallError> {
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| InstallError::BadManifest {
                reason: format!("{MANIFEST_ENTRY} is not JSON: {e}"),
            })?;
        let field = |key: &str| -> Result<String, InstallError> {
            let value = json
                .get(key)
                .ok_or_else(|| InstallError::BadManifest {
                    reason: format!("field {key:?} is missing"),
                })?
                .as_str()
                .ok_or_else(|| InstallError::BadManifest {
                    reason: format!("field {key:?} is not a string"),
                })?;
            check_component(value).map_err(|why| InstallError::BadManifest {
                reason: format!("field {key:?} = {value:?} {why}"),
            })?;
            // The folder `<publisher>.<name>-<version>` would be hidden: `list` skips such
            // names, and the clean-up of a crashed install takes `.X.haul-trash-N` and the
            // like for its own leftovers.
            if key != "version" && value.starts_with('.') {
                return Err(InstallError::BadManifest {
                    reason: format!("field {key:?} = {value:?} starts with '.'"),
                });
            }
            Ok(value.to_string())
        };
        if !json.is_object() {
            return Err(InstallError::BadManifest {
                reason: format!("{MANIFEST_ENTRY} is not a JSON object"),
            });
        }
        let manifest = VsixManifest {
            publisher: field("publisher")?,
            name: field("name")?,
            version: field("version")?,
            json,
        };
        // The install folder `<publisher>.<name>-<version>` must be a valid name too.
        let folder = manifest.folder_name();
        if folder.len() > MAX_COMPONENT_LEN {
            return Err(InstallError::BadManifest {
                reason: format!(
                    "publisher, name and version make a folder name of {} bytes (at most {MAX_COMPONENT_LEN})",
                    folder.len()
                ),
            });
        }
        Ok(manifest)
    }

    /// `publisher.name`, lowercased (VS Code's comparison key).
    pub fn id(&self) -> String {
        format!("{}.{}", self.publisher, self.name).to_lowercase()
    }

    /// `<id>-<version>`: the folder a fresh install uses.
    pub fn folder_name(&self) -> String {
        format!("{}-{}", self.id(), self.version)
    }
}

/// The outcome of [`install_vsix`].
#[derive(Debug, Clone, PartialEq)]
pub struct VsixInstall {
    pub manifest: VsixManifest,
    /// The install folder.
    pub dir: PathBuf,
    /// This version was already installed; nothing was extracted (exec bits were
    /// healed).
    pub already_installed: bool,
    /// Files written (0 when already installed).
    pub files: u64,
    /// What the heal pass changed (empty for a fresh install).
    pub healed: HealReport,
}

/// What [`heal_exec_bits`] looked at and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Regular files examined.
    pub examined: u64,
    /// Files that gained exec bits, relative to the healed folder.
    pub made_executable: Vec<PathBuf>,
}

/// An installed extension found under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledExtension {
    /// `publisher.name`, lowercased.
    pub id: String,
    pub publisher: String,
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
}

fn manifest_from(archive: &mut ValidatedArchive) -> Result<VsixManifest, InstallError> {
    let bytes = archive
        .read_small(MANIFEST_ENTRY, MANIFEST_MAX_BYTES)?
        .ok_or_else(|| InstallError::BadManifest {
            reason: format!("{MANIFEST_ENTRY} is missing"),
        })?;
    VsixManifest::from_json(&bytes)
}

/// Reads `extension/package.json` from a `.vsix` without extracting anything. The whole
/// archive is validated first, so a manifest is never read from an archive that would
/// be refused at install.
pub fn read_manifest(vsix: &Path) -> Result<VsixManifest, InstallError> {
    let mut archive = ValidatedArchive::open(vsix, &ExtractLimits::default())?;
    manifest_from(&mut archive)
}

/// Installs a `.vsix` under `root`. The archive and manifest are checked before
/// anything is written; an already installed version is a no-op that heals exec bits
/// and reports the existing folder; a folder at the target without a matching manifest
/// is replaced as a whole.
pub fn install_vsix(vsix: &Path, root: &Path) -> Result<VsixInstall, InstallError> {
    install_vsix_or_stop(vsix, root, None)
}

/// [`install_vsix`] that another thread can stop through `stop` until the new folder is
/// swapped in: [`InstallError::Interrupted`], nothing written (see
/// [`crate::extract::Stop`]).
pub fn install_vsix_or_stop(
    vsix: &Path,
    root: &Path,
    stop: Option<crate::extract::Stop>,
) -> Result<VsixInstall, InstallError> {
    let mut archive = ValidatedArchive::open(vsix, &ExtractLimits::default())?;
    let manifest = manifest_from(&mut archive)?;
    let id = manifest.id();
    if let Some(existing) = list(root)?
        .into_iter()
        .find(|e| e.id == id && e.version == manifest.version)
    {
        let healed = heal_exec_bits(&existing.dir)?;
        tracing::info!(id, version = manifest.version, dir = %existing.dir.display(), "already installed");
        return Ok(VsixInstall {
            manifest,
            dir: existing.dir,
            already_installed: true,
            files: 0,
            healed,
        });
    }
    let dir = root.join(manifest.folder_name());
    let staged = archive.extract_to_staging_or_stop(
        &dir,
        |name| name.strip_prefix(PAYLOAD_PREFIX).map(str::to_string),
        ModePolicy::ExecutableByContent,
        stop,
    )?;
    let committed = staged.commit()?;
    tracing::info!(id, version = manifest.version, dir = %dir.display(), files = committed.stats.files, "extension installed");
    Ok(VsixInstall {
        manifest,
        dir,
        already_installed: false,
        files: committed.stats.files,
        healed: HealReport::default(),
    })
}

/// Adds exec bits (where read bits are set) to every regular file under `dir` whose
/// content starts with an executable magic. Symlinks are not followed.
pub fn heal_exec_bits(dir: &Path) -> Result<HealReport, InstallError> {
    let mut report = HealReport::default();
    heal_walk(dir, dir, &mut report)?;
    if !report.made_executable.is_empty() {
        tracing::info!(dir = %dir.display(), healed = report.made_executable.len(), "exec bits healed");
    }
    Ok(report)
}

fn heal_walk(root: &Path, dir: &Path, report: &mut HealReport) -> Result<(), InstallError> {
    let mut items: Vec<_> = fs::read_dir(dir)
        .map_err(InstallError::io("read directory", dir))?
        .collect::<Result<_, _>>()
        .map_err(InstallError::io("read directory", dir))?;
    items.sort_by_key(|e| e.file_name());
    for item in items {
        let path = item.path();
        let meta = fs::symlink_metadata(&path).map_err(InstallError::io("stat", &path))?;
        if meta.is_dir() {
            heal_walk(root, &path, report)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        report.examined += 1;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o111 != 0 {
            continue;
        }
        let magic = read_magic(&path).map_err(InstallError::io("read", &path))?;
        if is_executable_magic(&magic) {
            let new_mode = mode | ((mode & 0o444) >> 2) | 0o100;
            fs::set_permissions(&path, fs::Permissions::from_mode(new_mode))
                .map_err(InstallError::io("chmod", &path))?;
            report
                .made_executable
                .push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// Every extension installed under `root` (folders holding a readable `package.json`
/// with publisher, name and version), sorted by folder. Folders starting with `.` (haul's
/// staging and trash) and unreadable folders are skipped. A missing root is empty.
pub fn list(root: &Path) -> Result<Vec<InstalledExtension>, InstallError> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InstallError::io("read directory", root)(e)),
    };
    let mut found = Vec::new();
    for item in rd {
        let item = item.map_err(InstallError::io("read directory", root))?;
        let name = item.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let dir = item.path();
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let manifest_path = dir.join("package.json");
        let manifest = match read_capped(&manifest_path).map(|b| VsixManifest::from_json(&b)) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "skipping folder with a bad manifest");
                continue;
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "skipping folder without a manifest");
                continue;
            }
        };
        found.push(InstalledExtension {
            id: manifest.id(),
            publisher: manifest.publisher,
            name: manifest.name,
            version: manifest.version,
            dir,
        });
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    fs::File::open(path)?
        .take(MANIFEST_MAX_BYTES)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Uninstalls by `publisher.name` (every installed version) or
/// `publisher.name-version` (that version), compared case-insensitively. A text that is
/// both (extension `acme.widget-2.0.0`, and version 2.0.0 of `acme.widget`) names the
/// extension of that id only. An absent
/// extension is success with nothing removed. Each folder is renamed to a trash
/// sibling before it is deleted, so a crash never leaves a half-deleted install that
/// still looks installed.
pub fn uninstall(id: &str, root: &Path) -> Result<Vec<InstalledExtension>, InstallError> {
    let wanted = id.trim().to_lowercase();
    if wanted.is_empty() {
        return Err(InstallError::BadName {
            what: "extension id",
            value: id.to_string(),
            reason: "is empty".into(),
        });
    }
    let installed = list(root)?;
    let by_id = installed.iter().any(|ext| ext.id == wanted);
    let mut removed = Vec::new();
    for ext in installed {
        let versioned = format!("{}-{}", ext.id, ext.version).to_lowercase();
        if ext.id == wanted || (!by_id && versioned == wanted) {
            fsutil::remove_tree(&ext.dir)?;
            tracing::info!(id = ext.id, version = ext.version, "extension uninstalled");
            removed.push(ext);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testzip::{file, file_mode, listing, raw_zip, write_zip, Item, RawEntry};
    use tempfile::TempDir;

    fn manifest(publisher: &str, name: &str, version: &str) -> String {
        format!(
            r#"{{"publisher":"{publisher}","name":"{name}","version":"{version}","engines":{{"vscode":"^1.80.0"}}}}"#
        )
    }

    fn vsix(dir: &Path, file_name: &str, package_json: &str, extra: &[Item<'_>]) -> PathBuf {
        let path = dir.join(file_name);
        let mut items = vec![
            file("extension.vsixmanifest", b"<PackageManifest/>"),
            file("[Content_Types].xml", b"<Types/>"),
            file("extension/package.json", package_json.as_bytes()),
            file("extension/out/main.js", b"exports.activate = () => {};\n"),
            file("extension/server/lang-server", b"\x7fELF\x02\x01\x01rest"),
            file("extension/bin/readme.md", b"# docs\n"),
            file_mode("extension/bin/tool.sh", b"echo no shebang\n", 0o755),
        ];
        items.extend(extra.iter().map(|i| Item {
            name: i.name,
            data: i.data,
            mode: i.mode,
        }));
        write_zip(&path, &items);
        path
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn installs_the_payload_without_metadata_and_with_exec_bits_by_rule() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("extensions");
        let v = vsix(
            tmp.path(),
            "a.vsix",
            &manifest("Acme", "Widget", "1.2.3"),
            &[],
        );
        let got = install_vsix(&v, &root).unwrap();
        assert!(!got.already_installed);
        assert_eq!(got.dir, root.join("acme.widget-1.2.3"));
        assert_eq!(got.manifest.id(), "acme.widget");
        assert_eq!(got.files, 5);
        assert_eq!(
            listing(&root),
            vec![
                "acme.widget-1.2.3/",
                "acme.widget-1.2.3/bin/",
                "acme.widget-1.2.3/bin/readme.md",
                "acme.widget-1.2.3/bin/tool.sh",
                "acme.widget-1.2.3/out/",
                "acme.widget-1.2.3/out/main.js",
                "acme.widget-1.2.3/package.json",
                "acme.widget-1.2.3/server/",
                "acme.widget-1.2.3/server/lang-server",
            ]
        );
        assert_eq!(mode(&got.dir.join("server/lang-server")), 0o755);
        assert_eq!(mode(&got.dir.join("bin/tool.sh")), 0o755);
        assert_eq!(mode(&got.dir.join("bin/readme.md")), 0o644);
        assert_eq!(mode(&got.dir.join("out/main.js")), 0o644);
    }

    #[test]
    fn reinstalling_the_same_version_is_a_no_op_that_heals_exec_bits() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        let v = vsix(
            tmp.path(),
            "a.vsix",
            &manifest("acme", "widget", "1.0.0"),
            &[],
        );
        let first = install_vsix(&v, &root).unwrap();
        let server = first.dir.join("server/lang-server");
        fs::set_permissions(&server, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(first.dir.join("marker"), b"kept").unwrap();
        // Same id and version in different case is the same extension.
        let v2 = vsix(
            tmp.path(),
            "b.vsix",
            &manifest("ACME", "Widget", "1.0.0"),
            &[],
        );
        let again = install_vsix(&v2, &root).unwrap();
        assert!(again.already_installed);
        assert_eq!(again.dir, first.dir);
        assert_eq!(again.files, 0);
        assert_eq!(
            again.healed.made_executable,
            vec![PathBuf::from("server/lang-server")]
        );
        assert_eq!(mode(&server), 0o755);
        assert!(first.dir.join("marker").exists(), "no re-extraction");
    }

    #[test]
    fn heal_adds_exec_bits_only_to_programs() {
        let tmp = TempDir::new().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::write(d.join("bin/script"), b"#!/usr/bin/env node\n").unwrap();
        fs::write(d.join("bin/notes.txt"), b"text").unwrap();
        fs::write(d.join("fat"), 0xcafebabeu32.to_be_bytes()).unwrap();
        fs::write(d.join("already"), b"\x7fELF").unwrap();
        for (f, m) in [
            ("bin/script", 0o600),
            ("bin/notes.txt", 0o644),
            ("fat", 0o644),
            ("already", 0o700),
        ] {
            fs::set_permissions(d.join(f), fs::Permissions::from_mode(m)).unwrap();
        }
        let report = heal_exec_bits(d).unwrap();
        assert_eq!(report.examined, 4);
        assert_eq!(
            report.made_executable,
            vec![PathBuf::from("bin/script"), PathBuf::from("fat")]
        );
        assert_eq!(mode(&d.join("bin/script")), 0o700);
        assert_eq!(mode(&d.join("fat")), 0o755);
        assert_eq!(mode(&d.join("bin/notes.txt")), 0o644);
        assert_eq!(mode(&d.join("already")), 0o700);
    }

    #[test]
    fn a_bad_manifest_fails_with_nothing_written() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        fs::create_dir(&root).unwrap();
        let cases = [
            (r#"{"publisher":"a","name":"b"}"#, "version"),
            (r#"{"publisher":"a","version":"1"}"#, "name"),
            (r#"{"publisher":7,"name":"b","version":"1"}"#, "publisher"),
            (
                r#"{"publisher":"..","name":"b","version":"1"}"#,
                "publisher",
            ),
            (
                r#"{"publisher":"a/b","name":"b","version":"1"}"#,
                "publisher",
            ),
            // A hidden folder: unlisted, and taken for a crashed install's leftover.
            (
                r#"{"publisher":".foo","name":"bar.haul-trash","version":"0"}"#,
                "publisher\" = \".foo\" starts with '.'",
            ),
            (
                r#"{"publisher":"a","name":".b","version":"1"}"#,
                "name\" = \".b\" starts with '.'",
            ),
            (
                &format!(
                    r#"{{"publisher":"{}","name":"{}","version":"1"}}"#,
                    "p".repeat(200),
                    "n".repeat(200)
                ),
                "folder name of 403 bytes",
            ),
            (r#"not json"#, "not JSON"),
            (r#"[1,2]"#, "not a JSON object"),
        ];
        for (json, needle) in cases {
            let v = vsix(tmp.path(), "bad.vsix", json, &[]);
            let err = install_vsix(&v, &root).unwrap_err();
            match &err {
                InstallError::BadManifest { reason } => {
                    assert!(reason.contains(needle), "{reason}")
                }
                other => panic!("{json}: {other:?}"),
            }
            assert!(read_manifest(&v).is_err());
            assert!(listing(&root).is_empty(), "{json} wrote something");
        }
        let no_manifest = tmp.path().join("none.vsix");
        write_zip(&no_manifest, &[file("extension/x.js", b"x")]);
        assert!(matches!(
            install_vsix(&no_manifest, &root),
            Err(InstallError::BadManifest { .. })
        ));
        assert!(listing(&root).is_empty());
    }

    #[test]
    fn an_unsafe_payload_entry_fails_before_anything_is_written() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        let path = tmp.path().join("evil.vsix");
        raw_zip(&[
            RawEntry::stored("extension/package.json", manifest("a", "b", "1").as_bytes()),
            RawEntry::stored("extension/../../evil.sh", b"#!/bin/sh\n"),
        ])
        .write(&path);
        let err = install_vsix(&path, &root).unwrap_err();
        assert!(
            matches!(&err, InstallError::UnsafeEntry { entry, .. } if entry == "extension/../../evil.sh")
        );
        assert!(!root.exists());
        assert_eq!(listing(tmp.path()), vec!["evil.vsix"]);
    }

    #[test]
    fn read_manifest_keeps_the_whole_document() {
        let tmp = TempDir::new().unwrap();
        let v = vsix(tmp.path(), "a.vsix", &manifest("p", "n", "2.0.0-RC1"), &[]);
        let m = read_manifest(&v).unwrap();
        assert_eq!(
            (m.publisher.as_str(), m.name.as_str(), m.version.as_str()),
            ("p", "n", "2.0.0-RC1")
        );
        assert_eq!(m.json["engines"]["vscode"], "^1.80.0");
        assert_eq!(m.folder_name(), "p.n-2.0.0-RC1");
        assert_eq!(listing(tmp.path()), vec!["a.vsix"]);
    }

    /// `acme.widget-2.0.0` is both an extension's id and version 2.0.0 of `acme.widget`: it
    /// names the extension of that id only (both used to go).
    #[test]
    fn an_id_that_is_also_an_id_and_version_removes_that_extension_only() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        for (file_name, p, n, v) in [
            ("1.vsix", "acme", "widget", "2.0.0"),
            ("2.vsix", "acme", "widget-2.0.0", "1.0.0"),
        ] {
            install_vsix(&vsix(tmp.path(), file_name, &manifest(p, n, v), &[]), &root).unwrap();
        }
        let removed = uninstall("acme.widget-2.0.0", &root).unwrap();
        let removed: Vec<_> = removed
            .iter()
            .map(|e| format!("{}@{}", e.id, e.version))
            .collect();
        assert_eq!(removed, ["acme.widget-2.0.0@1.0.0"]);
        let left: Vec<_> = list(&root)
            .unwrap()
            .iter()
            .map(|e| format!("{}@{}", e.id, e.version))
            .collect();
        assert_eq!(left, ["acme.widget@2.0.0"]);
    }

    #[test]
    fn list_and_uninstall_by_id_or_by_version() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        for (file_name, p, n, v) in [
            ("1.vsix", "acme", "widget", "1.0.0"),
            ("2.vsix", "acme", "widget", "2.0.0"),
            ("3.vsix", "acme", "widget-pro", "1.0.0"),
        ] {
            install_vsix(&vsix(tmp.path(), file_name, &manifest(p, n, v), &[]), &root).unwrap();
        }
        fs::create_dir(root.join("not-an-extension")).unwrap();
        let all = list(&root).unwrap();
        let ids: Vec<_> = all
            .iter()
            .map(|e| format!("{}@{}", e.id, e.version))
            .collect();
        assert_eq!(
            ids,
            vec![
                "acme.widget@1.0.0",
                "acme.widget@2.0.0",
                "acme.widget-pro@1.0.0"
            ]
        );

        let removed = uninstall("ACME.widget-2.0.0", &root).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].version, "2.0.0");
        let removed = uninstall("acme.widget", &root).unwrap();
        assert_eq!(
            removed.len(),
            1,
            "only the remaining widget version, not widget-pro"
        );
        assert!(uninstall("acme.widget", &root).unwrap().is_empty());
        assert!(uninstall("nobody.nothing", &tmp.path().join("missing"))
            .unwrap()
            .is_empty());
        let left: Vec<_> = list(&root).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(left, vec!["acme.widget-pro"]);
        assert_eq!(
            listing(&root)
                .iter()
                .filter(|p| p.contains("haul-"))
                .count(),
            0
        );
    }

    #[test]
    fn a_broken_folder_at_the_target_is_replaced_whole() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("ext");
        fs::create_dir_all(root.join("acme.widget-1.0.0")).unwrap();
        fs::write(root.join("acme.widget-1.0.0/half-written.js"), b"x").unwrap();
        let v = vsix(
            tmp.path(),
            "a.vsix",
            &manifest("acme", "widget", "1.0.0"),
            &[],
        );
        let got = install_vsix(&v, &root).unwrap();
        assert!(!got.already_installed);
        assert!(!got.dir.join("half-written.js").exists());
        assert!(got.dir.join("package.json").exists());
    }
}
