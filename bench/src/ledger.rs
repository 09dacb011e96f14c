//! `txflow-bench` without `--gateway` or `--dev`: the ledger on the configured Kafka and
//! store, measured side by side with its baselines in one run.
//!
//! Every mode gets fresh topics, group and keyspace and a ledger that has joined its group
//! and opened every account with a deposit (a running ledger's steady state). Throughput: events written as fast as this process can, while the
//! ledger runs, divided by the time from the first write to the last result readable with
//! `read_committed`. Latency: at a fixed rate, from the moment an event is handed to the
//! producer to the moment its result is readable. The ledger runs as a child process (`txflow
//! run --stage ledger`), so that its resident memory is its own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;

use crate::args::BenchArgs;
use crate::child::terminate;
use crate::measure::{machine, peak_rss_mib, percentile, write_section};
use txflow::adapters::kafka;
use txflow::adapters::scylla;
use txflow::app::Config;
use txflow::codec::{Codec, Record};
use txflow::domain::{Entry, EventType, TransactionEvent, TransactionResult};
use txflow::limits::pacing;
use txflow::loadgen::{Workload, WorkloadConfig};

/// One way of running the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    ExactlyOnce,
    AtLeastOnce,
    Naive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::ExactlyOnce => "exactly-once",
            Mode::AtLeastOnce => "at-least-once",
            Mode::Naive => "naive",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::ExactlyOnce => "exactly-once: batches of up to 500, one LWT per new event id and one per account per batch, one transaction per batch",
            Mode::AtLeastOnce => "at-least-once: the same, without Kafka transactions (outputs flushed, then offsets committed)",
            Mode::Naive => "naive: batches of 1 (an event's id claim and account write, one Kafka transaction)",
        }
    }
}

/// A pipeline of its own for one mode.
pub(crate) struct Lane {
    pub(crate) config: Config,
    pub(crate) env: Vec<(String, String)>,
}

