//! The gateway's way in: records published outside any transaction.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::KafkaConfig;
use crate::domain::Cause;
use crate::ports::{PublishError, Published, Publisher};
use crate::wire::OutputRecord;

use super::client::{owned_headers, producer_config};

/// Publishes records with an idempotent producer (`acks=all`): the gateway's way in.
pub struct KafkaPublisher {
    producer: FutureProducer,
    /// How long a record may wait for its acknowledgement, queueing included.
    timeout: Duration,
}

impl KafkaPublisher {
    pub fn new(kafka: &KafkaConfig, timeout: Duration) -> Result<Self, KafkaError> {
        let producer = producer_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create()?;
        Ok(KafkaPublisher { producer, timeout })
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, records: Vec<OutputRecord>) -> Vec<Result<Published, PublishError>> {
        let sends = records.iter().map(|output| {
            let mut record =
                FutureRecord::to(&output.topic).headers(owned_headers(&output.headers));
            if let Some(key) = &output.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &output.value {
                record = record.payload(value.as_slice());
            }
            self.producer.send(record, self.timeout)
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .zip(&records)
            .map(|(sent, output)| match sent {
                Ok(delivery) => Ok(Published {
                    topic: output.topic.clone(),
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Err((error, _)) if publish_retriable(&error) => {
                    Err(PublishError::Unavailable(Cause::new(error)))
                }
                Err((error, _)) => Err(PublishError::Refused(Cause::new(error))),
            })
            .collect()
    }
}

/// Whether sending the record again may succeed.
fn publish_retriable(error: &KafkaError) -> bool {
    !matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}
