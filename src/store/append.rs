//! Appending to the log: the one entry point every source appends through, and what the
//! backends' statements need from a batch.

use std::time::Instant;

use super::{AppendOutcome, Source, Store, StoreError};
use crate::domain::EmailKey;
use crate::metrics;
use crate::projection::{Effect, Projected};
use crate::stripe::event::CustomerEvent;

impl Store {
    /// Appends events and applies their effects; outcomes in input order, one per event.
    /// Idempotent on the event id, including under concurrent deliveries of one event and
    /// repeats within `events`. Returns once the events are durable.
    ///
    /// Every source (webhooks, `import`, checkout's get-or-create) appends through here:
    /// the events go to the backend's group commit (see `group_commit`), so they commit
    /// together, in one transaction possibly shared with other callers' events.
    pub async fn append(
        &self,
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        match self {
            Self::Sqlite(store) => store.append(events, source).await,
            Self::Postgres(store) => store.append(events, source).await,
        }
    }
}

/// One new row of the log, as an append writes it; `source` and `projection_version` are
/// the same for a whole batch and travel separately. Bound row by row on SQLite, as one
/// array per column on PostgreSQL.
#[derive(Debug)]
pub(super) struct EventRow<'a> {
    pub(super) event_id: &'a str,
    pub(super) account: &'a str,
    pub(super) event_type: &'a str,
    pub(super) created: i64,
    pub(super) livemode: bool,
    pub(super) object_id: Option<&'a str>,
    pub(super) payload: &'a str,
    /// The projection's columns: the snapshot, or why there is none.
    pub(super) customer_id: Option<&'a str>,
    pub(super) email: Option<&'a str>,
    pub(super) email_key: Option<&'a str>,
    pub(super) name: Option<&'a str>,
    pub(super) customer_created: Option<i64>,
    pub(super) version: Option<String>,
    pub(super) deleted: Option<bool>,
    pub(super) projection_error: Option<&'a str>,
}

impl<'a> EventRow<'a> {
    pub(super) fn new(event: &'a CustomerEvent, effect: &'a Effect) -> Self {
        let snapshot = match effect {
            Effect::Snapshot(snapshot) => Some(snapshot),
            Effect::None | Effect::Error(_) => None,
        };
        Self {
            event_id: event.id.as_str(),
            account: event.account.as_str(),
            event_type: event.event_type.as_str(),
            created: event.created,
            livemode: event.livemode,
            object_id: event.object_id.as_deref(),
            payload: &event.payload,
            customer_id: snapshot.map(|s| s.customer_id.as_str()),
            email: snapshot.and_then(|s| s.email.as_deref()),
            email_key: snapshot.and_then(|s| s.email_key.as_ref().map(EmailKey::as_str)),
            name: snapshot.and_then(|s| s.name.as_deref()),
            customer_created: snapshot.map(|s| s.customer_created),
            version: snapshot.map(|s| s.version.encode()),
            deleted: snapshot.map(|s| s.version.deleted),
            projection_error: match effect {
                Effect::Error(reason) => Some(reason),
                Effect::Snapshot(_) | Effect::None => None,
            },
        }
    }
}

/// A batch as the backends write it: each event id once (its first delivery: a repeat
/// within the batch is a duplicate too), sorted by id, and the event id of each
/// customer's newest snapshot in the batch, sorted by customer key, so concurrent batches
/// take locks in one order.
pub(super) struct AppendPlan<'a> {
    events: &'a [(&'a CustomerEvent, &'a Effect)],
    /// Positions in `events` of the rows, in the same order.
    pub(super) candidates: Vec<usize>,
    pub(super) rows: Vec<EventRow<'a>>,
    pub(super) newest: Vec<String>,
}

impl<'a> AppendPlan<'a> {
    pub(super) fn new(events: &'a [(&'a CustomerEvent, &'a Effect)]) -> Self {
        // A stable sort keeps the first delivery of a repeated id first: that one may be new.
        let mut candidates: Vec<usize> = (0..events.len()).collect();
        candidates.sort_by(|&a, &b| events[a].0.id.cmp(&events[b].0.id));
        candidates.dedup_by(|later, earlier| events[*later].0.id == events[*earlier].0.id);
        let rows = candidates
            .iter()
            .map(|&i| EventRow::new(events[i].0, events[i].1))
            .collect();
        let snapshots = candidates.iter().filter_map(|&i| match events[i] {
            (event, Effect::Snapshot(snapshot)) => Some(Projected::new(event, snapshot.clone())),
            _ => None,
        });
        let newest = crate::projection::newest_per_customer(snapshots.collect())
            .into_iter()
            .map(|row| row.snapshot.version.event_id.to_string())
            .collect();
        Self {
            events,
            candidates,
            rows,
            newest,
        }
    }

    /// Each event's outcome, in input order, from the `(seq, event_id)` of the rows the
    /// backend found new.
    pub(super) fn outcomes(self, stored: Vec<(i64, String)>) -> Vec<AppendOutcome> {
        let stored: std::collections::HashMap<String, i64> =
            stored.into_iter().map(|(seq, id)| (id, seq)).collect();
        let mut outcomes = vec![AppendOutcome::Duplicate; self.events.len()];
        for i in self.candidates {
            let (event, effect) = self.events[i];
            if let Some(&seq) = stored.get(event.id.as_str()) {
                outcomes[i] = AppendOutcome::Stored {
                    seq,
                    projection_error: match effect {
                        Effect::Error(reason) => Some(reason.clone()),
                        Effect::Snapshot(_) | Effect::None => None,
                    },
                };
            }
        }
        outcomes
    }
}

/// Counts a batch's appends, once durable: each event waited for the whole batch.
pub(super) fn record_appends<'e>(
    events: impl IntoIterator<Item = &'e CustomerEvent>,
    source: Source,
    started: Instant,
    outcomes: &[AppendOutcome],
) {
    let elapsed = started.elapsed();
    for (event, outcome) in events.into_iter().zip(outcomes) {
        let (stored, projection_error) = match outcome {
            AppendOutcome::Stored {
                projection_error, ..
            } => (true, projection_error.is_some()),
            AppendOutcome::Duplicate => (false, false),
        };
        metrics::append_finished(
            event.event_type.as_str(),
            source,
            elapsed,
            stored,
            projection_error,
        );
    }
}
