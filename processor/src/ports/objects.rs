//! Object storage: where the archive's files go (S3 and what speaks its API, or a local
//! directory). Objects are written once and never replaced, so that a file written again
//! after a crash cannot overwrite one that a reader has already seen.

use std::future::Future;

use crate::domain::{Cause, RetryClass};

/// Why object storage did not do what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ObjectError {
    /// Not reachable or not answering now (a timeout, a 5xx, a connection refused): the same
    /// call may succeed later.
    #[error("object storage is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Refused for what was asked (no such bucket, access denied, bad credentials): asking
    /// again would be refused again.
    #[error("object storage refused: {0}")]
    Refused(#[source] Cause),
    /// No object under the key.
    #[error("no object {0}")]
    NotFound(String),
}

impl RetryClass for ObjectError {
    fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// What creating an object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The object is there now, as given.
    New,
    /// An object was already under the key: it was left as it was.
    AlreadyThere,
}

/// A bucket (and a prefix in it) of object storage; keys are relative to the prefix.
pub trait Objects: Send + Sync {
    /// Writes `bytes` under `key` unless an object is already there (a conditional create,
    /// S3's `If-None-Match: *`).
    fn create(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<Created, ObjectError>> + Send;

    fn get(&self, key: &str) -> impl Future<Output = Result<Vec<u8>, ObjectError>> + Send;

    /// Every key under `prefix`, in lexical order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, ObjectError>> + Send;
}
