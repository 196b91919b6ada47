//! The embedded SQLite store: WAL, one group-committing writer thread whose commits a thread of
//! their own flushes to disk before anyone is told of them (`log_sync`), and a few reader
//! threads.

mod backup;
mod digests;
mod log_sync;
mod queries;
mod readers;
mod thread_priority;
mod wal;
mod writer;

pub use backup::{BackupError, back_up};
pub use log_sync::{LOG_FLUSH_COMMITS, LOG_FLUSH_DURATION};
pub use writer::COMMIT_SIZE;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otpd_core::account::{Account, AccountLimits, Application, NewAccount};
use otpd_core::outbox::{
    AttemptOutcome, MessageId, MessageRecord, OutboxBacklog, OutboxMessage, Receipt, ReceiptStored,
};
use otpd_core::ports::{CreateError, Store, StoreError};
use otpd_core::verification::{
    CancelOutcome, CheckAttempt, CheckLookup, CheckReport, NewVerification, SendGuards,
    Verification,
};
use otpd_core::{AccessKeyId, AccountId, ApplicationId, Clock, Timestamp, VerifyId};
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};

use log_sync::LogSync;
use readers::Readers;
use wal::{Checkpointer, LogReset, WalLimits};
use writer::Writer;

pub(crate) use crate::failure::Failure;

/// The schema's versions, oldest first. A function rather than a constant: a migration that
/// runs Rust code (a hook) cannot be built in a constant.
fn migrations() -> Vec<M<'static>> {
    vec![
        M::up(include_str!("../../migrations/sqlite/0001_init.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0002_fewer_verification_indexes.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0003_failed_checks_by_client_ip.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0004_digest_binding.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0005_failed_messages.sql"
        )),
        M::up_with_hook(
            include_str!("../../migrations/sqlite/0006_key_hash.sql"),
            digests::fill_key_hashes,
        ),
        M::up(include_str!(
            "../../migrations/sqlite/0007_narrower_destination_index.sql"
        )),
        M::up_with_hook(
            include_str!("../../migrations/sqlite/0008_destination_hash.sql"),
            digests::fill_destination_hashes,
        ),
        M::up(include_str!(
            "../../migrations/sqlite/0009_messages_in_verifications.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0010_unique_message_id.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0011_previous_secret.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0012_account_limits.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0013_rolling_hour.sql"
        )),
    ]
}
const READERS: usize = 2;

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => Self::Duplicate,
            _ => Self::Database(error.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    /// Whether the writer's commits can still be made durable.
    log_sync: LogSync,
    readers: Readers,
    clock: Arc<dyn Clock>,
    /// Runs while any clone of the store is alive, or until `close`.
    checkpointer: Checkpointer,
    /// Set once a close has finished; a close made while another runs waits for it.
    closed: Arc<tokio::sync::OnceCell<()>>,
}

/// What every connection does when the database is locked: look again every 50 µs, 100,000
/// times (five seconds or a little more). SQLite's own busy timeout sleeps 1, 2, 5... up to 100 ms between looks, which
/// is far longer than any lock here is held: a RESTART checkpoint (now only `wal`'s fallback)
/// holds the write lock while it waits for readers to leave the log, and with the coarse sleeps
/// it held it (and the writer, so every request, waited) for 0.1 to 3 seconds under load.
fn wait_briefly(retries: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_micros(50));
    retries < 100_000
}

