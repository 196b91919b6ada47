//! `GET /metrics`: what otpd counts (`otpd_core::metrics`) and the HTTP layer's own request
//! counts and latencies, in the Prometheus text format.
//!
//! Like `/healthz` it asks for no credentials, as Prometheus scrapers expect: scrape it on the
//! internal network or keep it behind the proxy. Nothing it shows names an account, a phone
//! number or a code, and the route label is the route's template (`unmatched` for any other
//! path), so a caller cannot make series up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Requests answered, by `route` and `status`.
pub const HTTP_REQUESTS: &str = "otpd_http_requests_total";
/// Time from a request's arrival to its answer, by `route`.
pub const HTTP_DURATION: &str = "otpd_http_request_duration_seconds";
const BUILD_INFO: &str = "otpd_build_info";
const START_TIME: &str = "process_start_time_seconds";
/// The route label of a request no route matched: the path itself would let callers make up series.
const UNMATCHED: &str = "unmatched";

/// Buckets of every histogram named `..._seconds`: from an fsync's or a verify's fraction of a
/// millisecond to the 2 s a send may wait for its first delivery attempt, and beyond.
const DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of every histogram named `..._size` (requests per SQLite group commit, up to the
/// writer's 512, and per PostgreSQL group, up to 128).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often the latencies recorded since are sorted into their buckets; until then each one is
/// kept (8 bytes), so this bounds what a busy server holds between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's metrics, to render.
#[derive(Clone)]
pub struct Metrics(PrometheusHandle);

impl Metrics {
    /// The Prometheus recorder, installed by the first call in a process. Metrics are
    /// process-wide, as the `metrics` facade is: applications built in one process (tests) share
    /// them. What is recorded before goes nowhere, help texts included, so call it before
    /// starting the parts that describe theirs (the store's threads).
    #[must_use = "a handle to render the metrics; dropping it keeps the recorder installed"]
    pub fn install() -> Self {
        static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();
        Self(INSTALLED.get_or_init(install_recorder).clone())
    }

    pub fn render(&self) -> String {
        self.0.render()
    }
}

fn install_recorder() -> PrometheusHandle {
    // Histograms are named by what they measure, so the other crates' get their buckets too.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
        })
        .unwrap_or_else(|_| unreachable!("the bucket lists are not empty"))
        .build_recorder();
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::warn!(%error, "another metrics recorder is installed: /metrics stays empty");
        return handle;
    }
    describe();
    otpd_core::metrics::publish_at_zero();
    record_process_facts();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("otpd-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        // Rendering does the same work, so scrapes alone keep the latencies in bounds.
        tracing::warn!(%error, "no metrics upkeep thread: latencies are folded at each scrape");
    }
    handle
}

fn describe() {
    otpd_core::metrics::describe();
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests answered");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its answer"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "When the process started, in Unix time"
    );
}

/// Which build runs, and since when (the recorder is installed at start-up).
fn record_process_facts() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(START_TIME).set(started.as_secs_f64());
}

/// The handles of one route's series. Looking a series up by name and labels on every request
/// (building the label list, hashing it, a registry lookup) takes 125-160 ns a call in a tight
/// loop, more with a request's cold caches; recording through a handle takes 8 ns for a counter
/// and 50 for a histogram.
struct RouteSeries {
    duration: Histogram,
    /// By status; a route answers with a handful.
    requests: Vec<(StatusCode, Counter)>,
}

impl RouteSeries {
    fn new(route: &str) -> Self {
        Self {
            duration: histogram!(HTTP_DURATION, "route" => route.to_owned()),
            requests: Vec::new(),
        }
    }

    fn requests(&mut self, route: &str, status: StatusCode) -> &Counter {
        let index = match self.requests.iter().position(|(seen, _)| *seen == status) {
            Some(index) => index,
            None => {
                let counter = counter!(
                    HTTP_REQUESTS,
                    "route" => route.to_owned(),
                    "status" => status.as_str().to_owned()
                );
                self.requests.push((status, counter));
                self.requests.len() - 1
            }
        };
        &self.requests[index].1
    }
}

thread_local! {
    /// Each thread's handles, by route template. The routes are the router's, so this stays
    /// small. Every handle is registered after `Metrics::install`: a router needs an `AppState`,
    /// which holds the installed `Metrics`.
    static ROUTES: RefCell<HashMap<Box<str>, RouteSeries>> = RefCell::new(HashMap::new());
}

/// Counts a request and its latency. `route` is the matched route's template.
pub(crate) fn record_request(route: Option<&str>, status: StatusCode, elapsed: Duration) {
    let route = route.unwrap_or(UNMATCHED);
    ROUTES.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            routes.insert(route.into(), RouteSeries::new(route));
        }
        if let Some(series) = routes.get_mut(route) {
            series.duration.record(elapsed.as_secs_f64());
            series.requests(route, status).increment(1);
        }
    });
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

/// The outbox figures come from the database, read now; the rest from the recorder.
async fn render(State(state): State<AppState>) -> ([(http::HeaderName, &'static str); 1], String) {
    let backlog = state.store().outbox_backlog().await;
    if let Err(error) = &backlog {
        tracing::warn!(%error, "/metrics: the database does not answer");
    }
    otpd_core::metrics::record_backlog(backlog.ok());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
