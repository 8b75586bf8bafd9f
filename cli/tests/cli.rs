//! The `haul` command end to end: exit codes, output modes, resume by re-running.

use std::process::Command;

use haul_origin::{Behavior, Origin};
use sha2::{Digest, Sha256};

fn haul() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haul"))
}

/// An address on 127.0.0.1 where nothing listens (connections are refused).
fn dead_address() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn get_with_matching_sha256_exits_zero_and_writes_the_file() {
    let body = data(200_000);
    let origin = Origin::start().unwrap();
    origin.route("/f.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let out = haul()
        .args(["get", &origin.url("/f.bin"), "-o"])
        .arg(&dest)
        .args(["--sha256", &hex::encode(Sha256::digest(&body)), "--quiet"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

/// `--no-sync` skips only durability: the file is still verified before it is named, and a
/// wrong one still leaves nothing.
#[test]
fn no_sync_still_verifies_before_committing() {
    let body = data(300_000);
    let origin = Origin::start().unwrap();
    origin.route("/f.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let good = haul()
        .args(["get", &origin.url("/f.bin"), "--no-sync", "--quiet", "-o"])
        .arg(dir.path().join("f.bin"))
        .args(["--sha256", &hex::encode(Sha256::digest(&body))])
        .output()
        .unwrap();
    assert_ok(&good);
    assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), body);
    let bad = haul()
        .args(["get", &origin.url("/f.bin"), "--no-sync", "--quiet", "-o"])
        .arg(dir.path().join("g.bin"))
        .args(["--sha256", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(5));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only f.bin"
    );
}

#[test]
fn sha256_mismatch_exits_5_and_leaves_nothing() {
    let origin = Origin::start().unwrap();
    origin.route("/f", data(1000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/f"), "-d"])
        .arg(dir.path())
        .args(["--sha256", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A download refused before its body (too large) into directories that do not exist yet
/// leaves no directory behind either.
#[test]
fn a_download_refused_before_its_body_creates_no_directory() {
    let origin = Origin::start().unwrap();
    origin.route("/f", data(100_000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/f"), "--max-size", "10", "-o"])
        .arg(dir.path().join("new/deep/out.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn http_404_exits_4_and_refused_connection_exits_3() {
    let origin = Origin::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/nope"), "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = haul()
        .args([
            "get",
            &format!("http://127.0.0.1:{port}/x"),
            "--retries",
            "0",
            "-d",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--limit-rate 0` is no limit (curl's and aria2's meaning), not a refused configuration.
#[test]
fn limit_rate_0_and_max_size_0_mean_unlimited() {
    let origin = Origin::start().unwrap();
    origin.route("/a", data(100_000), Behavior::Normal);
    for option in ["--limit-rate", "--max-size"] {
        let dir = tempfile::tempdir().unwrap();
        let out = haul()
            .args(["get", &origin.url("/a"), option, "0", "--quiet", "-d"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_ok(&out);
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data(100_000));
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = haul().args(["get", "ftp://x/y"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = haul()
        .args(["get", "http://x/y", "--sha256", "nothex"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = haul().args(["get"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = haul().args(["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("EXIT CODES"), "{help}");
}

/// A timeout too large for a `Duration` (`1e20`) panicked (exit 101, no JSON line), and one
/// too small for a nanosecond was refused naming the engine's field (`connect_timeout`):
/// both are refused (exit 2) naming the option, with the JSON error line.
#[test]
fn a_timeout_out_of_range_is_refused_naming_its_option_not_a_panic() {
    for flag in [
        "--connect-timeout",
        "--idle-timeout",
        "--head-timeout",
        "--low-speed-time",
        "--retry-max-time",
    ] {
        for value in ["1e20", "1e-12"] {
            let out = haul()
                .args(["get", "http://127.0.0.1:9/x", "--json", flag, value])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
            let line: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("one JSON line");
            assert_eq!(line["event"], "error");
            assert_eq!(line["exit_code"], 2);
            let said = line["error"].as_str().unwrap();
            assert!(said.starts_with(&format!("{flag} must be ")), "{said}");
        }
    }
}

/// An unusable `--cacert` file is a usage error naming the file (it named "extra root
/// certificate #0"), and a proxy variable naming a proxy haul cannot use holds up no
/// download that would not go through it (it refused every run), and never shows the
/// variable's password.
#[test]
fn a_bad_cacert_is_named_and_an_unusable_proxy_variable_fails_only_its_scheme() {
    let dir = tempfile::TempDir::new().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, b"not a certificate").unwrap();
    let out = haul()
        .args(["get", "http://127.0.0.1:9/x", "--cacert"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--cacert {}", garbage.display())),
        "{err}"
    );
    let origin = Origin::start().unwrap();
    let body = data(5_000);
    origin.route("/f.bin", body.clone(), Behavior::Normal);
    let dest = dir.path().join("f.bin");
    let out = haul()
        .args(["get", &origin.url("/f.bin"), "-o"])
        .arg(&dest)
        .env("https_proxy", "socks5h://user:SECRET@127.0.0.1:1080")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let out = haul()
        .args(["get", "https://127.0.0.1:9/x", "-o"])
        .arg(dir.path().join("x"))
        .env("https_proxy", "socks5h://user:SECRET@127.0.0.1:1080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https_proxy"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}

#[test]
fn running_the_same_command_again_resumes() {
    let body = data(3_000_000);
    let origin = Origin::start().unwrap();
    origin.route(
        "/big",
        body.clone(),
        Behavior::Truncate { after: 1_000_000 },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big");
    let run = || {
        haul()
            .args(["get", &origin.url("/big"), "--retries", "0", "--json", "-o"])
            .arg(&dest)
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(first.status.code(), Some(3));
    assert!(!dest.exists());
    origin.route("/big", body.clone(), Behavior::Normal);
    let second = run();
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let stdout = String::from_utf8_lossy(&second.stdout);
    let finished: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "finished")
        .expect("a finished event");
    assert_eq!(finished["ok"], true);
    assert_eq!(finished["resumed_from"], 1_000_000);
    assert_eq!(finished["fetched"], 2_000_000);
}

#[test]
fn json_mode_prints_parseable_event_lines() {
    let origin = Origin::start().unwrap();
    origin.route("/a", data(5000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/a"), "--json", "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert!(kinds.contains(&"started"));
    assert!(kinds.contains(&"finished"));
    let progress = events
        .iter()
        .find(|e| e["event"] == "progress")
        .expect("a progress line");
    assert_eq!(progress["total"], 5000);
    assert!(progress["rate"].is_u64(), "rate in bytes/s: {progress}");
    assert!(
        progress.get("eta_s").is_some(),
        "eta_s, null until a rate is known: {progress}"
    );
}

/// `--json` stays JSON whatever the destination's name: a directory whose name is not UTF-8
/// is written lossily in the `finished` line (it used to panic after the download).
#[test]
fn json_mode_writes_a_destination_that_is_not_utf8_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let origin = Origin::start().unwrap();
    origin.route("/a", data(5000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"dir\xff"));
    let out = haul()
        .args(["get", &origin.url("/a"), "--json", "-d"])
        .arg(&odd)
        .output()
        .unwrap();
    assert_ok(&out);
    let finished: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .find(|v| v["event"] == "finished")
        .expect("a finished line");
    assert!(
        finished["path"]
            .as_str()
            .unwrap()
            .ends_with("dir\u{fffd}/a"),
        "{finished}"
    );
    assert_eq!(std::fs::read(odd.join("a")).unwrap(), data(5000));
}

/// With `--json`, a command refused before any download says why on stdout too, and a
/// failed download's `finished` line names its URL.
#[test]
fn json_mode_reports_refusals_and_names_the_url_of_a_failure() {
    let out = haul()
        .args(["get", "--json", "ftp://example.invalid/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["event"], "error");
    assert_eq!(line["exit_code"], 2);
    assert!(line["error"].as_str().unwrap().contains("ftp"), "{line}");
    // Refused by the argument parser itself: the same line.
    let out = haul()
        .args([
            "get",
            "--json",
            "--segments",
            "many",
            "http://127.0.0.1:9/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        (&line["event"], &line["exit_code"]),
        (&"error".into(), &2.into())
    );
    assert!(line["error"].as_str().unwrap().contains("many"), "{line}");
    // A message over several lines: all of it, not its first line.
    let out = haul().args(["vsix", "install", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let said = line["error"].as_str().unwrap();
    assert!(
        said.contains("not provided") && said.contains("--root"),
        "{line}"
    );
    // A command without --json refuses it without a JSON line.
    let out = haul().args(["hash", "--json", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{out:?}");

    let origin = Origin::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = origin.url("/missing");
    let out = haul()
        .args(["get", &url, "--json", "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let finished: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "finished")
        .expect("a finished line");
    assert_eq!(finished["ok"], false);
    assert_eq!(finished["url"], url.as_str());
}

#[test]
fn demo_downloads_and_verifies_every_asset() {
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["demo", "--quiet", "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = [
        "textures.pak",
        "models.zip",
        "level1.bin",
        "soundtrack.ogg",
        "manual.pdf",
    ];
    for n in names {
        assert!(dir.path().join(n).is_file(), "{n} missing");
    }
}

/// `haul demo --scale 0` ran silently at scale 1: a scale of 0 (or one whose sizes would
/// overflow) is refused (exit 2) naming the option.
#[test]
fn demo_refuses_a_scale_of_0() {
    for scale in ["0", "1025"] {
        let dir = tempfile::tempdir().unwrap();
        let out = haul()
            .args(["demo", "--scale", scale, "-d"])
            .arg(dir.path().join("demo"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{scale}: {stderr}");
        assert!(stderr.contains("--scale"), "{stderr}");
        assert!(!dir.path().join("demo").exists());
    }
}

#[test]
fn get_fails_over_to_a_mirror_when_the_primary_is_down() {
    let body = data(150_000);
    let origin = Origin::start().unwrap();
    origin.route("/m/f.bin", body.clone(), Behavior::Normal);
    let dead = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let out = haul()
        .args(["get", &format!("http://{dead}/f.bin"), "-o"])
        .arg(&dest)
        .args(["--mirror", &origin.url("/m/f.bin"), "--json"])
        .args(["--sha256", &hex::encode(Sha256::digest(&body))])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"event\":\"failover\""),
        "a failover line in the JSON events: {stdout}"
    );
}

#[test]
fn mirror_with_several_urls_is_a_usage_error() {
    let out = haul()
        .args(["get", "http://a.test/x", "http://a.test/y"])
        .args(["--mirror", "http://b.test/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mirror applies to one URL"));
}

/// Writes `list` to `<dir>/list.txt` and runs `haul get -i` on it into `dest`, with `extra`
/// options.
fn get_list(
    dir: &std::path::Path,
    list: &str,
    dest: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let path = dir.join("list.txt");
    std::fs::write(&path, list).unwrap();
    haul()
        .args(["get"])
        .args(extra)
        .arg("-i")
        .arg(&path)
        .arg("-d")
        .arg(dest)
        .output()
        .unwrap()
}

/// A 3 MB file served at `/big` that stops after 1.2 MB (the connection kept open): a
/// download to interrupt once its partial holds 1 MB. Its bytes and its origin.
fn stalling_big_file() -> (Vec<u8>, Origin) {
    let body = data(3_000_000);
    let origin = Origin::start().unwrap();
    origin.route("/big", body.clone(), Behavior::Stall { after: 1_200_000 });
    (body, origin)
}

/// Waits (20 s at most) until `part` holds `bytes`, then sends `signal` (`INT`, `TERM`) to
/// `child` and returns its output.
fn signal_once_written(
    child: std::process::Child,
    part: &std::path::Path,
    bytes: u64,
    signal: &str,
) -> std::process::Output {
    let started = std::time::Instant::now();
    while std::fs::metadata(part).map_or(true, |m| m.len() < bytes) {
        assert!(started.elapsed().as_secs() < 20, "the first never wrote");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}

/// Asserts `out` exited 0, showing its stderr if not.
fn assert_ok(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn input_file_sha1_md5_and_adler32_checksums_are_verified_and_committed() {
    let (a, b, c) = (data(300_000), data(1_500_000), data(70_000));
    let origin = Origin::start().unwrap();
    origin.route("/a.bin", a.clone(), Behavior::Normal);
    origin.route("/b.bin", b.clone(), Behavior::Normal);
    origin.route("/c.bin", c.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let list = format!(
        "{}\n  checksum=sha-1={}\n{}\n  checksum=MD5={}\n{}\n  checksum=adler32={}\n",
        origin.url("/a.bin"),
        hex::encode(sha1::Sha1::digest(&a)),
        origin.url("/b.bin"),
        hex::encode(md5::Md5::digest(&b)).to_uppercase(),
        origin.url("/c.bin"),
        adler32_hex(&c),
    );
    // Segmented too: the read-back covers a file written out of order.
    assert_ok(&get_list(
        lists.path(),
        &list,
        dest.path(),
        &["--quiet", "-s", "3", "--min-segment", "64K"],
    ));
    for (name, body) in [("a.bin", &a), ("b.bin", &b), ("c.bin", &c)] {
        assert_eq!(
            &std::fs::read(dest.path().join(name)).unwrap(),
            body,
            "{name}"
        );
    }
}

/// Adler-32 of `bytes` as aria2 writes it (8 hex digits), computed here by its definition.
fn adler32_hex(bytes: &[u8]) -> String {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    format!("{:08x}", (b << 16) | a)
}

#[test]
fn input_file_wrong_sha512_exits_5_names_the_checksum_and_leaves_nothing() {
    let body = data(100_000);
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wrong = hex::encode(sha2::Sha512::digest(b"other bytes"));
    let list = format!(
        "{}\n  out=x.bin\n  checksum=sha-512={wrong}\n",
        origin.url("/x.bin")
    );
    let out = get_list(lists.path(), &list, dest.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("sha-512 checksum mismatch"), "{stderr}");
    assert!(stderr.contains(&wrong), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dest.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn input_file_checksum_of_an_unknown_type_is_a_usage_error_naming_the_line() {
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let list = "http://127.0.0.1:9/x\n  checksum=crc32=00000000\n";
    let out = get_list(lists.path(), list, dest.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2: checksum type \"crc32\" is not supported"),
        "{stderr}"
    );
}

#[test]
fn checksum_option_takes_aria2_types_and_its_sha_256_is_the_sha256() {
    let body = data(200_000);
    let origin = Origin::start().unwrap();
    origin.route("/f.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let get = |dest: &str, checksum: String| {
        haul()
            .args(["get", &origin.url("/f.bin"), "-o"])
            .arg(dir.path().join(dest))
            .args(["--checksum", &checksum, "--quiet"])
            .output()
            .unwrap()
    };
    let out = get(
        "md5.bin",
        format!("md5={}", hex::encode(md5::Md5::digest(&body))),
    );
    assert_ok(&out);
    assert_eq!(std::fs::read(dir.path().join("md5.bin")).unwrap(), body);
    let sha384 = hex::encode(sha2::Sha384::digest(&body));
    assert_ok(&get("384.bin", format!("SHA384={sha384}")));

    let out = get("bad.bin", format!("sha-256={}", "ab".repeat(32)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    assert!(!dir.path().join("bad.bin").exists());

    for (checksum, says) in [
        (
            "crc32=00".to_string(),
            "checksum type \"crc32\" is not supported",
        ),
        ("md5=abc".to_string(), "md5 checksum must be 32 hex digits"),
        ("md5".to_string(), "expected TYPE=HEX"),
    ] {
        let out = get("usage.bin", checksum.clone());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{checksum}: {stderr}");
        assert!(stderr.contains(says), "{checksum}: {stderr}");
    }
    let out = haul()
        .args(["get", "http://a.test/x", "http://a.test/y"])
        .args(["--checksum", &format!("md5={}", "0".repeat(32))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checksum applies to one URL"));

    let out = haul().args(["get", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--checksum <TYPE=HEX>") && help.contains("adler32"),
        "{help}"
    );
}

#[test]
fn input_file_tab_separated_mirrors_are_used() {
    let body = data(50_000);
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let dead = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let list = format!(
        "http://{dead}/x.bin\t{}\n  out=x.bin\n",
        origin.url("/x.bin")
    );
    assert_ok(&get_list(dir.path(), &list, dir.path(), &["--quiet"]));
    assert_eq!(std::fs::read(dir.path().join("x.bin")).unwrap(), body);
}

/// Two list entries with the same bytes (the same sha256 under two URLs, or one URL twice)
/// make one transfer, and each entry's file is written under its own name.
#[test]
fn list_entries_with_the_same_bytes_are_each_saved_under_their_own_name() {
    let body = data(50_000);
    let origin = Origin::start().unwrap();
    origin.route("/big.bin", body.clone(), Behavior::Normal);
    origin.route("/big2.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let sha = hex::encode(Sha256::digest(&body));
    let list = format!(
        "{}\n  checksum=sha-256={sha}\n{}\n  checksum=sha-256={sha}\n{}\n  out=renamed.bin\n{}\n  dir={}\n",
        origin.url("/big.bin"),
        origin.url("/big2.bin"),
        origin.url("/big2.bin"),
        origin.url("/big2.bin"),
        dir.path().join("d2").display(),
    );
    let out = get_list(dir.path(), &list, dir.path(), &[]);
    assert_ok(&out);
    for name in ["big.bin", "big2.bin", "renamed.bin", "d2/big2.bin"] {
        assert_eq!(
            std::fs::read(dir.path().join(name)).ok().as_deref(),
            Some(&body[..]),
            "{name}"
        );
    }
    // Two fetches (by sha256: big.bin, big2.bin; by URL without one: renamed.bin,
    // d2/big2.bin); each second one says it got the first one's bytes.
    let said = String::from_utf8_lossy(&out.stderr);
    let shared = said
        .lines()
        .filter(|l| l.ends_with("the same download as another of this command, done once"))
        .count();
    assert_eq!(shared, 2, "{said}");
}

/// An empty file listed twice is a duplicate like any other: the second entry says it got
/// the first one's bytes (it used to say its destination "already holds these bytes", as a
/// file found in place does, since both fetch nothing). `--json` says which it was.
#[test]
fn an_empty_duplicate_is_reported_as_a_duplicate_not_as_a_file_in_place() {
    let origin = Origin::start().unwrap();
    origin.route("/empty", Vec::new(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let list = format!(
        "{url}\n  out=one\n{url}\n  out=two\n",
        url = origin.url("/empty")
    );
    let out = get_list(dir.path(), &list, dir.path(), &[]);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.lines()
            .any(|l| l.ends_with("the same download as another of this command, done once")),
        "{said}"
    );
    assert!(!said.contains("already holds"), "{said}");
    for name in ["one", "two"] {
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"", "{name}");
    }
    // Again, with --json: one fetched and one duplicate; then one found in place.
    let delivered = |list: String| {
        let out = get_list(dir.path(), &list, dir.path(), &["--json"]);
        assert_ok(&out);
        let mut delivered: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .filter(|e| e["event"] == "finished")
            .map(|e| {
                let path = std::path::PathBuf::from(e["path"].as_str().unwrap());
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                format!("{name} {}", e["delivery"].as_str().unwrap())
            })
            .collect();
        delivered.sort();
        delivered
    };
    let sha = hex::encode(Sha256::digest(b""));
    let url = origin.url("/empty");
    assert_eq!(
        delivered(format!(
            "{url}\n  out=three\n  checksum=sha-256={sha}\n{url}\n  out=four\n  checksum=sha-256={sha}\n"
        )),
        ["four duplicate", "three fetched"]
    );
    assert_eq!(
        delivered(format!("{url}\n  out=one\n  checksum=sha-256={sha}\n")),
        ["one already_present"]
    );
}

#[test]
fn input_file_credentials_and_headers_go_with_their_own_entry() {
    let body = data(10_000);
    let origin = Origin::start().unwrap();
    // base64("me:secret")
    let expected = "Basic bWU6c2VjcmV0".to_string();
    origin.route(
        "/private.bin",
        body.clone(),
        Behavior::RequireAuth { expected },
    );
    origin.route("/public.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let list = format!(
        "{}\n  http-user=me\n  http-passwd=secret\n  header=X-Client: list\n{}\n",
        origin.url("/private.bin"),
        origin.url("/public.bin")
    );
    assert_ok(&get_list(dir.path(), &list, dir.path(), &["--quiet"]));
    assert_eq!(std::fs::read(dir.path().join("private.bin")).unwrap(), body);
    let private = &origin.requests_to("/private.bin")[0];
    assert_eq!(private.header("x-client"), Some("list"));
    let public = &origin.requests_to("/public.bin")[0];
    assert_eq!(
        public.header("authorization"),
        None,
        "not the other entry's"
    );
    assert_eq!(public.header("x-client"), None);
    // Without them the server refuses: exit 4.
    let other = tempfile::tempdir().unwrap();
    let list = format!("{}\n", origin.url("/private.bin"));
    let out = get_list(other.path(), &list, other.path(), &["--quiet"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_list_entries_for_one_file_keep_the_first_file_whole_and_fail_the_second() {
    let (a, b) = (
        data(300_000),
        data(200_000).into_iter().rev().collect::<Vec<u8>>(),
    );
    let origin = Origin::start().unwrap();
    origin.route("/a.bin", a.clone(), Behavior::Normal);
    origin.route("/b.bin", b, Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let list = format!(
        "{}\n  out=same.bin\n{}\n  out=same.bin\n",
        origin.url("/a.bin"),
        origin.url("/b.bin")
    );
    let out = get_list(dir.path(), &list, &dir.path().join("dl"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("b.bin):") && stderr.contains("same.bin is already the destination"),
        "{stderr}"
    );
    // Named by its list and line, as the README promises for a list's download.
    assert!(stderr.contains("list.txt: line 3: "), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("dl/same.bin")).unwrap(), a);
    assert!(
        origin.requests_to("/b.bin").is_empty(),
        "the second was never fetched"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("dl")).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing but the first file: {left:?}");
}

#[test]
fn a_list_entry_whose_out_leaves_its_directory_fails_the_list_before_any_request() {
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", data(1000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    // An out= that is a directory, by its name or on disk, fails the same way (it used to
    // fail only at the commit, after the download).
    std::fs::create_dir_all(dir.path().join("dl/sub")).unwrap();
    for out_value in [
        "../escaped.bin",
        "/tmp/escaped.bin",
        "sub",
        "new/.",
        "new/..",
    ] {
        let list = format!("{}\n  out={out_value}\n", origin.url("/x.bin"));
        let out = get_list(dir.path(), &list, &dir.path().join("dl"), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("list.txt: line ") && stderr.contains(": out="),
            "{stderr}"
        );
    }
    assert!(origin.requests().is_empty());
    assert!(!dir.path().join("escaped.bin").exists());
}

#[test]
fn a_list_saved_with_a_byte_order_mark_downloads_its_first_line() {
    let body = data(10_000);
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let list = format!("\u{feff}{}\n", origin.url("/x.bin"));
    assert_ok(&get_list(dir.path(), &list, dir.path(), &["--quiet"]));
    assert_eq!(std::fs::read(dir.path().join("x.bin")).unwrap(), body);
}

#[test]
fn a_list_that_is_not_utf8_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    // "caf\xe9" in Latin-1 on line 3.
    std::fs::write(
        &path,
        b"# list\nhttp://127.0.0.1:9/a\n  out=caf\xe9.bin\n".as_slice(),
    )
    .unwrap();
    let out = haul()
        .args(["get", "-i"])
        .arg(&path)
        .arg("-d")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3 is not UTF-8"), "{stderr}");
}

#[test]
fn an_output_that_is_no_replaceable_file_is_refused_before_any_request() {
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", data(1000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_string();
    let slash = format!("{dir_arg}/new/");
    let dot = format!("{dir_arg}/new/.");
    let dotdot = format!("{dir_arg}/new/..");
    let reserved = format!("{dir_arg}/x.bin.haul-part");
    for (output, says) in [
        (dir_arg.as_str(), "is a directory"),
        ("/dev/null", "is not a regular file"),
        (slash.as_str(), "names a directory"),
        (dot.as_str(), "names a directory"),
        (dotdot.as_str(), "names a directory"),
        (reserved.as_str(), "haul's working files"),
    ] {
        let out = haul()
            .args(["get", &origin.url("/x.bin"), "-o", output])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{output}: {stderr}");
        assert!(stderr.contains(says), "{output}: {stderr}");
    }
    assert!(origin.requests().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_destination_that_already_holds_the_bytes_is_kept_and_said_so() {
    let body = data(20_000);
    let origin = Origin::start().unwrap();
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.bin"), &body).unwrap();
    let digest = hex::encode(Sha256::digest(&body));
    let out = haul()
        .args(["get", &origin.url("/x.bin"), "--sha256", &digest, "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing fetched") && !stderr.contains("resumed"),
        "{stderr}"
    );
    assert!(origin.requests().is_empty());
}

/// Ctrl-C (SIGINT) or SIGTERM mid-body: exit 128 + the signal (130, 143), nothing at the
/// destination, the partial and its state kept (the command asks the library to keep them; a
/// library cancel discards by default), and the same command resumes from them. With
/// `--json` (the SIGTERM run), the `finished` line's `exit_code` is the process's.
#[test]
fn an_interrupted_get_exits_128_plus_the_signal_keeps_its_partial_and_the_same_command_resumes() {
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let (body, origin) = stalling_big_file();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        let part = dir.path().join("big.haul-part");
        let command = |origin: &Origin, json: bool| {
            let mut c = haul();
            c.args(["get", &origin.url("/big"), "-o"])
                .arg(&dest)
                .args(["--sha256", &hex::encode(Sha256::digest(&body))]);
            if json {
                c.arg("--json");
            }
            c
        };
        let json = signal == "TERM";
        let first = command(&origin, json)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let first = signal_once_written(first, &part, 1_000_000, signal);
        assert_eq!(first.status.code(), Some(code), "{signal}: {first:?}");
        if json {
            let finished: serde_json::Value = String::from_utf8_lossy(&first.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == "finished")
                .expect("a finished event");
            assert_eq!(finished["exit_code"], code, "{finished}");
            // Interrupted, not failed.
            let summary: serde_json::Value = String::from_utf8_lossy(&first.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == "summary")
                .expect("a summary event");
            assert_eq!(
                (&summary["failed"], &summary["cancelled"]),
                (&serde_json::json!(0), &serde_json::json!(1)),
                "{summary}"
            );
            // The bytes received count, though no download finished.
            assert!(summary["bytes"].as_u64().unwrap() >= 1_000_000, "{summary}");
        } else {
            let said = String::from_utf8_lossy(&first.stderr);
            assert!(
                said.contains("big: interrupted; the same command again resumes it"),
                "{said}"
            );
        }
        assert!(!dest.exists(), "nothing committed");
        assert!(part.exists(), "the partial is kept");
        assert!(dir.path().join("big.haul-state").exists(), "and its state");

        origin.route("/big", body.clone(), Behavior::Normal);
        let second = command(&origin, true).output().unwrap();
        assert_ok(&second);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        let finished: serde_json::Value = String::from_utf8_lossy(&second.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "finished")
            .expect("a finished event");
        assert!(
            finished["resumed_from"].as_u64().unwrap() >= 1_000_000,
            "{finished}"
        );
    }
}

#[cfg(unix)]
#[test]
fn symbolic_links_planted_at_working_names_are_never_written_through() {
    // `<dest>.haul-part` and `<dest>.haul-state.tmp` were opened following links: a link
    // planted there by anyone who may write the directory had the download (or its state)
    // written over the link's target, anywhere, and the link itself renamed into place.
    let (body, origin) = stalling_big_file();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big");
    let part = dir.path().join("big.haul-part");
    let victims = [dir.path().join("victim1"), dir.path().join("victim2")];
    for v in &victims {
        std::fs::write(v, b"VICTIM").unwrap();
    }
    std::os::unix::fs::symlink(&victims[0], &part).unwrap();
    std::os::unix::fs::symlink(&victims[1], dir.path().join("big.haul-state.tmp")).unwrap();
    let command = || {
        let mut c = haul();
        c.args(["get", &origin.url("/big"), "-o"]).arg(&dest);
        c
    };
    let child = command()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted: the partial and its state are written on the way out.
    let out = signal_once_written(child, &part, 1_000_000, "INT");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    for v in &victims {
        assert_eq!(
            std::fs::read(v).unwrap(),
            b"VICTIM",
            "{} untouched",
            v.display()
        );
    }
    for name in ["big.haul-part", "big.haul-state"] {
        let meta = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is haul's own file");
    }
    origin.route("/big", body.clone(), Behavior::Normal);
    assert_ok(&command().output().unwrap());
    assert!(std::fs::symlink_metadata(&dest)
        .unwrap()
        .file_type()
        .is_file());
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    for v in &victims {
        assert_eq!(std::fs::read(v).unwrap(), b"VICTIM");
    }
}

#[test]
fn an_interrupted_download_without_a_validator_says_nothing_is_kept() {
    // A server that names no ETag or Last-Modified gives a resume nothing to check the
    // partial against: it is not kept, and the message promised a resume all the same.
    use std::io::Write;
    let url = raw_server_with(|conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n");
        let _ = conn.write_all(&data(1_200_000));
        // Then nothing more, the connection open.
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big");
    let child = haul()
        .args(["get", &url, "-o"])
        .arg(&dest)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = signal_once_written(child, &dir.path().join("big.haul-part"), 1_000_000, "INT");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("big: interrupted; nothing of it is kept (the server named no ETag"),
        "{said}"
    );
    assert!(!said.contains("resumes"), "{said}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn an_interrupted_list_names_only_the_downloads_that_had_started() {
    // Each queued file got its own "interrupted; the same command again resumes it" line,
    // though it had never started: 2,000 lines for a list of 2,000.
    let (_, origin) = stalling_big_file();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    let mut text = format!("{}\n  out=big\n", origin.url("/big"));
    for n in 0..5 {
        origin.route(&format!("/q{n}"), data(1000), Behavior::Normal);
        text.push_str(&format!("{}\n  out=q{n}\n", origin.url(&format!("/q{n}"))));
    }
    std::fs::write(&list, text).unwrap();
    let child = haul()
        .args(["get", "-j", "1", "-i"])
        .arg(&list)
        .arg("-d")
        .arg(dir.path().join("dl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let part = dir.path().join("dl/big.haul-part");
    let out = signal_once_written(child, &part, 1_000_000, "INT");
    assert_eq!(out.status.code(), Some(130));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.matches("interrupted; the same command").count(),
        1,
        "{said}"
    );
    assert!(said.contains("big: interrupted"), "{said}");
    assert!(
        said.contains("6 interrupted"),
        "the summary counts them all: {said}"
    );
}

/// A file of 1 MiB or less is written to an unnamed file, which an interruption does not
/// keep: the message says so instead of promising a resume, and nothing is left behind.
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_small_get_says_nothing_is_kept() {
    // One connection, then four segments (whose responses continue the unnamed file at
    // offsets past 0: it is still not kept).
    for (segmented, extra) in [
        (false, &[][..]),
        (true, &["-s", "4", "--min-segment", "64K"][..]),
    ] {
        let body = data(900_000);
        let origin = Origin::start().unwrap();
        origin.route("/small", body, Behavior::Stall { after: 50_000 });
        let dir = tempfile::tempdir().unwrap();
        let child = haul()
            .args(["get", &origin.url("/small"), "-d"])
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The unnamed file is open (so the response that started it has been seen) once
        // the process holds a descriptor of a file in the directory (one download opens no
        // spare unnamed files ahead: `haul_driver::spares::EXPECT_MIN`); segmented, once
        // the segments' requests have gone out too.
        let fds = format!("/proc/{}/fd", child.id());
        let started = std::time::Instant::now();
        while !std::fs::read_dir(&fds).unwrap().any(|fd| {
            std::fs::read_link(fd.unwrap().path())
                .is_ok_and(|target| target.starts_with(dir.path()))
        }) || (segmented && origin.requests_to("/small").len() < 4)
        {
            assert!(
                started.elapsed().as_secs() < 20,
                "the file was never opened"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if segmented {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("small: interrupted; nothing of it is kept"),
            "segmented {segmented}: {said}"
        );
        assert!(!said.contains("resumes"), "{said}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

/// Warnings logged on the way reach a stderr that is no terminal as plain text (no colour
/// codes), and `--quiet` ("nothing but errors") leaves them out but keeps the error.
#[test]
fn log_warnings_are_plain_text_off_a_terminal_and_quiet_leaves_them_out() {
    let origin = Origin::start().unwrap();
    // A Retry-After past the retry time limit: the engine warns why it does not retry.
    origin.route(
        "/busy",
        Vec::new(),
        Behavior::Status {
            status: 503,
            retry_after: Some("100000".into()),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |flags: &[&str]| {
        let out = haul()
            .env_remove("HAUL_LOG")
            .args(["get", &origin.url("/busy")])
            .args(flags)
            .arg(dir.path().join("busy"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&["-o"]);
    assert!(
        said.contains("WARN") && said.contains("not retrying"),
        "{said}"
    );
    assert!(!said.contains('\x1b'), "no escape codes: {said:?}");
    // The warning names the file, not the engine's job number.
    let path = format!("path={}", dir.path().join("busy").display());
    assert!(said.contains(&path) && !said.contains("job#"), "{said}");
    // --quiet, or -q alone or among other short flags.
    for flags in [&["--quiet", "-o"][..], &["-q", "-o"], &["-qo"]] {
        let said = run(flags);
        assert!(!said.contains("not retrying"), "{flags:?}: {said}");
        assert!(said.contains("503"), "the error stays: {said}");
    }
}

#[test]
fn a_warning_quoting_a_server_header_escapes_its_control_characters() {
    // A Content-Encoding holding a C1 control (CSI, U+009B, which terminals take for ESC [)
    // reached the terminal raw through the warning that quotes it.
    let url = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Encoding: gzip\xc2\x9b2J\xe2\x80\xaeab\r\n\r\nhello",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .env_remove("HAUL_LOG")
        .args(["get", &url, "-o"])
        .arg(dir.path().join("f"))
        .output()
        .unwrap();
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Content-Encoding"), "{said}");
    assert!(!said.contains(['\u{9b}', '\u{202e}']), "{said:?}");
    assert!(said.contains("gzip\\u{9b}2J\\u{202e}ab"), "{said:?}");
}

/// A download that fails for good leaves no directory it created for its destination, while
/// a download of the same command that succeeded keeps its new directory and file.
#[test]
fn a_failed_download_leaves_no_directory_it_created() {
    let body = data(3_000_000);
    let origin = Origin::start().unwrap();
    origin.route("/f.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let wrong = hex::encode(Sha256::digest(b"other bytes"));
    let out = haul()
        .args(["get", &origin.url("/f.bin"), "--sha256", &wrong, "-o"])
        .arg(dir.path().join("new/deep/f.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        !dir.path().join("new").exists(),
        "the created directories are gone"
    );
    // In a list: the good entry's new directory stays, the bad one's goes.
    let sha = hex::encode(Sha256::digest(&body));
    let list = format!(
        "{url}\n  dir={good}\n  checksum=sha-256={sha}\n{url}\n  dir={bad}\n  checksum=sha-256={wrong}\n",
        url = origin.url("/f.bin"),
        good = dir.path().join("good/one").display(),
        bad = dir.path().join("bad/one").display(),
    );
    let out = get_list(dir.path(), &list, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(
        std::fs::read(dir.path().join("good/one/f.bin")).unwrap(),
        body
    );
    assert!(!dir.path().join("bad").exists());
}

/// A header haul writes itself (Host, Range, ...) given with -H or header= is refused with
/// a usage error before anything is fetched (it used to be dropped without a word).
#[test]
fn headers_haul_writes_itself_are_refused_not_silently_dropped() {
    let origin = Origin::start().unwrap();
    origin.route("/f", data(1000), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/f"), "-H", "host: example.org", "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("haul writes host itself"), "{said}");
    let list = format!("{}\n  header=Range: bytes=0-9\n", origin.url("/f"));
    let out = get_list(dir.path(), &list, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("line 2: haul writes the Range header itself"),
        "{said}"
    );
    assert!(origin.requests().is_empty());
}

/// A download's `saved ... in Xs at RATE` counts from when it left the queue, not from the
/// command's start: with one slot, the second of two downloads (a third of the first's
/// time on the wire) reports less time than the first, not its wait plus its own. And
/// `-j 0` or `--max-connections-per-host 0` are usage errors (they became 1 silently).
#[test]
fn saved_lines_time_a_download_from_when_it_left_the_queue() {
    let origin = Origin::start().unwrap();
    let trickle = |bytes_per_sec| Behavior::Trickle { bytes_per_sec };
    origin.route("/first", data(1_200_000), trickle(1_000_000));
    origin.route("/second", data(400_000), trickle(1_000_000));
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args([
            "get",
            "-j",
            "1",
            &origin.url("/first"),
            &origin.url("/second"),
            "-d",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    let secs = |name: &str| -> f64 {
        let line = said
            .lines()
            .find(|l| l.starts_with("saved ") && l.contains(name))
            .unwrap_or_else(|| panic!("no saved line for {name}: {said}"));
        let after = line.split(") in ").nth(1).expect("a time");
        after.split('s').next().unwrap().parse().expect("seconds")
    };
    assert!(secs("second") < secs("first"), "{said}");
    for flag in ["-j", "--max-connections-per-host"] {
        let out = haul()
            .args(["get", flag, "0", &origin.url("/first")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
    }
}

#[test]
fn a_second_process_downloading_to_the_same_file_is_refused_and_the_first_stays_whole() {
    let body = data(3_000_000);
    let other = data(2_000_000).into_iter().rev().collect::<Vec<u8>>();
    let origin = Origin::start().unwrap();
    // Over 1 MiB (a named partial), slow enough for the second process to start meanwhile.
    origin.route(
        "/slow",
        body.clone(),
        Behavior::Trickle {
            bytes_per_sec: 1_500_000,
        },
    );
    origin.route("/other", other, Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let part = dir.path().join("f.bin.haul-part");
    let sha = hex::encode(Sha256::digest(&body));
    let first = haul()
        .args(["get", &origin.url("/slow"), "--sha256", &sha, "-o"])
        .arg(&dest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::metadata(&part).map_or(true, |m| m.len() == 0) {
        assert!(started.elapsed().as_secs() < 20, "the first never wrote");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = haul()
        .args(["get", &origin.url("/other"), "-o"])
        .arg(&dest)
        .output()
        .unwrap();
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        body,
        "the first file is whole"
    );
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another process"), "{stderr}");
}

#[test]
fn segments_answered_with_the_whole_file_go_on_over_one_connection_and_verify() {
    let body = data(3_000_000);
    let origin = Origin::start().unwrap();
    // The first request (`bytes=0-`) is honoured; every later segment gets the whole file.
    origin.route("/f.bin", body.clone(), Behavior::RangeFromZeroOnly);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let out = haul()
        .args([
            "get",
            &origin.url("/f.bin"),
            "-s",
            "4",
            "--min-segment",
            "64K",
        ])
        .args(["--json", "-o"])
        .arg(&dest)
        .args(["--sha256", &hex::encode(Sha256::digest(&body))])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(count("segmented"), 1, "split once: {events:?}");
    assert_eq!(
        count("single_connection"),
        1,
        "then one connection: {events:?}"
    );
    assert_eq!(count("retrying"), 1, "{events:?}");
    let last = origin.requests_to("/f.bin").pop().expect("requests");
    assert_eq!(
        last.header("range"),
        None,
        "the last request fetched the whole file"
    );
}

#[test]
fn a_250_byte_destination_name_downloads_and_resumes_and_a_longer_one_is_refused_first() {
    let body = data(3_000_000);
    let origin = Origin::start().unwrap();
    origin.route(
        "/big",
        body.clone(),
        Behavior::Truncate { after: 1_000_000 },
    );
    let dir = tempfile::tempdir().unwrap();
    // 250 bytes: a valid ext4 name, too long for `<name>.haul-state` beside it.
    let name = "é".repeat(120) + &"n".repeat(10);
    let dest = dir.path().join(&name);
    let run = |dest: &std::path::Path| {
        haul()
            .args(["get", &origin.url("/big"), "--retries", "0", "--json", "-o"])
            .arg(dest)
            .output()
            .unwrap()
    };
    let first = run(&dest);
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let left = names();
    assert_eq!(left.len(), 2, "a partial and its state file: {left:?}");
    assert!(left.iter().all(|n| n.len() <= 255), "{left:?}");
    assert!(left.iter().any(|n| n.ends_with(".haul-part")), "{left:?}");
    assert!(left.iter().any(|n| n.ends_with(".haul-state")), "{left:?}");

    origin.route("/big", body.clone(), Behavior::Normal);
    let second = run(&dest);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(names(), vec![name]);
    let finished: serde_json::Value = String::from_utf8_lossy(&second.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "finished")
        .expect("a finished event");
    assert_eq!(finished["resumed_from"], 1_000_000);

    origin.clear_requests();
    let too_long = run(&dir.path().join("x".repeat(256)));
    assert_eq!(too_long.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&too_long.stderr);
    assert!(stderr.contains("256 bytes"), "{stderr}");
    assert!(origin.requests().is_empty(), "asked the origin first");
}

#[test]
fn get_fails_over_to_a_mirror_when_the_primary_answers_404() {
    let body = data(150_000);
    let origin = Origin::start().unwrap();
    origin.route(
        "/gone/f.bin",
        Vec::new(),
        Behavior::Status {
            status: 404,
            retry_after: None,
        },
    );
    origin.route("/m/f.bin", body.clone(), Behavior::Normal);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let out = haul()
        .args(["get", &origin.url("/gone/f.bin"), "-o"])
        .arg(&dest)
        .args(["--mirror", &origin.url("/m/f.bin"), "--retries", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        origin.requests_to("/gone/f.bin").len(),
        1,
        "the 404 is not retried"
    );
}

#[test]
fn a_redirect_loop_exits_4_like_the_http_status_it_is() {
    let origin = Origin::start().unwrap();
    origin.route(
        "/loop",
        Vec::new(),
        Behavior::Redirect {
            status: 302,
            location: "/loop".into(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/loop"), "-d"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("redirect loop"), "{stderr}");
}

/// A server on 127.0.0.1 that answers every request with `wire` and closes; its URL.
fn raw_server(wire: &'static [u8]) -> String {
    raw_server_with(move |conn| {
        let _ = std::io::Write::write_all(conn, wire);
    })
}

/// A server on 127.0.0.1 that reads each connection's request head and hands the connection
/// to `answer` (on a thread of its own), then closes it; its URL.
fn raw_server_with(answer: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/f", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                answer(&mut conn);
            });
        }
    });
    url
}

#[test]
fn a_malformed_response_head_exits_3_and_says_the_head_was_malformed() {
    // A bad status line, and two Content-Lengths that disagree: both malformed heads.
    let wires: [&'static [u8]; 2] = [
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    ];
    for wire in wires {
        let url = raw_server(wire);
        let dir = tempfile::tempdir().unwrap();
        let out = haul()
            .args(["get", &url, "-d"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("HTTP protocol error from")
                && stderr.contains("malformed HTTP response head"),
            "{stderr}"
        );
    }
}

/// An origin answering `status` at `path`, and `haul get` of it to a file: the origin, the
/// run's output and what it saved (`None`: nothing).
fn get_status(status: u16, path: &str) -> (Origin, std::process::Output, Option<Vec<u8>>) {
    let origin = Origin::start().unwrap();
    let answer = Behavior::Status {
        status,
        retry_after: None,
    };
    origin.route(path, Vec::new(), answer);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("saved");
    let out = haul()
        .args(["get", &origin.url(path), "-o"])
        .arg(&dest)
        .output()
        .unwrap();
    let saved = std::fs::read(&dest).ok();
    (origin, out, saved)
}

#[test]
fn a_204_no_content_saves_an_empty_file_and_fails_a_sha256_of_bytes_with_exit_5() {
    let (origin, out, saved) = get_status(204, "/empty");
    assert_ok(&out);
    assert_eq!(saved.as_deref(), Some(&b""[..]));

    let other = tempfile::tempdir().unwrap();
    let out = haul()
        .args(["get", &origin.url("/empty"), "-d"])
        .arg(other.path())
        .args(["--sha256", &hex::encode(Sha256::digest(data(100)))])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("sha256 mismatch") && stderr.contains("the server sent an empty file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
}

#[test]
fn a_203_non_authoritative_answer_is_saved_like_a_200() {
    let (_origin, out, saved) = get_status(203, "/f");
    assert_ok(&out);
    // The origin's status answers carry their status line (code and reason) as the body.
    let saved = String::from_utf8(saved.expect("saved")).unwrap();
    assert!(
        saved.starts_with("203 ") && saved.ends_with("Information\n"),
        "{saved:?}"
    );
}

/// Entries of a list are named by their `out=` in what haul says of them (they all shared
/// the URL's name `big.bin`, so a failure did not say which entry it was).
#[test]
fn list_entries_are_named_by_their_destination_in_errors() {
    let origin = Origin::start().unwrap();
    origin.route("/big.bin", data(10_000), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let list = format!(
        "{ok}?i=1\n  out=s1.bin\n{missing}?i=2\n  out=s2.bin\n{ok}?i=3\n  out=s3.bin\n",
        ok = origin.url("/big.bin"),
        missing = origin.url("/gone/big.bin"),
    );
    let out = get_list(lists.path(), &list, dest.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("s2.bin: "), "{stderr}");
    assert!(!stderr.contains("haul: big.bin"), "{stderr}");
    let json = get_list(lists.path(), &list, dest.path(), &["--json"]);
    let failed: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "finished" && v["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["label"].as_str().unwrap().ends_with("s2.bin"),
        "{failed:?}"
    );
}

/// aria2 lists that aria2 takes work unchanged: an empty one (or comments only) succeeds
/// with nothing to do, and an entry with a mirror haul cannot use (ftp://) is fetched from
/// its other URIs, the mirror skipped with a warning (the whole list was refused).
#[test]
fn an_empty_list_succeeds_and_an_unusable_mirror_is_skipped() {
    let origin = Origin::start().unwrap();
    let body = data(5_000);
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for list in ["", "# nothing yet\n\n"] {
        let out = get_list(lists.path(), list, dest.path(), &[]);
        assert_ok(&out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("no files to download"));
    }
    let list = format!(
        "{}\tftp://mirror.test/x.bin\n  out=x.bin\n",
        origin.url("/x.bin")
    );
    let fetched_with_warning = |list: &str, warning: &str| {
        let out = get_list(lists.path(), list, dest.path(), &[]);
        assert_ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(warning), "{stderr}");
        assert_eq!(std::fs::read(dest.path().join("x.bin")).unwrap(), body);
    };
    fetched_with_warning(&list, "line 1: mirror skipped");
    // -q: nothing but errors.
    std::fs::remove_file(dest.path().join("x.bin")).unwrap();
    let out = get_list(lists.path(), &list, dest.path(), &["-q"]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // The unusable URI first on its line: skipped too (every URI of a line is equal), where
    // it failed the whole list.
    std::fs::remove_file(dest.path().join("x.bin")).unwrap();
    let list = format!(
        "ftp://mirror.test/x.bin\t{}\n  out=x.bin\n",
        origin.url("/x.bin")
    );
    fetched_with_warning(&list, "line 1: URI skipped");
    // A line with no usable URI at all is skipped with a message naming it, and the run
    // says not everything was done (exit 2).
    let out = get_list(
        lists.path(),
        "ftp://a.test/x\tftp://b.test/x\n",
        dest.path(),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
}

/// An entry whose only URI haul cannot use (`ftp://`) refused the whole list: it is skipped
/// with a message naming its line, as aria2 does, the other entries download, and the exit
/// status (2, its place in the list) and the summary say it was not done.
#[test]
fn a_list_entry_with_no_usable_uri_is_skipped_and_the_others_download() {
    let origin = Origin::start().unwrap();
    let (a, b) = (data(5_000), data(7_000));
    origin.route("/a.bin", a.clone(), Behavior::Normal);
    origin.route("/b.bin", b.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let list = format!(
        "{}\nftp://127.0.0.1/x\n  out=x.bin\n{}\n",
        origin.url("/a.bin"),
        origin.url("/b.bin")
    );
    let out = get_list(lists.path(), &list, dest.path(), &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("list.txt: line 2: entry skipped"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dest.path().join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(dest.path().join("b.bin")).unwrap(), b);
    assert!(!dest.path().join("x.bin").exists());
    let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary line");
    assert_eq!(
        (&summary["ok"], &summary["skipped"]),
        (&2.into(), &1.into())
    );
}

#[test]
fn a_checksum_on_the_command_line_and_another_in_the_list_are_refused_not_one_dropped() {
    // The list's checksum= silently won over --sha256 / --checksum: a check the user asked
    // for was skipped and a wrong file committed.
    let origin = Origin::start().unwrap();
    let body = data(5_000);
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sha = hex::encode(Sha256::digest(&body));
    let md5 = hex::encode(md5::Md5::digest(&body));
    let zeros = |n: usize| "0".repeat(n);
    let url = origin.url("/x.bin");
    // Each refusal names the option the user gave (a --checksum sha-256=... was called
    // "the command line's --sha256").
    for (listed, extra, option) in [
        (
            format!("sha-256={sha}"),
            vec!["--sha256".to_string(), zeros(64)],
            "command line's --sha256 ",
        ),
        (
            format!("sha-256={sha}"),
            vec!["--checksum".to_string(), format!("sha-256={}", zeros(64))],
            "command line's --checksum sha-256=",
        ),
        (
            format!("md5={md5}"),
            vec!["--checksum".to_string(), format!("md5={}", zeros(32))],
            "command line's --checksum ",
        ),
        (
            format!("md5={md5}"),
            vec!["--checksum".to_string(), format!("sha-1={}", zeros(40))],
            "command line's --checksum ",
        ),
    ] {
        let list = format!("{url}\n  out=x.bin\n  checksum={listed}\n");
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = get_list(lists.path(), &list, dest.path(), &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listed} {extra:?}: {stderr}");
        assert!(stderr.contains("name different digests"), "{stderr}");
        assert!(stderr.contains(option), "{stderr}");
        assert!(!dest.path().join("x.bin").exists());
    }
    // The same digest in both places, in other cases: fine, and checked.
    let list = format!("{url}\n  out=x.bin\n  checksum=sha-256={sha}\n");
    let upper = sha.to_uppercase();
    assert_ok(&get_list(
        lists.path(),
        &list,
        dest.path(),
        &["--sha256", &upper],
    ));
    assert_eq!(std::fs::read(dest.path().join("x.bin")).unwrap(), body);
}

#[test]
fn a_min_segment_below_16k_is_refused() {
    // `--min-segment 0` turned a 3 MiB file into some 800 requests, some for one byte.
    for size in ["0", "1", "16000"] {
        let out = haul()
            .args([
                "get",
                "http://127.0.0.1:9/x",
                "-s",
                "8",
                "--min-segment",
                size,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{size}: {stderr}");
        assert!(stderr.contains("below 16K"), "{stderr}");
    }
}

/// `-o` with `-i` silently replaced every entry's `out=` and `dir=`: it is refused (exit 2)
/// before anything is fetched, pointing to `out=`. An entry's `dir=` wins over `-d` (the
/// default directory), as in aria2.
#[test]
fn output_with_an_input_list_is_refused_and_an_entrys_dir_wins_over_the_d_option() {
    let origin = Origin::start().unwrap();
    let body = data(5_000);
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let list = lists.path().join("list.txt");
    let own = dest.path().join("own");
    std::fs::write(
        &list,
        format!(
            "{}\n  out=y.bin\n  dir={}\n",
            origin.url("/x.bin"),
            own.display()
        ),
    )
    .unwrap();
    let output = dest.path().join("o.bin");
    for extra in [&[][..], &[origin.url("/x.bin")][..]] {
        let out = haul()
            .args(["get", "-i"])
            .arg(&list)
            .arg("-o")
            .arg(&output)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("out="), "{stderr}");
        assert!(!output.exists() && !own.exists());
    }
    let out = get_list(
        lists.path(),
        &std::fs::read_to_string(&list).unwrap(),
        dest.path(),
        &[],
    );
    assert_ok(&out);
    assert_eq!(std::fs::read(own.join("y.bin")).unwrap(), body);
    assert!(!dest.path().join("y.bin").exists());
}

/// `haul hash` writes names as sha256sum does, so `sha256sum -c` reads its lines: a name
/// with a backslash, a line feed or a carriage return is escaped and its line starts with a
/// backslash (the name was written raw: a line feed made two lines); `-` is stdin (it
/// opened a file named `-`).
#[test]
fn hash_escapes_names_as_sha256sum_does_and_reads_stdin_for_a_dash() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (name, shown) in [
        ("plain.bin", "plain.bin"),
        ("a\nb", "\\a\\nb"),
        ("c\\d", "\\c\\\\d"),
        ("e\rf", "\\e\\rf"),
    ] {
        std::fs::write(dir.path().join(name), name).unwrap();
        let hex = hex::encode(Sha256::digest(name));
        let (mark, rest) = match shown.strip_prefix('\\') {
            Some(rest) => ("\\", rest),
            None => ("", shown),
        };
        expected.push(format!("{mark}{hex}  {rest}\n"));
    }
    let out = haul()
        .current_dir(dir.path())
        .args(["hash", "plain.bin", "a\nb", "c\\d", "e\rf"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected.concat());

    let mut child = haul()
        .args(["hash", "-"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    let hex = hex::encode(Sha256::digest(b"from stdin"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{hex}  -\n"));
}

/// `haul hash FILES | head -1` exited 7 with a "local I/O failure" message once the reader
/// stopped: it ends silently, with 128 + SIGPIPE, as sha256sum does.
#[test]
fn hash_into_a_reader_that_stopped_ends_silently() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"x").unwrap();
    // More lines than a pipe holds: haul is still writing when the reader goes.
    let mut child = haul()
        .arg("hash")
        .args(std::iter::repeat_n(&file, 3_000))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.ends_with("f.bin\n"), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Names from `out=` and `-o` were printed raw (`saved ./ESC]0;pwned BEL x.bin` set the
/// terminal's title): every path haul prints has its control characters escaped, in its
/// lines of success and of refusal alike.
#[test]
fn control_characters_in_list_and_output_names_are_escaped_in_messages() {
    let origin = Origin::start().unwrap();
    let body = data(5_000);
    origin.route("/x.bin", body.clone(), Behavior::Normal);
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = "\u{1b}]0;pwned\u{7}x.bin";
    let raw = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains(['\u{1b}', '\u{7}']), "{stderr:?}");
        assert!(stderr.contains("\\u{1b}]0;pwned\\u{7}x.bin"), "{stderr:?}");
    };
    let out = get_list(
        lists.path(),
        &format!("{}\n  out={name}\n", origin.url("/x.bin")),
        dest.path(),
        &[],
    );
    assert_ok(&out);
    raw(&out);
    assert_eq!(std::fs::read(dest.path().join(name)).unwrap(), body);
    let out = haul()
        .args(["get", &origin.url("/x.bin"), "-o"])
        .arg(dest.path().join(format!("o{name}")))
        .output()
        .unwrap();
    assert_ok(&out);
    raw(&out);
    // A refusal names it escaped too.
    std::fs::create_dir(dest.path().join(format!("d{name}"))).unwrap();
    let out = haul()
        .args(["get", &origin.url("/x.bin"), "-o"])
        .arg(dest.path().join(format!("d{name}")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    raw(&out);
    // And `haul hash`'s error for a file it cannot read.
    let out = haul()
        .args(["hash"])
        .arg(dest.path().join(format!("missing{name}")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    raw(&out);
}

/// An empty list with `--json` printed no `summary` line, which every other run prints: it
/// prints one with no jobs; a list whose every entry was skipped says so in it too.
#[test]
fn an_empty_list_prints_a_json_summary_of_no_jobs() {
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (list, code, skipped) in [
        ("", 0, 0),
        ("# nothing yet\n", 0, 0),
        ("ftp://127.0.0.1/x\n", 2, 1),
    ] {
        let out = get_list(lists.path(), list, dest.path(), &["--json"]);
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["event"], "summary");
        assert_eq!(
            (&lines[0]["jobs"], &lines[0]["ok"], &lines[0]["skipped"]),
            (&0.into(), &0.into(), &skipped.into())
        );
    }
}

/// An unusable `out=` (a name of more than 255 bytes, a working file's name) is reported at
/// its own line of the list, not at the URI's.
#[test]
fn an_unusable_out_name_is_reported_at_its_line() {
    let (lists, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["x".repeat(300), "x.haul-part".to_string()] {
        let list = format!("# a list\nhttp://a.test/x.bin\n  dir=sub\n  out={name}\n");
        let out = get_list(lists.path(), &list, dest.path(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("list.txt: line 4: "), "{name}: {stderr}");
    }
}
