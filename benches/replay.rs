//! Replay: fill a log with M events, then time the `replay` command and report its peak
//! memory, R times over the same log (each replay rebuilds the same table).
//!
//! cargo bench --bench replay -- [--events 1000000] [--runs 1] [--postgres ADMIN_URL]
//!                                [--unsettled]
//!
//! On PostgreSQL the filled database is vacuumed and analyzed before the clock starts (see
//! `BenchDb::settle`); `--unsettled` measures right after the bulk fill instead.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn main() {
    let events = arg_usize("--events", 1_000_000);
    let runs = arg_usize("--runs", 1);
    let runtime = runtime();
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
        for _ in 0..runs {
            replay_once(&db, events);
        }
        db.drop_database().await;
    });
}

/// Times one `replay` command, sampling its peak RSS.
fn replay_once(db: &BenchDb, events: usize) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("replay")
        .env("DATABASE_URL", &db.url)
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
    assert!(output.status.success(), "replay failed");
    println!(
        "replay {}: {events} events in {:.2} s ({:.0} events/s), peak RSS {:.0} MiB; it said: {}",
        db.label,
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        peak,
        String::from_utf8_lossy(&output.stdout).trim(),
    );
}
