//! The verification service: the one place both dialects send and check codes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account::{Account, AccountLimits, Application, Name, NewAccount, PreviousSecret};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::code::{CodeLength, OtpCode};
use crate::countries::DestinationCountries;
use crate::crypto::ServerKey;
use crate::ids::{AccessKeyId, AccountId, ApplicationId, SecretAccessKey, VerifyId};
use crate::metrics::VerificationMetrics;
use crate::outbox::{MessageId, MessageText, NewOutboxMessage, OutboxMessage};
use crate::policy::{MaxAttempts, Ttl};
use crate::ports::{
    CarrierLink, CreateError, DeliveryReport, DeliveryStatus, Dispatcher, MessageComposer, Store,
    StoreError,
};
use crate::sms::{ComposeError, MessageBody, Sender};
use crate::verification::{
    CancelOutcome, Candidate, CheckAttempt, CheckHistory, CheckLookup, CheckReport, IpLimit,
    NewVerification, SendGuards, SendRejected, Verification, VerificationKey,
};

/// Limits that protect recipients and accounts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The countries codes may be texted to (`--sms-countries`).
    pub destinations: DestinationCountries,
    /// More than this many SMS to one recipient within `antispam_window` is refused.
    pub max_sends_per_destination: u32,
    pub antispam_window: Duration,
    /// Wrong checks one end-user IP address may make on an account's codes per window.
    pub max_failed_checks_per_ip: u32,
    pub failed_checks_window: Duration,
    /// How long a send waits for the first delivery attempt before answering anyway.
    pub first_attempt_wait: Duration,
}

impl Default for Limits {
    /// The amm API's documented rule: more than 10 SMS to the same recipient in 60 minutes.
    fn default() -> Self {
        Self {
            destinations: DestinationCountries::Any,
            max_sends_per_destination: 10,
            antispam_window: Duration::from_secs(3600),
            max_failed_checks_per_ip: 20,
            failed_checks_window: Duration::from_secs(3600),
            first_attempt_wait: Duration::from_secs(2),
        }
    }
}

/// A send, already parsed by its dialect.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub key: VerificationKey,
    pub sender: Sender,
    pub body: MessageBody,
    pub code_length: CodeLength,
    pub ttl: Ttl,
    pub max_attempts: MaxAttempts,
    pub sandbox: bool,
    pub entity_id: Option<String>,
    pub template_id: Option<String>,
    /// The countries the account's own limits let it text (`accounts limit --countries`).
    pub account_countries: DestinationCountries,
}

