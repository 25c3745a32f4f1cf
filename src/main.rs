//! The `stripe-projector` binary: parse the command line, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use stripe_projector::cli::{self, Cli, Failure};

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
