//! Resilience policies, pure and clock-driven: a circuit breaker per origin, a global retry
//! budget, and mirror ranking.
//!
//! The engine owns one [`Breaker`] per origin (shared by every download), one
//! [`RetryBudget`], and [`MirrorStats`] per mirror URL; it consults them when it picks where
//! to send a request and when it decides whether and when to retry. Nothing here reads a
//! clock or the OS: time comes in as [`Instant`]s and randomness from the engine's seeded
//! generator.

use std::time::Duration;

use crate::rng::SeededRng;
use crate::time::Instant;

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Time the breaker stays open before admitting one probe.
    pub cooldown: Duration,
    /// Largest cool-down; each failed probe doubles the cool-down up to this.
    pub max_cooldown: Duration,
    /// Successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(600),
            success_threshold: 1,
        }
    }
}

/// The state of one origin's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; counts consecutive failures.
    Closed { failures: u32 },
    /// Requests are refused until `until`.
    Open { until: Instant, cooldown: Duration },
    /// One probe at a time; `successes` so far.
    HalfOpen {
        successes: u32,
        probing: bool,
        cooldown: Duration,
    },
}

/// What the breaker says about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as the single probe of a half-open breaker.
    Probe,
    /// Not before this instant.
    RejectedUntil(Instant),
}

/// A circuit breaker: closed → open after N consecutive failures → half-open after a
/// cool-down (one probe at a time) → closed after M successes; a failed probe reopens it
/// with a doubled cool-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// The last failure noted ([`Breaker::note_failure`]), for messages.
    last_failure: Option<String>,
    /// When it last opened from closed: the start of the outage it holds requests back
    /// from, through its probes and reopenings ([`Breaker::outage_since`]).
    opened_from_closed: Option<Instant>,
    /// The caller's failure clock right after this breaker last counted a failure (see
    /// [`Breaker::on_request_failure`]); 0 when it never did.
    counted_at: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed { failures: 0 },
            last_failure: None,
            opened_from_closed: None,
            counted_at: 0,
        }
    }

    /// When the outage it holds requests back from began (it opened from closed), unless
    /// it is closed.
    pub fn outage_since(&mut self, now: Instant) -> Option<Instant> {
        match self.state(now) {
            BreakerState::Closed { .. } => None,
            _ => self.opened_from_closed,
        }
    }

    /// The current state (after moving from open to half-open if the cool-down passed).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until, cooldown } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen {
                    successes: 0,
                    probing: false,
                    cooldown,
                };
            }
        }
        self.state
    }

    /// When a request could go, without asking to: `None` now (closed, or half-open with
    /// no probe out), else not before the instant returned (the end of the cool-down, or a
    /// second at most while another request probes).
    pub fn not_before(&mut self, now: Instant) -> Option<Instant> {
        match self.state(now) {
            BreakerState::Closed { .. } | BreakerState::HalfOpen { probing: false, .. } => None,
            BreakerState::HalfOpen { cooldown, .. } => {
                Some(now + cooldown.min(Duration::from_secs(1)))
            }
            BreakerState::Open { until, .. } => Some(until),
        }
    }

    /// Whether a request may go now; a probe admission must be followed by
    /// [`Breaker::on_success`] or [`Breaker::on_failure`] (or [`Breaker::on_abandon`]).
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let Some(at) = self.not_before(now) {
            return Admission::RejectedUntil(at);
        }
        match self.state {
            BreakerState::HalfOpen {
                successes,
                cooldown,
                ..
            } => {
                self.state = BreakerState::HalfOpen {
                    successes,
                    probing: true,
                    cooldown,
                };
                Admission::Probe
            }
            _ => Admission::Allowed,
        }
    }

    /// A request to this origin succeeded.
    pub fn on_success(&mut self, now: Instant) {
        self.state = match self.state(now) {
            BreakerState::Closed { .. } => BreakerState::Closed { failures: 0 },
            BreakerState::HalfOpen {
                successes,
                cooldown,
                ..
            } => {
                if successes + 1 >= self.config.success_threshold {
                    BreakerState::Closed { failures: 0 }
                } else {
                    BreakerState::HalfOpen {
                        successes: successes + 1,
                        probing: false,
                        cooldown,
                    }
                }
            }
            open @ BreakerState::Open { .. } => open,
        };
    }

    /// Remember `failure` (what the failure just counted was) to say why the origin is
    /// failing.
    pub fn note_failure(&mut self, failure: String) {
        self.last_failure = Some(failure);
    }

    /// The last failure noted, if any.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// A request to this origin failed in a way that says something about the origin.
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state(now) {
            BreakerState::Closed { failures } => {
                if failures + 1 >= self.config.failure_threshold {
                    self.opened_from_closed = Some(now);
                    BreakerState::Open {
                        until: now + self.config.cooldown,
                        cooldown: self.config.cooldown,
                    }
                } else {
                    BreakerState::Closed {
                        failures: failures + 1,
                    }
                }
            }
            BreakerState::HalfOpen { cooldown, .. } => {
                let next = (cooldown * 2).min(self.config.max_cooldown);
                BreakerState::Open {
                    until: now + next,
                    cooldown: next,
                }
            }
            open @ BreakerState::Open { .. } => open,
        };
    }

    /// A request failed in a way that counts against the origin: `sent` is what the
    /// caller's failure clock read when the request went out (or its connection began), and
    /// `clock` is that clock, advanced here when the failure counts. Returns whether it
    /// counted.
    ///
    /// While closed, only the failure of a request sent after the last counted one counts:
    /// requests that were in flight together when a failure was counted and then fail too
    /// (every connection reset by one restart of the server) are the same incident, not
    /// several consecutive failures. Each request
    /// sent after a counted failure, knowing of it, that fails again does count. A failure
    /// while half-open always counts (it reopens); an open breaker ignores failures. The
    /// caller gives `u64::MAX` as `sent` for a failure that is no part of an incident of
    /// others (a timeout, a refusal, an answer: see
    /// [`DownloadError::breaks_connection`](crate::DownloadError::breaks_connection)).
    pub fn on_request_failure(&mut self, now: Instant, sent: u64, clock: &mut u64) -> bool {
        if self.same_incident(now, sent) || matches!(self.state(now), BreakerState::Open { .. }) {
            return false;
        }
        *clock += 1;
        self.counted_at = *clock;
        self.on_failure(now);
        true
    }

    /// Whether the failure of a request sent when the caller's failure clock read `sent` is
    /// part of an incident this closed breaker already counted (see
    /// [`Breaker::on_request_failure`]).
    pub fn same_incident(&mut self, now: Instant, sent: u64) -> bool {
        matches!(self.state(now), BreakerState::Closed { .. }) && sent < self.counted_at
    }

    /// A probe ended without a verdict (cancelled): admit another.
    pub fn on_abandon(&mut self) {
        if let BreakerState::HalfOpen {
            successes,
            cooldown,
            ..
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                successes,
                probing: false,
                cooldown,
            };
        }
    }
}

