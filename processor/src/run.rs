//! `txflow run --stage …` and `txflow dev`: each stage wired to a backend. A [`Backend`]
//! gives a stage its log, its store and its way in: Kafka and ScyllaDB ([`Services`]) for
//! `run`, the embedded database for `dev`. `dev` runs every stage of [`StageName::ALL`] in
//! one process through the same [`run_stage`], so that a stage added there joins it unchanged.

use std::future::Future;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use tokio::sync::watch;

use txflow::adapters::embedded::{Embedded, EmbeddedLedgerStore, EmbeddedLog, EmbeddedPublisher};
use txflow::adapters::http::HttpWebhooks;
use txflow::adapters::kafka::{Delivery, GroupMember, KafkaLog, KafkaPublisher};
use txflow::adapters::scylla;
use txflow::codec::Codec;
use txflow::config::Config;
use txflow::domain::RetryPolicy;
use txflow::failures::FailureRoutes;
use txflow::limits::{pacing, KeyedRateLimit};
use txflow::pipeline::breaker::{Breaker, BreakerConfig, BreakerMetrics};
use txflow::pipeline::{self, LoopConfig, StageTelemetry};
use txflow::ports::{LedgerStore, Log, Publisher};
use txflow::routing::Rules;
use txflow::stages::gateway::keys::{hash, ApiKeys};
use txflow::stages::gateway::{self, Gateway, GatewayMetrics, GatewaySettings};
use txflow::stages::ledger::{Ledger, LedgerSettings, LedgerTopics};
use txflow::stages::notifier::{DeliveryMetrics, Endpoint, Notifier, NotifierSettings};
use txflow::stages::router::Router;
use txflow::telemetry::{serve_admin, Admin, Metrics, Readiness};

/// The stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageName {
    /// HTTP → txflow.events: POST /v1/events, GET /v1/events/{id}, GET /v1/accounts/{id}.
    Gateway,
    /// txflow.events → the targets of the routing rules each event matches.
    Router,
    /// txflow.ledger → balances in the store, results on txflow.results.
    Ledger,
    /// txflow.notifications → signed webhooks to the endpoints of [notifier.endpoints].
    Notifier,
}

impl StageName {
    /// Every stage: what `txflow dev` runs.
    pub const ALL: [StageName; 4] = [
        StageName::Gateway,
        StageName::Router,
        StageName::Ledger,
        StageName::Notifier,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Gateway => "gateway",
            StageName::Router => "router",
            StageName::Ledger => "ledger",
            StageName::Notifier => "notifier",
        }
    }
}

/// A stage's place in its consumer group.
pub struct Membership<'a> {
    pub stage: &'static str,
    pub group_id: &'a str,
    pub instance_id: String,
    pub session_timeout_ms: u64,
}

/// Where the stages' log, store and way in come from.
pub trait Backend: Sync {
    type Log: Log + 'static;
    type Store: LedgerStore;
    type Publisher: Publisher + 'static;

    /// A member of its group on `input` and the delayed topics `tiers`.
    fn log(
        &self,
        config: &Config,
        membership: &Membership<'_>,
        input: &str,
        tiers: &[String],
        delivery: Delivery,
    ) -> anyhow::Result<Self::Log>;

    fn store(
        &self,
        config: &Config,
    ) -> impl Future<Output = anyhow::Result<Arc<Self::Store>>> + Send;

    fn publisher(&self, config: &Config) -> anyhow::Result<Self::Publisher>;
}

/// Kafka and ScyllaDB (or Cassandra), as configured.
pub struct Services;

#[cfg(not(feature = "fault-injection"))]
type ServicesStore = scylla::ScyllaLedgerStore;
/// A test build's store fails as `[faults]` says.
#[cfg(feature = "fault-injection")]
type ServicesStore = txflow::adapters::faulty::FaultyStore<scylla::ScyllaLedgerStore>;

impl Backend for Services {
    type Log = KafkaLog;
    type Store = ServicesStore;
    type Publisher = KafkaPublisher;

    fn log(
        &self,
        config: &Config,
        membership: &Membership<'_>,
        input: &str,
        tiers: &[String],
        delivery: Delivery,
    ) -> anyhow::Result<KafkaLog> {
        let transactional_id = format!("{}-{}", membership.group_id, membership.instance_id);
        let member = GroupMember {
            group_id: membership.group_id,
            transactional_id: &transactional_id,
            session_timeout_ms: membership.session_timeout_ms,
        };
        tracing::info!(stage = membership.stage, %input, group = membership.group_id, %transactional_id, ?delivery, "joining the group");
        Ok(KafkaLog::new(
            &config.kafka,
            &member,
            &[input],
            tiers,
            delivery,
        )?)
    }

