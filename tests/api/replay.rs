//! `replay`, `replay --verify` and `prune`: the log rebuilds the same tables.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use proptest::test_runner::{TestCaseError, TestRunner};
use reqwest::StatusCode;
use stripe_projector::projection::{self};
use stripe_projector::replay::{self, Progress, Silent};
use stripe_projector::store::{RebuildKind, Source, Store};
use stripe_projector::stripe::event::{self, Delivery};

use crate::helpers::{self, created, Backend, TestApp, TestDb};
use crate::permutation::{self as generated, Case};
use crate::process::run;

/// Random histories on a fresh database each: incremental projection, replay, and prune
/// followed by replay all give the oracle's table.
fn replay_and_prune_give_the_incremental_tables(backend: Backend) {
    let runtime = helpers::property_runtime();
    let mut config = helpers::proptest_config(generated::DEFAULT_CASES);
    config.cases = config.cases.div_ceil(2);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&generated::case(), |case| {
        let db = runtime.block_on(TestDb::create(backend));
        let outcome = runtime.block_on(check_case(&db, &case));
        drop(db); // its Drop runs a runtime of its own: never inside block_on
        outcome
    });
    if let Err(error) = result {
        panic!("replay/prune on {backend:?}: {error}");
    }
}

/// Replays and checks the table is `expected`.
async fn replay_gives(
    store: &Store,
    expected: &[stripe_projector::store::ProjectedCustomer],
    what: &str,
) -> Result<replay::ReplayReport, TestCaseError> {
    let fail = |e: stripe_projector::store::StoreError| TestCaseError::fail(e.to_string());
    let report = replay::rebuild(store, RebuildKind::Replace, &Silent)
        .await
        .map_err(fail)?;
    let table = store.customers().await.map_err(fail)?;
    proptest::prop_assert_eq!(table.as_slice(), expected, "{}", what);
    Ok(report)
}

async fn check_case(db: &TestDb, case: &Case) -> Result<(), TestCaseError> {
    let store = db.store().await;
    let fail = |e: stripe_projector::store::StoreError| TestCaseError::fail(e.to_string());
    generated::deliver(&store, case, &case.orders()[0], "").await?;
    let expected = generated::oracle_rows(&generated::oracle(case)?);
    let incremental = store.customers().await.map_err(fail)?;
    proptest::prop_assert_eq!(&incremental, &expected, "incremental");

    let report = replay_gives(&store, &expected, "after replay").await?;
    proptest::prop_assert_eq!(report.events, case.history.len() as u64);
    let verify = replay::rebuild(&store, RebuildKind::Verify, &Silent)
        .await
        .map_err(fail)?;
    proptest::prop_assert!(verify.differences.is_empty(), "{:?}", verify.differences);

    // Events extracted by an older projection are re-read from their payloads, alone
    // and mixed with events whose stored columns are trusted.
    db.execute("UPDATE events SET projection_version = 0 WHERE seq % 2 = 0")
        .await;
    replay_gives(&store, &expected, "after replay from columns and payloads").await?;
    db.execute("UPDATE events SET projection_version = 0").await;
    replay_gives(&store, &expected, "after replay from payloads").await?;

    store.prune_superseded(i64::MAX).await.map_err(fail)?;
    replay_gives(&store, &expected, "after prune and replay").await?;
    // Each customer keeps exactly the snapshot that decides it.
    let snapshots = case
        .history
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_snapshot())
        .count();
    let status = store.status().await.map_err(fail)?;
    let others = case.history.len() - snapshots;
    proptest::prop_assert_eq!(status.events as usize, expected.len() + others);
    store_closed(store).await;
    Ok(())
}

async fn store_closed(store: Store) {
    drop(store);
}

property_on_both_backends!(replay_and_prune_give_the_incremental_tables_on_sqlite, replay_and_prune_give_the_incremental_tables_on_postgres => replay_and_prune_give_the_incremental_tables);

