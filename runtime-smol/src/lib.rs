//! haul-smol: haul on smol (async-io, async-executor and blocking, through the `smol` crate).
//!
//! Owns only what smol supplies to the shared async driver ([`haul_async`]): task spawning on
//! an executor, `blocking::unblock` for file work and connection setup, `Async<TcpStream>`
//! and `async_io::Timer`. Everything else (the engine loop, connections, TLS, proxies,
//! files) is shared with the other runtimes.
//!
//! By default tasks go to smol's global executor (`smol::spawn`) and the driver task, which
//! hashes every byte, runs on a thread of its own; [`Smol::on`]
//! puts every task on an executor of yours instead, held weakly: dropping it ends the
//! client's tasks, and its transfers end with `DownloadError::ClientStopped`.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::sync::{Arc, Weak};

use haul_async::{AsyncRuntime, AsyncSocket, BlockingWork};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

pub use haul_async::{haul_core, Transfer, TransferResult};

/// An async download client on smol.
pub type Client = haul_async::Client<Smol>;

/// Where a [`Client`]'s tasks run.
#[derive(Clone, Default)]
pub struct Smol {
    /// An executor of the application's: weak, since the client's tasks (which hold this)
    /// live in it, and a strong hold would keep it, and them, alive for ever after the
    /// application dropped it.
    executor: Option<Weak<smol::Executor<'static>>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol")
            .field("own_executor", &self.executor.is_some())
            .finish()
    }
}

impl Smol {
    /// Spawn tasks on `executor` (someone must be running it). The client holds it weakly:
    /// once the application drops it, the client's tasks are dropped with it (their
    /// connections and files closed), and its transfers end with
    /// `DownloadError::ClientStopped`, as when a tokio runtime shuts down.
    pub fn on(executor: Arc<smol::Executor<'static>>) -> Smol {
        Smol {
            executor: Some(Arc::downgrade(&executor)),
        }
    }
}

/// An async-io TCP stream.
#[derive(Debug)]
pub struct Socket(Async<TcpStream>);

impl AsyncSocket for Socket {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data).await
    }
}

impl AsyncRuntime for Smol {
    type Socket = Socket;

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        match &self.executor {
            Some(ex) => {
                // A dropped executor runs nothing more: the task is dropped too.
                if let Some(ex) = ex.upgrade() {
                    ex.spawn(task).detach();
                }
            }
            None => smol::spawn(task).detach(),
        }
    }

    /// On smol's global executor (one thread unless `SMOL_THREADS` says otherwise) the
    /// driver gets a thread of its own, like the blocking runtime's driver: hashing then
    /// overlaps with the connection tasks' socket reads instead of taking turns with them.
    fn spawn_driver<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        if self.executor.is_some() {
            return self.spawn(task);
        }
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(task)));
        let for_thread = slot.clone();
        let started = std::thread::Builder::new()
            .name("haul-driver".into())
            .spawn(move || {
                let task = for_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(task) = task {
                    smol::block_on(task);
                }
            });
        if started.is_err() {
            let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                self.spawn(task);
            }
        }
    }

    fn spawn_blocking(&self, work: BlockingWork) {
        smol::unblock(work).detach();
    }

    fn socket(&self, stream: TcpStream) -> io::Result<Socket> {
        Async::new(stream).map(Socket)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> impl Future<Output = ()> + Send {
        let timer = Timer::at(deadline);
        async move {
            timer.await;
        }
    }
}
