//! The HTTP transport against a local HTTP server that answers 200, 429, 500 and 400 (or takes
//! its time), the dispatcher retrying through it until the provider recovers (and no sooner
//! than the provider asked), and a send's
//! first attempt through it: answered, outlasting the send's wait, outliving the send.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use otpd_core::account::{Name, NewAccount};
use otpd_core::outbox::{
    CarrierMessageId, MessageId, MessageRecord, MessageState, MessageText, NewOutboxMessage,
    OutboxMessage, RetryPolicy,
};
use otpd_core::ports::{DeliveryStatus, Dispatcher, OutgoingSms, SmsTransport, Store};
use otpd_core::sms::{ComposedSms, Encoding, Sender};
use otpd_core::verification::{Dialect, NewVerification, SendGuards, VerificationKey};
use otpd_core::{
    AccessKeyId, AccountId, CodeLength, DigestSubject, E164, MaxAttempts, OtpCode, ServerKey,
    SystemClock, Ttl, VerifyId,
};
use otpd_sms::transport::{HttpSpec, HttpTransport};
use otpd_sms::{DispatchSettings, OutboxDispatcher};
use serde_json::{Value, json};

/// How long the `/slow` route takes to accept a message.
const SLOW_PROVIDER: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Provider {
    received: std::sync::Mutex<Vec<(HeaderMap, Value)>>,
    flaky_calls: AtomicUsize,
    /// When each call of `/busy-for-a-second` came.
    busy_calls: std::sync::Mutex<Vec<Instant>>,
}

/// What `/busy-for-a-second` asks of its first caller.
const BUSY_FOR: Duration = Duration::from_secs(1);

async fn provider() -> (String, Arc<Provider>) {
    let state = Arc::new(Provider::default());
    let app =
        Router::new()
            .route(
                "/ok",
                post(
                    |State(s): State<Arc<Provider>>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        s.received.lock().expect("lock").push((headers, body));
                        (StatusCode::OK, Json(json!({"message_id": "prov-1"})))
                    },
                ),
            )
            .route(
                "/throttle",
                post(|| async { StatusCode::TOO_MANY_REQUESTS }),
            )
            .route(
                "/error",
                post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route("/bad", post(|| async { StatusCode::BAD_REQUEST }))
            .route(
                "/unkeepable-id",
                post(|| async { Json(json!({"message_id": "prov\u{0}1"})) }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(SLOW_PROVIDER).await;
                    (StatusCode::OK, Json(json!({"message_id": "slow-1"})))
                }),
            )
            .route(
                "/busy-for-a-second",
                post(|State(s): State<Arc<Provider>>| async move {
                    let mut calls = s.busy_calls.lock().expect("lock");
                    calls.push(Instant::now());
                    if calls.len() == 1 {
                        let wait = [(RETRY_AFTER, BUSY_FOR.as_secs().to_string())];
                        (StatusCode::TOO_MANY_REQUESTS, wait, Json(json!({}))).into_response()
                    } else {
                        Json(json!({"message_id": "after-wait"})).into_response()
                    }
                }),
            )
            .route(
                "/flaky",
                post(|State(s): State<Arc<Provider>>| async move {
                    if s.flaky_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({})))
                    } else {
                        (StatusCode::ACCEPTED, Json(json!({"id": 77})))
                    }
                }),
            )
            .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), state)
}

fn sms() -> OutgoingSms {
    OutgoingSms {
        message_id: MessageId::generate(),
        verify_id: VerifyId::generate(),
        to: E164::parse("+393481234567").expect("number"),
        from: Sender::parse("Acme").expect("sender"),
        message: ComposedSms {
            text: "Code 1234".into(),
            encoding: Encoding::Gsm7,
            parts: 1,
        },
        entity_id: None,
        template_id: Some("T1".into()),
    }
}

fn transport(base: &str, path: &str) -> HttpTransport {
    HttpTransport::new(
        HttpSpec::new(
            &format!("{base}{path}"),
            Some("Authorization: Bearer s3cret"),
        )
        .expect("spec"),
    )
    .expect("client")
}

#[tokio::test]
async fn an_id_otpd_cannot_keep_is_replaced_by_its_own() {
    let (base, _) = provider().await;
    let sms = sms();
    let report = transport(&base, "/unkeepable-id").send(&sms).await;
    assert_eq!(report.status, DeliveryStatus::Successful);
    assert_eq!(report.message_id, Some((&sms.message_id).into()));
}

