//! Replay: fill a log with M events, then time the `replay` command and report its peak
//! memory, R times over the same log (each replay rebuilds the same table).
//!
//! cargo bench --bench replay -- [--events 1000000] [--runs 1] [--postgres ADMIN_URL]
//!                                [--unsettled] [--load] [--prune | --verify]
//!
//! With `--prune`, `prune --older-than 0` is timed instead: every event is old enough,
//! and none is superseded (one event per customer), so it reads the whole log and
//! removes nothing: the cost of its pass, and with `--load`, what that pass does to
//! deliveries. With `--verify`, `replay --verify` is timed instead (a clean comparison,
//! unless deliveries arrive during the fill: see `--load`).
//!
//! With `--load`, a `serve` on the same database receives signed deliveries on eight
//! connections throughout each replay, and the line reports how those deliveries fared
//! while the replay ran: count, latency percentiles and answers other than 2xx.
//!
//! On PostgreSQL the filled database is vacuumed and analyzed before the clock starts (see
//! `BenchDb::settle`); `--unsettled` measures right after the bulk fill instead.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stripe_projector::secret::Secret;
use stripe_projector::stripe::signature;

fn main() {
    let events = arg_usize("--events", 1_000_000);
    let runs = arg_usize("--runs", 1);
    // The load (with --load) runs on a thread of its own while the replay is waited for.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = BenchDb::create().await;
        let filling = Instant::now();
        fill(&db.store().await, events, 500).await;
        eprintln!(
            "filled {events} events in {:.1} s",
            filling.elapsed().as_secs_f64()
        );
        if !arg_flag("--unsettled") {
            db.settle().await;
        }
        let server = arg_flag("--load").then(|| Server::start(&db.url));
        for run in 0..runs {
            let load = server.as_ref().map(|server| Load::start(&server.addr, run));
            let url = db.url.clone();
            let label = db.label;
            tokio::task::spawn_blocking(move || replay_once(&url, label, events))
                .await
                .expect("replay");
            if let Some(load) = load {
                println!("  {}", load.stop().await);
            }
        }
        if let Some(server) = server {
            server.stop();
        }
        db.drop_database().await;
    });
}

/// Times one `replay` command (or `prune`, with `--prune`), sampling its peak RSS.
fn replay_once(url: &str, label: &str, events: usize) {
    let command: &[&str] = match (arg_flag("--prune"), arg_flag("--verify")) {
        (true, _) => &["prune", "--older-than", "0"],
        (false, true) => &["replay", "--verify"],
        (false, false) => &["replay"],
    };
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(command)
        .env("DATABASE_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run replay");
    // VmHWM only grows: the last reading before exit is the peak (to within 20 ms).
    let mut peak = 0.0f64;
    while child.try_wait().expect("wait").is_none() {
        peak = peak.max(peak_rss_of(child.id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let output = child.wait_with_output().expect("replay output");
    assert!(output.status.success(), "{} failed", command[0]);
    println!(
        "{} {}: {events} events in {:.2} s ({:.0} events/s), peak RSS {:.0} MiB; it said: {}",
        command[0],
        label,
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        peak,
        String::from_utf8_lossy(&output.stdout).trim(),
    );
}

/// Deliveries sent throughout a replay, on eight connections, each timed.
struct Load {
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, usize)>>,
}

impl Load {
    fn start(addr: &str, run: usize) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let secret = Secret::new(SECRET);
        let tasks = (0..8usize)
            .map(|connection| {
                let (addr, running, secret) = (addr.to_owned(), running.clone(), secret.clone());
                tokio::spawn(async move {
                    let mut open = Connection::open(&addr).await;
                    let (mut samples, mut failures) = (Vec::new(), 0usize);
                    let mut n = 0usize;
                    while running.load(Ordering::SeqCst) {
                        let i = PREFILL_FIRST + run * 100_000_000 + connection * 10_000_000 + n;
                        n += 1;
                        let body = customer_event(i, 500, false).into_bytes();
                        let now = chrono::Utc::now().timestamp();
                        let header = signature::sign(&secret, now, &body);
                        let mut request = format!(
                            "POST /webhooks/stripe HTTP/1.1\r\nHost: bench\r\n\
                             Content-Type: application/json\r\nStripe-Signature: {header}\r\n\
                             Content-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        request.extend_from_slice(&body);
                        let sent = Instant::now();
                        let status = open.request(&request).await;
                        samples.push(sent.elapsed().as_micros() as u32);
                        failures += usize::from(!(200..300).contains(&status));
                    }
                    (samples, failures)
                })
            })
            .collect();
        Self { running, tasks }
    }

    async fn stop(self) -> String {
        self.running.store(false, Ordering::SeqCst);
        let (mut samples, mut failures) = (Vec::new(), 0);
        for task in self.tasks {
            let (mut s, f) = task.await.expect("load");
            samples.append(&mut s);
            failures += f;
        }
        let count = samples.len();
        let mut latencies = Latencies(samples);
        format!(
            "deliveries meanwhile: {count}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
             {failures} not 2xx",
            latencies.percentile_ms(0.50),
            latencies.percentile_ms(0.99),
            latencies.percentile_ms(1.0),
        )
    }
}
