//! The `txflow` command line.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use rdkafka::producer::{BaseRecord, Producer};

use txflow::adapters::kafka::{self, Delivery, TopicReport};
use txflow::adapters::scylla;
use txflow::codec::Record;
use txflow::config::Config;
use txflow::domain::TransactionEvent;
use txflow::limits::pacing;
use txflow::loadgen::hostile::{HostileConfig, HostileWorkload};
use txflow::loadgen::{Sent, Workload, WorkloadConfig};
use txflow::ports::LedgerStore;
use txflow::routing::Rules;
use txflow::stages::gateway::account_json;
use txflow::wire::OutputRecord;

use crate::dev_access::DevClient;
use crate::run::{Backend, Services};

/// txflow: an exactly-once financial transaction stream processor on Kafka and ScyllaDB.
///
/// Configuration comes from the file given with --config (TOML), then from environment
/// variables TXFLOW_<SECTION>__<KEY> (for example TXFLOW_KAFKA__BOOTSTRAP_SERVERS); without
/// either, every setting points at the local stack (deploy/local/stack up).
#[derive(Debug, Parser)]
#[command(name = "txflow", version, propagate_version = true)]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short, global = true, env = "TXFLOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Work against the `txflow dev` running on this data directory instead of Kafka and
    /// the store (for accounts, dlq and produce).
    #[arg(long, global = true, env = "TXFLOW_DEV_DIR", value_name = "DIR")]
    dev_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store's keyspace and table (idempotent).
    Migrate,
    /// Manage Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Run every stage in this process on an embedded log and store in a local directory
    /// (no Kafka, no database): the whole pipeline on one machine, with the same guarantees.
    Dev(DevArgs),
    /// Run a pipeline stage on Kafka and ScyllaDB until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Read balances from the store.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Write generated Avro transaction events to Kafka.
    Produce(ProduceArgs),
    /// Inspect and redrive dead letters.
    #[command(subcommand)]
    Dlq(crate::dlq_commands::DlqCommand),
    /// Check routing rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Register txflow's schemas in the schema registry, list their versions.
    #[command(subcommand)]
    Schemas(crate::schema_commands::SchemasCommand),
    /// Make API keys for the gateway.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Measure the ledger on the configured Kafka and store: throughput exactly-once,
    /// at-least-once and naive, latency at a fixed rate, the store's raw LWT ceiling.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every missing topic with the configured partitions and configs, and report how
    /// existing ones differ (they are never changed: more partitions would break per-account
    /// order).
    Apply,
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Print a new random API key, and the config line that lets the gateway accept it (the
    /// key's SHA-256: the gateway never holds the key itself).
    New {
        /// The key's name, in logs and rate limits.
        name: String,
    },
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Where the log and the store live (default: dev.data_dir, ./txflow-data); made on the
    /// first start, continued on the next.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The stage to run.
    #[arg(long, value_enum)]
    stage: crate::run::StageName,
    /// How outputs and consumed offsets reach Kafka. at-least-once is the benchmark's
    /// baseline, not for production: after a crash, results can be published twice
    /// (balances stay exactly-once, because the store refuses to apply an event twice).
    #[arg(long, value_enum, default_value_t = DeliveryArg::ExactlyOnce)]
    delivery: DeliveryArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeliveryArg {
    /// Outputs and offsets in one Kafka transaction.
    ExactlyOnce,
    /// Outputs flushed, then offsets committed.
    AtLeastOnce,
}

impl From<DeliveryArg> for Delivery {
    fn from(arg: DeliveryArg) -> Self {
        match arg {
            DeliveryArg::ExactlyOnce => Delivery::ExactlyOnce,
            DeliveryArg::AtLeastOnce => Delivery::AtLeastOnce,
        }
    }
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Which rules of a rules file an event matches, and what each target receives: one JSON
    /// line per target; an event that matches no rule goes to the default target
    /// (the ledger topic).
    Test {
        /// The rules file (YAML).
        rules: PathBuf,
        /// The event, as JSON (a TransactionEvent: event_id, event_type, account_id, …).
        event: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// One account's balance, currency and version, as JSON.
    Get {
        /// The account id.
        account_id: String,
    },
    /// Every account, one JSON object a line.
    Export,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// The topic to write to (default: the ledger topic, which the ledger stage reads).
    #[arg(long)]
    topic: Option<String>,
    /// How many events to write; with neither --count nor --duration, 1000.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// For how many seconds to write.
    #[arg(long)]
    duration: Option<u64>,
    /// Events per second; 0 writes as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Number of accounts.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Zipf exponent of account popularity (0 is uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Random seed: the same seed writes the same sequence of events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of the event ids (default: a fresh random one, so that runs never share ids).
    #[arg(long)]
    id_prefix: Option<String>,
    /// Currency of every event.
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Share (0..1) of events that re-send an earlier event unchanged.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share (0..1) of events that re-send an earlier event id with another amount.
    #[arg(long, default_value_t = 0.0)]
    conflicts: f64,
    /// Write the hostile workload instead: every event valid, event ids re-used across
    /// accounts, types and amounts, amounts of 1 and at the largest balance and the 64-bit
    /// limit, transfers into accounts opened a moment before, a second currency. For trying
    /// a deployment's guarantees; --accounts, --zipf, --currency, --duplicates and
    /// --conflicts do not apply.
    #[arg(long, conflicts_with_all = ["accounts", "zipf", "currency", "duplicates", "conflicts"])]
    hostile: bool,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref(), std::env::vars())?;
        let dev = self
            .dev_dir
            .as_deref()
            .map(DevClient::connect)
            .transpose()?;
        if dev.is_some()
            && !matches!(
                self.command,
                Command::Accounts(_) | Command::Dlq(_) | Command::Produce(_)
            )
        {
            bail!("--dev-dir works with accounts, dlq and produce; `txflow bench --dev` measures a txflow dev of its own");
        }
        match self.command {
            Command::Migrate => migrate(&config).await,
            Command::Topics(TopicsCommand::Apply) => apply_topics(&config).await,
            Command::Run(RunArgs { stage, delivery }) => {
                crate::run::run(&config, stage, delivery.into()).await
            }
            Command::Dev(DevArgs { data_dir }) => {
                let data_dir = data_dir.unwrap_or_else(|| config.dev.data_dir.clone());
                crate::run::dev(&config, &data_dir).await
            }
            Command::ApiKey(ApiKeyCommand::New { name }) => {
                let (key, hash) = txflow::stages::gateway::keys::new_key();
                println!("key:    {key}");
                println!("config: [gateway.api_keys]");
                println!("        {name:?} = \"{hash}\"");
                println!(
                    "  or:   TXFLOW_GATEWAY__API_KEYS__{}={hash}",
                    name.to_ascii_uppercase().replace('-', "_")
                );
                println!("  or:   a line `{name} {hash}` in gateway.api_keys_file");
                Ok(())
            }
            Command::Accounts(command) => match &dev {
                Some(dev) => dev_accounts(dev, command).await,
                None => accounts(&config, command).await,
            },
            Command::Produce(args) => produce(&config, args, dev.as_ref()).await,
            Command::Dlq(command) => crate::dlq_commands::dlq(&config, command, dev.as_ref()).await,
            Command::Schemas(command) => crate::schema_commands::schemas(&config, command).await,
            Command::Rules(RulesCommand::Test { rules, event }) => {
                test_rules(&config, &rules, &event)
            }
            Command::Bench(args) => crate::bench::bench(&config, args).await,
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let session = scylla::connect(&config.store).await?;
    let migration = scylla::migrate(&session, &config.store).await?;
    let keyspace = &config.store.keyspace;
    println!(
        "keyspace {keyspace} and tables {keyspace}.{} and {keyspace}.{} are in place",
        scylla::LEDGER_TABLE,
        scylla::EVENT_IDS_TABLE
    );
    if migration.dropped_legacy_index {
        println!(
            "claimed {} event ids of results recorded before ids were claimed, and dropped the index they were found by",
            migration.claimed
        );
    }
    if !migration.conflicts.is_empty() {
        println!(
            "{} event ids were recorded for two different events before ids were claimed; the first claimed holds each: {}",
            migration.conflicts.len(),
            migration.conflicts.join(", ")
        );
    }
    Ok(())
}

async fn apply_topics(config: &Config) -> anyhow::Result<()> {
    let reports = kafka::apply_topics(&config.kafka, &config.topics, &config.all_topics())
        .await
        .with_context(|| format!("applying topics on {}", config.kafka.bootstrap_servers))?;
    for report in reports {
        match report {
            TopicReport::Created { topic, partitions } => {
                println!("created   {topic} ({partitions} partitions)")
            }
            TopicReport::Unchanged { topic } => println!("unchanged {topic}"),
            TopicReport::Differs { topic, differences } => {
                println!(
                    "differs   {topic}: {} (left as it is)",
                    differences.join("; ")
                )
            }
        }
    }
    Ok(())
}

fn test_rules(config: &Config, rules: &Path, event: &Path) -> anyhow::Result<()> {
    let rules = Rules::load(rules)?;
    let text =
        std::fs::read_to_string(event).with_context(|| format!("reading {}", event.display()))?;
    let event: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", event.display()))?;
    serde_json::from_value::<TransactionEvent>(event.clone())
        .context("the event is not a transaction event")?
        .validate()
        .context("the event is not a valid transaction event")?;
    let routed = rules.route(&event);
    if routed.is_empty() {
        return print_line(&serde_json::json!({
            "rule": null,
            "topic": config.topics.ledger,
            "payload": event,
        }));
    }
    for delivery in routed {
        print_line(&serde_json::json!({
            "rule": delivery.rule,
            "topic": delivery.target.topic,
            "webhook": delivery.target.webhook,
            "payload": delivery.transformed.unwrap_or_else(|| event.clone()),
        }))?;
    }
    Ok(())
}

async fn accounts(config: &Config, command: AccountsCommand) -> anyhow::Result<()> {
    let store = Services.store(config).await?;
    match command {
        AccountsCommand::Get { account_id } => match store.account(&account_id).await? {
            Some(account) => print_line(&account_json(&account_id, &account)),
            None => bail!("account {account_id:?} has no recorded event"),
        },
        AccountsCommand::Export => {
            let mut accounts = store.accounts();
            while let Some((id, account)) = accounts.try_next().await? {
                print_line(&account_json(&id, &account))?;
            }
            Ok(())
        }
    }
}

async fn dev_accounts(dev: &DevClient, command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Get { account_id } => match dev.account(&account_id).await? {
            Some(account) => print_line(&account),
            None => bail!("account {account_id:?} has no recorded event"),
        },
        AccountsCommand::Export => {
            for line in dev.accounts().await?.lines() {
                print_line(&line)?;
            }
            Ok(())
        }
    }
}

/// Writes one line to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn print_line(line: &impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// Where `txflow produce` writes: Kafka, or a running `txflow dev`.
enum Destination<'a> {
    Kafka(kafka::ReportingProducer),
    Dev {
        client: &'a DevClient,
        pending: Vec<OutputRecord>,
        /// When the oldest pending record was made.
        since: Instant,
        delivered: u64,
    },
}

