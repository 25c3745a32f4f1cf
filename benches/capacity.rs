//! Capacity: what the log and the customer table cost on disk, per event and per customer,
//! and (PostgreSQL) how much write-ahead log an event writes; before and after `prune`.
//!
//! cargo bench --bench capacity -- [--customers 50000] [--postgres ADMIN_URL]
//!
//! Each customer gets a `customer.created` and a `customer.updated` (~1.3 KB each, like
//! Stripe's), 500 accounts, appended through the library in batches of 1,000.

mod common;

use std::time::Instant;

use common::*;
use stripe_projector::domain::AccountId;
use stripe_projector::projection;
use stripe_projector::store::Source;
use stripe_projector::stripe::event::{self, Delivery};

fn main() {
    let customers = arg_usize("--customers", 50_000);
    let runtime = runtime();
    runtime.block_on(async {
        let db = BenchDb::create().await;
        let store = db.store().await;
        let wal_before = wal_position(&db).await;
        let started = Instant::now();
        fill(&store, customers, 500).await;
        fill_updates(&store, customers, 500).await;
        let elapsed = started.elapsed().as_secs_f64();
        let events = 2 * customers;
        let wal = match (wal_before, wal_position(&db).await) {
            (Some(before), Some(after)) => format!(
                ", WAL {:.0} bytes/event",
                (after - before) as f64 / events as f64
            ),
            _ => String::new(),
        };
        let (log, table) = sizes(&db).await;
        println!(
            "capacity {}: {events} events, {customers} customers in {elapsed:.1} s: \
             log {:.0} bytes/event, customer table {:.0} bytes/customer{wal}",
            db.label,
            log as f64 / events as f64,
            table as f64 / customers as f64,
        );
        let pruned = store.prune_superseded(i64::MAX).await.expect("prune");
        let remaining = store.status().await.expect("status").events;
        println!(
            "capacity {}: prune removed {pruned} superseded snapshots; {remaining} events \
             remain, one per customer: a pruned log grows with customers, not events. Files \
             keep their size (freed pages are reused for new rows; {} returns them)",
            db.label,
            if db.label == "sqlite" {
                "VACUUM"
            } else {
                "VACUUM FULL"
            }
        );
        drop(store);
        db.drop_database().await;
    });
}

/// A `customer.updated` for each of the first `customers` customers of [`fill`], with
/// event ids of their own.
async fn fill_updates(store: &stripe_projector::store::Store, customers: usize, accounts: usize) {
    let platform = AccountId::parse("platform").unwrap();
    for start in (0..customers).step_by(1_000) {
        let batch = (start..customers.min(start + 1_000))
            .map(|i| {
                let body = customer_event(i, accounts, true).replacen("\"evt_1Q", "\"evt_1U", 1);
                let Ok(Delivery::Customer(event)) = event::parse(body.as_bytes(), &platform) else {
                    unreachable!("generated events parse")
                };
                let effect = projection::effect_of(&event);
                (event, effect)
            })
            .collect();
        store.append(batch, Source::Import).await.expect("fill");
    }
}

/// The write-ahead log's position (PostgreSQL), in bytes.
async fn wal_position(db: &BenchDb) -> Option<i64> {
    use sqlx::Connection;
    if db.label == "sqlite" {
        return None;
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(&mut conn)
        .await
        .ok()
}

/// Bytes on disk of the log (table and indexes) and of the customer table (table and
/// indexes). SQLite: from `dbstat` over the file's pages.
async fn sizes(db: &BenchDb) -> (i64, i64) {
    use sqlx::Connection;
    if db.label == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(&db.url)
            .await
            .expect("connect");
        let size = |names: &'static str| {
            format!("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ({names})")
        };
        let log: i64 = sqlx::query_scalar(&size("'events', 'sqlite_autoindex_events_1'"))
            .fetch_one(&mut conn)
            .await
            .expect("dbstat");
        let table: i64 = sqlx::query_scalar(&size(
            "'customers', 'sqlite_autoindex_customers_1', 'customers_by_email'",
        ))
        .fetch_one(&mut conn)
        .await
        .expect("dbstat");
        return (log, table);
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query_as("SELECT pg_total_relation_size('events'), pg_total_relation_size('customers')")
        .fetch_one(&mut conn)
        .await
        .expect("sizes")
}
