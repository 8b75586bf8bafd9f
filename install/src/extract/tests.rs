use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use crate::error::UnsafeReason;
use crate::testzip::{self, dir, file, file_mode, listing, raw_zip, write_zip, RawEntry, RawZip};

struct Scene {
    _archives: TempDir,
    root: TempDir,
    archive: PathBuf,
}

impl Scene {
    /// An install root holding `dest/old.txt`, and an archive path elsewhere.
    fn new() -> Scene {
        let archives = TempDir::new().unwrap();
        let root = TempDir::new().unwrap();
        fs::create_dir(root.path().join("dest")).unwrap();
        fs::write(root.path().join("dest/old.txt"), b"old").unwrap();
        let archive = archives.path().join("a.zip");
        Scene {
            _archives: archives,
            root,
            archive,
        }
    }

    fn dest(&self) -> PathBuf {
        self.root.path().join("dest")
    }

    fn extract(&self) -> Result<Committed, InstallError> {
        extract_and_commit(
            &self.archive,
            &self.dest(),
            |name| Some(name.to_string()),
            &ExtractOptions::default(),
        )
    }

    /// Extracts, expects an error, and checks that the install root is byte-for-byte
    /// what it was (no staging leftovers, old tree intact).
    fn refused(&self) -> InstallError {
        let before = listing(self.root.path());
        let err = self.extract().expect_err("archive must be refused");
        assert_eq!(listing(self.root.path()), before, "install root changed");
        assert_eq!(fs::read(self.dest().join("old.txt")).unwrap(), b"old");
        assert!(
            err.is_unsafe_archive(),
            "{err} should count as an unsafe archive"
        );
        err
    }

