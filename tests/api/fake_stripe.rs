//! A local stand-in for Stripe's API: an HTTP server on 127.0.0.1:<free port> that
//! records every request and answers `POST /v1/customers` the way Stripe does (including
//! idempotency keys), or fails as a test tells it to.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use stripe_projector::secret::Secret;
use stripe_projector::stripe::api::{parse_api_base, RetryPolicy, StripeApiConfig};

pub const TEST_KEY: &str = "sk_test_51FakeKeyForTheSuite0000000000";
pub const LIVE_KEY: &str = "sk_live_51FakeKeyForTheSuite0000000000";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How the fake answers.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Create (or, for a seen idempotency key, repeat) a customer after `delay`.
    Create { delay: Duration },
    /// Answer every request with this status and body.
    Fail { status: u16, body: Value },
}

impl Default for Behavior {
    fn default() -> Self {
        Self::Create {
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    behavior: Mutex<Behavior>,
    /// Idempotency key -> the customer first created with it, as Stripe keeps them.
    by_key: Mutex<HashMap<String, Value>>,
    created: AtomicUsize,
}

pub struct FakeStripe {
    pub base: String,
    state: Arc<State>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let data = web::Data::from(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        tokio::spawn(server);
        Self { base, state }
    }

    pub fn set(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The customer the fake created under an idempotency key.
    pub fn customer_for_key(&self, key: &str) -> Option<Value> {
        self.state.by_key.lock().unwrap().get(key).cloned()
    }

    /// Settings for the app under test: this fake, a test-mode key, short retries.
    pub fn config(&self, key: &str) -> StripeApiConfig {
        self.config_with(key, Duration::from_secs(5))
    }

    pub fn config_with(&self, key: &str, timeout: Duration) -> StripeApiConfig {
        StripeApiConfig {
            secret_key: Secret::new(key),
            api_base: parse_api_base(&self.base).unwrap(),
            retry: RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(10),
                timeout,
            },
        }
    }
}

async fn answer(request: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("<not text>").to_owned(),
            )
        })
        .collect::<HashMap<_, _>>();
    let form = web::Query::<Vec<(String, String)>>::from_query(
        std::str::from_utf8(&body).unwrap_or_default(),
    )
    .map(web::Query::into_inner)
    .unwrap_or_default();
    let recorded = Recorded {
        method: request.method().to_string(),
        path: request.path().to_owned(),
        headers,
        form,
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let behavior = state.behavior.lock().unwrap().clone();
    match behavior {
        Behavior::Fail { status, body } => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .insert_header(("Request-Id", "req_fake_failure"))
                .json(body)
        }
        Behavior::Create { delay } => {
            // The only sleep of the suite's timing tests: the fake is slow, not the test.
            tokio::time::sleep(delay).await;
            let customer = create(&state, &recorded);
            HttpResponse::Ok()
                .insert_header(("Request-Id", "req_fake_create"))
                .json(customer)
        }
    }
}

fn create(state: &State, request: &Recorded) -> Value {
    let livemode = request
        .header("authorization")
        .is_some_and(|auth| auth.contains("_live_"));
    let key = request
        .header("idempotency-key")
        .unwrap_or_default()
        .to_owned();
    let mut by_key = state.by_key.lock().unwrap();
    if let Some(customer) = by_key.get(&key) {
        return customer.clone();
    }
    let number = state.created.fetch_add(1, Ordering::Relaxed) + 1;
    let customer = json!({
        "id": format!("cus_Fake{number:010}"),
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": chrono::Utc::now().timestamp(),
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "discount": null,
        "email": request.field("email"),
        "invoice_prefix": format!("FAKE{number:04}"),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": livemode,
        "metadata": {},
        "name": request.field("name"),
        "next_invoice_sequence": 1,
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    });
    if !key.is_empty() {
        by_key.insert(key, customer.clone());
    }
    customer
}
