//! Apache Kafka, split by job: the `[kafka]` and `[topics]` sections ([`config`]), the
//! clients' properties and the counted producer ([`client`]), the gateway's way in ([`publisher`]), the stages' log ([`log`]), the group-less reader of
//! the operators' tools ([`reader`]), topic admin ([`admin`]).
//!
//! The log is a `read_committed` consumer in a group with one transactional
//! producer (exactly-once v2: consumed offsets are sent with the consumer's group metadata,
//! so a zombie of a revoked partition is fenced by the group, not by its transactional id).
//!
//! librdkafka's calls block; they never run on an async worker as plain calls: a batch's
//! transaction runs on a blocking thread (`spawn_blocking`), where it commits while the next
//! batch is read and processed, and the other calls on the runtime's blocking section
//! (`block_in_place`).

use std::time::Duration;

mod access;
mod admin;
mod client;
mod config;
mod instance;
mod log;
mod publisher;
mod reader;

pub use access::{check_access, KafkaRefused};
pub use admin::{apply_topics, delete_topics, TopicReport};
pub use client::{
    client_config, idempotent_producer, send_when_room, DeliveryReport, ReportingProducer,
};
pub use config::{KafkaConfig, TopicsConfig};
pub use log::{Delivery, KafkaLog};
pub use publisher::KafkaPublisher;
pub use reader::{read_to_end, KafkaReader};

/// How long a blocking client call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client waits at start for the cluster to answer or refuse it.
pub const ACCESS_PATIENCE: Duration = Duration::from_secs(10);
