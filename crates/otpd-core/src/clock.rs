//! Time, as milliseconds since the Unix epoch, behind a port so tests can move it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time in milliseconds since the Unix epoch (the unit the amm dialect speaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(saturating_millis(duration)))
    }

    pub fn minus(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(saturating_millis(duration)))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Seconds since the epoch, for formats such as Pinpoint's `CreationDate`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

/// Where "now" comes from. The store judges expiry with its clock, so that every node agrees.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(saturating_millis(since_epoch))
    }
}

/// A clock that only moves when told to: expiry tests use it instead of sleeping.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            millis: AtomicI64::new(start.0),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(saturating_millis(by), Ordering::SeqCst);
    }

    /// Steps the clock back, as NTP may step a system clock.
    pub fn rewind(&self, by: Duration) {
        self.millis
            .fetch_sub(saturating_millis(by), Ordering::SeqCst);
    }
}

/// A duration in whole milliseconds, the longest beyond `i64` held at its largest.
fn saturating_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_since_an_earlier_moment_is_never_negative() {
        let earlier = Timestamp(1_000);
        assert_eq!(
            Timestamp(3_500).since(earlier),
            Duration::from_millis(2_500)
        );
        assert_eq!(earlier.since(Timestamp(3_500)), Duration::ZERO);
    }
}
