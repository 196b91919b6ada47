//! The SQL of the PostgreSQL store, one function per operation. Statements are prepared once per
//! connection. `now` is `None` in production, and every statement then reads the database's
//! clock (`otpd_now_ms()`); tests pass their own time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object};
use otpd_core::account::{Account, AccountLimits, Application, NewAccount, PreviousSecret};
use otpd_core::outbox::{
    AttemptOutcome, CarrierMessageId, MessageId, MessageRecord, MessageState, MessageText,
    NewOutboxMessage, OutboxBacklog, OutboxMessage, Receipt, ReceiptStored,
};
use otpd_core::sms::Encoding;
use otpd_core::sms_window::SmsWindow;
use otpd_core::verification::{
    CancelOutcome, CheckAttempt, CheckHistory, CheckLookup, CheckOutcome, CheckRecord, CheckReport,
    CheckState, Dialect, IpLimit, NewVerification, SendGuards, SendRejected, Verification,
    VerificationKey, VerificationStatus,
};
use otpd_core::{
    AccessKeyId, AccountId, ApplicationId, CodeDigest, DigestBinding, DigestSubject, E164,
    Timestamp, VerifyId,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::group::{Group, GroupStatement};
use crate::failure::Failure;

/// The database's "now", unless the caller brought its own.
const NOW: &str = "COALESCE($1::bigint, otpd_now_ms())";

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn malformed(index: usize) -> Failure {
    Failure::Database(format!("malformed value in column {index}"))
}

/// Reads a text column through a parser.
fn parsed<T>(row: &Row, index: usize, parse: impl Fn(&str) -> Option<T>) -> Result<T, Failure> {
    let text: &str = row.try_get(index)?;
    parse(text).ok_or_else(|| malformed(index))
}

/// Reads an `integer` column into one of the core's unsigned counters.
fn counter<T: TryFrom<i32>>(row: &Row, index: usize) -> Result<T, Failure> {
    let value: i32 = row.try_get(index)?;
    T::try_from(value).map_err(|_| malformed(index))
}

fn optional_time(row: &Row, index: usize) -> Result<Option<Timestamp>, Failure> {
    Ok(row.try_get::<_, Option<i64>>(index)?.map(Timestamp))
}

/// The columns an account is inserted with; it is read back with the previous secret's too.
const NEW_ACCOUNT_COLUMNS: &str = "id, name, access_key_id, sealed_secret, credits, \
     default_sender, sms_per_hour, countries, created_at";
const ACCOUNT_COLUMNS: &str = "id, name, access_key_id, sealed_secret, credits, default_sender, \
     created_at, previous_sealed_secret, previous_secret_until, sms_per_hour, countries";

fn limits_from_row(row: &Row, first: usize) -> Result<AccountLimits, Failure> {
    let sms_per_hour: Option<i32> = row.try_get(first)?;
    let countries: Option<&str> = row.try_get(first + 1)?;
    AccountLimits::from_stored(sms_per_hour.map(i64::from), countries)
        .ok_or_else(|| malformed(first))
}

/// An hourly limit as its `integer` column holds it.
fn sms_per_hour_column(limits: &AccountLimits) -> Option<i32> {
    limits
        .sms_per_hour
        .and_then(|limit| i32::try_from(limit.get()).ok())
}

fn account_from_row(row: &Row) -> Result<Account, Failure> {
    let previous_sealed: Option<Vec<u8>> = row.try_get(7)?;
    let previous_until = optional_time(row, 8)?;
    Ok(Account {
        id: parsed(row, 0, AccountId::parse)?,
        name: row.try_get(1)?,
        access_key_id: parsed(row, 2, AccessKeyId::parse)?,
        sealed_secret: row.try_get(3)?,
        credits: row.try_get(4)?,
        default_sender: row.try_get(5)?,
        created_at: Timestamp(row.try_get(6)?),
        previous_secret: previous_sealed
            .zip(previous_until)
            .map(|(sealed, until)| PreviousSecret { sealed, until }),
        limits: limits_from_row(row, 9)?,
    })
}

pub(super) async fn insert_account(
    client: &ClientWrapper,
    now: Option<i64>,
    account: &NewAccount,
) -> Result<Account, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO accounts ({NEW_ACCOUNT_COLUMNS})
             VALUES ($2, $3, $4, $5, $6, $7, $8, $9, {NOW})
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &now,
                &account.id.as_str(),
                &account.name.as_str(),
                &account.access_key_id.as_str(),
                &account.sealed_secret,
                &account.credits,
                &account.default_sender,
                &sms_per_hour_column(&account.limits),
                &account.limits.countries.as_list(),
            ],
        )
        .await?;
    account_from_row(&row)
}

pub(super) async fn list_accounts(client: &ClientWrapper) -> Result<Vec<Account>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id"
        ))
        .await?;
    let rows = client.query(&statement, &[]).await?;
    rows.iter().map(account_from_row).collect()
}