/// What a successful send returns.
#[derive(Debug, Clone)]
pub struct SendReceipt {
    pub verify_id: VerifyId,
    /// The message's id; `None` for sandbox sends.
    pub message_id: Option<MessageId>,
    /// The transport's answer; `None` for sandbox sends, which reach no carrier.
    pub delivery: Option<DeliveryReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Rejected(#[from] SendRejected),
    /// The destination's country is not among those sends may go to; nothing was stored.
    #[error("this server sends no SMS to numbers of {}", .0.unwrap_or("no known country"))]
    CountryNotAllowed(Option<&'static str>),
    /// As `CountryNotAllowed`, by the account's own list rather than the server's.
    #[error("this account sends no SMS to numbers of {}", .0.unwrap_or("no known country"))]
    CountryNotAllowedForAccount(Option<&'static str>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CreateError> for SendError {
    fn from(error: CreateError) -> Self {
        match error {
            CreateError::Rejected(rejected) => Self::Rejected(rejected),
            CreateError::Store(store) => Self::Store(store),
        }
    }
}

/// A freshly created account with the one copy of its secret anyone will ever see.
#[derive(Debug)]
pub struct NewCredentials {
    pub account: Account,
    pub secret_access_key: SecretAccessKey,
}

#[derive(Clone)]
pub struct VerificationService {
    store: Arc<dyn Store>,
    composer: Arc<dyn MessageComposer>,
    dispatcher: Arc<dyn Dispatcher>,
    key: Arc<ServerKey>,
    limits: Limits,
    metrics: Arc<VerificationMetrics>,
}

impl VerificationService {
    pub fn new(
        store: Arc<dyn Store>,
        composer: Arc<dyn MessageComposer>,
        dispatcher: Arc<dyn Dispatcher>,
        key: Arc<ServerKey>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            composer,
            dispatcher,
            key,
            limits,
            metrics: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the carrier can be reached now, as the transport knows it.
    pub fn carrier_link(&self) -> CarrierLink {
        self.dispatcher.carrier_link()
    }

    /// Generates a code and, in one transaction, stores its digest (with the guards applied)
    /// and the sealed message in the outbox. Once that is durable the dispatcher is told, and the
    /// first delivery attempt is awaited for at most `first_attempt_wait`.
    pub async fn send(&self, request: SendRequest) -> Result<SendReceipt, SendError> {
        let dialect = request.key.dialect;
        let sent = self.send_and_deliver(request).await;
        self.metrics.record_send(dialect, &sent);
        sent
    }

    async fn send_and_deliver(&self, request: SendRequest) -> Result<SendReceipt, SendError> {
        // The request's parts move into what is stored and what is delivered; only what both
        // need is copied.
        let SendRequest {
            key,
            sender,
            body,
            code_length,
            ttl,
            max_attempts,
            sandbox,
            entity_id,
            template_id,
            account_countries,
        } = request;
        if !self.limits.destinations.permit(&key.destination) {
            return Err(SendError::CountryNotAllowed(key.destination.country()));
        }
        if !account_countries.permit(&key.destination) {
            return Err(SendError::CountryNotAllowedForAccount(
                key.destination.country(),
            ));
        }
        let dialect = key.dialect;
        let sender = sender.to_string();
        let verify_id = VerifyId::generate();
        let code = OtpCode::generate(code_length);
        let message = self.composer.compose(&body, &code)?;
        let message_id = (!sandbox).then(MessageId::generate);
        let outbox = message_id.as_ref().map(|id| NewOutboxMessage {
            id: id.clone(),
            sealed_text: self.key.seal(message.text.as_bytes()),
            encoding: message.encoding,
            parts: message.parts,
            entity_id: entity_id.clone(),
            template_id: template_id.clone(),
            claimed_for: Some(self.dispatcher.claim()),
        });
        let to_deliver = message_id.as_ref().map(|id| OutboxMessage {
            id: id.clone(),
            verify_id: verify_id.clone(),
            to: key.destination.clone(),
            from: sender.clone(),
            text: MessageText::Open(message.text),
            encoding: message.encoding,
            parts: message.parts,
            entity_id,
            template_id,
            attempts: 0,
        });
        let verification = NewVerification {
            id: verify_id.clone(),
            digest: self.key.digest_code(key.digest_subject(&verify_id), &code),
            key,
            sender,
            ttl,
            max_attempts,
            sandbox,
            sandbox_code: sandbox.then(|| code.expose().to_owned()),
            parts: message.parts,
            outbox,
        };
        let guards = SendGuards {
            max_sends_per_destination: self.limits.max_sends_per_destination,
            window: self.limits.antispam_window,
            charge: if sandbox { 0 } else { message.parts },
        };
        self.store.create_verification(verification, guards).await?;
        let (Some(message_id), Some(to_deliver)) = (message_id, to_deliver) else {
            return Ok(SendReceipt {
                verify_id,
                message_id: None,
                delivery: None,
            });
        };
        self.metrics.record_parts(dialect, message.parts);
        let report = self
            .dispatcher
            .deliver(to_deliver, self.limits.first_attempt_wait)
            .await
            .unwrap_or_else(|| DeliveryReport {
                retry_after: None,
                // Committed and queued: the dispatcher delivers it even though the first
                // attempt did not finish in time.
                status: DeliveryStatus::Successful,
                message_id: None,
                status_code: 202,
                status_message: "queued for delivery".into(),
            });
        Ok(SendReceipt {
            verify_id,
            message_id: Some(message_id),
            delivery: Some(report),
        })
    }

    /// Checks a submitted code. A submission that cannot be a code (empty or absurdly long)
    /// still goes through the store, so it counts as an attempt like any wrong code.
    pub async fn check(
        &self,
        lookup: CheckLookup,
        submitted: &str,
        client_ip: Option<String>,
        history: CheckHistory,
    ) -> Result<CheckReport, StoreError> {
        let code = OtpCode::submitted(submitted).unwrap_or_else(|| {
            OtpCode::submitted("-").unwrap_or_else(|| unreachable!("'-' is a valid submission"))
        });
        let ip_limit = client_ip.as_ref().map(|_| IpLimit {
            max_failures: self.limits.max_failed_checks_per_ip,
            window: self.limits.failed_checks_window,
        });
        let attempt = CheckAttempt {
            candidate: Candidate::new(self.key.clone(), code),
            client_ip,
            history,
            ip_limit,
        };
        let dialect = lookup.dialect();
        let checked = self.store.check(lookup, attempt).await;
        self.metrics
            .record_check(dialect, checked.as_ref().ok().map(|report| report.outcome));
        checked
    }

    pub async fn cancel(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<CancelOutcome, StoreError> {
        self.store.cancel(account_id, id).await
    }

    pub async fn find(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<Option<Verification>, StoreError> {
        self.store.find_verification(account_id, id).await
    }
}

/// How long a looked-up account or application is reused before the store is asked again.
/// Every request needs both, and asking the store each time would cost two extra round trips; the
/// price is that a deletion made elsewhere (another node, the CLI) takes this long to bite.
pub const LOOKUP_CACHE_TTL: Duration = Duration::from_secs(2);
const LOOKUP_CACHE_MAX: usize = 10_000;

/// A small time-bounded cache of found records (never of "not found": a new account must work
/// at once). Records are shared rather than copied: every request reads one, and copying an
/// account or an application cost each request seven string allocations.
struct LookupCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, Arc<V>)>>,
}

impl<K: std::hash::Hash + Eq + Clone, V> LookupCache<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<Arc<V>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < LOOKUP_CACHE_TTL)
            .map(|(_, value)| Arc::clone(value))
    }

    fn put(&self, key: K, value: Arc<V>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= LOOKUP_CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    fn forget(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

/// An account found by its access key id, with its secret opened, and the secret a rotation
/// replaced while that is still accepted.
pub struct Credentials {
    pub account: Arc<Account>,
    /// Read through `secrets_at`, which also gives a rotation's previous secret.
    secret: SecretAccessKey,
    previous: Option<(SecretAccessKey, PreviousSecret)>,
}

impl Credentials {
    /// The secrets a request may be signed or authenticated with at `now`: the account's
    /// secret, then the one it replaced until that one's grace period ends.
    pub fn secrets_at(&self, now: Timestamp) -> impl Iterator<Item = &SecretAccessKey> {
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, stored)| stored.accepted_at(now))
            .map(|(secret, _)| secret);
        std::iter::once(&self.secret).chain(previous)
    }
}

/// Accounts and their credentials: creation with fresh keys, and lookup with the secret opened.
#[derive(Clone)]
pub struct AccountService {
    store: Arc<dyn Store>,
    key: Arc<ServerKey>,
    credentials: Arc<LookupCache<AccessKeyId, Credentials>>,
    applications: Arc<LookupCache<ApplicationId, Application>>,
}

impl AccountService {
    pub fn new(store: Arc<dyn Store>, key: Arc<ServerKey>) -> Self {
        Self {
            store,
            key,
            credentials: Arc::new(LookupCache::new()),
            applications: Arc::new(LookupCache::new()),
        }
    }

    /// A Pinpoint application by id (cached for `LOOKUP_CACHE_TTL`).
    pub async fn application(
        &self,
        id: &ApplicationId,
    ) -> Result<Option<Arc<Application>>, StoreError> {
        if let Some(application) = self.applications.get(id) {
            return Ok(Some(application));
        }
        let Some(application) = self.store.find_application(id).await? else {
            return Ok(None);
        };
        let application = Arc::new(application);
        self.applications.put(id.clone(), Arc::clone(&application));
        Ok(Some(application))
    }

    pub async fn delete_application(&self, id: &ApplicationId) -> Result<bool, StoreError> {
        self.applications.forget(id);
        self.store.delete_application(id).await
    }

    /// Creates an account with fresh credentials; the secret is stored sealed.
    pub async fn create_account(
        &self,
        name: Name,
        credits: Option<i64>,
        default_sender: Option<Sender>,
        limits: AccountLimits,
    ) -> Result<NewCredentials, StoreError> {
        let secret = SecretAccessKey::generate();
        let account = self
            .store
            .create_account(NewAccount {
                id: AccountId::generate(),
                name,
                access_key_id: AccessKeyId::generate(),
                sealed_secret: self.key.seal(secret.expose().as_bytes()),
                credits,
                default_sender: default_sender.map(|sender| sender.to_string()),
                limits,
            })
            .await?;
        Ok(NewCredentials {
            account,
            secret_access_key: secret,
        })
    }

    /// Gives the account a fresh secret in place of its old one, for a secret that leaked or
    /// is due for rotation: its access key id, applications and codes stay. The old secret is
    /// still accepted for `keep_old_for`, so that clients can move over without an outage;
    /// without it, it stops working at once on this process and within `LOOKUP_CACHE_TTL` on
    /// every other (and so does any secret an earlier rotation kept). `None` if no account has
    /// that access key id.
    pub async fn rotate_secret(
        &self,
        key: &AccessKeyId,
        keep_old_for: Option<Duration>,
    ) -> Result<Option<NewCredentials>, StoreError> {
        let secret = SecretAccessKey::generate();
        let sealed = self.key.seal(secret.expose().as_bytes());
        let keep_until = keep_old_for.map(|grace| SystemClock.now().plus(grace));
        let rotated = self.store.replace_secret(key, sealed, keep_until).await?;
        self.credentials.forget(key);
        Ok(rotated.map(|account| NewCredentials {
            account,
            secret_access_key: secret,
        }))
    }

    /// Finds an account by access key id and opens its secret, for SigV4 and basic auth
    /// (cached for `LOOKUP_CACHE_TTL`).
    pub async fn credentials(
        &self,
        key: &AccessKeyId,
    ) -> Result<Option<Arc<Credentials>>, StoreError> {
        if let Some(found) = self.credentials.get(key) {
            return Ok(Some(found));
        }
        let Some(account) = self.store.find_account_by_key(key).await? else {
            return Ok(None);
        };
        let secret = self.open_secret(&account.sealed_secret)?;
        let previous = match &account.previous_secret {
            Some(previous) => Some((self.open_secret(&previous.sealed)?, previous.clone())),
            None => None,
        };
        let found = Arc::new(Credentials {
            account: Arc::new(account),
            secret,
            previous,
        });
        self.credentials.put(key.clone(), Arc::clone(&found));
        Ok(Some(found))
    }

    fn open_secret(&self, sealed: &[u8]) -> Result<SecretAccessKey, StoreError> {
        self.key
            .open(sealed)
            .and_then(|bytes| SecretAccessKey::from_bytes(&bytes))
            .ok_or_else(|| {
                StoreError::Corrupt(
                    "an account secret does not open with this server key (was the key file \
                     replaced?)"
                        .into(),
                )
            })
    }
}
