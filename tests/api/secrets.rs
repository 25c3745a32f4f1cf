//! Secrets and personal data in logs: at the default level and in the default text
//! format, nothing a request carried that is private reaches the log: no webhook secret,
//! no read or ensure token (right or wrong), no body, no email or name, whether the request was
//! accepted or rejected. (`ops/logs.rs` checks the JSON format.)

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    created, now, post_signed, sign, Backend, TestDb, HANG, SECOND_SECRET, SECRET, UNKNOWN_SECRET,
};
use crate::process::{serve_command, Served};

const READ_TOKEN: &str = "read_token_text_logs";
const WRONG_TOKEN: &str = "wrong_token_text_logs";
const ENSURE_TOKEN: &str = "ensure_token_text_logs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_at_the_default_level_hold_no_secret_token_body_or_email() {
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let mut command = serve_command(&db.url);
    command
        .env("STRIPE_WEBHOOK_SECRET", format!("{SECOND_SECRET},{SECRET}"))
        .env("READ_API_TOKEN", READ_TOKEN)
        .env("ENSURE_API_TOKEN", ENSURE_TOKEN)
        .env("MAX_BODY_BYTES", "4096")
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let mut served = Served::spawn(command);
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", served.base);
    let post = |body: Vec<u8>, signature: String| {
        client
            .post(&url)
            .header("Stripe-Signature", signature)
            .body(body)
            .send()
    };

    let mut event = created(
        "evt_text_1",
        "acct_text",
        "cus_text",
        "Hidden.Buyer@Example.org",
        1_700_000_000,
    );
    event["data"]["object"]["name"] = json!("Namemarker Quokka");
    let body = event.to_string().into_bytes();
    let stored = post_signed(&client, &served.base, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);

    let invalid = br#"{"id":"evt_text_2","type":"customer.created","email":"hidden.buyer@example.org","note":"Bodymarker"}"#.to_vec();
    let mut oversize = br#"{"email":"hidden.buyer@example.org","pad":""#.to_vec();
    oversize.resize(5000, b'x');
    let rejected = [
        // A wrong signature; the header even carries the secret's text.
        (body.clone(), format!("t={},v1={SECRET}", now())),
        (body.clone(), sign(UNKNOWN_SECRET, now(), &body)),
        (body.clone(), sign(SECRET, now() - 3600, &body)),
        (invalid.clone(), sign(SECRET, now(), &invalid)),
        (oversize, sign(SECRET, now(), b"")),
    ];
    for (body, signature) in rejected {
        let response = post(body, signature).await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }

    let lookups = [
        (
            Some(READ_TOKEN),
            "hidden.buyer%40example.org",
            StatusCode::OK,
        ),
        (
            Some(READ_TOKEN),
            "Other.Hidden%40Example.org",
            StatusCode::NOT_FOUND,
        ),
        (
            Some(WRONG_TOKEN),
            "hidden.buyer%40example.org",
            StatusCode::UNAUTHORIZED,
        ),
        (None, "hidden.buyer%40example.org", StatusCode::UNAUTHORIZED),
    ];
    for (token, email, expected) in lookups {
        let mut request = client.get(format!(
            "{}/v1/customers?account=acct_text&email={email}&livemode=false",
            served.base
        ));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), expected);
    }

    // No Stripe key: the right ensure token reaches ensure and gets 503 ensure_disabled.
    let ensure_url = format!("{}/v1/customers/ensure", served.base);
    let ensure_body = json!({"account": "acct_text", "email": "Hidden.Buyer@Example.org"});
    for (token, expected) in [
        (ENSURE_TOKEN, StatusCode::SERVICE_UNAVAILABLE),
        (READ_TOKEN, StatusCode::UNAUTHORIZED),
    ] {
        let response = client
            .post(&ensure_url)
            .bearer_auth(token)
            .body(ensure_body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }

    served.terminate();
    let exit = served.wait_exit(HANG).expect("exits");
    assert_eq!(exit.code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("event stored") && text.contains("request rejected"),
        "the log is not what this test expects to search: {text}"
    );
    let lower = text.to_lowercase();
    for private in [SECRET, SECOND_SECRET, READ_TOKEN, WRONG_TOKEN, ENSURE_TOKEN] {
        assert!(!text.contains(private), "a secret is logged: {text}");
    }
    for private in [
        "hidden.buyer",
        "other.hidden",
        "example.org",
        "quokka",
        "bodymarker",
        "xxxxxxxx",
    ] {
        assert!(!lower.contains(private), "{private} is logged: {text}");
    }
}
