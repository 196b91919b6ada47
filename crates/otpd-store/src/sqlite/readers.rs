//! A few read connections, each on its own thread, sharing one queue. WAL lets them read while
//! the writer writes; they only ever see committed data.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Failure;

type Job = Box<dyn FnOnce(&Connection) + Send>;

#[derive(Clone)]
pub(super) struct Readers {
    shared: Arc<Shared>,
}

struct Shared {
    /// The queue's only sender; `close` drops it, and each thread then ends once the reads
    /// queued before are done. A `Close` message could not do this: with several threads on one
    /// queue, a thread already closed could take the message meant for another.
    jobs: RwLock<Option<flume::Sender<Job>>>,
    /// One per thread, answered once its connection is closed.
    closed: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Readers {
    pub(super) fn spawn(connections: Vec<Connection>) -> std::io::Result<Self> {
        let (jobs, queue) = flume::unbounded::<Job>();
        let mut closed = Vec::with_capacity(connections.len());
        for (index, connection) in connections.into_iter().enumerate() {
            let queue = queue.clone();
            let (done, is_done) = oneshot::channel();
            thread::Builder::new()
                .name(format!("otpd-sqlite-reader-{index}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job(&connection);
                    }
                    super::close_connection(connection, "a read connection");
                    let _ = done.send(());
                })?;
            closed.push(is_done);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                jobs: RwLock::new(Some(jobs)),
                closed: Mutex::new(closed),
            }),
        })
    }

    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(work(connection));
        });
        let queued = match &*self
            .shared
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !queued {
            return Err(Failure::WriterGone);
        }
        answer.await.map_err(|_| Failure::WriterGone)?
    }

    /// Closes every read connection once the reads queued before are done, and returns then;
    /// reads asked for after fail.
    pub(super) async fn close(&self) {
        let jobs = self
            .shared
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(jobs);
        let closed = std::mem::take(
            &mut *self
                .shared
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for done in closed {
            let _ = done.await;
        }
    }
}
