use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::*;
use crate::error::UnsafeReason;
use crate::testzip::{dir, file, listing, raw_zip, write_zip, RawEntry};

const EXAMPLE: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/assets.example.json"
));
const HASH: &str = "ff2f963abf60c245e986a4166c3f2ff7605ec80c2ee8ba4e931dd07e9f86fa40";

fn entry(name: &str, category: &str, directory: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "category": category, "author": "a", "license": "l",
        "url": "https://example.invalid/x.zip", "hashtype": "sha256", "hash": HASH,
        "size": "10", "thumbnail": "http://example.invalid/x.png",
        "directory": directory, "revision": "1"
    })
}

fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    v[key] = value;
    v
}

fn parse(doc: serde_json::Value) -> CatalogParse {
    parse_catalog(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

#[test]
fn the_example_catalog_parses_completely() {
    let parsed = parse_catalog(EXAMPLE).unwrap();
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let kinds: Vec<_> = parsed
        .assets
        .iter()
        .map(|a| (a.kind, a.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AssetKind::Car, "FMC GT4"),
            (AssetKind::Car, "Monoposto 1 Vicente"),
            (AssetKind::Car, "Tridenti"),
            (AssetKind::Track, "Longjour"),
            (AssetKind::Track, "A-Speedway"),
            (AssetKind::Driver, "Ren Suzuki"),
        ]
    );
    let gt4 = &parsed.assets[0];
    assert_eq!(gt4.size, 17_768_546);
    assert_eq!(gt4.revision, 0);
    assert_eq!(gt4.sha256, HASH);
    assert_eq!(gt4.directory, "sc-fmc-gt4");
    assert_eq!(gt4.url, "http://localhost:8000/sc-fmc-gt4.zip");
    let driver = &parsed.assets[5];
    assert_eq!(
        (driver.category.as_str(), driver.revision, driver.size),
        ("dandroid", 3, 668)
    );
}

#[test]
fn an_upper_case_hash_is_accepted_and_stored_lower_case() {
    let e = with(entry("Car", "x", "car"), "hash", HASH.to_uppercase().into());
    let parsed = parse(serde_json::json!({ "cars": [e] }));
    assert_eq!(parsed.assets[0].sha256, HASH);
}

#[test]
fn an_unknown_hashtype_is_rejected_by_name_and_the_rest_survives() {
    let bad = with(entry("Old Car", "x", "old"), "hashtype", "md5".into());
    let parsed = parse(serde_json::json!({ "cars": [bad, entry("Good Car", "x", "good")] }));
    assert_eq!(parsed.assets.len(), 1);
    assert_eq!(parsed.assets[0].name, "Good Car");
    let r = &parsed.rejected[0];
    assert_eq!(
        (r.kind, r.index, r.name.as_deref(), r.field),
        (AssetKind::Car, Some(0), Some("Old Car"), Some("hashtype"))
    );
    assert!(
        r.reason.contains("\"md5\"") && r.reason.contains("sha256"),
        "{}",
        r.reason
    );
    assert!(
        r.to_string()
            .contains("cars #0 \"Old Car\": field hashtype"),
        "{r}"
    );
}

#[test]
fn each_bad_field_is_reported_and_skipped() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "cars",
            with(entry("c1", "x", "c1"), "size", "12a".into()),
            "size",
        ),
        (
            "cars",
            with(entry("c2", "x", "c2"), "size", 12.into()),
            "size",
        ),
        (
            "cars",
            with(entry("c3", "x", "c3"), "revision", "-1".into()),
            "revision",
        ),
        (
            "cars",
            with(
                entry("c4", "x", "c4"),
                "revision",
                "99999999999999999999999".into(),
            ),
            "revision",
        ),
        (
            "cars",
            with(entry("c5", "x", "c5"), "author", serde_json::Value::Null),
            "author",
        ),
        (
            "cars",
            with(entry("c6", "x", "../c6"), "directory", "../c6".into()),
            "directory",
        ),
        ("cars", entry("c7", "x", "a b"), "directory"),
        ("cars", entry("c8", "x", "a.b"), "directory"),
        (
            "cars",
            with(
                entry("c9", "x", "c9"),
                "url",
                "ftp://example.invalid/x.zip".into(),
            ),
            "url",
        ),
        (
            "cars",
            with(
                entry("c10", "x", "c10"),
                "thumbnail",
                "file:///etc/passwd".into(),
            ),
            "thumbnail",
        ),
        (
            "cars",
            with(entry("c11", "x", "c11"), "hash", "abc".into()),
            "hash",
        ),
        (
            "cars",
            with(entry("c12", "x", "c12"), "hash", "z".repeat(64).into()),
            "hash",
        ),
        ("tracks", entry("t1", "oval", "t1"), "category"),
        ("drivers", entry("d1", "human", "d1"), "category"),
        ("drivers", entry("d2", "NetworkHuman", "d2"), "category"),
        ("drivers", entry("d3", "../usr", "d3"), "category"),
    ];
    for (key, bad, field) in cases {
        let good = entry("fine", "road", "fine");
        let parsed = parse(serde_json::json!({ key: [bad.clone(), good] }));
        assert_eq!(parsed.assets.len(), 1, "{bad}");
        assert_eq!(parsed.rejected.len(), 1, "{bad}");
        assert_eq!(
            parsed.rejected[0].field,
            Some(field),
            "{bad}: {}",
            parsed.rejected[0]
        );
    }
    let parsed = parse(serde_json::json!({ "cars": [7, entry("a", "x", "a")] }));
    assert_eq!((parsed.assets.len(), parsed.rejected[0].field), (1, None));
}

