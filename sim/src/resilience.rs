//! Checkers for the engine's resilience policies, fed with what the world observes: engine
//! events (`Started`, `Retrying`, `Failover`, `BreakerOpened`), requests arriving at the
//! virtual origins (their paths name the download) and connects to dead hosts.
//!
//! - [`BreakerWatch`]: after `BreakerOpened { origin, cooldown }` at `t`, no attempt that
//!   began after the opening sends a request to `origin` before `t + cooldown`.
//! - [`BackoffModel`]: each `Retrying` delay is a failover (zero, or the retry budget's
//!   wait) only while the job has a URL that has not failed since its last backoff, and is
//!   otherwise the exponential backoff of the job's backoff count (equal jitter, at least
//!   `Retry-After`), never shorter than the budget's wait. After a failed verification a
//!   job with one URL retries once; a job with several never again uses a URL that served
//!   wrong bytes, and retries only while one that did not is left; bytes assembled from
//!   several URLs (after `Spread`) blame none, and the job starts over at once on its
//!   attempt's URL (no failover before its next retry).
//! - [`RetryWindow`]: `Retrying` events in any 60 s window stay within twice the budget
//!   (plus one per job, see there).
//!
//! The checkers own no world state and decide nothing about faults; the world calls them
//! and turns what they return into violations.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use haul_core::config::RetryPolicy;
use haul_core::{DownloadError, Instant};

use crate::world::fmt_time;

/// A point in the order of observations: simulated time, then the order in which the world
/// saw things at that time (`seq` 0 is "before anything seen at that instant").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// Simulated time.
    pub at: Instant,
    /// Order among observations at `at`; increases over the whole run.
    pub seq: u64,
}

impl Mark {
    /// The start of instant `at`, before anything observed then.
    pub fn start_of(at: Instant) -> Mark {
        Mark { at, seq: 0 }
    }
}

#[derive(Debug, Clone)]
struct Opening {
    origin: String,
    at: Mark,
    cooldown: Duration,
}

/// The breaker invariant.
///
/// # Formulation
///
/// The engine checks a breaker once per attempt, when the attempt picks its URL; a running
/// attempt is not stopped by an opening (its segments may still open connections, a reused
/// keep-alive connection that turns out stale is replaced, redirects are followed). So the
/// invariant is about attempts that *began* after the opening, and about their *first hop*
/// (a request for one of the download's own URLs; a redirect target is reached without a
/// breaker check):
///
/// > if `BreakerOpened { origin: O, cooldown: c }` is observed at `t`, no first-hop request
/// > to `O` is sent before `t + c` by a download whose current attempt began after `t`.
///
/// The world cannot see when an attempt picks its URL, only bounds: attempt 1 of a job
/// begins after its `Started`, a retry after a delay `d` no earlier than the start of the
/// instant `now + d` (after the `Retrying` event itself when `d` is zero), and an attempt
/// that emits `Failover` begins exactly there. An attempt counts as begun after the opening
/// only when that lower bound is after it, so the check never blames an attempt that might
/// have begun earlier (sound, possibly incomplete at a shared instant). Requests are judged
/// by when the engine issued their `Send` (or `Connect`, for hosts that do not resolve).
#[derive(Debug, Clone, Default)]
pub struct BreakerWatch {
    openings: Vec<Opening>,
    /// Per download: the earliest its current attempt can have begun.
    attempts: Vec<Option<Mark>>,
}

/// What [`BreakerWatch::request`] makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerVerdict {
    /// Nothing to say.
    Fine,
    /// A first hop that breaks the invariant.
    Violation(String),
    /// A redirect target reached, during an open window, by an attempt that began after
    /// the opening: allowed (the engine checks only the attempt's own URL), but counted.
    RedirectPastOpenBreaker,
}

impl BreakerWatch {
    /// How long from `now` a breaker seen open on `origin` may hold a request back: until
    /// it may let a probe through; `None` when none is open now.
    pub fn open_for(&self, origin: &str, now: Instant) -> Option<Duration> {
        self.openings
            .iter()
            .filter(|o| o.origin == origin)
            .map(|o| o.at.at + o.cooldown)
            .max()
            .filter(|end| *end > now)
            .map(|end| end.saturating_since(now))
    }

    /// A watch over `downloads` downloads.
    pub fn new(downloads: usize) -> BreakerWatch {
        BreakerWatch {
            openings: Vec::new(),
            attempts: vec![None; downloads],
        }
    }

