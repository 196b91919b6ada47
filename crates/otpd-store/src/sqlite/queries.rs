//! The SQL of the SQLite store, one function per operation. Each runs on the writer or a reader
//! thread with the connection it is handed.

use std::collections::HashMap;
use std::time::Duration;

use otpd_core::account::{
    Account, AccountLimits, Application, NewAccount, PreviousSecret, SmsPerHour,
};
use otpd_core::outbox::{
    AttemptOutcome, CarrierMessageId, MessageId, MessageRecord, MessageState, MessageText,
    OutboxBacklog, OutboxMessage, Receipt, ReceiptStored,
};
use otpd_core::sms::Encoding;
use otpd_core::sms_window::SmsWindow;
use otpd_core::verification::{
    CancelOutcome, CheckAttempt, CheckHistory, CheckLookup, CheckOutcome, CheckRecord, CheckReport,
    CheckState, Dialect, NewVerification, SendGuards, SendRejected, Verification, VerificationKey,
    VerificationStatus,
};
use otpd_core::{
    AccessKeyId, AccountId, ApplicationId, DigestBinding, DigestSubject, E164, Timestamp, VerifyId,
};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};

use super::Failure;
use super::digests::IndexDigests;

const ACCOUNT_COLUMNS: &str = "id, name, access_key_id, sealed_secret, credits, default_sender, \
     created_at, previous_sealed_secret, previous_secret_until, sms_per_hour, countries";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let previous_sealed: Option<Vec<u8>> = row.get(7)?;
    let previous_until: Option<i64> = row.get(8)?;
    let sms_per_hour: Option<i64> = row.get(9)?;
    let countries: Option<String> = row.get(10)?;
    Ok(Account {
        id: parse_column(row, 0, AccountId::parse)?,
        name: row.get(1)?,
        access_key_id: parse_column(row, 2, AccessKeyId::parse)?,
        sealed_secret: row.get(3)?,
        credits: row.get(4)?,
        default_sender: row.get(5)?,
        created_at: Timestamp(row.get(6)?),
        previous_secret: previous_sealed.zip(previous_until).map(|(sealed, until)| {
            PreviousSecret {
                sealed,
                until: Timestamp(until),
            }
        }),
        limits: AccountLimits::from_stored(sms_per_hour, countries.as_deref())
            .ok_or_else(|| malformed(9))?,
    })
}

fn malformed(index: usize) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("malformed value in column {index}").into(),
    )
}

/// Reads a text column through a parser, turning a malformed value into a conversion error.
fn parse_column<T>(
    row: &Row<'_>,
    index: usize,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| malformed(index))
}

pub(super) fn insert_account(
    connection: &Connection,
    account: &NewAccount,
    now: Timestamp,
) -> Result<Account, Failure> {
    connection.execute(
        "INSERT INTO accounts (id, name, access_key_id, sealed_secret, credits, default_sender,
             created_at, sms_per_hour, countries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            account.id.as_str(),
            account.name.as_str(),
            account.access_key_id.as_str(),
            account.sealed_secret,
            account.credits,
            account.default_sender,
            now.millis(),
            account.limits.sms_per_hour.map(SmsPerHour::get),
            account.limits.countries.as_list(),
        ],
    )?;
    Ok(Account {
        id: account.id.clone(),
        name: account.name.as_str().to_owned(),
        access_key_id: account.access_key_id.clone(),
        sealed_secret: account.sealed_secret.clone(),
        credits: account.credits,
        default_sender: account.default_sender.clone(),
        created_at: now,
        previous_secret: None,
        limits: account.limits.clone(),
    })
}

pub(super) fn list_accounts(connection: &Connection) -> Result<Vec<Account>, Failure> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id"
    ))?;
    let accounts = statement
        .query_map([], account_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(accounts)
}

pub(super) fn find_account_by_key(
    connection: &Connection,
    key: &AccessKeyId,
) -> Result<Option<Account>, Failure> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE access_key_id = ?1"
    ))?;
    Ok(statement
        .query_row([key.as_str()], account_from_row)
        .optional()?)
}

pub(super) fn delete_account(connection: &Connection, key: &AccessKeyId) -> Result<bool, Failure> {
    let deleted = connection.execute(
        "DELETE FROM accounts WHERE access_key_id = ?1",
        [key.as_str()],
    )?;
    Ok(deleted > 0)
}

pub(super) fn add_credits(
    connection: &Connection,
    key: &AccessKeyId,
    credits: i64,
) -> Result<Option<Account>, Failure> {
    connection.execute(
        "UPDATE accounts SET credits = COALESCE(credits, 0) + ?2 WHERE access_key_id = ?1",
        params![key.as_str(), credits],
    )?;
    find_account_by_key(connection, key)
}

