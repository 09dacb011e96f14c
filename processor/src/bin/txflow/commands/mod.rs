//! One module per command of `txflow`, each its arguments and what it does.

pub mod accounts;
pub mod api_key;
pub mod audit;
pub mod dlq;
pub mod migrate;
pub mod probe;
pub mod produce;
pub mod rules;
pub mod schemas;
pub mod topics;

/// Writes one line to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn print_line(line: &impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
