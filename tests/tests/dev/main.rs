//! `txflow dev` as a user runs it: every stage in one process on the embedded database.
//! SIGKILLed at random moments while clients post over HTTP, it still applies every event
//! exactly once — the same invariants as the ledger on Kafka and Cassandra.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use txflow::adapters::embedded::remote::DevClient;
use txflow::adapters::embedded::Embedded;
use txflow::domain::ledger::MAX_BALANCE_MINOR;
use txflow::loadgen::{Workload, WorkloadConfig};
use txflow_tests::invariants::{observe_from, verify_stored, Observed, Source, StoredResult};
use txflow_tests::process::{start_process, try_http, txflow_command, StageProcess};
use txflow_tests::{unique_name, ReadRecord};

/// When this run's events occurred: now, as the gateway admits only events near its clock,
/// and one time for the run, so that a re-sent event is the same event.
static OCCURRED_AT: std::sync::LazyLock<i64> = std::sync::LazyLock::new(txflow::pipeline::now_ms);

struct Dev {
    dir: PathBuf,
    logs: PathBuf,
}

impl Dev {
    fn new() -> Dev {
        let name = unique_name("dev");
        Dev {
            dir: std::env::temp_dir().join(&name).join("data"),
            logs: std::env::temp_dir().join(&name),
        }
    }

    /// `txflow dev` on this data directory; waits until its gateway listens.
    fn start(&self) -> (StageProcess, String) {
        let mut command = txflow_command(&["dev", "--data-dir", self.dir.to_str().unwrap()]);
        command
            .env("TXFLOW_GATEWAY__LISTEN", "127.0.0.1:0")
            .env("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0")
            .env("TXFLOW_LEDGER__RETRY_DELAYS_MS", "[200, 500, 1000]")
            // Each batch waits between its store writes and its commit, so that kills land
            // where the store is ahead of the log: the hardest case.
            .env("TXFLOW_FAULT_BEFORE_COMMIT_MS", "50")
            .env("TXFLOW_LOG", "info,txflow=debug");
        let process = start_process(command, &self.logs, "dev");
        let address = process.logged_address("gateway listening");
        (process, address)
    }

    fn key(&self) -> String {
        std::fs::read_to_string(self.dir.join("dev-api-key"))
            .expect("the dev API key")
            .trim()
            .to_owned()
    }

    /// What the stopped pipeline's database holds.
    fn inspect(&self) -> (Observed, Vec<StoredResult>) {
        let embedded = Embedded::open(&self.dir).expect("the stopped dev's database");
        let read = |topic: &str| -> Vec<ReadRecord> {
            embedded
                .read_to_end(topic)
                .unwrap()
                .into_iter()
                .map(ReadRecord::from)
                .collect()
        };
        let observed = observe_from(&Source {
            ledger_topic: "txflow.ledger",
            results_topic: "txflow.results",
            dlq_topic: "txflow.ledger.dlq",
            read: &read,
        });
        let rows = embedded
            .store()
            .recorded()
            .unwrap()
            .into_iter()
            .map(|(result, account)| StoredResult {
                result,
                balance: account.balance_minor,
                version: account.version,
            })
            .collect();
        (observed, rows)
    }
}

