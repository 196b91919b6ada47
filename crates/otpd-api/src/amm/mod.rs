//! The Italian provider's "SMS OTP" verify API: form parameters, HTTP basic auth, JSON answers
//! with the provider's own error codes.

mod error;
mod handlers;
mod request;
mod wire;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

pub use error::AmmError;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sms/v2/verify/send",
            post(handlers::send).fallback(method_not_allowed),
        )
        .route(
            "/sms/v2/verify/check",
            get(handlers::check).fallback(method_not_allowed),
        )
        .route(
            "/sms/v2/verify/command",
            post(handlers::command).fallback(method_not_allowed),
        )
        .route(
            "/sms/v2/verify/search",
            get(handlers::search).fallback(method_not_allowed),
        )
        .layer(CatchPanicLayer::custom(|_| {
            AmmError::Generic.into_response()
        }))
}

async fn method_not_allowed() -> AmmError {
    AmmError::MethodNotAllowed
}
