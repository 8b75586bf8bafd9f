//! Scenarios: everything one simulated run is made of, as plain data.
//!
//! A [`Scenario`] holds the root seed (which drives latencies, piece sizes and content), the
//! workload (which downloads, what the origins serve for them) and the fault plan (a list of
//! [`Fault`]s, each a trigger plus what goes wrong). [`Scenario::generate`] draws all of it from
//! one seed, with "swarm" variety: each seed enables a random subset of fault kinds, so some
//! seeds hammer one kind and others mix many. quickcheck's `Arbitrary` generates scenarios the
//! same way and shrinks them by dropping faults and downloads and halving sizes, so a failure
//! shrinks to the smallest plan that still fails.
//!
//! This module owns no behaviour: the world (`crate::world`) decides what a fault does.

use std::fmt;

use crate::seed::{sub_seed, SimRng, Stream};

/// What the caller expects of the bytes of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The download carries the SHA-256 of the origin's canonical representation.
    Sha256,
    /// No hash: any single representation the origin served is acceptable.
    Unchecked,
    /// The download carries a SHA-256 no representation has: it must never commit.
    WrongSha256,
}

/// The validator an origin sends for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatorKind {
    /// A strong `ETag`.
    Etag,
    /// `Last-Modified` with a `Date` at least a second later (a strong validator).
    LastModified,
    /// None: the engine cannot resume and must fetch whole bodies.
    Absent,
}

/// How an origin frames a resource's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes (only for checked downloads, since
    /// a clean early close is indistinguishable from the end).
    CloseDelimited,
}

/// A mirror of a download: another origin that serves the resource at `/f/d{i}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorPlan {
    /// The origin (never the resource's home origin, nor another mirror's).
    pub origin: u8,
    /// The mirror sends the same validator (`ETag` or `Last-Modified`) as the home origin
    /// for the representation it serves; otherwise one of its own.
    pub same_validator: bool,
    /// The mirror serves another (stale) representation: other bytes. Only for downloads
    /// with the expected sha256, which is the only way to tell. A stale mirror with
    /// `same_validator` lies: its validator says the bytes are the canonical ones.
    pub stale: bool,
}

/// One download of the workload and the resource behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPlan {
    /// Index of the origin that serves the resource.
    pub origin: u8,
    /// Size of the canonical representation in bytes.
    pub size: u32,
    /// What the download expects.
    pub check: Check,
    /// Whether the download also states the expected size.
    pub size_hint: bool,
    /// The resource's validator.
    pub validator: ValidatorKind,
    /// The resource's body framing.
    pub framing: BodyFraming,
    /// When set, the download's URL is on this origin and redirects to the resource.
    pub redirect_via: Option<u8>,
    /// The URL's host does not resolve: the bytes do not exist.
    pub dead_host: bool,
    /// Connections the download may use at once (segmented download when > 1).
    pub segments: u8,
    /// Mirrors, given to the engine with `Download::mirror` in this order.
    pub mirrors: Vec<MirrorPlan>,
}

impl DownloadPlan {
    /// Whether the download can and must finish once faults are healed: its bytes exist
    /// and at least one of its URLs serves them (a live primary, or a mirror that is not
    /// stale).
    pub fn is_live(&self) -> bool {
        self.check != Check::WrongSha256
            && (!self.dead_host || self.mirrors.iter().any(|m| !m.stale))
    }

    /// Whether the engine can tell wrong bytes from right ones (it has a hash).
    pub fn is_verifiable(&self) -> bool {
        self.check != Check::Unchecked
    }
}

/// A connect attempt that goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFault {
    /// Connection refused.
    Refused,
    /// The name does not resolve (this once).
    Dns,
    /// The connect never completes (until the engine gives up and closes it).
    Hang,
}

