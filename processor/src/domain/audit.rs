//! An audit of the ledger's results against the events they came from: every rule of
//! docs/CONTRACT.md §2 that can be checked from the outside. Each balance is rebuilt from its
//! account's results alone; each event id's results must follow from one of the events sent
//! under it; each transfer is debited and credited, or debited, refused and reversed, or still
//! in flight; and per currency, what the accounts hold plus what is in flight is what was
//! deposited minus what was withdrawn.
//!
//! Pure: the callers read the events and results (from topics, an archive or a simulation)
//! and compare the rebuilt accounts with their store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::event::{EventType, TransactionEvent};
use super::ledger::Account;
use super::result::{Entry, Status, TransactionResult};

/// An account as its results rebuild it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub balance_minor: i64,
    /// The count of its results.
    pub version: i64,
    /// The currency of its applied results; `None` while it has none (it does not exist).
    pub currency: Option<String>,
}

/// A transfer debited and not yet credited or reversed: money on its way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub event_id: String,
    pub currency: String,
    pub amount_minor: i64,
}

/// What the audit found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub accounts: BTreeMap<String, Rebuilt>,
    pub in_flight: Vec<InFlight>,
    /// Applied deposits minus applied withdrawals, by currency.
    pub net_by_currency: BTreeMap<String, i128>,
    /// What the rebuilt accounts hold, by currency.
    pub held_by_currency: BTreeMap<String, i128>,
    /// What the transfers in flight carry, by currency.
    pub in_flight_by_currency: BTreeMap<String, i128>,
    /// Every rule broken, in words; empty for a sound ledger.
    pub violations: Vec<String>,
}

/// Audits `results` against `events`: every event sent, re-sends and events that re-used an
/// id with another payload included (an id's results must follow from one of them).
pub fn audit(events: &[TransactionEvent], results: &[TransactionResult]) -> Report {
    let mut report = Report::default();
    let mut candidates: HashMap<&str, Vec<&TransactionEvent>> = HashMap::new();
    for event in events {
        candidates.entry(&event.event_id).or_default().push(event);
    }
    let mut by_event: BTreeMap<&str, Vec<&TransactionResult>> = BTreeMap::new();
    for result in results {
        by_event.entry(&result.event_id).or_default().push(result);
    }
    let mut owners: HashMap<&str, &TransactionEvent> = HashMap::new();
    for (event_id, results) in &by_event {
        // The event the results follow from; of several that could have them (a transfer's
        // credit looks like a deposit), one whose legs are in order.
        let mut owners_legs = candidates
            .get(event_id)
            .into_iter()
            .flatten()
            .filter(|event| results.iter().all(|r| follows_from(r, event)))
            .map(|event| (*event, legs(event, results)));
        let first = owners_legs.next();
        let owner = match first {
            Some((_, Legs { ref violations, .. })) if !violations.is_empty() => owners_legs
                .find(|(_, legs)| legs.violations.is_empty())
                .or(first),
            other => other,
        };
        match owner {
            Some((owner, legs)) => {
                owners.insert(event_id, owner);
                report.violations.extend(legs.violations);
                report.in_flight.extend(legs.in_flight);
            }
            None => report.violations.push(format!(
                "the results of {event_id:?} follow from none of the events sent under it: {results:?}"
            )),
        }
    }
    rebuild_accounts(results, &owners, &mut report);
    conserve(results, &owners, &mut report);
    report
}

/// Whether `result` is one that `event` can have: on its account or its counterparty, for
/// its amount, with the entry its type and status allow.
fn follows_from(result: &TransactionResult, event: &TransactionEvent) -> bool {
    if result.amount_minor != event.amount_minor {
        return false;
    }
    let reversal = result.is_reversal();
    let on_counterparty = event.counterparty_account_id.as_deref() == Some(&result.account_id);
    match (result.status, result.entry) {
        (Status::Rejected, Entry::None) => {
            result.reason.is_some()
                && (result.account_id == event.account_id || on_counterparty)
                && !reversal
        }
        (Status::Applied, Entry::Credit) if result.account_id == event.account_id => {
            match event.event_type {
                EventType::Deposit => result.reason.is_none(),
                EventType::Transfer => reversal,
                EventType::Withdrawal => false,
            }
        }
        (Status::Applied, Entry::Credit) => on_counterparty && result.reason.is_none(),
        (Status::Applied, Entry::Debit) => {
            result.account_id == event.account_id
                && event.event_type != EventType::Deposit
                && result.reason.is_none()
        }
        _ => false,
    }
}

