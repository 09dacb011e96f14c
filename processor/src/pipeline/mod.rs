//! The consume → process → produce-and-commit loop every stage runs.
//!
//! A stage turns a batch of input records into output records, writing its store on the way.
//! The loop commits the outputs together with the batch's consumed positions in one log
//! transaction. When the stage fails transiently, or the transaction does not commit, the
//! batch is read again after a pause: the stage's store writes are conditional and its
//! outcomes deterministic, so doing a batch twice has the effect of doing it once.
//!
//! A batch's transaction commits while the next batch is read and processed, so that the
//! log's round trips are not added to the store's on every batch. The next batch's own
//! commit begins only once the one before it is known to have committed; when that one
//! aborts, both are read again. The store is thus ahead of the log by up to two batches
//! (never behind), which a replay makes good.

pub mod breaker;
pub(crate) mod fault;
mod group;
pub mod uncommitted;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::watch;
use tracing::Instrument;

pub use group::{GroupConfig, GroupDefaults, Membership};

use crate::codec::CodecError;
use crate::domain::{Cause, FailureKind, RetryClass};
use crate::ports::{Log, LogError, RegistryError, StoreError};
use crate::telemetry::{Metrics, Readiness};
use crate::traces;
use crate::wire::{
    InputRecord, OutputRecord, ERROR_KIND, INGESTED_AT, ORIGINAL_TIMESTAMP, RETRY_TIER,
};

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
    /// same batch after a failure or an aborted commit. It may be called while the previous
    /// batch's outputs are still committing: it must take them as committed.
    fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> impl Future<Output = Result<BatchOutput<Self::Counts>, StageError>> + Send;

    /// The outputs of the oldest successful `process` not committed yet have committed.
    fn committed(&self) {}

    /// Every successful `process` not committed yet will not be: its batch comes again.
    fn aborted(&self) {}

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

impl StageTelemetry {
    /// Where the stage's circuit breakers report.
    pub fn breaker_metrics(&self) -> breaker::BreakerMetrics {
        breaker::BreakerMetrics {
            stage: self.stage,
            state: self.metrics.circuit_state.clone(),
            transitions: self.metrics.circuit_transitions.clone(),
        }
    }
}

/// Runs `stage` over `log` until `shutdown` turns true, then closes the log after the last
/// commit. Returns the first fatal error. The process is ready while batches go through, and
/// not ready while a transient failure keeps re-reading a batch.
pub async fn run<L: Log, S: Stage>(
    log: L,
    stage: &S,
    config: &LoopConfig,
    telemetry: &StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StageError> {
    telemetry
        .readiness
        .set_not_ready("joining the consumer group: no partitions assigned yet");
    announce_series(telemetry);
    let following = log
        .out_of_reach()
        .map(|flag| tokio::spawn(follow_reachability(flag, Arc::clone(&telemetry.readiness))));
    let mut runner = Runner {
        log,
        stage,
        config,
        telemetry,
        shutdown,
        backoff: Backoff::new(config.backoff_initial, config.backoff_max),
        in_flight: None,
        backlog: BacklogGauges::default(),
        joined: false,
    };
    let outcome = runner.run().await;
    // The last transaction decides before the log closes, whatever stopped the loop.
    let last = runner.conclude().await;
    runner.log.close().await;
    if let Some(following) = following {
        following.abort();
    }
    outcome?;
    if let Concluded::Aborted { batch, failure } = last? {
        tracing::warn!(
            records = batch.len(),
            "the last batch did not commit; the group reads it again: {failure}"
        );
    }
    Ok(())
}

/// A batch whose transaction is under way.
struct InFlight<C> {
    batch: Vec<InputRecord>,
    counts: C,
    failed: FailedRecords,
    started: Instant,
    /// How long the stage took over it.
    processed: Duration,
    commit: tokio::task::JoinHandle<Result<(), LogError>>,
}

/// What became of the transaction under way.
enum Concluded {
    /// It committed, or none was under way.
    Committed,
    /// It did not commit: its records come again.
    Aborted {
        batch: Vec<InputRecord>,
        failure: String,
    },
}

impl Concluded {
    /// The records to read again and why, if it did not commit.
    fn read_again(self) -> Option<(Vec<InputRecord>, String)> {
        match self {
            Concluded::Committed => None,
            Concluded::Aborted { batch, failure } => Some((batch, failure)),
        }
    }
}

/// The failed records a batch sends on: to each retry tier, and to the dead letters by
/// error kind.
#[derive(Debug, Default)]
struct FailedRecords {
    retries: BTreeMap<String, u64>,
    dead_letters: BTreeMap<&'static str, u64>,
}

impl FailedRecords {
    /// Read off the outputs' topics and the headers the failure routes set.
    fn of(outputs: &[OutputRecord]) -> Self {
        let mut failed = FailedRecords::default();
        for output in outputs {
            let header = |name: &str| output.header(name).map(String::from_utf8_lossy);
            if output.topic.ends_with(".dlq") {
                let kind = header(ERROR_KIND)
                    .and_then(|kind| FailureKind::from_name(&kind))
                    .map_or("unknown", FailureKind::as_str);
                *failed.dead_letters.entry(kind).or_default() += 1;
            } else if output.topic.contains(".retry.") {
                if let Some(tier) = header(RETRY_TIER).filter(|t| t.parse::<u8>().is_ok()) {
                    *failed.retries.entry(tier.into_owned()).or_default() += 1;
                }
            }
        }
        failed
    }
}

/// The loop's state: one batch processing while the one before it commits.
struct Runner<'a, L, S: Stage> {
    log: L,
    stage: &'a S,
    config: &'a LoopConfig,
    telemetry: &'a StageTelemetry,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    in_flight: Option<InFlight<S::Counts>>,
    backlog: BacklogGauges,
    /// Whether the group has assigned this member its partitions (none, maybe) yet.
    joined: bool,
}

