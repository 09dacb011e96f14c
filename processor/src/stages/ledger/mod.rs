//! The ledger stage: `txflow.ledger` → balances in the store, results on `txflow.results`,
//! transfer credits back on `txflow.ledger` keyed by the counterparty (and reversals keyed by
//! the debited account); failures to the retry tiers `txflow.ledger.retry.<n>` or the dead
//! letters `txflow.ledger.dlq`.
//!
//! A batch is decoded and validated, its event ids claimed (an id names one event across all
//! accounts: any other event under a claimed id is a conflict), grouped by account, and each
//! account is settled by the pure [`settle`] against what the store holds, then recorded with
//! one conditional write.
//! When another writer (a zombie of this stage, or a concurrent owner during a rebalance)
//! moved the account on first, the account is loaded and settled again: the results it
//! already recorded come back as replays, identical to the first.
//!
//! An account whose write fails transiently goes to the retry tiers, and is *parked*: until
//! its retried records are consumed, its later records follow them onto the first tier
//! instead of being applied, so that its events still apply in partition order. Which
//! records are parked is derived from the retry tiers themselves (what the group has not
//! consumed yet), so it survives a crash or a rebalance. When the store's circuit breaker
//! opens, nothing goes to the tiers: the batch waits and is read again.

mod config;

pub use config::{LedgerConfig, LedgerGroup};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{Instrument, Span};

use crate::codec::{Codec, Record};
use crate::domain::ledger::settle;
use crate::domain::{
    Account, Cause, Emission, Facts, FailureKind, LedgerEntry, Leg, Poison, RetryClass, Settlement,
};
use crate::failures::parking::{self, ParkedAccounts};
use crate::failures::{FailureRoutes, Retry};
use crate::limits::Pacer;
use crate::pipeline::breaker::{Breaker, CircuitState};
use crate::pipeline::uncommitted::Uncommitted;
use crate::pipeline::{BatchOutput, Stage, StageError, Tally};
use crate::ports::{LedgerStore, StoreError};
use crate::traces;
use crate::wire::{InputRecord, OutputRecord, LEG, TRANSFER_CREDIT, TRANSFER_REVERSAL};

/// Where the ledger reads and writes.
#[derive(Clone, Debug)]
pub struct LedgerTopics {
    /// `txflow.ledger`: events, and the credit legs and reversals this stage writes.
    pub input: String,
    pub results: String,
}

/// What settling one account produced.
struct Settled {
    /// What to publish, indexed into the batch.
    emissions: Vec<Emission>,
    /// The account and its currency, when it exists after the batch.
    opened: Option<(String, String)>,
}

/// The ledger stage over a store.
pub struct Ledger<S> {
    store: Arc<S>,
    codec: Arc<Codec>,
    topics: LedgerTopics,
    failures: FailureRoutes,
    settings: LedgerSettings,
    breaker: Arc<Breaker>,
    /// Paces store writes when a limit is configured: consumption slows, nothing is dropped.
    write_limit: Option<Pacer>,
    /// The last state this process recorded for each account it settled. This process is
    /// the only writer of its partitions' accounts, so the state is almost always current;
    /// when it is not (a rebalance moved the account, or a batch is replayed) the
    /// conditional write refuses and the account is loaded from the store.
    accounts: Mutex<HashMap<String, Account>>,
    /// Currencies of accounts known to exist: existence and currency never change.
    currencies: Mutex<HashMap<String, String>>,
    /// Accounts with records on the retry tiers.
    parked: Mutex<ParkedAccounts>,
    /// What the batches processed but not committed yet change in them, oldest first: a
    /// batch is processed while the one before it commits, and must see what that one parked.
    staged: Uncommitted<parking::Changes>,
}

/// How the ledger settles a batch.
#[derive(Clone, Debug)]
pub struct LedgerSettings {
    /// Accounts settled at once.
    pub concurrency: usize,
    /// Settling attempts for one account while other writers move it on.
    pub max_attempts: u32,
    /// Accounts (and currencies) remembered; past that the memory starts over.
    pub cache_capacity: usize,
}

