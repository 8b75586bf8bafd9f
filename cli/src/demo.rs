//! `haul demo`: the main job on a fresh machine, end to end and offline.
//!
//! Starts haul's built-in origin on 127.0.0.1, generates assets, serves some of them through
//! faults (an origin that fails twice with 503, a connection cut partway so the download must
//! resume with Range, a redirect, a chunked body), downloads them all with sha256
//! verification, then re-reads every committed file from disk to prove it.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use haul_blocking::Client;
use haul_core::{Config, Download};
use haul_origin::{Behavior, Origin};
use sha2::{Digest, Sha256};

use crate::exit;
use crate::progress::{Mode, Reporter};
use crate::units::{human_bytes, human_rate};

/// The largest `--scale`: about 60 GiB of assets (the sizes, in bytes, must not overflow).
const MAX_SCALE: u64 = 1024;

/// Options of `haul demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where to put the downloaded assets (default: a new temporary directory, kept).
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Scale the generated assets, 1 to 1024 (1 = about 60 MiB in total).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SCALE))]
    pub scale: u64,
    /// Print events as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors and the final verdict.
    #[arg(short, long)]
    pub quiet: bool,
}

struct Asset {
    path: &'static str,
    size: u64,
    behavior: Behavior,
    what: &'static str,
}

/// Deterministic pseudo-random content (SHA-256 in counter mode).
fn content(seed: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut counter = 0u64;
    while (out.len() as u64) < size {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(size as usize);
    out
}

/// Run `haul demo`; returns the exit code.
pub fn run(args: DemoArgs) -> i32 {
    match demo(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("haul demo: {msg}");
            exit::LOCAL_IO
        }
    }
}

fn demo(args: DemoArgs) -> Result<i32, String> {
    let scale = args.scale;
    let mib = 1024 * 1024 * scale;
    let assets = [
        Asset {
            path: "/assets/textures.pak",
            size: 24 * mib,
            behavior: Behavior::Normal,
            what: "plain download",
        },
        Asset {
            path: "/assets/models.zip",
            size: 16 * mib,
            behavior: Behavior::Truncate { after: 6 * mib },
            what: "connection cut every 6 MiB: resumed with Range",
        },
        Asset {
            path: "/assets/level1.bin",
            size: 4 * mib,
            behavior: Behavior::FailTimes {
                times: 2,
                status: 503,
            },
            what: "origin answers 503 twice, then recovers",
        },
        Asset {
            path: "/assets/soundtrack.ogg",
            size: 12 * mib,
            behavior: Behavior::Chunked { chunk: 64 * 1024 },
            what: "chunked transfer encoding",
        },
        Asset {
            path: "/assets/manual.pdf",
            size: 2 * mib,
            behavior: Behavior::Normal,
            what: "reached through a 302 redirect",
        },
    ];
    let origin = Origin::start().map_err(|e| format!("cannot start the local origin: {e}"))?;
    let mut expected = Vec::new();
    for a in &assets {
        let body = content(a.path, a.size);
        expected.push(hex::encode(Sha256::digest(&body)));
        origin.route(a.path, body, a.behavior.clone());
    }
    origin.route(
        "/latest/manual.pdf",
        Vec::new(),
        Behavior::Redirect {
            status: 302,
            location: "/assets/manual.pdf".into(),
        },
    );
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("haul-demo-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?
            .keep(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mode = Mode::choose(args.json, args.quiet);
    if mode != Mode::Json && mode != Mode::Quiet {
        eprintln!("haul demo: local origin at {}", origin.url("/"));
        for a in &assets {
            eprintln!("  {:<24} {:>9}  {}", a.path, human_bytes(a.size), a.what);
        }
        eprintln!("downloading into {} ...", dir.display());
    }

    let mut config = Config::default();
    // Short backoff so the demo's retries take a second, not a minute.
    config.retry.base_delay = Duration::from_millis(200);
    config.retry.max_delay = Duration::from_secs(2);
    config.retry.max_attempts = 8;
    let client = Client::new(config).map_err(|e| e.to_string())?;
    let mut downloads = Vec::new();
    for (a, sha) in assets.iter().zip(&expected) {
        let url = if a.path == "/assets/manual.pdf" {
            origin.url("/latest/manual.pdf")
        } else {
            origin.url(a.path)
        };
        let name = a.path.rsplit('/').next().expect("path has a name");
        let d = Download::new(&url, dir.join(name))
            .and_then(|d| d.sha256(sha))
            .map_err(|e| e.to_string())?
            .size(a.size);
        downloads.push(d);
    }
    let started = Instant::now();
    let mut reporter = Reporter::new(mode, downloads.len());
    let results = client.download_many(downloads, |ev| reporter.event(ev));
    let elapsed = started.elapsed();

    // Prove it: re-read every committed file from disk and hash it again.
    let mut failures = 0;
    let mut total = 0u64;
    let mut code = exit::OK;
    for ((a, sha), r) in assets.iter().zip(&expected).zip(&results) {
        match r {
            Ok(o) => {
                let on_disk =
                    hash_file(&o.path).map_err(|e| format!("{}: {e}", o.path.display()))?;
                total += o.size;
                if &on_disk != sha {
                    failures += 1;
                    code = exit::VERIFICATION;
                    eprintln!(
                        "  FAIL {} on disk hashes to {on_disk}, expected {sha}",
                        a.path
                    );
                } else if mode != Mode::Json {
                    eprintln!(
                        "  ok   {:<24} attempts {}  fetched {:>9}  sha256 {}…",
                        a.path,
                        o.attempts,
                        human_bytes(o.bytes_fetched),
                        &sha[..16]
                    );
                }
            }
            Err(e) => {
                failures += 1;
                code = exit::combine([code, exit::for_download(e)]);
                eprintln!("  FAIL {}: {e}", a.path);
            }
        }
    }
    let requests = origin.requests().len();
    let connections = {
        let mut ids: Vec<u64> = origin.requests().iter().map(|r| r.connection_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    if mode == Mode::Json {
        reporter.summary(assets.len() - failures, failures, 0, total);
    } else {
        eprintln!(
            "haul demo: {} of {} assets verified ({}) in {:.2}s, {}; {requests} requests over {connections} connections",
            assets.len() - failures,
            assets.len(),
            human_bytes(total),
            elapsed.as_secs_f64(),
            human_rate(total as f64 / elapsed.as_secs_f64().max(1e-9)),
        );
    }
    let code = exit::combine([code, crate::demo_assets::run(&origin, &dir, mode)?]);
    Ok(code)
}

fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
