//! The workload of `txflow produce` and `txflow bench`: deposits, withdrawals and transfers
//! over N accounts picked with Zipf skew (a few hot accounts, a long tail), optionally with
//! producer re-sends of earlier events, unchanged or with a changed amount. The same seed
//! gives the same sequence.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::domain::{EventType, TransactionEvent};

pub mod hostile;

/// How many earlier events a re-send may pick from.
const RESEND_WINDOW: usize = 1024;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub accounts: usize,
    /// Zipf exponent of account popularity; 0 is uniform.
    pub zipf_exponent: f64,
    pub seed: u64,
    /// Prefix of every event id: runs with different prefixes never share an id.
    pub id_prefix: String,
    pub currency: String,
    /// Shares of deposits, withdrawals and transfers among fresh events.
    pub mix: [u32; 3],
    pub max_amount_minor: i64,
    /// Share of events that re-send an earlier event unchanged.
    pub duplicate_share: f64,
    /// Share of events that re-send an earlier event id with a different amount.
    pub conflict_share: f64,
    /// The first event's `occurred_at`; each next one is a millisecond later. A fixed time
    /// keeps a seed's events the same from run to run; a workload posted to the gateway
    /// starts from now, as the gateway admits only events near its clock.
    pub occurred_from_ms: i64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            accounts: 1000,
            zipf_exponent: 1.0,
            seed: 1,
            id_prefix: "ev".to_owned(),
            currency: "EUR".to_owned(),
            mix: [50, 20, 30],
            max_amount_minor: 10_000,
            duplicate_share: 0.0,
            conflict_share: 0.0,
            occurred_from_ms: 1_764_000_000_000,
        }
    }
}

/// What a generated event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Fresh,
    /// An earlier event again, unchanged.
    Duplicate,
    /// An earlier event id with another payload.
    Conflict,
}

/// An endless, repeatable stream of events.
pub struct Workload {
    config: WorkloadConfig,
    rng: StdRng,
    /// Cumulative Zipf weights of the accounts, ending at 1.
    cdf: Vec<f64>,
    recent: VecDeque<TransactionEvent>,
    next_id: u64,
    clock_ms: i64,
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> Self {
        assert!(
            config.accounts >= 2,
            "a workload needs at least two accounts"
        );
        let weights: Vec<f64> = (1..=config.accounts)
            .map(|rank| 1.0 / (rank as f64).powf(config.zipf_exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut sum = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                sum += w / total;
                sum
            })
            .collect();
        Workload {
            rng: StdRng::seed_from_u64(config.seed),
            clock_ms: config.occurred_from_ms,
            config,
            cdf,
            recent: VecDeque::with_capacity(RESEND_WINDOW),
            next_id: 0,
        }
    }

    /// The account of Zipf rank `rank` (0 is the hottest).
    pub fn account(rank: usize) -> String {
        format!("acct-{rank}")
    }

    fn pick_account(&mut self) -> usize {
        let u: f64 = self.rng.random();
        self.cdf
            .partition_point(|c| *c < u)
            .min(self.config.accounts - 1)
    }

    fn fresh(&mut self) -> TransactionEvent {
        let [deposits, withdrawals, transfers] = self.config.mix;
        let roll = self
            .rng
            .random_range(0..(deposits + withdrawals + transfers).max(1));
        let event_type = if roll < deposits {
            EventType::Deposit
        } else if roll < deposits + withdrawals {
            EventType::Withdrawal
        } else {
            EventType::Transfer
        };
        let account = self.pick_account();
        let counterparty = (event_type == EventType::Transfer).then(|| {
            let mut other = self.pick_account();
            while other == account {
                other = self.rng.random_range(0..self.config.accounts);
            }
            Self::account(other)
        });
        self.next_id += 1;
        self.clock_ms += 1;
        TransactionEvent {
            event_id: format!("{}-{}", self.config.id_prefix, self.next_id),
            event_type,
            account_id: Self::account(account),
            counterparty_account_id: counterparty,
            amount_minor: self.rng.random_range(1..=self.config.max_amount_minor),
            currency: self.config.currency.clone(),
            occurred_at: self.clock_ms,
            source: "txflow-produce".to_owned(),
            attributes: BTreeMap::new(),
        }
    }

