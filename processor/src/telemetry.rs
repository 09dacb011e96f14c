//! What a running process tells its operators: Prometheus metrics, liveness and readiness,
//! served on the admin address (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::Pacer;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The metrics of a stage process.
pub struct Metrics {
    registry: Registry,
    /// The process's own: CPU seconds, resident and virtual memory, open and most file
    /// descriptors, start time, under the standard `process_*` names (no `txflow_` prefix,
    /// so that the usual dashboards find them).
    process: Registry,
    /// Batches by outcome: `committed`, `retried` (a transient failure or an aborted
    /// transaction; the batch is read again after a backoff) or `paused` (a circuit breaker
    /// is open; the batch is read again once it lets a probe through).
    pub batches: IntCounterVec,
    /// Records consumed in committed batches.
    pub records: IntCounterVec,
    /// What committed batches produced, by kind (`result`, `credit`, `dead_letter`, `retry`,
    /// `parked`, `duplicate`).
    pub outputs: IntCounterVec,
    /// Seconds from a batch's first record in hand to its commit.
    pub batch_seconds: HistogramVec,
    /// Seconds the stage took over a batch, before its transaction.
    pub process_seconds: HistogramVec,
    /// Seconds from a batch's transaction begun to its commit or abort.
    pub commit_seconds: HistogramVec,
    /// Transactions by outcome: `committed`, `aborted`.
    pub transactions: IntCounterVec,
    /// Seconds from an event entering txflow (its timestamp on the events topic) to the
    /// commit of the batch that took it through the stage: for the ledger, to its result.
    pub end_to_end_seconds: HistogramVec,
    /// Records the member has still to read, by topic and partition; records of a retry
    /// tier that are not due yet are not counted (they are in `retry_waiting`).
    pub consumer_lag: IntGaugeVec,
    /// Records of a retry tier's partition that wait for their due time.
    pub retry_waiting: IntGaugeVec,
    /// Records sent to a retry tier in committed batches, by tier.
    pub retries: IntCounterVec,
    /// Records dead-lettered in committed batches, by error kind.
    pub dead_letters: IntCounterVec,
    /// Seconds a store call took, by operation.
    pub store_seconds: HistogramVec,
    /// Conditional store writes by operation (`claim_event_ids`, `record`) and outcome:
    /// `applied`, `refused` (the condition did not hold), `failed` (no answer).
    pub store_conditional_writes: IntCounterVec,
    /// Calls a rate limit made wait, by stage and limiter (`store_writes`,
    /// `webhook:<endpoint>`).
    pub rate_limit_waits: IntCounterVec,
    /// Seconds calls waited for a rate limit, by stage and limiter.
    pub rate_limit_wait_seconds: prometheus::CounterVec,
    /// Each stage the process runs: 1 while ready, 0 while not (`/readyz` says why).
    pub stage_ready: IntGaugeVec,
    /// Each circuit breaker's state: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// Circuit breaker transitions, by the state entered.
    pub circuit_transitions: IntCounterVec,
    /// Records the router sent, by rule (`default` for events that matched none).
    pub routed: IntCounterVec,
    pub archived_records: IntCounterVec,
    pub archived_bytes: IntCounterVec,
    pub archive_files: IntCounterVec,
    /// Reloads of the routing rules, by outcome: `applied`, or `refused` (the file did not
    /// load; the rules in force stay).
    pub rules_reloads: IntCounterVec,
    /// Webhook delivery attempts, by endpoint and outcome: `delivered`, `failed` (no answer,
    /// or one that says "not now"), `rejected` (any other non-2xx), `refused` (the
    /// endpoint's breaker is open; nothing sent).
    pub webhook_deliveries: IntCounterVec,
    /// Seconds from a delivery sent to its answer, by endpoint.
    pub webhook_seconds: HistogramVec,
    /// Gateway requests answered, by route and status code.
    pub gateway_requests: IntCounterVec,
    /// Seconds from a gateway request in to its answer, by route.
    pub gateway_seconds: HistogramVec,
    /// Retry records handed out at their tier's bound rather than at the due time they
    /// claimed, by topic.
    pub retry_due_out_of_bounds: IntCounterVec,
    /// Trace-context headers the gateway dropped for not being in the W3C form, by header.
    pub gateway_headers_dropped: IntCounterVec,
    /// Connections the gateway answered 503 and closed for being over its cap.
    pub gateway_connections_refused: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("txflow".to_owned()), None).expect("a valid metrics prefix");
        let process = Registry::new();
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registered once");
        let r = &registry;
        Metrics {
            batches: counter(r, "batches_total", "Batches by outcome: committed, retried after a transient failure or an aborted transaction, or paused while a circuit breaker is open", &["stage", "outcome"]),
            records: counter(r, "records_total", "Records consumed in committed batches", &["stage"]),
            outputs: counter(r, "outputs_total", "What committed batches produced, by kind", &["stage", "kind"]),
            batch_seconds: histogram(
                r,
                "batch_duration_seconds",
                "From a batch in hand to its commit",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                &["stage"],
            ),
            process_seconds: histogram(
                r,
                "process_duration_seconds",
                "What the stage took over a batch, before its transaction",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                &["stage"],
            ),
            commit_seconds: histogram(
                r,
                "commit_duration_seconds",
                "From a batch's transaction begun to its commit or abort",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                &["stage"],
            ),
            transactions: counter(r, "transactions_total", "Transactions by outcome: committed, aborted", &["stage", "outcome"]),
            end_to_end_seconds: histogram(
                r,
                "end_to_end_seconds",
                "From an event's timestamp on the events topic to the commit of the batch that took it through the stage",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
                &["stage"],
            ),
            consumer_lag: gauge(r, "consumer_lag_records", "Records still to read, by partition; retry records not yet due are not counted", &["stage", "topic", "partition"]),
            retry_waiting: gauge(r, "retry_waiting_records", "Records of a retry tier waiting for their due time, by partition", &["stage", "topic", "partition"]),
            retries: counter(r, "retries_total", "Records sent to a retry tier in committed batches, by tier", &["stage", "tier"]),
            dead_letters: counter(r, "dead_letters_total", "Records dead-lettered in committed batches, by error kind", &["stage", "kind"]),
            store_seconds: histogram(
                r,
                "store_duration_seconds",
                "A store call, by operation",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                &["stage", "operation"],
            ),
            store_conditional_writes: counter(r, "store_conditional_writes_total", "Conditional store writes by operation and outcome: applied, refused (the condition did not hold), failed", &["stage", "operation", "outcome"]),
            rate_limit_waits: counter(r, "rate_limit_waits_total", "Calls a rate limit made wait, by limiter", &["stage", "limiter"]),
            rate_limit_wait_seconds: registered(r, prometheus::CounterVec::new(
                Opts::new("rate_limit_wait_seconds_total", "Seconds calls waited for a rate limit, by limiter"),
                &["stage", "limiter"],
            )),
            stage_ready: gauge(r, "stage_ready", "Each stage the process runs: 1 while ready, 0 while not", &["stage"]),
            circuit_state: gauge(r, "circuit_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open", &["stage", "dependency"]),
            circuit_transitions: counter(r, "circuit_transitions_total", "Circuit breaker transitions, by the state entered", &["stage", "dependency", "to"]),
            archived_records: counter(r, "archived_records_total", "Records in archive files the archiver wrote and committed, by topic", &["topic"]),
            archived_bytes: counter(r, "archived_bytes_total", "Bytes of archive files the archiver wrote, by topic", &["topic"]),
            archive_files: counter(r, "archive_files_total", "Archive files: written, or found already there (written before a crash or by a member that lost the partition) and taken as they are", &["topic", "outcome"]),
            routed: counter(r, "routed_total", "Records the router sent in committed batches, by rule (default: no rule matched)", &["rule"]),
            rules_reloads: counter(r, "rules_reloads_total", "Reloads of the routing rules: applied, or refused (the rules in force stay)", &["outcome"]),
            webhook_deliveries: counter(r, "webhook_deliveries_total", "Webhook delivery attempts: delivered, failed (retried), rejected (dead-lettered), refused (breaker open, not sent)", &["endpoint", "outcome"]),
            webhook_seconds: histogram(
                r,
                "webhook_duration_seconds",
                "From a webhook delivery sent to its answer",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                &["endpoint"],
            ),
            gateway_requests: counter(r, "gateway_requests_total", "Gateway requests answered, by route and status code", &["route", "status"]),
            gateway_seconds: histogram(
                r,
                "gateway_request_duration_seconds",
                "From a gateway request in to its answer",
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
                &["route"],
            ),
            retry_due_out_of_bounds: counter(r, "retry_due_out_of_bounds_total", "Retry records handed out at their tier's bound rather than at the due time they claimed", &["topic"]),
            gateway_headers_dropped: counter(r, "gateway_headers_dropped_total", "Trace-context headers dropped for not being in the W3C form, by header", &["header"]),
            gateway_connections_refused: registered(r, prometheus::IntCounter::new(
                "gateway_connections_refused_total",
                "Connections answered 503 and closed for being over gateway.max_connections",
            )),
            registry,
            process,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut text)
            .expect("text encoding into memory");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

