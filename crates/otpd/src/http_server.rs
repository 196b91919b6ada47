//! Accepting and serving HTTP connections, with the bounds a server facing unknown clients needs.
//!
//! `axum::serve` sets no timer and no limit: a client that connects and sends nothing, or sends
//! a request's headers a byte at a time, or leaves a keep-alive connection idle, held its
//! connection, a task and a file descriptor for as long as it liked, and enough such clients
//! used up the process's descriptors, which the SQLite readers, the log and the SMPP link need
//! too. Here:
//! - a client has `header_timeout` to send a request's headers, counted from the connection's
//!   start or the end of the previous response (hyper's header read timeout, which therefore
//!   also closes idle keep-alive connections); its body has a deadline of its own (the
//!   router's, see `otpd_api::ApiSettings`);
//! - a request's headers must fit in `READ_BUFFER_LIMIT`, so a client cannot make the server
//!   hold more than that for it;
//! - at most `max_connections` are served at once: at the limit, the server stops accepting
//!   and new clients wait in the kernel's listen queue until a connection ends;
//! - on shutdown, idle connections close at once, busy ones after their current request, and
//!   whatever is still open after `DRAIN_TIMEOUT` is dropped;
//! - with TLS, the handshake runs in the connection's own task, so a slow client holds up no
//!   other, and must end within `header_timeout` too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt;

use crate::tls::CurrentAcceptor;

/// The most a connection's read buffer holds: a request's headers must fit (the SDKs' take
/// under 2 KiB), and a body is read through it in pieces. hyper's default, about 400 KiB, let
/// each slow client make the server hold that much, 4 GiB over 10,000 connections; this is 160
/// MiB. Longer headers are answered 431.
const READ_BUFFER_LIMIT: usize = 16 * 1024;
/// How long a stopping server waits for its open connections before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits before accepting again after an error that is not one
/// connection's (out of file descriptors, say), so that it does not spin on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Connections open now.
const OPEN_CONNECTIONS: &str = "otpd_http_connections";
/// Connections closed because the client did not send a request's headers in time.
const TIMED_OUT_CONNECTIONS: &str = "otpd_http_connections_timed_out_total";
/// Connections closed because their TLS handshake failed or did not end in time.
const FAILED_HANDSHAKES: &str = "otpd_tls_handshakes_failed_total";

/// What one client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's headers, from the connection's start or the previous response.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// `--client-timeout-seconds` unless given.
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
    /// `--max-connections` unless given.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(Self::DEFAULT_TIMEOUT_SECONDS.into()),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS as usize,
        }
    }
}

/// Serves `router` on `listener` (HTTPS with `tls`, else plain HTTP) until `shutdown` resolves,
/// then drains the connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<CurrentAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    describe_metrics(tls.is_some());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER_LIMIT);
    let room = Arc::new(Semaphore::new(limits.max_connections));
    let mut capacity = CapacityWarning::new(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (permit, accepted) = tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = connections.join_next() => {
                if let Err(error) = ended {
                    tracing::error!(%error, "a connection's task failed");
                }
                continue;
            }
            accepted = accept_with_room(&listener, &room) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                capacity.check(room.available_permits());
                let router = router.clone();
                match &tls {
                    None => {
                        let connection =
                            serve_connection(&http, TokioIo::new(stream), peer, router);
                        connections.spawn(drive(graceful.watch(connection), permit));
                    }
                    Some(acceptor) => {
                        let (acceptor, http, watcher) =
                            (acceptor.get(), http.clone(), graceful.watcher());
                        connections.spawn(async move {
                            let handshake = tls_handshake(acceptor, stream);
                            let Some(stream) =
                                handshake_within(limits.header_timeout, handshake).await
                            else {
                                return;
                            };
                            let connection =
                                serve_connection(&http, TokioIo::new(stream), peer, router);
                            drive(watcher.watch(connection), permit).await;
                        });
                    }
                }
            }
            Err(error) if ends_one_connection(&error) => {
                tracing::debug!(%error, "a connection ended before it was accepted");
            }
            Err(error) => {
                drop(permit);
                tracing::warn!(%error, "cannot accept connections; trying again in a second");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    // New clients are refused from here on; the ones connected finish.
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing connections still open {} s after the shutdown began",
            DRAIN_TIMEOUT.as_secs()
        );
        connections.shutdown().await;
    }
}

/// Waits for room for one more connection, then for the connection. Dropped half-way (on
/// shutdown), it gives the room back; `TcpListener::accept` loses no connection when dropped.
async fn accept_with_room(
    listener: &TcpListener,
    room: &Arc<Semaphore>,
) -> (
    Option<OwnedSemaphorePermit>,
    std::io::Result<(TcpStream, SocketAddr)>,
) {
    // The semaphore is never closed, so this always holds a permit.
    let permit = room.clone().acquire_owned().await.ok();
    (permit, listener.accept().await)
}

/// Errors that end one connection before it was accepted, and leave the listener as it was.
fn ends_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// What a client that speaks plain HTTP to the HTTPS port is told, in plain HTTP, rather than
/// a TLS alert its HTTP library would report as a garbled answer or a reset.
const PLAIN_HTTP_ANSWER: &str = "This port speaks HTTPS: use an https:// URL\n";

