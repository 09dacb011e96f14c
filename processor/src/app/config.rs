//! Configuration: one TOML file, then `TXFLOW_<SECTION>__<KEY>` environment overrides
//! (for example `TXFLOW_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
//! `TXFLOW_STORE__CONTACT_POINTS='["a:9042", "b:9042"]'`). Every key has a default that
//! works against the local stack; unknown keys are errors, not silently ignored. Each section
//! is defined, with its checks, beside what it configures.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[cfg(feature = "fault-injection")]
use crate::adapters::faulty::FaultsConfig;
use crate::adapters::kafka::{KafkaConfig, TopicsConfig};
use crate::adapters::registry::SchemasConfig;
use crate::adapters::scylla::StoreConfig;
use crate::config::ConfigError;
use crate::failures::{dead_letter_topic, retry_topic};
use crate::pipeline::{GroupConfig, GroupDefaults};
use crate::stages::archiver::{ArchiverConfig, ArchiverGroup};
use crate::stages::gateway::GatewayConfig;
use crate::stages::ledger::{LedgerConfig, LedgerGroup};
use crate::stages::notifier::{NotifierConfig, NotifierGroup};
use crate::stages::router::{RouterConfig, RouterGroup};

/// Environment variables with this prefix and a `__` override config keys.
pub const ENV_PREFIX: &str = "TXFLOW_";

/// Everything txflow can be configured with.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub admin: AdminConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub store: StoreConfig,
    pub ledger: LedgerConfig,
    pub router: RouterConfig,
    pub notifier: NotifierConfig,
    pub gateway: GatewayConfig,
    pub archiver: ArchiverConfig,
    pub schemas: SchemasConfig,
    pub dev: DevConfig,
    /// Faults to inject, for tests: only in builds with the `fault-injection` feature; any
    /// other build refuses a `[faults]` section as an unknown key.
    #[cfg(feature = "fault-injection")]
    pub faults: FaultsConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 lets the system choose
    /// (the chosen address is logged).
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "0.0.0.0:9480".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Where `txflow dev` keeps its log and store (`--data-dir` overrides it).
    pub data_dir: std::path::PathBuf,
    /// Records per batch at most, for every stage under `txflow dev` (in place of the
    /// stages' own `batch_max_records`): each batch costs one fsync of the database, which
    /// larger batches share when a backlog builds up.
    pub batch_max_records: usize,
    /// The address `txflow dev` binds its gateway and admin endpoint to, on their ports
    /// (`gateway.listen`, `admin.listen`): loopback, so that a developer's machine does not
    /// serve its dev key to the network; `0.0.0.0` serves every address.
    pub bind: std::net::IpAddr,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: "txflow-data".into(),
            batch_max_records: 5000,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

impl Config {
    /// Every topic txflow uses, in creation order: the stages' topics, the ledger's and the
    /// notifier's retry tiers, and the dead letters of every input.
    pub fn all_topics(&self) -> Vec<String> {
        let topics = &self.topics;
        let mut all = vec![
            topics.events.clone(),
            topics.ledger.clone(),
            topics.notifications.clone(),
            topics.results.clone(),
        ];
        all.extend((1..=self.ledger.retry_delays_ms.len()).map(|n| retry_topic(&topics.ledger, n)));
        all.extend(
            (1..=self.notifier.retry_delays_ms.len())
                .map(|n| retry_topic(&topics.notifications, n)),
        );
        all.extend(
            [&topics.events, &topics.ledger, &topics.notifications]
                .into_iter()
                .map(|input| dead_letter_topic(input)),
        );
        all
    }

