//! Each SQL fragment that mirrors a projection rule (`projection::{order, canonical,
//! types}`) against its Rust rule, on random inputs in a real database of each backend:
//!
//! - rule 3: events appended one at a time (so the upsert guard alone decides each row),
//!   then the table rebuilt from the log (the rebuild's newest-snapshot statement); both
//!   tables must hold, for each customer, the snapshot `supersedes` makes the winner;
//! - deletion: the log's `deleted` column, and the version fragment migration 0002 filled
//!   it with, against `Version::deleted`;
//! - rule 6: the log rows the projecting-types fragment selects against
//!   `EventType::projects`;
//! - rule 5: random customer rows written straight into the customer table, and
//!   checkout's answer for each key against `canonical::canonical`;
//! - migration 0002: a log written before it gets `deleted` from each version.
//!
//! One database per backend serves a whole run; each case writes under an account of its
//! own and removes its rows afterwards, so a rebuild sees one case at a time.

use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::json;
use stripe_projector::domain::{AccountId, CustomerId, EmailKey, EventId};
use stripe_projector::lookup::LookupRequest;
use stripe_projector::projection::order::DELETED_FROM_VERSION_SQL;
use stripe_projector::projection::types::PROJECTED_TYPES_SQL;
use stripe_projector::projection::{
    self, canonical, Effect, EventType, Snapshot, TypeRank, Version,
};
use stripe_projector::replay::{self, Silent};
use stripe_projector::store::{Lookup, RebuildKind, Source, Store};
use stripe_projector::stripe::event::{self, CustomerEvent, Delivery};

use crate::helpers::{self, Backend, TestDb};

const CUSTOMERS: [&str; 3] = ["cus_1", "cus_2", "cus_3"];
/// Snapshot types, other `customer.*` types, and near misses of the snapshot types.
const TYPES: [&str; 8] = [
    "customer.created",
    "customer.updated",
    "customer.snapshot",
    "customer.deleted",
    "customer.subscription.created",
    "customer.source.deleted",
    "customer.Created",
    "customer.deleted.x",
];
const EMAILS: [Option<&str>; 4] = [Some("ada@x.io"), Some(" ADA@x.io"), Some("bob@x.io"), None];
const KEYS: [&str; 2] = ["ada@x.io", "bob@x.io"];

/// One event of a rule-3 case.
#[derive(Debug, Clone)]
struct LoggedSpec {
    customer: usize,
    event_type: &'static str,
    /// Event `created`: a tiny range, so seconds tie often, plus both ends of `i64`.
    created: i64,
    /// Leads the event id, so ties on `(created, rank)` fall to an id order of its own.
    tie: u8,
    email: Option<&'static str>,
}

fn logged_spec() -> impl Strategy<Value = LoggedSpec> {
    let created = prop_oneof![6 => -2i64..=2, 1 => Just(i64::MIN), 1 => Just(i64::MAX)];
    (
        0..CUSTOMERS.len(),
        prop::sample::select(&TYPES[..]),
        created,
        0u8..4,
        prop::sample::select(&EMAILS[..]),
    )
        .prop_map(|(customer, event_type, created, tie, email)| LoggedSpec {
            customer,
            event_type,
            created,
            tie,
            email,
        })
}

/// One customer row of a rule-5 case.
#[derive(Debug, Clone)]
struct RowSpec {
    customer: u8,
    livemode: bool,
    customer_created: i64,
    deleted: bool,
    key: Option<&'static str>,
}

fn row_spec() -> impl Strategy<Value = RowSpec> {
    (
        0u8..8,
        prop::bool::weighted(0.3),
        -1i64..=2,
        prop::bool::weighted(0.25),
        prop::sample::select(&[Some(KEYS[0]), Some(KEYS[1]), None][..]),
    )
        .prop_map(
            |(customer, livemode, customer_created, deleted, key)| RowSpec {
                customer,
                livemode,
                customer_created,
                deleted,
                key,
            },
        )
}

property_on_both_backends!(version_fragments_agree_with_rule_3_on_sqlite, version_fragments_agree_with_rule_3_on_postgres => check_rule_3);
property_on_both_backends!(canonical_fragments_agree_with_rule_5_on_sqlite, canonical_fragments_agree_with_rule_5_on_postgres => check_rule_5);

