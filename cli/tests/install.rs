//! The installer commands end to end, running the real binary against a local origin:
//! `haul vsix`, `haul assets`, `haul extract` and `haul hash`.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haul_origin::{Behavior, Origin};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

fn haul() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haul"));
    c.env_remove("HAUL_HOME").env_remove("HAUL_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    haul().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn expect_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A deflate zip built in memory; a name ending in `/` is a directory.
fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, data) in entries {
        if name.ends_with('/') {
            w.add_directory(*name, options).unwrap();
        } else {
            w.start_file(*name, options).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// Every path under `root`, relative and sorted (directories end with `/`).
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(items) = fs::read_dir(dir) else { return };
        for item in items {
            let path = item.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// vsix

fn package_json(publisher: &str, name: &str, version: &str) -> String {
    format!(
        r#"{{"publisher":"{publisher}","name":"{name}","version":"{version}","displayName":"Test"}}"#
    )
}

fn vsix_bytes(publisher: &str, name: &str, version: &str) -> Vec<u8> {
    let manifest = package_json(publisher, name, version);
    zip_bytes(&[
        ("extension.vsixmanifest", b"<PackageManifest/>"),
        ("[Content_Types].xml", b"<Types/>"),
        ("extension/package.json", manifest.as_bytes()),
        ("extension/out/main.js", b"exports.activate = () => {};\n"),
        (
            "extension/bin/server",
            b"\x7fELF\x02\x01\x01 a language server",
        ),
    ])
}

#[test]
fn vsix_install_from_file_reinstall_is_a_noop_list_and_uninstall() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("ext.vsix");
    fs::write(&file, vsix_bytes("Acme", "Widget", "1.2.3")).unwrap();
    let root = tmp.path().join("extensions");

    let out = run(&["vsix", "install", s(&file), "--root", s(&root)]);
    expect_code(&out, 0);
    let dir = root.join("acme.widget-1.2.3");
    assert!(text(&out.stdout).contains(s(&dir)), "{}", text(&out.stdout));
    assert_eq!(
        listing(&dir),
        vec!["bin/", "bin/server", "out/", "out/main.js", "package.json"]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&dir.join("bin/server")),
        0o755,
        "ELF content is executable"
    );
    assert_eq!(mode(&dir.join("out/main.js")), 0o644);

    let again = run(&["vsix", "install", s(&file), "--root", s(&root)]);
    expect_code(&again, 0);
    assert!(
        text(&again.stdout).contains("already installed"),
        "{}",
        text(&again.stdout)
    );

    let manifest = run(&["vsix", "manifest", s(&file)]);
    expect_code(&manifest, 0);
    let doc: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(doc["displayName"], "Test");
    assert_eq!(doc["version"], "1.2.3");

    let list = run(&["vsix", "list", "--root", s(&root), "--json"]);
    expect_code(&list, 0);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "acme.widget");
    assert_eq!(list[0]["version"], "1.2.3");

    let gone = run(&["vsix", "uninstall", "ACME.Widget-1.2.3", "--root", s(&root)]);
    expect_code(&gone, 0);
    assert!(!dir.exists());
    let absent = run(&["vsix", "uninstall", "acme.widget", "--root", s(&root)]);
    expect_code(&absent, 0);
    let list = run(&["vsix", "list", "--root", s(&root), "--json"]);
    assert_eq!(text(&list.stdout).trim(), "[]");
}

#[test]
fn vsix_install_from_url_checks_sha256_and_leaves_no_temporary_files() {
    let origin = Origin::start().unwrap();
    let body = vsix_bytes("acme", "remote", "0.1.0");
    origin.route("/ext.vsix", body.clone(), Behavior::Normal);
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("extensions");
    let url = origin.url("/ext.vsix");

    let wrong = run(&[
        "vsix",
        "install",
        &url,
        "--root",
        s(&root),
        "--sha256",
        &"ab".repeat(32),
        "--quiet",
    ]);
    expect_code(&wrong, 5);
    assert!(
        !root.exists(),
        "the root made for the install is gone again"
    );

    let good = run(&[
        "vsix",
        "install",
        &url,
        "--root",
        s(&root),
        "--sha256",
        &sha256_hex(&body).to_uppercase(),
        "--quiet",
    ]);
    expect_code(&good, 0);
    assert!(root.join("acme.remote-0.1.0/package.json").is_file());
    // Only the root is left beside the root: the temporary download directory is gone.
    assert!(listing(tmp.path())
        .iter()
        .all(|p| p.starts_with("extensions/")));
}

