//! What `backfill` and `catch-up` keep beside the log: where each (account, mode) pass
//! stands, the customers it has listed, and what the log already holds of a customer.
//!
//! A pass's records go through the one append path like any other; its position is
//! written after them, so a crash between the two only makes the next run read that page
//! again, and the page's records are then duplicates (their ids depend on the pass, not on
//! the time of reading).

use std::collections::HashMap;

use super::{Store, StoreError};
use crate::domain::AccountId;
use serde::Serialize;

/// One (account, mode)'s backfill pass, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct BackfillPass {
    pub account: String,
    pub livemode: bool,
    /// The current pass's number, from 1.
    pub pass: i64,
    /// The last customer id of the last committed page; `None` before the first page.
    pub position: Option<String>,
    pub pages: i64,
    pub customers: i64,
    pub started_at: i64,
    /// When the current pass completed; `None` while it runs or after an interruption.
    pub completed_at: Option<i64>,
    /// When a pass last completed, kept when a new pass starts.
    pub last_completed_at: Option<i64>,
}

const PASS_COLUMNS: &str = "account, livemode, pass, position, pages, customers, started_at,
                            completed_at, last_completed_at";

/// Runs the same statements on either backend's pool: the SQL below is the same text for
/// both (`$N` placeholders, standard types); only list parameters differ, and are written
/// per backend where they are used.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite(store) => {
                let $pool = &store.maintenance;
                $body
            }
            Store::Postgres(store) => {
                let $pool = &store.pool;
                $body
            }
        }
    };
}

