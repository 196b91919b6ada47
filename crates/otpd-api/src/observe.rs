//! Request ids and request logging. Every request gets a fresh id, returned in `x-request-id`
//! (and `x-amzn-RequestId`, which the AWS SDKs read) and attached to every log line of the
//! request. Log lines carry the method, the path and who called: never a query string (the amm
//! dialect puts codes there) nor any other header or the body. Behind a load balancer the TCP
//! peer is the balancer, so the caller's address it passes on in `x-forwarded-for` is logged too
//! (as given: it only informs the log, it decides nothing).

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use otpd_core::service::SendReceipt;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, for error bodies that must carry it.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A fresh request id in UUID form: this process's random 64 bits, then a counter. Unique across
/// nodes and restarts without a call to the OS random generator per request (a request id
/// names a request; it guards nothing).
fn next_request_id() -> String {
    static PROCESS: LazyLock<u64> = LazyLock::new(|| {
        let mut bytes = [0u8; 8];
        otpd_core::crypto::fill_random(&mut bytes);
        u64::from_be_bytes(bytes)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&PROCESS.to_be_bytes());
    bytes[8..].copy_from_slice(&count.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Adds what a handler did to the request's log line.
pub fn record(field: &'static str, value: &str) {
    tracing::Span::current().record(field, value);
}

/// Adds a send's ids and the first delivery attempt's status to the request's log line (the
/// dispatcher logs that attempt only at debug level, since this line says it).
pub fn record_send(receipt: &SendReceipt) {
    record("verify_id", receipt.verify_id.as_str());
    if let Some(message_id) = &receipt.message_id {
        record("message_id", message_id.as_str());
    }
    if let Some(report) = &receipt.delivery {
        record("delivery", report.status.as_str());
    }
}

pub async fn observe(request: Request, next: Next) -> Response {
    let request_id = next_request_id();
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(100).collect::<String>());
    // Handlers fill in what they did (see `record`), so one line per request says it all.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        %method,
        %path,
        peer = peer.map(tracing::field::display),
        forwarded_for = forwarded_for.as_deref(),
        verify_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
        delivery = tracing::field::Empty,
        destination = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let mut response = REQUEST_ID
        .scope(
            request_id.clone(),
            next.run(request).instrument(span.clone()),
        )
        .await;
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "request handled"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        let headers = response.headers_mut();
        headers.insert("x-request-id", value.clone());
        headers.insert("x-amzn-requestid", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let first = uuid::Uuid::parse_str(&next_request_id()).expect("a UUID");
        let second = uuid::Uuid::parse_str(&next_request_id()).expect("a UUID");
        assert_ne!(first, second);
        assert_eq!(first.get_version_num(), 4);
        assert_eq!(first.as_bytes()[..8], second.as_bytes()[..8]);
    }
}
