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
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
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

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
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
    /// Requests still answered as usual before `scripted` applies.
    scripted_after: Mutex<usize>,
    /// While held, the requests after this many are held.
    hold_after: Mutex<usize>,
    by_key: Mutex<HashMap<KeyScope, Remembered>>,
    /// Keys of requests received and not yet answered.
    running: Mutex<HashSet<KeyScope>>,
    created: AtomicUsize,
    data: Mutex<Data>,
    /// At most this many requests answered in any one second; beyond, 429.
    rate_limit: Mutex<Option<usize>>,
    /// Arrival times of the requests of the last second, for `rate_limit`.
    recent: Mutex<VecDeque<Instant>>,
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
            scripted_after: Mutex::default(),
            hold_after: Mutex::default(),
            by_key: Mutex::default(),
            running: Mutex::default(),
            created: AtomicUsize::new(0),
            data: Mutex::default(),
            rate_limit: Mutex::default(),
            recent: Mutex::default(),
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
        self.fail_after(0, failures);
    }

    /// Answers the next `count` requests as usual, then the following ones with these
    /// failures, in order.
    pub fn fail_after(&self, count: usize, failures: impl IntoIterator<Item = Failure>) {
        *self.state.scripted_after.lock().unwrap() = count;
        self.state.scripted.lock().unwrap().extend(failures);
    }

    /// The requests to create a customer (`POST /v1/customers`), in arrival order.
    pub fn creations(&self) -> Vec<Recorded> {
        let mut requests = self.requests();
        requests.retain(|r| r.method == "POST" && r.path == "/v1/customers");
        requests
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// From now on, requests wait for [`FakeStripe::release`] before they are answered.
    pub fn hold(&self) {
        self.hold_after(0);
    }

    /// Answers the first `count` requests (counting from the fake's start); the later ones
    /// wait for [`FakeStripe::release`].
    pub fn hold_after(&self, count: usize) {
        *self.state.hold_after.lock().unwrap() = count;
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
    let query = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let recorded = Recorded {
        method: request.method().to_string(),
        path: request.path().to_owned(),
        query,
        headers,
        form,
        at,
    };
    // The request's number, from 1.
    let number = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(recorded.clone());
        requests.len()
    };
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
    let account = recorded
        .header("stripe-account")
        .unwrap_or_default()
        .to_owned();
    if state.data.lock().unwrap().disconnected.contains(&account) {
        return error(
            401,
            json!({"error": {"type": "invalid_request_error", "code": "account_invalid", "message": "The provided key does not have access to this account"}}),
        );
    }
    if state.over_rate(at) {
        return error(
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests hit the API too quickly"}}),
        );
    }
    let creates = (recorded.method.as_str(), recorded.path.as_str()) == ("POST", "/v1/customers");
    let scope = creates
        .then(|| recorded.header("idempotency-key"))
        .flatten()
        .map(|key| {
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
    if number > *state.hold_after.lock().unwrap() {
        let _ = state.open.subscribe().wait_for(|open| *open).await;
    }
    let scripted = {
        let mut after = state.scripted_after.lock().unwrap();
        if *after > 0 {
            *after -= 1;
            None
        } else {
            state.scripted.lock().unwrap().pop_front()
        }
    };
    if let Some(failure) = scripted {
        let mut response = HttpResponse::build(status(failure.status));
        response.insert_header(("Request-Id", "req_fake_failure"));
        for header in failure.headers {
            response.insert_header(header);
        }
        return response.json(failure.body);
    }
    if recorded.method == "GET" {
        return read(&state, &recorded, &account);
    }
    if (recorded.method.as_str(), recorded.path.as_str()) == ("POST", "/v1/payment_intents") {
        return payment_intent(&state, &recorded, &account);
    }
    if !creates {
        return not_found("Unrecognized request URL");
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
    let customer = customer_object(
        &format!("cus_Fake{number:010}"),
        request.field("email"),
        request.field("name"),
        chrono::Utc::now().timestamp(),
        livemode,
    );
    state
        .data
        .lock()
        .unwrap()
        .customers
        .entry(
            request
                .header("stripe-account")
                .unwrap_or_default()
                .to_owned(),
        )
        .or_default()
        .push(customer.clone());
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

/// A whole Customer object, as Stripe's API shows one.
pub fn customer_object(
    id: &str,
    email: Option<&str>,
    name: Option<&str>,
    created: i64,
    livemode: bool,
) -> Value {
    json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": created,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "discount": null,
        "email": email,
        "invoice_prefix": id.trim_start_matches("cus_").chars().take(8).collect::<String>().to_uppercase(),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": livemode,
        "metadata": {},
        "name": name,
        "next_invoice_sequence": 1,
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    })
}

/// What the fake's Stripe holds, per account (`""`: the platform's own).
#[derive(Default)]
struct Data {
    /// Customers in creation order; lists answer newest first.
    customers: HashMap<String, Vec<Value>>,
    /// Ids of deleted customers, per account: absent from lists, `deleted` when retrieved.
    deleted: HashMap<String, HashSet<String>>,
    /// Customers the search does not find yet (Stripe's search lags writes).
    unsearchable: HashSet<String>,
    /// Events in creation order, per account.
    events: HashMap<String, Vec<Value>>,
    /// Connected accounts, in connection order.
    accounts: Vec<String>,
    /// Accounts no longer connected: any request on them is 401.
    disconnected: HashSet<String>,
}

impl State {
    /// Counts a request arriving `at`; true when it is over the rate limit.
    fn over_rate(&self, at: Instant) -> bool {
        let Some(limit) = *self.rate_limit.lock().unwrap() else {
            return false;
        };
        let mut recent = self.recent.lock().unwrap();
        while recent
            .front()
            .is_some_and(|first| at.duration_since(*first) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= limit {
            return true;
        }
        recent.push_back(at);
        false
    }
}

impl FakeStripe {
    /// Adds a customer to `account` (`None`: the platform), as created last.
    pub fn add_customer(&self, account: Option<&str>, customer: Value) {
        let mut data = self.state.data.lock().unwrap();
        data.customers
            .entry(account.unwrap_or_default().to_owned())
            .or_default()
            .push(customer);
    }

    /// Deletes a customer: lists no longer show it; retrieving it says `deleted`.
    pub fn delete_customer(&self, account: Option<&str>, customer_id: &str) {
        let mut data = self.state.data.lock().unwrap();
        data.deleted
            .entry(account.unwrap_or_default().to_owned())
            .or_default()
            .insert(customer_id.to_owned());
    }

    /// The search will not find this customer (it was created less than a minute ago).
    pub fn hide_from_search(&self, customer_id: &str) {
        let mut data = self.state.data.lock().unwrap();
        data.unsearchable.insert(customer_id.to_owned());
    }

    /// Adds an event to `account`'s events (`None`: the platform's), as created last.
    pub fn add_event(&self, account: Option<&str>, event: Value) {
        let mut data = self.state.data.lock().unwrap();
        data.events
            .entry(account.unwrap_or_default().to_owned())
            .or_default()
            .push(event);
    }

    /// Connects an account to the platform.
    pub fn add_account(&self, account: &str) {
        self.state
            .data
            .lock()
            .unwrap()
            .accounts
            .push(account.to_owned());
    }

    /// The account is no longer connected: requests on it are 401 `account_invalid`.
    pub fn disconnect(&self, account: &str) {
        let mut data = self.state.data.lock().unwrap();
        data.disconnected.insert(account.to_owned());
    }

    /// At most `per_second` requests answered in any one second; the others get 429.
    pub fn limit_rate(&self, per_second: usize) {
        *self.state.rate_limit.lock().unwrap() = Some(per_second);
    }
}

fn not_found(message: &str) -> HttpResponse {
    error(
        404,
        json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": message}}),
    )
}

fn invalid(param: &str, message: &str) -> HttpResponse {
    error(
        400,
        json!({"error": {"type": "invalid_request_error", "param": param, "message": message}}),
    )
}

/// The `GET` routes: lists, one customer, the search.
fn read(state: &State, request: &Recorded, account: &str) -> HttpResponse {
    let limit = match request.param("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => return invalid("limit", "limit must be between 1 and 100"),
    };
    let data = state.data.lock().unwrap();
    let no_deleted = HashSet::new();
    let deleted = data.deleted.get(account).unwrap_or(&no_deleted);
    let customers = data
        .customers
        .get(account)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let path = request.path.as_str();
    let (url, newest_first): (&str, Vec<&Value>) = match path {
        "/v1/customers" => {
            let email = request.param("email");
            let live = customers.iter().rev().filter(|c| {
                !deleted.contains(c["id"].as_str().unwrap())
                    && email.is_none_or(|email| c["email"].as_str() == Some(email))
            });
            ("/v1/customers", live.collect())
        }
        "/v1/customers/search" => {
            let Some(wanted) = request.param("query").and_then(|query| {
                query
                    .strip_prefix("email:\"")
                    .and_then(|q| q.strip_suffix('"'))
            }) else {
                return invalid("query", "the fake searches by email:\"...\" only");
            };
            let wanted = wanted
                .replace("\\\"", "\"")
                .replace("\\\\", "\\")
                .to_lowercase();
            let found = customers.iter().rev().filter(|c| {
                let id = c["id"].as_str().unwrap();
                !deleted.contains(id)
                    && !data.unsearchable.contains(id)
                    && c["email"].as_str().map(str::to_lowercase).as_deref()
                        == Some(wanted.as_str())
            });
            return search_page(found.collect(), limit, request.param("page"));
        }
        "/v1/events" => {
            let since = match request.param("created[gte]").map(str::parse::<i64>) {
                None => i64::MIN,
                Some(Ok(since)) => since,
                Some(Err(_)) => return invalid("created[gte]", "not an integer"),
            };
            let wanted = request.param("type");
            let events = data
                .events
                .get(account)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut matching: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    let kind = e["type"].as_str().unwrap_or_default();
                    e["created"].as_i64().unwrap_or_default() >= since
                        && match wanted {
                            None => true,
                            Some(pattern) => match pattern.strip_suffix('*') {
                                Some(prefix) => kind.starts_with(prefix),
                                None => kind == pattern,
                            },
                        }
                })
                .collect();
            // Newest first; among one second, the later created first.
            matching.reverse();
            matching.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64().unwrap_or_default()));
            ("/v1/events", matching)
        }
        "/v1/accounts" => {
            if !account.is_empty() {
                return invalid("Stripe-Account", "accounts are listed by the platform");
            }
            let accounts: Vec<Value> = data
                .accounts
                .iter()
                .rev()
                .map(|id| json!({"id": id, "object": "account"}))
                .collect();
            return list_page(
                &accounts.iter().collect::<Vec<_>>(),
                limit,
                request.param("starting_after"),
                "/v1/accounts",
            );
        }
        _ => match path.strip_prefix("/v1/customers/") {
            Some(id) if !id.contains('/') => {
                return match customers.iter().find(|c| c["id"] == id) {
                    Some(_) if deleted.contains(id) => HttpResponse::Ok()
                        .json(json!({"id": id, "object": "customer", "deleted": true})),
                    Some(customer) => HttpResponse::Ok().json(customer),
                    None => not_found(&format!("No such customer: '{id}'")),
                };
            }
            _ => return not_found("Unrecognized request URL"),
        },
    };
    list_page(&newest_first, limit, request.param("starting_after"), url)
}

