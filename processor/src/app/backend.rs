//! Where the stages' log, store and way in come from: Kafka and ScyllaDB ([`Services`]) for
//! `txflow run`, the embedded database ([`Embedded`]) for `txflow dev`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::AppError;
use super::Config;
use crate::adapters::embedded::{Embedded, EmbeddedLedgerStore, EmbeddedLog, EmbeddedPublisher};
use crate::adapters::kafka::{self, Delivery, KafkaLog, KafkaPublisher};
use crate::adapters::scylla;
use crate::pipeline::Membership;
use crate::ports::{Balances, DelayedTopics, LedgerStore, Log, Publisher};

/// Where the stages' log, store and way in come from.
pub trait Backend: Sync {
    type Log: Log + 'static;
    type Store: LedgerStore + Balances;
    type Publisher: Publisher + 'static;

    /// A member of its group on `inputs` and the delayed topics `tiers`.
    fn log(
        &self,
        config: &Config,
        membership: &Membership,
        inputs: &[&str],
        tiers: &DelayedTopics,
        delivery: Delivery,
    ) -> Result<Self::Log, AppError>;

    fn store(
        &self,
        config: &Config,
    ) -> impl Future<Output = Result<Arc<Self::Store>, AppError>> + Send;

    fn publisher(&self, config: &Config) -> Result<Self::Publisher, AppError>;
}

/// Kafka and ScyllaDB (or Cassandra), as configured.
pub struct Services;

#[cfg(not(feature = "fault-injection"))]
type ServicesStore = scylla::ScyllaLedgerStore;
/// A test build's store fails as `[faults]` says.
#[cfg(feature = "fault-injection")]
type ServicesStore = crate::adapters::faulty::FaultyStore<scylla::ScyllaLedgerStore>;

impl Backend for Services {
    type Log = KafkaLog;
    type Store = ServicesStore;
    type Publisher = KafkaPublisher;

    fn log(
        &self,
        config: &Config,
        membership: &Membership,
        inputs: &[&str],
        tiers: &DelayedTopics,
        delivery: Delivery,
    ) -> Result<KafkaLog, AppError> {
        tracing::info!(stage = membership.stage, ?inputs, group = %membership.group_id, transactional_id = %membership.transactional_id(), ?delivery, "joining the group");
        Ok(KafkaLog::new(
            &config.kafka,
            membership,
            inputs,
            tiers,
            delivery,
        )?)
    }

    async fn store(&self, config: &Config) -> Result<Arc<ServicesStore>, AppError> {
        let session = scylla::connect(&config.store).await?;
        let store = scylla::ScyllaLedgerStore::new(session, &config.store).await?;
        #[cfg(feature = "fault-injection")]
        let store = crate::adapters::faulty::FaultyStore::new(store, config.faults.clone());
        Ok(Arc::new(store))
    }

    fn publisher(&self, config: &Config) -> Result<KafkaPublisher, AppError> {
        tokio::task::block_in_place(|| kafka::check_access(&config.kafka, kafka::ACCESS_PATIENCE))?;
        let timeout = Duration::from_millis(config.gateway.request_timeout_ms);
        Ok(KafkaPublisher::new(&config.kafka, timeout)?)
    }
}

impl Backend for Embedded {
    type Log = EmbeddedLog;
    type Store = EmbeddedLedgerStore;
    type Publisher = EmbeddedPublisher;

    fn log(
        &self,
        _: &Config,
        membership: &Membership,
        inputs: &[&str],
        tiers: &DelayedTopics,
        _: Delivery,
    ) -> Result<EmbeddedLog, AppError> {
        Ok(Embedded::log(self, &membership.group_id, inputs, tiers))
    }

    async fn store(&self, _: &Config) -> Result<Arc<EmbeddedLedgerStore>, AppError> {
        Ok(Arc::new(Embedded::store(self)))
    }

    fn publisher(&self, _: &Config) -> Result<EmbeddedPublisher, AppError> {
        Ok(Embedded::publisher(self))
    }
}
