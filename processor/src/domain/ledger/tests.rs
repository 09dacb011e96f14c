use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::domain::event::tests::{event, transfer};

const NOW: i64 = 1_800_000_000_000;

fn origin(offset: i64) -> Origin {
    Origin {
        topic: "txflow.ledger".to_owned(),
        partition: 0,
        offset,
    }
}

fn primary(event: TransactionEvent, offset: i64) -> LedgerEntry {
    LedgerEntry {
        event,
        leg: Leg::Primary,
        origin: origin(offset),
        redriven_from: None,
    }
}

fn results(settlement: &Settlement) -> Vec<&TransactionResult> {
    settlement
        .emissions
        .iter()
        .filter_map(|e| match e {
            Emission::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn one_result(settlement: &Settlement) -> &TransactionResult {
    let results = results(settlement);
    assert_eq!(results.len(), 1, "{:?}", settlement.emissions);
    results[0]
}

fn eur_account(balance: i64, version: i64) -> Account {
    Account {
        balance_minor: balance,
        currency: Some("EUR".to_owned()),
        version,
    }
}

fn settle_one(account: Account, entry: LedgerEntry, facts: &Facts) -> Settlement {
    let id = entry.account_id().to_owned();
    settle(&id, account, &HashMap::new(), &[entry], facts, NOW)
}

#[test]
fn first_deposit_opens_the_account_in_its_currency() {
    let s = settle_one(
        Account::default(),
        primary(event("e1", EventType::Deposit, "a", 250), 0),
        &Facts::default(),
    );
    assert_eq!(s.account, eur_account(250, 1));
    let r = one_result(&s);
    assert_eq!(
        (r.entry, r.status, r.reason.as_deref()),
        (Entry::Credit, Status::Applied, None)
    );
    assert_eq!(
        (r.balance_after_minor, r.account_version, r.processed_at),
        (250, 1, NOW)
    );
    assert_eq!(s.recorded.len(), 1);
}

#[test]
fn withdrawal_beyond_the_balance_is_rejected_and_changes_no_balance() {
    let s = settle_one(
        eur_account(100, 3),
        primary(event("e1", EventType::Withdrawal, "a", 101), 0),
        &Facts::default(),
    );
    let r = one_result(&s);
    assert_eq!(
        (r.entry, r.status, r.reason.as_deref()),
        (Entry::None, Status::Rejected, Some("insufficient_funds"))
    );
    assert_eq!((r.balance_after_minor, r.account_version), (100, 4));
    assert_eq!(s.account, eur_account(100, 4));
}

#[test]
fn withdrawal_of_the_whole_balance_leaves_zero() {
    let s = settle_one(
        eur_account(100, 1),
        primary(event("e1", EventType::Withdrawal, "a", 100), 0),
        &Facts::default(),
    );
    assert_eq!(one_result(&s).entry, Entry::Debit);
    assert_eq!(s.account.balance_minor, 0);
}

#[test]
fn withdrawal_from_an_account_that_does_not_exist_is_rejected_without_opening_it() {
    let s = settle_one(
        Account::default(),
        primary(event("e1", EventType::Withdrawal, "a", 1), 0),
        &Facts::default(),
    );
    assert_eq!(one_result(&s).reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(
        s.account.currency, None,
        "a rejection does not open the account"
    );
}

#[test]
fn an_event_in_another_currency_is_rejected() {
    let mut usd = event("e1", EventType::Deposit, "a", 5);
    usd.currency = "USD".to_owned();
    let s = settle_one(eur_account(10, 1), primary(usd, 0), &Facts::default());
    assert_eq!(one_result(&s).reason.as_deref(), Some("currency_mismatch"));
    assert_eq!(s.account, eur_account(10, 2));
}

#[test]
fn transfer_rules_check_the_counterparty_then_the_funds() {
    let facts = Facts {
        counterparty_currency: HashMap::from([
            ("b".to_owned(), "EUR".to_owned()),
            ("usd".to_owned(), "USD".to_owned()),
        ]),
        ..Facts::default()
    };
    let reason = |to: &str, amount: i64| {
        let s = settle_one(
            eur_account(100, 1),
            primary(transfer("t", "a", to, amount), 0),
            &facts,
        );
        one_result(&s).reason.clone()
    };
    assert_eq!(reason("nobody", 10).as_deref(), Some("unknown_account"));
    assert_eq!(reason("usd", 10).as_deref(), Some("currency_mismatch"));
    assert_eq!(reason("b", 101).as_deref(), Some("insufficient_funds"));
    assert_eq!(reason("b", 100), None);
}

#[test]
fn an_applied_transfer_debits_and_publishes_its_credit_leg() {
    let facts = Facts {
        counterparty_currency: HashMap::from([("b".to_owned(), "EUR".to_owned())]),
        ..Facts::default()
    };
    let t = transfer("t", "a", "b", 40);
    let s = settle_one(eur_account(100, 1), primary(t.clone(), 0), &facts);
    assert_eq!(s.emissions.len(), 2);
    assert!(
        matches!(&s.emissions[0], Emission::Result(r) if r.entry == Entry::Debit && r.balance_after_minor == 60)
    );
    assert_eq!(s.emissions[1], Emission::Credit(t));
}

#[test]
fn a_rejected_transfer_publishes_no_credit() {
    let s = settle_one(
        eur_account(10, 1),
        primary(transfer("t", "a", "b", 40), 0),
        &Facts::default(),
    );
    assert!(!s.emissions.iter().any(|e| matches!(e, Emission::Credit(_))));
}

#[test]
fn a_redriven_dead_letter_claims_its_unpublished_result_once() {
    let deposit = event("e1", EventType::Deposit, "a", 250);
    let first = settle_one(
        Account::default(),
        primary(deposit.clone(), 3),
        &Facts::default(),
    );
    let stored = first.recorded[0].clone();
    let prior = HashMap::from([("e1".to_owned(), stored.clone())]);
    let account = first.account.clone();
    let redriven = |offset: i64, from: i64| LedgerEntry {
        redriven_from: Some(origin(from)),
        ..primary(deposit.clone(), offset)
    };
    // The write at offset 3 applied, its batch never committed, the event was dead-lettered
    // and is redriven at offset 90: the stored result is published and claimed.
    let claimed = settle(
        "a",
        account.clone(),
        &prior,
        &[redriven(90, 3)],
        &Facts::default(),
        NOW,
    );
    assert_eq!(one_result(&claimed), &stored.result);
    assert_eq!(
        claimed.claimed,
        vec![Claim {
            key: "e1".to_owned(),
            from: origin(3),
            to: origin(90),
        }]
    );
    assert!(claimed.recorded.is_empty());
    assert_eq!(claimed.account, account, "a claim moves no money");
    // A second redrive in the same batch finds it claimed: nothing more.
    let twice = settle(
        "a",
        account.clone(),
        &prior,
        &[redriven(90, 3), redriven(91, 3)],
        &Facts::default(),
        NOW,
    );
    assert_eq!(results(&twice).len(), 1);
    assert!(matches!(
        twice.emissions[1],
        Emission::Duplicate { entry: 1 }
    ));
    // Redriven from another position than the one recorded: a plain re-send.
    let other = settle(
        "a",
        account,
        &prior,
        &[redriven(92, 4)],
        &Facts::default(),
        NOW,
    );
    assert!(matches!(
        other.emissions[..],
        [Emission::Duplicate { entry: 0 }]
    ));
    assert!(other.claimed.is_empty());
}

/// Facts in which `transfer`'s debit is recorded as applied.
fn debited(transfer: &TransactionEvent) -> Facts {
    let mut facts = Facts::default();
    facts.recorded.insert(
        (transfer.account_id.clone(), transfer.event_id.clone()),
        Recorded {
            fingerprint: transfer.fingerprint(),
            entry: Entry::Debit,
            status: Status::Applied,
        },
    );
    facts
}

#[test]
fn a_credit_leg_applies_only_against_a_recorded_applied_debit() {
    let t = transfer("t", "a", "b", 40);
    let credit = LedgerEntry {
        event: t.clone(),
        leg: Leg::TransferCredit,
        origin: origin(7),
        redriven_from: None,
    };
    let orphan = settle_one(eur_account(5, 1), credit.clone(), &Facts::default());
    assert!(
        matches!(&orphan.emissions[..], [Emission::DeadLetter { entry: 0, poison }] if poison.kind == FailureKind::OrphanCredit)
    );
    assert_eq!(orphan.account, eur_account(5, 1));

    let mut tampered = t.clone();
    tampered.amount_minor = 4000;
    let facts = debited(&tampered);
    let s = settle_one(eur_account(5, 1), credit.clone(), &facts);
    assert!(
        matches!(&s.emissions[..], [Emission::DeadLetter { .. }]),
        "a credit must match its debit's payload"
    );

    let s = settle_one(eur_account(5, 1), credit, &debited(&t));
    let r = one_result(&s);
    assert_eq!(
        (r.account_id.as_str(), r.entry, r.balance_after_minor),
        ("b", Entry::Credit, 45)
    );
}

#[test]
fn a_replayed_position_publishes_the_stored_result_again_and_a_resend_publishes_nothing() {
    let facts = Facts {
        counterparty_currency: HashMap::from([("b".to_owned(), "EUR".to_owned())]),
        ..Facts::default()
    };
    let t = transfer("t", "a", "b", 40);
    let first = settle(
        "a",
        eur_account(100, 1),
        &HashMap::new(),
        &[primary(t.clone(), 3)],
        &facts,
        NOW,
    );
    let prior: HashMap<String, Prior> = first
        .recorded
        .iter()
        .map(|p| (p.result.event_id.clone(), p.clone()))
        .collect();

    // The transaction that published `first` aborted: the same position comes again, later.
    let replay = settle(
        "a",
        first.account.clone(),
        &prior,
        &[primary(t.clone(), 3)],
        &facts,
        NOW + 999,
    );
    assert_eq!(
        replay.emissions, first.emissions,
        "identical result and credit, original processed_at"
    );
    assert!(replay.recorded.is_empty());
    assert_eq!(replay.account, first.account);

    let resend = settle(
        "a",
        first.account.clone(),
        &prior,
        &[primary(t.clone(), 9)],
        &facts,
        NOW + 999,
    );
    assert_eq!(resend.emissions, vec![Emission::Duplicate { entry: 0 }]);
    assert_eq!(resend.account, first.account);

    let mut conflicting = t;
    conflicting.amount_minor = 41;
    let conflict = settle(
        "a",
        first.account.clone(),
        &prior,
        &[primary(conflicting, 10)],
        &facts,
        NOW,
    );
    assert!(
        matches!(&conflict.emissions[..], [Emission::DeadLetter { entry: 0, poison }] if poison.kind == FailureKind::IdempotencyConflict)
    );
    assert_eq!(conflict.account, first.account);
}

#[test]
fn duplicates_inside_one_batch_are_caught_too() {
    let d = event("d", EventType::Deposit, "a", 10);
    let mut conflicting = d.clone();
    conflicting.amount_minor = 11;
    let entries = [
        primary(d.clone(), 0),
        primary(d, 1),
        primary(conflicting, 2),
    ];
    let s = settle(
        "a",
        Account::default(),
        &HashMap::new(),
        &entries,
        &Facts::default(),
        NOW,
    );
    assert_eq!(s.account, eur_account(10, 1));
    assert_eq!(s.recorded.len(), 1);
    assert!(matches!(s.emissions[1], Emission::Duplicate { entry: 1 }));
    assert!(
        matches!(&s.emissions[2], Emission::DeadLetter { entry: 2, poison } if poison.kind == FailureKind::IdempotencyConflict)
    );
}

#[test]
fn a_deposit_past_the_largest_balance_is_rejected_with_a_result() {
    for (balance, amount) in [
        (MAX_BALANCE_MINOR - 5, 6),
        (0, MAX_BALANCE_MINOR + 1),
        (MAX_BALANCE_MINOR, i64::MAX),
    ] {
        let s = settle_one(
            eur_account(balance, 1),
            primary(event("e", EventType::Deposit, "a", amount), 0),
            &Facts::default(),
        );
        let r = one_result(&s);
        assert_eq!(
            (r.status, r.reason.as_deref(), r.balance_after_minor),
            (Status::Rejected, Some("balance_limit_exceeded"), balance)
        );
        assert_eq!(s.account, eur_account(balance, 2));
    }
    let s = settle_one(
        eur_account(MAX_BALANCE_MINOR - 5, 1),
        primary(event("e", EventType::Deposit, "a", 5), 0),
        &Facts::default(),
    );
    assert_eq!(one_result(&s).balance_after_minor, MAX_BALANCE_MINOR);
}

/// What a result posted where: account, entry, status, reason.
fn posting(r: &TransactionResult) -> (&str, Entry, Status, Option<&str>) {
    (
        r.account_id.as_str(),
        r.entry,
        r.status,
        r.reason.as_deref(),
    )
}

fn credit_leg(transfer: &TransactionEvent, offset: i64) -> LedgerEntry {
    LedgerEntry {
        leg: Leg::TransferCredit,
        ..primary(transfer.clone(), offset)
    }
}

fn reversal_leg(transfer: &TransactionEvent, offset: i64) -> LedgerEntry {
    LedgerEntry {
        leg: Leg::TransferReversal,
        ..primary(transfer.clone(), offset)
    }
}

#[test]
fn a_credit_past_the_largest_balance_is_rejected_and_sends_the_reversal() {
    let t = transfer("t", "a", "b", 10);
    let s = settle_one(
        eur_account(MAX_BALANCE_MINOR - 9, 4),
        credit_leg(&t, 5),
        &debited(&t),
    );
    assert_eq!(s.emissions.len(), 2, "{:?}", s.emissions);
    assert_eq!(
        posting(one_result(&s)),
        (
            "b",
            Entry::None,
            Status::Rejected,
            Some("balance_limit_exceeded")
        )
    );
    assert_eq!(s.emissions[1], Emission::Reversal(t.clone()));
    assert_eq!(s.account, eur_account(MAX_BALANCE_MINOR - 9, 5));

    // Replayed at the same position: the same rejection and the same reversal again.
    let prior = HashMap::from([("t".to_owned(), s.recorded[0].clone())]);
    let replay = settle(
        "b",
        s.account.clone(),
        &prior,
        &[credit_leg(&t, 5)],
        &debited(&t),
        NOW + 1,
    );
    assert_eq!(replay.emissions, s.emissions);
    assert!(replay.recorded.is_empty());
}

#[test]
fn a_credit_on_an_account_whose_currency_changed_is_rejected_and_sends_the_reversal() {
    let t = transfer("t", "a", "b", 10);
    let usd = Account {
        currency: Some("USD".to_owned()),
        ..eur_account(0, 1)
    };
    let s = settle_one(usd, credit_leg(&t, 5), &debited(&t));
    assert_eq!(one_result(&s).reason.as_deref(), Some("currency_mismatch"));
    assert_eq!(s.emissions[1], Emission::Reversal(t));
}

#[test]
fn a_credit_whose_id_another_event_holds_on_the_account_sends_the_reversal() {
    let t = transfer("t", "a", "b", 10);
    let other = event("t", EventType::Deposit, "b", 3);
    let held = settle_one(Account::default(), primary(other, 1), &Facts::default());
    let prior = HashMap::from([("t".to_owned(), held.recorded[0].clone())]);
    let s = settle(
        "b",
        held.account.clone(),
        &prior,
        &[credit_leg(&t, 5)],
        &debited(&t),
        NOW,
    );
    assert_eq!(s.emissions, vec![Emission::Reversal(t)]);
    assert!(s.recorded.is_empty());
    assert_eq!(s.account, held.account);
}

/// Facts in which `transfer` is debited on its account and its credit refused.
fn refused(transfer: &TransactionEvent) -> Facts {
    let mut facts = debited(transfer);
    facts.recorded.insert(
        (
            transfer.counterparty_account_id.clone().unwrap(),
            transfer.event_id.clone(),
        ),
        Recorded {
            fingerprint: transfer.fingerprint(),
            entry: Entry::None,
            status: Status::Rejected,
        },
    );
    facts
}

#[test]
fn a_reversal_gives_the_debit_back_once_beyond_the_limit_if_need_be() {
    let t = transfer("t", "a", "b", 10);
    let s = settle_one(
        eur_account(MAX_BALANCE_MINOR, 7),
        reversal_leg(&t, 9),
        &refused(&t),
    );
    let r = one_result(&s);
    assert_eq!(
        posting(r),
        ("a", Entry::Credit, Status::Applied, Some(TRANSFER_REVERSED))
    );
    assert_eq!(r.balance_after_minor, MAX_BALANCE_MINOR + 10);
    assert_eq!(s.recorded[0].result.posting_key(), "t\u{1f}reversal");

    // The debit is recorded under the event id, the reversal beside it: a second reversal
    // from another position is a re-send.
    let prior = HashMap::from([(s.recorded[0].result.posting_key(), s.recorded[0].clone())]);
    let again = settle(
        "a",
        s.account.clone(),
        &prior,
        &[reversal_leg(&t, 11)],
        &refused(&t),
        NOW,
    );
    assert_eq!(again.emissions, vec![Emission::Duplicate { entry: 0 }]);
    assert_eq!(again.account, s.account);
}

#[test]
fn a_reversal_applies_only_against_its_debit_and_the_refusal_of_its_credit() {
    let t = transfer("t", "a", "b", 10);
    let orphan = |facts: &Facts| {
        let s = settle_one(eur_account(5, 1), reversal_leg(&t, 9), facts);
        assert!(
            matches!(&s.emissions[..], [Emission::DeadLetter { poison, .. }] if poison.kind == FailureKind::OrphanCredit),
            "{:?}",
            s.emissions
        );
        assert_eq!(s.account, eur_account(5, 1));
    };
    orphan(&Facts::default());
    orphan(&debited(&t));
    let mut credited = debited(&t);
    credited.recorded.insert(
        ("b".to_owned(), "t".to_owned()),
        Recorded {
            fingerprint: t.fingerprint(),
            entry: Entry::Credit,
            status: Status::Applied,
        },
    );
    orphan(&credited);
    let mut not_debited = refused(&t);
    not_debited
        .recorded
        .remove(&("a".to_owned(), "t".to_owned()));
    orphan(&not_debited);
}

#[test]
fn a_reversal_past_the_64_bit_range_waits_in_the_dead_letters() {
    let t = transfer("t", "a", "b", 10);
    let s = settle_one(
        eur_account(i64::MAX - 9, 3),
        reversal_leg(&t, 9),
        &refused(&t),
    );
    assert!(
        matches!(&s.emissions[..], [Emission::DeadLetter { poison, .. }] if poison.kind == FailureKind::BalanceOverflow)
    );
    assert_eq!(s.account, eur_account(i64::MAX - 9, 3));
}

// ------------------------------------------------------------------ the whole ledger, simulated

/// A ledger on an in-memory log and store: batches read from the log, settled per account,
/// written to the store, then either committed (outputs published, position advanced) or
/// aborted (outputs dropped, the same positions read again), as a crash would.
#[derive(Default)]
struct World {
    log: Vec<LedgerEntry>,
    position: usize,
    accounts: HashMap<String, Account>,
    recorded: HashMap<(String, String), Prior>,
    published: Vec<TransactionResult>,
    dead_letters: Vec<(TransactionEvent, FailureKind)>,
}

impl World {
    fn append(&mut self, event: TransactionEvent, leg: Leg) {
        let offset = self.log.len() as i64;
        self.log.push(LedgerEntry {
            event,
            leg,
            origin: origin(offset),
            redriven_from: None,
        });
    }

    fn step(&mut self, batch: usize, commit: bool) {
        let end = (self.position + batch).min(self.log.len());
        let entries = self.log[self.position..end].to_vec();
        let mut by_account: BTreeMap<String, Vec<LedgerEntry>> = BTreeMap::new();
        for entry in &entries {
            by_account
                .entry(entry.account_id().to_owned())
                .or_default()
                .push(entry.clone());
        }
        // Facts are read before any of the batch's writes, as the stage does.
        let mut facts = Facts::default();
        for entry in &entries {
            let e = &entry.event;
            let Some(counterparty) = &e.counterparty_account_id else {
                continue;
            };
            if let Some(currency) = self
                .accounts
                .get(counterparty)
                .and_then(|a| a.currency.clone())
            {
                facts
                    .counterparty_currency
                    .insert(counterparty.clone(), currency);
            }
            for account in [&e.account_id, counterparty] {
                let key = (account.clone(), e.event_id.clone());
                if let Some(p) = self.recorded.get(&key) {
                    facts.recorded.insert(
                        key,
                        Recorded {
                            fingerprint: p.fingerprint,
                            entry: p.result.entry,
                            status: p.result.status,
                        },
                    );
                }
            }
        }
        let mut outputs = Vec::new();
        let mut dead = Vec::new();
        for (account_id, entries) in by_account {
            let account = self.accounts.get(&account_id).cloned().unwrap_or_default();
            let prior: HashMap<String, Prior> = entries
                .iter()
                .filter_map(|e| self.recorded.get(&(account_id.clone(), e.posting_key())))
                .map(|p| (p.result.posting_key(), p.clone()))
                .collect();
            let s = settle(&account_id, account, &prior, &entries, &facts, NOW);
            self.accounts.insert(account_id.clone(), s.account);
            for p in s.recorded {
                self.recorded
                    .insert((account_id.clone(), p.result.posting_key()), p);
            }
            for emission in s.emissions {
                if let Emission::DeadLetter { entry, poison } = &emission {
                    dead.push((entries[*entry].event.clone(), poison.kind));
                }
                outputs.push(emission);
            }
        }
        if !commit {
            return;
        }
        for output in outputs {
            match output {
                Emission::Result(r) => self.published.push(r),
                Emission::Credit(e) => self.append(e, Leg::TransferCredit),
                Emission::Reversal(e) => self.append(e, Leg::TransferReversal),
                Emission::DeadLetter { .. } | Emission::Duplicate { .. } => {}
            }
        }
        self.dead_letters.extend(dead);
        self.position = end;
    }

    fn drained(&self) -> bool {
        self.position == self.log.len()
    }
}

#[derive(Clone, Debug)]
enum Action {
    Deposit(usize, i64),
    Withdraw(usize, i64),
    Transfer(usize, usize, i64),
    /// Re-send the n-th event sent so far, unchanged.
    Resend(usize),
    /// Re-send the n-th event sent so far with another amount.
    Conflict(usize),
    /// Write a credit leg of the n-th event sent so far, as a faulty or hostile producer might.
    ForgeCredit(usize),
    /// Process a batch of this many records; commit it or crash before the commit.
    Process(usize, bool),
}

const ACCOUNTS: usize = 5;

fn account_name(i: usize) -> String {
    format!("acct-{}", i % ACCOUNTS)
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..ACCOUNTS, 1..500_i64).prop_map(|(a, m)| Action::Deposit(a, m)),
        2 => (0..ACCOUNTS, 1..500_i64).prop_map(|(a, m)| Action::Withdraw(a, m)),
        3 => (0..ACCOUNTS, 1..ACCOUNTS, 1..500_i64).prop_map(|(a, d, m)| Action::Transfer(a, a + d, m)),
        1 => any::<usize>().prop_map(Action::Resend),
        1 => any::<usize>().prop_map(Action::Conflict),
        1 => any::<usize>().prop_map(Action::ForgeCredit),
        3 => (1..8_usize, prop::bool::weighted(0.8)).prop_map(|(n, c)| Action::Process(n, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is sent, re-sent, conflicting or crashed: after draining, every
    /// (event, account) has one published result, each balance is the sum of its results and
    /// never negative, transfers' credits match their debits, and money is conserved.
    #[test]
    fn the_ledger_keeps_its_invariants(actions in prop::collection::vec(action(), 1..60)) {
        let mut world = World::default();
        let mut sent: Vec<TransactionEvent> = Vec::new();
        for (n, action) in actions.into_iter().enumerate() {
            let id = format!("ev-{n}");
            let fresh = match action {
                Action::Deposit(a, m) => Some(event(&id, EventType::Deposit, &account_name(a), m)),
                Action::Withdraw(a, m) => Some(event(&id, EventType::Withdrawal, &account_name(a), m)),
                Action::Transfer(a, b, m) => Some(transfer(&id, &account_name(a), &account_name(b), m)),
                Action::Resend(i) if !sent.is_empty() => Some(sent[i % sent.len()].clone()),
                Action::Conflict(i) if !sent.is_empty() => {
                    let mut e = sent[i % sent.len()].clone();
                    e.amount_minor += 1;
                    Some(e)
                }
                Action::ForgeCredit(i) if !sent.is_empty() => {
                    let e = &sent[i % sent.len()];
                    if e.event_type == EventType::Transfer {
                        world.append(e.clone(), Leg::TransferCredit);
                    }
                    None
                }
                Action::Process(batch, commit) => {
                    world.step(batch, commit);
                    None
                }
                _ => None,
            };
            if let Some(e) = fresh {
                sent.push(e.clone());
                world.append(e, Leg::Primary);
            }
        }
        while !world.drained() {
            world.step(4, true);
        }

        let mut seen = HashSet::new();
        let mut by_account: HashMap<&str, i64> = HashMap::new();
        for r in &world.published {
            prop_assert!(seen.insert((r.event_id.clone(), r.account_id.clone())), "two results for {:?}", r);
            *by_account.entry(&r.account_id).or_default() += r.balance_change();
        }
        let mut total = 0;
        for (id, account) in &world.accounts {
            prop_assert!(account.balance_minor >= 0);
            prop_assert_eq!(account.balance_minor, by_account.get(id.as_str()).copied().unwrap_or(0));
            total += account.balance_minor;
        }
        let mut deposits_minus_withdrawals = 0;
        for r in &world.published {
            let first = sent.iter().find(|e| e.event_id == r.event_id).unwrap();
            match (first.event_type, r.status) {
                (EventType::Deposit, Status::Applied) => deposits_minus_withdrawals += r.amount_minor,
                (EventType::Withdrawal, Status::Applied) => deposits_minus_withdrawals -= r.amount_minor,
                _ => {}
            }
            if first.event_type == EventType::Transfer && r.entry == Entry::Debit {
                let counterparty = first.counterparty_account_id.clone().unwrap();
                let credit = world.published.iter().find(|c| c.event_id == r.event_id && c.account_id == counterparty);
                prop_assert!(credit.is_some_and(|c| c.entry == Entry::Credit && c.amount_minor == r.amount_minor));
            }
            if r.entry == Entry::Credit && first.event_type == EventType::Transfer {
                prop_assert!(world.published.iter().any(|d| d.event_id == r.event_id && d.entry == Entry::Debit));
            }
        }
        prop_assert_eq!(total, deposits_minus_withdrawals);
        for (event, kind) in &world.dead_letters {
            prop_assert!(
                matches!(kind, FailureKind::IdempotencyConflict | FailureKind::OrphanCredit),
                "{:?} dead-lettered as {:?}", event, kind
            );
        }
    }
}
