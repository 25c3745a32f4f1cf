//! Projection rules 1-8 of CONTRACT.md, each through the real HTTP stack.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, EventSpec, TestApp, PLATFORM};

const A: &str = "acct_1OrganizerAaaaaaa";
const B: &str = "acct_1OrganizerBbbbbbb";
const ADA: &str = "ada.lovelace@example.com";

/// A test-mode snapshot event of `customer_id` on account A.
fn snapshot(
    id: &str,
    event_type: &str,
    created: i64,
    customer_id: &str,
    email: Option<&str>,
    customer_created: i64,
) -> serde_json::Value {
    EventSpec {
        id,
        event_type,
        account: Some(A),
        created,
        livemode: false,
        customer_id,
        email,
        customer_created,
    }
    .to_json()
}

async fn rule_1_each_account_keeps_its_own_customer_for_one_email(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    app.deliver_fixture("seed/02_customer_created_organizer_b.json")
        .await;
    app.deliver_fixture("platform/customer_created.json").await;

    assert_eq!(
        app.customer_id(A, ADA, false).await.as_deref(),
        Some("cus_Q3IFa65giu0cDn")
    );
    assert_eq!(
        app.customer_id(B, ADA, false).await.as_deref(),
        Some("cus_QhSE3L7ZYTK9XP")
    );
    assert_eq!(
        app.customer_id(PLATFORM, ADA, false).await.as_deref(),
        Some("cus_QPlatform0000001")
    );
    assert_eq!(
        app.customer_id("acct_1OrganizerCccccc", ADA, false).await,
        None
    );
    let logged = app
        .store
        .event("evt_1QmVE9rglzL35LpBoNEfZcJK")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        logged.account, PLATFORM,
        "an event without `account` is the platform's"
    );
}

async fn rule_2_livemode_is_part_of_the_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("test_mode/customer_created_test.json")
        .await;

    assert_eq!(app.customer_id(A, "barbara@example.com", true).await, None);
    assert_eq!(
        app.customer_id(A, "barbara@example.com", false)
            .await
            .as_deref(),
        Some("cus_QjZ0Te86F0MBtf")
    );

    app.deliver_fixture("test_mode/customer_created_live.json")
        .await;
    assert_eq!(
        app.customer_id(A, "barbara@example.com", true)
            .await
            .as_deref(),
        Some("cus_Qt2vmBPtnf4720")
    );
    assert_eq!(
        app.customer_id(A, "barbara@example.com", false)
            .await
            .as_deref(),
        Some("cus_QjZ0Te86F0MBtf")
    );
}

async fn rule_3_newest_snapshot_wins_whatever_the_arrival_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The update arrives first; the older creation must not overwrite it.
    app.deliver_json(&snapshot(
        "evt_2",
        "customer.updated",
        200,
        "cus_1",
        Some("new@example.com"),
        100,
    ))
    .await;
    app.deliver_json(&snapshot(
        "evt_1",
        "customer.created",
        100,
        "cus_1",
        Some("old@example.com"),
        100,
    ))
    .await;
    // Same second: updated outranks created, whichever comes last.
    app.deliver_json(&snapshot(
        "evt_4",
        "customer.updated",
        300,
        "cus_2",
        Some("same@example.com"),
        300,
    ))
    .await;
    app.deliver_json(&snapshot(
        "evt_3",
        "customer.created",
        300,
        "cus_2",
        Some("first@example.com"),
        300,
    ))
    .await;
    // Same second and type: the larger event id wins.
    app.deliver_json(&snapshot(
        "evt_b",
        "customer.updated",
        400,
        "cus_3",
        Some("b@example.com"),
        400,
    ))
    .await;
    app.deliver_json(&snapshot(
        "evt_a",
        "customer.updated",
        400,
        "cus_3",
        Some("a@example.com"),
        400,
    ))
    .await;

    let (_, body) = app
        .lookup(&format!(
            "account={A}&email=new%40example.com&livemode=false"
        ))
        .await;
    assert_eq!(
        (
            body["last_event_id"].clone(),
            body["last_event_created"].clone()
        ),
        (json!("evt_2"), json!(200))
    );
    assert_eq!(app.customer_id(A, "old@example.com", false).await, None);
    assert_eq!(
        app.customer_id(A, "same@example.com", false)
            .await
            .as_deref(),
        Some("cus_2")
    );
    assert_eq!(app.customer_id(A, "first@example.com", false).await, None);
    assert_eq!(
        app.customer_id(A, "b@example.com", false).await.as_deref(),
        Some("cus_3")
    );
    assert_eq!(app.customer_id(A, "a@example.com", false).await, None);
}

