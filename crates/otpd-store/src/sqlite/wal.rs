//! Keeping the write-ahead log in bounds without stopping the writer more than it must.
//!
//! A checkpointer thread copies the log's pages into the database every so often (a PASSIVE
//! checkpoint, which never blocks the writer). Copied or not, the log only starts over from its
//! first frame when a write transaction begins at an instant when every frame has been copied,
//! and under load the writer appends faster than that ever happens: the log would grow without
//! end.
//!
//! So once the log is long the checkpointer asks the writer to finish the copy itself between
//! two of its batches: with no write in progress the copy completes, and the writer's next
//! commit starts the log over. Whoever does it, letting the log start over makes the writer
//! wait for a checkpoint's two fsyncs, whether done by the writer or, as before, by a RESTART
//! checkpoint that holds the write lock: up to 8 ms when first measured, 28-36 ms under a full
//! send load on 2026-12-03 even with fewer than 200 frames left to copy. Traced on 2026-12-05
//! under a full send load, it was the copy of what the checkpointer's last pass left (28-45 ms),
//! the database's fsync (25-68 ms) and, until the log file kept its length, cutting that file
//! back (41-75 ms). That fsync writes every page the checkpointer's passes copied since the
//! last reset: SQLite flushes the database only after a copy that reaches the log's end, which
//! under load only the writer's does. Flushing the database and copying up to the log's end
//! off the writer's path first (a catch-up thread, tried on 2026-12-06) cut the pause to 3-10
//! ms but slowed every request for the 100-200 ms it took, and raised the sends' p99
//! (docs/benchmark-history.md, "A catch-up before the log starts over"). What can be chosen is
//! how often: every 16 MiB of log made that stall every half second under sends, and it was
//! most of their p99. Every 128 MiB it comes every 2-3 s under a full send load. Under such a
//! load the checkpointer's passes take 0.6-1 s, so the log reaches 170-270 MiB of file before the
//! writer resets it; the file keeps that length rather than being cut back and grown again (see
//! `WalLimits::file_size_limit`). A RESTART stays as the fallback for a log that grew far longer
//! all the same (a reader held on to old frames); the writer runs it too, when asked, and only
//! such a log's file is cut back.
//!
//! The checkpointer runs at the lowest CPU priority. Its copy is a burst of CPU once a pass
//! (about 15 ms a second under a full send load on the 2-core test machine), and at normal
//! priority, on a core shared with the request threads, they took turns with it: the requests
//! completed in the worst 50 ms around a pass fell to 0.61 of the median, against 0.75 at the
//! lowest priority (benchmark timelines, ten passes each). At the lowest priority it copies
//! while they wait (for a commit, for the network). It never holds a lock that the writer waits
//! for: a PASSIVE checkpoint takes none, and the one that does, the RESTART, is the writer's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::thread_priority;

/// How often the checkpointer copies the log into the database, off the writer's path. A page
/// the writer keeps changing (an index's last leaf, the page a row was just added to) is in the
/// log once per commit but copied once per pass, and a pass that reaches the log's end (one
/// that no commit overtook) ends in an fsync of the database: under a full send load, passes
/// every 200 ms wrote 17-20 MiB/s into the database, passes every second 11-13, and
/// alternating runs at 64 connections gave a verify p99 of 3.2-5.2 ms against 2.7-2.8. How
/// soon the log starts over does not depend on this (see `WalLimits`).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A log file's own header, and each frame's header before its page (SQLite's WAL format).
const LOG_HEADER_BYTES: i64 = 32;
const FRAME_HEADER_BYTES: i64 = 24;

/// When the log is long enough to start over, in frames (one page each), and how long its file
/// is kept.
#[derive(Debug, Clone, Copy)]
pub(super) struct WalLimits {
    /// The writer is asked to let the log start over.
    pub(super) reset_after: i64,
    /// The checkpointer forces it with a RESTART checkpoint.
    pub(super) restart_after: i64,
    /// What a log file longer than this is cut back to when the log starts over, in bytes: a
    /// log of `restart_after` frames. Under load the log runs past `reset_after` while the
    /// checkpointer finishes its pass (170-270 MiB of file for 128 MiB of pages), and cutting
    /// such a file back at every reset held the writer, and every request, for 40-75 ms more
    /// than the reset itself (2026-12-05, a full send load); the next round grew it again.
    /// Only a log that a reader kept from starting over is cut.
    pub(super) file_size_limit: i64,
}

