//! Ledger and failure-handling behaviour written once, run against every backend (Kafka and
//! Cassandra; the embedded database of `txflow dev`): the ledger stage, in this process,
//! through the same pipeline loop as `txflow run`, over the log, store, publisher and reader
//! that the backend's `txflow::app::Backend` gives a stage.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use txflow::adapters::kafka::Delivery;
use txflow::app::Config;
use txflow::app::{Access, Backend};
use txflow::codec::{Codec, Record};
use txflow::domain::{
    Account, Cause, EventType, IdClaim, Recorded, RetryPolicy, Settlement, TransactionEvent,
    TransactionResult,
};
use txflow::failures::{dead_letter_topic, retry_topic, FailureRoutes};
use txflow::pipeline::breaker::{Breaker, BreakerConfig};
use txflow::pipeline::{self, LoopConfig, Membership, StageTelemetry};
use txflow::ports::{
    Balances, DelayedTopics, LedgerStore, LoadedAccount, Log, Publisher, StoreError, TopicReader,
};
use txflow::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use txflow::telemetry::{Metrics, Readiness};
use txflow::wire::OutputRecord;

use crate::invariants::observed_of;
use crate::{results_of, ReadRecord};
use txflow::domain::ledger::MAX_BALANCE_MINOR;
use txflow::loadgen::hostile::{HostileConfig, HostileWorkload};
use txflow::wire::ERROR_KIND;

/// The topics of one run.
pub struct Topics {
    pub ledger: String,
    pub results: String,
    pub dead_letters: String,
    /// The retry tiers, shortest first; their delays are [`TIER_DELAYS`].
    pub tiers: Vec<String>,
}

/// The longest pause of each retry tier, in milliseconds.
pub const TIER_DELAYS: [u64; 3] = [200, 500, 1000];

/// An account whose first two conditional writes fail as if the store were unavailable.
const FLAKY: &str = "acct-flaky";

/// The store, but `record` fails twice on [`FLAKY`]: a transient failure the retry tiers
/// carry, on one account, which must not hold up the others or reorder its events.
struct Flaky<S> {
    inner: Arc<S>,
    failures_left: AtomicU32,
}

impl<S: LedgerStore> LedgerStore for Flaky<S> {
    async fn load(&self, account_id: &str, keys: &[String]) -> Result<LoadedAccount, StoreError> {
        self.inner.load(account_id, keys).await
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        self.inner.currencies(account_ids).await
    }

    async fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> Result<std::collections::HashMap<String, IdClaim>, StoreError> {
        self.inner.claim_event_ids(claims).await
    }

    async fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> Result<std::collections::HashMap<(String, String), Recorded>, StoreError> {
        self.inner.recorded(postings).await
    }

    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        if account_id == FLAKY
            && self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Unavailable(Cause::message(
                "injected by the conformance suite",
            )));
        }
        self.inner.record(account_id, before, settlement).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

impl<S: Balances> Balances for Flaky<S> {
    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        self.inner.account(account_id).await
    }

    fn accounts(&self) -> futures::stream::BoxStream<'_, Result<(String, Account), StoreError>> {
        self.inner.accounts()
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        self.inner.outcomes(event_id).await
    }
}

fn event(id: &str, kind: EventType, account: &str, amount: i64) -> TransactionEvent {
    TransactionEvent {
        event_id: id.into(),
        event_type: kind,
        account_id: account.into(),
        counterparty_account_id: None,
        amount_minor: amount,
        currency: "EUR".into(),
        occurred_at: 1_764_000_000_000,
        source: "conformance".into(),
        attributes: BTreeMap::new(),
    }
}

fn record(topic: &str, event: &TransactionEvent) -> OutputRecord {
    OutputRecord {
        topic: topic.to_owned(),
        key: Some(event.account_id.as_bytes().to_vec()),
        value: Some(
            Codec::builtin()
                .encode(Record::TransactionEvent, event)
                .unwrap(),
        ),
        headers: Vec::new(),
    }
}

