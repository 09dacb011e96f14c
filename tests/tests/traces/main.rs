//! One trace per event, in a real Jaeger (v2, built by `deploy/local/stack`): the stages on
//! the local stack export over OTLP. An event posted to the gateway is one trace through the
//! router and the ledger, both legs of a transfer included; an event whose store writes fail
//! is one trace through its retries, and the ledger's log line for its dead letter names that
//! trace; an event produced by the Python producer with a
//! `traceparent` header continues the producer's trace.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use txflow::stages::gateway::keys::hash;
use txflow_tests::monitoring::jaeger;
use txflow_tests::process::{http, Pipeline};
use txflow_tests::{eventually, kafka_bootstrap, python};

const KEY: &str = "txf_test_key_for_the_traces_suite";

/// A span as a test looks at it.
#[derive(Debug)]
struct SpanSeen {
    trace: String,
    id: String,
    service: String,
    operation: String,
    parent: Option<String>,
    tags: BTreeMap<String, String>,
}

/// The spans of a Jaeger trace.
fn spans(trace: &Value) -> Vec<SpanSeen> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| SpanSeen {
            trace: span["traceID"].as_str().unwrap_or_default().to_owned(),
            id: span["spanID"].as_str().unwrap_or_default().to_owned(),
            service: processes[span["processID"].as_str().unwrap_or_default()]["serviceName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            operation: span["operationName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            parent: span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_owned),
            tags: span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let value = match &t["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (t["key"].as_str().unwrap_or_default().to_owned(), value)
                })
                .collect(),
        })
        .collect()
}

/// The first trace with a span of the gateway whose spans are as `wanted`.
fn gateway_trace(
    jaeger: &txflow_tests::monitoring::Jaeger,
    wanted: impl Fn(&[SpanSeen]) -> bool,
) -> Option<Vec<SpanSeen>> {
    jaeger
        .traces("txflow-gateway")
        .iter()
        .map(spans)
        .find(|seen| wanted(seen))
}

fn tag<'a>(span: &'a SpanSeen, key: &str) -> Option<&'a str> {
    span.tags.get(key).map(String::as_str)
}

