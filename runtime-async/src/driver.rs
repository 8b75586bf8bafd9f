//! The driver task: the engine loop, written once for every async runtime.
//!
//! Owns: receiving commands (submit, cancel, client gone) and completions on one channel,
//! routing engine events to each [`crate::Transfer`], starting I/O (connections here, files
//! through `haul_driver::Files` on the blocking pool), and waiting for the next completion or
//! the engine's deadline. Does not own any decision (the engine's) nor socket handling
//! ([`crate::net`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use haul_core::{CancelMode, Config, ConfigError, Download, Event, IoId, IoOp, IoResult, JobId};
use haul_driver::{BlockingSpawner, BlockingWork, Completions, Files, Host};

use crate::events::EventSender;
use crate::net::Net;
use crate::AsyncRuntime;

/// Everything that reaches the driver.
pub(crate) enum Msg {
    /// The completion of an I/O request.
    Done(IoId, IoResult),
    /// Start downloads as one batch (priorities order them, `after_index` refers within);
    /// each one's events go to its own sender.
    Submit(Vec<Submission>),
    /// Cancel the download of `ticket`, keeping its partial or not as `mode` says.
    Cancel { ticket: u64, mode: CancelMode },
    /// Pause the download of `ticket`.
    Pause { ticket: u64 },
    /// Resume the download of `ticket`.
    Resume { ticket: u64 },
    /// Answer with the engine's counters (see [`crate::Client::stats`]).
    Stats(futures_channel::oneshot::Sender<haul_core::engine::Stats>),
    /// Limit the global rate by time of day (see [`crate::Client::set_rate_schedule`]).
    RateSchedule {
        rates: haul_core::RateSchedule,
        utc_offset: i32,
    },
    /// The last client handle was dropped.
    ClientGone,
}

/// One download of a [`Msg::Submit`] batch.
pub(crate) struct Submission {
    pub(crate) ticket: u64,
    pub(crate) download: Download,
    pub(crate) events: EventSender,
}

/// Completions into the driver's channel.
#[derive(Clone)]
pub(crate) struct Sink(pub(crate) UnboundedSender<Msg>);

impl Completions for Sink {
    fn complete(&self, id: IoId, result: IoResult) {
        let _ = self.0.unbounded_send(Msg::Done(id, result));
    }
}

/// The runtime's blocking pool as a spawner for file workers.
#[derive(Clone)]
struct Pool<R>(R);

impl<R: AsyncRuntime> BlockingSpawner for Pool<R> {
    fn spawn_blocking(&self, _name: String, work: BlockingWork) -> std::io::Result<()> {
        self.0.spawn_blocking(work);
        Ok(())
    }
}

/// A running job's event destination.
struct JobSink {
    ticket: u64,
    events: EventSender,
}

pub(crate) struct Driver<R: AsyncRuntime> {
    runtime: R,
    host: Host,
    rx: UnboundedReceiver<Msg>,
    net: Net<R>,
    files: Files<Sink, Pool<R>>,
    jobs: BTreeMap<JobId, JobSink>,
    tickets: BTreeMap<u64, JobId>,
    client_gone: bool,
}

impl<R: AsyncRuntime> Driver<R> {
    pub(crate) fn new(
        runtime: R,
        config: Config,
        tx: UnboundedSender<Msg>,
        rx: UnboundedReceiver<Msg>,
    ) -> Result<Self, ConfigError> {
        let tls = haul_driver::tls_setup(&config)?;
        // The executor hashes small downloads as they are written (`Files::running_digests`).
        let host = Host::new(Config {
            executor_digests: true,
            ..config
        })?;
        let net = Net::new(
            runtime.clone(),
            Sink(tx.clone()),
            tls,
            host.config().connect_timeout,
        );
        Ok(Driver {
            files: Files::new(Sink(tx), Pool(runtime.clone())).running_digests(),
            runtime,
            host,
            rx,
            net,
            jobs: BTreeMap::new(),
            tickets: BTreeMap::new(),
            client_gone: false,
        })
    }