pub(super) fn replace_secret(
    connection: &Connection,
    key: &AccessKeyId,
    sealed_secret: &[u8],
    keep_previous_until: Option<Timestamp>,
) -> Result<Option<Account>, Failure> {
    // The right-hand sides read the row as it was: the previous secret is the one replaced.
    connection.execute(
        "UPDATE accounts SET sealed_secret = ?2,
             previous_sealed_secret = CASE WHEN ?3 IS NULL THEN NULL ELSE sealed_secret END,
             previous_secret_until = ?3
         WHERE access_key_id = ?1",
        params![
            key.as_str(),
            sealed_secret,
            keep_previous_until.map(Timestamp::millis)
        ],
    )?;
    find_account_by_key(connection, key)
}

pub(super) fn set_account_limits(
    connection: &Connection,
    key: &AccessKeyId,
    limits: &AccountLimits,
) -> Result<Option<Account>, Failure> {
    connection.execute(
        "UPDATE accounts SET sms_per_hour = ?2, countries = ?3 WHERE access_key_id = ?1",
        params![
            key.as_str(),
            limits.sms_per_hour.map(SmsPerHour::get),
            limits.countries.as_list()
        ],
    )?;
    find_account_by_key(connection, key)
}

pub(super) fn sms_in_last_hour(
    connection: &Connection,
    now: Timestamp,
) -> Result<HashMap<AccessKeyId, u64>, Failure> {
    let mut statement = connection.prepare_cached(
        "SELECT access_key_id, sms_window_newest, sms_window FROM accounts
         WHERE sms_window IS NOT NULL",
    )?;
    let mut rows = statement.query([])?;
    let mut counted = HashMap::new();
    while let Some(row) = rows.next()? {
        let sent = sms_window(row.get(1)?, row.get(2)?)?.at(now).total();
        if sent > 0 {
            counted.insert(parse_column(row, 0, AccessKeyId::parse)?, sent);
        }
    }
    Ok(counted)
}

/// An account's `SmsWindow` from its two columns: the newest bucket's start, and the counts as
/// 4-byte big-endian numbers (NULL: nothing counted yet).
fn sms_window(newest: i64, parts: Option<Vec<u8>>) -> Result<SmsWindow, Failure> {
    let Some(bytes) = parts else {
        return Ok(SmsWindow::empty());
    };
    let counts = bytes
        .chunks_exact(4)
        .map(|be| i64::from(u32::from_be_bytes([be[0], be[1], be[2], be[3]])));
    let window = SmsWindow::from_stored(Timestamp(newest), counts);
    window
        .filter(|_| bytes.len() % 4 == 0)
        .ok_or_else(|| Failure::Database("an account's SMS count is unreadable".into()))
}

fn sms_window_bytes(window: &SmsWindow) -> Vec<u8> {
    window
        .parts()
        .iter()
        .flat_map(|count| count.to_be_bytes())
        .collect()
}

const APPLICATION_COLUMNS: &str = "id, account_id, name, tags, created_at";

fn application_from_row(row: &Row<'_>) -> rusqlite::Result<Application> {
    Ok(Application {
        id: parse_column(row, 0, ApplicationId::parse)?,
        account_id: parse_column(row, 1, AccountId::parse)?,
        name: row.get(2)?,
        tags: parse_column(row, 3, |text| serde_json::from_str(text).ok())?,
        created_at: Timestamp(row.get(4)?),
    })
}

pub(super) fn insert_application(
    connection: &Connection,
    application: Application,
    now: Timestamp,
) -> Result<Application, Failure> {
    connection.execute(
        "INSERT INTO applications (id, account_id, name, tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            application.id.as_str(),
            application.account_id.as_str(),
            application.name,
            serde_json::to_string(&application.tags).map_err(|e| Failure::Database(e.to_string()))?,
            now.millis()
        ],
    )?;
    Ok(Application {
        created_at: now,
        ..application
    })
}

pub(super) fn list_applications(
    connection: &Connection,
    account: Option<&AccountId>,
) -> Result<Vec<Application>, Failure> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications
         WHERE ?1 IS NULL OR account_id = ?1 ORDER BY created_at, id"
    ))?;
    let applications = statement
        .query_map([account.map(AccountId::as_str)], application_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(applications)
}

pub(super) fn find_application(
    connection: &Connection,
    id: &ApplicationId,
) -> Result<Option<Application>, Failure> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?1"
    ))?;
    Ok(statement
        .query_row([id.as_str()], application_from_row)
        .optional()?)
}

pub(super) fn delete_application(
    connection: &Connection,
    id: &ApplicationId,
) -> Result<bool, Failure> {
    Ok(connection.execute("DELETE FROM applications WHERE id = ?1", [id.as_str()])? > 0)
}

/// The rowid of a key's newest verification, the only one of the key's that can be live: every
/// send retires the key's live code before it inserts its own. One step down the destination
/// index, which holds the destination's and the key's digests and `created_at` (and, as every
/// index does, the rowid), then the row to confirm the key. Looking for the key's pending rows
/// instead read every row the key ever had, on the single writer: a number sent its 10 codes an
/// hour for 30 days holds 7,200 rows, and each send or check by key cost 13 ms. The key is `?1`
/// account, `?2` dialect, `?3` app, `?4` reference and `?5` destination; `?6` and `?7` are its
/// digests (`IndexDigests`: the key's, then the destination's).
macro_rules! newest_of_key {
    () => {
        "(SELECT rowid FROM verifications
          WHERE destination_hash = ?7 AND key_hash = ?6
            AND account_id = ?1 AND destination = ?5
            AND dialect = ?2 AND app = ?3 AND reference = ?4
          ORDER BY created_at DESC, rowid DESC LIMIT 1)"
    };
}

