//! The ledger stage: how a batch is ordered into waves, and the whole stage over the embedded
//! store fed hostile workloads.

mod simulation;

use std::collections::BTreeMap as Map;

use super::*;
use crate::domain::{EventType, Origin, TransactionEvent};

fn entry(account: &str, event_type: EventType, to: Option<&str>) -> (usize, LedgerEntry) {
    let event = TransactionEvent {
        event_id: format!("{account}-{event_type:?}"),
        event_type,
        account_id: account.to_owned(),
        counterparty_account_id: to.map(str::to_owned),
        amount_minor: 1,
        currency: "EUR".to_owned(),
        occurred_at: 0,
        source: "test".to_owned(),
        attributes: Map::new(),
    };
    let origin = Origin {
        topic: "t".to_owned(),
        partition: 0,
        offset: 0,
    };
    (
        0,
        LedgerEntry {
            event,
            leg: Leg::Primary,
            origin,
            redriven_from: None,
        },
    )
}

fn waves(
    mut pending: BTreeMap<String, Vec<(usize, LedgerEntry)>>,
    facts: &mut Facts,
) -> Vec<Vec<String>> {
    let mut waves = Vec::new();
    while !pending.is_empty() {
        let wave: Vec<String> = next_wave(&mut pending, facts)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in &wave {
            facts
                .counterparty_currency
                .insert(id.clone(), "EUR".to_owned());
        }
        waves.push(wave);
    }
    waves
}

#[test]
fn an_account_opened_in_the_batch_is_settled_before_transfers_to_it() {
    let pending = BTreeMap::from([
        (
            "a".to_owned(),
            vec![entry("a", EventType::Transfer, Some("b"))],
        ),
        ("b".to_owned(), vec![entry("b", EventType::Deposit, None)]),
        (
            "c".to_owned(),
            vec![entry("c", EventType::Transfer, Some("known"))],
        ),
    ]);
    let mut facts = Facts::default();
    facts
        .counterparty_currency
        .insert("known".to_owned(), "EUR".to_owned());
    assert_eq!(
        waves(pending, &mut facts),
        vec![vec!["b".to_owned(), "c".to_owned()], vec!["a".to_owned()]]
    );
}

#[test]
fn transfers_to_accounts_outside_the_batch_do_not_wait() {
    let pending = BTreeMap::from([(
        "a".to_owned(),
        vec![entry("a", EventType::Transfer, Some("elsewhere"))],
    )]);
    assert_eq!(
        waves(pending, &mut Facts::default()),
        vec![vec!["a".to_owned()]]
    );
}

#[test]
fn accounts_paying_each_other_are_settled_together() {
    let pending = BTreeMap::from([
        (
            "a".to_owned(),
            vec![entry("a", EventType::Transfer, Some("b"))],
        ),
        (
            "b".to_owned(),
            vec![entry("b", EventType::Transfer, Some("a"))],
        ),
    ]);
    assert_eq!(
        waves(pending, &mut Facts::default()),
        vec![vec!["a".to_owned(), "b".to_owned()]]
    );
}
