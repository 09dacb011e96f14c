//! The archiver: the events, ledger and results topics, read as committed, into archive
//! files in object storage ([`file`]), every record exactly once.
//!
//! It keeps each partition's records until its file rolls (by size, by age, or when a
//! record of a later hour comes), creates the file under a key its first record decides,
//! and only then commits the partition's position past it. Files are created, never
//! replaced: after a crash, or when a member that lost the partition wrote it meanwhile,
//! reading on from the committed position meets the file already there; the archiver then
//! takes that file's last offset as its own and goes on after it. Every file thus starts
//! right after the one before it, and no record is in two.

pub mod config;
pub mod file;
pub mod history;
pub mod replay;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

pub use config::{ArchiverConfig, ArchiverGroup, Roll};

use crate::codec::{Codec, Record};
use crate::domain::{RetryClass, TransactionEvent, TransactionResult};
use crate::pipeline::{BacklogGauges, LoopConfig, StageTelemetry};
use crate::ports::{Created, Log, LogError, ObjectError, Objects};
use crate::wire::InputRecord;

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the archive cannot be written: {0}")]
    Storage(ObjectError),
    #[error("{0}")]
    Broken(String),
}

/// What heals: the log or the storage out of reach for now, a transaction that did not
/// commit. The archiver pauses and reads what it held again.
impl RetryClass for ArchiverError {
    fn is_transient(&self) -> bool {
        match self {
            ArchiverError::Log(error) => !matches!(error, LogError::Fatal(_)),
            ArchiverError::Storage(error) => error.is_transient(),
            ArchiverError::Broken(_) => false,
        }
    }
}

/// The topics archived: what came in, what the ledger was sent (the router's events and the
/// ledger's own transfer legs: what an audit rebuilds from), and what it decided. The
/// values of all three decode as events or results.
#[derive(Clone, Debug)]
pub struct ArchivedTopics {
    pub events: String,
    pub ledger: String,
    pub results: String,
}

impl ArchivedTopics {
    pub fn all(&self) -> [&str; 3] {
        [&self.events, &self.ledger, &self.results]
    }
}

/// What the archiver writes to, and how.
pub struct Archiver<O> {
    pub objects: O,
    pub codec: Arc<Codec>,
    pub topics: ArchivedTopics,
    pub roll: Roll,
}

/// One partition's records not in a file yet.
#[derive(Debug, Default)]
struct Partition {
    pending: Vec<InputRecord>,
    bytes: usize,
    /// When the first pending record came.
    since: Option<Instant>,
    /// Where the first pending record of a later hour than the first one is: the file ends
    /// before it.
    cut: Option<usize>,
    /// The last offset of a file found already written from this partition's position.
    archived_through: Option<i64>,
    /// Records such a file holds, read again: their position is committed once the last
    /// of them is read.
    covered: Vec<InputRecord>,
}

impl Partition {
    fn take(&mut self, record: InputRecord, now: Instant) {
        if self
            .archived_through
            .is_some_and(|last| record.offset <= last)
        {
            self.covered.push(record);
            return;
        }
        if self.cut.is_none()
            && self
                .pending
                .first()
                .is_some_and(|f| hour(&record) > hour(f))
        {
            self.cut = Some(self.pending.len());
        }
        self.bytes += size_of(&record);
        self.since.get_or_insert(now);
        self.pending.push(record);
    }

    fn due(&self, roll: Roll, now: Instant) -> bool {
        !self.pending.is_empty()
            && (self.cut.is_some()
                || self.bytes >= roll.bytes
                || self
                    .since
                    .is_some_and(|since| now.duration_since(since) >= roll.after))
    }

    /// The records of the next file: the pending ones up to a later hour's.
    fn file(&self) -> &[InputRecord] {
        &self.pending[..self.cut.unwrap_or(self.pending.len())]
    }

    /// The next file was written: the records to commit (with those a file found before
    /// held); what follows it waits for the file after.
    fn written(&mut self, now: Instant) -> Vec<InputRecord> {
        let rest = self
            .pending
            .split_off(self.cut.unwrap_or(self.pending.len()));
        let mut written = std::mem::take(&mut self.covered);
        written.append(&mut self.pending);
        self.restart(rest, now);
        written
    }

