//! The ports: the small traits through which stages reach the log (Kafka, or the embedded
//! log) and the store (ScyllaDB, or the embedded store). Adapters implement them.

pub mod log;
pub mod store;

pub use log::{InputRecord, Log, LogError, OutputRecord};
pub use store::{LedgerStore, LoadedAccount, StoreError};
