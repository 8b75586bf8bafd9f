//! The download engine: a deterministic state machine driven by inputs and time.
//!
//! # Call contract
//!
//! The engine never performs I/O and never reads a clock. A driver (a runtime or the
//! simulator) owns it and loops:
//!
//! 1. **Commands**: [`Engine::submit`], [`Engine::cancel`], [`Engine::pause`],
//!    [`Engine::resume`] and [`Engine::set_rate_limit`] at any time.
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
//! [`FileId`] must be executed in the order they were issued and completed in that order,
//! except that a `Sync` may complete after later operations on the same file (it covers
//! every write issued before it); `CloseFile` completes after everything issued before it.
//! Operations on different files, paths and connections may run concurrently and complete
//! in any order; the engine never has two operations on one path outstanding when their
//! order matters.
//!
//! `now` must never decrease between calls; a smaller `now` is treated as the last one seen.
//!
//! # What a job does
//!
//! A job (one [`Download`]) waits in a priority queue until a slot is free and its
//! dependencies succeeded, then: (when a sha256 is expected) checks whether the destination
//! already holds those bytes → loads the state file beside the partial (if any) → re-hashes
//! the durable prefix it names and checks it against the recorded digest → requests (with
//! `Range`/`If-Range` when resuming) → follows redirects → streams the body through the
//! SHA-256 hasher into `WriteAt`s on `<dest>.haul-part`, checkpointing (sync, then state file)
//! as it goes → verifies size and hash → (with another checksum, [`Download::checksum`])
//! reads the file back to check that digest too → syncs, closes and renames over the
//! destination.
//!
//! With `segments > 1` and a server that honours ranges with a strong validator, the rest of
//! the file is split over several connections ([`crate::sched::plan_segments`]); a connection
//! that finishes its segment steals from the one expected to end last
//! (`steal_victim`, [`crate::sched::steal_point`]: the victim keeps what it
//! receives during the thief's first-byte wait plus half the rest, never below the minimum
//! segment size), so fast connections end up carrying more; when nothing is left to split,
//! a free connection takes over a segment that has gone silent (`Transfer::stalled_at`), or
//! that goes far slower than the job's best finished segment (`Transfer::lagging`: a slow
//! mirror).
//! A job with an expected sha256 spreads its segments over its mirrors (the hash proves the
//! assembled file; another mirror's 206 is checked by its length, not by the attempt's
//! validator); a mirror whose segment fails gets no more of them, and an assembled file
//! that fails verification starts over once with every segment on one URL. The hash still
//! covers the whole file in order: bytes at the hashed frontier are hashed as they arrive,
//! bytes further on are written first and read back from disk when the frontier reaches them.
//! A segment answered with the whole file (200), or with a 206 that does not fit the file
//! (another validator, range or length), makes the attempt start over from zero; when an
//! earlier answer of this run carried the validator it disagrees with, the server cannot serve
//! segments that fit together (it ignores some ranges, or its nodes tag the file differently),
//! and the job keeps to one connection for the rest of its life ([`Event::SingleConnection`]).
//!
//! Retryable failures back off (exponential, equal jitter, [`crate::config::RetryPolicy`]) and
//! resume from the bytes already received; every retry also takes a token of the engine-wide
//! retry budget. Each origin (scheme, host, port) has a circuit breaker
//! ([`crate::policy::Breaker`]) shared by all jobs: failures that say the origin is unhealthy
//! ([`DownloadError::counts_against_origin`]) open it, and while it is open no attempt starts
//! there. A job with mirrors picks, at each attempt, the URL whose origin is admitted and
//! scores best ([`crate::policy::choose_mirror`]); after a failure it fails over at once to a
//! URL that has not failed since its last backoff, and backs off only when every URL has. A
//! failed verification (sha256, another checksum, or size) is retried from zero: once when
//! the job has one URL, else on each other URL that has not served wrong bytes yet. A job
//! whose URL or expected sha256 equals a running job's (with the same other expectations) is
//! deduplicated: it waits for that job and copies its result.

mod checksum;
mod files;
mod meter;
mod resilience;
mod transfer;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::download::{Delivery, Destination, Download, Outcome};
use crate::error::{DownloadError, ErrorClass, TimeoutKind};
use crate::http::Origin;
use crate::io::{ConnId, FileId, IoFailure, IoId, IoOp, IoRequest, IoResult};
use crate::policy::{Breaker, MirrorStats, RetryBudget};
use crate::resume::{PartState, Validator, STATE_MAX_BYTES};
use crate::rng::SeededRng;
use crate::sched::{Priority, RangeSet, TokenBucket};
use crate::time::Instant;

use meter::RateMeter;
#[cfg(test)]
pub(crate) use resilience::ORIGIN_STATS_MAX;
use transfer::Transfer;

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
    /// The job was accepted and waits for a slot (or for its dependencies).
    Queued { job: JobId, url: String },
    /// The job left the queue and starts now.
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
        /// Whether the bytes go to a named partial that a cancel keeping partials, an error
        /// or a crash leaves for a later resume; false for a file written unnamed (small
        /// ones, see [`Config::unnamed_max`](crate::Config::unnamed_max)), of which nothing
        /// survives, and for a response without a validator (`ETag`, `Last-Modified`) that
        /// a resume could be checked against, whose partial is not kept.
        resumable: bool,
    },
    /// The job moved to another of its URLs for this attempt (after a failure, or because
    /// its first URL's origin is behind an open breaker or a mirror scores better).
    Failover {
        job: JobId,
        from: String,
        to: String,
    },
    /// An origin's circuit breaker opened after repeated failures: no new request goes
    /// there for `cooldown` (then one probe).
    BreakerOpened { origin: String, cooldown: Duration },
    /// The download was split over several connections.
    Segmented { job: JobId, segments: u32 },
    /// The server's answer to a segment could not be put together with its other answers
    /// (`reason`: a range answered with the whole file, or with a 206 of another validator,
    /// range or length): the job starts over and uses one connection for the rest of its life.
    SingleConnection { job: JobId, reason: String },
    /// A segment of the job went to `url`, another of its URLs than the attempt's: the
    /// expected sha256 proves the assembled file. Sent once per job; from then on its first
    /// failed verification blames no URL (it starts over with every segment on one URL).
    Spread { job: JobId, url: String },
    /// Body bytes were received.
    Progress {
        job: JobId,
        /// Bytes of the file now present (resumed prefix included).
        bytes: u64,
        /// Complete length, when known.
        total: Option<u64>,
        /// The job's receive rate in bytes per second over the last second (0 until a
        /// quarter of a second of bytes has arrived).
        rate: u64,
        /// How long the rest takes at that rate, when the length and a rate are known.
        eta: Option<Duration>,
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

impl Event {
    /// The job the event is about (`None` for events about an origin).
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::Queued { job, .. }
            | Event::Started { job, .. }
            | Event::Segmented { job, .. }
            | Event::SingleConnection { job, .. }
            | Event::Spread { job, .. }
            | Event::Resuming { job, .. }
            | Event::Redirected { job, .. }
            | Event::Response { job, .. }
            | Event::Failover { job, .. }
            | Event::Progress { job, .. }
            | Event::Retrying { job, .. }
            | Event::Finished { job, .. } => Some(*job),
            Event::BreakerOpened { .. } => None,
        }
    }
}

/// What cancelling does to the partial download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// Keep the partial file and its state so a later run resumes.
    KeepPartial,
    /// Remove the partial file and its state.
    Discard,
}

/// Counters over the engine's life, for progress displays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Jobs started and not finished: transferring now, or verifying and committing their
    /// file. Those committing hold no download slot (the next download starts meanwhile), so
    /// this may exceed [`Config::max_active_jobs`](crate::Config::max_active_jobs), by at most
    /// [`Config::max_committing_jobs`](crate::Config::max_committing_jobs).
    pub active: usize,
    /// Jobs waiting for a slot or a dependency, and paused jobs (which hold no slot).
    pub queued: usize,
    /// Jobs that succeeded.
    pub done: usize,
    /// Jobs that failed.
    pub failed: usize,
    /// Jobs that were cancelled.
    pub cancelled: usize,
    /// Body bytes received in total.
    pub bytes: u64,
    /// Rate over the last second, bytes/s.
    pub current_rate: f64,
    /// Rate since the first job started, bytes/s.
    pub average_rate: f64,
    /// Highest rate over a whole second of transfer or more: the best one-second window, or
    /// `average_rate` when that is higher (the whole time since the first start is such a
    /// span too; a last window cut short by the end counts in the average only). 0 until the
    /// first second has passed, so a shorter transfer has none; see `current_rate` and
    /// `average_rate`.
    pub peak_rate: f64,
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// A backoff ended: start the next attempt.
    Backoff,
    /// A rate limit allows the transfer to receive again.
    Throttle,
    /// A timeout fired.
    Timeout(TimeoutKind),
    /// A segment stalled while a connection is free: take it over.
    Stalled,
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
    OpenExisting,
    HashExisting,
    CloseExisting,
    ReadState,
    OpenPartial,
    OpenFresh,
    /// A read of the partial's prefix at `offset`, to hash it again.
    Rehash {
        offset: u64,
    },
    SetLen,
    Write {
        len: u64,
    },
    /// A read-back for the hash of the bytes at `offset`, issued in hashing epoch `epoch`.
    CatchUp {
        epoch: u32,
        offset: u64,
    },
    /// A read-back of the verified file at `offset` for its other checksum (see
    /// `checksum`), issued in hashing epoch `epoch`.
    Checksum {
        epoch: u32,
        offset: u64,
    },
    CheckpointSync {
        verified: u64,
    },
    /// The executor's digest of the first `len` bytes for a checkpoint (a file hashed by
    /// the executor), asked in hashing epoch `epoch`.
    CheckpointDigest {
        epoch: u32,
        len: u64,
    },
    CheckpointState,
    /// A sync issued once every byte was in while the hash was still reading back bytes
    /// that arrived out of order, in hashing epoch `epoch`.
    EarlySync {
        epoch: u32,
    },
    FinalSync,
    Close,
    Rename,
    /// The executor's digest of an unnamed file (see `Job::digest`), asked in hashing
    /// epoch `epoch`.
    Digest {
        epoch: u32,
    },
    /// The unnamed file gets its name (and is closed).
    Publish,
    RemovePart,
    RemoveState,
    CopyFromLeader,
    /// Is there a file at the name the server gave (`Job::name_probe`)? An open of it.
    ProbeName {
        file: FileId,
    },
    /// The probe found one and closes it.
    CloseProbe,
    /// The removal of a partial this run never opened, if nobody holds it
    /// (`CleanStep::Claim`).
    Claim,
    /// The removal of a partial left at a destination that holds the expected bytes, if
    /// nobody holds it ([`Phase::Tidying`]), then of its state file.
    TidyPart,
    TidyState,
}

/// Whether a file exists at the name a response gave a download into a directory
/// (`Content-Disposition`), when that differs from the URL's: a name the server chose
/// never replaces a file, so the commit waits for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameProbe {
    /// No name from the server, or the URL's own name.
    NotNeeded,
    /// The open of that path is in flight.
    Pending,
    /// Nothing is there: the commit may go on.
    Free,
    /// Something is there (or it could not be told): the job fails.
    Taken,
}

#[derive(Debug)]
enum ConnState {
    Connecting { owner: (JobId, u64) },
    Busy { owner: (JobId, u64) },
    Idle { since: Instant },
    Closing,
}

#[derive(Debug)]
struct Conn {
    origin: Origin,
    via: Option<crate::proxy::ProxyHop>,
    state: ConnState,
    /// Responses completed on this connection (> 0 means it is being reused).
    served: u32,
}

/// Whether a job may split its download over several connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Splitting {
    /// Over up to `segments` connections, once an answer shows that the server honours
    /// ranges with a strong validator.
    Allowed,
    /// One connection for the rest of the job: two answers of this run could not be put
    /// together (a segment's range answered with the whole file, or with a 206 of another
    /// validator, range or length: a server that ignores some ranges, or whose nodes tag
    /// the file differently), and splitting again would fail the same way.
    SingleConnection,
}

