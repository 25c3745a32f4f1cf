//! Metrics: exact counts after known traffic, in a fresh `serve` process (the registry is
//! per process).

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{count, deliver, scrape};
use crate::helpers::{
    created, fixture, into_json, now, sign, Backend, TestDb, SECRET, UNKNOWN_SECRET,
};
use crate::process::{serve_command, Served};

/// Posts `body` with `signature` as its `Stripe-Signature`, or none: for odd headers.
async fn post(
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client
        .post(format!("{base}/webhooks/stripe"))
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    into_json(request.send().await.expect("webhook request")).await
}

/// A fresh process has a registry of its own, so the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = serve_command(&db.url);
    command
        .env("MAX_BODY_BYTES", "8192")
        .env("READ_API_TOKEN", "token_for_metrics");
    let served = Served::spawn(command);
    let (client, base) = (reqwest::Client::new(), served.base.as_str());

    let before = scrape(&client, base).await;
    assert_eq!(
        count(&before, r#"stripe_projector_build_info{version="0.1.0"}"#),
        1.0
    );
    assert_eq!(
        count(
            &before,
            r#"stripe_projector_webhook_requests_total{outcome="stored"}"#
        ),
        0.0,
        "known series exist at zero before any traffic"
    );

    let seed = fixture("seed/01_customer_created_organizer_a.json");
    let mut live: Value = serde_json::from_slice(&fixture("test_mode/customer_created_live.json"))
        .expect("fixture is JSON");
    live["account"] = json!("acct_1OrganizerAaaaaaa");
    live["data"]["object"]["email"] = json!("ada.lovelace@example.com");
    let mut updated = created("evt_metrics_upd", "acct_m", "cus_m", "m@example.com", 10);
    updated["type"] = json!("customer.updated");
    let mut future_type = created("evt_metrics_new", "acct_m", "cus_m", "m@example.com", 11);
    future_type["type"] = json!("customer.brand_new_kind");
    let stored = [
        seed.clone(),
        live.to_string().into_bytes(),
        updated.to_string().into_bytes(),
        fixture("other/customer_subscription_created.json"),
        future_type.to_string().into_bytes(),
        fixture("other/customer_created_not_a_customer.json"),
    ];
    for body in &stored {
        let (status, answer) = deliver(&client, base, body).await;
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!("stored"))
        );
    }
    let (_, answer) = deliver(&client, base, &seed).await;
    assert_eq!(answer["status"], "duplicate");
    let (_, answer) = deliver(&client, base, &fixture("other/invoice_paid.json")).await;
    assert_eq!(answer["status"], "ignored");
    let rejections: [(&[u8], Option<String>, &str); 7] = [
        (&seed, None, "missing_signature"),
        (&seed, Some("v1=abc".into()), "malformed_signature"),
        (
            &seed,
            Some(sign(UNKNOWN_SECRET, now(), &seed)),
            "signature_mismatch",
        ),
        (
            b"{}",
            Some(sign(UNKNOWN_SECRET, now(), b"{}")),
            "signature_mismatch",
        ),
        (
            &seed,
            Some(sign(SECRET, now() - 3600, &seed)),
            "timestamp_out_of_tolerance",
        ),
        (b"[1]", Some(sign(SECRET, now(), b"[1]")), "invalid_payload"),
        (&[b' '; 9000], Some("t=1,v1=00".into()), "payload_too_large"),
    ];
    for (body, signature, code) in rejections {
        let (_, answer) = post(&client, base, body, signature.as_deref()).await;
        assert_eq!(answer["error"], code);
    }

    let lookups = [
        (
            "email=ada.lovelace@example.com&livemode=false",
            true,
            "found",
        ),
        ("email=nobody@example.com&livemode=false", true, "not_found"),
        ("email=nobody@example.com", true, "not_found"),
        ("email=ada.lovelace@example.com", true, "ambiguous_livemode"),
        (
            "email=ada.lovelace@example.com&livemode=yes",
            true,
            "invalid_request",
        ),
        (
            "email=ada.lovelace@example.com&livemode=false",
            false,
            "unauthorized",
        ),
    ];
    for (query, authorized, expected) in lookups {
        let mut request = client.get(format!(
            "{base}/v1/customers?account=acct_1OrganizerAaaaaaa&{query}"
        ));
        if authorized {
            request = request.bearer_auth("token_for_metrics");
        }
        let (status, body) = into_json(request.send().await.unwrap()).await;
        let outcome = if status == StatusCode::OK {
            "found"
        } else {
            body["error"].as_str().unwrap()
        };
        assert_eq!(outcome, expected, "{query}");
    }

    let after = scrape(&client, base).await;
    let webhook = |outcome: &str| {
        count(
            &after,
            &format!(r#"stripe_projector_webhook_requests_total{{outcome="{outcome}"}}"#),
        )
    };
    for (outcome, expected) in [
        ("stored", 6.0),
        ("duplicate", 1.0),
        ("ignored", 1.0),
        ("missing_signature", 1.0),
        ("malformed_signature", 1.0),
        ("signature_mismatch", 2.0),
        ("timestamp_out_of_tolerance", 1.0),
        ("invalid_payload", 1.0),
        ("payload_too_large", 1.0),
        ("store_unavailable", 0.0),
    ] {
        assert_eq!(webhook(outcome), expected, "{outcome}");
    }
    for (reason, expected) in [
        ("missing_signature", 1.0),
        ("malformed_signature", 1.0),
        ("signature_mismatch", 2.0),
        ("timestamp_out_of_tolerance", 1.0),
    ] {
        let series = format!(r#"stripe_projector_signature_failures_total{{reason="{reason}"}}"#);
        assert_eq!(count(&after, &series), expected, "{reason}");
    }
    for (event_type, expected) in [
        ("customer.created", 3.0),
        ("customer.updated", 1.0),
        ("customer.subscription.created", 1.0),
        ("other", 1.0),
    ] {
        let series = format!(
            r#"stripe_projector_events_appended_total{{type="{event_type}",source="webhook"}}"#
        );
        assert_eq!(count(&after, &series), expected, "{event_type}");
    }
    assert_eq!(
        count(&after, "stripe_projector_projection_errors_total"),
        1.0
    );
    assert_eq!(
        count(&after, "stripe_projector_append_duration_seconds_count"),
        7.0,
        "six appends and one duplicate"
    );
    assert!(after.contains("# TYPE stripe_projector_append_duration_seconds histogram"));
    assert_eq!(
        count(
            &after,
            r#"stripe_projector_append_duration_seconds_bucket{le="+Inf"}"#
        ),
        7.0
    );
    assert_eq!(
        (
            count(&after, "stripe_projector_commit_batch_events_count"),
            count(&after, "stripe_projector_commit_batch_events_sum"),
        ),
        (7.0, 7.0),
        "deliveries sent one after another commit one by one"
    );
    assert_eq!(
        count(
            &after,
            r#"stripe_projector_commit_batch_events_bucket{le="1"}"#
        ),
        7.0
    );
    for (outcome, expected) in [
        ("found", 1.0),
        ("not_found", 2.0),
        ("ambiguous_livemode", 1.0),
        ("invalid_request", 1.0),
        ("unauthorized", 1.0),
        ("store_unavailable", 0.0),
    ] {
        let series = format!(r#"stripe_projector_lookups_total{{outcome="{outcome}"}}"#);
        assert_eq!(count(&after, &series), expected, "{outcome}");
    }
    for private in ["acct_1OrganizerAaaaaaa", "evt_", "example.com", "cus_"] {
        assert!(!after.contains(private), "{private} must not be a label");
    }
}