/// Runs `case` on random inputs against one database of `backend`; each run gets an
/// account of its own (shrinking reruns cases).
fn run<S: Strategy>(
    backend: Backend,
    what: &str,
    strategy: S,
    case: impl AsyncFn(&TestDb, &Store, &S::Value, &str) -> Result<(), TestCaseError>,
) {
    let runtime = helpers::property_runtime();
    let db = runtime.block_on(TestDb::create(backend));
    let store = runtime.block_on(db.store());
    let runs = Cell::new(0usize);
    let mut runner = TestRunner::new(helpers::proptest_config(crate::permutation::DEFAULT_CASES));
    let result = runner.run(&strategy, |value| {
        let account = format!("acct_m{}", runs.replace(runs.get() + 1));
        runtime.block_on(async {
            let checked = case(&db, &store, &value, &account).await;
            forget(&db, &account).await;
            checked
        })
    });
    runtime.block_on(async move { drop(store) });
    // TestDb's Drop runs its own runtime on a thread: never inside block_on.
    drop(db);
    if let Err(error) = result {
        panic!("{what} on {backend:?}: {error}");
    }
}

async fn forget(db: &TestDb, account: &str) {
    db.execute(&format!(
        "DELETE FROM customers WHERE account = '{account}';
         DELETE FROM events WHERE account = '{account}';"
    ))
    .await;
}

fn check_rule_3(backend: Backend) {
    let strategy = prop::collection::vec(logged_spec(), 1..=16);
    let case = async |db: &TestDb, store: &Store, specs: &Vec<LoggedSpec>, account: &str| {
        rule_3_case(db, store, specs, account).await
    };
    run(backend, "rule 3", strategy, case);
}

fn check_rule_5(backend: Backend) {
    let strategy = prop::collection::vec(row_spec(), 0..=12);
    let case = async |db: &TestDb, store: &Store, specs: &Vec<RowSpec>, account: &str| {
        rule_5_case(db, store, specs, account).await
    };
    run(backend, "rule 5", strategy, case);
}

async fn rule_3_case(
    db: &TestDb,
    store: &Store,
    specs: &[LoggedSpec],
    account: &str,
) -> Result<(), TestCaseError> {
    let events: Vec<CustomerEvent> = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| event_of(spec, index, account))
        .collect::<Result<_, _>>()?;
    // Rust's answers: each event's snapshot, and each customer's winner by `supersedes`.
    let mut winners: BTreeMap<String, Snapshot> = BTreeMap::new();
    let mut logged = BTreeMap::new();
    for event in &events {
        let effect = projection::effect_of(event);
        if let Effect::Snapshot(snapshot) = &effect {
            let id = snapshot.customer_id.to_string();
            match winners.get(&id) {
                Some(current) if !projection::supersedes(&snapshot.version, &current.version) => {}
                _ => {
                    winners.insert(id, snapshot.clone());
                }
            }
        }
        let deleted = match &effect {
            Effect::Snapshot(snapshot) => Some(snapshot.version.deleted),
            Effect::None | Effect::Error(_) => None,
        };
        logged.insert(event.id.to_string(), (deleted, event.event_type.projects()));
        // One event per transaction: the upsert's guard alone decides each row.
        store
            .append(vec![(event.clone(), effect)], Source::Import)
            .await
            .map_err(|e| TestCaseError::fail(format!("append {}: {e}", event.id)))?;
    }
    let expected: Vec<Row> = winners.values().map(Row::of_snapshot).collect();
    prop_assert_eq!(&table(store, account).await?, &expected, "upserted table");

    // The log: the `deleted` column and the migration's fragment, then rule 6's fragment.
    let sql = format!(
        "SELECT event_id || ' ' || CASE WHEN deleted IS NULL THEN 'null' WHEN deleted THEN 'true'
                               ELSE 'false' END
                || ' ' || CASE WHEN version IS NULL THEN 'null'
                               WHEN {DELETED_FROM_VERSION_SQL} THEN 'true' ELSE 'false' END
                || ' ' || CASE WHEN {PROJECTED_TYPES_SQL} THEN 'true' ELSE 'false' END
         FROM events WHERE account = '{account}' ORDER BY event_id"
    );
    let found = db.fetch_strings(&sql).await;
    let expected_log: Vec<String> = logged
        .iter()
        .map(|(id, (deleted, projects))| {
            let deleted = deleted.map_or("null".to_owned(), |d| d.to_string());
            format!("{id} {deleted} {deleted} {projects}")
        })
        .collect();
    prop_assert_eq!(
        found,
        expected_log,
        "log: deleted, decoded deleted, projects"
    );

    // The rebuild's one statement over the log picks the same winners.
    replay::rebuild(store, RebuildKind::Replace, &Silent)
        .await
        .map_err(|e| TestCaseError::fail(format!("rebuild: {e}")))?;
    prop_assert_eq!(&table(store, account).await?, &expected, "rebuilt table");
    Ok(())
}

