//! The rules file: each rule a name, an event pattern and its targets. A target is a topic,
//! and optionally what it receives instead of the event itself: `input`, a JSON object of
//! chosen event fields, or `input_transformer`, EventBridge's input transformer
//! (`input_paths_map` and `input_template`, [`super::transform`]).
//!
//! ```yaml
//! rules:
//!   - name: large-deposits
//!     pattern:
//!       event_type: [DEPOSIT]
//!       amount_minor: [{numeric: [">=", 100000]}]
//!     targets:
//!       - topic: txflow.notifications
//!         webhook: ops
//!         input: {account: $.account_id, amount: $.amount_minor, channel: $.attributes.channel}
//! ```
//!
//! `webhook` names the notifier's endpoint (`[notifier.endpoints.<name>]`) a record sent to
//! the notifications topic is delivered to.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::matcher::CompiledPatterns;
use super::pattern::Pattern;
use super::transform::{InputTransformer, Payload, Transformer};

/// A rules file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the rules file is not valid YAML of rules: {0}")]
    Syntax(String),
    #[error("rule {index} ({name:?}): {message}")]
    Rule {
        index: usize,
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    pattern: Value,
    targets: Vec<Target>,
}

/// Where a matching event goes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub topic: String,
    /// The notifier endpoint that delivers the record, for a target on the notifications
    /// topic.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Output field → `$.`-path into the event; absent: the event itself is sent.
    #[serde(default)]
    pub input: Option<BTreeMap<String, String>>,
    /// EventBridge's input transformer, instead of `input`.
    #[serde(default)]
    pub input_transformer: Option<InputTransformer>,
}

/// A rule, checked.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub pattern: Pattern,
    pub targets: Vec<Target>,
}

/// What one target of a matching rule receives.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery<'a> {
    pub rule: &'a str,
    pub target: &'a Target,
    /// `None`: the event unchanged; `Some`: the transformed input.
    pub transformed: Option<Payload>,
}

