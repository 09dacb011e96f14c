//! The Python examples as a user runs them: the Avro producer (confluent-kafka and fastavro,
//! Confluent wire format) feeds the ledger, and the read_committed consumer reads every
//! result back; both agree with the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

mod registry;

use serde_json::Value;
use txflow_tests::process::Pipeline;
use txflow_tests::{kafka_bootstrap, python};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python")
        .join(name)
}

/// Runs an example to its end; its stdout as JSON lines.
fn run(script: &str, args: &[&str]) -> Vec<Value> {
    let output = python()
        .arg(example(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{script}: {e}: {line}")))
        .collect()
}

/// `read_results.py` on the pipeline's results topic until `expect` results came.
fn read_results(pipeline: &Pipeline, expect: usize, extra: &[&str]) -> Vec<Value> {
    let bootstrap = kafka_bootstrap();
    let expect = expect.to_string();
    let mut args = vec![
        "--bootstrap",
        &bootstrap,
        "--topic",
        &pipeline.results_topic,
        "--expect",
        &expect,
        "--idle",
        "90",
    ];
    args.extend_from_slice(extra);
    run("read_results.py", &args)
}

/// The distinct `event_id`s of events or results.
fn event_ids(values: &[Value]) -> BTreeSet<&str> {
    values
        .iter()
        .map(|v| v["event_id"].as_str().unwrap())
        .collect()
}

#[test]
fn the_python_producer_feeds_the_ledger_and_the_python_consumer_reads_every_result() {
    let pipeline = Pipeline::new(3);
    let _ledger = pipeline.spawn_ledger("l1");
    let bootstrap = kafka_bootstrap();
    let sent = run(
        "produce_events.py",
        &[
            "--bootstrap",
            &bootstrap,
            "--topic",
            &pipeline.ledger_topic,
            "--count",
            "300",
            "--accounts",
            "12",
        ],
    );
    assert_eq!(sent.len(), 300);
    let results = read_results(&pipeline, 300, &[]);
    assert_eq!(
        event_ids(&sent),
        event_ids(&results),
        "one result per event sent"
    );
    assert!(results
        .iter()
        .all(|r| r["status"] == "APPLIED" && r["entry"] == "CREDIT"));

    // Each account's balance is the sum of its deposits, in the results and in the store.
    let mut deposited: BTreeMap<String, i64> = BTreeMap::new();
    for event in &sent {
        *deposited
            .entry(event["account_id"].as_str().unwrap().to_owned())
            .or_default() += event["amount_minor"].as_i64().unwrap();
    }
    let mut last_balance: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for result in &results {
        let account = result["account_id"].as_str().unwrap().to_owned();
        let entry = (
            result["account_version"].as_i64().unwrap(),
            result["balance_after_minor"].as_i64().unwrap(),
        );
        let latest = last_balance.entry(account).or_insert(entry);
        *latest = (*latest).max(entry);
    }
    let from_results: BTreeMap<String, i64> = last_balance
        .into_iter()
        .map(|(account, (_, balance))| (account, balance))
        .collect();
    assert_eq!(from_results, deposited);
    let stored: BTreeMap<String, i64> = pipeline
        .txflow(&["accounts", "export"])
        .lines()
        .map(|line| {
            let account: Value = serde_json::from_str(line).unwrap();
            (
                account["account_id"].as_str().unwrap().to_owned(),
                account["balance_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(stored, deposited);
}
