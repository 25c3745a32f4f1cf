//! Settings shared by several commands, each declared once with its flag, environment
//! variable and default, in groups that commands flatten into their own arguments.
//! Secrets are never flags: they are read from the environment here, so `--help` and
//! `ps` never show them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::Failure;
use crate::config::{self, WebhookConfig};
use crate::domain::AccountId;
use crate::http::{self, ServerOptions};
use crate::lookup::LookupRequest;
use crate::secret::Secret;
use crate::store::{DatabaseUrl, LockError, Maintenance, MaintenanceLock, Store};
use crate::stripe::api::{self, RetryPolicy, StripeApi, StripeApiConfig};
use crate::stripe::limiter::Limits;

/// `serve` binds here; `send` posts here when given no `--url`.
pub const LISTEN_ADDR_ENV: &str = "LISTEN_ADDR";
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";

/// Which buyer of which organizer a read is about: `lookup` and `explain`.
#[derive(Debug, Args)]
pub struct CustomerKeyArgs {
    /// The organizer's account (acct_...), or the platform's id.
    #[arg(long)]
    account: String,
    /// The buyer's email; matched trimmed and lowercased.
    #[arg(long)]
    email: String,
    /// true or false; when omitted, both modes are considered.
    #[arg(long)]
    livemode: Option<String>,
}

impl CustomerKeyArgs {
    /// The key as checkout's question, checked as the HTTP API checks it.
    pub fn request(&self) -> Result<LookupRequest, Failure> {
        LookupRequest::parse(
            Some(&self.account),
            Some(&self.email),
            self.livemode.as_deref(),
        )
        .map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// Where the data lives; every command but `send` opens it.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database: sqlite:PATH (embedded, created if missing) or postgres://...
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:stripe-projector.db",
        hide_env_values = true,
        global = true
    )]
    database_url: String,
}

impl DatabaseArgs {
    pub fn url(&self) -> Result<DatabaseUrl, Failure> {
        DatabaseUrl::parse(&self.database_url).map_err(|e| Failure::Usage(e.to_string()))
    }

    pub async fn open(&self) -> Result<Store, Failure> {
        Store::connect(&self.url()?)
            .await
            .map_err(|e| Failure::runtime("cannot open the database", e))
    }

    pub async fn open_migrated(&self) -> Result<Store, Failure> {
        let store = self.open().await?;
        store
            .migrate()
            .await
            .map_err(|e| Failure::runtime("cannot migrate the database", e))?;
        Ok(store)
    }
}

/// Whether a maintenance command waits for another run of its kind on the database.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// When another run of this kind holds the database, wait for it to finish (saying
    /// so on stderr) instead of exiting 1.
    #[arg(long, overrides_with = "no_wait")]
    wait: bool,
    /// When another run of this kind holds the database, exit 1 at once (the default).
    #[arg(long)]
    no_wait: bool,
}

impl WaitArgs {
    /// Takes the lock of `kind` for `command`: a taken lock is one line and exit 1, or,
    /// with `--wait`, a line saying what it waits for.
    pub async fn lock(
        &self,
        store: &Store,
        kind: Maintenance,
        command: &str,
    ) -> Result<MaintenanceLock, Failure> {
        store
            .lock_maintenance(kind, command, self.wait && !self.no_wait, |holder| {
                eprintln!("waiting: {holder} holds this database");
            })
            .await
            .map_err(|e| match e {
                LockError::Busy { .. } => {
                    Failure::Runtime(format!("{e}; try again later, or pass --wait"))
                }
                other => Failure::runtime("cannot take the maintenance lock", other),
            })
    }
}

/// The account tag of events that carry no `account`.
#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// Account tag for events without `account` (the platform's own events).
    #[arg(long, env = "PLATFORM_ACCOUNT_ID", default_value = "platform")]
    platform_account_id: String,
}

impl PlatformArgs {
    pub fn account(&self) -> Result<AccountId, Failure> {
        config::parse_platform_account(&self.platform_account_id)
            .map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// Where `serve` listens.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Address to bind.
    #[arg(long, env = LISTEN_ADDR_ENV, default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,
}

/// How the webhook endpoint verifies and tags deliveries. Its secrets come from
/// STRIPE_WEBHOOK_SECRET.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Allowed distance, in seconds, between a signature's timestamp and now (both ways).
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    tolerance_secs: u64,

    #[command(flatten)]
    platform: PlatformArgs,

    /// Largest webhook body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    max_body_bytes: u64,
}

impl WebhookArgs {
    pub fn config(&self) -> Result<WebhookConfig, Failure> {
        Ok(WebhookConfig {
            secrets: webhook_secrets(|e| Failure::Usage(e.to_string()))?,
            tolerance_secs: self.tolerance_secs,
            platform_account: self.platform.account()?,
            max_body_bytes: usize::try_from(self.max_body_bytes).map_err(|_| {
                Failure::Usage("MAX_BODY_BYTES is too large for this machine".into())
            })?,
        })
    }
}

/// How `serve` handles connections and bounds the memory requests take.
#[derive(Debug, Args)]
pub struct ServerArgs {
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
}

impl ServerArgs {
    /// The budget of body bytes in flight: it must hold the largest body either endpoint
    /// accepts, or that body could never be read.
    pub fn body_bytes_in_flight(&self, max_body_bytes: usize) -> Result<usize, Failure> {
        let at_least = max_body_bytes.max(http::ENSURE_MAX_BODY_BYTES);
        let in_flight = usize::try_from(self.max_body_bytes_in_flight).map_err(|_| {
            Failure::Usage("MAX_BODY_BYTES_IN_FLIGHT is too large for this machine".into())
        })?;
        if in_flight < at_least {
            return Err(Failure::Usage(format!(
                "MAX_BODY_BYTES_IN_FLIGHT ({in_flight}) must be at least MAX_BODY_BYTES \
                 ({max_body_bytes}) and {}",
                http::ENSURE_MAX_BODY_BYTES
            )));
        }
        Ok(in_flight)
    }

