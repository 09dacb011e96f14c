//! What a drained ledger must look like, read from the topics (`read_committed`) and the
//! store, whatever crashed on the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::process::{Pipeline, StageProcess};
use crate::{cql_session, read_topic, ReadRecord};
use txflow::codec::{Codec, Record};
use txflow::domain::{Entry, EventType, Status, TransactionEvent, TransactionResult};
use txflow::pipeline::failures::ERROR_KIND;
use txflow::stages::ledger::LEG_HEADER;

/// What the topics hold.
pub struct Observed {
    /// The first delivery of each event id on the ledger topic, in log order.
    pub fresh: Vec<TransactionEvent>,
    /// Deliveries of an event id already seen with the same payload.
    pub duplicates: usize,
    /// Deliveries of an event id already seen with another payload.
    pub conflicts: usize,
    /// Records on the ledger topic that are not valid events (undecodable, invalid fields,
    /// keyed by another account).
    pub poison: usize,
    pub results: Vec<TransactionResult>,
    pub dead_letters: Vec<ReadRecord>,
    /// Entries dead-lettered after a transient failure used up the retry tiers, as
    /// (event id, account posted to, amount): (event's own account) or (counterparty) of a
    /// credit leg. Redriven ones have a result.
    pub given_up: Vec<(String, String, i64)>,
}

/// Error kinds that mean the store kept failing, not that the event was wrong.
const TRANSIENT_KINDS: [&str; 2] = ["store_unavailable", "circuit_open"];

/// Where a pipeline's topics are read from (committed records only).
pub struct Source<'a> {
    pub ledger_topic: &'a str,
    pub results_topic: &'a str,
    pub dlq_topic: &'a str,
    pub read: &'a dyn Fn(&str) -> Vec<ReadRecord>,
}

/// What the topics of a pipeline on the local stack hold.
pub fn observe(pipeline: &Pipeline) -> Observed {
    observe_from(&Source {
        ledger_topic: &pipeline.ledger_topic,
        results_topic: &pipeline.results_topic,
        dlq_topic: &pipeline.dlq_topic,
        read: &|topic| read_topic(topic, "read_committed"),
    })
}

/// What the topics of `source` hold.
pub fn observe_from(source: &Source<'_>) -> Observed {
    let read = source.read;
    let codec = Codec::builtin();
    let mut first: HashMap<String, TransactionEvent> = HashMap::new();
    let mut fresh = Vec::new();
    let (mut duplicates, mut conflicts, mut poison) = (0, 0, 0);
    for record in read(source.ledger_topic) {
        if record.header(LEG_HEADER).is_some() {
            continue;
        }
        let valid = codec
            .decode::<TransactionEvent>(
                Record::TransactionEvent,
                record.value.as_deref().unwrap_or_default(),
            )
            .ok()
            .filter(|e| {
                e.validate().is_ok() && record.key.as_deref() == Some(e.account_id.as_bytes())
            });
        let Some(event) = valid else {
            poison += 1;
            continue;
        };
        match first.get(&event.event_id) {
            None => {
                first.insert(event.event_id.clone(), event.clone());
                fresh.push(event);
            }
            Some(earlier) if *earlier == event => duplicates += 1,
            Some(_) => conflicts += 1,
        }
    }
    let results = read(source.results_topic)
        .iter()
        .map(|r| {
            codec
                .decode::<TransactionResult>(
                    Record::TransactionResult,
                    r.value.as_deref().unwrap_or_default(),
                )
                .expect("a result record")
        })
        .collect();
    let dead_letters = read(source.dlq_topic);
    let given_up = dead_letters
        .iter()
        .filter(|d| TRANSIENT_KINDS.contains(&d.header(ERROR_KIND).unwrap_or_default().as_str()))
        .map(|d| {
            let event: TransactionEvent = codec
                .decode(
                    Record::TransactionEvent,
                    d.value.as_deref().unwrap_or_default(),
                )
                .expect("a dead letter after transient failures holds a valid event");
            let account = match d.header(LEG_HEADER) {
                Some(_) => event.counterparty_account_id.clone().expect("a credit leg"),
                None => event.account_id.clone(),
            };
            (event.event_id, account, event.amount_minor)
        })
        .collect();
    Observed {
        fresh,
        duplicates,
        conflicts,
        poison,
        results,
        dead_letters,
        given_up,
    }
}

impl Observed {
    /// Entries given up on (dead-lettered after the retry tiers) and not redriven since, each
    /// once (a producer's re-send of an event can be given up on too).
    pub fn unresolved(&self) -> Vec<&(String, String, i64)> {
        let have: HashSet<(&str, &str)> = self
            .results
            .iter()
            .map(|r| (r.event_id.as_str(), r.account_id.as_str()))
            .collect();
        let mut seen = HashSet::new();
        self.given_up
            .iter()
            .filter(|(event, account, _)| !have.contains(&(event.as_str(), account.as_str())))
            .filter(|entry| seen.insert(*entry))
            .collect()
    }

