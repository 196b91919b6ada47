//! How long a code lives and how many checks it takes. Each dialect narrows these ranges to its
//! own documented ones; the core holds what either can ask for.

use std::time::Duration;

/// A code's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(Duration);

impl Ttl {
    pub const MIN: Duration = Duration::from_secs(10);
    /// The amm API sets no upper bound; a week keeps a forgotten code from living forever.
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn new(duration: Duration) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&duration)
            .then_some(Self(duration))
    }

    pub fn duration(self) -> Duration {
        self.0
    }
}

/// How many checks a code takes before it is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAttempts(u8);

impl MaxAttempts {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 20;

    pub fn new(attempts: u8) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&attempts)
            .then_some(Self(attempts))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_range() {
        assert!(Ttl::new(Duration::from_secs(9)).is_none());
        assert!(Ttl::new(Duration::from_secs(10)).is_some());
        assert!(Ttl::new(Ttl::MAX).is_some());
        assert!(Ttl::new(Ttl::MAX + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn attempts_range() {
        assert!(MaxAttempts::new(0).is_none());
        assert_eq!(MaxAttempts::new(1).map(MaxAttempts::get), Some(1));
        assert_eq!(MaxAttempts::new(20).map(MaxAttempts::get), Some(20));
        assert!(MaxAttempts::new(21).is_none());
    }
}
