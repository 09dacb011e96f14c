//! The dashboards and alerts against a real Prometheus (Debian's `prometheus`) scraping the
//! four stages on the local stack under load (deposits also notified to a webhook receiver
//! here, paced): every dashboard panel's query returns series, every
//! alert and recording rule loads and evaluates, and each metric a rule watches exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use txflow::stages::gateway::keys::hash;
use txflow_tests::eventually;
use txflow_tests::monitoring::{prometheus, repo, WebhookSink};
use txflow_tests::process::{http, Pipeline};

const KEY: &str = "txf_test_key_for_the_observability_suite";

/// Every panel query of a dashboard file, with its variables set to match everything.
fn panel_queries(file: &Path) -> Vec<(String, String)> {
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("a dashboard")).expect("JSON");
    let mut queries = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$stage", ".+")
                .replace("$instance", ".+");
            queries.push((panel["title"].as_str().unwrap_or("").to_owned(), expr));
        }
    }
    queries
}

/// The metric names (and recorded series) a rule's expression reads.
fn metrics_read(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
            word.clear();
            continue;
        }
        if quoted {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if (word.starts_with("txflow") || word == "up") && c != '(' {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

#[test]
fn every_panel_and_rule_reads_series_a_loaded_pipeline_exports() {
    let pipeline = Pipeline::new(2);
    let hashed: String = hash(KEY).iter().map(|b| format!("{b:02x}")).collect();
    let gateway = pipeline.spawn_gateway_with(&[("TXFLOW_GATEWAY__API_KEYS__SUITE", &hashed)]);
    let gateway_address = gateway.logged_address("gateway listening");
    // Every deposit also goes, as a notification, to a webhook receiver here.
    let rules = std::env::temp_dir().join(format!("{}-rules.yaml", pipeline.keyspace));
    std::fs::write(
        &rules,
        format!(
            "rules:\n  - name: deposits\n    pattern: {{event_type: [DEPOSIT]}}\n    targets:\n      - topic: {}\n        webhook: sink\n      - topic: {}\n",
            pipeline.notifications_topic, pipeline.ledger_topic
        ),
    )
    .expect("a rules file");
    let router = pipeline.spawn_router_with(
        "r0",
        &[("TXFLOW_ROUTER__RULES_FILE", rules.to_str().unwrap())],
    );
    let ledger = pipeline.spawn_ledger("l0");
    let sink = WebhookSink::start();
    let notifier = pipeline.spawn_notifier_with(
        "n0",
        &[
            ("TXFLOW_NOTIFIER__ENDPOINTS__SINK__URL", sink.url.as_str()),
            (
                "TXFLOW_NOTIFIER__ENDPOINTS__SINK__SECRET",
                "a-secret-of-16-bytes-or-more",
            ),
            ("TXFLOW_NOTIFIER__ENDPOINTS__SINK__MAX_PER_SECOND", "50"),
        ],
    );
    let archive = std::env::temp_dir().join(format!("{}-archive", pipeline.keyspace));
    let archiver = pipeline.spawn_archiver_with(
        "a0",
        &[
            (
                "TXFLOW_ARCHIVER__STORAGE__URL",
                &format!("file://{}", archive.display()),
            ),
            ("TXFLOW_ARCHIVER__ROLL_MS", "2000"),
        ],
    );
    let mut producer = pipeline.spawn_produce(&["--duration", "40", "--rate", "200"]);
    let targets: Vec<String> = [&gateway, &router, &ledger, &notifier, &archiver]
        .iter()
        .map(|stage| stage.admin_address())
        .collect();
    let prometheus = prometheus(&targets, None);

    // Requests through the gateway, accepted and refused, for its page.
    let auth = format!("Bearer {KEY}");
    for i in 0..20 {
        let body = json!({
            "event_id": format!("obs-{i}"), "event_type": "DEPOSIT", "account_id": "obs-acct",
            "amount_minor": 100, "currency": "EUR", "occurred_at": txflow::pipeline::now_ms(),
            "source": "observability-suite",
        });
        http(
            &gateway_address,
            "POST",
            "/v1/events",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        );
    }
    http(
        &gateway_address,
        "POST",
        "/v1/events",
        &[("authorization", &auth)],
        b"{",
    );

    // Every target scraped, and the ledger's results measured end to end.
    eventually(
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            let up = prometheus.query("up{job=\"txflow\"} == 1");
            let measured = prometheus
                .query("sum(rate(txflow_end_to_end_seconds_count{stage=\"ledger\"}[1m])) > 0");
            (up.len() == targets.len() && !measured.is_empty()).then_some(())
        },
        || {
            format!(
                "Prometheus never saw the loaded pipeline:\n{}",
                prometheus.process.log_text()
            )
        },
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/grafana"))
        .expect("deploy/grafana")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "an overview and a page per stage: {files:?}"
    );
    let mut empty = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (title, expr) in panel_queries(file) {
            // A rate needs two scrapes in its window: give each query a few seconds.
            let answered = (0..20).any(|_| {
                let found = !prometheus.query(&expr).is_empty();
                if !found {
                    std::thread::sleep(Duration::from_secs(1));
                }
                found
            });
            if !answered {
                empty.push(format!("{name} / {title}: {expr}"));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "panels without series:\n{}",
        empty.join("\n")
    );

    // Every rule loaded and evaluated by Prometheus, and the metrics each one reads exist.
    let mut evaluated = 0;
    let mut missing = Vec::new();
    for rule in prometheus.rules() {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "rule {name}: {rule}");
        let expr = rule["query"].as_str().unwrap();
        prometheus.query(expr);
        for metric in metrics_read(expr) {
            let exists = format!("count({{__name__=\"{metric}\"}})");
            if prometheus.query(&exists).is_empty() {
                missing.push(format!("{name} reads {metric}, which has no series"));
            }
        }
        evaluated += 1;
    }
    assert!(
        evaluated >= 10,
        "every rule of deploy/prometheus/alerts.yml: {evaluated}"
    );
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    producer.kill();
}