/// Where a job's validator comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValidatorSource {
    /// An answer of this run gave it, or carried it when it was already known (also while
    /// the job has none: the next answer gives it).
    ThisRun,
    /// The state file of a partial from an earlier run, and no answer of this run carried it
    /// yet: an answer with another validator may just be of a file changed since.
    StateFile,
}

/// Steps of tidying up after a failure, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CleanStep {
    Start,
    Checkpoint,
    Close,
    Remove,
    /// A job that removes a partial it never opened asks for it to be removed only if no
    /// process holds it ([`IoOp::RemoveUnheld`]): another process's download stays.
    Claim,
    /// Remove the partial and the state file by name.
    RemoveBoth,
    /// The claimed partial is gone: remove the state file.
    RemoveState,
    Report,
}

/// Where a job is in its life.
#[derive(Debug)]
enum Phase {
    /// Waiting for a slot or its dependencies.
    Queued,
    /// Deduplicated: waiting for `leader` to finish, then copying its file.
    Following { leader: JobId },
    /// Copying the leader's committed file to this job's destination.
    Copying { outcome: Outcome },
    /// Checking whether the destination already holds the expected bytes: its SHA-256 and,
    /// when the download has one, its other checksum (`checksum`).
    CheckingExisting {
        offset: u64,
        len: u64,
        checksum: Option<checksum::ChecksumHasher>,
    },
    /// The destination already holds the expected bytes (`outcome`): a partial of it an
    /// earlier run left, and that partial's state file, are removed before the job
    /// finishes (the partial only if nobody holds it: it may be another process's).
    Tidying { outcome: Outcome },
    /// Reading the state file.
    LoadingState,
    /// Opening an existing partial to check it.
    OpeningPartial { state: PartState },
    /// Hashing the partial's verified prefix again, hashed up to `offset`.
    Rehashing {
        state: PartState,
        offset: u64,
        reads: ReadAhead,
    },
    /// Transfers are running (or waiting for connections).
    Running,
    /// Paused by the caller; transfers are closed, the partial stays open.
    Paused,
    /// Waiting to start the next attempt.
    Backoff { until: Instant },
    /// Size and SHA-256 (`digest`) verified; reading the file back for its other checksum,
    /// hashed up to `offset` (see `checksum`).
    Checksumming {
        digest: [u8; 32],
        hasher: checksum::ChecksumHasher,
        offset: u64,
        reads: ReadAhead,
    },
    /// Verified; syncing, closing and renaming.
    Committing { dest: PathBuf, digest: [u8; 32] },
    /// Failed or cancelled; cleaning up before reporting `error`.
    CleaningUp {
        error: DownloadError,
        keep: bool,
        step: CleanStep,
        /// The partial and state on disk were never touched by this run: leave them.
        untouched: bool,
    },
}

/// What a running checkpoint is making durable: the hashed prefix length, its hex digest,
/// and the received ranges beyond it.
type PendingPrefix = (u64, String, Vec<(u64, u64)>);

#[derive(Debug)]
struct Job {
    id: JobId,
    spec: Download,
    /// `spec.part_path()`, computed once (the engine asks for it at every file step).
    part_path: PathBuf,
    submitted: Instant,
    /// When the job last left the queue, or last failed after it made progress (see
    /// `resilience::PROGRESS_RENEWS_RETRIES`): its retries' time limit counts from here,
    /// not from its submission (a long list's later jobs would otherwise get no retries at
    /// all, and a long download none after a late failure).
    started: Instant,
    /// It follows a download that fetches the same bytes (found by `find_leader`), not one
    /// whose destination it waits for: only such a follower may end with its leader's
    /// failure (see `Engine::finish`).
    duplicate: bool,
    /// It tries again for its fellow duplicates what their leader failed without a retry
    /// (a 404): its own failure of that kind is theirs too (see `Engine::finish`).
    retry_for_duplicates: bool,
    /// What the file held (`Job::present`) when its retries were last renewed.
    progress_mark: u64,
    /// Tries made before its retries were last renewed: they no longer count against
    /// `RetryPolicy::max_attempts` (see [`Job::tries_counted`]).
    renewed: u32,
    phase: Phase,
    attempt: u32,
    /// Attempts that moved on to a URL not tried in their round (a failover): they do not
    /// count against `RetryPolicy::max_attempts`.
    failovers: u32,
    /// Backoff delays taken so far (the exponent of the next one).
    backoffs: u32,
    /// Which URL this attempt uses: 0 is `spec.url`, i > 0 is `spec.mirrors[i - 1]`.
    mirror: usize,
    /// URLs that failed since the last backoff: a failover goes to one not in here.
    failed_round: Vec<usize>,
    /// The URL whose response gave `validator`: an index as for `mirror`, or
    /// [`UNLISTED_SOURCE`] for one a state file named that the download no longer lists
    /// (`unlisted_source`).
    validator_mirror: usize,
    /// The URL a state file named as its bytes' source when the download no longer lists it:
    /// kept in the states this job writes, so that they never name another URL's.
    unlisted_source: Option<String>,
    /// The file (the last path segment of the URL, after redirects) whose response gave
    /// `validator`, when known: a validator vouches only for its own resource, and a URL
    /// that redirects elsewhere than it did (`/latest` to `v2.iso` instead of `v1.iso`) may
    /// find the same ETag on other bytes there (see `transfer::resource_of`).
    validator_resource: Option<String>,
    /// The one retry after a failed verification (hash or size) was used (a job without
    /// mirrors).
    verify_retry_used: bool,
    /// URLs that served bytes failing verification, or failed in a way of their own (a
    /// 404, their TLS): not used again by this job.
    bad_urls: Vec<usize>,
    /// URLs whose server asked not to be asked again before an instant (`Retry-After` on
    /// a 429 or 503): another URL goes first until then (see `Engine::retry_after_pending`).
    asked_to_wait: Vec<(usize, Instant)>,
    /// Mirrors that failed a segment of this job (an error, or an answer that did not fit
    /// the file: 200 to a range, another length): no more segments go there.
    spread_excluded: Vec<usize>,
    /// A segment of this job went to another URL than its attempt's (see
    /// [`Event::Spread`]): its first failed verification cannot blame one URL. Kept when the
    /// job starts over, so that the rule is one an observer of the events can follow.
    spread_used: bool,
    /// Segments stay on the attempt's URL for the rest of the job (set after a mixed
    /// download failed verification).
    spread_off: bool,
    /// The warning about a content coding the server applied unasked was given.
    warned_content_coding: bool,
    /// Paused before it ran (queued, or still checking its destination or partial): it
    /// stays queued, or stops as `Paused` where its first attempt would start.
    pause_requested: bool,
    /// Resumed while every slot was taken: still `Paused`, it waits in
    /// [`Engine::resuming`] for a slot, ahead of queued jobs of its class.
    resume_waiting: bool,
    /// Paused in a backoff (or a wait for a breaker) that ends then: resumed before, it
    /// waits out the rest instead of starting its next attempt at once.
    paused_backoff: Option<Instant>,
    /// Paused in the middle of an attempt (`Running`): resumed, it goes on where it was
    /// (`prefer_url`). Not for a job that stopped where its next attempt would start.
    paused_mid_attempt: bool,
    /// The next attempt stays on the URL of the last one (`mirror`): the start-over after a
    /// mixed download failed verification, which blamed no URL. Taken by `pick_url`.
    stay_on_url: bool,
    /// The attempt running is such a start-over (until its attempt ends, `retry_or_end`): a
    /// pause and resume in it goes on there too, whatever its breaker says.
    in_stay_attempt: bool,
    /// The next attempt goes on the URL of the last one if its breaker admits a request, else
    /// chooses as usual: a job resumed from a pause in the middle of an attempt, which was no
    /// failure of that URL. Taken by `pick_url`.
    prefer_url: bool,
    /// Whether the job may still split over several connections.
    splitting: Splitting,
    /// This attempt is the half-open probe of that origin's breaker.
    probe: Option<Origin>,
    /// This attempt already counted a failure against its origin: the other connections
    /// of a segmented attempt that fail with it are one incident, not several.
    failure_noted: bool,
    /// The failure its last retry was scheduled after, with the origin (label) it came
    /// from: what the job ends with if that origin's breaker keeps it from trying again
    /// (see `Engine::wait_for_breaker`). Forgotten once a response is accepted.
    last_error: Option<(String, DownloadError)>,
    /// In backoff behind open breakers (it waits for an origin, not for its own retry
    /// schedule): it leaves its slot to the next download meanwhile (see
    /// [`Job::holds_slot`]), and once the wait is over takes the next free slot
    /// (`slot_waiting` until then).
    parked: bool,
    /// Parked, its wait over, and waiting for a slot (no deadline of its own).
    slot_waiting: bool,
    /// Since when it waits behind an open breaker, and the latest it may before it gives
    /// up: set when it first parks behind one after its last attempt began (see
    /// `Engine::breaker_wait_ends`), forgotten when an attempt begins or it pauses, and
    /// set again behind an outage that began later.
    breaker_wait: Option<(Instant, Instant)>,
    next_transfer: u64,
    transfers: BTreeMap<u64, Transfer>,
    /// Ranges nobody fetches right now (a segment whose connection died).
    gaps: Vec<(u64, u64)>,
    /// The server honours ranges for this representation: segments may be used.
    segmented: bool,
    /// The most connections the job's server takes at once, learnt when it turned an extra
    /// one away (429 or 503): the job uses no more, until [`CONNECTION_CAP_RELAX`] after
    /// that (or after the last raise) it tries one more.
    connections_taken: Option<usize>,
    /// When `connections_taken` was last set or raised.
    connections_taken_at: Instant,
    /// The highest body rate (bytes per second) a finished segment of this job reached:
    /// what a new connection may be expected to do, against which a segment still running
    /// is found lagging (see `Transfer::lagging`).
    best_segment_rate: Option<f64>,
    followers: Vec<JobId>,
    /// Its class: `spec.priority`, or that of a more urgent job that waits for it (see
    /// [`Engine::raise_priority`]).
    urgency: Priority,

    file: Option<FileId>,
    /// `file` has no name (see [`Config::unnamed_max`](crate::Config::unnamed_max)): no
    /// checkpoint, nothing to keep; the commit names it with `Publish`.
    unnamed: bool,
    /// The executor hashes the file, not the engine (see `executor_hash`): its digest of
    /// the whole file, once it answered.
    digest: Option<[u8; 32]>,
    /// With [`Config::executor_digests`](crate::Config), a file opened fresh that is written
    /// in order (unnamed, or a download without segments) is hashed by the executor as it is
    /// written: `hashed` is then the contiguous end handed to the file, the engine's hasher
    /// is unused, the commit asks the executor for the digest, and a checkpoint records the
    /// bytes as received but not verified (a resume hashes them back from the file).
    executor_hash: bool,
    /// An `IoOp::Digest` is outstanding.
    digest_requested: bool,
    /// Outstanding file operations of this job (all kinds).
    file_ops: u32,
    /// Bytes handed to `WriteAt` and not completed.
    write_backlog: u64,
    /// First local write failure; fatal once noticed.
    write_error: Option<(PathBuf, IoFailure)>,
    /// The partial file was opened by this run (so cleanup may touch it).
    touched: bool,
    /// A state file may exist beside the partial (one was found, or this run wrote one):
    /// the commit removes it; otherwise there is nothing to remove.
    state_on_disk: bool,