async fn rule_5_case(
    db: &TestDb,
    store: &Store,
    specs: &[RowSpec],
    account: &str,
) -> Result<(), TestCaseError> {
    // One row per (mode, customer): the first spec of each.
    let mut rows: BTreeMap<(bool, u8), &RowSpec> = BTreeMap::new();
    for spec in specs {
        rows.entry((spec.livemode, spec.customer)).or_insert(spec);
    }
    let mut snapshots: Vec<(bool, Snapshot)> = Vec::new();
    for (&(livemode, customer), spec) in &rows {
        let customer_id = format!("cus_{customer}");
        let event_id = format!("evt_{customer}");
        let version = Version {
            deleted: spec.deleted,
            created: 0,
            rank: if spec.deleted {
                TypeRank::Deleted
            } else {
                TypeRank::Created
            },
            event_id: EventId::parse(&event_id).expect("an event id"),
        };
        let key = spec.key.map_or("NULL".to_owned(), |key| format!("'{key}'"));
        db.execute(&format!(
            "INSERT INTO customers (account, livemode, customer_id, email, email_key, name,
                                    customer_created, deleted, version, last_event_id,
                                    last_event_created)
             VALUES ('{account}', {livemode}, '{customer_id}', {key}, {key}, NULL,
                     {created}, {deleted}, '{version}', '{event_id}', 0)",
            created = spec.customer_created,
            deleted = spec.deleted,
            version = version.encode(),
        ))
        .await;
        snapshots.push((
            livemode,
            Snapshot {
                customer_id: CustomerId::parse(&customer_id).expect("a customer id"),
                email: spec.key.map(str::to_owned),
                email_key: spec.key.map(|key| EmailKey::parse(key).expect("a key")),
                name: None,
                customer_created: spec.customer_created,
                version,
            },
        ));
    }
    let account_id = AccountId::parse(account).expect("an account");
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for livemode in [false, true] {
        for key in KEYS {
            let email = EmailKey::parse(key).expect("a key");
            let same_mode = snapshots
                .iter()
                .filter(|(mode, _)| *mode == livemode)
                .map(|(_, snapshot)| snapshot);
            expected
                .push(canonical::canonical(same_mode, &email).map(|s| s.customer_id.to_string()));
            requests.push(LookupRequest {
                account: account_id.clone(),
                email,
                livemode: Some(livemode),
            });
        }
    }
    let answers = store
        .lookup_many(&requests)
        .await
        .map_err(|e| TestCaseError::fail(format!("lookup: {e}")))?;
    let found: Vec<Option<String>> = answers
        .into_iter()
        .map(|answer| match answer {
            Lookup::Found(customer) => Some(customer.customer_id),
            Lookup::NotFound | Lookup::AmbiguousLivemode => None,
        })
        .collect();
    prop_assert_eq!(found, expected, "checkout's customer per (mode, key)");
    Ok(())
}