    /// What is still expected and not there yet: events without their result, applied
    /// transfer debits without their credit, conflicts not dead-lettered. An entry given up
    /// on after the retry tiers is not expected.
    pub fn missing(&self) -> Vec<String> {
        let have: HashSet<(&str, &str)> = self
            .results
            .iter()
            .map(|r| (r.event_id.as_str(), r.account_id.as_str()))
            .collect();
        let given_up: HashSet<(&str, &str)> = self
            .given_up
            .iter()
            .map(|(e, a, _)| (e.as_str(), a.as_str()))
            .collect();
        let expected = |pair: (&str, &str)| !have.contains(&pair) && !given_up.contains(&pair);
        let mut missing = Vec::new();
        for event in &self.fresh {
            if expected((event.event_id.as_str(), event.account_id.as_str())) {
                missing.push(format!(
                    "result of {} on {}",
                    event.event_id, event.account_id
                ));
            }
        }
        let transfers: HashMap<&str, &TransactionEvent> = self
            .fresh
            .iter()
            .filter(|e| e.event_type == EventType::Transfer)
            .map(|e| (e.event_id.as_str(), e))
            .collect();
        for result in &self.results {
            if result.entry != Entry::Debit {
                continue;
            }
            if let Some(transfer) = transfers.get(result.event_id.as_str()) {
                let counterparty = transfer.counterparty_account_id.as_deref().unwrap();
                if expected((result.event_id.as_str(), counterparty)) {
                    missing.push(format!("credit of {} on {counterparty}", result.event_id));
                }
            }
        }
        let expected_letters = self.conflicts + self.poison + self.given_up.len();
        if self.dead_letters.len() < expected_letters {
            missing.push(format!(
                "{} of {expected_letters} dead letters",
                self.dead_letters.len()
            ));
        }
        missing
    }
}