    validator: Option<Validator>,
    validator_source: ValidatorSource,
    total: Option<u64>,
    hasher: Sha256,
    /// The other checksum ([`Download::checksum`]) of the bytes `hasher` was fed, when the
    /// job has one; taken by the check before the commit (`checksum::start_checksum`).
    checksum_stream: Option<checksum::Streamed>,
    /// Contiguous bytes hashed from the start of the file.
    hashed: u64,
    /// Every byte range handed to the file (the hashed prefix included).
    received: RangeSet,
    /// Read-backs of written-but-unhashed bytes at the frontier (this epoch's).
    catch_up: ReadAhead,
    /// Bumped whenever the download starts over from zero: a read-back issued before that
    /// completes with bytes the new hash must not see.
    epoch: u32,
    /// (epoch, bytes fetched) when an early sync was issued (see [`FileStep::EarlySync`]):
    /// while both are unchanged, no write followed it and the commit needs no sync of its
    /// own.
    early_sync: Option<(u32, u64)>,
    resumed_from: u64,
    fetched: u64,
    /// Durable resume point recorded in the state file.
    durable: u64,
    checkpoint_running: bool,
    /// Completions the running checkpoint waits for before it writes the state: its sync,
    /// and for a file hashed by the executor the digest of its prefix.
    checkpoint_awaits: u8,
    /// Length, hex digest and ranges of the prefix a running checkpoint is making durable.
    pending_prefix: Option<PendingPrefix>,
    last_checkpoint: Instant,
    /// File name chosen from `Content-Disposition` for a directory destination.
    dest_name: Option<String>,
    /// The job holds its provisional path in [`Engine::dest_claims`] (a follower bound for
    /// its leader's destination does not).
    claims_provisional: bool,
    /// The final path a response named, when it differs from the provisional one, held in
    /// [`Engine::dest_claims`] too.
    claimed_final: Option<PathBuf>,
    /// Whether the name the server gave is free (see [`NameProbe`]).
    name_probe: NameProbe,
    /// The URL the last accepted response came from (after redirects).
    last_url: Option<url::Url>,
    bucket: Option<TokenBucket>,
    /// When this job last received body bytes (or started waiting for them): a class held
    /// back by its global-limit reserve longer than [`BURST`] reads without the reserve.
    last_grant: Instant,
    /// This job's body bytes, for the rate and ETA of its progress events.
    meter: RateMeter,
}

impl Job {
    fn priority(&self) -> Priority {
        self.urgency
    }

    fn is_active(&self) -> bool {
        !matches!(
            self.phase,
            Phase::Queued | Phase::Following { .. } | Phase::Copying { .. }
        )
    }

    /// Whether the job holds one of the `max_active_jobs` slots: active, not committing, not
    /// waiting for its executor digest and not paused. A committing or digesting job has all
    /// its bytes and no connection; it only waits for the disk or the hashing thread, so the
    /// next download starts meanwhile (see [`Engine::schedule`]). A paused one waits for
    /// its caller, who may take long: its slot goes to the next download, and once resumed
    /// it takes the next free slot, before the queued jobs of its class. So does one parked
    /// behind a breaker ([`Job::parked`]): it waits for an origin, maybe for half a minute.
    fn holds_slot(&self) -> bool {
        let parked = self.parked && matches!(self.phase, Phase::Backoff { .. });
        self.is_active()
            && !matches!(self.phase, Phase::Committing { .. } | Phase::Paused)
            && !self.digesting()
            && !parked
    }

    /// Every byte is in and the executor's digest of them is asked for (see
    /// [`Job::executor_hash`]): the job verifies and commits once it comes.
    fn digesting(&self) -> bool {
        matches!(self.phase, Phase::Running) && self.digest_requested && self.transfers.is_empty()
    }

    /// The file the job commits to: its destination file, or in a destination directory
    /// the name a response gave (`Content-Disposition`) or else the URL's (the name known so
    /// far, before a response).
    fn dest_path(&self) -> PathBuf {
        match &self.spec.dest {
            Destination::File(p) => p.clone(),
            Destination::Dir(d) => d.join(
                self.dest_name
                    .clone()
                    .unwrap_or_else(|| crate::download::file_name_from_url(&self.spec.url)),
            ),
        }
    }

    /// A download into a directory that neither its URL nor its response named: its file is
    /// [`crate::download::FALLBACK_NAME`], which must not replace a file (see
    /// [`Engine::probe_server_name`]).
    fn fallback_named(&self) -> bool {
        matches!(self.spec.dest, Destination::Dir(_))
            && self.dest_name.is_none()
            && crate::download::url_file_name(&self.spec.url).is_none()
    }

    /// The error of a download whose probed name is taken: a name the server or haul chose.
    fn name_taken(&self) -> DownloadError {
        let path = self.dest_path();
        match self.fallback_named() {
            true => DownloadError::FallbackNameTaken { path },
            false => DownloadError::ServerNameTaken { path },
        }
    }

    /// The URL the body came from, as given (the download's own, or the attempt's mirror),
    /// for a verification failure to name; the download's own when its segments came from
    /// several URLs (none is to blame alone).
    fn served_by(&self) -> String {
        match self.mirror {
            0 => self.spec.url.to_string(),
            _ if self.spread_used && !self.spread_off => self.spec.url.to_string(),
            i => self.spec.mirrors[i - 1].to_string(),
        }
    }

    /// Bytes of the file present now.
    /// The tries that count against `RetryPolicy::max_attempts`: not the moves to a URL
    /// untried in their round (failovers), nor those before its retries were last renewed.
    fn tries_counted(&self) -> u32 {
        self.attempt
            .saturating_sub(self.failovers)
            .saturating_sub(self.renewed)
    }

    fn present(&self) -> u64 {
        self.received.len().max(self.hashed)
    }

    /// How many transfers the job may run at once: its segments, fewer if its server turned
    /// connections away.
    fn max_transfers(&self) -> usize {
        let segments = self.spec.segments as usize;
        self.connections_taken.map_or(segments, |n| n.min(segments))
    }
}

/// The engine. See the module documentation for the call contract.
pub struct Engine {
    config: Config,
    rng: SeededRng,
    now: Instant,
    /// The next id of an I/O operation, a file or a connection.
    next_id: u64,
    /// The next job's number ([`Engine::next_job_id`]).
    next_job: u64,
    /// Every unfinished job. A hash map: the engine looks jobs up by id on every event, and
    /// nothing iterates it in an order that could reach an output (the two walks over all
    /// jobs ask `any`, or check invariants); ordered walks go through the id-ordered indexes
    /// below. Boxed: a job is over a kilobyte, and the table of a long batch (thousands
    /// of jobs) then stays small, touches fewer fresh pages and moves pointers when it grows.
    jobs: HashMap<JobId, Box<Job>>,
    /// Jobs waiting for a slot, most urgent class first, then in submission order. A
    /// superset of the `Queued` jobs: an entry whose job has started or gone is dropped when
    /// a scan meets it. With thousands of jobs submitted at once, scheduling and timers
    /// look at this and at `active_ids` instead of every job on every event.
    queue: BTreeSet<(Reverse<Priority>, JobId)>,
    /// Paused jobs resumed while every slot was taken ([`Job::resume_waiting`]), most urgent
    /// class first. A superset: an entry whose job was paused again, cancelled or gone is
    /// dropped when a scan meets it.
    resuming: BTreeSet<(Reverse<Priority>, JobId)>,
    /// A superset of the active jobs ([`Job::is_active`]) that are not committing: added when
    /// a job starts, dropped by [`Engine::schedule`] once the job is inactive or gone, moved
    /// to `committing_ids` while it commits.
    active_ids: BTreeSet<JobId>,
    /// Exactly the committing jobs. Kept apart from `active_ids`: a committing job has no
    /// transfer, deadline or connection, and with hundreds of commits in flight the scans of
    /// the active jobs on every event would mostly walk them.
    committing_ids: BTreeSet<JobId>,
    /// The jobs waiting for their executor digest ([`Job::digesting`]), moved here from
    /// `active_ids` while they wait: like committing jobs they have no transfer, deadline
    /// or connection, and on a run of small files there are often more of them than of
    /// downloading ones. A superset: an entry whose job stopped waiting otherwise (it was
    /// cancelled, say) stays until its digest's completion or the job's end.
    digesting_ids: BTreeSet<JobId>,
    /// Unfinished jobs by the bytes they fetch (expected sha256, else URL), in id order: dedup
    /// looks a new job's leader up here instead of comparing it with every job.
    by_content: BTreeMap<ContentKey, Vec<JobId>>,
    /// The destinations of unfinished jobs (each one's provisional path, and the final path a
    /// response named) and the job that writes each: a second job for a destination in use
    /// is refused ([`DownloadError::DestinationInUse`]) instead of sharing, and corrupting,
    /// its partial file. A follower bound for its leader's destination holds none: the
    /// leader's commit is its own.
    /// (Hashed: a path compares component by component, and a long batch inserts one per
    /// job; nothing iterates it into an output.)
    dest_claims: HashMap<PathBuf, JobId>,
    /// Set when a job failed or one with dependencies was queued: the next schedule looks
    /// for queued jobs whose dependency failed (or never existed) and fails them.
    check_deps: bool,
    conns: BTreeMap<ConnId, Conn>,
    pending: BTreeMap<IoId, Route>,
    outputs: VecDeque<Output>,
    /// A job parked behind a breaker (see [`Job::parked`]) on a path that does not schedule
    /// (a state file loaded, a file that changed): the input that parked it schedules at its
    /// end, so the slot it left goes to the next download at once.
    slot_freed: bool,
    /// Outcomes of finished jobs, for dependencies: the last [`FINISHED_KEPT`] to finish and
    /// any an unfinished job depends on (see [`Finished`]).
    finished: Finished,
    global_bucket: Option<TokenBucket>,
    stats: StatsState,
    /// Followers whose leader committed to their own destination: finish them next.
    pending_finish: Vec<(JobId, Outcome)>,
    /// Circuit breaker per origin, shared by every job.
    breakers: BTreeMap<Origin, Breaker>,
    /// Failures counted by breakers so far, engine-wide: a transfer reads it when it
    /// connects and when it sends its request (see [`Breaker::on_request_failure`]).
    breaker_clock: u64,
    /// Observed throughput and latency per origin, for choosing among mirrors.
    origin_stats: BTreeMap<Origin, MirrorStats>,
    /// Engine-wide retry budget.
    retry_budget: RetryBudget,
}

/// Whether two downloads send the same extra headers (names in any case, in any order).
/// Without an expected sha256 the URL alone does not make two downloads one: a server
/// answers per user (`Authorization`, `Cookie`, a tenant header), and one user's bytes
/// copied to another's download were bytes the other never had the right to, or not the
/// file the other's request would have got.
fn same_headers(a: &[(String, String)], b: &[(String, String)]) -> bool {
    fn norm(h: &[(String, String)]) -> Vec<(String, &str)> {
        let mut v: Vec<(String, &str)> = h
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str()))
            .collect();
        v.sort();
        v
    }
    a.len() == b.len() && norm(a) == norm(b)
}

/// What makes two jobs fetch the same bytes, for dedup: the expected sha256 when there is
/// one, else the URL (a job with a sha256 never shares with one without).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ContentKey {
    Sha256([u8; 32]),
    Url(String),
}

impl ContentKey {
    fn of(spec: &Download) -> ContentKey {
        match spec.sha256 {
            Some(sha256) => ContentKey::Sha256(sha256),
            None => ContentKey::Url(spec.url.as_str().to_owned()),
        }
    }
}

/// `Job::validator_mirror` of bytes from a URL the download does not list.
const UNLISTED_SOURCE: usize = usize::MAX;

/// How many queued jobs after the next one [`Engine::startable`] looks at for one whose
/// origin has room.
const BUSY_ORIGIN_LOOKAHEAD: usize = 256;

/// How many finished jobs' outcomes the engine keeps beyond those an unfinished job depends
/// on (see `Finished`).
pub const FINISHED_KEPT: usize = 4096;