/// What one batch did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    pub results: usize,
    pub credits: usize,
    pub reversals: usize,
    pub dead_letters: usize,
    pub duplicates: usize,
    /// Records sent to a retry tier after a transient failure.
    pub retries: usize,
    /// Records sent to wait behind an earlier record of their account on the retry tiers.
    pub parked: usize,
}

impl Tally for LedgerCounts {
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("result", self.results as u64),
            ("credit", self.credits as u64),
            ("reversal", self.reversals as u64),
            ("dead_letter", self.dead_letters as u64),
            ("duplicate", self.duplicates as u64),
            ("retry", self.retries as u64),
            ("parked", self.parked as u64),
        ]
    }
}

/// A decoded entry of the batch.
struct Pending {
    index: usize,
    entry: LedgerEntry,
    parking: parking::Key,
    original_offset: i64,
}

impl<S: LedgerStore> Ledger<S> {
    pub fn new(
        store: Arc<S>,
        codec: Arc<Codec>,
        topics: LedgerTopics,
        failures: FailureRoutes,
        settings: LedgerSettings,
        breaker: Arc<Breaker>,
        write_limit: Option<Pacer>,
    ) -> Self {
        Ledger {
            store,
            codec,
            topics,
            failures,
            settings,
            breaker,
            write_limit,
            accounts: Mutex::new(HashMap::new()),
            currencies: Mutex::new(HashMap::new()),
            parked: Mutex::new(ParkedAccounts::default()),
            staged: Uncommitted::default(),
        }
    }

    fn remember_account(&self, account_id: &str, account: Account) {
        let mut accounts = self.accounts.lock().expect("the account cache lock");
        if accounts.len() >= self.settings.cache_capacity {
            accounts.clear();
        }
        accounts.insert(account_id.to_owned(), account);
    }

    fn remembered_account(&self, account_id: &str) -> Option<Account> {
        self.accounts
            .lock()
            .expect("the account cache lock")
            .get(account_id)
            .cloned()
    }

    fn forget_account(&self, account_id: &str) {
        self.accounts
            .lock()
            .expect("the account cache lock")
            .remove(account_id);
    }

    /// A record of the ledger topic (or of its retry tiers) as an entry, or why it is poison.
    fn decode(&self, record: &InputRecord) -> Result<LedgerEntry, Poison> {
        let event = self.codec.valid_event(record.value.as_deref())?;
        let transfer = event.counterparty_account_id.is_some();
        let leg = match record.header(LEG) {
            None => Leg::Primary,
            Some(TRANSFER_CREDIT) if transfer => Leg::TransferCredit,
            Some(TRANSFER_REVERSAL) if transfer => Leg::TransferReversal,
            Some(other) => {
                return Err(Poison::new(
                    FailureKind::InvalidEvent,
                    format!(
                        "header {LEG} is {:?}; only {:?} or {:?} on a TRANSFER is known",
                        String::from_utf8_lossy(other),
                        String::from_utf8_lossy(TRANSFER_CREDIT),
                        String::from_utf8_lossy(TRANSFER_REVERSAL)
                    ),
                ));
            }
        };
        let entry = LedgerEntry {
            event,
            leg,
            origin: self.failures.origin(record),
            redriven_from: record.redriven_from(),
        };
        // Per-account order holds only if every record of an account is on its partition.
        if record.key.as_deref() != Some(entry.account_id().as_bytes()) {
            return Err(Poison::new(
                FailureKind::InvalidEvent,
                format!(
                    "the record key {:?} is not the account it posts to, {:?}",
                    record.key.as_deref().map(String::from_utf8_lossy),
                    entry.account_id()
                ),
            ));
        }
        Ok(entry)
    }