    /// The engine is gone (a crash): its breakers and attempts with it.
    pub fn reset(&mut self) {
        self.openings.clear();
        self.attempts.iter_mut().for_each(|a| *a = None);
    }

    /// `BreakerOpened { origin, cooldown }` observed at `at`.
    pub fn opened(&mut self, origin: &str, at: Mark, cooldown: Duration) {
        self.openings.retain(|o| o.at.at + o.cooldown > at.at);
        self.openings.push(Opening {
            origin: origin.to_string(),
            at,
            cooldown,
        });
    }

    /// The current attempt of download `d` began no earlier than `from` (a later bound
    /// replaces an earlier one: a new attempt).
    pub fn attempt_from(&mut self, d: usize, from: Mark) {
        self.attempts[d] = Some(from);
    }

    /// An attempt of download `d` emitted `Failover` at `at`: it began exactly then.
    pub fn attempt_began(&mut self, d: usize, at: Mark) {
        let a = &mut self.attempts[d];
        *a = Some(a.map_or(at, |x| x.max(at)));
    }

    /// Download `d`'s job ended.
    pub fn ended(&mut self, d: usize) {
        self.attempts[d] = None;
    }

    /// A request of download `d` to `origin` whose `Send` was issued at `sent`;
    /// `first_hop` when it asks for one of the download's own URLs.
    pub fn request(
        &self,
        d: usize,
        origin: &str,
        sent: Instant,
        first_hop: bool,
    ) -> BreakerVerdict {
        let Some(began) = self.attempts[d] else {
            return BreakerVerdict::Fine;
        };
        let open = self
            .openings
            .iter()
            .find(|o| o.origin == origin && sent < o.at.at + o.cooldown && began > o.at);
        match open {
            None => BreakerVerdict::Fine,
            Some(_) if !first_hop => BreakerVerdict::RedirectPastOpenBreaker,
            Some(o) => BreakerVerdict::Violation(format!(
                "d{d} sent a request to {origin} at {}, in an attempt that began at {} or \
                 later, after the breaker opened at {} for {:?} (until {})",
                fmt_time(sent),
                fmt_time(began.at),
                fmt_time(o.at.at),
                o.cooldown,
                fmt_time(o.at.at + o.cooldown)
            )),
        }
    }
}

/// What the model knows of a job's retry state: which URL its attempt uses, which URLs
/// failed since its last backoff, which served bytes that failed verification, and how many
/// backoffs it took. One per job.
///
/// The engine can also clear its round silently: when the URL a failover chose is no longer
/// admitted at the attempt's start it waits a base delay without an event. A failover's
/// attempt normally emits `Failover` at the very instant its delay ends; when that does not
/// happen the model forgets the round (which only makes the zero-delay check more lenient).
#[derive(Debug, Clone)]
pub struct BackoffModel {
    urls: usize,
    cur: usize,
    round: BTreeSet<usize>,
    /// Backoffs taken: at least `.0`, at most `.1` (they differ only after a retry whose
    /// delay fits both a failover and a backoff, which needs the budget to be short).
    backoffs: (u32, u32),
    expect_failover_at: Option<Instant>,
    verify_retries: u32,
    /// URLs that served bytes failing verification, or failed for a reason of their own
    /// (a redirect loop, a client error): never used again by the job.
    bad: BTreeSet<usize>,
    /// The attempt running or about to start (1 for the first).
    attempt: u32,
    /// Retries read as failovers (or either): see [`BackoffModel::failovers`].
    failovers: u32,
    /// The job spread segments over its URLs (`Event::Spread`), and its first failed
    /// verification since is still to come: that one blames no URL.
    spread_unblamed: bool,
    /// The retry after that verification starts the job over on its attempt's URL: until
    /// the next retry the job does not fail over.
    stay: bool,
}

/// How the model classified a `Retrying` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// At once (or after the budget's wait) on another URL.
    Failover,
    /// After an exponential backoff.
    Backoff,
    /// Either (the budget's wait covers both).
    Either,
    /// At once (or after the budget's wait) on the same URL: the start-over after bytes
    /// assembled from several URLs failed verification.
    StartOver,
}