/// A destination's sends since `?8`, counted in the destination index by its digest, and the
/// key's newest verification (`newest_of_key`).
pub(super) const SEND_GUARDS: &str = concat!(
    "SELECT recent.sends, newest.rowid, newest.status, newest.created_at
     FROM (SELECT COUNT(*) AS sends FROM verifications
           WHERE destination_hash = ?7 AND created_at > ?8) AS recent
     LEFT JOIN verifications AS newest ON newest.rowid = ",
    newest_of_key!()
);

/// What the guards found: the destination's sends in the window, and the key's newest row.
struct Guarded {
    recent_sends: u32,
    newest_of_key: Option<NewestOfKey>,
}

struct NewestOfKey {
    rowid: i64,
    live: bool,
    created_at: Timestamp,
}

impl Guarded {
    /// From `SEND_GUARDS`' row.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let newest_of_key = match row.get::<_, Option<i64>>(1)? {
            Some(rowid) => Some(NewestOfKey {
                rowid,
                live: parse_column(row, 2, VerificationStatus::parse)?
                    == VerificationStatus::Pending,
                created_at: Timestamp(row.get(3)?),
            }),
            None => None,
        };
        Ok(Self {
            recent_sends: row.get(0)?,
            newest_of_key,
        })
    }
}

/// For `wait_for_window`: a destination's sends as `SEND_GUARDS` counts them.
const OLDEST_COUNTED_SEND: &str = "SELECT created_at FROM verifications
     WHERE destination_hash = ?3 AND created_at > ?1
     ORDER BY created_at DESC LIMIT 1 OFFSET ?2";

/// Guards, retirement of the previous live code, and the insert, in the writer's transaction. The
/// guards refuse before anything is written, so a refusal fails only this request.
pub(super) fn insert_verification(
    connection: &Connection,
    verification: &NewVerification,
    guards: SendGuards,
    now: Timestamp,
) -> Result<(), Failure> {
    let key = &verification.key;
    let digests = IndexDigests::of(key);
    // One statement answers both questions asked before the insert: how many sends the
    // destination had in the window, and whether this key has a live code to retire. The
    // retiring UPDATE then runs only when there is one: run on every send, it cost the writer as
    // much as the count did (an UPDATE opens its table and every index it may change even when
    // it finds nothing), and most sends have no live code to retire.
    let guarded = connection.prepare_cached(SEND_GUARDS)?.query_row(
        params![
            key.account_id.as_str(),
            key.dialect.as_str(),
            key.app,
            key.reference,
            key.destination.as_str(),
            digests.key,
            digests.destination,
            now.minus(guards.window).millis(),
        ],
        Guarded::from_row,
    )?;
    if guarded.recent_sends >= guards.max_sends_per_destination {
        let retry_after = wait_for_window(
            connection,
            OLDEST_COUNTED_SEND,
            &[&digests.destination],
            guards.window,
            guards.max_sends_per_destination,
            now,
        );
        return Err(Failure::Rejected(SendRejected::TooManySends {
            retry_after,
        }));
    }
    debit(connection, &key.account_id, guards.charge, now)?;
    // The new row must be the key's newest for `newest_of_key` to find it,
    // even if the clock stepped back since the previous send: it is then dated with that one.
    let mut created_at = now;
    if let Some(newest) = &guarded.newest_of_key {
        if newest.live {
            retire_live_code(connection, newest.rowid, now)?;
        }
        created_at = created_at.max(newest.created_at);
    }
    let message = verification.outbox.as_ref();
    connection
        .prepare_cached(
            "INSERT INTO verifications (id, account_id, dialect, app, reference, destination, sender,
                 code_digest, code_bound_to, status, created_at, expires_at, attempts_used,
                 max_attempts, sandbox, sandbox_code, parts, message_id, key_hash, destination_hash,
                 sealed_text, encoding, entity_id, template_id, message_state, next_attempt_at,
                 message_updated_at, lease_until, delivery_attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11, 0, ?12, ?13, ?14, ?15,
                 ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?24, ?25, ?26)",
        )?
        .execute(params![
            verification.id.as_str(),
            key.account_id.as_str(),
            key.dialect.as_str(),
            key.app,
            key.reference,
            key.destination.as_str(),
            verification.sender,
            verification.digest.bytes.as_slice(),
            verification.digest.binding.as_str(),
            created_at.millis(),
            now.plus(verification.ttl.duration()).millis(),
            verification.max_attempts.get(),
            verification.sandbox,
            verification.sandbox_code,
            verification.parts,
            message.map(|message| message.id.as_str()),
            digests.key,
            digests.destination,
            message.map(|message| message.sealed_text.as_slice()),
            message.map(|message| message.encoding.as_str()),
            message.and_then(|message| message.entity_id.as_deref()),
            message.and_then(|message| message.template_id.as_deref()),
            message.map(|_| MessageState::Pending.as_str()),
            message.map(|_| now.millis()),
            message
                .and_then(|message| message.claimed_for)
                .map_or(0, |lease| now.plus(lease).millis()),
            message.map_or(0, |message| u32::from(message.claimed_for.is_some())),
        ])?;
    Ok(())
}

