//! `txflow produce`: generated Avro events, to Kafka or a running `txflow dev`.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::producer::{BaseRecord, Producer};

use txflow::adapters::embedded::remote::{DevClient, WRITE_RECORDS};
use txflow::adapters::kafka;
use txflow::codec::Record;
use txflow::config::Config;
use txflow::domain::TransactionEvent;
use txflow::limits::pacing;
use txflow::loadgen::hostile::{HostileConfig, HostileWorkload};
use txflow::loadgen::{Sent, Workload, WorkloadConfig};
use txflow::wire::OutputRecord;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic to write to (default: the ledger topic, which the ledger stage reads).
    #[arg(long)]
    topic: Option<String>,
    /// How many events to write; with neither --count nor --duration, 1000.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// For how many seconds to write.
    #[arg(long)]
    duration: Option<u64>,
    /// Events per second; 0 writes as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Number of accounts.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Zipf exponent of account popularity (0 is uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Random seed: the same seed writes the same sequence of events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of the event ids (default: a fresh random one, so that runs never share ids).
    #[arg(long)]
    id_prefix: Option<String>,
    /// Currency of every event.
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Share (0..1) of events that re-send an earlier event unchanged.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share (0..1) of events that re-send an earlier event id with another amount.
    #[arg(long, default_value_t = 0.0)]
    conflicts: f64,
    /// Write the hostile workload instead: every event valid, event ids re-used across
    /// accounts, types and amounts, amounts of 1 and at the largest balance and the 64-bit
    /// limit, transfers into accounts opened a moment before, a second currency. For trying
    /// a deployment's guarantees; --accounts, --zipf, --currency, --duplicates and
    /// --conflicts do not apply.
    #[arg(long, conflicts_with_all = ["accounts", "zipf", "currency", "duplicates", "conflicts"])]
    hostile: bool,
}

/// Where `txflow produce` writes: Kafka, or a running `txflow dev`.
enum Destination<'a> {
    Kafka(kafka::ReportingProducer),
    Dev {
        client: &'a DevClient,
        pending: Vec<OutputRecord>,
        /// When the oldest pending record was made.
        since: Instant,
        delivered: u64,
    },
}

impl Destination<'_> {
    /// How long a record waits for others to go with it to a `txflow dev`, at most: a
    /// slow `--rate` still arrives at its pace.
    const DEV_WAIT: Duration = Duration::from_millis(100);

    async fn send(&mut self, topic: &str, key: &[u8], value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Destination::Kafka(producer) => {
                let record = BaseRecord::to(topic).key(key).payload(value.as_slice());
                kafka::send_when_room(producer, record)
                    .await
                    .with_context(|| format!("producing to {topic}"))
            }
            Destination::Dev { pending, since, .. } => {
                if pending.is_empty() {
                    *since = Instant::now();
                }
                pending.push(OutputRecord {
                    topic: topic.to_owned(),
                    key: Some(key.to_vec()),
                    value: Some(value),
                    headers: Vec::new(),
                });
                if pending.len() >= WRITE_RECORDS || since.elapsed() >= Self::DEV_WAIT {
                    self.flush_dev(topic).await?;
                }
                Ok(())
            }
        }
    }

    async fn flush_dev(&mut self, topic: &str) -> anyhow::Result<()> {
        if let Destination::Dev {
            client,
            pending,
            delivered,
            ..
        } = self
        {
            if !pending.is_empty() {
                *delivered += client.publish(topic, pending).await?.len() as u64;
                pending.clear();
            }
        }
        Ok(())
    }

    /// Waits until everything sent is acknowledged; how many were delivered, how many failed.
    async fn finish(mut self, topic: &str) -> anyhow::Result<(u64, u64)> {
        self.flush_dev(topic).await?;
        match self {
            Destination::Kafka(producer) => {
                tokio::task::block_in_place(|| producer.flush(Duration::from_secs(60)))
                    .context("waiting for the broker to acknowledge every event")?;
                let deliveries = producer.context();
                Ok((
                    deliveries.delivered.load(Ordering::Relaxed),
                    deliveries.failed.load(Ordering::Relaxed),
                ))
            }
            Destination::Dev { delivered, .. } => Ok((delivered, 0)),
        }
    }
}

/// The workload `txflow produce` writes.
enum Events {
    Zipf(Workload),
    Hostile(HostileWorkload),
}

impl Events {
    fn next_event(&mut self) -> (TransactionEvent, Sent) {
        match self {
            Events::Zipf(workload) => workload.next_event(),
            Events::Hostile(workload) => workload.next_event(),
        }
    }
}

pub async fn produce(
    config: &Config,
    args: ProduceArgs,
    dev: Option<&DevClient>,
) -> anyhow::Result<()> {
    for (name, share) in [
        ("--duplicates", args.duplicates),
        ("--conflicts", args.conflicts),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{name} is a share between 0 and 1, got {share}");
        }
    }
    if args.accounts < 2 {
        bail!("--accounts must be at least 2, so that transfers have a counterparty");
    }
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| config.topics.ledger.clone());
    let codec = txflow::app::codec::codec(config).await?;
    let mut destination = match dev {
        Some(client) => Destination::Dev {
            client,
            pending: Vec::new(),
            since: Instant::now(),
            delivered: 0,
        },
        None => Destination::Kafka(kafka::idempotent_producer(&config.kafka)?),
    };
    let id_prefix = args
        .id_prefix
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let mut workload = if args.hostile {
        Events::Hostile(HostileWorkload::new(HostileConfig {
            seed: args.seed,
            prefix: id_prefix,
        }))
    } else {
        Events::Zipf(Workload::new(WorkloadConfig {
            accounts: args.accounts,
            zipf_exponent: args.zipf,
            seed: args.seed,
            id_prefix,
            currency: args.currency.clone(),
            duplicate_share: args.duplicates,
            conflict_share: args.conflicts,
            ..WorkloadConfig::default()
        }))
    };
    let limiter = NonZeroU32::new(args.rate).map(pacing);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let count = match (args.count, deadline) {
        (Some(count), _) => count,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1000,
    };
    let started = Instant::now();
    let (mut fresh, mut duplicates, mut conflicts) = (0u64, 0u64, 0u64);
    for _ in 0..count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(limiter) = &limiter {
            limiter.until_ready().await;
        }
        let (event, sent) = workload.next_event();
        match sent {
            Sent::Fresh => fresh += 1,
            Sent::Duplicate => duplicates += 1,
            Sent::Conflict => conflicts += 1,
        }
        let value = codec.encode(Record::TransactionEvent, &event)?;
        destination
            .send(&topic, event.account_id.as_bytes(), value)
            .await?;
    }
    let (delivered, failed) = destination.finish(&topic).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sent = fresh + duplicates + conflicts;
    println!(
        "{}",
        serde_json::json!({
            "topic": topic,
            "sent": sent,
            "fresh": fresh,
            "duplicates": duplicates,
            "conflicts": conflicts,
            "delivered": delivered,
            "failed": failed,
            "seconds": elapsed,
            "events_per_second": sent as f64 / elapsed.max(1e-9),
        })
    );
    if failed > 0 {
        bail!("{failed} of {sent} events were not delivered");
    }
    Ok(())
}
