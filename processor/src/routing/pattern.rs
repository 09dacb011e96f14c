//! EventBridge event patterns: parsed and checked once, with errors that point at the
//! offending part, and matched by a plain recursive reading of the rules (the reference
//! every faster matcher is tested against).
//!
//! A pattern is a JSON object. A field holds either an object (a pattern on a nested
//! object) or an array of conditions, any of which may match. Every field of a pattern must
//! match, and of each `$or` list one alternative. A condition on a field whose value is an
//! array matches when it matches any element.

use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

/// A literal value in a pattern or an event leaf.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
}

impl Scalar {
    fn of(value: &Value) -> Option<Scalar> {
        match value {
            Value::String(s) => Some(Scalar::Text(s.clone())),
            Value::Number(n) => n.as_f64().map(Scalar::Number),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Null => Some(Scalar::Null),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Scalar::Text(s) => Value::String(s.clone()),
            Scalar::Number(n) => {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Null => Value::Null,
        }
    }
}

/// A numeric comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
}

impl Compare {
    fn parse(op: &str) -> Option<Compare> {
        Some(match op {
            "<" => Compare::Less,
            "<=" => Compare::LessOrEqual,
            "=" => Compare::Equal,
            ">=" => Compare::GreaterOrEqual,
            ">" => Compare::Greater,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compare::Less => "<",
            Compare::LessOrEqual => "<=",
            Compare::Equal => "=",
            Compare::GreaterOrEqual => ">=",
            Compare::Greater => ">",
        }
    }

    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Compare::Less => value < bound,
            Compare::LessOrEqual => value <= bound,
            Compare::Equal => value == bound,
            Compare::GreaterOrEqual => value >= bound,
            Compare::Greater => value > bound,
        }
    }
}

/// What `anything-but` excludes.
#[derive(Clone, Debug, PartialEq)]
pub enum Excluded {
    /// These values (all strings, or all numbers).
    Values(Vec<Scalar>),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(Vec<String>),
    Wildcard(Wildcard),
}

/// A `wildcard` operand: `*` stands for any text (none included); `\*` is a star and `\\`
/// a backslash, as in EventBridge, which refuses a backslash before anything else and two
/// stars in a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Wildcard {
    /// As written in the pattern.
    pub text: String,
    /// The literal text between the stars, escapes resolved: one part means no star.
    parts: Vec<String>,
}

impl Wildcard {
    pub fn parse(text: &str) -> Result<Wildcard, String> {
        let mut parts = vec![String::new()];
        let mut chars = text.chars();
        let mut after_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' if after_star => {
                    return Err(format!("{text:?} has two * in a row"));
                }
                '*' => {
                    parts.push(String::new());
                    after_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => parts.last_mut().expect("a part").push(escaped),
                    Some(other) => {
                        return Err(format!(
                            "{text:?} escapes {other:?}: a backslash escapes only * and \\"
                        ))
                    }
                    None => return Err(format!("{text:?} ends in a lone backslash")),
                },
                c => parts.last_mut().expect("a part").push(c),
            }
            after_star = false;
        }
        Ok(Wildcard {
            text: text.to_owned(),
            parts,
        })
    }

    /// The literal text between the stars, in order; one part when there is no star.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// Whether the text contains an escape (`\*` or `\\`).
    pub fn has_escapes(&self) -> bool {
        self.text.contains('\\')
    }

    pub fn matches(&self, text: &str) -> bool {
        let parts = &self.parts;
        if parts.len() == 1 {
            return parts[0] == text;
        }
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if text.len() < first.len() + last.len()
            || !text.starts_with(first.as_str())
            || !text.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle.as_str()) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// An IP network, for `cidr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub text: String,
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn parse(text: &str) -> Option<Network> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then(|| Network {
            text: text.to_owned(),
            address,
            prefix,
        })
    }

    pub fn is_v4(&self) -> bool {
        self.address.is_ipv4()
    }

    /// The first and last address of the network, as [`address_key`]s.
    pub fn addresses(&self) -> (u128, u128) {
        let (key, bits) = match self.address {
            IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = bits - u32::from(self.prefix);
        let hosts = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (key & !hosts, key | hosts)
    }

    fn contains(&self, candidate: &str) -> bool {
        let Ok(ip) = candidate.parse::<IpAddr>() else {
            return false;
        };
        let (a, b, bits) = match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

/// An address as a number, IPv4 addresses mapped into IPv6's space (`::ffff:a.b.c.d`), so
/// that both families order on one line; `None` for text that is no address.
pub fn address_key(text: &str) -> Option<u128> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some(u128::from(a.to_ipv6_mapped())),
        IpAddr::V6(a) => Some(u128::from(a)),
    }
}

