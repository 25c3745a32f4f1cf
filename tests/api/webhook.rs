//! `POST /webhooks/stripe`: every row of the webhook table of docs/api.md.

use reqwest::StatusCode;
use serde_json::json;

use stripe_projector::domain::AccountId;
use stripe_projector::projection;
use stripe_projector::store::{AppendOutcome, Source};
use stripe_projector::stripe::event::{self, Delivery};

use crate::helpers::{
    created, fixture, fixture_json, now, sign, AppConfig, Backend, TestApp, PLATFORM,
    SECOND_SECRET, SECRET, UNKNOWN_SECRET,
};

async fn new_customer_event_is_stored_with_its_account_tag_and_raw_payload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("seed/01_customer_created_organizer_a.json");

    let (status, answer) = app.deliver(&body).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"status": "stored", "event_id": "evt_1Qo7ireY8Hq2yVrb8PNLnXTs"})
    );
    let logged = app
        .store
        .event("evt_1Qo7ireY8Hq2yVrb8PNLnXTs")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logged.account, "acct_1OrganizerAaaaaaa");
    assert_eq!(logged.event_type, "customer.created");
    assert_eq!(logged.created, 1730000000);
    assert!(!logged.livemode);
    assert_eq!(logged.object_id.as_deref(), Some("cus_Q3IFa65giu0cDn"));
    assert_eq!(logged.source, "webhook");
    assert_eq!(
        logged.payload.as_bytes(),
        body.as_slice(),
        "payload must be kept verbatim"
    );
}

async fn redelivery_is_stored_once_and_answered_duplicate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");

    let first = app.deliver(&body).await;
    // Stripe signs every retry anew: a new timestamp, the same event.
    let header = sign(SECRET, now() - 10, &body);
    let second = app.post_webhook(&body, Some(&header)).await;

    assert_eq!(
        first,
        (
            StatusCode::OK,
            json!({"status": "stored", "event_id": "evt_1QYXcx6XjhfB3sQXU2TpeSGr"})
        )
    );
    assert_eq!(
        second,
        (
            StatusCode::OK,
            json!({"status": "duplicate", "event_id": "evt_1QYXcx6XjhfB3sQXU2TpeSGr"})
        )
    );
    assert_eq!(app.store.status().await.unwrap().events, 1);
}

async fn concurrent_deliveries_of_one_event_store_it_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");

    let deliveries = (0..8).map(|_| app.deliver(&body));
    let answers = futures_util::future::join_all(deliveries).await;

    let statuses: Vec<&str> = answers
        .iter()
        .map(|(code, body)| {
            assert_eq!(*code, StatusCode::OK);
            body["status"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "stored").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "duplicate").count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(app.store.status().await.unwrap().events, 1);
}

async fn verified_events_of_other_types_are_acknowledged_and_not_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let invoice = app.deliver_fixture("other/invoice_paid.json").await;
    let thin = app
        .deliver_fixture("other/thin_v1_customer_updated.json")
        .await;

    assert_eq!(
        invoice,
        (
            StatusCode::OK,
            json!({"status": "ignored", "event_id": "evt_1QyvXlGSWtKuf0jtzQNby9kR"})
        )
    );
    assert_eq!(
        thin,
        (
            StatusCode::OK,
            json!({"status": "ignored", "event_id": "evt_test_65ZVR7wrmCj4SgVRlCXxsIyerzEmvSzn9zu5wcQIKH"})
        )
    );
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