/// The outcomes of finished jobs that a dependency may still ask about. Kept for every job
/// the engine ever ran, the map grew by one entry per job for the life of a client (a
/// long-running service submits without end); now it holds the last [`FINISHED_KEPT`] jobs
/// to finish, plus every finished job an unfinished job depends on, whatever its age: a
/// waiting dependant never loses the outcome it waits for. A job submitted later depending
/// on a job whose outcome is gone fails at once with [`DownloadError::DependencyUnknown`],
/// as one depending on a job never submitted does, instead of waiting for ever.
#[derive(Debug, Default)]
struct Finished {
    /// Success, or the error the job failed with (a dependant's failure carries it), by job.
    outcomes: HashMap<JobId, Result<(), DownloadError>>,
    /// Finished jobs kept for their recency, oldest first; each of `outcomes` is in here or
    /// in `pinned`, never both.
    recent: VecDeque<JobId>,
    /// Finished jobs pushed out of `recent` while an unfinished job depended on them; they
    /// go back to `recent`'s end when the last of those finishes.
    pinned: std::collections::HashSet<JobId>,
    /// How many unfinished jobs depend on each job (finished or not, or unknown).
    wanted: HashMap<JobId, u32>,
}

impl Finished {
    fn get(&self, id: &JobId) -> Option<&Result<(), DownloadError>> {
        self.outcomes.get(id)
    }

    /// Whether job `id` is known to have succeeded.
    fn succeeded(&self, id: &JobId) -> bool {
        matches!(self.outcomes.get(id), Some(Ok(())))
    }

    fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Job `id` finished, with `outcome`.
    fn insert(&mut self, id: JobId, outcome: Result<(), DownloadError>) {
        if self.outcomes.insert(id, outcome).is_none() {
            self.recent.push_back(id);
        }
        self.prune();
    }

    /// An unfinished job depending on `deps` entered the engine.
    fn want(&mut self, deps: &[JobId]) {
        for dep in deps {
            *self.wanted.entry(*dep).or_default() += 1;
        }
    }

    /// An unfinished job depending on `deps` left the engine.
    fn release(&mut self, deps: &[JobId]) {
        for dep in deps {
            let Some(count) = self.wanted.get_mut(dep) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.wanted.remove(dep);
                if self.pinned.remove(dep) {
                    self.recent.push_back(*dep);
                }
            }
        }
        self.prune();
    }

    fn prune(&mut self) {
        while self.recent.len() > FINISHED_KEPT {
            let Some(id) = self.recent.pop_front() else {
                break;
            };
            if self.wanted.contains_key(&id) {
                self.pinned.insert(id);
            } else {
                self.outcomes.remove(&id);
            }
        }
    }
}

#[derive(Debug, Default)]
struct StatsState {
    done: usize,
    failed: usize,
    cancelled: usize,
    bytes: u64,
    first_start: Option<Instant>,
    /// Every job's body bytes together.
    meter: RateMeter,
}

const REHASH_CHUNK: u64 = 1024 * 1024;
const CATCH_UP_CHUNK: u64 = 4 * 1024 * 1024;
/// Reads of a file back for its hash in flight at once per job.
const READS_IN_FLIGHT: u8 = 2;

/// Reads of a file back for its hash (the out-of-order bytes behind the frontier, or a
/// resumed partial's prefix): up to [`READS_IN_FLIGHT`] at once, so the next chunk is read
/// while one is hashed. Reads complete in issue order; when one comes back short, the later
/// ones are off the frontier: their bytes are ignored ([`ReadAhead::done`] says so), and once
/// none is in flight reading starts again at the frontier.
#[derive(Debug, Clone, Copy, Default)]
struct ReadAhead {
    in_flight: u8,
    /// The end of the bytes asked for so far.
    asked: u64,
}

impl ReadAhead {
    /// The reads (offset, length) to issue now for the bytes from `frontier` to `end`, in
    /// chunks of at most `chunk`.
    fn next(&mut self, frontier: u64, end: u64, chunk: u64) -> Vec<(u64, u64)> {
        if self.in_flight == 0 {
            self.asked = frontier;
        }
        let mut reads = Vec::new();
        let mut from = self.asked.max(frontier);
        while self.in_flight < READS_IN_FLIGHT && from < end {
            let len = (end - from).min(chunk);
            reads.push((from, len));
            from += len;
            self.in_flight += 1;
            self.asked = from;
        }
        reads
    }

    /// A read issued at `offset` completed; whether its bytes are the next to hash.
    fn done(&mut self, offset: u64, frontier: u64) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        offset == frontier
    }

    fn idle(&self) -> bool {
        self.in_flight == 0
    }
}
const DRAIN_LIMIT: u64 = 64 * 1024;
/// How long a segmented job keeps to the connections its server took (see
/// `Job::connections_taken`) before it tries one more. A server that turned a connection
/// away while busy (a storage service asking to slow down, a mirror under load for a
/// while) may take more later: the cap was for the job's whole life, so one refusal kept a
/// download of gigabytes on the connections left at that moment. A server with a fixed
/// limit refuses the extra one again, once per period, and the cap holds.
const CONNECTION_CAP_RELAX: Duration = Duration::from_secs(30);
/// Burst allowance of rate limits.
const BURST: Duration = Duration::from_secs(1);
/// The smallest read a rate-limited transfer asks for (see [`Engine::read_allowance`]).
/// It only matters where an eighth of a second of the limit, shared by the connections
/// reading, is smaller: at 1 KiB/s (or 16 KiB/s over 16 connections) a smallest read of
/// 8 KiB was 8 s of the limit at once, far past its one-second allowance. Reads this small
/// come at most 8 times a second per connection, as reads of an eighth of a second do.
const MIN_THROTTLED_READ: usize = 256;