    /// The loop: drain outputs, wait for a message or the deadline, apply, tick.
    pub(crate) async fn run(mut self) {
        loop {
            let (net, files, jobs, tickets) = (
                &mut self.net,
                &mut self.files,
                &mut self.jobs,
                &mut self.tickets,
            );
            self.host.drain(
                |req| match req.op {
                    IoOp::Connect { .. }
                    | IoOp::Send { .. }
                    | IoOp::Recv { .. }
                    | IoOp::Close { .. } => net.start(req),
                    _ => files.start(req),
                },
                |ev| deliver(jobs, tickets, ev),
            );
            self.files.flush();
            if self.client_gone && self.jobs.is_empty() {
                tracing::debug!("client dropped and no job left: driver stops");
                return;
            }
            let first = match self.host.deadline() {
                Some(at) => {
                    let sleep = pin!(self.runtime.sleep_until(at));
                    match select(self.rx.next(), sleep).await {
                        Either::Left((m, _)) => Some(m),
                        Either::Right(((), _)) => None,
                    }
                }
                None => Some(self.rx.next().await),
            };
            match first {
                None => self.host.tick(),
                Some(None) => return,
                Some(Some(m)) => {
                    self.apply(m);
                    // Batch whatever else arrived meanwhile before polling outputs.
                    while let Ok(m) = self.rx.try_recv() {
                        self.apply(m);
                    }
                    self.host.tick();
                    // Hashing happened in there: let the worker run other tasks.
                    YieldNow(false).await;
                }
            }
        }
    }

    fn apply(&mut self, m: Msg) {
        match m {
            Msg::Done(id, result) => self.host.complete(id, result),
            Msg::Submit(batch) => {
                let (sinks, downloads): (Vec<JobSink>, Vec<Download>) = batch
                    .into_iter()
                    .map(|s| {
                        let sink = JobSink {
                            ticket: s.ticket,
                            events: s.events,
                        };
                        (sink, s.download)
                    })
                    .unzip();
                let unnamed_max = self.host.config().unnamed_max;
                for (dir, count) in haul_driver::spares::expected_unnamed(&downloads, unnamed_max) {
                    self.files.expect_unnamed(&dir, count);
                }
                let jobs = self.host.submit_batch(downloads);
                for (job, sink) in jobs.into_iter().zip(sinks) {
                    self.tickets.insert(sink.ticket, job);
                    self.jobs.insert(job, sink);
                }
            }
            Msg::Cancel { ticket, mode } => {
                if let Some(job) = self.tickets.get(&ticket) {
                    self.host.cancel_with(*job, mode);
                }
            }
            Msg::Pause { ticket } => {
                if let Some(job) = self.tickets.get(&ticket) {
                    self.host.pause(*job);
                }
            }
            Msg::Resume { ticket } => {
                if let Some(job) = self.tickets.get(&ticket) {
                    self.host.resume(*job);
                }
            }
            Msg::Stats(reply) => {
                let _ = reply.send(self.host.stats());
            }
            Msg::RateSchedule { rates, utc_offset } => {
                self.host.set_rate_schedule(rates, utc_offset)
            }
            Msg::ClientGone => self.client_gone = true,
        }
    }
}

/// Send `ev` to its job's transfer; forget the job once it finished.
fn deliver(jobs: &mut BTreeMap<JobId, JobSink>, tickets: &mut BTreeMap<u64, JobId>, ev: Event) {
    // Events about an origin (a breaker opening) belong to no transfer.
    let Some(job) = haul_driver::event_job(&ev) else {
        return;
    };
    let finished = matches!(ev, Event::Finished { .. });
    if let Some(sink) = jobs.get(&job) {
        // A dropped transfer has cancelled its job; its remaining events go nowhere.
        sink.events.send(ev);
    }
    if finished {
        if let Some(sink) = jobs.remove(&job) {
            tickets.remove(&sink.ticket);
        }
    }
}

/// Returns `Pending` once after asking to be polled again.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