impl WalLimits {
    /// 128 MiB of pages of `page_size` bytes, and four times that.
    pub(super) fn for_page_size(page_size: i64) -> Self {
        let page_size = page_size.max(512);
        let reset_after = RESET_AFTER_BYTES / page_size;
        Self::new(reset_after, 4 * reset_after, page_size)
    }

    /// Limits in frames of `page_size` bytes each.
    const fn new(reset_after: i64, restart_after: i64, page_size: i64) -> Self {
        Self {
            reset_after,
            restart_after,
            file_size_limit: LOG_HEADER_BYTES + restart_after * (FRAME_HEADER_BYTES + page_size),
        }
    }
}

/// Hands the log's upkeep to the checkpointer and the writer: the write connection never
/// checkpoints by itself at commit, and a reset log file keeps its length up to `limits`.
pub(super) fn configure_writer(connection: &Connection, limits: WalLimits) -> rusqlite::Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.pragma_update(None, "journal_size_limit", limits.file_size_limit)
}

/// How long the log grows before the writer is asked to let it start over.
const RESET_AFTER_BYTES: i64 = 128 * 1024 * 1024;

/// How long the writer held every request to let the log start over (see the module docs).
const WAL_RESET_DURATION: &str = "otpd_sqlite_wal_reset_duration_seconds";

/// Gives the metrics recorder installed now the help text of the log's metrics.
fn describe_metrics() {
    metrics::describe_histogram!(
        WAL_RESET_DURATION,
        metrics::Unit::Seconds,
        "Pauses of the SQLite writer while it lets the write-ahead log start over"
    );
}

/// The checkpointer's requests that the writer finish a checkpoint between two batches.
#[derive(Default)]
pub(super) struct LogReset {
    /// Copy the rest of the log (PASSIVE), so that the next commit starts it over.
    copy_wanted: AtomicBool,
    /// Wait for readers on old frames and start the log over (RESTART).
    restart_wanted: AtomicBool,
}

impl LogReset {
    /// Run by the writer between batches, outside any transaction. A checkpoint that could not
    /// copy everything (the checkpointer was copying too, or a reader still uses old frames)
    /// does no harm: the checkpointer asks again after its next pass.
    pub(super) fn finish_if_wanted(&self, connection: &Connection) {
        let restart = self.restart_wanted.swap(false, Ordering::Relaxed);
        let copy = self.copy_wanted.swap(false, Ordering::Relaxed);
        let started = Instant::now();
        let done = if restart {
            connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        } else if copy {
            passive_checkpoint(connection).map(|_| ())
        } else {
            return;
        };
        let elapsed = started.elapsed();
        metrics::histogram!(WAL_RESET_DURATION).record(elapsed.as_secs_f64());
        match done {
            // Every request waits meanwhile: its length is what a latency spike is checked against.
            Ok(()) => tracing::debug!(
                restart,
                elapsed_us = elapsed.as_micros() as u64,
                "the writer finished a WAL checkpoint"
            ),
            Err(error) => tracing::warn!(%error, "WAL checkpoint by the writer failed"),
        }
    }
}

/// The running checkpointer. It stops when every clone of this handle is dropped (with the
/// store), or when `close` asks it to and has seen its connection closed.
#[derive(Clone)]
pub(super) struct Checkpointer {
    close: flume::Sender<oneshot::Sender<()>>,
}

