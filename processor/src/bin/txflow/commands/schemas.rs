//! `txflow schemas register|list`: txflow's schemas in the schema registry.

use anyhow::bail;
use clap::Subcommand;

use txflow::app::codec;
use txflow::app::Config;
use txflow::codec::Catalog;
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
    let Some(registry) = codec::registry(config)? else {
        bail!("no schema registry is configured: set schemas.registry_url (or TXFLOW_SCHEMAS__REGISTRY_URL)");
    };
    match command {
        SchemasCommand::Register => {
            for (record, subject, id) in
                codec::registered(config, &registry, &Catalog::builtin(), true).await?
            {
                super::print_line(&format!("{subject}\t{id}\t{}", record.full_name()))?;
            }
        }
        SchemasCommand::List => {
            for (_, subject) in codec::subjects(config) {
                let versions = match registry.versions(&subject).await {
                    Err(RegistryError::NotFound(_)) => Vec::new(),
                    other => other?,
                };
                for version in versions {
                    let found = registry.version(&subject, version).await?;
                    super::print_line(&format!("{subject}\t{version}\t{}", found.id))?;
                }
            }
        }
    }
    Ok(())
}
