//! Where failed records go: the retry tiers `<input>.retry.<n>` and the dead letters
//! `<input>.dlq`. Either way the record's key and value are untouched and its headers say
//! where it came from and why it failed (docs/CONTRACT.md §4.6); a retry record also says when it
//! is due. The [`RetryPolicy`] decides which of the two.

use std::time::Duration;

use rand::Rng;

use crate::domain::{FailureKind, Move, Origin, RetryPolicy};
use crate::ports::DelayedTopics;
use crate::wire::{
    InputRecord, OutputRecord, ATTEMPTS, ERROR_KIND, ERROR_MESSAGE, FAILURE_HEADERS, FIRST_FAILURE,
    GROUP, LAST_FAILURE, ORIGINAL_HEADERS, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TIMESTAMP,
    ORIGINAL_TOPIC, RETRY_DUE, RETRY_TIER, STAGE,
};

/// The most retry tiers a stage may have: each is a topic of its own.
pub const MAX_RETRY_TIERS: usize = 10;

/// The retry tier topic `n` (1-based) of `input`.
pub fn retry_topic(input: &str, tier: usize) -> String {
    format!("{input}.retry.{tier}")
}

/// The dead-letter topic of `input`.
pub fn dead_letter_topic(input: &str) -> String {
    format!("{input}.dlq")
}

/// Where one stage's failed records go.
#[derive(Clone, Debug)]
pub struct FailureRoutes {
    /// The stage's input topic; tiers and dead letters are named after it.
    pub input: String,
    pub stage: &'static str,
    pub group: String,
    pub policy: RetryPolicy,
}

/// Where a failed record went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub record: OutputRecord,
    /// `Some(n)` for retry tier `n`, `None` for the dead letters.
    pub tier: Option<usize>,
    /// When it is due on its tier, in milliseconds since the Unix epoch.
    pub due: Option<i64>,
}

/// A retry tier and a due time there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub tier: usize,
    pub due: i64,
}

impl FailureRoutes {
    pub fn tier_topics(&self) -> Vec<String> {
        (1..=self.policy.tiers.len())
            .map(|n| retry_topic(&self.input, n))
            .collect()
    }

    /// The retry tiers as the log reads them: a record waits on tier `n` at most that tier's
    /// longest pause, or `longest_hold` when a retry may be held back longer (behind an open
    /// breaker, [`failed_until`](Self::failed_until)).
    pub fn delayed_topics(&self, longest_hold: Duration) -> DelayedTopics {
        DelayedTopics::new(
            self.tier_topics()
                .into_iter()
                .zip(&self.policy.tiers)
                .map(|(topic, pause)| (topic, (*pause).max(longest_hold))),
        )
    }

    pub fn dead_letter_topic(&self) -> String {
        dead_letter_topic(&self.input)
    }

    /// The retry tier (1-based) `topic` is, if it is one of this stage's.
    pub fn tier_of(&self, topic: &str) -> Option<usize> {
        let n: usize = topic
            .strip_prefix(self.input.as_str())?
            .strip_prefix(".retry.")?
            .parse()
            .ok()?;
        (1..=self.policy.tiers.len()).contains(&n).then_some(n)
    }

    /// The input offset of `record`: its own for a record of the input topic, the one its
    /// headers carry for a retry record. Per-account order is the order of these.
    pub fn original_offset(&self, record: &InputRecord) -> i64 {
        self.origin(record).offset
    }

    /// Where `record` was first read: its own position on the input topic, the one its
    /// headers carry on a retry tier. A retry of an event is the same event at the same
    /// origin, so that its result is published if an earlier attempt recorded it after all
    /// (a write that applied in a batch that never committed).
    pub fn origin(&self, record: &InputRecord) -> Origin {
        if self.tier_of(&record.topic).is_some() {
            if let Some(original) = record.original_position() {
                return original;
            }
        }
        record.position()
    }

    /// The record sent on after failing with `kind` on its next attempt at `now_ms`: to the
    /// tier the policy names, due after a pause with full jitter, or to the dead letters.
    /// Logged (a dead letter as a warning) in the current span: the record's, where it has
    /// one.
    pub fn failed(
        &self,
        record: &InputRecord,
        kind: FailureKind,
        message: &str,
        now_ms: i64,
        rng: &mut impl Rng,
    ) -> Routed {
        self.failed_until(record, kind, message, now_ms, now_ms, rng)
    }

