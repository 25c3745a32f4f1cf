//! The SQL both backends run as written: ordinary functions, generic over the backend
//! ([`Sql`]). Placeholders are `$N`, which both accept; dialect differences (types,
//! collations, locking) live in the migrations, in [`Dialect`] and in `sqlite.rs` /
//! `postgres.rs`, not here.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::database::Database;
use sqlx::{
    ColumnIndex, Decode, Encode, Executor, FromRow, IntoArguments, Pool, QueryBuilder, Transaction,
    Type,
};

use crate::projection::order::{SUPERSEDED_SQL, SUPERSEDES_SQL};
use crate::projection::types::PROJECTED_TYPES_SQL;
use crate::projection::{Projected, PROJECTION_VERSION};

use super::{
    CustomerCounts, Difference, LogRecord, LogSummary, LoggedEvent, ProjectedCustomer, Status,
};

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

/// The log as a rebuild reads it: the columns the projection wrote at append time, and
/// the payload only where that projection is older than `$3` (it must be run again).
const LOG_RANGE: &str = "
    SELECT seq, event_id, account, type AS event_type, created, livemode, projection_version,
           customer_id, email, email_key, name, customer_created, version,
           CASE WHEN projection_version < $3 THEN payload END AS payload
    FROM events
    WHERE seq > $1 AND seq <= $2
    ORDER BY seq
    LIMIT $4";

/// Only the events whose projection is older than `$3` and whose type projects (rule 6):
/// what must be parsed again.
static STALE_LOG_RANGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT seq, event_id, account, type AS event_type, created, livemode,
                projection_version, customer_id, email, email_key, name, customer_created,
                version, payload
         FROM events
         WHERE seq > $1 AND seq <= $2 AND projection_version < $3 AND {PROJECTED_TYPES_SQL}
         ORDER BY seq
         LIMIT $4"
    )
});

/// Rows that differ between a rebuilt table and the live one, both ways.
const DIFFERENCES: &str = "
    SELECT r.account, r.livemode, r.customer_id,
           r.email AS expected_email, r.version AS expected_version,
           c.email AS actual_email, c.version AS actual_version
    FROM {aside} r LEFT JOIN customers c
      ON c.account = r.account AND c.livemode = r.livemode AND c.customer_id = r.customer_id
    WHERE c.customer_id IS NULL
       OR c.email IS DISTINCT FROM r.email OR c.email_key IS DISTINCT FROM r.email_key
       OR c.name IS DISTINCT FROM r.name OR c.customer_created <> r.customer_created
       OR c.deleted <> r.deleted OR c.version <> r.version
       OR c.last_event_id <> r.last_event_id OR c.last_event_created <> r.last_event_created
    UNION ALL
    SELECT c.account, c.livemode, c.customer_id, NULL, NULL, c.email, c.version
    FROM customers c LEFT JOIN {aside} r
      ON c.account = r.account AND c.livemode = r.livemode AND c.customer_id = r.customer_id
    WHERE r.customer_id IS NULL
    ORDER BY 1, 2, 3";

/// A snapshot may go when a newer snapshot of the same customer is in the log: it no
/// longer decides its row, and a rebuild without it gives the same table. The customer
/// table holds the newest version of each customer (it commits with the log), so it
/// answers "is there a newer one" through its primary key (rule 3's order). One chunk of
/// the log at a time: sequence numbers above `$2`, up to `$3` (see [`ROWS_PER_CHUNK`]).
static PRUNE_SUPERSEDED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM events
         WHERE seq > $2 AND seq <= $3
           AND created < $1
           AND version IS NOT NULL
           AND EXISTS (SELECT 1 FROM customers c
                       WHERE c.account = events.account
                         AND c.livemode = events.livemode
                         AND c.customer_id = events.customer_id
                         AND {SUPERSEDED_SQL})"
    )
});

/// Rows a maintenance command writes or deletes per transaction, so that on SQLite, whose
/// one write lock covers the whole file, it never holds appends up for long: each chunk
/// takes a few tens of milliseconds (docs/performance.md).
pub(super) const ROWS_PER_CHUNK: i64 = 10_000;

