//! The asset-catalog part of `haul demo`: a built-in catalog served by the demo's local
//! origin, installed into `<dir>/game`, then one asset updated to a new revision.
//!
//! Owns: generating the demo's asset zips (in memory, with the zip crate) and catalogs, and
//! narrating the steps. Does not own fetching, installing or states: it drives the same
//! functions `haul assets` uses ([`crate::assets`]).

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::Instant;

use haul_install::catalog::{AssetKind, AssetState, Home, REVISION_FILE};
use haul_origin::{Behavior, Origin};
use serde_json::json;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::assets::{self, AssetRow};
use crate::exit;
use crate::progress::Mode;

/// Marks `<dir>/game` as the demo's own, so a later demo run may replace it.
const DEMO_MARKER: &str = ".haul-demo";

/// One generated asset: its catalog fields and the files under `<directory>/`.
struct DemoAsset {
    kind: AssetKind,
    name: &'static str,
    category: &'static str,
    directory: &'static str,
    revision: u64,
    /// (path inside `<directory>/`, size in bytes)
    files: Vec<(&'static str, usize)>,
}

/// Deterministic filler bytes: compressible text, so zips stay small.
fn filler(seed: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut line = 0u64;
    while out.len() < size {
        let digest = Sha256::digest(format!("{seed}:{line}").as_bytes());
        out.extend_from_slice(
            format!("{seed} {line:06} {}\n", hex::encode(&digest[..8])).as_bytes(),
        );
        line += 1;
    }
    out.truncate(size);
    out
}

fn build_zip(asset: &DemoAsset) -> Result<Vec<u8>, String> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let zip_error = |e: zip::result::ZipError| format!("cannot build the demo zip: {e}");
    for (path, size) in &asset.files {
        let name = format!("{}/{path}", asset.directory);
        w.start_file(name.as_str(), options).map_err(zip_error)?;
        let seed = format!("{}-r{}-{path}", asset.directory, asset.revision);
        w.write_all(&filler(&seed, *size))
            .map_err(|e| format!("cannot build the demo zip: {e}"))?;
    }
    // Outside `<directory>/`: ignored by the installer.
    w.start_file("README.txt", options).map_err(zip_error)?;
    w.write_all(b"haul demo asset\n")
        .map_err(|e| format!("cannot build the demo zip: {e}"))?;
    Ok(w.finish().map_err(zip_error)?.into_inner())
}

fn demo_assets() -> Vec<DemoAsset> {
    vec![
        DemoAsset {
            kind: AssetKind::Car,
            name: "Haul GT",
            category: "GT",
            directory: "haul-gt",
            revision: 1,
            files: vec![
                ("haul-gt.xml", 6_000),
                ("haul-gt.acc", 400_000),
                ("textures/body.png", 120_000),
                ("sounds/engine-v1.wav", 80_000),
            ],
        },
        DemoAsset {
            kind: AssetKind::Track,
            name: "Loopback Ring",
            category: "circuit",
            directory: "loopback-ring",
            revision: 3,
            files: vec![
                ("loopback-ring.xml", 10_000),
                ("loopback-ring.ac", 600_000),
                ("background.png", 90_000),
            ],
        },
        DemoAsset {
            kind: AssetKind::Track,
            name: "Ephemeral Port Speedway",
            category: "speedway",
            directory: "ephemeral-speedway",
            revision: 1,
            files: vec![
                ("ephemeral-speedway.xml", 8_000),
                ("ephemeral-speedway.ac", 350_000),
            ],
        },
        DemoAsset {
            kind: AssetKind::Driver,
            name: "Sans-IO Bot",
            category: "simplix",
            directory: "sansio-bot",
            revision: 2,
            files: vec![("sansio-bot.xml", 5_000), ("default.xml", 3_000)],
        },
    ]
}

/// Builds every zip, routes it at `/catalog/<directory>-r<revision>.zip`, and returns the
/// catalog document listing them.
fn publish(origin: &Origin, assets: &[DemoAsset]) -> Result<serde_json::Value, String> {
    let mut doc = serde_json::Map::new();
    for kind in AssetKind::ALL {
        doc.insert(kind.catalog_key().to_string(), json!([]));
    }
    for a in assets {
        let zip = build_zip(a)?;
        let path = format!("/catalog/{}-r{}.zip", a.directory, a.revision);
        let entry = json!({
            "name": a.name,
            "category": a.category,
            "author": "haul demo",
            "license": "CC0",
            "url": origin.url(&path),
            "hashtype": "sha256",
            // Upper case on purpose: the original game never matched such a hash.
            "hash": hex::encode_upper(Sha256::digest(&zip)),
            "size": zip.len().to_string(),
            "thumbnail": origin.url(&format!("/catalog/{}.png", a.directory)),
            "directory": a.directory,
            "revision": a.revision.to_string(),
        });
        origin.route(&path, zip, Behavior::Normal);
        doc.get_mut(a.kind.catalog_key())
            .and_then(|v| v.as_array_mut())
            .expect("every kind has an array")
            .push(entry);
    }
    let doc = serde_json::Value::Object(doc);
    origin.route(
        "/catalog/assets.json",
        serde_json::to_vec_pretty(&doc).expect("JSON serialises"),
        Behavior::Normal,
    );
    Ok(doc)
}