/// A global budget of retries per minute: a token bucket that stops retry storms. A retry
/// that finds the budget empty waits for the next token instead of going at once.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    per_minute: u32,
    tokens: f64,
    last: Instant,
}

impl RetryBudget {
    /// A full budget of `per_minute` retries.
    pub fn new(per_minute: u32, now: Instant) -> RetryBudget {
        RetryBudget {
            per_minute: per_minute.max(1),
            tokens: per_minute.max(1) as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens =
            (self.tokens + dt * self.per_minute as f64 / 60.0).min(self.per_minute as f64);
    }

    /// Take one retry token; returns how long the retry must wait for it (zero when one
    /// was available). The token is reserved either way.
    pub fn take(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens * 60.0 / self.per_minute as f64)
        }
    }

    /// How long a retry asked for now would wait for its token, without taking it.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let after = self.tokens - 1.0;
        if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after * 60.0 / self.per_minute as f64)
        }
    }

    /// Tokens available now (negative when retries are queued behind the budget).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }
}

/// Moving averages of what one mirror delivered.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MirrorStats {
    /// Exponential moving average of throughput, bytes/s (0 until measured).
    pub throughput: f64,
    /// Exponential moving average of time to the response head, seconds.
    pub latency: f64,
    /// Consecutive failures.
    pub failures: u32,
    /// Transfers measured.
    pub samples: u32,
}

const EWMA: f64 = 0.3;
/// Share of choices that go to a mirror other than the best, to keep measuring the others.
pub const EXPLORE: f64 = 0.1;

impl MirrorStats {
    /// Record a response head after `latency`.
    pub fn record_latency(&mut self, latency: Duration) {
        let l = latency.as_secs_f64();
        self.latency = if self.samples == 0 {
            l
        } else {
            EWMA * l + (1.0 - EWMA) * self.latency
        };
    }

    /// Record a finished transfer of `bytes` over `elapsed`.
    pub fn record_transfer(&mut self, bytes: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = bytes as f64 / secs;
        self.throughput = if self.samples == 0 {
            rate
        } else {
            EWMA * rate + (1.0 - EWMA) * self.throughput
        };
        self.samples += 1;
        self.failures = 0;
    }

