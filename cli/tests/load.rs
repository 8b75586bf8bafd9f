//! `haul load` and `haul cache` end to end: the real binary against a local origin serving
//! manifests signed here with Ed25519 and ECDSA P-256 keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use haul_origin::{Behavior, Origin};
use sha2::{Digest, Sha256};

fn haul() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haul"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::ecdsa::SigningKey),
}

/// A manifest signer and the `--key` argument that trusts it.
struct Signer {
    name: &'static str,
    key: SigningKey,
}

impl Signer {
    fn ed25519(name: &'static str, seed: u8) -> Signer {
        Signer {
            name,
            key: SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])),
        }
    }

    fn ecdsa_p256(name: &'static str, scalar: u8) -> Signer {
        let bytes = p256::FieldBytes::from([scalar; 32]);
        Signer {
            name,
            key: SigningKey::EcdsaP256(p256::ecdsa::SigningKey::from_bytes(&bytes).unwrap()),
        }
    }

    fn key_arg(&self) -> String {
        match &self.key {
            SigningKey::Ed25519(key) => format!(
                "{}:ed25519:{}",
                self.name,
                hex::encode(key.verifying_key().to_bytes())
            ),
            SigningKey::EcdsaP256(key) => format!(
                "{}:ecdsa-p256:{}",
                self.name,
                hex::encode(key.verifying_key().to_encoded_point(false).as_bytes())
            ),
        }
    }

    fn sign_hex(&self, message: &[u8]) -> String {
        match &self.key {
            SigningKey::Ed25519(key) => {
                hex::encode(ed25519_dalek::Signer::sign(key, message).to_bytes())
            }
            SigningKey::EcdsaP256(key) => {
                let signature: p256::ecdsa::Signature =
                    p256::ecdsa::signature::Signer::sign(key, message);
                hex::encode(signature.to_der())
            }
        }
    }
}

/// A module of a test manifest; `url` is relative to the manifest.
#[derive(Clone)]
struct Module {
    id: &'static str,
    url: &'static str,
    bytes: Vec<u8>,
    deps: Vec<&'static str>,
}

