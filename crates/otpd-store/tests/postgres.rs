//! What only the PostgreSQL store has: the database's clock, migrations shared by nodes that
//! start together, nodes of the previous release during an upgrade, the digest comparison in
//! SQL, failing fast when the database is away, and TLS to the database. The rest of its
//! behaviour is in the conformance suite, which runs on both backends.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::connect_raw;
use otpd_core::account::{AccountLimits, Name, NewAccount, SmsPerHour};
use otpd_core::clock::ManualClock;
use otpd_core::outbox::{AttemptOutcome, MessageId, MessageState, NewOutboxMessage};
use otpd_core::ports::{CreateError, DeliveryReport, DeliveryStatus, Store, StoreError};
use otpd_core::sms::Encoding;
use otpd_core::verification::{
    Candidate, CheckAttempt, CheckHistory, CheckLookup, CheckOutcome, Dialect, NewVerification,
    SendGuards, SendRejected, VerificationKey,
};
use otpd_core::{
    AccessKeyId, AccountId, CodeLength, DigestSubject, E164, MaxAttempts, OtpCode, ServerKey,
    Timestamp, Ttl, VerifyId,
};
use otpd_store::{PgStore, PgStoreOptions, ScratchDatabase};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

async fn scratch() -> ScratchDatabase {
    ScratchDatabase::create(&ScratchDatabase::server_url(), "pgonly")
        .await
        .expect("PostgreSQL must be running: run scripts/ensure-postgres")
}

fn options(url: &str) -> PgStoreOptions {
    PgStoreOptions {
        url: url.to_owned(),
        pool_size: 4,
        clock: None,
    }
}

const GUARDS: SendGuards = SendGuards {
    max_sends_per_destination: 10,
    window: Duration::from_secs(3600),
    charge: 1,
};

async fn create_account(store: &PgStore) -> AccountId {
    let account = AccountId::generate();
    store
        .create_account(NewAccount {
            id: account.clone(),
            name: Name::parse("test").expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![1],
            credits: None,
            default_sender: None,
            limits: Default::default(),
        })
        .await
        .expect("account");
    account
}

/// The key of a Pinpoint code (application `app`, `ReferenceId` `ref`) to `destination`.
fn pinpoint_key(account: &AccountId, destination: &str) -> VerificationKey {
    VerificationKey {
        account_id: account.clone(),
        dialect: Dialect::Pinpoint,
        app: "app".into(),
        reference: "ref".into(),
        destination: E164::parse(destination).expect("number"),
    }
}

/// The key of an amm code to `destination`.
fn amm_key(account: &AccountId, destination: &str) -> VerificationKey {
    VerificationKey {
        dialect: Dialect::Amm,
        app: String::new(),
        reference: String::new(),
        ..pinpoint_key(account, destination)
    }
}

/// A sandbox send (no message to deliver) of `code` as this release stores it.
fn sandbox_send(
    server_key: &ServerKey,
    id: &VerifyId,
    key: VerificationKey,
    code: &OtpCode,
    ttl_seconds: u64,
) -> NewVerification {
    NewVerification {
        digest: server_key.digest_code(key.digest_subject(id), code),
        id: id.clone(),
        key,
        sender: "otpd".into(),
        ttl: Ttl::new(Duration::from_secs(ttl_seconds)).expect("ttl"),
        max_attempts: MaxAttempts::new(3).expect("attempts"),
        sandbox: true,
        sandbox_code: None,
        parts: 1,
        outbox: None,
    }
}

/// A check of `submitted` with no address and no history, as a Pinpoint verify makes.
fn attempt(server_key: &Arc<ServerKey>, submitted: &str) -> CheckAttempt {
    CheckAttempt {
        candidate: Candidate::new(
            server_key.clone(),
            OtpCode::submitted(submitted).expect("code"),
        ),
        client_ip: None,
        history: CheckHistory::Skip,
        ip_limit: None,
    }
}

async fn database_millis(url: &str) -> i64 {
    connect_raw(url)
        .await
        .query_one("SELECT otpd_now_ms()", &[])
        .await
        .expect("now")
        .get(0)
}

