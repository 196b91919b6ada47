//! otpd: a self-hosted SMS one-time-password service.

use std::process::ExitCode;

use clap::Parser;
use otpd::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    otpd::run(cli).await
}
