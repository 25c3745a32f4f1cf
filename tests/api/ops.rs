//! Operating it: metrics, logs and request ids, readiness, graceful shutdown, two instances.

mod logs;
mod metrics;
mod readiness;
mod scale_out;
mod shutdown;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{into_json, metric, post_signed};

/// Delivers `body`, signed now with the suite's secret, to the server at `base`.
async fn deliver(client: &reqwest::Client, base: &str, body: &[u8]) -> (StatusCode, Value) {
    into_json(
        post_signed(client, base, body)
            .send()
            .await
            .expect("webhook request"),
    )
    .await
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

fn count(exposition: &str, series: &str) -> f64 {
    metric(exposition, series).unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
}
