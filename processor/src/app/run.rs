//! `txflow run --stage …`: each stage wired to a [`Backend`]. `txflow dev` runs every stage of
//! [`StageName::ALL`] in one process through the same [`run_stage`], so that a stage added
//! there joins it unchanged.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::backend::{Backend, Services};
use super::AppError;
use super::Config;
use crate::adapters::http::HttpWebhooks;
use crate::adapters::kafka::Delivery;
use crate::adapters::measured::{MeasuredStore, StoreMetrics};
use crate::adapters::objects::ObjectStorage;
use crate::codec::Codec;
use crate::domain::{RetryClass, RetryPolicy};
use crate::failures::FailureRoutes;
use crate::pipeline::breaker::Breaker;
use crate::pipeline::{self, Membership, StageTelemetry};
use crate::ports::{DelayedTopics, Objects};
use crate::routing::Rules;
use crate::stages::archiver::{self, ArchivedTopics, Archiver};
use crate::stages::gateway::keys::ApiKeys;
use crate::stages::gateway::tls::{self, ReloadingCertificate};
use crate::stages::gateway::{self, Gateway, GatewayConfig, GatewayMetrics};
use crate::stages::ledger::{Ledger, LedgerTopics};
use crate::stages::notifier::{DeliveryMetrics, Endpoint, Notifier};
use crate::stages::router::Router;
use crate::telemetry::{serve_admin, Admin, Health, Metrics, Readiness};

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
    /// txflow.events, txflow.ledger and txflow.results → archive files in [archiver.storage].
    Archiver,
}

impl StageName {
    /// Every stage: what `txflow dev` runs.
    pub const ALL: [StageName; 5] = [
        StageName::Gateway,
        StageName::Router,
        StageName::Ledger,
        StageName::Notifier,
        StageName::Archiver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Gateway => "gateway",
            StageName::Router => "router",
            StageName::Ledger => "ledger",
            StageName::Notifier => "notifier",
            StageName::Archiver => "archiver",
        }
    }
}

/// Serves the admin endpoints for this process's health and these stages' readiness;
/// returns the bound address.
pub(super) async fn serve_telemetry(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: Arc<Health>,
    stages: &[StageTelemetry],
    more: axum::Router,
) -> Result<std::net::SocketAddr, AppError> {
    let admin = Admin {
        metrics: metrics.clone(),
        health,
        readiness: stages
            .iter()
            .map(|s| (s.stage, s.readiness.clone()))
            .collect(),
    };
    let listen = &config.admin.listen;
    let bound = serve_admin(listen, admin, more)
        .await
        .map_err(AppError::io(format!(
            "serving the admin endpoints on {listen} (admin.listen)"
        )))?;
    tracing::info!(%bound, "admin endpoints: /metrics /healthz /readyz");
    Ok(bound)
}

pub(super) fn stage_telemetry(stage: StageName, metrics: &Arc<Metrics>) -> StageTelemetry {
    StageTelemetry {
        stage: stage.as_str(),
        metrics: metrics.clone(),
        readiness: Arc::new(Readiness::reported(metrics, stage.as_str())),
    }
}

/// `txflow run --stage STAGE`: one stage on Kafka and ScyllaDB, until SIGTERM.
pub async fn run(config: &Config, stage: StageName, delivery: Delivery) -> Result<(), AppError> {
    let shutdown = super::shutdown::on_signal()?;
    let metrics = Arc::new(Metrics::new());
    let telemetry = stage_telemetry(stage, &metrics);
    // Nothing of a stage on Kafka and the store needs a restart to heal: always healthy.
    serve_telemetry(
        config,
        &metrics,
        Arc::default(),
        std::slice::from_ref(&telemetry),
        axum::Router::new(),
    )
    .await?;
    let codec = super::codec::codec(config).await?;
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
) -> Result<(), AppError> {
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
        StageName::Archiver => {
            run_archiver(backend, config, codec, delivery, telemetry, shutdown).await
        }
    }?;
    tracing::info!("{} stopped", stage.as_str());
    Ok(())
}

/// A stage's retry tiers.
struct Tiers<'a> {
    /// Each tier's longest pause.
    delays_ms: &'a [u64],
    /// How long a retry may be held back beyond its tier's pause (behind an open breaker).
    longest_hold: Duration,
}

impl Tiers<'_> {
    const NONE: Tiers<'static> = Tiers {
        delays_ms: &[],
        longest_hold: Duration::ZERO,
    };
}