impl Engine {
    /// A new engine. `now` is the engine's current time (usually [`Instant::ZERO`]).
    pub fn new(config: Config, now: Instant) -> Result<Engine, crate::config::ConfigError> {
        config.validate()?;
        let global_bucket = config.rate_limit.map(|r| TokenBucket::new(r, BURST, now));
        let config_budget = config.retry.budget_per_minute;
        Ok(Engine {
            rng: SeededRng::new(config.seed),
            config,
            now,
            next_id: 1,
            next_job: 1,
            jobs: HashMap::new(),
            queue: BTreeSet::new(),
            resuming: BTreeSet::new(),
            active_ids: BTreeSet::new(),
            committing_ids: BTreeSet::new(),
            digesting_ids: BTreeSet::new(),
            check_deps: false,
            by_content: BTreeMap::new(),
            dest_claims: HashMap::new(),
            conns: BTreeMap::new(),
            pending: BTreeMap::new(),
            outputs: VecDeque::new(),
            slot_freed: false,
            finished: Finished::default(),
            global_bucket,
            stats: StatsState::default(),
            pending_finish: Vec::new(),
            breakers: BTreeMap::new(),
            breaker_clock: 0,
            origin_stats: BTreeMap::new(),
            retry_budget: RetryBudget::new(config_budget, now),
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

    /// Finished jobs whose outcome the engine still holds for dependencies (see
    /// [`FINISHED_KEPT`]).
    pub fn finished_kept(&self) -> usize {
        self.finished.len()
    }

    /// I/O requests issued and not yet completed.
    pub fn pending_io(&self) -> usize {
        self.pending.len()
    }

    /// True when no job runs and no I/O is pending.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty() && self.pending.is_empty()
    }

    /// Counters for progress displays.
    pub fn stats(&self) -> Stats {
        self.stats_at(self.now)
    }

    /// [`Engine::stats`] as of `now` (no earlier than the engine's clock): the current rate
    /// decays while no bytes arrive, without the engine being woken.
    pub fn stats_at(&self, now: Instant) -> Stats {
        let now = now.max(self.now);
        let s = &self.stats;
        let active = self
            .maybe_active()
            .filter(|j| j.is_active() && !matches!(j.phase, Phase::Paused))
            .count()
            + self.committing_ids.len()
            + self.digesting_ids.len();
        let since_start = s
            .first_start
            .map(|t| now.saturating_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let average_rate = if since_start > 0.0 {
            s.bytes as f64 / since_start
        } else {
            0.0
        };
        // Peak below average: the windows that closed were slower than the one the end cut
        // short (helper programs read a peak of 2.5 MB/s against an average of 2.67).
        let over_a_second = if since_start >= 1.0 {
            average_rate
        } else {
            0.0
        };
        Stats {
            active,
            queued: self.jobs.len() - active,
            done: s.done,
            failed: s.failed,
            cancelled: s.cancelled,
            bytes: s.bytes,
            current_rate: s.meter.rate(now).unwrap_or(0.0),
            average_rate,
            peak_rate: s.meter.peak().max(over_a_second),
        }
    }

    /// The global rate limit in force (None: unlimited).
    pub fn rate_limit(&self) -> Option<u64> {
        self.global_bucket.as_ref().map(TokenBucket::rate)
    }

    /// Change the global rate limit (None: unlimited). A driver applies a time-of-day
    /// schedule by calling this when the schedule says so.
    pub fn set_rate_limit(&mut self, now: Instant, rate: Option<u64>) {
        self.advance(now);
        self.global_bucket = match (rate, self.global_bucket.take()) {
            (None, _) => None,
            (Some(r), Some(mut b)) => {
                b.set_rate(r, BURST, self.now);
                Some(b)
            }
            (Some(r), None) => Some(TokenBucket::new(r, BURST, self.now)),
        };
        self.wake_throttled();
    }

    fn next(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The next job's id: jobs are numbered 1, 2, 3... in submission order, apart from the
    /// ids of I/O operations, files and connections.
    fn next_job_id(&mut self) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        id
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Submit several downloads at once; they are queued together before any starts, so
    /// priorities order them. `Download::after_index(i)` refers to the `i`-th of the batch
    /// (an index that is not earlier in the batch ends that job at once with
    /// [`DownloadError::InvalidRequest`] naming it). Returns the job ids in order.
    pub fn submit_batch(&mut self, now: Instant, specs: Vec<Download>) -> Vec<JobId> {
        self.submit_batch_checked(now, specs, |_| None)
    }

    /// [`Engine::submit_batch`], with `check` looking at each download as it is queued: one
    /// it gives an error for is refused with that error (queued and finished at once, as a
    /// download refused at submission is; its dependants fail). A runtime reports so what
    /// its file system says against a destination (a directory where the file would go)
    /// before a byte is fetched.
    pub fn submit_batch_checked(
        &mut self,
        now: Instant,
        specs: Vec<Download>,
        mut check: impl FnMut(&Download) -> Option<DownloadError>,
    ) -> Vec<JobId> {
        self.advance(now);
        let mut ids: Vec<JobId> = Vec::with_capacity(specs.len());
        // Jobs are large: growing the map step by step would move each several times.
        self.jobs.reserve(specs.len());
        for mut spec in specs {
            let at = ids.len();
            let mut unknown = None;
            for i in std::mem::take(&mut spec.depends_on_index) {
                match ids.get(i) {
                    Some(&dependency) => spec.depends_on.push(dependency),
                    None => unknown = Some(i),
                }
            }
            if let Some(i) = unknown {
                let id = self.next_job_id();
                let error = DownloadError::InvalidRequest(format!(
                    "after_index({i}) of download {at} of the batch names no earlier download"
                ));
                self.refuse(id, &spec, error);
                ids.push(id);
                continue;
            }
            if let Some(error) = check(&spec) {
                let id = self.next_job_id();
                self.refuse(id, &spec, error);
                ids.push(id);
                continue;
            }
            ids.push(self.enqueue(spec));
        }
        self.schedule();
        ids
    }

    /// Makes room for `additional` more jobs at once, for a runtime that submits a long batch
    /// in parts (see [`Engine::may_split_batch`]): jobs are large, and a table grown part by
    /// part would move every job several times.
    pub fn reserve(&mut self, additional: usize) {
        self.jobs.reserve(additional);
    }

    /// Whether `batch` may be handed over in consecutive parts (one [`Engine::submit_batch`]
    /// each, in order) with the same outcome as in one call: every download of one priority
    /// class (the queue is then FIFO, whatever the parts), none with `after_index` (indexes
    /// are per call), no two that would share one transfer (a duplicate submitted after its
    /// leader ended would fetch again) and no two bound for one destination (the second is
    /// refused only while the first is unfinished). A runtime may then start the first downloads of
    /// a long list before the engine has taken the rest.
    pub fn may_split_batch(batch: &[Download]) -> bool {
        let Some(first) = batch.first() else {
            return true;
        };
        let mut keys = BTreeSet::new();
        let mut paths = std::collections::HashSet::new();
        batch.iter().all(|spec| {
            spec.priority == first.priority
                && spec.depends_on_index.is_empty()
                && keys.insert(ContentKey::of(spec))
                && paths.insert(spec.provisional_path())
        })
    }

    /// Submit a download. It starts when a slot is free and its dependencies succeeded.
    pub fn submit(&mut self, now: Instant, spec: Download) -> JobId {
        self.advance(now);
        let id = self.enqueue(spec);
        self.schedule();
        id
    }

    fn enqueue(&mut self, spec: Download) -> JobId {
        let checksum_stream = spec
            .checksum
            .as_ref()
            .map(|c| checksum::Streamed::new(c.algorithm()));
        let id = self.next_job_id();
        // Ids only grow: a job may depend only on jobs submitted before it, so no cycle can
        // form (a job that named itself, or one submitted after it, waited for ever).
        if let Some(&dependency) = spec.depends_on.iter().find(|d| **d >= id) {
            let error = if dependency == id {
                DownloadError::InvalidRequest(format!("job {} cannot depend on itself", id.0))
            } else {
                // Not submitted yet: as unknown as one never submitted.
                DownloadError::DependencyUnknown {
                    dependency: dependency.0,
                    kept: FINISHED_KEPT,
                }
            };
            self.refuse(id, &spec, error);
            return id;
        }
        let mut leader = self.find_leader(&spec);
        // A duplicate of a running download (not one waiting for a destination to be free).
        let mut duplicate = leader.is_some();
        let path = spec.provisional_path();
        let mut shares_leader_dest = leader
            .and_then(|l| self.jobs.get(&l))
            .is_some_and(|l| l.spec.provisional_path() == path);
        if !shares_leader_dest {
            let holder = self.dest_claims.get(&path).copied();
            let ending = holder
                .and_then(|h| self.jobs.get(&h))
                .filter(|h| {
                    h.spec.provisional_path() == path || h.claimed_final.as_ref() == Some(&path)
                })
                .is_some_and(|h| matches!(h.phase, Phase::CleaningUp { .. }));
            if ending {
                // The holder was cancelled or failed and is only tidying its files (a
                // download restarted right after cancelling its predecessor): follow it.
                // It ends with an error, and a follower bound for the destination of a leader
                // that failed takes that destination over and runs on its own.
                leader = holder;
                shares_leader_dest = true;
                duplicate = false;
            }
        }
        if !shares_leader_dest {
            if let Some(&holder) = self.dest_claims.get(&path) {
                self.refuse(
                    id,
                    &spec,
                    DownloadError::DestinationInUse {
                        path,
                        job: holder.0,
                    },
                );
                return id;
            }
            self.dest_claims.insert(path, id);
        }
        let bucket = spec
            .rate_limit
            .map(|r| TokenBucket::new(r, BURST, self.now));
        let spec_priority = spec.priority;
        let job = Job {
            id,
            part_path: spec.part_path(),
            spec,
            submitted: self.now,
            started: self.now,
            progress_mark: 0,
            renewed: 0,
            phase: match leader {
                Some(leader) => Phase::Following { leader },
                None => Phase::Queued,
            },
            duplicate,
            retry_for_duplicates: false,
            attempt: 1,
            failovers: 0,
            backoffs: 0,
            mirror: 0,
            failed_round: Vec::new(),
            validator_mirror: 0,
            unlisted_source: None,
            validator_resource: None,
            verify_retry_used: false,
            bad_urls: Vec::new(),
            asked_to_wait: Vec::new(),
            spread_excluded: Vec::new(),
            spread_used: false,
            spread_off: false,
            warned_content_coding: false,
            pause_requested: false,
            resume_waiting: false,
            paused_backoff: None,
            paused_mid_attempt: false,
            stay_on_url: false,
            in_stay_attempt: false,
            prefer_url: false,
            splitting: Splitting::Allowed,
            probe: None,
            failure_noted: false,
            last_error: None,
            parked: false,
            slot_waiting: false,
            breaker_wait: None,
            next_transfer: 0,
            transfers: BTreeMap::new(),
            gaps: Vec::new(),
            segmented: false,
            connections_taken: None,
            connections_taken_at: self.now,
            best_segment_rate: None,
            followers: Vec::new(),
            urgency: spec_priority,
            file: None,
            unnamed: false,
            digest: None,
            digest_requested: false,
            executor_hash: false,
            file_ops: 0,
            write_backlog: 0,
            write_error: None,
            touched: false,
            state_on_disk: false,
            validator: None,
            validator_source: ValidatorSource::ThisRun,
            total: None,
            hasher: Sha256::new(),
            checksum_stream,
            hashed: 0,
            received: RangeSet::new(),
            catch_up: ReadAhead::default(),
            epoch: 0,
            early_sync: None,
            resumed_from: 0,
            fetched: 0,
            durable: 0,
            checkpoint_running: false,
            checkpoint_awaits: 0,
            pending_prefix: None,
            last_checkpoint: self.now,
            dest_name: None,
            claims_provisional: !shares_leader_dest,
            claimed_final: None,
            name_probe: NameProbe::NotNeeded,
            last_url: None,
            bucket,
            last_grant: self.now,
            meter: RateMeter::default(),
        };
        let url = job.spec.url.to_string();
        if matches!(job.phase, Phase::Queued) {
            self.queue.insert((Reverse(job.priority()), id));
        }
        if !job.spec.depends_on.is_empty() {
            self.check_deps = true;
            self.finished.want(&job.spec.depends_on);
        }
        // Ids only grow, so each list stays in id order.
        self.by_content
            .entry(ContentKey::of(&job.spec))
            .or_default()
            .push(id);
        let urgency = job.urgency;
        self.jobs.insert(id, Box::new(job));
        if let Some(leader) = leader {
            if let Some(l) = self.jobs.get_mut(&leader) {
                l.followers.push(id);
            }
            self.raise_priority(leader, urgency);
        }
        self.event(Event::Queued { job: id, url });
        id
    }

    /// Ends job `id` (of `spec`) as soon as it is submitted, with `error`: it never enters the
    /// queue or the indexes, and its dependents fail as after any failure.
    fn refuse(&mut self, id: JobId, spec: &Download, error: DownloadError) {
        self.event(Event::Queued {
            job: id,
            url: spec.url.to_string(),
        });
        self.finished.insert(id, Err(error.clone()));
        self.check_deps = true;
        self.stats.failed += 1;
        self.event(Event::Finished {
            job: id,
            result: Err(error),
        });
    }

    /// Gives back the destinations job `id` holds (see [`Engine::dest_claims`]).
    fn release_claims(&mut self, id: JobId, job: &Job) {
        let mut release = |path: PathBuf| {
            if self.dest_claims.get(&path) == Some(&id) {
                self.dest_claims.remove(&path);
            }
        };
        if job.claims_provisional {
            release(job.spec.provisional_path());
        }
        if let Some(path) = &job.claimed_final {
            release(path.clone());
        }
    }

    /// Holds the final path a response named for job `id` (a directory destination's
    /// `Content-Disposition` name; see [`Engine::dest_claims`]); the error to end the job
    /// with if another unfinished job holds that path.
    fn claim_named_destination(&mut self, id: JobId) -> Option<DownloadError> {
        let j = self.jobs.get(&id)?;
        let (Destination::Dir(dir), Some(name)) = (&j.spec.dest, &j.dest_name) else {
            return None;
        };
        let path = dir.join(name);
        if path == j.spec.provisional_path() || j.claimed_final.as_ref() == Some(&path) {
            return None;
        }
        match self.dest_claims.get(&path) {
            Some(&holder) if holder != id => Some(DownloadError::DestinationInUse {
                path,
                job: holder.0,
            }),
            _ => {
                self.dest_claims.insert(path.clone(), id);
                self.jobs.get_mut(&id)?.claimed_final = Some(path);
                None
            }
        }
    }

    /// A running or queued job that fetches the same bytes (same URL and extra headers, or
    /// same expected sha256) with the same expectations (size, maximum size, other
    /// checksum). A job whose
    /// dependencies have not all succeeded yet is never a follower: copying a leader's result
    /// would skip its dependency check.
    fn find_leader(&self, spec: &Download) -> Option<JobId> {
        let deps_met = spec.depends_on.iter().all(|d| self.finished.succeeded(d));
        if !deps_met {
            return None;
        }
        // Same expected sha256, or (both without one) the same URL.
        self.by_content
            .get(&ContentKey::of(spec))?
            .iter()
            .filter_map(|id| self.jobs.get(id))
            // Nor a paused job: its duplicates would wait for its caller's resume. Nor one
            // still waiting for its own dependencies: a download without them would wait too.
            .filter(|j| {
                !j.pause_requested
                    && j.spec.depends_on.iter().all(|d| self.finished.succeeded(d))
                    && !matches!(
                        j.phase,
                        Phase::Following { .. } | Phase::CleaningUp { .. } | Phase::Paused
                    )
            })
            .find(|j| {
                j.spec.size == spec.size
                    && j.spec.max_size == spec.max_size
                    && j.spec.checksum == spec.checksum
                    && (spec.sha256.is_some() || same_headers(&j.spec.headers, &spec.headers))
            })
            .map(|j| j.id)
    }

    /// Cancel a job. It finishes with [`DownloadError::Cancelled`] once its files are tidy.
    /// A job already committing its verified file finishes normally.
    pub fn cancel(&mut self, now: Instant, job: JobId, mode: CancelMode) {
        self.advance(now);
        // No longer only waiting for its digest: back among the active jobs.
        self.set_digesting(job, false);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        match j.phase {
            Phase::Queued | Phase::Following { .. } => {
                let leader = match j.phase {
                    Phase::Following { leader } => Some(leader),
                    _ => None,
                };
                if let Some(l) = leader.and_then(|l| self.jobs.get_mut(&l)) {
                    l.followers.retain(|f| *f != job);
                }
                self.finish(job, Err(DownloadError::Cancelled));
                // A class it lent its leader goes back.
                if let Some(l) = leader {
                    self.settle_priority(l);
                }
                self.schedule();
            }
            // Cancelled keeping its partial and still tidying up before the partial is
            // closed: a discard now removes it after all (it was ignored).
            Phase::CleaningUp {
                ref mut keep,
                step: CleanStep::Start | CleanStep::Checkpoint,
                error: DownloadError::Cancelled,
                ..
            } if mode == CancelMode::Discard => *keep = false,
            _ => self.terminate(
                job,
                DownloadError::Cancelled,
                mode == CancelMode::KeepPartial,
            ),
        }
    }

    /// Pause a job: a running one closes its connections and keeps its partial, and its slot
    /// goes to the next download; one not started yet stays queued, or stops where its first
    /// request would go. [`Engine::resume`] continues it from the bytes received. A paused
    /// job fetches nothing, but one that only awaits a duplicate's result (it follows the
    /// same download) still takes that result when it comes, one whose destination
    /// already holds the expected bytes still finishes, and one reading its file back for its
    /// other checksum finishes that check: it commits if the file passes, and stops where its
    /// next attempt would start if not.
    pub fn pause(&mut self, now: Instant, job: JobId) {
        self.advance(now);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        match j.phase {
            Phase::Running | Phase::Backoff { .. } => {}
            // Not started yet: it stays queued, or stops where its first attempt would
            // start (`start_attempt`).
            Phase::Queued
            | Phase::Following { .. }
            | Phase::CheckingExisting { .. }
            | Phase::LoadingState
            | Phase::OpeningPartial { .. }
            | Phase::Rehashing { .. }
            // Reading its file back for its checksum: the check goes on (see `checksum`).
            | Phase::Checksumming { .. } => {
                j.pause_requested = true;
                let leader = match j.phase {
                    Phase::Following { leader } => Some(leader),
                    _ => None,
                };
                // Nor does a duplicate wait for one paused before it started.
                self.release_duplicates(job);
                // A paused duplicate lends its leader no class (it waits for its caller).
                if let Some(leader) = leader {
                    self.settle_priority(leader);
                }
                return;
            }
            // Resumed but still waiting for a slot: it stays paused (its entry in
            // `resuming` is dropped when met).
            Phase::Paused => {
                j.resume_waiting = false;
                return;
            }
            _ => return,
        }
        self.set_digesting(job, false);
        self.stop_transfers(job);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.paused_backoff = match j.phase {
                Phase::Backoff { until } => Some(until),
                _ => None,
            };
            j.paused_mid_attempt = matches!(j.phase, Phase::Running);
            // A pause is no wait behind a breaker: it counts from the resume.
            j.breaker_wait = None;
            j.phase = Phase::Paused;
            j.meter.restart();
        }
        self.release_duplicates(job);
        self.schedule();
    }

    /// Job `id` is waited for by a job of class `to`: it runs at that class if it is less
    /// urgent (and so does the job it follows in turn), while that job waits (see
    /// [`Engine::settle_priority`]). A Critical download of what a queued Background
    /// download fetches waited behind every Normal one (the duplicate follows the first, and
    /// the first kept its place in the queue).
    fn raise_priority(&mut self, id: JobId, to: Priority) {
        if self.jobs.get(&id).is_none_or(|j| j.urgency >= to) {
            return;
        }
        if let Some(leader) = self.set_urgency(id, to) {
            self.raise_priority(leader, to);
        }
    }

    /// Sets job `id`'s class to `to`, moving its entry in the queue or among the resumed
    /// jobs (both are keyed by class); the job it follows, if any.
    fn set_urgency(&mut self, id: JobId, to: Priority) -> Option<JobId> {
        let j = self.jobs.get_mut(&id)?;
        let from = std::mem::replace(&mut j.urgency, to);
        let follows = match j.phase {
            Phase::Following { leader } => Some(leader),
            _ => None,
        };
        if self.queue.remove(&(Reverse(from), id)) {
            self.queue.insert((Reverse(to), id));
        }
        if self.resuming.remove(&(Reverse(from), id)) {
            self.resuming.insert((Reverse(to), id));
        }
        follows
    }

    /// The paused job `job`'s duplicates bound for destinations of their own do not wait for
    /// its caller's resume (no more than a later one would, see `find_leader`): each goes
    /// back to the queue and fetches on its own. One bound for the paused job's own
    /// destination is the same download, and waits with it.
    fn release_duplicates(&mut self, job: JobId) {
        let Some(followers) = self
            .jobs
            .get_mut(&job)
            .map(|j| std::mem::take(&mut j.followers))
        else {
            return;
        };
        let mut kept = Vec::new();
        for f in followers {
            let Some(fj) = self.jobs.get_mut(&f) else {
                continue;
            };
            if !(fj.duplicate && fj.claims_provisional) {
                kept.push(f);
                continue;
            }
            fj.duplicate = false;
            fj.phase = Phase::Queued;
            self.check_deps |= !fj.spec.depends_on.is_empty();
            self.queue.insert((Reverse(fj.priority()), f));
        }
        if let Some(j) = self.jobs.get_mut(&job) {
            j.followers = kept;
        }
        self.settle_priority(job);
    }

    /// Job `id`'s class after a job that waited for it left: its own, or the most urgent of
    /// those still waiting (see [`Engine::raise_priority`]); and so on up the job it follows.
    fn settle_priority(&mut self, id: JobId) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        let to = j
            .followers
            .iter()
            .filter_map(|f| self.jobs.get(f))
            .filter(|f| !f.pause_requested)
            .map(|f| f.urgency)
            .fold(j.spec.priority, Priority::max);
        if to == j.urgency {
            return;
        }
        if let Some(leader) = self.set_urgency(id, to) {
            self.settle_priority(leader);
        }
    }

    /// Resume a paused job. It continues from the bytes it has once it has a slot: at once
    /// if one is free (a paused job holds none), else at the next free one, before the queued
    /// jobs of its class (it had started before them). A job paused at its verification
    /// needs no slot and goes on at once.
    pub fn resume(&mut self, now: Instant, job: JobId) {
        self.advance(now);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if std::mem::take(&mut j.pause_requested) {
            // Paused before it started: it goes on from where it waited, and a duplicate
            // lends its leader its class again.
            if let Phase::Following { leader } = j.phase {
                let urgency = j.urgency;
                self.raise_priority(leader, urgency);
            }
            return self.schedule();
        }
        if !matches!(j.phase, Phase::Paused) {
            return;
        }
        if j.digest_requested || j.digest.is_some() {
            // Paused with every byte in, at its verification: nothing to fetch. It waits
            // for its executor digest again, or verifies and commits with the one that came.
            j.phase = Phase::Running;
            if j.digest_requested {
                self.set_digesting(job, true);
            } else {
                self.maybe_complete(job);
            }
            return self.schedule();
        }
        // It goes on from its bytes once it has a slot: now if one is free, else before the
        // queued jobs of its class.
        j.resume_waiting = true;
        let entry = (Reverse(j.priority()), job);
        self.resuming.insert(entry);
        self.schedule();
    }

    /// The next output, or `None` when there is nothing more to do right now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant the engine must be woken at, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Only active jobs (running or in backoff) have deadlines.
        let jobs = self
            .maybe_active()
            .filter_map(|j| self.job_deadline(j).map(|(t, _, _)| t));
        let idle = self.conns.values().filter_map(|c| match c.state {
            ConnState::Idle { since } => Some(since + self.config.idle_connection_timeout),
            _ => None,
        });
        // A connection kept for the queue goes to a waiting extra segment once its grace ends.
        let extra_waits = self.extra_segment_waits();
        let held = self.conns.values().filter_map(|c| match c.state {
            ConnState::Idle { since }
                if extra_waits && since + transfer::QUEUE_GRACE > self.now =>
            {
                Some(since + transfer::QUEUE_GRACE)
            }
            _ => None,
        });
        jobs.chain(idle).chain(held).min()
    }

    /// Whether a transfer of a job that already receives waits for a connection.
    fn extra_segment_waits(&self) -> bool {
        self.maybe_active().any(|j| {
            matches!(j.phase, Phase::Running)
                && j.transfers
                    .values()
                    .any(|t| matches!(t.phase, transfer::TPhase::WaitingConn))
                && j.transfers
                    .values()
                    .any(|t| !matches!(t.phase, transfer::TPhase::WaitingConn))
        })
    }

    /// The origins of the downloads about to ask for a first connection: waiting in the
    /// queue, or started and still looking at their destination or partial.
    fn queued_origins(&self) -> std::collections::HashSet<Origin> {
        let starting = self.maybe_active().filter(|j| {
            matches!(
                j.phase,
                Phase::CheckingExisting { .. }
                    | Phase::LoadingState
                    | Phase::OpeningPartial { .. }
                    | Phase::Rehashing { .. }
            )
        });
        self.queue
            .iter()
            .filter_map(|(_, id)| self.jobs.get(id).map(|j| &**j))
            .chain(starting)
            .filter_map(|j| Origin::of(&j.spec.url).ok())
            .collect()
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
        if std::mem::take(&mut self.slot_freed) {
            self.schedule();
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

    fn route(&mut self, route: Route, result: IoResult) {
        match route {
            Route::Connect(c) => self.on_connected(c, result),
            Route::Send(c) => self.on_sent(c, result),
            Route::Recv(c) => self.on_recv(c, result),
            Route::Close(c) => {
                self.conns.remove(&c);
                self.schedule();
            }
            Route::File(job, step) => self.on_file(job, step, result),
        }
    }

    // ---------------------------------------------------------------- scheduling

    /// Start queued jobs while slots are free: most urgent class first, FIFO within a class;
    /// fail jobs whose dependencies failed; then give free connections to waiting transfers.
    fn schedule(&mut self) {
        self.debug_check_indexes();
        loop {
            // One pass: drop the ids of jobs no longer active, count those holding a slot.
            let jobs = &self.jobs;
            let mut active = 0;
            self.active_ids.retain(|id| match jobs.get(id) {
                Some(j) if j.is_active() => {
                    active += usize::from(j.holds_slot());
                    true
                }
                _ => false,
            });
            let digesting = self.digesting_ids.len();
            if std::mem::take(&mut self.check_deps) {
                if let Some((job, dep, cause)) = self.failed_dependency() {
                    // Finishing it schedules again (and looks for the next such job).
                    self.check_deps = true;
                    let error = match cause {
                        Some(cause) => DownloadError::dependency_failed(dep.0, cause),
                        None => DownloadError::DependencyUnknown {
                            dependency: dep.0,
                            kept: FINISHED_KEPT,
                        },
                    };
                    self.finish(job, Err(error));
                    return;
                }
            }
            // Committing jobs, and those waiting for their digest, leave their slot to the
            // next download (a run of small files would otherwise wait on every file's hash
            // and syncs with its connections idle), but at most `max_committing_jobs` of them
            // may be in flight: a slow disk holds new jobs back.
            if active >= self.config.max_active_jobs
                || self.committing_ids.len() + digesting >= self.config.max_committing_jobs
            {
                break;
            }
            // A resumed job waiting for a slot goes first, unless a queued job of a more
            // urgent class is ready.
            let resumed = loop {
                let Some(&entry) = self.resuming.first() else {
                    break None;
                };
                if self
                    .jobs
                    .get(&entry.1)
                    .is_some_and(|j| j.resume_waiting && matches!(j.phase, Phase::Paused))
                {
                    break Some(entry);
                }
                self.resuming.remove(&entry);
            };
            // The most urgent queued job whose dependencies all succeeded.
            let mut stale = Vec::new();
            let mut candidate = None;
            for &(priority, id) in &self.queue {
                let Some(j) = self
                    .jobs
                    .get(&id)
                    .filter(|j| matches!(j.phase, Phase::Queued))
                else {
                    stale.push((priority, id));
                    continue;
                };
                let ready = !j.pause_requested
                    && j.spec
                        .depends_on
                        .iter()
                        .all(|dep| self.finished.succeeded(dep));
                if ready {
                    candidate = Some((priority, id));
                    break;
                }
            }
            for entry in stale {
                self.queue.remove(&entry);
            }
            let candidate = candidate.and_then(|c| self.startable(c));
            // A parked job whose wait is over (the most urgent, then the earliest) goes
            // before the resumed and queued jobs of its class, which it started before;
            // not before a more urgent one.
            let parked = self
                .active_ids
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .filter(|j| j.slot_waiting && matches!(j.phase, Phase::Backoff { .. }))
                .map(|j| (Reverse(j.priority()), j.id))
                .min()
                .filter(|p| candidate.is_none_or(|c| p.0 <= c.0))
                .filter(|p| resumed.is_none_or(|r| p.0 <= r.0));
            if let Some((_, id)) = parked {
                self.start_attempt(id);
                continue;
            }
            if let Some(entry) = resumed.filter(|r| candidate.is_none_or(|c| r.0 <= c.0)) {
                self.resuming.remove(&entry);
                let now = self.now;
                let backoff = self.jobs.get_mut(&entry.1).and_then(|j| {
                    j.resume_waiting = false;
                    let backoff = j.paused_backoff.take();
                    // Paused mid-attempt: that URL did not fail, and the attempt goes on
                    // there (a fresh choice would splice another mirror's bytes on for no
                    // reason), unless its breaker opened meanwhile; a start-over that must
                    // stay on its URL stays whatever the breaker says.
                    if std::mem::take(&mut j.paused_mid_attempt) {
                        if j.in_stay_attempt {
                            j.stay_on_url = true;
                        } else {
                            j.prefer_url = true;
                        }
                    }
                    backoff.filter(|until| *until > now)
                });
                match backoff {
                    // Paused in a backoff not over yet: it waits out the rest.
                    Some(until) => {
                        if let Some(j) = self.jobs.get_mut(&entry.1) {
                            j.phase = Phase::Backoff { until };
                        }
                    }
                    None => self.start_attempt(entry.1),
                }
                continue;
            }
            let Some((priority, id)) = candidate else {
                break;
            };
            self.queue.remove(&(priority, id));
            self.start_job(id);
        }
        self.assign_connections();
    }

    /// Queued job `first` (the next to start), or the next one after it whose origin has
    /// room, or none: with as many running downloads going to an origin as it takes
    /// connections, another would only wait for one while holding a slot, and the jobs for
    /// other hosts queued behind it would wait too (`-j 4` with one connection per host ran
    /// a list of two hosts one host after the other). Such a job starts once its origin has
    /// room, before later ones. A job with mirrors is never held back; only the next
    /// [`BUSY_ORIGIN_LOOKAHEAD`] jobs are looked at.
    fn startable(&self, first: (Reverse<Priority>, JobId)) -> Option<(Reverse<Priority>, JobId)> {
        let limit = self.config.max_connections_per_origin;
        if limit >= self.config.max_active_jobs {
            // Fewer downloads run than one host may have connections: none is ever full
            // (and a list of thousands of small files pays nothing for the count).
            return Some(first);
        }
        let origin_of = |j: &Job| {
            if j.spec.mirrors.is_empty() {
                Origin::of(&j.spec.url).ok()
            } else {
                None
            }
        };
        // One connection per running download, by the origin it goes to: its transfer's
        // (after redirects, on a mirror; a segmented download's extra segments give their
        // connections up to queued downloads, see `transfer::QUEUE_GRACE`), or its URL's
        // when it has none yet (reading its state, checking its destination); none for one
        // waiting out a backoff.
        let mut slots: HashMap<Origin, usize> = HashMap::new();
        for j in self.active_ids.iter().filter_map(|id| self.jobs.get(id)) {
            if !j.holds_slot() || matches!(j.phase, Phase::Backoff { .. }) {
                continue;
            }
            let url = match j.transfers.values().next() {
                Some(t) => &t.url,
                None => self.job_url(j.id, j.mirror),
            };
            if let Ok(origin) = Origin::of(url) {
                *slots.entry(origin).or_default() += 1;
            }
        }
        let has_room = |j: &Job| {
            origin_of(j).is_none_or(|origin| slots.get(&origin).copied().unwrap_or(0) < limit)
        };
        if self.jobs.get(&first.1).is_none_or(|j| has_room(j)) {
            return Some(first);
        }
        self.queue
            .range(first..)
            .skip(1)
            .take(BUSY_ORIGIN_LOOKAHEAD)
            .find(|(_, id)| {
                self.jobs.get(id).is_some_and(|j| {
                    matches!(j.phase, Phase::Queued)
                        && !j.pause_requested
                        && j.spec
                            .depends_on
                            .iter()
                            .all(|dep| self.finished.succeeded(dep))
                        && has_room(j)
                })
            })
            .copied()
    }

    /// A queued job with a dependency that failed or names no job the engine knows of, that
    /// dependency, and the error it failed with (`None`: unknown, never submitted or
    /// finished too long ago for its outcome to be kept).
    fn failed_dependency(&self) -> Option<(JobId, JobId, Option<DownloadError>)> {
        self.queue.iter().find_map(|(_, id)| {
            let j = self
                .jobs
                .get(id)
                .filter(|j| matches!(j.phase, Phase::Queued))?;
            j.spec
                .depends_on
                .iter()
                .find_map(|dep| match self.finished.get(dep) {
                    Some(Err(error)) => Some((*id, *dep, Some(error.clone()))),
                    Some(Ok(())) => None,
                    None => (!self.jobs.contains_key(dep)).then_some((*id, *dep, None)),
                })
        })
    }

    /// Move a job from the active index to the committing one (it has just become
    /// `Committing`) or back (it has just left `Committing` for another active phase).
    fn set_committing(&mut self, id: JobId, committing: bool) {
        if committing {
            self.active_ids.remove(&id);
            self.committing_ids.insert(id);
        } else {
            self.committing_ids.remove(&id);
            self.active_ids.insert(id);
        }
    }

    /// Move a job from the active index to the digesting one (it has just asked for its
    /// executor digest) or back (it has its digest, or starts over).
    pub(super) fn set_digesting(&mut self, id: JobId, digesting: bool) {
        if digesting {
            self.active_ids.remove(&id);
            self.digesting_ids.insert(id);
        } else if self.digesting_ids.remove(&id) {
            self.active_ids.insert(id);
        }
    }

    /// The jobs that may be active, in id order (see `active_ids`); committing jobs and
    /// those waiting for their digest are not among them (see `committing_ids`,
    /// `digesting_ids`).
    fn maybe_active(&self) -> impl Iterator<Item = &Job> + '_ {
        self.active_ids
            .iter()
            .filter_map(|id| self.jobs.get(id).map(|j| &**j))
    }

    /// Debug builds: every queued job is in `queue`, every active one in `active_ids` (these
    /// may hold more, never less) and every job in `by_content`.
    fn debug_check_indexes(&self) {
        if cfg!(debug_assertions) {
            for j in self.jobs.values() {
                if matches!(j.phase, Phase::Queued) {
                    assert!(
                        self.queue.contains(&(Reverse(j.priority()), j.id)),
                        "queued job {:?} missing from the queue index",
                        j.id
                    );
                }
                if j.resume_waiting && matches!(j.phase, Phase::Paused) {
                    assert!(
                        self.resuming.contains(&(Reverse(j.priority()), j.id)),
                        "resumed job {:?} waits outside the resuming index",
                        j.id
                    );
                }
                assert!(
                    self.by_content
                        .get(&ContentKey::of(&j.spec))
                        .is_some_and(|ids| ids.contains(&j.id)),
                    "job {:?} missing from the dedup index",
                    j.id
                );
                if matches!(j.phase, Phase::Committing { .. }) {
                    assert!(
                        self.committing_ids.contains(&j.id),
                        "committing job {:?} missing from the committing index",
                        j.id
                    );
                } else if j.digesting() {
                    assert!(
                        self.digesting_ids.contains(&j.id),
                        "job {:?} waiting for its digest missing from the digesting index",
                        j.id
                    );
                } else if j.is_active() {
                    // (An entry of the digesting index whose job stopped waiting otherwise
                    // goes back with its digest's completion.)
                    assert!(
                        self.active_ids.contains(&j.id) || self.digesting_ids.contains(&j.id),
                        "active job {:?} missing from the active index",
                        j.id
                    );
                }
            }
            for (path, holder) in &self.dest_claims {
                let j = self.jobs.get(holder).unwrap_or_else(|| {
                    panic!("{} held by job {holder:?}, which has ended", path.display())
                });
                assert!(
                    (j.claims_provisional && j.spec.provisional_path() == *path)
                        || j.claimed_final.as_ref() == Some(path),
                    "{} held by job {holder:?}, which is not bound for it",
                    path.display()
                );
            }
            for id in &self.committing_ids {
                assert!(
                    self.jobs
                        .get(id)
                        .is_some_and(|j| matches!(j.phase, Phase::Committing { .. })),
                    "job {id:?} in the committing index is not committing"
                );
            }
        }
    }

    fn start_job(&mut self, id: JobId) {
        self.active_ids.insert(id);
        let j = self.jobs.get_mut(&id).expect("job exists");
        let url = j.spec.url.to_string();
        j.last_grant = self.now;
        j.started = self.now;
        self.stats.first_start.get_or_insert(self.now);
        self.event(Event::Started { job: id, url });
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.spec.fresh {
            // The caller vouches that there is nothing to look at (see `Download::fresh`).
            j.phase = Phase::LoadingState;
            j.state_on_disk = false;
            return self.start_attempt(id);
        }
        if j.spec.sha256.is_some() {
            // Already there? Hash the destination before fetching anything (for a directory,
            // the file the URL names: a server's own name is only known from a response).
            let path = j.spec.provisional_path();
            let file = FileId(self.next());
            let j = self.jobs.get_mut(&id).expect("job exists");
            j.file = Some(file);
            let checksum = j
                .spec
                .checksum
                .as_ref()
                .map(|c| checksum::ChecksumHasher::new(c.algorithm()));
            j.phase = Phase::CheckingExisting {
                offset: 0,
                len: 0,
                checksum,
            };
            self.file_io(id, FileStep::OpenExisting, IoOp::OpenRead { file, path });
        } else {
            self.load_state(id);
        }
    }

    fn load_state(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.phase = Phase::LoadingState;
        let path = j.spec.state_path();
        self.file_io(
            id,
            FileStep::ReadState,
            IoOp::ReadFile {
                path,
                max_len: STATE_MAX_BYTES,
            },
        );
    }

    /// Report a job's end, release its followers and dependants.
    fn finish(&mut self, id: JobId, result: Result<Outcome, DownloadError>) {
        self.abandon_probe(id);
        self.committing_ids.remove(&id);
        self.digesting_ids.remove(&id);
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let key = ContentKey::of(&job.spec);
        if let Some(ids) = self.by_content.get_mut(&key) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_content.remove(&key);
            }
        }
        self.release_claims(id, &job);
        self.finished.release(&job.spec.depends_on);
        self.finished
            .insert(id, result.as_ref().map(|_| ()).map_err(Clone::clone));
        if result.is_err() {
            self.check_deps = true;
        }
        match &result {
            Ok(_) => self.stats.done += 1,
            Err(DownloadError::Cancelled) => self.stats.cancelled += 1,
            Err(_) => self.stats.failed += 1,
        }
        // The most urgent first: of several jobs that waited for this one's destination, it
        // is the one that takes it over (the others wait for it in turn).
        let mut followers = job.followers;
        followers.sort_by_key(|f| self.jobs.get(f).map(|fj| Reverse(fj.priority())));
        let mut shared_failures = Vec::new();
        // After a failure not retried, the one follower that tries once more for the others.
        let mut retrying: Option<JobId> = None;
        for f in followers {
            let Some(fj) = self.jobs.get(&f) else {
                continue;
            };
            // Only a follower that fetches the same bytes with the same expectations, its
            // dependencies met (what `find_leader` asks), may take the leader's success as its
            // own. One that only waited for the leader's destination to be free (submitted
            // while the leader, cancelled, tidied up), or that followed such a one, runs on its
            // own: its URL fetched, its sha256 and dependencies checked.
            let duplicate = ContentKey::of(&fj.spec) == ContentKey::of(&job.spec)
                && fj.spec.size == job.spec.size
                && fj.spec.max_size == job.spec.max_size
                && fj.spec.checksum == job.spec.checksum
                && (fj.spec.sha256.is_some() || same_headers(&fj.spec.headers, &job.spec.headers))
                && fj
                    .spec
                    .depends_on
                    .iter()
                    .all(|d| self.finished.succeeded(d));
            // The very request the leader made (its URLs and headers too), failed after all
            // its retries (the network, a 5xx, bytes that failed verification): this one
            // would go through the same. It ends with that failure rather than trying it all
            // again (a URL listed four times made every retry four times, one job after the
            // other). After a failure not retried (a 404), one follower tries once more.
            // Not one that only waited for the leader's destination (a download submitted
            // again while its failed predecessor tidied up runs on its own), nor one with a
            // destination of its own to check (it may hold the expected bytes already).
            let same_request = duplicate
                && fj.duplicate
                && (fj.spec.sha256.is_none()
                    || fj.spec.provisional_path() == job.spec.provisional_path())
                && fj.spec.url == job.spec.url
                && fj.spec.mirrors == job.spec.mirrors
                && same_headers(&fj.spec.headers, &job.spec.headers);
            let fj = self.jobs.get_mut(&f).expect("follower exists");
            let shareable = |error: &DownloadError| {
                matches!(
                    error.class(),
                    ErrorClass::Network | ErrorClass::HttpStatus | ErrorClass::Verification
                )
            };
            match &result {
                Err(error)
                    if same_request
                        && shareable(error)
                        && (error.retryable() || job.retry_for_duplicates) =>
                {
                    shared_failures.push((f, error.clone()));
                }
                // Not retried, and one follower already tries once more: the others follow
                // it (each tried on its own, five duplicates of a 404 made five requests).
                Err(error) if same_request && shareable(error) && retrying.is_some() => {
                    let leader = retrying.expect("checked");
                    fj.phase = Phase::Following { leader };
                    let lends = (!fj.pause_requested).then_some(fj.urgency);
                    if let Some(l) = self.jobs.get_mut(&leader) {
                        l.followers.push(f);
                    }
                    if let Some(urgency) = lends {
                        self.raise_priority(leader, urgency);
                    }
                }
                Ok(o) if duplicate => {
                    // A follower into a directory is named after its own URL, never after
                    // its leader's file: two URLs with the same bytes, or one URL also listed
                    // with an `out=` name, keep their own names. Nor after a name the
                    // leader's response gave (`Content-Disposition`): the copy would replace
                    // whatever is there under a name the server chose, unchecked. The same
                    // URL into the same directory is the same download: the leader's file,
                    // under whatever name it got, is this job's too.
                    let dest = match (&fj.spec.dest, &job.spec.dest) {
                        (Destination::File(p), _) => p.clone(),
                        (Destination::Dir(d), Destination::Dir(ld))
                            if d == ld && fj.spec.url == job.spec.url =>
                        {
                            o.path.clone()
                        }
                        (Destination::Dir(d), _) => {
                            d.join(crate::download::file_name_from_url(&fj.spec.url))
                        }
                    };
                    // Its own outcome: no attempt and no byte of its own, over its own life.
                    let mut outcome = o.clone();
                    outcome.path = dest.clone();
                    outcome.bytes_fetched = 0;
                    outcome.resumed_from = 0;
                    outcome.attempts = 0;
                    outcome.delivery = Delivery::Duplicate;
                    outcome.elapsed = self.now.saturating_since(fj.submitted);
                    if dest == o.path {
                        // Same destination: the leader's commit is this job's too.
                        fj.phase = Phase::Copying {
                            outcome: outcome.clone(),
                        };
                        self.pending_finish.push((f, outcome));
                        continue;
                    }
                    fj.phase = Phase::Copying { outcome };
                    self.file_io(
                        f,
                        FileStep::CopyFromLeader,
                        IoOp::CopyFile {
                            from: o.path.clone(),
                            to: dest,
                        },
                    );
                }
                // The leader failed or was cancelled, or this job is no duplicate of it: the
                // follower tries on its own. One bound for the leader's destination takes it
                // over; a second one bound there follows the first until it ends.
                _ => {
                    // Not one paused: the others would wait for its caller's resume.
                    if same_request
                        && !fj.pause_requested
                        && retrying.is_none()
                        && result.as_ref().is_err_and(shareable)
                    {
                        // Not retried: this one tries once more, for the others too.
                        fj.retry_for_duplicates = true;
                        retrying = Some(f);
                    }
                    if !fj.claims_provisional {
                        let path = fj.spec.provisional_path();
                        if let Some(&first) = self.dest_claims.get(&path) {
                            fj.phase = Phase::Following { leader: first };
                            let lends = (!fj.pause_requested).then_some(fj.urgency);
                            if let Some(first) = self.jobs.get_mut(&first) {
                                first.followers.push(f);
                            }
                            if let Some(urgency) = lends {
                                self.raise_priority(first, urgency);
                            }
                            continue;
                        }
                        fj.claims_provisional = true;
                        self.dest_claims.insert(path, f);
                    }
                    fj.phase = Phase::Queued;
                    // Queued with dependencies: the next schedule checks them (one may
                    // have failed while this job waited).
                    self.check_deps |= !fj.spec.depends_on.is_empty();
                    self.queue.insert((Reverse(fj.priority()), f));
                }
            }
        }
        self.event(Event::Finished { job: id, result });
        for (f, outcome) in std::mem::take(&mut self.pending_finish) {
            self.finish(f, Ok(outcome));
        }
        for (f, error) in shared_failures {
            self.finish(f, Err(error));
        }
        self.schedule();
    }

