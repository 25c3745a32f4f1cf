//! What the sync commands record: a Customer that Stripe's API listed, as a
//! `customer.snapshot` event, and an event that Stripe's events API listed, as the
//! delivery it stands for.

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::domain::AccountId;
use crate::projection::EventType;
use crate::stripe::event::{self, CustomerEvent, Delivery, PayloadError};
use crate::stripe::recorded::{RecordError, RecordedEvent};

/// A Customer as Stripe's API returned it, to be recorded as a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub account: &'a AccountId,
    pub platform: &'a AccountId,
    pub livemode: bool,
    /// The second before the request that returned it (rule 3: the snapshot outranks what
    /// Stripe had done by then and loses to everything from that second on).
    pub created: i64,
    pub customer_id: &'a str,
    /// The Customer object, byte for byte as Stripe sent it.
    pub object: &'a RawValue,
    /// What makes two readings of one object distinct records: a backfill pass reads each
    /// customer once, and reading it again in the same pass (a resumed page) must give the
    /// same record, so a repeat is a duplicate rather than a second row.
    pub reading: &'a str,
    /// `backfill`, or `api` for `ensure`'s look-up.
    pub source: &'static str,
}

/// Why something Stripe listed is not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRecorded {
    #[error("not an event we can read: {0}")]
    Invalid(#[from] PayloadError),
    /// The event names another account than the one it was listed under.
    #[error("the event names account {named}, but was listed under {listed}")]
    OtherAccount { named: String, listed: String },
    #[error("cannot write the record: {0}")]
    Unwritable(String),
}

impl Snapshot<'_> {
    /// The record's event id: a function of the account, the mode, the customer, the
    /// reading and the object's bytes. The `evt_snap_` prefix tells an operator it was not
    /// delivered by Stripe.
    pub fn event_id(&self) -> String {
        let object_digest = hex::encode(Sha256::digest(self.object.get().as_bytes()));
        let encoded = format!(
            "stripe-projector/snapshot/v1\n{}:{}\n{}\n{}:{}\n{}:{}\n{object_digest}",
            self.account.as_str().len(),
            self.account,
            self.livemode,
            self.customer_id.len(),
            self.customer_id,
            self.reading.len(),
            self.reading,
        );
        let digest = hex::encode(Sha256::digest(encoded.as_bytes()));
        format!("evt_snap_{}", &digest[..32])
    }

    /// The record: a `customer.snapshot` event (see `stripe::recorded`) with id
    /// [`Self::event_id`], `created` the second before it was read and no `request`.
    pub fn event(&self) -> Result<CustomerEvent, NotRecorded> {
        let id = self.event_id();
        RecordedEvent {
            id: &id,
            account: self.account,
            platform: self.platform,
            created: self.created,
            livemode: self.livemode,
            object: self.object,
            request: None,
            event_type: EventType::SNAPSHOT,
            source: self.source,
        }
        .event()
        .map_err(|error| match error {
            RecordError::Invalid(error) => NotRecorded::Invalid(error),
            other => NotRecorded::Unwritable(other.to_string()),
        })
    }
}

/// An event that Stripe's events API listed under `listed` (the platform's own account
/// when it is the platform), read as a verified delivery of it would be. An event that
/// names no account is tagged with the one it was listed under: for a connected account,
/// that account is written into the envelope (its first field), so the log's payload says
/// what a replay must read; the rest stays byte for byte.
pub fn listed_event(
    raw: &RawValue,
    listed: &AccountId,
    platform: &AccountId,
) -> Result<Delivery, NotRecorded> {
    let delivery = event::parse(raw.get().as_bytes(), listed)?;
    let Delivery::Customer(event) = delivery else {
        return Ok(delivery);
    };
    if event.account != *listed {
        return Err(NotRecorded::OtherAccount {
            named: event.account.to_string(),
            listed: listed.to_string(),
        });
    }
    if listed == platform || names_an_account(raw) {
        return Ok(Delivery::Customer(event));
    }
    let tagged = format!(
        "{{\"account\":{},{}",
        serde_json::to_string(listed.as_str())
            .map_err(|e| NotRecorded::Unwritable(e.to_string()))?,
        raw.get().trim_start().strip_prefix('{').unwrap_or_default()
    );
    Ok(event::parse(tagged.as_bytes(), platform)?)
}