/// A list page of `objects` (already newest first) after `starting_after`.
fn list_page(
    objects: &[&Value],
    limit: usize,
    starting_after: Option<&str>,
    url: &str,
) -> HttpResponse {
    let start = match starting_after {
        None => 0,
        Some(after) => match objects.iter().position(|o| o["id"] == after) {
            Some(index) => index + 1,
            None => return invalid("starting_after", "no such object"),
        },
    };
    let page: Vec<&Value> = objects.iter().skip(start).take(limit).copied().collect();
    let has_more = start + page.len() < objects.len();
    HttpResponse::Ok()
        .json(json!({"object": "list", "data": page, "has_more": has_more, "url": url}))
}

/// A search page: the fake's cursor is the offset of the next page.
fn search_page(found: Vec<&Value>, limit: usize, page: Option<&str>) -> HttpResponse {
    let start = match page.map(str::parse::<usize>) {
        None => 0,
        Some(Ok(start)) => start,
        Some(Err(_)) => return invalid("page", "not a page cursor"),
    };
    let data: Vec<&Value> = found.iter().skip(start).take(limit).copied().collect();
    let next = start + data.len();
    let has_more = next < found.len();
    HttpResponse::Ok().json(json!({
        "object": "search_result",
        "data": data,
        "has_more": has_more,
        "next_page": has_more.then(|| next.to_string()),
        "url": "/v1/customers/search"
    }))
}

/// `POST /v1/payment_intents`: as on Stripe, the customer must be a live customer of the
/// account the request acts on; a customer of another account is "No such customer".
fn payment_intent(state: &State, request: &Recorded, account: &str) -> HttpResponse {
    let customer = request.field("customer").unwrap_or_default();
    let data = state.data.lock().unwrap();
    let live = data
        .customers
        .get(account)
        .is_some_and(|customers| customers.iter().any(|c| c["id"] == customer))
        && !data
            .deleted
            .get(account)
            .is_some_and(|deleted| deleted.contains(customer));
    if !live {
        return error(
            400,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                             "param": "customer", "message": format!("No such customer: '{customer}'")}}),
        );
    }
    drop(data);
    let number = state.requests.lock().unwrap().len();
    HttpResponse::Ok().json(json!({
        "id": format!("pi_Fake{number:010}"), "object": "payment_intent",
        "amount": request.field("amount").and_then(|a| a.parse::<i64>().ok()),
        "currency": request.field("currency"), "customer": customer,
        "status": "requires_payment_method", "livemode": false
    }))
}
