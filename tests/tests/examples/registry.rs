//! A Confluent-compatible schema registry (the local stack's Apicurio Registry): txflow's
//! client against it, and a Python producer that takes its schema ids from it — including a
//! newer version of TransactionEvent that txflow has never seen — feeding the ledger.

use std::time::Duration;

use serde_json::Value;
use txflow::adapters::registry::{RegistryAddress, SchemaRegistry};
use txflow::domain::RetryClass;
use txflow::ports::RegistryError;
use txflow_tests::process::Pipeline;
use txflow_tests::{
    eventually, kafka_bootstrap, produce_committed, read_topic, require_schema_registry,
    schema_registry, unique_name,
};

use crate::{event_ids, read_results, run};

const EVENT_SCHEMA: &str = include_str!("../../../schemas/transaction_event.avsc");

/// TransactionEvent with one field more, which has a default: a compatible newer version.
fn newer_event_schema() -> String {
    let mut schema: Value = serde_json::from_str(EVENT_SCHEMA).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "channel",
            "type": "string",
            "default": "api",
            "doc": "Where the event came from (a field txflow's own schema does not have)."
        }));
    schema.to_string()
}

fn client(url: &str) -> SchemaRegistry {
    let address = RegistryAddress {
        url: url.parse().unwrap(),
        credentials: None,
        ca_pem: None,
    };
    SchemaRegistry::new(address, Duration::from_secs(5)).unwrap()
}

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn the_registry_client_registers_looks_up_and_lists_versions() {
    require_schema_registry();
    let registry = client(&schema_registry());
    let subject = format!("{}-value", unique_name("subject"));
    let newer = newer_event_schema();

    let first = registry.register(&subject, EVENT_SCHEMA).await.unwrap();
    assert_eq!(
        registry.register(&subject, EVENT_SCHEMA).await.unwrap(),
        first,
        "registering the same schema again keeps its id"
    );
    let second = registry.register(&subject, &newer).await.unwrap();
    assert_ne!(first, second);

    assert_eq!(registry.versions(&subject).await.unwrap(), vec![1, 2]);
    let version = registry.version(&subject, 2).await.unwrap();
    assert_eq!((version.version, version.id), (2, second));
    assert_eq!(parsed(&version.schema), parsed(&newer));
    let found = registry.lookup(&subject, EVENT_SCHEMA).await.unwrap();
    assert_eq!((found.version, found.id), (1, first));
    assert_eq!(
        parsed(&registry.schema_by_id(second).await.unwrap()),
        parsed(&newer)
    );

    let missing = registry.schema_by_id(2_000_000_000).await.unwrap_err();
    assert!(matches!(missing, RegistryError::NotFound(_)), "{missing}");
    let missing = registry
        .versions("no-such-subject-value")
        .await
        .unwrap_err();
    assert!(matches!(missing, RegistryError::NotFound(_)), "{missing}");
    let refused = registry
        .register(&subject, "{\"type\": \"recor")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RegistryError::Refused { .. }) && !refused.is_transient(),
        "{refused}"
    );
    let down = client("http://127.0.0.1:1/apis/ccompat/v7")
        .versions(&subject)
        .await
        .unwrap_err();
    assert!(down.is_transient(), "{down}");
}

#[test]
fn a_python_producer_through_the_registry_feeds_the_ledger_even_with_a_newer_schema() {
    require_schema_registry();
    let registry = schema_registry();
    let pipeline = Pipeline::new(3);

    // No registry to register with: the ledger says so and stops, rather than guessing ids.
    let mut unreachable = pipeline.spawn_ledger_with(
        "unreachable",
        &[(
            "TXFLOW_SCHEMAS__REGISTRY_URL",
            "http://127.0.0.1:1/apis/ccompat/v7",
        )],
    );
    let log = unreachable.wait_for_failure(Duration::from_secs(60));
    assert!(
        log.contains("schemas.registry_url") && log.contains("unavailable"),
        "{log}"
    );

    let _ledger = pipeline.spawn_ledger_with("l1", &[("TXFLOW_SCHEMAS__REGISTRY_URL", &registry)]);
    let bootstrap = kafka_bootstrap();
    let produce = |count: &str, extra: &[&str]| {
        let mut args = vec![
            "--bootstrap",
            &bootstrap,
            "--topic",
            &pipeline.ledger_topic,
            "--count",
            count,
            "--accounts",
            "8",
            "--schema-registry",
            &registry,
        ];
        args.extend_from_slice(extra);
        run("produce_events.py", &args)
    };
    let mut sent = produce("100", &["--seed", "1"]);
    let newer = std::env::temp_dir().join(format!("{}.avsc", unique_name("event-v2")));
    std::fs::write(&newer, newer_event_schema()).unwrap();
    sent.extend(produce(
        "50",
        &["--seed", "2", "--schema", newer.to_str().unwrap()],
    ));
    // An id the registry never gave out: poison, dead-lettered with the reason.
    let mut unknown = vec![0u8, 0x7f, 0xff, 0xff, 0xf0];
    unknown.extend_from_slice(b"\x02");
    produce_committed(&pipeline.ledger_topic, &[(Some(b"acct-x"), &unknown)]);

    let results = read_results(&pipeline, 150, &["--schema-registry", &registry]);
    assert_eq!(event_ids(&sent).len(), 150);
    assert_eq!(
        event_ids(&sent),
        event_ids(&results),
        "one result per event, both schema versions"
    );
    assert!(results.iter().all(|r| r["status"] == "APPLIED"));

    let dead = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let letters = read_topic(&pipeline.dlq_topic, "read_committed");
            (!letters.is_empty()).then_some(letters)
        },
        || "the record with an unregistered schema id was not dead-lettered".to_owned(),
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("txflow.error.kind").as_deref(),
        Some("unknown_schema")
    );
    let message = dead[0].header("txflow.error.message").unwrap();
    assert!(message.contains("does not have it"), "{message}");

    // The ledger registered its results schema under <results topic>-value.
    let listed = pipeline.txflow_with(
        &["schemas", "list"],
        &[("TXFLOW_SCHEMAS__REGISTRY_URL", &registry)],
    );
    assert!(
        listed.contains(&format!("{}-value\t1\t", pipeline.results_topic)),
        "{listed}"
    );
}