    /// The file at `path` (defaults when `None`), then the `TXFLOW_*__*` overrides of `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: name.clone(),
                    source,
                })?;
                Config::parse(&text, &format!("file {name}"), env)
            }
            None => Config::parse("", "the defaults", env),
        }
    }

    /// The configuration `text` (TOML, from `origin`), then the `TXFLOW_*__*` overrides of
    /// `env`, checked as a stage checks it at start.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let origin = origin.to_owned();
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(var, _)| var.starts_with(ENV_PREFIX) && var.contains("__"))
            .collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_override(&mut table, var, value)?;
        }
        let parse_error = |message: String| ConfigError::Parse {
            origin: if overrides.is_empty() {
                origin.clone()
            } else {
                format!("{origin} and TXFLOW_* overrides")
            },
            message,
        };
        group_keys::<LedgerGroup>(&table).map_err(parse_error)?;
        group_keys::<RouterGroup>(&table).map_err(parse_error)?;
        group_keys::<NotifierGroup>(&table).map_err(parse_error)?;
        group_keys::<ArchiverGroup>(&table).map_err(parse_error)?;
        let config: Config = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        let known = toml::Table::try_from(&config)
            .map_err(|e| parse_error(format!("the configuration cannot be read back: {e}")))?;
        if let Some(unknown) = unknown_key(&table, &known, "") {
            return Err(parse_error(unknown));
        }
        let mut config = config;
        config.kafka.read_property_files()?;
        config.store.read_secret_files()?;
        config.schemas.read_secret_files()?;
        config.archiver.storage.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Every section's own checks.
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.store.validate()?;
        self.ledger.validate()?;
        self.router.validate()?;
        self.notifier.validate()?;
        self.gateway.validate()?;
        self.archiver.validate()?;
        self.schemas.validate()?;
        ConfigError::require_positive(&[(
            "dev.batch_max_records",
            self.dev.batch_max_records as u64,
        )])?;
        #[cfg(feature = "fault-injection")]
        self.faults.validate()?;
        Ok(())
    }
}