pub(super) async fn find_account_by_key(
    client: &ClientWrapper,
    key: &AccessKeyId,
) -> Result<Option<Account>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE access_key_id = $1"
        ))
        .await?;
    let row = client.query_opt(&statement, &[&key.as_str()]).await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(super) async fn delete_account(
    client: &ClientWrapper,
    key: &AccessKeyId,
) -> Result<bool, Failure> {
    // Verifications have no foreign key to their account, nor checks and messages to their
    // verification (see the migrations): delete them here, in the same statement.
    let statement = client
        .prepare_cached(
            "WITH gone AS (DELETE FROM accounts WHERE access_key_id = $1 RETURNING id),
                  verifications_gone AS (
                      DELETE FROM verifications WHERE account_id IN (SELECT id FROM gone)
                      RETURNING id
                  ),
                  checks_gone AS (
                      DELETE FROM checks
                      WHERE verification_id IN (SELECT id FROM verifications_gone)
                  ),
                  messages_gone AS (
                      DELETE FROM outbox
                      WHERE verification_id IN (SELECT id FROM verifications_gone)
                  )
             SELECT count(*) FROM gone",
        )
        .await?;
    let deleted: i64 = client
        .query_one(&statement, &[&key.as_str()])
        .await?
        .try_get(0)?;
    Ok(deleted > 0)
}

pub(super) async fn add_credits(
    client: &ClientWrapper,
    key: &AccessKeyId,
    credits: i64,
) -> Result<Option<Account>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "UPDATE accounts SET credits = COALESCE(credits, 0) + $2 WHERE access_key_id = $1
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&key.as_str(), &credits])
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(super) async fn replace_secret(
    client: &ClientWrapper,
    key: &AccessKeyId,
    sealed_secret: &[u8],
    keep_previous_until: Option<Timestamp>,
) -> Result<Option<Account>, Failure> {
    // The right-hand sides read the row as it was: the previous secret is the one replaced.
    let statement = client
        .prepare_cached(&format!(
            "UPDATE accounts SET sealed_secret = $2,
                 previous_sealed_secret = CASE WHEN $3::bigint IS NULL THEN NULL
                                               ELSE sealed_secret END,
                 previous_secret_until = $3
             WHERE access_key_id = $1
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .await?;
    let until = keep_previous_until.map(Timestamp::millis);
    let row = client
        .query_opt(&statement, &[&key.as_str(), &sealed_secret, &until])
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(super) async fn set_account_limits(
    client: &ClientWrapper,
    key: &AccessKeyId,
    limits: &AccountLimits,
) -> Result<Option<Account>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "UPDATE accounts SET sms_per_hour = $2, countries = $3 WHERE access_key_id = $1
             RETURNING {ACCOUNT_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &key.as_str(),
                &sms_per_hour_column(limits),
                &limits.countries.as_list(),
            ],
        )
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(super) async fn sms_in_last_hour(
    client: &ClientWrapper,
    now: Option<i64>,
) -> Result<HashMap<AccessKeyId, u64>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {NOW}, access_key_id, sms_window_newest, sms_window FROM accounts
             WHERE sms_window IS NOT NULL"
        ))
        .await?;
    let mut counted = HashMap::new();
    for row in client.query(&statement, &[&now]).await? {
        let sent = stored_window(&row, 2)?
            .at(Timestamp(row.try_get(0)?))
            .total();
        if sent > 0 {
            counted.insert(parsed(&row, 1, AccessKeyId::parse)?, sent);
        }
    }
    Ok(counted)
}

/// An account's `sms_window_newest` and `sms_window`, in columns `first` and `first + 1`.
fn stored_window(row: &Row, first: usize) -> Result<SmsWindow, Failure> {
    match row.try_get::<_, Option<Vec<i32>>>(first + 1)? {
        None => Ok(SmsWindow::empty()),
        Some(parts) => SmsWindow::from_stored(
            Timestamp(row.try_get(first)?),
            parts.into_iter().map(i64::from),
        )
        .ok_or_else(|| malformed(first + 1)),
    }
}

/// After a send was refused by its account's hourly limit: how long until the window has room
/// for it. `None` if it never will, or the account is gone.
pub(super) async fn wait_for_hourly_room(
    client: &ClientWrapper,
    now: Option<i64>,
    account_id: &AccountId,
    charge: u32,
) -> Result<Option<Duration>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {NOW}, sms_per_hour, sms_window_newest, sms_window FROM accounts WHERE id = $2"
        ))
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&now, &account_id.as_str()])
        .await?
    else {
        return Ok(None);
    };
    let now = Timestamp(row.try_get(0)?);
    let Some(limit) = row.try_get::<_, Option<i32>>(1)? else {
        // The limit was lifted since: there is room now.
        return Ok(Some(Duration::ZERO));
    };
    let limit = u64::try_from(limit).map_err(|_| malformed(1))?;
    Ok(stored_window(&row, 2)?.wait_for_room(now, charge.into(), limit))
}

/// After a send was refused by the destination's anti-spam window: how long until it has room.
pub(super) async fn wait_for_destination(
    client: &ClientWrapper,
    now: Option<i64>,
    account_id: &AccountId,
    destination: &E164,
    guards: SendGuards,
) -> Result<Option<Duration>, Failure> {
    let wait = format!(
        "SELECT created_at + $2 - {NOW} FROM verifications
         WHERE account_id = $3 AND destination = $4 AND created_at > {NOW} - $2
         ORDER BY created_at DESC OFFSET $5 LIMIT 1"
    );
    let keys = [account_id.as_str(), destination.as_str()];
    let max = guards.max_sends_per_destination;
    wait_for_window(client, &wait, now, guards.window, keys, max).await
}

const APPLICATION_COLUMNS: &str = "id, account_id, name, tags, created_at";

