//! Backfill: the `backfill` command against a local stand-in for Stripe's customer list,
//! N customers over A accounts; reports customers recorded per second, requests per
//! second and the command's peak RSS.
//!
//! cargo bench --bench backfill -- [--customers 100000] [--accounts 100] [--rate 10000]
//!                                 [--concurrency 4] [--postgres ADMIN_URL]
//!
//! The stand-in answers `GET /v1/customers?limit=100[&starting_after=...]` per
//! `Stripe-Account` from pages rendered before the clock starts, at once and without a
//! limit of its own, so the figure is the command's and the database's. With `--rate R`
//! below what the command can do, requests per second shows how close it keeps to R.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use common::*;

/// `(account, starting_after)` -> the page's JSON.
type Pages = HashMap<(String, String), web::Bytes>;

fn main() {
    let customers = arg_usize("--customers", 100_000);
    let accounts = arg_usize("--accounts", 100).max(1);
    let rate = arg_usize("--rate", 10_000);
    let concurrency = arg_usize("--concurrency", 4);
    let runtime = runtime();
    runtime.block_on(async {
        let db = BenchDb::create().await;
        let (base, account_ids) = start_stand_in(customers, accounts);
        let mut command = Command::new(BIN);
        command
            .arg("backfill")
            .args(["--rate", &rate.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .env("DATABASE_URL", &db.url)
            .env("STRIPE_SECRET_KEY", "sk_test_51BenchKey0000000000000000")
            .env("STRIPE_API_BASE", &base)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        for account in &account_ids {
            command.args(["--account", account]);
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("run backfill");
        // VmHWM only grows: the last reading before exit is the peak (to within 20 ms).
        let mut peak = 0.0f64;
        while child.try_wait().expect("wait").is_none() {
            peak = peak.max(peak_rss_of(child.id()));
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let output = child.wait_with_output().expect("backfill output");
        assert!(output.status.success(), "backfill failed");
        let counts: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("the counts line");
        assert_eq!(
            counts["recorded"].as_u64(),
            Some(customers as u64),
            "{counts}"
        );
        let requests = counts["requests"].as_u64().unwrap_or_default();
        println!(
            "backfill {}: {customers} customers over {accounts} accounts in {elapsed:.2} s: \
             {:.0} customers/s, {:.1} requests/s (--rate {rate}, --concurrency {concurrency}), \
             peak RSS {peak:.0} MiB",
            db.label,
            customers as f64 / elapsed,
            requests as f64 / elapsed,
        );
        db.drop_database().await;
    });
}

/// Starts the stand-in on a free loopback port, on threads of its own; returns its base
/// URL and the account ids.
fn start_stand_in(customers: usize, accounts: usize) -> (String, Vec<String>) {
    let account_ids: Vec<String> = (0..accounts)
        .map(|a| format!("acct_1Bench{a:06}"))
        .collect();
    let mut pages = Pages::new();
    for (a, account) in account_ids.iter().enumerate() {
        // Newest first, as Stripe lists them.
        let ids: Vec<usize> = (0..customers).filter(|c| c % accounts == a).rev().collect();
        let chunks: Vec<&[usize]> = ids.chunks(100).collect();
        let mut after = String::new();
        for (n, chunk) in chunks.iter().enumerate() {
            let data: Vec<serde_json::Value> = chunk.iter().map(|&c| customer(c)).collect();
            let body = serde_json::json!({
                "object": "list", "data": data, "has_more": n + 1 < chunks.len(),
                "url": "/v1/customers"
            });
            pages.insert(
                (account.clone(), after.clone()),
                web::Bytes::from(body.to_string()),
            );
            after = format!("cus_Bench{:08}", chunk[chunk.len() - 1]);
        }
        if chunks.is_empty() {
            let empty = r#"{"object":"list","data":[],"has_more":false,"url":"/v1/customers"}"#;
            pages.insert(
                (account.clone(), String::new()),
                web::Bytes::from_static(empty.as_bytes()),
            );
        }
    }
    let pages = web::Data::new(Arc::new(pages));
    let base = serve_stand_in(move |config| {
        config
            .app_data(pages.clone())
            .default_service(web::to(page));
    });
    (base, account_ids)
}

async fn page(request: HttpRequest, pages: web::Data<Arc<Pages>>) -> HttpResponse {
    let account = request
        .headers()
        .get("Stripe-Account")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let query = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let after = query
        .iter()
        .find(|(name, _)| name == "starting_after")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    match pages.get(&(account, after)) {
        Some(body) if request.path() == "/v1/customers" => HttpResponse::Ok()
            .content_type("application/json")
            .body(body.clone()),
        _ => HttpResponse::NotFound()
            .json(serde_json::json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}})),
    }
}

/// A Customer object shaped like Stripe's (about 800 bytes).
fn customer(c: usize) -> serde_json::Value {
    serde_json::json!({
        "id": format!("cus_Bench{c:08}"), "object": "customer", "address": null, "balance": 0,
        "created": 1_600_000_000 + c as i64, "currency": "eur", "default_source": null,
        "delinquent": false, "description": null, "discount": null,
        "email": format!("buyer{c}@example.com"), "invoice_prefix": format!("B{c:07}"),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                             "footer": null, "rendering_options": null},
        "livemode": false, "metadata": {"source": "bench"}, "name": format!("Buyer {c}"),
        "next_invoice_sequence": 1, "phone": null, "preferred_locales": ["en"],
        "shipping": null, "tax_exempt": "none", "test_clock": null
    })
}
