//! `docs/openapi.json` is the HTTP surface: it names exactly the server's routes, the
//! server serves it, and the answers the server gives (every status this test can cause)
//! validate against its schemas.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::http::ROUTES;

use crate::fake_stripe::{Behavior, FakeStripe, TEST_KEY};
use crate::helpers::{created, now, sign, AppConfig, Backend, EventSpec, TestApp, SECRET};

const DOCUMENT: &str = include_str!("../../docs/openapi.json");

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

/// Checks `body`, answered with `status` by `method path`, against the document's schema
/// for that response; panics with every violation.
fn validate(method: &str, path: &str, status: StatusCode, body: &Value) {
    let document = document();
    let response = &document["paths"][path][method]["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {body}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
    // The response schema with the document's components as its definitions.
    let mut standalone = schema.clone();
    standalone["$defs"] = document["components"]["schemas"].clone();
    let text = standalone
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    let standalone: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&standalone).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?} in {body}"
    );
}

#[test]
fn the_document_names_exactly_the_servers_routes() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, served);
}

async fn ensure(app: &TestApp, body: &Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(format!("{}/v1/customers/ensure", app.base))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    crate::helpers::into_json(request.send().await.unwrap()).await
}

async fn answers_validate_against_the_document(backend: Backend) {
    const A: &str = "acct_1OpenapiAaaaaaaaa";
    let fake = FakeStripe::start().await;
    let app = TestApp::spawn_with(
        backend,
        AppConfig {
            stripe_api: Some(fake.config(TEST_KEY)),
            max_body_bytes: 4_096,
            ..AppConfig::default()
        },
    )
    .await;
    let check = |method: &'static str, path: &'static str| {
        move |(status, body): (StatusCode, Value)| validate(method, path, status, &body)
    };

    // Webhooks: stored, duplicate, ignored, and refusals.
    let event = created("evt_1Openapi", A, "cus_1", "ada@x.io", 1_700_000_000);
    check("post", "/webhooks/stripe")(app.deliver_json(&event).await);
    check("post", "/webhooks/stripe")(app.deliver_json(&event).await);
    let charge = json!({"id": "evt_1Charge", "object": "event", "type": "charge.succeeded",
                        "created": 1, "livemode": false, "data": {"object": {}}});
    check("post", "/webhooks/stripe")(app.deliver_json(&charge).await);
    check("post", "/webhooks/stripe")(app.post_webhook(b"{}", None).await);
    let garbage = b"[1]";
    check("post", "/webhooks/stripe")(
        app.post_webhook(garbage, Some(&sign(SECRET, now(), garbage)))
            .await,
    );
    let large = vec![b' '; 8_192];
    check("post", "/webhooks/stripe")(app.post_webhook(&large, Some("t=1,v1=00")).await);

    // Lookups and explanations.
    let live = EventSpec {
        id: "evt_1OpenapiLive",
        event_type: "customer.created",
        account: Some(A),
        created: 1_700_000_000,
        livemode: true,
        customer_id: "cus_live",
        email: Some("ada@x.io"),
        customer_created: 1_700_000_000,
    }
    .to_json();
    app.deliver_json(&live).await;
    for query in [
        "account=acct_1OpenapiAaaaaaaaa&email=ada%40x.io&livemode=false",
        "account=acct_1OpenapiAaaaaaaaa&email=nobody%40x.io",
        "account=acct_1OpenapiAaaaaaaaa&email=ada%40x.io",
        "email=ada%40x.io",
    ] {
        check("get", "/v1/customers")(app.lookup(query).await);
        check("get", "/v1/customers/explain")(
            app.get(&format!("/v1/customers/explain?{query}")).await,
        );
    }

    // Ensure: found, created, refused by us, refused by Stripe.
    check("post", "/v1/customers/ensure")(
        ensure(&app, &json!({"account": A, "email": "ada@x.io"}), None).await,
    );
    check("post", "/v1/customers/ensure")(
        ensure(&app, &json!({"account": A, "email": "grace@x.io"}), None).await,
    );
    check("post", "/v1/customers/ensure")(ensure(&app, &json!({"email": 7}), None).await);
    fake.set(Behavior::Fail {
        status: 400,
        body: json!({"error": {"type": "invalid_request_error", "code": "email_invalid", "param": "email", "message": "no"}}),
    });
    check("post", "/v1/customers/ensure")(
        ensure(&app, &json!({"account": A, "email": "hopper@x.io"}), None).await,
    );

    // Operations.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = app.get(path).await;
        validate("get", path, status, &body);
    }
    let served = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let text = served.text().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), document());

    // Tokens: 401 on the reads and on ensure; ensure without Stripe: 503.
    let guarded = TestApp::spawn_with(
        backend,
        AppConfig {
            read_token: Some("read-token".to_owned()),
            ensure_token: Some("ensure-token".to_owned()),
            ..AppConfig::default()
        },
    )
    .await;
    let query = "account=acct_1OpenapiAaaaaaaaa&email=ada%40x.io";
    check("get", "/v1/customers")(guarded.lookup(query).await);
    check("get", "/v1/customers/explain")(
        guarded.get(&format!("/v1/customers/explain?{query}")).await,
    );
    check("post", "/v1/customers/ensure")(
        ensure(&guarded, &json!({"account": A, "email": "a@x.io"}), None).await,
    );
    check("post", "/v1/customers/ensure")(
        ensure(
            &guarded,
            &json!({"account": A, "email": "a@x.io"}),
            Some("ensure-token"),
        )
        .await,
    );
}

on_both_backends!(answers_validate_against_the_document);
