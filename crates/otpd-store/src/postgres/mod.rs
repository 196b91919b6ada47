//! The PostgreSQL store, for several otpd nodes sharing one database. Every rule that must
//! hold across nodes (attempt reservation, one live code per key, the anti-spam window, credit,
//! rate limits, outbox claims, expiry) is decided inside the database, under its locks and by
//! its clock.

mod group;
mod migrate;
mod queries;
mod scratch;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use otpd_core::account::{Account, AccountLimits, Application, NewAccount};
use otpd_core::outbox::{
    AttemptOutcome, MessageId, MessageRecord, OutboxBacklog, OutboxMessage, Receipt, ReceiptStored,
};
use otpd_core::ports::{CreateError, Store, StoreError};
use otpd_core::verification::{
    CancelOutcome, CheckAttempt, CheckLookup, CheckOutcome, CheckReport, NewVerification,
    SendGuards, SendRejected, Verification,
};
use otpd_core::{AccessKeyId, AccountId, ApplicationId, Clock, E164, Timestamp, VerifyId};
use tokio_postgres::error::SqlState;

use crate::failure::Failure;
use group::Group;

pub use group::GROUP_SIZE;
pub use scratch::{DEFAULT_TEST_SERVER, ScratchDatabase};

/// How long a request waits for a connection (or for a new one to open) before it is answered
/// with an error: a database that is down must not make clients hang.
const CONNECTION_WAIT: Duration = Duration::from_secs(3);
/// Server-side limits every session gets: no statement or lock wait runs away, and a session
/// that somehow stays inside a transaction is ended rather than holding its locks.
const SESSION_OPTIONS: &str = "-c statement_timeout=10000 -c lock_timeout=5000 \
                               -c idle_in_transaction_session_timeout=30000";

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            Self::Duplicate
        } else {
            Self::Database(describe(&error))
        }
    }
}

/// An error with its causes: tokio-postgres says only "db error" or "error connecting to
/// server" at the top and keeps the server's message or the socket error in its sources.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Wrappers often print their cause already.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What `PgStore::connect` needs.
#[derive(Clone)]
pub struct PgStoreOptions {
    /// A `postgres://` URL, with libpq's `sslmode` and `sslrootcert` for TLS (see `tls`);
    /// libpq's key=value form works too, with `sslmode=require` its only TLS setting.
    pub url: String,
    /// Connections this node keeps open at most.
    pub pool_size: usize,
    /// Where "now" comes from. `None`, the only sensible choice in production, uses the
    /// database's clock so that every node agrees; tests pass a clock they can move.
    pub clock: Option<Arc<dyn Clock>>,
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    clock: Option<Arc<dyn Clock>>,
    sends: Group<queries::CreateVerifications>,
    checks: Group<queries::Checks>,
}

