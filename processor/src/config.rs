//! Configuration: one TOML file, then `TXFLOW_<SECTION>__<KEY>` environment overrides
//! (for example `TXFLOW_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
//! `TXFLOW_STORE__CONTACT_POINTS='["a:9042", "b:9042"]'`). Every key has a default that
//! works against the local stack; unknown keys are errors, not silently ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::failures::{dead_letter_topic, retry_topic};

/// Environment variables with this prefix and a `__` override config keys.
pub const ENV_PREFIX: &str = "TXFLOW_";

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

/// Everything txflow can be configured with.
#[derive(Clone, Debug, Default, Deserialize)]
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
    pub schemas: SchemasConfig,
    pub dev: DevConfig,
    /// Faults to inject, for tests: only in builds with the `fault-injection` feature; any
    /// other build refuses a `[faults]` section as an unknown key.
    #[cfg(feature = "fault-injection")]
    pub faults: FaultsConfig,
}

/// Store faults injected by a test build (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// The share of store calls that fail as if the store were unavailable, 0 to 1.
    pub store_failure_rate: f64,
    /// Store calls on accounts starting with one of these fail, every time.
    pub store_failing_accounts: Vec<String>,
    /// Added to every store call.
    pub store_delay_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
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
}

/// CQL consistency levels, as written in the config file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
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

#[derive(Clone, Debug, Deserialize)]
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
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    pub group_id: String,
    /// This process's stable name: its transactional id is `<group_id>-<instance_id>`. A
    /// process restarted with the same instance id aborts its predecessor's open
    /// transaction at once; a new one waits `kafka.transaction_timeout_ms`. Defaults to the
    /// host name (the pod name on Kubernetes).
    pub instance_id: Option<String>,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    /// How long the group waits for a silent member before giving its partitions to others:
    /// the stall after a process dies without leaving the group.
    pub session_timeout_ms: u64,
    /// Accounts settled at once within a batch.
    pub store_concurrency: usize,
    /// Accounts whose state the ledger remembers between batches (and counterparty
    /// currencies); a remembered account is written without being read first.
    pub account_cache: usize,
    /// Settling attempts for one account when other writers keep moving it on.
    pub max_settle_attempts: u32,
    /// First and largest pause after a transient failure, before the batch is read again.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// The retry tiers `<input>.retry.<n>`: the longest pause of each, in order. A record
    /// waits a pause drawn uniformly up to its tier's (full jitter); after the last tier it
    /// goes to the dead letters. Empty: a transient failure is dead-lettered at once.
    pub retry_delays_ms: Vec<u64>,
    /// Consecutive transient store failures that open the store's circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long the open breaker pauses the partitions before a probe.
    pub breaker_open_ms: u64,
    /// Conditional store writes per second at most (0: no limit). Past it consumption slows
    /// down; nothing is dropped.
    pub max_store_writes_per_second: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            group_id: "txflow-ledger".to_owned(),
            instance_id: None,
            batch_max_records: 500,
            batch_max_wait_ms: 50,
            session_timeout_ms: 10_000,
            store_concurrency: 64,
            account_cache: 100_000,
            max_settle_attempts: 20,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            breaker_failure_threshold: 5,
            breaker_open_ms: 2_000,
            max_store_writes_per_second: 0,
        }
    }
}

impl LedgerConfig {
    pub fn instance_id(&self) -> String {
        instance_id_or_host(&self.instance_id, "ledger")
    }
}

/// The configured instance id, else the host name (the pod name on Kubernetes).
fn instance_id_or_host(configured: &Option<String>, fallback: &str) -> String {
    configured.clone().unwrap_or_else(|| {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| fallback.to_owned())
    })
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    pub group_id: String,
    /// This process's stable name, as for the ledger: its transactional id is
    /// `<group_id>-<instance_id>`. Defaults to the host name.
    pub instance_id: Option<String>,
    /// The rules file (YAML, docs/ROUTING.md); none: every event goes to the default target.
    pub rules_file: Option<std::path::PathBuf>,
    /// Where an event that matches no rule goes (default: the ledger topic, so that a fresh
    /// install processes money).
    pub default_target: Option<String>,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub session_timeout_ms: u64,
    /// How often the rules file is checked for changes (SIGHUP reloads at once).
    pub reload_check_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            group_id: "txflow-router".to_owned(),
            instance_id: None,
            rules_file: None,
            default_target: None,
            batch_max_records: 500,
            batch_max_wait_ms: 50,
            session_timeout_ms: 10_000,
            reload_check_ms: 2_000,
        }
    }
}

