//! A keyspace the previous version made (the ledger table and its index on event ids, no
//! table of claimed ids) upgraded by `txflow migrate`: the ids of its results are claimed,
//! an id it recorded for two events is reported, the index is dropped, and the ledger then
//! refuses a re-use of an old id on another account while the old balances go on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scylla::value::CqlTimestamp;
use txflow::codec::{Codec, Record};
use txflow::domain::{EventType, TransactionEvent};
use txflow::wire::ERROR_KIND;
use txflow_tests::process::Pipeline;
use txflow_tests::{cql_session, produce_committed, read_topic, results_of};

fn event(
    id: &str,
    kind: EventType,
    account: &str,
    to: Option<&str>,
    amount: i64,
) -> TransactionEvent {
    TransactionEvent {
        event_id: id.into(),
        event_type: kind,
        account_id: account.into(),
        counterparty_account_id: to.map(str::to_owned),
        amount_minor: amount,
        currency: "EUR".into(),
        occurred_at: 1_764_000_000_000,
        source: "upgrade".into(),
        attributes: BTreeMap::new(),
    }
}

/// A result row as the previous version wrote it, with its account's balance and version.
struct OldRow<'a> {
    account: &'a str,
    event: &'a TransactionEvent,
    entry: &'a str,
    after: i64,
    version: i64,
}

#[test]
fn migrate_claims_the_ids_of_a_previous_versions_results_and_drops_its_index() {
    let pipeline = Pipeline::new(2);
    let deposit = event("e1", EventType::Deposit, "acct-a", None, 1000);
    let transfer = event("t1", EventType::Transfer, "acct-a", Some("acct-b"), 100);
    let twice_c = event("e9", EventType::Deposit, "acct-c", None, 5);
    let twice_d = event("e9", EventType::Deposit, "acct-d", None, 5);
    let old_rows = [
        OldRow {
            account: "acct-a",
            event: &deposit,
            entry: "CREDIT",
            after: 1000,
            version: 1,
        },
        OldRow {
            account: "acct-a",
            event: &transfer,
            entry: "DEBIT",
            after: 900,
            version: 2,
        },
        OldRow {
            account: "acct-b",
            event: &transfer,
            entry: "CREDIT",
            after: 100,
            version: 1,
        },
        OldRow {
            account: "acct-c",
            event: &twice_c,
            entry: "CREDIT",
            after: 5,
            version: 1,
        },
        OldRow {
            account: "acct-d",
            event: &twice_d,
            entry: "CREDIT",
            after: 5,
            version: 1,
        },
    ];
    let keyspace = pipeline.keyspace.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let session = cql_session().await;
        for cql in [
            format!("DROP TABLE {keyspace}.event_ids"),
            format!("CREATE INDEX ledger_by_event ON {keyspace}.ledger (event_id)"),
        ] {
            session.query_unpaged(cql, ()).await.expect("the previous version's schema");
        }
        for (offset, row) in old_rows.iter().enumerate() {
            session
                .query_unpaged(
                    format!(
                        "INSERT INTO {keyspace}.ledger (account_id, event_id, balance_minor, currency, \
                         version, fingerprint, origin_topic, origin_partition, origin_offset, entry, \
                         status, amount_minor, balance_after_minor, account_version, processed_at) \
                         VALUES (?, ?, ?, 'EUR', ?, ?, 'old.ledger', 0, ?, ?, 'APPLIED', ?, ?, ?, ?)"
                    ),
                    (
                        row.account,
                        &row.event.event_id,
                        row.after,
                        row.version,
                        row.event.fingerprint().0.to_vec(),
                        offset as i64,
                        row.entry,
                        row.event.amount_minor,
                        row.after,
                        row.version,
                        CqlTimestamp(1_764_000_000_000),
                    ),
                )
                .await
                .expect("a row of the previous version");
        }
    });
    // acct-a's last row is the transfer's debit: its static balance is what that left.
    let migrated = pipeline.txflow(&["migrate"]);
    assert!(
        migrated.contains("claimed 3 event ids")
            && migrated.contains("1 event ids were recorded for two different events")
            && migrated.contains("e9"),
        "{migrated}"
    );
    let (index_left, transfer_accounts) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let session = cql_session().await;
        let indexes = session
            .query_unpaged(
                "SELECT index_name FROM system_schema.indexes WHERE keyspace_name = ?",
                (&keyspace,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
        let (accounts,): (Vec<String>,) = session
            .query_unpaged(
                format!("SELECT accounts FROM {keyspace}.event_ids WHERE event_id = 't1'"),
                (),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row()
            .unwrap();
        (indexes, accounts)
    });
    assert_eq!(index_left, 0, "the index on event ids is dropped");
    assert_eq!(
        transfer_accounts,
        ["acct-a", "acct-b"],
        "both legs of t1 are found by its id"
    );
    let again = pipeline.txflow(&["migrate"]);
    assert!(
        !again.contains("claimed"),
        "a second run has nothing to do: {again}"
    );

    let mut ledger = pipeline.spawn_ledger("l0");
    let codec = Codec::builtin();
    let sent = [
        event("e1", EventType::Deposit, "acct-z", None, 1000),
        transfer.clone(),
        event("n1", EventType::Deposit, "acct-b", None, 50),
        event("t2", EventType::Transfer, "acct-a", Some("acct-b"), 10),
    ];
    let values: Vec<(String, Vec<u8>)> = sent
        .iter()
        .map(|e| {
            (
                e.account_id.clone(),
                codec.encode(Record::TransactionEvent, e).unwrap(),
            )
        })
        .collect();
    let records: Vec<(Option<&[u8]>, &[u8])> = values
        .iter()
        .map(|(key, value)| (Some(key.as_bytes()), value.as_slice()))
        .collect();
    produce_committed(&pipeline.ledger_topic, &records);
    let results = || results_of(&read_topic(&pipeline.results_topic, "read_committed"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while results().len() < 3 || read_topic(&pipeline.dlq_topic, "read_committed").is_empty() {
        assert!(
            Instant::now() < deadline,
            "not settled: {:?}\n{}",
            results(),
            ledger.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    ledger.terminate();
    let lines: Vec<(String, String, i64, i64)> = results()
        .into_iter()
        .map(|r| {
            (
                r.event_id,
                r.account_id,
                r.balance_after_minor,
                r.account_version,
            )
        })
        .collect();
    let expected: Vec<(String, String, i64, i64)> = [
        ("n1", "acct-b", 150, 2),
        ("t2", "acct-a", 890, 3),
        ("t2", "acct-b", 160, 3),
    ]
    .into_iter()
    .map(|(e, a, b, v)| (e.to_owned(), a.to_owned(), b, v))
    .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(
        sorted, expected,
        "the old balances go on; the re-send publishes nothing"
    );
    let letters = read_topic(&pipeline.dlq_topic, "read_committed");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header(ERROR_KIND).as_deref(),
        Some("idempotency_conflict")
    );
    assert_eq!(letters[0].key.as_deref(), Some(b"acct-z".as_slice()));
}