impl Destination<'_> {
    /// How long a record waits for others to go with it to a `txflow dev`, at most: a
    /// slow `--rate` still arrives at its pace.
    const DEV_WAIT: Duration = Duration::from_millis(100);

    async fn send(&mut self, topic: &str, key: &[u8], value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Destination::Kafka(producer) => {
                let record = BaseRecord::to(topic).key(key).payload(value.as_slice());
                kafka::send_when_room(producer, record)
                    .await
                    .with_context(|| format!("producing to {topic}"))
            }
            Destination::Dev { pending, since, .. } => {
                if pending.is_empty() {
                    *since = Instant::now();
                }
                pending.push(OutputRecord {
                    topic: topic.to_owned(),
                    key: Some(key.to_vec()),
                    value: Some(value),
                    headers: Vec::new(),
                });
                if pending.len() >= crate::dev_access::WRITE_RECORDS
                    || since.elapsed() >= Self::DEV_WAIT
                {
                    self.flush_dev(topic).await?;
                }
                Ok(())
            }
        }
    }

    async fn flush_dev(&mut self, topic: &str) -> anyhow::Result<()> {
        if let Destination::Dev {
            client,
            pending,
            delivered,
            ..
        } = self
        {
            if !pending.is_empty() {
                *delivered += client.publish(topic, pending).await?.len() as u64;
                pending.clear();
            }
        }
        Ok(())
    }

    /// Waits until everything sent is acknowledged; how many were delivered, how many failed.
    async fn finish(mut self, topic: &str) -> anyhow::Result<(u64, u64)> {
        self.flush_dev(topic).await?;
        match self {
            Destination::Kafka(producer) => {
                tokio::task::block_in_place(|| producer.flush(Duration::from_secs(60)))
                    .context("waiting for the broker to acknowledge every event")?;
                let deliveries = producer.context();
                Ok((
                    deliveries.delivered.load(Ordering::Relaxed),
                    deliveries.failed.load(Ordering::Relaxed),
                ))
            }
            Destination::Dev { delivered, .. } => Ok((delivered, 0)),
        }
    }
}

