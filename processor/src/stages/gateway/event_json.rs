//! An event in its HTTP JSON form (DESIGN.md §2: the Avro field names), checked against the
//! Avro schema of `TransactionEvent` field by field, then against the ledger's field rules.
//! Every problem is reported with its field, not just the first.

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

/// The event `value` describes, or every problem it has.
pub fn event_from_json(
    value: &Value,
    schema: &Schema,
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
    let problems = event.problems();
    if problems.is_empty() {
        Ok(event)
    } else {
        Err(problems
            .into_iter()
            .map(|p| FieldError {
                field: p.field.to_owned(),
                message: p.message,
            })
            .collect())
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
    let mut wrong = |expected: &str| {
        errors.push(FieldError {
            field: path.to_owned(),
            message: format!("must be {expected}, got {}", kind(value)),
        })
    };
    match schema {
        Schema::Record(record) => {
            let Some(object) = value.as_object() else {
                return wrong("an object");
            };
            check_record(record, object, path, errors);
        }
        Schema::String => {
            if !value.is_string() {
                wrong("a string");
            }
        }
        Schema::Long | Schema::TimestampMillis => {
            if value.as_i64().is_none() {
                wrong("an integer (64-bit)");
            }
        }
        Schema::Int => {
            if value.as_i64().and_then(|n| i32::try_from(n).ok()).is_none() {
                wrong("an integer (32-bit)");
            }
        }
        Schema::Boolean => {
            if !value.is_boolean() {
                wrong("a boolean");
            }
        }
        Schema::Double | Schema::Float => {
            if !value.is_number() {
                wrong("a number");
            }
        }
        Schema::Null => {
            if !value.is_null() {
                wrong("null");
            }
        }
        Schema::Enum(symbols) => match value.as_str() {
            Some(symbol) if symbols.symbols.iter().any(|s| s == symbol) => {}
            Some(symbol) => errors.push(FieldError {
                field: path.to_owned(),
                message: format!(
                    "must be one of {}, got {symbol:?}",
                    symbols.symbols.join(", ")
                ),
            }),
            None => wrong(&format!("one of {}", symbols.symbols.join(", "))),
        },
        Schema::Union(union) => {
            let variants = union.variants();
            if value.is_null() && variants.contains(&Schema::Null) {
                return;
            }
            let others: Vec<&Schema> = variants.iter().filter(|v| **v != Schema::Null).collect();
            match others[..] {
                [only] => {
                    let mut inner = Vec::new();
                    check(only, value, path, &mut inner);
                    if !inner.is_empty() && variants.contains(&Schema::Null) {
                        for error in &mut inner {
                            error.message.push_str(" (or null)");
                        }
                    }
                    errors.extend(inner);
                }
                _ => {
                    let fits = others.iter().any(|variant| {
                        let mut inner = Vec::new();
                        check(variant, value, path, &mut inner);
                        inner.is_empty()
                    });
                    if !fits {
                        wrong("a value of one of the union's types");
                    }
                }
            }
        }
        Schema::Map(map) => {
            let Some(object) = value.as_object() else {
                return wrong("an object");
            };
            for (key, inner) in object {
                check(&map.types, inner, &join(path, key), errors);
            }
        }
        Schema::Array(array) => {
            let Some(items) = value.as_array() else {
                return wrong("an array");
            };
            for (i, inner) in items.iter().enumerate() {
                check(&array.items, inner, &format!("{path}[{i}]"), errors);
            }
        }
        other => errors.push(FieldError {
            field: path.to_owned(),
            message: format!("has a schema type the gateway does not read from JSON: {other:?}"),
        }),
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

    fn deposit() -> Value {
        json!({
            "event_id": "e-1", "event_type": "DEPOSIT", "account_id": "acct-1",
            "amount_minor": 1250, "currency": "EUR", "occurred_at": 1764000000000_i64,
            "source": "mobile"
        })
    }

    fn problems(value: Value) -> Vec<(String, String)> {
        event_from_json(&value, schema())
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_valid_event_takes_the_schema_defaults() {
        let event = event_from_json(&deposit(), schema()).unwrap();
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
}
