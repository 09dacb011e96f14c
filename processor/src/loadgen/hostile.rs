//! A hostile but valid workload: every event passes validation, and together they attack the
//! ledger's invariants. Event ids are re-used across accounts, types, amounts and
//! counterparties, in both orders and next to each other (inside one batch); amounts are 1,
//! at the largest balance and near the 64-bit limit; transfers go into accounts opened a
//! moment before, into accounts that do not exist, and between currencies; producers re-send
//! what they sent. The same seed gives the same events.
//!
//! It is what `txflow produce --hostile` sends, and what the ledger's property tests and the
//! end-to-end tests feed the ledger.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Sent;
use crate::domain::ledger::MAX_BALANCE_MINOR;
use crate::domain::{EventType, TransactionEvent};

/// Accounts that exist from the start of the run (if their first event applies).
const ACCOUNTS: usize = 6;

#[derive(Clone, Debug)]
pub struct HostileConfig {
    pub seed: u64,
    /// Prefix of every event id and account: runs with different prefixes share nothing.
    pub prefix: String,
}

/// An endless, repeatable stream of hostile events.
pub struct HostileWorkload {
    prefix: String,
    rng: StdRng,
    sent: Vec<TransactionEvent>,
    /// Events decided ahead: the second of a pair sent next to each other.
    queued: Vec<(TransactionEvent, Sent)>,
    late_accounts: usize,
    next_id: u64,
    clock_ms: i64,
}

impl HostileWorkload {
    pub fn new(config: HostileConfig) -> Self {
        HostileWorkload {
            prefix: config.prefix,
            rng: StdRng::seed_from_u64(config.seed),
            sent: Vec::new(),
            queued: Vec::new(),
            late_accounts: 0,
            next_id: 0,
            clock_ms: 1_764_000_000_000,
        }
    }

    /// The first `n` events.
    pub fn take(mut self, n: usize) -> Vec<TransactionEvent> {
        (0..n).map(|_| self.next_event().0).collect()
    }

    /// The next event, and what it is: a fresh one, a re-send of an earlier one, or another
    /// event under an earlier one's id (of a pair sent next to each other, the one decided
    /// second, whichever goes first).
    pub fn next_event(&mut self) -> (TransactionEvent, Sent) {
        let (event, sent) = match self.queued.pop() {
            Some(queued) => queued,
            None => self.decide(),
        };
        self.sent.push(event.clone());
        (event, sent)
    }

    fn decide(&mut self) -> (TransactionEvent, Sent) {
        let roll = self.rng.random_range(0..100);
        if self.sent.is_empty() || roll < 40 {
            return (self.fresh(), Sent::Fresh);
        }
        match roll {
            40..50 => (self.earlier(), Sent::Duplicate),
            50..75 => {
                let earlier = self.earlier();
                (self.reuse_id(earlier), Sent::Conflict)
            }
            75..85 => {
                // A new event and its conflicting twin side by side, in either order.
                let first = self.fresh();
                let twin = self.reuse_id(first.clone());
                let (now, next) = if self.rng.random_bool(0.5) {
                    ((first, Sent::Fresh), (twin, Sent::Conflict))
                } else {
                    ((twin, Sent::Conflict), (first, Sent::Fresh))
                };
                self.queued.push(next);
                now
            }
            _ => {
                // An account opened and paid at once: the transfer lands in the same batch.
                let opened = self.late_account();
                let opening = self.event(EventType::Deposit, &opened, None);
                let payer = self.account();
                let transfer = self.event(EventType::Transfer, &payer, Some(opened));
                self.queued.push((transfer, Sent::Fresh));
                (opening, Sent::Fresh)
            }
        }
    }

    fn fresh(&mut self) -> TransactionEvent {
        let account = self.any_account();
        match self.rng.random_range(0..10) {
            0..4 => self.event(EventType::Deposit, &account, None),
            4..6 => self.event(EventType::Withdrawal, &account, None),
            _ => {
                let counterparty = self.counterparty_of(&account);
                self.event(EventType::Transfer, &account, Some(counterparty))
            }
        }
    }

    /// An earlier event, unchanged: a producer's re-send.
    fn earlier(&mut self) -> TransactionEvent {
        self.sent[self.rng.random_range(0..self.sent.len())].clone()
    }

    /// Another event under `earlier`'s id: another account, type, amount or counterparty,
    /// or a transfer into the account the id was first used on.
    fn reuse_id(&mut self, earlier: TransactionEvent) -> TransactionEvent {
        let mut event = match self.rng.random_range(0..5) {
            0 => {
                let account = self.counterparty_of(&earlier.account_id);
                TransactionEvent {
                    account_id: account,
                    counterparty_account_id: None,
                    event_type: EventType::Deposit,
                    ..earlier.clone()
                }
            }
            1 => {
                let payer = self.counterparty_of(&earlier.account_id);
                self.event(
                    EventType::Transfer,
                    &payer,
                    Some(earlier.account_id.clone()),
                )
            }
            2 => {
                let event_type = match earlier.event_type {
                    EventType::Deposit => EventType::Withdrawal,
                    _ => EventType::Deposit,
                };
                TransactionEvent {
                    event_type,
                    counterparty_account_id: None,
                    ..earlier.clone()
                }
            }
            3 => TransactionEvent {
                amount_minor: self.amount(),
                ..earlier.clone()
            },
            _ => {
                let counterparty = self.counterparty_of(&earlier.account_id);
                TransactionEvent {
                    event_type: EventType::Transfer,
                    counterparty_account_id: Some(counterparty),
                    ..earlier.clone()
                }
            }
        };
        event.event_id = earlier.event_id.clone();
        if event.fingerprint() == earlier.fingerprint() {
            event.amount_minor = if earlier.amount_minor == 1 { 2 } else { 1 };
        }
        event
    }

