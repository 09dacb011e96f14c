//! Records archived per second: an archive file made of 10,000 results as the ledger writes
//! them (Confluent wire format), with each result decoded as JSON beside its bytes, against
//! the same file without the JSON, and against the least any archiver does, copying the
//! records' bytes into one buffer. `cargo bench -p txflow --bench archive`; the numbers are
//! recorded in docs/PERFORMANCE.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use txflow::codec::{Codec, Record};
use txflow::domain::{Entry, Status, TransactionResult};
use txflow::stages::archiver::{decoded, file, ArchivedTopics};
use txflow::wire::InputRecord;

const RECORDS: usize = 10_000;

fn results(codec: &Codec) -> Vec<InputRecord> {
    (0..RECORDS)
        .map(|i| {
            let result = TransactionResult {
                event_id: format!("evt-{i:012}"),
                account_id: format!("acct-{:07}", i % 5_000),
                entry: Entry::Credit,
                status: Status::Applied,
                reason: None,
                amount_minor: 1_000 + i as i64,
                balance_after_minor: 100_000 + i as i64,
                account_version: i as i64,
                processed_at: 1_796_078_278_123 + i as i64,
            };
            InputRecord {
                topic: "txflow.results".to_owned(),
                partition: 3,
                offset: i as i64,
                timestamp: Some(1_796_078_278_123 + i as i64),
                key: Some(result.account_id.clone().into_bytes()),
                value: Some(
                    codec
                        .encode(Record::TransactionResult, &result)
                        .expect("a result encodes"),
                ),
                headers: vec![("txflow.trace".to_owned(), vec![b'0'; 55])],
            }
        })
        .collect()
}

fn archive(c: &mut Criterion) {
    let codec = Codec::builtin();
    let topics = ArchivedTopics {
        events: "txflow.events".to_owned(),
        ledger: "txflow.ledger".to_owned(),
        results: "txflow.results".to_owned(),
    };
    let records = results(&codec);
    let bytes: usize = records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, Vec::len)
                + r.value.as_ref().map_or(0, Vec::len)
                + r.headers
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let with_json = file::encode(&records, |r| decoded(&codec, &topics, r)).unwrap();
    let without = file::encode(&records, |_| None).unwrap();
    eprintln!(
        "archive: {RECORDS} results, {bytes} bytes of keys, values and headers; files of {} bytes (with JSON) and {} bytes (without)",
        with_json.len(),
        without.len()
    );
    let mut group = c.benchmark_group("archive");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("file with decoded JSON", |b| {
        b.iter(|| file::encode(&records, |r| decoded(&codec, &topics, r)).unwrap())
    });
    group.bench_function("file without JSON", |b| {
        b.iter(|| file::encode(&records, |_| None).unwrap())
    });
    group.bench_function("copy of the bytes (baseline)", |b| {
        b.iter(|| {
            let mut copy = Vec::with_capacity(bytes);
            for record in &records {
                copy.extend_from_slice(record.key.as_deref().unwrap_or_default());
                copy.extend_from_slice(record.value.as_deref().unwrap_or_default());
                for (name, value) in &record.headers {
                    copy.extend_from_slice(name.as_bytes());
                    copy.extend_from_slice(value);
                }
            }
            copy
        })
    });
    group.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
