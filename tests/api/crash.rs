//! Durability: what `serve` acknowledged survives SIGKILL.

use std::collections::BTreeSet;

use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;

use crate::helpers::{created, into_json, now, sign, Backend, TestDb, SECRET};
use crate::process::Served;

const EVENTS: usize = 300;
const CONCURRENCY: usize = 16;

async fn every_acknowledged_event_survives_sigkill(backend: Backend) {
    let db = TestDb::create(backend).await;
    let mut served = Served::start(&db.url);
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", served.base);

    let deliveries = (0..EVENTS).map(|i| {
        let event = created(
            &format!("evt_crash_{i:04}"),
            &format!("acct_{}", i % 7),
            &format!("cus_{i:04}"),
            &format!("buyer{i}@example.com"),
            1_700_000_000 + i as i64,
        );
        let body = event.to_string();
        let request = client
            .post(&url)
            .header("Stripe-Signature", sign(SECRET, now(), body.as_bytes()))
            .body(body);
        async move { (i, request.send().await) }
    });
    let mut acknowledged = BTreeSet::new();
    let mut answers = stream::iter(deliveries).buffer_unordered(CONCURRENCY);
    while let Some((i, answer)) = answers.next().await {
        if answer.is_ok_and(|response| response.status() == StatusCode::OK) {
            acknowledged.insert(i);
        }
    }
    served.kill();
    assert_eq!(
        acknowledged.len(),
        EVENTS,
        "a healthy server acknowledges every delivery"
    );

    let restarted = Served::start(&db.url);
    let store = db.store().await;
    for &i in &acknowledged {
        let event_id = format!("evt_crash_{i:04}");
        assert!(
            store.event(&event_id).await.unwrap().is_some(),
            "{event_id} was acknowledged but is not in the log"
        );
        let lookup = format!(
            "{}/v1/customers?account=acct_{}&email=buyer{i}%40example.com&livemode=false",
            restarted.base,
            i % 7
        );
        let (status, body) = into_json(client.get(&lookup).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{event_id}: {body}");
        assert_eq!(body["customer_id"], format!("cus_{i:04}"));
    }
    assert_eq!(store.status().await.unwrap().events, EVENTS as i64);
}

on_both_backends!(every_acknowledged_event_survives_sigkill);
