//! Transfers: one HTTP exchange for a byte range of a job, on one connection at a time.
//!
//! A single-stream job has one transfer from its resume point to the end; a segmented job
//! has several, each with an end. This module owns connections (pooling, limits, stale
//! keep-alive detection), requests, responses, redirects, segment planning and stealing,
//! and attempt-level failure (backoff or termination).

use bytes::Bytes;

use super::{
    origin_label, unexpected, Conn, ConnState, Due, Engine, Event, Job, JobId, Phase, Splitting,
    ValidatorSource, DRAIN_LIMIT,
};
use crate::config::Config;
use crate::download::sanitize_file_name;
use crate::error::{DownloadError, TimeoutKind};
use crate::http::{
    self, BodyDecoder, ContentRange, Decoded, Framing, HeadParser, Method, Origin, ResponseHead,
};
use crate::io::{ConnId, IoErrorKind, IoFailure, IoOp, IoResult};
use crate::resume::Validator;
use crate::sched::{plan_segments, steal_point};
use crate::time::Instant;
use std::collections::BTreeMap;
use std::time::Duration;

use super::Route;

#[derive(Debug)]
pub(super) enum TPhase {
    /// Waiting for a connection slot.
    WaitingConn,
    Connecting {
        deadline: Instant,
    },
    Sending {
        since: Instant,
    },
    Head {
        parser: HeadParser,
        deadline: Instant,
        got_bytes: bool,
    },
    Body {
        decoder: BodyDecoder,
        keep_alive: bool,
        window_start: Instant,
        window_bytes: u64,
    },
    Draining {
        decoder: BodyDecoder,
        next: url::Url,
    },
}

#[derive(Debug)]
pub(super) struct Transfer {
    pub conn: Option<ConnId>,
    pub phase: TPhase,
    /// The URL requested (after redirects).
    pub url: url::Url,
    /// URLs visited in this transfer's redirect chain.
    pub chain: Vec<url::Url>,
    /// Next byte offset this transfer delivers.
    pub pos: u64,
    /// Stop before this offset (None: to the end of the representation).
    pub end: Option<u64>,
    /// The request carries a Range header.
    pub ranged: bool,
    /// Bytes received by this transfer (for the low-speed window).
    pub got: u64,
    pub stale_retry_used: bool,
    pub recv_outstanding: bool,
    pub backpressured: bool,
    pub throttled_until: Option<Instant>,
    /// When the current hold by a rate limit (`throttled_until`) began.
    pub throttled_at: Instant,
    /// How long rate limits held this transfer back in its current low-speed window: a
    /// download slowed by haul's own `--limit-rate` is no slow server (see
    /// [`Transfer::end_throttle`]).
    pub throttled_in_window: Duration,
    pub last_byte: Instant,
    /// When the request was sent (latency is measured from here).
    pub requested: Instant,
    /// When the body started (throughput is measured from here).
    pub body_start: Instant,
    /// Started by taking over a stalled segment (see [`Transfer::stalled_at`]); never taken
    /// over itself.
    pub takeover: bool,
    /// Which of the job's URLs this transfer uses (see [`Job::mirror`]); a segment may use
    /// another than the attempt's when the expected sha256 will prove the result.
    pub mirror: usize,
    /// The engine's breaker clock when this transfer last began a connection or sent its
    /// request: its failure counts toward a closed breaker only if no failure was counted
    /// there since (see [`Breaker::on_request_failure`](crate::policy::Breaker)).
    pub breaker_clock: u64,
}

/// The shortest silence after which a segment counts as stalled (see
/// [`Transfer::stalled_at`]).
pub(super) const STALL_SILENCE: Duration = Duration::from_millis(50);

/// How long a connection freed while downloads to its origin wait in the queue is kept for
/// them, out of reach of the extra segments of downloads already receiving: the next queued
/// download starts as soon as the one that freed the connection commits, a few milliseconds
/// later, and would otherwise find every connection taken by segments of large files listed
/// before it (small files of a list waited for them to end).
pub(super) const QUEUE_GRACE: Duration = Duration::from_millis(50);

/// A lagging segment (see [`Transfer::lagging`]) has at least this much left at its rate.
const LAG_MIN_REST: Duration = Duration::from_secs(1);

/// A lagging segment goes this many times slower than the job's best finished segment.
const LAG_FACTOR: f64 = 4.0;

/// A body must have run this long before its rate counts.
const RATE_MIN_ELAPSED: Duration = Duration::from_millis(10);

impl Transfer {
    /// A rate limit's hold on the transfer ends now (if one held it): its length counts
    /// toward `throttled_in_window`.
    pub(super) fn end_throttle(&mut self, now: Instant) {
        if self.throttled_until.take().is_some() {
            self.throttled_in_window += now.saturating_since(self.throttled_at);
        }
    }

    /// The body's receive rate so far, in bytes per second; None until it has run for
    /// [`RATE_MIN_ELAPSED`] and received something.
    fn rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_since(self.body_start);
        (elapsed >= RATE_MIN_ELAPSED && self.got > 0)
            .then(|| self.got as f64 / elapsed.as_secs_f64())
    }

    /// When this segment counts as stalled, so that a free connection takes over what it has
    /// left: once it has waited for the network, with nothing received, for
    /// [`STALL_SILENCE`] or four times what its request waited for the first byte, whichever
    /// is longer. None when it is not waiting on the network (throttled, backpressured, not
    /// in its body) or was itself started by a take-over. The engine watches this only when a
    /// segmented download has a free connection and nothing else left to give it.
    pub(super) fn stalled_at(&self) -> Option<Instant> {
        let waiting = matches!(self.phase, TPhase::Body { .. })
            && self.end.is_some_and(|e| e > self.pos)
            && self.recv_outstanding
            && !self.backpressured
            && self.throttled_until.is_none()
            && !self.takeover;
        let first_byte = self.body_start.saturating_since(self.requested);
        waiting.then(|| self.last_byte + STALL_SILENCE.max(first_byte * 4))
    }

    /// Whether this segment, still fetching, goes so much slower than `best` (the best rate
    /// a finished segment of its job reached) that a free connection should take over what
    /// it has left: its rest would take over [`LAG_MIN_REST`] at its rate, and a new request
    /// at `best` would be [`LAG_FACTOR`] times faster. A slow but living mirror otherwise
    /// kept up to two minimum segments that fast connections, idle, waited for (a stall is
    /// caught by [`Transfer::stalled_at`]). Never one started by a take-over.
    pub(super) fn lagging(&self, now: Instant, best: f64) -> bool {
        let fetching = matches!(self.phase, TPhase::Body { .. }) && !self.takeover;
        let (Some(end), Some(rate)) = (self.end, self.rate(now)) else {
            return false;
        };
        let rest = end.saturating_sub(self.pos) as f64;
        fetching
            && rest > 0.0
            && rest / rate > LAG_MIN_REST.as_secs_f64()
            && rate * LAG_FACTOR < best
    }

    /// The transfer's next deadline.
    pub(super) fn deadline(&self, config: &Config, _now: Instant) -> Option<(Instant, Due)> {
        let idle = (
            self.last_byte + config.idle_timeout,
            Due::Timeout(TimeoutKind::Idle),
        );
        match &self.phase {
            TPhase::WaitingConn => None,
            TPhase::Connecting { deadline } => {
                Some((*deadline, Due::Timeout(TimeoutKind::Connect)))
            }
            TPhase::Sending { since } => Some((
                *since + config.head_timeout,
                Due::Timeout(TimeoutKind::ResponseHead),
            )),
            // The head timeout alone: the idle one also ran here and, shorter, cut the time a
            // server may think before it answers (`--head-timeout 10 --idle-timeout 3` gave up
            // after 3 s). A head that trickles is bounded by the deadline as a whole.
            TPhase::Head { deadline, .. } => {
                Some((*deadline, Due::Timeout(TimeoutKind::ResponseHead)))
            }
            TPhase::Body { window_start, .. } => {
                if let Some(t) = self.throttled_until {
                    return Some((t, Due::Throttle));
                }
                if !self.recv_outstanding {
                    return None;
                }
                Some(match config.low_speed {
                    Some(ls) if *window_start + ls.window < idle.0 => (
                        *window_start + ls.window,
                        Due::Timeout(TimeoutKind::LowSpeed),
                    ),
                    _ => idle,
                })
            }
            TPhase::Draining { .. } if self.recv_outstanding => Some(idle),
            TPhase::Draining { .. } => None,
        }
    }
}

