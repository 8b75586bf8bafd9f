//! The simulated world and its runtime: a discrete-event loop that executes the real
//! [`Engine`]'s I/O requests against virtual connections, origins and a virtual disk, fires
//! the scenario's faults, crashes and restarts the engine, and checks the invariants after
//! every step.
//!
//! # The loop
//!
//! Events live in a queue ordered by `(time, sequence)`; the clock jumps to the next event
//! or to the engine's next deadline ([`Engine::poll_timeout`]), whichever is first (an event
//! at the same instant goes first). Every I/O request is completed by exactly one queued
//! event; operations on one file complete in issue order (each is scheduled no earlier than
//! the previous one on that file), everything else completes after its own latency.
//!
//! # Phases
//!
//! From time zero to `heal_at` (the safety phase) the fault plan is live and crashes may
//! happen between any two steps. After it (the liveness phase) nothing fails any more: no
//! fault fires, and a representation an `EtagChange` published is withdrawn at the heal
//! (its host serves its own representation again, see [`Origins::heal`]). Every download
//! with a URL that serves its bytes (a live primary, or a mirror that is not stale) must
//! then commit within [`LIVENESS_BOUND`], failing at most three times more. A download that
//! ends in an error is re-submitted (like a user running the command again) once the world
//! is healed.
//!
//! # Crashes
//!
//! A crash drops the engine and every pending operation and connection, and makes the disk
//! keep only its durable state ([`crate::disk`]). After the plan's restart delay a new
//! engine is created on the same disk and the downloads that were running are submitted
//! again: they resume from the `.haul-part`/`.haul-state` pair on disk.
//!
//! # The caller's acts
//!
//! A [`Fault::Control`] has the caller act on a running download in the safety phase:
//! cancel it keeping its partial, cancel it discarding it, or pause it and resume it a
//! little later. A cancelled download is submitted again shortly after its job ends (it
//! resumes, or starts over). Checked: a job cancelled with `Discard` that ends `Cancelled`
//! leaves neither partial nor state file at its destination; a paused job sends no request
//! until it is resumed.
//!
//! # Mirrors and resilience
//!
//! A download may have mirrors on other origins ([`crate::scenario::MirrorPlan`]); the
//! engine gets them with `Download::mirror`. Faults apply per origin as before. The
//! resilience policies are checked by [`crate::resilience`]: the circuit breaker (no
//! attempt that began after an opening sends a first-hop request to that origin during the
//! cool-down), the backoff of each retry (failover only with a URL not failed since the
//! last backoff; otherwise exponential in the job's backoff count; never shorter than the
//! retry budget's wait, modelled with the engine's own [`RetryBudget`]), the retries after
//! a failed verification (one for a job with one URL; for a job with several, a URL that
//! served wrong bytes is not used again, and the job retries while another is left; after
//! a `Spread` event the first failed verification blames no URL, and the job starts over
//! at once on its attempt's URL), and the number of retries a minute.
//!
//! # Hooks
//!
//! Invariants are checked in `World::check_step`, on events (`World::on_event`) and on
//! requests (`World::serve`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use haul_core::config::{Config, LowSpeedLimit, RetryPolicy};
use haul_core::policy::{BreakerConfig, RetryBudget};
use haul_core::resume::PartState;
use haul_core::{
    CancelMode, ChecksumAlgorithm, ConnId, Download, DownloadError, Engine, Event, FileId, Input,
    Instant, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult, JobId, Output,
};
use sha2::{Digest, Sha256, Sha512};

use crate::disk::{VirtualDisk, WriteFault};
use crate::origin::{parse_request, End, Origins, Representation};
use crate::resilience::{BackoffModel, BreakerVerdict, BreakerWatch, Mark, RetryWindow};
use crate::scenario::{
    Check, ConnectFault, ControlAction, DiskFault, Fault, FaultKind, PlantedBug, ResponseFault,
    Scenario,
};
use crate::seed::{mix, sub_seed, SimRng, Stream};
use crate::trace::Trace;

/// The breaker's longest cool-down in the simulator's engine configuration.
pub const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(8);

/// Time after the heal by which every live download must have committed: the 60 s allowed
/// before the engine had circuit breakers (as long as the retry policy's `max_elapsed`),
/// plus one longest breaker cool-down. A breaker can still open, or reopen with a doubled
/// cool-down, just after the heal: requests sent in the safety phase (a stall, a trickle, a
/// hanging connect) fail by their timeouts a few seconds into the liveness phase. Until its
/// cool-down ends no attempt starts on that origin, for up to `max_cooldown`; the probe
/// after it is sent after the heal and succeeds.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(60 + BREAKER_MAX_COOLDOWN.as_secs());

/// Inputs at one simulated instant after which the engine is declared to be spinning.
const SAME_INSTANT_LIMIT: u32 = 20_000;

/// The invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// A committed file does not hold the expected bytes (wrong hash, or not exactly one
    /// representation the origin served), or a download reported its other checksum
    /// mismatched although that is the digest of the bytes its SHA-256 proved (its read-back
    /// hashed other bytes than the file's).
    CommittedBytes,
    /// A state file names bytes that are not durable or whose digest does not match.
    StateFile,
    /// A job finished twice, or an event arrived for a job that is not running.
    OneCompletion,
    /// The engine broke the I/O call contract (reused ids, used closed handles, malformed
    /// requests, disagreement on pending requests).
    CallContract,
    /// A retry delay outside the policy's bounds (failover, exponential backoff, retry
    /// budget), a retry after a failed verification the rule does not allow (a second one
    /// for a job with one URL; for a job with several, on a URL that served wrong bytes, or
    /// once every URL did), a job that ended on a failed verification while the rule gives
    /// it a retry, or a request before the backoff ended.
    Backoff,
    /// An attempt that began after an origin's breaker opened sent a request there during
    /// the cool-down.
    Breaker,
    /// More retries in a minute than the retry budget can allow.
    RetryBudget,
    /// The engine made no progress in time (ticks that do nothing, too many steps).
    BusyLoop,
    /// The engine panicked.
    Panic,
    /// A download with a URL that serves its bytes did not finish in time after the heal
    /// (or failed a fourth time after it).
    Liveness,
    /// A successful outcome that does not describe the committed file.
    Outcome,
    /// A job refused its partial file (another process holds it locked) did not end with
    /// `PartialInUse`, or changed that partial or its state file before it ended.
    PartialLock,
    /// The caller's acts were not honoured: a job cancelled with `Discard` ended `Cancelled`
    /// but left its partial or state file, or a paused job sent a request before its resume.
    Control,
}

/// Resilience features a run exercised, counted like fault kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// A `Failover` event: an attempt moved to another of its job's URLs.
    Failover,
    /// A `BreakerOpened` event.
    BreakerOpened,
    /// A retry after a failed verification (hash or size mismatch).
    VerificationRetry,
    /// A download committed from a mirror (its outcome's final URL is a mirror's).
    MirrorCommit,
    /// An attempt that began after a breaker opened followed a redirect to that origin
    /// during the cool-down (allowed: the engine checks only the attempt's own URL).
    RedirectPastOpenBreaker,
    /// A retry had to wait for the retry budget.
    BudgetWait,
    /// A `Spread` event: a segment went to another of its job's URLs than the attempt's.
    Spread,
    /// A download written to an unnamed file was published at its destination.
    UnnamedCommit,
    /// A download with another checksum (`Download::checksum`) committed after its
    /// read-back.
    ChecksumCommit,
    /// A `SingleConnection` event: a segment's answer did not fit the file, and the job
    /// went on over one connection.
    SingleConnection,
}

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; 10] = [
        Feature::Failover,
        Feature::BreakerOpened,
        Feature::VerificationRetry,
        Feature::MirrorCommit,
        Feature::RedirectPastOpenBreaker,
        Feature::BudgetWait,
        Feature::Spread,
        Feature::UnnamedCommit,
        Feature::SingleConnection,
        Feature::ChecksumCommit,
    ];

    /// Features a default swarm must exercise.
    pub const REQUIRED: [Feature; 7] = [
        Feature::Failover,
        Feature::BreakerOpened,
        Feature::VerificationRetry,
        Feature::MirrorCommit,
        Feature::Spread,
        Feature::UnnamedCommit,
        Feature::ChecksumCommit,
    ];

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Failover => "failover",
            Feature::BreakerOpened => "breaker-opened",
            Feature::VerificationRetry => "verification-retry",
            Feature::MirrorCommit => "mirror-commit",
            Feature::RedirectPastOpenBreaker => "redirect-past-open-breaker",
            Feature::BudgetWait => "budget-wait",
            Feature::Spread => "spread",
            Feature::UnnamedCommit => "unnamed-commit",
            Feature::SingleConnection => "single-connection",
            Feature::ChecksumCommit => "checksum-commit",
        }
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time.
    pub at: Instant,
    /// Step of the run.
    pub step: u64,
    /// What is broken.
    pub invariant: Invariant,
    /// Details.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} violated at {} (step {}): {}",
            self.invariant,
            fmt_time(self.at),
            self.step,
            self.detail
        )
    }
}

/// Options of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Record the event trace (slower; needed for replays and determinism checks).
    pub trace: bool,
    /// Steps after which the run is declared to be spinning.
    pub max_steps: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            trace: false,
            max_steps: 2_000_000,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The scenario's seed.
    pub seed: u64,
    /// Broken invariants (the run stops at the first).
    pub violations: Vec<Violation>,
    /// The trace, when recorded.
    pub trace: Vec<String>,
    /// SHA-256 of the trace (hex), when recorded.
    pub trace_hash: Option<String>,
    /// Faults that fired, by kind.
    pub fired: BTreeMap<FaultKind, u32>,
    /// Resilience features exercised.
    pub features: BTreeMap<Feature, u32>,
    /// Simulated time at the end.
    pub simulated: Duration,
    /// Steps taken.
    pub steps: u64,
    /// Successful commits.
    pub commits: u32,
    /// Engine crashes.
    pub crashes: u32,
}

