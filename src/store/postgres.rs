//! The production backend: PostgreSQL, shared by any number of `serve` processes.
//!
//! Concurrent deliveries of one event meet on the unique event id (`ON CONFLICT DO
//! NOTHING`); concurrent snapshots of one customer meet on its row, where the conditional
//! upsert keeps the newest. Every append locks event ids in sorted order, then customer
//! rows in key order (see `APPEND_BATCH`), so concurrent batches cannot deadlock.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection;
use sqlx::{PgPool, Postgres};
use tokio::time::{timeout_at, Instant};

use super::append::{AppendPlan, EventRow};
use super::group_commit::{self, Committer, Job};
use super::sql::{self, Dialect};
use super::{in_key_order, AppendOutcome, Customer, NumberedCustomer, Source, StoreError};
use crate::projection::canonical::{self, CANDIDATE_SQL, CANONICAL_ORDER_SQL};
use crate::projection::order::NEWEST_FIRST_SQL;
use crate::projection::types::PROJECTED_TYPES_SQL;
use crate::projection::{Effect, PROJECTION_VERSION};
use crate::stripe::event::CustomerEvent;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A request waits at most this long for a connection: when the database is gone the
/// webhook answers 503 promptly and Stripe retries later.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// An append or a lookup, with the wait for its connection, gets at most this long: a
/// database that answers too slowly is unavailable, and the request answers 503 rather
/// than wait. PostgreSQL's `statement_timeout` would not do: it cannot bound a network
/// that delivers the statement, or its answer, late.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTIONS: u32 = 16;
/// Group-commit tasks: two, so that one batch gathers while another commits. More make
/// smaller batches, and the database's cost per statement then shows.
const COMMITTERS: usize = 2;

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    committer: Committer,
}

/// Checks a `postgres://` URL without connecting.
pub(super) fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(url)
}

impl PgStore {
    pub(super) async fn connect(options: PgConnectOptions) -> Result<Self, sqlx::Error> {
        // One connection of our own first: a pool that cannot connect only says it timed
        // out, while this says why (refused, no such database, authentication failed).
        let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let committer = Committer::spawn(COMMITTERS, Appender { pool: pool.clone() });
        Ok(Self { pool, committer })
    }

    /// Appends through the committers (see `group_commit`).
    pub(super) async fn append(
        &self,
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.committer.append(events, source).await
    }

    pub(super) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }
}

/// A batch of appends as ONE statement, so one round trip and its own transaction: the
/// events go in as one array per column (the text, and its prepared form, is the same for
/// every batch), and the customer rows come from the events this statement stored, each
/// customer's newest (`$18`) only. Locks are taken in one order: event ids sorted (the
/// arrays are), then, once every event is in (the sort waits for all of them), customer
/// rows sorted by key.
static APPEND_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH inserted AS (
             {events}
             SELECT *, $16, $17
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::boolean[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::bigint[], $13::text[], $14::boolean[],
                         $15::text[])
             ON CONFLICT (event_id) DO NOTHING
             RETURNING seq, event_id, account, livemode, customer_id, email, email_key, name,
                       customer_created, version, deleted, created
         ), projected AS (
             {customers}
             SELECT account, livemode, customer_id, email, email_key, name, customer_created,
                    deleted, version, event_id, created
             FROM inserted
             WHERE version IS NOT NULL AND event_id = ANY($18::text[])
             ORDER BY account, livemode, customer_id
             {upsert}
         )
         SELECT seq, event_id FROM inserted",
        events = sql::INSERT_EVENTS_HEAD,
        customers = sql::UPSERT_CUSTOMERS_HEAD.replace("{table}", "customers"),
        upsert = *sql::UPSERT_CUSTOMERS_TAIL,
    )
});

/// Group commit's statements on PostgreSQL: a commit is durable when it returns.
#[derive(Debug, Clone)]
struct Appender {
    pool: PgPool,
}

impl group_commit::Backend for Appender {
    /// [`APPEND_BATCH`] takes one source.
    const MIXES_SOURCES: bool = false;

