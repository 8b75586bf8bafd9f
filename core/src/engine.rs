//! The download engine: a deterministic state machine driven by inputs and time.
//!
//! # Call contract
//!
//! The engine never performs I/O and never reads a clock. A driver (a runtime or the
//! simulator) owns it and loops:
//!
//! 1. **Commands**: [`Engine::submit`] and [`Engine::cancel`] at any time.
//! 2. **Outputs**: after every command or input, drain [`Engine::poll_output`] until it returns
//!    `None`. Each [`Output::Io`] must be started; each [`Output::Event`] goes to the
//!    application.
//! 3. **Waiting**: [`Engine::poll_timeout`] gives the next instant at which the engine wants to
//!    be woken even if no I/O completes (`None`: only I/O can wake it). The driver waits for
//!    the first I/O completion or that instant.
//! 4. **Inputs**: [`Engine::handle_input`] with the current time and either one I/O
//!    completion ([`Input::Io`]) or [`Input::Tick`] when a deadline passed. Early or spurious
//!    ticks are harmless no-ops; so are completions for ids the engine no longer waits for.
//!
//! Every [`IoRequest`] gets exactly one completion from the driver. Operations on one
//! [`FileId`] must be executed and completed in the order they were issued (the engine relies
//! on this to issue `WriteAt`s, `Sync` and `CloseFile` back to back). Operations on different
//! files and connections may run concurrently and complete in any order.
//!
//! `now` must never decrease between calls; a smaller `now` is treated as the last one seen.
//!
//! # What a job does
//!
//! A job (one [`Download`]) goes through: load the state file beside the partial (if any) →
//! re-hash the durable prefix it names and check it against the recorded digest → request
//! (with `Range`/`If-Range` when resuming) → follow redirects → stream the body through the
//! SHA-256 hasher into `WriteAt`s on `<dest>.haul-part`, checkpointing (sync, then state file)
//! as it goes → verify size and hash → sync, close, rename over the destination. Retryable
//! failures back off (exponential, jittered) and resume from the bytes already hashed.
//!
//! What it does not do (yet): several connections per file, mirrors, breakers, priorities and
//! bandwidth limits belong to later layers of this module.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::download::{sanitize_file_name, Destination, Download, Outcome};
use crate::error::{DownloadError, TimeoutKind};
use crate::http::{
    self, BodyDecoder, ContentRange, Decoded, Framing, HeadParser, HttpError, Method, Origin,
    ResponseHead,
};
use crate::io::{ConnId, FileId, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult};
use crate::resume::{PartState, Validator, STATE_MAX_BYTES, STATE_VERSION};
use crate::rng::SeededRng;
use crate::time::Instant;

/// Identifies a submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// What the driver feeds the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The single completion of an I/O request.
    Io { id: IoId, result: IoResult },
    /// Time passed; check deadlines.
    Tick,
}

/// What the engine asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Start this I/O request.
    Io(IoRequest),
    /// Tell the application.
    Event(Event),
}

/// Something the application may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The job was accepted and starts now.
    Started { job: JobId, url: String },
    /// An earlier partial was found valid; the job continues after `offset` bytes.
    Resuming { job: JobId, offset: u64 },
    /// The server redirected.
    Redirected {
        job: JobId,
        status: u16,
        from: String,
        to: String,
    },
    /// A usable response arrived.
    Response {
        job: JobId,
        status: u16,
        /// Complete length of the representation, when known.
        total: Option<u64>,
        /// Bytes already on disk that this response continues.
        offset: u64,
    },
    /// Body bytes were received and hashed.
    Progress {
        job: JobId,
        /// Bytes of the file now present (resumed prefix included).
        bytes: u64,
        /// Complete length, when known.
        total: Option<u64>,
    },
    /// An attempt failed; another follows after `delay`.
    Retrying {
        job: JobId,
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        delay: Duration,
        error: DownloadError,
    },
    /// The job ended.
    Finished {
        job: JobId,
        result: Result<Outcome, DownloadError>,
    },
}

/// What cancelling does to the partial download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// Keep the partial file and its state so a later run resumes.
    KeepPartial,
    /// Remove the partial file and its state.
    Discard,
}

/// Where a completion belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Connect(ConnId),
    Send(ConnId),
    Recv(ConnId),
    Close(ConnId),
    File(JobId, FileStep),
}

/// The file operation a job waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStep {
    ReadState,
    OpenExisting,
    OpenFresh,
    Rehash,
    SetLen,
    Write { len: u64 },
    CheckpointSync { verified: u64 },
    CheckpointState,
    FinalSync,
    Close,
    Rename,
    RemovePart,
    RemoveState,
}

#[derive(Debug)]
enum ConnState {
    Connecting { job: JobId },
    Busy { job: JobId },
    Idle { since: Instant },
    Closing,
}

#[derive(Debug)]
struct Conn {
    origin: Origin,
    /// The proxy hop, when the connection goes through one.
    via: Option<crate::proxy::ProxyHop>,
    state: ConnState,
    /// Responses completed on this connection (> 0 means it is being reused).
    served: u32,
}

/// Where a job is in its life.
#[derive(Debug)]
enum Phase {
    /// Reading the state file.
    LoadingState,
    /// Opening an existing partial to check it.
    OpeningPartial { state: PartState },
    /// Re-hashing the durable prefix of the partial.
    Rehashing { state: PartState, offset: u64 },
    /// Waiting to start the next attempt.
    Backoff { until: Instant },
    /// Waiting for a connection.
    Connecting { conn: ConnId, deadline: Instant },
    /// Request being written.
    Sending { conn: ConnId, since: Instant },
    /// Waiting for / parsing the response head.
    Head {
        conn: ConnId,
        parser: HeadParser,
        deadline: Instant,
        got_bytes: bool,
        ranged: bool,
    },
    /// Streaming the body into the partial file.
    Body {
        conn: ConnId,
        decoder: BodyDecoder,
        keep_alive: bool,
        window_start: Instant,
        window_bytes: u64,
    },
    /// Reading and dropping a redirect's small body so the connection can be reused.
    Draining {
        conn: ConnId,
        decoder: BodyDecoder,
        next: url::Url,
    },
    /// Verified; syncing, closing and renaming.
    Committing { dest: PathBuf, digest: [u8; 32] },
    /// Failed or cancelled; cleaning up before reporting `error`.
    CleaningUp {
        error: DownloadError,
        keep: bool,
        /// The job ended while still loading an earlier partial, before changing it: with
        /// `keep`, the partial and its state stay exactly as they were.
        untouched: bool,
        step: CleanStep,
    },
    /// Finished and reported.
    Done,
}

