//! The schema registry port: where a codec finds the writer schema of a schema id it has not
//! seen. The adapter is a Confluent-compatible registry over HTTP
//! ([`crate::adapters::registry`]).

use std::future::Future;
use std::pin::Pin;

use crate::domain::{Cause, RetryClass};

/// Why the registry could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// No answer, or one that says to come back later (5xx, 408, 429): a retry can help.
    #[error("the schema registry at {url} is unavailable: {cause}")]
    Unavailable {
        url: String,
        #[source]
        cause: Cause,
    },
    /// The registry has no such schema, subject or version.
    #[error("the schema registry has no {0}")]
    NotFound(String),
    /// The registry refused the request (an incompatible or invalid schema, no permission):
    /// the same request would be refused again.
    #[error("the schema registry refused {what}: HTTP {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
}

/// Only an unavailable registry may answer later; what it has not or refused stays so.
impl RetryClass for RegistryError {
    fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A boxed future, so that a codec can hold any registry behind one pointer.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<String, RegistryError>> + Send + 'a>>;

/// Looks up writer schemas by id.
pub trait SchemaLookup: Send + Sync {
    /// The schema text registered under `id`.
    fn schema_text(&self, id: u32) -> Lookup<'_>;
}
