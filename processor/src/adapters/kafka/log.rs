//! The stages' log: a `read_committed` consumer in a group with its transactional producer.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::access::{check_access, failed_doing, is_refusal};
use super::instance::{self, InstanceClaim};
use super::KafkaConfig;
use super::{ACCESS_PATIENCE, CALL_TIMEOUT};
use crate::domain::Cause;
use crate::pipeline::Membership;
use crate::ports::{Backlog, DelayedTopics, Log, LogError};
use crate::wire::{InputRecord, OutputRecord};

use super::client::{
    client_config, hear_error, hear_statistics, idempotent_producer, input_record, owned_headers,
    producer_config, send_when_room, DeliveryReport, ReportingProducer,
};
use super::reader::read_until_end;

/// How a stage's outputs and consumed offsets reach Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Outputs and offsets in one transaction: what txflow promises.
    ExactlyOnce,
    /// Outputs flushed, then offsets committed: the benchmark's baseline. After a crash
    /// between the two, a batch's results are published again (balances stay exactly-once,
    /// because the store refuses to apply an event twice).
    AtLeastOnce,
}

/// A stage consumer's config: read_committed, offsets committed by the stage, partitions
/// assigned by range; how long and for how much a fetch waits, unless `kafka.properties`
/// sets them.
fn stage_consumer_config(kafka: &KafkaConfig, group: &Membership) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", &group.group_id)
        .set("session.timeout.ms", group.session_timeout_ms.to_string())
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "range");
    // A read_committed fetch waiting on the broker is not woken by a transaction's commit
    // marker: it sleeps out fetch.wait.max.ms (librdkafka's default, 500 ms), which
    // would be the pipeline's latency floor.
    if !kafka.properties.contains_key("fetch.wait.max.ms") {
        config.set("fetch.wait.max.ms", "10");
    }
    // With the default of one byte, a fetch returns as soon as any record arrives: under
    // a steady stream that is a fetch every few milliseconds, broker CPU that the store
    // and the transactions compete for. 64 KiB holds a fetch for at most the 10 ms above.
    if !kafka.properties.contains_key("fetch.min.bytes") {
        config.set("fetch.min.bytes", "65536");
    }
    // The consumer lag the stage reports comes from librdkafka's statistics.
    if !kafka.properties.contains_key("statistics.interval.ms") {
        config.set("statistics.interval.ms", "5000");
    }
    config
}

/// Counts the partition assignments this member received, so that the log can tell a stage
/// its partitions changed even when a rebalance gave back the same ones; and the
/// revocations, so that it can forget what it read before one. Keeps the consumer lag of
/// each partition from librdkafka's statistics.
#[derive(Default)]
pub struct GroupEvents {
    assignments: AtomicU64,
    revocations: AtomicU64,
    lag: std::sync::Mutex<BTreeMap<(String, i32), i64>>,
    /// Every broker out of reach: librdkafka said so, and its statistics show none up since.
    unreachable: Arc<AtomicBool>,
}

impl ClientContext for GroupEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        hear_error(&self.unreachable, &error, reason);
    }

    /// Reads only the partitions' offsets from librdkafka's statistics, as JSON: whatever
    /// else a librdkafka version adds or renames there does not matter.
    fn stats_raw(&self, statistics: &[u8]) {
        let statistics: serde_json::Value = match serde_json::from_slice(statistics) {
            Ok(statistics) => statistics,
            Err(e) => {
                tracing::warn!("librdkafka's statistics are not JSON: {e}");
                return;
            }
        };
        hear_statistics(&self.unreachable, &statistics);
        let mut lag = self.lag.lock().expect("the lag lock");
        lag.clear();
        let topics = statistics["topics"].as_object().into_iter().flatten();
        for (topic, stats) in topics {
            for (partition, stats) in stats["partitions"].as_object().into_iter().flatten() {
                // librdkafka's own partition is -1.
                let Ok(partition) = partition.parse::<i32>() else {
                    continue;
                };
                if let (true, Some(records)) = (partition >= 0, partition_lag(stats)) {
                    lag.insert((topic.clone(), partition), records);
                }
            }
        }
    }
}

/// Whether a consumer error ends the stage: refused access, or librdkafka's own fatal state.
/// Anything else (a broker unreachable, a connection lost, a coordinator moving) librdkafka
/// recovers from by itself, and the stage waits for it.
fn hopeless(error: &KafkaError) -> bool {
    is_refusal(error)
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    | RDKafkaErrorCode::InvalidGroupId
            )
        )
}

/// The log's error for `error` met while doing `what`: fatal when it cannot heal, else the
/// log is unreachable for now.
fn unreachable_or_fatal(what: &str, error: KafkaError) -> LogError {
    let ends = hopeless(&error);
    let cause = Cause::context(failed_doing(what, &error), error);
    if ends {
        LogError::Fatal(cause)
    } else {
        LogError::Unavailable(cause)
    }
}

