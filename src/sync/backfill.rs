//! `backfill`: every live customer Stripe has on an account, recorded as a snapshot.
//!
//! Per (account, mode) pass: list the customers 100 per page; record each one whose
//! deciding record does not already hold the same Customer object; after each page,
//! remember where the pass stands (an interrupted pass resumes there). Once the listing is
//! complete, fetch each customer the read model holds as live that the listing did not
//! return: Stripe's `"deleted": true` is recorded as a deletion; a 404 is only reported.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::record::Snapshot;
use super::{now, AccountError, Context, Count, Ended, Progress, Target};
use crate::domain::AccountId;
use crate::projection;
use crate::store::{AppendOutcome, Source};
use crate::stripe::reads::{ListOf, Listed, Retrieved};

/// The counts `backfill` prints at the end.
#[derive(Debug, Default)]
pub struct Tally {
    pub accounts_done: Count,
    /// Customers Stripe listed (or returned when fetched one by one).
    pub customers: Count,
    /// Snapshots newly in the log.
    pub recorded: Count,
    /// Customers whose deciding record already held the same object: nothing recorded.
    pub unchanged: Count,
    /// Deletions found and recorded.
    pub deleted: Count,
}

/// `{"accounts":N,"failed":N,"customers":N,"recorded":N,"unchanged":N,"deleted":N,"requests":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub accounts: u64,
    pub failed: u64,
    pub customers: u64,
    pub recorded: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub requests: u64,
}

/// Backfills every target, `concurrency` at a time. `restart`: every pass starts from the
/// top, even an interrupted one.
pub async fn run(
    context: &Context,
    targets: Vec<Target>,
    concurrency: usize,
    restart: bool,
    progress: Arc<dyn Progress + Send>,
) -> (Summary, Ended) {
    let tally = Arc::new(Tally::default());
    let accounts = targets.len() as u64;
    progress.start(accounts);
    let ended = super::for_each_account(targets, concurrency, {
        let (context, tally, progress) = (context.clone(), tally.clone(), progress.clone());
        move |target| {
            let (context, tally, progress) = (context.clone(), tally.clone(), progress.clone());
            async move {
                let result = backfill_account(&context, &target, restart, &tally, &*progress).await;
                tally.accounts_done.add(1);
                progress.advance(
                    tally.accounts_done.get(),
                    tally.customers.get(),
                    &context.stripe,
                );
                result
            }
        }
    })
    .await;
    progress.finish();
    let summary = Summary {
        accounts,
        failed: ended.failed.len() as u64,
        customers: tally.customers.get(),
        recorded: tally.recorded.get(),
        unchanged: tally.unchanged.get(),
        deleted: tally.deleted.get(),
        requests: context.stripe.requests_sent(),
    };
    (summary, ended)
}

