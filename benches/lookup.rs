//! Lookups: requests/s and latency of `GET /v1/customers` against a populated read model.
//!
//! cargo bench --bench lookup -- [--customers 100000] [--requests 200000]
//!                                [--concurrency 64] [--postgres ADMIN_URL]

mod common;

use std::sync::Arc;

use common::*;

fn main() {
    let customers = arg_usize("--customers", 100_000);
    let total = arg_usize("--requests", 200_000);
    let concurrency = arg_usize("--concurrency", 64);
    let accounts = 500;
    let runtime = runtime();
    runtime.block_on(async {
        let db = BenchDb::create().await;
        fill(&db.store().await, customers, accounts).await;
        db.settle().await;
        let server = Server::start(&db.url);
        // A spread of customers, about one in ten asked for one that does not exist.
        let requests: Vec<Vec<u8>> = (0..total)
            .map(|n| {
                let i = n.wrapping_mul(2_654_435_761) % (customers + customers / 10);
                let head = format!(
                    "GET /v1/customers?account=acct_1Bench{:014}&email=buyer.{i}%40example.com&livemode=false \
                     HTTP/1.1\r\nHost: bench\r\n\r\n",
                    i % accounts
                );
                head.into_bytes()
            })
            .collect();
        let cpu = CpuUse::start(server.child.id());
        let (elapsed, mut latencies, not_found) =
            drive(&server.addr, concurrency, Arc::new(requests)).await;
        let cpu = cpu.report(total);
        println!(
            "lookup {}: {total} lookups over {customers} customers at concurrency {concurrency}: \
             {:.0} lookups/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
             ({not_found} were 404 by design), server peak RSS {:.0} MiB ({:.0} MiB anonymous at the end), {cpu}",
            db.label,
            total as f64 / elapsed.as_secs_f64(),
            latencies.percentile_ms(0.50),
            latencies.percentile_ms(0.90),
            latencies.percentile_ms(0.99),
            latencies.percentile_ms(1.0),
            server.peak_rss_mib(),
            server.anon_rss_mib(),
        );
        server.stop();
        db.drop_database().await;
    });
}
