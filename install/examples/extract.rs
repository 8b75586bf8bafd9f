//! Extracts a zip with haul-install's safe extractor, for benchmarks against `unzip -q`.
//!
//! Usage: `cargo run --release -p haul-install --example extract -- ARCHIVE DEST [--no-sync]`
//!
//! By default the tree is made durable before it is swapped in (one `syncfs`), which
//! `unzip` never does: compare with `unzip -q A -d D && sync -f D`, or pass `--no-sync`
//! to time extraction alone against plain `unzip -q`.
//!
//! Every entry is extracted (modes from the archive) into a staging directory beside
//! DEST, which then replaces DEST as a whole. Prints one line to stderr with the count
//! and the elapsed time; exits 1 on any error (refusals included) with the reason.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use haul_install::extract::{extract_and_commit, Durability, ExtractOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (archive, dest, durability) = match args.as_slice() {
        [a, d] => (a, d, Durability::SyncBeforeCommit),
        [a, d, flag] if flag == "--no-sync" => (a, d, Durability::NoSync),
        _ => {
            eprintln!("usage: extract ARCHIVE DEST [--no-sync]");
            return ExitCode::from(2);
        }
    };
    let options = ExtractOptions {
        durability,
        ..ExtractOptions::default()
    };
    let started = Instant::now();
    match extract_and_commit(
        &PathBuf::from(archive),
        &PathBuf::from(dest),
        |name| Some(name.to_string()),
        &options,
    ) {
        Ok(done) => {
            eprintln!(
                "extracted {} files, {} directories, {} bytes in {:.3}s",
                done.stats.files,
                done.stats.directories,
                done.stats.bytes,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("extract: {e}");
            ExitCode::FAILURE
        }
    }
}
