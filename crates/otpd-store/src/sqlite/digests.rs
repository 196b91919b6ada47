//! The 64-bit digests that the destination index holds in place of the text they stand for.
//!
//! Every send adds an entry to that index on a page of its own (phone numbers arrive in no
//! order), and once the index outgrows the writer's page cache most of those pages are read
//! back from the operating system first: the smaller each entry, the more of the index stays
//! cached and the fewer pages split. Two digests make an entry: the destination's (the account
//! and the phone number), for the anti-spam window's count, and the key's (its dialect, app
//! and reference), for the lookup of a key's newest code.
//!
//! The digests are stored, so they must never change: each is the first 8 bytes of SHA-256
//! over its parts, each part preceded by its length, so that no two lists of parts give the
//! same bytes ("ab", "c" and "a", "bc" differ). A key's lookup confirms the key on the row,
//! so two keys with one digest are told apart there. The window's count reads the index alone:
//! two destinations of one account would share their count only if their digests collided,
//! which random numbers do once in 2^64 pairs, and nobody can aim at, since finding a number
//! whose digest matches a given one takes about 2^64 tries.

use otpd_core::verification::VerificationKey;
use rusqlite::{Row, Transaction, params};
use rusqlite_migration::HookResult;
use sha2::{Digest, Sha256};

/// The digests of one key, as the destination index holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexDigests {
    /// `destination_hash`: the account and the phone number.
    pub(super) destination: i64,
    /// `key_hash`: the key's dialect, app and reference.
    pub(super) key: i64,
}

impl IndexDigests {
    pub(super) fn of(key: &VerificationKey) -> Self {
        Self {
            destination: destination_hash(key.account_id.as_str(), key.destination.as_str()),
            key: key_hash(key.dialect.as_str(), &key.app, &key.reference),
        }
    }
}

/// The digest of a key's dialect, app and reference (migration 0006).
pub(super) fn key_hash(dialect: &str, app: &str, reference: &str) -> i64 {
    digest(&[dialect, app, reference])
}

/// The digest of an account's id and a phone number (migration 0008).
pub(super) fn destination_hash(account_id: &str, destination: &str) -> i64 {
    digest(&[account_id, destination])
}

fn digest(parts: &[&str]) -> i64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize()[..8]);
    i64::from_le_bytes(first)
}

/// A digest column that a migration fills in for the rows stored before it existed.
#[derive(Debug, Clone, Copy)]
pub(super) enum StoredDigest {
    Key,
    Destination,
}

impl StoredDigest {
    /// The rows after `?1` in rowid order, `?2` at a time, with what the digest is made of.
    fn select(self) -> &'static str {
        match self {
            Self::Key => {
                "SELECT rowid, dialect, app, reference FROM verifications
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            }
            Self::Destination => {
                "SELECT rowid, account_id, destination FROM verifications
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            }
        }
    }

    fn update(self) -> &'static str {
        match self {
            Self::Key => "UPDATE verifications SET key_hash = ?2 WHERE rowid = ?1",
            Self::Destination => "UPDATE verifications SET destination_hash = ?2 WHERE rowid = ?1",
        }
    }

    /// The digest of a row that `select` read.
    fn of_row(self, row: &Row<'_>) -> rusqlite::Result<i64> {
        let text = |index| row.get::<_, String>(index);
        Ok(match self {
            Self::Key => key_hash(&text(1)?, &text(2)?, &text(3)?),
            Self::Destination => destination_hash(&text(1)?, &text(2)?),
        })
    }
}

/// Migration 0006's hook.
pub(super) fn fill_key_hashes(transaction: &Transaction<'_>) -> HookResult {
    fill_in_batches(transaction, StoredDigest::Key, 10_000)
}

/// Migration 0008's hook.
pub(super) fn fill_destination_hashes(transaction: &Transaction<'_>) -> HookResult {
    fill_in_batches(transaction, StoredDigest::Destination, 10_000)
}

/// Fills `column` for every verification, `batch` rows at a time in rowid order, so that a
/// large database is never held in memory whole.
pub(super) fn fill_in_batches(
    transaction: &Transaction<'_>,
    column: StoredDigest,
    batch: i64,
) -> HookResult {
    let mut select = transaction.prepare(column.select())?;
    let mut update = transaction.prepare(column.update())?;
    let mut after = i64::MIN;
    loop {
        let digests = select
            .query_map(params![after, batch], |row| {
                Ok((row.get::<_, i64>(0)?, column.of_row(row)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let Some(&(last, _)) = digests.last() else {
            return Ok(());
        };
        for (rowid, digest) in digests {
            update.execute(params![rowid, digest])?;
        }
        after = last;
    }
}