/// A response that goes wrong. Offsets are in per-mille of the response's wire length so a
/// fault means the same thing whatever the body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFault {
    /// An error status, with `Retry-After` seconds when set.
    Status {
        code: u16,
        retry_after_s: Option<u8>,
    },
    /// The connection is reset after this much of the response.
    Reset { at_permille: u16 },
    /// The connection goes silent after this much of the response.
    Stall { at_permille: u16 },
    /// The response arrives in pieces of `piece` bytes every `gap_ms`.
    Trickle { piece: u16, gap_ms: u16 },
    /// The connection closes cleanly after this much of the response.
    Truncate { at_permille: u16 },
    /// One body byte is XORed with `xor` (only for checked downloads).
    Corrupt { at_permille: u16, xor: u8 },
    /// `Content-Length` is off by `delta` (shorter only where a hash or a range catches it).
    WrongLength { delta: i16 },
    /// A ranged request gets the whole body with 200.
    IgnoreRange,
    /// A 206 whose `Content-Range` does not continue the request (shifted start, or a wrong
    /// complete length).
    WrongContentRange { shift: i16 },
    /// The resource changes (new content, new validator) for this and the next `lasting - 1`
    /// requests, then changes back.
    EtagChange { lasting: u8 },
    /// A redirect into a two-URL loop.
    RedirectLoop,
    /// Garbage or hostile bytes instead of a response.
    Garbage { seed: u32 },
}

/// A local file operation that goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// This and the next `writes - 1` writes fail with "no space", writing nothing.
    Full { writes: u8 },
    /// This write stores only a prefix, then fails with "no space".
    ShortWrite { keep_permille: u16 },
}

/// One planned fault: a trigger and what goes wrong. Faults fire only in the safety phase;
/// a fault whose trigger comes after the heal, or does not apply, never fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The `nth` (from 0) connect to origin `origin` fails.
    Connect {
        origin: u8,
        nth: u16,
        kind: ConnectFault,
    },
    /// The `nth` (from 0) request to origin `origin` is answered badly.
    Response {
        origin: u8,
        nth: u16,
        kind: ResponseFault,
    },
    /// The `nth` (from 0) write (`WriteAt` or `WriteFileAtomic`) fails.
    Disk { nth_write: u16, kind: DiskFault },
    /// The machine crashes after `after_step` steps of the run (between two events); the
    /// engine restarts `restart_ms` later from what is on disk.
    Crash { after_step: u32, restart_ms: u32 },
    /// The `nth` (from 0) open of a named partial file is refused: another process holds
    /// it locked (`IoErrorKind::Busy`).
    PartialBusy { nth_open: u16 },
    /// The caller acts on a download after `after_step` steps of the run, if it is running
    /// then: the plans's download `download` (modulo their number).
    Control {
        after_step: u32,
        download: u8,
        action: ControlAction,
    },
}

/// What the caller does to a running download ([`Fault::Control`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// Cancel it, keeping its partial (`CancelMode::KeepPartial`); it is started again
    /// later, and resumes.
    CancelKeep,
    /// Cancel it and remove its partial (`CancelMode::Discard`); it is started again later.
    CancelDiscard,
    /// Pause it, and resume it `resume_ms` later.
    Pause { resume_ms: u16 },
}

/// Fault kinds, for coverage counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Refused,
    Dns,
    ConnectHang,
    Reset,
    Stall,
    Trickle,
    Truncate,
    Corrupt,
    WrongLength,
    Status5xx,
    Status429,
    IgnoreRange,
    WrongContentRange,
    EtagChange,
    RedirectLoop,
    Garbage,
    DiskFull,
    ShortWrite,
    Crash,
    PartialBusy,
    Cancel,
    Pause,
}

