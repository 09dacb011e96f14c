//! `txflow dev`: every stage in one process on the embedded database of a data directory,
//! and the `/dev/` routes of its admin endpoint, through which `txflow accounts`, `dlq` and
//! `produce` given `--dev-dir` reach it (redb lets one process open a data directory). The
//! client of those routes is `adapters::embedded::remote`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use tokio::sync::watch;

use super::run::{run_stage, serve_telemetry, stage_telemetry, StageName};
use super::AppError;
use super::Config;
use crate::adapters::embedded::remote::{ADDRESS_FILE, KEY_FILE};
use crate::adapters::embedded::{Embedded, EmbeddedLedgerStore};
use crate::adapters::kafka::Delivery;
use crate::adapters::objects::StorageConfig;
use crate::codec::Codec;
use crate::failures::redrive::{self, RedriveRequest};
use crate::pipeline::StageTelemetry;
use crate::ports::{Balances, DelayedTopics, Published, Publisher};
use crate::stages::gateway::account_json;
use crate::stages::gateway::keys::{hash, new_key};
use crate::telemetry::{Metrics, Readiness};
use crate::wire::OutputRecord;

/// The dev API key of a data directory: made on the first start, kept in the directory so
/// that clients keep working across restarts.
fn dev_key(data_dir: &Path) -> Result<String, AppError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => {
            let (key, _) = new_key();
            std::fs::write(&path, format!("{key}\n"))
                .map_err(AppError::io(format!("writing {}", path.display())))?;
            Ok(key)
        }
    }
}

/// `txflow dev`: every stage in this process on the embedded database in `data_dir`, until
/// SIGTERM or Ctrl-C.
/// Where a `txflow dev` on `data_dir` archives: `storage` when it names a place, else the
/// data directory's `archive`.
pub fn dev_archive(storage: &StorageConfig, data_dir: &Path) -> std::io::Result<StorageConfig> {
    let mut storage = storage.clone();
    if storage.url.is_empty() {
        let archive = std::path::absolute(data_dir.join("archive"))?;
        storage.url = format!("file://{}", archive.display());
    }
    Ok(storage)
}

pub async fn dev(config: &Config, data_dir: &Path) -> Result<(), AppError> {
    let embedded = Embedded::open(data_dir)?;
    let key = dev_key(data_dir)?;
    let mut config = config.clone();
    config.router.group.batch_max_records = config.dev.batch_max_records;
    config.ledger.group.batch_max_records = config.dev.batch_max_records;
    config.notifier.group.batch_max_records = config.dev.batch_max_records;
    config.archiver.group.batch_max_records = config.dev.batch_max_records;
    config.archiver.storage = dev_archive(&config.archiver.storage, data_dir)
        .map_err(AppError::io("finding the archive's directory"))?;
    config.gateway.listen = on_host(&config.gateway.listen, config.dev.bind, "gateway.listen")?;
    config.admin.listen = on_host(&config.admin.listen, config.dev.bind, "admin.listen")?;
    let hashed: String = hash(&key).iter().map(|b| format!("{b:02x}")).collect();
    config.gateway.api_keys.insert("dev".to_owned(), hashed);
    let shutdown = super::shutdown::on_signal()?;
    let metrics = Arc::new(Metrics::new());
    let stages: Vec<(StageName, StageTelemetry)> = StageName::ALL
        .into_iter()
        .map(|stage| (stage, stage_telemetry(stage, &metrics)))
        .collect();
    let telemetries: Vec<StageTelemetry> = stages.iter().map(|(_, t)| t.clone()).collect();
    // One codec for every stage: the schemas registered once, each new id learnt once.
    let codec = super::codec::codec(&config).await?;
    let admin = serve_telemetry(
        &config,
        &metrics,
        embedded.health(),
        &telemetries,
        routes(embedded.clone(), codec.clone(), &key),
    )
    .await?;
    let address_file = data_dir.join(ADDRESS_FILE);
    std::fs::write(&address_file, local_address(admin).to_string())
        .map_err(AppError::io(format!("writing {}", address_file.display())))?;
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
                        tracing::error!("{} failed: {e}", stage.as_str());
                        first_failure.get_or_insert(AppError::StageEnded {
                            stage: stage.as_str(),
                            source: Box::new(e),
                        });
                    }
                    // One stage ending ends them all: dev is one pipeline.
                    let _ = stop.send(true);
                }
                Some(Err(e)) => {
                    first_failure.get_or_insert(AppError::Panicked(e.to_string()));
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

/// `listen`'s port on `host`.
fn on_host(listen: &str, host: std::net::IpAddr, name: &str) -> Result<String, AppError> {
    let port = listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| {
            AppError::Invalid(format!(
                "{name} = {listen:?}: expected HOST:PORT (txflow dev keeps the port and binds dev.bind)"
            ))
        })?;
    Ok(std::net::SocketAddr::new(host, port).to_string())
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
    println!(
        "\ntxflow dev: {} in one process, data in {} (durable; restart to continue)\n\
         \n  gateway   http://{gateway}   Authorization: Bearer {key}\n\
         \x20 admin     http://{admin}/metrics  /healthz  /readyz\n\
         \x20 cli       txflow accounts export --dev-dir {}   (accounts, audit, dlq, produce)\n\
         \x20 topics    {} → {} → {}\n\
         \n  curl -X POST http://{gateway}/v1/events -H 'Authorization: Bearer {key}' \\\n\
         \x20   -H 'Content-Type: application/json' -d '{{\"event_id\": \"e-1\", \"event_type\": \"DEPOSIT\",\n\
         \x20   \"account_id\": \"acct-1\", \"amount_minor\": 2500, \"currency\": \"EUR\",\n\
         \x20   \"occurred_at\": '$(date +%s000)', \"source\": \"curl\"}}'\n\
         \x20 curl http://{gateway}/v1/accounts/acct-1 -H 'Authorization: Bearer {key}'\n",
        stages.join(", "),
        data_dir.display(),
        data_dir.display(),
        config.topics.events,
        config.topics.ledger,
        config.topics.results,
    );
}