async fn rule_3_deletion_is_final(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("deletion/01_customer_created.json")
        .await;
    assert_eq!(
        app.customer_id(B, "linus@example.com", false)
            .await
            .as_deref(),
        Some("cus_QDeleteMe0000001")
    );
    app.deliver_fixture("deletion/02_customer_deleted.json")
        .await;
    // Delivered after the deletion, older than it.
    app.deliver_fixture("deletion/03_customer_updated_late.json")
        .await;
    // Even an update stamped after the deletion does not bring the customer back.
    let later = EventSpec {
        id: "evt_after_delete",
        event_type: "customer.updated",
        account: Some(B),
        created: 1730009999,
        livemode: false,
        customer_id: "cus_QDeleteMe0000001",
        email: Some("linus@example.com"),
        customer_created: 1730000300,
    };
    app.deliver_json(&later.to_json()).await;

    assert_eq!(app.customer_id(B, "linus@example.com", false).await, None);
    let rows = app.store.customers().await.unwrap();
    assert!(
        rows.iter().all(|row| row.deleted),
        "the customer stays a tombstone: {rows:?}"
    );
}

async fn rule_4_an_email_change_moves_the_customer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("email_change/01_customer_created.json")
        .await;
    assert_eq!(
        app.customer_id(A, "grace@example.com", false)
            .await
            .as_deref(),
        Some("cus_QEmailChange00001")
    );

    app.deliver_fixture("email_change/02_customer_updated_email.json")
        .await;

    assert_eq!(app.customer_id(A, "grace@example.com", false).await, None);
    assert_eq!(
        app.customer_id(A, "GRACE.HOPPER@example.org ", false)
            .await
            .as_deref(),
        Some("cus_QEmailChange00001")
    );
}

async fn rule_4_a_customer_without_email_is_not_indexed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_json(&snapshot(
        "evt_1",
        "customer.created",
        1,
        "cus_1",
        Some("x@example.com"),
        1,
    ))
    .await;
    app.deliver_json(&snapshot("evt_2", "customer.updated", 2, "cus_1", None, 1))
        .await;
    app.deliver_json(&snapshot(
        "evt_3",
        "customer.created",
        3,
        "cus_2",
        Some("   "),
        3,
    ))
    .await;

    assert_eq!(app.customer_id(A, "x@example.com", false).await, None);
    let status = app.store.status().await.unwrap();
    assert_eq!(
        status.customers, 2,
        "both are projected, neither is findable by email"
    );
}

async fn rule_5_shared_email_gives_the_oldest_then_smallest_id_and_the_next_takes_over(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let shared = "dup@example.com";
    app.deliver_json(&snapshot(
        "evt_1",
        "customer.created",
        50,
        "cus_b",
        Some(shared),
        20,
    ))
    .await;
    app.deliver_json(&snapshot(
        "evt_2",
        "customer.created",
        50,
        "cus_a",
        Some("DUP@example.com"),
        20,
    ))
    .await;
    app.deliver_json(&snapshot(
        "evt_3",
        "customer.created",
        40,
        "cus_0",
        Some(shared),
        30,
    ))
    .await;
    assert_eq!(
        app.customer_id(A, shared, false).await.as_deref(),
        Some("cus_a")
    );

    app.deliver_json(&snapshot(
        "evt_4",
        "customer.deleted",
        60,
        "cus_a",
        Some(shared),
        20,
    ))
    .await;
    assert_eq!(
        app.customer_id(A, shared, false).await.as_deref(),
        Some("cus_b")
    );

    app.deliver_json(&snapshot(
        "evt_5",
        "customer.updated",
        70,
        "cus_b",
        Some("elsewhere@example.com"),
        20,
    ))
    .await;
    assert_eq!(
        app.customer_id(A, shared, false).await.as_deref(),
        Some("cus_0")
    );
}

