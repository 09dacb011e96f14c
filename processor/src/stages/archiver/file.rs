//! An archive file: the records of one partition from a first offset on, as an Avro object
//! container file (deflate), under a key that only its first record decides.
//!
//! Avro container files carry their schema, and Spark, DuckDB (`read_avro`), pandas
//! (fastavro) and Trino read them as they are; apache-avro is already txflow's codec, where
//! Parquet would add the arrow crates and minutes to every cold build. Each record keeps
//! its bytes as the log held them, and beside them `decoded`, the event or result as JSON,
//! for tools that do not speak the Confluent wire format.

use apache_avro::types::Value;
use apache_avro::{Codec as AvroCodec, DeflateSettings, Reader, Schema, Writer};

use crate::wire::InputRecord;

/// The schema of every archived record.
pub const SCHEMA: &str = r#"{
  "type": "record",
  "name": "ArchivedRecord",
  "namespace": "io.txflow.archive",
  "doc": "A record of a txflow topic as the log held it, with its event or result as JSON.",
  "fields": [
    {"name": "topic", "type": "string"},
    {"name": "partition", "type": "int"},
    {"name": "offset", "type": "long"},
    {"name": "timestamp", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null},
    {"name": "key", "type": ["null", "bytes"], "default": null},
    {"name": "value", "type": ["null", "bytes"], "default": null},
    {"name": "headers", "type": {"type": "array", "items": {
      "type": "record", "name": "Header",
      "fields": [{"name": "name", "type": "string"}, {"name": "value", "type": "bytes"}]}}},
    {"name": "decoded", "type": ["null", "string"], "default": null,
     "doc": "The value decoded (a TransactionEvent or TransactionResult) as JSON; null when it is neither."}
  ]
}"#;

/// The suffix of every archive file's key.
pub const EXTENSION: &str = ".avro";

/// Why bytes are not an archive file.
#[derive(Debug, thiserror::Error)]
#[error("not an archive file: {0}")]
pub struct FileError(String);

/// The key of the file whose first record is `first`:
/// `TOPIC/date=YYYY-MM-DD/hour=HH/PARTITION-FIRSTOFFSET.avro`, its date and hour the record's
/// timestamp in UTC. Reading a partition again from the same offset gives the same key, so
/// a file written again after a crash finds the first one in place.
pub fn key_of(first: &InputRecord) -> String {
    let (date, hour) = utc_date_hour(first.timestamp.unwrap_or(0));
    format!(
        "{}/date={date}/hour={hour:02}/{:04}-{:020}{EXTENSION}",
        first.topic, first.partition, first.offset
    )
}

/// The hour since the Unix epoch that `ms` (milliseconds since it) falls in: what a file's
/// key names, where a file ends, what a replay's range covers.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// The first millisecond of `hour` (since the Unix epoch).
pub fn start_of_hour(hour: i64) -> i64 {
    hour * HOUR_MS
}

const HOUR_MS: i64 = 3_600_000;

/// `YYYY-MM-DD` and the hour of `ms` since the Unix epoch, in UTC.
pub fn utc_date_hour(ms: i64) -> (String, i64) {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let hour = seconds.rem_euclid(86_400) / 3600;
    // Days to the civil calendar (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), hour)
}

