//! The notifier stage against real Kafka and a real local HTTP receiver that checks every
//! signature and fails on demand: deliveries are retried through the tiers, the endpoint's
//! breaker opens while it is down and closes once it is back, refused and exhausted
//! deliveries land in the dead letters with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use txflow::stages::notifier::signature::{verify, SIGNATURE_HEADER};
use txflow::stages::notifier::{ATTEMPT_HEADER, ID_HEADER};
use txflow::wire::{RULE, WEBHOOK};
use txflow_tests::process::{Pipeline, StageProcess};
use txflow_tests::{eventually, produce_committed_with_headers, read_topic, ReadRecord};

const SECRET: &str = "test-signing-secret-0123456789";

/// The notifications of the first round whose first attempt the endpoint fails (503): two,
/// fewer than the breaker's threshold of three failures in a row, so that the breaker stays
/// closed in that round whatever order the concurrent answers complete in (with more, three
/// failures could complete back to back and open it, sparing a retry unsent).
fn fails_first_attempt(n: i64) -> bool {
    n < 100 && n % 20 == 0
}

/// One request the receiver answered.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    attempt: u32,
    /// The body's `n`.
    n: i64,
    status: u16,
}

/// An endpoint that checks signatures and answers by the rules of the test: while `down`,
/// 503 to everything; otherwise, for the first round of notifications (n < 100), 400 to
/// n ≡ 7 (mod 10) and 503 to the first attempt of those [`fails_first_attempt`]; 200 to the
/// rest.
#[derive(Default)]
struct Receiver {
    down: AtomicBool,
    received: Mutex<Vec<Received>>,
    bad_signatures: Mutex<Vec<String>>,
}

impl Receiver {
    fn answer(&self, headers: &HeaderMap, body: &[u8]) -> u16 {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if let Err(e) = verify(SECRET.as_bytes(), &text(SIGNATURE_HEADER), body, now, 300) {
            self.bad_signatures.lock().unwrap().push(e.to_string());
            return 401;
        }
        let n = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["n"].as_i64())
            .unwrap_or(-1);
        let attempt: u32 = text(ATTEMPT_HEADER).parse().unwrap_or(0);
        let status = if self.down.load(Ordering::SeqCst) {
            503
        } else if n < 100 && n % 10 == 7 {
            400
        } else if fails_first_attempt(n) && attempt == 1 {
            503
        } else {
            200
        };
        self.received.lock().unwrap().push(Received {
            id: text(ID_HEADER),
            attempt,
            n,
            status,
        });
        status
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The n of every notification answered 200, with how many times each was.
    fn delivered(&self) -> BTreeMap<i64, usize> {
        let mut delivered = BTreeMap::new();
        for r in self.received().iter().filter(|r| r.status == 200) {
            *delivered.entry(r.n).or_default() += 1;
        }
        delivered
    }
}

async fn hook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    StatusCode::from_u16(receiver.answer(&headers, &body)).unwrap()
}

/// Starts the receiver on a port of its own; returns its URL.
fn serve(runtime: &tokio::runtime::Runtime, receiver: Arc<Receiver>) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port for the receiver");
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver);
    runtime.spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/hook")
}

