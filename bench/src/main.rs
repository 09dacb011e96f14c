//! `txflow-bench`: measures a `txflow` build as a user runs it, as child processes of the
//! `txflow` binary beside this one (or `--txflow PATH`): the ledger against its baselines
//! on the configured Kafka and store, the HTTP gateway (`--gateway`), every stage on the
//! embedded backend (`--dev`). It makes fresh topics and keyspaces of its own and drops them
//! afterwards: point it at a cluster where that is welcome.

mod args;
mod child;
mod dev;
mod gateway;
mod ledger;
mod measure;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use txflow::app::Config;

/// Measures a txflow build: the ledger against its baselines on the configured Kafka and
/// store (throughput exactly-once, at-least-once and naive, latency at a fixed rate, the
/// store's raw LWT ceiling), or the gateway (--gateway), or txflow dev (--dev).
///
/// It runs the txflow binary as child processes, and makes fresh topics and keyspaces of
/// its own (dropped afterwards) on the cluster the configuration points at.
#[derive(Debug, Parser)]
#[command(name = "txflow-bench", version)]
struct Cli {
    /// The configuration file (TOML) of the Kafka and store to measure on, as for `txflow`.
    #[arg(long, short, env = "TXFLOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The `txflow` binary to measure (default: the one beside this binary).
    #[arg(long, value_name = "PATH")]
    txflow: Option<PathBuf>,
    #[command(flatten)]
    bench: args::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TXFLOW_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,scylla=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txflow-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let txflow = match cli.txflow {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("txflow"),
    };
    anyhow::ensure!(
        txflow.is_file(),
        "no txflow binary at {}: build it (`cargo build --release`), or give --txflow PATH",
        txflow.display()
    );
    child::set_txflow(txflow);
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    let args = cli.bench;
    let run = format!("{:08x}", rand::random::<u32>());
    let logs = std::env::temp_dir().join(format!("txflow-bench-{run}"));
    std::fs::create_dir_all(&logs)?;
    eprintln!("bench {run}: stage logs in {}", logs.display());
    if args.gateway {
        gateway::bench(&config, &args, &run, &logs).await
    } else if args.dev {
        dev::bench(&config, &args, &run, &logs).await
    } else {
        ledger::bench(&config, args, &run, &logs).await
    }
}
