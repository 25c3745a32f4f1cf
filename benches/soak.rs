//! Soak: mixed load on the release `serve` for a while, with the faults of real life.
//!
//! cargo bench --bench soak -- [--minutes 10] [--postgres ADMIN_URL]
//!
//! Webhook deliveries (creations and updates in any order, 5 % redeliveries), checkout
//! lookups and `ensure` calls against a local stand-in for Stripe run all along; every
//! minute a `replay --verify` runs beside them, and every two minutes `serve` is killed
//! (SIGKILL) and started again on the same port. At the end: every delivery answered 200
//! is in the log, `replay --verify` is clean, and the server's own resident memory (its
//! anonymous pages) did not grow by more than 10 % after each start's warm-up (30 s).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use common::*;
use serde_json::json;

const KEY: &str = "sk_test_51SoakKey00000000000000000000";
const CUSTOMERS: u64 = 5_000;
const WARM_UP: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    lookups: AtomicU64,
    ensured: AtomicU64,
    /// Answers other than 2xx and 503 (503 is a fault's honest answer).
    unexpected: AtomicU64,
    /// Requests that got no answer (the server was being killed or restarted).
    unanswered: AtomicU64,
}

fn main() {
    let minutes = arg_usize("--minutes", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = BenchDb::create().await;
        drop(db.store().await);
        let stripe = start_stand_in();
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut server = start_serve(&db.url, &addr, &stripe);
        let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let tally: Arc<Tally> = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let mut workers = Vec::new();
        for worker in 0..4u64 {
            let (addr, acked, tally, running) =
                (addr.clone(), acked.clone(), tally.clone(), running.clone());
            workers.push(tokio::spawn(async move {
                deliver(worker, &addr, &acked, &tally, &running).await
            }));
        }
        for worker in 0..2u64 {
            let (addr, tally, running) = (addr.clone(), tally.clone(), running.clone());
            workers.push(tokio::spawn(async move {
                look_up(worker, &addr, &tally, &running).await
            }));
        }
        {
            let (addr, tally, running) = (addr.clone(), tally.clone(), running.clone());
            workers.push(tokio::spawn(async move {
                ensure(&addr, &tally, &running).await
            }));
        }

        let started = Instant::now();
        let deadline = started + Duration::from_secs(60 * minutes as u64);
        let mut life_started = Instant::now();
        let mut warm_rss: Option<f64> = None;
        let mut worst_growth = 0.0f64;
        let (mut verifications, mut restarts) = (0, 0);
        let mut next_verify = started + Duration::from_secs(60);
        let mut next_kill = started + Duration::from_secs(120);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The process's own memory: SQLite's memory-mapped file pages are the OS's
            // file cache, and grow with the file, not with a leak.
            let rss = status_mib(server.id(), "RssAnon:");
            match warm_rss {
                None if life_started.elapsed() >= WARM_UP => warm_rss = Some(rss),
                Some(warm) => worst_growth = worst_growth.max((rss - warm) / warm),
                None => {}
            }
            if Instant::now() >= next_verify {
                assert!(
                    verify(&db.url).await,
                    "replay --verify found differences mid-run"
                );
                verifications += 1;
                next_verify += Duration::from_secs(60);
            }
            if Instant::now() >= next_kill && Instant::now() + WARM_UP < deadline {
                server.kill().expect("SIGKILL");
                server.wait().expect("reap");
                server = start_serve(&db.url, &addr, &stripe);
                restarts += 1;
                life_started = Instant::now();
                warm_rss = None;
                next_kill += Duration::from_secs(120);
            }
        }
        running.store(false, Ordering::SeqCst);
        for worker in workers {
            worker.await.expect("worker");
        }
        let clean = verify(&db.url).await;
        let store = db.store().await;
        let acked = acked.lock().unwrap().clone();
        let mut missing = 0usize;
        for id in &acked {
            if store.event(id).await.expect("read the log").is_none() {
                missing += 1;
            }
        }
        drop(store);
        let _ = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status();
        let _ = server.wait();
        println!(
            "soak {}: {minutes} min, {} deliveries ({} acknowledged events, {missing} missing \
             from the log), {} lookups, {} ensures, {} unexpected answers, {} unanswered \
             (restarts), {restarts} SIGKILL restarts, {verifications} replay --verify mid-run \
             (all clean), final replay --verify {}, worst RSS growth after warm-up {:.1} %",
            db.label,
            tally.delivered.load(Ordering::Relaxed),
            acked.len(),
            tally.lookups.load(Ordering::Relaxed),
            tally.ensured.load(Ordering::Relaxed),
            tally.unexpected.load(Ordering::Relaxed),
            tally.unanswered.load(Ordering::Relaxed),
            if clean { "clean" } else { "NOT CLEAN" },
            worst_growth * 100.0,
        );
        assert_eq!(missing, 0, "acknowledged events missing from the log");
        assert!(clean, "the final replay --verify found differences");
        assert_eq!(tally.unexpected.load(Ordering::Relaxed), 0);
        assert!(
            worst_growth <= 0.10,
            "RSS grew {:.1} % after warm-up",
            worst_growth * 100.0
        );
        db.drop_database().await;
    });
}

fn start_serve(database_url: &str, addr: &str, stripe: &str) -> Child {
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("LISTEN_ADDR", addr)
        .env("STRIPE_SECRET_KEY", KEY)
        .env("STRIPE_API_BASE", stripe)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    assert!(
        line.starts_with("listening on"),
        "serve did not start: {line}"
    );
    child
}