    async fn write(&mut self, jobs: &[Job]) -> Result<Vec<AppendOutcome>, StoreError> {
        let Some(first) = jobs.first() else {
            return Ok(Vec::new());
        };
        let events: Vec<(&CustomerEvent, &Effect)> = jobs
            .iter()
            .flat_map(|job| job.events.iter().map(|(event, effect)| (event, effect)))
            .collect();
        Ok(append_many(&self.pool, &events, first.source).await?)
    }

    fn refused(error: &StoreError) -> bool {
        matches!(error, StoreError::Database(sqlx::Error::Database(_)))
    }
}

/// Appends many events, each idempotent on its id (a repeat within the batch is a
/// duplicate too), and projects them, in one statement (see [`APPEND_BATCH`]): a round
/// trip to the database is what a batch shares, so it pays one. Outcomes in input order.
async fn append_many(
    pool: &PgPool,
    events: &[(&CustomerEvent, &Effect)],
    source: Source,
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    fn column<'r, T>(rows: &'r [EventRow<'_>], field: impl Fn(&'r EventRow<'_>) -> T) -> Vec<T> {
        rows.iter().map(field).collect()
    }
    let plan = AppendPlan::new(events);
    let (rows, newest) = (&plan.rows, &plan.newest);
    let deadline = Instant::now() + STATEMENT_TIMEOUT;
    let mut connection = acquire(pool, deadline).await?;
    let stored = sqlx::query_as(&APPEND_BATCH)
        .bind(column(rows, |r| r.event_id))
        .bind(column(rows, |r| r.account))
        .bind(column(rows, |r| r.event_type))
        .bind(column(rows, |r| r.created))
        .bind(column(rows, |r| r.livemode))
        .bind(column(rows, |r| r.object_id))
        .bind(column(rows, |r| r.payload))
        .bind(column(rows, |r| r.customer_id))
        .bind(column(rows, |r| r.email))
        .bind(column(rows, |r| r.email_key))
        .bind(column(rows, |r| r.name))
        .bind(column(rows, |r| r.customer_created))
        .bind(column(rows, |r| r.version.as_deref()))
        .bind(column(rows, |r| r.deleted))
        .bind(column(rows, |r| r.projection_error))
        .bind(source.as_str())
        .bind(PROJECTION_VERSION)
        .bind(newest)
        .fetch_all(&mut *connection);
    let stored = timeout_at(deadline, stored).await;
    let stored = finish(connection, stored)?;
    Ok(plan.outcomes(stored))
}

/// A connection for a statement due by `deadline` (see [`STATEMENT_TIMEOUT`]).
async fn acquire(
    pool: &PgPool,
    deadline: Instant,
) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    timeout_at(deadline, pool.acquire())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// A statement's result, or a time-out error if it was abandoned at its deadline; then its
/// connection is closed rather than returned to the pool, where it would be tested by a
/// round trip that waits on the same slow network.
fn finish<T>(
    connection: PoolConnection<Postgres>,
    done: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
) -> Result<T, sqlx::Error> {
    match done {
        Ok(result) => result,
        Err(_) => {
            drop(connection.detach());
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the database did not answer within {} s",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            )))
        }
    }
}

/// Checkout's customer for each `(account, livemode, email key)` (arrays `$1`, `$2`,
/// `$3`), numbered by the key's position from 0: rule 5's first candidate of each key.
static CANONICAL_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT key.i - 1 AS i, c.customer_id, c.account, c.email, c.livemode, c.name,
                c.last_event_id, c.last_event_created
         FROM unnest($1::text[], $2::boolean[], $3::text[]) WITH ORDINALITY
              AS key(account, livemode, email_key, i)
         CROSS JOIN LATERAL (
             SELECT * FROM customers
             WHERE customers.account = key.account AND customers.livemode = key.livemode
               AND customers.email_key = key.email_key
               AND {CANDIDATE_SQL}
             ORDER BY {CANONICAL_ORDER_SQL}
             LIMIT 1
         ) AS c"
    )
});