/// A rule set, compiled.
pub struct Rules {
    rules: Vec<Rule>,
    compiled: CompiledPatterns,
    /// By rule, then target: its checked input transformer, if it has one.
    transformers: Vec<Vec<Option<Transformer>>>,
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Rules::parse_yaml(&text)
    }

    pub fn parse_yaml(text: &str) -> Result<Rules, RulesError> {
        let file: RulesFile =
            serde_yaml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut transformers = Vec::with_capacity(file.rules.len());
        for (index, spec) in file.rules.into_iter().enumerate() {
            let fail = |message: String| RulesError::Rule {
                index: index + 1,
                name: spec.name.clone(),
                message,
            };
            if spec.name.trim().is_empty() {
                return Err(fail("a rule needs a name".to_owned()));
            }
            if !names.insert(spec.name.clone()) {
                return Err(fail("another rule has this name".to_owned()));
            }
            let pattern =
                Pattern::parse(&spec.pattern).map_err(|e| fail(format!("pattern {e}")))?;
            if spec.targets.is_empty() {
                return Err(fail("a rule needs at least one target".to_owned()));
            }
            for target in &spec.targets {
                if target.topic.trim().is_empty() {
                    return Err(fail("a target needs a topic".to_owned()));
                }
                if target
                    .webhook
                    .as_deref()
                    .is_some_and(|w| w.trim().is_empty())
                {
                    return Err(fail(
                        "a target's webhook names an endpoint: it cannot be empty".to_owned(),
                    ));
                }
                for (field, path) in target.input.iter().flatten() {
                    if parse_path(path).is_none() {
                        return Err(fail(format!(
                            "input field {field:?}: {path:?} is not a path like $.attributes.channel"
                        )));
                    }
                }
                if target.input.is_some() && target.input_transformer.is_some() {
                    return Err(fail(
                        "a target takes input or input_transformer, not both".to_owned(),
                    ));
                }
            }
            let checked = spec
                .targets
                .iter()
                .map(|target| {
                    target
                        .input_transformer
                        .as_ref()
                        .map(|transformer| {
                            transformer
                                .check()
                                .map_err(|e| fail(format!("target {}: {e}", target.topic)))
                        })
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            transformers.push(checked);
            rules.push(Rule {
                name: spec.name,
                pattern,
                targets: spec.targets,
            });
        }
        let patterns: Vec<Pattern> = rules.iter().map(|r| r.pattern.clone()).collect();
        let compiled =
            CompiledPatterns::compile(&patterns).map_err(|e| RulesError::Syntax(e.to_string()))?;
        Ok(Rules {
            rules,
            compiled,
            transformers,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What every target of every rule `event` matches receives, rule by rule in file order.
    pub fn route(&self, event: &Value) -> Vec<Delivery<'_>> {
        self.compiled
            .matches(event)
            .into_iter()
            .flat_map(|index| {
                let rule = &self.rules[index];
                let transformers = &self.transformers[index];
                rule.targets
                    .iter()
                    .zip(transformers)
                    .map(move |(target, transformer)| Delivery {
                        rule: &rule.name,
                        target,
                        transformed: match (&target.input, transformer) {
                            (Some(input), _) => Some(Payload::Json(transform(input, event))),
                            (None, Some(transformer)) => Some(transformer.apply(&rule.name, event)),
                            (None, None) => None,
                        },
                    })
            })
            .collect()
    }
}

/// The segments of a `$.a.b` path.
fn parse_path(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix("$.")?;
    let segments: Vec<&str> = rest.split('.').collect();
    segments.iter().all(|s| !s.is_empty()).then_some(segments)
}

/// The input transform: each output field is the event's value at its path (null if none).
fn transform(input: &BTreeMap<String, String>, event: &Value) -> Value {
    let object = input
        .iter()
        .map(|(field, path)| {
            let value = parse_path(path)
                .and_then(|segments| segments.iter().try_fold(event, |v, s| v.get(*s)))
                .cloned()
                .unwrap_or(Value::Null);
            (field.clone(), value)
        })
        .collect();
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RULES: &str = r#"
rules:
  - name: large-deposits
    pattern:
      event_type: [DEPOSIT]
      amount_minor: [{numeric: [">=", 100000]}]
    targets:
      - topic: txflow.notifications
        webhook: ops
        input: {account: $.account_id, amount: $.amount_minor, channel: $.attributes.channel}
      - topic: audit
  - name: web
    pattern: {attributes: {channel: [web]}}
    targets: [{topic: web-events}]
"#;

    #[test]
    fn matching_rules_send_to_each_target_transformed_or_not() {
        let rules = Rules::parse_yaml(RULES).unwrap();
        let event = json!({
            "event_type": "DEPOSIT", "account_id": "a1", "amount_minor": 250000,
            "attributes": {"channel": "web"}
        });
        let routed = rules.route(&event);
        let summary: Vec<(&str, &str, Option<&str>, Option<Payload>)> = routed
            .iter()
            .map(|d| {
                (
                    d.rule,
                    d.target.topic.as_str(),
                    d.target.webhook.as_deref(),
                    d.transformed.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "large-deposits",
                    "txflow.notifications",
                    Some("ops"),
                    Some(Payload::Json(
                        json!({"account": "a1", "amount": 250000, "channel": "web"})
                    ))
                ),
                ("large-deposits", "audit", None, None),
                ("web", "web-events", None, None),
            ]
        );
        assert!(rules.route(&json!({"event_type": "WITHDRAWAL"})).is_empty());
    }

    #[test]
    fn a_bad_rule_is_named_with_what_is_wrong() {
        let err = |text: &str| Rules::parse_yaml(text).err().unwrap().to_string();
        assert!(
            err("rules: [{name: a, pattern: {x: [{prefx: b}]}, targets: [{topic: t}]}]")
                .contains("rule 1 (\"a\"): pattern at x[0]: unknown operator")
        );
        assert!(err("rules: [{name: a, pattern: {x: [1]}, targets: []}]")
            .contains("at least one target"));
        assert!(
            err("rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t, webhook: ''}]}]")
                .contains("webhook names an endpoint")
        );
        assert!(err(
            "rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t}]}, {name: a, pattern: {x: [2]}, targets: [{topic: t}]}]"
        )
        .contains("rule 2 (\"a\"): another rule has this name"));
        assert!(err(
            "rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t, input: {f: account}}]}]"
        )
        .contains("not a path"));
        assert!(
            err("rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t}], extra: 1}]")
                .contains("unknown field `extra`")
        );
        assert!(err("rules: [{name: a").contains("not valid YAML"));
        assert!(err(
            "rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t, input: {f: $.x}, input_transformer: {input_template: x}}]}]"
        )
        .contains("not both"));
        assert!(err(
            "rules: [{name: a, pattern: {x: [1]}, targets: [{topic: t, input_transformer: {input_template: '{\"a\": <a>'}}]}]"
        )
        .contains("rule 1 (\"a\"): target t: input_template starts as JSON but is not JSON"));
    }

    #[test]
    fn an_input_transformer_shapes_what_its_target_receives() {
        let rules = Rules::parse_yaml(
            r#"
rules:
  - name: deposits
    pattern: {event_type: [DEPOSIT]}
    targets:
      - topic: text
        input_transformer:
          input_paths_map: {account: $.account_id, amount: $.amount_minor}
          input_template: "<account> received <amount> (<aws.events.rule-name>)"
      - topic: json
        input_transformer:
          input_paths_map: {account: $.account_id, channel: $.attributes.channel}
          input_template: '{"who": <account>, "line": "via <channel>"}'
"#,
        )
        .unwrap();
        let event = json!({"event_type": "DEPOSIT", "account_id": "a1", "amount_minor": 250, "attributes": {"channel": "web"}});
        let payloads: Vec<Option<Payload>> = rules
            .route(&event)
            .into_iter()
            .map(|d| d.transformed)
            .collect();
        assert_eq!(
            payloads,
            vec![
                Some(Payload::Text("a1 received 250 (deposits)".to_owned())),
                Some(Payload::Json(json!({"who": "a1", "line": "via web"}))),
            ]
        );
    }
}
