//! The log on the embedded database: topics of one partition (a single process consumes
//! them, so one partition keeps every key's order with nothing to balance), records appended
//! and consumed positions moved in one write transaction.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::database::Database;
use super::{blocking, storage, Embedded, EmbeddedError, ENDS, POSITIONS, RECORDS};
use crate::domain::Cause;
use crate::pipeline::now_ms;
use crate::ports::{Backlog, DelayedTopics, Log, LogError, PublishError, Published, Publisher};
use crate::wire::{InputRecord, OutputRecord};

/// The one partition of every embedded topic.
const PARTITION: u32 = 0;

/// A record as stored.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Appends `records` in `txn`, those of each topic as one record batch; returns where each
/// landed.
fn append(
    txn: &redb::WriteTransaction,
    records: &[OutputRecord],
) -> Result<Vec<Published>, EmbeddedError> {
    let mut ends = txn.open_table(ENDS).map_err(storage)?;
    let mut table = txn.open_table(RECORDS).map_err(storage)?;
    let now = now_ms();
    // By topic: the batch's first offset and its records, in the order given.
    let mut batches: HashMap<&str, (u64, Vec<StoredRecord>)> = HashMap::new();
    let mut published = Vec::with_capacity(records.len());
    for record in records {
        let topic = record.topic.as_str();
        let (first, stored) = match batches.get_mut(topic) {
            Some(batch) => batch,
            None => {
                let end = ends
                    .get((topic, PARTITION))
                    .map_err(storage)?
                    .map(|end| end.value())
                    .unwrap_or(0);
                batches.entry(topic).or_insert((end, Vec::new()))
            }
        };
        published.push(Published {
            topic: record.topic.clone(),
            partition: PARTITION as i32,
            offset: (*first + stored.len() as u64) as i64,
        });
        stored.push(StoredRecord {
            timestamp: now,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record.headers.clone(),
        });
    }
    for (topic, (first, stored)) in batches {
        let bytes = postcard::to_stdvec(&stored).map_err(storage)?;
        table
            .insert((topic, PARTITION, first), bytes.as_slice())
            .map_err(storage)?;
        ends.insert((topic, PARTITION), first + stored.len() as u64)
            .map_err(storage)?;
    }
    Ok(published)
}

/// Every record of `topic` from `from`.
pub(super) fn read_from(
    db: &Database,
    topic: &str,
    from: u64,
) -> Result<Vec<InputRecord>, EmbeddedError> {
    let txn = db.begin_read()?;
    Ok(read_due(&txn, topic, from, usize::MAX, None)?.0)
}

/// Up to `max` records of `topic` from `from`; with `due_by` (now, in ms), stops before the
/// first record whose due time is later, and says when that one is due.
fn read_due(
    txn: &ReadTransaction,
    topic: &str,
    from: u64,
    max: usize,
    due_by: Option<(&DelayedTopics, i64)>,
) -> Result<(Vec<InputRecord>, Option<i64>), EmbeddedError> {
    let table = txn.open_table(RECORDS).map_err(storage)?;
    // The batch holding `from` is the last one that starts at or before it.
    let start = match table
        .range((topic, PARTITION, 0)..=(topic, PARTITION, from))
        .map_err(storage)?
        .next_back()
    {
        Some(entry) => entry.map_err(storage)?.0.value().2,
        None => from,
    };
    let mut records = Vec::new();
    for entry in table
        .range((topic, PARTITION, start)..=(topic, PARTITION, u64::MAX))
        .map_err(storage)?
    {
        let (key, value) = entry.map_err(storage)?;
        let (_, _, first) = key.value();
        let batch: Vec<StoredRecord> = postcard::from_bytes(value.value()).map_err(|e| {
            EmbeddedError::Corrupt(format!("{topic} record batch at offset {first}: {e}"))
        })?;
        for (offset, stored) in (first..).zip(batch) {
            if offset < from {
                continue;
            }
            if records.len() >= max {
                return Ok((records, None));
            }
            let record = InputRecord {
                topic: topic.to_owned(),
                partition: PARTITION as i32,
                offset: offset as i64,
                timestamp: Some(stored.timestamp),
                key: stored.key,
                value: stored.value,
                headers: stored.headers,
            };
            if let Some((delayed, now)) = due_by {
                let due = delayed.due(&record, now).unwrap_or(now);
                if due > now {
                    return Ok((records, Some(due)));
                }
            }
            records.push(record);
        }
    }
    Ok((records, None))
}

