//! The `txflow` command line: the tree of commands, and which module runs each.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

use txflow::adapters::embedded::remote::DevClient;
use txflow::adapters::kafka::Delivery;
use txflow::app::Config;
use txflow::app::{Access, Services, StageName};

use crate::commands::accounts::{self, AccountsCommand};
use crate::commands::api_key::{self, ApiKeyCommand};
use crate::commands::audit::{self, AuditArgs};
use crate::commands::dlq::{self, DlqCommand};
use crate::commands::migrate;
use crate::commands::print_line;
use crate::commands::probe;
use crate::commands::produce::{self, ProduceArgs};
use crate::commands::replay::{self, ReplayArgs};
use crate::commands::rules::{self, RulesCommand};
use crate::commands::schemas::{self, SchemasCommand};
use crate::commands::topics::{self, TopicsCommand};

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
    /// the store (for accounts, audit, dlq, produce and replay).
    #[arg(long, global = true, env = "TXFLOW_DEV_DIR", value_name = "DIR")]
    dev_dir: Option<PathBuf>,

    /// How logs are written to stderr: `text` for people, `json` (one object per line, with
    /// the span fields) for a log collector. Levels: TXFLOW_LOG (e.g. `info,txflow=debug`).
    #[arg(
        long,
        global = true,
        env = "TXFLOW_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the store's keyspace and tables (idempotent); on a keyspace of an earlier
    /// version, claim the event ids of its results first.
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
    /// Write generated Avro transaction events to Kafka (or to a running txflow dev).
    Produce(ProduceArgs),
    /// Inspect and redrive dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Rebuild every account from the results topic and compare it with the store.
    ///
    /// Reads the ledger and results topics (committed records) and the store's accounts.
    /// Checks that every result follows from an event sent to the ledger, that each
    /// account's results form a gapless chain of versions whose balances add up, that per
    /// currency the accounts plus the transfers in flight hold what was deposited minus
    /// what was withdrawn, and that the store holds, for every account, the balance,
    /// currency and version its results rebuild. Prints each difference with the account
    /// and the first result the store disagrees with; exits 1 when there is any. The
    /// events must still be on the ledger topic (its retention bounds what can be audited),
    /// or, with --archive, in the archive.
    Audit(AuditArgs),
    /// Publish the archived events of a time range again (docs/ARCHIVE.md).
    ///
    /// Reads the archive of [archiver.storage] (with --dev-dir, that txflow dev's archive),
    /// takes the events of txflow.events (or --archived-topic) stamped within --from..--to
    /// that --where matches, and publishes them, key, value and headers as archived, to
    /// --to-topic. The ledger applies an event once however often it comes: replaying events
    /// it applied changes no balance. Replaying into a fresh ledger rebuilds the balances as
    /// far as no outcome depended on how different accounts' events interleaved (replay the
    /// range in which accounts were opened first). Prints each file as it is done; a run
    /// stopped halfway goes on with --run-id. Ends with one JSON line of counts.
    Replay(ReplayArgs),
    /// Check routing rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Register txflow's schemas in the schema registry, list their versions.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Make API keys for the gateway.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask the txflow process on this host whether it is live (/healthz) or ready
    /// (--ready, /readyz): exit 0 when it answers 200, else 1 with its answer. For a
    /// container's health check, where the image has no shell or HTTP client.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// Ask /readyz (batches going through) instead of /healthz (the process answers).
    #[arg(long)]
    ready: bool,
    /// The admin endpoint (default: 127.0.0.1 at the port of admin.listen).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check FILE (default: --config, else the defaults) with the TXFLOW_* overrides of the
    /// environment as a stage checks them at start: every key known and of its type, every
    /// section valid, secret files readable, the routing rules and the gateway's certificate
    /// loaded. Contacts nothing. Exits 1, saying what is wrong and where, when a stage would
    /// not start.
    Check {
        /// The configuration file (TOML) to check.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
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
    stage: StageName,
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

impl Cli {
    /// The service this process's spans are exported as: `txflow-<stage>`, `txflow-dev`, or
    /// `txflow-<command>`.
    pub fn service_name(&self) -> String {
        match &self.command {
            Command::Run(RunArgs { stage, .. }) => format!("txflow-{}", stage.as_str()),
            Command::Dev(_) => "txflow-dev".to_owned(),
            Command::Dlq(_) => "txflow-dlq".to_owned(),
            Command::Produce(_) => "txflow-produce".to_owned(),
            Command::Replay(_) => "txflow-replay".to_owned(),
            _ => "txflow".to_owned(),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        if let Command::Config(ConfigCommand::Check { file }) = &self.command {
            let file = file.as_deref().or(self.config.as_deref());
            for line in txflow::app::check(file, std::env::vars().collect())? {
                println!("{line}");
            }
            return Ok(());
        }
        let config = Config::load(self.config.as_deref(), std::env::vars())?;
        let dev_dir = self.dev_dir.as_deref();
        match self.command {
            Command::Accounts(command) => Operation::Accounts(command).run(dev_dir, &config).await,
            Command::Produce(args) => Operation::Produce(args).run(dev_dir, &config).await,
            Command::Dlq(command) => Operation::Dlq(command).run(dev_dir, &config).await,
            Command::Audit(args) => Operation::Audit(args).run(dev_dir, &config).await,
            Command::Replay(args) => Operation::Replay(args).run(dev_dir, &config).await,
            _ if dev_dir.is_some() => {
                bail!("--dev-dir works with accounts, audit, dlq, produce and replay")
            }
            Command::Migrate => migrate::migrate(&config).await,
            Command::Topics(command) => topics::topics(&config, command).await,
            Command::Run(RunArgs { stage, delivery }) => {
                Ok(txflow::app::run(&config, stage, delivery.into()).await?)
            }
            Command::Dev(DevArgs { data_dir }) => {
                let data_dir = data_dir.unwrap_or_else(|| config.dev.data_dir.clone());
                Ok(txflow::app::dev(&config, &data_dir).await?)
            }
            Command::ApiKey(command) => api_key::api_key(command),
            Command::Schemas(command) => schemas::schemas(&config, command).await,
            Command::Rules(command) => rules::rules(&config, command),
            Command::Config(_) => unreachable!("checked before the configuration is loaded"),
            Command::Probe(ProbeArgs { ready, admin }) => {
                let admin = match admin {
                    Some(admin) => admin,
                    None => probe::local_admin(&config.admin.listen)?,
                };
                let path = if ready { "/readyz" } else { "/healthz" };
                print_line(&probe::probe(&admin, path).await?)
            }
        }
    }
}

/// The commands an operator runs against a deployment, on Kafka and the store or on a
/// running `txflow dev` alike.
enum Operation {
    Accounts(AccountsCommand),
    Produce(ProduceArgs),
    Dlq(DlqCommand),
    Audit(AuditArgs),
    Replay(ReplayArgs),
}

impl Operation {
    /// Runs on Kafka and the store, or on the txflow dev running on `dev_dir`.
    async fn run(self, dev_dir: Option<&Path>, config: &Config) -> anyhow::Result<()> {
        match dev_dir {
            Some(dir) => self.on(&DevClient::connect(dir)?, config, dev_dir).await,
            None => self.on(&Services, config, dev_dir).await,
        }
    }

    async fn on<A: Access>(
        self,
        access: &A,
        config: &Config,
        dev_dir: Option<&Path>,
    ) -> anyhow::Result<()> {
        match self {
            Operation::Accounts(command) => accounts::accounts(access, config, command).await,
            Operation::Produce(args) => produce::produce(access, config, args).await,
            Operation::Dlq(command) => dlq::dlq(access, config, command).await,
            Operation::Audit(args) => audit::audit(access, config, dev_dir, args).await,
            Operation::Replay(args) => replay::replay(access, config, dev_dir, args).await,
        }
    }
}
