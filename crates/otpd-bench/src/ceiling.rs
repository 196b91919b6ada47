//! The ceilings otpd is measured against, served by this same binary on the server core:
//! a bare axum JSON handler, one durable SQLite insert per request with a commit each, and the
//! same insert with batched commits (whatever is waiting goes into one transaction).

use std::net::SocketAddr;
use std::path::Path;
use std::thread;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use rusqlite::Connection;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Ceiling {
    /// A handler that answers a small JSON body.
    Json,
    /// One durable SQLite insert per request, one commit each (WAL, synchronous=FULL).
    SqliteCommitEach,
    /// The same insert with group commit: one transaction and fsync for all waiting requests.
    SqliteBatched,
}

impl Ceiling {
    pub fn label(self) -> &'static str {
        match self {
            Self::Json => "ceiling: axum JSON",
            Self::SqliteCommitEach => "ceiling: SQLite insert, commit each",
            Self::SqliteBatched => "ceiling: SQLite insert, batched commits",
        }
    }
}

type Job = (u64, oneshot::Sender<bool>);

fn open(path: &Path) -> anyhow::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, created TEXT NOT NULL);",
    )?;
    Ok(connection)
}

fn writer(connection: Connection, queue: flume::Receiver<Job>, batched: bool) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        if batched {
            while let Ok(job) = queue.try_recv() {
                batch.push(job);
            }
        }
        let ok = (|| -> rusqlite::Result<()> {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            for (value, _) in &batch {
                connection.execute(
                    "INSERT INTO items (value, created) VALUES (?1, datetime('now'))",
                    [i64::try_from(*value).unwrap_or(0)],
                )?;
            }
            connection.execute_batch("COMMIT")
        })()
        .is_ok();
        for (_, reply) in batch {
            let _ = reply.send(ok);
        }
    }
}

async fn json() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"Valid": true}))
}

async fn insert(
    State(queue): State<flume::Sender<Job>>,
    body: bytes::Bytes,
) -> (http::StatusCode, &'static str) {
    let (reply, answer) = oneshot::channel();
    let value = body.len() as u64;
    if queue.send_async((value, reply)).await.is_err() {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "{}");
    }
    match answer.await {
        Ok(true) => (http::StatusCode::OK, "{\"ok\":true}"),
        _ => (http::StatusCode::INTERNAL_SERVER_ERROR, "{}"),
    }
}

/// Serves one ceiling on `port` (0 picks one) until killed; prints `listening PORT`.
pub async fn serve(kind: Ceiling, port: u16, dir: &Path) -> anyhow::Result<()> {
    let router = match kind {
        Ceiling::Json => Router::new().route("/", post(json)),
        Ceiling::SqliteCommitEach | Ceiling::SqliteBatched => {
            let connection = open(&dir.join("ceiling.db"))?;
            let (sender, queue) = flume::unbounded();
            let batched = kind == Ceiling::SqliteBatched;
            thread::spawn(move || writer(connection, queue, batched));
            Router::new().route("/", post(insert)).with_state(sender)
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening {}", listener.local_addr()?.port());
    axum::serve(listener, router).await?;
    Ok(())
}
