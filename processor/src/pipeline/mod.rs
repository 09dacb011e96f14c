//! The consume → process → produce-and-commit loop every stage runs.
//!
//! A stage turns a batch of input records into output records, writing its store on the way.
//! The loop commits the outputs together with the batch's consumed positions in one log
//! transaction. When the stage fails transiently, or the transaction does not commit, the
//! batch is read again after a pause: the stage's store writes are conditional and its
//! outcomes deterministic, so doing a batch twice has the effect of doing it once.

pub mod breaker;
pub mod failures;
mod fault;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;

use crate::codec::CodecError;
use crate::domain::FailureKind;
use crate::ports::{InputRecord, Log, LogError, OutputRecord, RegistryError, StoreError};
use crate::telemetry::{Metrics, Readiness};

/// Why a stage could not process a batch.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Something the batch needs is unavailable for now: pause, then read the batch again.
    #[error("{kind}: {message}")]
    Transient { kind: FailureKind, message: String },
    /// A dependency is known to be down (its circuit breaker is open): the partitions wait
    /// `resume_in`, then the batch is read again. Nothing goes to the retry tiers.
    #[error("paused: {reason}")]
    Paused { reason: String, resume_in: Duration },
    /// The stage cannot go on (bad schema, fenced producer, corrupt store): stop.
    #[error("{0}")]
    Fatal(String),
}

impl From<StoreError> for StageError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            StageError::Transient {
                kind: error.kind(),
                message: error.to_string(),
            }
        } else {
            StageError::Fatal(error.to_string())
        }
    }
}

impl From<RegistryError> for StageError {
    fn from(error: RegistryError) -> Self {
        if error.is_transient() {
            StageError::Transient {
                kind: FailureKind::RegistryUnavailable,
                message: error.to_string(),
            }
        } else {
            StageError::Fatal(error.to_string())
        }
    }
}

impl From<CodecError> for StageError {
    fn from(error: CodecError) -> Self {
        StageError::Fatal(format!("encoding an output record: {error}"))
    }
}

/// What a batch produced.
#[derive(Debug)]
pub struct BatchOutput<C> {
    pub outputs: Vec<OutputRecord>,
    /// Stage-specific counts, for logs and metrics.
    pub counts: C,
}

/// Counts of what a batch produced, by kind, for the `txflow_outputs_total` metric.
pub trait Tally {
    fn tally(&self) -> Vec<(&'static str, u64)>;
}

/// One step of the pipeline.
pub trait Stage: Send + Sync {
    type Counts: Debug + Send + Tally;

    /// The outputs of `batch`, processed at `now_ms`. Must be safe to call again with the
    /// same batch after a failure or an aborted commit.
    fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> impl Future<Output = Result<BatchOutput<Self::Counts>, StageError>> + Send;

    /// The outputs of the last `process` committed.
    fn committed(&self) {}

    /// This process's partitions changed; `unconsumed` are the records of its retry tiers
    /// that the group has not consumed yet.
    fn reassigned(&self, _unconsumed: &[InputRecord]) {}
}

/// How the loop batches and backs off.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub max_records: usize,
    pub max_wait: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Exponential backoff with full jitter: the n-th pause is uniform in
/// `[0, min(max, initial · 2ⁿ)]`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The ceiling of the next pause.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next pause, drawn from `rng`.
    pub fn next_pause(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rng.random::<f64>())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a stage loop reports: its name in metrics, the metrics, its readiness.
#[derive(Clone)]
pub struct StageTelemetry {
    pub stage: &'static str,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Runs `stage` over `log` until `shutdown` turns true, then closes the log after the last
/// commit. Returns the first fatal error. The process is ready while batches go through, and
/// not ready while a transient failure keeps re-reading a batch.
pub async fn run<L: Log, S: Stage>(
    mut log: L,
    stage: &S,
    config: &LoopConfig,
    telemetry: &StageTelemetry,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let name = telemetry.stage;
    let metrics = &telemetry.metrics;
    telemetry.readiness.set_ready();
    let outcome = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let batch = tokio::select! {
            batch = log.next_batch(config.max_records, config.max_wait) => batch,
            _ = shutdown.changed() => continue,
        };
        let batch = match batch {
            Ok(batch) if batch.is_empty() => continue,
            Ok(batch) => batch,
            Err(e) => break Err(StageError::Fatal(e.to_string())),
        };
        match log.reassigned().await {
            Ok(Some(unconsumed)) => stage.reassigned(&unconsumed),
            Ok(None) => {}
            Err(e) => break Err(StageError::Fatal(e.to_string())),
        }
        let started = Instant::now();
        let mut pause = None;
        let failure = match stage.process(&batch, now_ms()).await {
            Ok(output) => {
                let processed = started.elapsed();
                fault::before_commit().await;
                match log.commit(&batch, output.outputs).await {
                    Ok(()) => {
                        stage.committed();
                        telemetry.readiness.set_ready();
                        metrics
                            .batches
                            .with_label_values(&[name, "committed"])
                            .inc();
                        metrics
                            .records
                            .with_label_values(&[name])
                            .inc_by(batch.len() as u64);
                        for (kind, count) in output.counts.tally() {
                            metrics
                                .outputs
                                .with_label_values(&[name, kind])
                                .inc_by(count);
                        }
                        metrics
                            .batch_seconds
                            .with_label_values(&[name])
                            .observe(started.elapsed().as_secs_f64());
                        tracing::debug!(
                            records = batch.len(),
                            counts = ?output.counts,
                            process_ms = processed.as_millis() as u64,
                            total_ms = started.elapsed().as_millis() as u64,
                            "batch committed"
                        );
                        backoff.reset();
                        continue;
                    }
                    Err(LogError::Aborted(message)) => {
                        format!("the transaction aborted: {message}")
                    }
                    Err(fatal @ LogError::Fatal(_)) => {
                        break Err(StageError::Fatal(fatal.to_string()))
                    }
                }
            }
            Err(StageError::Transient { kind, message }) => format!("{kind}: {message}"),
            Err(StageError::Paused { reason, resume_in }) => {
                pause = Some(resume_in.max(Duration::from_millis(10)));
                reason
            }
            Err(fatal) => break Err(fatal),
        };
        telemetry.readiness.set_not_ready(&failure);
        if pause.is_none() {
            metrics.batches.with_label_values(&[name, "retried"]).inc();
        }
        if let Err(e) = log.rewind(&batch).await {
            break Err(StageError::Fatal(e.to_string()));
        }
        let pause = match pause {
            Some(pause) => {
                metrics.batches.with_label_values(&[name, "paused"]).inc();
                pause
            }
            None => backoff.next_pause(&mut rand::rng()),
        };
        tracing::warn!(
            records = batch.len(),
            ?pause,
            "batch will be read again: {failure}"
        );
        let held = tokio::select! {
            held = log.hold(pause) => held,
            _ = shutdown.changed() => Ok(()),
        };
        if let Err(e) = held {
            break Err(StageError::Fatal(e.to_string()));
        }
    };
    log.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_full_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = backoff.ceiling();
            let pause = backoff.next_pause(&mut rng);
            assert!(pause <= ceiling);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_pauses_over_the_whole_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let pauses: Vec<Duration> = (0..1000)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause(&mut rng)
            })
            .collect();
        assert!(pauses.iter().any(|p| *p < Duration::from_millis(100)));
        assert!(pauses.iter().any(|p| *p > Duration::from_millis(900)));
    }
}
