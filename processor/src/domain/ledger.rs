//! The ledger's rules: what a batch of entries does to one account.
//!
//! The ledger stage groups a batch by account, loads each account and what the store already
//! recorded for the batch's events, looks up the facts that live on other accounts, and calls
//! [`settle`]. The returned [`Settlement`] is everything to write: the account's new state and
//! new result rows (one conditional store write), and the records to publish, in input order.
//!
//! Exactly-once rests on three things decided here:
//! - an event already recorded on this account is never applied again; its stored result is
//!   published again only when the same log position is being replayed (an earlier attempt's
//!   transaction was aborted), or when a redrive brings back a dead letter of that position
//!   (its write applied in a batch that never committed, so the result was never published:
//!   the redrive claims the result, once); a producer's re-send publishes nothing;
//! - the same `event_id` with a different payload is a conflict and changes nothing;
//! - a transfer's credit applies only against a debit the store holds as applied.

use std::collections::HashMap;

use super::event::{EventType, Fingerprint, TransactionEvent};
use super::failure::{FailureKind, Poison};
use super::result::{Entry, RejectReason, Status, TransactionResult};

/// Which side of an event an entry on the ledger topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The event on its own `account_id`: a deposit, a withdrawal or a transfer's debit.
    Primary,
    /// A transfer's credit on `counterparty_account_id`, published by the ledger in the same
    /// transaction as the applied debit.
    TransferCredit,
}

/// Where an entry was read: a log position, unique for the life of the topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One record of the ledger topic, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub event: TransactionEvent,
    pub leg: Leg,
    pub origin: Origin,
    /// For a dead letter redriven: where the event was read before it was dead-lettered.
    pub redriven_from: Option<Origin>,
}

impl LedgerEntry {
    /// The account this entry posts to.
    pub fn account_id(&self) -> &str {
        match (self.leg, &self.event.counterparty_account_id) {
            (Leg::TransferCredit, Some(counterparty)) => counterparty,
            _ => &self.event.account_id,
        }
    }
}

/// An account as the store holds it. It exists from its first applied event, which fixes its
/// currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance_minor: i64,
    /// `None` until the first applied event.
    pub currency: Option<String>,
    /// The count of results recorded on the account; the store's compare-and-set token.
    pub version: i64,
}

/// What the store already holds for one event on this account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prior {
    pub fingerprint: Fingerprint,
    pub origin: Origin,
    pub result: TransactionResult,
}

/// What the stage looked up beyond this account for the batch.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The currency of each transfer counterparty that exists; an absent one is unknown.
    pub counterparty_currency: HashMap<String, String>,
    /// Transfer debits the store holds as applied, by `event_id`, with their event's
    /// fingerprint: the only debits a credit leg may be applied against.
    pub applied_debits: HashMap<String, Fingerprint>,
}

/// A record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emission {
    /// A result on the results topic.
    Result(TransactionResult),
    /// A transfer's credit leg on the ledger topic, keyed by the counterparty.
    Credit(TransactionEvent),
    /// The entry at this index of the batch, unchanged, to the dead letters.
    DeadLetter { entry: usize, poison: Poison },
    /// The entry at this index re-sends an event already recorded: nothing is published.
    Duplicate { entry: usize },
}

/// A recorded result a redriven dead letter publishes: the store moves its origin from
/// `from` to `to` if it still is `from`, so that only one redrive publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub event_id: String,
    pub from: Origin,
    pub to: Origin,
}

/// What a batch did to one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The account after the batch.
    pub account: Account,
    /// New result rows for the store, with their event's fingerprint and origin.
    pub recorded: Vec<Prior>,
    /// Recorded results whose publication redriven entries claim.
    pub claimed: Vec<Claim>,
    /// What to publish, in the order of the entries.
    pub emissions: Vec<Emission>,
}

