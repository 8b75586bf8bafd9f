//! haul's own notion of time: an [`Instant`] is nanoseconds since the engine's epoch.
//!
//! The core never reads a clock. Runtimes translate their monotonic clock into [`Instant`]s
//! (the blocking runtime counts from the moment it created the engine), and the simulator makes
//! any instant it likes. Arithmetic saturates: time never goes backwards inside the engine.

use std::fmt;
use std::time::Duration;

/// A point in time, in nanoseconds since the engine's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The engine's epoch.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// An instant `d` after the epoch (saturating).
    pub fn from_duration(d: Duration) -> Self {
        Instant(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Time since the epoch.
    pub fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(d))
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 / 1_000_000;
        write!(f, "{}.{:03}s", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_nanos(u64::MAX - 1);
        assert_eq!(t + Duration::from_secs(5), Instant::from_nanos(u64::MAX));
        assert_eq!(
            Instant::ZERO.saturating_since(Instant::from_nanos(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn display_shows_seconds_with_milliseconds() {
        assert_eq!(Instant::from_nanos(1_234_567_890).to_string(), "1.234s");
    }
}