    /// Records parked behind their account's retries go to wait on the tiers, poison to the
    /// dead letters; the rest, decoded, are what the batch settles.
    fn triage(&self, out: &mut Outcome<'_>) -> Vec<Pending> {
        let batch = out.batch;
        let mut in_batch: HashMap<parking::Key, BTreeSet<i64>> = HashMap::new();
        for record in batch {
            if self.failures.tier_of(&record.topic).is_some() {
                let key = parking_of(record);
                let offset = self.failures.original_offset(record);
                in_batch.entry(key.clone()).or_default().insert(offset);
                out.changes.consumed.push((key, offset));
            }
        }
        let no_retries = BTreeSet::new();
        let mut pending = Vec::with_capacity(batch.len());
        // The parked accounts, locked once for the batch (no await while held), as they stand
        // once the batches before it commit.
        let committed = self.parked.lock().expect("the parking lock");
        let uncommitted = self.staged.lock();
        let provisional;
        let parked = if uncommitted.iter().all(parking::Changes::is_empty) {
            &*committed
        } else {
            provisional = committed.with(uncommitted.iter());
            &provisional
        };
        for (index, record) in batch.iter().enumerate() {
            let parking = parking_of(record);
            let original_offset = self.failures.original_offset(record);
            let blocked = parked.blocked(
                &parking,
                original_offset,
                in_batch.get(&parking).unwrap_or(&no_retries),
            );
            if let Some(latest) = blocked {
                // It waits as long as the latest of its account; a later retry record of the
                // account may push that further.
                let behind = match self.failures.retry_of(record) {
                    Some(own) if own.due > latest.due => own,
                    _ => latest,
                };
                out.counts.parked += 1;
                out.send(index, self.failures.parked(record, behind));
                out.changes.parked.push((parking, original_offset, behind));
                continue;
            }
            match self.decode(record) {
                Ok(entry) => {
                    let span = &out.spans[index];
                    if !span.is_disabled() {
                        traces::identify(span, &entry.event.event_id, entry.account_id());
                        out.by_event
                            .entry(entry.event.event_id.clone())
                            .or_insert(index);
                    }
                    pending.push(Pending {
                        index,
                        entry,
                        parking,
                        original_offset,
                    })
                }
                Err(poison) => self.dead_letter(out, index, &poison),
            }
        }
        pending
    }

    /// Claims the event id of every new event of the batch (the first of the batch's events
    /// under each id claims it); the events whose id another event holds, by batch index,
    /// with why: conflicts. Credit legs and reversals are the legs of an event whose debit
    /// claimed its id.
    async fn claim_ids(&self, pending: &[Pending]) -> Result<Vec<(usize, Poison)>, StoreError> {
        let mut ids = HashSet::new();
        let claims: Vec<_> = pending
            .iter()
            .filter(|p| p.entry.leg == Leg::Primary && ids.insert(&p.entry.event.event_id))
            .map(|p| p.entry.event.id_claim())
            .collect();
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let holders = self
            .breaker
            .guard(None, self.store.claim_event_ids(&claims))
            .await?;
        let mut conflicts = Vec::new();
        for p in pending.iter().filter(|p| p.entry.leg == Leg::Primary) {
            let id = &p.entry.event.event_id;
            let holder = holders.get(id).ok_or_else(|| {
                StoreError::Corrupt(Cause::message(format!(
                    "the claim of event id {id:?} came back without it"
                )))
            })?;
            if let Err(poison) = p.entry.event.id_claim().against(holder) {
                conflicts.push((p.index, poison));
            }
        }
        Ok(conflicts)
    }