/// A stage's log and where its failed records go.
fn stage_log<B: Backend>(
    backend: &B,
    config: &Config,
    membership: &Membership,
    input: &str,
    tiers: Tiers<'_>,
    (delivery, telemetry): (Delivery, &StageTelemetry),
) -> Result<(B::Log, FailureRoutes), AppError> {
    let failures = FailureRoutes {
        input: input.to_owned(),
        stage: membership.stage,
        group: membership.group_id.clone(),
        policy: RetryPolicy::from_millis(tiers.delays_ms),
    };
    let delayed = failures
        .delayed_topics(tiers.longest_hold)
        .counted(telemetry.metrics.retry_due_out_of_bounds.clone());
    for tier in 1..=tiers.delays_ms.len() {
        telemetry
            .metrics
            .retries
            .with_label_values(&[membership.stage, &tier.to_string()]);
    }
    let log = backend.log(config, membership, &[input], &delayed, delivery)?;
    Ok((log, failures))
}

async fn run_router<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let router_config = &config.router;
    let rules = starting_rules(config)?;
    let input = config.topics.events.clone();
    let default_target = router_config
        .default_target
        .clone()
        .unwrap_or_else(|| config.topics.ledger.clone());
    let (log, failures) = stage_log(
        backend,
        config,
        &router_config.group.membership(),
        &input,
        Tiers::NONE,
        (delivery, &telemetry),
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
    let loop_config = router_config.group.loop_config();
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
) -> Result<(), AppError> {
    let store = MeasuredStore::new(
        backend.store(config).await?,
        StoreMetrics {
            stage: telemetry.stage,
            seconds: telemetry.metrics.store_seconds.clone(),
            conditional_writes: telemetry.metrics.store_conditional_writes.clone(),
        },
    );
    let ledger_config = &config.ledger;
    let input = config.topics.ledger.clone();
    let (log, failures) = stage_log(
        backend,
        config,
        &ledger_config.group.membership(),
        &input,
        Tiers {
            delays_ms: &ledger_config.retry_delays_ms,
            longest_hold: Duration::ZERO,
        },
        (delivery, &telemetry),
    )?;
    let breaker = Arc::new(Breaker::new(
        "store",
        ledger_config.breaker(),
        Some(telemetry.breaker_metrics()),
    ));
    let write_limit = NonZeroU32::new(ledger_config.max_store_writes_per_second).map(|rate| {
        telemetry
            .metrics
            .pacer(telemetry.stage, "store_writes", rate)
    });
    let ledger = Ledger::new(
        Arc::new(store),
        codec,
        LedgerTopics {
            input: input.clone(),
            results: config.topics.results.clone(),
        },
        failures,
        ledger_config.settings(),
        breaker,
        write_limit,
    );
    tracing::info!("ledger running");
    pipeline::run(
        log,
        &ledger,
        &ledger_config.group.loop_config(),
        &telemetry,
        shutdown,
    )
    .await?;
    Ok(())
}

async fn run_notifier<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
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
        &notifier_config.group.membership(),
        &input,
        Tiers {
            delays_ms: &notifier_config.retry_delays_ms,
            longest_hold: Duration::from_millis(notifier_config.breaker_open_ms),
        },
        (delivery, &telemetry),
    )?;
    let mut endpoints = Vec::with_capacity(notifier_config.endpoints.len());
    for (name, endpoint) in &notifier_config.endpoints {
        endpoints.push(Endpoint {
            name: name.clone(),
            url: endpoint.url.clone(),
            secrets: endpoint.secrets(name)?,
            pace: NonZeroU32::new(endpoint.max_per_second).map(|rate| {
                telemetry
                    .metrics
                    .pacer(telemetry.stage, &format!("webhook:{name}"), rate)
            }),
            breaker: Breaker::new(
                format!("webhook:{name}"),
                notifier_config.breaker(),
                Some(telemetry.breaker_metrics()),
            ),
        });
    }
    let settings = notifier_config.settings();
    let notifier = Notifier::new(
        HttpWebhooks::new(settings.timeout).map_err(|source| AppError::Http {
            what: "building the notifier's HTTP client".to_owned(),
            source,
        })?,
        endpoints,
        codec,
        failures,
        settings,
        Some(DeliveryMetrics {
            deliveries: telemetry.metrics.webhook_deliveries.clone(),
            seconds: telemetry.metrics.webhook_seconds.clone(),
        }),
    );
    let names: Vec<&String> = notifier_config.endpoints.keys().collect();
    tracing::info!(endpoints = ?names, "notifier running");
    let loop_config = notifier_config.group.loop_config();
    pipeline::run(log, &notifier, &loop_config, &telemetry, shutdown).await?;
    Ok(())
}

