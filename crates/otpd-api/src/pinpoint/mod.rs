//! The Amazon Pinpoint dialect: SendOTPMessage, VerifyOTPMessage and the application resource,
//! JSON over SigV4, errors as the AWS SDKs parse them.

mod apps;
mod auth;
mod error;
mod otp;
pub mod sigv4;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode};
use otpd_core::ApplicationId;
use otpd_core::account::{Account, Application};
use tower_http::catch_panic::CatchPanicLayer;

pub use error::PinpointError;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/apps",
            post(apps::create)
                .get(apps::list)
                .options(preflight)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/apps/{application_id}",
            get(apps::get)
                .delete(apps::delete)
                .options(preflight)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/apps/{application_id}/otp",
            post(otp::send)
                .options(preflight)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/apps/{application_id}/verify-otp",
            post(otp::verify)
                .options(preflight)
                .fallback(method_not_allowed),
        )
        .layer(CatchPanicLayer::custom(|_| {
            PinpointError::Internal.into_response()
        }))
}

/// The CORS preflight answer. Every real request is still signed, so allowing any origin
/// grants nothing.
async fn preflight() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type, x-amz-date, x-amz-content-sha256, x-amz-security-token, x-amz-user-agent"),
    );
    response
}

async fn method_not_allowed() -> PinpointError {
    PinpointError::MethodNotAllowed
}

/// The application named in the path, if it exists and belongs to `account`.
async fn owned_application(
    state: &AppState,
    account: &Account,
    path: Result<Path<String>, PathRejection>,
) -> Result<Arc<Application>, PinpointError> {
    let not_found = || PinpointError::NotFound("Application not found".into());
    let Path(raw) = path.map_err(|_| not_found())?;
    let id = ApplicationId::parse(&raw).ok_or_else(not_found)?;
    let application = state
        .accounts
        .application(&id)
        .await
        .map_err(internal)?
        .ok_or_else(not_found)?;
    if application.account_id != account.id {
        return Err(PinpointError::Forbidden(
            "The application belongs to another account".into(),
        ));
    }
    Ok(application)
}

/// Logs an unexpected failure and answers 500.
fn internal(error: impl std::fmt::Display) -> PinpointError {
    tracing::error!(%error, "request failed");
    PinpointError::Internal
}
