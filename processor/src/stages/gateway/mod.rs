//! The HTTP gateway: clients that speak JSON post events and read outcomes and balances.
//! A posted event is checked against the Avro schema and the ledger's field rules, encoded
//! in the Confluent wire format and written to `txflow.events` keyed by its account; `202`
//! comes back only once the broker acknowledged it on every in-sync replica. The gateway
//! keeps no state of its own: an event re-sent after a timeout is a producer re-send, which
//! the ledger turns into nothing (docs/GATEWAY.md).

pub mod api_error;
mod bare_errors;
mod config;
pub mod event_json;
pub mod keys;
mod server;
pub mod strict_json;
pub mod tls;

pub use config::GatewayConfig;
pub use server::{serve, ConnectionLimits};

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{HistogramVec, IntCounterVec};
use serde_json::{json, Value};

use self::api_error::ApiError;
use self::event_json::{event_from_json, Admission, FieldError};
use self::keys::ApiKeys;
use crate::codec::{Codec, Record};
use crate::domain::{id_problem, Account, TransactionEvent};
use crate::limits::KeyedRateLimit;
use crate::pipeline::breaker::Breaker;
use crate::ports::{Balances, Publisher};
use crate::traces;
use crate::wire::{trace_context, OutputRecord, TRACEPARENT, TRACESTATE};

/// The OpenAPI document of these routes, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// Every route, as method and path; the OpenAPI document must describe exactly these.
pub const ROUTES: [(&str, &str); 5] = [
    ("POST", "/v1/events"),
    ("POST", "/v1/events/batch"),
    ("GET", "/v1/events/{event_id}"),
    ("GET", "/v1/accounts/{account_id}"),
    ("GET", "/openapi.json"),
];

/// Limits on what a request may ask.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub request_timeout: Duration,
    /// How long the body may take to arrive; past it, 408.
    pub body_timeout: Duration,
    /// The currencies accepted; empty accepts every ISO 4217 code.
    pub currencies: BTreeSet<String>,
    /// How far `occurred_at` may lie behind and ahead of the gateway's clock.
    pub occurred_at_max_age: Duration,
    pub occurred_at_max_ahead: Duration,
}

/// `txflow_gateway_requests_total{route, status}`,
/// `txflow_gateway_request_duration_seconds{route}`,
/// `txflow_gateway_headers_dropped_total{header}` and
/// `txflow_gateway_connections_refused_total`.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub seconds: HistogramVec,
    pub headers_dropped: IntCounterVec,
    pub connections_refused: prometheus::IntCounter,
}

/// The gateway: where events go, where outcomes are read, who may ask.
pub struct Gateway<P, S> {
    pub publisher: P,
    pub store: Arc<S>,
    /// In front of the store's reads: an outage is answered at once, with when to come back.
    pub store_breaker: Breaker,
    pub codec: Arc<Codec>,
    pub keys: ApiKeys,
    /// Each API key's budget.
    pub limit: KeyedRateLimit,
    /// Each client address's budget for requests without a known key.
    pub anonymous_limit: KeyedRateLimit,
    pub settings: GatewaySettings,
    /// `txflow.events`.
    pub topic: String,
    pub metrics: Option<GatewayMetrics>,
}

/// The gateway's routes; anything else is a JSON 404 or 405.
pub fn routes<P: Publisher + 'static, S: Balances>(gateway: Arc<Gateway<P, S>>) -> Router {
    Router::new()
        .route("/v1/events", post(post_event::<P, S>))
        .route("/v1/events/batch", post(post_batch::<P, S>))
        .route("/v1/events/{event_id}", get(get_event::<P, S>))
        .route("/v1/accounts/{account_id}", get(get_account::<P, S>))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; GET /openapi.json lists them",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; GET /openapi.json lists them",
            )
        })
        .with_state(gateway)
}

/// An account as the API and `txflow accounts` show it.
pub fn account_json(account_id: &str, account: &Account) -> Value {
    json!({
        "account_id": account_id,
        "balance_minor": account.balance_minor,
        "currency": account.currency,
        "version": account.version,
    })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn post_event<P: Publisher, S: Balances>(
    State(gateway): State<Arc<Gateway<P, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gateway
        .serve("POST /v1/events", &headers, async {
            let value = gateway.read_json(&headers, body).await?;
            let event = gateway.event(&value)?;
            let trace = gateway.trace_context(&headers);
            let record = gateway.record(&event, &trace)?;
            let published = gateway.publisher.publish(vec![record]).await;
            match &published[..] {
                [Ok(at)] => Ok((
                    StatusCode::ACCEPTED,
                    Json(json!({
                        "event_id": event.event_id,
                        "status": "accepted",
                        "partition": at.partition,
                        "offset": at.offset,
                    })),
                )
                    .into_response()),
                [Err(e)] => Err(ApiError::from(e)),
                _ => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the log answered for a different number of records than sent",
                )),
            }
        })
        .await
}

