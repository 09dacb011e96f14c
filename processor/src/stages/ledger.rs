//! The ledger stage: `txflow.ledger` → balances in the store, results on `txflow.results`,
//! transfer credits back on `txflow.ledger` keyed by the counterparty, poison on
//! `txflow.ledger.dlq`.
//!
//! A batch is decoded and validated, grouped by account, and each account is settled by the
//! pure [`settle`] against what the store holds, then recorded with one conditional write.
//! When another writer (a zombie of this stage, or a concurrent owner during a rebalance)
//! moved the account on first, the account is loaded and settled again: the results it
//! already recorded come back as replays, identical to the first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::codec::{Codec, Record};
use crate::domain::ledger::settle;
use crate::domain::{
    Account, Emission, Facts, FailureKind, LedgerEntry, Leg, Origin, Poison, TransactionEvent,
};
use crate::pipeline::dead_letter::DeadLetters;
use crate::pipeline::{BatchOutput, Stage, StageError, Tally};
use crate::ports::{InputRecord, LedgerStore, OutputRecord};

/// The header that marks a transfer's credit leg on the ledger topic.
pub const LEG_HEADER: &str = "txflow.leg";
/// Its value on a credit leg; a record without the header is a primary entry.
pub const TRANSFER_CREDIT: &[u8] = b"transfer-credit";

/// Where the ledger reads and writes.
#[derive(Clone, Debug)]
pub struct LedgerTopics {
    /// `txflow.ledger`: events, and the credit legs this stage writes.
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
    dead_letters: DeadLetters,
    settings: LedgerSettings,
    /// The last state this process recorded for each account it settled. This process is
    /// the only writer of its partitions' accounts, so the state is almost always current;
    /// when it is not (a rebalance moved the account, or a batch is replayed) the
    /// conditional write refuses and the account is loaded from the store.
    accounts: Mutex<HashMap<String, Account>>,
    /// Currencies of accounts known to exist: existence and currency never change.
    currencies: Mutex<HashMap<String, String>>,
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
    pub dead_letters: usize,
    pub duplicates: usize,
}

impl Tally for LedgerCounts {
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("result", self.results as u64),
            ("credit", self.credits as u64),
            ("dead_letter", self.dead_letters as u64),
            ("duplicate", self.duplicates as u64),
        ]
    }
}