#[tokio::test]
async fn statuses_map_to_delivery_outcomes() {
    let (base, provider) = provider().await;
    let sms = sms();
    let ok = transport(&base, "/ok").send(&sms).await;
    assert_eq!(ok.status, DeliveryStatus::Successful);
    assert_eq!(
        ok.message_id.as_ref().map(CarrierMessageId::as_str),
        Some("prov-1")
    );
    assert_eq!(ok.status_code, 200);
    let (headers, body) = provider
        .received
        .lock()
        .expect("lock")
        .pop()
        .expect("one request");
    assert_eq!(headers["authorization"], "Bearer s3cret");
    assert_eq!(body["to"], "+393481234567");
    assert_eq!(body["from"], "Acme");
    assert_eq!(body["text"], "Code 1234");
    assert_eq!(body["encoding"], "GSM7");
    assert_eq!(body["parts"], 1);
    assert_eq!(body["template_id"], "T1");
    assert_eq!(body["message_id"], sms.message_id.as_str());

    assert_eq!(
        transport(&base, "/throttle").send(&sms).await.status,
        DeliveryStatus::Throttled
    );
    assert_eq!(
        transport(&base, "/error").send(&sms).await.status,
        DeliveryStatus::TemporaryFailure
    );
    let bad = transport(&base, "/bad").send(&sms).await;
    assert_eq!(
        (bad.status, bad.status_code),
        (DeliveryStatus::PermanentFailure, 400)
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_a_temporary_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let report = transport(&format!("http://{address}"), "/ok")
        .send(&sms())
        .await;
    assert_eq!(report.status, DeliveryStatus::TemporaryFailure);
    assert!(!report.status_message.as_str().contains("s3cret"));
}

/// A fresh SQLite store with one account, and the server key.
fn store() -> (Arc<dyn Store>, Arc<ServerKey>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn Store> = Arc::new(
        otpd_store::SqliteStore::open(&dir.path().join("otpd.db"), Arc::new(SystemClock))
            .expect("store"),
    );
    let key = Arc::new(ServerKey::from_hex(&"07".repeat(32)).expect("key"));
    (store, key, dir)
}

/// Commits a verification and its message as a send does; `claimed_for` is the claim a send
/// takes for its own first attempt (`None`: left to the outbox loop, as after a restart).
async fn committed_message(
    store: &Arc<dyn Store>,
    key: &ServerKey,
    claimed_for: Option<Duration>,
) -> OutboxMessage {
    let account = AccountId::generate();
    store
        .create_account(NewAccount {
            id: account.clone(),
            name: Name::parse("a").expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![],
            credits: None,
            default_sender: None,
            limits: Default::default(),
        })
        .await
        .expect("account");
    let verify_id = VerifyId::generate();
    let message_id = MessageId::generate();
    let to = E164::parse("+393481234567").expect("number");
    store
        .create_verification(
            NewVerification {
                id: verify_id.clone(),
                key: VerificationKey {
                    account_id: account,
                    dialect: Dialect::Amm,
                    app: String::new(),
                    reference: String::new(),
                    destination: to.clone(),
                },
                sender: "Acme".into(),
                digest: key.digest_code(
                    DigestSubject::Verification(&verify_id),
                    &OtpCode::generate(CodeLength::new(4).expect("len")),
                ),
                ttl: Ttl::new(Duration::from_secs(300)).expect("ttl"),
                max_attempts: MaxAttempts::new(3).expect("attempts"),
                sandbox: false,
                sandbox_code: None,
                parts: 1,
                outbox: Some(NewOutboxMessage {
                    id: message_id.clone(),
                    sealed_text: key.seal(b"Code 1234"),
                    encoding: Encoding::Gsm7,
                    parts: 1,
                    entity_id: None,
                    template_id: None,
                    claimed_for,
                }),
            },
            SendGuards {
                max_sends_per_destination: 10,
                window: Duration::from_secs(3600),
                charge: 1,
            },
        )
        .await
        .expect("send");
    OutboxMessage {
        id: message_id,
        verify_id,
        to,
        from: "Acme".into(),
        text: MessageText::Open("Code 1234".into()),
        encoding: Encoding::Gsm7,
        parts: 1,
        entity_id: None,
        template_id: None,
        attempts: 0,
    }
}

/// The message's record once it is no longer pending, within two seconds.
async fn settled(store: &Arc<dyn Store>, id: &MessageId) -> MessageRecord {
    settled_within(store, id, Duration::from_secs(2)).await
}

async fn settled_within(store: &Arc<dyn Store>, id: &MessageId, limit: Duration) -> MessageRecord {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let found = store.find_message(id).await.expect("find").expect("exists");
        if found.state != MessageState::Pending {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("message {id} still pending");
}

/// Starts the outbox loop of a dispatcher that delivers through the provider's `path` and
/// retries within 50 to 100 ms.
fn run_outbox(store: &Arc<dyn Store>, key: Arc<ServerKey>, base: &str, path: &str) {
    let settings = DispatchSettings {
        poll_interval: Duration::from_millis(20),
        retry: RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            max_attempts: 5,
        },
        ..DispatchSettings::default()
    };
    let transport = Arc::new(transport(base, path));
    let dispatcher = OutboxDispatcher::new(store.clone(), transport, key, settings);
    tokio::spawn(dispatcher.run(std::future::pending()));
}

#[tokio::test]
async fn the_dispatcher_retries_until_the_provider_recovers() {
    let (base, provider) = provider().await;
    let (store, key, _dir) = store();
    let message = committed_message(&store, &key, None).await;
    // Committed unclaimed, as after a restart: the outbox loop finds it.
    run_outbox(&store, key, &base, "/flaky");
    let record = settled(&store, &message.id).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.carrier_message_id.as_deref(), Some("77"));
    assert_eq!(provider.flaky_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_provider_that_asks_for_a_wait_is_not_called_again_before_it() {
    let (base, provider) = provider().await;
    let (store, key, _dir) = store();
    let message = committed_message(&store, &key, None).await;
    let report = transport(&base, "/busy-for-a-second").send(&sms()).await;
    assert_eq!(
        (report.status, report.retry_after),
        (DeliveryStatus::Throttled, Some(BUSY_FOR))
    );
    provider.busy_calls.lock().expect("lock").clear();
    // Without the provider's wait, the next attempt would come within 100 ms.
    run_outbox(&store, key, &base, "/busy-for-a-second");
    let record = settled_within(&store, &message.id, Duration::from_secs(10)).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.carrier_message_id.as_deref(), Some("after-wait"));
    let calls = provider.busy_calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1] - calls[0] >= BUSY_FOR,
        "called again after {:?}",
        calls[1] - calls[0]
    );
}

