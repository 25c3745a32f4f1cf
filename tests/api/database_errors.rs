//! A database that cannot be used is named, with the reason, in one line: never a pool
//! timeout without a cause, never the password.

use std::net::TcpListener;

use crate::helpers::{
    postgres_admin_url, postgres_configured, replace_database, Backend, TestDb, HANG,
};
use crate::process::run;
use crate::process::{serve_command, Served};

/// Runs `status` against `url`: exit 1 and one line on stderr, returned.
fn refused(url: &str) -> String {
    let output = run(url, &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot open the database: "),
        "{stderr}"
    );
    stderr
}

#[test]
fn an_sqlite_file_that_cannot_be_opened_names_the_file_and_the_reason() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("no-such-folder").join("projector.db");
    let stderr = refused(&format!("sqlite:{}", path.display()));
    assert!(
        stderr.contains(&format!("SQLite file {}", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unable to open database file"), "{stderr}");
}

#[test]
fn a_postgres_server_that_refuses_names_the_server_and_the_reason() {
    if !postgres_configured() {
        return;
    }
    let admin = postgres_admin_url().unwrap();
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let stderr = refused(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/postgres"
    ));
    assert!(
        stderr.contains(&format!(
            "PostgreSQL server 127.0.0.1:{port}, database \"postgres\": connection refused"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");

    let missing = replace_database(&admin, "sp_test_no_such_database");
    let stderr = refused(&missing);
    assert!(
        stderr.contains("database \"sp_test_no_such_database\" does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("PostgreSQL server "), "{stderr}");
}

/// Behind a 503 from `/readyz`, the log says which server and why, not only that a pool
/// timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_while_serving_is_named_with_the_reason_in_the_log() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::create(Backend::Postgres).await;
    let folder = tempfile::tempdir().unwrap();
    let log = folder.path().join("serve.log");
    let mut command = serve_command(&db.url);
    command.stderr(std::process::Stdio::from(
        std::fs::File::create(&log).unwrap(),
    ));
    let mut served = Served::spawn(command);
    let client = reqwest::Client::new();
    db.refuse_connections().await;

    let ready = client
        .get(format!("{}/readyz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    db.allow_connections().await;
    served.terminate();
    assert!(served.wait_exit(HANG).is_some());
    let logged = std::fs::read_to_string(&log).unwrap();
    let name = db.url.rsplit('/').next().unwrap();
    let line = logged
        .lines()
        .find(|line| line.contains("not ready"))
        .unwrap_or_else(|| panic!("no readiness line in:\n{logged}"));
    let location = format!("PostgreSQL server 127.0.0.1:5432, database \"{name}\": ");
    assert!(line.contains(&location), "{line}");
    // The server's own words: the pool's connection was ended, or a new one refused.
    assert!(
        line.contains("terminating connection") || line.contains("not currently accepting"),
        "{line}"
    );
}