    fn refused_raw(&self, entries: &[RawEntry]) -> InstallError {
        raw_zip(entries).write(&self.archive);
        self.refused()
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn unsafe_reason(err: &InstallError, expected_entry: &str) -> UnsafeReason {
    match err {
        InstallError::UnsafeEntry { entry, reason } => {
            assert_eq!(entry, expected_entry);
            *reason
        }
        other => panic!("expected UnsafeEntry, got {other:?}"),
    }
}

#[test]
fn normal_archive_installs_files_dirs_and_modes_without_setuid() {
    let s = Scene::new();
    fs::remove_dir_all(s.dest()).unwrap();
    write_zip(
        &s.archive,
        &[
            dir("docs/"),
            file("docs/readme.txt", b"hello"),
            file_mode("bin/tool", b"\x00binary", 0o755),
            file_mode("data/ro.txt", b"ro", 0o444),
            file("deep/a/b/c.txt", b"c"),
        ],
    );
    let committed = s.extract().unwrap();
    assert!(!committed.replaced);
    assert_eq!(committed.stats.files, 4);
    let d = s.dest();
    assert_eq!(fs::read(d.join("docs/readme.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(d.join("deep/a/b/c.txt")).unwrap(), b"c");
    assert_eq!(mode_of(&d.join("bin/tool")), 0o755);
    assert_eq!(mode_of(&d.join("data/ro.txt")), 0o444);
    assert_eq!(mode_of(&d.join("docs")), 0o755);
    assert_eq!(mode_of(&d.join("deep/a")), 0o755);
    assert_eq!(
        listing(s.root.path()),
        vec![
            "dest/",
            "dest/bin/",
            "dest/bin/tool",
            "dest/data/",
            "dest/data/ro.txt",
            "dest/deep/",
            "dest/deep/a/",
            "dest/deep/a/b/",
            "dest/deep/a/b/c.txt",
            "dest/docs/",
            "dest/docs/readme.txt"
        ]
    );
}

#[test]
fn the_new_tree_keeps_the_permissions_of_the_one_it_replaces_and_honours_the_umask() {
    // A private (700) destination came back 755: every later file in it readable by all.
    let s = Scene::new();
    fs::set_permissions(s.dest(), fs::Permissions::from_mode(0o700)).unwrap();
    write_zip(&s.archive, &[file("sub/f.txt", b"x")]);
    s.extract().unwrap();
    assert_eq!(mode_of(&s.dest()), 0o700);
    // Read-only too: kept, and set only once the tree is written.
    fs::set_permissions(s.dest(), fs::Permissions::from_mode(0o555)).unwrap();
    s.extract().unwrap();
    assert_eq!(mode_of(&s.dest()), 0o555);
    fs::set_permissions(s.dest(), fs::Permissions::from_mode(0o755)).unwrap();
    // A new tree, and the directories inside: 755 less the process's umask.
    let umask = crate::fsutil::umask();
    fs::remove_dir_all(s.dest()).unwrap();
    s.extract().unwrap();
    assert_eq!(mode_of(&s.dest()), 0o755 & !umask);
    assert_eq!(mode_of(&s.dest().join("sub")), 0o755 & !umask);
    assert_eq!(mode_of(&s.dest().join("sub/f.txt")), 0o644 & !umask);
}

#[test]
fn a_symlinked_destination_does_not_lend_its_targets_mode_to_the_new_tree() {
    // (From a review.) A link to a world-writable sticky directory made the new tree 1777.
    let s = Scene::new();
    let shared = s.root.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::remove_dir_all(s.dest()).unwrap();
    std::os::unix::fs::symlink(&shared, s.dest()).unwrap();
    write_zip(&s.archive, &[file("f.txt", b"x")]);
    s.extract().unwrap();
    assert!(fs::symlink_metadata(s.dest()).unwrap().is_dir());
    assert_eq!(mode_of(&s.dest()), 0o755 & !crate::fsutil::umask());
    assert_eq!(mode_of(&shared), 0o1777, "the link's target is left alone");
}

#[test]
fn setuid_setgid_and_sticky_bits_are_dropped() {
    let s = Scene::new();
    let mut suid = RawEntry::stored("suid", b"x");
    suid.mode = Some(0o104_755);
    let mut sgid = RawEntry::stored("sgid", b"x");
    sgid.mode = Some(0o102_750);
    let mut sticky = RawEntry::stored("sticky", b"x");
    sticky.mode = Some(0o101_640);
    raw_zip(&[suid, sgid, sticky]).write(&s.archive);
    s.extract().unwrap();
    assert_eq!(mode_of(&s.dest().join("suid")), 0o755);
    assert_eq!(mode_of(&s.dest().join("sgid")), 0o750);
    assert_eq!(mode_of(&s.dest().join("sticky")), 0o640);
}

#[test]
fn replacing_an_existing_tree_is_whole() {
    let s = Scene::new();
    fs::create_dir(s.dest().join("sub")).unwrap();
    fs::write(s.dest().join("sub/stale.txt"), b"stale").unwrap();
    write_zip(&s.archive, &[file("new.txt", b"new")]);
    let committed = s.extract().unwrap();
    assert!(committed.replaced);
    assert_eq!(listing(s.root.path()), vec!["dest/", "dest/new.txt"]);
}

#[test]
fn extract_to_staging_applies_the_requested_durability() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("new.txt", b"new")]);
    for durability in [Durability::NoSync, Durability::SyncBeforeCommit] {
        let options = ExtractOptions {
            durability,
            ..ExtractOptions::default()
        };
        let staged =
            extract_to_staging(&s.archive, &s.dest(), |n| Some(n.to_string()), &options).unwrap();
        assert_eq!(staged.durability(), durability);
        staged.commit().unwrap();
        assert_eq!(fs::read(s.dest().join("new.txt")).unwrap(), b"new");
    }
}

#[test]
fn executable_by_content_policy_uses_magic_and_archive_bits() {
    let s = Scene::new();
    write_zip(
        &s.archive,
        &[
            file("server/ls", b"\x7fELF\x02\x01"),
            file("server/run.sh", b"#!/bin/sh\necho hi\n"),
            file("server/macho", &[0xcf, 0xfa, 0xed, 0xfe, 7, 0]),
            file_mode("server/flagged", b"plain", 0o700),
            file_mode("bin/readme.md", b"# not a program", 0o644),
            file("x", b"#"),
        ],
    );
    let opts = ExtractOptions {
        modes: ModePolicy::ExecutableByContent,
        ..ExtractOptions::default()
    };
    let committed =
        extract_and_commit(&s.archive, &s.dest(), |n| Some(n.to_string()), &opts).unwrap();
    let d = s.dest();
    assert_eq!(mode_of(&d.join("server/ls")), 0o755);
    assert_eq!(mode_of(&d.join("server/run.sh")), 0o755);
    assert_eq!(mode_of(&d.join("server/macho")), 0o755);
    assert_eq!(mode_of(&d.join("server/flagged")), 0o755);
    assert_eq!(mode_of(&d.join("bin/readme.md")), 0o644);
    assert_eq!(mode_of(&d.join("x")), 0o644);
    assert_eq!(committed.stats.executables, 4);
}

#[test]
fn magic_detection_cases() {
    assert!(is_executable_magic(b"#!"));
    assert!(is_executable_magic(b"\x7fELF"));
    for word in [
        0xfeedfaceu32,
        0xfeedfacf,
        0xcefaedfe,
        0xcffaedfe,
        0xcafebabe,
    ] {
        assert!(is_executable_magic(&word.to_be_bytes()), "{word:x}");
    }
    assert!(!is_executable_magic(b""));
    assert!(!is_executable_magic(b"#"));
    assert!(!is_executable_magic(b"\x7fEL"));
    assert!(!is_executable_magic(b"PK\x03\x04"));
    assert!(!is_executable_magic(&0xfeedfaceu32.to_le_bytes()[..3]));
}

#[test]
fn traversal_names_are_refused_by_name_and_reason() {
    let cases = [
        ("../evil.txt", UnsafeReason::ParentComponent),
        ("ok/../../evil.txt", UnsafeReason::ParentComponent),
        ("/etc/evil", UnsafeReason::AbsolutePath),
        ("C:/evil.txt", UnsafeReason::Colon),
        ("\\\\server\\share\\evil", UnsafeReason::Backslash),
        ("ok\\..\\..\\evil", UnsafeReason::Backslash),
        ("nul\0byte", UnsafeReason::ControlCharacter),
        ("bell\x07", UnsafeReason::ControlCharacter),
        ("a//b", UnsafeReason::EmptyComponent),
        ("./x", UnsafeReason::DotComponent),
    ];
    for (name, expected) in cases {
        let s = Scene::new();
        let err = s.refused_raw(&[
            RawEntry::stored("fine.txt", b"ok"),
            RawEntry::stored(name, b"evil"),
        ]);
        assert_eq!(unsafe_reason(&err, name), expected, "{name:?}");
    }
}

#[test]
fn non_utf8_names_are_refused() {
    let s = Scene::new();
    let mut e = RawEntry::stored("x", b"x");
    e.name = b"caf\xe9".to_vec();
    let err = s.refused_raw(&[e]);
    assert!(matches!(
        err,
        InstallError::UnsafeEntry {
            reason: UnsafeReason::NotUtf8,
            ..
        }
    ));
}

#[test]
fn symlinks_are_refused_even_when_harmless_looking() {
    let s = Scene::new();
    let mut link = RawEntry::stored("link", b"inside.txt");
    link.mode = Some(0o120_777);
    let err = s.refused_raw(&[RawEntry::stored("inside.txt", b"x"), link]);
    assert_eq!(unsafe_reason(&err, "link"), UnsafeReason::Symlink);

    // The zip crate's writer produces the same thing.
    let s = Scene::new();
    let mut w = zip::ZipWriter::new(fs::File::create(&s.archive).unwrap());
    w.add_symlink(
        "escape",
        "../../etc/passwd",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    w.finish().unwrap();
    assert_eq!(unsafe_reason(&s.refused(), "escape"), UnsafeReason::Symlink);
}

#[test]
fn devices_fifos_and_directories_with_data_are_refused() {
    let s = Scene::new();
    let mut fifo = RawEntry::stored("fifo", b"");
    fifo.mode = Some(0o010_644);
    assert_eq!(
        unsafe_reason(&s.refused_raw(&[fifo]), "fifo"),
        UnsafeReason::SpecialFile
    );

    let s = Scene::new();
    let d = RawEntry::stored("dir/", b"payload");
    assert_eq!(
        unsafe_reason(&s.refused_raw(&[d]), "dir/"),
        UnsafeReason::DirectoryWithData
    );
}

#[test]
fn duplicate_names_are_refused_by_name() {
    let s = Scene::new();
    let err = s.refused_raw(&[
        RawEntry::stored("a.txt", b"first"),
        RawEntry::stored("b.txt", b"b"),
        RawEntry::stored("a.txt", b"second"),
    ]);
    match err {
        InstallError::DuplicateEntry { entry, other } => {
            assert_eq!(entry, "a.txt");
            assert_eq!(other, "a.txt");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_and_a_directory_with_one_path_collide() {
    let s = Scene::new();
    let err = s.refused_raw(&[RawEntry::stored("a", b"file"), RawEntry::stored("a/", b"")]);
    assert!(
        matches!(&err, InstallError::DuplicateEntry { entry, other } if entry == "a/" && other == "a"),
        "{err:?}"
    );
    let s = Scene::new();
    let err = s.refused_raw(&[
        RawEntry::stored("a", b"file"),
        RawEntry::stored("a/b", b"x"),
    ]);
    assert!(
        matches!(&err, InstallError::DuplicateEntry { entry, other } if entry == "a/b" && other == "a"),
        "{err:?}"
    );
}

#[test]
fn overlapping_entries_sharing_one_data_region_are_refused() {
    // Entry "outer"'s stored data is entry "inner"'s local header plus data: the
    // classic non-recursive zip bomb layout, every header consistent.
    let s = Scene::new();
    let inner = RawEntry::stored("inner", b"kernel kernel kernel");
    let mut inner_bytes = inner.local_header();
    inner_bytes.extend_from_slice(&inner.data);
    let outer = RawEntry::stored("outer", &inner_bytes);
    let mut z = RawZip::default();
    z.body.extend_from_slice(&outer.local_header());
    let inner_offset = z.body.len() as u32;
    z.body.extend_from_slice(&inner_bytes);
    z.add_central(&outer, 0);
    z.add_central(&inner, inner_offset);
    z.write(&s.archive);
    let err = s.refused();
    assert!(
        matches!(&err, InstallError::OverlappingEntries { a, b } if a == "outer" && b == "inner"),
        "{err:?}"
    );
}

#[test]
fn two_entries_pointing_at_one_local_header_are_refused() {
    let s = Scene::new();
    let one = RawEntry::stored("same", b"data");
    let mut z = RawZip::default();
    z.add(&one);
    let mut twin = one.clone();
    twin.name = b"twin".to_vec();
    twin.local_name = Some(b"same".to_vec());
    z.add_central(&twin, 0);
    z.write(&s.archive);
    // The twin's name disagrees with the local header it points at.
    assert!(
        matches!(s.refused(), InstallError::HeaderMismatch { entry, field: "name" } if entry == "twin")
    );
}

/// An Info-ZIP Unicode Path extra field (0x7075) saying `utf8`, for a header name whose
/// CRC-32 is `crc`.
fn unicode_path_field(utf8: &str, crc: u32) -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend_from_slice(&crc.to_le_bytes());
    body.extend_from_slice(utf8.as_bytes());
    let mut field = 0x7075u16.to_le_bytes().to_vec();
    field.extend_from_slice(&(body.len() as u16).to_le_bytes());
    field.extend_from_slice(&body);
    field
}

#[test]
fn a_name_in_a_legacy_encoding_with_a_unicode_path_field_is_extracted_under_its_utf8_name() {
    // Windows zips with non-ASCII names: `caf\x82.txt` (CP437) in both headers, and
    // `café.txt` in a Unicode Path field in both. The reader takes the central name from
    // the field, so the local header's name "disagreed" and the archive was refused.
    let s = Scene::new();
    let legacy = b"caf\x82.txt".to_vec();
    let mut entry = RawEntry::stored("", b"bonjour");
    entry.name = legacy.clone();
    entry.extra = unicode_path_field("café.txt", testzip::crc32(&legacy));
    raw_zip(&[entry.clone()]).write(&s.archive);
    s.extract().unwrap();
    assert_eq!(fs::read(s.dest().join("café.txt")).unwrap(), b"bonjour");
    // A field whose CRC is not the header name's is ignored (APPNOTE 4.6.9): the legacy
    // name is no UTF-8 name, and the archive is refused as before.
    let s = Scene::new();
    entry.extra = unicode_path_field("café.txt", 0x1234_5678);
    raw_zip(&[entry]).write(&s.archive);
    let e = s.refused();
    assert!(
        !matches!(e, InstallError::HeaderMismatch { .. }),
        "a field that does not apply names nothing: {e:?}"
    );
}

#[test]
fn an_entry_reaching_into_the_central_directory_is_refused() {
    let s = Scene::new();
    let long = RawEntry::stored("long", &[7u8; 200]);
    let mut z = RawZip::default();
    z.body.extend_from_slice(&long.local_header());
    z.body.extend_from_slice(&long.data[..10]);
    z.add_central(&long, 0);
    z.write(&s.archive);
    assert!(
        matches!(s.refused(), InstallError::OverlapsCentralDirectory { entry } if entry == "long")
    );
}

#[test]
fn local_headers_that_disagree_with_the_central_directory_are_refused_by_field() {
    type Tweak = Box<dyn Fn(&mut RawEntry)>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "name",
            Box::new(|e| e.local_name = Some(b"other.txt".to_vec())),
        ),
        ("compression method", Box::new(|e| e.local_method = Some(8))),
        ("crc32", Box::new(|e| e.local_crc = Some(0xdead_beef))),
        ("uncompressed size", Box::new(|e| e.local_size = Some(3))),
        (
            "data descriptor flag",
            Box::new(|e| e.local_flags = Some(0x0008)),
        ),
    ];
    for (field, tweak) in cases {
        let s = Scene::new();
        let mut e = RawEntry::stored("doc.txt", b"document body");
        tweak(&mut e);
        let err = s.refused_raw(&[e]);
        assert!(
            matches!(&err, InstallError::HeaderMismatch { entry, field: f } if entry == "doc.txt" && *f == field),
            "{field}: {err:?}"
        );
    }
}

#[test]
fn a_local_header_hidden_between_entries_is_refused() {
    let s = Scene::new();
    let mut z = RawZip::default();
    z.add(&RawEntry::stored("a", b"aaaa"));
    let hidden = RawEntry::stored("hidden", b"only a streaming reader sees me");
    z.body.extend_from_slice(&hidden.local_header());
    z.body.extend_from_slice(&hidden.data);
    z.add(&RawEntry::stored("b", b"bbbb"));
    z.write(&s.archive);
    assert!(matches!(
        s.refused(),
        InstallError::UnlistedLocalHeader { .. }
    ));
}

#[test]
fn a_local_header_hidden_before_the_archive_start_is_refused() {
    // `cat evil.zip ok.zip`: the central directory lists ok.zip's entries only, a streaming
    // reader starts with evil.zip's.
    let s = Scene::new();
    let mut bytes = raw_zip(&[RawEntry::stored("payload.sh", b"#!/bin/sh\necho owned\n")]).bytes();
    bytes.extend_from_slice(&raw_zip(&[RawEntry::stored("a", b"aaaa")]).bytes());
    fs::write(&s.archive, bytes).unwrap();
    match s.refused() {
        InstallError::UnlistedLocalHeader { offset } => assert_eq!(offset, 0),
        other => panic!("expected UnlistedLocalHeader, got {other:?}"),
    }
}

#[test]
fn a_self_extracting_stub_without_local_headers_before_the_archive_is_accepted() {
    let s = Scene::new();
    let mut bytes = b"#!/bin/sh\nexec unzip \"$0\"\n".repeat(8);
    bytes.extend_from_slice(&raw_zip(&[RawEntry::stored("a", b"aaaa")]).bytes());
    fs::write(&s.archive, bytes).unwrap();
    s.extract().unwrap();
    assert_eq!(fs::read(s.dest().join("a")).unwrap(), b"aaaa");
}

#[test]
fn an_end_record_hidden_in_the_archive_comment_is_refused() {
    // The comment ends with an empty end-of-central-directory record: read from the end,
    // the archive looks empty, and would replace the destination with nothing.
    let s = Scene::new();
    let mut bytes = raw_zip(&[RawEntry::stored("a", b"aaaa")]).bytes();
    let fake: Vec<u8> = [&0x0605_4b50u32.to_le_bytes()[..], &[0u8; 18]].concat();
    let len = bytes.len();
    bytes[len - 2..].copy_from_slice(&(fake.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&fake);
    fs::write(&s.archive, bytes).unwrap();
    let err = s.refused();
    assert!(
        matches!(err, InstallError::UnlistedLocalHeader { offset: 0 }),
        "{err:?}"
    );
}

#[test]
fn entries_producing_more_bytes_than_declared_are_stopped() {
    // Both headers agree on a 10-byte size, the stored data holds 100 bytes.
    let s = Scene::new();
    let mut liar = RawEntry::stored("liar", &[b'x'; 100]);
    liar.uncompressed_size = Some(10);
    let err = s.refused_raw(&[RawEntry::stored("first", b"1"), liar]);
    assert!(
        matches!(&err, InstallError::CorruptEntry { entry, .. } if entry == "liar"),
        "{err:?}"
    );
}

#[test]
fn entries_producing_fewer_bytes_than_declared_are_refused() {
    let s = Scene::new();
    let mut short = RawEntry::stored("short", &[b'x'; 100]);
    short.uncompressed_size = Some(1000);
    let err = s.refused_raw(&[short]);
    assert!(
        matches!(&err, InstallError::CorruptEntry { entry, .. } if entry == "short"),
        "{err:?}"
    );
}

#[test]
fn a_crc_mismatch_removes_the_partly_written_staging_tree() {
    let s = Scene::new();
    let mut bad = RawEntry::stored("z-bad", b"payload");
    bad.crc = Some(0x1234_5678);
    let err = s.refused_raw(&[RawEntry::stored("a-good", b"fine"), bad]);
    assert!(
        matches!(&err, InstallError::CorruptEntry { entry, .. } if entry == "z-bad"),
        "{err:?}"
    );
}

#[test]
fn encrypted_entries_are_refused() {
    let s = Scene::new();
    let mut e = RawEntry::stored("secret", b"xxxxxxxxxxxx");
    e.flags = 0x0001;
    let err = s.refused_raw(&[e]);
    assert!(
        matches!(&err, InstallError::UnsupportedEntry { entry, .. } if entry == "secret"),
        "{err:?}"
    );
}

#[test]
fn a_hundred_thousand_tiny_entries_hit_the_entry_limit_without_writing() {
    let s = Scene::new();
    let mut z = RawZip::default();
    for i in 0..100_000u32 {
        z.add(&RawEntry::stored(&format!("f{i}"), b""));
    }
    z.write(&s.archive);
    let err = s.refused();
    assert!(
        matches!(
            err,
            InstallError::TooManyEntries {
                limit: 50_000,
                count: 100_000
            }
        ),
        "{err:?}"
    );
}

#[test]
fn declared_total_over_the_limit_is_refused() {
    let s = Scene::new();
    raw_zip(&[
        RawEntry::stored("a", &[1u8; 600]),
        RawEntry::stored("b", &[2u8; 600]),
    ])
    .write(&s.archive);
    let opts = ExtractOptions {
        limits: ExtractLimits {
            max_total_uncompressed: 1000,
            ..ExtractLimits::default()
        },
        ..ExtractOptions::default()
    };
    let before = listing(s.root.path());
    let err =
        extract_and_commit(&s.archive, &s.dest(), |n| Some(n.to_string()), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::TooLarge {
                total: 1200,
                limit: 1000
            }
        ),
        "{err:?}"
    );
    assert_eq!(listing(s.root.path()), before);
}

#[test]
fn a_highly_compressed_entry_is_refused_by_ratio() {
    let s = Scene::new();
    let zeros = vec![0u8; 3 * 1024 * 1024];
    write_zip(
        &s.archive,
        &[file("notes.txt", b"hi"), file("zeros.bin", &zeros)],
    );
    let err = s.refused();
    assert!(
        matches!(&err, InstallError::RatioTooHigh { entry: Some(e), limit: 200, .. } if e == "zeros.bin"),
        "{err:?}"
    );
}

#[test]
fn many_small_compressible_entries_are_refused_by_the_overall_ratio() {
    let s = Scene::new();
    let zeros = vec![0u8; 900 * 1024];
    let names: Vec<String> = (0..4).map(|i| format!("z{i}")).collect();
    let items: Vec<_> = names.iter().map(|n| file(n, &zeros)).collect();
    write_zip(&s.archive, &items);
    let err = s.refused();
    assert!(
        matches!(err, InstallError::RatioTooHigh { entry: None, .. }),
        "{err:?}"
    );
}

#[test]
fn a_select_function_cannot_escape_the_destination() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"a")]);
    let before = listing(s.root.path());
    let err = extract_and_commit(
        &s.archive,
        &s.dest(),
        |_| Some("../outside.txt".into()),
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        InstallError::UnsafeEntry {
            reason: UnsafeReason::ParentComponent,
            ..
        }
    ));
    assert_eq!(listing(s.root.path()), before);
}

