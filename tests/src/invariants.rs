//! What a drained ledger must look like, read from the topics (`read_committed`) and the
//! store, whatever crashed on the way: every rule of docs/CONTRACT.md §2 that txflow's audit checks
//! (`txflow::domain::audit`: each id's results follow from one event sent under it, transfers
//! credited or reversed, balance chains, money conserved per currency), the store agreeing
//! with the results topic, and the dead letters being exactly the conflicts, the poison and
//! what was given up on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::process::{Pipeline, StageProcess};
use crate::{cql_session, read_topic, results_of, ReadRecord};
use txflow::codec::{Codec, Record};
use txflow::domain::audit::{audit, Report};
use txflow::domain::result::event_of_posting_key;
use txflow::domain::{Entry, Status, TransactionEvent, TransactionResult};
use txflow::wire::ERROR_KIND;
use txflow::wire::{LEG, TRANSFER_REVERSAL};

/// An entry dead-lettered after a transient failure used up the retry tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivenUp {
    pub event: TransactionEvent,
    /// The account it posts to: the event's own, or the counterparty of a credit leg.
    pub account: String,
    /// Whether it is a transfer's reversal.
    pub reversal: bool,
}

/// What the topics hold.
pub struct Observed {
    /// Every valid event delivered on the ledger topic (not the legs the ledger wrote), in
    /// log order, re-sends and conflicting re-uses of an id included.
    pub sent: Vec<TransactionEvent>,
    /// The first delivery of each event id, in log order.
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
    /// Entries given up on after transient failures; redriven ones have a result since.
    pub given_up: Vec<GivenUp>,
    /// The audit of the results against the events sent.
    pub audit: Report,
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

fn event_of(codec: &Codec, record: &ReadRecord) -> Option<TransactionEvent> {
    codec
        .decode::<TransactionEvent>(
            Record::TransactionEvent,
            record.value.as_deref().unwrap_or_default(),
        )
        .ok()
}

/// What the topics of `source` hold.
pub fn observe_from(source: &Source<'_>) -> Observed {
    let read = source.read;
    observed_of(
        read(source.ledger_topic),
        read(source.results_topic),
        read(source.dlq_topic),
    )
}

/// What these records of a pipeline's ledger, results and dead-letter topics say.
pub fn observed_of(
    ledger: Vec<ReadRecord>,
    results: Vec<ReadRecord>,
    dead_letters: Vec<ReadRecord>,
) -> Observed {
    let codec = Codec::builtin();
    let mut first: HashMap<String, TransactionEvent> = HashMap::new();
    let (mut sent, mut fresh) = (Vec::new(), Vec::new());
    let (mut duplicates, mut conflicts, mut poison) = (0, 0, 0);
    for record in ledger {
        if record.header(LEG).is_some() {
            continue;
        }
        let valid = event_of(&codec, &record).filter(|e| {
            e.validate().is_ok() && record.key.as_deref() == Some(e.account_id.as_bytes())
        });
        let Some(event) = valid else {
            poison += 1;
            continue;
        };
        match first.get(&event.event_id) {
            None => {
                first.insert(event.event_id.clone(), event.clone());
                fresh.push(event.clone());
            }
            Some(earlier) if *earlier == event => duplicates += 1,
            Some(_) => conflicts += 1,
        }
        sent.push(event);
    }
    let results = results_of(&results);
    let given_up = dead_letters
        .iter()
        .filter(|d| TRANSIENT_KINDS.contains(&d.header(ERROR_KIND).unwrap_or_default().as_str()))
        .map(|d| {
            let event = event_of(&codec, d)
                .expect("a dead letter after transient failures holds a valid event");
            let leg = d.header(LEG);
            let reversal = leg.as_deref().map(str::as_bytes) == Some(TRANSFER_REVERSAL);
            let account = match leg {
                Some(_) if !reversal => {
                    event.counterparty_account_id.clone().expect("a credit leg")
                }
                _ => event.account_id.clone(),
            };
            GivenUp {
                event,
                account,
                reversal,
            }
        })
        .collect();
    let audit = audit(&sent, &results);
    Observed {
        sent,
        fresh,
        duplicates,
        conflicts,
        poison,
        results,
        dead_letters,
        given_up,
        audit,
    }
}

impl Observed {
    /// Whether `account` has the result `given` waits for.
    fn resolved(&self, given: &GivenUp) -> bool {
        self.results.iter().any(|r| {
            r.event_id == given.event.event_id
                && r.account_id == given.account
                && r.is_reversal() == given.reversal
        })
    }

