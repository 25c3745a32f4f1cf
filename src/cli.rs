//! The command line: one function per command, each a thin layer over the library.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, WebhookConfig};
use crate::domain::AccountId;
use crate::ensure::{EnsureError, EnsureRequest, Ensurer};
use crate::http::{self, AppState, BodyBudget, EnsureAccess, ServerOptions};
use crate::lookup::LookupRequest;
use crate::lookup_batch::LookupBatcher;
use crate::replay::{self, Progress};
use crate::secret::Secret;
use crate::store::RebuildKind;
use crate::store::{DatabaseUrl, Lookup, Store};
use crate::stripe::api::{self, RetryPolicy, StripeApi, StripeApiConfig};
use crate::stripe::limiter::Limits;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "stripe-projector",
    version,
    about = "Stripe Connect customer read model: verified webhooks -> event log -> (account, livemode, email) lookups",
    after_help = "Secrets are read from the environment only: STRIPE_WEBHOOK_SECRET (comma-separated \
                  whsec_... values), READ_API_TOKEN, ENSURE_API_TOKEN and STRIPE_SECRET_KEY. \
                  POST /v1/customers/ensure needs ENSURE_API_TOKEN as a bearer token when it is \
                  set (READ_API_TOKEN does not grant it); when it is unset, ensure answers \
                  loopback clients only, and `serve` refuses to listen beyond loopback with \
                  STRIPE_SECRET_KEY set."
)]
pub struct Cli {
    /// Database: sqlite:PATH (embedded, created if missing) or postgres://...
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:stripe-projector.db",
        hide_env_values = true,
        global = true
    )]
    database_url: String,

    /// Log format on stderr.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate, then serve HTTP until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Apply migrations and exit.
    Migrate,
    /// Print checkout's answer as JSON. Exit 0 found, 1 not found, 3 ambiguous livemode.
    Lookup(LookupArgs),
    /// Checkout's get-or-create: print the customer as JSON, creating it through Stripe
    /// (STRIPE_SECRET_KEY) on the account when the read model has none.
    Ensure(EnsureArgs),
    /// Print counts as JSON: events, customers, projection position and errors.
    Status,
    /// Rebuild the customer table from the event log and swap it in atomically.
    Replay(ReplayArgs),
    /// Append events from Stripe event exports (list object, array, one event or JSON
    /// Lines; `-` is stdin). Exit 0 when none was rejected, 1 otherwise, 2 unreadable.
    Import(ImportArgs),
    /// Remove old snapshots that a newer snapshot of the same customer supersedes.
    Prune(PruneArgs),
    /// Sign event files like Stripe does (with the first of STRIPE_WEBHOOK_SECRET) and
    /// POST them to a running server.
    Send(SendArgs),
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Rebuild aside and compare with the live table; print differences, change nothing.
    /// Exit 1 when they differ.
    #[arg(long)]
    verify: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Export files; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,

    /// Account tag for events without `account` (the platform's own events).
    #[arg(long, env = "PLATFORM_ACCOUNT_ID", default_value = "platform")]
    platform_account_id: String,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Only events whose `created` is more than this many days ago are considered.
    #[arg(long, value_name = "DAYS")]
    older_than: u32,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Event files (one JSON event each), sent in order.
    #[arg(required = true)]
    files: Vec<String>,

    /// Webhook endpoint [default: http://$LISTEN_ADDR/webhooks/stripe, LISTEN_ADDR
    /// defaulting to 127.0.0.1:8080].
    #[arg(long)]
    url: Option<String>,

    /// Refused: a secret on the command line shows in `ps`. Kept (hidden) so that the
    /// old flag gets a clear message rather than "unexpected argument".
    #[arg(long, hide = true, value_name = "SECRET")]
    secret: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to bind.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen_addr: SocketAddr,

    /// Allowed distance, in seconds, between a signature's timestamp and now (both ways).
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    tolerance_secs: u64,

    /// Account tag for events without `account` (the platform's own events).
    #[arg(long, env = "PLATFORM_ACCOUNT_ID", default_value = "platform")]
    platform_account_id: String,

    /// Largest webhook body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    max_body_bytes: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    shutdown_timeout_secs: u64,

    /// Seconds a client may take to send a request head, then its body (408 and a
    /// closed connection after that).
    #[arg(long, env = "CLIENT_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    client_timeout_secs: u64,

    /// HTTP worker threads.
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,

    /// Bytes of request bodies read or handled at once, across all workers; a request
    /// whose body (its Content-Length, else the endpoint's limit) does not fit now gets
    /// 503 overloaded with Retry-After: 1. At least MAX_BODY_BYTES and 65536.
    #[arg(long, env = "MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=1_099_511_627_776))]
    max_body_bytes_in_flight: u64,

    /// Connections served at once, PER WORKER (the process serves up to HTTP_WORKERS
    /// times this); further connections wait in the listen backlog until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,

    #[command(flatten)]
    stripe: StripeArgs,
}