/// Applies `entries`, all posting to `account_id`, in order, to `account`.
///
/// `prior` holds what the store recorded for these entries' event ids on this account;
/// `now_ms` becomes the `processed_at` of new results.
pub fn settle(
    account_id: &str,
    account: Account,
    prior: &HashMap<String, Prior>,
    entries: &[LedgerEntry],
    facts: &Facts,
    now_ms: i64,
) -> Settlement {
    let mut book = Book {
        account_id,
        account,
        now_ms,
        recorded: Vec::new(),
        claimed: Vec::new(),
        emissions: Vec::with_capacity(entries.len()),
    };
    for (index, entry) in entries.iter().enumerate() {
        debug_assert_eq!(entry.account_id(), account_id);
        let fingerprint = entry.event.fingerprint();
        let claimed = book
            .claimed
            .iter()
            .find(|c| c.event_id == entry.event.event_id)
            .map(|c| c.to.clone());
        let earlier = book
            .recorded
            .iter()
            .find(|p| p.result.event_id == entry.event.event_id)
            .or_else(|| prior.get(&entry.event.event_id))
            .map(|p| match &claimed {
                // Claimed earlier in this batch: it lives at its new origin now.
                Some(to) => Prior {
                    origin: to.clone(),
                    ..p.clone()
                },
                None => p.clone(),
            });
        match earlier {
            Some(earlier) => {
                let (emissions, claim) = seen_before(&earlier, entry, index, fingerprint);
                book.emissions.extend(emissions);
                book.claimed.extend(claim);
            }
            None => book.post(index, entry, fingerprint, facts),
        }
    }
    Settlement {
        account: book.account,
        recorded: book.recorded,
        claimed: book.claimed,
        emissions: book.emissions,
    }
}

/// An entry whose event this account already recorded: what to publish, and the claim
/// when a redrive publishes it.
fn seen_before(
    earlier: &Prior,
    entry: &LedgerEntry,
    index: usize,
    fingerprint: Fingerprint,
) -> (Vec<Emission>, Option<Claim>) {
    if earlier.fingerprint != fingerprint {
        let poison = Poison::new(
            FailureKind::IdempotencyConflict,
            format!(
                "event_id {:?} was already recorded on account {:?} with a different payload",
                entry.event.event_id, earlier.result.account_id
            ),
        );
        let dead = Emission::DeadLetter {
            entry: index,
            poison,
        };
        return (vec![dead], None);
    }
    let claim = (entry.redriven_from.as_ref() == Some(&earlier.origin)).then(|| Claim {
        event_id: entry.event.event_id.clone(),
        from: earlier.origin.clone(),
        to: entry.origin.clone(),
    });
    if earlier.origin != entry.origin && claim.is_none() {
        return (vec![Emission::Duplicate { entry: index }], None);
    }
    // The same log position again (the transaction that first published this was aborted),
    // or the dead letter of that position redriven (it was never published).
    let mut emissions = vec![Emission::Result(earlier.result.clone())];
    if let Some(credit) = credit_leg(entry, &earlier.result) {
        emissions.push(credit);
    }
    (emissions, claim)
}

/// The credit leg an applied transfer debit publishes.
fn credit_leg(entry: &LedgerEntry, result: &TransactionResult) -> Option<Emission> {
    let applied_debit = result.status == Status::Applied && result.entry == Entry::Debit;
    (entry.leg == Leg::Primary && entry.event.event_type == EventType::Transfer && applied_debit)
        .then(|| Emission::Credit(entry.event.clone()))
}

/// The account being settled and what the batch has done to it so far.
struct Book<'a> {
    account_id: &'a str,
    account: Account,
    now_ms: i64,
    recorded: Vec<Prior>,
    claimed: Vec<Claim>,
    emissions: Vec<Emission>,
}

/// What the rules decide for one new entry.
enum Decision {
    Credit,
    Debit,
    Reject(RejectReason),
    Refuse(Poison),
}