    /// Entries given up on (dead-lettered after the retry tiers) and not redriven since, each
    /// once (a producer's re-send of an event can be given up on too).
    pub fn unresolved(&self) -> Vec<&GivenUp> {
        let mut seen = HashSet::new();
        self.given_up
            .iter()
            .filter(|given| !self.resolved(given))
            .filter(|given| {
                seen.insert((given.event.fingerprint(), &given.account, given.reversal))
            })
            .collect()
    }

    /// The payloads each id was sent with, with how often each was delivered.
    fn payloads(&self) -> HashMap<&str, Vec<(&TransactionEvent, usize)>> {
        let mut payloads: HashMap<&str, Vec<(&TransactionEvent, usize)>> = HashMap::new();
        for event in &self.sent {
            let under = payloads.entry(event.event_id.as_str()).or_default();
            match under.iter_mut().find(|(payload, _)| *payload == event) {
                Some((_, deliveries)) => *deliveries += 1,
                None => under.push((event, 1)),
            }
        }
        payloads
    }

    /// The payloads dead-lettered as idempotency conflicts.
    fn conflict_letters(&self) -> Vec<TransactionEvent> {
        let codec = Codec::builtin();
        self.dead_letters
            .iter()
            .filter(|d| d.header(ERROR_KIND).as_deref() == Some("idempotency_conflict"))
            .map(|d| event_of(&codec, d).expect("a conflict's dead letter holds a valid event"))
            .collect()
    }

    /// The event each id sent with more than one payload names, as the pipeline decided it:
    /// the one payload under the id never dead-lettered as a conflict. Two payloads can
    /// leave the same results (a rejected withdrawal and a rejected transfer of the same
    /// amount), so the results alone cannot say which one claimed the id; `None` while the
    /// letters leave more than one, or none.
    fn claimed(&self) -> HashMap<&str, Option<&TransactionEvent>> {
        let letters = self.conflict_letters();
        self.payloads()
            .into_iter()
            .filter(|(_, under)| under.len() > 1)
            .map(|(id, under)| {
                let mut unlettered = under
                    .iter()
                    .map(|(payload, _)| *payload)
                    .filter(|payload| !letters.contains(payload));
                let claimed = match (unlettered.next(), unlettered.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                };
                (id, claimed)
            })
            .collect()
    }

    /// Deliveries of an id whose payload is not the event the id names: the idempotency
    /// conflicts the dead letters must hold. Where the letters do not yet say which payload
    /// claimed an id, the least it can be: every delivery but those of its most delivered
    /// payload.
    pub fn expected_conflicts(&self) -> usize {
        let claimed = self.claimed();
        self.payloads()
            .iter()
            .filter(|(_, under)| under.len() > 1)
            .map(|(id, under)| {
                let total: usize = under.iter().map(|(_, n)| n).sum();
                let owners = match claimed.get(id).copied().flatten() {
                    Some(owner) => under.iter().find(|(p, _)| *p == owner).map(|(_, n)| *n),
                    None => under.iter().map(|(_, n)| *n).max(),
                };
                total - owners.unwrap_or(0)
            })
            .sum()
    }

