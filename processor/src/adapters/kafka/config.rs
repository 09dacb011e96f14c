//! The `[kafka]` and `[topics]` sections.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{scalar_map, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// How long a transaction may stay open before the broker aborts it; also how long a
    /// partition can stall after a process dies with a transaction open and does not come
    /// back with the same instance id.
    pub transaction_timeout_ms: u64,
    /// Further librdkafka properties for every client (security, tuning).
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            transaction_timeout_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.bootstrap_servers is empty".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The stages' topics, and how `txflow topics apply` creates every topic.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub events: String,
    pub ledger: String,
    pub notifications: String,
    pub results: String,
    /// Partitions of each topic `txflow topics apply` creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs every topic is created with (for example `min.insync.replicas`).
    #[serde(deserialize_with = "scalar_map")]
    pub config: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            events: "txflow.events".to_owned(),
            ledger: "txflow.ledger".to_owned(),
            notifications: "txflow.notifications".to_owned(),
            results: "txflow.results".to_owned(),
            partitions: 6,
            replication_factor: 1,
            config: BTreeMap::new(),
        }
    }
}

impl TopicsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::require_positive(&[
            ("topics.partitions", self.partitions.max(0) as u64),
            (
                "topics.replication_factor",
                self.replication_factor.max(0) as u64,
            ),
        ])
    }
}
