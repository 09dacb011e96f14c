//! The database file of a data directory, reopened after an I/O error. After one failed
//! write (a full disk), `redb` refuses every transaction ("Previous I/O error occurred")
//! until the file is closed and opened again, which also repairs it; a process that only
//! retried would stay refused for ever after space came back. The writer thread reopens the
//! file ([`Database::reopen`]); meanwhile every transaction fails with a storage error, which
//! the stages treat as the store or log being unavailable, and `/healthz` says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{ReadTransaction, StorageError, TransactionError, WriteTransaction};

use super::{storage, EmbeddedError, CACHE_BYTES};
use crate::telemetry::Health;

pub(super) struct Database {
    path: PathBuf,
    /// None while closed for reopening.
    open: RwLock<Option<Arc<redb::Database>>>,
    health: Arc<Health>,
}

impl Database {
    /// Opens (or creates) the file at `path`.
    pub(super) fn open(path: &Path) -> Result<Database, EmbeddedError> {
        let db = open_file(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => opening(
                path,
                "another txflow process has this data directory open (one process at a time: stop it, or use another --data-dir)",
            ),
            other => opening(path, other),
        })?;
        Ok(Database {
            path: path.to_owned(),
            open: RwLock::new(Some(Arc::new(db))),
            health: Arc::new(Health::default()),
        })
    }

    /// Broken while the file is closed for reopening.
    pub(super) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub(super) fn begin_read(&self) -> Result<ReadTransaction, EmbeddedError> {
        self.current()?.begin_read().map_err(storage)
    }

    pub(super) fn begin_write(&self) -> Result<WriteTransaction, EmbeddedError> {
        self.current()?.begin_write().map_err(storage)
    }

    fn current(&self) -> Result<Arc<redb::Database>, EmbeddedError> {
        self.open
            .read()
            .expect("the database lock")
            .clone()
            .ok_or_else(|| {
                EmbeddedError::Storage(format!(
                    "{} is being reopened after an I/O error",
                    self.path.display()
                ))
            })
    }

    /// Whether the file refuses every write until it is reopened.
    pub(super) fn refuses_writes(&self) -> bool {
        let Ok(db) = self.current() else {
            return false;
        };
        let refused = matches!(
            db.begin_write(),
            Err(TransactionError::Storage(StorageError::PreviousIo))
        );
        refused
    }

    /// Closes the file, so that it can be opened again: transactions fail until then.
    pub(super) fn close(&self, reason: &str) {
        self.health.set_broken(format!(
            "the embedded database at {} had an I/O error ({reason}) and is being reopened; is its disk full?",
            self.path.display()
        ));
        *self.open.write().expect("the database lock") = None;
    }

    /// Opens the file again: fails while a reader still holds the old one, or while the
    /// repair cannot write (the disk still full).
    pub(super) fn reopen(&self) -> Result<(), EmbeddedError> {
        let db = open_file(&self.path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                opening(&self.path, "a reader still holds it open")
            }
            other => opening(&self.path, other),
        })?;
        *self.open.write().expect("the database lock") = Some(Arc::new(db));
        self.health.set_healthy();
        Ok(())
    }
}

fn open_file(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

fn opening(path: &Path, message: impl std::fmt::Display) -> EmbeddedError {
    EmbeddedError::Open {
        path: path.to_owned(),
        message: message.to_string(),
    }
}
