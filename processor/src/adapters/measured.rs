//! The ledger's store, measured: how long each call takes and how its conditional writes
//! end, as `txflow_store_*` metrics, whichever store is behind it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec};
use tracing::Instrument;

use crate::domain::{Account, IdClaim, Recorded, Settlement};
use crate::ports::{LedgerStore, LoadedAccount, StoreError};
use crate::traces;

/// Where a measured store reports.
#[derive(Clone)]
pub struct StoreMetrics {
    pub stage: &'static str,
    /// `txflow_store_duration_seconds{stage, operation}`.
    pub seconds: HistogramVec,
    /// `txflow_store_conditional_writes_total{stage, operation, outcome}`.
    pub conditional_writes: IntCounterVec,
}

/// The operations that are conditional writes (lightweight transactions).
const CONDITIONAL_WRITES: [&str; 2] = ["claim_event_ids", "record"];

/// `S`, measured.
pub struct MeasuredStore<S> {
    inner: Arc<S>,
    metrics: StoreMetrics,
}

impl<S> MeasuredStore<S> {
    pub fn new(inner: Arc<S>, metrics: StoreMetrics) -> Self {
        for operation in CONDITIONAL_WRITES {
            for outcome in ["applied", "refused", "failed"] {
                metrics
                    .conditional_writes
                    .with_label_values(&[metrics.stage, operation, outcome]);
            }
        }
        MeasuredStore { inner, metrics }
    }

    /// `call`, timed, in a span of the current one: `store.conditional_write` for a write,
    /// `store.read` else.
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let work = match CONDITIONAL_WRITES.contains(&operation) {
            true => "store.conditional_write",
            false => "store.read",
        };
        let started = Instant::now();
        let outcome = call.instrument(traces::work_span(work, operation)).await;
        self.metrics
            .seconds
            .with_label_values(&[self.metrics.stage, operation])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    fn conditional(&self, operation: &str, outcome: &str, count: u64) {
        self.metrics
            .conditional_writes
            .with_label_values(&[self.metrics.stage, operation, outcome])
            .inc_by(count);
    }
}

impl<S: LedgerStore> LedgerStore for MeasuredStore<S> {
    async fn load(&self, account_id: &str, keys: &[String]) -> Result<LoadedAccount, StoreError> {
        self.timed("load", self.inner.load(account_id, keys)).await
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.timed("currencies", self.inner.currencies(account_ids))
            .await
    }

    /// A claim is applied when it holds its id afterwards (new, or the same event again),
    /// refused when another event's claim does.
    async fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> Result<HashMap<String, IdClaim>, StoreError> {
        let outcome = self
            .timed("claim_event_ids", self.inner.claim_event_ids(claims))
            .await;
        match &outcome {
            Ok(holders) => {
                let held = claims
                    .iter()
                    .filter(|claim| {
                        holders
                            .get(&claim.event_id)
                            .is_some_and(|holder| claim.against(holder).is_ok())
                    })
                    .count() as u64;
                self.conditional("claim_event_ids", "applied", held);
                self.conditional("claim_event_ids", "refused", claims.len() as u64 - held);
            }
            Err(_) => self.conditional("claim_event_ids", "failed", claims.len() as u64),
        }
        outcome
    }

    async fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> Result<HashMap<(String, String), Recorded>, StoreError> {
        self.timed("recorded", self.inner.recorded(postings)).await
    }

    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .timed("record", self.inner.record(account_id, before, settlement))
            .await;
        let ended = match outcome {
            Ok(true) => "applied",
            Ok(false) => "refused",
            Err(_) => "failed",
        };
        self.conditional("record", ended, 1);
        outcome
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
}
