//! The stages' Kafka log across a rebalance: a member that loses partitions while it reads a
//! batch, or while the batch's transaction waits, never commits that batch beside the
//! partitions' new owner. Each member copies what it reads to an output topic in the
//! transaction that consumes it, as a stage writes results: every input must appear there
//! exactly once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use txflow::adapters::kafka::{Delivery, KafkaLog};
use txflow::app::Config;
use txflow::pipeline::Membership;
use txflow::ports::{DelayedTopics, Log, LogError};
use txflow::wire::{InputRecord, OutputRecord};
use txflow_tests::{
    create_topics, eventually, kafka_bootstrap, kafka_config, produce_committed, read_topic,
    unique_name, TIMEOUT,
};

const RECORDS: usize = 4_000;

/// A member of `group` as a stage joins it, with heartbeats often enough that it hears of
/// a rebalance within a fraction of a second.
fn member(group: &str, instance: &str, input: &str) -> KafkaLog {
    let mut kafka = Config::default().kafka;
    kafka.bootstrap_servers = kafka_bootstrap();
    kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "200".into());
    let membership = Membership::new("smoke", group, Some(instance), 6_000);
    KafkaLog::new(
        &kafka,
        &membership,
        &[input],
        &DelayedTopics::new([]),
        Delivery::ExactlyOnce,
    )
    .expect("a member of the group")
}

/// Each record of `batch`, copied to `out`.
fn copies(batch: &[InputRecord], out: &str) -> Vec<OutputRecord> {
    batch
        .iter()
        .map(|record| OutputRecord {
            topic: out.to_owned(),
            key: record.key.clone(),
            value: record.value.clone(),
            headers: Vec::new(),
        })
        .collect()
}

/// What a batch must be whatever the group does: no record twice, and no record of a
/// partition the member does not own when it gets the batch.
fn check_batch(log: &KafkaLog, batch: &[InputRecord]) {
    let mut offsets = BTreeSet::new();
    for record in batch {
        assert!(
            offsets.insert((record.partition, record.offset)),
            "partition {} offset {} twice in one batch",
            record.partition,
            record.offset
        );
    }
    let partitions: BTreeSet<i32> = batch.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() <= log.assigned_partitions(),
        "a batch holds records of partitions {partitions:?}, the member owns {} partition(s)",
        log.assigned_partitions()
    );
}

/// A batch that is not empty, read as a stage reads it.
async fn some_batch(log: &mut KafkaLog, max_records: usize) -> Vec<InputRecord> {
    loop {
        let batch = log
            .next_batch(max_records, Duration::from_secs(1))
            .await
            .expect("a batch");
        if log.reassignment_pending() {
            log.reassigned().await.expect("the new assignment");
        }
        if !batch.is_empty() {
            check_batch(log, &batch);
            return batch;
        }
    }
}

/// Commits `batch` with its copies as a stage does; an aborted batch is read again.
async fn copy(log: &mut KafkaLog, batch: &[InputRecord], out: &str) {
    match log.commit(batch, copies(batch, out)).await {
        Ok(()) => {}
        Err(LogError::Aborted(_)) => log.rewind(batch).await.expect("rewinding"),
        Err(e) => panic!("committing: {e}"),
    }
}

/// Reads, copies and commits as a stage does until `stop`.
async fn copy_until(mut log: KafkaLog, out: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let batch = log
            .next_batch(500, Duration::from_millis(200))
            .await
            .expect("a batch");
        if log.reassignment_pending() {
            log.reassigned().await.expect("the new assignment");
        }
        if !batch.is_empty() {
            check_batch(&log, &batch);
            copy(&mut log, &batch, &out).await;
        }
    }
    log.close().await;
}

/// Waits until the group's coordinator is preparing a rebalance.
fn rebalance_begun(group: &str) {
    let consumer: BaseConsumer = kafka_config().create().expect("an admin consumer");
    eventually(
        TIMEOUT,
        Duration::from_millis(50),
        || {
            let groups = consumer.fetch_group_list(Some(group), TIMEOUT).ok()?;
            (groups.groups().first()?.state() == "PreparingRebalance").then_some(())
        },
        || format!("group {group} never began a rebalance"),
    );
}

