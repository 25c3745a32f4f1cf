//! Faults: SIGKILL at any point and store outages lose nothing that was acknowledged and
//! never leave an event half-stored.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use stripe_projector::domain::AccountId;
use stripe_projector::projection::{self, Effect, ReadModel};
use stripe_projector::store::Store;
use stripe_projector::stripe::event::{self, Delivery};

use crate::helpers::{
    created, into_json, post_signed, postgres_configured, wait_until_ready, Backend, EventSpec,
    TestApp, TestDb, HANG, PLATFORM,
};
use crate::permutation::oracle_rows;
use crate::process::Served;

/// Acknowledgements counted before each SIGKILL, one `serve` process per kill point.
const KILL_POINTS: [usize; 5] = [0, 1, 10, 50, 200];
const CONCURRENCY: usize = 16;

/// Event `n` of round `round`: customers get a creation, an update that moves them to an
/// email shared across accounts, and sometimes a deletion, so the projection has work to
/// get wrong (collisions, moves, tombstones) if an event were half-applied.
fn crash_event(round: usize, n: usize) -> Vec<u8> {
    let customer = n / 3;
    let accounts = [Some("acct_K1"), Some("acct_K2"), None];
    let account = accounts[customer % 3];
    let id = format!("evt_r{round}_{n:04}");
    let customer_id = format!("cus_r{round}_{customer:03}");
    let own = format!("k{round}_{customer}@example.com");
    let shared = format!("Shared{}@Example.com", customer % 4);
    let (event_type, email, created) = match n % 3 {
        0 => ("customer.created", own.as_str(), 1_700_000_000),
        1 => ("customer.updated", shared.as_str(), 1_700_000_001),
        _ if customer.is_multiple_of(2) => ("customer.deleted", shared.as_str(), 1_700_000_002),
        _ => ("customer.updated", own.as_str(), 1_700_000_002),
    };
    EventSpec {
        id: &id,
        event_type,
        account,
        created,
        livemode: customer.is_multiple_of(5),
        customer_id: &customer_id,
        email: Some(email),
        customer_created: 1_700_000_000,
    }
    .to_json()
    .to_string()
    .into_bytes()
}

/// Sends round `round`'s events with `CONCURRENCY` in flight and SIGKILLs `serve` as soon
/// as `kill_after` of them were answered 2xx. Returns every event that got a 2xx, those
/// answered in the instant before the kill included.
async fn load_then_kill(served: &mut Served, round: usize, kill_after: usize) -> BTreeSet<String> {
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<String>();
    let total = kill_after + 200;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, base, next, started, acks) = (
                client.clone(),
                base.clone(),
                next.clone(),
                started.clone(),
                acks.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    let body = crash_event(round, n);
                    let request = post_signed(&client, &base, &body);
                    started.fetch_add(1, Ordering::SeqCst);
                    match request.send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = acks.send(format!("evt_r{round}_{n:04}"));
                        }
                        Ok(response) => panic!("a healthy server answered {}", response.status()),
                        // The process is gone: this delivery and every later one fail.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    drop(acks);

    let mut acknowledged = BTreeSet::new();
    if kill_after == 0 {
        // Kill with the first deliveries on their way and none answered yet (any answered
        // already are collected below and checked like the others).
        while started.load(Ordering::SeqCst) < CONCURRENCY {
            tokio::task::yield_now().await;
        }
    } else {
        while acknowledged.len() < kill_after {
            let id = tokio::time::timeout(HANG, acked.recv())
                .await
                .expect("deliveries are answered")
                .expect("enough deliveries to reach the kill point");
            acknowledged.insert(id);
        }
    }
    served.kill();
    for worker in workers {
        worker.await.expect("a delivery worker panicked");
    }
    while let Some(id) = acked.recv().await {
        acknowledged.insert(id);
    }
    assert!(
        next.load(Ordering::SeqCst) < total,
        "deliveries were still in flight when serve was killed"
    );
    acknowledged
}

/// The whole log, read back through the store.
async fn logged_events(store: &Store) -> Vec<(String, String)> {
    store
        .log_page(0, i64::MAX, i64::MAX, i64::MAX, false)
        .await
        .expect("read the log")
        .into_iter()
        .map(|record| {
            (
                record.event_id,
                record.payload.expect("asked for every payload"),
            )
        })
        .collect()
}

/// Nothing half-stored: the customer table is exactly the pure projection of the events
/// in the log, and every acknowledged event is in the log, with its projection applied.
async fn check_consistent(store: &Store, acknowledged: &BTreeSet<String>) {
    let platform = AccountId::parse(PLATFORM).unwrap();
    let mut model = ReadModel::default();
    let mut versions = std::collections::HashMap::new();
    for (event_id, payload) in logged_events(store).await {
        let Ok(Delivery::Customer(event)) = event::parse(payload.as_bytes(), &platform) else {
            panic!("{event_id}: the logged payload does not parse");
        };
        if let Effect::Snapshot(snapshot) = projection::effect_of(&event) {
            let key = (
                event.account.to_string(),
                event.livemode,
                snapshot.customer_id.to_string(),
            );
            versions.insert(event_id, (key, snapshot.version.encode()));
        }
        model.apply(&event);
    }
    let rows = store.customers().await.unwrap();
    assert_eq!(
        rows,
        oracle_rows(&model),
        "the table is not the projection of the log"
    );
    for event_id in acknowledged {
        let (key, version) = versions
            .get(event_id)
            .unwrap_or_else(|| panic!("{event_id} was acknowledged but is not in the log"));
        let row = rows
            .iter()
            .find(|row| (&row.account, row.livemode, &row.customer_id) == (&key.0, key.1, &key.2))
            .unwrap_or_else(|| panic!("{event_id} is logged but its customer is not projected"));
        assert!(
            row.version >= *version,
            "{event_id} is logged but the table holds an older snapshot"
        );
    }
}

