//! otpd's own `/metrics` page, read before and after a window for the figures the CPU a request
//! cannot show: how the SQLite writer (`group_commit`) and the PostgreSQL groups
//! (`postgres_groups`) grouped the window's requests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Longer than a server under full load takes to answer, short enough not to hold up a run.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of otpd's `/metrics` at `address`; `None` if the server does not answer in time.
pub async fn read_metrics(address: SocketAddr) -> Option<String> {
    tokio::time::timeout(METRICS_TIMEOUT, fetch_metrics(address))
        .await
        .ok()?
        .ok()
}

/// One sample of Prometheus' text format: `name{labels} value`, with `labels` the text between
/// the braces (empty when there are none).
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// The samples of a `/metrics` page, comments and unreadable lines left out.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.trim().parse::<f64>().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
}

/// The body of `GET /metrics`, over a connection of its own (hyper's client, as the load's).
async fn fetch_metrics(address: SocketAddr) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/metrics")
        .header(http::header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "/metrics answered {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_and_without_labels() {
        let text = "# TYPE a counter\na_total 3\nb_sum{statement=\"send\",le=\"8\"} 2.5\nbroken\n";
        let read: Vec<Sample<'_>> = samples(text).collect();
        assert_eq!(
            read,
            [
                Sample {
                    name: "a_total",
                    labels: "",
                    value: 3.0
                },
                Sample {
                    name: "b_sum",
                    labels: "statement=\"send\",le=\"8\"",
                    value: 2.5
                },
            ]
        );
    }
}