/// A delivery of `spec` under `account`, parsed like the webhook parses one.
fn event_of(
    spec: &LoggedSpec,
    index: usize,
    account: &str,
) -> Result<CustomerEvent, TestCaseError> {
    let id = format!("evt_{}_{account}_{index:02}", spec.tie);
    let customer_id = CUSTOMERS[spec.customer];
    let body = json!({
        "id": id, "object": "event", "type": spec.event_type, "account": account,
        "created": spec.created, "livemode": false,
        "data": {"object": {
            "id": customer_id, "object": "customer", "email": spec.email, "name": null,
            "created": 1,
        }},
    })
    .to_string();
    let platform = AccountId::parse("platform").expect("an account");
    match event::parse(body.as_bytes(), &platform) {
        Ok(Delivery::Customer(event)) => {
            prop_assert_eq!(event.event_type.clone(), EventType::parse(spec.event_type));
            Ok(event)
        }
        other => Err(TestCaseError::fail(format!("{id}: {other:?}"))),
    }
}

/// The fields of a customer row that rule 3 decides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    customer_id: String,
    version: String,
    deleted: bool,
    email_key: Option<String>,
    last_event_id: String,
}

impl Row {
    fn of_snapshot(snapshot: &Snapshot) -> Self {
        Self {
            customer_id: snapshot.customer_id.to_string(),
            version: snapshot.version.encode(),
            deleted: snapshot.version.deleted,
            email_key: snapshot.email_key.as_ref().map(ToString::to_string),
            last_event_id: snapshot.version.event_id.to_string(),
        }
    }
}

/// The customer table's rows of `account`, by customer id.
async fn table(store: &Store, account: &str) -> Result<Vec<Row>, TestCaseError> {
    let rows = store
        .customers()
        .await
        .map_err(|e| TestCaseError::fail(format!("customers: {e}")))?;
    let mut rows: Vec<Row> = rows
        .into_iter()
        .filter(|row| row.account == account)
        .map(|row| Row {
            customer_id: row.customer_id,
            version: row.version,
            deleted: row.deleted,
            email_key: row.email_key,
            last_event_id: row.last_event_id,
        })
        .collect();
    rows.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    Ok(rows)
}

on_both_backends!(
    migration_0002_fills_deleted_from_each_logged_version,
    migration_0003_moves_logged_and_projected_deletions_to_rank_3
);

/// A log written before migration 0002 gets its `deleted` column from the version text,
/// and a rebuild then reads it: the tombstone stays a tombstone.
async fn migration_0002_fills_deleted_from_each_logged_version(backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to_0001(&db, backend).await;
    let version = |deleted: bool, rank: TypeRank, id: &str| {
        Version {
            deleted,
            created: 5,
            rank,
            event_id: EventId::parse(id).expect("an event id"),
        }
        .encode()
    };
    let rows = [
        (
            "evt_1",
            "customer.created",
            "cus_1",
            Some(version(false, TypeRank::Created, "evt_1")),
        ),
        (
            "evt_2",
            "customer.deleted",
            "cus_1",
            Some(version(true, TypeRank::Deleted, "evt_2")),
        ),
        (
            "evt_3",
            "customer.updated",
            "cus_2",
            Some(version(false, TypeRank::Updated, "evt_3")),
        ),
        ("evt_4", "customer.subscription.created", "cus_2", None),
    ];
    for (id, event_type, customer, version) in &rows {
        let version = version
            .as_ref()
            .map_or("NULL".to_owned(), |v| format!("'{v}'"));
        db.execute(&format!(
            "INSERT INTO events (event_id, account, type, created, livemode, source, payload,
                                 customer_id, customer_created, version, projection_version)
             VALUES ('{id}', 'acct_1', '{event_type}', 5, FALSE, 'webhook', '{{}}',
                     '{customer}', 1, {version}, {current})",
            current = projection::PROJECTION_VERSION,
        ))
        .await;
    }
    let store = db.store().await;
    let found = db
        .fetch_strings(
            "SELECT event_id || ' ' || CASE WHEN deleted IS NULL THEN 'null'
                                           WHEN deleted THEN 'true' ELSE 'false' END
             FROM events ORDER BY event_id",
        )
        .await;
    assert_eq!(
        found,
        ["evt_1 false", "evt_2 true", "evt_3 false", "evt_4 null"]
    );
    if backend == Backend::Postgres {
        refuses_a_snapshot_without_deleted(&db).await;
    }
    replay::rebuild(&store, RebuildKind::Replace, &Silent)
        .await
        .expect("rebuild");
    let customers: Vec<(String, bool, String)> = store
        .customers()
        .await
        .expect("customers")
        .into_iter()
        .map(|c| (c.customer_id, c.deleted, c.last_event_id))
        .collect();
    assert_eq!(
        customers,
        [
            ("cus_1".to_owned(), true, "evt_2".to_owned()),
            ("cus_2".to_owned(), false, "evt_3".to_owned())
        ]
    );
    drop(store);
}

