//! The archiver on Kafka and the stack's S3 server under SIGKILLs: the archive holds every
//! committed record of the events and results topics exactly once, and nothing of an
//! aborted transaction, as a reader outside txflow (boto3 and fastavro,
//! examples/python/read_archive.py) lists and reads it.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use txflow::adapters::objects::{ObjectStorage, StorageConfig};
use txflow::config::Secret;
use txflow::domain::RetryClass;
use txflow::ports::{Created, Objects};
use txflow_tests::invariants::{verify, wait_until_drained};
use txflow_tests::process::Pipeline;
use txflow_tests::{eventually, python, read_topic, s3, unique_name, S3};

/// (topic, partition, offset) → the value, as hex.
type Records = BTreeMap<(String, i64, i64), String>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn committed(topics: &[&str]) -> Records {
    let mut all = Records::new();
    for topic in topics {
        for record in read_topic(topic, "read_committed") {
            let value = hex(record.value.as_deref().unwrap_or_default());
            all.insert(
                (
                    (*topic).to_owned(),
                    i64::from(record.partition),
                    record.offset,
                ),
                value,
            );
        }
    }
    all
}

/// The archive at `url` as boto3 lists it and fastavro reads it; fails on a record archived
/// twice. Also the number of results with no decoded value.
fn archived(s3: &S3, url: &str, results_topic: &str) -> (Records, usize) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python/read_archive.py");
    let output = python()
        .arg(script)
        .args([url, "--endpoint", &s3.endpoint])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("running read_archive.py");
    assert!(
        output.status.success(),
        "read_archive.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut all = Records::new();
    let mut undecoded = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let id = (
            record["topic"].as_str().unwrap().to_owned(),
            record["partition"].as_i64().unwrap(),
            record["offset"].as_i64().unwrap(),
        );
        if id.0 == results_topic && record["decoded"].is_null() {
            undecoded += 1;
        }
        let value = record["value"].as_str().unwrap_or_default().to_owned();
        assert!(
            all.insert(id.clone(), value).is_none(),
            "{id:?} is archived twice (in {})",
            record["file"]
        );
    }
    (all, undecoded)
}

#[test]
fn sigkilled_archiver_archives_every_committed_record_exactly_once() {
    let s3 = s3();
    let pipeline = Pipeline::new(3);
    let url = format!("s3://{}/{}", s3.bucket, unique_name("archive"));
    let archiver_env = [
        ("TXFLOW_ARCHIVER__STORAGE__URL", url.as_str()),
        ("TXFLOW_ARCHIVER__STORAGE__ENDPOINT", &s3.endpoint),
        ("TXFLOW_ARCHIVER__STORAGE__ACCESS_KEY_ID", &s3.access_key),
        (
            "TXFLOW_ARCHIVER__STORAGE__SECRET_ACCESS_KEY",
            &s3.secret_key,
        ),
        ("TXFLOW_ARCHIVER__ROLL_BYTES", "20000"),
        ("TXFLOW_ARCHIVER__ROLL_MS", "700"),
    ];
    let mut producer = pipeline.spawn_produce(&[
        "--topic",
        &pipeline.events_topic,
        "--count",
        "8000",
        "--rate",
        "300",
        "--accounts",
        "40",
        "--duplicates",
        "0.02",
    ]);
    let mut router = pipeline.spawn_router_with("r0", &[]);
    // Each transaction stays open 300 ms after its records are sent: a ledger killed then
    // leaves them on the results topic, aborted.
    let faults = [("TXFLOW_FAULT_IN_TRANSACTION_MS", "300")];
    let mut ledger = pipeline.spawn_ledger_with("l0", &faults);
    let mut archiver = pipeline.spawn_archiver_with("a0", &archiver_env);
    let mut rng = rand::rng();
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2500)));
        archiver.kill();
        if round % 2 == 1 {
            // Once it is busy, so that the kill lands in a transaction.
            eventually(
                Duration::from_secs(60),
                Duration::from_millis(50),
                || (ledger.log_lines_with("batch committed") > 0).then_some(()),
                || format!("the ledger committed nothing:\n{}", ledger.log_text()),
            );
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
            ledger.kill();
            ledger = pipeline.spawn_ledger_with("l0", &faults);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        archiver = pipeline.spawn_archiver_with("a0", &archiver_env);
    }
    producer.wait(Duration::from_secs(120));
    let observed = wait_until_drained(&pipeline, Duration::from_secs(180), &[&ledger]);
    let topics = [
        pipeline.events_topic.as_str(),
        pipeline.results_topic.as_str(),
    ];
    let committed = committed(&topics);
    let (archive, undecoded) = eventually(
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            let read = archived(&s3, &url, &pipeline.results_topic);
            (read.0.len() >= committed.len()).then_some(read)
        },
        || {
            format!(
                "archived fewer records than the {} committed; archiver log:\n{}",
                committed.len(),
                archiver.log_text()
            )
        },
    );
    let results = committed
        .keys()
        .filter(|id| id.0 == pipeline.results_topic)
        .count();
    let aborted = read_topic(&pipeline.results_topic, "read_uncommitted").len() - results;
    eprintln!(
        "archive: {} records ({results} results); {aborted} records of aborted transactions on the results topic",
        archive.len(),
    );
    assert!(
        aborted > 0,
        "the ledger's kills left aborted records to leave out"
    );
    let extra: Vec<_> = archive
        .keys()
        .filter(|id| !committed.contains_key(id))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "archived, yet not committed (aborted?): {extra:?}"
    );
    assert_eq!(
        archive, committed,
        "the archive holds what a read_committed reader reads"
    );
    assert_eq!(
        undecoded, 0,
        "every result decoded as JSON beside its bytes"
    );
    archiver.terminate();
    ledger.terminate();
    router.terminate();
    verify(&pipeline, &observed);
}