/// Fills the log with `n` customers on a few accounts, in batches.
async fn populate(store: &Store, n: usize) {
    let platform = stripe_projector::domain::AccountId::parse(helpers::PLATFORM).unwrap();
    let events: Vec<_> = (0..n)
        .map(|i| {
            let body = created(
                &format!("evt_pop_{i:06}"),
                &format!("acct_{}", i % 5),
                &format!("cus_{i:06}"),
                &format!("p{i}@example.com"),
                1_700_000_000 + i as i64,
            )
            .to_string();
            let Ok(Delivery::Customer(event)) = event::parse(body.as_bytes(), &platform) else {
                panic!()
            };
            let effect = projection::effect_of(&event);
            (event, effect)
        })
        .collect();
    for chunk in events.chunks(500) {
        store.append(chunk.to_vec(), Source::Webhook).await.unwrap();
    }
}

/// Holds a rebuild where its table is built aside and not yet swapped in: `advance` is
/// reported exactly there (see `replay::Progress`), and does not return until released.
struct HoldBeforeSwap {
    held: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
    finished: AtomicBool,
}

/// Bounds the hold, so that a test that fails to release it cannot hang the rebuild.
const HOLD_LIMIT: Duration = Duration::from_secs(120);

impl Progress for HoldBeforeSwap {
    fn start(&self, _: u64) {}

    fn advance(&self, _: u64) {
        if let Some(held) = self.held.lock().unwrap().take() {
            held.send(()).unwrap();
        }
        self.release
            .lock()
            .unwrap()
            .recv_timeout(HOLD_LIMIT)
            .expect("the test releases the rebuild");
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// Looks up a customer `populate` made, by its number; it must be found at every moment.
async fn lookup_populated(app: &TestApp, i: usize, when: &str) {
    let (status, body) = app
        .lookup(&format!(
            "account=acct_{}&email=p{i}%40example.com&livemode=false",
            i % 5
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "lookup of p{i} {when}: {body}");
    assert_eq!(body["customer_id"], format!("cus_{i:06}"), "{when}");
}

/// Delivers customer `n` of `acct_new`; it must be stored at every moment.
async fn deliver_new(app: &TestApp, n: usize, when: &str) {
    let event = created(
        &format!("evt_during_{n}"),
        "acct_new",
        &format!("cus_during_{n}"),
        &format!("d{n}@example.com"),
        1_800_000_000,
    );
    let (status, body) = app.deliver_json(&event).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &serde_json::json!("stored")),
        "delivery {n} {when}"
    );
}

/// A replay is held after building its table aside and before swapping it in; lookups and
/// deliveries run while it is held (so they certainly overlap it: it cannot finish), then
/// on through the catch-up and the swap once it is released. Every lookup finds its
/// customer, every delivery is stored and is in the swapped-in table, and the table that
/// was swapped in is the rebuilt one (it repairs a row removed from the live table).
async fn lookups_and_deliveries_overlap_a_held_replay_and_stay_right(backend: Backend) {
    const CUSTOMERS: usize = 1_000;
    const WHILE_HELD: usize = 40;
    let app = TestApp::spawn(backend).await;
    populate(&app.store, CUSTOMERS).await;
    // Only the rebuilt table has this row: found after the replay, it was swapped in.
    app.db
        .execute("DELETE FROM customers WHERE customer_id = 'cus_000000'")
        .await;
    assert_eq!(
        app.customer_id("acct_0", "p0@example.com", false).await,
        None
    );

    let (held, is_held) = tokio::sync::oneshot::channel();
    let (release, released) = mpsc::channel();
    let progress = Arc::new(HoldBeforeSwap {
        held: Mutex::new(Some(held)),
        release: Mutex::new(released),
        finished: AtomicBool::new(false),
    });
    let replaying = {
        let (store, progress) = (app.store.clone(), progress.clone());
        let runtime = tokio::runtime::Handle::current();
        // A thread of its own: the hold blocks it, not a worker of the test's runtime.
        tokio::task::spawn_blocking(move || {
            runtime.block_on(replay::rebuild(&store, RebuildKind::Replace, &*progress))
        })
    };
    tokio::time::timeout(HOLD_LIMIT, is_held)
        .await
        .expect("the replay reaches its hold")
        .expect("the replay holds");

    for k in 0..WHILE_HELD {
        lookup_populated(
            &app,
            1 + k * 7 % (CUSTOMERS - 1),
            "while the replay is held",
        )
        .await;
        deliver_new(&app, k, "while the replay is held").await;
    }
    // All of the above completed before the replay could swap.
    assert!(!replaying.is_finished() && !progress.finished.load(Ordering::SeqCst));
    release.send(()).unwrap();

    // Through the catch-up and the swap. Bounded: the swap comes long before this count.
    let mut delivered = WHILE_HELD;
    let mut lookups = 0usize;
    while !replaying.is_finished() && lookups < 100_000 {
        lookup_populated(&app, 1 + lookups * 11 % (CUSTOMERS - 1), "during the swap").await;
        if lookups.is_multiple_of(10) {
            deliver_new(&app, delivered, "during the swap").await;
            delivered += 1;
        }
        lookups += 1;
    }
    let report = replaying.await.unwrap().unwrap();
    assert!(progress.finished.load(Ordering::SeqCst));
    // Read up to the horizon taken before the hold: everything delivered since came later
    // and reached the table through the catch-up.
    assert_eq!(report.events, CUSTOMERS as u64);

    for n in 0..delivered {
        let found = app
            .customer_id("acct_new", &format!("d{n}@example.com"), false)
            .await;
        assert_eq!(found, Some(format!("cus_during_{n}")), "delivery {n}");
    }
    for i in (1..CUSTOMERS).step_by(97) {
        lookup_populated(&app, i, "after the replay").await;
    }
    assert_eq!(
        app.customer_id("acct_0", "p0@example.com", false).await,
        Some("cus_000000".to_owned()),
        "the rebuilt table was swapped in"
    );
    let status = app.store.status().await.unwrap();
    assert_eq!(status.customers, status.events);
    assert_eq!(status.events as usize, CUSTOMERS + delivered);
}

async fn verify_reports_damage_and_replay_repairs_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    app.deliver_fixture("seed/02_customer_created_organizer_b.json")
        .await;
    let before = app.store.customers().await.unwrap();
    let url = app.db.url.clone();

