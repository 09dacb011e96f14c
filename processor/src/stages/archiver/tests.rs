//! The archiver on the embedded log and object storage in memory: every record in exactly
//! one file, across restarts and files already written by a member that crashed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::adapters::embedded::Embedded;
use crate::adapters::objects::ObjectStorage;
use crate::pipeline::LoopConfig;
use crate::ports::{DelayedTopics, Publisher};
use crate::telemetry::{Metrics, Readiness};
use crate::wire::OutputRecord;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    TempDir(std::env::temp_dir().join(format!(
        "txflow-archiver-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )))
}

fn telemetry() -> StageTelemetry {
    let metrics = Arc::new(Metrics::new());
    StageTelemetry {
        stage: "archiver",
        readiness: Arc::new(Readiness::reported(&metrics, "archiver")),
        metrics,
    }
}

fn loop_config() -> LoopConfig {
    LoopConfig {
        max_records: 7,
        max_wait: Duration::from_millis(10),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

fn output(topic: &str, n: usize) -> OutputRecord {
    OutputRecord {
        topic: topic.to_owned(),
        key: Some(format!("acct-{}", n % 5).into_bytes()),
        value: Some(format!("value {n}").into_bytes()),
        headers: vec![("n".to_owned(), n.to_string().into_bytes())],
    }
}

async fn publish(embedded: &Embedded, topic: &str, range: std::ops::Range<usize>) {
    let outcomes = embedded
        .publisher()
        .publish(range.map(|n| output(topic, n)).collect())
        .await;
    assert!(outcomes.iter().all(Result::is_ok));
}

/// Runs an archiver on `embedded` until nothing is left to archive (files roll after 20 ms),
/// then stops it the way SIGTERM does.
async fn archive(
    embedded: &Embedded,
    archiver: &Archiver<ObjectStorage>,
    telemetry: &StageTelemetry,
) {
    let log = embedded.log("txflow-archiver", &["ev", "res"], &DelayedTopics::default());
    let (stop, stopped) = watch::channel(false);
    let config = loop_config();
    let running = run(log, archiver, &config, telemetry, stopped);
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.send(true).unwrap();
    };
    let (outcome, ()) = tokio::join!(running, stopping);
    outcome.unwrap();
}

/// Every archived record by (topic, partition, offset), failing on one archived twice.
async fn archived(objects: &ObjectStorage) -> BTreeMap<(String, i32, i64), InputRecord> {
    let mut all = BTreeMap::new();
    for key in objects.list("").await.unwrap() {
        let records = file::decode(&objects.get(&key).await.unwrap()).unwrap();
        assert_eq!(key, file::key_of(&records[0]), "a file under another key");
        for record in records {
            let id = (record.topic.clone(), record.partition, record.offset);
            assert!(
                all.insert(id.clone(), record).is_none(),
                "{id:?} archived twice"
            );
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_lands_in_one_file_across_restarts_and_files_a_crash_left() {
    let dir = temp_dir();
    let embedded = Embedded::open(&dir.0).unwrap();
    publish(&embedded, "ev", 0..50).await;
    publish(&embedded, "res", 0..30).await;
    let objects = ObjectStorage::in_memory();
    // An archiver died after writing these files and before committing past them; the
    // second one ends beyond where the next archiver's own file would.
    let events = embedded.read_to_end("ev").unwrap();
    let results = embedded.read_to_end("res").unwrap();
    for left in [&events[..10], &results[..30]] {
        let bytes = file::encode(left, |_| None).unwrap();
        objects
            .create(&file::key_of(&left[0]), bytes)
            .await
            .unwrap();
    }
    let archiver = Archiver {
        objects,
        codec: Arc::new(Codec::builtin()),
        topics: ArchivedTopics {
            events: "ev".to_owned(),
            ledger: "led".to_owned(),
            results: "res".to_owned(),
        },
        roll: Roll {
            bytes: 600,
            after: Duration::from_millis(20),
        },
    };
    let telemetry = telemetry();
    archive(&embedded, &archiver, &telemetry).await;
    // A restart with other file sizes, after more records came.
    publish(&embedded, "ev", 50..80).await;
    let archiver = Archiver {
        roll: Roll {
            bytes: 250,
            after: Duration::from_millis(20),
        },
        ..archiver
    };
    archive(&embedded, &archiver, &telemetry).await;

    let all = archived(&archiver.objects).await;
    let read: Vec<InputRecord> = embedded
        .read_to_end("ev")
        .unwrap()
        .into_iter()
        .chain(embedded.read_to_end("res").unwrap())
        .collect();
    assert_eq!(all.len(), read.len(), "every record archived, none twice");
    for record in read {
        let id = (record.topic.clone(), record.partition, record.offset);
        assert_eq!(all.get(&id), Some(&record), "{id:?}");
    }
    let files = &telemetry.metrics.archive_files;
    assert_eq!(files.with_label_values(&["ev", "already_there"]).get(), 1);
    assert_eq!(files.with_label_values(&["res", "already_there"]).get(), 1);
    assert!(files.with_label_values(&["ev", "written"]).get() >= 5);
    assert_eq!(files.with_label_values(&["res", "written"]).get(), 0);
    assert_eq!(
        telemetry
            .metrics
            .archived_records
            .with_label_values(&["ev"])
            .get(),
        70
    );
}

fn at(offset: i64, ms: i64) -> InputRecord {
    InputRecord {
        topic: "ev".to_owned(),
        partition: 0,
        offset,
        timestamp: Some(ms),
        key: None,
        value: Some(vec![0; 68]),
        headers: Vec::new(),
    }
}

#[test]
fn a_file_ends_where_a_later_hour_begins() {
    let now = Instant::now();
    let roll = Roll {
        bytes: 1 << 20,
        after: Duration::from_secs(60),
    };
    let mut partition = Partition::default();
    let hour = 3_600_000;
    partition.take(at(1, 5 * hour - 1), now);
    // A producer's clock a little behind: the same file.
    partition.take(at(2, 5 * hour - 2_000), now);
    assert!(!partition.due(roll, now));
    partition.take(at(3, 5 * hour), now);
    partition.take(at(4, 5 * hour + 1), now);
    assert!(partition.due(roll, now));
    assert_eq!(
        partition
            .file()
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let written = partition.written(now);
    assert_eq!(written.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        partition
            .file()
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(!partition.due(roll, now));
    assert!(partition.due(roll, now + Duration::from_secs(60)));
}

#[test]
fn a_file_found_in_place_is_taken_up_to_its_last_record() {
    let now = Instant::now();
    let mut partition = Partition::default();
    for offset in 10..15 {
        partition.take(at(offset, 0), now);
    }
    // The file found holds 10..=17: what is read up to 17 is committed once 17 is read.
    partition.adopt(17, now);
    assert!(partition.file().is_empty());
    assert_eq!(partition.covered_to_commit(), None);
    for offset in 15..20 {
        partition.take(at(offset, 0), now);
    }
    let covered = partition.covered_to_commit().unwrap();
    assert_eq!(
        covered.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (10..=17).collect::<Vec<_>>()
    );
    assert_eq!(
        partition
            .file()
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        [18, 19]
    );
    assert_eq!(partition.first_held().map(|r| r.offset), Some(18));
}

mod replays {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{EventType, TransactionEvent};
    use crate::routing::Pattern;
    use crate::stages::archiver::replay::{replay, Replay, RUNS_PREFIX};

    const HOUR: i64 = 3_600_000;
    /// 2026-11-30T22:00Z.
    const T0: i64 = 1_796_076_000_000;

    fn event(n: i64, event_type: EventType) -> TransactionEvent {
        TransactionEvent {
            event_id: format!("e-{n}"),
            event_type,
            account_id: format!("acct-{}", n % 3),
            counterparty_account_id: None,
            amount_minor: 100 + n,
            currency: "EUR".to_owned(),
            occurred_at: T0,
            source: "test".to_owned(),
            attributes: BTreeMap::new(),
        }
    }

    /// The archive of 12 events, one every 15 minutes from 22:00, in files of an hour each,
    /// and a poison record at 22:20.
    async fn archive(codec: &Codec) -> ObjectStorage {
        let objects = ObjectStorage::in_memory();
        let mut records: Vec<InputRecord> = (0..12)
            .map(|n| {
                let kind = if n % 2 == 0 {
                    EventType::Deposit
                } else {
                    EventType::Withdrawal
                };
                let value = codec
                    .encode(Record::TransactionEvent, &event(n, kind))
                    .unwrap();
                InputRecord {
                    topic: "ev".to_owned(),
                    partition: 0,
                    offset: n,
                    timestamp: Some(T0 + n * HOUR / 4),
                    key: Some(format!("acct-{}", n % 3).into_bytes()),
                    value: Some(value),
                    headers: vec![("n".to_owned(), n.to_string().into_bytes())],
                }
            })
            .collect();
        records.insert(
            2,
            InputRecord {
                offset: 100,
                timestamp: Some(T0 + HOUR / 3),
                value: Some(b"poison".to_vec()),
                ..records[1].clone()
            },
        );
        for hour in
            records.chunk_by(|a, b| a.timestamp.unwrap() / HOUR == b.timestamp.unwrap() / HOUR)
        {
            let bytes = file::encode(hour, |_| None).unwrap();
            objects
                .create(&file::key_of(&hour[0]), bytes)
                .await
                .unwrap();
        }
        objects
    }

    fn plan<'a>(from_ms: i64, to_ms: i64, run_id: &'a str) -> Replay<'a> {
        Replay {
            topic: "ev",
            from_ms,
            to_ms,
            only: None,
            to_topic: "again",
            rate: None,
            dry_run: false,
            run_id,
        }
    }

    fn numbers(records: &[InputRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.header("n").unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_time_range_is_published_again_as_archived_and_a_run_goes_on_where_it_stopped() {
        let dir = temp_dir();
        let embedded = Embedded::open(&dir.0).unwrap();
        let codec = Codec::builtin();
        let objects = archive(&codec).await;
        // 22:30 to 23:30: events 2 to 5 (the first file's last two, the second's first two).
        let done = replay(
            &objects,
            &embedded.publisher(),
            &codec,
            &plan(T0 + HOUR / 2, T0 + 3 * HOUR / 2, "r1"),
            |_, _| {},
        )
        .await
        .unwrap();
        let again = embedded.read_to_end("again").unwrap();
        assert_eq!(numbers(&again), ["2", "3", "4", "5"]);
        let archived = file::decode(
            &objects
                .get(&objects.list("ev/").await.unwrap()[0])
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(again[0].value, archived[3].value, "published as archived");
        assert_eq!((done.files, done.events, done.not_events), (2, 4, 0));

        // The poison record is counted, not published; --where leaves out withdrawals.
        let deposits = Pattern::parse_json(r#"{"event_type": ["DEPOSIT"]}"#).unwrap();
        let only_deposits = Replay {
            only: Some(&deposits),
            ..plan(T0, T0 + 3 * HOUR, "r2")
        };
        let done = replay(
            &objects,
            &embedded.publisher(),
            &codec,
            &only_deposits,
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!((done.events, done.left_out, done.not_events), (6, 6, 1));

        // A dry run publishes nothing and marks nothing.
        let dry = Replay {
            dry_run: true,
            ..plan(T0, T0 + 3 * HOUR, "r3")
        };
        let before = embedded.read_to_end("again").unwrap().len();
        let done = replay(&objects, &embedded.publisher(), &codec, &dry, |_, _| {})
            .await
            .unwrap();
        assert_eq!(done.events, 12);
        assert_eq!(embedded.read_to_end("again").unwrap().len(), before);
        assert!(objects
            .list(&format!("{RUNS_PREFIX}/r3/"))
            .await
            .unwrap()
            .is_empty());

        // Run r1 again over all of it: its first two files are done, the third is not.
        let mut seen = Vec::new();
        let done = replay(
            &objects,
            &embedded.publisher(),
            &codec,
            &plan(T0, T0 + 3 * HOUR, "r1"),
            |_, key| seen.push(key.to_owned()),
        )
        .await
        .unwrap();
        assert_eq!((done.files, done.files_done_before), (3, 2));
        assert_eq!(seen.len(), 1);
        assert_eq!(
            numbers(&embedded.read_to_end("again").unwrap()[before..]),
            ["8", "9", "10", "11"]
        );
    }
}
