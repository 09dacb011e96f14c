//! `txflow-bench --dev`: `txflow dev` with durable commits, from a load generator posting
//! over HTTP to results. `txflow dev` runs as a child process on a fresh data directory; this
//! process posts batches of events, first as fast as it can (throughput), then at half that
//! rate (latency), sampling the child's resident memory every second. Timings come from the
//! database afterwards: each record carries the time it was committed, so an event's latency
//! is its result's commit time less its own on the events topic, with no reader in the way.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::args::BenchArgs;
use crate::child::terminate;
use crate::gateway::{bodies, logged_address, spawn_serving};
use crate::measure::{machine, percentile, write_section};
use txflow::adapters::embedded::Embedded;
use txflow::app::Config;
use txflow::codec::{Codec, Record};
use txflow::domain::{TransactionEvent, TransactionResult};
use txflow::limits::pacing;
use txflow::loadgen::{Workload, WorkloadConfig};

const START: &str = "<!-- txflow bench: dev (start) -->";
const END: &str = "<!-- txflow bench: dev (end) -->";

/// Events per posted batch.
const BATCH: usize = 100;
/// Concurrent posting connections.
const CONNECTIONS: usize = 8;

struct Phase {
    events: usize,
    /// Events per second asked, for the fixed-rate phase.
    rate: Option<u32>,
    prefix: String,
}