/// Steps of tidying up after a failure, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CleanStep {
    Start,
    Checkpoint,
    Close,
    Remove,
    Report,
}

impl Phase {
    fn conn(&self) -> Option<ConnId> {
        match self {
            Phase::Connecting { conn, .. }
            | Phase::Sending { conn, .. }
            | Phase::Head { conn, .. }
            | Phase::Body { conn, .. }
            | Phase::Draining { conn, .. } => Some(*conn),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Job {
    id: JobId,
    spec: Download,
    submitted: Instant,
    phase: Phase,
    /// The URL currently requested (after redirects).
    url: url::Url,
    /// URLs visited in the current redirect chain.
    chain: Vec<url::Url>,
    attempt: u32,
    /// A stale reused connection was already replaced in this attempt.
    stale_retry_used: bool,

    file: Option<FileId>,
    /// Outstanding file operations of this job (all kinds).
    file_ops: u32,
    /// Bytes handed to `WriteAt` and not completed.
    write_backlog: u64,
    /// First local write failure; fatal once noticed.
    write_error: Option<(PathBuf, IoFailure)>,

    validator: Option<Validator>,
    total: Option<u64>,
    hasher: Sha256,
    /// Contiguous bytes hashed and handed to the file.
    hashed: u64,
    resumed_from: u64,
    fetched: u64,
    /// Durable resume point recorded in the state file.
    durable: u64,
    checkpoint_running: bool,
    /// Length and hex digest of the prefix a running checkpoint is making durable.
    pending_prefix: Option<(u64, String)>,
    last_checkpoint: Instant,
    /// File name chosen from `Content-Disposition` for a directory destination.
    dest_name: Option<String>,
    /// Recv is blocked by the write backlog.
    recv_paused: bool,
    recv_outstanding: bool,
    last_byte: Instant,
}

/// The engine. See the module documentation for the call contract.
pub struct Engine {
    config: Config,
    rng: SeededRng,
    now: Instant,
    next_id: u64,
    jobs: BTreeMap<JobId, Job>,
    conns: BTreeMap<ConnId, Conn>,
    pending: BTreeMap<IoId, Route>,
    outputs: VecDeque<Output>,
}

const REHASH_CHUNK: u64 = 1024 * 1024;
const DRAIN_LIMIT: u64 = 64 * 1024;

impl Engine {
    /// A new engine. `now` is the engine's current time (usually [`Instant::ZERO`]).
    pub fn new(config: Config, now: Instant) -> Result<Engine, crate::config::ConfigError> {
        config.validate()?;
        Ok(Engine {
            rng: SeededRng::new(config.seed),
            config,
            now,
            next_id: 1,
            jobs: BTreeMap::new(),
            conns: BTreeMap::new(),
            pending: BTreeMap::new(),
            outputs: VecDeque::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Jobs not yet finished.
    pub fn active_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// I/O requests issued and not yet completed.
    pub fn pending_io(&self) -> usize {
        self.pending.len()
    }

    /// True when no job runs and no I/O is pending.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty() && self.pending.is_empty()
    }

    fn next(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Submit a download; it starts at once.
    pub fn submit(&mut self, now: Instant, spec: Download) -> JobId {
        self.advance(now);
        let id = JobId(self.next());
        let job = Job {
            id,
            url: spec.url.clone(),
            spec,
            submitted: self.now,
            phase: Phase::LoadingState,
            chain: Vec::new(),
            attempt: 1,
            stale_retry_used: false,
            file: None,
            file_ops: 0,
            write_backlog: 0,
            write_error: None,
            validator: None,
            total: None,
            hasher: Sha256::new(),
            hashed: 0,
            resumed_from: 0,
            fetched: 0,
            durable: 0,
            checkpoint_running: false,
            pending_prefix: None,
            last_checkpoint: self.now,
            dest_name: None,
            recv_paused: false,
            recv_outstanding: false,
            last_byte: self.now,
        };
        let url = job.url.to_string();
        let state_path = job.spec.state_path();
        self.jobs.insert(id, job);
        self.event(Event::Started { job: id, url });
        self.file_io(
            id,
            FileStep::ReadState,
            IoOp::ReadFile {
                path: state_path,
                max_len: STATE_MAX_BYTES,
            },
        );
        id
    }

    /// Cancel a job. It finishes with [`DownloadError::Cancelled`] once its files are tidy.
    pub fn cancel(&mut self, now: Instant, job: JobId, mode: CancelMode) {
        self.advance(now);
        if self.jobs.contains_key(&job) {
            self.terminate(
                job,
                DownloadError::Cancelled,
                mode == CancelMode::KeepPartial,
            );
        }
    }

    /// The next output, or `None` when there is nothing more to do right now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant the engine must be woken at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let jobs = self
            .jobs
            .values()
            .filter_map(|j| self.job_deadline(j).map(|(t, _)| t));
        let idle = self.conns.values().filter_map(|c| match c.state {
            ConnState::Idle { since } => Some(since + self.config.idle_connection_timeout),
            _ => None,
        });
        jobs.chain(idle).min()
    }

    /// Feed one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.advance(now);
        match input {
            Input::Tick => self.handle_timers(),
            Input::Io { id, result } => match self.pending.remove(&id) {
                Some(route) => self.route(route, result),
                None => tracing::debug!(?id, "completion for an unknown request ignored"),
            },
        }
    }

    // ---------------------------------------------------------------- outputs

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    fn io(&mut self, route: Route, op: IoOp) -> IoId {
        let id = IoId(self.next());
        self.pending.insert(id, route);
        self.outputs.push_back(Output::Io(IoRequest { id, op }));
        id
    }

    fn file_io(&mut self, job: JobId, step: FileStep, op: IoOp) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.file_ops += 1;
        }
        self.io(Route::File(job, step), op);
    }

    // ---------------------------------------------------------------- timers

    fn job_deadline(&self, j: &Job) -> Option<(Instant, TimeoutKind)> {
        let idle = |j: &Job| j.last_byte + self.config.idle_timeout;
        match &j.phase {
            Phase::Backoff { until } => Some((*until, TimeoutKind::Connect)),
            Phase::Connecting { deadline, .. } => Some((*deadline, TimeoutKind::Connect)),
            Phase::Sending { since, .. } => {
                Some((*since + self.config.head_timeout, TimeoutKind::ResponseHead))
            }
            Phase::Head { deadline, .. } => {
                let i = idle(j);
                Some(if i < *deadline {
                    (i, TimeoutKind::Idle)
                } else {
                    (*deadline, TimeoutKind::ResponseHead)
                })
            }
            Phase::Body { window_start, .. } if j.recv_outstanding => {
                let i = (idle(j), TimeoutKind::Idle);
                Some(match self.config.low_speed {
                    Some(ls) if *window_start + ls.window < i.0 => {
                        (*window_start + ls.window, TimeoutKind::LowSpeed)
                    }
                    _ => i,
                })
            }
            Phase::Draining { .. } if j.recv_outstanding => Some((idle(j), TimeoutKind::Idle)),
            _ => None,
        }
    }

    fn handle_timers(&mut self) {
        let now = self.now;
        // Idle connections past their keep-alive time.
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Idle { since } if since + self.config.idle_connection_timeout <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for c in expired {
            self.close_conn(c);
        }
        let due: Vec<(JobId, TimeoutKind)> = self
            .jobs
            .values()
            .filter_map(|j| match self.job_deadline(j) {
                Some((t, kind)) if t <= now => Some((j.id, kind)),
                _ => None,
            })
            .collect();
        for (id, kind) in due {
            self.on_deadline(id, kind);
        }
    }

    fn on_deadline(&mut self, id: JobId, kind: TimeoutKind) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Phase::Backoff { .. } = j.phase {
            self.start_attempt(id);
            return;
        }
        if kind == TimeoutKind::LowSpeed {
            let now = self.now;
            let ls = self
                .config
                .low_speed
                .expect("low-speed deadline implies a limit");
            if let Phase::Body {
                window_start,
                window_bytes,
                ..
            } = &mut j.phase
            {
                let got = j.fetched - *window_bytes;
                let needed = (ls.bytes_per_sec as f64 * ls.window.as_secs_f64()) as u64;
                if got >= needed {
                    *window_start = now;
                    *window_bytes = j.fetched;
                    return;
                }
            }
        }
        let after = match kind {
            TimeoutKind::Connect => self.config.connect_timeout,
            TimeoutKind::ResponseHead => self.config.head_timeout,
            TimeoutKind::Idle => self.config.idle_timeout,
            TimeoutKind::LowSpeed => self.config.low_speed.map(|l| l.window).unwrap_or_default(),
        };
        let origin = origin_label(&j.url);
        self.fail_attempt(
            id,
            DownloadError::Timeout {
                kind,
                origin,
                after,
            },
        );
    }

    // ---------------------------------------------------------------- routing

    fn route(&mut self, route: Route, result: IoResult) {
        match route {
            Route::Connect(c) => self.on_connected(c, result),
            Route::Send(c) => self.on_sent(c, result),
            Route::Recv(c) => self.on_recv(c, result),
            Route::Close(c) => {
                self.conns.remove(&c);
            }
            Route::File(job, step) => self.on_file(job, step, result),
        }
    }

    fn conn_job(&self, c: ConnId) -> Option<JobId> {
        match self.conns.get(&c)?.state {
            ConnState::Connecting { job } | ConnState::Busy { job } => Some(job),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- state file and resume

    fn on_file(&mut self, id: JobId, step: FileStep, result: IoResult) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        j.file_ops = j.file_ops.saturating_sub(1);
        let part = j.spec.part_path();
        let failure = match &result {
            IoResult::Failed(f) => Some(f.clone()),
            _ => None,
        };
        match step {
            FileStep::ReadState | FileStep::OpenExisting
                if matches!(j.phase, Phase::CleaningUp { .. }) =>
            {
                // Cancelled while loading: tidy up instead of carrying on.
                self.cleanup_progress(id);
            }
            FileStep::ReadState => {
                let state = match &result {
                    IoResult::Data(b) => PartState::decode_for(b, j.spec.url.as_str()),
                    _ => None,
                };
                match state {
                    Some(state) if state.verified > 0 => {
                        let file = FileId(self.next());
                        let j = self.jobs.get_mut(&id).expect("job exists");
                        j.file = Some(file);
                        j.phase = Phase::OpeningPartial { state };
                        self.file_io(
                            id,
                            FileStep::OpenExisting,
                            IoOp::Open {
                                file,
                                path: part,
                                truncate: false,
                            },
                        );
                    }
                    _ => self.start_attempt(id),
                }
            }
            FileStep::OpenExisting => {
                let state = match std::mem::replace(&mut j.phase, Phase::LoadingState) {
                    Phase::OpeningPartial { state } => state,
                    other => {
                        j.phase = other;
                        return;
                    }
                };
                match result {
                    IoResult::Opened { len } if len >= state.verified => {
                        j.phase = Phase::Rehashing { state, offset: 0 };
                        self.rehash_next(id);
                    }
                    IoResult::Opened { .. } | IoResult::NotFound => {
                        // The partial is shorter than its state claims: start over.
                        self.restart_from_zero(id);
                        self.start_attempt(id);
                    }
                    _ => {
                        let f = failure.unwrap_or_else(|| unexpected(&result));
                        j.file = None;
                        self.terminate(
                            id,
                            DownloadError::LocalIo {
                                path: part,
                                failure: f,
                            },
                            false,
                        );
                    }
                }
            }
            FileStep::Rehash => {
                if matches!(j.phase, Phase::CleaningUp { .. }) {
                    return self.cleanup_progress(id);
                }
                let Phase::Rehashing { state, offset } = &mut j.phase else {
                    return;
                };
                match result {
                    IoResult::Data(b) if !b.is_empty() => {
                        let take = (state.verified - *offset).min(b.len() as u64) as usize;
                        j.hasher.update(&b[..take]);
                        *offset += take as u64;
                        if *offset < state.verified {
                            self.rehash_next(id);
                        } else {
                            self.finish_rehash(id);
                        }
                    }
                    IoResult::Data(_) => {
                        // The file ended early (changed under us): start over.
                        self.restart_from_zero(id);
                        self.start_attempt(id);
                    }
                    _ => {
                        let f = failure.unwrap_or_else(|| unexpected(&result));
                        self.terminate(
                            id,
                            DownloadError::LocalIo {
                                path: part,
                                failure: f,
                            },
                            false,
                        );
                    }
                }
            }
            FileStep::OpenFresh | FileStep::SetLen | FileStep::FinalSync => {
                if let Some(f) = failure {
                    j.write_error.get_or_insert((part, f));
                    self.on_write_error(id);
                } else {
                    self.cleanup_progress(id);
                }
            }
            FileStep::Write { len } => {
                j.write_backlog -= len;
                if let Some(f) = failure {
                    j.write_error.get_or_insert((part, f));
                    self.on_write_error(id);
                    return;
                }
                if j.recv_paused && j.write_backlog <= self.config.max_write_backlog / 2 {
                    j.recv_paused = false;
                    if let Some(conn) = j.phase.conn() {
                        self.recv(id, conn);
                    }
                }
                self.cleanup_progress(id);
            }
            FileStep::CheckpointSync { verified } => {
                if let Some(f) = failure {
                    j.checkpoint_running = false;
                    j.write_error.get_or_insert((part, f));
                    self.on_write_error(id);
                    return;
                }
                self.write_state(id, verified);
            }
            FileStep::CheckpointState => {
                j.checkpoint_running = false;
                if let Some(f) = failure {
                    tracing::warn!(job = %id, "state file not written: {f}");
                }
                if matches!(j.phase, Phase::Committing { .. }) && j.file.is_none() {
                    // The commit waited for this write (see `Close`): rename now.
                    return self.rename_into_place(id);
                }
                self.cleanup_progress(id);
            }
            FileStep::Close => {
                j.file = None;
                if let Phase::Committing { .. } = &j.phase {
                    if let Some((path, f)) = j.write_error.clone() {
                        self.fail_commit(id, path, f);
                        return;
                    }
                    // A state-file write still in flight would land after the commit
                    // removed the state file; its completion renames instead.
                    if !j.checkpoint_running {
                        self.rename_into_place(id);
                    }
                } else {
                    self.cleanup_progress(id);
                }
            }
            FileStep::Rename => {
                if let Some(f) = failure {
                    let dest = match &j.phase {
                        Phase::Committing { dest, .. } => dest.clone(),
                        _ => part,
                    };
                    self.fail_commit(id, dest, f);
                    return;
                }
                let state_path = j.spec.state_path();
                self.file_io(id, FileStep::RemoveState, IoOp::Remove { path: state_path });
            }
            FileStep::RemovePart | FileStep::RemoveState => {
                if let Phase::Committing { dest, digest } = &j.phase {
                    let outcome = Outcome {
                        path: dest.clone(),
                        size: j.hashed,
                        sha256: *digest,
                        resumed_from: j.resumed_from,
                        bytes_fetched: j.fetched,
                        attempts: j.attempt,
                        elapsed: self.now.saturating_since(j.submitted),
                        final_url: j.url.to_string(),
                    };
                    j.phase = Phase::Done;
                    self.jobs.remove(&id);
                    self.event(Event::Finished {
                        job: id,
                        result: Ok(outcome),
                    });
                } else {
                    self.cleanup_progress(id);
                }
            }
        }
    }

    /// The partial is synced and closed: rename it over the destination.
    fn rename_into_place(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Committing { dest, .. } = &j.phase else {
            return;
        };
        let op = IoOp::Rename {
            from: j.spec.part_path(),
            to: dest.clone(),
        };
        self.file_io(id, FileStep::Rename, op);
    }

    fn rehash_next(&mut self, id: JobId) {
        let j = self.jobs.get(&id).expect("job exists");
        let Phase::Rehashing { state, offset } = &j.phase else {
            return;
        };
        let len = (state.verified - offset).min(REHASH_CHUNK);
        let op = IoOp::ReadAt {
            file: j.file.expect("partial is open"),
            offset: *offset,
            len,
        };
        self.file_io(id, FileStep::Rehash, op);
    }

    fn finish_rehash(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Rehashing { state, .. } = std::mem::replace(&mut j.phase, Phase::LoadingState)
        else {
            return;
        };
        let digest: [u8; 32] = j.hasher.clone().finalize().into();
        if hex::encode(digest) != state.prefix_sha256 {
            tracing::info!(job = %id, "partial file does not match its state; starting over");
            self.restart_from_zero(id);
            self.start_attempt(id);
            return;
        }
        j.hashed = state.verified;
        j.durable = state.verified;
        j.resumed_from = state.verified;
        j.validator = Some(state.validator);
        j.total = state.total;
        let file = j.file.expect("partial is open");
        // Drop whatever follows the durable prefix: it was never vouched for.
        self.file_io(
            id,
            FileStep::SetLen,
            IoOp::SetLen {
                file,
                len: state.verified,
            },
        );
        self.event(Event::Resuming {
            job: id,
            offset: state.verified,
        });
        self.start_attempt(id);
    }

    /// Forget every byte: the next response starts the file from zero.
    fn restart_from_zero(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.hasher = Sha256::new();
        j.hashed = 0;
        j.durable = 0;
        j.resumed_from = 0;
        j.validator = None;
        j.total = None;
        j.pending_prefix = None;
        if let Some(file) = j.file {
            self.file_io(id, FileStep::SetLen, IoOp::SetLen { file, len: 0 });
        }
    }

    fn checkpoint_due(&self, j: &Job) -> bool {
        !j.checkpoint_running
            && j.validator.is_some()
            && j.file.is_some()
            && j.hashed > j.durable
            && (j.hashed - j.durable >= self.config.checkpoint_bytes
                || self.now.saturating_since(j.last_checkpoint) >= self.config.checkpoint_interval)
    }

    /// Sync the partial (ordered after every write issued so far), then record the prefix.
    fn start_checkpoint(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.checkpoint_running = true;
        j.last_checkpoint = self.now;
        let verified = j.hashed;
        let digest: [u8; 32] = j.hasher.clone().finalize().into();
        j.pending_prefix = Some((verified, hex::encode(digest)));
        let file = j.file.expect("checkpoint needs an open file");
        self.file_io(
            id,
            FileStep::CheckpointSync { verified },
            IoOp::Sync { file },
        );
    }

    fn write_state(&mut self, id: JobId, verified: u64) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if matches!(j.phase, Phase::Committing { .. }) {
            // The state file is about to be removed with the commit.
            j.checkpoint_running = false;
            return;
        }
        let Some(validator) = j.validator.clone() else {
            j.checkpoint_running = false;
            return;
        };
        // The digest of exactly `verified` bytes: the hasher may have moved on since the
        // sync was issued, so the digest is taken when the sync was requested.
        let Some(prefix_sha256) = j.pending_prefix.take().filter(|(v, _)| *v == verified) else {
            j.checkpoint_running = false;
            return;
        };
        let state = PartState {
            version: STATE_VERSION,
            url: j.spec.url.to_string(),
            validator,
            total: j.total,
            verified,
            prefix_sha256: prefix_sha256.1,
        };
        j.durable = verified;
        let path = j.spec.state_path();
        self.file_io(
            id,
            FileStep::CheckpointState,
            IoOp::WriteFileAtomic {
                path,
                data: Bytes::from(state.encode()),
            },
        );
    }
}

fn unexpected(result: &IoResult) -> IoFailure {
    IoFailure::new(
        IoErrorKind::Other,
        format!("unexpected completion {result:?}"),
    )
}

fn origin_label(url: &url::Url) -> String {
    Origin::of(url)
        .map(|o| o.to_string())
        .unwrap_or_else(|_| url.to_string())
}

// -------------------------------------------------------------------- attempts and HTTP

impl Engine {
    /// Start a fresh attempt at the URL the caller asked for.
    fn start_attempt(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if matches!(j.phase, Phase::CleaningUp { .. } | Phase::Done) {
            return;
        }
        j.url = j.spec.url.clone();
        j.chain.clear();
        j.stale_retry_used = false;
        self.request(id, true);
    }

