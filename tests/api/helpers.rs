//! Test harness: a real server on a bound port over a fresh database of either backend.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::config::WebhookConfig;
use stripe_projector::domain::AccountId;
use stripe_projector::ensure::Ensurer;
use stripe_projector::http::{self, AppState, BodyBudget, EnsureAccess, ServerOptions};
use stripe_projector::lookup_batch::LookupBatcher;
use stripe_projector::secret::Secret;
use stripe_projector::store::{DatabaseUrl, Store};
use stripe_projector::stripe::api::{StripeApi, StripeApiConfig};
use stripe_projector::stripe::signature;

/// The suite's webhook secrets, in one place. `SECRET` is held by every server under test.
pub const SECRET: &str = "whsec_test_secret_for_the_suite";
/// A second configured secret, as during a roll; no answer or log line may repeat it.
pub const SECOND_SECRET: &str = "whsec_second_secret_for_the_suite";
/// A secret no server under test holds: what a forger signs with.
pub const UNKNOWN_SECRET: &str = "whsec_unknown_to_the_servers";
pub const PLATFORM: &str = "platform";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `TEST_DATABASE_URL` points at a PostgreSQL server where tests may create databases.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Whether a PostgreSQL test runs. It is skipped (with a note) only when
/// `TEST_DATABASE_URL` is unset; when it is set, an unreachable server fails the test
/// (`TestDb::create` panics), never skips it.
pub fn postgres_configured() -> bool {
    if postgres_admin_url().is_some() {
        return true;
    }
    eprintln!("skipped: TEST_DATABASE_URL is unset");
    false
}

/// Runs a test body once per backend, the PostgreSQL variant under `postgres_configured`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::helpers::postgres_configured() {
                        return;
                    }
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Property tests run proptest's synchronous runner and drive the async store from it
/// with a runtime of their own.
pub fn property_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Two `#[test]`s running a synchronous property check once per backend, the PostgreSQL
/// one under `postgres_configured`.
#[macro_export]
macro_rules! property_on_both_backends {
    ($sqlite:ident, $postgres:ident => $check:path) => {
        #[test]
        fn $sqlite() {
            $check($crate::helpers::Backend::Sqlite);
        }

        #[test]
        fn $postgres() {
            if !$crate::helpers::postgres_configured() {
                return;
            }
            $check($crate::helpers::Backend::Postgres);
        }
    };
}

/// A connection to a test database, of its backend's type.
enum OwnConnection {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

/// A database that exists for one test: an SQLite file in a temporary folder, or a
/// uniquely named PostgreSQL database dropped when this value is dropped.
pub struct TestDb {
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite:{}", dir.path().join("projector.db").display());
                Self {
                    url,
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url().expect("TEST_DATABASE_URL is set");
                let name = unique_name();
                let mut conn = connect_admin(&admin).await;
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("CREATE DATABASE");
                let url = replace_database(&admin, &name);
                Self {
                    url,
                    postgres: Some((admin, name)),
                    _dir: None,
                }
            }
        }
    }

    /// A connection of its own to this database, outside the store.
    async fn own_connection(&self) -> OwnConnection {
        use sqlx::Connection;
        if self.postgres.is_some() {
            OwnConnection::Postgres(
                sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect"),
            )
        } else {
            OwnConnection::Sqlite(
                sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect"),
            )
        }
    }

    /// Runs SQL on a connection of its own, outside the store: to damage or inspect the
    /// database the way an operator or a failure would.
    pub async fn execute(&self, sql: &str) {
        use sqlx::Executor;
        let done = match self.own_connection().await {
            OwnConnection::Postgres(mut conn) => conn.execute(sql).await.map(drop),
            OwnConnection::Sqlite(mut conn) => conn.execute(sql).await.map(drop),
        };
        done.expect(sql);
    }

    /// Runs a query returning one text column on a connection of its own, outside the
    /// store: to inspect the database (its catalog, say) as an operator would.
    pub async fn fetch_strings(&self, sql: &str) -> Vec<String> {
        let fetched = match self.own_connection().await {
            OwnConnection::Postgres(mut conn) => sqlx::query_scalar(sql).fetch_all(&mut conn).await,
            OwnConnection::Sqlite(mut conn) => sqlx::query_scalar(sql).fetch_all(&mut conn).await,
        };
        fetched.expect(sql)
    }

    /// PostgreSQL only: refuses new connections to this database and ends the open ones,
    /// as a database that went away would.
    pub async fn refuse_connections(&self) {
        let (admin, name) = self.postgres.as_ref().expect("a PostgreSQL test database");
        let mut conn = connect_admin(admin).await;
        for sql in [
            format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        ] {
            sqlx::Executor::execute(&mut conn, sql.as_str())
                .await
                .expect(&sql);
        }
    }

    /// PostgreSQL only: lets connections in again.
    pub async fn allow_connections(&self) {
        let (admin, name) = self.postgres.as_ref().expect("a PostgreSQL test database");
        let mut conn = connect_admin(admin).await;
        let sql = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true");
        sqlx::Executor::execute(&mut conn, sql.as_str())
            .await
            .expect(&sql);
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&DatabaseUrl::parse(&self.url).unwrap())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::Executor::execute(&mut conn, sql.as_str())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the cleanup thread panicked".to_owned()));
        // A database left behind is a leak on a shared server: fail the test that left it,
        // unless it is failing already (a second panic while unwinding would abort).
        if let Err(cause) = dropped {
            let message = format!("test database {name} was not dropped: {cause}");
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"))
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "sp_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The admin URL with its database path replaced.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..]
        .find('/')
        .map(|i| i + authority_end)
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..path_start])
}