fn module(id: &'static str, url: &'static str, bytes: &[u8], deps: &[&'static str]) -> Module {
    Module {
        id,
        url,
        bytes: bytes.to_vec(),
        deps: deps.to_vec(),
    }
}

/// A manifest listing `modules` in the given document order, signed by `signers`.
fn manifest(modules: &[Module], fresh_at: u64, signers: &[&Signer]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for module in modules {
        map.insert(
            module.id.to_owned(),
            serde_json::json!({
                "url": module.url,
                "sha256": sha256_hex(&module.bytes),
                "dependsOnIds": module.deps,
            }),
        );
    }
    let mut document = serde_json::json!({
        "unsigned": {"signatures": {}, "freshAtEpochMs": fresh_at, "baseUrl": null},
        "modules": map,
        "mainModuleId": modules.first().map(|module| module.id),
        "mainFunction": "test.main",
        "version": format!("v{fresh_at}"),
    });
    let message = haul_modules::signed_bytes(&serde_json::to_vec(&document).unwrap()).unwrap();
    for signer in signers {
        document["unsigned"]["signatures"][signer.name] =
            serde_json::Value::String(signer.sign_hex(&message));
    }
    serde_json::to_vec_pretty(&document).unwrap()
}

fn manifest_path(app: &str) -> String {
    format!("/{app}/manifest.json")
}

/// The origin path a module of `app` is served at.
fn module_path(app: &str, module: &Module) -> String {
    match module.url.strip_prefix("../") {
        Some(rest) => format!("/{rest}"),
        None => format!("/{app}/{}", module.url),
    }
}

/// Serves a signed manifest for `app` and its modules; returns the manifest's bytes.
fn publish(
    origin: &Origin,
    app: &str,
    modules: &[Module],
    fresh_at: u64,
    signers: &[&Signer],
) -> Vec<u8> {
    let raw = manifest(modules, fresh_at, signers);
    origin.route(&manifest_path(app), raw.clone(), Behavior::Normal);
    for module in modules {
        origin.route(
            &module_path(app, module),
            module.bytes.clone(),
            Behavior::Normal,
        );
    }
    raw
}

fn kotlin() -> Module {
    module(
        "./kotlin.js",
        "../lib/kotlin.zipline",
        b"kotlin stdlib, shared by every app",
        &[],
    )
}

fn app_module(app: &'static str, id: &'static str, version: &str) -> Module {
    module(
        id,
        "app.zipline",
        format!("{app} code {version}").as_bytes(),
        &["./kotlin.js"],
    )
}

fn load_command(manifest_url: &str, app: &str, cache: &Path, keys: &[&Signer]) -> Command {
    let mut command = haul();
    command
        .args(["load", "--app", app, "--manifest", manifest_url, "--cache"])
        .arg(cache)
        .args(["--retries", "0"]);
    for key in keys {
        command.args(["--key", &key.key_arg()]);
    }
    command
}

fn load(origin_url: &str, app: &str, cache: &Path, keys: &[&Signer], extra: &[&str]) -> Output {
    load_command(origin_url, app, cache, keys)
        .args(extra)
        .output()
        .unwrap()
}

fn cache_command(subcommand: &[&str], cache: &Path) -> Output {
    haul()
        .arg("cache")
        .args(subcommand)
        .arg("--cache")
        .arg(cache)
        .output()
        .unwrap()
}

fn cache_json(subcommand: &[&str], cache: &Path) -> serde_json::Value {
    let mut args = subcommand.to_vec();
    args.push("--json");
    let output = cache_command(&args, cache);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn files_in(cache: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cache.join("files"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn pinned_hashes(cache: &Path) -> BTreeSet<String> {
    cache_json(&["pins"], cache)["apps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|app| app["pins"].as_array().unwrap().clone())
        .map(|hash| hash.as_str().unwrap().to_owned())
        .collect()
}

/// The load order lines of `haul load`'s human output: (id, source, path).
fn load_order(stdout: &str) -> Vec<(String, String, PathBuf)> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("load order"))
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let _position = words.next()?;
            Some((
                words.next()?.to_owned(),
                words.next()?.to_owned(),
                PathBuf::from(words.next()?),
            ))
        })
        .collect()
}

#[test]
fn good_load_prints_dependencies_first_with_each_modules_source_and_path() {
    let origin = Origin::start().unwrap();
    let old_key = Signer::ed25519("old", 1);
    let new_key = Signer::ecdsa_p256("new", 2);
    // Document order puts the app first; the load order must put dependencies first.
    let modules = [
        module(
            "./app.js",
            "app.zipline",
            b"app code",
            &["./util.js", "./kotlin.js"],
        ),
        module("./util.js", "util.zipline", b"util code", &["./kotlin.js"]),
        kotlin(),
    ];
    let raw = publish(&origin, "news", &modules, 100, &[&new_key]);
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));

    let first = load(&url, "news", cache.path(), &[&old_key, &new_key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    // A new cache's manifest is fetched while its index is created, and only once.
    assert_eq!(origin.requests_to(&manifest_path("news")).len(), 1);
    let stdout = text(&first.stdout);
    assert!(stdout.contains("manifest: network"), "{stdout}");
    assert!(stdout.contains(&sha256_hex(&raw)), "{stdout}");
    assert!(stdout.contains("verified by key \"new\""), "{stdout}");
    let order = load_order(&stdout);
    let ids: Vec<&str> = order.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["./kotlin.js", "./util.js", "./app.js"], "{stdout}");
    for (id, source, path) in &order {
        assert_eq!(source, "network", "{stdout}");
        let expected = modules.iter().find(|module| module.id == id).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), expected.bytes);
        assert_eq!(
            path,
            &cache.path().join("files").join(sha256_hex(&expected.bytes))
        );
    }

    let second = load(&url, "news", cache.path(), &[&new_key], &["--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    assert_eq!(origin.requests_to(&manifest_path("news")).len(), 2);
    let result: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(result["manifest"]["source"], "network");
    assert_eq!(result["manifest"]["verified_by"], "new");
    let sources: Vec<(&str, &str)> = result["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|module| {
            (
                module["id"].as_str().unwrap(),
                module["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("./kotlin.js", "store"),
            ("./util.js", "store"),
            ("./app.js", "store")
        ]
    );
    for module in &modules {
        assert_eq!(
            origin.requests_to(&module_path("news", module)).len(),
            1,
            "{} was downloaded again",
            module.id
        );
    }
}

#[test]
fn two_apps_sharing_a_module_store_it_once() {
    let origin = Origin::start().unwrap();
    let ed = Signer::ed25519("release", 7);
    let ec = Signer::ecdsa_p256("release-p256", 9);
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[&ed],
    );
    publish(
        &origin,
        "mail",
        &[app_module("mail", "./mail.js", "v1"), kotlin()],
        100,
        &[&ec],
    );
    let cache = tempfile::TempDir::new().unwrap();

    let news = load(
        &origin.url(&manifest_path("news")),
        "news",
        cache.path(),
        &[&ed],
        &[],
    );
    assert_eq!(news.status.code(), Some(0), "{}", describe(&news));
    let mail = load(
        &origin.url(&manifest_path("mail")),
        "mail",
        cache.path(),
        &[&ec],
        &[],
    );
    assert_eq!(mail.status.code(), Some(0), "{}", describe(&mail));
    let order = load_order(&text(&mail.stdout));
    assert_eq!(order[0].0, "./kotlin.js");
    assert_eq!(order[0].1, "store", "{}", describe(&mail));
    assert_eq!(order[1].1, "network", "{}", describe(&mail));

    // Two manifests, kotlin once, one module per app.
    let files = files_in(cache.path());
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(files.contains(&sha256_hex(&kotlin().bytes)));
    assert_eq!(origin.requests_to("/lib/kotlin.zipline").len(), 1);
    let listing = cache_json(&["ls"], cache.path());
    let kotlin_row = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["sha256"] == sha256_hex(&kotlin().bytes))
        .unwrap();
    assert_eq!(kotlin_row["pinned_by"], serde_json::json!(["mail", "news"]));
}

