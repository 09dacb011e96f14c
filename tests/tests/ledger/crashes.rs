//! SIGKILL at random moments, rebalances, and processes coming and going: every event's
//! effect still happens exactly once.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use txflow_tests::process::Pipeline;

use txflow_tests::invariants::{verify, wait_until_drained};

/// The seed of the random kill times: `TXFLOW_TEST_SEED` to replay a failed run.
fn rng(test: &str) -> StdRng {
    let seed = std::env::var("TXFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: TXFLOW_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

fn pause(rng: &mut StdRng, millis: std::ops::Range<u64>) {
    std::thread::sleep(Duration::from_millis(rng.random_range(millis)));
}

#[test]
fn sigkilled_and_restarted_ledger_applies_every_event_exactly_once() {
    let mut rng = rng("crash");
    let pipeline = Pipeline::new(3);
    let mut producer = pipeline.spawn_produce(&[
        "--count",
        "6000",
        "--rate",
        "1000",
        "--accounts",
        "40",
        "--duplicates",
        "0.03",
        "--conflicts",
        "0.01",
    ]);
    // Each batch waits 300 ms between its store writes and its commit, so that most kills
    // land where the store is ahead of Kafka: the hardest case.
    let faults = [("TXFLOW_FAULT_BEFORE_COMMIT_MS", "300")];
    let mut ledger = pipeline.spawn_ledger_with("l0", &faults);
    for _ in 0..5 {
        pause(&mut rng, 1000..3000);
        ledger.kill();
        pause(&mut rng, 0..500);
        ledger = pipeline.spawn_ledger_with("l0", &faults);
    }
    producer.wait(Duration::from_secs(120));
    let observed = wait_until_drained(&pipeline, Duration::from_secs(180), &[&ledger]);
    ledger.terminate();
    assert!(
        observed.duplicates > 0 && observed.conflicts > 0,
        "the workload re-sent events"
    );
    verify(&pipeline, &observed);
}

#[test]
fn ledgers_joining_and_leaving_the_group_apply_every_event_exactly_once() {
    let mut rng = rng("scale-out");
    let pipeline = Pipeline::new(6);
    let mut producer = pipeline.spawn_produce(&[
        "--count",
        "8000",
        "--rate",
        "1000",
        "--accounts",
        "60",
        "--duplicates",
        "0.02",
        "--conflicts",
        "0.01",
    ]);
    let mut first = pipeline.spawn_ledger("l0");
    pause(&mut rng, 1000..2000);
    let mut second = pipeline.spawn_ledger("l1");
    pause(&mut rng, 1000..2000);
    let mut third = pipeline.spawn_ledger("l2");
    pause(&mut rng, 1000..2000);
    second.kill();
    pause(&mut rng, 500..1500);
    first.terminate();
    pause(&mut rng, 500..1500);
    let mut second = pipeline.spawn_ledger("l1");
    pause(&mut rng, 1000..2000);
    third.kill();
    producer.wait(Duration::from_secs(120));
    let observed = wait_until_drained(&pipeline, Duration::from_secs(180), &[&second]);
    second.terminate();
    verify(&pipeline, &observed);
}
