//! Times as ISO 8601 in UTC: with milliseconds as Pinpoint's `CreationDate` and the console show
//! them, and to the second for the log lines, which add their own microseconds.

use std::fmt;

use time::OffsetDateTime;

/// `2026-11-21T22:32:16.123Z` for a time in milliseconds since the Unix epoch.
pub(crate) fn iso8601(millis: i64) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{}.{:03}Z", ToTheSecond(time), time.millisecond())
}

/// Displays as `2026-11-21T22:32:16`: the date and the time to the second, nothing after.
pub struct ToTheSecond(pub OffsetDateTime);

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