/// `count` records numbered from `from`, written to `topic`; their values.
fn produce(topic: &str, from: usize, count: usize) -> Vec<String> {
    let values: Vec<String> = (from..from + count)
        .map(|i| format!("record-{i}"))
        .collect();
    let records: Vec<(Option<&[u8]>, &[u8])> = values
        .iter()
        .map(|v| (Some(v.as_bytes()), v.as_bytes()))
        .collect();
    produce_committed(topic, &records);
    values
}

/// Two rebalances while member A works, each at a bad moment. First B joins while A has
/// records fetched and not yet read; A reads on through the revocation (librdkafka pauses
/// the revoked partitions, so what was queued is not handed out after it; what A had
/// already taken in the same read the log forgets). Then C joins while A's transaction for
/// a batch read before it has not run yet: it must be fenced, not committed under the new
/// generation. Every record is copied exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_loses_partitions_commits_nothing_it_read_before() {
    let input = unique_name("rebalance_in");
    let out = unique_name("rebalance_out");
    let group = unique_name("rebalance");
    create_topics(&[&input, &out], 2);
    let mut expected = produce(&input, 0, RECORDS);
    let stop = Arc::new(AtomicBool::new(false));

    let mut a = member(&group, "a", &input);
    let first = some_batch(&mut a, 1).await;
    copy(&mut a, &first, &out).await;
    // A has not polled since: the rest of what it fetched is queued when its heartbeats
    // (every 200 ms) hear of the rebalance.
    let b = tokio::spawn(copy_until(
        member(&group, "b", &input),
        out.clone(),
        Arc::clone(&stop),
    ));
    tokio::task::block_in_place(|| rebalance_begun(&group));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read_across = a
        .next_batch(RECORDS, Duration::from_secs(1))
        .await
        .expect("a batch");
    if a.reassignment_pending() {
        a.reassigned().await.expect("the new assignment");
    }
    check_batch(&a, &read_across);
    copy(&mut a, &read_across, &out).await;

    expected.extend(produce(&input, RECORDS, RECORDS));
    let stale = some_batch(&mut a, 10).await;
    let straddling = a.commit(&stale, copies(&stale, &out));
    let c = tokio::spawn(copy_until(
        member(&group, "c", &input),
        out.clone(),
        Arc::clone(&stop),
    ));
    // A reads on, as a stage does while its transaction runs, until it has its new
    // assignment: the group's next generation exists. What it reads is read again.
    let mut read_meanwhile = stale.clone();
    loop {
        let batch = a
            .next_batch(RECORDS, Duration::from_millis(100))
            .await
            .expect("a batch");
        check_batch(&a, &batch);
        read_meanwhile.extend(batch);
        if a.reassignment_pending() {
            a.reassigned().await.expect("the new assignment");
            break;
        }
    }
    match straddling.await {
        Err(LogError::Aborted(_)) => {}
        other => panic!("a batch read before the rebalance committed after it: {other:?}"),
    }
    a.rewind(&read_meanwhile).await.expect("rewinding");
    let a = tokio::spawn(copy_until(a, out.clone(), Arc::clone(&stop)));

    let copied = || read_topic(&out, "read_committed").len();
    eventually(
        TIMEOUT,
        Duration::from_millis(500),
        || (copied() >= expected.len()).then_some(()),
        || format!("{} of {} records copied", copied(), expected.len()),
    );
    stop.store(true, Ordering::SeqCst);
    for member in [a, b, c] {
        member.await.expect("a member stops");
    }
    let mut copied: Vec<String> = read_topic(&out, "read_committed")
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap_or_default()).expect("text"))
        .collect();
    copied.sort();
    expected.sort();
    assert_eq!(copied, expected, "every record copied exactly once");
}