impl RouterConfig {
    pub fn instance_id(&self) -> String {
        instance_id_or_host(&self.instance_id, "router")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    pub group_id: String,
    /// This process's stable name, as for the ledger: its transactional id is
    /// `<group_id>-<instance_id>`. Defaults to the host name.
    pub instance_id: Option<String>,
    /// Deliveries of a batch are made before it commits: keep a batch's worth of deliveries
    /// at the slowest endpoint's rate well inside `kafka.transaction_timeout_ms`.
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub session_timeout_ms: u64,
    /// The retry tiers `<notifications>.retry.<n>`, as for the ledger.
    pub retry_delays_ms: Vec<u64>,
    /// How long an endpoint has to answer a delivery, connection included.
    pub timeout_ms: u64,
    /// Deliveries in flight at once to one endpoint.
    pub max_in_flight: usize,
    /// Failed deliveries in a row that open an endpoint's circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker refuses deliveries (they go to the retry tiers unsent)
    /// before it lets one through as a probe.
    pub breaker_open_ms: u64,
    /// The webhook endpoints, by the name rule targets give in `webhook`.
    pub endpoints: BTreeMap<String, EndpointConfig>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            group_id: "txflow-notifier".to_owned(),
            instance_id: None,
            batch_max_records: 100,
            batch_max_wait_ms: 50,
            session_timeout_ms: 10_000,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            timeout_ms: 5_000,
            max_in_flight: 8,
            breaker_failure_threshold: 5,
            breaker_open_ms: 5_000,
            endpoints: BTreeMap::new(),
        }
    }
}

impl NotifierConfig {
    pub fn instance_id(&self) -> String {
        instance_id_or_host(&self.instance_id, "notifier")
    }
}

/// A webhook endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The signing secret. Prefer `secret_file` (a mounted Kubernetes secret) or the
    /// environment (`TXFLOW_NOTIFIER__ENDPOINTS__<NAME>__SECRET`) to writing it here.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// A file holding the signing secret; while a secret is rotated, two lines: each
    /// delivery is then signed with both.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Deliveries per second at most (0: no limit); past it deliveries wait their turn.
    #[serde(default)]
    pub max_per_second: u32,
}

/// The shortest signing secret accepted: HMAC-SHA256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 16;

impl EndpointConfig {
    /// The endpoint's signing secrets: `secret`, or the non-empty lines of `secret_file`.
    pub fn secrets(&self, name: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
        let at = format!("notifier.endpoints.{name}");
        let secrets: Vec<Vec<u8>> = match (&self.secret, &self.secret_file) {
            (Some(secret), None) => vec![secret.0.clone().into_bytes()],
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: format!("{} ({at}.secret_file)", path.display()),
                    source,
                })?
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| line.as_bytes().to_vec())
                .collect(),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{at}: give exactly one of secret and secret_file"
                )))
            }
        };
        if secrets.is_empty() || secrets.iter().any(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(ConfigError::Invalid(format!(
                "{at}: every signing secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        Ok(secrets)
    }
}

/// Where schema ids come from: the built-in `schemas/schema-ids.json`, or a
/// Confluent-compatible schema registry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// The registry's Confluent-compatible root (where `/subjects` is), e.g.
    /// `http://registry:8081` or Apicurio's `http://registry:8080/apis/ccompat/v7`; empty:
    /// no registry, the built-in ids.
    pub registry_url: String,
    /// HTTP basic credentials for the registry, both or neither.
    pub registry_username: Option<String>,
    pub registry_password: Option<Secret>,
    /// Register txflow's schemas at start (a schema already there keeps its id); when false,
    /// they must already be registered and txflow only looks their ids up.
    pub auto_register: bool,
    /// How long one registry request may take.
    pub registry_timeout_ms: u64,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            registry_url: String::new(),
            registry_username: None,
            registry_password: None,
            auto_register: true,
            registry_timeout_ms: 5000,
        }
    }
}

