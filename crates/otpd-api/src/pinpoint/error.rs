//! Pinpoint's errors as the AWS SDKs expect them: the status, the `x-amzn-ErrorType` header that
//! names the exception class, and a `{"RequestID", "Message"}` body.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::observe::current_request_id;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinpointError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("The method is not allowed for this resource")]
    MethodNotAllowed,
    #[error("The request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Not in Pinpoint's model, which has no error for a client too slow to send its request;
    /// AWS's front ends answer one so (408, `RequestTimeoutException`), and the SDKs read any
    /// named exception.
    #[error("The request body did not arrive within {0} seconds")]
    RequestTimeout(u64),
    /// A rate limit; `retry_after` becomes the `Retry-After` header.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("An internal error occurred")]
    Internal,
}

impl PinpointError {
    /// A rate limit's refusal, whose message says when to try again if that is known.
    pub fn too_many_requests(reason: &str, retry_after: Option<Duration>) -> Self {
        let message = match retry_after {
            Some(wait) => format!(
                "{reason}; try again in {} seconds",
                crate::retry_after::whole_seconds(wait)
            ),
            None => format!("{reason}; try again later"),
        };
        Self::TooManyRequests {
            message,
            retry_after,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The exception name in Pinpoint's service model.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequestException",
            Self::Forbidden(_) => "ForbiddenException",
            Self::NotFound(_) => "NotFoundException",
            Self::MethodNotAllowed => "MethodNotAllowedException",
            Self::PayloadTooLarge(_) => "PayloadTooLargeException",
            Self::RequestTimeout(_) => "RequestTimeoutException",
            Self::TooManyRequests { .. } => "TooManyRequestsException",
            Self::Internal => "InternalServerErrorException",
        }
    }
}

#[derive(Serialize)]
struct MessageBody {
    #[serde(rename = "RequestID")]
    request_id: String,
    #[serde(rename = "Message")]
    message: String,
}

impl IntoResponse for PinpointError {
    fn into_response(self) -> Response {
        let body = MessageBody {
            request_id: current_request_id(),
            message: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(self.error_type()),
        );
        if let Self::TooManyRequests {
            retry_after: Some(wait),
            ..
        } = self
        {
            headers.insert(RETRY_AFTER, crate::retry_after::header(wait));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_says_when_to_try_again() {
        let error =
            PinpointError::too_many_requests("Too many", Some(Duration::from_millis(59_001)));
        assert_eq!(error.to_string(), "Too many; try again in 60 seconds");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "60");
        assert_eq!(
            response.headers()["x-amzn-errortype"],
            "TooManyRequestsException"
        );
    }

    #[test]
    fn a_rate_limit_that_cannot_tell_has_no_retry_after() {
        let error = PinpointError::too_many_requests("Too many", None);
        assert_eq!(error.to_string(), "Too many; try again later");
        assert!(!error.into_response().headers().contains_key(RETRY_AFTER));
    }
}
