//! `txflow-bench --gateway`: the HTTP gateway's throughput (events accepted per second) and
//! latency, for single and batch posts. The gateway runs as a child process (this binary's
//! `run --stage gateway`) on fresh topics; this process is the load generator, with request
//! bodies made before the clock starts.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::args::BenchArgs;
use crate::child::terminate;
use crate::ledger::{Lane, Mode};
use crate::measure::{machine, peak_rss_mib, percentile, write_section};
use txflow::app::Config;
use txflow::loadgen::{Workload, WorkloadConfig};
use txflow::stages::gateway::keys::new_key;

const START: &str = "<!-- txflow bench: gateway (start) -->";
const END: &str = "<!-- txflow bench: gateway (end) -->";

/// Bodies made in advance and posted in turn, so that the clock measures the gateway and not
/// the making of JSON.
const BODIES: usize = 20_000;

/// One way of posting.
struct Posting {
    name: &'static str,
    /// Events per request: 1 posts to /v1/events, more to /v1/events/batch.
    events: usize,
    connections: usize,
}

struct Measured {
    posting: Posting,
    requests: u64,
    events: u64,
    refused: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

pub async fn bench(
    config: &Config,
    args: &BenchArgs,
    run: &str,
    logs: &Path,
) -> anyhow::Result<()> {
    let lane = Lane::new(
        config,
        &format!("{run}g"),
        Mode::ExactlyOnce,
        args.partitions,
    );
    lane.prepare().await?;
    let outcome = measure(&lane, args, run, logs).await;
    lane.clean_up().await;
    let (runs, rss) = outcome?;
    let report = report(args, &runs, rss);
    print!("{report}");
    if let Some(path) = &args.output {
        write_section(path, &report, START, END)?;
        eprintln!("bench: written to {}", path.display());
    }
    Ok(())
}

async fn measure(
    lane: &Lane,
    args: &BenchArgs,
    run: &str,
    logs: &Path,
) -> anyhow::Result<(Vec<Measured>, Option<f64>)> {
    let (key, hash) = new_key();
    let log = logs.join("gateway.log");
    let mut env = lane.env.clone();
    env.push(("TXFLOW_GATEWAY__API_KEYS__BENCH".to_owned(), hash));
    let mut child = spawn_serving(&["run", "--stage", "gateway"], &env, &log)?;
    let outcome = async {
        let address = logged_address(&log, "gateway listening").await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let mut workload = Workload::new(WorkloadConfig {
            accounts: args.accounts,
            zipf_exponent: args.zipf,
            id_prefix: run.to_owned(),
            occurred_from_ms: txflow::pipeline::now_ms(),
            ..WorkloadConfig::default()
        });
        let mut runs = Vec::new();
        for posting in [
            Posting {
                name: "single",
                events: 1,
                connections: args.gateway_connections,
            },
            Posting {
                name: "batch",
                events: args.gateway_batch,
                connections: (args.gateway_connections / 4).max(1),
            },
        ] {
            let count = (BODIES / posting.events).max(16);
            let bodies = Arc::new(bodies(&mut workload, posting.events, count));
            eprintln!(
                "bench: gateway, {} posts of {} event(s), {} connections, {} s",
                posting.name, posting.events, posting.connections, args.gateway_seconds
            );
            // A first second unmeasured: connections opened, the producer warmed up.
            post_for(
                &client,
                &address,
                &key,
                &posting,
                &bodies,
                Duration::from_secs(1),
            )
            .await?;
            runs.push(
                post_for(
                    &client,
                    &address,
                    &key,
                    &posting,
                    &bodies,
                    Duration::from_secs(args.gateway_seconds),
                )
                .await?,
            );
        }
        Ok::<_, anyhow::Error>(runs)
    }
    .await;
    let rss = peak_rss_mib(child.id());
    terminate(&mut child);
    Ok((outcome?, rss))
}

/// This binary with `args` as a child process whose gateway listens on a port of its own and
/// limits no caller's rate, its log in `log`.
pub(crate) fn spawn_serving(
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<std::process::Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    std::process::Command::new(crate::child::txflow())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("TXFLOW_GATEWAY__LISTEN", "127.0.0.1:0")
        .env("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0")
        .env("TXFLOW_GATEWAY__REQUESTS_PER_SECOND", "1000000")
        .env("TXFLOW_GATEWAY__BURST", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(file))
        .spawn()
        .with_context(|| format!("starting txflow {}", args.join(" ")))
}

/// The `bound=` address of the first line of a child's log containing `what` (such as
/// "gateway listening"), once it is there (60 s at most).
pub(crate) async fn logged_address(log: &Path, what: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let bound = text
            .lines()
            .filter(|l| l.contains(what))
            .find_map(|l| l.split("bound=").nth(1))
            .and_then(|rest| rest.split_whitespace().next());
        if let Some(address) = bound {
            return Ok(address.to_owned());
        }
        if Instant::now() > deadline {
            bail!(
                "no \"{what}\" address logged within 60 s; the log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` request bodies of `events` events each (a JSON object for one, an array for
/// more).
pub(crate) fn bodies(workload: &mut Workload, events: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let mut batch: Vec<serde_json::Value> = (0..events)
                .map(|_| serde_json::to_value(workload.next_event().0).expect("an event"))
                .collect();
            let body = if events == 1 {
                batch.pop().expect("one event")
            } else {
                serde_json::Value::Array(batch)
            };
            serde_json::to_vec(&body).expect("JSON")
        })
        .collect()
}

/// Posts `bodies` in turn on `posting.connections` connections for `span`.
async fn post_for(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    posting: &Posting,
    bodies: &Arc<Vec<Vec<u8>>>,
    span: Duration,
) -> anyhow::Result<Measured> {
    let path = if posting.events == 1 {
        "/v1/events"
    } else {
        "/v1/events/batch"
    };
    let url = format!("http://{address}{path}");
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + span;
    let workers: Vec<_> = (0..posting.connections)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.to_owned());
            let (bodies, next, refused) = (bodies.clone(), next.clone(), refused.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < stop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let body = bodies[n % bodies.len()].clone();
                    let sent = Instant::now();
                    let answer = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = answer.status().as_u16();
                    answer.bytes().await?;
                    if status == 202 {
                        latencies.push(sent.elapsed());
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, reqwest::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let requests = latencies.len() as u64;
    let refused = refused.load(Ordering::Relaxed);
    if requests == 0 {
        bail!("the gateway accepted nothing ({refused} requests refused)");
    }
    Ok(Measured {
        posting: Posting { ..*posting },
        requests,
        events: requests * posting.events as u64,
        refused,
        seconds,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

fn report(args: &BenchArgs, runs: &[Measured], rss: Option<f64>) -> String {
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut md = String::new();
    let _ = writeln!(md, "{START}");
    let _ = writeln!(md, "## Gateway throughput and latency\n");
    let _ = writeln!(
        md,
        "Measured by `txflow-bench {}` on {}, against the local stack; the gateway a child process, the load generator this one (the same 2 cores as the gateway, Kafka and Cassandra). Latency: a request sent → its `202` read, every event acknowledged by the broker (`acks=all`).\n",
        command.join(" "),
        machine()
    );
    let _ = writeln!(
        md,
        "| posts | connections | requests | events accepted | refused | seconds | events/s | p50 | p99 |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for run in runs {
        let _ = writeln!(
            md,
            "| {} ({} event{} each) | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} ms | {:.1} ms |",
            run.posting.name,
            run.posting.events,
            if run.posting.events == 1 { "" } else { "s" },
            run.posting.connections,
            run.requests,
            run.events,
            run.refused,
            run.seconds,
            run.events as f64 / run.seconds,
            run.p50.as_secs_f64() * 1000.0,
            run.p99.as_secs_f64() * 1000.0,
        );
    }
    let _ = writeln!(
        md,
        "\nGateway peak RSS {}; {} s per run.",
        rss.map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "?".to_owned()),
        args.gateway_seconds
    );
    let _ = writeln!(md, "{END}");
    md
}