    /// Request `job.url`, on an idle connection to its origin when `reuse` allows one.
    fn request(&mut self, id: JobId, reuse: bool) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let origin = match Origin::of(&j.url) {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("{}: {e}", j.url);
                return self.terminate(id, DownloadError::InvalidRequest(msg), true);
            }
        };
        let idle = reuse
            .then(|| {
                self.conns
                    .iter()
                    .filter(|(_, c)| c.origin == origin)
                    .filter_map(|(cid, c)| match c.state {
                        ConnState::Idle { since } => Some((since, *cid)),
                        _ => None,
                    })
                    .max()
                    .map(|(_, cid)| cid)
            })
            .flatten();
        match idle {
            Some(conn) => {
                self.conns.get_mut(&conn).expect("idle conn").state = ConnState::Busy { job: id };
                self.send_request(id, conn);
            }
            None => {
                let conn = ConnId(self.next());
                let via = self.config.proxy.hop_for(&origin);
                self.conns.insert(
                    conn,
                    Conn {
                        origin: origin.clone(),
                        via: via.clone(),
                        state: ConnState::Connecting { job: id },
                        served: 0,
                    },
                );
                let deadline = self.now + self.config.connect_timeout;
                self.jobs.get_mut(&id).expect("job exists").phase =
                    Phase::Connecting { conn, deadline };
                self.io(Route::Connect(conn), IoOp::Connect { conn, origin, via });
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId, result: IoResult) {
        let Some(id) = self.conn_job(conn) else {
            return;
        };
        match result {
            IoResult::Done => {
                self.conns.get_mut(&conn).expect("conn").state = ConnState::Busy { job: id };
                self.send_request(id, conn);
            }
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                let origin = self.conns.remove(&conn).expect("conn").origin.to_string();
                self.fail_attempt(id, DownloadError::Connect { origin, failure });
            }
        }
    }

