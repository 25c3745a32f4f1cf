//! `status`: counts as JSON.

use std::process::ExitCode;

use super::settings::DatabaseArgs;
use super::Failure;

pub async fn run(database: &DatabaseArgs) -> Result<ExitCode, Failure> {
    let store = database.open().await?;
    let status = store
        .status()
        .await
        .map_err(|e| Failure::runtime("cannot read status (has `migrate` run?)", e))?;
    let body =
        serde_json::to_string(&status).map_err(|e| Failure::runtime("cannot print status", e))?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}
