//! Reading a request's body within the size limit and the body deadline, for the dialects'
//! extractors, which answer each way it can fail in their own format.

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use http::header::CONTENT_LENGTH;
use http_body_util::LengthLimitError;
use tower_http::timeout::TimeoutError;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than the limit, by its `Content-Length` or by what arrived.
    TooLarge,
    /// Not all there by the body deadline (`ApiSettings::body_deadline`).
    TimedOut,
    /// The connection failed half-way, or the framing was wrong.
    Unreadable,
}

/// The whole body, of at most `limit` bytes. A `Content-Length` over the limit is refused before
/// anything is read.
pub(crate) async fn read(parts: &Parts, body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|error| classify(&*error.into_inner()))
}

/// The cause is wrapped by each body layer in turn (axum's, the size limit's), so it is looked
/// for down the chain of sources.
fn classify(error: &(dyn std::error::Error + 'static)) -> BodyError {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return BodyError::TooLarge;
        }
        if error.is::<TimeoutError>() {
            return BodyError::TimedOut;
        }
        cause = error.source();
    }
    BodyError::Unreadable
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{StreamExt, stream};
    use tower_http::timeout::DeadlineBody;

    use super::*;

    fn parts(content_length: Option<&str>) -> Parts {
        let mut request = http::Request::post("/");
        if let Some(length) = content_length {
            request = request.header(CONTENT_LENGTH, length);
        }
        request.body(()).expect("request").into_parts().0
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = read(&parts(Some("5")), Body::from("hello"), 5).await;
        assert_eq!(body, Ok(Bytes::from("hello")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_declared_or_not() {
        let declared = read(&parts(Some("6")), Body::from("hello!"), 5).await;
        assert_eq!(declared, Err(BodyError::TooLarge));
        let counted = read(&parts(None), Body::from("hello!"), 5).await;
        assert_eq!(counted, Err(BodyError::TooLarge));
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_its_deadline_timed_out() {
        let trickle =
            stream::iter([Ok::<_, std::io::Error>(Bytes::from("part"))]).chain(stream::pending());
        let late = DeadlineBody::new(Duration::from_millis(20), Body::from_stream(trickle));
        let read = read(&parts(None), Body::new(late), 1024).await;
        assert_eq!(read, Err(BodyError::TimedOut));
    }

    #[tokio::test]
    async fn a_connection_lost_mid_body_is_unreadable() {
        let lost = stream::iter([Err::<Bytes, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))]);
        let read = read(&parts(None), Body::from_stream(lost), 1024).await;
        assert_eq!(read, Err(BodyError::Unreadable));
    }
}
