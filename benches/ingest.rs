//! Ingestion: N distinct signed customer events (created and updated, ~5 % redeliveries,
//! many accounts) at concurrency C against a release `serve`.
//!
//! cargo bench --bench ingest -- [--events 200000] [--concurrency 64] [--accounts 500]
//!                                [--prefill 0] [--postgres ADMIN_URL]
//!
//! `--prefill N` puts N other events in the log first, to measure how ingestion grows
//! with the log.

mod common;

use std::sync::Arc;

use common::*;
use stripe_projector::secret::Secret;
use stripe_projector::stripe::signature;

fn main() {
    let events = arg_usize("--events", 200_000);
    let concurrency = arg_usize("--concurrency", 64);
    let accounts = arg_usize("--accounts", 500);
    let prefill = arg_usize("--prefill", 0);
    let runtime = runtime();
    runtime.block_on(async {
        let db = BenchDb::create().await;
        // Migrated (and prefilled) before the clock starts.
        let store = db.store().await;
        fill_range(&store, PREFILL_FIRST..PREFILL_FIRST + prefill, accounts).await;
        drop(store);
        db.settle().await;
        let server = Server::start(&db.url);
        let secret = Secret::new(SECRET);
        // Prepared and signed up front: the clock measures the server, not the generator.
        let now = chrono::Utc::now().timestamp();
        let mut requests = Vec::with_capacity(events + events / 20);
        for i in 0..events {
            // Every fourth customer gets an update after its creation.
            let (n, updated) = if i % 4 == 3 {
                (i - 1, true)
            } else {
                (i, false)
            };
            let body = customer_event(n, accounts, updated).into_bytes();
            let body = if updated { body.replace_id(i) } else { body };
            requests.push(request(&secret, now, body));
            if i % 20 == 0 {
                let again = requests[i].clone(); // a redelivery, signed the same way
                requests.push(again);
            }
        }
        let total = requests.len();
        let cpu = CpuUse::start(server.child.id());
        let (elapsed, mut latencies, failures) =
            drive(&server.addr, concurrency, Arc::new(requests)).await;
        let cpu = cpu.report(total);
        let rate = total as f64 / elapsed.as_secs_f64();
        println!(
            "ingest {}: {total} requests ({events} distinct events, {prefill} already in the log) \
             at concurrency {concurrency}: {rate:.0} events/s, p50 {:.2} ms, p90 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms, {failures} non-2xx, {:.1} events per commit, \
             server peak RSS {:.0} MiB ({:.0} MiB anonymous at the end), {cpu}",
            db.label,
            latencies.percentile_ms(0.50),
            latencies.percentile_ms(0.90),
            latencies.percentile_ms(0.99),
            latencies.percentile_ms(1.0),
            server.mean_commit_batch().await,
            server.peak_rss_mib(),
            server.anon_rss_mib(),
        );
        server.stop();
        db.drop_database().await;
    });
}

fn request(secret: &Secret, now: i64, body: Vec<u8>) -> Vec<u8> {
    let header = signature::sign(secret, now, &body);
    let mut request = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Stripe-Signature: {header}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// An update is a new event of an existing customer: give it an event id of its own.
trait ReplaceId {
    fn replace_id(self, i: usize) -> Vec<u8>;
}

impl ReplaceId for Vec<u8> {
    fn replace_id(self, i: usize) -> Vec<u8> {
        let text = String::from_utf8(self).unwrap();
        let (head, rest) = text.split_once("\"id\":\"evt_1Q").unwrap();
        format!("{head}\"id\":\"evt_1U{i:022}{}", &rest[22..]).into_bytes()
    }
}
