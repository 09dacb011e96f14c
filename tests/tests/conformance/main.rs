//! The conformance suite of `txflow_tests::conformance`, run against each backend: Kafka and
//! Cassandra, and the embedded database of `txflow dev`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use txflow::adapters::embedded::{Embedded, EmbeddedLedgerStore, EmbeddedLog, EmbeddedPublisher};
use txflow::adapters::kafka::{Delivery, GroupMember, KafkaLog, KafkaPublisher};
use txflow::adapters::scylla::{self, ScyllaLedgerStore};
use txflow::config::Config;
use txflow_tests::conformance::{
    a_hostile_workload_keeps_every_invariant, reused_ids_and_balance_limits_move_no_money, seed,
    the_ledger_settles_retries_and_dead_letters, Backend, Topics,
};
use txflow_tests::process::Pipeline;
use txflow_tests::{cql_contact_points, kafka_bootstrap, read_topic, ReadRecord};

fn tiers(ledger: &str) -> Vec<String> {
    (1..=3).map(|n| format!("{ledger}.retry.{n}")).collect()
}

/// Fresh topics (with their tiers) and keyspace, made as `txflow topics apply` and `migrate`
/// make them, on the local stack.
async fn kafka_and_cassandra() -> Backend<ScyllaLedgerStore, KafkaPublisher, KafkaLog> {
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
    let keyspace = pipeline.keyspace.clone();
    let new_log = move |group: &str, tiers: &[String]| {
        let group_id = format!("{group}-{keyspace}");
        KafkaLog::new(
            &kafka,
            &GroupMember {
                group_id: &group_id,
                transactional_id: &group_id,
                session_timeout_ms: 6000,
            },
            &[&ledger],
            tiers,
            Delivery::ExactlyOnce,
        )
        .expect("a Kafka log")
    };
    Backend {
        topics: Topics {
            ledger: pipeline.ledger_topic.clone(),
            results: pipeline.results_topic.clone(),
            dead_letters: pipeline.dlq_topic.clone(),
            tiers: tiers(&pipeline.ledger_topic),
        },
        new_log: Box::new(new_log),
        store,
        publisher,
        read: Box::new(|topic: &str| read_topic(topic, "read_committed")),
    }
}

/// A data directory of its own, removed when the test ends.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh embedded database, as `txflow dev` opens it.
fn embedded(dir: &DataDir) -> Backend<EmbeddedLedgerStore, EmbeddedPublisher, EmbeddedLog> {
    let embedded = Embedded::open(&dir.0).unwrap();
    let reader = embedded.clone();
    let logs = embedded.clone();
    Backend {
        topics: Topics {
            ledger: "txflow.ledger".into(),
            results: "txflow.results".into(),
            dead_letters: "txflow.ledger.dlq".into(),
            tiers: tiers("txflow.ledger"),
        },
        new_log: Box::new(move |group: &str, tiers: &[String]| {
            logs.log(group, &["txflow.ledger"], tiers)
        }),
        store: Arc::new(embedded.store()),
        publisher: embedded.publisher(),
        read: Box::new(move |topic: &str| {
            reader
                .read_to_end(topic)
                .unwrap()
                .into_iter()
                .map(ReadRecord::from)
                .collect()
        }),
    }
}

fn data_dir(test: &str) -> DataDir {
    DataDir(std::env::temp_dir().join(txflow_tests::unique_name(test)))
}

#[tokio::test(flavor = "multi_thread")]
async fn settles_retries_and_dead_letters_on_kafka_and_cassandra() {
    the_ledger_settles_retries_and_dead_letters(kafka_and_cassandra().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settles_retries_and_dead_letters_on_the_embedded_database() {
    let dir = data_dir("conformance");
    the_ledger_settles_retries_and_dead_letters(embedded(&dir)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_ids_and_balance_limits_move_no_money_on_kafka_and_cassandra() {
    reused_ids_and_balance_limits_move_no_money(kafka_and_cassandra().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_ids_and_balance_limits_move_no_money_on_the_embedded_database() {
    let dir = data_dir("reproductions");
    reused_ids_and_balance_limits_move_no_money(embedded(&dir)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_workload_keeps_every_invariant_on_kafka_and_cassandra() {
    let seed = seed("hostile on kafka and cassandra");
    a_hostile_workload_keeps_every_invariant(kafka_and_cassandra().await, seed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_workload_keeps_every_invariant_on_the_embedded_database() {
    let dir = data_dir("hostile");
    let seed = seed("hostile on the embedded database");
    a_hostile_workload_keeps_every_invariant(embedded(&dir), seed).await;
}