/// Records between a partition's read position and its last stable offset (the end a
/// `read_committed` consumer reads to), from its statistics. librdkafka's own
/// `consumer_lag` is measured from the offset this consumer committed, which it never
/// learns of: the stages commit through their transactions.
fn partition_lag(stats: &serde_json::Value) -> Option<i64> {
    let offset = |name: &str| stats[name].as_i64().filter(|offset| *offset >= 0);
    let end = offset("ls_offset")?;
    // Before the first record of an assignment: the committed offset, else where an
    // unread partition starts.
    let position = offset("app_offset")
        .or_else(|| offset("committed_offset"))
        .or_else(|| offset("lo_offset"))?;
    Some((end - position).max(0))
}

impl ConsumerContext for GroupEvents {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            self.assignments.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A group member and its transactional producer.
pub struct KafkaLog {
    consumer: Arc<StreamConsumer<GroupEvents>>,
    committer: Arc<Committer>,
    kafka: KafkaConfig,
    /// Topics whose records wait for their due time (the retry tiers).
    delayed: DelayedTopics,
    /// The group id of the reader of the retry tiers' unconsumed records: the stage's own
    /// with `.reader` after it, so that the ACL on the stage's group prefix covers it.
    reader_group: String,
    /// Partitions of delayed topics paused until their head record is due.
    waiting: BTreeMap<(String, i32), Instant>,
    /// The assignment count the stage last heard about.
    assignments_seen: Option<u64>,
    /// Records that arrived while the log was held, in arrival order.
    held: VecDeque<InputRecord>,
    /// The revocation count when the records in `held` were read.
    held_since: u64,
    /// This process's transactional id on this host, when it has one.
    _instance: Option<InstanceClaim>,
}

impl KafkaLog {
    /// Joins the group on `topics` and the `delayed` topics, after aborting whatever a
    /// predecessor with the same transactional id left open. Partitions are assigned by
    /// range, so that a member owns the same partition numbers of every topic: an account's
    /// records and its retries meet in one process.
    pub fn new(
        kafka: &KafkaConfig,
        group: &Membership,
        topics: &[&str],
        delayed: &DelayedTopics,
        delivery: Delivery,
    ) -> Result<Self, LogError> {
        let fatal =
            |what: &str, e: KafkaError| LogError::Fatal(Cause::context(failed_doing(what, &e), e));
        let instance = match delivery {
            Delivery::ExactlyOnce => Some(
                instance::claim(group.stage, &group.transactional_id())
                    .map_err(|e| LogError::Fatal(Cause::new(e)))?,
            ),
            Delivery::AtLeastOnce => None,
        };
        tokio::task::block_in_place(|| check_access(kafka, ACCESS_PATIENCE))
            .map_err(|e| LogError::Fatal(Cause::new(e)))?;
        let consumer_config = stage_consumer_config(kafka, group);
        // Held up by whichever client hears first that every broker is out of reach.
        let out_of_reach = Arc::new(AtomicBool::new(false));
        let events = GroupEvents {
            unreachable: Arc::clone(&out_of_reach),
            ..GroupEvents::default()
        };
        let consumer: Arc<StreamConsumer<GroupEvents>> = Arc::new(
            consumer_config
                .create_with_context(events)
                .map_err(|e| fatal("creating the consumer", e))?,
        );
        let renewal = (delivery == Delivery::ExactlyOnce).then(|| Renewal {
            kafka: kafka.clone(),
            transactional_id: group.transactional_id(),
            out_of_reach: Arc::clone(&out_of_reach),
        });
        let producer = match &renewal {
            None => idempotent_producer(kafka).map_err(|e| fatal("creating the producer", e))?,
            Some(renewal) => tokio::task::block_in_place(|| renewal.producer())
                .map_err(|e| fatal("creating the transactional producer", e))?,
        };
        let mut subscription: Vec<&str> = topics.to_vec();
        subscription.extend(delayed.topics().map(String::as_str));
        require_topics(&consumer, &subscription, &kafka.bootstrap_servers)?;
        consumer
            .subscribe(&subscription)
            .map_err(|e| fatal("subscribing", e))?;
        Ok(KafkaLog {
            consumer: Arc::clone(&consumer),
            committer: Arc::new(Committer {
                consumer,
                producer: Mutex::new(Arc::new(producer)),
                delivery,
                renewal,
                fencings: Mutex::new(Fencings::default()),
            }),
            kafka: kafka.clone(),
            delayed: delayed.clone(),
            reader_group: format!("{}.reader", group.group_id),
            waiting: BTreeMap::new(),
            assignments_seen: None,
            held: VecDeque::new(),
            held_since: 0,
            _instance: instance,
        })
    }

