//! Scheduling primitives: priorities, token buckets, byte-range sets and segment planning.
//!
//! These are the pure building blocks the engine composes into its scheduler; each is small,
//! deterministic and tested on its own. The engine decides *when* to use them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::time::Instant;

/// How urgent a job is. Higher classes start first and get a larger share of bandwidth;
/// within a class jobs start in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Only when nothing else wants the bandwidth.
    Background,
    /// Below normal.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Above normal.
    High,
    /// Before everything else.
    Critical,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];

    /// Fraction of the global bucket's capacity that must be available before a job of this
    /// class may receive more. Critical may drain the bucket; Background only takes what the
    /// others leave standing. This gives higher classes the larger share; the engine applies
    /// the reserve only while a more urgent class has a job running, and waives it for a job
    /// that has not received anything for a second, so a busy higher class holds the lower
    /// ones back without starving them.
    pub fn reserve_fraction(self) -> f64 {
        match self {
            Priority::Critical => 0.0,
            Priority::High => 0.1,
            Priority::Normal => 0.2,
            Priority::Low => 0.4,
            Priority::Background => 0.6,
        }
    }

    /// Parse `critical`, `high`, `normal`, `low`, `background`.
    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s.to_ascii_lowercase().as_str() {
            "critical" => Priority::Critical,
            "high" => Priority::High,
            "normal" => Priority::Normal,
            "low" => Priority::Low,
            "background" => Priority::Background,
            _ => return None,
        })
    }
}

/// A token bucket measured in bytes, refilled continuously from clock readings.
///
/// Tokens may go negative: a read that returned more bytes than were available leaves a
/// debt that must be repaid before the next read, so the long-run rate is exact and the burst
/// is bounded by the capacity plus one read.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket of `rate` bytes per second holding at most `burst` seconds of tokens.
    /// It starts empty: a limit set when transfers start holds from their first second (a
    /// full bucket let a run of a few seconds go a whole `burst` faster than the limit); the
    /// burst is for traffic that resumes after a pause.
    pub fn new(rate: u64, burst: Duration, now: Instant) -> TokenBucket {
        let capacity = (rate as f64 * burst.as_secs_f64()).max(1.0);
        TokenBucket {
            rate: rate.max(1),
            capacity,
            tokens: 0.0,
            last: now,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Change the rate (keeping the tokens, clamped to the new capacity).
    pub fn set_rate(&mut self, rate: u64, burst: Duration, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1);
        self.capacity = (self.rate as f64 * burst.as_secs_f64()).max(1.0);
        self.tokens = self.tokens.min(self.capacity);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.capacity);
    }

    /// Tokens available now (negative while in debt).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Take `bytes` tokens (possibly going into debt).
    pub fn consume(&mut self, now: Instant, bytes: u64) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// When at least `reserve` tokens will be available (now if they already are).
    pub fn ready_at(&mut self, now: Instant, reserve: f64) -> Instant {
        self.refill(now);
        let reserve = reserve.min(self.capacity);
        if self.tokens >= reserve {
            now
        } else {
            let secs = (reserve - self.tokens) / self.rate as f64;
            // Round up to the next microsecond so the wake-up is never early.
            now + Duration::from_micros((secs * 1e6).ceil() as u64 + 1)
        }
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }
}

/// A set of byte ranges `[start, end)`, kept merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Add `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        // Merge with a range that starts before and reaches `start`.
        if let Some((&ps, &pe)) = self.ranges.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        // Absorb ranges starting inside [s, e].
        let overlapped: Vec<(u64, u64)> = self.ranges.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in overlapped {
            self.ranges.remove(&a);
            e = e.max(b);
        }
        self.ranges.insert(s, e);
    }

    /// The end of the contiguous run that contains `at`, or `at` when `at` is not covered.
    pub fn contiguous_end(&self, at: u64) -> u64 {
        match self.ranges.range(..=at).next_back() {
            Some((_, &e)) if e > at => e,
            _ => at,
        }
    }

    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// True when nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}

/// Split `[start, end)` into at most `n` segments no smaller than `min` (the last one takes
/// the remainder); one segment when the range is shorter than two minimums.
pub fn plan_segments(start: u64, end: u64, n: u32, min: u64) -> Vec<(u64, u64)> {
    let len = end.saturating_sub(start);
    if len == 0 {
        return Vec::new();
    }
    let min = min.max(1);
    // Rounded down: 1.5 minimums make one segment, not two of three quarters.
    let n = (n.max(1) as u64).min(len / min).max(1);
    let step = len / n;
    (0..n)
        .map(|i| {
            let s = start + i * step;
            let e = if i + 1 == n { end } else { s + step };
            (s, e)
        })
        .collect()
}