    // ---------------------------------------------------------------- timers

    /// The job's next deadline: (when, which timeout, transfer it concerns).
    fn job_deadline(&self, j: &Job) -> Option<(Instant, Due, Option<u64>)> {
        match &j.phase {
            Phase::Backoff { .. } if j.slot_waiting => None,
            Phase::Backoff { until } => Some((*until, Due::Backoff, None)),
            Phase::Running => {
                // A free connection with nothing left to fetch watches for stalled segments.
                let free =
                    j.segmented && j.gaps.is_empty() && j.transfers.len() < j.max_transfers();
                j.transfers
                    .iter()
                    .filter_map(|(tid, t)| {
                        let stall = free
                            .then(|| {
                                // Lagging: now; else when it will count as stalled.
                                let lagging = j
                                    .best_segment_rate
                                    .is_some_and(|best| t.lagging(self.now, best));
                                if lagging {
                                    Some(self.now)
                                } else {
                                    t.stalled_at()
                                }
                            })
                            .flatten();
                        let due = t.deadline(&self.config, self.now);
                        let at = match (due, stall) {
                            (Some(d), Some(s)) if s < d.0 => Some((s, Due::Stalled)),
                            (None, Some(s)) => Some((s, Due::Stalled)),
                            (d, _) => d,
                        };
                        at.map(|(at, kind)| (at, kind, Some(*tid)))
                    })
                    .min_by_key(|(at, _, tid)| (*at, *tid))
            }
            Phase::Paused => None,
            _ => None,
        }
    }

