//! Writes a signed module manifest and its modules, for benchmarking `haul load`.
//!
//! Usage: `cargo run --release -p haul --example make_manifest -- OUTDIR COUNT SIZE`
//!
//! Writes `OUTDIR/m0000.zipline` ... (COUNT files of SIZE bytes each, e.g. 32K; distinct
//! pseudo-random content) and `OUTDIR/manifest.json` listing them (module i depends on module
//! (i-1)/2, the last one is the main module), signed with a fixed Ed25519 test key named
//! `bench`. Prints the `--key` argument for `haul load` on stdout. Serve OUTDIR over HTTP and
//! point `haul load --manifest` at `manifest.json`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

/// The fixed test key (never use it for anything real).
const SEED: [u8; 32] = [0x42; 32];
const KEY_NAME: &str = "bench";

fn parse_size(text: &str) -> Option<usize> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, multiplier) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1 << 10),
        'm' => (&lower[..lower.len() - 1], 1 << 20),
        _ => (lower, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(multiplier)
}

/// Distinct bytes per module (xorshift seeded by the index).
fn module_bytes(index: usize, size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1).wrapping_mul(0x1000_0001);
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out_dir, count, size] = args.as_slice() else {
        return Err("usage: make_manifest OUTDIR COUNT SIZE (e.g. /tmp/mods 500 32K)".into());
    };
    let out_dir = PathBuf::from(out_dir);
    let count: usize = count.parse().map_err(|_| "COUNT must be a number")?;
    let size = parse_size(size).ok_or("SIZE must look like 32768, 32K or 1M")?;
    std::fs::create_dir_all(&out_dir)?;

    let mut modules = serde_json::Map::new();
    for index in 0..count {
        let bytes = module_bytes(index, size);
        let file_name = format!("m{index:04}.zipline");
        std::fs::write(out_dir.join(&file_name), &bytes)?;
        let depends_on: Vec<String> = if index == 0 {
            Vec::new()
        } else {
            vec![format!("./m{:04}.js", (index - 1) / 2)]
        };
        modules.insert(
            format!("./m{index:04}.js"),
            serde_json::json!({
                "url": file_name,
                "sha256": hex::encode(Sha256::digest(&bytes)),
                "dependsOnIds": depends_on,
            }),
        );
    }
    let fresh_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let main_module = count.checked_sub(1).map(|last| format!("./m{last:04}.js"));
    let mut document = serde_json::json!({
        "unsigned": {"signatures": {}, "freshAtEpochMs": fresh_at, "baseUrl": null},
        "modules": modules,
        "mainModuleId": main_module,
        "mainFunction": "bench.main",
        "version": format!("bench-{count}x{size}"),
    });
    let unsigned = serde_json::to_vec(&document)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let signature = key.sign(&haul_modules::signed_bytes(&unsigned)?);
    document["unsigned"]["signatures"][KEY_NAME] =
        serde_json::Value::String(hex::encode(signature.to_bytes()));
    std::fs::write(
        out_dir.join("manifest.json"),
        serde_json::to_vec_pretty(&document)?,
    )?;
    println!(
        "{KEY_NAME}:ed25519:{}",
        hex::encode(key.verifying_key().to_bytes())
    );
    Ok(())
}