    /// What the batch needs to know beyond each account: counterparties of transfers, the
    /// debits behind credit legs, and the debits and refused credits behind reversals.
    async fn facts(&self, pending: &[Pending]) -> Result<Facts, StoreError> {
        let mut counterparties = Vec::new();
        let mut postings = Vec::new();
        for entry in pending.iter().map(|p| &p.entry) {
            let event = &entry.event;
            let Some(counterparty) = &event.counterparty_account_id else {
                continue;
            };
            match entry.leg {
                Leg::Primary => counterparties.push(counterparty.clone()),
                Leg::TransferCredit => {
                    postings.push((event.account_id.clone(), event.event_id.clone()));
                }
                Leg::TransferReversal => {
                    postings.push((event.account_id.clone(), event.event_id.clone()));
                    postings.push((counterparty.clone(), event.event_id.clone()));
                }
            }
        }
        counterparties.sort();
        counterparties.dedup();
        let mut counterparty_currency = HashMap::with_capacity(counterparties.len());
        {
            let known = self.currencies.lock().expect("the currency cache lock");
            counterparties.retain(|id| match known.get(id) {
                Some(currency) => {
                    counterparty_currency.insert(id.clone(), currency.clone());
                    false
                }
                None => true,
            });
        }
        let looked_up = if counterparties.is_empty() {
            HashMap::new()
        } else {
            self.breaker
                .guard(None, self.store.currencies(&counterparties))
                .await?
        };
        let recorded = if postings.is_empty() {
            HashMap::new()
        } else {
            self.breaker
                .guard(None, self.store.recorded(&postings))
                .await?
        };
        self.remember_currencies(&looked_up);
        counterparty_currency.extend(looked_up);
        Ok(Facts {
            counterparty_currency,
            recorded,
        })
    }

    fn remember_currencies(&self, found: &HashMap<String, String>) {
        let mut known = self.currencies.lock().expect("the currency cache lock");
        if known.len() + found.len() > self.settings.cache_capacity {
            known.clear();
        }
        known.extend(found.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Records `settlement` when the account is still as `before` says, through the breaker
    /// and the write limit.
    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        if let Some(limit) = &self.write_limit {
            limit.ready().await;
        }
        self.breaker
            .guard(
                Some(account_id),
                self.store.record(account_id, before, settlement),
            )
            .await
    }

    /// Settles one account's entries and records the outcome, again as long as another
    /// writer moves the account on first.
    async fn settle_account(
        &self,
        account_id: &str,
        entries: &[(usize, LedgerEntry)],
        facts: &Facts,
        now_ms: i64,
    ) -> Result<Settled, StoreError> {
        let keys: Vec<String> = entries.iter().map(|(_, e)| e.posting_key()).collect();
        let indices: Vec<usize> = entries.iter().map(|(i, _)| *i).collect();
        let entries: Vec<LedgerEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
        // Emissions index the account's entries; the batch needs its own indices.
        let settled = |settlement: Settlement| {
            let emissions = settlement
                .emissions
                .into_iter()
                .map(|emission| match emission {
                    Emission::DeadLetter { entry, poison } => Emission::DeadLetter {
                        entry: indices[entry],
                        poison,
                    },
                    Emission::Duplicate { entry } => Emission::Duplicate {
                        entry: indices[entry],
                    },
                    other => other,
                })
                .collect();
            let opened = settlement
                .account
                .currency
                .clone()
                .map(|c| (account_id.to_owned(), c));
            self.remember_account(account_id, settlement.account);
            Settled { emissions, opened }
        };
        // The common case, without a read: the state this process left, and events that are
        // new. The write's conditions check both.
        if let Some(remembered) = self.remembered_account(account_id) {
            let no_prior = HashMap::new();
            let settlement = settle(
                account_id,
                remembered.clone(),
                &no_prior,
                &entries,
                facts,
                now_ms,
            );
            match self.record(account_id, &remembered, &settlement).await {
                Ok(true) => return Ok(settled(settlement)),
                Ok(false) => self.forget_account(account_id),
                Err(e) => {
                    // The write may have been applied after all: read before the next one.
                    self.forget_account(account_id);
                    return Err(e);
                }
            }
        }
        for _ in 0..self.settings.max_attempts {
            let loaded = self
                .breaker
                .guard(Some(account_id), self.store.load(account_id, &keys))
                .await?;
            let settlement = settle(
                account_id,
                loaded.account.clone(),
                &loaded.prior,
                &entries,
                facts,
                now_ms,
            );
            if self
                .record(account_id, &loaded.account, &settlement)
                .await?
            {
                return Ok(settled(settlement));
            }
        }
        Err(StoreError::Unavailable(Cause::message(format!(
            "account {account_id:?} was moved on by another writer {} times in a row",
            self.settings.max_attempts
        ))))
    }
}

fn parking_of(record: &InputRecord) -> parking::Key {
    (record.partition, record.key.clone().unwrap_or_default())
}

impl<S: LedgerStore> Stage for Ledger<S> {
    type Counts = LedgerCounts;

