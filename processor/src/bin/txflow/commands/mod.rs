//! One module per command of `txflow`, each its arguments and what it does.

pub mod accounts;
pub mod api_key;
pub mod audit;
pub mod dlq;
pub mod migrate;
pub mod probe;
pub mod produce;
pub mod replay;
pub mod rules;
pub mod schemas;
pub mod topics;

/// The archive of `config`'s `[archiver.storage]`; with `dev_dir`, that `txflow dev`'s.
pub fn archive_storage(
    config: &txflow::app::Config,
    dev_dir: Option<&std::path::Path>,
) -> anyhow::Result<txflow::adapters::objects::ObjectStorage> {
    let storage = match dev_dir {
        Some(dir) => txflow::app::dev_archive(&config.archiver.storage, dir)?,
        None => config.archiver.storage.clone(),
    };
    Ok(txflow::adapters::objects::ObjectStorage::new(&storage)?)
}

/// Writes one line to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn print_line(line: &impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
