//! The amm API's errors: `{"errorMsg": "<CODE>"}` with the codes spelled exactly as the provider
//! documents them (`BAD STATUS` and `VERIFY ID ERROR` have spaces, the others underscores).

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmmError {
    /// A rate limit. `retry_after`, when known, becomes a `Retry-After` header: not in the
    /// provider's documents, and harmless to a client that does not read it.
    #[error("ANTISPAM")]
    Antispam { retry_after: Option<Duration> },
    #[error("BAD_TO")]
    BadTo,
    #[error("BAD_TEXT_PLACEHOLDER")]
    BadTextPlaceholder,
    #[error("BAD_TEXT")]
    BadText,
    #[error("BAD_FROM")]
    BadFrom,
    /// Not in the provider's list: `sandbox` other than true/false. Refusing beats guessing,
    /// since a wrong guess would text a real phone.
    #[error("BAD_SANDBOX")]
    BadSandbox,
    #[error("BAD_ENCODING")]
    BadEncoding,
    #[error("BAD_APP_ID")]
    BadAppId,
    #[error("BAD_COD_LEN")]
    BadCodeLength,
    #[error("BAD_RETRY")]
    BadRetry,
    #[error("BAD_TTL")]
    BadTtl,
    #[error("NO_CREDIT")]
    NoCredit,
    #[error("VERIFY ID ERROR")]
    VerifyIdError,
    #[error("BAD STATUS")]
    BadStatus,
    #[error("BAD_COMMAND")]
    BadCommand,
    #[error("NO_PARAMS")]
    NoParams,
    /// 401: missing or wrong credentials.
    #[error("UNAUTHORIZED")]
    Unauthorized,
    /// 405.
    #[error("METHOD_NOT_ALLOWED")]
    MethodNotAllowed,
    /// 413: a body over the size limit.
    #[error("PAYLOAD_TOO_LARGE")]
    PayloadTooLarge,
    /// 408: the body was not all there by the body deadline. Not in the provider's list,
    /// which has no error for a client too slow to send its request.
    #[error("REQUEST_TIMEOUT")]
    RequestTimeout,
    /// 500: anything unexpected.
    #[error("GENERIC_ERROR")]
    Generic,
}

impl AmmError {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Generic => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    #[serde(rename = "errorMsg")]
    error_msg: String,
}

impl IntoResponse for AmmError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error_msg: self.to_string(),
            }),
        )
            .into_response();
        match self {
            Self::Unauthorized => {
                response.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Basic realm=\"otpd\""),
                );
            }
            Self::Antispam {
                retry_after: Some(wait),
            } => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, crate::retry_after::header(wait));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antispam_says_when_to_try_again_in_a_header_only() {
        let told = AmmError::Antispam {
            retry_after: Some(Duration::from_secs(3_000)),
        };
        assert_eq!(told.to_string(), "ANTISPAM");
        let response = told.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[RETRY_AFTER], "3000");
        let untold = AmmError::Antispam { retry_after: None }.into_response();
        assert!(!untold.headers().contains_key(RETRY_AFTER));
    }
}
