//! Group commit on PostgreSQL: the sends (and the checks) that arrive while a node's previous
//! group is in the database go together as one statement over arrays, in one transaction and
//! one commit. PostgreSQL spends most of a one-row statement on the round trip and the commit,
//! not on the row: one statement per row cost 140-260 µs of the database's CPU per row, one
//! statement for 16 rows 18 µs (pgbench, 2 cores, 2026-12-03).
//!
//! Each kind of statement has one group in the database at a time per node, as the SQLite
//! writer has one batch. Four at a time were measured too (2026-12-03, amm sends and checks at
//! 16 and 64 connections): smaller groups, 20-80% more of PostgreSQL's CPU per request, and
//! fewer requests a second in every row; two at a time, the same rate within the noise at
//! 20-40% more of PostgreSQL's CPU. The groups' locks are taken in one order (see
//! migration 5), so in the common cases two nodes' groups queue on each other rather than wait
//! in a circle. When the database refuses a group's statement, its transaction took every
//! request in it down: because of one request (a duplicate id), or because it waited in a
//! circle with another transaction and PostgreSQL rolled it back. The requests then run one by
//! one, so that only the request at fault fails.

use std::future::Future;
use std::time::Instant;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};

use super::pool_error;
use crate::failure::Failure;

/// Requests in one statement at most: a group of 64 concurrent clients fits in one.
const MAX_GROUP: usize = 128;

/// Requests per group, by statement: how well a node groups them.
pub const GROUP_SIZE: &str = "otpd_postgres_group_size";
/// From a group's first request leaving the queue to its answers: the round trip, the
/// statement, its lock waits and the commit.
const GROUP_DURATION: &str = "otpd_postgres_group_duration_seconds";

/// Gives the metrics recorder installed now the help text of the group metrics.
fn describe_metrics() {
    metrics::describe_histogram!(
        GROUP_SIZE,
        metrics::Unit::Count,
        "Requests per PostgreSQL group statement (one transaction and one commit)"
    );
    metrics::describe_histogram!(
        GROUP_DURATION,
        metrics::Unit::Seconds,
        "Time of one PostgreSQL group statement, from asking the pool for a connection to its commit"
    );
}

/// A statement that answers many requests at once.
pub(super) trait GroupStatement: Send + Sync + 'static {
    /// The `statement` label of the group metrics.
    const NAME: &'static str;
    type Request: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// Runs every request in one statement and answers them in order. `Err` is a failure of
    /// the statement as a whole, which rolled back every request in it.
    fn run(
        client: &Object,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer, Failure>>, tokio_postgres::Error>> + Send;
}

type Reply<S> = oneshot::Sender<Result<<S as GroupStatement>::Answer, Failure>>;

/// The queue of one kind of statement, and the task that empties it group by group.
pub(super) struct Group<S: GroupStatement> {
    queue: mpsc::UnboundedSender<(S::Request, Reply<S>)>,
}

impl<S: GroupStatement> Clone for Group<S> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<S: GroupStatement> Group<S> {
    /// Starts the task; it ends when the last clone of the store is dropped.
    pub(super) fn start(pool: Pool) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        describe_metrics();
        tokio::spawn(drive::<S>(pool, requests));
        Self { queue }
    }

    /// Runs `request` with whatever else is waiting. The request runs to its end even if the
    /// caller stops waiting: a check that reserved an attempt must record it.
    pub(super) async fn run(&self, request: S::Request) -> Result<S::Answer, Failure> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .map_err(|_| Failure::WriterGone)?;
        answer.await.map_err(|_| Failure::WriterGone)?
    }
}

async fn drive<S: GroupStatement>(
    pool: Pool,
    mut queue: mpsc::UnboundedReceiver<(S::Request, Reply<S>)>,
) {
    let size = metrics::histogram!(GROUP_SIZE, "statement" => S::NAME);
    let duration = metrics::histogram!(GROUP_DURATION, "statement" => S::NAME);
    let mut waiting = Vec::new();
    while let Some(first) = queue.recv().await {
        waiting.push(first);
        let started = Instant::now();
        // What arrives while a connection is found joins the group.
        let client = pool.get().await;
        while waiting.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => waiting.push(next),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = waiting.drain(..).unzip();
        let answers = match client {
            Ok(client) => answer::<S>(&client, &requests).await,
            Err(error) => every(requests.len(), &pool_error(error)),
        };
        size.record(requests.len() as f64);
        duration.record(started.elapsed().as_secs_f64());
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that stopped waiting has no use for its answer.
            let _ = reply.send(answer);
        }
    }
}

async fn answer<S: GroupStatement>(
    client: &Object,
    requests: &[S::Request],
) -> Vec<Result<S::Answer, Failure>> {
    match S::run(client, requests).await {
        Ok(answers) if answers.len() == requests.len() => answers,
        Ok(answers) => {
            let failure = Failure::Database(format!(
                "{} answers to a group of {}",
                answers.len(),
                requests.len()
            ));
            every(requests.len(), &failure)
        }
        // Refused by the database, not lost on the way: run each on its own.
        Err(error) if error.as_db_error().is_some() && requests.len() > 1 => {
            tracing::debug!(%error, requests = requests.len(), "a group was refused; one by one");
            one_by_one::<S>(client, requests).await
        }
        Err(error) => every(requests.len(), &error.into()),
    }
}

async fn one_by_one<S: GroupStatement>(
    client: &Object,
    requests: &[S::Request],
) -> Vec<Result<S::Answer, Failure>> {
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        let answer = match S::run(client, std::slice::from_ref(request)).await {
            Ok(mut one) if one.len() == 1 => one.remove(0),
            Ok(_) => Err(Failure::Database("no answer to a group of one".into())),
            Err(error) => Err(error.into()),
        };
        answers.push(answer);
    }
    answers
}

fn every<T>(count: usize, failure: &Failure) -> Vec<Result<T, Failure>> {
    (0..count).map(|_| Err(failure.clone())).collect()
}
