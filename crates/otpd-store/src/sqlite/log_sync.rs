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
//! The thread runs at a higher CPU priority than the request threads where the system allows
//! it (see `thread_priority`): when the disk is done it answers at once, instead of waiting for
//! a turn on a core the request threads keep busy.
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
use super::thread_priority;
use super::writer::Answer;

/// From a flush's start to its end: the disk's time, and the flushing thread's waits for the
/// core between the steps of one `fdatasync` (on a busy core, most of it).
pub const LOG_FLUSH_DURATION: &str = "otpd_sqlite_log_flush_duration_seconds";
/// Group commits made durable by one flush.
pub const LOG_FLUSH_COMMITS: &str = "otpd_sqlite_log_flush_commits";

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
            .spawn(move || {
                thread_priority::set_own_niceness(thread_priority::LOG_FLUSHER, "log flusher");
                run(LogFile::new(log_path), &queue, &flag)
            })?;
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

/// The log file, opened by this thread on its first flush, with the identity it had then.
struct LogFile {
    path: PathBuf,
    open: Option<(File, Option<FileId>)>,
}

impl LogFile {
    fn new(path: PathBuf) -> Self {
        Self { path, open: None }
    }

    /// Flushes the log file's written pages to the disk. The file at the path is the one
    /// flushed: SQLite deletes the log only when its last connection closes, and this store
    /// keeps its readers open, but were the log ever made anew, flushing the old one would
    /// make nothing durable.
    fn flush(&mut self) -> std::io::Result<()> {
        let (file, id) = match self.open.take() {
            Some((file, Some(id))) if FileId::at(&self.path)? == Some(id) => (file, Some(id)),
            _ => {
                // Appending only: this handle must never overwrite a frame.
                let file = File::options().append(true).open(&self.path)?;
                let id = FileId::of(&file)?;
                (file, id)
            }
        };
        file.sync_data()?;
        self.open = Some((file, id));
        Ok(())
    }
}

/// What tells one file from another: its device and inode numbers. Where there are none
/// (`None`, outside Unix), the log is opened anew for every flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

#[cfg(unix)]
impl FileId {
    /// The open file's, read once when it is opened.
    fn of(file: &File) -> std::io::Result<Option<Self>> {
        Ok(Some(Self::from_metadata(&file.metadata()?)))
    }

    fn from_metadata(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// The file's at `path` now, read before every flush. On Linux it is asked of `statx` alone:
/// a `stat` that reads a file's times makes the kernel (Linux 6.13 and later, multigrain
/// timestamps) give its next write a finer time, which changes the inode, so every flush wrote
/// the inode's block too, a second round trip to the disk, and waited for the busy core once
/// more after it. Where `statx` is refused (a kernel before 4.11, some container sandboxes) a
/// full `stat` does.
#[cfg(target_os = "linux")]
impl FileId {
    fn at(path: &std::path::Path) -> std::io::Result<Option<Self>> {
        use rustix::fs::{AtFlags, CWD, StatxFlags, makedev, statx};
        use rustix::io::Errno;
        match statx(CWD, path, AtFlags::empty(), StatxFlags::INO) {
            Ok(found) => Ok(Some(Self {
                device: makedev(found.stx_dev_major, found.stx_dev_minor),
                inode: found.stx_ino,
            })),
            Err(Errno::NOSYS | Errno::PERM) => Self::at_by_stat(path),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
impl FileId {
    fn at(path: &std::path::Path) -> std::io::Result<Option<Self>> {
        Self::at_by_stat(path)
    }
}

#[cfg(unix)]
impl FileId {
    fn at_by_stat(path: &std::path::Path) -> std::io::Result<Option<Self>> {
        Ok(Some(Self::from_metadata(&std::fs::metadata(path)?)))
    }
}

#[cfg(not(unix))]
impl FileId {
    fn of(_file: &File) -> std::io::Result<Option<Self>> {
        Ok(None)
    }

    fn at(_path: &std::path::Path) -> std::io::Result<Option<Self>> {
        Ok(None)
    }
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
        let flushed = |log: &LogFile| log.open.as_ref().expect("opened by the flush").1;
        let first = flushed(&log);
        assert_eq!(FileId::at(&path).expect("identity"), first);
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, b"second").expect("log made anew");
        let second = FileId::at(&path).expect("identity");
        assert_ne!(second, first);
        log.flush().expect("flush of the new log");
        assert_eq!(flushed(&log), second);
    }

    /// The identity read before each flush (`statx` on Linux) is the one read when the file
    /// was opened, and the one a full `stat` reads where `statx` is refused.
    #[cfg(unix)]
    #[test]
    fn every_way_of_reading_a_files_identity_agrees() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log.db-wal");
        std::fs::write(&path, b"frames").expect("log");
        let file = File::open(&path).expect("open");
        let by_stat = FileId::at_by_stat(&path).expect("identity");
        assert!(by_stat.is_some());
        assert_eq!(FileId::at(&path).expect("identity"), by_stat);
        assert_eq!(FileId::of(&file).expect("identity"), by_stat);
    }
}
