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
    CancelMode, Config, ConfigError, Destination, Download, DownloadError, Engine, Event, Input,
    IoErrorKind, IoFailure, IoId, IoRequest, IoResult, JobId, Output, RateSchedule,
};

/// Why `download` cannot be done, as far as the file system tells before anything is
/// fetched: its file destination is an existing directory, or a device, FIFO or socket. The
/// commit never replaces one of those, and found only then, the whole file was fetched for
/// nothing. A download marked [`Download::fresh`] is not looked at: its caller listed the
/// directory and found nothing of that name. Anything else (a missing directory, no
/// permission) is left to the download's own steps, which say it in their errors.
pub fn dest_refusal(download: &Download) -> Option<DownloadError> {
    if download.is_fresh() {
        return None;
    }
    let Destination::File(path) = download.destination() else {
        return None;
    };
    // A symbolic link is replaced itself, as the commit's rename does: not looked through.
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_file() || kind.is_symlink() {
        return None;
    } else {
        "not a regular file (a device, FIFO or socket)"
    };
    Some(DownloadError::LocalIo {
        path: path.clone(),
        failure: IoFailure::new(
            IoErrorKind::Other,
            format!("the destination is {what}; a download replaces only a file"),
        ),
    })
}

/// The engine plus its clock. Every runtime's driver loop is: [`Host::drain`], wait for a
/// completion or [`Host::deadline`], [`Host::complete`] each completion that arrived,
/// [`Host::tick`], repeat.
pub struct Host {
    engine: Engine,
    epoch: std::time::Instant,
    schedule: Option<Schedule>,
}

/// A time-of-day rate schedule and the local clock it is read on.
struct Schedule {
    rates: RateSchedule,
    /// Local time minus UTC, seconds.
    utc_offset: i32,
    /// When the schedule must be looked at again.
    next_check: std::time::Instant,
}

/// Seconds since local midnight now.
fn second_of_day(utc_offset: i32) -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (unix + utc_offset as i64).rem_euclid(86_400) as u32
}

impl Host {
    /// A host with `config`; the jitter seed is drawn from the OS.
    pub fn new(mut config: Config) -> Result<Host, ConfigError> {
        config.seed = os_seed();
        let engine = Engine::new(config, haul_core::Instant::ZERO)?;
        Ok(Host {
            engine,
            epoch: std::time::Instant::now(),
            schedule: None,
        })
    }

    /// Limit the global rate by time of day: `rates` is read on the local clock
    /// `utc_offset` seconds ahead of UTC, applied now and again whenever an entry starts.
    /// Replaces the configured fixed limit.
    pub fn set_rate_schedule(&mut self, rates: RateSchedule, utc_offset: i32) {
        self.schedule = Some(Schedule {
            rates,
            utc_offset,
            next_check: std::time::Instant::now(),
        });
        self.apply_schedule();
    }

    /// The engine's counters: jobs active, queued and ended, bytes and rates.
    pub fn stats(&self) -> haul_core::engine::Stats {
        self.engine.stats_at(self.now())
    }

    /// The global rate limit in force (None: unlimited).
    pub fn rate_limit(&self) -> Option<u64> {
        self.engine.rate_limit()
    }

    fn apply_schedule(&mut self) {
        let Some(s) = self.schedule.as_mut() else {
            return;
        };
        let wall = std::time::Instant::now();
        if wall < s.next_check {
            return;
        }
        let second = second_of_day(s.utc_offset);
        let rate = s.rates.rate_at(second);
        // Look again just after the next entry starts.
        let wait = s.rates.until_next_change(second) as u64;
        s.next_check = wall + std::time::Duration::from_millis(wait * 1000 + 50);
        if self.engine.rate_limit() != rate {
            tracing::info!(?rate, "rate schedule: new global limit");
            let now = self.now();
            self.engine.set_rate_limit(now, rate);
        }
    }

    /// The engine's configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The current engine time.
    pub fn now(&self) -> haul_core::Instant {
        haul_core::Instant::from_duration(self.epoch.elapsed())
    }

    /// Room for `additional` more jobs (see [`haul_core::Engine::reserve`]).
    pub fn reserve(&mut self, additional: usize) {
        self.engine.reserve(additional);
    }