/// A vsix install that fails leaves no directory it made for --root; a --sha256 that is not
/// one and a --root that is a file are usage errors, said as such, before anything is made.
#[test]
fn a_failed_vsix_install_leaves_no_root_it_made_and_bad_arguments_are_usage_errors() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("new/a/b");
    let missing = tmp.path().join("missing.vsix");
    let out = run(&["vsix", "install", s(&missing), "--root", s(&root)]);
    expect_code(&out, 7);
    assert!(!tmp.path().join("new").exists(), "{}", text(&out.stderr));
    let file = tmp.path().join("ext.vsix");
    fs::write(&file, vsix_bytes("acme", "widget", "1.0.0")).unwrap();
    let out = run(&[
        "vsix",
        "install",
        s(&file),
        "--root",
        s(&root),
        "--sha256",
        "zz",
    ]);
    expect_code(&out, 2);
    assert!(
        text(&out.stderr).contains("is not a sha256"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("new").exists());
    let not_dir = tmp.path().join("afile");
    fs::write(&not_dir, b"").unwrap();
    let out = run(&["vsix", "install", s(&file), "--root", s(&not_dir)]);
    expect_code(&out, 2);
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hostile_vsix_exits_6_and_writes_nothing_anywhere() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("evil.vsix");
    let manifest = package_json("evil", "ext", "1.0.0");
    fs::write(
        &file,
        zip_bytes(&[
            ("extension/package.json", manifest.as_bytes()),
            ("extension/../evil", b"escaped"),
        ]),
    )
    .unwrap();
    let root = tmp.path().join("extensions");
    fs::create_dir(&root).unwrap();
    let before = listing(tmp.path());

    let out = run(&["vsix", "install", s(&file), "--root", s(&root)]);
    expect_code(&out, 6);
    assert!(
        text(&out.stderr).contains("extension/../evil"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(listing(tmp.path()), before);
    assert!(!tmp.path().join("evil").exists());

    expect_code(&run(&["vsix", "manifest", s(&file)]), 6);
}

// ---------------------------------------------------------------------------------------
// assets

/// One asset of a generated catalog.
struct TestAsset {
    key: &'static str,
    name: &'static str,
    category: &'static str,
    directory: &'static str,
    revision: u64,
    files: Vec<(&'static str, &'static [u8])>,
}

impl TestAsset {
    fn zip(&self) -> Vec<u8> {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(f, _)| format!("{}/{f}", self.directory))
            .collect();
        let mut entries: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&self.files)
            .map(|(n, (_, d))| (n.as_str(), *d))
            .collect();
        entries.push(("ignored-outside.txt", b"not installed"));
        zip_bytes(&entries)
    }
}

/// Routes every asset's zip (at `/z/<directory>-<revision>.zip`) and the catalog at
/// `/catalog.json`, with `extra_entries` (raw JSON, e.g. bad ones) appended.
fn publish(origin: &Origin, assets: &[TestAsset], extra_entries: &[(&str, Value)]) {
    let mut doc = json!({"cars": [], "tracks": [], "drivers": []});
    for a in assets {
        let zip = a.zip();
        let path = format!("/z/{}-{}.zip", a.directory, a.revision);
        doc[a.key].as_array_mut().unwrap().push(json!({
            "name": a.name, "category": a.category, "author": "t", "license": "CC0",
            "url": origin.url(&path), "hashtype": "sha256", "hash": sha256_hex(&zip),
            "size": zip.len().to_string(), "thumbnail": origin.url("/thumb.png"),
            "directory": a.directory, "revision": a.revision.to_string(),
        }));
        origin.route(&path, zip, Behavior::Normal);
    }
    for (key, entry) in extra_entries {
        doc[*key].as_array_mut().unwrap().push(entry.clone());
    }
    origin.route(
        "/catalog.json",
        serde_json::to_vec(&doc).unwrap(),
        Behavior::Normal,
    );
}

fn game_assets() -> Vec<TestAsset> {
    vec![
        TestAsset {
            key: "cars",
            name: "Test Car",
            category: "GT",
            directory: "test-car",
            revision: 1,
            files: vec![("test-car.xml", b"<car/>"), ("textures/a.png", b"png")],
        },
        TestAsset {
            key: "tracks",
            name: "Test Track",
            category: "circuit",
            directory: "test-track",
            revision: 1,
            files: vec![("test-track.xml", b"<track/>"), ("old-only.ac", b"old")],
        },
        TestAsset {
            key: "drivers",
            name: "Test Bot",
            category: "simplix",
            directory: "test-bot",
            revision: 4,
            files: vec![("test-bot.xml", b"<robot/>")],
        },
    ]
}

