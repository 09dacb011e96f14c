//! The ledger stage against real Kafka and Cassandra, run as the `txflow` binary: crashes,
//! scale-out and re-sends, each checked against every invariant of DESIGN.md §2.

mod crashes;
mod resends;
