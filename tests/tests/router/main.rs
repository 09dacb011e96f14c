//! The router stage against real Kafka, run as the `txflow` binary: events fan out to the
//! targets of the rules they match exactly once, across SIGKILLs; a rules file that does not
//! load keeps the rules in force, a good one replaces them while the router runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use txflow::codec::{Codec, Record};
use txflow::domain::{EventType, TransactionEvent};
use txflow::wire::{RULE, WEBHOOK};
use txflow_tests::process::{Pipeline, StageProcess};
use txflow_tests::{eventually, read_topic, ReadRecord};

fn rules_file(pipeline: &Pipeline, name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.yaml", pipeline.keyspace));
    std::fs::write(&path, text).expect("writing a rules file");
    path
}

fn rules(pipeline: &Pipeline) -> String {
    format!(
        r#"
rules:
  - name: big-deposits
    pattern:
      event_type: [DEPOSIT]
      amount_minor: [{{numeric: [">=", 5000]}}]
    targets:
      - topic: {notifications}
        webhook: alerts
        input: {{event: $.event_id, amount: $.amount_minor}}
      - topic: {ledger}
  - name: transfers
    pattern: {{event_type: [TRANSFER]}}
    targets: [{{topic: {ledger}}}]
"#,
        notifications = pipeline.notifications_topic,
        ledger = pipeline.ledger_topic
    )
}

fn events_of(records: &[ReadRecord]) -> Vec<TransactionEvent> {
    let codec = Codec::builtin();
    records
        .iter()
        .map(|r| {
            codec
                .decode(
                    Record::TransactionEvent,
                    r.value.as_deref().unwrap_or_default(),
                )
                .expect("an event")
        })
        .collect()
}

/// Waits until `topic` holds at least `count` committed records.
fn wait_for(topic: &str, count: usize, stage: &StageProcess) -> Vec<ReadRecord> {
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || Some(read_topic(topic, "read_committed")).filter(|records| records.len() >= count),
        || {
            let held = read_topic(topic, "read_committed").len();
            format!(
                "{topic} holds {held} of {count} records:\n{}",
                stage.log_text()
            )
        },
    )
}

#[test]
fn events_fan_out_to_their_targets_exactly_once_across_crashes() {
    let pipeline = Pipeline::new(3);
    let path = rules_file(&pipeline, "rules", &rules(&pipeline));
    let env = [("TXFLOW_ROUTER__RULES_FILE", path.to_str().unwrap())];
    let mut producer = pipeline.spawn_produce(&[
        "--topic",
        &pipeline.events_topic,
        "--count",
        "4000",
        "--rate",
        "800",
        "--accounts",
        "50",
    ]);
    let seed = rand::random::<u64>();
    eprintln!("kill seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut router = pipeline.spawn_router_with("r0", &env);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..2500)));
        router.kill();
        router = pipeline.spawn_router_with("r0", &env);
    }
    producer.wait(Duration::from_secs(120));

    let sent = events_of(&read_topic(&pipeline.events_topic, "read_committed"));
    assert_eq!(sent.len(), 4000);
    let ledger = wait_for(&pipeline.ledger_topic, sent.len(), &router);
    let big: Vec<&TransactionEvent> = sent
        .iter()
        .filter(|e| e.event_type == EventType::Deposit && e.amount_minor >= 5000)
        .collect();
    let notifications = wait_for(&pipeline.notifications_topic, big.len(), &router);
    // Give a duplicate, were there one, the time to show.
    std::thread::sleep(Duration::from_secs(2));
    let ledger_again = read_topic(&pipeline.ledger_topic, "read_committed");
    assert_eq!(ledger_again.len(), ledger.len(), "nothing more arrived");
    router.terminate();

    // Every event on the ledger topic once, unchanged, keyed by its account, with the rule
    // that sent it (none for the default route).
    let on_ledger = events_of(&ledger_again);
    let mut expected: Vec<&TransactionEvent> = sent.iter().collect();
    let mut got: Vec<&TransactionEvent> = on_ledger.iter().collect();
    expected.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    got.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(got, expected, "the ledger topic holds each event once");
    for (record, event) in ledger_again.iter().zip(&on_ledger) {
        assert_eq!(record.key.as_deref(), Some(event.account_id.as_bytes()));
        let rule = record.header(RULE);
        let expected_rule = match event.event_type {
            EventType::Transfer => Some("transfers"),
            EventType::Deposit if event.amount_minor >= 5000 => Some("big-deposits"),
            _ => None,
        };
        assert_eq!(rule.as_deref(), expected_rule, "{event:?}");
    }

    // Each big deposit once on the notifications topic, transformed.
    let mut notified: BTreeMap<String, i64> = BTreeMap::new();
    for record in &notifications {
        let body: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap()).expect("a JSON body");
        let id = body["event"].as_str().unwrap().to_owned();
        assert!(
            notified
                .insert(id, body["amount"].as_i64().unwrap())
                .is_none(),
            "notified twice"
        );
        assert_eq!(
            record.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(record.header(WEBHOOK).as_deref(), Some("alerts"));
    }
    let expected: BTreeMap<String, i64> = big
        .iter()
        .map(|e| (e.event_id.clone(), e.amount_minor))
        .collect();
    assert_eq!(notified, expected);
    std::fs::remove_file(path).ok();
}

