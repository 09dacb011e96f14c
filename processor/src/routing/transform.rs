//! EventBridge's input transformer: `input_paths_map` names values of the event by JSON path,
//! and `input_template` places them as `<name>`. A template that is JSON (it starts with `{`
//! or `[`) stays JSON: a placeholder inside a string takes the value's text, escaped for the
//! string (a string without its quotes); one outside a string takes the value as JSON (a
//! string with its quotes). Any other template is text, and a placeholder takes the value's
//! text. A path the event lacks gives `null` outside a string and nothing inside one or in
//! text. Predefined: `aws.events.rule-name`, `aws.events.event` (the event as JSON) and
//! `aws.events.event.json` (the event's JSON as a string).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Variables at most, as EventBridge allows.
const MAX_PATHS: usize = 100;
/// A template's length at most, as EventBridge allows.
const MAX_TEMPLATE: usize = 8192;

const RULE_NAME: &str = "aws.events.rule-name";
const EVENT: &str = "aws.events.event";
const EVENT_JSON: &str = "aws.events.event.json";

/// A transformer as a rules file gives it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputTransformer {
    #[serde(default)]
    pub input_paths_map: BTreeMap<String, String>,
    pub input_template: String,
}

/// What a transformed target receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Json(Value),
    Text(String),
}

/// One step of a path: a field or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
}

/// A checked transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct Transformer {
    paths: BTreeMap<String, Vec<Step>>,
    template: String,
    json: bool,
}

impl InputTransformer {
    /// Checks the paths and the template: a JSON template must stay JSON whatever the
    /// values are.
    pub fn check(&self) -> Result<Transformer, String> {
        if self.input_paths_map.len() > MAX_PATHS {
            return Err(format!(
                "input_paths_map holds at most {MAX_PATHS} variables"
            ));
        }
        if self.input_template.is_empty() || self.input_template.len() > MAX_TEMPLATE {
            return Err(format!("input_template holds 1 to {MAX_TEMPLATE} bytes"));
        }
        let mut paths = BTreeMap::new();
        for (name, path) in &self.input_paths_map {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "input_paths_map: {name:?} is not a variable name (letters, digits, _ and -)"
                ));
            }
            let steps = parse_path(path).ok_or_else(|| {
                format!("input_paths_map.{name}: {path:?} is not a path like $.attributes.channel or $.tags[0]")
            })?;
            paths.insert(name.clone(), steps);
        }
        for placeholder in placeholders(&self.input_template) {
            if let Some(other) = placeholder.strip_prefix("aws.") {
                if ![RULE_NAME, EVENT, EVENT_JSON].contains(&placeholder) {
                    return Err(format!(
                        "input_template: <aws.{other}> is not available in txflow: rules have no ARN and events no EventBridge ingestion time (aws.events.rule-name, aws.events.event and aws.events.event.json are)"
                    ));
                }
            }
        }
        let json = matches!(
            self.input_template.trim_start().chars().next(),
            Some('{' | '[')
        );
        let transformer = Transformer {
            paths,
            template: self.input_template.clone(),
            json,
        };
        if json {
            let rendered = transformer.render("", &Value::Null);
            serde_json::from_str::<Value>(&rendered).map_err(|e| {
                format!("input_template starts as JSON but is not JSON once its placeholders are filled ({e}): {rendered}")
            })?;
        }
        Ok(transformer)
    }
}

impl Transformer {
    /// What the target of rule `rule` receives for `event`.
    pub fn apply(&self, rule: &str, event: &Value) -> Payload {
        let rendered = self.render(rule, event);
        if self.json {
            match serde_json::from_str(&rendered) {
                Ok(value) => Payload::Json(value),
                // Checked at load: values go in as JSON or escaped, so the shape stays.
                Err(_) => Payload::Text(rendered),
            }
        } else {
            Payload::Text(rendered)
        }
    }

    fn value(&self, name: &str, rule: &str, event: &Value) -> Option<Value> {
        match name {
            RULE_NAME => Some(Value::String(rule.to_owned())),
            EVENT => Some(event.clone()),
            EVENT_JSON => Some(Value::String(event.to_string())),
            _ => {
                let steps = self.paths.get(name)?;
                steps
                    .iter()
                    .try_fold(event, |value, step| match step {
                        Step::Field(field) => value.get(field),
                        Step::Index(index) => value.get(index),
                    })
                    .cloned()
            }
        }
    }

    fn known(&self, name: &str) -> bool {
        self.paths.contains_key(name) || [RULE_NAME, EVENT, EVENT_JSON].contains(&name)
    }