impl<S: LedgerStore> Ledger<S> {
    pub fn new(
        store: Arc<S>,
        codec: Arc<Codec>,
        topics: LedgerTopics,
        dead_letters: DeadLetters,
        settings: LedgerSettings,
    ) -> Self {
        Ledger {
            store,
            codec,
            topics,
            dead_letters,
            settings,
            accounts: Mutex::new(HashMap::new()),
            currencies: Mutex::new(HashMap::new()),
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

    /// A record of the ledger topic as an entry, or why it is poison.
    fn decode(&self, record: &InputRecord) -> Result<LedgerEntry, Poison> {
        let value = record
            .value
            .as_deref()
            .ok_or_else(|| Poison::new(FailureKind::Undecodable, "the record has no value"))?;
        let event: TransactionEvent = self
            .codec
            .decode(Record::TransactionEvent, value)
            .map_err(|e| e.poison())?;
        event.validate()?;
        let leg = match record.header(LEG_HEADER) {
            None => Leg::Primary,
            Some(TRANSFER_CREDIT) if event.counterparty_account_id.is_some() => Leg::TransferCredit,
            Some(other) => {
                return Err(Poison::new(
                    FailureKind::InvalidEvent,
                    format!(
                        "header {LEG_HEADER} is {:?}; only {:?} on a TRANSFER is known",
                        String::from_utf8_lossy(other),
                        String::from_utf8_lossy(TRANSFER_CREDIT)
                    ),
                ));
            }
        };
        let entry = LedgerEntry {
            event,
            leg,
            origin: Origin {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
            },
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

    /// What the batch needs to know beyond each account: counterparties of transfers, and
    /// the debits behind credit legs.
    async fn facts(&self, entries: &[(usize, LedgerEntry)]) -> Result<Facts, StageError> {
        let mut counterparties = Vec::new();
        let mut debits = Vec::new();
        for (_, entry) in entries {
            let event = &entry.event;
            match (entry.leg, &event.counterparty_account_id) {
                (Leg::Primary, Some(counterparty)) => counterparties.push(counterparty.clone()),
                (Leg::TransferCredit, _) => {
                    debits.push((event.account_id.clone(), event.event_id.clone()))
                }
                _ => {}
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
        let (looked_up, applied_debits) = tokio::try_join!(
            self.store.currencies(&counterparties),
            self.store.applied_debits(&debits)
        )
        .map_err(StageError::from)?;
        self.remember_currencies(&looked_up);
        counterparty_currency.extend(looked_up);
        Ok(Facts {
            counterparty_currency,
            applied_debits,
        })
    }

    fn remember_currencies(&self, found: &HashMap<String, String>) {
        let mut known = self.currencies.lock().expect("the currency cache lock");
        if known.len() + found.len() > self.settings.cache_capacity {
            known.clear();
        }
        known.extend(found.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Settles one account's entries and records the outcome, again as long as another
    /// writer moves the account on first.
    async fn settle_account(
        &self,
        account_id: &str,
        entries: Vec<(usize, LedgerEntry)>,
        facts: &Facts,
        now_ms: i64,
    ) -> Result<Settled, StageError> {
        let event_ids: Vec<String> = entries
            .iter()
            .map(|(_, e)| e.event.event_id.clone())
            .collect();
        let (indices, entries): (Vec<usize>, Vec<LedgerEntry>) = entries.into_iter().unzip();
        // Emissions index the account's entries; the batch needs its own indices.
        let settled = |settlement: crate::domain::Settlement| {
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
            if self
                .store
                .record(account_id, &remembered, &settlement)
                .await?
            {
                return Ok(settled(settlement));
            }
            self.forget_account(account_id);
        }
        for _ in 0..self.settings.max_attempts {
            let loaded = self.store.load(account_id, &event_ids).await?;
            let settlement = settle(
                account_id,
                loaded.account.clone(),
                &loaded.prior,
                &entries,
                facts,
                now_ms,
            );
            if self
                .store
                .record(account_id, &loaded.account, &settlement)
                .await?
            {
                return Ok(settled(settlement));
            }
        }
        Err(StageError::Transient {
            kind: FailureKind::StoreUnavailable,
            message: format!(
                "account {account_id:?} was moved on by another writer {} times in a row",
                self.settings.max_attempts
            ),
        })
    }
}

impl<S: LedgerStore> Stage for Ledger<S> {
    type Counts = LedgerCounts;

    async fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> Result<BatchOutput<LedgerCounts>, StageError> {
        let mut outputs = Vec::with_capacity(batch.len() * 2);
        let mut counts = LedgerCounts::default();
        let mut entries = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.decode(record) {
                Ok(entry) => entries.push((index, entry)),
                Err(poison) => {
                    counts.dead_letters += 1;
                    outputs.push(self.dead_letters.letter(record, &poison, now_ms));
                }
            }
        }
        let mut facts = self.facts(&entries).await?;
        let mut pending: BTreeMap<String, Vec<(usize, LedgerEntry)>> = BTreeMap::new();
        for (index, entry) in entries {
            pending
                .entry(entry.account_id().to_owned())
                .or_default()
                .push((index, entry));
        }
        let mut settled: Vec<Vec<Emission>> = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let wave = next_wave(&mut pending, &facts);
            let outcomes: Vec<Settled> = stream::iter(wave)
                .map(|(account_id, entries)| {
                    let facts = &facts;
                    async move {
                        self.settle_account(&account_id, entries, facts, now_ms)
                            .await
                    }
                })
                .buffer_unordered(self.settings.concurrency)
                .try_collect()
                .await?;
            for outcome in outcomes {
                facts.counterparty_currency.extend(outcome.opened);
                settled.push(outcome.emissions);
            }
        }
        for emission in settled.into_iter().flatten() {
            match emission {
                Emission::Result(result) => {
                    counts.results += 1;
                    outputs.push(OutputRecord {
                        topic: self.topics.results.clone(),
                        key: Some(result.account_id.clone().into_bytes()),
                        value: Some(self.codec.encode(Record::TransactionResult, &result)?),
                        headers: Vec::new(),
                    });
                }
                Emission::Credit(event) => {
                    counts.credits += 1;
                    let counterparty = event.counterparty_account_id.clone().unwrap_or_default();
                    outputs.push(OutputRecord {
                        topic: self.topics.input.clone(),
                        key: Some(counterparty.into_bytes()),
                        value: Some(self.codec.encode(Record::TransactionEvent, &event)?),
                        headers: vec![(LEG_HEADER.to_owned(), TRANSFER_CREDIT.to_vec())],
                    });
                }
                Emission::DeadLetter { entry, poison } => {
                    counts.dead_letters += 1;
                    outputs.push(self.dead_letters.letter(&batch[entry], &poison, now_ms));
                }
                Emission::Duplicate { .. } => counts.duplicates += 1,
            }
        }
        Ok(BatchOutput { outputs, counts })
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
mod tests {
    use std::collections::BTreeMap as Map;

    use super::*;
    use crate::domain::EventType;

    fn entry(account: &str, event_type: EventType, to: Option<&str>) -> (usize, LedgerEntry) {
        let event = TransactionEvent {
            event_id: format!("{account}-{event_type:?}"),
            event_type,
            account_id: account.to_owned(),
            counterparty_account_id: to.map(str::to_owned),
            amount_minor: 1,
            currency: "EUR".to_owned(),
            occurred_at: 0,
            source: "test".to_owned(),
            attributes: Map::new(),
        };
        let origin = Origin {
            topic: "t".to_owned(),
            partition: 0,
            offset: 0,
        };
        (
            0,
            LedgerEntry {
                event,
                leg: Leg::Primary,
                origin,
            },
        )
    }

    fn waves(
        mut pending: BTreeMap<String, Vec<(usize, LedgerEntry)>>,
        facts: &mut Facts,
    ) -> Vec<Vec<String>> {
        let mut waves = Vec::new();
        while !pending.is_empty() {
            let wave: Vec<String> = next_wave(&mut pending, facts)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            for id in &wave {
                facts
                    .counterparty_currency
                    .insert(id.clone(), "EUR".to_owned());
            }
            waves.push(wave);
        }
        waves
    }

    #[test]
    fn an_account_opened_in_the_batch_is_settled_before_transfers_to_it() {
        let pending = BTreeMap::from([
            (
                "a".to_owned(),
                vec![entry("a", EventType::Transfer, Some("b"))],
            ),
            ("b".to_owned(), vec![entry("b", EventType::Deposit, None)]),
            (
                "c".to_owned(),
                vec![entry("c", EventType::Transfer, Some("known"))],
            ),
        ]);
        let mut facts = Facts::default();
        facts
            .counterparty_currency
            .insert("known".to_owned(), "EUR".to_owned());
        assert_eq!(
            waves(pending, &mut facts),
            vec![vec!["b".to_owned(), "c".to_owned()], vec!["a".to_owned()]]
        );
    }

    #[test]
    fn transfers_to_accounts_outside_the_batch_do_not_wait() {
        let pending = BTreeMap::from([(
            "a".to_owned(),
            vec![entry("a", EventType::Transfer, Some("elsewhere"))],
        )]);
        assert_eq!(
            waves(pending, &mut Facts::default()),
            vec![vec!["a".to_owned()]]
        );
    }

    #[test]
    fn accounts_paying_each_other_are_settled_together() {
        let pending = BTreeMap::from([
            (
                "a".to_owned(),
                vec![entry("a", EventType::Transfer, Some("b"))],
            ),
            (
                "b".to_owned(),
                vec![entry("b", EventType::Transfer, Some("a"))],
            ),
        ]);
        assert_eq!(
            waves(pending, &mut Facts::default()),
            vec![vec!["a".to_owned(), "b".to_owned()]]
        );
    }
}