async fn post_batch<P: Publisher, S: Balances>(
    State(gateway): State<Arc<Gateway<P, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gateway
        .serve("POST /v1/events/batch", &headers, async {
            let value = gateway.read_json(&headers, body).await?;
            let Some(items) = value.as_array() else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not_a_batch",
                    "a batch is a JSON array of events",
                ));
            };
            let max = gateway.settings.max_batch_events;
            if items.is_empty() || items.len() > max {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "batch_size",
                    format!("a batch holds 1 to {max} events, this one {}", items.len()),
                ));
            }
            let trace = gateway.trace_context(&headers);
            let mut entries: Vec<Option<Value>> = vec![None; items.len()];
            let mut records = Vec::with_capacity(items.len());
            let mut sent = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let checked = gateway
                    .event(item)
                    .and_then(|event| Ok((gateway.record(&event, &trace)?, event)));
                match checked {
                    Ok((record, event)) => {
                        records.push(record);
                        sent.push((index, event.event_id));
                    }
                    Err(error) => entries[index] = Some(entry_error(index, &error)),
                }
            }
            let published = gateway.publisher.publish(records).await;
            for ((index, event_id), outcome) in sent.into_iter().zip(published) {
                entries[index] = Some(match outcome {
                    Ok(at) => json!({
                        "index": index, "status": 202, "event_id": event_id,
                        "partition": at.partition, "offset": at.offset,
                    }),
                    Err(e) => entry_error(index, &ApiError::from(&e)),
                });
            }
            let entries: Vec<Value> = entries.into_iter().flatten().collect();
            let failed = entries.iter().filter(|e| e["status"] != 202).count();
            let status = if failed == 0 {
                StatusCode::ACCEPTED
            } else {
                StatusCode::MULTI_STATUS
            };
            Ok((
                status,
                Json(json!({
                    "accepted": entries.len() - failed,
                    "failed": failed,
                    "entries": entries,
                })),
            )
                .into_response())
        })
        .await
}

/// A batch entry that was not accepted.
fn entry_error(index: usize, error: &ApiError) -> Value {
    let mut entry = error.body();
    entry["index"] = json!(index);
    entry["status"] = json!(error.status.as_u16());
    entry
}

async fn get_event<P: Publisher, S: Balances>(
    State(gateway): State<Arc<Gateway<P, S>>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    gateway
        .serve("GET /v1/events/{event_id}", &headers, async {
            path_id("event_id", &event_id)?;
            let mut outcomes = gateway
                .store_breaker
                .guard(None, gateway.store.outcomes(&event_id))
                .await?;
            if outcomes.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "event_not_found",
                    format!("no outcome is recorded for event {event_id:?} (yet: an accepted event has one once the ledger applied or rejected it)"),
                ));
            }
            // By account, and on an account in the order they were recorded: a transfer's
            // debit before its reversal.
            outcomes.sort_by(|a, b| {
                (&a.account_id, a.account_version).cmp(&(&b.account_id, b.account_version))
            });
            Ok(Json(json!({"event_id": event_id, "outcomes": outcomes})).into_response())
        })
        .await
}

async fn get_account<P: Publisher, S: Balances>(
    State(gateway): State<Arc<Gateway<P, S>>>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    gateway
        .serve("GET /v1/accounts/{account_id}", &headers, async {
            path_id("account_id", &account_id)?;
            let account = gateway
                .store_breaker
                .guard(None, gateway.store.account(&account_id))
                .await?;
            match account {
                Some(account) => Ok(Json(account_json(&account_id, &account)).into_response()),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "account_not_found",
                    format!("account {account_id:?} has no applied event"),
                )),
            }
        })
        .await
}

