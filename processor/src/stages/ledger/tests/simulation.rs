//! The whole ledger stage over the embedded store, on a simulated ledger topic of several
//! partitions, fed the hostile workload: batches across partitions in any mix, crashes
//! before the commit (the batch is read again, sometimes by a new process with nothing
//! cached), credit legs and reversals written back to the topic as the log would. Once
//! drained, the audit of every result against every event sent must find nothing, no
//! transfer may be left in flight, the store must agree with the results, and the only
//! dead letters are idempotency conflicts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::adapters::embedded::{Embedded, EmbeddedLedgerStore};
use crate::codec::{Codec, Record};
use crate::domain::audit::audit;
use crate::domain::{RetryPolicy, TransactionEvent, TransactionResult};
use crate::failures::FailureRoutes;
use crate::loadgen::hostile::{HostileConfig, HostileWorkload};
use crate::pipeline::breaker::{Breaker, BreakerConfig};
use crate::pipeline::Stage;
use crate::ports::Balances;
use crate::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use crate::wire::ERROR_KIND;
use crate::wire::{InputRecord, OutputRecord};

const LEDGER: &str = "txflow.ledger";
const RESULTS: &str = "txflow.results";
const DEAD_LETTERS: &str = "txflow.ledger.dlq";
const PARTITIONS: usize = 3;
/// Events per seed, and batches a drained run may take at most before a partition counts as
/// stalled.
const EVENTS: usize = 160;
const MAX_STEPS: usize = 20_000;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new_ledger(store: Arc<EmbeddedLedgerStore>) -> Ledger<EmbeddedLedgerStore> {
    Ledger::new(
        store,
        Arc::new(Codec::builtin()),
        LedgerTopics {
            input: LEDGER.to_owned(),
            results: RESULTS.to_owned(),
        },
        FailureRoutes {
            input: LEDGER.to_owned(),
            stage: "ledger",
            group: "simulation".to_owned(),
            policy: RetryPolicy::from_millis(&[10, 20]),
        },
        // A small cache: accounts are forgotten and read again often.
        LedgerSettings {
            concurrency: 4,
            max_attempts: 20,
            cache_capacity: 4,
        },
        Arc::new(Breaker::new(
            "store",
            BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_millis(100),
            },
            None,
        )),
        None,
    )
}

/// The ledger topic, the process reading it, and what its committed batches published.
struct World {
    _dir: TempDir,
    store: Arc<EmbeddedLedgerStore>,
    ledger: Ledger<EmbeddedLedgerStore>,
    codec: Codec,
    rng: StdRng,
    partitions: Vec<Vec<InputRecord>>,
    positions: Vec<usize>,
    results: Vec<TransactionResult>,
    dead_letter_kinds: Vec<String>,
    crashes: usize,
    now_ms: i64,
}

fn partition_of(key: &[u8]) -> usize {
    key.iter().fold(0_usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(*b))
    }) % PARTITIONS
}

impl World {
    fn new(seed: u64) -> World {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "txflow-ledger-simulation-{}-{seed}-{}",
            std::process::id(),
            rand::random::<u32>()
        )));
        let store = Arc::new(Embedded::open(&dir.0).expect("an embedded store").store());
        World {
            _dir: dir,
            ledger: new_ledger(store.clone()),
            store,
            codec: Codec::builtin(),
            rng: StdRng::seed_from_u64(seed),
            partitions: vec![Vec::new(); PARTITIONS],
            positions: vec![0; PARTITIONS],
            results: Vec::new(),
            dead_letter_kinds: Vec::new(),
            crashes: 0,
            now_ms: 1_800_000_000_000,
        }
    }

    fn append(&mut self, record: OutputRecord) {
        let key = record.key.clone().expect("every ledger record is keyed");
        let partition = partition_of(&key);
        let log = &mut self.partitions[partition];
        log.push(InputRecord {
            topic: record.topic,
            partition: partition as i32,
            offset: log.len() as i64,
            timestamp: Some(self.now_ms),
            key: Some(key),
            value: record.value,
            headers: record.headers,
        });
    }

    fn send(&mut self, event: &TransactionEvent) {
        let value = self
            .codec
            .encode(Record::TransactionEvent, event)
            .expect("an event encodes");
        self.append(OutputRecord {
            topic: LEDGER.to_owned(),
            key: Some(event.account_id.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
        });
    }

    fn drained(&self) -> bool {
        self.positions
            .iter()
            .zip(&self.partitions)
            .all(|(position, log)| *position == log.len())
    }

    /// Reads a batch from some partitions, processes it, then commits it or crashes: the
    /// batch is read again, by the same process or, after a restart, a new one.
    async fn step(&mut self, commit: bool) {
        self.now_ms += 7;
        let mut batch = Vec::new();
        let mut ends = self.positions.clone();
        for (partition, log) in self.partitions.iter().enumerate() {
            if self.rng.random_bool(0.3) {
                continue;
            }
            let take = self.rng.random_range(1..=12);
            let end = (self.positions[partition] + take).min(log.len());
            batch.extend_from_slice(&log[self.positions[partition]..end]);
            ends[partition] = end;
        }
        if batch.is_empty() {
            return;
        }
        let output = self
            .ledger
            .process(&batch, self.now_ms)
            .await
            .expect("the embedded store does not fail");
        if !commit {
            self.crashes += 1;
            self.ledger.aborted();
            if self.rng.random_bool(0.5) {
                self.ledger = new_ledger(self.store.clone());
                self.ledger.reassigned(&[]);
            }
            return;
        }
        for record in output.outputs {
            match record.topic.as_str() {
                LEDGER => self.append(record),
                RESULTS => self.results.push(
                    self.codec
                        .decode(
                            Record::TransactionResult,
                            record.value.as_deref().unwrap_or_default(),
                        )
                        .expect("a result record"),
                ),
                DEAD_LETTERS => {
                    let kind = record
                        .headers
                        .iter()
                        .find(|(name, _)| name == ERROR_KIND)
                        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
                    self.dead_letter_kinds.push(kind.unwrap_or_default());
                }
                other => panic!("nothing fails transiently here, yet a record went to {other}"),
            }
        }
        self.ledger.committed();
        self.positions = ends;
    }
}

