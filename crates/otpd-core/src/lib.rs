//! otpd-core: the product's rules without any I/O.
//!
//! Domain types that parse (phone numbers, identifiers, code policies), code generation and
//! keyed digests, the verification state machine, and the ports (`Store`, `SmsTransport`,
//! `MessageComposer`, `Clock`) that the adapters in the other crates implement.

pub mod account;
pub mod clock;
pub mod code;
pub mod countries;
pub mod crypto;
pub mod ids;
pub mod iso8601;
pub mod metrics;
pub mod outbox;
pub mod phone;
pub mod policy;
pub mod ports;
pub mod service;
pub mod sms;
pub mod sms_window;
pub mod text;
pub mod verification;

pub use clock::{Clock, SystemClock, Timestamp};
pub use code::{CodeLength, OtpCode};
pub use crypto::{CodeDigest, DigestBinding, DigestSubject, ServerKey};
pub use ids::{AccessKeyId, AccountId, ApplicationId, VerifyId};
pub use phone::E164;
pub use policy::{MaxAttempts, Ttl};