impl<P: Publisher, S: Balances> Gateway<P, S> {
    /// Answers a request: the caller's key and rate first, then `work` within the request
    /// timeout; counted and timed by route.
    async fn serve(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        work: impl Future<Output = Result<Response, ApiError>>,
    ) -> Response {
        let started = Instant::now();
        let response = match self.admit(headers) {
            Err(refused) => refused.into_response(),
            Ok(()) => match tokio::time::timeout(self.settings.request_timeout, work).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => error.into_response(),
                Err(_) => ApiError::timeout(self.settings.request_timeout).into_response(),
            },
        };
        if let Some(metrics) = &self.metrics {
            metrics
                .requests
                .with_label_values(&[route, response.status().as_str()])
                .inc();
            metrics
                .seconds
                .with_label_values(&[route])
                .observe(started.elapsed().as_secs_f64());
        }
        response
    }

    /// A known key within its rate.
    fn admit(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let key = self.keys.identify(headers)?;
        self.limit.check(key).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("API key {key:?} is over its request rate; wait {wait:?}"),
            )
            .retry_after(wait)
        })
    }

    /// The request body as JSON: UTF-8, within the size limit, arrived within the body
    /// timeout, each key once per object.
    async fn read_json(&self, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
        json_content_type(headers)?;
        let max = self.settings.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {max} bytes (gateway.max_body_bytes)"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|length| length > max) {
            return Err(too_large());
        }
        let timeout = self.settings.body_timeout;
        let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, max))
            .await
            .map_err(|_| ApiError::body_timeout(timeout))?
            .map_err(|_| too_large())?;
        strict_json::parse(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON as the gateway reads it: {e}"),
            )
        })
    }

    fn event(&self, value: &Value) -> Result<TransactionEvent, ApiError> {
        let schema = self.codec.schema(Record::TransactionEvent).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no TransactionEvent schema in the catalog",
            )
        })?;
        let admission = Admission {
            currencies: &self.settings.currencies,
            now_ms: crate::pipeline::now_ms(),
            max_age: self.settings.occurred_at_max_age,
            max_ahead: self.settings.occurred_at_max_ahead,
        };
        event_from_json(value, schema, &admission).map_err(ApiError::invalid_event)
    }

    /// The request's W3C trace context, as headers of its records: only values in the
    /// standard's form; anything else is dropped and counted, never stored as sent.
    fn trace_context(&self, headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut carried = Vec::new();
        let parents: Vec<&[u8]> = headers
            .get_all(TRACEPARENT)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        match parents[..] {
            [] => {}
            [one] => match trace_context::traceparent(one) {
                Some(valid) => carried.push((TRACEPARENT.to_owned(), valid.to_vec())),
                None => self.dropped(TRACEPARENT),
            },
            _ => self.dropped(TRACEPARENT),
        }
        let states: Vec<&[u8]> = headers
            .get_all(TRACESTATE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if !states.is_empty() {
            let state = states.join(&b","[..]);
            if !carried.is_empty() && trace_context::tracestate_is_valid(&state) {
                carried.push((TRACESTATE.to_owned(), state));
            } else {
                self.dropped(TRACESTATE);
            }
        }
        carried
    }

    fn dropped(&self, name: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.headers_dropped.with_label_values(&[name]).inc();
        }
    }

    /// The record of `event` on the events topic: keyed by its account, Avro in the Confluent
    /// wire format, with the request's trace context.
    fn record(
        &self,
        event: &TransactionEvent,
        trace: &[(String, Vec<u8>)],
    ) -> Result<OutputRecord, ApiError> {
        let value = self
            .codec
            .encode(Record::TransactionEvent, event)
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
        let span = traces::record_span("gateway.accept", trace);
        traces::identify(&span, &event.event_id, &event.account_id);
        let mut headers = trace.to_vec();
        traces::carry(&span, &mut headers);
        Ok(OutputRecord {
            topic: self.topic.clone(),
            key: Some(event.account_id.as_bytes().to_vec()),
            value: Some(value),
            headers,
        })
    }
}

/// A body the gateway reads: `application/json`, in UTF-8 (the only charset JSON has, RFC
/// 8259 §8.1); a body declared in another charset is refused rather than misread.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_charset",
                format!("the body is declared as charset={value}; send it as UTF-8 (charset=utf-8, or no charset)"),
            ));
        }
    }
    Ok(())
}

/// An id taken from the path, by the rules of the ids in events.
fn path_id(field: &str, value: &str) -> Result<(), ApiError> {
    match id_problem(field, value) {
        None => Ok(()),
        Some(message) => Err(ApiError::invalid_request(vec![FieldError {
            field: field.to_owned(),
            message,
        }])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let document: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut documented: Vec<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .expect("methods")
                    .keys()
                    .filter(|m| m.as_str() != "parameters")
                    .map(|m| (m.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