impl FaultKind {
    /// Every kind; a default swarm must fire each at least once.
    pub const ALL: [FaultKind; 22] = [
        FaultKind::Refused,
        FaultKind::Dns,
        FaultKind::ConnectHang,
        FaultKind::Reset,
        FaultKind::Stall,
        FaultKind::Trickle,
        FaultKind::Truncate,
        FaultKind::Corrupt,
        FaultKind::WrongLength,
        FaultKind::Status5xx,
        FaultKind::Status429,
        FaultKind::IgnoreRange,
        FaultKind::WrongContentRange,
        FaultKind::EtagChange,
        FaultKind::RedirectLoop,
        FaultKind::Garbage,
        FaultKind::DiskFull,
        FaultKind::ShortWrite,
        FaultKind::Crash,
        FaultKind::PartialBusy,
        FaultKind::Cancel,
        FaultKind::Pause,
    ];

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Refused => "refused",
            FaultKind::Dns => "dns",
            FaultKind::ConnectHang => "connect-hang",
            FaultKind::Reset => "reset",
            FaultKind::Stall => "stall",
            FaultKind::Trickle => "trickle",
            FaultKind::Truncate => "truncate",
            FaultKind::Corrupt => "corrupt",
            FaultKind::WrongLength => "wrong-length",
            FaultKind::Status5xx => "status-5xx",
            FaultKind::Status429 => "status-429",
            FaultKind::IgnoreRange => "ignore-range",
            FaultKind::WrongContentRange => "wrong-content-range",
            FaultKind::EtagChange => "etag-change",
            FaultKind::RedirectLoop => "redirect-loop",
            FaultKind::Garbage => "garbage",
            FaultKind::DiskFull => "disk-full",
            FaultKind::ShortWrite => "short-write",
            FaultKind::Crash => "crash",
            FaultKind::PartialBusy => "partial-busy",
            FaultKind::Cancel => "cancel",
            FaultKind::Pause => "pause",
        }
    }
}

impl Fault {
    /// The kind this fault counts as.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Connect { kind, .. } => match kind {
                ConnectFault::Refused => FaultKind::Refused,
                ConnectFault::Dns => FaultKind::Dns,
                ConnectFault::Hang => FaultKind::ConnectHang,
            },
            Fault::Response { kind, .. } => match kind {
                ResponseFault::Status { code: 429, .. } => FaultKind::Status429,
                ResponseFault::Status { .. } => FaultKind::Status5xx,
                ResponseFault::Reset { .. } => FaultKind::Reset,
                ResponseFault::Stall { .. } => FaultKind::Stall,
                ResponseFault::Trickle { .. } => FaultKind::Trickle,
                ResponseFault::Truncate { .. } => FaultKind::Truncate,
                ResponseFault::Corrupt { .. } => FaultKind::Corrupt,
                ResponseFault::WrongLength { .. } => FaultKind::WrongLength,
                ResponseFault::IgnoreRange => FaultKind::IgnoreRange,
                ResponseFault::WrongContentRange { .. } => FaultKind::WrongContentRange,
                ResponseFault::EtagChange { .. } => FaultKind::EtagChange,
                ResponseFault::RedirectLoop => FaultKind::RedirectLoop,
                ResponseFault::Garbage { .. } => FaultKind::Garbage,
            },
            Fault::Disk { kind, .. } => match kind {
                DiskFault::Full { .. } => FaultKind::DiskFull,
                DiskFault::ShortWrite { .. } => FaultKind::ShortWrite,
            },
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::PartialBusy { .. } => FaultKind::PartialBusy,
            Fault::Control { action, .. } => match action {
                ControlAction::CancelKeep | ControlAction::CancelDiscard => FaultKind::Cancel,
                ControlAction::Pause { .. } => FaultKind::Pause,
            },
        }
    }
}

/// A deliberate bug planted in the simulated world, to show the checker catches what it
/// claims to catch. Never part of a generated scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The disk completes a `Sync` before earlier writes to the same file (violating the
    /// per-file order of the call contract): the durable image misses bytes the engine
    /// believes are durable.
    DiskReordersSync,
    /// Origins answer every ranged request with a valid-looking 206 (right `Content-Range`,
    /// the validator asked for) whose body comes from another representation: a splice.
    OriginSplicesRanges,
}

