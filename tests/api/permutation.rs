//! Projection rule 7, as a property on both backends: the customer table is a function of
//! the SET of events in the log. Any arrival order and any number of redeliveries give the
//! same rows and the same checkout answers, and those equal the in-memory oracle
//! (`projection::ReadModel`).
//!
//! One database per backend serves the whole run: every case and order writes under its
//! own prefix (accounts and event ids), so cases never see each other's rows. A common
//! prefix keeps the byte order of event ids, which is what the version compares.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};
use stripe_projector::domain::{AccountId, EmailKey};
use stripe_projector::projection::{self, ReadModel};
use stripe_projector::store::{AppendOutcome, Customer, Lookup, ProjectedCustomer, Source, Store};
use stripe_projector::stripe::event::{self, CustomerEvent, Delivery};

use crate::helpers::{self, Backend, EventSpec, TestDb};

/// Cases of each property over generated histories, unless `PROPTEST_CASES` says otherwise.
pub(crate) const DEFAULT_CASES: u32 = 48;

/// Event accounts; `None` is a platform event (no `account`), tagged with the platform id.
pub(crate) const ACCOUNTS: [Option<&str>; 3] = [Some("acct_A"), Some("acct_B"), None];
pub(crate) const PLATFORM: &str = "platform";
const CUSTOMERS: [&str; 6] = ["cus_1", "cus_2", "cus_3", "cus_4", "cus_5", "cus_6"];
/// Spellings that collide after trimming and lowercasing, plus two with no key at all.
const EMAILS: [Option<&str>; 6] = [
    Some("ada@x.io"),
    Some(" ADA@x.io"),
    Some("bob@x.io"),
    Some("Bob@X.io "),
    Some(""),
    None,
];
/// Every key the pool above can produce: the lookups checked for each account and mode.
pub(crate) const EMAIL_KEYS: [&str; 2] = ["ada@x.io", "bob@x.io"];
/// `Version::encode` is `<deleted: 1 byte><created: 20 digits><rank: 1 byte><event id>`.
const VERSION_EVENT_ID_AT: usize = 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Created,
    Updated,
    Deleted,
    /// A Customer read from Stripe's API (`customer.snapshot`).
    Snapshot,
    /// A customer Stripe's API said was deleted, as a snapshot.
    DeletionSnapshot,
    /// Another `customer.*` type: logged, never projected (rule 6).
    Subscription,
}

impl Kind {
    fn event_type(self) -> &'static str {
        match self {
            Kind::Created => "customer.created",
            Kind::Updated => "customer.updated",
            Kind::Deleted => "customer.deleted",
            Kind::Snapshot | Kind::DeletionSnapshot => "customer.snapshot",
            Kind::Subscription => "customer.subscription.created",
        }
    }
}

/// One distinct event of a generated history. Its id is `evt_<index in the history>`.
#[derive(Clone, Hash)]
pub(crate) struct HistoryEvent {
    customer: usize,
    account: usize,
    livemode: bool,
    kind: Kind,
    /// Event `created`, from a tiny range: many events share a second, so ties fall to the
    /// type rank and the event id.
    created: i64,
    email: Option<&'static str>,
    /// The Customer object's own `created`; `None` leaves it out (the event's counts).
    customer_created: Option<i64>,
    /// How many times the same bytes are delivered.
    copies: usize,
}

impl HistoryEvent {
    /// Whether it is a customer snapshot (created, updated, deleted).
    pub(crate) fn is_snapshot(&self) -> bool {
        self.kind != Kind::Subscription
    }

    /// The event as Stripe would send it, its account and id under `prefix`.
    pub(crate) fn to_json(&self, index: usize, prefix: &str) -> Value {
        let id = format!("{prefix}evt_{index:04}");
        let account = ACCOUNTS[self.account].map(|account| format!("{prefix}{account}"));
        let customer_id = CUSTOMERS[self.customer];
        if self.kind == Kind::Subscription {
            let mut event = json!({
                "id": id,
                "object": "event",
                "type": self.kind.event_type(),
                "created": self.created,
                "livemode": self.livemode,
                "data": {"object": {
                    "id": format!("sub_{index:04}"), "object": "subscription",
                    "customer": customer_id,
                }},
            });
            if let Some(account) = account {
                event["account"] = json!(account);
            }
            return event;
        }
        let mut event = EventSpec {
            id: &id,
            event_type: self.kind.event_type(),
            account: account.as_deref(),
            created: self.created,
            livemode: self.livemode,
            customer_id,
            email: self.email,
            customer_created: self.customer_created.unwrap_or_default(),
        }
        .to_json();
        if self.customer_created.is_none() {
            event["data"]["object"]
                .as_object_mut()
                .expect("data.object")
                .remove("created");
        }
        if self.kind == Kind::DeletionSnapshot {
            // What Stripe's API answers for a deleted customer.
            event["data"]["object"] =
                json!({"id": customer_id, "object": "customer", "deleted": true});
        }
        event
    }
}

