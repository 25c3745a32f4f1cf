//! The projection rules, as pure functions: what a `customer.*` event contributes, which
//! snapshot of a customer wins, and which customer checkout gets for an email.
//!
//! One module per rule, each with the SQL fragments that mirror it in the store's
//! statements: [`order`] (rule 3), [`email`] (rule 4), [`canonical`] (rule 5), [`types`]
//! (rule 6). The store persists these answers and repeats the rules only through those
//! fragments. [`ReadModel`] applies the rules in memory and is the oracle the storage
//! tests compare against.

pub mod canonical;
pub mod email;
pub mod order;
pub mod types;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{self, AccountId, CustomerId, EmailKey};
use crate::stripe::event::CustomerEvent;

pub use canonical::canonical_order;
pub use order::{newest_per_customer, supersedes, TypeRank, Version};
pub use types::EventType;

/// The version of [`effect_of`]: stored with every event, next to what it extracted.
/// Bump it whenever `effect_of` could give another answer for the same event; `replay`
/// then re-reads the payloads of events extracted by an older version and trusts the
/// stored columns of the others.
///
/// 2: email keys fold ASCII letters only; emails over 512 bytes or with control
/// characters, and names over 256 characters or with control characters, are projection
/// errors.
pub const PROJECTION_VERSION: i64 = 2;

/// What one `customer.*` event does to the customer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A snapshot of a customer (`customer.created`, `.updated`, `.deleted`).
    Snapshot(Snapshot),
    /// Another `customer.*` type (subscriptions, sources, ...): logged, not projected.
    None,
    /// The event should carry a customer but does not (rule 8): logged, acknowledged, and
    /// recorded as a projection error.
    Error(String),
}

/// A customer as one event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub customer_id: CustomerId,
    /// The email as Stripe has it, for display.
    pub email: Option<String>,
    /// The lookup key; `None` when the customer has no usable email (rule 4).
    pub email_key: Option<EmailKey>,
    pub name: Option<String>,
    /// The Customer object's own `created`, else the event's (rule 5).
    pub customer_created: i64,
    pub version: Version,
}

/// A snapshot with the account and mode it belongs to: one row of the customer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    pub account: AccountId,
    pub livemode: bool,
    pub snapshot: Snapshot,
}

impl Projected {
    pub fn new(event: &CustomerEvent, snapshot: Snapshot) -> Self {
        Self {
            account: event.account.clone(),
            livemode: event.livemode,
            snapshot,
        }
    }

    /// The row's identity; also the order in which rows are locked.
    pub fn key(&self) -> (&AccountId, bool, &CustomerId) {
        (&self.account, self.livemode, &self.snapshot.customer_id)
    }
}

/// What a `customer.*` event contributes to the customer table.
pub fn effect_of(event: &CustomerEvent) -> Effect {
    let Some(rank) = event.event_type.snapshot_rank() else {
        return Effect::None;
    };
    match snapshot_of(event, rank) {
        Ok(snapshot) => Effect::Snapshot(snapshot),
        Err(reason) => Effect::Error(reason),
    }
}

fn snapshot_of(event: &CustomerEvent, rank: TypeRank) -> Result<Snapshot, String> {
    let object = &event.object;
    if object.object.as_ref().and_then(Value::as_str) != Some("customer") {
        return Err(format!(
            "{} does not carry a customer object",
            event.event_type
        ));
    }
    let customer_id = object
        .id
        .as_ref()
        .and_then(Value::as_str)
        .ok_or("customer object has no string id")
        .and_then(|id| CustomerId::parse(id).map_err(|_| "customer id is not a valid id"))?;
    let email = optional_text(object.email.as_ref(), "email")?;
    // A blank email is a customer without one (rule 4); any other email that cannot be a
    // key is refused, so it can neither be indexed nor break the index.
    let email_key =
        email::snapshot_key(email.as_deref()).map_err(|invalid| format!("customer {invalid}"))?;
    let name = optional_text(object.name.as_ref(), "name")?;
    if let Some(name) = &name {
        domain::check_name(name).map_err(|invalid| format!("customer {invalid}"))?;
    }
    let customer_created = match &object.created {
        None => event.created,
        Some(value) => value.as_i64().ok_or("customer created is not an integer")?,
    };
    Ok(Snapshot {
        customer_id,
        email_key,
        email,
        name,
        customer_created,
        version: Version {
            // A snapshot read from Stripe's API is a deletion when Stripe said so
            // (`"deleted": true` on a retrieved customer).
            deleted: rank == TypeRank::Deleted
                || (rank == TypeRank::Snapshot && object.deleted == Some(Value::Bool(true))),
            created: event.created,
            rank,
            event_id: event.id.clone(),
        },
    })
}