    /// Logs an error the consumer heals from, as the client's own error callback does: an
    /// outage's repeats at debug.
    fn heard(&self, error: &KafkaError) {
        hear_error(
            &self.consumer.context().unreachable,
            error,
            "while consuming",
        );
    }

    fn revocations(&self) -> u64 {
        self.consumer.context().revocations.load(Ordering::SeqCst)
    }

    /// Forgets what was read before the last revocation, in `batch` and held. Assignment is
    /// eager: a revocation takes every partition, and whoever owns one next reads it again
    /// from its committed offset, this member included. A record read before it must not be
    /// processed and committed after it, under the group's next generation: the broker would
    /// take the offsets of a partition this member may no longer own, and its new owner would
    /// publish the same results a second time.
    fn forget_if_revoked(&mut self, batch: &mut Vec<InputRecord>, read_since: &mut u64) {
        self.forget_held_if_revoked();
        let revocations = self.held_since;
        if *read_since == revocations {
            return;
        }
        *read_since = revocations;
        if !batch.is_empty() {
            tracing::info!(
                records = batch.len(),
                "partitions revoked while reading a batch: it is read again from the committed offsets"
            );
            batch.clear();
        }
    }

    /// Forgets the held records if a revocation came after they were read.
    fn forget_held_if_revoked(&mut self) {
        let revocations = self.revocations();
        if self.held_since != revocations {
            self.held.clear();
            self.held_since = revocations;
        }
    }

    /// Whether `record` is on a delayed topic and not due yet: then its partition is paused
    /// and wound back to it, to be resumed when it is due.
    fn hold_if_early(&mut self, record: &InputRecord) -> Result<bool, KafkaError> {
        let now = crate::pipeline::now_ms();
        let Some(due) = self.delayed.due(record, now) else {
            return Ok(false);
        };
        let wait = due - now;
        if wait <= 0 {
            return Ok(false);
        }
        let mut partition = TopicPartitionList::new();
        partition.add_partition(&record.topic, record.partition);
        self.consumer.pause(&partition)?;
        self.consumer.seek(
            &record.topic,
            record.partition,
            Offset::Offset(record.offset),
            CALL_TIMEOUT,
        )?;
        self.waiting.insert(
            (record.topic.clone(), record.partition),
            Instant::now() + Duration::from_millis(wait as u64),
        );
        Ok(true)
    }

    /// A record of a partition paused meanwhile: fetched before the pause, it comes again on
    /// resume from the offset the pause wound back to.
    fn is_waiting(&self, record: &InputRecord) -> bool {
        // Asked of every record: no key is built while nothing waits.
        !self.waiting.is_empty()
            && self
                .waiting
                .contains_key(&(record.topic.clone(), record.partition))
    }

    /// Resumes the waiting partitions that are due; returns how long until the next one is.
    fn resume_due(&mut self) -> Result<Option<Duration>, KafkaError> {
        let now = Instant::now();
        let due: Vec<(String, i32)> = self
            .waiting
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        if !due.is_empty() {
            let mut partitions = TopicPartitionList::new();
            for key in &due {
                partitions.add_partition(&key.0, key.1);
                self.waiting.remove(key);
            }
            self.consumer.resume(&partitions)?;
        }
        Ok(self
            .waiting
            .values()
            .min()
            .map(|at| at.saturating_duration_since(now)))
    }

    /// The records of the delayed topics, on the partitions this member holds, that the group
    /// has not consumed yet; read with a separate group-less reader up to their end.
    fn unconsumed(&self) -> Result<Vec<InputRecord>, KafkaError> {
        let assigned = self.consumer.assignment()?;
        let mut wanted = TopicPartitionList::new();
        for element in assigned.elements() {
            if self.delayed.contains(element.topic()) {
                wanted.add_partition(element.topic(), element.partition());
            }
        }
        if wanted.count() == 0 {
            return Ok(Vec::new());
        }
        let committed = self.consumer.committed_offsets(wanted, CALL_TIMEOUT)?;
        let mut by_topic: BTreeMap<String, TopicPartitionList> = BTreeMap::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            by_topic
                .entry(element.topic().to_owned())
                .or_default()
                .add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        let mut records = Vec::new();
        // One reader per topic: an end-of-partition event names the partition only.
        for start in by_topic.values() {
            records.extend(read_until_end(&self.kafka, &self.reader_group, start)?);
        }
        Ok(records)
    }
}

/// The writing half of a [`KafkaLog`]: a batch's transaction runs on its own thread with
/// it, while the log reads on.
struct Committer {
    /// For the group's metadata (exactly-once) or the offset commit (at-least-once).
    consumer: Arc<StreamConsumer<GroupEvents>>,
    /// Replaced when librdkafka puts it in a fatal state a new one heals ([`Committer::renewed`]).
    producer: Mutex<Arc<ReportingProducer>>,
    delivery: Delivery,
    /// How to make the transactional producer again (exactly-once only).
    renewal: Option<Renewal>,
    /// When the producer was lately found fenced.
    fencings: Mutex<Fencings>,
}

/// When a producer was found fenced within the last [`Fencings::WINDOW`], to tell a twin
/// from the cluster's own faults. A coordinator fences a producer once per fault (it aborts
/// a transaction that timed out while it moved), and two faults can come within a minute;
/// two processes with one transactional id fence each other at every new producer, which
/// is every few seconds under traffic.
#[derive(Debug, Default)]
struct Fencings {
    at: VecDeque<Instant>,
}

impl Fencings {
    const WINDOW: Duration = Duration::from_secs(60);
    /// This many fencings within the window are taken to be a twin's.
    const OF_A_TWIN: usize = 4;

