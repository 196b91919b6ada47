//! The single writer: one thread owns the write connection and commits whatever requests are
//! waiting as one transaction (group commit). Nobody is answered before the commit is durable:
//! `log_sync` flushes the log and answers, while the writer goes on with the next batch.
//!
//! A request that fails before it changed anything (a refusal such as ANTISPAM, a duplicate key)
//! fails alone: SQLite undoes the failing statement itself. One that fails after changing rows
//! (a database fault, since no query refuses after writing) takes its batch down with it: the
//! transaction is rolled back and its batch-mates are told so. Savepoints around every request
//! would confine that rare case, but they cost every request two statements and a copy of each
//! page it touches (about a tenth of a send's CPU).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Failure;
use super::log_sync::{self, LogSync};
use super::wal::LogReset;

/// The largest batch one commit carries; bounds the latency of the first request in it.
const MAX_BATCH: usize = 512;

/// Requests (writer jobs: a send is one, the delivery outcomes waiting to be stored one more)
/// per group commit: how well the writer groups them.
pub const COMMIT_SIZE: &str = "otpd_sqlite_commit_size";
/// From a batch's `BEGIN` to its `COMMIT`, the log's flush not included (see `log_sync`).
const COMMIT_DURATION: &str = "otpd_sqlite_commit_duration_seconds";

/// Gives the metrics recorder installed now the help text of the writer's metrics.
fn describe_metrics() {
    metrics::describe_histogram!(
        COMMIT_SIZE,
        metrics::Unit::Count,
        "Requests per SQLite group commit"
    );
    metrics::describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time of one SQLite group commit, from BEGIN to COMMIT, before its flush to disk"
    );
}

/// Records a batch; once per commit, so the registry lookups cost nothing worth a cache.
fn record_commit(requests: usize, elapsed: Duration) {
    metrics::histogram!(COMMIT_SIZE).record(requests as f64);
    metrics::histogram!(COMMIT_DURATION).record(elapsed.as_secs_f64());
}

/// What a job hands back to the writer: whether it succeeded (its changes are to be kept), and
/// how to answer its caller once the fate of the transaction is known.
struct Ran {
    keep: bool,
    answer: Answer,
}

/// Told whether the transaction is durable.
pub(super) type Answer = Box<dyn FnOnce(Result<(), Failure>) + Send>;

/// A job gets the connection inside an open transaction, or the reason there is none (it then
/// answers its caller with that reason and returns `None`).
type Job = Box<dyn FnOnce(Result<&Connection, Failure>) -> Option<Ran> + Send>;

/// What the writer thread is handed: a job, or the request to close its connection and end.
enum Message {
    Job(Job),
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(super) struct Writer {
    jobs: flume::Sender<Message>,
}

impl Writer {
    /// Starts the writer thread, which hands each committed batch to `log_sync`; between
    /// batches it lets the log start over when `log_reset` asks (see `wal`).
    pub(super) fn spawn(
        connection: Connection,
        log_sync: LogSync,
        log_reset: Arc<LogReset>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = flume::unbounded::<Message>();
        describe_metrics();
        thread::Builder::new()
            .name("otpd-sqlite-writer".into())
            .spawn(move || run(connection, queue, &log_sync, &log_reset))?;
        Ok(Self { jobs })
    }

    /// Runs `work` inside the next group transaction and returns its result once that
    /// transaction has committed. An `Err` from `work` is returned at once if `work` changed
    /// nothing; if it changed rows, the whole batch is rolled back (see the module docs).
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let connection = match connection {
                Ok(connection) => connection,
                Err(failure) => {
                    let _ = reply.send(Err(failure));
                    return None;
                }
            };
            let result = work(connection);
            let keep = result.is_ok();
            Some(Ran {
                keep,
                answer: Box::new(move |committed| {
                    let _ = reply.send(committed.and(result));
                }),
            })
        });
        self.jobs
            .send(Message::Job(job))
            .map_err(|_| Failure::WriterGone)?;
        answer.await.map_err(|_| Failure::WriterGone)?
    }

    /// Closes the write connection once the jobs queued before are committed and durable, and
    /// returns then; jobs asked for after fail. Closed last, after every other connection to
    /// the database, it copies the log into the database and deletes it.
    pub(super) async fn close(&self) {
        let (closed, done) = oneshot::channel();
        if self.jobs.send(Message::Close(closed)).is_ok() {
            let _ = done.await;
        }
    }
}