/// Posts `bodies` in turn, each until the gateway took it (it is down while dev restarts).
fn post_all(address: &Arc<std::sync::Mutex<String>>, key: &str, bodies: &[String]) {
    let auth = format!("Bearer {key}");
    for body in bodies {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = address.lock().unwrap().clone();
            let answer = try_http(
                &at,
                "POST",
                "/v1/events/batch",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.as_bytes(),
            );
            match answer {
                Ok(answer) if answer.status == 202 => break,
                Ok(answer) if answer.status != 503 => {
                    panic!(
                        "the gateway refused a batch: {} {}",
                        answer.status, answer.body
                    )
                }
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "no gateway took a batch for 60 s"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

#[test]
fn a_sigkilled_dev_applies_every_event_exactly_once() {
    let seed = std::env::var("TXFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("dev crash: TXFLOW_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Dev::new();
    let (mut process, address) = dev.start();
    let key = dev.key();
    let mut workload = Workload::new(WorkloadConfig {
        accounts: 30,
        seed,
        duplicate_share: 0.03,
        conflict_share: 0.01,
        id_prefix: format!("dev{seed}"),
        occurred_from_ms: txflow::pipeline::now_ms(),
        ..WorkloadConfig::default()
    });
    let bodies: Vec<String> = (0..60)
        .map(|_| {
            let batch: Vec<serde_json::Value> = (0..50)
                .map(|_| serde_json::to_value(workload.next_event().0).unwrap())
                .collect();
            serde_json::Value::Array(batch).to_string()
        })
        .collect();
    let current = Arc::new(std::sync::Mutex::new(address));
    let done = Arc::new(AtomicBool::new(false));
    let poster = {
        let (current, key, done) = (current.clone(), key.clone(), done.clone());
        std::thread::spawn(move || {
            post_all(&current, &key, &bodies);
            done.store(true, Ordering::SeqCst);
        })
    };
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2000)));
        process.kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        let (restarted, address) = dev.start();
        process = restarted;
        *current.lock().unwrap() = address;
    }
    poster.join().expect("the poster");
    assert!(done.load(Ordering::SeqCst));

    // Drained when nothing is missing: stop, look, start again if something still is.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (observed, rows) = loop {
        std::thread::sleep(Duration::from_secs(2));
        process.terminate();
        let (observed, rows) = dev.inspect();
        let missing = observed.missing();
        if missing.is_empty() {
            break (observed, rows);
        }
        assert!(
            Instant::now() < deadline,
            "{} expected outputs missing, e.g. {:?}:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            process.log_text()
        );
        process = dev.start().0;
    };
    assert!(
        observed.fresh.len() > 2500,
        "{} events",
        observed.fresh.len()
    );
    assert!(
        observed.duplicates > 0 && observed.conflicts > 0,
        "the workload re-sent events"
    );
    verify_stored(&observed, &rows);
    let _ = std::fs::remove_dir_all(dev.dir.parent().unwrap_or(Path::new("/nonexistent")));
}