impl PgStore {
    /// Opens a pool and brings the schema up to date (several nodes starting at once take
    /// turns: the migration holds an advisory lock).
    pub async fn connect(options: PgStoreOptions) -> Result<Self, StoreError> {
        let (mut config, connector) = tls::connection(&options.url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        let session_options = match config.get_options() {
            Some(own) => format!("{own} {SESSION_OPTIONS}"),
            None => SESSION_OPTIONS.to_owned(),
        };
        config
            .options(&session_options)
            .application_name("otpd")
            .connect_timeout(CONNECTION_WAIT)
            .keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_WAIT))
            .create_timeout(Some(CONNECTION_WAIT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the pool: {e}")))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        migrate::run(&mut client).await?;
        Ok(Self {
            sends: Group::start(pool.clone()),
            checks: Group::start(pool.clone()),
            pool,
            clock: options.clock,
        })
    }

    /// The time to pass to statements: `None` reads the database's clock.
    fn now(&self) -> Option<i64> {
        self.clock.as_ref().map(|clock| clock.now().millis())
    }

    /// Runs `work` with a pooled connection, on a task of its own: a client that hangs up
    /// mid-request must not cut a transaction short (and a check that reserved an attempt
    /// must record it).
    async fn with_client<T, F, Fut>(&self, work: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(Object, Option<i64>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let now = self.now();
        tokio::spawn(async move {
            let client = pool.get().await.map_err(pool_error)?;
            work(client, now).await
        })
        .await
        .map_err(|e| Failure::Database(format!("a store task failed: {e}")))?
    }

    /// A refused send with how long until there is room for it. The group answers refusals
    /// without it, so that only refused sends pay for the query; without it the refusal stands.
    async fn when_room_comes(
        &self,
        rejected: SendRejected,
        account_id: AccountId,
        destination: E164,
        guards: SendGuards,
    ) -> SendRejected {
        let wait = match rejected {
            SendRejected::TooManySends { .. } => {
                self.with_client(move |client, now| async move {
                    queries::wait_for_destination(&client, now, &account_id, &destination, guards)
                        .await
                })
                .await
            }
            SendRejected::HourlyLimit { .. } => {
                self.with_client(move |client, now| async move {
                    queries::wait_for_hourly_room(&client, now, &account_id, guards.charge).await
                })
                .await
            }
            SendRejected::NoCredit | SendRejected::UnknownAccount => return rejected,
        };
        let retry_after = wait.unwrap_or_else(|failure| {
            tracing::warn!(
                ?failure,
                "could not tell when a refused send would have room"
            );
            None
        });
        rejected.with_retry_after(retry_after)
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> Failure {
    Failure::Database(format!("no database connection: {}", describe(&error)))
}

#[async_trait]
impl Store for PgStore {
    async fn create_account(&self, account: NewAccount) -> Result<Account, StoreError> {
        Ok(self
            .with_client(move |client, now| async move {
                queries::insert_account(&client, now, &account).await
            })
            .await?)
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(self
            .with_client(|client, _| async move { queries::list_accounts(&client).await })
            .await?)
    }

    async fn find_account_by_key(&self, key: &AccessKeyId) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        Ok(self
            .with_client(move |client, _| async move {
                queries::find_account_by_key(&client, &key).await
            })
            .await?)
    }

    async fn delete_account(&self, key: &AccessKeyId) -> Result<bool, StoreError> {
        let key = key.clone();
        Ok(self
            .with_client(
                move |client, _| async move { queries::delete_account(&client, &key).await },
            )
            .await?)
    }

    async fn add_credits(
        &self,
        key: &AccessKeyId,
        credits: i64,
    ) -> Result<Option<Account>, StoreError> {
        let key = key.clone();
        Ok(self
            .with_client(move |client, _| async move {
                queries::add_credits(&client, &key, credits).await
            })
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
            .with_client(move |client, _| async move {
                queries::replace_secret(&client, &key, &sealed_secret, keep_previous_until).await
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
            .with_client(move |client, _| async move {
                queries::set_account_limits(&client, &key, &limits).await
            })
            .await?)
    }

    async fn sms_in_last_hour(&self) -> Result<HashMap<AccessKeyId, u64>, StoreError> {
        Ok(self
            .with_client(
                move |client, now| async move { queries::sms_in_last_hour(&client, now).await },
            )
            .await?)
    }

    async fn create_application(
        &self,
        application: Application,
    ) -> Result<Application, StoreError> {
        Ok(self
            .with_client(move |client, now| async move {
                queries::insert_application(&client, now, application).await
            })
            .await?)
    }

    async fn list_applications(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<Application>, StoreError> {
        let account = account.cloned();
        Ok(self
            .with_client(move |client, _| async move {
                queries::list_applications(&client, account.as_ref()).await
            })
            .await?)
    }

    async fn find_application(
        &self,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let id = id.clone();
        Ok(self
            .with_client(
                move |client, _| async move { queries::find_application(&client, &id).await },
            )
            .await?)
    }

    async fn delete_application(&self, id: &ApplicationId) -> Result<bool, StoreError> {
        let id = id.clone();
        Ok(self
            .with_client(
                move |client, _| async move { queries::delete_application(&client, &id).await },
            )
            .await?)
    }

    async fn create_verification(
        &self,
        verification: NewVerification,
        guards: SendGuards,
    ) -> Result<(), CreateError> {
        let account_id = verification.key.account_id.clone();
        let destination = verification.key.destination.clone();
        let request = queries::CreateRequest {
            now: self.now(),
            verification,
            guards,
        };
        match self.sends.run(request).await {
            Err(Failure::Rejected(rejected)) => Err(CreateError::Rejected(
                self.when_room_comes(rejected, account_id, destination, guards)
                    .await,
            )),
            other => Ok(other?),
        }
    }

    async fn check(
        &self,
        lookup: CheckLookup,
        attempt: CheckAttempt,
    ) -> Result<CheckReport, StoreError> {
        // Only a check with an address can be refused by the address's limit.
        let address = attempt
            .ip_limit
            .zip(attempt.client_ip.clone())
            .map(|(limit, ip)| (lookup.account_id().clone(), ip, limit));
        let mut report = queries::check(&self.checks, self.now(), lookup, &attempt).await?;
        if let (CheckOutcome::RateLimited, Some((account_id, ip, limit))) =
            (report.outcome, address)
        {
            // The group answers without the wait, so that only refused checks pay for it;
            // without it the refusal stands.
            let wait = self
                .with_client(move |client, now| async move {
                    queries::wait_for_address(&client, now, &account_id, &ip, limit).await
                })
                .await;
            report.retry_after = wait.unwrap_or_else(|failure| {
                tracing::warn!(?failure, "could not tell when an address may check again");
                None
            });
        }
        Ok(report)
    }

    async fn cancel(
        &self,
        account_id: &AccountId,
        id: &VerifyId,
    ) -> Result<CancelOutcome, StoreError> {
        let (account_id, id) = (account_id.clone(), id.clone());
        Ok(self
            .with_client(move |client, now| async move {
                queries::cancel(&client, now, &account_id, &id).await
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
            .with_client(move |client, now| async move {
                queries::find_verification(&client, now, &account_id, &id).await
            })
            .await?)
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        Ok(self
            .with_client(move |client, now| async move {
                queries::claim_outbox(&client, now, limit, lease).await
            })
            .await?)
    }

    async fn finish_attempts(
        &self,
        outcomes: Arc<[(MessageId, AttemptOutcome)]>,
    ) -> Result<(), StoreError> {
        Ok(self
            .with_client(move |client, now| queries::finish_attempts(client, now, outcomes))
            .await?)
    }

    async fn record_receipt(&self, receipt: Receipt) -> Result<ReceiptStored, StoreError> {
        Ok(self
            .with_client(move |client, now| async move {
                queries::record_receipt(&client, now, &receipt).await
            })
            .await?)
    }

    /// Nothing to do: other nodes may hold live claims, and a dead node's claims run out with
    /// their lease.
    async fn release_claims(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn release_messages(&self, ids: &[MessageId]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        Ok(self
            .with_client(
                move |client, _| async move { queries::release_messages(&client, &ids).await },
            )
            .await?)
    }

    async fn find_message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let id = id.clone();
        Ok(self
            .with_client(move |client, _| async move { queries::find_message(&client, &id).await })
            .await?)
    }

    async fn failed_messages(&self, limit: usize) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self
            .with_client(
                move |client, _| async move { queries::failed_messages(&client, limit).await },
            )
            .await?)
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        Ok(self
            .with_client(|client, now| async move { queries::outbox_backlog(&client, now).await })
            .await?)
    }

    async fn purge_verifications(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(self
            .with_client(move |client, _| async move {
                queries::purge_verifications(&client, cutoff, limit).await
            })
            .await?)
    }

    /// Closes the pool's idle connections now and each busy one when it is given back.
    async fn close(&self) {
        self.pool.close();
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self
            .with_client(|client, _| async move {
                client.simple_query("SELECT 1").await?;
                Ok(())
            })
            .await?)
    }
}
