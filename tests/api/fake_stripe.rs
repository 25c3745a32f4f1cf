//! A local stand-in for Stripe's API: an HTTP server on 127.0.0.1:<free port> that
//! records every request and answers `POST /v1/customers` the way Stripe does, or fails
//! as a test tells it to. A test can hold its answers until it releases them, and read how
//! many requests were in flight at once and how many arrived close together.
//!
//! Where our code depends on it, it behaves as Stripe documents
//! (<https://docs.stripe.com/idempotency>, <https://docs.stripe.com/error-codes>): an
//! unknown API key is 401; an idempotency key is scoped to its account and remembered with
//! the parameters it was first used with, so a repeat gets the first answer, a reuse with
//! other parameters is 400 `idempotency_error`, and a repeat while the first request is
//! still running is 409 `idempotency_key_in_use`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use stripe_projector::secret::Secret;
use stripe_projector::stripe::api::{parse_api_base, RetryPolicy, StripeApiConfig};
use stripe_projector::stripe::limiter::Limits;
use tokio::sync::watch;

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
    /// When it arrived.
    pub at: Instant,
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
#[derive(Debug, Clone, Default)]
pub enum Behavior {
    /// Create (or, for a seen idempotency key, repeat) a customer.
    #[default]
    Create,
    /// Answer every request with this status and body.
    Fail { status: u16, body: Value },
}

