//! The adapters: the only modules that touch rdkafka or the CQL driver.

pub mod kafka;
pub mod scylla;
