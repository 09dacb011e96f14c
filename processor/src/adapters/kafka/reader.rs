//! Reading a topic to its end without a group, for operators' tools.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;
use super::CALL_TIMEOUT;
use crate::domain::Cause;
use crate::ports::{LogError, TopicReader};
use crate::wire::InputRecord;

use super::client::{client_config, input_record};

/// A reader's context: the end of a partition is what it reads to, not an error to log
/// (librdkafka reports it through the error callback too, which logs it as an ERROR).
struct ReadsToTheEnd;

impl ClientContext for ReadsToTheEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReadsToTheEnd {}

/// The group id of the operators' tools' reader ([`read_to_end`]).
const TOOLS_READER_GROUP: &str = "txflow-reader";

/// The committed records of one topic's partitions, from the offsets in `start` to each
/// partition's end as of now. librdkafka wants a `group`, though the reader neither joins it
/// nor commits: it is only looked up, and needs Describe on it.
pub(super) fn read_until_end(
    kafka: &KafkaConfig,
    group: &str,
    start: &TopicPartitionList,
) -> Result<Vec<InputRecord>, KafkaError> {
    let reader: BaseConsumer<ReadsToTheEnd> = client_config(kafka)
        // It reads without joining a group: the group member's limits are not its own.
        .remove("max.poll.interval.ms")
        .remove("session.timeout.ms")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(ReadsToTheEnd)?;
    reader.assign(start)?;
    let mut open: HashSet<i32> = start.elements().iter().map(|e| e.partition()).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + CALL_TIMEOUT;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => records.push(input_record(&message)),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(records)
}

/// Every committed record of `topic`, from the beginning of each partition to its end as of
/// now, in partition order; for operator tools over small topics (the dead letters).
pub fn read_to_end(kafka: &KafkaConfig, topic: &str) -> Result<Vec<InputRecord>, KafkaError> {
    let admin: BaseConsumer = client_config(kafka).create()?;
    let metadata = admin.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
    let partitions = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut start = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        start.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    let mut records = read_until_end(kafka, TOOLS_READER_GROUP, &start)?;
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// Reads topics to their end, with the group-less reader of [`read_to_end`].
#[derive(Clone, Debug)]
pub struct KafkaReader {
    kafka: KafkaConfig,
}

impl KafkaReader {
    pub fn new(kafka: &KafkaConfig) -> Self {
        KafkaReader {
            kafka: kafka.clone(),
        }
    }
}

impl TopicReader for KafkaReader {
    async fn read_to_end(&self, topic: &str) -> Result<Vec<InputRecord>, LogError> {
        tokio::task::block_in_place(|| read_to_end(&self.kafka, topic)).map_err(|e| {
            LogError::Fatal(Cause::context(
                format!("reading {topic} on {}", self.kafka.bootstrap_servers),
                e,
            ))
        })
    }
}
