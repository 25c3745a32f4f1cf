//! `catch-up`: the `customer.*` events Stripe still keeps (30 days), each handled as a
//! verified delivery of it would be.
//!
//! Per account: `GET /v1/events?type=customer.*&created[gte]=<since>`, every page. Events
//! already in the log are duplicates (Stripe's event ids are the deliveries' ids); an event
//! naming another account than the one it was listed under is rejected, never recorded.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::record::{listed_event, NotRecorded};
use super::{now, AccountError, Context, Count, Ended, Progress, Target};
use crate::projection;
use crate::store::{AppendOutcome, Source};
use crate::stripe::event::Delivery;
use crate::stripe::reads::ListOf;

/// How far back Stripe keeps events, and so how far back an account we hold nothing for
/// is read.
pub const EVENTS_KEPT_SECS: i64 = 30 * 86_400;

/// How far before the newest event we hold a default `--since` starts: events of one
/// second can arrive in any order, and an event created shortly before the newest one we
/// hold may still have been missed.
pub const DEFAULT_OVERLAP_SECS: i64 = 3_600;

#[derive(Debug, Default)]
pub struct Tally {
    pub accounts_done: Count,
    pub events: Count,
    pub stored: Count,
    pub duplicate: Count,
    pub ignored: Count,
    pub rejected: Count,
}

/// `{"accounts":N,"failed":N,"events":N,"stored":N,"duplicate":N,"ignored":N,"rejected":N,"requests":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub accounts: u64,
    pub failed: u64,
    pub events: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub requests: u64,
}

/// Catches every target up from `since` (a Unix time), or, when `None`, from each
/// account's newest event in the log minus [`DEFAULT_OVERLAP_SECS`] (30 days back for an
/// account the log holds nothing of).
pub async fn run(
    context: &Context,
    targets: Vec<Target>,
    since: Option<i64>,
    concurrency: usize,
    progress: Arc<dyn Progress + Send>,
) -> Result<(Summary, Ended), crate::store::StoreError> {
    let newest = if since.is_none() {
        context.store.newest_event_by_account().await?
    } else {
        HashMap::new()
    };
    let started = now();
    let tally = Arc::new(Tally::default());
    let accounts = targets.len() as u64;
    progress.start(accounts);
    let ended = super::for_each_account(targets, concurrency, {
        let (context, tally, progress) = (context.clone(), tally.clone(), progress.clone());
        let newest = Arc::new(newest);
        move |target| {
            let (context, tally, progress, newest) = (
                context.clone(),
                tally.clone(),
                progress.clone(),
                newest.clone(),
            );
            async move {
                let account = target.tag(&context.platform).to_string();
                let from = since.unwrap_or_else(|| match newest.get(&account) {
                    Some(created) => created.saturating_sub(DEFAULT_OVERLAP_SECS),
                    None => started - EVENTS_KEPT_SECS,
                });
                let result = catch_up_account(&context, &target, from, &tally, &*progress).await;
                tally.accounts_done.add(1);
                progress.advance(
                    tally.accounts_done.get(),
                    tally.events.get(),
                    &context.stripe,
                );
                result
            }
        }
    })
    .await;
    progress.finish();
    Ok((
        Summary {
            accounts,
            failed: ended.failed.len() as u64,
            events: tally.events.get(),
            stored: tally.stored.get(),
            duplicate: tally.duplicate.get(),
            ignored: tally.ignored.get(),
            rejected: tally.rejected.get(),
            requests: context.stripe.requests_sent(),
        },
        ended,
    ))
}

async fn catch_up_account(
    context: &Context,
    target: &Target,
    since: i64,
    tally: &Tally,
    progress: &dyn Progress,
) -> Result<(), AccountError> {
    let account = target.tag(&context.platform);
    tracing::info!(account = %account, since, "catch-up starts");
    let mut after: Option<String> = None;
    loop {
        if context.stop.requested() {
            return Err(AccountError::Stopped);
        }
        let page = context
            .stripe
            .list_page(
                ListOf::CustomerEvents { since },
                target.on(),
                after.as_deref(),
            )
            .await?;
        tally.events.add(page.objects.len() as u64);
        let mut events = Vec::with_capacity(page.objects.len());
        for listed in &page.objects {
            match listed_event(&listed.raw, account, &context.platform) {
                Ok(Delivery::Customer(event)) => {
                    let effect = projection::effect_of(&event);
                    events.push((event, effect));
                }
                Ok(Delivery::Ignored { .. }) => tally.ignored.add(1),
                Err(NotRecorded::Unwritable(reason)) => {
                    return Err(NotRecorded::Unwritable(reason).into())
                }
                Err(refused) => {
                    tally.rejected.add(1);
                    tracing::warn!(account = %account, event_id = %listed.id, reason = %refused, "event rejected");
                    eprintln!(
                        "rejected: {account}: {}: {refused}",
                        listed.id.escape_debug()
                    );
                }
            }
        }
        if !events.is_empty() {
            for outcome in context.store.append(events, Source::EventsApi).await? {
                match outcome {
                    AppendOutcome::Stored { .. } => tally.stored.add(1),
                    AppendOutcome::Duplicate => tally.duplicate.add(1),
                }
            }
        }
        progress.advance(
            tally.accounts_done.get(),
            tally.events.get(),
            &context.stripe,
        );
        match page.starting_after() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}
