//! A store that fails or slows down on purpose, for tests; compiled only with the
//! `fault-injection` feature, and switched on by the `[faults]` config section that only
//! such a build accepts.

use std::collections::HashMap;

use futures::stream::BoxStream;
use rand::Rng;

use crate::domain::{Account, Cause, IdClaim, Recorded, Settlement, TransactionResult};
use crate::ports::{Balances, LedgerStore, LoadedAccount, StoreError};

/// Store faults injected by a test build: the `[faults]` section.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// The share of store calls that fail as if the store were unavailable, 0 to 1.
    pub store_failure_rate: f64,
    /// Store calls on accounts starting with one of these fail, every time.
    pub store_failing_accounts: Vec<String>,
    /// Added to every store call.
    pub store_delay_ms: u64,
}

impl FaultsConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if !(0.0..=1.0).contains(&self.store_failure_rate) {
            return Err(crate::config::ConfigError::Invalid(
                "faults.store_failure_rate must be between 0 and 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `S`, with the faults of `config`.
pub struct FaultyStore<S> {
    inner: S,
    config: FaultsConfig,
}

impl<S> FaultyStore<S> {
    pub fn new(inner: S, config: FaultsConfig) -> Self {
        if config.store_failure_rate > 0.0
            || !config.store_failing_accounts.is_empty()
            || config.store_delay_ms > 0
        {
            tracing::warn!(?config, "injecting store faults");
        }
        FaultyStore { inner, config }
    }

    /// Waits the configured delay, then fails if the dice or the accounts say so.
    async fn fault(&self, accounts: &[&str]) -> Result<(), StoreError> {
        if self.config.store_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.config.store_delay_ms)).await;
        }
        let failing = accounts.iter().find(|account| {
            self.config
                .store_failing_accounts
                .iter()
                .any(|prefix| account.starts_with(prefix.as_str()))
        });
        if let Some(account) = failing {
            return Err(StoreError::Unavailable(Cause::message(format!(
                "injected fault: account {account:?} is configured to fail"
            ))));
        }
        if rand::rng().random::<f64>() < self.config.store_failure_rate {
            return Err(StoreError::Unavailable(Cause::message("injected fault")));
        }
        Ok(())
    }
}

impl<S: LedgerStore> LedgerStore for FaultyStore<S> {
    async fn load(&self, account_id: &str, keys: &[String]) -> Result<LoadedAccount, StoreError> {
        self.fault(&[account_id]).await?;
        self.inner.load(account_id, keys).await
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.fault(&[]).await?;
        self.inner.currencies(account_ids).await
    }

    async fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> Result<HashMap<String, IdClaim>, StoreError> {
        self.fault(&[]).await?;
        self.inner.claim_event_ids(claims).await
    }

    async fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> Result<HashMap<(String, String), Recorded>, StoreError> {
        self.fault(&[]).await?;
        self.inner.recorded(postings).await
    }

    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        self.fault(&[account_id]).await?;
        self.inner.record(account_id, before, settlement).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.fault(&[]).await?;
        self.inner.ping().await
    }
}

impl<S: Balances> Balances for FaultyStore<S> {
    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        self.fault(&[account_id]).await?;
        self.inner.account(account_id).await
    }

    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>> {
        self.inner.accounts()
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        self.fault(&[]).await?;
        self.inner.outcomes(event_id).await
    }
}