/// Days since the Unix epoch of a date of the proleptic Gregorian calendar (the inverse of
/// the conversion in [`utc_date_hour`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The partition and first offset a file's key names.
pub fn position_of_key(key: &str) -> Option<(i32, i64)> {
    let name = key.rsplit('/').next()?.strip_suffix(EXTENSION)?;
    let (partition, offset) = name.split_once('-')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// The hour (since the Unix epoch) a file's key says its first record is of.
pub fn hour_of_key(key: &str) -> Option<i64> {
    let (_, rest) = key.split_once("/date=")?;
    let (date, rest) = rest.split_once("/hour=")?;
    let hour: i64 = rest.get(..2)?.parse().ok()?;
    Some(date_days(date)? * 24 + hour)
}

fn date_days(date: &str) -> Option<i64> {
    let mut parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (parts.next()??, parts.next()??, parts.next()??);
    ((1..=12).contains(&month) && (1..=31).contains(&day))
        .then(|| days_from_civil(year, month, day))
}

/// Milliseconds since the Unix epoch of `text`: `YYYY-MM-DD` (midnight UTC),
/// `YYYY-MM-DDTHH:MM[:SS[.fff]]Z`, or a number of milliseconds.
pub fn parse_utc(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let wrong = || {
        format!("`{text}` is no time: give YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or milliseconds since 1970")
    };
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(wrong)?)),
        None => (text, None),
    };
    let days = date_days(date).ok_or_else(wrong)?;
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
        let mut fields = clock.split(':').map(|f| f.parse::<i64>().ok());
        let hour = fields.next().flatten().ok_or_else(wrong)?;
        let minute = fields.next().flatten().ok_or_else(wrong)?;
        let second = match fields.next() {
            Some(second) => second.ok_or_else(wrong)?,
            None => 0,
        };
        if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
            return Err(wrong());
        }
        let millis = match fraction {
            "" => 0,
            digits if digits.len() <= 9 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{digits:0<3}")[..3]
                    .parse::<i64>()
                    .map_err(|_| wrong())?
            }
            _ => return Err(wrong()),
        };
        ms += ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    }
    Ok(ms)
}

fn schema() -> Schema {
    Schema::parse_str(SCHEMA).expect("the archive schema is valid")
}

fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(value) => Value::Union(1, Box::new(value)),
    }
}

/// The file of `records` (one partition's, in offset order), each with its value decoded
/// as `decode` gives it.
pub fn encode(
    records: &[InputRecord],
    decode: impl Fn(&InputRecord) -> Option<String>,
) -> Result<Vec<u8>, FileError> {
    let schema = schema();
    let mut writer = Writer::with_codec(
        &schema,
        Vec::new(),
        AvroCodec::Deflate(DeflateSettings::default()),
    )
    .map_err(|e| FileError(e.to_string()))?;
    for record in records {
        let headers = record
            .headers
            .iter()
            .map(|(name, value)| {
                Value::Record(vec![
                    ("name".to_owned(), Value::String(name.clone())),
                    ("value".to_owned(), Value::Bytes(value.clone())),
                ])
            })
            .collect();
        let value = Value::Record(vec![
            ("topic".to_owned(), Value::String(record.topic.clone())),
            ("partition".to_owned(), Value::Int(record.partition)),
            ("offset".to_owned(), Value::Long(record.offset)),
            (
                "timestamp".to_owned(),
                optional(record.timestamp.map(Value::TimestampMillis)),
            ),
            (
                "key".to_owned(),
                optional(record.key.clone().map(Value::Bytes)),
            ),
            (
                "value".to_owned(),
                optional(record.value.clone().map(Value::Bytes)),
            ),
            ("headers".to_owned(), Value::Array(headers)),
            (
                "decoded".to_owned(),
                optional(decode(record).map(Value::String)),
            ),
        ]);
        writer
            .append_value(value)
            .map_err(|e| FileError(e.to_string()))?;
    }
    writer.into_inner().map_err(|e| FileError(e.to_string()))
}

/// The records of an archive file, as they were read from the log.
pub fn decode(bytes: &[u8]) -> Result<Vec<InputRecord>, FileError> {
    let reader = Reader::new(bytes).map_err(|e| FileError(e.to_string()))?;
    reader
        .map(|value| {
            let value = value.map_err(|e| FileError(e.to_string()))?;
            record_of(value).ok_or_else(|| FileError("a record lacks a field".to_owned()))
        })
        .collect()
}

