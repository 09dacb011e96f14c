//! Dead letters: the failed record, key and value untouched, with headers that say where it
//! came from and why it failed (DESIGN.md §4.6).

use crate::domain::Poison;
use crate::ports::{InputRecord, OutputRecord};

pub const ORIGINAL_TOPIC: &str = "txflow.original.topic";
pub const ORIGINAL_PARTITION: &str = "txflow.original.partition";
pub const ORIGINAL_OFFSET: &str = "txflow.original.offset";
pub const ORIGINAL_TIMESTAMP: &str = "txflow.original.timestamp";
pub const STAGE: &str = "txflow.stage";
pub const GROUP: &str = "txflow.group";
pub const ERROR_KIND: &str = "txflow.error.kind";
pub const ERROR_MESSAGE: &str = "txflow.error.message";
pub const ATTEMPTS: &str = "txflow.attempts";
pub const FIRST_FAILURE: &str = "txflow.failure.first";
pub const LAST_FAILURE: &str = "txflow.failure.last";

/// Where a stage sends what it cannot process.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub topic: String,
    pub stage: &'static str,
    pub group: String,
}

impl DeadLetters {
    /// The dead letter of `record`, failed for `poison` at `now_ms`, on its first attempt.
    pub fn letter(&self, record: &InputRecord, poison: &Poison, now_ms: i64) -> OutputRecord {
        let mut headers = record.headers.clone();
        let mut add =
            |name: &str, value: String| headers.push((name.to_owned(), value.into_bytes()));
        add(ORIGINAL_TOPIC, record.topic.clone());
        add(ORIGINAL_PARTITION, record.partition.to_string());
        add(ORIGINAL_OFFSET, record.offset.to_string());
        if let Some(timestamp) = record.timestamp {
            add(ORIGINAL_TIMESTAMP, timestamp.to_string());
        }
        add(STAGE, self.stage.to_owned());
        add(GROUP, self.group.clone());
        add(ERROR_KIND, poison.kind.as_str().to_owned());
        add(ERROR_MESSAGE, poison.message.clone());
        add(ATTEMPTS, "1".to_owned());
        add(FIRST_FAILURE, now_ms.to_string());
        add(LAST_FAILURE, now_ms.to_string());
        OutputRecord {
            topic: self.topic.clone(),
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureKind;

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let record = InputRecord {
            topic: "txflow.ledger".into(),
            partition: 3,
            offset: 42,
            timestamp: Some(1000),
            key: Some(b"acct".to_vec()),
            value: Some(vec![1, 2, 3]),
            headers: vec![("traceparent".into(), b"00-abc-def-01".to_vec())],
        };
        let letters = DeadLetters {
            topic: "txflow.ledger.dlq".into(),
            stage: "ledger",
            group: "txflow-ledger".into(),
        };
        let poison = Poison::new(
            FailureKind::InvalidEvent,
            "amount_minor must be greater than zero",
        );
        let letter = letters.letter(&record, &poison, 2000);
        assert_eq!(
            (letter.key, letter.value),
            (record.key.clone(), record.value.clone())
        );
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(header(ORIGINAL_TOPIC).as_deref(), Some("txflow.ledger"));
        assert_eq!(header(ORIGINAL_PARTITION).as_deref(), Some("3"));
        assert_eq!(header(ORIGINAL_OFFSET).as_deref(), Some("42"));
        assert_eq!(header(ORIGINAL_TIMESTAMP).as_deref(), Some("1000"));
        assert_eq!(header(STAGE).as_deref(), Some("ledger"));
        assert_eq!(header(GROUP).as_deref(), Some("txflow-ledger"));
        assert_eq!(header(ERROR_KIND).as_deref(), Some("invalid_event"));
        assert_eq!(
            header(ERROR_MESSAGE).as_deref(),
            Some("amount_minor must be greater than zero")
        );
        assert_eq!(header(ATTEMPTS).as_deref(), Some("1"));
        assert_eq!(header(FIRST_FAILURE).as_deref(), Some("2000"));
        assert_eq!(header(LAST_FAILURE).as_deref(), Some("2000"));
    }
}
