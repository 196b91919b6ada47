//! The durable outbox: every accepted send is committed with its message, and a dispatcher
//! delivers it afterwards, retrying transient failures, surviving crashes, and never sending a
//! code that has expired or been cancelled.

use std::fmt;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::ids::{AccountId, VerifyId};
use crate::phone::E164;
use crate::ports::{DeliveryReport, DeliveryStatus};
use crate::sms::Encoding;
use crate::text::is_short_printable;

/// otpd's own id for one message: 32 lowercase hex characters. It is Pinpoint's `MessageId` and
/// the amm `id_sms`; the carrier's id is kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// The creation time in milliseconds then 80 random bits (see `VerifyId`).
    pub fn generate() -> Self {
        Self(hex::encode(crate::ids::time_ordered_bytes::<16>()))
    }

    pub fn parse(input: &str) -> Option<Self> {
        let well_formed = input.len() == 32
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A carrier's id for one message, as otpd keeps and looks it up: 1 to 128 characters, none of
/// them a control character. SMPP's are at most 64 octets and HTTP providers' are UUIDs and the
/// like. PostgreSQL's text holds no NUL and its index entries at most about 2,700 bytes: an id
/// beyond that failed the commit of the attempt's outcome, and the message was sent again each
/// time its claim ran out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CarrierMessageId(String);

impl CarrierMessageId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(input: &str) -> Option<Self> {
        is_short_printable(input, Self::MAX_CHARS).then(|| Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&MessageId> for CarrierMessageId {
    /// otpd's own id, for a carrier that answers without one of its own.
    fn from(id: &MessageId) -> Self {
        Self(id.0.clone())
    }
}

impl fmt::Display for CarrierMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transport's words on one attempt, as otpd stores them and shows them (Pinpoint's
/// `StatusMessage`, the console, `messages failed`): at most 256 characters, each control
/// character made a space. Transports put library errors into it, whose text can carry what a
/// peer sent, and PostgreSQL's text holds no NUL: one would fail the commit of the attempt's
/// outcome with every other outcome in its batch, and those messages would be sent again each
/// time their claims ran out. So it is made storable as it is built, not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMessage(String);

impl StatusMessage {
    pub const MAX_CHARS: usize = 256;

    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        if text.chars().count() <= Self::MAX_CHARS && !text.chars().any(char::is_control) {
            return Self(text);
        }
        Self(
            text.chars()
                .take(Self::MAX_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<&str> for StatusMessage {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for StatusMessage {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for StatusMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message to commit with its verification. The text holds the code, so it is stored sealed
/// with the server key.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    pub id: MessageId,
    pub sealed_text: Vec<u8>,
    pub encoding: Encoding,
    pub parts: u32,
    pub entity_id: Option<String>,
    pub template_id: Option<String>,
    /// Insert it already claimed for this long, with its first attempt counted, because the
    /// process committing it delivers it at once (saving a claim round trip). If that process
    /// dies first, the claim runs out and any dispatcher takes the message.
    pub claimed_for: Option<Duration>,
}

/// A message claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: MessageId,
    pub verify_id: VerifyId,
    pub to: E164,
    pub from: String,
    pub text: MessageText,
    pub encoding: Encoding,
    pub parts: u32,
    pub entity_id: Option<String>,
    pub template_id: Option<String>,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// A message's text as a delivery attempt gets it: sealed, as the outbox keeps it, or still
/// open when the send that composed it hands it over (its sealed copy is for the outbox only,
/// and opening what was sealed a moment ago would cost a decryption per send).
#[derive(Clone)]
pub enum MessageText {
    Sealed(Vec<u8>),
    Open(String),
}

impl fmt::Debug for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text holds the code.
        match self {
            Self::Sealed(sealed) => write!(f, "Sealed({} bytes)", sealed.len()),
            Self::Open(_) => f.write_str("Open(..)"),
        }
    }
}

/// What became of one delivery attempt, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The carrier took the message.
    Accepted(DeliveryReport),
    /// A transient failure: try again `retry_after` from now. A delay rather than a time, so
    /// that the store measures it with its own clock (the database's, shared by every node).
    Retry {
        report: DeliveryReport,
        retry_after: Duration,
    },
    /// A permanent failure, or the retries are used up.
    Failed(DeliveryReport),
}

impl AttemptOutcome {
    /// The state the message moves to.
    pub fn next_state(&self) -> MessageState {
        match self {
            Self::Accepted(_) => MessageState::Sent,
            Self::Retry { .. } => MessageState::Pending,
            Self::Failed(_) => MessageState::Failed,
        }
    }

    pub fn report(&self) -> &DeliveryReport {
        match self {
            Self::Accepted(report) | Self::Retry { report, .. } | Self::Failed(report) => report,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retry { retry_after, .. } => Some(*retry_after),
            Self::Accepted(_) | Self::Failed(_) => None,
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting for its (next) attempt.
    Pending,
    /// Handed to the carrier.
    Sent,
    /// Given up on.
    Failed,
    /// Not sent because its code expired or was cancelled first.
    Dropped,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// A delivery receipt from the carrier (an SMPP `deliver_sm` receipt, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub carrier_message_id: CarrierMessageId,
    /// The carrier's final state: DELIVRD, UNDELIV, EXPIRED, REJECTD...
    pub state: String,
    pub at: Timestamp,
}

/// What storing a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStored {
    /// The message's receipt state is now the receipt's.
    New,
    /// The message already had a receipt in that state, which is kept as it was: the carrier
    /// delivered the same receipt again, as an SMSC does when it missed the acknowledgement.
    Repeated,
    /// No message has the receipt's carrier id.
    UnknownMessage,
}

impl ReceiptStored {
    /// What a store's conditional update of the receipt did: whether it `changed` a message,
    /// and whether a message with the receipt's carrier id exists at all.
    pub fn from_update(changed: bool, message_exists: bool) -> Self {
        match (changed, message_exists) {
            (true, _) => Self::New,
            (false, true) => Self::Repeated,
            (false, false) => Self::UnknownMessage,
        }
    }
}

/// What waits in the outbox, for monitoring: messages neither handed to a carrier nor given up
/// on (due, waiting to retry, or being sent now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxBacklog {
    pub pending: u64,
    /// How long the oldest of them has waited since it was committed; zero when none waits.
    pub oldest_age: Duration,
}

impl OutboxBacklog {
    /// From a count and the commit time of the oldest, as of `now`.
    pub fn at(now: Timestamp, pending: u64, oldest: Option<Timestamp>) -> Self {
        Self {
            pending,
            oldest_age: oldest.map_or(Duration::ZERO, |oldest| now.since(oldest)),
        }
    }
}

/// One message as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: MessageId,
    pub verify_id: VerifyId,
    pub account_id: AccountId,
    pub to: E164,
    pub from: String,
    pub encoding: Encoding,
    pub parts: u32,
    pub state: MessageState,
    pub attempts: u32,
    pub created_at: Timestamp,
    pub sent_at: Option<Timestamp>,
    pub delivery_status: Option<String>,
    pub status_message: Option<String>,
    pub carrier_message_id: Option<String>,
    pub receipt_state: Option<String>,
    pub receipt_at: Option<Timestamp>,
    /// When a pending message's next attempt is due: a carrier that asked for a wait
    /// (`DeliveryReport::retry_after`) puts it up to an hour away. `None` once the message is
    /// final.
    pub next_attempt_at: Option<Timestamp>,
}

/// How failed attempts are retried: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The longest wait a carrier may ask for (`DeliveryReport::retry_after`) that is honoured
    /// as asked; a longer one is cut to it. A code rarely lives longer, and a message whose code
    /// expired meanwhile is dropped at its next turn rather than sent.
    pub const LONGEST_ASKED_WAIT: Duration = Duration::from_secs(3600);

    /// The delay before attempt `attempts + 1`, given `attempts` made: doubling from
    /// `first_delay`, capped at `max_delay`, then scaled by `jitter` (0.0 to 1.0) into 50-100 %
    /// of that, so that retries after an outage do not arrive all at once.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(20);
        let full = self
            .first_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// What to store after an attempt that got `report` (with `attempts` made, this one
    /// included). `jitter` is drawn only for a retry.
    pub fn outcome(
        &self,
        report: DeliveryReport,
        attempts: u32,
        jitter: impl FnOnce() -> f64,
    ) -> AttemptOutcome {
        match report.status {
            DeliveryStatus::Successful => AttemptOutcome::Accepted(report),
            DeliveryStatus::PermanentFailure => AttemptOutcome::Failed(report),
            _ if attempts >= self.max_attempts => AttemptOutcome::Failed(report),
            // The carrier's own wait, when it asked for a longer one than the backoff's.
            _ => AttemptOutcome::Retry {
                retry_after: self.delay(attempts, jitter()).max(
                    report
                        .retry_after
                        .unwrap_or_default()
                        .min(Self::LONGEST_ASKED_WAIT),
                ),
                report,
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_receipt_that_changed_nothing_is_a_repeat_only_for_a_known_message() {
        assert_eq!(ReceiptStored::from_update(true, true), ReceiptStored::New);
        assert_eq!(
            ReceiptStored::from_update(false, true),
            ReceiptStored::Repeated
        );
        assert_eq!(
            ReceiptStored::from_update(false, false),
            ReceiptStored::UnknownMessage
        );
    }

    #[test]
    fn a_carrier_id_is_kept_only_if_a_store_can_index_it() {
        for kept in [
            "prov-1",
            "0A1B2C3D",
            "ü-ÿ",
            &"x".repeat(CarrierMessageId::MAX_CHARS),
        ] {
            let id = CarrierMessageId::parse(kept).expect(kept);
            assert_eq!(id.as_str(), kept);
        }
        let too_long = "x".repeat(CarrierMessageId::MAX_CHARS + 1);
        for refused in ["", "a\0b", "line\nbreak", "tab\there", "\u{7f}", &too_long] {
            assert_eq!(CarrierMessageId::parse(refused), None, "{refused:?}");
        }
        let ours = MessageId::generate();
        assert_eq!(CarrierMessageId::from(&ours).as_str(), ours.as_str());
    }

    /// A transport's answer with nothing but its status.
    pub(crate) fn report(status: DeliveryStatus) -> DeliveryReport {
        DeliveryReport {
            retry_after: None,
            status,
            message_id: None,
            status_code: 0,
            status_message: StatusMessage::new(""),
        }
    }

    #[test]
    fn a_status_message_is_made_storable_not_refused() {
        assert_eq!(
            StatusMessage::new("accepted by the SMSC").as_str(),
            "accepted by the SMSC"
        );
        assert_eq!(
            StatusMessage::from("link\0failure\r\n").as_str(),
            "link failure  "
        );
        let long = StatusMessage::from("é".repeat(1000));
        assert_eq!(long.as_str(), "é".repeat(StatusMessage::MAX_CHARS));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(policy.delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(policy.delay(30, 1.0), Duration::from_secs(60));
        assert_eq!(policy.delay(4, 0.0), Duration::from_secs(4));
    }

    #[test]
    fn outcomes_by_status() {
        let policy = RetryPolicy::default();
        assert!(matches!(
            policy.outcome(report(DeliveryStatus::Successful), 1, || 0.5),
            AttemptOutcome::Accepted(_)
        ));
        assert!(matches!(
            policy.outcome(report(DeliveryStatus::PermanentFailure), 1, || 0.5),
            AttemptOutcome::Failed(_)
        ));
        match policy.outcome(report(DeliveryStatus::Throttled), 1, || 1.0) {
            AttemptOutcome::Retry { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        assert!(matches!(
            policy.outcome(report(DeliveryStatus::TemporaryFailure), 12, || 0.5),
            AttemptOutcome::Failed(_)
        ));
    }

    #[test]
    fn a_carriers_wait_is_honoured_when_longer_than_the_backoff() {
        let policy = RetryPolicy::default();
        let asked = |wait: u64| DeliveryReport {
            retry_after: Some(Duration::from_secs(wait)),
            ..report(DeliveryStatus::Throttled)
        };
        let delay = |report: DeliveryReport, attempts: u32| match policy.outcome(
            report,
            attempts,
            || 1.0,
        ) {
            AttemptOutcome::Retry { retry_after, .. } => retry_after,
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(delay(asked(30), 1), Duration::from_secs(30));
        assert_eq!(
            delay(asked(1), 4),
            Duration::from_secs(8),
            "the backoff is longer"
        );
        assert_eq!(
            delay(asked(86_400), 1),
            RetryPolicy::LONGEST_ASKED_WAIT,
            "a day is cut to the longest wait honoured"
        );
        assert!(matches!(
            policy.outcome(asked(30), 12, || 1.0),
            AttemptOutcome::Failed(_)
        ));
    }

    #[test]
    fn message_ids() {
        let id = MessageId::generate();
        assert_eq!(MessageId::parse(id.as_str()), Some(id));
        assert!(MessageId::parse("410065822").is_none());
    }
}