    /// Records a fencing at `now`; whether the producer is taken to have a twin.
    fn twin_after(&mut self, now: Instant) -> bool {
        self.at
            .retain(|at| now.saturating_duration_since(*at) < Self::WINDOW);
        self.at.push_back(now);
        self.at.len() >= Self::OF_A_TWIN
    }
}

/// How much longer than its own timeout a librdkafka call may take before it is taken to
/// have stalled.
const STALL_MARGIN: Duration = Duration::from_secs(5);

/// Why a batch's transaction did not commit.
enum Failure {
    Kafka(KafkaError),
    /// The producer cannot take this transaction any further: it is made again.
    Unusable(Unusable),
}

impl From<KafkaError> for Failure {
    fn from(error: KafkaError) -> Self {
        Failure::Kafka(error)
    }
}

#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// A call on it has not returned, and may never.
    #[error("adding the batch's offsets to the transaction did not return within {0:?}")]
    Stalled(Duration),
    #[error("no thread to add the batch's offsets to the transaction: {0}")]
    NoThread(String),
}

/// What a transactional producer is made of.
struct Renewal {
    kafka: KafkaConfig,
    transactional_id: String,
    out_of_reach: Arc<AtomicBool>,
}

impl Renewal {
    /// A transactional producer with its transactions initialised: whatever a producer with
    /// the same id left open is aborted, and that producer fenced. Blocks.
    fn producer(&self) -> Result<ReportingProducer, KafkaError> {
        let kafka = &self.kafka;
        let producer: ReportingProducer = producer_config(kafka)
            .set("transactional.id", &self.transactional_id)
            .set(
                "transaction.timeout.ms",
                kafka.transaction_timeout_ms.to_string(),
            )
            // A delivery must give up before the transaction times out.
            .set(
                "message.timeout.ms",
                (kafka.transaction_timeout_ms.saturating_sub(1_000))
                    .max(1_000)
                    .to_string(),
            )
            .set("linger.ms", "5")
            // A transaction that starts right after the previous one's commit is told
            // CONCURRENT_TRANSACTIONS until the commit markers are written, and retries
            // after retry.backoff.ms: librdkafka's 100 ms default would be added to
            // nearly every batch.
            .set("retry.backoff.ms", "5")
            // ...and backs off exponentially up to retry.backoff.max.ms (1 s): the next
            // batch's transaction begins right after the one before it commits, and must
            // not sleep out a grown backoff while the markers are written.
            .set("retry.backoff.max.ms", "10")
            // Its statistics say when a broker answers again (see DeliveryReport).
            .set(
                "statistics.interval.ms",
                kafka
                    .properties
                    .get("statistics.interval.ms")
                    .map_or("5000", String::as_str),
            )
            .create_with_context(DeliveryReport::holding(Arc::clone(&self.out_of_reach)))?;
        producer.init_transactions(CALL_TIMEOUT)?;
        Ok(producer)
    }
}

impl Committer {
    /// Commits one batch, given its next offsets and the group's metadata as it was when the
    /// batch was read; an aborted transaction is rolled back before this returns.
    fn commit(
        &self,
        offsets: &TopicPartitionList,
        outputs: Vec<OutputRecord>,
        read_in: Option<ConsumerGroupMetadata>,
    ) -> Result<(), LogError> {
        let error = match self.transact(offsets, outputs, read_in) {
            Ok(()) => return Ok(()),
            Err(Failure::Kafka(error)) => error,
            Err(Failure::Unusable(unusable)) => {
                return Err(match &self.renewal {
                    Some(renewal) => self.remake(renewal, Cause::new(unusable)),
                    None => LogError::Fatal(Cause::new(unusable)),
                })
            }
        };
        let fatal = match &error {
            KafkaError::Transaction(e) => e.is_fatal(),
            _ => false,
        };
        if fatal {
            return Err(self.renewed(error));
        }
        if self.delivery == Delivery::ExactlyOnce {
            if let Err(aborting) = self.abort(&error) {
                tracing::warn!("aborting the transaction after {error} failed too");
                return Err(self.renewed(aborting));
            }
        }
        Err(LogError::Aborted(Cause::new(error)))
    }