    /// As [`failed`](Self::failed), but a retry is due no earlier than `not_before_ms`: a
    /// delivery a breaker refused waits until the breaker lets a call through again, so that
    /// an open breaker does not burn through the tiers unsent.
    pub fn failed_until(
        &self,
        record: &InputRecord,
        kind: FailureKind,
        message: &str,
        now_ms: i64,
        not_before_ms: i64,
        rng: &mut impl Rng,
    ) -> Routed {
        let attempts = record.attempts().saturating_add(1);
        let first = record.header_number(FIRST_FAILURE).unwrap_or(now_ms);
        let failure = [
            (ERROR_KIND, kind.as_str().to_owned()),
            (ERROR_MESSAGE, message.to_owned()),
            (ATTEMPTS, attempts.to_string()),
            (FIRST_FAILURE, first.to_string()),
            (LAST_FAILURE, now_ms.to_string()),
        ];
        let origin = self.origin(record);
        match self.policy.next_move(kind, attempts) {
            Move::Retry { tier, ceiling } => {
                let due = (now_ms + jitter(ceiling, rng).as_millis() as i64).max(not_before_ms);
                tracing::debug!(
                    %origin,
                    kind = kind.as_str(),
                    attempts,
                    tier,
                    "a record failed, to be retried: {message}"
                );
                let mut record = self.moved(record, retry_topic(&self.input, tier), &failure);
                push(&mut record, RETRY_DUE, due.to_string());
                push(&mut record, RETRY_TIER, tier.to_string());
                Routed {
                    record,
                    tier: Some(tier),
                    due: Some(due),
                }
            }
            Move::DeadLetter => {
                tracing::warn!(
                    %origin,
                    kind = kind.as_str(),
                    attempts,
                    "a record went to the dead letters: {message}"
                );
                Routed {
                    record: self.moved(record, self.dead_letter_topic(), &failure),
                    tier: None,
                    due: None,
                }
            }
        }
    }

    /// `record`, not attempted, sent behind an earlier record of its key that is still being
    /// retried (`behind`: that one's tier and due time): it may only be applied after that
    /// one, so it waits as long, on the same tier. It keeps its failure headers, if it had
    /// any.
    pub fn parked(&self, record: &InputRecord, behind: Retry) -> OutputRecord {
        let kept: Vec<(&str, String)> = FAILURE_HEADERS
            .iter()
            .filter(|name| ![STAGE, GROUP, RETRY_DUE, RETRY_TIER].contains(*name))
            .filter_map(|name| {
                let value = record.header(name)?;
                Some((*name, String::from_utf8_lossy(value).into_owned()))
            })
            .collect();
        let mut parked = self.moved(record, retry_topic(&self.input, behind.tier), &kept);
        push(&mut parked, RETRY_DUE, behind.due.to_string());
        push(&mut parked, RETRY_TIER, behind.tier.to_string());
        parked
    }

    /// The tier and due time of a retry record.
    pub fn retry_of(&self, record: &InputRecord) -> Option<Retry> {
        Some(Retry {
            tier: self.tier_of(&record.topic)?,
            due: record.retry_due_ms(),
        })
    }

    /// `record` to `topic`, with the original position (the first one only) and the stage
    /// headers, then `failure`.
    fn moved(
        &self,
        record: &InputRecord,
        topic: String,
        failure: &[(&str, String)],
    ) -> OutputRecord {
        let mut headers: Vec<(String, Vec<u8>)> = record
            .headers
            .iter()
            .filter(|(name, _)| !FAILURE_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect();
        if self.tier_of(&record.topic).is_none() || record.original_position().is_none() {
            headers.retain(|(name, _)| !ORIGINAL_HEADERS.contains(&name.as_str()));
            let mut original = vec![
                (ORIGINAL_TOPIC, record.topic.clone()),
                (ORIGINAL_PARTITION, record.partition.to_string()),
                (ORIGINAL_OFFSET, record.offset.to_string()),
            ];
            if let Some(timestamp) = record.timestamp {
                original.push((ORIGINAL_TIMESTAMP, timestamp.to_string()));
            }
            headers.extend(
                original
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.into_bytes())),
            );
        }
        let mut output = OutputRecord {
            topic,
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        };
        push(&mut output, STAGE, self.stage.to_owned());
        push(&mut output, GROUP, self.group.clone());
        for (name, value) in failure {
            push(&mut output, name, value.clone());
        }
        output
    }
}

/// A pause drawn uniformly from `[0, ceiling]`: full jitter.
fn jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    ceiling.mul_f64(rng.random::<f64>())
}

