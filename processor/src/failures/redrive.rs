//! A redrive: dead letters written back to where they were first read, exactly once. The
//! dead letters are read in a consumer group of the run's own, and each batch's redriven
//! records commit with the batch's consumption in one transaction of the log, so that a run
//! killed half way resumes where it stopped when it is run again in the same group, and no
//! dead letter is redriven twice by one run. Redriven events go through their stage again as
//! new records: those already applied change nothing there.
//!
//! One implementation over the [`Log`] port: `txflow dlq redrive` runs it on Kafka, and a
//! `txflow dev` runs it on its embedded log when asked to over `--dev-dir`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dead_letters::{DeadLetter, Filter};
use crate::codec::Codec;
use crate::limits::pacing;
use crate::ports::{Log, LogError, RegistryError};

/// Dead letters read from the log at once, at most.
const BATCH: usize = 500;

/// Which dead letters to redrive, where, and how fast.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The run's name: its records carry it, and a dead letter that carries it failed again
    /// in this run, so the run leaves it (a run does not chase its own returns).
    pub run: String,
    /// Only dead letters matching all of these.
    pub filters: Vec<Filter>,
    /// Where to write them (default: the topic each was first read from).
    pub to: Option<String>,
    /// Records per second at most.
    pub rate: Option<NonZeroU32>,
    /// At most this many matching dead letters.
    pub limit: Option<u64>,
    /// The run ends once no dead letter arrived for this long.
    pub idle: Duration,
}

/// A redrive as a command asks for it: of the dead letters of `topic`, in run `run_id`
/// (the same run id resumes a run), as the rest says; what `txflow dlq redrive` sends a
/// running `txflow dev` to run there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedriveRequest {
    pub topic: String,
    pub run_id: String,
    /// `NAME=VALUE` conditions ([`Filter`]).
    pub filters: Vec<String>,
    pub to: Option<String>,
    /// Records per second at most; 0: no limit.
    pub rate: u32,
    pub limit: Option<u64>,
    pub idle_ms: u64,
}

impl RedriveRequest {
    /// The consumer group of the run: its position in the dead letters.
    pub fn group(&self) -> String {
        format!("txflow-dlq-redrive-{}", self.run_id)
    }

    /// The plan it asks for, or why a filter does not parse.
    pub fn plan(&self) -> Result<Plan, String> {
        Ok(Plan {
            run: self.run_id.clone(),
            filters: self
                .filters
                .iter()
                .map(|f| f.parse())
                .collect::<Result<_, _>>()?,
            to: self.to.clone(),
            rate: NonZeroU32::new(self.rate),
            limit: self.limit,
            idle: Duration::from_millis(self.idle_ms),
        })
    }
}

/// What a redrive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: u64,
    /// Dead letters read and left where they are (not matching the filters).
    pub skipped: u64,
    /// Dead letters of records this run wrote, which failed again: left where they are.
    pub returned: u64,
}

/// Why a redrive stopped before the dead letters ran out.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A dead letter that cannot be written back (it names no topic to go to).
    #[error("{0}")]
    Letter(String),
    #[error("no partition of the dead letters was assigned to the redrive's group within {0:?}")]
    NotAssigned(Duration),
}

/// How long a redrive waits for its group to hand it the dead letters' partitions.
const JOIN_WITHIN: Duration = Duration::from_secs(60);

/// Redrives the dead letters `log` reads (its group's consumption, committed with what it
/// writes), as `plan` says; closes the log at the end.
pub async fn redrive<L: Log>(
    mut log: L,
    codec: &Codec,
    plan: &Plan,
) -> Result<Redriven, RedriveError> {
    let limiter = plan.rate.map(pacing);
    let mut done = Redriven::default();
    let joined_by = Instant::now() + JOIN_WITHIN;
    let mut idle_since = Instant::now();
    loop {
        let room = plan.limit.map_or(BATCH as u64, |limit| {
            (limit - done.redriven).min(BATCH as u64)
        }) as usize;
        if room == 0 {
            break;
        }
        let batch = log.next_batch(room, Duration::from_millis(200)).await?;
        if batch.is_empty() {
            // Until the group hands out the partitions, silence means nothing.
            if log.assigned_partitions() == 0 {
                if Instant::now() > joined_by {
                    return Err(RedriveError::NotAssigned(JOIN_WITHIN));
                }
                idle_since = Instant::now();
            } else if idle_since.elapsed() >= plan.idle {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        codec
            .learn(batch.iter().map(|r| r.value.as_deref()))
            .await?;
        let mut outputs = Vec::new();
        let (mut skipped, mut returned) = (0, 0);
        for record in &batch {
            let letter = DeadLetter::new(record.clone(), codec);
            if letter.came_back_from(&plan.run) {
                returned += 1;
                continue;
            }
            if !plan.filters.iter().all(|f| f.matches(&letter)) {
                skipped += 1;
                continue;
            }
            if let Some(limiter) = &limiter {
                limiter.until_ready().await;
            }
            outputs.push(
                letter
                    .redriven(plan.to.as_deref(), &plan.run)
                    .map_err(RedriveError::Letter)?,
            );
        }
        let count = outputs.len() as u64;
        match log.commit(&batch, outputs).await {
            Ok(()) => {
                done.redriven += count;
                done.skipped += skipped;
                done.returned += returned;
            }
            Err(LogError::Aborted(message)) => {
                tracing::warn!("a redrive batch aborted, reading it again: {message}");
                log.rewind(&batch).await?;
            }
            Err(fatal) => return Err(fatal.into()),
        }
    }
    log.close().await;
    Ok(done)
}
