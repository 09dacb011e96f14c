//! The ports: the small traits through which stages reach the log (Kafka, or the embedded
//! log), the store (ScyllaDB, or the embedded store) and webhook endpoints (HTTP). Adapters
//! implement them.

pub mod log;
pub mod store;
pub mod webhook;

pub use log::{InputRecord, Log, LogError, OutputRecord, PublishError, Published, Publisher};
pub use store::{LedgerStore, LoadedAccount, StoreError};
pub use webhook::{DeliveryError, WebhookRequest, Webhooks};
