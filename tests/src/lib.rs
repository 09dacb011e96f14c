//! The integration-test harness: where the real services are, fresh names per test, and
//! connections that fail loudly, with the fix, when the local stack is not running.
//!
//! Addresses come from the environment and default to what `deploy/local/stack up` starts:
//! `TXFLOW_KAFKA_BOOTSTRAP` (`127.0.0.1:9092`) and `TXFLOW_CQL_CONTACT_POINTS`
//! (`127.0.0.1:9042`, comma-separated). Every test makes its own topics, groups,
//! transactional ids and keyspaces with [`unique_name`], so tests run in parallel and a rerun
//! never sees an earlier run's data.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

const START_STACK: &str = "start the local stack with `deploy/local/stack up` \
     (or run everything with `deploy/local/stack test`)";

/// The Kafka bootstrap servers the tests use.
pub fn kafka_bootstrap() -> String {
    std::env::var("TXFLOW_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The CQL contact points the tests use.
pub fn cql_contact_points() -> Vec<String> {
    std::env::var("TXFLOW_CQL_CONTACT_POINTS")
        .unwrap_or_else(|_| "127.0.0.1:9042".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A name no other test or run uses: `prefix_` and 16 hex digits. Valid as a Kafka topic,
/// group or transactional id and as a CQL identifier.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..16])
}

/// A client config pointing at the test cluster.
pub fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka_bootstrap());
    config
}

/// Fails the test with the fix in its message unless a Kafka broker answers for metadata.
pub fn require_kafka() {
    let bootstrap = kafka_bootstrap();
    let probe: BaseConsumer = kafka_config()
        .create()
        .unwrap_or_else(|e| panic!("cannot configure a Kafka client for {bootstrap}: {e}"));
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!("Kafka is not reachable at {bootstrap} ({e}); {START_STACK}, or point TXFLOW_KAFKA_BOOTSTRAP at a running broker");
    }
}

/// Creates topics with the given partition count (replication factor 1) and waits until
/// they exist.
pub fn create_topics(names: &[&str], partitions: i32) {
    require_kafka();
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("a Kafka admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // The admin client's futures are completed by librdkafka's own thread: no runtime needed.
    for result in futures::executor::block_on(admin.create_topics(&topics, &options))
        .expect("create_topics request")
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("creating topic {topic} failed: {code}"),
        }
    }
}

/// A session to the test CQL database; fails the test with the fix in its message when
/// none answers.
pub async fn cql_session() -> Session {
    let nodes = cql_contact_points();
    SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap_or_else(|e| {
            panic!("no CQL database reachable at {nodes:?} ({e}); {START_STACK}, or point TXFLOW_CQL_CONTACT_POINTS at a running node")
        })
}

/// Creates a fresh keyspace (replication factor 1) and makes it the session's current one.
pub async fn fresh_keyspace(session: &Session) -> String {
    let keyspace = unique_name("txflow_test");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap_or_else(|e| panic!("creating keyspace {keyspace}: {e}"));
    session
        .use_keyspace(&keyspace, false)
        .await
        .unwrap_or_else(|e| panic!("using keyspace {keyspace}: {e}"));
    keyspace
}

/// Whether a lightweight transaction applied, read from its `[applied]` column by name.
///
/// Cassandra answers an applied LWT with `[applied]` alone and a refused one with
/// `[applied]` plus the current values; ScyllaDB always adds the old row. Reading the
/// column by name from an untyped row works with both shapes.
pub fn lwt_applied(result: QueryResult) -> bool {
    let rows = result.into_rows_result().expect("an LWT answers with rows");
    let column = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .expect("an LWT answer has an [applied] column");
    let first: Row = rows.first_row().expect("an LWT answer has a first row");
    match first.columns.get(column) {
        Some(Some(CqlValue::Boolean(applied))) => *applied,
        other => panic!("[applied] is not a boolean: {other:?}"),
    }
}
