//! How many writes a commit costs, in a process of its own: the counts are the process's.

use otpd_sqlite_vfs::{NAME, log_writes, registered};
use rusqlite::{Connection, OpenFlags};

#[test]
fn a_commit_of_many_frames_is_written_in_one_call() {
    let dir = tempfile::tempdir().expect("dir");
    assert_eq!(registered(), Some(NAME));
    let connection =
        Connection::open_with_flags_and_vfs(dir.path().join("otpd.db"), OpenFlags::default(), NAME)
            .expect("open");
    connection
        .execute_batch(
            "PRAGMA page_size = 2048;
             PRAGMA journal_mode = WAL;
             CREATE TABLE sends (id INTEGER PRIMARY KEY, destination BLOB NOT NULL);
             CREATE INDEX sends_by_destination ON sends (destination);
             WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO sends (destination) SELECT randomblob(16) FROM n;",
        )
        .expect("schema");
    let before = log_writes();
    let commits = 20;
    for _ in 0..commits {
        // 30 rows on random pages of the index: dozens of frames a commit.
        connection
            .execute_batch(
                "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
                 INSERT INTO sends (destination) SELECT randomblob(16) FROM n;",
            )
            .expect("commit");
    }
    let after = log_writes();
    let (asked, made) = (after.asked - before.asked, after.made - before.made);
    assert!(asked > 20 * commits, "{asked} writes asked for");
    assert_eq!(made, commits, "one write a commit, for {asked} asked");
}
