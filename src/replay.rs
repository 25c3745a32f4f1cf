//! Rebuilding the projection from the log: `replay` and `replay --verify`.
//!
//! The rebuild runs the current projection code over every logged event, into a table
//! built aside, while checkout keeps reading the live table and `serve` keeps appending.
//! Only the last step blocks appends: it applies what arrived meanwhile, then swaps the
//! table in (or compares it with the live one). The log is streamed, so memory does not
//! grow with its size.

use std::fmt;
use std::time::{Duration, Instant};

use crate::domain::{AccountId, CustomerId, EmailKey, EventId};
use crate::projection::{
    self, Effect, EventType, Projected, Snapshot, Version, PROJECTION_VERSION,
};
use crate::store::{Difference, LogRecord, RebuildKind, Store, StoreError};
use crate::stripe::event::{self, CustomerEvent};

/// Events read (and rows written, in one transaction) per step of a rebuild: bounds its
/// memory whatever the log's size.
const PAGE: i64 = 5_000;

/// Progress reporting, so the command line can draw a bar on a terminal. Each method is
/// called once, in this order, from the task running [`rebuild`] (a failed rebuild stops
/// calling them).
pub trait Progress: Sync {
    /// The rebuild reads `total_events` events: the log up to its horizon.
    fn start(&self, total_events: u64);
    /// The table is built aside from the log up to the horizon; appends are not blocked,
    /// and the catch-up with later events and the swap (or comparison) are still to come.
    /// The rebuild does not go on until this returns.
    fn advance(&self, events: u64);
    /// The table is swapped in (or compared and dropped): the rebuild is over.
    fn finish(&self);
}

/// Reports nothing (library callers, tests, non-terminals).
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// What a rebuild read and produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events read from the log, before the final catch-up.
    pub events: u64,
    pub elapsed: Duration,
    /// With `RebuildKind::Verify`: where the live table differs from the rebuild.
    pub differences: Vec<Difference>,
}

/// Rebuilds the customer table from the log; see the module documentation.
pub async fn rebuild(
    store: &Store,
    kind: RebuildKind,
    progress: &dyn Progress,
) -> Result<ReplayReport, StoreError> {
    let started = Instant::now();
    let rebuild = store.start_rebuild(kind).await?;
    // Events the current projection extracted: their stored columns, in one statement.
    // Beside it, on another connection, the count of the log and whether any event needs
    // parsing again: each reads the whole log, and the database serves both at once.
    let (log, _) = tokio::try_join!(
        store.log_summary(rebuild.horizon),
        store.rebuild_from_columns(&rebuild, PROJECTION_VERSION)
    )?;
    let events = u64::try_from(log.events).unwrap_or_default();
    progress.start(events);
    // Events an older projection extracted: today's code runs again on their payloads,
    // page by page; the upsert keeps each customer's newest snapshot across both.
    if log
        .oldest_projection
        .is_some_and(|v| v < PROJECTION_VERSION)
    {
        reproject_stale(store, &rebuild).await?;
    }
    progress.advance(events);
    let finishing = store.finish_rebuild(rebuild).await?;
    let rows =
        projection::newest_per_customer(finishing.arrived().iter().filter_map(project).collect());
    let differences = finishing.complete(&rows).await?;
    progress.finish();
    Ok(ReplayReport {
        events,
        elapsed: started.elapsed(),
        differences,
    })
}

/// Runs today's projection again over the payloads of the events an older one extracted.
async fn reproject_stale(store: &Store, rebuild: &crate::store::Rebuild) -> Result<(), StoreError> {
    let mut batch = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .log_page(after, rebuild.horizon, PAGE, PROJECTION_VERSION, true)
            .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.seq;
        batch.extend(page.iter().filter_map(project));
        flush(store, rebuild, &mut batch).await?;
    }
}

/// Writes a batch, keeping only the newest snapshot of each customer in it.
async fn flush(
    store: &Store,
    rebuild: &crate::store::Rebuild,
    batch: &mut Vec<Projected>,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let rows = projection::newest_per_customer(std::mem::take(batch));
    store.write_rebuild(rebuild, &rows).await
}

/// What one logged event contributes to the customer table. When the event was
/// extracted by today's projection code, its stored columns say it; otherwise today's
/// code runs again on the stored payload (so a fixed projection bug is fixed for old
/// events too). Events that cannot be projected contribute nothing (they were recorded as
/// projection errors when they arrived).
pub fn project(record: &LogRecord) -> Option<Projected> {
    let event_type = EventType::parse(&record.event_type);
    if !event_type.projects() {
        return None;
    }
    let account = AccountId::parse(&record.account).ok()?;
    if record.projection_version >= PROJECTION_VERSION {
        return from_columns(record, account);
    }
    let event = CustomerEvent {
        id: EventId::parse(&record.event_id).ok()?,
        event_type,
        account,
        created: record.created,
        livemode: record.livemode,
        object_id: None,
        object: event::data_object(record.payload.as_deref()?.as_bytes()).ok()?,
        payload: String::new(),
    };
    match projection::effect_of(&event) {
        Effect::Snapshot(snapshot) => Some(Projected::new(&event, snapshot)),
        Effect::None | Effect::Error(_) => None,
    }
}

/// The snapshot as the current projection stored it at append time.
fn from_columns(record: &LogRecord, account: AccountId) -> Option<Projected> {
    let snapshot = Snapshot {
        customer_id: CustomerId::parse(record.customer_id.as_deref()?).ok()?,
        email: record.email.clone(),
        email_key: record
            .email_key
            .as_deref()
            .and_then(|key| EmailKey::parse(key).ok()),
        name: record.name.clone(),
        customer_created: record.customer_created?,
        version: Version::decode(record.version.as_deref()?)?,
    };
    Some(Projected {
        account,
        livemode: record.livemode,
        snapshot,
    })
}

impl fmt::Display for Difference {
    /// `acct_1 livemode=false cus_1: expected ada@x.io (evt_9) vs actual missing`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} livemode={} {}: expected ",
            self.account, self.livemode, self.customer_id
        )?;
        describe(
            f,
            self.expected_email.as_deref(),
            self.expected_version.as_deref(),
        )?;
        f.write_str(" vs actual ")?;
        describe(
            f,
            self.actual_email.as_deref(),
            self.actual_version.as_deref(),
        )
    }
}

fn describe(f: &mut fmt::Formatter<'_>, email: Option<&str>, version: Option<&str>) -> fmt::Result {
    let Some(version) = version else {
        return f.write_str("missing");
    };
    let email = email.unwrap_or("(no email)");
    match Version::decode(version) {
        Some(v) if v.deleted => write!(f, "{email} deleted ({})", v.event_id),
        Some(v) => write!(f, "{email} ({})", v.event_id),
        None => write!(f, "{email} (version {version:?})"),
    }
}