fn run(
    connection: Connection,
    queue: flume::Receiver<Message>,
    log_sync: &LogSync,
    log_reset: &LogReset,
) {
    loop {
        let (batch, closing) = next_batch(&queue);
        let queue_closed = batch.is_empty() && closing.is_none();
        if !batch.is_empty() {
            commit(&connection, batch, log_sync, log_reset);
        }
        if let Some(closed) = closing {
            log_sync.wait_until_flushed();
            super::close_connection(connection, "the write connection");
            let _ = closed.send(());
            refuse_until_dropped(&queue);
            return;
        }
        if queue_closed {
            return;
        }
    }
}

/// Commits a batch and hands it to `log_sync`, then lets the log start over if it is asked to.
fn commit(connection: &Connection, batch: Vec<Job>, log_sync: &LogSync, log_reset: &LogReset) {
    if log_sync.failed() {
        for job in batch {
            job(Err(log_sync::refused()));
        }
        return;
    }
    let (requests, started) = (batch.len(), Instant::now());
    run_batch(connection, batch, log_sync);
    record_commit(requests, started.elapsed());
    log_reset.finish_if_wanted(connection);
}

/// Once closed, the writer answers what still comes until the last handle to it is gone: a job
/// left in the queue would never be answered.
fn refuse_until_dropped(queue: &flume::Receiver<Message>) {
    for message in queue.iter() {
        match message {
            Message::Job(job) => {
                job(Err(Failure::WriterGone));
            }
            Message::Close(closed) => {
                let _ = closed.send(());
            }
        }
    }
}

/// Blocks for the first job, then takes everything else already waiting, up to a `Close`,
/// which ends the batch and is returned with it. An empty batch without a `Close` means the
/// queue has closed: every handle to the writer is gone.
fn next_batch(queue: &flume::Receiver<Message>) -> (Vec<Job>, Option<oneshot::Sender<()>>) {
    let mut batch = Vec::with_capacity(16);
    let Ok(mut message) = queue.recv() else {
        return (batch, None);
    };
    loop {
        match message {
            Message::Job(job) => batch.push(job),
            Message::Close(closed) => return (batch, Some(closed)),
        }
        if batch.len() == MAX_BATCH {
            return (batch, None);
        }
        match queue.try_recv() {
            Ok(next) => message = next,
            Err(_) => return (batch, None),
        }
    }
}

fn run_batch(connection: &Connection, batch: Vec<Job>, log_sync: &LogSync) {
    let mut pending: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut in_transaction = execute(connection, "BEGIN IMMEDIATE").map_err(Failure::from);
    for job in batch {
        if let Err(failure) = &in_transaction {
            job(Err(failure.clone()));
            continue;
        }
        let changes_before = connection.total_changes();
        let Some(ran) = job(Ok(connection)) else {
            continue;
        };
        let aborted = connection.is_autocommit();
        let half_done = !ran.keep && connection.total_changes() != changes_before;
        if aborted || half_done {
            // SQLite aborted the whole transaction (disk full, I/O error), or the job failed
            // half way: nothing in this batch so far may be committed. A failed job is told its
            // own error; a job that succeeded inside the aborted transaction is told it is lost.
            (ran.answer)(if ran.keep {
                Err(Failure::Aborted)
            } else {
                Ok(())
            });
            if !aborted {
                let _ = execute(connection, "ROLLBACK");
            }
            answer_all(&mut pending, Failure::Aborted);
            in_transaction = execute(connection, "BEGIN IMMEDIATE").map_err(Failure::from);
        } else if ran.keep {
            pending.push(ran.answer);
        } else {
            // Nothing was changed: the job's own error is its answer, given with the batch's
            // so that no answer rests on what is not yet durable.
            pending.push(Box::new(move |_| (ran.answer)(Ok(()))));
        }
    }
    if in_transaction.is_err() {
        return;
    }
    match execute(connection, "COMMIT") {
        Ok(()) => log_sync.answer_when_durable(pending),
        Err(error) => {
            let _ = execute(connection, "ROLLBACK");
            answer_all(&mut pending, Failure::from(error));
        }
    }
}