impl Metrics {
    /// A pacer at `rate` for `limiter` of `stage`, its waits counted here.
    pub fn pacer(&self, stage: &str, limiter: &str, rate: NonZeroU32) -> Pacer {
        let labels = [stage, limiter];
        Pacer::new(
            rate,
            self.rate_limit_waits.with_label_values(&labels),
            self.rate_limit_wait_seconds.with_label_values(&labels),
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A counter, registered.
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// `metric`, valid, registered.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// A gauge, registered.
fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A histogram with these bucket bounds (seconds), registered.
fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels))
}

/// Whether the process can do its work now, and why not: set by the stage loop, read by
/// `/readyz`.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
    /// Where the stage serves, once it does (the gateway's bound address).
    address: std::sync::OnceLock<SocketAddr>,
    /// `txflow_stage_ready{stage}`, where it is reported.
    gauge: Option<IntGauge>,
}

impl Readiness {
    /// Not ready until told otherwise, and reported as `txflow_stage_ready{stage}`.
    pub fn reported(metrics: &Metrics, stage: &str) -> Readiness {
        let gauge = metrics.stage_ready.with_label_values(&[stage]);
        gauge.set(0);
        Readiness {
            gauge: Some(gauge),
            ..Readiness::default()
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        if let Some(gauge) = &self.gauge {
            gauge.set(1);
        }
    }

    pub fn set_not_ready(&self, reason: &str) {
        *self.reason.lock().expect("the readiness lock") = reason.to_owned();
        self.ready.store(false, Ordering::Relaxed);
        if let Some(gauge) = &self.gauge {
            gauge.set(0);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records where the stage serves.
    pub fn set_address(&self, address: SocketAddr) {
        let _ = self.address.set(address);
    }

    pub fn address(&self) -> Option<SocketAddr> {
        self.address.get().copied()
    }

    /// Why the process is not ready, as last reported.
    pub fn reason(&self) -> String {
        self.reason.lock().expect("the readiness lock").clone()
    }
}

/// Whether the process is healthy: broken while it cannot work until something heals (the
/// embedded database, closed to be reopened after an I/O error), read by `/healthz`, so that
/// a supervisor restarts a process that stays broken.
#[derive(Default)]
pub struct Health {
    broken: Mutex<Option<String>>,
}

impl Health {
    pub fn set_broken(&self, reason: String) {
        *self.broken.lock().expect("the health lock") = Some(reason);
    }

    pub fn set_healthy(&self) {
        *self.broken.lock().expect("the health lock") = None;
    }

    /// Why the process is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().expect("the health lock").clone()
    }
}

/// What the admin endpoints read: the metrics, the process's health, and the readiness of
/// each stage the process runs (one, or all of them under `txflow dev`).
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub readiness: Vec<(&'static str, Arc<Readiness>)>,
}

/// Binds the admin address and serves it, with the routes of `more`, in the background;
/// returns the bound address (the port is chosen by the system when the configured one is 0).
pub async fn serve_admin(listen: &str, admin: Admin, more: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(admin)
        .merge(more);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the admin endpoints stopped: {e}");
        }
    });
    Ok(bound)
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
}

async fn healthz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.health.broken() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let waiting: Vec<String> = admin
        .readiness
        .iter()
        .filter(|(_, readiness)| !readiness.is_ready())
        .map(|(stage, readiness)| match admin.readiness.len() {
            1 => readiness.reason(),
            _ => format!("{stage}: {}", readiness.reason()),
        })
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_is_measured_under_the_standard_names() {
        let metrics = Metrics::new();
        metrics.records.with_label_values(&["ledger"]).inc();
        let text = metrics.render();
        for name in [
            "txflow_records_total{stage=\"ledger\"} 1",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.contains(name), "{name} in:\n{text}");
        }
        assert!(!text.contains("txflow_process_"), "{text}");
    }
}