#[test]
fn an_event_posted_to_dev_is_read_back_over_http() {
    let dev = Dev::new();
    let (mut process, address) = dev.start();
    let auth = format!("Bearer {}", dev.key());
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let post = |event: &serde_json::Value| {
        let answer = try_http(
            &address,
            "POST",
            "/v1/events",
            &headers,
            event.to_string().as_bytes(),
        )
        .expect("the gateway answers");
        assert_eq!(answer.status, 202, "{}", answer.body);
    };
    let body = |id: &str, kind: &str, account: &str, to: Option<&str>, amount: i64| {
        serde_json::json!({
            "event_id": id, "event_type": kind, "account_id": account,
            "counterparty_account_id": to, "amount_minor": amount, "currency": "EUR",
            "occurred_at": *OCCURRED_AT, "source": "dev-test"
        })
    };
    // The counterparty of a transfer must exist: it has an applied event of its own.
    post(&body("dev-http-0", "DEPOSIT", "acct-b", None, 1));
    post(&body("dev-http-1", "DEPOSIT", "acct-a", None, 1000));
    let mut transfer = body("dev-http-2", "TRANSFER", "acct-a", Some("acct-b"), 400);
    post(&transfer);
    let get = |path: &str| try_http(&address, "GET", path, &headers[..1], b"").expect("an answer");
    let legs = txflow_tests::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let answer = get("/v1/events/dev-http-2");
            let outcomes = answer.json()["outcomes"].as_array().cloned()?;
            (outcomes.len() == 2).then_some(outcomes)
        },
        || process.log_text(),
    );
    assert!(
        legs.iter().all(|leg| leg["status"] == "APPLIED"),
        "{legs:?}"
    );
    assert_eq!(get("/v1/accounts/acct-a").json()["balance_minor"], 600);
    assert_eq!(get("/v1/accounts/acct-b").json()["balance_minor"], 401);

    // An account whose only event was rejected does not exist; a transfer whose credit would
    // pass the largest balance is debited, refused and reversed, and its outcomes say so.
    post(&body("dev-http-3", "WITHDRAWAL", "acct-ghost", None, 5));
    post(&body(
        "dev-http-4",
        "DEPOSIT",
        "acct-full",
        None,
        MAX_BALANCE_MINOR,
    ));
    post(&body(
        "dev-http-5",
        "TRANSFER",
        "acct-a",
        Some("acct-full"),
        100,
    ));
    let reversal = txflow_tests::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let outcomes = get("/v1/events/dev-http-5").json()["outcomes"]
                .as_array()
                .cloned()?;
            (outcomes.len() == 3).then_some(outcomes)
        },
        || process.log_text(),
    );
    let summary: Vec<(&str, &str, &str, &str)> = reversal
        .iter()
        .map(|o| {
            (
                o["account_id"].as_str().unwrap(),
                o["entry"].as_str().unwrap(),
                o["status"].as_str().unwrap(),
                o["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("acct-a", "DEBIT", "APPLIED", ""),
            ("acct-a", "CREDIT", "APPLIED", "transfer_reversed"),
            ("acct-full", "NONE", "REJECTED", "balance_limit_exceeded"),
        ]
    );
    assert_eq!(get("/v1/accounts/acct-a").json()["balance_minor"], 600);
    let ghost = get("/v1/accounts/acct-ghost");
    assert_eq!(
        (ghost.status, ghost.json()["error"]["code"].as_str()),
        (404, Some("account_not_found")),
        "{}",
        ghost.body
    );
    assert_eq!(
        get("/v1/events/dev-http-3").json()["outcomes"][0]["reason"],
        "insufficient_funds"
    );
    transfer["amount_minor"] = serde_json::json!(0);
    let refused = try_http(
        &address,
        "POST",
        "/v1/events",
        &headers,
        transfer.to_string().as_bytes(),
    )
    .expect("the gateway answers");
    assert_eq!(refused.status, 400);
    process.terminate();
    let _ = std::fs::remove_dir_all(dev.dir.parent().unwrap_or(Path::new("/nonexistent")));
}

/// `txflow ARGS --dev-dir DIR`: its stdout, and stderr when it failed.
fn against(dir: &str, args: &[&str]) -> Result<String, String> {
    let output = txflow_command(args)
        .args(["--dev-dir", dir])
        .output()
        .expect("running txflow");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn accounts_dlq_and_produce_work_against_a_running_dev() {
    let dev = Dev::new();
    let dir = dev.dir.to_str().unwrap().to_owned();
    let refused = against(&dir, &["accounts", "export"]).unwrap_err();
    assert!(refused.contains("no running txflow dev found"), "{refused}");
    let (mut process, _) = dev.start();
    let ok = |args: &[&str]| against(&dir, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));

    let produced: serde_json::Value = serde_json::from_str(&ok(&[
        "produce",
        "--count",
        "400",
        "--accounts",
        "10",
        "--conflicts",
        "0.1",
        "--seed",
        "7",
    ]))
    .unwrap();
    assert_eq!(produced["delivered"], 400, "{produced}");
    let conflicts = produced["conflicts"].as_u64().unwrap();
    assert!(conflicts > 0, "{produced}");

    // Every conflicting re-send ends in the dead letters, and the CLI reads them there.
    let count = |args: &[&str]| ok(args).lines().count() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&["dlq", "list", "--where", "kind=idempotency_conflict"]) < conflicts {
        assert!(
            Instant::now() < deadline,
            "the conflicts were not all dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = ok(&["dlq", "stats"]);
    assert!(stats.contains("idempotency_conflict"), "{stats}");
    let first: serde_json::Value =
        serde_json::from_str(ok(&["dlq", "list"]).lines().next().unwrap()).unwrap();
    let shown = ok(&[
        "dlq",
        "show",
        "--partition",
        &first["partition"].to_string(),
        "--offset",
        &first["offset"].to_string(),
    ]);
    assert!(shown.contains("txflow.error.kind"), "{shown}");

    // Balances read through the dev process agree with each other.
    let exported = ok(&["accounts", "export"]);
    let accounts: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!accounts.is_empty());
    let one = &accounts[0];
    let got: serde_json::Value = serde_json::from_str(&ok(&[
        "accounts",
        "get",
        one["account_id"].as_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(&got, one);

    // A redrive writes them back; each conflicts again and returns to the dead letters, and
    // no balance moves.
    assert_eq!(count(&["dlq", "redrive", "--dry-run"]), conflicts);
    ok(&["dlq", "redrive"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&["dlq", "list"]) < 2 * conflicts {
        assert!(
            Instant::now() < deadline,
            "the redriven conflicts did not come back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ok(&["accounts", "export"]), exported);
    // Re-sends, conflicts and redrives included, the ledger audits sound.
    let audited = ok(&["audit"]);
    assert!(audited.contains("the audit passed"), "{audited}");
    // With the dev's archive (its files not rolled yet: the topics hold everything).
    let with_archive = ok(&["audit", "--archive"]);
    assert!(
        with_archive.contains("0 of them from the archive alone")
            && with_archive.contains("the audit passed"),
        "{with_archive}"
    );

    // The routes behind it take the dev API key.
    let admin = std::fs::read_to_string(dev.dir.join("dev-admin")).unwrap();
    let anonymous = try_http(admin.trim(), "GET", "/dev/accounts", &[], b"").unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let migrate = against(&dir, &["migrate"]).unwrap_err();
    assert!(
        migrate.contains("--dev-dir works with accounts, audit, dlq, produce and replay"),
        "{migrate}"
    );
    process.terminate();
}

/// `--log-format json` (here as TXFLOW_LOG_FORMAT): every line on stderr is one JSON object
/// with its time, level and message, the fields of the event beside them; stdout keeps the
/// banner for people.
#[test]
fn json_logs_are_one_object_per_line() {
    let dev = Dev::new();
    std::fs::create_dir_all(&dev.logs).expect("a log directory");
    let stderr_path = dev.logs.join("dev.json.log");
    let stderr = std::fs::File::create(&stderr_path).expect("a log file");
    let mut command = txflow_command(&["dev", "--data-dir", dev.dir.to_str().unwrap()]);
    command
        .env("TXFLOW_LOG_FORMAT", "json")
        .env("TXFLOW_GATEWAY__LISTEN", "127.0.0.1:0")
        .env("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    let mut child = command.spawn().expect("txflow dev starts");
    let lines = txflow_tests::eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let text = std::fs::read_to_string(&stderr_path).ok()?;
            text.contains("gateway listening")
                .then(|| text.lines().map(str::to_owned).collect::<Vec<String>>())
        },
        || std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut listening = None;
    for line in &lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(entry["timestamp"].is_string(), "{line}");
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["fields"]["message"].is_string(), "{line}");
        if entry["fields"]["message"] == "gateway listening" {
            listening = Some(entry);
        }
    }
    let listening = listening.expect("the gateway's line");
    let bound = listening["fields"]["bound"]
        .as_str()
        .expect("its address as a field");
    assert!(bound.starts_with("127.0.0.1:"), "{listening}");
}

/// `txflow dev` with its data directory on a tmpfs of its own, mounted in a user and mount
/// namespace (no privilege needed, nothing left mounted behind the test), with `ballast`
/// bytes of it taken by a file that [`SmallDisk::give_back`] deletes. The data directory is
/// copied out when the process ends, for [`Dev::inspect`].
struct SmallDisk {
    mount: PathBuf,
    process: StageProcess,
}

impl SmallDisk {
    fn start(dev: &Dev, size_mib: u32, ballast_mib: u32) -> SmallDisk {
        let mount = dev.logs.join("disk");
        std::fs::create_dir_all(&mount).expect("a mount point");
        let script = r#"set -e
mount -t tmpfs -o "size=${SIZE_MIB}m" txflow-test "$MOUNT"
head -c "$((BALLAST_MIB * 1048576))" /dev/zero > "$MOUNT/ballast"
setpriv --pdeathsig KILL "$TXFLOW" dev --data-dir "$MOUNT/data" &
child=$!
trap 'kill -TERM $child' TERM
set +e
wait $child; status=$?
while kill -0 $child 2>/dev/null; do wait $child; status=$?; done
cp -a "$MOUNT/data" "$COPY"
exit $status"#;
        let mut command = std::process::Command::new("unshare");
        command
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
            .env("SIZE_MIB", size_mib.to_string())
            .env("BALLAST_MIB", ballast_mib.to_string())
            .env("MOUNT", &mount)
            .env("TXFLOW", txflow_tests::process::txflow_bin())
            .env("COPY", &dev.dir)
            .env("TXFLOW_GATEWAY__LISTEN", "127.0.0.1:0")
            .env("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0")
            .env("TXFLOW_LOG", "info,txflow=debug");
        let process = start_process(command, &dev.logs, "dev");
        SmallDisk { mount, process }
    }

    /// Where the process sees its tmpfs, reached from outside its mount namespace.
    fn inside(&self) -> PathBuf {
        let pid = self.process.pid().expect("the dev process runs");
        PathBuf::from(format!("/proc/{pid}/root")).join(self.mount.strip_prefix("/").unwrap())
    }

    fn give_back(&self) {
        std::fs::remove_file(self.inside().join("ballast")).expect("the ballast deleted");
    }

    fn key(&self) -> String {
        let path = self.inside().join("data").join("dev-api-key");
        txflow_tests::eventually(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || std::fs::read_to_string(&path).ok(),
            || self.process.log_text(),
        )
        .trim()
        .to_owned()
    }
}

/// Posts one batch: the ids the gateway accepted, and whether it refused any.
fn post_batch(address: &str, key: &str, events: &[serde_json::Value]) -> (Vec<String>, bool) {
    let auth = format!("Bearer {key}");
    let body = serde_json::Value::Array(events.to_vec()).to_string();
    let answer = try_http(
        address,
        "POST",
        "/v1/events/batch",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("the gateway answers");
    match answer.status {
        202 | 207 => {
            let entries = answer.json()["entries"].as_array().cloned().unwrap();
            let accepted: Vec<String> = entries
                .iter()
                .filter(|e| e["status"] == 202)
                .map(|e| e["event_id"].as_str().unwrap().to_owned())
                .collect();
            for refused in entries.iter().filter(|e| e["status"] != 202) {
                assert_eq!(refused["status"], 503, "{refused}");
            }
            let refused = accepted.len() < events.len();
            (accepted, refused)
        }
        503 => (Vec::new(), true),
        other => panic!("the gateway answered {other}: {}", answer.body),
    }
}

#[test]
fn dev_on_a_full_disk_refuses_then_recovers_when_space_comes_back() {
    let dev = Dev::new();
    // The space given back is more than the database can hold before the disk fills: redb
    // grows its file in steps, and a step must fit.
    let mut disk = SmallDisk::start(&dev, 64, 40);
    let address = disk.process.logged_address("gateway listening");
    let key = disk.key();
    let mut workload = Workload::new(WorkloadConfig {
        accounts: 200,
        seed: 7,
        duplicate_share: 0.02,
        conflict_share: 0.0,
        id_prefix: unique_name("full"),
        occurred_from_ms: txflow::pipeline::now_ms(),
        ..WorkloadConfig::default()
    });
    let mut batch = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|_| serde_json::to_value(workload.next_event().0).unwrap())
            .collect()
    };
    let mut accepted = Vec::new();
    let mut refusals = 0;
    while refusals < 5 {
        let (taken, refused) = post_batch(&address, &key, &batch(100));
        accepted.extend(taken);
        refusals += usize::from(refused);
        assert!(accepted.len() < 200_000, "the disk never filled");
    }
    eprintln!("{} events accepted before the disk filled", accepted.len());
    // Full: not ready, saying why.
    let full = txflow_tests::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let ready = disk.process.admin_get("/readyz");
            (ready.0 == 503).then_some(ready.1)
        },
        || disk.process.log_text(),
    );
    eprintln!("while full: {full}");
    disk.give_back();
    txflow_tests::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (disk.process.admin_get("/healthz").0 == 200).then_some(()),
        || disk.process.log_text(),
    );
    // Space enough again: the gateway takes events, and everything accepted is applied.
    for _ in 0..5 {
        let events = batch(50);
        let (taken, refused) = post_batch(&address, &key, &events);
        assert!(!refused, "refused after space came back");
        accepted.extend(taken);
    }
    txflow_tests::eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || (disk.process.admin_get("/readyz").0 == 200).then_some(()),
        || disk.process.log_text(),
    );
    // Drained when every accepted event is through: read from the running process.
    let client = DevClient::connect(&disk.inside().join("data")).expect("the dev client");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let read = |topic: &str| -> Vec<ReadRecord> {
        let records = runtime
            .block_on(client.records(topic))
            .expect("the records");
        records.into_iter().map(ReadRecord::from).collect()
    };
    let source = Source {
        ledger_topic: "txflow.ledger",
        results_topic: "txflow.results",
        dlq_topic: "txflow.ledger.dlq",
        read: &read,
    };
    txflow_tests::eventually(
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let observed = observe_from(&source);
            let sent: HashSet<&str> = observed.sent.iter().map(|e| e.event_id.as_str()).collect();
            (accepted.iter().all(|id| sent.contains(id.as_str())) && observed.missing().is_empty())
                .then_some(())
        },
        || disk.process.log_text(),
    );
    disk.process.terminate();
    let (observed, rows) = dev.inspect();
    let sent: HashSet<&str> = observed.sent.iter().map(|e| e.event_id.as_str()).collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !sent.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} accepted events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        observed.missing().is_empty(),
        "{:?}",
        &observed.missing()[..observed.missing().len().min(5)]
    );
    assert!(
        observed.given_up.is_empty(),
        "the full disk sent events to the dead letters"
    );
    verify_stored(&observed, &rows);
}