#[tokio::test]
async fn times_come_from_the_database_clock() {
    let database = scratch().await;
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("connect");
    let account = create_account(&store).await;
    let key = ServerKey::from_hex(&"22".repeat(32)).expect("key");
    let id = VerifyId::generate();
    let code = OtpCode::generate(CodeLength::new(6).expect("length"));
    let before = database_millis(database.url()).await;
    let amm_key = amm_key(&account, "+393481234567");
    store
        .create_verification(sandbox_send(&key, &id, amm_key, &code, 60), GUARDS)
        .await
        .expect("create");
    let after = database_millis(database.url()).await;
    let found = store
        .find_verification(&account, &id)
        .await
        .expect("find")
        .expect("exists");
    assert!((before..=after).contains(&found.created_at.millis()));
    assert_eq!(
        found.expires_at.millis() - found.created_at.millis(),
        60_000
    );
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let database = scratch().await;
    let url = database.url().to_owned();
    let starts = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::connect(options(&url)).await.map(|_| ()) })
    });
    for start in starts {
        start.await.expect("join").expect("every node starts");
    }
    let client = connect_raw(&url).await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM otpd_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=16).collect::<Vec<_>>(),
        "each migration ran once"
    );

    // A schema from a newer otpd: this one must refuse rather than write to tables it does
    // not know.
    client
        .execute(
            "INSERT INTO otpd_schema_migrations (version) VALUES (999)",
            &[],
        )
        .await
        .expect("insert");
    match PgStore::connect(options(&url)).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("newer"), "{message}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_and_says_why() {
    let started = Instant::now();
    let refused = PgStore::connect(options("postgres://otpd:s3cret@127.0.0.1:9/otpd")).await;
    let Err(StoreError::Unavailable(message)) = refused else {
        panic!("connecting to a closed port must fail");
    };
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !message.contains("s3cret"),
        "no password in errors: {message}"
    );
    assert!(
        message.contains("Connection refused"),
        "the cause is named: {message}"
    );

    let mut missing = url::Url::parse(&ScratchDatabase::server_url()).expect("url");
    missing.set_path("/otpd_no_such_database");
    let Err(StoreError::Unavailable(message)) = PgStore::connect(options(missing.as_str())).await
    else {
        panic!("a missing database must fail");
    };
    assert!(
        message.contains("does not exist"),
        "the server's own words: {message}"
    );
}

#[tokio::test]
async fn a_store_answers_errors_not_hangs_once_its_database_is_gone() {
    let database = scratch().await;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(options(database.url()))
            .await
            .expect("connect"),
    );
    store.ping().await.expect("ping");
    let server_key = ServerKey::from_hex(&"55".repeat(32)).expect("key");
    let key = amm_key(&AccountId::generate(), "+393481234567");
    let id = VerifyId::generate();
    let code = OtpCode::generate(CodeLength::new(6).expect("length"));
    let send = sandbox_send(&server_key, &id, key.clone(), &code, 300);
    let attempt = attempt(&Arc::new(server_key), code.expose());
    drop(database); // DROP DATABASE ... WITH (FORCE) ends every session
    let started = Instant::now();
    assert!(store.ping().await.is_err());
    assert!(store.list_accounts().await.is_err());
    // Sends and checks go through their groups' queues, and fail as fast.
    assert!(store.create_verification(send, GUARDS).await.is_err());
    assert!(store.check(CheckLookup::ByKey(key), attempt).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn digests_are_compared_whole() {
    let database = scratch().await;
    PgStore::connect(options(database.url()))
        .await
        .expect("migrate");
    let client = connect_raw(database.url()).await;
    let digest = [7u8; 32];
    let mut last_differs = digest;
    last_differs[31] ^= 1;
    let mut first_differs = digest;
    first_differs[0] ^= 0x80;
    let cases: [(&[u8], bool); 5] = [
        (&digest, true),
        (&last_differs, false),
        (&first_differs, false),
        (&digest[..31], false),
        (&[], false),
    ];
    for (other, equal) in cases {
        let row = client
            .query_one("SELECT otpd_digests_equal($1, $2)", &[&&digest[..], &other])
            .await
            .expect("compare");
        assert_eq!(row.get::<_, bool>(0), equal, "{other:?}");
    }
}

/// During a rolling upgrade nodes of the previous release share the database. Their sends (the
/// 24-argument function) store digests bound to the id, which this release verifies by key;
/// the key-bound digests this release stores leave `code_digest` empty, so their checks fail
/// loudly on such a code instead of calling it wrong.
#[tokio::test]
async fn nodes_of_the_previous_release_can_share_the_database() {
    let database = scratch().await;
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("connect");
    let account = create_account(&store).await;
    let server_key = Arc::new(ServerKey::from_hex(&"33".repeat(32)).expect("key"));
    let key = pinpoint_key(&account, "+393481234567");
    let id = VerifyId::generate();
    let code = OtpCode::generate(CodeLength::new(6).expect("length"));
    let old_digest = server_key.digest_code(DigestSubject::Verification(&id), &code);
    let client = connect_raw(database.url()).await;
    let verdict: String = client
        .query_one(
            "SELECT otpd_create_verification(NULL, 3600000, 10, 1, $1, $2, 'pinpoint', 'app',
                 'ref', '+393481234567', 'otpd', $3, 300000, 3, true, NULL, 1, NULL, NULL, NULL,
                 NULL, NULL, NULL, NULL)",
            &[&id.as_str(), &account.as_str(), &&old_digest.bytes[..]],
        )
        .await
        .expect("the previous release's send")
        .get(0);
    assert_eq!(verdict, "ok");
    let report = store
        .check(
            CheckLookup::ByKey(key.clone()),
            attempt(&server_key, code.expose()),
        )
        .await
        .expect("check");
    assert_eq!(report.outcome, CheckOutcome::Verified);

    let new_id = VerifyId::generate();
    store
        .create_verification(sandbox_send(&server_key, &new_id, key, &code, 300), GUARDS)
        .await
        .expect("send");
    let row = client
        .query_one(
            "SELECT code_digest IS NULL, key_bound_digest IS NOT NULL FROM verifications
             WHERE id = $1",
            &[&new_id.as_str()],
        )
        .await
        .expect("row");
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
}