/// Notifications as the router writes them: JSON bodies `{"n": n}` for endpoint `webhook`.
fn notify(pipeline: &Pipeline, webhook: &str, numbers: impl Iterator<Item = i64>) {
    let bodies: Vec<(String, Vec<u8>)> = numbers
        .map(|n| {
            (
                format!("acct-{}", n % 5),
                format!(r#"{{"n":{n}}}"#).into_bytes(),
            )
        })
        .collect();
    let records: Vec<_> = bodies
        .iter()
        .map(|(key, body)| {
            (
                Some(key.as_bytes()),
                body.as_slice(),
                vec![
                    ("content-type", b"application/json".as_slice()),
                    (WEBHOOK, webhook.as_bytes()),
                    (RULE, b"test-rule".as_slice()),
                ],
            )
        })
        .collect();
    produce_committed_with_headers(&pipeline.notifications_topic, &records);
}

fn dead_letters(pipeline: &Pipeline) -> Vec<ReadRecord> {
    read_topic(
        &format!("{}.dlq", pipeline.notifications_topic),
        "read_committed",
    )
}

fn n_of(record: &ReadRecord) -> i64 {
    serde_json::from_slice::<serde_json::Value>(record.value.as_deref().unwrap_or_default())
        .ok()
        .and_then(|v| v["n"].as_i64())
        .unwrap_or(-1)
}

fn wait_until(what: &str, notifier: &StageProcess, mut done: impl FnMut() -> bool) {
    eventually(
        Duration::from_secs(90),
        Duration::from_millis(250),
        || done().then_some(()),
        || format!("{what}:\n{}", notifier.log_text()),
    );
}

#[test]
fn deliveries_are_signed_retried_spared_by_the_breaker_and_dead_lettered() {
    let pipeline = Pipeline::new(2);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the receiver");
    let receiver = Arc::new(Receiver::default());
    let url = serve(&runtime, receiver.clone());
    let notifier = pipeline.spawn_notifier_with(
        "n1",
        &[
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL", url.as_str()),
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET", SECRET),
            ("TXFLOW_NOTIFIER__BREAKER_FAILURE_THRESHOLD", "3"),
            ("TXFLOW_NOTIFIER__BREAKER_OPEN_MS", "1000"),
            ("TXFLOW_NOTIFIER__TIMEOUT_MS", "2000"),
        ],
    );

    // 1. A healthy endpoint that fails some first attempts and refuses some notifications.
    notify(&pipeline, "ops", 0..40);
    notify(&pipeline, "nowhere", 40..41);
    let expected: BTreeSet<i64> = (0..40).filter(|n| n % 10 != 7).collect();
    wait_until(
        "every deliverable notification delivered",
        &notifier,
        || {
            receiver
                .delivered()
                .keys()
                .copied()
                .collect::<BTreeSet<_>>()
                == expected
                && dead_letters(&pipeline).len() == 5
        },
    );
    let delivered = receiver.delivered();
    assert!(
        delivered.values().all(|times| *times == 1),
        "without a crash each notification is delivered once: {delivered:?}"
    );
    let received = receiver.received();
    for n in (0..40).filter(|&n| fails_first_attempt(n)) {
        let attempts: Vec<u32> = received
            .iter()
            .filter(|r| r.n == n)
            .map(|r| r.attempt)
            .collect();
        assert_eq!(attempts, [1, 2], "n={n} failed once, then was retried");
        let ids: BTreeSet<&str> = received
            .iter()
            .filter(|r| r.n == n)
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(ids.len(), 1, "one webhook id across attempts of n={n}");
    }
    let letters = dead_letters(&pipeline);
    let mut refused: Vec<(i64, String, String)> = letters
        .iter()
        .map(|r| {
            (
                n_of(r),
                r.header("txflow.error.kind").unwrap_or_default(),
                r.header("txflow.attempts").unwrap_or_default(),
            )
        })
        .collect();
    refused.sort();
    let expected_letters: Vec<(i64, String, String)> = [7, 17, 27, 37]
        .into_iter()
        .map(|n| (n, "endpoint_rejected".to_owned(), "1".to_owned()))
        .chain([(40, "no_endpoint".to_owned(), "1".to_owned())])
        .collect();
    assert_eq!(refused, expected_letters);

    // 2. The endpoint goes down: its breaker opens and spares it; every notification uses up
    // its tiers and lands in the dead letters.
    receiver.down.store(true, Ordering::SeqCst);
    let before = receiver.received().len();
    notify(&pipeline, "ops", 100..110);
    wait_until(
        "the notifications to a down endpoint dead-lettered",
        &notifier,
        || dead_letters(&pipeline).len() == 15,
    );
    let sent_while_down = receiver.received().len() - before;
    let letters: Vec<ReadRecord> = dead_letters(&pipeline)
        .into_iter()
        .filter(|r| n_of(r) >= 100)
        .collect();
    assert_eq!(letters.len(), 10);
    for letter in &letters {
        assert_eq!(letter.header("txflow.attempts").as_deref(), Some("4"));
        assert_eq!(letter.header("txflow.stage").as_deref(), Some("notifier"));
        let kind = letter.header("txflow.error.kind").unwrap_or_default();
        assert!(
            kind == "endpoint_unavailable" || kind == "circuit_open",
            "{kind}"
        );
    }
    let transitions = |to: &str| {
        notifier.metric(&format!(
            "txflow_circuit_transitions_total{{dependency=\"webhook:ops\",stage=\"notifier\",to=\"{to}\"}}"
        ))
    };
    let spared =
        notifier.metric("txflow_webhook_deliveries_total{endpoint=\"ops\",outcome=\"refused\"}");
    eprintln!(
        "while down: {sent_while_down} requests for 40 attempts, {spared} refused unsent, breaker opened {} times",
        transitions("open")
    );
    assert!(transitions("open") >= 1, "the breaker never opened");
    assert!(spared >= 1, "the breaker refused nothing");
    assert!(
        sent_while_down < 40,
        "the breaker spared the endpoint nothing: {sent_while_down} requests"
    );

    // 3. The endpoint is back: the breaker's probe closes it and deliveries go out again.
    receiver.down.store(false, Ordering::SeqCst);
    notify(&pipeline, "ops", 200..210);
    wait_until(
        "the notifications after the endpoint came back",
        &notifier,
        || (200..210).all(|n| receiver.delivered().contains_key(&n)),
    );
    assert!(transitions("closed") >= 1, "the breaker never closed");
    assert_eq!(
        notifier.metric("txflow_circuit_state{dependency=\"webhook:ops\",stage=\"notifier\"}"),
        0,
        "closed at the end"
    );
    assert_eq!(
        dead_letters(&pipeline).len(),
        15,
        "nothing more dead-lettered"
    );
    assert!(
        receiver.bad_signatures.lock().unwrap().is_empty(),
        "every request was signed: {:?}",
        receiver.bad_signatures.lock().unwrap()
    );
}
