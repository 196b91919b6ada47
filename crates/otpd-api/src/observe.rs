//! Request ids and request logging. Every request gets a fresh id, returned in `x-request-id`
//! (and `x-amzn-RequestId`, which the AWS SDKs read) and attached to every log line of the
//! request. Log lines carry the method, the path and who called: never a query string (the amm
//! dialect puts codes there) nor any other header or the body. Behind a load balancer the TCP
//! peer is the balancer, so the caller's address it passes on in `x-forwarded-for` is logged too
//! (as given: it only informs the log, it decides nothing).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, for error bodies that must carry it.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Adds what a handler did to the request's log line.
pub fn record(field: &'static str, value: &str) {
    tracing::Span::current().record(field, value);
}

pub async fn observe(request: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
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
