//! The notifier over an in-memory endpoint: what it sends, where failures go, and how the
//! breaker spares an endpoint that is down.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::codec::Record;
use crate::domain::{EventType, RetryPolicy, TransactionEvent};
use crate::pipeline::breaker::{BreakerConfig, CircuitState};
use crate::wire::{OutputRecord, ERROR_KIND, RETRY_DUE, RETRY_TIER, RULE, WEBHOOK};

/// Endpoints that answer each request with the status their script says, in turn (the last
/// one again once the script is spent), and remember what they were sent.
#[derive(Default)]
struct Receiver {
    scripts: Mutex<HashMap<String, Vec<u16>>>,
    received: Mutex<Vec<WebhookRequest>>,
}

impl Receiver {
    fn answering(url: &str, statuses: &[u16]) -> Self {
        let receiver = Receiver::default();
        receiver.script(url, statuses);
        receiver
    }

    fn script(&self, url: &str, statuses: &[u16]) {
        self.scripts
            .lock()
            .unwrap()
            .insert(url.to_owned(), statuses.to_vec());
    }

    fn received(&self, url: &str) -> Vec<WebhookRequest> {
        let received = self.received.lock().unwrap();
        received.iter().filter(|r| r.url == url).cloned().collect()
    }
}

impl Webhooks for &Receiver {
    async fn post(&self, request: &WebhookRequest) -> Result<(), DeliveryError> {
        self.received.lock().unwrap().push(request.clone());
        let mut scripts = self.scripts.lock().unwrap();
        let script = scripts.entry(request.url.clone()).or_insert(vec![200]);
        let status = if script.len() > 1 {
            script.remove(0)
        } else {
            script[0]
        };
        DeliveryError::from_status(status, "scripted")
    }
}

const OPS: &str = "http://ops.example/hook";
const AUDIT: &str = "http://audit.example/hook";
const SECRET: &[u8] = b"0123456789abcdef";

fn endpoint(name: &str, url: &str, failure_threshold: u32, open_for: Duration) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        url: url.to_owned(),
        secrets: vec![SECRET.to_vec()],
        pace: None,
        breaker: Breaker::new(
            format!("webhook:{name}"),
            BreakerConfig {
                failure_threshold,
                open_for,
            },
            None,
        ),
    }
}

fn notifier(receiver: &Receiver, open_for: Duration) -> Notifier<&Receiver> {
    Notifier::new(
        receiver,
        vec![
            endpoint("ops", OPS, 2, open_for),
            endpoint("audit", AUDIT, 2, open_for),
        ],
        Arc::new(Codec::builtin()),
        FailureRoutes {
            input: "txflow.notifications".into(),
            stage: "notifier",
            group: "txflow-notifier".into(),
            policy: RetryPolicy {
                tiers: vec![Duration::from_secs(1), Duration::from_secs(10)],
            },
        },
        NotifierSettings {
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
        },
        None,
    )
}

/// A notification of the router: a transformed JSON body for `webhook`.
fn notification(offset: i64, webhook: Option<&str>, body: &str) -> InputRecord {
    let mut headers = vec![
        (RULE.to_owned(), b"large-deposits".to_vec()),
        ("content-type".to_owned(), b"application/json".to_vec()),
    ];
    if let Some(webhook) = webhook {
        headers.push((WEBHOOK.to_owned(), webhook.as_bytes().to_vec()));
    }
    InputRecord {
        topic: "txflow.notifications".into(),
        partition: 2,
        offset,
        timestamp: Some(1_000),
        key: Some(b"acct-1".to_vec()),
        value: Some(body.as_bytes().to_vec()),
        headers,
    }
}

