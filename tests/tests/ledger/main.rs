//! The ledger stage against real Kafka and Cassandra, run as the `txflow` binary: crashes,
//! scale-out, re-sends and store failures, each checked against every invariant of docs/CONTRACT.md
//! §2.

mod crashes;
mod failures;
mod hostile;
mod resends;
mod upgrade;
