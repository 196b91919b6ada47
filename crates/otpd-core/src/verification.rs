//! The verification: its key, its lifecycle, and the state machine every check goes through.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::code::OtpCode;
use crate::crypto::{CodeDigest, DigestSubject, ServerKey};
use crate::ids::{AccountId, VerifyId};
use crate::outbox::NewOutboxMessage;
use crate::phone::E164;
use crate::policy::{MaxAttempts, Ttl};
use crate::text::is_short_printable;

/// Which API created a verification; each has its own notion of "the same code".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Pinpoint,
    Amm,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinpoint => "pinpoint",
            Self::Amm => "amm",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pinpoint" => Some(Self::Pinpoint),
            "amm" => Some(Self::Amm),
            _ => None,
        }
    }
}

/// A Pinpoint `ReferenceId`: 1 to 48 characters, matched exactly, no control characters
/// (`is_short_printable`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceId(String);

impl ReferenceId {
    pub fn parse(input: &str) -> Option<Self> {
        is_short_printable(input, 48).then(|| Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What makes two sends "the same code": there is at most one live verification per key.
/// Pinpoint: application + ReferenceId + destination. amm: app_id (possibly empty) +
/// destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerificationKey {
    pub account_id: AccountId,
    pub dialect: Dialect,
    /// The Pinpoint application id or the amm `app_id` label.
    pub app: String,
    /// The Pinpoint `ReferenceId`; empty for amm.
    pub reference: String,
    pub destination: E164,
}

impl VerificationKey {
    /// What the digest of verification `id`'s code is bound to: what its dialect's check finds
    /// it by, the key for a Pinpoint verify and the id for an amm check.
    pub fn digest_subject<'a>(&'a self, id: &'a VerifyId) -> DigestSubject<'a> {
        match self.dialect {
            Dialect::Pinpoint => DigestSubject::Key(self),
            Dialect::Amm => DigestSubject::Verification(id),
        }
    }
}

/// Where a verification is in its life. Only `Pending` accepts checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationStatus {
    Pending,
    Verified,
    /// Too many wrong codes.
    Failed,
    Expired,
    /// Cancelled by a command or replaced by a newer send.
    Cancelled,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "verified" => Some(Self::Verified),
            "failed" => Some(Self::Failed),
            "expired" => Some(Self::Expired),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Verified,
    /// A wrong code; one attempt was used. `exhausted` when it was the last one.
    Mismatch {
        exhausted: bool,
    },
    /// The code had already taken all its attempts.
    AttemptsExhausted,
    Expired,
    /// The code was already verified once.
    AlreadyVerified,
    Cancelled,
    /// No verification matches the lookup.
    NotFound,
    /// The client's IP address made too many wrong checks recently; nothing was compared.
    RateLimited,
}

impl CheckOutcome {
    /// Every outcome, for whoever must list them all (the metrics publish each at zero).
    pub const ALL: [Self; 9] = [
        Self::Verified,
        Self::Mismatch { exhausted: false },
        Self::Mismatch { exhausted: true },
        Self::AttemptsExhausted,
        Self::Expired,
        Self::AlreadyVerified,
        Self::Cancelled,
        Self::NotFound,
        Self::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Mismatch { exhausted: false } => "mismatch",
            Self::Mismatch { exhausted: true } => "mismatch_exhausted",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Expired => "expired",
            Self::AlreadyVerified => "already_verified",
            Self::Cancelled => "cancelled",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "verified" => Self::Verified,
            "mismatch" => Self::Mismatch { exhausted: false },
            "mismatch_exhausted" => Self::Mismatch { exhausted: true },
            "attempts_exhausted" => Self::AttemptsExhausted,
            "expired" => Self::Expired,
            "already_verified" => Self::AlreadyVerified,
            "cancelled" => Self::Cancelled,
            "not_found" => Self::NotFound,
            "rate_limited" => Self::RateLimited,
            _ => return None,
        })
    }
}

/// The part of a stored verification a check reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckState {
    pub status: VerificationStatus,
    pub expires_at: Timestamp,
    pub attempts_used: u8,
    pub max_attempts: u8,
}

/// The result of running one check through the state machine: what to answer and what to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckTransition {
    pub outcome: CheckOutcome,
    pub next: CheckState,
}