/// Work stealing: where to split a segment whose unreceived part is `[pos, end)` so that a
/// free connection can take the rest, or None when either part would be smaller than `min`.
///
/// The split is by time, not bytes: the victim goes on at `rate` (bytes per second, when
/// measured) while the thief's new request waits `latency` for its first byte, so the victim
/// keeps the bytes it receives meanwhile plus half of what is left; both then finish
/// together. Without a rate, or with no latency, it is the midpoint.
pub fn steal_point(
    pos: u64,
    end: u64,
    rate: Option<f64>,
    latency: Duration,
    min: u64,
) -> Option<u64> {
    let remaining = end.saturating_sub(pos);
    let head_start = rate.map_or(0, |r| {
        (r * latency.as_secs_f64()).min(remaining as f64) as u64
    });
    let keep = head_start + (remaining - head_start) / 2;
    let min = min.max(1);
    (keep >= min && remaining - keep >= min).then_some(pos + keep)
}

/// Seconds in a day.
const DAY: u32 = 24 * 60 * 60;

/// A global rate limit that changes with the time of day: each entry applies from its start
/// (seconds after midnight) until the next entry's start, wrapping around midnight. The
/// engine knows no wall clock; a driver looks the rate up with [`RateSchedule::rate_at`] and
/// applies it with [`crate::Engine::set_rate_limit`] when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSchedule {
    /// (start second of the day, bytes per second or None for unlimited), sorted by start.
    entries: Vec<(u32, Option<u64>)>,
}

/// A schedule that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No entries.
    #[error("a rate schedule needs at least one entry")]
    Empty,
    /// A start time outside the day.
    #[error("{0} seconds is not a time of day (0..86400)")]
    OutOfDay(u32),
    /// Two entries start at the same time.
    #[error("two entries start at {:02}:{:02}", .0 / 3600, .0 / 60 % 60)]
    Duplicate(u32),
    /// A rate of zero (use None for unlimited).
    #[error("a rate of 0 bytes/s would stop every download; use unlimited instead")]
    ZeroRate,
}