    fn handle_timers(&mut self) {
        let now = self.now;
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
        // A connection kept for the queue whose grace ended: an extra segment may take it.
        let grace_ended = self.conns.values().any(|c| {
            matches!(c.state, ConnState::Idle { since } if since + transfer::QUEUE_GRACE <= now)
        });
        if grace_ended && self.extra_segment_waits() {
            self.assign_connections();
        }
        // Every due deadline, in job order; one job may have several.
        loop {
            let due = self
                .maybe_active()
                .find_map(|j| match self.job_deadline(j) {
                    Some((t, kind, tid)) if t <= now => Some((j.id, kind, tid)),
                    _ => None,
                });
            let Some((id, kind, tid)) = due else { break };
            self.on_deadline(id, kind, tid);
        }
    }

    fn on_deadline(&mut self, id: JobId, kind: Due, tid: Option<u64>) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Phase::Backoff { .. } = j.phase {
            if j.parked {
                // Its slot went to another download meanwhile: it starts when one is free.
                j.slot_waiting = true;
                return self.schedule();
            }
            // Parked behind a breaker again, its slot goes to the next download when this
            // input ends (`slot_freed`).
            self.start_attempt(id);
            return;
        }
        let Some(tid) = tid else { return };
        self.on_transfer_deadline(id, tid, kind);
    }

    // ---------------------------------------------------------------- bandwidth

    /// When transfer may receive again under the rate limits (None: now).
    fn throttle_until(&mut self, id: JobId) -> Option<Instant> {
        let now = self.now;
        // The reserve keeps tokens for more urgent classes only while one of them has a
        // job running: alone, a class uses the whole limit.
        let mine = self.jobs[&id].priority();
        let urgent_running = self
            .jobs
            .values()
            .any(|o| o.priority() > mine && matches!(o.phase, Phase::Running));
        let j = self.jobs.get_mut(&id).expect("job exists");
        let reserve = if urgent_running {
            j.priority().reserve_fraction()
        } else {
            0.0
        };
        // The reserve keeps tokens for more urgent classes, but only for a while: a job that
        // has waited BURST since its last read competes without it, so a busy higher class
        // cannot starve it.
        let starved_at = j.last_grant + BURST;
        let mut at = now;
        if let Some(b) = j.bucket.as_mut() {
            at = at.max(b.ready_at(now, 0.0));
        }
        if let Some(g) = self.global_bucket.as_mut() {
            let cap = g.capacity();
            let ready = if now >= starved_at {
                g.ready_at(now, 0.0)
            } else {
                let with_reserve = g.ready_at(now, reserve * cap);
                with_reserve.min(starved_at.max(g.ready_at(now, 0.0)))
            };
            at = at.max(ready);
        }
        (at > now).then_some(at)
    }

    /// How many bytes job `id`'s next read may take under its rate limits (unlimited
    /// without one): the tokens its buckets hold now, but at least an eighth of a second of
    /// the tightest rate (and [`MIN_THROTTLED_READ`]), so that a read past the tokens goes
    /// at most that far beyond the limit's one-second allowance, and a job of a lower class
    /// that reads when it has waited long enough (see `throttle_until`) still gets a useful
    /// share. Without the cap one read took up to a whole receive chunk (256 KiB), which at
    /// a low rate is many seconds of the limit, never paid back after a file's last read.
    ///
    /// The tokens (and the eighth of a second) are shared by the reads that may be in
    /// flight under the same bucket at once: one per busy connection for the global limit, one
    /// per transfer of the job for its own. Reads issued together (every connection's first
    /// read, before any byte of them is counted) each took the whole allowance, so a start
    /// burst was as many seconds of the limit as there were connections.
    pub(super) fn read_allowance(&mut self, id: JobId) -> usize {
        let now = self.now;
        // Connections that carry (or are about to carry) a transfer: idle pooled ones, and
        // ones closing, read nothing.
        let readers = self
            .conns
            .values()
            .filter(|c| {
                matches!(
                    c.state,
                    ConnState::Busy { .. } | ConnState::Connecting { .. }
                )
            })
            .count()
            .max(1) as f64;
        let mut allowed = f64::INFINITY;
        let mut share = f64::INFINITY;
        if let Some(j) = self.jobs.get_mut(&id) {
            let transfers = j.transfers.len().max(1) as f64;
            if let Some(b) = j.bucket.as_mut() {
                allowed = allowed.min(b.available(now) / transfers);
                share = share.min(b.rate() as f64 / 8.0 / transfers);
            }
        }
        if let Some(g) = self.global_bucket.as_mut() {
            allowed = allowed.min(g.available(now) / readers);
            share = share.min(g.rate() as f64 / 8.0 / readers);
        }
        if allowed.is_infinite() {
            return usize::MAX;
        }
        let floor = (share as usize).max(MIN_THROTTLED_READ);
        (allowed.max(0.0) as usize).max(floor)
    }

    fn account(&mut self, id: JobId, bytes: u64) {
        let now = self.now;
        if let Some(g) = self.global_bucket.as_mut() {
            g.consume(now, bytes);
        }
        if let Some(j) = self.jobs.get_mut(&id) {
            j.last_grant = now;
            if let Some(b) = j.bucket.as_mut() {
                b.consume(now, bytes);
            }
        }
        if let Some(j) = self.jobs.get_mut(&id) {
            j.meter.record(now, bytes);
        }
        let s = &mut self.stats;
        s.bytes += bytes;
        s.meter.record(now, bytes);
    }

    fn wake_throttled(&mut self) {
        let waiting: Vec<(JobId, u64)> = self
            .maybe_active()
            .flat_map(|j| {
                j.transfers
                    .iter()
                    .filter(|(_, t)| t.throttled_until.is_some())
                    .map(move |(tid, _)| (j.id, *tid))
            })
            .collect();
        let now = self.now;
        for (id, tid) in waiting {
            if let Some(t) = self
                .jobs
                .get_mut(&id)
                .and_then(|j| j.transfers.get_mut(&tid))
            {
                t.end_throttle(now);
            }
            self.recv(id, tid);
        }
    }
}

pub(super) fn origin_label(url: &url::Url) -> String {
    Origin::of(url)
        .map(|o| o.to_string())
        .unwrap_or_else(|_| url.to_string())
}

fn unexpected(result: &IoResult) -> IoFailure {
    IoFailure::new(
        crate::io::IoErrorKind::Other,
        format!("unexpected completion {result:?}"),
    )
}