fn record_of(value: Value) -> Option<InputRecord> {
    let Value::Record(fields) = value else {
        return None;
    };
    let mut record = InputRecord {
        topic: String::new(),
        partition: 0,
        offset: 0,
        timestamp: None,
        key: None,
        value: None,
        headers: Vec::new(),
    };
    let inner = |value: Value| match value {
        Value::Union(_, inner) => *inner,
        other => other,
    };
    let bytes = |value: Value| match inner(value) {
        Value::Bytes(bytes) => Some(bytes),
        _ => None,
    };
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("topic", Value::String(topic)) => record.topic = topic,
            ("partition", Value::Int(partition)) => record.partition = partition,
            ("offset", Value::Long(offset)) => record.offset = offset,
            ("timestamp", value) => {
                record.timestamp = match inner(value) {
                    Value::TimestampMillis(ms) | Value::Long(ms) => Some(ms),
                    _ => None,
                }
            }
            ("key", value) => record.key = bytes(value),
            ("value", value) => record.value = bytes(value),
            ("headers", Value::Array(headers)) => {
                for header in headers {
                    let Value::Record(mut pair) = header else {
                        return None;
                    };
                    let (Some((_, Value::Bytes(value))), Some((_, Value::String(name)))) =
                        (pair.pop(), pair.pop())
                    else {
                        return None;
                    };
                    record.headers.push((name, value));
                }
            }
            _ => {}
        }
    }
    (!record.topic.is_empty()).then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, timestamp: Option<i64>) -> InputRecord {
        InputRecord {
            topic: "txflow.results".to_owned(),
            partition: 3,
            offset,
            timestamp,
            key: Some(b"acct-1".to_vec()),
            value: Some(vec![0, 0, 0, 0, 7, offset as u8]),
            headers: vec![
                ("txflow.trace".to_owned(), b"x".to_vec()),
                ("txflow.trace".to_owned(), Vec::new()),
            ],
        }
    }

    #[test]
    fn a_key_is_the_topic_the_hour_of_its_first_record_and_its_first_offset() {
        // 2026-11-30T22:37:58.123Z
        assert_eq!(
            key_of(&record(42, Some(1_796_078_278_123))),
            "txflow.results/date=2026-11-30/hour=22/0003-00000000000000000042.avro"
        );
        assert_eq!(
            key_of(&record(0, None)),
            "txflow.results/date=1970-01-01/hour=00/0003-00000000000000000000.avro"
        );
        // Leap days and the turn of a year.
        assert_eq!(utc_date_hour(951_782_400_000), ("2000-02-29".to_owned(), 0));
        assert_eq!(
            utc_date_hour(1_735_689_599_999),
            ("2024-12-31".to_owned(), 23)
        );
        assert_eq!(utc_date_hour(-1), ("1969-12-31".to_owned(), 23));
    }

    #[test]
    fn times_read_back_as_the_keys_write_them() {
        let ms = parse_utc("2026-11-30T22:37:58.123Z").unwrap();
        assert_eq!(ms, 1_796_078_278_123);
        assert_eq!(parse_utc("2026-11-30").unwrap(), 1_795_996_800_000);
        assert_eq!(parse_utc("1796078278123").unwrap(), ms);
        assert_eq!(parse_utc("2026-11-30T22:37Z").unwrap(), ms - 58_123);
        let key = key_of(&record(42, Some(ms)));
        assert_eq!(hour_of_key(&key), Some(ms.div_euclid(3_600_000)));
        assert_eq!(position_of_key(&key), Some((3, 42)));
        for day in [-1, 0, 10_957, 11_016, 20_422] {
            let (date, _) = utc_date_hour(day * 86_400_000);
            assert_eq!(parse_utc(&date).unwrap(), day * 86_400_000, "{date}");
        }
        for wrong in [
            "2026-13-01",
            "2026-11-30T25:00Z",
            "2026-11-30T22:00",
            "yesterday",
            "2026-11-30T22:00:00.5x Z",
        ] {
            assert!(
                parse_utc(wrong).unwrap_err().contains("is no time"),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_file_gives_back_every_record_as_the_log_held_it() {
        let mut records = vec![record(7, Some(1_796_078_278_123)), record(9, None)];
        records[1].key = None;
        records[1].value = None;
        records[1].headers.clear();
        let bytes = encode(&records, |r| {
            (r.offset == 7).then(|| "{\"a\":1}".to_owned())
        })
        .unwrap();
        assert_eq!(decode(&bytes).unwrap(), records);
        let reader = Reader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.writer_schema(), &schema());
        let decoded: Vec<Value> = Reader::new(bytes.as_slice())
            .unwrap()
            .map(|v| match v.unwrap() {
                Value::Record(fields) => fields.into_iter().last().unwrap().1,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                Value::Union(1, Box::new(Value::String("{\"a\":1}".to_owned()))),
                Value::Union(0, Box::new(Value::Null)),
            ]
        );
        assert!(decode(b"not avro").is_err());
    }
}