/// One element of a field's condition array.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Exact(Scalar),
    Prefix(String),
    Suffix(String),
    /// `prefix` with `equals-ignore-case`.
    PrefixIgnoreCase(String),
    /// `suffix` with `equals-ignore-case`.
    SuffixIgnoreCase(String),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(Excluded),
    Numeric(Vec<(Compare, f64)>),
    Exists(bool),
    Cidr(Network),
}

/// What a pattern says about one field.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// Any of these conditions on the field's value.
    Leaf(Vec<Condition>),
    /// A pattern on the field's object value.
    Object(Pattern),
}

/// A parsed event pattern.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pattern {
    pub fields: Vec<(String, Field)>,
    /// Each `$or`: one of its alternatives must match.
    pub any_of: Vec<Vec<Pattern>>,
}

/// A pattern that cannot be used, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {message}")]
pub struct PatternError {
    /// A path into the pattern, like `detail.status[1]`.
    pub at: String,
    pub message: String,
}

fn error(at: &str, message: impl Into<String>) -> PatternError {
    PatternError {
        at: if at.is_empty() {
            "the top".to_owned()
        } else {
            at.to_owned()
        },
        message: message.into(),
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

impl Pattern {
    /// Parses a pattern from its JSON text.
    pub fn parse_json(text: &str) -> Result<Pattern, PatternError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| error("", format!("not JSON: {e}")))?;
        Pattern::parse(&value)
    }

    /// Parses a pattern from a JSON value.
    pub fn parse(value: &Value) -> Result<Pattern, PatternError> {
        let pattern = parse_object(value, "")?;
        if pattern.fields.is_empty() && pattern.any_of.is_empty() {
            return Err(error("", "a pattern needs at least one field"));
        }
        Ok(pattern)
    }

    /// Whether `event` (a JSON object) matches.
    pub fn matches(&self, event: &Value) -> bool {
        self.fields
            .iter()
            .all(|(name, field)| field_matches(field, event.get(name)))
            && self
                .any_of
                .iter()
                .all(|alternatives| alternatives.iter().any(|p| p.matches(event)))
    }
}

fn parse_object(value: &Value, at: &str) -> Result<Pattern, PatternError> {
    let Value::Object(map) = value else {
        return Err(error(at, "expected an object"));
    };
    let mut pattern = Pattern::default();
    for (name, value) in map {
        let here = join(at, name);
        if name == "$or" {
            let Value::Array(alternatives) = value else {
                return Err(error(&here, "$or takes an array of at least two patterns"));
            };
            if alternatives.len() < 2 {
                return Err(error(&here, "$or takes an array of at least two patterns"));
            }
            let parsed = alternatives
                .iter()
                .enumerate()
                .map(|(i, alt)| {
                    let p = parse_object(alt, &format!("{here}[{i}]"))?;
                    if p.fields.is_empty() && p.any_of.is_empty() {
                        return Err(error(&format!("{here}[{i}]"), "an empty alternative"));
                    }
                    Ok(p)
                })
                .collect::<Result<Vec<_>, _>>()?;
            pattern.any_of.push(parsed);
            continue;
        }
        let field = match value {
            Value::Object(_) => Field::Object(parse_object(value, &here)?),
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(error(&here, "an empty array matches nothing"));
                }
                Field::Leaf(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| parse_condition(item, &format!("{here}[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            _ => {
                return Err(error(
                    &here,
                    "a field's value must be an array of conditions or an object",
                ))
            }
        };
        pattern.fields.push((name.clone(), field));
    }
    Ok(pattern)
}

fn text<'a>(value: &'a Value, at: &str, operator: &str) -> Result<&'a str, PatternError> {
    value
        .as_str()
        .ok_or_else(|| error(at, format!("{operator} takes a string")))
}

