//! haul-blocking: haul on plain threads, std::net sockets and std::fs files.
//!
//! Owns: executing the core engine's [`IoRequest`]s with blocking calls on threads, and the
//! [`Client`] whose `download` blocks until the job ends, reporting [`Event`]s to a callback.
//! Does not own: any decision (retries, resume, verification: all in `haul-core`).
//!
//! Threads:
//! - the caller's thread drives the engine (when calls run on several threads, one of them:
//!   the others hand it their downloads and take their events from a channel, see
//!   `Guest`; hashing of segmented files happens there, inside
//!   the engine) and the sockets; a long batch of one class is handed to the engine in parts
//!   (`haul_core::Engine::may_split_batch`) so that its first downloads start at once: it sleeps in one `mio` poller (epoll) and reads and writes
//!   every established connection itself, non-blocking (see `net`); other threads wake it
//!   after sending it a message;
//! - a short-lived thread per connection sets it up (DNS, connect, proxy tunnel, TLS
//!   handshake) and hands it over;
//! - small file operations (opens of a spare unnamed file, closes, reads and writes of at
//!   most 64 KiB, state file reads, removals, renames without a sync) run on the caller's
//!   thread when nothing of the same file is pending elsewhere: a small download then needs
//!   no thread switch for its file at all; except the writes of an unnamed file, which go to
//!   the digest thread (below) and complete at once (`Files::writes_behind`);
//! - the others (creating a file when no spare is ready, syncs, large writes) go to a worker
//!   per open file that executes that file's operations in issue order (the engine's
//!   contract), so writes overlap with receiving and hashing; threads come from a pool and
//!   are reused;
//! - one thread makes spare unnamed files ahead of need, one writes the small files' bytes
//!   handed to it and hashes small files as they are written (`haul_driver::spares`,
//!   `haul_driver::digests`);
//! - a few threads for whole-file operations (state file writes, copies);
//! - one durability thread that makes commits durable in rounds (a file's data before its
//!   rename, the rename after it; one `syncfs` for a round of 8 or more on Linux).
//!
//! Shared with the async runtimes (`haul-driver`): the engine host, connection setup
//! (proxy `CONNECT` and rustls TLS as one sans-IO transform) and the file executor.

#![forbid(unsafe_code)]

pub mod files;
pub mod modules;
mod net;

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use haul_core::engine::Stats;
use haul_core::{
    CancelMode, Config, ConfigError, Download, DownloadError, Event, IoId, IoRequest, IoResult,
    JobId, Outcome,
};
use haul_driver::{Completions, Host, Threads};

pub use haul_core;

/// Messages into the driver loop from other threads.
pub(crate) enum Msg {
    /// The completion of an I/O request.
    Done(IoId, IoResult),
    /// A connection's setup ended: the `Connect` request's id and the connection, or why not.
    Established(
        haul_core::ConnId,
        IoId,
        Box<Result<haul_driver::Established, haul_core::IoFailure>>,
    ),
    /// Cancel every running job of the call, keeping partials for resume or not.
    CancelAll(CancelMode),
    /// Pause, resume or cancel one job of a running call.
    Job(JobId, JobCommand),
    /// A rate schedule was set while a call ran: take it from [`Driver::schedule`].
    RateSchedule,
    /// Downloads of a call made from another thread while this one drives the engine (see
    /// [`Guest`]): submitted by whichever call drives next, the ids and then the events
    /// sent to `to`; with `stopped` (see [`CancelHandle::stop_all`]), each cancelled that
    /// way at once.
    Submit {
        downloads: Vec<Download>,
        stopped: Option<CancelMode>,
        to: Sender<Guest>,
    },
}

/// What a call waiting on another thread's call (a guest) hears from the call that drives
/// the engine.
///
/// One thread at a time drives the engine; a call made while another one runs sends its
/// downloads to it ([`Msg::Submit`]) and waits for their events on a channel of its own,
/// running its callback on its own thread, so calls from several threads run at once. When
/// the driving call has its own results, it returns and hands the engine to a guest whose
/// jobs are still running ([`Guest::Drive`]), which then drives until its own are done.
pub(crate) enum Guest {
    /// The jobs of the guest's downloads, in its order.
    Submitted(Vec<JobId>),
    /// An event of one of them.
    Event(Event),
    /// The driving call returned: take the engine.
    Drive,
}

