//! The adapters: the only modules that touch rdkafka, the CQL driver or the HTTP client (and,
//! in test builds, a store that fails on purpose).

#[cfg(feature = "fault-injection")]
pub mod faulty;
pub mod http;
pub mod kafka;
pub mod scylla;