impl SchemasConfig {
    /// The registry's URL and credentials, or `None` without a registry.
    #[allow(clippy::type_complexity)]
    pub fn registry(
        &self,
    ) -> Result<Option<(reqwest::Url, Option<(String, String)>)>, ConfigError> {
        if self.registry_url.trim().is_empty() {
            return Ok(None);
        }
        let invalid = |m: String| {
            ConfigError::Invalid(format!("schemas.registry_url {:?}: {m}", self.registry_url))
        };
        let url =
            reqwest::Url::parse(self.registry_url.trim()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("only http and https".to_owned()));
        }
        let credentials = match (&self.registry_username, &self.registry_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.0.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "schemas.registry_username and schemas.registry_password go together"
                        .to_owned(),
                ))
            }
        };
        Ok(Some((url, credentials)))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Where `txflow dev` keeps its log and store (`--data-dir` overrides it).
    pub data_dir: std::path::PathBuf,
    /// Records per batch at most, for every stage under `txflow dev` (in place of the
    /// stages' own `batch_max_records`): each batch costs one fsync of the database, which
    /// larger batches share when a backlog builds up.
    pub batch_max_records: usize,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: "txflow-data".into(),
            batch_max_records: 5000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the HTTP API listens.
    pub listen: String,
    /// API keys by name: each the SHA-256 of the key, in hex (`txflow api-key new NAME`
    /// makes a key and its line). Never the key itself.
    pub api_keys: BTreeMap<String, String>,
    /// A file of more API keys, a `NAME SHA256-HEX` line each (a mounted Kubernetes secret).
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Requests per second per API key, on average; past it, 429 with `Retry-After`.
    pub requests_per_second: u32,
    /// Requests an API key may make at once above its average.
    pub burst: u32,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most events in one `POST /v1/events/batch`.
    pub max_batch_events: usize,
    /// How long a request may take, the broker's acknowledgement included; past it, 503.
    pub request_timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:8080".to_owned(),
            api_keys: BTreeMap::new(),
            api_keys_file: None,
            requests_per_second: 100,
            burst: 200,
            max_body_bytes: 1024 * 1024,
            max_batch_events: 500,
            request_timeout_ms: 10_000,
        }
    }
}