/// What [`CancelHandle`] asks of one job.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobCommand {
    Pause,
    Resume,
    Cancel(CancelMode),
}

/// What the driver loop does after taking the messages of one turn.
enum Control {
    CancelAll(CancelMode),
    Job(JobId, JobCommand),
}

/// Messages into the driver's channel, waking the driver if it sleeps in its poller.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: Sender<Msg>,
    wake: Arc<net::Wake>,
}

impl Sink {
    pub(crate) fn send(&self, m: Msg) {
        if self.tx.send(m).is_ok() {
            self.wake.wake();
        }
    }
}

impl Completions for Sink {
    fn complete(&self, id: IoId, result: IoResult) {
        self.send(Msg::Done(id, result));
    }
}

/// Wakes the running [`Client`] calls, from another thread or from an event callback, to
/// cancel their jobs, or to pause, resume or cancel one of them by the [`JobId`] its events
/// carry.
///
/// Commands take effect at the driver loop's next turn (events already on their way to a
/// callback still arrive). A command for a job that is not one of a running call's, or that
/// has already finished, is ignored, and so is every command sent while no call runs: a
/// handle cannot reach into a later call, whose job ids it has not seen. The exception is
/// [`CancelHandle::stop_all`], which also cancels every later call.
#[derive(Clone)]
pub struct CancelHandle {
    sink: Sink,
    /// Set by [`CancelHandle::stop_all`]: every call from then on is cancelled this way.
    stopped: Arc<Mutex<Option<CancelMode>>>,
}

impl CancelHandle {
    /// Cancel every job of the running calls and remove their partial downloads and state
    /// ([`CancelHandle::cancel_with`] keeps them for a later resume).
    pub fn cancel(&self) {
        self.cancel_with(CancelMode::Discard);
    }

    /// Cancel every job of the running calls, keeping partial downloads
    /// ([`CancelMode::KeepPartial`]) or removing them and their state ([`CancelMode::Discard`]).
    pub fn cancel_with(&self, mode: CancelMode) {
        self.sink.send(Msg::CancelAll(mode));
    }

    /// Cancel the running calls as [`CancelHandle::cancel_with`] does, and every later call
    /// of the client: their jobs are cancelled as soon as they are submitted, and end
    /// [`DownloadError::Cancelled`]. For a process that is shutting down (on a signal), which cannot know
    /// whether the call it means has started yet, or which calls are still to come: a cancel
    /// of the running call alone is lost if it comes just before a call starts.
    pub fn stop_all(&self, mode: CancelMode) {
        // The flag first: a call that starts after the message was sent (and drains it
        // unread) finds the flag; one that starts before gets the message.
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
        self.sink.send(Msg::CancelAll(mode));
    }