impl BackoffModel {
    /// A job with `urls` URLs (its own and its mirrors), starting on URL 0.
    pub fn new(urls: usize) -> BackoffModel {
        BackoffModel {
            urls: urls.max(1),
            cur: 0,
            round: BTreeSet::new(),
            backoffs: (0, 0),
            expect_failover_at: None,
            verify_retries: 0,
            bad: BTreeSet::new(),
            attempt: 1,
            failovers: 0,
            spread_unblamed: false,
            stay: false,
        }
    }

    /// Backoffs the job has taken, at least.
    pub fn backoffs_at_least(&self) -> u32 {
        self.backoffs.0
    }

    /// `Spread` observed (the engine sends it once per job): the next failed verification
    /// blames no URL.
    pub fn spread(&mut self) {
        self.spread_unblamed = true;
    }

    /// The attempt running or about to start.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Retries read as (or possibly) a move to an untried URL: they do not count against
    /// `max_attempts`.
    pub fn failovers(&self) -> u32 {
        self.failovers
    }

    /// Whether the job retried after a failed verification.
    pub fn verification_retried(&self) -> bool {
        self.verify_retries > 0
    }

    /// Whether URL `url` is out of the job's use (it served wrong bytes, or failed for a
    /// reason of its own).
    pub fn is_bad(&self, url: usize) -> bool {
        self.bad.contains(&url)
    }

    /// URLs other than the current attempt's that have not served wrong bytes: where a job
    /// with several URLs can retry after its current URL failed verification.
    pub fn urls_left_after_bad(&self) -> usize {
        (0..self.urls)
            .filter(|u| *u != self.cur && !self.bad.contains(u))
            .count()
    }

    /// A pending failover expectation not met by `now`: the engine cleared its round.
    fn settle(&mut self, now: Instant, is_failover_event: bool) {
        if let Some(at) = self.expect_failover_at {
            if now > at || !is_failover_event {
                self.round.clear();
            }
            self.expect_failover_at = None;
        }
    }

    /// `Failover { to }` observed at `now`, `to` being URL index `to`. Returns why it is
    /// wrong: `to` served bytes that failed verification earlier in this job.
    pub fn failover(&mut self, now: Instant, to: usize) -> Result<(), String> {
        let met = self.expect_failover_at == Some(now);
        self.settle(now, met);
        if self.stay {
            return Err(format!(
                "fails over from URL {} to URL {to} in the start-over after an assembled \
                 download failed verification, which stays on its URL",
                self.cur
            ));
        }
        self.cur = to;
        if self.bad.contains(&to) {
            return Err(format!(
                "fails over to URL {to}, which served wrong bytes earlier in this job"
            ));
        }
        Ok(())
    }

