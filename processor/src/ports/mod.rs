//! The ports: the small traits through which stages reach the log (Kafka, or the embedded
//! log), the store (ScyllaDB, or the embedded store), webhook endpoints (HTTP), the
//! schema registry and object storage (the archive). Adapters implement them.

pub mod log;
pub mod objects;
pub mod schemas;
pub mod store;
pub mod webhook;

pub use log::{
    Backlog, DelayedTopics, Log, LogError, PublishError, Published, Publisher, TopicReader,
};
pub use objects::{Created, ObjectError, Objects};
pub use schemas::{RegistryError, SchemaLookup};
pub use store::{Balances, LedgerStore, LoadedAccount, StoreError};
pub use webhook::{DeliveryError, WebhookRequest, Webhooks};
