//! Download three files at once on the blocking runtime, printing progress from the event
//! callback.
//!
//! ```sh
//! cargo run -p haul-blocking --example download_three_blocking   # from a local origin
//! cargo run -p haul-blocking --example download_three_blocking -- URL URL URL
//! ```
//!
//! Without URLs it starts a local origin on 127.0.0.1 serving three generated files.

use haul_core::{Config, Download, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let origin = haul_origin::Origin::start()?;
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        for (i, size) in [3_000_000usize, 5_000_000, 8_000_000]
            .into_iter()
            .enumerate()
        {
            let path = format!("/file-{i}.bin");
            let body: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
            origin.route(&path, body, haul_origin::Behavior::Normal);
            urls.push(origin.url(&path));
        }
    }
    let dir = tempfile::TempDir::new()?;
    let downloads = urls
        .iter()
        .map(|u| Download::into_dir(u, dir.path()))
        .collect::<Result<Vec<_>, _>>()?;
    let client = haul_blocking::Client::new(Config::default())?;
    let results = client.download_many(downloads, |event| {
        if let Event::Progress {
            job,
            bytes,
            total,
            rate,
            eta,
        } = event
        {
            let total = total.map_or("?".to_string(), |t| t.to_string());
            let eta = eta.map_or("?".to_string(), |e| format!("{:.1}s", e.as_secs_f64()));
            println!("{job}: {bytes}/{total} bytes, {rate} B/s, eta {eta}");
        }
    });
    for (url, result) in urls.iter().zip(results) {
        let outcome = result?;
        println!(
            "{url} -> {} ({} bytes, sha256 {})",
            outcome.path.display(),
            outcome.size,
            outcome.sha256_hex()
        );
    }
    Ok(())
}
