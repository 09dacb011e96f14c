//! Dead letters for operators: what `txflow dlq stats|list|show|redrive` see and do. Pure:
//! the command line reads the dead-letter topic and writes the redriven records; everything
//! decided about a dead letter (its description, whether a filter matches it, what a
//! redrive writes) is decided here.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};

use crate::codec::{Codec, Record};
use crate::domain::TransactionEvent;
use crate::wire::{
    is_failure_header, ATTEMPTS, ERROR_KIND, ERROR_MESSAGE, FIRST_FAILURE, INGESTED_AT,
    LAST_FAILURE, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC, REDRIVEN_FROM, REDRIVE_RUN,
    STAGE,
};
use crate::wire::{InputRecord, OutputRecord};

/// A condition on a dead letter, written `NAME=VALUE` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `kind=…`: the error kind.
    Kind(String),
    /// `stage=…`: the stage that gave up.
    Stage(String),
    /// `header.NAME=…`: any header, by its exact name.
    Header(String, String),
    /// `event.FIELD=…`: a field of the decoded event (`event_type`, `account_id`,
    /// `attributes.KEY`, …); a record that does not decode matches no event filter.
    Event(String, String),
}

impl std::str::FromStr for Filter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, value) = text.split_once('=').ok_or_else(|| {
            format!(
                "filter {text:?} is not NAME=VALUE (kind=…, stage=…, header.NAME=…, event.FIELD=…)"
            )
        })?;
        let value = value.to_owned();
        match name {
            "kind" => Ok(Filter::Kind(value)),
            "stage" => Ok(Filter::Stage(value)),
            _ => {
                if let Some(header) = name.strip_prefix("header.").filter(|h| !h.is_empty()) {
                    Ok(Filter::Header(header.to_owned(), value))
                } else if let Some(field) = name.strip_prefix("event.").filter(|f| !f.is_empty()) {
                    Ok(Filter::Event(field.to_owned(), value))
                } else {
                    Err(format!(
                        "filter {text:?}: {name:?} is not kind, stage, header.NAME or event.FIELD"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for Filter {
    /// As written on the command line: `NAME=VALUE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Kind(kind) => write!(f, "kind={kind}"),
            Filter::Stage(stage) => write!(f, "stage={stage}"),
            Filter::Header(name, value) => write!(f, "header.{name}={value}"),
            Filter::Event(field, value) => write!(f, "event.{field}={value}"),
        }
    }
}

impl Filter {
    /// Whether `letter` satisfies this condition.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Filter::Kind(kind) => letter.header(ERROR_KIND).as_deref() == Some(kind.as_str()),
            Filter::Stage(stage) => letter.header(STAGE).as_deref() == Some(stage.as_str()),
            Filter::Header(name, value) => letter.header(name).as_deref() == Some(value.as_str()),
            Filter::Event(field, value) => letter
                .event
                .as_ref()
                .and_then(|event| event_field(event, field))
                .is_some_and(|found| found == *value),
        }
    }
}

/// A field of an event as text: `attributes.KEY` reaches into the attributes.
fn event_field(event: &TransactionEvent, field: &str) -> Option<String> {
    let value = serde_json::to_value(event).ok()?;
    let found = match field.split_once('.') {
        Some(("attributes", key)) => value.get("attributes")?.get(key)?.clone(),
        _ => value.get(field)?.clone(),
    };
    match found {
        Value::String(text) => Some(text),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A record of a dead-letter topic, with its event when the value decodes.
pub struct DeadLetter {
    pub record: InputRecord,
    pub event: Option<TransactionEvent>,
}

impl DeadLetter {
    pub fn new(record: InputRecord, codec: &Codec) -> Self {
        let event = record
            .value
            .as_deref()
            .and_then(|v| codec.decode(Record::TransactionEvent, v).ok());
        DeadLetter { record, event }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.record
            .header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Milliseconds from its last failure to `now_ms`.
    pub fn age_ms(&self, now_ms: i64) -> Option<i64> {
        self.record
            .header_number(LAST_FAILURE)
            .map(|at| now_ms - at)
    }

    /// One line for `txflow dlq list`.
    pub fn summary(&self, now_ms: i64) -> Value {
        json!({
            "partition": self.record.partition,
            "offset": self.record.offset,
            "kind": self.header(ERROR_KIND),
            "stage": self.header(STAGE),
            "attempts": self.record.header_number(ATTEMPTS),
            "original": format!(
                "{}/{}/{}",
                self.header(ORIGINAL_TOPIC).unwrap_or_default(),
                self.header(ORIGINAL_PARTITION).unwrap_or_default(),
                self.header(ORIGINAL_OFFSET).unwrap_or_default()
            ),
            "event_id": self.event.as_ref().map(|e| e.event_id.clone()),
            "account_id": self.record.key.as_deref().map(String::from_utf8_lossy),
            "age_s": self.age_ms(now_ms).map(|ms| ms / 1000),
            "message": self.header(ERROR_MESSAGE),
        })
    }

    /// Everything about it, for `txflow dlq show`.
    pub fn detail(&self) -> Value {
        let headers: BTreeMap<String, String> = self
            .record
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        json!({
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "timestamp": self.record.timestamp,
            "key": self.record.key.as_deref().map(String::from_utf8_lossy),
            "event": self.event,
            "value_bytes": self.record.value.as_ref().map(Vec::len),
            "value_hex": match &self.event {
                Some(_) => None,
                None => self.record.value.as_deref().map(hex),
            },
            "headers": headers,
        })
    }

    /// The record redrive run `run` writes: key and value untouched, to `to` or else to the
    /// topic it was first read from, without the failure headers (it starts over as a new
    /// record), saying in [`REDRIVEN_FROM`] where it was read before, so that the stage can
    /// publish a result recorded there that never was, and in [`REDRIVE_RUN`] which run
    /// wrote it. Its latency is measured from the redrive, not from when the event first
    /// entered txflow ([`INGESTED_AT`] goes).
    pub fn redriven(&self, to: Option<&str>, run: &str) -> Result<OutputRecord, String> {
        let topic = self.destination(to)?;
        let mut headers: Vec<(String, Vec<u8>)> = self
            .record
            .headers
            .iter()
            .filter(|(name, _)| {
                !is_failure_header(name)
                    && ![REDRIVEN_FROM, REDRIVE_RUN, INGESTED_AT].contains(&name.as_str())
            })
            .cloned()
            .collect();
        if let Some(original) = self.record.original_position() {
            headers.push((REDRIVEN_FROM.to_owned(), original.to_string().into_bytes()));
        }
        headers.push((REDRIVE_RUN.to_owned(), run.as_bytes().to_vec()));
        Ok(OutputRecord {
            topic,
            key: self.record.key.clone(),
            value: self.record.value.clone(),
            headers,
        })
    }

    /// Where a redrive writes it: `to`, or else the topic it was first read from.
    pub fn destination(&self, to: Option<&str>) -> Result<String, String> {
        match to {
            Some(topic) => Ok(topic.to_owned()),
            None => self.header(ORIGINAL_TOPIC).ok_or_else(|| {
                format!(
                    "dead letter at {}/{} has no {ORIGINAL_TOPIC} header; give --to",
                    self.record.partition, self.record.offset
                )
            }),
        }
    }

    /// Whether redrive run `run` wrote the record this dead letter came from: it failed
    /// again in that run.
    pub fn came_back_from(&self, run: &str) -> bool {
        self.record.header(REDRIVE_RUN) == Some(run.as_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts of dead letters by error kind, stage and age.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: usize,
    pub by_kind: BTreeMap<String, usize>,
    pub by_stage: BTreeMap<String, usize>,
    /// By age of the last failure: `<1h`, `1h-24h`, `1d-7d`, `>7d`, `unknown`.
    pub by_age: BTreeMap<&'static str, usize>,
    pub oldest_failure_ms: Option<i64>,
    pub newest_failure_ms: Option<i64>,
}

impl Stats {
    pub fn of<'a>(letters: impl IntoIterator<Item = &'a DeadLetter>, now_ms: i64) -> Stats {
        let mut stats = Stats::default();
        for letter in letters {
            stats.total += 1;
            let kind = letter
                .header(ERROR_KIND)
                .unwrap_or_else(|| "unknown".into());
            *stats.by_kind.entry(kind).or_default() += 1;
            let stage = letter.header(STAGE).unwrap_or_else(|| "unknown".into());
            *stats.by_stage.entry(stage).or_default() += 1;
            const HOUR: i64 = 3_600_000;
            let bucket = match letter.age_ms(now_ms) {
                None => "unknown",
                Some(age) if age < HOUR => "<1h",
                Some(age) if age < 24 * HOUR => "1h-24h",
                Some(age) if age < 7 * 24 * HOUR => "1d-7d",
                Some(_) => ">7d",
            };
            *stats.by_age.entry(bucket).or_default() += 1;
            let first = letter.record.header_number(FIRST_FAILURE);
            let last = letter.record.header_number(LAST_FAILURE);
            stats.oldest_failure_ms = min_some(stats.oldest_failure_ms, first.or(last));
            stats.newest_failure_ms = stats.newest_failure_ms.max(last);
        }
        stats
    }
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dead letters: {}", self.total)?;
        for (title, counts) in [("by kind", &self.by_kind), ("by stage", &self.by_stage)] {
            writeln!(f, "{title}:")?;
            for (name, count) in counts {
                writeln!(f, "  {name:<24} {count}")?;
            }
        }
        writeln!(f, "by age of the last failure:")?;
        for (bucket, count) in &self.by_age {
            writeln!(f, "  {bucket:<24} {count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventType;

    fn letter(
        kind: &str,
        headers: &[(&str, &str)],
        event: Option<&TransactionEvent>,
    ) -> DeadLetter {
        let codec = Codec::builtin();
        let mut all: Vec<(String, Vec<u8>)> = vec![
            (ERROR_KIND.into(), kind.as_bytes().to_vec()),
            (STAGE.into(), b"ledger".to_vec()),
            (ORIGINAL_TOPIC.into(), b"txflow.ledger".to_vec()),
            (LAST_FAILURE.into(), b"1000".to_vec()),
            ("traceparent".into(), b"00-1-2-01".to_vec()),
        ];
        all.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        let value = match event {
            Some(e) => codec.encode(Record::TransactionEvent, e).unwrap(),
            None => b"garbage".to_vec(),
        };
        DeadLetter::new(
            InputRecord {
                topic: "txflow.ledger.dlq".into(),
                partition: 0,
                offset: 5,
                timestamp: Some(1000),
                key: Some(b"acct-1".to_vec()),
                value: Some(value),
                headers: all,
            },
            &codec,
        )
    }

    fn deposit() -> TransactionEvent {
        TransactionEvent {
            event_id: "e1".into(),
            event_type: EventType::Deposit,
            account_id: "acct-1".into(),
            counterparty_account_id: None,
            amount_minor: 250,
            currency: "EUR".into(),
            occurred_at: 0,
            source: "test".into(),
            attributes: BTreeMap::from([("channel".to_owned(), "web".to_owned())]),
        }
    }

    #[test]
    fn filters_match_kinds_headers_and_event_fields() {
        let event = deposit();
        let l = letter("store_unavailable", &[("x-tenant", "t1")], Some(&event));
        let matches = |f: &str| f.parse::<Filter>().unwrap().matches(&l);
        assert!(matches("kind=store_unavailable"));
        assert!(!matches("kind=invalid_event"));
        assert!(matches("stage=ledger"));
        assert!(matches("header.x-tenant=t1"));
        assert!(!matches("header.x-tenant=t2"));
        assert!(matches("event.event_type=DEPOSIT"));
        assert!(matches("event.amount_minor=250"));
        assert!(matches("event.attributes.channel=web"));
        assert!(!matches("event.counterparty_account_id=x"));
        let garbage = letter("undecodable", &[], None);
        assert!(!"event.event_id=e1"
            .parse::<Filter>()
            .unwrap()
            .matches(&garbage));
    }

    #[test]
    fn a_filter_reads_back_as_written() {
        for text in [
            "kind=k",
            "stage=ledger",
            "header.x-a=1=2",
            "event.attributes.c=web",
        ] {
            assert_eq!(text.parse::<Filter>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_filters_are_explained() {
        assert!("kind".parse::<Filter>().unwrap_err().contains("NAME=VALUE"));
        assert!("colour=red"
            .parse::<Filter>()
            .unwrap_err()
            .contains("colour"));
        assert!("header.=x".parse::<Filter>().is_err());
    }

    #[test]
    fn a_redrive_writes_the_original_record_without_failure_headers() {
        let event = deposit();
        let l = letter(
            "store_unavailable",
            &[
                (ATTEMPTS, "4"),
                (ORIGINAL_PARTITION, "2"),
                (ORIGINAL_OFFSET, "17"),
                (REDRIVEN_FROM, "txflow.ledger/0/1"),
            ],
            Some(&event),
        );
        let out = l.redriven(None, "run-1").unwrap();
        assert_eq!(out.topic, "txflow.ledger");
        assert_eq!((&out.key, &out.value), (&l.record.key, &l.record.value));
        assert_eq!(
            out.headers,
            vec![
                ("traceparent".to_owned(), b"00-1-2-01".to_vec()),
                (REDRIVEN_FROM.to_owned(), b"txflow.ledger/2/17".to_vec()),
                (REDRIVE_RUN.to_owned(), b"run-1".to_vec())
            ]
        );
        assert_eq!(
            l.redriven(Some("elsewhere"), "run-1").unwrap().topic,
            "elsewhere"
        );
        // Failed again in the same run, it carries the run's mark; another run redrives it,
        // with its own.
        let mut again = l.record.clone();
        again.headers = out.headers.clone();
        let again = DeadLetter::new(again, &Codec::builtin());
        assert!(again.came_back_from("run-1") && !again.came_back_from("run-2"));
        let twice = again.redriven(Some("txflow.ledger"), "run-2").unwrap();
        let runs: Vec<_> = twice
            .headers
            .iter()
            .filter(|(n, _)| n == REDRIVE_RUN)
            .collect();
        assert_eq!(runs, [&(REDRIVE_RUN.to_owned(), b"run-2".to_vec())]);
    }

    #[test]
    fn stats_count_by_kind_stage_and_age() {
        let event = deposit();
        let letters = [
            letter("store_unavailable", &[], Some(&event)),
            letter("store_unavailable", &[], Some(&event)),
            letter("undecodable", &[], None),
        ];
        let stats = Stats::of(&letters, 1000 + 2 * 3_600_000);
        assert_eq!(stats.total, 3);
        assert_eq!(stats.by_kind["store_unavailable"], 2);
        assert_eq!(stats.by_kind["undecodable"], 1);
        assert_eq!(stats.by_stage["ledger"], 3);
        assert_eq!(stats.by_age["1h-24h"], 3);
        assert_eq!(stats.newest_failure_ms, Some(1000));
    }
}
