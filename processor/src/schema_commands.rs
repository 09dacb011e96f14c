//! Where the codec's schema ids come from (the built-in `schemas/`, or a schema registry),
//! and `txflow schemas register|list`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use txflow::adapters::registry::SchemaRegistry;
use txflow::codec::{Catalog, Codec, Record};
use txflow::config::Config;
use txflow::ports::RegistryError;

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register txflow's schemas in the schema registry (schemas.registry_url) and print
    /// their ids; a schema already registered keeps its id.
    Register,
    /// Print every version of txflow's subjects in the schema registry: subject, version,
    /// schema id.
    List,
}

pub async fn schemas(config: &Config, command: SchemasCommand) -> anyhow::Result<()> {
    let Some(registry) = registry(config)? else {
        bail!("no schema registry is configured: set schemas.registry_url (or TXFLOW_SCHEMAS__REGISTRY_URL)");
    };
    match command {
        SchemasCommand::Register => {
            for (record, subject, id) in
                registered(config, &registry, &Catalog::builtin(), true).await?
            {
                crate::cli::print_line(&format!("{subject}\t{id}\t{}", record.full_name()))?;
            }
        }
        SchemasCommand::List => {
            for (_, subject) in subjects(config) {
                let versions = match registry.versions(&subject).await {
                    Err(RegistryError::NotFound(_)) => Vec::new(),
                    other => other?,
                };
                for version in versions {
                    let found = registry.version(&subject, version).await?;
                    crate::cli::print_line(&format!("{subject}\t{version}\t{}", found.id))?;
                }
            }
        }
    }
    Ok(())
}

/// The codec every command and stage reads and writes records with: with a registry
/// configured, txflow's schemas under the registry's ids (registered at start unless
/// `schemas.auto_register` is off), and any other id looked up there; else the ids of the
/// built-in `schemas/schema-ids.json`.
pub async fn codec(config: &Config) -> anyhow::Result<Arc<Codec>> {
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

fn registry(config: &Config) -> anyhow::Result<Option<Arc<SchemaRegistry>>> {
    let Some((url, credentials)) = config.schemas.registry()? else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(config.schemas.registry_timeout_ms);
    let registry = SchemaRegistry::new(url, credentials, timeout)
        .context("building the schema registry's HTTP client")?;
    Ok(Some(Arc::new(registry)))
}

/// The subject of each record txflow writes: `<topic>-value` of the topic it is first
/// written to (Confluent's default TopicNameStrategy).
fn subjects(config: &Config) -> [(Record, String); 2] {
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
/// when `register`.
async fn registered(
    config: &Config,
    registry: &SchemaRegistry,
    local: &Catalog,
    register: bool,
) -> anyhow::Result<Vec<(Record, String, u32)>> {
    let url = &config.schemas.registry_url;
    let mut ids = Vec::new();
    for (record, subject) in subjects(config) {
        let text = newest_text(local, record);
        let id = if register {
            registry.register(&subject, text).await.with_context(|| {
                format!(
                    "registering {} under subject {subject} at {url} (schemas.registry_url)",
                    record.full_name()
                )
            })?
        } else {
            match registry.lookup(&subject, text).await {
                Ok(found) => found.id,
                Err(RegistryError::NotFound(_)) => bail!(
                    "{} is not registered under subject {subject} at {url}: register it with `txflow schemas register`, or set schemas.auto_register = true",
                    record.full_name()
                ),
                Err(e) => return Err(e).with_context(|| format!("looking up {} under subject {subject}", record.full_name())),
            }
        };
        tracing::info!(%subject, id, record = record.full_name(), "schema id from the registry");
        ids.push((record, subject, id));
    }
    Ok(ids)
}
