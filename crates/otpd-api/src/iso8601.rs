//! Times as ISO 8601 in UTC with milliseconds, as Pinpoint's `CreationDate` and the console show
//! them.

use time::OffsetDateTime;

/// `2026-11-21T22:32:16.123Z` for a time in milliseconds since the Unix epoch.
pub(crate) fn iso8601(millis: i64) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
}
