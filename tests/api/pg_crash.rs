//! PostgreSQL crashes under load: the real binary over a PostgreSQL instance of the test's
//! own, stopped with `pg_ctl stop -m immediate` (every backend killed, no checkpoint, as
//! in a crash) while signed deliveries flow, then started again. Every delivery is
//! answered 200 or 503, every 200 is in the log, and the same `serve` process stores
//! again once the database is back, without a restart.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;

use crate::helpers::{
    created, into_json, post_signed, postgres_configured, wait_until_ready, HANG,
};
use crate::process::{serve_command, Served};

/// Deliveries in flight at once.
const IN_FLIGHT: usize = 8;
/// 200s before the crash, so that it hits a server that is storing.
const BEFORE_CRASH: usize = 40;
/// 503s after the crash before the database comes back: the outage has been seen by
/// deliveries that started after it, not only by those it interrupted.
const DURING_OUTAGE: usize = 2 * IN_FLIGHT;
/// 200s for deliveries sent after the restart: the service has recovered.
const AFTER_RESTART: usize = 40;

/// The PostgreSQL binaries of the newest installed version.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|bin| {
        let version = bin.parent().and_then(Path::file_name);
        version.and_then(|v| v.to_str()?.parse::<u32>().ok())
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "TEST_DATABASE_URL is set but no PostgreSQL server binaries (initdb, pg_ctl) \
             were found under /usr/lib/postgresql/*/bin: this test runs an instance of its own"
        )
    })
}

/// A PostgreSQL instance of the test's own in a temporary folder, run as the `postgres`
/// user (initdb refuses root), listening on 127.0.0.1 only with its socket in the folder.
/// Dropping it stops the instance and removes the folder, a failing test included.
struct PgInstance {
    bin: PathBuf,
    folder: tempfile::TempDir,
    port: u16,
}

