//! The otpd binary's library half: command line, configuration, startup and shutdown, so that
//! tests can build and run the real application.

pub mod admin;
pub mod cli;
pub mod config;
mod hangup;
pub mod http_server;
pub mod retention;
pub mod runtime;
mod serve_lock;
pub mod startup;
pub mod telemetry;
pub mod tls;

use std::process::ExitCode;

use cli::{Cli, Command};

/// An error a command reports on one line. `Usage` errors exit with 2, like clap's own.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(options) => {
            // Held until serving ends, so the last lines are written before exit.
            let _log_writer = telemetry::init(options.log_format);
            startup::serve(&cli.global, options).await
        }
        Command::Accounts(command) => admin::accounts(&cli.global, command).await,
        Command::Apps(command) => admin::apps(&cli.global, command).await,
        Command::Credits(command) => admin::credits(&cli.global, command).await,
        Command::Messages(command) => admin::messages(&cli.global, command).await,
        Command::Backup { file } => admin::backup(&cli.global, &file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CommandError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CommandError::Failed(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
