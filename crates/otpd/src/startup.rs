//! Building and running the server: `Application::build` binds the listener (port 0 works, for
//! tests), `run_until_stopped` serves until the shutdown future resolves, finishing in-flight
//! requests first.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use otpd_api::{ApiSettings, AppState};
use otpd_core::ports::{SmsTransport, Store};
use otpd_core::service::{AccountService, Limits, VerificationService};
use otpd_core::{ServerKey, SystemClock};
use otpd_sms::SmsComposer;
use otpd_sms::transport::TransportSpec;
use tokio::net::TcpListener;

use crate::CommandError;
use crate::cli::{GlobalOptions, ServeOptions};
use crate::config::{self, DatabaseLocation};

/// The parts a running otpd is made of.
pub struct Components {
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn SmsTransport>,
    pub key: ServerKey,
    pub limits: Limits,
    pub api: ApiSettings,
}

impl Components {
    pub fn state(self) -> AppState {
        let key = Arc::new(self.key);
        let accounts = AccountService::new(self.store.clone(), key.clone());
        let service = VerificationService::new(
            self.store,
            Arc::new(SmsComposer),
            self.transport,
            key,
            self.limits,
        );
        AppState {
            service,
            accounts,
            settings: Arc::new(self.api),
        }
    }
}

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(listen: SocketAddr, components: Components) -> anyhow::Result<Self> {
        otpd_core::E164::load_metadata();
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Ok(Self {
            listener,
            router: otpd_api::router(components.state()),
        })
    }

    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

/// `otpd serve`.
pub async fn serve(global: &GlobalOptions, options: ServeOptions) -> Result<(), CommandError> {
    let spec: TransportSpec = options
        .sms
        .parse()
        .map_err(|error: otpd_sms::transport::SpecError| CommandError::Usage(error.to_string()))?;
    let location = DatabaseLocation::from_options(global)?;
    let key = config::server_key(global)?;
    let store = location.open(Arc::new(SystemClock))?;
    let components = Components {
        store,
        transport: spec.build(),
        key,
        limits: Limits::default(),
        api: ApiSettings::default(),
    };
    let application = Application::build(options.listen, components).await?;
    let address = application
        .address()
        .context("cannot read the bound address")?;
    tracing::info!(%address, "otpd listening on http://{address}");
    application
        .run_until_stopped(shutdown_signal())
        .await
        .context("the server stopped with an error")?;
    tracing::info!("otpd stopped");
    Ok(())
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
