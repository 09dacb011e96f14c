//! txflow: an exactly-once financial transaction stream processor on Kafka and ScyllaDB.
//!
//! Modules point downward only: `stages` wire `domain` (pure rules) and `codec` to the
//! `ports`, which `adapters` implement; `pipeline` runs a stage over a log.

pub mod adapters;
pub mod app;
pub mod codec;
pub mod config;
pub mod domain;
pub mod failures;
pub mod limits;
pub mod loadgen;
pub mod pipeline;
pub mod ports;
pub mod routing;
pub mod stages;
pub mod telemetry;
#[cfg(test)]
mod test_certs;
pub mod tls;
pub mod traces;
pub mod wire;