#[test]
fn a_tampered_module_loads_the_pinned_release_keeping_its_pins_or_exits_5_without_one() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[&key],
    );
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));
    let first = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let pins_before = cache_command(&["pins"], cache.path());
    let files_before = files_in(cache.path());

    // v2 names new bytes for news.js, but the origin serves something else.
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v2"), kotlin()],
        200,
        &[&key],
    );
    origin.route(
        "/news/app.zipline",
        b"news code v2 with a backdoor".to_vec(),
        Behavior::Normal,
    );
    // With nothing pinned, the tampered module fails the load (exit 5).
    let fresh = tempfile::TempDir::new().unwrap();
    let tampered = load(&url, "news", fresh.path(), &[&key], &[]);
    assert_eq!(tampered.status.code(), Some(5), "{}", describe(&tampered));
    assert!(
        text(&tampered.stderr).contains("sha256 mismatch"),
        "{}",
        describe(&tampered)
    );
    // With v1 pinned, v1 loads (its modules were verified, and are again by hash) and the
    // output says why v2 was not.
    let fallback = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(fallback.status.code(), Some(0), "{}", describe(&fallback));
    let stdout = text(&fallback.stdout);
    assert!(
        stdout.contains("manifest: pinned in the cache (fallback)"),
        "{stdout}"
    );
    assert!(stdout.contains("sha256 mismatch"), "{stdout}");

    let pins_after = cache_command(&["pins"], cache.path());
    assert_eq!(pins_after.status.code(), Some(0));
    assert!(!pins_after.stdout.is_empty());
    assert_eq!(text(&pins_after.stdout), text(&pins_before.stdout));
    assert_eq!(files_in(cache.path()), files_before);
}

/// The app "news" (news.js v1 and the shared kotlin module, signed by `key`) served by a new
/// origin and loaded once into a new cache.
struct NewsLoaded {
    origin: Origin,
    /// The manifest's URL and bytes.
    url: String,
    raw: Vec<u8>,
    cache: tempfile::TempDir,
}

