//! The amm API's errors: `{"errorMsg": "<CODE>"}` with the codes spelled exactly as the provider
//! documents them (`BAD STATUS` and `VERIFY ID ERROR` have spaces, the others underscores).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmmError {
    #[error("ANTISPAM")]
    Antispam,
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
        if self == Self::Unauthorized {
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"otpd\""),
            );
        }
        response
    }
}
