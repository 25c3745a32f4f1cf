//! The property: every generated request gets an answer the oracle allows.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::Value;
use stripe_projector::lookup::LookupRequest;

use super::generators::{case, many_v1, Body, Case, Sig};
use super::oracle::{expected_answers, Answer};
use super::{assert_no_secret, hostile_config, READ_TOKEN};
use crate::helpers::{self, encode, into_json, now, sign, Backend, TestApp, HANG, SECRET};

/// Cases run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

property_on_both_backends!(hostile_requests_get_documented_answers_on_sqlite, hostile_requests_get_documented_answers_on_postgres => check_hostile);

fn check_hostile(backend: Backend) {
    // proptest's strategies for these nested shapes need more stack than a test thread's
    // 2 MiB in debug builds (the server's own threads are not involved).
    std::thread::Builder::new()
        .stack_size(64 * 1024 * 1024)
        .spawn(move || run_hostile(backend))
        .expect("thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn run_hostile(backend: Backend) {
    let runtime = helpers::property_runtime();
    let app = runtime.block_on(TestApp::spawn_with(backend, hostile_config()));
    let runs = Cell::new(0usize);
    let mut runner = TestRunner::new(helpers::proptest_config(DEFAULT_CASES));
    let result = runner.run(&case(), |case| {
        let n = runs.replace(runs.get() + 1);
        runtime.block_on(async {
            tokio::time::timeout(HANG, check_case(&app, &case, n))
                .await
                .map_err(|_| TestCaseError::fail("the server did not answer: a hang"))?
        })
    });
    let TestApp { store, db, .. } = app;
    runtime.block_on(async move { drop(store) });
    drop(db);
    if let Err(error) = result {
        panic!("hostile input on {backend:?}: {error}");
    }
}

async fn check_case(app: &TestApp, case: &Case, n: usize) -> Result<(), TestCaseError> {
    match case {
        Case::Webhook { sig, body } => check_webhook(app, sig, body, n).await?,
        Case::Lookup {
            account,
            email,
            livemode,
            authorization,
        } => check_lookup(app, account, email, livemode, authorization.as_deref()).await?,
    }
    let (status, _) = app.get("/healthz").await;
    prop_assert_eq!(status, StatusCode::OK, "the server stopped answering");
    Ok(())
}

fn header_value(sig: &Sig, body: &[u8], t0: i64) -> Option<Vec<u8>> {
    match sig {
        Sig::Absent => None,
        Sig::Arbitrary(bytes) => Some(bytes.clone()),
        Sig::Shaped(text) => Some(text.clone().into_bytes()),
        Sig::Signed { skew } => Some(sign(SECRET, t0 + skew, body).into_bytes()),
        Sig::ManyV1 { count, valid_at } => Some(many_v1(body, t0, *count, *valid_at).into_bytes()),
    }
}

async fn check_webhook(
    app: &TestApp,
    sig: &Sig,
    body: &Body,
    n: usize,
) -> Result<(), TestCaseError> {
    let bytes = body.bytes(n);
    let t0 = now();
    let header = header_value(sig, &bytes, t0);
    let mut request = app
        .client
        .post(format!("{}/webhooks/stripe", app.base))
        .body(bytes.clone());
    if let Some(header) = &header {
        request = request.header("Stripe-Signature", header.as_slice());
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("request failed: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let t1 = now();
    assert_no_secret(&text);
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| TestCaseError::fail(format!("{status}: not JSON: {text}")))?;

    let expected = expected_answers(sig, header.as_deref(), body, &bytes, t0, t1);
    // Two answers only across the tolerance's edge: the payload's and the clock's.
    prop_assert!(
        expected.len() == 1
            || (expected.len() == 2
                && expected.contains(&Answer::Refused("timestamp_out_of_tolerance"))),
        "the oracle allows {:?}",
        expected
    );
    let fits = |expected: &Answer| match *expected {
        Answer::Accepted(statuses) => {
            status == StatusCode::OK
                && answer["status"]
                    .as_str()
                    .is_some_and(|s| statuses.contains(&s))
                && answer["event_id"].is_string()
        }
        Answer::Refused(code) => {
            let want = if code == "payload_too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            status == want && answer["error"] == code && answer["message"].is_string()
        }
    };
    prop_assert!(
        expected.iter().any(fits),
        "expected one of {:?}, got {} {}",
        expected,
        status,
        text
    );
    Ok(())
}

async fn check_lookup(
    app: &TestApp,
    account: &Option<String>,
    email: &Option<String>,
    livemode: &Option<String>,
    authorization: Option<&[u8]>,
) -> Result<(), TestCaseError> {
    let query: Vec<String> = [
        ("account", account),
        ("email", email),
        ("livemode", livemode),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", encode(v))))
    .collect();
    let mut request = app
        .client
        .get(format!("{}/v1/customers?{}", app.base, query.join("&")));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("request failed: {e}")))?;
    let (status, answer) = into_json(response).await;
    assert_no_secret(&answer.to_string());
    let authorized = authorization == Some(format!("Bearer {READ_TOKEN}").as_bytes());
    if !authorized {
        prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", answer);
        return Ok(());
    }
    match LookupRequest::parse(account.as_deref(), email.as_deref(), livemode.as_deref()) {
        Err(_) => {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", answer);
            prop_assert_eq!(&answer["error"], "invalid_request");
        }
        Ok(request) => match status {
            StatusCode::OK => {
                prop_assert_eq!(&answer["account"], request.account.as_str());
                if let Some(livemode) = request.livemode {
                    prop_assert_eq!(&answer["livemode"], livemode);
                }
            }
            StatusCode::NOT_FOUND => prop_assert_eq!(&answer["error"], "not_found"),
            StatusCode::CONFLICT => {
                prop_assert_eq!(&answer["error"], "ambiguous_livemode");
                prop_assert!(request.livemode.is_none());
            }
            other => prop_assert!(false, "undocumented lookup answer {}: {}", other, answer),
        },
    }
    Ok(())
}
