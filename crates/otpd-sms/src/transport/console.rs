//! The development default: each message printed on standard error, where otpd's log goes too.
//!
//! A thread of its own prints the messages, from a bounded queue. Standard error can stop taking
//! lines (a terminal paused with Ctrl-S, a pipe into a pager nobody scrolls); a write blocked on
//! the runtime's own thread would stall every request. A message that finds the queue full fails
//! for the moment instead, as a carrier that does not answer does, and the outbox tries it again
//! later. A message is reported handed over once it is queued, and otpd stopping waits (a
//! second at most) for the queue to be printed; a line that standard error refuses (it was
//! closed) is lost, and the log says so.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use flume::{Receiver, Sender, TrySendError};
use otpd_core::iso8601;
use otpd_core::ports::{DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport};

use super::JsonMessage;

/// Lines waiting to be printed, at most: a burst of sends while the terminal keeps up fits.
const QUEUED_LINES: usize = 1024;
/// How long otpd, stopping, waits for the lines still queued to be printed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How a message is printed: as a sentence for a developer reading a terminal, or, when the log
/// is JSON (`--log-format json`), as one JSON object, so that every line a collector reads from
/// standard error parses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleStyle {
    #[default]
    Text,
    Json,
}

#[derive(Debug)]
pub struct ConsoleTransport {
    style: ConsoleStyle,
    /// `None` once dropped: the printer then prints what is queued and ends.
    printer: Option<Sender<Vec<u8>>>,
    /// Disconnected when the printer has ended (its sending half goes with it).
    printer_ended: Receiver<()>,
    /// Whether the queue was full at the last message: warned of once, not for every message.
    backed_up: AtomicBool,
}

impl ConsoleTransport {
    /// Starts the thread that prints on standard error.
    pub fn new(style: ConsoleStyle) -> std::io::Result<Self> {
        Self::printing_to(style, std::io::stderr(), QUEUED_LINES)
    }

    fn printing_to(
        style: ConsoleStyle,
        output: impl Write + Send + 'static,
        queued_lines: usize,
    ) -> std::io::Result<Self> {
        let (printer, lines) = flume::bounded(queued_lines);
        let (ending, printer_ended) = flume::bounded::<()>(0);
        thread::Builder::new()
            .name("otpd-console".into())
            .spawn(move || {
                let _ending = ending;
                print(&lines, output);
            })?;
        Ok(Self {
            style,
            printer: Some(printer),
            printer_ended,
            backed_up: AtomicBool::new(false),
        })
    }
}

impl Drop for ConsoleTransport {
    /// A message reported handed over is printed before otpd exits, unless standard error
    /// stays stalled for longer than `DRAIN_TIMEOUT`.
    fn drop(&mut self) {
        drop(self.printer.take());
        // Nothing is ever sent: this returns when the printer ends, or at the timeout.
        let _ = self.printer_ended.recv_timeout(DRAIN_TIMEOUT);
    }
}

/// Prints each line with one `write_all` (`eprintln!` writes its pieces one by one, and the
/// log's own thread could write between them), until the transport is dropped.
fn print(lines: &Receiver<Vec<u8>>, mut output: impl Write) {
    for line in lines.iter() {
        if let Err(error) = output.write_all(&line).and_then(|()| output.flush()) {
            tracing::error!(%error, "cannot print an SMS on standard error; it is lost");
        }
    }
}

/// The message's line, newline included. This is the SMS itself, not a log line: a developer
/// reads the code from here.
fn line(style: ConsoleStyle, sms: &OutgoingSms) -> Vec<u8> {
    let mut line = match style {
        ConsoleStyle::Text => format!(
            "SMS {} to {} from {} ({}, {} part(s)): {}",
            sms.message_id,
            sms.to,
            sms.from,
            sms.message.encoding.as_str(),
            sms.message.parts,
            sms.message.text
        )
        .into_bytes(),
        ConsoleStyle::Json => {
            let since_epoch = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            serde_json::to_vec(&ConsoleLine {
                timestamp: iso8601::with_micros(since_epoch),
                sms: JsonMessage::from(sms),
            })
            // Serialising string and number fields cannot fail.
            .unwrap_or_default()
        }
    };
    line.push(b'\n');
    line
}

