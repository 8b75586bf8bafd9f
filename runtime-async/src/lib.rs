//! haul-async: the one async driver of haul, generic over a small [`AsyncRuntime`] trait.
//!
//! Owns: the async [`Client`] (many downloads at once, each a [`Transfer`] that is a
//! `Stream` of progress events and a future of its result, cancelled when dropped), the
//! driver task that owns the engine, and the connection tasks. Does not own: any decision
//! (the engine's), connection setup, TLS and file effects (shared with the blocking runtime
//! in `haul-driver`), nor a particular executor: `haul-tokio` and `haul-smol` implement
//! [`AsyncRuntime`] in a few lines each, the way quinn's `Runtime` trait does.
//!
//! Tasks and threads:
//! - one driver task owns the engine; hashing happens there, inside the engine. It yields
//!   after every batch of completions so it never starves the other tasks of its worker;
//! - one task per connection reads **one buffer ahead** (256 KiB reads) while the driver
//!   hashes the previous one, and writes requests;
//! - connection setup (DNS, connect, `CONNECT`, TLS handshake) runs on the runtime's blocking
//!   pool, then the socket is handed to the reactor;
//! - file operations run on blocking-pool workers, one per open file, in issue order, so a
//!   file write never blocks an async worker thread.
//!
//! Cancellation: dropping a [`Transfer`] (or the future of [`Client::download`]) cancels its
//! job; nothing is committed, and the partial file and its state are removed. A download to
//! be continued later is cancelled with [`Transfer::cancel_with`]`(CancelMode::KeepPartial)`
//! (or paused) first.
//! Dropping the last [`Client`] lets the driver finish the running jobs' transfers that are
//! still held, then stop.
#![forbid(unsafe_code)]

mod driver;
mod events;
mod net;

use std::future::{Future, IntoFuture};
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_channel::mpsc::{self, UnboundedSender};
use futures_core::Stream;
use haul_core::{CancelMode, Config, ConfigError, Download, DownloadError, Event, Outcome};

pub use haul_core;
pub use haul_driver::BlockingWork;

use driver::{Msg, Submission};

/// What an executor supplies to the driver: tasks, a blocking pool, sockets and a timer.
pub trait AsyncRuntime: Clone + Send + Sync + 'static {
    /// A connected TCP socket registered with the runtime's reactor.
    type Socket: AsyncSocket;
    /// Run `task` in the background.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F);
    /// Run the driver task (it owns the engine, which hashes every byte received). By
    /// default an ordinary task; a runtime whose executor has a single thread may give it a
    /// thread of its own so hashing overlaps with socket reads.
    fn spawn_driver<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.spawn(task);
    }
    /// Run blocking `work` (file I/O, connection setup) off the async threads.
    fn spawn_blocking(&self, work: BlockingWork);
    /// Register a connected std socket (already non-blocking) with the reactor.
    fn socket(&self, stream: std::net::TcpStream) -> io::Result<Self::Socket>;
    /// A future that completes at `deadline`.
    fn sleep_until(&self, deadline: std::time::Instant) -> impl Future<Output = ()> + Send;
}

/// Reading and writing a connected socket.
pub trait AsyncSocket: Send + 'static {
    /// Read some bytes (0: end of stream). Dropping the future loses no data.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Write all of `data`.
    fn write_all(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// Sends the driver a shutdown when the last [`Client`] clone goes away.
struct ClientShared {
    tx: UnboundedSender<Msg>,
    next_ticket: AtomicU64,
}

impl Drop for ClientShared {
    fn drop(&mut self) {
        let _ = self.tx.unbounded_send(Msg::ClientGone);
    }
}

/// An async download client on runtime `R`. Cloning is cheap; clones share one engine (and
/// its idle connections).
pub struct Client<R: AsyncRuntime> {
    shared: Arc<ClientShared>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: AsyncRuntime> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            shared: self.shared.clone(),
            runtime: PhantomData,
        }
    }
}

