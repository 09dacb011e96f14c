//! The ledger's store on the embedded database: each conditional write is one write
//! transaction that checks the account's version and that none of its results is recorded
//! yet, then writes them all, or writes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::database::Database;
use super::writer::Writer;
use super::{blocking, storage, EmbeddedError, ACCOUNTS, EVENT_IDS, RESULTS};
use crate::domain::result::{event_of_posting_key, posting_key};
use crate::domain::{
    Account, Cause, Fingerprint, IdClaim, Origin, Prior, Recorded, Settlement, Status,
    TransactionResult,
};
use crate::ports::{Balances, LedgerStore, LoadedAccount, StoreError};

/// The ledger's store in the embedded database.
#[derive(Clone)]
pub struct EmbeddedLedgerStore {
    db: Arc<Database>,
    writer: Writer,
}

/// A conditional write.
struct Write {
    account_id: String,
    before: Account,
    settlement: Settlement,
}

/// The account as it stands, if it is still at the version the settlement was computed
/// from, none of its results is recorded yet, and every claimed result still has the origin
/// it is claimed from.
fn conditions_hold(
    accounts: &impl ReadableTable<&'static str, &'static [u8]>,
    results: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    write: &Write,
) -> Result<Option<Account>, EmbeddedError> {
    let account_id = write.account_id.as_str();
    let settlement = &write.settlement;
    let current = account_in(accounts, account_id)?.unwrap_or_default();
    if !settlement.recorded.is_empty() && current.version != write.before.version {
        return Ok(None);
    }
    for claim in &settlement.claimed {
        let origin = result_in(results, account_id, &claim.key)?.map(|stored| Origin {
            topic: stored.origin_topic,
            partition: stored.origin_partition,
            offset: stored.origin_offset,
        });
        if origin.as_ref() != Some(&claim.from) {
            return Ok(None);
        }
    }
    for prior in &settlement.recorded {
        let key = prior.result.posting_key();
        if results
            .get((key.as_str(), account_id))
            .map_err(storage)?
            .is_some()
        {
            return Ok(None);
        }
    }
    Ok(Some(current))
}

