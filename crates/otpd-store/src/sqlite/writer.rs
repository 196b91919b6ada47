//! The single writer: one thread owns the write connection and commits whatever requests are
//! waiting as one transaction with one fsync (group commit). Each request runs in its own
//! savepoint, so one request's failure never fails its batch-mates, and nobody is answered
//! before the commit is durable.

use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Failure;

/// The largest batch one commit carries; bounds the latency of the first request in it.
const MAX_BATCH: usize = 512;

/// What a job hands back to the writer: whether its savepoint should be kept, and how to
/// answer its caller once the fate of the transaction is known.
struct Ran {
    keep: bool,
    answer: Answer,
}

type Answer = Box<dyn FnOnce(Result<(), Failure>) + Send>;

/// A job gets the connection inside an open transaction, or the reason there is none (it then
/// answers its caller with that reason and returns `None`).
type Job = Box<dyn FnOnce(Result<&Connection, Failure>) -> Option<Ran> + Send>;

#[derive(Clone)]
pub(super) struct Writer {
    jobs: flume::Sender<Job>,
}

impl Writer {
    pub(super) fn spawn(connection: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = flume::unbounded::<Job>();
        thread::Builder::new()
            .name("otpd-sqlite-writer".into())
            .spawn(move || run(connection, queue))?;
        Ok(Self { jobs })
    }

    /// Runs `work` inside the next group transaction and returns its result once that
    /// transaction has committed. A `Err` from `work` rolls back only its own savepoint.
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
        self.jobs.send(job).map_err(|_| Failure::WriterGone)?;
        answer.await.map_err(|_| Failure::WriterGone)?
    }
}

fn run(connection: Connection, queue: flume::Receiver<Job>) {
    // Blocks for the first job, then takes everything else already waiting.
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&connection, batch);
    }
}

fn run_batch(connection: &Connection, batch: Vec<Job>) {
    let mut pending: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut in_transaction = execute(connection, "BEGIN IMMEDIATE").map_err(Failure::from);
    for job in batch {
        if let Err(failure) = &in_transaction {
            job(Err(failure.clone()));
            continue;
        }
        if let Err(error) = execute(connection, "SAVEPOINT job") {
            job(Err(Failure::from(error)));
            continue;
        }
        let Some(ran) = job(Ok(connection)) else {
            continue;
        };
        if connection.is_autocommit() {
            // SQLite aborted the whole transaction (disk full, I/O error): nothing in this
            // batch so far survives.
            (ran.answer)(Err(Failure::Aborted));
            answer_all(&mut pending, Failure::Aborted);
            in_transaction = execute(connection, "BEGIN IMMEDIATE").map_err(Failure::from);
            continue;
        }
        let closing = if ran.keep {
            execute(connection, "RELEASE job")
        } else {
            execute(connection, "ROLLBACK TO job").and_then(|()| execute(connection, "RELEASE job"))
        };
        if let Err(error) = closing {
            (ran.answer)(Err(Failure::from(error)));
            continue;
        }
        pending.push(ran.answer);
    }
    if in_transaction.is_err() {
        return;
    }
    match execute(connection, "COMMIT") {
        Ok(()) => pending.into_iter().for_each(|answer| answer(Ok(()))),
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
