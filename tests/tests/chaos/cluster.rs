//! Which machine of the cluster to fail: the broker leading a partition, the broker
//! coordinating a transactional id, read from the cluster's metadata as a client sees it.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use txflow_tests::kafka_config;

/// The cluster node (`kafka-N`, as `deploy/local/stack node` names it) leading `partition`
/// of `topic`.
pub fn leader_of(topic: &str, partition: i32) -> String {
    let consumer: BaseConsumer = kafka_config().create().expect("a metadata client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("the cluster's metadata");
    let leader = metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
        .leader();
    assert!(leader > 0, "{topic}/{partition} has no leader now");
    format!("kafka-{leader}")
}

/// The node coordinating `transactional_id`'s transactions: the leader of its partition of
/// `__transaction_state`, which Kafka picks as the id's Java `hashCode` modulo the
/// partition count (three on the cluster).
pub fn coordinator_of(transactional_id: &str) -> String {
    let partitions = 3;
    let partition = java_hash(transactional_id).unsigned_abs() % partitions;
    leader_of("__transaction_state", partition as i32)
}

/// Java's `String.hashCode`, with `i32::MIN` as 0, as Kafka's `Utils.abs` takes it.
fn java_hash(text: &str) -> i32 {
    let hash = text.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    if hash == i32::MIN {
        0
    } else {
        hash
    }
}

#[test]
fn java_string_hash_codes() {
    assert_eq!(java_hash(""), 0);
    assert_eq!(java_hash("a"), 97);
    // "polygenelubricants".hashCode() is Integer.MIN_VALUE in Java: Kafka's abs gives 0.
    assert_eq!(java_hash("polygenelubricants"), 0);
    assert_eq!(java_hash("hello"), 99_162_322);
    assert_eq!(java_hash("txflow-ledger"), -1_365_672_476);
}