/// The workload `txflow produce` writes.
enum Events {
    Zipf(Workload),
    Hostile(HostileWorkload),
}

impl Events {
    fn next_event(&mut self) -> (TransactionEvent, Sent) {
        match self {
            Events::Zipf(workload) => workload.next_event(),
            Events::Hostile(workload) => workload.next_event(),
        }
    }
}

async fn produce(
    config: &Config,
    args: ProduceArgs,
    dev: Option<&DevClient>,
) -> anyhow::Result<()> {
    for (name, share) in [
        ("--duplicates", args.duplicates),
        ("--conflicts", args.conflicts),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{name} is a share between 0 and 1, got {share}");
        }
    }
    if args.accounts < 2 {
        bail!("--accounts must be at least 2, so that transfers have a counterparty");
    }
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| config.topics.ledger.clone());
    let codec = crate::schema_commands::codec(config).await?;
    let mut destination = match dev {
        Some(client) => Destination::Dev {
            client,
            pending: Vec::new(),
            since: Instant::now(),
            delivered: 0,
        },
        None => Destination::Kafka(kafka::idempotent_producer(&config.kafka)?),
    };
    let id_prefix = args
        .id_prefix
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let mut workload = if args.hostile {
        Events::Hostile(HostileWorkload::new(HostileConfig {
            seed: args.seed,
            prefix: id_prefix,
        }))
    } else {
        Events::Zipf(Workload::new(WorkloadConfig {
            accounts: args.accounts,
            zipf_exponent: args.zipf,
            seed: args.seed,
            id_prefix,
            currency: args.currency.clone(),
            duplicate_share: args.duplicates,
            conflict_share: args.conflicts,
            ..WorkloadConfig::default()
        }))
    };
    let limiter = NonZeroU32::new(args.rate).map(pacing);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let count = match (args.count, deadline) {
        (Some(count), _) => count,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1000,
    };
    let started = Instant::now();
    let (mut fresh, mut duplicates, mut conflicts) = (0u64, 0u64, 0u64);
    for _ in 0..count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(limiter) = &limiter {
            limiter.until_ready().await;
        }
        let (event, sent) = workload.next_event();
        match sent {
            Sent::Fresh => fresh += 1,
            Sent::Duplicate => duplicates += 1,
            Sent::Conflict => conflicts += 1,
        }
        let value = codec.encode(Record::TransactionEvent, &event)?;
        destination
            .send(&topic, event.account_id.as_bytes(), value)
            .await?;
    }
    let (delivered, failed) = destination.finish(&topic).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sent = fresh + duplicates + conflicts;
    println!(
        "{}",
        serde_json::json!({
            "topic": topic,
            "sent": sent,
            "fresh": fresh,
            "duplicates": duplicates,
            "conflicts": conflicts,
            "delivered": delivered,
            "failed": failed,
            "seconds": elapsed,
            "events_per_second": sent as f64 / elapsed.max(1e-9),
        })
    );
    if failed > 0 {
        bail!("{failed} of {sent} events were not delivered");
    }
    Ok(())
}