/// The seeds to run: `TXFLOW_TEST_SEED` replays one.
fn seeds() -> Vec<u64> {
    match std::env::var("TXFLOW_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("TXFLOW_TEST_SEED is a number")],
        Err(_) => (0..40).collect(),
    }
}

/// What a run went through: a workload that meets none of these proves little.
#[derive(Debug, Default)]
struct Seen {
    conflicts: usize,
    limit_rejections: usize,
    reversals: usize,
    crashes: usize,
}

async fn run(seed: u64) -> Result<Seen, String> {
    let events = HostileWorkload::new(HostileConfig {
        seed,
        prefix: "h".to_owned(),
    })
    .take(EVENTS);
    let mut world = World::new(seed);
    for event in &events {
        world.send(event);
        if world.rng.random_bool(0.3) {
            let commit = world.rng.random_bool(0.8);
            world.step(commit).await;
        }
    }
    let mut steps = 0;
    while !world.drained() {
        world.step(true).await;
        steps += 1;
        if steps > MAX_STEPS {
            return Err(format!(
                "not drained after {MAX_STEPS} batches: a partition stalled at {:?} of {:?}",
                world.positions,
                world.partitions.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
    }
    check(&world, &events).await?;
    let reason = |r: &&TransactionResult, reason: &str| r.reason.as_deref() == Some(reason);
    Ok(Seen {
        conflicts: world.dead_letter_kinds.len(),
        limit_rejections: world
            .results
            .iter()
            .filter(|r| reason(r, "balance_limit_exceeded"))
            .count(),
        reversals: world.results.iter().filter(|r| r.is_reversal()).count(),
        crashes: world.crashes,
    })
}

async fn check(world: &World, events: &[TransactionEvent]) -> Result<(), String> {
    let report = audit(events, &world.results);
    if !report.violations.is_empty() {
        return Err(format!(
            "the audit found {} violations, the first: {:#?}",
            report.violations.len(),
            &report.violations[..report.violations.len().min(5)]
        ));
    }
    if !report.in_flight.is_empty() {
        return Err(format!("transfers left in flight: {:?}", report.in_flight));
    }
    if let Some(kind) = world
        .dead_letter_kinds
        .iter()
        .find(|kind| *kind != "idempotency_conflict")
    {
        return Err(format!(
            "a valid event was dead-lettered as {kind} (all: {:?})",
            world.dead_letter_kinds
        ));
    }
    let mut outcomes: BTreeMap<&str, Vec<&TransactionResult>> = BTreeMap::new();
    for result in &world.results {
        outcomes.entry(&result.event_id).or_default().push(result);
    }
    for event in events {
        if !outcomes.contains_key(event.event_id.as_str()) {
            return Err(format!("{:?} has no result", event.event_id));
        }
    }
    for (account_id, rebuilt) in &report.accounts {
        let stored = world
            .store
            .account(account_id)
            .await
            .map_err(|e| e.to_string())?;
        let expected = rebuilt
            .currency
            .as_ref()
            .map(|currency| (rebuilt.balance_minor, currency.clone(), rebuilt.version));
        let found = stored.map(|a| (a.balance_minor, a.currency.unwrap_or_default(), a.version));
        if found != expected {
            return Err(format!(
                "{account_id:?}: the store holds {found:?}, its results say {expected:?}"
            ));
        }
    }
    for (event_id, published) in outcomes {
        let mut stored = world
            .store
            .outcomes(event_id)
            .await
            .map_err(|e| e.to_string())?;
        let mut published: Vec<TransactionResult> = published.into_iter().cloned().collect();
        let order = |r: &TransactionResult| (r.account_id.clone(), r.account_version);
        stored.sort_by_key(order);
        published.sort_by_key(order);
        if stored != published {
            return Err(format!(
                "the outcomes of {event_id:?} in the store are {stored:?}, published {published:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn hostile_workloads_keep_every_ledger_invariant() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Seen::default();
    let mut failures = Vec::new();
    for seed in seeds() {
        match runtime.block_on(run(seed)) {
            Ok(run) => {
                seen.conflicts += run.conflicts;
                seen.limit_rejections += run.limit_rejections;
                seen.reversals += run.reversals;
                seen.crashes += run.crashes;
            }
            Err(e) => failures.push(format!("TXFLOW_TEST_SEED={seed}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed; the first: {}",
        failures.len(),
        failures[0]
    );
    // One seed replayed may meet few of them; the whole set meets each many times.
    if std::env::var("TXFLOW_TEST_SEED").is_err() {
        assert!(
            seen.conflicts > 100
                && seen.limit_rejections > 100
                && seen.reversals > 10
                && seen.crashes > 100,
            "the workload met every hostile case often: {seen:?}"
        );
    }
}