fn header<'a>(request: &'a WebhookRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn output_header(record: &OutputRecord, name: &str) -> Option<String> {
    record
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn now_s() -> i64 {
    crate::pipeline::now_ms() / 1000
}

#[tokio::test]
async fn a_delivery_is_signed_json_with_a_stable_id() {
    let receiver = Receiver::default();
    let notifier = notifier(&receiver, Duration::from_secs(5));
    let event = TransactionEvent {
        event_id: "e-1".into(),
        event_type: EventType::Deposit,
        account_id: "acct-1".into(),
        counterparty_account_id: None,
        amount_minor: 250_000,
        currency: "EUR".into(),
        occurred_at: 1_764_000_000_000,
        source: "test".into(),
        attributes: BTreeMap::new(),
    };
    let mut avro = notification(8, Some("audit"), "");
    avro.value = Some(
        Codec::builtin()
            .encode(Record::TransactionEvent, &event)
            .unwrap(),
    );
    avro.headers.retain(|(name, _)| name != "content-type");
    let batch = [notification(7, Some("ops"), r#"{"amount":250000}"#), avro];

    let output = notifier.process(&batch, 0).await.unwrap();
    assert!(output.outputs.is_empty());
    assert_eq!(output.counts.delivered, 2);

    let sent = &receiver.received(OPS)[0];
    assert_eq!(sent.body, br#"{"amount":250000}"#);
    assert_eq!(header(sent, ID_HEADER), Some("txflow.notifications/2/7"));
    assert_eq!(header(sent, ATTEMPT_HEADER), Some("1"));
    assert_eq!(header(sent, HTTP_RULE_HEADER), Some("large-deposits"));
    assert_eq!(header(sent, "content-type"), Some("application/json"));
    let signed = header(sent, signature::SIGNATURE_HEADER).unwrap();
    signature::verify(SECRET, signed, &sent.body, now_s(), 60).unwrap();

    let sent = &receiver.received(AUDIT)[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["event_id"], "e-1");
    assert_eq!(body["amount_minor"], 250_000);
    let signed = header(sent, signature::SIGNATURE_HEADER).unwrap();
    signature::verify(SECRET, signed, &sent.body, now_s(), 60).unwrap();
}

#[tokio::test]
async fn a_text_template_is_delivered_as_signed_text() {
    let receiver = Receiver::default();
    let notifier = notifier(&receiver, Duration::from_secs(5));
    let mut text = notification(9, Some("ops"), "acct-1 received 250000");
    text.headers.retain(|(name, _)| name != "content-type");
    text.headers.push((
        "content-type".to_owned(),
        b"text/plain; charset=utf-8".to_vec(),
    ));
    let output = notifier.process(&[text], 0).await.unwrap();
    assert_eq!(output.counts.delivered, 1);
    let sent = &receiver.received(OPS)[0];
    assert_eq!(sent.body, b"acct-1 received 250000");
    assert_eq!(
        header(sent, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    let signed = header(sent, signature::SIGNATURE_HEADER).unwrap();
    signature::verify(SECRET, signed, &sent.body, now_s(), 60).unwrap();
}

#[tokio::test]
async fn failures_go_to_the_tiers_or_the_dead_letters_by_their_class() {
    let receiver = Receiver::answering(OPS, &[503, 400, 200]);
    let notifier = notifier(&receiver, Duration::from_secs(5));
    let batch = [
        notification(1, Some("ops"), "{}"),
        notification(2, Some("ops"), "{}"),
        notification(3, None, "{}"),
        notification(4, Some("nowhere"), "{}"),
        notification(5, Some("ops"), "not json"),
        notification(6, Some("ops"), "{}"),
    ];
    let output = notifier.process(&batch, 0).await.unwrap();
    assert_eq!(
        output.counts,
        NotifierCounts {
            delivered: 1,
            retried: 1,
            dead_letters: 4
        }
    );
    let moved: Vec<(String, String)> = output
        .outputs
        .iter()
        .map(|r| (r.topic.clone(), output_header(r, ERROR_KIND).unwrap()))
        .collect();
    assert_eq!(
        moved,
        [
            ("txflow.notifications.retry.1", "endpoint_unavailable"),
            ("txflow.notifications.dlq", "endpoint_rejected"),
            ("txflow.notifications.dlq", "no_endpoint"),
            ("txflow.notifications.dlq", "no_endpoint"),
            ("txflow.notifications.dlq", "undecodable"),
        ]
        .map(|(t, k)| (t.to_owned(), k.to_owned()))
    );
    assert_eq!(
        receiver.received(OPS).len(),
        3,
        "nothing sent for bad records"
    );
}

#[tokio::test]
async fn a_retry_is_the_same_notification_with_its_next_attempt() {
    let receiver = Receiver::answering(OPS, &[503, 200]);
    let notifier = notifier(&receiver, Duration::from_secs(5));
    let first = notifier
        .process(&[notification(9, Some("ops"), "{}")], 0)
        .await
        .unwrap();
    let moved = &first.outputs[0];
    assert_eq!(output_header(moved, RETRY_TIER).as_deref(), Some("1"));
    let again = InputRecord {
        topic: moved.topic.clone(),
        partition: 2,
        offset: 0,
        timestamp: Some(2_000),
        key: moved.key.clone(),
        value: moved.value.clone(),
        headers: moved.headers.clone(),
    };
    let second = notifier.process(&[again], 1_000).await.unwrap();
    assert_eq!(second.counts.delivered, 1);
    let sent = receiver.received(OPS);
    assert_eq!(header(&sent[1], ID_HEADER), header(&sent[0], ID_HEADER));
    assert_eq!(header(&sent[1], ATTEMPT_HEADER), Some("2"));
}

#[tokio::test]
async fn an_endpoint_that_is_down_is_spared_and_holds_up_no_other() {
    let receiver = Receiver::answering(OPS, &[503]);
    let notifier = notifier(&receiver, Duration::from_millis(50));
    let batch: Vec<InputRecord> = (0..6)
        .map(|i| notification(i, Some(if i % 2 == 0 { "ops" } else { "audit" }), "{}"))
        .collect();
    let output = notifier.process(&batch, 0).await.unwrap();
    assert_eq!(output.counts.delivered, 3, "audit got all of its own");
    assert_eq!(output.counts.retried, 3);
    assert_eq!(
        receiver.received(OPS).len(),
        2,
        "the breaker opened after 2 failures; the third was not sent"
    );
    let kinds: Vec<String> = output
        .outputs
        .iter()
        .map(|r| output_header(r, ERROR_KIND).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "endpoint_unavailable",
            "endpoint_unavailable",
            "circuit_open"
        ]
    );
    let due: i64 = output_header(&output.outputs[2], RETRY_DUE)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        due >= 40,
        "a refused delivery is due once the breaker probes again, not before: {due}"
    );
    assert_eq!(
        notifier.endpoints["ops"].breaker.state(),
        CircuitState::Open
    );

    // Once the breaker lets a probe through, a healthy endpoint closes it and takes the rest.
    receiver.script(OPS, &[200]);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let again: Vec<InputRecord> = (10..13)
        .map(|i| notification(i, Some("ops"), "{}"))
        .collect();
    let output = notifier.process(&again, 0).await.unwrap();
    assert_eq!(output.counts.delivered, 3);
    assert_eq!(
        notifier.endpoints["ops"].breaker.state(),
        CircuitState::Closed
    );
}
