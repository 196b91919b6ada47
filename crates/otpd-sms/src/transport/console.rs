//! The development default: each message printed on standard error.

use async_trait::async_trait;
use otpd_core::ports::{DeliveryReport, DeliveryStatus, OutgoingSms, SmsTransport};

#[derive(Debug, Default, Clone, Copy)]
pub struct ConsoleTransport;

#[async_trait]
impl SmsTransport for ConsoleTransport {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport {
        let message_id = sms.message_id.to_string();
        // This is the SMS itself, not a log line: a developer reads the code from here.
        eprintln!(
            "SMS {message_id} to {} from {} ({}, {} part(s)): {}",
            sms.to,
            sms.from,
            sms.message.encoding.as_str(),
            sms.message.parts,
            sms.message.text
        );
        DeliveryReport {
            status: DeliveryStatus::Successful,
            message_id: Some(message_id),
            status_code: 200,
            status_message: "printed to the console".into(),
        }
    }
}
