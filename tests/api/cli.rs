//! The command line: exit codes, one-line errors, no secrets in output.

use std::process::Output;

use crate::helpers::{created, Backend, TestApp, TestDb, SECOND_SECRET, SECRET, UNKNOWN_SECRET};
use crate::process::{command, run, Served};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A person's mistake: exit 2, one clear line, no panic, no backtrace.
fn assert_usage_error(output: &Output, mentions: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line, got: {text}");
    assert!(
        text.starts_with("error: ") && text.contains(mentions),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn serve_without_a_webhook_secret_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db").display());
    assert_usage_error(&run(&url, &["serve"]), "STRIPE_WEBHOOK_SECRET");
}

#[test]
fn bad_database_url_bad_flag_and_bad_values_exit_2() {
    assert_usage_error(&run("mysql://localhost/x", &["status"]), "DATABASE_URL");
    assert_usage_error(&run("sqlite::memory:", &["status"]), "in-memory");
    assert_usage_error(
        &run("postgres://u:p@host:notaport/db", &["status"]),
        "DATABASE_URL",
    );
    assert_usage_error(
        &run("sqlite::memory:", &["serve", "--no-such-flag"]),
        "--no-such-flag",
    );
    assert_usage_error(
        &run("sqlite::memory:", &["lookup", "--account", "acct_1"]),
        "--email",
    );
    assert_usage_error(
        &run(
            "sqlite::memory:",
            &[
                "lookup",
                "--account",
                "a",
                "--email",
                "e",
                "--livemode",
                "yes",
            ],
        ),
        "livemode",
    );
    let output = command("sqlite::memory:")
        .args(["serve", "--listen-addr", "not-an-address"])
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert_usage_error(&output, "listen-addr");
}

#[test]
fn a_body_budget_smaller_than_the_largest_body_exits_2() {
    for (flags, max_body_bytes) in [
        (vec!["--max-body-bytes-in-flight", "1048575"], "1048576"),
        (vec!["--max-body-bytes-in-flight", "65535"], "1024"),
    ] {
        let output = command("sqlite::memory:")
            .arg("serve")
            .args(flags)
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .env("MAX_BODY_BYTES", max_body_bytes)
            .output()
            .unwrap();
        assert_usage_error(&output, "MAX_BODY_BYTES_IN_FLIGHT");
    }
}

#[test]
fn errors_never_print_the_secret_or_the_database_password() {
    let output = command("postgres://user:hunter2@127.0.0.1:1/db")
        .arg("serve")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_must_not_leak")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        stderr(&output),
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unreachable database is not a usage error: {text}"
    );
    assert!(
        !text.contains("whsec_must_not_leak") && !text.contains("hunter2"),
        "{text}"
    );
    let help = command("postgres://user:hunter2@host/db")
        .arg("--help")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("hunter2"));
}

async fn lookup_exit_codes_are_0_found_1_not_found_3_ambiguous(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut live = created("evt_live", "acct_1", "cus_live", "Both@Example.com", 1);
    live["livemode"] = true.into();
    app.deliver_json(&created(
        "evt_test",
        "acct_1",
        "cus_test",
        "both@example.com",
        1,
    ))
    .await;
    let url = app.db.url.clone();
    let lookup = |extra: &[&str]| {
        let mut args = vec![
            "lookup",
            "--account",
            "acct_1",
            "--email",
            " BOTH@example.com",
        ];
        args.extend_from_slice(extra);
        run(&url, &args)
    };

    let found = lookup(&[]);
    let not_found = lookup(&["--livemode", "true"]);
    app.deliver_json(&live).await;
    let ambiguous = lookup(&[]);
    let live_found = lookup(&["--livemode", "true"]);

    assert_eq!(found.status.code(), Some(0));
    let body: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(body["customer_id"], "cus_test");
    assert_eq!(body["email"], "both@example.com");
    assert_eq!(not_found.status.code(), Some(1));
    assert_eq!(ambiguous.status.code(), Some(3));
    assert_eq!(live_found.status.code(), Some(0));
}