    fn send_request(&mut self, id: JobId, conn: ConnId) {
        let hop = self.conns.get(&conn).and_then(|c| c.via.clone());
        let j = self.jobs.get_mut(&id).expect("job exists");
        // Credentials go only to the origin the caller named, and never again once a
        // redirect chain has left it (a -> b -> a does not restore them).
        let first = Origin::of(&j.spec.url).ok();
        let same_origin = j
            .chain
            .iter()
            .chain(std::iter::once(&j.url))
            .all(|u| Origin::of(u).ok() == first);
        let mut headers: Vec<(String, String)> = Vec::with_capacity(6 + j.spec.headers.len());
        let user_has = |name: &str| {
            j.spec
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !user_has("user-agent") {
            headers.push(("User-Agent".into(), self.config.user_agent.clone()));
        }
        if !user_has("accept") {
            headers.push(("Accept".into(), "*/*".into()));
        }
        headers.push(("Accept-Encoding".into(), "identity".into()));
        let ranged = j.hashed > 0 && j.validator.is_some();
        if ranged {
            headers.push(("Range".into(), format!("bytes={}-", j.hashed)));
            let v = j.validator.as_ref().expect("ranged implies validator");
            headers.push(("If-Range".into(), v.if_range_value().to_string()));
        }
        for (name, value) in &j.spec.headers {
            let lower = name.to_ascii_lowercase();
            let credential = lower == "authorization" || lower == "cookie";
            let controlled = matches!(
                lower.as_str(),
                "host"
                    | "range"
                    | "if-range"
                    | "accept-encoding"
                    | "content-length"
                    | "transfer-encoding"
                    | "connection"
                    | "proxy-authorization"
            );
            if controlled || (credential && !same_origin) {
                continue;
            }
            headers.push((name.clone(), value.clone()));
        }
        let absolute_form = hop.as_ref().is_some_and(|h| !h.tunnel);
        if let Some(auth) = hop.filter(|h| !h.tunnel).and_then(|h| h.authorization) {
            headers.push(("Proxy-Authorization".into(), auth));
        }
        let mut buf = Vec::with_capacity(256);
        if let Err(e) = http::write_request(Method::Get, &j.url, &headers, absolute_form, &mut buf)
        {
            let msg = format!("cannot build request for {}: {e}", j.url);
            return self.terminate(id, DownloadError::InvalidRequest(msg), true);
        }
        j.phase = Phase::Sending {
            conn,
            since: self.now,
        };
        self.io(
            Route::Send(conn),
            IoOp::Send {
                conn,
                data: Bytes::from(buf),
            },
        );
    }

    fn on_sent(&mut self, conn: ConnId, result: IoResult) {
        let Some(id) = self.conn_job(conn) else {
            return;
        };
        let j = self.jobs.get_mut(&id).expect("job exists");
        if !matches!(j.phase, Phase::Sending { conn: c, .. } if c == conn) {
            return;
        }
        match result {
            IoResult::Done => {
                let ranged = j.hashed > 0 && j.validator.is_some();
                j.phase = Phase::Head {
                    conn,
                    parser: HeadParser::new(self.config.max_head_bytes),
                    deadline: self.now + self.config.head_timeout,
                    got_bytes: false,
                    ranged,
                };
                self.recv(id, conn);
            }
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                self.connection_failed(id, conn, failure, false);
            }
        }
    }