/// Settings a test may change before the server starts.
pub struct AppConfig {
    pub secrets: Vec<String>,
    pub tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub read_token: Option<String>,
    /// `ENSURE_API_TOKEN`; `None`: ensure answers loopback peers only (the suite's client is
    /// one).
    pub ensure_token: Option<String>,
    /// How `ensure` reaches Stripe (a fake, in tests); `None`: ensure is disabled.
    pub stripe_api: Option<StripeApiConfig>,
    /// How long a client may take to send a request head, then its body.
    pub client_timeout: Duration,
    /// Bytes of request bodies the server reads or handles at once.
    pub max_body_bytes_in_flight: usize,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            secrets: vec![SECRET.to_owned()],
            tolerance_secs: 300,
            max_body_bytes: 1_048_576,
            read_token: None,
            ensure_token: None,
            stripe_api: None,
            client_timeout: ServerOptions::default().client_timeout,
            max_body_bytes_in_flight: 64 * 1_048_576,
        }
    }
}

/// A running server on 127.0.0.1:<free port>, its store and a client.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: TestDb,
    /// The server's get-or-create (a clone sharing its flights).
    pub ensurer: Ensurer,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, AppConfig::default()).await
    }

    pub async fn spawn_with(backend: Backend, config: AppConfig) -> Self {
        let db = TestDb::create(backend).await;
        let store = db.store().await;
        let platform = AccountId::parse(PLATFORM).unwrap();
        let stripe = config
            .stripe_api
            .map(|api| StripeApi::new(api).expect("Stripe client"));
        let state = AppState {
            lookups: LookupBatcher::start(&store),
            store: store.clone(),
            webhook: WebhookConfig {
                secrets: config.secrets.into_iter().map(Secret::new).collect(),
                tolerance_secs: config.tolerance_secs,
                platform_account: AccountId::parse(PLATFORM).unwrap(),
                max_body_bytes: config.max_body_bytes,
            },
            read_token: config.read_token.map(Secret::new),
            ensure_access: EnsureAccess::from_token(config.ensure_token.map(Secret::new)),
            ensure: Ensurer::new(stripe, platform),
            body_budget: BodyBudget::new(config.max_body_bytes_in_flight),
        };
        let ensurer = state.ensure.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let options = ServerOptions {
            workers: 2,
            client_timeout: config.client_timeout,
            ..ServerOptions::default()
        };
        let server = http::server(state, listener, options).expect("server");
        tokio::spawn(server);
        Self {
            base,
            client: reqwest::Client::new(),
            store,
            db,
            ensurer,
        }
    }

    /// Posts a body signed now with the suite's secret.
    pub async fn deliver(&self, body: &[u8]) -> (StatusCode, Value) {
        let header = sign(SECRET, now(), body);
        self.post_webhook(body, Some(&header)).await
    }

    pub async fn deliver_json(&self, event: &Value) -> (StatusCode, Value) {
        self.deliver(event.to_string().as_bytes()).await
    }

    pub async fn deliver_fixture(&self, path: &str) -> (StatusCode, Value) {
        self.deliver(&fixture(path)).await
    }

    pub async fn post_webhook(&self, body: &[u8], signature: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/stripe", self.base))
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        into_json(request.send().await.expect("webhook request")).await
    }

    /// `GET /v1/customers?<query>`.
    pub async fn lookup(&self, query: &str) -> (StatusCode, Value) {
        self.get(&format!("/v1/customers?{query}")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_json(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    /// The customer id checkout gets, or `None` on 404.
    pub async fn customer_id(&self, account: &str, email: &str, livemode: bool) -> Option<String> {
        let query = format!(
            "account={account}&email={}&livemode={livemode}",
            encode(email)
        );
        let (status, body) = self.lookup(&query).await;
        match status {
            StatusCode::OK => Some(body["customer_id"].as_str().unwrap().to_owned()),
            StatusCode::NOT_FOUND => None,
            other => panic!("unexpected lookup answer {other}: {body}"),
        }
    }
}

pub async fn into_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    signature::sign(&Secret::new(secret), timestamp, body)
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Percent-encodes a query value (emails carry `+`, `@` and spaces).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

pub fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).expect("fixture is JSON")
}