/// What the legs of one event's results say.
#[derive(Default)]
struct Legs {
    violations: Vec<String>,
    in_flight: Option<InFlight>,
}

/// One result per (event, account, entry), one outcome on the event's own account, and a
/// transfer's legs in an order that can have happened.
fn legs(owner: &TransactionEvent, results: &[&TransactionResult]) -> Legs {
    let mut legs = Legs::default();
    let mut seen = HashMap::new();
    for r in results {
        if let Some(earlier) = seen.insert((&r.account_id, r.entry), r) {
            legs.violations.push(format!(
                "two {} results of {:?} on {:?}: {earlier:?} and {r:?}",
                r.entry.as_str(),
                r.event_id,
                r.account_id
            ));
        }
    }
    let on = |account: &str, status: Status, entry: Entry, reversal: bool| {
        results.iter().any(|r| {
            r.account_id == account
                && r.status == status
                && r.entry == entry
                && r.is_reversal() == reversal
        })
    };
    let own = owner.account_id.as_str();
    let outcomes_on_own = results
        .iter()
        .filter(|r| r.account_id == own && !r.is_reversal())
        .count();
    if outcomes_on_own > 1 {
        legs.violations.push(format!(
            "{:?} was both applied and rejected on {own:?}",
            owner.event_id
        ));
    }
    let Some(counterparty) = owner.counterparty_account_id.as_deref() else {
        return legs;
    };
    let debit = on(own, Status::Applied, Entry::Debit, false);
    let credit = on(counterparty, Status::Applied, Entry::Credit, false);
    let refused = on(counterparty, Status::Rejected, Entry::None, false);
    let reversed = on(own, Status::Applied, Entry::Credit, true);
    let id = &owner.event_id;
    if (credit || refused || reversed) && !debit {
        legs.violations.push(format!(
            "transfer {id:?} has a second leg without its debit"
        ));
    }
    if credit && (refused || reversed) {
        legs.violations.push(format!(
            "transfer {id:?} was both credited and refused or reversed"
        ));
    }
    if reversed && !refused {
        legs.violations.push(format!(
            "transfer {id:?} was reversed though its credit was not refused"
        ));
    }
    if debit && !credit && !reversed {
        legs.in_flight = Some(InFlight {
            event_id: id.clone(),
            currency: owner.currency.clone(),
            amount_minor: owner.amount_minor,
        });
    }
    legs
}

/// Each account's results, by version: 1, 2, 3, … without a gap, each balance the one
/// before plus the change, never negative, in one currency.
fn rebuild_accounts(
    results: &[TransactionResult],
    owners: &HashMap<&str, &TransactionEvent>,
    report: &mut Report,
) {
    let mut per_account: BTreeMap<&str, Vec<&TransactionResult>> = BTreeMap::new();
    for r in results {
        per_account.entry(&r.account_id).or_default().push(r);
    }
    for (account_id, mut results) in per_account {
        results.sort_by_key(|r| r.account_version);
        let mut rebuilt = Rebuilt::default();
        for r in results {
            if r.account_version != rebuilt.version + 1 {
                report.violations.push(format!(
                    "{account_id:?} has version {} after {}",
                    r.account_version, rebuilt.version
                ));
            }
            rebuilt.version = r.account_version;
            match rebuilt.balance_minor.checked_add(r.balance_change()) {
                Some(balance) if balance == r.balance_after_minor && balance >= 0 => {
                    rebuilt.balance_minor = balance;
                }
                other => report.violations.push(format!(
                    "{account_id:?} at version {}: balance {} plus {} is {other:?}, the result says {} {r:?}",
                    r.account_version,
                    rebuilt.balance_minor,
                    r.balance_change(),
                    r.balance_after_minor
                )),
            }
            if r.status == Status::Applied {
                let currency = owners.get(r.event_id.as_str()).map(|e| &e.currency);
                match (&rebuilt.currency, currency) {
                    (None, Some(currency)) => rebuilt.currency = Some(currency.clone()),
                    (Some(held), Some(currency)) if held != currency => report.violations.push(
                        format!("{account_id:?} holds {held} and applied {r:?} in {currency}"),
                    ),
                    _ => {}
                }
            }
        }
        report.accounts.insert(account_id.to_owned(), rebuilt);
    }
}

