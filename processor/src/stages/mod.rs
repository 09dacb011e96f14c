//! The stages: each wires the pure core and the ports into one step of the pipeline.

pub mod archiver;
pub mod gateway;
pub mod ledger;
pub mod notifier;
pub mod router;