#[test]
fn dropping_a_staged_tree_leaves_nothing_behind() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"a")]);
    let before = listing(s.root.path());
    let staged = extract_to_staging(
        &s.archive,
        &s.dest(),
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .unwrap();
    let name = staged
        .staging_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(".dest.haul-staging-"), "{name}");
    assert!(staged.staging_path().join("a.txt").exists());
    drop(staged);
    assert_eq!(listing(s.root.path()), before);
}

#[test]
fn files_added_to_the_staged_tree_appear_with_the_commit() {
    let s = Scene::new();
    write_zip(
        &s.archive,
        &[file("a.txt", b"a"), file(".revision", b"99\n")],
    );
    let mut staged = extract_to_staging(
        &s.archive,
        &s.dest(),
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .unwrap();
    staged.write_file(".revision", b"3\n", 0o644).unwrap();
    assert!(!s.dest().join(".revision").exists());
    staged.commit().unwrap();
    assert_eq!(fs::read(s.dest().join(".revision")).unwrap(), b"3\n");
    assert_eq!(
        listing(s.root.path()),
        vec!["dest/", "dest/.revision", "dest/a.txt"]
    );
}

#[test]
fn recover_removes_staging_and_restores_a_moved_aside_tree() {
    let root = TempDir::new().unwrap();
    let p = root.path();
    fs::create_dir_all(p.join(".d.haul-staging-0/sub")).unwrap();
    fs::write(p.join(".d.haul-staging-0/sub/f"), b"x").unwrap();
    fs::create_dir(p.join("d")).unwrap();
    fs::create_dir(p.join(".d.haul-old-2")).unwrap();
    fs::create_dir(p.join(".e.haul-old-0")).unwrap();
    fs::write(p.join(".e.haul-old-0/keep"), b"k").unwrap();
    fs::create_dir(p.join(".f.haul-trash-1")).unwrap();
    fs::write(p.join(".cfg.haul-tmp-0"), b"partial").unwrap();
    fs::write(p.join(".unrelated"), b"mine").unwrap();
    let report = recover(p).unwrap();
    assert_eq!(report.removed.len(), 4);
    assert_eq!(report.restored, vec![p.join("e")]);
    assert_eq!(listing(p), vec![".unrelated", "d/", "e/", "e/keep"]);
    assert_eq!(
        recover(&p.join("missing")).unwrap(),
        RecoverReport::default()
    );
}

#[test]
fn read_small_reads_one_entry_and_respects_its_cap() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("m.json", b"{\"a\":1}"), dir("d/")]);
    let mut v = ValidatedArchive::open(&s.archive, &ExtractLimits::default()).unwrap();
    assert_eq!(v.read_small("m.json", 100).unwrap().unwrap(), b"{\"a\":1}");
    assert!(v.read_small("d", 100).unwrap().is_none());
    assert!(v.read_small("absent", 100).unwrap().is_none());
    // Named, with its own size (it read as the whole archive's).
    let e = v.read_small("m.json", 3).unwrap_err();
    assert!(
        matches!(&e, InstallError::EntryTooLarge { name, size: 7, limit: 3 } if name == "m.json"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "archive entry \"m.json\" is 7 bytes uncompressed, limit is 3"
    );
    assert_eq!(v.entries().len(), 2);
    let _ = testzip::crc32(b"");
}

