//! Maintenance commands that must not run at once on one database: two rebuilds
//! (`replay`, `replay --verify`, `prune`) would drop each other's aside table or prune
//! under a rebuild's feet; two `backfill` runs would take each other's passes; two
//! `catch-up` runs would read the same events twice. Each kind holds a lock for the
//! command's life; what appends (`serve`, `import`) never takes one.
//!
//! On PostgreSQL the lock is a session-level advisory lock on a connection of its own, which
//! any process sharing the database sees, and which the server frees if the process dies.
//! On SQLite it is an exclusive lock on a file beside the database, freed by the OS when
//! the process exits however it exits. Either way the holder is named, with the time it
//! started, to whoever finds the lock taken.

use std::io::{Read, Seek, Write};

use sqlx::PgConnection;

use super::{Store, StoreError};

/// A kind of maintenance that excludes another of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    /// `replay`, `replay --verify`, `prune`.
    Rebuild,
    Backfill,
    CatchUp,
}

impl Maintenance {
    fn name(self) -> &'static str {
        match self {
            Self::Rebuild => "rebuild",
            Self::Backfill => "backfill",
            Self::CatchUp => "catch-up",
        }
    }

    /// The advisory lock's second key; the first is [`LOCK_NAMESPACE`].
    fn key(self) -> i32 {
        match self {
            Self::Rebuild => 1,
            Self::Backfill => 2,
            Self::CatchUp => 3,
        }
    }
}

/// The first key of every advisory lock we take ("SPRJ"), so ours never meet another
/// application's on a shared server.
const LOCK_NAMESPACE: i32 = 0x5350_524A;

/// Held while a maintenance command runs; dropping it frees the lock.
#[derive(Debug)]
pub struct MaintenanceLock {
    _held: Held,
}

#[derive(Debug)]
enum Held {
    /// The connection holding the advisory lock: closing it frees the lock.
    Postgres { _connection: PgConnection },
    /// The locked file: closing it frees the lock.
    Sqlite { _file: std::fs::File },
}

/// The lock is taken, or could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another {what} is running on this database: {holder}")]
    Busy { what: &'static str, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use the lock file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Store {
    /// Takes the lock of `kind` for `command` (named to whoever finds it taken). Without
    /// `wait`, a lock already taken is `LockError::Busy`; with it, `waiting` is called
    /// once with the holder's description and the call returns when the lock is free.
    pub async fn lock_maintenance(
        &self,
        kind: Maintenance,
        command: &str,
        wait: bool,
        waiting: impl FnOnce(&str) + Send + 'static,
    ) -> Result<MaintenanceLock, LockError> {
        let held = match self {
            Store::Postgres(store) => {
                let mut connection = store
                    .pool
                    .acquire()
                    .await
                    .map_err(StoreError::from)?
                    .detach();
                lock_postgres(&mut connection, kind, command, wait, waiting).await?;
                Held::Postgres {
                    _connection: connection,
                }
            }
            Store::Sqlite(store) => {
                let database = store
                    .maintenance
                    .connect_options()
                    .get_filename()
                    .to_owned();
                let path = format!("{}.{}.lock", database.display(), kind.name());
                let command = command.to_owned();
                let locked = tokio::task::spawn_blocking(move || {
                    lock_file(&path, kind, &command, wait, waiting)
                })
                .await
                .map_err(|e| LockError::File {
                    path: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })??;
                Held::Sqlite { _file: locked }
            }
        };
        Ok(MaintenanceLock { _held: held })
    }
}

async fn lock_postgres(
    connection: &mut PgConnection,
    kind: Maintenance,
    command: &str,
    wait: bool,
    waiting: impl FnOnce(&str),
) -> Result<(), LockError> {
    let database = |e: sqlx::Error| LockError::Store(StoreError::from(e));
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(format!("stripe-projector {command}"))
        .execute(&mut *connection)
        .await
        .map_err(database)?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(kind.key())
        .fetch_one(&mut *connection)
        .await
        .map_err(database)?;
    if taken {
        return Ok(());
    }
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name || ' since '
                || to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.classid::text::bigint = $1 AND l.objid::text::bigint = $2 AND l.objsubid = 2
         LIMIT 1",
    )
    .bind(i64::from(LOCK_NAMESPACE))
    .bind(i64::from(kind.key()))
    .fetch_optional(&mut *connection)
    .await
    .map_err(database)?;
    let holder = holder.unwrap_or_else(|| "a process that has just finished".to_owned());
    if !wait {
        // The caller drops this connection, which holds nothing.
        return Err(LockError::Busy {
            what: kind.name(),
            holder,
        });
    }
    waiting(&holder);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(kind.key())
        .execute(&mut *connection)
        .await
        .map_err(database)?;
    Ok(())
}

fn lock_file(
    path: &str,
    kind: Maintenance,
    command: &str,
    wait: bool,
    waiting: impl FnOnce(&str),
) -> Result<std::fs::File, LockError> {
    let failed = |source: std::io::Error| LockError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).map_err(failed)?;
            let holder = if holder.trim().is_empty() {
                "a process that has just started".to_owned()
            } else {
                holder.trim().to_owned()
            };
            if !wait {
                return Err(LockError::Busy {
                    what: kind.name(),
                    holder,
                });
            }
            waiting(&holder);
            file.lock().map_err(failed)?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    let since = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    file.set_len(0).map_err(failed)?;
    file.rewind().map_err(failed)?;
    write!(
        file,
        "stripe-projector {command} (pid {}) since {since}",
        std::process::id()
    )
    .map_err(failed)?;
    file.flush().map_err(failed)?;
    Ok(file)
}
