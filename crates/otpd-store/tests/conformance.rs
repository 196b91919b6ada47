//! The store conformance suite: every guarantee the core relies on, checked against a real
//! database. Each test gets a fresh database.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::connect_raw;
use otpd_core::Clock;
use otpd_core::account::{
    AccountLimits, Application, Name, NewAccount, PreviousSecret, SmsPerHour,
};
use otpd_core::clock::ManualClock;
use otpd_core::countries::DestinationCountries;
use otpd_core::outbox::{
    AttemptOutcome, CarrierMessageId, MessageId, MessageRecord, MessageState, MessageText,
    NewOutboxMessage, OutboxBacklog, OutboxMessage, Receipt, ReceiptStored, StatusMessage,
};
use otpd_core::ports::{CreateError, DeliveryReport, DeliveryStatus, Store, StoreError};
use otpd_core::sms::Encoding;
use otpd_core::verification::{
    CancelOutcome, Candidate, CheckAttempt, CheckHistory, CheckLookup, CheckOutcome, CheckReport,
    CheckState, CheckTransition, Dialect, IpLimit, NewVerification, SendGuards, SendRejected,
    Verification, VerificationKey, VerificationStatus,
};
use otpd_core::{
    AccessKeyId, AccountId, ApplicationId, CodeLength, DigestSubject, E164, MaxAttempts, OtpCode,
    ServerKey, Timestamp, Ttl, VerifyId,
};
use otpd_store::{PgStore, PgStoreOptions, ScratchDatabase, SqliteStore};

const START: Timestamp = Timestamp(1_700_000_000_000);

/// The databases every test runs on. PostgreSQL must be reachable (`scripts/ensure-postgres`
/// starts it; `OTPD_TEST_POSTGRES_URL` names another server).
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Where a test's fresh database lives; dropping it removes the database.
struct Location {
    dir: tempfile::TempDir,
    scratch: Option<ScratchDatabase>,
}

impl Location {
    async fn new(backend: Backend) -> Self {
        let scratch = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                ScratchDatabase::create(&ScratchDatabase::server_url(), "conformance")
                    .await
                    .expect("PostgreSQL must be running for the conformance suite: run scripts/ensure-postgres"),
            ),
        };
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            scratch,
        }
    }

    /// A message's sealed text as stored, read past the store: the store never hands it out
    /// for a message that is no longer waiting.
    async fn sealed_text(&self, message: &MessageId) -> Option<Vec<u8>> {
        match &self.scratch {
            None => rusqlite::Connection::open(self.dir.path().join("otpd.db"))
                .expect("open")
                .query_row(
                    "SELECT sealed_text FROM verifications WHERE message_id = ?1",
                    [message.as_str()],
                    |row| row.get(0),
                )
                .expect("the message's row"),
            Some(scratch) => connect_raw(scratch.url())
                .await
                .query_one(
                    "SELECT sealed_text FROM outbox WHERE id = $1",
                    &[&message.as_str()],
                )
                .await
                .expect("the message's row")
                .get(0),
        }
    }

    /// How many check records the database holds, read past the store: a deleted
    /// verification's records must go with it, and the store only finds them through it.
    async fn check_records(&self) -> i64 {
        self.count("SELECT count(*) FROM checks", "SELECT count(*) FROM checks")
            .await
    }

    /// How many messages the database holds, read past the store: a deleted verification's
    /// message must go with it, and the store only finds (and delivers) one through it. SQLite
    /// keeps a message in its verification's row, PostgreSQL in a table of its own.
    async fn message_records(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM verifications WHERE message_id IS NOT NULL",
            "SELECT count(*) FROM outbox",
        )
        .await
    }

    /// The count the query for this location's database answers.
    async fn count(&self, sqlite: &str, postgres: &str) -> i64 {
        match &self.scratch {
            None => rusqlite::Connection::open(self.dir.path().join("otpd.db"))
                .expect("open")
                .query_row(sqlite, [], |row| row.get(0))
                .expect("count"),
            Some(scratch) => connect_raw(scratch.url())
                .await
                .query_one(postgres, &[])
                .await
                .expect("count")
                .get(0),
        }
    }

    async fn open(&self, clock: Arc<ManualClock>) -> Arc<dyn Store> {
        match &self.scratch {
            None => Arc::new(
                SqliteStore::open(&self.dir.path().join("otpd.db"), clock).expect("open store"),
            ),
            Some(scratch) => Arc::new(
                PgStore::connect(PgStoreOptions {
                    url: scratch.url().to_owned(),
                    pool_size: 8,
                    clock: Some(clock),
                })
                .await
                .expect("connect"),
            ),
        }
    }
}

struct Harness {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    key: Arc<ServerKey>,
    account: AccountId,
    access_key: AccessKeyId,
    location: Location,
}

async fn harness_with_credits(backend: Backend, credits: Option<i64>) -> Harness {
    let location = Location::new(backend).await;
    let clock = Arc::new(ManualClock::starting_at(START));
    let store = location.open(clock.clone()).await;
    let account = AccountId::generate();
    let access_key = AccessKeyId::generate();
    store
        .create_account(NewAccount {
            id: account.clone(),
            name: Name::parse("test").expect("name"),
            access_key_id: access_key.clone(),
            sealed_secret: vec![1, 2, 3],
            credits,
            default_sender: None,
            limits: Default::default(),
        })
        .await
        .expect("create account");
    Harness {
        store,
        clock,
        key: Arc::new(ServerKey::from_hex(&"11".repeat(32)).expect("key")),
        account,
        access_key,
        location,
    }
}

async fn harness(backend: Backend) -> Harness {
    harness_with_credits(backend, None).await
}

const UNLIMITED: SendGuards = SendGuards {
    max_sends_per_destination: 1_000,
    window: Duration::from_secs(3600),
    charge: 1,
};

impl Harness {
    fn key_for(&self, destination: &str) -> VerificationKey {
        VerificationKey {
            account_id: self.account.clone(),
            dialect: Dialect::Pinpoint,
            app: "app".into(),
            reference: "ref".into(),
            destination: E164::parse(destination).expect("number"),
        }
    }

    fn amm_key_for(&self, destination: &str) -> VerificationKey {
        VerificationKey {
            dialect: Dialect::Amm,
            app: String::new(),
            reference: String::new(),
            ..self.key_for(destination)
        }
    }

    async fn credits(&self) -> Option<i64> {
        self.store
            .find_account_by_key(&self.access_key)
            .await
            .expect("find")
            .expect("exists")
            .credits
    }

    /// A verification for `key` with a fresh id and code (6 digits, 300 s, one part).
    fn new_verification(
        &self,
        key: VerificationKey,
        max_attempts: u8,
        outbox: Option<NewOutboxMessage>,
    ) -> (NewVerification, OtpCode) {
        let id = VerifyId::generate();
        let code = OtpCode::generate(CodeLength::new(6).expect("length"));
        let verification = NewVerification {
            digest: self.key.digest_code(key.digest_subject(&id), &code),
            id,
            key,
            sender: "otpd".into(),
            ttl: Ttl::new(Duration::from_secs(300)).expect("ttl"),
            max_attempts: MaxAttempts::new(max_attempts).expect("attempts"),
            sandbox: false,
            sandbox_code: None,
            parts: 1,
            outbox,
        };
        (verification, code)
    }

    /// Creates a verification and returns its id and code.
    async fn send(
        &self,
        key: VerificationKey,
        max_attempts: u8,
        guards: SendGuards,
    ) -> Result<(VerifyId, OtpCode), CreateError> {
        let (verification, code) = self.new_verification(key, max_attempts, Some(outbox_message()));
        let id = verification.id.clone();
        self.store.create_verification(verification, guards).await?;
        Ok((id, code))
    }

    /// Whether the account's verification `id` is in the store.
    async fn is_stored(&self, id: &VerifyId) -> bool {
        self.store
            .find_verification(&self.account, id)
            .await
            .expect("find")
            .is_some()
    }

    fn attempt(&self, code: &str) -> CheckAttempt {
        CheckAttempt {
            candidate: Candidate::new(self.key.clone(), OtpCode::submitted(code).expect("code")),
            client_ip: Some("192.0.2.1".into()),
            history: CheckHistory::WithCode,
            ip_limit: None,
        }
    }

    /// Runs `count` copies of one check at once, each on a task of its own, and returns their
    /// outcomes.
    async fn check_at_once(
        &self,
        count: usize,
        lookup: CheckLookup,
        attempt: CheckAttempt,
    ) -> Vec<CheckOutcome> {
        let checks: Vec<_> = (0..count)
            .map(|_| {
                let (store, lookup, attempt) =
                    (self.store.clone(), lookup.clone(), attempt.clone());
                tokio::spawn(
                    async move { store.check(lookup, attempt).await.expect("check").outcome },
                )
            })
            .collect();
        let mut outcomes = Vec::with_capacity(count);
        for check in checks {
            outcomes.push(check.await.expect("join"));
        }
        outcomes
    }

    /// The verification as the store reports it now (it must exist).
    async fn stored(&self, id: &VerifyId) -> Verification {
        self.store
            .find_verification(&self.account, id)
            .await
            .expect("find")
            .expect("exists")
    }

    fn by_id(&self, id: &VerifyId) -> CheckLookup {
        CheckLookup::ById {
            account_id: self.account.clone(),
            id: id.clone(),
        }
    }

    async fn check(&self, lookup: CheckLookup, code: &str) -> CheckOutcome {
        self.store
            .check(lookup, self.attempt(code))
            .await
            .expect("check")
            .outcome
    }
}

/// How many of `outcomes` are `wanted`.
fn count(outcomes: &[CheckOutcome], wanted: impl Fn(&CheckOutcome) -> bool) -> usize {
    outcomes.iter().filter(|outcome| wanted(outcome)).count()
}