    let clean = run(&url, &["replay", "--verify"]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    app.db.execute("UPDATE customers SET email = 'wrong@example.com', email_key = 'wrong@example.com' WHERE account = 'acct_1OrganizerAaaaaaa'").await;
    app.db
        .execute("DELETE FROM customers WHERE account = 'acct_1OrganizerBbbbbbb'")
        .await;
    let damaged_table = app.store.customers().await.unwrap();
    assert_ne!(damaged_table, before);
    let damaged = run(&url, &["replay", "--verify"]);
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{report}");
    assert!(report.contains("acct_1OrganizerAaaaaaa livemode=false cus_Q3IFa65giu0cDn: expected Ada.Lovelace@Example.com (evt_1Qo7ireY8Hq2yVrb8PNLnXTs) vs actual wrong@example.com"), "{report}");
    assert!(report.contains("acct_1OrganizerBbbbbbb livemode=false cus_QhSE3L7ZYTK9XP: expected  ada.lovelace@example.com (evt_1QfnF2PPHhS3Mfn939NhS9eY) vs actual missing"), "{report}");
    assert_eq!(
        app.store.customers().await.unwrap(),
        damaged_table,
        "verify changes nothing"
    );

    let repaired = run(&url, &["replay"]);
    assert_eq!(
        repaired.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(
        String::from_utf8_lossy(&repaired.stdout).starts_with("replayed 2 events into 2 customers")
    );
    assert_eq!(run(&url, &["replay", "--verify"]).status.code(), Some(0));
    assert_eq!(app.store.customers().await.unwrap(), before);
    assert_eq!(
        app.customer_id("acct_1OrganizerBbbbbbb", "ada.lovelace@example.com", false)
            .await
            .as_deref(),
        Some("cus_QhSE3L7ZYTK9XP")
    );
}

async fn prune_keeps_the_deciding_snapshots_and_recent_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = helpers::now();
    let old = now - 40 * 86_400;
    let spec = |id: &'static str, event_type: &'static str, created: i64, email: &'static str| {
        helpers::EventSpec {
            id,
            event_type,
            account: Some("acct_1"),
            created,
            livemode: false,
            customer_id: "cus_1",
            email: Some(email),
            customer_created: old,
        }
    };
    app.deliver_json(&spec("evt_1", "customer.created", old, "a@example.com").to_json())
        .await;
    app.deliver_json(&spec("evt_2", "customer.updated", old + 1, "b@example.com").to_json())
        .await;
    app.deliver_json(&spec("evt_3", "customer.updated", now - 86_400, "c@example.com").to_json())
        .await;
    app.deliver_json(&spec("evt_4", "customer.updated", now, "d@example.com").to_json())
        .await;
    app.deliver_fixture("other/customer_subscription_created.json")
        .await;
    let before = app.store.customers().await.unwrap();

