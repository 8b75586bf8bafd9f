//! Transfer rates for progress events and statistics: bytes counted in one-second windows.
//!
//! A rate is the bytes of the last complete one-second window over its length. Before the
//! first window completes, it is the bytes so far over the time since the first of them, once
//! that time is long enough to mean something ([`FIRST_ESTIMATE_AFTER`]); a window that has
//! run on past a second without bytes decays the rate (a stalled job shows its rate falling,
//! not the last good one), to 0 after [`SILENT`].

use std::time::Duration;

use crate::time::Instant;

/// How long a window lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// A window this long without closing means nothing is flowing: the rate is 0 (rather
/// than an average that only tends to it).
const SILENT: Duration = Duration::from_secs(5);

/// The first estimate is given this long after the first bytes: a few milliseconds of a
/// burst say nothing about the rate.
const FIRST_ESTIMATE_AFTER: Duration = Duration::from_millis(250);

/// Bytes per second over one-second windows.
#[derive(Debug, Clone, Default)]
pub(super) struct RateMeter {
    /// Start of the current window (`None` before the first bytes).
    window_start: Option<Instant>,
    /// Bytes counted in the current window.
    window_bytes: u64,
    /// The rate of the last complete window.
    last: Option<f64>,
    /// The highest rate of a complete window.
    peak: f64,
}

impl RateMeter {
    /// Count `bytes` received at `now`.
    pub(super) fn record(&mut self, now: Instant, bytes: u64) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_since(start);
        if elapsed >= WINDOW {
            let rate = self.window_bytes as f64 / elapsed.as_secs_f64();
            self.last = Some(rate);
            self.peak = self.peak.max(rate);
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    /// The current rate in bytes per second; `None` while too little time has passed to say.
    pub(super) fn rate(&self, now: Instant) -> Option<f64> {
        let start = self.window_start?;
        let elapsed = now.saturating_since(start);
        if elapsed > SILENT {
            return Some(0.0);
        }
        let running = self.window_bytes as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        match self.last {
            // The window overran without closing: nothing (or little) arrived for a while.
            Some(_) if elapsed > WINDOW => Some(running),
            Some(last) => Some(last),
            None if elapsed >= FIRST_ESTIMATE_AFTER => Some(running),
            None => None,
        }
    }

    /// Forget the windows, keeping the peak: the job paused or waited out a backoff, and the
    /// gap is no measure of the rate to come. (A gap is not inferred from the timing of
    /// reads: a slow stream's reads may come seconds apart.)
    pub(super) fn restart(&mut self) {
        self.window_start = None;
        self.window_bytes = 0;
        self.last = None;
    }

    /// The highest rate of a complete window so far (0 before the first).
    pub(super) fn peak(&self) -> f64 {
        self.peak
    }
}

/// How long `left` bytes take at `rate` bytes per second (`None` without a rate).
pub(super) fn eta(left: u64, rate: Option<f64>) -> Option<Duration> {
    let rate = rate.filter(|r| *r >= 1.0)?;
    Duration::try_from_secs_f64(left as f64 / rate).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn no_rate_before_a_quarter_second_of_bytes_then_the_running_average() {
        let mut m = RateMeter::default();
        assert_eq!(m.rate(at(0)), None);
        m.record(at(100), 1000);
        assert_eq!(m.rate(at(200)), None, "100 ms of one burst says nothing");
        m.record(at(300), 1000);
        // 2000 bytes in the 400 ms since the first.
        assert_eq!(m.rate(at(500)), Some(5000.0));
    }

    #[test]
    fn the_last_complete_window_gives_the_rate_and_the_peak() {
        let mut m = RateMeter::default();
        for ms in (0..=1000).step_by(100) {
            m.record(at(ms), 400);
        }
        // The window 0..1000 ms held ten records of 400 bytes.
        assert_eq!(m.rate(at(1000)), Some(4000.0));
        assert_eq!(m.peak(), 4000.0);
        for ms in (1100..=2000).step_by(100) {
            m.record(at(ms), 100);
        }
        // 1000..2000 ms: the 400 bytes counted at 1000 ms and nine records of 100.
        assert_eq!(m.rate(at(2000)), Some(1300.0));
        assert_eq!(m.peak(), 4000.0, "the peak stays");
    }

    #[test]
    fn a_stalled_window_decays_the_rate() {
        let mut m = RateMeter::default();
        for ms in (0..=1000).step_by(100) {
            m.record(at(ms), 400);
        }
        assert_eq!(
            m.rate(at(1500)),
            Some(4000.0),
            "within the window: the last rate"
        );
        // 400 bytes (counted at 1000 ms) over 4 s of silence.
        assert_eq!(m.rate(at(5000)), Some(100.0));
        assert_eq!(
            m.rate(at(6001)),
            Some(0.0),
            "silent for over 5 s: nothing flows"
        );
    }

    #[test]
    fn a_restarted_meter_measures_from_its_next_bytes_and_keeps_its_peak() {
        let mut m = RateMeter::default();
        for ms in (0..=1000).step_by(100) {
            m.record(at(ms), 400);
        }
        assert_eq!(m.rate(at(1000)), Some(4000.0));
        // Paused for 4 s, then bytes at the old pace again.
        m.restart();
        m.record(at(5000), 400);
        assert_eq!(m.rate(at(5100)), None, "no estimate from the gap");
        for ms in (5100..=5400).step_by(100) {
            m.record(at(ms), 400);
        }
        assert_eq!(
            m.rate(at(5400)),
            Some(2000.0 / 0.4),
            "the pace since the gap"
        );
        assert_eq!(m.peak(), 4000.0, "the peak stays");
    }

    #[test]
    fn a_slow_stream_whose_reads_come_seconds_apart_keeps_its_rate() {
        let mut m = RateMeter::default();
        // 5 000 bytes every 2.5 s: 2 000 bytes/s.
        for i in 0..6 {
            m.record(at(i * 2_500), 5_000);
        }
        assert_eq!(m.rate(at(12_500)), Some(2_000.0));
    }

    #[test]
    fn eta_is_the_bytes_left_over_the_rate() {
        assert_eq!(eta(1000, Some(500.0)), Some(Duration::from_secs(2)));
        assert_eq!(eta(1000, None), None);
        assert_eq!(eta(1000, Some(0.0)), None, "no progress: no estimate");
        assert_eq!(eta(0, Some(10.0)), Some(Duration::ZERO));
    }
}
