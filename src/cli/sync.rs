//! `backfill` and `catch-up`: what they share on the command line (which accounts, the
//! Stripe client, the progress bar, signals, the exit status).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::settings::{DatabaseArgs, PlatformArgs, SyncStripeArgs, WaitArgs};
use super::{print_json, Failure};
use crate::domain::AccountId;
use crate::store::{Maintenance, Store};
use crate::stripe::api::StripeApi;
use crate::sync::{backfill, catch_up, since, Context, Ended, Progress, Selection, Stop};

/// Which accounts: any mix of these; at least one.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    /// A connected account (acct_...); repeatable.
    #[arg(long = "account", value_name = "ACCOUNT")]
    accounts: Vec<String>,
    /// The platform's own customers (no Stripe-Account header), tagged PLATFORM_ACCOUNT_ID.
    #[arg(long)]
    platform: bool,
    /// Every connected account Stripe lists for the platform.
    #[arg(long)]
    all_accounts: bool,
}

impl AccountsArgs {
    fn selection(&self) -> Result<Selection, Failure> {
        let accounts = self
            .accounts
            .iter()
            .map(|raw| {
                AccountId::parse(raw)
                    .ok()
                    .filter(|account| account.as_str().bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| {
                        Failure::Usage(format!("--account {raw:?} is not an account id"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let selection = Selection {
            accounts,
            platform: self.platform,
            all_accounts: self.all_accounts,
        };
        if selection.is_empty() {
            return Err(Failure::Usage(
                "name the accounts: --account acct_... (repeatable), --platform, --all-accounts"
                    .into(),
            ));
        }
        Ok(selection)
    }
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    accounts: AccountsArgs,
    /// Start every named account's pass from the top, even an interrupted one.
    #[arg(long)]
    restart: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    stripe: SyncStripeArgs,
    #[command(flatten)]
    platform: PlatformArgs,
}

#[derive(Debug, Args)]
pub struct CatchUpArgs {
    #[command(flatten)]
    accounts: AccountsArgs,
    /// From when: a duration back from now (90m, 12h, 3d) or a Unix time. Default, per
    /// account: the newest event the log holds for it minus one hour, or 30 days back.
    #[arg(long)]
    since: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    stripe: SyncStripeArgs,
    #[command(flatten)]
    platform: PlatformArgs,
}

pub async fn backfill(database: &DatabaseArgs, args: BackfillArgs) -> Result<ExitCode, Failure> {
    let selection = args.accounts.selection()?;
    let (context, targets) = prepare(database, &args.stripe, &args.platform, &selection).await?;
    let _lock = args
        .wait
        .lock(&context.store, Maintenance::Backfill, "backfill")
        .await?;
    let progress = Arc::new(Bar::on_terminal("customers"));
    let (summary, ended) = backfill::run(
        &context,
        targets,
        args.stripe.concurrency as usize,
        args.restart,
        progress,
    )
    .await;
    tracing::info!(?summary, "backfill finished");
    print_json(&summary)?;
    Ok(exit_status(&ended, "backfill"))
}

pub async fn catch_up(database: &DatabaseArgs, args: CatchUpArgs) -> Result<ExitCode, Failure> {
    let selection = args.accounts.selection()?;
    let since = args
        .since
        .as_deref()
        .map(|raw| since::parse_since(raw, chrono::Utc::now().timestamp()))
        .transpose()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let (context, targets) = prepare(database, &args.stripe, &args.platform, &selection).await?;
    let _lock = args
        .wait
        .lock(&context.store, Maintenance::CatchUp, "catch-up")
        .await?;
    let progress = Arc::new(Bar::on_terminal("events"));
    let (summary, ended) = catch_up::run(
        &context,
        targets,
        since,
        args.stripe.concurrency as usize,
        progress,
    )
    .await
    .map_err(|e| Failure::runtime("catch-up failed", e))?;
    tracing::info!(?summary, "catch-up finished");
    print_json(&summary)?;
    Ok(exit_status(&ended, "catch-up"))
}

/// Checks the settings, opens the store, resolves the accounts and arms the signals.
async fn prepare(
    database: &DatabaseArgs,
    stripe: &SyncStripeArgs,
    platform: &PlatformArgs,
    selection: &Selection,
) -> Result<(Context, Vec<crate::sync::Target>), Failure> {
    let platform = platform.account()?;
    let stripe = stripe.client()?;
    let store: Store = database.open_migrated().await?;
    let targets = selection
        .resolve(&stripe)
        .await
        .map_err(|e| Failure::runtime("cannot list the connected accounts", e))?;
    let stop = Stop::default();
    stop_on_signals(stop.clone()).map_err(|e| Failure::runtime("cannot handle signals", e))?;
    Ok((
        Context {
            stripe,
            store,
            platform,
            stop,
        },
        targets,
    ))
}

/// SIGINT or SIGTERM: finish the page in hand, then stop.
fn stop_on_signals(stop: Stop) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping after the page in hand");
        stop.request();
    });
    Ok(())
}

/// 0 when every account is done; 1 when one failed or a stop left one unfinished (each
/// named on stderr).
fn exit_status(ended: &Ended, command: &str) -> ExitCode {
    for (account, error) in &ended.failed {
        eprintln!("failed: {account}: {error}");
    }
    if ended.stopped > 0 {
        eprintln!(
            "stopped: {} account(s) not finished; run {command} again to resume",
            ended.stopped
        );
    }
    if ended.failed.is_empty() && ended.stopped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    objects: &'static str,
}

impl Bar {
    fn on_terminal(objects: &'static str) -> Self {
        use std::io::IsTerminal;
        Self {
            bar: std::io::stderr()
                .is_terminal()
                .then(indicatif::ProgressBar::hidden),
            objects,
        }
    }
}

impl Progress for Bar {
    fn start(&self, accounts: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(accounts);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} accounts {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn advance(&self, accounts_done: u64, objects: u64, stripe: &StripeApi) {
        if let Some(bar) = &self.bar {
            bar.set_position(accounts_done);
            bar.set_message(format!(
                "{objects} {}, {} requests, {} retries",
                self.objects,
                stripe.requests_sent(),
                stripe.requests_retried()
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