    /// Whether [`CancelHandle::stop_all`] has been called, and how.
    fn stopped(&self) -> Option<CancelMode> {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pause one job of a running call: its connections close, its partial stays, and it
    /// holds no slot (the call's other jobs go on) until [`CancelHandle::resume`], which
    /// continues from the bytes already received. A paused job keeps its call from returning
    /// until it is resumed or cancelled.
    pub fn pause(&self, job: JobId) {
        self.sink.send(Msg::Job(job, JobCommand::Pause));
    }

    /// Resume a job of a running call paused by [`CancelHandle::pause`]: it goes on at the
    /// next free slot (at once if one is free), before the queued jobs of its priority.
    pub fn resume(&self, job: JobId) {
        self.sink.send(Msg::Job(job, JobCommand::Resume));
    }

    /// Cancel one job of a running call, keeping its partial download
    /// ([`CancelMode::KeepPartial`]) or removing it and its state ([`CancelMode::Discard`]);
    /// it finishes with [`DownloadError::Cancelled`] and the call's other jobs go on.
    pub fn cancel_job(&self, job: JobId, mode: CancelMode) {
        self.sink.send(Msg::Job(job, JobCommand::Cancel(mode)));
    }
}

/// Executes I/O requests on threads; completions arrive on the driver's channel.
pub(crate) struct Runtime {
    net: net::Net,
    files: haul_driver::Files<Sink, Threads>,
}

impl Runtime {
    fn start(&mut self, req: IoRequest) {
        use haul_core::IoOp::*;
        match req.op {
            Connect { .. } | Send { .. } | Recv { .. } | Close { .. } => self.net.start(req),
            _ => self.files.start(req),
        }
    }
}

/// Downloads handed to the engine per turn of the driver's loop after the first part (see
/// [`Driver::run`]).
const SUBMIT_PART: usize = 64;

/// The engine and its runtime, driven on the caller's thread.
struct Driver {
    host: Host,
    runtime: Runtime,
    rx: Receiver<Msg>,
    /// The engine's counters as of the last turn of the loop, for [`Client::stats`] (which
    /// must not wait for the running call, and may be asked from its callback).
    stats: Arc<Mutex<Stats>>,
    /// The latest rate schedule set while a call ran, with its order of setting, until the
    /// driver applies it (a [`Msg::RateSchedule`] says there is one): one set after a call's
    /// last turn must not be applied over a later one set after the call returned.
    schedule: ScheduleSlot,
    /// The order of setting of the schedule in force (0: none set).
    schedule_applied: u64,
    /// The unfinished jobs of calls waiting on other threads (see [`Guest`]), and where
    /// their events go.
    guests: std::collections::HashMap<JobId, Sender<Guest>>,
    /// [`CancelHandle::stop_all`]'s flag.
    stopped: Arc<Mutex<Option<CancelMode>>>,
}

/// A rate schedule waiting for the driver: (order of setting, schedule, UTC offset).
type ScheduleSlot = Arc<Mutex<Option<(u64, haul_core::RateSchedule, i32)>>>;

impl Driver {
    /// Run `downloads` to completion, reporting events; results in submission order.
    /// With `stopped`, every job is cancelled that way as soon as it is submitted.
    fn run(
        &mut self,
        downloads: Vec<Download>,
        stopped: Option<CancelMode>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Vec<Result<Outcome, DownloadError>> {
        // Submitted in parts when that changes nothing but timing (see
        // `Engine::may_split_batch`): the first downloads start at once instead of after the
        // engine has taken every one of thousands; the rest follow one part per turn of the
        // loop.
        let total = downloads.len();
        let first = match haul_core::Engine::may_split_batch(&downloads) {
            true => self
                .host
                .config()
                .max_active_jobs
                .saturating_mul(2)
                .max(SUBMIT_PART),
            false => total,
        };
        self.host.reserve(total);
        let mut unsubmitted = downloads.into_iter();
        let mut order: Vec<JobId> = Vec::with_capacity(total);
        order.extend(
            self.host
                .submit_batch(unsubmitted.by_ref().take(first).collect()),
        );
        if let Some(mode) = stopped {
            // Stopped before the call: every job submitted and cancelled before the engine
            // has started anything.
            let ids = self.host.submit_batch(unsubmitted.by_ref().collect());
            order.extend(ids);
            for job in &order {
                self.host.cancel_with(*job, mode);
            }
        }
        self.drive(order, total, unsubmitted, BTreeMap::new(), on_event)
    }

    /// Drive the engine until the jobs of `order` (and the `total - order.len()` downloads
    /// of `unsubmitted` still to hand over) have ended, reporting their events; results in
    /// order. `results` has those that ended before.
    fn drive(
        &mut self,
        mut order: Vec<JobId>,
        total: usize,
        mut unsubmitted: std::vec::IntoIter<Download>,
        mut results: BTreeMap<JobId, Result<Outcome, DownloadError>>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Vec<Result<Outcome, DownloadError>> {
        // This call's jobs: events of others (a call that unwound left its jobs cancelled,
        // and they may still report) are not this caller's; those of guests go to them.
        let mut mine: std::collections::HashSet<JobId> = order.iter().copied().collect();
        let mut panicked = None;
        let mut unwinding = None;
        let mut total = total;
        loop {
            if order.len() < total {
                let part: Vec<Download> = unsubmitted.by_ref().take(SUBMIT_PART).collect();
                let ids = self.host.submit_batch(part);
                mine.extend(ids.iter().copied());
                order.extend(ids);
            }
            let runtime = &mut self.runtime;
            let guests = &mut self.guests;
            self.host.drain(
                |req| runtime.start(req),
                |ev| {
                    if let Some(job) = ev.job().filter(|job| !mine.contains(job)) {
                        return to_guest(guests, job, ev);
                    }
                    if panicked.is_none() && unwinding.is_none() {
                        let delivered =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                on_event(&ev)
                            }));
                        panicked = delivered.err();
                    }
                    if let Event::Finished { job, result } = ev {
                        results.insert(job, result);
                    }
                },
            );
            *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.host.stats();
            if let (Some(panic), None) = (panicked.take(), &unwinding) {
                // The caller's callback panicked: the call ends, and its jobs with it (those
                // not handed over yet are never submitted); once they have ended (cleaned up,
                // their destinations free) the panic goes on to the caller.
                unsubmitted.by_ref().for_each(drop);
                total = order.len();
                let running = order.iter().filter(|j| !results.contains_key(j));
                self.host
                    .cancel_all_with(running.copied(), CancelMode::KeepPartial);
                unwinding = Some(panic);
                continue;
            }
            self.runtime.files.flush();
            if results.len() == total && !self.runtime.net.has_done() {
                break;
            }
            // Sleep in the poller unless completions made on this thread wait; either way
            // serve the ready sockets, then take everything else that arrived.
            // Not while downloads wait to be handed over (nothing may be running to wake it).
            let mut timeout = match order.len() < total {
                true => Some(std::time::Duration::ZERO),
                false => self
                    .host
                    .deadline()
                    .map(|d| d.saturating_duration_since(std::time::Instant::now())),
            };
            // While the published rate is not yet zero, wake at least every second to let it
            // decay (with every job paused, nothing else would, until a resume).
            let rate = self
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .current_rate;
            if rate > 0.0 {
                let second = std::time::Duration::from_secs(1);
                timeout = Some(timeout.map_or(second, |t| t.min(second)));
            }
            let mut first = None;
            let rx = &self.rx;
            self.runtime.net.wait(timeout, || match rx.try_recv() {
                Ok(m) => {
                    first = Some(m);
                    true
                }
                Err(_) => false,
            });
            let mut controls = Vec::new();
            controls.extend(first.and_then(|m| self.handle(m)));
            while let Ok(m) = self.rx.try_recv() {
                controls.extend(self.handle(m));
            }
            // In the order sent: a pause then a cancel of every job leaves none paused.
            for control in controls {
                match control {
                    Control::CancelAll(mode) => {
                        // Every job of the call is cancelled, those not handed over yet too
                        // (the guests' were when the message was taken).
                        let ids = self.host.submit_batch(unsubmitted.by_ref().collect());
                        mine.extend(ids.iter().copied());
                        order.extend(ids);
                        let running = order.iter().filter(|j| !results.contains_key(j));
                        self.host.cancel_all_with(running.copied(), mode);
                    }
                    // Only the unfinished jobs of running calls: an id from an earlier call
                    // may name a job of that call still tidying up after it unwound, which
                    // is not the caller's to touch any more.
                    Control::Job(job, _)
                        if !self.guests.contains_key(&job)
                            && (!mine.contains(&job) || results.contains_key(&job)) =>
                    {
                        tracing::debug!(%job, "command for a job not running in a call ignored");
                    }
                    Control::Job(job, JobCommand::Pause) => self.host.pause(job),
                    Control::Job(job, JobCommand::Resume) => self.host.resume(job),
                    Control::Job(job, JobCommand::Cancel(mode)) => self.host.cancel_with(job, mode),
                }
            }
            self.feed_net();
            self.host.tick();
        }
        if let Some(panic) = unwinding {
            std::panic::resume_unwind(panic);
        }
        order
            .into_iter()
            .map(|id| results.remove(&id).expect("every job finished"))
            .collect()
    }

