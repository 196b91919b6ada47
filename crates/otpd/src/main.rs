//! otpd: a self-hosted SMS one-time-password service.

use std::process::ExitCode;

use clap::Parser;
use otpd::cli::Cli;

/// mimalloc rather than glibc's malloc: a request allocates and frees many small buffers across
/// threads, and glibc's bookkeeping for that took about 8% of a send's CPU. Built without
/// transparent huge pages, which doubled the peak RSS for no speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match otpd::runtime::build(cli.worker_threads()) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(otpd::run(cli))
}