impl CheckState {
    /// The status as of `now`: a pending code past its expiry is expired even before anyone
    /// writes that down.
    pub fn status_at(&self, now: Timestamp) -> VerificationStatus {
        match self.status {
            VerificationStatus::Pending if now >= self.expires_at => VerificationStatus::Expired,
            status => status,
        }
    }

    /// One check. `code_matches` is only called when the code is live and an attempt was
    /// reserved, so a dead code is never compared at all. The store runs this inside the same
    /// atomic step that read the state, so parallel checks see each other's attempts.
    pub fn check(self, now: Timestamp, code_matches: impl FnOnce() -> bool) -> CheckTransition {
        let unchanged = |outcome| CheckTransition {
            outcome,
            next: self,
        };
        match self.status_at(now) {
            VerificationStatus::Verified => unchanged(CheckOutcome::AlreadyVerified),
            VerificationStatus::Cancelled => unchanged(CheckOutcome::Cancelled),
            VerificationStatus::Failed => unchanged(CheckOutcome::AttemptsExhausted),
            VerificationStatus::Expired => CheckTransition {
                outcome: CheckOutcome::Expired,
                next: CheckState {
                    status: VerificationStatus::Expired,
                    ..self
                },
            },
            VerificationStatus::Pending if self.attempts_used >= self.max_attempts => {
                CheckTransition {
                    outcome: CheckOutcome::AttemptsExhausted,
                    next: CheckState {
                        status: VerificationStatus::Failed,
                        ..self
                    },
                }
            }
            VerificationStatus::Pending => {
                let attempts_used = self.attempts_used + 1;
                if code_matches() {
                    CheckTransition {
                        outcome: CheckOutcome::Verified,
                        next: CheckState {
                            status: VerificationStatus::Verified,
                            attempts_used,
                            ..self
                        },
                    }
                } else {
                    let exhausted = attempts_used >= self.max_attempts;
                    let status = if exhausted {
                        VerificationStatus::Failed
                    } else {
                        VerificationStatus::Pending
                    };
                    CheckTransition {
                        outcome: CheckOutcome::Mismatch { exhausted },
                        next: CheckState {
                            status,
                            attempts_used,
                            ..self
                        },
                    }
                }
            }
        }
    }
}

/// A code someone submitted, with what is needed to compare it to a stored digest. The store
/// calls `matches` inside its atomic check step.
#[derive(Clone)]
pub struct Candidate {
    key: Arc<ServerKey>,
    code: OtpCode,
}

impl Candidate {
    pub fn new(key: Arc<ServerKey>, code: OtpCode) -> Self {
        Self { key, code }
    }

    /// Whether this is the code whose digest, bound to `subject`, is `stored_digest`.
    pub fn matches(&self, subject: DigestSubject<'_>, stored_digest: &[u8]) -> bool {
        self.key.code_matches(subject, &self.code, stored_digest)
    }

    /// This code's digest bound to `subject`, for a store that compares digests itself.
    pub fn digest(&self, subject: DigestSubject<'_>) -> CodeDigest {
        self.key.digest_code(subject, &self.code)
    }

    pub fn code(&self) -> &OtpCode {
        &self.code
    }
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Candidate([REDACTED])")
    }
}

/// A check as the store receives it.
#[derive(Debug, Clone)]
pub struct CheckAttempt {
    pub candidate: Candidate,
    pub client_ip: Option<String>,
    pub history: CheckHistory,
    /// Refuse the check when `client_ip` already made this many wrong checks on the account's
    /// codes within the window (the amm `ip_address` anti-spam filter).
    pub ip_limit: Option<IpLimit>,
}

/// Whether a check is written to the verification's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckHistory {
    /// Not recorded: Pinpoint has no way to read a history, and the write costs every verify.
    Skip,
    /// Recorded with the submitted code (the amm `search` shows both).
    WithCode,
}

/// At most `max_failures` wrong codes from one IP address per account within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimit {
    pub max_failures: u32,
    pub window: Duration,
}

/// What a check found, with the id of the message that carried the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub outcome: CheckOutcome,
    pub message_id: Option<String>,
    /// For a `RateLimited` check: how long until the oldest of the address's wrong codes that
    /// fill its window leaves it. `None` for any other outcome, or when the store could not tell.
    pub retry_after: Option<Duration>,
}