/// Checkout's customer for each `(account, livemode, email key)`, in order, in one
/// statement (see [`CANONICAL_MANY`]): each key is one index search, and the statement's
/// round trip is shared.
pub(super) async fn canonical_many(
    pool: &PgPool,
    keys: &[(&str, bool, &str)],
) -> Result<Vec<Option<Customer>>, sqlx::Error> {
    let accounts: Vec<&str> = keys.iter().map(|key| key.0).collect();
    let modes: Vec<bool> = keys.iter().map(|key| key.1).collect();
    let emails: Vec<&str> = keys.iter().map(|key| key.2).collect();
    let deadline = Instant::now() + STATEMENT_TIMEOUT;
    let mut connection = acquire(pool, deadline).await?;
    let rows = sqlx::query_as(&CANONICAL_MANY)
        .bind(&accounts)
        .bind(&modes)
        .bind(&emails)
        .fetch_all(&mut *connection);
    let rows = timeout_at(deadline, rows).await;
    let rows: Vec<NumberedCustomer> = finish(connection, rows)?;
    in_key_order(rows, keys.len())
}

/// Every customer's newest snapshot among the events up to `{upto}` that the current
/// projection (`{current}`) extracted, as a new table: one sort of the log by key, newest
/// first (rule 3), keeping the first row of each key; only types that project (rule 6).
/// `CREATE TABLE ... AS` may scan and sort on parallel workers, which `INSERT ... SELECT`
/// may not, so a large rebuild is faster. Its columns are the live table's, in order, with
/// their types and collations;
/// [`rebuild_from_columns`] adds the constraints.
static REBUILD_FROM_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "CREATE TABLE {{aside}} AS
         SELECT DISTINCT ON (account, livemode, customer_id)
                account, livemode, customer_id, email, email_key, name, customer_created,
                deleted, version, event_id AS last_event_id, created AS last_event_created
         FROM events
         WHERE seq <= {{upto}} AND projection_version >= {{current}} AND version IS NOT NULL
           AND {PROJECTED_TYPES_SQL}
         ORDER BY account, livemode, customer_id, {NEWEST_FIRST_SQL}"
    )
});

/// Creates and fills the aside table (see [`REBUILD_FROM_COLUMNS`]), then indexes it: its
/// primary key and checkout's index are built side by side, each in one pass over the
/// filled table (cheaper than growing them row by row), and the key's index then becomes
/// the primary key with the live table's NOT NULL columns. Names are made per rebuild,
/// since index and constraint names outlive a table rename.
pub(super) async fn rebuild_from_columns(
    pool: &PgPool,
    aside: &str,
    token: &str,
    upto: i64,
    current: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One statement over the whole log, run once: compiling it would cost more than it
    // saves.
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    // A utility statement takes no parameters: the bounds are integers, written in.
    let fill = REBUILD_FROM_COLUMNS
        .replace("{aside}", aside)
        .replace("{upto}", &upto.to_string())
        .replace("{current}", &current.to_string());
    let rows = sqlx::query(&fill).execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;

    let key = format!(
        "CREATE UNIQUE INDEX customers_pkey_{token} ON {aside} (account, livemode, customer_id)"
    );
    let checkout = canonical::checkout_index_sql(&format!("customers_by_email_{token}"), aside);
    tokio::try_join!(
        sqlx::query(&key).execute(pool),
        sqlx::query(&checkout).execute(pool)
    )?;
    let not_null: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = 'customers'::regclass AND attnum > 0 AND NOT attisdropped
           AND attnotnull
         ORDER BY attnum",
    )
    .fetch_all(pool)
    .await?;
    let mut constraints = format!("ALTER TABLE {aside} ");
    for column in not_null {
        constraints.push_str(&format!("ALTER COLUMN {column} SET NOT NULL, "));
    }
    constraints.push_str(&format!(
        "ADD CONSTRAINT customers_pkey_{token} PRIMARY KEY USING INDEX customers_pkey_{token}"
    ));
    sqlx::query(&constraints).execute(pool).await?;
    Ok(rows)
}