    async fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> Result<BatchOutput<LedgerCounts>, StageError> {
        self.codec
            .learn(batch.iter().map(|r| r.value.as_deref()))
            .await?;
        // While the breaker is open nothing is tried: the batch waits, then a probe decides.
        if let Err(e) = self.breaker.probe(self.store.ping()).await {
            return Err(self.halt(e));
        }
        let mut out = Outcome::new(batch, now_ms);
        let mut pending = self.triage(&mut out);
        // The facts of a conflict are looked up for nothing, rarely; the claims' round trip
        // is not waited for twice.
        let (conflicts, facts) = tokio::try_join!(self.claim_ids(&pending), self.facts(&pending))
            .map_err(|e| self.halt(e))?;
        for (index, poison) in &conflicts {
            self.dead_letter(&mut out, *index, poison);
        }
        let conflicted: HashSet<usize> = conflicts.iter().map(|(index, _)| *index).collect();
        pending.retain(|p| !conflicted.contains(&p.index));
        let (settled, failed) = self
            .settle_in_waves(pending, facts, now_ms, &out.spans)
            .await?;
        self.retry_failed(failed, &mut out).await?;
        self.emit(settled, &mut out)?;
        self.staged.processed(out.changes);
        Ok(BatchOutput {
            outputs: out.outputs,
            counts: out.counts,
        })
    }

    fn committed(&self) {
        if let Some(changes) = self.staged.committed() {
            self.parked
                .lock()
                .expect("the parking lock")
                .apply(&changes);
        }
    }

    fn aborted(&self) {
        self.staged.aborted();
    }

    fn reassigned(&self, unconsumed: &[InputRecord]) {
        let mut parked = self.parked.lock().expect("the parking lock");
        parked.rebuild(unconsumed.iter().filter_map(|record| {
            let retry = self.failures.retry_of(record)?;
            Some((
                parking_of(record),
                self.failures.original_offset(record),
                retry,
            ))
        }));
        tracing::info!(
            keys = parked.waiting(),
            "accounts with records on the retry tiers"
        );
    }
}

/// What one batch sends on, as it is worked out.
struct Outcome<'a> {
    batch: &'a [InputRecord],
    now_ms: i64,
    rng: StdRng,
    outputs: Vec<OutputRecord>,
    counts: LedgerCounts,
    changes: parking::Changes,
    /// `ledger.settle` of each record, by batch index.
    spans: Vec<Span>,
    /// The first record of the batch with each event id, by batch index: the trace its
    /// results and legs continue. Kept only while spans are exported.
    by_event: HashMap<String, usize>,
}

impl<'a> Outcome<'a> {
    fn new(batch: &'a [InputRecord], now_ms: i64) -> Self {
        Outcome {
            batch,
            now_ms,
            rng: StdRng::from_rng(&mut rand::rng()),
            outputs: Vec::with_capacity(batch.len() * 2),
            counts: LedgerCounts::default(),
            changes: parking::Changes::default(),
            spans: batch
                .iter()
                .map(|record| traces::record_span("ledger.settle", &record.headers))
                .collect(),
            by_event: HashMap::new(),
        }
    }

    /// Sends `record` on, in the trace of the batch's record `index`.
    fn send(&mut self, index: usize, mut record: OutputRecord) {
        traces::carry(&self.spans[index], &mut record.headers);
        self.outputs.push(record);
    }

    /// Sends `record` on, in the trace of the batch's event `event_id`.
    fn send_for(&mut self, event_id: &str, record: OutputRecord) {
        match self.by_event.get(event_id) {
            Some(index) => self.send(*index, record),
            None => self.outputs.push(record),
        }
    }
}

/// Accounts settled, and the batch indices of those whose writes failed transiently.
type Waves = (Vec<Vec<Emission>>, Vec<(Vec<usize>, StoreError)>);

