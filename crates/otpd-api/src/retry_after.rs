//! The `Retry-After` header of a refusal that lifts by itself: a send or a check past a rate
//! limit, a console login past its wrong passwords.

use std::time::Duration;

use http::HeaderValue;

/// Whole seconds, rounded up: a client that waits as told finds room.
pub(crate) fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The header's value: delay-seconds (RFC 9110, section 10.2.3).
pub(crate) fn header(wait: Duration) -> HeaderValue {
    HeaderValue::from(whole_seconds(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_rounded_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
        assert_eq!(whole_seconds(Duration::from_millis(60_001)), 61);
        assert_eq!(header(Duration::from_millis(2_500)), "3");
    }
}