fn news_loaded_once(key: &Signer) -> NewsLoaded {
    let origin = Origin::start().unwrap();
    let raw = publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[key],
    );
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));
    let first = load(&url, "news", cache.path(), &[key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    NewsLoaded {
        origin,
        url,
        raw,
        cache,
    }
}

#[test]
fn network_failure_falls_back_to_the_pinned_manifest_and_says_so() {
    let key = Signer::ed25519("release", 7);
    let NewsLoaded {
        origin,
        url,
        raw,
        cache,
    } = news_loaded_once(&key);

    drop(origin);
    let offline = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(offline.status.code(), Some(0), "{}", describe(&offline));
    let stdout = text(&offline.stdout);
    assert!(
        stdout
            .contains("fallback: the network's release could not be used, so the last good pinned manifest was loaded"),
        "{stdout}"
    );
    assert!(stdout.contains(&sha256_hex(&raw)), "{stdout}");
    let order = load_order(&stdout);
    assert_eq!(order.len(), 2);
    assert!(
        order.iter().all(|(_, source, _)| source == "store"),
        "{stdout}"
    );

    let json = load(&url, "news", cache.path(), &[&key], &["--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", describe(&json));
    let result: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(result["manifest"]["source"], "pinned-fallback");
    assert!(result["manifest"]["fallback_reason"]
        .as_str()
        .unwrap()
        .contains("connect"));

    // Nothing pinned to fall back to: a network failure (exit 3).
    let empty = tempfile::TempDir::new().unwrap();
    let nothing = load(&url, "news", empty.path(), &[&key], &[]);
    assert_eq!(nothing.status.code(), Some(3), "{}", describe(&nothing));

    // A pinned manifest whose module is gone cannot stand in: the network error, and why the
    // fallback did not do, are both said.
    let kotlin_file = cache.path().join("files").join(sha256_hex(&kotlin().bytes));
    std::fs::remove_file(&kotlin_file).unwrap();
    let broken = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(broken.status.code(), Some(3), "{}", describe(&broken));
    let stderr = text(&broken.stderr);
    assert!(
        stderr.contains("manifest cannot replace the network"),
        "{stderr}"
    );
}

/// A manifest server that trickles fails the fetch under --low-speed-limit/--low-speed-time
/// (as `haul get` has them) and the load falls back to the pinned manifest, instead of
/// holding the load and the cache for minutes.
#[test]
fn a_trickling_manifest_server_falls_back_to_the_pinned_manifest_under_the_low_speed_limit() {
    let key = Signer::ed25519("release", 7);
    let NewsLoaded {
        origin,
        url,
        raw,
        cache,
    } = news_loaded_once(&key);
    origin.route(
        &manifest_path("news"),
        raw.clone(),
        Behavior::Trickle { bytes_per_sec: 20 },
    );
    let slow = load(
        &url,
        "news",
        cache.path(),
        &[&key],
        &["--json", "--low-speed-limit", "1K", "--low-speed-time", "1"],
    );
    assert_eq!(slow.status.code(), Some(0), "{}", describe(&slow));
    let result: serde_json::Value = serde_json::from_slice(&slow.stdout).unwrap();
    assert_eq!(result["manifest"]["source"], "pinned-fallback", "{result}");
    assert_eq!(result["manifest"]["sha256"], sha256_hex(&raw), "{result}");
}

/// An --embedded directory that does not exist is a usage error (a typo), not an empty tier
/// skipped without a word; nothing is fetched and no cache is made.
#[test]
fn an_embedded_directory_that_does_not_exist_is_a_usage_error() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    publish(&origin, "news", &[kotlin()], 100, &[&key]);
    let dir = tempfile::TempDir::new().unwrap();
    let cache = dir.path().join("cache");
    let typo = load(
        &origin.url(&manifest_path("news")),
        "news",
        &cache,
        &[&key],
        &["--embedded", "/nonexistent/shipped"],
    );
    assert_eq!(typo.status.code(), Some(2), "{}", describe(&typo));
    assert!(
        text(&typo.stderr).contains("--embedded /nonexistent/shipped is not a directory"),
        "{}",
        describe(&typo)
    );
    assert!(origin.requests().is_empty());
    assert!(!cache.exists());
}

#[test]
fn prune_to_budget_zero_evicts_only_unpinned_files() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    let v1 = publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[&key],
    );
    publish(
        &origin,
        "mail",
        &[app_module("mail", "./mail.js", "v1"), kotlin()],
        100,
        &[&key],
    );
    let cache = tempfile::TempDir::new().unwrap();
    for app in ["news", "mail"] {
        let output = load(
            &origin.url(&manifest_path(app)),
            app,
            cache.path(),
            &[&key],
            &[],
        );
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }
    // news moves to v2: its v1 manifest and module are no longer pinned.
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v2"), kotlin()],
        200,
        &[&key],
    );
    let v2 = load(
        &origin.url(&manifest_path("news")),
        "news",
        cache.path(),
        &[&key],
        &[],
    );
    assert_eq!(v2.status.code(), Some(0), "{}", describe(&v2));
    assert_eq!(files_in(cache.path()).len(), 7);

    let pinned = pinned_hashes(cache.path());
    assert_eq!(pinned.len(), 5, "{pinned:?}");
    let report = cache_json(&["prune", "--budget", "0"], cache.path());
    let evicted: BTreeSet<String> = report["evicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| hash.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = [
        sha256_hex(&v1),
        sha256_hex(&app_module("news", "./news.js", "v1").bytes),
    ]
    .into_iter()
    .collect();
    assert_eq!(evicted, expected);
    assert_eq!(report["fits_budget"], false);
    assert_eq!(files_in(cache.path()), pinned);
    assert_eq!(pinned_hashes(cache.path()), pinned);

    // Pruning again finds nothing more to evict.
    let again = cache_json(&["prune", "--budget", "0"], cache.path());
    assert_eq!(again["evicted"], serde_json::json!([]));
    assert_eq!(files_in(cache.path()), pinned);
}

/// Whether the tests run as root, for whom permission bits mean nothing.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `haul` as a user that permission bits apply to: the tests' own user, or, when that is
/// root, nobody (through `setpriv`; `None` when it is missing). A cache it must write is
/// first given to that user with [`give_to_unprivileged`].
fn haul_unprivileged() -> Option<Command> {
    if !running_as_root() {
        return Some(haul());
    }
    let found = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("setpriv is missing: skipping a test that needs an unprivileged user");
        return None;
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_haul"));
    Some(command)
}