fn push(record: &mut OutputRecord, name: &str, value: String) {
    record.headers.push((name.to_owned(), value.into_bytes()));
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn routes() -> FailureRoutes {
        FailureRoutes {
            input: "txflow.ledger".into(),
            stage: "ledger",
            group: "txflow-ledger".into(),
            policy: RetryPolicy {
                tiers: vec![Duration::from_secs(1), Duration::from_secs(10)],
            },
        }
    }

    fn input() -> InputRecord {
        InputRecord {
            topic: "txflow.ledger".into(),
            partition: 3,
            offset: 42,
            timestamp: Some(1000),
            key: Some(b"acct".to_vec()),
            value: Some(vec![1, 2, 3]),
            headers: vec![("traceparent".into(), b"00-abc-def-01".to_vec())],
        }
    }

    fn header(record: &OutputRecord, name: &str) -> Option<String> {
        let values: Vec<String> = record
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .collect();
        assert!(
            values.len() <= 1,
            "header {name} is set {} times",
            values.len()
        );
        values.into_iter().next()
    }

    /// What the log hands back when `output` is read at `offset` of partition 3.
    fn read_back(output: &OutputRecord, offset: i64) -> InputRecord {
        InputRecord {
            topic: output.topic.clone(),
            partition: 3,
            offset,
            timestamp: Some(5000),
            key: output.key.clone(),
            value: output.value.clone(),
            headers: output.headers.clone(),
        }
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let record = input();
        let routed = routes().failed(
            &record,
            FailureKind::InvalidEvent,
            "amount_minor must be greater than zero",
            2000,
            &mut rng,
        );
        assert_eq!(routed.tier, None);
        let letter = routed.record;
        assert_eq!(letter.topic, "txflow.ledger.dlq");
        assert_eq!((&letter.key, &letter.value), (&record.key, &record.value));
        let h = |name| header(&letter, name);
        assert_eq!(h("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(h(ORIGINAL_TOPIC).as_deref(), Some("txflow.ledger"));
        assert_eq!(h(ORIGINAL_PARTITION).as_deref(), Some("3"));
        assert_eq!(h(ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(h(ORIGINAL_TIMESTAMP).as_deref(), Some("1000"));
        assert_eq!(h(STAGE).as_deref(), Some("ledger"));
        assert_eq!(h(GROUP).as_deref(), Some("txflow-ledger"));
        assert_eq!(h(ERROR_KIND).as_deref(), Some("invalid_event"));
        assert_eq!(
            h(ERROR_MESSAGE).as_deref(),
            Some("amount_minor must be greater than zero")
        );
        assert_eq!(h(ATTEMPTS).as_deref(), Some("1"));
        assert_eq!(h(FIRST_FAILURE).as_deref(), Some("2000"));
        assert_eq!(h(LAST_FAILURE).as_deref(), Some("2000"));
        assert_eq!(h(RETRY_DUE), None);
    }

    #[test]
    fn a_transient_failure_climbs_the_tiers_keeping_its_origin() {
        let routes = routes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let first = routes.failed(
            &input(),
            FailureKind::StoreUnavailable,
            "timeout",
            2000,
            &mut rng,
        );
        assert_eq!(first.tier, Some(1));
        assert_eq!(first.record.topic, "txflow.ledger.retry.1");
        let due: i64 = header(&first.record, RETRY_DUE).unwrap().parse().unwrap();
        assert!((2000..=3000).contains(&due), "due {due}");

        let again = read_back(&first.record, 7);
        assert_eq!(routes.tier_of(&again.topic), Some(1));
        assert_eq!(routes.original_offset(&again), 42);
        let second = routes.failed(
            &again,
            FailureKind::StoreUnavailable,
            "timeout",
            4000,
            &mut rng,
        );
        assert_eq!(second.tier, Some(2));
        let h = |name| header(&second.record, name);
        assert_eq!(h(ORIGINAL_TOPIC).as_deref(), Some("txflow.ledger"));
        assert_eq!(h(ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(h(ATTEMPTS).as_deref(), Some("2"));
        assert_eq!(h(FIRST_FAILURE).as_deref(), Some("2000"));
        assert_eq!(h(LAST_FAILURE).as_deref(), Some("4000"));
        assert_eq!(h(RETRY_TIER).as_deref(), Some("2"));

        let last = routes.failed(
            &read_back(&second.record, 9),
            FailureKind::StoreUnavailable,
            "timeout",
            9000,
            &mut rng,
        );
        assert_eq!(last.tier, None);
        assert_eq!(last.record.topic, "txflow.ledger.dlq");
        assert_eq!(header(&last.record, ATTEMPTS).as_deref(), Some("3"));
        assert_eq!(header(&last.record, ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(header(&last.record, RETRY_DUE), None);
    }

    #[test]
    fn a_parked_record_waits_with_the_one_it_follows_without_an_attempt() {
        let routes = routes();
        let parked = routes.parked(&input(), Retry { tier: 2, due: 7000 });
        assert_eq!(parked.topic, "txflow.ledger.retry.2");
        assert_eq!(header(&parked, ATTEMPTS), None);
        assert_eq!(header(&parked, ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(header(&parked, RETRY_DUE).as_deref(), Some("7000"));
        let back = read_back(&parked, 3);
        assert_eq!(routes.retry_of(&back), Some(Retry { tier: 2, due: 7000 }));
    }

    #[test]
    fn only_the_input_topic_trusts_its_own_offset() {
        let routes = routes();
        let mut forged = input();
        forged.headers.push((ORIGINAL_OFFSET.into(), b"1".to_vec()));
        assert_eq!(routes.original_offset(&forged), 42);
        assert_eq!(routes.tier_of("txflow.ledger.retry.3"), None);
        assert_eq!(routes.tier_of("txflow.ledger.retry.2"), Some(2));
        assert_eq!(routes.tier_of("txflow.ledger"), None);
    }
}
