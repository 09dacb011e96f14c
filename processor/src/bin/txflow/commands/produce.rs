//! `txflow produce`: generated Avro events, to Kafka or a running `txflow dev`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use txflow::app::Access;
use txflow::app::Config;
use txflow::codec::Record;
use txflow::domain::TransactionEvent;
use txflow::limits::pacing;
use txflow::loadgen::hostile::{HostileConfig, HostileWorkload};
use txflow::loadgen::{Sent, Workload, WorkloadConfig};
use txflow::ports::Publisher;
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
    /// Before the --count events, one opening deposit per account, large enough for every
    /// later debit to apply: the balances then do not depend on how the accounts' events
    /// interleave (as in a ledger that has been running a while, and as a replay into a
    /// fresh ledger needs to rebuild them).
    #[arg(long, conflicts_with = "hostile")]
    openings: bool,
}

/// Records on their way out: written together, up to [`Writes::BATCH`] at once, none
/// waiting longer than [`Writes::WAIT`] for others (a slow `--rate` still arrives at its
/// pace).
struct Writes<'a, P> {
    publisher: &'a P,
    pending: Vec<OutputRecord>,
    /// When the oldest pending record was made.
    since: Instant,
    delivered: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl<'a, P: Publisher> Writes<'a, P> {
    const BATCH: usize = 500;
    const WAIT: Duration = Duration::from_millis(100);

    fn new(publisher: &'a P) -> Self {
        Writes {
            publisher,
            pending: Vec::with_capacity(Self::BATCH),
            since: Instant::now(),
            delivered: 0,
            failed: 0,
            first_failure: None,
        }
    }

    async fn send(&mut self, record: OutputRecord) {
        if self.pending.is_empty() {
            self.since = Instant::now();
        }
        self.pending.push(record);
        if self.pending.len() >= Self::BATCH || self.since.elapsed() >= Self::WAIT {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        for outcome in self.publisher.publish(batch).await {
            match outcome {
                Ok(_) => self.delivered += 1,
                Err(e) => {
                    self.failed += 1;
                    self.first_failure.get_or_insert(e.to_string());
                }
            }
        }
    }
}

/// The workload `txflow produce` writes.
enum Events {
    Zipf(Workload),
    Hostile(HostileWorkload),
}

impl Events {
    /// The workload the arguments ask for.
    fn of(args: &ProduceArgs) -> Events {
        let id_prefix = args
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        if args.hostile {
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
        }
    }

    /// One opening deposit per account (none for the hostile workload).
    fn openings(&self) -> Vec<TransactionEvent> {
        match self {
            Events::Zipf(workload) => workload.openings(),
            Events::Hostile(_) => Vec::new(),
        }
    }

    fn next_event(&mut self) -> (TransactionEvent, Sent) {
        match self {
            Events::Zipf(workload) => workload.next_event(),
            Events::Hostile(workload) => workload.next_event(),
        }
    }
}

pub async fn produce<A: Access>(
    access: &A,
    config: &Config,
    args: ProduceArgs,
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
    let publisher = access.publisher(config)?;
    let mut writes = Writes::new(&publisher);
    let mut workload = Events::of(&args);
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
    let record = |event: TransactionEvent| -> anyhow::Result<OutputRecord> {
        Ok(OutputRecord {
            topic: topic.clone(),
            value: Some(codec.encode(Record::TransactionEvent, &event)?),
            key: Some(event.account_id.into_bytes()),
            headers: Vec::new(),
        })
    };
    if args.openings {
        for event in workload.openings() {
            fresh += 1;
            writes.send(record(event)?).await;
        }
    }
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
        writes.send(record(event)?).await;
    }
    writes.flush().await;
    let (delivered, failed) = (writes.delivered, writes.failed);
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
    if let Some(first) = writes.first_failure {
        bail!("{failed} of {sent} events were not delivered, the first because: {first}");
    }
    Ok(())
}