fn is_mismatch(outcome: &CheckOutcome) -> bool {
    matches!(outcome, CheckOutcome::Mismatch { .. })
}

fn wrong(code: &OtpCode) -> String {
    let first = code.expose().as_bytes()[0];
    let changed = if first == b'9' {
        '0'
    } else {
        char::from(first + 1)
    };
    format!("{changed}{}", &code.expose()[1..])
}

async fn right_code_verifies_once(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let (id, code) = h.send(key.clone(), 3, UNLIMITED).await.expect("send");
    assert_eq!(
        h.check(CheckLookup::ByKey(key.clone()), code.expose())
            .await,
        CheckOutcome::Verified
    );
    // By key only the live code is found; by id the history shows the reuse.
    assert_eq!(
        h.check(CheckLookup::ByKey(key), code.expose()).await,
        CheckOutcome::NotFound
    );
    assert_eq!(
        h.check(h.by_id(&id), code.expose()).await,
        CheckOutcome::AlreadyVerified
    );
    let stored = h.stored(&id).await;
    assert_eq!(stored.status, VerificationStatus::Verified);
    assert_eq!(stored.checks.len(), 2);
    assert_eq!(stored.checks[1].outcome, CheckOutcome::AlreadyVerified);
    assert_eq!(stored.checks[0].outcome, CheckOutcome::Verified);
    assert_eq!(stored.checks[0].client_ip.as_deref(), Some("192.0.2.1"));
}

async fn wrong_codes_exhaust_the_attempts(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let (id, code) = h.send(key, 2, UNLIMITED).await.expect("send");
    let bad = wrong(&code);
    assert_eq!(
        h.check(h.by_id(&id), &bad).await,
        CheckOutcome::Mismatch { exhausted: false }
    );
    assert_eq!(
        h.check(h.by_id(&id), &bad).await,
        CheckOutcome::Mismatch { exhausted: true }
    );
    assert_eq!(
        h.check(h.by_id(&id), code.expose()).await,
        CheckOutcome::AttemptsExhausted
    );
    let stored = h.stored(&id).await;
    assert_eq!(stored.status, VerificationStatus::Failed);
    assert_eq!(stored.attempts_used, 2);
    assert_eq!(
        stored.checks[0].submitted_code.as_deref(),
        Some(bad.as_str())
    );
}

async fn parallel_wrong_guesses_never_exceed_the_limit(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 5, UNLIMITED)
        .await
        .expect("send");
    let outcomes = h
        .check_at_once(200, h.by_id(&id), h.attempt(&wrong(&code)))
        .await;
    assert_eq!(count(&outcomes, is_mismatch), 5);
    let stored = h.stored(&id).await;
    assert_eq!(stored.attempts_used, 5);
    assert_eq!(
        h.check(h.by_id(&id), code.expose()).await,
        CheckOutcome::AttemptsExhausted
    );
}

async fn parallel_guesses_by_key_use_each_attempt_once(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let (id, code) = h.send(key.clone(), 5, UNLIMITED).await.expect("send");
    let outcomes = h
        .check_at_once(100, CheckLookup::ByKey(key), h.attempt(&wrong(&code)))
        .await;
    assert_eq!(count(&outcomes, is_mismatch), 5);
    assert!(
        outcomes.contains(&CheckOutcome::Mismatch { exhausted: true }),
        "the fifth wrong guess used the code up"
    );
    // Once used up the code is no longer live, so a lookup by key finds nothing.
    assert_eq!(count(&outcomes, |o| *o == CheckOutcome::NotFound), 95);
    let stored = h.stored(&id).await;
    assert_eq!(stored.attempts_used, 5);
    assert_eq!(
        stored.checks.len(),
        5,
        "one record per check that found the code"
    );
}

async fn parallel_wrong_guesses_from_one_address_never_exceed_its_limit(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 20, UNLIMITED)
        .await
        .expect("send");
    let limited = CheckAttempt {
        client_ip: Some("203.0.113.7".into()),
        ip_limit: Some(IpLimit {
            max_failures: 3,
            window: Duration::from_secs(200),
        }),
        ..h.attempt(&wrong(&code))
    };
    let outcomes = h.check_at_once(50, h.by_id(&id), limited).await;
    assert_eq!(count(&outcomes, is_mismatch), 3);
    assert_eq!(count(&outcomes, |o| *o == CheckOutcome::RateLimited), 47);
}

/// Wrong codes for many verifications at once from one address limited to 3: the address's
/// limit counts failures across codes, so 3 are compared and every other check is refused. On
/// PostgreSQL a group settles only an address's first check with the rest of the group
/// (migration 14); its others count the failures before them one by one.
async fn parallel_wrong_codes_from_one_address_never_exceed_its_limit(backend: Backend) {
    let h = harness(backend).await;
    let mut codes = Vec::new();
    for i in 0..30 {
        let destination = format!("+3934812345{i:02}");
        codes.push(
            h.send(h.amm_key_for(&destination), 5, UNLIMITED)
                .await
                .expect("send"),
        );
    }
    let mut checks = Vec::new();
    for (id, code) in codes {
        let limited = CheckAttempt {
            client_ip: Some("203.0.113.8".into()),
            ip_limit: Some(IpLimit {
                max_failures: 3,
                window: Duration::from_secs(200),
            }),
            ..h.attempt(&wrong(&code))
        };
        let store = h.store.clone();
        let lookup = h.by_id(&id);
        checks.push(tokio::spawn(
            async move { store.check(lookup, limited).await },
        ));
    }
    let mut outcomes = Vec::new();
    for check in checks {
        outcomes.push(check.await.expect("join").expect("check").outcome);
    }
    assert_eq!(count(&outcomes, is_mismatch), 3);
    assert_eq!(count(&outcomes, |o| *o == CheckOutcome::RateLimited), 27);
}

async fn parallel_right_codes_verify_exactly_once(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let outcomes = h
        .check_at_once(100, h.by_id(&id), h.attempt(code.expose()))
        .await;
    assert_eq!(
        (
            count(&outcomes, |o| *o == CheckOutcome::Verified),
            count(&outcomes, |o| *o == CheckOutcome::AlreadyVerified)
        ),
        (1, 99),
        "one verifies, every other is told it was used: {outcomes:?}"
    );
}

async fn codes_expire_by_the_store_clock(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    h.clock.advance(Duration::from_secs(299));
    let found = h.stored(&id).await;
    assert_eq!(found.status, VerificationStatus::Pending);
    h.clock.advance(Duration::from_secs(1));
    let found = h.stored(&id).await;
    assert_eq!(found.status, VerificationStatus::Expired);
    assert_eq!(found.expires_at, START.plus(Duration::from_secs(300)));
    assert_eq!(
        h.check(h.by_id(&id), code.expose()).await,
        CheckOutcome::Expired
    );
}

async fn a_new_send_cancels_the_live_code_for_the_same_key(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let (first, first_code) = h.send(key.clone(), 3, UNLIMITED).await.expect("send");
    let (_, second_code) = h.send(key.clone(), 3, UNLIMITED).await.expect("resend");
    assert_eq!(
        h.check(h.by_id(&first), first_code.expose()).await,
        CheckOutcome::Cancelled
    );
    if first_code != second_code {
        // The old code does not verify through the key either: only the newest counts.
        assert_eq!(
            h.check(CheckLookup::ByKey(key.clone()), first_code.expose())
                .await,
            CheckOutcome::Mismatch { exhausted: false }
        );
    }
    assert_eq!(
        h.check(CheckLookup::ByKey(key), second_code.expose()).await,
        CheckOutcome::Verified
    );
}

/// The system clock may step back between two sends to one key: the second is still the
/// key's live code, and the first is retired.
async fn a_resend_after_the_clock_stepped_back_replaces_the_live_code(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let (first, first_code) = h.send(key.clone(), 3, UNLIMITED).await.expect("send");
    h.clock.rewind(Duration::from_secs(5));
    let (second, second_code) = h.send(key.clone(), 3, UNLIMITED).await.expect("resend");
    assert_eq!(
        h.check(h.by_id(&first), first_code.expose()).await,
        CheckOutcome::Cancelled
    );
    assert_eq!(
        h.check(CheckLookup::ByKey(key.clone()), second_code.expose())
            .await,
        CheckOutcome::Verified
    );
    assert_eq!(h.stored(&second).await.status, VerificationStatus::Verified);
}

/// Among many codes sent to one key, each send retires the one before, and a check by key
/// finds the last.
async fn a_key_with_many_old_codes_still_finds_its_live_one(backend: Backend) {
    let h = harness(backend).await;
    let key = h.key_for("+393481234567");
    let mut sent = Vec::new();
    for _ in 0..50 {
        sent.push(h.send(key.clone(), 3, UNLIMITED).await.expect("send"));
        h.clock.advance(Duration::from_secs(1));
    }
    let (last, last_code) = sent.pop().expect("fifty sends");
    for (id, _) in &sent {
        assert_eq!(h.stored(id).await.status, VerificationStatus::Cancelled);
    }
    assert_eq!(
        h.check(CheckLookup::ByKey(key), last_code.expose()).await,
        CheckOutcome::Verified
    );
    assert_eq!(h.stored(&last).await.status, VerificationStatus::Verified);
}

async fn other_keys_are_untouched_by_a_resend(backend: Backend) {
    let h = harness(backend).await;
    let (first, code) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let mut other = h.key_for("+393481234567");
    other.reference = "other".into();
    h.send(other, 3, UNLIMITED).await.expect("send");
    assert_eq!(
        h.check(h.by_id(&first), code.expose()).await,
        CheckOutcome::Verified
    );
}

