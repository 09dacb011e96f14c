//! `txflow replay`: the archived events of a time range, published again to a topic. The
//! ledger applies an event once however often it comes, so replaying what it has already
//! applied changes nothing, and replaying a ledger's events into a fresh one rebuilds its
//! balances, as far as they do not depend on how different accounts' events interleaved (a
//! debit refused for want of funds that a transfer's credit brought a moment later).
//!
//! A run goes file by file; each file done is marked in the archive, under
//! `_replays/<run id>/`, so that a run stopped halfway goes on with the files not done
//! (the events of a file it stopped in are published again: harmless, as above).

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use governor::DefaultDirectRateLimiter;

use super::file;
use crate::codec::{Codec, Record};
use crate::domain::TransactionEvent;
use crate::limits::pacing;
use crate::ports::{ObjectError, Objects, PublishError, Publisher};
use crate::routing::Pattern;
use crate::wire::{InputRecord, OutputRecord};

/// The keys under which a run marks the files it has done: `_replays/<run id>/<file
/// key>.done`, which no reader of `*.avro` takes for a file of records.
pub const RUNS_PREFIX: &str = "_replays";
const DONE: &str = ".done";

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the archive: {0}")]
    Storage(#[from] ObjectError),
    #[error("the archive file {key}: {message}")]
    File { key: String, message: String },
    #[error("{failed} events of {key} were not written ({first}); run again with --run-id {run_id} to go on")]
    Publish {
        key: String,
        failed: usize,
        first: PublishError,
        run_id: String,
    },
}

/// What a replay publishes, from where, to where.
pub struct Replay<'a> {
    /// The archived topic the events come from: txflow.events, or txflow.ledger (what the
    /// ledger was sent: the router's events, and its own transfer legs).
    pub topic: &'a str,
    /// Records stamped from this millisecond since the Unix epoch, included...
    pub from_ms: i64,
    /// ...to this one, excluded.
    pub to_ms: i64,
    /// Only events this pattern matches (the router's rule patterns, on the event's JSON).
    pub only: Option<&'a Pattern>,
    pub to_topic: &'a str,
    /// Events per second at most.
    pub rate: Option<NonZeroU32>,
    /// Count what would be published; publish nothing, mark nothing.
    pub dry_run: bool,
    pub run_id: &'a str,
}

/// How far a replay is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub files: usize,
    pub files_done: usize,
    /// Files a run with the same id did before.
    pub files_done_before: usize,
    /// Events of the range the filter took (published, or to be, on a dry run).
    pub events: u64,
    /// Records of the range the filter left out.
    pub left_out: u64,
    /// Records in the range that are no event txflow can read (dead-lettered when sent).
    pub not_events: u64,
}

/// The hours since the Unix epoch from that of `from_ms` to that of `to_ms`: a file's key
/// carries its first record's hour, and a file ends where a later hour begins.
fn hours(from_ms: i64, to_ms: i64) -> std::ops::RangeInclusive<i64> {
    file::hour_of(from_ms)..=file::hour_of(to_ms - 1)
}

/// The keys of `replay`'s topic's files that may hold records of its range, each
/// partition's in offset order (a file's hour is its first record's, and a producer's
/// clock can make a later file's hour earlier).
pub async fn files_of(
    objects: &impl Objects,
    replay: &Replay<'_>,
) -> Result<Vec<String>, ObjectError> {
    let hours = hours(replay.from_ms, replay.to_ms);
    let mut dates = BTreeSet::new();
    for hour in hours.clone() {
        dates.insert(file::utc_date_hour(file::start_of_hour(hour)).0);
    }
    let mut keys = Vec::new();
    for date in dates {
        for key in objects
            .list(&format!("{}/date={date}/", replay.topic))
            .await?
        {
            if file::hour_of_key(&key).is_some_and(|hour| hours.contains(&hour)) {
                keys.push(key);
            }
        }
    }
    keys.sort_by_key(|key| file::position_of_key(key));
    Ok(keys)
}

