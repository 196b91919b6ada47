//! The web console: what an operator looks at in a browser. The accounts with their credit, the
//! outbox's backlog, the deliveries given up on lately, and one message's or one verification's
//! record, as the command line shows them (never a code, a secret or a whole phone number).
//!
//! It is read-only and answers only the operator, by HTTP basic auth (user `operator`, the
//! password the server was given); without a password it does not exist (404). An address that
//! gives a wrong password too often is refused for a while (`throttle`). Pages are
//! rendered on the server with every value escaped, carry no script, and forbid the browser to
//! load anything, frame them or cache them.

mod pages;
mod throttle;

use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, RETRY_AFTER,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use otpd_core::outbox::MessageId;
use otpd_core::ports::StoreError;
use otpd_core::{AccessKeyId, VerifyId};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use throttle::LoginThrottle;

/// The only user name the console knows.
pub const OPERATOR: &str = "operator";
/// Shorter operator passwords are refused at start: the console is reachable by anyone who can
/// reach the API.
pub const MIN_PASSWORD_CHARS: usize = 16;

/// The operator's password, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct ConsolePassword([u8; 32]);

/// Never prints the digest.
impl std::fmt::Debug for ConsolePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsolePassword(..)")
    }
}

impl ConsolePassword {
    /// A password file's text, without its line end; `None` when too short.
    pub fn parse(text: &str) -> Option<Self> {
        let password = text.trim_end_matches(['\r', '\n']);
        (password.chars().count() >= MIN_PASSWORD_CHARS).then(|| Self(digest(password)))
    }

    /// Compared as digests, in constant time.
    fn admits(&self, password: &str) -> bool {
        bool::from(self.0.ct_eq(&digest(password)))
    }
}

/// The console's door: the operator's password, and the addresses that guessed it wrong.
#[derive(Debug)]
pub struct ConsoleAccess {
    password: ConsolePassword,
    throttle: LoginThrottle,
}

impl ConsoleAccess {
    pub fn new(password: ConsolePassword) -> Self {
        Self {
            password,
            throttle: LoginThrottle::default(),
        }
    }
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

/// How many of the newest failed deliveries the overview lists.
const FAILED_SHOWN: usize = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/message", get(message))
        .route("/console/verification", get(verification))
}

/// A request the operator made: extracting it is the authentication.
struct Operator;

/// Why a console request is not served.
enum Refusal {
    /// The server has no console password.
    Disabled,
    Unauthorized,
    /// The address gave too many wrong passwords; it may try again after this many seconds.
    Throttled {
        retry_after_secs: u64,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Disabled => crate::not_found(),
            Self::Unauthorized => {
                let mut response = secured(pages::unauthorized(), StatusCode::UNAUTHORIZED);
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"otpd console\", charset=\"UTF-8\""),
                );
                response
            }
            Self::Throttled { retry_after_secs } => {
                let mut response = secured(
                    pages::throttled(retry_after_secs),
                    StatusCode::TOO_MANY_REQUESTS,
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let access = state.console.as_ref().ok_or(Refusal::Disabled)?;
        let client = crate::observe::peer_ip(&parts.extensions);
        let now = Instant::now();
        if let Some(wait) = access.throttle.wait(client, now) {
            return Err(Refusal::Throttled {
                retry_after_secs: crate::retry_after::whole_seconds(wait),
            });
        }
        match crate::basic_auth::credentials(parts.headers.get(AUTHORIZATION)) {
            Some((user, given)) if user == OPERATOR && access.password.admits(&given) => {
                access.throttle.succeeded(client);
                Ok(Operator)
            }
            // A browser asks first without credentials: that is no guess.
            None => Err(Refusal::Unauthorized),
            Some(_) => {
                if access.throttle.failed(client, now) {
                    let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
                    tracing::warn!(
                        %client,
                        "console: too many wrong passwords from this address; refused for a while"
                    );
                }
                Err(Refusal::Unauthorized)
            }
        }
    }
}

/// A page with the headers that keep a browser from doing more with it than showing it.
fn secured(page: maud::Markup, status: StatusCode) -> Response {
    let mut response = (status, Html(page.into_string())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A database fault, shown as such (and logged with its cause).
fn unavailable(error: &StoreError) -> Response {
    tracing::error!(%error, "console: the database does not answer");
    secured(pages::unavailable(), StatusCode::SERVICE_UNAVAILABLE)
}

async fn overview(_: Operator, State(state): State<AppState>) -> Response {
    let store = state.store();
    let read = async {
        Ok::<_, StoreError>(pages::Overview {
            accounts: store.list_accounts().await?,
            applications: store.list_applications(None).await?,
            backlog: store.outbox_backlog().await?,
            failed: store.failed_messages(FAILED_SHOWN).await?,
            sms_in_last_hour: store.sms_in_last_hour().await?,
            carrier_link: state.service.carrier_link(),
        })
    };
    match read.await {
        Ok(overview) => secured(pages::overview(&overview), StatusCode::OK),
        Err(error) => unavailable(&error),
    }
}

#[derive(Deserialize)]
struct MessageQuery {
    id: Option<String>,
}

async fn message(
    _: Operator,
    State(state): State<AppState>,
    Query(query): Query<MessageQuery>,
) -> Response {
    let asked = query.id.unwrap_or_default();
    let Some(id) = MessageId::parse(asked.trim()) else {
        return secured(pages::message_not_found(&asked), StatusCode::NOT_FOUND);
    };
    let found = state.store().find_message(&id).await;
    page_or_not_found(found, pages::message, || pages::message_not_found(&asked))
}

/// A found record's page, the not-found page, or the database's fault.
fn page_or_not_found<T>(
    found: Result<Option<T>, StoreError>,
    page: impl FnOnce(&T) -> maud::Markup,
    missing: impl FnOnce() -> maud::Markup,
) -> Response {
    match found {
        Ok(Some(record)) => secured(page(&record), StatusCode::OK),
        Ok(None) => secured(missing(), StatusCode::NOT_FOUND),
        Err(error) => unavailable(&error),
    }
}

#[derive(Deserialize)]
struct VerificationQuery {
    account: Option<String>,
    id: Option<String>,
}

async fn verification(
    _: Operator,
    State(state): State<AppState>,
    Query(query): Query<VerificationQuery>,
) -> Response {
    let asked = query.id.unwrap_or_default();
    let key = AccessKeyId::parse(query.account.unwrap_or_default().trim());
    let id = VerifyId::parse(asked.trim());
    let (Some(key), Some(id)) = (key, id) else {
        return secured(pages::verification_not_found(&asked), StatusCode::NOT_FOUND);
    };
    let store = state.store();
    let found = match store.find_account_by_key(&key).await {
        Ok(Some(account)) => store
            .find_verification(&account.id, &id)
            .await
            .map(|found| found.map(|verification| (account, verification))),
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    page_or_not_found(
        found,
        |(account, verification)| pages::verification(account, verification),
        || pages::verification_not_found(&asked),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_is_its_first_line_of_at_least_16_characters() {
        let password = ConsolePassword::parse("correct horse battery\n").expect("long enough");
        assert!(password.admits("correct horse battery"));
        assert!(!password.admits("correct horse battery\n"));
        assert!(!password.admits("correct horse batter"));
        assert!(ConsolePassword::parse("fifteen chars!!\n").is_none());
        assert!(ConsolePassword::parse("sixteen chars!!!\r\n").is_some());
        assert_eq!(format!("{password:?}"), "ConsolePassword(..)");
    }
}
