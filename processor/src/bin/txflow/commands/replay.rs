//! `txflow replay`: archived events of a time range, published again.

use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;

use txflow::app::{Access, Config};
use txflow::routing::Pattern;
use txflow::stages::archiver::file::parse_utc;
use txflow::stages::archiver::replay::{self, Replay};

use super::{archive_storage, print_line};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The first instant of the range, included: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or
    /// milliseconds since 1970. Records are chosen by the log's timestamp.
    #[arg(long, value_name = "TIME")]
    from: String,
    /// The end of the range, excluded.
    #[arg(long, value_name = "TIME")]
    to: String,
    /// Only events this pattern matches: an EventBridge-style pattern in JSON, as in a
    /// routing rule (docs/ROUTING.md), e.g. '{"event_type": ["DEPOSIT"]}'.
    #[arg(long = "where", value_name = "PATTERN")]
    only: Option<String>,
    /// The topic to publish to: the events topic (through the router again) or the ledger
    /// topic (straight to the ledger).
    #[arg(long, value_name = "TOPIC")]
    to_topic: String,
    /// The archived topic to publish from (default: the events topic). The ledger topic's
    /// archive holds what the router sent the ledger and the ledger's own transfer legs.
    #[arg(long, value_name = "TOPIC")]
    archived_topic: Option<String>,
    /// Events per second at most (default: as fast as the log takes them).
    #[arg(long, value_name = "N")]
    rate: Option<NonZeroU32>,
    /// Count what would be published; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Go on with the run of this id: the files it did are not published again (default: a
    /// new run, whose id is printed).
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
}

/// Replays from the archive of `config`'s `[archiver.storage]` (under `txflow dev`, its
/// data directory's archive when none is set), publishing through `access`.
pub async fn replay<A: Access>(
    access: &A,
    config: &Config,
    dev_dir: Option<&Path>,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    let from_ms = parse_utc(&args.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to_ms = parse_utc(&args.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if to_ms <= from_ms {
        bail!("--to ({}) must come after --from ({})", args.to, args.from);
    }
    let only = args
        .only
        .as_deref()
        .map(Pattern::parse_json)
        .transpose()
        .context("--where")?;
    let objects = archive_storage(config, dev_dir)?;
    let codec = txflow::app::codec::codec(config).await?;
    let publisher = access.publisher(config)?;
    let run_id = args
        .run_id
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let plan = Replay {
        topic: args
            .archived_topic
            .as_deref()
            .unwrap_or(&config.topics.events),
        from_ms,
        to_ms,
        only: only.as_ref(),
        to_topic: &args.to_topic,
        rate: args.rate,
        dry_run: args.dry_run,
        run_id: &run_id,
    };
    if !args.dry_run {
        eprintln!("replay run {run_id} (to go on after a stop: --run-id {run_id})");
    }
    let done = replay::replay(&objects, &publisher, &codec, &plan, |progress, key| {
        eprintln!(
            "file {}/{} {key}: {} events so far",
            progress.files_done, progress.files, progress.events
        );
    })
    .await?;
    let verb = if args.dry_run {
        "would publish"
    } else {
        "published"
    };
    print_line(&serde_json::json!({
            "run_id": run_id,
            "files": done.files,
            "files_done_before": done.files_done_before,
            "events": done.events,
            "left_out_by_where": done.left_out,
            "not_events": done.not_events,
            "to_topic": args.to_topic,
            "dry_run": args.dry_run,
    }))?;
    eprintln!(
        "{verb} {} events of {} files to {}",
        done.events, done.files, args.to_topic
    );
    Ok(())
}