/// Why a stage is not ready while its log is out of reach.
const LOG_UNREACHABLE: &str = "the log's brokers are out of reach; waiting for them";

/// Not ready while `out_of_reach` is up (every broker of the log out of reach), saying so
/// over whatever else the loop reports meanwhile (it fails for the same reason); as before
/// once a broker answers, unless something else has changed the stage's readiness since.
/// Runs beside the stage's loop, which an outage can hold up in a transaction for a while.
async fn follow_reachability(out_of_reach: Arc<AtomicBool>, readiness: Arc<Readiness>) {
    // The stage's readiness when the outage began, while it lasts.
    let mut before: Option<(bool, String)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if out_of_reach.load(Ordering::SeqCst) {
            if before.is_none() {
                tracing::warn!("{LOG_UNREACHABLE}");
                before = Some((readiness.is_ready(), readiness.reason()));
            }
            if readiness.is_ready() || readiness.reason() != LOG_UNREACHABLE {
                readiness.set_not_ready(LOG_UNREACHABLE);
            }
        } else if let Some((was_ready, reason)) = before.take() {
            tracing::info!("the log's brokers answer again");
            if !readiness.is_ready() && readiness.reason() == LOG_UNREACHABLE {
                match was_ready {
                    true => readiness.set_ready(),
                    false => readiness.set_not_ready(&reason),
                }
            }
        }
    }
}

/// Sets the stage's counters at zero for every label value they can take, so that a rate
/// or an alert over them has a series before the first event of its kind.
fn announce_series(telemetry: &StageTelemetry) {
    let metrics = &telemetry.metrics;
    let stage = telemetry.stage;
    for outcome in ["committed", "aborted"] {
        metrics.transactions.with_label_values(&[stage, outcome]);
    }
    for kind in FailureKind::ALL {
        metrics
            .dead_letters
            .with_label_values(&[stage, kind.as_str()]);
    }
}

/// How often the backlog gauges are set.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// A stage's backlog gauges (`txflow_consumer_lag_records`, `txflow_retry_waiting_records`),
/// set from its log at most once every [`BACKLOG_EVERY`]; a partition no longer owned loses
/// its series.
#[derive(Debug, Default)]
pub struct BacklogGauges {
    reported: Option<(Instant, BTreeSet<(String, i32)>)>,
}

impl BacklogGauges {
    pub fn report(&mut self, log: &impl Log, telemetry: &StageTelemetry) {
        if let Some((at, _)) = &self.reported {
            if at.elapsed() < BACKLOG_EVERY {
                return;
            }
        }
        let metrics = &telemetry.metrics;
        let stage = telemetry.stage;
        let mut reported = BTreeSet::new();
        for backlog in log.backlog() {
            let partition = backlog.partition.to_string();
            let labels = [stage, backlog.topic.as_str(), partition.as_str()];
            let (lag, waiting) = match backlog.waiting {
                true => (0, backlog.records),
                false => (backlog.records, 0),
            };
            metrics.consumer_lag.with_label_values(&labels).set(lag);
            metrics
                .retry_waiting
                .with_label_values(&labels)
                .set(waiting);
            reported.insert((backlog.topic, backlog.partition));
        }
        if let Some((_, before)) = &self.reported {
            for (topic, partition) in before.difference(&reported) {
                let partition = partition.to_string();
                let labels = [stage, topic.as_str(), partition.as_str()];
                let _ = metrics.consumer_lag.remove_label_values(&labels);
                let _ = metrics.retry_waiting.remove_label_values(&labels);
            }
        }
        self.reported = Some((Instant::now(), reported));
    }
}

