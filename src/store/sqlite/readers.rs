//! Checkout's lookups on SQLite: reader threads, each with a connection of its own.
//!
//! Each lookup query is handed to a free reader thread, which runs it and answers with
//! every row at once. Through sqlx, each row came back to the waiting task as a message
//! of its own, waking it each time (see `writer.rs`).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{open_connection, spawn_thread, CANONICAL_MANY};
use crate::store::{Customer, NumberedCustomer, StoreError};

type Reply = oneshot::Sender<Result<Vec<NumberedCustomer>, StoreError>>;

/// Readers only read; and they read pages through a memory map of the file's first 64 MiB
/// rather than a `read()` copy each into a small page cache of their own, which is faster
/// and costs less CPU per lookup. The mapped pages are the OS's file cache, shared
/// with the writer's map, but they count in the process's resident memory.
const READER_SETTINGS: &str = "PRAGMA query_only = 1; PRAGMA mmap_size = 67108864;";

/// One query: the keys as a JSON array (see `CANONICAL_MANY`).
struct Job {
    keys: String,
    reply: Reply,
}

/// The handle lookups go through; the threads stop when every handle is gone.
#[derive(Debug, Clone)]
pub(in crate::store) struct Readers {
    jobs: mpsc::Sender<Job>,
}

impl Readers {
    /// Opens `count` connections to the database at `path` and starts their threads.
    pub(in crate::store) fn start(path: &Path, count: usize) -> Result<Self, StoreError> {
        // As many queued as there are threads: callers (the lookup batcher's tasks) queue
        // their own lookups meanwhile, in larger batches.
        let (jobs, queue) = mpsc::channel(count);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..count {
            let connection = open_connection(path, READER_SETTINGS)?;
            let queue = queue.clone();
            spawn_thread("sqlite-reader", move || read_each(&connection, &queue))?;
        }
        Ok(Self { jobs })
    }

    /// Checkout's customer for each key of `keys` (a JSON array, see `CANONICAL_MANY`)
    /// that has one, numbered by the key's position.
    pub(in crate::store) async fn canonical_many(
        &self,
        keys: String,
    ) -> Result<Vec<NumberedCustomer>, StoreError> {
        let make = |reply| Job { keys, reply };
        crate::batch_queue::ask(&self.jobs, make, || StoreError::ReaderStopped).await
    }
}

/// A reader thread: one query per job, until every handle is gone.
fn read_each(connection: &Connection, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Held while waiting, so the other readers wait for the lock instead: one of them
        // takes each job. A reader that panicked left the queue as it was.
        let job = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else { return };
        let answer = read(connection, &job.keys).map_err(StoreError::from);
        // A caller that went away needs no answer.
        let _ = job.reply.send(answer);
    }
}

fn read(connection: &Connection, keys: &str) -> Result<Vec<NumberedCustomer>, rusqlite::Error> {
    let mut statement = connection.prepare_cached(&CANONICAL_MANY)?;
    let rows = statement.query_map([keys], |row| {
        Ok(NumberedCustomer {
            i: row.get(0)?,
            customer: Customer {
                customer_id: row.get(1)?,
                account: row.get(2)?,
                email: row.get(3)?,
                livemode: row.get(4)?,
                name: row.get(5)?,
                last_event_id: row.get(6)?,
                last_event_created: row.get(7)?,
            },
        })
    })?;
    rows.collect()
}
