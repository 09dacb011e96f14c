//! The `[router]` section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::pipeline::{GroupConfig, GroupDefaults};

/// The router's section: its group settings and its own. (The loader refuses unknown keys:
/// serde's `deny_unknown_fields` does not work beside `flatten`.)
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct RouterConfig {
    #[serde(flatten)]
    pub group: GroupConfig<RouterGroup>,
    /// The rules file (YAML, docs/ROUTING.md); none: every event goes to the default target.
    pub rules_file: Option<PathBuf>,
    /// Where an event that matches no rule goes (default: the ledger topic, so that a fresh
    /// install processes money).
    pub default_target: Option<String>,
    /// How often the rules file is checked for changes (SIGHUP reloads at once).
    pub reload_check_ms: u64,
}

/// The router's group defaults: `txflow-router`, batches of 500.
#[derive(Clone, Debug)]
pub struct RouterGroup;

impl GroupDefaults for RouterGroup {
    const STAGE: &'static str = "router";
    const BATCH_MAX_RECORDS: usize = 500;
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            group: GroupConfig::default(),
            rules_file: None,
            default_target: None,
            reload_check_ms: 2_000,
        }
    }
}

impl RouterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.group.validate()?;
        ConfigError::require_positive(&[("router.reload_check_ms", self.reload_check_ms)])
    }
}