    let pruned = run(&app.db.url, &["prune", "--older-than", "30"]);

    assert_eq!(
        pruned.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert_eq!(printed["removed_superseded_snapshots"], 2);
    for (id, kept) in [
        ("evt_1", false),
        ("evt_2", false),
        ("evt_3", true),
        ("evt_4", true),
        ("evt_1QTQKI4zQK8S9Fx9sTpxAmyO", true),
    ] {
        assert_eq!(app.store.event(id).await.unwrap().is_some(), kept, "{id}");
    }
    assert_eq!(run(&app.db.url, &["replay"]).status.code(), Some(0));
    assert_eq!(app.store.customers().await.unwrap(), before);
}

/// How the customer table is declared: columns (type, collation, nullability, default),
/// constraints and indexes, without the names a rebuild makes unique.
async fn customer_table_declaration(db: &TestDb, backend: Backend) -> Vec<String> {
    let queries: &[&str] = match backend {
        Backend::Postgres => &[
            "SELECT column_name || ' ' || data_type || ' ' || COALESCE(collation_name, '-')
                    || ' ' || is_nullable || ' ' || COALESCE(column_default, '-')
             FROM information_schema.columns WHERE table_name = 'customers'
             ORDER BY ordinal_position",
            "SELECT contype::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'customers'::regclass ORDER BY 1",
            "SELECT regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes
             WHERE tablename = 'customers' ORDER BY 1",
        ],
        Backend::Sqlite => &[
            "SELECT name || ' ' || type || ' ' || \"notnull\" || ' '
                    || COALESCE(dflt_value, '-') || ' ' || pk
             FROM pragma_table_info('customers') ORDER BY cid",
            "SELECT l.origin || ' ' || l.\"unique\" || ' ' || l.partial || ' '
                    || (SELECT group_concat(name, ',') FROM pragma_index_info(l.name))
             FROM pragma_index_list('customers') AS l ORDER BY 1",
            "SELECT replace(substr(sql, instr(sql, ' ON ')), '\"', '') FROM sqlite_master
             WHERE tbl_name = 'customers' AND type = 'index' AND sql IS NOT NULL ORDER BY 1",
        ],
    };
    let mut declaration = Vec::new();
    for sql in queries {
        let rows = db.fetch_strings(sql).await;
        // Index statements are kept as written: only their words count.
        declaration.extend(
            rows.iter()
                .map(|row| row.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    declaration
}

/// The rebuilt table replaces the live one: it must be declared the same way, or the
/// next write or lookup would meet a different table than the migrations made.
async fn replay_keeps_the_customer_table_as_the_migrations_declare_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for fixture in [
        "seed/01_customer_created_organizer_a.json",
        "deletion/01_customer_created.json",
        "deletion/02_customer_deleted.json",
    ] {
        assert_eq!(app.deliver_fixture(fixture).await.0, StatusCode::OK);
    }
    let declared = customer_table_declaration(&app.db, backend).await;
    assert!(declared.len() >= 13, "{declared:#?}");

    for round in 1..=2 {
        let replayed = run(&app.db.url, &["replay"]);
        assert_eq!(replayed.status.code(), Some(0));
        let said = String::from_utf8_lossy(&replayed.stdout);
        assert!(
            said.starts_with("replayed 3 events into 1 customers (1 deleted) in "),
            "{said}"
        );
        assert_eq!(
            customer_table_declaration(&app.db, backend).await,
            declared,
            "after replay {round}"
        );
    }
}

/// A log of several of prune's chunks (each a transaction of its own): every superseded
/// snapshot goes, whichever chunk it is in, and a replay still gives the same table.
async fn a_prune_of_several_chunks_removes_every_superseded_snapshot(backend: Backend) {
    const CUSTOMERS: usize = 12_000;
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let platform = stripe_projector::domain::AccountId::parse(helpers::PLATFORM).unwrap();
    let old = helpers::now() - 40 * 86_400;
    for kind in ["customer.created", "customer.updated"] {
        let events: Vec<_> = (0..CUSTOMERS)
            .map(|i| {
                let mut body = created(
                    &format!("evt_{kind}_{i:06}"),
                    &format!("acct_{}", i % 5),
                    &format!("cus_{i:06}"),
                    &format!("{kind}.{i}@example.com"),
                    old + i64::from(kind == "customer.updated"),
                );
                body["type"] = kind.into();
                let Ok(Delivery::Customer(event)) =
                    event::parse(body.to_string().as_bytes(), &platform)
                else {
                    panic!("{body}")
                };
                let effect = projection::effect_of(&event);
                (event, effect)
            })
            .collect();
        for chunk in events.chunks(1_000) {
            store.append(chunk.to_vec(), Source::Webhook).await.unwrap();
        }
    }
    let before = store.customers().await.unwrap();
    assert_eq!(before.len(), CUSTOMERS);

    let pruned = run(&db.url, &["prune", "--older-than", "30"]);
    assert_eq!(pruned.status.code(), Some(0));
    let printed: serde_json::Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert_eq!(printed["removed_superseded_snapshots"], CUSTOMERS);
    let left = db
        .fetch_strings("SELECT type || ' ' || COUNT(*) FROM events GROUP BY type ORDER BY 1")
        .await;
    assert_eq!(left, [format!("customer.updated {CUSTOMERS}")]);
    assert_eq!(run(&db.url, &["replay"]).status.code(), Some(0));
    assert_eq!(store.customers().await.unwrap(), before);
    store_closed(store).await;
}

/// Tables named in the catalog, among `names`.
async fn tables_among(db: &TestDb, backend: Backend, names: &[&str]) -> Vec<String> {
    let listed = names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = match backend {
        Backend::Postgres => format!(
            "SELECT tablename::text FROM pg_tables WHERE tablename IN ({listed}) ORDER BY 1"
        ),
        Backend::Sqlite => format!(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({listed}) ORDER BY 1"
        ),
    };
    db.fetch_strings(&sql).await
}

/// A replay or verify killed part way leaves its tables (and on SQLite its scratch file)
/// behind: the next one removes them, and each one leaves nothing behind. The log is
/// larger than one of the rebuild's chunks, so the rows are written, and the replaced
/// table deleted, over several transactions.
async fn a_rebuild_cleans_up_after_an_interrupted_one(backend: Backend) {
    const CUSTOMERS: usize = 25_000;
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    populate(&store, CUSTOMERS).await;
    let before = store.customers().await.unwrap();
    assert_eq!(before.len(), CUSTOMERS);
    let leftovers = ["customers_rebuild", "customers_retired", "customers_verify"];
    for table in leftovers {
        db.execute(&format!("CREATE TABLE {table} AS SELECT * FROM customers"))
            .await;
    }
    let scratch_files = |kind: &str| match backend {
        Backend::Sqlite => vec![format!("{}-{kind}", db.url.trim_start_matches("sqlite:"))],
        Backend::Postgres => Vec::new(),
    };
    for kind in ["customers_rebuild", "customers_verify"] {
        for file in scratch_files(kind) {
            std::fs::write(file, "left by a rebuild that was killed").unwrap();
        }
    }

    // A verify leaves a replay's aside table to the next replay.
    let verify = ["customers_retired", "customers_verify"];
    for (command, gone) in [
        (&["replay", "--verify"][..], &verify[..]),
        (&["replay"], &leftovers),
        (&["replay"], &leftovers),
    ] {
        let done = run(&db.url, command);
        assert_eq!(
            done.status.code(),
            Some(0),
            "{command:?}: {}{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(
            store.customers().await.unwrap(),
            before,
            "after {command:?}"
        );
        assert!(
            tables_among(&db, backend, gone).await.is_empty(),
            "{command:?} left a table behind"
        );
    }
    for kind in ["customers_rebuild", "customers_verify"] {
        for file in scratch_files(kind) {
            assert!(!std::path::Path::new(&file).exists(), "{file} is left");
        }
    }
    store_closed(store).await;
}

on_both_backends!(
    a_prune_of_several_chunks_removes_every_superseded_snapshot,
    a_rebuild_cleans_up_after_an_interrupted_one,
    replay_keeps_the_customer_table_as_the_migrations_declare_it,
    lookups_and_deliveries_overlap_a_held_replay_and_stay_right,
    verify_reports_damage_and_replay_repairs_it,
    prune_keeps_the_deciding_snapshots_and_recent_events,
);
