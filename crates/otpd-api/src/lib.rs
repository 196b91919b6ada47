//! otpd-api: the HTTP face of otpd.
//!
//! One axum router per dialect (`pinpoint`, `amm`), each with its own extractors and an
//! error type rendered in its own wire format, plus the shared pieces: request ids and request
//! logging without query strings or secrets, health endpoints, metrics and the web console.

pub mod amm;
mod basic_auth;
mod body;
pub mod console;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod pinpoint;
mod retry_after;
#[cfg(test)]
mod test_support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};
use otpd_core::ports::Store;
use otpd_core::service::{AccountService, VerificationService};
use pinpoint::sigv4::SigningKeys;
use tower_http::timeout::RequestBodyDeadlineLayer;

/// Everything a handler may need. axum clones the state for every request, so it is one `Arc`
/// (cloning and dropping the services' own `Arc`s one by one was 1-2% of a request's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What the handlers share; reached through `AppState`.
pub struct Shared {
    pub service: VerificationService,
    pub accounts: AccountService,
    pub settings: ApiSettings,
    pub signing_keys: SigningKeys,
    pub metrics: metrics::Metrics,
    /// The web console's operator password and sign-in throttle; without one there is no
    /// console.
    pub console: Option<console::ConsoleAccess>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.service.store()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Tunables of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The largest clock difference a SigV4 request may have.
    pub max_clock_skew: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive, from the end of its headers: a client
    /// trickling a body holds its connection no longer (408 in the dialect's format).
    pub body_deadline: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(15 * 60),
            max_body_bytes: 64 * 1024,
            body_deadline: Duration::from_secs(30),
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let body_deadline = state.settings.body_deadline;
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(console::router())
        .merge(pinpoint::router())
        .merge(amm::router())
        .fallback(unknown_path)
        .with_state(state)
        .layer(RequestBodyDeadlineLayer::new(body_deadline))
        .layer(axum::middleware::from_fn(observe::observe))
}

/// A path no dialect owns, answered in the format of the dialect its prefix suggests.
async fn unknown_path(uri: Uri) -> Response {
    if uri.path().starts_with("/v1/") {
        return pinpoint::PinpointError::NotFound("The requested resource does not exist".into())
            .into_response();
    }
    not_found()
}

/// The answer for a path nothing serves outside the dialects (a console switched off too).
fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"message": "not found"})),
    )
        .into_response()
}