fn application_from_row(row: &Row) -> Result<Application, Failure> {
    Ok(Application {
        id: parsed(row, 0, ApplicationId::parse)?,
        account_id: parsed(row, 1, AccountId::parse)?,
        name: row.try_get(2)?,
        tags: parsed(row, 3, |text| serde_json::from_str(text).ok())?,
        created_at: Timestamp(row.try_get(4)?),
    })
}

pub(super) async fn insert_application(
    client: &ClientWrapper,
    now: Option<i64>,
    application: Application,
) -> Result<Application, Failure> {
    let tags =
        serde_json::to_string(&application.tags).map_err(|e| Failure::Database(e.to_string()))?;
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO applications ({APPLICATION_COLUMNS}) VALUES ($2, $3, $4, $5, {NOW})
             RETURNING created_at"
        ))
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &now,
                &application.id.as_str(),
                &application.account_id.as_str(),
                &application.name,
                &tags,
            ],
        )
        .await?;
    Ok(Application {
        created_at: Timestamp(row.try_get(0)?),
        ..application
    })
}

pub(super) async fn list_applications(
    client: &ClientWrapper,
    account: Option<&AccountId>,
) -> Result<Vec<Application>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications
             WHERE $1::text IS NULL OR account_id = $1 ORDER BY created_at, id"
        ))
        .await?;
    let rows = client
        .query(&statement, &[&account.map(AccountId::as_str)])
        .await?;
    rows.iter().map(application_from_row).collect()
}

pub(super) async fn find_application(
    client: &ClientWrapper,
    id: &ApplicationId,
) -> Result<Option<Application>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = $1"
        ))
        .await?;
    let row = client.query_opt(&statement, &[&id.as_str()]).await?;
    row.as_ref().map(application_from_row).transpose()
}

pub(super) async fn delete_application(
    client: &ClientWrapper,
    id: &ApplicationId,
) -> Result<bool, Failure> {
    let statement = client
        .prepare_cached("DELETE FROM applications WHERE id = $1")
        .await?;
    Ok(client.execute(&statement, &[&id.as_str()]).await? > 0)
}

/// A send as its group takes it.
pub(super) struct CreateRequest {
    pub now: Option<i64>,
    pub verification: NewVerification,
    pub guards: SendGuards,
}

impl CreateRequest {
    fn message(&self) -> Option<&NewOutboxMessage> {
        self.verification.outbox.as_ref()
    }
}

/// Sends in groups: `otpd_create_verifications` (in the migrations) takes the group's locks and
/// runs `otpd_create_verification` for each send, which applies the guards, retires the live
/// code of the key and inserts the verification and its message; all in one statement and one
/// transaction.
pub(super) struct CreateVerifications;

impl GroupStatement for CreateVerifications {
    const NAME: &'static str = "send";
    type Request = CreateRequest;
    type Answer = ();

    async fn run(
        client: &Object,
        requests: &[CreateRequest],
    ) -> Result<Vec<Result<(), Failure>>, tokio_postgres::Error> {
        let statement = client
            .prepare_cached(
                "SELECT verdict FROM otpd_create_verifications($1, $2, $3, $4, $5, $6, $7,
                     $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
                     $23, $24, $25)",
            )
            .await?;
        let now: Vec<Option<i64>> = column(requests, |r| r.now);
        let window: Vec<i64> = column(requests, |r| millis(r.guards.window));
        let max_sends: Vec<i32> = column(requests, |r| {
            saturating_i32(r.guards.max_sends_per_destination)
        });
        let charge: Vec<i32> = column(requests, |r| saturating_i32(r.guards.charge));
        let id: Vec<&str> = column(requests, |r| r.verification.id.as_str());
        let account_id: Vec<&str> = column(requests, |r| r.verification.key.account_id.as_str());
        let dialect: Vec<&str> = column(requests, |r| r.verification.key.dialect.as_str());
        let app: Vec<&str> = column(requests, |r| r.verification.key.app.as_str());
        let reference: Vec<&str> = column(requests, |r| r.verification.key.reference.as_str());
        let destination: Vec<&str> = column(requests, |r| r.verification.key.destination.as_str());
        let sender: Vec<&str> = column(requests, |r| r.verification.sender.as_str());
        let digest: Vec<&[u8]> = column(requests, |r| r.verification.digest.bytes.as_slice());
        let bound_to: Vec<&str> = column(requests, |r| r.verification.digest.binding.as_str());
        let ttl: Vec<i64> = column(requests, |r| millis(r.verification.ttl.duration()));
        let max_attempts: Vec<i32> =
            column(requests, |r| i32::from(r.verification.max_attempts.get()));
        let sandbox: Vec<bool> = column(requests, |r| r.verification.sandbox);
        let sandbox_code: Vec<Option<&str>> =
            column(requests, |r| r.verification.sandbox_code.as_deref());
        let parts: Vec<i32> = column(requests, |r| saturating_i32(r.verification.parts));
        let message_id: Vec<Option<&str>> =
            column(requests, |r| r.message().map(|m| m.id.as_str()));
        let sealed: Vec<Option<&[u8]>> =
            column(requests, |r| r.message().map(|m| m.sealed_text.as_slice()));
        let encoding: Vec<Option<&str>> =
            column(requests, |r| r.message().map(|m| m.encoding.as_str()));
        let message_parts: Vec<Option<i32>> =
            column(requests, |r| r.message().map(|m| saturating_i32(m.parts)));
        let entity_id: Vec<Option<&str>> = column(requests, |r| {
            r.message().and_then(|m| m.entity_id.as_deref())
        });
        let template_id: Vec<Option<&str>> = column(requests, |r| {
            r.message().and_then(|m| m.template_id.as_deref())
        });
        let claim: Vec<Option<i64>> = column(requests, |r| {
            r.message().and_then(|m| m.claimed_for).map(millis)
        });
        let rows = client
            .query(
                &statement,
                &[
                    &now,
                    &window,
                    &max_sends,
                    &charge,
                    &id,
                    &account_id,
                    &dialect,
                    &app,
                    &reference,
                    &destination,
                    &sender,
                    &digest,
                    &bound_to,
                    &ttl,
                    &max_attempts,
                    &sandbox,
                    &sandbox_code,
                    &parts,
                    &message_id,
                    &sealed,
                    &encoding,
                    &message_parts,
                    &entity_id,
                    &template_id,
                    &claim,
                ],
            )
            .await?;
        Ok(rows.iter().map(send_verdict).collect())
    }
}