    fn current(&self) -> Arc<ReportingProducer> {
        Arc::clone(&self.producer.lock().expect("the producer lock"))
    }

    /// After `error` left the producer in librdkafka's fatal state: a new producer with the
    /// same transactional id, whose init aborts whatever was left open; the batch is read
    /// again. librdkafka's fatal states include being fenced, which a coordinator causes by
    /// itself when it aborts a transaction that timed out while it moved (a broker died),
    /// as well as a newer process with the same id. Two such processes would fence each
    /// other at every new producer, so fencings as frequent as [`Fencings`] tells end the
    /// stage.
    fn renewed(&self, error: KafkaError) -> LogError {
        let fatal = self.current().client().fatal_error();
        let fenced = matches!(
            fatal,
            Some((
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch,
                _
            ))
        );
        let twin = fenced
            && self
                .fencings
                .lock()
                .expect("the fencing lock")
                .twin_after(Instant::now());
        let renewal = match &self.renewal {
            Some(renewal) if !twin && !hopeless(&error) => renewal,
            Some(renewal) if twin => {
                return LogError::Fatal(Cause::context(
                    format!(
                        "fenced {} times within {} s: another process runs with transactional id {}; give each process its own instance id",
                        Fencings::OF_A_TWIN,
                        Fencings::WINDOW.as_secs(),
                        renewal.transactional_id
                    ),
                    error,
                ))
            }
            _ => {
                return LogError::Fatal(Cause::context("the transactional producer failed", error))
            }
        };
        self.remake(renewal, Cause::new(error))
    }

    /// A new transactional producer in place of the one that cannot go on because of
    /// `cause`; its init aborts the transaction left open, whose batch is read again.
    fn remake(&self, renewal: &Renewal, cause: Cause) -> LogError {
        tracing::warn!(
            "the transactional producer cannot go on ({cause}); making a new one with its transactional id {}",
            renewal.transactional_id
        );
        loop {
            match renewal.producer() {
                Ok(producer) => {
                    *self.producer.lock().expect("the producer lock") = Arc::new(producer);
                    return LogError::Aborted(Cause::context(
                        "the transaction failed and its producer was made again",
                        cause,
                    ));
                }
                Err(e) if hopeless(&e) => {
                    return LogError::Fatal(Cause::context(
                        "making the transactional producer again",
                        e,
                    ))
                }
                Err(e) => {
                    tracing::warn!("making the transactional producer again: {e}; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Aborts the transaction that failed with `error`, as many times as the brokers time
    /// out on it: the producer can begin no other until it is aborted.
    fn abort(&self, error: &KafkaError) -> Result<(), KafkaError> {
        loop {
            match self.current().abort_transaction(CALL_TIMEOUT) {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.is_fatal() => {
                    tracing::warn!("aborting the transaction after {error}: {e}; trying again");
                }
                outcome => return outcome,
            }
        }
    }

    /// Commits the transaction, again as long as the brokers time out on it: a commit that
    /// timed out may have reached the coordinator, so it is finished, never aborted, unless
    /// the producer says it must abort.
    fn commit_transaction(&self) -> Result<(), KafkaError> {
        loop {
            match self.current().commit_transaction(CALL_TIMEOUT) {
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal() =>
                {
                    tracing::warn!("committing the transaction: {e}; trying again");
                }
                outcome => return outcome,
            }
        }
    }

    /// Hands every output to the producer, waiting for room where its queue is full; runs
    /// on the transaction's blocking thread, which waits on the runtime's timer.
    fn send_all(&self, outputs: &[OutputRecord]) -> Result<(), KafkaError> {
        let producer = self.current();
        tokio::runtime::Handle::current().block_on(async {
            for output in outputs {
                let mut record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&output.topic).headers(owned_headers(&output.headers));
                if let Some(key) = &output.key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = &output.value {
                    record = record.payload(value.as_slice());
                }
                send_when_room(&producer, record).await?;
            }
            Ok(())
        })
    }

    /// The transaction of one batch; runs on a blocking thread.
    fn transact(
        &self,
        offsets: &TopicPartitionList,
        outputs: Vec<OutputRecord>,
        read_in: Option<ConsumerGroupMetadata>,
    ) -> Result<(), Failure> {
        if self.delivery == Delivery::AtLeastOnce {
            return Ok(self.flush_then_commit(offsets, outputs)?);
        }
        self.current().begin_transaction()?;
        self.send_all(&outputs)?;
        crate::pipeline::fault::in_transaction();
        let metadata =
            read_in.ok_or_else(|| KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidGroupId))?;
        self.send_offsets(offsets, metadata)?;
        self.await_deliveries()?;
        Ok(self.commit_transaction()?)
    }

    /// Adds the batch's offsets to the transaction, on a thread of its own: librdkafka does
    /// not time this call out when the group's coordinator is gone (librdkafka#5456,
    /// #5511; seen after a broker was frozen and resumed), and the stage would wait on it for
    /// ever. Past [`CALL_TIMEOUT`] and a margin, the producer is given up on; the thread
    /// keeps it until the call returns.
    fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        metadata: ConsumerGroupMetadata,
    ) -> Result<(), Failure> {
        let producer = self.current();
        let offsets = offsets.clone();
        let (sent, outcome) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("txn-offsets".to_owned())
            .spawn(move || {
                let result =
                    producer.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT);
                // Nobody waits any more when the call stalled: the result has nowhere to go.
                let _ = sent.send(result);
            })
            .map_err(|e| Failure::Unusable(Unusable::NoThread(e.to_string())))?;
        match outcome.recv_timeout(CALL_TIMEOUT + STALL_MARGIN) {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::Unusable(Unusable::Stalled(
                CALL_TIMEOUT + STALL_MARGIN,
            ))),
        }
    }