async fn acknowledged_events_survive_sigkill_at_every_kill_point(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let mut acknowledged = BTreeSet::new();
    for (round, &kill_after) in KILL_POINTS.iter().enumerate() {
        let mut served = Served::start(&db.url);
        let acked = load_then_kill(&mut served, round, kill_after).await;
        assert!(acked.len() >= kill_after, "round {round}");
        acknowledged.extend(acked);

        // The restarted process serves what was acknowledged before the kill.
        let restarted = Served::start(&db.url);
        check_consistent(&store, &acknowledged).await;
        let client = reqwest::Client::new();
        let (status, _) = into_json(
            client
                .get(format!("{}/readyz", restarted.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        drop(restarted);
    }
    assert!(acknowledged.len() >= KILL_POINTS.iter().sum::<usize>());
}

on_both_backends!(acknowledged_events_survive_sigkill_at_every_kill_point);

/// PostgreSQL refusing connections: concurrent deliveries and lookups all get 503
/// `store_unavailable` (never a 2xx, never a hang), and after the database is back every
/// one of them, redelivered, is stored, without a restart. (`ops/readiness.rs` covers `/readyz` and
/// one delivery; this is the load and the lookups.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_to_everything_and_recovers() {
    if !postgres_configured() {
        return;
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let event = |i: usize| {
        created(
            &format!("evt_outage_{i}"),
            "acct_outage",
            &format!("cus_outage_{i}"),
            &format!("o{i}@example.com"),
            1_700_000_000,
        )
    };
    assert_eq!(app.deliver_json(&event(0)).await.0, StatusCode::OK);

    app.db.refuse_connections().await;
    let deliveries = futures_util::future::join_all((1..=8).map(|i| {
        let body = event(i);
        let app = &app;
        async move { tokio::time::timeout(HANG, app.deliver_json(&body)).await }
    }));
    let lookup = tokio::time::timeout(
        HANG,
        app.lookup("account=acct_outage&email=o0%40example.com&livemode=false"),
    );
    let (answers, lookup) = tokio::join!(deliveries, lookup);
    for answer in answers {
        let (status, body) = answer.expect("a delivery hung during the outage");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "store_unavailable");
    }
    let (status, body) = lookup.expect("a lookup hung during the outage");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);

    app.db.allow_connections().await;
    // Ready again without a restart.
    wait_until_ready(&app.client, &app.base).await;
    for i in 1..=8 {
        let (status, body) = app.deliver_json(&event(i)).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("stored")),
            "Stripe's retry of evt_outage_{i}"
        );
    }
    let (status, body) = app
        .lookup("account=acct_outage&email=o8%40example.com&livemode=false")
        .await;
    assert_eq!(
        (status, &body["customer_id"]),
        (StatusCode::OK, &json!("cus_outage_8"))
    );
    assert_eq!(app.store.status().await.unwrap().events, 9);
}

/// SQLite whose write lock another process holds past the 5 s busy timeout: deliveries
/// answer 503 `store_unavailable` (never a 2xx), lookups keep answering (WAL readers are
/// not blocked), and deliveries are stored again once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_past_the_busy_timeout_answers_503_and_recovers() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn(Backend::Sqlite).await;
    let first = created("evt_lock_0", "acct_lock", "cus_lock_0", "l0@example.com", 1);
    assert_eq!(app.deliver_json(&first).await.0, StatusCode::OK);

    // Tests run as root, so a read-only file would not stop the writer: hold the lock.
    let mut holder = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
    holder.execute("BEGIN IMMEDIATE").await.unwrap();
    let blocked = created("evt_lock_1", "acct_lock", "cus_lock_1", "l1@example.com", 1);
    let (answer, lookup) = tokio::join!(
        tokio::time::timeout(HANG, app.deliver_json(&blocked)),
        app.lookup("account=acct_lock&email=l0%40example.com&livemode=false"),
    );
    let (status, body) = answer.expect("a delivery hung on the locked database");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(lookup.0, StatusCode::OK, "reads go on: {}", lookup.1);
    assert!(app.store.event("evt_lock_1").await.unwrap().is_none());

    holder.execute("ROLLBACK").await.unwrap();
    let (status, body) = app.deliver_json(&blocked).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    assert_eq!(
        app.customer_id("acct_lock", "l1@example.com", false).await,
        Some("cus_lock_1".to_owned())
    );
}
