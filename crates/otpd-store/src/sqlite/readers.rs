//! A few read connections, each on its own thread, sharing one queue. WAL lets them read while
//! the writer writes; they only ever see committed data.

use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Failure;

type Job = Box<dyn FnOnce(&Connection) + Send>;

#[derive(Clone)]
pub(super) struct Readers {
    jobs: flume::Sender<Job>,
}

impl Readers {
    pub(super) fn spawn(connections: Vec<Connection>) -> std::io::Result<Self> {
        let (jobs, queue) = flume::unbounded::<Job>();
        for (index, connection) in connections.into_iter().enumerate() {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("otpd-sqlite-reader-{index}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job(&connection);
                    }
                })?;
        }
        Ok(Self { jobs })
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
        self.jobs.send(job).map_err(|_| Failure::WriterGone)?;
        answer.await.map_err(|_| Failure::WriterGone)?
    }
}
