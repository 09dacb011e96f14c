//! The conformance suite of `txflow_tests::conformance`, run against each backend: Kafka and
//! Cassandra, and the embedded database of `txflow dev`, each reached through its
//! `txflow::app::Backend` as the stages reach it.

use std::path::PathBuf;

use txflow::adapters::embedded::Embedded;
use txflow::app::Config;
use txflow::app::Services;
use txflow_tests::conformance::{
    a_hostile_workload_keeps_every_invariant, reused_ids_and_balance_limits_move_no_money, seed,
    the_ledger_settles_retries_and_dead_letters, Subject,
};
use txflow_tests::process::Pipeline;

/// Fresh topics (with their tiers) and keyspace, made as `txflow topics apply` and `migrate`
/// make them, on the local stack.
async fn kafka_and_cassandra() -> Subject<Services> {
    let pipeline = tokio::task::spawn_blocking(|| Pipeline::new(2))
        .await
        .unwrap();
    Subject::new(Services, pipeline.config())
}

/// A data directory of its own, removed when the test ends.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh embedded database, as `txflow dev` opens it.
fn embedded(dir: &DataDir) -> Subject<Embedded> {
    Subject::new(Embedded::open(&dir.0).unwrap(), Config::default())
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
