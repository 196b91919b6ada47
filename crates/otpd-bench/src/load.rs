//! A closed-loop load generator: each connection sends a request, waits for the answer, and
//! sends the next, over its own HTTP/1.1 keep-alive connection (hyper's client, which costs the
//! generator's core little).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Builds the n-th request of a run; `None` when the run has nothing left to send (its
/// prepared codes are used up), which ends the connection's loop.
pub type MakeRequest = Arc<dyn Fn(u64) -> Option<Request<Full<Bytes>>> + Send + Sync>;

/// What one run measured in its window.
#[derive(Debug, Default)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    /// The time measured over: the planned window, or less if the run ran out of work (zero if
    /// it did so in the warm-up).
    pub window: Duration,
    /// The timeline's latencies, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Every measured request as (completion, latency), both in microseconds, the completion
    /// counted from the start of the window, in completion order: where in time the slow ones
    /// were.
    pub timeline: Vec<(u32, u32)>,
    /// When the last measured request completed: a run that ran out of work early is measured
    /// over the time it actually ran.
    pub last_completion: Option<Instant>,
    /// Whether a connection stopped because the run had no more requests to make (its
    /// prepared codes were used up), not because its window ended.
    pub ran_out_of_work: bool,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        if self.window.is_zero() {
            return 0.0;
        }
        self.requests as f64 / self.window.as_secs_f64()
    }

    pub fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies_us.len() as f64 * fraction).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// The phases of a run, shared by its connections.
#[derive(Clone, Copy)]
pub struct Phases {
    pub measure_from: Instant,
    pub measure_until: Instant,
}

impl Phases {
    /// How long the measuring window is meant to last.
    pub fn window(&self) -> Duration {
        self.measure_until - self.measure_from
    }
}

/// The answers a run has had so far, warm-up included, for its caller to wait on.
#[derive(Clone, Default)]
pub struct Answered(Arc<AtomicU64>);

