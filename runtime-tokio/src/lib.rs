//! haul-tokio: haul on tokio.
//!
//! Owns only what tokio supplies to the shared async driver ([`haul_async`]): task spawning,
//! `spawn_blocking` for file work and connection setup, `TcpStream` and `sleep_until`.
//! Everything else (the engine loop, connections, TLS, proxies, files) is shared with the
//! other runtimes. Use [`Client`] inside a tokio runtime (multi-threaded for throughput: the
//! driver task hashes while connection tasks read) built with its I/O and time drivers
//! (`enable_all()`, as `#[tokio::main]` does): without I/O connections never establish (the
//! downloads end with connect timeouts), and without timers the client stops at once
//! (`ClientStopped`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! let client = haul_tokio::Client::new(haul_tokio::haul_core::Config::default())?;
//! let mut transfer = client.start(haul_tokio::haul_core::Download::new(
//!     "http://127.0.0.1:8080/file.bin",
//!     "file.bin",
//! )?);
//! while let Some(event) = transfer.next().await {
//!     println!("{event:?}");
//! }
//! let outcome = transfer.await?;
//! # let _ = outcome; Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;

use haul_async::{AsyncRuntime, AsyncSocket, BlockingWork};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;

pub use haul_async::{haul_core, Transfer, TransferResult};

/// An async download client on tokio.
pub type Client = haul_async::Client<Tokio>;

/// The tokio runtime a [`Client`] runs on.
#[derive(Debug, Clone)]
pub struct Tokio(Handle);

impl Tokio {
    /// Run on the runtime behind `handle`.
    pub fn new(handle: Handle) -> Tokio {
        Tokio(handle)
    }
}

impl Default for Tokio {
    /// The current runtime. Panics outside a tokio runtime, like `tokio::spawn`.
    fn default() -> Tokio {
        Tokio(Handle::current())
    }
}

/// A tokio TCP stream.
#[derive(Debug)]
pub struct Socket(tokio::net::TcpStream);

impl AsyncSocket for Socket {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data).await
    }
}

impl AsyncRuntime for Tokio {
    type Socket = Socket;

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.0.spawn(task);
    }

    fn spawn_blocking(&self, work: BlockingWork) {
        self.0.spawn_blocking(work);
    }

    fn socket(&self, stream: std::net::TcpStream) -> io::Result<Socket> {
        let _inside = self.0.enter();
        tokio::net::TcpStream::from_std(stream).map(Socket)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}