    /// What is still expected and not there yet: ids without a result, transfers still in
    /// flight, dead letters. What was given up on after the retry tiers is not expected.
    pub fn missing(&self) -> Vec<String> {
        let given_up: HashSet<&str> = self
            .given_up
            .iter()
            .map(|g| g.event.event_id.as_str())
            .collect();
        let answered: HashSet<&str> = self.results.iter().map(|r| r.event_id.as_str()).collect();
        let mut missing: Vec<String> = self
            .fresh
            .iter()
            .map(|e| e.event_id.as_str())
            .filter(|id| !answered.contains(id) && !given_up.contains(id))
            .map(|id| format!("a result of {id}"))
            .collect();
        missing.extend(
            self.audit
                .in_flight
                .iter()
                .filter(|flight| !given_up.contains(flight.event_id.as_str()))
                .map(|flight| format!("the credit or reversal of {}", flight.event_id)),
        );
        let expected_letters = self.expected_conflicts() + self.poison + self.given_up.len();
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
                key,
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
                        event_id: event_of_posting_key(&key).0.to_owned(),
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

/// Every invariant of docs/CONTRACT.md §2 on a drained pipeline on the local stack.
pub fn verify(pipeline: &Pipeline, observed: &Observed) {
    let rows = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(stored(pipeline));
    verify_stored(observed, &rows);
}

/// A result's identity: event, account, and whether it is a transfer's reversal.
type Key<'a> = (&'a str, &'a str, bool);

fn key(r: &TransactionResult) -> Key<'_> {
    (r.event_id.as_str(), r.account_id.as_str(), r.is_reversal())
}

/// Every invariant of docs/CONTRACT.md §2, from what the topics and the store hold.
pub fn verify_stored(observed: &Observed, rows: &[StoredResult]) {
    let report = &observed.audit;
    assert!(
        report.violations.is_empty(),
        "the audit of the results against the events sent found {} violations, the first: {:#?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(5)]
    );
    // Of the payloads an id was sent with, one claimed it, and its results follow from that
    // one: the rest are dead letters.
    let claimed = observed.claimed();
    let unclaimed: Vec<&&str> = claimed
        .iter()
        .filter(|(_, owner)| owner.is_none())
        .map(|(id, _)| id)
        .take(5)
        .collect();
    assert!(
        unclaimed.is_empty(),
        "ids whose conflict letters leave no one payload that claimed them: {unclaimed:?}"
    );
    let as_claimed: Vec<TransactionEvent> = observed
        .sent
        .iter()
        .filter(|e| {
            claimed
                .get(e.event_id.as_str())
                .is_none_or(|owner| *owner == Some(*e))
        })
        .cloned()
        .collect();
    let claimed_audit = audit(&as_claimed, &observed.results);
    assert!(
        claimed_audit.violations.is_empty(),
        "results that do not follow from the payload that claimed their id: {:#?}",
        &claimed_audit.violations[..claimed_audit.violations.len().min(5)]
    );
    // Money in flight is only what waits in the dead letters for a redrive.
    let unresolved = observed.unresolved();
    let waiting: HashSet<&str> = unresolved
        .iter()
        .map(|g| g.event.event_id.as_str())
        .collect();
    let stuck: Vec<_> = report
        .in_flight
        .iter()
        .filter(|flight| !waiting.contains(flight.event_id.as_str()))
        .collect();
    assert!(stuck.is_empty(), "transfers left in flight: {stuck:?}");
    let answered: HashSet<&str> = observed
        .results
        .iter()
        .map(|r| r.event_id.as_str())
        .collect();
    let unanswered: Vec<&str> = observed
        .fresh
        .iter()
        .map(|e| e.event_id.as_str())
        .filter(|id| !answered.contains(id) && !waiting.contains(id))
        .take(5)
        .collect();
    assert!(
        unanswered.is_empty(),
        "ids without a result: {unanswered:?}"
    );

    // The store holds exactly the published results, and the balances they add up to.
    let published: HashMap<Key, &TransactionResult> =
        observed.results.iter().map(|r| (key(r), r)).collect();
    assert_eq!(
        published.len(),
        observed.results.len(),
        "one result per (event, account, posting)"
    );
    let unpublished: Vec<&TransactionResult> = rows
        .iter()
        .map(|row| &row.result)
        .filter(|r| !published.contains_key(&key(r)))
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
            published.get(&key(r)),
            Some(&r),
            "the store and the results topic agree"
        );
        accounts.insert(&r.account_id, (row.balance, row.version));
    }
    for (account, rebuilt) in &report.accounts {
        assert_eq!(
            accounts.get(account.as_str()),
            Some(&(rebuilt.balance_minor, rebuilt.version)),
            "stored balance and version of {account}"
        );
    }

    // Conflicting re-sends and poison, and what was given up on, and nothing else, are dead
    // letters.
    let kinds: Vec<String> = observed
        .dead_letters
        .iter()
        .map(|d| d.header(ERROR_KIND).unwrap_or_default())
        .collect();
    let conflicts = kinds
        .iter()
        .filter(|k| *k == "idempotency_conflict")
        .count();
    let expected = observed.expected_conflicts();
    assert_eq!(conflicts, expected, "dead letters {kinds:?}");
    assert_eq!(
        observed.dead_letters.len(),
        expected + observed.poison + observed.given_up.len(),
        "dead letters {kinds:?}"
    );
}
