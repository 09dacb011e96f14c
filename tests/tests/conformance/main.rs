//! The conformance suite of `txflow_tests::conformance`, run against each backend: Kafka and
//! Cassandra, and the embedded database of `txflow dev`.

use std::sync::Arc;
use std::time::Duration;

use txflow::adapters::embedded::Embedded;
use txflow::adapters::kafka::{Delivery, GroupMember, KafkaLog, KafkaPublisher};
use txflow::adapters::scylla::{self, ScyllaLedgerStore};
use txflow::config::Config;
use txflow_tests::conformance::{the_ledger_settles_retries_and_dead_letters, Topics};
use txflow_tests::process::Pipeline;
use txflow_tests::{cql_contact_points, kafka_bootstrap, read_topic, ReadRecord};

fn tiers(ledger: &str) -> Vec<String> {
    (1..=3).map(|n| format!("{ledger}.retry.{n}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_kafka_and_cassandra() {
    // Topics (with their tiers) and keyspace made as `txflow topics apply` and `migrate` make them.
    let pipeline = tokio::task::spawn_blocking(|| Pipeline::new(2))
        .await
        .unwrap();
    let contact_points: Vec<String> = cql_contact_points()
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    let config = Config::load(
        None,
        [
            ("TXFLOW_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap()),
            (
                "TXFLOW_STORE__CONTACT_POINTS",
                format!("[{}]", contact_points.join(",")),
            ),
            ("TXFLOW_STORE__KEYSPACE", pipeline.keyspace.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .unwrap();
    let session = scylla::connect(&config.store).await.unwrap();
    let store = Arc::new(
        ScyllaLedgerStore::new(session, &config.store)
            .await
            .unwrap(),
    );
    let publisher = KafkaPublisher::new(&config.kafka, Duration::from_secs(10)).unwrap();
    let kafka = config.kafka.clone();
    let ledger = pipeline.ledger_topic.clone();
    let new_log = |group: &str, tiers: &[String]| {
        let transactional_id = format!("{group}-{}", pipeline.keyspace);
        KafkaLog::new(
            &kafka,
            &GroupMember {
                group_id: &format!("{group}-{}", pipeline.keyspace),
                transactional_id: &transactional_id,
                session_timeout_ms: 6000,
            },
            &[&ledger],
            tiers,
            Delivery::ExactlyOnce,
        )
        .expect("a Kafka log")
    };
    the_ledger_settles_retries_and_dead_letters(
        Topics {
            ledger: pipeline.ledger_topic.clone(),
            results: pipeline.results_topic.clone(),
            dead_letters: pipeline.dlq_topic.clone(),
            tiers: tiers(&pipeline.ledger_topic),
        },
        new_log,
        store,
        publisher,
        |topic| read_topic(topic, "read_committed"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_embedded_database() {
    let dir = std::env::temp_dir().join(txflow_tests::unique_name("conformance"));
    let embedded = Embedded::open(&dir).unwrap();
    let reader = embedded.clone();
    let logs = embedded.clone();
    the_ledger_settles_retries_and_dead_letters(
        Topics {
            ledger: "txflow.ledger".into(),
            results: "txflow.results".into(),
            dead_letters: "txflow.ledger.dlq".into(),
            tiers: tiers("txflow.ledger"),
        },
        move |group: &str, tiers: &[String]| logs.log(group, &["txflow.ledger"], tiers),
        Arc::new(embedded.store()),
        embedded.publisher(),
        move |topic| {
            reader
                .read_to_end(topic)
                .unwrap()
                .into_iter()
                .map(ReadRecord::from)
                .collect()
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
