//! The `Signed` extractor: reads the body (within the size limit) and accepts the request only
//! if its SigV4 signature is the account's.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http_body_util::LengthLimitError;
use otpd_core::account::Account;

use super::error::PinpointError;
use super::sigv4::{self, Authorization, SignatureError};
use crate::AppState;

/// A request whose signature checked out, with its account, signing region and body.
pub struct Signed {
    pub account: Account,
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
        let declared_length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > limit as u64) {
            return Err(PinpointError::PayloadTooLarge(limit));
        }
        let body = axum::body::to_bytes(body, limit).await.map_err(|error| {
            if error
                .into_inner()
                .downcast_ref::<LengthLimitError>()
                .is_some()
            {
                PinpointError::PayloadTooLarge(limit)
            } else {
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
        let (account, secret) = state
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
            &secret,
            &state.signing_keys,
        )?;
        Ok(Self {
            account,
            region: authorization.region,
            body,
        })
    }
}