impl<R: AsyncRuntime + Default> Client<R> {
    /// A client on the default runtime handle of `R` (for tokio: the current runtime, so this
    /// panics outside one, like `tokio::spawn`).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::with_runtime(R::default(), config)
    }
}

impl<R: AsyncRuntime> Client<R> {
    /// A client whose driver and I/O run on `runtime` (the jitter seed comes from the OS).
    pub fn with_runtime(runtime: R, config: Config) -> Result<Self, ConfigError> {
        let (tx, rx) = mpsc::unbounded();
        let task = driver::Driver::new(runtime.clone(), config, tx.clone(), rx)?;
        runtime.spawn_driver(task.run());
        Ok(Client {
            shared: Arc::new(ClientShared {
                tx,
                next_ticket: AtomicU64::new(0),
            }),
            runtime: PhantomData,
        })
    }

    /// Start a download and return at once. The [`Transfer`] is a `Stream` of its events and,
    /// awaited, gives the result; dropping it cancels the download (and removes the partial).
    pub fn start(&self, download: Download) -> Transfer {
        self.start_many(vec![download])
            .pop()
            .expect("one transfer per download")
    }

    /// Start several downloads as one batch (queued together, so priorities order them and
    /// `Download::after_index` refers within the batch); transfers in the order given.
    pub fn start_many(&self, downloads: Vec<Download>) -> Vec<Transfer> {
        let mut transfers = Vec::with_capacity(downloads.len());
        let mut batch = Vec::with_capacity(downloads.len());
        for download in downloads {
            let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
            let (events_tx, events) = events::channel();
            batch.push(Submission {
                ticket,
                download,
                events: events_tx,
            });
            transfers.push(Transfer {
                ticket,
                driver: self.shared.tx.clone(),
                events,
                state: TransferState::Running,
                job: None,
                cancelled: std::sync::atomic::AtomicBool::new(false),
            });
        }
        if self.shared.tx.unbounded_send(Msg::Submit(batch)).is_err() {
            for t in &mut transfers {
                t.state = TransferState::Ended(Some(Err(driver_stopped())));
            }
        }
        transfers
    }

    /// Limit the global rate by time of day, read on a local clock `utc_offset` seconds
    /// ahead of UTC (see [`haul_core::RateSchedule`]); replaces the configured fixed limit,
    /// for the downloads running and those to come.
    pub fn set_rate_schedule(&self, rates: haul_core::RateSchedule, utc_offset: i32) {
        let _ = self
            .shared
            .tx
            .unbounded_send(Msg::RateSchedule { rates, utc_offset });
    }