/// Which verification a check is for.
#[derive(Debug, Clone)]
pub enum CheckLookup {
    /// The live (pending) verification with this key (Pinpoint). Once it is verified, failed or
    /// cancelled the key has none, which Pinpoint answers like any other dead code.
    ByKey(VerificationKey),
    /// One verification by id, within an account (amm).
    ById { account_id: AccountId, id: VerifyId },
}

impl CheckLookup {
    /// The dialect whose check this is: only amm finds a verification by id.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::ByKey(key) => key.dialect,
            Self::ById { .. } => Dialect::Amm,
        }
    }

    /// The account the verification must belong to; both lookups are within one account.
    pub fn account_id(&self) -> &AccountId {
        match self {
            Self::ByKey(key) => &key.account_id,
            Self::ById { account_id, .. } => account_id,
        }
    }

    /// The subject built from what this lookup knows before it finds anything. A row whose
    /// digest has this subject's binding can be compared in the statement that finds it.
    pub fn digest_subject(&self) -> DigestSubject<'_> {
        match self {
            Self::ByKey(key) => DigestSubject::Key(key),
            Self::ById { id, .. } => DigestSubject::Verification(id),
        }
    }
}

/// A verification about to be stored.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: VerifyId,
    pub key: VerificationKey,
    pub sender: String,
    pub digest: CodeDigest,
    pub ttl: Ttl,
    pub max_attempts: MaxAttempts,
    pub sandbox: bool,
    /// The code itself, kept only for sandbox sends (the amm `search` shows it as `codice`).
    pub sandbox_code: Option<String>,
    /// SMS parts the message takes.
    pub parts: u32,
    /// The message to deliver, committed in the same transaction; `None` for sandbox sends.
    pub outbox: Option<NewOutboxMessage>,
}

/// Business limits the store enforces in the same transaction that creates a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendGuards {
    /// At most this many sends to one destination per account within `window`.
    pub max_sends_per_destination: u32,
    pub window: Duration,
    /// Credits to debit (SMS parts; 0 for sandbox sends).
    pub charge: u32,
}

/// Why the store refused to create a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendRejected {
    /// `retry_after`: how long until the oldest of the sends that fill the window leaves it.
    /// `None` when the store could not tell.
    #[error("too many messages to this destination in the anti-spam window")]
    TooManySends { retry_after: Option<Duration> },
    #[error("the account's credit does not cover the message")]
    NoCredit,
    #[error("the account no longer exists")]
    UnknownAccount,
    /// `retry_after`: how long until enough of the last hour's parts leave the count for this
    /// message. `None` when none ever will (the message alone has more parts than the limit)
    /// or the store could not tell.
    #[error("the account has sent its hourly limit of SMS")]
    HourlyLimit { retry_after: Option<Duration> },
}

impl SendRejected {
    /// The same refusal, telling a rate limit's `retry_after`; a refusal that does not lift by
    /// itself is left as it is.
    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        match self {
            Self::TooManySends { .. } => Self::TooManySends { retry_after },
            Self::HourlyLimit { .. } => Self::HourlyLimit { retry_after },
            Self::NoCredit | Self::UnknownAccount => self,
        }
    }
}

/// What a cancel command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// The code was no longer usable (verified, expired, failed or cancelled).
    NotCancellable,
    NotFound,
}

/// One recorded check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    pub at: Timestamp,
    pub submitted_code: Option<String>,
    pub outcome: CheckOutcome,
    pub client_ip: Option<String>,
}