    async fn store(&self, config: &Config) -> anyhow::Result<Arc<ServicesStore>> {
        let session = scylla::connect(&config.store).await?;
        let store = scylla::ScyllaLedgerStore::new(session, &config.store).await?;
        #[cfg(feature = "fault-injection")]
        let store = txflow::adapters::faulty::FaultyStore::new(store, config.faults.clone());
        Ok(Arc::new(store))
    }

    fn publisher(&self, config: &Config) -> anyhow::Result<KafkaPublisher> {
        let timeout = Duration::from_millis(config.gateway.request_timeout_ms);
        KafkaPublisher::new(&config.kafka, timeout).context("creating the Kafka producer")
    }
}

impl Backend for Embedded {
    type Log = EmbeddedLog;
    type Store = EmbeddedLedgerStore;
    type Publisher = EmbeddedPublisher;

    fn log(
        &self,
        _: &Config,
        membership: &Membership<'_>,
        input: &str,
        tiers: &[String],
        _: Delivery,
    ) -> anyhow::Result<EmbeddedLog> {
        Ok(Embedded::log(self, membership.group_id, &[input], tiers))
    }

    async fn store(&self, _: &Config) -> anyhow::Result<Arc<EmbeddedLedgerStore>> {
        Ok(Arc::new(Embedded::store(self)))
    }

    fn publisher(&self, _: &Config) -> anyhow::Result<EmbeddedPublisher> {
        Ok(Embedded::publisher(self))
    }
}

/// A channel that turns true on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing the open batches");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Serves the admin endpoints for these stages' readiness; returns the bound address.
async fn serve_telemetry(
    config: &Config,
    metrics: &Arc<Metrics>,
    stages: &[StageTelemetry],
    more: axum::Router,
) -> anyhow::Result<std::net::SocketAddr> {
    let admin = Admin {
        metrics: metrics.clone(),
        readiness: stages
            .iter()
            .map(|s| (s.stage, s.readiness.clone()))
            .collect(),
    };
    let listen = &config.admin.listen;
    let bound = serve_admin(listen, admin, more)
        .await
        .with_context(|| format!("serving the admin endpoints on {listen} (admin.listen)"))?;
    tracing::info!(%bound, "admin endpoints: /metrics /healthz /readyz");
    Ok(bound)
}

fn stage_telemetry(stage: StageName, metrics: &Arc<Metrics>) -> StageTelemetry {
    StageTelemetry {
        stage: stage.as_str(),
        metrics: metrics.clone(),
        readiness: Arc::new(Readiness::default()),
    }
}

/// `txflow run --stage STAGE`: one stage on Kafka and ScyllaDB, until SIGTERM.
pub async fn run(config: &Config, stage: StageName, delivery: Delivery) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let metrics = Arc::new(Metrics::new());
    let telemetry = stage_telemetry(stage, &metrics);
    serve_telemetry(
        config,
        &metrics,
        std::slice::from_ref(&telemetry),
        axum::Router::new(),
    )
    .await?;
    let codec = crate::schema_commands::codec(config).await?;
    run_stage(
        stage, &Services, config, codec, delivery, telemetry, shutdown,
    )
    .await
}

/// Runs `stage` on `backend`, reading and writing records with `codec`, until `shutdown`
/// turns true.
pub async fn run_stage<B: Backend>(
    stage: StageName,
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    match stage {
        StageName::Gateway => run_gateway(backend, config, codec, telemetry, shutdown).await,
        StageName::Router => {
            run_router(backend, config, codec, delivery, telemetry, shutdown).await
        }
        StageName::Ledger => {
            run_ledger(backend, config, codec, delivery, telemetry, shutdown).await
        }
        StageName::Notifier => {
            run_notifier(backend, config, codec, delivery, telemetry, shutdown).await
        }
    }?;
    tracing::info!("{} stopped", stage.as_str());
    Ok(())
}

