//! The command line: a contract that tests and docs rely on (see DESIGN.md).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use otpd_core::account::{LimitsChange, SmsPerHour};
use otpd_core::countries::DestinationCountries;
use otpd_sms::DispatchSettings;

use crate::http_server::ConnectionLimits;

#[derive(Debug, Parser)]
#[command(
    name = "otpd",
    version,
    about = "A self-hosted SMS one-time-password service"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The threads `serve` was told to use; the other commands take the default.
    pub fn worker_threads(&self) -> Option<NonZeroUsize> {
        match &self.command {
            Command::Serve(options) => options
                .worker_threads
                .and_then(|threads| NonZeroUsize::new(usize::from(threads))),
            _ => None,
        }
    }
}

/// Where otpd keeps its state; every command needs these.
#[derive(Debug, Clone, Args)]
pub struct GlobalOptions {
    /// Directory for the SQLite database and the generated server key.
    #[arg(
        long,
        env = "OTPD_DATA_DIR",
        default_value = "./otpd-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` (default: DATA_DIR/otpd.db), or `postgres://USER:PASSWORD@HOST/DB` for
    /// several nodes sharing one database.
    #[arg(long, env = "OTPD_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL connections this process keeps open at most.
    #[arg(long, env = "OTPD_DATABASE_POOL_SIZE", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub database_pool_size: usize,
    /// A file holding the 64-hex-character server key (default: DATA_DIR/server.key, generated on
    /// first use).
    #[arg(long, env = "OTPD_SERVER_KEY_FILE", global = true)]
    pub server_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeOptions),
    /// Manage accounts (API credentials).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage Pinpoint applications.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage account credit.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Look at SMS messages and their delivery.
    #[command(subcommand)]
    Messages(MessagesCommand),
    /// Copy the SQLite database to a new file, consistently, while otpd serves from it; prints
    /// the copy as JSON. Keep the server key file with it: without that key the copy's codes
    /// and secrets cannot be used.
    Backup {
        /// The new file (it must not exist).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Print one message's delivery record as JSON (never its text, which holds the code).
    Show { message_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "OTPD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve HTTPS with the certificate chain in this PEM file (the server's certificate
    /// first), and the key of --tls-key-file. Without them otpd serves plain HTTP: keep it on
    /// a loopback or private link, or behind a proxy that speaks TLS.
    #[arg(long, env = "OTPD_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM file with the private key of --tls-cert-file's certificate. SIGHUP reads both
    /// files again (a renewed certificate); if they cannot be used, the old pair stays.
    #[arg(long, env = "OTPD_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Where SMS go: `console`, `file:PATH`, or an `http(s)://` provider URL.
    #[arg(long, env = "OTPD_SMS", default_value = "console")]
    pub sms: String,
    /// Countries codes may be texted to, as ISO 3166 codes (`IT,DE,GB`): a send to a number of
    /// any other country is refused (amm `BAD_TO`, Pinpoint `BadRequestException`) before
    /// anything is stored, charged or sent. The first defence against SMS pumping. Default:
    /// every country.
    #[arg(long, env = "OTPD_SMS_COUNTRIES", value_parser = DestinationCountries::parse_list)]
    pub sms_countries: Option<DestinationCountries>,
    /// An extra header for the HTTP provider, as `Name: value` (a token, say).
    #[arg(long, env = "OTPD_SMS_HTTP_HEADER")]
    pub sms_http_header: Option<String>,
    /// Days verifications (with their checks and messages) are kept before the retention job
    /// deletes them.
    #[arg(long, env = "OTPD_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub retention_days: u32,
    /// Seconds a node holds a message it is sending before another node may take it over: how
    /// long a node that dies mid-send delays its messages on a shared PostgreSQL database.
    /// Keep it above the slowest hand-over to the SMS network.
    #[arg(long, env = "OTPD_OUTBOX_LEASE_SECONDS", default_value_t = DispatchSettings::DEFAULT_LEASE_SECONDS, value_parser = clap::value_parser!(u32).range(5..=3600))]
    pub outbox_lease_seconds: u32,
    /// Seconds a client has to send a request's headers (from connecting, or from the previous
    /// response: an idle keep-alive connection is closed then too), and again its body.
    #[arg(long, env = "OTPD_CLIENT_TIMEOUT_SECONDS", default_value_t = ConnectionLimits::DEFAULT_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub client_timeout_seconds: u32,
    /// Connections served at once; at the limit, new clients wait to be accepted. Lowered to fit
    /// the open files limit (raised to its hard limit at start) if that holds fewer.
    #[arg(long, env = "OTPD_MAX_CONNECTIONS", default_value_t = ConnectionLimits::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Threads serving requests (default: one per core the process may use). With 1, otpd runs
    /// on a single-threaded scheduler, which costs less per request on one core.
    #[arg(long, env = "OTPD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Log format.
    #[arg(long, env = "OTPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A file holding the web console's operator password, at least 16 characters (default:
    /// DATA_DIR/console.password, generated on first use).
    #[arg(long, env = "OTPD_CONSOLE_PASSWORD_FILE")]
    pub console_password_file: Option<PathBuf>,
    /// Serve no web console.
    #[arg(long, env = "OTPD_NO_CONSOLE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub no_console: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account; prints its id and credentials as JSON (the secret is shown only once).
    Create {
        name: String,
        /// SMS parts the account may send; without it the account has no credit limit.
        #[arg(long, allow_negative_numbers = true)]
        credits: Option<i64>,
        /// The sender used when a request names none (amm `from`).
        #[arg(long)]
        sender: Option<String>,
        #[command(flatten)]
        limits: LimitOptions,
    },
    /// List accounts as JSON (never their secrets).
    List,
    /// Change an account's own limits; prints the account as JSON. Options left out stay as
    /// they are.
    Limit {
        access_key_id: String,
        #[command(flatten)]
        limits: LimitOptions,
    },
    /// Give an account a new secret access key in place of the old one; prints it as JSON
    /// (shown only once). The access key id, applications and codes stay.
    RotateSecret {
        access_key_id: String,
        /// Minutes the old secret is still accepted beside the new one, so that clients can
        /// move over without an outage (at most a week). Without it, the old secret, and any an
        /// earlier rotation kept, stop working within two seconds on every node.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=7 * 24 * 60))]
        keep_old_minutes: Option<u32>,
    },
    /// Delete an account with its applications and verifications.
    Delete { access_key_id: String },
}

/// An account's own limits, within the server's. Each is left as it is (or, for a new
/// account, unlimited) when not given.
#[derive(Debug, Args)]
pub struct LimitOptions {
    /// SMS parts the account may send in any 60 minutes, or `none`: a cap on what an abused
    /// sign-up form or a leaked key can spend before someone looks.
    #[arg(long, value_name = "N|none", value_parser = sms_per_hour)]
    pub max_sms_per_hour: Option<HourlyLimit>,
    /// The countries the account's codes may be texted to, as ISO 3166 codes (`IT,DE`), or
    /// `any`; never wider than the server's `--sms-countries`.
    #[arg(long, value_name = "LIST|any", value_parser = countries)]
    pub countries: Option<DestinationCountries>,
}

impl LimitOptions {
    pub fn change(self) -> LimitsChange {
        LimitsChange {
            sms_per_hour: self.max_sms_per_hour.map(|limit| limit.0),
            countries: self.countries,
        }
    }
}

/// `--max-sms-per-hour`: a limit, or `None` for none.
#[derive(Debug, Clone, Copy)]
pub struct HourlyLimit(Option<SmsPerHour>);

fn sms_per_hour(text: &str) -> Result<HourlyLimit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(HourlyLimit(None));
    }
    text.parse()
        .ok()
        .and_then(SmsPerHour::new)
        .map(|limit| HourlyLimit(Some(limit)))
        .ok_or_else(|| format!("use a number from 1 to {} or none", SmsPerHour::MAX))
}

/// `--countries`: a list, or `any`.
fn countries(text: &str) -> Result<DestinationCountries, String> {
    if text.trim().eq_ignore_ascii_case("any") {
        return Ok(DestinationCountries::Any);
    }
    DestinationCountries::parse_list(text).map_err(|error| error.to_string())
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create a Pinpoint application; prints its application_id as JSON.
    Create {
        /// The owning account's access key id.
        #[arg(long)]
        account: String,
        name: String,
    },
    /// List applications as JSON, optionally of one account.
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Delete an application.
    Delete { application_id: String },
}

#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Add N credits (SMS parts) to an account; N may be negative.
    Add {
        access_key_id: String,
        #[arg(allow_negative_numbers = true)]
        credits: i64,
    },
}