/// Per currency: balances plus money in flight equal deposits minus withdrawals applied.
fn conserve(
    results: &[TransactionResult],
    owners: &HashMap<&str, &TransactionEvent>,
    report: &mut Report,
) {
    for r in results.iter().filter(|r| r.status == Status::Applied) {
        let Some(owner) = owners.get(r.event_id.as_str()) else {
            continue;
        };
        let change = match owner.event_type {
            EventType::Deposit => i128::from(r.amount_minor),
            EventType::Withdrawal => -i128::from(r.amount_minor),
            EventType::Transfer => 0,
        };
        *report
            .net_by_currency
            .entry(owner.currency.clone())
            .or_default() += change;
    }
    for account in report.accounts.values() {
        if let Some(currency) = &account.currency {
            *report.held_by_currency.entry(currency.clone()).or_default() +=
                i128::from(account.balance_minor);
        }
    }
    for flight in &report.in_flight {
        *report
            .in_flight_by_currency
            .entry(flight.currency.clone())
            .or_default() += i128::from(flight.amount_minor);
    }
    let sum = |by_currency: &BTreeMap<String, i128>, currency: &str| {
        by_currency.get(currency).copied().unwrap_or(0)
    };
    for (currency, net) in &report.net_by_currency {
        let holds =
            sum(&report.held_by_currency, currency) + sum(&report.in_flight_by_currency, currency);
        if holds != *net {
            report.violations.push(format!(
                "{currency}: accounts and transfers in flight hold {holds}, deposits minus withdrawals are {net}"
            ));
        }
    }
}

/// An account whose stored state is not the one its results rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub account_id: String,
    /// What the store holds; `None` when it has no such account.
    pub stored: Option<Account>,
    /// What the results rebuild; `None` when the results never name the account.
    pub rebuilt: Option<Rebuilt>,
    /// The first result the store does not agree with: the one at the stored version when
    /// the balance or currency differs there, else the first one past the stored version.
    /// `None` when the store is ahead of every result.
    pub first_diverging: Option<TransactionResult>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = |balance: i64, version: i64, currency: &Option<String>| {
            let currency = currency.as_deref().unwrap_or("no currency");
            format!("balance {balance} {currency} at version {version}")
        };
        write!(f, "account {:?}: the store holds ", self.account_id)?;
        match &self.stored {
            Some(s) => f.write_str(&state(s.balance_minor, s.version, &s.currency))?,
            None => f.write_str("nothing")?,
        }
        f.write_str(", its results rebuild ")?;
        match &self.rebuilt {
            Some(r) => f.write_str(&state(r.balance_minor, r.version, &r.currency))?,
            None => f.write_str("nothing (no result names it)")?,
        }
        match &self.first_diverging {
            Some(r) => write!(
                f,
                "; first diverging result: event {:?}, version {}, balance after {}",
                r.event_id, r.account_version, r.balance_after_minor
            ),
            None => Ok(()),
        }
    }
}

/// Every account on which `stored` (the store's accounts) and the accounts `report`
/// rebuilt from `results` disagree, in account order.
pub fn compare_with_store(
    report: &Report,
    results: &[TransactionResult],
    stored: &BTreeMap<String, Account>,
) -> Vec<Divergence> {
    let ids: std::collections::BTreeSet<&String> =
        report.accounts.keys().chain(stored.keys()).collect();
    let differing: Vec<&String> = ids
        .into_iter()
        .filter(|id| !agrees(stored.get(*id), report.accounts.get(*id)))
        .collect();
    if differing.is_empty() {
        return Vec::new();
    }
    // The chains of the differing accounts only: on a sound ledger there are none to build.
    let mut chains: HashMap<&str, BTreeMap<i64, &TransactionResult>> = differing
        .iter()
        .map(|id| (id.as_str(), BTreeMap::new()))
        .collect();
    for r in results {
        if let Some(chain) = chains.get_mut(r.account_id.as_str()) {
            chain.insert(r.account_version, r);
        }
    }
    differing
        .into_iter()
        .map(|id| {
            let store = stored.get(id);
            let chain = &chains[id.as_str()];
            let stored_version = store.map_or(0, |s| s.version);
            let at_stored = chain.get(&stored_version).copied();
            let differs_there = match (store, at_stored) {
                (Some(s), Some(r)) => s.balance_minor != r.balance_after_minor,
                _ => false,
            };
            let first_diverging = if differs_there {
                at_stored
            } else {
                chain.range(stored_version + 1..).next().map(|(_, r)| *r)
            }
            .or(at_stored)
            .cloned();
            Divergence {
                account_id: id.clone(),
                stored: store.cloned(),
                rebuilt: report.accounts.get(id).cloned(),
                first_diverging,
            }
        })
        .collect()
}

