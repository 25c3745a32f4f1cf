//! `import`: Stripe event exports in every shape, duplicates skipped, bad records reported.

use std::io::Write;
use std::process::{Output, Stdio};

use serde_json::{json, Value};

use crate::helpers::{created, fixture_json, Backend, TestApp};
use crate::process::{command, run};

fn counts(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "counts on stdout: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn list_object_array_and_json_lines_import_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let list = json!({
        "object": "list", "url": "/v1/events", "has_more": false,
        "data": [
            fixture_json("seed/01_customer_created_organizer_a.json"),
            fixture_json("seed/02_customer_created_organizer_b.json"),
            fixture_json("other/invoice_paid.json"),
        ]
    });
    let array = json!([
        fixture_json("email_change/02_customer_updated_email.json"),
        fixture_json("email_change/01_customer_created.json"),
    ]);
    let lines = [
        created("evt_line_1", "acct_9", "cus_l1", "l1@example.com", 10).to_string(),
        created("evt_line_1", "acct_9", "cus_l1", "l1@example.com", 10).to_string(),
        "{\"id\": \"evt_broken\", \"type\": \"customer.created\"".to_owned(),
        created("evt_line_2", "acct_9", "cus_l2", "l2@example.com", 11).to_string(),
    ]
    .join("\n");
    let files = [
        write(&dir, "list.json", &list.to_string()),
        write(&dir, "array.json", &array.to_string()),
        write(&dir, "events.jsonl", &lines),
    ];
    let args = |files: &[String]| {
        let mut args = vec!["import".to_owned()];
        args.extend_from_slice(files);
        args
    };
    let argv = args(&files);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();

    let first = run(&app.db.url, &argv);
    let second = run(&app.db.url, &argv);

    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(
        first.status.code(),
        Some(1),
        "one record was rejected: {stderr}"
    );
    assert_eq!(
        counts(&first),
        json!({"read": 9, "appended": 5, "duplicate": 2, "ignored": 1, "rejected": 1})
    );
    assert!(
        stderr.contains("events.jsonl line 3"),
        "the bad record's position is reported: {stderr}"
    );
    assert_eq!(
        counts(&second),
        json!({"read": 9, "appended": 0, "duplicate": 7, "ignored": 1, "rejected": 1}),
        "re-import is a no-op"
    );
    assert_eq!(app.store.status().await.unwrap().events, 6);
    assert_eq!(
        app.store.event("evt_line_2").await.unwrap().unwrap().source,
        "import"
    );
    assert_eq!(
        app.customer_id("acct_1OrganizerBbbbbbb", "ada.lovelace@example.com", false)
            .await
            .as_deref(),
        Some("cus_QhSE3L7ZYTK9XP")
    );
    assert_eq!(
        app.customer_id("acct_1OrganizerAaaaaaa", "grace.hopper@example.org", false)
            .await
            .as_deref(),
        Some("cus_QEmailChange00001")
    );
    assert_eq!(
        app.customer_id("acct_1OrganizerAaaaaaa", "grace@example.com", false)
            .await,
        None
    );
    let imported = app
        .store
        .event("evt_1QfnF2PPHhS3Mfn939NhS9eY")
        .await
        .unwrap()
        .unwrap();
    let exported: Value = serde_json::from_str(&imported.payload).unwrap();
    assert_eq!(
        exported,
        fixture_json("seed/02_customer_created_organizer_b.json"),
        "the record's own text is the payload"
    );
}

async fn standard_input_and_a_single_event_import(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut child = command(&app.db.url)
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let event = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/platform/customer_created.json"),
    )
    .unwrap();
    child.stdin.take().unwrap().write_all(&event).unwrap();
    let output = child.wait_with_output().unwrap();

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(counts(&output)["appended"], 1);
    let logged = app
        .store
        .event("evt_1QmVE9rglzL35LpBoNEfZcJK")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logged.account, "platform");
    assert_eq!(
        logged.payload.as_bytes(),
        String::from_utf8(event).unwrap().trim_end().as_bytes()
    );
}

async fn exports_starting_with_a_byte_order_mark_import_in_every_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let event = |n: i64| {
        created(
            &format!("evt_bom_{n}"),
            "acct_9",
            &format!("cus_b{n}"),
            "b@x.io",
            n,
        )
    };
    let shapes = [
        (
            "list.json",
            json!({"object": "list", "data": [event(1)], "has_more": false}).to_string(),
        ),
        ("array.json", json!([event(2)]).to_string()),
        (
            "single.json",
            serde_json::to_string_pretty(&event(3)).unwrap(),
        ),
        ("lines.jsonl", format!("{}\n{}\n", event(4), event(5))),
    ];
    let mut argv = vec!["import".to_owned()];
    for (name, text) in &shapes {
        argv.push(write(&dir, name, &format!("\u{feff}{text}")));
    }
    let output = run(
        &app.db.url,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        counts(&output),
        json!({"read": 5, "appended": 5, "duplicate": 0, "ignored": 0, "rejected": 0})
    );
    assert_eq!(app.store.status().await.unwrap().events, 5);
}

#[test]
fn an_unreadable_file_exits_2_before_importing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("db").display());
    let good = write(
        &dir,
        "good.json",
        &created("evt_1", "acct_1", "cus_1", "a@b.c", 1).to_string(),
    );
    let output = run(&url, &["import", &good, "/no/such/file.json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .starts_with("error: cannot read /no/such/file.json"));
    assert!(
        !dir.path().join("db").exists(),
        "nothing was opened, let alone imported"
    );
}

on_both_backends!(
    list_object_array_and_json_lines_import_once,
    standard_input_and_a_single_event_import,
    exports_starting_with_a_byte_order_mark_import_in_every_shape,
);