/// A database that a release of schema 12 left, with an hour's count of SMS: migration 13 puts
/// the count into the rolling window (`SmsWindow`), so an upgrade does not hand an account a
/// fresh hour's limit.
#[tokio::test]
async fn an_upgrade_keeps_the_sms_counted_in_the_hour() {
    let database = scratch().await;
    let client = connect_raw(database.url()).await;
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("migrations")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    client
        .batch_execute(
            "CREATE TABLE otpd_schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .expect("versions table");
    for (version, file) in (1..=12).zip(&files) {
        let sql = std::fs::read_to_string(file).expect("read");
        client.batch_execute(&sql).await.expect("migrate");
        client
            .execute(
                "INSERT INTO otpd_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .expect("version");
    }
    // This hour's 4 parts, and 7 in an hour that ended over an hour ago.
    for (key, hours_back, parts) in [
        ("OTPDTHISHOURAAAAAAAA", 0, 4),
        ("OTPDLONGAGOAAAAAAAAA", 2, 7),
    ] {
        client
            .execute(
                "INSERT INTO accounts (id, name, access_key_id, sealed_secret, created_at,
                     sms_per_hour, sms_hour_start, sms_in_hour)
                 VALUES ($1, 'old', $1, '\\x01', 0, 10,
                     otpd_now_ms() - otpd_now_ms() % 3600000 - $2::bigint * 3600000, $3)",
                &[&key, &i64::from(hours_back), &parts],
            )
            .await
            .expect("account of schema 12");
    }

    let store = PgStore::connect(options(database.url()))
        .await
        .expect("upgrade");
    let counted = store.sms_in_last_hour().await.expect("read");
    let this_hour = AccessKeyId::parse("OTPDTHISHOURAAAAAAAA").expect("key");
    assert_eq!(
        counted,
        HashMap::from([(this_hour, 4)]),
        "the count of hours ago is not carried over"
    );
}

/// Checks of one node share a statement. When that group and another transaction wait for each
/// other's rows, PostgreSQL rolls one of them back: here the group, which waited first. Its
/// checks then run one by one, once the other has committed; every check is answered, each
/// attempt counted once.
#[tokio::test]
async fn a_group_rolled_back_by_a_deadlock_is_answered() {
    let database = scratch().await;
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("connect");
    let account = create_account(&store).await;
    let server_key = Arc::new(ServerKey::from_hex(&"44".repeat(32)).expect("key"));
    let mut ids = Vec::new();
    for destination in ["+393481234501", "+393481234502"] {
        let key = pinpoint_key(&account, destination);
        let id = VerifyId::generate();
        let code = OtpCode::generate(CodeLength::new(6).expect("length"));
        store
            .create_verification(sandbox_send(&server_key, &id, key, &code, 300), GUARDS)
            .await
            .expect("send");
        ids.push(id);
    }
    let wrong_check = |id: &VerifyId| {
        let lookup = CheckLookup::ById {
            account_id: account.clone(),
            id: id.clone(),
        };
        // Five digits never match a six-digit code.
        let attempt = attempt(&server_key, "12345");
        store.check(lookup, attempt)
    };
    let lock_sql = "SELECT 1 FROM verifications WHERE id = $1 FOR UPDATE";

    let mut other = connect_raw(database.url()).await;
    let transaction = other.transaction().await.expect("begin");
    transaction
        .execute(lock_sql, &[&ids[1].as_str()])
        .await
        .expect("lock the second row");
    // Both checks go in one group (this runtime has one thread: both are queued before the
    // group starts), which locks the first row and waits for the second.
    let checks = async { tokio::join!(wrong_check(&ids[0]), wrong_check(&ids[1])) };
    let close_the_circle = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let locked = transaction.execute(lock_sql, &[&ids[0].as_str()]).await;
        (locked, transaction.commit().await)
    };
    let ((first, second), (locked, committed)) = tokio::join!(checks, close_the_circle);
    locked.expect("the other transaction gets the first row once the group is rolled back");
    committed.expect("commit");
    for report in [first, second] {
        assert_eq!(
            report.expect("answered").outcome,
            CheckOutcome::Mismatch { exhausted: false }
        );
    }
    for id in &ids {
        let stored = store
            .find_verification(&account, id)
            .await
            .expect("find")
            .expect("exists");
        assert_eq!(stored.attempts_used, 1, "the rolled-back try left no trace");
    }
}