/// How long until a sliding window that holds `max` or more events has room for one more: until
/// the `max`-th newest leaves it. `newest_at` reads that event's time, from `?1` the window's
/// start, `?2` the offset of the `max`-th newest, and `keys` from `?3` on. Read only for a
/// request refused by the window, so its cost is the refusal's alone. `None` if it cannot
/// tell: the refusal stands without a wait rather than fail.
fn wait_for_window(
    connection: &Connection,
    newest_at: &str,
    keys: &[&dyn ToSql],
    window: Duration,
    max: u32,
    now: Timestamp,
) -> Option<Duration> {
    let offset = max.checked_sub(1)?;
    let start = now.minus(window).millis();
    let values = [&start as &dyn ToSql, &offset]
        .into_iter()
        .chain(keys.iter().copied());
    let oldest_that_counts = connection
        .prepare_cached(newest_at)
        .and_then(|mut statement| {
            statement
                .query_row(params_from_iter(values), |row| row.get::<_, i64>(0))
                .optional()
        });
    match oldest_that_counts {
        Ok(oldest) => oldest.map(|at| Timestamp(at).plus(window).since(now)),
        Err(error) => {
            tracing::warn!(%error, "could not tell when a refused request would have room");
            None
        }
    }
}

/// The key's live code (the one-live-code rule: a new send replaces it) becomes expired or
/// cancelled.
fn retire_live_code(connection: &Connection, rowid: i64, now: Timestamp) -> Result<(), Failure> {
    connection
        .prepare_cached(
            "UPDATE verifications
             SET status = CASE WHEN expires_at <= ?2 THEN 'expired' ELSE 'cancelled' END
             WHERE rowid = ?1",
        )?
        .execute(params![rowid, now.millis()])?;
    Ok(())
}

/// Takes `charge` credits from the account, unless it has no credit limit, and counts the SMS
/// in its last hour against its hourly limit (`AccountLimits::sms_per_hour`). Accounts with
/// neither, and sends that cost nothing (sandbox), write nothing here.
fn debit(
    connection: &Connection,
    account_id: &AccountId,
    charge: u32,
    now: Timestamp,
) -> Result<(), Failure> {
    let ledger = connection
        .prepare_cached(
            "SELECT credits, sms_per_hour, sms_window_newest, sms_window FROM accounts WHERE id = ?1",
        )?
        .query_row([account_id.as_str()], |row| {
            Ok(Ledger {
                credits: row.get(0)?,
                sms_per_hour: row.get(1)?,
                window_newest: row.get(2)?,
                window: row.get(3)?,
            })
        })
        .optional()?
        .ok_or(Failure::Rejected(SendRejected::UnknownAccount))?;
    if ledger
        .credits
        .is_some_and(|balance| balance < i64::from(charge))
    {
        return Err(Failure::Rejected(SendRejected::NoCredit));
    }
    if charge == 0 || (ledger.credits.is_none() && ledger.sms_per_hour.is_none()) {
        return Ok(());
    }
    let mut window = sms_window(ledger.window_newest, ledger.window)?.at(now);
    if let Some(limit) = ledger.sms_per_hour {
        let limit = u64::try_from(limit).unwrap_or(0);
        if window.total() + u64::from(charge) > limit {
            let retry_after = window.wait_for_room(now, charge.into(), limit);
            return Err(Failure::Rejected(SendRejected::HourlyLimit { retry_after }));
        }
    }
    window.add(charge);
    connection
        .prepare_cached(
            "UPDATE accounts SET credits = credits - ?2, sms_window_newest = ?3, sms_window = ?4
             WHERE id = ?1",
        )?
        .execute(params![
            account_id.as_str(),
            charge,
            window.newest().millis(),
            sms_window_bytes(&window)
        ])?;
    Ok(())
}

/// An account's figures that a send is charged against. `credits` and `sms_per_hour` are
/// `None` for no limit; the window is as stored (`sms_window`).
struct Ledger {
    credits: Option<i64>,
    sms_per_hour: Option<i64>,
    window_newest: i64,
    window: Option<Vec<u8>>,
}

/// An address's wrong codes on an account's verifications since a time. The outcomes listed are
/// those of the partial index `checks_failed_by_client_ip`, so the count reads only failures.
pub(super) const COUNT_RECENT_FAILURES: &str = "SELECT COUNT(*) FROM checks
     WHERE account_id = ?1 AND client_ip = ?2 AND at > ?3
       AND outcome IN ('mismatch', 'mismatch_exhausted')";