/// The segment to steal from: the one expected to finish last (what it has left over the
/// rate it has been receiving at; by bytes left while no segment has a measured rate). With
/// its `[pos, end)`, its rate and how long its own request waited for the first byte (what a
/// thief's request to the same server is expected to wait).
fn steal_victim(
    transfers: &BTreeMap<u64, Transfer>,
    now: Instant,
) -> Option<(u64, u64, u64, Option<f64>, Duration)> {
    let running = || {
        transfers
            .iter()
            .filter_map(|(tid, t)| match (&t.phase, t.end) {
                (TPhase::Body { .. }, Some(end)) if end > t.pos => Some((*tid, t, end)),
                _ => None,
            })
    };
    let rates: Vec<(u64, Option<f64>)> = running().map(|(tid, t, _)| (tid, t.rate(now))).collect();
    let measured: Vec<f64> = rates.iter().filter_map(|(_, r)| *r).collect();
    // A segment not measured yet is assumed to go at the others' mean rate.
    let mean = (!measured.is_empty()).then(|| measured.iter().sum::<f64>() / measured.len() as f64);
    let rate_of = |tid: u64| {
        rates
            .iter()
            .find(|(t, _)| *t == tid)
            .and_then(|(_, r)| *r)
            .or(mean)
    };
    running()
        .map(|(tid, t, end)| {
            let left = (end - t.pos) as f64;
            let key = match rate_of(tid) {
                Some(r) if r > 0.0 => left / r,
                _ => left,
            };
            (key, tid, t, end)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, tid, t, end)| {
            let wait = t.body_start.saturating_since(t.requested);
            (tid, t.pos, end, rate_of(tid), wait)
        })
}

impl Engine {
    fn transfer(&mut self, id: JobId, tid: u64) -> Option<&mut Transfer> {
        self.jobs.get_mut(&id)?.transfers.get_mut(&tid)
    }