async fn the_antispam_window_allows_ten_sends_per_hour(backend: Backend) {
    let h = harness(backend).await;
    let guards = SendGuards {
        max_sends_per_destination: 10,
        ..UNLIMITED
    };
    for _ in 0..10 {
        h.send(h.key_for("+393481234567"), 3, guards)
            .await
            .expect("send");
        h.clock.advance(Duration::from_secs(60));
    }
    let refused = h.send(h.key_for("+393481234567"), 3, guards).await;
    assert!(matches!(
        refused,
        Err(CreateError::Rejected(SendRejected::TooManySends { .. }))
    ));
    // The first send leaves the window an hour after it was made, 10 minutes ago.
    assert_eq!(told_to_wait(&refused), Some(Duration::from_secs(50 * 60)));
    h.clock
        .advance(Duration::from_secs(50 * 60) - Duration::from_millis(1));
    let last_moment = h.send(h.key_for("+393481234567"), 3, guards).await;
    assert_eq!(told_to_wait(&last_moment), Some(Duration::from_millis(1)));
    h.clock.advance(Duration::from_millis(1));
    h.send(h.key_for("+393481234567"), 3, guards)
        .await
        .expect("the first send left the window");
    let refused_again = h.send(h.key_for("+393481234567"), 3, guards).await;
    assert_eq!(
        told_to_wait(&refused_again),
        Some(Duration::from_secs(60)),
        "the second send leaves the window a minute after the first"
    );
    // Another destination is not affected, nor is another account's count for this one.
    h.send(h.key_for("+393481234568"), 3, guards)
        .await
        .expect("other destination");
    let other_account = AccountId::generate();
    h.store
        .create_account(NewAccount {
            id: other_account.clone(),
            name: Name::parse("other").expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![4, 5, 6],
            credits: None,
            default_sender: None,
            limits: Default::default(),
        })
        .await
        .expect("create the other account");
    let same_number_elsewhere = VerificationKey {
        account_id: other_account,
        ..h.key_for("+393481234567")
    };
    h.send(same_number_elsewhere, 3, guards)
        .await
        .expect("another account's first send to the number");
    // And the window slides.
    h.clock.advance(Duration::from_secs(3600));
    h.send(h.key_for("+393481234567"), 3, guards)
        .await
        .expect("after the window");
}

async fn credit_is_debited_per_part_and_never_overdrawn(backend: Backend) {
    let h = harness_with_credits(backend, Some(3)).await;
    let two_parts = SendGuards {
        charge: 2,
        ..UNLIMITED
    };
    h.send(h.key_for("+393481234567"), 3, two_parts)
        .await
        .expect("exactly enough");
    let refused = h.send(h.key_for("+393481234567"), 3, two_parts).await;
    assert!(matches!(
        refused,
        Err(CreateError::Rejected(SendRejected::NoCredit))
    ));
    assert_eq!(h.credits().await, Some(1));
}

/// An account deleted between its request's authentication and the send: the store refuses
/// the send, on an account with a credit limit and on one without, and keeps nothing of it.
async fn a_send_for_a_deleted_account_is_refused(backend: Backend) {
    for credits in [None, Some(5)] {
        let h = harness_with_credits(backend, credits).await;
        assert!(h.store.delete_account(&h.access_key).await.expect("delete"));
        let message = outbox_message();
        let message_id = message.id.clone();
        let (verification, _) = h.new_verification(h.key_for("+393481234567"), 3, Some(message));
        let id = verification.id.clone();
        let refused = h.store.create_verification(verification, UNLIMITED).await;
        assert!(
            matches!(
                refused,
                Err(CreateError::Rejected(SendRejected::UnknownAccount))
            ),
            "credits {credits:?}: {refused:?}"
        );
        assert!(!h.is_stored(&id).await);
        assert!(
            h.store
                .find_message(&message_id)
                .await
                .expect("find")
                .is_none(),
            "no message is queued for it"
        );
    }
}

/// How long a send refused by a rate limit was told to wait for room.
fn told_to_wait<T>(outcome: &Result<T, CreateError>) -> Option<Duration> {
    match outcome {
        Err(CreateError::Rejected(
            SendRejected::TooManySends { retry_after } | SendRejected::HourlyLimit { retry_after },
        )) => *retry_after,
        _ => None,
    }
}

/// Sends to `count` destinations at once, each on a task of its own, and returns how many were
/// accepted; every other must have been refused as `refusal` (whatever wait it was told).
async fn sends_at_once(h: &Harness, count: usize, refusal: SendRejected) -> usize {
    sends_at_once_to(h, count, count, UNLIMITED, refusal).await
}