/// One backend under test, as `txflow run` and `txflow dev` reach it: its [`Backend`] and the
/// configuration of its stages (topics and the ledger's group and retry tiers).
pub struct Subject<B> {
    pub backend: B,
    pub config: Config,
}

impl<B: Backend + Access> Subject<B> {
    /// The configuration of a subject whose tiers are [`TIER_DELAYS`].
    pub fn new(backend: B, mut config: Config) -> Self {
        config.ledger.retry_delays_ms = TIER_DELAYS.to_vec();
        Subject { backend, config }
    }

    fn topics(&self) -> Topics {
        let ledger = &self.config.topics.ledger;
        Topics {
            ledger: ledger.clone(),
            results: self.config.topics.results.clone(),
            dead_letters: dead_letter_topic(ledger),
            tiers: (1..=TIER_DELAYS.len())
                .map(|n| retry_topic(ledger, n))
                .collect(),
        }
    }

    /// A member of the ledger's group (named after `group` within the configured one) on
    /// the ledger topic and its tiers.
    fn log(&self, group: &str) -> B::Log {
        let topics = self.topics();
        let group_id = format!("{}-{group}", self.config.ledger.group.group_id);
        self.backend
            .log(
                &self.config,
                &Membership::new("ledger", &group_id, Some("conformance"), 6000),
                &[topics.ledger.as_str()],
                &DelayedTopics::new(
                    topics.tiers.iter().cloned().zip(
                        TIER_DELAYS
                            .iter()
                            .map(|ms| std::time::Duration::from_millis(*ms)),
                    ),
                ),
                Delivery::ExactlyOnce,
            )
            .expect("the ledger's log")
    }

    /// Every committed record of `topic`.
    async fn read(&self, topic: &str) -> Vec<ReadRecord> {
        Access::reader(&self.backend, &self.config)
            .expect("a reader")
            .read_to_end(topic)
            .await
            .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
            .into_iter()
            .map(ReadRecord::from)
            .collect()
    }

    /// The results on the results topic.
    async fn results(&self) -> Vec<TransactionResult> {
        results_of(&self.read(&self.config.topics.results).await)
    }

    /// Waits until `done` holds of the results and the dead letters, for at most 90 s.
    async fn settle_until(
        &self,
        what: &str,
        done: impl Fn(&[TransactionResult], &[ReadRecord]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let results = self.results().await;
            let letters = self.read(&self.topics().dead_letters).await;
            if done(&results, &letters) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not settled within 90 s: {} results, {} dead letters",
                results.len(),
                letters.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn publish(&self, events: &[TransactionEvent]) {
        let topic = &self.config.topics.ledger;
        self.publish_records(events.iter().map(|e| record(topic, e)).collect())
            .await;
    }

    async fn publish_records(&self, records: Vec<OutputRecord>) {
        let publisher = Backend::publisher(&self.backend, &self.config).expect("a publisher");
        for published in publisher.publish(records).await {
            published.expect("the records are written");
        }
    }

    async fn store(&self) -> Arc<B::Store> {
        Backend::store(&self.backend, &self.config)
            .await
            .expect("the store")
    }
}

/// The ledger stage running in this process until [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), txflow::pipeline::StageError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task
            .await
            .expect("the ledger task")
            .expect("the ledger ran without a fatal error");
    }
}

