//! `replay`: rebuild the customer table from the event log, or verify it.

use std::process::ExitCode;

use clap::Args;

use super::settings::{DatabaseArgs, WaitArgs};
use super::Failure;
use crate::replay::{self, Progress};
use crate::store::{Maintenance, RebuildKind};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Rebuild aside and compare with the live table; print differences, change nothing.
    /// Exit 1 when they differ.
    #[arg(long)]
    verify: bool,

    #[command(flatten)]
    wait: WaitArgs,
}

pub async fn run(database: &DatabaseArgs, args: ReplayArgs) -> Result<ExitCode, Failure> {
    let store = database.open_migrated().await?;
    let command = if args.verify {
        "replay --verify"
    } else {
        "replay"
    };
    let _lock = args
        .wait
        .lock(&store, Maintenance::Rebuild, command)
        .await?;
    let kind = if args.verify {
        RebuildKind::Verify
    } else {
        RebuildKind::Replace
    };
    let bar = ProgressBar::on_terminal();
    let report = replay::rebuild(&store, kind, &bar)
        .await
        .map_err(|e| Failure::runtime("replay failed", e))?;
    let seconds = report.elapsed.as_secs_f64();
    if args.verify {
        for difference in &report.differences {
            println!("{difference}");
        }
        let differing = report.differences.len();
        println!(
            "verified {} events in {seconds:.2} s: {differing} customers differ",
            report.events
        );
        return Ok(if differing == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let counts = store
        .customer_counts()
        .await
        .map_err(|e| Failure::runtime("cannot count customers", e))?;
    println!(
        "replayed {} events into {} customers ({} deleted) in {seconds:.2} s",
        report.events, counts.customers, counts.deleted_customers
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn on_terminal() -> Self {
        use std::io::IsTerminal;
        Self(
            std::io::stderr()
                .is_terminal()
                .then(indicatif::ProgressBar::hidden),
        )
    }
}

impl Progress for ProgressBar {
    fn start(&self, total_events: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total_events);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn advance(&self, events: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(events);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
