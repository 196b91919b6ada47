//! The ports the core drives. Adapters live in other crates: `otpd-store` implements `Store`,
//! `otpd-sms` implements `MessageComposer` and `SmsTransport`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::account::{Account, AccountLimits, Application, NewAccount};
use crate::clock::Timestamp;
use crate::code::OtpCode;
use crate::ids::{AccessKeyId, AccountId, ApplicationId, VerifyId};
use crate::outbox::{
    AttemptOutcome, CarrierMessageId, MessageId, MessageRecord, OutboxBacklog, OutboxMessage,
    Receipt, ReceiptStored, StatusMessage,
};
use crate::phone::E164;
use crate::sms::{ComposeError, ComposedSms, MessageBody, Sender};
use crate::verification::{
    CancelOutcome, CheckAttempt, CheckLookup, CheckReport, NewVerification, SendGuards,
    SendRejected, Verification,
};

/// A failure of the storage itself (as opposed to a business answer such as "not found").
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the database returned something unexpected: {0}")]
    Corrupt(String),
    #[error("a record with that identity already exists")]
    Duplicate,
}

/// Why creating a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Rejected(#[from] SendRejected),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Durable state. Every method is atomic; every write is durable before it returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Accounts and applications.
    async fn create_account(&self, account: NewAccount) -> Result<Account, StoreError>;
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    async fn find_account_by_key(&self, key: &AccessKeyId) -> Result<Option<Account>, StoreError>;
    /// Deletes the account, its applications and its verifications.
    async fn delete_account(&self, key: &AccessKeyId) -> Result<bool, StoreError>;
    /// Adds `credits` (which may be negative) and returns the account; a limitless account
    /// gets a balance of `credits`.
    async fn add_credits(
        &self,
        key: &AccessKeyId,
        credits: i64,
    ) -> Result<Option<Account>, StoreError>;
    /// Replaces the account's sealed secret and returns the account; `None` if no account has
    /// that access key id. With `keep_previous_until`, the replaced secret becomes the
    /// account's previous secret until then; without, any previous secret is dropped.
    async fn replace_secret(
        &self,
        key: &AccessKeyId,
        sealed_secret: Vec<u8>,
        keep_previous_until: Option<Timestamp>,
    ) -> Result<Option<Account>, StoreError>;
    /// Replaces the account's limits and returns the account; `None` if no account has that
    /// access key id. The SMS already counted in the last hour stay counted.
    async fn set_account_limits(
        &self,
        key: &AccessKeyId,
        limits: &AccountLimits,
    ) -> Result<Option<Account>, StoreError>;
    /// The SMS parts each account has sent in its last hour (by the store's clock), as its
    /// hourly limit counts them (`SmsWindow`: 60 to 65 minutes back), by access key id; an
    /// account that sent none is left out. Only sends of an account with an hourly or a credit
    /// limit are counted. One read for every account, so that a listing of thousands of
    /// accounts asks once.
    async fn sms_in_last_hour(&self) -> Result<HashMap<AccessKeyId, u64>, StoreError>;
    async fn create_application(&self, application: Application)
    -> Result<Application, StoreError>;
    async fn list_applications(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<Application>, StoreError>;
    async fn find_application(&self, id: &ApplicationId)
    -> Result<Option<Application>, StoreError>;
    async fn delete_application(&self, id: &ApplicationId) -> Result<bool, StoreError>;

    // Verifications.
    /// In one transaction: apply `guards` (anti-spam window, credit debit), cancel the live
    /// verification with the same key, and insert this one.
    async fn create_verification(
        &self,
        verification: NewVerification,
        guards: SendGuards,
    ) -> Result<(), CreateError>;
    /// One atomic step: find the verification, run the check state machine (reserving an
    /// attempt before the comparison), store the new state and the check record.
    async fn check(
        &self,
        lookup: CheckLookup,
        attempt: CheckAttempt,
    ) -> Result<CheckReport, StoreError>;
    async fn cancel(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<CancelOutcome, StoreError>;
    async fn find_verification(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<Option<Verification>, StoreError>;

    // The outbox.
    /// Claims up to `limit` due messages for `lease`, counting an attempt for each. Messages
    /// whose code has expired or is no longer pending are dropped instead, never returned.
    async fn claim_outbox(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Stores the outcomes of attempts and releases their claims, all in one transaction (the
    /// dispatcher gathers the outcomes that finish while the previous batch is being written).
    /// A batch the database refuses, but not one lost with the connection, is stored outcome by
    /// outcome where the database can refuse one transaction alone (PostgreSQL: a deadlock); an
    /// error then means some outcomes were not stored. The batch is shared, not moved, so that
    /// the dispatcher can offer it again after an error without copying every outcome.
    async fn finish_attempts(
        &self,
        outcomes: Arc<[(MessageId, AttemptOutcome)]>,
    ) -> Result<(), StoreError>;
    /// Stores the outcome of one attempt and releases the claim.
    async fn finish_attempt(
        &self,
        id: &MessageId,
        outcome: AttemptOutcome,
    ) -> Result<(), StoreError> {
        self.finish_attempts(Arc::from([(id.clone(), outcome)]))
            .await
    }
    /// Stores a carrier's delivery receipt, unless its message already has one in that state.
    async fn record_receipt(&self, receipt: Receipt) -> Result<ReceiptStored, StoreError>;
    /// Releases every claim. Only for a store that one process owns (SQLite), at start: a
    /// process that died mid-send leaves its claims behind.
    async fn release_claims(&self) -> Result<u64, StoreError>;
    /// Gives back the claims on `ids`, which this process took but will not finish (it is
    /// stopping), so that the messages are due again at once rather than when the lease ends.
    async fn release_messages(&self, ids: &[MessageId]) -> Result<u64, StoreError>;
    async fn find_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError>;
    /// The newest `limit` messages given up on, newest first (for the web console).
    async fn failed_messages(&self, limit: usize) -> Result<Vec<MessageRecord>, StoreError>;
    /// How many messages wait for delivery and how long the oldest has (for `/metrics`).
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;

    /// Deletes up to `limit` verifications created before `cutoff`, with their checks and
    /// messages; returns how many went. Called in small batches so it never holds the writer long.
    async fn purge_verifications(&self, cutoff: Timestamp, limit: usize)
    -> Result<u64, StoreError>;

    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the database when the process is done with it, once what was asked before is
    /// done; calls made after fail with `StoreError::Unavailable`. A close made while another
    /// is under way returns when that one has finished.
    async fn close(&self);
}

/// Turns a message body and a code into the final text, encoded and counted.
pub trait MessageComposer: Send + Sync + 'static {
    fn compose(&self, body: &MessageBody, code: &OtpCode) -> Result<ComposedSms, ComposeError>;
}

/// One SMS handed to a transport.
#[derive(Debug, Clone)]
pub struct OutgoingSms {
    pub message_id: MessageId,
    pub verify_id: VerifyId,
    pub to: E164,
    pub from: Sender,
    pub message: ComposedSms,
    /// India DLT registration ids, passed through to carriers that need them.
    pub entity_id: Option<String>,
    pub template_id: Option<String>,
}

/// How a hand-over to the SMS network went, in Pinpoint's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Successful,
    Throttled,
    TemporaryFailure,
    PermanentFailure,
    UnknownFailure,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Successful => "SUCCESSFUL",
            Self::Throttled => "THROTTLED",
            Self::TemporaryFailure => "TEMPORARY_FAILURE",
            Self::PermanentFailure => "PERMANENT_FAILURE",
            Self::UnknownFailure => "UNKNOWN_FAILURE",
        }
    }
}