/// Runs the ledger over `log` and `store`, through the pipeline loop of `txflow run`.
fn start_ledger<L, S>(topics: &Topics, log: L, store: Arc<S>) -> Running
where
    L: Log + 'static,
    S: LedgerStore,
{
    let policy = RetryPolicy::from_millis(&TIER_DELAYS);
    let failures = FailureRoutes {
        input: topics.ledger.clone(),
        stage: "ledger",
        group: "conformance".into(),
        policy,
    };
    assert_eq!(failures.tier_topics(), topics.tiers);
    let ledger = Ledger::new(
        store,
        Arc::new(Codec::builtin()),
        LedgerTopics {
            input: topics.ledger.clone(),
            results: topics.results.clone(),
        },
        failures,
        LedgerSettings {
            concurrency: 8,
            max_attempts: 20,
            cache_capacity: 1000,
        },
        Arc::new(Breaker::new(
            "store",
            BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_millis(500),
            },
            None,
        )),
        None,
    );
    let telemetry = StageTelemetry {
        stage: "ledger",
        metrics: Arc::new(Metrics::new()),
        readiness: Arc::new(Readiness::default()),
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let config = LoopConfig {
            max_records: 100,
            max_wait: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        };
        pipeline::run(log, &ledger, &config, &telemetry, stopped).await
    });
    Running { stop, task }
}

/// Deposits, a withdrawal, a rejection, a transfer, a re-send, a conflicting re-send, poison,
/// and an account whose writes fail for a while: settled exactly, in each account's order,
/// with the failures where they belong.
pub async fn the_ledger_settles_retries_and_dead_letters<B: Backend + Access>(subject: Subject<B>) {
    let topics = subject.topics();
    let store = subject.store().await;
    let mut transfer = event("e5", EventType::Transfer, "acct-a", 200);
    transfer.counterparty_account_id = Some("acct-b".into());
    let first = event("e1", EventType::Deposit, "acct-a", 1000);
    let mut conflict = first.clone();
    conflict.amount_minor = 999;
    let mut records: Vec<OutputRecord> = [
        first.clone(),
        event("e2", EventType::Deposit, "acct-b", 500),
        event("e3", EventType::Withdrawal, "acct-a", 300),
        event("e4", EventType::Withdrawal, "acct-b", 900),
        transfer,
        event("e6", EventType::Deposit, FLAKY, 50),
        event("e7", EventType::Deposit, FLAKY, 25),
        first,
        conflict,
    ]
    .iter()
    .map(|e| record(&topics.ledger, e))
    .collect();
    records.push(OutputRecord {
        topic: topics.ledger.clone(),
        key: Some(b"acct-x".to_vec()),
        value: Some(b"not avro".to_vec()),
        headers: Vec::new(),
    });
    subject.publish_records(records).await;

    let log = subject.log("conformance");
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        failures_left: AtomicU32::new(2),
    });
    let running = start_ledger(&topics, log, flaky);

    subject
        .settle_until("the first run", |results, letters| {
            results.len() >= 8 && letters.len() >= 2
        })
        .await;
    let results = subject.results().await;
    // A little longer: nothing more may come (the re-send publishes nothing).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let results = {
        let again = subject.results().await;
        assert_eq!(
            again.len(),
            results.len(),
            "results after settling: {again:?}"
        );
        again
    };
    let summary: Vec<(String, String, String, String, i64)> = results
        .iter()
        .map(|r| {
            (
                r.event_id.clone(),
                r.account_id.clone(),
                r.entry.as_str().to_owned(),
                r.status.as_str().to_owned(),
                r.balance_after_minor,
            )
        })
        .collect();
    let by_account = |account: &str| -> Vec<(String, String, String, i64)> {
        summary
            .iter()
            .filter(|(_, a, ..)| a == account)
            .map(|(e, _, entry, status, balance)| {
                (e.clone(), entry.clone(), status.clone(), *balance)
            })
            .collect()
    };
    let row = |e: &str, entry: &str, status: &str, balance: i64| {
        (e.to_owned(), entry.to_owned(), status.to_owned(), balance)
    };
    assert_eq!(
        by_account("acct-a"),
        [
            row("e1", "CREDIT", "APPLIED", 1000),
            row("e3", "DEBIT", "APPLIED", 700),
            row("e5", "DEBIT", "APPLIED", 500)
        ]
    );
    assert_eq!(
        by_account("acct-b"),
        [
            row("e2", "CREDIT", "APPLIED", 500),
            row("e4", "NONE", "REJECTED", 500),
            row("e5", "CREDIT", "APPLIED", 700)
        ]
    );
    assert_eq!(
        by_account(FLAKY),
        [
            row("e6", "CREDIT", "APPLIED", 50),
            row("e7", "CREDIT", "APPLIED", 75)
        ],
        "the failing account's events were retried, in order"
    );
    assert_eq!(results.len(), 8, "{summary:?}");

    let mut letters: Vec<(String, String)> = subject
        .read(&topics.dead_letters)
        .await
        .iter()
        .map(|r| {
            (
                r.header("txflow.error.kind").unwrap_or_default(),
                r.header("txflow.original.topic").unwrap_or_default(),
            )
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        [
            ("idempotency_conflict".to_owned(), topics.ledger.clone()),
            ("undecodable".to_owned(), topics.ledger.clone())
        ]
    );
    assert!(
        !subject.read(&topics.tiers[0]).await.is_empty(),
        "the failing account's events went through the first retry tier"
    );

    for (account, balance) in [("acct-a", 500), ("acct-b", 700), (FLAKY, 75)] {
        let stored = store.account(account).await.unwrap().expect("the account");
        assert_eq!(stored.balance_minor, balance, "{account}");
    }
    let legs = store.outcomes("e5").await.unwrap();
    assert_eq!(legs.len(), 2, "the transfer's two legs: {legs:?}");
}

