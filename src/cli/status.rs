//! `status`: counts as JSON, and where each account's backfill stands.

use std::process::ExitCode;

use serde::Serialize;

use super::settings::DatabaseArgs;
use super::Failure;
use crate::store::{BackfillPass, Status};

/// The store's counts, then one entry per backfilled (account, mode).
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    status: Status,
    backfill: Vec<BackfillPass>,
}

pub async fn run(database: &DatabaseArgs) -> Result<ExitCode, Failure> {
    let store = database.open().await?;
    let failed = |e| Failure::runtime("cannot read status (has `migrate` run?)", e);
    let status = store.status().await.map_err(failed)?;
    let backfill = store.backfill_passes().await.map_err(failed)?;
    let body = serde_json::to_string(&Report { status, backfill })
        .map_err(|e| Failure::runtime("cannot print status", e))?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}