/// Makes `count` sends at once under `guards`, each on a task of its own, to `destinations`
/// numbers in turn, and returns how many were accepted; every other must have been refused as
/// `refusal` (whatever wait it was told).
async fn sends_at_once_to(
    h: &Harness,
    count: usize,
    destinations: usize,
    guards: SendGuards,
    refusal: SendRejected,
) -> usize {
    let sends = (0..count).map(|i| {
        let store = h.store.clone();
        let destination = format!("+3934812345{:02}", i % destinations);
        let (verification, _) = h.new_verification(h.key_for(&destination), 3, None);
        tokio::spawn(async move { store.create_verification(verification, guards).await })
    });
    let mut accepted = 0;
    for send in sends.collect::<Vec<_>>() {
        match send.await.expect("join") {
            Ok(()) => accepted += 1,
            Err(CreateError::Rejected(refused))
                if std::mem::discriminant(&refused) == std::mem::discriminant(&refusal) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    accepted
}

/// Sends to one destination at once, for three keys, under an anti-spam limit of 10: exactly
/// 10 are stored, each key keeps one live code, and every other send is refused. On PostgreSQL
/// a group stores its first send to a destination with the rest of the group in one statement
/// (migration 15) and the others one by one after it, each counting those before.
async fn parallel_sends_to_one_destination_never_pass_its_limit(backend: Backend) {
    let h = harness(backend).await;
    let guards = SendGuards {
        max_sends_per_destination: 10,
        ..UNLIMITED
    };
    let sends = (0..30).map(|i| {
        let store = h.store.clone();
        let key = VerificationKey {
            reference: format!("ref-{}", i % 3),
            ..h.key_for("+393481234567")
        };
        let (verification, _) = h.new_verification(key, 3, Some(outbox_message()));
        let id = verification.id.clone();
        (
            id,
            tokio::spawn(async move { store.create_verification(verification, guards).await }),
        )
    });
    let mut stored = Vec::new();
    for (id, send) in sends.collect::<Vec<_>>() {
        match send.await.expect("join") {
            Ok(()) => stored.push(id),
            Err(CreateError::Rejected(SendRejected::TooManySends { .. })) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored.len(), 10);
    let mut live_per_key = HashMap::new();
    for id in &stored {
        let verification = h.stored(id).await;
        if verification.status == VerificationStatus::Pending {
            *live_per_key
                .entry(verification.key.reference.clone())
                .or_insert(0) += 1;
        }
    }
    assert!(
        live_per_key.values().all(|live| *live == 1),
        "one live code per key: {live_per_key:?}"
    );
}

async fn parallel_sends_never_overdraw(backend: Backend) {
    let h = harness_with_credits(backend, Some(25)).await;
    assert_eq!(sends_at_once(&h, 60, SendRejected::NoCredit).await, 25);
    assert_eq!(h.credits().await, Some(0));
}

async fn a_failed_request_does_not_fail_its_batch_mates(backend: Backend) {
    let h = harness_with_credits(backend, Some(0)).await;
    let free = SendGuards {
        charge: 0,
        ..UNLIMITED
    };
    let paid = UNLIMITED;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let guards = if i % 2 == 0 { free } else { paid };
        let store = h.store.clone();
        let (verification, _) =
            h.new_verification(h.key_for(&format!("+3934812345{:02}", i)), 3, None);
        let id = verification.id.clone();
        tasks.push(tokio::spawn(async move {
            let result = store.create_verification(verification, guards).await;
            (i, id, result)
        }));
    }
    for task in tasks {
        let (i, id, result) = task.await.expect("join");
        let found = h
            .store
            .find_verification(&h.account, &id)
            .await
            .expect("find");
        if i % 2 == 0 {
            assert!(result.is_ok());
            assert!(
                found.is_some(),
                "a free send must survive its batch-mates' failures"
            );
        } else {
            assert!(matches!(
                result,
                Err(CreateError::Rejected(SendRejected::NoCredit))
            ));
            assert!(found.is_none(), "a refused send leaves nothing behind");
        }
    }
}

/// Two sends with one id, among others sent at the same moment: the store refuses the second as
/// a duplicate, and the others, which may share its transaction, are stored all the same.
async fn a_duplicate_id_fails_alone(backend: Backend) {
    let h = harness(backend).await;
    let mut verifications: Vec<_> = (0..20)
        .map(|i| {
            let key = h.key_for(&format!("+3934812346{i:02}"));
            h.new_verification(key, 3, Some(outbox_message())).0
        })
        .collect();
    let (mut twin, _) = h.new_verification(h.key_for("+393481234699"), 3, Some(outbox_message()));
    twin.id = verifications[7].id.clone();
    verifications.insert(8, twin);
    let results = futures_util::future::join_all(verifications.into_iter().map(|verification| {
        let store = h.store.clone();
        async move {
            let id = verification.id.clone();
            let destination = verification.key.destination.clone();
            (
                id,
                destination,
                store.create_verification(verification, UNLIMITED).await,
            )
        }
    }))
    .await;
    let duplicates = results
        .iter()
        .filter(|(_, _, result)| matches!(result, Err(CreateError::Store(StoreError::Duplicate))))
        .count();
    assert_eq!(duplicates, 1, "{results:?}");
    for (id, destination, result) in &results {
        if result.is_ok() {
            assert_eq!(&h.stored(id).await.key.destination, destination);
        }
    }
    assert_eq!(
        results
            .iter()
            .filter(|(_, _, result)| result.is_ok())
            .count(),
        20
    );
}

async fn cancel_only_live_codes(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    assert_eq!(
        h.store.cancel(&h.account, &id).await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        h.store.cancel(&h.account, &id).await.expect("cancel"),
        CancelOutcome::NotCancellable
    );
    assert_eq!(
        h.check(h.by_id(&id), code.expose()).await,
        CheckOutcome::Cancelled
    );
    let unknown = VerifyId::generate();
    assert_eq!(
        h.store.cancel(&h.account, &unknown).await.expect("cancel"),
        CancelOutcome::NotFound
    );
    // Another account cannot see or cancel it.
    let stranger = AccountId::generate();
    assert_eq!(
        h.store.cancel(&stranger, &id).await.expect("cancel"),
        CancelOutcome::NotFound
    );
    assert!(
        h.store
            .find_verification(&stranger, &id)
            .await
            .expect("find")
            .is_none()
    );
}

async fn accounts_and_applications(backend: Backend) {
    let h = harness(backend).await;
    let duplicate = h
        .store
        .create_account(NewAccount {
            id: AccountId::generate(),
            name: Name::parse("again").expect("name"),
            access_key_id: h.access_key.clone(),
            sealed_secret: vec![],
            credits: None,
            default_sender: None,
            limits: Default::default(),
        })
        .await;
    assert!(matches!(duplicate, Err(StoreError::Duplicate)));

    let app = h
        .store
        .create_application(Application {
            id: ApplicationId::generate(),
            account_id: h.account.clone(),
            name: "shop".into(),
            tags: [("team".to_owned(), "growth".to_owned())].into(),
            created_at: Timestamp(0),
        })
        .await
        .expect("create app");
    assert_eq!(app.created_at, START);
    assert_eq!(
        h.store.find_application(&app.id).await.expect("find"),
        Some(app.clone())
    );
    assert_eq!(
        h.store
            .list_applications(Some(&h.account))
            .await
            .expect("list"),
        vec![app.clone()]
    );
    assert!(
        h.store
            .list_applications(Some(&AccountId::generate()))
            .await
            .expect("list")
            .is_empty()
    );

    let credited = h
        .store
        .add_credits(&h.access_key, 5)
        .await
        .expect("credits")
        .expect("exists");
    assert_eq!(credited.credits, Some(5));
    assert!(
        h.store
            .add_credits(&AccessKeyId::generate(), 5)
            .await
            .expect("credits")
            .is_none()
    );

    let before = h
        .store
        .find_account_by_key(&h.access_key)
        .await
        .expect("find")
        .expect("exists");
    let until = Timestamp(4_000_000_000_000);
    let rotated = h
        .store
        .replace_secret(&h.access_key, vec![9, 9, 9], Some(until))
        .await
        .expect("replace")
        .expect("exists");
    assert_eq!(rotated.sealed_secret, vec![9, 9, 9]);
    assert_eq!(rotated.credits, Some(5), "only the secrets change");
    assert_eq!(
        rotated.previous_secret,
        Some(PreviousSecret {
            sealed: before.sealed_secret,
            until
        }),
        "the replaced secret is kept"
    );
    assert_eq!(
        h.store
            .find_account_by_key(&h.access_key)
            .await
            .expect("find"),
        Some(rotated)
    );
    let again = h
        .store
        .replace_secret(&h.access_key, vec![7], None)
        .await
        .expect("replace")
        .expect("exists");
    assert_eq!(again.sealed_secret, vec![7]);
    assert_eq!(
        again.previous_secret, None,
        "no grace drops every old secret"
    );
    assert!(
        h.store
            .replace_secret(&AccessKeyId::generate(), vec![1], None)
            .await
            .expect("replace")
            .is_none()
    );

    assert!(h.store.delete_application(&app.id).await.expect("delete"));
    assert!(!h.store.delete_application(&app.id).await.expect("delete"));
    assert_eq!(h.store.list_accounts().await.expect("list").len(), 1);
    let (verification, _) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let message = h.message_of(&verification).await;
    h.check(h.by_id(&verification), "000000").await;
    assert_eq!(h.location.check_records().await, 1);
    assert!(h.store.delete_account(&h.access_key).await.expect("delete"));
    assert!(!h.store.delete_account(&h.access_key).await.expect("delete"));
    assert_eq!(
        h.location.check_records().await,
        0,
        "an account's check records go with it"
    );
    assert_eq!(
        h.location.message_records().await,
        0,
        "an account's messages go with it"
    );
    assert!(
        h.store
            .find_account_by_key(&h.access_key)
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        !h.is_stored(&verification).await,
        "an account's verifications go with it"
    );
    assert!(
        h.store
            .find_message(&message)
            .await
            .expect("find")
            .is_none()
    );
    h.store.ping().await.expect("ping");
}

/// The harness account's credits, read through the database opened anew.
async fn credits_after_reopening(h: &Harness) -> Option<i64> {
    let reopened = h.location.open(h.clock.clone()).await;
    let account = reopened
        .find_account_by_key(&h.access_key)
        .await
        .expect("find")
        .expect("exists");
    account.credits
}

async fn data_survives_reopening(backend: Backend) {
    let h = harness_with_credits(backend, Some(7)).await;
    assert_eq!(credits_after_reopening(&h).await, Some(7));
}

async fn a_closed_store_refuses_calls_and_keeps_its_data(backend: Backend) {
    let h = harness_with_credits(backend, Some(7)).await;
    h.store.close().await;
    let refused = [
        h.store.ping().await,
        h.store.find_account_by_key(&h.access_key).await.map(|_| ()),
        h.store.add_credits(&h.access_key, 1).await.map(|_| ()),
    ];
    for outcome in refused {
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{backend:?}: {outcome:?}"
        );
    }
    // Closing again is harmless.
    h.store.close().await;
    assert_eq!(credits_after_reopening(&h).await, Some(7));
}

async fn one_ip_address_gets_a_bounded_number_of_wrong_checks(backend: Backend) {
    let h = harness(backend).await;
    let limit = IpLimit {
        max_failures: 3,
        window: Duration::from_secs(200),
    };
    let limited = |code: &str, ip: &str| CheckAttempt {
        client_ip: Some(ip.into()),
        ip_limit: Some(limit),
        ..h.attempt(code)
    };
    let mut codes = Vec::new();
    for i in 0..2 {
        codes.push(
            h.send(h.key_for(&format!("+39348123450{i}")), 5, UNLIMITED)
                .await
                .expect("send"),
        );
    }
    let (first, first_code) = &codes[0];
    let (second, second_code) = &codes[1];
    for _ in 0..2 {
        let report = h
            .store
            .check(h.by_id(first), limited(&wrong(first_code), "203.0.113.7"))
            .await
            .expect("check");
        assert!(matches!(report.outcome, CheckOutcome::Mismatch { .. }));
    }
    h.clock.advance(Duration::from_secs(30));
    let report = h
        .store
        .check(h.by_id(second), limited(&wrong(second_code), "203.0.113.7"))
        .await
        .expect("check");
    assert!(matches!(report.outcome, CheckOutcome::Mismatch { .. }));
    assert_eq!(
        report.retry_after, None,
        "only a refused check is told to wait"
    );
    // The limit spans the account's codes; the right code is not even compared now.
    let report = h
        .store
        .check(
            h.by_id(second),
            limited(second_code.expose(), "203.0.113.7"),
        )
        .await
        .expect("check");
    assert_eq!(report.outcome, CheckOutcome::RateLimited);
    assert_eq!(
        report.retry_after,
        Some(Duration::from_secs(170)),
        "the first two wrong codes, 30 s ago, leave the 200 s window in 170 s"
    );
    // Another address is unaffected, and the window slides.
    let report = h
        .store
        .check(
            h.by_id(second),
            limited(second_code.expose(), "203.0.113.8"),
        )
        .await
        .expect("check");
    assert_eq!(report.outcome, CheckOutcome::Verified);
    h.clock.advance(Duration::from_secs(201));
    let report = h
        .store
        .check(h.by_id(first), limited(first_code.expose(), "203.0.113.7"))
        .await
        .expect("check");
    assert_eq!(report.outcome, CheckOutcome::Verified);
}

fn outbox_message() -> NewOutboxMessage {
    NewOutboxMessage {
        id: MessageId::generate(),
        sealed_text: b"sealed".to_vec(),
        encoding: Encoding::Gsm7,
        parts: 1,
        entity_id: None,
        template_id: Some("tpl".into()),
        claimed_for: None,
    }
}

fn accepted(id: &str) -> AttemptOutcome {
    AttemptOutcome::Accepted(DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::Successful,
        message_id: Some(carrier_id(id)),
        status_code: 200,
        status_message: "accepted".into(),
    })
}

/// A carrier's answer to a message it did not take.
fn unsent(status: DeliveryStatus) -> DeliveryReport {
    DeliveryReport {
        retry_after: None,
        status,
        message_id: None,
        status_code: 200,
        status_message: "ok".into(),
    }
}

const LEASE: Duration = Duration::from_secs(30);

impl Harness {
    /// Sends to three destinations and claims their messages, as a dispatcher would.
    async fn three_messages_claimed(&self) -> Vec<OutboxMessage> {
        for destination in ["+393481234567", "+393481234568", "+393481234569"] {
            self.send(self.key_for(destination), 3, UNLIMITED)
                .await
                .expect("send");
        }
        let claimed = self.store.claim_outbox(10, LEASE).await.expect("claim");
        assert_eq!(claimed.len(), 3);
        claimed
    }

    async fn message_of(&self, id: &VerifyId) -> MessageId {
        let found = self
            .store
            .find_verification(&self.account, id)
            .await
            .expect("find")
            .expect("exists");
        MessageId::parse(&found.message_id.expect("has a message")).expect("message id")
    }
}