/// An ignored event's id is echoed and logged: it is held to the same rules as a stored
/// one (non-empty, at most 255 bytes, no control character).
async fn ignored_events_with_an_invalid_id_are_invalid_payload(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for id in [
        String::new(),
        "e".repeat(256),
        "evt_\u{1}x".into(),
        "evt_\nx".into(),
    ] {
        let (status, answer) = app
            .deliver_json(&json!({"id": id, "object": "event", "type": "invoice.paid"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}");
        assert_eq!(answer["error"], "invalid_payload", "{id:?}");
    }
    let longest = "e".repeat(255);
    let (status, answer) = app
        .deliver_json(&json!({"id": longest, "object": "event", "type": "invoice.paid"}))
        .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            json!({"status": "ignored", "event_id": longest})
        )
    );
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

async fn missing_signature_is_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app
        .post_webhook(&fixture("redelivery/customer_created.json"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "missing_signature");
    assert!(body["message"].is_string());
}

async fn unparsable_header_or_missing_t_or_v1_is_malformed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");
    let valid = sign(SECRET, now(), &body);
    let v1 = valid.split_once(",v1=").unwrap().1.to_owned();
    for header in [
        "garbage".to_owned(),
        format!("v1={v1}"),
        format!("t={}", now()),
        format!("t=12x,v1={v1}"),
    ] {
        let (status, answer) = app.post_webhook(&body, Some(&header)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}");
        assert_eq!(answer["error"], "malformed_signature", "{header}");
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

/// Stripe sends one `v1` per active secret: more than 16, or a header over 8 KiB, is
/// malformed even when one of them matches.
async fn too_many_v1_signatures_or_a_huge_header_is_malformed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");
    let valid = sign(SECRET, now(), &body);
    let filler = |n: usize| format!(",v1={}", "0".repeat(64)).repeat(n);
    let huge = format!("{valid},x={}", "a".repeat(8 * 1024));

    for header in [format!("{valid}{}", filler(16)), huge] {
        let (status, answer) = app.post_webhook(&body, Some(&header)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{} bytes", header.len());
        assert_eq!(answer["error"], "malformed_signature");
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
    let (status, answer) = app
        .post_webhook(&body, Some(&format!("{valid}{}", filler(15))))
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
}

async fn stale_or_future_timestamp_is_out_of_tolerance(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");
    for timestamp in [now() - 301 - 5, now() + 301 + 5] {
        let header = sign(SECRET, timestamp, &body);
        let (status, answer) = app.post_webhook(&body, Some(&header)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"], "timestamp_out_of_tolerance");
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

async fn wrong_signature_is_a_mismatch_whatever_its_timestamp(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");
    let cases = [
        sign(UNKNOWN_SECRET, now(), &body),
        sign(UNKNOWN_SECRET, now() - 10_000, &body),
        sign(SECRET, now(), b"another body"),
    ];
    for header in cases {
        let (status, answer) = app.post_webhook(&body, Some(&header)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"], "signature_mismatch");
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

async fn any_configured_secret_and_any_v1_may_match(backend: Backend) {
    let config = AppConfig {
        // A roll: the new secret first, the old one (the suite's) second.
        secrets: vec![SECOND_SECRET.into(), SECRET.into()],
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    let body = fixture("redelivery/customer_created.json");
    let t = now();
    let old = sign(SECRET, t, &body);
    let unknown = sign(UNKNOWN_SECRET, t, &body);
    // During a roll Stripe sends one v1 per active secret; ours need not be the last.
    let header = format!("{old},v1={}", unknown.split_once(",v1=").unwrap().1);

    let (status, answer) = app.post_webhook(&body, Some(&header)).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "stored");
}

async fn signed_body_that_is_not_an_event_is_invalid_payload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut no_created = fixture_json("redelivery/customer_created.json");
    no_created.as_object_mut().unwrap().remove("created");
    let mut no_livemode = fixture_json("redelivery/customer_created.json");
    no_livemode["livemode"] = json!(null);
    let mut no_object = fixture_json("redelivery/customer_created.json");
    no_object["data"] = json!({"object": "cus_1"});
    let bodies = [
        b"not json".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"type":"customer.created"}"#.to_vec(),
        br#"{"id":"evt_1"}"#.to_vec(),
        br#"{"id":7,"type":"invoice.paid"}"#.to_vec(),
        no_created.to_string().into_bytes(),
        no_livemode.to_string().into_bytes(),
        no_object.to_string().into_bytes(),
    ];
    for body in bodies {
        let (status, answer) = app.deliver(&body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            answer["error"],
            "invalid_payload",
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

async fn body_over_the_limit_is_413_before_any_other_check(backend: Backend) {
    let config = AppConfig {
        max_body_bytes: 1024,
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    let at_limit = created("evt_at_limit", "acct_1", "cus_1", "a@example.com", 1);
    let mut at_limit_body = at_limit.to_string().into_bytes();
    at_limit_body.resize(1024, b' '); // JSON allows trailing whitespace

    let (ok, _) = app.deliver(&at_limit_body).await;
    let (signed, signed_answer) = app.deliver(&[b' '; 1025]).await;
    let (unsigned, unsigned_answer) = app.post_webhook(&[b' '; 4096], None).await;

    assert_eq!(ok, StatusCode::OK);
    assert_eq!(signed, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(signed_answer["error"], "payload_too_large");
    assert_eq!(unsigned, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(unsigned_answer["error"], "payload_too_large");
}

async fn store_that_cannot_commit_answers_503_and_recovers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture("redelivery/customer_created.json");
    // Break the store from outside, as a failing disk or a lost table would.
    app.db
        .execute("ALTER TABLE events RENAME TO events_away")
        .await;

    let (status, answer) = app.deliver(&body).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["error"], "store_unavailable");
    assert!(
        !answer["message"].as_str().unwrap().contains("events_away"),
        "no internals in the body"
    );

    app.db
        .execute("ALTER TABLE events_away RENAME TO events")
        .await;
    let (status, answer) = app.deliver(&body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["status"], "stored",
        "the failed delivery left nothing behind"
    );
}

async fn health_and_readiness_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(
        app.get("/readyz").await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

/// Group commit: a burst shares transactions, yet each delivery is answered for itself.
async fn a_concurrent_burst_is_stored_whole_and_one_bad_event_fails_nobody(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut bodies: Vec<Vec<u8>> = (0..120)
        .map(|i| {
            created(
                &format!("evt_burst_{i:03}"),
                "acct_1",
                &format!("cus_{i:03}"),
                &format!("b{i}@example.com"),
                1,
            )
            .to_string()
            .into_bytes()
        })
        .collect();
    let redeliveries: Vec<Vec<u8>> = (0..20).map(|i| bodies[i * 3].clone()).collect();
    bodies.extend(redeliveries);
    bodies.push(fixture("other/customer_created_not_a_customer.json"));

    let answers = futures_util::future::join_all(bodies.iter().map(|body| app.deliver(body))).await;

    assert!(
        answers.iter().all(|(status, _)| *status == StatusCode::OK),
        "{answers:?}"
    );
    let count = |s: &str| {
        answers
            .iter()
            .filter(|(_, body)| body["status"] == s)
            .count()
    };
    assert_eq!((count("stored"), count("duplicate")), (121, 20));
    let status = app.store.status().await.unwrap();
    assert_eq!(
        (status.events, status.customers, status.projection_errors),
        (121, 120, 1)
    );
}

/// The database refuses one event of a burst (a trigger here; a constraint or a value it
/// cannot store in real life): only that delivery fails, with 503, and the batch it was
/// in leaves no transaction open behind it: the store goes on, and another process can
/// write at once.
async fn an_event_the_database_refuses_fails_alone_and_leaves_no_transaction_open(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    app.db
        .execute(match backend {
            Backend::Sqlite => {
                "CREATE TRIGGER refuse_one BEFORE INSERT ON events
                 WHEN NEW.event_id = 'evt_refused'
                 BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            }
            Backend::Postgres => {
                "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.event_id = 'evt_refused' THEN
                         RAISE EXCEPTION 'refused by a test trigger';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_one BEFORE INSERT ON events
                 FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            }
        })
        .await;
    let body = |id: &str, n: usize| {
        created(
            id,
            "acct_1",
            &format!("cus_{n:03}"),
            &format!("r{n}@example.com"),
            1,
        )
        .to_string()
        .into_bytes()
    };
    let mut bodies: Vec<Vec<u8>> = (0..40)
        .map(|n| body(&format!("evt_ok_{n:03}"), n))
        .collect();
    bodies.insert(20, body("evt_refused", 999));

    let answers = futures_util::future::join_all(bodies.iter().map(|body| app.deliver(body))).await;

    let refused = &answers[20];
    assert_eq!(
        (refused.0, &refused.1["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("store_unavailable"))
    );
    let stored = answers
        .iter()
        .filter(|(status, body)| *status == StatusCode::OK && body["status"] == "stored")
        .count();
    assert_eq!(stored, 40, "{answers:?}");
    let (status, _) = app.deliver(&body("evt_after", 1000)).await;
    assert_eq!(status, StatusCode::OK);
    let other_process = app.db.store().await;
    let event = event::parse(
        &body("evt_other_process", 1001),
        &AccountId::parse(PLATFORM).unwrap(),
    );
    let Ok(Delivery::Customer(event)) = event else {
        panic!("a customer event")
    };
    let effect = projection::effect_of(&event);
    // Behind a transaction left open, SQLite would give up after its 5 s busy timeout.
    let appended = other_process
        .append(vec![(event, effect)], Source::Import)
        .await
        .map(|outcomes| outcomes[0].clone());
    assert!(
        matches!(appended, Ok(AppendOutcome::Stored { .. })),
        "another writer gets in: {appended:?}"
    );
    assert_eq!(app.store.status().await.unwrap().events, 42);
}

on_both_backends!(
    an_event_the_database_refuses_fails_alone_and_leaves_no_transaction_open,
    new_customer_event_is_stored_with_its_account_tag_and_raw_payload,
    redelivery_is_stored_once_and_answered_duplicate,
    concurrent_deliveries_of_one_event_store_it_once,
    verified_events_of_other_types_are_acknowledged_and_not_stored,
    ignored_events_with_an_invalid_id_are_invalid_payload,
    missing_signature_is_400,
    unparsable_header_or_missing_t_or_v1_is_malformed,
    too_many_v1_signatures_or_a_huge_header_is_malformed,
    stale_or_future_timestamp_is_out_of_tolerance,
    wrong_signature_is_a_mismatch_whatever_its_timestamp,
    any_configured_secret_and_any_v1_may_match,
    signed_body_that_is_not_an_event_is_invalid_payload,
    body_over_the_limit_is_413_before_any_other_check,
    store_that_cannot_commit_answers_503_and_recovers,
    health_and_readiness_answer,
    a_concurrent_burst_is_stored_whole_and_one_bad_event_fails_nobody,
);