/// The TLS handshake of a new connection. A first byte that begins an HTTP request line rather
/// than a TLS record (22, a handshake) is a client sent to the wrong scheme: it is answered
/// `PLAIN_HTTP_ANSWER`, and the connection ends as a failed handshake.
async fn tls_handshake(
    acceptor: TlsAcceptor,
    mut stream: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && first[0].is_ascii_uppercase() {
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_ANSWER}",
            PLAIN_HTTP_ANSWER.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with the request still unread would reset the connection, and the client
        // could lose the answer: read what it sends until it closes (within the handshake's
        // time limit), keeping none of it.
        let mut unread = [0u8; 1024];
        while stream.read(&mut unread).await? > 0 {}
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the client spoke plain HTTP to the HTTPS port",
        ));
    }
    acceptor.accept(stream).await
}

/// A TLS handshake's stream, or `None` (logged and counted) if it failed or took longer than
/// `limit`: a client that connects and sends nothing is cut off as on a plain connection.
async fn handshake_within<S>(
    limit: Duration,
    handshake: impl Future<Output = std::io::Result<S>>,
) -> Option<S> {
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            metrics::counter!(FAILED_HANDSHAKES).increment(1);
            tracing::debug!(%error, "a TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!(FAILED_HANDSHAKES).increment(1);
            tracing::debug!(
                "closed a connection whose client did not finish its TLS handshake in time"
            );
            None
        }
    }
}

/// An HTTP/1.1 connection (the only version otpd speaks) to `router`, which sees the client's
/// address as axum's `ConnectInfo`, as it did under `axum::serve`. Nagle's algorithm stays on, as
/// it was: each API response goes out in one write, so it delays none of them, and in eight
/// alternating benchmark pairs with `TCP_NODELAY` set the sends read 12% more CPU per request
/// (within this host's noise, but not shown to be nothing).
fn serve_connection<I>(
    http: &http1::Builder,
    io: TokioIo<I>,
    peer: SocketAddr,
    router: Router,
) -> impl GracefulConnection<Error = hyper::Error> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    http.serve_connection(io, TowerToHyperService::new(service))
}

/// Runs one connection (watched for shutdown) to its end, holding its room until then.
async fn drive(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    _room: Option<OwnedSemaphorePermit>,
) {
    let open = metrics::gauge!(OPEN_CONNECTIONS);
    open.increment(1.0);
    let ended = connection.await;
    open.decrement(1.0);
    match ended {
        Ok(()) => {}
        Err(error) if error.is_timeout() => {
            metrics::counter!(TIMED_OUT_CONNECTIONS).increment(1);
            tracing::debug!("closed a connection whose client sent no request in time");
        }
        Err(error) => tracing::debug!(%error, "a connection ended with an error"),
    }
}

/// One warning each time every connection is in use, rearmed once a tenth is free again.
struct CapacityWarning {
    max: usize,
    warned: bool,
}

impl CapacityWarning {
    fn new(max: usize) -> Self {
        Self { max, warned: false }
    }

    fn check(&mut self, free: usize) {
        if free == 0 && !self.warned {
            self.warned = true;
            tracing::warn!(
                max_connections = self.max,
                "every connection is in use: new clients wait until one ends"
            );
        } else if free >= self.max.div_ceil(10) {
            self.warned = false;
        }
    }
}

/// Gives the connection metrics their help text, and publishes the counters at 0 so that an
/// alert sees their first event (see `otpd_core::metrics::publish_at_zero`); the handshakes'
/// only when the server speaks TLS.
fn describe_metrics(tls: bool) {
    metrics::describe_gauge!(OPEN_CONNECTIONS, "HTTP connections open");
    metrics::describe_counter!(
        TIMED_OUT_CONNECTIONS,
        "HTTP connections closed because the client sent no complete request headers in time \
         (idle keep-alive connections included)"
    );
    metrics::describe_counter!(
        FAILED_HANDSHAKES,
        "HTTPS connections closed because their TLS handshake failed or did not end within the \
         client timeout"
    );
    metrics::counter!(TIMED_OUT_CONNECTIONS).increment(0);
    if tls {
        metrics::counter!(FAILED_HANDSHAKES).increment(0);
    }
}

/// Raises the process's soft limit on open files to its hard limit, as far as allowed, and
/// returns the limit now in force (`None`: unlimited or unknown). Every connection is a file.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum && limit.current.is_some() {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(error) => tracing::debug!(%error, "cannot raise the open files limit"),
        }
    }
    limit.current
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

/// Files a server needs besides its connections: the database and its readers, the log, the
/// SMS link, the listener.
const FILES_KEPT_FOR_THE_REST: u64 = 256;

/// `wanted` connections, or fewer if the open files limit would not hold them and the files
/// the rest of the server needs.
pub fn connections_within(wanted: usize, open_file_limit: Option<u64>) -> usize {
    let Some(limit) = open_file_limit else {
        return wanted;
    };
    let room = limit.saturating_sub(FILES_KEPT_FOR_THE_REST).max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_files_for_the_rest_of_the_server() {
        assert_eq!(connections_within(10_000, None), 10_000);
        assert_eq!(connections_within(10_000, Some(1_000_000)), 10_000);
        assert_eq!(connections_within(10_000, Some(1_024)), 768);
        assert_eq!(connections_within(10_000, Some(100)), 1);
    }

    #[test]
    fn the_capacity_warning_is_given_once_until_a_tenth_is_free() {
        let mut warning = CapacityWarning::new(100);
        warning.check(0);
        assert!(warning.warned);
        warning.check(5);
        assert!(warning.warned, "still nearly full: no new warning armed");
        warning.check(10);
        assert!(!warning.warned);
        warning.check(0);
        assert!(warning.warned);
    }
}