    /// One deposit per account, large enough for the workload's debits to apply: what a
    /// ledger that has been running for a while already holds. Their ids never clash with
    /// the generated events'.
    pub fn openings(&self) -> Vec<TransactionEvent> {
        (0..self.config.accounts)
            .map(|rank| TransactionEvent {
                event_id: format!("{}-open-{rank}", self.config.id_prefix),
                event_type: EventType::Deposit,
                account_id: Self::account(rank),
                counterparty_account_id: None,
                amount_minor: self.config.max_amount_minor.saturating_mul(1000),
                currency: self.config.currency.clone(),
                occurred_at: self.clock_ms,
                source: "txflow-produce".to_owned(),
                attributes: BTreeMap::new(),
            })
            .collect()
    }

    /// The next event and what it is.
    pub fn next_event(&mut self) -> (TransactionEvent, Sent) {
        let roll: f64 = self.rng.random();
        if !self.recent.is_empty()
            && roll < self.config.duplicate_share + self.config.conflict_share
        {
            let earlier = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            if roll < self.config.duplicate_share {
                return (earlier, Sent::Duplicate);
            }
            let conflicting = TransactionEvent {
                amount_minor: earlier.amount_minor % self.config.max_amount_minor + 1,
                ..earlier
            };
            return (conflicting, Sent::Conflict);
        }
        let event = self.fresh();
        if self.recent.len() == RESEND_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        (event, Sent::Fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(config: WorkloadConfig, n: usize) -> Vec<(TransactionEvent, Sent)> {
        let mut workload = Workload::new(config);
        (0..n).map(|_| workload.next_event()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let config = WorkloadConfig {
            duplicate_share: 0.1,
            conflict_share: 0.1,
            ..WorkloadConfig::default()
        };
        assert_eq!(take(config.clone(), 500), take(config.clone(), 500));
        let other = WorkloadConfig {
            seed: 2,
            ..config.clone()
        };
        assert_ne!(take(config, 500), take(other, 500));
    }

    #[test]
    fn openings_open_every_account_once() {
        let workload = Workload::new(WorkloadConfig {
            accounts: 5,
            ..WorkloadConfig::default()
        });
        let openings = workload.openings();
        let accounts: Vec<&str> = openings.iter().map(|e| e.account_id.as_str()).collect();
        assert_eq!(accounts, ["acct-0", "acct-1", "acct-2", "acct-3", "acct-4"]);
        for event in &openings {
            event.validate().unwrap();
            assert_eq!(event.event_type, EventType::Deposit);
        }
    }

    #[test]
    fn every_generated_event_is_valid() {
        let config = WorkloadConfig {
            accounts: 3,
            duplicate_share: 0.2,
            conflict_share: 0.2,
            ..WorkloadConfig::default()
        };
        for (event, _) in take(config, 2000) {
            event.validate().unwrap();
        }
    }

    #[test]
    fn zipf_skew_makes_the_first_accounts_hot() {
        let events = take(WorkloadConfig::default(), 20_000);
        let hottest = events
            .iter()
            .filter(|(e, _)| e.account_id == "acct-0")
            .count();
        let tail = events
            .iter()
            .filter(|(e, _)| e.account_id == "acct-999")
            .count();
        // With exponent 1 over 1000 accounts the hottest draws about 13% of events.
        assert!(hottest > 2_000, "{hottest}");
        assert!(tail < 50, "{tail}");
        let uniform = take(
            WorkloadConfig {
                zipf_exponent: 0.0,
                ..WorkloadConfig::default()
            },
            20_000,
        );
        let flat = uniform
            .iter()
            .filter(|(e, _)| e.account_id == "acct-0")
            .count();
        assert!(flat < 100, "{flat}");
    }

    #[test]
    fn resends_repeat_earlier_ids_and_conflicts_change_the_payload() {
        let config = WorkloadConfig {
            duplicate_share: 0.25,
            conflict_share: 0.25,
            ..WorkloadConfig::default()
        };
        let events = take(config, 4000);
        let mut fresh: BTreeMap<String, TransactionEvent> = BTreeMap::new();
        let (mut duplicates, mut conflicts) = (0, 0);
        for (event, sent) in events {
            match sent {
                Sent::Fresh => assert!(fresh.insert(event.event_id.clone(), event).is_none()),
                Sent::Duplicate => {
                    duplicates += 1;
                    assert_eq!(fresh[&event.event_id], event);
                }
                Sent::Conflict => {
                    conflicts += 1;
                    let first = &fresh[&event.event_id];
                    assert_ne!(first.fingerprint(), event.fingerprint());
                }
            }
        }
        assert!((800..1200).contains(&duplicates), "{duplicates}");
        assert!((800..1200).contains(&conflicts), "{conflicts}");
    }
}
