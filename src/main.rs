//! The `stripe-projector` binary: parse the command line, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use stripe_projector::cli::{self, Cli, Failure};

/// Every request allocates and frees many small blocks across worker threads, and glibc's
/// allocator spent a large share of the server's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cli::usage_error(error),
    };
    stripe_projector::telemetry::init(cli.log_format);
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(cli::run(cli)),
        Err(error) => Failure::Runtime(format!("cannot start the async runtime: {error}")).report(),
    }
}
