use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn matches(pattern: Value, event: Value) -> bool {
    let text = pattern.to_string();
    let pattern = Pattern::parse(&pattern).expect("a valid pattern");
    let reference = pattern.matches(&event);
    for index_limit in [0, usize::MAX] {
        let compiled =
            CompiledPatterns::compile_with(std::slice::from_ref(&pattern), index_limit).unwrap();
        assert_eq!(
            compiled.matches(&event) == vec![0],
            reference,
            "the compiled matcher (index limit {index_limit}) and the reference disagree on {event} with {text}"
        );
    }
    reference
}

fn refused(pattern: Value) -> String {
    Pattern::parse(&pattern).unwrap_err().to_string()
}

#[test]
fn exact_values_of_every_kind() {
    let event = json!({"source": "aws.ec2", "count": 5, "ok": true, "gone": null});
    assert!(matches(json!({"source": ["aws.ec2"]}), event.clone()));
    assert!(matches(
        json!({"source": ["aws.s3", "aws.ec2"]}),
        event.clone()
    ));
    assert!(!matches(json!({"source": ["aws.s3"]}), event.clone()));
    assert!(matches(json!({"count": [5]}), event.clone()));
    assert!(
        !matches(json!({"count": ["5"]}), event.clone()),
        "a string is not a number"
    );
    assert!(matches(json!({"ok": [true]}), event.clone()));
    assert!(matches(json!({"gone": [null]}), event.clone()));
    assert!(
        !matches(json!({"missing": [null]}), event.clone()),
        "null is not absent"
    );
    assert!(!matches(
        json!({"source": ["aws.ec2"], "count": [6]}),
        event
    ));
}