fn post(gateway: &str, body: &Value) {
    let auth = format!("Bearer {KEY}");
    let answer = http(
        gateway,
        "POST",
        "/v1/events",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
}

fn event(id: &str, kind: &str, account: &str, counterparty: Option<&str>, amount: i64) -> Value {
    json!({
        "event_id": id, "event_type": kind, "account_id": account,
        "counterparty_account_id": counterparty, "amount_minor": amount, "currency": "EUR",
        "occurred_at": txflow::pipeline::now_ms(), "source": "traces-suite",
    })
}

#[test]
fn every_event_is_one_trace_across_the_stages() {
    let pipeline = Pipeline::new(2);
    let jaeger = jaeger();
    let prefix = pipeline.keyspace.clone();
    let failing = format!("{prefix}-failing");
    let exporting = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let hashed: String = hash(KEY).iter().map(|b| format!("{b:02x}")).collect();
    let mut gateway_env = exporting.to_vec();
    gateway_env.push(("TXFLOW_GATEWAY__API_KEYS__SUITE", &hashed));
    let gateway = pipeline.spawn_gateway_with(&gateway_env);
    let address = gateway.logged_address("gateway listening");
    let _router = pipeline.spawn_router_with("r0", &exporting);
    let failing_accounts = format!("[\"{failing}\"]");
    let mut ledger_env = exporting.to_vec();
    ledger_env.push(("TXFLOW_FAULTS__STORE_FAILING_ACCOUNTS", &failing_accounts));
    ledger_env.push(("TXFLOW_LEDGER__RETRY_DELAYS_MS", "[100, 200]"));
    ledger_env.push(("TXFLOW_LOG_FORMAT", "json"));
    let ledger = pipeline.spawn_ledger_with("l0", &ledger_env);

    let (payer, payee) = (format!("{prefix}-payer"), format!("{prefix}-payee"));
    post(
        &address,
        &event("t-open-payer", "DEPOSIT", &payer, None, 10_000),
    );
    post(&address, &event("t-open-payee", "DEPOSIT", &payee, None, 1));
    let auth = format!("Bearer {KEY}");
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let path = format!("/v1/accounts/{payee}");
            (http(&address, "GET", &path, &[("authorization", &auth)], b"").status == 200)
                .then_some(())
        },
        || format!("the payee never opened:\n{}", ledger.log_text()),
    );
    post(
        &address,
        &event("t-transfer", "TRANSFER", &payer, Some(&payee), 2_500),
    );
    post(
        &address,
        &event("t-retried", "DEPOSIT", &failing, None, 700),
    );

    // An outside producer's event, with its own trace.
    let events_file = std::env::temp_dir().join(format!("{prefix}-traced.jsonl"));
    let produced = event("t-produced", "DEPOSIT", &payer, None, 300);
    writeln!(
        std::fs::File::create(&events_file).expect("an events file"),
        "{produced}"
    )
    .unwrap();
    let output = python()
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/produce_events.py"))
        .args([
            "--bootstrap",
            &kafka_bootstrap(),
            "--topic",
            &pipeline.events_topic,
        ])
        .arg("--events")
        .arg(&events_file)
        .arg("--trace")
        .output()
        .expect("the Python producer runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("the producer's line");
    let traceparent = printed["traceparent"]
        .as_str()
        .expect("a traceparent")
        .to_owned();
    let producer_trace = traceparent.split('-').nth(1).unwrap().to_owned();
    let producer_span = traceparent.split('-').nth(2).unwrap().to_owned();

    // The transfer: one trace, rooted at the gateway, through the router to both legs.
    let transfer = eventually(
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            gateway_trace(&jaeger, |seen| {
                let accepted = seen.iter().any(|s| {
                    s.operation == "gateway.accept" && tag(s, "event_id") == Some("t-transfer")
                });
                let credited = seen.iter().any(|s| {
                    s.operation == "ledger.settle" && tag(s, "account_id") == Some(payee.as_str())
                });
                accepted && credited
            })
        },
        || {
            format!(
                "no trace of t-transfer with its credit leg; gateway traces: {:?}\nJaeger:\n{}",
                jaeger
                    .traces("txflow-gateway")
                    .iter()
                    .map(|t| spans(t)
                        .into_iter()
                        .map(|s| s.operation)
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
                jaeger.process.log_text()
            )
        },
    );
    let services: BTreeSet<&str> = transfer.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["txflow-gateway", "txflow-router", "txflow-ledger"]),
        "{transfer:#?}"
    );
    let settled: BTreeSet<&str> = transfer
        .iter()
        .filter(|s| s.operation == "ledger.settle")
        .filter_map(|s| tag(s, "account_id"))
        .collect();
    assert_eq!(
        settled,
        BTreeSet::from([payer.as_str(), payee.as_str()]),
        "both legs"
    );
    assert!(
        transfer
            .iter()
            .any(|s| s.operation == "store.conditional_write"
                && tag(s, "operation") == Some("record")),
        "the ledger's conditional write is in the trace: {transfer:#?}"
    );
    // One tree: a single root, every other span's parent in the trace.
    let ids: BTreeSet<&str> = transfer.iter().map(|s| s.id.as_str()).collect();
    let roots: Vec<&SpanSeen> = transfer.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    assert_eq!(roots[0].operation, "gateway.accept");
    for span in &transfer {
        if let Some(parent) = &span.parent {
            assert!(
                ids.contains(parent.as_str()),
                "{span:?} has its parent outside"
            );
        }
    }

    // The event whose writes fail: its first attempt and each retry in its trace.
    let retried = eventually(
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            gateway_trace(&jaeger, |seen| {
                let ours = seen.iter().any(|s| tag(s, "event_id") == Some("t-retried"));
                let attempts = seen
                    .iter()
                    .filter(|s| s.operation == "ledger.settle")
                    .count();
                ours && attempts >= 3
            })
        },
        || "t-retried's trace never held its three attempts (first, two retries)".to_owned(),
    );
    // Its last attempt sent it to the dead letters; the ledger's JSON log line says so in
    // that attempt's span, by trace and span id.
    let attempts: BTreeSet<&str> = retried
        .iter()
        .filter(|s| s.operation == "ledger.settle")
        .map(|s| s.id.as_str())
        .collect();
    let logged = ledger.log_text();
    let dead_lettered: Vec<Value> = logged
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("a record went to the dead letters"))
                && line["span"]["event_id"] == "t-retried"
        })
        .collect();
    assert_eq!(dead_lettered.len(), 1, "one dead letter logged:\n{logged}");
    let ids = &dead_lettered[0]["span"];
    assert_eq!(
        ids["trace_id"].as_str(),
        retried.first().map(|s| s.trace.as_str()),
        "{ids}"
    );
    assert!(
        ids["span_id"]
            .as_str()
            .is_some_and(|id| attempts.contains(id)),
        "the log names one of the attempts' spans {attempts:?}: {ids}"
    );

    // The produced event continues the producer's trace, under the producer's span.
    let produced = eventually(
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            let seen = spans(&jaeger.trace(&producer_trace)?);
            seen.iter()
                .any(|s| s.operation == "ledger.settle")
                .then_some(seen)
        },
        || format!("no trace {producer_trace} from the producer's traceparent"),
    );
    let routed = produced
        .iter()
        .find(|s| s.operation == "router.route")
        .expect("routed in the producer's trace");
    assert_eq!(routed.parent.as_deref(), Some(producer_span.as_str()));
    assert_eq!(tag(routed, "event_id"), Some("t-produced"));
}
