//! Backfilling the log from Stripe event exports: `import`.
//!
//! An export is a list object (`{"object":"list","data":[...]}`, what `GET /v1/events`
//! returns), a JSON array, a single event, or JSON Lines. Each record keeps its exact text
//! as the logged payload. Unseen events are appended and projected exactly as if they had
//! been delivered; events already in the log are skipped; a bad record is reported with
//! its position and the others are still imported.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::AccountId;
use crate::projection;
use crate::store::{AppendOutcome, Source, Store, StoreError};
use crate::stripe::event::{self, Delivery};

/// Events appended per transaction.
const BATCH: usize = 500;

/// What an import did, printed by the command.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    pub read: u64,
    pub appended: u64,
    pub duplicate: u64,
    pub ignored: u64,
    pub rejected: u64,
}

/// Where a record sits in its file, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based index in a JSON array or list object.
    Record(usize),
    /// 1-based line of a JSON Lines file.
    Line(usize),
    /// The file as a whole (it is not JSON at all).
    File,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record(n) => write!(f, "record {n}"),
            Self::Line(n) => write!(f, "line {n}"),
            Self::File => f.write_str("file"),
        }
    }
}

/// A record that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub position: Position,
    pub reason: String,
}

/// Imports one export's text. Store failures stop the import (what was committed stays;
/// running it again skips it); bad records do not.
pub async fn import(
    store: &Store,
    platform: &AccountId,
    text: &str,
    counts: &mut ImportCounts,
) -> Result<Vec<Rejection>, StoreError> {
    let mut rejections = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    for (position, record) in split(text) {
        counts.read += 1;
        let parsed = record.and_then(|raw| {
            event::parse(raw.as_bytes(), platform).map_err(|e| format!("not a Stripe event: {e}"))
        });
        match parsed {
            Ok(Delivery::Customer(event)) => {
                let effect = projection::effect_of(&event);
                batch.push((event, effect));
            }
            Ok(Delivery::Ignored { .. }) => counts.ignored += 1,
            Err(reason) => {
                counts.rejected += 1;
                rejections.push(Rejection { position, reason });
            }
        }
        if batch.len() == BATCH {
            append(store, &mut batch, counts).await?;
        }
    }
    append(store, &mut batch, counts).await?;
    Ok(rejections)
}

async fn append(
    store: &Store,
    batch: &mut Vec<(event::CustomerEvent, projection::Effect)>,
    counts: &mut ImportCounts,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    for outcome in store.append(std::mem::take(batch), Source::Import).await? {
        match outcome {
            AppendOutcome::Stored { .. } => counts.appended += 1,
            AppendOutcome::Duplicate => counts.duplicate += 1,
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ListObject<'a> {
    object: String,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// Splits an export into records, each the exact text of one event (or why it is not).
pub fn split(text: &str) -> Vec<(Position, Result<&str, String>)> {
    // Editors on Windows start UTF-8 files with a byte-order mark; JSON has no place for it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let start = text.trim_start_matches([' ', '\t', '\r', '\n']);
    if start.starts_with('[') {
        return match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => numbered(items),
            Err(e) => vec![(Position::File, Err(format!("not a JSON array: {e}")))],
        };
    }
    if start.starts_with('{') {
        if let Ok(whole) = serde_json::from_str::<&RawValue>(text) {
            return match serde_json::from_str::<ListObject>(whole.get()) {
                Ok(list) if list.object == "list" => numbered(list.data),
                _ => vec![(Position::Record(1), Ok(whole.get()))],
            };
        }
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (Position::Line(i + 1), Ok(line.trim_end_matches('\r'))))
        .collect()
}

fn numbered(items: Vec<&RawValue>) -> Vec<(Position, Result<&str, String>)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| (Position::Record(i + 1), Ok(raw.get())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(Position, Result<String, String>)> {
        split(text)
            .into_iter()
            .map(|(p, r)| (p, r.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn list_object_array_single_and_lines_are_recognised() {
        let list = r#"{"object":"list","data":[{"id":"evt_1"}, {"id":"evt_2"}],"has_more":false}"#;
        assert_eq!(
            texts(list),
            vec![
                (Position::Record(1), Ok(r#"{"id":"evt_1"}"#.into())),
                (Position::Record(2), Ok(r#"{"id":"evt_2"}"#.into()))
            ]
        );
        let array = " [ {\"id\":\"evt_1\"} ]";
        assert_eq!(
            texts(array),
            vec![(Position::Record(1), Ok(r#"{"id":"evt_1"}"#.into()))]
        );
        let single = "{\n  \"id\": \"evt_1\",\n  \"object\": \"event\"\n}\n";
        assert_eq!(
            texts(single),
            vec![(Position::Record(1), Ok(single.trim_end().into()))]
        );
        let lines = "{\"id\":\"evt_1\"}\n\n{broken\r\n{\"id\":\"evt_3\"}";
        assert_eq!(
            texts(lines),
            vec![
                (Position::Line(1), Ok(r#"{"id":"evt_1"}"#.into())),
                (Position::Line(3), Ok("{broken".into())),
                (Position::Line(4), Ok(r#"{"id":"evt_3"}"#.into()))
            ]
        );
    }

    #[test]
    fn a_broken_array_is_one_rejected_file() {
        let parts = texts("[{\"id\":1},");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, Position::File);
        assert!(parts[0].1.is_err());
    }
}