/// Where and how `ensure` reaches Stripe's API. The key itself is read from the
/// environment only (STRIPE_SECRET_KEY).
#[derive(Debug, Args)]
struct StripeArgs {
    /// Stripe API base URL.
    #[arg(long, env = "STRIPE_API_BASE", default_value = api::DEFAULT_API_BASE)]
    stripe_api_base: String,

    /// Seconds one Stripe request may take (3 attempts at most).
    #[arg(long, env = "STRIPE_API_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    stripe_timeout_secs: u64,

    /// Requests to Stripe in flight at once, at most, for the whole process.
    #[arg(long, env = "STRIPE_API_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    stripe_api_concurrency: u32,

    /// Requests started to Stripe in any one second, at most, for the whole process
    /// (retries included). A caller that would wait over 1 s for its turn gets 503.
    #[arg(long, env = "STRIPE_API_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    stripe_api_rate: u32,
}

#[derive(Debug, Args)]
struct EnsureArgs {
    /// The organizer's account (acct_...), or the platform's id.
    #[arg(long)]
    account: String,
    /// The buyer's email; the key is trimmed and lowercased, Stripe gets it as given.
    #[arg(long)]
    email: String,
    /// The customer's name, sent to Stripe when it is created.
    #[arg(long)]
    name: Option<String>,
    /// true or false; omit to use the mode of STRIPE_SECRET_KEY.
    #[arg(long)]
    livemode: Option<String>,
    /// Account tag for events without `account` (the platform's own events).
    #[arg(long, env = "PLATFORM_ACCOUNT_ID", default_value = "platform")]
    platform_account_id: String,

    #[command(flatten)]
    stripe: StripeArgs,
}

#[derive(Debug, Args)]
struct LookupArgs {
    /// The organizer's account (acct_...), or the platform's id.
    #[arg(long)]
    account: String,
    /// The buyer's email; matched trimmed and lowercased.
    #[arg(long)]
    email: String,
    /// true or false; omit to accept either mode when only one has a customer.
    #[arg(long)]
    livemode: Option<String>,
}

/// A command that could not do its job: a person's mistake (exit 2) or the world's (1).
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl Failure {
    fn runtime(context: &str, error: impl std::fmt::Display) -> Self {
        Self::Runtime(format!("{context}: {error}"))
    }

    pub fn report(self) -> ExitCode {
        let (message, code) = match self {
            Self::Usage(message) => (message, 2),
            Self::Runtime(message) => (message, 1),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

/// Turns a clap error into one line (help and version go to stdout as usual).
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("tip:")
                && !line.starts_with("For more information")
        })
        .collect();
    let line = line.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    Failure::Usage(format!("{line} (see --help)")).report()
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(&cli.database_url, args).await,
        Command::Migrate => migrate(&cli.database_url).await,
        Command::Lookup(args) => lookup(&cli.database_url, args).await,
        Command::Ensure(args) => ensure(&cli.database_url, args).await,
        Command::Status => status(&cli.database_url).await,
        Command::Replay(args) => replay(&cli.database_url, args).await,
        Command::Import(args) => import(&cli.database_url, args).await,
        Command::Prune(args) => prune(&cli.database_url, args).await,
        Command::Send(args) => send(args).await,
    };
    result.unwrap_or_else(Failure::report)
}

/// An environment variable that is unset or empty is `None`.
fn env_var(name: &str) -> Result<Option<String>, Failure> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Failure::Usage(format!("{name} is not valid UTF-8")))
        }
    }
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, Failure> {
    DatabaseUrl::parse(url).map_err(|e| Failure::Usage(e.to_string()))
}

