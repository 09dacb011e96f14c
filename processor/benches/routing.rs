//! Events matched per second against rule sets of 10, 100 and 1,000 rules of mixed
//! operators (`match`), of rules naming no value an event must carry (`unindexed`: networks,
//! and exclusions beside `exists`), and of each rule shape alone (`shape/<name>`).
//! `cargo bench -p txflow --bench routing`; the numbers are recorded in docs/PERFORMANCE.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use txflow::routing::{CompiledPatterns, Pattern};

const EVENT_TYPES: [&str; 3] = ["DEPOSIT", "WITHDRAWAL", "TRANSFER"];
const CHANNELS: [&str; 4] = ["web", "app", "branch", "partner"];

/// Rule `i` of a set: one of eight shapes with values of its own, so that a bigger set does
/// not just repeat the same rules (each event matches a handful of rules whatever the size).
fn rule(i: usize) -> Pattern {
    let n = i as u64;
    let pattern = match i % 8 {
        0 => json!({"event_type": [EVENT_TYPES[i % 3]], "source": [format!("svc-{i}")]}),
        1 => json!({"source": [{"prefix": format!("svc-{i}.")}]}),
        2 => json!({"amount_minor": [{"numeric": [">=", n * 100, "<", n * 100 + 50]}]}),
        3 => {
            json!({"attributes": {"channel": [CHANNELS[i % 4]], "tier": [format!("t{i}")]}, "currency": [{"anything-but": ["EUR"]}]})
        }
        4 => json!({"account_id": [{"suffix": format!("-{i}")}]}),
        5 => json!({"source": [{"wildcard": format!("svc-{i}*")}], "event_type": ["TRANSFER"]}),
        6 => {
            json!({"currency": [{"equals-ignore-case": "usd"}], "attributes": {"tier": [format!("t{i}")]}})
        }
        _ => json!({"$or": [
            {"account_id": [format!("acct-{i}")]},
            {"attributes": {"campaign": [format!("c{i}")]}, "event_type": ["DEPOSIT"]}
        ]}),
    };
    Pattern::parse(&pattern).expect("a valid pattern")
}

/// Rule `i` of a shape, as JSON.
type Shape = fn(usize) -> Value;

/// The rule shapes, each alone: rule `i` of shape `name` with values of its own.
const SHAPES: [(&str, Shape); 12] = [
    ("exact", |i| json!({"source": [format!("svc-{i}")]})),
    (
        "prefix",
        |i| json!({"source": [{"prefix": format!("svc-{i}.")}]}),
    ),
    (
        "suffix",
        |i| json!({"account_id": [{"suffix": format!("-{i}")}]}),
    ),
    (
        "prefix-ignore-case",
        |i| json!({"source": [{"prefix": {"equals-ignore-case": format!("SVC-{i}.")}}]}),
    ),
    (
        "suffix-ignore-case",
        |i| json!({"account_id": [{"suffix": {"equals-ignore-case": format!("-X{i}")}}]}),
    ),
    (
        "equals-ignore-case",
        |i| json!({"source": [{"equals-ignore-case": format!("SVC-{i}")}]}),
    ),
    (
        "wildcard",
        |i| json!({"source": [{"wildcard": format!("svc-{i}*")}]}),
    ),
    (
        "numeric",
        |i| json!({"amount_minor": [{"numeric": [">=", i * 100, "<", i * 100 + 50]}]}),
    ),
    (
        "cidr",
        |i| json!({"attributes": {"ip": [{"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}]}}),
    ),
    ("anything-but-exists", |i| {
        json!({
            "source": [{"anything-but": {"prefix": format!("svc-{i}")}}],
            "attributes": {"campaign": [{"exists": true}]},
            "currency": [{"anything-but": ["EUR", "GBP"]}]
        })
    }),
    (
        "anything-but",
        |i| json!({"source": [{"anything-but": [format!("svc-{i}")]}], "attributes": {"tier": [format!("t{i}")]}}),
    ),
    (
        "or",
        |i| json!({"$or": [{"account_id": [format!("acct-{i}")]}, {"attributes": {"campaign": [format!("c{i}")]}}]}),
    ),
];

/// Rule `i` of a set naming no value an event must carry: a network, or exclusions beside
/// `exists`.
fn unindexed_rule(i: usize) -> Pattern {
    let pattern = match i % 2 {
        0 => json!({"attributes": {"ip": [{"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}]}}),
        _ => json!({
            "source": [{"anything-but": {"prefix": format!("svc-{i}")}}],
            "attributes": {"campaign": [{"exists": true}]},
            "currency": [{"anything-but": ["EUR", "GBP"]}]
        }),
    };
    Pattern::parse(&pattern).expect("a valid pattern")
}

fn events(count: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..count)
        .map(|i| {
            let mut attributes = json!({"channel": CHANNELS[rng.random_range(0..4)], "tier": format!("t{}", rng.random_range(0..1000))});
            if rng.random_bool(0.05) {
                attributes["campaign"] = json!(format!("c{}", rng.random_range(0..1000)));
            }
            json!({
                "event_id": format!("evt-{i}"),
                "event_type": EVENT_TYPES[rng.random_range(0..3)],
                "account_id": format!("acct-{}", rng.random_range(0..5000)),
                "counterparty_account_id": null,
                "amount_minor": rng.random_range(1..100_000),
                "currency": if rng.random_bool(0.8) { "EUR" } else { "USD" },
                "occurred_at": 1_764_000_000_000_i64 + i as i64,
                "source": format!("svc-{}", rng.random_range(0..1000)),
                "attributes": attributes,
            })
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut events = events(1000);
    let mut rng = StdRng::seed_from_u64(11);
    for event in &mut events {
        event["attributes"]["ip"] = json!(format!(
            "10.{}.{}.{}",
            rng.random_range(0..4),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ));
    }
    for (name, shape) in [
        ("match", rule as fn(usize) -> Pattern),
        ("unindexed", unindexed_rule),
    ] {
        bench_rule_sets(c, name, &shape, &events, &[10, 100, 1000]);
    }
    for (name, shape) in SHAPES {
        let parsed = |i| Pattern::parse(&shape(i)).expect("a valid pattern");
        bench_rule_sets(c, &format!("shape/{name}"), &parsed, &events, &[100, 1000]);
    }
}

fn bench_rule_sets(
    c: &mut Criterion,
    name: &str,
    shape: &dyn Fn(usize) -> Pattern,
    events: &[Value],
    sizes: &[usize],
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(events.len() as u64));
    for &rules in sizes {
        let patterns: Vec<Pattern> = (0..rules).map(shape).collect();
        let compiled = CompiledPatterns::compile(&patterns).expect("compiles");
        group.bench_with_input(
            BenchmarkId::from_parameter(rules),
            &compiled,
            |b, compiled| {
                b.iter(|| {
                    let mut matched = 0;
                    for event in events {
                        matched += compiled.matches(event).len();
                    }
                    matched
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