    /// Start a fresh attempt: one transfer, or one per missing range of a segmented job.
    pub(super) fn start_attempt(&mut self, id: JobId) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if matches!(j.phase, Phase::CleaningUp { .. } | Phase::Committing { .. }) {
            return;
        }
        if std::mem::take(&mut j.pause_requested) {
            // Paused while it checked its destination or partial: it stops here, ready.
            j.phase = Phase::Paused;
            return self.schedule();
        }
        // A new attempt (after a backoff, a pause or a failover): its rate is its own.
        j.meter.restart();
        j.parked = false;
        j.slot_waiting = false;
        if let Err((until, origin)) = self.pick_url(id) {
            return self.wait_for_breaker(id, until, origin);
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.breaker_wait = None;
        j.phase = Phase::Running;
        j.transfers.clear();
        j.gaps.clear();
        if j.present() > 0 && j.mirror != j.validator_mirror && j.spec.sha256.is_none() {
            // Bytes from one server are not continued from another unless the expected
            // sha256 will prove the result.
            tracing::info!(job = %id, "switching mirrors without a sha256: starting over");
            self.restart_from_zero(id);
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        match (j.segmented, j.total) {
            (true, Some(total)) => {
                let mut gaps = Vec::new();
                let mut at = 0;
                for (s, e) in j.received.iter() {
                    if s > at {
                        gaps.push((at, s));
                    }
                    at = at.max(e);
                }
                if at < total {
                    gaps.push((at, total));
                }
                if gaps.is_empty() {
                    self.after_progress(id);
                    return;
                }
                let j = self.jobs.get_mut(&id).expect("job exists");
                j.gaps = gaps;
                self.rebalance(id);
            }
            _ => {
                // After what the file holds from 0: hashed, or kept and hashed back from the
                // file as the rest arrives (a resumed file the executor had hashed).
                let pos = j.received.contiguous_end(j.hashed).max(j.hashed);
                if pos > 0 && j.validator.is_none() {
                    self.restart_from_zero(id);
                }
                let j = self.jobs.get_mut(&id).expect("job exists");
                let pos = j.received.contiguous_end(j.hashed).max(j.hashed);
                // A segmented download asks for `bytes=0-` first: the answer tells whether
                // the server honours ranges, and how long the file is.
                let splits = j.spec.segments > 1 && j.splitting == Splitting::Allowed;
                let ranged = pos > 0 || splits;
                self.spawn_transfer(id, pos, None, ranged);
            }
        }
        self.assign_connections();
    }

    fn spawn_transfer(&mut self, id: JobId, pos: u64, end: Option<u64>, ranged: bool) -> u64 {
        self.spawn_transfer_avoiding(id, pos, end, ranged, None)
    }

    /// Which URL a new segment of a segmented job uses. A job with an expected sha256 spreads
    /// its segments over its URLs (the hash proves the assembled file): the usable URL with
    /// the fewest running segments, `avoid` only when no other is usable, the attempt's own
    /// URL on ties. Usable: not known to serve wrong bytes, not excluded after a failed
    /// segment, not failed since the last backoff, and its origin's breaker admits a
    /// request. Otherwise the attempt's URL.
    fn segment_mirror(&mut self, id: JobId, avoid: Option<usize>) -> usize {
        let j = &self.jobs[&id];
        let own = j.mirror;
        let spread = j.segmented
            && j.total.is_some()
            && j.spec.sha256.is_some()
            && !j.spread_off
            && !j.spec.mirrors.is_empty();
        if !spread {
            return own;
        }
        let candidates: Vec<usize> = (0..=j.spec.mirrors.len())
            .filter(|i| {
                *i == own
                    || !(j.bad_urls.contains(i)
                        || j.spread_excluded.contains(i)
                        || j.failed_round.contains(i))
            })
            .collect();
        let mut best: Option<((bool, usize, bool, usize), usize)> = None;
        for i in candidates {
            if i != own {
                let url = self.job_url(id, i).clone();
                if self.breaker_wait(&url).is_some() {
                    continue;
                }
            }
            let j = &self.jobs[&id];
            let running = j.transfers.values().filter(|t| t.mirror == i).count();
            let key = (Some(i) == avoid, running, i != own, i);
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, i));
            }
        }
        best.map_or(own, |(_, i)| i)
    }

    fn spawn_transfer_avoiding(
        &mut self,
        id: JobId,
        pos: u64,
        end: Option<u64>,
        ranged: bool,
        avoid: Option<usize>,
    ) -> u64 {
        let now = self.now;
        let mirror = self.segment_mirror(id, avoid);
        let j = self.jobs.get_mut(&id).expect("job exists");
        let tid = j.next_transfer;
        j.next_transfer += 1;
        let first_spread = mirror != j.mirror && !j.spread_used;
        if mirror != j.mirror {
            j.spread_used = true;
        }
        let url = self.job_url(id, mirror).clone();
        if first_spread {
            self.event(Event::Spread {
                job: id,
                url: url.to_string(),
            });
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.transfers.insert(
            tid,
            Transfer {
                conn: None,
                phase: TPhase::WaitingConn,
                url,
                chain: Vec::new(),
                pos,
                end,
                ranged,
                got: 0,
                stale_retry_used: false,
                recv_outstanding: false,
                backpressured: false,
                throttled_until: None,
                throttled_at: now,
                throttled_in_window: Duration::ZERO,
                last_byte: now,
                requested: now,
                body_start: now,
                takeover: false,
                mirror,
                breaker_clock: self.breaker_clock,
            },
        );
        tid
    }

    /// Give connections to transfers waiting for one, most urgent job first, within the
    /// per-origin and total connection limits. Idle connections are reused first.
    pub(super) fn assign_connections(&mut self) {
        // Within a class, a job none of whose transfers has a connection comes before the
        // extra segments of jobs that already receive: segments speed a job up, and must not
        // keep another job of the class from starting (a freed connection went to an earlier
        // big file's next segment, and small files waited for the big ones to end).
        let mut waiting: Vec<(crate::sched::Priority, bool, JobId, u64)> = self
            .maybe_active()
            .filter(|j| matches!(j.phase, Phase::Running))
            .flat_map(|j| {
                let receiving = j
                    .transfers
                    .values()
                    .any(|t| !matches!(t.phase, TPhase::WaitingConn));
                j.transfers
                    .iter()
                    .filter(|(_, t)| matches!(t.phase, TPhase::WaitingConn))
                    .map(move |(tid, _)| (j.priority(), receiving, j.id, *tid))
            })
            .collect();
        waiting
            .sort_by_key(|(p, receiving, id, tid)| (std::cmp::Reverse(*p), *receiving, *id, *tid));
        // Origins of the downloads waiting in the queue (looked up only when an extra segment
        // waits): see `QUEUE_GRACE`.
        let mut queued_origins: Option<std::collections::HashSet<Origin>> = None;
        let now = self.now;
        for (_, receiving, id, tid) in waiting {
            let Some(t) = self.transfer(id, tid) else {
                continue;
            };
            let origin = match Origin::of(&t.url) {
                Ok(o) => o,
                Err(e) => {
                    let msg = format!("{}: {e}", t.url);
                    self.terminate(id, DownloadError::InvalidRequest(msg), true);
                    continue;
                }
            };
            let reuse = !t.stale_retry_used;
            let url = t.url.to_string();
            // An extra segment leaves a connection freed moments ago to the downloads that
            // wait in the queue for the same origin: the next of them starts as soon as the
            // download that freed it commits.
            let held_for_queue = receiving && {
                let queued = queued_origins.get_or_insert_with(|| self.queued_origins());
                queued.contains(&origin)
            };
            if let Some(why) = self.config.proxy.unusable_for(&origin) {
                let msg = format!("{url} needs a proxy that cannot be used: {why}");
                self.terminate(id, DownloadError::InvalidRequest(msg), true);
                continue;
            }
            let idle = reuse
                .then(|| {
                    self.conns
                        .iter()
                        .filter(|(_, c)| c.origin == origin)
                        .filter_map(|(cid, c)| match c.state {
                            ConnState::Idle { since } => Some((since, *cid)),
                            _ => None,
                        })
                        .filter(|(since, _)| !held_for_queue || *since + QUEUE_GRACE <= now)
                        .max()
                        .map(|(_, cid)| cid)
                })
                .flatten();
            if let Some(conn) = idle {
                self.conns.get_mut(&conn).expect("idle conn").state =
                    ConnState::Busy { owner: (id, tid) };
                self.transfer(id, tid).expect("transfer").conn = Some(conn);
                self.send_request(id, tid, conn);
                continue;
            }
            let live = |c: &Conn| !matches!(c.state, ConnState::Closing);
            let per_origin = self
                .conns
                .values()
                .filter(|c| c.origin == origin && live(c))
                .count();
            let total = self.conns.values().filter(|c| live(c)).count();
            if per_origin >= self.config.max_connections_per_origin {
                continue;
            }
            if total >= self.config.max_connections {
                // Make room by closing an idle connection to another origin.
                let victim = self
                    .conns
                    .iter()
                    .filter(|(_, c)| matches!(c.state, ConnState::Idle { .. }))
                    .map(|(cid, _)| *cid)
                    .next();
                if let Some(v) = victim {
                    self.close_conn(v);
                }
                continue;
            }
            let conn = ConnId(self.next());
            let via = self.config.proxy.hop_for(&origin);
            self.conns.insert(
                conn,
                Conn {
                    origin: origin.clone(),
                    via: via.clone(),
                    state: ConnState::Connecting { owner: (id, tid) },
                    served: 0,
                },
            );
            let deadline = self.now + self.config.connect_timeout;
            let clock = self.breaker_clock;
            let t = self.transfer(id, tid).expect("transfer");
            t.conn = Some(conn);
            t.breaker_clock = clock;
            t.phase = TPhase::Connecting { deadline };
            self.io(Route::Connect(conn), IoOp::Connect { conn, origin, via });
        }
    }

    fn owner(&self, conn: ConnId) -> Option<(JobId, u64)> {
        match self.conns.get(&conn)?.state {
            ConnState::Connecting { owner } | ConnState::Busy { owner } => Some(owner),
            _ => None,
        }
    }

    pub(super) fn on_connected(&mut self, conn: ConnId, result: IoResult) {
        let Some((id, tid)) = self.owner(conn) else {
            return;
        };
        match result {
            IoResult::Done => {
                self.conns.get_mut(&conn).expect("conn").state =
                    ConnState::Busy { owner: (id, tid) };
                self.send_request(id, tid, conn);
            }
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                let origin = self.conns.remove(&conn).expect("conn").origin.to_string();
                if let Some(t) = self.transfer(id, tid) {
                    t.conn = None;
                }
                self.transfer_failed(id, tid, DownloadError::Connect { origin, failure });
            }
        }
    }

    fn send_request(&mut self, id: JobId, tid: u64, conn: ConnId) {
        let hop = self.conns.get(&conn).and_then(|c| c.via.clone());
        let user_agent = self.config.user_agent.clone();
        let j = self.jobs.get_mut(&id).expect("job exists");
        let validator = j.validator.clone();
        let t = j.transfers.get(&tid).expect("transfer");
        // Credentials go only to the origin the caller named, and never again once a
        // redirect chain has left it (a -> b -> a does not restore them).
        let first = Origin::of(&j.spec.url).ok();
        let same_origin = t
            .chain
            .iter()
            .chain(std::iter::once(&t.url))
            .all(|u| Origin::of(u).ok() == first);
        let mut headers: Vec<(String, String)> = Vec::with_capacity(6 + j.spec.headers.len());
        let user_has = |name: &str| {
            j.spec
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !user_has("user-agent") {
            headers.push(("User-Agent".into(), user_agent));
        }
        if !user_has("accept") {
            headers.push(("Accept".into(), "*/*".into()));
        }
        headers.push(("Accept-Encoding".into(), "identity".into()));
        if t.ranged {
            let range = match t.end {
                Some(e) => format!("bytes={}-{}", t.pos, e - 1),
                None => format!("bytes={}-", t.pos),
            };
            headers.push(("Range".into(), range));
            // The validator is the attempt URL's; another mirror's segment is proven by the
            // length here and the sha256 at the end.
            if let Some(v) = validator.as_ref().filter(|_| t.mirror == j.mirror) {
                headers.push(("If-Range".into(), v.if_range_value().to_string()));
            }
        }
        for (name, value) in &j.spec.headers {
            let lower = name.to_ascii_lowercase();
            let credential = lower == "authorization" || lower == "cookie";
            if crate::download::managed_header(name) || (credential && !same_origin) {
                continue;
            }
            headers.push((name.clone(), value.clone()));
        }
        let absolute_form = hop.as_ref().is_some_and(|h| !h.tunnel);
        if let Some(auth) = hop.filter(|h| !h.tunnel).and_then(|h| h.authorization) {
            headers.push(("Proxy-Authorization".into(), auth));
        }
        let mut buf = Vec::with_capacity(256);
        if let Err(e) = http::write_request(Method::Get, &t.url, &headers, absolute_form, &mut buf)
        {
            let msg = format!("cannot build request for {}: {e}", t.url);
            return self.terminate(id, DownloadError::InvalidRequest(msg), true);
        }
        let now = self.now;
        let clock = self.breaker_clock;
        let t = self.transfer(id, tid).expect("transfer");
        t.phase = TPhase::Sending { since: now };
        t.requested = now;
        t.breaker_clock = clock;
        self.io(
            Route::Send(conn),
            IoOp::Send {
                conn,
                data: Bytes::from(buf),
            },
        );
    }

    pub(super) fn on_sent(&mut self, conn: ConnId, result: IoResult) {
        let Some((id, tid)) = self.owner(conn) else {
            return;
        };
        let now = self.now;
        let max_head = self.config.max_head_bytes;
        let head_timeout = self.config.head_timeout;
        let Some(t) = self.transfer(id, tid) else {
            return;
        };
        if !matches!(t.phase, TPhase::Sending { .. }) || t.conn != Some(conn) {
            return;
        }
        match result {
            IoResult::Done => {
                t.phase = TPhase::Head {
                    parser: HeadParser::new(max_head),
                    deadline: now + head_timeout,
                    got_bytes: false,
                };
                self.recv(id, tid);
            }
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                self.connection_failed(id, tid, conn, failure, false);
            }
        }
    }

    /// Ask for the transfer's next bytes unless backpressure or a rate limit holds it.
    pub(super) fn recv(&mut self, id: JobId, tid: u64) {
        let throttle = match self.transfer(id, tid) {
            Some(t)
                if t.conn.is_some()
                    && !t.recv_outstanding
                    && !t.backpressured
                    && t.throttled_until.is_none() =>
            {
                matches!(t.phase, TPhase::Body { .. })
            }
            _ => return,
        };
        if throttle {
            if let Some(at) = self.throttle_until(id) {
                let now = self.now;
                let t = self.transfer(id, tid).expect("transfer");
                t.throttled_until = Some(at);
                t.throttled_at = now;
                return;
            }
        }
        // Also a head's read: it may bring body bytes with it.
        let max = self.read_allowance(id);
        let now = self.now;
        let t = self.transfer(id, tid).expect("transfer");
        t.recv_outstanding = true;
        t.last_byte = now;
        let conn = t.conn.expect("checked");
        self.io(Route::Recv(conn), IoOp::Recv { conn, max });
    }

    /// A connection broke. A reused connection that breaks before any response byte was
    /// probably closed by the server while idle: replace it once without counting a failure.
    fn connection_failed(
        &mut self,
        id: JobId,
        tid: u64,
        conn: ConnId,
        failure: IoFailure,
        got_bytes: bool,
    ) {
        let reused = self.conns.get(&conn).is_some_and(|c| c.served > 0);
        let t = self.transfer(id, tid).expect("transfer");
        if reused && !got_bytes && !t.stale_retry_used {
            t.stale_retry_used = true;
            t.conn = None;
            t.recv_outstanding = false;
            t.phase = TPhase::WaitingConn;
            self.close_conn(conn);
            self.assign_connections();
            return;
        }
        let mut origin = origin_label(&t.url);
        if let Some(hop) = self.conns.get(&conn).and_then(|c| c.via.as_ref()) {
            // The connection was to the proxy: the failure may well be the proxy's.
            origin = format!(
                "{origin} (through the proxy {}:{})",
                hop.proxy.host, hop.proxy.port
            );
        }
        self.transfer_failed(id, tid, DownloadError::Connection { origin, failure });
    }

    pub(super) fn on_recv(&mut self, conn: ConnId, result: IoResult) {
        let Some((id, tid)) = self.owner(conn) else {
            return;
        };
        let now = self.now;
        let Some(t) = self.transfer(id, tid) else {
            return;
        };
        if t.conn != Some(conn) {
            return;
        }
        t.recv_outstanding = false;
        match result {
            IoResult::Data(bytes) => {
                t.last_byte = now;
                match t.phase {
                    TPhase::Head { .. } => self.on_head_bytes(id, tid, conn, bytes),
                    TPhase::Body { .. } => self.on_body_bytes(id, tid, conn, bytes),
                    TPhase::Draining { .. } => self.on_drain_bytes(id, tid, conn, bytes),
                    _ => {}
                }
            }
            IoResult::Eof => match &mut t.phase {
                TPhase::Head { got_bytes, .. } => {
                    let got = *got_bytes;
                    let failure = IoFailure::new(
                        IoErrorKind::Reset,
                        "connection closed before the response head was complete",
                    );
                    self.connection_failed(id, tid, conn, failure, got);
                }
                TPhase::Body { decoder, .. } => match decoder.on_eof() {
                    Ok(()) if t.end.is_some_and(|end| t.pos < end) => {
                        self.body_ended_short(id, tid)
                    }
                    Ok(()) => self.transfer_done(id, tid, false),
                    Err(source) => {
                        let origin = origin_label(&t.url);
                        self.transfer_failed(id, tid, DownloadError::Protocol { origin, source });
                    }
                },
                TPhase::Draining { next, .. } => {
                    let next = next.clone();
                    self.close_conn(conn);
                    self.follow(id, tid, next);
                }
                _ => {}
            },
            other => {
                let failure = match other {
                    IoResult::Failed(f) => f,
                    o => unexpected(&o),
                };
                let got = !matches!(
                    t.phase,
                    TPhase::Head {
                        got_bytes: false,
                        ..
                    }
                );
                self.connection_failed(id, tid, conn, failure, got);
            }
        }
    }

    /// The body of transfer `tid` ended (cleanly, as its framing says) short of the range it
    /// was asked for and answered: the rest is missing, as from a connection cut. Taken as
    /// the segment done, the gap was asked for again and again, retry limits or not.
    fn body_ended_short(&mut self, id: JobId, tid: u64) {
        let t = self.transfer(id, tid).expect("transfer");
        let missing = t.end.map_or(0, |end| end.saturating_sub(t.pos));
        let received = match &t.phase {
            TPhase::Body { decoder, .. } => decoder.received(),
            _ => 0,
        };
        let origin = origin_label(&t.url);
        let source = crate::http::HttpError::ShortRange {
            expected: received + missing,
            received,
        };
        self.transfer_failed(id, tid, DownloadError::Protocol { origin, source });
    }

    fn on_head_bytes(&mut self, id: JobId, tid: u64, conn: ConnId, bytes: Bytes) {
        let t = self.transfer(id, tid).expect("transfer");
        let TPhase::Head {
            parser, got_bytes, ..
        } = &mut t.phase
        else {
            return;
        };
        *got_bytes = true;
        match parser.feed(&bytes) {
            Err(source) => {
                let origin = origin_label(&t.url);
                self.transfer_failed(id, tid, DownloadError::Protocol { origin, source });
            }
            Ok(None) => self.recv(id, tid),
            Ok(Some((head, consumed))) => {
                let rest = bytes.slice(consumed..);
                self.on_head(id, tid, conn, head, rest);
            }
        }
    }

    fn on_head(&mut self, id: JobId, tid: u64, conn: ConnId, head: ResponseHead, rest: Bytes) {
        let t = self.transfer(id, tid).expect("transfer");
        let origin = origin_label(&t.url);
        let framing = match http::framing(Method::Get, &head) {
            Ok(f) => f,
            Err(source) => {
                return self.transfer_failed(id, tid, DownloadError::Protocol { origin, source })
            }
        };
        let keep_alive = http::keep_alive(&head, framing);
        if !matches!(head.status, 408 | 429 | 500..=599) {
            let now = self.now;
            let t = self.transfer(id, tid).expect("transfer");
            let (url, latency) = (t.url.clone(), now.saturating_since(t.requested));
            self.note_success(id, &url, latency);
        }
        let forwarded_by = self
            .conns
            .get(&conn)
            .and_then(|c| c.via.as_ref())
            .filter(|hop| !hop.tunnel)
            .map(|hop| format!("{}:{}", hop.proxy.host, hop.proxy.port));
        // A forwarding proxy's own refusal (its credentials), not the origin's answer: as
        // final as a proxy refusing a tunnel, and said the same way.
        if let (407, Some(proxy)) = (head.status, forwarded_by) {
            let t = self.transfer(id, tid).expect("transfer");
            let origin = origin_label(&t.url);
            let failure = IoFailure::new(
                IoErrorKind::ProxyRefused,
                format!("proxy {proxy} refused to forward to {origin}: answered 407 Proxy Authentication Required"),
            );
            self.close_conn(conn);
            return self.transfer_failed(id, tid, DownloadError::Connect { origin, failure });
        }
        match head.status {
            301 | 302 | 303 | 307 | 308 => {
                self.on_redirect(id, tid, conn, &head, framing, keep_alive, rest)
            }
            // A 203 is a 200 whose body a transforming proxy may have changed: the whole
            // representation all the same (an expected sha256 judges the bytes). A 204 to a
            // GET says the file is empty: zero bytes, checked like any other body.
            200 | 203 | 204 => {
                let j = self.jobs.get_mut(&id).expect("job exists");
                let whole = match head.status {
                    200 => "200 OK",
                    203 => "203 Non-Authoritative Information",
                    _ => "204 No Content",
                };
                if j.transfers[&tid].mirror != j.mirror {
                    let detail = format!("{whole} to a segment's range request");
                    let error = DownloadError::RangeMismatch { detail };
                    return self.transfer_failed(id, tid, error);
                }
                if j.segmented || j.transfers.len() > 1 {
                    // Resuming a partial of an earlier run, answered with another validator:
                    // the file changed since (the If-Range answer). Nothing of the partial is
                    // of use: the download starts over at once, split as a new one is,
                    // without counting a failed attempt or waiting a backoff.
                    let changed = j.validator_source == ValidatorSource::StateFile
                        && matches!(
                            (&j.validator, Validator::of_response(&head)),
                            (Some(old), Some(new)) if *old != new
                        );
                    if !changed {
                        // A segment asked for a range and got the whole file: the server
                        // does not honour ranges for this representation (or not on every
                        // node).
                        let detail = format!("{whole} to a segment's range request");
                        return self.segment_does_not_fit(id, detail);
                    }
                    tracing::info!(job = %id, "the file changed since the partial was saved; starting over");
                    self.stop_transfers(id);
                    self.restart_from_zero(id);
                    return self.start_attempt(id);
                }
                if j.present() > 0 {
                    tracing::info!(job = %id, "server sent the whole file instead of a range; restarting from zero");
                    self.restart_from_zero(id);
                }
                let j = self.jobs.get_mut(&id).expect("job exists");
                j.validator = Validator::of_response(&head);
                j.validator_source = ValidatorSource::ThisRun;
                j.validator_mirror = j.mirror;
                j.validator_resource = Some(resource_of(&j.transfers[&tid].url));
                j.total = match framing {
                    Framing::Length(n) => Some(n),
                    // Only a 204 gets here without a body.
                    Framing::Empty => Some(0),
                    _ => None,
                };
                let t = j.transfers.get_mut(&tid).expect("transfer");
                t.pos = 0;
                t.end = None;
                self.accept_response(id, tid, conn, &head, framing, keep_alive, rest);
            }
            206 => {
                let j = &self.jobs[&id];
                match check_partial_response(j, &j.transfers[&tid], &head, framing) {
                    Ok((complete, validator)) => {
                        let j = self.jobs.get_mut(&id).expect("job exists");
                        j.total = Some(complete);
                        if j.validator.is_none() {
                            j.validator = validator;
                            j.validator_mirror = j.mirror;
                            j.validator_resource = Some(resource_of(&j.transfers[&tid].url));
                        }
                        if j.transfers[&tid].mirror == j.mirror {
                            // Given or matched by this answer (another mirror's is not
                            // compared).
                            j.validator_source = ValidatorSource::ThisRun;
                        }
                        self.accept_response(id, tid, conn, &head, framing, keep_alive, rest);
                        self.maybe_segment(id, tid);
                    }
                    Err(detail) if j.transfers[&tid].mirror != j.mirror => {
                        self.transfer_failed(id, tid, DownloadError::RangeMismatch { detail });
                    }
                    Err(detail) if j.segmented || j.transfers.len() > 1 => {
                        self.segment_does_not_fit(id, detail);
                    }
                    Err(detail) if self.probe_for_segments(id, tid) => {
                        // The `bytes=0-` asked only to split the download was answered with
                        // a range that cannot be built on (capped short of the end, or
                        // multipart): the same request would be answered so again. One
                        // connection without Range from now on.
                        self.one_connection_from_now(id, &detail);
                        self.restart_from_zero(id);
                        self.fail_attempt(id, DownloadError::RangeMismatch { detail });
                    }
                    Err(detail) => {
                        self.restart_from_zero(id);
                        self.fail_attempt(id, DownloadError::RangeMismatch { detail });
                    }
                }
            }
            // 416 to a request without a Range is the server's own error, like any other
            // status (nothing of a partial to blame).
            416 if self.transfer(id, tid).is_some_and(|t| t.ranged) => {
                let j = &self.jobs[&id];
                let t = &j.transfers[&tid];
                // What the file holds from 0: hashed, or kept by a resume and not hashed yet.
                let held = j.received.contiguous_end(j.hashed).max(j.hashed);
                let complete = head
                    .headers
                    .get("content-range")
                    .and_then(|v| http::parse_content_range(v).ok());
                // "Nothing past your end" only says the partial is whole if it is the same
                // representation: a 416 that names another validator, or another length than
                // the one the partial was started with, is of a new file (a server that
                // ignores If-Range answers a resume of a shrunk file like this).
                let other_validator = matches!(
                    (&j.validator, Validator::of_response(&head)),
                    (Some(ours), Some(_)) if !ours.matches_response(&head)
                );
                let other_length = matches!(
                    (j.total, &complete),
                    (Some(known), Some(ContentRange::Unsatisfied { complete })) if known != *complete
                );
                if t.ranged && held > 0 && (other_validator || other_length) {
                    let detail = if other_validator {
                        "416 for a representation with another validator"
                    } else {
                        "416 naming another length than the partial's file"
                    };
                    self.restart_from_zero(id);
                    return self.fail_attempt(
                        id,
                        DownloadError::RangeMismatch {
                            detail: detail.into(),
                        },
                    );
                }
                match complete {
                    Some(ContentRange::Unsatisfied { complete })
                        if t.ranged
                            && t.end.is_none()
                            && complete == t.pos
                            && complete == held
                            && held > 0 =>
                    {
                        // The partial already holds every byte: verify and commit it (after
                        // hashing back what a resume kept unhashed).
                        let j = self.jobs.get_mut(&id).expect("job exists");
                        j.total = Some(complete);
                        let hashed_all = j.hashed == complete;
                        j.transfers.remove(&tid);
                        self.close_conn(conn);
                        // The partial kept by an earlier run, named.
                        self.event(Event::Response {
                            job: id,
                            status: 416,
                            total: Some(complete),
                            offset: complete,
                            resumable: true,
                        });
                        if hashed_all {
                            self.maybe_complete(id);
                        } else {
                            self.after_progress(id);
                        }
                    }
                    Some(ContentRange::Unsatisfied { complete: 0 })
                        if t.ranged && t.end.is_none() && t.pos == 0 && j.present() == 0 =>
                    {
                        // `bytes=0-` (a segmented download's probe) of an empty
                        // representation: nothing to fetch, commit an empty file.
                        let j = self.jobs.get_mut(&id).expect("job exists");
                        j.total = Some(0);
                        j.transfers.remove(&tid);
                        self.close_conn(conn);
                        self.ensure_file(id);
                        let resumable =
                            !self.jobs[&id].unnamed && self.jobs[&id].validator.is_some();
                        self.event(Event::Response {
                            job: id,
                            status: 416,
                            total: Some(0),
                            offset: 0,
                            resumable,
                        });
                        self.maybe_complete(id);
                    }
                    _ => {
                        let detail = if self.probe_for_segments(id, tid) {
                            // `bytes=0-` of a file that has bytes: the server's ranges are
                            // broken; the next attempt is a plain GET (it asked the same
                            // probe again until its retries ran out).
                            self.one_connection_from_now(id, "416 to bytes=0-");
                            "416 Range Not Satisfiable to bytes=0- of a non-empty file"
                        } else {
                            "416 Range Not Satisfiable for the local partial"
                        };
                        self.restart_from_zero(id);
                        self.fail_attempt(
                            id,
                            DownloadError::RangeMismatch {
                                detail: detail.into(),
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
                let url = self.transfer(id, tid).expect("transfer").url.to_string();
                self.transfer_failed(
                    id,
                    tid,
                    DownloadError::Status {
                        url,
                        status,
                        retry_after,
                    },
                );
            }
        }
    }

    /// The attempt URL's answer to a segment of a split download does not fit the file
    /// (`detail` says why: a 200, or a 206 with another validator, range or length): the
    /// attempt fails and the job starts over from zero. When an earlier answer of this run
    /// carried the validator it disagrees with, this server's answers do not fit together,
    /// and splitting again would fail the same way: the job keeps to one connection from now
    /// on. (When only a partial's state file from an earlier run did, the file may just have
    /// changed since: the new one may still be split.)
    fn segment_does_not_fit(&mut self, id: JobId, detail: String) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        if j.splitting == Splitting::Allowed && j.validator_source == ValidatorSource::ThisRun {
            self.one_connection_from_now(id, &detail);
        }
        self.restart_from_zero(id);
        self.fail_attempt(id, DownloadError::RangeMismatch { detail });
    }

    /// The job's server cannot be split on (`reason`): it keeps to one connection, and says
    /// so.
    fn one_connection_from_now(&mut self, id: JobId, reason: &str) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        j.splitting = Splitting::SingleConnection;
        tracing::info!(job = %id, "the server's ranges cannot be split on ({reason}); one connection from now on");
        self.event(Event::SingleConnection {
            job: id,
            reason: format!("the server's answers to its segments do not fit together ({reason})"),
        });
    }

    /// Whether transfer `tid` is the `bytes=0-` a download sends first only to learn whether
    /// it can split (nothing held, splitting still allowed): a plain GET would do without it.
    fn probe_for_segments(&self, id: JobId, tid: u64) -> bool {
        let Some(j) = self.jobs.get(&id) else {
            return false;
        };
        let Some(t) = j.transfers.get(&tid) else {
            return false;
        };
        t.ranged
            && t.pos == 0
            && t.end.is_none()
            && j.spec.segments > 1
            && j.splitting == Splitting::Allowed
            && j.present() == 0
    }

    /// After the first 206 of a job asked to use segments: split what is left.
    fn maybe_segment(&mut self, id: JobId, tid: u64) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        // No more than the server took before (see `Job::connections_taken`).
        let n = j.spec.segments.min(j.max_transfers() as u32);
        if n <= 1
            || j.segmented
            || j.splitting != Splitting::Allowed
            || !matches!(j.phase, Phase::Running)
        {
            return;
        }
        let (Some(total), Some(_)) = (j.total, j.validator.as_ref()) else {
            return;
        };
        let Some(t) = j.transfers.get(&tid) else {
            return;
        };
        let min = j.spec.min_segment;
        let plan = plan_segments(t.pos, total, n, min);
        if plan.len() <= 1 {
            return;
        }
        j.segmented = true;
        j.transfers.get_mut(&tid).expect("transfer").end = Some(plan[0].1);
        for (s, e) in plan.iter().skip(1) {
            self.spawn_transfer(id, *s, Some(*e), true);
        }
        self.event(Event::Segmented {
            job: id,
            segments: plan.len() as u32,
        });
        self.assign_connections();
    }

    #[allow(clippy::too_many_arguments)]
    fn on_redirect(
        &mut self,
        id: JobId,
        tid: u64,
        conn: ConnId,
        head: &ResponseHead,
        framing: Framing,
        keep_alive: bool,
        rest: Bytes,
    ) {
        let max_redirects = self.config.max_redirects;
        let t = self.transfer(id, tid).expect("transfer");
        let Some(location) = head.headers.get("location") else {
            let url = t.url.to_string();
            return self.transfer_failed(
                id,
                tid,
                DownloadError::Status {
                    url,
                    status: head.status,
                    retry_after: None,
                },
            );
        };
        // The parser's message quotes the location: shown without its credentials.
        let resolved = http::resolve_location(&t.url, location)
            .map_err(|e| crate::proxy::redact_userinfo(&e.to_string()));
        // A target with user-info would put a password in messages, events and state files
        // (the reason such URLs are refused when given): not followed.
        let resolved =
            resolved.and_then(
                |u| match u.username().is_empty() && u.password().is_none() {
                    true => Ok(u),
                    false => Err(
                        "it carries credentials (user:password@), which haul neither \
                              sends nor keeps"
                            .to_string(),
                    ),
                },
            );
        let next = match resolved {
            Ok(u) => u,
            Err(reason) => {
                let error = DownloadError::BadRedirect {
                    from: t.url.to_string(),
                    location: crate::proxy::redact_userinfo(location),
                    reason,
                };
                return self.fail_attempt(id, error);
            }
        };
        if next == t.url || t.chain.contains(&next) {
            return self.fail_attempt(
                id,
                DownloadError::RedirectLoop {
                    url: next.to_string(),
                },
            );
        }
        if t.chain.len() as u32 >= max_redirects {
            return self.fail_attempt(
                id,
                DownloadError::TooManyRedirects {
                    limit: max_redirects,
                    url: next.to_string(),
                },
            );
        }
        let from = t.url.clone();
        t.chain.push(from.clone());
        if from.scheme() == "https" && next.scheme() == "http" {
            // Followed, as browsers, curl -L and aria2 do; but the user asked for https.
            let proven = self.jobs[&id].spec.sha256.is_some();
            tracing::warn!(
                job = %id,
                path = %self.jobs[&id].dest_path().display(),
                "{from} redirects to plain http ({next}): {}",
                match proven {
                    true => "the expected sha256 still proves the bytes",
                    false => "nothing authenticates the bytes (give --sha256 to check them)",
                }
            );
        }
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
            return self.follow(id, tid, next);
        }
        let t = self.transfer(id, tid).expect("transfer");
        t.phase = TPhase::Draining {
            decoder: BodyDecoder::new(framing),
            next,
        };
        self.on_drain_bytes(id, tid, conn, rest);
    }

    fn on_drain_bytes(&mut self, id: JobId, tid: u64, conn: ConnId, mut bytes: Bytes) {
        let t = self.transfer(id, tid).expect("transfer");
        let TPhase::Draining { decoder, next } = &mut t.phase else {
            return;
        };
        loop {
            match decoder.decode(&mut bytes) {
                Ok(Decoded::Data(_)) if decoder.received() <= DRAIN_LIMIT => continue,
                Ok(Decoded::NeedMore) => return self.recv(id, tid),
                Ok(Decoded::Done) if bytes.is_empty() => {
                    let next = next.clone();
                    self.release_conn(conn);
                    return self.follow(id, tid, next);
                }
                _ => {
                    let next = next.clone();
                    self.close_conn(conn);
                    return self.follow(id, tid, next);
                }
            }
        }
    }

    /// Continue the transfer at a redirect target, on a connection to its origin.
    fn follow(&mut self, id: JobId, tid: u64, next: url::Url) {
        let t = self.transfer(id, tid).expect("transfer");
        let moved = Origin::of(&t.url).ok() != Origin::of(&next).ok();
        t.url = next;
        t.conn = None;
        t.recv_outstanding = false;
        t.phase = TPhase::WaitingConn;
        if moved {
            // Its first host may have room now for a queued download (`Engine::startable`).
            self.schedule();
        } else {
            self.assign_connections();
        }
    }

    /// A 200 or a valid 206: check what is known against expectations, then stream the body.
    #[allow(clippy::too_many_arguments)]
    fn accept_response(
        &mut self,
        id: JobId,
        tid: u64,
        conn: ConnId,
        head: &ResponseHead,
        framing: Framing,
        keep_alive: bool,
        rest: Bytes,
    ) {
        let now = self.now;
        let j = self.jobs.get_mut(&id).expect("job exists");
        // A usable answer: an earlier failure no longer says why the job cannot go on.
        j.last_error = None;
        if let Some(coding) = http::unrequested_content_coding(head) {
            if !j.warned_content_coding {
                // The request asked for identity: a server that compresses anyway makes the
                // stored file the compressed bytes, and a size or sha256 of the real file
                // then fails with nothing else pointing at the cause.
                j.warned_content_coding = true;
                tracing::warn!(
                    job = %id,
                    path = %j.dest_path().display(),
                    url = %j.transfers[&tid].url,
                    "the server sent the body with Content-Encoding: {coding} although identity was asked for; it is stored as sent, still encoded"
                );
            }
        }
        if let (Some(expected), Some(total)) = (j.spec.size, j.total) {
            if expected != total {
                let error = DownloadError::SizeMismatch {
                    url: j.served_by(),
                    path: j.dest_path(),
                    expected,
                    actual: total,
                    at_least: false,
                };
                return self.wrong_size(id, error);
            }
        }
        if let (Some(limit), Some(total)) = (j.spec.max_size, j.total) {
            if total > limit {
                let error = DownloadError::TooLarge {
                    url: j.served_by(),
                    path: j.dest_path(),
                    limit,
                    seen: total,
                };
                return self.terminate(id, error, false);
            }
        }
        if matches!(j.spec.dest, crate::download::Destination::Dir(_)) && j.dest_name.is_none() {
            // A hidden name (`.bashrc`, `.profile`) is never taken from a server: the URL's
            // name is used instead.
            j.dest_name = head
                .headers
                .get("content-disposition")
                .and_then(http::content_disposition_filename)
                .and_then(|n| sanitize_file_name(&n))
                .filter(|n| !n.starts_with('.'));
            if j.dest_name.is_some() {
                if let Some(error) = self.claim_named_destination(id) {
                    return self.terminate(id, error, false);
                }
                self.probe_server_name(id);
            } else if j.fallback_named() {
                self.probe_server_name(id);
            }
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        let t = j.transfers.get_mut(&tid).expect("transfer");
        j.last_url = Some(t.url.clone());
        t.body_start = now;
        t.throttled_in_window = Duration::ZERO;
        t.phase = TPhase::Body {
            decoder: BodyDecoder::new(framing),
            keep_alive,
            window_start: now,
            window_bytes: t.got,
        };
        let (status, total, offset) = (head.status, j.total, t.pos);
        self.ensure_file(id);
        let resumable = !self.jobs[&id].unnamed && self.jobs[&id].validator.is_some();
        self.event(Event::Response {
            job: id,
            status,
            total,
            offset,
            resumable,
        });
        self.on_body_bytes(id, tid, conn, rest);
    }

    fn on_body_bytes(&mut self, id: JobId, tid: u64, _conn: ConnId, mut bytes: Bytes) {
        let mut finished: Option<bool> = None;
        let mut wrote = false;
        loop {
            let t = self.transfer(id, tid).expect("transfer");
            let TPhase::Body {
                decoder,
                keep_alive,
                ..
            } = &mut t.phase
            else {
                return;
            };
            let keep_alive = *keep_alive;
            match decoder.decode(&mut bytes) {
                Err(source) => {
                    let origin = origin_label(&t.url);
                    if wrote {
                        self.after_progress(id);
                    }
                    return self.transfer_failed(
                        id,
                        tid,
                        DownloadError::Protocol { origin, source },
                    );
                }
                Ok(Decoded::Data(mut data)) => {
                    let mut truncated = false;
                    if let Some(end) = t.end {
                        let room = end.saturating_sub(t.pos);
                        if data.len() as u64 > room {
                            truncated = true;
                            data.truncate(room as usize);
                        }
                    }
                    let offset = t.pos;
                    let len = data.len() as u64;
                    t.pos += len;
                    t.got += len;
                    if len > 0 {
                        if let Err(e) = self.accept_data(id, offset, data) {
                            return match e {
                                DownloadError::SizeMismatch { .. } => self.wrong_size(id, e),
                                e => self.terminate(id, e, false),
                            };
                        }
                        wrote = true;
                    }
                    let t = self.transfer(id, tid).expect("transfer");
                    if t.end == Some(t.pos) {
                        // This segment is complete. The connection is reusable only when the
                        // response ends exactly here (a stolen-from segment's does not).
                        let ends_here = !truncated
                            && match &mut t.phase {
                                TPhase::Body { decoder, .. } => {
                                    matches!(decoder.decode(&mut bytes), Ok(Decoded::Done))
                                }
                                _ => false,
                            };
                        finished = Some(ends_here && keep_alive && bytes.is_empty());
                        break;
                    }
                }
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Done) if t.end.is_some_and(|end| t.pos < end) => {
                    if wrote {
                        self.after_progress(id);
                    }
                    return self.body_ended_short(id, tid);
                }
                Ok(Decoded::Done) => {
                    finished = Some(keep_alive && bytes.is_empty());
                    break;
                }
            }
        }
        if let Some(reusable) = finished {
            self.transfer_done(id, tid, reusable);
            if wrote {
                self.after_progress(id);
            }
            return;
        }
        let backlog_full = self
            .jobs
            .get(&id)
            .is_some_and(|j| j.write_backlog > self.config.max_write_backlog);
        if backlog_full {
            self.transfer(id, tid).expect("transfer").backpressured = true;
        } else {
            self.recv(id, tid);
        }
        if wrote {
            self.after_progress(id);
            self.relax_connection_cap(id);
        }
    }

    /// A segmented job capped to the connections its server took tries one more once
    /// [`CONNECTION_CAP_RELAX`] has passed since the cap was set or last raised.
    fn relax_connection_cap(&mut self, id: JobId) {
        let now = self.now;
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(taken) = j.connections_taken else {
            return;
        };
        if !j.segmented
            || !matches!(j.phase, Phase::Running)
            || now.saturating_since(j.connections_taken_at) < super::CONNECTION_CAP_RELAX
        {
            return;
        }
        let raised = taken + 1;
        j.connections_taken = (raised < j.spec.segments as usize).then_some(raised);
        j.connections_taken_at = now;
        tracing::debug!(job = %id, raised, "trying one more connection than the server took");
        self.rebalance(id);
        self.assign_connections();
    }

    /// A transfer delivered its range (or the whole body): free its connection and give the
    /// connection's time to what is left.
    fn transfer_done(&mut self, id: JobId, tid: u64, reusable: bool) {
        let j = self.jobs.get_mut(&id).expect("job exists");
        let Some(t) = j.transfers.remove(&tid) else {
            return;
        };
        let elapsed = self.now.saturating_since(t.body_start);
        self.note_throughput(&t.url, t.got, elapsed);
        if let Some(rate) = t
            .rate(self.now)
            .filter(|_| t.end.is_some_and(|e| t.pos >= e))
        {
            let best = &mut self
                .jobs
                .get_mut(&id)
                .expect("job exists")
                .best_segment_rate;
            *best = Some(best.map_or(rate, |b| b.max(rate)));
        }
        if let Some(conn) = t.conn {
            if reusable {
                self.release_conn(conn);
            } else {
                self.close_conn(conn);
            }
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        match t.end {
            Some(end) if t.pos < end => {
                // The server ended the response early: fetch the rest again.
                j.gaps.push((t.pos, end));
            }
            None if j.total.is_none() => j.total = Some(t.pos),
            _ => {}
        }
        if j.segmented {
            self.rebalance(id);
        }
        self.assign_connections();
        self.maybe_complete(id);
    }

    /// A stalled segment (see [`Transfer::stalled_at`]) while a connection is free and there
    /// is nothing else to give it: a new request takes over everything the segment has left,
    /// and the stalled one's connection is closed. Taking over only half would leave the
    /// download waiting on the stalled connection all the same.
    fn take_over(&mut self, id: JobId, tid: u64) {
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(t) = j.transfers.get(&tid) else {
            return;
        };
        let (Some(end), pos) = (t.end, t.pos) else {
            return;
        };
        tracing::debug!(job = %id, "segment {pos}-{end} stalled or lagging; a new connection takes it over");
        let Some(victim) = j.transfers.remove(&tid) else {
            return;
        };
        if let Some(conn) = victim.conn {
            self.close_conn(conn);
        }
        let new = self.spawn_transfer_avoiding(id, pos, Some(end), true, Some(victim.mirror));
        if let Some(t) = self.transfer(id, new) {
            t.takeover = true;
        }
        self.assign_connections();
    }

    /// Keep `segments` transfers busy: first on unfetched gaps, then by stealing half of the
    /// largest remaining segment.
    fn rebalance(&mut self, id: JobId) {
        loop {
            let j = self.jobs.get_mut(&id).expect("job exists");
            if !matches!(j.phase, Phase::Running) || j.transfers.len() >= j.max_transfers() {
                return;
            }
            if let Some(gap) = j.gaps.pop() {
                let min = j.spec.min_segment;
                // A big gap is split so that several connections can work on it.
                let free = j.max_transfers() - j.transfers.len();
                let parts = plan_segments(gap.0, gap.1, free as u32, min);
                for (s, e) in parts {
                    self.spawn_transfer(id, s, Some(e), true);
                }
                continue;
            }
            let min = j.spec.min_segment;
            let Some((vtid, pos, end, rate, wait)) = steal_victim(&j.transfers, self.now) else {
                return;
            };
            let Some(mid) = steal_point(pos, end, rate, wait, min) else {
                return;
            };
            j.transfers.get_mut(&vtid).expect("victim").end = Some(mid);
            self.spawn_transfer(id, mid, Some(end), true);
        }
    }

    /// One transfer failed. A segmented job puts the range back and carries on with its
    /// other connections; otherwise (or when nothing else runs) the attempt fails.
    fn transfer_failed(&mut self, id: JobId, tid: u64, error: DownloadError) {
        let Some(j) = self.jobs.get(&id) else {
            return;
        };
        let (url, mirror, sent) = match j.transfers.get(&tid) {
            Some(t) => (Some(t.url.clone()), t.mirror, t.breaker_clock),
            None => (None, j.mirror, 0),
        };
        let cross = mirror != j.mirror;
        match url {
            // Another mirror's failure is its own incident, not the attempt's.
            Some(url) if cross && error.counts_against_origin() => {
                self.count_origin_failure(id, &url, &error, sent);
            }
            Some(url) if !cross => self.note_failure(id, &url, &error, sent),
            _ => {}
        }
        let j = self.jobs.get_mut(&id).expect("job exists");
        if cross {
            // A segment on another mirror: that mirror gets no more segments of this job;
            // its range goes back to the pool and the attempt carries on.
            let t = j.transfers.remove(&tid).expect("transfer");
            if !j.spread_excluded.contains(&mirror) {
                j.spread_excluded.push(mirror);
            }
            if let Some(end) = t.end.filter(|e| t.pos < *e) {
                j.gaps.push((t.pos, end));
            }
            if let Some(conn) = t.conn {
                self.close_conn(conn);
            }
            tracing::info!(job = %id, mirror, "a segment from a mirror failed; no more segments go there: {error}");
            self.rebalance(id);
            self.assign_connections();
            return;
        }
        if j.segmented && j.transfers.len() > 1 && error.retryable() {
            let t = j.transfers.remove(&tid).expect("transfer");
            if let DownloadError::Status {
                status: 429 | 503,
                retry_after,
                ..
            } = error
            {
                // The server turns extra connections away (a limit per client): the job
                // keeps to those it has; sent again, the refused ranges would be refused
                // again, all of them each time a connection frees. One more is tried after
                // `CONNECTION_CAP_RELAX`, or after the Retry-After if the server said longer.
                let taken = j.transfers.len().max(1);
                j.connections_taken = Some(j.connections_taken.map_or(taken, |n| n.min(taken)));
                let asked = retry_after.unwrap_or_default();
                j.connections_taken_at =
                    self.now + asked.saturating_sub(super::CONNECTION_CAP_RELAX);
                tracing::info!(job = %id, taken, "the server refused a segment's connection ({error}); no more connections than that");
            }
            if let Some(end) = t.end {
                if t.pos < end {
                    j.gaps.push((t.pos, end));
                }
            }
            if let Some(conn) = t.conn {
                self.close_conn(conn);
            }
            tracing::debug!(job = %id, "segment failed, its range goes back to the pool: {error}");
            return;
        }
        self.fail_attempt(id, error);
    }

    pub(super) fn on_transfer_deadline(&mut self, id: JobId, tid: u64, due: Due) {
        let now = self.now;
        let low_speed = self.config.low_speed;
        let Some(t) = self.transfer(id, tid) else {
            return;
        };
        let kind = match due {
            Due::Throttle => {
                t.end_throttle(now);
                return self.recv(id, tid);
            }
            Due::Backoff => return,
            Due::Stalled => return self.take_over(id, tid),
            Due::Timeout(kind) => kind,
        };
        if kind == TimeoutKind::LowSpeed {
            let ls = low_speed.expect("low-speed deadline implies a limit");
            if let TPhase::Body {
                window_start,
                window_bytes,
                ..
            } = &mut t.phase
            {
                // Only the time the transfer was free to receive counts: a rate limit of
                // haul's own that gives it less than the minimum speed (`--limit-rate 4K`
                // over eight downloads) failed every download.
                let got = t.got - *window_bytes;
                let free = ls.window.saturating_sub(t.throttled_in_window);
                let needed = (ls.bytes_per_sec as f64 * free.as_secs_f64()) as u64;
                if got >= needed {
                    *window_start = now;
                    *window_bytes = t.got;
                    t.throttled_in_window = Duration::ZERO;
                    return;
                }
            }
        }
        let after = match kind {
            TimeoutKind::Connect => self.config.connect_timeout,
            TimeoutKind::ResponseHead => self.config.head_timeout,
            TimeoutKind::Idle => self.config.idle_timeout,
            TimeoutKind::LowSpeed => low_speed.map(|l| l.window).unwrap_or_default(),
        };
        let origin = origin_label(&self.transfer(id, tid).expect("transfer").url);
        self.transfer_failed(
            id,
            tid,
            DownloadError::Timeout {
                kind,
                origin,
                after,
            },
        );
    }

    pub(super) fn release_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.served += 1;
            c.state = ConnState::Idle { since: self.now };
        }
    }

    pub(super) fn close_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !matches!(c.state, ConnState::Closing) {
                c.state = ConnState::Closing;
                self.io(Route::Close(conn), IoOp::Close { conn });
            }
        }
    }

    /// Close every transfer's connection and forget the transfers.
    pub(super) fn stop_transfers(&mut self, id: JobId) {
        self.abandon_probe(id);
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        let conns: Vec<ConnId> = j.transfers.values().filter_map(|t| t.conn).collect();
        j.transfers.clear();
        j.gaps.clear();
        for c in conns {
            self.close_conn(c);
        }
    }
}