    /// A guest whose jobs still run, to drive next once the driving call has let go of the
    /// engine (the others go on waiting as guests).
    fn next_driver(&self) -> Option<Sender<Guest>> {
        self.guests.values().next().cloned()
    }

    /// Cancel every guest's unfinished jobs.
    fn cancel_guests(&mut self, mode: CancelMode) {
        let jobs: Vec<JobId> = self.guests.keys().copied().collect();
        self.host.cancel_all_with(jobs, mode);
    }

    /// Submit a guest's downloads (see [`Guest`]).
    fn submit_for_guest(
        &mut self,
        downloads: Vec<Download>,
        stopped: Option<CancelMode>,
        to: Sender<Guest>,
    ) {
        let unnamed_max = self.host.config().unnamed_max;
        for (dir, count) in haul_driver::spares::expected_unnamed(&downloads, unnamed_max) {
            self.runtime.files.expect_unnamed(&dir, count);
        }
        // `stop_all` may have come between the guest's reading of the flag and its message;
        // it set the flag before sending its cancel, so one of them reaches the guest.
        let stopped = stopped.or(*self.stopped.lock().unwrap_or_else(|e| e.into_inner()));
        let ids = self.host.submit_batch(downloads);
        for job in &ids {
            self.guests.insert(*job, to.clone());
            if let Some(mode) = stopped {
                self.host.cancel_with(*job, mode);
            }
        }
        // A guest that is gone (its thread unwound) leaves its jobs to end unheard.
        let _ = to.send(Guest::Submitted(ids));
    }

