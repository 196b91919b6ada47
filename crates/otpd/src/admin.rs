//! The admin commands: accounts, applications, credit, messages and backups, printing JSON on
//! stdout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otpd_core::account::{Account, Application, Name, SmsPerHour};
use otpd_core::countries::{Country, DestinationCountries};
use otpd_core::outbox::MessageId;
use otpd_core::ports::{Store, StoreError};
use otpd_core::service::{AccountService, NewCredentials};
use otpd_core::sms::Sender;
use otpd_core::{AccessKeyId, ApplicationId, Clock, SystemClock};
use otpd_store::BackupError;
use serde_json::{Value, json};

use crate::CommandError;
use crate::cli::{AccountsCommand, AppsCommand, CreditsCommand, GlobalOptions, MessagesCommand};
use crate::config::{self, DatabaseLocation};

/// Opens the store, runs `command` on it and closes it whatever the outcome, so that a SQLite
/// database is left without its write-ahead log beside it.
async fn on_store(
    global: &GlobalOptions,
    command: impl AsyncFnOnce(&Arc<dyn Store>) -> Result<(), CommandError>,
) -> Result<(), CommandError> {
    let store = DatabaseLocation::from_options(global)?
        .open(Arc::new(SystemClock))
        .await?;
    let outcome = command(&store).await;
    store.close().await;
    outcome
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn failed(error: StoreError) -> CommandError {
    CommandError::Failed(anyhow::Error::new(error))
}

fn access_key(text: &str) -> Result<AccessKeyId, CommandError> {
    AccessKeyId::parse(text)
        .ok_or_else(|| CommandError::Usage(format!("{text:?} is not an access key id")))
}

async fn account_by_key(store: &Arc<dyn Store>, text: &str) -> Result<Account, CommandError> {
    let key = access_key(text)?;
    store
        .find_account_by_key(&key)
        .await
        .map_err(failed)?
        .ok_or_else(|| no_account(text))
}

fn no_account(access_key_id: &str) -> CommandError {
    CommandError::Usage(format!("no account has the access key id {access_key_id}"))
}

fn account_json(account: &Account) -> Value {
    json!({
        "account_id": account.id.as_str(),
        "name": account.name,
        "access_key_id": account.access_key_id.as_str(),
        "credits": account.credits,
        "default_sender": account.default_sender,
        "max_sms_per_hour": account.limits.sms_per_hour.map(SmsPerHour::get),
        // `null` for any country.
        "countries": match &account.limits.countries {
            DestinationCountries::Any => None,
            DestinationCountries::Only(countries) => {
                Some(countries.iter().map(Country::as_str).collect::<Vec<_>>())
            }
        },
        "created_at": account.created_at.millis(),
        // While a rotation's old secret is still accepted.
        "previous_secret_valid_until": account
            .previous_secret
            .as_ref()
            .filter(|previous| previous.accepted_at(SystemClock.now()))
            .map(|previous| previous.until.millis()),
    })
}

/// An account, and for one with an hourly limit the SMS parts counted against it in the last
/// hour (`sms_in_last_hour`, the store's count of every account's).
fn with_hourly_usage(account: &Account, sms_in_last_hour: &HashMap<AccessKeyId, u64>) -> Value {
    let mut value = account_json(account);
    if account.limits.sms_per_hour.is_some() {
        let sent = sms_in_last_hour.get(&account.access_key_id);
        value["sms_in_last_hour"] = json!(sent.copied().unwrap_or(0));
    }
    value
}

/// An account with the one copy of its new secret anyone will see.
fn credentials_json(credentials: &NewCredentials) -> Value {
    let mut value = account_json(&credentials.account);
    value["secret_access_key"] = json!(credentials.secret_access_key.expose());
    value
}

fn application_json(application: &Application) -> Value {
    json!({
        "application_id": application.id.as_str(),
        "account_id": application.account_id.as_str(),
        "name": application.name,
        "created_at": application.created_at.millis(),
    })
}

pub async fn accounts(
    global: &GlobalOptions,
    command: AccountsCommand,
) -> Result<(), CommandError> {
    on_store(global, async |store| {
        match command {
            AccountsCommand::Create {
                name,
                credits,
                sender,
                limits,
            } => {
                let name = Name::parse(&name).ok_or_else(|| {
                    CommandError::Usage("an account name is 1 to 64 characters".into())
                })?;
                if credits.is_some_and(|credits| credits < 0) {
                    return Err(CommandError::Usage("--credits cannot be negative".into()));
                }
                let sender = sender
                    .map(|sender| {
                        Sender::parse(&sender).ok_or_else(|| {
                            CommandError::Usage(format!(
                                "{sender:?} is not a sender: use a phone number, a short code or up to 11 letters and digits"
                            ))
                        })
                    })
                    .transpose()?;
                let key = config::server_key(global)?;
                let created = AccountService::new(store.clone(), Arc::new(key))
                    .create_account(
                        name,
                        credits,
                        sender,
                        limits.change().applied_to(&Default::default()),
                    )
                    .await
                    .map_err(failed)?;
                print(&credentials_json(&created));
            }
            AccountsCommand::List => {
                let accounts = store.list_accounts().await.map_err(failed)?;
                let sent = store.sms_in_last_hour().await.map_err(failed)?;
                let listed = accounts
                    .iter()
                    .map(|account| with_hourly_usage(account, &sent))
                    .collect();
                print(&Value::Array(listed));
            }
            AccountsCommand::RotateSecret {
                access_key_id,
                keep_old_minutes,
            } => {
                let key = access_key(&access_key_id)?;
                let server_key = config::server_key(global)?;
                let keep_old_for =
                    keep_old_minutes.map(|minutes| Duration::from_secs(u64::from(minutes) * 60));
                let rotated = AccountService::new(store.clone(), Arc::new(server_key))
                    .rotate_secret(&key, keep_old_for)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| no_account(&access_key_id))?;
                print(&credentials_json(&rotated));
            }
            AccountsCommand::Limit {
                access_key_id,
                limits,
            } => {
                let change = limits.change();
                if change.is_empty() {
                    return Err(CommandError::Usage(
                        "name a limit to change: --max-sms-per-hour or --countries".into(),
                    ));
                }
                let account = account_by_key(store, &access_key_id).await?;
                let limits = change.applied_to(&account.limits);
                let changed = store
                    .set_account_limits(&account.access_key_id, &limits)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| no_account(&access_key_id))?;
                let sent = store.sms_in_last_hour().await.map_err(failed)?;
                print(&with_hourly_usage(&changed, &sent));
            }
            AccountsCommand::Delete { access_key_id } => {
                let key = access_key(&access_key_id)?;
                if !store.delete_account(&key).await.map_err(failed)? {
                    return Err(no_account(&access_key_id));
                }
                print(&json!({"deleted": access_key_id}));
            }
        }
        Ok(())
    })
    .await
}