impl Lane {
    pub(crate) fn new(base: &Config, run: &str, mode: Mode, partitions: i32) -> Lane {
        let tag = format!("{run}_{}", mode.name().replace('-', "_"));
        let mut config = base.clone();
        config.topics.events = format!("bench.{tag}.events");
        config.topics.ledger = format!("bench.{tag}.ledger");
        config.topics.notifications = format!("bench.{tag}.notifications");
        config.topics.results = format!("bench.{tag}.results");
        config.topics.partitions = partitions;
        config.store.keyspace = format!("bench_{tag}");
        config.ledger.group.group_id = format!("bench-{tag}");
        let mut env = vec![
            ("TXFLOW_TOPICS__EVENTS", config.topics.events.clone()),
            ("TXFLOW_TOPICS__LEDGER", config.topics.ledger.clone()),
            (
                "TXFLOW_TOPICS__NOTIFICATIONS",
                config.topics.notifications.clone(),
            ),
            ("TXFLOW_TOPICS__RESULTS", config.topics.results.clone()),
            ("TXFLOW_STORE__KEYSPACE", config.store.keyspace.clone()),
            (
                "TXFLOW_LEDGER__GROUP_ID",
                config.ledger.group.group_id.clone(),
            ),
            ("TXFLOW_LEDGER__INSTANCE_ID", "bench".to_owned()),
            ("TXFLOW_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ];
        if mode == Mode::Naive {
            env.push(("TXFLOW_LEDGER__BATCH_MAX_RECORDS", "1".to_owned()));
        }
        Lane {
            config,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    pub(crate) async fn prepare(&self) -> anyhow::Result<()> {
        let session = scylla::connect(&self.config.store).await?;
        scylla::migrate(&session, &self.config.store).await?;
        kafka::apply_topics(
            &self.config.kafka,
            &self.config.topics,
            &self.config.all_topics(),
        )
        .await?;
        Ok(())
    }

    fn start_ledger(&self, mode: Mode, log: &Path) -> anyhow::Result<Child> {
        let delivery = if mode == Mode::AtLeastOnce {
            "at-least-once"
        } else {
            "exactly-once"
        };
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Command::new(crate::child::txflow())
            .args(["run", "--stage", "ledger", "--delivery", delivery])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .context("starting the ledger")
    }

    pub(crate) async fn clean_up(&self) {
        if let Ok(session) = scylla::connect(&self.config.store).await {
            let drop = format!("DROP KEYSPACE IF EXISTS {}", self.config.store.keyspace);
            if let Err(e) = session.query_unpaged(drop, ()).await {
                tracing::warn!("dropping {}: {e}", self.config.store.keyspace);
            }
        }
        if let Err(e) = kafka::delete_topics(&self.config.kafka, &self.config.all_topics()).await {
            tracing::warn!("deleting the bench topics: {e}");
        }
    }
}

/// Events sent, by id: their type and when they were handed to the producer.
#[derive(Default)]
struct Sent {
    events: HashMap<String, (EventType, Instant)>,
}

/// The bench's producer of a lane's events, made once: it has its metadata and producer id
/// from the warm-up, so that the clock of a measured event does not run while the producer
/// starts (a second, which a fixed-rate run saw as its p99).
struct Feed {
    codec: Arc<Codec>,
    producer: kafka::ReportingProducer,
    topic: String,
}

impl Feed {
    async fn new(lane: &Lane) -> anyhow::Result<Feed> {
        Ok(Feed {
            codec: txflow::app::codec::codec(&lane.config).await?,
            producer: kafka::idempotent_producer(&lane.config.kafka)?,
            topic: lane.config.topics.ledger.clone(),
        })
    }

    /// Writes `events` to the lane's ledger topic, at `rate` per second if given, and waits
    /// until every one is acknowledged.
    async fn produce(
        &self,
        events: impl Iterator<Item = TransactionEvent>,
        rate: Option<NonZeroU32>,
        sent: &Mutex<Sent>,
    ) -> anyhow::Result<()> {
        let limiter = rate.map(pacing);
        for event in events {
            if let Some(limiter) = &limiter {
                limiter.until_ready().await;
            }
            let value = self.codec.encode(Record::TransactionEvent, &event)?;
            sent.lock()
                .await
                .events
                .insert(event.event_id.clone(), (event.event_type, Instant::now()));
            let record = BaseRecord::to(&self.topic)
                .key(event.account_id.as_bytes())
                .payload(value.as_slice());
            kafka::send_when_room(&self.producer, record)
                .await
                .context("producing")?;
        }
        tokio::task::block_in_place(|| self.producer.flush(Duration::from_secs(60)))?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} bench events were not delivered");
        }
        Ok(())
    }
}

/// What the results consumer saw.
#[derive(Default)]
struct Observed {
    results: u64,
    /// Results still expected: one per event, plus one per applied transfer debit.
    expected: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Event handed to the producer → its result readable, for primary results.
    latencies: Vec<Duration>,
}

/// Reads the results of the pipeline configured by `config` until every event sent has
/// its result(s), or `limit` passes.
async fn observe(
    config: &Config,
    sent: &Mutex<Sent>,
    total_events: u64,
    limit: Duration,
    mut caught_up: Option<(u64, tokio::sync::oneshot::Sender<()>)>,
) -> anyhow::Result<Observed> {
    let codec = txflow::app::codec::codec(config).await?;
    let consumer: StreamConsumer = kafka::client_config(&config.kafka)
        .set(
            "group.id",
            format!("{}-observer", config.ledger.group.group_id),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..config.topics.partitions {
        assignment.add_partition_offset(&config.topics.results, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut observed = Observed {
        expected: total_events,
        ..Observed::default()
    };
    let deadline = Instant::now() + limit;
    let mut stream = consumer.stream();
    while observed.results < observed.expected {
        if caught_up
            .as_ref()
            .is_some_and(|(at, _)| observed.results >= *at)
        {
            if let Some((_, tell)) = caught_up.take() {
                let _ = tell.send(());
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(remaining, stream.next()).await else {
            bail!(
                "{} of {} results after {limit:?}: the ledger is stuck (see its log)",
                observed.results,
                observed.expected
            );
        };
        let message = message.context("the results stream ended")??;
        let now = Instant::now();
        let result: TransactionResult = codec.decode(
            Record::TransactionResult,
            message.payload().unwrap_or_default(),
        )?;
        observed.results += 1;
        observed.first.get_or_insert(now);
        observed.last = Some(now);
        let sent = sent.lock().await;
        if let Some((event_type, at)) = sent.events.get(&result.event_id) {
            if result.entry == Entry::Debit && *event_type == EventType::Transfer {
                observed.expected += 1;
            }
            if result.entry != Entry::Credit || *event_type != EventType::Transfer {
                observed.latencies.push(now - *at);
            }
        }
    }
    Ok(observed)
}

struct Throughput {
    mode: Mode,
    events: u64,
    results: u64,
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

async fn throughput(
    base: &Config,
    run: &str,
    mode: Mode,
    events: u64,
    args: &BenchArgs,
    logs: &Path,
) -> anyhow::Result<Throughput> {
    let lane = Lane::new(base, run, mode, args.partitions);
    lane.prepare().await?;
    let outcome = async {
        let log = logs.join(format!("ledger-{}.log", mode.name()));
        let mut child = lane.start_ledger(mode, &log)?;
        let measured = async {
            let (observed, started) =
                feed_workload(&lane, args, run, events, None, Duration::from_secs(1800)).await?;
            let last = observed.last.context("no results")?;
            Ok::<_, anyhow::Error>((observed.results, (last - started).as_secs_f64()))
        }
        .await;
        let rss = peak_rss_mib(child.id());
        terminate(&mut child);
        let (results, seconds) = measured
            .with_context(|| format!("the {} run; ledger log: {}", mode.name(), log.display()))?;
        Ok(Throughput {
            mode,
            events,
            results,
            seconds,
            peak_rss_mib: rss,
        })
    }
    .await;
    lane.clean_up().await;
    outcome
}

struct Latency {
    rate: u32,
    seconds: u64,
    samples: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    peak_rss_mib: Option<f64>,
}

async fn latency(
    base: &Config,
    run: &str,
    rate: u32,
    args: &BenchArgs,
    logs: &Path,
) -> anyhow::Result<Latency> {
    let lane = Lane::new(base, &format!("{run}l"), Mode::ExactlyOnce, args.partitions);
    lane.prepare().await?;
    let outcome = async {
        let log = logs.join("ledger-latency.log");
        let mut child = lane.start_ledger(Mode::ExactlyOnce, &log)?;
        let count = u64::from(rate) * args.latency_seconds;
        let measured = feed_workload(
            &lane,
            args,
            run,
            count,
            NonZeroU32::new(rate),
            Duration::from_secs(600),
        )
        .await;
        let rss = peak_rss_mib(child.id());
        terminate(&mut child);
        let (observed, _) =
            measured.with_context(|| format!("the latency run; ledger log: {}", log.display()))?;
        let mut latencies = observed.latencies;
        latencies.sort();
        if latencies.is_empty() {
            bail!("no latency samples");
        }
        Ok(Latency {
            rate,
            seconds: args.latency_seconds,
            samples: latencies.len(),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies[latencies.len() - 1],
            peak_rss_mib: rss,
        })
    }
    .await;
    lane.clean_up().await;
    outcome
}

/// Warms the lane's ledger up, then hands it `events` of the workload (at `rate` a second if
/// given) and reads their results: what the reader saw of the measured events (the warm-up's
/// results not counted), and when the first of them was handed to the producer.
async fn feed_workload(
    lane: &Lane,
    args: &BenchArgs,
    run: &str,
    events: u64,
    rate: Option<NonZeroU32>,
    limit: Duration,
) -> anyhow::Result<(Observed, Instant)> {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let mut workload = workload(args, run);
    let feed = Feed::new(lane).await?;
    let opened = warm_up(lane, &feed, &workload, &sent).await?;
    let observer = spawn_observer(lane, &sent, events + opened, opened, limit).await?;
    let started = Instant::now();
    let generated = (0..events).map(|_| workload.next_event().0);
    feed.produce(generated, rate, &sent).await?;
    let mut observed = observer.await??;
    observed.results -= opened;
    Ok((observed, started))
}

/// Opens every account of the workload with a deposit, through a freshly started ledger:
/// the group join and the accounts' first writes are behind us before the clock runs, as in
/// a ledger that has been running. Returns how many results that left on the results topic.
async fn warm_up(
    lane: &Lane,
    feed: &Feed,
    workload: &Workload,
    sent: &Mutex<Sent>,
) -> anyhow::Result<u64> {
    let openings = workload.openings();
    let count = openings.len() as u64;
    feed.produce(openings.into_iter(), None, sent).await?;
    observe(&lane.config, sent, count, Duration::from_secs(300), None).await?;
    sent.lock().await.events.clear();
    Ok(count)
}

/// Reads the lane's results in the background until `total_events` have theirs; returns
/// once the reader has read the `opened` results already there, so that the clock of the
/// events produced next does not include the reader's own start (a second, seen as the p99).
async fn spawn_observer(
    lane: &Lane,
    sent: &Arc<Mutex<Sent>>,
    total_events: u64,
    opened: u64,
    limit: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Observed>>> {
    let config = lane.config.clone();
    let sent = sent.clone();
    let (tell, caught_up) = tokio::sync::oneshot::channel();
    let observer = tokio::spawn(async move {
        observe(&config, &sent, total_events, limit, Some((opened, tell))).await
    });
    if caught_up.await.is_err() {
        return match observer.await? {
            Err(e) => Err(e.context("reading the results the warm-up left")),
            Ok(_) => bail!("the results reader stopped before it read the warm-up's results"),
        };
    }
    Ok(observer)
}

fn workload(args: &BenchArgs, run: &str) -> Workload {
    Workload::new(WorkloadConfig {
        accounts: args.accounts,
        zipf_exponent: args.zipf,
        id_prefix: run.to_owned(),
        ..WorkloadConfig::default()
    })
}

/// `INSERT … IF NOT EXISTS` at high concurrency on the store alone: its LWT ceiling here.
async fn lwt_ceiling(base: &Config, run: &str, args: &BenchArgs) -> anyhow::Result<f64> {
    let mut store = base.store.clone();
    store.keyspace = format!("bench_{run}_lwt");
    let session = scylla::connect(&store).await?;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
                store.keyspace, store.replication
            ),
            (),
        )
        .await?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {}.probe (id bigint PRIMARY KEY)",
                store.keyspace
            ),
            (),
        )
        .await?;
    let insert = session
        .prepare(format!(
            "INSERT INTO {}.probe (id) VALUES (?) IF NOT EXISTS",
            store.keyspace
        ))
        .await?;
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let workers = (0..args.lwt_concurrency).map(|_| async {
        loop {
            let id = next.fetch_add(1, Ordering::Relaxed);
            if id >= args.lwt_count {
                return Ok::<_, anyhow::Error>(());
            }
            let applied =
                scylla::lwt_applied(session.execute_unpaged(&insert, (id as i64,)).await?)?;
            if !applied {
                bail!("probe row {id} existed already");
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    let rate = args.lwt_count as f64 / started.elapsed().as_secs_f64();
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace), ())
        .await;
    Ok(rate)
}

pub async fn bench(config: &Config, args: BenchArgs, run: &str, logs: &Path) -> anyhow::Result<()> {
    eprintln!(
        "bench: raw LWT ceiling ({} inserts, {} concurrent)",
        args.lwt_count, args.lwt_concurrency
    );
    let ceiling = lwt_ceiling(config, run, &args).await?;
    let throughput_of = |mode: Mode, events: u64| {
        eprintln!("bench: {} throughput on {events} events", mode.name());
        throughput(config, run, mode, events, &args, logs)
    };
    let mut runs = vec![throughput_of(Mode::ExactlyOnce, args.events).await?];
    let exactly_once = runs[0].per_second();
    let rate = args
        .latency_rate
        .unwrap_or(((exactly_once / 2.0).round() as u32).max(1));
    eprintln!(
        "bench: exactly-once latency at {rate} events/s for {} s",
        args.latency_seconds
    );
    // Right after the run it takes its rate from: the store is not yet busy flushing and
    // compacting the writes of the comparison runs, which are no part of this pipeline.
    let latency = latency(config, run, rate, &args, logs).await?;
    runs.push(throughput_of(Mode::AtLeastOnce, args.events).await?);
    runs.push(throughput_of(Mode::Naive, args.naive_events).await?);

    let report = report(&args, &runs, ceiling, &latency);
    print!("{report}");
    if let Some(path) = &args.output {
        write_section(path, &report, START, END)?;
        eprintln!("bench: written to {}", path.display());
    }
    Ok(())
}

const START: &str = "<!-- txflow bench: ledger (start) -->";
const END: &str = "<!-- txflow bench: ledger (end) -->";

fn report(args: &BenchArgs, runs: &[Throughput], ceiling: f64, latency: &Latency) -> String {
    let command: Vec<String> = std::env::args().skip(1).collect();
    let eos = runs[0].per_second();
    let mut md = String::new();
    let _ = writeln!(md, "{START}");
    let _ = writeln!(md, "## Ledger throughput and latency\n");
    let _ = writeln!(
        md,
        "Measured by `txflow-bench {}` on {}, against the local stack",
        command.join(" "),
        machine()
    );
    let _ = writeln!(
        md,
        "(`deploy/local/stack up`: Kafka and Cassandra on the same machine), {} accounts with Zipf exponent {}, {} partitions.\n",
        args.accounts, args.zipf, args.partitions
    );
    let _ = writeln!(
        md,
        "| mode | events | results | seconds | events/s | vs exactly-once | ledger peak RSS |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.0} | {:.2}× | {} |",
            run.mode.describe(),
            run.events,
            run.results,
            run.seconds,
            run.per_second(),
            run.per_second() / eos,
            run.peak_rss_mib
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "?".to_owned())
        );
    }
    let _ = writeln!(
        md,
        "| raw store ceiling: `INSERT … IF NOT EXISTS`, {} concurrent, no Kafka | {} | | | {:.0} LWT/s | {:.2}× | |",
        args.lwt_concurrency,
        args.lwt_count,
        ceiling,
        ceiling / eos
    );
    let _ = writeln!(
        md,
        "\nExactly-once latency, event handed to the producer → result readable (`read_committed`), at {} events/s ({}) for {} s: p50 {} ms, p99 {} ms, max {} ms over {} events; ledger peak RSS {}.\n",
        latency.rate,
        if args.latency_rate.is_some() { "as asked" } else { "half the exactly-once throughput" },
        latency.seconds,
        latency.p50.as_millis(),
        latency.p99.as_millis(),
        latency.max.as_millis(),
        latency.samples,
        latency.peak_rss_mib.map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "?".to_owned())
    );
    let alo = runs[1].per_second();
    let naive = runs[2].per_second();
    let peak = runs
        .iter()
        .filter_map(|r| r.peak_rss_mib)
        .chain(latency.peak_rss_mib)
        .fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| exactly-once ≥ 80% of at-least-once | {:.0}% | {} |",
        eos / alo * 100.0,
        verdict(eos >= 0.8 * alo)
    );
    let _ = writeln!(
        md,
        "| exactly-once ≥ 3× naive, under Zipf skew | {:.1}× | {} |",
        eos / naive,
        verdict(eos >= 3.0 * naive)
    );
    let _ = writeln!(
        md,
        "| p99 ≤ 250 ms at half the sustained maximum | {} ms at {} events/s ({:.0}% of the exactly-once throughput) | {} |",
        latency.p99.as_millis(),
        latency.rate,
        f64::from(latency.rate) / eos * 100.0,
        // The rate is half the throughput rounded to a whole number of events per second.
        verdict(
            latency.p99 <= Duration::from_millis(250)
                && f64::from(latency.rate) >= (eos / 2.0).floor()
        )
    );
    let _ = writeln!(
        md,
        "| ledger process < 256 MiB resident | {peak:.0} MiB peak | {} |",
        verdict(peak < 256.0)
    );
    let _ = writeln!(md, "{END}");
    md
}