    fn recv(&mut self, id: JobId, conn: ConnId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.recv_outstanding {
            return;
        }
        j.recv_outstanding = true;
        j.last_byte = self.now;
        self.io(Route::Recv(conn), IoOp::Recv { conn });
    }

    /// A connection broke. A reused connection that breaks before any response byte was
    /// probably closed by the server while idle: replace it once without counting a failure.
    fn connection_failed(&mut self, id: JobId, conn: ConnId, failure: IoFailure, got_bytes: bool) {
        let reused = self.conns.get(&conn).is_some_and(|c| c.served > 0);
        let j = self.jobs.get_mut(&id).expect("job exists");
        if reused && !got_bytes && !j.stale_retry_used {
            j.stale_retry_used = true;
            self.close_conn(conn);
            self.request(id, false);
            return;
        }
        let origin = origin_label(&j.url);
        self.fail_attempt(id, DownloadError::Connection { origin, failure });
    }

    fn on_recv(&mut self, conn: ConnId, result: IoResult) {
        let Some(id) = self.conn_job(conn) else {
            return;
        };
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.phase.conn() != Some(conn) {
            return;
        }
        j.recv_outstanding = false;
        match result {
            IoResult::Data(bytes) => {
                j.last_byte = self.now;
                match j.phase {
                    Phase::Head { .. } => self.on_head_bytes(id, conn, bytes),
                    Phase::Body { .. } => self.on_body_bytes(id, conn, bytes),
                    Phase::Draining { .. } => self.on_drain_bytes(id, conn, bytes),
                    _ => {}
                }
            }
            IoResult::Eof => match &mut j.phase {
                Phase::Head { got_bytes, .. } => {
                    let got = *got_bytes;
                    let failure = IoFailure::new(
                        IoErrorKind::Reset,
                        "connection closed before the response head was complete",
                    );
                    self.connection_failed(id, conn, failure, got);
                }
                Phase::Body { decoder, .. } => match decoder.on_eof() {
                    Ok(()) => self.body_done(id, conn, false, true),
                    Err(source) => {
                        let origin = origin_label(&j.url);
                        self.fail_attempt(id, DownloadError::Protocol { origin, source });
                    }
                },
                Phase::Draining { next, .. } => {
                    let next = next.clone();
                    self.close_conn(conn);
                    self.follow(id, next);
                }
                _ => {}
            },
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                let got = !matches!(
                    j.phase,
                    Phase::Head {
                        got_bytes: false,
                        ..
                    }
                );
                self.connection_failed(id, conn, failure, got);
            }
        }
    }

    fn on_head_bytes(&mut self, id: JobId, conn: ConnId, bytes: Bytes) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Head {
            parser,
            got_bytes,
            ranged,
            ..
        } = &mut j.phase
        else {
            return;
        };
        *got_bytes = true;
        let ranged = *ranged;
        match parser.feed(&bytes) {
            Err(source) => {
                let origin = origin_label(&j.url);
                self.fail_attempt(id, DownloadError::Protocol { origin, source });
            }
            Ok(None) => self.recv(id, conn),
            Ok(Some((head, consumed))) => {
                let rest = bytes.slice(consumed..);
                self.on_head(id, conn, head, rest, ranged);
            }
        }
    }

    fn on_head(&mut self, id: JobId, conn: ConnId, head: ResponseHead, rest: Bytes, ranged: bool) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let origin = origin_label(&j.url);
        let framing = match http::framing(Method::Get, &head) {
            Ok(f) => f,
            Err(source) => {
                return self.fail_attempt(id, DownloadError::Protocol { origin, source })
            }
        };
        let keep_alive = http::keep_alive(&head, framing);
        match head.status {
            301 | 302 | 303 | 307 | 308 => {
                self.on_redirect(id, conn, &head, framing, keep_alive, rest)
            }
            200 => {
                if j.hashed > 0 {
                    tracing::info!(job = %id, "server sent the whole file instead of a range; restarting from zero");
                    self.restart_from_zero(id);
                }
                let j = self.jobs.get_mut(&id).expect("job exists");
                j.validator = Validator::of_response(&head);
                j.total = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                self.accept_response(id, conn, &head, framing, keep_alive, rest);
            }
            206 => {
                let problem = check_partial_response(j, &head, framing, ranged);
                match problem {
                    None => self.accept_response(id, conn, &head, framing, keep_alive, rest),
                    Some(detail) => {
                        self.restart_from_zero(id);
                        self.fail_attempt(id, DownloadError::RangeMismatch { detail });
                    }
                }
            }
            416 => {
                let complete = head
                    .headers
                    .get("content-range")
                    .and_then(|v| http::parse_content_range(v).ok());
                match complete {
                    Some(ContentRange::Unsatisfied { complete })
                        if ranged && complete == j.hashed =>
                    {
                        // The partial already holds every byte: verify and commit it.
                        j.total = Some(complete);
                        self.close_conn(conn);
                        self.verify_and_commit(id);
                    }
                    _ => {
                        self.restart_from_zero(id);
                        self.fail_attempt(
                            id,
                            DownloadError::RangeMismatch {
                                detail: "416 Range Not Satisfiable for the local partial".into(),
                            },
                        );
                    }
                }
            }
            status => {
                let retry_after = head
                    .headers
                    .get("retry-after")
                    .and_then(|v| http::parse_retry_after(v, head.headers.get("date")));
                let url = j.url.to_string();
                self.fail_attempt(
                    id,
                    DownloadError::Status {
                        url,
                        status,
                        retry_after,
                    },
                );
            }
        }
    }
}