async fn status_prints_counts_as_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    app.deliver_fixture("other/customer_created_not_a_customer.json")
        .await;

    let output = run(&app.db.url, &["status"]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["events"], 2);
    assert_eq!(body["customers"], 1);
    assert_eq!(body["projection_errors"], 1);
    assert!(body["projection_position"].as_i64().unwrap() >= 2);
}

async fn migrate_creates_the_schema_and_serve_stops_cleanly_on_sigterm(backend: Backend) {
    let db = TestDb::create(backend).await;
    let tables_sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        }
    };
    let migrated = run(&db.url, &["migrate"]);
    assert_eq!(migrated.status.code(), Some(0), "{}", stderr(&migrated));
    let tables = db.fetch_strings(tables_sql).await;
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "backfill_passes",
            "backfill_seen",
            "customers",
            "events"
        ]
    );
    let applied = db
        .fetch_strings("SELECT CAST(version AS TEXT) FROM _sqlx_migrations ORDER BY version")
        .await;
    assert!(!applied.is_empty());
    let again = run(&db.url, &["migrate"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "migrate is idempotent: {}",
        stderr(&again)
    );
    assert_eq!(db.fetch_strings(tables_sql).await, tables);
    assert_eq!(
        db.fetch_strings("SELECT CAST(version AS TEXT) FROM _sqlx_migrations ORDER BY version")
            .await,
        applied
    );

    let mut served = Served::start(&db.url);
    served.terminate();
    let exit = served
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("serve stops within 30 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "graceful stop exits 0");
}

async fn send_signs_like_stripe_and_exits_1_on_any_refusal(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = format!("{}/webhooks/stripe", app.base);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/redelivery/customer_created.json"
    );
    let send = |secret: &str| {
        command(&app.db.url)
            .args(["send", fixture, fixture, "--url", &url])
            .env("STRIPE_WEBHOOK_SECRET", format!("{secret},{SECOND_SECRET}"))
            .output()
            .unwrap()
    };

    let accepted = send(SECRET);
    let refused = send(UNKNOWN_SECRET);

    let printed = String::from_utf8_lossy(&accepted.stdout);
    assert_eq!(accepted.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(r#"200 {"status":"stored""#)
            && printed.contains(r#"200 {"status":"duplicate""#),
        "{printed}"
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("signature_mismatch"));
}

#[test]
fn send_usage_errors_exit_2() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/redelivery/customer_created.json"
    );
    assert_usage_error(
        &run("sqlite::memory:", &["send", fixture]),
        "STRIPE_WEBHOOK_SECRET",
    );
    let with_secret = |args: &[&str]| {
        command("sqlite::memory:")
            .args(args)
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap()
    };
    assert_usage_error(
        &with_secret(&["send", fixture, "--url", "ftp://x"]),
        "--url",
    );
    assert_usage_error(&with_secret(&["send", "/no/such.json"]), "/no/such.json");
}

/// A secret on the command line shows in `ps`: the old `--secret` flag is refused with
/// one line that says what to set instead, and never echoes the value.
#[test]
fn send_refuses_a_secret_on_the_command_line() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/redelivery/customer_created.json"
    );
    for env_secret in [None, Some(SECRET)] {
        let mut command = command("sqlite::memory:");
        command.args([
            "send",
            fixture,
            "--secret",
            "whsec_on_the_command_line",
            "--url",
            "http://127.0.0.1:9/webhooks/stripe",
        ]);
        if let Some(secret) = env_secret {
            command.env("STRIPE_WEBHOOK_SECRET", secret);
        }
        let output = command.output().unwrap();
        assert_usage_error(&output, "STRIPE_WEBHOOK_SECRET");
        let text = stderr(&output);
        assert!(text.contains("--secret"), "{text}");
        assert!(!text.contains("whsec_on_the_command_line"), "{text}");
        assert!(output.stdout.is_empty());
    }
    let help = command("sqlite::memory:")
        .args(["send", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--secret"));
}

on_both_backends!(
    send_signs_like_stripe_and_exits_1_on_any_refusal,
    lookup_exit_codes_are_0_found_1_not_found_3_ambiguous,
    status_prints_counts_as_json,
    migrate_creates_the_schema_and_serve_stops_cleanly_on_sigterm,
);