impl GatewayConfig {
    /// The SHA-256 hashes of the API keys, by name: `api_keys`, then `api_keys_file`.
    pub fn key_hashes(&self) -> Result<BTreeMap<String, [u8; 32]>, ConfigError> {
        let mut entries: Vec<(String, String, String)> = self
            .api_keys
            .iter()
            .map(|(name, hash)| {
                (
                    name.clone(),
                    hash.clone(),
                    format!("gateway.api_keys.{name}"),
                )
            })
            .collect();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: format!("{} (gateway.api_keys_file)", path.display()),
                source,
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = format!("{} line {}", path.display(), number + 1);
                match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [name, hash] => entries.push((name.to_owned(), hash.to_owned(), at)),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "{at}: expected `NAME SHA256-HEX`"
                        )))
                    }
                }
            }
        }
        let mut hashes = BTreeMap::new();
        for (name, hash, at) in entries {
            let bytes = decode_sha256_hex(&hash).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{at}: not the SHA-256 of a key in hex (64 hex digits); `txflow api-key new {name}` makes one"
                ))
            })?;
            if hashes.insert(name.clone(), bytes).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{at}: API key {name:?} is given twice"
                )));
            }
        }
        Ok(hashes)
    }
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// A secret: never shown by `Debug`, so that it stays out of logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Config {
    /// The file at `path` (defaults when `None`), then the `TXFLOW_*__*` overrides of `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: name.clone(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: format!("file {name}"),
                    message: e.to_string(),
                })?;
                (table, format!("file {name}"))
            }
            None => (toml::Table::new(), "the defaults".to_owned()),
        };
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(var, _)| var.starts_with(ENV_PREFIX) && var.contains("__"))
            .collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_override(&mut table, var, value)?;
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: if overrides.is_empty() {
                        origin
                    } else {
                        format!("{origin} and TXFLOW_* overrides")
                    },
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers is empty");
        }
        if self.store.contact_points.is_empty() {
            return invalid("store.contact_points is empty");
        }
        if !is_cql_identifier(&self.store.keyspace) {
            return invalid("store.keyspace must be a CQL identifier: a letter, then letters, digits or _, at most 48");
        }
        if !(1..=1000).contains(&self.store.max_rows_per_write) {
            return invalid("store.max_rows_per_write must be between 1 and 1000");
        }
        if self.ledger.batch_max_records == 0
            || self.ledger.store_concurrency == 0
            || self.ledger.account_cache == 0
        {
            return invalid(
                "ledger.batch_max_records, ledger.store_concurrency and ledger.account_cache must be at least 1",
            );
        }
        if self.ledger.max_settle_attempts == 0 {
            return invalid("ledger.max_settle_attempts must be at least 1");
        }
        if self.dev.batch_max_records == 0 {
            return invalid("dev.batch_max_records must be at least 1");
        }
        if self.router.batch_max_records == 0 || self.router.reload_check_ms == 0 {
            return invalid(
                "router.batch_max_records and router.reload_check_ms must be at least 1",
            );
        }
        if self.ledger.retry_delays_ms.len() > 10 || self.notifier.retry_delays_ms.len() > 10 {
            return invalid(
                "ledger.retry_delays_ms and notifier.retry_delays_ms may have at most 10 tiers",
            );
        }
        let notifier = &self.notifier;
        if notifier.batch_max_records == 0
            || notifier.max_in_flight == 0
            || notifier.timeout_ms == 0
            || notifier.breaker_failure_threshold == 0
        {
            return invalid("notifier.batch_max_records, notifier.max_in_flight, notifier.timeout_ms and notifier.breaker_failure_threshold must be at least 1");
        }
        let gateway = &self.gateway;
        if gateway.requests_per_second == 0
            || gateway.burst == 0
            || gateway.max_body_bytes == 0
            || gateway.max_batch_events == 0
            || gateway.request_timeout_ms == 0
        {
            return invalid("gateway.requests_per_second, gateway.burst, gateway.max_body_bytes, gateway.max_batch_events and gateway.request_timeout_ms must be at least 1");
        }
        gateway.key_hashes()?;
        self.schemas.registry()?;
        if self.schemas.registry_timeout_ms == 0 {
            return invalid("schemas.registry_timeout_ms must be at least 1");
        }
        for (name, endpoint) in &notifier.endpoints {
            let url = reqwest::Url::parse(&endpoint.url).map_err(|e| {
                ConfigError::Invalid(format!(
                    "notifier.endpoints.{name}.url {:?}: {e}",
                    endpoint.url
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid(format!(
                    "notifier.endpoints.{name}.url {:?}: only http and https",
                    endpoint.url
                )));
            }
            endpoint.secrets(name)?;
        }
        if self.ledger.breaker_failure_threshold == 0 {
            return invalid("ledger.breaker_failure_threshold must be at least 1");
        }
        #[cfg(feature = "fault-injection")]
        if !(0.0..=1.0).contains(&self.faults.store_failure_rate) {
            return invalid("faults.store_failure_rate must be between 0 and 1");
        }
        if self.topics.partitions < 1 || self.topics.replication_factor < 1 {
            return invalid("topics.partitions and topics.replication_factor must be at least 1");
        }
        Ok(())
    }
}

/// A map of client or topic properties: values are strings to Kafka, but a number or a
/// boolean (as `TXFLOW_KAFKA__PROPERTIES__LINGER.MS=5` reads) is taken as its text.
fn scalar_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
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

fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
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
        assert_eq!(config.ledger.batch_max_records, 20);
        assert_eq!(config.store.contact_points, vec!["a:9042", "b:9042"]);
        assert_eq!(config.kafka.properties["security.protocol"], "SSL");
        assert_eq!(config.kafka.properties["linger.ms"], "5");
        assert_eq!(
            config.kafka.properties["enable.ssl.certificate.verification"],
            "false"
        );
        assert_eq!(config.ledger.instance_id(), "ledger-0");
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
        assert!(err(&[("TXFLOW_LEDGER__BATCH_SIZE", "5")]).contains("batch_size"));
        assert!(err(&[("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "many")]).contains("batch_max_records"));
        assert!(err(&[("TXFLOW_STORE__KEYSPACE", "bad-name")]).contains("store.keyspace"));
        assert!(err(&[("TXFLOW_STORE__CONSISTENCY", "most")]).contains("local_quorum"));
        assert!(err(&[("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "0")]).contains("at least 1"));
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
