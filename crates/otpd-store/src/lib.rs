//! otpd-store: durable state behind the core's `Store` port.
//!
//! SQLite is the embedded default (one file, no setup); every write goes through one
//! group-committing writer so durable writes are cheap.

mod sqlite;

pub use sqlite::SqliteStore;