/// When the event `record` carries entered txflow, in milliseconds since the Unix epoch: as
/// the router stamped it, as a retry record keeps it, or the record's own timestamp.
fn entered_at(record: &InputRecord) -> Option<i64> {
    record
        .header_number(INGESTED_AT)
        .or_else(|| record.header_number(ORIGINAL_TIMESTAMP))
        .or(record.timestamp)
}

fn fatal(error: LogError) -> StageError {
    StageError::Fatal(error.to_string())
}

impl<L: Log, S: Stage> Runner<'_, L, S> {
    async fn run(&mut self) -> Result<(), StageError> {
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            let batch = tokio::select! {
                batch = self.log.next_batch(self.config.max_records, self.config.max_wait) => batch,
                _ = self.shutdown.changed() => continue,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                // Nothing was taken: wait, and ask again. The client reconnects by itself.
                Err(LogError::Unavailable(cause)) => {
                    let pause = self.backoff.next_pause(&mut rand::rng());
                    tracing::warn!(?pause, "{cause}; waiting for the log");
                    tokio::select! {
                        held = self.log.hold(pause) => held.map_err(fatal)?,
                        _ = self.shutdown.changed() => {}
                    }
                    continue;
                }
                Err(error) => return Err(fatal(error)),
            };
            self.backlog.report(&self.log, self.telemetry);
            if !self.joined && self.log.reassignment_pending() {
                self.joined = true;
                self.telemetry.readiness.set_ready();
            }
            if batch.is_empty() {
                // Nothing new: the transaction under way decides meanwhile. A reassignment is
                // taken now too: it resumes partitions a pause left paused, which would
                // otherwise never bring a batch again.
                let again = if self.log.reassignment_pending() {
                    self.reassign().await?
                } else {
                    self.conclude().await?.read_again()
                };
                if let Some((batch, failure)) = again {
                    self.read_again(&batch, &failure, None).await?;
                }
                continue;
            }
            if self.log.reassignment_pending() {
                if let Some((mut again, failure)) = self.reassign().await? {
                    again.append(&mut batch);
                    self.read_again(&again, &failure, None).await?;
                    continue;
                }
            }
            let started = Instant::now();
            let processed = self.stage.process(&batch, now_ms()).await;
            // This batch's transaction begins once the one before it has decided.
            let concluded = self.conclude().await?;
            let (failure, pause) = match (processed, concluded) {
                (Err(fatal @ StageError::Fatal(_)), _) => return Err(fatal),
                (
                    _,
                    Concluded::Aborted {
                        batch: again,
                        failure,
                    },
                ) => {
                    batch.splice(0..0, again);
                    (failure, None)
                }
                (Ok(output), Concluded::Committed) => {
                    let processed = started.elapsed();
                    let metrics = &self.telemetry.metrics;
                    let stage = [self.telemetry.stage];
                    metrics
                        .process_seconds
                        .with_label_values(&stage)
                        .observe(processed.as_secs_f64());
                    let failed = FailedRecords::of(&output.outputs);
                    fault::before_commit().await;
                    let transaction = self.log.commit(&batch, output.outputs);
                    let commit_seconds = metrics.commit_seconds.with_label_values(&stage);
                    let span = traces::work_span("kafka.commit", self.telemetry.stage);
                    let commit = tokio::spawn(async move {
                        let begun = Instant::now();
                        let outcome = transaction.instrument(span).await;
                        commit_seconds.observe(begun.elapsed().as_secs_f64());
                        outcome
                    });
                    self.in_flight = Some(InFlight {
                        batch,
                        counts: output.counts,
                        failed,
                        started,
                        processed,
                        commit,
                    });
                    continue;
                }
                (Err(StageError::Transient { kind, message }), Concluded::Committed) => {
                    (format!("{kind}: {message}"), None)
                }
                (Err(StageError::Paused { reason, resume_in }), Concluded::Committed) => {
                    (reason, Some(resume_in.max(Duration::from_millis(10))))
                }
            };
            self.read_again(&batch, &failure, pause).await?;
        }
    }

    /// Takes the log's new assignment once the transaction under way has decided: the retry
    /// records the new partitions leave go to the stage, and pauses are forgotten. What must
    /// be read again, and why: the batch of an aborted transaction, or nothing new when the
    /// log could not be reached (the reassignment stays pending).
    async fn reassign(&mut self) -> Result<Option<(Vec<InputRecord>, String)>, StageError> {
        let mut again = self.conclude().await?.read_again();
        match self.log.reassigned().await {
            Ok(Some(unconsumed)) => self.stage.reassigned(&unconsumed),
            Ok(None) => {}
            Err(LogError::Unavailable(cause)) => {
                let (batch, _) = again.take().unwrap_or_default();
                again = Some((batch, cause.to_string()));
            }
            Err(error) => return Err(fatal(error)),
        }
        Ok(again)
    }

    /// Waits for the transaction under way, and tells the stage what became of it.
    async fn conclude(&mut self) -> Result<Concluded, StageError> {
        let Some(mut in_flight) = self.in_flight.take() else {
            return Ok(Concluded::Committed);
        };
        let outcome = (&mut in_flight.commit).await.unwrap_or_else(|e| {
            Err(LogError::Fatal(Cause::context(
                "the commit's task failed",
                e,
            )))
        });
        match outcome {
            Ok(()) => {
                self.stage.committed();
                self.record_commit(&in_flight);
                self.backoff.reset();
                Ok(Concluded::Committed)
            }
            Err(LogError::Aborted(message)) => {
                self.stage.aborted();
                self.telemetry
                    .metrics
                    .transactions
                    .with_label_values(&[self.telemetry.stage, "aborted"])
                    .inc();
                Ok(Concluded::Aborted {
                    batch: in_flight.batch,
                    failure: format!("the transaction aborted: {message}"),
                })
            }
            Err(error) => Err(fatal(error)),
        }
    }

    fn record_commit(&self, committed: &InFlight<S::Counts>) {
        let name = self.telemetry.stage;
        let metrics = &self.telemetry.metrics;
        self.telemetry.readiness.set_ready();
        metrics
            .batches
            .with_label_values(&[name, "committed"])
            .inc();
        metrics
            .records
            .with_label_values(&[name])
            .inc_by(committed.batch.len() as u64);
        for (kind, count) in committed.counts.tally() {
            metrics
                .outputs
                .with_label_values(&[name, kind])
                .inc_by(count);
        }
        metrics
            .batch_seconds
            .with_label_values(&[name])
            .observe(committed.started.elapsed().as_secs_f64());
        metrics
            .transactions
            .with_label_values(&[name, "committed"])
            .inc();
        let end_to_end = metrics.end_to_end_seconds.with_label_values(&[name]);
        let now = now_ms();
        for record in &committed.batch {
            if let Some(entered) = entered_at(record) {
                end_to_end.observe((now - entered).max(0) as f64 / 1000.0);
            }
        }
        for (tier, count) in &committed.failed.retries {
            metrics
                .retries
                .with_label_values(&[name, tier])
                .inc_by(*count);
        }
        for (kind, count) in &committed.failed.dead_letters {
            metrics
                .dead_letters
                .with_label_values(&[name, kind])
                .inc_by(*count);
        }
        tracing::debug!(
            records = committed.batch.len(),
            counts = ?committed.counts,
            process_ms = committed.processed.as_millis() as u64,
            total_ms = committed.started.elapsed().as_millis() as u64,
            "batch committed"
        );
    }

    /// Reads `batch` again after a pause: `pause` when a dependency said how long, else the
    /// next backoff.
    async fn read_again(
        &mut self,
        batch: &[InputRecord],
        failure: &str,
        pause: Option<Duration>,
    ) -> Result<(), StageError> {
        let name = self.telemetry.stage;
        let metrics = &self.telemetry.metrics;
        self.telemetry.readiness.set_not_ready(failure);
        self.log.rewind(batch).await.map_err(fatal)?;
        let pause = match pause {
            Some(pause) => {
                metrics.batches.with_label_values(&[name, "paused"]).inc();
                pause
            }
            None => {
                metrics.batches.with_label_values(&[name, "retried"]).inc();
                self.backoff.next_pause(&mut rand::rng())
            }
        };
        tracing::warn!(
            records = batch.len(),
            ?pause,
            "batch will be read again: {failure}"
        );
        tokio::select! {
            held = self.log.hold(pause) => held.map_err(fatal),
            _ = self.shutdown.changed() => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn record(offset: i64) -> InputRecord {
        InputRecord {
            topic: "in".to_owned(),
            partition: 0,
            offset,
            timestamp: None,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    fn offsets(batch: &[InputRecord]) -> Vec<i64> {
        batch.iter().map(|r| r.offset).collect()
    }

    /// What the loop asked of the log and the stage, in order.
    #[derive(Default)]
    struct Trace {
        events: Mutex<Vec<String>>,
        /// Batches the stage processed.
        processed: AtomicUsize,
    }

    impl Trace {
        fn push(&self, event: String) {
            self.events.lock().unwrap().push(event);
        }
    }

    /// A log of one partition handing out scripted batches; each commit answers with the
    /// next scripted outcome, only once a batch after it was processed (so that the loop
    /// stalls unless it processes while a commit is under way).
    struct ScriptedLog {
        queued: VecDeque<Vec<InputRecord>>,
        outcomes: VecDeque<Result<(), String>>,
        trace: Arc<Trace>,
        announced: bool,
    }

    impl Log for ScriptedLog {
        async fn next_batch(
            &mut self,
            _max_records: usize,
            max_wait: Duration,
        ) -> Result<Vec<InputRecord>, LogError> {
            match self.queued.pop_front() {
                Some(batch) => Ok(batch),
                None => {
                    tokio::time::sleep(max_wait).await;
                    Ok(Vec::new())
                }
            }
        }

        fn commit(
            &mut self,
            batch: &[InputRecord],
            _outputs: Vec<OutputRecord>,
        ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
            let outcome = self.outcomes.pop_front().unwrap_or(Ok(()));
            let trace = Arc::clone(&self.trace);
            let committing = offsets(batch);
            let more_to_read = !self.queued.is_empty();
            let processed = trace.processed.load(Ordering::SeqCst);
            trace.push(format!("commit {committing:?}"));
            async move {
                while more_to_read && trace.processed.load(Ordering::SeqCst) == processed {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                trace.push(format!(
                    "{} {committing:?}",
                    if outcome.is_ok() {
                        "committed"
                    } else {
                        "aborted"
                    }
                ));
                outcome.map_err(|m| LogError::Aborted(Cause::message(m)))
            }
        }

        fn reassignment_pending(&self) -> bool {
            !self.announced
        }

        fn assigned_partitions(&self) -> usize {
            1
        }

        async fn reassigned(&mut self) -> Result<Option<Vec<InputRecord>>, LogError> {
            self.announced = true;
            Ok(Some(Vec::new()))
        }

        async fn hold(&mut self, _pause: Duration) -> Result<(), LogError> {
            Ok(())
        }

        async fn rewind(&mut self, batch: &[InputRecord]) -> Result<(), LogError> {
            self.trace.push(format!("rewind {:?}", offsets(batch)));
            self.queued.push_front(batch.to_vec());
            Ok(())
        }

        async fn close(self) {}

        fn backlog(&self) -> Vec<crate::ports::Backlog> {
            Vec::new()
        }
    }

    #[derive(Debug, Default)]
    struct NoCounts;

    impl Tally for NoCounts {
        fn tally(&self) -> Vec<(&'static str, u64)> {
            Vec::new()
        }
    }

    struct TracedStage(Arc<Trace>);

    impl Stage for TracedStage {
        type Counts = NoCounts;

        async fn process(
            &self,
            batch: &[InputRecord],
            _now_ms: i64,
        ) -> Result<BatchOutput<NoCounts>, StageError> {
            self.0.push(format!("process {:?}", offsets(batch)));
            self.0.processed.fetch_add(1, Ordering::SeqCst);
            Ok(BatchOutput {
                outputs: Vec::new(),
                counts: NoCounts,
            })
        }

        fn committed(&self) {
            self.0.push("stage committed".to_owned());
        }

        fn aborted(&self) {
            self.0.push("stage aborted".to_owned());
        }
    }

    async fn run_script(
        batches: Vec<Vec<i64>>,
        outcomes: Vec<Result<(), String>>,
        expected_commits: usize,
    ) -> Vec<String> {
        let trace = Arc::new(Trace::default());
        let log = ScriptedLog {
            queued: batches
                .into_iter()
                .map(|b| b.into_iter().map(record).collect())
                .collect(),
            outcomes: outcomes.into(),
            trace: Arc::clone(&trace),
            announced: false,
        };
        let stage = TracedStage(Arc::clone(&trace));
        let config = LoopConfig {
            max_records: 10,
            max_wait: Duration::from_millis(5),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        };
        let telemetry = StageTelemetry {
            stage: "test",
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(Readiness::default()),
        };
        let (stop, shutdown) = watch::channel(false);
        let watcher = {
            let trace = Arc::clone(&trace);
            async move {
                while trace
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|e| *e == "stage committed")
                    .count()
                    < expected_commits
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                stop.send(true).unwrap();
            }
        };
        let (outcome, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(run(log, &stage, &config, &telemetry, shutdown), watcher)
        })
        .await
        .expect("the loop stalled: it must process a batch while the one before it commits");
        outcome.unwrap();
        let events = trace.events.lock().unwrap().clone();
        events
    }

    #[tokio::test]
    async fn a_batch_is_processed_while_the_one_before_it_commits_and_committed_after_it() {
        let events = run_script(vec![vec![0, 1], vec![2, 3]], vec![Ok(()), Ok(())], 2).await;
        assert_eq!(
            events,
            [
                "process [0, 1]",
                "commit [0, 1]",
                "process [2, 3]",
                "committed [0, 1]",
                "stage committed",
                "commit [2, 3]",
                "committed [2, 3]",
                "stage committed",
            ]
        );
    }

    #[tokio::test]
    async fn when_a_commit_aborts_the_batch_processed_meanwhile_is_read_again_with_it() {
        let events = run_script(
            vec![vec![0, 1], vec![2, 3]],
            vec![Err("fenced".to_owned()), Ok(())],
            1,
        )
        .await;
        assert_eq!(
            events,
            [
                "process [0, 1]",
                "commit [0, 1]",
                "process [2, 3]",
                "aborted [0, 1]",
                "stage aborted",
                "rewind [0, 1, 2, 3]",
                "process [0, 1, 2, 3]",
                "commit [0, 1, 2, 3]",
                "committed [0, 1, 2, 3]",
                "stage committed",
            ],
            "[2, 3] is never committed on its own after [0, 1] aborted"
        );
    }

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

    fn output(topic: &str, headers: &[(&str, &str)]) -> OutputRecord {
        OutputRecord {
            topic: topic.to_owned(),
            key: None,
            value: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn failed_records_are_counted_by_tier_and_by_known_error_kind() {
        let failed = FailedRecords::of(&[
            output("txflow.ledger.retry.1", &[(RETRY_TIER, "1")]),
            output("txflow.ledger.retry.2", &[(RETRY_TIER, "2")]),
            output("txflow.ledger.retry.2", &[(RETRY_TIER, "2")]),
            // Whatever headers a record on the dead letters carries, it is a dead letter.
            output(
                "txflow.ledger.dlq",
                &[(RETRY_TIER, "2"), (ERROR_KIND, "store_unavailable")],
            ),
            output("txflow.ledger.dlq", &[(ERROR_KIND, "invalid_event")]),
            // A kind no build of txflow writes does not become a label value.
            output("txflow.ledger.dlq", &[(ERROR_KIND, "made-up\u{202e}")]),
            output("txflow.results", &[(ERROR_KIND, "invalid_event")]),
        ]);
        assert_eq!(
            failed.retries,
            BTreeMap::from([("1".to_owned(), 1), ("2".to_owned(), 2)])
        );
        assert_eq!(
            failed.dead_letters,
            BTreeMap::from([
                ("invalid_event", 1),
                ("store_unavailable", 1),
                ("unknown", 1)
            ])
        );
    }

    #[test]
    fn an_event_entered_when_the_router_stamped_it_whatever_its_later_timestamps() {
        let mut routed = record(1);
        routed.timestamp = Some(5_000);
        assert_eq!(entered_at(&routed), Some(5_000));
        routed
            .headers
            .push((ORIGINAL_TIMESTAMP.to_owned(), b"3000".to_vec()));
        assert_eq!(entered_at(&routed), Some(3_000));
        routed
            .headers
            .push((INGESTED_AT.to_owned(), b"1000".to_vec()));
        assert_eq!(entered_at(&routed), Some(1_000));
        assert_eq!(entered_at(&record(2)), None);
    }
}
