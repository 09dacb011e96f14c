//! The `txflow` command line.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use rdkafka::producer::{BaseRecord, Producer};
use tokio::sync::watch;

use txflow::adapters::http::HttpWebhooks;
use txflow::adapters::kafka::{self, Delivery, GroupMember, KafkaLog, TopicReport};
use txflow::adapters::scylla::{self, ScyllaLedgerStore};
use txflow::codec::{Codec, Record};
use txflow::config::Config;
use txflow::domain::{RetryPolicy, TransactionEvent};
use txflow::limits::pacing;
use txflow::limits::KeyedRateLimit;
use txflow::loadgen::{Sent, Workload, WorkloadConfig};
use txflow::pipeline::breaker::{Breaker, BreakerConfig, BreakerMetrics};
use txflow::pipeline::failures::FailureRoutes;
use txflow::pipeline::{self, LoopConfig, StageTelemetry};
use txflow::ports::LedgerStore;
use txflow::routing::Rules;
use txflow::stages::gateway::keys::ApiKeys;
use txflow::stages::gateway::{account_json, Gateway, GatewayMetrics, GatewaySettings};
use txflow::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use txflow::stages::notifier::{DeliveryMetrics, Endpoint, Notifier, NotifierSettings};
use txflow::stages::router::Router;
use txflow::telemetry::{serve_admin, Admin, Metrics, Readiness};

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
    /// Run a pipeline stage until SIGTERM or Ctrl-C.
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StageName {
    /// HTTP → txflow.events: POST /v1/events, GET /v1/events/{id}, GET /v1/accounts/{id}.
    Gateway,
    /// txflow.ledger → balances in the store, results on txflow.results.
    Ledger,
    /// txflow.events → the targets of the routing rules each event matches.
    Router,
    /// txflow.notifications → signed webhooks to the endpoints of [notifier.endpoints].
    Notifier,
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
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref(), std::env::vars())?;
        match self.command {
            Command::Migrate => migrate(&config).await,
            Command::Topics(TopicsCommand::Apply) => apply_topics(&config).await,
            Command::Run(RunArgs {
                stage: StageName::Ledger,
                delivery,
            }) => run_ledger(&config, delivery.into()).await,
            Command::Run(RunArgs {
                stage: StageName::Router,
                delivery,
            }) => run_router(&config, delivery.into()).await,
            Command::Run(RunArgs {
                stage: StageName::Notifier,
                delivery,
            }) => run_notifier(&config, delivery.into()).await,
            Command::Run(RunArgs {
                stage: StageName::Gateway,
                ..
            }) => run_gateway(&config).await,
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
            Command::Accounts(command) => accounts(&config, command).await,
            Command::Produce(args) => produce(&config, args).await,
            Command::Dlq(command) => crate::dlq_commands::dlq(&config, command).await,
            Command::Rules(RulesCommand::Test { rules, event }) => {
                test_rules(&config, &rules, &event)
            }
            Command::Bench(args) => crate::bench::bench(&config, args).await,
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let session = scylla::connect(&config.store).await?;
    scylla::migrate(&session, &config.store).await?;
    println!(
        "keyspace {} and table {}.{} are in place",
        config.store.keyspace,
        config.store.keyspace,
        scylla::LEDGER_TABLE
    );
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

async fn store(config: &Config) -> anyhow::Result<ScyllaLedgerStore> {
    let session = scylla::connect(&config.store).await?;
    Ok(ScyllaLedgerStore::new(session, &config.store).await?)
}

/// A channel that turns true on SIGTERM or Ctrl-C.
fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing the open batch");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn run_ledger(config: &Config, delivery: Delivery) -> anyhow::Result<()> {
    let store = store(config).await?;
    #[cfg(feature = "fault-injection")]
    let store = txflow::adapters::faulty::FaultyStore::new(store, config.faults.clone());
    run_ledger_on(config, delivery, Arc::new(store)).await
}