async fn open_store(url: &str) -> Result<Store, Failure> {
    let url = parse_database_url(url)?;
    Store::connect(&url)
        .await
        .map_err(|e| Failure::runtime("cannot open the database", e))
}

async fn open_migrated_store(url: &str) -> Result<Store, Failure> {
    let store = open_store(url).await?;
    store
        .migrate()
        .await
        .map_err(|e| Failure::runtime("cannot migrate the database", e))?;
    Ok(store)
}

async fn serve(database_url: &str, args: ServeArgs) -> Result<ExitCode, Failure> {
    let usage = |e: config::ConfigError| Failure::Usage(e.to_string());
    let webhook = WebhookConfig {
        secrets: config::parse_webhook_secrets(env_var("STRIPE_WEBHOOK_SECRET")?.as_deref())
            .map_err(usage)?,
        tolerance_secs: args.tolerance_secs,
        platform_account: config::parse_platform_account(&args.platform_account_id)
            .map_err(usage)?,
        max_body_bytes: usize::try_from(args.max_body_bytes)
            .map_err(|_| Failure::Usage("MAX_BODY_BYTES is too large for this machine".into()))?,
    };
    let body_budget = body_budget(args.max_body_bytes_in_flight, webhook.max_body_bytes)?;
    let read_token = config::parse_read_token(env_var("READ_API_TOKEN")?.as_deref());
    let ensure_token = config::parse_ensure_token(env_var("ENSURE_API_TOKEN")?.as_deref());
    let stripe = stripe_api(&args.stripe)?;
    config::check_ensure_exposure(args.listen_addr, stripe.is_some(), ensure_token.is_some())
        .map_err(usage)?;
    let ensure = Ensurer::new(stripe, webhook.platform_account.clone());
    parse_database_url(database_url)?;
    let listener = TcpListener::bind(args.listen_addr)
        .map_err(|e| Failure::runtime(&format!("cannot listen on {}", args.listen_addr), e))?;
    let store = open_migrated_store(database_url).await?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::runtime("cannot read the bound address", e))?;
    if read_token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "READ_API_TOKEN is unset: customer lookups are open to anyone who can reach this address");
    }
    let options = ServerOptions {
        workers: usize::from(args.workers),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        client_timeout: Duration::from_secs(args.client_timeout_secs),
        max_connections: usize::try_from(args.max_connections)
            .map_err(|_| Failure::Usage("MAX_CONNECTIONS is too large for this machine".into()))?,
    };
    let server = http::server(
        AppState {
            lookups: LookupBatcher::start(&store),
            store,
            webhook,
            read_token,
            ensure_access: EnsureAccess::from_token(ensure_token),
            ensure,
            body_budget,
        },
        listener,
        options,
    )
    .map_err(|e| Failure::runtime("cannot start the server", e))?;
    http::stop_on_signals(&server).map_err(|e| Failure::runtime("cannot handle signals", e))?;
    // Operators and tests read the bound address here (LISTEN_ADDR may use port 0).
    println!("listening on http://{local}");
    tracing::info!(%local, "serving");
    server
        .await
        .map_err(|e| Failure::runtime("server failed", e))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The budget of body bytes in flight: it must hold the largest body either endpoint
/// accepts, or that body could never be read.
fn body_budget(in_flight: u64, max_body_bytes: usize) -> Result<BodyBudget, Failure> {
    let at_least = max_body_bytes.max(http::ENSURE_MAX_BODY_BYTES);
    let in_flight = usize::try_from(in_flight).map_err(|_| {
        Failure::Usage("MAX_BODY_BYTES_IN_FLIGHT is too large for this machine".into())
    })?;
    if in_flight < at_least {
        return Err(Failure::Usage(format!(
            "MAX_BODY_BYTES_IN_FLIGHT ({in_flight}) must be at least MAX_BODY_BYTES \
             ({max_body_bytes}) and {}",
            http::ENSURE_MAX_BODY_BYTES
        )));
    }
    Ok(BodyBudget::new(in_flight))
}