#[test]
fn the_two_rename_fallback_also_replaces_the_tree_whole() {
    crate::fsutil::FORCE_EXCHANGE_FALLBACK.with(|f| f.set(true));
    let s = Scene::new();
    write_zip(&s.archive, &[file("new.txt", b"new")]);
    let committed = s.extract().unwrap();
    crate::fsutil::FORCE_EXCHANGE_FALLBACK.with(|f| f.set(false));
    assert!(committed.replaced);
    assert_eq!(listing(s.root.path()), vec!["dest/", "dest/new.txt"]);
}

#[test]
fn a_crash_between_the_fallback_renames_is_rolled_back_by_recover() {
    // State after `dest` was moved aside and before the staging tree was renamed in.
    let root = TempDir::new().unwrap();
    let p = root.path();
    fs::create_dir_all(p.join(".dest.haul-old-0")).unwrap();
    fs::write(p.join(".dest.haul-old-0/old.txt"), b"old").unwrap();
    fs::create_dir_all(p.join(".dest.haul-staging-0")).unwrap();
    fs::write(p.join(".dest.haul-staging-0/new.txt"), b"new").unwrap();
    recover(p).unwrap();
    assert_eq!(listing(p), vec!["dest/", "dest/old.txt"]);
}

/// A 250-byte directory name: ext4 takes it, but not with `.<name>.haul-staging-0` around it.
fn long_name(tag: char) -> String {
    let name = format!("{}{tag}", "é".repeat(120)) + &"n".repeat(9);
    assert_eq!(name.len(), 250);
    name
}