#[test]
fn duplicates_and_folder_collisions_keep_the_first_entry() {
    let parsed = parse(serde_json::json!({
        "cars": [entry("A", "x", "a"), entry("A", "x", "other"), entry("B", "x", "a")],
        "tracks": [entry("T", "road", "t"), entry("U", "dirt", "t")],
    }));
    let names: Vec<_> = parsed.assets.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["A", "T", "U"]);
    assert_eq!(parsed.rejected.len(), 2);
    assert_eq!(parsed.rejected[0].field, Some("name"));
    assert_eq!(parsed.rejected[1].field, Some("directory"));
}

#[test]
fn whole_catalog_failures_are_errors() {
    let too_big = vec![b' '; CATALOG_MAX_BYTES as usize + 1];
    for bytes in [&too_big[..], b"not json", b"[1]", br#"{"cars": {}}"#] {
        assert!(matches!(
            parse_catalog(bytes),
            Err(InstallError::BadCatalog { .. })
        ));
    }
    assert_eq!(
        parse_catalog(br#"{"other": 1}"#).unwrap(),
        CatalogParse::default()
    );
}

#[test]
fn repositories_are_added_listed_and_removed_atomically() {
    let tmp = TempDir::new().unwrap();
    let home = Home::new(tmp.path().join("home"));
    assert!(home.repositories().unwrap().is_empty());
    assert!(home
        .add_repository("https://one.invalid/assets.json")
        .unwrap());
    assert!(home.add_repository(" http://two.invalid/a.json ").unwrap());
    assert!(!home
        .add_repository("https://one.invalid/assets.json")
        .unwrap());
    assert!(matches!(
        home.add_repository("ftp://x.invalid/a.json"),
        Err(InstallError::BadName { .. })
    ));
    assert!(matches!(
        home.add_repository("not a url"),
        Err(InstallError::BadName { .. })
    ));
    assert_eq!(
        home.repositories().unwrap(),
        vec![
            "https://one.invalid/assets.json",
            "http://two.invalid/a.json"
        ]
    );
    home.store_catalog("https://one.invalid/assets.json", EXAMPLE)
        .unwrap();
    assert!(home
        .remove_repository("https://one.invalid/assets.json")
        .unwrap());
    assert!(!home
        .remove_repository("https://one.invalid/assets.json")
        .unwrap());
    assert_eq!(
        home.repositories().unwrap(),
        vec!["http://two.invalid/a.json"]
    );
    assert_eq!(listing(home.dir()), vec!["catalogs/", "repositories.json"]);
    fs::write(home.repositories_path(), b"{oops").unwrap();
    assert!(matches!(
        home.repositories(),
        Err(InstallError::BadConfig { .. })
    ));
}

#[test]
fn catalogs_are_cached_by_url_hash_and_bad_fetches_keep_the_old_copy() {
    let tmp = TempDir::new().unwrap();
    let home = Home::new(tmp.path());
    let url = "https://www.speed-dreams.net/assets.json";
    assert!(home.cached_catalog(url).unwrap().is_none());
    home.store_catalog(url, EXAMPLE).unwrap();
    let path = home.catalog_path(url);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 64 + ".json".len());
    assert!(path.starts_with(tmp.path().join("catalogs")));
    assert!(matches!(
        home.store_catalog(url, b"<html>"),
        Err(InstallError::BadCatalog { .. })
    ));
    assert_eq!(home.cached_catalog(url).unwrap().unwrap().assets.len(), 6);
}

