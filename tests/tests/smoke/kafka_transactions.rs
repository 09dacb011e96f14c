//! Kafka transactions as txflow's stages use them: consume with `read_committed`, produce,
//! send the consumed offsets with the consumer's group metadata, commit or abort; and
//! fencing of a zombie producer by a newer one with the same `transactional.id`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use txflow_tests::{
    create_topics, kafka_config, produce_committed, read_topic, unique_name, ReadRecord, TIMEOUT,
};

type Record = (String, String);

fn transactional_producer(transactional_id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka_config()
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("a transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

fn send(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &str) {
    producer
        .send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| e)
        .expect("enqueue a record");
}

/// Writes `count` records (`acct-<i mod 8>`, `event-<i>`) to `topic`, committed.
fn seed(topic: &str, count: usize) -> Vec<Record> {
    let records: Vec<Record> = (0..count)
        .map(|i| (format!("acct-{}", i % 8), format!("event-{i}")))
        .collect();
    let raw: Vec<(Option<&[u8]>, &[u8])> = records
        .iter()
        .map(|(k, v)| (Some(k.as_bytes()), v.as_bytes()))
        .collect();
    produce_committed(topic, &raw);
    records
}

/// Everything a consumer with the given isolation level can read from `topic`, sorted.
fn read_all(topic: &str, isolation: &str) -> Vec<Record> {
    let mut records: Vec<Record> = read_topic(topic, isolation).iter().map(record_of).collect();
    records.sort();
    records
}

fn record_of(m: &ReadRecord) -> Record {
    let text =
        |bytes: &Option<Vec<u8>>| String::from_utf8(bytes.clone().unwrap_or_default()).unwrap();
    (text(&m.key), text(&m.value))
}

/// A `read_committed` group member that has consumed all `count` records of `topic`; returns
/// the records and the offsets to commit (last consumed + 1 per partition).
fn consume_in_group(
    topic: &str,
    group: &str,
    count: usize,
) -> (BaseConsumer, Vec<Record>, TopicPartitionList) {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a group consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {count} records in {TIMEOUT:?}",
            records.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                let text = |bytes: Option<&[u8]>| {
                    String::from_utf8(bytes.unwrap_or_default().to_vec()).unwrap()
                };
                records.push((text(m.key()), text(m.payload())));
            }
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offset");
    }
    (consumer, records, offsets)
}

/// The group's committed offset of each partition of `topic`, read without joining it.
fn committed(topic: &str, group: &str, partitions: i32) -> BTreeMap<i32, Offset> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", group)
        .create()
        .expect("a consumer");
    let mut query = TopicPartitionList::new();
    for p in 0..partitions {
        query.add_partition(topic, p);
    }
    consumer
        .committed_offsets(query, TIMEOUT)
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

fn processed(records: &[Record]) -> Vec<Record> {
    let mut out: Vec<Record> = records
        .iter()
        .map(|(k, v)| (k.clone(), format!("processed:{v}")))
        .collect();
    out.sort();
    out
}

/// Consumes the input in a group, produces one output record per input record and sends the
/// offsets in an open transaction; returns the producer and what it consumed and wrote.
fn process_in_transaction(
    input: &str,
    output: &str,
    group: &str,
) -> (
    ThreadedProducer<DefaultProducerContext>,
    Vec<Record>,
    TopicPartitionList,
) {
    let seeded = seed(input, 12);
    let (consumer, consumed, offsets) = consume_in_group(input, group, seeded.len());
    let mut sorted = consumed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        {
            let mut s = seeded;
            s.sort();
            s
        },
        "the group consumed what was seeded"
    );

    let producer = transactional_producer(&unique_name("txn"));
    producer.begin_transaction().expect("begin");
    for (key, value) in &consumed {
        send(&producer, output, key, &format!("processed:{value}"));
    }
    let metadata = consumer.group_metadata().expect("group metadata");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
        .expect("send_offsets_to_transaction");
    (producer, consumed, offsets)
}

#[test]
fn committed_transaction_publishes_outputs_and_consumed_offsets_together() {
    let (input, output, group) = (unique_name("in"), unique_name("out"), unique_name("group"));
    create_topics(&[&input, &output], 2);

    let (producer, consumed, offsets) = process_in_transaction(&input, &output, &group);
    producer.commit_transaction(TIMEOUT).expect("commit");

    assert_eq!(read_all(&output, "read_committed"), processed(&consumed));
    // A partition the seed did not reach has nothing consumed and so nothing committed.
    let mut expected: BTreeMap<i32, Offset> = (0..2).map(|p| (p, Offset::Invalid)).collect();
    expected.extend(
        offsets
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset())),
    );
    assert_eq!(committed(&input, &group, 2), expected);
}

#[test]
fn aborted_transaction_hides_outputs_and_keeps_offsets_uncommitted() {
    let (input, output, group) = (unique_name("in"), unique_name("out"), unique_name("group"));
    create_topics(&[&input, &output], 2);

    let (producer, consumed, _) = process_in_transaction(&input, &output, &group);
    producer.abort_transaction(TIMEOUT).expect("abort");

    assert_eq!(read_all(&output, "read_committed"), Vec::<Record>::new());
    assert_eq!(
        read_all(&output, "read_uncommitted"),
        processed(&consumed),
        "the aborted records were written, and only read_committed hides them"
    );
    assert!(
        committed(&input, &group, 2)
            .values()
            .all(|o| *o == Offset::Invalid),
        "an aborted transaction commits no offsets"
    );
}

#[test]
fn newer_producer_with_same_transactional_id_fences_the_zombie() {
    let output = unique_name("out");
    create_topics(&[&output], 1);
    let transactional_id = unique_name("txn");

    let zombie = transactional_producer(&transactional_id);
    zombie.begin_transaction().expect("begin");
    send(&zombie, &output, "acct-0", "from-zombie");
    zombie
        .flush(TIMEOUT)
        .expect("the zombie's record reaches the broker");

    let successor = transactional_producer(&transactional_id);
    match zombie.commit_transaction(TIMEOUT) {
        Err(KafkaError::Transaction(e)) => {
            assert!(e.is_fatal(), "fencing is fatal for the zombie, got {e}")
        }
        other => panic!("the fenced zombie's commit must fail, got {other:?}"),
    }

    successor.begin_transaction().expect("begin");
    send(&successor, &output, "acct-0", "from-successor");
    successor.commit_transaction(TIMEOUT).expect("commit");

    assert_eq!(
        read_all(&output, "read_committed"),
        vec![("acct-0".to_owned(), "from-successor".to_owned())]
    );
}