fn send_verdict(row: &Row) -> Result<(), Failure> {
    match row.try_get::<_, &str>(0)? {
        "ok" => Ok(()),
        // How long until there is room is read after the group, by `wait_for_destination`
        // and `wait_for_hourly_room`: the refusal path alone pays for it.
        "too_many_sends" => Err(Failure::Rejected(SendRejected::TooManySends {
            retry_after: None,
        })),
        "no_credit" => Err(Failure::Rejected(SendRejected::NoCredit)),
        "hourly_limit" => Err(Failure::Rejected(SendRejected::HourlyLimit {
            retry_after: None,
        })),
        "unknown_account" => Err(Failure::Rejected(SendRejected::UnknownAccount)),
        other => Err(Failure::Database(format!("unexpected verdict {other}"))),
    }
}

/// One array parameter of a group statement: a value from each request.
fn column<'a, R, T>(requests: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    requests.iter().map(value).collect()
}

fn saturating_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The check step, in one statement, comparing the digest this computes beforehand: in a group
/// of 8 or more, the group's statement (`Checks`) settles a check of a live code in one UPDATE
/// with the rest of its group, and `otpd_check` (both in the migrations) finds and locks the
/// row, runs the state machine and stores what it decided for every other check. Parallel
/// checks of one code, from any node, queue on the row; a code's second check in one group
/// runs after its first.
pub(super) async fn check(
    checks: &Group<Checks>,
    now: Option<i64>,
    lookup: CheckLookup,
    attempt: &CheckAttempt,
) -> Result<CheckReport, Failure> {
    let digest = attempt.candidate.digest(lookup.digest_subject());
    let account_id = lookup.account_id().clone();
    match checks
        .run(CheckRequest::new(now, lookup, digest, attempt))
        .await?
    {
        Checked::Decided(report) => Ok(report),
        // The row's digest is bound to something else (a code sent before digests could be
        // bound to a key): a second statement, by id, with the digest the row has.
        Checked::Rebind { id, key } => {
            let subject = match &key {
                Some(key) => DigestSubject::Key(key),
                None => DigestSubject::Verification(&id),
            };
            let digest = attempt.candidate.digest(subject);
            let by_id = CheckLookup::ById { account_id, id };
            match checks
                .run(CheckRequest::new(now, by_id, digest, attempt))
                .await?
            {
                Checked::Decided(report) => Ok(report),
                Checked::Rebind { .. } => Err(Failure::Database(
                    "otpd_check asked twice for another digest".into(),
                )),
            }
        }
    }
}

/// A check as its group takes it.
pub(super) struct CheckRequest {
    now: Option<i64>,
    lookup: CheckLookup,
    digest: CodeDigest,
    recorded_code: Option<String>,
    client_ip: Option<String>,
    ip_limit: Option<IpLimit>,
}

impl CheckRequest {
    fn new(
        now: Option<i64>,
        lookup: CheckLookup,
        digest: CodeDigest,
        attempt: &CheckAttempt,
    ) -> Self {
        Self {
            now,
            lookup,
            digest,
            recorded_code: (attempt.history == CheckHistory::WithCode)
                .then(|| attempt.candidate.code().expose().to_owned()),
            ip_limit: attempt.client_ip.as_ref().and(attempt.ip_limit),
            client_ip: attempt.client_ip.clone(),
        }
    }

    fn id(&self) -> Option<&str> {
        match &self.lookup {
            CheckLookup::ById { id, .. } => Some(id.as_str()),
            CheckLookup::ByKey(_) => None,
        }
    }

    fn key(&self) -> Option<&VerificationKey> {
        match &self.lookup {
            CheckLookup::ByKey(key) => Some(key),
            CheckLookup::ById { .. } => None,
        }
    }
}

/// What one call of `otpd_check` answered.
pub(super) enum Checked {
    Decided(CheckReport),
    /// Nothing was written: the row's digest is bound to its id, or (when `key` is set) to
    /// that key.
    Rebind {
        id: VerifyId,
        key: Option<VerificationKey>,
    },
}

/// Checks in groups: `otpd_checks` (in the migrations) takes the group's locks, settles its
/// checks of live codes in one UPDATE when it holds 8 or more, and runs `otpd_check` for each
/// of the others; all in one statement and one transaction.
pub(super) struct Checks;

