//! `lookup`: checkout's answer as JSON, with an exit code per outcome.

use std::process::ExitCode;

use clap::Args;

use super::settings::DatabaseArgs;
use super::Failure;
use crate::lookup::LookupRequest;
use crate::store::Lookup;

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// The organizer's account (acct_...), or the platform's id.
    #[arg(long)]
    account: String,
    /// The buyer's email; matched trimmed and lowercased.
    #[arg(long)]
    email: String,
    /// true or false; omit to accept either mode when only one has a customer.
    #[arg(long)]
    livemode: Option<String>,
}

pub async fn run(database: &DatabaseArgs, args: LookupArgs) -> Result<ExitCode, Failure> {
    let request = LookupRequest::parse(
        Some(&args.account),
        Some(&args.email),
        args.livemode.as_deref(),
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
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
