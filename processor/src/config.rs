//! What every config section is written with: its error, the secret that stays out of logs,
//! and the property maps handed to Kafka. Each section lives with what it configures (the
//! stages' under `stages/`, the services' under `adapters/`); `app::Config` gathers them
//! and loads the file and the environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration from {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The settings named, each at least 1, when one of them is 0.
    pub fn require_positive(settings: &[(&str, u64)]) -> Result<(), ConfigError> {
        match settings.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(ConfigError::Invalid(format!(
                "{name} is 0: it must be at least 1"
            ))),
            None => Ok(()),
        }
    }
}

/// A secret: never shown by `Debug` or serialized, so that it stays out of logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("…")
    }
}

/// A map of client or topic properties: values are strings to Kafka, but a number or a
/// boolean (as `TXFLOW_KAFKA__PROPERTIES__LINGER.MS=5` reads) is taken as its text.
pub fn scalar_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Boolean(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Scalar::Text(text) => text,
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(x) => x.to_string(),
                Scalar::Boolean(b) => b.to_string(),
            };
            (key, text)
        })
        .collect())
}
