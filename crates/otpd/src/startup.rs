//! Building and running the server: `Application::build` binds the listener (port 0 works, for
//! tests), `run_until_stopped` serves until the shutdown future resolves, finishing in-flight
//! requests first.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use otpd_api::console::{ConsoleAccess, ConsolePassword, OPERATOR};
use otpd_api::metrics::Metrics;
use otpd_api::pinpoint::sigv4::SigningKeys;
use otpd_api::{ApiSettings, AppState, Shared};
use otpd_core::ports::{SmsTransport, Store};
use otpd_core::service::{AccountService, Limits, VerificationService};
use otpd_core::{ServerKey, SystemClock};
use otpd_sms::transport::{ConsoleStyle, TransportSpec};
use otpd_sms::{DispatchSettings, OutboxDispatcher, SmsComposer};
use tokio::net::TcpListener;

use crate::CommandError;
use crate::cli::{GlobalOptions, LogFormat, ServeOptions};
use crate::config::{self, DatabaseLocation};
use crate::http_server::{self, ConnectionLimits};
use crate::serve_lock::ServeLock;
use crate::tls::CurrentAcceptor;

/// The parts a running otpd is made of.
pub struct Components {
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn SmsTransport>,
    pub key: ServerKey,
    pub limits: Limits,
    pub api: ApiSettings,
    pub connections: ConnectionLimits,
    pub dispatch: DispatchSettings,
    /// How long verifications are kept.
    pub retention: Duration,
    /// The web console's operator password; `None` serves no console.
    pub console: Option<ConsolePassword>,
    /// HTTPS's certificate and key; `None` serves plain HTTP.
    pub tls: Option<CurrentAcceptor>,
}

impl Components {
    /// The HTTP state and the dispatcher that delivers what it sends.
    pub fn build(self) -> (AppState, OutboxDispatcher) {
        let key = Arc::new(self.key);
        let dispatcher = OutboxDispatcher::new(
            self.store.clone(),
            self.transport,
            key.clone(),
            self.dispatch,
        );
        let accounts = AccountService::new(self.store.clone(), key.clone());
        let service = VerificationService::new(
            self.store,
            Arc::new(SmsComposer),
            Arc::new(dispatcher.clone()),
            key,
            self.limits,
        );
        let state = AppState::new(Shared {
            service,
            accounts,
            settings: self.api,
            signing_keys: SigningKeys::default(),
            metrics: Metrics::install(),
            console: self.console.map(ConsoleAccess::new),
        });
        (state, dispatcher)
    }
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    connections: ConnectionLimits,
    tls: Option<CurrentAcceptor>,
    dispatcher: OutboxDispatcher,
    store: Arc<dyn Store>,
    retention: Duration,
}

