//! The classes of failure. Every error that can stop an event carries its class, so that
//! the policy of what happens next (output, retry, dead letter) is decided in one place.
//!
//! Business rejections (insufficient funds, …) are not failures: they are results.

use std::fmt;

/// What a failure means for the event that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The event itself is wrong: no retry can help, it goes straight to the dead letters.
    Poison,
    /// The event is fine but something it needs is not, for now: try again later.
    Transient,
}

/// The kinds of failure, as they appear in a dead letter's `error kind` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The bytes are not a record of any known schema.
    Undecodable,
    /// The Confluent wire-format schema id is not one txflow knows.
    UnknownSchema,
    /// A decoded event breaks a field rule (amount, currency, ids, transfer shape).
    InvalidEvent,
    /// An `event_id` already recorded with a different payload.
    IdempotencyConflict,
    /// A transfer credit whose debit was never applied: applying it would create money.
    OrphanCredit,
    /// Applying the event would take a balance past the largest representable amount.
    BalanceOverflow,
    /// The store did not answer in time, or refused for now.
    StoreUnavailable,
}

impl FailureKind {
    /// Whether a retry can help.
    pub fn class(self) -> FailureClass {
        match self {
            FailureKind::StoreUnavailable => FailureClass::Transient,
            FailureKind::Undecodable
            | FailureKind::UnknownSchema
            | FailureKind::InvalidEvent
            | FailureKind::IdempotencyConflict
            | FailureKind::OrphanCredit
            | FailureKind::BalanceOverflow => FailureClass::Poison,
        }
    }

    /// The stable name used in headers, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Undecodable => "undecodable",
            FailureKind::UnknownSchema => "unknown_schema",
            FailureKind::InvalidEvent => "invalid_event",
            FailureKind::IdempotencyConflict => "idempotency_conflict",
            FailureKind::OrphanCredit => "orphan_credit",
            FailureKind::BalanceOverflow => "balance_overflow",
            FailureKind::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event cannot be processed at all: it belongs in the dead letters, unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Poison {
    pub kind: FailureKind,
    pub message: String,
}

impl Poison {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        debug_assert_eq!(kind.class(), FailureClass::Poison);
        Poison {
            kind,
            message: message.into(),
        }
    }
}