impl GroupStatement for Checks {
    const NAME: &'static str = "check";
    type Request = CheckRequest;
    type Answer = Checked;

    async fn run(
        client: &Object,
        requests: &[CheckRequest],
    ) -> Result<Vec<Result<Checked, Failure>>, tokio_postgres::Error> {
        let statement = client
            .prepare_cached(
                "SELECT * FROM otpd_checks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     $12, $13)",
            )
            .await?;
        let now: Vec<Option<i64>> = column(requests, |r| r.now);
        let account_id: Vec<&str> = column(requests, |r| r.lookup.account_id().as_str());
        let id: Vec<Option<&str>> = column(requests, CheckRequest::id);
        let dialect: Vec<Option<&str>> = column(requests, |r| r.key().map(|k| k.dialect.as_str()));
        let app: Vec<Option<&str>> = column(requests, |r| r.key().map(|k| k.app.as_str()));
        let reference: Vec<Option<&str>> =
            column(requests, |r| r.key().map(|k| k.reference.as_str()));
        let destination: Vec<Option<&str>> =
            column(requests, |r| r.key().map(|k| k.destination.as_str()));
        let bound_to: Vec<&str> = column(requests, |r| r.digest.binding.as_str());
        let digest: Vec<&[u8]> = column(requests, |r| r.digest.bytes.as_slice());
        let recorded_code: Vec<Option<&str>> = column(requests, |r| r.recorded_code.as_deref());
        let client_ip: Vec<Option<&str>> = column(requests, |r| r.client_ip.as_deref());
        let ip_window: Vec<Option<i64>> =
            column(requests, |r| r.ip_limit.map(|l| millis(l.window)));
        let ip_max_failures: Vec<Option<i32>> = column(requests, |r| {
            r.ip_limit.map(|l| saturating_i32(l.max_failures))
        });
        let rows = client
            .query(
                &statement,
                &[
                    &now,
                    &account_id,
                    &id,
                    &dialect,
                    &app,
                    &reference,
                    &destination,
                    &bound_to,
                    &digest,
                    &recorded_code,
                    &client_ip,
                    &ip_window,
                    &ip_max_failures,
                ],
            )
            .await?;
        Ok(requests
            .iter()
            .zip(&rows)
            .map(|(request, row)| checked(row, request.lookup.account_id()))
            .collect())
    }
}

fn checked(row: &Row, account_id: &AccountId) -> Result<Checked, Failure> {
    let outcome: &str = row.try_get(0)?;
    let message_id: Option<String> = row.try_get(1)?;
    if outcome != "rebind" {
        let outcome = CheckOutcome::parse(outcome)
            .ok_or_else(|| Failure::Database(format!("unexpected check outcome {outcome}")))?;
        // A rate-limited check's wait is read after the group, by `wait_for_address`.
        return Ok(Checked::Decided(CheckReport {
            outcome,
            message_id,
            retry_after: None,
        }));
    }
    let key = match parsed(row, 3, DigestBinding::parse)? {
        DigestBinding::VerifyId => None,
        DigestBinding::Key => Some(VerificationKey {
            account_id: account_id.clone(),
            dialect: parsed(row, 4, Dialect::parse)?,
            app: row.try_get(5)?,
            reference: row.try_get(6)?,
            destination: parsed(row, 7, |text| E164::parse(text).ok())?,
        }),
    };
    Ok(Checked::Rebind {
        id: parsed(row, 2, VerifyId::parse)?,
        key,
    })
}

/// After a check was refused by its address's limit of wrong codes: how long until the address
/// may check again.
pub(super) async fn wait_for_address(
    client: &ClientWrapper,
    now: Option<i64>,
    account_id: &AccountId,
    client_ip: &str,
    limit: IpLimit,
) -> Result<Option<Duration>, Failure> {
    let wait = format!(
        "SELECT at + $2 - {NOW} FROM checks
         WHERE account_id = $3 AND client_ip = $4 AND at > {NOW} - $2
           AND outcome IN ('mismatch', 'mismatch_exhausted')
         ORDER BY at DESC OFFSET $5 LIMIT 1"
    );
    let keys = [account_id.as_str(), client_ip];
    wait_for_window(client, &wait, now, limit.window, keys, limit.max_failures).await
}

/// How long until a sliding window that holds `max` or more events has room for one more: until
/// the `max`-th newest leaves it. `wait` answers that in milliseconds, from `$1` now, `$2` the
/// window, `$3` and `$4` what is counted, and `$5` the offset of the `max`-th newest; no row,
/// no wait to tell. Asked only after a refusal, so its cost is the refusal's alone.
async fn wait_for_window(
    client: &ClientWrapper,
    wait: &str,
    now: Option<i64>,
    window: Duration,
    keys: [&str; 2],
    max: u32,
) -> Result<Option<Duration>, Failure> {
    let Some(offset) = max.checked_sub(1) else {
        return Ok(None);
    };
    let statement = client.prepare_cached(wait).await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &now,
                &millis(window),
                &keys[0],
                &keys[1],
                &i64::from(offset),
            ],
        )
        .await?;
    let wait: Option<i64> = row.map(|row| row.try_get(0)).transpose()?;
    Ok(wait.map(|millis| Duration::from_millis(u64::try_from(millis).unwrap_or(0))))
}