/// A message committed as a send commits it (claimed for its first attempt), and a dispatcher
/// that delivers through the provider's `path`.
async fn send_through(
    path: &str,
) -> (
    OutboxDispatcher,
    OutboxMessage,
    Arc<dyn Store>,
    tempfile::TempDir,
) {
    let (base, _provider) = provider().await;
    let (store, key, dir) = store();
    let message = committed_message(&store, &key, Some(Duration::from_secs(60))).await;
    let dispatcher = OutboxDispatcher::new(
        store.clone(),
        Arc::new(transport(&base, path)),
        key,
        DispatchSettings::default(),
    );
    (dispatcher, message, store, dir)
}

#[tokio::test]
async fn a_send_gets_the_first_attempts_report_and_its_outcome_is_stored() {
    let (dispatcher, message, store, _dir) = send_through("/ok").await;
    let id = message.id.clone();
    let report = dispatcher
        .deliver(message, Duration::from_secs(5))
        .await
        .expect("a report within the wait");
    assert_eq!(report.status, DeliveryStatus::Successful);
    assert_eq!(
        report.message_id.as_ref().map(CarrierMessageId::as_str),
        Some("prov-1")
    );
    let record = settled(&store, &id).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.attempts, 1);
}

#[tokio::test]
async fn a_first_attempt_slower_than_the_wait_goes_on_after_the_send_is_answered() {
    let (dispatcher, message, store, _dir) = send_through("/slow").await;
    let id = message.id.clone();
    let report = dispatcher.deliver(message, SLOW_PROVIDER / 6).await;
    assert!(report.is_none(), "answered before the provider: {report:?}");
    let record = settled(&store, &id).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.carrier_message_id.as_deref(), Some("slow-1"));
}

#[tokio::test]
async fn a_send_dropped_while_its_first_attempt_waits_does_not_cancel_the_attempt() {
    let (dispatcher, message, store, _dir) = send_through("/slow").await;
    let id = message.id.clone();
    // The client hung up: the send's future is dropped half way through its wait.
    let dropped = tokio::time::timeout(
        SLOW_PROVIDER / 6,
        dispatcher.deliver(message, Duration::from_secs(5)),
    )
    .await;
    assert!(dropped.is_err(), "the provider had not answered yet");
    let record = settled(&store, &id).await;
    assert_eq!(record.state, MessageState::Sent);
    assert_eq!(record.carrier_message_id.as_deref(), Some("slow-1"));
}
