//! `prune`: remove old snapshots that a newer snapshot of the same customer supersedes.

use std::process::ExitCode;

use clap::Args;

use super::settings::{DatabaseArgs, WaitArgs};
use super::{print_json, Failure};
use crate::store::Maintenance;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only events whose `created` is more than this many days ago are considered.
    #[arg(long, value_name = "DAYS")]
    older_than: u32,

    #[command(flatten)]
    wait: WaitArgs,
}

pub async fn run(database: &DatabaseArgs, args: PruneArgs) -> Result<ExitCode, Failure> {
    let store = database.open_migrated().await?;
    let _lock = args
        .wait
        .lock(&store, Maintenance::Rebuild, "prune")
        .await?;
    let older_than = chrono::Utc::now().timestamp() - i64::from(args.older_than) * 86_400;
    let removed = store
        .prune_superseded(older_than)
        .await
        .map_err(|e| Failure::runtime("prune failed", e))?;
    print_json(
        &serde_json::json!({ "removed_superseded_snapshots": removed, "created_before": older_than }),
    )?;
    Ok(ExitCode::SUCCESS)
}
