//! The tracking cache under a real SQLite, in a process of its own: installed before the first
//! connection, as otpd does it. One test, because the counts are the process's.

use otpd_sqlite_cache::{Installed, Truncations, install, truncations};
use rusqlite::{Connection, params};

/// A database like otpd's writer's: WAL, 2 KiB pages, a 16 MiB cache, and an index whose
/// entries land on random pages, so that most commits rebalance some of its pages.
fn open(path: &std::path::Path) -> Connection {
    let connection = Connection::open(path).expect("open");
    connection
        .execute_batch(
            "PRAGMA page_size = 2048;
             PRAGMA journal_mode = WAL;
             PRAGMA cache_size = -16384;
             CREATE TABLE IF NOT EXISTS sends (id INTEGER PRIMARY KEY, destination BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS sends_by_destination ON sends (destination);",
        )
        .expect("schema");
    connection
}

/// Commits `commits` transactions of `rows` random destinations each.
fn send(connection: &Connection, commits: usize, rows: usize) {
    for _ in 0..commits {
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
}

fn since(before: Truncations) -> Truncations {
    let now = truncations();
    Truncations {
        skipped: now.skipped - before.skipped,
        passed_on: now.passed_on - before.passed_on,
    }
}

fn count(connection: &Connection) -> i64 {
    connection
        .query_row("SELECT COUNT(*) FROM sends", [], |row| row.get(0))
        .expect("count")
}

fn assert_intact(connection: &Connection) {
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}

#[test]
fn commits_after_page_swaps_skip_the_truncation_and_a_rollback_still_drops_its_pages() {
    assert_eq!(install(), Installed::Yes);
    assert_eq!(
        install(),
        Installed::Yes,
        "a second call says what the first did"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.db");
    let connection = open(&path);

    // Enough rows that the index has many leaves, then commits that each split some of them.
    send(&connection, 20, 500);
    let before = truncations();
    send(&connection, 400, 30);
    let commits = since(before);
    assert!(
        commits.skipped >= 380,
        "after rebalancing, commits drop nothing and skip the walk: {commits:?}"
    );
    assert_eq!(count(&connection), 20 * 500 + 400 * 30);
    assert_intact(&connection);

    // A transaction that grows the database and rolls back leaves pages past the end: the
    // truncation must reach SQLite's cache and drop them.
    let pages = |connection: &Connection| -> i64 {
        connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page count")
    };
    let size_before = pages(&connection);
    let before = truncations();
    connection.execute_batch("BEGIN IMMEDIATE").expect("begin");
    for _ in 0..2_000 {
        connection
            .execute(
                "INSERT INTO sends (destination) VALUES (zeroblob(?1))",
                params![1_500],
            )
            .expect("insert");
    }
    assert!(pages(&connection) > size_before + 1_000);
    connection.execute_batch("ROLLBACK").expect("rollback");
    assert!(since(before).passed_on >= 1, "{:?}", since(before));
    assert_eq!(pages(&connection), size_before);

    // The same page numbers, used again, hold what is written now, on this connection and on a
    // fresh one that reads the file.
    send(&connection, 50, 40);
    let expected = 20 * 500 + 400 * 30 + 50 * 40;
    assert_eq!(count(&connection), expected);
    assert_intact(&connection);
    let zeroed: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sends WHERE length(destination) <> 16",
            [],
            |row| row.get(0),
        )
        .expect("lengths");
    assert_eq!(zeroed, 0, "no row of the rolled-back transaction came back");
    drop(connection);
    let reopened = Connection::open(&path).expect("reopen");
    assert_eq!(count(&reopened), expected);
    assert_intact(&reopened);
}