fn parse_condition(value: &Value, at: &str) -> Result<Condition, PatternError> {
    let Value::Object(map) = value else {
        return Scalar::of(value)
            .map(Condition::Exact)
            .ok_or_else(|| error(at, "a condition is a value or an operator object"));
    };
    if map.len() != 1 {
        return Err(error(at, "an operator object holds exactly one operator"));
    }
    let (operator, operand) = map.iter().next().expect("one entry");
    let here = join(at, operator);
    Ok(match operator.as_str() {
        "prefix" => match ignoring_case(operand, &here, "prefix")? {
            Some(prefix) => Condition::PrefixIgnoreCase(prefix),
            None => Condition::Prefix(text(operand, &here, "prefix")?.to_owned()),
        },
        "suffix" => match ignoring_case(operand, &here, "suffix")? {
            Some(suffix) => Condition::SuffixIgnoreCase(suffix),
            None => Condition::Suffix(text(operand, &here, "suffix")?.to_owned()),
        },
        "equals-ignore-case" => {
            Condition::EqualsIgnoreCase(text(operand, &here, "equals-ignore-case")?.to_owned())
        }
        "wildcard" => Condition::Wildcard(wildcard(operand, &here)?),
        "exists" => match operand {
            Value::Bool(b) => Condition::Exists(*b),
            _ => return Err(error(&here, "exists takes true or false")),
        },
        "cidr" => {
            let network = text(operand, &here, "cidr")?;
            Condition::Cidr(
                Network::parse(network)
                    .ok_or_else(|| error(&here, format!("{network:?} is not an IP network")))?,
            )
        }
        "numeric" => Condition::Numeric(parse_numeric(operand, &here)?),
        "anything-but" => Condition::AnythingBut(parse_excluded(operand, &here)?),
        other => return Err(error(at, format!("unknown operator {other:?}"))),
    })
}

/// The operand of `prefix` or `suffix` given as `{"equals-ignore-case": "text"}`, if it is.
fn ignoring_case(
    operand: &Value,
    at: &str,
    operator: &str,
) -> Result<Option<String>, PatternError> {
    let Value::Object(inner) = operand else {
        return Ok(None);
    };
    match inner.iter().next() {
        Some((name, Value::String(text))) if inner.len() == 1 && name == "equals-ignore-case" => {
            Ok(Some(text.clone()))
        }
        _ => Err(error(
            at,
            format!("{operator} takes a string, or {{\"equals-ignore-case\": string}}"),
        )),
    }
}

fn wildcard(operand: &Value, at: &str) -> Result<Wildcard, PatternError> {
    Wildcard::parse(text(operand, at, "wildcard")?).map_err(|e| error(at, e))
}

fn parse_numeric(operand: &Value, at: &str) -> Result<Vec<(Compare, f64)>, PatternError> {
    let shape = || {
        error(
            at,
            "numeric takes [op, number] or [lower op, number, upper op, number]",
        )
    };
    let Value::Array(items) = operand else {
        return Err(shape());
    };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return Err(shape());
    }
    let mut comparisons = Vec::new();
    for pair in items.chunks(2) {
        let op = pair[0]
            .as_str()
            .and_then(Compare::parse)
            .ok_or_else(|| error(at, format!("{} is not <, <=, =, >= or >", pair[0])))?;
        let bound = pair[1]
            .as_f64()
            .ok_or_else(|| error(at, format!("{} is not a number", pair[1])))?;
        comparisons.push((op, bound));
    }
    if let [(first, _), (second, _)] = comparisons[..] {
        let lower = matches!(first, Compare::Greater | Compare::GreaterOrEqual);
        let upper = matches!(second, Compare::Less | Compare::LessOrEqual);
        if !(lower && upper) {
            return Err(error(
                at,
                "a range is a lower bound (> or >=) then an upper bound (< or <=)",
            ));
        }
    }
    Ok(comparisons)
}

