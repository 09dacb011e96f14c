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
use txflow_tests::{delete_all_records, eventually, python, read_topic, s3, unique_name, S3};

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
        pipeline.ledger_topic.as_str(),
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

/// `txflow accounts export`, in account order.
fn accounts(pipeline: &Pipeline) -> Vec<String> {
    let mut lines: Vec<String> = pipeline
        .txflow(&["accounts", "export"])
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `txflow replay` of what was stamped from `from_ms` to `to_ms`, with `more` arguments;
/// the events it published.
fn replay(
    pipeline: &Pipeline,
    env: &[(&str, &str)],
    (from_ms, to_ms): (i64, i64),
    more: &[&str],
) -> u64 {
    let (from, to) = (from_ms.to_string(), to_ms.to_string());
    let mut args = vec!["replay", "--from", &from, "--to", &to];
    args.extend_from_slice(more);
    let out = pipeline.txflow_with(&args, env);
    let report: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("a report")).expect("a JSON report");
    report["events"].as_u64().expect("a count of events")
}

#[test]
fn a_replayed_range_changes_no_balance_and_rebuilds_a_fresh_ledger_and_the_audit_reads_the_archive()
{
    let s3 = s3();
    let live = Pipeline::new(3);
    let url = format!("s3://{}/{}", s3.bucket, unique_name("replay"));
    let storage = [
        ("TXFLOW_ARCHIVER__STORAGE__URL", url.as_str()),
        ("TXFLOW_ARCHIVER__STORAGE__ENDPOINT", &s3.endpoint),
        ("TXFLOW_ARCHIVER__STORAGE__ACCESS_KEY_ID", &s3.access_key),
        (
            "TXFLOW_ARCHIVER__STORAGE__SECRET_ACCESS_KEY",
            &s3.secret_key,
        ),
    ];
    let mut archiver_env = storage.to_vec();
    archiver_env.push(("TXFLOW_ARCHIVER__ROLL_MS", "500"));
    let mut router = live.spawn_router_with("r0", &[]);
    let mut ledger = live.spawn_ledger("l0");
    let mut archiver = live.spawn_archiver_with("a0", &archiver_env);
    // Every account opened first, with enough for every debit to apply: then no outcome
    // depends on how different accounts' events interleave (a transfer to an account not
    // opened yet is refused), which a replay does not keep across partitions.
    let start_ms = now_ms();
    live.txflow(&[
        "produce",
        "--openings",
        "--count",
        "0",
        "--accounts",
        "30",
        "--topic",
        &live.events_topic,
    ]);
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (accounts(&live).len() == 30).then_some(()),
        || format!("the accounts were not opened:\n{}", ledger.log_text()),
    );
    let opened_ms = now_ms();
    let mut producer = live.spawn_produce(&[
        "--topic",
        &live.events_topic,
        "--count",
        "1500",
        "--rate",
        "500",
        "--accounts",
        "30",
        "--duplicates",
        "0.03",
        "--conflicts",
        "0.01",
    ]);
    producer.wait(Duration::from_secs(60));
    let observed = wait_until_drained(&live, Duration::from_secs(120), &[&ledger]);
    let events = read_topic(&live.events_topic, "read_committed").len();
    eventually(
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let archived = archived(&s3, &url, &live.results_topic).0;
            let archived_events = archived
                .keys()
                .filter(|id| id.0 == live.events_topic)
                .count();
            (archived_events == events).then_some(())
        },
        || {
            format!(
                "the archive lacks events; archiver log:\n{}",
                archiver.log_text()
            )
        },
    );
    let balances = accounts(&live);
    assert!(balances.len() >= 30, "{balances:?}");

    // Every archived event once more, straight into the live ledger: each is one it applied.
    let consumed = ledger.metric("txflow_records_total");
    let replayed = replay(
        &live,
        &storage,
        (start_ms, now_ms()),
        &["--to-topic", &live.ledger_topic],
    );
    assert_eq!(replayed, events as u64);
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || (ledger.metric("txflow_records_total") >= consumed + replayed).then_some(()),
        || format!("the ledger did not take the replay:\n{}", ledger.log_text()),
    );
    assert_eq!(accounts(&live), balances, "a replay changed a balance");

    verify(&live, &observed);

    // Into a fresh pipeline, through its router: the same balances.
    let fresh = Pipeline::new(3);
    let mut fresh_router = fresh.spawn_router_with("r0", &[]);
    let mut fresh_ledger = fresh.spawn_ledger("l0");
    let into_fresh = [
        "--archived-topic",
        live.events_topic.as_str(),
        "--to-topic",
        fresh.events_topic.as_str(),
    ];
    // The openings' time range first, then the rest: as the live ledger took them.
    let openings = replay(&fresh, &storage, (start_ms, opened_ms), &into_fresh);
    assert_eq!(openings, 30);
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (accounts(&fresh).len() == 30).then_some(()),
        || {
            format!(
                "the fresh accounts were not opened:\n{}",
                fresh_ledger.log_text()
            )
        },
    );
    let rest = replay(&fresh, &storage, (opened_ms, now_ms()), &into_fresh);
    assert_eq!(openings + rest, replayed);
    eventually(
        Duration::from_secs(120),
        Duration::from_secs(1),
        || (accounts(&fresh) == balances).then_some(()),
        || {
            format!(
                "the fresh ledger's balances differ from the live one's:\n{:?}\n{:?}",
                accounts(&fresh),
                balances
            )
        },
    );

    // Once the archive holds all of the ledger and results topics, retention drops every
    // record of both: the topics alone explain no balance, the archive all of them.
    let topics = [live.ledger_topic.as_str(), live.results_topic.as_str()];
    let on_the_log = committed(&topics);
    eventually(
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let archive = archived(&s3, &url, &live.results_topic).0;
            on_the_log
                .keys()
                .all(|id| archive.contains_key(id))
                .then_some(())
        },
        || {
            format!(
                "the archive lacks records; archiver log:\n{}",
                archiver.log_text()
            )
        },
    );
    for topic in topics {
        delete_all_records(topic, live.partitions);
    }
    let without = live.txflow_failing(&["audit"]);
    assert!(without.contains("store differs"), "{without}");
    let with = live.txflow_with(&["audit", "--archive"], &storage);
    assert!(with.contains("the audit passed"), "{with}");
    assert!(
        with.contains(&format!(
            "{}: {} records, {} of them from the archive alone",
            live.results_topic,
            on_the_log
                .keys()
                .filter(|id| id.0 == live.results_topic)
                .count(),
            on_the_log
                .keys()
                .filter(|id| id.0 == live.results_topic)
                .count()
        )),
        "{with}"
    );
    for stage in [
        &mut archiver,
        &mut ledger,
        &mut router,
        &mut fresh_ledger,
        &mut fresh_router,
    ] {
        stage.terminate();
    }
}
