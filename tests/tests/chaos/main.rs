//! The bank workload from an outside producer (the Python example, at a steady rate) through
//! a router and three ledgers on the cluster of `deploy/local/stack up --cluster` (three
//! Kafka nodes, three Cassandra nodes, every topic and row on all three), while one machine
//! or process at a time fails, with recovery between: the broker leading a busy ledger
//! partition SIGKILLed, the broker coordinating a ledger's transactions SIGKILLed, a broker
//! frozen past every session timeout, a Cassandra node SIGKILLed, a ledger frozen past
//! `max.poll.interval.ms` (a zombie), a rolling restart of the ledgers, every broker down
//! for 60 s. After each fault: nothing lost, nothing doubled, money conserved, one result per
//! event and account, no dead letter, every stage still running. Each fault's cost (no
//! result committed, the backlog's drain, produce → result p99) is printed as the table of
//! docs/RELIABILITY.md.
//!
//!     deploy/local/stack test --cluster -p txflow-tests --test chaos -- --nocapture
//!
//! TXFLOW_CHAOS_FAULTS=leader,coordinator,… runs some of the faults only.

mod cluster;
mod measure;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use txflow::loadgen::{Workload, WorkloadConfig};
use txflow::pipeline::now_ms;
use txflow_tests::process::{start_process, Pipeline, StageProcess};
use txflow_tests::{invariants, kafka_bootstrap, on_cluster, python, read_topic, stack};

use measure::{Cost, Timeline};

/// Events a second from the outside producer, through every phase.
const RATE: u32 = 20;
const LEDGERS: usize = 3;

/// The ledgers' settings on top of the pipeline's: a frozen member leaves its group after
/// the session timeout (6 s), and one that stops polling after 15 s.
const LEDGER_ENV: [(&str, &str); 1] = [("TXFLOW_KAFKA__PROPERTIES__MAX.POLL.INTERVAL.MS", "15000")];

struct Chaos {
    pipeline: Pipeline,
    workload: Workload,
    router: StageProcess,
    ledgers: Vec<StageProcess>,
    rows: Vec<String>,
}

/// What the stages' `/readyz` answered while a fault lasted: each asked every half second,
/// on a thread of its own, and a frozen one counted as not answering.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(stages: Vec<(String, String)>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let threads = stages
            .into_iter()
            .map(|(stage, address)| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let answer = readyz(&address).unwrap_or_else(|_| "no answer".to_owned());
                        seen.lock().unwrap().insert(format!("{stage}: {answer}"));
                        std::thread::sleep(Duration::from_millis(500));
                    }
                })
            })
            .collect();
        Watch {
            stop,
            seen,
            threads,
        }
    }

    fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a readiness watcher");
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// `/readyz` of the admin endpoints at `address`: status and body, or an error after 2 s.
fn readyz(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let limit = Duration::from_secs(2);
    let address: std::net::SocketAddr = address.parse().map_err(std::io::Error::other)?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, limit)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("not HTTP"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    Ok(format!("{status} {}", body.trim()))
}

impl Chaos {
    fn start() -> Chaos {
        assert!(
            on_cluster(),
            "the chaos suite runs on the cluster: deploy/local/stack test --cluster -p txflow-tests --test chaos"
        );
        let pipeline = Pipeline::new(LEDGERS as i32);
        let workload = Workload::new(WorkloadConfig {
            accounts: 60,
            seed: 23,
            duplicate_share: 0.02,
            conflict_share: 0.0,
            id_prefix: pipeline.keyspace.clone(),
            occurred_from_ms: now_ms(),
            ..WorkloadConfig::default()
        });
        let router = pipeline.spawn_router_with("r0", &[]);
        let ledgers = (0..LEDGERS)
            .map(|i| pipeline.spawn_ledger_with(&format!("l{i}"), &LEDGER_ENV))
            .collect();
        let chaos = Chaos {
            pipeline,
            workload,
            router,
            ledgers,
            rows: Vec::new(),
        };
        for stage in chaos.stages() {
            wait_ready(stage, Duration::from_secs(120));
        }
        chaos
    }

    fn stages(&self) -> Vec<&StageProcess> {
        std::iter::once(&self.router).chain(&self.ledgers).collect()
    }

    fn ledger_transactional_id(&self, i: usize) -> String {
        let group = &self.pipeline.config().ledger.group.group_id;
        format!("{group}-l{i}")
    }