/// Makes `dir` (a temporary directory) reachable by [`haul_unprivileged`]'s user, and when
/// `own`, that user's to write.
fn give_to_unprivileged(dir: &Path, own: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if own && running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `cache verify` reports a stored file that grew and one that was deleted from outside,
/// and exits 5: opening the store removes and forgets them before the check proper, and
/// verify used to say "0 corrupt, 0 missing" and exit 0.
#[test]
fn verify_reports_stored_files_of_the_wrong_size_or_missing_and_exits_5() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    let news = app_module("news", "./news.js", "v1");
    publish(&origin, "news", &[news.clone(), kotlin()], 100, &[&key]);
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));
    let first = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let files = cache.path().join("files");
    let (kotlin_sha, news_sha) = (sha256_hex(&kotlin().bytes), sha256_hex(&news.bytes));
    let mut grown = kotlin().bytes.clone();
    grown.extend_from_slice(b"appended");
    std::fs::write(files.join(&kotlin_sha), grown).unwrap();
    std::fs::remove_file(files.join(&news_sha)).unwrap();
    let verify = haul()
        .args(["cache", "verify", "--cache"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(5), "{}", describe(&verify));
    let stdout = text(&verify.stdout);
    assert!(
        stdout.contains(&format!("wrong size, removed: {kotlin_sha}")),
        "{}",
        describe(&verify)
    );
    assert!(
        stdout.contains(&format!("missing, forgotten: {news_sha}")),
        "{}",
        describe(&verify)
    );
    assert!(
        stdout.contains("1 corrupt, 1 missing"),
        "{}",
        describe(&verify)
    );
    // Still pinned, no longer stored: `cache pins` says so.
    let pins = cache_command(&["pins"], cache.path());
    let listed = text(&pins.stdout);
    for sha256 in [&kotlin_sha, &news_sha] {
        assert!(
            listed.contains(&format!(
                "{sha256}  (not stored: the next load from the network fetches it again)"
            )),
            "{listed}"
        );
    }
    let pins = cache_json(&["pins"], cache.path());
    let mut missing: Vec<&str> = pins["apps"][0]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    missing.sort();
    let mut expected = vec![kotlin_sha.as_str(), news_sha.as_str()];
    expected.sort();
    assert_eq!(missing, expected);
}

#[test]
fn an_unreadable_stored_module_is_fetched_again_and_verify_reports_each_one() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[&key],
    );
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));
    let first = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    give_to_unprivileged(cache.path(), true);
    let Some(_) = haul_unprivileged() else { return };
    let kotlin_file = cache.path().join("files").join(sha256_hex(&kotlin().bytes));
    let news_file = cache
        .path()
        .join("files")
        .join(sha256_hex(&app_module("news", "./news.js", "v1").bytes));

    // A load removes the unreadable file and fetches it again.
    set_mode(&kotlin_file, 0o000);
    let mut command = haul_unprivileged().unwrap();
    command
        .args(["load", "--app", "news", "--manifest", &url, "--cache"])
        .arg(cache.path())
        .args(["--retries", "0", "--key", &key.key_arg()]);
    let reload = command.output().unwrap();
    assert_eq!(reload.status.code(), Some(0), "{}", describe(&reload));
    assert_eq!(origin.requests_to("/lib/kotlin.zipline").len(), 2);
    assert_eq!(std::fs::read(&kotlin_file).unwrap(), kotlin().bytes);

    // `cache verify` reports every unreadable file and goes on, then exits non-zero. When
    // the tests run as root, first with files it can neither read nor remove (root's, in a
    // sticky files/ everyone may write).
    set_mode(&kotlin_file, 0o000);
    set_mode(&news_file, 0o000);
    let verify = |json: bool| {
        let mut command = haul_unprivileged().unwrap();
        command
            .args(["cache", "verify", "--cache"])
            .arg(cache.path());
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    if running_as_root() {
        let files_dir = cache.path().join("files");
        for path in [&files_dir, &kotlin_file, &news_file] {
            std::os::unix::fs::chown(path, Some(0), Some(0)).unwrap();
        }
        set_mode(&files_dir, 0o1777);
        let stuck = verify(false);
        std::os::unix::fs::chown(&files_dir, Some(65534), Some(65534)).unwrap();
        set_mode(&files_dir, 0o755);
        assert_eq!(stuck.status.code(), Some(7), "{}", describe(&stuck));
        let stdout = text(&stuck.stdout);
        for file in [&kotlin_file, &news_file] {
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(
                stdout.contains(&format!("unreadable, kept: {name}")),
                "{}",
                describe(&stuck)
            );
            assert!(
                text(&stuck.stderr).contains(&file.display().to_string()),
                "{}",
                describe(&stuck)
            );
        }
        assert!(
            stdout.contains("checked 3 files: 1 good, 0 corrupt, 0 missing, 2 unreadable"),
            "{}",
            describe(&stuck)
        );
    }
    let removed = verify(true);
    assert_eq!(removed.status.code(), Some(5), "{}", describe(&removed));
    let report: serde_json::Value = serde_json::from_slice(&removed.stdout).unwrap();
    assert_eq!(report["unreadable_removed"].as_array().unwrap().len(), 2);
    assert!(!kotlin_file.exists() && !news_file.exists());
}

