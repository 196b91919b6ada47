use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use otpd::http_server::ConnectionLimits;
use otpd::startup::Components;
use otpd_api::ApiSettings;
use otpd_core::account::{Application, Name};
use otpd_core::ports::Store;
use otpd_core::service::{AccountService, Limits};
use otpd_core::{ServerKey, SystemClock};
use otpd_sms::DispatchSettings;
use otpd_sms::transport::FileTransport;
use otpd_store::SqliteStore;
use tower::ServiceExt;

pub struct TestApp {
    pub router: Router,
    pub access_key_id: String,
    pub secret: String,
    pub app_id: String,
    pub sms_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("otpd.db"), Arc::new(SystemClock)).expect("store"),
    );
    let key = ServerKey::from_hex(&"42".repeat(32)).expect("key");
    let accounts = AccountService::new(store.clone(), Arc::new(key.clone()));
    let credentials = accounts
        .create_account(
            Name::parse("test").expect("name"),
            None,
            None,
            Default::default(),
        )
        .await
        .expect("account");
    let app = store
        .create_application(Application::new(
            credentials.account.id.clone(),
            Name::parse("app").expect("name"),
            Default::default(),
        ))
        .await
        .expect("app");
    let sms_file = dir.path().join("sms.jsonl");
    let components = Components {
        store,
        transport: Arc::new(FileTransport::new(sms_file.clone())),
        key,
        limits: Limits::default(),
        api: ApiSettings::default(),
        connections: ConnectionLimits::default(),
        dispatch: DispatchSettings::default(),
        retention: std::time::Duration::from_secs(30 * 24 * 3600),
        console: None,
        tls: None,
    };
    let (state, dispatcher) = components.build();
    tokio::spawn(dispatcher.run(std::future::pending()));
    TestApp {
        router: otpd_api::router(state),
        access_key_id: credentials.account.access_key_id.to_string(),
        secret: credentials.secret_access_key.expose().to_owned(),
        app_id: app.id.to_string(),
        sms_file,
        _dir: dir,
    }
}

impl TestApp {
    /// A request signed the way the AWS SDKs sign, at `time`.
    pub fn signed(&self, method: &str, path: &str, body: &str, time: SystemTime) -> Request<Body> {
        let host = "otpd.test";
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("content-type", "application/x-amz-json-1.1");
        let headers = [
            ("host", host),
            ("content-type", "application/x-amz-json-1.1"),
        ];
        let signable = SignableRequest::new(
            method,
            path,
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .expect("signable");
        let identity: Identity =
            Credentials::new(&self.access_key_id, &self.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-south-1")
            .name("mobiletargeting")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let (signing_headers, _) = instructions.into_parts();
        for header in signing_headers {
            builder = builder.header(header.name(), header.value());
        }
        builder.body(Body::from(body.to_owned())).expect("request")
    }

    pub fn signed_now(&self, method: &str, path: &str, body: &str) -> Request<Body> {
        self.signed(method, path, body, SystemTime::now())
    }

    pub async fn call(&self, request: Request<Body>) -> (Response<()>, serde_json::Value) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, ()), json)
    }

    pub fn send_body(&self, to: &str) -> String {
        serde_json::json!({
            "Channel": "SMS",
            "OriginationIdentity": "Acme",
            "DestinationIdentity": to,
            "ReferenceId": "r",
        })
        .to_string()
    }
}

pub const FIFTEEN_MINUTES: Duration = Duration::from_secs(15 * 60);
