//! The ledger's rules: what a batch of entries does to one account.
//!
//! The ledger stage groups a batch by account, loads each account and what the store already
//! recorded for the batch's events, looks up the facts that live on other accounts, and calls
//! [`settle`]. The returned [`Settlement`] is everything to write: the account's new state and
//! new result rows (one conditional store write), and the records to publish, in input order.
//!
//! Exactly-once rests on four things decided here (the fifth, that an event id is one event
//! across all accounts, is the stage's claim of each id before it settles):
//! - an event already recorded on this account is never applied again; its stored result is
//!   published again only when the same log position is being replayed (an earlier attempt's
//!   transaction was aborted), or when a redrive brings back a dead letter of that position
//!   (its write applied in a batch that never committed, so the result was never published:
//!   the redrive claims the result, once); a producer's re-send publishes nothing;
//! - the same `event_id` with a different payload is a conflict and changes nothing;
//! - a transfer's credit applies only against a debit the store holds as applied;
//! - a credit that cannot apply is recorded as a rejection and reverses its debit: the
//!   reversal applies only against that debit and that rejection, once.

use std::collections::HashMap;

use super::event::{EventType, Fingerprint, TransactionEvent};
use super::failure::{FailureKind, Poison};
use super::origin::Origin;
use super::result::{
    posting_key, Entry, RejectReason, Status, TransactionResult, TRANSFER_REVERSED,
};

/// The largest balance a deposit or a transfer's credit may leave: 2^53 - 1, the largest
/// integer a JSON number holds exactly. A credit past it is rejected. A reversal may pass it
/// (it gives back what the account held before), up to the 64-bit range.
pub const MAX_BALANCE_MINOR: i64 = (1 << 53) - 1;

/// Which side of an event an entry on the ledger topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The event on its own `account_id`: a deposit, a withdrawal or a transfer's debit.
    Primary,
    /// A transfer's credit on `counterparty_account_id`, published by the ledger in the same
    /// transaction as the applied debit.
    TransferCredit,
    /// The credit that gives a transfer's debit back to `account_id` when its credit was
    /// refused, published by the ledger in the same transaction as the refusal.
    TransferReversal,
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

    /// Where the account records this entry's result.
    pub fn posting_key(&self) -> String {
        posting_key(&self.event.event_id, self.leg == Leg::TransferReversal)
    }

    /// Whether `result` is this entry's result on its account.
    fn posted_as(&self, result: &TransactionResult) -> bool {
        result.event_id == self.event.event_id
            && result.is_reversal() == (self.leg == Leg::TransferReversal)
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

/// What the store recorded for an event on an account, as another leg of the event sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub fingerprint: Fingerprint,
    pub entry: Entry,
    pub status: Status,
}

impl Recorded {
    /// An applied debit of the event with `fingerprint`: what its credit and its reversal
    /// rest on.
    fn is_applied_debit_of(&self, fingerprint: Fingerprint) -> bool {
        self.fingerprint == fingerprint
            && self.entry == Entry::Debit
            && self.status == Status::Applied
    }

    /// A refusal of the credit of the event with `fingerprint`: its rejection, or another
    /// event holding the id on that account, which no credit of this one can ever pass.
    fn refuses_credit_of(&self, fingerprint: Fingerprint) -> bool {
        self.fingerprint != fingerprint || self.status == Status::Rejected
    }
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
    /// What the store recorded on the other accounts of the batch's credit legs and
    /// reversals, by (account, event id): the debit a credit or a reversal rests on, and the
    /// refused credit a reversal rests on. Nothing else may apply them.
    pub recorded: HashMap<(String, String), Recorded>,
}

impl Facts {
    fn recorded(&self, account_id: &str, event_id: &str) -> Option<&Recorded> {
        self.recorded
            .get(&(account_id.to_owned(), event_id.to_owned()))
    }
}

/// A record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emission {
    /// A result on the results topic.
    Result(TransactionResult),
    /// A transfer's credit leg on the ledger topic, keyed by the counterparty.
    Credit(TransactionEvent),
    /// A transfer's reversal on the ledger topic, keyed by the debited account.
    Reversal(TransactionEvent),
    /// The entry at this index of the batch, unchanged, to the dead letters.
    DeadLetter { entry: usize, poison: Poison },
    /// The entry at this index re-sends an event already recorded: nothing is published.
    Duplicate { entry: usize },
}

/// A recorded result a redriven dead letter publishes: the store moves its origin from
/// `from` to `to` if it still is `from`, so that only one redrive publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The result's posting key on the account.
    pub key: String,
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
/// `prior` holds what the store recorded under these entries' posting keys on this account;
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
        let key = entry.posting_key();
        let claimed = book
            .claimed
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.to.clone());
        let earlier = book
            .recorded
            .iter()
            .find(|p| entry.posted_as(&p.result))
            .or_else(|| prior.get(&key))
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
                let (emissions, claim) = seen_before(&earlier, entry, index, fingerprint, key);
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