async fn run_archiver<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    delivery: Delivery,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let archiver_config = &config.archiver;
    let objects = ObjectStorage::new(&archiver_config.storage)?;
    // A bucket that is missing or refused is said at start, not at the first file: a list
    // of a prefix nothing is under costs one request however large the archive.
    match objects.list(".txflow-access-check/").await {
        Err(e) if !e.is_transient() => {
            return Err(AppError::Invalid(format!(
                "archiver.storage.url {}: {e}",
                archiver_config.storage.url
            )))
        }
        _ => {}
    }
    let topics = ArchivedTopics {
        events: config.topics.events.clone(),
        ledger: config.topics.ledger.clone(),
        results: config.topics.results.clone(),
    };
    let membership = archiver_config.group.membership();
    let log = backend.log(
        config,
        &membership,
        &topics.all(),
        &DelayedTopics::default(),
        delivery,
    )?;
    let archiver = Archiver {
        objects,
        codec,
        topics,
        roll: archiver_config.roll(),
    };
    tracing::info!(storage = %archiver_config.storage.url, roll_bytes = archiver_config.roll_bytes, roll_ms = archiver_config.roll_ms, "archiver running");
    archiver::run(
        log,
        &archiver,
        &archiver_config.group.loop_config(),
        &telemetry,
        shutdown,
    )
    .await?;
    Ok(())
}

async fn run_gateway<B: Backend>(
    backend: &B,
    config: &Config,
    codec: Arc<Codec>,
    telemetry: StageTelemetry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let gateway_config = &config.gateway;
    let keys = ApiKeys::new(gateway_config.key_hashes()?);
    if keys.is_empty() {
        return Err(AppError::Invalid("the gateway has no API keys: make one with `txflow api-key new NAME` and add its line to [gateway.api_keys] (or gateway.api_keys_file)".to_owned()));
    }
    let gateway = Arc::new(Gateway {
        publisher: backend.publisher(config)?,
        store: backend.store(config).await?,
        store_breaker: Breaker::new(
            "store",
            gateway_config.store_breaker(),
            Some(telemetry.breaker_metrics()),
        ),
        codec,
        keys,
        limit: gateway_config.rate_limit()?,
        anonymous_limit: gateway_config.unauthenticated_rate_limit()?,
        settings: gateway_config.settings(),
        topic: config.topics.events.clone(),
        metrics: Some(GatewayMetrics {
            requests: telemetry.metrics.gateway_requests.clone(),
            seconds: telemetry.metrics.gateway_seconds.clone(),
            headers_dropped: telemetry.metrics.gateway_headers_dropped.clone(),
            connections_refused: telemetry.metrics.gateway_connections_refused.clone(),
        }),
    });
    let limit_sweeper = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                gateway.limit.forget_idle();
                gateway.anonymous_limit.forget_idle();
            }
        })
    };
    let (tls, reloader) = gateway_tls(gateway_config)?.unzip();
    let listen = &gateway_config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(AppError::io(format!(
            "listening on {listen} (gateway.listen)"
        )))?;
    let bound = listener
        .local_addr()
        .map_err(AppError::io("reading the gateway's address"))?;
    tracing::info!(%bound, topic = %config.topics.events, https = tls.is_some(), "gateway listening");
    telemetry.readiness.set_address(bound);
    telemetry.readiness.set_ready();
    gateway::serve(
        listener,
        gateway,
        (gateway_config.connection_limits(), tls),
        Duration::from_millis(gateway_config.request_timeout_ms),
        shutdown,
    )
    .await;
    limit_sweeper.abort();
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    Ok(())
}

/// The routing rules a router starts with: its rules file's, or none.
pub(super) fn starting_rules(config: &Config) -> Result<Rules, AppError> {
    match &config.router.rules_file {
        Some(path) => Rules::load(path)
            .map_err(|e| AppError::Invalid(format!("router.rules_file {}: {e}", path.display()))),
        None => Ok(Rules::parse_yaml("rules: []")?),
    }
}

/// The gateway's certificate and its TLS acceptor, when it serves HTTPS.
pub(super) fn gateway_certificate(
    config: &GatewayConfig,
) -> Result<Option<(Arc<ReloadingCertificate>, TlsAcceptor)>, AppError> {
    let Some(files) = config.certificate_files() else {
        return Ok(None);
    };
    let certificate =
        ReloadingCertificate::load(files).map_err(|e| AppError::Invalid(e.to_string()))?;
    let acceptor = certificate
        .acceptor()
        .map_err(|e| AppError::Invalid(e.to_string()))?;
    Ok(Some((certificate, acceptor)))
}

/// When the gateway serves HTTPS: its TLS acceptor, and the task that reads its certificate
/// again when the files change.
fn gateway_tls(
    config: &GatewayConfig,
) -> Result<Option<(TlsAcceptor, tokio::task::JoinHandle<()>)>, AppError> {
    let Some((certificate, acceptor)) = gateway_certificate(config)? else {
        return Ok(None);
    };
    let reloader = tokio::spawn(async move {
        loop {
            tokio::time::sleep(tls::RELOAD_CHECK).await;
            certificate.reload_if_changed();
        }
    });
    Ok(Some((acceptor, reloader)))
}
