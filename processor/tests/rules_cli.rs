//! `txflow rules test`, run as a user runs it: no service needed.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/rules")
        .join(name)
}

fn txflow(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_txflow"))
        .args(args)
        .env_remove("TXFLOW_CONFIG")
        .output()
        .expect("running txflow");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_example_rules_route_the_example_deposit() {
    let rules = example("rules.yaml");
    let event = example("deposit.json");
    let (ok, stdout, stderr) = txflow(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        event.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["rule"], "large-deposits");
    assert_eq!(lines[0]["topic"], "txflow.notifications");
    assert_eq!(lines[0]["webhook"], "ops");
    assert_eq!(
        lines[0]["payload"],
        serde_json::json!({"account": "acct-1", "amount": 250000, "channel": "web"})
    );
    assert_eq!(lines[1]["topic"], "txflow.ledger");
    assert_eq!(lines[1]["webhook"], serde_json::Value::Null);
    assert_eq!(lines[1]["payload"]["event_id"], "evt-0001");
}

#[test]
fn a_broken_rules_file_or_event_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("txflow-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        "rules: [{name: r, pattern: {amount_minor: [{numeric: ['<', 'ten']}]}, targets: [{topic: t}]}]",
    )
    .unwrap();
    let event = example("deposit.json");
    let (ok, _, stderr) = txflow(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        event.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("rule 1 (\"r\"): pattern at amount_minor[0].numeric"),
        "{stderr}"
    );

    let bad_event = dir.join("event.json");
    std::fs::write(&bad_event, r#"{"event_id": "e", "event_type": "GIFT"}"#).unwrap();
    let good_rules = example("rules.yaml");
    let (ok, _, stderr) = txflow(&[
        "rules",
        "test",
        good_rules.to_str().unwrap(),
        bad_event.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a transaction event"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