/// The pause after each chunk, in which appends waiting for SQLite's write lock take it:
/// longer than the appender's retry interval (1 ms; see `sqlite::open_connection`).
pub(super) const LET_APPENDS_IN: Duration = Duration::from_millis(2);

/// The customer table a rebuild replaced, until it is dropped (a rebuild interrupted in
/// between leaves it to the next one).
const RETIRED: &str = "customers_retired";

fn with_table(sql: &str, table: &str) -> String {
    sql.replace("{table}", table).replace("{aside}", table)
}

/// Rows per multi-row statement of a rebuild's writes: far below both backends'
/// bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 256;

/// The columns of an event row, in the order of [`EventRow`]'s fields, then `source` and
/// `projection_version`.
pub(super) const INSERT_EVENTS_HEAD: &str = "
    INSERT INTO events (event_id, account, type, created, livemode, object_id, payload,
                        customer_id, email, email_key, name, customer_created, version,
                        deleted, projection_error, source, projection_version) ";

pub(super) const UPSERT_CUSTOMERS_HEAD: &str = "
    INSERT INTO {table} AS c (account, livemode, customer_id, email, email_key, name,
                              customer_created, deleted, version, last_event_id,
                              last_event_created) ";

/// Keeps the newer snapshot of a customer row (rule 3); shared by every write of the
/// customer table.
pub(super) static UPSERT_CUSTOMERS_TAIL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "ON CONFLICT (account, livemode, customer_id) DO UPDATE SET
             email = excluded.email,
             email_key = excluded.email_key,
             name = excluded.name,
             customer_created = excluded.customer_created,
             deleted = excluded.deleted,
             version = excluded.version,
             last_event_id = excluded.last_event_id,
             last_event_created = excluded.last_event_created
         WHERE {SUPERSEDES_SQL}"
    )
});