fn parse_excluded(operand: &Value, at: &str) -> Result<Excluded, PatternError> {
    match operand {
        Value::String(_) | Value::Number(_) => Ok(Excluded::Values(vec![
            Scalar::of(operand).expect("a scalar"),
        ])),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(error(at, "anything-but needs at least one value"));
            }
            let all_text = items.iter().all(Value::is_string);
            let all_numbers = items.iter().all(Value::is_number);
            if !all_text && !all_numbers {
                return Err(error(at, "anything-but takes strings only or numbers only"));
            }
            Ok(Excluded::Values(items.iter().filter_map(Scalar::of).collect()))
        }
        Value::Object(map) if map.len() == 1 => {
            let (operator, inner) = map.iter().next().expect("one entry");
            let here = join(at, operator);
            match operator.as_str() {
                "prefix" => Ok(Excluded::Prefix(text(inner, &here, "prefix")?.to_owned())),
                "suffix" => Ok(Excluded::Suffix(text(inner, &here, "suffix")?.to_owned())),
                "wildcard" => Ok(Excluded::Wildcard(wildcard(inner, &here)?)),
                "equals-ignore-case" => match inner {
                    Value::String(s) => Ok(Excluded::EqualsIgnoreCase(vec![s.clone()])),
                    Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                        Ok(Excluded::EqualsIgnoreCase(
                            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                        ))
                    }
                    _ => Err(error(&here, "equals-ignore-case takes a string or strings")),
                },
                other => Err(error(at, format!("anything-but does not take {other:?}"))),
            }
        }
        _ => Err(error(
            at,
            "anything-but takes a value, an array of values, or one of prefix, suffix, wildcard, equals-ignore-case",
        )),
    }
}

/// Whether `field` holds for an event field that is `value` (`None`: absent).
fn field_matches(field: &Field, value: Option<&Value>) -> bool {
    match field {
        // Fields are paths: a nested field of a missing object is missing (so `exists: false`
        // under it matches), as EventBridge flattens events.
        Field::Object(pattern) => match value {
            Some(Value::Object(_)) => pattern.matches(value.expect("some")),
            Some(Value::Array(items)) if items.iter().any(Value::is_object) => items
                .iter()
                .any(|item| item.is_object() && pattern.matches(item)),
            _ => pattern.matches(&Value::Object(serde_json::Map::new())),
        },
        Field::Leaf(conditions) => {
            let leaves = value.map(leaves_of).unwrap_or_default();
            conditions.iter().any(|condition| match condition {
                Condition::Exists(wanted) => *wanted != leaves.is_empty(),
                _ => leaves.iter().any(|leaf| condition_holds(condition, leaf)),
            })
        }
    }
}

/// The leaf values of an event field: itself, or the elements of an array (nested arrays
/// flattened); objects are not leaves.
fn leaves_of(value: &Value) -> Vec<Scalar> {
    match value {
        Value::Array(items) => items.iter().flat_map(leaves_of).collect(),
        Value::Object(_) => Vec::new(),
        other => Scalar::of(other).into_iter().collect(),
    }
}

fn condition_holds(condition: &Condition, leaf: &Scalar) -> bool {
    let text = match leaf {
        Scalar::Text(s) => Some(s.as_str()),
        _ => None,
    };
    match condition {
        Condition::Exact(expected) => expected == leaf,
        Condition::Prefix(p) => text.is_some_and(|t| t.starts_with(p.as_str())),
        Condition::Suffix(s) => text.is_some_and(|t| t.ends_with(s.as_str())),
        Condition::PrefixIgnoreCase(p) => {
            text.is_some_and(|t| t.to_lowercase().starts_with(&p.to_lowercase()))
        }
        Condition::SuffixIgnoreCase(s) => {
            text.is_some_and(|t| t.to_lowercase().ends_with(&s.to_lowercase()))
        }
        Condition::EqualsIgnoreCase(s) => {
            text.is_some_and(|t| t.to_lowercase() == s.to_lowercase())
        }
        Condition::Wildcard(w) => text.is_some_and(|t| w.matches(t)),
        Condition::Numeric(comparisons) => match leaf {
            Scalar::Number(n) => comparisons.iter().all(|(op, bound)| op.holds(*n, *bound)),
            _ => false,
        },
        Condition::Cidr(network) => text.is_some_and(|t| network.contains(t)),
        Condition::Exists(_) => unreachable!("exists is decided on the field"),
        Condition::AnythingBut(excluded) => match excluded {
            // Any leaf that is not one of them, of whatever kind (as EventBridge matches).
            Excluded::Values(values) => !values.contains(leaf),
            Excluded::Prefix(p) => text.is_some_and(|t| !t.starts_with(p.as_str())),
            Excluded::Suffix(s) => text.is_some_and(|t| !t.ends_with(s.as_str())),
            Excluded::Wildcard(w) => text.is_some_and(|t| !w.matches(t)),
            Excluded::EqualsIgnoreCase(values) => text.is_some_and(|t| {
                let lower = t.to_lowercase();
                !values.iter().any(|v| v.to_lowercase() == lower)
            }),
        },
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}