async fn backfill_account(
    context: &Context,
    target: &Target,
    restart: bool,
    tally: &Tally,
    progress: &dyn Progress,
) -> Result<(), AccountError> {
    let store = &context.store;
    let account = target.tag(&context.platform);
    let livemode = context.stripe.livemode();
    let pass = match store.backfill_pass(account, livemode).await? {
        Some(pass) if !restart && pass.completed_at.is_none() => pass,
        _ => store.start_backfill_pass(account, livemode, now()).await?,
    };
    let reading = format!("backfill:{}", pass.pass);
    let mut after = pass.position.clone();
    if after.is_none() || pass.pages == 0 {
        tracing::info!(account = %account, livemode, pass = pass.pass, "backfill pass starts");
    } else {
        tracing::info!(account = %account, livemode, pass = pass.pass, pages = pass.pages, "backfill pass resumes");
    }
    loop {
        if context.stop.requested() {
            return Err(AccountError::Stopped);
        }
        let read_at = now();
        let page = context
            .stripe
            .list_page(
                ListOf::Customers { email: None },
                target.on(),
                after.as_deref(),
            )
            .await?;
        tally.customers.add(page.objects.len() as u64);
        record(context, account, &page.objects, read_at, &reading, tally).await?;
        let listed: Vec<String> = page.objects.iter().map(|o| o.id.clone()).collect();
        if let Some(last) = listed.last() {
            if !store
                .record_backfill_page(account, livemode, pass.pass, last, &listed)
                .await?
            {
                // Another run started a new pass of this account meanwhile: it owns it now.
                return Err(AccountError::Stopped);
            }
        }
        progress.advance(
            tally.accounts_done.get(),
            tally.customers.get(),
            &context.stripe,
        );
        match page.starting_after() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    for customer_id in store.unlisted_live_customers(account, livemode).await? {
        if context.stop.requested() {
            return Err(AccountError::Stopped);
        }
        let read_at = now();
        match context
            .stripe
            .retrieve_customer(target.on(), &customer_id)
            .await?
        {
            Retrieved::Deleted(raw) => {
                let stored = record(
                    context,
                    account,
                    &[listed(&customer_id, raw)],
                    read_at,
                    &reading,
                    tally,
                )
                .await?;
                tally.deleted.add(stored);
            }
            Retrieved::Live(raw) => {
                tally.customers.add(1);
                record(
                    context,
                    account,
                    &[listed(&customer_id, raw)],
                    read_at,
                    &reading,
                    tally,
                )
                .await?;
            }
            Retrieved::Missing => {
                tracing::warn!(
                    account = %account, livemode, customer_id,
                    "held as live, but Stripe has no such customer on this account (404); not recorded"
                );
                eprintln!(
                    "warning: {account}: {customer_id} is held as live but Stripe answers 404; nothing recorded"
                );
            }
        }
    }
    store
        .complete_backfill_pass(account, livemode, pass.pass, now())
        .await?;
    tracing::info!(account = %account, livemode, pass = pass.pass, "backfill pass complete");
    Ok(())
}

fn listed(customer_id: &str, raw: Box<RawValue>) -> Listed {
    Listed {
        id: customer_id.to_owned(),
        raw,
    }
}

/// Records the customers whose deciding record does not hold the same object; returns how
/// many records are new in the log.
async fn record(
    context: &Context,
    account: &AccountId,
    customers: &[Listed],
    read_at: i64,
    reading: &str,
    tally: &Tally,
) -> Result<u64, AccountError> {
    let livemode = context.stripe.livemode();
    let ids: Vec<String> = customers.iter().map(|c| c.id.clone()).collect();
    let deciding = context
        .store
        .deciding_payloads(account, livemode, &ids)
        .await?;
    let mut events = Vec::with_capacity(customers.len());
    for customer in customers {
        if deciding
            .get(&customer.id)
            .is_some_and(|payload| holds_object(payload, &customer.raw))
        {
            tally.unchanged.add(1);
            continue;
        }
        let event = Snapshot {
            account,
            platform: &context.platform,
            livemode,
            created: read_at - 1,
            customer_id: &customer.id,
            object: &customer.raw,
            reading,
            source: Source::Backfill.as_str(),
        }
        .event()?;
        let effect = projection::effect_of(&event);
        events.push((event, effect));
    }
    if events.is_empty() {
        return Ok(0);
    }
    let outcomes = context.store.append(events, Source::Backfill).await?;
    let stored = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, AppendOutcome::Stored { .. }))
        .count() as u64;
    tally.recorded.add(stored);
    Ok(stored)
}

/// Whether a logged payload's `data.object` is the same Customer object as `object`
/// (as JSON values: Stripe's key order and spacing may differ between its API and its
/// events).
fn holds_object(payload: &str, object: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Logged {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        object: Value,
    }
    let Ok(logged) = serde_json::from_str::<Logged>(payload) else {
        return false;
    };
    serde_json::from_str::<Value>(object.get()).is_ok_and(|object| object == logged.data.object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_the_same_whatever_its_spacing_and_key_order() {
        let payload =
            r#"{"id":"evt_1","data":{"object":{"id":"cus_1","email":"a@b.c","metadata":{}}}}"#;
        let same =
            RawValue::from_string(r#"{ "email": "a@b.c", "id": "cus_1", "metadata": {} }"#.into())
                .unwrap();
        let other = RawValue::from_string(r#"{"id":"cus_1","email":"A@b.c","metadata":{}}"#.into())
            .unwrap();
        assert!(holds_object(payload, &same));
        assert!(!holds_object(payload, &other));
        assert!(!holds_object("not json", &same));
    }
}
