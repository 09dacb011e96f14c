//! Why txflow could not start or keep running a stage: the error of the composition root,
//! each variant the error of the part it comes from, its source kept.

use crate::adapters::embedded::remote::RemoteError;
use crate::adapters::embedded::EmbeddedError;
use crate::codec::CatalogError;
use crate::config::ConfigError;
use crate::failures::redrive::RedriveError;
use crate::pipeline::StageError;
use crate::ports::{LogError, RegistryError, StoreError};
use crate::routing::RulesError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("the archiver: {0}")]
    Archiver(#[from] crate::stages::archiver::ArchiverError),
    #[error("the Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    KafkaRefused(#[from] crate::adapters::kafka::KafkaRefused),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Redrive(#[from] RedriveError),
    /// A schema the registry must hold and does not, or another registry answer txflow
    /// cannot go on with.
    #[error("{what}: {source}")]
    Schema {
        what: String,
        #[source]
        source: RegistryError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// A setting that cannot work, said with the setting's name and what to do.
    #[error("{0}")]
    Invalid(String),
    /// One of the stages of `txflow dev` ended.
    #[error("the {stage} stage: {source}")]
    StageEnded {
        stage: &'static str,
        #[source]
        source: Box<AppError>,
    },
    #[error("a stage panicked: {0}")]
    Panicked(String),
}

impl AppError {
    /// An IO error, with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
        let what = what.into();
        move |source| AppError::Io { what, source }
    }
}