fn say(mode: Mode, line: &str) {
    if matches!(mode, Mode::Bars | Mode::Plain) {
        eprintln!("{line}");
    }
}

fn show_states(mode: Mode, rows: &[AssetRow]) {
    if !matches!(mode, Mode::Bars | Mode::Plain) {
        return;
    }
    for r in rows {
        let a = &r.merged.asset;
        let state = match &r.state {
            AssetState::Available => "available".to_string(),
            AssetState::Installed { revision } => format!("installed (revision {revision})"),
            AssetState::UpdateAvailable {
                installed,
                available,
            } => format!("update available ({installed} -> {available})"),
            AssetState::Broken { reason } => format!("broken ({reason})"),
        };
        eprintln!(
            "  {:<7} {:<26} {:<9} catalog rev {:<3} {state}",
            a.kind.as_str(),
            a.name,
            a.category,
            a.revision
        );
    }
}

/// Lists a folder's files (relative, sorted) for the before/after of the update.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(items) = std::fs::read_dir(dir) else {
            return;
        };
        for item in items.flatten() {
            let path = item.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs the catalog demo against `origin` in `<dir>/game`; returns the exit code.
pub fn run(origin: &Origin, dir: &Path, mode: Mode) -> Result<i32, String> {
    let started = Instant::now();
    let game = dir.join("game");
    if game.exists() {
        if !game.join(DEMO_MARKER).exists() {
            eprintln!(
                "haul demo: {} exists and is not a demo game folder; skipping the asset catalog demo",
                game.display()
            );
            return Ok(exit::OK);
        }
        std::fs::remove_dir_all(&game)
            .map_err(|e| format!("cannot clear {}: {e}", game.display()))?;
    }
    std::fs::create_dir_all(&game).map_err(|e| format!("cannot create {}: {e}", game.display()))?;
    std::fs::write(game.join(DEMO_MARKER), b"created by haul demo\n")
        .map_err(|e| format!("cannot write in {}: {e}", game.display()))?;
    // haul's home for this demo lives inside the game folder (the installer ignores it).
    let home = Home::new(game.join(".haul-home"));
    let fail = |f: assets::Failure| format!("{} (exit {})", f.message, f.code);

    let mut catalog = demo_assets();
    publish(origin, &catalog)?;
    let catalog_url = origin.url("/catalog/assets.json");
    say(
        mode,
        &format!(
            "\nhaul demo: asset catalog at {catalog_url}: {} assets; installing into {}",
            catalog.len(),
            game.display()
        ),
    );
    let catalog_client = assets::catalog_client();
    let asset_client = assets::asset_client(3, assets::DEFAULT_JOBS);
    assets::fetch_catalog(&catalog_client, &home, &catalog_url)
        .map_err(|e| format!("cannot fetch the demo catalog: {}", e.message))?;
    home.add_repository(&catalog_url)
        .map_err(|e| e.to_string())?;
    let _lock = assets::prepare_root(&game).map_err(fail)?;

    let catalogs = assets::refresh_catalogs(&catalog_client, &home, false).map_err(fail)?;
    let everything: Vec<_> = catalogs
        .merged
        .assets
        .iter()
        .map(|m| m.asset.clone())
        .collect();
    let results =
        assets::install_assets(&asset_client, &home, &game, everything, mode).map_err(fail)?;
    let mut code = assets::report_results(&results, !matches!(mode, Mode::Bars | Mode::Plain));
    show_states(mode, &assets::rows(&game, &catalogs.merged));

    // A new revision of the car: one file renamed, one dropped, one added.
    let car = catalog
        .iter_mut()
        .find(|a| a.kind == AssetKind::Car)
        .expect("the demo has a car");
    car.revision += 1;
    car.files = vec![
        ("haul-gt.xml", 6_500),
        ("haul-gt.acc", 420_000),
        ("textures/body.png", 120_000),
        ("sounds/engine-v2.wav", 90_000),
    ];
    let car_name = car.name;
    let car_dir = game.join("cars").join("models").join(car.directory);
    let before = files_under(&car_dir);
    publish(origin, &catalog)?;
    say(
        mode,
        &format!("haul demo: the catalog now lists {car_name:?} at a new revision; updating"),
    );
    let catalogs = assets::refresh_catalogs(&catalog_client, &home, false).map_err(fail)?;
    let updates: Vec<_> = assets::rows(&game, &catalogs.merged)
        .into_iter()
        .filter(|r| matches!(r.state, AssetState::UpdateAvailable { .. }))
        .map(|r| r.merged.asset)
        .collect();
    let results =
        assets::install_assets(&asset_client, &home, &game, updates, mode).map_err(fail)?;
    code = exit::combine([
        code,
        assets::report_results(&results, !matches!(mode, Mode::Bars | Mode::Plain)),
    ]);
    let after = files_under(&car_dir);
    let gone: Vec<_> = before.iter().filter(|f| !after.contains(f)).collect();
    let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
    let revision = std::fs::read_to_string(car_dir.join(REVISION_FILE)).unwrap_or_default();
    say(
        mode,
        &format!(
            "  {}: replaced as a whole: .revision now {}, gone {gone:?}, new {new:?}",
            car_dir.display(),
            revision.trim()
        ),
    );
    show_states(mode, &assets::rows(&game, &catalogs.merged));
    say(
        mode,
        &format!(
            "haul demo: asset catalog part done in {:.2}s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(code)
}
