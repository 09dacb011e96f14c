//! `txflow audit`: rebuilds every account from the results topic, checks the ledger's rules
//! and money's conservation, and compares what it rebuilt with the store.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use clap::Args;
use futures::TryStreamExt;

use txflow::adapters::objects::ObjectStorage;
use txflow::app::{Access, Config};
use txflow::codec::{Codec, Record};
use txflow::domain::audit::{audit as audit_ledger, compare_with_store};
use txflow::domain::{TransactionEvent, TransactionResult};
use txflow::ports::{Balances, TopicReader};
use txflow::stages::archiver::history::{archived, merged};
use txflow::wire::{InputRecord, LEG};

use super::{archive_storage, print_line};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print at most this many differences and broken rules of each kind (all are counted).
    #[arg(long, value_name = "N", default_value_t = 100)]
    show: usize,
    /// Read the ledger and results topics from the archive too ([archiver.storage]; with
    /// --dev-dir, that txflow dev's archive): what the topics' retention dropped comes from
    /// the archive, what the archive has not written yet from the topics.
    #[arg(long)]
    archive: bool,
}

/// What the ledger topic holds: the events sent to the ledger, not the legs it wrote itself.
struct Sent {
    events: Vec<TransactionEvent>,
    /// Records that are no valid event: the ledger dead-lettered them.
    poison: usize,
}

fn sent(codec: &Codec, records: &[InputRecord]) -> Sent {
    let mut sent = Sent {
        events: Vec::new(),
        poison: 0,
    };
    for record in records.iter().filter(|r| r.header(LEG).is_none()) {
        let event = codec
            .decode::<TransactionEvent>(
                Record::TransactionEvent,
                record.value.as_deref().unwrap_or_default(),
            )
            .ok()
            .filter(|e| {
                e.validate().is_ok() && record.key.as_deref() == Some(e.account_id.as_bytes())
            });
        match event {
            Some(event) => sent.events.push(event),
            None => sent.poison += 1,
        }
    }
    sent
}

fn results(codec: &Codec, records: &[InputRecord]) -> anyhow::Result<Vec<TransactionResult>> {
    records
        .iter()
        .map(|record| {
            codec
                .decode(
                    Record::TransactionResult,
                    record.value.as_deref().unwrap_or_default(),
                )
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the result at partition {} offset {} of the results topic cannot be read: {e}",
                        record.partition,
                        record.offset
                    )
                })
        })
        .collect()
}

/// `topic`'s committed records; with `archive`, merged with its archive files.
async fn history_of(
    reader: &impl TopicReader,
    archive: Option<&ObjectStorage>,
    topic: &str,
) -> anyhow::Result<Vec<InputRecord>> {
    let logged = reader.read_to_end(topic).await?;
    let Some(objects) = archive else {
        return Ok(logged);
    };
    let (all, archived_only) = merged(archived(objects, topic).await?, logged);
    print_line(&format!(
        "{topic}: {} records, {archived_only} of them from the archive alone",
        all.len()
    ))?;
    Ok(all)
}

/// Audits the ledger `access` reaches. Amounts are printed in minor units, as the results
/// carry them.
pub async fn audit<A: Access>(
    access: &A,
    config: &Config,
    dev_dir: Option<&Path>,
    args: AuditArgs,
) -> anyhow::Result<()> {
    let codec = txflow::app::codec::codec(config).await?;
    let reader = access.reader(config)?;
    let archive = match args.archive {
        true => Some(archive_storage(config, dev_dir)?),
        false => None,
    };
    let (ledger_topic, results_topic) = (&config.topics.ledger, &config.topics.results);
    let sent = sent(
        &codec,
        &history_of(&reader, archive.as_ref(), ledger_topic).await?,
    );
    let results = results(
        &codec,
        &history_of(&reader, archive.as_ref(), results_topic).await?,
    )?;
    let report = audit_ledger(&sent.events, &results);
    let balances = access.balances(config).await?;
    let stored: BTreeMap<_, _> = balances.accounts().try_collect().await?;
    let divergences = compare_with_store(&report, &results, &stored);

    print_line(&format!(
        "read {} events ({} not valid, left out) from {ledger_topic} and {} results from {results_topic}; \
         {} accounts rebuilt, {} in the store",
        sent.events.len(),
        sent.poison,
        results.len(),
        report.accounts.len(),
        stored.len()
    ))?;
    for (currency, net) in &report.net_by_currency {
        let sum = |by_currency: &BTreeMap<String, i128>| by_currency.get(currency).copied();
        let held = sum(&report.held_by_currency).unwrap_or(0);
        let in_flight = sum(&report.in_flight_by_currency).unwrap_or(0);
        print_line(&format!(
            "{currency}: accounts hold {held} and transfers in flight {in_flight} (minor units); \
             deposits minus withdrawals applied: {net}"
        ))?;
        for flight in report.in_flight.iter().filter(|f| &f.currency == currency) {
            print_line(&format!(
                "  in flight: transfer {:?}, {} {currency}",
                flight.event_id, flight.amount_minor
            ))?;
        }
    }
    for violation in report.violations.iter().take(args.show) {
        print_line(&format!("broken rule: {violation}"))?;
    }
    for divergence in divergences.iter().take(args.show) {
        print_line(&format!("store differs: {divergence}"))?;
    }
    if !report.violations.is_empty() || !divergences.is_empty() {
        bail!(
            "the audit failed: {} broken rules in the results, {} accounts where the store differs from them",
            report.violations.len(),
            divergences.len()
        );
    }
    print_line(&"the audit passed: every result follows from an event, every balance from its results, the store agrees, money is conserved")
}
