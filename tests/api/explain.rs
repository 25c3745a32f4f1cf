//! `explain`, over HTTP and from the command line: the customers that hold or held an
//! email on one account, the records that decided each one's state, and which one checkout
//! gets by which rule; also after `prune` and `replay`.

use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::replay::{self, Silent};
use stripe_projector::store::RebuildKind;

use crate::helpers::{AppConfig, Backend, EventSpec, TestApp};
use crate::process::run;

const A: &str = "acct_1ExplainAaaaaaaa";
const B: &str = "acct_1ExplainBbbbbbbb";

/// One snapshot event: id, type, customer, email, event created, customer created.
type Snapshot<'a> = (&'a str, &'a str, &'a str, &'a str, i64, i64);

async fn deliver(app: &TestApp, account: &str, snapshot: Snapshot<'_>) {
    let (id, event_type, customer_id, email, created, customer_created) = snapshot;
    let event = EventSpec {
        id,
        event_type,
        account: Some(account),
        created,
        livemode: false,
        customer_id,
        email: Some(email),
        customer_created,
    }
    .to_json();
    assert_eq!(app.deliver_json(&event).await.0, StatusCode::OK);
}

async fn explain(app: &TestApp) -> Value {
    let (status, body) = app
        .get(&format!(
            "/v1/customers/explain?account={A}&email=ADA%40x.io"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn ids(explanation: &Value) -> Vec<&str> {
    explanation["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap())
        .collect()
}

async fn explain_shows_every_holder_its_records_and_checkouts_choice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    deliver(
        &app,
        A,
        (
            "evt_1",
            "customer.created",
            "cus_first",
            "ada@x.io",
            100,
            900,
        ),
    )
    .await;
    deliver(
        &app,
        A,
        (
            "evt_2",
            "customer.created",
            "cus_second",
            "Ada@X.io",
            110,
            1_000,
        ),
    )
    .await;
    deliver(
        &app,
        A,
        (
            "evt_3",
            "customer.created",
            "cus_gone",
            "ada@x.io",
            105,
            800,
        ),
    )
    .await;
    deliver(
        &app,
        A,
        (
            "evt_4",
            "customer.deleted",
            "cus_gone",
            "ada@x.io",
            120,
            800,
        ),
    )
    .await;
    deliver(
        &app,
        A,
        (
            "evt_5",
            "customer.created",
            "cus_moved",
            "ada@x.io",
            100,
            700,
        ),
    )
    .await;
    deliver(
        &app,
        A,
        (
            "evt_6",
            "customer.updated",
            "cus_moved",
            "other@x.io",
            130,
            700,
        ),
    )
    .await;
    deliver(
        &app,
        B,
        (
            "evt_7",
            "customer.created",
            "cus_elsewhere",
            "ada@x.io",
            100,
            100,
        ),
    )
    .await;

    let explanation = explain(&app).await;

    assert_eq!(explanation["checkout"]["answer"], "found");
    assert_eq!(explanation["checkout"]["customer_id"], "cus_first");
    let rule = explanation["checkout"]["rule"].as_str().unwrap();
    assert!(
        rule.starts_with("rule 5: of the 2 live customer(s)"),
        "{rule}"
    );
    assert!(rule.contains("(900)"), "{rule}");
    assert_eq!(
        ids(&explanation),
        ["cus_first", "cus_second", "cus_gone", "cus_moved"]
    );
    let moved = &explanation["customers"][3];
    assert_eq!(moved["holds_key_now"], false);
    assert_eq!(moved["email"], "other@x.io");
    assert_eq!(
        moved["records"],
        json!([
            {"event_id": "evt_6", "type": "customer.updated", "created": 130, "source": "webhook",
             "email": "other@x.io", "deleted": false, "decides": true},
            {"event_id": "evt_5", "type": "customer.created", "created": 100, "source": "webhook",
             "email": "ada@x.io", "deleted": false, "decides": false}
        ])
    );
    let gone = &explanation["customers"][2];
    assert_eq!(
        (gone["deleted"].as_bool(), gone["checkout"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(gone["records"][0]["event_id"], "evt_4");
    assert_eq!(explanation["customers"][0]["checkout"], true);

    // The command prints the same body, and a table for people.
    let output = run(
        &app.db.url,
        &["explain", "--account", A, "--email", "ADA@x.io", "--json"],
    );
    assert_eq!(output.status.code(), Some(0));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, explanation);
    let output = run(
        &app.db.url,
        &["explain", "--account", A, "--email", "ada@x.io"],
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.starts_with("checkout gets cus_first (livemode false): rule 5"),
        "{table}"
    );
    assert!(table.contains("* cus_first"), "{table}");
    assert!(table.contains("> evt_6"), "{table}");

    // prune drops what no longer decides anything: cus_moved's old record, its only trace
    // of the email; a replay then explains alike.
    app.store.prune_superseded(i64::MAX).await.unwrap();
    let pruned = explain(&app).await;
    assert_eq!(pruned["checkout"], explanation["checkout"]);
    assert_eq!(ids(&pruned), ["cus_first", "cus_second", "cus_gone"]);
    replay::rebuild(&app.store, RebuildKind::Replace, &Silent)
        .await
        .unwrap();
    assert_eq!(explain(&app).await, pruned);

    let (status, body) = app
        .get("/v1/customers/explain?account=&email=a%40x.io")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, body) = app
        .get(&format!(
            "/v1/customers/explain?account={A}&email=nobody%40x.io"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"checkout": {"answer": "not_found"}, "customers": []})
    );
}

/// Explain answers what the lookup answers, so it takes the lookup's token.
async fn explain_needs_the_read_token(backend: Backend) {
    let config = AppConfig {
        read_token: Some("read-token-for-explain".to_owned()),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    let url = format!(
        "{}/v1/customers/explain?account={A}&email=a%40x.io",
        app.base
    );
    let refused = app.client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let allowed = app
        .client
        .get(&url)
        .bearer_auth("read-token-for-explain")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
}

on_both_backends!(
    explain_shows_every_holder_its_records_and_checkouts_choice,
    explain_needs_the_read_token,
);