impl<S: LedgerStore> Ledger<S> {
    /// The batch cannot go on: wait for the breaker when it is open, else back off.
    fn halt(&self, error: StoreError) -> StageError {
        match self.breaker.reopens_in(std::time::Instant::now()) {
            Some(resume_in) => StageError::Paused {
                reason: match error {
                    StoreError::CircuitOpen(_) => error.to_string(),
                    // A failed probe: the breaker opened again on it.
                    other => format!(
                        "the circuit breaker of the {} is open again: {other}",
                        self.breaker.dependency()
                    ),
                },
                resume_in,
            },
            None => StageError::from(error),
        }
    }

    fn dead_letter(&self, out: &mut Outcome<'_>, index: usize, poison: &Poison) {
        out.counts.dead_letters += 1;
        let routed = out.spans[index].in_scope(|| {
            self.failures.failed(
                &out.batch[index],
                poison.kind,
                &poison.message,
                out.now_ms,
                &mut out.rng,
            )
        });
        out.send(index, routed.record);
    }

    /// Settles every account of the batch, a wave of accounts at a time (see [`next_wave`]),
    /// up to `concurrency` at once.
    async fn settle_in_waves(
        &self,
        mut pending: Vec<Pending>,
        mut facts: Facts,
        now_ms: i64,
        spans: &[Span],
    ) -> Result<Waves, StageError> {
        // Retried records go before later ones of their account: partition order.
        pending.sort_by_key(|p| (p.parking.clone(), p.original_offset, p.index));
        let mut by_account: BTreeMap<String, Vec<(usize, LedgerEntry)>> = BTreeMap::new();
        for p in pending {
            by_account
                .entry(p.entry.account_id().to_owned())
                .or_default()
                .push((p.index, p.entry));
        }
        let mut settled = Vec::with_capacity(by_account.len());
        let mut failed = Vec::new();
        while !by_account.is_empty() {
            let wave = next_wave(&mut by_account, &facts);
            let outcomes: Vec<(Vec<usize>, Result<Settled, StoreError>)> = stream::iter(wave)
                .map(|(account_id, entries)| {
                    let facts = &facts;
                    // The account's store calls, in the trace of its first event here.
                    let span = entries
                        .first()
                        .map_or_else(Span::none, |(index, _)| spans[*index].clone());
                    async move {
                        let outcome = self
                            .settle_account(&account_id, &entries, facts, now_ms)
                            .instrument(span)
                            .await;
                        (entries.iter().map(|(i, _)| *i).collect(), outcome)
                    }
                })
                .buffer_unordered(self.settings.concurrency)
                .collect()
                .await;
            for (indices, outcome) in outcomes {
                match outcome {
                    Ok(outcome) => {
                        facts.counterparty_currency.extend(outcome.opened);
                        settled.push(outcome.emissions);
                    }
                    Err(e) if e.is_transient() => failed.push((indices, e)),
                    Err(e) => return Err(StageError::from(e)),
                }
            }
        }
        Ok((settled, failed))
    }

    /// Accounts whose writes failed go to the retry tiers, and park their later records;
    /// unless the store itself is down, when the whole batch waits instead.
    async fn retry_failed(
        &self,
        failed: Vec<(Vec<usize>, StoreError)>,
        out: &mut Outcome<'_>,
    ) -> Result<(), StageError> {
        // An outage is not a string of event failures: while the breaker is not closed, the
        // whole batch waits and is read again, and nothing goes to the retry tiers.
        if let Some((_, error)) = failed.iter().find(|(_, e)| {
            matches!(e, StoreError::CircuitOpen(_)) || self.breaker.state() != CircuitState::Closed
        }) {
            return Err(self.halt(error.clone()));
        }
        // Is it these accounts, or the store? At the start of an outage the breaker has not
        // seen enough failures yet: a store that does not answer a probe either is down, and
        // the batch waits rather than sending its accounts through the retry tiers.
        if !failed.is_empty() {
            if let Err(e) = self.breaker.guard(None, self.store.ping()).await {
                return Err(self.halt(e));
            }
        }
        for (indices, error) in failed {
            for index in indices {
                let record = &out.batch[index];
                let routed = out.spans[index].in_scope(|| {
                    self.failures.failed(
                        record,
                        error.kind(),
                        &error.to_string(),
                        out.now_ms,
                        &mut out.rng,
                    )
                });
                match (routed.tier, routed.due) {
                    (Some(tier), Some(due)) => {
                        out.counts.retries += 1;
                        out.changes.parked.push((
                            parking_of(record),
                            self.failures.original_offset(record),
                            Retry { tier, due },
                        ));
                    }
                    _ => out.counts.dead_letters += 1,
                }
                out.send(index, routed.record);
            }
        }
        Ok(())
    }