/// Runs `replay` over the archive in `objects`, publishing with `publisher`; `progress` is
/// called after each file.
pub async fn replay(
    objects: &impl Objects,
    publisher: &impl Publisher,
    codec: &Codec,
    replay: &Replay<'_>,
    mut progress: impl FnMut(&Progress, &str),
) -> Result<Progress, ReplayError> {
    let keys = files_of(objects, replay).await?;
    let marks = format!("{RUNS_PREFIX}/{}/", replay.run_id);
    let done: BTreeSet<String> = objects
        .list(&marks)
        .await?
        .into_iter()
        .filter_map(|mark| {
            let done = mark.strip_prefix(&marks)?.strip_suffix(DONE)?;
            Some(done.to_owned())
        })
        .collect();
    let pace: Option<DefaultDirectRateLimiter> = replay.rate.map(pacing);
    let mut report = Progress {
        files: keys.len(),
        ..Progress::default()
    };
    for key in &keys {
        if done.contains(key) {
            report.files_done_before += 1;
            report.files_done += 1;
            continue;
        }
        let bytes = objects.get(key).await?;
        let records = file::decode(&bytes).map_err(|e| ReplayError::File {
            key: key.clone(),
            message: e.to_string(),
        })?;
        let mut outputs = Vec::new();
        for record in records {
            match chosen(codec, replay, &record) {
                Choice::Outside => {}
                Choice::LeftOut => report.left_out += 1,
                Choice::NotAnEvent => report.not_events += 1,
                Choice::Taken => {
                    report.events += 1;
                    outputs.push(OutputRecord {
                        topic: replay.to_topic.to_owned(),
                        key: record.key,
                        value: record.value,
                        headers: record.headers,
                    });
                }
            }
        }
        if !replay.dry_run {
            publish(publisher, pace.as_ref(), outputs, key, replay.run_id).await?;
            objects
                .create(&format!("{marks}{key}{DONE}"), Vec::new())
                .await?;
        }
        report.files_done += 1;
        progress(&report, key);
    }
    Ok(report)
}

enum Choice {
    /// Stamped outside the range.
    Outside,
    LeftOut,
    NotAnEvent,
    Taken,
}

fn chosen(codec: &Codec, replay: &Replay<'_>, record: &InputRecord) -> Choice {
    let stamped = record.timestamp.unwrap_or(0);
    if stamped < replay.from_ms || stamped >= replay.to_ms {
        return Choice::Outside;
    }
    let event: Option<TransactionEvent> = record
        .value
        .as_deref()
        .and_then(|value| codec.decode(Record::TransactionEvent, value).ok());
    let Some(event) = event else {
        return Choice::NotAnEvent;
    };
    match replay.only {
        Some(pattern)
            if !pattern.matches(&serde_json::to_value(&event).expect("an event serializes")) =>
        {
            Choice::LeftOut
        }
        _ => Choice::Taken,
    }
}

/// Publishes a file's events in batches, at the pace asked; fails with the first refusal.
async fn publish(
    publisher: &impl Publisher,
    pace: Option<&DefaultDirectRateLimiter>,
    outputs: Vec<OutputRecord>,
    key: &str,
    run_id: &str,
) -> Result<(), ReplayError> {
    const BATCH: usize = 500;
    let mut outputs = outputs.into_iter().peekable();
    while outputs.peek().is_some() {
        let mut batch = Vec::with_capacity(BATCH);
        for output in outputs.by_ref().take(BATCH) {
            if let Some(pace) = pace {
                pace.until_ready().await;
            }
            batch.push(output);
        }
        let failures: Vec<PublishError> = publisher
            .publish(batch)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if let Some(first) = failures.first() {
            return Err(ReplayError::Publish {
                key: key.to_owned(),
                failed: failures.len(),
                first: first.clone(),
                run_id: run_id.to_owned(),
            });
        }
    }
    Ok(())
}
