//! `txflow topics apply`: every topic txflow uses.

use anyhow::Context;
use clap::Subcommand;

use txflow::adapters::kafka::{self, TopicReport};
use txflow::app::Config;

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic with the configured partitions and configs, and report how
    /// existing ones differ (they are never changed: more partitions would break per-account
    /// order).
    Apply,
}

pub async fn topics(config: &Config, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Apply => apply(config).await,
    }
}

async fn apply(config: &Config) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| kafka::check_access(&config.kafka, kafka::ACCESS_PATIENCE))?;
    let reports = kafka::apply_topics(&config.kafka, &config.topics, &config.all_topics())
        .await
        .with_context(|| format!("applying topics on {}", config.kafka.bootstrap_servers))?;
    for report in reports {
        match report {
            TopicReport::Created { topic, partitions } => {
                println!("created   {topic} ({partitions} partitions)")
            }
            TopicReport::Unchanged { topic } => println!("unchanged {topic}"),
            TopicReport::Differs { topic, differences } => {
                println!(
                    "differs   {topic}: {} (left as it is)",
                    differences.join("; ")
                )
            }
        }
    }
    Ok(())
}
