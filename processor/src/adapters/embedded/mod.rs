//! The embedded backend: the log and the store in one `redb` database file on local disk,
//! for `txflow dev` — one process, no external service, the same stages and guarantees.
//!
//! A batch's outputs and consumed positions are written in one `redb` transaction, committed
//! durably (fsync) before the commit returns: they land together or not at all, and a ledger
//! write lands whole or not at all, so a SIGKILL at any moment loses or doubles nothing. One
//! writer thread applies the writes that wait together in one transaction. `redb` locks the file: one process at a
//! time opens a data directory.

mod database;
mod log;
pub mod remote;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition, TableHandle};
use tokio::sync::Notify;

use crate::domain::Cause;
use crate::ports::{DelayedTopics, LogError};
use crate::telemetry::Health;

use self::database::Database;

pub use self::log::{EmbeddedLog, EmbeddedPublisher};
pub use self::store::EmbeddedLedgerStore;

/// Records by topic, partition and the offset of the first: the records one write appended
/// to a topic are one value, as in a Kafka record batch, so that a batch of a hundred costs
/// one B-tree insert, not a hundred.
const RECORDS: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("record_batches");
/// The next offset of each topic partition.
const ENDS: TableDefinition<(&str, u32), u64> = TableDefinition::new("ends");
/// The next offset each group consumes, by topic partition.
const POSITIONS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("positions");
/// Accounts: balance, currency, version.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// Recorded results by posting key (the event id, or a transfer's reversal beside it) and
/// account: one insert per result, and an event's results (a transfer has two) side by side
/// for `GET /v1/events/{id}`. Producers that number or time-order their event ids get inserts
/// that land next to each other.
const RESULTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("event_results");
/// The claim that holds each event id: the first event to claim it.
const EVENT_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("event_ids");
/// Results as an earlier build kept them: by account and event id, with a second table of
/// the accounts each event has a result on. Moved into [`RESULTS`] when a data directory
/// made by that build is opened.
const ACCOUNT_RESULTS_V1: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("results");
const BY_EVENT_V1: TableDefinition<(&str, &str), ()> = TableDefinition::new("results_by_event");

/// The database file in a data directory.
pub const DATABASE_FILE: &str = "txflow.redb";

/// The database's page cache: bounded, so that the process's memory stays flat as the data
/// grows (redb's default is 1 GiB).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why the embedded database could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("opening {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("the embedded database: {0}")]
    Storage(String),
    #[error("the embedded database holds data txflow cannot read: {0}")]
    Corrupt(String),
}

/// Any `redb` error: a storage failure.
fn storage(error: impl std::fmt::Display) -> EmbeddedError {
    EmbeddedError::Storage(error.to_string())
}

/// An open data directory: the database and a signal that new records were committed.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<Database>,
    writer: writer::Writer,
    /// Woken on every commit of records, so that waiting consumers read at once.
    appended: Arc<Notify>,
}

impl Embedded {
    /// Opens (or creates) the database in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<Embedded, EmbeddedError> {
        let path = dir.join(DATABASE_FILE);
        std::fs::create_dir_all(dir).map_err(|e| EmbeddedError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let db = Arc::new(Database::open(&path)?);
        let embedded = Embedded {
            writer: writer::Writer::start(db.clone()),
            db,
            appended: Arc::new(Notify::new()),
        };
        let existing = embedded.table_names()?;
        embedded.create_tables()?;
        if existing.iter().any(|n| n == ACCOUNT_RESULTS_V1.name()) {
            embedded.move_account_results()?;
        }
        if !existing.iter().any(|n| n == EVENT_IDS.name()) {
            store::claim_recorded_event_ids(&embedded.db)?;
        }
        Ok(embedded)
    }

    fn table_names(&self) -> Result<Vec<String>, EmbeddedError> {
        let txn = self.db.begin_read()?;
        let names = txn
            .list_tables()
            .map_err(storage)?
            .map(|table| table.name().to_owned())
            .collect();
        Ok(names)
    }

    /// Moves the results of a data directory made by an earlier build into [`RESULTS`], in
    /// one transaction: the ledger's idempotency rests on them, so none may be left behind.
    fn move_account_results(&self) -> Result<(), EmbeddedError> {
        let txn = self.db.begin_write()?;
        {
            let old = txn.open_table(ACCOUNT_RESULTS_V1).map_err(storage)?;
            let mut new = txn.open_table(RESULTS).map_err(storage)?;
            for entry in old.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let (account_id, event_id) = key.value();
                new.insert((event_id, account_id), value.value())
                    .map_err(storage)?;
            }
        }
        txn.delete_table(ACCOUNT_RESULTS_V1).map_err(storage)?;
        txn.delete_table(BY_EVENT_V1).map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Creates every table, so that readers never meet a missing one.
    fn create_tables(&self) -> Result<(), EmbeddedError> {
        let txn = self.db.begin_write()?;
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(ENDS).map_err(storage)?;
        txn.open_table(POSITIONS).map_err(storage)?;
        txn.open_table(ACCOUNTS).map_err(storage)?;
        txn.open_table(RESULTS).map_err(storage)?;
        txn.open_table(EVENT_IDS).map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Broken while the database is closed to be reopened after an I/O error.
    pub fn health(&self) -> Arc<Health> {
        self.db.health()
    }

    pub fn store(&self) -> EmbeddedLedgerStore {
        EmbeddedLedgerStore::new(self.db.clone(), self.writer.clone())
    }

    pub fn publisher(&self) -> EmbeddedPublisher {
        EmbeddedPublisher::new(self.clone())
    }

    /// A member of `group` consuming `inputs` and the delayed topics `delayed` (retry tiers).
    pub fn log(&self, group: &str, inputs: &[&str], delayed: &DelayedTopics) -> EmbeddedLog {
        EmbeddedLog::new(self.clone(), group, inputs, delayed)
    }

    /// Every record of `topic`, in offset order.
    pub fn read_to_end(&self, topic: &str) -> Result<Vec<crate::wire::InputRecord>, EmbeddedError> {
        log::read_from(&self.db, topic, 0)
    }
}

impl crate::ports::TopicReader for Embedded {
    async fn read_to_end(&self, topic: &str) -> Result<Vec<crate::wire::InputRecord>, LogError> {
        blocking(|| Embedded::read_to_end(self, topic)).map_err(|e| LogError::Fatal(Cause::new(e)))
    }
}

/// Runs blocking database work off the async workers.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests;
