//! `lookup`: checkout's answer as JSON, with an exit code per outcome.

use std::process::ExitCode;

use clap::Args;

use super::settings::{CustomerKeyArgs, DatabaseArgs};
use super::Failure;
use crate::store::Lookup;

#[derive(Debug, Args)]
pub struct LookupArgs {
    // Without `--livemode`, a customer in only one mode is the answer; customers in both
    // are `ambiguous_livemode` (exit 3).
    #[command(flatten)]
    key: CustomerKeyArgs,
}

pub async fn run(database: &DatabaseArgs, args: LookupArgs) -> Result<ExitCode, Failure> {
    let request = args.key.request()?;
    let store = database.open().await?;
    let answer = store
        .lookup(&request.account, &request.email, request.livemode)
        .await
        .map_err(|e| Failure::runtime("lookup failed (has `migrate` run?)", e))?;
    let (body, code) = match answer {
        Lookup::Found(customer) => (serde_json::to_string(&customer), 0),
        Lookup::NotFound => (Ok(r#"{"error":"not_found"}"#.to_owned()), 1),
        Lookup::AmbiguousLivemode => (Ok(r#"{"error":"ambiguous_livemode"}"#.to_owned()), 3),
    };
    let body = body.map_err(|e| Failure::runtime("cannot print the answer", e))?;
    println!("{body}");
    Ok(ExitCode::from(code))
}
