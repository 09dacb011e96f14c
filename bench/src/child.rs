//! The `txflow` binary every bench runs as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

/// The `txflow` binary the children run.
static TXFLOW: OnceLock<PathBuf> = OnceLock::new();

/// Sets the binary, once, at start.
pub fn set_txflow(path: PathBuf) {
    TXFLOW.set(path).expect("set once");
}

pub fn txflow() -> &'static Path {
    TXFLOW.get().expect("set at start")
}

/// Stops a child as an operator would (SIGTERM), and waits for it.
pub(crate) fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