impl PlantedBug {
    /// Parses `disk-reorders-sync` or `origin-splices-ranges`.
    pub fn parse(s: &str) -> Option<PlantedBug> {
        match s {
            "disk-reorders-sync" => Some(PlantedBug::DiskReordersSync),
            "origin-splices-ranges" => Some(PlantedBug::OriginSplicesRanges),
            _ => None,
        }
    }

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::DiskReordersSync => "disk-reorders-sync",
            PlantedBug::OriginSplicesRanges => "origin-splices-ranges",
        }
    }
}

/// The data of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Root seed: latencies, piece sizes, content and jitter derive from it.
    pub seed: u64,
    /// Number of origins (`o0.sim`, `o1.sim`, ...).
    pub origins: u8,
    /// The downloads, all submitted at time zero.
    pub downloads: Vec<DownloadPlan>,
    /// The fault plan.
    pub faults: Vec<Fault>,
    /// When faults stop (the start of the liveness phase), in simulated milliseconds.
    pub heal_at_ms: u64,
    /// The engine's checkpoint size.
    pub checkpoint_bytes: u64,
    /// The engine's limit on jobs transferring at once.
    pub max_active_jobs: u8,
    /// The engine's global rate limit in bytes per second, if any.
    pub rate_limit: Option<u32>,
    /// The engine's `unnamed_max`: downloads of known length up to it use unnamed files.
    pub unnamed_max: u64,
    /// The engine's retry budget (retries per minute). Generated scenarios use
    /// [`RETRY_BUDGET_PER_MINUTE`]; hand-made ones may squeeze it.
    pub retry_budget_per_minute: u32,
    /// The engine's attempts per download (`RetryPolicy::max_attempts`): mostly 5, whose
    /// backoffs add up to about the breaker's cool-down; some seeds 12, whose backoffs far
    /// outlast it (a download then waits behind a breaker for as long as they would).
    pub max_attempts: u32,
    /// A planted world bug, if any.
    pub bug: Option<PlantedBug>,
}

/// The retry budget of generated scenarios: with at most four downloads it never runs dry,
/// so the budget's waits are exercised by hand-made scenarios.
pub const RETRY_BUDGET_PER_MINUTE: u32 = 600;

/// Largest body a generated download has.
pub const MAX_BODY: u64 = 300 * 1024;

impl Scenario {
    /// The scenario of `seed`: workload and fault plan drawn from the seed's workload stream.
    pub fn generate(seed: u64) -> Scenario {
        let mut r = SimRng::new(sub_seed(seed, Stream::Workload));
        let origins = r.range(1, 4) as u8;
        let count = r.range(1, 4) as usize;
        let downloads = (0..count).map(|_| gen_download(&mut r, origins)).collect();
        // Swarm testing: each seed enables its own subset of fault kinds.
        // (Kinds added later are drawn at the end, so older seeds keep their plans.)
        let enabled: Vec<FaultKind> = FaultKind::ALL
            .iter()
            .copied()
            .filter(|k| {
                !matches!(
                    k,
                    FaultKind::PartialBusy | FaultKind::Cancel | FaultKind::Pause
                )
            })
            .filter(|_| r.chance(0.45))
            .collect();
        let mut faults = Vec::new();
        if !enabled.is_empty() {
            for _ in 0..r.range(0, 14) {
                let kind = r.pick(&enabled);
                faults.push(gen_fault(&mut r, kind, origins));
            }
        }
        let mut scenario = Scenario {
            seed,
            origins,
            downloads,
            faults,
            heal_at_ms: r.range(2_000, 90_000),
            checkpoint_bytes: r.pick(&[16 * 1024, 64 * 1024, 1024 * 1024]),
            max_active_jobs: r.pick(&[1, 2, 16]),
            rate_limit: r
                .chance(0.15)
                .then(|| r.range(64 * 1024, 1024 * 1024) as u32),
            // Drawn last, so the draws above stay what they were before it existed.
            unnamed_max: r.pick(&[0, 64 * 1024, u64::MAX]),
            retry_budget_per_minute: RETRY_BUDGET_PER_MINUTE,
            max_attempts: 5,
            bug: None,
        };
        // Drawn after everything else, for the same reason.
        if r.chance(0.25) {
            for _ in 0..r.range(1, 4) {
                let kind = FaultKind::PartialBusy;
                scenario.faults.push(gen_fault(&mut r, kind, origins));
            }
        }
        // The caller's own acts, drawn after everything else for the same reason.
        if r.chance(0.3) {
            for _ in 0..r.range(1, 3) {
                let kind = r.pick(&[FaultKind::Cancel, FaultKind::Pause]);
                scenario.faults.push(gen_fault(&mut r, kind, origins));
            }
        }
        // Last again.
        scenario.max_attempts = r.pick(&[5, 5, 12]);
        scenario
    }

