//! The `txflow` binary, run as a user runs it: a pipeline of fresh topics and keyspace, the
//! CLI commands against it, and stage processes that tests stop, kill and restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{cql_contact_points, kafka_bootstrap, require_kafka, unique_name};

/// The `txflow` binary of this build with test faults compiled in, built once per test run.
pub fn txflow_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The test runs from <target>/<profile>/deps/; the binary lands in <target>/<profile>/.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in <target>/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "txflow",
            "--bin",
            "txflow",
            "--features",
            "fault-injection",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build for the txflow binary");
        assert!(status.success(), "building the txflow binary failed");
        let bin = profile_dir.join("txflow");
        assert!(bin.exists(), "no txflow binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A pipeline of its own: unique topics, group and keyspace, migrated and applied.
pub struct Pipeline {
    pub events_topic: String,
    pub notifications_topic: String,
    pub ledger_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    pub keyspace: String,
    pub partitions: i32,
    env: Vec<(String, String)>,
    pub logs: PathBuf,
}

/// The local stack's secured services (`deploy/local/stack up --secure`), as
/// `deploy/local/stack test` exports them: Kafka's SASL_SSL listener with its users, the
/// Cassandra that requires TLS and a password, and the stack's certificates.
pub struct Secured {
    pub kafka_bootstrap: String,
    /// Kafka users and their passwords: `txflow` has every ACL of docs/SECURITY.md on
    /// `secure.*`, `txflow-no-txn` all but Write on transactional ids.
    pub kafka_users: Vec<(String, String)>,
    pub cql_contact_points: String,
    pub cql_user: String,
    pub cql_password: String,
    pub ca_file: String,
    /// A certificate for 127.0.0.1, and its key.
    pub cert_file: String,
    pub key_file: String,
    /// txflow's client certificate (Kafka's secured listener requires one), and its key.
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl Secured {
    /// The secured services, or a failed test saying how to start them.
    pub fn from_env() -> Secured {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with `deploy/local/stack test`, which starts the secured services (`up --secure`) and sets it")
            })
        };
        Secured {
            kafka_bootstrap: var("TXFLOW_SECURE_KAFKA_BOOTSTRAP"),
            kafka_users: var("TXFLOW_SECURE_KAFKA_USERS")
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(user, password)| (user.to_owned(), password.to_owned()))
                .collect(),
            cql_contact_points: var("TXFLOW_SECURE_CQL_CONTACT_POINTS"),
            cql_user: var("TXFLOW_SECURE_CQL_USER"),
            cql_password: var("TXFLOW_SECURE_CQL_PASSWORD"),
            ca_file: var("TXFLOW_SECURE_CA_FILE"),
            cert_file: var("TXFLOW_SECURE_CERT_FILE"),
            key_file: var("TXFLOW_SECURE_KEY_FILE"),
            client_cert_file: var("TXFLOW_SECURE_CLIENT_CERT_FILE"),
            client_key_file: var("TXFLOW_SECURE_CLIENT_KEY_FILE"),
        }
    }

    /// The password of Kafka user `user`.
    pub fn kafka_password(&self, user: &str) -> &str {
        self.kafka_users
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, password)| password.as_str())
            .unwrap_or_else(|| panic!("no Kafka user {user} in TXFLOW_SECURE_KAFKA_USERS"))
    }

    /// A stage's settings for the secured services as user `kafka_user`, each password in a
    /// file under `dir` (as a mounted secret gives it).
    fn env(&self, kafka_user: &str, dir: &std::path::Path) -> Vec<(&'static str, String)> {
        let secret = |name: &str, value: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("{value}\n")).expect("a password file");
            path.display().to_string()
        };
        vec![
            (
                "TXFLOW_KAFKA__BOOTSTRAP_SERVERS",
                self.kafka_bootstrap.clone(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SECURITY.PROTOCOL",
                "SASL_SSL".to_owned(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SASL.MECHANISMS",
                "SCRAM-SHA-512".to_owned(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SASL.USERNAME",
                kafka_user.to_owned(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTY_FILES__SASL.PASSWORD",
                secret("kafka-password", self.kafka_password(kafka_user)),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SSL.CA.LOCATION",
                self.ca_file.clone(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SSL.CERTIFICATE.LOCATION",
                self.client_cert_file.clone(),
            ),
            (
                "TXFLOW_KAFKA__PROPERTIES__SSL.KEY.LOCATION",
                self.client_key_file.clone(),
            ),
            (
                "TXFLOW_STORE__CONTACT_POINTS",
                format!("[{:?}]", self.cql_contact_points),
            ),
            ("TXFLOW_STORE__USERNAME", self.cql_user.clone()),
            (
                "TXFLOW_STORE__PASSWORD_FILE",
                secret("cql-password", &self.cql_password),
            ),
            ("TXFLOW_STORE__TLS_CA_FILE", self.ca_file.clone()),
        ]
    }
}

impl Pipeline {
    /// Fresh names, `txflow migrate` and `txflow topics apply`.
    pub fn new(partitions: i32) -> Pipeline {
        require_kafka();
        let contact_points: Vec<String> = cql_contact_points()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let mut services = vec![
            ("TXFLOW_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap()),
            (
                "TXFLOW_STORE__CONTACT_POINTS",
                format!("[{}]", contact_points.join(",")),
            ),
        ];
        if crate::on_cluster() {
            // Each record and row on every node, as a production cluster keeps them; the
            // brokers want two replicas in sync, the store's writes a quorum.
            services.extend([
                ("TXFLOW_TOPICS__REPLICATION_FACTOR", "3".to_owned()),
                (
                    "TXFLOW_STORE__REPLICATION",
                    "{'class': 'SimpleStrategy', 'replication_factor': 3}".to_owned(),
                ),
            ]);
        }
        Pipeline::on(unique_name("p"), partitions, services)
    }

    /// As [`Pipeline::new`], on the secured services as Kafka user `kafka_user`: its names
    /// start with `secure.`, where the users' ACLs are.
    pub fn secured(partitions: i32, secured: &Secured, kafka_user: &str) -> Pipeline {
        let id = unique_name("secure.p");
        let secrets = std::env::temp_dir().join(format!("{id}-secrets"));
        std::fs::create_dir_all(&secrets).expect("a directory for password files");
        Pipeline::on(id, partitions, secured.env(kafka_user, &secrets))
    }

    /// A pipeline named `id` on the services `services` says.
    fn on(id: String, partitions: i32, services: Vec<(&'static str, String)>) -> Pipeline {
        let topic = |name: &str| format!("{id}.{name}");
        let keyspace = unique_name("txflow");
        let ledger_topic = topic("ledger");
        let mut env = services;
        env.extend([
            ("TXFLOW_STORE__KEYSPACE", keyspace.clone()),
            ("TXFLOW_TOPICS__EVENTS", topic("events")),
            ("TXFLOW_TOPICS__LEDGER", ledger_topic.clone()),
            ("TXFLOW_TOPICS__NOTIFICATIONS", topic("notifications")),
            ("TXFLOW_TOPICS__RESULTS", topic("results")),
            ("TXFLOW_TOPICS__PARTITIONS", partitions.to_string()),
            ("TXFLOW_LEDGER__GROUP_ID", format!("{id}-ledger")),
            ("TXFLOW_ROUTER__GROUP_ID", format!("{id}-router")),
            ("TXFLOW_ROUTER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("TXFLOW_ROUTER__RELOAD_CHECK_MS", "200".to_owned()),
            ("TXFLOW_NOTIFIER__GROUP_ID", format!("{id}-notifier")),
            ("TXFLOW_NOTIFIER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("TXFLOW_ARCHIVER__GROUP_ID", format!("{id}-archiver")),
            ("TXFLOW_ARCHIVER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            (
                "TXFLOW_NOTIFIER__RETRY_DELAYS_MS",
                "[200, 500, 1000]".to_owned(),
            ),
            // The broker's smallest: a killed member's partitions move on after 6 s.
            ("TXFLOW_LEDGER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            // Short retry tiers: a retried event comes back within a second or two.
            (
                "TXFLOW_LEDGER__RETRY_DELAYS_MS",
                "[200, 500, 1000]".to_owned(),
            ),
            ("TXFLOW_LOG", "info,txflow=debug".to_owned()),
            // Every stage process serves its admin endpoints on a port of its own.
            ("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ]);
        let logs = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&logs).expect("a log directory");
        let pipeline = Pipeline {
            events_topic: topic("events"),
            notifications_topic: topic("notifications"),
            results_topic: topic("results"),
            dlq_topic: format!("{ledger_topic}.dlq"),
            ledger_topic,
            keyspace,
            partitions,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            logs,
        };
        pipeline.txflow(&["migrate"]);
        pipeline.txflow(&["topics", "apply"]);
        pipeline
    }

    /// The configuration the pipeline's processes run with, as `txflow` loads it.
    pub fn config(&self) -> txflow::app::Config {
        txflow::app::Config::load(None, self.env.iter().cloned())
            .expect("the pipeline's configuration")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(txflow_bin());
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs a txflow command to its end; fails the test, with its output, unless it succeeds.
    pub fn txflow(&self, args: &[&str]) -> String {
        self.txflow_with(args, &[])
    }

    /// [`Pipeline::txflow`] with extra environment variables.
    pub fn txflow_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let output = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("running txflow {args:?}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "txflow {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs `txflow ARGS`, which must fail: what it said on stdout, then on stderr.
    pub fn txflow_failing(&self, args: &[&str]) -> String {
        let output = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("running txflow {args:?}: {e}"));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "txflow {args:?} succeeded:\n{said}"
        );
        said
    }

    /// Starts `txflow produce ARGS` in the background.
    pub fn spawn_produce(&self, args: &[&str]) -> StageProcess {
        let mut all = vec!["produce"];
        all.extend_from_slice(args);
        self.spawn(&all, "produce")
    }

    /// Starts a ledger process with a stable instance id (a restart reuses it).
    pub fn spawn_ledger(&self, instance: &str) -> StageProcess {
        self.spawn_ledger_with(instance, &[])
    }

    /// Starts a ledger process with extra environment variables (faults, settings).
    pub fn spawn_ledger_with(&self, instance: &str, env: &[(&str, &str)]) -> StageProcess {
        self.spawn_stage("ledger", instance, env)
    }

    /// Starts a router process with a stable instance id and extra environment variables.
    pub fn spawn_router_with(&self, instance: &str, env: &[(&str, &str)]) -> StageProcess {
        self.spawn_stage("router", instance, env)
    }

    /// Starts a gateway process with extra environment variables (its keys and limits); it
    /// listens on a port of its own (`StageProcess::logged_address("gateway listening")`).
    pub fn spawn_gateway_with(&self, env: &[(&str, &str)]) -> StageProcess {
        let mut command = self.command(&["run", "--stage", "gateway"]);
        command.env("TXFLOW_GATEWAY__LISTEN", "127.0.0.1:0");
        command.envs(env.iter().copied());
        self.start(command, "gateway")
    }

    /// Starts a notifier process with a stable instance id and extra environment variables
    /// (its endpoints).
    pub fn spawn_notifier_with(&self, instance: &str, env: &[(&str, &str)]) -> StageProcess {
        self.spawn_stage("notifier", instance, env)
    }

    /// Starts an archiver process with a stable instance id and extra environment variables
    /// (its storage and rolls).
    pub fn spawn_archiver_with(&self, instance: &str, env: &[(&str, &str)]) -> StageProcess {
        self.spawn_stage("archiver", instance, env)
    }

    /// `txflow run --stage STAGE` with instance id `instance` (a restart reuses it).
    fn spawn_stage(&self, stage: &str, instance: &str, env: &[(&str, &str)]) -> StageProcess {
        let mut command = self.command(&["run", "--stage", stage]);
        command.env(
            format!("TXFLOW_{}__INSTANCE_ID", stage.to_ascii_uppercase()),
            instance,
        );
        command.envs(env.iter().copied());
        self.start(command, &format!("{stage}-{instance}"))
    }

    fn spawn(&self, args: &[&str], name: &str) -> StageProcess {
        self.start(self.command(args), name)
    }

    /// Starts `command` as a process of this pipeline, its output logged as `name`.
    pub fn start(&self, command: Command, name: &str) -> StageProcess {
        start_process(command, &self.logs, name)
    }
}

/// The `txflow` binary of the tests with `args`, and no environment of a pipeline.
pub fn txflow_command(args: &[&str]) -> Command {
    let mut command = Command::new(txflow_bin());
    command.args(args);
    command
}

/// Starts `command` as a process that dies with the test, its output appended to
/// `<logs>/<name>.log`.
pub fn start_process(mut command: Command, logs: &std::path::Path, name: &str) -> StageProcess {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own settings.
    // A test killed midway must not leave stage processes running behind it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    std::fs::create_dir_all(logs).expect("a log directory");
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("a process log file");
    // A restart under the same name appends: this process's lines start here.
    let log_start = file.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let child = command
        .stdout(Stdio::from(file.try_clone().expect("log file handle")))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    StageProcess {
        child: Some(child),
        name: name.to_owned(),
        log,
        log_start,
    }
}

/// A running txflow process; killed when dropped.
pub struct StageProcess {
    child: Option<Child>,
    name: String,
    log: PathBuf,
    log_start: usize,
}

impl StageProcess {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has; None while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("waiting for a child")
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit (fails the test after 60 s or on a failure).
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.wait_for(&mut child, Duration::from_secs(60));
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Waits for the process to end by itself; fails the test unless it succeeds in time.
    pub fn wait(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = self.wait_for(&mut child, limit);
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Waits for the process to fail by itself; fails the test if it succeeds, or does not
    /// end in time. Returns its log.
    pub fn wait_for_failure(&mut self, limit: Duration) -> String {
        let mut child = self.child.take().expect("a running process");
        let status = self.wait_for(&mut child, limit);
        assert!(
            !status.success(),
            "{} succeeded; log:\n{}",
            self.name,
            self.log_text()
        );
        self.log_text()
    }

    fn wait_for(&self, child: &mut Child, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for a child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not end within {limit:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address of its admin endpoints, from its log (waits up to 60 s for it).
    pub fn admin_address(&self) -> String {
        self.logged_address("admin endpoints")
    }

    /// The `bound=` address its log gives on the first line containing `needle` (waits up to
    /// 60 s for it).
    pub fn logged_address(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let bound = log
                .get(self.log_start..)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .find_map(|l| l.split("bound=").nth(1))
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(address) = bound {
                return address.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{} logged no {needle:?} address:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sum of the samples on its `/metrics` whose line starts with `prefix` (a metric
    /// name, optionally with the start of its labels), 0 when there is none.
    pub fn metric(&self, prefix: &str) -> u64 {
        let (_, metrics) = self.admin_get("/metrics");
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// An HTTP GET of `path` on its admin endpoints: status code and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let answer = http(&self.admin_address(), "GET", path, &[], b"");
        (answer.status, answer.body)
    }

    /// How many lines of this process's log contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.get(self.log_start..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The last 60 lines of its log, for failure messages.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; fails the test when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request on a connection of its own, read to its end; fails the test when
/// nothing listens at `address`.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    try_http(address, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {address}: {e}"))
}

/// [`http`], or the error when the request could not be made (nothing listens, the
/// connection broke).
pub fn try_http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpAnswer> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    try_raw_http(address, &request)
}

/// Sends `request` as it is (a hostile client's bytes) on a connection of its own and reads
/// the answer to its end.
pub fn try_raw_http(address: &str, request: &[u8]) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    // A server may answer and close before it read a body it refuses: what it sent counts.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let not_http = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {response:?}"),
        )
    };
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_http)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = match chunked {
        true => dechunked(body).ok_or_else(not_http)?,
        false => body.to_owned(),
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// A chunked body's content: each chunk is its size in hex, CRLF, the bytes, CRLF.
fn dechunked(mut body: &str) -> Option<String> {
    let mut content = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(content);
        }
        content.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}
