//! Loopback throughput of the three runtimes in one run: the same URL downloaded (with
//! SHA-256 verification) by haul-blocking, haul-tokio and haul-smol in rotating order, with
//! the median time of each and its ratio to the blocking runtime.
//!
//! ```sh
//! cargo run --release -p haul-tokio --example compare_runtimes -- \
//!     http://127.0.0.1:18080/1g.bin --sha256 HEX --rounds 3 [--cacert CA.pem] \
//!     [--only blocking|tokio|smol] [--dir DIR] [--keep]
//! ```
//!
//! Each download goes to `DIR/download.bin` (default: a directory under the system temp
//! directory). `--only` runs one runtime (one process per runtime, as bench/run does);
//! `--keep` leaves the last download in place so that a caller can check it. Each download
//! prints one line:
//!
//! ```text
//! round 1 Blocking: 1073741824 bytes in 0.812 s (1261 MiB/s) sha256 HEX
//! ```
//!
//! A failed download (including a SHA-256 mismatch) prints the error and exits 1; bad
//! arguments exit 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use haul_core::{Config, Download, Outcome};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    Blocking,
    Tokio,
    Smol,
}

const ALL: [Which; 3] = [Which::Blocking, Which::Tokio, Which::Smol];

fn download(
    which: Which,
    config: &Config,
    url: &str,
    sha: Option<&str>,
    dest: &Path,
) -> Result<Outcome, String> {
    let config = config.clone();
    let mut d = Download::new(url, dest).map_err(|e| format!("URL {url}: {e}"))?;
    if let Some(h) = sha {
        d = d.sha256(h).map_err(|e| format!("--sha256: {e}"))?;
    }
    match which {
        Which::Blocking => haul_blocking::Client::new(config)
            .map_err(|e| format!("config: {e}"))?
            .download(d, |_| {})
            .map_err(|e| format!("blocking download: {e}")),
        Which::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            rt.block_on(async {
                haul_tokio::Client::new(config)
                    .map_err(|e| format!("config: {e}"))?
                    .download(d)
                    .await
                    .map_err(|e| format!("tokio download: {e}"))
            })
        }
        Which::Smol => smol::block_on(async {
            haul_smol::Client::new(config)
                .map_err(|e| format!("config: {e}"))?
                .download(d)
                .await
                .map_err(|e| format!("smol download: {e}"))
        }),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("compare_runtimes: {message}");
    eprintln!(
        "usage: compare_runtimes URL [--sha256 HEX] [--rounds N] [--only blocking|tokio|smol] \
         [--dir DIR] [--keep] [--cacert FILE]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut url = "http://127.0.0.1:18080/1g.bin".to_string();
    let mut sha = None;
    let mut rounds = 3usize;
    let mut dir = std::env::temp_dir().join("haul-compare-runtimes");
    let mut only: Option<Which> = None;
    let mut keep = false;
    let mut config = Config::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sha256" => match args.next() {
                Some(h) => sha = Some(h),
                None => return usage_error("--sha256 needs a value"),
            },
            "--rounds" => match args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0) {
                Some(n) => rounds = n,
                None => return usage_error("--rounds needs a positive number"),
            },
            "--dir" => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage_error("--dir needs a value"),
            },
            "--only" => {
                let name = args.next().unwrap_or_default();
                match ALL
                    .iter()
                    .find(|w| format!("{w:?}").eq_ignore_ascii_case(&name))
                {
                    Some(&w) => only = Some(w),
                    None => {
                        return usage_error(&format!(
                            "--only takes blocking, tokio or smol, not '{name}'"
                        ))
                    }
                }
            }
            "--keep" => keep = true,
            "--cacert" => {
                let Some(path) = args.next() else {
                    return usage_error("--cacert needs a file");
                };
                match std::fs::read(&path) {
                    Ok(pem) => config.extra_root_certs.push(pem),
                    Err(e) => return usage_error(&format!("--cacert {path}: {e}")),
                }
            }
            other if other.starts_with('-') => {
                return usage_error(&format!("unknown option '{other}'"))
            }
            other => url = other.to_string(),
        }
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("compare_runtimes: create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let dest = dir.join("download.bin");
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ALL.len()];
    for round in 0..rounds {
        for k in 0..ALL.len() {
            let i = (round + k) % ALL.len();
            if only.is_some_and(|o| o != ALL[i]) {
                continue;
            }
            let _ = std::fs::remove_file(&dest);
            let t = Instant::now();
            let out = match download(ALL[i], &config, &url, sha.as_deref(), &dest) {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("compare_runtimes: round {} {:?}: {e}", round + 1, ALL[i]);
                    return ExitCode::FAILURE;
                }
            };
            let took = t.elapsed();
            println!(
                "round {} {:?}: {} bytes in {:.3} s ({:.0} MiB/s) sha256 {}",
                round + 1,
                ALL[i],
                out.size,
                took.as_secs_f64(),
                out.size as f64 / took.as_secs_f64() / (1024.0 * 1024.0),
                out.sha256_hex()
            );
            times[i].push(took);
        }
    }
    if !keep {
        let _ = std::fs::remove_file(&dest);
    }
    if only.is_some() {
        return ExitCode::SUCCESS;
    }
    let base = median(times[0].clone()).as_secs_f64();
    for (i, which) in ALL.iter().enumerate() {
        let m = median(times[i].clone()).as_secs_f64();
        println!("median {:?}: {:.3} s, {:.3}x blocking", which, m, m / base);
    }
    ExitCode::SUCCESS
}
