//! Filling the log from Stripe's API where webhooks did not reach: `backfill` records every
//! live customer of an account as a snapshot, `catch-up` handles the `customer.*` events
//! Stripe still keeps as deliveries.
//!
//! Both work on several accounts at once (`concurrency` workers), every request through
//! one [`StripeApi`] whose limiter bounds the rate for all of them, and every record
//! through the store's one append path. An account that fails fails alone: it is
//! reported, and the others go on.

pub mod backfill;
pub mod catch_up;
pub mod record;
pub mod since;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::AccountId;
use crate::store::{Store, StoreError};
use crate::stripe::api::{StripeApi, StripeApiError};
use crate::stripe::reads::ListOf;

use record::NotRecorded;

/// One account a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The platform's own customers: no `Stripe-Account`, tagged `PLATFORM_ACCOUNT_ID`.
    Platform,
    Connected(AccountId),
}

impl Target {
    /// The `Stripe-Account` header: `None` for the platform.
    pub fn on(&self) -> Option<&AccountId> {
        match self {
            Self::Platform => None,
            Self::Connected(account) => Some(account),
        }
    }

    /// The account tag its records carry.
    pub fn tag<'a>(&'a self, platform: &'a AccountId) -> &'a AccountId {
        self.on().unwrap_or(platform)
    }
}

/// The accounts an operator named: `--account` (repeatable), `--platform`,
/// `--all-accounts`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub accounts: Vec<AccountId>,
    pub platform: bool,
    pub all_accounts: bool,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && !self.platform && !self.all_accounts
    }

    /// The targets, each once: the platform first, then the named accounts, then (with
    /// `--all-accounts`) every connected account Stripe lists, newest first.
    pub async fn resolve(&self, stripe: &StripeApi) -> Result<Vec<Target>, StripeApiError> {
        let mut targets = Vec::new();
        if self.platform {
            targets.push(Target::Platform);
        }
        let mut push = |account: AccountId| {
            let target = Target::Connected(account);
            if !targets.contains(&target) {
                targets.push(target);
            }
        };
        for account in &self.accounts {
            push(account.clone());
        }
        if self.all_accounts {
            let mut after: Option<String> = None;
            loop {
                let page = stripe
                    .list_page(ListOf::Accounts, None, after.as_deref())
                    .await?;
                for listed in &page.objects {
                    match AccountId::parse(&listed.id) {
                        Ok(account) => push(account),
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping an account id we cannot use")
                        }
                    }
                }
                match page.starting_after() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        Ok(targets)
    }
}

/// A request to stop after the page in hand (SIGINT, SIGTERM). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why one account did not finish.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Stripe(#[from] StripeApiError),
    #[error("the event store failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] NotRecorded),
    /// A stop was requested; the account resumes where it stopped on the next run.
    #[error("stopped before the account was done")]
    Stopped,
}

/// How a command's accounts ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// Accounts that failed, with why (never the key, never Stripe's message).
    pub failed: Vec<(String, String)>,
    /// Accounts a stop left unfinished.
    pub stopped: usize,
}

/// What a command reports as it goes (a progress bar on a terminal, or nothing).
pub trait Progress: Sync {
    /// `accounts` targets are known.
    fn start(&self, accounts: u64);
    /// Something was counted: redraw from `stripe`'s request counts and the tally.
    fn advance(&self, accounts_done: u64, objects: u64, stripe: &StripeApi);
    fn finish(&self);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64, _: u64, _: &StripeApi) {}
    fn finish(&self) {}
}

/// Runs `work` on every target, `concurrency` at a time; each account's failure is kept
/// and the others go on.
async fn for_each_account<F, Fut>(targets: Vec<Target>, concurrency: usize, work: F) -> Ended
where
    F: Fn(Target) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), AccountError>> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(VecDeque::from(targets)));
    let ended = Arc::new(Mutex::new(Ended::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (queue, ended, work) = (queue.clone(), ended.clone(), work.clone());
        workers.spawn(async move {
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some(target) = next else { return };
                let name = match &target {
                    Target::Platform => "the platform".to_owned(),
                    Target::Connected(account) => account.to_string(),
                };
                match work(target).await {
                    Ok(()) => {}
                    Err(AccountError::Stopped) => {
                        ended.lock().unwrap_or_else(PoisonError::into_inner).stopped += 1;
                    }
                    Err(error) => {
                        tracing::warn!(account = %name, error = %error, "account failed");
                        ended
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .failed
                            .push((name, error.to_string()));
                    }
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        if let Err(panic) = joined {
            // A worker's panic is a bug; its account stays unfinished and is reported.
            let mut ended = ended.lock().unwrap_or_else(PoisonError::into_inner);
            ended
                .failed
                .push(("a worker".to_owned(), panic.to_string()));
        }
    }
    let mut ended = ended.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *ended)
}

/// A counter shared by the workers.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What both commands need: the client, the store, and who the platform is.
#[derive(Debug, Clone)]
pub struct Context {
    pub stripe: StripeApi,
    pub store: Store,
    pub platform: AccountId,
    pub stop: Stop,
}

/// The current Unix time.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