/// Waits until nothing is missing; fails the test, with what is missing and the stages'
/// logs, after `limit`.
pub fn wait_until_drained(
    pipeline: &Pipeline,
    limit: Duration,
    stages: &[&StageProcess],
) -> Observed {
    let deadline = Instant::now() + limit;
    loop {
        let observed = observe(pipeline);
        let missing = observed.missing();
        if missing.is_empty() {
            return observed;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = stages.iter().map(|s| s.log_text()).collect();
            panic!(
                "after {limit:?}, {} expected outputs are missing, e.g. {:?}\nstage logs:\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A result as the store holds it, with its account's balance and version.
pub struct StoredResult {
    pub result: TransactionResult,
    pub balance: i64,
    pub version: i64,
}

async fn stored(pipeline: &Pipeline) -> Vec<StoredResult> {
    use futures::TryStreamExt;
    let session = cql_session().await;
    type Row = (
        String,
        String,
        Option<i64>,
        Option<i64>,
        String,
        String,
        Option<String>,
        i64,
        i64,
        i64,
        scylla::value::CqlTimestamp,
    );
    let rows: Vec<Row> = session
        .query_iter(
            format!(
                "SELECT account_id, event_id, balance_minor, version, entry, status, reason, amount_minor, \
                 balance_after_minor, account_version, processed_at FROM {}.ledger",
                pipeline.keyspace
            ),
            (),
        )
        .await
        .expect("reading the ledger table")
        .rows_stream::<Row>()
        .expect("ledger rows")
        .try_collect()
        .await
        .expect("ledger rows");
    rows.into_iter()
        .map(
            |(
                account_id,
                event_id,
                balance,
                version,
                entry,
                status,
                reason,
                amount,
                after,
                account_version,
                at,
            )| {
                let entry = Entry::from_symbol(&entry)
                    .unwrap_or_else(|| panic!("the store holds an unknown entry {entry:?}"));
                let status = Status::from_symbol(&status)
                    .unwrap_or_else(|| panic!("the store holds an unknown status {status:?}"));
                StoredResult {
                    result: TransactionResult {
                        event_id,
                        account_id,
                        entry,
                        status,
                        reason,
                        amount_minor: amount,
                        balance_after_minor: after,
                        account_version,
                        processed_at: at.0,
                    },
                    balance: balance.unwrap_or(0),
                    version: version.unwrap_or(0),
                }
            },
        )
        .collect()
}

/// Every invariant of DESIGN.md §2 on a drained pipeline on the local stack.
pub fn verify(pipeline: &Pipeline, observed: &Observed) {
    let rows = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(stored(pipeline));
    verify_stored(observed, &rows);
}

/// Every invariant of DESIGN.md §2, from what the topics and the store hold.
pub fn verify_stored(observed: &Observed, rows: &[StoredResult]) {
    let by_id: HashMap<&str, &TransactionEvent> = observed
        .fresh
        .iter()
        .map(|e| (e.event_id.as_str(), e))
        .collect();

    // One result per (event, account), and only for events that exist.
    let mut seen = HashSet::new();
    for r in &observed.results {
        assert!(
            seen.insert((&r.event_id, &r.account_id)),
            "two results for {} on {}",
            r.event_id,
            r.account_id
        );
        let event = by_id
            .get(r.event_id.as_str())
            .unwrap_or_else(|| panic!("a result of an unknown event {r:?}"));
        assert_eq!(r.amount_minor, event.amount_minor, "{r:?}");
        let own = r.account_id == event.account_id;
        let expected_entry = match (event.event_type, own, r.status) {
            (_, _, Status::Rejected) => Entry::None,
            (EventType::Deposit, true, _) => Entry::Credit,
            (EventType::Withdrawal, true, _) | (EventType::Transfer, true, _) => Entry::Debit,
            (EventType::Transfer, false, _) => Entry::Credit,
            _ => panic!("a result on a foreign account {r:?}"),
        };
        assert_eq!(r.entry, expected_entry, "{r:?} of {event:?}");
        assert_eq!(r.reason.is_none(), r.status == Status::Applied, "{r:?}");
    }
    let applied_debits = observed
        .results
        .iter()
        .filter(|r| {
            r.entry == Entry::Debit && by_id[r.event_id.as_str()].event_type == EventType::Transfer
        })
        .count();
    let unresolved = observed.unresolved();
    let debited: HashSet<&str> = observed
        .results
        .iter()
        .filter(|r| r.entry == Entry::Debit)
        .map(|r| r.event_id.as_str())
        .collect();
    let credits_without_debit: Vec<&TransactionResult> = observed
        .results
        .iter()
        .filter(|r| r.account_id != by_id[r.event_id.as_str()].account_id)
        .filter(|r| !debited.contains(r.event_id.as_str()))
        .take(5)
        .collect();
    assert_eq!(
        observed.results.len() + unresolved.len(),
        observed.fresh.len() + applied_debits,
        "results: one per event, plus one per applied transfer credit, less those given up; \
         credits without an applied debit: {credits_without_debit:?}; unresolved: {unresolved:?}"
    );

    // The store holds exactly the published results.
    let published: HashMap<(&str, &str), &TransactionResult> = observed
        .results
        .iter()
        .map(|r| ((r.event_id.as_str(), r.account_id.as_str()), r))
        .collect();
    let unpublished: Vec<&TransactionResult> = rows
        .iter()
        .map(|row| &row.result)
        .filter(|r| !published.contains_key(&(r.event_id.as_str(), r.account_id.as_str())))
        .take(5)
        .collect();
    assert_eq!(
        rows.len(),
        published.len(),
        "store rows vs published results; recorded, never published: {unpublished:?}"
    );
    let mut accounts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let r = &row.result;
        assert_eq!(
            published.get(&(r.event_id.as_str(), r.account_id.as_str())),
            Some(&r),
            "the store and the results topic agree"
        );
        accounts.insert(&r.account_id, (row.balance, row.version));
    }

    // Per account: versions 1..n without gaps, each balance the previous one plus the
    // change, never negative, ending at the stored balance.
    let mut per_account: BTreeMap<&str, Vec<&TransactionResult>> = BTreeMap::new();
    for r in &observed.results {
        per_account.entry(&r.account_id).or_default().push(r);
    }
    let mut total = 0;
    for (account, mut results) in per_account {
        results.sort_by_key(|r| r.account_version);
        let mut balance = 0;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.account_version, i as i64 + 1, "versions of {account}");
            balance += r.balance_change();
            assert_eq!(
                r.balance_after_minor, balance,
                "balance chain of {account} at {r:?}"
            );
            assert!(balance >= 0, "{account} went negative at {r:?}");
        }
        assert_eq!(
            accounts[account],
            (balance, results.len() as i64),
            "stored balance and version of {account}"
        );
        total += balance;
    }

    // Money is conserved: what is held is what was deposited minus what was withdrawn.
    let mut net = 0;
    for r in &observed.results {
        if r.status == Status::Applied && r.account_id == by_id[r.event_id.as_str()].account_id {
            match by_id[r.event_id.as_str()].event_type {
                EventType::Deposit => net += r.amount_minor,
                EventType::Withdrawal => net -= r.amount_minor,
                EventType::Transfer => {}
            }
        }
    }
    // A credit given up on is money debited and not yet credited: it sits in the dead
    // letters until redriven.
    let in_dead_letters: i64 = unresolved
        .iter()
        .filter(|(event, account, _)| by_id[event.as_str()].account_id != *account)
        .map(|(_, _, amount)| amount)
        .sum();
    assert_eq!(
        total + in_dead_letters,
        net,
        "sum of balances (plus credits in the dead letters) vs deposits minus withdrawals applied"
    );

    // Conflicting re-sends and poison, and nothing else, are dead letters.
    let kinds: Vec<String> = observed
        .dead_letters
        .iter()
        .map(|d| d.header(ERROR_KIND).unwrap_or_default())
        .collect();
    let conflicts = kinds
        .iter()
        .filter(|k| *k == "idempotency_conflict")
        .count();
    assert_eq!(conflicts, observed.conflicts, "dead letters {kinds:?}");
    assert_eq!(
        observed.dead_letters.len(),
        observed.conflicts + observed.poison + observed.given_up.len(),
        "dead letters {kinds:?}"
    );
}