    /// Applies the rate schedule set while a call ran, unless a later one is in force.
    fn take_schedule(&mut self) {
        let pending = self
            .schedule
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((seq, rates, offset)) = pending {
            self.apply_schedule(seq, rates, offset);
        }
    }

    /// Puts in force the schedule set `seq`-th (see `Client::schedule_seq`), unless a later
    /// one already is.
    fn apply_schedule(&mut self, seq: u64, rates: haul_core::RateSchedule, offset: i32) {
        if seq > self.schedule_applied {
            self.schedule_applied = seq;
            self.host.set_rate_schedule(rates, offset);
        }
    }

    /// Completions the sockets made on this thread, to the engine.
    fn feed_net(&mut self) {
        for (id, result) in self.runtime.net.take_done() {
            self.host.complete(id, result);
        }
    }

    /// Takes one message; what to do to the call's jobs, if it asks for something.
    fn handle(&mut self, m: Msg) -> Option<Control> {
        match m {
            Msg::Done(id, result) => self.host.complete(id, result),
            Msg::Established(conn, id, result) => {
                self.runtime.net.on_established(conn, id, *result)
            }
            Msg::CancelAll(mode) => {
                // The guests' jobs now, in the order of the messages: a guest whose downloads
                // come after the cancel was not running when it was sent.
                self.cancel_guests(mode);
                return Some(Control::CancelAll(mode));
            }
            Msg::Job(job, command) => return Some(Control::Job(job, command)),
            Msg::RateSchedule => self.take_schedule(),
            Msg::Submit {
                downloads,
                stopped,
                to,
            } => self.submit_for_guest(downloads, stopped, to),
        }
        None
    }

    /// Take the messages that arrived while no call drove the engine. Commands for jobs
    /// apply to guests' jobs only: a cancel sent while no call ran must not cancel the call
    /// that starts now (unless it came from `stop_all`, which the call reads after this).
    fn take_waiting_messages(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            match self.handle(m) {
                // The guests' jobs are cancelled by `handle`.
                Some(Control::CancelAll(_)) => {}
                Some(Control::Job(job, command)) if self.guests.contains_key(&job) => match command
                {
                    JobCommand::Pause => self.host.pause(job),
                    JobCommand::Resume => self.host.resume(job),
                    JobCommand::Cancel(mode) => self.host.cancel_with(job, mode),
                },
                Some(Control::Job(..)) | None => {}
            }
        }
        self.feed_net();
    }
}

