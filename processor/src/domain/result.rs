//! The result of an event on one account, as the ledger records and publishes it.

use serde::{Deserialize, Serialize};

/// What an event did to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Entry {
    Debit,
    Credit,
    /// Nothing: the event was rejected.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Applied,
    Rejected,
}

impl Entry {
    /// The Avro enum symbol, also how the store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Debit => "DEBIT",
            Entry::Credit => "CREDIT",
            Entry::None => "NONE",
        }
    }

    /// The entry of an Avro enum symbol; `None` for any other text.
    pub fn from_symbol(symbol: &str) -> Option<Entry> {
        [Entry::Debit, Entry::Credit, Entry::None]
            .into_iter()
            .find(|e| e.as_str() == symbol)
    }
}

impl Status {
    /// The Avro enum symbol, also how the store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "APPLIED",
            Status::Rejected => "REJECTED",
        }
    }

    /// The status of an Avro enum symbol; `None` for any other text.
    pub fn from_symbol(symbol: &str) -> Option<Status> {
        [Status::Applied, Status::Rejected]
            .into_iter()
            .find(|s| s.as_str() == symbol)
    }
}

/// The reason of the compensating credit that reverses a transfer's debit when its credit
/// was refused.
pub const TRANSFER_REVERSED: &str = "transfer_reversed";

/// What separates a transfer's event id from the mark of its reversal in a posting key: a
/// control character, which no event id may hold.
const REVERSAL_MARK: &str = "\u{1f}reversal";

/// The key of a result on its account: the event id, and for the credit that reverses a
/// transfer's debit (a second result of the event on the same account) the event id and a
/// mark no event id can hold.
pub fn posting_key(event_id: &str, reversal: bool) -> String {
    if reversal {
        format!("{event_id}{REVERSAL_MARK}")
    } else {
        event_id.to_owned()
    }
}

/// The event id of a posting key, and whether the posting is a reversal.
pub fn event_of_posting_key(key: &str) -> (&str, bool) {
    match key.strip_suffix(REVERSAL_MARK) {
        Some(event_id) => (event_id, true),
        None => (key, false),
    }
}

/// Why the ledger refused an event: a business outcome, not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The debit would take the balance below zero.
    InsufficientFunds,
    /// The event's currency is not the account's, or a transfer's two accounts differ.
    CurrencyMismatch,
    /// A transfer's counterparty has no applied event yet.
    UnknownAccount,
    /// The credit would take the balance past [`MAX_BALANCE_MINOR`](super::ledger::MAX_BALANCE_MINOR).
    BalanceLimitExceeded,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InsufficientFunds => "insufficient_funds",
            RejectReason::CurrencyMismatch => "currency_mismatch",
            RejectReason::UnknownAccount => "unknown_account",
            RejectReason::BalanceLimitExceeded => "balance_limit_exceeded",
        }
    }
}

/// One event's outcome on one account; field for field the Avro record `TransactionResult`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionResult {
    pub event_id: String,
    pub account_id: String,
    pub entry: Entry,
    pub status: Status,
    /// `None` when applied; a [`RejectReason`] name otherwise.
    pub reason: Option<String>,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    /// The count of results recorded on the account, this one included.
    pub account_version: i64,
    /// When the ledger first decided this outcome, milliseconds since the Unix epoch.
    pub processed_at: i64,
}

impl TransactionResult {
    /// Whether this is the credit that reverses a transfer's debit.
    pub fn is_reversal(&self) -> bool {
        self.reason.as_deref() == Some(TRANSFER_REVERSED)
    }

    /// Where the store keeps this result on its account: [`posting_key`] of its event.
    pub fn posting_key(&self) -> String {
        posting_key(&self.event_id, self.is_reversal())
    }

    /// The signed change this result made to its account's balance.
    pub fn balance_change(&self) -> i64 {
        match (self.status, self.entry) {
            (Status::Applied, Entry::Credit) => self.amount_minor,
            (Status::Applied, Entry::Debit) => -self.amount_minor,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_the_avro_ones_and_read_back() {
        for entry in [Entry::Debit, Entry::Credit, Entry::None] {
            assert_eq!(
                serde_json::to_string(&entry).unwrap(),
                format!("\"{}\"", entry.as_str())
            );
            assert_eq!(Entry::from_symbol(entry.as_str()), Some(entry));
        }
        for status in [Status::Applied, Status::Rejected] {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
            assert_eq!(Status::from_symbol(status.as_str()), Some(status));
        }
        assert_eq!(Entry::from_symbol("debit"), None);
        assert_eq!(Status::from_symbol(""), None);
    }
}