#[test]
fn the_same_asset_in_two_repositories_is_one_asset_at_the_highest_revision() {
    let tmp = TempDir::new().unwrap();
    let home = Home::new(tmp.path());
    let (a, b) = ("https://a.invalid/c.json", "https://b.invalid/c.json");
    home.add_repository(a).unwrap();
    home.add_repository(b).unwrap();
    let old = with(entry("Shared", "x", "shared"), "revision", "1".into());
    let new = with(entry("Shared", "x", "shared"), "revision", "3".into());
    let tie = entry("Tie", "road", "tie");
    home.store_catalog(
        a,
        &serde_json::to_vec(&serde_json::json!({"cars": [old], "tracks": [tie.clone()]})).unwrap(),
    )
    .unwrap();
    home.store_catalog(
        b,
        &serde_json::to_vec(
            &serde_json::json!({"cars": [new, entry("Clash", "x", "shared")], "tracks": [tie]}),
        )
        .unwrap(),
    )
    .unwrap();
    let merged = home.merged().unwrap();
    assert_eq!(merged.assets.len(), 2);
    let shared = merged.find(AssetKind::Car, "Shared").unwrap();
    assert_eq!((shared.asset.revision, shared.repository.as_str()), (3, b));
    assert_eq!(shared.also_listed_by, vec![a.to_string()]);
    let tie = merged.find(AssetKind::Track, "Tie").unwrap();
    assert_eq!(
        (tie.repository.as_str(), tie.also_listed_by.clone()),
        (a, vec![b.to_string()])
    );
    // "Clash" would install into Shared's folder.
    assert_eq!(merged.rejected.len(), 1);
    assert_eq!(merged.rejected[0].entry.name.as_deref(), Some("Clash"));
    assert_eq!(merged.rejected[0].repository, b);
}

// ---- installs ----

struct Setup {
    tmp: TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            tmp: TempDir::new().unwrap(),
        }
    }
    fn root(&self) -> std::path::PathBuf {
        self.tmp.path().join("data")
    }
    /// Writes a zip and returns its path and an asset whose size matches.
    fn asset_zip(
        &self,
        file_name: &str,
        template: Asset,
        files: &[(&str, &[u8])],
    ) -> (std::path::PathBuf, Asset) {
        let path = self.tmp.path().join(file_name);
        let items: Vec<_> = files
            .iter()
            .map(|(n, d)| if n.ends_with('/') { dir(n) } else { file(n, d) })
            .collect();
        write_zip(&path, &items);
        let size = fs::metadata(&path).unwrap().len();
        (path, Asset { size, ..template })
    }
}