    /// `pending` held again from its start, as just read at `now`.
    fn restart(&mut self, pending: Vec<InputRecord>, now: Instant) {
        self.pending = Vec::with_capacity(pending.len());
        self.bytes = 0;
        self.since = None;
        self.cut = None;
        for record in pending {
            self.take(record, now);
        }
    }

    /// A file already written from the first pending record holds up to `last`.
    fn adopt(&mut self, last: i64, now: Instant) {
        self.archived_through = Some(last);
        let pending = std::mem::take(&mut self.pending);
        self.restart(pending, now);
    }

    /// The covered records, once the last record of the file found is among them.
    fn covered_to_commit(&mut self) -> Option<Vec<InputRecord>> {
        let last = self.covered.last()?.offset;
        (Some(last) == self.archived_through).then(|| std::mem::take(&mut self.covered))
    }

    /// The partition's first record still held, where reading must start again.
    fn first_held(&self) -> Option<&InputRecord> {
        self.covered.first().or(self.pending.first())
    }
}

fn hour(record: &InputRecord) -> i64 {
    file::hour_of(record.timestamp.unwrap_or(0))
}

fn size_of(record: &InputRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
        + 32
}

type Partitions = BTreeMap<(String, i32), Partition>;

/// The JSON of a record's event or result, as an archive file keeps it beside its bytes;
/// None for anything else (a poison event).
pub fn decoded(codec: &Codec, topics: &ArchivedTopics, record: &InputRecord) -> Option<String> {
    let value = record.value.as_deref()?;
    if record.topic == topics.events || record.topic == topics.ledger {
        let event: TransactionEvent = codec.decode(Record::TransactionEvent, value).ok()?;
        serde_json::to_string(&event).ok()
    } else if record.topic == topics.results {
        let result: TransactionResult = codec.decode(Record::TransactionResult, value).ok()?;
        serde_json::to_string(&result).ok()
    } else {
        None
    }
}

impl<O: Objects> Archiver<O> {
    /// Writes `partition`'s pending records as a file, or takes the file already under its
    /// key; the records to commit, if any.
    async fn write(
        &self,
        partition: &mut Partition,
        telemetry: &StageTelemetry,
    ) -> Result<Vec<InputRecord>, ArchiverError> {
        let records = partition.file();
        let first = &records[0];
        let topic = first.topic.clone();
        let key = file::key_of(first);
        let count = records.len();
        let first_offset = first.offset;
        let bytes = file::encode(records, |r| decoded(&self.codec, &self.topics, r))
            .map_err(|e| ArchiverError::Broken(format!("encoding {key}: {e}")))?;
        let length = bytes.len();
        let metrics = &telemetry.metrics;
        match self
            .objects
            .create(&key, bytes)
            .await
            .map_err(ArchiverError::Storage)?
        {
            Created::New => {
                metrics
                    .archive_files
                    .with_label_values(&[&topic, "written"])
                    .inc();
                metrics
                    .archived_bytes
                    .with_label_values(&[&topic])
                    .inc_by(length as u64);
                metrics
                    .archived_records
                    .with_label_values(&[&topic])
                    .inc_by(count as u64);
                tracing::debug!(%key, records = count, bytes = length, "archive file written");
                Ok(partition.written(Instant::now()))
            }
            Created::AlreadyThere => {
                let existing = self
                    .objects
                    .get(&key)
                    .await
                    .map_err(ArchiverError::Storage)?;
                let records = file::decode(&existing)
                    .map_err(|e| ArchiverError::Broken(format!("the object {key}: {e}")))?;
                let (Some(start), Some(end)) = (records.first(), records.last()) else {
                    return Err(ArchiverError::Broken(format!("the object {key} is empty")));
                };
                if start.offset != first_offset {
                    return Err(ArchiverError::Broken(format!(
                        "the object {key} starts at offset {}, not where its key says",
                        start.offset
                    )));
                }
                tracing::info!(%key, last_offset = end.offset, "the archive file was already written: going on after it");
                metrics
                    .archive_files
                    .with_label_values(&[&topic, "already_there"])
                    .inc();
                partition.adopt(end.offset, Instant::now());
                Ok(partition.covered_to_commit().unwrap_or_default())
            }
        }
    }
}

