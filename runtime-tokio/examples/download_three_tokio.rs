//! Download three files at once on tokio, printing each one's progress stream.
//!
//! ```sh
//! cargo run -p haul-tokio --example download_three_tokio      # from a local origin
//! cargo run -p haul-tokio --example download_three_tokio -- URL URL URL
//! ```
//!
//! Without URLs it starts a local origin on 127.0.0.1 serving three generated files.

use futures_util::StreamExt;
use haul_core::{Config, Download, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let client = haul_tokio::Client::new(Config::default())?;
    let mut tasks = Vec::new();
    for url in &urls {
        let mut transfer = client.start(Download::into_dir(url, dir.path())?);
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = transfer.next().await {
                if let Event::Progress { bytes, total, .. } = event {
                    let total = total.map_or("?".to_string(), |t| t.to_string());
                    println!("{url}: {bytes}/{total} bytes");
                }
            }
            (url, transfer.await)
        }));
    }
    for task in tasks {
        let (url, result) = task.await?;
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
