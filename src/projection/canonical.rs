//! Rule 5: which customer checkout gets when several live customers of one account and
//! mode share an email key: the smallest customer `created` (the object's own, else the
//! event's), then the smallest `cus_` id.
//!
//! The database answers it from an index ordered the same way, so the canonical customer
//! is read, never maintained: when it is deleted or changes email, the next one takes its
//! place by itself.

use std::cmp::Ordering;

use crate::domain::EmailKey;

use super::Snapshot;

/// Rule 5's candidates in SQL, on a customer row: live and with an email key. Also the
/// predicate of checkout's partial index, which a query can use only when it repeats it.
/// Mirrors [`is_candidate`].
pub const CANDIDATE_SQL: &str = "deleted = FALSE AND email_key IS NOT NULL";

/// Rule 5's order in SQL, on customer rows: the first is canonical. Also the trailing
/// columns of checkout's index, so that the first row is found without a sort. Mirrors
/// [`canonical_order`].
pub const CANONICAL_ORDER_SQL: &str = "customer_created, customer_id";

/// Whether a customer's snapshot can be checkout's answer for `email`.
pub fn is_candidate(snapshot: &Snapshot, email: &EmailKey) -> bool {
    !snapshot.version.deleted && snapshot.email_key.as_ref() == Some(email)
}

/// Orders candidates: the smallest is canonical. Deterministic whatever order they were
/// seen in.
pub fn canonical_order(a: &Snapshot, b: &Snapshot) -> Ordering {
    (a.customer_created, &a.customer_id).cmp(&(b.customer_created, &b.customer_id))
}

/// Checkout's customer for `email` among the snapshots of one account and mode.
pub fn canonical<'s>(
    snapshots: impl IntoIterator<Item = &'s Snapshot>,
    email: &EmailKey,
) -> Option<&'s Snapshot> {
    snapshots
        .into_iter()
        .filter(|snapshot| is_candidate(snapshot, email))
        .min_by(|a, b| canonical_order(a, b))
}

/// Checkout's index `name` on the customer table `table`: `(account, livemode, email
/// key)`, then rule 5's order, over the candidates only (migration 0001 spells the live
/// table's; a rebuild builds its own with this).
pub fn checkout_index_sql(name: &str, table: &str) -> String {
    format!(
        "CREATE INDEX {name} ON {table} (account, livemode, email_key, {CANONICAL_ORDER_SQL})
         WHERE {CANDIDATE_SQL}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live table's index is created by migration 0001, which cannot use the fragments:
    /// it must spell them the same way, or checkout's query could not use it.
    #[test]
    fn the_migrations_index_follows_rule_5() {
        for migration in [
            include_str!("../../migrations/sqlite/0001_event_log_and_customers.sql"),
            include_str!("../../migrations/postgres/0001_event_log_and_customers.sql"),
        ] {
            let index = checkout_index_sql("customers_by_email", "customers");
            let collapse = |sql: &str| sql.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(collapse(migration).contains(&collapse(&index)), "{index}");
        }
    }
}
