//! The notifier stage: `txflow.notifications` → signed HTTP webhooks. A notification's
//! `txflow.webhook` header (set by the router from the rule target's `webhook`) names the
//! endpoint; the body is the record's JSON (a target's input transform) or the event as JSON.
//!
//! Each endpoint has its own rate limit (deliveries wait their turn) and circuit breaker
//! (after failures in a row it refuses deliveries without sending them, then lets one through
//! as a probe). A delivery that fails for now — no answer, 408/425/429/5xx, breaker open —
//! goes to the retry tiers and comes back when due (a refused one no earlier than its
//! breaker's probe); after the last tier, and at once for a refusal (any other status), it
//! goes to the dead letters. One endpoint being down does not hold up the others: its
//! deliveries move to the tiers while the rest go out.
//!
//! Delivery is at least once: a crash after a delivery and before its batch commits sends
//! it again. Every attempt of one notification carries the same `txflow-webhook-id`, which a
//! receiver uses to drop repeats.

mod config;
pub mod signature;

pub use config::{EndpointConfig, NotifierConfig, NotifierGroup, MIN_SECRET_BYTES};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use prometheus::{HistogramVec, IntCounterVec};
use tracing::Instrument;

use crate::codec::Codec;
use crate::domain::{CircuitOpen, FailureKind, Poison, RetryClass};
use crate::failures::FailureRoutes;
use crate::limits::Pacer;
use crate::pipeline::breaker::Breaker;
use crate::pipeline::{BatchOutput, Stage, StageError, Tally};
use crate::ports::{DeliveryError, WebhookRequest, Webhooks};
use crate::traces;
use crate::wire::{trace_context, InputRecord, RULE, TRACEPARENT, WEBHOOK};

/// The same for every attempt of one notification: `<topic>/<partition>/<offset>` where it
/// was first read.
pub const ID_HEADER: &str = "txflow-webhook-id";
/// The rule that sent the notification.
pub const HTTP_RULE_HEADER: &str = "txflow-rule";
/// 1 for the first attempt.
pub const ATTEMPT_HEADER: &str = "txflow-attempt";

/// An endpoint deliveries go to.
pub struct Endpoint {
    pub name: String,
    pub url: String,
    /// Every delivery is signed with each (two while a secret is rotated).
    pub secrets: Vec<Vec<u8>>,
    /// Paces deliveries to the endpoint's `max_per_second`.
    pub pace: Option<Pacer>,
    pub breaker: Breaker,
}

/// How deliveries are made.
#[derive(Clone, Copy, Debug)]
pub struct NotifierSettings {
    pub timeout: Duration,
    /// Deliveries in flight at once to one endpoint.
    pub max_in_flight: usize,
}

/// `txflow_webhook_deliveries_total{endpoint, outcome}` and
/// `txflow_webhook_duration_seconds{endpoint}`.
#[derive(Clone)]
pub struct DeliveryMetrics {
    pub deliveries: IntCounterVec,
    pub seconds: HistogramVec,
}

/// What one batch did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifierCounts {
    pub delivered: usize,
    /// Deliveries sent to a retry tier.
    pub retried: usize,
    pub dead_letters: usize,
}

impl Tally for NotifierCounts {
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("delivered", self.delivered as u64),
            ("retry", self.retried as u64),
            ("dead_letter", self.dead_letters as u64),
        ]
    }
}

/// The notifier stage.
pub struct Notifier<W> {
    webhooks: W,
    endpoints: HashMap<String, Endpoint>,
    codec: Arc<Codec>,
    failures: FailureRoutes,
    settings: NotifierSettings,
    metrics: Option<DeliveryMetrics>,
}

/// A notification ready to send, but for its signature (made at each attempt).
/// The content types a delivery's body has.
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const TEXT_BYTES: &[u8] = TEXT.as_bytes();

struct Delivery<'a> {
    index: usize,
    endpoint: &'a Endpoint,
    id: String,
    rule: Option<String>,
    attempt: u32,
    traceparent: Option<String>,
    body: Vec<u8>,
    content_type: &'static str,
    /// `notifier.deliver`: the webhook's request is made in it.
    span: tracing::Span,
}

impl<W: Webhooks> Notifier<W> {
    pub fn new(
        webhooks: W,
        endpoints: Vec<Endpoint>,
        codec: Arc<Codec>,
        failures: FailureRoutes,
        settings: NotifierSettings,
        metrics: Option<DeliveryMetrics>,
    ) -> Self {
        Notifier {
            webhooks,
            endpoints: endpoints.into_iter().map(|e| (e.name.clone(), e)).collect(),
            codec,
            failures,
            settings,
            metrics,
        }
    }

