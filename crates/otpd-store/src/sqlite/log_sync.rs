//! Making the writer's commits durable without making the writer wait for the disk.
//!
//! The write connection commits with `synchronous = NORMAL`: a commit's frames are written to
//! the log file and seen by the other connections, but not yet flushed to the disk. This thread
//! flushes the log file (`fdatasync`) and only then answers the callers of the batches it
//! covers; meanwhile the writer runs the next batch instead of waiting for the disk. SQLite
//! appends frames to the log in order, and a crash keeps the longest run of whole commits that
//! reached the disk, so one flush begun after a batch's `COMMIT` returned makes that batch
//! durable, and every batch before it. Nobody is answered before their commit is durable, as
//! with `synchronous = FULL`.
//!
//! What SQLite flushes itself under `NORMAL` it still does: the log's header when the log starts
//! over, and the log before a checkpoint copies it into the database.
//!
//! The readers see a commit as soon as it is written, before it is flushed: for the length of a
//! flush (a millisecond or two under load) a search may show a send whose caller has not been
//! answered yet, and which a power cut would undo. Every write and every check goes through the
//! writer, so none is answered on the strength of such a row.
//!
//! A flush that fails leaves the writes it should have made durable in doubt (after a failed
//! `fsync` Linux may have dropped the pages it could not write, and a later `fsync` succeeds).
//! The store then refuses every write until otpd is restarted, which recovers the database from
//! what is on the disk, and `/readyz` says it is not ready.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use super::Failure;
use super::writer::Answer;

/// From a flush's start to its end: the disk's fsync time.
const LOG_FLUSH_DURATION: &str = "otpd_sqlite_log_flush_duration_seconds";
/// Group commits made durable by one flush.
const LOG_FLUSH_COMMITS: &str = "otpd_sqlite_log_flush_commits";

fn describe_metrics() {
    metrics::describe_histogram!(
        LOG_FLUSH_DURATION,
        metrics::Unit::Seconds,
        "Time of one flush (fdatasync) of the SQLite write-ahead log"
    );
    metrics::describe_histogram!(
        LOG_FLUSH_COMMITS,
        metrics::Unit::Count,
        "SQLite group commits made durable by one flush of the write-ahead log"
    );
}

/// The committed batches waiting for a flush, and whether a flush has failed.
#[derive(Clone)]
pub(super) struct LogSync {
    committed: flume::Sender<Vec<Answer>>,
    failed: Arc<AtomicBool>,
}

impl LogSync {
    /// Starts the flushing thread for the log file at `log_path` (the database's path with
    /// `-wal` appended).
    pub(super) fn spawn(log_path: PathBuf) -> std::io::Result<Self> {
        let (committed, queue) = flume::unbounded::<Vec<Answer>>();
        let failed = Arc::new(AtomicBool::new(false));
        describe_metrics();
        let flag = failed.clone();
        thread::Builder::new()
            .name("otpd-sqlite-flush".into())
            .spawn(move || run(LogFile::new(log_path), &queue, &flag))?;
        Ok(Self { committed, failed })
    }

    /// Hands over the answers of a batch whose `COMMIT` has returned: they are given once a
    /// flush begun after now has ended.
    pub(super) fn answer_when_durable(&self, answers: Vec<Answer>) {
        if let Err(flume::SendError(answers)) = self.committed.send(answers) {
            for answer in answers {
                answer(Err(Failure::WriterGone));
            }
        }
    }

    /// Returns once every batch handed over before has been flushed (or refused).
    pub(super) fn wait_until_flushed(&self) {
        let (flushed, wait) = std::sync::mpsc::sync_channel(1);
        self.answer_when_durable(vec![Box::new(move |_| {
            let _ = flushed.send(());
        })]);
        let _ = wait.recv();
    }