/// A game root and a haul home in one temporary directory.
struct Game {
    _tmp: TempDir,
    root: PathBuf,
    home: PathBuf,
}

impl Game {
    fn new() -> Game {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("game");
        let home = tmp.path().join("home");
        Game {
            _tmp: tmp,
            root,
            home,
        }
    }

    /// `haul assets ARGS --root ROOT --home HOME` (`repo` subcommands get only --home).
    fn assets(&self, args: &[&str]) -> Output {
        let mut c = haul();
        c.arg("assets").args(args);
        if args.first() != Some(&"repo") {
            c.arg("--root").arg(&self.root);
        }
        c.arg("--home").arg(&self.home).output().unwrap()
    }

    fn ls(&self) -> Value {
        let out = self.assets(&["ls", "--json"]);
        expect_code(&out, 0);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn state_of(&self, ls: &Value, name: &str) -> (String, Value, Value) {
        let a = ls["assets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed in {ls}"));
        (
            a["state"].as_str().unwrap().to_string(),
            a["installed_revision"].clone(),
            a["catalog_revision"].clone(),
        )
    }
}

#[test]
fn assets_repo_add_ls_install_update_rm_end_to_end() {
    let origin = Origin::start().unwrap();
    let mut assets = game_assets();
    publish(&origin, &assets, &[]);
    let g = Game::new();
    let catalog = origin.url("/catalog.json");

    let added = g.assets(&["repo", "add", &catalog]);
    expect_code(&added, 0);
    assert!(
        text(&added.stdout).contains("3 assets"),
        "{}",
        text(&added.stdout)
    );
    let repos = g.assets(&["repo", "ls"]);
    assert!(text(&repos.stdout).contains(&catalog));

    let ls = g.ls();
    assert_eq!(ls["assets"].as_array().unwrap().len(), 3);
    let (state, installed, available) = g.state_of(&ls, "Test Track");
    assert_eq!(
        (state.as_str(), installed, available),
        ("available", Value::Null, json!(1))
    );
    assert_eq!(ls["assets"][0]["type"], "car");
    assert_eq!(ls["catalogs"][0]["source"], "network");

    // Two downloads at a time: the third waits in the engine's queue.
    let out = g.assets(&["install", "--all", "-j", "2", "--quiet"]);
    expect_code(&out, 0);
    let car = g.root.join("cars/models/test-car");
    let track = g.root.join("tracks/circuit/test-track");
    let bot = g.root.join("drivers/simplix/0");
    assert_eq!(
        listing(&car),
        vec![".revision", "test-car.xml", "textures/", "textures/a.png"]
    );
    assert_eq!(fs::read_to_string(track.join(".revision")).unwrap(), "1\n");
    assert_eq!(
        fs::read_to_string(bot.join(".haul-driver")).unwrap(),
        "Test Bot\n"
    );
    assert!(!g.root.join("ignored-outside.txt").exists());
    // Installed zips are not kept.
    assert!(listing(&g.home.join("downloads")).is_empty());
    let ls = g.ls();
    assert_eq!(g.state_of(&ls, "Test Bot").0, "installed");
    assert_eq!(g.state_of(&ls, "Test Bot").1, json!(4));

    // Installing again downloads nothing.
    origin.clear_requests();
    let again = g.assets(&["install", "Test Car"]);
    expect_code(&again, 0);
    assert!(text(&again.stdout).contains("already installed"));
    assert!(origin.requests_to("/z/test-car-1.zip").is_empty());

    // A new revision of the track with different files.
    assets[1].revision = 2;
    assets[1].files = vec![("test-track.xml", b"<track v2/>"), ("new-only.ac", b"new")];
    publish(&origin, &assets, &[]);
    let ls = g.ls();
    let (state, installed, available) = g.state_of(&ls, "Test Track");
    assert_eq!(
        (state.as_str(), installed, available),
        ("update-available", json!(1), json!(2))
    );
    origin.clear_requests();
    let out = g.assets(&["update"]);
    expect_code(&out, 0);
    assert!(
        text(&out.stdout).contains("replaced the old folder"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(origin.requests_to("/z/test-track-2.zip").len(), 1);
    assert!(origin.requests_to("/z/test-car-1.zip").is_empty());
    assert_eq!(
        listing(&track),
        vec![".revision", "new-only.ac", "test-track.xml"]
    );
    assert_eq!(fs::read_to_string(track.join(".revision")).unwrap(), "2\n");
    let out = g.assets(&["update"]);
    expect_code(&out, 0);
    assert!(text(&out.stdout).contains("up to date"));

    let out = g.assets(&["rm", "Test Car"]);
    expect_code(&out, 0);
    assert!(!car.exists());
    assert_eq!(g.state_of(&g.ls(), "Test Car").0, "available");
    expect_code(&g.assets(&["install", "No Such Asset"]), 2);

    expect_code(&g.assets(&["repo", "rm", &catalog]), 0);
    assert!(text(&g.assets(&["repo", "ls"]).stdout).trim().is_empty());
}

#[test]
fn unreachable_repository_falls_back_to_the_cached_catalog() {
    let origin = Origin::start().unwrap();
    publish(&origin, &game_assets(), &[]);
    let g = Game::new();
    expect_code(&g.assets(&["repo", "add", &origin.url("/catalog.json")]), 0);
    drop(origin);

    let out = g.assets(&["ls", "--json"]);
    expect_code(&out, 0);
    assert!(
        text(&out.stderr).contains("cached copy"),
        "{}",
        text(&out.stderr)
    );
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls["assets"].as_array().unwrap().len(), 3);
    assert_eq!(ls["catalogs"][0]["source"], "cache");
}

#[test]
fn repo_add_refuses_an_unreadable_or_missing_catalog_and_adds_nothing() {
    let origin = Origin::start().unwrap();
    origin.route("/not-json", b"<html>".to_vec(), Behavior::Normal);
    let g = Game::new();
    let bad = g.assets(&["repo", "add", &origin.url("/not-json")]);
    expect_code(&bad, 6);
    assert!(
        text(&bad.stderr).contains("not JSON"),
        "{}",
        text(&bad.stderr)
    );
    expect_code(&g.assets(&["repo", "add", &origin.url("/missing")]), 4);
    expect_code(
        &g.assets(&["repo", "add", "ftp://example.invalid/c.json"]),
        2,
    );
    let repos = g.assets(&["repo", "ls"]);
    expect_code(&repos, 0);
    assert!(text(&repos.stdout).trim().is_empty());
    // With no repository, listing says how to add one.
    let ls = g.assets(&["ls"]);
    expect_code(&ls, 2);
    assert!(text(&ls.stderr).contains("repo add"));
}

#[test]
fn a_bad_catalog_entry_is_named_and_skipped_while_the_good_ones_install() {
    let origin = Origin::start().unwrap();
    let bad = json!({
        "name": "Sneaky Track", "category": "circuit", "author": "x", "license": "x",
        "url": origin.url("/z/sneaky.zip"), "hashtype": "sha256", "hash": "00".repeat(32),
        "size": "10", "thumbnail": origin.url("/t.png"), "directory": "../../escape",
        "revision": "1",
    });
    publish(&origin, &game_assets(), &[("tracks", bad)]);
    let g = Game::new();
    let added = g.assets(&["repo", "add", &origin.url("/catalog.json")]);
    expect_code(&added, 0);
    assert!(text(&added.stderr).contains("Sneaky Track"));

    let out = g.assets(&["install", "--all", "--quiet"]);
    expect_code(&out, 0);
    assert!(
        text(&out.stderr).contains("Sneaky Track"),
        "{}",
        text(&out.stderr)
    );
    assert!(g.root.join("cars/models/test-car/test-car.xml").is_file());
    assert!(g
        .root
        .join("tracks/circuit/test-track/test-track.xml")
        .is_file());
    assert!(origin.requests_to("/z/sneaky.zip").is_empty());

    let ls = g.ls();
    assert_eq!(ls["assets"].as_array().unwrap().len(), 3);
    assert_eq!(ls["rejected"][0]["name"], "Sneaky Track");
    assert_eq!(ls["rejected"][0]["field"], "directory");
    // Asking for the bad one by name is an invalid-catalog failure.
    let named = g.assets(&["install", "Sneaky Track"]);
    expect_code(&named, 6);
    assert!(text(&named.stderr).contains("Sneaky Track"));
}

#[test]
fn an_asset_zip_that_does_not_match_its_sha256_exits_5_and_keeps_the_old_install() {
    let origin = Origin::start().unwrap();
    let mut assets = game_assets();
    assets.truncate(1);
    publish(&origin, &assets, &[]);
    let g = Game::new();
    expect_code(&g.assets(&["repo", "add", &origin.url("/catalog.json")]), 0);
    expect_code(&g.assets(&["install", "Test Car", "--quiet"]), 0);
    let car = g.root.join("cars/models/test-car");
    let before = listing(&car);

    // Revision 2 is listed, but the origin serves other bytes of the same size.
    assets[0].revision = 2;
    assets[0].files = vec![("test-car.xml", b"<car v2/>")];
    publish(&origin, &assets, &[]);
    let mut tampered = assets[0].zip();
    let last = tampered.len() - 30;
    tampered[last] ^= 0xff;
    origin.route("/z/test-car-2.zip", tampered, Behavior::Normal);

    let out = g.assets(&["update", "--retries", "0", "--quiet"]);
    expect_code(&out, 5);
    assert!(
        text(&out.stderr).contains("Test Car"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(listing(&car), before);
    assert_eq!(fs::read_to_string(car.join(".revision")).unwrap(), "1\n");
    assert_eq!(fs::read(car.join("test-car.xml")).unwrap(), b"<car/>");
    assert_eq!(g.state_of(&g.ls(), "Test Car").0, "update-available");
}

// ---------------------------------------------------------------------------------------
// extract and hash

#[test]
fn extract_replaces_the_directory_as_a_whole_and_refuses_traversal() {
    let tmp = TempDir::new().unwrap();
    let archive = tmp.path().join("a.zip");
    fs::write(
        &archive,
        zip_bytes(&[("top/", b""), ("top/a.txt", b"a"), ("b.txt", b"b")]),
    )
    .unwrap();
    let dest = tmp.path().join("out");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("stale.txt"), b"stale").unwrap();

    let out = run(&[
        "extract",
        s(&archive),
        "-d",
        s(&dest),
        "--quiet",
        "--no-sync",
    ]);
    expect_code(&out, 0);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(listing(&dest), vec!["b.txt", "top/", "top/a.txt"]);

    let evil = tmp.path().join("evil.zip");
    fs::write(
        &evil,
        zip_bytes(&[("ok.txt", b"ok"), ("../escape.txt", b"x")]),
    )
    .unwrap();
    let out = run(&["extract", s(&evil), "-d", s(&dest)]);
    expect_code(&out, 6);
    assert!(text(&out.stderr).contains("../escape.txt"));
    assert_eq!(listing(&dest), vec!["b.txt", "top/", "top/a.txt"]);
    assert!(!tmp.path().join("escape.txt").exists());

    let not_zip = tmp.path().join("not.zip");
    fs::write(&not_zip, b"this is not a zip").unwrap();
    expect_code(&run(&["extract", s(&not_zip), "-d", s(&dest)]), 6);
}

#[test]
fn hash_prints_lowercase_sha256_like_sha256sum() {
    let tmp = TempDir::new().unwrap();
    let a = tmp.path().join("a.bin");
    // Larger than the 1 MiB read buffer, so several reads are hashed.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&a, &body).unwrap();
    let empty = tmp.path().join("empty");
    fs::write(&empty, b"").unwrap();

    let out = run(&["hash", s(&a), s(&empty)]);
    expect_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}  {}\n{}  {}\n",
            sha256_hex(&body),
            s(&a),
            sha256_hex(b""),
            s(&empty)
        )
    );

    let missing = run(&["hash", s(&tmp.path().join("missing")), s(&a)]);
    expect_code(&missing, 7);
    assert!(text(&missing.stdout).contains(&sha256_hex(&body)));
}