#[derive(Clone)]
struct Served {
    embedded: Embedded,
    store: Arc<EmbeddedLedgerStore>,
    codec: Arc<Codec>,
}

/// The `/dev/` routes of a dev process's admin endpoint, for callers with `key`.
fn routes(embedded: Embedded, codec: Arc<Codec>, key: &str) -> Router {
    let store = Arc::new(embedded.store());
    let expected = hash(key);
    Router::new()
        .route("/dev/accounts", get(accounts))
        .route("/dev/accounts/{account_id}", get(account))
        .route("/dev/events/{event_id}", get(outcomes))
        .route("/dev/topics/{topic}/records", get(records).post(publish))
        .route("/dev/dlq/redrive", post(redrive))
        .route_layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                let given = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if given.is_some_and(|key| hash(key) == expected) {
                    next.run(request).await
                } else {
                    failed(
                        StatusCode::UNAUTHORIZED,
                        "the /dev/ routes take the dev API key (Authorization: Bearer, from <data-dir>/dev-api-key)",
                    )
                }
            },
        ))
        .with_state(Served {
            embedded,
            store,
            codec,
        })
}

fn failed(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn accounts(State(served): State<Served>) -> Response {
    let mut lines = String::new();
    let mut all = served.store.accounts();
    loop {
        match all.try_next().await {
            Ok(Some((id, account))) => {
                lines.push_str(&account_json(&id, &account).to_string());
                lines.push('\n');
            }
            Ok(None) => return lines.into_response(),
            Err(e) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
}

async fn account(State(served): State<Served>, UrlPath(account_id): UrlPath<String>) -> Response {
    match served.store.account(&account_id).await {
        Ok(Some(account)) => Json(account_json(&account_id, &account)).into_response(),
        Ok(None) => failed(
            StatusCode::NOT_FOUND,
            format!("account {account_id:?} has no recorded event"),
        ),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The results recorded for an event, as `Balances::outcomes` answers.
async fn outcomes(State(served): State<Served>, UrlPath(event_id): UrlPath<String>) -> Response {
    match served.store.outcomes(&event_id).await {
        Ok(outcomes) => Json(outcomes).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Every committed record of a topic, oldest first.
async fn records(State(served): State<Served>, UrlPath(topic): UrlPath<String>) -> Response {
    let read = tokio::task::spawn_blocking(move || served.embedded.read_to_end(&topic)).await;
    match read {
        Ok(Ok(records)) => Json(records).into_response(),
        Ok(Err(e)) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Appends records to a topic, durably, all or none.
async fn publish(
    State(served): State<Served>,
    UrlPath(topic): UrlPath<String>,
    Json(records): Json<Vec<OutputRecord>>,
) -> Response {
    if let Some(other) = records.iter().find(|r| r.topic != topic) {
        return failed(
            StatusCode::BAD_REQUEST,
            format!("a record for {} posted to {topic}", other.topic),
        );
    }
    let published: Result<Vec<Published>, _> = served
        .embedded
        .publisher()
        .publish(records)
        .await
        .into_iter()
        .collect();
    match published {
        Ok(published) => Json(published).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Runs a redrive on the dev process's own log, in the group the request names, until the
/// dead letters run out; answers what it did.
async fn redrive(State(served): State<Served>, Json(request): Json<RedriveRequest>) -> Response {
    let plan = match request.plan() {
        Ok(plan) => plan,
        Err(e) => return failed(StatusCode::BAD_REQUEST, e),
    };
    let log = served.embedded.log(
        &request.group(),
        &[request.topic.as_str()],
        &DelayedTopics::default(),
    );
    match redrive::redrive(log, &served.codec, &plan).await {
        Ok(done) => Json(done).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