#[test]
fn a_destination_with_a_250_byte_name_is_extracted_and_replaced() {
    for fallback in [false, true] {
        crate::fsutil::FORCE_EXCHANGE_FALLBACK.with(|f| f.set(fallback));
        let s = Scene::new();
        let dest = s.root.path().join(long_name('a'));
        write_zip(&s.archive, &[file("one.txt", b"1")]);
        let staged = extract_to_staging(
            &s.archive,
            &dest,
            |n| Some(n.to_string()),
            &ExtractOptions::default(),
        )
        .unwrap();
        let staging = staged.staging_path().file_name().unwrap().len();
        assert!(staging <= 255, "{staging}");
        assert!(!staged.commit().unwrap().replaced);
        write_zip(&s.archive, &[file("two.txt", b"2")]);
        let replaced = extract_and_commit(
            &s.archive,
            &dest,
            |n| Some(n.to_string()),
            &ExtractOptions::default(),
        );
        crate::fsutil::FORCE_EXCHANGE_FALLBACK.with(|f| f.set(false));
        assert!(replaced.unwrap().replaced);
        assert_eq!(
            listing(s.root.path()),
            vec![
                "dest/".to_string(),
                "dest/old.txt".to_string(),
                format!("{}/", long_name('a')),
                format!("{}/two.txt", long_name('a')),
            ],
            "fallback: {fallback}"
        );
    }
}