/// A consumer of some topics in a group, with the group's positions in the database.
pub struct EmbeddedLog {
    embedded: Embedded,
    group: String,
    /// Inputs first, then the delayed topics.
    topics: Vec<String>,
    delayed: DelayedTopics,
    /// The next offset to read, by topic, once read from the group's position.
    cursors: HashMap<String, u64>,
    /// Which topic a batch starts with, in turn, so that none waits behind a busy one.
    turn: usize,
    announced: bool,
}

impl EmbeddedLog {
    pub(super) fn new(
        embedded: Embedded,
        group: &str,
        inputs: &[&str],
        delayed: &DelayedTopics,
    ) -> Self {
        EmbeddedLog {
            embedded,
            group: group.to_owned(),
            topics: inputs
                .iter()
                .map(|t| t.to_string())
                .chain(delayed.topics().cloned())
                .collect(),
            delayed: delayed.clone(),
            cursors: HashMap::new(),
            turn: 0,
            announced: false,
        }
    }

    /// The group's committed position on `topic`.
    fn position(&self, txn: &ReadTransaction, topic: &str) -> Result<u64, EmbeddedError> {
        let table = txn.open_table(POSITIONS).map_err(storage)?;
        Ok(table
            .get((self.group.as_str(), topic, PARTITION))
            .map_err(storage)?
            .map(|p| p.value())
            .unwrap_or(0))
    }

    /// What is there to read now, and the earliest due time of a delayed topic that waits.
    fn read(&mut self, max: usize) -> Result<(Vec<InputRecord>, Option<i64>), EmbeddedError> {
        let count = self.topics.len();
        self.turn = (self.turn + 1) % count.max(1);
        let now = now_ms();
        let txn = self.embedded.db.begin_read()?;
        let mut batch = Vec::new();
        let mut waits_until: Option<i64> = None;
        for i in 0..count {
            let topic = self.topics[(self.turn + i) % count].clone();
            if batch.len() >= max {
                break;
            }
            let from = match self.cursors.get(&topic) {
                Some(cursor) => *cursor,
                None => self.position(&txn, &topic)?,
            };
            let due_by = self
                .delayed
                .contains(&topic)
                .then_some((&self.delayed, now));
            let (records, due) = read_due(&txn, &topic, from, max - batch.len(), due_by)?;
            if let Some(due) = due {
                waits_until = Some(waits_until.map_or(due, |w| w.min(due)));
            }
            let next = records.last().map_or(from, |r| r.offset as u64 + 1);
            self.cursors.insert(topic, next);
            batch.extend(records);
        }
        Ok((batch, waits_until))
    }
}

fn log_error(error: EmbeddedError) -> LogError {
    match error {
        EmbeddedError::Corrupt(_) => LogError::Fatal(Cause::new(error)),
        other => LogError::Aborted(Cause::new(other)),
    }
}

/// A read that failed took nothing: asked again once the database answers (it is reopened
/// after an I/O error), unless what it holds cannot be read at all.
fn read_error(error: EmbeddedError) -> LogError {
    match error {
        EmbeddedError::Corrupt(_) => LogError::Fatal(Cause::new(error)),
        other => LogError::Unavailable(Cause::new(other)),
    }
}

