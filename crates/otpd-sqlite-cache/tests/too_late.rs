//! `install` in a process whose SQLite has already started: a process of its own, so that the
//! connection opened first is this test's.

use otpd_sqlite_cache::{Installed, Truncations, install, truncations};
use rusqlite::Connection;

#[test]
fn after_sqlite_has_started_install_changes_nothing_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Connection::open(dir.path().join("first.db")).expect("open");
    first
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .expect("write");

    assert_eq!(install(), Installed::TooLate);
    assert_eq!(
        install(),
        Installed::TooLate,
        "a second call says what the first did"
    );

    // Connections opened after it work on SQLite's own cache, which this crate never sees.
    let second = Connection::open(dir.path().join("second.db")).expect("open");
    second
        .execute_batch("CREATE TABLE t (x); BEGIN; INSERT INTO t VALUES (2); COMMIT;")
        .expect("write");
    let x: i64 = second
        .query_row("SELECT x FROM t", [], |row| row.get(0))
        .expect("read");
    assert_eq!(x, 2);
    assert_eq!(
        truncations(),
        Truncations {
            skipped: 0,
            passed_on: 0
        }
    );
}