    /// `Retrying { delay, error }` observed at `now`, when the modelled retry budget makes a
    /// retry wait `budget_wait`, and each URL's origin has a breaker seen open for
    /// `breakers[u]` more (`None`: closed, or not known; empty: not modelled). When every URL
    /// that has not served wrong bytes is behind one, the engine announces the wait for the
    /// first to let a probe through: a delay up to the longest of them is a backoff too.
    /// Returns how the delay was read, or why it is wrong.
    pub fn retrying(
        &mut self,
        policy: &RetryPolicy,
        now: Instant,
        delay: Duration,
        error: &DownloadError,
        budget_wait: Duration,
        breakers: &[Option<Duration>],
    ) -> Result<RetryKind, String> {
        self.settle(now, false);
        self.attempt += 1;
        self.stay = false;
        // Float rounding in the budget's refill, and nanosecond truncation.
        let slack = Duration::from_micros(10);
        if matches!(
            error,
            DownloadError::HashMismatch { .. } | DownloadError::SizeMismatch { .. }
        ) {
            self.verify_retries += 1;
            // One URL: one retry from zero. Several: each URL may serve wrong bytes once,
            // and a retry needs a URL that has not; bytes assembled from several blame none.
            if std::mem::take(&mut self.spread_unblamed) {
                // Assembled from several URLs: none blamed, the job starts over at once on
                // its attempt's URL, which is not counted as failed this round.
                if delay + slack < budget_wait || delay > budget_wait + slack {
                    return Err(format!(
                        "waits {delay:?} to start over on its URL after an assembled download \
                         failed verification: not at once (the budget's wait {budget_wait:?})"
                    ));
                }
                self.stay = true;
                return Ok(RetryKind::StartOver);
            } else if self.urls == 1 && self.verify_retries > 1 {
                return Err(format!(
                    "a second retry after a failed verification ({error})"
                ));
            } else if self.urls > 1 {
                if !self.bad.insert(self.cur) {
                    return Err(format!(
                        "URL {} served wrong bytes twice to the same job ({error})",
                        self.cur
                    ));
                }
                if self.bad.len() >= self.urls {
                    return Err(format!(
                        "a retry after every URL served wrong bytes ({error})"
                    ));
                }
            }
        } else if !error.retryable() && error.another_url_may_serve() {
            // Retried at all only on another URL; this one is not used again.
            self.bad.insert(self.cur);
            if self.urls == 1 || self.bad.len() >= self.urls {
                return Err(format!(
                    "a retry after a failure of its own on every URL ({error})"
                ));
            }
        }
        self.round.insert(self.cur);
        let unfailed = (0..self.urls).any(|u| !self.round.contains(&u) && !self.bad.contains(&u));
        let exp = |n: u32| {
            policy
                .base_delay
                .saturating_mul(1 << n.min(20))
                .min(policy.max_delay)
        };
        let retry_after = match error {
            DownloadError::Status {
                retry_after: Some(ra),
                ..
            } => *ra,
            _ => Duration::ZERO,
        };
        let low = (exp(self.backoffs.0) / 2).max(retry_after).max(budget_wait);
        let held_back = (0..self.urls)
            .filter(|u| !self.bad.contains(u))
            .map(|u| breakers.get(u).copied().flatten())
            .collect::<Option<Vec<Duration>>>()
            .and_then(|waits| waits.into_iter().max())
            .unwrap_or_default();
        let high = exp(self.backoffs.1)
            .max(retry_after)
            .max(budget_wait)
            .max(held_back);
        let failover = unfailed && delay + slack >= budget_wait && delay <= budget_wait + slack;
        let backoff = delay + slack >= low && delay <= high + slack;
        let kind = match (failover, backoff) {
            (true, false) => {
                self.expect_failover_at = Some(now + delay);
                self.failovers += 1;
                RetryKind::Failover
            }
            (false, true) => {
                self.backoffs = (self.backoffs.0 + 1, self.backoffs.1 + 1);
                self.round.clear();
                RetryKind::Backoff
            }
            (true, true) => {
                self.backoffs.1 += 1;
                self.round.clear();
                self.failovers += 1;
                RetryKind::Either
            }
            (false, false) => {
                let failed: Vec<usize> = self.round.iter().copied().collect();
                let why = if delay + slack < budget_wait {
                    format!("shorter than the retry budget's wait {budget_wait:?}")
                } else if unfailed {
                    format!(
                        "neither a failover (the budget's wait {budget_wait:?}) nor a backoff \
                         in [{low:?}, {high:?}]"
                    )
                } else {
                    format!(
                        "outside [{low:?}, {high:?}], and no failover is possible: every URL \
                         failed since the last backoff"
                    )
                };
                return Err(format!(
                    "waits {delay:?}: {why} (backoffs so far {}..={}, URLs failed this round \
                     {failed:?} of {})",
                    self.backoffs.0, self.backoffs.1, self.urls
                ));
            }
        };
        Ok(kind)
    }
}

/// Retrying events in the last 60 s of one engine's life, against the most the retry
/// budget allows.
///
/// Every retry takes a token and its attempt starts no earlier than the token is there, so
/// at most `2 * per_minute` retry attempts start in any 60 s (a full bucket at the window's
/// start, one minute's refill). A `Retrying` event ends an attempt; in a window, a job's
/// later `Retrying` events end attempts that started inside it after a retry, but its first
/// one may end an attempt that took no token in the window (the job's first attempt, or one
/// that started before). Hence the bound: `2 * per_minute` plus the jobs that retried in
/// the window (downloads stand in for jobs: one job per download at a time).
#[derive(Debug, Clone, Default)]
pub struct RetryWindow {
    times: VecDeque<(Instant, usize)>,
}

/// The window of [`RetryWindow`].
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);

impl RetryWindow {
    /// The engine is gone: a new one starts with a full budget.
    pub fn reset(&mut self) {
        self.times.clear();
    }