/// A stage's log and where its failed records go.
fn stage_log<B: Backend>(
    backend: &B,
    config: &Config,
    membership: Membership<'_>,
    input: &str,
    retry_delays_ms: &[u64],
    delivery: Delivery,
) -> anyhow::Result<(B::Log, FailureRoutes)> {
    let failures = FailureRoutes {
        input: input.to_owned(),
        stage: membership.stage,
        group: membership.group_id.to_owned(),
        policy: RetryPolicy::from_millis(retry_delays_ms),
    };
    let log = backend.log(
        config,
        &membership,
        input,
        &failures.tier_topics(),
        delivery,
    )?;
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

async fn run_router<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let router_config = &config.router;
    let rules = match &router_config.rules_file {
        Some(path) => Rules::load(path)?,
        None => Rules::parse_yaml("rules: []")?,
    };
    let input = config.topics.events.clone();
    let default_target = router_config
        .default_target
        .clone()
        .unwrap_or_else(|| config.topics.ledger.clone());
    let (log, failures) = stage_log(
        backend,
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
        codec,
        default_target,
        failures,
        telemetry.metrics.routed.clone(),
    ));
    let reloads = router_config.rules_file.clone().map(|path| {
        tokio::spawn(reload_rules(
            path,
            Duration::from_millis(router_config.reload_check_ms),
            router.clone(),
            telemetry.metrics.clone(),
        ))
    });
    let loop_config = LoopConfig {
        max_records: router_config.batch_max_records,
        max_wait: Duration::from_millis(router_config.batch_max_wait_ms),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(10),
    };
    let outcome = pipeline::run(log, router.as_ref(), &loop_config, &telemetry, shutdown).await;
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    Ok(outcome?)
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

async fn run_ledger<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let store = backend.store(config).await?;
    let ledger_config = &config.ledger;
    let input = config.topics.ledger.clone();
    let (log, failures) = stage_log(
        backend,
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
        codec,
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
    Ok(())
}

async fn run_notifier<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let notifier_config = &config.notifier;
    if notifier_config.endpoints.is_empty() {
        tracing::warn!(
            "no [notifier.endpoints]: every notification will be dead-lettered as no_endpoint"
        );
    }
    let input = config.topics.notifications.clone();
    let (log, failures) = stage_log(
        backend,
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
        codec,
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
    Ok(())
}