/// Runs one of the writer's fixed statements, prepared once per connection.
fn execute(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn answer_all(pending: &mut Vec<Answer>, failure: Failure) {
    for answer in pending.drain(..) {
        answer(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("writer.db");
        let connection = super::super::open_for_test(&path);
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE items (id INTEGER PRIMARY KEY);
                 INSERT INTO items (id) VALUES (1);",
            )
            .expect("schema");
        let log_sync = LogSync::spawn(dir.path().join("writer.db-wal")).expect("flusher");
        (
            Writer::spawn(connection, log_sync, Arc::default()).expect("spawn"),
            dir,
        )
    }

    fn insert(connection: &Connection, id: i64) -> Result<(), Failure> {
        connection.execute("INSERT INTO items (id) VALUES (?1)", [id])?;
        Ok(())
    }

    /// Holds the writer for a moment once it has started, so that whatever is queued meanwhile
    /// forms the next batch.
    async fn occupy(writer: &Writer) -> tokio::task::JoinHandle<Result<(), Failure>> {
        let (started, running) = oneshot::channel();
        let writer = writer.clone();
        let busy = tokio::spawn(async move {
            writer
                .write(move |_| {
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(())
                })
                .await
        });
        running.await.expect("the writer ran the job");
        busy
    }

    async fn stored(writer: &Writer) -> Vec<i64> {
        writer
            .write(|connection| {
                let mut statement = connection.prepare("SELECT id FROM items ORDER BY id")?;
                let ids = statement
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()?;
                Ok(ids)
            })
            .await
            .expect("read")
    }

    #[tokio::test]
    async fn once_the_log_cannot_be_flushed_every_write_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let connection = super::super::open_for_test(&dir.path().join("writer.db"));
        connection
            .execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY);")
            .expect("schema");
        // A log file that is not there cannot be flushed.
        let log_sync = LogSync::spawn(dir.path().join("elsewhere-wal")).expect("flusher");
        let writer = Writer::spawn(connection, log_sync, Arc::default()).expect("spawn");
        let first = writer.write(|connection| insert(connection, 1)).await;
        assert!(
            matches!(&first, Err(Failure::Database(message)) if message.contains("flushed")),
            "{first:?}"
        );
        let next = writer.write(|connection| insert(connection, 2)).await;
        assert!(
            matches!(&next, Err(Failure::Database(message)) if message.contains("refused")),
            "{next:?}"
        );
    }

    #[tokio::test]
    async fn a_job_that_fails_before_writing_fails_alone() {
        let (writer, _dir) = writer();
        let busy = occupy(&writer).await;
        let (first, refused, last) = tokio::join!(
            writer.write(|connection| insert(connection, 2)),
            // A duplicate key: the statement fails and changes nothing.
            writer.write(|connection| insert(connection, 1)),
            writer.write(|connection| insert(connection, 3)),
        );
        busy.await.expect("join").expect("occupied");
        assert!(first.is_ok() && last.is_ok());
        assert!(matches!(refused, Err(Failure::Duplicate)));
        assert_eq!(stored(&writer).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_job_that_fails_half_way_takes_its_batch_down_and_commits_nothing_of_it() {
        let (writer, _dir) = writer();
        let busy = occupy(&writer).await;
        let (before, half_done, after) = tokio::join!(
            writer.write(|connection| insert(connection, 2)),
            writer.write(|connection| {
                insert(connection, 10)?;
                insert(connection, 1)
            }),
            writer.write(|connection| insert(connection, 3)),
        );
        busy.await.expect("join").expect("occupied");
        assert!(matches!(half_done, Err(Failure::Duplicate)));
        assert!(
            matches!(before, Err(Failure::Aborted)),
            "its batch-mate's changes went with the rollback"
        );
        assert!(
            after.is_ok(),
            "the jobs after it run in a fresh transaction"
        );
        assert_eq!(stored(&writer).await, vec![1, 3]);
    }
}