/// The writer's page cache, in KiB. Every send adds an entry to the destination index at a
/// place of its own (phone numbers arrive in no order), so the pages a send touches are spread
/// over the whole index; in SQLite's default 2 MiB the writer read 1.4 pages a send back from
/// the operating system, at 16 MiB 0.24, and a send cost about a tenth less CPU. 24 MiB bought
/// nothing more (right-code verifies on 200,000 codes). The server's peak RSS under a send load
/// rose from 32 to 47 MiB, within issue 6's 64. A larger cache also makes SQLite walk more of it
/// at the end of every commit that split an index page (docs/benchmark-history.md, "The
/// writer's commit"): at 2, 4, 8 and 16 MiB sends ran at the same rate within this machine's
/// noise, the walk costing what the reads saved.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// The page size of a new database, in bytes. A send changes a few dozen bytes in each of
/// several index pages, one of them anywhere in the destination index (phone numbers arrive in
/// no order), and a commit writes every page it changed whole into the log, which is then
/// flushed to disk: with 4 KiB pages a Pinpoint send wrote 7.5 KiB of log. With 2 KiB pages,
/// in alternating runs at 64 connections, Pinpoint sends ran 4-6% faster (0.29-0.30 of the
/// batched ceiling against 0.28-0.29) and amm sends 8-9% (0.32 against 0.29-0.30), and verifies
/// the same; 1 KiB pages made the trees deeper and the writer's CPU a send 17% higher
/// (docs/benchmark-history.md, "The log flushed off the writer's thread").
const PAGE_SIZE: i64 = 2048;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let mut write_connection = connect(path, OpenFlags::default())?;
        // Takes effect only on a database not yet made; one made before keeps its page size.
        write_connection
            .pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(unavailable)?;
        write_connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        Migrations::new(migrations())
            .to_latest(&mut write_connection)
            .map_err(|e| StoreError::Unavailable(format!("migrating the database failed: {e}")))?;
        let read_connections = (0..READERS)
            .map(|_| {
                let connection = connect(path, OpenFlags::default())?;
                connection
                    .pragma_update(None, "query_only", true)
                    .map_err(unavailable)?;
                Ok(connection)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let spawn_failed =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot start a thread: {e}"));
        // A database made before `PAGE_SIZE` keeps its own.
        let page_size: i64 = write_connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(unavailable)?;
        let wal_limits = WalLimits::for_page_size(page_size);
        // The writer checkpoints only when the checkpointer asks it to (see `wal`).
        wal::configure_writer(&write_connection, wal_limits).map_err(unavailable)?;
        write_connection
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(unavailable)?;
        // The writer's commits are flushed to disk by `log_sync`, which answers their callers
        // once they are durable.
        write_connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        let log_path = match write_connection.path() {
            Some(database) if !database.is_empty() => PathBuf::from(format!("{database}-wal")),
            _ => {
                return Err(StoreError::Unavailable(
                    "the database has no file for its write-ahead log".into(),
                ));
            }
        };
        let log_sync = LogSync::spawn(log_path).map_err(spawn_failed)?;
        let log_reset = Arc::new(LogReset::default());
        let checkpointer = Checkpointer::spawn(
            connect(path, OpenFlags::default())?,
            wal_limits,
            log_reset.clone(),
        )
        .map_err(spawn_failed)?;
        Ok(Self {
            checkpointer,
            writer: Writer::spawn(write_connection, log_sync.clone(), log_reset)
                .map_err(spawn_failed)?,
            log_sync,
            readers: Readers::spawn(read_connections).map_err(spawn_failed)?,
            clock,
            closed: Arc::default(),
        })
    }

    async fn write<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &dyn Clock) -> Result<T, Failure> + Send + 'static,
    {
        let clock = self.clock.clone();
        self.writer
            .write(move |connection| work(connection, clock.as_ref()))
            .await
    }

    async fn read<T, F>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &dyn Clock) -> Result<T, Failure> + Send + 'static,
    {
        let clock = self.clock.clone();
        self.readers
            .read(move |connection| work(connection, clock.as_ref()))
            .await
    }
}

/// Opens a connection through otpd's layers over SQLite: its page cache (installed first, as
/// it must be before SQLite starts) and its VFS, which writes a commit's log frames in one call.
/// Without either, SQLite's own is used: correct, only slower.
fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let installed = otpd_sqlite_cache::install();
    if installed == otpd_sqlite_cache::Installed::TooLate {
        tracing::debug!("SQLite had started before otpd's page cache could be installed");
    }
    match otpd_sqlite_vfs::registered() {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
        None => {
            tracing::debug!("SQLite's default VFS could not be wrapped; using it as it is");
            Connection::open_with_flags(path, flags)
        }
    }
}

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let connection = open_connection(path, flags).map_err(unavailable)?;
    // Room for every statement the store uses, so none is ever prepared twice.
    connection.set_prepared_statement_cache_capacity(64);
    // FULL: a commit is on disk before anyone is told it happened. That holds for the
    // migrations and the checkpointer, which commit on their own; the writer, once migrated,
    // commits with NORMAL and leaves the flush to `log_sync`, which answers only after it.
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(unavailable)?;
    connection
        .busy_handler(Some(wait_briefly))
        .map_err(unavailable)?;
    Ok(connection)
}

