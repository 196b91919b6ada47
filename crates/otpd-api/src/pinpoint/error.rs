//! Pinpoint's errors as the AWS SDKs expect them: the status, the `x-amzn-ErrorType` header that
//! names the exception class, and a `{"RequestID", "Message"}` body.

use axum::Json;
use axum::response::{IntoResponse, Response};
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
    #[error("{0}")]
    TooManyRequests(String),
    #[error("An internal error occurred")]
    Internal,
}

impl PinpointError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
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
            Self::TooManyRequests(_) => "TooManyRequestsException",
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
        response.headers_mut().insert(
            "x-amzn-errortype",
            HeaderValue::from_static(self.error_type()),
        );
        response
    }
}
