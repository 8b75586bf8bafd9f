//! Loopback throughput of the three runtimes in one run: the same URL downloaded (with
//! SHA-256 verification) by haul-blocking, haul-tokio and haul-smol in rotating order, with
//! the median time of each and its ratio to the blocking runtime.
//!
//! ```sh
//! cargo run --release -p haul-tokio --example compare_runtimes -- \
//!     http://127.0.0.1:18080/1g.bin --sha256 HEX --rounds 3 [--cacert CA.pem] [--only smol]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haul_core::{Config, Download, Outcome};

#[derive(Clone, Copy, Debug)]
enum Which {
    Blocking,
    Tokio,
    Smol,
}

const ALL: [Which; 3] = [Which::Blocking, Which::Tokio, Which::Smol];

fn download(which: Which, config: &Config, url: &str, sha: Option<&str>, dest: &Path) -> Outcome {
    let config = config.clone();
    let mut d = Download::new(url, dest).expect("valid URL");
    if let Some(h) = sha {
        d = d.sha256(h).expect("valid sha256");
    }
    match which {
        Which::Blocking => haul_blocking::Client::new(config)
            .expect("config")
            .download(d, |_| {})
            .expect("blocking download"),
        Which::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                haul_tokio::Client::new(config)
                    .expect("config")
                    .download(d)
                    .await
                    .expect("tokio download")
            })
        }
        Which::Smol => smol::block_on(async {
            haul_smol::Client::new(config)
                .expect("config")
                .download(d)
                .await
                .expect("smol download")
        }),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = "http://127.0.0.1:18080/1g.bin".to_string();
    let mut sha = None;
    let mut rounds = 3usize;
    let mut dir = std::env::temp_dir().join("haul-compare-runtimes");
    let mut only: Option<String> = None;
    let mut config = Config::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sha256" => sha = args.next(),
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            "--dir" => dir = PathBuf::from(args.next().expect("--dir DIR")),
            "--only" => only = args.next(),
            "--cacert" => config
                .extra_root_certs
                .push(std::fs::read(args.next().expect("--cacert FILE")).expect("read --cacert")),
            other => url = other.to_string(),
        }
    }
    std::fs::create_dir_all(&dir).expect("create output directory");
    let dest = dir.join("download.bin");
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ALL.len()];
    for round in 0..rounds {
        for k in 0..ALL.len() {
            let i = (round + k) % ALL.len();
            if only
                .as_deref()
                .is_some_and(|o| !format!("{:?}", ALL[i]).eq_ignore_ascii_case(o))
            {
                continue;
            }
            let _ = std::fs::remove_file(&dest);
            let t = Instant::now();
            let out = download(ALL[i], &config, &url, sha.as_deref(), &dest);
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
    let _ = std::fs::remove_file(&dest);
    if only.is_some() {
        return;
    }
    let base = median(times[0].clone()).as_secs_f64();
    for (i, which) in ALL.iter().enumerate() {
        let m = median(times[i].clone()).as_secs_f64();
        println!("median {:?}: {:.3} s, {:.3}x blocking", which, m, m / base);
    }
}