impl Checkpointer {
    /// Starts the checkpointer thread, which copies the log every `CHECKPOINT_INTERVAL` and
    /// asks for it to start over past `limits`.
    pub(super) fn spawn(
        connection: Connection,
        limits: WalLimits,
        reset: Arc<LogReset>,
    ) -> std::io::Result<Self> {
        describe_metrics();
        let (close, requests) = flume::bounded::<oneshot::Sender<()>>(1);
        std::thread::Builder::new()
            .name("otpd-sqlite-checkpoint".into())
            .spawn(move || {
                thread_priority::set_own_niceness(
                    thread_priority::CHECKPOINTER,
                    "WAL checkpointer",
                );
                let closing = loop {
                    match requests.recv_timeout(CHECKPOINT_INTERVAL) {
                        Err(flume::RecvTimeoutError::Timeout) => {
                            if let Err(error) = checkpoint(&connection, &reset, limits) {
                                tracing::warn!(%error, "WAL checkpoint failed");
                            }
                        }
                        Ok(closed) => break Some(closed),
                        Err(flume::RecvTimeoutError::Disconnected) => break None,
                    }
                };
                super::close_connection(connection, "the checkpointer's connection");
                // Answers this close and any other until the store is dropped.
                for closed in closing.into_iter().chain(requests.iter()) {
                    let _ = closed.send(());
                }
            })?;
        Ok(Self { close })
    }

    /// Stops the checkpointer and returns once its connection is closed.
    pub(super) async fn close(&self) {
        let (closed, done) = oneshot::channel();
        if self.close.send_async(closed).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// What one pass of the checkpointer did besides copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The log is short: it is left to grow.
    Copied,
    /// The log is long: the writer is asked to let it start over.
    AskedWriter,
    /// The log is far too long: the writer is asked for a RESTART checkpoint.
    AskedRestart,
}

/// One pass of the checkpointer.
fn checkpoint(
    connection: &Connection,
    reset: &LogReset,
    limits: WalLimits,
) -> rusqlite::Result<Pass> {
    let frames = passive_checkpoint(connection)?.frames;
    if frames > limits.restart_after {
        reset.restart_wanted.store(true, Ordering::Relaxed);
        Ok(Pass::AskedRestart)
    } else if frames > limits.reset_after {
        reset.copy_wanted.store(true, Ordering::Relaxed);
        Ok(Pass::AskedWriter)
    } else {
        Ok(Pass::Copied)
    }
}

/// What a checkpoint found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpointed {
    /// Frames in the log.
    frames: i64,
    /// Of those, frames now copied into the database.
    copied: i64,
}

