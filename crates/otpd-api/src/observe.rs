//! Request ids and request logging. Every request gets a fresh id, returned in `x-request-id`
//! (and `x-amzn-RequestId`, which the AWS SDKs read) and attached to every log line of the
//! request. Log lines carry the method, the path and who called: never a query string (the amm
//! dialect puts codes there) nor any other header or the body. Behind a load balancer the TCP
//! peer is the balancer, so the caller's address it passes on in `x-forwarded-for` is logged too
//! (as given: it only informs the log, it decides nothing).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use otpd_core::service::SendReceipt;
use uuid::Uuid;

/// The request being handled: its id, and what its handler did, for its log line.
struct RequestContext {
    id: Uuid,
    facts: RefCell<Facts>,
}

/// What a handler reports about its request. Gathered here and written once, as fields of the
/// request's one log line: recording each into a tracing span formatted it on the spot, which
/// cost more than the line itself.
#[derive(Default)]
struct Facts {
    verify_id: Option<String>,
    message_id: Option<String>,
    delivery: Option<&'static str>,
    destination: Option<String>,
    outcome: Option<&'static str>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The id of the request being handled, for error bodies that must carry it.
pub fn current_request_id() -> String {
    request_id().map(|id| id.to_string()).unwrap_or_default()
}

/// The id of the request this task is handling, if it is handling one. The log formatter puts
/// it on every line logged while a request is handled. A tracing span per request did the same
/// for 4% of a verify's instructions (a span is made, entered and left at every poll, and
/// closed, whether or not anything is logged inside it).
pub fn request_id() -> Option<Uuid> {
    REQUEST.try_with(|request| request.id).ok()
}

/// A fresh request id in UUID form: this process's random 64 bits, then a counter. Unique across
/// nodes and restarts without a call to the OS random generator per request (a request id
/// names a request; it guards nothing). Called once per request and never inlined: `otpd-bench
/// --instructions` counts requests by its calls.
#[inline(never)]
fn next_request_id() -> Uuid {
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
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn record(fill: impl FnOnce(&mut Facts)) {
    let _ = REQUEST.try_with(|request| fill(&mut request.facts.borrow_mut()));
}

/// Adds a send's ids and the first delivery attempt's status to the request's log line (the
/// dispatcher logs that attempt only at debug level, since this line says it).
pub fn record_send(receipt: &SendReceipt) {
    record(|facts| {
        facts.verify_id = Some(receipt.verify_id.to_string());
        facts.message_id = receipt.message_id.as_ref().map(ToString::to_string);
        facts.delivery = receipt
            .delivery
            .as_ref()
            .map(|report| report.status.as_str());
    });
}

/// Adds the destination, as the handler chose to show it (masked), to the request's log line.
pub fn record_destination(destination: &str) {
    record(|facts| facts.destination = Some(destination.to_owned()));
}

/// Adds a check's outcome to the request's log line.
pub fn record_outcome(outcome: &'static str) {
    record(|facts| facts.outcome = Some(outcome));
}

/// The address of the connection's other end (a load balancer's, behind one), when known.
pub(crate) fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}

pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = next_request_id();
    let context = RequestContext {
        id,
        facts: RefCell::default(),
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = peer_ip(request.extensions());
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(100).collect::<String>());
    let mut handling = std::pin::pin!(REQUEST.scope(context, next.run(request)));
    let mut response = handling.as_mut().await;
    let facts = handling
        .take_value()
        .map(|context| context.facts.into_inner())
        .unwrap_or_default();
    let status = response.status();
    let elapsed = started.elapsed();
    crate::metrics::record_request(route.as_ref().map(MatchedPath::as_str), status, elapsed);
    // Logged after the request's scope has ended, so its id is named here.
    tracing::info!(
        request_id = %id,
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        %method,
        %path,
        peer = peer.map(tracing::field::display),
        forwarded_for = forwarded_for.as_deref(),
        verify_id = facts.verify_id.as_deref(),
        message_id = facts.message_id.as_deref(),
        delivery = facts.delivery,
        destination = facts.destination.as_deref(),
        outcome = facts.outcome,
        "request handled"
    );
    let mut text = Uuid::encode_buffer();
    if let Ok(value) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut text)) {
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
        let first = next_request_id();
        let second = next_request_id();
        assert_ne!(first, second);
        assert_eq!(first.get_version_num(), 4);
        assert_eq!(first.as_bytes()[..8], second.as_bytes()[..8]);
    }
}
