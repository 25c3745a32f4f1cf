//! The command line: one module per command, each a thin layer over the library.

mod ensure;
mod exit;
mod explain;
mod import;
mod lookup;
mod migrate;
mod prune;
mod replay;
mod send;
mod serve;
mod settings;
mod status;
mod sync;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

pub use exit::{usage_error, Failure};
use settings::DatabaseArgs;

#[derive(Debug, Parser)]
#[command(
    name = "stripe-projector",
    version,
    about = "Stripe Connect customer read model: verified webhooks -> event log -> (account, livemode, email) lookups",
    after_help = "Secrets are read from the environment only: STRIPE_WEBHOOK_SECRET (comma-separated \
                  whsec_... values), READ_API_TOKEN, ENSURE_API_TOKEN and STRIPE_SECRET_KEY. \
                  POST /v1/customers/ensure needs ENSURE_API_TOKEN as a bearer token when it is \
                  set (READ_API_TOKEN does not grant it); when it is unset, ensure answers \
                  loopback clients only, and `serve` refuses to listen beyond loopback with \
                  STRIPE_SECRET_KEY set."
)]
pub struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,

    /// Log format on stderr.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate, then serve HTTP until SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Apply migrations and exit.
    Migrate,
    /// Print checkout's answer as JSON. Exit 0 found, 1 not found, 3 ambiguous livemode.
    Lookup(lookup::LookupArgs),
    /// Checkout's get-or-create: print the customer as JSON, creating it through Stripe
    /// (STRIPE_SECRET_KEY) on the account when the read model has none.
    Ensure(ensure::EnsureArgs),
    /// Why checkout gets the customer it gets: every customer of the account that holds
    /// or held the email, with the records that decided its state. Table, or --json.
    Explain(explain::ExplainArgs),
    /// Print counts as JSON: events, customers, projection position and errors.
    Status,
    /// Rebuild the customer table from the event log and swap it in atomically.
    Replay(replay::ReplayArgs),
    /// Append events from Stripe event exports (list object, array, one event or JSON
    /// Lines; `-` is stdin). Exit 0 when none was rejected, 1 otherwise, 2 unreadable.
    Import(import::ImportArgs),
    /// Remove old snapshots that a newer snapshot of the same customer supersedes.
    Prune(prune::PruneArgs),
    /// Sign event files like Stripe does (with the first of STRIPE_WEBHOOK_SECRET) and
    /// POST them to a running server.
    Send(send::SendArgs),
    /// Record every live customer Stripe has on these accounts, as snapshots; resumable.
    /// Exit 0 all accounts done, 1 some failed or were stopped, 2 usage.
    Backfill(sync::BackfillArgs),
    /// Handle the customer.* events Stripe still keeps (30 days) for these accounts as
    /// deliveries. Exit 0 all accounts done, 1 some failed or were stopped, 2 usage.
    CatchUp(sync::CatchUpArgs),
}

pub async fn run(cli: Cli) -> ExitCode {
    let database = &cli.database;
    let result = match cli.command {
        Command::Serve(args) => serve::run(database, args).await,
        Command::Migrate => migrate::run(database).await,
        Command::Lookup(args) => lookup::run(database, args).await,
        Command::Ensure(args) => ensure::run(database, args).await,
        Command::Explain(args) => explain::run(database, args).await,
        Command::Status => status::run(database).await,
        Command::Replay(args) => replay::run(database, args).await,
        Command::Import(args) => import::run(database, args).await,
        Command::Prune(args) => prune::run(database, args).await,
        Command::Send(args) => send::run(args).await,
        Command::Backfill(args) => sync::backfill(database, args).await,
        Command::CatchUp(args) => sync::catch_up(database, args).await,
    };
    result.unwrap_or_else(Failure::report)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure::runtime("cannot print", e))?;
    println!("{text}");
    Ok(())
}

/// Reads a file, or standard input for `-`, before any work starts. Unreadable input is
/// a usage error (exit 2).
fn read_input(path: &str) -> Result<Vec<u8>, Failure> {
    let read = if path == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| Failure::Usage(format!("cannot read {path}: {e}")))
}