    /// The records the settled accounts publish: results, the legs transfers send on, dead
    /// letters.
    fn emit(&self, settled: Vec<Vec<Emission>>, out: &mut Outcome<'_>) -> Result<(), StageError> {
        for emission in settled.into_iter().flatten() {
            match emission {
                Emission::Result(result) => {
                    out.counts.results += 1;
                    let record = OutputRecord {
                        topic: self.topics.results.clone(),
                        key: Some(result.account_id.clone().into_bytes()),
                        value: Some(self.codec.encode(Record::TransactionResult, &result)?),
                        headers: Vec::new(),
                    };
                    out.send_for(&result.event_id, record);
                }
                Emission::Credit(event) => {
                    out.counts.credits += 1;
                    let counterparty = event.counterparty_account_id.clone().unwrap_or_default();
                    let leg = self.leg(counterparty, &event, TRANSFER_CREDIT)?;
                    out.send_for(&event.event_id, leg);
                }
                Emission::Reversal(event) => {
                    out.counts.reversals += 1;
                    let debited = event.account_id.clone();
                    let leg = self.leg(debited, &event, TRANSFER_REVERSAL)?;
                    out.send_for(&event.event_id, leg);
                }
                Emission::DeadLetter { entry, poison } => self.dead_letter(out, entry, &poison),
                Emission::Duplicate { .. } => out.counts.duplicates += 1,
            }
        }
        Ok(())
    }

    /// A leg of a transfer on the ledger topic, keyed by the account it posts to.
    fn leg(
        &self,
        account_id: String,
        event: &crate::domain::TransactionEvent,
        leg: &[u8],
    ) -> Result<OutputRecord, StageError> {
        Ok(OutputRecord {
            topic: self.topics.input.clone(),
            key: Some(account_id.into_bytes()),
            value: Some(self.codec.encode(Record::TransactionEvent, event)?),
            headers: vec![(LEG.to_owned(), leg.to_vec())],
        })
    }
}

/// The accounts to settle next: those whose transfers do not wait on a counterparty that is
/// unknown so far but still to be settled in this batch (a deposit there may open it). The
/// rest wait for a later wave, once the accounts they pay are settled. Only per-account
/// order is promised, so settling another account first reorders nothing that matters; a
/// cycle of waits (accounts paying each other, all unknown) is settled as it stands.
fn next_wave(
    pending: &mut BTreeMap<String, Vec<(usize, LedgerEntry)>>,
    facts: &Facts,
) -> Vec<(String, Vec<(usize, LedgerEntry)>)> {
    let waits = |account_id: &str, entries: &[(usize, LedgerEntry)]| {
        entries.iter().any(|(_, entry)| {
            let counterparty = entry.event.counterparty_account_id.as_deref();
            entry.leg == Leg::Primary
                && counterparty.is_some_and(|c| {
                    c != account_id
                        && !facts.counterparty_currency.contains_key(c)
                        && pending.contains_key(c)
                })
        })
    };
    let waiting: Vec<String> = pending
        .iter()
        .filter(|(id, entries)| waits(id, entries))
        .map(|(id, _)| id.clone())
        .collect();
    if waiting.len() == pending.len() {
        return std::mem::take(pending).into_iter().collect();
    }
    let mut wave = Vec::with_capacity(pending.len() - waiting.len());
    let all = std::mem::take(pending);
    for (id, entries) in all {
        if waiting.contains(&id) {
            pending.insert(id, entries);
        } else {
            wave.push((id, entries));
        }
    }
    wave
}

#[cfg(test)]
mod tests;
