//! The result of an event on one account, as the ledger records and publishes it.

use serde::{Deserialize, Serialize};

/// What an event did to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Why the ledger refused an event: a business outcome, not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The debit would take the balance below zero.
    InsufficientFunds,
    /// The event's currency is not the account's, or a transfer's two accounts differ.
    CurrencyMismatch,
    /// A transfer's counterparty has no applied event yet.
    UnknownAccount,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InsufficientFunds => "insufficient_funds",
            RejectReason::CurrencyMismatch => "currency_mismatch",
            RejectReason::UnknownAccount => "unknown_account",
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
    /// The signed change this result made to its account's balance.
    pub fn balance_change(&self) -> i64 {
        match (self.status, self.entry) {
            (Status::Applied, Entry::Credit) => self.amount_minor,
            (Status::Applied, Entry::Debit) => -self.amount_minor,
            _ => 0,
        }
    }
}
