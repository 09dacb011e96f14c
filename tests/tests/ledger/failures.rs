//! Store failures on the way: injected transient failures go through the retry tiers and are
//! applied exactly once; an account whose store calls keep failing ends in the dead letters
//! with everything an operator needs, and `txflow dlq redrive` applies it exactly once. A
//! retry record that claims to be due far in the future does not hold its partition.

use std::time::Duration;

use txflow::codec::{Codec, Record};
use txflow::domain::{EventType, TransactionEvent};
use txflow::wire::{
    ATTEMPTS, ERROR_KIND, GROUP, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC, RETRY_DUE,
    RETRY_TIER, STAGE,
};
use txflow_tests::invariants::{observe, verify, wait_until_drained, Observed};
use txflow_tests::process::{Pipeline, StageProcess};
use txflow_tests::{eventually, produce_committed_with_headers, read_topic};

fn tier_counts(pipeline: &Pipeline) -> Vec<usize> {
    (1..=3)
        .map(|n| {
            read_topic(
                &format!("{}.retry.{n}", pipeline.ledger_topic),
                "read_committed",
            )
            .len()
        })
        .collect()
}

#[test]
fn injected_store_failures_go_through_the_retry_tiers_and_apply_once() {
    let pipeline = Pipeline::new(3);
    let mut producer = pipeline.spawn_produce(&[
        "--count",
        "3000",
        "--rate",
        "500",
        "--accounts",
        "30",
        "--duplicates",
        "0.02",
    ]);
    let mut ledger =
        pipeline.spawn_ledger_with("l0", &[("TXFLOW_FAULTS__STORE_FAILURE_RATE", "0.2")]);
    producer.wait(Duration::from_secs(120));
    let mut observed = wait_until_drained(&pipeline, Duration::from_secs(180), &[&ledger]);
    let retries = ledger.metric("txflow_outputs_total{kind=\"retry\"");
    let parked = ledger.metric("txflow_outputs_total{kind=\"parked\"");
    let tiers = tier_counts(&pipeline);
    eprintln!(
        "retry outputs {retries}, parked {parked}, records per tier {tiers:?}, given up {}",
        observed.given_up.len()
    );
    assert!(retries > 0, "no event was retried:\n{}", ledger.log_text());
    assert!(tiers[0] > 0, "nothing went through the first tier");
    // Some events fail four times in a row at 20%; a failed attempt may even have written
    // before its batch was abandoned. A redrive, once the faults are gone, settles them all:
    // those written after all get their stored result published.
    if !observed.given_up.is_empty() {
        ledger.terminate();
        ledger = pipeline.spawn_ledger("l0");
        pipeline.txflow(&["dlq", "redrive", "--where", "kind=store_unavailable"]);
        observed = wait_until_resolved(&pipeline, &ledger);
    }
    verify(&pipeline, &observed);
    ledger.terminate();
}

#[test]
fn exhausted_retries_are_dead_lettered_then_redriven_exactly_once() {
    let pipeline = Pipeline::new(2);
    let mut producer =
        pipeline.spawn_produce(&["--count", "1500", "--rate", "500", "--accounts", "20"]);
    let mut ledger = pipeline.spawn_ledger_with(
        "l0",
        &[("TXFLOW_FAULTS__STORE_FAILING_ACCOUNTS", r#"["acct-7"]"#)],
    );
    producer.wait(Duration::from_secs(120));
    let observed = wait_until_drained(&pipeline, Duration::from_secs(180), &[&ledger]);
    assert!(!observed.given_up.is_empty(), "nothing was given up on");
    assert!(
        observed
            .given_up
            .iter()
            .all(|given| given.account == "acct-7"),
        "only the failing account is given up on: {:?}",
        observed.given_up
    );
    for letter in &observed.dead_letters {
        assert_eq!(
            letter.header(ERROR_KIND).as_deref(),
            Some("store_unavailable")
        );
        assert_eq!(letter.header(ATTEMPTS).as_deref(), Some("4"), "1 + 3 tiers");
        assert_eq!(letter.header(STAGE).as_deref(), Some("ledger"));
        assert!(letter.header(GROUP).is_some());
        assert_eq!(
            letter.header(ORIGINAL_TOPIC).as_deref(),
            Some(pipeline.ledger_topic.as_str())
        );
        assert!(letter.header(ORIGINAL_OFFSET).is_some());
    }
    verify(&pipeline, &observed);
    let tiers = tier_counts(&pipeline);
    eprintln!(
        "records per tier {tiers:?}, given up {}",
        observed.given_up.len()
    );
    let given_up = observed.given_up.len();

    let stats = pipeline.txflow(&["dlq", "stats"]);
    assert!(
        stats.contains(&format!("dead letters: {given_up}"))
            && stats
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["store_unavailable", &given_up.to_string()]),
        "{stats}"
    );
    let dry = pipeline.txflow(&[
        "dlq",
        "redrive",
        "--where",
        "kind=store_unavailable",
        "--dry-run",
    ]);
    assert_eq!(dry.lines().count(), given_up, "{dry}");
    assert_eq!(
        observe(&pipeline).results.len(),
        observed.results.len(),
        "a dry run writes nothing"
    );

    // The fault is gone: the same ledger instance, without it.
    ledger.terminate();
    ledger = pipeline.spawn_ledger("l0");
    pipeline.txflow(&[
        "dlq",
        "redrive",
        "--where",
        "kind=store_unavailable",
        "--rate",
        "1000",
    ]);
    let redriven = wait_until_resolved(&pipeline, &ledger);
    assert!(redriven.unresolved().is_empty());
    verify(&pipeline, &redriven);
    let balances = pipeline.txflow(&["accounts", "export"]);

    // A second redrive of the same dead letters is a set of re-sends: nothing changes.
    let consumed = ledger.metric("txflow_records_total");
    pipeline.txflow(&["dlq", "redrive", "--where", "kind=store_unavailable"]);
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || (ledger.metric("txflow_records_total") >= consumed + given_up as u64).then_some(()),
        || {
            format!(
                "the second redrive was not consumed:\n{}",
                ledger.log_text()
            )
        },
    );
    let again = observe(&pipeline);
    assert_eq!(again.results.len(), redriven.results.len(), "no new result");
    assert_eq!(
        pipeline.txflow(&["accounts", "export"]),
        balances,
        "no balance moved"
    );
    verify(&pipeline, &again);
    ledger.terminate();
}

