//! Results audited per second (`txflow audit`'s pure part: the rules, the rebuilt accounts,
//! conservation and the comparison with the store) for ledgers of 10,000 to 1,000,000
//! accounts, beside the least any audit does: summing each account's balance changes.
//! `cargo bench -p txflow --bench audit`; the numbers are recorded in docs/PERFORMANCE.md.

use std::collections::{BTreeMap, HashMap};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use txflow::domain::audit::{audit, compare_with_store};
use txflow::domain::{Account, Entry, EventType, Status, TransactionEvent, TransactionResult};

/// A ledger of `accounts` accounts: each deposited into, then transferring half of it to the
/// next one. Two events and three results an account.
struct Ledger {
    events: Vec<TransactionEvent>,
    results: Vec<TransactionResult>,
    stored: BTreeMap<String, Account>,
}

fn ledger(accounts: usize) -> Ledger {
    let id = |i: usize| format!("acct-{i:07}");
    let event =
        |event_id: String, event_type, i: usize, to: Option<String>, amount| TransactionEvent {
            event_id,
            event_type,
            account_id: id(i),
            counterparty_account_id: to,
            amount_minor: amount,
            currency: "EUR".to_owned(),
            occurred_at: 0,
            source: "bench".to_owned(),
            attributes: BTreeMap::new(),
        };
    let result = |event_id: &str, i: usize, entry, amount, after, version| TransactionResult {
        event_id: event_id.to_owned(),
        account_id: id(i),
        entry,
        status: Status::Applied,
        reason: None,
        amount_minor: amount,
        balance_after_minor: after,
        account_version: version,
        processed_at: 0,
    };
    let mut ledger = Ledger {
        events: Vec::with_capacity(2 * accounts),
        results: Vec::with_capacity(3 * accounts),
        stored: BTreeMap::new(),
    };
    for i in 0..accounts {
        let next = (i + 1) % accounts;
        let (deposit, transfer) = (format!("d-{i}"), format!("t-{i}"));
        ledger
            .events
            .push(event(deposit.clone(), EventType::Deposit, i, None, 1_000));
        ledger.events.push(event(
            transfer.clone(),
            EventType::Transfer,
            i,
            Some(id(next)),
            500,
        ));
        ledger
            .results
            .push(result(&deposit, i, Entry::Credit, 1_000, 1_000, 1));
        // Each account is credited by the one before it between its deposit and its own
        // transfer, except account 0: credited last, after its transfer.
        let (debit_after, debit_version) = if i == 0 { (500, 2) } else { (1_000, 3) };
        let (credit_after, credit_version) = if next == 0 { (1_000, 3) } else { (1_500, 2) };
        ledger.results.push(result(
            &transfer,
            i,
            Entry::Debit,
            500,
            debit_after,
            debit_version,
        ));
        ledger.results.push(result(
            &transfer,
            next,
            Entry::Credit,
            500,
            credit_after,
            credit_version,
        ));
        ledger.stored.insert(
            id(i),
            Account {
                balance_minor: 1_000,
                currency: Some("EUR".to_owned()),
                version: 3,
            },
        );
    }
    ledger
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit");
    group.sample_size(10);
    for accounts in [10_000, 100_000, 1_000_000] {
        let ledger = ledger(accounts);
        let report = audit(&ledger.events, &ledger.results);
        assert!(
            report.violations.is_empty(),
            "{:?}",
            &report.violations[..3.min(report.violations.len())]
        );
        assert!(compare_with_store(&report, &ledger.results, &ledger.stored).is_empty());
        group.throughput(Throughput::Elements(ledger.results.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("balances summed (baseline)", accounts),
            &ledger,
            |b, ledger| {
                b.iter(|| {
                    let mut balances: HashMap<&str, i64> = HashMap::new();
                    for r in &ledger.results {
                        *balances.entry(&r.account_id).or_default() += r.balance_change();
                    }
                    balances.len()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("audited and compared", accounts),
            &ledger,
            |b, ledger| {
                b.iter(|| {
                    let report = audit(&ledger.events, &ledger.results);
                    compare_with_store(&report, &ledger.results, &ledger.stored).len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