    /// Queue several jobs together (priorities order them; `after_index` refers within).
    ///
    /// A download whose file destination is an existing directory, device, FIFO or socket
    /// is refused at once ([`dest_refusal`]).
    pub fn submit_batch(&mut self, downloads: Vec<Download>) -> Vec<JobId> {
        self.apply_schedule();
        let now = self.now();
        self.engine
            .submit_batch_checked(now, downloads, dest_refusal)
    }

    /// Start a job (refused at once as [`Host::submit_batch`] says).
    pub fn submit(&mut self, download: Download) -> JobId {
        self.submit_batch(vec![download])
            .pop()
            .expect("one id per download")
    }

    /// Cancel a job, keeping its partial file and state for a later resume.
    pub fn cancel(&mut self, job: JobId) {
        self.cancel_with(job, CancelMode::KeepPartial);
    }

    /// Cancel a job: its partial file and state are kept or removed as `mode` says.
    pub fn cancel_with(&mut self, job: JobId, mode: CancelMode) {
        let now = self.now();
        self.engine.cancel(now, job, mode);
    }

    /// Cancel several jobs, the latest submitted first: a job depends only on earlier ones,
    /// so each dependant is cancelled before its dependency, and ends `Cancelled` rather than
    /// failed for a cancelled dependency.
    pub fn cancel_all_with(&mut self, jobs: impl IntoIterator<Item = JobId>, mode: CancelMode) {
        let mut jobs: Vec<JobId> = jobs.into_iter().collect();
        jobs.sort_unstable_by(|a, b| b.cmp(a));
        for job in jobs {
            self.cancel_with(job, mode);
        }
    }

    /// Pause a job (see [`Engine::pause`]).
    pub fn pause(&mut self, job: JobId) {
        let now = self.now();
        self.engine.pause(now, job);
    }

    /// Resume a paused job (see [`Engine::resume`]).
    pub fn resume(&mut self, job: JobId) {
        let now = self.now();
        self.engine.resume(now, job);
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
        self.apply_schedule();
        let now = self.now();
        self.engine.handle_input(now, Input::Tick);
    }

    /// The wall-clock instant at which the engine wants a [`Host::tick`] even if no I/O
    /// completes; `None` when only I/O can wake it.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        let engine = self
            .engine
            .poll_timeout()
            .map(|at| self.epoch + at.since_epoch());
        // A schedule wakes the driver when its next entry starts, but only while there is
        // work: an idle client need not wake up for it.
        let schedule = self
            .schedule
            .as_ref()
            .filter(|_| !self.engine.is_idle())
            .map(|s| s.next_check);
        match (engine, schedule) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
    fn a_destination_is_refused_at_submission_only_when_it_is_a_directory_or_special_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let at = |name: &str| {
            dest_refusal(&Download::new("http://127.0.0.1:9/x", dir.path().join(name)).unwrap())
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        // A link is replaced itself by the commit, wherever it points.
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("link")).unwrap();
        assert!(matches!(at("sub"), Some(DownloadError::LocalIo { .. })));
        assert!(at("file").is_none());
        assert!(at("link").is_none());
        assert!(at("absent").is_none());
        let fresh = Download::new("http://127.0.0.1:9/x", dir.path().join("sub"))
            .unwrap()
            .fresh();
        assert!(
            dest_refusal(&fresh).is_none(),
            "a fresh download is not looked at"
        );
    }

    #[test]
    fn a_rate_schedule_sets_the_limit_of_the_current_time_of_day() {
        let mut host = Host::new(Config::default()).unwrap();
        assert_eq!(host.rate_limit(), None);
        let second = second_of_day(0);
        // One entry that started a minute ago (limited), one an hour from now (unlimited).
        let before = (second + 86_400 - 60) % 86_400;
        let later = (second + 3_600) % 86_400;
        let rates = RateSchedule::new(vec![(before, Some(1_000_000)), (later, None)]).unwrap();
        host.set_rate_schedule(rates, 0);
        assert_eq!(host.rate_limit(), Some(1_000_000));
        // The same schedule read on a clock three hours ahead is past the second entry.
        let mut ahead = Host::new(Config::default()).unwrap();
        let rates = RateSchedule::new(vec![(before, Some(1_000_000)), (later, None)]).unwrap();
        ahead.set_rate_schedule(rates, 3 * 3_600);
        assert_eq!(ahead.rate_limit(), None);
    }

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
