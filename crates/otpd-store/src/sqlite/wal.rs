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
//! wait for a checkpoint's two fsyncs: measured under load, up to 8 ms each time, whether done
//! by the writer or, as before, by a RESTART checkpoint that holds the write lock. What can be
//! chosen is how often: every 16 MiB of log made that stall every half second under sends, and
//! it was most of their p99. Every 128 MiB it comes every 2-3 s under a full send load; the
//! log file stays that size on disk instead of being shrunk and grown again. The RESTART stays
//! as a fallback for a log that grew far longer all the same (a reader held on to old frames).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

/// How often the checkpointer copies the log into the database, off the writer's path. A page
/// the writer keeps changing (an index's last leaf, the page a row was just added to) is in the
/// log once per commit but copied once per pass, and every pass ends in an fsync of the
/// database beside the writer's own: under a full send load, passes every 200 ms wrote 17-20
/// MiB/s into the database, passes every second 11-13, and alternating runs at 64 connections
/// gave a verify p99 of 3.2-5.2 ms against 2.7-2.8. How soon the log starts over does not
/// depend on this (see `WalLimits`).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// What a reset log file is truncated to: a little more than `WalLimits::DEFAULT` lets it grow,
/// so that a busy log is not shrunk and grown again.
pub(super) const WAL_SIZE_LIMIT: i64 = 160 * 1024 * 1024;

/// When the log is long enough to start over, in frames (one page each).
#[derive(Debug, Clone, Copy)]
pub(super) struct WalLimits {
    /// The writer is asked to let the log start over.
    pub(super) reset_after: i64,
    /// The checkpointer forces it with a RESTART checkpoint.
    pub(super) restart_after: i64,
}

impl WalLimits {
    /// 128 MiB of 4 KiB pages, and four times that.
    pub(super) const DEFAULT: Self = Self {
        reset_after: 32_768,
        restart_after: 4 * 32_768,
    };
}

/// The checkpointer's request that the writer finish a checkpoint between two batches.
#[derive(Default)]
pub(super) struct LogReset {
    wanted: AtomicBool,
}

impl LogReset {
    fn request(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Run by the writer between batches, outside any transaction. A checkpoint that could not
    /// copy everything (the checkpointer was copying too, or a reader still uses old frames)
    /// does no harm: the checkpointer asks again after its next pass.
    pub(super) fn finish_if_wanted(&self, connection: &Connection) {
        if !self.wanted.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(error) = passive_checkpoint(connection) {
            tracing::warn!(%error, "WAL checkpoint by the writer failed");
        }
    }
}

/// Starts the checkpointer thread; it runs while `alive` can be upgraded.
pub(super) fn spawn_checkpointer(
    connection: Connection,
    alive: Weak<()>,
    reset: Arc<LogReset>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("otpd-sqlite-checkpoint".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                if let Err(error) = checkpoint(&connection, &reset, WalLimits::DEFAULT) {
                    tracing::warn!(%error, "WAL checkpoint failed");
                }
            }
        })
        .map(|_| ())
}

/// What one pass of the checkpointer did besides copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The log is short: it is left to grow.
    Copied,
    /// The log is long: the writer is asked to let it start over.
    AskedWriter,
    /// The log is far too long: a RESTART checkpoint made it start over.
    Restarted,
}

/// One pass of the checkpointer.
fn checkpoint(
    connection: &Connection,
    reset: &LogReset,
    limits: WalLimits,
) -> rusqlite::Result<Pass> {
    let frames = passive_checkpoint(connection)?.frames;
    if frames > limits.restart_after {
        connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        Ok(Pass::Restarted)
    } else if frames > limits.reset_after {
        reset.request();
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

    const LIMITS: WalLimits = WalLimits {
        reset_after: 20,
        restart_after: 1_000,
    };

    /// A database in WAL mode, the writer's connection (which never checkpoints by itself) and
    /// the checkpointer's.
    fn database() -> (Connection, Connection, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal.db");
        let writer = Connection::open(&path).expect("open");
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB);",
            )
            .expect("schema");
        let checkpointer = Connection::open(&path).expect("open");
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
        let (writer, checkpointer, _dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 40);
        assert_eq!(
            pass_during_a_write(&writer, &checkpointer, &reset),
            Pass::AskedWriter
        );
        commit_rows(&writer, 5);
        let long = frames(&checkpointer);
        assert!(long > 40, "the log kept growing: {long} frames");

        reset.finish_if_wanted(&writer);
        commit_rows(&writer, 1);
        let after = frames(&checkpointer);
        assert!(
            after < 5,
            "the next commit wrote from the start: {after} frames"
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
        assert!(!reset.wanted.load(Ordering::Relaxed));
    }

    #[test]
    fn a_reader_on_old_frames_delays_the_reset_without_harm() {
        let (writer, checkpointer, dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 40);
        let reader = Connection::open(dir.path().join("wal.db")).expect("open");
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
    fn a_log_far_too_long_is_restarted_by_the_checkpointer() {
        let (writer, checkpointer, _dir) = database();
        let reset = LogReset::default();
        commit_rows(&writer, 40);
        let limits = WalLimits {
            reset_after: 5,
            restart_after: 20,
        };
        assert_eq!(
            checkpoint(&checkpointer, &reset, limits).expect("checkpoint"),
            Pass::Restarted
        );
        assert!(!reset.wanted.load(Ordering::Relaxed));
        commit_rows(&writer, 1);
        assert!(frames(&checkpointer) < 5);
    }
}