/// A nullable string field (absent and `null` are `None`). NUL is refused: PostgreSQL
/// text cannot hold it.
fn optional_text(value: Option<&Value>, field: &str) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.contains('\0') => {
            Err(format!("customer {field} contains NUL"))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("customer {field} is not a string")),
    }
}

/// Identity of a projected customer: accounts and modes never mix (rules 1 and 2).
pub type CustomerKey = (AccountId, bool, CustomerId);

/// The projection applied in memory: the reference the stores must agree with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadModel {
    customers: BTreeMap<CustomerKey, Snapshot>,
}

impl ReadModel {
    pub fn apply(&mut self, event: &CustomerEvent) {
        let Effect::Snapshot(snapshot) = effect_of(event) else {
            return;
        };
        let key = (
            event.account.clone(),
            event.livemode,
            snapshot.customer_id.clone(),
        );
        match self.customers.get(&key) {
            Some(current) if !supersedes(&snapshot.version, &current.version) => {}
            _ => {
                self.customers.insert(key, snapshot);
            }
        }
    }

    /// Every customer's winning snapshot, deleted ones included.
    pub fn customers(&self) -> impl Iterator<Item = (&CustomerKey, &Snapshot)> {
        self.customers.iter()
    }

    /// The customer checkout gets for this account, mode and email.
    pub fn lookup(
        &self,
        account: &AccountId,
        livemode: bool,
        email: &EmailKey,
    ) -> Option<&Snapshot> {
        let same_account_and_mode = self
            .customers
            .iter()
            .filter(|((a, mode, _), _)| a == account && *mode == livemode)
            .map(|(_, snapshot)| snapshot);
        canonical::canonical(same_account_and_mode, email)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;
    use serde_json::json;

    fn event(id: &str, event_type: &str, created: i64, object: Value) -> CustomerEvent {
        CustomerEvent {
            id: EventId::parse(id).unwrap(),
            event_type: event_type.into(),
            account: AccountId::parse("acct_a").unwrap(),
            created,
            livemode: false,
            object_id: object.get("id").and_then(Value::as_str).map(Into::into),
            object: serde_json::from_value(object).unwrap_or_default(),
            payload: String::new(),
        }
    }

    fn customer(id: &str, email: &str, created: i64) -> Value {
        json!({"id": id, "object": "customer", "email": email, "name": null, "created": created})
    }

    #[test]
    fn snapshot_types_project_and_other_customer_types_do_not() {
        let created = event(
            "evt_1",
            "customer.created",
            5,
            customer("cus_1", " A@B.c ", 4),
        );
        let Effect::Snapshot(snapshot) = effect_of(&created) else {
            panic!()
        };
        assert_eq!(snapshot.email.as_deref(), Some(" A@B.c "));
        assert_eq!(snapshot.email_key.unwrap().as_str(), "a@b.c");
        assert_eq!(snapshot.customer_created, 4);
        assert!(!snapshot.version.deleted);

        let deleted = event(
            "evt_2",
            "customer.deleted",
            6,
            customer("cus_1", "a@b.c", 4),
        );
        let Effect::Snapshot(snapshot) = effect_of(&deleted) else {
            panic!()
        };
        assert!(snapshot.version.deleted);

        let sub = event(
            "evt_3",
            "customer.subscription.created",
            6,
            json!({"id": "sub_1", "object": "subscription"}),
        );
        assert_eq!(effect_of(&sub), Effect::None);
    }

    #[test]
    fn customer_created_falls_back_to_the_event_created() {
        let mut object = customer("cus_1", "a@b.c", 0);
        object.as_object_mut().unwrap().remove("created");
        let Effect::Snapshot(snapshot) = effect_of(&event("evt_1", "customer.created", 77, object))
        else {
            panic!()
        };
        assert_eq!(snapshot.customer_created, 77);
    }

    #[test]
    fn unprojectable_customer_events_are_errors() {
        let cases = [
            json!({"id": "card_1", "object": "card"}),
            json!({"object": "customer"}),
            json!({"id": "", "object": "customer"}),
            json!({"id": "cus_1", "object": "customer", "email": 5}),
            json!({"id": "cus_1", "object": "customer", "name": ["x"]}),
            json!({"id": "cus_1", "object": "customer", "created": "soon"}),
            json!({"id": "cus_1", "object": "customer", "email": "a\u{0}@b.c"}),
            json!({"id": "cus_1", "object": "customer", "email": "a\n@b.c"}),
            json!({"id": "cus_1", "object": "customer", "email": format!("{}@b.c", "a".repeat(509))}),
            json!({"id": "cus_1", "object": "customer", "name": "a".repeat(257)}),
            json!({"id": "cus_1", "object": "customer", "name": "Ada\u{1b}[2J"}),
        ];
        for object in cases {
            let effect = effect_of(&event("evt_1", "customer.updated", 1, object.clone()));
            assert!(matches!(effect, Effect::Error(_)), "{object}");
        }
    }

    #[test]
    fn blank_or_missing_email_is_not_indexed() {
        for object in [
            customer("cus_1", "  ", 1),
            json!({"id": "cus_1", "object": "customer", "email": null}),
        ] {
            let Effect::Snapshot(snapshot) =
                effect_of(&event("evt_1", "customer.created", 1, object))
            else {
                panic!()
            };
            assert_eq!(snapshot.email_key, None);
        }
    }

    #[test]
    fn a_batch_keeps_each_customers_newest_snapshot_sorted_by_key() {
        let row = |id: &str, created: i64, customer_id: &str| {
            let event = event(
                id,
                "customer.updated",
                created,
                customer(customer_id, "a@b.c", 1),
            );
            let Effect::Snapshot(snapshot) = effect_of(&event) else {
                panic!()
            };
            Projected::new(&event, snapshot)
        };
        let rows = vec![
            row("evt_1", 5, "cus_b"),
            row("evt_2", 9, "cus_a"),
            row("evt_3", 7, "cus_b"),
            row("evt_4", 1, "cus_a"),
        ];
        let kept: Vec<(String, String)> = newest_per_customer(rows)
            .into_iter()
            .map(|r| {
                (
                    r.snapshot.customer_id.to_string(),
                    r.snapshot.version.event_id.to_string(),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                ("cus_a".into(), "evt_2".into()),
                ("cus_b".into(), "evt_3".into())
            ]
        );
    }

    #[test]
    fn canonical_customer_is_the_oldest_then_smallest_id() {
        let mut model = ReadModel::default();
        let key = EmailKey::parse("shared@x.io").unwrap();
        let account = AccountId::parse("acct_a").unwrap();
        model.apply(&event(
            "evt_1",
            "customer.created",
            10,
            customer("cus_b", "shared@x.io", 10),
        ));
        model.apply(&event(
            "evt_2",
            "customer.created",
            10,
            customer("cus_a", "Shared@X.io", 10),
        ));
        model.apply(&event(
            "evt_3",
            "customer.created",
            5,
            customer("cus_c", "shared@x.io", 20),
        ));
        assert_eq!(
            model
                .lookup(&account, false, &key)
                .unwrap()
                .customer_id
                .as_str(),
            "cus_a"
        );
        model.apply(&event(
            "evt_4",
            "customer.deleted",
            11,
            customer("cus_a", "shared@x.io", 10),
        ));
        assert_eq!(
            model
                .lookup(&account, false, &key)
                .unwrap()
                .customer_id
                .as_str(),
            "cus_b"
        );
        model.apply(&event(
            "evt_5",
            "customer.updated",
            12,
            customer("cus_b", "moved@x.io", 10),
        ));
        assert_eq!(
            model
                .lookup(&account, false, &key)
                .unwrap()
                .customer_id
                .as_str(),
            "cus_c"
        );
        assert_eq!(model.lookup(&account, true, &key), None);
    }
}