#[test]
fn a_destination_name_no_file_system_takes_fails_before_extracting() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"a")]);
    let before = listing(s.root.path());
    let dest = s.root.path().join("x".repeat(256));
    let err = extract_and_commit(
        &s.archive,
        &dest,
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, InstallError::BadName { reason, .. } if reason.contains("256 bytes")),
        "{err}"
    );
    assert_eq!(listing(s.root.path()), before);
}

#[test]
fn a_crash_between_the_fallback_renames_of_long_names_is_rolled_back_by_recover() {
    let root = TempDir::new().unwrap();
    let p = root.path();
    // Two names that share their first 240 bytes, each moved aside (its new tree not yet
    // renamed in), and a third whose holder was created but nothing moved into it yet.
    let mut moved = Vec::new();
    for tag in ['a', 'b'] {
        let dest = p.join(long_name(tag));
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old.txt"), tag.to_string()).unwrap();
        let old = crate::fsutil::move_aside(&dest).unwrap();
        assert!(!dest.exists() && old.tree.join("old.txt").exists());
        moved.push(old.leftover);
        fs::create_dir(
            crate::fsutil::create_unique_dir(&dest, crate::fsutil::Leftover::Staging)
                .unwrap()
                .join("new"),
        )
        .unwrap();
    }
    assert_ne!(moved[0], moved[1]);
    let kept = p.join(long_name('c'));
    fs::create_dir(&kept).unwrap();
    crate::fsutil::create_unique_dir(&kept, crate::fsutil::Leftover::Old).unwrap();
    let mut restored = recover(p).unwrap().restored;
    restored.sort();
    assert_eq!(
        restored,
        vec![p.join(long_name('a')), p.join(long_name('b'))]
    );
    let mut want = vec![
        format!("{}/", long_name('a')),
        format!("{}/old.txt", long_name('a')),
        format!("{}/", long_name('b')),
        format!("{}/old.txt", long_name('b')),
        format!("{}/", long_name('c')),
    ];
    want.sort();
    assert_eq!(listing(p), want);
    assert_eq!(
        fs::read(p.join(long_name('b')).join("old.txt")).unwrap(),
        b"b"
    );
    // A holder whose destination is back in place is only removed.
    let dest = p.join(long_name('a'));
    crate::fsutil::move_aside(&dest).unwrap();
    fs::create_dir(&dest).unwrap();
    let report = recover(p).unwrap();
    assert!(report.restored.is_empty() && report.removed.len() == 1);
    assert!(!dest.join("old.txt").exists());
}

