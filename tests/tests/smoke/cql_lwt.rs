//! Lightweight transactions as txflow's store uses them: insert-if-absent for idempotency,
//! compare-and-set on a version for balances, and conditional batches on one partition.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::Row;
use tokio::sync::Barrier;
use txflow::adapters::scylla::lwt_applied as applied;
use txflow_tests::{cql_session, fresh_keyspace};

/// Whether an LWT applied, read as txflow's store reads it (by column name, so that both
/// Cassandra's and ScyllaDB's answer shapes work).
fn lwt_applied(result: scylla::response::query_result::QueryResult) -> bool {
    applied(result).expect("an LWT answer with an [applied] column")
}

async fn run(session: &Session, cql: &str) {
    session
        .query_unpaged(cql, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

#[tokio::test]
async fn insert_if_not_exists_applies_once() {
    let session = cql_session().await;
    fresh_keyspace(&session).await;
    run(
        &session,
        "CREATE TABLE processed (event_id text PRIMARY KEY, amount bigint)",
    )
    .await;
    let insert = "INSERT INTO processed (event_id, amount) VALUES (?, ?) IF NOT EXISTS";

    let first = session
        .query_unpaged(insert, ("ev-1", 100_i64))
        .await
        .unwrap();
    assert!(lwt_applied(first), "the first insert applies");
    let second = session
        .query_unpaged(insert, ("ev-1", 999_i64))
        .await
        .unwrap();
    assert!(
        !lwt_applied(second),
        "a second insert of the same key does not apply"
    );

    let (amount,): (i64,) = session
        .query_unpaged("SELECT amount FROM processed WHERE event_id = 'ev-1'", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(amount, 100, "the refused insert changed nothing");
}

#[tokio::test]
async fn concurrent_version_checked_updates_have_exactly_one_winner() {
    let session = Arc::new(cql_session().await);
    fresh_keyspace(&session).await;
    run(
        &session,
        "CREATE TABLE accounts (account_id text PRIMARY KEY, balance bigint, version bigint)",
    )
    .await;
    run(
        &session,
        "INSERT INTO accounts (account_id, balance, version) VALUES ('a', 0, 0)",
    )
    .await;
    let update = session
        .prepare(
            "UPDATE accounts SET balance = ?, version = ? WHERE account_id = 'a' IF version = ?",
        )
        .await
        .unwrap();

    const ROUNDS: i64 = 10;
    const WRITERS: i64 = 4;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS as usize));
        let attempts: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (session, update, barrier) = (session.clone(), update.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let balance = (round + 1) * 100 + writer;
                    let result = session
                        .execute_unpaged(&update, (balance, round + 1, round))
                        .await
                        .expect("a contended LWT still answers");
                    lwt_applied(result).then_some(balance)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for attempt in attempts {
            winners.extend(attempt.await.unwrap());
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one writer wins, got {winners:?}"
        );

        let (balance, version): (i64, i64) = session
            .query_unpaged(
                "SELECT balance, version FROM accounts WHERE account_id = 'a'",
                (),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row()
            .unwrap();
        assert_eq!(
            (balance, version),
            (winners[0], round + 1),
            "the winner's write is the row"
        );
    }
}

#[tokio::test]
async fn conditional_batch_on_one_partition_applies_all_or_nothing() {
    let session = cql_session().await;
    fresh_keyspace(&session).await;
    // An account's balance and version are static (one per partition); each applied event is
    // a clustering row. This is the shape that lets one LWT cover an account's whole batch.
    run(
        &session,
        "CREATE TABLE ledger (account_id text, event_id text, amount bigint, \
         balance bigint STATIC, version bigint STATIC, PRIMARY KEY (account_id, event_id))",
    )
    .await;
    let apply = |events: &[&str]| {
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(
            "UPDATE ledger SET balance = ?, version = ? WHERE account_id = 'a' IF version = ?",
        );
        for _ in events {
            batch.append_statement(
                "INSERT INTO ledger (account_id, event_id, amount) VALUES ('a', ?, 10) IF NOT EXISTS",
            );
        }
        batch
    };

    run(
        &session,
        "INSERT INTO ledger (account_id, balance, version) VALUES ('a', 0, 0)",
    )
    .await;
    let first = apply(&["e1", "e2"]);
    let result = session
        .batch(&first, ((20_i64, 1_i64, 0_i64), ("e1",), ("e2",)))
        .await
        .unwrap();
    assert!(
        lwt_applied(result),
        "a batch whose conditions all hold applies"
    );

    // e3 is new but e2 is already there: the whole batch, balance included, must not apply.
    let second = apply(&["e3", "e2"]);
    let result = session
        .batch(&second, ((40_i64, 2_i64, 1_i64), ("e3",), ("e2",)))
        .await
        .unwrap();
    assert!(
        !lwt_applied(result),
        "one failed condition refuses the whole batch"
    );

    let rows: Vec<Row> = session
        .query_unpaged(
            "SELECT event_id, balance, version FROM ledger WHERE account_id = 'a'",
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<Row>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let rows: Vec<(String, i64, i64)> = rows
        .into_iter()
        .map(|row| {
            let mut columns = row.columns.into_iter().map(Option::unwrap);
            (
                columns.next().unwrap().into_string().unwrap(),
                columns.next().unwrap().as_bigint().unwrap(),
                columns.next().unwrap().as_bigint().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![("e1".to_owned(), 20, 1), ("e2".to_owned(), 20, 1)],
        "only the first batch's rows and balance are there"
    );
}
