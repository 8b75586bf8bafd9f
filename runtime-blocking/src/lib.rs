//! haul-blocking: haul on plain threads, std::net sockets and std::fs files.
//!
//! Owns: executing the core engine's [`IoRequest`]s with blocking calls on threads, and the
//! [`Client`] whose `download` blocks until the job ends, reporting [`Event`]s to a callback.
//! Does not own: any decision (retries, resume, verification: all in `haul-core`).
//!
//! Threads:
//! - the caller's thread drives the engine (hashing happens there, inside the engine);
//! - one thread per connection connects and then reads **one buffer ahead**: while the engine
//!   hashes buffer *n*, the socket thread is already receiving buffer *n+1*;
//! - one thread per open file executes that file's operations in issue order (the engine's
//!   contract), so writes overlap with receiving and hashing;
//! - one thread for small whole-file operations (state files, renames, removals).
//!
//! Requests are written from the driver thread (a request head always fits in the socket
//! buffer; a write timeout guards the pathological case).

#![forbid(unsafe_code)]

pub mod files;
pub mod modules;
mod net;

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use haul_core::{
    CancelMode, Config, ConfigError, Download, DownloadError, Engine, Event, Input, IoId,
    IoRequest, IoResult, JobId, Outcome, Output,
};

pub use haul_core;

/// Messages into the driver loop.
pub(crate) enum Msg {
    /// The completion of an I/O request.
    Done(IoId, IoResult),
    /// Cancel every running job (keeping partials for resume).
    CancelAll,
}

/// Wakes a running [`Client`] call from another thread to cancel its jobs.
#[derive(Clone)]
pub struct CancelHandle {
    tx: Sender<Msg>,
}

impl CancelHandle {
    /// Cancel every job of the running call; partial downloads are kept for resume.
    pub fn cancel(&self) {
        let _ = self.tx.send(Msg::CancelAll);
    }
}

/// Executes I/O requests on threads; completions arrive on the driver's channel.
pub(crate) struct Runtime {
    net: net::Net,
    files: files::Files,
}

impl Runtime {
    fn new(tx: Sender<Msg>, config: &Config) -> Runtime {
        Runtime {
            net: net::Net::new(tx.clone(), config),
            files: files::Files::new(tx),
        }
    }

    fn start(&mut self, req: IoRequest) {
        use haul_core::IoOp::*;
        match req.op {
            Connect { .. } | Send { .. } | Recv { .. } | Close { .. } => self.net.start(req),
            _ => self.files.start(req),
        }
    }
}

/// The engine and its runtime, driven on the caller's thread.
struct Driver {
    engine: Engine,
    runtime: Runtime,
    rx: Receiver<Msg>,
    epoch: std::time::Instant,
}

impl Driver {
    fn now(&self) -> haul_core::Instant {
        haul_core::Instant::from_duration(self.epoch.elapsed())
    }

    /// Run `downloads` to completion, reporting events; results in submission order.
    fn run(
        &mut self,
        downloads: Vec<Download>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Vec<Result<Outcome, DownloadError>> {
        let mut order: Vec<JobId> = Vec::with_capacity(downloads.len());
        let mut results: BTreeMap<JobId, Result<Outcome, DownloadError>> = BTreeMap::new();
        for d in downloads {
            let now = self.now();
            order.push(self.engine.submit(now, d));
        }
        loop {
            while let Some(out) = self.engine.poll_output() {
                match out {
                    Output::Io(req) => self.runtime.start(req),
                    Output::Event(ev) => {
                        on_event(&ev);
                        if let Event::Finished { job, result } = ev {
                            results.insert(job, result);
                        }
                    }
                }
            }
            if results.len() == order.len() {
                break;
            }
            let msg = match self.engine.poll_timeout() {
                Some(deadline) => {
                    let wait = deadline.saturating_since(self.now());
                    match self.rx.recv_timeout(wait) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            unreachable!("driver holds a sender")
                        }
                    }
                }
                None => Some(self.rx.recv().expect("driver holds a sender")),
            };
            let now = self.now();
            match msg {
                None => self.engine.handle_input(now, Input::Tick),
                Some(m) => {
                    self.handle(now, m, &order, &results);
                    // Batch whatever else completed meanwhile before polling outputs.
                    while let Ok(m) = self.rx.try_recv() {
                        self.handle(now, m, &order, &results);
                    }
                    self.engine.handle_input(now, Input::Tick);
                }
            }
        }
        order
            .into_iter()
            .map(|id| results.remove(&id).expect("every job finished"))
            .collect()
    }

    fn handle(
        &mut self,
        now: haul_core::Instant,
        m: Msg,
        order: &[JobId],
        results: &BTreeMap<JobId, Result<Outcome, DownloadError>>,
    ) {
        match m {
            Msg::Done(id, result) => self.engine.handle_input(now, Input::Io { id, result }),
            Msg::CancelAll => {
                for job in order.iter().filter(|j| !results.contains_key(j)) {
                    self.engine.cancel(now, *job, CancelMode::KeepPartial);
                }
            }
        }
    }
}

/// A blocking download client. One client keeps its idle connections between calls, so
/// sequential downloads from one origin reuse a connection.
pub struct Client {
    driver: Mutex<Driver>,
    cancel: CancelHandle,
}

impl Client {
    /// A client with the given configuration (the jitter seed is drawn from the OS).
    pub fn new(mut config: Config) -> Result<Client, ConfigError> {
        config.seed = os_seed();
        let (tx, rx) = mpsc::channel();
        let runtime = Runtime::new(tx.clone(), &config);
        let engine = Engine::new(config, haul_core::Instant::ZERO)?;
        Ok(Client {
            cancel: CancelHandle { tx: tx.clone() },
            driver: Mutex::new(Driver {
                engine,
                runtime,
                rx,
                epoch: std::time::Instant::now(),
            }),
        })
    }

    /// A handle that cancels the running call from another thread (e.g. on Ctrl-C).
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
        let mut driver = self.driver.lock().unwrap_or_else(|e| e.into_inner());
        // A cancel sent while no call was running must not cancel this one; completions
        // that arrived between calls (closing idle connections) still go to the engine.
        while let Ok(m) = driver.rx.try_recv() {
            if let Msg::Done(id, result) = m {
                let now = driver.now();
                driver.engine.handle_input(now, Input::Io { id, result });
            }
        }
        driver.run(downloads, &mut on_event)
    }
}

fn os_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Longest a request write may block (a request head always fits the socket buffer).
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(30);
