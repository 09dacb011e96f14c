//! The `[ledger]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LedgerSettings;
use crate::config::ConfigError;
use crate::failures::MAX_RETRY_TIERS;
use crate::pipeline::breaker::BreakerConfig;
use crate::pipeline::{GroupConfig, GroupDefaults};

/// The ledger's section: its group settings and its own. (The loader refuses unknown keys:
/// serde's `deny_unknown_fields` does not work beside `flatten`.)
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LedgerConfig {
    #[serde(flatten)]
    pub group: GroupConfig<LedgerGroup>,
    /// Accounts settled at once within a batch.
    pub store_concurrency: usize,
    /// Accounts whose state the ledger remembers between batches (and counterparty
    /// currencies); a remembered account is written without being read first.
    pub account_cache: usize,
    /// Settling attempts for one account when other writers keep moving it on.
    pub max_settle_attempts: u32,
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

/// The ledger's group defaults: `txflow-ledger`, batches of 500.
#[derive(Clone, Debug)]
pub struct LedgerGroup;

impl GroupDefaults for LedgerGroup {
    const STAGE: &'static str = "ledger";
    const BATCH_MAX_RECORDS: usize = 500;
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            group: GroupConfig::default(),
            store_concurrency: 64,
            account_cache: 100_000,
            max_settle_attempts: 20,
            retry_delays_ms: vec![1_000, 10_000, 60_000],
            breaker_failure_threshold: 5,
            breaker_open_ms: 2_000,
            max_store_writes_per_second: 0,
        }
    }
}

impl LedgerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.group.validate()?;
        ConfigError::require_positive(&[
            ("ledger.store_concurrency", self.store_concurrency as u64),
            ("ledger.account_cache", self.account_cache as u64),
            (
                "ledger.max_settle_attempts",
                self.max_settle_attempts.into(),
            ),
            (
                "ledger.breaker_failure_threshold",
                self.breaker_failure_threshold.into(),
            ),
        ])?;
        if self.retry_delays_ms.len() > MAX_RETRY_TIERS {
            return Err(ConfigError::Invalid(format!(
                "ledger.retry_delays_ms may have at most {MAX_RETRY_TIERS} tiers"
            )));
        }
        Ok(())
    }

    pub fn settings(&self) -> LedgerSettings {
        LedgerSettings {
            concurrency: self.store_concurrency,
            max_attempts: self.max_settle_attempts,
            cache_capacity: self.account_cache,
        }
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker_failure_threshold,
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }
}
