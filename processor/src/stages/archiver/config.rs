//! The `[archiver]` section and its `[archiver.storage]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::adapters::objects::StorageConfig;
use crate::config::ConfigError;
use crate::pipeline::{GroupConfig, GroupDefaults};

/// The archiver's section: its group settings, when files roll, and where they go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ArchiverConfig {
    #[serde(flatten)]
    pub group: GroupConfig<ArchiverGroup>,
    /// A partition's file is written once its records take this many bytes (before
    /// compression). The archiver holds up to this much per partition in memory.
    pub roll_bytes: u64,
    /// ...or once its first record has waited this long, so that a quiet hour still lands.
    pub roll_ms: u64,
    pub storage: StorageConfig,
}

/// The archiver's group defaults: `txflow-archiver`, batches of 2,000.
#[derive(Clone, Debug)]
pub struct ArchiverGroup;

impl GroupDefaults for ArchiverGroup {
    const STAGE: &'static str = "archiver";
    const BATCH_MAX_RECORDS: usize = 2_000;
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        ArchiverConfig {
            group: GroupConfig::default(),
            roll_bytes: 16 * 1024 * 1024,
            roll_ms: 300_000,
            storage: StorageConfig::default(),
        }
    }
}

impl ArchiverConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.group.validate()?;
        self.storage.validate()?;
        ConfigError::require_positive(&[
            ("archiver.roll_bytes", self.roll_bytes),
            ("archiver.roll_ms", self.roll_ms),
        ])
    }

    pub fn roll(&self) -> Roll {
        Roll {
            bytes: usize::try_from(self.roll_bytes).unwrap_or(usize::MAX),
            after: Duration::from_millis(self.roll_ms),
        }
    }
}

/// When a partition's file is written.
#[derive(Clone, Copy, Debug)]
pub struct Roll {
    pub bytes: usize,
    pub after: Duration,
}
