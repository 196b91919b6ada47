//! Structured logs. `OTPD_LOG` (or `RUST_LOG`) sets the filter; the default is `info`. Colours
//! only on a terminal (and never with `NO_COLOR`): log files and collectors get plain text.
//!
//! Lines are written by a thread of their own, through a buffer: a request formats its line and
//! queues it, and what queues up while one write is on its way goes out in the next single
//! write. A `write` to stderr for every line cost a tenth of a verify's CPU. (Making the thread
//! rest 5 ms after each write, so that more lines share one, measured worse: in three paired
//! benchmark runs a right-code verify fell from 0.55-0.63 of the batched ceiling to 0.41-0.54.)
//! Should the log reader stall, lines are dropped rather than requests held up.
//!
//! A line logged while a request is handled carries the request's id, read from the request's
//! task (`otpd_api::observe::request_id`), not from a tracing span: see [`Line`].

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal};

use otpd_core::iso8601::ToTheSecond;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Room for the lines of one burst; the writer thread flushes whenever it has caught up.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Installs the logger; logs written before the returned guard is dropped are flushed then.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_env("OTPD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .thread_name("otpd-log")
        .finish(BufWriter::with_capacity(
            LOG_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = subscriber(format, filter, writer, colours).try_init();
    guard
}

/// The logger: events that pass `filter`, formatted by [`Line`], to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    colours: bool,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colours)
        .event_format(Line { format })
        .finish()
}

/// One event as one line: its time, level and target, the id of the request it was logged
/// for (if any), then its fields; as text, or as one JSON object with the fields at its top.
struct Line {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // A record from the `log` crate (rusqlite_migration's, say) arrives as an event of the
        // target `log`, its own target, module, file and line in `log.*` fields: shown as
        // tracing-subscriber shows it, with its own target and without those fields.
        let normalized = event.normalized_metadata();
        let origin = match &normalized {
            Some(metadata) => Origin {
                metadata,
                from_log: true,
            },
            None => Origin {
                metadata: event.metadata(),
                from_log: false,
            },
        };
        match self.format {
            LogFormat::Text => text_line(writer, event, origin),
            LogFormat::Json => json_line(writer, event, origin),
        }
    }
}

/// Where an event comes from: its level and target, and whether it is a `log` record, whose
/// `log.*` fields only repeat where it comes from.
#[derive(Clone, Copy)]
struct Origin<'a> {
    metadata: &'a Metadata<'a>,
    from_log: bool,
}

impl Origin<'_> {
    fn shows(&self, field: &Field) -> bool {
        !(self.from_log && field.name().starts_with("log."))
    }
}

fn text_line(mut writer: Writer<'_>, event: &Event<'_>, origin: Origin<'_>) -> std::fmt::Result {
    let metadata = origin.metadata;
    write_timestamp(&mut writer)?;
    let level = metadata.level();
    if writer.has_ansi_escapes() {
        write!(writer, " \x1b[{}m{level:>5}\x1b[0m ", level_colour(*level))?;
    } else {
        write!(writer, " {level:>5} ")?;
    }
    writer.write_str(metadata.target())?;
    writer.write_str(":")?;
    if let Some(id) = otpd_api::observe::request_id() {
        write!(writer, " request_id={id}")?;
    }
    let mut fields = TextFields {
        writer: &mut writer,
        origin,
        written: Ok(()),
    };
    event.record(&mut fields);
    fields.written?;
    writeln!(writer)
}

/// The time of a line, RFC 3339 in UTC to the microsecond, as tracing-subscriber writes it.
/// The date and the time to the second are formatted once a second on each thread: formatting
/// all seven numbers on every line, as tracing-subscriber's clock does, was 30% of the line's
/// instructions.
fn write_timestamp(writer: &mut Writer<'_>) -> std::fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != seconds {
            text.clear();
            write!(text, "{}", ToTheSecond::since_epoch(seconds))?;
            *second = seconds;
        }
        writer.write_str(text)
    })?;
    write!(writer, ".{:06}Z", since_epoch.subsec_micros())
}

/// An event's fields as `name=value`, separated by spaces, the message bare: what
/// tracing-subscriber's default field format writes without a terminal (strings quoted and
/// escaped as Rust's `Debug` does, so no value can end a line or forge a field), written
/// directly where the value needs no escaping.
struct TextFields<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    origin: Origin<'a>,
    written: std::fmt::Result,
}

