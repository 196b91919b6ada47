//! A development sink that appends one JSON line per message to a file, for tests and demos.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use otpd_core::ports::{DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport};

use super::JsonMessage;

#[derive(Debug)]
pub struct FileTransport {
    path: PathBuf,
    /// The open file, opened on first use and again after a failure.
    file: Mutex<Option<File>>,
}

impl FileTransport {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends one line with a single `write` to a file opened with `O_APPEND`, so lines never
    /// interleave. It runs on the async worker on purpose: appending a line to the page cache
    /// takes microseconds, while `tokio::fs` would hand every line to a blocking thread and
    /// back (two context switches, and sends queueing behind one another's hops).
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut slot = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file = match slot.as_mut() {
            Some(file) => file,
            None => slot.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        let written = file.write_all(line);
        if written.is_err() {
            *slot = None;
        }
        written
    }
}

#[async_trait]
impl SmsTransport for FileTransport {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        let line = JsonMessage::from(sms);
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        match self.append(&bytes) {
            Ok(()) => DeliveryReport {
                retry_after: None,
                status: DeliveryStatus::Successful,
                message_id: Some((&sms.message_id).into()),
                status_code: 200,
                status_message: "written to the message file".into(),
            },
            Err(error) => {
                tracing::error!(%error, path = %self.path.display(), "cannot write to the SMS file");
                DeliveryReport {
                    retry_after: None,
                    status: DeliveryStatus::TemporaryFailure,
                    message_id: None,
                    status_code: 500,
                    status_message: "the message file cannot be written".into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_sms as sms;

    #[tokio::test]
    async fn appends_one_json_line_per_message() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sms.jsonl");
        let transport = FileTransport::new(path.clone());
        let first = transport.send(&sms("one 1234")).await;
        transport.send(&sms("two \"5678\"")).await;
        assert_eq!(first.status, DeliveryStatus::Successful);
        let content = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = content
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["to"], "+393481234567");
        assert_eq!(lines[0]["from"], "Acme");
        assert_eq!(lines[0]["encoding"], "GSM7");
        assert_eq!(lines[0]["parts"], 1);
        let first_id = first.message_id.expect("the message's id");
        assert_eq!(lines[0]["message_id"], first_id.as_str());
        assert_eq!(lines[1]["text"], "two \"5678\"");
    }

    #[tokio::test]
    async fn an_unwritable_file_is_a_temporary_failure() {
        let transport = FileTransport::new("/nonexistent-dir/sms.jsonl".into());
        let report = transport.send(&sms("x")).await;
        assert_eq!(report.status, DeliveryStatus::TemporaryFailure);
        assert!(report.message_id.is_none());
    }
}
