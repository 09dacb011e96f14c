//! The router stage: `txflow.events` → every target of every rule an event matches, key and
//! headers preserved, plus the rule's name and the target's webhook endpoint if it has one;
//! exactly once (one transaction per batch like every stage). An event that matches no rule
//! goes to the default target (`txflow.ledger`), poison to `txflow.events.dlq`. The rules
//! can be replaced while it runs.

mod config;

pub use config::{RouterConfig, RouterGroup};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus::IntCounterVec;

use crate::codec::Codec;
use crate::failures::FailureRoutes;
use crate::pipeline::uncommitted::Uncommitted;
use crate::pipeline::{BatchOutput, Stage, StageError, Tally};
use crate::routing::{Payload, Rules};
use crate::traces;
use crate::wire::{InputRecord, OutputRecord, INGESTED_AT, RULE, WEBHOOK};

/// What one batch did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterCounts {
    /// Records sent to a rule's target.
    pub routed: usize,
    /// Events that matched no rule, sent to the default target.
    pub unmatched: usize,
    pub dead_letters: usize,
}

impl Tally for RouterCounts {
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("routed", self.routed as u64),
            ("unmatched", self.unmatched as u64),
            ("dead_letter", self.dead_letters as u64),
        ]
    }
}

/// The label of records sent to the default target in `txflow_routed_total`.
pub const DEFAULT_ROUTE: &str = "default";

/// The router stage.
pub struct Router {
    rules: RwLock<Arc<Rules>>,
    codec: Arc<Codec>,
    default_target: String,
    failures: FailureRoutes,
    /// `txflow_routed_total`, by rule.
    routed: IntCounterVec,
    /// Records per rule of each batch processed but not committed yet, oldest first, counted
    /// once it commits.
    staged: Uncommitted<HashMap<String, u64>>,
}

impl Router {
    pub fn new(
        rules: Rules,
        codec: Arc<Codec>,
        default_target: String,
        failures: FailureRoutes,
        routed: IntCounterVec,
    ) -> Self {
        Router {
            rules: RwLock::new(Arc::new(rules)),
            codec,
            default_target,
            failures,
            routed,
            staged: Uncommitted::default(),
        }
    }

    /// Routes the next batches by `rules`.
    pub fn replace_rules(&self, rules: Rules) {
        *self.rules.write().expect("the rules lock") = Arc::new(rules);
    }
}

impl Stage for Router {
    type Counts = RouterCounts;

    async fn process(
        &self,
        batch: &[InputRecord],
        now_ms: i64,
    ) -> Result<BatchOutput<RouterCounts>, StageError> {
        self.codec
            .learn(batch.iter().map(|r| r.value.as_deref()))
            .await?;
        let rules = self.rules.read().expect("the rules lock").clone();
        let mut rng = rand::rng();
        let mut counts = RouterCounts::default();
        let mut by_rule: HashMap<String, u64> = HashMap::new();
        let mut outputs = Vec::with_capacity(batch.len());
        for record in batch {
            let span = traces::record_span("router.route", &record.headers);
            let event = match self.codec.valid_event(record.value.as_deref()) {
                Ok(event) => {
                    traces::identify(&span, &event.event_id, &event.account_id);
                    event
                }
                Err(poison) => {
                    counts.dead_letters += 1;
                    let routed = span.in_scope(|| {
                        self.failures
                            .failed(record, poison.kind, &poison.message, now_ms, &mut rng)
                    });
                    outputs.push(routed.record);
                    continue;
                }
            };
            // The rules see the event's JSON form; without rules there is nothing to build it for.
            let deliveries = if rules.rules().is_empty() {
                Vec::new()
            } else {
                rules.route(&serde_json::to_value(&event).expect("an event serializes"))
            };
            if deliveries.is_empty() {
                counts.unmatched += 1;
                *by_rule.entry(DEFAULT_ROUTE.to_owned()).or_default() += 1;
                outputs.push(OutputRecord {
                    topic: self.default_target.clone(),
                    key: record.key.clone(),
                    value: record.value.clone(),
                    headers: onward_headers(record, &span),
                });
                continue;
            }
            for delivery in deliveries {
                counts.routed += 1;
                *by_rule.entry(delivery.rule.to_owned()).or_default() += 1;
                let mut headers = onward_headers(record, &span);
                headers.push((RULE.to_owned(), delivery.rule.as_bytes().to_vec()));
                if let Some(webhook) = &delivery.target.webhook {
                    headers.push((WEBHOOK.to_owned(), webhook.as_bytes().to_vec()));
                }
                let value = match delivery.transformed {
                    Some(Payload::Json(input)) => {
                        headers.push(("content-type".to_owned(), b"application/json".to_vec()));
                        Some(serde_json::to_vec(&input).expect("JSON serializes"))
                    }
                    Some(Payload::Text(text)) => {
                        headers.push((
                            "content-type".to_owned(),
                            b"text/plain; charset=utf-8".to_vec(),
                        ));
                        Some(text.into_bytes())
                    }
                    None => record.value.clone(),
                };
                outputs.push(OutputRecord {
                    topic: delivery.target.topic.clone(),
                    key: record.key.clone(),
                    value,
                    headers,
                });
            }
        }
        self.staged.processed(by_rule);
        Ok(BatchOutput { outputs, counts })
    }

    fn committed(&self) {
        for (rule, count) in self.staged.committed().into_iter().flatten() {
            self.routed.with_label_values(&[&rule]).inc_by(count);
        }
    }

    fn aborted(&self) {
        self.staged.aborted();
    }
}
/// The headers a routed record carries on: the event's own, its trace continued from the
/// routing `span`, and when it entered txflow (its timestamp here, on the events topic),
/// whatever a producer claimed for that.
fn onward_headers(record: &InputRecord, span: &tracing::Span) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(name, _)| name != INGESTED_AT)
        .cloned()
        .collect();
    if let Some(timestamp) = record.timestamp {
        headers.push((INGESTED_AT.to_owned(), timestamp.to_string().into_bytes()));
    }
    traces::carry(span, &mut headers);
    headers
}
