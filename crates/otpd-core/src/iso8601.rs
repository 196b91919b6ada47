//! Times as ISO 8601 in UTC: with milliseconds as Pinpoint's `CreationDate` and the web console
//! show them, with microseconds as the log lines and the console SMS sink's JSON lines do.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

/// `2026-11-21T22:32:16.123Z` for a time in milliseconds since the Unix epoch.
pub fn iso8601(millis: i64) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{}.{:03}Z", ToTheSecond(time), time.millisecond())
}

/// Displays as `2026-11-21T22:32:16`: the date and the time to the second, nothing after.
pub struct ToTheSecond(pub OffsetDateTime);

impl ToTheSecond {
    /// The second `seconds` after the Unix epoch (the epoch itself past the calendar's end).
    pub fn since_epoch(seconds: u64) -> Self {
        let time = i64::try_from(seconds)
            .ok()
            .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self(time)
    }
}

impl fmt::Display for ToTheSecond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = &self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            time.year(),
            u8::from(time.month()),
            time.day(),
            time.hour(),
            time.minute(),
            time.second()
        )
    }
}

/// `2026-11-21T22:32:16.123456Z` for a time given as the time since the Unix epoch: the log
/// lines' form.
pub fn with_micros(since_epoch: Duration) -> String {
    format!(
        "{}.{:06}Z",
        ToTheSecond::since_epoch(since_epoch.as_secs()),
        since_epoch.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_microseconds_after_the_second() {
        assert_eq!(iso8601(1_795_300_336_123), "2026-11-21T22:32:16.123Z");
        let since_epoch = Duration::from_micros(1_795_300_336_123_456);
        assert_eq!(with_micros(since_epoch), "2026-11-21T22:32:16.123456Z");
    }
}