async fn verify(database_url: &str) -> bool {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["replay", "--verify", "--wait"])
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .status()
            .expect("run replay --verify")
            .success()
    })
    .await
    .expect("verify")
}

/// A small deterministic sequence, so runs are alike.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn deliver(
    worker: u64,
    addr: &str,
    acked: &Mutex<HashSet<String>>,
    tally: &Tally,
    running: &AtomicBool,
) {
    let client = reqwest::Client::new();
    let mut state = 0x9E37_79B9_7F4A_7C15 ^ (worker + 1);
    let mut sent: Vec<String> = Vec::new();
    let mut n = 0u64;
    while running.load(Ordering::SeqCst) {
        let body = if !sent.is_empty() && next(&mut state).is_multiple_of(20) {
            // A redelivery: Stripe resends what it is not sure we stored.
            sent[(next(&mut state) as usize) % sent.len()].clone()
        } else {
            n += 1;
            let customer = next(&mut state) % CUSTOMERS;
            let updated = next(&mut state).is_multiple_of(2);
            // Creations and updates of one customer in any order, often in one second.
            let created = 1_700_000_000 + (next(&mut state) % 50) as i64;
            let email = format!("buyer{}@example.com", next(&mut state) % (CUSTOMERS * 2));
            json!({
                "id": format!("evt_soak_{worker}_{n}"), "object": "event",
                "account": format!("acct_1Soak{:04}", customer % 50),
                "type": if updated { "customer.updated" } else { "customer.created" },
                "created": created, "livemode": false,
                "data": {"object": {"id": format!("cus_soak{customer}"), "object": "customer",
                                    "email": email, "name": "Soak", "created": 1_699_999_000}}
            })
            .to_string()
        };
        let id = serde_json::from_str::<serde_json::Value>(&body).expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let signature = stripe_signature(&body);
        match client
            .post(format!("http://{addr}/webhooks/stripe"))
            .header("Stripe-Signature", signature)
            .body(body.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) => {
                tally.delivered.fetch_add(1, Ordering::Relaxed);
                match response.status().as_u16() {
                    200 => {
                        acked.lock().unwrap().insert(id);
                    }
                    503 => {}
                    _ => {
                        tally.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if sent.len() < 10_000 {
                    sent.push(body);
                }
            }
            Err(_) => {
                tally.unanswered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn stripe_signature(body: &str) -> String {
    use hmac::{Hmac, Mac};
    let t = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn look_up(worker: u64, addr: &str, tally: &Tally, running: &AtomicBool) {
    let client = reqwest::Client::new();
    let mut state = 0xD1B5_4A32_D192_ED03 ^ (worker + 1);
    while running.load(Ordering::SeqCst) {
        let url = format!(
            "http://{addr}/v1/customers?account=acct_1Soak{:04}&email=buyer{}%40example.com&livemode=false",
            next(&mut state) % 50,
            next(&mut state) % (CUSTOMERS * 2)
        );
        match client
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) => {
                tally.lookups.fetch_add(1, Ordering::Relaxed);
                if !matches!(response.status().as_u16(), 200 | 404 | 503) {
                    tally.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                tally.unanswered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn ensure(addr: &str, tally: &Tally, running: &AtomicBool) {
    let client = reqwest::Client::new();
    let mut n = 0u64;
    while running.load(Ordering::SeqCst) {
        n += 1;
        let body = json!({"account": format!("acct_1Soak{:04}", n % 50),
                          "email": format!("new{}@example.com", n % 500)});
        match client
            .post(format!("http://{addr}/v1/customers/ensure"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) => {
                tally.ensured.fetch_add(1, Ordering::Relaxed);
                if !matches!(response.status().as_u16(), 200 | 201 | 503) {
                    tally.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                tally.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in for the part of Stripe's API that `ensure` uses: the search and the list
/// find nothing, and a creation returns a new customer (the same one for a repeated
/// idempotency key).
fn start_stand_in() -> String {
    let created: web::Data<Mutex<std::collections::HashMap<String, serde_json::Value>>> =
        web::Data::new(Mutex::default());
    serve_stand_in(move |config| {
        config
            .app_data(created.clone())
            .default_service(web::to(stripe_answer));
    })
}

async fn stripe_answer(
    request: HttpRequest,
    body: web::Bytes,
    created: web::Data<Mutex<std::collections::HashMap<String, serde_json::Value>>>,
) -> HttpResponse {
    match (request.method().as_str(), request.path()) {
        ("GET", "/v1/customers/search") => HttpResponse::Ok().json(
            json!({"object": "search_result", "data": [], "has_more": false, "next_page": null}),
        ),
        ("GET", "/v1/customers") => {
            HttpResponse::Ok().json(json!({"object": "list", "data": [], "has_more": false}))
        }
        ("POST", "/v1/customers") => {
            let key = request
                .headers()
                .get("Idempotency-Key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let form: Vec<(String, String)> =
                web::Query::from_query(std::str::from_utf8(&body).unwrap_or_default())
                    .map(web::Query::into_inner)
                    .unwrap_or_default();
            let email = form
                .iter()
                .find(|(name, _)| name == "email")
                .map(|(_, value)| value.clone());
            let mut created = created.lock().unwrap();
            let number = created.len();
            let customer = created
                .entry(key)
                .or_insert_with(|| {
                    json!({"id": format!("cus_SoakNew{number:08}"), "object": "customer",
                           "email": email, "name": null, "created": 1_700_000_000,
                           "livemode": false})
                })
                .clone();
            HttpResponse::Ok().json(customer)
        }
        _ => HttpResponse::NotFound().json(json!({"error": {"type": "invalid_request_error"}})),
    }
}
