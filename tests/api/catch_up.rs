//! `catch-up` through the real binary, against the fake Stripe and real databases.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::backfill::{finish, outcome, sync_command, A, B};
use crate::fake_stripe::{customer_object, FakeStripe};
use crate::helpers::{encode, now, Backend, TestApp, PLATFORM};

fn event(
    id: &str,
    account: Option<&str>,
    kind: &str,
    created: i64,
    customer: &str,
    email: &str,
) -> Value {
    let mut event = json!({
        "id": id, "object": "event", "type": kind, "created": created, "livemode": false,
        "api_version": "2024-06-20", "pending_webhooks": 0, "request": null,
        "data": {"object": customer_object(customer, Some(email), None, 1_700_000_000, false)}
    });
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

async fn found(app: &TestApp, account: &str, email: &str) -> Option<String> {
    let (status, body) = app
        .lookup(&format!(
            "account={account}&email={}&livemode=false",
            encode(email)
        ))
        .await;
    (status == StatusCode::OK).then(|| body["customer_id"].as_str().unwrap().to_owned())
}

/// Events Stripe kept, handled as deliveries: new ones stored, one a webhook already
/// brought a duplicate, one naming another account rejected (and named on stderr), one
/// naming no account tagged with the one it was listed under; the platform's own too.
async fn listed_events_are_stored_deduplicated_and_checked_for_their_account(backend: Backend) {
    let fake = FakeStripe::start().await;
    let t = now() - 600;
    fake.add_event(
        Some(A),
        event(
            "evt_1Created",
            Some(A),
            "customer.created",
            t,
            "cus_1",
            "one@x.io",
        ),
    );
    fake.add_event(
        Some(A),
        event(
            "evt_1Updated",
            Some(A),
            "customer.updated",
            t + 1,
            "cus_1",
            "uno@x.io",
        ),
    );
    fake.add_event(
        Some(A),
        event(
            "evt_1Elsewhere",
            Some(B),
            "customer.created",
            t + 2,
            "cus_9",
            "nine@x.io",
        ),
    );
    fake.add_event(
        Some(A),
        event(
            "evt_1Unnamed",
            None,
            "customer.created",
            t + 3,
            "cus_2",
            "two@x.io",
        ),
    );
    fake.add_event(
        None,
        event(
            "evt_1Platform",
            None,
            "customer.created",
            t + 4,
            "cus_p",
            "p@x.io",
        ),
    );
    let app = TestApp::spawn(backend).await;
    let delivered = event(
        "evt_1Created",
        Some(A),
        "customer.created",
        t,
        "cus_1",
        "one@x.io",
    );
    assert_eq!(app.deliver_json(&delivered).await.0, StatusCode::OK);

    let args = ["catch-up", "--account", A, "--platform", "--since", "1h"];
    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        counts,
        json!({"accounts": 2, "failed": 0, "events": 5, "stored": 3, "duplicate": 1,
               "ignored": 0, "rejected": 1, "requests": 2})
    );
    assert!(stderr.contains("evt_1Elsewhere"), "{stderr}");
    assert_eq!(found(&app, A, "uno@x.io").await.as_deref(), Some("cus_1"));
    assert_eq!(found(&app, A, "two@x.io").await.as_deref(), Some("cus_2"));
    assert_eq!(found(&app, B, "nine@x.io").await, None, "never recorded");
    assert_eq!(
        found(&app, PLATFORM, "p@x.io").await.as_deref(),
        Some("cus_p")
    );
    let unnamed = app.store.event("evt_1Unnamed").await.unwrap().unwrap();
    assert_eq!(unnamed.account, A);
    assert!(unnamed
        .payload
        .starts_with(&format!(r#"{{"account":"{A}","#)));
    assert_eq!(unnamed.source, "events_api");

    // Again: everything is a duplicate.
    let (code, counts, _) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);
    assert_eq!(code, Some(0));
    assert_eq!(
        (counts["stored"].as_u64(), counts["duplicate"].as_u64()),
        (Some(0), Some(4))
    );
}

/// Without `--since`: an hour before the newest event the log holds for the account, or
/// 30 days back for an account it holds nothing of.
async fn by_default_each_account_starts_from_what_the_log_holds(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = TestApp::spawn(backend).await;
    let newest = now() - 5_000;
    let held = event(
        "evt_1Held",
        Some(A),
        "customer.created",
        newest,
        "cus_1",
        "one@x.io",
    );
    assert_eq!(app.deliver_json(&held).await.0, StatusCode::OK);

    let started = now();
    let args = ["catch-up", "--account", A, "--account", B];
    let (code, _, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(0), "{stderr}");
    let since = |account: &str| {
        fake.requests()
            .iter()
            .find(|r| r.header("stripe-account") == Some(account))
            .and_then(|r| r.param("created[gte]").map(|v| v.parse::<i64>().unwrap()))
            .unwrap()
    };
    assert_eq!(since(A), newest - 3_600);
    let thirty_days = 30 * 86_400;
    assert!((started - thirty_days - 5..=now() - thirty_days).contains(&since(B)));

    let (code, _, stderr) = outcome(
        &finish(sync_command(
            &app.db,
            &fake,
            &["catch-up", "--platform", "--since", "yesterday"],
        ))
        .await,
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--since"), "{stderr}");
}

on_both_backends!(
    listed_events_are_stored_deduplicated_and_checked_for_their_account,
    by_default_each_account_starts_from_what_the_log_holds,
);
