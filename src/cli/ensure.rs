//! `ensure`: checkout's get-or-create, creating the customer through Stripe when the read
//! model has none.

use std::process::ExitCode;

use clap::Args;

use super::settings::{DatabaseArgs, PlatformArgs, StripeArgs};
use super::Failure;
use crate::ensure::{EnsureError, EnsureRequest, Ensurer};

#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// The organizer's account (acct_...), or the platform's id.
    #[arg(long)]
    account: String,
    /// The buyer's email; the key is trimmed and lowercased, Stripe gets it as given.
    #[arg(long)]
    email: String,
    /// The customer's name, sent to Stripe when it is created.
    #[arg(long)]
    name: Option<String>,
    /// true or false; omit to use the mode of STRIPE_SECRET_KEY.
    #[arg(long)]
    livemode: Option<String>,

    #[command(flatten)]
    platform: PlatformArgs,

    #[command(flatten)]
    stripe: StripeArgs,
}

pub async fn run(database: &DatabaseArgs, args: EnsureArgs) -> Result<ExitCode, Failure> {
    let usage = Failure::Usage;
    let livemode = match args.livemode.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(usage("--livemode must be true or false".into())),
    };
    let request = EnsureRequest::parse(
        Some(&args.account),
        Some(&args.email),
        livemode,
        args.name.as_deref(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let platform = args.platform.account()?;
    let Some(stripe) = args.stripe.client()? else {
        return Err(usage(
            "STRIPE_SECRET_KEY is not set: ensure needs a Stripe secret or restricted key".into(),
        ));
    };
    let store = database.open().await?;
    let ensured = Ensurer::new(Some(stripe), platform)
        .ensure(&store, &request)
        .await
        .map_err(|e| match e {
            EnsureError::Invalid(_) | EnsureError::LivemodeMismatch { .. } => usage(e.to_string()),
            EnsureError::Store(_) => Failure::runtime("ensure failed (has `migrate` run?)", e),
            other => Failure::runtime("ensure failed", other),
        })?;
    let body = serde_json::to_string(&ensured)
        .map_err(|e| Failure::runtime("cannot print the answer", e))?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}
