//! Ledger and failure-handling behaviour written once, run against every backend (Kafka and
//! Cassandra; the embedded database of `txflow dev`): the ledger stage, in this process,
//! through the same pipeline loop as `txflow run`, over whichever log and store it is given.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use txflow::codec::{Codec, Record};
use txflow::domain::{
    Account, EventType, IdClaim, Recorded, RetryPolicy, Settlement, TransactionEvent,
    TransactionResult,
};
use txflow::failures::FailureRoutes;
use txflow::pipeline::breaker::{Breaker, BreakerConfig};
use txflow::pipeline::{self, LoopConfig, StageTelemetry};
use txflow::ports::{LedgerStore, LoadedAccount, Log, Publisher, StoreError};
use txflow::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use txflow::telemetry::{Metrics, Readiness};
use txflow::wire::OutputRecord;

use crate::invariants::{observe_from, Source};
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
            return Err(StoreError::Unavailable(
                "injected by the conformance suite".into(),
            ));
        }
        self.inner.record(account_id, before, settlement).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

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

/// Reads the committed records of a topic.
pub type Reader = Box<dyn Fn(&str) -> Vec<ReadRecord> + Send + Sync>;

/// Joins the ledger's group: a group name and the retry tiers.
pub type NewLog<L> = Box<dyn FnOnce(&str, &[String]) -> L + Send>;

/// One backend under test: its topics, a way to join the ledger's group (a group name and
/// the retry tiers), its store, a publisher for the test's events, and a reader of committed
/// records.
pub struct Backend<S, P, L> {
    pub topics: Topics,
    pub new_log: NewLog<L>,
    pub store: Arc<S>,
    pub publisher: P,
    pub read: Reader,
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

/// The results on the results topic.
fn results_on(read: &impl Fn(&str) -> Vec<ReadRecord>, topics: &Topics) -> Vec<TransactionResult> {
    results_of(&read(&topics.results))
}

/// Waits until `done` holds of what the topics hold, for at most 90 s.
async fn settle_until(
    what: &str,
    read: &impl Fn(&str) -> Vec<ReadRecord>,
    topics: &Topics,
    done: impl Fn(&[TransactionResult], &[ReadRecord]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let results = results_on(read, topics);
        let letters = read(&topics.dead_letters);
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

async fn publish_all(publisher: &impl Publisher, topic: &str, events: &[TransactionEvent]) {
    let records = events.iter().map(|e| record(topic, e)).collect();
    for published in publisher.publish(records).await {
        published.expect("the events are written");
    }
}

/// Deposits, a withdrawal, a rejection, a transfer, a re-send, a conflicting re-send, poison,
/// and an account whose writes fail for a while: settled exactly, in each account's order,
/// with the failures where they belong.
pub async fn the_ledger_settles_retries_and_dead_letters<L, S, P>(backend: Backend<S, P, L>)
where
    L: Log + 'static,
    S: LedgerStore,
    P: Publisher,
{
    let Backend {
        topics,
        new_log,
        store,
        publisher,
        read,
    } = backend;
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
    for published in publisher.publish(records).await {
        published.expect("the events are written");
    }

    let log = new_log("conformance", &topics.tiers);
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        failures_left: AtomicU32::new(2),
    });
    let running = start_ledger(&topics, log, flaky);

    settle_until("the first run", &read, &topics, |results, letters| {
        results.len() >= 8 && letters.len() >= 2
    })
    .await;
    let results = results_on(&read, &topics);
    // A little longer: nothing more may come (the re-send publishes nothing).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let results = {
        let again = results_on(&read, &topics);
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

    let mut letters: Vec<(String, String)> = read(&topics.dead_letters)
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
        !read(&topics.tiers[0]).is_empty(),
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
pub async fn reused_ids_and_balance_limits_move_no_money<L, S, P>(backend: Backend<S, P, L>)
where
    L: Log + 'static,
    S: LedgerStore,
    P: Publisher,
{
    let Backend {
        topics,
        new_log,
        store,
        publisher,
        read,
    } = backend;
    let running = start_ledger(
        &topics,
        new_log("reproductions", &topics.tiers),
        store.clone(),
    );
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
    publish_all(&publisher, &topics.ledger, &opening).await;
    settle_until("the openings", &read, &topics, |results, _| {
        results.len() >= opening.len()
    })
    .await;
    let attacks = [
        transfer("r1-x", "r1-b", "r1-a", 25),
        transfer("r2-t", "r2-payer", "r2-big", 25),
        event("r3-over", EventType::Deposit, "r3-a", 1),
        event("r4-x", EventType::Deposit, "r4-c", 7),
        transfer("r5-t", "r5-payer", "r5-e", 10),
    ];
    publish_all(&publisher, &topics.ledger, &attacks).await;
    settle_until("the attacks", &read, &topics, |results, letters| {
        results.len() >= opening.len() + 5 && letters.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;

    let results = results_on(&read, &topics);
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
    let mut letters: Vec<(String, String)> = read(&topics.dead_letters)
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
pub async fn a_hostile_workload_keeps_every_invariant<L, S, P>(backend: Backend<S, P, L>, seed: u64)
where
    L: Log + 'static,
    S: LedgerStore,
    P: Publisher,
{
    let Backend {
        topics,
        new_log,
        store,
        publisher,
        read,
    } = backend;
    let events = HostileWorkload::new(HostileConfig {
        seed,
        prefix: "hc".to_owned(),
    })
    .take(800);
    publish_all(&publisher, &topics.ledger, &events).await;
    let running = start_ledger(&topics, new_log("hostile", &topics.tiers), store.clone());
    let source = Source {
        ledger_topic: &topics.ledger,
        results_topic: &topics.results,
        dlq_topic: &topics.dead_letters,
        read: &read,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let observed = loop {
        let observed = observe_from(&source);
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
    assert!(
        observed.results.iter().any(|r| r.is_reversal()),
        "the workload reversed a transfer"
    );
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