impl fmt::Debug for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.livemode { "live" } else { "test" };
        let customer_created = match self.customer_created {
            Some(created) => created.to_string(),
            None => "absent".to_owned(),
        };
        write!(
            f,
            "{} {} {mode} {} created={} email={:?} customer_created={customer_created} x{}",
            self.kind.event_type(),
            ACCOUNTS[self.account].unwrap_or("(platform)"),
            CUSTOMERS[self.customer],
            self.created,
            self.email,
            self.copies,
        )
    }
}

/// A history and two delivery orders of it.
#[derive(Clone)]
pub(crate) struct Case {
    pub(crate) history: Vec<HistoryEvent>,
    seeds: [u64; 2],
}

impl Case {
    /// Every delivery (a history index, once per copy), shuffled by `seed`.
    ///
    /// A shuffle by sort key rather than by position: the key hashes the seed with the
    /// event's content and copy number, so when shrinking drops or simplifies one event the
    /// others keep their relative order, and the smaller case still fails the same way.
    fn order(&self, seed: u64) -> Vec<usize> {
        let mut deliveries: Vec<(u64, usize)> = Vec::new();
        for (index, event) in self.history.iter().enumerate() {
            for copy in 0..event.copies {
                let mut hasher = DefaultHasher::new();
                (seed, event, copy).hash(&mut hasher);
                deliveries.push((hasher.finish(), index));
            }
        }
        // Events of identical content tie; the seed's parity decides which comes first.
        deliveries.sort_by_key(|&(key, index)| {
            (
                key,
                if seed.is_multiple_of(2) {
                    index
                } else {
                    !index
                },
            )
        });
        deliveries.into_iter().map(|(_, index)| index).collect()
    }

    pub(crate) fn orders(&self) -> [Vec<usize>; 2] {
        self.seeds.map(|seed| self.order(seed))
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history:")?;
        for (index, event) in self.history.iter().enumerate() {
            writeln!(f, "  evt_{index:04} {event:?}")?;
        }
        for (n, order) in self.orders().iter().enumerate() {
            let ids: Vec<String> = order.iter().map(|i| format!("evt_{i:04}")).collect();
            writeln!(f, "order {}: {}", n + 1, ids.join(" "))?;
        }
        Ok(())
    }
}

fn history_event() -> impl Strategy<Value = HistoryEvent> {
    let kind = prop_oneof![
        3 => Just(Kind::Created),
        3 => Just(Kind::Updated),
        1 => Just(Kind::Deleted),
        2 => Just(Kind::Snapshot),
        1 => Just(Kind::DeletionSnapshot),
        1 => Just(Kind::Subscription),
    ];
    // acct_A dominates and test mode is the common case, so customers of one account and
    // mode meet often enough to race for an email.
    let account = prop_oneof![3 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)];
    let copies = prop_oneof![6 => Just(1usize), 2 => Just(2usize), 1 => Just(3usize)];
    (
        0..CUSTOMERS.len(),
        account,
        prop::bool::weighted(0.25),
        kind,
        100i64..=103,
        prop::sample::select(&EMAILS[..]),
        prop::option::weighted(0.8, 100i64..=102),
        copies,
    )
        .prop_map(
            |(customer, account, livemode, kind, created, email, customer_created, copies)| {
                HistoryEvent {
                    customer,
                    account,
                    livemode,
                    kind,
                    created,
                    email,
                    customer_created,
                    copies,
                }
            },
        )
}

pub(crate) fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(history_event(), 1..=32),
        any::<[u64; 2]>(),
    )
        .prop_map(|(history, seeds)| Case { history, seeds })
}