struct Measured {
    rate: Option<u32>,
    events: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

pub async fn bench(
    config: &Config,
    args: &BenchArgs,
    run: &str,
    logs: &Path,
) -> anyhow::Result<()> {
    let data = logs.join("dev-data");
    let log = logs.join("dev.log");
    let data_dir = data
        .to_str()
        .context("a data directory path that is UTF-8")?;
    let mut child = spawn_serving(&["dev", "--data-dir", data_dir], &[], &log)?;
    let pid = child.id();
    let outcome = async {
        let address = logged_address(&log, "gateway listening").await?;
        let key = std::fs::read_to_string(data.join("dev-api-key"))?
            .trim()
            .to_owned();
        let client = reqwest::Client::new();
        let memory = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampling = Instant::now();
        let sampler = {
            let memory = memory.clone();
            tokio::spawn(async move {
                while let Some(rss) = rss_mib(pid) {
                    memory
                        .lock()
                        .expect("the samples")
                        .push((sampling.elapsed(), rss));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let mut workload = Workload::new(WorkloadConfig {
            accounts: args.accounts,
            zipf_exponent: args.zipf,
            id_prefix: format!("{run}t"),
            occurred_from_ms: txflow::pipeline::now_ms(),
            ..WorkloadConfig::default()
        });
        // Every account opened first, as in a ledger that has been running. Events occur now:
        // the gateway admits only events near its clock.
        let openings: Vec<TransactionEvent> = Workload::new(WorkloadConfig {
            accounts: args.accounts,
            id_prefix: format!("{run}o"),
            occurred_from_ms: txflow::pipeline::now_ms(),
            ..WorkloadConfig::default()
        })
        .openings();
        post(&client, &address, &key, batches_of(&openings), None).await?;
        let throughput = Phase {
            events: args.dev_events,
            rate: None,
            prefix: format!("{run}t"),
        };
        eprintln!("bench: dev, {} events as fast as posted", throughput.events);
        let admin = logged_address(&log, "admin endpoints").await?;
        let before = settled(&client, &admin).await?;
        // Made before the clock starts: the rate of the next phase is half of this one's.
        let bodies = make(&mut workload, &throughput);
        let posted = Instant::now();
        post(&client, &address, &key, bodies, None).await?;
        let drained = drain(&client, &admin, before).await?;
        let rate = ((throughput.events as f64 / drained.duration_since(posted).as_secs_f64()) / 2.0)
            .max(1.0) as u32;
        let mut paced = Workload::new(WorkloadConfig {
            accounts: args.accounts,
            zipf_exponent: args.zipf,
            id_prefix: format!("{run}l"),
            seed: 2,
            occurred_from_ms: txflow::pipeline::now_ms(),
            ..WorkloadConfig::default()
        });
        let latency = Phase {
            events: (rate as u64 * args.dev_latency_seconds) as usize,
            rate: Some(rate),
            prefix: format!("{run}l"),
        };
        eprintln!("bench: dev, {} events at {rate}/s", latency.events);
        let fixed_from = sampling.elapsed();
        let before = settled(&client, &admin).await?;
        post(
            &client,
            &address,
            &key,
            make(&mut paced, &latency),
            NonZeroU32::new(rate),
        )
        .await?;
        drain(&client, &admin, before).await?;
        let fixed = fixed_from..sampling.elapsed();
        sampler.abort();
        let samples = memory.lock().expect("the samples").clone();
        Ok::<_, anyhow::Error>((throughput, latency, samples, fixed))
    }
    .await;
    terminate(&mut child);
    let (throughput, latency, samples, fixed) = outcome?;
    let embedded = Embedded::open(&data)?;
    let codec = txflow::app::codec::codec(config).await?;
    let timings = Timings::read(
        &codec,
        &embedded,
        &config.topics.events,
        &config.topics.results,
    )?;
    let throughput = timings.measure(&throughput)?;
    let latency = timings.measure(&latency)?;
    let report = report(args, &throughput, &latency, &samples, fixed);
    print!("{report}");
    if let Some(path) = &args.output {
        write_section(path, &report, START, END)?;
        eprintln!("bench: written to {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Records the ledger has consumed in committed batches so far.
async fn settled(client: &reqwest::Client, admin: &str) -> anyhow::Result<u64> {
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("txflow_records_total{stage=\"ledger\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Waits until the ledger has consumed more than `before` records and then nothing for two
/// seconds; returns when it last moved.
async fn drain(client: &reqwest::Client, admin: &str, before: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (mut seen, mut moved) = (before, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = settled(client, admin).await?;
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if seen > before && moved.elapsed() >= Duration::from_secs(2) {
            return Ok(moved);
        }
        if Instant::now() > deadline {
            bail!("txflow dev did not drain within 30 minutes");
        }
    }
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn make(workload: &mut Workload, phase: &Phase) -> Vec<Vec<u8>> {
    bodies(workload, BATCH, phase.events.div_ceil(BATCH))
}

fn batches_of(events: &[TransactionEvent]) -> Vec<Vec<u8>> {
    events
        .chunks(BATCH)
        .map(|chunk| serde_json::to_vec(chunk).expect("JSON"))
        .collect()
}

/// Posts every body once, on [`CONNECTIONS`] connections, paced at `rate` events per second
/// if given.
async fn post(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    bodies: Vec<Vec<u8>>,
    rate: Option<NonZeroU32>,
) -> anyhow::Result<()> {
    let url = format!("http://{address}/v1/events/batch");
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let pace = rate
        .and_then(|r| NonZeroU32::new((r.get() as usize).div_ceil(BATCH) as u32))
        .map(|batches| Arc::new(pacing(batches)));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.to_owned());
            let (bodies, next, pace) = (bodies.clone(), next.clone(), pace.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(n) else {
                        return Ok(());
                    };
                    if let Some(pace) = &pace {
                        pace.until_ready().await;
                    }
                    let answer = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = answer.status();
                    let text = answer.text().await?;
                    if status.as_u16() != 202 {
                        bail!("the gateway answered {status}: {text}");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// When each event was committed on the events topic, and when its first result was.
struct Timings {
    accepted: HashMap<String, i64>,
    settled: HashMap<String, i64>,
}

impl Timings {
    fn read(
        codec: &Codec,
        embedded: &Embedded,
        events: &str,
        results: &str,
    ) -> anyhow::Result<Timings> {
        let mut accepted = HashMap::new();
        for record in embedded.read_to_end(events)? {
            let event: TransactionEvent = codec.decode(
                Record::TransactionEvent,
                record.value.as_deref().unwrap_or_default(),
            )?;
            accepted
                .entry(event.event_id)
                .or_insert(record.timestamp.unwrap_or(0));
        }
        let mut settled = HashMap::new();
        for record in embedded.read_to_end(results)? {
            let result: TransactionResult = codec.decode(
                Record::TransactionResult,
                record.value.as_deref().unwrap_or_default(),
            )?;
            settled
                .entry(result.event_id)
                .or_insert(record.timestamp.unwrap_or(0));
        }
        Ok(Timings { accepted, settled })
    }

    fn measure(&self, phase: &Phase) -> anyhow::Result<Measured> {
        let mut latencies = Vec::new();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for (event_id, at) in &self.accepted {
            if !event_id.starts_with(&phase.prefix) {
                continue;
            }
            let Some(done) = self.settled.get(event_id) else {
                bail!("event {event_id} has no result: the run did not drain (see the dev log)");
            };
            first = first.min(*at);
            last = last.max(*done);
            latencies.push(Duration::from_millis((done - at).max(0) as u64));
        }
        if latencies.is_empty() {
            bail!("no event of the phase {} was accepted", phase.prefix);
        }
        latencies.sort();
        Ok(Measured {
            rate: phase.rate,
            events: latencies.len(),
            seconds: (last - first) as f64 / 1000.0,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies[latencies.len() - 1],
        })
    }
}

fn report(
    args: &BenchArgs,
    throughput: &Measured,
    latency: &Measured,
    samples: &[(Duration, f64)],
    fixed: std::ops::Range<Duration>,
) -> String {
    let command: Vec<String> = std::env::args().skip(1).collect();
    let per_second = throughput.events as f64 / throughput.seconds.max(1e-9);
    let mut md = String::new();
    let _ = writeln!(md, "{START}");
    let _ = writeln!(md, "## `txflow dev` throughput and latency\n");
    let _ = writeln!(
        md,
        "Measured by `txflow-bench {}` on {}: `txflow dev` a child process on a fresh data directory (durable commits), this process posting batches of {BATCH} events over HTTP on {CONNECTIONS} connections, {} accounts with Zipf exponent {}. Times from the database afterwards: an event's commit on the events topic to its result's commit.\n",
        command.join(" "),
        machine(),
        args.accounts,
        args.zipf
    );
    let _ = writeln!(
        md,
        "| phase | events | seconds | events/s | p50 | p99 | max |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for m in [throughput, latency] {
        let name = match m.rate {
            Some(rate) => format!(
                "posted at {rate} events/s ({:.0}% of the first phase's throughput)",
                f64::from(rate) / per_second * 100.0
            ),
            None => "posted as fast as the gateway takes them".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.0} | {} ms | {} ms | {} ms |",
            m.events,
            m.seconds,
            m.events as f64 / m.seconds.max(1e-9),
            m.p50.as_millis(),
            m.p99.as_millis(),
            m.max.as_millis()
        );
    }
    let peak = samples.iter().map(|(_, rss)| *rss).fold(0.0, f64::max);
    let tail = samples.len().saturating_sub(samples.len() / 4);
    let early = samples
        .get(samples.len() / 4)
        .map(|(_, rss)| *rss)
        .unwrap_or(0.0);
    let late = samples
        .get(tail.max(1) - 1)
        .map(|(_, rss)| *rss)
        .unwrap_or(0.0);
    let _ = writeln!(
        md,
        "\nResident memory of `txflow dev`: peak {peak:.0} MiB; {early:.0} MiB a quarter into the run, {late:.0} MiB three quarters in ({} samples, one a second).\n",
        samples.len()
    );
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| at least 50,000 events/s with durable commits | {per_second:.0} events/s | {} |",
        verdict(per_second >= 50_000.0)
    );
    let minutes = memory_by_minute(samples, &fixed);
    match (minutes.get(1), minutes.last()) {
        (Some(second), Some(last)) if minutes.len() >= 10 => {
            let _ = writeln!(
                md,
                "| memory flat over a 10-minute run (the fixed-rate phase: within 10% of its second minute at its end) | {second:.0} MiB at minute 2, {last:.0} MiB at minute {} | {} |",
                minutes.len(),
                verdict(*last <= second * 1.1)
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "| memory flat over a 10-minute run | the fixed-rate phase lasted {} s (`--dev-latency-seconds 600` runs it for 10 minutes) | **not measured** |",
                (fixed.end - fixed.start).as_secs()
            );
        }
    }
    if minutes.len() >= 2 {
        let by_minute: Vec<String> = minutes.iter().map(|m| format!("{m:.0}")).collect();
        let _ = writeln!(
            md,
            "\nResident MiB at the end of each minute of the fixed-rate phase: {}.",
            by_minute.join(", ")
        );
    }
    let _ = writeln!(md, "{END}");
    md
}

/// The resident memory at the end of each whole minute of `phase`.
fn memory_by_minute(samples: &[(Duration, f64)], phase: &std::ops::Range<Duration>) -> Vec<f64> {
    let whole = (phase.end - phase.start).as_secs() / 60;
    (1..=whole)
        .filter_map(|minute| {
            let at = phase.start + Duration::from_secs(minute * 60);
            samples
                .iter()
                .take_while(|(t, _)| *t <= at)
                .last()
                .map(|(_, rss)| *rss)
        })
        .collect()
}
