//! `txflow rules test`: what a rules file does with an event.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use txflow::app::Config;
use txflow::domain::TransactionEvent;
use txflow::routing::{Payload, Rules};

use super::print_line;

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Which rules of a rules file an event matches, and what each target receives: one JSON
    /// line per target; an event that matches no rule goes to the default target
    /// (the ledger topic).
    Test {
        /// The rules file (YAML).
        rules: PathBuf,
        /// The event, as JSON (a TransactionEvent: event_id, event_type, account_id, …).
        event: PathBuf,
    },
}

pub fn rules(config: &Config, command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Test { rules, event } => test_rules(config, &rules, &event),
    }
}

fn test_rules(config: &Config, rules: &Path, event: &Path) -> anyhow::Result<()> {
    let rules = Rules::load(rules)?;
    let text =
        std::fs::read_to_string(event).with_context(|| format!("reading {}", event.display()))?;
    let event: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", event.display()))?;
    serde_json::from_value::<TransactionEvent>(event.clone())
        .context("the event is not a transaction event")?
        .validate()
        .context("the event is not a valid transaction event")?;
    let routed = rules.route(&event);
    if routed.is_empty() {
        return print_line(&serde_json::json!({
            "rule": null,
            "topic": config.topics.ledger,
            "payload": event,
        }));
    }
    for delivery in routed {
        print_line(&serde_json::json!({
            "rule": delivery.rule,
            "topic": delivery.target.topic,
            "webhook": delivery.target.webhook,
            "payload": match delivery.transformed {
                Some(Payload::Json(value)) => value,
                Some(Payload::Text(text)) => serde_json::Value::String(text),
                None => event.clone(),
            },
        }))?;
    }
    Ok(())
}