fn asset(
    kind: AssetKind,
    name: &str,
    category: &str,
    directory: &str,
    revision: u64,
    size: u64,
) -> Asset {
    Asset {
        kind,
        name: name.into(),
        category: category.into(),
        author: "a".into(),
        license: "l".into(),
        url: "https://example.invalid/x.zip".into(),
        sha256: HASH.into(),
        size,
        thumbnail: "https://example.invalid/x.png".into(),
        directory: directory.into(),
        revision,
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn a_car_installs_under_cars_models_with_only_its_directory_and_a_revision() {
    let s = Setup::new();
    let (zip, car) = s.asset_zip(
        "car.zip",
        asset(AssetKind::Car, "FMC GT4", "Supercars", "sc-fmc-gt4", 2, 0),
        &[
            ("sc-fmc-gt4/", b""),
            ("sc-fmc-gt4/sc-fmc-gt4.xml", b"<params/>"),
            ("sc-fmc-gt4/skins/blue.png", b"png"),
            ("README.txt", b"ignored"),
            ("other-dir/x", b"ignored"),
        ],
    );
    assert_eq!(asset_state(&s.root(), &car).unwrap(), AssetState::Available);
    let got = install_asset(&zip, &car, &s.root()).unwrap();
    assert_eq!(got.dir, s.root().join("cars/models/sc-fmc-gt4"));
    assert!(!got.replaced);
    assert_eq!(
        listing(&s.root()),
        vec![
            "cars/",
            "cars/models/",
            "cars/models/sc-fmc-gt4/",
            "cars/models/sc-fmc-gt4/.revision",
            "cars/models/sc-fmc-gt4/sc-fmc-gt4.xml",
            "cars/models/sc-fmc-gt4/skins/",
            "cars/models/sc-fmc-gt4/skins/blue.png"
        ]
    );
    assert_eq!(read(&got.dir.join(".revision")), "2\n");
    assert_eq!(
        asset_state(&s.root(), &car).unwrap(),
        AssetState::Installed { revision: 2 }
    );
    let newer = Asset {
        revision: 5,
        ..car.clone()
    };
    assert_eq!(
        asset_state(&s.root(), &newer).unwrap(),
        AssetState::UpdateAvailable {
            installed: 2,
            available: 5
        }
    );
}

#[test]
fn an_update_replaces_the_old_folder_as_a_whole() {
    let s = Setup::new();
    let (v1, car1) = s.asset_zip(
        "v1.zip",
        asset(AssetKind::Car, "C", "x", "c", 1, 0),
        &[("c/old.txt", b"1"), ("c/common.txt", b"1")],
    );
    let (v2, car2) = s.asset_zip(
        "v2.zip",
        asset(AssetKind::Car, "C", "x", "c", 2, 0),
        &[("c/common.txt", b"2")],
    );
    install_asset(&v1, &car1, &s.root()).unwrap();
    let got = install_asset(&v2, &car2, &s.root()).unwrap();
    assert!(got.replaced);
    assert_eq!(listing(&got.dir), vec![".revision", "common.txt"]);
    assert_eq!(read(&got.dir.join("common.txt")), "2");
    assert_eq!(
        listing(&s.root().join("cars/models")),
        vec!["c/", "c/.revision", "c/common.txt"]
    );
}

#[test]
fn a_track_installs_under_its_category() {
    let s = Setup::new();
    let (zip, track) = s.asset_zip(
        "t.zip",
        asset(AssetKind::Track, "Longjour", "road", "longjour", 0, 0),
        &[("longjour/longjour.xml", b"x")],
    );
    let got = install_asset(&zip, &track, &s.root()).unwrap();
    assert_eq!(got.dir, s.root().join("tracks/road/longjour"));
    assert_eq!(read(&got.dir.join(".revision")), "0\n");
}

#[test]
fn drivers_reuse_their_slot_and_new_drivers_take_the_next_free_one() {
    let s = Setup::new();
    let robots = s.root().join("drivers/dandroid");
    fs::create_dir_all(robots.join("0")).unwrap(); // shipped with the game, no name file
    fs::create_dir_all(robots.join("2")).unwrap();
    fs::write(robots.join("dandroid.xml"), b"<robot/>").unwrap();
    let (ren_zip, ren) = s.asset_zip(
        "ren.zip",
        asset(
            AssetKind::Driver,
            "Ren Suzuki",
            "dandroid",
            "ren-suzuki",
            3,
            0,
        ),
        &[("ren-suzuki/driver.xml", b"ren")],
    );
    let (ann_zip, ann) = s.asset_zip(
        "ann.zip",
        asset(AssetKind::Driver, "Ann", "dandroid", "ann", 1, 0),
        &[("ann/driver.xml", b"ann")],
    );
    let ren_slot = install_asset(&ren_zip, &ren, &s.root()).unwrap();
    assert_eq!(ren_slot.dir, robots.join("1"));
    assert_eq!(read(&robots.join("1/.haul-driver")), "Ren Suzuki\n");
    let ann_slot = install_asset(&ann_zip, &ann, &s.root()).unwrap();
    assert_eq!(ann_slot.dir, robots.join("3"));
    let again = install_asset(
        &ren_zip,
        &Asset {
            revision: 4,
            ..ren.clone()
        },
        &s.root(),
    )
    .unwrap();
    assert_eq!(again.dir, robots.join("1"));
    assert!(again.replaced);
    assert_eq!(read(&robots.join("1/.revision")), "4\n");
    assert_eq!(
        asset_state(&s.root(), &ann).unwrap(),
        AssetState::Installed { revision: 1 }
    );
    assert!(remove_asset(&s.root(), &ren).unwrap());
    assert!(!remove_asset(&s.root(), &ren).unwrap());
    assert_eq!(asset_state(&s.root(), &ren).unwrap(), AssetState::Available);
    assert_eq!(
        install_dir(&s.root(), &ren).unwrap(),
        robots.join("1"),
        "smallest free slot"
    );
    assert_eq!(
        listing(&robots),
        vec![
            "0/",
            "2/",
            "3/",
            "3/.haul-driver",
            "3/.revision",
            "3/driver.xml",
            "dandroid.xml"
        ]
    );
}

#[test]
fn a_folder_without_a_usable_revision_is_broken() {
    let s = Setup::new();
    let car = asset(AssetKind::Car, "C", "x", "c", 1, 0);
    let dir = s.root().join("cars/models/c");
    fs::create_dir_all(&dir).unwrap();
    assert!(
        matches!(asset_state(&s.root(), &car).unwrap(), AssetState::Broken { reason } if reason.contains("missing"))
    );
    for junk in ["", "abc\n", "-1\n", "1 \n", "1\n\n"] {
        fs::write(dir.join(".revision"), junk).unwrap();
        assert!(
            matches!(
                asset_state(&s.root(), &car).unwrap(),
                AssetState::Broken { .. }
            ),
            "{junk:?}"
        );
    }
    fs::write(dir.join(".revision"), "7").unwrap();
    assert_eq!(
        asset_state(&s.root(), &car).unwrap(),
        AssetState::Installed { revision: 7 }
    );
}

#[test]
fn parent_components_inside_the_asset_directory_are_refused_before_writing() {
    let s = Setup::new();
    let zip = s.tmp.path().join("evil.zip");
    raw_zip(&[
        RawEntry::stored("evil/ok.txt", b"ok"),
        RawEntry::stored("evil/../../escape.txt", b"x"),
    ])
    .write(&zip);
    let car = asset(
        AssetKind::Car,
        "Evil",
        "x",
        "evil",
        1,
        fs::metadata(&zip).unwrap().len(),
    );
    let err = install_asset(&zip, &car, &s.root()).unwrap_err();
    assert!(
        matches!(&err, InstallError::UnsafeEntry { entry, reason: UnsafeReason::ParentComponent } if entry == "evil/../../escape.txt"),
        "{err:?}"
    );
    assert!(!s.root().exists());
    assert_eq!(listing(s.tmp.path()), vec!["evil.zip"]);
}

/// An asset archive may not supply the folder's bookkeeping files (`.revision`, and a
/// driver's `.haul-driver`), as a file or as a directory (which made haul's own write of it
/// fail as a local I/O error): refused as an unsupported entry before anything is written.
#[test]
fn an_entry_named_like_the_folders_bookkeeping_files_is_refused() {
    for (kind, name) in [
        (AssetKind::Car, "c/.revision/x"),
        (AssetKind::Car, "c/.revision"),
        (AssetKind::Driver, "c/.haul-driver/x"),
    ] {
        let s = Setup::new();
        let (zip, car) = s.asset_zip(
            "c.zip",
            asset(kind, "C", "x", "c", 1, 0),
            &[("c/ok.txt", b"ok"), (name, b"x")],
        );
        match install_asset(&zip, &car, &s.root()) {
            Err(InstallError::UnsupportedEntry { entry, reason }) => {
                assert_eq!(entry, name);
                assert!(reason.contains("bookkeeping"), "{reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(listing(&s.root()).is_empty(), "{name}");
    }
}

#[test]
fn size_mismatch_missing_payload_and_bad_assets_are_refused() {
    let s = Setup::new();
    let (zip, car) = s.asset_zip(
        "c.zip",
        asset(AssetKind::Car, "C", "x", "c", 1, 0),
        &[("elsewhere/x", b"x")],
    );
    let wrong = Asset {
        size: car.size + 1,
        ..car.clone()
    };
    assert!(matches!(
        install_asset(&zip, &wrong, &s.root()),
        Err(InstallError::ArchiveSizeMismatch { .. })
    ));
    assert!(
        matches!(install_asset(&zip, &car, &s.root()), Err(InstallError::EmptyPayload { prefix }) if prefix == "c/")
    );
    let bad = Asset {
        directory: "..".into(),
        ..car.clone()
    };
    assert!(matches!(
        install_asset(&zip, &bad, &s.root()),
        Err(InstallError::BadCatalogEntry {
            field: "directory",
            ..
        })
    ));
    let bad = Asset {
        kind: AssetKind::Track,
        category: "../../x".into(),
        ..car
    };
    assert!(matches!(
        asset_state(&s.root(), &bad),
        Err(InstallError::BadCatalogEntry {
            field: "category",
            ..
        })
    ));
    assert!(!s.root().exists());
}

#[test]
fn recover_root_cleans_every_staging_parent() {
    let s = Setup::new();
    let root = s.root();
    for p in [
        "cars/models/.c.haul-staging-0/x",
        "tracks/road/.t.haul-staging-3",
        "drivers/usr/.1.haul-trash-0",
    ] {
        fs::create_dir_all(root.join(p)).unwrap();
    }
    fs::create_dir_all(root.join("tracks/road/t")).unwrap();
    let report = recover_root(&root).unwrap();
    assert_eq!(report.removed.len(), 3);
    assert_eq!(
        listing(&root),
        vec![
            "cars/",
            "cars/models/",
            "drivers/",
            "drivers/usr/",
            "tracks/",
            "tracks/road/",
            "tracks/road/t/"
        ]
    );
}