property_on_both_backends!(any_permutation_of_a_history_gives_identical_tables_on_sqlite, any_permutation_of_a_history_gives_identical_tables_on_postgres => check_rule_7);

/// Runs the property against one database of `backend`.
fn check_rule_7(backend: Backend) {
    let runtime = helpers::property_runtime();
    let db = runtime.block_on(TestDb::create(backend));
    let store = runtime.block_on(db.store());
    // Shrinking reruns cases: every run gets a fresh prefix, not every generated case.
    let runs = Cell::new(0usize);
    let mut runner = TestRunner::new(helpers::proptest_config(DEFAULT_CASES));
    let result = runner.run(&case(), |case| {
        let run = runs.replace(runs.get() + 1);
        runtime.block_on(check_case(&db, &store, &case, run))
    });
    runtime.block_on(async move { drop(store) });
    // TestDb's Drop runs its own runtime on a thread: never inside block_on.
    drop(db);
    if let Err(error) = result {
        panic!("rule 7 on {backend:?}: {error}");
    }
}

async fn check_case(
    db: &TestDb,
    store: &Store,
    case: &Case,
    run: usize,
) -> Result<(), TestCaseError> {
    let oracle = oracle(case)?;
    let expected_rows = oracle_rows(&oracle);
    for (n, order) in case.orders().iter().enumerate() {
        let prefix = format!("c{run}o{}_", n + 1);
        deliver(store, case, order, &prefix).await?;

        let rows = table(store, &prefix).await?;
        prop_assert_eq!(&rows, &expected_rows, "table after order {}", n + 1);

        for account in ACCOUNTS.map(|account| account.unwrap_or(PLATFORM)) {
            for livemode in [false, true] {
                for email in EMAIL_KEYS {
                    let email = EmailKey::parse(email).expect("a key");
                    let got = lookup(store, &prefix, account, livemode, &email).await?;
                    let expected = expected_lookup(&oracle, account, livemode, &email);
                    prop_assert_eq!(
                        got,
                        expected,
                        "lookup {} {} {} after order {}",
                        account,
                        if livemode { "live" } else { "test" },
                        email,
                        n + 1
                    );
                }
            }
        }
        forget_rows(db, &prefix).await;
    }
    Ok(())
}

/// Drops a passed case's rows: `Store::customers` reads the whole table, which would
/// otherwise grow with every case and make the run quadratic. The event log is left alone.
async fn forget_rows(db: &TestDb, prefix: &str) {
    db.execute(&format!(
        "DELETE FROM customers WHERE substr(account, 1, {}) = '{prefix}'",
        prefix.len()
    ))
    .await;
}

/// Appends one delivery order under `prefix`, the way the webhook does: parse, decide the
/// effect, append. A redelivery must be answered `Duplicate` and change nothing.
pub(crate) async fn deliver(
    store: &Store,
    case: &Case,
    order: &[usize],
    prefix: &str,
) -> Result<(), TestCaseError> {
    let platform = account_id(&format!("{prefix}{PLATFORM}"));
    let mut appended = HashSet::new();
    for &index in order {
        let event = parse(&case.history[index], index, prefix, &platform)?;
        let effect = projection::effect_of(&event);
        let outcome = store
            .append(vec![(event.clone(), effect)], Source::Webhook)
            .await
            .map(|outcomes| outcomes[0].clone())
            .map_err(|e| TestCaseError::fail(format!("append {}: {e}", event.id)))?;
        if appended.insert(index) {
            prop_assert!(
                matches!(
                    outcome,
                    AppendOutcome::Stored {
                        projection_error: None,
                        ..
                    }
                ),
                "first delivery of {} answered {:?}",
                event.id,
                outcome
            );
        } else {
            prop_assert_eq!(
                outcome,
                AppendOutcome::Duplicate,
                "redelivery of {}",
                event.id
            );
        }
    }
    Ok(())
}

/// The in-memory projection of the un-prefixed history. It must itself not depend on
/// order, or the comparison would be against one arbitrary order.
pub(crate) fn oracle(case: &Case) -> Result<ReadModel, TestCaseError> {
    let platform = account_id(PLATFORM);
    let mut in_history_order = ReadModel::default();
    for (index, event) in case.history.iter().enumerate() {
        in_history_order.apply(&parse(event, index, "", &platform)?);
    }
    let mut in_delivery_order = ReadModel::default();
    for &index in &case.order(case.seeds[0]) {
        in_delivery_order.apply(&parse(&case.history[index], index, "", &platform)?);
    }
    prop_assert_eq!(
        &in_delivery_order,
        &in_history_order,
        "the oracle depends on order"
    );
    Ok(in_history_order)
}