/// Send a guest's event to it (see [`Guest`]); its job is forgotten once finished. Events of
/// jobs of no running call are dropped.
fn to_guest(guests: &mut std::collections::HashMap<JobId, Sender<Guest>>, job: JobId, ev: Event) {
    let finished = matches!(ev, Event::Finished { .. });
    let Some(to) = guests.get(&job) else {
        return;
    };
    let _ = to.send(Guest::Event(ev));
    if finished {
        guests.remove(&job);
    }
}

/// Records the thread of a call for as long as it runs (see `Client::callers`).
struct CallerGuard<'a>(&'a Mutex<Vec<std::thread::ThreadId>>);

impl<'a> CallerGuard<'a> {
    fn enter(callers: &'a Mutex<Vec<std::thread::ThreadId>>) -> CallerGuard<'a> {
        let me = std::thread::current().id();
        callers.lock().unwrap_or_else(|e| e.into_inner()).push(me);
        CallerGuard(callers)
    }
}

impl Drop for CallerGuard<'_> {
    fn drop(&mut self) {
        let me = std::thread::current().id();
        let mut callers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = callers.iter().position(|t| *t == me) {
            callers.swap_remove(at);
        }
    }
}

/// A blocking download client. One client keeps its idle connections between calls, so
/// sequential downloads from one origin reuse a connection.
///
/// Calls from several threads run at once, sharing the engine (its limits on active
/// downloads and connections, its rate limit and priorities, its dedup): one call's thread
/// drives the engine, and the others hand their downloads to it and run their callbacks on
/// their own threads. The driving call's callback runs on the engine's thread: while it
/// works, no call's download moves, so keep callbacks short (hand slow work to another
/// thread). When the driving call returns, a call still running takes over. From
/// a call's own event callback, [`Client::stats`], [`Client::max_active_jobs`],
/// [`Client::set_rate_schedule`] and the [`CancelHandle`] work; a download started there
/// fails with [`DownloadError::InvalidRequest`] (it would wait for the call it runs in).
pub struct Client {
    driver: Mutex<Driver>,
    cancel: CancelHandle,
    stats: Arc<Mutex<Stats>>,
    /// The threads of the running calls: a call made from one's own event callback (on that
    /// thread) would wait for itself.
    callers: Mutex<Vec<std::thread::ThreadId>>,
    /// [`Config::max_active_jobs`], fixed at construction.
    max_active_jobs: usize,
    /// The driver's `Driver::schedule` slot.
    schedule: ScheduleSlot,
    /// How many rate schedules have been set: each one's order of setting.
    schedule_seq: std::sync::atomic::AtomicU64,
}

impl Client {
    /// A client with the given configuration (the jitter seed is drawn from the OS).
    pub fn new(config: Config) -> Result<Client, ConfigError> {
        let (tx, rx) = mpsc::channel();
        let tls = haul_driver::tls_setup(&config)?;
        // Creating an epoll instance fails only when the process is out of descriptors;
        // `new` reports that as the one error it has.
        let (poll, wake) = net::Net::poller().map_err(|e| ConfigError {
            field: "runtime",
            reason: format!("cannot create the socket poller: {e}"),
        })?;
        let sink = Sink {
            tx,
            wake: wake.clone(),
        };
        let runtime = Runtime {
            net: net::Net::new(sink.clone(), tls, &config, poll, wake),
            files: haul_driver::Files::new(sink.clone(), Threads::default())
                .inline_small_ops()
                .running_digests()
                .writes_behind(),
        };
        // The executor hashes small downloads as they are written, off this thread.
        let host = Host::new(Config {
            executor_digests: true,
            ..config
        })?;
        let stats = Arc::new(Mutex::new(Stats::default()));
        let max_active_jobs = host.config().max_active_jobs;
        let schedule = Arc::new(Mutex::new(None));
        let stopped = Arc::new(Mutex::new(None));
        Ok(Client {
            cancel: CancelHandle {
                sink,
                stopped: stopped.clone(),
            },
            callers: Mutex::new(Vec::new()),
            max_active_jobs,
            schedule: schedule.clone(),
            schedule_seq: std::sync::atomic::AtomicU64::new(0),
            driver: Mutex::new(Driver {
                host,
                runtime,
                rx,
                stats: stats.clone(),
                schedule,
                schedule_applied: 0,
                guests: Default::default(),
                stopped,
            }),
            stats,
        })
    }

