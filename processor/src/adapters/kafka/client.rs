//! The clients' properties, records to and from rdkafka's types, and the producer that
//! counts its deliveries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
/// unnoticed; and holds up `out_of_reach` while every broker is out of reach, as its
/// background thread hears (a consumer hears only while it is polled).
#[derive(Default)]
pub struct DeliveryReport {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub out_of_reach: Arc<AtomicBool>,
}

impl DeliveryReport {
    /// A report that holds up `out_of_reach`, shared with the consumer beside it.
    pub fn holding(out_of_reach: Arc<AtomicBool>) -> Self {
        DeliveryReport {
            out_of_reach,
            ..DeliveryReport::default()
        }
    }
}

impl ClientContext for DeliveryReport {
    fn error(&self, error: KafkaError, reason: &str) {
        hear_error(&self.out_of_reach, &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(statistics) = serde_json::from_slice(statistics) {
            hear_statistics(&self.out_of_reach, &statistics);
        }
    }
}

/// Holds up `out_of_reach` when librdkafka says every broker is down, and logs the error:
/// librdkafka repeats "all brokers down" and each lost connection at every reconnect attempt
/// (every few hundred milliseconds per client), so while out of reach only the first says so
/// as a warning and the repeats are debug lines.
pub(super) fn hear_error(out_of_reach: &AtomicBool, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    let repeat = match code {
        Some(RDKafkaErrorCode::AllBrokersDown) => out_of_reach.swap(true, Ordering::SeqCst),
        Some(RDKafkaErrorCode::BrokerTransportFailure) => out_of_reach.load(Ordering::SeqCst),
        _ => false,
    };
    if repeat {
        tracing::debug!("librdkafka: {error}: {reason}");
    } else if code == Some(RDKafkaErrorCode::AllBrokersDown) {
        tracing::warn!("librdkafka: {error}: {reason}; every broker is out of reach, waiting for one (repeats logged at debug)");
    } else {
        tracing::warn!("librdkafka: {error}: {reason}");
    }
}

/// Sets `out_of_reach` from librdkafka's statistics: up while no broker of the cluster is
/// connected, down once one is. Its bootstrap and coordinator entries are not brokers of the
/// cluster (their node id is -1); before it knows of any broker, nothing changes.
pub(super) fn hear_statistics(out_of_reach: &AtomicBool, statistics: &serde_json::Value) {
    let brokers: Vec<&serde_json::Value> = statistics["brokers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, broker)| broker)
        .filter(|broker| broker["nodeid"].as_i64().is_some_and(|id| id >= 0))
        .collect();
    if !brokers.is_empty() {
        let up = brokers.iter().any(|broker| broker["state"] == "UP");
        if out_of_reach.swap(!up, Ordering::SeqCst) && up {
            tracing::info!("a Kafka broker answers again");
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// As librdkafka 2.12 reported a one-broker cluster: its bootstrap and coordinator
    /// entries (node id -1) beside the broker itself.
    fn statistics(broker_state: &str) -> serde_json::Value {
        serde_json::json!({ "brokers": {
            "127.0.0.1:9092/bootstrap": { "nodeid": -1, "state": "INIT" },
            "GroupCoordinator": { "nodeid": -1, "state": "UP" },
            "127.0.0.1:9092/1": { "nodeid": 1, "state": broker_state },
        }})
    }

    #[test]
    fn out_of_reach_while_no_broker_of_the_cluster_is_up() {
        let out_of_reach = AtomicBool::new(false);
        hear_error(
            &out_of_reach,
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "lost",
        );
        assert!(!out_of_reach.load(Ordering::SeqCst), "one connection lost");
        hear_error(
            &out_of_reach,
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "down",
        );
        assert!(out_of_reach.load(Ordering::SeqCst));
        hear_statistics(&out_of_reach, &statistics("CONNECT"));
        assert!(
            out_of_reach.load(Ordering::SeqCst),
            "a coordinator entry is no broker"
        );
        hear_statistics(&out_of_reach, &statistics("UP"));
        assert!(!out_of_reach.load(Ordering::SeqCst));
        hear_statistics(&out_of_reach, &serde_json::json!({ "brokers": {} }));
        assert!(
            !out_of_reach.load(Ordering::SeqCst),
            "no news changes nothing"
        );
        hear_statistics(&out_of_reach, &statistics("DOWN"));
        assert!(out_of_reach.load(Ordering::SeqCst));
    }
}