pub async fn apps(global: &GlobalOptions, command: AppsCommand) -> Result<(), CommandError> {
    on_store(global, async |store| {
        match command {
            AppsCommand::Create { account, name } => {
                let account = account_by_key(store, &account).await?;
                let name = Name::parse(&name).ok_or_else(|| {
                    CommandError::Usage("an application name is 1 to 64 characters".into())
                })?;
                let application = store
                    .create_application(Application::new(account.id, name, Default::default()))
                    .await
                    .map_err(failed)?;
                print(&application_json(&application));
            }
            AppsCommand::List { account } => {
                let account = match account {
                    Some(key) => Some(account_by_key(store, &key).await?),
                    None => None,
                };
                let applications = store
                    .list_applications(account.as_ref().map(|account| &account.id))
                    .await
                    .map_err(failed)?;
                print(&Value::Array(
                    applications.iter().map(application_json).collect(),
                ));
            }
            AppsCommand::Delete { application_id } => {
                let id = ApplicationId::parse(&application_id).ok_or_else(|| {
                    CommandError::Usage(format!("{application_id:?} is not an application id"))
                })?;
                if !store.delete_application(&id).await.map_err(failed)? {
                    return Err(CommandError::Usage(format!(
                        "no application has the id {application_id}"
                    )));
                }
                print(&json!({"deleted": application_id}));
            }
        }
        Ok(())
    })
    .await
}

pub async fn credits(global: &GlobalOptions, command: CreditsCommand) -> Result<(), CommandError> {
    on_store(global, async |store| {
        match command {
            CreditsCommand::Add {
                access_key_id,
                credits,
            } => {
                let key = access_key(&access_key_id)?;
                let account = store
                    .add_credits(&key, credits)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| no_account(&access_key_id))?;
                print(&account_json(&account));
            }
        }
        Ok(())
    })
    .await
}

pub async fn messages(
    global: &GlobalOptions,
    command: MessagesCommand,
) -> Result<(), CommandError> {
    on_store(global, async |store| {
        match command {
            MessagesCommand::Show { message_id } => {
                let id = MessageId::parse(&message_id).ok_or_else(|| {
                    CommandError::Usage(format!("{message_id:?} is not a message id"))
                })?;
                let message = store
                    .find_message(&id)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| {
                        CommandError::Usage(format!("no message has the id {message_id}"))
                    })?;
                print(&json!({
                    "message_id": message.id.as_str(),
                    "verify_id": message.verify_id.as_str(),
                    "account_id": message.account_id.as_str(),
                    "to": message.to.as_str(),
                    "from": message.from,
                    "encoding": message.encoding.as_str(),
                    "parts": message.parts,
                    "state": message.state.as_str(),
                    "attempts": message.attempts,
                    "created_at": message.created_at.millis(),
                    "sent_at": message.sent_at.map(|at| at.millis()),
                    "delivery_status": message.delivery_status,
                    "status_message": message.status_message,
                    "carrier_message_id": message.carrier_message_id,
                    "receipt_state": message.receipt_state,
                    "receipt_at": message.receipt_at.map(|at| at.millis()),
                    "next_attempt_at": message.next_attempt_at.map(|at| at.millis()),
                }));
            }
        }
        Ok(())
    })
    .await
}

/// `otpd backup FILE`: SQLite only; PostgreSQL has its own tools.
pub fn backup(global: &GlobalOptions, file: &Path) -> Result<(), CommandError> {
    let location = DatabaseLocation::from_options(global)?;
    let Some(database) = location.sqlite_path() else {
        return Err(CommandError::Usage(
            "otpd backup copies a SQLite database: back up PostgreSQL with pg_dump".into(),
        ));
    };
    let bytes = otpd_store::back_up_sqlite(database, file).map_err(|error| match error {
        BackupError::TargetExists(_)
        | BackupError::NoDatabase(_)
        | BackupError::UnusablePath(_)
        | BackupError::NoDirectory(_) => CommandError::Usage(error.to_string()),
        BackupError::Source { .. } | BackupError::Target { .. } => {
            CommandError::Failed(anyhow::Error::new(error))
        }
    })?;
    print(&json!({
        "backup": file.display().to_string(),
        "bytes": bytes,
        "database": database.display().to_string(),
        // The copy's digests and sealed secrets open only with this key.
        "server_key_file": config::server_key_path(global).display().to_string(),
    }));
    Ok(())
}