/// The Stripe client, or `None` when STRIPE_SECRET_KEY is unset (ensure disabled).
fn stripe_api(args: &StripeArgs) -> Result<Option<StripeApi>, Failure> {
    let usage = |e: api::InvalidStripeSetting| Failure::Usage(e.to_string());
    let api_base = api::parse_api_base(&args.stripe_api_base).map_err(usage)?;
    let host = api_base.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if api_base.scheme() == "http" && !loopback {
        tracing::warn!(%api_base, "STRIPE_API_BASE is plain http: the API key would cross the network unencrypted");
    }
    let Some(secret_key) = env_var("STRIPE_SECRET_KEY")?.map(Secret::new) else {
        tracing::info!("STRIPE_SECRET_KEY is unset: ensure answers 503 ensure_disabled");
        return Ok(None);
    };
    let retry = RetryPolicy {
        timeout: Duration::from_secs(args.stripe_timeout_secs),
        ..RetryPolicy::default()
    };
    let limits = Limits {
        concurrency: args.stripe_api_concurrency,
        rate: args.stripe_api_rate,
        ..Limits::default()
    };
    StripeApi::new(StripeApiConfig {
        secret_key,
        api_base,
        retry,
        limits,
    })
    .map(Some)
    .map_err(usage)
}

async fn migrate(database_url: &str) -> Result<ExitCode, Failure> {
    open_migrated_store(database_url).await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn lookup(database_url: &str, args: LookupArgs) -> Result<ExitCode, Failure> {
    let request = LookupRequest::parse(
        Some(&args.account),
        Some(&args.email),
        args.livemode.as_deref(),
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let store = open_store(database_url).await?;
    let answer = store
        .lookup(&request.account, &request.email, request.livemode)
        .await
        .map_err(|e| Failure::runtime("lookup failed (has `migrate` run?)", e))?;
    let (body, code) = match answer {
        Lookup::Found(customer) => (serde_json::to_string(&customer), 0),
        Lookup::NotFound => (Ok(r#"{"error":"not_found"}"#.to_owned()), 1),
        Lookup::AmbiguousLivemode => (Ok(r#"{"error":"ambiguous_livemode"}"#.to_owned()), 3),
    };
    let body = body.map_err(|e| Failure::runtime("cannot print the answer", e))?;
    println!("{body}");
    Ok(ExitCode::from(code))
}

async fn ensure(database_url: &str, args: EnsureArgs) -> Result<ExitCode, Failure> {
    let usage = Failure::Usage;
    let livemode = match args.livemode.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(usage("--livemode must be true or false".into())),
    };
    let request = EnsureRequest::parse(
        Some(&args.account),
        Some(&args.email),
        livemode,
        args.name.as_deref(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let platform = AccountId::parse(&args.platform_account_id)
        .map_err(|e| usage(format!("PLATFORM_ACCOUNT_ID: {e}")))?;
    let Some(stripe) = stripe_api(&args.stripe)? else {
        return Err(usage(
            "STRIPE_SECRET_KEY is not set: ensure needs a Stripe secret or restricted key".into(),
        ));
    };
    let store = open_store(database_url).await?;
    let ensured = Ensurer::new(Some(stripe), platform)
        .ensure(&store, &request)
        .await
        .map_err(|e| match e {
            EnsureError::Invalid(_) | EnsureError::LivemodeMismatch { .. } => usage(e.to_string()),
            EnsureError::Store(_) => Failure::runtime("ensure failed (has `migrate` run?)", e),
            other => Failure::runtime("ensure failed", other),
        })?;
    let body = serde_json::to_string(&ensured)
        .map_err(|e| Failure::runtime("cannot print the answer", e))?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}

async fn status(database_url: &str) -> Result<ExitCode, Failure> {
    let store = open_store(database_url).await?;
    let status = store
        .status()
        .await
        .map_err(|e| Failure::runtime("cannot read status (has `migrate` run?)", e))?;
    let body =
        serde_json::to_string(&status).map_err(|e| Failure::runtime("cannot print status", e))?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure::runtime("cannot print", e))?;
    println!("{text}");
    Ok(())
}

async fn replay(database_url: &str, args: ReplayArgs) -> Result<ExitCode, Failure> {
    let store = open_migrated_store(database_url).await?;
    let kind = if args.verify {
        RebuildKind::Verify
    } else {
        RebuildKind::Replace
    };
    let bar = ProgressBar::on_terminal();
    let report = replay::rebuild(&store, kind, &bar)
        .await
        .map_err(|e| Failure::runtime("replay failed", e))?;
    let seconds = report.elapsed.as_secs_f64();
    if args.verify {
        for difference in &report.differences {
            println!("{difference}");
        }
        let differing = report.differences.len();
        println!(
            "verified {} events in {seconds:.2} s: {differing} customers differ",
            report.events
        );
        return Ok(if differing == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let counts = store
        .customer_counts()
        .await
        .map_err(|e| Failure::runtime("cannot count customers", e))?;
    println!(
        "replayed {} events into {} customers ({} deleted) in {seconds:.2} s",
        report.events, counts.customers, counts.deleted_customers
    );
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn on_terminal() -> Self {
        use std::io::IsTerminal;
        Self(
            std::io::stderr()
                .is_terminal()
                .then(indicatif::ProgressBar::hidden),
        )
    }
}

impl Progress for ProgressBar {
    fn start(&self, total_events: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total_events);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn advance(&self, events: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(events);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Reads a file, or standard input for `-`, before any work starts. Unreadable input is
/// a usage error (exit 2).
fn read_input(path: &str) -> Result<Vec<u8>, Failure> {
    let read = if path == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| Failure::Usage(format!("cannot read {path}: {e}")))
}

async fn import(database_url: &str, args: ImportArgs) -> Result<ExitCode, Failure> {
    let platform = config::parse_platform_account(&args.platform_account_id)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut inputs = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let bytes = read_input(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Failure::Usage(format!("cannot read {path}: not UTF-8 text")))?;
        inputs.push((path, text));
    }
    let store = open_migrated_store(database_url).await?;
    let mut counts = crate::import::ImportCounts::default();
    for (path, text) in &inputs {
        let rejections = crate::import::import(&store, &platform, text, &mut counts)
            .await
            .map_err(|e| {
                Failure::runtime(
                    &format!("import of {path} stopped (re-running it skips what was imported)"),
                    e,
                )
            })?;
        for rejection in rejections {
            eprintln!(
                "rejected {path} {}: {}",
                rejection.position, rejection.reason
            );
        }
    }
    print_json(&counts)?;
    Ok(if counts.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn prune(database_url: &str, args: PruneArgs) -> Result<ExitCode, Failure> {
    let store = open_migrated_store(database_url).await?;
    let older_than = chrono::Utc::now().timestamp() - i64::from(args.older_than) * 86_400;
    let removed = store
        .prune_superseded(older_than)
        .await
        .map_err(|e| Failure::runtime("prune failed", e))?;
    print_json(
        &serde_json::json!({ "removed_superseded_snapshots": removed, "created_before": older_than }),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn send(args: SendArgs) -> Result<ExitCode, Failure> {
    if args.secret.is_some() {
        return Err(Failure::Usage(
            "--secret is not accepted (a secret on the command line shows in `ps`): \
             set STRIPE_WEBHOOK_SECRET instead; send signs with its first secret"
                .into(),
        ));
    }
    let url = match args.url {
        Some(url) => url,
        None => {
            let addr = env_var("LISTEN_ADDR")?.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
            format!("http://{addr}/webhooks/stripe")
        }
    };
    let url = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| Failure::Usage(format!("--url {url} is not an http(s) URL")))?;
    let secret = config::parse_webhook_secrets(env_var("STRIPE_WEBHOOK_SECRET")?.as_deref())
        .map_err(|_| {
            Failure::Usage(
                "STRIPE_WEBHOOK_SECRET is not set: send signs with its first secret".into(),
            )
        })?
        .swap_remove(0);
    let mut bodies = Vec::with_capacity(args.files.len());
    for path in &args.files {
        bodies.push((path, read_input(path)?));
    }
    let client = reqwest::Client::new();
    let mut all_accepted = true;
    for (path, body) in bodies {
        let now = chrono::Utc::now().timestamp();
        match crate::send::deliver(&client, &url, &secret, body, now).await {
            Ok(answer) => {
                all_accepted &= answer.accepted();
                println!("{path}: {} {}", answer.status, answer.body);
            }
            Err(e) => {
                all_accepted = false;
                eprintln!("error: {path}: cannot deliver to {url}: {e}");
            }
        }
    }
    Ok(if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