/// The transport's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub status: DeliveryStatus,
    /// The carrier's id for the message, if it gave one otpd can keep.
    pub message_id: Option<CarrierMessageId>,
    /// The downstream status code (HTTP-like: 200 for accepted).
    pub status_code: u16,
    pub status_message: StatusMessage,
    /// How long the carrier asked otpd to wait before it tries again (an HTTP provider's
    /// `Retry-After`); the retry policy honours it, within `RetryPolicy::LONGEST_ASKED_WAIT`.
    pub retry_after: Option<Duration>,
}

/// Delivers what the outbox holds. The core hands it each message it just committed (already
/// claimed for it) and may wait a short, bounded time for the first attempt so that an API can
/// report it.
#[async_trait]
pub trait Dispatcher: Send + Sync + 'static {
    /// The claim a message committed for immediate delivery is inserted with.
    fn claim(&self) -> Duration;
    /// `message` was just committed, claimed for this dispatcher: deliver it now. Returns the
    /// first attempt's report if it comes within `wait`.
    async fn deliver(&self, message: OutboxMessage, wait: Duration) -> Option<DeliveryReport>;
    /// The state of the link its transport keeps to the carrier, for the operator.
    fn carrier_link(&self) -> CarrierLink;
}

/// Something that hands SMS to the network (or, in development, to a console or a file).
#[async_trait]
pub trait SmsTransport: Send + Sync + 'static {
    async fn send(&self, sms: &OutgoingSms) -> DeliveryReport;
    /// The link it keeps to the carrier, if it keeps one (an SMPP bind does; an HTTP provider,
    /// a file or the console are reached afresh for each message).
    fn carrier_link(&self) -> CarrierLink {
        CarrierLink::PerMessage
    }
}

/// Whether the carrier can be reached now, as far as the transport knows without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierLink {
    /// The transport keeps no link: each message finds out for itself.
    PerMessage,
    /// A kept link (an SMPP bind) is up.
    Up,
    /// A kept link is down: messages wait in the outbox until it is up again.
    Down,
}
