//! Producer re-sends, conflicting re-sends and poison records (garbage bytes, an unknown
//! schema id, an invalid amount, a wrong key, an idempotency conflict), one by one, with the
//! exact outcome of each and the headers of each dead letter.

use std::collections::BTreeMap;
use std::time::Duration;

use txflow::codec::{Codec, Record};
use txflow::domain::{Entry, EventType, Status, TransactionEvent};
use txflow::wire::{
    ATTEMPTS, ERROR_KIND, ERROR_MESSAGE, FIRST_FAILURE, GROUP, LAST_FAILURE, ORIGINAL_OFFSET,
    ORIGINAL_PARTITION, ORIGINAL_TIMESTAMP, ORIGINAL_TOPIC, STAGE,
};
use txflow_tests::process::Pipeline;
use txflow_tests::produce_committed;

use txflow_tests::invariants::{verify, wait_until_drained};

fn event(id: &str, event_type: EventType, account: &str, amount: i64) -> TransactionEvent {
    TransactionEvent {
        event_id: id.to_owned(),
        event_type,
        account_id: account.to_owned(),
        counterparty_account_id: None,
        amount_minor: amount,
        currency: "EUR".to_owned(),
        occurred_at: 1_764_000_000_000,
        source: "resend-test".to_owned(),
        attributes: BTreeMap::new(),
    }
}

fn transfer(id: &str, from: &str, to: &str, amount: i64) -> TransactionEvent {
    TransactionEvent {
        counterparty_account_id: Some(to.to_owned()),
        ..event(id, EventType::Transfer, from, amount)
    }
}

#[test]
fn resends_change_nothing_and_conflicts_and_poison_are_dead_lettered() {
    let pipeline = Pipeline::new(1);
    let codec = Codec::builtin();
    let encode = |e: &TransactionEvent| codec.encode(Record::TransactionEvent, e).unwrap();
    let d1 = event("d1", EventType::Deposit, "A", 1000);
    let t2 = transfer("t2", "A", "B", 200);
    let zero = event("z", EventType::Deposit, "A", 0);
    let records: Vec<(&str, Vec<u8>)> = vec![
        ("A", encode(&d1)),
        ("A", encode(&d1)), // re-sent: nothing
        (
            "A",
            encode(&TransactionEvent {
                amount_minor: 5,
                ..d1.clone()
            }),
        ), // conflict: DLQ
        ("A", encode(&event("w1", EventType::Withdrawal, "A", 300))),
        ("A", encode(&transfer("t1", "A", "C", 100))), // C never exists: rejected
        ("B", encode(&event("d2", EventType::Deposit, "B", 50))),
        ("A", encode(&t2)),
        ("A", encode(&t2)),                 // re-sent: no second credit
        ("A", b"not avro at all".to_vec()), // undecodable: DLQ
        ("A", encode(&zero)),               // invalid amount: DLQ
        ("B", encode(&event("k", EventType::Deposit, "A", 1))), // wrong key: DLQ
        ("A", vec![0, 0, 0, 0, 99, 2, 4, 6]), // unknown schema id: DLQ
    ];
    let raw: Vec<(Option<&[u8]>, &[u8])> = records
        .iter()
        .map(|(k, v)| (Some(k.as_bytes()), v.as_slice()))
        .collect();
    produce_committed(&pipeline.ledger_topic, &raw);

    let mut ledger = pipeline.spawn_ledger("l0");
    let observed = wait_until_drained(&pipeline, Duration::from_secs(120), &[&ledger]);
    assert_eq!(ledger.admin_get("/healthz").0, 200);
    assert_eq!(ledger.admin_get("/readyz").0, 200);
    let (status, metrics) = ledger.admin_get("/metrics");
    assert_eq!(status, 200);
    for (kind, count) in [
        ("result", 6),
        ("credit", 1),
        ("dead_letter", 5),
        ("duplicate", 2),
    ] {
        let line = format!("txflow_outputs_total{{kind=\"{kind}\",stage=\"ledger\"}} {count}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    ledger.terminate();
    assert_eq!(
        (observed.duplicates, observed.conflicts, observed.poison),
        (2, 1, 4)
    );

    let outcome: Vec<(String, String, Entry, Status, Option<String>, i64)> = observed
        .results
        .iter()
        .map(|r| {
            (
                r.event_id.clone(),
                r.account_id.clone(),
                r.entry,
                r.status,
                r.reason.clone(),
                r.balance_after_minor,
            )
        })
        .collect();
    let expect = |id: &str, account: &str, entry, status, reason: Option<&str>, after| {
        (
            id.to_owned(),
            account.to_owned(),
            entry,
            status,
            reason.map(str::to_owned),
            after,
        )
    };
    let mut outcome = outcome;
    outcome.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        outcome,
        vec![
            expect("d1", "A", Entry::Credit, Status::Applied, None, 1000),
            expect("d2", "B", Entry::Credit, Status::Applied, None, 50),
            expect(
                "t1",
                "A",
                Entry::None,
                Status::Rejected,
                Some("unknown_account"),
                700
            ),
            expect("t2", "A", Entry::Debit, Status::Applied, None, 500),
            expect("t2", "B", Entry::Credit, Status::Applied, None, 250),
            expect("w1", "A", Entry::Debit, Status::Applied, None, 700),
        ]
    );
    let mut letters: Vec<(usize, String, String)> = observed
        .dead_letters
        .iter()
        .map(|d| {
            assert_eq!(
                d.header(ORIGINAL_TOPIC).as_deref(),
                Some(pipeline.ledger_topic.as_str())
            );
            assert_eq!(d.header(ORIGINAL_PARTITION).as_deref(), Some("0"));
            assert!(d.header(ORIGINAL_TIMESTAMP).is_some());
            assert_eq!(d.header(STAGE).as_deref(), Some("ledger"));
            assert!(d.header(GROUP).is_some_and(|g| g.ends_with("-ledger")));
            assert_eq!(
                d.header(ATTEMPTS).as_deref(),
                Some("1"),
                "poison is not retried"
            );
            assert!(d.header(ERROR_MESSAGE).is_some_and(|m| !m.is_empty()));
            assert!(d.header(FIRST_FAILURE).is_some());
            assert_eq!(d.header(FIRST_FAILURE), d.header(LAST_FAILURE));
            let original: usize = d.header(ORIGINAL_OFFSET).unwrap().parse().unwrap();
            assert_eq!(
                d.value.as_deref(),
                Some(records[original].1.as_slice()),
                "the dead letter is the record, unchanged"
            );
            (
                original,
                d.header(ERROR_KIND).unwrap(),
                String::from_utf8_lossy(d.key.as_deref().unwrap()).into_owned(),
            )
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        vec![
            (2, "idempotency_conflict".to_owned(), "A".to_owned()),
            (8, "undecodable".to_owned(), "A".to_owned()),
            (9, "invalid_event".to_owned(), "A".to_owned()),
            (10, "invalid_event".to_owned(), "B".to_owned()),
            (11, "unknown_schema".to_owned(), "A".to_owned()),
        ]
    );
    verify(&pipeline, &observed);
}