#[test]
fn a_read_only_cache_can_be_listed_and_writers_say_it_is_not_writable() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    publish(
        &origin,
        "news",
        &[app_module("news", "./news.js", "v1"), kotlin()],
        100,
        &[&key],
    );
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));
    let first = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let listing = cache_json(&["ls"], cache.path());
    let pins = cache_command(&["pins"], cache.path());
    let files = files_in(cache.path());
    // Read-only for the unprivileged user: another user's cache (when the tests run as
    // root), or one whose modes forbid writing.
    give_to_unprivileged(cache.path(), false);
    let read_only = |path: &Path, writable: bool| {
        for entry in [path.to_path_buf(), path.join("files")] {
            set_mode(&entry, if writable { 0o755 } else { 0o555 });
        }
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_file() {
                set_mode(&entry, if writable { 0o644 } else { 0o444 });
            }
        }
    };
    read_only(cache.path(), false);
    let Some(_) = haul_unprivileged() else {
        read_only(cache.path(), true);
        return;
    };
    let run = |args: &[&str]| {
        let mut command = haul_unprivileged().unwrap();
        command.args(args).arg(cache.path());
        command.output().unwrap()
    };
    let ls = run(&["cache", "ls", "--json", "--cache"]);
    let ls_pins = run(&["cache", "pins", "--cache"]);
    let verify = run(&["cache", "verify", "--cache"]);
    let prune = run(&["cache", "prune", "--budget", "0", "--cache"]);
    let mut command = haul_unprivileged().unwrap();
    command
        .args(["load", "--app", "news", "--manifest", &url, "--cache"])
        .arg(cache.path())
        .args(["--retries", "0", "--key", &key.key_arg()]);
    let reload = command.output().unwrap();
    read_only(cache.path(), true);

    assert_eq!(ls.status.code(), Some(0), "{}", describe(&ls));
    let read: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(read["files"], listing["files"], "{}", describe(&ls));
    assert_eq!(ls_pins.status.code(), Some(0), "{}", describe(&ls_pins));
    assert_eq!(text(&ls_pins.stdout), text(&pins.stdout));
    for writer in [&verify, &prune, &reload] {
        assert_eq!(writer.status.code(), Some(7), "{}", describe(writer));
        let stderr = text(&writer.stderr);
        assert!(
            stderr.contains("not writable") && stderr.contains(&cache.path().display().to_string()),
            "{}",
            describe(writer)
        );
    }
    assert_eq!(files_in(cache.path()), files);
}