/// Closes a connection, saying so in the log when SQLite cannot: the file is then closed when
/// the process ends, and the next start recovers whatever log it left.
fn close_connection(connection: Connection, which: &str) {
    if let Err((_, error)) = connection.close() {
        tracing::warn!(%error, "cannot close {which} to the SQLite database");
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, account: NewAccount) -> Result<Account, StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::insert_account(connection, &account, clock.now())
            })
            .await?)
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(self
            .read(|connection, _| queries::list_accounts(connection))
            .await?)
    }

    async fn find_account_by_key(&self, key: &AccessKeyId) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        Ok(self
            .read(move |connection, _| queries::find_account_by_key(connection, &key))
            .await?)
    }

    async fn delete_account(&self, key: &AccessKeyId) -> Result<bool, StoreError> {
        let key = key.clone();
        Ok(self
            .write(move |connection, _| queries::delete_account(connection, &key))
            .await?)
    }

    async fn add_credits(
        &self,
        key: &AccessKeyId,
        credits: i64,
    ) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        Ok(self
            .write(move |connection, _| queries::add_credits(connection, &key, credits))
            .await?)
    }

    async fn replace_secret(
        &self,
        key: &AccessKeyId,
        sealed_secret: Vec<u8>,
        keep_previous_until: Option<Timestamp>,
    ) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        Ok(self
            .write(move |connection, _| {
                queries::replace_secret(connection, &key, &sealed_secret, keep_previous_until)
            })
            .await?)
    }

    async fn set_account_limits(
        &self,
        key: &AccessKeyId,
        limits: &AccountLimits,
    ) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        let limits = limits.clone();
        Ok(self
            .write(move |connection, _| queries::set_account_limits(connection, &key, &limits))
            .await?)
    }

    async fn sms_in_last_hour(&self) -> Result<HashMap<AccessKeyId, u64>, StoreError> {
        Ok(self
            .read(move |connection, clock| queries::sms_in_last_hour(connection, clock.now()))
            .await?)
    }

    async fn create_application(
        &self,
        application: Application,
    ) -> Result<Application, StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::insert_application(connection, application, clock.now())
            })
            .await?)
    }

    async fn list_applications(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<Application>, StoreError> {
        let account = account.cloned();
        Ok(self
            .read(move |connection, _| queries::list_applications(connection, account.as_ref()))
            .await?)
    }

    async fn find_application(
        &self,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let id = id.clone();
        Ok(self
            .read(move |connection, _| queries::find_application(connection, &id))
            .await?)
    }

    async fn delete_application(&self, id: &ApplicationId) -> Result<bool, StoreError> {
        let id = id.clone();
        Ok(self
            .write(move |connection, _| queries::delete_application(connection, &id))
            .await?)
    }

    async fn create_verification(
        &self,
        verification: NewVerification,
        guards: SendGuards,
    ) -> Result<(), CreateError> {
        Ok(self
            .write(move |connection, clock| {
                queries::insert_verification(connection, &verification, guards, clock.now())
            })
            .await?)
    }

    async fn check(
        &self,
        lookup: CheckLookup,
        attempt: CheckAttempt,
    ) -> Result<CheckReport, StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::check(connection, &lookup, &attempt, clock.now())
            })
            .await?)
    }

    async fn cancel(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<CancelOutcome, StoreError> {
        let (account_id, id) = (account_id.clone(), id.clone());
        Ok(self
            .write(move |connection, clock| {
                queries::cancel(connection, &account_id, &id, clock.now())
            })
            .await?)
    }

    async fn find_verification(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<Option<Verification>, StoreError> {
        let (account_id, id) = (account_id.clone(), id.clone());
        Ok(self
            .read(move |connection, clock| {
                queries::find_verification(connection, &account_id, &id, clock.now())
            })
            .await?)
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::claim_outbox(connection, limit, lease, clock.now())
            })
            .await?)
    }

    async fn finish_attempts(
        &self,
        outcomes: Arc<[(MessageId, AttemptOutcome)]>,
    ) -> Result<(), StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::finish_attempts(connection, &outcomes, clock.now())
            })
            .await?)
    }

    async fn record_receipt(&self, receipt: Receipt) -> Result<ReceiptStored, StoreError> {
        Ok(self
            .write(move |connection, clock| {
                queries::record_receipt(connection, &receipt, clock.now())
            })
            .await?)
    }

    async fn release_claims(&self) -> Result<u64, StoreError> {
        Ok(self
            .write(|connection, _| queries::release_claims(connection))
            .await?)
    }

    async fn release_messages(&self, ids: &[MessageId]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        Ok(self
            .write(move |connection, _| queries::release_messages(connection, &ids))
            .await?)
    }

    async fn find_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let id = id.clone();
        Ok(self
            .read(move |connection, _| queries::find_message(connection, &id))
            .await?)
    }

    async fn failed_messages(&self, limit: usize) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self
            .read(move |connection, _| queries::failed_messages(connection, limit))
            .await?)
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        Ok(self
            .read(|connection, clock| queries::outbox_backlog(connection, clock.now()))
            .await?)
    }

    async fn purge_verifications(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(self
            .write(move |connection, _| queries::purge_verifications(connection, cutoff, limit))
            .await?)
    }

    /// The write connection closes last: SQLite then copies the log into the database and
    /// deletes it, with the shared-memory index, so a stopped otpd leaves one file behind. A
    /// second close made meanwhile would find the readers' queue already gone and close the
    /// writer before a read in progress ended; it waits for the first instead.
    async fn close(&self) {
        self.closed
            .get_or_init(|| async {
                self.readers.close().await;
                self.checkpointer.close().await;
                self.writer.close().await;
            })
            .await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.log_sync.failed() {
            return Err(log_sync::refused().into());
        }
        Ok(self
            .read(|connection, _| {
                connection
                    .query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(Failure::from)
            })
            .await?)
    }
}

/// A connection of a test's own, opened as the store opens its: after the page cache is
/// installed, through otpd's VFS. Installing must not overlap another thread's use of SQLite,
/// so no test may open a connection before it.
#[cfg(test)]
fn open_for_test(path: &Path) -> Connection {
    open_connection(path, OpenFlags::default()).expect("open")
}

#[cfg(test)]
mod tests {
    use otpd_core::SystemClock;
    use rusqlite::{OptionalExtension, params};

