//! Checkout's reads: the customer for each key, and the rule for a lookup without
//! livemode.

use super::{postgres, Customer, Lookup, LookupRequest, Store, StoreError};
use crate::domain::{AccountId, EmailKey};

/// A row of a many-key lookup: the customer found for the key at position `i` (from 0).
#[derive(sqlx::FromRow)]
pub(super) struct NumberedCustomer {
    pub(super) i: i64,
    #[sqlx(flatten)]
    pub(super) customer: Customer,
}

/// Places each backend's numbered rows at their key's position; keys without a row are
/// `None`.
pub(super) fn in_key_order(
    rows: Vec<NumberedCustomer>,
    keys: usize,
) -> Result<Vec<Option<Customer>>, sqlx::Error> {
    let mut found = vec![None; keys];
    for row in rows {
        let slot = usize::try_from(row.i)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("lookup key {} out of range", row.i)))?;
        *slot = Some(row.customer);
    }
    Ok(found)
}

impl Store {
    /// The customer checkout should use for this email on this account.
    pub async fn lookup(
        &self,
        account: &AccountId,
        email: &EmailKey,
        livemode: Option<bool>,
    ) -> Result<Lookup, StoreError> {
        let request = LookupRequest {
            account: account.clone(),
            email: email.clone(),
            livemode,
        };
        let mut answers = self.lookup_many(std::slice::from_ref(&request)).await?;
        Ok(answers.pop().unwrap_or(Lookup::NotFound))
    }

    /// Checkout's answers to several lookups, in order, read in one statement (see
    /// `lookup_batch`). A lookup without livemode asks for both modes.
    pub async fn lookup_many(&self, requests: &[LookupRequest]) -> Result<Vec<Lookup>, StoreError> {
        let keys: Vec<(&str, bool, &str)> = requests
            .iter()
            .flat_map(|request| {
                let modes: &[bool] = match request.livemode {
                    Some(false) => &[false],
                    Some(true) => &[true],
                    None => &[false, true],
                };
                modes
                    .iter()
                    .map(|&livemode| (request.account.as_str(), livemode, request.email.as_str()))
            })
            .collect();
        let mut answers = match self {
            Self::Sqlite(s) => s.canonical_many(&keys).await?,
            Self::Postgres(s) => postgres::canonical_many(&s.pool, &keys).await?,
        }
        .into_iter();
        // Each backend answers every key, in order.
        let mut next = || answers.next().flatten();
        let found = |customer: Option<Customer>| customer.map_or(Lookup::NotFound, Lookup::Found);
        Ok(requests
            .iter()
            .map(|request| match request.livemode {
                Some(_) => found(next()),
                None => match (next(), next()) {
                    (Some(_), Some(_)) => Lookup::AmbiguousLivemode,
                    (test, live) => found(test.or(live)),
                },
            })
            .collect())
    }
}
