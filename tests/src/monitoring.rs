//! A real Prometheus and Alertmanager (Debian's packages) for the tests, on loopback ports of
//! their own, with txflow's alert rules loaded; and a webhook receiver the Alertmanager
//! notifies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{http, start_process, try_http, StageProcess};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn installed(binary: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(binary))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("{binary} is not installed: apt-get install {package}"))
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique_name(name));
    std::fs::create_dir_all(&dir).expect("a working directory");
    dir
}

/// A running Prometheus; stopped when dropped.
pub struct Prometheus {
    pub process: StageProcess,
    pub address: String,
}

/// Prometheus scraping `targets` every second under job="txflow", evaluating
/// `deploy/prometheus/alerts.yml` every second, and sending alerts to `alertmanager`.
pub fn prometheus(targets: &[String], alertmanager: Option<&str>) -> Prometheus {
    let binary = installed("prometheus", "prometheus");
    let dir = work_dir("prometheus");
    let rules = repo()
        .join("deploy/prometheus/alerts.yml")
        .canonicalize()
        .expect("the rules file");
    let mut config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [{"job_name": "txflow", "static_configs": [{"targets": targets}]}],
    });
    if let Some(alertmanager) = alertmanager {
        config["alerting"] =
            json!({"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]});
    }
    // JSON is YAML.
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config.to_string()).expect("the Prometheus config");
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={address}"));
    let process = start_process(command, &dir, "prometheus");
    wait_ready(&process, &address);
    Prometheus { process, address }
}

/// Waits until the server at `address` answers `/-/ready`.
fn wait_ready(process: &StageProcess, address: &str) {
    crate::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            try_http(address, "GET", "/-/ready", &[], b"")
                .ok()
                .filter(|answer| answer.status == 200)
        },
        || format!("nothing ready at {address}:\n{}", process.log_text()),
    );
}

impl Prometheus {
    /// The result of an instant query; fails the test on a query Prometheus refuses.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encoded(expr));
        let body = http(&self.address, "GET", &path, &[], b"").json();
        assert_eq!(
            body["status"], "success",
            "Prometheus refused {expr}: {body}"
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every rule Prometheus loaded, as its rules API gives them.
    pub fn rules(&self) -> Vec<Value> {
        let body = http(&self.address, "GET", "/api/v1/rules", &[], b"").json();
        body["data"]["groups"]
            .as_array()
            .expect("rule groups")
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Alertmanager; stopped when dropped.
pub struct Alertmanager {
    pub process: StageProcess,
    pub address: String,
}

/// Alertmanager notifying `webhook` of every alert, firing and resolved, within a second.
/// Clustering is off: its default port is the local stack's secured Kafka listener.
pub fn alertmanager(webhook: &str) -> Alertmanager {
    let binary = installed("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = work_dir("alertmanager");
    let config = json!({
        "route": {"receiver": "test", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "test", "webhook_configs": [{"url": webhook, "send_resolved": true}]}],
    });
    let config_file = dir.join("alertmanager.yml");
    std::fs::write(&config_file, config.to_string()).expect("the Alertmanager config");
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .arg("--cluster.listen-address=");
    let process = start_process(command, &dir, "alertmanager");
    wait_ready(&process, &address);
    Alertmanager { process, address }
}

/// An HTTP receiver of Alertmanager's webhook notifications: every JSON body posted to it.
pub struct WebhookSink {
    pub url: String,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a webhook port");
        let url = format!(
            "http://{}/alerts",
            listener.local_addr().expect("its address")
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(body) = read_post(stream) {
                    if let Ok(value) = serde_json::from_slice(&body) {
                        sink.lock().expect("the sink").push(value);
                    }
                }
            }
        });
        WebhookSink { url, received }
    }

    /// The alerts notified so far with this name and status (`firing`, `resolved`).
    pub fn alerts(&self, name: &str, status: &str) -> Vec<Value> {
        self.received
            .lock()
            .expect("the sink")
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["alertname"] == name && a["status"] == status)
            .collect()
    }
}

/// One request's body; answers 200.
fn read_post(mut stream: std::net::TcpStream) -> Option<Vec<u8>> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(body)
}

/// A running Jaeger v2 (all in one, in memory); stopped when dropped.
pub struct Jaeger {
    pub process: StageProcess,
    /// Where OTLP/HTTP is received: the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: String,
    /// Its query API.
    pub query: String,
}

/// Jaeger as `deploy/local/stack test` builds it (`TXFLOW_JAEGER`), on loopback ports of its
/// own.
pub fn jaeger() -> Jaeger {
    let binary = std::env::var("TXFLOW_JAEGER").unwrap_or_else(|_| {
        panic!("TXFLOW_JAEGER is not set: run the tests with `deploy/local/stack test`, which builds Jaeger (or `deploy/local/stack jaeger` prints its path)")
    });
    let dir = work_dir("jaeger");
    let (otlp, query, query_grpc, metrics) = (free_port(), free_port(), free_port(), free_port());
    let config = json!({
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {"traces": {
                "receivers": ["otlp"],
                "processors": ["batch"],
                "exporters": ["jaeger_storage_exporter"],
            }},
            "telemetry": {"metrics": {"readers": [{"pull": {"exporter": {"prometheus": {
                "host": "127.0.0.1", "port": metrics,
            }}}}]}},
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memory"},
                "http": {"endpoint": format!("127.0.0.1:{query}")},
                "grpc": {"endpoint": format!("127.0.0.1:{query_grpc}")},
            },
            "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": 100000}}}},
        },
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": format!("127.0.0.1:{otlp}")}}}},
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
    });
    let config_file = dir.join("jaeger.json");
    std::fs::write(&config_file, config.to_string()).expect("the Jaeger config");
    let mut command = Command::new(binary);
    command.arg(format!("--config={}", config_file.display()));
    let process = start_process(command, &dir, "jaeger");
    let query = format!("127.0.0.1:{query}");
    crate::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            try_http(&query, "GET", "/api/services", &[], b"")
                .ok()
                .filter(|answer| answer.status == 200)
        },
        || format!("Jaeger never answered at {query}:\n{}", process.log_text()),
    );
    Jaeger {
        process,
        otlp: format!("http://127.0.0.1:{otlp}"),
        query,
    }
}

impl Jaeger {
    /// The traces with a span of `service`, as the query API gives them.
    pub fn traces(&self, service: &str) -> Vec<Value> {
        let path = format!("/api/traces?service={service}&limit=1000&lookback=1h");
        let body = http(&self.query, "GET", &path, &[], b"").json();
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// One trace by its id, if Jaeger has it.
    pub fn trace(&self, trace_id: &str) -> Option<Value> {
        let answer = http(
            &self.query,
            "GET",
            &format!("/api/traces/{trace_id}"),
            &[],
            b"",
        );
        (answer.status == 200)
            .then(|| answer.json()["data"].get(0).cloned())
            .flatten()
    }
}