/// Why a 206 does not continue our partial, or None when it does.
fn check_partial_response(
    j: &Job,
    head: &ResponseHead,
    framing: Framing,
    ranged: bool,
) -> Option<String> {
    if !ranged {
        return Some("206 Partial Content to a request without Range".into());
    }
    let Some(value) = head.headers.get("content-range") else {
        return Some("206 without Content-Range".into());
    };
    let (first, last, complete) = match http::parse_content_range(value) {
        Ok(ContentRange::Bytes {
            first,
            last,
            complete: Some(c),
        }) => (first, last, c),
        _ => return Some(format!("unusable Content-Range {value:?}")),
    };
    if first != j.hashed {
        return Some(format!(
            "range starts at {first}, local partial has {}",
            j.hashed
        ));
    }
    if last + 1 != complete {
        return Some(format!(
            "range ends at {last}, not at the end of {complete} bytes"
        ));
    }
    if j.total.is_some_and(|t| t != complete) {
        return Some(format!(
            "complete length {complete} differs from the {} bytes known",
            j.total.unwrap_or_default()
        ));
    }
    if let Framing::Length(n) = framing {
        if n != complete - first {
            return Some(format!(
                "Content-Length {n} disagrees with Content-Range {value}"
            ));
        }
    }
    match &j.validator {
        Some(v) if v.matches_response(head) => None,
        _ => Some("the representation's validator changed".into()),
    }
}

