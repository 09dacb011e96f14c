//! Stopping: a channel that turns true when the process is asked to stop.

use tokio::sync::watch;

use super::AppError;

/// A channel that turns true on SIGTERM or Ctrl-C.
pub fn on_signal() -> Result<watch::Receiver<bool>, AppError> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AppError::io("listening for SIGTERM"))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing the open batches");
        let _ = tx.send(true);
    });
    Ok(rx)
}