    /// `seconds` of events from the outside producer; `fault` begins `lead` seconds in. Then
    /// the backlog drains, every invariant is checked, and the fault's cost recorded.
    fn phase(&mut self, name: &str, seconds: u32, fault: impl FnOnce(&mut Chaos)) {
        let lead = Duration::from_secs(8);
        eprintln!("chaos: {name}");
        let file = self.pipeline.logs.join(format!("{name}.jsonl"));
        {
            let mut out = std::fs::File::create(&file).expect("an events file");
            for _ in 0..seconds * RATE {
                serde_json::to_writer(&mut out, &self.workload.next_event().0).unwrap();
                writeln!(out).unwrap();
            }
        }
        let mut producer = python();
        producer
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../examples/python/produce_events.py"),
            )
            .args(["--bootstrap", &kafka_bootstrap()])
            .args(["--topic", &self.pipeline.events_topic])
            .arg("--events")
            .arg(&file)
            .args(["--rate", &RATE.to_string()])
            .stdout(std::process::Stdio::null());
        let phase_start = now_ms();
        let mut producer =
            start_process(producer, &self.pipeline.logs, &format!("producer-{name}"));
        std::thread::sleep(lead);
        let watch = Watch::start(
            self.stages()
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let stage = if i == 0 {
                        "router".to_owned()
                    } else {
                        format!("l{}", i - 1)
                    };
                    (stage, s.admin_address())
                })
                .collect(),
        );
        let fault_start = now_ms();
        fault(self);
        let fault_end = now_ms();
        let seen = watch.finish();
        producer.wait(Duration::from_secs(600));

        // Drained when every event the producer wrote has a result: the router's backlog
        // too, not only the ledger topic's.
        let timeline = txflow_tests::eventually(
            Duration::from_secs(300),
            Duration::from_secs(2),
            || {
                let timeline =
                    Timeline::read(&self.pipeline.events_topic, &self.pipeline.results_topic);
                (timeline.unanswered() == 0).then_some(timeline)
            },
            || {
                self.stages()
                    .iter()
                    .map(|s| s.log_text())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            },
        );
        let observed = invariants::wait_until_drained(
            &self.pipeline,
            Duration::from_secs(300),
            &self.stages(),
        );
        invariants::verify(&self.pipeline, &observed);
        let router_letters = read_topic(
            &format!("{}.dlq", self.pipeline.events_topic),
            "read_committed",
        );
        assert!(
            router_letters.is_empty(),
            "{name}: the router dead-lettered {} events",
            router_letters.len()
        );
        assert!(
            observed.dead_letters.is_empty() && observed.given_up.is_empty(),
            "{name}: {} dead letters, e.g. {:?}",
            observed.dead_letters.len(),
            observed.dead_letters.first().map(|r| &r.headers)
        );
        for stage in [&mut self.router]
            .into_iter()
            .chain(self.ledgers.iter_mut())
        {
            assert!(
                stage.exit_status().is_none(),
                "{name}: a stage ended:\n{}",
                stage.log_text()
            );
        }
        let cost = timeline.cost(phase_start, fault_start, fault_end);
        self.record(name, fault_end - fault_start, &cost, &seen);
    }

    fn record(&mut self, name: &str, lasted_ms: i64, cost: &Cost, seen: &BTreeSet<String>) {
        let seconds = |ms: i64| format!("{:.1} s", ms as f64 / 1000.0);
        let row = format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            seconds(lasted_ms),
            seconds(cost.unavailable_ms),
            seconds(cost.drained_after_ms),
            seconds(cost.p99_ms),
            seconds(cost.max_ms),
            cost.events,
            not_ready(seen),
        );
        eprintln!("{row}");
        self.rows.push(row);
    }

    fn pause_ledger(&mut self, i: usize, paused: Duration) {
        let pid = self.ledgers[i].pid().expect("a running ledger") as i32;
        // SAFETY: signals to a child process this test started.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        std::thread::sleep(paused);
        unsafe {
            libc::kill(pid, libc::SIGCONT);
        }
    }
}