/// The seed of a randomized run: `TXFLOW_TEST_SEED` replays one, else a new one, printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TXFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: TXFLOW_TEST_SEED={seed}");
    seed
}

/// A result as (event, entry, status, reason, balance after, version): what the
/// reproductions below expect, exactly.
type Line = (String, &'static str, &'static str, Option<String>, i64, i64);

fn line(r: &TransactionResult) -> Line {
    (
        r.event_id.clone(),
        r.entry.as_str(),
        r.status.as_str(),
        r.reason.clone(),
        r.balance_after_minor,
        r.account_version,
    )
}

fn expect(
    event: &str,
    entry: &'static str,
    status: &'static str,
    reason: Option<&str>,
    balance: i64,
    version: i64,
) -> Line {
    (
        event.to_owned(),
        entry,
        status,
        reason.map(str::to_owned),
        balance,
        version,
    )
}

/// The five ways valid-looking input once destroyed or invented money, each with its exact
/// outcome: an id re-used by a transfer into the account it first credited; a transfer
/// whose credit would pass the largest balance; a deposit that would; one id deposited on
/// two accounts; an account whose only event was rejected.
pub async fn reused_ids_and_balance_limits_move_no_money<B: Backend + Access>(subject: Subject<B>) {
    let topics = subject.topics();
    let store = subject.store().await;
    let running = start_ledger(&topics, subject.log("reproductions"), store.clone());
    let transfer = |id: &str, from: &str, to: &str, amount: i64| TransactionEvent {
        counterparty_account_id: Some(to.to_owned()),
        ..event(id, EventType::Transfer, from, amount)
    };
    // First what each case starts from, settled; then what attacks it.
    let opening = [
        event("r1-x", EventType::Deposit, "r1-a", 500),
        event("r1-fund", EventType::Deposit, "r1-b", 1000),
        event(
            "r2-open",
            EventType::Deposit,
            "r2-big",
            MAX_BALANCE_MINOR - 10,
        ),
        event("r2-fund", EventType::Deposit, "r2-payer", 100),
        event("r3-open", EventType::Deposit, "r3-a", MAX_BALANCE_MINOR),
        event("r3-huge", EventType::Deposit, "r3-b", i64::MAX),
        event("r4-x", EventType::Deposit, "r4-a", 7),
        event("r5-w", EventType::Withdrawal, "r5-e", 5),
        event("r5-fund", EventType::Deposit, "r5-payer", 50),
    ];
    subject.publish(&opening).await;
    subject
        .settle_until("the openings", |results, _| results.len() >= opening.len())
        .await;
    let attacks = [
        transfer("r1-x", "r1-b", "r1-a", 25),
        transfer("r2-t", "r2-payer", "r2-big", 25),
        event("r3-over", EventType::Deposit, "r3-a", 1),
        event("r4-x", EventType::Deposit, "r4-c", 7),
        transfer("r5-t", "r5-payer", "r5-e", 10),
    ];
    subject.publish(&attacks).await;
    subject
        .settle_until("the attacks", |results, letters| {
            results.len() >= opening.len() + 5 && letters.len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let results = subject.results().await;
    let on = |account: &str| -> Vec<Line> {
        results
            .iter()
            .filter(|r| r.account_id == account)
            .map(line)
            .collect()
    };
    let applied = "APPLIED";
    let rejected = "REJECTED";
    let limit = Some("balance_limit_exceeded");
    // 1. The transfer re-using the deposit's id is a conflict: B keeps its 1000.
    assert_eq!(
        on("r1-a"),
        [expect("r1-x", "CREDIT", applied, None, 500, 1)]
    );
    assert_eq!(
        on("r1-b"),
        [expect("r1-fund", "CREDIT", applied, None, 1000, 1)]
    );
    // 2. The credit past the limit is rejected, and the debit reversed.
    assert_eq!(
        on("r2-payer"),
        [
            expect("r2-fund", "CREDIT", applied, None, 100, 1),
            expect("r2-t", "DEBIT", applied, None, 75, 2),
            expect("r2-t", "CREDIT", applied, Some("transfer_reversed"), 100, 3),
        ]
    );
    assert_eq!(
        on("r2-big"),
        [
            expect(
                "r2-open",
                "CREDIT",
                applied,
                None,
                MAX_BALANCE_MINOR - 10,
                1
            ),
            expect("r2-t", "NONE", rejected, limit, MAX_BALANCE_MINOR - 10, 2),
        ]
    );
    let mut outcomes = store.outcomes("r2-t").await.expect("the outcomes of r2-t");
    outcomes.sort_by_key(|r| (r.account_id.clone(), r.account_version));
    assert_eq!(
        outcomes.iter().map(line).collect::<Vec<_>>(),
        [
            expect("r2-t", "NONE", rejected, limit, MAX_BALANCE_MINOR - 10, 2),
            expect("r2-t", "DEBIT", applied, None, 75, 2),
            expect("r2-t", "CREDIT", applied, Some("transfer_reversed"), 100, 3),
        ],
        "the transfer's outcomes say it was reversed"
    );
    // 3. Deposits past the limit are rejected with a result, which the store answers for.
    assert_eq!(
        on("r3-a"),
        [
            expect("r3-open", "CREDIT", applied, None, MAX_BALANCE_MINOR, 1),
            expect("r3-over", "NONE", rejected, limit, MAX_BALANCE_MINOR, 2),
        ]
    );
    assert_eq!(
        on("r3-b"),
        [expect("r3-huge", "NONE", rejected, limit, 0, 1)]
    );
    assert_eq!(
        store
            .outcomes("r3-over")
            .await
            .unwrap()
            .iter()
            .map(line)
            .collect::<Vec<_>>(),
        [expect(
            "r3-over",
            "NONE",
            rejected,
            limit,
            MAX_BALANCE_MINOR,
            2
        )]
    );
    // 4. One id, a second account: a conflict, and that account never opens.
    assert_eq!(on("r4-a"), [expect("r4-x", "CREDIT", applied, None, 7, 1)]);
    assert_eq!(on("r4-c"), []);
    // 5. An account whose only event was rejected does not exist, for reads and transfers.
    assert_eq!(
        on("r5-e"),
        [expect(
            "r5-w",
            "NONE",
            rejected,
            Some("insufficient_funds"),
            0,
            1
        )]
    );
    assert_eq!(
        on("r5-payer"),
        [
            expect("r5-fund", "CREDIT", applied, None, 50, 1),
            expect("r5-t", "NONE", rejected, Some("unknown_account"), 50, 2),
        ]
    );
    assert_eq!(results.len(), opening.len() + 5, "{results:?}");

    for (account, balance) in [
        ("r1-a", Some(500)),
        ("r1-b", Some(1000)),
        ("r2-payer", Some(100)),
        ("r2-big", Some(MAX_BALANCE_MINOR - 10)),
        ("r3-a", Some(MAX_BALANCE_MINOR)),
        ("r3-b", None),
        ("r4-a", Some(7)),
        ("r4-c", None),
        ("r5-e", None),
        ("r5-payer", Some(50)),
    ] {
        let stored = store.account(account).await.unwrap();
        assert_eq!(stored.map(|a| a.balance_minor), balance, "{account}");
    }
    let mut letters: Vec<(String, String)> = subject
        .read(&topics.dead_letters)
        .await
        .iter()
        .map(|r| {
            let event: TransactionEvent = Codec::builtin()
                .decode(
                    Record::TransactionEvent,
                    r.value.as_deref().unwrap_or_default(),
                )
                .unwrap();
            (r.header(ERROR_KIND).unwrap_or_default(), event.account_id)
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        [
            ("idempotency_conflict".to_owned(), "r1-b".to_owned()),
            ("idempotency_conflict".to_owned(), "r4-c".to_owned()),
        ]
    );
}

/// The hostile workload (`txflow::loadgen::hostile`): ids re-used every way, amounts at the
/// limits, transfers into accounts opened a moment before. Every rule of the audit holds,
/// nothing is left in flight, and the store answers for every account and event as the
/// results say.
pub async fn a_hostile_workload_keeps_every_invariant<B: Backend + Access>(
    subject: Subject<B>,
    seed: u64,
) {
    let topics = subject.topics();
    let store = subject.store().await;
    let events = HostileWorkload::new(HostileConfig {
        seed,
        prefix: "hc".to_owned(),
    })
    .take(800);
    subject.publish(&events).await;
    let running = start_ledger(&topics, subject.log("hostile"), store.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    let observed = loop {
        let observed = observed_of(
            subject.read(&topics.ledger).await,
            subject.read(&topics.results).await,
            subject.read(&topics.dead_letters).await,
        );
        let missing = observed.missing();
        if missing.is_empty() {
            break observed;
        }
        assert!(
            Instant::now() < deadline,
            "not drained within 120 s: {:?}",
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    running.stop().await;

    let report = &observed.audit;
    assert!(
        report.violations.is_empty(),
        "{} violations, the first: {:#?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(5)]
    );
    assert!(report.in_flight.is_empty(), "{:?}", report.in_flight);
    for (account, rebuilt) in &report.accounts {
        let stored = store.account(account).await.unwrap();
        let expected = rebuilt.currency.as_ref().map(|_| rebuilt.balance_minor);
        assert_eq!(stored.map(|a| a.balance_minor), expected, "{account}");
    }
    let mut published: HashMap<&str, Vec<TransactionResult>> = HashMap::new();
    for r in &observed.results {
        published.entry(&r.event_id).or_default().push(r.clone());
    }
    let order = |r: &TransactionResult| (r.account_id.clone(), r.account_version);
    for (event_id, mut results) in published {
        let mut outcomes = store.outcomes(event_id).await.unwrap();
        outcomes.sort_by_key(order);
        results.sort_by_key(order);
        assert_eq!(outcomes, results, "the outcomes of {event_id}");
    }
    let kinds: Vec<String> = observed
        .dead_letters
        .iter()
        .map(|d| d.header(ERROR_KIND).unwrap_or_default())
        .collect();
    assert!(
        kinds.iter().all(|k| k == "idempotency_conflict"),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), observed.expected_conflicts());
}