    /// The delivery `record` asks for, or why it cannot be made at all.
    fn prepare(&self, index: usize, record: &InputRecord) -> Result<Delivery<'_>, Poison> {
        let text = |name: &str| {
            record
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let name = text(WEBHOOK).ok_or_else(|| {
            Poison::new(
                FailureKind::NoEndpoint,
                format!("the notification names no endpoint (header {WEBHOOK}): give its rule target a `webhook`"),
            )
        })?;
        let endpoint = self.endpoints.get(&name).ok_or_else(|| {
            Poison::new(
                FailureKind::NoEndpoint,
                format!("no endpoint {name:?} is configured: add [notifier.endpoints.{name}], then redrive"),
            )
        })?;
        let (body, content_type) = match record.header("content-type") {
            Some(b"application/json") => {
                let value = record.value.as_deref().unwrap_or_default();
                serde_json::from_slice::<serde_json::Value>(value).map_err(|e| {
                    Poison::new(
                        FailureKind::Undecodable,
                        format!("the notification says it is JSON but is not: {e}"),
                    )
                })?;
                (value.to_vec(), JSON)
            }
            // A rule's text template (input_transformer).
            Some(TEXT_BYTES) => {
                let value = record.value.as_deref().unwrap_or_default();
                std::str::from_utf8(value).map_err(|e| {
                    Poison::new(
                        FailureKind::Undecodable,
                        format!("the notification says it is UTF-8 text but is not: {e}"),
                    )
                })?;
                (value.to_vec(), TEXT)
            }
            _ => {
                let event = self.codec.valid_event(record.value.as_deref())?;
                (
                    serde_json::to_vec(&event).expect("an event serializes"),
                    JSON,
                )
            }
        };
        let origin = record
            .redriven_from()
            .unwrap_or_else(|| self.failures.origin(record));
        let span = traces::record_span("notifier.deliver", &record.headers);
        let mut trace: Vec<(String, Vec<u8>)> = record
            .header(TRACEPARENT)
            .and_then(trace_context::traceparent)
            .map(|valid| vec![(TRACEPARENT.to_owned(), valid.to_vec())])
            .unwrap_or_default();
        traces::carry(&span, &mut trace);
        Ok(Delivery {
            index,
            endpoint,
            id: origin.to_string(),
            rule: text(RULE),
            attempt: record.attempts().saturating_add(1),
            traceparent: trace
                .into_iter()
                .find(|(name, _)| name == TRACEPARENT)
                .map(|(_, value)| String::from_utf8_lossy(&value).into_owned()),
            body,
            content_type,
            span,
        })
    }

    /// The HTTP request of `delivery`, signed at `now_s` (Unix seconds).
    fn request(&self, delivery: &Delivery<'_>, now_s: i64) -> WebhookRequest {
        let endpoint = delivery.endpoint;
        let mut headers = vec![
            ("content-type".to_owned(), delivery.content_type.to_owned()),
            (ID_HEADER.to_owned(), delivery.id.clone()),
            (ATTEMPT_HEADER.to_owned(), delivery.attempt.to_string()),
            (
                signature::SIGNATURE_HEADER.to_owned(),
                signature::sign(&endpoint.secrets, now_s, &delivery.body),
            ),
        ];
        if let Some(rule) = &delivery.rule {
            headers.push((HTTP_RULE_HEADER.to_owned(), rule.clone()));
        }
        if let Some(traceparent) = &delivery.traceparent {
            headers.push((TRACEPARENT.to_owned(), traceparent.clone()));
        }
        WebhookRequest {
            url: endpoint.url.clone(),
            headers,
            body: delivery.body.clone(),
            timeout: self.settings.timeout,
        }
    }

    /// One attempt, paced, timed and counted. Through `breaker.guard` (closed) or as the
    /// breaker's probe (half-open).
    async fn send(&self, delivery: &Delivery<'_>, as_probe: bool) -> Result<(), DeliveryError> {
        let endpoint = delivery.endpoint;
        if let Some(pace) = &endpoint.pace {
            pace.ready().await;
        }
        let started = Instant::now();
        let request = self.request(delivery, crate::pipeline::now_ms() / 1000);
        let post = self
            .webhooks
            .post(&request)
            .instrument(delivery.span.clone());
        let outcome = if as_probe {
            endpoint.breaker.probe(post).await.map(|_| ())
        } else {
            endpoint.breaker.guard(None, post).await
        };
        let sent = !matches!(outcome, Err(DeliveryError::CircuitOpen(_)));
        if let (Some(metrics), true) = (&self.metrics, sent) {
            metrics
                .seconds
                .with_label_values(&[&endpoint.name])
                .observe(started.elapsed().as_secs_f64());
        }
        self.count(&endpoint.name, &outcome);
        outcome
    }