/// A stage's metrics and readiness, served on the admin address.
async fn stage_telemetry(config: &Config, stage: &'static str) -> anyhow::Result<StageTelemetry> {
    let telemetry = StageTelemetry {
        stage,
        metrics: Arc::new(Metrics::new()),
        readiness: Arc::new(Readiness::default()),
    };
    let admin = Admin {
        metrics: telemetry.metrics.clone(),
        readiness: telemetry.readiness.clone(),
    };
    let listen = &config.admin.listen;
    let bound = serve_admin(listen, admin)
        .await
        .with_context(|| format!("serving the admin endpoints on {listen} (admin.listen)"))?;
    tracing::info!(%bound, "admin endpoints: /metrics /healthz /readyz");
    Ok(telemetry)
}

/// A stage's place in its consumer group.
struct Membership<'a> {
    stage: &'static str,
    group_id: &'a str,
    instance_id: String,
    session_timeout_ms: u64,
}

/// A stage's log (a member of its group on `input` and its retry tiers, one per delay) and
/// where its failed records go.
fn stage_log(
    config: &Config,
    membership: Membership<'_>,
    input: &str,
    retry_delays_ms: &[u64],
    delivery: Delivery,
) -> anyhow::Result<(KafkaLog, FailureRoutes)> {
    let transactional_id = format!("{}-{}", membership.group_id, membership.instance_id);
    let member = GroupMember {
        group_id: membership.group_id,
        transactional_id: &transactional_id,
        session_timeout_ms: membership.session_timeout_ms,
    };
    let failures = FailureRoutes {
        input: input.to_owned(),
        stage: membership.stage,
        group: membership.group_id.to_owned(),
        policy: RetryPolicy::from_millis(retry_delays_ms),
    };
    let log = KafkaLog::new(
        &config.kafka,
        &member,
        &[input],
        &failures.tier_topics(),
        delivery,
    )?;
    tracing::info!(stage = membership.stage, %input, group = membership.group_id, %transactional_id, ?delivery, "joining the group");
    Ok((log, failures))
}

/// A circuit breaker reporting in `telemetry`'s metrics.
fn breaker(
    telemetry: &StageTelemetry,
    dependency: String,
    failure_threshold: u32,
    open_ms: u64,
) -> Breaker {
    Breaker::new(
        dependency,
        BreakerConfig {
            failure_threshold,
            open_for: Duration::from_millis(open_ms),
        },
        Some(BreakerMetrics {
            stage: telemetry.stage,
            state: telemetry.metrics.circuit_state.clone(),
            transitions: telemetry.metrics.circuit_transitions.clone(),
        }),
    )
}

async fn run_router(config: &Config, delivery: Delivery) -> anyhow::Result<()> {
    let router_config = &config.router;
    let rules = match &router_config.rules_file {
        Some(path) => Rules::load(path)?,
        None => Rules::parse_yaml("rules: []")?,
    };
    let shutdown = shutdown_signal()?;
    let telemetry = stage_telemetry(config, "router").await?;
    let input = config.topics.events.clone();
    let default_target = router_config
        .default_target
        .clone()
        .unwrap_or_else(|| config.topics.ledger.clone());
    let (log, failures) = stage_log(
        config,
        Membership {
            stage: "router",
            group_id: &router_config.group_id,
            instance_id: router_config.instance_id(),
            session_timeout_ms: router_config.session_timeout_ms,
        },
        &input,
        &[],
        delivery,
    )?;
    tracing::info!(rules = rules.rules().len(), %default_target, "router running");
    let router = Arc::new(Router::new(
        rules,
        Arc::new(Codec::builtin()),
        default_target,
        failures,
        telemetry.metrics.routed.clone(),
    ));
    if let Some(path) = router_config.rules_file.clone() {
        tokio::spawn(reload_rules(
            path,
            Duration::from_millis(router_config.reload_check_ms),
            router.clone(),
            telemetry.metrics.clone(),
        ));
    }
    let loop_config = LoopConfig {
        max_records: router_config.batch_max_records,
        max_wait: Duration::from_millis(router_config.batch_max_wait_ms),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(10),
    };
    pipeline::run(log, router.as_ref(), &loop_config, &telemetry, shutdown).await?;
    tracing::info!("router stopped");
    Ok(())
}

