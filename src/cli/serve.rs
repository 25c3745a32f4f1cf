//! `serve`: migrate, then serve HTTP until SIGINT/SIGTERM.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Args;

use super::settings::{self, DatabaseArgs, ListenArgs, ServerArgs, StripeArgs, WebhookArgs};
use super::Failure;
use crate::config::{self, AppSettings};
use crate::http;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,

    #[command(flatten)]
    webhook: WebhookArgs,

    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    stripe: StripeArgs,
}

impl ServeArgs {
    /// Every setting checked, before anything is bound or migrated.
    fn settings(&self) -> Result<AppSettings, Failure> {
        let webhook = self.webhook.config()?;
        let max_body_bytes_in_flight = self.server.body_bytes_in_flight(webhook.max_body_bytes)?;
        let read_token = settings::read_token()?;
        let ensure_token = settings::ensure_token()?;
        let stripe = self.stripe.client()?;
        config::check_ensure_exposure(
            self.listen.listen_addr,
            stripe.is_some(),
            ensure_token.is_some(),
        )
        .map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(AppSettings {
            webhook,
            read_token,
            ensure_token,
            stripe,
            max_body_bytes_in_flight,
            server: self.server.options()?,
        })
    }
}

pub async fn run(database: &DatabaseArgs, args: ServeArgs) -> Result<ExitCode, Failure> {
    let settings = args.settings()?;
    database.url()?;
    let listen_addr = args.listen.listen_addr;
    let listener = TcpListener::bind(listen_addr)
        .map_err(|e| Failure::runtime(&format!("cannot listen on {listen_addr}"), e))?;
    let store = database.open_migrated().await?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::runtime("cannot read the bound address", e))?;
    if settings.read_token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "READ_API_TOKEN is unset: customer lookups are open to anyone who can reach this address");
    }
    let server = http::application(settings, store, listener)
        .map_err(|e| Failure::runtime("cannot start the server", e))?
        .server;
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
