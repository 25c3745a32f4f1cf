//! `migrate`: apply migrations and exit.

use std::process::ExitCode;

use super::settings::DatabaseArgs;
use super::Failure;

pub async fn run(database: &DatabaseArgs) -> Result<ExitCode, Failure> {
    database.open_migrated().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