/// Waits until every entry given up on has its result again.
fn wait_until_resolved(pipeline: &Pipeline, ledger: &StageProcess) -> Observed {
    eventually(
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            let observed = observe(pipeline);
            (observed.unresolved().is_empty() && observed.missing().is_empty()).then_some(observed)
        },
        || {
            format!(
                "redriven events were not applied: {:?}\n{}",
                observe(pipeline).unresolved(),
                ledger.log_text()
            )
        },
    )
}

#[test]
fn a_ledger_whose_retry_tier_is_missing_says_how_to_create_it() {
    let pipeline = Pipeline::new(1);
    // Topics were applied with three tiers; this ledger wants a fourth.
    let mut ledger = pipeline.spawn_ledger_with(
        "l0",
        &[("TXFLOW_LEDGER__RETRY_DELAYS_MS", "[200, 500, 1000, 2000]")],
    );
    let log = ledger.wait_for_failure(Duration::from_secs(60));
    let tier = format!("{}.retry.4", pipeline.ledger_topic);
    assert!(
        log.contains(&tier) && log.contains("txflow topics apply"),
        "{log}"
    );
}

#[test]
fn a_retry_record_claiming_a_due_time_in_a_year_is_handled_at_its_tiers_bound() {
    let pipeline = Pipeline::new(1);
    let tier = format!("{}.retry.1", pipeline.ledger_topic);
    let event = TransactionEvent {
        event_id: "due-in-a-year".to_owned(),
        event_type: EventType::Deposit,
        account_id: "A".to_owned(),
        counterparty_account_id: None,
        amount_minor: 700,
        currency: "EUR".to_owned(),
        occurred_at: 1_764_000_000_000,
        source: "hostile-retry".to_owned(),
        attributes: Default::default(),
    };
    let value = Codec::builtin()
        .encode(Record::TransactionEvent, &event)
        .unwrap();
    let in_a_year = (txflow::pipeline::now_ms() + 365 * 86_400_000).to_string();
    let headers: Vec<(&str, &[u8])> = vec![
        (ORIGINAL_TOPIC, pipeline.ledger_topic.as_bytes()),
        (ORIGINAL_PARTITION, b"0"),
        (ORIGINAL_OFFSET, b"0"),
        (ATTEMPTS, b"1"),
        (RETRY_TIER, b"1"),
        (RETRY_DUE, in_a_year.as_bytes()),
    ];
    produce_committed_with_headers(&tier, &[(Some(b"A"), &value, headers)]);

    let ledger = pipeline.spawn_ledger("l0");
    let applied = eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            read_topic(&pipeline.results_topic, "read_committed")
                .into_iter()
                .find(|r| r.key.as_deref() == Some(b"A".as_slice()))
        },
        || {
            format!(
                "the retry record held its partition past its tier's bound:\n{}",
                ledger.log_text()
            )
        },
    );
    assert!(applied.value.is_some());
    let counted = format!("txflow_retry_due_out_of_bounds_total{{topic=\"{tier}\"}}");
    assert_eq!(ledger.metric(&counted), 1, "{counted}");
}

#[test]
fn a_second_ledger_with_the_same_instance_id_is_refused_at_start() {
    let pipeline = Pipeline::new(1);
    let mut first = pipeline.spawn_ledger("l0");
    first.admin_address();
    // Two with one transactional id would fence each other's transactions in turn.
    let mut second = pipeline.spawn_ledger("l0");
    let log = second.wait_for_failure(Duration::from_secs(60));
    assert!(
        log.contains("already runs with transactional id")
            && log.contains("TXFLOW_LEDGER__INSTANCE_ID"),
        "{log}"
    );
    assert!(first.exit_status().is_none(), "{}", first.log_text());
    let (status, _) = first.admin_get("/healthz");
    assert_eq!(status, 200);
}
