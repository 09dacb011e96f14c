//! The `[kafka]` and `[topics]` sections.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{scalar_map, ConfigError, Secret};

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// How long a transaction may stay open before the broker aborts it; also how long a
    /// partition can stall after a process dies with a transaction open and does not come
    /// back with the same instance id.
    pub transaction_timeout_ms: u64,
    /// Further librdkafka properties for every client (security, tuning): for a secured
    /// cluster `security.protocol`, `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`,
    /// `ssl.certificate.location`, `ssl.key.location`.
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are read from files at start (mounted secrets):
    /// `sasl.password`, `ssl.key.password`. Never logged.
    pub property_files: BTreeMap<String, PathBuf>,
}

/// Properties whose values are secrets, kept out of logs whichever way they were given.
fn is_secret_property(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    "…"
                } else {
                    value
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("properties", &properties)
            .field("property_files", &self.property_files)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            transaction_timeout_ms: 10_000,
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Reads `property_files` into `properties`; a property given both ways is refused.
    pub fn read_property_files(&mut self) -> Result<(), ConfigError> {
        for (key, path) in std::mem::take(&mut self.property_files) {
            if self.properties.contains_key(&key) {
                return Err(ConfigError::Invalid(format!(
                    "kafka.properties.{key:?} and kafka.property_files.{key:?} are both set: give it one way"
                )));
            }
            let Secret(value) = Secret::from_file(&path, &format!("kafka.property_files.{key:?}"))?;
            self.properties.insert(key, value);
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_come_from_files_and_stay_out_of_logs() {
        let path = std::env::temp_dir().join(format!("txflow-kafka-{}", std::process::id()));
        std::fs::write(&path, "scram-secret\n").unwrap();
        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("sasl.username".into(), "txflow".into());
        kafka
            .properties
            .insert("ssl.key.password".into(), "key-secret".into());
        kafka
            .property_files
            .insert("sasl.password".into(), path.clone());
        kafka.read_property_files().unwrap();
        assert_eq!(kafka.properties["sasl.password"], "scram-secret");
        assert!(kafka.property_files.is_empty());
        let shown = format!("{kafka:?}");
        assert!(shown.contains("txflow"), "{shown}");
        assert!(
            !shown.contains("scram-secret") && !shown.contains("key-secret"),
            "{shown}"
        );

        let mut twice = KafkaConfig::default();
        twice.properties.insert("sasl.password".into(), "x".into());
        twice
            .property_files
            .insert("sasl.password".into(), path.clone());
        assert!(twice
            .read_property_files()
            .unwrap_err()
            .to_string()
            .contains("both set"));
        std::fs::remove_file(&path).unwrap();
        let mut missing = KafkaConfig::default();
        missing.property_files.insert("sasl.password".into(), path);
        assert!(missing
            .read_property_files()
            .unwrap_err()
            .to_string()
            .contains("kafka.property_files"));
    }
}