impl RateSchedule {
    /// A schedule from (start second of the day, rate) entries in any order.
    pub fn new(mut entries: Vec<(u32, Option<u64>)>) -> Result<RateSchedule, ScheduleError> {
        if entries.is_empty() {
            return Err(ScheduleError::Empty);
        }
        entries.sort_by_key(|e| e.0);
        for w in entries.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(ScheduleError::Duplicate(w[0].0));
            }
        }
        for (start, rate) in &entries {
            if *start >= DAY {
                return Err(ScheduleError::OutOfDay(*start));
            }
            if *rate == Some(0) {
                return Err(ScheduleError::ZeroRate);
            }
        }
        Ok(RateSchedule { entries })
    }

    /// The entry in force at `second` of the day (the last one starting at or before it,
    /// else the last of the day before).
    fn index_at(&self, second: u32) -> usize {
        let second = second % DAY;
        match self.entries.iter().rposition(|(start, _)| *start <= second) {
            Some(i) => i,
            None => self.entries.len() - 1,
        }
    }

    /// The rate in force at `second` of the day (None: unlimited).
    pub fn rate_at(&self, second: u32) -> Option<u64> {
        self.entries[self.index_at(second)].1
    }

    /// Seconds from `second` of the day until the next entry starts (a full day when the
    /// schedule has one entry).
    pub fn until_next_change(&self, second: u32) -> u32 {
        let second = second % DAY;
        let next = self
            .entries
            .iter()
            .map(|(start, _)| *start)
            .find(|start| *start > second)
            .unwrap_or(self.entries[0].0 + DAY);
        next - second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_schedule_applies_each_entry_until_the_next_and_wraps_at_midnight() {
        let s = RateSchedule::new(vec![(18 * 3600, None), (8 * 3600, Some(2_000_000))]).unwrap();
        assert_eq!(s.rate_at(8 * 3600), Some(2_000_000));
        assert_eq!(s.rate_at(12 * 3600), Some(2_000_000));
        assert_eq!(s.rate_at(18 * 3600), None);
        assert_eq!(
            s.rate_at(3 * 3600),
            None,
            "before the first entry: the last one's"
        );
        assert_eq!(s.until_next_change(12 * 3600), 6 * 3600);
        assert_eq!(s.until_next_change(20 * 3600), 12 * 3600, "wraps to 08:00");
        let one = RateSchedule::new(vec![(0, Some(5))]).unwrap();
        assert_eq!(one.until_next_change(100), DAY - 100);
    }

    #[test]
    fn rate_schedules_that_cannot_work_are_rejected() {
        assert_eq!(RateSchedule::new(vec![]), Err(ScheduleError::Empty));
        assert_eq!(
            RateSchedule::new(vec![(DAY, None)]),
            Err(ScheduleError::OutOfDay(DAY))
        );
        assert_eq!(
            RateSchedule::new(vec![(60, None), (60, Some(1))]),
            Err(ScheduleError::Duplicate(60))
        );
        assert_eq!(
            RateSchedule::new(vec![(0, Some(0))]),
            Err(ScheduleError::ZeroRate)
        );
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn bucket_rate_is_exact_over_time_from_the_start_and_burst_is_bounded() {
        let rate = 1_000_000;
        let mut b = TokenBucket::new(rate, Duration::from_secs(1), at(0));
        // Read 64 KiB whenever allowed for 10 s.
        let mut now = at(0);
        let mut total = 0u64;
        let end = at(10_000);
        while now < end {
            now = b.ready_at(now, 0.0);
            if now >= end {
                break;
            }
            b.consume(now, 65_536);
            total += 65_536;
        }
        // 10 s at 1 MB/s, within one read: the bucket starts empty.
        let expected = 10_000_000u64;
        assert!(total.abs_diff(expected) <= 65_536 * 2, "total {total}");
        // After an idle spell, at most one second's worth at once (plus one read).
        let later = at(60_000);
        let mut burst = 0u64;
        while b.ready_at(later, 0.0) == later {
            b.consume(later, 65_536);
            burst += 65_536;
        }
        assert!(burst <= rate + 65_536, "burst {burst}");
        assert!(burst >= rate, "burst {burst}");
    }

    #[test]
    fn reserve_delays_lower_classes() {
        let mut b = TokenBucket::new(1000, Duration::from_secs(1), at(0));
        let critical = b.ready_at(at(0), 0.0);
        let background = b.ready_at(
            at(0),
            Priority::Background.reserve_fraction() * b.capacity(),
        );
        assert_eq!(critical, at(0));
        assert!(background > at(590) && background < at(610), "{background}");
    }

    #[test]
    fn range_set_merges_and_finds_contiguous_runs() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.contiguous_end(10), 20);
        assert_eq!(r.contiguous_end(25), 25);
        r.insert(20, 30);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        r.insert(0, 5);
        r.insert(3, 12);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 40)]);
        assert_eq!(r.len(), 40);
        r.insert(50, 60);
        r.insert(45, 70);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 40), (45, 70)]);
    }

    #[test]
    fn segments_cover_the_range_exactly_and_respect_the_minimum() {
        let s = plan_segments(0, 100, 4, 10);
        assert_eq!(s, vec![(0, 25), (25, 50), (50, 75), (75, 100)]);
        let s = plan_segments(0, 100, 16, 30);
        assert_eq!(s, vec![(0, 33), (33, 66), (66, 100)]);
        assert_eq!(plan_segments(5, 5, 4, 1), vec![]);
        assert_eq!(
            plan_segments(0, 20, 4, 30),
            vec![(0, 20)],
            "shorter than one minimum"
        );
        for (len, n, min) in [
            (150u64, 4u32, 100u64),
            (1_572_864, 4, 1 << 20),
            (999, 7, 100),
        ] {
            let plan = plan_segments(0, len, n, min);
            assert_eq!(plan.first().unwrap().0, 0);
            assert_eq!(plan.last().unwrap().1, len);
            assert!(plan.windows(2).all(|w| w[0].1 == w[1].0));
            assert!(plan.len() <= n as usize);
            assert!(
                plan.len() == 1 || plan.iter().all(|(s, e)| e - s >= min),
                "plan_segments(0, {len}, {n}, {min}) = {plan:?}: below the minimum"
            );
        }
    }

    #[test]
    fn stealing_takes_half_down_to_the_minimum() {
        let no_wait = Duration::ZERO;
        assert_eq!(steal_point(0, 100, None, no_wait, 10), Some(50));
        assert_eq!(steal_point(90, 100, None, no_wait, 10), None);
        assert_eq!(steal_point(80, 100, None, no_wait, 10), Some(90));
        assert_eq!(steal_point(0, 100, Some(1000.0), no_wait, 10), Some(50));
    }

    #[test]
    fn a_thief_that_waits_for_its_first_byte_takes_less() {
        // At 1,000 bytes/s the victim gets 20 bytes during the thief's 20 ms wait, then both
        // share the remaining 80: the victim keeps 60, the thief takes 40.
        let wait = Duration::from_millis(20);
        assert_eq!(steal_point(0, 100, Some(1000.0), wait, 10), Some(60));
        // A wait longer than the whole rest: nothing worth taking.
        assert_eq!(
            steal_point(0, 100, Some(1000.0), Duration::from_secs(1), 10),
            None
        );
        // The thief's part must still reach the minimum.
        assert_eq!(steal_point(0, 100, Some(1000.0), wait, 41), None);
    }

    #[test]
    fn a_steal_splits_inside_the_segment_into_parts_of_at_least_the_minimum() {
        fn prop(pos: u32, len: u32, rate: Option<u16>, wait_ms: u8, min: u16) -> bool {
            let (pos, len) = (u64::from(pos), u64::from(len));
            let rate = rate.map(f64::from);
            let wait = Duration::from_millis(wait_ms.into());
            let min = u64::from(min).max(1);
            match steal_point(pos, pos + len, rate, wait, min) {
                // Both parts reach the minimum; the victim keeps at least half.
                Some(at) => at - pos >= min && pos + len - at >= min && at - pos >= len / 2,
                // Without a wait, a segment of twice the minimum is always split.
                None => len < 2 * min || (rate.is_some() && wait_ms > 0),
            }
        }
        quickcheck::QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(u32, u32, Option<u16>, u8, u16) -> bool);
    }

    #[test]
    fn priorities_order_and_parse() {
        assert!(Priority::Critical > Priority::High);
        assert!(Priority::Low > Priority::Background);
        assert_eq!(Priority::parse("HIGH"), Some(Priority::High));
        assert_eq!(Priority::parse("urgent"), None);
    }
}
