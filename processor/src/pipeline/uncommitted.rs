//! What a stage keeps of each batch it processed until that batch's transaction decides.
//!
//! A batch is processed while the one before it commits (see [`crate::pipeline`]), so a stage
//! may hold what two batches change. They decide in the order they were processed:
//! [`Stage::committed`](super::Stage::committed) concerns the oldest, and
//! [`Stage::aborted`](super::Stage::aborted) all of them.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// One `T` per batch processed and not committed yet, oldest first.
pub struct Uncommitted<T> {
    batches: Mutex<VecDeque<T>>,
}

impl<T> Default for Uncommitted<T> {
    fn default() -> Self {
        Uncommitted {
            batches: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> Uncommitted<T> {
    /// Keeps what the batch just processed changes, until it decides.
    pub fn processed(&self, changes: T) {
        self.lock().push_back(changes);
    }

    /// The oldest batch committed: what it changed, now for good.
    pub fn committed(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// No batch not committed yet will be: what they changed is dropped.
    pub fn aborted(&self) {
        self.lock().clear();
    }

    /// What the batches not committed yet change, oldest first.
    pub fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.batches.lock().expect("the uncommitted batches' lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_commit_oldest_first_and_an_abort_drops_them_all() {
        let uncommitted = Uncommitted::default();
        uncommitted.processed("first");
        uncommitted.processed("second");
        assert_eq!(uncommitted.committed(), Some("first"));
        uncommitted.processed("third");
        assert_eq!(
            uncommitted.lock().iter().copied().collect::<Vec<_>>(),
            ["second", "third"]
        );
        uncommitted.aborted();
        assert_eq!(uncommitted.committed(), None);
    }
}
