//! The ledger's store: accounts, and every result recorded on them, written only by
//! conditional writes that apply when the account is still at the version they were
//! computed from.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::domain::{
    Account, Cause, CircuitOpen, FailureKind, IdClaim, Prior, Recorded, RetryClass, Settlement,
    TransactionResult,
};

/// Why the store could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Timed out, overloaded, unreachable: the same call may succeed later.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The keyspace or tables are missing or not what txflow expects; no retry helps.
    #[error("the store's schema is missing or not txflow's ({0}); run `txflow migrate`")]
    Schema(#[source] Cause),
    /// A row the store returned cannot be what txflow wrote.
    #[error("the store holds a row txflow cannot read: {0}")]
    Corrupt(#[source] Cause),
    /// The circuit breaker in front of the store refused the call without making it.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// The store refused this client: wrong credentials, a certificate it does not trust,
    /// TLS it does not speak. No retry helps; `store.username`, `store.password` and
    /// `store.tls_*` must change.
    #[error("the store refused txflow (check store.username, store.password, store.tls_*): {0}")]
    Refused(#[source] Cause),
}

impl StoreError {
    /// The failure kind of a transient error, for dead-letter headers and metrics.
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::CircuitOpen(_) => FailureKind::CircuitOpen,
            _ => FailureKind::StoreUnavailable,
        }
    }
}

/// Only a transient error stops an account or a batch for a while; the rest stop the stage.
impl RetryClass for StoreError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::CircuitOpen(_)
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::CircuitOpen(open) => Some(open.retry_after),
            _ => None,
        }
    }
}

/// An account and what it already recorded under the posting keys asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedAccount {
    pub account: Account,
    /// By posting key.
    pub prior: HashMap<String, Prior>,
}

/// The ledger's store: what the ledger stage reads and writes to settle a batch.
pub trait LedgerStore: Send + Sync + 'static {
    /// The account (default when it has no row yet) and its results under `keys` (posting
    /// keys: an event id, or a transfer's reversal beside its debit).
    fn load(
        &self,
        account_id: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<LoadedAccount, StoreError>> + Send;

    /// The currency of each of these accounts that exists.
    fn currencies(
        &self,
        account_ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, String>, StoreError>> + Send;

    /// Claims each event id for its event, unless another claim holds it already; the claim
    /// that holds each id afterwards, by event id. Conditional, so that of two events
    /// claiming one id at once exactly one holds it; a claim is never given up.
    fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> impl Future<Output = Result<HashMap<String, IdClaim>, StoreError>> + Send;

    /// Of these (account, event id) pairs, what each recorded, when it did: read so that a
    /// result another writer recorded before the asker could know of it is seen.
    fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> impl Future<Output = Result<HashMap<(String, String), Recorded>, StoreError>> + Send;

    /// Writes what `settlement` recorded if the account is still as `before` says and none
    /// of the recorded events is recorded yet. `Ok(false)` means one of the two did not hold
    /// (another writer moved the account on, or `before` was a guess and an event was a
    /// replay): load again and settle again.
    fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the store answers a read at the configured consistency: the circuit
    /// breaker's probe, independent of any account's own trouble.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What the store answers about balances and outcomes: the read side, for the gateway and
/// the operator's commands.
pub trait Balances: Send + Sync + 'static {
    /// One account, if it exists: from its first applied event.
    fn account(
        &self,
        account_id: &str,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;

    /// Every account that exists, in no particular order.
    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>>;

    /// The results recorded for `event_id`, on every account it touched (a transfer has two,
    /// or three when it was reversed), in no particular order; empty while it has none.
    fn outcomes(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Vec<TransactionResult>, StoreError>> + Send;
}
