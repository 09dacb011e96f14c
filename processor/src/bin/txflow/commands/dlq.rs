//! `txflow dlq`: inspect and redrive dead letters.

use anyhow::bail;
use clap::{Args, Subcommand};

use txflow::app::Access;
use txflow::app::Config;
use txflow::failures::redrive::RedriveRequest;
use txflow::failures::{dead_letter_topic, DeadLetter, Filter, Stats};
use txflow::pipeline::now_ms;
use txflow::ports::TopicReader;

use super::print_line;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Count dead letters by error kind, stage and age.
    Stats(Selection),
    /// One JSON line per dead letter: position, kind, origin, event id, age, message.
    List(Selection),
    /// One dead letter in full: decoded event and every header, as JSON.
    Show {
        #[command(flatten)]
        topic: TopicArg,
        /// Its partition in the dead-letter topic.
        #[arg(long)]
        partition: i32,
        /// Its offset in the dead-letter topic.
        #[arg(long)]
        offset: i64,
    },
    /// Write dead letters back to where they were first read, exactly once.
    ///
    /// The dead letters read and the records written commit in one Kafka transaction per batch, in a consumer group of this run's own, so
    /// that a redrive killed half way resumes where it stopped when run again with the same
    /// --run-id. Redriven events go through the stage again as new records: those already
    /// applied change nothing.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct TopicArg {
    /// The dead-letter topic (default: the ledger's, `<topics.ledger>.dlq`).
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct Selection {
    #[command(flatten)]
    topic: TopicArg,
    /// Only dead letters matching NAME=VALUE, where NAME is kind, stage, header.<name> or
    /// event.<field> (event_type, account_id, attributes.<key>, …); repeat to require all.
    #[arg(long = "where", value_name = "NAME=VALUE")]
    filters: Vec<Filter>,
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    selection: Selection,
    /// Where to write them (default: the topic each was first read from, its
    /// txflow.original.topic header).
    #[arg(long)]
    to: Option<String>,
    /// Records per second at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Redrive at most this many matching dead letters.
    #[arg(long)]
    limit: Option<u64>,
    /// Print what would be redriven, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Names this run's consumer group (txflow-dlq-redrive-<run-id>); the same id resumes
    /// an interrupted run. Default: a fresh one.
    #[arg(long)]
    run_id: Option<String>,
    /// Stop once no dead letter arrived for this long (milliseconds).
    #[arg(long, default_value_t = 3000)]
    idle_ms: u64,
}

impl TopicArg {
    fn resolve(&self, config: &Config) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| dead_letter_topic(&config.topics.ledger))
    }
}

/// Every committed dead letter of `topic`.
async fn read_letters<A: Access>(
    access: &A,
    config: &Config,
    topic: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let codec = txflow::app::codec::codec(config).await?;
    let records = access.reader(config)?.read_to_end(topic).await?;
    codec
        .learn(records.iter().map(|r| r.value.as_deref()))
        .await?;
    Ok(records
        .into_iter()
        .map(|record| DeadLetter::new(record, &codec))
        .collect())
}

fn selected(letter: &DeadLetter, filters: &[Filter]) -> bool {
    filters.iter().all(|f| f.matches(letter))
}

pub async fn dlq<A: Access>(
    access: &A,
    config: &Config,
    command: DlqCommand,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::Stats(selection) => {
            let letters = read_letters(access, config, &selection.topic.resolve(config)).await?;
            let chosen = letters.iter().filter(|l| selected(l, &selection.filters));
            print!("{}", Stats::of(chosen, now_ms()));
            Ok(())
        }
        DlqCommand::List(selection) => {
            let now = now_ms();
            for letter in read_letters(access, config, &selection.topic.resolve(config)).await? {
                if selected(&letter, &selection.filters) {
                    print_line(&letter.summary(now))?;
                }
            }
            Ok(())
        }
        DlqCommand::Show {
            topic,
            partition,
            offset,
        } => {
            let topic = topic.resolve(config);
            let letters = read_letters(access, config, &topic).await?;
            match letters
                .iter()
                .find(|l| l.record.partition == partition && l.record.offset == offset)
            {
                Some(letter) => print_line(&serde_json::to_string_pretty(&letter.detail())?),
                None => bail!(
                    "{topic} has no committed record at partition {partition}, offset {offset}"
                ),
            }
        }
        DlqCommand::Redrive(args) => redrive(access, config, args).await,
    }
}

/// What a redrive would write, one JSON line a dead letter; writes nothing.
async fn dry_run<A: Access>(
    access: &A,
    config: &Config,
    args: &RedriveArgs,
    topic: &str,
) -> anyhow::Result<()> {
    let mut count = 0u64;
    for letter in read_letters(access, config, topic).await? {
        if args.limit.is_some_and(|limit| count >= limit) {
            break;
        }
        if selected(&letter, &args.selection.filters) {
            let to = letter
                .destination(args.to.as_deref())
                .map_err(anyhow::Error::msg)?;
            let mut line = letter.summary(now_ms());
            line["to"] = to.into();
            print_line(&line)?;
            count += 1;
        }
    }
    eprintln!("dry run: {count} dead letters would be redriven from {topic}");
    Ok(())
}

/// The redrive of the dead letters of the selection's topic, in the consumer group of
/// `--run-id`, on Kafka or in a running `txflow dev` (the same implementation runs there).
async fn redrive<A: Access>(access: &A, config: &Config, args: RedriveArgs) -> anyhow::Result<()> {
    let topic = args.selection.topic.resolve(config);
    if args.dry_run {
        return dry_run(access, config, &args, &topic).await;
    }
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}", now_ms()));
    let request = RedriveRequest {
        topic: topic.clone(),
        run_id: run_id.clone(),
        filters: args
            .selection
            .filters
            .iter()
            .map(ToString::to_string)
            .collect(),
        to: args.to.clone(),
        rate: args.rate,
        limit: args.limit,
        idle_ms: args.idle_ms,
    };
    let codec = txflow::app::codec::codec(config).await?;
    let done = access.redrive(config, &codec, &request).await?;
    eprintln!(
        "redriven {} dead letters from {topic} (skipped {} not matching, {} that failed again in this run); run id {run_id}",
        done.redriven, done.skipped, done.returned
    );
    Ok(())
}