/// A batch of delivery outcomes and another transaction wait for each other's rows, and
/// PostgreSQL rolls the batch back. Each outcome is then stored on its own, once the other has
/// committed: no message is left claimed, to be sent again when its claim runs out.
#[tokio::test]
async fn outcomes_of_a_batch_rolled_back_by_a_deadlock_are_stored() {
    let database = scratch().await;
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("connect");
    let account = create_account(&store).await;
    let server_key = ServerKey::from_hex(&"66".repeat(32)).expect("key");
    for destination in ["+393481234501", "+393481234502"] {
        let id = VerifyId::generate();
        let code = OtpCode::generate(CodeLength::new(6).expect("length"));
        let mut send = sandbox_send(&server_key, &id, amm_key(&account, destination), &code, 300);
        send.sandbox = false;
        send.outbox = Some(NewOutboxMessage {
            id: MessageId::generate(),
            sealed_text: b"sealed".to_vec(),
            encoding: Encoding::Gsm7,
            parts: 1,
            entity_id: None,
            template_id: None,
            claimed_for: None,
        });
        store.create_verification(send, GUARDS).await.expect("send");
    }
    let claimed = store
        .claim_outbox(10, Duration::from_secs(60))
        .await
        .expect("claim");
    let ids: Vec<MessageId> = claimed.iter().map(|message| message.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    let accepted = AttemptOutcome::Accepted(DeliveryReport {
        retry_after: None,
        status: DeliveryStatus::Successful,
        message_id: None,
        status_code: 200,
        status_message: "accepted".into(),
    });
    let lock_sql = "SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE";

    let mut other = connect_raw(database.url()).await;
    let transaction = other.transaction().await.expect("begin");
    transaction
        .execute(lock_sql, &[&ids[1].as_str()])
        .await
        .expect("lock the second message");
    // The batch updates the first message, then waits for the second.
    let batch = store.finish_attempts(Arc::from(vec![
        (ids[0].clone(), accepted.clone()),
        (ids[1].clone(), accepted),
    ]));
    let close_the_circle = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let locked = transaction.execute(lock_sql, &[&ids[0].as_str()]).await;
        (locked, transaction.commit().await)
    };
    let (stored, (locked, committed)) = tokio::join!(batch, close_the_circle);
    locked.expect("the other transaction gets the first message once the batch is rolled back");
    committed.expect("commit");
    stored.expect("every outcome stored, one by one");
    for id in &ids {
        let message = store.find_message(id).await.expect("find").expect("exists");
        assert_eq!(message.state, MessageState::Sent, "{id}");
    }
    assert!(
        store
            .claim_outbox(10, Duration::from_secs(60))
            .await
            .expect("claim")
            .is_empty(),
        "nothing is left to send again"
    );
}

