//! `explain`: why checkout gets the customer it gets, as a table or as JSON.

use std::process::ExitCode;

use clap::Args;

use super::settings::{CustomerKeyArgs, DatabaseArgs};
use super::{print_json, Failure};
use crate::store::{CheckoutAnswer, Explanation};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    key: CustomerKeyArgs,
    /// Print the JSON body of `GET /v1/customers/explain` instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(database: &DatabaseArgs, args: ExplainArgs) -> Result<ExitCode, Failure> {
    let request = args.key.request()?;
    let store = database.open().await?;
    let explanation = store
        .explain(&request.account, &request.email, request.livemode)
        .await
        .map_err(|e| Failure::runtime("explain failed (has `migrate` run?)", e))?;
    if args.json {
        print_json(&explanation)?;
    } else {
        print!("{}", table(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}

/// The explanation for a person: checkout's answer, then each customer and its records.
fn table(explanation: &Explanation) -> String {
    let mut out = String::new();
    match &explanation.checkout {
        CheckoutAnswer::Found {
            customer_id,
            livemode,
            rule,
        } => out.push_str(&format!(
            "checkout gets {customer_id} (livemode {livemode}): {rule}\n"
        )),
        CheckoutAnswer::NotFound => out.push_str("checkout gets no customer (404 not_found)\n"),
        CheckoutAnswer::AmbiguousLivemode => out.push_str(
            "checkout gets 409 ambiguous_livemode: both modes have a customer; pass --livemode\n",
        ),
    }
    if explanation.customers.is_empty() {
        out.push_str("no customer of this account holds or held this email\n");
    }
    for customer in &explanation.customers {
        let state = if customer.deleted {
            "deleted".to_owned()
        } else if customer.holds_key_now {
            "holds this email".to_owned()
        } else {
            format!(
                "moved to {}",
                customer.email.as_deref().unwrap_or("no email")
            )
        };
        out.push_str(&format!(
            "\n{}{} livemode={} created={} {state}\n",
            if customer.checkout { "* " } else { "  " },
            customer.customer_id,
            customer.livemode,
            customer.customer_created,
        ));
        out.push_str(&format!(
            "    {:<36} {:<18} {:>12} {:<10} {:<8} email\n",
            "event", "type", "created", "source", "deleted"
        ));
        for record in &customer.records {
            out.push_str(&format!(
                "  {} {:<36} {:<18} {:>12} {:<10} {:<8} {}\n",
                if record.decides { ">" } else { " " },
                record.event_id,
                record.event_type,
                record.created,
                record.source,
                record.deleted,
                record.email.as_deref().unwrap_or("-").escape_debug(),
            ));
        }
        if customer.more_records > 0 {
            out.push_str(&format!(
                "    ... and {} older records\n",
                customer.more_records
            ));
        }
    }
    out.push_str("\n* the customer checkout gets; > the record that decides a customer's state\n");
    out
}