#[test]
fn a_bad_rules_file_keeps_the_rules_in_force_and_a_good_one_replaces_them() {
    let pipeline = Pipeline::new(1);
    let path = rules_file(&pipeline, "reload", &rules(&pipeline));
    let env = [("TXFLOW_ROUTER__RULES_FILE", path.to_str().unwrap())];
    let router = pipeline.spawn_router_with("r0", &env);
    let produce = |count: &str, id: &str| {
        pipeline.txflow(&[
            "produce",
            "--topic",
            &pipeline.events_topic,
            "--count",
            count,
            "--accounts",
            "5",
            "--id-prefix",
            id,
        ]);
    };
    let reloads = |outcome: &str| {
        router.metric(&format!(
            "txflow_rules_reloads_total{{outcome=\"{outcome}\"}}"
        ))
    };
    let wait_reload = |outcome: &str| {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || (reloads(outcome) > 0).then_some(()),
            || format!("no {outcome} reload:\n{}", router.log_text()),
        )
    };

    // Running, with the first rules loaded and the file's state noted.
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (router.log_lines_with("router running") > 0).then_some(()),
        || format!("not running:\n{}", router.log_text()),
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&path, "rules: [{name: broken, pattern: {x: [{prefx: 1}]}}]").unwrap();
    wait_reload("refused");
    produce("200", "before");
    let ledger = wait_for(&pipeline.ledger_topic, 200, &router);
    let routed_by_old = ledger
        .iter()
        .filter(|r| r.header(RULE).as_deref() == Some("transfers"))
        .count();
    assert!(routed_by_old > 0, "the old rules still route");

    // New rules: everything to the notifications topic, untransformed.
    std::fs::write(
        &path,
        format!(
            "rules: [{{name: all, pattern: {{event_type: [{{exists: true}}]}}, targets: [{{topic: {}}}]}}]",
            pipeline.notifications_topic
        ),
    )
    .unwrap();
    wait_reload("applied");
    produce("50", "after");
    // The old rule sent its transformed big deposits there too.
    let by_rule_all = || -> Vec<ReadRecord> {
        read_topic(&pipeline.notifications_topic, "read_committed")
            .into_iter()
            .filter(|r| r.header(RULE).as_deref() == Some("all"))
            .collect()
    };
    let by_new_rule = eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || Some(by_rule_all()).filter(|records| records.len() >= 50),
        || format!("{} of 50 routed by the new rule", by_rule_all().len()),
    );
    let after = events_of(&by_new_rule);
    assert_eq!(after.len(), 50);
    assert!(after.iter().all(|e| e.event_id.starts_with("after")));
    // Counted by rule once committed, which is a moment after the records are readable.
    let counted = || router.metric("txflow_routed_total{rule=\"all\"}");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (counted() >= 50).then_some(()),
        || format!("txflow_routed_total by rule: {}", counted()),
    );
    assert_eq!(counted(), 50, "txflow_routed_total by rule");
    std::fs::remove_file(path).ok();
}