/// One statement: cancel the code if it is still live.
pub(super) async fn cancel(
    client: &ClientWrapper,
    now: Option<i64>,
    account_id: &AccountId,
    id: &VerifyId,
) -> Result<CancelOutcome, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "WITH target AS (
                 SELECT id, status = 'pending' AND expires_at > {NOW} AS live
                 FROM verifications WHERE id = $2 AND account_id = $3 FOR UPDATE
             ),
             cancelled AS (
                 UPDATE verifications SET status = 'cancelled'
                 FROM target WHERE verifications.id = target.id AND target.live
                 RETURNING verifications.id
             )
             SELECT EXISTS (SELECT 1 FROM cancelled) FROM target"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&now, &id.as_str(), &account_id.as_str()])
        .await?;
    Ok(match row {
        None => CancelOutcome::NotFound,
        Some(row) if row.try_get::<_, bool>(0)? => CancelOutcome::Cancelled,
        Some(_) => CancelOutcome::NotCancellable,
    })
}

pub(super) async fn find_verification(
    client: &ClientWrapper,
    now: Option<i64>,
    account_id: &AccountId,
    id: &VerifyId,
) -> Result<Option<Verification>, Failure> {
    let verification = client
        .prepare_cached(&format!(
            "SELECT v.id, v.account_id, v.dialect, v.app, v.reference, v.destination, v.sender,
                    v.status, v.created_at, v.expires_at, v.attempts_used, v.max_attempts,
                    v.sandbox, v.sandbox_code, v.message_id,
                    COALESCE(o.receipt_state, o.delivery_status),
                    COALESCE(o.receipt_at, o.sent_at, o.updated_at), v.parts, {NOW}
             FROM verifications v LEFT JOIN outbox o ON o.id = v.message_id
             WHERE v.id = $2 AND v.account_id = $3"
        ))
        .await?;
    let checks = client
        .prepare_cached(
            "SELECT at, submitted_code, outcome, client_ip FROM checks
             WHERE verification_id = $1 ORDER BY at, id",
        )
        .await?;
    let (id, account_id) = (id.as_str(), account_id.as_str());
    let verification_params: [&(dyn ToSql + Sync); 3] = [&now, &id, &account_id];
    let checks_params: [&(dyn ToSql + Sync); 1] = [&id];
    let (row, check_rows) = tokio::join!(
        client.query_opt(&verification, &verification_params),
        client.query(&checks, &checks_params),
    );
    let (Some(row), check_rows) = (row?, check_rows?) else {
        return Ok(None);
    };
    let state = CheckState {
        status: parsed(&row, 7, VerificationStatus::parse)?,
        expires_at: Timestamp(row.try_get(9)?),
        attempts_used: counter(&row, 10)?,
        max_attempts: counter(&row, 11)?,
    };
    let checks = check_rows
        .iter()
        .map(|row| {
            Ok(CheckRecord {
                at: Timestamp(row.try_get(0)?),
                submitted_code: row.try_get(1)?,
                outcome: parsed(row, 2, CheckOutcome::parse)?,
                client_ip: row.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(Some(Verification {
        id: parsed(&row, 0, VerifyId::parse)?,
        key: VerificationKey {
            account_id: parsed(&row, 1, AccountId::parse)?,
            dialect: parsed(&row, 2, Dialect::parse)?,
            app: row.try_get(3)?,
            reference: row.try_get(4)?,
            destination: parsed(&row, 5, |text| E164::parse(text).ok())?,
        },
        sender: row.try_get(6)?,
        status: state.status_at(Timestamp(row.try_get(18)?)),
        created_at: Timestamp(row.try_get(8)?),
        expires_at: state.expires_at,
        attempts_used: state.attempts_used,
        max_attempts: state.max_attempts,
        sandbox: row.try_get(12)?,
        sandbox_code: row.try_get(13)?,
        message_id: row.try_get(14)?,
        delivery_status: row.try_get(15)?,
        delivery_updated_at: optional_time(&row, 16)?,
        parts: counter(&row, 17)?,
        checks,
    }))
}

/// One statement: lock up to `limit` due messages no other node holds (`SKIP LOCKED`), drop
/// those whose code is no longer live, and lease the rest to this node.
pub(super) async fn claim_outbox(
    client: &ClientWrapper,
    now: Option<i64>,
    count: usize,
    lease: Duration,
) -> Result<Vec<OutboxMessage>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "WITH clock AS (SELECT {NOW} AS now),
             due AS (
                 SELECT o.id, v.status = 'pending' AND v.expires_at > clock.now AS live
                 FROM outbox o JOIN verifications v ON v.id = o.verification_id, clock
                 WHERE o.state = 'pending' AND o.next_attempt_at <= clock.now
                   AND o.lease_until <= clock.now
                 ORDER BY o.next_attempt_at LIMIT $2
                 FOR UPDATE OF o SKIP LOCKED
             ),
             dropped AS (
                 UPDATE outbox SET state = 'dropped', updated_at = clock.now, sealed_text = NULL,
                     status_message = 'not sent: the code expired or was cancelled first'
                 FROM due, clock WHERE outbox.id = due.id AND NOT due.live
             )
             UPDATE outbox SET lease_until = clock.now + $3, attempts = attempts + 1,
                 updated_at = clock.now
             FROM due, clock WHERE outbox.id = due.id AND due.live
             RETURNING outbox.id, outbox.verification_id, outbox.destination, outbox.sender,
                 outbox.sealed_text, outbox.encoding, outbox.parts, outbox.entity_id,
                 outbox.template_id, outbox.attempts - 1, outbox.next_attempt_at"
        ))
        .await?;
    let mut rows = client
        .query(&statement, &[&now, &limit(count), &millis(lease)])
        .await?;
    rows.sort_by_key(|row| row.try_get::<_, i64>(10).unwrap_or(i64::MAX));
    rows.iter()
        .map(|row| {
            Ok(OutboxMessage {
                id: parsed(row, 0, MessageId::parse)?,
                verify_id: parsed(row, 1, VerifyId::parse)?,
                to: parsed(row, 2, |text| E164::parse(text).ok())?,
                from: row.try_get(3)?,
                text: MessageText::Sealed(row.try_get(4)?),
                encoding: parsed(row, 5, Encoding::parse)?,
                parts: counter(row, 6)?,
                entity_id: row.try_get(7)?,
                template_id: row.try_get(8)?,
                attempts: counter(row, 9)?,
            })
        })
        .collect()
}

/// The whole batch in one transaction and one round trip: BEGIN, an UPDATE by primary key per
/// outcome, COMMIT, pipelined. (A single UPDATE joined to `unnest` arrays was tried first: its
/// generic plan scanned the whole outbox.) A batch the database refuses (a deadlock with
/// another transaction, say) was rolled back whole; each outcome is then stored on its own, as
/// the groups run their requests, so that one the database will not take does not leave the
/// others' messages claimed, to be sent again when their claims run out.
pub(super) async fn finish_attempts(
    client: Object,
    now: Option<i64>,
    outcomes: Arc<[(MessageId, AttemptOutcome)]>,
) -> Result<(), Failure> {
    let result = match finish_in_one_transaction(&client, now, &outcomes).await {
        Err(error) if error.as_db_error().is_some() && outcomes.len() > 1 => {
            tracing::warn!(
                error = %super::describe(&error),
                outcomes = outcomes.len(),
                "a batch of delivery outcomes was refused; storing them one by one"
            );
            finish_one_by_one(&client, now, &outcomes).await
        }
        other => other.map_err(Failure::from),
    };
    close_on_error(client, result)
}

/// After a failure inside an explicit transaction the session may still be in it: the
/// connection is closed instead of going back to the pool.
fn close_on_error<T>(client: Object, result: Result<T, Failure>) -> Result<T, Failure> {
    if result.is_err() {
        drop(Object::take(client));
    }
    result
}

async fn finish_statement(client: &ClientWrapper) -> Result<Statement, tokio_postgres::Error> {
    client
        .prepare_cached(&format!(
            "WITH clock AS (SELECT {NOW} AS now)
             UPDATE outbox SET state = $3, lease_until = 0, updated_at = clock.now,
                 next_attempt_at = COALESCE(clock.now + $4, next_attempt_at),
                 sent_at = CASE WHEN $3 = 'sent' THEN clock.now ELSE sent_at END,
                 delivery_status = $5, status_code = $6, status_message = $7,
                 carrier_message_id = COALESCE($8, carrier_message_id),
                 sealed_text = CASE WHEN $3 = 'pending' THEN sealed_text END
             FROM clock WHERE id = $2"
        ))
        .await
}

async fn finish_in_one_transaction(
    client: &ClientWrapper,
    now: Option<i64>,
    outcomes: &[(MessageId, AttemptOutcome)],
) -> Result<(), tokio_postgres::Error> {
    let statement = finish_statement(client).await?;
    if let [(id, outcome)] = outcomes {
        store_outcome(client, &statement, now, id, outcome).await?;
        return Ok(());
    }
    let updates = outcomes
        .iter()
        .map(|(id, outcome)| store_outcome(client, &statement, now, id, outcome));
    let (begun, updated, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        futures_util::future::join_all(updates),
        client.batch_execute("COMMIT"),
    );
    begun?;
    for result in updated {
        result?;
    }
    committed?;
    Ok(())
}

/// Each outcome in a transaction of its own. One the database refuses is logged with its
/// message id; the others are stored.
async fn finish_one_by_one(
    client: &ClientWrapper,
    now: Option<i64>,
    outcomes: &[(MessageId, AttemptOutcome)],
) -> Result<(), Failure> {
    // The batch's COMMIT ended its transaction, whatever failed in it; this makes sure.
    client.batch_execute("ROLLBACK").await?;
    let statement = finish_statement(client).await?;
    let mut refused = 0;
    let mut last_error = None;
    for (id, outcome) in outcomes {
        if let Err(error) = store_outcome(client, &statement, now, id, outcome).await {
            let error = super::describe(&error);
            tracing::error!(message_id = %id, %error, "cannot record a delivery attempt");
            refused += 1;
            last_error = Some(error);
        }
    }
    match last_error {
        None => Ok(()),
        Some(error) => Err(Failure::Database(format!(
            "{refused} of {} delivery outcomes were not stored: {error}",
            outcomes.len()
        ))),
    }
}

async fn store_outcome(
    client: &ClientWrapper,
    statement: &Statement,
    now: Option<i64>,
    id: &MessageId,
    outcome: &AttemptOutcome,
) -> Result<u64, tokio_postgres::Error> {
    let report = outcome.report();
    client
        .execute(
            statement,
            &[
                &now,
                &id.as_str(),
                &outcome.next_state().as_str(),
                &outcome.retry_after().map(millis),
                &report.status.as_str(),
                &i32::from(report.status_code),
                &report.status_message.as_str(),
                &report.message_id.as_ref().map(CarrierMessageId::as_str),
            ],
        )
        .await
}

/// Stores a receipt's state and time, unless the message already has a receipt in that state,
/// and says which (one statement: the `EXISTS` sees the rows as they were before the update).
pub(super) async fn record_receipt(
    client: &ClientWrapper,
    now: Option<i64>,
    receipt: &Receipt,
) -> Result<ReceiptStored, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "WITH updated AS (
                 UPDATE outbox SET receipt_state = $3, receipt_at = $4, updated_at = {NOW}
                 WHERE carrier_message_id = $2 AND receipt_state IS DISTINCT FROM $3
                 RETURNING 1)
             SELECT (SELECT count(*) FROM updated),
                    EXISTS (SELECT 1 FROM outbox WHERE carrier_message_id = $2)"
        ))
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &now,
                &receipt.carrier_message_id.as_str(),
                &receipt.state,
                &receipt.at.millis(),
            ],
        )
        .await?;
    let (updated, exists): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
    Ok(ReceiptStored::from_update(updated > 0, exists))
}