impl Dialect for Postgres {
    async fn begin_locked(
        pool: &PgPool,
    ) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("LOCK TABLE events IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn execute_built(
        connection: &mut PgConnection,
        mut query: sqlx::QueryBuilder<'_, Postgres>,
    ) -> Result<(), sqlx::Error> {
        query.build().execute(connection).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use super::*;
    use crate::domain::AccountId;
    use crate::store::group_commit::commit;
    use crate::stripe::event::{self, Delivery};

    fn event(id: &str, customer: &str) -> (CustomerEvent, Effect) {
        let body = serde_json::json!({
            "id": id, "type": "customer.created", "created": 1_700_000_000, "livemode": false,
            "data": {"object": {"object": "customer", "id": customer, "email": "a@example.com",
                                "created": 1_700_000_000}},
        });
        let platform = AccountId::parse("platform").unwrap();
        let Ok(Delivery::Customer(event)) = event::parse(body.to_string().as_bytes(), &platform)
        else {
            panic!("a customer event")
        };
        let effect = crate::projection::effect_of(&event);
        (event, effect)
    }

    fn job(id: &str, source: Source) -> Job {
        Job::new(vec![event(id, &id.replace("evt", "cus"))], source).0
    }

    /// Whether each job of a commit was stored, by event id.
    async fn commit_jobs(appender: &mut Appender, jobs: Vec<Job>) -> Vec<bool> {
        let committed = commit(appender, jobs).await;
        committed
            .jobs
            .iter()
            .zip(&committed.results)
            .map(|(job, result)| {
                let stored = matches!(result.as_deref(), Ok([AppendOutcome::Stored { .. }]));
                (job.events[0].0.id.to_string(), stored)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect()
    }

    /// On a database of its own (created, then dropped), commits two batches: webhooks
    /// and an import; then webhooks, one of which the database refuses. Returns whether
    /// each job of each batch was stored (by event id), and the log's `(event_id, source)`
    /// rows. `None` when `TEST_DATABASE_URL` is unset.
    async fn commit_two_batches() -> Option<(Vec<bool>, Vec<bool>, Vec<(String, String)>)> {
        let Some(admin_url) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            eprintln!("skipped: TEST_DATABASE_URL is unset");
            return None;
        };
        let admin = options(&admin_url).unwrap();
        let name = format!("group_commit_{}", std::process::id());
        let mut server = PgConnection::connect_with(&admin).await.unwrap();
        let drop_database = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        server.execute(drop_database.as_str()).await.unwrap();
        server
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let store = PgStore::connect(admin.clone().database(&name))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
            .pool
            .execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
                     AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
                 CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW
                     WHEN (NEW.event_id = 'evt_bad') EXECUTE FUNCTION refuse();",
            )
            .await
            .unwrap();
        let mut appender = Appender {
            pool: store.pool.clone(),
        };
        let mixed = vec![
            job("evt_1", Source::Webhook),
            job("evt_2", Source::Import),
            job("evt_3", Source::Webhook),
        ];
        let mixed = commit_jobs(&mut appender, mixed).await;
        let refused = vec![
            job("evt_4", Source::Webhook),
            job("evt_bad", Source::Webhook),
            job("evt_5", Source::Webhook),
        ];
        let refused = commit_jobs(&mut appender, refused).await;
        let logged = sqlx::query_as("SELECT event_id, source FROM events ORDER BY event_id")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        store.pool.close().await;
        drop((appender, store));
        server.execute(drop_database.as_str()).await.unwrap();
        Some((mixed, refused, logged))
    }

    /// A batch of several sources is one transaction per source (the batch statement
    /// takes one), each row with its own source; when the database refuses a
    /// transaction's statement, its jobs are written again one by one, so the refused
    /// job fails alone.
    #[tokio::test]
    async fn a_mixed_batch_keeps_sources_and_a_refused_job_fails_alone() {
        let Some((mixed, refused, logged)) = commit_two_batches().await else {
            return;
        };
        assert_eq!(mixed, [true, true, true]);
        // evt_4, evt_5, evt_bad, by id.
        assert_eq!(refused, [true, true, false]);
        let expected = [
            ("evt_1", "webhook"),
            ("evt_2", "import"),
            ("evt_3", "webhook"),
            ("evt_4", "webhook"),
            ("evt_5", "webhook"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(id, source)| (id.to_string(), source.to_string()))
            .collect();
        assert_eq!(logged, expected);
    }
}