async fn run_notifier(config: &Config, delivery: Delivery) -> anyhow::Result<()> {
    let notifier_config = &config.notifier;
    if notifier_config.endpoints.is_empty() {
        tracing::warn!(
            "no [notifier.endpoints]: every notification will be dead-lettered as no_endpoint"
        );
    }
    let shutdown = shutdown_signal()?;
    let telemetry = stage_telemetry(config, "notifier").await?;
    let input = config.topics.notifications.clone();
    let (log, failures) = stage_log(
        config,
        Membership {
            stage: "notifier",
            group_id: &notifier_config.group_id,
            instance_id: notifier_config.instance_id(),
            session_timeout_ms: notifier_config.session_timeout_ms,
        },
        &input,
        &notifier_config.retry_delays_ms,
        delivery,
    )?;
    let mut endpoints = Vec::with_capacity(notifier_config.endpoints.len());
    for (name, endpoint) in &notifier_config.endpoints {
        endpoints.push(Endpoint {
            name: name.clone(),
            url: endpoint.url.clone(),
            secrets: endpoint.secrets(name)?,
            pace: NonZeroU32::new(endpoint.max_per_second).map(pacing),
            breaker: breaker(
                &telemetry,
                format!("webhook:{name}"),
                notifier_config.breaker_failure_threshold,
                notifier_config.breaker_open_ms,
            ),
        });
    }
    let timeout = Duration::from_millis(notifier_config.timeout_ms);
    let notifier = Notifier::new(
        HttpWebhooks::new(timeout).context("building the HTTP client")?,
        endpoints,
        Arc::new(Codec::builtin()),
        failures,
        NotifierSettings {
            timeout,
            max_in_flight: notifier_config.max_in_flight,
        },
        Some(DeliveryMetrics {
            deliveries: telemetry.metrics.webhook_deliveries.clone(),
            seconds: telemetry.metrics.webhook_seconds.clone(),
        }),
    );
    let loop_config = LoopConfig {
        max_records: notifier_config.batch_max_records,
        max_wait: Duration::from_millis(notifier_config.batch_max_wait_ms),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(10),
    };
    let names: Vec<&String> = notifier_config.endpoints.keys().collect();
    tracing::info!(endpoints = ?names, "notifier running");
    pipeline::run(log, &notifier, &loop_config, &telemetry, shutdown).await?;
    tracing::info!("notifier stopped");
    Ok(())
}

async fn run_gateway(config: &Config) -> anyhow::Result<()> {
    let gateway_config = &config.gateway;
    let keys = ApiKeys::new(gateway_config.key_hashes()?);
    if keys.is_empty() {
        bail!("the gateway has no API keys: make one with `txflow api-key new NAME` and add its line to [gateway.api_keys] (or gateway.api_keys_file)");
    }
    let shutdown = shutdown_signal()?;
    let telemetry = stage_telemetry(config, "gateway").await?;
    let timeout = Duration::from_millis(gateway_config.request_timeout_ms);
    let store = Arc::new(store(config).await?);
    let publisher = kafka::KafkaPublisher::new(&config.kafka, timeout)
        .context("creating the Kafka producer")?;
    let per_second = NonZeroU32::new(gateway_config.requests_per_second)
        .context("gateway.requests_per_second is 0")?;
    let burst = NonZeroU32::new(gateway_config.burst).context("gateway.burst is 0")?;
    let gateway = Arc::new(Gateway {
        publisher,
        store,
        codec: Arc::new(Codec::builtin()),
        keys,
        limit: KeyedRateLimit::new(per_second, burst),
        settings: GatewaySettings {
            max_body_bytes: gateway_config.max_body_bytes,
            max_batch_events: gateway_config.max_batch_events,
            request_timeout: timeout,
        },
        topic: config.topics.events.clone(),
        metrics: Some(GatewayMetrics {
            requests: telemetry.metrics.gateway_requests.clone(),
            seconds: telemetry.metrics.gateway_seconds.clone(),
        }),
    });
    let limit_sweeper = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                gateway.limit.forget_idle();
            }
        })
    };
    let listen = &gateway_config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (gateway.listen)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, topic = %config.topics.events, "gateway listening");
    telemetry.readiness.set_ready();
    let mut stop = shutdown.clone();
    axum::serve(listener, txflow::stages::gateway::routes(gateway))
        .with_graceful_shutdown(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .context("serving the gateway")?;
    limit_sweeper.abort();
    tracing::info!("gateway stopped");
    Ok(())
}