/// A `customer.*` event shaped like Stripe's. `account: None` is a platform event.
pub struct EventSpec<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub account: Option<&'a str>,
    pub created: i64,
    pub livemode: bool,
    pub customer_id: &'a str,
    pub email: Option<&'a str>,
    pub customer_created: i64,
}

impl EventSpec<'_> {
    pub fn to_json(&self) -> Value {
        let mut event = json!({
            "id": self.id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": self.created,
            "data": {"object": {
                "id": self.customer_id, "object": "customer", "email": self.email,
                "name": format!("name of {}", self.customer_id), "created": self.customer_created,
                "livemode": self.livemode, "metadata": {}, "balance": 0, "delinquent": false,
            }},
            "livemode": self.livemode,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": self.event_type,
        });
        if let Some(account) = self.account {
            event["account"] = json!(account);
        }
        event
    }
}

/// A quick `customer.created` on an account, in test mode.
pub fn created(id: &str, account: &str, customer_id: &str, email: &str, created: i64) -> Value {
    EventSpec {
        id,
        event_type: "customer.created",
        account: Some(account),
        created,
        livemode: false,
        customer_id,
        email: Some(email),
        customer_created: created,
    }
    .to_json()
}

/// The value of one series in a Prometheus text exposition: `series` is the metric name
/// with its labels exactly as rendered (`name{label="value"}`), or the bare name.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Anything slower than this is a hang, not a slow answer: a bound that turns a stuck test
/// into a failure, never a timing assertion.
pub const HANG: Duration = Duration::from_secs(60);

/// `POST /webhooks/stripe` to the server at `base`, signed now with the suite's secret as
/// Stripe would sign it; the caller may add headers before sending.
pub fn post_signed(client: &reqwest::Client, base: &str, body: &[u8]) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/webhooks/stripe"))
        .header("Stripe-Signature", sign(SECRET, now(), body))
        .body(body.to_vec())
}

/// Polls `check` until it succeeds and returns its value; fails the test with `what` and
/// the last failure's detail once `HANG` has passed. For states to reach (readiness, a
/// metric's value), never for timing.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + HANG;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(detail) => assert!(
                std::time::Instant::now() < deadline,
                "never reached: {what}\n{detail}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server at `base` answers `GET /readyz` with 200.
pub async fn wait_until_ready(client: &reqwest::Client, base: &str) {
    eventually("GET /readyz answers 200", || async {
        let response = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        match into_json(response).await {
            (StatusCode::OK, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await
}

/// proptest's settings for the suite: `default_cases` cases unless `PROPTEST_CASES` says
/// otherwise, and no failure persistence file.
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(cases) => cases.parse().expect("PROPTEST_CASES is a number"),
        Err(_) => default_cases,
    };
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