pub(super) async fn release_messages(
    client: &ClientWrapper,
    ids: &[MessageId],
) -> Result<u64, Failure> {
    let statement = client
        .prepare_cached(
            "UPDATE outbox SET lease_until = 0 WHERE id = ANY($1) AND state = 'pending'",
        )
        .await?;
    let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
    Ok(client.execute(&statement, &[&ids]).await?)
}

/// The columns `message_record` reads, in its order.
const MESSAGE_COLUMNS: &str = "id, verification_id, account_id, destination, sender, encoding, parts, state, \
     attempts, created_at, sent_at, delivery_status, status_message, carrier_message_id, \
     receipt_state, receipt_at, CASE WHEN state = 'pending' THEN next_attempt_at END";

pub(super) async fn find_message(
    client: &ClientWrapper,
    id: &MessageId,
) -> Result<Option<MessageRecord>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id = $1"
        ))
        .await?;
    client
        .query_opt(&statement, &[&id.as_str()])
        .await?
        .map(|row| message_record(&row))
        .transpose()
}

pub(super) async fn failed_messages(
    client: &ClientWrapper,
    count: usize,
) -> Result<Vec<MessageRecord>, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE state = 'failed'
             ORDER BY updated_at DESC LIMIT $1"
        ))
        .await?;
    client
        .query(&statement, &[&limit(count)])
        .await?
        .iter()
        .map(message_record)
        .collect()
}