/// Loads the rules file again on SIGHUP or when it changes; a file that does not load keeps
/// the rules in force, and says why in the log and in `txflow_rules_reloads_total`.
async fn reload_rules(path: PathBuf, every: Duration, router: Arc<Router>, metrics: Arc<Metrics>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!("SIGHUP will not reload the rules: {e}");
            None
        }
    };
    loop {
        let asked = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = modified(&path);
        if !asked && now == seen {
            continue;
        }
        seen = now;
        match Rules::load(&path) {
            Ok(rules) => {
                tracing::info!(rules = rules.rules().len(), path = %path.display(), "rules reloaded");
                router.replace_rules(rules);
                metrics.rules_reloads.with_label_values(&["applied"]).inc();
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "the rules file was not loaded, the rules in force stay: {e}");
                metrics.rules_reloads.with_label_values(&["refused"]).inc();
            }
        }
    }
}

async fn run_ledger_on<S: LedgerStore>(
    config: &Config,
    delivery: Delivery,
    store: Arc<S>,
) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let telemetry = stage_telemetry(config, "ledger").await?;
    let ledger_config = &config.ledger;
    let input = config.topics.ledger.clone();
    let (log, failures) = stage_log(
        config,
        Membership {
            stage: "ledger",
            group_id: &ledger_config.group_id,
            instance_id: ledger_config.instance_id(),
            session_timeout_ms: ledger_config.session_timeout_ms,
        },
        &input,
        &ledger_config.retry_delays_ms,
        delivery,
    )?;
    let breaker = Arc::new(breaker(
        &telemetry,
        "store".to_owned(),
        ledger_config.breaker_failure_threshold,
        ledger_config.breaker_open_ms,
    ));
    let write_limit = NonZeroU32::new(ledger_config.max_store_writes_per_second).map(pacing);
    let ledger = Ledger::new(
        store,
        Arc::new(Codec::builtin()),
        LedgerTopics {
            input: input.clone(),
            results: config.topics.results.clone(),
        },
        failures,
        LedgerSettings {
            concurrency: ledger_config.store_concurrency,
            max_attempts: ledger_config.max_settle_attempts,
            cache_capacity: ledger_config.account_cache,
        },
        breaker,
        write_limit,
    );
    let loop_config = LoopConfig {
        max_records: ledger_config.batch_max_records,
        max_wait: Duration::from_millis(ledger_config.batch_max_wait_ms),
        backoff_initial: Duration::from_millis(ledger_config.backoff_initial_ms),
        backoff_max: Duration::from_millis(ledger_config.backoff_max_ms),
    };
    tracing::info!("ledger running");
    pipeline::run(log, &ledger, &loop_config, &telemetry, shutdown).await?;
    tracing::info!("ledger stopped");
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
    let store = store(config).await?;
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

/// Writes one line to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn print_line(line: &impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

async fn produce(config: &Config, args: ProduceArgs) -> anyhow::Result<()> {
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
    let codec = Codec::builtin();
    let producer = kafka::idempotent_producer(&config.kafka)?;
    let mut workload = Workload::new(WorkloadConfig {
        accounts: args.accounts,
        zipf_exponent: args.zipf,
        seed: args.seed,
        id_prefix: args
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
        currency: args.currency.clone(),
        duplicate_share: args.duplicates,
        conflict_share: args.conflicts,
        ..WorkloadConfig::default()
    });
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
        let record = BaseRecord::to(&topic)
            .key(event.account_id.as_bytes())
            .payload(value.as_slice());
        kafka::send_when_room(&producer, record)
            .await
            .with_context(|| format!("producing to {topic}"))?;
    }
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(60)))
        .context("waiting for the broker to acknowledge every event")?;
    let elapsed = started.elapsed().as_secs_f64();
    let sent = fresh + duplicates + conflicts;
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "topic": topic,
            "sent": sent,
            "fresh": fresh,
            "duplicates": duplicates,
            "conflicts": conflicts,
            "delivered": deliveries.delivered.load(Ordering::Relaxed),
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