#[test]
fn listing_an_index_without_the_cache_schema_says_it_is_not_a_cache() {
    let cache = tempfile::TempDir::new().unwrap();
    std::fs::write(cache.path().join("index.sqlite"), b"").unwrap();
    give_to_unprivileged(cache.path(), false);
    set_mode(cache.path(), 0o555);
    let Some(mut command) = haul_unprivileged() else {
        set_mode(cache.path(), 0o755);
        return;
    };
    let ls = command
        .args(["cache", "ls", "--cache"])
        .arg(cache.path())
        .output()
        .unwrap();
    set_mode(cache.path(), 0o755);
    assert_eq!(ls.status.code(), Some(2), "{}", describe(&ls));
    assert!(
        text(&ls.stderr).contains("not a haul cache"),
        "{}",
        describe(&ls)
    );
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// (sha256, state) of every row of the cache's files table, read without opening the store
/// (which would recover it).
fn index_rows(cache: &Path) -> Vec<(String, String)> {
    let index = rusqlite::Connection::open_with_flags(
        cache.join("index.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = index
        .prepare("SELECT sha256, state FROM files ORDER BY sha256")
        .unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Every row READY, every file a READY row's, every file's content matching its name.
fn assert_consistent(cache: &Path) {
    let rows = index_rows(cache);
    assert!(rows.iter().all(|(_, state)| state == "READY"), "{rows:?}");
    let ready: BTreeSet<String> = rows.into_iter().map(|(sha256, _)| sha256).collect();
    assert_eq!(files_in(cache), ready);
    for sha256 in &ready {
        let bytes = std::fs::read(cache.join("files").join(sha256)).unwrap();
        assert_eq!(&sha256_hex(&bytes), sha256);
    }
}

#[test]
fn crash_mid_download_is_recovered_at_the_next_start() {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    let big = module(
        "./news.js",
        "app.zipline",
        // Over 1 MiB: written to a named partial (a smaller one is unnamed and a crash
        // leaves nothing of it to recover).
        &(0..1_100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
        &["./kotlin.js"],
    );
    publish(&origin, "news", &[big.clone(), kotlin()], 100, &[&key]);
    origin.route(
        "/news/app.zipline",
        big.bytes.clone(),
        Behavior::Stall { after: 50_000 },
    );
    let cache = tempfile::TempDir::new().unwrap();
    let url = origin.url(&manifest_path("news"));

    let mut child = load_command(&url, "news", cache.path(), &[&key])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("haul requests the stalling module", || {
        !origin.requests_to("/news/app.zipline").is_empty()
    });
    // Let the first 50 000 bytes reach the partial file, then crash.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let big_hash = sha256_hex(&big.bytes);
    let rows = index_rows(cache.path());
    assert!(
        rows.contains(&(big_hash.clone(), "DIRTY".to_owned())),
        "the crash should leave an interrupted write: {rows:?}"
    );
    let leftovers: Vec<String> = files_in(cache.path())
        .into_iter()
        .filter(|name| name.len() != 64)
        .collect();
    assert!(
        !leftovers.is_empty(),
        "the crash should leave partial files"
    );

    let verify = cache_json(&["verify"], cache.path());
    let recovered = |what: &str, sha256: &str| {
        verify["recovered"][what]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(sha256))
    };
    assert!(recovered("dirty_removed", &big_hash), "{verify}");
    // The small module was downloaded whole before the crash: kept, not fetched again.
    let kotlin_hash = sha256_hex(&kotlin().bytes);
    assert!(recovered("dirty_kept", &kotlin_hash), "{verify}");
    assert_consistent(cache.path());

    origin.route("/news/app.zipline", big.bytes.clone(), Behavior::Normal);
    let second = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    assert!(text(&second.stdout).contains("manifest: network"));
    assert_eq!(origin.requests_to("/lib/kotlin.zipline").len(), 1);
    assert_consistent(cache.path());
    assert_eq!(
        std::fs::read(cache.path().join("files").join(&big_hash)).unwrap(),
        big.bytes
    );
}

#[test]
fn bad_signature_exits_5_invalid_manifest_6_and_missing_manifest_4() {
    let origin = Origin::start().unwrap();
    let trusted = Signer::ed25519("release", 7);
    let forger = Signer::ed25519("release", 8);
    let cache = tempfile::TempDir::new().unwrap();

    publish(
        &origin,
        "forged",
        &[app_module("forged", "./forged.js", "v1"), kotlin()],
        100,
        &[&forger],
    );
    let forged = load(
        &origin.url(&manifest_path("forged")),
        "forged",
        cache.path(),
        &[&trusted],
        &[],
    );
    assert_eq!(forged.status.code(), Some(5), "{}", describe(&forged));
    assert!(text(&forged.stderr).contains("does not verify"));

    let cycle = [
        module("./a.js", "a.zipline", b"a", &["./b.js"]),
        module("./b.js", "b.zipline", b"b", &["./a.js"]),
    ];
    publish(&origin, "cycle", &cycle, 100, &[&trusted]);
    let cyclic = load(
        &origin.url(&manifest_path("cycle")),
        "cycle",
        cache.path(),
        &[&trusted],
        &[],
    );
    assert_eq!(cyclic.status.code(), Some(6), "{}", describe(&cyclic));
    assert!(text(&cyclic.stderr).contains("cycle"));

    // A manifest over the 640 KiB cap is invalid (6) whether it comes from the network or
    // from disk, not a verification failure.
    let mut huge = b"{\"modules\": {}, \"padding\": \"".to_vec();
    huge.resize(640 * 1024 + 10, b'x');
    huge.extend_from_slice(b"\"}");
    origin.route("/huge/manifest.json", huge, Behavior::Normal);
    let oversized = load(
        &origin.url("/huge/manifest.json"),
        "huge",
        cache.path(),
        &[&trusted],
        &[],
    );
    assert_eq!(oversized.status.code(), Some(6), "{}", describe(&oversized));

    // Redirects in a loop are the server's wrong answer: exit 4 as for `haul get`, and no
    // fallback to local manifests as if the network had failed.
    origin.route(
        "/loop/manifest.json",
        Vec::new(),
        Behavior::Redirect {
            status: 302,
            location: "/loop/manifest.json".into(),
        },
    );
    let looping = load(
        &origin.url("/loop/manifest.json"),
        "loop",
        cache.path(),
        &[&trusted],
        &[],
    );
    assert_eq!(looping.status.code(), Some(4), "{}", describe(&looping));
    assert!(
        text(&looping.stderr).contains("redirect"),
        "{}",
        describe(&looping)
    );

    let missing = load(
        &origin.url("/nobody/manifest.json"),
        "nobody",
        cache.path(),
        &[&trusted],
        &["--json"],
    );
    assert_eq!(missing.status.code(), Some(4), "{}", describe(&missing));
    let error: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(error["exit_code"], 4);

    let bad_key = haul()
        .args(["load", "--app", "x", "--manifest", "http://127.0.0.1:9/m"])
        .args(["--key", "k:ed25519:abcd", "--cache"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert_eq!(bad_key.status.code(), Some(2), "{}", describe(&bad_key));
    assert!(pinned_hashes(cache.path()).is_empty());
}

/// An origin serving app "news" at `version` (its manifest's `freshAtEpochMs` is
/// `fresh_at`), the key that signed it, an empty cache, and the manifest's URL.
fn news_served(version: &str, fresh_at: u64) -> (Origin, Signer, tempfile::TempDir, String) {
    let origin = Origin::start().unwrap();
    let key = Signer::ed25519("release", 7);
    let url = origin.url(&manifest_path("news"));
    publish_news(&origin, &key, version, fresh_at);
    (origin, key, tempfile::TempDir::new().unwrap(), url)
}

/// Serves app "news" at `version`, its manifest signed by `key`.
fn publish_news(origin: &Origin, key: &Signer, version: &str, fresh_at: u64) {
    publish(
        origin,
        "news",
        &[app_module("news", "./news.js", version), kotlin()],
        fresh_at,
        &[key],
    );
}

#[test]
fn a_rollback_is_refused_with_a_hint_and_allowed_by_the_flag() {
    let (origin, key, cache, url) = news_served("v2", 200);
    let first = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    // `cache pins` shows the floor a refusal compares with.
    let pins = cache_json(&["pins"], cache.path());
    assert_eq!(pins["apps"][0]["rollback_floor_ms"], 200, "{pins}");
    publish_news(&origin, &key, "v1", 100);
    // The older release is refused; the newer pinned one loads, saying why.
    let refused = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(refused.status.code(), Some(0), "{}", describe(&refused));
    let stdout = text(&refused.stdout);
    assert!(
        stdout.contains("manifest: pinned in the cache (fallback)"),
        "{stdout}"
    );
    assert!(stdout.contains("rollback refused"), "{stdout}");
    assert!(
        stdout.contains("--allow-rollback loads it anyway"),
        "{stdout}"
    );
    // Without a pinned manifest to load (a new cache that keeps the floor is not possible
    // from the command line; a cache whose pinned manifest file is gone keeps its floor),
    // the refusal is the load's error (exit 6) with the hint.
    let pinned = cache_json(&["pins"], cache.path());
    let manifest_sha = pinned["apps"][0]["manifest_sha256"]
        .as_str()
        .expect("pinned manifest sha256")
        .to_owned();
    std::fs::remove_file(cache.path().join("files").join(&manifest_sha)).unwrap();
    let failed = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(failed.status.code(), Some(6), "{}", describe(&failed));
    let stderr = text(&failed.stderr);
    assert!(stderr.contains("rollback refused"), "{stderr}");
    assert!(
        stderr.contains("--allow-rollback loads it anyway"),
        "{stderr}"
    );
    let allowed = load(&url, "news", cache.path(), &[&key], &["--allow-rollback"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", describe(&allowed));
}

#[test]
fn a_damaged_index_is_named_with_what_to_do() {
    let (_origin, key, cache, url) = news_served("v1", 100);
    assert_eq!(
        load(&url, "news", cache.path(), &[&key], &[]).status.code(),
        Some(0)
    );
    for name in ["index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(cache.path().join(name));
    }
    std::fs::write(cache.path().join("index.sqlite"), vec![b'x'; 8192]).unwrap();
    for output in [
        load(&url, "news", cache.path(), &[&key], &[]),
        cache_command(&["ls"], cache.path()),
    ] {
        assert_eq!(output.status.code(), Some(7), "{}", describe(&output));
        let stderr = text(&output.stderr);
        assert!(
            stderr
                .contains("is damaged; remove it and the next `haul load` starts the cache afresh"),
            "{stderr}"
        );
    }
    // As it says: without the index, the next load fetches the app again and succeeds.
    std::fs::remove_file(cache.path().join("index.sqlite")).unwrap();
    let again = load(&url, "news", cache.path(), &[&key], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_consistent(cache.path());
}
