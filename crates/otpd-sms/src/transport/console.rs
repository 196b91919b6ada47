//! The development default: each message printed on standard error, where otpd's log goes too.

use std::io::Write;
use std::time::SystemTime;

use async_trait::async_trait;
use otpd_core::iso8601;
use otpd_core::ports::{DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport};

use super::JsonMessage;

/// How a message is printed: as a sentence for a developer reading a terminal, or, when the log
/// is JSON (`--log-format json`), as one JSON object, so that every line a collector reads from
/// standard error parses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleStyle {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ConsoleTransport {
    style: ConsoleStyle,
}

impl ConsoleTransport {
    pub fn new(style: ConsoleStyle) -> Self {
        Self { style }
    }

    /// The message's line, newline included. This is the SMS itself, not a log line: a
    /// developer reads the code from here.
    fn line(&self, sms: &OutgoingSms) -> Vec<u8> {
        let mut line = match self.style {
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
}

/// A JSON line names what it is, beside the log's events on the same stream, and is dated as
/// they are, so that a collector orders and keeps it with them.
#[derive(serde::Serialize)]
struct ConsoleLine<'a> {
    timestamp: String,
    sms: JsonMessage<'a>,
}

#[async_trait]
impl SmsTransport for ConsoleTransport {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        // One `write` for the whole line: `eprintln!` writes its pieces one by one, and the log's
        // own thread could write between them.
        match std::io::stderr().lock().write_all(&self.line(sms)) {
            Ok(()) => DeliveryReport {
                status: DeliveryStatus::Successful,
                message_id: Some(sms.message_id.to_string()),
                status_code: 200,
                status_message: "printed to the console".into(),
            },
            Err(error) => {
                tracing::error!(%error, "cannot print the SMS on standard error");
                DeliveryReport {
                    status: DeliveryStatus::TemporaryFailure,
                    message_id: None,
                    status_code: 500,
                    status_message: "standard error cannot be written".into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_sms;

    fn sms() -> OutgoingSms {
        test_sms("Your code is \"123456\"\nfrom Acme")
    }

    #[test]
    fn a_text_line_reads_as_a_sentence() {
        let sms = sms();
        let line = ConsoleTransport::new(ConsoleStyle::Text).line(&sms);
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
        let line = ConsoleTransport::new(ConsoleStyle::Json).line(&sms);
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

    #[tokio::test]
    async fn printing_reports_the_message_handed_over() {
        let sms = sms();
        let report = ConsoleTransport::default().send(&sms).await;
        assert_eq!(report.status, DeliveryStatus::Successful);
        assert_eq!(report.message_id.as_deref(), Some(sms.message_id.as_str()));
    }
}