impl Engine {
    fn on_redirect(
        &mut self,
        id: JobId,
        conn: ConnId,
        head: &ResponseHead,
        framing: Framing,
        keep_alive: bool,
        rest: Bytes,
    ) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Some(location) = head.headers.get("location") else {
            let url = j.url.to_string();
            return self.fail_attempt(
                id,
                DownloadError::Status {
                    url,
                    status: head.status,
                    retry_after: None,
                },
            );
        };
        let next = match http::resolve_location(&j.url, location) {
            Ok(u) => u,
            Err(source) => {
                let origin = origin_label(&j.url);
                return self.fail_attempt(id, DownloadError::Protocol { origin, source });
            }
        };
        if next == j.url || j.chain.contains(&next) {
            return self.fail_attempt(
                id,
                DownloadError::RedirectLoop {
                    url: next.to_string(),
                },
            );
        }
        if j.chain.len() as u32 >= self.config.max_redirects {
            let limit = self.config.max_redirects;
            return self.fail_attempt(
                id,
                DownloadError::TooManyRedirects {
                    limit,
                    url: next.to_string(),
                },
            );
        }
        let from = j.url.clone();
        j.chain.push(from.clone());
        self.event(Event::Redirected {
            job: id,
            status: head.status,
            from: from.to_string(),
            to: next.to_string(),
        });
        let drainable = keep_alive
            && match framing {
                Framing::Empty | Framing::Chunked => true,
                Framing::Length(n) => n <= DRAIN_LIMIT,
                Framing::CloseDelimited => false,
            };
        if !drainable {
            self.close_conn(conn);
            return self.follow(id, next);
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.phase = Phase::Draining {
            conn,
            decoder: BodyDecoder::new(framing),
            next,
        };
        self.on_drain_bytes(id, conn, rest);
    }

