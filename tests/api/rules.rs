//! Projection rules 1-8 (README), each through the real HTTP stack.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{fixture_json, Backend, EventSpec, TestApp, PLATFORM};

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
    store(
        &app,
        &fixture_json("seed/01_customer_created_organizer_a.json"),
    )
    .await;
    store(
        &app,
        &fixture_json("seed/02_customer_created_organizer_b.json"),
    )
    .await;
    store(&app, &fixture_json("platform/customer_created.json")).await;

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
    store(&app, &fixture_json("test_mode/customer_created_test.json")).await;

    assert_eq!(app.customer_id(A, "barbara@example.com", true).await, None);
    assert_eq!(
        app.customer_id(A, "barbara@example.com", false)
            .await
            .as_deref(),
        Some("cus_QjZ0Te86F0MBtf")
    );

    store(&app, &fixture_json("test_mode/customer_created_live.json")).await;
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

/// Posts an event and asserts it was stored: a rule test whose deliveries were refused
/// would prove nothing.
async fn store(app: &TestApp, event: &serde_json::Value) {
    let (status, body) = app.deliver_json(event).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "stored", "{body}");
    assert_eq!(body["event_id"], event["id"], "{body}");
}

/// One snapshot of a customer: (event id, type, event created, email).
type Snap = (&'static str, &'static str, i64, &'static str);

/// Delivers two snapshots of one customer in both orders, each order as a customer of its
/// own so one database holds both runs, and asserts that `winner` decides the customer's
/// state either way (and `loser`'s email finds nothing).
async fn assert_wins_in_either_order(app: &TestApp, case: &str, winner: Snap, loser: Snap) {
    for (order, first, second) in [("w", winner, loser), ("l", loser, winner)] {
        let customer = format!("cus_{case}_{order}");
        let event = |(id, event_type, created, email): Snap| {
            let email = format!("{order}.{email}");
            snapshot(
                &format!("{id}_{order}"),
                event_type,
                created,
                &customer,
                Some(&email),
                100,
            )
        };
        store(app, &event(first)).await;
        store(app, &event(second)).await;

        let (id, _, created, email) = winner;
        let (status, body) = app
            .lookup(&format!("account={A}&email={order}.{email}&livemode=false"))
            .await;
        assert_eq!(status, StatusCode::OK, "{case} {order}: {body}");
        assert_eq!(
            (
                &body["customer_id"],
                &body["last_event_id"],
                &body["last_event_created"]
            ),
            (
                &json!(customer),
                &json!(format!("{id}_{order}")),
                &json!(created)
            ),
            "{case}, {} delivered first",
            if order == "w" { "winner" } else { "loser" }
        );
        assert_eq!(
            app.customer_id(A, &format!("{order}.{}", loser.3), false)
                .await,
            None,
            "{case} {order}"
        );
    }
}

async fn rule_3_newest_snapshot_wins_whatever_the_arrival_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A later second wins, even over a type that ranks higher.
    assert_wins_in_either_order(
        &app,
        "later",
        ("evt_2", "customer.created", 200, "new@example.com"),
        ("evt_1", "customer.updated", 100, "old@example.com"),
    )
    .await;
    // Same second: updated outranks created, whatever the ids.
    assert_wins_in_either_order(
        &app,
        "rank",
        ("evt_3", "customer.updated", 300, "same@example.com"),
        ("evt_4", "customer.created", 300, "first@example.com"),
    )
    .await;
    // Same second and type: the larger event id wins.
    assert_wins_in_either_order(
        &app,
        "id",
        ("evt_b", "customer.updated", 400, "b@example.com"),
        ("evt_a", "customer.updated", 400, "a@example.com"),
    )
    .await;
}