/// Whether the envelope carries a string `account`.
fn names_an_account(raw: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Account<'a> {
        #[serde(borrow)]
        account: Option<&'a str>,
    }
    serde_json::from_str::<Account<'_>>(raw.get()).is_ok_and(|envelope| envelope.account.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str) -> AccountId {
        AccountId::parse(id).unwrap()
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn a_snapshot_parses_as_the_customer_snapshot_it_records() {
        let object = raw(r#"{"id":"cus_1","object":"customer","email":"A@b.c","created":7}"#);
        let (a, platform) = (account("acct_a"), account("platform"));
        for tagged in [&a, &platform] {
            let snapshot = Snapshot {
                account: tagged,
                platform: &platform,
                livemode: false,
                created: 99,
                customer_id: "cus_1",
                object: &object,
                reading: "backfill:1",
                source: "backfill",
            };
            let event = snapshot.event().unwrap();
            assert_eq!(event.event_type, EventType::Snapshot);
            assert_eq!(&event.account, tagged);
            assert_eq!((event.created, event.livemode), (99, false));
            assert!(event.payload.contains(r#""data":{"object":{"id":"cus_1","object":"customer","email":"A@b.c","created":7}}"#));
            assert!(event.id.as_str().starts_with("evt_snap_"));
            // Same reading, same object: the same record. Another reading or object: another.
            assert_eq!(
                snapshot.event_id(),
                Snapshot {
                    created: 5,
                    ..snapshot
                }
                .event_id()
            );
            assert_ne!(
                snapshot.event_id(),
                Snapshot {
                    reading: "backfill:2",
                    ..snapshot
                }
                .event_id()
            );
            let changed = raw(r#"{"id":"cus_1","object":"customer","email":"B@b.c","created":7}"#);
            assert_ne!(
                snapshot.event_id(),
                Snapshot {
                    object: &changed,
                    ..snapshot
                }
                .event_id()
            );
        }
    }

    #[test]
    fn listed_events_take_the_account_they_were_listed_under() {
        let (a, platform) = (account("acct_a"), account("platform"));
        let body = r#"{"id":"evt_1","object":"event","type":"customer.updated","created":5,"livemode":false,"data":{"object":{"id":"cus_1","object":"customer"}}}"#;
        let Ok(Delivery::Customer(event)) = listed_event(&raw(body), &a, &platform) else {
            panic!()
        };
        assert_eq!(event.account, a);
        assert!(event
            .payload
            .starts_with(r#"{"account":"acct_a","id":"evt_1""#));
        // A replay reads the same account from the payload.
        let Ok(Delivery::Customer(replayed)) = event::parse(event.payload.as_bytes(), &platform)
        else {
            panic!()
        };
        assert_eq!(replayed.account, a);

        let Ok(Delivery::Customer(own)) = listed_event(&raw(body), &platform, &platform) else {
            panic!()
        };
        assert_eq!(
            (own.account, own.payload.as_str()),
            (platform.clone(), body)
        );

        let named = body.replace(
            r#""object":"event","#,
            r#""object":"event","account":"acct_a","#,
        );
        let Ok(Delivery::Customer(same)) = listed_event(&raw(&named), &a, &platform) else {
            panic!()
        };
        assert_eq!(same.payload, named, "kept byte for byte");
        assert!(matches!(
            listed_event(&raw(&named), &account("acct_b"), &platform),
            Err(NotRecorded::OtherAccount { .. })
        ));
        assert!(matches!(
            listed_event(&raw(&named), &platform, &platform),
            Err(NotRecorded::OtherAccount { .. })
        ));
        let other = r#"{"id":"evt_2","object":"event","type":"charge.succeeded","created":5,"livemode":false,"data":{"object":{}}}"#;
        assert!(matches!(
            listed_event(&raw(other), &a, &platform),
            Ok(Delivery::Ignored { .. })
        ));
        assert!(matches!(
            listed_event(&raw("{}"), &a, &platform),
            Err(NotRecorded::Invalid(_))
        ));
    }
}