/// One scripted failure, answered before the behaviour applies (see
/// [`FakeStripe::fail_next`]).
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub body: Value,
    /// Extra response headers, e.g. `Stripe-Should-Retry`.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Failure {
    /// Stripe's error envelope with this type and code.
    pub fn new(status: u16, kind: &str, code: Option<&str>) -> Self {
        Self {
            status,
            body: json!({"error": {"type": kind, "code": code, "message": "scripted failure"}}),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What Stripe remembers of an idempotency key: the parameters first sent with it, and the
/// customer it answered.
struct Remembered {
    form: Vec<(String, String)>,
    customer: Value,
}

/// An idempotency key as Stripe scopes it: per account (`Stripe-Account`, empty for the
/// platform) and API key.
type KeyScope = (String, String, String);

struct State {
    requests: Mutex<Vec<Recorded>>,
    behavior: Mutex<Behavior>,
    /// Answered, in order, before `behavior` applies.
    scripted: Mutex<VecDeque<Failure>>,
    by_key: Mutex<HashMap<KeyScope, Remembered>>,
    /// Keys of requests received and not yet answered.
    running: Mutex<HashSet<KeyScope>>,
    created: AtomicUsize,
    /// False while answers are held.
    open: watch::Sender<bool>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request in flight until its answer is ready (or the client went away).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct FakeStripe {
    pub base: String,
    state: Arc<State>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(State {
            requests: Mutex::default(),
            behavior: Mutex::default(),
            scripted: Mutex::default(),
            by_key: Mutex::default(),
            running: Mutex::default(),
            created: AtomicUsize::new(0),
            open: watch::Sender::new(true),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
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

    /// Answers the next requests with these failures, in order, before the behaviour
    /// applies again.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.state.scripted.lock().unwrap().extend(failures);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// From now on, requests wait for [`FakeStripe::release`] before they are answered.
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Answers every held request, and the later ones at once.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// Requests received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that arrived within any span shorter than `window`.
    pub fn max_arrivals_within(&self, window: Duration) -> usize {
        let mut arrivals: Vec<Instant> = self.requests().iter().map(|r| r.at).collect();
        arrivals.sort();
        (0..arrivals.len())
            .map(|i| {
                arrivals[i..]
                    .iter()
                    .take_while(|at| **at - arrivals[i] < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Waits, polling, until at least `count` requests are in flight.
    pub async fn wait_in_flight(&self, count: usize) {
        crate::helpers::eventually(&format!("{count} requests in flight"), || async {
            match self.in_flight() {
                now if now >= count => Ok(()),
                now => Err(format!("{now} in flight")),
            }
        })
        .await
    }

    /// The customer the fake created under an idempotency key, on any account.
    pub fn customer_for_key(&self, key: &str) -> Option<Value> {
        let by_key = self.state.by_key.lock().unwrap();
        by_key
            .iter()
            .find(|((_, _, k), _)| k == key)
            .map(|(_, remembered)| remembered.customer.clone())
    }

    /// How many customers the fake has created.
    pub fn customers_created(&self) -> usize {
        self.state.created.load(Ordering::SeqCst)
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
                ..RetryPolicy::default()
            },
            limits: Limits::default(),
        }
    }
}

/// Keys Stripe knows: any other is 401.
const KNOWN_KEYS: [&str; 2] = [TEST_KEY, LIVE_KEY];

async fn answer(request: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let _in_flight = InFlight::enter(&state);
    let at = Instant::now();
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
        at,
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let api_key = recorded
        .header("authorization")
        .and_then(|auth| auth.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !KNOWN_KEYS.contains(&api_key.as_str()) {
        return error(
            401,
            json!({"error": {"type": "invalid_request_error", "message": format!("Invalid API Key provided: {api_key}")}}),
        );
    }
    if (recorded.method.as_str(), recorded.path.as_str()) != ("POST", "/v1/customers") {
        return error(
            404,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "Unrecognized request URL"}}),
        );
    }
    let scope = recorded.header("idempotency-key").map(|key| {
        (
            recorded
                .header("stripe-account")
                .unwrap_or_default()
                .to_owned(),
            api_key.clone(),
            key.to_owned(),
        )
    });
    let _running = match &scope {
        Some(scope) => match Running::enter(&state, scope) {
            Some(running) => Some(running),
            None => {
                return error(
                    409,
                    json!({"error": {"type": "invalid_request_error", "code": "idempotency_key_in_use", "message": "There is currently another in-progress request using this idempotency key"}}),
                )
            }
        },
        None => None,
    };
    // Held until released; the sender lives as long as the state, so this cannot fail.
    let _ = state.open.subscribe().wait_for(|open| *open).await;
    let scripted = state.scripted.lock().unwrap().pop_front();
    if let Some(failure) = scripted {
        let mut response = HttpResponse::build(status(failure.status));
        response.insert_header(("Request-Id", "req_fake_failure"));
        for header in failure.headers {
            response.insert_header(header);
        }
        return response.json(failure.body);
    }
    let behavior = state.behavior.lock().unwrap().clone();
    match behavior {
        Behavior::Fail { status, body } => error(status, body),
        Behavior::Create => match create(&state, &recorded, scope) {
            Ok(customer) => HttpResponse::Ok()
                .insert_header(("Request-Id", "req_fake_create"))
                .json(customer),
            Err(refusal) => error(400, refusal),
        },
    }
}

fn status(code: u16) -> actix_web::http::StatusCode {
    actix_web::http::StatusCode::from_u16(code).unwrap()
}

fn error(code: u16, body: Value) -> HttpResponse {
    HttpResponse::build(status(code))
        .insert_header(("Request-Id", "req_fake_failure"))
        .json(body)
}

/// An idempotency key in use by a request until it is answered (or the client left).
struct Running<'a> {
    state: &'a State,
    scope: KeyScope,
}

impl<'a> Running<'a> {
    /// `None` when another request holds the key.
    fn enter(state: &'a State, scope: &KeyScope) -> Option<Self> {
        state
            .running
            .lock()
            .unwrap()
            .insert(scope.clone())
            .then(|| Self {
                state,
                scope: scope.clone(),
            })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.state.running.lock().unwrap().remove(&self.scope);
    }
}

/// A customer created as asked, or the first answer given to this idempotency key; a key
/// reused with other parameters is refused with the body of Stripe's 400.
fn create(state: &State, request: &Recorded, scope: Option<KeyScope>) -> Result<Value, Value> {
    let livemode = request
        .header("authorization")
        .is_some_and(|auth| auth.contains("_live_"));
    let mut form = request.form.clone();
    form.sort();
    let mut by_key = state.by_key.lock().unwrap();
    if let Some(remembered) = scope.as_ref().and_then(|scope| by_key.get(scope)) {
        if remembered.form == form {
            return Ok(remembered.customer.clone());
        }
        return Err(
            json!({"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters they were first used with"}}),
        );
    }
    let number = state.created.fetch_add(1, Ordering::SeqCst) + 1;
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
    if let Some(scope) = scope {
        by_key.insert(
            scope,
            Remembered {
                form,
                customer: customer.clone(),
            },
        );
    }
    Ok(customer)
}