/// For `wait_for_window`: an address's wrong codes as `COUNT_RECENT_FAILURES` counts them, by
/// the same partial index.
const OLDEST_COUNTED_FAILURE: &str = "SELECT at FROM checks
     WHERE account_id = ?3 AND client_ip = ?4 AND at > ?1
       AND outcome IN ('mismatch', 'mismatch_exhausted')
     ORDER BY at DESC LIMIT 1 OFFSET ?2";

/// The columns of a verification that a check reads.
struct CheckedRow {
    /// The row's own number: the check's `UPDATE` finds the row by it, without a second search
    /// of the id index.
    rowid: i64,
    id: VerifyId,
    state: CheckState,
    digest: Vec<u8>,
    binding: DigestBinding,
    message_id: Option<String>,
}

impl CheckedRow {
    /// From `id, status, expires_at, attempts_used, max_attempts, code_digest, message_id,
    /// code_bound_to, rowid`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            rowid: row.get(8)?,
            id: parse_column(row, 0, VerifyId::parse)?,
            state: CheckState {
                status: parse_column(row, 1, VerificationStatus::parse)?,
                expires_at: Timestamp(row.get(2)?),
                attempts_used: row.get(3)?,
                max_attempts: row.get(4)?,
            },
            digest: row.get(5)?,
            message_id: row.get(6)?,
            binding: parse_column(row, 7, DigestBinding::parse)?,
        })
    }
}

/// A key's live code, for a check that names the key (Pinpoint's): its newest row
/// (`newest_of_key`), if that is still pending.
pub(super) const LIVE_CODE_OF_KEY: &str = concat!(
    "SELECT id, status, expires_at, attempts_used, max_attempts, code_digest, message_id, code_bound_to,
            rowid
     FROM verifications
     WHERE status = 'pending' AND rowid = ",
    newest_of_key!()
);

/// A check's new state, on the row the check read.
pub(super) const CHECK_TRANSITION: &str =
    "UPDATE verifications SET status = ?2, attempts_used = ?3 WHERE rowid = ?1";

/// The check step: read the state, run the state machine, write the result and the record.
/// The writer runs one job at a time, so no other check can interleave.
pub(super) fn check(
    connection: &Connection,
    lookup: &CheckLookup,
    attempt: &CheckAttempt,
    now: Timestamp,
) -> Result<CheckReport, Failure> {
    let found = match lookup {
        CheckLookup::ByKey(key) => {
            let digests = IndexDigests::of(key);
            connection
            .prepare_cached(LIVE_CODE_OF_KEY)?
            .query_row(
                params![
                    key.account_id.as_str(),
                    key.dialect.as_str(),
                    key.app,
                    key.reference,
                    key.destination.as_str(),
                    digests.key,
                    digests.destination,
                ],
                CheckedRow::from_row,
            )
            .optional()?
        }
        CheckLookup::ById { account_id, id } => connection
            .prepare_cached(
                "SELECT id, status, expires_at, attempts_used, max_attempts, code_digest, message_id,
                        code_bound_to, rowid
                 FROM verifications WHERE id = ?1 AND account_id = ?2",
            )?
            .query_row(
                params![id.as_str(), account_id.as_str()],
                CheckedRow::from_row,
            )
            .optional()?,
    };
    let Some(CheckedRow {
        rowid,
        id,
        state,
        digest,
        binding,
        message_id,
    }) = found
    else {
        return Ok(CheckReport {
            outcome: CheckOutcome::NotFound,
            message_id: None,
            retry_after: None,
        });
    };
    let account_id = lookup.account_id().as_str();
    if let (Some(ip), Some(limit)) = (&attempt.client_ip, attempt.ip_limit) {
        let recent_failures: u32 = connection
            .prepare_cached(COUNT_RECENT_FAILURES)?
            .query_row(
                params![account_id, ip, now.minus(limit.window).millis()],
                |row| row.get(0),
            )?;
        if recent_failures >= limit.max_failures {
            return Ok(CheckReport {
                outcome: CheckOutcome::RateLimited,
                message_id,
                retry_after: wait_for_window(
                    connection,
                    OLDEST_COUNTED_FAILURE,
                    &[&account_id, ip],
                    limit.window,
                    limit.max_failures,
                    now,
                ),
            });
        }
    }
    let stored_key;
    let subject = match (binding, lookup) {
        (DigestBinding::VerifyId, _) => DigestSubject::Verification(&id),
        (DigestBinding::Key, CheckLookup::ByKey(key)) => DigestSubject::Key(key),
        // No API finds a key-bound verification by id, but the port allows it.
        (DigestBinding::Key, CheckLookup::ById { .. }) => {
            stored_key = verification_key(connection, &id)?;
            DigestSubject::Key(&stored_key)
        }
    };
    let transition = state.check(now, || attempt.candidate.matches(subject, &digest));
    if transition.next != state {
        connection
            .prepare_cached(CHECK_TRANSITION)?
            .execute(params![
                rowid,
                transition.next.status.as_str(),
                transition.next.attempts_used
            ])?;
    }
    if attempt.history == CheckHistory::WithCode {
        connection
            .prepare_cached(
                "INSERT INTO checks (verification_id, account_id, at, submitted_code, outcome, client_ip)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id.as_str(),
                account_id,
                now.millis(),
                attempt.candidate.code().expose(),
                transition.outcome.as_str(),
                attempt.client_ip,
            ])?;
    }
    Ok(CheckReport {
        outcome: transition.outcome,
        message_id,
        retry_after: None,
    })
}

