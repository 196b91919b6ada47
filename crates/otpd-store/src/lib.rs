//! otpd-store: durable state behind the core's `Store` port.
//!
//! SQLite is the embedded default (one file, no setup); every write goes through one
//! group-committing writer so durable writes are cheap. PostgreSQL serves several otpd nodes
//! sharing one database; every rule that must hold across nodes is decided inside it.

mod failure;
mod postgres;
mod sqlite;

pub use postgres::{DEFAULT_TEST_SERVER, PgStore, PgStoreOptions, ScratchDatabase};
pub use sqlite::{BackupError, SqliteStore, back_up as back_up_sqlite};

/// The names under which the SQLite writer reports how it groups its work on `/metrics`, for
/// the readers of that page (the benchmark).
pub mod sqlite_metrics {
    pub use crate::sqlite::{COMMIT_SIZE, LOG_FLUSH_COMMITS, LOG_FLUSH_DURATION};
}

/// The name under which a PostgreSQL node reports its groups' sizes on `/metrics` (a histogram
/// labelled by `statement`), for the readers of that page (the benchmark).
pub mod postgres_metrics {
    pub use crate::postgres::GROUP_SIZE;
}
