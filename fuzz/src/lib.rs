//! Fuzz targets: each a function of bytes for one thing txflow reads from outside, which must
//! not panic whatever it is given and whose results keep their invariants. `fuzz/run` runs
//! them under libFuzzer (`fuzz_targets/`, coverage-guided, on a stable toolchain);
//! `tests/replay.rs` runs the committed corpus and every input that once failed through them
//! on every `cargo test`.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use txflow::app::Config;
use txflow::codec::{Codec, Record};
use txflow::domain::{FailureKind, RetryPolicy, TransactionEvent};
use txflow::failures::dead_letters::{DeadLetter, Filter};
use txflow::failures::routes::FailureRoutes;
use txflow::routing::{CompiledPatterns, Pattern, Rules};
use txflow::stages::gateway::event_json::{event_from_json, Admission};
use txflow::stages::gateway::strict_json;
use txflow::wire::InputRecord;

/// A fuzz target: bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by name, as `fuzz/run` and the corpus directories name them.
pub const TARGETS: [(&str, Target); 6] = [
    ("avro_event", avro_event),
    ("gateway_json", gateway_json),
    ("rule_pattern", rule_pattern),
    ("rules_file", rules_file),
    ("config", config),
    ("dlq_headers", dlq_headers),
];

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(Codec::builtin)
}

/// Events a matcher is tried on besides the fuzzer's own.
fn sample_events() -> Vec<Value> {
    vec![
        json!({"event_id": "e-1", "event_type": "DEPOSIT", "account_id": "a", "amount_minor": 150000,
               "currency": "EUR", "occurred_at": 1, "source": "s", "attributes": {"channel": "web", "ip": "10.0.0.7"}}),
        json!({"event_type": "TRANSFER", "amount_minor": -3.5, "counterparty_account_id": null,
               "attributes": {}}),
        json!({"x": [1, "1", {"y": true}], "event_type": ["DEPOSIT"]}),
    ]
}

/// The Avro wire decoder: a record value as the ledger reads it. A value that decodes
/// re-encodes to a value that decodes to the same event.
pub fn avro_event(data: &[u8]) {
    let codec = codec();
    let _ = codec.valid_event(Some(data));
    if let Ok(event) = codec.decode::<TransactionEvent>(Record::TransactionEvent, data) {
        let _ = event.validate();
        let again = codec
            .encode(Record::TransactionEvent, &event)
            .expect("a decoded event encodes");
        let back: TransactionEvent = codec
            .decode(Record::TransactionEvent, &again)
            .expect("an encoded event decodes");
        assert_eq!(back, event);
        assert_eq!(back.fingerprint(), event.fingerprint());
    }
}

/// The gateway's JSON: the strict reader, then the schema and field checks. An event that
/// passes keeps every field rule.
pub fn gateway_json(data: &[u8]) {
    let Ok(value) = strict_json::parse(data) else {
        return;
    };
    let schema = codec()
        .schema(Record::TransactionEvent)
        .expect("the event schema");
    let every = BTreeSet::new();
    let admission = Admission {
        currencies: &every,
        now_ms: 1_764_000_000_000,
        max_age: Duration::from_secs(30 * 86_400),
        max_ahead: Duration::from_secs(300),
    };
    for candidate in std::iter::once(&value).chain(value.as_array().into_iter().flatten()) {
        if let Ok(event) = event_from_json(candidate, schema, &admission) {
            assert!(event.problems().is_empty(), "{event:?}");
        }
    }
}

/// An EventBridge pattern (JSON), then an event (JSON) after a NUL byte: the compiled
/// matcher agrees with the pattern's own reference matcher on it and on sample events.
pub fn rule_pattern(data: &[u8]) {
    let (pattern, event) = split_at_nul(data);
    let Ok(text) = std::str::from_utf8(pattern) else {
        return;
    };
    let Ok(pattern) = Pattern::parse_json(text) else {
        return;
    };
    let Ok(compiled) = CompiledPatterns::compile(std::slice::from_ref(&pattern)) else {
        return;
    };
    let mut events = sample_events();
    if let Some(event) = event.and_then(|e| serde_json::from_slice::<Value>(e).ok()) {
        events.push(event);
    }
    for event in &events {
        assert_eq!(
            !compiled.matches(event).is_empty(),
            pattern.matches(event),
            "the compiled matcher and the reference disagree on {event} for {text}"
        );
    }
}

/// A rules file (YAML), routed on sample events.
pub fn rules_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = Rules::parse_yaml(text) {
        for event in sample_events() {
            let _ = rules.route(&event);
        }
    }
}

/// A config file (TOML), then after a NUL byte `TXFLOW_…=value` lines as the environment.
pub fn config(data: &[u8]) {
    let (file, env) = split_at_nul(data);
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let env: Vec<(String, String)> = env
        .and_then(|e| std::str::from_utf8(e).ok())
        .unwrap_or("")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let _ = Config::parse(text, "the fuzzer", env);
}

/// A dead letter's headers (`name: value` lines, then after a NUL byte the value), read as
/// `txflow dlq` and the failure routes read them; the first line also as a `--where` filter.
pub fn dlq_headers(data: &[u8]) {
    let (head, value) = split_at_nul(data);
    let headers: Vec<(String, Vec<u8>)> = head
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..at]).trim().to_owned();
            Some((name, line[at + 1..].to_vec()))
        })
        .collect();
    let record = InputRecord {
        topic: "txflow.ledger.retry.1".to_owned(),
        partition: 0,
        offset: 7,
        timestamp: Some(1_764_000_000_000),
        key: Some(b"a".to_vec()),
        value: value.map(<[u8]>::to_vec),
        headers,
    };
    let _ = record.original_position();
    let _ = record.redriven_from();
    let _ = record.retry_due(Duration::from_secs(60), 1_764_000_000_000);
    let routes = FailureRoutes {
        input: "txflow.ledger".to_owned(),
        stage: "ledger",
        group: "txflow-ledger".to_owned(),
        policy: RetryPolicy::from_millis(&[1000, 10_000]),
    };
    let _ = routes.origin(&record);
    let _ = routes.original_offset(&record);
    let mut rng = FixedRandom(7);
    let _ = routes.failed(
        &record,
        FailureKind::StoreUnavailable,
        "fuzzed",
        1_764_000_000_000,
        &mut rng,
    );
    let letter = DeadLetter::new(record, codec());
    let _ = letter.summary(1_764_000_000_000);
    let _ = letter.detail();
    let _ = letter.redriven(None, "run-1");
    if let Some(first) = head.split(|&b| b == b'\n').next() {
        if let Ok(filter) = String::from_utf8_lossy(first).parse::<Filter>() {
            let _ = filter.matches(&letter);
        }
    }
}

fn split_at_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    }
}

/// A random source that is not random: a fuzz target must be a function of its input.
struct FixedRandom(u64);

impl rand::RngCore for FixedRandom {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
        self.0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.next_u64() as u8;
        }
    }
}
