// The SQL of the store, written once and compiled once per backend: the including module
// defines `Db` (sqlx::Sqlite or sqlx::Postgres). Placeholders are `$N`, which both accept;
// dialect differences live in the migrations and in the connection setup, not here.

use sqlx::Pool;

use crate::projection::{Effect, Snapshot};
use crate::stripe::event::CustomerEvent;

use crate::store::{AppendOutcome, Customer, LoggedEvent, ProjectedCustomer, Source, Status};

const INSERT_EVENT: &str = "
    INSERT INTO events (event_id, account, type, created, livemode, object_id, source, payload,
                        customer_id, email, email_key, name, customer_created, version,
                        projection_error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq";

/// Keeps the newest snapshot: the version text sorts like `projection::Version`.
const UPSERT_CUSTOMER: &str = "
    INSERT INTO customers AS c (account, livemode, customer_id, email, email_key, name,
                                customer_created, deleted, version, last_event_id,
                                last_event_created)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (account, livemode, customer_id) DO UPDATE SET
        email = excluded.email,
        email_key = excluded.email_key,
        name = excluded.name,
        customer_created = excluded.customer_created,
        deleted = excluded.deleted,
        version = excluded.version,
        last_event_id = excluded.last_event_id,
        last_event_created = excluded.last_event_created
    WHERE excluded.version > c.version";

/// Rule 5: the oldest live customer with this email, then the smallest id.
const CANONICAL_CUSTOMER: &str = "
    SELECT customer_id, account, email, livemode, name, last_event_id, last_event_created
    FROM customers
    WHERE account = $1 AND livemode = $2 AND email_key = $3
      AND deleted = FALSE AND email_key IS NOT NULL
    ORDER BY customer_created, customer_id
    LIMIT 1";

const ALL_CUSTOMERS: &str = "
    SELECT account, livemode, customer_id, email, email_key, name, customer_created, deleted,
           version, last_event_id, last_event_created
    FROM customers
    ORDER BY account, livemode, customer_id";

const EVENT_BY_ID: &str = "
    SELECT seq, event_id, account, type AS event_type, created, livemode, object_id, source,
           payload, projection_error
    FROM events
    WHERE event_id = $1";

const STATUS: &str = "
    SELECT (SELECT COUNT(*) FROM events) AS events,
           (SELECT COUNT(*) FROM customers WHERE deleted = FALSE) AS customers,
           (SELECT COUNT(*) FROM customers WHERE deleted = TRUE) AS deleted_customers,
           (SELECT COALESCE(MAX(seq), 0) FROM events) AS projection_position,
           (SELECT COUNT(*) FROM events WHERE projection_error IS NOT NULL) AS projection_errors";

/// Appends one event and applies its effect in the same transaction.
pub(in crate::store) async fn append(
    pool: &Pool<Db>,
    event: &CustomerEvent,
    effect: &Effect,
    source: Source,
) -> Result<AppendOutcome, sqlx::Error> {
    let snapshot = match effect {
        Effect::Snapshot(snapshot) => Some(snapshot),
        Effect::None | Effect::Error(_) => None,
    };
    let projection_error = match effect {
        Effect::Error(reason) => Some(reason.as_str()),
        Effect::Snapshot(_) | Effect::None => None,
    };
    let mut tx = pool.begin().await?;
    let seq: Option<i64> = sqlx::query_scalar(INSERT_EVENT)
        .bind(event.id.as_str())
        .bind(event.account.as_str())
        .bind(&event.event_type)
        .bind(event.created)
        .bind(event.livemode)
        .bind(event.object_id.as_deref())
        .bind(source.as_str())
        .bind(&event.payload)
        .bind(snapshot.map(|s| s.customer_id.as_str()))
        .bind(snapshot.and_then(|s| s.email.as_deref()))
        .bind(snapshot.and_then(|s| s.email_key.as_ref().map(|k| k.as_str())))
        .bind(snapshot.and_then(|s| s.name.as_deref()))
        .bind(snapshot.map(|s| s.customer_created))
        .bind(snapshot.map(|s| s.version.encode()))
        .bind(projection_error)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(seq) = seq else {
        tx.rollback().await?;
        return Ok(AppendOutcome::Duplicate);
    };
    if let Some(snapshot) = snapshot {
        upsert_customer(&mut tx, event, snapshot).await?;
    }
    tx.commit().await?;
    Ok(AppendOutcome::Stored {
        seq,
        projection_error: projection_error.map(str::to_owned),
    })
}

async fn upsert_customer(
    tx: &mut sqlx::Transaction<'_, Db>,
    event: &CustomerEvent,
    snapshot: &Snapshot,
) -> Result<(), sqlx::Error> {
    sqlx::query(UPSERT_CUSTOMER)
        .bind(event.account.as_str())
        .bind(event.livemode)
        .bind(snapshot.customer_id.as_str())
        .bind(snapshot.email.as_deref())
        .bind(snapshot.email_key.as_ref().map(|k| k.as_str()))
        .bind(snapshot.name.as_deref())
        .bind(snapshot.customer_created)
        .bind(snapshot.version.deleted)
        .bind(snapshot.version.encode())
        .bind(event.id.as_str())
        .bind(event.created)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(in crate::store) async fn canonical(
    pool: &Pool<Db>,
    account: &str,
    livemode: bool,
    email_key: &str,
) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as(CANONICAL_CUSTOMER)
        .bind(account)
        .bind(livemode)
        .bind(email_key)
        .fetch_optional(pool)
        .await
}

pub(in crate::store) async fn all_customers(
    pool: &Pool<Db>,
) -> Result<Vec<ProjectedCustomer>, sqlx::Error> {
    sqlx::query_as(ALL_CUSTOMERS).fetch_all(pool).await
}

pub(in crate::store) async fn event(
    pool: &Pool<Db>,
    event_id: &str,
) -> Result<Option<LoggedEvent>, sqlx::Error> {
    sqlx::query_as(EVENT_BY_ID)
        .bind(event_id)
        .fetch_optional(pool)
        .await
}

pub(in crate::store) async fn status(pool: &Pool<Db>) -> Result<Status, sqlx::Error> {
    sqlx::query_as(STATUS).fetch_one(pool).await
}

pub(in crate::store) async fn ping(pool: &Pool<Db>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}
