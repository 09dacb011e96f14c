//! What every config section is written with: its error, the secret that stays out of logs,
//! and the property maps handed to Kafka. Each section lives with what it configures (the
//! stages' under `stages/`, the services' under `adapters/`); `app::Config` gathers them
//! and loads the file and the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The largest file a setting names that txflow reads (a secret, a key list, a CA): a path
/// to a device or a huge file is refused rather than read for ever.
pub const MAX_SETTING_FILE_BYTES: u64 = 1024 * 1024;

/// The text of the file at `path`, which setting `name` gave, within
/// [`MAX_SETTING_FILE_BYTES`].
pub fn read_setting_file(path: &Path, name: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: format!("{} ({name})", path.display()),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_SETTING_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_SETTING_FILE_BYTES {
        return Err(ConfigError::Invalid(format!(
            "{name}: {} is larger than {MAX_SETTING_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(text)
}

impl Secret {
    /// The secret in the file at `path` (a mounted Kubernetes secret, say), without the line
    /// break a file usually ends with; `name` is the setting that named the file.
    pub fn from_file(path: &Path, name: &str) -> Result<Secret, ConfigError> {
        let text = read_setting_file(path, name)?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        if secret.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{name}: {} is empty",
                path.display()
            )));
        }
        Ok(Secret(secret.to_owned()))
    }

    /// The secret given inline (`name`) or in a file (`name` + `_file`), not both; the file
    /// is read now, and the setting holds its content from then on.
    pub fn resolve(
        inline: &mut Option<Secret>,
        file: &Option<PathBuf>,
        name: &str,
    ) -> Result<(), ConfigError> {
        match (&inline, file) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
                "{name} and {name}_file are both set: give the secret one way"
            ))),
            (None, Some(path)) => {
                *inline = Some(Secret::from_file(path, &format!("{name}_file"))?);
                Ok(())
            }
            _ => Ok(()),
        }
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