    fn on_drain_bytes(&mut self, id: JobId, conn: ConnId, mut bytes: Bytes) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Phase::Draining { decoder, next, .. } = &mut j.phase else {
            return;
        };
        loop {
            match decoder.decode(&mut bytes) {
                Ok(Decoded::Data(_)) if decoder.received() <= DRAIN_LIMIT => continue,
                Ok(Decoded::NeedMore) => return self.recv(id, conn),
                Ok(Decoded::Done) if bytes.is_empty() => {
                    let next = next.clone();
                    self.release_conn(conn);
                    return self.follow(id, next);
                }
                _ => {
                    let next = next.clone();
                    self.close_conn(conn);
                    return self.follow(id, next);
                }
            }
        }
    }

    /// Continue the attempt at a redirect target.
    fn follow(&mut self, id: JobId, next: url::Url) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.url = next;
        self.request(id, true);
    }

    /// A 200 or a valid 206: check what is known against expectations, then stream the body.
    fn accept_response(
        &mut self,
        id: JobId,
        conn: ConnId,
        head: &ResponseHead,
        framing: Framing,
        keep_alive: bool,
        rest: Bytes,
    ) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if let (Some(expected), Some(total)) = (j.spec.size, j.total) {
            if expected != total {
                return self.terminate(
                    id,
                    DownloadError::SizeMismatch {
                        expected,
                        actual: total,
                    },
                    false,
                );
            }
        }
        if let (Some(limit), Some(total)) = (j.spec.max_size, j.total) {
            if total > limit {
                return self.terminate(id, DownloadError::TooLarge { limit, seen: total }, false);
            }
        }
        if matches!(j.spec.dest, Destination::Dir(_)) {
            j.dest_name = head
                .headers
                .get("content-disposition")
                .and_then(http::content_disposition_filename)
                .and_then(|n| sanitize_file_name(&n));
        }
        let (status, total, offset) = (head.status, j.total, j.hashed);
        if j.file.is_none() {
            let file = FileId(self.next());
            let j = self.jobs.get_mut(&id).expect("job exists");
            j.file = Some(file);
            let path = j.spec.part_path();
            self.file_io(
                id,
                FileStep::OpenFresh,
                IoOp::Open {
                    file,
                    path,
                    truncate: true,
                },
            );
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.phase = Phase::Body {
            conn,
            decoder: BodyDecoder::new(framing),
            keep_alive,
            window_start: self.now,
            window_bytes: j.fetched,
        };
        self.event(Event::Response {
            job: id,
            status,
            total,
            offset,
        });
        self.on_body_bytes(id, conn, rest);
    }

    fn on_body_bytes(&mut self, id: JobId, conn: ConnId, mut bytes: Bytes) {
        loop {
            let j = self.jobs.get_mut(&id).expect("job exists");
            let Phase::Body { decoder, .. } = &mut j.phase else {
                return;
            };
            match decoder.decode(&mut bytes) {
                Err(source) => {
                    let origin = origin_label(&j.url);
                    return self.fail_attempt(id, DownloadError::Protocol { origin, source });
                }
                Ok(Decoded::Data(data)) => {
                    if let Err(e) = self.accept_data(id, data) {
                        return self.terminate(id, e, false);
                    }
                }
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Done) => {
                    let leftover = !bytes.is_empty();
                    return self.body_done(id, conn, leftover, false);
                }
            }
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.write_backlog > self.config.max_write_backlog {
            j.recv_paused = true;
        } else {
            self.recv(id, conn);
        }
        if self.checkpoint_due(self.jobs.get(&id).expect("job exists")) {
            self.start_checkpoint(id);
        }
    }

    /// Hash and write one piece of body; enforce the size limits as bytes arrive.
    fn accept_data(&mut self, id: JobId, data: Bytes) -> Result<(), DownloadError> {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let len = data.len() as u64;
        let new_len = j.hashed + len;
        if let Some(limit) = j.spec.max_size {
            if new_len > limit {
                return Err(DownloadError::TooLarge {
                    limit,
                    seen: new_len,
                });
            }
        }
        if let Some(expected) = j.spec.size {
            if new_len > expected {
                return Err(DownloadError::SizeMismatch {
                    expected,
                    actual: new_len,
                });
            }
        }
        j.hasher.update(&data);
        let offset = j.hashed;
        j.hashed = new_len;
        j.fetched += len;
        j.write_backlog += len;
        let file = j.file.expect("body implies an open partial");
        let total = j.total;
        self.file_io(
            id,
            FileStep::Write { len },
            IoOp::WriteAt { file, offset, data },
        );
        self.event(Event::Progress {
            job: id,
            bytes: new_len,
            total,
        });
        Ok(())
    }

    fn body_done(&mut self, id: JobId, conn: ConnId, leftover: bool, closed: bool) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let keep_alive = matches!(
            j.phase,
            Phase::Body {
                keep_alive: true,
                ..
            }
        );
        if keep_alive && !leftover && !closed {
            self.release_conn(conn);
        } else {
            self.close_conn(conn);
        }
        self.verify_and_commit(id);
    }

    /// Every byte is in: check size and hash, then sync, close and rename.
    fn verify_and_commit(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.recv_outstanding = false;
        if let Some(total) = j.total {
            if j.hashed != total {
                let origin = origin_label(&j.url);
                let source = HttpError::Truncated {
                    expected: Some(total),
                    received: j.hashed,
                };
                return self.fail_attempt(id, DownloadError::Protocol { origin, source });
            }
        }
        if let Some(expected) = j.spec.size {
            if j.hashed != expected {
                let actual = j.hashed;
                return self.terminate(id, DownloadError::SizeMismatch { expected, actual }, false);
            }
        }
        let digest: [u8; 32] = j.hasher.clone().finalize().into();
        if let Some(expected) = j.spec.sha256 {
            if expected != digest {
                return self.terminate(
                    id,
                    DownloadError::HashMismatch {
                        expected: hex::encode(expected),
                        actual: hex::encode(digest),
                    },
                    false,
                );
            }
        }
        let dest = match &j.spec.dest {
            Destination::File(p) => p.clone(),
            Destination::Dir(d) => d.join(
                j.dest_name
                    .clone()
                    .unwrap_or_else(|| crate::download::file_name_from_url(&j.spec.url)),
            ),
        };
        j.phase = Phase::Committing { dest, digest };
        let file = j.file.expect("commit needs the partial open");
        self.file_io(id, FileStep::FinalSync, IoOp::Sync { file });
        self.file_io(id, FileStep::Close, IoOp::CloseFile { file });
    }

    fn release_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.served += 1;
            c.state = ConnState::Idle { since: self.now };
        }
    }

    fn close_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !matches!(c.state, ConnState::Closing) {
                c.state = ConnState::Closing;
                self.io(Route::Close(conn), IoOp::Close { conn });
            }
        }
    }

    // ---------------------------------------------------------------- failure

    /// The current attempt failed: retry after a backoff, or end the job.
    fn fail_attempt(&mut self, id: JobId, error: DownloadError) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(conn) = j.phase.conn() {
            self.close_conn(conn);
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.recv_outstanding = false;
        j.recv_paused = false;
        let policy = self.config.retry;
        let elapsed = self.now.saturating_since(j.submitted);
        if error.retryable() && j.attempt < policy.max_attempts {
            let exp = policy
                .base_delay
                .saturating_mul(1u32 << (j.attempt - 1).min(20))
                .min(policy.max_delay);
            // "Equal jitter": at least half the exponential delay, so the backoff still grows.
            let jittered = exp / 2 + exp.mul_f64(self.rng.next_f64() / 2.0);
            let delay = match &error {
                DownloadError::Status {
                    retry_after: Some(ra),
                    ..
                } => jittered.max(*ra),
                _ => jittered,
            };
            if elapsed + delay <= policy.max_elapsed {
                let j = self.jobs.get_mut(&id).expect("job exists");
                j.attempt += 1;
                let attempt = j.attempt;
                j.phase = Phase::Backoff {
                    until: self.now + delay,
                };
                tracing::debug!(job = %id, attempt, ?delay, "retrying after: {error}");
                self.event(Event::Retrying {
                    job: id,
                    attempt,
                    delay,
                    error,
                });
                if self.checkpoint_due(self.jobs.get(&id).expect("job exists")) {
                    self.start_checkpoint(id);
                }
                return;
            }
        }
        self.terminate(id, error, true);
    }

    fn on_write_error(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if let Phase::CleaningUp { .. } = j.phase {
            return self.cleanup_progress(id);
        }
        let (path, failure) = j.write_error.clone().expect("write error recorded");
        self.terminate(id, DownloadError::LocalIo { path, failure }, false);
    }

    fn fail_commit(&mut self, id: JobId, path: PathBuf, failure: IoFailure) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.phase = Phase::CleaningUp {
            error: DownloadError::LocalIo { path, failure },
            keep: false,
            untouched: false,
            step: CleanStep::Start,
        };
        self.cleanup_progress(id);
    }

    /// End the job with `error`, keeping a resumable partial when `keep` and possible.
    fn terminate(&mut self, id: JobId, error: DownloadError, keep: bool) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        match j.phase {
            Phase::CleaningUp { .. } | Phase::Done | Phase::Committing { .. } => return,
            _ => {}
        }
        if let Some(conn) = j.phase.conn() {
            self.close_conn(conn);
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.recv_outstanding = false;
        let untouched = matches!(
            j.phase,
            Phase::LoadingState | Phase::OpeningPartial { .. } | Phase::Rehashing { .. }
        );
        j.phase = Phase::CleaningUp {
            error,
            keep,
            untouched,
            step: CleanStep::Start,
        };
        self.cleanup_progress(id);
    }

    /// Drive the clean-up steps; each waits until the job has no file operation pending.
    fn cleanup_progress(&mut self, id: JobId) {
        loop {
            let Some(j) = self.jobs.get_mut(&id) else {
                return;
            };
            if j.file_ops > 0 {
                return;
            }
            let resumable = j.validator.is_some()
                && j.hashed > 0
                && j.write_error.is_none()
                && j.file.is_some();
            let (hashed, durable, file) = (j.hashed, j.durable, j.file);
            let Phase::CleaningUp {
                keep,
                untouched,
                step,
                ..
            } = &mut j.phase
            else {
                return;
            };
            match *step {
                CleanStep::Start => {
                    *keep = *keep && (resumable || *untouched);
                    if *keep && durable < hashed {
                        *step = CleanStep::Checkpoint;
                        self.start_checkpoint(id);
                        return;
                    }
                    *step = CleanStep::Close;
                }
                CleanStep::Checkpoint => *step = CleanStep::Close,
                CleanStep::Close => {
                    *step = CleanStep::Remove;
                    if let Some(file) = file {
                        self.file_io(id, FileStep::Close, IoOp::CloseFile { file });
                        return;
                    }
                }
                CleanStep::Remove => {
                    *step = CleanStep::Report;
                    if !*keep {
                        let (part, state) = (j.spec.part_path(), j.spec.state_path());
                        self.file_io(id, FileStep::RemovePart, IoOp::Remove { path: part });
                        self.file_io(id, FileStep::RemoveState, IoOp::Remove { path: state });
                        return;
                    }
                }
                CleanStep::Report => {
                    let Some(Job {
                        phase: Phase::CleaningUp { error, .. },
                        ..
                    }) = self.jobs.remove(&id)
                    else {
                        return;
                    };
                    self.event(Event::Finished {
                        job: id,
                        result: Err(error),
                    });
                    return;
                }
            }
        }
    }
}
