//! Kafka stopped in the middle of a workload and started again: the ledgers ride it out.
//! Neither process ends; each reports itself not ready while every broker is out of reach
//! and ready again after, and the workload is applied exactly once. Before, both ledgers
//! exited ("the log client cannot go on … AllBrokersDown") and had to be restarted by hand.
//!
//! It stops and restarts the Kafka of `deploy/local/stack`, so it needs that stack and runs
//! alone in its own test binary.

use std::time::{Duration, Instant};

use txflow_tests::process::{Pipeline, StageProcess};
use txflow_tests::{invariants, stack, StackBack};

fn wait_for_readiness(ledgers: &[&StageProcess], status: u16, reason: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    for ledger in ledgers {
        loop {
            let (seen, body) = ledger.admin_get("/readyz");
            if seen == status && body.contains(reason) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz answered {seen} {body:?}, not {status} with {reason:?}, within {limit:?}:\n{}",
                ledger.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn ledgers_ride_out_a_kafka_restart_and_apply_every_event_once() {
    let pipeline = Pipeline::new(3);
    pipeline
        .spawn_produce(&[
            "--count",
            "3000",
            "--accounts",
            "40",
            "--duplicates",
            "0.02",
        ])
        .wait(Duration::from_secs(120));
    // Slowed down, so that the outage falls in the middle of the workload.
    let slow = [("TXFLOW_LEDGER__MAX_STORE_WRITES_PER_SECOND", "150")];
    let mut ledgers = [
        pipeline.spawn_ledger_with("l0", &slow),
        pipeline.spawn_ledger_with("l1", &slow),
    ];
    wait_for_readiness(
        &[&ledgers[0], &ledgers[1]],
        200,
        "",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(3));

    let restore = StackBack;
    stack(&["down", "kafka"]);
    let outage = Instant::now();
    wait_for_readiness(
        &[&ledgers[0], &ledgers[1]],
        503,
        "out of reach",
        Duration::from_secs(30),
    );
    eprintln!("not ready {:?} into the outage", outage.elapsed());
    // Past the group's session timeout and the transaction timeout (10 s each).
    std::thread::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed()));
    for ledger in &mut ledgers {
        assert!(
            ledger.exit_status().is_none(),
            "a ledger ended during the outage:\n{}",
            ledger.log_text()
        );
    }
    drop(restore);
    let back = Instant::now();
    eprintln!("Kafka back after {:?}", outage.elapsed());

    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        invariants::wait_until_drained(
            &pipeline,
            Duration::from_secs(120),
            &[&ledgers[0], &ledgers[1]],
        )
    }));
    let observed = match drained {
        Ok(observed) => observed,
        Err(panic) => {
            for ledger in &ledgers {
                let (_, metrics) = ledger.admin_get("/metrics");
                let wanted: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("txflow_consumer_lag")
                            || l.starts_with("txflow_batches_total")
                            || l.starts_with("txflow_transactions_total")
                            || l.starts_with("txflow_stage_ready")
                            || l.starts_with("txflow_retry_waiting")
                    })
                    .collect();
                eprintln!(
                    "METRICS {}\n{}",
                    ledger.admin_get("/readyz").1,
                    wanted.join("\n")
                );
            }
            std::panic::resume_unwind(panic)
        }
    };
    eprintln!("drained {:?} after Kafka returned", back.elapsed());
    wait_for_readiness(
        &[&ledgers[0], &ledgers[1]],
        200,
        "",
        Duration::from_secs(60),
    );
    for ledger in &mut ledgers {
        // A clean exit on SIGTERM: the process lived through the outage.
        ledger.terminate();
    }
    invariants::verify(&pipeline, &observed);
}