impl PgInstance {
    fn new() -> Self {
        let bin = postgres_bin();
        let folder = tempfile::Builder::new()
            .prefix("stripe-projector-pg-")
            .tempdir()
            .expect("temporary folder");
        let chown = Command::new("chown")
            .args(["postgres:postgres", path(folder.path())])
            .status()
            .expect("run chown");
        assert!(
            chown.success(),
            "cannot hand the folder to the postgres user"
        );
        // A free port now; another process could take it before the server binds it, and
        // then `start` fails with the log saying so.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // From here on a panic drops the instance, which stops it and removes the folder.
        let instance = Self { bin, folder, port };
        instance.run(
            "initdb",
            &[
                "-D",
                path(&instance.data()),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        instance.start();
        instance
    }

    fn data(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.folder.path().join("postgres.log")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections (crash recovery done).
    fn start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            path(self.folder.path())
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data()),
                "-l",
                path(&self.log()),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Kills the server as a crash would: no shutdown checkpoint, recovery on next start.
    fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data()), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Runs one of the server's programs as the `postgres` user; panics with its output
    /// and the server's log if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} as postgres: {e}"));
        assert!(
            output.status.success(),
            "`{program} {}` failed ({}): {}{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }
}

impl Drop for PgInstance {
    /// Stops the server if it runs; the folder goes with `TempDir`.
    fn drop(&mut self) {
        if !self.data().join("postmaster.pid").exists() {
            return;
        }
        let stopped = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", path(&self.data()), "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
        match stopped {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "cannot stop the test's PostgreSQL instance: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot stop the test's PostgreSQL instance: {e}"),
        }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Where the test is: a delivery is counted in the phase it was sent in.
const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;
const DONE: u8 = 3;

/// One delivery's answer.
struct Answer {
    n: usize,
    sent_in: u8,
    status: StatusCode,
}

fn event(n: usize) -> Vec<u8> {
    created(
        &format!("evt_pgc_{n:05}"),
        "acct_pgc",
        &format!("cus_pgc_{n:05}"),
        &format!("c{n}@example.com"),
        1_700_000_000,
    )
    .to_string()
    .into_bytes()
}

/// Every answer so far, with the phase its delivery was sent in.
#[derive(Default)]
struct Tally {
    answers: Mutex<Vec<Answer>>,
}

impl Tally {
    fn count(&self, sent_in: u8, status: StatusCode) -> usize {
        let answers = self.answers.lock().expect("no worker panics holding it");
        answers
            .iter()
            .filter(|a| a.sent_in == sent_in && a.status == status)
            .count()
    }
}

/// Waits until `count` reaches `at_least`. Fails at once if a delivery worker has stopped
/// (it panicked: an answer other than 200 or 503, or none), and once `HANG` has passed
/// without reaching it. A state to reach, not a timing.
async fn until(
    what: &str,
    tally: &Tally,
    workers: &mut Vec<tokio::task::JoinHandle<()>>,
    (sent_in, status, at_least): (u8, StatusCode, usize),
) {
    let deadline = std::time::Instant::now() + HANG;
    loop {
        if let Some(stopped) = workers.iter().position(|w| w.is_finished()) {
            let worker = workers.swap_remove(stopped);
            match worker.await {
                Err(e) => panic!("waiting for {what}: a delivery worker failed: {e}"),
                Ok(()) => panic!("waiting for {what}: a delivery worker stopped"),
            }
        }
        let count = tally.count(sent_in, status);
        if count >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached: {what} ({count} of {at_least})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends deliveries, `IN_FLIGHT` at a time, until the phase is `DONE`. A worker panics on
/// an answer other than 200 `stored` or 503 `store_unavailable`, on no HTTP answer, and
/// on no answer within `HANG`.
fn deliver_until_done(
    base: &str,
    phase: &Arc<AtomicU8>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    (0..IN_FLIGHT)
        .map(|_| {
            let (client, base, next, phase, tally) = (
                client.clone(),
                base.to_owned(),
                next.clone(),
                phase.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let sent_in = phase.load(Ordering::SeqCst);
                    if sent_in == DONE {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let request = post_signed(&client, &base, &event(n)).send();
                    let response = tokio::time::timeout(HANG, request)
                        .await
                        .unwrap_or_else(|_| panic!("evt_pgc_{n:05}: no answer (a hang)"))
                        .unwrap_or_else(|e| panic!("evt_pgc_{n:05}: no HTTP answer: {e}"));
                    let (status, body) = into_json(response).await;
                    let expected = match status {
                        StatusCode::OK => body["status"] == "stored",
                        StatusCode::SERVICE_UNAVAILABLE => body["error"] == "store_unavailable",
                        _ => false,
                    };
                    assert!(expected, "evt_pgc_{n:05}: answered {status} {body}");
                    tally
                        .answers
                        .lock()
                        .expect("no worker panics holding it")
                        .push(Answer { n, sent_in, status });
                }
            })
        })
        .collect()
}

/// The event ids in the log, read on a connection of the test's own.
async fn logged(url: &str) -> BTreeSet<String> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&mut connection)
        .await
        .expect("read the log");
    connection.close().await.expect("close");
    ids.into_iter().collect()
}

/// PostgreSQL crashes while deliveries flow and comes back: every delivery is answered
/// 200 or 503 `store_unavailable`, never another status and never a hang; every event
/// answered 200 is in the log; the same `serve` process stores again and is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_loses_nothing_and_the_server_recovers() {
    if !postgres_configured() {
        return;
    }
    let instance = PgInstance::new();
    let url = instance.url();
    let mut command = serve_command(&url);
    let serve_log = instance.folder.path().join("serve.log");
    command.stderr(File::create(&serve_log).expect("serve's log file"));
    let mut served = Served::spawn(command);
    let client = reqwest::Client::new();
    wait_until_ready(&client, &served.base).await;

    let phase = Arc::new(AtomicU8::new(UP));
    let tally = Arc::new(Tally::default());
    let mut workers = deliver_until_done(&served.base, &phase, &tally);

    until(
        "200s before the crash",
        &tally,
        &mut workers,
        (UP, StatusCode::OK, BEFORE_CRASH),
    )
    .await;
    phase.store(DOWN, Ordering::SeqCst);
    tokio::task::block_in_place(|| instance.crash());
    until(
        "503s while PostgreSQL is down",
        &tally,
        &mut workers,
        (DOWN, StatusCode::SERVICE_UNAVAILABLE, DURING_OUTAGE),
    )
    .await;
    tokio::task::block_in_place(|| instance.start());
    phase.store(BACK, Ordering::SeqCst);
    until(
        "200s after PostgreSQL is back",
        &tally,
        &mut workers,
        (BACK, StatusCode::OK, AFTER_RESTART),
    )
    .await;
    phase.store(DONE, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("a delivery worker panicked");
    }

    assert!(
        served.child.try_wait().expect("try_wait").is_none(),
        "serve exited: {}",
        std::fs::read_to_string(&serve_log).unwrap_or_default()
    );
    let response = tokio::time::timeout(HANG, client.get(format!("{}/readyz", served.base)).send())
        .await
        .expect("GET /readyz: no answer (a hang)")
        .expect("GET /readyz");
    let (status, body) = into_json(response).await;
    assert_eq!(status, StatusCode::OK, "/readyz after recovery: {body}");

    // Every answer was 200 `stored` or 503 `store_unavailable`: the workers checked each.
    let answers = std::mem::take(&mut *tally.answers.lock().expect("workers are done"));
    let acknowledged: BTreeSet<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .map(|a| format!("evt_pgc_{:05}", a.n))
        .collect();
    let in_log = logged(&url).await;
    let lost: Vec<&String> = acknowledged.difference(&in_log).collect();
    assert!(lost.is_empty(), "answered 200 but not in the log: {lost:?}");

    // Stripe redelivers what was refused: every one is stored now (or was, before the
    // crash was seen, and is a duplicate).
    for a in answers.iter().filter(|a| a.status != StatusCode::OK) {
        let request = post_signed(&client, &served.base, &event(a.n)).send();
        let response = tokio::time::timeout(HANG, request)
            .await
            .expect("redelivery: no answer (a hang)")
            .expect("redelivery");
        let (status, body) = into_json(response).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "redelivery of evt_pgc_{:05}: {body}",
            a.n
        );
    }
    served.kill();
    drop(instance);
}
