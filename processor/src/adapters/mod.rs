//! The adapters: the only modules that touch rdkafka, the CQL driver, the embedded database or
//! the HTTP client (webhooks, the schema registry), object storage; a store measured, whichever it is; and,
//! in test builds, a store that fails on purpose.

pub mod embedded;
#[cfg(feature = "fault-injection")]
pub mod faulty;
pub mod http;
pub mod kafka;
pub mod measured;
pub mod objects;
pub mod registry;
pub mod scylla;
