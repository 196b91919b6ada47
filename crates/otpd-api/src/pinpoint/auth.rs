//! The `Signed` extractor: reads the body (within the size limit) and accepts the request only
//! if its SigV4 signature is the account's.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use http::header::AUTHORIZATION;
use otpd_core::account::Account;
use otpd_core::{Clock, SystemClock};

use super::error::PinpointError;
use super::sigv4::{self, Authorization, SignatureError};
use crate::AppState;
use crate::body::{self, BodyError};

/// A request whose signature checked out, with its account, signing region and body.
pub struct Signed {
    pub account: Arc<Account>,
    pub region: String,
    pub body: Bytes,
}

impl From<SignatureError> for PinpointError {
    fn from(error: SignatureError) -> Self {
        PinpointError::Forbidden(error.to_string())
    }
}

impl FromRequest<AppState> for Signed {
    type Rejection = PinpointError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings.max_body_bytes;
        let (parts, body) = request.into_parts();
        let body = body::read(&parts, body, limit)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => PinpointError::PayloadTooLarge(limit),
                BodyError::TimedOut => {
                    PinpointError::RequestTimeout(state.settings.body_deadline.as_secs())
                }
                BodyError::Unreadable => {
                    PinpointError::BadRequest("The request body could not be read".into())
                }
            })?;

        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(SignatureError::Missing)?
            .to_str()
            .map_err(|_| SignatureError::Malformed)?;
        let authorization = Authorization::parse(header)?;
        let stamp = sigv4::check_request_time(
            &parts,
            &authorization,
            SystemTime::now(),
            state.settings.max_clock_skew,
        )?;
        let found = state
            .accounts
            .credentials(&authorization.access_key_id)
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot look up credentials");
                PinpointError::Internal
            })?
            .ok_or(SignatureError::UnknownKey)?;
        sigv4::verify(
            &parts,
            &body,
            &authorization,
            stamp,
            found.secrets_at(SystemClock.now()),
            &state.signing_keys,
        )?;
        Ok(Self {
            account: Arc::clone(&found.account),
            region: authorization.region.to_owned(),
            body,
        })
    }
}