    use super::digests::{IndexDigests, StoredDigest};
    use super::*;

    /// A database with the schema of the first `count` migrations.
    fn database_at(count: usize) -> (Connection, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let mut connection = open_for_test(&dir.path().join("otpd.db"));
        Migrations::new(migrations().into_iter().take(count).collect())
            .to_latest(&mut connection)
            .expect("migrate");
        connection
            .execute(
                "INSERT INTO accounts (id, name, access_key_id, sealed_secret, created_at)
                 VALUES ('a', 'acme', 'OTPDAAAAAAAAAAAAAAAA', x'00', 0)",
                [],
            )
            .expect("account");
        (connection, dir)
    }

    /// A pending amm verification on one destination, whose reference is its id. It names
    /// only the first schema's columns, so it serves every version.
    fn insert_verification(connection: &Connection, id: &str, created_at: i64) {
        connection
            .execute(
                "INSERT INTO verifications (id, account_id, dialect, app, reference, destination,
                     sender, code_digest, status, created_at, expires_at, max_attempts, sandbox, parts)
                 VALUES (?1, 'a', 'amm', '', ?1, '+393481234567', 'Acme', x'00', 'pending', ?2,
                     ?2 + 300000, 3, 0, 1)",
                params![id, created_at],
            )
            .expect("verification");
    }

    fn remaining(connection: &Connection) -> Vec<String> {
        let mut statement = connection
            .prepare("SELECT id FROM verifications ORDER BY rowid")
            .expect("prepare");
        statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn new_account() -> NewAccount {
        NewAccount {
            id: AccountId::generate(),
            name: otpd_core::account::Name::parse("acme").expect("name"),
            access_key_id: AccessKeyId::generate(),
            sealed_secret: vec![1],
            credits: None,
            default_sender: None,
            limits: Default::default(),
        }
    }

    /// The files beside the database that SQLite's log leaves while a connection is open.
    fn log_files(path: &Path) -> Vec<PathBuf> {
        ["-wal", "-shm"]
            .iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
            .filter(|file| file.exists())
            .collect()
    }

    /// Migration 13 puts a count per clock hour into the rolling window (`SmsWindow`), so an
    /// upgrade does not hand an account a fresh hour's limit.
    #[tokio::test]
    async fn an_upgrade_keeps_the_sms_counted_in_the_hour() {
        let (connection, dir) = database_at(12);
        let now = SystemClock.now().millis();
        let this_hour = now - now % 3_600_000;
        // The account of `database_at` sent 4 parts this hour; another, 7 two hours ago.
        connection
            .execute(
                "UPDATE accounts SET sms_per_hour = 10, sms_hour_start = ?1, sms_in_hour = 4",
                [this_hour],
            )
            .expect("this hour's count");
        connection
            .execute(
                "INSERT INTO accounts (id, name, access_key_id, sealed_secret, created_at,
                     sms_per_hour, sms_hour_start, sms_in_hour)
                 VALUES ('b', 'old', 'OTPDBBBBBBBBBBBBBBBB', x'00', 0, 10, ?1, 7)",
                [this_hour - 2 * 3_600_000],
            )
            .expect("an old count");
        drop(connection);
        let store = SqliteStore::open(&dir.path().join("otpd.db"), Arc::new(SystemClock))
            .expect("open and upgrade");
        let counted = store.sms_in_last_hour().await.expect("read");
        let this_hour = AccessKeyId::parse("OTPDAAAAAAAAAAAAAAAA").expect("key");
        assert_eq!(
            counted,
            HashMap::from([(this_hour, 4)]),
            "the count of two hours ago is not carried over"
        );
    }

    /// The nice values of this process's threads named `name`.
    #[cfg(target_os = "linux")]
    fn niceness_of_threads_named(name: &str) -> Vec<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("the process's threads");
        tasks
            .filter_map(|task| {
                let task = task.ok()?;
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let id: i32 = task.file_name().to_str()?.parse().ok()?;
                let thread = rustix::process::Pid::from_raw(id)?;
                (comm.trim_end() == name)
                    .then(|| rustix::process::getpriority_process(Some(thread)).ok())
                    .flatten()
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_log_flusher_runs_above_the_request_threads_where_the_system_allows() {
        let dir = tempfile::tempdir().expect("dir");
        let _store =
            SqliteStore::open(&dir.path().join("otpd.db"), Arc::new(SystemClock)).expect("open");
        // Whether this system allows the raise is asked of the system itself, on a thread of
        // its own; where it does not, a flusher keeps the priority of the thread that made it.
        let allowed = std::thread::spawn(|| {
            thread_priority::try_set_own_niceness(thread_priority::LOG_FLUSHER).is_ok()
        })
        .join()
        .expect("thread");
        let expected = if allowed {
            thread_priority::LOG_FLUSHER
        } else {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("getpriority")
        };
        // The kernel shows a thread's first 15 bytes of name. Other tests' stores have flushers
        // too, and one may be starting: each is given a moment to set its priority.
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = niceness_of_threads_named("otpd-sqlite-flu");
            if !seen.is_empty() && seen.iter().all(|&niceness| niceness == expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the log flushers' nice values are {seen:?}, not all {expected}");
    }

    #[tokio::test]
    async fn a_closed_store_leaves_its_database_whole_and_no_log_beside_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("otpd.db");
        let store = SqliteStore::open(&path, Arc::new(SystemClock)).expect("open");
        let account = store.create_account(new_account()).await.expect("durable");
        assert_eq!(
            log_files(&path).len(),
            2,
            "an open store writes through its log"
        );

        store.close().await;
        assert_eq!(log_files(&path), Vec::<PathBuf>::new());
        // Closed, it answers every call with an error rather than hanging or panicking.
        let refused = [
            store.create_account(new_account()).await.map(|_| ()),
            store.ping().await,
        ];
        for outcome in refused {
            assert!(
                matches!(outcome, Err(StoreError::Unavailable(ref reason)) if reason.contains("shutting down")),
                "{outcome:?}"
            );
        }
        // A second close has nothing left to do.
        store.close().await;
        drop(store);

        let reopened = SqliteStore::open(&path, Arc::new(SystemClock)).expect("reopen");
        let found = reopened
            .find_account_by_key(&account.access_key_id)
            .await
            .expect("read");
        assert_eq!(found.map(|found| found.id), Some(account.id));
    }

    #[tokio::test]
    async fn a_close_made_while_another_runs_returns_once_the_database_is_closed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("otpd.db");
        let store = Arc::new(SqliteStore::open(&path, Arc::new(SystemClock)).expect("open"));
        store.create_account(new_account()).await.expect("durable");
        // A read in progress keeps its connection open until it ends, and the first close
        // waits for it.
        let slow_read = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read(|connection, _| {
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(connection.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?)
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = tokio::spawn({
            let store = store.clone();
            async move { store.close().await }
        });
        tokio::task::yield_now().await;

        store.close().await;
        assert_eq!(
            log_files(&path),
            Vec::<PathBuf>::new(),
            "the second close returned before the database was closed"
        );
        first.await.expect("the first close");
        assert_eq!(slow_read.await.expect("joined").expect("read"), 1);
    }

    #[tokio::test]
    async fn closing_waits_for_the_writes_queued_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("otpd.db");
        let store = Arc::new(SqliteStore::open(&path, Arc::new(SystemClock)).expect("open"));
        let writes: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.create_account(new_account()).await })
            })
            .collect();
        // Most spawned writes are queued by the time the close is: those must be committed,
        // the others refused.
        tokio::task::yield_now().await;
        store.close().await;
        let mut committed = 0;
        for write in writes {
            match write.await.expect("joined") {
                Ok(_) => committed += 1,
                // A write queued after the close is refused, never left unanswered.
                Err(StoreError::Unavailable(reason)) => assert!(reason.contains("shutting down")),
                Err(other) => panic!("{other:?}"),
            }
        }
        drop(store);
        let reopened = SqliteStore::open(&path, Arc::new(SystemClock)).expect("reopen");
        let stored = reopened.list_accounts().await.expect("read").len();
        assert_eq!(
            stored, committed,
            "every write answered as done is in the database"
        );
        assert!(
            committed > 0,
            "the writes queued before the close were committed"
        );
    }

    #[tokio::test]
    async fn a_write_ahead_log_that_cannot_be_flushed_stops_writes_and_readiness() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("otpd.db");
        let store = SqliteStore::open(&path, Arc::new(SystemClock)).expect("open");
        store.create_account(new_account()).await.expect("durable");
        store.ping().await.expect("ready");
        // The log's file is gone from under the store: nothing can be made durable any more.
        std::fs::remove_file(dir.path().join("otpd.db-wal")).expect("remove the log");
        let lost = store.create_account(new_account()).await;
        assert!(
            matches!(&lost, Err(StoreError::Unavailable(message)) if message.contains("flushed")),
            "{lost:?}"
        );
        let refused = store.create_account(new_account()).await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(message)) if message.contains("refused")),
            "{refused:?}"
        );
        assert!(store.ping().await.is_err(), "not ready");
    }

    fn page_size(path: &Path) -> i64 {
        open_for_test(path)
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .expect("page size")
    }

    #[test]
    fn a_new_database_has_small_pages_and_an_older_one_keeps_its_own() {
        let dir = tempfile::tempdir().expect("dir");
        let new = dir.path().join("new.db");
        drop(SqliteStore::open(&new, Arc::new(SystemClock)).expect("create"));
        assert_eq!(page_size(&new), PAGE_SIZE);

        let older = dir.path().join("older.db");
        open_for_test(&older)
            .execute_batch("PRAGMA page_size = 4096; CREATE TABLE before_otpd (id INTEGER);")
            .expect("an older database");
        drop(SqliteStore::open(&older, Arc::new(SystemClock)).expect("open and upgrade"));
        assert_eq!(page_size(&older), 4096);
    }

    #[test]
    fn the_migrations_are_valid() {
        Migrations::new(migrations())
            .validate()
            .expect("valid migrations");
    }

    #[test]
    fn a_first_version_database_is_upgraded_with_its_rows() {
        let (connection, dir) = database_at(1);
        insert_verification(&connection, "v1", 1_000);
        drop(connection);
        let path = dir.path().join("otpd.db");
        drop(SqliteStore::open(&path, Arc::new(SystemClock)).expect("open and upgrade"));
        let connection = open_for_test(&path);
        assert_eq!(remaining(&connection), ["v1"]);
        let mut indexes: Vec<String> = connection
            .prepare("SELECT name FROM pragma_index_list('verifications')")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        indexes.sort();
        assert_eq!(
            indexes,
            [
                "sqlite_autoindex_verifications_1",
                "verifications_by_carrier_id",
                "verifications_by_destination",
                "verifications_by_message_id",
                "verifications_due_messages",
                "verifications_failed_messages",
            ]
        );
        // The row from before the digests existed is found by its key.
        assert_eq!(live_code_of(&connection, "v1").as_deref(), Some("v1"));
    }

    /// A message of the first schema's outbox, for the verification `verification_id`.
    fn insert_outbox_message(
        connection: &Connection,
        id: &str,
        verification_id: &str,
        state: &str,
    ) {
        connection
            .execute(
                "UPDATE verifications SET message_id = ?1 WHERE id = ?2",
                params![id, verification_id],
            )
            .expect("the verification names its message");
        connection
            .execute(
                "INSERT INTO outbox (id, verification_id, account_id, destination, sender,
                     sealed_text, encoding, parts, state, attempts, next_attempt_at, created_at,
                     updated_at, sent_at, delivery_status, status_code, status_message,
                     carrier_message_id)
                 VALUES (?1, ?2, 'a', '+393481234567', 'Acme', x'0102', 'gsm7', 1, ?3, 1, 5000,
                     1000, 2000, 2000, 'SUCCESSFUL', 200, 'accepted', 'carrier-' || ?1)",
                params![id, verification_id, state],
            )
            .expect("message");
    }

    /// Every message of the outbox moves into its verification's row with all it recorded; the
    /// sealed text, which holds the code, stays only where the message still waits.
    #[test]
    fn the_outbox_moves_into_the_verifications() {
        let (connection, dir) = database_at(8);
        insert_verification(&connection, "v1", 1_000);
        insert_verification(&connection, "v2", 1_000);
        insert_verification(&connection, "v3", 1_000);
        let sent = "0000000000000000000000000000000a";
        let waiting = "0000000000000000000000000000000b";
        insert_outbox_message(&connection, sent, "v1", "sent");
        insert_outbox_message(&connection, waiting, "v2", "pending");
        drop(connection);
        let path = dir.path().join("otpd.db");
        drop(SqliteStore::open(&path, Arc::new(SystemClock)).expect("open and upgrade"));
        let connection = open_for_test(&path);

        // The test rows' account id is not one `find_message` would parse: read the columns.
        let record: (String, String, u32, Option<i64>, String, String, String) = connection
            .query_row(
                "SELECT id, message_state, delivery_attempts, sent_at, delivery_status,
                        status_message, carrier_message_id
                 FROM verifications WHERE message_id = ?1",
                [sent],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                },
            )
            .expect("the sent message is found by its id");
        assert_eq!(
            record,
            (
                "v1".into(),
                "sent".into(),
                1,
                Some(2_000),
                "SUCCESSFUL".into(),
                "accepted".into(),
                format!("carrier-{sent}")
            )
        );
        let sealed = |id: &str| -> Option<Vec<u8>> {
            connection
                .query_row(
                    "SELECT sealed_text FROM verifications WHERE id = ?1",
                    [id],
                    |row| row.get(0),
                )
                .expect("row")
        };
        assert_eq!(sealed("v1"), None, "a delivered message keeps no text");
        assert_eq!(
            sealed("v2"),
            Some(vec![1, 2]),
            "a waiting one keeps its text"
        );
        assert_eq!(
            sealed("v3"),
            None,
            "a verification without a message has none"
        );
        let backlog = queries::outbox_backlog(&connection, Timestamp(3_000)).expect("backlog");
        assert_eq!(backlog.pending, 1, "the waiting message is still due");
        assert!(
            !connection
                .prepare("SELECT name FROM sqlite_schema WHERE name = 'outbox'")
                .expect("prepare")
                .exists([])
                .expect("query"),
            "the outbox table is gone"
        );
    }

    /// The live code of the test rows' key whose reference is `reference`, by the query the
    /// writer runs.
    fn live_code_of(connection: &Connection, reference: &str) -> Option<String> {
        let digests = IndexDigests {
            key: digests::key_hash("amm", "", reference),
            destination: digests::destination_hash("a", "+393481234567"),
        };
        live_code_with(connection, reference, digests)
    }

    fn live_code_with(
        connection: &Connection,
        reference: &str,
        digests: IndexDigests,
    ) -> Option<String> {
        connection
            .query_row(
                queries::LIVE_CODE_OF_KEY,
                params![
                    "a",
                    "amm",
                    "",
                    reference,
                    "+393481234567",
                    digests.key,
                    digests.destination
                ],
                |row| row.get(0),
            )
            .optional()
            .expect("the lookup runs")
    }

    /// The digests are stored, so a change to how they are computed would hide every stored row
    /// from its key's lookup and from its destination's count.
    #[test]
    fn the_index_digests_never_change_and_keep_their_parts_apart() {
        assert_eq!(
            digests::key_hash("pinpoint", "app", "ref"),
            KEY_HASH_OF_PINPOINT_APP_REF
        );
        assert_eq!(
            digests::destination_hash("a", "+393481234567"),
            DESTINATION_HASH_OF_A_393481234567
        );
        assert_ne!(
            digests::key_hash("amm", "ab", "c"),
            digests::key_hash("amm", "a", "bc")
        );
        assert_ne!(
            digests::destination_hash("a1", "+393481234567"),
            digests::destination_hash("a", "1+393481234567")
        );
    }

    /// Two keys with one pair of digests (64 bits each: never expected, so made here by hand)
    /// share the index's entries, and the row tells them apart: the newer row, of another
    /// key, is not taken for this key's live code, nor is a row of another destination.
    #[test]
    fn a_key_is_confirmed_by_its_row_not_by_its_digests() {
        let (connection, _dir) = database_at(migrations().len());
        insert_verification(&connection, "mine", 1_000);
        insert_verification(&connection, "other", 2_000);
        insert_verification(&connection, "elsewhere", 3_000);
        let shared = IndexDigests {
            key: digests::key_hash("amm", "", "mine"),
            destination: digests::destination_hash("a", "+393481234567"),
        };
        connection
            .execute(
                "UPDATE verifications SET key_hash = ?1, destination_hash = ?2",
                params![shared.key, shared.destination],
            )
            .expect("one pair of digests for all");
        connection
            .execute(
                "UPDATE verifications SET destination = '+393489999999', reference = 'mine'
                 WHERE id = 'elsewhere'",
                [],
            )
            .expect("another destination");
        assert_eq!(
            live_code_with(&connection, "mine", shared).as_deref(),
            Some("mine")
        );
        assert_eq!(
            live_code_with(&connection, "other", shared).as_deref(),
            Some("other")
        );
    }

    /// The migrations' hooks reach every row, however many batches they take.
    #[test]
    fn every_stored_row_gets_its_digests() {
        let (mut connection, _dir) = database_at(migrations().len());
        for (index, id) in ["v1", "v2", "v3", "v4", "v5"].into_iter().enumerate() {
            insert_verification(&connection, id, 1_000 + index as i64);
        }
        let transaction = connection.transaction().expect("transaction");
        for column in [StoredDigest::Key, StoredDigest::Destination] {
            digests::fill_in_batches(&transaction, column, 2).expect("fill");
        }
        transaction.commit().expect("commit");
        let mut statement = connection
            .prepare(
                "SELECT reference, key_hash, destination_hash FROM verifications ORDER BY rowid",
            )
            .expect("prepare");
        let stored: Vec<(String, i64, i64)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(stored.len(), 5);
        for (reference, key_hash, destination_hash) in stored {
            assert_eq!(
                key_hash,
                digests::key_hash("amm", "", &reference),
                "{reference}"
            );
            assert_eq!(
                destination_hash, DESTINATION_HASH_OF_A_393481234567,
                "{reference}"
            );
        }
    }

    /// Computed apart, with Python's `hashlib`.
    const KEY_HASH_OF_PINPOINT_APP_REF: i64 = 5_620_990_402_796_941_547;
    const DESTINATION_HASH_OF_A_393481234567: i64 = -2_424_282_725_844_500_022;

    /// Every step of how SQLite would run `sql`, one per line.
    fn query_plan(sql: &str, params: impl rusqlite::Params) -> String {
        explained(&format!("EXPLAIN QUERY PLAN {sql}"), params, 3).join("\n")
    }

    /// One column of what `explain` (an `EXPLAIN` of a statement) answers, on a database of
    /// the latest schema.
    fn explained(explain: &str, params: impl rusqlite::Params, column: usize) -> Vec<String> {
        let (connection, _dir) = database_at(migrations().len());
        let mut statement = connection.prepare(explain).expect("prepare");
        statement
            .query_map(params, |row| row.get(column))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// The delivery outcome's and the check's `UPDATE`s each change the one row they name. A
    /// program that loops over rows (`Next`) is one SQLite may have to undo halfway, so it
    /// keeps a statement journal, a copy of every page the `UPDATE` changes, while it runs (the
    /// outcome's did while its index by message id was not unique; migration 0010).
    #[test]
    fn the_outcome_and_the_check_update_one_row_without_a_loop() {
        for (sql, params) in [
            (
                queries::FINISH_ATTEMPT,
                params!["m", "sent", 0, 0, "SUCCESSFUL", 200, "ok", "c"].to_vec(),
            ),
            (
                queries::CHECK_TRANSITION,
                params![1, "verified", 1].to_vec(),
            ),
        ] {
            // The opcodes of the program SQLite compiles `sql` to.
            let program = explained(&format!("EXPLAIN {sql}"), params.as_slice(), 1);
            assert!(
                program.iter().any(|op| op == "Insert"),
                "{sql}: {program:?}"
            );
            assert!(!program.iter().any(|op| op == "Next"), "{sql}: {program:?}");
        }
    }

    #[test]
    fn the_failure_count_of_an_address_reads_failures_only() {
        let plan = query_plan(
            queries::COUNT_RECENT_FAILURES,
            params!["a", "198.51.100.9", 0],
        );
        assert!(
            plan.contains("USING INDEX checks_failed_by_client_ip"),
            "the count searches the index of failures: {plan}"
        );
    }

    /// A destination that had thousands of codes must not make its sends and checks read them
    /// all: the window's count reads the destination's index entries and nothing else, and the
    /// key's newest row is one step down the index, without a sort.
    #[test]
    fn the_send_guards_and_the_key_lookup_seek_the_keys_newest_row() {
        let key_entries = "USING INDEX verifications_by_destination \
            (destination_hash=? AND key_hash=?)";
        let guards = query_plan(
            queries::SEND_GUARDS,
            params!["a", "pinpoint", "app", "ref", "+393481234567", 7, 8, 0],
        );
        assert!(
            guards.contains(
                "SEARCH verifications USING COVERING INDEX verifications_by_destination \
                 (destination_hash=?)"
            ),
            "the window's count reads the destination's index entries alone:\n{guards}"
        );
        assert!(
            guards.contains(key_entries),
            "the key's newest row is found in the index:\n{guards}"
        );
        let live = query_plan(
            queries::LIVE_CODE_OF_KEY,
            params!["a", "pinpoint", "app", "ref", "+393481234567", 7, 8],
        );
        assert!(
            live.contains(key_entries),
            "the key's newest row is found in the index:\n{live}"
        );
        for plan in [guards, live] {
            assert!(!plan.contains("TEMP B-TREE"), "no sort:\n{plan}");
        }
    }

    /// The messages live in the verifications' rows, among millions of others: each of their
    /// queries must search one of the small indexes made for it, never read the table through.
    #[test]
    fn the_message_queries_search_their_indexes() {
        for (sql, params, index) in [
            (
                queries::DUE_MESSAGES,
                params![0, 10].to_vec(),
                "verifications_due_messages (next_attempt_at<?)",
            ),
            (
                queries::FINISH_ATTEMPT,
                params!["m", "sent", 0, 0, "SUCCESSFUL", 200, "ok", "c"].to_vec(),
                "verifications_by_message_id (message_id=?)",
            ),
            (
                queries::RECORD_RECEIPT,
                params!["c", "DELIVRD", 0, 0].to_vec(),
                "verifications_by_carrier_id (carrier_message_id=?)",
            ),
            (
                queries::CARRIER_ID_KNOWN,
                params!["c"].to_vec(),
                "verifications_by_carrier_id (carrier_message_id=?)",
            ),
            (
                queries::MESSAGE_BY_ID,
                params!["m"].to_vec(),
                "verifications_by_message_id (message_id=?)",
            ),
            (
                queries::FAILED_MESSAGES,
                params![10].to_vec(),
                "verifications_failed_messages",
            ),
            (
                queries::BACKLOG,
                params![].to_vec(),
                "verifications_due_messages",
            ),
            (
                queries::RELEASE_CLAIMS,
                params![].to_vec(),
                "verifications_due_messages",
            ),
        ] {
            let plan = query_plan(sql, params.as_slice());
            assert!(
                plan.contains(&format!("USING INDEX {index}"))
                    || plan.contains(&format!("USING COVERING INDEX {index}")),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "no sort: {sql}\n{plan}");
        }
    }

    #[test]
    fn retention_purges_the_old_head_and_stops_at_the_first_young_row() {
        let (connection, _dir) = database_at(migrations().len());
        // Inserted in this order; the clock stepped back before the last one.
        for (id, created_at) in [
            ("old-1", 10),
            ("old-2", 20),
            ("young", 100),
            ("stepped", 30),
        ] {
            insert_verification(&connection, id, created_at);
        }
        let purge = |limit| queries::purge_verifications(&connection, Timestamp(50), limit);
        assert_eq!(purge(1).expect("purge"), 1);
        assert_eq!(remaining(&connection), ["old-2", "young", "stepped"]);
        assert_eq!(purge(10).expect("purge"), 1);
        // "stepped" is old but waits behind "young" until that one is old too.
        assert_eq!(purge(10).expect("purge"), 0);
        assert_eq!(remaining(&connection), ["young", "stepped"]);
        assert_eq!(
            queries::purge_verifications(&connection, Timestamp(200), 10).expect("purge"),
            2
        );
        assert!(remaining(&connection).is_empty());
    }
}
