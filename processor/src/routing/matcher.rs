//! A rule set compiled into one matcher: every pattern is turned into patterns for one
//! `quamina` automaton (its `$or`s expanded), so that the cost of matching an event grows with
//! the event, not with the number of rules. The automaton only proposes: each pattern it
//! proposes is confirmed by [`Pattern::matches`], so a false positive of the automaton costs
//! a recheck and never a wrong route. What it would miss is kept from it: conditions quamina
//! does not express (`anything-but` with `prefix`, `suffix`, `wildcard` or
//! `equals-ignore-case`, over mixed or numeric values; IPv6 networks) and `exists` beside other
//! conditions on one field are left out of the automaton's copy of the pattern, which then
//! proposes more. (quamina 0.7.0, as the property tests found it: `numeric` lets strings
//! through, a numeric `anything-but` lets other patterns' exact numbers match strings,
//! `exists` mixed with values on a field misses events, and IPv6 `cidr` misses addresses.)

use quamina::{MatcherBuildMode, Quamina};
use serde_json::{Map, Value};

use super::pattern::{Condition, Excluded, Field, Pattern, PatternError, Scalar};

/// `$or` expansions of one pattern, at most.
const MAX_ALTERNATIVES: usize = 128;

/// Automaton patterns per automaton. quamina 0.7.0 panics when more than 255 patterns leave
/// one state of its automaton (a `u8` count); automatons of at most 200 stay clear of that.
const SHARD_PATTERNS: usize = 200;

/// One automaton and the patterns in it.
struct Shard {
    automaton: Quamina<usize>,
    members: Vec<usize>,
    /// Set when the automaton failed: its members are then candidates for every event.
    broken: bool,
}

impl Shard {
    fn new() -> Shard {
        let mut automaton = Quamina::new();
        // Wildcards as DFAs: matching stays flat as wildcard rules are added (adding them
        // costs more, once, at load).
        automaton.set_matcher_build_mode(MatcherBuildMode::BuiltForSpeed);
        Shard {
            automaton,
            members: Vec::new(),
            broken: false,
        }
    }

    /// What the automaton proposes for `event`; everything it holds if it cannot say.
    fn propose(&self, event: &[u8], into: &mut Vec<usize>) {
        if self.broken {
            into.extend_from_slice(&self.members);
            return;
        }
        let proposed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.automaton.matches_for_event(event)
        }));
        match proposed {
            Ok(Ok(found)) => into.extend(found),
            _ => into.extend_from_slice(&self.members),
        }
    }
}

/// Patterns compiled together; a match is the index of a pattern.
pub struct CompiledPatterns {
    shards: Vec<Shard>,
    /// By index: the patterns, to confirm what the automatons propose.
    patterns: Vec<Pattern>,
    /// Patterns of which an alternative has nothing an automaton can check: candidates for
    /// every event, decided by the recheck alone.
    always: Vec<usize>,
}

impl CompiledPatterns {
    /// Compiles `patterns`; a match reports a pattern's index in this slice.
    pub fn compile(patterns: &[Pattern]) -> Result<CompiledPatterns, PatternError> {
        let mut shards = vec![Shard::new()];
        let mut in_shard = 0;
        let mut always = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let alternatives = expand(pattern);
            if alternatives.len() > MAX_ALTERNATIVES {
                return Err(PatternError {
                    at: "$or".to_owned(),
                    message: format!(
                        "the $or lists combine into {} alternatives, more than {MAX_ALTERNATIVES}",
                        alternatives.len()
                    ),
                });
            }
            if in_shard + alternatives.len() > SHARD_PATTERNS {
                shards.push(Shard::new());
                in_shard = 0;
            }
            let shard = shards.last_mut().expect("at least one shard");
            let mut unconditional = false;
            for alternative in alternatives {
                let json = automaton_json(&alternative);
                if json.as_object().is_some_and(|o| o.is_empty()) {
                    unconditional = true;
                    continue;
                }
                shard
                    .automaton
                    .add_pattern(index, &json.to_string())
                    .map_err(|e| PatternError {
                        at: "the top".to_owned(),
                        message: format!("the matcher refused it: {e}"),
                    })?;
                in_shard += 1;
            }
            shard.members.push(index);
            if unconditional {
                always.push(index);
            }
        }
        // Build each automaton now, on an empty event, rather than on the first real one; one
        // that fails is marked and its patterns checked one by one from then on.
        for shard in &mut shards {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shard.automaton.matches_for_event(b"{}")
            }));
            if !matches!(built, Ok(Ok(_))) {
                tracing::warn!(
                    patterns = shard.members.len(),
                    "the pattern automaton failed to build; these rules are checked one by one"
                );
                shard.broken = true;
            }
        }
        Ok(CompiledPatterns {
            shards,
            patterns: patterns.to_vec(),
            always,
        })
    }

    /// The indices of the patterns `event` (a JSON object) matches, ascending.
    pub fn matches(&self, event: &Value) -> Vec<usize> {
        let bytes = serde_json::to_vec(event).expect("a JSON value serializes");
        let mut found = self.always.clone();
        for shard in &self.shards {
            shard.propose(&bytes, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found.retain(|index| self.patterns[*index].matches(event));
        found
    }
}

/// The `$or`-free alternatives a pattern stands for (its disjunctive normal form).
fn expand(pattern: &Pattern) -> Vec<Pattern> {
    // Nested objects may hold $or too: expand each field's alternatives first.
    let mut partials = vec![Pattern::default()];
    for (name, field) in &pattern.fields {
        let options: Vec<Field> = match field {
            Field::Leaf(_) => vec![field.clone()],
            Field::Object(inner) => expand(inner).into_iter().map(Field::Object).collect(),
        };
        partials = product(partials, |partial| {
            options
                .iter()
                .map(|option| {
                    let mut next = partial.clone();
                    next.fields.push((name.clone(), option.clone()));
                    next
                })
                .collect()
        });
        if partials.len() > MAX_ALTERNATIVES {
            return partials;
        }
    }
    for alternatives in &pattern.any_of {
        let options: Vec<Pattern> = alternatives.iter().flat_map(expand).collect();
        partials = product(partials, |partial| {
            options
                .iter()
                .map(|option| merge(partial, option))
                .collect()
        });
        if partials.len() > MAX_ALTERNATIVES {
            return partials;
        }
    }
    partials
}

fn product(partials: Vec<Pattern>, extend: impl Fn(&Pattern) -> Vec<Pattern>) -> Vec<Pattern> {
    partials.iter().flat_map(extend).collect()
}

/// Both patterns' fields in one; a field named by both must satisfy both, which the
/// automaton cannot say in one field, so the first keeps it and the pattern is rechecked.
fn merge(a: &Pattern, b: &Pattern) -> Pattern {
    let mut merged = a.clone();
    for (name, field) in &b.fields {
        match merged.fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, Field::Object(existing))) => {
                if let Field::Object(inner) = field {
                    *existing = merge(existing, inner);
                } else {
                    merged.fields.push((name.clone(), field.clone()));
                }
            }
            _ => merged.fields.push((name.clone(), field.clone())),
        }
    }
    merged
}