    /// Whether a flush has failed: nothing written since can be trusted to be durable.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The answer to every write once a flush has failed, until otpd is restarted.
pub(super) fn refused() -> Failure {
    Failure::Database(
        "writes are refused: the write-ahead log could not be flushed to disk earlier; restart otpd"
            .into(),
    )
}

fn run(mut log: LogFile, queue: &flume::Receiver<Vec<Answer>>, failed: &AtomicBool) {
    while let Ok(first) = queue.recv() {
        let mut answers = first;
        let mut commits = 1;
        // Every batch committed by now is in the log: one flush serves them all.
        for more in queue.try_iter() {
            answers.extend(more);
            commits += 1;
        }
        if failed.load(Ordering::Relaxed) {
            // These frames follow ones that may never reach the disk, and a crash keeps only
            // the log up to the first missing frame: no later flush can make them durable.
            for answer in answers {
                answer(Err(refused()));
            }
            continue;
        }
        let started = Instant::now();
        let flushed = log.flush();
        metrics::histogram!(LOG_FLUSH_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(LOG_FLUSH_COMMITS).record(f64::from(commits));
        let outcome = match flushed {
            Ok(()) => Ok(()),
            Err(error) => {
                failed.store(true, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    "cannot flush the SQLite write-ahead log to disk; refusing writes until otpd is restarted"
                );
                Err(Failure::Database(format!(
                    "the write-ahead log could not be flushed to disk: {error}"
                )))
            }
        };
        for answer in answers {
            answer(outcome.clone());
        }
    }
}

/// The log file, opened by this thread on its first flush.
struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

impl LogFile {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Flushes the log file's written pages to the disk. The file at the path is the one
    /// flushed: SQLite deletes the log only when its last connection closes, and this store
    /// keeps its readers open, but were the log ever made anew, flushing the old one would
    /// make nothing durable.
    fn flush(&mut self) -> std::io::Result<()> {
        let file = match self.file.take() {
            Some(file) if self.is_at_path(&file)? => file,
            // Appending only: this handle must never overwrite a frame.
            _ => File::options().append(true).open(&self.path)?,
        };
        file.sync_data()?;
        self.file = Some(file);
        Ok(())
    }

    /// Asks for the inode number alone. A `stat` that reads a file's times makes the kernel
    /// (Linux 6.13 and later, multigrain timestamps) give its next write a finer time, which
    /// changes the inode: every flush then wrote the inode's block too, a second round trip to
    /// the disk, and waited for the busy core once more after it. Where `statx` is refused (a
    /// kernel before 4.11, some container sandboxes) a full `stat` does.
    #[cfg(target_os = "linux")]
    fn is_at_path(&self, file: &File) -> std::io::Result<bool> {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        use rustix::io::Errno;
        let identity =
            |statx: rustix::fs::Statx| (statx.stx_dev_major, statx.stx_dev_minor, statx.stx_ino);
        let same = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::INO).and_then(|open| {
            let named = statx(CWD, &self.path, AtFlags::empty(), StatxFlags::INO)?;
            Ok(identity(open) == identity(named))
        });
        match same {
            Err(Errno::NOSYS | Errno::PERM) => same_file_by_stat(file, &self.path),
            same => Ok(same?),
        }
    }

    #[cfg(all(unix, not(target_os = "linux")))]
    fn is_at_path(&self, file: &File) -> std::io::Result<bool> {
        same_file_by_stat(file, &self.path)
    }

    /// Elsewhere the log is opened anew for every flush.
    #[cfg(not(unix))]
    fn is_at_path(&self, _file: &File) -> std::io::Result<bool> {
        Ok(false)
    }
}

#[cfg(unix)]
fn same_file_by_stat(file: &File, path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer_into(results: &flume::Sender<Result<(), Failure>>) -> Answer {
        let results = results.clone();
        Box::new(move |outcome| {
            let _ = results.send(outcome);
        })
    }

    fn next_answer(answered: &flume::Receiver<Result<(), Failure>>) -> Result<(), Failure> {
        answered
            .recv_timeout(Duration::from_secs(5))
            .expect("answered")
    }

    #[test]
    fn batches_are_answered_once_the_log_is_flushed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("flushed.db-wal");
        std::fs::write(&path, b"frames").expect("log");
        let log_sync = LogSync::spawn(path).expect("flusher");
        let (results, answered) = flume::unbounded();
        log_sync.answer_when_durable(vec![answer_into(&results), answer_into(&results)]);
        log_sync.answer_when_durable(vec![answer_into(&results)]);
        for _ in 0..3 {
            let outcome = next_answer(&answered);
            assert!(outcome.is_ok(), "{outcome:?}");
        }
        assert!(!log_sync.failed());
    }

    #[test]
    fn a_log_that_cannot_be_flushed_fails_its_batches_and_every_later_one() {
        let dir = tempfile::tempdir().expect("dir");
        let log_sync = LogSync::spawn(dir.path().join("missing.db-wal")).expect("flusher");
        let (results, answered) = flume::unbounded();
        log_sync.answer_when_durable(vec![answer_into(&results)]);
        let outcome = next_answer(&answered);
        assert!(
            matches!(&outcome, Err(Failure::Database(message)) if message.contains("flushed")),
            "{outcome:?}"
        );
        assert!(log_sync.failed());
        // The log is there now, and a flush would succeed, but what follows the frames that
        // were lost cannot be recovered: later batches fail too.
        std::fs::write(dir.path().join("missing.db-wal"), b"frames").expect("log");
        log_sync.answer_when_durable(vec![answer_into(&results)]);
        let later = next_answer(&answered);
        assert!(
            matches!(&later, Err(Failure::Database(message)) if message.contains("refused")),
            "{later:?}"
        );
    }

    #[test]
    fn a_log_made_anew_is_the_one_flushed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("renewed.db-wal");
        std::fs::write(&path, b"first").expect("log");
        let mut log = LogFile::new(path.clone());
        log.flush().expect("first flush");
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, b"second").expect("log made anew");
        let at_path = |log: &LogFile| {
            let file = log.file.as_ref().expect("opened by the flush");
            let at_path = log.is_at_path(file).expect("stat");
            #[cfg(unix)]
            assert_eq!(
                same_file_by_stat(file, &log.path).expect("stat"),
                at_path,
                "the fallback where statx is refused agrees"
            );
            at_path
        };
        assert!(!at_path(&log));
        log.flush().expect("flush of the new log");
        assert!(at_path(&log));
    }
}