    fn count(&self, endpoint: &str, outcome: &Result<(), DeliveryError>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let label = match outcome {
            Ok(()) => "delivered",
            Err(DeliveryError::Unavailable(_)) => "failed",
            Err(DeliveryError::Rejected { .. }) => "rejected",
            Err(DeliveryError::CircuitOpen(_)) => "refused",
        };
        metrics
            .deliveries
            .with_label_values(&[endpoint, label])
            .inc();
    }

    /// Delivers to one endpoint, in order, up to `max_in_flight` at once while its breaker is
    /// closed; while it is open, refuses without sending, but for one probe once it may.
    async fn deliver_to_endpoint(
        &self,
        deliveries: Vec<Delivery<'_>>,
    ) -> Vec<(usize, Result<(), DeliveryError>)> {
        let mut outcomes = Vec::with_capacity(deliveries.len());
        let mut pending = deliveries.into_iter().peekable();
        while let Some(delivery) = pending.next() {
            let breaker = &delivery.endpoint.breaker;
            match breaker.reopens_in(Instant::now()) {
                None => {
                    let mut window = vec![delivery];
                    while window.len() < self.settings.max_in_flight {
                        match pending.next() {
                            Some(next) => window.push(next),
                            None => break,
                        }
                    }
                    let sent = join_all(window.iter().map(|d| self.send(d, false))).await;
                    outcomes.extend(window.iter().map(|d| d.index).zip(sent));
                }
                Some(wait) if !wait.is_zero() => {
                    let refused = Err(DeliveryError::CircuitOpen(CircuitOpen {
                        dependency: breaker.dependency().to_owned(),
                        retry_after: wait,
                    }));
                    self.count(&delivery.endpoint.name, &refused);
                    outcomes.push((delivery.index, refused));
                }
                Some(_) => {
                    let outcome = self.send(&delivery, true).await;
                    outcomes.push((delivery.index, outcome));
                }
            }
        }
        outcomes
    }
}

impl<W: Webhooks> Stage for Notifier<W> {
    type Counts = NotifierCounts;

    async fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> Result<BatchOutput<NotifierCounts>, StageError> {
        self.codec
            .learn(batch.iter().map(|r| r.value.as_deref()))
            .await?;
        // (index, kind, message, not due before): a refused delivery waits for its breaker.
        let mut failed: Vec<(usize, FailureKind, String, i64)> = Vec::new();
        let mut by_endpoint: BTreeMap<&str, Vec<Delivery<'_>>> = BTreeMap::new();
        // Each delivery's span, so that a failure is logged in its trace.
        let mut spans = vec![tracing::Span::none(); batch.len()];
        for (index, record) in batch.iter().enumerate() {
            match self.prepare(index, record) {
                Ok(delivery) => {
                    spans[index] = delivery.span.clone();
                    by_endpoint
                        .entry(delivery.endpoint.name.as_str())
                        .or_default()
                        .push(delivery)
                }
                Err(poison) => failed.push((index, poison.kind, poison.message, now_ms)),
            }
        }
        let sent = join_all(
            by_endpoint
                .into_values()
                .map(|deliveries| self.deliver_to_endpoint(deliveries)),
        )
        .await;
        let mut counts = NotifierCounts::default();
        for (index, outcome) in sent.into_iter().flatten() {
            match outcome {
                Ok(()) => counts.delivered += 1,
                Err(error) => {
                    let not_before = now_ms
                        + error
                            .retry_after()
                            .map_or(0, |wait| wait.as_millis() as i64);
                    failed.push((index, error.kind(), error.to_string(), not_before))
                }
            }
        }
        failed.sort_by_key(|(index, ..)| *index);
        let mut rng = rand::rng();
        let mut outputs = Vec::with_capacity(failed.len());
        for (index, kind, message, not_before) in failed {
            let routed = spans[index].in_scope(|| {
                self.failures.failed_until(
                    &batch[index],
                    kind,
                    &message,
                    now_ms,
                    not_before,
                    &mut rng,
                )
            });
            match routed.tier {
                Some(_) => counts.retried += 1,
                None => counts.dead_letters += 1,
            }
            outputs.push(routed.record);
        }
        Ok(BatchOutput { outputs, counts })
    }
}

#[cfg(test)]
mod tests;