async fn run_gateway<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let gateway_config = &config.gateway;
    let keys = ApiKeys::new(gateway_config.key_hashes()?);
    if keys.is_empty() {
        bail!("the gateway has no API keys: make one with `txflow api-key new NAME` and add its line to [gateway.api_keys] (or gateway.api_keys_file)");
    }
    let per_second = NonZeroU32::new(gateway_config.requests_per_second)
        .context("gateway.requests_per_second is 0")?;
    let burst = NonZeroU32::new(gateway_config.burst).context("gateway.burst is 0")?;
    let gateway = Arc::new(Gateway {
        publisher: backend.publisher(config)?,
        store: backend.store(config).await?,
        codec,
        keys,
        limit: KeyedRateLimit::new(per_second, burst),
        settings: GatewaySettings {
            max_body_bytes: gateway_config.max_body_bytes,
            max_batch_events: gateway_config.max_batch_events,
            request_timeout: Duration::from_millis(gateway_config.request_timeout_ms),
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
    telemetry.readiness.set_address(bound);
    telemetry.readiness.set_ready();
    let mut stop = shutdown.clone();
    let served = axum::serve(listener, gateway::routes(gateway))
        .with_graceful_shutdown(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .context("serving the gateway");
    limit_sweeper.abort();
    served
}

/// The dev API key of a data directory: made on the first start, kept in the directory so
/// that clients keep working across restarts.
fn dev_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(crate::dev_access::KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => {
            let (key, _) = txflow::stages::gateway::keys::new_key();
            std::fs::write(&path, format!("{key}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
    }
}

/// `txflow dev`: every stage in this process on the embedded database in `data_dir`, until
/// SIGTERM or Ctrl-C.
pub async fn dev(config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    let embedded = Embedded::open(data_dir)?;
    let key = dev_key(data_dir)?;
    let mut config = config.clone();
    config.router.batch_max_records = config.dev.batch_max_records;
    config.ledger.batch_max_records = config.dev.batch_max_records;
    config.notifier.batch_max_records = config.dev.batch_max_records;
    let hashed: String = hash(&key).iter().map(|b| format!("{b:02x}")).collect();
    config.gateway.api_keys.insert("dev".to_owned(), hashed);
    let shutdown = shutdown_signal()?;
    let metrics = Arc::new(Metrics::new());
    let stages: Vec<(StageName, StageTelemetry)> = StageName::ALL
        .into_iter()
        .map(|stage| (stage, stage_telemetry(stage, &metrics)))
        .collect();
    let telemetries: Vec<StageTelemetry> = stages.iter().map(|(_, t)| t.clone()).collect();
    // One codec for every stage: the schemas registered once, each new id learnt once.
    let codec = crate::schema_commands::codec(&config).await?;
    let admin = serve_telemetry(
        &config,
        &metrics,
        &telemetries,
        crate::dev_access::routes(embedded.clone(), codec.clone(), &key),
    )
    .await?;
    let address_file = data_dir.join(crate::dev_access::ADDRESS_FILE);
    std::fs::write(&address_file, local_address(admin).to_string())
        .with_context(|| format!("writing {}", address_file.display()))?;
    let (stop, stopped) = watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    for (stage, telemetry) in stages {
        let (embedded, config, stopped) = (embedded.clone(), config.clone(), stopped.clone());
        let codec = codec.clone();
        running.spawn(async move {
            let outcome = run_stage(
                stage,
                &embedded,
                &config,
                codec,
                Delivery::ExactlyOnce,
                telemetry,
                stopped,
            )
            .await;
            (stage, outcome)
        });
    }
    let gateway = stages_readiness(&telemetries, StageName::Gateway);
    tokio::spawn({
        let (config, data_dir) = (config.clone(), data_dir.to_owned());
        async move {
            // The banner once the gateway listens, with the address it got.
            for _ in 0..200 {
                if let Some(bound) = gateway.as_ref().and_then(|r| r.address()) {
                    print_banner(&config, &data_dir, &key, bound, admin);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut first_failure = None;
    let mut signal = shutdown;
    loop {
        tokio::select! {
            _ = signal.changed(), if !*stop.borrow() => {
                let _ = stop.send(true);
            }
            finished = running.join_next() => match finished {
                None => break,
                Some(Ok((stage, outcome))) => {
                    if let Err(e) = outcome {
                        tracing::error!("{} failed: {e:#}", stage.as_str());
                        first_failure.get_or_insert(e.context(format!("the {} stage", stage.as_str())));
                    }
                    // One stage ending ends them all: dev is one pipeline.
                    let _ = stop.send(true);
                }
                Some(Err(e)) => {
                    first_failure.get_or_insert(anyhow::anyhow!("a stage panicked: {e}"));
                    let _ = stop.send(true);
                }
            }
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The readiness of `stage` among `telemetries`.
fn stages_readiness(telemetries: &[StageTelemetry], stage: StageName) -> Option<Arc<Readiness>> {
    telemetries
        .iter()
        .find(|t| t.stage == stage.as_str())
        .map(|t| t.readiness.clone())
}

/// Where a client on this machine reaches a server bound to `bound`: the loopback address
/// when it listens on every address.
fn local_address(bound: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, bound.port())
}

fn print_banner(
    config: &Config,
    data_dir: &Path,
    key: &str,
    gateway: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) {
    let (gateway, admin) = (local_address(gateway), local_address(admin));
    let stages: Vec<&str> = StageName::ALL.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "\ntxflow dev: {} in one process, data in {} (durable; restart to continue)\n\
         \n  gateway   http://{gateway}   Authorization: Bearer {key}\n\
         \x20 admin     http://{admin}/metrics  /healthz  /readyz\n\
         \x20 cli       txflow accounts export --dev-dir {}   (accounts, dlq, produce)\n\
         \x20 topics    {} → {} → {}\n\
         \n  curl -X POST http://{gateway}/v1/events -H 'Authorization: Bearer {key}' \\\n\
         \x20   -H 'Content-Type: application/json' -d '{{\"event_id\": \"e-1\", \"event_type\": \"DEPOSIT\",\n\
         \x20   \"account_id\": \"acct-1\", \"amount_minor\": 2500, \"currency\": \"EUR\",\n\
         \x20   \"occurred_at\": 1764244800000, \"source\": \"curl\"}}'\n\
         \x20 curl http://{gateway}/v1/accounts/acct-1 -H 'Authorization: Bearer {key}'\n",
        stages.join(", "),
        data_dir.display(),
        data_dir.display(),
        config.topics.events,
        config.topics.ledger,
        config.topics.results,
    );
}