    /// A `Retrying` of download `d` at `now`; returns why the window ending now holds too
    /// many.
    pub fn retrying(&mut self, now: Instant, d: usize, per_minute: u32) -> Option<String> {
        while self
            .times
            .front()
            .is_some_and(|(t, _)| *t + RETRY_WINDOW <= now)
        {
            self.times.pop_front();
        }
        self.times.push_back((now, d));
        let jobs = self
            .times
            .iter()
            .map(|(_, d)| *d)
            .collect::<BTreeSet<usize>>()
            .len();
        let limit = 2 * per_minute as usize + jobs;
        (self.times.len() > limit).then(|| {
            format!(
                "{} retries in the minute up to {}, more than twice the budget of {per_minute} \
                 plus the {jobs} downloads that retried",
                self.times.len(),
                fmt_time(now)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_duration(Duration::from_millis(ms))
    }

    fn mark(ms: u64, seq: u64) -> Mark {
        Mark { at: t(ms), seq }
    }

    const O: &str = "http://o0.sim:80";

    #[test]
    fn a_new_attempt_inside_the_cooldown_is_caught_and_a_running_one_is_not() {
        let mut w = BreakerWatch::new(3);
        // d0's attempt began before the opening; d1 retried after it (failover, delay
        // zero); d2's retry is due at the very instant the breaker opens (ambiguous).
        w.attempt_from(0, mark(1_000, 1));
        w.attempt_from(2, Mark::start_of(t(5_000)));
        w.opened(O, mark(5_000, 10), Duration::from_secs(2));
        w.attempt_from(1, mark(5_000, 11));
        assert_eq!(w.request(0, O, t(5_500), true), BreakerVerdict::Fine);
        assert_eq!(w.request(2, O, t(5_500), true), BreakerVerdict::Fine);
        assert!(matches!(
            w.request(1, O, t(5_500), true),
            BreakerVerdict::Violation(_)
        ));
        // Other origins, redirect targets, and the end of the cool-down.
        assert_eq!(
            w.request(1, "http://o1.sim:80", t(5_500), true),
            BreakerVerdict::Fine
        );
        assert_eq!(
            w.request(1, O, t(5_500), false),
            BreakerVerdict::RedirectPastOpenBreaker
        );
        assert_eq!(w.request(1, O, t(7_000), true), BreakerVerdict::Fine);
        // A retry whose backoff ends inside the window is caught too; a crash forgets all.
        w.attempt_from(0, Mark::start_of(t(6_000)));
        assert!(matches!(
            w.request(0, O, t(6_000), true),
            BreakerVerdict::Violation(_)
        ));
        w.reset();
        w.attempt_from(0, Mark::start_of(t(6_000)));
        assert_eq!(w.request(0, O, t(6_000), true), BreakerVerdict::Fine);
    }

    #[test]
    fn a_failover_marks_the_exact_start_of_an_attempt() {
        let mut w = BreakerWatch::new(1);
        w.attempt_from(0, mark(0, 1));
        w.opened(O, mark(100, 5), Duration::from_secs(8));
        assert_eq!(w.request(0, O, t(200), true), BreakerVerdict::Fine);
        w.attempt_began(0, mark(100, 6));
        assert!(matches!(
            w.request(0, O, t(200), true),
            BreakerVerdict::Violation(_)
        ));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(4),
            max_elapsed: Duration::from_secs(60),
            budget_per_minute: 600,
        }
    }

    fn reset() -> DownloadError {
        DownloadError::Timeout {
            kind: haul_core::error::TimeoutKind::Idle,
            origin: O.into(),
            after: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_zero_delay_needs_a_url_that_has_not_failed_this_round() {
        let p = policy();
        let z = Duration::ZERO;
        // Without mirrors, never.
        let mut m = BackoffModel::new(1);
        assert!(m.retrying(&p, t(0), z, &reset(), z, &[]).is_err());
        // With one mirror: fail over once, then back off, then fail over again.
        let mut m = BackoffModel::new(2);
        assert_eq!(
            m.retrying(&p, t(0), z, &reset(), z, &[]),
            Ok(RetryKind::Failover)
        );
        m.failover(t(0), 1).unwrap();
        assert!(
            m.retrying(&p, t(10), z, &reset(), z, &[]).is_err(),
            "both failed"
        );
        let mut m = BackoffModel::new(2);
        m.retrying(&p, t(0), z, &reset(), z, &[]).unwrap();
        m.failover(t(0), 1).unwrap();
        let d = Duration::from_millis(150);
        assert_eq!(
            m.retrying(&p, t(10), d, &reset(), z, &[]),
            Ok(RetryKind::Backoff)
        );
        assert_eq!(
            m.retrying(&p, t(500), z, &reset(), z, &[]),
            Ok(RetryKind::Failover)
        );
    }

    #[test]
    fn the_exponent_is_the_number_of_backoffs_and_the_budget_can_only_lengthen() {
        let p = policy();
        let z = Duration::ZERO;
        let mut m = BackoffModel::new(1);
        let ms = Duration::from_millis;
        assert!(m.retrying(&p, t(0), ms(100), &reset(), z, &[]).is_ok());
        assert!(m.retrying(&p, t(1000), ms(399), &reset(), z, &[]).is_ok());
        assert!(
            m.retrying(&p, t(2000), ms(399), &reset(), z, &[]).is_err(),
            "exp 800"
        );
        // A budget wait raises both bounds.
        let mut m = BackoffModel::new(1);
        assert!(m
            .retrying(&p, t(0), ms(150), &reset(), ms(500), &[])
            .is_err());
        assert!(m
            .retrying(&p, t(0), ms(500), &reset(), ms(500), &[])
            .is_ok());
        // Breakers open on every URL that has not served wrong bytes: up to the longest of
        // them is a backoff too; with one URL free of them, it is not.
        let two = Duration::from_secs(2);
        let mut m = BackoffModel::new(1);
        assert!(m.retrying(&p, t(0), two, &reset(), z, &[Some(two)]).is_ok());
        let mut m = BackoffModel::new(1);
        assert!(m.retrying(&p, t(0), two, &reset(), z, &[None]).is_err());
        // Retry-After raises the floor.
        let mut m = BackoffModel::new(1);
        let e = DownloadError::Status {
            url: "http://o0.sim/f/d0".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(m.retrying(&p, t(0), ms(150), &e, z, &[]).is_err());
        assert!(m.retrying(&p, t(0), ms(3000), &e, z, &[]).is_ok());
    }

    #[test]
    fn a_silent_round_reset_makes_the_model_lenient_not_wrong() {
        let p = policy();
        let z = Duration::ZERO;
        let mut m = BackoffModel::new(2);
        m.retrying(&p, t(0), z, &reset(), z, &[]).unwrap();
        // No Failover at 0 ms: the engine waited and cleared its round, then went back to
        // URL 0 (no event) and failed there; URL 1 is fresh again.
        assert_eq!(
            m.retrying(&p, t(300), z, &reset(), z, &[]),
            Ok(RetryKind::Failover)
        );
    }

    fn mismatch() -> DownloadError {
        DownloadError::HashMismatch {
            url: "http://a/f".into(),
            path: "f".into(),
            expected: "a".into(),
            actual: "b".into(),
        }
    }

    #[test]
    fn a_job_with_one_url_retries_once_after_a_failed_verification() {
        let p = policy();
        let z = Duration::ZERO;
        let ms = Duration::from_millis;
        let mut m = BackoffModel::new(1);
        assert!(!m.verification_retried());
        assert!(m.retrying(&p, t(0), ms(150), &mismatch(), z, &[]).is_ok());
        assert!(m.verification_retried());
        assert!(
            m.retrying(&p, t(1000), ms(300), &mismatch(), z, &[])
                .is_err(),
            "a second retry after a failed verification"
        );
        // A size mismatch counts the same.
        let mut m = BackoffModel::new(1);
        let size = DownloadError::SizeMismatch {
            url: "http://a/f".into(),
            path: "f".into(),
            expected: 10,
            actual: 12,
            at_least: false,
        };
        assert!(m.retrying(&p, t(0), ms(150), &size, z, &[]).is_ok());
        assert!(m.retrying(&p, t(1000), ms(300), &size, z, &[]).is_err());
    }

    #[test]
    fn each_url_of_a_job_may_serve_wrong_bytes_once() {
        let p = policy();
        let z = Duration::ZERO;
        let ms = Duration::from_millis;
        // Three URLs, each failing verification in turn: the first two failures fail over
        // to a URL that has not served wrong bytes; a retry after the third is one too many.
        let mut m = BackoffModel::new(3);
        assert_eq!(m.urls_left_after_bad(), 2);
        assert_eq!(
            m.retrying(&p, t(0), z, &mismatch(), z, &[]),
            Ok(RetryKind::Failover)
        );
        m.failover(t(0), 1).unwrap();
        assert_eq!(m.urls_left_after_bad(), 1);
        assert_eq!(
            m.retrying(&p, t(10), z, &mismatch(), z, &[]),
            Ok(RetryKind::Failover)
        );
        m.failover(t(10), 2).unwrap();
        assert_eq!(
            m.urls_left_after_bad(),
            0,
            "the job must end if URL 2 fails too"
        );
        let why = m
            .retrying(&p, t(20), z, &mismatch(), z, &[])
            .expect_err("every URL served wrong bytes");
        assert!(why.contains("every URL served wrong bytes"), "{why}");

        // A URL that served wrong bytes is not used again by the job: a failover to it is
        // caught, and so is a second failed verification there.
        let mut m = BackoffModel::new(3);
        m.retrying(&p, t(0), z, &mismatch(), z, &[]).unwrap();
        m.failover(t(0), 1).unwrap();
        m.retrying(&p, t(10), z, &reset(), z, &[]).unwrap();
        let why = m.failover(t(10), 0).expect_err("URL 0 is bad");
        assert!(why.contains("served wrong bytes earlier"), "{why}");
        let why = m
            .retrying(&p, t(20), ms(150), &mismatch(), z, &[])
            .expect_err("URL 0 served wrong bytes twice");
        assert!(why.contains("URL 0 served wrong bytes twice"), "{why}");

        // A URL that served wrong bytes leaves the round for good: with URL 0 bad and URL 1
        // failed since the last backoff, no failover is possible; the next retry backs off.
        let mut m = BackoffModel::new(2);
        m.retrying(&p, t(0), z, &mismatch(), z, &[]).unwrap();
        m.failover(t(0), 1).unwrap();
        assert!(
            m.retrying(&p, t(10), z, &reset(), z, &[]).is_err(),
            "a zero delay with URL 0 bad and URL 1 failed"
        );
        let mut m = BackoffModel::new(2);
        m.retrying(&p, t(0), z, &mismatch(), z, &[]).unwrap();
        m.failover(t(0), 1).unwrap();
        assert_eq!(
            m.retrying(&p, t(10), ms(150), &reset(), z, &[]),
            Ok(RetryKind::Backoff)
        );
        // After the backoff the round is new, but URL 0 is still bad: no failover to it.
        assert!(m.retrying(&p, t(500), z, &reset(), z, &[]).is_err());
    }

    #[test]
    fn an_assembled_download_that_failed_verification_starts_over_at_once_on_its_url() {
        let p = policy();
        let z = Duration::ZERO;
        let ms = Duration::from_millis;
        let mut m = BackoffModel::new(2);
        m.spread();
        assert_eq!(
            m.retrying(&p, t(0), z, &mismatch(), z, &[]),
            Ok(RetryKind::StartOver)
        );
        let why = m
            .failover(t(0), 1)
            .expect_err("the start-over stays on URL 0");
        assert!(why.contains("stays on its URL"), "{why}");
        // Its URL did not fail this round: a later failure there may still fail over.
        let mut m = BackoffModel::new(2);
        m.spread();
        m.retrying(&p, t(0), z, &mismatch(), z, &[]).unwrap();
        assert_eq!(
            m.retrying(&p, t(10), z, &reset(), z, &[]),
            Ok(RetryKind::Failover)
        );
        m.failover(t(10), 1).unwrap();
        // A backoff is no start-over, and the budget's wait is respected.
        let mut m = BackoffModel::new(2);
        m.spread();
        assert!(m.retrying(&p, t(0), ms(150), &mismatch(), z, &[]).is_err());
        let mut m = BackoffModel::new(2);
        m.spread();
        assert_eq!(
            m.retrying(&p, t(0), ms(40), &mismatch(), ms(40), &[]),
            Ok(RetryKind::StartOver)
        );
        let mut m = BackoffModel::new(2);
        m.spread();
        assert!(m.retrying(&p, t(0), z, &mismatch(), ms(40), &[]).is_err());
    }

    #[test]
    fn the_retry_window_counts_the_last_minute() {
        let mut w = RetryWindow::default();
        // Budget 2: four retry attempts a minute, plus one per download that retried.
        for i in 0..5 {
            assert_eq!(w.retrying(t(i * 1000), 0, 2), None);
        }
        assert_eq!(w.retrying(t(5000), 1, 2), None, "another download's first");
        assert!(w.retrying(t(6000), 0, 2).is_some(), "seven in a minute");
        // The oldest leave the window; a crash empties it.
        assert_eq!(w.retrying(t(61_500), 0, 2), None);
        w.reset();
        for i in 0..5 {
            assert_eq!(w.retrying(t(70_000 + i), 0, 2), None);
        }
    }
}