async fn rule_5_falls_back_to_the_event_created_when_the_object_has_none(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut no_created = snapshot(
        "evt_1",
        "customer.created",
        10,
        "cus_z",
        Some("c@example.com"),
        0,
    );
    no_created["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("created");
    app.deliver_json(&no_created).await;
    app.deliver_json(&snapshot(
        "evt_2",
        "customer.created",
        20,
        "cus_a",
        Some("c@example.com"),
        15,
    ))
    .await;

    assert_eq!(
        app.customer_id(A, "c@example.com", false).await.as_deref(),
        Some("cus_z")
    );
}

async fn rule_6_other_customer_events_are_logged_but_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    let before = app.store.customers().await.unwrap();

    let (status, body) = app
        .deliver_fixture("other/customer_subscription_created.json")
        .await;

    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("stored"))
    );
    assert_eq!(app.store.customers().await.unwrap(), before);
    assert_eq!(app.store.status().await.unwrap().events, 2);
}

async fn rule_7_tables_depend_on_the_set_of_events_not_their_order(backend: Backend) {
    let events = [
        snapshot(
            "evt_1",
            "customer.created",
            10,
            "cus_1",
            Some("p@example.com"),
            10,
        ),
        snapshot(
            "evt_2",
            "customer.updated",
            10,
            "cus_1",
            Some("q@example.com"),
            10,
        ),
        snapshot(
            "evt_3",
            "customer.created",
            10,
            "cus_2",
            Some("p@example.com"),
            10,
        ),
        snapshot(
            "evt_4",
            "customer.deleted",
            11,
            "cus_2",
            Some("p@example.com"),
            10,
        ),
        snapshot(
            "evt_5",
            "customer.created",
            12,
            "cus_3",
            Some("q@example.com"),
            5,
        ),
    ];
    let forward = TestApp::spawn(backend).await;
    for event in &events {
        forward.deliver_json(event).await;
    }
    let backward = TestApp::spawn(backend).await;
    for event in events.iter().rev().chain(events.iter()) {
        backward.deliver_json(event).await;
    }

    assert_eq!(
        forward.store.customers().await.unwrap(),
        backward.store.customers().await.unwrap()
    );
    assert_eq!(
        forward
            .customer_id(A, "q@example.com", false)
            .await
            .as_deref(),
        Some("cus_3")
    );
}

async fn rule_8_an_unprojectable_event_is_stored_recorded_and_blocks_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let (status, body) = app
        .deliver_fixture("other/customer_created_not_a_customer.json")
        .await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;

    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("stored"))
    );
    let logged = app
        .store
        .event("evt_1Q09aJT0L7KWMCahrUw3l50R")
        .await
        .unwrap()
        .unwrap();
    assert!(logged.projection_error.is_some());
    let status = app.store.status().await.unwrap();
    assert_eq!(
        (status.events, status.projection_errors, status.customers),
        (2, 1, 1)
    );
    assert_eq!(
        app.customer_id(A, ADA, false).await.as_deref(),
        Some("cus_Q3IFa65giu0cDn")
    );
}

on_both_backends!(
    rule_1_each_account_keeps_its_own_customer_for_one_email,
    rule_2_livemode_is_part_of_the_key,
    rule_3_newest_snapshot_wins_whatever_the_arrival_order,
    rule_3_deletion_is_final,
    rule_4_an_email_change_moves_the_customer,
    rule_4_a_customer_without_email_is_not_indexed,
    rule_5_shared_email_gives_the_oldest_then_smallest_id_and_the_next_takes_over,
    rule_5_falls_back_to_the_event_created_when_the_object_has_none,
    rule_6_other_customer_events_are_logged_but_change_nothing,
    rule_7_tables_depend_on_the_set_of_events_not_their_order,
    rule_8_an_unprojectable_event_is_stored_recorded_and_blocks_nothing,
);