impl Log for EmbeddedLog {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<InputRecord>, LogError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Listening before reading: a commit between the read and the wait still wakes.
            let appended = self.embedded.appended.clone();
            let notified = appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, waits_until) = blocking(|| self.read(max_records)).map_err(read_error)?;
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(batch);
            }
            let wake = waits_until
                .map(|due| {
                    let wait = Duration::from_millis((due - now_ms()).max(1) as u64);
                    (tokio::time::Instant::now() + wait).min(deadline)
                })
                .unwrap_or(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn commit(
        &mut self,
        batch: &[InputRecord],
        outputs: Vec<OutputRecord>,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let mut consumed: HashMap<String, u64> = HashMap::new();
        for record in batch {
            let next = record.offset as u64 + 1;
            let at = consumed.entry(record.topic.clone()).or_insert(next);
            *at = (*at).max(next);
        }
        let group = self.group.clone();
        let embedded = self.embedded.clone();
        async move {
            let appended = !outputs.is_empty();
            embedded
                .writer
                .write(true, move |txn| {
                    append(txn, &outputs)?;
                    let mut positions = txn.open_table(POSITIONS).map_err(storage)?;
                    for (topic, next) in &consumed {
                        positions
                            .insert((group.as_str(), topic.as_str(), PARTITION), *next)
                            .map_err(storage)?;
                    }
                    Ok(())
                })
                .await
                .map_err(log_error)?;
            if appended {
                embedded.appended.notify_waiters();
            }
            Ok(())
        }
    }

    fn reassignment_pending(&self) -> bool {
        !self.announced
    }

    /// A single process reads every embedded topic: all of its one partition each, always.
    fn assigned_partitions(&self) -> usize {
        self.topics.len()
    }

    async fn reassigned(&mut self) -> Result<Option<Vec<InputRecord>>, LogError> {
        if self.announced {
            return Ok(None);
        }
        let delayed: Vec<String> = self.delayed.topics().cloned().collect();
        let unconsumed = blocking(|| {
            let txn = self.embedded.db.begin_read()?;
            let mut unconsumed = Vec::new();
            for topic in &delayed {
                let from = self.position(&txn, topic)?;
                unconsumed.extend(read_due(&txn, topic, from, usize::MAX, None)?.0);
            }
            Ok(unconsumed)
        })
        .map_err(read_error)?;
        self.announced = true;
        Ok(Some(unconsumed))
    }

    async fn hold(&mut self, pause: Duration) -> Result<(), LogError> {
        tokio::time::sleep(pause).await;
        Ok(())
    }

    async fn rewind(&mut self, batch: &[InputRecord]) -> Result<(), LogError> {
        for record in batch {
            let cursor = self
                .cursors
                .entry(record.topic.clone())
                .or_insert(record.offset as u64);
            *cursor = (*cursor).min(record.offset as u64);
        }
        Ok(())
    }

    async fn close(self) {}

    /// From the cursors: what is left of a delayed topic after a read is not due yet.
    fn backlog(&self) -> Vec<Backlog> {
        let measured = || -> Result<Vec<Backlog>, EmbeddedError> {
            let txn = self.embedded.db.begin_read()?;
            let ends = txn.open_table(ENDS).map_err(storage)?;
            let mut backlog = Vec::with_capacity(self.topics.len());
            for topic in &self.topics {
                let end = ends
                    .get((topic.as_str(), PARTITION))
                    .map_err(storage)?
                    .map_or(0, |end| end.value());
                let read = match self.cursors.get(topic) {
                    Some(cursor) => *cursor,
                    None => self.position(&txn, topic)?,
                };
                backlog.push(Backlog {
                    topic: topic.clone(),
                    partition: PARTITION as i32,
                    records: end.saturating_sub(read) as i64,
                    waiting: self.delayed.contains(topic),
                });
            }
            Ok(backlog)
        };
        measured().unwrap_or_else(|e| {
            tracing::warn!("measuring the backlog: {e}");
            Vec::new()
        })
    }
}

/// Writes records to the embedded log: the gateway's way in under `txflow dev`.
#[derive(Clone)]
pub struct EmbeddedPublisher {
    embedded: Embedded,
}

impl EmbeddedPublisher {
    pub(super) fn new(embedded: Embedded) -> Self {
        EmbeddedPublisher { embedded }
    }
}

impl Publisher for EmbeddedPublisher {
    async fn publish(&self, records: Vec<OutputRecord>) -> Vec<Result<Published, PublishError>> {
        let count = records.len();
        let written = self
            .embedded
            .writer
            .write(true, move |txn| append(txn, &records))
            .await;
        match written {
            Ok(published) => {
                self.embedded.appended.notify_waiters();
                published.into_iter().map(Ok).collect()
            }
            Err(e) => {
                let cause = Cause::new(e);
                (0..count)
                    .map(|_| Err(PublishError::Unavailable(cause.clone())))
                    .collect()
            }
        }
    }
}
