//! Tenant isolation, as a property on both backends: for random histories across accounts
//! and both modes, with customer ids and emails shared across accounts on purpose, no
//! lookup ever answers a customer of another account or another mode.
//!
//! For every `(account, livemode, email)` lookup (and every lookup without `livemode`),
//! the customer answered belongs to the requested account and mode, and the history
//! holds a snapshot of that customer id under that account and mode. The history's
//! events are read as JSON here, not through the parser, so a parser that mixed accounts
//! up would be caught too. `PROPTEST_CASES=N` runs more cases.

use std::cell::Cell;
use std::collections::HashSet;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use stripe_projector::domain::{AccountId, EmailKey};
use stripe_projector::store::{Lookup, Store};

use crate::helpers::{self, Backend, TestDb};
use crate::permutation::{self, Case, ACCOUNTS, EMAIL_KEYS, PLATFORM};

property_on_both_backends!(no_lookup_answers_another_accounts_or_modes_customer_on_sqlite, no_lookup_answers_another_accounts_or_modes_customer_on_postgres => check_isolation);

fn check_isolation(backend: Backend) {
    let runtime = helpers::property_runtime();
    let db = runtime.block_on(TestDb::create(backend));
    let store = runtime.block_on(db.store());
    let runs = Cell::new(0usize);
    let mut runner = TestRunner::new(helpers::proptest_config(permutation::DEFAULT_CASES));
    let result = runner.run(&permutation::case(), |case| {
        let run = runs.replace(runs.get() + 1);
        runtime.block_on(check_case(&store, &case, run))
    });
    runtime.block_on(async move { drop(store) });
    drop(db);
    if let Err(error) = result {
        panic!("tenant isolation on {backend:?}: {error}");
    }
}

/// `(account, livemode, customer id)` of every customer snapshot in the history, read
/// straight from the JSON Stripe would send.
fn created_under(case: &Case, prefix: &str) -> HashSet<(String, bool, String)> {
    case.history
        .iter()
        .enumerate()
        .filter(|(_, event)| event.is_snapshot())
        .map(|(index, event)| {
            let json = event.to_json(index, prefix);
            let account = json["account"]
                .as_str()
                .map_or_else(|| format!("{prefix}{PLATFORM}"), str::to_owned);
            let livemode = json["livemode"].as_bool().expect("livemode");
            let customer = json["data"]["object"]["id"]
                .as_str()
                .expect("id")
                .to_owned();
            (account, livemode, customer)
        })
        .collect()
}

/// A lookup's answer, reduced to what the oracle decides.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Found(String),
    NotFound,
    Ambiguous,
}

async fn check_case(store: &Store, case: &Case, run: usize) -> Result<(), TestCaseError> {
    let prefix = format!("iso{run}_");
    let [order, _] = case.orders();
    permutation::deliver(store, case, &order, &prefix).await?;
    let owners = created_under(case, &prefix);
    let model = permutation::oracle(case)?;

    let mut accounts: Vec<String> = ACCOUNTS
        .iter()
        .map(|account| format!("{prefix}{}", account.unwrap_or(PLATFORM)))
        .collect();
    // An account with no events must see nothing at all.
    accounts.push(format!("{prefix}acct_Nobody"));
    for account in &accounts {
        let account_id = AccountId::parse(account).expect("account id");
        for email in EMAIL_KEYS.iter().chain(&["nobody@x.io"]) {
            let key = EmailKey::parse(email).expect("a key");
            for livemode in [Some(false), Some(true), None] {
                let answer = store
                    .lookup(&account_id, &key, livemode)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("lookup: {e}")))?;
                let asked = format!("{account} {email} livemode={livemode:?}");
                // Every answer, found or not, is the oracle's.
                let oracle_id = |mode: bool| {
                    let account = AccountId::parse(account.strip_prefix(&prefix)?).ok()?;
                    let snapshot = model.lookup(&account, mode, &key)?;
                    Some(snapshot.customer_id.to_string())
                };
                let expected = match livemode {
                    Some(mode) => oracle_id(mode).map_or(Expected::NotFound, Expected::Found),
                    None => match (oracle_id(false), oracle_id(true)) {
                        (Some(_), Some(_)) => Expected::Ambiguous,
                        (Some(id), None) | (None, Some(id)) => Expected::Found(id),
                        (None, None) => Expected::NotFound,
                    },
                };
                let actual = match &answer {
                    Lookup::Found(customer) => Expected::Found(customer.customer_id.clone()),
                    Lookup::NotFound => Expected::NotFound,
                    Lookup::AmbiguousLivemode => Expected::Ambiguous,
                };
                prop_assert_eq!(&actual, &expected, "{}", asked);
                let Lookup::Found(customer) = answer else {
                    continue;
                };
                prop_assert_eq!(&customer.account, account, "{}", asked);
                if let Some(livemode) = livemode {
                    prop_assert_eq!(customer.livemode, livemode, "{}", asked);
                }
                prop_assert!(
                    owners.contains(&(
                        customer.account.clone(),
                        customer.livemode,
                        customer.customer_id.clone()
                    )),
                    "{}: {} was never a customer of this account and mode",
                    asked,
                    customer.customer_id
                );
                let shown = customer
                    .email
                    .as_deref()
                    .and_then(|e| EmailKey::parse(e).ok());
                prop_assert_eq!(shown.as_ref(), Some(&key), "{}", asked);
            }
        }
    }
    Ok(())
}
