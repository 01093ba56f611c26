//! Time as the core takes it: a wall-clock moment, passed in.
//!
//! Why wall-clock: what outlives a process (a session's expiry, a will's
//! delay, a message's expiry, and later what another node reads) must mean
//! the same moment after a restart or on another machine, which a
//! process-local `Instant` cannot. The caller supplies `now` (the net layer
//! reads a wall clock anchored once and advanced by the monotonic clock, so
//! it never runs backwards within a process); the core never reads a clock.

use std::ops::Add;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const fn from_unix_millis(ms: u64) -> Self {
        Time(ms)
    }

    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// The moment `t` (before the epoch reads as the epoch).
    pub fn from_system(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Time(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates at the end of time instead of overflowing.
    fn add(self, d: Duration) -> Time {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_unix_millis(1_000);
        assert_eq!((t + Duration::from_secs(2)).unix_millis(), 3_000);
        assert_eq!(
            (Time::from_unix_millis(u64::MAX) + Duration::from_secs(1)).unix_millis(),
            u64::MAX
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(Time::from_system(t.to_system()), t);
    }
}
