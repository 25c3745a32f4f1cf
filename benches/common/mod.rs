//! Shared pieces of the benchmarks: the database to run on, the server process, a
//! minimal keep-alive HTTP/1.1 client (cheap, so the load generator leaves the cores to
//! the server) and latency statistics.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use stripe_projector::domain::AccountId;
use stripe_projector::projection;
use stripe_projector::store::{DatabaseUrl, Source, Store};
use stripe_projector::stripe::event::{self, CustomerEvent, Delivery};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

pub const SECRET: &str = "whsec_bench";
pub const BIN: &str = env!("CARGO_BIN_EXE_stripe-projector");

/// `--name value` from the command line (after cargo's own `--bench` flag).
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Whether `--name` is on the command line.
pub fn arg_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

pub fn arg_usize(name: &str, default: usize) -> usize {
    arg(name)
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

/// A database for one run: a fresh SQLite file, or a fresh PostgreSQL database created
/// on the server of `--postgres ADMIN_URL` and dropped afterwards.
pub struct BenchDb {
    pub url: String,
    pub label: &'static str,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    pub async fn create() -> Self {
        match arg("--postgres") {
            Some(admin) => {
                let name = format!("sp_bench_{}", std::process::id());
                admin_execute(&admin, &format!("CREATE DATABASE {name}")).await;
                let base = admin
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .unwrap_or(&admin);
                let url = format!("{base}/{name}");
                Self {
                    url,
                    label: "postgresql",
                    postgres: Some((admin, name)),
                    _dir: None,
                }
            }
            None => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite:{}", dir.path().join("bench.db").display());
                Self {
                    url,
                    label: "sqlite",
                    postgres: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&DatabaseUrl::parse(&self.url).unwrap())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// PostgreSQL: vacuums and analyzes the freshly filled database, as autovacuum does on
    /// a log that grew over time, so that a measurement does not pay the first pass's
    /// hint-bit writes over every row nor plan with the statistics of an empty table.
    pub async fn settle(&self) {
        if self.postgres.is_some() {
            admin_execute(&self.url, "VACUUM ANALYZE").await;
        }
    }

    pub async fn drop_database(self) {
        if let Some((admin, name)) = &self.postgres {
            admin_execute(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    }
}

async fn admin_execute(admin: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("PostgreSQL admin connection");
    conn.execute(sql).await.expect(sql);
}

/// A realistic `customer.created` / `customer.updated` event: ~1.3 KB, like Stripe's.
pub fn customer_event(i: usize, accounts: usize, updated: bool) -> String {
    let created = 1_730_000_000 + i as i64;
    json!({
        "id": format!("evt_1Q{i:022}"),
        "object": "event",
        "account": format!("acct_1Bench{:014}", i % accounts),
        "api_version": "2024-06-20",
        "created": created + i64::from(updated),
        "data": {
            "object": {
                "id": format!("cus_Q{i:013}"), "object": "customer",
                "address": null, "balance": 0, "created": created, "currency": null,
                "default_source": null, "delinquent": false, "description": null,
                "discount": null, "email": format!("Buyer.{i}@Example.com"),
                "invoice_prefix": format!("B{i:07X}"),
                "invoice_settings": {"custom_fields": null, "default_payment_method": null,
                                      "footer": null, "rendering_options": null},
                "livemode": false, "metadata": {"order": format!("ord_{i}")},
                "name": format!("Buyer {i}"), "next_invoice_sequence": 1, "phone": null,
                "preferred_locales": ["en"], "shipping": null, "tax_exempt": "none",
                "test_clock": null
            },
            "previous_attributes": if updated { json!({"name": null}) } else { json!(null) }
        },
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": format!("req_{i:014}"), "idempotency_key": format!("ik-{i}")},
        "type": if updated { "customer.updated" } else { "customer.created" }
    })
    .to_string()
}

/// Fills the log (and the projection) with `n` customer events through the library,
/// in batches: the setup of the lookup and replay benchmarks.
pub async fn fill(store: &Store, n: usize, accounts: usize) {
    fill_range(store, 0..n, accounts).await;
}

/// Where `--prefill` events are numbered from: far above any benchmark's own events, so
/// that no id or customer of the measured run is already in the log.
pub const PREFILL_FIRST: usize = 1_000_000_000;

/// Fills the log with the events numbered `range` (see [`customer_event`]), in batches of
/// 1,000, four at a time (on SQLite the writer then joins them into larger transactions).
pub async fn fill_range(store: &Store, range: std::ops::Range<usize>, accounts: usize) {
    use futures_util::StreamExt;
    let platform = AccountId::parse("platform").unwrap();
    let starts = range.clone().step_by(1_000);
    futures_util::stream::iter(starts)
        .for_each_concurrent(4, |start| {
            let batch: Vec<(CustomerEvent, projection::Effect)> = (start
                ..range.end.min(start + 1_000))
                .map(|i| {
                    let body = customer_event(i, accounts, false);
                    let Ok(Delivery::Customer(event)) = event::parse(body.as_bytes(), &platform)
                    else {
                        unreachable!("generated events parse")
                    };
                    let effect = projection::effect_of(&event);
                    (event, effect)
                })
                .collect();
            async move {
                store.append(batch, Source::Import).await.expect("fill");
            }
        })
        .await;
}

/// A release `serve` process.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(database_url: &str) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .trim_start_matches("listening on http://")
            .to_owned();
        Self { child, addr }
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_of(self.child.id())
    }

    /// Resident memory of the process's own (anonymous) pages now, in MiB: the resident
    /// figure without the file pages SQLite's memory map brings in, which are the OS's
    /// file cache.
    pub fn anon_rss_mib(&self) -> f64 {
        status_mib(self.child.id(), "RssAnon:")
    }

    /// Events per group-commit transaction on average so far, from the server's metrics.
    pub async fn mean_commit_batch(&self) -> f64 {
        let mut connection = Connection::open(&self.addr).await;
        connection
            .request(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await;
        let text = String::from_utf8_lossy(&connection.body);
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        value("stripe_projector_commit_batch_events_sum")
            / value("stripe_projector_commit_batch_events_count").max(1.0)
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// CPU time used so far (user + system) by process `pid`, from /proc.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 1_000 / USER_HZ)
}

/// Busy and total CPU time of the whole machine so far (all cores), from /proc/stat.
pub fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th columns.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let ms = |t: u64| Duration::from_millis(t * 1_000 / USER_HZ);
    (ms(total - idle), ms(total))
}

/// The unit of /proc's CPU times: USER_HZ, 100 on every Linux this runs on
/// (`getconf CLK_TCK`).
const USER_HZ: u64 = 100;

/// What the machine's CPUs did during a measured run: the server's own CPU time per
/// request, and how busy all cores were (server, database and load generator together).
pub struct CpuUse {
    server_pid: u32,
    server_start: Duration,
    machine_start: (Duration, Duration),
}

impl CpuUse {
    pub fn start(server_pid: u32) -> Self {
        Self {
            server_pid,
            server_start: process_cpu(server_pid),
            machine_start: machine_cpu(),
        }
    }

    /// "server CPU N µs/request, machine M % busy".
    pub fn report(&self, requests: usize) -> String {
        let server = process_cpu(self.server_pid) - self.server_start;
        let (busy, total) = machine_cpu();
        let busy = busy - self.machine_start.0;
        let total = total - self.machine_start.1;
        format!(
            "server CPU {:.0} µs/request, machine {:.0} % busy",
            server.as_secs_f64() * 1e6 / requests.max(1) as f64,
            busy.as_secs_f64() * 100.0 / total.as_secs_f64().max(1e-9),
        )
    }
}

pub fn peak_rss_of(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A memory figure of /proc/PID/status, in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    reader: AsyncBufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Self {
            reader: AsyncBufReader::new(stream),
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// Sends a whole request (head and body, in one write, as a client with the request
    /// in hand does) and reads the whole answer; returns the status code.
    pub async fn request(&mut self, request: &[u8]) -> u16 {
        let stream = self.reader.get_mut();
        stream.write_all(request).await.expect("write");
        self.line.clear();
        self.reader
            .read_line(&mut self.line)
            .await
            .expect("status line");
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let mut length = 0usize;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await.expect("header");
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("length");
                }
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).await.expect("body");
        status
    }
}

/// Latency percentiles of microsecond samples.
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.0.get(i).copied().unwrap_or_default()) / 1000.0
    }
}

/// Runs `requests` through `concurrency` connections; returns (elapsed, latencies, non-2xx).
pub async fn drive(
    addr: &str,
    concurrency: usize,
    requests: std::sync::Arc<Vec<Vec<u8>>>,
) -> (Duration, Latencies, usize) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (addr, next, requests) = (addr.to_owned(), next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&addr).await;
            let mut samples = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    break;
                };
                let sent = Instant::now();
                let status = connection.request(request).await;
                samples.push(sent.elapsed().as_micros() as u32);
                failures += usize::from(!(200..300).contains(&status));
            }
            (samples, failures)
        }));
    }
    let mut samples = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (mut s, f) = task.await.unwrap();
        samples.append(&mut s);
        failures += f;
    }
    (started.elapsed(), Latencies(samples), failures)
}

pub fn runtime() -> tokio::runtime::Runtime {
    // One thread: the load generator should take as little of the machine as it can.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Serves a stand-in for Stripe's API on a port of its own, on a thread of its own, with
/// the routes and data `configure` gives; returns its base URL.
pub fn serve_stand_in<F>(configure: F) -> String
where
    F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(move || actix_web::App::new().configure(configure.clone()))
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("listen")
                .run()
                .await
        })
    });
    base
}
