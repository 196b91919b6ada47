//! Why a store operation did not complete, before it is mapped to the core's error types.
//! Each backend converts its driver's errors into this.

use otpd_core::ports::{CreateError, StoreError};
use otpd_core::verification::SendRejected;

/// Why a store operation did not complete.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Database(String),
    Duplicate,
    Rejected(SendRejected),
    /// The whole group transaction was rolled back (by SQLite, or because a batch-mate failed
    /// half way).
    Aborted,
    /// The writer or reader threads are gone (the store is shutting down).
    WriterGone,
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Database(message) => StoreError::Unavailable(message),
            Failure::Duplicate => StoreError::Duplicate,
            Failure::Rejected(rejected) => {
                StoreError::Corrupt(format!("unexpected rejection: {rejected}"))
            }
            Failure::Aborted => StoreError::Unavailable("the transaction was rolled back".into()),
            Failure::WriterGone => StoreError::Unavailable("the store is shutting down".into()),
        }
    }
}

impl From<Failure> for CreateError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Rejected(rejected) => CreateError::Rejected(rejected),
            other => CreateError::Store(other.into()),
        }
    }
}
