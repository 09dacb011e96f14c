//! The `[store]` section: the ScyllaDB (or Cassandra) nodes, keyspace and consistency.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Secret};

/// CQL consistency levels, as written in the config file.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    One,
    LocalOne,
    Quorum,
    LocalQuorum,
    EachQuorum,
    All,
}

impl From<ConsistencyLevel> for scylla::statement::Consistency {
    fn from(level: ConsistencyLevel) -> Self {
        use scylla::statement::Consistency as C;
        match level {
            ConsistencyLevel::One => C::One,
            ConsistencyLevel::LocalOne => C::LocalOne,
            ConsistencyLevel::Quorum => C::Quorum,
            ConsistencyLevel::LocalQuorum => C::LocalQuorum,
            ConsistencyLevel::EachQuorum => C::EachQuorum,
            ConsistencyLevel::All => C::All,
        }
    }
}

/// Serial consistency of lightweight transactions.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SerialLevel {
    Serial,
    LocalSerial,
}

impl From<SerialLevel> for scylla::statement::SerialConsistency {
    fn from(level: SerialLevel) -> Self {
        match level {
            SerialLevel::Serial => scylla::statement::SerialConsistency::Serial,
            SerialLevel::LocalSerial => scylla::statement::SerialConsistency::LocalSerial,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// The keyspace's replication map, as CQL.
    pub replication: String,
    /// Further keyspace options, appended to `CREATE KEYSPACE`. ScyllaDB before 2025.4
    /// refuses lightweight transactions on tablets: there, `AND tablets = {'enabled': false}`.
    pub keyspace_options: String,
    pub consistency: ConsistencyLevel,
    pub serial_consistency: SerialLevel,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Result rows per conditional write; a longer settlement is written as a chain. Keeps
    /// each batch under the server's batch size limit.
    pub max_rows_per_write: usize,
    /// Credentials for a cluster with `PasswordAuthenticator`; both or neither.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The password read from a file at start (a mounted secret), in place of `password`.
    pub password_file: Option<PathBuf>,
    /// TLS to the nodes, verified against this CA (PEM); each node's certificate must name
    /// its address.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for nodes that require one; both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            contact_points: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "txflow".to_owned(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            keyspace_options: String::new(),
            consistency: ConsistencyLevel::LocalQuorum,
            serial_consistency: SerialLevel::LocalSerial,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            max_rows_per_write: 50,
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.contact_points.is_empty() {
            return invalid("store.contact_points is empty");
        }
        if !is_cql_identifier(&self.keyspace) {
            return invalid("store.keyspace must be a CQL identifier: a letter, then letters, digits or _, at most 48");
        }
        if !(1..=1000).contains(&self.max_rows_per_write) {
            return invalid("store.max_rows_per_write must be between 1 and 1000");
        }
        if self.username.is_some() != (self.password.is_some() || self.password_file.is_some()) {
            return invalid(
                "store.username and store.password (or store.password_file) go together",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("store.tls_cert_file and store.tls_key_file go together");
        }
        if self.tls_cert_file.is_some() && self.tls_ca_file.is_none() {
            return invalid("store.tls_cert_file needs store.tls_ca_file: a client certificate is sent over TLS");
        }
        Ok(())
    }

    /// Reads `password_file` into `password`.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        Secret::resolve(
            &mut self.password,
            &self.password_file.take(),
            "store.password",
        )
    }
}

fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_certificates_go_in_pairs() {
        let path = std::env::temp_dir().join(format!("txflow-cql-{}", std::process::id()));
        std::fs::write(&path, "cql-secret\n").unwrap();
        let mut store = StoreConfig {
            username: Some("txflow".into()),
            password_file: Some(path.clone()),
            ..StoreConfig::default()
        };
        store.read_secret_files().unwrap();
        store.validate().unwrap();
        assert_eq!(store.password.as_ref().unwrap().0, "cql-secret");
        assert!(!format!("{store:?}").contains("cql-secret"));
        std::fs::remove_file(&path).unwrap();

        for (broken, says) in [
            (
                StoreConfig {
                    username: Some("txflow".into()),
                    ..StoreConfig::default()
                },
                "go together",
            ),
            (
                StoreConfig {
                    tls_cert_file: Some("c.pem".into()),
                    ..StoreConfig::default()
                },
                "go together",
            ),
            (
                StoreConfig {
                    tls_cert_file: Some("c.pem".into()),
                    tls_key_file: Some("k.pem".into()),
                    ..StoreConfig::default()
                },
                "needs store.tls_ca_file",
            ),
        ] {
            let error = broken.validate().unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}