impl Answered {
    fn count_one(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until `count` answers have come or `deadline` has passed; whether they came.
    pub async fn wait_for(&self, count: u64, deadline: Instant) -> bool {
        loop {
            if self.0.load(Ordering::Relaxed) >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs `connections` closed loops, spread over `addresses` in turn, until
/// `phases.measure_until`, counting only what completes inside the measuring window; every
/// answer, in the window or not, is counted in `answered`.
pub async fn run(
    addresses: &[SocketAddr],
    connections: usize,
    phases: Phases,
    make: MakeRequest,
    answered: Answered,
) -> anyhow::Result<Measured> {
    let sequence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for (_, &address) in (0..connections).zip(addresses.iter().cycle()) {
        let (make, sequence, answered) = (make.clone(), sequence.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            connection_loop(address, phases, make, sequence, answered).await
        }));
    }
    let mut total = Measured {
        window: phases.window(),
        ..Measured::default()
    };
    for task in tasks {
        let part = task.await??;
        total.requests += part.requests;
        total.errors += part.errors;
        total.timeline.extend(part.timeline);
        total.last_completion = total.last_completion.max(part.last_completion);
        total.ran_out_of_work |= part.ran_out_of_work;
    }
    total.timeline.sort_unstable();
    total.latencies_us = total.timeline.iter().map(|&(_, latency)| latency).collect();
    total.latencies_us.sort_unstable();
    // A run that ran out of work early is measured over the time it ran: none of it, if it ran
    // out in the warm-up.
    total.window = match total.last_completion {
        Some(last) => total.window.min(last - phases.measure_from),
        None => Duration::ZERO,
    };
    Ok(total)
}

async fn connection_loop(
    address: SocketAddr,
    phases: Phases,
    make: MakeRequest,
    sequence: Arc<AtomicU64>,
    answered: Answered,
) -> anyhow::Result<Measured> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut measured = Measured::default();
    loop {
        if Instant::now() >= phases.measure_until {
            break;
        }
        let Some(request) = make(sequence.fetch_add(1, Ordering::Relaxed)) else {
            measured.ran_out_of_work = true;
            break;
        };
        // The clock starts once the request is built and signed: a latency is the server's
        // answer as the client waits for it, not the load generator's own signing.
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        let finished = Instant::now();
        answered.count_one();
        if finished >= phases.measure_from && finished < phases.measure_until {
            measured.requests += 1;
            if !ok {
                measured.errors += 1;
            }
            let micros = u32::try_from((finished - started).as_micros()).unwrap_or(u32::MAX);
            let completed = (finished - phases.measure_from).as_micros();
            measured
                .timeline
                .push((u32::try_from(completed).unwrap_or(u32::MAX), micros));
            measured.last_completion = Some(finished);
        }
    }
    Ok(measured)
}

/// Sends `count` requests with `connections` loops and returns every answer body, for setup,
/// in the order the requests were made (the n of `make`), which is the order the server
/// created what they asked for.
pub async fn collect(
    address: SocketAddr,
    connections: usize,
    count: u64,
    make: MakeRequest,
) -> anyhow::Result<Vec<(u64, Bytes)>> {
    let sequence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (make, sequence) = (make.clone(), sequence.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut bodies = Vec::new();
            loop {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let request = make(n).context("setup requests never run out")?;
                let response = sender.send_request(request).await?;
                if !response.status().is_success() {
                    anyhow::bail!("setup request {n} failed with {}", response.status());
                }
                bodies.push((n, response.into_body().collect().await?.to_bytes()));
            }
            anyhow::Ok(bodies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    // Each loop's answers came back in its own order; a list by loop would hand a verify run
    // codes created `connections` apart, every one on a different database page.
    all.sort_unstable_by_key(|(n, _)| *n);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_answers_ends_when_they_have_come_or_at_the_deadline() {
        let answered = Answered::default();
        let soon = Instant::now() + Duration::from_millis(30);
        let came = tokio::time::timeout(Duration::from_secs(5), answered.wait_for(2, soon))
            .await
            .expect("the wait ends at its deadline");
        assert!(!came, "no answer has come");
        assert!(Instant::now() >= soon, "it waited until the deadline");

        answered.count_one();
        let later = Instant::now() + Duration::from_secs(5);
        let waiting = tokio::spawn({
            let answered = answered.clone();
            async move { answered.wait_for(2, later).await }
        });
        answered.count_one();
        assert!(waiting.await.expect("the wait ran"), "two answers came");
        assert!(Instant::now() < later, "it returned once they had come");
    }

    /// A real HTTP server on a free port that answers every request with 200.
    async fn answering_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address");
        let router = axum::Router::new().route("/", axum::routing::post(|| async { "{}" }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    fn request_to(address: SocketAddr) -> Request<Full<Bytes>> {
        Request::post(format!("http://{address}/"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }

    /// Runs `make`'s requests against `address` over `connections`, measuring from now for
    /// `window`.
    async fn run_for(
        address: SocketAddr,
        connections: usize,
        window: Duration,
        make: MakeRequest,
    ) -> Measured {
        let measure_from = Instant::now();
        let phases = Phases {
            measure_from,
            measure_until: measure_from + window,
        };
        run(&[address], connections, phases, make, Answered::default())
            .await
            .expect("the run ran")
    }

    #[tokio::test]
    async fn a_run_that_runs_out_of_requests_says_so_and_one_that_does_not_does_not() {
        let address = answering_server().await;
        let five: MakeRequest = Arc::new(move |n| (n < 5).then(|| request_to(address)));
        let short = run_for(address, 2, Duration::from_secs(5), five).await;
        assert!(short.ran_out_of_work);
        assert_eq!(short.requests, 5);
        assert!(
            short.window < Duration::from_secs(5),
            "measured over the time it ran"
        );

        let endless: MakeRequest = Arc::new(move |_| Some(request_to(address)));
        let full = run_for(address, 2, Duration::from_millis(200), endless).await;
        assert!(!full.ran_out_of_work, "its window ended it");
        assert!(full.requests > 0);
    }

    #[tokio::test]
    async fn a_run_with_nothing_in_its_window_did_not_run_out_of_requests() {
        let address = answering_server().await;
        let endless: MakeRequest = Arc::new(move |_| Some(request_to(address)));
        // A window that has ended by the time the loop starts.
        let nothing = run_for(address, 1, Duration::ZERO, endless).await;
        assert_eq!(nothing.requests, 0);
        assert!(nothing.window.is_zero());
        assert!(!nothing.ran_out_of_work);
    }

    #[test]
    fn a_run_with_no_request_in_its_window_reads_none_a_second() {
        let measured = Measured::default();
        assert!(measured.window.is_zero());
        assert_eq!(measured.per_second(), 0.0);
        assert_eq!(measured.percentile_ms(0.99), 0.0);
    }
}