    /// This scenario with a planted bug.
    pub fn with_bug(mut self, bug: Option<PlantedBug>) -> Scenario {
        self.bug = bug;
        if bug == Some(PlantedBug::DiskReordersSync) {
            // Only named partials issue syncs of their own (an unnamed file's data is synced
            // by its Publish, after its writes): the bug needs them to show.
            self.unnamed_max = 0;
        }
        self
    }

    /// Smaller variants, most aggressive first: fewer faults, fewer downloads, smaller
    /// bodies, an earlier heal.
    pub fn shrink_candidates(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        if self.faults.len() > 1 {
            let half = self.faults.len() / 2;
            for keep in [&self.faults[..half], &self.faults[half..]] {
                let mut s = self.clone();
                s.faults = keep.to_vec();
                out.push(s);
            }
        }
        for i in 0..self.faults.len() {
            let mut s = self.clone();
            s.faults.remove(i);
            out.push(s);
        }
        if self.downloads.len() > 1 {
            for i in 0..self.downloads.len() {
                let mut s = self.clone();
                s.downloads.remove(i);
                out.push(s);
            }
        }
        for i in 0..self.downloads.len() {
            for m in 0..self.downloads[i].mirrors.len() {
                let mut s = self.clone();
                s.downloads[i].mirrors.remove(m);
                out.push(s);
            }
        }
        for i in 0..self.downloads.len() {
            if self.downloads[i].size > 1 {
                let mut s = self.clone();
                s.downloads[i].size /= 2;
                out.push(s);
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            let simpler = match *f {
                Fault::Response { origin, nth, kind } if nth > 0 => Some(Fault::Response {
                    origin,
                    nth: nth / 2,
                    kind,
                }),
                Fault::Connect { origin, nth, kind } if nth > 0 => Some(Fault::Connect {
                    origin,
                    nth: nth / 2,
                    kind,
                }),
                Fault::Disk { nth_write, kind } if nth_write > 0 => Some(Fault::Disk {
                    nth_write: nth_write / 2,
                    kind,
                }),
                Fault::PartialBusy { nth_open } if nth_open > 0 => Some(Fault::PartialBusy {
                    nth_open: nth_open / 2,
                }),
                Fault::Control {
                    after_step,
                    download,
                    action,
                } if after_step > 1 => Some(Fault::Control {
                    after_step: after_step / 2,
                    download,
                    action,
                }),
                _ => None,
            };
            if let Some(simpler) = simpler {
                let mut s = self.clone();
                s.faults[i] = simpler;
                out.push(s);
            }
        }
        out
    }
}

fn gen_download(r: &mut SimRng, origins: u8) -> DownloadPlan {
    let check = match r.below(100) {
        0..=59 => Check::Sha256,
        60..=94 => Check::Unchecked,
        _ => Check::WrongSha256,
    };
    let validator = match r.below(100) {
        0..=69 => ValidatorKind::Etag,
        70..=84 => ValidatorKind::LastModified,
        _ => ValidatorKind::Absent,
    };
    let framing = match r.below(100) {
        0..=69 => BodyFraming::Length,
        70..=89 => BodyFraming::Chunked,
        _ if check != Check::Unchecked => BodyFraming::CloseDelimited,
        _ => BodyFraming::Length,
    };
    let size = if r.chance(0.03) {
        0
    } else {
        r.log_range(1, MAX_BODY) as u32
    };
    let origin = r.below(u64::from(origins)) as u8;
    let size_hint = r.chance(0.2);
    let redirect_via = r.chance(0.2).then(|| r.below(u64::from(origins)) as u8);
    let dead_host = r.chance(0.05);
    let segments = if r.chance(0.3) {
        r.range(2, 4) as u8
    } else {
        1
    };
    // Mirrors live on other origins, so they need at least two.
    let mut mirrors: Vec<MirrorPlan> = Vec::new();
    if origins >= 2 && r.chance(0.35) {
        let others: Vec<u8> = (0..origins).filter(|&o| o != origin).collect();
        let count = r.range(1, 2.min(others.len() as u64)) as usize;
        let mut pool = others;
        for _ in 0..count {
            let at = r.below(pool.len() as u64) as usize;
            let o = pool.remove(at);
            mirrors.push(MirrorPlan {
                origin: o,
                same_validator: r.chance(0.5),
                stale: check == Check::Sha256 && r.chance(0.25),
            });
        }
    }
    DownloadPlan {
        origin,
        size,
        check,
        size_hint,
        validator,
        framing,
        redirect_via,
        dead_host,
        segments,
        mirrors,
    }
}

fn gen_fault(r: &mut SimRng, kind: FaultKind, origins: u8) -> Fault {
    let origin = r.below(u64::from(origins)) as u8;
    let nth = r.range(0, 10) as u16;
    let permille = |r: &mut SimRng| r.range(0, 999) as u16;
    let response = |kind| Fault::Response { origin, nth, kind };
    let connect = |kind| Fault::Connect { origin, nth, kind };
    match kind {
        FaultKind::Refused => connect(ConnectFault::Refused),
        FaultKind::Dns => connect(ConnectFault::Dns),
        FaultKind::ConnectHang => connect(ConnectFault::Hang),
        FaultKind::Reset => response(ResponseFault::Reset {
            at_permille: permille(r),
        }),
        FaultKind::Stall => response(ResponseFault::Stall {
            at_permille: permille(r),
        }),
        FaultKind::Trickle => response(ResponseFault::Trickle {
            piece: r.range(1, 200) as u16,
            gap_ms: r.range(100, 2500) as u16,
        }),
        FaultKind::Truncate => response(ResponseFault::Truncate {
            at_permille: permille(r),
        }),
        FaultKind::Corrupt => response(ResponseFault::Corrupt {
            at_permille: permille(r),
            xor: r.range(1, 255) as u8,
        }),
        FaultKind::WrongLength => {
            let magnitude = r.log_range(1, 5000) as i16;
            response(ResponseFault::WrongLength {
                delta: if r.chance(0.5) { magnitude } else { -magnitude },
            })
        }
        FaultKind::Status5xx => response(ResponseFault::Status {
            code: r.pick(&[500, 502, 503, 504]),
            retry_after_s: r.chance(0.3).then(|| r.range(0, 8) as u8),
        }),
        FaultKind::Status429 => response(ResponseFault::Status {
            code: 429,
            retry_after_s: r.chance(0.8).then(|| r.range(0, 8) as u8),
        }),
        FaultKind::IgnoreRange => response(ResponseFault::IgnoreRange),
        FaultKind::WrongContentRange => {
            let magnitude = r.log_range(1, 4000) as i16;
            response(ResponseFault::WrongContentRange {
                shift: match r.below(3) {
                    0 => 0,
                    1 => magnitude,
                    _ => -magnitude,
                },
            })
        }
        FaultKind::EtagChange => response(ResponseFault::EtagChange {
            lasting: r.range(1, 4) as u8,
        }),
        FaultKind::RedirectLoop => response(ResponseFault::RedirectLoop),
        FaultKind::Garbage => response(ResponseFault::Garbage {
            seed: r.next_u64() as u32,
        }),
        FaultKind::DiskFull => Fault::Disk {
            nth_write: r.range(0, 40) as u16,
            kind: DiskFault::Full {
                writes: r.range(1, 5) as u8,
            },
        },
        FaultKind::ShortWrite => Fault::Disk {
            nth_write: r.range(0, 40) as u16,
            kind: DiskFault::ShortWrite {
                keep_permille: permille(r),
            },
        },
        FaultKind::Crash => Fault::Crash {
            after_step: r.log_range(1, 400) as u32,
            restart_ms: r.range(0, 3000) as u32,
        },
        FaultKind::PartialBusy => Fault::PartialBusy {
            nth_open: r.range(0, 6) as u16,
        },
        FaultKind::Cancel | FaultKind::Pause => Fault::Control {
            after_step: r.log_range(1, 600) as u32,
            download: r.below(4) as u8,
            action: match kind {
                FaultKind::Pause => ControlAction::Pause {
                    resume_ms: r.range(0, 4000) as u16,
                },
                _ if r.chance(0.5) => ControlAction::CancelKeep,
                _ => ControlAction::CancelDiscard,
            },
        },
    }
}

impl quickcheck::Arbitrary for Scenario {
    fn arbitrary(g: &mut quickcheck::Gen) -> Scenario {
        Scenario::generate(u64::arbitrary(g))
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Scenario>> {
        Box::new(self.shrink_candidates().into_iter())
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario seed={} origins={} heal_at={}ms checkpoint_bytes={} max_active_jobs={} \
             rate_limit={:?} unnamed_max={} retry_budget={}/min max_attempts={} bug={}",
            self.seed,
            self.origins,
            self.heal_at_ms,
            self.checkpoint_bytes,
            self.max_active_jobs,
            self.rate_limit,
            self.unnamed_max,
            self.retry_budget_per_minute,
            self.max_attempts,
            self.bug.map_or("none", PlantedBug::name)
        )?;
        for (i, d) in self.downloads.iter().enumerate() {
            writeln!(f, "  download d{i}: {d:?}")?;
        }
        for (i, x) in self.faults.iter().enumerate() {
            writeln!(f, "  fault f{i}: {x:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_a_function_of_the_seed() {
        assert_eq!(Scenario::generate(11), Scenario::generate(11));
        assert_ne!(Scenario::generate(11), Scenario::generate(12));
    }

    #[test]
    fn generated_plans_respect_their_limits() {
        for seed in 0..500 {
            let s = Scenario::generate(seed);
            assert!((1..=4).contains(&s.downloads.len()));
            for d in &s.downloads {
                assert!(u64::from(d.size) <= MAX_BODY);
                assert!(d.origin < s.origins);
                if d.framing == BodyFraming::CloseDelimited {
                    assert!(d.is_verifiable(), "close-delimited only with a hash");
                }
                assert!(d.mirrors.len() <= 2);
                for (k, m) in d.mirrors.iter().enumerate() {
                    assert!(m.origin < s.origins && m.origin != d.origin);
                    assert!(d.mirrors[..k].iter().all(|x| x.origin != m.origin));
                    if m.stale {
                        assert_eq!(d.check, Check::Sha256, "stale mirrors only with the hash");
                    }
                }
            }
        }
    }

    #[test]
    fn mirrors_of_every_flavour_are_generated() {
        let mirrors: Vec<MirrorPlan> = (0..2000)
            .flat_map(|seed| Scenario::generate(seed).downloads)
            .flat_map(|d| d.mirrors)
            .collect();
        for (same_validator, stale) in [(false, false), (true, false), (false, true), (true, true)]
        {
            assert!(
                mirrors
                    .iter()
                    .any(|m| m.same_validator == same_validator && m.stale == stale),
                "no mirror with same_validator={same_validator} stale={stale}"
            );
        }
    }

    #[test]
    fn shrinking_only_makes_plans_smaller() {
        let s = (0..100)
            .map(Scenario::generate)
            .find(|s| s.faults.len() > 3 && s.downloads.len() > 1)
            .expect("some seed has several faults and downloads");
        for c in s.shrink_candidates() {
            assert!(c.faults.len() <= s.faults.len());
            assert!(c.downloads.len() <= s.downloads.len());
            assert_ne!(c, s);
        }
    }
}