async fn rule_3_deletion_is_final(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Older, same-second and later updates, each delivered before and after the deletion.
    for (case, update_created) in [("older", 100), ("same", 200), ("later", 300)] {
        for update_first in [true, false] {
            let customer = format!("cus_{case}_{update_first}");
            let email = format!("{case}.{update_first}@example.com");
            let event = |id: &str, event_type: &str, created: i64| {
                EventSpec {
                    id: &format!("evt_{id}_{case}_{update_first}"),
                    event_type,
                    account: Some(B),
                    created,
                    livemode: false,
                    customer_id: &customer,
                    email: Some(&email),
                    customer_created: 50,
                }
                .to_json()
            };
            let deleted = event("deleted", "customer.deleted", 200);
            let updated = event("updated", "customer.updated", update_created);
            store(&app, &event("created", "customer.created", 50)).await;
            if update_first {
                store(&app, &updated).await;
                store(&app, &deleted).await;
            } else {
                store(&app, &deleted).await;
                store(&app, &updated).await;
            }
            assert_eq!(
                app.customer_id(B, &email, false).await,
                None,
                "{case} update, delivered {}",
                if update_first { "first" } else { "last" }
            );
        }
    }
    let rows = app.store.customers().await.unwrap();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|row| row.deleted && row.last_event_id.starts_with("evt_deleted_")),
        "every customer stays a tombstone of its deletion: {rows:?}"
    );
}

async fn rule_4_an_email_change_moves_the_customer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    store(&app, &fixture_json("email_change/01_customer_created.json")).await;
    assert_eq!(
        app.customer_id(A, "grace@example.com", false)
            .await
            .as_deref(),
        Some("cus_QEmailChange00001")
    );

    store(
        &app,
        &fixture_json("email_change/02_customer_updated_email.json"),
    )
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
    store(
        &app,
        &snapshot(
            "evt_1",
            "customer.created",
            1,
            "cus_1",
            Some("x@example.com"),
            1,
        ),
    )
    .await;
    store(
        &app,
        &snapshot("evt_2", "customer.updated", 2, "cus_1", None, 1),
    )
    .await;
    store(
        &app,
        &snapshot("evt_3", "customer.created", 3, "cus_2", Some("   "), 3),
    )
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
    store(
        &app,
        &snapshot("evt_1", "customer.created", 50, "cus_b", Some(shared), 20),
    )
    .await;
    store(
        &app,
        &snapshot(
            "evt_2",
            "customer.created",
            50,
            "cus_a",
            Some("DUP@example.com"),
            20,
        ),
    )
    .await;
    store(
        &app,
        &snapshot("evt_3", "customer.created", 40, "cus_0", Some(shared), 30),
    )
    .await;
    assert_eq!(
        app.customer_id(A, shared, false).await.as_deref(),
        Some("cus_a")
    );

    store(
        &app,
        &snapshot("evt_4", "customer.deleted", 60, "cus_a", Some(shared), 20),
    )
    .await;
    assert_eq!(
        app.customer_id(A, shared, false).await.as_deref(),
        Some("cus_b")
    );

    store(
        &app,
        &snapshot(
            "evt_5",
            "customer.updated",
            70,
            "cus_b",
            Some("elsewhere@example.com"),
            20,
        ),
    )
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
    store(&app, &no_created).await;
    store(
        &app,
        &snapshot(
            "evt_2",
            "customer.created",
            20,
            "cus_a",
            Some("c@example.com"),
            15,
        ),
    )
    .await;

    assert_eq!(
        app.customer_id(A, "c@example.com", false).await.as_deref(),
        Some("cus_z")
    );
}

async fn rule_6_other_customer_events_are_logged_but_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    store(
        &app,
        &fixture_json("seed/01_customer_created_organizer_a.json"),
    )
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
        store(&forward, event).await;
    }
    let backward = TestApp::spawn(backend).await;
    for event in events.iter().rev() {
        store(&backward, event).await;
    }
    for event in &events {
        let (status, body) = backward.deliver_json(event).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("duplicate"))
        );
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
    store(
        &app,
        &fixture_json("seed/01_customer_created_organizer_a.json"),
    )
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
