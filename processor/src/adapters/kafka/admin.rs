//! `txflow topics apply`: every topic as configured.

use std::collections::BTreeMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::CALL_TIMEOUT;
use super::{KafkaConfig, TopicsConfig};

use super::client::client_config;

/// What `txflow topics apply` found and did for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicReport {
    Created {
        topic: String,
        partitions: i32,
    },
    Unchanged {
        topic: String,
    },
    /// Exists, but not as configured; left as it is (more partitions would move accounts to
    /// other partitions and break per-account order).
    Differs {
        topic: String,
        differences: Vec<String>,
    },
}

/// Creates the missing topics and reports how existing ones differ from the config.
pub async fn apply_topics(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    names: &[String],
) -> Result<Vec<TopicReport>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let metadata =
        tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, CALL_TIMEOUT))?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));

    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !existing.contains_key(*n))
        .collect();
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|name| {
            let mut topic = NewTopic::new(
                name,
                topics.partitions,
                TopicReplication::Fixed(topics.replication_factor),
            );
            for (key, value) in &topics.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let mut reports = Vec::new();
    let created = if new_topics.is_empty() {
        Vec::new()
    } else {
        admin.create_topics(&new_topics, &options).await?
    };
    for result in created {
        match result {
            Ok(topic) => reports.push(TopicReport::Created {
                topic,
                partitions: topics.partitions,
            }),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                reports.push(TopicReport::Unchanged { topic })
            }
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }

    let present: Vec<&String> = names.iter().filter(|n| existing.contains_key(*n)).collect();
    let specifiers: Vec<ResourceSpecifier> = present
        .iter()
        .map(|n| ResourceSpecifier::Topic(n))
        .collect();
    let configs = if specifiers.is_empty() {
        Vec::new()
    } else {
        admin.describe_configs(&specifiers, &options).await?
    };
    for (name, described) in present.into_iter().zip(configs) {
        let mut differences = Vec::new();
        if existing[name] != topics.partitions {
            differences.push(format!(
                "partitions: {} live, {} configured",
                existing[name], topics.partitions
            ));
        }
        let described = described.map_err(KafkaError::AdminOp)?;
        for (key, wanted) in &topics.config {
            let live = described.get(key).and_then(|entry| entry.value.clone());
            if live.as_deref() != Some(wanted.as_str()) {
                differences.push(format!(
                    "{key}: {} live, {wanted} configured",
                    live.as_deref().unwrap_or("unset")
                ));
            }
        }
        reports.push(if differences.is_empty() {
            TopicReport::Unchanged {
                topic: name.clone(),
            }
        } else {
            TopicReport::Differs {
                topic: name.clone(),
                differences,
            }
        });
    }
    Ok(reports)
}

/// Deletes topics; one that does not exist is not an error.
pub async fn delete_topics(kafka: &KafkaConfig, names: &[String]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}