fn parse(
    event: &HistoryEvent,
    index: usize,
    prefix: &str,
    platform: &AccountId,
) -> Result<CustomerEvent, TestCaseError> {
    let body = event.to_json(index, prefix).to_string();
    match event::parse(body.as_bytes(), platform) {
        Ok(Delivery::Customer(event)) => Ok(event),
        other => Err(TestCaseError::fail(format!(
            "evt_{index:04} did not parse as a customer event: {other:?}"
        ))),
    }
}

/// The oracle's customers in the store's row shape and order.
pub(crate) fn oracle_rows(model: &ReadModel) -> Vec<ProjectedCustomer> {
    model
        .customers()
        .map(
            |((account, livemode, customer_id), snapshot)| ProjectedCustomer {
                account: account.to_string(),
                livemode: *livemode,
                customer_id: customer_id.to_string(),
                email: snapshot.email.clone(),
                email_key: snapshot.email_key.as_ref().map(ToString::to_string),
                name: snapshot.name.clone(),
                customer_created: snapshot.customer_created,
                deleted: snapshot.version.deleted,
                version: snapshot.version.encode(),
                last_event_id: snapshot.version.event_id.to_string(),
                last_event_created: snapshot.version.created,
            },
        )
        .collect()
}

/// The oracle's checkout answer, in the store's answer shape.
fn expected_lookup(
    model: &ReadModel,
    account: &str,
    livemode: bool,
    email: &EmailKey,
) -> Option<Customer> {
    let snapshot = model.lookup(&account_id(account), livemode, email)?;
    Some(Customer {
        customer_id: snapshot.customer_id.to_string(),
        account: account.to_owned(),
        email: snapshot.email.clone(),
        livemode,
        name: snapshot.name.clone(),
        last_event_id: snapshot.version.event_id.to_string(),
        last_event_created: snapshot.version.created,
    })
}

/// The store's rows under `prefix`, with the prefix taken off again.
async fn table(store: &Store, prefix: &str) -> Result<Vec<ProjectedCustomer>, TestCaseError> {
    let rows = store
        .customers()
        .await
        .map_err(|e| TestCaseError::fail(format!("customers: {e}")))?;
    Ok(rows
        .into_iter()
        .filter(|row| row.account.starts_with(prefix))
        .map(|mut row| {
            row.account = unprefix(&row.account, prefix);
            row.last_event_id = unprefix(&row.last_event_id, prefix);
            let (head, event_id) = row.version.split_at(VERSION_EVENT_ID_AT);
            row.version = format!("{head}{}", unprefix(event_id, prefix));
            row
        })
        .collect())
}

/// Checkout's answer under `prefix`, with the prefix taken off again.
async fn lookup(
    store: &Store,
    prefix: &str,
    account: &str,
    livemode: bool,
    email: &EmailKey,
) -> Result<Option<Customer>, TestCaseError> {
    let answer = store
        .lookup(
            &account_id(&format!("{prefix}{account}")),
            email,
            Some(livemode),
        )
        .await
        .map_err(|e| TestCaseError::fail(format!("lookup: {e}")))?;
    match answer {
        Lookup::Found(mut customer) => {
            customer.account = unprefix(&customer.account, prefix);
            customer.last_event_id = unprefix(&customer.last_event_id, prefix);
            Ok(Some(customer))
        }
        Lookup::NotFound => Ok(None),
        Lookup::AmbiguousLivemode => Err(TestCaseError::fail(
            "ambiguous livemode although a livemode was given",
        )),
    }
}

/// Takes `prefix` off; a value without it (another case's event) is kept visibly marked so
/// the comparison fails on it.
fn unprefix(value: &str, prefix: &str) -> String {
    match value.strip_prefix(prefix) {
        Some(rest) => rest.to_owned(),
        None => format!("<not under {prefix}>{value}"),
    }
}

fn account_id(account: &str) -> AccountId {
    AccountId::parse(account).expect("a valid account id")
}
