//! What the operator's commands reach — balances, the topics' records, a way to write
//! records, redrives — on whichever backend holds them: Kafka and the store ([`Services`]),
//! the embedded database in this process ([`Embedded`]), or a `txflow dev` running in
//! another process ([`DevClient`], `--dev-dir`). `txflow accounts`, `produce` and `dlq` are
//! written once, over this.

use std::future::Future;
use std::sync::Arc;

use super::backend::{Backend, Services};
use super::AppError;
use super::Config;
use crate::adapters::embedded::remote::DevClient;
use crate::adapters::embedded::Embedded;
use crate::adapters::kafka::{Delivery, KafkaReader};
use crate::codec::Codec;
use crate::failures::redrive::{self, RedriveRequest, Redriven};
use crate::pipeline::Membership;
use crate::ports::{Balances, DelayedTopics, Publisher, TopicReader};

pub trait Access: Sync {
    type Balances: Balances;
    type Publisher: Publisher;
    type Reader: TopicReader;

    fn balances(
        &self,
        config: &Config,
    ) -> impl Future<Output = Result<Arc<Self::Balances>, AppError>> + Send;

    fn publisher(&self, config: &Config) -> Result<Self::Publisher, AppError>;

    fn reader(&self, config: &Config) -> Result<Self::Reader, AppError>;

    /// Runs `request`, reading its dead letters with `codec`; what it redrove.
    fn redrive(
        &self,
        config: &Config,
        codec: &Codec,
        request: &RedriveRequest,
    ) -> impl Future<Output = Result<Redriven, AppError>> + Send;
}

/// A redrive on a backend's own log, in the consumer group of the request's run.
async fn redrive_on<B: Backend>(
    backend: &B,
    config: &Config,
    codec: &Codec,
    request: &RedriveRequest,
) -> Result<Redriven, AppError> {
    let plan = request.plan().map_err(AppError::Invalid)?;
    let group = request.group();
    let log = backend.log(
        config,
        &Membership::new("redrive", &group, Some("cli"), 10_000),
        &[request.topic.as_str()],
        &DelayedTopics::default(),
        Delivery::ExactlyOnce,
    )?;
    Ok(redrive::redrive(log, codec, &plan).await?)
}

impl Access for Services {
    type Balances = <Services as Backend>::Store;
    type Publisher = <Services as Backend>::Publisher;
    type Reader = KafkaReader;

    async fn balances(&self, config: &Config) -> Result<Arc<Self::Balances>, AppError> {
        Backend::store(self, config).await
    }

    fn publisher(&self, config: &Config) -> Result<Self::Publisher, AppError> {
        Backend::publisher(self, config)
    }

    fn reader(&self, config: &Config) -> Result<KafkaReader, AppError> {
        Ok(KafkaReader::new(&config.kafka))
    }

    async fn redrive(
        &self,
        config: &Config,
        codec: &Codec,
        request: &RedriveRequest,
    ) -> Result<Redriven, AppError> {
        redrive_on(self, config, codec, request).await
    }
}

impl Access for Embedded {
    type Balances = <Embedded as Backend>::Store;
    type Publisher = <Embedded as Backend>::Publisher;
    type Reader = Embedded;

    async fn balances(&self, config: &Config) -> Result<Arc<Self::Balances>, AppError> {
        Backend::store(self, config).await
    }

    fn publisher(&self, config: &Config) -> Result<Self::Publisher, AppError> {
        Backend::publisher(self, config)
    }

    fn reader(&self, _: &Config) -> Result<Embedded, AppError> {
        Ok(self.clone())
    }

    async fn redrive(
        &self,
        config: &Config,
        codec: &Codec,
        request: &RedriveRequest,
    ) -> Result<Redriven, AppError> {
        redrive_on(self, config, codec, request).await
    }
}

/// A `txflow dev` in another process: it runs a redrive on its own log, with its own codec.
impl Access for DevClient {
    type Balances = DevClient;
    type Publisher = DevClient;
    type Reader = DevClient;

    async fn balances(&self, _: &Config) -> Result<Arc<DevClient>, AppError> {
        Ok(Arc::new(self.clone()))
    }

    fn publisher(&self, _: &Config) -> Result<DevClient, AppError> {
        Ok(self.clone())
    }

    fn reader(&self, _: &Config) -> Result<DevClient, AppError> {
        Ok(self.clone())
    }

    async fn redrive(
        &self,
        _: &Config,
        _: &Codec,
        request: &RedriveRequest,
    ) -> Result<Redriven, AppError> {
        Ok(DevClient::redrive(self, request).await?)
    }
}