#[test]
fn string_operators() {
    let event = json!({"source": "aws.ec2", "file": "report.PDF", "name": "Alice"});
    assert!(matches(
        json!({"source": [{"prefix": "aws."}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"source": [{"prefix": "gcp."}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"file": [{"suffix": ".PDF"}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"file": [{"suffix": ".pdf"}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"name": [{"equals-ignore-case": "alice"}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"file": [{"wildcard": "rep*.P*F"}]}),
        event.clone()
    ));
    assert!(!matches(json!({"file": [{"wildcard": "rep*.txt"}]}), event));
}

#[test]
fn anything_but_in_all_its_forms() {
    let event = json!({"state": "running", "code": 200, "bucket": "logs-prod"});
    assert!(matches(
        json!({"state": [{"anything-but": "stopped"}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"state": [{"anything-but": ["running", "stopped"]}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"code": [{"anything-but": [404, 500]}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"code": [{"anything-but": 200}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"bucket": [{"anything-but": {"prefix": "tmp-"}}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"bucket": [{"anything-but": {"suffix": "-prod"}}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"state": [{"anything-but": {"equals-ignore-case": ["RUNNING"]}}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"bucket": [{"anything-but": {"wildcard": "*-dev"}}]}),
        event.clone()
    ));
    assert!(
        !matches(json!({"absent": [{"anything-but": "x"}]}), event),
        "needs the field"
    );
}

#[test]
fn indexed_numeric_ranges_agree_with_the_reference_at_and_between_their_bounds() {
    let patterns: Vec<Pattern> = [
        json!({"amount": [{"numeric": [">", 10, "<=", 20]}]}),
        json!({"amount": [{"numeric": [">=", 20, "<", 30]}]}),
        json!({"amount": [{"numeric": ["=", 25]}]}),
        json!({"amount": [{"numeric": ["<", -5]}]}),
        json!({"amount": [{"numeric": [">=", 1e9]}]}),
        json!({"amount": [40, 50.5]}),
        json!({"amount": [{"numeric": [">", 40, "<", 40.5]}, {"numeric": ["<=", -100]}]}),
        json!({"amount": [{"numeric": [">", 0]}], "currency": ["EUR"]}),
        json!({"nested": {"n": [{"numeric": [">=", 0, "<", 1]}]}}),
    ]
    .iter()
    .map(|p| Pattern::parse(p).unwrap())
    .collect();
    let indexed = CompiledPatterns::compile_with(&patterns, usize::MAX).unwrap();
    assert_eq!(
        indexed.in_automatons(),
        0,
        "every pattern here is indexed, none left to an automaton"
    );
    for amount in [
        -1000.0, -100.0, -99.5, -5.0, -4.9, 0.0, 0.5, 10.0, 10.1, 20.0, 20.5, 25.0, 29.9, 30.0,
        40.0, 40.2, 40.5, 50.5, 1e9, 2e9,
    ] {
        for event in [
            json!({"amount": amount, "currency": "EUR"}),
            json!({"amount": [amount, 3], "currency": "USD"}),
            json!({"amount": amount.to_string()}),
            json!({"nested": {"n": amount}}),
        ] {
            let reference: Vec<usize> = (0..patterns.len())
                .filter(|i| patterns[*i].matches(&event))
                .collect();
            assert_eq!(indexed.matches(&event), reference, "{event}");
        }
    }
}

#[test]
fn wildcards_are_indexed_by_their_text_and_still_checked_whole() {
    for (wildcard, yes, no) in [
        ("svc-1*", "svc-17", "svc-2"),
        ("*-prod", "api-prod", "api-dev"),
        ("a*b*c", "a-x-b-y-c", "a-x-c"),
        ("exact", "exact", "exactly"),
        ("*", "anything", ""),
    ] {
        let pattern = json!({"source": [{"wildcard": wildcard}]});
        assert!(
            matches(pattern.clone(), json!({"source": yes})),
            "{wildcard} {yes}"
        );
        if wildcard != "*" {
            assert!(!matches(pattern, json!({"source": no})), "{wildcard} {no}");
        }
    }
}

#[test]
fn numeric_ranges_exists_and_cidr() {
    let event = json!({"price": 12.5, "ip": "10.0.1.7", "v6": "2001:db8::1", "label": "x"});
    assert!(matches(
        json!({"price": [{"numeric": [">", 10, "<=", 12.5]}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"price": [{"numeric": ["<", 10]}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"price": [{"numeric": ["=", 12.5]}]}),
        event.clone()
    ));
    assert!(
        !matches(json!({"label": [{"numeric": [">", 0]}]}), event.clone()),
        "a string"
    );
    assert!(matches(json!({"label": [{"exists": true}]}), event.clone()));
    assert!(matches(
        json!({"other": [{"exists": false}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"label": [{"exists": false}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"ip": [{"cidr": "10.0.0.0/16"}]}),
        event.clone()
    ));
    assert!(!matches(
        json!({"ip": [{"cidr": "10.1.0.0/16"}]}),
        event.clone()
    ));
    assert!(matches(json!({"v6": [{"cidr": "2001:db8::/32"}]}), event));
}

#[test]
fn arrays_nesting_and_or() {
    let event = json!({
        "tags": ["urgent", "backend"],
        "detail": {"status": "error", "code": 500},
        "attributes": {"channel": "web"}
    });
    assert!(
        matches(json!({"tags": ["urgent"]}), event.clone()),
        "any element"
    );
    assert!(!matches(json!({"tags": ["frontend"]}), event.clone()));
    assert!(matches(
        json!({"detail": {"status": ["error"], "code": [500]}}),
        event.clone()
    ));
    assert!(!matches(
        json!({"detail": {"status": ["ok"]}}),
        event.clone()
    ));
    assert!(matches(
        json!({"$or": [{"detail": {"code": [404]}}, {"attributes": {"channel": ["web"]}}]}),
        event.clone()
    ));
    assert!(matches(
        json!({"detail": {"$or": [{"status": ["ok"]}, {"code": [{"numeric": [">=", 500]}]}]}}),
        event.clone()
    ));
    assert!(!matches(
        json!({"tags": ["urgent"], "$or": [{"detail": {"code": [404]}}, {"attributes": {"channel": ["app"]}}]}),
        event.clone()
    ));
    // Nested $or: (a or (b and (c or d))).
    assert!(matches(
        json!({"$or": [
            {"tags": ["none"]},
            {"detail": {"status": ["error"]}, "$or": [{"tags": ["x"]}, {"tags": ["backend"]}]}
        ]}),
        event
    ));
}

#[test]
fn malformed_patterns_point_at_the_offending_part() {
    assert!(refused(json!({"detail": {"status": "error"}})).contains("at detail.status"));
    assert!(refused(json!({"source": [{"prefx": "a"}]})).contains("unknown operator \"prefx\""));
    assert!(refused(json!({"source": [{"prefx": "a"}]})).contains("at source[0]"));
    assert!(refused(json!({"n": [{"numeric": ["<", "ten"]}]})).contains("not a number"));
    assert!(refused(json!({"n": [{"numeric": ["<", 1, ">", 0]}]})).contains("lower bound"));
    assert!(refused(json!({"ip": [{"cidr": "10.0.0.0/40"}]})).contains("not an IP network"));
    assert!(refused(json!({"a": [{"anything-but": ["x", 1]}]})).contains("strings only"));
    assert!(refused(json!({"$or": [{"a": ["x"]}]})).contains("at $or"));
    assert!(refused(json!({"a": []})).contains("empty array"));
    assert!(refused(json!({})).contains("at least one field"));
    assert!(refused(json!({"a": [{"exists": "yes"}]})).contains("true or false"));
    assert!(Pattern::parse_json("{not json")
        .unwrap_err()
        .to_string()
        .contains("not JSON"));
}

#[test]
fn a_rule_set_reports_each_matching_rule_once() {
    let patterns: Vec<Pattern> = [
        json!({"event_type": ["DEPOSIT"]}),
        json!({"$or": [{"event_type": ["DEPOSIT"]}, {"amount_minor": [{"numeric": [">", 100]}]}]}),
        json!({"currency": [{"anything-but": {"prefix": "US"}}]}),
        json!({"event_type": ["WITHDRAWAL"]}),
    ]
    .iter()
    .map(|p| Pattern::parse(p).unwrap())
    .collect();
    let compiled = CompiledPatterns::compile(&patterns).unwrap();
    let event = json!({"event_type": "DEPOSIT", "amount_minor": 500, "currency": "EUR"});
    assert_eq!(compiled.matches(&event), vec![0, 1, 2]);
    let event = json!({"event_type": "WITHDRAWAL", "amount_minor": 5, "currency": "USD"});
    assert_eq!(compiled.matches(&event), vec![3]);
}

// Random patterns over a small vocabulary of fields and values, so that they often match.

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("DEPOSIT"),
        Just("deposit"),
        Just("WITHDRAWAL"),
        Just("web"),
        Just("web-app"),
        Just("api.v1"),
        Just("EUR"),
        Just("USD"),
        Just("10.0.0.5"),
        Just("192.168.1.9"),
        Just(""),
        Just("Web-App"),
        Just("a*b"),
        Just("c:\\tmp\\*"),
        Just("2001:db8::1"),
        Just("::ffff:10.0.0.5"),
    ]
    .prop_map(str::to_owned)
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(5.0),
        Just(12.5),
        Just(100.0),
        Just(1500.0),
        Just(-3.0)
    ]
}

fn leaf_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => word().prop_map(Value::from),
        3 => number().prop_map(|n| json!(n)),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        2 => prop::collection::vec(word().prop_map(Value::from), 0..3).prop_map(Value::Array),
    ]
}

fn event() -> impl Strategy<Value = Value> {
    let fields = ["event_type", "amount_minor", "currency", "source"];
    (
        prop::collection::vec(prop::option::of(leaf_value()), 4),
        prop::option::of(prop::collection::vec(prop::option::of(leaf_value()), 2)),
    )
        .prop_map(move |(values, attributes)| {
            let mut object = serde_json::Map::new();
            for (name, value) in fields.iter().zip(values) {
                if let Some(value) = value {
                    object.insert((*name).to_owned(), value);
                }
            }
            if let Some(attributes) = attributes {
                let mut nested = serde_json::Map::new();
                for (name, value) in ["channel", "ip"].iter().zip(attributes) {
                    if let Some(value) = value {
                        nested.insert((*name).to_owned(), value);
                    }
                }
                object.insert("attributes".to_owned(), Value::Object(nested));
            }
            Value::Object(object)
        })
}

fn condition() -> impl Strategy<Value = Value> {
    let compare = prop_oneof![Just("<"), Just("<="), Just("="), Just(">="), Just(">")];
    prop_oneof![
        word().prop_map(Value::from),
        number().prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        word().prop_map(|w| json!({"prefix": w.chars().take(3).collect::<String>()})),
        word().prop_map(|w| json!({"suffix": w.chars().rev().take(2).collect::<String>()})),
        word().prop_map(|w| json!({"equals-ignore-case": w.to_uppercase()})),
        word().prop_map(
            |w| json!({"prefix": {"equals-ignore-case": w.to_uppercase().chars().take(3).collect::<String>()}})
        ),
        word().prop_map(
            |w| json!({"suffix": {"equals-ignore-case": w.to_lowercase().chars().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<String>()}})
        ),
        // A word's own stars and backslashes escaped, then a star after its first character.
        word().prop_map(|w| {
            let escaped: Vec<String> = w
                .chars()
                .map(|c| match c {
                    '*' | '\\' => format!("\\{c}"),
                    c => c.to_string(),
                })
                .collect();
            let (head, tail) = escaped.split_at(escaped.len().min(1));
            json!({"wildcard": format!("{}*{}", head.concat(), tail.concat())})
        }),
        word().prop_map(|w| {
            let escaped: String = w.replace('\\', "\\\\").replace('*', "\\*");
            json!({"wildcard": escaped})
        }),
        word().prop_map(
            |w| json!({"wildcard": format!("{}*", w.chars().take(2).collect::<String>())})
        ),
        word().prop_map(
            |w| json!({"wildcard": format!("*{}", w.chars().rev().take(1).collect::<String>())})
        ),
        word().prop_map(|w| {
            let (head, tail) = w.split_at(w.len().min(1));
            json!({"wildcard": format!("{head}*{tail}")})
        }),
        Just(json!({"wildcard": "*"})),
        any::<bool>().prop_map(|b| json!({"exists": b})),
        prop::collection::vec(word(), 1..3).prop_map(|ws| json!({"anything-but": ws})),
        prop::collection::vec(number(), 1..3).prop_map(|ns| json!({"anything-but": ns})),
        word().prop_map(
            |w| json!({"anything-but": {"prefix": w.chars().take(2).collect::<String>()}})
        ),
        (compare, number()).prop_map(|(op, n)| json!({"numeric": [op, n]})),
        (number(), number())
            .prop_map(|(a, b)| json!({"numeric": [">=", a.min(b), "<", a.max(b) + 1.0]})),
        prop_oneof![
            Just("10.0.0.0/8"),
            Just("10.0.0.5/32"),
            Just("192.168.0.0/16"),
            Just("0.0.0.0/0"),
            Just("2001:db8::/32"),
            Just("::ffff:10.0.0.0/104"),
            Just("::/0"),
        ]
        .prop_map(|network| json!({"cidr": network})),
    ]
}

fn flat_pattern() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("event_type"),
        Just("amount_minor"),
        Just("currency"),
        Just("source"),
        Just("attributes.channel"),
        Just("attributes.ip"),
    ];
    prop::collection::btree_map(field, prop::collection::vec(condition(), 1..3), 1..3).prop_map(
        |fields| {
            let mut object = serde_json::Map::new();
            for (path, conditions) in fields {
                match path.split_once('.') {
                    Some((outer, inner)) => {
                        let nested = object.entry(outer.to_owned()).or_insert_with(|| json!({}));
                        nested[inner] = Value::Array(conditions);
                    }
                    None => {
                        object.insert(path.to_owned(), Value::Array(conditions));
                    }
                }
            }
            Value::Object(object)
        },
    )
}

fn pattern() -> impl Strategy<Value = Value> {
    (
        flat_pattern(),
        prop::option::of(prop::collection::vec(flat_pattern(), 2..4)),
    )
        .prop_map(|(mut base, or)| {
            if let Some(alternatives) = or {
                base["$or"] = Value::Array(alternatives);
            }
            base
        })
}

/// The patterns `event` matches by the reference reading, ascending.
fn reference(patterns: &[Pattern], event: &Value) -> Vec<usize> {
    (0..patterns.len())
        .filter(|i| patterns[*i].matches(event))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The compiled rule set agrees with the reference reading of each pattern.
    #[test]
    fn compiled_rule_sets_agree_with_the_reference(
        patterns in prop::collection::vec(pattern(), 1..6),
        events in prop::collection::vec(event(), 1..8),
    ) {
        let parsed: Vec<Pattern> = patterns.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        prop_assume!(!parsed.is_empty());
        // Through the automatons alone, and with every anchorable alternative indexed.
        for index_limit in [0, usize::MAX] {
            let compiled = CompiledPatterns::compile_with(&parsed, index_limit).unwrap();
            for event in &events {
                prop_assert_eq!(compiled.matches(event), reference(&parsed, event), "event {} patterns {:?} index limit {}", event, patterns, index_limit);
            }
        }
    }
}

/// Each example of EventBridge's comparison-operator documentation, with events it matches
/// and events it does not.
#[test]
fn eventbridge_documentation_examples() {
    let examples = [
        (
            json!({"state": [{"anything-but": "initializing"}]}),
            json!({"state": "running"}),
            json!({"state": "initializing"}),
        ),
        (
            json!({"Region": [{"anything-but": {"prefix": "us-"}}]}),
            json!({"Region": "eu-west-1"}),
            json!({"Region": "us-east-1"}),
        ),
        (
            json!({"FileName": [{"anything-but": {"suffix": ".png"}}]}),
            json!({"FileName": "a.jpg"}),
            json!({"FileName": "a.png"}),
        ),
        (
            json!({"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]}),
            json!({"state": "running"}),
            json!({"state": "INITIALIZING"}),
        ),
        (
            json!({"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}),
            json!({"FilePath": "/usr/bin/ls"}),
            json!({"FilePath": "/usr/lib/libc.so"}),
        ),
        (
            json!({"Region": [{"prefix": "us-"}]}),
            json!({"Region": "us-east-1"}),
            json!({"Region": "eu-west-1"}),
        ),
        (
            json!({"service": [{"prefix": {"equals-ignore-case": "eventb"}}]}),
            json!({"service": "EventBridge"}),
            json!({"service": "Lambda"}),
        ),
        (
            json!({"service": [{"prefix": {"equals-ignore-case": "eventb"}}]}),
            json!({"service": "EVENTBRIDGE"}),
            json!({"service": "event"}),
        ),
        (
            json!({"LastName": [""]}),
            json!({"LastName": ""}),
            json!({"LastName": "Doe"}),
        ),
        (
            json!({"Name": ["Alice"]}),
            json!({"Name": "Alice"}),
            json!({"Name": "alice"}),
        ),
        (
            json!({"Name": [{"equals-ignore-case": "alice"}]}),
            json!({"Name": "ALICE"}),
            json!({"Name": "Alicia"}),
        ),
        (
            json!({"FileName": [{"suffix": ".png"}]}),
            json!({"FileName": "photo.png"}),
            json!({"FileName": "photo.PNG"}),
        ),
        (
            json!({"service": [{"suffix": {"equals-ignore-case": "tbridge"}}]}),
            json!({"service": "EventBridge"}),
            json!({"service": "EventBus"}),
        ),
        (
            json!({"service": [{"suffix": {"equals-ignore-case": "tbridge"}}]}),
            json!({"service": "TBRIDGE"}),
            json!({"service": "bridge"}),
        ),
        (
            json!({"ProductName": [{"exists": true}]}),
            json!({"ProductName": "Widget"}),
            json!({"Other": 1}),
        ),
        (
            json!({"ProductName": [{"exists": false}]}),
            json!({"Other": 1}),
            json!({"ProductName": "Widget"}),
        ),
        (
            json!({"Weather": [{"anything-but": ["Raining"]}]}),
            json!({"Weather": "Sunny"}),
            json!({"Weather": "Raining"}),
        ),
        (
            json!({"UserID": [null]}),
            json!({"UserID": null}),
            json!({"UserID": "u-1"}),
        ),
        (
            json!({"Price": [{"numeric": ["=", 100]}]}),
            json!({"Price": 100}),
            json!({"Price": 100.5}),
        ),
        (
            json!({"Price": [{"numeric": [">", 10, "<=", 20]}]}),
            json!({"Price": 20}),
            json!({"Price": 10}),
        ),
        (
            json!({"PaymentType": ["Credit", "Debit"]}),
            json!({"PaymentType": "Debit"}),
            json!({"PaymentType": "Cash"}),
        ),
        (
            json!({"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}),
            json!({"Location": "Paris", "Day": "Monday"}),
            json!({"Location": "Paris", "Day": "Sunday"}),
        ),
        (
            json!({"FileName": [{"wildcard": "dir/*.png"}]}),
            json!({"FileName": "dir/a.png"}),
            json!({"FileName": "other/a.png"}),
        ),
        (
            json!({"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}),
            json!({"sourceIPAddress": "10.0.0.255"}),
            json!({"sourceIPAddress": "10.0.1.0"}),
        ),
        (
            json!({"ip": [{"cidr": "2001:db8::/32"}]}),
            json!({"ip": "2001:db8::1"}),
            json!({"ip": "2001:db9::1"}),
        ),
        // Escapes: a star, a backslash, a star then a wildcard.
        (
            json!({"f": [{"wildcard": "a\\*b"}]}),
            json!({"f": "a*b"}),
            json!({"f": "axb"}),
        ),
        (
            json!({"f": [{"wildcard": "c:\\\\*"}]}),
            json!({"f": "c:\\tmp"}),
            json!({"f": "c:/tmp"}),
        ),
        (
            json!({"f": [{"wildcard": "x\\**"}]}),
            json!({"f": "x*yz"}),
            json!({"f": "xyz"}),
        ),
        (
            json!({"f": [{"anything-but": {"wildcard": "*\\**"}}]}),
            json!({"f": "plain"}),
            json!({"f": "with*star"}),
        ),
    ];
    for (pattern, yes, no) in examples {
        assert!(
            matches(pattern.clone(), yes.clone()),
            "{pattern} should match {yes}"
        );
        assert!(
            !matches(pattern.clone(), no.clone()),
            "{pattern} should not match {no}"
        );
    }
}

#[test]
fn wildcards_refuse_what_eventbridge_refuses() {
    for (wildcard, says) in [
        ("a**b", "two * in a row"),
        ("a\\b*", "a backslash escapes only * and \\"),
        ("tail\\", "lone backslash"),
    ] {
        let message = refused(json!({"f": [{"wildcard": wildcard}]}));
        assert!(message.contains(says), "{wildcard}: {message}");
    }
    let message = refused(json!({"f": [{"prefix": {"equals-ignore-case": 5}}]}));
    assert!(message.contains("equals-ignore-case"), "{message}");
}

#[test]
fn a_thousand_rules_on_one_field_match_without_failing() {
    // One automaton with this many branches out of one state panics in quamina 0.7.0.
    let patterns: Vec<Pattern> = (0..1000)
        .map(|i| {
            Pattern::parse(&json!({"event_type": ["DEPOSIT"], "source": [format!("svc-{i}")]}))
                .unwrap()
        })
        .collect();
    for index_limit in [0, usize::MAX] {
        let compiled = CompiledPatterns::compile_with(&patterns, index_limit).unwrap();
        assert_eq!(
            compiled.matches(&json!({"event_type": "DEPOSIT", "source": "svc-517"})),
            vec![517]
        );
        assert!(compiled
            .matches(&json!({"event_type": "WITHDRAWAL", "source": "svc-517"}))
            .is_empty());
    }
}

#[test]
fn networks_are_indexed_as_address_ranges() {
    let patterns: Vec<Pattern> = (0..1000)
        .map(|i| {
            let network = if i % 2 == 0 {
                format!("10.{}.{}.0/24", i / 256, i % 256)
            } else {
                format!("2001:db8:{i:x}::/48")
            };
            Pattern::parse(&json!({"ip": [{"cidr": network}]})).unwrap()
        })
        .collect();
    let compiled = CompiledPatterns::compile(&patterns).unwrap();
    assert_eq!(compiled.in_automatons(), 0, "every network is in the index");
    assert_eq!(compiled.matches(&json!({"ip": "10.1.44.9"})), vec![300]);
    assert_eq!(
        compiled.matches(&json!({"ip": "2001:db8:12d::7"})),
        vec![301]
    );
    assert!(compiled.matches(&json!({"ip": "10.3.233.1"})).is_empty());
    assert!(
        compiled
            .matches(&json!({"ip": "::ffff:10.1.44.9"}))
            .is_empty(),
        "the families are apart: an IPv6 address is in no IPv4 network"
    );
    assert!(compiled
        .matches(&json!({"ip": "not an address"}))
        .is_empty());
}

#[test]
fn networks_past_an_automatons_size_budget_still_match() {
    // 600 /24 networks are about 60 MB of quamina automaton, past its 10 MB budget per
    // automaton: they are spread over more automatons instead of refusing the rule set.
    let patterns: Vec<Pattern> = (0..600)
        .map(|i| {
            Pattern::parse(&json!({"ip": [{"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}]}))
                .unwrap()
        })
        .collect();
    let compiled = CompiledPatterns::compile(&patterns).unwrap();
    assert_eq!(compiled.matches(&json!({"ip": "10.1.44.9"})), vec![300]);
    assert_eq!(compiled.matches(&json!({"ip": "10.2.87.200"})), vec![599]);
    assert!(compiled.matches(&json!({"ip": "10.3.0.1"})).is_empty());
}

#[test]
fn exclusions_beside_exists_are_decided_without_an_automaton() {
    // The shape nothing can index: 1,000 rules each excluding a prefix of its own, beside a
    // field that must exist and an excluded list they share.
    let patterns: Vec<Pattern> = (0..1000)
        .map(|i| {
            Pattern::parse(&json!({
                "source": [{"anything-but": {"prefix": format!("svc-{i}")}}],
                "attributes": {"campaign": [{"exists": true}]},
                "currency": [{"anything-but": ["EUR", "GBP"]}]
            }))
            .unwrap()
        })
        .collect();
    let compiled = CompiledPatterns::compile(&patterns).unwrap();
    assert_eq!(compiled.in_automatons(), 0);
    let event =
        json!({"source": "svc-42", "currency": "USD", "attributes": {"campaign": "spring"}});
    let excluded = [4, 42];
    let expected: Vec<usize> = (0..1000).filter(|i| !excluded.contains(i)).collect();
    assert_eq!(compiled.matches(&event), expected);
    let in_euros = json!({"source": "svc-42", "currency": "EUR", "attributes": {"campaign": "x"}});
    assert!(compiled.matches(&in_euros).is_empty());
    let no_campaign = json!({"source": "svc-42", "currency": "USD", "attributes": {}});
    assert!(compiled.matches(&no_campaign).is_empty());
    // A campaign under an array of objects, and a source of two values, are rechecked.
    let in_an_array =
        json!({"source": "svc-42", "currency": "USD", "attributes": [{"campaign": "x"}, 7]});
    assert_eq!(compiled.matches(&in_an_array), expected);
    let two_sources =
        json!({"source": ["svc-42", "svc-9"], "currency": "USD", "attributes": {"campaign": 1}});
    let expected_of_two: Vec<usize> = (0..1000).collect();
    assert_eq!(compiled.matches(&two_sources), expected_of_two);
    let numeric_source = json!({"source": 42, "currency": "USD", "attributes": {"campaign": 1}});
    assert!(
        compiled.matches(&numeric_source).is_empty(),
        "a number has no prefix to be other than"
    );
}

#[test]
fn a_pattern_of_empty_objects_matches_every_event() {
    let patterns: Vec<Pattern> = [
        json!({"attributes": {}}),
        json!({"$or": [{"attributes": {"meta": {}}}, {"source": [{"exists": false}]}]}),
    ]
    .iter()
    .map(|p| Pattern::parse(p).unwrap())
    .collect();
    let alone = CompiledPatterns::compile(&patterns[..1]).unwrap();
    let together = CompiledPatterns::compile(&patterns).unwrap();
    for event in [
        json!({}),
        json!({"attributes": 5}),
        json!({"source": "svc-1", "attributes": [{"meta": 1}]}),
    ] {
        assert_eq!(alone.matches(&event), vec![0], "{event}");
        assert_eq!(together.matches(&event), vec![0, 1], "{event}");
    }
}

/// Words for the fields `exists` and `anything-but` read, few so that they meet: cases apart,
/// characters of several bytes, lower cases longer or shorter than the word.
fn hostile_word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("web"),
        Just("WEB"),
        Just("web-app"),
        Just("Web-App"),
        Just("EUR"),
        Just(""),
        Just("é-app"),
        Just("É-APP"),
        Just("İstanbul"),
        Just("i̇stanbul"),
        Just("STRASSE"),
        Just("straße"),
        Just("🦀"),
        Just("web\u{0}"),
    ]
    .prop_map(str::to_owned)
}

fn excluding_condition() -> impl Strategy<Value = Value> {
    let head = |w: String, n: usize| w.chars().take(n).collect::<String>();
    let tail = |w: String, n: usize| {
        let chars: Vec<char> = w.chars().collect();
        chars[chars.len().saturating_sub(n)..]
            .iter()
            .collect::<String>()
    };
    prop_oneof![
        any::<bool>().prop_map(|b| json!({"exists": b})),
        hostile_word().prop_map(|w| json!({"anything-but": w})),
        prop::collection::vec(hostile_word(), 1..3).prop_map(|ws| json!({"anything-but": ws})),
        number().prop_map(|n| json!({"anything-but": n})),
        prop::collection::vec(number(), 1..3).prop_map(|ns| json!({"anything-but": ns})),
        (
            hostile_word(),
            prop_oneof![1 => Just(0_usize), 4 => 1..3_usize]
        )
            .prop_map(move |(w, n)| json!({"anything-but": {"prefix": head(w, n)}})),
        (
            hostile_word(),
            prop_oneof![1 => Just(0_usize), 4 => 1..3_usize]
        )
            .prop_map(move |(w, n)| json!({"anything-but": {"suffix": tail(w, n)}})),
        prop::collection::vec(hostile_word(), 1..3).prop_map(|ws| {
            let upper: Vec<String> = ws.iter().map(|w| w.to_uppercase()).collect();
            json!({"anything-but": {"equals-ignore-case": upper}})
        }),
    ]
}

/// Patterns of `exists` and `anything-but` only, on plain and nested fields, now and then
/// two conditions on a field (which the exclusions do not take) or an `$or`.
fn excluding_pattern() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("currency"),
        Just("source"),
        Just("attributes.channel"),
        Just("attributes.campaign"),
        Just("attributes.meta.tag"),
    ];
    let flat = prop::collection::btree_map(
        field,
        prop::collection::vec(excluding_condition(), 1..=2),
        1..4,
    )
    .prop_map(|fields| {
        let mut object = json!({});
        for (path, conditions) in fields {
            let mut at = &mut object;
            let mut names = path.split('.').peekable();
            while let Some(name) = names.next() {
                if names.peek().is_some() {
                    if !at[name].is_object() {
                        at[name] = json!({});
                    }
                    at = &mut at[name];
                } else {
                    at[name] = Value::Array(conditions.clone());
                }
            }
        }
        object
    })
    .boxed();
    (
        flat.clone(),
        prop::option::weighted(0.2, prop::collection::vec(flat, 2..3)),
    )
        .prop_map(|(mut base, or)| {
            if let Some(alternatives) = or {
                base["$or"] = Value::Array(alternatives);
            }
            base
        })
}

/// A value for a field the exclusions read: hostile words, numbers such as -0 and one past
/// what a float holds exactly, null, objects, and arrays of these, nested.
fn excluded_field_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        6 => hostile_word().prop_map(Value::from),
        2 => number().prop_map(|n| json!(n)),
        1 => Just(json!(-0.0)),
        1 => Just(json!(u64::MAX)),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(json!({"tag": "web"})),
    ]
    .boxed();
    let array = prop::collection::vec(scalar.clone(), 0..3).prop_map(Value::Array);
    let nested = prop::collection::vec(array.clone(), 1..3).prop_map(Value::Array);
    prop_oneof![6 => scalar, 2 => array, 1 => nested]
}

/// An event whose `attributes` is an object, an array of objects (whose fields must hold in
/// one element), an array of scalars, or a scalar.
fn excluded_event() -> impl Strategy<Value = Value> {
    let attributes = prop::collection::btree_map(
        prop_oneof![Just("channel"), Just("campaign"), Just("meta")],
        excluded_field_value(),
        0..3,
    )
    .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    .boxed();
    let shapes = prop_oneof![
        4 => attributes.clone(),
        2 => prop::collection::vec(attributes, 1..3).prop_map(Value::Array),
        1 => excluded_field_value(),
    ];
    (
        prop::option::of(excluded_field_value()),
        prop::option::of(excluded_field_value()),
        prop::option::of(shapes),
    )
        .prop_map(|(currency, source, attributes)| {
            let mut event = json!({});
            for (name, value) in [
                ("currency", currency),
                ("source", source),
                ("attributes", attributes),
            ] {
                if let Some(value) = value {
                    event[name] = value;
                }
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// What the exclusions decide without a recheck agrees with the reference reading.
    #[test]
    fn exclusions_agree_with_the_reference(
        patterns in prop::collection::vec(excluding_pattern(), 1..8),
        events in prop::collection::vec(excluded_event(), 1..12),
    ) {
        let parsed: Vec<Pattern> = patterns.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        prop_assume!(!parsed.is_empty());
        let compiled = CompiledPatterns::compile(&parsed).unwrap();
        for event in &events {
            prop_assert_eq!(compiled.matches(event), reference(&parsed, event), "event {} patterns {:?}", event, patterns);
        }
    }
}
