//! The hostile workload (`txflow::loadgen::hostile`) sent by an outside producer, the Python
//! example, while the ledger is SIGKILLed and restarted: ids re-used across accounts and
//! types, amounts at the limits, transfers into accounts opened a moment before, credits
//! refused and reversed. Every invariant holds; money is conserved to the cent.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use txflow::loadgen::hostile::{HostileConfig, HostileWorkload};
use txflow_tests::conformance::seed;
use txflow_tests::invariants::{verify, wait_until_drained};
use txflow_tests::process::Pipeline;
use txflow_tests::{cql_session, kafka_bootstrap, python};

#[test]
fn a_hostile_workload_from_the_python_producer_survives_sigkills_exactly_once() {
    let seed = seed("hostile end to end");
    let mut rng = StdRng::seed_from_u64(seed);
    let pipeline = Pipeline::new(3);
    let events = HostileWorkload::new(HostileConfig {
        seed,
        prefix: pipeline.keyspace.clone(),
    })
    .take(2500);
    let file = std::env::temp_dir().join(format!("{}.jsonl", pipeline.keyspace));
    {
        let mut out = std::fs::File::create(&file).expect("the events file");
        for event in &events {
            serde_json::to_writer(&mut out, event).unwrap();
            writeln!(out).unwrap();
        }
    }
    let mut command = python();
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/produce_events.py"))
        .args([
            "--bootstrap",
            &kafka_bootstrap(),
            "--topic",
            &pipeline.ledger_topic,
        ])
        .arg("--events")
        .arg(&file)
        .args(["--rate", "400"]);
    let mut producer = pipeline.start(command, "python-producer");
    // Most kills land where the store is ahead of Kafka: the hardest case.
    let faults = [("TXFLOW_FAULT_BEFORE_COMMIT_MS", "300")];
    let mut ledger = pipeline.spawn_ledger_with("l0", &faults);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..3000)));
        ledger.kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        ledger = pipeline.spawn_ledger_with("l0", &faults);
    }
    producer.wait(Duration::from_secs(120));
    let observed = wait_until_drained(&pipeline, Duration::from_secs(240), &[&ledger]);
    ledger.terminate();
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        observed.sent.len(),
        events.len(),
        "every event was delivered"
    );
    assert!(
        observed.results.iter().any(|r| r.is_reversal())
            && observed.expected_conflicts() > 0
            && observed
                .results
                .iter()
                .any(|r| r.reason.as_deref() == Some("balance_limit_exceeded")),
        "the workload re-used ids, hit the limit and reversed a transfer"
    );
    verify(&pipeline, &observed);

    // `txflow audit` finds the same ledger sound, and names an account whose balance was
    // altered in the store by hand.
    let passed = pipeline.txflow(&["audit"]);
    assert!(passed.contains("the audit passed"), "{passed}");
    let altered = observed
        .audit
        .accounts
        .iter()
        .find(|(_, account)| account.balance_minor > 0)
        .map(|(id, _)| id.clone())
        .expect("an account holding money");
    alter_balance(&pipeline.keyspace, &altered, 1);
    let failed = pipeline.txflow_failing(&["audit"]);
    assert!(
        failed.contains(&format!("store differs: account {altered:?}"))
            && failed.contains("first diverging result")
            && failed.contains("1 accounts where the store differs"),
        "{failed}"
    );
}

/// Adds `cents` to an account's balance in the store, as a careless operator could.
fn alter_balance(keyspace: &str, account_id: &str, cents: i64) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let session = cql_session().await;
        let read = format!("SELECT balance_minor FROM {keyspace}.ledger WHERE account_id = ?");
        let (balance,): (i64,) = session
            .query_unpaged(read, (account_id,))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .first_row()
            .unwrap();
        let write = format!("UPDATE {keyspace}.ledger SET balance_minor = ? WHERE account_id = ?");
        session
            .query_unpaged(write, (balance + cents, account_id))
            .await
            .unwrap();
    });
}