impl TextFields<'_, '_> {
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result) {
        if self.written.is_ok() && self.origin.shows(field) {
            self.written = self.writer.write_char(' ').and_then(|()| {
                if field.name() != "message" {
                    self.writer.write_str(field.name())?;
                    self.writer.write_char('=')?;
                }
                value(self.writer)
            });
        }
    }
}

impl Visit for TextFields<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |writer| write!(writer, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |writer| write!(writer, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |writer| {
            writer.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let plain = value
            .bytes()
            .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\');
        self.write(field, |writer| {
            if plain {
                writer.write_char('"')?;
                writer.write_str(value)?;
                writer.write_char('"')
            } else {
                write!(writer, "{value:?}")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.write(field, |writer| write!(writer, "{value:?}"));
    }
}

/// The ANSI colour of a level on a terminal, as tracing-subscriber's own format has it.
fn level_colour(level: Level) -> u8 {
    match level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

fn json_line(mut writer: Writer<'_>, event: &Event<'_>, origin: Origin<'_>) -> std::fmt::Result {
    let metadata = origin.metadata;
    let mut timestamp = String::with_capacity(32);
    write_timestamp(&mut Writer::new(&mut timestamp))?;
    let mut members = JsonFields {
        members: vec![
            ("timestamp", timestamp.into()),
            ("level", metadata.level().as_str().into()),
            ("target", metadata.target().into()),
        ],
        origin,
    };
    if let Some(id) = otpd_api::observe::request_id() {
        members.members.push(("request_id", id.to_string().into()));
    }
    event.record(&mut members);
    writer.write_char('{')?;
    for (index, (name, value)) in members.members.iter().enumerate() {
        if index > 0 {
            writer.write_char(',')?;
        }
        // `Value`'s `Display` writes it as compact JSON, strings quoted and escaped.
        write!(writer, "{}:{value}", serde_json::Value::from(*name))?;
    }
    writer.write_str("}\n")
}

/// The members of a line's JSON object, in order: the line's own, then the event's fields,
/// numbers and booleans as themselves and everything else as text. A field named like a
/// member already there is left out, so no name appears twice and no field can stand in for
/// the line's time, level, target or request id.
struct JsonFields<'a> {
    members: Vec<(&'static str, serde_json::Value)>,
    origin: Origin<'a>,
}

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: impl Into<serde_json::Value>) {
        if self.origin.shows(field) && self.members.iter().all(|(name, _)| *name != field.name()) {
            self.members.push((field.name(), value.into()));
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;
    use tower::ServiceExt;

    use super::*;

    /// What the logger wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// A logger writing `format` at level info, and what it wrote.
    fn capturing(format: LogFormat) -> (Captured, impl Subscriber + Send + Sync + 'static) {
        let captured = Captured::default();
        let writer = captured.clone();
        let logger = subscriber(
            format,
            EnvFilter::new("info"),
            move || writer.clone(),
            false,
        );
        (captured, logger)
    }

    /// Serves one request through the request logger, whose handler logs a warning, and an
    /// event outside any request; returns the request's id and what was logged.
    async fn log_a_request(format: LogFormat) -> (String, Vec<String>) {
        let (captured, logger) = capturing(format);
        let _installed = tracing::subscriber::set_default(logger);
        tracing::info!(port = 8080_u64, "outside any request");
        let app = Router::new()
            .route(
                "/",
                get(|| async {
                    tracing::warn!(
                        attempts = 3_u64,
                        delivered = false,
                        carrier = "Acme \"SMS\"\nforged=1",
                        route = "eu-1",
                        level = "forged",
                        "the carrier is slow"
                    );
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn(otpd_api::observe::observe));
        let response = app
            .oneshot(Request::get("/").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let id = response.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        (id, captured.lines())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn text_lines_name_the_request_they_were_logged_for() {
        let (id, lines) = log_a_request(LogFormat::Text).await;
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains(" INFO otpd::telemetry::tests: outside any request port=8080"),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains("request_id"), "{}", lines[0]);
        let warning = format!(
            "WARN otpd::telemetry::tests: request_id={id} the carrier is slow attempts=3 \
             delivered=false carrier=\"Acme \\\"SMS\\\"\\nforged=1\" route=\"eu-1\" \
             level=\"forged\""
        );
        assert!(lines[1].contains(&warning), "{}", lines[1]);
        let handled = format!("INFO otpd_api::observe: request handled request_id={id} status=200");
        assert!(lines[2].contains(&handled), "{}", lines[2]);
        assert!(lines.iter().all(|line| !line.contains('\x1b')));
        for line in &lines {
            let (timestamp, _) = line.split_once(' ').expect("a timestamp first");
            let shape: String = timestamp
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect();
            assert_eq!(shape, "0000-00-00T00:00:00.000000Z");
            assert!(timestamp.starts_with("20"), "{timestamp}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn json_lines_are_objects_with_the_request_id_and_the_fields_at_the_top() {
        let (id, lines) = log_a_request(LogFormat::Json).await;
        let objects: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
            .collect();
        assert_eq!(objects.len(), 3);
        for line in &lines {
            assert!(line.starts_with(r#"{"timestamp":"#), "{line}");
        }
        assert!(lines[1].contains(r#""target":"otpd::telemetry::tests","request_id":"#));
        assert_eq!(objects[0]["message"], "outside any request");
        assert_eq!(objects[0]["port"], 8080);
        assert!(objects[0].get("request_id").is_none());
        assert_eq!(objects[1]["level"], "WARN");
        assert_eq!(objects[1]["target"], "otpd::telemetry::tests");
        assert_eq!(objects[1]["request_id"], id.as_str());
        assert_eq!(objects[1]["attempts"], 3);
        assert_eq!(objects[1]["delivered"], false);
        assert_eq!(objects[1]["carrier"], "Acme \"SMS\"\nforged=1");
        assert_eq!(objects[1]["message"], "the carrier is slow");
        assert_eq!(objects[2]["request_id"], id.as_str());
        assert_eq!(objects[2]["status"], 200);
        assert_eq!(objects[2]["method"], "GET");
        let timestamp = objects[2]["timestamp"].as_str().expect("text");
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
    }

    /// What the logger writes for a record of the `log` crate, as rusqlite_migration logs.
    fn log_a_log_record(format: LogFormat) -> Vec<String> {
        let (captured, logger) = capturing(format);
        tracing::subscriber::with_default(logger, || {
            tracing_log::format_trace(
                &log::Record::builder()
                    .args(format_args!("Database migrated to version {}", 9))
                    .level(log::Level::Info)
                    .target("rusqlite_migration")
                    .module_path_static(Some("rusqlite_migration"))
                    .file_static(Some("/registry/rusqlite_migration-2.6.0/src/lib.rs"))
                    .line(Some(741))
                    .build(),
            )
            .expect("dispatched");
        });
        captured.lines()
    }

    #[test]
    fn a_log_record_keeps_its_own_target_and_no_log_fields() {
        let [text] = log_a_log_record(LogFormat::Text)
            .try_into()
            .expect("one line");
        assert!(
            text.ends_with(" INFO rusqlite_migration: Database migrated to version 9"),
            "{text}"
        );
        let [json] = log_a_log_record(LogFormat::Json)
            .try_into()
            .expect("one line");
        let object: serde_json::Value = serde_json::from_str(&json).expect("json");
        let members: Vec<&str> = object
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json's map lists its members by name.
        assert_eq!(
            members,
            ["level", "message", "target", "timestamp"],
            "{json}"
        );
        assert_eq!(object["level"], "INFO");
        assert_eq!(object["target"], "rusqlite_migration");
        assert_eq!(object["message"], "Database migrated to version 9");
    }

    #[test]
    fn the_timestamp_is_the_current_time_in_utc() {
        // Read the clock on both sides of the line's time; retry should a second turn between.
        for _ in 0..3 {
            let before = time::OffsetDateTime::now_utc();
            let mut timestamp = String::new();
            write_timestamp(&mut Writer::new(&mut timestamp)).expect("written");
            let after = time::OffsetDateTime::now_utc();
            if before.unix_timestamp() != after.unix_timestamp() {
                continue;
            }
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                before.year(),
                u8::from(before.month()),
                before.day(),
                before.hour(),
                before.minute(),
                before.second()
            );
            assert!(
                timestamp.starts_with(&expected),
                "{timestamp} against {expected}"
            );
            let micros: u32 = timestamp[20..26].parse().expect("microseconds");
            assert!((before.microsecond()..=after.microsecond()).contains(&micros));
            return;
        }
        panic!("the clock turned a second three times in a row");
    }
}