fn write_settlement(
    accounts: &mut redb::Table<&'static str, &'static [u8]>,
    results: &mut redb::Table<(&'static str, &'static str), &'static [u8]>,
    write: &Write,
    current: Account,
) -> Result<(), EmbeddedError> {
    let account_id = write.account_id.as_str();
    let settlement = &write.settlement;
    for claim in &settlement.claimed {
        if let Some(mut stored) = result_in(results, account_id, &claim.key)? {
            stored.origin_topic = claim.to.topic.clone();
            stored.origin_partition = claim.to.partition;
            stored.origin_offset = claim.to.offset;
            results
                .insert(
                    (claim.key.as_str(), account_id),
                    encode(&stored)?.as_slice(),
                )
                .map_err(storage)?;
        }
    }
    for prior in &settlement.recorded {
        let key = prior.result.posting_key();
        results
            .insert(
                (key.as_str(), account_id),
                encode(&StoredResult::of(prior))?.as_slice(),
            )
            .map_err(storage)?;
    }
    if let Some(last) = settlement.recorded.last() {
        let applied = settlement
            .recorded
            .iter()
            .any(|p| p.result.status == Status::Applied);
        let currency = current
            .currency
            .or_else(|| settlement.account.currency.clone().filter(|_| applied));
        let updated = StoredAccount {
            balance_minor: last.result.balance_after_minor,
            currency,
            version: last.result.account_version,
        };
        accounts
            .insert(account_id, encode(&updated)?.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    balance_minor: i64,
    currency: Option<String>,
    version: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredResult {
    fingerprint: [u8; 32],
    origin_topic: String,
    origin_partition: i32,
    origin_offset: i64,
    result: TransactionResult,
}

impl StoredResult {
    fn of(prior: &Prior) -> StoredResult {
        StoredResult {
            fingerprint: prior.fingerprint.0,
            origin_topic: prior.origin.topic.clone(),
            origin_partition: prior.origin.partition,
            origin_offset: prior.origin.offset,
            result: prior.result.clone(),
        }
    }

    fn prior(self) -> Prior {
        Prior {
            fingerprint: Fingerprint(self.fingerprint),
            origin: Origin {
                topic: self.origin_topic,
                partition: self.origin_partition,
                offset: self.origin_offset,
            },
            result: self.result,
        }
    }
}

/// The claim that holds an event id.
#[derive(Serialize, Deserialize)]
struct StoredIdClaim {
    fingerprint: [u8; 32],
    accounts: Vec<String>,
}

impl StoredIdClaim {
    fn claim(self, event_id: &str) -> IdClaim {
        IdClaim {
            event_id: event_id.to_owned(),
            fingerprint: Fingerprint(self.fingerprint),
            accounts: self.accounts,
        }
    }
}

/// Claims the event ids of the results a data directory made before ids were claimed holds,
/// in one transaction: the event of an id's first result (in key order) holds it. Opening
/// such a directory runs it once.
pub(super) fn claim_recorded_event_ids(db: &Database) -> Result<(), EmbeddedError> {
    let txn = db.begin_write()?;
    {
        let results = txn.open_table(RESULTS).map_err(storage)?;
        let mut ids = txn.open_table(EVENT_IDS).map_err(storage)?;
        for entry in results.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let (posting, account_id) = key.value();
            let (event_id, reversal) = event_of_posting_key(posting);
            if reversal {
                continue;
            }
            let stored: StoredResult = decode(posting, value.value())?;
            let held = match ids.get(event_id).map_err(storage)? {
                Some(bytes) => Some(decode::<StoredIdClaim>(event_id, bytes.value())?),
                None => None,
            };
            let claim = match held {
                None => StoredIdClaim {
                    fingerprint: stored.fingerprint,
                    accounts: vec![account_id.to_owned()],
                },
                Some(mut held) if held.fingerprint == stored.fingerprint => {
                    held.accounts.push(account_id.to_owned());
                    held
                }
                Some(_) => {
                    tracing::warn!(
                        event_id,
                        account_id,
                        "two events were recorded under one event id before ids were claimed; the first holds it"
                    );
                    continue;
                }
            };
            ids.insert(event_id, encode(&claim)?.as_slice())
                .map_err(storage)?;
        }
    }
    txn.commit().map_err(storage)
}

fn store_error(error: EmbeddedError) -> StoreError {
    match error {
        EmbeddedError::Corrupt(message) => StoreError::Corrupt(Cause::message(message)),
        other => StoreError::Unavailable(Cause::new(other)),
    }
}

fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, EmbeddedError> {
    postcard::from_bytes(bytes).map_err(|e| EmbeddedError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EmbeddedError> {
    postcard::to_stdvec(value).map_err(storage)
}

fn account_of(stored: StoredAccount) -> Account {
    Account {
        balance_minor: stored.balance_minor,
        currency: stored.currency,
        version: stored.version,
    }
}

impl EmbeddedLedgerStore {
    pub(super) fn new(db: Arc<Database>, writer: Writer) -> Self {
        EmbeddedLedgerStore { db, writer }
    }

    /// Every recorded result with its account's row as stored (an account whose events
    /// were all rejected included): for audits, and the tests' invariants, which check the
    /// store against the results topic.
    pub fn recorded(&self) -> Result<Vec<(TransactionResult, Account)>, StoreError> {
        self.read(|txn| {
            let results = txn.open_table(RESULTS).map_err(storage)?;
            let accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
            let mut all = Vec::new();
            for entry in results.iter().map_err(storage)? {
                let (_, value) = entry.map_err(storage)?;
                let stored: StoredResult = decode("a result", value.value())?;
                let account = account_in(&accounts, &stored.result.account_id)?.unwrap_or_default();
                all.push((stored.result, account));
            }
            Ok(all)
        })
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T, EmbeddedError>,
    ) -> Result<T, StoreError> {
        blocking(|| {
            let txn = self.db.begin_read()?;
            work(&txn)
        })
        .map_err(store_error)
    }
}

fn account_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    account_id: &str,
) -> Result<Option<Account>, EmbeddedError> {
    match table.get(account_id).map_err(storage)? {
        Some(bytes) => Ok(Some(account_of(decode(account_id, bytes.value())?))),
        None => Ok(None),
    }
}

/// The result `account_id` recorded under posting `key`.
fn result_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    account_id: &str,
    key: &str,
) -> Result<Option<StoredResult>, EmbeddedError> {
    match table.get((key, account_id)).map_err(storage)? {
        Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
        None => Ok(None),
    }
}

impl LedgerStore for EmbeddedLedgerStore {
    async fn load(&self, account_id: &str, keys: &[String]) -> Result<LoadedAccount, StoreError> {
        self.read(|txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
            let results = txn.open_table(RESULTS).map_err(storage)?;
            let mut prior = HashMap::new();
            for key in keys {
                if let Some(stored) = result_in(&results, account_id, key)? {
                    prior.insert(key.clone(), stored.prior());
                }
            }
            Ok(LoadedAccount {
                account: account_in(&accounts, account_id)?.unwrap_or_default(),
                prior,
            })
        })
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.read(|txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
            let mut currencies = HashMap::new();
            for account_id in account_ids {
                if let Some(currency) = account_in(&accounts, account_id)?.and_then(|a| a.currency)
                {
                    currencies.insert(account_id.clone(), currency);
                }
            }
            Ok(currencies)
        })
    }

    async fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> Result<HashMap<String, IdClaim>, StoreError> {
        let claims = claims.to_vec();
        // Not flushed on its own, like the writes it comes before: a claim lost in a crash
        // takes every later write with it, and its batch is read again.
        self.writer
            .write(false, move |txn| {
                let mut ids = txn.open_table(EVENT_IDS).map_err(storage)?;
                let mut holders = HashMap::with_capacity(claims.len());
                for claim in claims {
                    let held = match ids.get(claim.event_id.as_str()).map_err(storage)? {
                        Some(bytes) => {
                            Some(decode::<StoredIdClaim>(&claim.event_id, bytes.value())?)
                        }
                        None => None,
                    };
                    let holder = match held {
                        Some(held) => held.claim(&claim.event_id),
                        None => {
                            let stored = StoredIdClaim {
                                fingerprint: claim.fingerprint.0,
                                accounts: claim.accounts.clone(),
                            };
                            ids.insert(claim.event_id.as_str(), encode(&stored)?.as_slice())
                                .map_err(storage)?;
                            claim
                        }
                    };
                    holders.insert(holder.event_id.clone(), holder);
                }
                Ok(holders)
            })
            .await
            .map_err(store_error)
    }

    async fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> Result<HashMap<(String, String), Recorded>, StoreError> {
        self.read(|txn| {
            let results = txn.open_table(RESULTS).map_err(storage)?;
            let mut recorded = HashMap::new();
            for (account_id, event_id) in postings {
                if let Some(stored) = result_in(&results, account_id, event_id)? {
                    recorded.insert(
                        (account_id.clone(), event_id.clone()),
                        Recorded {
                            fingerprint: Fingerprint(stored.fingerprint),
                            entry: stored.result.entry,
                            status: stored.result.status,
                        },
                    );
                }
            }
            Ok(recorded)
        })
    }

    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        if settlement.recorded.is_empty() && settlement.claimed.is_empty() {
            return Ok(true);
        }
        let write = Write {
            account_id: account_id.to_owned(),
            before: before.clone(),
            settlement: settlement.clone(),
        };
        // Not flushed on its own: the batch's log commit, which publishes its results, comes
        // after it and flushes it (redb persists commits in order). A crash before that
        // commit loses writes whose batch is read again and writes them again.
        self.writer
            .write(false, move |txn| {
                let mut accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
                let mut results = txn.open_table(RESULTS).map_err(storage)?;
                match conditions_hold(&accounts, &results, &write)? {
                    Some(current) => {
                        write_settlement(&mut accounts, &mut results, &write, current)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            })
            .await
            .map_err(store_error)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|txn| {
            txn.open_table(ACCOUNTS).map_err(storage)?;
            Ok(())
        })
    }
}

