//! A store outage in the middle of a workload (docs/CONTRACT.md §4, guarantee 5): the store's
//! circuit breaker opens and the ledger stops taking batches instead of spilling them into
//! the retry tiers and the dead letters, reports itself not ready, and carries on by itself
//! when the database returns, with every event applied once. Prometheus, evaluating txflow's
//! alert rules, notifies the breaker's alert through a real Alertmanager to a receiver in the
//! test, and its resolution once the database is back.
//!
//! It stops and restarts the Cassandra of `deploy/local/stack`, so it needs that stack (not
//! another CQL database) and runs alone in its own test binary.

use std::time::{Duration, Instant};

use txflow_tests::monitoring::{alertmanager, prometheus, WebhookSink};
use txflow_tests::process::Pipeline;
use txflow_tests::{invariants, stack, StackBack};

#[test]
fn a_store_outage_pauses_the_ledger_and_spills_nothing() {
    let pipeline = Pipeline::new(3);
    let mut producer = pipeline.spawn_produce(&[
        "--duration",
        "50",
        "--rate",
        "300",
        "--accounts",
        "30",
        "--duplicates",
        "0.02",
    ]);
    // A consumer that stops polling for longer than this is put out of its group: the
    // ledger must keep polling, with its partitions paused, through an outage of over a
    // minute.
    let mut ledger = pipeline.spawn_ledger_with(
        "l0",
        &[("TXFLOW_KAFKA__PROPERTIES__MAX.POLL.INTERVAL.MS", "10000")],
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        ledger.admin_get("/readyz").0,
        200,
        "ready before the outage"
    );

    // Prometheus with txflow's alert rules, notifying a receiver here through Alertmanager.
    let sink = WebhookSink::start();
    let alertmanager = alertmanager(&sink.url);
    let prometheus = prometheus(&[ledger.admin_address()], Some(&alertmanager.address));
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus.query("up{job=\"txflow\"} == 1").is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the ledger:\n{}",
            prometheus.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let restore = StackBack;
    stack(&["down", "cassandra"]);
    let outage = Instant::now();
    let deadline = outage + Duration::from_secs(20);
    loop {
        let (status, body) = ledger.admin_get("/readyz");
        if status == 503 && body.contains("circuit breaker of the store is open") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reported as paused by the breaker 20 s into the outage ({status} {body}):\n{}",
            ledger.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The outage lasts until the breaker's alert (open for a minute) reaches the receiver.
    let deadline = outage + Duration::from_secs(180);
    while sink.alerts("TxflowCircuitOpen", "firing").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no TxflowCircuitOpen notification {:?} into the outage; received: {:?}\nAlertmanager:\n{}",
            outage.elapsed(),
            sink.received.lock().unwrap(),
            alertmanager.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let firing = sink.alerts("TxflowCircuitOpen", "firing").remove(0);
    eprintln!(
        "TxflowCircuitOpen notified {:?} into the outage",
        outage.elapsed()
    );
    assert_eq!(firing["labels"]["dependency"], "store", "{firing}");
    assert_eq!(firing["labels"]["severity"], "critical", "{firing}");
    assert!(
        firing["annotations"]["runbook"]
            .as_str()
            .is_some_and(|r| r.starts_with("docs/OPERATIONS.md#")),
        "{firing}"
    );
    drop(restore);
    let back = Instant::now();

    producer.wait(Duration::from_secs(120));
    let observed = invariants::wait_until_drained(&pipeline, Duration::from_secs(240), &[&ledger]);
    eprintln!("drained {:?} after the database returned", back.elapsed());
    assert_eq!(
        ledger.admin_get("/readyz").0,
        200,
        "ready again after the outage"
    );
    let value = |prefix: &str| ledger.metric(prefix);
    let breaker = |to: &str| {
        value(&format!(
            "txflow_circuit_transitions_total{{dependency=\"store\",stage=\"ledger\",to=\"{to}\"}}"
        ))
    };
    let paused = value("txflow_batches_total{outcome=\"paused\"");
    eprintln!(
        "breaker opened {} times, half-opened {}, closed {}; {paused} batches paused",
        breaker("open"),
        breaker("half_open"),
        breaker("closed")
    );
    assert!(breaker("open") >= 1, "the breaker never opened");
    assert!(breaker("closed") >= 1, "the breaker never closed again");
    assert!(paused >= 1, "no batch waited for the breaker");
    assert_eq!(
        value("txflow_circuit_state{dependency=\"store\",stage=\"ledger\"}"),
        0,
        "closed at the end"
    );
    let assignments = ledger.log_lines_with("partitions assigned");
    assert_eq!(assignments, 1, "the ledger stayed in its group throughout");
    assert_eq!(
        value("txflow_outputs_total{kind=\"retry\""),
        0,
        "an outage spills nothing into the retry tiers"
    );
    // Resolved once the breaker closed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.alerts("TxflowCircuitOpen", "resolved").is_empty() {
        assert!(
            Instant::now() < deadline,
            "TxflowCircuitOpen never resolved; received: {:?}",
            sink.received.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    ledger.terminate();
    assert_eq!(observed.conflicts, 0);
    // verify() requires the dead letters to be exactly the conflicts and poison: none here.
    invariants::verify(&pipeline, &observed);
}