pub(super) fn cancel(
    connection: &Connection,
    account_id: &AccountId,
    id: &VerifyId,
    now: Timestamp,
) -> Result<CancelOutcome, Failure> {
    let status: Option<(String, i64)> = connection
        .prepare_cached(
            "SELECT status, expires_at FROM verifications WHERE id = ?1 AND account_id = ?2",
        )?
        .query_row(params![id.as_str(), account_id.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    match status {
        None => Ok(CancelOutcome::NotFound),
        Some((status, expires_at)) if status == "pending" && now.millis() < expires_at => {
            connection
                .prepare_cached("UPDATE verifications SET status = 'cancelled' WHERE id = ?1")?
                .execute([id.as_str()])?;
            Ok(CancelOutcome::Cancelled)
        }
        Some(_) => Ok(CancelOutcome::NotCancellable),
    }
}

/// The key in columns `first` to `first + 4`: account_id, dialect, app, reference, destination.
fn key_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<VerificationKey> {
    Ok(VerificationKey {
        account_id: parse_column(row, first, AccountId::parse)?,
        dialect: parse_column(row, first + 1, Dialect::parse)?,
        app: row.get(first + 2)?,
        reference: row.get(first + 3)?,
        destination: parse_column(row, first + 4, |text| E164::parse(text).ok())?,
    })
}

fn verification_key(connection: &Connection, id: &VerifyId) -> Result<VerificationKey, Failure> {
    Ok(connection
        .prepare_cached(
            "SELECT account_id, dialect, app, reference, destination FROM verifications WHERE id = ?1",
        )?
        .query_row([id.as_str()], |row| key_from_row(row, 0))?)
}

pub(super) fn find_verification(
    connection: &Connection,
    account_id: &AccountId,
    id: &VerifyId,
    now: Timestamp,
) -> Result<Option<Verification>, Failure> {
    let verification = connection
        .prepare_cached(
            "SELECT id, account_id, dialect, app, reference, destination, sender, status,
                    created_at, expires_at, attempts_used, max_attempts, sandbox, sandbox_code,
                    message_id, COALESCE(receipt_state, delivery_status),
                    COALESCE(receipt_at, sent_at, message_updated_at), parts
             FROM verifications
             WHERE id = ?1 AND account_id = ?2",
        )?
        .query_row(params![id.as_str(), account_id.as_str()], |row| {
            let state = CheckState {
                status: parse_column(row, 7, VerificationStatus::parse)?,
                expires_at: Timestamp(row.get(9)?),
                attempts_used: row.get(10)?,
                max_attempts: row.get(11)?,
            };
            Ok(Verification {
                id: parse_column(row, 0, VerifyId::parse)?,
                key: key_from_row(row, 1)?,
                sender: row.get(6)?,
                status: state.status_at(now),
                created_at: Timestamp(row.get(8)?),
                expires_at: state.expires_at,
                attempts_used: state.attempts_used,
                max_attempts: state.max_attempts,
                sandbox: row.get(12)?,
                sandbox_code: row.get(13)?,
                message_id: row.get(14)?,
                delivery_status: row.get(15)?,
                delivery_updated_at: row.get::<_, Option<i64>>(16)?.map(Timestamp),
                parts: row.get(17)?,
                checks: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut verification) = verification else {
        return Ok(None);
    };
    verification.checks = connection
        .prepare_cached(
            "SELECT at, submitted_code, outcome, client_ip FROM checks
             WHERE verification_id = ?1 ORDER BY at, rowid",
        )?
        .query_map([id.as_str()], |row| {
            Ok(CheckRecord {
                at: Timestamp(row.get(0)?),
                submitted_code: row.get(1)?,
                outcome: parse_column(row, 2, CheckOutcome::parse)?,
                client_ip: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(verification))
}

/// Up to `?2` messages due at `?1` and not claimed, the longest due first, with what their
/// verification says of the code.
pub(super) const DUE_MESSAGES: &str =
    "SELECT message_id, id, destination, sender, sealed_text, encoding, parts, entity_id,
            template_id, delivery_attempts, status, expires_at, rowid
     FROM verifications
     WHERE message_state = 'pending' AND next_attempt_at <= ?1 AND lease_until <= ?1
     ORDER BY next_attempt_at LIMIT ?2";

/// Claims due messages: drops those whose code is no longer live, leases the rest.
pub(super) fn claim_outbox(
    connection: &Connection,
    limit: usize,
    lease: Duration,
    now: Timestamp,
) -> Result<Vec<OutboxMessage>, Failure> {
    let mut statement = connection.prepare_cached(DUE_MESSAGES)?;
    let rows = statement
        .query_map(
            params![now.millis(), i64::try_from(limit).unwrap_or(i64::MAX)],
            |row| {
                let message = OutboxMessage {
                    id: parse_column(row, 0, MessageId::parse)?,
                    verify_id: parse_column(row, 1, VerifyId::parse)?,
                    to: parse_column(row, 2, |text| E164::parse(text).ok())?,
                    from: row.get(3)?,
                    text: MessageText::Sealed(row.get(4)?),
                    encoding: parse_column(row, 5, Encoding::parse)?,
                    parts: row.get(6)?,
                    entity_id: row.get(7)?,
                    template_id: row.get(8)?,
                    attempts: row.get(9)?,
                };
                let status: String = row.get(10)?;
                let expires_at: i64 = row.get(11)?;
                let rowid: i64 = row.get(12)?;
                Ok((
                    message,
                    rowid,
                    status == "pending" && now.millis() < expires_at,
                ))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut claimed = Vec::with_capacity(rows.len());
    for (message, rowid, live) in rows {
        if live {
            connection
                .prepare_cached(
                    "UPDATE verifications
                     SET lease_until = ?2, delivery_attempts = delivery_attempts + 1,
                         message_updated_at = ?3
                     WHERE rowid = ?1",
                )?
                .execute(params![rowid, now.plus(lease).millis(), now.millis()])?;
            claimed.push(message);
        } else {
            connection
                .prepare_cached(
                    "UPDATE verifications
                     SET message_state = 'dropped', message_updated_at = ?2, sealed_text = NULL,
                         status_message = 'not sent: the code expired or was cancelled first'
                     WHERE rowid = ?1",
                )?
                .execute(params![rowid, now.millis()])?;
        }
    }
    Ok(claimed)
}

/// An attempt's outcome; a message that is final keeps no text (its code is no longer needed).
pub(super) const FINISH_ATTEMPT: &str =
    "UPDATE verifications SET message_state = ?2, lease_until = 0, message_updated_at = ?3,
         next_attempt_at = COALESCE(?4, next_attempt_at),
         sent_at = CASE WHEN ?2 = 'sent' THEN ?3 ELSE sent_at END,
         delivery_status = ?5, status_code = ?6, status_message = ?7,
         carrier_message_id = COALESCE(?8, carrier_message_id),
         sealed_text = CASE WHEN ?2 = 'pending' THEN sealed_text END
     WHERE message_id = ?1";

pub(super) fn finish_attempts(
    connection: &Connection,
    outcomes: &[(MessageId, AttemptOutcome)],
    now: Timestamp,
) -> Result<(), Failure> {
    let mut statement = connection.prepare_cached(FINISH_ATTEMPT)?;
    for (id, outcome) in outcomes {
        let report = outcome.report();
        statement.execute(params![
            id.as_str(),
            outcome.next_state().as_str(),
            now.millis(),
            outcome.retry_after().map(|delay| now.plus(delay).millis()),
            report.status.as_str(),
            report.status_code,
            report.status_message.as_str(),
            report.message_id.as_ref().map(CarrierMessageId::as_str),
        ])?;
    }
    Ok(())
}

/// A receipt's state and time, unless the message already has a receipt in that state.
pub(super) const RECORD_RECEIPT: &str =
    "UPDATE verifications SET receipt_state = ?2, receipt_at = ?3, message_updated_at = ?4
     WHERE carrier_message_id = ?1 AND receipt_state IS NOT ?2";

/// Whether a message has the carrier id `?1`: asked when `RECORD_RECEIPT` changed nothing.
pub(super) const CARRIER_ID_KNOWN: &str =
    "SELECT EXISTS (SELECT 1 FROM verifications WHERE carrier_message_id = ?1)";

pub(super) fn record_receipt(
    connection: &Connection,
    receipt: &Receipt,
    now: Timestamp,
) -> Result<ReceiptStored, Failure> {
    let updated = connection.prepare_cached(RECORD_RECEIPT)?.execute(params![
        receipt.carrier_message_id.as_str(),
        receipt.state,
        receipt.at.millis(),
        now.millis()
    ])?;
    let changed = updated > 0;
    let exists = changed
        || connection
            .prepare_cached(CARRIER_ID_KNOWN)?
            .query_row([receipt.carrier_message_id.as_str()], |row| row.get(0))?;
    Ok(ReceiptStored::from_update(changed, exists))
}

/// The messages waiting and the oldest's commit time; `/metrics` asks at every scrape.
pub(super) const BACKLOG: &str =
    "SELECT COUNT(*), MIN(created_at) FROM verifications WHERE message_state = 'pending'";

pub(super) fn outbox_backlog(
    connection: &Connection,
    now: Timestamp,
) -> Result<OutboxBacklog, Failure> {
    let (pending, oldest) = connection.prepare_cached(BACKLOG)?.query_row([], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
    })?;
    Ok(OutboxBacklog::at(
        now,
        u64::try_from(pending).unwrap_or(0),
        oldest.map(Timestamp),
    ))
}

/// At start, every claim a process that died left behind.
pub(super) const RELEASE_CLAIMS: &str =
    "UPDATE verifications SET lease_until = 0 WHERE message_state = 'pending' AND lease_until > 0";

pub(super) fn release_claims(connection: &Connection) -> Result<u64, Failure> {
    let released = connection.execute(RELEASE_CLAIMS, [])?;
    Ok(released as u64)
}

pub(super) fn release_messages(connection: &Connection, ids: &[MessageId]) -> Result<u64, Failure> {
    let mut statement = connection.prepare_cached(
        "UPDATE verifications SET lease_until = 0
             WHERE message_id = ?1 AND message_state = 'pending'",
    )?;
    let mut released = 0;
    for id in ids {
        released += statement.execute([id.as_str()])? as u64;
    }
    Ok(released)
}

/// A message's columns, in the order `message_record` reads them, from its verification's row.
macro_rules! message_columns {
    () => {
        "SELECT message_id, id, account_id, destination, sender, encoding, parts, message_state,
                delivery_attempts, created_at, sent_at, delivery_status, status_message,
                carrier_message_id, receipt_state, receipt_at,
                CASE WHEN message_state = 'pending' THEN next_attempt_at END
         FROM verifications"
    };
}

pub(super) const MESSAGE_BY_ID: &str = concat!(message_columns!(), " WHERE message_id = ?1");

/// The newest `?1` messages given up on.
pub(super) const FAILED_MESSAGES: &str = concat!(
    message_columns!(),
    " WHERE message_state = 'failed' ORDER BY message_updated_at DESC LIMIT ?1"
);

fn message_record(row: &Row) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: parse_column(row, 0, MessageId::parse)?,
        verify_id: parse_column(row, 1, VerifyId::parse)?,
        account_id: parse_column(row, 2, AccountId::parse)?,
        to: parse_column(row, 3, |text| E164::parse(text).ok())?,
        from: row.get(4)?,
        encoding: parse_column(row, 5, Encoding::parse)?,
        parts: row.get(6)?,
        state: parse_column(row, 7, MessageState::parse)?,
        attempts: row.get(8)?,
        created_at: Timestamp(row.get(9)?),
        sent_at: row.get::<_, Option<i64>>(10)?.map(Timestamp),
        delivery_status: row.get(11)?,
        status_message: row.get(12)?,
        carrier_message_id: row.get(13)?,
        receipt_state: row.get(14)?,
        receipt_at: row.get::<_, Option<i64>>(15)?.map(Timestamp),
        next_attempt_at: row.get::<_, Option<i64>>(16)?.map(Timestamp),
    })
}

pub(super) fn find_message(
    connection: &Connection,
    id: &MessageId,
) -> Result<Option<MessageRecord>, Failure> {
    Ok(connection
        .prepare_cached(MESSAGE_BY_ID)?
        .query_row([id.as_str()], message_record)
        .optional()?)
}

pub(super) fn failed_messages(
    connection: &Connection,
    limit: usize,
) -> Result<Vec<MessageRecord>, Failure> {
    Ok(connection
        .prepare_cached(FAILED_MESSAGES)?
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], message_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn purge_verifications(
    connection: &Connection,
    cutoff: Timestamp,
    limit: usize,
) -> Result<u64, Failure> {
    // The oldest first, in insertion (rowid) order, up to the first one young enough to keep:
    // reads at most `limit` rows and needs no index on the age. The single writer inserts in
    // time order, so the run of old rows at the head is every old row (if the clock ever
    // stepped back, the rows behind a young-looking one wait for a later run).
    let deleted = connection
        .prepare_cached(
            "WITH head AS (SELECT rowid AS row, created_at FROM verifications ORDER BY rowid LIMIT ?2)
             DELETE FROM verifications WHERE rowid IN
                 (SELECT row FROM head
                  WHERE row < COALESCE((SELECT MIN(row) FROM head WHERE created_at >= ?1), 9223372036854775807))",
        )?
        .execute(params![
            cutoff.millis(),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
    Ok(deleted as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_read_back_from_its_bytes_and_a_torn_one_is_refused() {
        let mut window = SmsWindow::empty().at(Timestamp(1_699_999_800_000));
        window.add(7);
        let bytes = sms_window_bytes(&window);
        assert_eq!(bytes.len(), 4 * SmsWindow::BUCKETS);
        let newest = window.newest().millis();
        assert_eq!(
            sms_window(newest, Some(bytes.clone())).ok(),
            Some(window.clone())
        );
        assert_eq!(sms_window(newest, None).ok(), Some(SmsWindow::empty()));
        for torn in [
            &bytes[..bytes.len() - 1],
            &bytes[4..],
            &[bytes.as_slice(), &[0]].concat(),
        ] {
            assert!(
                sms_window(newest, Some(torn.to_vec())).is_err(),
                "{} bytes",
                torn.len()
            );
        }
    }
}
