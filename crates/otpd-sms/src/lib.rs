//! otpd-sms: what a message says and how it travels.
//!
//! Templates per language, GSM 03.38 7-bit and UCS-2 encoding with segment counting, the
//! `MessageComposer` the core uses, and the transports behind the core's `SmsTransport` port.

pub mod composer;
pub mod dispatcher;
pub mod gsm;
pub mod segments;
pub mod template;
pub mod transport;

pub use composer::SmsComposer;
pub use dispatcher::{DispatchSettings, OutboxDispatcher};