impl RunReport {
    /// True when no invariant broke.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Formats an instant as seconds with microseconds.
pub fn fmt_time(t: Instant) -> String {
    let us = t.as_nanos() / 1000;
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

/// The engine configuration the simulator runs: the real engine with short timeouts.
pub fn engine_config(sc: &Scenario, seed: u64) -> Config {
    Config {
        connect_timeout: Duration::from_secs(2),
        head_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(2),
        low_speed: Some(LowSpeedLimit {
            bytes_per_sec: 2048,
            window: Duration::from_secs(4),
        }),
        max_redirects: 5,
        retry: RetryPolicy {
            max_attempts: sc.max_attempts,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(4),
            max_elapsed: Duration::from_secs(60),
            budget_per_minute: sc.retry_budget_per_minute,
        },
        // The breaker on the simulator's time scale: faults come in bursts of seconds.
        breaker: BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(2),
            max_cooldown: BREAKER_MAX_COOLDOWN,
            success_threshold: 1,
        },
        checkpoint_bytes: sc.checkpoint_bytes,
        checkpoint_interval: Duration::from_millis(500),
        unnamed_max: sc.unnamed_max,
        // Half the seeds have the executor hash unnamed files (from the seed itself, so the
        // scenario streams draw what they drew before).
        executor_digests: seed % 2 == 1,
        max_write_backlog: 64 * 1024,
        idle_connection_timeout: Duration::from_secs(5),
        seed,
        max_active_jobs: usize::from(sc.max_active_jobs),
        // Small enough that the scenarios with few slots also run into this bound.
        max_committing_jobs: usize::from(sc.max_active_jobs),
        rate_limit: sc.rate_limit.map(u64::from),
        ..Config::default()
    }
}

/// Run one scenario to the end and report.
pub fn run_scenario(sc: &Scenario, opts: RunOptions) -> RunReport {
    let mut world = World::new(sc.clone(), opts);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    if let Err(panic) = outcome {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        world.violate(Invariant::Panic, format!("panic: {msg}"));
    }
    world.report()
}

// ------------------------------------------------------------------------ world state

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DlStatus {
    Active {
        job: JobId,
        submitted: Instant,
    },
    /// Failed; a re-submission is queued.
    Waiting,
    /// Was running when the engine crashed; submitted again at restart.
    AwaitingRestart,
    Succeeded,
    /// Failed and its bytes do not exist: nothing more to do.
    GaveUp,
}

#[derive(Debug)]
struct DlState {
    /// The URL, then the mirrors', as the engine prints them.
    urls: Vec<String>,
    /// Each URL's first hop: (origin as the engine prints it, request path).
    first_hops: Vec<(String, String)>,
    dest: PathBuf,
    expected_sha: Option<[u8; 32]>,
    /// The SHA-512 (hex) of the canonical representation, expected as the download's other
    /// checksum, so the read-back before the commit runs under the faults too. It always
    /// matches a file whose SHA-256 passed. Only every other segmented download that
    /// expects the SHA-256 has one: the read-back completes the file's writes before its
    /// final sync is issued, which closes the window a disk that lets syncs overtake writes
    /// needs to show (see the planted-bug swarm test); a segmented download's early sync
    /// comes before its read-back and keeps that window.
    checksum: Option<String>,
    status: DlStatus,
    failures_after_heal: u32,
    backoff_until: Option<Instant>,
    /// When the current job last began to try (`Started`) or scheduled a retry
    /// (`Retrying`): its wait behind breakers cannot have begun earlier.
    tried_at: Instant,
    /// When the current job left the queue (`Started`): its retries' time limit counts
    /// from here, not from its submission (a queued job's later retries are its own).
    started_at: Instant,
    /// The retry state of the current job, as far as events show it.
    model: BackoffModel,
    /// What the checker last verified for the (volatile, durable) view of the destination.
    checked: [Option<crate::disk::Version>; 2],
}

#[derive(Debug, Clone)]
enum Wire {
    Data(Bytes),
    Eof,
    Reset,
}

#[derive(Debug)]
struct NetConn {
    /// The resolved origin, or None for a host that does not resolve.
    origin: Option<u8>,
    connect_fault: Option<ConnectFault>,
    engine_closed: bool,
    /// A hanging connect, completed only when the engine closes the connection.
    connect_parked: Option<IoId>,
    inbox: Vec<u8>,
    stream: VecDeque<(Instant, Wire)>,
    parked_recv: VecDeque<IoId>,
    /// The server will send nothing more.
    server_done: bool,
    /// When the last queued byte becomes available.
    tail: Instant,
    bytes_per_sec: u64,
    requests: u32,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Io(IoId),
    /// The delayed completion of an operation that already took effect.
    Deliver(IoId),
    ServerIdleClose {
        conn: ConnId,
        requests: u32,
    },
    Restart,
    Resubmit(usize),
    Heal,
    /// The caller resumes the job it paused.
    Resume(JobId),
}

/// The world of one run. See the module documentation.
pub struct World {
    sc: Scenario,
    opts: RunOptions,
    now: Instant,
    seq: u64,
    queue: BTreeMap<(Instant, u64), Ev>,
    engine: Option<Engine>,
    incarnation: u32,
    engine_seed: u64,
    pending: BTreeMap<IoId, IoOp>,
    issued: BTreeSet<IoId>,
    conns: BTreeMap<ConnId, NetConn>,
    file_last: BTreeMap<FileId, Instant>,
    /// When each file's open takes effect.
    file_opened: BTreeMap<FileId, Instant>,
    /// Latest completion of a sync per file (a close waits for it).
    file_synced: BTreeMap<FileId, Instant>,
    /// Syncs whose completion comes after their effect.
    sync_done_at: BTreeMap<IoId, Instant>,
    delayed: BTreeMap<IoId, IoResult>,
    disk: VirtualDisk,
    origins: Origins,
    idle_close: Vec<Duration>,
    net: SimRng,
    disk_rng: SimRng,
    downloads: Vec<DlState>,
    jobs: BTreeMap<JobId, usize>,
    healed: bool,
    heal_at: Instant,
    connects: Vec<u16>,
    requests: Vec<u16>,
    writes: u32,
    full_left: u8,
    connect_faults: BTreeMap<(u8, u16), ConnectFault>,
    response_faults: BTreeMap<(u8, u16), ResponseFault>,
    disk_faults: BTreeMap<u32, DiskFault>,
    crash_faults: BTreeMap<u64, u32>,
    /// The caller's acts by step: (download, action).
    control_faults: BTreeMap<u64, Vec<(u8, ControlAction)>>,
    /// Jobs the caller cancelled, and how.
    cancelled: BTreeMap<JobId, CancelMode>,
    /// Downloads whose job the caller paused and has not resumed yet.
    paused: BTreeMap<usize, JobId>,
    /// Opens of named partials so far (in the safety phase), and those to refuse.
    partial_opens: u32,
    busy_faults: BTreeSet<u32>,
    /// Downloads whose partial open was refused, with what their partial and state file
    /// were at the refusal: both must be the same when the job ends.
    refused: BTreeMap<usize, [Option<crate::disk::Version>; 2]>,
    steps: u64,
    same_instant: u32,
    last_input_at: Instant,
    settled_at: Option<Instant>,
    violations: Vec<Violation>,
    /// When each pending `Send` was issued (requests are judged by it).
    send_issued: BTreeMap<IoId, Instant>,
    /// Engine events observed so far (orders the events of one instant).
    observed: u64,
    breakers: BreakerWatch,
    /// The engine's retry budget, replayed from its `Retrying` events.
    budget: RetryBudget,
    retry_window: RetryWindow,
    trace: Trace,
    fired: BTreeMap<FaultKind, u32>,
    features: BTreeMap<Feature, u32>,
    commits: u32,
    crashes: u32,
}

fn job_of(e: &Event) -> Option<JobId> {
    e.job()
}

fn file_of(op: &IoOp) -> Option<FileId> {
    match op {
        IoOp::Open { file, .. }
        | IoOp::OpenUnnamed { file, .. }
        | IoOp::Publish { file, .. }
        | IoOp::OpenRead { file, .. }
        | IoOp::ReadAt { file, .. }
        | IoOp::WriteAt { file, .. }
        | IoOp::SetLen { file, .. }
        | IoOp::Digest { file, .. }
        | IoOp::Sync { file }
        | IoOp::CloseFile { file, .. } => Some(*file),
        _ => None,
    }
}

fn conn_of(op: &IoOp) -> Option<ConnId> {
    match op {
        IoOp::Connect { conn, .. }
        | IoOp::Send { conn, .. }
        | IoOp::Recv { conn, .. }
        | IoOp::Close { conn } => Some(*conn),
        _ => None,
    }
}

fn failed(kind: IoErrorKind, msg: &str) -> IoResult {
    IoResult::Failed(IoFailure::new(kind, msg))
}

fn summarize_op(op: &IoOp) -> String {
    match op {
        IoOp::Connect { conn, origin, .. } => format!("Connect {conn} {origin}"),
        IoOp::Send { conn, data } => format!("Send {conn} {}B", data.len()),
        IoOp::Recv { conn, .. } => format!("Recv {conn}"),
        IoOp::Close { conn } => format!("Close {conn}"),
        IoOp::ReadFile { path, .. } => format!("ReadFile {}", path.display()),
        IoOp::WriteFileAtomic { path, data } => {
            format!("WriteFileAtomic {} {}B", path.display(), data.len())
        }
        IoOp::Open {
            file,
            path,
            truncate,
        } => format!("Open f{} {} truncate={truncate}", file.0, path.display()),
        IoOp::OpenUnnamed { file, path } => {
            format!(
                "OpenUnnamed f{} (in the directory of {})",
                file.0,
                path.display()
            )
        }
        IoOp::Publish { file, to, sync, .. } => format!(
            "Publish f{} as {}{}",
            file.0,
            to.display(),
            if *sync { "" } else { " (no sync)" }
        ),
        IoOp::OpenRead { file, path } => format!("OpenRead f{} {}", file.0, path.display()),
        IoOp::CopyFile { from, to } => format!("CopyFile {} -> {}", from.display(), to.display()),
        IoOp::ReadAt { file, offset, len } => format!("ReadAt f{} @{offset} {len}B", file.0),
        IoOp::WriteAt { file, offset, data } => {
            format!("WriteAt f{} @{offset} {}B", file.0, data.len())
        }
        IoOp::SetLen { file, len } => format!("SetLen f{} {len}", file.0),
        IoOp::Digest { file, len, keep } => format!(
            "Digest f{} {len}B{}",
            file.0,
            if *keep { " (checkpoint)" } else { "" }
        ),
        IoOp::Sync { file } => format!("Sync f{}", file.0),
        IoOp::CloseFile { file, .. } => format!("CloseFile f{}", file.0),
        IoOp::Rename { from, to, sync } => format!(
            "Rename {} -> {}{}",
            from.display(),
            to.display(),
            if *sync { "" } else { " (no sync)" }
        ),
        IoOp::Remove { path } => format!("Remove {}", path.display()),
        IoOp::RemoveUnheld { path } => format!("RemoveUnheld {}", path.display()),
    }
}

fn summarize_result(r: &IoResult) -> String {
    match r {
        IoResult::Data(b) => format!("Data {}B", b.len()),
        IoResult::Failed(f) => format!("Failed {f}"),
        other => format!("{other:?}"),
    }
}

fn summarize_event(e: &Event) -> String {
    match e {
        Event::Progress {
            job, bytes, total, ..
        } => format!("Progress {job} {bytes}/{total:?}"),
        Event::Finished { job, result: Ok(o) } => format!(
            "Finished {job} ok size={} resumed_from={} attempts={} sha={}",
            o.size,
            o.resumed_from,
            o.attempts,
            &o.sha256_hex()[..16]
        ),
        Event::Finished {
            job,
            result: Err(e),
        } => format!("Finished {job} err: {e}"),
        other => format!("{other:?}"),
    }
}

impl World {
    /// A world for `sc`, not yet started.
    pub fn new(sc: Scenario, opts: RunOptions) -> World {
        let origins = Origins::new(sub_seed(sc.seed, Stream::Origins), &sc.downloads, sc.bug);
        let mut origin_rng = SimRng::new(mix(sub_seed(sc.seed, Stream::Origins), 1));
        let idle_close = (0..sc.origins)
            .map(|_| Duration::from_millis(origin_rng.range(500, 8_000)))
            .collect();
        let downloads = sc
            .downloads
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let canonical = &origins.resources[i].versions[0].body;
                let (host, path) = if d.dead_host {
                    (format!("dead{i}.sim"), format!("/f/d{i}"))
                } else if let Some(r) = d.redirect_via {
                    (format!("o{r}.sim"), format!("/r/d{i}"))
                } else {
                    (format!("o{}.sim", d.origin), format!("/f/d{i}"))
                };
                let mut first_hops = vec![(host, path)];
                for m in &d.mirrors {
                    first_hops.push((format!("o{}.sim", m.origin), format!("/f/d{i}")));
                }
                let urls = first_hops
                    .iter()
                    .map(|(h, p)| format!("http://{h}{p}"))
                    .collect();
                let first_hops = first_hops
                    .into_iter()
                    .map(|(h, p)| (format!("http://{h}:80"), p))
                    .collect();
                let expected_sha = match d.check {
                    Check::Sha256 => Some(Sha256::digest(canonical).into()),
                    Check::WrongSha256 => Some(Sha256::digest(b"no representation").into()),
                    Check::Unchecked => None,
                };
                let checksum = (d.check == Check::Sha256 && i % 2 == 0 && d.segments > 1)
                    .then(|| hex::encode(Sha512::digest(canonical)));
                DlState {
                    urls,
                    first_hops,
                    dest: PathBuf::from(format!("/dl/d{i}.bin")),
                    expected_sha,
                    checksum,
                    status: DlStatus::AwaitingRestart,
                    failures_after_heal: 0,
                    backoff_until: None,
                    tried_at: Instant::ZERO,
                    started_at: Instant::ZERO,
                    model: BackoffModel::new(1 + d.mirrors.len()),
                    checked: [None, None],
                }
            })
            .collect();
        let mut connect_faults = BTreeMap::new();
        let mut response_faults = BTreeMap::new();
        let mut disk_faults = BTreeMap::new();
        let mut crash_faults = BTreeMap::new();
        let mut busy_faults = BTreeSet::new();
        let mut control_faults: BTreeMap<u64, Vec<(u8, ControlAction)>> = BTreeMap::new();
        for f in &sc.faults {
            match *f {
                Fault::Connect { origin, nth, kind } => {
                    connect_faults.entry((origin, nth)).or_insert(kind);
                }
                Fault::Response { origin, nth, kind } => {
                    response_faults.entry((origin, nth)).or_insert(kind);
                }
                Fault::Disk { nth_write, kind } => {
                    disk_faults.entry(u32::from(nth_write)).or_insert(kind);
                }
                Fault::Crash {
                    after_step,
                    restart_ms,
                } => {
                    crash_faults
                        .entry(u64::from(after_step))
                        .or_insert(restart_ms);
                }
                Fault::PartialBusy { nth_open } => {
                    busy_faults.insert(u32::from(nth_open));
                }
                Fault::Control {
                    after_step,
                    download,
                    action,
                } => control_faults
                    .entry(u64::from(after_step))
                    .or_default()
                    .push((download, action)),
            }
        }
        let budget_per_minute = engine_config(&sc, 0).retry.budget_per_minute;
        World {
            heal_at: Instant::from_duration(Duration::from_millis(sc.heal_at_ms)),
            breakers: BreakerWatch::new(sc.downloads.len()),
            budget: RetryBudget::new(budget_per_minute, Instant::ZERO),
            engine_seed: sub_seed(sc.seed, Stream::Engine),
            net: SimRng::new(sub_seed(sc.seed, Stream::Network)),
            disk_rng: SimRng::new(sub_seed(sc.seed, Stream::Disk)),
            connects: vec![0; usize::from(sc.origins)],
            requests: vec![0; usize::from(sc.origins)],
            trace: Trace::new(opts.trace),
            sc,
            opts,
            now: Instant::ZERO,
            seq: 0,
            queue: BTreeMap::new(),
            engine: None,
            incarnation: 0,
            pending: BTreeMap::new(),
            issued: BTreeSet::new(),
            conns: BTreeMap::new(),
            file_last: BTreeMap::new(),
            file_opened: BTreeMap::new(),
            file_synced: BTreeMap::new(),
            sync_done_at: BTreeMap::new(),
            delayed: BTreeMap::new(),
            disk: VirtualDisk::new(),
            origins,
            idle_close,
            downloads,
            jobs: BTreeMap::new(),
            healed: false,
            writes: 0,
            full_left: 0,
            connect_faults,
            response_faults,
            disk_faults,
            crash_faults,
            control_faults,
            cancelled: BTreeMap::new(),
            paused: BTreeMap::new(),
            partial_opens: 0,
            busy_faults,
            refused: BTreeMap::new(),
            steps: 0,
            same_instant: 0,
            last_input_at: Instant::ZERO,
            settled_at: None,
            violations: Vec::new(),
            send_issued: BTreeMap::new(),
            observed: 0,
            retry_window: RetryWindow::default(),
            fired: BTreeMap::new(),
            features: BTreeMap::new(),
            commits: 0,
            crashes: 0,
        }
    }

    fn report(self) -> RunReport {
        let trace_hash = self.trace.enabled().then(|| self.trace.hash());
        RunReport {
            seed: self.sc.seed,
            violations: self.violations,
            trace: self.trace.into_lines(),
            trace_hash,
            fired: self.fired,
            features: self.features,
            simulated: self.now.since_epoch(),
            steps: self.steps,
            commits: self.commits,
            crashes: self.crashes,
        }
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if self.trace.enabled() {
            let line = format!("{:>14} {}", fmt_time(self.now), f());
            self.trace.push(line);
        }
    }

    fn violate(&mut self, invariant: Invariant, detail: String) {
        let v = Violation {
            at: self.now,
            step: self.steps,
            invariant,
            detail,
        };
        if self.trace.enabled() {
            let line = format!("{:>14} VIOLATION {v}", fmt_time(self.now));
            self.trace.push(line);
        }
        self.violations.push(v);
    }

    fn fire(&mut self, kind: FaultKind) {
        *self.fired.entry(kind).or_default() += 1;
    }

    fn count(&mut self, feature: Feature) {
        *self.features.entry(feature).or_default() += 1;
    }

    /// The next point in the order of observations.
    fn mark(&mut self) -> Mark {
        self.observed += 1;
        Mark {
            at: self.now,
            seq: self.observed,
        }
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        let at = at.max(self.now);
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    // -------------------------------------------------------------------- the loop

    fn run(&mut self) {
        if self.trace.enabled() {
            for line in self.sc.to_string().lines() {
                self.trace.push(line.to_string());
            }
        }
        self.start_engine();
        for i in 0..self.downloads.len() {
            self.submit(i);
        }
        self.schedule(self.heal_at, Ev::Heal);
        loop {
            if !self.violations.is_empty() {
                return;
            }
            if self.steps >= self.opts.max_steps {
                let n = self.steps;
                self.violate(Invariant::BusyLoop, format!("{n} steps without settling"));
                return;
            }
            if !self.healed && self.engine.is_some() {
                if let Some(restart_ms) = self.crash_faults.remove(&self.steps) {
                    self.crash(restart_ms);
                }
            }
            if !self.healed && self.engine.is_some() {
                for (download, action) in
                    self.control_faults.remove(&self.steps).unwrap_or_default()
                {
                    self.control(download, action);
                }
            }
            if self.all_settled() {
                let at = *self.settled_at.get_or_insert(self.now);
                let quiet = self.engine.as_ref().is_none_or(|e| {
                    e.is_idle() && e.poll_timeout().is_none() && self.pending.is_empty()
                });
                if quiet || self.now > at + Duration::from_secs(30) {
                    break;
                }
            }
            let next_event = self.queue.first_key_value().map(|(k, _)| k.0);
            let timer = self.engine.as_ref().and_then(Engine::poll_timeout);
            match (timer, next_event) {
                (None, None) => break,
                (Some(t), e) if e.is_none_or(|e| t < e) => self.tick(t),
                _ => {
                    let ((at, _), ev) = self.queue.pop_first().expect("peeked");
                    self.now = self.now.max(at);
                    self.process(ev);
                }
            }
            self.steps += 1;
            self.check_step();
            if !self.all_settled() && self.now > self.heal_at + LIVENESS_BOUND {
                let stuck: Vec<String> = self
                    .downloads
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| !matches!(d.status, DlStatus::Succeeded | DlStatus::GaveUp))
                    .map(|(i, d)| format!("d{i} ({:?})", d.status))
                    .collect();
                let bound = LIVENESS_BOUND.as_secs();
                let detail = format!("not finished {bound}s after the heal: {}", stuck.join(", "));
                self.violate(Invariant::Liveness, detail);
                return;
            }
        }
        self.final_checks();
    }

    fn all_settled(&self) -> bool {
        self.downloads
            .iter()
            .all(|d| matches!(d.status, DlStatus::Succeeded | DlStatus::GaveUp))
    }

    fn final_checks(&mut self) {
        if !self.violations.is_empty() || !self.all_settled() {
            return;
        }
        if let Some(e) = &self.engine {
            if !e.is_idle() || !self.pending.is_empty() {
                let (jobs, io) = (e.active_jobs(), self.pending.len());
                self.violate(
                    Invariant::CallContract,
                    format!("at the end {jobs} jobs and {io} requests are still pending"),
                );
                return;
            }
        }
        if self.disk.open_files() > 0 {
            let n = self.disk.open_files();
            self.violate(
                Invariant::CallContract,
                format!("{n} files left open at the end"),
            );
        }
        self.log(|| "end: every download settled".to_string());
    }

    fn tick(&mut self, t: Instant) {
        self.now = self.now.max(t);
        self.note_input();
        let now = self.now;
        let engine = self.engine.as_mut().expect("a timer implies an engine");
        engine.handle_input(now, Input::Tick);
        let produced = self.drain();
        let again = self.engine.as_ref().and_then(Engine::poll_timeout);
        if produced == 0 && again.is_some_and(|t| t <= self.now) {
            self.violate(
                Invariant::BusyLoop,
                format!(
                    "a tick did nothing and the next deadline is {} (not in the future)",
                    again.map(fmt_time).unwrap_or_default()
                ),
            );
        }
    }

    fn note_input(&mut self) {
        if self.now == self.last_input_at {
            self.same_instant += 1;
            if self.same_instant == SAME_INSTANT_LIMIT {
                self.violate(
                    Invariant::BusyLoop,
                    format!("{SAME_INSTANT_LIMIT} engine inputs at one instant"),
                );
            }
        } else {
            self.last_input_at = self.now;
            self.same_instant = 0;
        }
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Io(id) => self.complete(id),
            Ev::Deliver(id) => {
                let result = self.delayed.remove(&id).expect("a delivery has its result");
                self.finish_io(id, result);
            }
            Ev::ServerIdleClose { conn, requests } => {
                let now = self.now;
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if c.server_done || c.engine_closed || c.requests != requests {
                    return;
                }
                c.server_done = true;
                let at = now.max(c.tail);
                c.stream.push_back((at, Wire::Eof));
                self.log(|| format!("server closes idle {conn}"));
                self.wake_recv(conn);
            }
            Ev::Restart => self.restart(),
            Ev::Resume(job) => {
                let Some(&i) = self.jobs.get(&job) else {
                    return;
                };
                if self.paused.get(&i) != Some(&job) {
                    return;
                }
                self.paused.remove(&i);
                self.log(|| format!("caller resumes d{i} ({job})"));
                let now = self.now;
                if let Some(engine) = self.engine.as_mut() {
                    engine.resume(now, job);
                    self.drain();
                }
            }
            Ev::Resubmit(i) => {
                if self.downloads[i].status == DlStatus::Waiting {
                    if self.engine.is_some() {
                        self.submit(i);
                    } else {
                        self.downloads[i].status = DlStatus::AwaitingRestart;
                    }
                }
            }
            Ev::Heal => {
                self.healed = true;
                self.log(|| "heal: faults stop; liveness phase begins".to_string());
                // The heal ends every fault, a representation change still in effect
                // included. Such a change counts down in requests to its resource on its
                // host, not in time, and used to outlast the heal by up to `lasting - 1`
                // requests: with a dead primary, every job after the heal spent one request
                // on the changed mirror (a job does not use a URL again after it served
                // wrong bytes) and its other attempts on the dead host, so the download
                // committed only on its fourth job, past LIVENESS_BOUND (seeds 27875, 77266,
                // 81454 with engine cb8e509). The liveness premise was false there, not the
                // engine wrong: see FINDINGS.md.
                for (res, host) in self.origins.heal() {
                    self.log(|| {
                        format!("heal: d{res} on o{host} serves its own representation again")
                    });
                }
            }
        }
    }

    fn start_engine(&mut self) {
        let seed = mix(self.engine_seed, u64::from(self.incarnation));
        let config = engine_config(&self.sc, seed);
        // A new engine has new breakers and a full retry budget.
        self.breakers.reset();
        self.budget = RetryBudget::new(config.retry.budget_per_minute, self.now);
        self.retry_window.reset();
        self.engine = Some(Engine::new(config, self.now).expect("the simulator's config is valid"));
    }

    fn submit(&mut self, i: usize) {
        let d = &self.downloads[i];
        let plan = &self.sc.downloads[i];
        let mut spec = Download::new(&d.urls[0], d.dest.clone()).expect("simulated URLs are valid");
        for m in &d.urls[1..] {
            spec = spec.mirror(m).expect("simulated mirror URLs are valid");
        }
        if let Some(sha) = d.expected_sha {
            spec = spec
                .sha256(&hex::encode(sha))
                .expect("64 hex digits are a valid sha256");
        }
        if let Some(checksum) = &d.checksum {
            spec = spec
                .checksum(ChecksumAlgorithm::Sha512, checksum)
                .expect("128 hex digits are a valid sha-512");
        }
        if plan.size_hint {
            spec = spec.size(u64::from(plan.size));
        }
        if plan.segments > 1 {
            spec = spec
                .segments(u32::from(plan.segments))
                .min_segment(16 * 1024);
        }
        let now = self.now;
        let job = self
            .engine
            .as_mut()
            .expect("submit needs an engine")
            .submit(now, spec);
        self.jobs.insert(job, i);
        self.downloads[i].status = DlStatus::Active {
            job,
            submitted: now,
        };
        self.downloads[i].model = BackoffModel::new(self.downloads[i].urls.len());
        self.breakers.ended(i);
        self.log(|| format!("submit d{i} as {job}"));
        self.drain();
    }

    /// The caller acts on download `download` (modulo their number) if it is running.
    fn control(&mut self, download: u8, action: ControlAction) {
        let i = usize::from(download) % self.downloads.len();
        let DlStatus::Active { job, .. } = self.downloads[i].status else {
            return;
        };
        if self.cancelled.contains_key(&job) || self.paused.contains_key(&i) {
            return;
        }
        let now = self.now;
        match action {
            ControlAction::CancelKeep | ControlAction::CancelDiscard => {
                let mode = if action == ControlAction::CancelKeep {
                    CancelMode::KeepPartial
                } else {
                    CancelMode::Discard
                };
                self.fire(FaultKind::Cancel);
                self.log(|| format!("caller cancels d{i} ({job}, {mode:?})"));
                self.cancelled.insert(job, mode);
                self.engine
                    .as_mut()
                    .expect("checked by the caller")
                    .cancel(now, job, mode);
            }
            ControlAction::Pause { resume_ms } => {
                self.fire(FaultKind::Pause);
                self.log(|| format!("caller pauses d{i} ({job}) for {resume_ms}ms"));
                self.paused.insert(i, job);
                self.engine
                    .as_mut()
                    .expect("checked by the caller")
                    .pause(now, job);
                let at = now + Duration::from_millis(u64::from(resume_ms));
                self.schedule(at, Ev::Resume(job));
            }
        }
        self.drain();
    }

    fn crash(&mut self, restart_ms: u32) {
        self.fire(FaultKind::Crash);
        self.crashes += 1;
        self.log(|| format!("CRASH (restart in {restart_ms}ms)"));
        self.engine = None;
        self.pending.clear();
        self.issued.clear();
        self.conns.clear();
        self.file_last.clear();
        self.file_synced.clear();
        self.file_opened.clear();
        self.send_issued.clear();
        self.breakers.reset();
        self.sync_done_at.clear();
        self.delayed.clear();
        // The process that was refused is gone; whatever it did is judged by the rest.
        self.refused.clear();
        // So are the caller's jobs: the downloads start again, neither paused nor cancelled.
        self.cancelled.clear();
        self.paused.clear();
        self.queue
            .retain(|_, ev| !matches!(ev, Ev::Io(_) | Ev::Deliver(_) | Ev::ServerIdleClose { .. }));
        for (_, i) in std::mem::take(&mut self.jobs) {
            self.downloads[i].status = DlStatus::AwaitingRestart;
        }
        for d in &mut self.downloads {
            d.backoff_until = None;
        }
        self.disk.crash();
        let at = self.now + Duration::from_millis(u64::from(restart_ms));
        self.schedule(at, Ev::Restart);
    }

    fn restart(&mut self) {
        self.incarnation += 1;
        self.start_engine();
        let inc = self.incarnation;
        self.log(|| format!("restart: engine incarnation {inc}"));
        for i in 0..self.downloads.len() {
            if self.downloads[i].status == DlStatus::AwaitingRestart {
                self.submit(i);
            }
        }
    }

    /// Take every output of the engine; returns how many there were.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        loop {
            let Some(engine) = self.engine.as_mut() else {
                return n;
            };
            let Some(out) = engine.poll_output() else {
                break;
            };
            n += 1;
            match out {
                Output::Io(req) => self.on_issue(req),
                Output::Event(e) => self.on_event(e),
            }
        }
        let engine_pending = self.engine.as_ref().map_or(0, Engine::pending_io);
        if engine_pending != self.pending.len() {
            let mine = self.pending.len();
            self.violate(
                Invariant::CallContract,
                format!("the engine counts {engine_pending} pending requests, the world {mine}"),
            );
        }
        n
    }

    // -------------------------------------------------------------------- issuing I/O

    fn on_issue(&mut self, req: IoRequest) {
        let IoRequest { id, op } = req;
        if !self.issued.insert(id) {
            self.violate(Invariant::CallContract, format!("{id:?} issued twice"));
            return;
        }
        self.log(|| format!("io#{} -> {}", id.0, summarize_op(&op)));
        if let Some(conn) = conn_of(&op) {
            if !matches!(op, IoOp::Connect { .. }) {
                match self.conns.get(&conn) {
                    None => {
                        self.violate(
                            Invariant::CallContract,
                            format!("{} on unknown {conn}", summarize_op(&op)),
                        );
                        return;
                    }
                    Some(c) if c.engine_closed => {
                        self.violate(
                            Invariant::CallContract,
                            format!("{} on {conn} after the engine closed it", summarize_op(&op)),
                        );
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
        self.pending.insert(id, op.clone());
        let now = self.now;
        match &op {
            IoOp::Connect { conn, origin, .. } => {
                if self.conns.contains_key(conn) {
                    self.violate(Invariant::CallContract, format!("{conn} connected twice"));
                    return;
                }
                let resolved = origin
                    .host
                    .strip_prefix('o')
                    .and_then(|h| h.strip_suffix(".sim"))
                    .and_then(|n| n.parse::<u8>().ok())
                    .filter(|&n| n < self.sc.origins && origin.port == 80);
                let fault = match resolved {
                    Some(o) => {
                        let nth = self.connects[usize::from(o)];
                        self.connects[usize::from(o)] += 1;
                        if self.healed {
                            None
                        } else {
                            self.connect_faults.get(&(o, nth)).copied()
                        }
                    }
                    None => None,
                };
                if let Some(f) = fault {
                    self.fire(match f {
                        ConnectFault::Refused => FaultKind::Refused,
                        ConnectFault::Dns => FaultKind::Dns,
                        ConnectFault::Hang => FaultKind::ConnectHang,
                    });
                    self.log(|| format!("fault: connect {conn} {f:?}"));
                }
                // A host that does not resolve never sees a request; its connects are the
                // first hops of the one download whose URL names it.
                let dead = origin
                    .host
                    .strip_prefix("dead")
                    .and_then(|h| h.strip_suffix(".sim"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&d| d < self.downloads.len());
                if let Some(d) = dead {
                    let label = format!("http://{}:{}", origin.host, origin.port);
                    self.check_breaker(d, &label, now, true);
                }
                let bytes_per_sec = self.net.log_range(200_000, 20_000_000);
                let hang = fault == Some(ConnectFault::Hang);
                self.conns.insert(
                    *conn,
                    NetConn {
                        origin: resolved,
                        connect_fault: fault,
                        engine_closed: false,
                        connect_parked: hang.then_some(id),
                        inbox: Vec::new(),
                        stream: VecDeque::new(),
                        parked_recv: VecDeque::new(),
                        server_done: false,
                        tail: now,
                        bytes_per_sec,
                        requests: 0,
                    },
                );
                if !hang {
                    let lat = Duration::from_micros(self.net.log_range(100, 30_000));
                    self.schedule(now + lat, Ev::Io(id));
                }
            }
            IoOp::Send { data, .. } => {
                self.check_paused_send(data);
                self.send_issued.insert(id, now);
                let lat = Duration::from_micros(self.net.log_range(20, 2_000));
                self.schedule(now + lat, Ev::Io(id));
            }
            IoOp::Recv { conn, .. } => {
                let c = self.conns.get_mut(conn).expect("checked above");
                c.parked_recv.push_back(id);
                self.wake_recv(*conn);
            }
            IoOp::Close { conn } => {
                let c = self.conns.get_mut(conn).expect("checked above");
                c.engine_closed = true;
                let parked: Vec<IoId> = c
                    .parked_recv
                    .drain(..)
                    .chain(c.connect_parked.take())
                    .collect();
                for p in parked {
                    self.schedule(now, Ev::Io(p));
                }
                self.schedule(now, Ev::Io(id));
            }
            _ => {
                let lat = match &op {
                    IoOp::Sync { .. } => self.disk_rng.log_range(200, 8_000),
                    IoOp::WriteAt { data, .. } => 5 + data.len() as u64 / 1000,
                    _ => self.disk_rng.log_range(5, 1_500),
                };
                let mut at = now + Duration::from_micros(lat);
                if let Some(file) = file_of(&op) {
                    let planted_early_sync = self.sc.bug == Some(PlantedBug::DiskReordersSync)
                        && matches!(op, IoOp::Sync { .. });
                    if planted_early_sync {
                        // The planted bug: a sync overtakes earlier writes to its file
                        // (though not the open).
                        at = self.file_opened.get(&file).copied().unwrap_or(now).max(now);
                    } else {
                        let last = self.file_last.get(&file).copied().unwrap_or(now);
                        at = at.max(last);
                        if matches!(op, IoOp::CloseFile { .. } | IoOp::Publish { .. }) {
                            // CloseFile and Publish complete after everything before them,
                            // syncs included.
                            let synced = self.file_synced.get(&file).copied().unwrap_or(now);
                            at = at.max(synced);
                        }
                        self.file_last.insert(file, at);
                        if matches!(
                            op,
                            IoOp::Open { .. } | IoOp::OpenUnnamed { .. } | IoOp::OpenRead { .. }
                        ) {
                            self.file_opened.insert(file, at);
                        }
                    }
                    if matches!(op, IoOp::Sync { .. }) && self.disk_rng.chance(0.5) {
                        // The contract lets a sync complete after later operations on its
                        // file: it takes effect in order, its completion comes later.
                        let done = at + Duration::from_micros(self.disk_rng.log_range(10, 20_000));
                        self.sync_done_at.insert(id, done);
                        let synced = self.file_synced.entry(file).or_insert(done);
                        *synced = (*synced).max(done);
                    }
                }
                self.schedule(at, Ev::Io(id));
            }
        }
    }

    /// Schedule the completion of a parked `Recv` when the connection has something for it.
    fn wake_recv(&mut self, conn: ConnId) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let ready_at = match c.stream.front() {
            Some((t, _)) => Some(*t),
            None if c.engine_closed => Some(now),
            None => None,
        };
        if let Some(t) = ready_at {
            if let Some(id) = c.parked_recv.pop_front() {
                self.schedule(t.max(now), Ev::Io(id));
            }
        }
    }

    // -------------------------------------------------------------------- completing I/O

    fn complete(&mut self, id: IoId) {
        let Some(op) = self.pending.get(&id).cloned() else {
            // A crash purged the request's events, so this cannot happen.
            panic!("simulator bug: completion for {id:?}, which is not pending");
        };
        let result = match &op {
            IoOp::Connect { conn, .. } => {
                let c = &self.conns[conn];
                if c.engine_closed {
                    failed(IoErrorKind::Cancelled, "connection closed")
                } else if c.origin.is_none() {
                    failed(IoErrorKind::Dns, "no such host")
                } else {
                    match c.connect_fault {
                        Some(ConnectFault::Refused) => {
                            failed(IoErrorKind::ConnectFailed, "connection refused")
                        }
                        Some(ConnectFault::Dns) => {
                            failed(IoErrorKind::Dns, "temporary failure in name resolution")
                        }
                        _ => IoResult::Done,
                    }
                }
            }
            IoOp::Send { conn, data } => {
                let sent = self.send_issued.remove(&id).unwrap_or(self.now);
                if self.conns[conn].engine_closed {
                    failed(IoErrorKind::Cancelled, "connection closed")
                } else {
                    self.deliver_request(*conn, data, sent);
                    IoResult::Done
                }
            }
            IoOp::Recv { conn, max } => {
                let now = self.now;
                let max = *max;
                let c = self
                    .conns
                    .get_mut(conn)
                    .expect("a pending recv has its conn");
                if c.engine_closed {
                    failed(IoErrorKind::Cancelled, "connection closed")
                } else {
                    match c.stream.front() {
                        Some((t, _)) if *t > now => {
                            let t = *t;
                            self.schedule(t, Ev::Io(id));
                            return;
                        }
                        Some((_, Wire::Data(_))) => match c.stream.pop_front() {
                            Some((t, Wire::Data(mut b))) => {
                                if b.len() > max {
                                    // At most `max`: the rest is the next read's.
                                    c.stream.push_front((t, Wire::Data(b.split_off(max))));
                                }
                                IoResult::Data(b)
                            }
                            _ => unreachable!("front was data"),
                        },
                        Some((_, Wire::Eof)) => IoResult::Eof,
                        Some((_, Wire::Reset)) => {
                            failed(IoErrorKind::Reset, "connection reset by peer")
                        }
                        None => {
                            c.parked_recv.push_back(id);
                            return;
                        }
                    }
                }
            }
            IoOp::Close { .. } => IoResult::Done,
            _ => {
                let result = self.execute_disk(&op);
                if let Some(done) = self.sync_done_at.remove(&id) {
                    // Took effect now; completes later.
                    self.delayed.insert(id, result);
                    self.schedule(done, Ev::Deliver(id));
                    return;
                }
                result
            }
        };
        self.finish_io(id, result);
    }

    /// Hand one completion to the engine.
    fn finish_io(&mut self, id: IoId, result: IoResult) {
        self.pending.remove(&id);
        self.log(|| format!("io#{} <- {}", id.0, summarize_result(&result)));
        self.note_input();
        let now = self.now;
        let engine = self.engine.as_mut().expect("pending I/O implies an engine");
        engine.handle_input(now, Input::Io { id, result });
        self.drain();
    }

    fn execute_disk(&mut self, op: &IoOp) -> IoResult {
        if let Some(refusal) = self.partial_busy(op) {
            return refusal;
        }
        let fault = match op {
            IoOp::WriteAt { .. } | IoOp::WriteFileAtomic { .. } | IoOp::CopyFile { .. }
                if !self.healed =>
            {
                let n = self.writes;
                self.writes += 1;
                if self.full_left > 0 {
                    self.full_left -= 1;
                    Some(WriteFault::NoSpace)
                } else {
                    match self.disk_faults.get(&n).copied() {
                        Some(DiskFault::Full { writes }) => {
                            self.fire(FaultKind::DiskFull);
                            self.full_left = writes.saturating_sub(1);
                            Some(WriteFault::NoSpace)
                        }
                        Some(DiskFault::ShortWrite { keep_permille }) => {
                            self.fire(FaultKind::ShortWrite);
                            let len = match op {
                                IoOp::WriteAt { data, .. } => data.len(),
                                _ => 0,
                            };
                            Some(WriteFault::Short {
                                keep: len * usize::from(keep_permille) / 1000,
                            })
                        }
                        None => None,
                    }
                }
            }
            _ => None,
        };
        if let Some(f) = fault {
            self.log(|| format!("fault: disk write {f:?}"));
        }
        let result = self.disk.execute(op, fault);
        if let (IoOp::Publish { .. }, IoResult::Done) = (op, &result) {
            self.count(Feature::UnnamedCommit);
        }
        if !self.disk.misuse.is_empty() {
            let misuse = std::mem::take(&mut self.disk.misuse).join("; ");
            self.violate(Invariant::CallContract, misuse);
        }
        if let (IoOp::WriteFileAtomic { path, data }, IoResult::Done) = (op, &result) {
            if path.to_string_lossy().ends_with(".haul-state") {
                self.check_state_write(path, data);
            }
        }
        result
    }

    fn deliver_request(&mut self, conn: ConnId, data: &Bytes, sent: Instant) {
        let c = self.conns.get_mut(&conn).expect("send on a known conn");
        c.inbox.extend_from_slice(data);
        loop {
            let c = self.conns.get_mut(&conn).expect("known conn");
            match parse_request(&c.inbox) {
                Err(e) => {
                    self.violate(Invariant::CallContract, e);
                    return;
                }
                Ok(None) => return,
                Ok(Some((req, n))) => {
                    c.inbox.drain(..n);
                    if c.server_done {
                        continue;
                    }
                    c.requests += 1;
                    self.serve(conn, &req, sent);
                }
            }
        }
    }

    /// Answer one request that arrived on `conn`; the engine issued its `Send` at `sent`.
    fn serve(&mut self, conn: ConnId, req: &crate::origin::Request, sent: Instant) {
        let origin = self.conns[&conn]
            .origin
            .expect("a connected conn has an origin");
        let expected_host = format!("o{origin}.sim");
        if req.host.as_deref() != Some(expected_host.as_str()) {
            let host = req.host.clone();
            self.violate(
                Invariant::CallContract,
                format!("request on a connection to {expected_host} has Host {host:?}"),
            );
            return;
        }
        if let Some(d) = download_of_path(&req.path).filter(|&d| d < self.downloads.len()) {
            let label = format!("http://{expected_host}:80");
            let first_hop = self.downloads[d]
                .first_hops
                .iter()
                .any(|(o, p)| *o == label && *p == req.path);
            self.check_breaker(d, &label, sent, first_hop);
        }
        let nth = self.requests[usize::from(origin)];
        self.requests[usize::from(origin)] += 1;
        let fault = if self.healed {
            None
        } else {
            self.response_faults.get(&(origin, nth)).copied()
        };
        let reply = self
            .origins
            .respond(origin, req, fault, self.now.since_epoch());
        if let Some(kind) = reply.fired {
            self.fire(kind);
        }
        self.log(|| {
            format!(
                "o{origin} request #{nth} {} range={:?} if-range={:?} -> {}{}",
                req.path,
                req.range_start,
                req.if_range,
                reply.summary,
                match (fault, reply.fired) {
                    (Some(f), Some(_)) => format!(" [fault {f:?}]"),
                    (Some(f), None) => format!(" [fault {f:?} does not apply]"),
                    _ => String::new(),
                }
            )
        });
        if let Some(res) = reply.resource {
            if let Some(until) = self.downloads[res].backoff_until {
                if self.now < until {
                    let (now, until) = (fmt_time(self.now), fmt_time(until));
                    self.violate(
                        Invariant::Backoff,
                        format!("request for d{res} at {now}, before its backoff ends at {until}"),
                    );
                }
            }
        }
        self.push_reply(conn, reply);
    }

    fn piece_size(&mut self) -> usize {
        (match self.net.below(10) {
            0..=1 => self.net.range(1, 64),
            2..=7 => self.net.range(512, 16_384),
            _ => self.net.range(16_384, 65_536),
        }) as usize
    }

    fn push_reply(&mut self, conn: ConnId, reply: crate::origin::Reply) {
        let latency = Duration::from_micros(self.net.log_range(100, 20_000));
        let (bytes_per_sec, tail) = {
            let c = &self.conns[&conn];
            (c.bytes_per_sec, c.tail)
        };
        let mut t = (self.now + latency).max(tail);
        let limit = reply.cut.map_or(reply.wire.len(), |(n, _)| n);
        let mut end = reply.cut.map_or(reply.end, |(_, e)| e);
        let mut pieces = Vec::new();
        let mut offset = 0;
        while offset < limit {
            let size = match reply.trickle {
                Some((piece, gap)) => {
                    if !pieces.is_empty() {
                        t = t + gap;
                    }
                    if pieces.len() >= 64 {
                        // A trickle that outlasts any sane limit: stop here.
                        end = End::Silent;
                        break;
                    }
                    piece
                }
                None => {
                    let size = self.piece_size();
                    t = t + Duration::from_nanos(size as u64 * 1_000_000_000 / bytes_per_sec);
                    size
                }
            }
            .min(limit - offset);
            pieces.push((t, Wire::Data(reply.wire.slice(offset..offset + size))));
            offset += size;
        }
        let c = self.conns.get_mut(&conn).expect("known conn");
        c.stream.extend(pieces);
        c.tail = t;
        let requests = c.requests;
        match end {
            End::KeepOpen => {}
            End::Eof => {
                c.stream.push_back((t, Wire::Eof));
                c.server_done = true;
            }
            End::Reset => {
                c.stream.push_back((t, Wire::Reset));
                c.server_done = true;
            }
            End::Silent => c.server_done = true,
        }
        if end == End::KeepOpen {
            let origin = usize::from(c.origin.expect("served conn has an origin"));
            let at = t + self.idle_close[origin];
            self.schedule(at, Ev::ServerIdleClose { conn, requests });
        }
        self.wake_recv(conn);
    }

    // -------------------------------------------------------------------- events and checks

    fn on_event(&mut self, e: Event) {
        let mark = self.mark();
        let Some(job) = job_of(&e) else {
            self.log(|| format!("event {}", summarize_event(&e)));
            if let Event::BreakerOpened { origin, cooldown } = &e {
                self.count(Feature::BreakerOpened);
                self.breakers.opened(origin, mark, *cooldown);
            }
            return;
        };
        let Some(&i) = self.jobs.get(&job) else {
            self.violate(
                Invariant::OneCompletion,
                format!("event for {job}, which is not running: {e:?}"),
            );
            return;
        };
        self.log(|| format!("event d{i} {}", summarize_event(&e)));
        match e {
            Event::Started { .. } => {
                self.downloads[i].tried_at = self.now;
                self.downloads[i].started_at = self.now;
                self.breakers.attempt_from(i, mark);
            }
            Event::Spread { .. } => {
                self.count(Feature::Spread);
                self.downloads[i].model.spread();
            }
            Event::SingleConnection { .. } => self.count(Feature::SingleConnection),
            Event::Failover { to, .. } => {
                self.count(Feature::Failover);
                self.breakers.attempt_began(i, mark);
                let now = self.now;
                match self.downloads[i].urls.iter().position(|u| *u == to) {
                    Some(k) => {
                        if let Err(why) = self.downloads[i].model.failover(now, k) {
                            self.violate(Invariant::Backoff, format!("d{i} {why}"));
                        }
                    }
                    None => self.violate(
                        Invariant::CallContract,
                        format!("d{i} fails over to {to}, which is none of its URLs"),
                    ),
                }
            }
            Event::Retrying {
                attempt,
                delay,
                error,
                ..
            } => {
                self.check_checksum_error(i, &error);
                if matches!(
                    error,
                    DownloadError::HashMismatch { .. } | DownloadError::SizeMismatch { .. }
                ) {
                    self.count(Feature::VerificationRetry);
                }
                self.check_backoff(i, attempt, delay, &error);
                self.downloads[i].backoff_until = Some(self.now + delay);
                self.downloads[i].tried_at = self.now;
                let from = if delay.is_zero() {
                    mark
                } else {
                    Mark::start_of(self.now + delay)
                };
                self.breakers.attempt_from(i, from);
            }
            Event::Finished { result, .. } => {
                self.jobs.remove(&job);
                if self.paused.get(&i) == Some(&job) {
                    self.paused.remove(&i);
                }
                let refused = self.refused.contains_key(&i);
                self.check_refused_partial(i, &result);
                if let Some(mode) = self.cancelled.remove(&job) {
                    if result == Err(DownloadError::Cancelled) {
                        self.downloads[i].backoff_until = None;
                        self.breakers.ended(i);
                        self.on_cancelled(i, mode, refused);
                        return;
                    }
                }
                self.downloads[i].backoff_until = None;
                self.breakers.ended(i);
                match result {
                    Ok(outcome) => {
                        if self.downloads[i].urls[1..].contains(&outcome.final_url) {
                            self.count(Feature::MirrorCommit);
                        }
                        if self.downloads[i].checksum.is_some() {
                            self.count(Feature::ChecksumCommit);
                        }
                        self.check_outcome(i, &outcome);
                        self.downloads[i].status = DlStatus::Succeeded;
                        // A download whose own URL is dead may still commit through the
                        // engine's deduplication by sha256 (the bytes exist elsewhere); the
                        // per-step content check judges what it committed.
                        self.commits += 1;
                    }
                    Err(error) => {
                        self.check_checksum_error(i, &error);
                        self.check_failed_job(i, &error);
                        self.on_failure(i, &error);
                    }
                }
            }
            _ => {}
        }
    }

    /// The refusal of `op` when it is an open (or a `RemoveUnheld`) of a named partial that
    /// the fault plan says another process holds locked.
    fn partial_busy(&mut self, op: &IoOp) -> Option<IoResult> {
        // An open, or the removal of a partial its job never opened: either finds it held.
        let (path, file) = match op {
            IoOp::Open { path, file, .. } => (path, Some(file)),
            IoOp::RemoveUnheld { path } => (path, None),
            _ => return None,
        };
        if self.healed || !path.to_string_lossy().ends_with(".haul-part") {
            return None;
        }
        let n = self.partial_opens;
        self.partial_opens += 1;
        if !self.busy_faults.contains(&n) {
            return None;
        }
        let i = self
            .downloads
            .iter()
            .position(|d| with_suffix(&d.dest, ".haul-part") == *path)?;
        self.fire(FaultKind::PartialBusy);
        self.log(|| format!("fault: {} held by another process", path.display()));
        match file {
            Some(file) => self
                .disk
                .refuse_open(*file, path, b"another process's bytes"),
            None => self.disk.hold_elsewhere(path, b"another process's bytes"),
        }
        let state = with_suffix(&self.downloads[i].dest, ".haul-state");
        let versions = [self.disk.version(path), self.disk.version(&state)];
        self.refused.entry(i).or_insert(versions);
        Some(failed(IoErrorKind::Busy, "held locked by another process"))
    }

    /// Download `i`'s job ended with `result`: if its partial was refused, it must have
    /// failed, leaving the partial and state as they were; with `PartialInUse` for that
    /// partial, unless the job had already failed for another reason when the refusal came
    /// (a body over the expected size can end it before its partial's open is answered).
    /// A job whose destination already held its bytes succeeds: the refusal was of its
    /// removal of a partial left beside them, which stays.
    fn check_refused_partial(
        &mut self,
        i: usize,
        result: &Result<haul_core::Outcome, DownloadError>,
    ) {
        let Some(before) = self.refused.remove(&i) else {
            return;
        };
        let part = with_suffix(&self.downloads[i].dest, ".haul-part");
        let state = with_suffix(&self.downloads[i].dest, ".haul-state");
        match result {
            Err(DownloadError::PartialInUse { path }) if *path == part => {}
            Ok(o) if o.delivery == haul_core::Delivery::AlreadyPresent => {}
            Err(e) if !matches!(e, DownloadError::PartialInUse { .. }) => {
                self.log(|| format!("check: d{i} had failed before its refusal: {e}"));
            }
            other => {
                let detail = format!("d{i}'s partial was held elsewhere, yet it ended {other:?}");
                return self.violate(Invariant::PartialLock, detail);
            }
        }
        let after = [self.disk.version(&part), self.disk.version(&state)];
        if after != before {
            let detail =
                format!("d{i} changed its refused partial or state: {before:?} -> {after:?}");
            self.violate(Invariant::PartialLock, detail);
        }
    }

    /// A request issued while its download's job is paused breaks the caller's pause.
    fn check_paused_send(&mut self, data: &Bytes) {
        if self.paused.is_empty() {
            return;
        }
        let Ok(Some((req, _))) = parse_request(data) else {
            return;
        };
        let Some(i) = download_of_path(&req.path) else {
            return;
        };
        if let Some(&job) = self.paused.get(&i) {
            let path = req.path.clone();
            self.violate(
                Invariant::Control,
                format!("d{i} ({job}) requests {path} while the caller has it paused"),
            );
        }
    }

    /// Download `i`'s job, which the caller cancelled with `mode`, ended `Cancelled`:
    /// cancelled with `Discard`, it leaves no partial and no state file. A job refused its
    /// partial (another process holds it) leaves that process's files alone instead (see
    /// [`World::check_refused_partial`]). The download is submitted again shortly.
    fn on_cancelled(&mut self, i: usize, mode: CancelMode, refused: bool) {
        if mode == CancelMode::Discard && !refused {
            let dest = &self.downloads[i].dest;
            let left: Vec<String> = [".haul-part", ".haul-state"]
                .iter()
                .map(|s| with_suffix(dest, s))
                .filter(|p| self.disk.version(p).is_some())
                .map(|p| p.display().to_string())
                .collect();
            if !left.is_empty() {
                let detail = format!(
                    "d{i} was cancelled with Discard and left {}",
                    left.join(" and ")
                );
                return self.violate(Invariant::Control, detail);
            }
        }
        self.downloads[i].status = DlStatus::Waiting;
        let at = self.now + Duration::from_millis(300);
        self.schedule(at, Ev::Resubmit(i));
    }

    fn on_failure(&mut self, i: usize, error: &DownloadError) {
        if !self.sc.downloads[i].is_live() {
            self.downloads[i].status = DlStatus::GaveUp;
            return;
        }
        if self.healed {
            self.downloads[i].failures_after_heal += 1;
            if self.downloads[i].failures_after_heal > 3 {
                let detail = format!("d{i} failed 4 times after the heal, last: {error}");
                self.violate(Invariant::Liveness, detail);
                return;
            }
        }
        self.downloads[i].status = DlStatus::Waiting;
        let at = (self.now + Duration::from_millis(500)).max(self.heal_at);
        self.schedule(at, Ev::Resubmit(i));
    }

    fn check_backoff(&mut self, i: usize, attempt: u32, delay: Duration, error: &DownloadError) {
        let policy = engine_config(&self.sc, 0).retry;
        let now = self.now;
        // The engine's budget: it waits for a token and takes it for every retry it starts.
        let budget_wait = self.budget.wait(now);
        self.budget.take(now);
        if !budget_wait.is_zero() {
            self.count(Feature::BudgetWait);
        }
        if let Some(detail) = self.retry_window.retrying(now, i, policy.budget_per_minute) {
            self.violate(Invariant::RetryBudget, detail);
        }
        if attempt < 2 {
            self.violate(
                Invariant::Backoff,
                format!("d{i} retries as attempt {attempt} (allowed from 2)"),
            );
            return;
        }
        let breakers: Vec<Option<Duration>> = self.downloads[i]
            .first_hops
            .iter()
            .map(|(origin, _)| self.breakers.open_for(origin, now))
            .collect();
        let verdict =
            self.downloads[i]
                .model
                .retrying(&policy, now, delay, error, budget_wait, &breakers);
        match verdict {
            Err(why) => self.violate(
                Invariant::Backoff,
                format!("d{i} attempt {attempt} after {error}: {why}"),
            ),
            Ok(kind) => {
                self.log(|| format!("check: d{i} attempt {attempt} is a {kind:?}"));
                // Moving on to an untried URL is no retry: `max_attempts` bounds the rest.
                let max = policy.max_attempts + self.downloads[i].model.failovers();
                if attempt > max {
                    self.violate(
                        Invariant::Backoff,
                        format!("d{i} retries as attempt {attempt} (allowed 2..={max}, failovers counted out)"),
                    );
                }
            }
        }
        let slack = Duration::from_micros(1);
        if let DlStatus::Active { .. } = self.downloads[i].status {
            let elapsed = now.saturating_since(self.downloads[i].started_at);
            if elapsed + delay > policy.max_elapsed + slack {
                self.violate(
                    Invariant::Backoff,
                    format!(
                        "d{i} retries {elapsed:?} + {delay:?} after it left the queue, past max_elapsed"
                    ),
                );
            }
        }
    }

    /// Download `i`'s job ended with `error` after a failed verification, with attempts and
    /// time left: that is wrong for a job with several URLs while one of them has not served
    /// wrong bytes (it retries there), and for a job with one URL that has not used its one
    /// retry after a hash mismatch. (A size mismatch of a job with one URL may end it at
    /// once: a `Content-Length` or a body that overruns `Download::size`.)
    /// A download's checksum is the digest of the bytes its SHA-256 proves, and the
    /// read-back runs only after the SHA-256 passed: a mismatch means it hashed other bytes.
    fn check_checksum_error(&mut self, i: usize, error: &DownloadError) {
        if let DownloadError::ChecksumMismatch { .. } = error {
            self.violate(
                Invariant::CommittedBytes,
                format!("d{i}: {error}, though its SHA-256 passed on the same bytes"),
            );
        }
    }

    fn check_failed_job(&mut self, i: usize, error: &DownloadError) {
        let policy = engine_config(&self.sc, 0).retry;
        let now = self.now;
        let budget_wait = self.budget.wait(now);
        let d = &self.downloads[i];
        let attempt = d.model.attempt();
        let DlStatus::Active { submitted, .. } = d.status else {
            return;
        };
        let time_left = now.saturating_since(submitted) + policy.max_delay.max(budget_wait)
            <= policy.max_elapsed;
        if attempt >= policy.max_attempts || !time_left {
            return;
        }
        let urls = d.urls.len();
        let detail = match error {
            DownloadError::HashMismatch { .. } | DownloadError::SizeMismatch { .. }
                if urls > 1 && d.model.urls_left_after_bad() > 0 =>
            {
                let left = d.model.urls_left_after_bad();
                format!(
                    "d{i} ended on attempt {attempt} with {error}, though {left} of its {urls} \
                     URLs had not served wrong bytes"
                )
            }
            DownloadError::HashMismatch { .. } if urls == 1 && !d.model.verification_retried() => {
                format!(
                    "d{i} (one URL) ended on attempt {attempt} with {error}, without its retry \
                     after a failed verification"
                )
            }
            // A retryable failure with attempts and time left ends a job only behind
            // breakers: every URL it may use at an origin whose breaker stays open past the
            // longest the engine waits, as long as the job's own retries would have lasted
            // (at least their backoffs from the ones it has taken, for the attempts left
            // not counting failovers), or the first cool-down if longer (unless the policy
            // never retries), counted from no earlier than its last try.
            error if error.retryable() => {
                let config = engine_config(&self.sc, 0);
                let retries = policy.max_attempts.saturating_sub(attempt);
                let floor = if policy.max_attempts > 1 {
                    config.breaker.cooldown
                } else {
                    Duration::ZERO
                };
                let allowance = policy
                    .backoffs_total(d.model.backoffs_at_least(), retries)
                    .max(floor);
                // Or past the retries' time limit (a cool-down may outlast the longest
                // backoff).
                let ends = (d.tried_at + allowance).min(d.started_at + policy.max_elapsed);
                let held = d
                    .first_hops
                    .iter()
                    .enumerate()
                    .filter(|(u, _)| !d.model.is_bad(*u))
                    .all(|(_, (origin, _))| {
                        self.breakers
                            .open_for(origin, now)
                            .is_some_and(|wait| now + wait > ends)
                    });
                if held {
                    return;
                }
                format!(
                    "d{i} ended on attempt {attempt} with {error} (retryable), with attempts and \
                     time left, and not every URL it may use behind a breaker open past {ends} \
                     (its last try at {} and {allowance:?} of retries)",
                    d.tried_at
                )
            }
            _ => return,
        };
        self.violate(Invariant::Backoff, detail);
    }

    /// A request (or, for a host that does not resolve, a connect) of download `d` to
    /// `origin`, issued at `sent`; `first_hop` when it is for one of the download's URLs.
    fn check_breaker(&mut self, d: usize, origin: &str, sent: Instant, first_hop: bool) {
        match self.breakers.request(d, origin, sent, first_hop) {
            BreakerVerdict::Fine => {}
            BreakerVerdict::RedirectPastOpenBreaker => {
                self.count(Feature::RedirectPastOpenBreaker);
                self.log(|| {
                    format!("note: d{d} follows a redirect to {origin}, whose breaker is open")
                });
            }
            BreakerVerdict::Violation(detail) => self.violate(Invariant::Breaker, detail),
        }
    }

    fn check_outcome(&mut self, i: usize, o: &haul_core::Outcome) {
        let dest = self.downloads[i].dest.clone();
        let problem = if o.path != dest {
            Some(format!(
                "outcome path {} is not {}",
                o.path.display(),
                dest.display()
            ))
        } else {
            match self.disk.read(&dest) {
                None => Some("the destination does not exist".to_string()),
                Some(data) if data.len() as u64 != o.size => Some(format!(
                    "outcome size {} but the file has {} bytes",
                    o.size,
                    data.len()
                )),
                Some(data) if <[u8; 32]>::from(Sha256::digest(data)) != o.sha256 => {
                    Some("outcome sha256 differs from the file's".to_string())
                }
                Some(_) => None,
            }
        };
        if let Some(p) = problem {
            self.violate(Invariant::Outcome, format!("d{i}: {p}"));
        }
    }

    fn check_state_write(&mut self, path: &std::path::Path, data: &[u8]) {
        let state: PartState = match serde_json::from_slice(data) {
            Ok(s) => s,
            Err(e) => {
                self.violate(
                    Invariant::StateFile,
                    format!("unparsable state written to {}: {e}", path.display()),
                );
                return;
            }
        };
        // A destination's working files share one stem, even a long name's shortened one
        // (`haul_core::download::working_sibling`).
        let s = path.to_string_lossy();
        let part = PathBuf::from(format!("{}.haul-part", s.trim_end_matches(".haul-state")));
        let problem = match self.disk.durable_data_of(&part) {
            None => Some(format!("{} does not exist", part.display())),
            Some(durable) if (durable.len() as u64) < state.verified => Some(format!(
                "only {} bytes of the partial are durable",
                durable.len()
            )),
            Some(durable) => {
                let digest = hex::encode(Sha256::digest(&durable[..state.verified as usize]));
                (digest != state.prefix_sha256)
                    .then(|| "the durable prefix has another digest".to_string())
            }
        };
        if let Some(p) = problem {
            let detail = format!(
                "{} names {} verified bytes but {p}",
                path.display(),
                state.verified
            );
            return self.violate(Invariant::StateFile, detail);
        }
        if let Some(p) = self.named_bytes_problem(path, &part, &state) {
            self.violate(Invariant::StateFile, format!("{}: {p}", path.display()));
        }
    }

    /// Why the bytes a state names (its verified prefix and its ranges) are not all durable
    /// and of one representation the origins served, if they are not: a resume trusts the
    /// ranges as they are, so a splice or a lost range here would be committed later. The
    /// representation is checked for downloads without an expected sha256 (with one, the
    /// final check proves the file).
    fn named_bytes_problem(
        &self,
        path: &std::path::Path,
        part: &std::path::Path,
        state: &PartState,
    ) -> Option<String> {
        let durable = self.disk.durable_data_of(part)?;
        let named: Vec<(u64, u64)> = std::iter::once((0, state.verified))
            .chain(state.ranges.iter().copied())
            .filter(|(s, e)| s < e)
            .collect();
        if let Some((s, e)) = named.iter().find(|(_, e)| *e > durable.len() as u64) {
            return Some(format!(
                "names bytes {s}..{e} but only {} are durable",
                durable.len()
            ));
        }
        let i = self
            .downloads
            .iter()
            .position(|d| haul_core::download::working_sibling(&d.dest, ".haul-state") == path)?;
        if self.downloads[i].expected_sha.is_some() {
            return None;
        }
        let r = &self.origins.resources[i];
        let of_one = r.served.iter().any(|&v| {
            let body = r.versions[v].body.as_ref();
            named.iter().all(|&(s, e)| {
                let (s, e) = (s as usize, e as usize);
                body.get(s..e) == Some(&durable[s..e])
            })
        });
        (!of_one)
            .then(|| format!("names bytes {named:?} that are not all of one served representation"))
    }

    /// The per-step invariants: every committed destination, in the volatile view and in
    /// the view a crash would leave, holds acceptable bytes.
    fn check_step(&mut self) {
        for i in 0..self.downloads.len() {
            for durable in [false, true] {
                let dest = self.downloads[i].dest.clone();
                let version = if durable {
                    self.disk.durable_version(&dest)
                } else {
                    self.disk.version(&dest)
                };
                let slot = usize::from(durable);
                if version.is_none() || version == self.downloads[i].checked[slot] {
                    continue;
                }
                self.downloads[i].checked[slot] = version;
                let data = if durable {
                    self.disk.read_durable(&dest)
                } else {
                    self.disk.read(&dest)
                }
                .expect("versioned path exists");
                if let Some(problem) = self.judge(i, data) {
                    let view = if durable { "durable" } else { "visible" };
                    self.violate(
                        Invariant::CommittedBytes,
                        format!("{view} {}: {problem}", self.downloads[i].dest.display()),
                    );
                }
            }
        }
    }

    /// Why `data` is not an acceptable committed file for download `i`, if it is not.
    fn judge(&self, i: usize, data: &[u8]) -> Option<String> {
        match self.downloads[i].expected_sha {
            Some(expected) => {
                let actual: [u8; 32] = Sha256::digest(data).into();
                (actual != expected).then(|| {
                    format!(
                        "{} bytes with sha256 {}, expected {}",
                        data.len(),
                        &hex::encode(actual)[..16],
                        &hex::encode(expected)[..16]
                    )
                })
            }
            None => {
                let r = &self.origins.resources[i];
                splice_problem(&r.versions, &r.served, data)
            }
        }
    }
}

/// Why `data` is not one whole representation among `served` (indexes into `versions`,
/// which hold every origin's representations of a resource), if it is not: a splice of
/// two representations, from one origin or from two, or a corruption.
pub fn splice_problem(
    versions: &[Representation],
    served: &BTreeSet<usize>,
    data: &[u8],
) -> Option<String> {
    let matches = served.iter().any(|&v| versions[v].body.as_ref() == data);
    (!matches).then(|| {
        let notes: Vec<String> = served
            .iter()
            .map(|&v| format!("v{v} {}", versions[v].note))
            .collect();
        format!(
            "{} bytes equal to none of the {} representations served ({}): a splice or a \
             corruption",
            data.len(),
            served.len(),
            notes.join(", ")
        )
    })
}

/// The download a request path is about: `/f/d3`, `/r/d3` and `/loop/a/d3` are all d3's.
fn download_of_path(path: &str) -> Option<usize> {
    path.rsplit('/').next()?.strip_prefix('d')?.parse().ok()
}

/// `path` with `suffix` appended to its file name (how the engine names working files).
fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(body: &[u8], note: &str) -> Representation {
        Representation {
            body: Bytes::copy_from_slice(body),
            etag: format!("\"{note}\""),
            modified: 0,
            note: note.into(),
        }
    }

    #[test]
    fn a_splice_of_two_origins_representations_is_caught() {
        // The home origin's canonical bytes, a mirror's twin (same bytes, own validator) and
        // a change published on the mirror.
        let versions = vec![
            rep(b"aaaaaaaa", "canonical"),
            rep(b"aaaaaaaa", "twin on mirror o1"),
            rep(b"bbbbbbbb", "change on o1"),
        ];
        let served = BTreeSet::from([0, 1, 2]);
        assert_eq!(splice_problem(&versions, &served, b"aaaaaaaa"), None);
        assert_eq!(splice_problem(&versions, &served, b"bbbbbbbb"), None);
        let spliced = splice_problem(&versions, &served, b"aaaabbbb").expect("a splice");
        assert!(spliced.contains("change on o1"), "{spliced}");
        // Only what was served counts.
        let only_home = BTreeSet::from([0]);
        assert!(splice_problem(&versions, &only_home, b"bbbbbbbb").is_some());
    }

    /// A world with a download that expects no sha256 (its state's bytes are checked against
    /// the representations), every representation of it counted as served; its index.
    fn world_with_an_unhashed_download() -> (World, usize) {
        for seed in 1..200 {
            let mut w = World::new(
                crate::scenario::Scenario::generate(seed),
                RunOptions::default(),
            );
            if let Some(i) = w.downloads.iter().position(|d| d.expected_sha.is_none()) {
                let r = &mut w.origins.resources[i];
                r.served = (0..r.versions.len()).collect();
                return (w, i);
            }
        }
        panic!("no scenario with a download without a sha256");
    }

    /// A state naming `ranges` (and no verified prefix) of download `i`'s partial, which
    /// holds `bytes`, durable when `sync`: the `StateFile` violations the check finds.
    fn state_check(bytes: &[u8], sync: bool, ranges: Vec<(u64, u64)>) -> Vec<String> {
        use haul_core::resume::{Validator, STATE_VERSION};
        use haul_core::{FileId, IoOp};
        let (mut w, i) = world_with_an_unhashed_download();
        let dest = w.downloads[i].dest.clone();
        let part = haul_core::download::working_sibling(&dest, ".haul-part");
        let file = FileId(1);
        let open = IoOp::Open {
            file,
            path: part,
            truncate: false,
        };
        w.disk.execute(&open, None);
        let data = Bytes::copy_from_slice(bytes);
        w.disk.execute(
            &IoOp::WriteAt {
                file,
                offset: 0,
                data,
            },
            None,
        );
        if sync {
            w.disk.execute(&IoOp::Sync { file }, None);
        }
        let state = PartState {
            version: STATE_VERSION,
            url: w.downloads[i].urls[0].clone(),
            validator: Validator::Etag("\"v\"".into()),
            resource: None,
            source: None,
            total: Some(bytes.len() as u64),
            verified: 0,
            prefix_sha256: hex::encode(Sha256::digest(b"")),
            ranges,
            single_connection: false,
        };
        let path = haul_core::download::working_sibling(&dest, ".haul-state");
        w.check_state_write(&path, &state.encode());
        w.violations
            .iter()
            .filter(|v| v.invariant == Invariant::StateFile)
            .map(|v| v.detail.clone())
            .collect()
    }

    #[test]
    fn a_state_naming_ranges_that_are_not_durable_is_a_state_file_violation() {
        let found = state_check(&[7u8; 1_000], false, vec![(0, 1_000)]);
        assert!(
            found.iter().any(|d| d.contains("durable")),
            "a state naming 1,000 bytes of which none is durable passed: {found:?}"
        );
    }

    #[test]
    fn a_state_naming_bytes_of_two_representations_is_a_state_file_violation() {
        let (w, i) = world_with_an_unhashed_download();
        let first = w.origins.resources[i].versions[0].body.clone();
        let len = first.len();
        assert!(len >= 2, "a body to splice");
        let mut spliced = first.to_vec();
        for b in &mut spliced[len / 2..] {
            *b ^= 0x5a;
        }
        let whole = vec![(0, len as u64)];
        assert_eq!(
            state_check(&first, true, whole.clone()),
            Vec::<String>::new()
        );
        let found = state_check(&spliced, true, whole);
        assert!(
            found
                .iter()
                .any(|d| d.contains("one served representation")),
            "{found:?}"
        );
    }

    #[test]
    fn request_paths_name_their_download() {
        assert_eq!(download_of_path("/f/d3"), Some(3));
        assert_eq!(download_of_path("/r/d12"), Some(12));
        assert_eq!(download_of_path("/loop/a/d0"), Some(0));
        assert_eq!(download_of_path("/"), None);
        assert_eq!(download_of_path("/f/x"), None);
    }
}
