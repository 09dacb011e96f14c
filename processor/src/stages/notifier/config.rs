//! The `[notifier]` section and its webhook endpoints, with their signing secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NotifierSettings;
use crate::config::{read_setting_file, ConfigError, Secret};
use crate::failures::MAX_RETRY_TIERS;
use crate::pipeline::breaker::BreakerConfig;
use crate::pipeline::{GroupConfig, GroupDefaults};

/// The notifier's section: its group settings and its own. Deliveries of a batch are made
/// before it commits: keep a batch's worth of deliveries at the slowest endpoint's rate well
/// inside `kafka.transaction_timeout_ms`. (The loader refuses unknown keys: serde's
/// `deny_unknown_fields` does not work beside `flatten`.)
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct NotifierConfig {
    #[serde(flatten)]
    pub group: GroupConfig<NotifierGroup>,
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

/// The notifier's group defaults: `txflow-notifier`, batches of 100.
#[derive(Clone, Debug)]
pub struct NotifierGroup;

impl GroupDefaults for NotifierGroup {
    const STAGE: &'static str = "notifier";
    const BATCH_MAX_RECORDS: usize = 100;
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            group: GroupConfig::default(),
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
    /// Every setting, and every endpoint's URL and secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.group.validate()?;
        ConfigError::require_positive(&[
            ("notifier.max_in_flight", self.max_in_flight as u64),
            ("notifier.timeout_ms", self.timeout_ms),
            (
                "notifier.breaker_failure_threshold",
                self.breaker_failure_threshold.into(),
            ),
        ])?;
        if self.retry_delays_ms.len() > MAX_RETRY_TIERS {
            return Err(ConfigError::Invalid(format!(
                "notifier.retry_delays_ms may have at most {MAX_RETRY_TIERS} tiers"
            )));
        }
        for (name, endpoint) in &self.endpoints {
            endpoint.validate(name)?;
        }
        Ok(())
    }

    pub fn settings(&self) -> NotifierSettings {
        NotifierSettings {
            timeout: Duration::from_millis(self.timeout_ms),
            max_in_flight: self.max_in_flight,
        }
    }

    /// The breaker of each endpoint.
    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker_failure_threshold,
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }
}

/// A webhook endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    pub secret_file: Option<PathBuf>,
    /// Deliveries per second at most (0: no limit); past it deliveries wait their turn.
    #[serde(default)]
    pub max_per_second: u32,
}

/// The shortest signing secret accepted: HMAC-SHA256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 16;

impl EndpointConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let at = format!("notifier.endpoints.{name}.url {:?}", self.url);
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| ConfigError::Invalid(format!("{at}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid(format!("{at}: only http and https")));
        }
        self.secrets(name)?;
        Ok(())
    }

    /// The endpoint's signing secrets: `secret`, or the non-empty lines of `secret_file`.
    pub fn secrets(&self, name: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
        let at = format!("notifier.endpoints.{name}");
        let secrets: Vec<Vec<u8>> = match (&self.secret, &self.secret_file) {
            (Some(secret), None) => vec![secret.0.clone().into_bytes()],
            (None, Some(path)) => read_setting_file(path, &format!("{at}.secret_file"))?
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