    /// Waits until every record sent is acknowledged or failed. rust-rdkafka's own flush
    /// polls in steps of 100 ms, which the producer's polling thread makes it sleep out in
    /// full: that would add 100 ms to every batch.
    fn await_deliveries(&self) -> Result<(), KafkaError> {
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        let producer = self.current();
        while producer.in_flight_count() > 0 {
            if std::time::Instant::now() > deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }

    /// At-least-once: every output acknowledged, then the offsets committed.
    fn flush_then_commit(
        &self,
        offsets: &TopicPartitionList,
        outputs: Vec<OutputRecord>,
    ) -> Result<(), KafkaError> {
        let producer = self.current();
        let failed_before = producer.context().failed.load(Ordering::Relaxed);
        self.send_all(&outputs)?;
        self.await_deliveries()?;
        if producer.context().failed.load(Ordering::Relaxed) != failed_before {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
        self.consumer.commit(offsets, CommitMode::Sync)
    }
}

/// The offsets to commit after a batch: the last offset read of each partition, plus one.
fn next_offsets(batch: &[InputRecord]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for record in batch {
        let offset = next.entry((&record.topic, record.partition)).or_insert(0);
        *offset = (*offset).max(record.offset + 1);
    }
    let mut list = TopicPartitionList::with_capacity(next.len());
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(list)
}

impl Log for KafkaLog {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<InputRecord>, LogError> {
        let consumer_error =
            |e: KafkaError| LogError::Fatal(Cause::context(failed_doing("consuming", &e), e));
        let mut batch = Vec::new();
        self.forget_held_if_revoked();
        let mut read_since = self.held_since;
        while batch.len() < max_records {
            let Some(record) = self.held.pop_front() else {
                break;
            };
            if !self.is_waiting(&record) && !self.hold_if_early(&record).map_err(consumer_error)? {
                batch.push(record);
            }
        }
        let started = Instant::now();
        // Wait for a first record, but no longer than until a waiting partition is due.
        while batch.is_empty() {
            let next_due = self.resume_due().map_err(consumer_error)?;
            let left = max_wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(batch);
            }
            let wait = next_due.map_or(left, |due| due.min(left));
            let record = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => continue,
                Ok(Ok(message)) => input_record(&message),
                Ok(Err(e)) if passing(&e) => {
                    self.heard(&e);
                    continue;
                }
                // Nothing is taken yet: unless it cannot heal, the stage waits and asks again.
                Ok(Err(e)) => return Err(unreachable_or_fatal("consuming", e)),
            };
            // Polling serves rebalances: what was read before one is stale.
            self.forget_if_revoked(&mut batch, &mut read_since);
            if !self.is_waiting(&record) && !self.hold_if_early(&record).map_err(consumer_error)? {
                batch.push(record);
            }
        }
        // Then only what has already arrived: a zero timeout still polls the receive once.
        while batch.len() < max_records {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    let record = input_record(&message);
                    self.forget_if_revoked(&mut batch, &mut read_since);
                    if !self.is_waiting(&record)
                        && !self.hold_if_early(&record).map_err(consumer_error)?
                    {
                        batch.push(record);
                    }
                }
                Ok(Err(e)) if passing(&e) => self.heard(&e),
                // The records read so far go on as a batch; the error comes again if it lasts.
                Ok(Err(e)) if !hopeless(&e) => {
                    self.heard(&e);
                    break;
                }
                Ok(Err(e)) => return Err(consumer_error(e)),
                Err(_) => break,
            }
        }
        // The last poll may have served a revocation and returned nothing.
        self.forget_if_revoked(&mut batch, &mut read_since);
        Ok(batch)
    }

    async fn hold(&mut self, pause: Duration) -> Result<(), LogError> {
        let fatal =
            |what: &str, e: KafkaError| LogError::Fatal(Cause::context(failed_doing(what, &e), e));
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| fatal("reading the assignment", e))?;
        if assigned.count() > 0 {
            self.consumer
                .pause(&assigned)
                .map_err(|e| fatal("pausing partitions", e))?;
        }
        let until = Instant::now() + pause;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Polling serves the group (heartbeats, rebalances) while nothing is fetched.
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => {
                    let record = input_record(&message);
                    drop(message);
                    self.forget_held_if_revoked();
                    self.held.push_back(record);
                }
                Ok(Err(e)) if !hopeless(&e) => self.heard(&e),
                Ok(Err(e)) => return Err(fatal("consuming", e)),
            }
        }
        let mut resume = TopicPartitionList::new();
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| fatal("reading the assignment", e))?;
        for element in assigned.elements() {
            let key = (element.topic().to_owned(), element.partition());
            if !self.waiting.contains_key(&key) {
                resume.add_partition(element.topic(), element.partition());
            }
        }
        if resume.count() > 0 {
            self.consumer
                .resume(&resume)
                .map_err(|e| fatal("resuming partitions", e))?;
        }
        Ok(())
    }

    fn reassignment_pending(&self) -> bool {
        let assignments = self.consumer.context().assignments.load(Ordering::SeqCst);
        self.assignments_seen != Some(assignments)
    }

    fn assigned_partitions(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }

    fn out_of_reach(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.consumer.context().unreachable))
    }

    async fn reassigned(&mut self) -> Result<Option<Vec<InputRecord>>, LogError> {
        let assignments = self.consumer.context().assignments.load(Ordering::SeqCst);
        if self.assignments_seen == Some(assignments) {
            return Ok(None);
        }
        // A rebalance may hand back a partition this member had paused: forget the pauses,
        // resume everything, and pause again as early records show up.
        self.waiting.clear();
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| LogError::Fatal(Cause::context("reading the assignment", e)))?;
        if assigned.count() > 0 {
            self.consumer
                .resume(&assigned)
                .map_err(|e| LogError::Fatal(Cause::context("resuming partitions", e)))?;
        }
        // Until this succeeds the reassignment stays pending, and is asked for again.
        let unconsumed = tokio::task::block_in_place(|| self.unconsumed())
            .map_err(|e| unreachable_or_fatal("reading the retry topics", e))?;
        self.assignments_seen = Some(assignments);
        tracing::info!(
            records = unconsumed.len(),
            "retry records still to be consumed on the assigned partitions"
        );
        Ok(Some(unconsumed))
    }

    fn commit(
        &mut self,
        batch: &[InputRecord],
        outputs: Vec<OutputRecord>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let committer = Arc::clone(&self.committer);
        let offsets = next_offsets(batch)
            .map_err(|e| LogError::Fatal(Cause::context("the batch's offsets to commit", e)));
        // The generation the batch was read in: the consumer has not been polled since, so no
        // rebalance has completed. A transaction that runs into a rebalance (it runs while the
        // next batch is read) must carry this one and be fenced, not the generation after it:
        // with that, a member that lost the batch's partitions would still commit the batch
        // its partitions' new owner has read again, and its results would be published twice.
        let read_in = self.consumer.group_metadata();
        async move {
            let offsets = offsets?;
            tokio::task::spawn_blocking(move || committer.commit(&offsets, outputs, read_in))
                .await
                .map_err(|e| LogError::Fatal(Cause::context("the commit's thread failed", e)))?
        }
    }

    async fn rewind(&mut self, batch: &[InputRecord]) -> Result<(), LogError> {
        let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for record in batch {
            let offset = first
                .entry((&record.topic, record.partition))
                .or_insert(record.offset);
            *offset = (*offset).min(record.offset);
        }
        for ((topic, partition), offset) in first {
            // What was held of the partition comes again from the log, after the batch.
            self.held
                .retain(|r| (r.topic.as_str(), r.partition) != (topic, partition));
            // A partition revoked meanwhile is someone else's now: its new owner starts from
            // the committed offset anyway.
            if let Err(e) =
                self.consumer
                    .seek(topic, partition, Offset::Offset(offset), CALL_TIMEOUT)
            {
                tracing::debug!(topic, partition, offset, "not rewound: {e}");
            }
        }
        Ok(())
    }

    fn backlog(&self) -> Vec<Backlog> {
        let Ok(assigned) = self.consumer.assignment() else {
            return Vec::new();
        };
        let lag = self.consumer.context().lag.lock().expect("the lag lock");
        assigned
            .elements()
            .iter()
            .filter_map(|element| {
                let key = (element.topic().to_owned(), element.partition());
                let records = *lag.get(&key)?;
                let waiting = self.waiting.contains_key(&key);
                Some(Backlog {
                    topic: key.0,
                    partition: key.1,
                    records,
                    waiting,
                })
            })
            .collect()
    }

    async fn close(self) {
        // Dropping the consumer leaves the group at once, so its partitions move now rather
        // than after the session timeout.
        tokio::task::block_in_place(|| {
            self.consumer.unsubscribe();
            drop(self.committer);
            drop(self.consumer);
        });
    }
}

