//! The HTTP surface: routes, shared state, and the one place errors become statuses.

mod body_budget;
mod body_deadline;
mod customers;
mod ensure;
mod error;
mod ops;
mod request_id;
mod webhook;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::config::{AppSettings, WebhookConfig};
use crate::ensure::Ensurer;
use crate::lookup_batch::LookupBatcher;
use crate::secret::Secret;
use crate::store::Store;

pub use self::ensure::MAX_BODY_BYTES as ENSURE_MAX_BODY_BYTES;
pub use body_budget::BodyBudget;
pub use error::ApiError;

/// Everything a request handler may use.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    /// Checkout lookups go through here and share queries (see `lookup_batch`).
    pub lookups: LookupBatcher,
    pub webhook: WebhookConfig,
    /// When set, lookups need `Authorization: Bearer <token>`. It never grants ensure.
    pub read_token: Option<Secret>,
    /// Who may call ensure, which creates real Stripe customers.
    pub ensure_access: EnsureAccess,
    /// Checkout's get-or-create; one per process, so its single flight spans workers.
    pub ensure: Ensurer,
    /// Bytes of request bodies that may be in flight at once, across workers.
    pub body_budget: BodyBudget,
}

/// Who may call `POST /v1/customers/ensure`.
#[derive(Debug, Clone)]
pub enum EnsureAccess {
    /// `Authorization: Bearer <token>` is required (`ENSURE_API_TOKEN`); the read token
    /// does not grant it.
    Token(Secret),
    /// No token: only peers on a loopback address, whatever address the server is bound
    /// to. `serve` refuses to bind beyond loopback like this with a Stripe key; this guards
    /// embedders that build the state themselves.
    LoopbackOnly,
}

impl AppState {
    /// The state handlers share, over a migrated store. It starts the store's batching
    /// tasks, so it runs inside a Tokio runtime.
    pub fn new(settings: AppSettings, store: Store) -> Self {
        let platform = settings.webhook.platform_account.clone();
        Self {
            lookups: LookupBatcher::start(&store),
            store,
            webhook: settings.webhook,
            read_token: settings.read_token,
            ensure_access: EnsureAccess::from_token(settings.ensure_token),
            ensure: Ensurer::new(settings.stripe, platform),
            body_budget: BodyBudget::new(settings.max_body_bytes_in_flight),
        }
    }
}

impl EnsureAccess {
    /// `ENSURE_API_TOKEN` when set, else loopback only.
    pub fn from_token(token: Option<Secret>) -> Self {
        token.map_or(Self::LoopbackOnly, Self::Token)
    }
}

/// Server knobs that are not part of request handling.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    pub workers: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request head, and then its body; a client
    /// that stalls longer gets 408 and a closed connection.
    pub client_timeout: Duration,
    /// Connections each worker serves at once; beyond it, new connections wait in the
    /// listen backlog instead of each costing buffers and a task.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            shutdown_timeout: Duration::from_secs(30),
            client_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Declares the routes once: what the server registers and the list (`ROUTES`) the
/// OpenAPI document is checked against, so neither can have a route the other lacks.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route the server answers, as `(method, path)`.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn routes(config: &mut web::ServiceConfig) {
            config$(.route($path, web::$method().to($handler)))*;
        }
    };
}

routes! {
    post "/webhooks/stripe" => webhook::receive,
    get "/v1/customers" => customers::lookup,
    post "/v1/customers/ensure" => ensure::counted,
    get "/v1/customers/explain" => customers::explain,
    get "/healthz" => ops::healthz,
    get "/readyz" => ops::readyz,
    get "/metrics" => ops::metrics,
    get "/openapi.json" => ops::openapi,
}

/// The application as `serve` runs it: the shared state and a server that has not been
/// polled yet.
pub struct Application {
    /// A clone of what the handlers share (its parts share their state with the server's).
    pub state: AppState,
    pub server: Server,
}

/// Builds the application from settings over a migrated store, on an already bound
/// listener. `serve` and the integration tests both start the service through here.
pub fn application(
    settings: AppSettings,
    store: Store,
    listener: TcpListener,
) -> std::io::Result<Application> {
    let options = settings.server;
    let state = AppState::new(settings, store);
    let server = server(state.clone(), listener, options)?;
    Ok(Application { state, server })
}

/// Builds the server on an already bound listener (port 0 in tests). It does not handle
/// signals itself: the caller stops it through its handle (see `stop_on_signals`).
pub fn server(
    state: AppState,
    listener: TcpListener,
    options: ServerOptions,
) -> std::io::Result<Server> {
    // Before the first request, so build info and the zeroed series are there at once.
    crate::metrics::install();
    let state = web::Data::new(state);
    let client_timeout = options.client_timeout;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(move |request, next| {
                body_deadline::middleware(client_timeout, request, next)
            }))
            .wrap(from_fn(request_id::middleware))
            .app_data(state.clone())
            .configure(routes)
    })
    .workers(options.workers)
    .max_connections(options.max_connections)
    .shutdown_timeout(options.shutdown_timeout.as_secs())
    .client_request_timeout(options.client_timeout)
    .client_disconnect_timeout(options.client_timeout)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Stops the server gracefully (no new connections; in-flight requests finish and commit)
/// on the first SIGTERM or SIGINT. The handlers are installed before this returns, so a
/// signal that arrives as soon as the server is announced is never lost.
#[cfg(unix)]
pub fn stop_on_signals(server: &Server) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let handle = server.handle();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping: finishing in-flight requests");
        handle.stop(true).await;
    });
    Ok(())
}
