//! Fault injection for tests, compiled only with the `fault-injection` feature: no production
//! build can be slowed or broken by an environment variable.
//!
//! `TXFLOW_FAULT_BEFORE_COMMIT_MS` pauses every batch between its store writes and its log
//! commit, widening the window in which a crash leaves the store ahead of the log, so that
//! the crash tests' kills land there.
//!
//! `TXFLOW_FAULT_IN_TRANSACTION_MS` pauses every transaction between sending a batch's
//! records and committing it: a crash there leaves those records on the output topics in
//! a transaction that is aborted, which no `read_committed` reader may see.

#[cfg(feature = "fault-injection")]
use std::{sync::OnceLock, time::Duration};

/// The pause the environment variable `var` asks for, read once into `pause`.
#[cfg(feature = "fault-injection")]
fn asked(var: &str, pause: &'static OnceLock<Option<Duration>>) -> Option<Duration> {
    *pause.get_or_init(|| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

#[cfg(feature = "fault-injection")]
pub async fn before_commit() {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(pause) = asked("TXFLOW_FAULT_BEFORE_COMMIT_MS", &PAUSE) {
        tokio::time::sleep(pause).await;
    }
}

#[cfg(not(feature = "fault-injection"))]
pub async fn before_commit() {}

/// Runs on the transaction's blocking thread.
#[cfg(feature = "fault-injection")]
pub fn in_transaction() {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(pause) = asked("TXFLOW_FAULT_IN_TRANSACTION_MS", &PAUSE) {
        std::thread::sleep(pause);
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn in_transaction() {}