fn storage(s3: &S3, url: &str, secret: &str) -> ObjectStorage {
    ObjectStorage::new(&StorageConfig {
        url: url.to_owned(),
        endpoint: Some(s3.endpoint.clone()),
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(Secret(secret.to_owned())),
        ..StorageConfig::default()
    })
    .expect("a storage configuration")
}

#[tokio::test]
async fn the_s3_server_creates_an_object_once_and_refuses_a_wrong_key() {
    let s3 = s3();
    let url = format!("s3://{}/{}", s3.bucket, unique_name("objects"));
    let objects = storage(&s3, &url, &s3.secret_key);
    let key = "t/date=2026-11-30/hour=23/0001-00000000000000000005.avro";
    assert_eq!(
        objects.create(key, b"first".to_vec()).await.unwrap(),
        Created::New
    );
    // What a second writer of the same range meets: the first file, left as it was.
    assert_eq!(
        objects.create(key, b"second".to_vec()).await.unwrap(),
        Created::AlreadyThere
    );
    assert_eq!(objects.get(key).await.unwrap(), b"first");
    assert_eq!(objects.list("t/").await.unwrap(), vec![key.to_owned()]);

    let wrong = storage(&s3, &url, "not-the-secret");
    let refused = wrong.list("").await.unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
}

#[test]
fn an_archiver_given_a_bucket_that_does_not_exist_says_so_at_start() {
    let s3 = s3();
    let pipeline = Pipeline::new(1);
    let url = format!("s3://no-such-bucket-{}", std::process::id());
    let mut archiver = pipeline.spawn_archiver_with(
        "a0",
        &[
            ("TXFLOW_ARCHIVER__STORAGE__URL", url.as_str()),
            ("TXFLOW_ARCHIVER__STORAGE__ENDPOINT", &s3.endpoint),
            ("TXFLOW_ARCHIVER__STORAGE__ACCESS_KEY_ID", &s3.access_key),
            (
                "TXFLOW_ARCHIVER__STORAGE__SECRET_ACCESS_KEY",
                &s3.secret_key,
            ),
        ],
    );
    let log = archiver.wait_for_failure(Duration::from_secs(60));
    assert!(
        log.contains(&format!("archiver.storage.url {url}")),
        "the failure names the setting: {log}"
    );
}