    /// The client's counters: downloads active, queued, done, failed and cancelled, body
    /// bytes received, and the current (last second), average and peak rates. All zero when
    /// the client's runtime has shut down.
    pub async fn stats(&self) -> haul_core::engine::Stats {
        let (tx, rx) = futures_channel::oneshot::channel();
        if self.shared.tx.unbounded_send(Msg::Stats(tx)).is_err() {
            return Default::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Download one file, verified and committed atomically. Dropping the future cancels.
    pub async fn download(&self, download: Download) -> Result<Outcome, DownloadError> {
        self.start(download).await
    }

    /// Download several files at once; results in the order given.
    pub async fn download_many(
        &self,
        downloads: Vec<Download>,
    ) -> Vec<Result<Outcome, DownloadError>> {
        let transfers = self.start_many(downloads);
        let mut results = Vec::with_capacity(transfers.len());
        for t in transfers {
            results.push(t.await);
        }
        results
    }
}

/// The error a transfer reports when its driver is gone (the runtime shut down).
fn driver_stopped() -> DownloadError {
    DownloadError::ClientStopped
}

/// Where a transfer is.
enum TransferState {
    Running,
    /// The job ended; the result until someone takes it.
    Ended(Option<Result<Outcome, DownloadError>>),
}

/// One running download: a `Stream` of its [`Event`]s (ending after
/// [`Event::Finished`]) and, through `.await`, its result. Dropping it before the end
/// cancels the download and removes its partial file (call
/// [`cancel_with`](Transfer::cancel_with)`(CancelMode::KeepPartial)` first to keep it for a
/// later resume). A progress event not taken
/// before the next one arrives is replaced by it, so a transfer that is only awaited, or
/// read slowly, holds a few events rather than one per chunk of the file.
pub struct Transfer {
    ticket: u64,
    driver: UnboundedSender<Msg>,
    events: events::EventReceiver,
    state: TransferState,
    /// The engine's id of the job, from the first event taken.
    job: Option<haul_core::JobId>,
    /// Cancelled by the caller ([`Transfer::cancel_with`]): dropping it then sends no
    /// cancel of its own, which would discard a partial the caller asked to keep.
    cancelled: std::sync::atomic::AtomicBool,
}

impl Transfer {
    /// The engine's id of this download's job (for [`Download::after`], or to match a
    /// client's [`Event`]s), known once the transfer's first event has been taken (`Queued`,
    /// through the stream or while awaiting it); `None` before.
    ///
    /// [`Download::after`]: haul_core::Download::after
    pub fn job(&self) -> Option<haul_core::JobId> {
        self.job
    }

    /// The future of the result (what `.await` on the transfer gives; handy where
    /// `StreamExt::into_future` would be ambiguous).
    pub fn result(self) -> TransferResult {
        TransferResult(self)
    }

    /// Cancel now and remove the partial file and its state (the same as dropping, but the
    /// result, `Cancelled`, can still be awaited). [`Transfer::cancel_with`] keeps them.
    pub fn cancel(&self) {
        self.cancel_with(CancelMode::Discard);
    }

    /// Cancel now, keeping the partial file ([`CancelMode::KeepPartial`]) for a later
    /// download of the same file to resume, or removing it and its state
    /// ([`CancelMode::Discard`]). A transfer cancelled one way and then dropped stays
    /// cancelled that way; a discard after a cancel that keeps removes the partial, unless
    /// the download has already closed it.
    pub fn cancel_with(&self, mode: CancelMode) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.send(Msg::Cancel {
            ticket: self.ticket,
            mode,
        });
    }

    /// Pause the download: its connections close and it holds no slot until
    /// [`Transfer::resume`], which continues from the bytes already verified.
    pub fn pause(&self) {
        self.send(Msg::Pause {
            ticket: self.ticket,
        });
    }

    /// Resume a paused download: it goes on from its bytes at the next free slot (at once
    /// if one is free), before the queued downloads of its priority.
    pub fn resume(&self) {
        self.send(Msg::Resume {
            ticket: self.ticket,
        });
    }

    /// Tell the driver about this transfer, while it runs.
    fn send(&self, msg: Msg) {
        if let TransferState::Running = self.state {
            let _ = self.driver.unbounded_send(msg);
        }
    }
}

impl Stream for Transfer {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        if let TransferState::Ended(_) = this.state {
            return Poll::Ready(None);
        }
        match this.events.poll_next(cx) {
            Poll::Ready(Some(ev)) => {
                this.job = this.job.or(ev.job());
                if let Event::Finished { result, .. } = &ev {
                    this.state = TransferState::Ended(Some(result.clone()));
                }
                Poll::Ready(Some(ev))
            }
            Poll::Ready(None) => {
                this.state = TransferState::Ended(Some(Err(driver_stopped())));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.cancelled.load(Ordering::Relaxed) {
            self.cancel();
        }
    }
}

/// The future of a [`Transfer`]'s result (events not yet taken are skipped).
pub struct TransferResult(Transfer);

impl Future for TransferResult {
    type Output = Result<Outcome, DownloadError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let t = &mut self.get_mut().0;
        loop {
            if let TransferState::Ended(result) = &mut t.state {
                return Poll::Ready(result.take().unwrap_or_else(|| Err(driver_stopped())));
            }
            if Pin::new(&mut *t).poll_next(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl IntoFuture for Transfer {
    type Output = Result<Outcome, DownloadError>;
    type IntoFuture = TransferResult;

    fn into_future(self) -> TransferResult {
        TransferResult(self)
    }
}
