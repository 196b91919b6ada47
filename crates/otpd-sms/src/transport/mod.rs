//! Transports: where composed messages go.

mod console;
mod file;
mod http;
mod smpp;

use std::path::PathBuf;
use std::sync::Arc;

use otpd_core::outbox::{CarrierMessageId, MessageId};
use otpd_core::ports::{SmsTransport, Store};

pub use console::{ConsoleStyle, ConsoleTransport};
pub use file::FileTransport;
pub use http::{HttpSpec, HttpSpecError, HttpTransport};
pub use smpp::{SmppSpec, SmppSpecError, SmppTransport, parse_receipt};

/// A transport as named on the command line (`--sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportSpec {
    Console,
    File(PathBuf),
    /// An HTTP(S) provider or webhook URL.
    Http(String),
    /// An SMSC over SMPP v3.4.
    Smpp(SmppSpec),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "unknown SMS transport {0:?}: use `console`, `file:PATH`, `http(s)://...` or `smpp://...`"
    )]
    Unknown(String),
    #[error("`file:` needs a path, as in `file:/var/log/otpd-sms.jsonl`")]
    MissingPath,
    #[error(transparent)]
    Http(#[from] HttpSpecError),
    #[error(transparent)]
    Smpp(#[from] SmppSpecError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot start the thread that prints SMS on standard error: {0}")]
    ConsolePrinter(String),
}

impl std::str::FromStr for TransportSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec == "console" {
            return Ok(Self::Console);
        }
        if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SpecError::MissingPath);
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if spec.starts_with("smpp://") {
            return Ok(Self::Smpp(spec.parse()?));
        }
        if spec.starts_with("http://") || spec.starts_with("https://") {
            return Ok(Self::Http(spec.to_owned()));
        }
        Err(SpecError::Unknown(
            spec.split(':').next().unwrap_or_default().to_owned(),
        ))
    }
}

impl TransportSpec {
    /// Builds the transport; `http_header` is the optional `Name: value` for HTTP providers;
    /// `console` is how the console prints; `store` receives SMPP delivery receipts. Must run
    /// inside the Tokio runtime.
    pub fn build(
        &self,
        http_header: Option<&str>,
        console: ConsoleStyle,
        store: Arc<dyn Store>,
    ) -> Result<Arc<dyn SmsTransport>, SpecError> {
        Ok(match self {
            Self::Console => Arc::new(
                ConsoleTransport::new(console)
                    .map_err(|error| SpecError::ConsolePrinter(error.to_string()))?,
            ),
            Self::File(path) => Arc::new(FileTransport::new(path.clone())),
            Self::Http(url) => Arc::new(
                HttpTransport::new(HttpSpec::new(url, http_header)?)
                    .map_err(|error| SpecError::HttpClient(error.to_string()))?,
            ),
            Self::Smpp(spec) => Arc::new(SmppTransport::start(spec.clone(), store)),
        })
    }
}

/// One message as JSON, the same for the file sink and HTTP providers. The DLT registration ids
/// appear only when given.
#[derive(serde::Serialize)]
pub(crate) struct JsonMessage<'a> {
    message_id: &'a str,
    to: &'a str,
    from: &'a str,
    text: &'a str,
    encoding: &'a str,
    parts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template_id: Option<&'a str>,
}

impl<'a> From<&'a otpd_core::ports::OutgoingSms> for JsonMessage<'a> {
    fn from(sms: &'a otpd_core::ports::OutgoingSms) -> Self {
        Self {
            message_id: sms.message_id.as_str(),
            to: sms.to.as_str(),
            from: sms.from.as_str(),
            text: &sms.message.text,
            encoding: sms.message.encoding.as_str(),
            parts: sms.message.parts,
            entity_id: sms.entity_id.as_deref(),
            template_id: sms.template_id.as_deref(),
        }
    }
}

/// The carrier's id for our message `ours`, if otpd can keep it (`CarrierMessageId`). Otherwise
/// a warning, without the id, which may be anything, and the attempt is recorded without it.
pub(crate) fn kept(carrier_id: &str, ours: &MessageId) -> Option<CarrierMessageId> {
    let kept = CarrierMessageId::parse(carrier_id);
    if kept.is_none() {
        tracing::warn!(
            message_id = %ours,
            length = carrier_id.chars().count(),
            "the carrier's message id cannot be kept (empty, over {} characters, or with a control character); receipts for the message will not be matched",
            CarrierMessageId::MAX_CHARS
        );
    }
    kept
}

/// A message for the transports' unit tests: to +393481234567 from "Acme", one GSM 7-bit part.
#[cfg(test)]
pub(crate) fn test_sms(text: &str) -> otpd_core::ports::OutgoingSms {
    use otpd_core::sms::{ComposedSms, Encoding, Sender};
    use otpd_core::{E164, VerifyId};

    otpd_core::ports::OutgoingSms {
        message_id: MessageId::generate(),
        verify_id: VerifyId::generate(),
        to: E164::parse("+393481234567").expect("number"),
        from: Sender::parse("Acme").expect("sender"),
        message: ComposedSms {
            text: text.into(),
            encoding: Encoding::Gsm7,
            parts: 1,
        },
        entity_id: None,
        template_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!("console".parse(), Ok(TransportSpec::Console));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(TransportSpec::File("/tmp/x".into()))
        );
        assert_eq!(
            "file:".parse::<TransportSpec>(),
            Err(SpecError::MissingPath)
        );
        assert!(matches!(
            "carrier-pigeon".parse::<TransportSpec>(),
            Err(SpecError::Unknown(_))
        ));
    }
}