async fn checks_report_the_message_id(backend: Backend) {
    let h = harness(backend).await;
    let (id, code) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let message = h.message_of(&id).await;
    let checked = h
        .store
        .check(h.by_id(&id), h.attempt(code.expose()))
        .await
        .expect("check");
    assert_eq!(checked.message_id.as_deref(), Some(message.as_str()));
    let unknown = h
        .store
        .check(h.by_id(&VerifyId::generate()), h.attempt("1234"))
        .await
        .expect("check");
    assert_eq!(
        unknown,
        CheckReport {
            outcome: CheckOutcome::NotFound,
            message_id: None,
            retry_after: None,
        }
    );
}

async fn the_outbox_hands_out_each_message_once_per_lease(backend: Backend) {
    let h = harness(backend).await;
    let (id, _) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let claimed = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let message = &claimed[0];
    assert_eq!(message.verify_id, id);
    assert_eq!(message.to.as_str(), "+393481234567");
    assert!(matches!(&message.text, MessageText::Sealed(sealed) if sealed == b"sealed"));
    assert_eq!(message.template_id.as_deref(), Some("tpl"));
    assert_eq!(message.attempts, 0);
    assert!(
        h.store
            .claim_outbox(10, LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "leased"
    );
    // A node that died mid-send: its lease runs out and the message comes back.
    h.clock.advance(LEASE);
    let again = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    h.store
        .finish_attempt(&again[0].id, accepted("carrier-1"))
        .await
        .expect("finish");
    h.clock.advance(LEASE * 2);
    assert!(
        h.store
            .claim_outbox(10, LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "sent is final"
    );
    let record = h.stored_message(&again[0].id).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.carrier_message_id.as_deref(), Some("carrier-1"));
    assert_eq!(record.sent_at, Some(h.clock.now().minus(LEASE * 2)));
    assert_eq!(
        record.next_attempt_at, None,
        "a sent message has no next attempt"
    );
}

async fn retries_wait_for_their_time(backend: Backend) {
    let h = harness(backend).await;
    h.send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let claimed = h.store.claim_outbox(10, LEASE).await.expect("claim");
    let report = DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::Throttled,
        message_id: None,
        status_code: 88,
        status_message: "throttled".into(),
    };
    h.store
        .finish_attempt(
            &claimed[0].id,
            AttemptOutcome::Retry {
                report,
                retry_after: Duration::from_secs(5),
            },
        )
        .await
        .expect("finish");
    assert_eq!(
        h.stored_message(&claimed[0].id).await.next_attempt_at,
        Some(h.clock.now().plus(Duration::from_secs(5))),
        "the record says when the retry is due"
    );
    h.clock.advance(Duration::from_secs(4));
    assert!(
        h.store
            .claim_outbox(10, LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(
        h.store.claim_outbox(10, LEASE).await.expect("claim").len(),
        1
    );
    let record = h.stored_message(&claimed[0].id).await;
    assert_eq!(record.delivery_status.as_deref(), Some("THROTTLED"));
    assert_eq!(record.state, MessageState::Pending);
}

async fn expired_or_cancelled_codes_are_never_handed_out(backend: Backend) {
    let h = harness(backend).await;
    let (expiring, _) = h
        .send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    let (cancelled, _) = h
        .send(h.key_for("+393481234568"), 3, UNLIMITED)
        .await
        .expect("send");
    h.store
        .cancel(&h.account, &cancelled)
        .await
        .expect("cancel");
    h.clock.advance(Duration::from_secs(300));
    assert!(
        h.store
            .claim_outbox(10, LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
    for id in [expiring, cancelled] {
        let message = h.message_of(&id).await;
        let record = h.stored_message(&message).await;
        assert_eq!(record.state, MessageState::Dropped);
    }
}

/// The sealed text holds the code: it is kept only while the message may still be sent.
async fn a_final_message_keeps_no_sealed_text(backend: Backend) {
    let h = harness(backend).await;
    let claimed = h.three_messages_claimed().await;
    let (expiring, _) = h
        .send(h.key_for("+393481234570"), 3, UNLIMITED)
        .await
        .expect("send");
    let expiring = h.message_of(&expiring).await;
    assert_eq!(
        h.location.sealed_text(&expiring).await.as_deref(),
        Some(&b"sealed"[..]),
        "a message waiting for its first attempt keeps its text"
    );
    h.store
        .finish_attempts(Arc::from(vec![
            (claimed[0].id.clone(), accepted("carrier-1")),
            (
                claimed[1].id.clone(),
                AttemptOutcome::Retry {
                    report: unsent(DeliveryStatus::Throttled),
                    retry_after: Duration::from_secs(5),
                },
            ),
            (
                claimed[2].id.clone(),
                AttemptOutcome::Failed(unsent(DeliveryStatus::PermanentFailure)),
            ),
        ]))
        .await
        .expect("finish");
    assert_eq!(h.location.sealed_text(&claimed[0].id).await, None, "sent");
    assert_eq!(
        h.location.sealed_text(&claimed[1].id).await.as_deref(),
        Some(&b"sealed"[..]),
        "a message to retry keeps its text"
    );
    assert_eq!(h.location.sealed_text(&claimed[2].id).await, None, "failed");
    // The fourth code expires before its message is tried: the message is dropped.
    h.clock.advance(Duration::from_secs(300));
    h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(h.location.sealed_text(&expiring).await, None, "dropped");
}

async fn releasing_claims_after_a_crash(backend: Backend) {
    let h = harness(backend).await;
    h.send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    assert_eq!(
        h.store.claim_outbox(10, LEASE).await.expect("claim").len(),
        1
    );
    match backend {
        // One process owns the file: at start it releases what its previous life held.
        Backend::Sqlite => {
            assert_eq!(h.store.release_claims().await.expect("release"), 1)
        }
        // Other nodes may be alive: a dead node's claims run out with their lease instead.
        Backend::Postgres => {
            assert_eq!(h.store.release_claims().await.expect("release"), 0);
            assert!(
                h.store
                    .claim_outbox(10, LEASE)
                    .await
                    .expect("claim")
                    .is_empty()
            );
            h.clock.advance(LEASE);
        }
    }
    assert_eq!(
        h.store.claim_outbox(10, LEASE).await.expect("claim").len(),
        1
    );
}

async fn outcomes_are_stored_in_batches(backend: Backend) {
    let h = harness(backend).await;
    let claimed = h.three_messages_claimed().await;
    let report = |status, message_id: Option<&str>| DeliveryReport {
        retry_after: None,
        status,
        message_id: message_id.and_then(CarrierMessageId::parse),
        status_code: 200,
        status_message: "ok".into(),
    };
    h.store
        .finish_attempts(Arc::from(vec![
            (
                claimed[0].id.clone(),
                AttemptOutcome::Accepted(report(DeliveryStatus::Successful, Some("carrier-1"))),
            ),
            (
                claimed[1].id.clone(),
                AttemptOutcome::Retry {
                    report: report(DeliveryStatus::Throttled, None),
                    retry_after: Duration::from_secs(5),
                },
            ),
            (
                claimed[2].id.clone(),
                AttemptOutcome::Failed(report(DeliveryStatus::PermanentFailure, None)),
            ),
        ]))
        .await
        .expect("finish");
    let state = |n: usize| h.stored_message(&claimed[n].id);
    let sent = state(0).await;
    assert_eq!(sent.state, MessageState::Sent);
    assert_eq!(sent.carrier_message_id.as_deref(), Some("carrier-1"));
    assert_eq!(sent.sent_at, Some(h.clock.now()));
    assert_eq!(state(1).await.state, MessageState::Pending);
    assert_eq!(state(1).await.delivery_status.as_deref(), Some("THROTTLED"));
    assert_eq!(state(2).await.state, MessageState::Failed);
    h.clock.advance(Duration::from_secs(5));
    let again = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(
        again.len(),
        1,
        "only the retry is due again, and only after its delay"
    );
    assert_eq!(again[0].id, claimed[1].id);
}

async fn a_stopping_node_gives_its_claims_back(backend: Backend) {
    let h = harness(backend).await;
    for destination in ["+393481234567", "+393481234568"] {
        h.send(h.key_for(destination), 3, UNLIMITED)
            .await
            .expect("send");
    }
    let claimed = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        h.store
            .release_messages(&[claimed[0].id.clone()])
            .await
            .expect("release"),
        1
    );
    let again = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(again.len(), 1, "only the released claim is due again");
    assert_eq!(again[0].id, claimed[0].id);
}

async fn receipts_update_the_delivery_status(backend: Backend) {
    let h = harness(backend).await;
    let (id, message_id) = h.sent_and_accepted("smsc-42").await;
    let found = h.stored(&id).await;
    assert_eq!(found.delivery_status.as_deref(), Some("SUCCESSFUL"));
    let at = h.clock.now().plus(Duration::from_secs(3));
    let receipt = Receipt {
        carrier_message_id: carrier_id("smsc-42"),
        state: "DELIVRD".into(),
        at,
    };
    assert_eq!(
        h.store
            .record_receipt(receipt.clone())
            .await
            .expect("receipt"),
        ReceiptStored::New
    );
    assert_eq!(
        h.store
            .record_receipt(Receipt {
                carrier_message_id: carrier_id("other"),
                ..receipt.clone()
            })
            .await
            .expect("receipt"),
        ReceiptStored::UnknownMessage
    );
    // The SMSC delivers the same receipt again (it missed the acknowledgement), later: it is
    // known, and the first one's time stays.
    assert_eq!(
        h.store
            .record_receipt(Receipt {
                at: at.plus(Duration::from_secs(30)),
                ..receipt.clone()
            })
            .await
            .expect("receipt"),
        ReceiptStored::Repeated
    );
    let found = h.stored(&id).await;
    assert_eq!(found.delivery_status.as_deref(), Some("DELIVRD"));
    assert_eq!(found.delivery_updated_at, Some(at));
    let record = h.stored_message(&message_id).await;
    assert_eq!(record.receipt_state.as_deref(), Some("DELIVRD"));
    assert_eq!(record.receipt_at, Some(at));
}

async fn a_receipt_in_another_state_replaces_the_one_before(backend: Backend) {
    let h = harness(backend).await;
    let (id, message_id) = h.sent_and_accepted("smsc-43").await;
    let at = h.clock.now().plus(Duration::from_secs(3));
    let enroute = Receipt {
        carrier_message_id: carrier_id("smsc-43"),
        state: "ENROUTE".into(),
        at,
    };
    let delivered = Receipt {
        state: "DELIVRD".into(),
        at: at.plus(Duration::from_secs(5)),
        ..enroute.clone()
    };
    for (receipt, stored) in [
        (&enroute, ReceiptStored::New),
        (&delivered, ReceiptStored::New),
        (&delivered, ReceiptStored::Repeated),
    ] {
        assert_eq!(
            h.store
                .record_receipt(receipt.clone())
                .await
                .expect("receipt"),
            stored,
            "{}",
            receipt.state
        );
    }
    assert_eq!(
        h.stored(&id).await.delivery_status.as_deref(),
        Some("DELIVRD")
    );
    let record = h.stored_message(&message_id).await;
    assert_eq!(record.receipt_state.as_deref(), Some("DELIVRD"));
    assert_eq!(record.receipt_at, Some(delivered.at));
}

async fn a_message_committed_for_immediate_delivery_is_claimed_from_the_start(backend: Backend) {
    let h = harness(backend).await;
    let message = NewOutboxMessage {
        claimed_for: Some(LEASE),
        ..outbox_message()
    };
    let message_id = message.id.clone();
    let (verification, _) = h.new_verification(h.key_for("+393481234567"), 3, Some(message));
    h.store
        .create_verification(verification, UNLIMITED)
        .await
        .expect("send");
    assert!(
        h.store
            .claim_outbox(10, LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "its sender holds it"
    );
    let record = h.stored_message(&message_id).await;
    assert_eq!(record.attempts, 1);
    // The sender died: the claim runs out and the message is anyone's.
    h.clock.advance(LEASE);
    let claimed = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1);
}

async fn the_backlog_counts_what_waits_for_delivery(backend: Backend) {
    let h = harness(backend).await;
    let backlog = || async { h.store.outbox_backlog().await.expect("backlog") };
    assert_eq!(backlog().await, OutboxBacklog::default(), "nothing waits");
    h.send(h.key_for("+393481234567"), 3, UNLIMITED)
        .await
        .expect("send");
    h.clock.advance(Duration::from_secs(10));
    h.send(h.key_for("+393481234568"), 3, UNLIMITED)
        .await
        .expect("send");
    h.clock.advance(Duration::from_secs(5));
    let waiting = OutboxBacklog {
        pending: 2,
        oldest_age: Duration::from_secs(15),
    };
    assert_eq!(backlog().await, waiting);
    let claimed = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(backlog().await, waiting, "being sent is still waiting");
    let throttled = DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::Throttled,
        message_id: None,
        status_code: 88,
        status_message: "throttled".into(),
    };
    h.store
        .finish_attempts(Arc::from(vec![
            (claimed[0].id.clone(), accepted("carrier-1")),
            (
                claimed[1].id.clone(),
                AttemptOutcome::Retry {
                    report: throttled.clone(),
                    retry_after: Duration::from_secs(5),
                },
            ),
        ]))
        .await
        .expect("finish");
    assert_eq!(
        backlog().await,
        OutboxBacklog {
            pending: 1,
            oldest_age: Duration::from_secs(5),
        },
        "a retry still waits; a message handed over does not"
    );
    h.clock.advance(Duration::from_secs(5));
    let retried = h.store.claim_outbox(10, LEASE).await.expect("claim");
    assert_eq!(retried.len(), 1);
    h.store
        .finish_attempt(&retried[0].id, AttemptOutcome::Failed(throttled))
        .await
        .expect("finish");
    assert_eq!(backlog().await, OutboxBacklog::default(), "given up on");
}

/// A status message is whatever a transport's error said, which may carry what a peer sent. In
/// one batch with others, a NUL (which PostgreSQL's text cannot hold) and 10,000 characters
/// are stored as `StatusMessage` made them, and the other outcomes with them.
async fn outcomes_with_odd_status_messages_are_stored_with_their_batch(backend: Backend) {
    let h = harness(backend).await;
    let claimed = h.three_messages_claimed().await;
    let failed = |text: String| {
        AttemptOutcome::Failed(DeliveryReport {
            retry_after: None,
            status: DeliveryStatus::PermanentFailure,
            message_id: None,
            status_code: 0,
            status_message: text.into(),
        })
    };
    h.store
        .finish_attempts(Arc::from(vec![
            (claimed[0].id.clone(), failed("link\0failure".into())),
            (claimed[1].id.clone(), failed("x".repeat(10_000))),
            (claimed[2].id.clone(), accepted("carrier-1")),
        ]))
        .await
        .expect("the whole batch is stored");
    let stored = |index: usize| h.stored_message(&claimed[index].id);
    assert_eq!(
        stored(0).await.status_message.as_deref(),
        Some("link failure")
    );
    assert_eq!(
        stored(1).await.status_message.map(|text| text.len()),
        Some(StatusMessage::MAX_CHARS)
    );
    assert_eq!(stored(2).await.state, MessageState::Sent);
}

async fn failed_messages_are_listed_newest_first(backend: Backend) {
    let h = harness(backend).await;
    let claimed = h.three_messages_claimed().await;
    let refused = |text: &str| {
        AttemptOutcome::Failed(DeliveryReport {
            retry_after: None,
            status: DeliveryStatus::PermanentFailure,
            message_id: None,
            status_code: 400,
            status_message: text.into(),
        })
    };
    h.store
        .finish_attempt(&claimed[0].id, refused("first"))
        .await
        .expect("finish");
    h.clock.advance(Duration::from_secs(1));
    h.store
        .finish_attempt(&claimed[1].id, accepted("carrier-1"))
        .await
        .expect("finish");
    h.store
        .finish_attempt(&claimed[2].id, refused("second"))
        .await
        .expect("finish");
    let failed = h.store.failed_messages(10).await.expect("list");
    let listed: Vec<_> = failed
        .iter()
        .map(|record| (record.id.clone(), record.status_message.as_deref()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (claimed[2].id.clone(), Some("second")),
            (claimed[0].id.clone(), Some("first")),
        ]
    );
    assert!(
        failed
            .iter()
            .all(|record| record.state == MessageState::Failed)
    );
    assert_eq!(h.store.failed_messages(1).await.expect("list").len(), 1);
}

async fn retention_purges_old_verifications_in_batches(backend: Backend) {
    let h = harness(backend).await;
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(
            h.send(h.key_for(&format!("+39348123450{i}")), 3, UNLIMITED)
                .await
                .expect("send")
                .0,
        );
    }
    h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let (recent, _) = h
        .send(h.key_for("+393481234599"), 3, UNLIMITED)
        .await
        .expect("send");
    for id in old.iter().chain([&recent]) {
        h.check(h.by_id(id), "000000").await;
    }
    assert_eq!(h.location.check_records().await, 6);
    let cutoff = h.clock.now().minus(Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        h.store.purge_verifications(cutoff, 3).await.expect("purge"),
        3
    );
    assert_eq!(
        h.store.purge_verifications(cutoff, 3).await.expect("purge"),
        2
    );
    assert_eq!(
        h.store.purge_verifications(cutoff, 3).await.expect("purge"),
        0
    );
    for id in old {
        assert!(!h.is_stored(&id).await);
    }
    assert!(h.is_stored(&recent).await);
    assert_eq!(
        h.location.check_records().await,
        1,
        "the purged verifications' check records went with them"
    );
    // Their messages went with them; the recent one's stays.
    assert_eq!(
        h.location.message_records().await,
        1,
        "the purged verifications' messages went with them"
    );
    assert_eq!(
        h.store.claim_outbox(10, LEASE).await.expect("claim").len(),
        1
    );
}

/// How a fresh verification (2 attempts, 300 s) is brought to the state a check then meets.
#[derive(Debug, Clone, Copy)]
enum Before {
    Fresh,
    OneWrongCode,
    TwoWrongCodes,
    Verified,
    Cancelled,
    PastItsExpiry,
    ExpiryRecorded,
}

impl Before {
    const ALL: [Self; 7] = [
        Self::Fresh,
        Self::OneWrongCode,
        Self::TwoWrongCodes,
        Self::Verified,
        Self::Cancelled,
        Self::PastItsExpiry,
        Self::ExpiryRecorded,
    ];

    /// Whether the table still says `pending` (what a lookup by key finds).
    fn pending_in_the_table(self) -> bool {
        matches!(self, Self::Fresh | Self::OneWrongCode | Self::PastItsExpiry)
    }

    async fn reach(self, h: &Harness, key: VerificationKey) -> (VerifyId, OtpCode) {
        let (id, code) = h.send(key, 2, UNLIMITED).await.expect("send");
        let bad = wrong(&code);
        match self {
            Self::Fresh => {}
            Self::OneWrongCode => {
                h.check(h.by_id(&id), &bad).await;
            }
            Self::TwoWrongCodes => {
                h.check(h.by_id(&id), &bad).await;
                h.check(h.by_id(&id), &bad).await;
            }
            Self::Verified => {
                h.check(h.by_id(&id), code.expose()).await;
            }
            Self::Cancelled => {
                h.store.cancel(&h.account, &id).await.expect("cancel");
            }
            Self::PastItsExpiry => h.clock.advance(Duration::from_secs(300)),
            Self::ExpiryRecorded => {
                h.clock.advance(Duration::from_secs(300));
                h.check(h.by_id(&id), code.expose()).await;
            }
        }
        (id, code)
    }
}

/// The store's check (PostgreSQL's runs in SQL) against the state machine in otpd-core, in every
/// state the port can reach, for both dialects (digests bound to the key and to the id), by id
/// and by key, with the right and a wrong code.
async fn checks_follow_the_state_machine_in_every_state(backend: Backend) {
    let h = harness(backend).await;
    let mut case = 0;
    for before in Before::ALL {
        for dialect in [Dialect::Pinpoint, Dialect::Amm] {
            for right_code in [true, false] {
                for by_key in [true, false] {
                    case += 1;
                    let destination = format!("+3934810{case:05}");
                    let key = match dialect {
                        Dialect::Pinpoint => h.key_for(&destination),
                        Dialect::Amm => h.amm_key_for(&destination),
                    };
                    let (id, code) = before.reach(&h, key.clone()).await;
                    let found = h.stored(&id).await;
                    let state = CheckState {
                        status: found.status,
                        expires_at: found.expires_at,
                        attempts_used: found.attempts_used,
                        max_attempts: found.max_attempts,
                    };
                    let now = h.clock.now();
                    let expected = if by_key && !before.pending_in_the_table() {
                        CheckTransition {
                            outcome: CheckOutcome::NotFound,
                            next: state,
                        }
                    } else {
                        state.check(now, || right_code)
                    };
                    let lookup = if by_key {
                        CheckLookup::ByKey(key)
                    } else {
                        h.by_id(&id)
                    };
                    let submitted = if right_code {
                        code.expose().to_owned()
                    } else {
                        wrong(&code)
                    };
                    let what = format!(
                        "{before:?}, {dialect:?}, right code {right_code}, by key {by_key}"
                    );
                    assert_eq!(
                        h.check(lookup, &submitted).await,
                        expected.outcome,
                        "{what}"
                    );
                    let after = h.stored(&id).await;
                    assert_eq!(after.status, expected.next.status_at(now), "{what}");
                    assert_eq!(after.attempts_used, expected.next.attempts_used, "{what}");
                }
            }
        }
    }
}

/// Codes sent before digests could be bound to a Pinpoint key are bound to their id, and still
/// verify by key; a key-bound code still verifies by id. Either way an attempt is used once.
async fn codes_verify_whatever_their_digest_is_bound_to(backend: Backend) {
    let h = harness(backend).await;
    for bound_to_id in [true, false] {
        let key = h.key_for(if bound_to_id {
            "+393481234567"
        } else {
            "+393481234568"
        });
        let (mut verification, code) = h.new_verification(key.clone(), 3, None);
        if bound_to_id {
            verification.digest = h
                .key
                .digest_code(DigestSubject::Verification(&verification.id), &code);
        }
        let id = verification.id.clone();
        h.store
            .create_verification(verification, UNLIMITED)
            .await
            .expect("send");
        let (first, second) = if bound_to_id {
            (CheckLookup::ByKey(key.clone()), h.by_id(&id))
        } else {
            (h.by_id(&id), CheckLookup::ByKey(key.clone()))
        };
        assert_eq!(
            h.check(first, &wrong(&code)).await,
            CheckOutcome::Mismatch { exhausted: false }
        );
        assert_eq!(h.stored(&id).await.attempts_used, 1);
        assert_eq!(h.check(second, code.expose()).await, CheckOutcome::Verified);
        let stored = h.stored(&id).await;
        assert_eq!(stored.attempts_used, 2);
        assert_eq!(stored.checks.len(), 2);
    }
}

/// Runs every test above once per backend: `sqlite::name` and `postgres::name`.
impl Harness {
    /// Gives the harness's account an hourly limit of `parts` SMS parts.
    async fn limit_per_hour(&self, parts: u32) {
        let limits = AccountLimits {
            sms_per_hour: SmsPerHour::new(parts),
            ..AccountLimits::default()
        };
        self.store
            .set_account_limits(&self.access_key, &limits)
            .await
            .expect("set limits")
            .expect("the account exists");
    }

    /// Sends a code and stores its delivery as accepted by the carrier under `carrier_id`:
    /// the verification's id and its message's.
    async fn sent_and_accepted(&self, carrier_id: &str) -> (VerifyId, MessageId) {
        let (id, _) = self
            .send(self.key_for("+393481234567"), 3, UNLIMITED)
            .await
            .expect("send");
        let claimed = self.store.claim_outbox(10, LEASE).await.expect("claim");
        self.store
            .finish_attempt(&claimed[0].id, accepted(carrier_id))
            .await
            .expect("finish");
        (id, claimed[0].id.clone())
    }

    async fn stored_message(&self, id: &MessageId) -> MessageRecord {
        self.store
            .find_message(id)
            .await
            .expect("find")
            .expect("exists")
    }

    /// The parts the harness's account sent in its last hour (the store leaves out an account
    /// that sent none).
    async fn sms_in_last_hour(&self) -> u64 {
        let counted = self.store.sms_in_last_hour().await.expect("read");
        counted.get(&self.access_key).copied().unwrap_or(0)
    }

    async fn find_account_by_key(&self, key: &AccessKeyId) -> otpd_core::account::Account {
        self.store
            .find_account_by_key(key)
            .await
            .expect("find")
            .expect("exists")
    }
}

/// Whether a send was refused by the account's hourly limit.
fn past_hourly_limit<T>(outcome: &Result<T, CreateError>) -> bool {
    matches!(
        outcome,
        Err(CreateError::Rejected(SendRejected::HourlyLimit { .. }))
    )
}

fn charging(parts: u32) -> SendGuards {
    SendGuards {
        charge: parts,
        ..UNLIMITED
    }
}

/// START is 13 min 20 s into its clock hour.
const REST_OF_START_HOUR: Duration = Duration::from_millis(2_800_000);

/// START is 3 min 20 s into its 5-minute bucket (`SmsWindow`): a part sent then is counted
/// until that bucket is 65 minutes old, 61 min 40 s later.
const START_COUNTED_FOR: Duration = Duration::from_millis(3_700_000);

async fn the_hourly_limit_counts_parts_in_any_sixty_minutes(backend: Backend) {
    for credits in [None, Some(100)] {
        let h = harness_with_credits(backend, credits).await;
        h.limit_per_hour(5).await;
        for destination in ["+393481234501", "+393481234502"] {
            h.send(h.key_for(destination), 3, charging(2))
                .await
                .expect("within the hour's limit");
        }
        let (refused, _) = h.new_verification(h.key_for("+393481234503"), 3, None);
        let refused_id = refused.id.clone();
        let outcome = h.store.create_verification(refused, charging(2)).await;
        assert!(
            past_hourly_limit(&outcome),
            "credits {credits:?}: {outcome:?}"
        );
        assert_eq!(
            told_to_wait(&outcome),
            Some(START_COUNTED_FOR),
            "room comes when the parts sent at START leave the count"
        );
        assert!(
            !h.is_stored(&refused_id).await,
            "a refused send keeps nothing"
        );
        assert_eq!(
            h.credits().await,
            credits.map(|c| c - 4),
            "a refused send is not charged"
        );
        h.send(h.key_for("+393481234504"), 3, charging(1))
            .await
            .expect("the hour's last part");
        h.send(h.key_for("+393481234505"), 3, charging(0))
            .await
            .expect("a sandbox send costs nothing and is not counted");
        assert_eq!(h.sms_in_last_hour().await, 5);
        // A clock hour ending is no reset: a count per clock hour let the whole limit through
        // again here, minutes after it was spent.
        h.clock.advance(REST_OF_START_HOUR);
        let next_hour = h.send(h.key_for("+393481234506"), 3, charging(1)).await;
        assert!(past_hourly_limit(&next_hour), "{next_hour:?}");
        assert_eq!(
            told_to_wait(&next_hour),
            Some(START_COUNTED_FOR - REST_OF_START_HOUR)
        );
        h.clock
            .advance(START_COUNTED_FOR - REST_OF_START_HOUR - Duration::from_millis(1));
        let last_moment = h.send(h.key_for("+393481234507"), 3, charging(1)).await;
        assert!(past_hourly_limit(&last_moment), "{last_moment:?}");
        assert_eq!(told_to_wait(&last_moment), Some(Duration::from_millis(1)));
        h.clock.advance(Duration::from_millis(1));
        for destination in ["+393481234508", "+393481234509"] {
            h.send(h.key_for(destination), 3, charging(2))
                .await
                .expect("the parts of over an hour ago no longer count");
        }
        assert_eq!(h.sms_in_last_hour().await, 4);
        h.clock.advance(Duration::from_secs(3900));
        assert_eq!(
            h.sms_in_last_hour().await,
            0,
            "an hour and five minutes without sends"
        );
        assert_eq!(h.credits().await, credits.map(|c| c - 9));
    }
}

/// One read counts every account's last hour, for listings of many accounts.
async fn every_accounts_last_hour_is_read_at_once(backend: Backend) {
    let h = harness(backend).await;
    h.limit_per_hour(50).await;
    let mut others = Vec::new();
    for name in ["second", "silent"] {
        let account = NewAccount {
            id: AccountId::generate(),
            name: Name::parse(name).expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![7],
            credits: Some(10),
            default_sender: None,
            limits: Default::default(),
        };
        others.push((account.id.clone(), account.access_key_id.clone()));
        h.store.create_account(account).await.expect("create");
    }
    h.send(h.key_for("+393481234501"), 3, charging(2))
        .await
        .expect("the harness's account");
    let second = VerificationKey {
        account_id: others[0].0.clone(),
        ..h.key_for("+393481234502")
    };
    h.send(second, 3, charging(3))
        .await
        .expect("an account with credit and no hourly limit is counted too");
    let counted = h.store.sms_in_last_hour().await.expect("read");
    assert_eq!(
        counted,
        HashMap::from([(h.access_key.clone(), 2), (others[0].1.clone(), 3)]),
        "the account that sent nothing is left out"
    );
}

/// Each part leaves the count an hour after it was sent, not all at once.
async fn parts_leave_the_count_an_hour_after_they_were_sent(backend: Backend) {
    let h = harness(backend).await;
    h.limit_per_hour(5).await;
    h.send(h.key_for("+393481234501"), 3, charging(2))
        .await
        .expect("first");
    h.clock.advance(Duration::from_secs(30 * 60));
    h.send(h.key_for("+393481234502"), 3, charging(3))
        .await
        .expect("second, half an hour later");
    h.clock
        .advance(START_COUNTED_FOR - Duration::from_secs(30 * 60));
    assert_eq!(
        h.sms_in_last_hour().await,
        3,
        "the first send's parts are over an hour old"
    );
    let too_many = h.send(h.key_for("+393481234503"), 3, charging(3)).await;
    assert!(
        past_hourly_limit(&too_many),
        "the second send's parts still count: {too_many:?}"
    );
    h.send(h.key_for("+393481234504"), 3, charging(2))
        .await
        .expect("room for the parts that left");
}

/// Credit is judged first: a send the credit does not cover is `NoCredit` even when the hour's
/// limit is reached too.
async fn credit_is_judged_before_the_hourly_limit(backend: Backend) {
    let h = harness_with_credits(backend, Some(1)).await;
    h.limit_per_hour(1).await;
    let refused = h.send(h.key_for("+393481234567"), 3, charging(2)).await;
    assert!(matches!(
        refused,
        Err(CreateError::Rejected(SendRejected::NoCredit))
    ));
}

/// A message with more parts than the hourly limit never fits: it is not told to wait.
async fn a_send_over_the_whole_hourly_limit_is_told_no_wait(backend: Backend) {
    let h = harness(backend).await;
    h.limit_per_hour(2).await;
    let refused = h.send(h.key_for("+393481234567"), 3, charging(3)).await;
    assert!(past_hourly_limit(&refused), "{refused:?}");
    assert_eq!(told_to_wait(&refused), None);
}

async fn parallel_sends_never_pass_the_hourly_limit(backend: Backend) {
    let h = harness(backend).await;
    h.limit_per_hour(25).await;
    assert_eq!(
        sends_at_once(&h, 60, SendRejected::HourlyLimit { retry_after: None }).await,
        25
    );
}

/// Parallel sends for an account with room for all of them are all stored, and each is
/// charged once, to the credit and to the hour. On PostgreSQL a group of them is stored by one
/// statement and debited by one UPDATE (migration 16).
async fn parallel_sends_within_the_account_limits_are_each_charged_once(backend: Backend) {
    let h = harness_with_credits(backend, Some(100)).await;
    h.limit_per_hour(60).await;
    assert_eq!(
        sends_at_once(&h, 60, SendRejected::HourlyLimit { retry_after: None }).await,
        60
    );
    assert_eq!(h.credits().await, Some(40));
    assert_eq!(h.sms_in_last_hour().await, 60);
    let over = h.send(h.key_for("+393481234599"), 3, UNLIMITED).await;
    assert!(past_hourly_limit(&over), "the hour is full: {over:?}");
}

/// Parallel sends for an account with room for all of them, where half are refused by the
/// destination's anti-spam limit: only the stored ones are charged.
async fn parallel_sends_refused_by_anti_spam_are_not_charged(backend: Backend) {
    let h = harness_with_credits(backend, Some(100)).await;
    h.limit_per_hour(100).await;
    let one_each = SendGuards {
        max_sends_per_destination: 1,
        charge: 2,
        ..UNLIMITED
    };
    let refusal = SendRejected::TooManySends { retry_after: None };
    assert_eq!(sends_at_once_to(&h, 40, 20, one_each, refusal).await, 20);
    assert_eq!(h.credits().await, Some(60));
    assert_eq!(h.sms_in_last_hour().await, 40);
}

/// Parallel sends half an hour after an earlier one are counted in their own five-minute
/// bucket: they leave the hour's count an hour after they were sent, not with the earlier one.
async fn parallel_sends_are_counted_in_the_bucket_they_were_sent_in(backend: Backend) {
    let h = harness_with_credits(backend, Some(100)).await;
    h.limit_per_hour(50).await;
    h.send(h.key_for("+393481234599"), 3, charging(10))
        .await
        .expect("the earlier send");
    h.clock.advance(Duration::from_secs(30 * 60));
    assert_eq!(
        sends_at_once(&h, 40, SendRejected::HourlyLimit { retry_after: None }).await,
        40
    );
    assert_eq!(h.sms_in_last_hour().await, 50);
    let full = h.send(h.key_for("+393481234598"), 3, UNLIMITED).await;
    assert!(past_hourly_limit(&full), "the hour is full: {full:?}");
    h.clock
        .advance(START_COUNTED_FOR - Duration::from_secs(30 * 60));
    assert_eq!(
        h.sms_in_last_hour().await,
        40,
        "the earlier send's parts left; the group's stay"
    );
    assert_eq!(h.credits().await, Some(50));
}

async fn account_limits_are_stored_and_changed(backend: Backend) {
    let h = harness(backend).await;
    let limits = AccountLimits {
        sms_per_hour: SmsPerHour::new(120),
        countries: DestinationCountries::parse_list("IT,DE").expect("list"),
    };
    let access_key = AccessKeyId::generate();
    let created = h
        .store
        .create_account(NewAccount {
            id: AccountId::generate(),
            name: Name::parse("limited").expect("name"),
            access_key_id: access_key.clone(),
            sealed_secret: vec![1],
            credits: None,
            default_sender: None,
            limits: limits.clone(),
        })
        .await
        .expect("create");
    assert_eq!(created.limits, limits);
    let found = h
        .store
        .find_account_by_key(&access_key)
        .await
        .expect("find");
    assert_eq!(found.map(|account| account.limits), Some(limits.clone()));
    assert_eq!(
        h.find_account_by_key(&h.access_key).await.limits,
        AccountLimits::default(),
        "an account created without limits has none"
    );

    let lifted = h
        .store
        .set_account_limits(&access_key, &AccountLimits::default())
        .await
        .expect("set")
        .expect("exists");
    assert_eq!(lifted.limits, AccountLimits::default());
    assert_eq!(lifted.name, "limited", "the rest of the account stays");
    let listed = h.store.list_accounts().await.expect("list");
    assert!(
        listed
            .iter()
            .all(|account| account.limits == AccountLimits::default())
    );
    assert!(
        h.store
            .set_account_limits(&AccessKeyId::generate(), &limits)
            .await
            .expect("set")
            .is_none(),
        "an unknown access key id changes nothing"
    );
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_every_backend!(
    right_code_verifies_once,
    wrong_codes_exhaust_the_attempts,
    parallel_wrong_guesses_never_exceed_the_limit,
    parallel_right_codes_verify_exactly_once,
    parallel_guesses_by_key_use_each_attempt_once,
    parallel_wrong_guesses_from_one_address_never_exceed_its_limit,
    parallel_wrong_codes_from_one_address_never_exceed_its_limit,
    codes_expire_by_the_store_clock,
    a_new_send_cancels_the_live_code_for_the_same_key,
    a_resend_after_the_clock_stepped_back_replaces_the_live_code,
    a_key_with_many_old_codes_still_finds_its_live_one,
    other_keys_are_untouched_by_a_resend,
    the_antispam_window_allows_ten_sends_per_hour,
    credit_is_debited_per_part_and_never_overdrawn,
    a_send_for_a_deleted_account_is_refused,
    parallel_sends_never_overdraw,
    parallel_sends_to_one_destination_never_pass_its_limit,
    a_failed_request_does_not_fail_its_batch_mates,
    a_duplicate_id_fails_alone,
    cancel_only_live_codes,
    accounts_and_applications,
    data_survives_reopening,
    a_closed_store_refuses_calls_and_keeps_its_data,
    one_ip_address_gets_a_bounded_number_of_wrong_checks,
    checks_report_the_message_id,
    the_outbox_hands_out_each_message_once_per_lease,
    retries_wait_for_their_time,
    expired_or_cancelled_codes_are_never_handed_out,
    releasing_claims_after_a_crash,
    a_stopping_node_gives_its_claims_back,
    outcomes_are_stored_in_batches,
    a_final_message_keeps_no_sealed_text,
    receipts_update_the_delivery_status,
    a_receipt_in_another_state_replaces_the_one_before,
    a_message_committed_for_immediate_delivery_is_claimed_from_the_start,
    the_backlog_counts_what_waits_for_delivery,
    failed_messages_are_listed_newest_first,
    outcomes_with_odd_status_messages_are_stored_with_their_batch,
    retention_purges_old_verifications_in_batches,
    checks_follow_the_state_machine_in_every_state,
    codes_verify_whatever_their_digest_is_bound_to,
    the_hourly_limit_counts_parts_in_any_sixty_minutes,
    parts_leave_the_count_an_hour_after_they_were_sent,
    credit_is_judged_before_the_hourly_limit,
    a_send_over_the_whole_hourly_limit_is_told_no_wait,
    every_accounts_last_hour_is_read_at_once,
    parallel_sends_never_pass_the_hourly_limit,
    parallel_sends_within_the_account_limits_are_each_charged_once,
    parallel_sends_refused_by_anti_spam_are_not_charged,
    parallel_sends_are_counted_in_the_bucket_they_were_sent_in,
    account_limits_are_stored_and_changed,
);

fn carrier_id(id: &str) -> CarrierMessageId {
    CarrierMessageId::parse(id).expect("a carrier id otpd keeps")
}
