//! Where the codec's schema ids come from: the built-in `schemas/`, or a schema registry.

use std::sync::Arc;
use std::time::Duration;

use super::AppError;
use super::Config;
use crate::adapters::registry::SchemaRegistry;
use crate::codec::{Catalog, Codec, Record};
use crate::ports::RegistryError;

/// The codec every command and stage reads and writes records with: with a registry
/// configured, txflow's schemas under the registry's ids (registered at start unless
/// `schemas.auto_register` is off), and any other id looked up there; else the ids of the
/// built-in `schemas/schema-ids.json`.
pub async fn codec(config: &Config) -> Result<Arc<Codec>, AppError> {
    let Some(registry) = registry(config)? else {
        return Ok(Arc::new(Codec::builtin()));
    };
    let local = Catalog::builtin();
    let entries = registered(config, &registry, &local, config.schemas.auto_register)
        .await?
        .into_iter()
        .map(|(record, subject, id)| {
            let text = newest_text(&local, record);
            (
                id,
                format!("{} under subject {subject}", record.full_name()),
                text.to_owned(),
            )
        });
    let catalog = Catalog::from_texts(entries)?;
    Ok(Arc::new(Codec::new(catalog)?.with_registry(registry)))
}

/// The schema registry of `schemas.registry_url`, if one is configured.
pub fn registry(config: &Config) -> Result<Option<Arc<SchemaRegistry>>, AppError> {
    let Some(address) = config.schemas.registry()? else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(config.schemas.registry_timeout_ms);
    let registry = SchemaRegistry::new(address, timeout).map_err(|source| AppError::Http {
        what: "building the schema registry's HTTP client".to_owned(),
        source,
    })?;
    Ok(Some(Arc::new(registry)))
}

/// The subject of each record txflow writes: `<topic>-value` of the topic it is first
/// written to (Confluent's default TopicNameStrategy).
pub fn subjects(config: &Config) -> [(Record, String); 2] {
    [
        (
            Record::TransactionEvent,
            format!("{}-value", config.topics.events),
        ),
        (
            Record::TransactionResult,
            format!("{}-value", config.topics.results),
        ),
    ]
}

/// The newest built-in schema of `record`, as written.
fn newest_text(local: &Catalog, record: Record) -> &str {
    local
        .newest(record.full_name())
        .and_then(|id| local.text(id))
        .expect("the built-in catalog has every record")
}

/// The registry's id of the newest schema of each record in `local`, registering it first
/// when `register`: (record, subject, id).
pub async fn registered(
    config: &Config,
    registry: &SchemaRegistry,
    local: &Catalog,
    register: bool,
) -> Result<Vec<(Record, String, u32)>, AppError> {
    let url = &config.schemas.registry_url;
    let mut ids = Vec::new();
    for (record, subject) in subjects(config) {
        let text = newest_text(local, record);
        let name = record.full_name();
        let id = if register {
            registry
                .register(&subject, text)
                .await
                .map_err(|source| AppError::Schema {
                    what: format!(
                        "registering {name} under subject {subject} at {url} (schemas.registry_url)"
                    ),
                    source,
                })?
        } else {
            match registry.lookup(&subject, text).await {
                Ok(found) => found.id,
                Err(RegistryError::NotFound(_)) => {
                    return Err(AppError::Invalid(format!(
                        "{name} is not registered under subject {subject} at {url}: register it with `txflow schemas register`, or set schemas.auto_register = true"
                    )))
                }
                Err(source) => {
                    return Err(AppError::Schema {
                        what: format!("looking up {name} under subject {subject}"),
                        source,
                    })
                }
            }
        };
        tracing::info!(%subject, id, record = name, "schema id from the registry");
        ids.push((record, subject, id));
    }
    Ok(ids)
}