impl Store {
    /// The stored pass of `(account, livemode)`, if any pass ever started.
    pub async fn backfill_pass(
        &self,
        account: &AccountId,
        livemode: bool,
    ) -> Result<Option<BackfillPass>, StoreError> {
        let sql = format!(
            "SELECT {PASS_COLUMNS} FROM backfill_passes WHERE account = $1 AND livemode = $2"
        );
        Ok(on_pool!(self, |pool| {
            sqlx::query_as::<_, BackfillPass>(&sql)
                .bind(account.as_str())
                .bind(livemode)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Every stored pass, by account and mode: what `status` shows.
    pub async fn backfill_passes(&self) -> Result<Vec<BackfillPass>, StoreError> {
        let sql = format!("SELECT {PASS_COLUMNS} FROM backfill_passes ORDER BY account, livemode");
        Ok(on_pool!(self, |pool| {
            sqlx::query_as::<_, BackfillPass>(&sql)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Starts a new pass of `(account, livemode)` from the top: the next pass number, no
    /// position, no customer listed yet; when a pass last completed is kept.
    pub async fn start_backfill_pass(
        &self,
        account: &AccountId,
        livemode: bool,
        now: i64,
    ) -> Result<BackfillPass, StoreError> {
        let upsert = format!(
            "INSERT INTO backfill_passes ({PASS_COLUMNS})
             VALUES ($1, $2, 1, NULL, 0, 0, $3, NULL, NULL)
             ON CONFLICT (account, livemode) DO UPDATE SET
                 pass = backfill_passes.pass + 1, position = NULL, pages = 0, customers = 0,
                 started_at = excluded.started_at, completed_at = NULL
             RETURNING {PASS_COLUMNS}"
        );
        Ok(on_pool!(self, |pool| {
            let mut transaction = pool.begin().await?;
            sqlx::query("DELETE FROM backfill_seen WHERE account = $1 AND livemode = $2")
                .bind(account.as_str())
                .bind(livemode)
                .execute(&mut *transaction)
                .await?;
            let pass = sqlx::query_as::<_, BackfillPass>(&upsert)
                .bind(account.as_str())
                .bind(livemode)
                .bind(now)
                .fetch_one(&mut *transaction)
                .await?;
            transaction.commit().await?;
            pass
        }))
    }

    /// Records that pass `pass` committed one more page, ending at `position`, which listed
    /// `listed`. Refused (no row changed) when another pass has started since.
    pub async fn record_backfill_page(
        &self,
        account: &AccountId,
        livemode: bool,
        pass: i64,
        position: &str,
        listed: &[String],
    ) -> Result<bool, StoreError> {
        let listed_count = i64::try_from(listed.len()).unwrap_or(i64::MAX);
        let seen = format!(
            "INSERT INTO backfill_seen (account, livemode, customer_id)
             SELECT $1, $2, value FROM {} WHERE true
             ON CONFLICT DO NOTHING",
            self.json_values("$3")
        );
        let listed_json = serde_json::Value::from(listed.to_vec()).to_string();
        let update = "UPDATE backfill_passes
                      SET position = $4, pages = pages + 1, customers = customers + $5
                      WHERE account = $1 AND livemode = $2 AND pass = $3";
        Ok(on_pool!(self, |pool| {
            let mut transaction = pool.begin().await?;
            sqlx::query(&seen)
                .bind(account.as_str())
                .bind(livemode)
                .bind(&listed_json)
                .execute(&mut *transaction)
                .await?;
            let changed = sqlx::query(update)
                .bind(account.as_str())
                .bind(livemode)
                .bind(pass)
                .bind(position)
                .bind(listed_count)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
            transaction.commit().await?;
            changed == 1
        }))
    }

    /// A table of the strings in the JSON array bound at `placeholder` (one column,
    /// `value`): how both backends take a list of ids in one parameter.
    pub(super) fn json_values(&self, placeholder: &str) -> String {
        match self {
            Store::Sqlite(_) => format!("json_each({placeholder})"),
            Store::Postgres(_) => format!("json_array_elements_text({placeholder}::json)"),
        }
    }

    /// The customers of `(account, livemode)` the read model holds as live that the current
    /// pass has not listed: after a complete listing, each is fetched to learn whether
    /// Stripe deleted it.
    pub async fn unlisted_live_customers(
        &self,
        account: &AccountId,
        livemode: bool,
    ) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT c.customer_id FROM customers c
                   WHERE c.account = $1 AND c.livemode = $2 AND c.deleted = FALSE
                     AND NOT EXISTS (SELECT 1 FROM backfill_seen s
                                     WHERE s.account = c.account AND s.livemode = c.livemode
                                       AND s.customer_id = c.customer_id)
                   ORDER BY c.customer_id";
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar::<_, String>(sql)
                .bind(account.as_str())
                .bind(livemode)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Marks pass `pass` complete at `now` and forgets what it listed.
    pub async fn complete_backfill_pass(
        &self,
        account: &AccountId,
        livemode: bool,
        pass: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let mut transaction = pool.begin().await?;
            sqlx::query(
                "UPDATE backfill_passes SET completed_at = $4, last_completed_at = $4
                 WHERE account = $1 AND livemode = $2 AND pass = $3",
            )
            .bind(account.as_str())
            .bind(livemode)
            .bind(pass)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            sqlx::query("DELETE FROM backfill_seen WHERE account = $1 AND livemode = $2")
                .bind(account.as_str())
                .bind(livemode)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
        });
        Ok(())
    }

    /// Whether a backfill pass of `(account, livemode)` has ever completed: from then on
    /// the read model holds every customer Stripe had, and webhooks keep it current.
    pub async fn backfill_completed(
        &self,
        account: &AccountId,
        livemode: bool,
    ) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM backfill_passes
                   WHERE account = $1 AND livemode = $2 AND last_completed_at IS NOT NULL";
        Ok(on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(account.as_str())
                .bind(livemode)
                .fetch_optional(pool)
                .await?
                .is_some()
        }))
    }

    /// The payload of the record that decides each of these customers' state (the
    /// customer table's `last_event_id`), by customer id; customers the table does not
    /// hold are absent.
    pub async fn deciding_payloads(
        &self,
        account: &AccountId,
        livemode: bool,
        customer_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let sql = format!(
            "SELECT c.customer_id, e.payload
             FROM customers c JOIN events e ON e.event_id = c.last_event_id
             WHERE c.account = $1 AND c.livemode = $2
               AND c.customer_id IN (SELECT value FROM {})",
            self.json_values("$3")
        );
        let ids_json = serde_json::Value::from(customer_ids.to_vec()).to_string();
        let rows: Vec<(String, String)> = match self {
            Store::Sqlite(store) => {
                sqlx::query_as(&sql)
                    .bind(account.as_str())
                    .bind(livemode)
                    .bind(&ids_json)
                    .fetch_all(&store.reader)
                    .await?
            }
            Store::Postgres(store) => {
                sqlx::query_as(&sql)
                    .bind(account.as_str())
                    .bind(livemode)
                    .bind(&ids_json)
                    .fetch_all(&store.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().collect())
    }

    /// The newest `created` among the events the log holds for each account: where
    /// `catch-up` starts by default. One pass over the log for every account at once.
    pub async fn newest_event_by_account(&self) -> Result<HashMap<String, i64>, StoreError> {
        let sql = "SELECT account, MAX(created) FROM events GROUP BY account";
        let rows: Vec<(String, i64)> =
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows.into_iter().collect())
    }
}
