//! What each bench measures, and how much of it: the flags of `txflow-bench`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Events of each throughput run (exactly-once and at-least-once).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: u64,
    /// Events of the naive run (one LWT and one transaction per event is slow).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) naive_events: u64,
    /// Accounts of the workload.
    #[arg(long, default_value_t = 1000)]
    pub(crate) accounts: usize,
    /// Zipf exponent of account popularity.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) zipf: f64,
    /// Seconds of the fixed-rate latency run; a long run weighs the steady state over the
    /// first seconds after start.
    #[arg(long, default_value_t = 60)]
    pub(crate) latency_seconds: u64,
    /// Events per second of the latency run (default: half the exactly-once throughput).
    #[arg(long)]
    pub(crate) latency_rate: Option<u32>,
    /// Lightweight transactions of the raw store ceiling run.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) lwt_count: u64,
    /// Concurrent lightweight transactions in the raw store ceiling run.
    #[arg(long, default_value_t = 256)]
    pub(crate) lwt_concurrency: usize,
    /// Partitions of the bench topics.
    #[arg(long, default_value_t = 6)]
    pub(crate) partitions: i32,
    /// Measure the HTTP gateway (single and batch posts) instead of the ledger.
    #[arg(long)]
    pub(crate) gateway: bool,
    /// Measure `txflow dev` (every stage on the embedded backend) instead of the ledger.
    #[arg(long, conflicts_with = "gateway")]
    pub(crate) dev: bool,
    /// Events of the `--dev` throughput phase.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) dev_events: usize,
    /// Seconds of the `--dev` fixed-rate phase.
    #[arg(long, default_value_t = 30)]
    pub(crate) dev_latency_seconds: u64,
    /// Seconds of each gateway run.
    #[arg(long, default_value_t = 20)]
    pub(crate) gateway_seconds: u64,
    /// Concurrent connections posting single events (a quarter of them post batches).
    #[arg(long, default_value_t = 64)]
    pub(crate) gateway_connections: usize,
    /// Events per batch post.
    #[arg(long, default_value_t = 100)]
    pub(crate) gateway_batch: usize,
    /// Markdown file to write the results into (between bench markers, replacing an earlier
    /// section of the same bench); printed to stdout either way.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}