impl Application {
    pub async fn build(listen: SocketAddr, components: Components) -> anyhow::Result<Self> {
        // libphonenumber's metadata takes a while to load: in the background, so that start-up
        // stays fast and the first send does not pay for it either.
        std::thread::spawn(otpd_core::E164::load_metadata);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let (store, retention) = (components.store.clone(), components.retention);
        let connections = components.connections;
        let tls = components.tls.clone();
        let (state, dispatcher) = components.build();
        Ok(Self {
            listener,
            router: otpd_api::router(state),
            connections,
            tls,
            dispatcher,
            store,
            retention,
        })
    }

    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` resolves: then stops accepting, finishes the requests in flight,
    /// and stops the dispatcher, which leaves undelivered messages in the outbox.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            }
        };
        let dispatcher = tokio::spawn(self.dispatcher.run(until_stopped()));
        let retention = tokio::spawn(crate::retention::run(
            self.store,
            self.retention,
            until_stopped(),
        ));
        http_server::serve(
            self.listener,
            self.router,
            self.connections,
            self.tls,
            shutdown,
        )
        .await;
        let _ = stop.send(true);
        if let Err(error) = dispatcher.await {
            tracing::error!(%error, "the dispatcher stopped abnormally");
        }
        let _ = retention.await;
    }
}

/// `otpd serve`.
pub async fn serve(global: &GlobalOptions, options: ServeOptions) -> Result<(), CommandError> {
    let spec: TransportSpec = options
        .sms
        .parse()
        .map_err(|error: otpd_sms::transport::SpecError| CommandError::Usage(error.to_string()))?;
    // Before the store starts its threads, so that the help text of their metrics is recorded.
    let _installed = Metrics::install();
    let location = DatabaseLocation::from_options(global)?;
    // Held until serving ends: one server per SQLite database (see `serve_lock`).
    let _serving = location.sqlite_path().map(ServeLock::acquire).transpose()?;
    let key = config::server_key(global)?;
    let console = config::console_password(global, &options)?;
    let tls = match (&options.tls_cert_file, &options.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            crate::tls::reloaded_on_hangup(cert.clone(), key.clone())
                .map_err(|error| CommandError::Usage(error.to_string()))?,
        ),
        // clap requires both or neither.
        _ => {
            crate::hangup::on_hangup(|| {
                tracing::info!("SIGHUP: nothing to read again (otpd serves plain HTTP)");
            });
            None
        }
    };
    let store = location.open(Arc::new(SystemClock)).await?;
    let served = serve_on(&store, &location, spec, key, console, tls, options).await;
    // Also when serving could not start (its address taken, say): the database is left whole.
    store.close().await;
    if served.is_ok() {
        tracing::info!("otpd stopped");
    }
    served
}

/// Serves on the open store until a signal stops it.
async fn serve_on(
    store: &Arc<dyn Store>,
    location: &DatabaseLocation,
    spec: TransportSpec,
    key: ServerKey,
    console: Option<(ConsolePassword, PathBuf)>,
    tls: Option<CurrentAcceptor>,
    options: ServeOptions,
) -> Result<(), CommandError> {
    if location.is_single_process() {
        // Claims left by a process that died mid-send: nobody else can hold them.
        let released = store
            .release_claims()
            .await
            .context("cannot read the outbox")?;
        if released > 0 {
            tracing::info!(
                released,
                "picked up messages an earlier run left undelivered"
            );
        }
    }
    let client_timeout = Duration::from_secs(u64::from(options.client_timeout_seconds));
    let open_file_limit = http_server::raise_open_file_limit();
    let max_connections =
        http_server::connections_within(options.max_connections as usize, open_file_limit);
    if max_connections < options.max_connections as usize {
        tracing::warn!(
            max_connections,
            open_file_limit,
            "the open files limit holds fewer connections than --max-connections asks for"
        );
    }
    let components = Components {
        store: store.clone(),
        transport: spec
            .build(
                options.sms_http_header.as_deref(),
                console_style(options.log_format),
                store.clone(),
            )
            .map_err(|error| CommandError::Usage(error.to_string()))?,
        key,
        limits: Limits {
            destinations: options.sms_countries.clone().unwrap_or_default(),
            ..Limits::default()
        },
        api: ApiSettings {
            body_deadline: client_timeout,
            ..ApiSettings::default()
        },
        connections: ConnectionLimits {
            header_timeout: client_timeout,
            max_connections,
        },
        dispatch: DispatchSettings {
            lease: Duration::from_secs(u64::from(options.outbox_lease_seconds)),
            ..DispatchSettings::default()
        },
        retention: Duration::from_secs(u64::from(options.retention_days) * 24 * 3600),
        console: console.as_ref().map(|(password, _)| password.clone()),
        tls,
    };
    warn_of_a_development_sink(&spec);
    if let Some(countries) = &options.sms_countries {
        tracing::info!(%countries, "SMS go only to numbers of these countries");
    }
    let application = Application::build(options.listen, components).await?;
    let address = application
        .address()
        .context("cannot read the bound address")?;
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    let scheme = application.scheme();
    tracing::info!(%address, worker_threads, "otpd listening on {scheme}://{address}");
    if let Some((_, file)) = &console {
        tracing::info!(
            "web console at {scheme}://{address}/console: user {OPERATOR}, the password in {}",
            file.display()
        );
    }
    application.run_until_stopped(shutdown_signal()).await;
    Ok(())
}

/// The console and file sinks keep every code and phone number where the operator's log and
/// files are: right for development, a leak in production, and the console is the default.
fn warn_of_a_development_sink(spec: &TransportSpec) {
    match spec {
        TransportSpec::Console => tracing::warn!(
            "SMS are printed on standard error, codes and phone numbers included, and reach no \
             phone: for development only; give --sms an smpp:// or https:// provider"
        ),
        TransportSpec::File(path) => tracing::warn!(
            path = %path.display(),
            "SMS are written to a file, codes and phone numbers included, and reach no phone: \
             for tests and demos only; give --sms an smpp:// or https:// provider"
        ),
        TransportSpec::Http(_) | TransportSpec::Smpp(_) => {}
    }
}

/// The console sink prints messages on standard error beside the log, in the log's format.
fn console_style(log_format: LogFormat) -> ConsoleStyle {
    match log_format {
        LogFormat::Text => ConsoleStyle::Text,
        LogFormat::Json => ConsoleStyle::Json,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
