//! Smoke tests of what txflow relies on in the real services, run against the local stack
//! (`deploy/local/stack up`): Kafka transactions for exactly-once read-process-write, and
//! CQL lightweight transactions for conditional writes; and the stages' Kafka log across a
//! rebalance.

mod cql_lwt;
mod kafka_transactions;
mod rebalance;