fn message_record(row: &Row) -> Result<MessageRecord, Failure> {
    Ok(MessageRecord {
        id: parsed(row, 0, MessageId::parse)?,
        verify_id: parsed(row, 1, VerifyId::parse)?,
        account_id: parsed(row, 2, AccountId::parse)?,
        to: parsed(row, 3, |text| E164::parse(text).ok())?,
        from: row.try_get(4)?,
        encoding: parsed(row, 5, Encoding::parse)?,
        parts: counter(row, 6)?,
        state: parsed(row, 7, MessageState::parse)?,
        attempts: counter(row, 8)?,
        created_at: Timestamp(row.try_get(9)?),
        sent_at: optional_time(row, 10)?,
        delivery_status: row.try_get(11)?,
        status_message: row.try_get(12)?,
        carrier_message_id: row.try_get(13)?,
        receipt_state: row.try_get(14)?,
        receipt_at: optional_time(row, 15)?,
        next_attempt_at: optional_time(row, 16)?,
    })
}

pub(super) async fn outbox_backlog(
    client: &ClientWrapper,
    now: Option<i64>,
) -> Result<OutboxBacklog, Failure> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT COUNT(*), MIN(created_at), {NOW} FROM outbox WHERE state = 'pending'"
        ))
        .await?;
    let row = client.query_one(&statement, &[&now]).await?;
    let pending: i64 = row.try_get(0)?;
    let oldest: Option<i64> = row.try_get(1)?;
    Ok(OutboxBacklog::at(
        Timestamp(row.try_get(2)?),
        u64::try_from(pending).unwrap_or(0),
        oldest.map(Timestamp),
    ))
}

pub(super) async fn purge_verifications(
    client: &ClientWrapper,
    cutoff: Timestamp,
    count: usize,
) -> Result<u64, Failure> {
    let statement = client
        .prepare_cached(
            // SKIP LOCKED: every node runs the job; they share the work instead of queueing.
            // Checks and messages have no foreign key to their verification (migrations 9
            // and 10): they go here.
            "WITH gone AS (
                 DELETE FROM verifications WHERE id IN
                     (SELECT id FROM verifications WHERE created_at < $1
                      ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id
             ),
             checks_gone AS (
                 DELETE FROM checks WHERE verification_id IN (SELECT id FROM gone)
             ),
             messages_gone AS (
                 DELETE FROM outbox WHERE verification_id IN (SELECT id FROM gone)
             )
             SELECT count(*) FROM gone",
        )
        .await?;
    let purged: i64 = client
        .query_one(&statement, &[&cutoff.millis(), &limit(count)])
        .await?
        .try_get(0)?;
    Ok(u64::try_from(purged).unwrap_or(0))
}
