//! The engine host: the engine, the wall clock it is driven by, and the one place where the
//! engine's outputs are drained.
//!
//! Owns: converting wall time to engine time and back, seeding jitter from the OS, draining
//! [`Engine::poll_output`] after every mutation (I/O requests to the runtime, events to the
//! application), and the "apply a batch of completions, then one tick" rule every driver
//! follows. Does not own: waiting (a blocking driver waits on a channel, an async one on a
//! future) nor executing I/O.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use haul_core::{
    CancelMode, Config, ConfigError, Download, Engine, Event, Input, IoId, IoRequest, IoResult,
    JobId, Output,
};

/// The engine plus its clock. Every runtime's driver loop is: [`Host::drain`], wait for a
/// completion or [`Host::deadline`], [`Host::complete`] each completion that arrived,
/// [`Host::tick`], repeat.
pub struct Host {
    engine: Engine,
    epoch: std::time::Instant,
}

impl Host {
    /// A host with `config`; the jitter seed is drawn from the OS.
    pub fn new(mut config: Config) -> Result<Host, ConfigError> {
        config.seed = os_seed();
        let engine = Engine::new(config, haul_core::Instant::ZERO)?;
        Ok(Host {
            engine,
            epoch: std::time::Instant::now(),
        })
    }

    /// The engine's configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The current engine time.
    pub fn now(&self) -> haul_core::Instant {
        haul_core::Instant::from_duration(self.epoch.elapsed())
    }

    /// Queue several jobs together (priorities order them; `after_index` refers within).
    pub fn submit_batch(&mut self, downloads: Vec<Download>) -> Vec<JobId> {
        let now = self.now();
        self.engine.submit_batch(now, downloads)
    }

    /// Start a job.
    pub fn submit(&mut self, download: Download) -> JobId {
        let now = self.now();
        self.engine.submit(now, download)
    }

    /// Cancel a job, keeping its partial file and state for a later resume.
    pub fn cancel(&mut self, job: JobId) {
        let now = self.now();
        self.engine.cancel(now, job, CancelMode::KeepPartial);
    }

    /// Drain every pending output: I/O requests go to `start`, events to `on_event`.
    pub fn drain(&mut self, mut start: impl FnMut(IoRequest), mut on_event: impl FnMut(Event)) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Io(req) => start(req),
                Output::Event(ev) => on_event(ev),
            }
        }
    }

    /// Feed one I/O completion.
    pub fn complete(&mut self, id: IoId, result: IoResult) {
        let now = self.now();
        self.engine.handle_input(now, Input::Io { id, result });
    }

    /// Let the engine check its deadlines (after a batch of completions, or when
    /// [`Host::deadline`] passed).
    pub fn tick(&mut self) {
        let now = self.now();
        self.engine.handle_input(now, Input::Tick);
    }

    /// The wall-clock instant at which the engine wants a [`Host::tick`] even if no I/O
    /// completes; `None` when only I/O can wake it.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.engine
            .poll_timeout()
            .map(|at| self.epoch + at.since_epoch())
    }
}

/// The job an event is about (`None` for events about an origin, such as a circuit
/// breaker opening).
pub fn event_job(ev: &Event) -> Option<JobId> {
    ev.job()
}

/// A seed for jitter that differs between processes and clients.
fn os_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitting_a_download_asks_for_io_and_reports_start() {
        let mut host = Host::new(Config::default()).unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let job = host.submit(Download::new("http://127.0.0.1:9/x", dir.path().join("x")).unwrap());
        let mut ios = Vec::new();
        let mut events = Vec::new();
        host.drain(|r| ios.push(r), |e| events.push(e));
        assert!(!ios.is_empty(), "a new job needs I/O");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Started { job: j, .. } if *j == job)),
            "{events:?}"
        );
    }
}