#[test]
fn entries_with_data_descriptors_extract() {
    let s = Scene::new();
    let mut streamed = RawEntry::stored("streamed.txt", b"written by a streaming zipper");
    streamed.flags = 0x0008;
    streamed.local_crc = Some(0);
    streamed.local_size = Some(0);
    streamed.local_compressed_size = Some(0);
    streamed.descriptor = true;
    let mut second = streamed.clone();
    second.name = b"second.txt".to_vec();
    raw_zip(&[streamed, second]).write(&s.archive);
    s.extract().unwrap();
    assert_eq!(
        fs::read(s.dest().join("streamed.txt")).unwrap(),
        b"written by a streaming zipper"
    );
    assert!(s.dest().join("second.txt").exists());
}

#[test]
fn zip64_local_headers_from_the_writer_validate() {
    let s = Scene::new();
    let mut w = zip::ZipWriter::new(fs::File::create(&s.archive).unwrap());
    let opts = zip::write::SimpleFileOptions::default().large_file(true);
    w.start_file("big-in-spirit.bin", opts).unwrap();
    std::io::Write::write_all(&mut w, &[5u8; 5000]).unwrap();
    w.start_file("small.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut w, b"s").unwrap();
    w.finish().unwrap();
    let bytes = fs::read(&s.archive).unwrap();
    assert_eq!(
        &bytes[18..26],
        &[0xff; 8],
        "the writer saturates the local sizes"
    );
    s.extract().unwrap();
    assert_eq!(
        fs::read(s.dest().join("big-in-spirit.bin")).unwrap(),
        vec![5u8; 5000]
    );
}

#[test]
fn an_entry_count_over_the_limit_is_refused_from_the_end_record_alone() {
    let s = Scene::new();
    let entries: Vec<_> = (0..20)
        .map(|i| RawEntry::stored(&format!("f{i}"), b"x"))
        .collect();
    let mut bytes = raw_zip(&entries).bytes();
    // Break the central directory: only the end record's count can be trusted now.
    let eocd = bytes.len() - 22;
    let cd = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    bytes[cd..cd + 4].copy_from_slice(b"XXXX");
    fs::write(&s.archive, &bytes).unwrap();
    let opts = ExtractOptions {
        limits: ExtractLimits {
            max_entries: 10,
            ..ExtractLimits::default()
        },
        ..ExtractOptions::default()
    };
    let err =
        extract_and_commit(&s.archive, &s.dest(), |n| Some(n.to_string()), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::TooManyEntries {
                count: 20,
                limit: 10
            }
        ),
        "{err:?}"
    );
    // With a generous limit the broken directory is what fails.
    let err = s.extract().unwrap_err();
    assert!(matches!(err, InstallError::Zip { .. }), "{err:?}");
}

#[test]
fn deep_paths_of_empty_folders_count_as_directories_and_are_refused() {
    let s = Scene::new();
    // 20 entries, each 400 folders deep: 8,000 directories from a ~40 KB archive.
    let names: Vec<String> = (0..20)
        .map(|i| format!("{i:02}/{}f", "d/".repeat(399)))
        .collect();
    let items: Vec<_> = names.iter().map(|name| file(name, b"")).collect();
    write_zip(&s.archive, &items);
    let err = s.refused();
    assert!(
        matches!(err, InstallError::RatioTooHigh { entry: None, .. }),
        "{err}"
    );
    // With a directory limit below the count, that limit says so.
    let options = ExtractOptions {
        limits: ExtractLimits {
            max_directories: 1_000,
            ..ExtractLimits::default()
        },
        ..ExtractOptions::default()
    };
    let err = extract_and_commit(&s.archive, &s.dest(), |n| Some(n.to_string()), &options)
        .expect_err("over the directory limit");
    assert!(
        matches!(err, InstallError::TooManyDirectories { limit: 1_000 }),
        "{err}"
    );
    assert_eq!(fs::read(s.dest().join("old.txt")).unwrap(), b"old");
}

#[test]
fn an_archive_of_ordinary_folders_stays_within_the_directory_limits() {
    let s = Scene::new();
    let names: Vec<String> = (0..300)
        .map(|i| format!("a/b{}/c{i}/f.txt", i % 7))
        .collect();
    let items: Vec<_> = names.iter().map(|name| file(name, b"data")).collect();
    write_zip(&s.archive, &items);
    let done = s.extract().expect("an ordinary tree");
    assert_eq!(done.stats.files, 300);
    assert!(s.dest().join("a/b6/c13/f.txt").is_file());
}

