//! Ledger and failure-handling behaviour written once, run against every backend (Kafka and
//! Cassandra; the embedded database of `txflow dev`): the ledger stage, in this process,
//! through the same pipeline loop as `txflow run`, over whichever log and store it is given.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use txflow::codec::{Codec, Record};
use txflow::domain::{
    Account, EventType, Fingerprint, RetryPolicy, Settlement, TransactionEvent, TransactionResult,
};
use txflow::pipeline::breaker::{Breaker, BreakerConfig};
use txflow::pipeline::failures::FailureRoutes;
use txflow::pipeline::{self, LoopConfig, StageTelemetry};
use txflow::ports::{LedgerStore, LoadedAccount, Log, OutputRecord, Publisher, StoreError};
use txflow::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use txflow::telemetry::{Metrics, Readiness};

use crate::ReadRecord;

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
    async fn load(
        &self,
        account_id: &str,
        event_ids: &[String],
    ) -> Result<LoadedAccount, StoreError> {
        self.inner.load(account_id, event_ids).await
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        self.inner.currencies(account_ids).await
    }

    async fn applied_debits(
        &self,
        debits: &[(String, String)],
    ) -> Result<std::collections::HashMap<String, Fingerprint>, StoreError> {
        self.inner.applied_debits(debits).await
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

/// Deposits, a withdrawal, a rejection, a transfer, a re-send, a conflicting re-send, poison,
/// and an account whose writes fail for a while: settled exactly, in each account's order,
/// with the failures where they belong.
pub async fn the_ledger_settles_retries_and_dead_letters<L, S, P>(
    topics: Topics,
    new_log: impl FnOnce(&str, &[String]) -> L,
    store: Arc<S>,
    publisher: P,
    read: impl Fn(&str) -> Vec<ReadRecord>,
) where
    L: Log + 'static,
    S: LedgerStore,
    P: Publisher,
{
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

    let policy = RetryPolicy::from_millis(&TIER_DELAYS);
    let failures = FailureRoutes {
        input: topics.ledger.clone(),
        stage: "ledger",
        group: "conformance".into(),
        policy,
    };
    assert_eq!(failures.tier_topics(), topics.tiers);
    let log = new_log("conformance", &topics.tiers);
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        failures_left: AtomicU32::new(2),
    });
    let ledger = Ledger::new(
        flaky,
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
    let running = tokio::spawn(async move {
        let config = LoopConfig {
            max_records: 100,
            max_wait: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        };
        pipeline::run(log, &ledger, &config, &telemetry, stopped).await
    });

    let codec = Codec::builtin();
    let results_of = || -> Vec<TransactionResult> {
        read(&topics.results)
            .iter()
            .map(|r| {
                codec
                    .decode(
                        Record::TransactionResult,
                        r.value.as_deref().unwrap_or_default(),
                    )
                    .expect("a result")
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let results = loop {
        let results = results_of();
        if results.len() >= 8 && read(&topics.dead_letters).len() >= 2 {
            break results;
        }
        assert!(
            Instant::now() < deadline,
            "not settled within 90 s: {} results, {} dead letters",
            results.len(),
            read(&topics.dead_letters).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A little longer: nothing more may come (the re-send publishes nothing).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(true);
    running
        .await
        .expect("the ledger task")
        .expect("the ledger ran without a fatal error");

    let results = {
        let again = results_of();
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