    /// Limit the global rate by time of day, read on a local clock `utc_offset` seconds
    /// ahead of UTC (see [`haul_core::RateSchedule`]); replaces the configured fixed limit.
    /// While a call runs (asked from another thread, or from its event callback) it takes
    /// effect at the call's next turn, for the downloads under way too.
    pub fn set_rate_schedule(&self, rates: haul_core::RateSchedule, utc_offset: i32) {
        let seq = self
            .schedule_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mut driver = match self.driver.try_lock() {
            Ok(driver) => driver,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // A call runs: its loop takes it (or the next call's start, if it just ended).
            Err(std::sync::TryLockError::WouldBlock) => {
                let mut slot = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
                if slot.as_ref().is_none_or(|(waiting, ..)| *waiting < seq) {
                    *slot = Some((seq, rates, utc_offset));
                }
                drop(slot);
                return self.cancel.sink.send(Msg::RateSchedule);
            }
        };
        driver.apply_schedule(seq, rates, utc_offset);
        // One set meanwhile from another thread (later, if so) goes on top.
        driver.take_schedule();
    }

    /// The client's counters: downloads active, queued, done, failed and cancelled, body
    /// bytes received, and the current (last second), average and peak rates. While a call
    /// runs, as of its loop's last turn (so they may be asked from another thread, or from
    /// the event callback); between calls, as of now.
    pub fn stats(&self) -> Stats {
        match self.driver.try_lock() {
            // No call runs: the engine itself, as of now.
            Ok(driver) => driver.host.stats(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().host.stats(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        }
    }

    /// Jobs the engine runs at once (the rest of a call's downloads wait in its queue).
    pub fn max_active_jobs(&self) -> usize {
        self.max_active_jobs
    }

    /// A handle that cancels the running calls from another thread (e.g. on Ctrl-C), or
    /// pauses, resumes or cancels one of its jobs.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Download one file, verified and committed atomically. `on_event` sees every event.
    pub fn download(
        &self,
        download: Download,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Outcome, DownloadError> {
        self.download_many(vec![download], &mut on_event)
            .pop()
            .expect("one result per download")
    }

    /// Download several files at once; results in the order given.
    pub fn download_many(
        &self,
        downloads: Vec<Download>,
        mut on_event: impl FnMut(&Event),
    ) -> Vec<Result<Outcome, DownloadError>> {
        let me = std::thread::current().id();
        if self
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&me)
        {
            // From a running call's own event callback: waiting for the call would wait
            // for ever.
            return downloads
                .iter()
                .map(|_| {
                    Err(DownloadError::InvalidRequest(
                        "a download started from the client's own event callback, \
                         inside a call of the same client: start it after the call \
                         returns, or on another client"
                            .into(),
                    ))
                })
                .collect();
        }
        let _caller = CallerGuard::enter(&self.callers);
        let mut driver = match self.driver.try_lock() {
            Ok(driver) => driver,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Another thread's call drives the engine: run as its guest.
            Err(std::sync::TryLockError::WouldBlock) => {
                return self.download_as_guest(downloads, &mut on_event);
            }
        };
        driver.take_waiting_messages();
        let unnamed_max = driver.host.config().unnamed_max;
        for (dir, count) in haul_driver::spares::expected_unnamed(&downloads, unnamed_max) {
            driver.runtime.files.expect_unnamed(&dir, count);
        }
        let stopped = self.cancel.stopped();
        let results = driver.run(downloads, stopped, &mut on_event);
        let next = driver.next_driver();
        drop(driver);
        hand_over_engine(next);
        results
    }

    /// [`Client::download_many`] while another thread's call drives the engine: the
    /// downloads go to it, and their events come back to this thread (see [`Guest`]); if
    /// that call returns first, this one drives.
    fn download_as_guest(
        &self,
        downloads: Vec<Download>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Vec<Result<Outcome, DownloadError>> {
        let total = downloads.len();
        let (to, from_driver) = mpsc::channel();
        self.cancel.sink.send(Msg::Submit {
            downloads,
            stopped: self.cancel.stopped(),
            to,
        });
        let mut guest = GuestCall {
            order: None,
            results: BTreeMap::new(),
            panicked: None,
            sink: self.cancel.sink.clone(),
        };
        loop {
            if guest
                .order
                .as_ref()
                .is_some_and(|o| o.len() == guest.results.len())
            {
                return guest.finish();
            }
            let drive = match from_driver.recv_timeout(GUEST_POLL) {
                Ok(Guest::Drive) | Err(_) => true,
                Ok(message) => {
                    guest.take(message, on_event);
                    false
                }
            };
            if !drive {
                continue;
            }
            let mut driver = match self.driver.try_lock() {
                Ok(driver) => driver,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            // The driving call returned: this one drives until its own jobs are done. Its
            // downloads were submitted by now, at the latest among the waiting messages.
            driver.take_waiting_messages();
            while let Ok(message) = from_driver.try_recv() {
                guest.take(message, on_event);
            }
            let order = guest
                .order
                .take()
                .expect("a guest's downloads are submitted");
            for job in &order {
                driver.guests.remove(job);
            }
            let panicked = guest.panicked.is_some();
            let mut deliver = |ev: &Event| {
                if !panicked {
                    on_event(ev)
                }
            };
            let results = std::mem::take(&mut guest.results);
            let results = driver.drive(order, total, Vec::new().into_iter(), results, &mut deliver);
            let next = driver.next_driver();
            drop(driver);
            hand_over_engine(next);
            if let Some(panic) = guest.panicked {
                std::panic::resume_unwind(panic);
            }
            return results;
        }
    }
}

/// Tell a guest whose jobs still run to drive, once the engine is free (see [`Guest`]).
fn hand_over_engine(next: Option<Sender<Guest>>) {
    if let Some(guest) = next {
        let _ = guest.send(Guest::Drive);
    }
}

/// How long a guest call waits for a message before it looks whether the engine is free
/// (the driving call tells it when it returns; this is the backstop).
const GUEST_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A call running as a guest of another thread's (see [`Guest`]).
struct GuestCall {
    /// Its jobs, once submitted.
    order: Option<Vec<JobId>>,
    results: BTreeMap<JobId, Result<Outcome, DownloadError>>,
    /// The callback panicked: its jobs are cancelled, and once they end the panic goes on.
    panicked: Option<Box<dyn std::any::Any + Send>>,
    sink: Sink,
}

impl GuestCall {
    /// Take a message from the driving call.
    fn take(&mut self, message: Guest, on_event: &mut dyn FnMut(&Event)) {
        match message {
            Guest::Submitted(ids) => {
                self.order = Some(ids);
                if self.panicked.is_some() {
                    self.cancel_unfinished();
                }
            }
            Guest::Event(ev) => {
                if self.panicked.is_none() {
                    let delivered =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_event(&ev)));
                    if let Err(panic) = delivered {
                        self.panicked = Some(panic);
                        self.cancel_unfinished();
                    }
                }
                if let Event::Finished { job, result } = ev {
                    self.results.insert(job, result);
                }
            }
            Guest::Drive => {}
        }
    }

    /// Cancel the jobs not finished yet (the callback panicked).
    fn cancel_unfinished(&self) {
        for job in self.order.iter().flatten() {
            if !self.results.contains_key(job) {
                let cancel = JobCommand::Cancel(CancelMode::Discard);
                self.sink.send(Msg::Job(*job, cancel));
            }
        }
    }

    /// The results in order, once all are in (or the callback's panic, once its jobs ended).
    fn finish(mut self) -> Vec<Result<Outcome, DownloadError>> {
        if let Some(panic) = self.panicked.take() {
            std::panic::resume_unwind(panic);
        }
        let order = self.order.take().unwrap_or_default();
        order
            .into_iter()
            .map(|id| self.results.remove(&id).expect("every job finished"))
            .collect()
    }
}