/// Reads every held record again from the log, and forgets them.
async fn forget_held<L: Log>(log: &mut L, partitions: &mut Partitions) -> Result<(), LogError> {
    let firsts: Vec<InputRecord> = partitions
        .values()
        .filter_map(Partition::first_held)
        .cloned()
        .collect();
    partitions.clear();
    log.rewind(&firsts).await
}

/// Runs the archiver until `shutdown` turns true. What it holds then is not written: the
/// partitions' next owner reads it again from the committed positions.
pub async fn run<L: Log, O: Objects>(
    mut log: L,
    archiver: &Archiver<O>,
    loop_config: &LoopConfig,
    telemetry: &StageTelemetry,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ArchiverError> {
    let mut partitions = Partitions::new();
    let mut backlog = BacklogGauges::default();
    let mut backoff = loop_config.backoff_initial;
    // Ready once the group has had this member (with partitions or none), as the other
    // consuming stages.
    let mut joined = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let joining = log.reassignment_pending();
        let step = step(&mut log, archiver, loop_config, telemetry, &mut partitions).await;
        match step {
            Ok(()) => {
                backoff = loop_config.backoff_initial;
                backlog.report(&log, telemetry);
                joined |= joining;
                if joined {
                    telemetry.readiness.set_ready();
                }
            }
            Err(failure) if !failure.is_transient() => return Err(failure),
            Err(failure) => {
                tracing::warn!(pause = ?backoff, "archiving paused: {failure}");
                telemetry.readiness.set_not_ready(&failure.to_string());
                // What is held is read again after the pause; meanwhile the member stays in
                // the group without reading on.
                forget_held(&mut log, &mut partitions).await?;
                let held = tokio::select! {
                    held = log.hold(backoff) => held,
                    _ = shutdown.changed() => Ok(()),
                };
                held?;
                backoff = (backoff * 2).min(loop_config.backoff_max);
            }
        }
    }
    // What was read and not archived is read again by the next owner.
    log.close().await;
    Ok(())
}

/// One batch: read, held, and the files due written and committed.
async fn step<L: Log, O: Objects>(
    log: &mut L,
    archiver: &Archiver<O>,
    loop_config: &LoopConfig,
    telemetry: &StageTelemetry,
    partitions: &mut Partitions,
) -> Result<(), ArchiverError> {
    if log.reassignment_pending() {
        forget_held(log, partitions).await?;
        log.reassigned().await?;
    }
    let batch = log
        .next_batch(loop_config.max_records, loop_config.max_wait)
        .await?;
    let now = Instant::now();
    for record in batch {
        let id = (record.topic.clone(), record.partition);
        partitions.entry(id).or_default().take(record, now);
    }
    if log.reassignment_pending() {
        // What is held may be another member's now; whatever is still ours comes again.
        forget_held(log, partitions).await?;
        return Ok(());
    }
    for partition in partitions.values_mut() {
        if let Some(covered) = partition.covered_to_commit() {
            commit(log, partition, covered).await?;
        }
        while partition.due(archiver.roll, now) {
            let written = archiver.write(partition, telemetry).await?;
            if !written.is_empty() {
                commit(log, partition, written).await?;
            }
        }
    }
    Ok(())
}

/// Commits the position past `records`, taken from `partition`; when that fails, they are
/// held again at its front, for [`forget_held`] to read them again.
async fn commit<L: Log>(
    log: &mut L,
    partition: &mut Partition,
    mut records: Vec<InputRecord>,
) -> Result<(), ArchiverError> {
    if let Err(e) = log.commit(&records, Vec::new()).await {
        records.append(&mut partition.covered);
        partition.covered = records;
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