/// Two stores on one database, as two otpd nodes run.
async fn two_nodes(database: &ScratchDatabase) -> [PgStore; 2] {
    [
        PgStore::connect(options(database.url()))
            .await
            .expect("node a"),
        PgStore::connect(options(database.url()))
            .await
            .expect("node b"),
    ]
}

/// Two nodes sending at once for one account with a credit limit, to the same destinations in
/// opposite orders. Each send locks its destination and then the account's row until its
/// group commits; the groups take all their destination locks first, so they queue on each
/// other and never wait in a circle (which PostgreSQL would break after a second, and count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sending_for_one_account_never_deadlock() {
    let database = scratch().await;
    let nodes = two_nodes(&database).await;
    let account = AccountId::generate();
    nodes[0]
        .create_account(NewAccount {
            id: account.clone(),
            name: Name::parse("limited").expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![1],
            credits: Some(1_000),
            default_sender: None,
            limits: Default::default(),
        })
        .await
        .expect("account");
    let server_key = ServerKey::from_hex(&"66".repeat(32)).expect("key");
    let destinations: Vec<String> = (0..40).map(|i| format!("+3934812345{i:02}")).collect();
    let mut sends = Vec::new();
    for round in 0..5 {
        for (node, store) in nodes.iter().enumerate() {
            let order: Vec<&String> = if node == 0 {
                destinations.iter().collect()
            } else {
                destinations.iter().rev().collect()
            };
            for destination in order {
                let key = VerificationKey {
                    reference: format!("{round}"),
                    ..amm_key(&account, destination)
                };
                let id = VerifyId::generate();
                let code = OtpCode::generate(CodeLength::new(6).expect("length"));
                let mut send = sandbox_send(&server_key, &id, key, &code, 300);
                send.sandbox = false;
                let store = store.clone();
                sends.push(tokio::spawn(async move {
                    store.create_verification(send, GUARDS).await
                }));
            }
        }
    }
    for send in sends {
        send.await.expect("join").expect("every send is accepted");
    }
    let client = connect_raw(database.url()).await;
    let credits: i64 = client
        .query_one(
            "SELECT credits FROM accounts WHERE id = $1",
            &[&account.as_str()],
        )
        .await
        .expect("credits")
        .get(0);
    assert_eq!(credits, 1_000 - 400, "one part each");
    // A backend's statistics reach pg_stat_database when it ends.
    drop(nodes);
    let deadlocks = wait_for_backends_to_end_then(
        &client,
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .await;
    assert_eq!(deadlocks, 0);
}