/// The consuming stages' group keys checked on their own, so that a wrong type names its
/// key: within a `flatten`ed struct, serde's error names only the section.
fn group_keys<D: GroupDefaults>(table: &toml::Table) -> Result<(), String> {
    let Some(toml::Value::Table(section)) = table.get(D::STAGE) else {
        return Ok(());
    };
    let keys: toml::Table = section
        .iter()
        .filter(|(key, _)| GroupConfig::<D>::KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let by_section = toml::Table::from_iter([(D::STAGE.to_owned(), toml::Value::Table(keys))]);
    toml::Value::Table(by_section)
        .try_into::<BTreeMap<String, GroupConfig<D>>>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The first key of `given` that the loaded configuration (`known`, serialized) does not
/// have, with the keys its section takes: serde's `deny_unknown_fields` does not work beside
/// `flatten`, which the consuming stages' sections use for their group settings.
fn unknown_key(given: &toml::Table, known: &toml::Table, at: &str) -> Option<String> {
    for (key, value) in given {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (value, known.get(key)) {
            (_, None) => {
                let mut takes: Vec<&str> = known.keys().map(String::as_str).collect();
                takes.sort_unstable();
                return Some(format!(
                    "unknown key `{path}`; {} takes: {}",
                    if at.is_empty() { "the file" } else { at },
                    takes.join(", ")
                ));
            }
            (toml::Value::Table(inner), Some(toml::Value::Table(known))) => {
                if let Some(unknown) = unknown_key(inner, known, &path) {
                    return Some(unknown);
                }
            }
            _ => {}
        }
    }
    None
}

/// Sets `section.key` from `TXFLOW_SECTION__KEY`; the value is read as a TOML value (number,
/// boolean, array, inline table) when it is one, and as a string otherwise.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "expected TXFLOW_<SECTION>__<KEY>".to_owned(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (key, sections) = path.split_last().expect("split yields at least one part");
    let mut node = table;
    for section in sections {
        node = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Env {
                var: var.to_owned(),
                message: format!("{section} is not a section"),
            })?;
    }
    node.insert(key.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.store.contact_points, vec!["127.0.0.1:9042"]);
        assert_eq!(config.topics.ledger, "txflow.ledger");
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("txflow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("txflow.toml");
        std::fs::write(
            &file,
            "[kafka]\nbootstrap_servers = 'file:9092'\n[ledger]\nbatch_max_records = 10\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "20"),
                ("TXFLOW_STORE__CONTACT_POINTS", r#"["a:9042", "b:9042"]"#),
                ("TXFLOW_KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SSL"),
                ("TXFLOW_KAFKA__PROPERTIES__LINGER.MS", "5"),
                (
                    "TXFLOW_KAFKA__PROPERTIES__ENABLE.SSL.CERTIFICATE.VERIFICATION",
                    "false",
                ),
                ("TXFLOW_LEDGER__INSTANCE_ID", "ledger-0"),
                ("TXFLOW_KAFKA_BOOTSTRAP", "ignored: not a config override"),
            ]),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "file:9092");
        assert_eq!(config.ledger.group.batch_max_records, 20);
        assert_eq!(config.store.contact_points, vec!["a:9042", "b:9042"]);
        assert_eq!(config.kafka.properties["security.protocol"], "SSL");
        assert_eq!(config.kafka.properties["linger.ms"], "5");
        assert_eq!(
            config.kafka.properties["enable.ssl.certificate.verification"],
            "false"
        );
        assert_eq!(
            config.ledger.group.membership().transactional_id(),
            "txflow-ledger-ledger-0"
        );
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_production_build_refuses_injected_faults() {
        let error = Config::load(None, env(&[("TXFLOW_FAULTS__STORE_FAILURE_RATE", "0.5")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `faults`"), "{error}");
    }

    #[test]
    fn every_consuming_stage_takes_its_group_and_backoff_from_its_section() {
        let config = Config::load(
            None,
            env(&[
                ("TXFLOW_ROUTER__BACKOFF_MAX_MS", "500"),
                ("TXFLOW_NOTIFIER__BACKOFF_INITIAL_MS", "7"),
                ("TXFLOW_NOTIFIER__GROUP_ID", "hooks"),
                ("TXFLOW_NOTIFIER__INSTANCE_ID", "n-1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.router.group.loop_config().backoff_max,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            config.notifier.group.loop_config().backoff_initial,
            std::time::Duration::from_millis(7)
        );
        let notifier = config.notifier.group.membership();
        assert_eq!(notifier.transactional_id(), "hooks-n-1");
        assert_eq!(config.ledger.group.membership().group_id, "txflow-ledger");
    }

    #[test]
    fn retry_tiers_and_their_topics() {
        let config =
            Config::load(None, env(&[("TXFLOW_LEDGER__RETRY_DELAYS_MS", "[5, 50]")])).unwrap();
        let topics = config.all_topics();
        assert!(topics.contains(&"txflow.ledger.retry.1".to_owned()));
        assert!(topics.contains(&"txflow.ledger.retry.2".to_owned()));
        assert!(!topics.contains(&"txflow.ledger.retry.3".to_owned()));
        assert!(topics.contains(&"txflow.ledger.dlq".to_owned()));
    }

    #[test]
    fn webhook_endpoints_from_the_environment_and_a_mounted_secret() {
        let dir = std::env::temp_dir().join(format!("txflow-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "new-secret-0123456789\n\nold-secret-0123456789\n").unwrap();
        let config = Config::load(
            None,
            env(&[
                (
                    "TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL",
                    "https://ops.example/hook",
                ),
                (
                    "TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET",
                    "ops-secret-0123456789",
                ),
                (
                    "TXFLOW_NOTIFIER__ENDPOINTS__AUDIT__URL",
                    "http://audit:8080/in",
                ),
                (
                    "TXFLOW_NOTIFIER__ENDPOINTS__AUDIT__SECRET_FILE",
                    file.to_str().unwrap(),
                ),
                ("TXFLOW_NOTIFIER__ENDPOINTS__AUDIT__MAX_PER_SECOND", "50"),
            ]),
        )
        .unwrap();
        let endpoints = &config.notifier.endpoints;
        assert_eq!(
            endpoints["ops"].secrets("ops").unwrap(),
            [b"ops-secret-0123456789".to_vec()]
        );
        assert_eq!(
            endpoints["audit"].secrets("audit").unwrap(),
            [
                b"new-secret-0123456789".to_vec(),
                b"old-secret-0123456789".to_vec()
            ]
        );
        assert_eq!(endpoints["audit"].max_per_second, 50);
        assert!(
            !format!("{config:?}").contains("ops-secret"),
            "a secret stays out of Debug output"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(config
            .all_topics()
            .contains(&"txflow.notifications.retry.3".to_owned()));
    }

    #[test]
    fn a_bad_endpoint_is_refused_at_start() {
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs)).unwrap_err().to_string();
        let url = (
            "TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL",
            "https://ops.example/hook",
        );
        let secret = (
            "TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET",
            "ops-secret-0123456789",
        );
        assert!(err(&[url])
            .contains("notifier.endpoints.ops: give exactly one of secret and secret_file"));
        assert!(
            err(&[url, ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET", "short")])
                .contains("at least 16 bytes")
        );
        assert!(err(&[
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL", "ops.example/hook"),
            secret
        ])
        .contains("notifier.endpoints.ops.url"));
        assert!(err(&[
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL", "ftp://ops.example/"),
            secret
        ])
        .contains("only http and https"));
        assert!(err(&[
            url,
            secret,
            (
                "TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET_FILE",
                "/nonexistent/secret"
            )
        ])
        .contains("exactly one"));
        assert!(err(&[
            url,
            (
                "TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET_FILE",
                "/nonexistent/secret"
            )
        ])
        .contains("/nonexistent/secret (notifier.endpoints.ops.secret_file)"));
        assert!(err(&[(
            "TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET",
            "ops-secret-0123456789"
        )])
        .contains("missing field `url`"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs)).unwrap_err().to_string();
        assert!(
            err(&[("TXFLOW_LEDGER__BATCH_SIZE", "5")]).contains("unknown key `ledger.batch_size`")
        );
        assert!(err(&[("TXFLOW_NOTIFIER__BACKOF_MS", "5")]).contains("`notifier.backof_ms`"));
        assert!(err(&[("TXFLOW_ROUTER__BATCH_MAX_WAIT_MS", "soon")])
            .contains("`router.batch_max_wait_ms`"));
        assert!(err(&[("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "many")]).contains("batch_max_records"));
        assert!(err(&[("TXFLOW_STORE__KEYSPACE", "bad-name")]).contains("store.keyspace"));
        assert!(err(&[("TXFLOW_STORE__CONSISTENCY", "most")]).contains("local_quorum"));
        assert!(err(&[("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "0")]).contains("at least 1"));
        assert!(
            err(&[("TXFLOW_NOTIFIER__MAX_IN_FLIGHT", "0")]).contains("notifier.max_in_flight is 0")
        );
        assert!(err(&[("TXFLOW_GATEWAY__BURST", "0")]).contains("gateway.burst is 0"));
        assert!(err(&[("TXFLOW_SCHEMAS__REGISTRY_URL", "registry:8081")])
            .contains("schemas.registry_url \"registry:8081\""));
        assert!(err(&[("TXFLOW_SCHEMAS__REGISTRY_URL", "ftp://registry")])
            .contains("only http and https"));
        assert!(err(&[
            ("TXFLOW_SCHEMAS__REGISTRY_URL", "http://registry:8081"),
            ("TXFLOW_SCHEMAS__REGISTRY_USERNAME", "txflow"),
        ])
        .contains("go together"));
        let registry = Config::load(
            None,
            env(&[
                ("TXFLOW_SCHEMAS__REGISTRY_URL", "http://registry:8081"),
                ("TXFLOW_SCHEMAS__REGISTRY_USERNAME", "txflow"),
                ("TXFLOW_SCHEMAS__REGISTRY_PASSWORD", "s3cret"),
            ]),
        )
        .unwrap();
        assert!(!format!("{registry:?}").contains("s3cret"));
        let missing = Config::load(Some(Path::new("/nonexistent/txflow.toml")), env(&[]));
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/txflow.toml"));
    }
}
