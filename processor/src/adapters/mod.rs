//! The adapters: the only modules that touch rdkafka or the CQL driver (and, in test builds,
//! a store that fails on purpose).

#[cfg(feature = "fault-injection")]
pub mod faulty;
pub mod kafka;
pub mod scylla;