/// Waits a little for `topics` to show in the cluster's metadata (a topic just created takes
/// a moment to reach every broker), and fails with the fix when some never do: a group
/// subscribed to a missing topic would be told so only as a consumer error, later.
fn require_topics<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
    bootstrap: &str,
) -> Result<(), LogError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metadata = consumer
            .fetch_metadata(None, CALL_TIMEOUT)
            .map_err(|e| LogError::Fatal(Cause::context("reading the cluster's metadata", e)))?;
        let present: HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name())
            .collect();
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| !present.contains(t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LogError::Fatal(Cause::message(format!(
                "topics {} do not exist on {bootstrap}; create them with `txflow topics apply`",
                missing.join(", ")
            ))));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A consumer error the log rides out: librdkafka reports a subscribed topic missing from a
/// metadata refresh as an error, also while a topic that exists is still propagating.
fn passing(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Membership {
        Membership::new("ledger", "txflow-ledger", Some("0"), 10_000)
    }

    #[test]
    fn lag_is_measured_from_the_read_position_to_the_last_stable_offset() {
        // As librdkafka 2.12 reported a read_committed consumer 40 records into 100.
        let read = serde_json::json!({
            "hi_offset": 100, "ls_offset": 100, "lo_offset": 0, "app_offset": 40,
            "stored_offset": 40, "committed_offset": -1001, "consumer_lag": -1,
        });
        assert_eq!(partition_lag(&read), Some(60));
        // Records of an open transaction are not there to read yet.
        let open = serde_json::json!({"hi_offset": 130, "ls_offset": 100, "app_offset": 100});
        assert_eq!(partition_lag(&open), Some(0));
        let unread = serde_json::json!({"ls_offset": 100, "lo_offset": 20, "app_offset": -1001,
            "committed_offset": -1001});
        assert_eq!(partition_lag(&unread), Some(80));
        let reassigned = serde_json::json!({"ls_offset": 100, "lo_offset": 0,
            "app_offset": -1001, "committed_offset": 90});
        assert_eq!(partition_lag(&reassigned), Some(10));
        let unknown = serde_json::json!({"ls_offset": -1001, "app_offset": 40});
        assert_eq!(partition_lag(&unknown), None);
    }

    #[test]
    fn faults_of_the_cluster_a_minute_apart_are_not_taken_for_a_twin() {
        let start = Instant::now();
        let mut fencings = Fencings::default();
        // As in CI's chaos suite: the leader's death, then the coordinator's 40 s later.
        assert!(!fencings.twin_after(start));
        assert!(!fencings.twin_after(start + Duration::from_secs(40)));
        assert!(!fencings.twin_after(start + Duration::from_secs(50)));
        // Old fencings leave the window.
        assert!(!fencings.twin_after(start + Duration::from_secs(200)));
        assert!(!fencings.twin_after(start + Duration::from_secs(230)));
    }

    #[test]
    fn a_twin_fencing_every_few_seconds_is_found_within_the_window() {
        let start = Instant::now();
        let mut fencings = Fencings::default();
        let twin_at = (0..10)
            .map(|n| start + Duration::from_secs(3 * n))
            .position(|at| fencings.twin_after(at));
        assert_eq!(twin_at, Some(Fencings::OF_A_TWIN - 1));
    }

    #[test]
    fn a_stage_consumer_fetches_in_bulk_for_at_most_ten_milliseconds() {
        let config = stage_consumer_config(&KafkaConfig::default(), &member());
        assert_eq!(config.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(config.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn configured_fetch_properties_win_over_the_stage_defaults() {
        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("fetch.min.bytes".to_owned(), "1".to_owned());
        kafka
            .properties
            .insert("fetch.wait.max.ms".to_owned(), "100".to_owned());
        let config = stage_consumer_config(&kafka, &member());
        assert_eq!(config.get("fetch.min.bytes"), Some("1"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
    }
}
