//! The gateway against real Kafka and Cassandra, run as the `txflow` binary: bad requests get
//! their documented status and error body and write nothing; events posted over HTTP go
//! through the router and the ledger and their outcomes and balances read back over HTTP.

mod hostile;

use std::time::Duration;

use serde_json::{json, Value};
use txflow::stages::gateway::keys::hash;
use txflow::stages::gateway::ROUTES;
use txflow_tests::process::{http, HttpAnswer, Pipeline, StageProcess};
use txflow_tests::{eventually, read_topic};

/// When this run's events occurred: now, as the gateway admits only events near its clock,
/// and one time for the run, so that a re-sent event is the same event.
static OCCURRED_AT: std::sync::LazyLock<i64> = std::sync::LazyLock::new(txflow::pipeline::now_ms);

const KEY: &str = "txf_test_key_for_the_gateway_suite";

fn key_hash() -> String {
    hash(KEY).iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway of `pipeline` with the test key and `env`; its address once it listens.
fn gateway(pipeline: &Pipeline, env: &[(&str, &str)]) -> (StageProcess, String) {
    let hashed = key_hash();
    let mut all = vec![("TXFLOW_GATEWAY__API_KEYS__TESTER", hashed.as_str())];
    all.extend_from_slice(env);
    let process = pipeline.spawn_gateway_with(&all);
    let address = process.logged_address("gateway listening");
    (process, address)
}

fn bearer() -> String {
    format!("Bearer {KEY}")
}

fn post(address: &str, path: &str, body: &str) -> HttpAnswer {
    let auth = bearer();
    http(
        address,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn get(address: &str, path: &str) -> HttpAnswer {
    let auth = bearer();
    http(address, "GET", path, &[("authorization", &auth)], b"")
}

fn event(id: &str, kind: &str, account: &str, amount: i64) -> Value {
    json!({
        "event_id": id, "event_type": kind, "account_id": account, "amount_minor": amount,
        "currency": "EUR", "occurred_at": *OCCURRED_AT, "source": "gateway-test",
        "attributes": {"channel": "web"}
    })
}

/// Checks an error answer: its status, its `code`, and the fields it names.
fn assert_error(what: &str, answer: &HttpAnswer, status: u16, code: &str, fields: &[&str]) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    let body = answer.json();
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a message for people: {body}"
    );
    let named: Vec<&str> = body["error"]["fields"]
        .as_array()
        .map(|items| items.iter().filter_map(|f| f["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(named, fields, "{what}: {body}");
}

#[test]
fn bad_requests_get_their_documented_answer_and_write_nothing() {
    let pipeline = Pipeline::new(2);
    let (_gateway, address) = gateway(
        &pipeline,
        &[
            ("TXFLOW_GATEWAY__MAX_BODY_BYTES", "4096"),
            ("TXFLOW_GATEWAY__MAX_BATCH_EVENTS", "3"),
            ("TXFLOW_GATEWAY__REQUESTS_PER_SECOND", "1"),
            ("TXFLOW_GATEWAY__BURST", "40"),
        ],
    );
    let with = |change: &dyn Fn(&mut Value)| {
        let mut value = event("e-1", "DEPOSIT", "acct-1", 100);
        change(&mut value);
        value.to_string()
    };
    let cases: Vec<(&str, HttpAnswer, u16, &str, Vec<&str>)> = vec![
        (
            "malformed JSON",
            post(&address, "/v1/events", r#"{"event_id": "#),
            400,
            "malformed_json",
            vec![],
        ),
        (
            "wrong types",
            post(
                &address,
                "/v1/events",
                &with(&|v| {
                    v["amount_minor"] = json!("100");
                    v["attributes"] = json!({"channel": 1});
                }),
            ),
            400,
            "invalid_event",
            vec!["amount_minor", "attributes.channel"],
        ),
        (
            "missing fields",
            post(
                &address,
                "/v1/events",
                &with(&|v| {
                    let object = v.as_object_mut().unwrap();
                    object.remove("currency");
                    object.remove("source");
                }),
            ),
            400,
            "invalid_event",
            vec!["currency", "source"],
        ),
        (
            "unknown event_type",
            post(
                &address,
                "/v1/events",
                &with(&|v| v["event_type"] = json!("REFUND")),
            ),
            400,
            "invalid_event",
            vec!["event_type"],
        ),
        (
            "zero amount",
            post(
                &address,
                "/v1/events",
                &with(&|v| v["amount_minor"] = json!(0)),
            ),
            400,
            "invalid_event",
            vec!["amount_minor"],
        ),
        (
            "negative amount",
            post(
                &address,
                "/v1/events",
                &with(&|v| v["amount_minor"] = json!(-5)),
            ),
            400,
            "invalid_event",
            vec!["amount_minor"],
        ),
        (
            "bad currency code",
            post(
                &address,
                "/v1/events",
                &with(&|v| v["currency"] = json!("eur")),
            ),
            400,
            "invalid_event",
            vec!["currency"],
        ),
        (
            "an unknown field",
            post(&address, "/v1/events", &with(&|v| v["amount"] = json!(100))),
            400,
            "invalid_event",
            vec!["amount"],
        ),
        (
            "oversized body",
            post(
                &address,
                "/v1/events",
                &with(&|v| v["attributes"]["padding"] = json!("x".repeat(5000))),
            ),
            413,
            "body_too_large",
            vec![],
        ),
        (
            "oversized batch",
            post(
                &address,
                "/v1/events/batch",
                &Value::Array(
                    (0..4)
                        .map(|i| event(&format!("b-{i}"), "DEPOSIT", "acct-1", 1))
                        .collect(),
                )
                .to_string(),
            ),
            400,
            "batch_size",
            vec![],
        ),
        (
            "a batch that is not an array",
            post(&address, "/v1/events/batch", &with(&|_| {})),
            400,
            "not_a_batch",
            vec![],
        ),
        (
            "not JSON",
            http(
                &address,
                "POST",
                "/v1/events",
                &[("authorization", &bearer()), ("content-type", "text/plain")],
                with(&|_| {}).as_bytes(),
            ),
            415,
            "unsupported_media_type",
            vec![],
        ),
        (
            "no API key",
            http(
                &address,
                "POST",
                "/v1/events",
                &[("content-type", "application/json")],
                with(&|_| {}).as_bytes(),
            ),
            401,
            "unauthorized",
            vec![],
        ),
        (
            "a wrong API key",
            http(
                &address,
                "GET",
                "/v1/accounts/acct-1",
                &[("authorization", "Bearer txf_not_a_key")],
                b"",
            ),
            401,
            "unauthorized",
            vec![],
        ),
        (
            "an unknown route",
            get(&address, "/v1/nothing"),
            404,
            "not_found",
            vec![],
        ),
        (
            "a wrong method",
            http(
                &address,
                "DELETE",
                "/v1/events",
                &[("authorization", &bearer())],
                b"",
            ),
            405,
            "method_not_allowed",
            vec![],
        ),
        (
            "an event with no outcome",
            get(&address, "/v1/events/never-sent"),
            404,
            "event_not_found",
            vec![],
        ),
        (
            "an account with nothing applied",
            get(&address, "/v1/accounts/nobody"),
            404,
            "account_not_found",
            vec![],
        ),
    ];
    for (what, answer, status, code, fields) in &cases {
        assert_error(what, answer, *status, code, fields);
    }
    assert_eq!(
        cases[12].1.header("www-authenticate"),
        Some("Bearer realm=\"txflow\"")
    );

    // Every route of the OpenAPI document the gateway serves is a real route.
    let document = http(&address, "GET", "/openapi.json", &[], b"").json();
    for (method, path) in ROUTES {
        assert!(
            document["paths"][path][method.to_lowercase()].is_object(),
            "{method} {path} is not in the served document"
        );
        let concrete = path.replace("{event_id}", "x").replace("{account_id}", "x");
        let answer = match method {
            "GET" => get(&address, &concrete),
            _ => post(&address, &concrete, "{"),
        };
        let code = answer.json()["error"]["code"].clone();
        assert!(
            answer.status < 400 || (code != "not_found" && code != "method_not_allowed"),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }

    // Over the key's rate: 429 with Retry-After.
    let limited = eventually(
        Duration::from_secs(10),
        Duration::ZERO,
        || Some(get(&address, "/v1/accounts/acct-1")).filter(|a| a.status == 429),
        || "no request was ever refused for its rate".to_owned(),
    );
    assert_error("over the rate", &limited, 429, "rate_limited", &[]);
    let wait: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");

    assert!(
        read_topic(&pipeline.events_topic, "read_uncommitted").is_empty(),
        "a refused request wrote to {}",
        pipeline.events_topic
    );
}

#[test]
fn events_posted_over_http_are_applied_and_read_back() {
    let pipeline = Pipeline::new(2);
    let (gateway, address) = gateway(&pipeline, &[]);
    let _router = pipeline.spawn_router_with("r1", &[]);
    let _ledger = pipeline.spawn_ledger("l1");

    let deposit = event("http-1", "DEPOSIT", "acct-a", 10_000);
    let accepted = post(&address, "/v1/events", &deposit.to_string());
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.json()["event_id"], "http-1");

    let mut transfer = event("http-4", "TRANSFER", "acct-a", 1_000);
    transfer["counterparty_account_id"] = json!("acct-b");
    let batch = json!([
        event("http-2", "DEPOSIT", "acct-b", 500),
        event("http-3", "WITHDRAWAL", "acct-a", 2_500),
        transfer,
        event("http-5", "DEPOSIT", "acct-b", 0),
    ]);
    let answer = post(&address, "/v1/events/batch", &batch.to_string());
    assert_eq!(answer.status, 207, "{}", answer.body);
    let result = answer.json();
    assert_eq!(
        (result["accepted"].as_u64(), result["failed"].as_u64()),
        (Some(3), Some(1))
    );
    let statuses: Vec<u64> = result["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 202, 202, 400]);
    assert_eq!(
        result["entries"][3]["error"]["fields"][0]["field"],
        "amount_minor"
    );

    let outcome = |id: &str| {
        eventually(
            Duration::from_secs(90),
            Duration::from_millis(300),
            || Some(get(&address, &format!("/v1/events/{id}"))).filter(|a| a.status == 200),
            || format!("no outcome for {id}:\n{}", gateway.log_text()),
        )
        .json()
    };
    for id in ["http-1", "http-2", "http-3"] {
        let outcomes = outcome(id)["outcomes"].clone();
        assert_eq!(outcomes.as_array().unwrap().len(), 1, "{id}: {outcomes}");
        assert_eq!(outcomes[0]["status"], "APPLIED", "{id}: {outcomes}");
    }
    let legs: Vec<(String, String)> = eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let outcomes = outcome("http-4")["outcomes"].as_array().cloned()?;
            (outcomes.len() == 2).then(|| {
                outcomes
                    .iter()
                    .map(|o| {
                        (
                            o["account_id"].as_str().unwrap().to_owned(),
                            o["entry"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
        },
        || "the transfer's credit leg never showed".to_owned(),
    );
    assert_eq!(
        legs,
        [
            ("acct-a".to_owned(), "DEBIT".to_owned()),
            ("acct-b".to_owned(), "CREDIT".to_owned())
        ]
    );
    let balance = |account: &str| get(&address, &format!("/v1/accounts/{account}")).json();
    assert_eq!(balance("acct-a")["balance_minor"], 6_500);
    assert_eq!(balance("acct-b")["balance_minor"], 1_500);
    assert_eq!(balance("acct-b")["currency"], "EUR");

    // A re-send after, say, a timeout: accepted again, applied once.
    let again = post(&address, "/v1/events", &deposit.to_string());
    assert_eq!(again.status, 202);
    let marker = event("http-6", "DEPOSIT", "acct-a", 1);
    assert_eq!(
        post(&address, "/v1/events", &marker.to_string()).status,
        202
    );
    outcome("http-6");
    assert_eq!(balance("acct-a")["balance_minor"], 6_501);
    assert_eq!(
        read_topic(&pipeline.events_topic, "read_committed").len(),
        6,
        "every accepted event once on the events topic, the re-send included"
    );
}

/// The store failing every read: each read is answered 503 `store_unavailable` with a
/// `Retry-After`; once the breaker in front of the store opens, at once and with the time
/// until it lets a read through, rather than the fixed second of a single failure.
#[test]
fn a_store_outage_is_answered_with_when_to_come_back() {
    let pipeline = Pipeline::new(1);
    let (_gateway, address) = gateway(
        &pipeline,
        &[
            ("TXFLOW_FAULTS__STORE_FAILURE_RATE", "1"),
            ("TXFLOW_GATEWAY__STORE_BREAKER_FAILURE_THRESHOLD", "2"),
            ("TXFLOW_GATEWAY__STORE_BREAKER_OPEN_MS", "60000"),
        ],
    );
    let retry_after = |answer: &HttpAnswer| -> u64 {
        answer
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After on {}", answer.body))
            .parse()
            .expect("Retry-After in whole seconds")
    };
    for path in ["/v1/accounts/acct-a", "/v1/events/e-1"] {
        let answer = get(&address, path);
        assert_error("a failed read", &answer, 503, "store_unavailable", &[]);
        assert_eq!(retry_after(&answer), 1, "{}", answer.body);
        assert!(answer.body.contains("injected fault"), "{}", answer.body);
    }
    let refused = get(&address, "/v1/accounts/acct-a");
    assert_error("a refused read", &refused, 503, "store_unavailable", &[]);
    assert!(
        refused
            .body
            .contains("circuit breaker of the store is open"),
        "{}",
        refused.body
    );
    let wait = retry_after(&refused);
    assert!(
        (50..=60).contains(&wait),
        "Retry-After {wait}: {}",
        refused.body
    );
}
