//! The integration-test harness: where the real services are, fresh names per test,
//! connections that fail loudly, with the fix, when the local stack is not running, and the
//! `txflow` binary run as a user runs it.
//!
//! Addresses come from the environment and default to what `deploy/local/stack up` starts:
//! `TXFLOW_KAFKA_BOOTSTRAP` (`127.0.0.1:9092`) and `TXFLOW_CQL_CONTACT_POINTS`
//! (`127.0.0.1:9042`, comma-separated). Every test makes its own topics, groups,
//! transactional ids and keyspaces with [`unique_name`], so tests run in parallel and a rerun
//! never sees an earlier run's data.

pub mod conformance;
pub mod invariants;
pub mod monitoring;
pub mod process;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

const START_STACK: &str = "start the local stack with `deploy/local/stack up` \
     (or run everything with `deploy/local/stack test`)";

/// How long a harness call waits on the services before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

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
        panic!(
            "Kafka is not reachable at {bootstrap} ({e}); {START_STACK}, or point TXFLOW_KAFKA_BOOTSTRAP at a running broker"
        );
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
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
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

/// Deletes every record of `topic`'s `partitions` partitions, as retention does once they
/// are old enough.
pub fn delete_all_records(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("a Kafka admin client");
    let mut all = TopicPartitionList::new();
    for partition in 0..partitions {
        all.add_partition_offset(topic, partition, Offset::End)
            .expect("a partition");
    }
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let deleted = futures::executor::block_on(admin.delete_records(&all, &options))
        .expect("delete_records request");
    for element in deleted.elements() {
        if let Err(e) = element.error() {
            panic!(
                "deleting the records of {topic}/{}: {e}",
                element.partition()
            );
        }
    }
}

/// Writes `records` (key, value) to `topic` in one committed transaction of a producer of
/// its own: when this returns, every record is there, or the test failed.
pub fn produce_committed(topic: &str, records: &[(Option<&[u8]>, &[u8])]) {
    let with_headers: Vec<TestRecord> = records
        .iter()
        .map(|(key, value)| (*key, *value, Vec::new()))
        .collect();
    produce_committed_with_headers(topic, &with_headers);
}

/// A record to write: key, value, headers.
pub type TestRecord<'a> = (Option<&'a [u8]>, &'a [u8], Vec<(&'a str, &'a [u8])>);

/// As [`produce_committed`], with headers.
pub fn produce_committed_with_headers(topic: &str, records: &[TestRecord]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = kafka_config()
        .set("transactional.id", unique_name("seed"))
        .create()
        .expect("a transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer.begin_transaction().expect("begin");
    for (key, value, headers) in records {
        let mut record = BaseRecord::to(topic).payload(*value);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if !headers.is_empty() {
            let headers = headers
                .iter()
                .fold(OwnedHeaders::new(), |all, (name, value)| {
                    all.insert(Header {
                        key: name,
                        value: Some(*value),
                    })
                });
            record = record.headers(headers);
        }
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("enqueue a record");
    }
    producer.commit_transaction(TIMEOUT).expect("commit");
}

/// Polls `check` every `every` until it gives a value; fails the test after `limit`, with
/// `explain()` (what is missing, logs) in the message.
pub fn eventually<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {}",
            explain()
        );
        std::thread::sleep(every);
    }
}

/// A record as a test reads it back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, as the log stamped it.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl From<txflow::wire::InputRecord> for ReadRecord {
    fn from(record: txflow::wire::InputRecord) -> Self {
        ReadRecord {
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        }
    }
}

