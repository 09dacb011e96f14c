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
pub async fn before_commit() {
    use std::sync::OnceLock;
    use std::time::Duration;
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("TXFLOW_FAULT_BEFORE_COMMIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(pause) = pause {
        tokio::time::sleep(*pause).await;
    }
}

#[cfg(not(feature = "fault-injection"))]
pub async fn before_commit() {}

/// Runs on the transaction's blocking thread.
#[cfg(feature = "fault-injection")]
pub fn in_transaction() {
    use std::sync::OnceLock;
    use std::time::Duration;
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("TXFLOW_FAULT_IN_TRANSACTION_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(pause) = pause {
        std::thread::sleep(*pause);
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn in_transaction() {}
