//! `txflow migrate`: the store's keyspace and tables.

use txflow::adapters::scylla;
use txflow::app::Config;

/// Creates the store's keyspace and tables (idempotent), and claims the event ids of a
/// keyspace of an earlier version.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let session = scylla::connect(&config.store).await?;
    let migration = scylla::migrate(&session, &config.store).await?;
    let keyspace = &config.store.keyspace;
    println!(
        "keyspace {keyspace} and tables {keyspace}.{} and {keyspace}.{} are in place",
        scylla::LEDGER_TABLE,
        scylla::EVENT_IDS_TABLE
    );
    if migration.dropped_legacy_index {
        println!(
            "claimed {} event ids of results recorded before ids were claimed, and dropped the index they were found by",
            migration.claimed
        );
    }
    if !migration.conflicts.is_empty() {
        println!(
            "{} event ids were recorded for two different events before ids were claimed; the first claimed holds each: {}",
            migration.conflicts.len(),
            migration.conflicts.join(", ")
        );
    }
    Ok(())
}