impl Balances for EmbeddedLedgerStore {
    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        self.read(|txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
            Ok(account_in(&accounts, account_id)?.filter(exists))
        })
    }

    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>> {
        let all = self.read(|txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
            let mut all = Vec::new();
            for entry in accounts.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let account_id = key.value().to_owned();
                let account = account_of(decode(&account_id, value.value())?);
                if exists(&account) {
                    all.push((account_id, account));
                }
            }
            Ok(all)
        });
        match all {
            Ok(all) => Box::pin(futures::stream::iter(all.into_iter().map(Ok))),
            Err(e) => Box::pin(futures::stream::once(async move { Err(e) })),
        }
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        self.read(|txn| {
            let ids = txn.open_table(EVENT_IDS).map_err(storage)?;
            let Some(holder) = ids.get(event_id).map_err(storage)? else {
                return Ok(Vec::new());
            };
            // Only the results of the event that holds the id: an earlier build may have
            // recorded another event under it.
            let holder: StoredIdClaim = decode(event_id, holder.value())?;
            let results = txn.open_table(RESULTS).map_err(storage)?;
            let mut outcomes = Vec::new();
            for key in [posting_key(event_id, false), posting_key(event_id, true)] {
                for entry in results.range((key.as_str(), "")..).map_err(storage)? {
                    let (stored_key, value) = entry.map_err(storage)?;
                    if stored_key.value().0 != key {
                        break;
                    }
                    let stored: StoredResult = decode(event_id, value.value())?;
                    if stored.fingerprint == holder.fingerprint {
                        outcomes.push(stored.result);
                    }
                }
            }
            Ok(outcomes)
        })
    }
}

/// An account exists from its first applied event, which sets its currency: one whose
/// events were all rejected has a row (its version counts them) but does not exist.
fn exists(account: &Account) -> bool {
    account.currency.is_some()
}