/// Splits rows into chunks whose sizes are powers of two (at most `ROWS_PER_STATEMENT`),
/// so that a handful of statement shapes serve every batch size and stay prepared in the
/// connection's statement cache instead of being parsed again for each batch.
pub(super) fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = ROWS_PER_STATEMENT.min(1 << rows.len().ilog2());
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// What the shared SQL needs of a backend beyond sqlx's `Database`.
pub(super) trait Dialect: Database {
    /// A transaction that blocks appends (inserts into the log) but not reads, and waits
    /// for appends in flight to commit first.
    fn begin_locked(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Runs a statement built with a `QueryBuilder`. Only the concrete backend can: its
    /// arguments' lifetime may shrink to the borrow of the builder, which generic code
    /// cannot show.
    fn execute_built(
        connection: &mut Self::Connection,
        query: QueryBuilder<'_, Self>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The shared SQL on backend `DB`: `Sql::status(&pool)` and so on. The bounds say, once,
/// which types `DB` must bind and read; both backends meet them.
pub(super) struct Sql<DB>(PhantomData<DB>);

impl<DB> Sql<DB>
where
    DB: Dialect,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> ProjectedCustomer: FromRow<'r, DB::Row>,
    for<'r> LoggedEvent: FromRow<'r, DB::Row>,
    for<'r> Status: FromRow<'r, DB::Row>,
    for<'r> CustomerCounts: FromRow<'r, DB::Row>,
    for<'r> LogSummary: FromRow<'r, DB::Row>,
    for<'r> LogRecord: FromRow<'r, DB::Row>,
    for<'r> Difference: FromRow<'r, DB::Row>,
{
    /// Writes snapshots into `table` with multi-row statements, each row only where it is
    /// newer. `rows` must hold each customer once (one statement may not touch a row twice)
    /// and be sorted by key, the lock order.
    async fn upsert_many(
        tx: &mut Transaction<'_, DB>,
        table: &str,
        rows: &[Projected],
    ) -> Result<(), sqlx::Error> {
        let head = with_table(UPSERT_CUSTOMERS_HEAD, table);
        for chunk in statement_chunks(rows) {
            let mut query = QueryBuilder::<DB>::new(&head);
            query.push_values(chunk, |mut values, row| {
                let snapshot = &row.snapshot;
                values
                    .push_bind(row.account.as_str())
                    .push_bind(row.livemode)
                    .push_bind(snapshot.customer_id.as_str())
                    .push_bind(snapshot.email.as_deref())
                    .push_bind(snapshot.email_key.as_ref().map(|k| k.as_str()))
                    .push_bind(snapshot.name.as_deref())
                    .push_bind(snapshot.customer_created)
                    .push_bind(snapshot.version.deleted)
                    .push_bind(snapshot.version.encode())
                    .push_bind(snapshot.version.event_id.as_str())
                    .push_bind(snapshot.version.created);
            });
            query.push(UPSERT_CUSTOMERS_TAIL.as_str());
            DB::execute_built(&mut **tx, query).await?;
        }
        Ok(())
    }

    pub(super) async fn all_customers(
        pool: &Pool<DB>,
    ) -> Result<Vec<ProjectedCustomer>, sqlx::Error> {
        sqlx::query_as(ALL_CUSTOMERS).fetch_all(pool).await
    }

    pub(super) async fn event(
        pool: &Pool<DB>,
        event_id: &str,
    ) -> Result<Option<LoggedEvent>, sqlx::Error> {
        sqlx::query_as(EVENT_BY_ID)
            .bind(event_id)
            .fetch_optional(pool)
            .await
    }

    pub(super) async fn status(pool: &Pool<DB>) -> Result<Status, sqlx::Error> {
        sqlx::query_as(STATUS).fetch_one(pool).await
    }

    pub(super) async fn ping(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(pool).await.map(drop)
    }

    /// The newest sequence number in the log.
    async fn last_seq(tx: &mut Transaction<'_, DB>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&mut **tx)
            .await
    }

    /// The customer table's rows, live and deleted: one pass over the table, without the
    /// counts over the log that [`STATUS`] makes.
    pub(super) async fn customer_counts(pool: &Pool<DB>) -> Result<CustomerCounts, sqlx::Error> {
        sqlx::query_as(
            "SELECT COUNT(*) - COALESCE(SUM(CASE WHEN deleted THEN 1 ELSE 0 END), 0) AS customers,
                    COALESCE(SUM(CASE WHEN deleted THEN 1 ELSE 0 END), 0) AS deleted_customers
             FROM customers",
        )
        .fetch_one(pool)
        .await
    }

    /// The part of the log a rebuild reads freely: how many events, and the oldest
    /// projection that extracted their columns (none when the log is empty). One pass over
    /// the log, so a rebuild reads it in full twice only when some events must be parsed again.
    pub(super) async fn log_summary(pool: &Pool<DB>, upto: i64) -> Result<LogSummary, sqlx::Error> {
        sqlx::query_as(
            "SELECT COUNT(*) AS events, MIN(projection_version) AS oldest_projection
             FROM events WHERE seq <= $1",
        )
        .bind(upto)
        .fetch_one(pool)
        .await
    }

    /// One page of the log in sequence order: a rebuild reads the log page by page, so
    /// memory stays flat whatever the log's size, with one round trip per page.
    pub(super) async fn log_page(
        pool: &Pool<DB>,
        after: i64,
        upto: i64,
        limit: i64,
        reparse_below: i64,
        only_stale: bool,
    ) -> Result<Vec<LogRecord>, sqlx::Error> {
        sqlx::query_as(if only_stale {
            STALE_LOG_RANGE.as_str()
        } else {
            LOG_RANGE
        })
        .bind(after)
        .bind(upto)
        .bind(reparse_below)
        .bind(limit)
        .fetch_all(pool)
        .await
    }

    /// The part of the log a rebuild has not read yet (read while appends are blocked).
    async fn log_after(
        tx: &mut Transaction<'_, DB>,
        after: i64,
    ) -> Result<Vec<LogRecord>, sqlx::Error> {
        sqlx::query_as(LOG_RANGE)
            .bind(after)
            .bind(i64::MAX)
            .bind(PROJECTION_VERSION)
            .bind(i64::MAX)
            .fetch_all(&mut **tx)
            .await
    }

    pub(super) async fn write_rows(
        pool: &Pool<DB>,
        table: &str,
        rows: &[Projected],
    ) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        Self::upsert_many(&mut tx, table, rows).await?;
        tx.commit().await
    }

    async fn differences(
        tx: &mut Transaction<'_, DB>,
        aside: &str,
    ) -> Result<Vec<Difference>, sqlx::Error> {
        sqlx::query_as(&with_table(DIFFERENCES, aside))
            .fetch_all(&mut **tx)
            .await
    }

    /// Puts a rebuilt table in place of the live one; visible to readers at commit. The
    /// live table is renamed, not dropped: it is dropped after the commit, so the swap
    /// blocks appends only for the renames (on SQLite, freeing the old table's pages
    /// holds the write lock for about 0.15 s per million customers; see
    /// docs/performance.md).
    async fn swap_in(tx: &mut Transaction<'_, DB>, aside: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("ALTER TABLE customers RENAME TO {RETIRED}"))
            .execute(&mut **tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {aside} RENAME TO customers"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(super) async fn drop_table(pool: &Pool<DB>, table: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(pool)
            .await
            .map(drop)
    }

    /// Removes superseded snapshots older than `older_than` (see [`PRUNE_SUPERSEDED`]),
    /// one chunk of the log per transaction, with a pause after each for appends.
    pub(super) async fn prune_superseded(
        pool: &Pool<DB>,
        older_than: i64,
    ) -> Result<u64, sqlx::Error> {
        let (first, last): (i64, i64) =
            sqlx::query_as("SELECT COALESCE(MIN(seq), 1), COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(pool)
                .await?;
        let mut removed = 0;
        let mut after = first - 1;
        while after < last {
            let done = sqlx::query(&PRUNE_SUPERSEDED)
                .bind(older_than)
                .bind(after)
                .bind(after + ROWS_PER_CHUNK)
                .execute(pool)
                .await?;
            removed += DB::rows_affected(&done);
            after += ROWS_PER_CHUNK;
            tokio::time::sleep(LET_APPENDS_IN).await;
        }
        Ok(removed)
    }

    /// Starts a rebuild: drops any aside or retired table an interrupted one left, and
    /// takes the horizon up to which the log is read without blocking anyone (the backend's
    /// `rebuild_from_columns` then creates the aside table). The horizon is taken while
    /// appends are blocked, so every event at or below it has committed (a PostgreSQL
    /// sequence value is taken at insert and may commit late; no such straggler can hide
    /// below the horizon).
    pub(super) async fn start_rebuild(writer: &Pool<DB>, aside: &str) -> Result<i64, sqlx::Error> {
        Self::drop_table(writer, aside).await?;
        Self::drop_table(writer, RETIRED).await?;
        let mut tx = DB::begin_locked(writer).await?;
        let horizon = Self::last_seq(&mut tx).await?;
        tx.commit().await?;
        Ok(horizon)
    }

    /// Blocks appends for the end of a rebuild and reads what arrived after its horizon.
    pub(super) async fn lock_for_finish(
        writer: &Pool<DB>,
        horizon: i64,
    ) -> Result<(Transaction<'static, DB>, Vec<LogRecord>), sqlx::Error> {
        let mut tx = DB::begin_locked(writer).await?;
        let arrived = Self::log_after(&mut tx, horizon).await?;
        Ok((tx, arrived))
    }

    /// Ends a rebuild, appends still blocked by `tx`: writes what arrived after the horizon
    /// (`rows`, newest per customer), then either swaps the aside table in (readers see the
    /// old table or the new one, never a half-built one) or compares it with the live table
    /// and throws it away.
    pub(super) async fn finish_rebuild(
        mut tx: Transaction<'static, DB>,
        writer: &Pool<DB>,
        aside: &str,
        swap: bool,
        rows: &[Projected],
    ) -> Result<Vec<Difference>, sqlx::Error> {
        Self::upsert_many(&mut tx, aside, rows).await?;
        if swap {
            Self::swap_in(&mut tx, aside).await?;
            tx.commit().await?;
            Self::drop_table(writer, RETIRED).await?;
            return Ok(Vec::new());
        }
        let found = Self::differences(&mut tx, aside).await?;
        tx.rollback().await?;
        Self::drop_table(writer, aside).await?;
        Ok(found)
    }
}