/// An entry whose posting this account already recorded: what to publish, and the claim
/// when a redrive publishes it.
fn seen_before(
    earlier: &Prior,
    entry: &LedgerEntry,
    index: usize,
    fingerprint: Fingerprint,
    key: String,
) -> (Vec<Emission>, Option<Claim>) {
    if earlier.fingerprint != fingerprint {
        if entry.leg == Leg::TransferCredit {
            // Another event holds the id on this account, recorded before ids were claimed
            // across accounts: the credit can never be recorded here, so its debit goes back.
            return (vec![Emission::Reversal(entry.event.clone())], None);
        }
        let poison = Poison::new(
            FailureKind::IdempotencyConflict,
            format!(
                "event_id {:?} was already recorded on account {:?} with a different payload",
                entry.event.event_id,
                entry.account_id()
            ),
        );
        let dead = Emission::DeadLetter {
            entry: index,
            poison,
        };
        return (vec![dead], None);
    }
    let claim = (entry.redriven_from.as_ref() == Some(&earlier.origin)).then(|| Claim {
        key,
        from: earlier.origin.clone(),
        to: entry.origin.clone(),
    });
    if earlier.origin != entry.origin && claim.is_none() {
        return (vec![Emission::Duplicate { entry: index }], None);
    }
    // The same log position again (the transaction that first published this was aborted),
    // or the dead letter of that position redriven (it was never published).
    let mut emissions = vec![Emission::Result(earlier.result.clone())];
    emissions.extend(next_leg(entry, &earlier.result));
    (emissions, claim)
}

/// The leg a result sends on: the credit of an applied transfer debit, the reversal of a
/// refused transfer credit.
fn next_leg(entry: &LedgerEntry, result: &TransactionResult) -> Option<Emission> {
    match (entry.leg, result.status, result.entry) {
        (Leg::Primary, Status::Applied, Entry::Debit)
            if entry.event.event_type == EventType::Transfer =>
        {
            Some(Emission::Credit(entry.event.clone()))
        }
        (Leg::TransferCredit, Status::Rejected, _) => Some(Emission::Reversal(entry.event.clone())),
        _ => None,
    }
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

/// What the rules decide for one new entry. A credit or a reversal was checked to fit the
/// balance.
enum Decision {
    Credit,
    Reverse,
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
            Leg::TransferReversal => self.decide_reversal(event, fingerprint, facts),
        };
        let balance = self.account.balance_minor;
        let (kind, status, reason, balance_after) = match decision {
            Decision::Credit => (
                Entry::Credit,
                Status::Applied,
                None,
                balance + event.amount_minor,
            ),
            Decision::Reverse => (
                Entry::Credit,
                Status::Applied,
                Some(TRANSFER_REVERSED.to_owned()),
                balance + event.amount_minor,
            ),
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
        self.emissions.extend(next_leg(entry, &result));
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
            EventType::Deposit => self.credit(event.amount_minor),
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

    /// A transfer's credit: only against its applied debit. The debit side checked that this
    /// account exists in the transfer's currency, and an account's currency never changes; a
    /// credit refused here all the same (the balance limit, an altered store) is rejected,
    /// and its rejection reverses the debit.
    fn decide_credit(
        &self,
        event: &TransactionEvent,
        fingerprint: Fingerprint,
        facts: &Facts,
    ) -> Decision {
        let debit = facts.recorded(&event.account_id, &event.event_id);
        if !debit.is_some_and(|d| d.is_applied_debit_of(fingerprint)) {
            return Decision::Refuse(Poison::new(
                FailureKind::OrphanCredit,
                format!(
                    "transfer {:?} credits {:?} but no applied debit of it on {:?} is recorded",
                    event.event_id, self.account_id, event.account_id
                ),
            ));
        }
        if self.account.currency.as_deref() != Some(event.currency.as_str()) {
            return Decision::Reject(RejectReason::CurrencyMismatch);
        }
        self.credit(event.amount_minor)
    }

    /// A transfer's reversal: only against its applied debit on this account and the refusal
    /// of its credit on the counterparty. It gives back what the debit took, so no balance
    /// limit holds it back; only the 64-bit range does.
    fn decide_reversal(
        &self,
        event: &TransactionEvent,
        fingerprint: Fingerprint,
        facts: &Facts,
    ) -> Decision {
        let counterparty = event.counterparty_account_id.as_deref().unwrap_or_default();
        let debit = facts.recorded(self.account_id, &event.event_id);
        let refusal = facts.recorded(counterparty, &event.event_id);
        if !debit.is_some_and(|d| d.is_applied_debit_of(fingerprint))
            || !refusal.is_some_and(|r| r.refuses_credit_of(fingerprint))
        {
            return Decision::Refuse(Poison::new(
                FailureKind::OrphanCredit,
                format!(
                    "transfer {:?} is reversed on {:?}, but no applied debit of it there and refused credit on {counterparty:?} are recorded",
                    event.event_id, self.account_id
                ),
            ));
        }
        if self.account.currency.as_deref() != Some(event.currency.as_str()) {
            return Decision::Refuse(Poison::new(
                FailureKind::InvalidEvent,
                format!(
                    "transfer {:?} is reversed on {:?} in {}, but that account holds {:?}",
                    event.event_id, self.account_id, event.currency, self.account.currency
                ),
            ));
        }
        match self.account.balance_minor.checked_add(event.amount_minor) {
            Some(_) => Decision::Reverse,
            None => Decision::Refuse(Poison::new(
                FailureKind::BalanceOverflow,
                format!(
                    "reversing transfer {:?} would take {:?} past the 64-bit range; redrive it once the balance is lower",
                    event.event_id, self.account_id
                ),
            )),
        }
    }

    fn currency_differs(&self, currency: &str) -> bool {
        self.account
            .currency
            .as_deref()
            .is_some_and(|held| held != currency)
    }

    fn credit(&self, amount: i64) -> Decision {
        match self.account.balance_minor.checked_add(amount) {
            Some(after) if after <= MAX_BALANCE_MINOR => Decision::Credit,
            _ => Decision::Reject(RejectReason::BalanceLimitExceeded),
        }
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