    pub fn options(&self) -> Result<ServerOptions, Failure> {
        Ok(ServerOptions {
            workers: usize::from(self.workers),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            client_timeout: Duration::from_secs(self.client_timeout_secs),
            max_connections: usize::try_from(self.max_connections).map_err(|_| {
                Failure::Usage("MAX_CONNECTIONS is too large for this machine".into())
            })?,
        })
    }
}

/// Where and how `ensure` reaches Stripe's API. The key itself is read from the
/// environment only (STRIPE_SECRET_KEY).
#[derive(Debug, Args)]
pub struct StripeArgs {
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

impl StripeArgs {
    /// The Stripe client, or `None` when STRIPE_SECRET_KEY is unset (ensure disabled).
    pub fn client(&self) -> Result<Option<StripeApi>, Failure> {
        let usage = |e: api::InvalidStripeSetting| Failure::Usage(e.to_string());
        let api_base = api::parse_api_base(&self.stripe_api_base).map_err(usage)?;
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
            timeout: Duration::from_secs(self.stripe_timeout_secs),
            ..RetryPolicy::default()
        };
        let limits = Limits {
            concurrency: self.stripe_api_concurrency,
            rate: self.stripe_api_rate,
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
}

/// How `backfill` and `catch-up` reach Stripe's API. The key is read from the
/// environment only (STRIPE_SECRET_KEY), and is required.
#[derive(Debug, Args)]
pub struct SyncStripeArgs {
    /// Stripe API base URL.
    #[arg(long, env = "STRIPE_API_BASE", default_value = api::DEFAULT_API_BASE)]
    stripe_api_base: String,

    /// Seconds one Stripe request may take before it is retried.
    #[arg(long, env = "STRIPE_API_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    stripe_timeout_secs: u64,

    /// Requests started to Stripe in any one second, at most, in total (retries included).
    /// Stripe allows 25 per second in test mode and 100 in live mode.
    #[arg(long, env = "STRIPE_API_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,

    /// Accounts worked on at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
}

impl SyncStripeArgs {
    /// The Stripe client for a batch job: patient with 429s and failures (8 attempts,
    /// backoff from 500 ms), waiting as long as it takes for its turn within the rate.
    pub fn client(&self) -> Result<StripeApi, Failure> {
        let usage = |e: api::InvalidStripeSetting| Failure::Usage(e.to_string());
        let api_base = api::parse_api_base(&self.stripe_api_base).map_err(usage)?;
        let Some(secret_key) = env_var("STRIPE_SECRET_KEY")?.map(Secret::new) else {
            return Err(Failure::Usage(
                "STRIPE_SECRET_KEY is not set: reading Stripe's API needs the platform's secret or restricted key".into(),
            ));
        };
        let retry = RetryPolicy {
            attempts: 8,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(self.stripe_timeout_secs),
            give_up_on_429_at_our_rate: false,
        };
        let limits = Limits {
            concurrency: self.concurrency,
            rate: self.rate,
            max_wait: Duration::from_secs(24 * 3_600),
        };
        StripeApi::new(StripeApiConfig {
            secret_key,
            api_base,
            retry,
            limits,
        })
        .map_err(usage)
    }
}

/// STRIPE_WEBHOOK_SECRET: the endpoint's secrets, at least one; `missing` words the error
/// when there is none.
pub fn webhook_secrets(
    missing: impl FnOnce(config::ConfigError) -> Failure,
) -> Result<Vec<Secret>, Failure> {
    config::parse_webhook_secrets(env_var("STRIPE_WEBHOOK_SECRET")?.as_deref()).map_err(missing)
}

/// READ_API_TOKEN, when set.
pub fn read_token() -> Result<Option<Secret>, Failure> {
    Ok(config::parse_read_token(
        env_var("READ_API_TOKEN")?.as_deref(),
    ))
}

/// ENSURE_API_TOKEN, when set.
pub fn ensure_token() -> Result<Option<Secret>, Failure> {
    Ok(config::parse_ensure_token(
        env_var("ENSURE_API_TOKEN")?.as_deref(),
    ))
}

/// An environment variable that is unset or empty is `None`.
pub fn env_var(name: &str) -> Result<Option<String>, Failure> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Failure::Usage(format!("{name} is not valid UTF-8")))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::cli::Cli;

    /// Secrets are read from the environment only: a flag reading one would show its value
    /// in `--help` (and the flag itself in `ps`).
    #[test]
    fn no_flag_reads_a_secret_and_help_hides_the_database_url() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let secrets = [
            "STRIPE_WEBHOOK_SECRET",
            "READ_API_TOKEN",
            "ENSURE_API_TOKEN",
            "STRIPE_SECRET_KEY",
        ];
        let commands = std::iter::once(&cli).chain(cli.get_subcommands());
        for command in commands {
            let mut seen = Vec::new();
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env().and_then(|env| env.to_str()) else {
                    continue;
                };
                let name = command.get_name();
                assert!(!secrets.contains(&env), "{name}: {env} is a flag");
                assert!(!seen.contains(&env), "{name}: {env} is read twice");
                seen.push(env);
                if env == "DATABASE_URL" {
                    assert!(arg.is_hide_env_values_set(), "{name}: {env} is shown");
                }
            }
        }
    }
}
