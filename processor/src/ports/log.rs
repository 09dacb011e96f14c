//! The log: partitioned topics read in batches and written in transactions that also commit
//! what was read, so that a batch's outputs and its consumed positions land together or not
//! at all.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use crate::domain::{Cause, RetryClass};
use crate::wire::{InputRecord, OutputRecord};

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The batch's transaction did not commit (aborted, fenced after a rebalance, timed
    /// out): its outputs are invisible and its records will be read again.
    #[error("the transaction did not commit: {0}")]
    Aborted(#[source] Cause),
    /// This process can no longer write (its producer was fenced by a newer one, or a fatal
    /// client error): the stage must stop.
    #[error("the log client cannot go on: {0}")]
    Fatal(#[source] Cause),
    /// The log cannot be reached now (its brokers down or cut off): nothing was taken or
    /// lost, and the call can be made again.
    #[error("the log is unreachable: {0}")]
    Unavailable(#[source] Cause),
}

/// A consumer in a group with its transactional producer.
pub trait Log: Send {
    /// Up to `max_records` records, waiting at most `max_wait` for the first and then taking
    /// only what has already arrived. Empty when nothing came. A record of a delayed topic
    /// comes no earlier than its due time ([`DelayedTopics::due`]); until then its partition
    /// waits (paused, not polled in a loop), and records behind it wait with it. A batch
    /// holds nothing read before its partitions were last revoked: the partitions' owner
    /// reads that again.
    fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Vec<InputRecord>, LogError>> + Send;

    /// Writes `outputs` and commits the consumption of `batch`, in one transaction. On
    /// `Err(Aborted)` nothing of it is visible and the batch's records come again.
    ///
    /// The transaction is the returned future's alone (it borrows nothing from the log), so
    /// that it can run while the next batch is read and processed; the log takes no other
    /// call but `next_batch` until it is done.
    fn commit(
        &mut self,
        batch: &[InputRecord],
        outputs: Vec<OutputRecord>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static;

    /// Whether this member's partitions changed since the last `reassigned` (or it was never
    /// called): a look at the log's own state, no IO.
    fn reassignment_pending(&self) -> bool;

    /// How many partitions this member reads now (none until its group assigned them).
    fn assigned_partitions(&self) -> usize;

    /// A flag the log's client holds up while every broker is out of reach, for the stage's
    /// readiness to follow as it changes; None for a log that cannot be cut off.
    fn out_of_reach(&self) -> Option<Arc<AtomicBool>> {
        None
    }

    /// When this member's partitions changed since the last call (or on the first call): the
    /// records of its delayed topics' partitions that the group has not consumed yet, which is
    /// what a stage keeping track of its retries must start again from.
    fn reassigned(
        &mut self,
    ) -> impl Future<Output = Result<Option<Vec<InputRecord>>, LogError>> + Send;

    /// Takes nothing for `pause` while staying in the group (a consumer that stops polling
    /// altogether is put out of it): every partition stops fetching, then fetches again.
    /// Records already on their way when it stopped come with the next `next_batch`.
    fn hold(&mut self, pause: Duration) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Reads `batch`'s records again from the next `next_batch`, without committing.
    fn rewind(
        &mut self,
        batch: &[InputRecord],
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Leaves the group cleanly; called once, after the last commit.
    fn close(self) -> impl Future<Output = ()> + Send;

    /// How far behind the end of each partition it owns the member is, as last measured.
    fn backlog(&self) -> Vec<Backlog>;
}

/// Records of one partition the member has still to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub topic: String,
    pub partition: i32,
    pub records: i64,
    /// On a delayed topic whose next record is not due yet: the records wait by design, they
    /// are not late.
    pub waiting: bool,
}

/// The delayed topics a log reads (a stage's retry tiers), each with the longest a record may
/// wait on it ([`InputRecord::retry_due`]).
#[derive(Clone, Debug, Default)]
pub struct DelayedTopics {
    waits: BTreeMap<String, Duration>,
    /// `txflow_retry_due_out_of_bounds_total{topic}`.
    out_of_bounds: Option<IntCounterVec>,
}

impl DelayedTopics {
    pub fn new(waits: impl IntoIterator<Item = (String, Duration)>) -> Self {
        DelayedTopics {
            waits: waits.into_iter().collect(),
            out_of_bounds: None,
        }
    }

    /// Counts the records handed out at their tier's bound in `counter`, by topic.
    pub fn counted(self, counter: IntCounterVec) -> Self {
        DelayedTopics {
            out_of_bounds: Some(counter),
            ..self
        }
    }

    pub fn topics(&self) -> impl Iterator<Item = &String> {
        self.waits.keys()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.waits.contains_key(topic)
    }

    /// When `record` may be handed out, `None` for a record of a topic that is not delayed. A
    /// record handed out at its tier's bound rather than at the due time it claims is logged
    /// and counted.
    pub fn due(&self, record: &InputRecord, now_ms: i64) -> Option<i64> {
        let wait = self.waits.get(&record.topic)?;
        let due = record.retry_due(*wait, now_ms);
        if due.out_of_bounds && due.at <= now_ms {
            tracing::warn!(
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                claimed_due = record.retry_due_ms(),
                "a retry record claims a due time beyond what its tier allows ({wait:?} after it was written): it is handed out now"
            );
            if let Some(counter) = &self.out_of_bounds {
                counter.with_label_values(&[&record.topic]).inc();
            }
        }
        Some(due.at)
    }
}

/// Where a published record landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Not written for now (a timeout, no broker available): the same record may be written
    /// if sent again.
    #[error("the record was not written: {0}")]
    Unavailable(#[source] Cause),
    /// Refused for what it is (too large, no such topic): it would be refused again.
    #[error("the record was refused: {0}")]
    Refused(#[source] Cause),
}

impl RetryClass for PublishError {
    fn is_transient(&self) -> bool {
        matches!(self, PublishError::Unavailable(_))
    }
}

/// Writes records outside any transaction, each acknowledged by every in-sync replica before
/// its outcome comes back, without duplicates from the client's own retries; records of one
/// key keep their order.
pub trait Publisher: Send + Sync {
    fn publish(
        &self,
        records: Vec<OutputRecord>,
    ) -> impl Future<Output = Vec<Result<Published, PublishError>>> + Send;
}

/// Reads a topic's committed records from the beginning: for operators' tools (the dead
/// letters) and audits, over topics small enough to hold in memory.
pub trait TopicReader: Send + Sync {
    /// Every committed record of `topic`, from the beginning of each partition to its end as
    /// of now, in partition and offset order.
    fn read_to_end(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<Vec<InputRecord>, LogError>> + Send;
}