/// A JSON line names what it is, beside the log's events on the same stream, and is dated as
/// they are, so that a collector orders and keeps it with them.
#[derive(serde::Serialize)]
struct ConsoleLine<'a> {
    timestamp: String,
    sms: JsonMessage<'a>,
}

/// A message not printed, for now: the outbox tries it again later.
fn not_printed(status_message: &str) -> DeliveryReport {
    DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::TemporaryFailure,
        message_id: None,
        status_code: 503,
        status_message: status_message.into(),
    }
}

#[async_trait]
impl SmsTransport for ConsoleTransport {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        let Some(printer) = &self.printer else {
            return not_printed("the console's printer has stopped");
        };
        match printer.try_send(line(self.style, sms)) {
            Ok(()) => {
                self.backed_up.store(false, Ordering::Relaxed);
                DeliveryReport {
                    retry_after: None,
                    status: DeliveryStatus::Successful,
                    message_id: Some((&sms.message_id).into()),
                    status_code: 200,
                    status_message: "queued for printing on the console".into(),
                }
            }
            Err(TrySendError::Full(_)) => {
                if !self.backed_up.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "standard error is not taking the SMS printed on it; messages are retried later"
                    );
                }
                not_printed("standard error is not keeping up")
            }
            Err(TrySendError::Disconnected(_)) => not_printed("the console's printer has stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver as Release;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;
    use crate::transport::test_sms;

    fn sms() -> OutgoingSms {
        test_sms("Your code is \"123456\"\nfrom Acme")
    }

    #[test]
    fn a_text_line_reads_as_a_sentence() {
        let sms = sms();
        let line = line(ConsoleStyle::Text, &sms);
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            format!(
                "SMS {} to +393481234567 from Acme (GSM7, 1 part(s)): Your code is \"123456\"\nfrom Acme\n",
                sms.message_id
            )
        );
    }

    #[test]
    fn a_json_line_is_one_object_on_one_line() {
        let sms = sms();
        let line = line(ConsoleStyle::Json, &sms);
        let text = String::from_utf8(line).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        // Dated like the log's own JSON lines: `2026-12-05T12:20:06.367290Z`.
        let timestamp = value["timestamp"].as_str().expect("a timestamp");
        let shape: String = timestamp
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000000Z", "{timestamp}");
        assert!(timestamp.starts_with("20"), "{timestamp}");
        assert_eq!(value["sms"]["message_id"], sms.message_id.as_str());
        assert_eq!(value["sms"]["to"], "+393481234567");
        assert_eq!(value["sms"]["from"], "Acme");
        assert_eq!(value["sms"]["text"], "Your code is \"123456\"\nfrom Acme");
        assert_eq!(value["sms"]["encoding"], "GSM7");
        assert_eq!(value["sms"]["parts"], 1);
    }

    /// What the printer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Printed(Arc<Mutex<Vec<u8>>>);

    impl Write for Printed {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Printed {
        /// Everything written so far.
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }

        /// Waits (up to 5 s) for the printer thread to have written `expected`.
        fn wait_for(&self, expected: &str) -> String {
            let started = Instant::now();
            loop {
                let text = self.text();
                if text.contains(expected) || started.elapsed() > Duration::from_secs(5) {
                    return text;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Takes no line until `release` is dropped, as a paused terminal or an unread pipe.
    struct Stalled {
        release: Release<()>,
        printed: Printed,
    }

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.release.recv();
            self.printed.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Takes each line 20 ms after it is given.
    struct Slow(Printed);

    impl Write for Slow {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            thread::sleep(Duration::from_millis(20));
            self.0.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn send_promptly(console: &ConsoleTransport, sms: &OutgoingSms) -> DeliveryReport {
        tokio::time::timeout(Duration::from_secs(1), console.send(sms))
            .await
            .expect("the console answers without waiting for standard error")
    }

    #[tokio::test]
    async fn printing_reports_the_message_handed_over_and_prints_it() {
        let printed = Printed::default();
        let console =
            ConsoleTransport::printing_to(ConsoleStyle::Text, printed.clone(), 4).expect("printer");
        let sms = sms();
        let report = send_promptly(&console, &sms).await;
        assert_eq!(report.status, DeliveryStatus::Successful);
        assert_eq!(report.message_id, Some((&sms.message_id).into()));
        let expected = format!("SMS {} to +393481234567", sms.message_id);
        assert!(printed.wait_for(&expected).contains(&expected));
    }

    #[tokio::test]
    async fn a_stalled_console_fails_messages_for_now_instead_of_stalling_the_server() {
        let (release, stall) = std::sync::mpsc::channel();
        let printed = Printed::default();
        let stalled = Stalled {
            release: stall,
            printed: printed.clone(),
        };
        let queued_lines = 2;
        let console = ConsoleTransport::printing_to(ConsoleStyle::Text, stalled, queued_lines)
            .expect("printer");
        // The printer holds one line in its stalled write and the queue holds `queued_lines`:
        // one more than that is refused, at once.
        let mut handed_over = Vec::new();
        let refused = loop {
            let sms = sms();
            let report = send_promptly(&console, &sms).await;
            if report.status == DeliveryStatus::Successful {
                handed_over.push(sms.message_id);
                assert!(handed_over.len() <= queued_lines + 1, "nothing was refused");
            } else {
                break report;
            }
        };
        assert_eq!(refused.status, DeliveryStatus::TemporaryFailure);
        assert_eq!(refused.status_code, 503);
        assert_eq!(
            refused.status_message.as_str(),
            "standard error is not keeping up"
        );
        assert!(refused.message_id.is_none());
        assert!(handed_over.len() >= queued_lines, "{handed_over:?}");

        // Once standard error takes lines again, every message handed over is printed, and new
        // ones are taken.
        drop(release);
        let last = handed_over.last().expect("handed over").to_string();
        let text = printed.wait_for(&last);
        for id in &handed_over {
            assert!(text.contains(id.as_str()), "{id} missing from {text}");
        }
        let again = sms();
        assert_eq!(
            send_promptly(&console, &again).await.status,
            DeliveryStatus::Successful
        );
        assert!(
            printed
                .wait_for(again.message_id.as_str())
                .contains(again.message_id.as_str())
        );
    }

    #[tokio::test]
    async fn the_messages_handed_over_are_printed_before_the_console_goes() {
        let printed = Printed::default();
        let console = ConsoleTransport::printing_to(ConsoleStyle::Text, Slow(printed.clone()), 8)
            .expect("printer");
        let messages: Vec<OutgoingSms> = (0..3).map(|_| sms()).collect();
        for sms in &messages {
            assert_eq!(
                send_promptly(&console, sms).await.status,
                DeliveryStatus::Successful
            );
        }
        drop(console);
        let text = printed.text();
        for sms in &messages {
            assert!(text.contains(sms.message_id.as_str()), "{text}");
        }
    }

    #[tokio::test]
    async fn a_console_stalled_for_good_does_not_hold_up_otpd_stopping() {
        let (_never_released, stall) = std::sync::mpsc::channel();
        let stalled = Stalled {
            release: stall,
            printed: Printed::default(),
        };
        let console =
            ConsoleTransport::printing_to(ConsoleStyle::Text, stalled, 8).expect("printer");
        send_promptly(&console, &sms()).await;
        let started = Instant::now();
        drop(console);
        let waited = started.elapsed();
        assert!(waited >= DRAIN_TIMEOUT, "{waited:?}");
        assert!(waited < DRAIN_TIMEOUT * 3, "{waited:?}");
    }
}