/// The file `url` names, for comparing where validators come from: its last non-empty path
/// segment. Not the whole URL: the same file is served under other hosts (a load-balancing
/// redirector sends each request to another node), other paths (a CDN's signed path,
/// `/dl/<token>/f.iso`) and other queries (signed URLs) from one request to the next; what a
/// redirect to another version changes is the file's name (`v1.iso`, `v2.iso`).
pub(super) fn resource_of(url: &url::Url) -> String {
    url.path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
        .unwrap_or_default()
        .to_string()
}

/// Whether a 206 continues what the transfer asked for: Ok((complete length, the response's
/// validator)) or why not.
fn check_partial_response(
    j: &Job,
    t: &Transfer,
    head: &ResponseHead,
    framing: Framing,
) -> Result<(u64, Option<Validator>), String> {
    if !t.ranged {
        return Err("206 Partial Content to a request without Range".into());
    }
    let Some(value) = head.headers.get("content-range") else {
        return Err("206 without Content-Range".into());
    };
    let (first, last, complete) = match http::parse_content_range(value) {
        Ok(ContentRange::Bytes {
            first,
            last,
            complete: Some(c),
        }) => (first, last, c),
        // A complete length the server does not know (`bytes 0-N/*`), answering the first
        // request of a download (`bytes=0-`): everything it has, which is the file (it
        // cannot be split without a length it vouches for, nor resumed against one).
        Ok(ContentRange::Bytes {
            first: 0,
            last,
            complete: None,
        }) if t.pos == 0 && t.end.is_none() && j.total.is_none() && j.validator.is_none() => {
            (0, last, last.saturating_add(1))
        }
        // Without the complete length (`bytes N-M/*`, which RFC 9110 allows) once the length
        // is known: a resume or a segment, asked with the validator's `If-Range` (or proven
        // by the sha256), whose range is checked against the known length below. It
        // restarted the download from zero.
        Ok(ContentRange::Bytes {
            first,
            last,
            complete: None,
        }) if j.total.is_some() => (first, last, j.total.unwrap_or_default()),
        _ => return Err(format!("unusable Content-Range {value:?}")),
    };
    if first != t.pos {
        return Err(format!("range starts at {first}, expected {}", t.pos));
    }
    // The file's length first: a resume answered for a file of another length also ends
    // its range elsewhere, and "range ends at N" hid that the file changed.
    if j.total.is_some_and(|total| total != complete) {
        return Err(format!(
            "complete length {complete} differs from the {} bytes known",
            j.total.unwrap_or_default()
        ));
    }
    let want_end = t.end.unwrap_or(complete).min(complete);
    if last + 1 != want_end {
        return Err(format!(
            "range ends at {last}, expected {}",
            want_end.saturating_sub(1)
        ));
    }
    if let Framing::Length(n) = framing {
        if n != last + 1 - first {
            return Err(format!(
                "Content-Length {n} disagrees with Content-Range {value}"
            ));
        }
    }
    if t.mirror != j.mirror {
        // Another mirror's segment: its validator is not comparable; the complete length
        // (checked above against the known one) and the final sha256 prove it.
        return match j.total {
            Some(_) => Ok((complete, None)),
            None => Err("a segment from another mirror before the length is known".into()),
        };
    }
    // Without a sha256 to prove the result, the validator must come from the resource it
    // vouches for (with one, bytes may come from elsewhere, as from another mirror).
    let unproven = j.spec.sha256.is_none();
    if let (Some(_), Some(resource), true) = (&j.validator, &j.validator_resource, unproven) {
        let answered = resource_of(&t.url);
        if answered != *resource {
            return Err(format!(
                "the range was answered by {} (file {answered:?}), not by a URL of the file \
                 {resource:?} whose bytes the partial holds",
                t.url
            ));
        }
    }
    match &j.validator {
        Some(v) if v.matches_response(head) => Ok((complete, None)),
        Some(_) if Validator::of_response(head).is_none() => {
            Err("the range response carries no validator to match the bytes held".into())
        }
        Some(_) => Err("the representation's validator changed".into()),
        None if first == 0 => Ok((complete, Validator::of_response(head))),
        None => Err("a range of a representation without a strong validator".into()),
    }
}
