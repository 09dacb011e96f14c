//! The clients' properties, records to and from rdkafka's types, and the producer that
//! counts its deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::KafkaConfig;
use crate::wire::InputRecord;

/// A client config with the bootstrap servers and every extra property.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// A producer config: the client config with the Java clients' partitioner, so that an
/// account's records land on the same partition whichever client wrote them, and on the same
/// partition number of every co-partitioned topic.
pub(super) fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config.set("partitioner", "murmur2_random");
    config
}

/// Counts the deliveries the broker confirmed and refused, so that no failed write goes
/// unnoticed.
#[derive(Default)]
pub struct DeliveryReport {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!("delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A producer whose deliveries are counted.
pub type ReportingProducer = ThreadedProducer<DeliveryReport>;

/// An idempotent producer (`acks=all`), for records written outside any transaction.
pub fn idempotent_producer(kafka: &KafkaConfig) -> Result<ReportingProducer, KafkaError> {
    producer_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(DeliveryReport::default())
}

/// Sends `record`, waiting while the producer's local queue is full: a full queue drains as
/// the broker acknowledges, so waiting loses nothing and sheds nothing.
pub async fn send_when_room(
    producer: &ReportingProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A consumed record as the stages read it.
pub(super) fn input_record(message: &BorrowedMessage<'_>) -> InputRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    InputRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

pub(super) fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (name, value)| {
            all.insert(Header {
                key: name,
                value: Some(value),
            })
        },
    )
}