impl Book<'_> {
    fn post(&mut self, index: usize, entry: &LedgerEntry, fingerprint: Fingerprint, facts: &Facts) {
        let event = &entry.event;
        let decision = match entry.leg {
            Leg::Primary => self.decide_primary(event, facts),
            Leg::TransferCredit => self.decide_credit(event, fingerprint, facts),
        };
        let balance = self.account.balance_minor;
        let (kind, status, reason, balance_after) = match decision {
            Decision::Credit => match balance.checked_add(event.amount_minor) {
                Some(after) => (Entry::Credit, Status::Applied, None, after),
                None => {
                    let poison = Poison::new(
                        FailureKind::BalanceOverflow,
                        format!(
                            "crediting {} to account {:?} would exceed the largest balance",
                            event.amount_minor, self.account_id
                        ),
                    );
                    return self.refuse(index, poison);
                }
            },
            // `debit` checked that the balance covers the amount.
            Decision::Debit => (
                Entry::Debit,
                Status::Applied,
                None,
                balance - event.amount_minor,
            ),
            Decision::Reject(reason) => (
                Entry::None,
                Status::Rejected,
                Some(reason.as_str().to_owned()),
                balance,
            ),
            Decision::Refuse(poison) => return self.refuse(index, poison),
        };
        if status == Status::Applied {
            self.account.currency = Some(event.currency.clone());
        }
        self.account.balance_minor = balance_after;
        self.account.version += 1;
        let result = TransactionResult {
            event_id: event.event_id.clone(),
            account_id: self.account_id.to_owned(),
            entry: kind,
            status,
            reason,
            amount_minor: event.amount_minor,
            balance_after_minor: balance_after,
            account_version: self.account.version,
            processed_at: self.now_ms,
        };
        self.emissions.push(Emission::Result(result.clone()));
        if let Some(credit) = credit_leg(entry, &result) {
            self.emissions.push(credit);
        }
        self.recorded.push(Prior {
            fingerprint,
            origin: entry.origin.clone(),
            result,
        });
    }

    fn refuse(&mut self, entry: usize, poison: Poison) {
        self.emissions.push(Emission::DeadLetter { entry, poison });
    }

    fn decide_primary(&self, event: &TransactionEvent, facts: &Facts) -> Decision {
        if self.currency_differs(&event.currency) {
            return Decision::Reject(RejectReason::CurrencyMismatch);
        }
        match event.event_type {
            EventType::Deposit => Decision::Credit,
            EventType::Withdrawal => self.debit(event.amount_minor),
            EventType::Transfer => {
                let counterparty = event.counterparty_account_id.as_deref().unwrap_or_default();
                match facts.counterparty_currency.get(counterparty) {
                    None => Decision::Reject(RejectReason::UnknownAccount),
                    Some(currency) if *currency != event.currency => {
                        Decision::Reject(RejectReason::CurrencyMismatch)
                    }
                    Some(_) => self.debit(event.amount_minor),
                }
            }
        }
    }

    fn decide_credit(
        &self,
        event: &TransactionEvent,
        fingerprint: Fingerprint,
        facts: &Facts,
    ) -> Decision {
        if facts.applied_debits.get(&event.event_id) != Some(&fingerprint) {
            return Decision::Refuse(Poison::new(
                FailureKind::OrphanCredit,
                format!(
                    "transfer {:?} credits {:?} but no applied debit of it on {:?} is recorded",
                    event.event_id, self.account_id, event.account_id
                ),
            ));
        }
        // The debit side checked that this account exists in the transfer's currency, and an
        // account's currency never changes; a mismatch here means the store was altered.
        if self.account.currency.as_deref() != Some(event.currency.as_str()) {
            return Decision::Refuse(Poison::new(
                FailureKind::InvalidEvent,
                format!(
                    "transfer {:?} credits {:?} in {}, but that account holds {:?}",
                    event.event_id, self.account_id, event.currency, self.account.currency
                ),
            ));
        }
        Decision::Credit
    }

    fn currency_differs(&self, currency: &str) -> bool {
        self.account
            .currency
            .as_deref()
            .is_some_and(|held| held != currency)
    }

    fn debit(&self, amount: i64) -> Decision {
        if self.account.balance_minor < amount {
            Decision::Reject(RejectReason::InsufficientFunds)
        } else {
            Decision::Debit
        }
    }
}

#[cfg(test)]
mod tests;