#[test]
fn a_destination_that_is_a_file_is_refused_and_kept() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"new")]);
    let target = s.root.path().join("precious");
    fs::write(&target, b"keep me").unwrap();
    let before = listing(s.root.path());
    let err = extract_and_commit(
        &s.archive,
        &target,
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .expect_err("a file is no destination");
    assert!(
        matches!(&err, InstallError::DestinationNotDirectory { path } if *path == target),
        "{err}"
    );
    assert_eq!(fs::read(&target).unwrap(), b"keep me");
    assert_eq!(listing(s.root.path()), before);
    // Nor is the archive itself.
    let err = extract_and_commit(
        &s.archive,
        &s.archive,
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .expect_err("the archive is no destination");
    assert!(
        matches!(err, InstallError::DestinationNotDirectory { .. }),
        "{err}"
    );
    assert!(s.archive.is_file());
}

#[test]
fn an_archive_inside_its_destination_or_a_directory_as_the_archive_is_refused() {
    // `haul extract inside/pack.zip -d inside` deleted pack.zip with the old tree.
    let s = Scene::new();
    let inside = s.dest().join("pack.zip");
    write_zip(&inside, &[file("a.txt", b"new")]);
    let before = listing(s.root.path());
    let err = extract_and_commit(
        &inside,
        &s.dest(),
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .expect_err("the archive would go with the old tree");
    assert!(
        matches!(err, InstallError::ArchiveInsideDestination { .. }),
        "{err}"
    );
    assert_eq!(listing(s.root.path()), before, "nothing changed");
    // A directory named as the archive: said so (it read "not a readable zip: i/o error").
    let err = extract_and_commit(
        s.root.path(),
        &s.root.path().join("x"),
        |n| Some(n.to_string()),
        &ExtractOptions::default(),
    )
    .expect_err("a directory is no archive");
    assert!(matches!(err, InstallError::ArchiveNotAFile { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Stopping

fn stopped_by(stop: &Stop) -> ExtractOptions {
    ExtractOptions {
        stop: Some(stop.clone()),
        ..ExtractOptions::default()
    }
}

#[test]
fn a_stop_asked_for_before_the_call_writes_nothing() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"new")]);
    let before = listing(s.root.path());
    let stop = Stop::new();
    stop.stop();
    let err = extract_and_commit(
        &s.archive,
        &s.dest(),
        |n| Some(n.to_string()),
        &stopped_by(&stop),
    )
    .expect_err("a stopped extraction");
    assert!(err.is_interrupted(), "{err}");
    assert!(!err.is_io() && !err.is_unsafe_archive());
    assert_eq!(listing(s.root.path()), before);
    assert_eq!(fs::read(s.dest().join("old.txt")).unwrap(), b"old");
}

/// A stop at every point the extraction looks, in turn: each one before the swap removes
/// the staging tree and leaves the old tree; the first that comes too late lets the commit
/// put the whole new tree in place.
#[test]
fn a_stop_at_any_point_before_the_swap_removes_the_staging_tree_and_keeps_the_old_one() {
    let s = Scene::new();
    let names: Vec<String> = (0..20).map(|i| format!("d{}/f{i}.txt", i % 3)).collect();
    let mut items = vec![dir("empty/")];
    items.extend(names.iter().map(|n| file(n, b"new")));
    write_zip(&s.archive, &items);
    let before = listing(s.root.path());
    let mut interrupted = 0;
    let done = loop {
        let stop = Stop::after_checks(interrupted);
        match extract_and_commit(
            &s.archive,
            &s.dest(),
            |n| Some(n.to_string()),
            &stopped_by(&stop),
        ) {
            Err(InstallError::Interrupted) => {
                assert_eq!(
                    listing(s.root.path()),
                    before,
                    "stopped after {interrupted} checks"
                );
                assert_eq!(fs::read(s.dest().join("old.txt")).unwrap(), b"old");
                interrupted += 1;
            }
            Err(e) => panic!("stopped after {interrupted} checks: {e}"),
            Ok(done) => break done,
        }
    };
    // Before the archive is opened, before the staging tree, before each of the 21
    // entries, and twice in the commit (before the sync, before the swap).
    assert_eq!(interrupted, 1 + 1 + 21 + 2);
    assert!(done.replaced);
    assert_eq!(done.stats.files, 20);
    assert!(!s.dest().join("old.txt").exists());
    assert_eq!(fs::read(s.dest().join("d2/f5.txt")).unwrap(), b"new");
    assert_eq!(listing(s.root.path()).len(), 1 + 20 + 4);
}

#[test]
fn a_stop_inside_a_large_entry_ends_its_copy() {
    let s = Scene::new();
    let data: Vec<u8> = (0..8 * STOP_CHECK_BYTES as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    raw_zip(&[RawEntry::stored("big.bin", &data)]).write(&s.archive);
    let before = listing(s.root.path());
    // One look before the staging tree, one before the entry, one after its first MiB.
    let stop = Stop::after_checks(3);
    let archive = ValidatedArchive::open(&s.archive, &ExtractLimits::default()).unwrap();
    let err = archive
        .extract_to_staging_or_stop(
            &s.dest(),
            |n| Some(n.to_string()),
            ModePolicy::FromArchive,
            Some(stop.clone()),
        )
        .expect_err("stopped inside the entry");
    assert!(err.is_interrupted(), "{err}");
    assert!(stop.is_stopped());
    assert_eq!(listing(s.root.path()), before);
}

#[test]
fn a_stop_after_the_extraction_is_seen_by_the_commit() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"new")]);
    let before = listing(s.root.path());
    let stop = Stop::new();
    let staged = extract_to_staging(
        &s.archive,
        &s.dest(),
        |n| Some(n.to_string()),
        &stopped_by(&stop),
    )
    .unwrap();
    assert!(staged.staging_path().join("a.txt").is_file());
    stop.stop();
    let err = staged.commit().expect_err("stopped before the swap");
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(listing(s.root.path()), before);
    assert_eq!(fs::read(s.dest().join("old.txt")).unwrap(), b"old");
}

#[test]
fn callers_without_a_stop_are_not_stopped() {
    let s = Scene::new();
    write_zip(&s.archive, &[file("a.txt", b"new")]);
    assert_eq!(ExtractOptions::default().stop, None);
    let archive = ValidatedArchive::open(&s.archive, &ExtractLimits::default()).unwrap();
    let staged = archive
        .extract_to_staging(&s.dest(), |n| Some(n.to_string()), ModePolicy::FromArchive)
        .unwrap();
    assert!(staged.commit().unwrap().replaced);
    assert_eq!(fs::read(s.dest().join("a.txt")).unwrap(), b"new");
}
