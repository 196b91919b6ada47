//! The VFS under a real SQLite: what each commit leaves in the log file must be there when the
//! commit returns, read by connections through SQLite's default VFS and from copies of the
//! files taken then (what a crash at that instant would leave).

use std::path::Path;

use otpd_sqlite_vfs::{NAME, registered};
use rusqlite::{Connection, OpenFlags};

/// A database like otpd's: WAL, 2 KiB pages, and an index whose entries land on random pages,
/// so that a commit writes many frames.
fn open_ours(path: &Path) -> Connection {
    assert_eq!(registered(), Some(NAME));
    let connection =
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).expect("open");
    connection
        .execute_batch(
            "PRAGMA page_size = 2048;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS sends (id INTEGER PRIMARY KEY, destination BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS sends_by_destination ON sends (destination);",
        )
        .expect("schema");
    connection
}

fn open_default(path: &Path) -> Connection {
    Connection::open(path).expect("open with the default VFS")
}

fn send(connection: &Connection, rows: usize) {
    connection.execute_batch("BEGIN IMMEDIATE").expect("begin");
    for _ in 0..rows {
        connection
            .execute(
                "INSERT INTO sends (destination) VALUES (randomblob(16))",
                [],
            )
            .expect("insert");
    }
    connection.execute_batch("COMMIT").expect("commit");
}

/// Opens a write transaction on a cache of 10 pages, so that a large one spills frames into
/// the log before its commit.
fn begin_with_a_small_cache(connection: &Connection) {
    connection
        .execute_batch("PRAGMA cache_size = 10; BEGIN IMMEDIATE")
        .expect("a small cache, and a transaction");
}

/// Inserts `rows` rows in one statement, in whatever transaction is open.
fn insert_many(connection: &Connection, rows: i64) {
    connection
        .execute(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO sends (destination) SELECT randomblob(16) FROM n",
            [rows],
        )
        .expect("insert");
}

/// The database as `connection` reads it holds `expected` rows and is whole.
fn assert_holds(connection: &Connection, expected: i64) {
    assert_eq!(rows(connection), expected);
    assert_eq!(integrity(connection), "ok");
}

fn rows(connection: &Connection) -> i64 {
    connection
        .query_row("SELECT COUNT(*) FROM sends", [], |row| row.get(0))
        .expect("count")
}

fn integrity(connection: &Connection) -> String {
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check")
}

/// Copies the database and its log as they are on disk now, and opens the copy.
fn copy_as_a_crash_would_leave_it(path: &Path, into: &Path) -> Connection {
    std::fs::copy(path, into).expect("copy the database");
    let log = |path: &Path| format!("{}-wal", path.display());
    std::fs::copy(log(path), log(into)).expect("copy the log");
    open_default(into)
}

#[test]
fn every_commit_is_in_the_log_file_when_it_returns() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("otpd.db");
    let writer = open_ours(&path);
    let reader = open_default(&path);
    let mut expected = 0;
    for round in 0..40 {
        send(&writer, 30);
        expected += 30;
        assert_eq!(rows(&reader), expected, "round {round}");
    }
    let crashed = copy_as_a_crash_would_leave_it(&path, &dir.path().join("crashed.db"));
    assert_holds(&crashed, expected);
}

#[test]
fn a_transaction_that_spills_and_rewrites_its_frames_commits_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("otpd.db");
    let writer = open_ours(&path);
    send(&writer, 10);
    // Thousands of rows write frames before the commit, then rewrite some of them in place,
    // then fix their checksums before publishing.
    begin_with_a_small_cache(&writer);
    for _ in 0..3 {
        insert_many(&writer, 2000);
        writer
            .execute(
                "UPDATE sends SET destination = randomblob(16) WHERE id % 7 = 0",
                [],
            )
            .expect("update");
    }
    writer.execute_batch("COMMIT").expect("commit");
    let expected = rows(&writer);
    assert_holds(&open_default(&path), expected);
    let crashed = copy_as_a_crash_would_leave_it(&path, &dir.path().join("crashed.db"));
    assert_holds(&crashed, expected);
}

#[test]
fn a_rolled_back_transaction_leaves_nothing_and_the_next_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("otpd.db");
    let writer = open_ours(&path);
    send(&writer, 5);
    begin_with_a_small_cache(&writer);
    insert_many(&writer, 3000);
    writer.execute_batch("ROLLBACK").expect("rollback");
    send(&writer, 3);
    assert_holds(&open_default(&path), 8);
}

#[test]
fn the_log_starts_over_and_the_database_closes_clean() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("otpd.db");
    {
        let writer = open_ours(&path);
        for _ in 0..5 {
            send(&writer, 50);
        }
        // Copied into the database and cut back: the next commit writes from the log's start.
        writer
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        for _ in 0..5 {
            send(&writer, 50);
        }
        let crashed = copy_as_a_crash_would_leave_it(&path, &dir.path().join("crashed.db"));
        assert_holds(&crashed, 500);
    }
    // Closed last, the writer copied its log into the database and removed it.
    assert!(!dir.path().join("otpd.db-wal").exists());
    assert_holds(&open_default(&path), 500);
}
