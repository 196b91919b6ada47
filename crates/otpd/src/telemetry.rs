//! Structured logs. `OTPD_LOG` (or `RUST_LOG`) sets the filter; the default is `info`. Colours
//! only on a terminal (and never with `NO_COLOR`): log files and collectors get plain text.
//!
//! Lines are written by a thread of their own, through a buffer: a request formats its line and
//! queues it, and what queues up while one write is on its way goes out in the next single
//! write. A `write` to stderr for every line cost a tenth of a verify's CPU. (Making the thread
//! rest 5 ms after each write, so that more lines share one, measured worse: in three paired
//! benchmark runs a right-code verify fell from 0.55-0.63 of the batched ceiling to 0.41-0.54.)
//! Should the log reader stall, lines are dropped rather than requests held up.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(plain_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// Text fields as `name=value` (strings quoted), the message bare: what tracing-subscriber's
/// default field format writes without a terminal, minus its styling calls, which cost more than
/// the writing itself on a request line of a dozen fields.
fn plain_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    debug_fn(|writer: &mut Writer<'_>, field, value| {
        if field.name() == "message" {
            write!(writer, "{value:?}")
        } else {
            write!(writer, "{field}={value:?}")
        }
    })
    .delimited(" ")
}