impl ReadRecord {
    /// The first header with this name, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// The results of a results topic's records; fails the test on one that is not a result.
pub fn results_of(records: &[ReadRecord]) -> Vec<txflow::domain::TransactionResult> {
    let codec = txflow::codec::Codec::builtin();
    records
        .iter()
        .map(|r| {
            codec
                .decode(
                    txflow::codec::Record::TransactionResult,
                    r.value.as_deref().unwrap_or_default(),
                )
                .expect("a result record")
        })
        .collect()
}

/// Everything a consumer with the given isolation level (`read_committed` or
/// `read_uncommitted`) can read from `topic`, from the beginning to the end of each
/// partition, in partition and offset order.
pub fn read_topic(topic: &str, isolation: &str) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", unique_name("reader"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} does not exist");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let mut at_end = 0;
    let deadline = Instant::now() + TIMEOUT;
    while at_end < partitions {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end took over {TIMEOUT:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => records.push(ReadRecord {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    records.sort();
    records
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

/// The Confluent-compatible root of the test schema registry (`TXFLOW_SCHEMA_REGISTRY`, which
/// `deploy/local/stack test` sets).
pub fn schema_registry() -> String {
    std::env::var("TXFLOW_SCHEMA_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".to_owned())
}

/// Fails the test with the fix in its message unless the schema registry lists its subjects.
pub fn require_schema_registry() {
    let url = schema_registry();
    let rest = url.strip_prefix("http://").unwrap_or_else(|| {
        panic!("TXFLOW_SCHEMA_REGISTRY={url}: the tests reach the registry over plain http")
    });
    let (address, root) = rest.split_once('/').unwrap_or((rest, ""));
    let answer = process::try_http(address, "GET", &format!("/{root}/subjects"), &[], b"");
    match answer {
        Ok(answer) if answer.status == 200 => {}
        Ok(answer) => panic!(
            "the schema registry at {url} answered {} to GET /subjects; {START_STACK}, or point TXFLOW_SCHEMA_REGISTRY at a Confluent-compatible registry",
            answer.status
        ),
        Err(e) => panic!(
            "the schema registry is not reachable at {url} ({e}); {START_STACK}, or point TXFLOW_SCHEMA_REGISTRY at a Confluent-compatible registry"
        ),
    }
}

/// The Python with the example clients' packages (`TXFLOW_PYTHON`, which
/// `deploy/local/stack test` sets to a venv of examples/python/requirements.txt; else
/// `python3`). Fails the test, with the fix, when the packages are missing.
pub fn python() -> std::process::Command {
    let python = std::env::var("TXFLOW_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import confluent_kafka, fastavro, confluent_kafka.schema_registry.avro",
        ])
        .output();
    match check {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "{python} lacks the example clients ({}). Run the tests with `deploy/local/stack test`, which makes a venv of them, or `{python} -m pip install -r examples/python/requirements.txt`",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => panic!("cannot run {python} ({e}): install Python 3, or set TXFLOW_PYTHON"),
    }
    std::process::Command::new(python)
}

/// The local stack's S3 server, as `deploy/local/stack test` tells the tests.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The S3 server's address, bucket and credentials; fails the test, with the fix, when no
/// S3 server was given.
pub fn s3() -> S3 {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: {START_STACK}, which starts its S3 server (versitygw) and sets TXFLOW_S3_*")
        })
    };
    S3 {
        endpoint: var("TXFLOW_S3_ENDPOINT"),
        bucket: var("TXFLOW_S3_BUCKET"),
        access_key: var("TXFLOW_S3_ACCESS_KEY"),
        secret_key: var("TXFLOW_S3_SECRET_KEY"),
    }
}

/// Whether the tests run on the cluster of `deploy/local/stack up --cluster` (three brokers,
/// three store nodes), as `stack test --cluster` says.
pub fn on_cluster() -> bool {
    std::env::var("TXFLOW_CLUSTER").is_ok_and(|v| v == "1")
}

/// Runs `deploy/local/stack ARGS` for a test that stops or starts one of the stack's
/// services; fails the test if it fails.
pub fn stack(args: &[&str]) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stack");
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", script.display()));
    assert!(
        status.success(),
        "{} {args:?} failed; this test needs deploy/local/stack's own services (same TXFLOW_STACK_DIR)",
        script.display()
    );
}

/// Brings the stack's services back however a test that stopped one ends, so that later
/// tests find them.
pub struct StackBack;

impl Drop for StackBack {
    fn drop(&mut self) {
        stack(&["up"]);
    }
}
