//! A database that cannot be used is named, with the reason, in one line: never a pool
//! timeout without a cause, never the password.

use std::net::TcpListener;

use crate::helpers::{postgres_admin_url, postgres_configured, replace_database};
use crate::process::run;

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
