//! Accounts parked behind their retries. While records of an account wait on the retry
//! tiers, its later records must not be applied before them (per-account order): they are
//! sent to wait behind the latest retry of the account instead. Which records wait is known
//! from the tiers themselves: rebuilt from what the group has not consumed there whenever
//! partitions are assigned, and kept up to date as batches commit.

use std::collections::{BTreeSet, HashMap};

use crate::failures::Retry;

/// A record key on a partition: the unit of order.
pub type Key = (i32, Vec<u8>);

/// The records of one key on the retry tiers.
#[derive(Clone, Debug, Default)]
struct Waiting {
    /// Their original offsets on the input topic.
    offsets: BTreeSet<i64>,
    /// The latest tier and due time among them: where a later record of the key waits.
    latest: Option<Retry>,
}

impl Waiting {
    fn add(&mut self, offset: i64, retry: Retry) {
        self.offsets.insert(offset);
        if self.latest.is_none_or(|latest| latest.due <= retry.due) {
            self.latest = Some(retry);
        }
    }
}

/// What a batch changes, applied once it commits.
#[derive(Debug, Default)]
pub struct Changes {
    /// Retry records the batch consumed: key and original offset.
    pub consumed: Vec<(Key, i64)>,
    /// Records the batch sent to a retry tier: key, original offset, where.
    pub parked: Vec<(Key, i64, Retry)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.consumed.is_empty() && self.parked.is_empty()
    }
}

/// Where an account's records wait.
#[derive(Clone, Debug, Default)]
pub struct ParkedAccounts {
    keys: HashMap<Key, Waiting>,
}

impl ParkedAccounts {
    /// Starts over from the retry records not consumed yet: key, original offset, where.
    pub fn rebuild(&mut self, waiting: impl IntoIterator<Item = (Key, i64, Retry)>) {
        self.keys.clear();
        for (key, offset, retry) in waiting {
            self.keys.entry(key).or_default().add(offset, retry);
        }
    }

    /// How many keys (accounts of a partition) have records waiting.
    pub fn waiting(&self) -> usize {
        self.keys.len()
    }

    /// Whether a record of `key` at `original_offset` must wait, and behind which retry:
    /// when an earlier record of the key waits on the tiers, other than those in the batch
    /// at hand (`in_batch`, their original offsets), which it is settled with in order.
    pub fn blocked(
        &self,
        key: &Key,
        original_offset: i64,
        in_batch: &BTreeSet<i64>,
    ) -> Option<Retry> {
        let waiting = self.keys.get(key)?;
        let first_outside = waiting.offsets.iter().find(|o| !in_batch.contains(o))?;
        if *first_outside < original_offset {
            waiting.latest
        } else {
            None
        }
    }

    /// Applies what a committed batch changed.
    pub fn apply(&mut self, changes: &Changes) {
        for (key, offset) in &changes.consumed {
            if let Some(waiting) = self.keys.get_mut(key) {
                waiting.offsets.remove(offset);
                if waiting.offsets.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
        for (key, offset, retry) in &changes.parked {
            self.keys
                .entry(key.clone())
                .or_default()
                .add(*offset, *retry);
        }
    }

    /// These accounts as they will stand once batches not committed yet commit.
    pub fn with<'a>(&self, uncommitted: impl IntoIterator<Item = &'a Changes>) -> Self {
        let mut provisional = self.clone();
        for changes in uncommitted {
            provisional.apply(changes);
        }
        provisional
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(account: &str) -> Key {
        (0, account.as_bytes().to_vec())
    }

    fn retry(tier: usize, due: i64) -> Retry {
        Retry { tier, due }
    }

    #[test]
    fn a_later_record_waits_behind_the_latest_retry_of_its_account() {
        let mut parked = ParkedAccounts::default();
        parked.apply(&Changes {
            consumed: vec![],
            parked: vec![(key("a"), 5, retry(1, 100)), (key("a"), 6, retry(1, 90))],
        });
        let none = BTreeSet::new();
        assert_eq!(parked.blocked(&key("a"), 9, &none), Some(retry(1, 100)));
        assert_eq!(
            parked.blocked(&key("a"), 3, &none),
            None,
            "earlier than every retry"
        );
        assert_eq!(parked.blocked(&key("b"), 9, &none), None, "another account");
        assert_eq!(
            parked.blocked(&(1, b"a".to_vec()), 9, &none),
            None,
            "another partition"
        );
    }

    #[test]
    fn retries_in_the_batch_are_settled_with_it_in_order() {
        let mut parked = ParkedAccounts::default();
        parked.rebuild([(key("a"), 5, retry(2, 100))]);
        let in_batch = BTreeSet::from([5]);
        assert_eq!(parked.blocked(&key("a"), 9, &in_batch), None);
        parked.rebuild([(key("a"), 5, retry(2, 100)), (key("a"), 7, retry(2, 120))]);
        assert_eq!(
            parked.blocked(&key("a"), 9, &in_batch),
            Some(retry(2, 120)),
            "7 still waits outside the batch"
        );
    }

    #[test]
    fn an_account_is_free_once_its_retries_are_consumed() {
        let mut parked = ParkedAccounts::default();
        parked.rebuild([(key("a"), 5, retry(1, 100))]);
        assert_eq!(parked.waiting(), 1);
        parked.apply(&Changes {
            consumed: vec![(key("a"), 5)],
            parked: vec![],
        });
        assert_eq!(parked.waiting(), 0);
        assert_eq!(parked.blocked(&key("a"), 9, &BTreeSet::new()), None);
    }

    #[test]
    fn a_batch_processed_while_the_one_before_commits_sees_what_that_one_parked() {
        let mut committed = ParkedAccounts::default();
        committed.rebuild([(key("a"), 5, retry(1, 100))]);
        let uncommitted = [
            Changes {
                consumed: vec![(key("a"), 5)],
                parked: vec![],
            },
            Changes {
                consumed: vec![],
                parked: vec![(key("b"), 7, retry(1, 300))],
            },
        ];
        let provisional = committed.with(uncommitted.iter());
        let none = BTreeSet::new();
        assert_eq!(provisional.blocked(&key("a"), 9, &none), None, "a consumed");
        assert_eq!(
            provisional.blocked(&key("b"), 9, &none),
            Some(retry(1, 300))
        );
        assert_eq!(
            committed.blocked(&key("a"), 9, &none),
            Some(retry(1, 100)),
            "until they commit, the committed state is as it was"
        );
        assert_eq!(committed.blocked(&key("b"), 9, &none), None);
    }

    #[test]
    fn a_record_retried_again_keeps_its_account_parked_further_on() {
        let mut parked = ParkedAccounts::default();
        parked.rebuild([(key("a"), 5, retry(1, 100))]);
        parked.apply(&Changes {
            consumed: vec![(key("a"), 5)],
            parked: vec![(key("a"), 5, retry(2, 900))],
        });
        assert_eq!(
            parked.blocked(&key("a"), 9, &BTreeSet::new()),
            Some(retry(2, 900))
        );
    }
}