/// A group of sends for an account with an hourly limit and room for all of them, stored by one
/// statement and debited by one UPDATE (migration 16), half an hour after the account's last
/// send: the window moves on to the group's five-minute bucket, where the group's parts are
/// counted, and the credit is debited once per part. The group is made whole by holding the
/// node's previous group (a send for another account) on a lock until every send is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_for_a_limited_account_is_counted_in_its_own_bucket() {
    const START_MS: i64 = 1_700_000_000_000;
    const BUCKET_MS: i64 = 300_000;
    let database = scratch().await;
    let clock = Arc::new(ManualClock::starting_at(Timestamp(START_MS)));
    let store = PgStore::connect(PgStoreOptions {
        clock: Some(clock.clone()),
        ..options(database.url())
    })
    .await
    .expect("connect");
    let access_key = AccessKeyId::generate();
    let account = AccountId::generate();
    store
        .create_account(NewAccount {
            id: account.clone(),
            name: Name::parse("limited").expect("name"),
            access_key_id: access_key.clone(),
            sealed_secret: vec![1],
            credits: Some(100),
            default_sender: None,
            limits: AccountLimits {
                sms_per_hour: SmsPerHour::new(50),
                ..AccountLimits::default()
            },
        })
        .await
        .expect("account");
    let other_account = create_account(&store).await;
    let server_key = ServerKey::from_hex(&"69".repeat(32)).expect("key");
    let paid_send = |key: VerificationKey| {
        let id = VerifyId::generate();
        let code = OtpCode::generate(CodeLength::new(6).expect("length"));
        let mut send = sandbox_send(&server_key, &id, key, &code, 300);
        send.sandbox = false;
        send
    };
    let earlier = SendGuards {
        charge: 10,
        ..GUARDS
    };
    store
        .create_verification(paid_send(amm_key(&account, "+393481234599")), earlier)
        .await
        .expect("the earlier send");
    clock.advance(Duration::from_secs(30 * 60));

    let decoy = amm_key(&other_account, "+393481234598");
    let mut holder = connect_raw(database.url()).await;
    let hold = holder.transaction().await.expect("begin");
    hold.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
        &[&decoy.account_id.as_str(), &decoy.destination.as_str()],
    )
    .await
    .expect("lock the decoy's destination");
    let held = {
        let store = store.clone();
        let send = paid_send(decoy);
        tokio::spawn(async move { store.create_verification(send, GUARDS).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let group: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let send = paid_send(amm_key(&account, &format!("+3934812345{i:02}")));
            tokio::spawn(async move { store.create_verification(send, GUARDS).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    hold.commit().await.expect("release the held group");
    held.await.expect("join").expect("the decoy is accepted");
    for send in group {
        send.await
            .expect("join")
            .expect("every send fits the limits");
    }

    let row = connect_raw(database.url())
        .await
        .query_one(
            "SELECT credits, sms_window_newest, sms_window FROM accounts WHERE id = $1",
            &[&account.as_str()],
        )
        .await
        .expect("the account");
    let (credits, newest, window): (i64, i64, Vec<i32>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(credits, 100 - 10 - 40, "each part debited once");
    let now = START_MS + 30 * 60 * 1000;
    assert_eq!(
        newest,
        now - now % BUCKET_MS,
        "the window moved to the group's bucket"
    );
    let mut expected = vec![0; 13];
    expected[6] = 10;
    expected[12] = 40;
    assert_eq!(window, expected, "six buckets apart");
    let full = store
        .create_verification(paid_send(amm_key(&account, "+393481234597")), GUARDS)
        .await;
    assert!(
        matches!(
            full,
            Err(CreateError::Rejected(SendRejected::HourlyLimit { .. }))
        ),
        "the hour is full: {full:?}"
    );
}

/// Two nodes sending to one key at once. No index enforces the one-live-code rule (an index
/// on the status would stop checks from updating rows in place): the send function's lock on
/// the account and destination does, so each send cancels the one before it, from either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sending_to_one_key_leave_one_live_code() {
    let database = scratch().await;
    let nodes = two_nodes(&database).await;
    let account = create_account(&nodes[0]).await;
    let server_key = ServerKey::from_hex(&"67".repeat(32)).expect("key");
    let key = pinpoint_key(&account, "+393481234567");
    let guards = SendGuards {
        max_sends_per_destination: 1_000,
        ..GUARDS
    };
    let mut sends = Vec::new();
    for _ in 0..40 {
        for store in &nodes {
            let id = VerifyId::generate();
            let code = OtpCode::generate(CodeLength::new(6).expect("length"));
            let send = sandbox_send(&server_key, &id, key.clone(), &code, 300);
            let store = store.clone();
            sends.push(tokio::spawn(async move {
                store.create_verification(send, guards).await
            }));
        }
    }
    for send in sends {
        send.await.expect("join").expect("every send is accepted");
    }
    let client = connect_raw(database.url()).await;
    let statuses: Vec<(String, i64)> = client
        .query(
            "SELECT status, count(*) FROM verifications WHERE account_id = $1
             GROUP BY status ORDER BY status",
            &[&account.as_str()],
        )
        .await
        .expect("statuses")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        statuses,
        [("cancelled".to_owned(), 79), ("pending".to_owned(), 1)]
    );
}

/// Two nodes guessing at the same codes at once, by id and by key. A group settles its first
/// guess at each code in one UPDATE (migration 14), which waits for the other node's change of
/// the row and then tests the code's attempts again, so between them the nodes use each
/// attempt once and record every check that found the code; and a right code verifies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_checking_one_code_use_each_attempt_once() {
    let database = scratch().await;
    let nodes = two_nodes(&database).await;
    let account = create_account(&nodes[0]).await;
    let server_key = Arc::new(ServerKey::from_hex(&"68".repeat(32)).expect("key"));
    let mut codes = Vec::new();
    for (n, key) in [
        amm_key(&account, "+393481234567"),
        pinpoint_key(&account, "+393481234568"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = VerifyId::generate();
        let code = OtpCode::generate(CodeLength::new(6).expect("length"));
        let mut send = sandbox_send(&server_key, &id, key.clone(), &code, 300);
        send.max_attempts = MaxAttempts::new(5).expect("attempts");
        nodes[0]
            .create_verification(send, GUARDS)
            .await
            .expect("send");
        let lookup = if n == 0 {
            CheckLookup::ById {
                account_id: account.clone(),
                id: id.clone(),
            }
        } else {
            CheckLookup::ByKey(key)
        };
        codes.push((id, code, lookup));
    }
    let wrong = |code: &OtpCode| {
        let digit = (code.expose().as_bytes()[0] - b'0' + 1) % 10;
        format!("{digit}{}", &code.expose()[1..])
    };
    let mut checks = Vec::new();
    for (id, code, lookup) in &codes {
        for round in 0..60 {
            let store = nodes[round % 2].clone();
            let lookup = lookup.clone();
            let attempt = CheckAttempt {
                history: CheckHistory::WithCode,
                ..attempt(&server_key, &wrong(code))
            };
            checks.push((
                id.clone(),
                tokio::spawn(async move { store.check(lookup, attempt).await }),
            ));
        }
    }
    let mut mismatches: HashMap<VerifyId, usize> = HashMap::new();
    let mut found: HashMap<VerifyId, i64> = HashMap::new();
    for (id, check) in checks {
        let outcome = check.await.expect("join").expect("check").outcome;
        if let CheckOutcome::Mismatch { .. } = outcome {
            *mismatches.entry(id.clone()).or_default() += 1;
        }
        if outcome != CheckOutcome::NotFound {
            *found.entry(id).or_default() += 1;
        }
    }
    let client = connect_raw(database.url()).await;
    for (id, _, _) in &codes {
        assert_eq!(
            mismatches.get(id),
            Some(&5),
            "five attempts, each used once"
        );
        let row = client
            .query_one(
                "SELECT v.attempts_used, v.status,
                        (SELECT count(*) FROM checks c WHERE c.verification_id = v.id)
                   FROM verifications v WHERE v.id = $1",
                &[&id.as_str()],
            )
            .await
            .expect("row");
        let recorded: (i32, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(recorded, (5, "failed".to_owned(), found[id]));
    }

    let id = VerifyId::generate();
    let code = OtpCode::generate(CodeLength::new(6).expect("length"));
    let send = sandbox_send(
        &server_key,
        &id,
        amm_key(&account, "+393481234569"),
        &code,
        300,
    );
    nodes[1]
        .create_verification(send, GUARDS)
        .await
        .expect("send");
    let mut checks = Vec::new();
    for round in 0..60 {
        let store = nodes[round % 2].clone();
        let lookup = CheckLookup::ById {
            account_id: account.clone(),
            id: id.clone(),
        };
        let attempt = attempt(&server_key, code.expose());
        checks.push(tokio::spawn(
            async move { store.check(lookup, attempt).await },
        ));
    }
    let mut verified = 0;
    for check in checks {
        let outcome = check.await.expect("join").expect("check").outcome;
        match outcome {
            CheckOutcome::Verified => verified += 1,
            CheckOutcome::AlreadyVerified => {}
            other => panic!("a right code was answered {other:?}"),
        }
    }
    assert_eq!(verified, 1);
}

/// A check changes a verification's status and attempts_used. PostgreSQL writes the new row
/// version in place, without an entry in every index, only while no index holds or filters on
/// either column and the page has room (the table's fill factor).
#[tokio::test]
async fn no_index_holds_what_a_check_changes() {
    let database = scratch().await;
    PgStore::connect(options(database.url()))
        .await
        .expect("store");
    let client = connect_raw(database.url()).await;
    let indexes_on_changed_columns: Vec<String> = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i
             WHERE i.indrelid = 'verifications'::regclass
               AND (EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                              AND a.attname IN ('status', 'attempts_used'))
                    OR pg_get_expr(i.indpred, i.indrelid) ~ '(status|attempts_used)'
                    OR pg_get_expr(i.indexprs, i.indrelid) ~ '(status|attempts_used)')",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(indexes_on_changed_columns, Vec::<String>::new());
    let options: Vec<String> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'verifications'::regclass",
            &[],
        )
        .await
        .expect("table options")
        .get(0);
    assert_eq!(options, ["fillfactor=80"]);
}

/// Waits until this is the database's only session, then reads one `bigint`.
async fn wait_for_backends_to_end_then(client: &tokio_postgres::Client, sql: &str) -> i64 {
    for _ in 0..100 {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("sessions")
            .get(0);
        if others == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .execute("SELECT pg_stat_clear_snapshot()", &[])
        .await
        .expect("fresh statistics");
    client.query_one(sql, &[]).await.expect("read").get(0)
}

// TLS, against the test server's own certificate: Debian's PostgreSQL serves TLS with the
// machine's self-signed "snakeoil" certificate, which `scripts/ensure-postgres` lets the test
// role find (`ssl_cert_file`).

/// The test server's certificate file and a DNS name it is valid for.
struct ServerCertificate {
    path: PathBuf,
    name: String,
}

async fn server_certificate(url: &str) -> ServerCertificate {
    let client = connect_raw(url).await;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap_or_else(|e| panic!("SHOW {name}: {e} (run scripts/ensure-postgres)"));
            row.get::<_, String>(0)
        }
    };
    assert_eq!(
        setting("ssl").await,
        "on",
        "the test server must serve TLS (Debian's PostgreSQL does, with its snakeoil certificate)"
    );
    let path = PathBuf::from(setting("ssl_cert_file").await);
    let der = CertificateDer::from_pem_file(&path)
        .unwrap_or_else(|e| panic!("the server's certificate {}: {e}", path.display()));
    let certificate = Certificate::from_der(&der).expect("an X.509 certificate");
    let (_, SubjectAltName(names)) = certificate
        .tbs_certificate
        .get::<SubjectAltName>()
        .expect("a readable subjectAltName")
        .expect("the server's certificate names its host");
    let name = names
        .iter()
        .find_map(|name| match name {
            GeneralName::DnsName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .expect("a DNS name in the server's certificate");
    ServerCertificate { path, name }
}

/// `url` addressed by `name` (so that TLS checks the certificate against it) while still
/// connecting to the same address, with `parameters` added.
fn addressed_by(url: &str, name: &str, parameters: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(url).expect("url");
    let address = url.host_str().expect("a host").to_owned();
    url.set_host(Some(name)).expect("a host name");
    url.query_pairs_mut()
        .append_pair("hostaddr", &address)
        .extend_pairs(parameters);
    url.to_string()
}

#[tokio::test]
async fn a_store_speaks_tls_to_a_server_its_root_file_vouches_for() {
    let server = ScratchDatabase::server_url();
    let certificate = server_certificate(&server).await;
    let root_file = certificate.path.to_string_lossy();
    let tls_server = addressed_by(
        &server,
        &certificate.name,
        &[("sslmode", "verify-full"), ("sslrootcert", &root_file)],
    );
    // The scratch database is made over TLS too, as the benchmark makes its own.
    let database = ScratchDatabase::create(&tls_server, "tls")
        .await
        .expect("a database made over TLS");
    let store = PgStore::connect(options(database.url()))
        .await
        .expect("TLS to a server whose certificate is in the root file");
    store.ping().await.expect("ping");
    assert!(store.list_accounts().await.expect("accounts").is_empty());

    // The server says how the store's sessions are protected.
    let url = url::Url::parse(database.url()).expect("url");
    let name = url.path().trim_start_matches('/');
    let sessions: Vec<bool> = connect_raw(&server)
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'otpd' AND a.datname = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!sessions.is_empty(), "the store's sessions are listed");
    assert!(
        sessions.iter().all(|&ssl| ssl),
        "every session is TLS: {sessions:?}"
    );
}

#[tokio::test]
async fn a_store_refuses_a_server_it_cannot_verify() {
    let database = ScratchDatabase::create(&ScratchDatabase::server_url(), "tls")
        .await
        .expect("PostgreSQL must be running: run scripts/ensure-postgres");
    let certificate = server_certificate(database.url()).await;
    let root_file = certificate.path.to_string_lossy();
    let unrelated_root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/unrelated-ca.pem");
    let refused = [
        // A root that signed nothing of the server's (its key was thrown away once it was made).
        addressed_by(
            database.url(),
            &certificate.name,
            &[("sslmode", "require"), ("sslrootcert", unrelated_root)],
        ),
        // The right root, but the server reached by a name its certificate does not hold.
        addressed_by(
            database.url(),
            "not-the-database.invalid",
            &[("sslmode", "verify-full"), ("sslrootcert", &root_file)],
        ),
    ];
    for url in refused {
        let Err(StoreError::Unavailable(message)) = PgStore::connect(options(&url)).await else {
            panic!("{url} must be refused");
        };
        assert!(
            message.contains("certificate"),
            "the certificate is named as the cause: {message}"
        );
    }
}
