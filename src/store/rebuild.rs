//! What `replay` needs of the store: a table rebuilt aside from the log, read page by
//! page, then caught up and swapped in (or compared) while appends are blocked.

use super::sql::Sql;
use super::{postgres, sqlite, Difference, LogRecord, LogSummary, RebuildKind, Store, StoreError};
use crate::projection::Projected;

/// A rebuild in progress: its aside table and the part of the log it reads freely.
#[derive(Debug)]
pub struct Rebuild {
    kind: RebuildKind,
    /// Makes index and constraint names unique to this rebuild.
    token: String,
    /// Every event up to this sequence number had committed when the rebuild started.
    pub horizon: i64,
}

impl Rebuild {
    fn table(&self) -> &'static str {
        Self::table_for(self.kind)
    }

    fn table_for(kind: RebuildKind) -> &'static str {
        match kind {
            RebuildKind::Replace => "customers_rebuild",
            RebuildKind::Verify => "customers_verify",
        }
    }
}

/// The end of a rebuild, appends blocked: what arrived since it started is to be
/// projected and written with [`FinishingRebuild::complete`]. Dropped, it changes nothing
/// and appends resume.
#[derive(Debug)]
pub struct FinishingRebuild {
    rebuild: Rebuild,
    locked: Locked,
    arrived: Vec<LogRecord>,
}

/// The transaction that blocks appends, and the pool it came from.
#[derive(Debug)]
enum Locked {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::SqlitePool),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>, sqlx::PgPool),
}

impl FinishingRebuild {
    /// The events appended since the rebuild started, in log order.
    pub fn arrived(&self) -> &[LogRecord] {
        &self.arrived
    }

    /// Writes `rows` (what [`Self::arrived`] projects to, newest per customer) into the
    /// rebuild's table, then swaps the table in (`Replace`) or returns how it differs from
    /// the live table (`Verify`, which changes nothing).
    pub async fn complete(self, rows: &[Projected]) -> Result<Vec<Difference>, StoreError> {
        let table = self.rebuild.table();
        let swap = self.rebuild.kind == RebuildKind::Replace;
        Ok(match self.locked {
            Locked::Sqlite(tx, pool) => Sql::finish_rebuild(tx, &pool, table, swap, rows).await?,
            Locked::Postgres(tx, pool) => Sql::finish_rebuild(tx, &pool, table, swap, rows).await?,
        })
    }
}

impl Store {
    /// Starts rebuilding the customer table aside (see `replay`). Any aside table left by
    /// an interrupted rebuild of the same kind, or a table one replaced but had not yet
    /// dropped, is dropped.
    pub async fn start_rebuild(&self, kind: RebuildKind) -> Result<Rebuild, StoreError> {
        let token = chrono::Utc::now().timestamp_micros().to_string();
        let table = Rebuild::table_for(kind);
        let horizon = match self {
            Self::Sqlite(s) => Sql::start_rebuild(&s.maintenance, table).await?,
            Self::Postgres(s) => Sql::start_rebuild(&s.pool, table).await?,
        };
        Ok(Rebuild {
            kind,
            token,
            horizon,
        })
    }

    /// The part of the log a rebuild reads before it blocks appends.
    pub async fn log_summary(&self, upto: i64) -> Result<LogSummary, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::log_summary(&s.reader, upto).await?,
            Self::Postgres(s) => Sql::log_summary(&s.pool, upto).await?,
        })
    }

    /// At most `limit` events of the log after `after` and up to `upto`, in order, with
    /// their payload when their projection version is below `reparse_below`; with
    /// `only_stale`, only those events.
    pub async fn log_page(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
        reparse_below: i64,
        only_stale: bool,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let (below, stale) = (reparse_below, only_stale);
        Ok(match self {
            Self::Sqlite(s) => Sql::log_page(&s.reader, after, upto, limit, below, stale).await?,
            Self::Postgres(s) => Sql::log_page(&s.pool, after, upto, limit, below, stale).await?,
        })
    }

    /// Fills the rebuild's table from the columns the current projection stored with each
    /// event (version `current`), in one statement; returns how many rows it wrote.
    pub async fn rebuild_from_columns(
        &self,
        rebuild: &Rebuild,
        current: i64,
    ) -> Result<u64, StoreError> {
        let (table, token, upto) = (rebuild.table(), rebuild.token.as_str(), rebuild.horizon);
        Ok(match self {
            Self::Sqlite(s) => sqlite::rebuild_from_columns(s, table, token, upto, current).await?,
            Self::Postgres(s) => {
                postgres::rebuild_from_columns(&s.pool, table, token, upto, current).await?
            }
        })
    }

    /// Writes projected rows into the rebuild's table (newest snapshot wins, as live).
    pub async fn write_rebuild(
        &self,
        rebuild: &Rebuild,
        rows: &[Projected],
    ) -> Result<(), StoreError> {
        let table = rebuild.table();
        match self {
            Self::Sqlite(s) => Sql::write_rows(&s.maintenance, table, rows).await?,
            Self::Postgres(s) => Sql::write_rows(&s.pool, table, rows).await?,
        }
        Ok(())
    }

    /// Starts the end of a rebuild: blocks appends (until the returned [`FinishingRebuild`]
    /// completes or is dropped) and reads what arrived since the rebuild started, for the
    /// caller to project.
    pub async fn finish_rebuild(&self, rebuild: Rebuild) -> Result<FinishingRebuild, StoreError> {
        let horizon = rebuild.horizon;
        let (locked, arrived) = match self {
            Self::Sqlite(s) => {
                let (tx, arrived) = Sql::lock_for_finish(&s.maintenance, horizon).await?;
                (Locked::Sqlite(tx, s.maintenance.clone()), arrived)
            }
            Self::Postgres(s) => {
                let (tx, arrived) = Sql::lock_for_finish(&s.pool, horizon).await?;
                (Locked::Postgres(tx, s.pool.clone()), arrived)
            }
        };
        Ok(FinishingRebuild {
            rebuild,
            locked,
            arrived,
        })
    }

    /// Removes snapshots older than `older_than` (unix seconds) that a newer snapshot of
    /// the same customer supersedes. Returns how many were removed.
    pub async fn prune_superseded(&self, older_than: i64) -> Result<u64, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::prune_superseded(&s.maintenance, older_than).await?,
            Self::Postgres(s) => Sql::prune_superseded(&s.pool, older_than).await?,
        })
    }
}
