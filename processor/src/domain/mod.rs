//! The domain: events, their validation, the ledger's rules and the classes of failure.
//!
//! Everything here is a plain function over values: no IO, no async, no clock (the time of
//! processing is an argument). The stages feed it what they read and write what it decides.

pub mod audit;
pub mod event;
pub mod failure;
pub mod ledger;
pub mod origin;
pub mod result;

pub use event::{id_problem, is_currency_code, EventType, Fingerprint, IdClaim, TransactionEvent};
pub use failure::{
    Cause, CircuitOpen, FailureClass, FailureKind, Move, Poison, RetryClass, RetryPolicy,
};
pub use ledger::{Account, Claim, Emission, Facts, LedgerEntry, Leg, Prior, Recorded, Settlement};
pub use origin::Origin;
pub use result::{Entry, RejectReason, Status, TransactionResult, TRANSFER_REVERSED};