    /// Record a failure.
    pub fn record_failure(&mut self) {
        self.failures += 1;
    }

    /// Higher is better. Unmeasured mirrors score as promising so they get tried, unless
    /// they have only ever failed: then any mirror that delivered ranks above them.
    pub fn score(&self) -> f64 {
        if self.samples == 0 {
            return if self.failures == 0 {
                f64::MAX / 4.0
            } else {
                1.0 / (1.0 + self.failures as f64)
            };
        }
        self.throughput / (1.0 + self.latency) / (1.0 + self.failures as f64)
    }
}

/// Choose among `candidates` (indices with their stats): usually the best score, sometimes
/// (with probability [`EXPLORE`]) another one, so a mirror that got faster is noticed.
pub fn choose_mirror(candidates: &[(usize, MirrorStats)], rng: &mut SeededRng) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let best = candidates
        .iter()
        .enumerate()
        .max_by(|a, b| {
            a.1 .1
                .score()
                .partial_cmp(&b.1 .1.score())
                .unwrap_or(std::cmp::Ordering::Equal)
                // Ties go to the earlier mirror (the caller's order).
                .then(b.0.cmp(&a.0))
        })
        .map(|(pos, _)| pos)
        .expect("non-empty");
    // Explore only once the best has been measured (before that the caller's order rules),
    // and only mirrors that are not failing right now: one that failed last time is tried
    // again on failover, not by chance.
    let others: Vec<usize> = (0..candidates.len())
        .filter(|pos| *pos != best && candidates[*pos].1.failures == 0)
        .collect();
    let measured = candidates[best].1.samples > 0;
    if measured && !others.is_empty() && rng.next_f64() < EXPLORE {
        let pos = others[(rng.next_u64() as usize) % others.len()];
        return Some(candidates[pos].0);
    }
    Some(candidates[best].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    /// The default breaker with a cool-down of 60 s and two successful probes to close (the
    /// numbers below are in its terms).
    fn breaker_60s() -> Breaker {
        Breaker::new(BreakerConfig {
            cooldown: Duration::from_secs(60),
            success_threshold: 2,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn breaker_opens_after_n_failures_and_half_opens_after_cooldown() {
        let mut b = breaker_60s();
        for _ in 0..4 {
            b.on_failure(at(0));
            assert_eq!(b.admit(at(0)), Admission::Allowed);
        }
        b.on_failure(at(0));
        assert_eq!(b.admit(at(1)), Admission::RejectedUntil(at(60)));
        assert_eq!(b.admit(at(60)), Admission::Probe);
        // Only one probe at a time.
        assert!(matches!(b.admit(at(60)), Admission::RejectedUntil(_)));
        b.on_success(at(61));
        assert_eq!(b.admit(at(61)), Admission::Probe);
        b.on_success(at(62));
        assert_eq!(b.state(at(62)), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn an_outage_starts_when_the_breaker_opens_from_closed_and_lasts_through_reopenings() {
        let mut b = breaker_60s();
        assert_eq!(b.outage_since(at(0)), None);
        for t in 0..5 {
            b.on_failure(at(t));
        }
        assert_eq!(b.outage_since(at(10)), Some(at(4)));
        // A failed probe reopens it: the same outage.
        assert_eq!(b.admit(at(64)), Admission::Probe);
        b.on_failure(at(64));
        assert_eq!(b.outage_since(at(70)), Some(at(4)));
        // Closed by a probe: no outage; the next one starts when it opens again.
        // (Two successful probes close this one.)
        for t in [184, 185] {
            assert_eq!(b.admit(at(t)), Admission::Probe);
            b.on_success(at(t));
        }
        assert_eq!(b.outage_since(at(186)), None);
        for _ in 0..5 {
            b.on_failure(at(200));
        }
        assert_eq!(b.outage_since(at(201)), Some(at(200)));
    }

    #[test]
    fn failed_probe_reopens_with_a_growing_cooldown() {
        let mut b = breaker_60s();
        for _ in 0..5 {
            b.on_failure(at(0));
        }
        assert_eq!(b.admit(at(60)), Admission::Probe);
        b.on_failure(at(60));
        assert_eq!(b.admit(at(61)), Admission::RejectedUntil(at(180)));
        assert_eq!(b.admit(at(180)), Admission::Probe);
        b.on_failure(at(180));
        assert_eq!(b.admit(at(181)), Admission::RejectedUntil(at(420)));
        // Capped at max_cooldown.
        for t in [420, 1020, 1620] {
            assert_eq!(b.admit(at(t)), Admission::Probe);
            b.on_failure(at(t));
        }
        assert_eq!(b.admit(at(1621)), Admission::RejectedUntil(at(2220)));
    }

    #[test]
    fn failures_of_requests_in_flight_together_count_once_while_closed() {
        let mut b = breaker_60s();
        let mut clock = 0;
        // Eight requests sent at clock 0 fail together: the first counts, the rest were in
        // flight with it.
        let counted: Vec<bool> = (0..8)
            .map(|_| b.on_request_failure(at(1), 0, &mut clock))
            .collect();
        assert_eq!(
            counted,
            [true, false, false, false, false, false, false, false]
        );
        assert_eq!(clock, 1);
        assert_eq!(b.state(at(1)), BreakerState::Closed { failures: 1 });
        // Each retry sent after the last counted failure counts: the fifth opens it.
        for n in 2..=5 {
            assert!(b.on_request_failure(at(2), clock, &mut clock));
            assert_eq!(clock, n);
        }
        assert!(matches!(b.state(at(2)), BreakerState::Open { .. }));
        // Open: a failure changes nothing, and the clock stays.
        assert!(!b.on_request_failure(at(3), clock, &mut clock));
        assert_eq!(clock, 5);
        // Half-open: the probe's failure reopens it, whenever the probe was sent.
        assert_eq!(b.admit(at(62)), Admission::Probe);
        assert!(b.on_request_failure(at(62), 0, &mut clock));
        assert!(matches!(
            b.state(at(62)),
            BreakerState::Open { cooldown, .. } if cooldown == Duration::from_secs(120)
        ));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..4 {
            b.on_failure(at(0));
        }
        b.on_success(at(0));
        for _ in 0..4 {
            b.on_failure(at(0));
        }
        assert_eq!(b.admit(at(0)), Admission::Allowed);
    }

    #[test]
    fn retry_budget_delays_retries_beyond_the_rate() {
        let mut r = RetryBudget::new(60, at(0));
        for _ in 0..60 {
            assert_eq!(r.take(at(0)), Duration::ZERO);
        }
        // The 61st waits a second, the 62nd two.
        assert_eq!(r.take(at(0)), Duration::from_secs(1));
        assert_eq!(r.take(at(0)), Duration::from_secs(2));
        // Refills over time.
        assert!(r.available(at(120)) >= 59.0);
    }

    #[test]
    fn mirror_choice_prefers_the_best_and_sometimes_explores() {
        let fast = MirrorStats {
            throughput: 10e6,
            latency: 0.01,
            failures: 0,
            samples: 3,
        };
        let slow = MirrorStats {
            throughput: 1e6,
            latency: 0.2,
            failures: 0,
            samples: 3,
        };
        let mut rng = SeededRng::new(7);
        let mut picks = [0u32; 2];
        for _ in 0..1000 {
            let i = choose_mirror(&[(0, slow), (1, fast)], &mut rng).unwrap();
            picks[i] += 1;
        }
        assert!(picks[1] > 850, "{picks:?}");
        assert!(picks[0] > 50, "explores: {picks:?}");
    }

    #[test]
    fn with_nothing_measured_the_first_mirror_is_always_chosen() {
        let mut rng = SeededRng::new(5);
        let fresh = MirrorStats::default();
        for _ in 0..1000 {
            assert_eq!(
                choose_mirror(&[(0, fresh), (1, fresh), (2, fresh)], &mut rng),
                Some(0)
            );
        }
    }

    #[test]
    fn a_failing_mirror_is_never_chosen_by_exploration() {
        let good = MirrorStats {
            throughput: 1e6,
            latency: 0.1,
            failures: 0,
            samples: 2,
        };
        let failing = MirrorStats {
            failures: 1,
            ..MirrorStats::default()
        };
        let mut rng = SeededRng::new(3);
        for _ in 0..1000 {
            assert_eq!(choose_mirror(&[(0, failing), (1, good)], &mut rng), Some(1));
        }
    }

    #[test]
    fn unmeasured_mirrors_are_tried_and_failures_lower_the_score() {
        let mut a = MirrorStats::default();
        let b = MirrorStats {
            throughput: 5e6,
            latency: 0.05,
            failures: 0,
            samples: 1,
        };
        assert!(a.score() > b.score());
        a.record_failure();
        a.record_failure();
        let mut c = b;
        c.record_failure();
        assert!(c.score() < b.score());
        // A mirror that only ever failed ranks below one that delivered.
        assert!(a.score() < c.score());
    }
}