    fn render(&self, rule: &str, event: &Value) -> String {
        let template = &self.template;
        let mut out = String::with_capacity(template.len());
        let mut in_string = false;
        let mut rest = template.as_str();
        while let Some(c) = rest.chars().next() {
            if c == '<' {
                if let Some(end) = rest.find('>') {
                    let name = &rest[1..end];
                    if self.known(name) {
                        let value = self.value(name, rule, event);
                        out.push_str(&self.insert(value, in_string));
                        rest = &rest[end + 1..];
                        continue;
                    }
                }
            }
            if self.json {
                if c == '\\' && in_string {
                    // An escape in the template's own string: copied with what it escapes.
                    let escaped: String = rest.chars().take(2).collect();
                    out.push_str(&escaped);
                    rest = &rest[escaped.len()..];
                    continue;
                }
                if c == '"' {
                    in_string = !in_string;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    fn insert(&self, value: Option<Value>, in_string: bool) -> String {
        let text = |value: &Value| match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match (self.json, in_string, value) {
            (true, false, Some(value)) => value.to_string(),
            (true, false, None) => "null".to_owned(),
            (true, true, Some(value)) => {
                let quoted = Value::String(text(&value)).to_string();
                quoted[1..quoted.len() - 1].to_owned()
            }
            (_, _, None) => String::new(),
            (false, _, Some(value)) => text(&value),
        }
    }
}

/// The names between `<` and `>` in a template.
fn placeholders(template: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        match rest.find('>') {
            Some(end) => {
                found.push(&rest[..end]);
                rest = &rest[end + 1..];
            }
            None => break,
        }
    }
    found
}

/// `$`, `$.a.b`, `$.a[0].b`: fields in dot notation and array indices.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let rest = path.strip_prefix('$')?;
    let mut steps = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            if field.is_empty() {
                return None;
            }
            steps.push(Step::Field(field.to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            steps.push(Step::Index(after[..end].parse().ok()?));
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(paths: &[(&str, &str)], template: &str) -> InputTransformer {
        InputTransformer {
            input_paths_map: paths
                .iter()
                .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
                .collect(),
            input_template: template.to_owned(),
        }
    }

    fn transformer(paths: &[(&str, &str)], template: &str) -> Transformer {
        spec(paths, template).check().unwrap()
    }

    fn ec2() -> Value {
        json!({"detail": {"instance": "i-0123456789", "state": "RUNNING", "tags": ["a", "b"], "count": 3}})
    }

    #[test]
    fn eventbridge_documentation_examples() {
        let paths = [
            ("instance", "$.detail.instance"),
            ("status", "$.detail.state"),
        ];
        assert_eq!(
            transformer(&paths, "<instance> is in state <status>").apply("r", &ec2()),
            Payload::Text("i-0123456789 is in state RUNNING".to_owned())
        );
        assert_eq!(
            transformer(&paths, "<instance> is in state \"<status>\"").apply("r", &ec2()),
            Payload::Text("i-0123456789 is in state \"RUNNING\"".to_owned())
        );
        assert_eq!(
            transformer(
                &paths,
                r#"{"myInstance": <instance>,"myStatus": "<instance> is in state \"<status>\""}"#
            )
            .apply("r", &ec2()),
            Payload::Json(json!({
                "myInstance": "i-0123456789",
                "myStatus": "i-0123456789 is in state \"RUNNING\""
            }))
        );
    }

    #[test]
    fn values_keep_their_json_outside_strings_and_are_escaped_inside() {
        let t = transformer(
            &[
                ("tags", "$.detail.tags"),
                ("first", "$.detail.tags[0]"),
                ("n", "$.detail.count"),
                ("none", "$.missing"),
            ],
            r#"{"tags": <tags>, "text": "<tags> and <n>", "first": <first>, "n": <n>, "gone": <none>, "empty": "<none>", "rule": "<aws.events.rule-name>"}"#,
        );
        assert_eq!(
            t.apply("big", &ec2()),
            Payload::Json(json!({
                "tags": ["a", "b"], "text": "[\"a\",\"b\"] and 3", "first": "a", "n": 3,
                "gone": null, "empty": "", "rule": "big"
            }))
        );
        let quoted = json!({"detail": {"instance": "say \"hi\"\n"}});
        let t = transformer(&[("i", "$.detail.instance")], r#"{"i": "<i>"}"#);
        assert_eq!(
            t.apply("r", &quoted),
            Payload::Json(json!({"i": "say \"hi\"\n"}))
        );
    }

    #[test]
    fn the_whole_event_and_unknown_brackets() {
        let t = transformer(
            &[],
            r#"{"event": <aws.events.event>, "raw": "<aws.events.event.json>"}"#,
        );
        let event = json!({"a": 1});
        assert_eq!(
            t.apply("r", &event),
            Payload::Json(json!({"event": {"a": 1}, "raw": "{\"a\":1}"}))
        );
        let t = transformer(&[("a", "$.a")], "<b>bold</b> <a>");
        assert_eq!(
            t.apply("r", &event),
            Payload::Text("<b>bold</b> 1".to_owned())
        );
    }

    #[test]
    fn what_cannot_work_is_refused_at_load() {
        let refused =
            |paths: &[(&str, &str)], template: &str| spec(paths, template).check().unwrap_err();
        assert!(refused(&[("a", "detail.x")], "<a>").contains("not a path"));
        assert!(refused(&[("a b", "$.x")], "<a b>").contains("not a variable name"));
        assert!(refused(&[], "<aws.events.rule-arn>").contains("rules have no ARN"));
        assert!(refused(&[("a", "$.a")], r#"{"a": <a>"#).contains("not JSON"));
        assert!(refused(&[], "").contains("1 to 8192"));
    }
}
