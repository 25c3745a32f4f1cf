//! The evidence behind a checkout answer: every customer of an account that holds or held
//! an email key, each with the records that decided its state, newest first (rule 3).
//!
//! A support tool, not a hot path: finding who *held* a key reads the log without an
//! index (seconds per million events), so it is bounded in what it returns instead.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Lookup, Store, StoreError};
use crate::domain::{AccountId, EmailKey};

/// At most this many records are shown per customer, the newest ones.
pub const RECORDS_SHOWN: i64 = 100;

/// At most this many customers are explained (those with the key now first).
pub const CUSTOMERS_SHOWN: usize = 50;

/// What `explain` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// What checkout's lookup answers for the same question.
    pub checkout: CheckoutAnswer,
    /// Every customer that holds or held the key, the one checkout gets first.
    pub customers: Vec<ExplainedCustomer>,
}

/// Checkout's answer, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum CheckoutAnswer {
    Found {
        customer_id: String,
        livemode: bool,
        /// Why this one: rule 5 among the live customers holding the key.
        rule: String,
    },
    NotFound,
    AmbiguousLivemode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExplainedCustomer {
    pub customer_id: String,
    pub livemode: bool,
    /// Its state now (rule 3's winner): email as Stripe has it, whether deleted.
    pub email: Option<String>,
    pub holds_key_now: bool,
    pub deleted: bool,
    pub customer_created: i64,
    /// Whether checkout gets this customer.
    pub checkout: bool,
    /// The records that decided its state, in rule-3 order, newest first.
    pub records: Vec<ExplainedRecord>,
    /// Records older than those shown.
    pub more_records: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExplainedRecord {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created: i64,
    /// webhook, import, api, backfill or events_api.
    pub source: String,
    pub email: Option<String>,
    pub deleted: bool,
    /// The record whose snapshot is the customer's state (rule 3's winner).
    pub decides: bool,
}

#[derive(sqlx::FromRow)]
struct CustomerRow {
    customer_id: String,
    livemode: bool,
    email: Option<String>,
    email_key: Option<String>,
    deleted: bool,
    customer_created: i64,
    last_event_id: String,
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    customer_id: String,
    livemode: bool,
    event_id: String,
    event_type: String,
    created: i64,
    source: String,
    email: Option<String>,
    deleted: bool,
    total: i64,
}

/// The customers that hold or held the key (`$1` account, `$2` key, `$3` mode or NULL).
const HOLDERS: &str = "
    SELECT customer_id, livemode FROM customers
    WHERE account = $1 AND email_key = $2 AND ($3 IS NULL OR livemode = $3)
    UNION
    SELECT customer_id, livemode FROM events
    WHERE account = $1 AND email_key = $2 AND ($3 IS NULL OR livemode = $3)
      AND customer_id IS NOT NULL";

impl Store {
    /// Explains checkout's answer for `(account, email key, livemode)`.
    pub async fn explain(
        &self,
        account: &AccountId,
        email_key: &EmailKey,
        livemode: Option<bool>,
    ) -> Result<Explanation, StoreError> {
        let holders: Vec<(String, bool)> = match self {
            Store::Sqlite(s) => {
                sqlx::query_as(HOLDERS)
                    .bind(account.as_str())
                    .bind(email_key.as_str())
                    .bind(livemode)
                    .fetch_all(&s.reader)
                    .await?
            }
            Store::Postgres(s) => {
                sqlx::query_as(HOLDERS)
                    .bind(account.as_str())
                    .bind(email_key.as_str())
                    .bind(livemode)
                    .fetch_all(&s.pool)
                    .await?
            }
        };
        let ids: Vec<String> = holders.iter().map(|(id, _)| id.clone()).collect();
        let (customers, records) = self.customers_and_records(account, &ids).await?;
        let lookup = self.lookup(account, email_key, livemode).await?;
        let checkout = match &lookup {
            Lookup::Found(customer) => {
                let live_holders = customers
                    .iter()
                    .filter(|c| {
                        c.livemode == customer.livemode
                            && !c.deleted
                            && c.email_key.as_deref() == Some(email_key.as_str())
                    })
                    .count();
                CheckoutAnswer::Found {
                    customer_id: customer.customer_id.clone(),
                    livemode: customer.livemode,
                    rule: format!(
                        "rule 5: of the {live_holders} live customer(s) of this account and mode \
                         holding this email, the one with the smallest customer created \
                         ({}), then the smallest id",
                        customers
                            .iter()
                            .find(|c| c.customer_id == customer.customer_id
                                && c.livemode == customer.livemode)
                            .map_or(0, |c| c.customer_created)
                    ),
                }
            }
            Lookup::NotFound => CheckoutAnswer::NotFound,
            Lookup::AmbiguousLivemode => CheckoutAnswer::AmbiguousLivemode,
        };
        let mut by_customer: BTreeMap<(String, bool), Vec<RecordRow>> = BTreeMap::new();
        for record in records {
            by_customer
                .entry((record.customer_id.clone(), record.livemode))
                .or_default()
                .push(record);
        }
        let mut explained: Vec<ExplainedCustomer> = customers
            .into_iter()
            .filter(|c| holders.contains(&(c.customer_id.clone(), c.livemode)))
            .map(|c| {
                let records = by_customer
                    .remove(&(c.customer_id.clone(), c.livemode))
                    .unwrap_or_default();
                let total = records.first().map_or(0, |r| r.total);
                let is_checkout = matches!(&checkout, CheckoutAnswer::Found { customer_id, livemode, .. }
                    if *customer_id == c.customer_id && *livemode == c.livemode);
                ExplainedCustomer {
                    holds_key_now: c.email_key.as_deref() == Some(email_key.as_str()),
                    checkout: is_checkout,
                    more_records: (total - records.len() as i64).max(0),
                    records: records
                        .into_iter()
                        .map(|r| ExplainedRecord {
                            decides: r.event_id == c.last_event_id,
                            event_id: r.event_id,
                            event_type: r.event_type,
                            created: r.created,
                            source: r.source,
                            email: r.email,
                            deleted: r.deleted,
                        })
                        .collect(),
                    customer_id: c.customer_id,
                    livemode: c.livemode,
                    email: c.email,
                    deleted: c.deleted,
                    customer_created: c.customer_created,
                }
            })
            .collect();
        // Checkout's first, then those holding the key now, then by rule 5's order.
        explained.sort_by(|a, b| {
            b.checkout
                .cmp(&a.checkout)
                .then(b.holds_key_now.cmp(&a.holds_key_now))
                .then(a.deleted.cmp(&b.deleted))
                .then(a.customer_created.cmp(&b.customer_created))
                .then(a.customer_id.cmp(&b.customer_id))
        });
        explained.truncate(CUSTOMERS_SHOWN);
        Ok(Explanation {
            checkout,
            customers: explained,
        })
    }

    /// The customer rows of `ids` on `account`, and their newest [`RECORDS_SHOWN`]
    /// snapshot records each with the count of all of them.
    async fn customers_and_records(
        &self,
        account: &AccountId,
        ids: &[String],
    ) -> Result<(Vec<CustomerRow>, Vec<RecordRow>), StoreError> {
        let customer_columns = "customer_id, livemode, email, email_key, deleted, customer_created,
                                last_event_id";
        let records = |ids_filter: &str| {
            format!(
                "SELECT customer_id, livemode, event_id, event_type, created, source, email,
                        deleted, total
                 FROM (SELECT customer_id, livemode, event_id, type AS event_type, created,
                              source, email, deleted,
                              ROW_NUMBER() OVER (PARTITION BY customer_id, livemode
                                                 ORDER BY version DESC) AS position,
                              COUNT(*) OVER (PARTITION BY customer_id, livemode) AS total
                       FROM events
                       WHERE account = $1 AND version IS NOT NULL AND {ids_filter}) ranked
                 WHERE position <= {RECORDS_SHOWN}
                 ORDER BY customer_id, livemode, position"
            )
        };
        let filter = format!(
            "customer_id IN (SELECT value FROM {})",
            self.json_values("$2")
        );
        let customers_sql =
            format!("SELECT {customer_columns} FROM customers WHERE account = $1 AND {filter}");
        let records_sql = records(&filter);
        let ids_json = serde_json::Value::from(ids.to_vec()).to_string();
        macro_rules! fetch {
            ($pool:expr) => {{
                let customers = sqlx::query_as(&customers_sql)
                    .bind(account.as_str())
                    .bind(&ids_json)
                    .fetch_all($pool)
                    .await?;
                let records = sqlx::query_as(&records_sql)
                    .bind(account.as_str())
                    .bind(&ids_json)
                    .fetch_all($pool)
                    .await?;
                (customers, records)
            }};
        }
        Ok(match self {
            Store::Sqlite(s) => fetch!(&s.reader),
            Store::Postgres(s) => fetch!(&s.pool),
        })
    }
}