/// Copies what it can of the log into the database.
fn passive_checkpoint(connection: &Connection) -> rusqlite::Result<Checkpointed> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Checkpointed {
            frames: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In frames of the test databases' pages (SQLite's default size, 4 KiB).
    const LIMITS: WalLimits = WalLimits::new(20, 1_000, 4096);

    /// A database in WAL mode, the writer's connection (which never checkpoints by itself) and
    /// the checkpointer's.
    fn database() -> (Connection, Connection, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal.db");
        let writer = super::super::open_for_test(&path);
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB);",
            )
            .expect("schema");
        configure_writer(&writer, LIMITS).expect("configure");
        let checkpointer = super::super::open_for_test(&path);
        (writer, checkpointer, dir)
    }

    /// Commits `count` transactions of one row each, a page or so each.
    fn commit_rows(writer: &Connection, count: usize) {
        for _ in 0..count {
            writer
                .execute("INSERT INTO items (body) VALUES (zeroblob(3000))", [])
                .expect("insert");
        }
    }

    /// One checkpointer pass while the writer is in the middle of a transaction, as under load:
    /// the writer then appends to a log it cannot start over by itself.
    fn pass_during_a_write(
        writer: &Connection,
        checkpointer: &Connection,
        reset: &LogReset,
    ) -> Pass {
        writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
        commit_rows(writer, 1);
        let pass = checkpoint(checkpointer, reset, LIMITS).expect("checkpoint");
        writer.execute_batch("COMMIT").expect("commit");
        pass
    }

    #[test]
    fn the_log_starts_over_after_the_same_bytes_whatever_the_page_size() {
        let small = WalLimits::for_page_size(2048);
        let large = WalLimits::for_page_size(4096);
        assert_eq!(small.reset_after * 2048, RESET_AFTER_BYTES);
        assert_eq!(large.reset_after * 4096, RESET_AFTER_BYTES);
        assert_eq!(small.restart_after, 4 * small.reset_after);
        assert_eq!(
            small.file_size_limit,
            32 + small.restart_after * (24 + 2048),
            "the file of a log of `restart_after` frames, each with its header"
        );
        assert_eq!(
            large.file_size_limit,
            32 + large.restart_after * (24 + 4096)
        );
    }

    fn log_file_bytes(dir: &tempfile::TempDir) -> u64 {
        std::fs::metadata(dir.path().join("wal.db-wal"))
            .expect("the log file")
            .len()
    }

    fn frames(checkpointer: &Connection) -> i64 {
        passive_checkpoint(checkpointer).expect("checkpoint").frames
    }

    fn rows(connection: &Connection) -> i64 {
        connection
            .query_row("SELECT COUNT(*) FROM items", [], |row| row.get(0))
            .expect("count")
    }

    #[test]
    fn under_load_a_long_log_grows_until_the_writer_finishes_the_checkpoint() {
        let (writer, checkpointer, dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 40);
        assert_eq!(
            pass_during_a_write(&writer, &checkpointer, &reset),
            Pass::AskedWriter
        );
        commit_rows(&writer, 5);
        let long = frames(&checkpointer);
        assert!(long > 40, "the log kept growing: {long} frames");

        let file_before = log_file_bytes(&dir);
        reset.finish_if_wanted(&writer);
        commit_rows(&writer, 1);
        let after = frames(&checkpointer);
        assert!(
            after < 5,
            "the next commit wrote from the start: {after} frames"
        );
        assert_eq!(
            log_file_bytes(&dir),
            file_before,
            "the file keeps its length for the next round"
        );
        assert_eq!(rows(&writer), 47);
    }

    #[test]
    fn a_short_log_is_left_to_grow() {
        let (writer, checkpointer, _dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 2);
        assert_eq!(
            pass_during_a_write(&writer, &checkpointer, &reset),
            Pass::Copied
        );
        assert!(!reset.copy_wanted.load(Ordering::Relaxed));
    }

    #[test]
    fn a_reader_on_old_frames_delays_the_reset_without_harm() {
        let (writer, checkpointer, dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 40);
        let reader = super::super::open_for_test(&dir.path().join("wal.db"));
        reader.execute_batch("BEGIN").expect("begin");
        let seen = rows(&reader);
        commit_rows(&writer, 5);
        assert_eq!(
            pass_during_a_write(&writer, &checkpointer, &reset),
            Pass::AskedWriter
        );
        reset.finish_if_wanted(&writer);
        commit_rows(&writer, 1);
        let kept = frames(&checkpointer);
        assert!(kept > 40, "the reader's frames stay: {kept}");
        assert_eq!(rows(&reader), seen, "the reader's snapshot is intact");
        reader.execute_batch("COMMIT").expect("end the read");

        pass_during_a_write(&writer, &checkpointer, &reset);
        reset.finish_if_wanted(&writer);
        commit_rows(&writer, 1);
        assert!(frames(&checkpointer) < 5, "reset once the reader left");
        assert_eq!(rows(&writer), 49, "no row was lost on the way");
    }

    #[test]
    fn a_log_far_too_long_is_restarted_by_the_writer_and_its_file_cut_back() {
        let (writer, checkpointer, dir) = database();
        let reset = LogReset::default();
        let limits = WalLimits::new(5, 20, 4096);
        configure_writer(&writer, limits).expect("configure");
        commit_rows(&writer, 40);
        assert!(log_file_bytes(&dir) > limits.file_size_limit as u64);
        assert_eq!(
            checkpoint(&checkpointer, &reset, limits).expect("checkpoint"),
            Pass::AskedRestart
        );
        assert!(reset.restart_wanted.load(Ordering::Relaxed));
        reset.finish_if_wanted(&writer);
        assert!(!reset.restart_wanted.load(Ordering::Relaxed), "asked once");
        commit_rows(&writer, 1);
        assert!(frames(&checkpointer) < 5);
        assert_eq!(log_file_bytes(&dir), limits.file_size_limit as u64);
        assert_eq!(rows(&writer), 41);
    }
}
