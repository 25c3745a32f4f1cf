//! The embedded backend: one SQLite file in WAL mode.
//!
//! SQLite takes one writer at a time, so writes go through a one-connection pool (callers
//! queue in process instead of spinning on SQLITE_BUSY) while reads use their own pool and
//! proceed during writes. `synchronous=FULL` makes every commit survive power loss before
//! the webhook is answered.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::Customer;

type Db = Sqlite;

pub(super) mod queries {
    use super::Db;
    include!("queries.rs");
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another process (say `replay`) to release the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
}

/// Checks a `sqlite:` URL without opening it.
pub(super) fn options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .page_size(16_384)
        .pragma("temp_store", "memory"))
}

impl SqliteStore {
    pub(super) async fn connect(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { writer, reader })
    }

    pub(super) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.writer).await
    }
}

/// Checkout's customer for each `(account, livemode, email key)`, in order. SQLite is read
/// in process, so one indexed query per key costs no round trip.
pub(super) async fn canonical_many(
    pool: &SqlitePool,
    keys: &[(&str, bool, &str)],
) -> Result<Vec<Option<Customer>>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let mut found = Vec::with_capacity(keys.len());
    for &(account, livemode, email_key) in keys {
        let customer = sqlx::query_as(
            "SELECT customer_id, account, email, livemode, name, last_event_id, last_event_created
             FROM customers
             WHERE account = $1 AND livemode = $2 AND email_key = $3
               AND deleted = FALSE AND email_key IS NOT NULL
             ORDER BY customer_created, customer_id
             LIMIT 1",
        )
        .bind(account)
        .bind(livemode)
        .bind(email_key)
        .fetch_optional(&mut *connection)
        .await?;
        found.push(customer);
    }
    Ok(found)
}

/// A rebuild's aside table, declared exactly like the live customer table: SQLite keeps
/// each table's `CREATE TABLE` text, so the column list is taken from there.
async fn create_aside(pool: &SqlitePool, aside: &str, _token: &str) -> Result<(), sqlx::Error> {
    let live: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'customers'",
    )
    .fetch_one(pool)
    .await?;
    let columns = live
        .find('(')
        .map(|start| &live[start..])
        .ok_or_else(|| sqlx::Error::Protocol("customers has no column list".into()))?;
    sqlx::query(&format!("CREATE TABLE {aside} {columns}"))
        .execute(pool)
        .await
        .map(drop)
}

/// Checkout's index on the aside table. Index names outlive a table rename, so each
/// rebuild's index gets a name of its own.
async fn index_aside(pool: &SqlitePool, aside: &str, token: &str) -> Result<(), sqlx::Error> {
    let ddl = format!(
        "CREATE INDEX customers_by_email_{token}
            ON {aside} (account, livemode, email_key, customer_created, customer_id)
            WHERE deleted = FALSE AND email_key IS NOT NULL"
    );
    sqlx::query(&ddl).execute(pool).await.map(drop)
}

/// A write transaction that holds SQLite's write lock from its first statement, so no
/// other writer (another process's `serve`) can append until it ends.
async fn begin_locked(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}