    fn event(
        &mut self,
        event_type: EventType,
        account: &str,
        counterparty: Option<String>,
    ) -> TransactionEvent {
        self.next_id += 1;
        self.clock_ms += 1;
        let currency = if self.rng.random_range(0..12) == 0 {
            "USD"
        } else {
            "EUR"
        };
        TransactionEvent {
            event_id: format!("{}-{}", self.prefix, self.next_id),
            event_type,
            account_id: account.to_owned(),
            counterparty_account_id: counterparty,
            amount_minor: self.amount(),
            currency: currency.to_owned(),
            occurred_at: self.clock_ms,
            source: "txflow-hostile".to_owned(),
            attributes: BTreeMap::new(),
        }
    }

    /// 1, everyday amounts, the largest balance and just past it, and the 64-bit limit.
    fn amount(&mut self) -> i64 {
        match self.rng.random_range(0..20) {
            0..4 => 1,
            4..12 => self.rng.random_range(1..=10_000),
            12..15 => MAX_BALANCE_MINOR - self.rng.random_range(0..3),
            15..16 => MAX_BALANCE_MINOR + self.rng.random_range(1..3),
            16..17 => MAX_BALANCE_MINOR / 2 + self.rng.random_range(0..3),
            17..19 => i64::MAX - self.rng.random_range(0..3),
            _ => i64::MAX / 2 + 1,
        }
    }

    fn account(&mut self) -> String {
        format!(
            "{}-acct-{}",
            self.prefix,
            self.rng.random_range(0..ACCOUNTS)
        )
    }

    /// One of the accounts of the start, or one opened later.
    fn any_account(&mut self) -> String {
        if self.late_accounts > 0 && self.rng.random_range(0..4) == 0 {
            format!(
                "{}-late-{}",
                self.prefix,
                self.rng.random_range(0..self.late_accounts)
            )
        } else {
            self.account()
        }
    }

    /// An account other than `account`: sometimes one that never had an event.
    fn counterparty_of(&mut self, account: &str) -> String {
        loop {
            let other = match self.rng.random_range(0..10) {
                0 => format!("{}-nobody-{}", self.prefix, self.rng.random_range(0..3)),
                _ => self.any_account(),
            };
            if other != account {
                return other;
            }
        }
    }

    fn late_account(&mut self) -> String {
        self.late_accounts += 1;
        format!("{}-late-{}", self.prefix, self.late_accounts - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn events(seed: u64, n: usize) -> Vec<TransactionEvent> {
        HostileWorkload::new(HostileConfig {
            seed,
            prefix: "h".to_owned(),
        })
        .take(n)
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        assert_eq!(events(7, 500), events(7, 500));
        assert_ne!(events(7, 500), events(8, 500));
    }

    #[test]
    fn every_event_is_valid() {
        for event in events(1, 5000) {
            event.validate().unwrap();
        }
    }

    #[test]
    fn ids_are_reused_with_every_kind_of_difference_and_amounts_reach_the_limits() {
        let all = events(3, 5000);
        let mut first: HashMap<&str, &TransactionEvent> = HashMap::new();
        let (mut resends, mut other_account, mut other_type, mut other_amount) = (0, 0, 0, 0);
        for event in &all {
            match first.get(event.event_id.as_str()) {
                None => {
                    first.insert(&event.event_id, event);
                }
                Some(earlier) if *earlier == event => resends += 1,
                Some(earlier) => {
                    other_account += usize::from(earlier.account_id != event.account_id);
                    other_type += usize::from(earlier.event_type != event.event_type);
                    other_amount += usize::from(earlier.amount_minor != event.amount_minor);
                }
            }
        }
        assert!(resends > 100, "{resends}");
        assert!(other_account > 100, "{other_account}");
        assert!(other_type > 100, "{other_type}");
        assert!(other_amount > 100, "{other_amount}");
        let count = |f: &dyn Fn(&TransactionEvent) -> bool| all.iter().filter(|e| f(e)).count();
        assert!(count(&|e| e.amount_minor == 1) > 100);
        assert!(count(&|e| e.amount_minor > i64::MAX - 3) > 100);
        assert!(count(&|e| e.amount_minor == MAX_BALANCE_MINOR) > 20);
        assert!(count(&|e| e.account_id.contains("-late-")) > 50);
        assert!(count(&|e| e.currency == "USD") > 100);
    }
}