/// A verification as read back, with its status as of the store's now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: VerifyId,
    pub key: VerificationKey,
    pub sender: String,
    pub status: VerificationStatus,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub attempts_used: u8,
    pub max_attempts: u8,
    pub sandbox: bool,
    pub sandbox_code: Option<String>,
    pub message_id: Option<String>,
    /// The newest word on delivery: the carrier's receipt state, else the hand-over status.
    pub delivery_status: Option<String>,
    /// When that word came.
    pub delivery_updated_at: Option<Timestamp>,
    pub parts: u32,
    pub checks: Vec<CheckRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pending(max_attempts: u8) -> CheckState {
        CheckState {
            status: VerificationStatus::Pending,
            expires_at: Timestamp(1_000),
            attempts_used: 0,
            max_attempts,
        }
    }

    #[test]
    fn right_code_verifies_once() {
        let first = pending(3).check(Timestamp(0), || true);
        assert_eq!(first.outcome, CheckOutcome::Verified);
        let second = first.next.check(Timestamp(0), || true);
        assert_eq!(second.outcome, CheckOutcome::AlreadyVerified);
    }

    #[test]
    fn wrong_codes_use_attempts_then_kill_the_code() {
        let state = pending(2);
        let one = state.check(Timestamp(0), || false);
        assert_eq!(one.outcome, CheckOutcome::Mismatch { exhausted: false });
        let two = one.next.check(Timestamp(0), || false);
        assert_eq!(two.outcome, CheckOutcome::Mismatch { exhausted: true });
        assert_eq!(two.next.status, VerificationStatus::Failed);
        let three = two.next.check(Timestamp(0), || true);
        assert_eq!(three.outcome, CheckOutcome::AttemptsExhausted);
    }

    #[test]
    fn expiry_is_at_the_instant() {
        let state = pending(3);
        assert_eq!(
            state.check(Timestamp(999), || true).outcome,
            CheckOutcome::Verified
        );
        let expired = state.check(Timestamp(1_000), || {
            unreachable!("a dead code is never compared")
        });
        assert_eq!(expired.outcome, CheckOutcome::Expired);
        assert_eq!(expired.next.status, VerificationStatus::Expired);
        assert_eq!(expired.next.attempts_used, 0);
    }

    #[test]
    fn cancelled_codes_stay_cancelled() {
        let state = CheckState {
            status: VerificationStatus::Cancelled,
            ..pending(3)
        };
        let transition = state.check(Timestamp(0), || unreachable!("never compared"));
        assert_eq!(transition.outcome, CheckOutcome::Cancelled);
        assert_eq!(transition.next, state);
    }

    #[test]
    fn outcome_names_round_trip_and_all_lists_each_once() {
        for outcome in CheckOutcome::ALL {
            assert_eq!(CheckOutcome::parse(outcome.as_str()), Some(outcome));
        }
        let names: std::collections::HashSet<&str> = CheckOutcome::ALL
            .iter()
            .map(|outcome| outcome.as_str())
            .collect();
        assert_eq!(names.len(), CheckOutcome::ALL.len());
    }

    #[test]
    fn reference_ids_are_1_to_48_characters() {
        assert!(ReferenceId::parse("").is_none());
        assert!(ReferenceId::parse("a").is_some());
        assert!(ReferenceId::parse(&"é".repeat(48)).is_some());
        assert!(ReferenceId::parse(&"a".repeat(49)).is_none());
        assert!(ReferenceId::parse("login-1 for ü").is_some());
        for control in ["a\0b", "a\nb", "\u{7f}", "a\u{85}"] {
            assert!(ReferenceId::parse(control).is_none(), "{control:?}");
        }
    }

    proptest! {
        /// Whatever sequence of right and wrong codes arrives, and whenever: attempts never
        /// exceed the limit, at most one check verifies, and nothing leaves a final state.
        #[test]
        fn checks_respect_the_limits(
            max_attempts in 1u8..=20,
            expires_at in 0i64..50,
            checks in proptest::collection::vec((any::<bool>(), 0i64..60), 0..40),
        ) {
            let mut state = CheckState {
                status: VerificationStatus::Pending,
                expires_at: Timestamp(expires_at),
                attempts_used: 0,
                max_attempts,
            };
            let mut verified = 0;
            let mut wrong = 0;
            for (right, at) in checks {
                let before = state;
                let transition = state.check(Timestamp(at), || right);
                match transition.outcome {
                    CheckOutcome::Verified => {
                        verified += 1;
                        prop_assert!(Timestamp(at) < before.expires_at);
                    }
                    CheckOutcome::Mismatch { .. } => wrong += 1,
                    _ => prop_assert_eq!(transition.next.attempts_used, before.attempts_used),
                }
                if before.status != VerificationStatus::Pending {
                    prop_assert_eq!(transition.next.status, before.status);
                }
                state = transition.next;
                prop_assert!(state.attempts_used <= state.max_attempts);
            }
            prop_assert!(verified <= 1);
            prop_assert!(wrong <= max_attempts);
        }
    }
}
