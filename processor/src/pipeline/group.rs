//! A stage process's place in its consumer group, and how its loop batches and backs off:
//! the settings every consuming stage's section holds under the same keys ([`GroupConfig`]).

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LoopConfig;
use crate::config::ConfigError;

/// Who a stage process is in its consumer group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub stage: &'static str,
    pub group_id: String,
    /// Stable across restarts of the same process, unique among live ones: its
    /// transactional id is `<group_id>-<instance_id>`.
    pub instance_id: String,
    /// How long the group waits for a silent member before giving its partitions to others.
    pub session_timeout_ms: u64,
}

impl Membership {
    /// `instance_id` as configured, else the host name (the pod name on Kubernetes), else the
    /// stage's name.
    pub fn new(
        stage: &'static str,
        group_id: &str,
        instance_id: Option<&str>,
        session_timeout_ms: u64,
    ) -> Membership {
        let instance_id = instance_id.map(str::to_owned).unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| stage.to_owned())
        });
        Membership {
            stage,
            group_id: group_id.to_owned(),
            instance_id,
            session_timeout_ms,
        }
    }

    /// The transactional id of the process's producer.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.group_id, self.instance_id)
    }
}

/// A consuming stage's defaults for its group settings.
pub trait GroupDefaults {
    /// The stage: its section's name, and its group's unless `group_id` is given
    /// (`txflow-<stage>`).
    const STAGE: &'static str;
    const BATCH_MAX_RECORDS: usize;
}

/// The consumer group settings of a consuming stage's section (`[ledger]`, `[router]`,
/// `[notifier]`), flattened into it: the same keys in each, with the stage's defaults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, bound(deserialize = "D: GroupDefaults", serialize = ""))]
pub struct GroupConfig<D> {
    /// Default: `txflow-<stage>`.
    pub group_id: String,
    /// This process's stable name: its transactional id is `<group_id>-<instance_id>`. A
    /// process restarted with the same instance id aborts its predecessor's open
    /// transaction at once; a new one waits `kafka.transaction_timeout_ms`. Defaults to the
    /// host name (the pod name on Kubernetes).
    pub instance_id: Option<String>,
    pub batch_max_records: usize,
    /// How long to wait for a batch's first record.
    pub batch_max_wait_ms: u64,
    /// How long the group waits for a silent member before giving its partitions to others:
    /// the stall after a process dies without leaving the group.
    pub session_timeout_ms: u64,
    /// First and largest pause after a failure of the whole batch, before it is read again.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    #[serde(skip)]
    defaults: PhantomData<fn() -> D>,
}

impl<D: GroupDefaults> Default for GroupConfig<D> {
    fn default() -> Self {
        GroupConfig {
            group_id: format!("txflow-{}", D::STAGE),
            instance_id: None,
            batch_max_records: D::BATCH_MAX_RECORDS,
            batch_max_wait_ms: 50,
            session_timeout_ms: 10_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            defaults: PhantomData,
        }
    }
}

impl<D: GroupDefaults> GroupConfig<D> {
    /// The keys these settings take in their section.
    pub const KEYS: [&'static str; 7] = [
        "group_id",
        "instance_id",
        "batch_max_records",
        "batch_max_wait_ms",
        "session_timeout_ms",
        "backoff_initial_ms",
        "backoff_max_ms",
    ];

    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::require_positive(&[(
            &format!("{}.batch_max_records", D::STAGE),
            self.batch_max_records as u64,
        )])
    }

    pub fn membership(&self) -> Membership {
        Membership::new(
            D::STAGE,
            &self.group_id,
            self.instance_id.as_deref(),
            self.session_timeout_ms,
        )
    }

    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            max_records: self.batch_max_records,
            max_wait: Duration::from_millis(self.batch_max_wait_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct Stage;

    impl GroupDefaults for Stage {
        const STAGE: &'static str = "stage";
        const BATCH_MAX_RECORDS: usize = 7;
    }

    #[test]
    fn the_keys_are_the_settings() {
        let config = GroupConfig::<Stage> {
            instance_id: Some("stage-0".to_owned()),
            ..GroupConfig::default()
        };
        let serialized = toml::Table::try_from(&config).unwrap();
        let mut keys: Vec<&str> = serialized.keys().map(String::as_str).collect();
        let mut expected = GroupConfig::<Stage>::KEYS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(config.group_id, "txflow-stage");
        assert_eq!(
            config.membership().transactional_id(),
            "txflow-stage-stage-0"
        );
        assert_eq!(config.loop_config().max_records, 7);
    }
}