#[test]
fn extract_waits_for_another_extraction_into_the_same_parent_and_only_then_recovers() {
    let dir = TempDir::new().unwrap();
    let archive = dir.path().join("a.zip");
    fs::write(&archive, zip_bytes(&[("a.txt", b"A")])).unwrap();
    let parent = dir.path().join("installs");
    fs::create_dir(&parent).unwrap();
    // Another extraction is writing its staging tree here and holds the parent's lock.
    let live = parent.join(".other.haul-staging-0");
    fs::create_dir(&live).unwrap();
    fs::write(live.join("half.txt"), b"in progress").unwrap();
    let held = haul_install::extract::lock_dir(&parent).unwrap();
    let mut child = haul()
        .args(["extract", s(&archive), "-d"])
        .arg(parent.join("mine"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none() && !parent.join("mine").exists(),
        "extract went ahead while another extraction held the parent"
    );
    assert!(
        live.join("half.txt").is_file(),
        "the live staging tree was touched"
    );
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // It said why it waited.
    let said = text(&out.stderr);
    assert!(
        said.contains("waiting for another install or extraction"),
        "{said}"
    );
    assert_eq!(fs::read(parent.join("mine/a.txt")).unwrap(), b"A");
    // Once the other is gone, its tree is a crash's leftover, and recovery removed it.
    assert!(!live.exists());
}

#[test]
fn extract_into_a_file_is_refused_and_a_failed_extract_removes_the_parents_it_made() {
    let dir = TempDir::new().unwrap();
    let archive = dir.path().join("a.zip");
    fs::write(&archive, zip_bytes(&[("a.txt", b"A")])).unwrap();
    let file = dir.path().join("precious");
    fs::write(&file, b"keep").unwrap();
    let out = run(&["extract", s(&archive), "-d", s(&file)]);
    expect_code(&out, 2);
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read(&file).unwrap(), b"keep");
    let out = run(&["extract", s(&archive), "-d", s(&archive)]);
    expect_code(&out, 2);
    assert!(archive.is_file());
    // A bad archive into new nested parents leaves none of them behind.
    let bad = dir.path().join("bad.zip");
    fs::write(&bad, b"not a zip at all").unwrap();
    let out = run(&[
        "extract",
        s(&bad),
        "-d",
        s(&dir.path().join("new/nested/dest")),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !dir.path().join("new").exists(),
        "left {:?}",
        listing(dir.path())
    );
}

#[test]
fn extract_into_a_250_byte_name_replaces_it_and_a_longer_name_is_a_usage_error() {
    let dir = TempDir::new().unwrap();
    let archive = dir.path().join("a.zip");
    // 250 bytes: a valid ext4 name, too long for `.<name>.haul-staging-0` beside it.
    let name = "é".repeat(120) + &"n".repeat(10);
    let dest = dir.path().join(&name);
    for content in [&b"one"[..], b"two"] {
        fs::write(&archive, zip_bytes(&[("a.txt", content)])).unwrap();
        expect_code(
            &run(&["extract", s(&archive), "-d", s(&dest), "--quiet"]),
            0,
        );
        assert_eq!(fs::read(dest.join("a.txt")).unwrap(), content);
    }
    assert_eq!(
        listing(dir.path()),
        vec![
            "a.zip".to_string(),
            format!("{name}/"),
            format!("{name}/a.txt")
        ]
    );
    let too_long = dir.path().join("x".repeat(256));
    let out = run(&["extract", s(&archive), "-d", s(&too_long)]);
    expect_code(&out, 2);
    assert!(
        text(&out.stderr).contains("256 bytes"),
        "{}",
        text(&out.stderr)
    );
}

/// A stored zip of `count` small files spread over 100 directories, written with the zip
/// crate's writer straight to `path`.
fn write_many_files_zip(path: &Path, count: usize) {
    let mut w = ZipWriter::new(std::io::BufWriter::new(fs::File::create(path).unwrap()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    let body = [b'x'; 100];
    for i in 0..count {
        w.start_file(format!("d{}/f{i}", i % 100), options).unwrap();
        w.write_all(&body).unwrap();
    }
    w.finish().unwrap();
}

/// The names in `dir` that look like a staging tree of `haul extract`.
fn staging_trees(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".haul-staging-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `haul extract ARCHIVE -d DEST`, waits for its staging tree beside `dest` to
/// appear, sends `signal` (`INT`, `TERM`) and returns what the command did.
fn extract_interrupted(archive: &Path, dest: &Path, signal: &str) -> Output {
    interrupted(
        &["extract", s(archive), "-d", s(dest)],
        dest.parent().unwrap(),
        signal,
    )
}

/// Starts haul with `args`, waits for a staging tree to appear in `parent`, sends `signal`
/// and returns what the command did.
fn interrupted(args: &[&str], parent: &Path, signal: &str) -> Output {
    let mut child = haul()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while staging_trees(parent).is_empty() {
        if child.try_wait().unwrap().is_some() {
            panic!(
                "extract ended before it was interrupted: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "no staging tree appeared in {}",
            parent.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}

/// An extraction cannot be resumed, so a signal stops it like a failure: no staging tree,
/// no parent it created, the old tree as it was, one line saying so, exit 128 + the signal.
#[test]
fn an_interrupted_extract_removes_its_staging_tree_and_parents_and_keeps_the_old_tree() {
    let dir = TempDir::new().unwrap();
    let archive = dir.path().join("big.zip");
    // Tens of thousands of files: well over a second to extract on a slow machine, so the
    // signal lands while the staging tree is being written.
    write_many_files_zip(&archive, 40_000);

    // Into parents the command creates: all of them go again.
    let dest = dir.path().join("newp/deep/out");
    let out = extract_interrupted(&archive, &dest, "INT");
    expect_code(&out, 130);
    let said = text(&out.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("interrupted") && said.contains("nothing was changed"),
        "{said}"
    );
    assert_eq!(
        listing(dir.path()),
        vec!["big.zip"],
        "newp/ and below are gone"
    );

    // Over an existing tree: it stays as it was.
    let dest = dir.path().join("installed");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("old.txt"), b"old").unwrap();
    let out = extract_interrupted(&archive, &dest, "TERM");
    expect_code(&out, 143);
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        staging_trees(dir.path()).is_empty(),
        "{:?}",
        listing(dir.path())
    );
    assert_eq!(listing(&dest), vec!["old.txt"]);
    assert_eq!(fs::read(dest.join("old.txt")).unwrap(), b"old");
    assert_eq!(
        listing(dir.path()),
        vec!["big.zip", "installed/", "installed/old.txt"]
    );
}

/// A signal during a vsix install's extraction stops it like `haul extract`: exit 128 + the
/// signal, no staging tree and no extension folder in the root (it used to run to the end,
/// or, for a local file, die by the signal and leave its staging tree).
#[test]
fn an_interrupted_vsix_install_leaves_no_staging_tree_and_no_extension() {
    let dir = TempDir::new().unwrap();
    let manifest = package_json("acme", "big", "1.0.0");
    let file = dir.path().join("big.vsix");
    let mut w = ZipWriter::new(std::io::BufWriter::new(fs::File::create(&file).unwrap()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    w.start_file("extension/package.json", options).unwrap();
    w.write_all(manifest.as_bytes()).unwrap();
    for i in 0..40_000 {
        w.start_file(format!("extension/d{}/f{i}", i % 100), options)
            .unwrap();
        w.write_all(&[b'x'; 100]).unwrap();
    }
    w.finish().unwrap();
    let root = dir.path().join("extensions");
    fs::create_dir(&root).unwrap();
    let out = interrupted(
        &["vsix", "install", s(&file), "--root", s(&root)],
        &root,
        "INT",
    );
    expect_code(&out, 130);
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert!(staging_trees(&root).is_empty(), "{:?}", listing(&root));
    assert!(listing(&root).is_empty(), "{:?}", listing(&root));
}

/// A vsix download interrupted by a signal keeps its partial where the same command finds
/// it: the message's promise holds, the next run resumes with a Range request and installs,
/// and the download's directory beside the root is gone afterwards (it used to download
/// into a random temporary directory that the interruption deleted).
#[test]
fn an_interrupted_vsix_download_is_resumed_by_the_same_command() {
    let manifest = package_json("acme", "heavy", "1.0.0");
    // Incompressible payload, so the archive is as large as its content.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let payload: Vec<u8> = (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    w.start_file("extension/package.json", stored).unwrap();
    w.write_all(manifest.as_bytes()).unwrap();
    w.start_file("extension/blob.bin", stored).unwrap();
    w.write_all(&payload).unwrap();
    let body = w.finish().unwrap().into_inner();
    let origin = Origin::start().unwrap();
    origin.route(
        "/heavy.vsix",
        body.clone(),
        Behavior::Stall { after: 1_500_000 },
    );
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("extensions");
    let url = origin.url("/heavy.vsix");
    let downloads = || {
        fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".haul-vsix-downloads-")
            })
    };
    let child = haul()
        .args(["vsix", "install", &url, "--root", s(&root)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let partial_len = || -> u64 {
        let Some(downloads) = downloads() else {
            return 0;
        };
        fs::read_dir(&downloads)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".haul-part"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    while partial_len() < 1_000_000 {
        assert!(started.elapsed().as_secs() < 20, "the partial never grew");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let first = child.wait_with_output().unwrap();
    expect_code(&first, 130);
    assert!(
        text(&first.stderr).contains("the same command again resumes it"),
        "{}",
        text(&first.stderr)
    );
    assert!(partial_len() >= 1_000_000, "the partial is kept");

    origin.route("/heavy.vsix", body, Behavior::Normal);
    let second = run(&["vsix", "install", &url, "--root", s(&root), "--quiet"]);
    expect_code(&second, 0);
    let requests = origin.requests_to("/heavy.vsix");
    let last = requests.last().unwrap();
    assert!(
        last.headers
            .iter()
            .any(|(name, value)| name == "range" && value.starts_with("bytes=")),
        "{:?}",
        last.headers
    );
    assert_eq!(
        fs::read(root.join("acme.heavy-1.0.0/blob.bin")).unwrap(),
        payload
    );
    assert_eq!(downloads(), None, "the download's directory is gone");
}

/// A signal during the extraction of a .vsix downloaded from a URL keeps the verified file:
/// the same command again installs it without fetching it again. A URL refused before the
/// download leaves no downloads directory (nor the root's parents made for it).
#[test]
fn an_install_interrupted_after_its_download_keeps_the_vsix_and_a_refused_url_leaves_nothing() {
    let manifest = package_json("acme", "many", "1.0.0");
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    w.start_file("extension/package.json", options).unwrap();
    w.write_all(manifest.as_bytes()).unwrap();
    for i in 0..40_000 {
        w.start_file(format!("extension/d{}/f{i}", i % 100), options)
            .unwrap();
        w.write_all(&[b'x'; 100]).unwrap();
    }
    let body = w.finish().unwrap().into_inner();
    let sha = sha256_hex(&body);
    let origin = Origin::start().unwrap();
    origin.route("/many.vsix", body, Behavior::Normal);
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("extensions");
    let url = origin.url("/many.vsix");
    let install = [
        "vsix",
        "install",
        &url,
        "--root",
        s(&root),
        "--sha256",
        &sha,
    ];
    fs::create_dir(&root).unwrap();
    let out = interrupted(&install, &root, "INT");
    expect_code(&out, 130);
    assert_eq!(origin.requests_to("/many.vsix").len(), 1);
    assert!(staging_trees(&root).is_empty(), "{:?}", listing(&root));
    let again = run(&install);
    expect_code(&again, 0);
    assert_eq!(
        origin.requests_to("/many.vsix").len(),
        1,
        "installed from the kept file"
    );
    assert!(root.join("acme.many-1.0.0/package.json").is_file());
    // Nothing but the root beside it: the kept file went once installed.
    let beside: Vec<String> = listing(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("extensions/"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // A URL with credentials is refused before anything is made.
    let new_root = tmp.path().join("new/ext");
    let refused = run(&[
        "vsix",
        "install",
        "http://user:pw@127.0.0.1:1/x.vsix",
        "--root",
        s(&new_root),
    ]);
    expect_code(&refused, 2);
    assert!(
        !tmp.path().join("new").exists(),
        "{:?}",
        listing(tmp.path())
    );
}

/// A signal during an asset's extraction keeps its verified zip (it was deleted with the
/// stopped install): the same command again installs it without fetching it again.
#[test]
fn an_asset_install_interrupted_during_extraction_keeps_its_zip() {
    let files: Vec<(&'static str, &'static [u8])> = (0..40_000)
        .map(|i| {
            let name: &'static str = Box::leak(format!("d{}/f{i}", i % 100).into_boxed_str());
            (name, &b"x"[..])
        })
        .collect();
    let big = TestAsset {
        key: "cars",
        name: "Big Car",
        category: "GT",
        directory: "big-car",
        revision: 1,
        files,
    };
    let origin = Origin::start().unwrap();
    publish(&origin, std::slice::from_ref(&big), &[]);
    let g = Game::new();
    expect_code(&g.assets(&["repo", "add", &origin.url("/catalog.json")]), 0);
    let install = [
        "assets",
        "install",
        "Big Car",
        "--root",
        s(&g.root),
        "--home",
        s(&g.home),
    ];
    let out = interrupted(&install, &g.root.join("cars/models"), "INT");
    expect_code(&out, 130);
    assert_eq!(origin.requests_to("/z/big-car-1.zip").len(), 1);
    let again = run(&install);
    expect_code(&again, 0);
    assert_eq!(
        origin.requests_to("/z/big-car-1.zip").len(),
        1,
        "installed from the kept zip"
    );
    assert!(g.root.join("cars/models/big-car/d0/f0").is_file());
}
