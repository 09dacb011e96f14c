//! A record as a stage reads it and as it writes one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::headers::{
    ATTEMPTS, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC, REDRIVEN_FROM, RETRY_DUE,
};
use crate::domain::Origin;

/// A record read from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, as the log stamped it.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The value of the first of `headers` with this name.
fn first_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

impl OutputRecord {
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first_header(&self.headers, name)
    }
}

impl InputRecord {
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first_header(&self.headers, name)
    }

    /// A header holding a decimal number.
    pub fn header_number(&self, name: &str) -> Option<i64> {
        std::str::from_utf8(self.header(name)?).ok()?.parse().ok()
    }

    /// Where the record was read: its own position.
    pub fn position(&self) -> Origin {
        Origin {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// On a failed record (a retry or a dead letter): where it was first read, as its
    /// `txflow.original.*` headers say.
    pub fn original_position(&self) -> Option<Origin> {
        let topic = std::str::from_utf8(self.header(ORIGINAL_TOPIC)?).ok()?;
        Some(Origin {
            topic: topic.to_owned(),
            partition: i32::try_from(self.header_number(ORIGINAL_PARTITION)?).ok()?,
            offset: self.header_number(ORIGINAL_OFFSET)?,
        })
    }

    /// On a redriven dead letter: where the event was read before it was dead-lettered.
    pub fn redriven_from(&self) -> Option<Origin> {
        let text = std::str::from_utf8(self.header(REDRIVEN_FROM)?).ok()?;
        let mut parts = text.rsplitn(3, '/');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        Some(Origin {
            topic: parts.next()?.to_owned(),
            partition,
            offset,
        })
    }

    /// How many times the record's event failed before (`txflow.attempts`); none without
    /// the header. A value out of range (negative, or beyond what a count can be) is taken
    /// as none or as the most, never wrapped: a forged header cannot buy more retries.
    pub fn attempts(&self) -> u32 {
        match self.header_number(ATTEMPTS) {
            None => 0,
            Some(n) => u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX }),
        }
    }

    /// On a delayed topic (a retry tier): when the record may be handed out, in
    /// milliseconds since the Unix epoch; a record without a readable due time is due at
    /// once.
    pub fn retry_due_ms(&self) -> i64 {
        self.header_number(RETRY_DUE).unwrap_or(0)
    }

    /// When a record on a delayed topic may be handed out, given the longest a record may
    /// wait there: its due time, but no later than its own timestamp plus that wait. The due
    /// time is a header anyone who can write the topic can set; a record claiming to be due
    /// later than its tier allows (or stamped in the future) is due at the bound, so that it
    /// cannot hold its partition, and every account behind it, indefinitely.
    pub fn retry_due(&self, longest_wait: Duration, now_ms: i64) -> RetryDue {
        let wait = i64::try_from(longest_wait.as_millis()).unwrap_or(i64::MAX);
        let due = self.retry_due_ms();
        let bound = match self.timestamp {
            Some(written) if written <= now_ms.saturating_add(wait) => written
                .saturating_add(wait)
                .saturating_add(CLOCK_TOLERANCE_MS),
            _ => now_ms,
        };
        if due > bound {
            RetryDue {
                at: bound,
                out_of_bounds: true,
            }
        } else {
            RetryDue {
                at: due,
                out_of_bounds: false,
            }
        }
    }
}

/// Slack for the clocks of the stage that wrote a retry record and of the broker that stamped
/// it (a topic with `LogAppendTime`).
const CLOCK_TOLERANCE_MS: i64 = 1_000;

/// When a record on a delayed topic may be handed out ([`InputRecord::retry_due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryDue {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Whether its due time lay beyond what its tier allows, and `at` is the bound.
    pub out_of_bounds: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(headers: &[(&str, &str)]) -> InputRecord {
        InputRecord {
            topic: "t.retry.1".into(),
            partition: 2,
            offset: 9,
            timestamp: None,
            key: None,
            value: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn positions_in_headers_read_back_as_written() {
        let origin = Origin {
            topic: "txflow.ledger/x".into(),
            partition: 3,
            offset: 41,
        };
        let redriven = with(&[(REDRIVEN_FROM, &origin.to_string())]);
        assert_eq!(redriven.redriven_from(), Some(origin));
        let retried = with(&[
            (ORIGINAL_TOPIC, "txflow.ledger"),
            (ORIGINAL_PARTITION, "1"),
            (ORIGINAL_OFFSET, "7"),
        ]);
        assert_eq!(
            retried.original_position().map(|o| (o.partition, o.offset)),
            Some((1, 7))
        );
        assert_eq!(with(&[(ORIGINAL_PARTITION, "x")]).original_position(), None);
        assert_eq!(retried.position().offset, 9);
    }

    #[test]
    fn a_due_time_is_read_once_and_missing_means_now() {
        assert_eq!(with(&[(RETRY_DUE, "1700")]).retry_due_ms(), 1700);
        assert_eq!(with(&[(RETRY_DUE, "soon")]).retry_due_ms(), 0);
        assert_eq!(with(&[]).retry_due_ms(), 0);
    }

    #[test]
    fn attempts_out_of_range_are_bounded_not_wrapped() {
        assert_eq!(with(&[]).attempts(), 0);
        assert_eq!(with(&[(ATTEMPTS, "3")]).attempts(), 3);
        assert_eq!(with(&[(ATTEMPTS, "-1")]).attempts(), 0);
        assert_eq!(with(&[(ATTEMPTS, "99999999999")]).attempts(), u32::MAX);
        assert_eq!(with(&[(ATTEMPTS, "many")]).attempts(), 0);
    }

    #[test]
    fn a_due_time_is_bounded_by_the_tiers_wait() {
        let wait = Duration::from_secs(10);
        let now = 1_000_000;
        let stamped = |at: i64, due: &str| InputRecord {
            timestamp: Some(at),
            ..with(&[(RETRY_DUE, due)])
        };
        let fair = stamped(now - 1_000, "1008000").retry_due(wait, now);
        assert_eq!(
            fair,
            RetryDue {
                at: 1_008_000,
                out_of_bounds: false
            }
        );
        let lying = stamped(now - 1_000, "99999999999999").retry_due(wait, now);
        assert_eq!(
            lying,
            RetryDue {
                at: now - 1_000 + 10_000 + CLOCK_TOLERANCE_MS,
                out_of_bounds: true
            }
        );
        let from_the_future = stamped(now + 3_600_000, "99999999999999").retry_due(wait, now);
        assert_eq!(
            from_the_future,
            RetryDue {
                at: now,
                out_of_bounds: true
            }
        );
        let unstamped = InputRecord {
            timestamp: None,
            ..with(&[(RETRY_DUE, "1000500")])
        };
        assert_eq!(unstamped.retry_due(wait, now).at, now);
    }
}
