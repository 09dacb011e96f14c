//! An event in its HTTP JSON form (docs/CONTRACT.md §2: the Avro field names), checked against the
//! Avro schema of `TransactionEvent` field by field, then against the ledger's field rules.
//! Every problem is reported with its field, not just the first.

use std::collections::BTreeSet;
use std::time::Duration;

use apache_avro::Schema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::TransactionEvent;

/// A problem with one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A path into the request: `amount_minor`, `attributes.channel`, `[3].currency`.
    pub field: String,
    pub message: String,
}

/// What the gateway admits beyond the ledger's rules: the currencies it is configured for
/// and an `occurred_at` near its clock. (The ledger cannot apply a window relative to now:
/// a re-delivered or replayed event is old by design.)
pub struct Admission<'a> {
    /// Empty admits every ISO 4217 code.
    pub currencies: &'a BTreeSet<String>,
    pub now_ms: i64,
    pub max_age: Duration,
    pub max_ahead: Duration,
}

impl Admission<'_> {
    fn problems(&self, event: &TransactionEvent) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let earliest = self.now_ms.saturating_sub(ms(self.max_age));
        let latest = self.now_ms.saturating_add(ms(self.max_ahead));
        if event.occurred_at < earliest || event.occurred_at > latest {
            problems.push(FieldError {
                field: "occurred_at".to_owned(),
                message: format!(
                    "occurred_at must lie between {earliest} and {latest} (at most {}s before the gateway's clock, gateway.occurred_at_max_age_s, and {}s after it, gateway.occurred_at_max_ahead_s), got {}",
                    self.max_age.as_secs(),
                    self.max_ahead.as_secs(),
                    event.occurred_at
                ),
            });
        }
        if !self.currencies.is_empty() && !self.currencies.contains(&event.currency) {
            problems.push(FieldError {
                field: "currency".to_owned(),
                message: format!(
                    "currency {:?} is not accepted here (gateway.currencies: {})",
                    event.currency,
                    self.currencies
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        problems
    }
}

/// The event `value` describes, or every problem it has.
pub fn event_from_json(
    value: &Value,
    schema: &Schema,
    admission: &Admission,
) -> Result<TransactionEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut object = value.as_object().cloned().unwrap_or_default();
    if let Schema::Record(record) = schema {
        for field in &record.fields {
            if let (None, Some(default)) = (object.get(&field.name), &field.default) {
                object.insert(field.name.clone(), default.clone());
            }
        }
    }
    let event: TransactionEvent = serde_json::from_value(Value::Object(object)).map_err(|e| {
        vec![FieldError {
            field: String::new(),
            message: format!("not a transaction event: {e}"),
        }]
    })?;
    let mut problems: Vec<FieldError> = event
        .problems()
        .into_iter()
        .map(|p| FieldError {
            field: p.field.to_owned(),
            message: p.message,
        })
        .collect();
    for problem in admission.problems(&event) {
        if !problems.iter().any(|p| p.field == problem.field) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(event)
    } else {
        Err(problems)
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// What kind of JSON value `value` is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `value` against `schema`, adding a problem per field that does not fit.
fn check(schema: &Schema, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let wrong = |errors: &mut Vec<FieldError>, expected: &str| {
        errors.push(FieldError {
            field: path.to_owned(),
            message: format!("must be {expected}, got {}", kind(value)),
        })
    };
    if let Some((expected, fits)) = scalar(schema) {
        if !fits(value) {
            wrong(errors, expected);
        }
        return;
    }
    match schema {
        Schema::Record(record) => match value.as_object() {
            Some(object) => check_record(record, object, path, errors),
            None => wrong(errors, "an object"),
        },
        Schema::Enum(symbols) => match value.as_str() {
            Some(symbol) if symbols.symbols.iter().any(|s| s == symbol) => {}
            Some(symbol) => errors.push(FieldError {
                field: path.to_owned(),
                message: format!(
                    "must be one of {}, got {symbol:?}",
                    symbols.symbols.join(", ")
                ),
            }),
            None => wrong(errors, &format!("one of {}", symbols.symbols.join(", "))),
        },
        Schema::Union(union) => check_union(union.variants(), value, path, errors),
        Schema::Map(map) => match value.as_object() {
            Some(object) => {
                for (key, inner) in object {
                    check(&map.types, inner, &join(path, key), errors);
                }
            }
            None => wrong(errors, "an object"),
        },
        Schema::Array(array) => match value.as_array() {
            Some(items) => {
                for (i, inner) in items.iter().enumerate() {
                    check(&array.items, inner, &format!("{path}[{i}]"), errors);
                }
            }
            None => wrong(errors, "an array"),
        },
        other => errors.push(FieldError {
            field: path.to_owned(),
            message: format!("has a schema type the gateway does not read from JSON: {other:?}"),
        }),
    }
}

/// What a value of a scalar schema must be, and whether a value is that.
type ScalarRule = (&'static str, fn(&Value) -> bool);

/// The rule of a scalar schema; `None` for the schemas that are not scalars.
fn scalar(schema: &Schema) -> Option<ScalarRule> {
    let rule: ScalarRule = match schema {
        Schema::String => ("a string", Value::is_string),
        Schema::Long | Schema::TimestampMillis => ("an integer (64-bit)", |v| v.as_i64().is_some()),
        Schema::Int => ("an integer (32-bit)", |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok()).is_some()
        }),
        Schema::Boolean => ("a boolean", Value::is_boolean),
        Schema::Double | Schema::Float => ("a number", Value::is_number),
        Schema::Null => ("null", Value::is_null),
        _ => return None,
    };
    Some(rule)
}

/// A value of a union: null where the union allows it, else the one other type's rules
/// (said "or null" where null was allowed), or any of several other types.
fn check_union(variants: &[Schema], value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let nullable = variants.contains(&Schema::Null);
    if value.is_null() && nullable {
        return;
    }
    let others: Vec<&Schema> = variants.iter().filter(|v| **v != Schema::Null).collect();
    if let [only] = others[..] {
        let mut inner = Vec::new();
        check(only, value, path, &mut inner);
        if nullable {
            for error in &mut inner {
                error.message.push_str(" (or null)");
            }
        }
        errors.extend(inner);
        return;
    }
    let fits = others.iter().any(|variant| {
        let mut inner = Vec::new();
        check(variant, value, path, &mut inner);
        inner.is_empty()
    });
    if !fits {
        errors.push(FieldError {
            field: path.to_owned(),
            message: format!(
                "must be a value of one of the union's types, got {}",
                kind(value)
            ),
        });
    }
}

fn check_record(
    record: &apache_avro::schema::RecordSchema,
    object: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for field in &record.fields {
        let at = join(path, &field.name);
        match object.get(&field.name) {
            Some(value) => check(&field.schema, value, &at, errors),
            None if field.default.is_some() => {}
            None => errors.push(FieldError {
                field: at,
                message: "is required".to_owned(),
            }),
        }
    }
    for name in object.keys() {
        if !record.fields.iter().any(|f| &f.name == name) {
            errors.push(FieldError {
                field: join(path, name),
                message: "is not a field of TransactionEvent".to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::codec::{Codec, Record};

    fn schema() -> &'static Schema {
        Codec::builtin()
            .schema(Record::TransactionEvent)
            .expect("the event schema")
    }

    const NOW_MS: i64 = 1_764_000_000_000;

    fn deposit() -> Value {
        json!({
            "event_id": "e-1", "event_type": "DEPOSIT", "account_id": "acct-1",
            "amount_minor": 1250, "currency": "EUR", "occurred_at": NOW_MS,
            "source": "mobile"
        })
    }

    fn admit_all() -> Admission<'static> {
        static EVERY: BTreeSet<String> = BTreeSet::new();
        Admission {
            currencies: &EVERY,
            now_ms: NOW_MS,
            max_age: Duration::from_secs(3600),
            max_ahead: Duration::from_secs(60),
        }
    }

    fn problems(value: Value) -> Vec<(String, String)> {
        event_from_json(&value, schema(), &admit_all())
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_valid_event_takes_the_schema_defaults() {
        let event = event_from_json(&deposit(), schema(), &admit_all()).unwrap();
        assert_eq!(event.counterparty_account_id, None);
        assert!(event.attributes.is_empty());
        assert_eq!(event.amount_minor, 1250);
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let mut event = deposit();
        event["amount_minor"] = json!("12.50");
        event["event_type"] = json!("REFUND");
        event["attributes"] = json!({"channel": 7});
        event["colour"] = json!("red");
        event.as_object_mut().unwrap().remove("source");
        assert_eq!(
            problems(event),
            [
                (
                    "event_type",
                    "must be one of DEPOSIT, WITHDRAWAL, TRANSFER, got \"REFUND\""
                ),
                ("amount_minor", "must be an integer (64-bit), got a string"),
                ("source", "is required"),
                ("attributes.channel", "must be a string, got an integer"),
                ("colour", "is not a field of TransactionEvent"),
            ]
            .map(|(f, m)| (f.to_owned(), m.to_owned()))
        );
    }

    #[test]
    fn the_ledgers_field_rules_follow_the_schema() {
        let mut event = deposit();
        event["amount_minor"] = json!(0);
        event["currency"] = json!("euro");
        event["counterparty_account_id"] = json!("acct-2");
        let fields: Vec<String> = problems(event).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["counterparty_account_id", "amount_minor", "currency"]
        );
        assert_eq!(
            problems(json!([1, 2])),
            [("".to_owned(), "must be an object, got an array".to_owned())]
        );
        let mut fractional = deposit();
        fractional["amount_minor"] = json!(12.5);
        assert_eq!(
            problems(fractional)[0].1,
            "must be an integer (64-bit), got a fractional number"
        );
        let mut nullable = deposit();
        nullable["counterparty_account_id"] = json!(5);
        assert_eq!(
            problems(nullable)[0].1,
            "must be a string, got an integer (or null)"
        );
    }

    #[test]
    fn ids_are_printable_and_unpadded() {
        for (field, id) in [
            ("account_id", " acct "),
            ("account_id", "acct\u{0}"),
            ("account_id", "acct\r\nX-Injected: 1"),
            ("event_id", "e\u{202E}1"),
            ("event_id", "e\u{200B}1"),
            ("source", "\tmobile"),
        ] {
            let mut event = deposit();
            event[field] = json!(id);
            let found = problems(event);
            assert_eq!(found.len(), 1, "{id:?}: {found:?}");
            assert_eq!(found[0].0, field, "{id:?}");
        }
        let mut unicode = deposit();
        unicode["account_id"] = json!("kunde-müller-東京");
        assert!(event_from_json(&unicode, schema(), &admit_all()).is_ok());
    }

    #[test]
    fn currencies_are_iso_4217_and_narrowed_by_config() {
        let mut made_up = deposit();
        made_up["currency"] = json!("ABC");
        assert_eq!(problems(made_up)[0].0, "currency");
        let only_usd = BTreeSet::from(["USD".to_owned()]);
        let narrowed = Admission {
            currencies: &only_usd,
            ..admit_all()
        };
        let errors = event_from_json(&deposit(), schema(), &narrowed).unwrap_err();
        assert_eq!(errors[0].field, "currency");
        assert!(errors[0].message.contains("gateway.currencies"));
    }

    #[test]
    fn occurred_at_lies_in_the_window() {
        for (at, admitted) in [
            (NOW_MS, true),
            (NOW_MS - 3_600_000, true),
            (NOW_MS - 3_600_001, false),
            (NOW_MS + 60_000, true),
            (NOW_MS + 60_001, false),
            (-1, false),
            (253_402_300_800_000, false),
        ] {
            let mut event = deposit();
            event["occurred_at"] = json!(at);
            let outcome = event_from_json(&event, schema(), &admit_all());
            assert_eq!(outcome.is_ok(), admitted, "{at}: {outcome:?}");
            if let Err(errors) = outcome {
                assert_eq!(errors.len(), 1, "one problem per field: {errors:?}");
                assert_eq!(errors[0].field, "occurred_at");
            }
        }
    }
}
