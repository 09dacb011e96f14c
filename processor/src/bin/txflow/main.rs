//! The `txflow` binary: parses the command line, sets up logging, runs the command.

mod cli;
mod commands;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Logs go to stderr, so that a command's output on stdout stays machine-readable.
    let (spans, _exporting) = match txflow::traces::exporter(&cli.service_name()) {
        Ok(exporting) => exporting.unzip(),
        Err(e) => {
            eprintln!("txflow: cannot export traces: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut filter = EnvFilter::try_from_env("TXFLOW_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,scylla=warn"));
    if spans.is_some() {
        filter = filter.add_directive(txflow::traces::EXPORTED.clone());
    }
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match cli.log_format {
        cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        cli::LogFormat::Json => logs.json().with_current_span(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("txflow: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txflow: {}", txflow::domain::failure::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