/// The automaton's copy of an `$or`-free pattern: the pattern less what the automaton would
/// miss (so it proposes at least every event the pattern matches).
fn automaton_json(pattern: &Pattern) -> Value {
    let mut object = Map::new();
    for (name, field) in &pattern.fields {
        // A field named twice (from a merged $or) keeps its first condition here.
        if object.contains_key(name) {
            continue;
        }
        match field {
            Field::Object(inner) => {
                let json = automaton_json(inner);
                if json.as_object().is_some_and(|o| !o.is_empty()) {
                    object.insert(name.clone(), json);
                }
            }
            Field::Leaf(conditions)
                if conditions.len() > 1
                    && conditions.iter().any(|c| matches!(c, Condition::Exists(_))) => {}
            Field::Leaf(conditions) => {
                if let Some(items) = conditions.iter().map(condition_json).collect() {
                    object.insert(name.clone(), Value::Array(items));
                }
            }
        }
    }
    // Many `anything-but`s slow the automaton down as they add up: where the pattern has
    // other fields to narrow with, they are left to the recheck.
    let excluding = |value: &Value| {
        value
            .as_array()
            .is_some_and(|items| items.iter().all(|item| item.get("anything-but").is_some()))
    };
    if object.values().any(|v| !excluding(v)) {
        object.retain(|_, v| !excluding(v));
    }
    Value::Object(object)
}

/// A condition in quamina's syntax, when quamina has it.
fn condition_json(condition: &Condition) -> Option<Value> {
    let op =
        |name: &str, value: Value| Some(Value::Object(Map::from_iter([(name.to_owned(), value)])));
    match condition {
        Condition::Exact(scalar) => Some(scalar.to_json()),
        Condition::Prefix(p) => op("prefix", Value::String(p.clone())),
        Condition::Suffix(s) => op("suffix", Value::String(s.clone())),
        Condition::EqualsIgnoreCase(s) => op("equals-ignore-case", Value::String(s.clone())),
        Condition::Wildcard(w) => op("wildcard", Value::String(w.clone())),
        Condition::Exists(b) => op("exists", Value::Bool(*b)),
        // The automaton misses IPv6 addresses in IPv6 networks: those are rechecked.
        Condition::Cidr(network) if network.is_v4() => {
            op("cidr", Value::String(network.text.clone()))
        }
        Condition::Cidr(_) => None,
        Condition::Numeric(comparisons) => op(
            "numeric",
            Value::Array(
                comparisons
                    .iter()
                    .flat_map(|(cmp, bound)| {
                        [
                            Value::String(cmp.as_str().to_owned()),
                            Scalar::Number(*bound).to_json(),
                        ]
                    })
                    .collect(),
            ),
        ),
        Condition::AnythingBut(Excluded::Values(values))
            if values.iter().all(|v| matches!(v, Scalar::Text(_))) =>
        {
            op(
                "anything-but",
                Value::Array(values.iter().map(Scalar::to_json).collect()),
            )
        }
        Condition::AnythingBut(_) => None,
    }
}