/// Deletions logged and projected before migration 0003 carry rank digit 2, which is now
/// the snapshot's: the migration rewrites them, in the log and the table, to exactly what
/// the projection encodes now; other versions are untouched.
async fn migration_0003_moves_logged_and_projected_deletions_to_rank_3(backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to(&db, backend, 2).await;
    let version = |deleted: bool, rank: TypeRank, id: &str| {
        Version {
            deleted,
            created: 5,
            rank,
            event_id: EventId::parse(id).expect("an event id"),
        }
        .encode()
    };
    let deleted_now = version(true, TypeRank::Deleted, "evt_2");
    // Before 0003 a deletion's rank digit (byte 22) was 2.
    let deleted_before = format!("{}2{}", &deleted_now[..21], &deleted_now[22..]);
    let updated = version(false, TypeRank::Updated, "evt_3");
    for (id, event_type, customer, version, deleted) in [
        ("evt_2", "customer.deleted", "cus_1", &deleted_before, true),
        ("evt_3", "customer.updated", "cus_2", &updated, false),
    ] {
        db.execute(&format!(
            "INSERT INTO events (event_id, account, type, created, livemode, source, payload,
                                 customer_id, customer_created, version, projection_version,
                                 deleted)
             VALUES ('{id}', 'acct_1', '{event_type}', 5, FALSE, 'webhook', '{{}}',
                     '{customer}', 1, '{version}', {current}, {deleted})",
            current = projection::PROJECTION_VERSION,
        ))
        .await;
        db.execute(&format!(
            "INSERT INTO customers (account, livemode, customer_id, email, email_key, name,
                                    customer_created, deleted, version, last_event_id,
                                    last_event_created)
             VALUES ('acct_1', FALSE, '{customer}', NULL, NULL, NULL, 1, {deleted},
                     '{version}', '{id}', 5)"
        ))
        .await;
    }
    let store = db.store().await;
    for table in ["events", "customers"] {
        let versions = db
            .fetch_strings(&format!("SELECT version FROM {table} ORDER BY version"))
            .await;
        assert_eq!(versions, [updated.clone(), deleted_now.clone()], "{table}");
    }
    drop(store);
}

/// Applies only the first migration of `backend`, as a release before 0002 left it.
async fn migrate_to_0001(db: &TestDb, backend: Backend) {
    migrate_to(db, backend, 1).await;
}

/// Applies the migrations of `backend` up to `last`, as the release that had no later one
/// left the database.
async fn migrate_to(db: &TestDb, backend: Backend, last: i64) {
    use sqlx::migrate::Migrator;
    use sqlx::ConnectOptions;
    let folder = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let mut migrator = Migrator::new(std::path::Path::new(folder))
        .await
        .expect("migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|migration| migration.version <= last)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    assert_eq!(migrator.migrations.len() as i64, last);
    match backend {
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().expect("url");
            let mut connection = options
                .create_if_missing(true)
                .connect()
                .await
                .expect("connect");
            migrator.run(&mut connection).await.expect("the migrations");
        }
        Backend::Postgres => {
            let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("url");
            let mut connection = options.connect().await.expect("connect");
            migrator.run(&mut connection).await.expect("the migrations");
        }
    }
}

/// PostgreSQL: after 0002, a snapshot logged without `deleted` (as a process of an older
/// release would write it) is refused.
async fn refuses_a_snapshot_without_deleted(db: &TestDb) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let refused = sqlx::query(
        "INSERT INTO events (event_id, account, type, created, livemode, source, payload,
                             customer_id, customer_created, version, projection_version)
         VALUES ('evt_old', 'acct_1', 'customer.updated', 6, FALSE, 'webhook', '{}',
                 'cus_2', 1, '0x', 2)",
    )
    .execute(&mut connection)
    .await;
    assert!(
        matches!(&refused, Err(sqlx::Error::Database(e)) if e.is_check_violation()),
        "{refused:?}"
    );
}