/// Why the stages said they were not ready, in short, each with the stages that said it.
fn not_ready(seen: &BTreeSet<String>) -> String {
    const KINDS: [(&str, &str); 8] = [
        ("no answer", "not answering"),
        ("out of reach", "every broker out of reach"),
        ("made again", "producer made again"),
        ("circuit breaker", "store breaker open"),
        ("store is unavailable", "store unavailable"),
        (
            "transaction aborted",
            "transaction aborted, batch read again",
        ),
        ("Broker transport failure", "broker connection lost"),
        ("assigned", "waiting for partitions"),
    ];
    let mut said: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for line in seen {
        let Some((stage, answer)) = line.split_once(": ") else {
            continue;
        };
        if answer.starts_with("200") {
            continue;
        }
        let kind = KINDS
            .iter()
            .find(|(needle, _)| answer.contains(needle))
            .map_or("other", |(_, kind)| kind);
        said.entry(kind).or_default().insert(stage);
    }
    if said.is_empty() {
        return "ready throughout".to_owned();
    }
    said.iter()
        .map(|(kind, stages)| {
            format!(
                "{kind} ({})",
                stages.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn wait_ready(stage: &StageProcess, limit: Duration) {
    txflow_tests::eventually(
        limit,
        Duration::from_millis(250),
        || (stage.admin_get("/readyz").0 == 200).then_some(()),
        || stage.log_text(),
    );
}

/// Brings every node back however the test ends, so that the next run finds the cluster.
struct ClusterBack;

impl Drop for ClusterBack {
    fn drop(&mut self) {
        stack(&["up", "--cluster"]);
    }
}

fn chosen(fault: &str) -> bool {
    std::env::var("TXFLOW_CHAOS_FAULTS")
        .map(|faults| faults.split(',').any(|f| f.trim() == fault))
        .unwrap_or(true)
}

#[test]
fn the_bank_workload_survives_each_machine_of_the_clusters_failing() {
    let _back = ClusterBack;
    let mut chaos = Chaos::start();

    if chosen("leader") {
        chaos.phase("leader", 45, |chaos| {
            let leader = cluster::leader_of(&chaos.pipeline.ledger_topic, 0);
            eprintln!(
                "chaos: SIGKILL {leader}, the leader of {}/0",
                chaos.pipeline.ledger_topic
            );
            stack(&["node", "kill", &leader]);
            std::thread::sleep(Duration::from_secs(15));
            stack(&["node", "start", &leader]);
        });
    }
    if chosen("coordinator") {
        chaos.phase("coordinator", 45, |chaos| {
            let id = chaos.ledger_transactional_id(0);
            let coordinator = cluster::coordinator_of(&id);
            eprintln!("chaos: SIGKILL {coordinator}, the transaction coordinator of {id}");
            stack(&["node", "kill", &coordinator]);
            std::thread::sleep(Duration::from_secs(15));
            stack(&["node", "start", &coordinator]);
        });
    }
    if chosen("broker-paused") {
        chaos.phase("broker-paused", 45, |chaos| {
            let leader = cluster::leader_of(&chaos.pipeline.ledger_topic, 1);
            eprintln!("chaos: SIGSTOP {leader} for 25 s");
            stack(&["node", "pause", &leader]);
            std::thread::sleep(Duration::from_secs(25));
            stack(&["node", "resume", &leader]);
        });
    }
    if chosen("store-node") {
        chaos.phase("store-node", 45, |_| {
            stack(&["node", "kill", "cassandra-2"]);
            std::thread::sleep(Duration::from_secs(15));
            stack(&["node", "start", "cassandra-2"]);
        });
    }
    if chosen("zombie") {
        chaos.phase("zombie", 45, |chaos| {
            eprintln!("chaos: SIGSTOP ledger l1 for 25 s");
            chaos.pause_ledger(1, Duration::from_secs(25));
        });
    }
    if chosen("rolling") {
        chaos.phase("rolling", 60, |chaos| {
            for i in 0..LEDGERS {
                chaos.ledgers[i].terminate();
                chaos.ledgers[i] = chaos
                    .pipeline
                    .spawn_ledger_with(&format!("l{i}"), &LEDGER_ENV);
                wait_ready(&chaos.ledgers[i], Duration::from_secs(120));
            }
        });
    }
    if chosen("all-brokers") {
        chaos.phase("all-brokers", 90, |_| {
            stack(&["node", "kill", "kafka-1", "kafka-2", "kafka-3"]);
            std::thread::sleep(Duration::from_secs(60));
            stack(&["node", "start", "kafka-1", "kafka-2", "kafka-3"]);
        });
    }

    for stage in [&mut chaos.router]
        .into_iter()
        .chain(chaos.ledgers.iter_mut())
    {
        // A clean exit on SIGTERM: the process lived through every fault.
        stage.terminate();
    }
    eprintln!(
        "\n| fault | lasted | no result for | drained after | p99 produce → result | max | events | /readyz while it lasted (not 200) |\n|---|---|---|---|---|---|---|---|\n{}",
        chaos.rows.join("\n")
    );
}