/// Whether the store's account and the rebuilt one are the same. An account exists from its
/// first applied result: one with only refusals is in no store's list of accounts.
fn agrees(stored: Option<&Account>, rebuilt: Option<&Rebuilt>) -> bool {
    match (stored, rebuilt) {
        (Some(s), Some(r)) => {
            s.balance_minor == r.balance_minor && s.version == r.version && s.currency == r.currency
        }
        (None, Some(r)) => r.currency.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::tests::{event, transfer};
    use crate::domain::result::TRANSFER_REVERSED;

    fn result(
        event_id: &str,
        account: &str,
        entry: Entry,
        amount: i64,
        after: i64,
        version: i64,
    ) -> TransactionResult {
        TransactionResult {
            event_id: event_id.to_owned(),
            account_id: account.to_owned(),
            entry,
            status: Status::Applied,
            reason: None,
            amount_minor: amount,
            balance_after_minor: after,
            account_version: version,
            processed_at: 0,
        }
    }

    #[test]
    fn a_sound_ledger_passes_and_rebuilds_its_balances() {
        let events = [
            event("d", EventType::Deposit, "a", 100),
            transfer("t", "a", "b", 30),
            event("w", EventType::Withdrawal, "b", 10),
        ];
        let results = [
            result("d", "a", Entry::Credit, 100, 100, 1),
            result("t", "a", Entry::Debit, 30, 70, 2),
            TransactionResult {
                status: Status::Rejected,
                reason: Some("insufficient_funds".to_owned()),
                ..result("w", "b", Entry::None, 10, 0, 1)
            },
            result("t", "b", Entry::Credit, 30, 30, 2),
        ];
        let report = audit(&events, &results);
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!(report.accounts["a"].balance_minor, 70);
        assert_eq!(report.accounts["b"].version, 2);
        assert_eq!(report.net_by_currency["EUR"], 100);
        assert_eq!(report.held_by_currency["EUR"], 100);
        assert!(report.in_flight_by_currency.is_empty());
    }

    #[test]
    fn an_id_applied_on_two_accounts_is_found() {
        let events = [
            event("x", EventType::Deposit, "a", 5),
            event("x", EventType::Deposit, "c", 5),
        ];
        let results = [
            result("x", "a", Entry::Credit, 5, 5, 1),
            result("x", "c", Entry::Credit, 5, 5, 1),
        ];
        let report = audit(&events, &results);
        assert!(
            report.violations[0].contains("follow from none"),
            "{report:?}"
        );
    }

    #[test]
    fn a_debit_without_credit_is_in_flight_and_counted() {
        let events = [
            event("d", EventType::Deposit, "a", 100),
            transfer("t", "a", "b", 30),
        ];
        let results = [
            result("d", "a", Entry::Credit, 100, 100, 1),
            result("t", "a", Entry::Debit, 30, 70, 2),
        ];
        let report = audit(&events, &results);
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!(report.in_flight[0].amount_minor, 30);
    }

    #[test]
    fn a_refused_credit_must_be_reversed_once_and_only_then() {
        let events = [
            event("d", EventType::Deposit, "a", 100),
            transfer("t", "a", "b", 30),
        ];
        let refused = TransactionResult {
            status: Status::Rejected,
            reason: Some("balance_limit_exceeded".to_owned()),
            ..result("t", "b", Entry::None, 30, 0, 1)
        };
        let reversal = TransactionResult {
            reason: Some(TRANSFER_REVERSED.to_owned()),
            ..result("t", "a", Entry::Credit, 30, 100, 3)
        };
        let base = [
            result("d", "a", Entry::Credit, 100, 100, 1),
            result("t", "a", Entry::Debit, 30, 70, 2),
        ];
        let reversed: Vec<_> = base
            .iter()
            .cloned()
            .chain([refused.clone(), reversal.clone()])
            .collect();
        assert_eq!(audit(&events, &reversed).violations, Vec::<String>::new());
        let credited_and_reversed: Vec<_> = base
            .iter()
            .cloned()
            .chain([result("t", "b", Entry::Credit, 30, 30, 1), reversal])
            .collect();
        assert!(!audit(&events, &credited_and_reversed).violations.is_empty());
        let refused_only: Vec<_> = base.iter().cloned().chain([refused]).collect();
        let report = audit(&events, &refused_only);
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!(report.in_flight.len(), 1, "refused, not reversed yet");
    }

    #[test]
    fn money_created_by_a_broken_chain_is_found() {
        let events = [event("d", EventType::Deposit, "a", 100)];
        let results = [result("d", "a", Entry::Credit, 100, 150, 1)];
        assert!(!audit(&events, &results).violations.is_empty());
    }

    /// A ledger of two accounts, sound, and the store that agrees with it.
    fn sound() -> (
        Vec<TransactionEvent>,
        Vec<TransactionResult>,
        BTreeMap<String, Account>,
    ) {
        let events = vec![
            event("d", EventType::Deposit, "a", 100),
            transfer("t", "a", "b", 30),
        ];
        let results = vec![
            result("d", "a", Entry::Credit, 100, 100, 1),
            result("t", "a", Entry::Debit, 30, 70, 2),
            result("t", "b", Entry::Credit, 30, 30, 1),
        ];
        let account = |balance_minor, version| Account {
            balance_minor,
            currency: Some("EUR".to_owned()),
            version,
        };
        let stored = BTreeMap::from([
            ("a".to_owned(), account(70, 2)),
            ("b".to_owned(), account(30, 1)),
        ]);
        (events, results, stored)
    }

    #[test]
    fn a_store_that_agrees_with_the_results_has_no_divergence() {
        let (events, results, stored) = sound();
        let report = audit(&events, &results);
        assert_eq!(compare_with_store(&report, &results, &stored), vec![]);
    }

    #[test]
    fn a_balance_altered_in_the_store_names_the_account_and_its_last_result() {
        let (events, results, mut stored) = sound();
        stored.get_mut("a").unwrap().balance_minor = 7_000;
        let report = audit(&events, &results);
        let found = compare_with_store(&report, &results, &stored);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].account_id, "a");
        assert_eq!(found[0].first_diverging.as_ref(), Some(&results[1]));
        assert_eq!(
            found[0].to_string(),
            "account \"a\": the store holds balance 7000 EUR at version 2, its results rebuild \
             balance 70 EUR at version 2; first diverging result: event \"t\", version 2, \
             balance after 70"
        );
    }

    #[test]
    fn a_store_behind_its_results_names_the_first_result_it_lacks() {
        let (events, results, mut stored) = sound();
        *stored.get_mut("a").unwrap() = Account {
            balance_minor: 100,
            currency: Some("EUR".to_owned()),
            version: 1,
        };
        stored.remove("b");
        let report = audit(&events, &results);
        let found = compare_with_store(&report, &results, &stored);
        let named: Vec<_> = found
            .iter()
            .map(|d| (d.account_id.as_str(), d.first_diverging.as_ref()))
            .collect();
        assert_eq!(
            named,
            vec![("a", Some(&results[1])), ("b", Some(&results[2]))]
        );
    }

    #[test]
    fn an_account_with_only_refusals_needs_no_stored_account() {
        let (mut events, mut results, stored) = sound();
        events.push(event("w", EventType::Withdrawal, "empty", 10));
        results.push(TransactionResult {
            status: Status::Rejected,
            reason: Some("insufficient_funds".to_owned()),
            ..result("w", "empty", Entry::None, 10, 0, 1)
        });
        let report = audit(&events, &results);
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!(compare_with_store(&report, &results, &stored), vec![]);
    }

    #[test]
    fn an_account_only_the_store_has_is_a_divergence_without_a_result() {
        let (events, results, mut stored) = sound();
        stored.insert(
            "ghost".to_owned(),
            Account {
                balance_minor: 5,
                currency: Some("EUR".to_owned()),
                version: 1,
            },
        );
        let report = audit(&events, &results);
        let found = compare_with_store(&report, &results, &stored);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].account_id.as_str(),
                &found[0].rebuilt,
                &found[0].first_diverging
            ),
            ("ghost", &None, &None)
        );
    }
}
