use std::collections::BTreeMap;

use apache_avro::types::Value;

use super::*;
use crate::domain::{
    Cause, Entry, EventType, RetryClass, Status, TransactionEvent, TransactionResult,
};

fn event() -> TransactionEvent {
    TransactionEvent {
        event_id: "0b4c6f7e-1d2a-4c1b-9a57-3f1f0c0d2e11".to_owned(),
        event_type: EventType::Transfer,
        account_id: "acct-1".to_owned(),
        counterparty_account_id: Some("acct-2".to_owned()),
        amount_minor: 12_345,
        currency: "EUR".to_owned(),
        occurred_at: 1_764_000_000_123,
        source: "core-banking".to_owned(),
        attributes: BTreeMap::from([("channel".to_owned(), "mobile".to_owned())]),
    }
}

fn result() -> TransactionResult {
    TransactionResult {
        event_id: "e".to_owned(),
        account_id: "acct-1".to_owned(),
        entry: Entry::None,
        status: Status::Rejected,
        reason: Some("insufficient_funds".to_owned()),
        amount_minor: 5,
        balance_after_minor: 0,
        account_version: 7,
        processed_at: 1_764_000_000_999,
    }
}

#[test]
fn records_round_trip_through_the_wire_format() {
    let codec = Codec::builtin();
    let bytes = codec.encode(Record::TransactionEvent, &event()).unwrap();
    assert_eq!(bytes[0], MAGIC);
    assert_eq!(schema_id(&bytes).unwrap(), 1);
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &bytes)
            .unwrap(),
        event()
    );

    let deposit = TransactionEvent {
        event_type: EventType::Deposit,
        counterparty_account_id: None,
        attributes: BTreeMap::new(),
        ..event()
    };
    let bytes = codec.encode(Record::TransactionEvent, &deposit).unwrap();
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &bytes)
            .unwrap(),
        deposit
    );

    let bytes = codec.encode(Record::TransactionResult, &result()).unwrap();
    assert_eq!(schema_id(&bytes).unwrap(), 2);
    assert_eq!(
        codec
            .decode::<TransactionResult>(Record::TransactionResult, &bytes)
            .unwrap(),
        result()
    );
}

/// What any Avro library writes for the event: the generic value encoder, field by field.
fn generic_encoding(e: &TransactionEvent) -> Vec<u8> {
    let schema = Catalog::builtin().schema(1).unwrap();
    let value = Value::Record(vec![
        ("event_id".into(), Value::String(e.event_id.clone())),
        ("event_type".into(), Value::Enum(2, "TRANSFER".into())),
        ("account_id".into(), Value::String(e.account_id.clone())),
        (
            "counterparty_account_id".into(),
            Value::Union(1, Box::new(Value::String("acct-2".into()))),
        ),
        ("amount_minor".into(), Value::Long(e.amount_minor)),
        ("currency".into(), Value::String(e.currency.clone())),
        ("occurred_at".into(), Value::TimestampMillis(e.occurred_at)),
        ("source".into(), Value::String(e.source.clone())),
        (
            "attributes".into(),
            Value::Map([("channel".to_owned(), Value::String("mobile".into()))].into()),
        ),
    ]);
    let writer = GenericDatumWriter::builder(schema).build().unwrap();
    let mut bytes = vec![0, 0, 0, 0, 1];
    bytes.extend(writer.write_value_to_vec(value).unwrap());
    bytes
}

#[test]
fn the_encoding_is_what_a_generic_avro_writer_produces() {
    let codec = Codec::builtin();
    let ours = codec.encode(Record::TransactionEvent, &event()).unwrap();
    let theirs = generic_encoding(&event());
    assert_eq!(ours, theirs);
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &theirs)
            .unwrap(),
        event()
    );
}

fn kind_of(bytes: &[u8]) -> FailureKind {
    Codec::builtin()
        .decode::<TransactionEvent>(Record::TransactionEvent, bytes)
        .expect_err("undecodable")
        .poison()
        .kind
}

#[test]
fn bad_bytes_are_poison_of_the_right_kind() {
    let good = Codec::builtin()
        .encode(Record::TransactionEvent, &event())
        .unwrap();
    assert_eq!(kind_of(&[]), FailureKind::Undecodable);
    assert_eq!(kind_of(&[0, 0, 0]), FailureKind::Undecodable);
    assert_eq!(
        kind_of(b"{\"event_id\": \"json\"}"),
        FailureKind::Undecodable
    );
    assert_eq!(kind_of(&[0, 0, 0, 0, 99, 1, 2]), FailureKind::UnknownSchema);
    let mut result_id = good.clone();
    result_id[4] = 2;
    assert_eq!(
        kind_of(&result_id),
        FailureKind::UnknownSchema,
        "a result is not an event"
    );
    assert_eq!(kind_of(&good[..good.len() - 3]), FailureKind::Undecodable);
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(kind_of(&trailing), FailureKind::Undecodable);
    let mut bad_enum = good;
    let symbol = HEADER_LEN + 1 + event().event_id.len();
    bad_enum[symbol] = 40; // zig-zag 20: no such event_type symbol
    assert_eq!(kind_of(&bad_enum), FailureKind::Undecodable);
}

#[test]
fn records_of_an_older_schema_are_read_into_the_newest() {
    let dir = std::env::temp_dir().join(format!("txflow-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = include_str!("../../../schemas/transaction_event.avsc");
    let v2 = v1.replace(
        r#"{"name": "source", "type": "string""#,
        r#"{"name": "channel", "type": "string", "default": "unknown"}, {"name": "source", "type": "string""#,
    );
    assert_ne!(v1, v2);
    std::fs::write(dir.join("v1.avsc"), v1).unwrap();
    std::fs::write(dir.join("v2.avsc"), v2).unwrap();
    std::fs::write(
        dir.join(catalog::IDS_FILE),
        r#"{"1": "v1.avsc", "7": "v2.avsc"}"#,
    )
    .unwrap();
    let codec = Codec::new(Catalog::from_dir(&dir).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(codec.current_id(Record::TransactionEvent).unwrap(), 7);
    let old = Codec::builtin()
        .encode(Record::TransactionEvent, &event())
        .unwrap();
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &old)
            .unwrap(),
        event()
    );
    // Written with v2, the new field takes its default; read back it is the same event.
    let new = codec.encode(Record::TransactionEvent, &event()).unwrap();
    assert_eq!(schema_id(&new).unwrap(), 7);
    assert!(
        new.windows(7).any(|w| w == b"unknown"),
        "the default is written"
    );
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &new)
            .unwrap(),
        event()
    );
}

#[test]
fn records_of_a_newer_schema_are_read_by_an_older_reader() {
    let dir = std::env::temp_dir().join(format!("txflow-newer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = include_str!("../../../schemas/transaction_event.avsc");
    let v2 = v1.replace(
        r#"{"name": "source", "type": "string""#,
        r#"{"name": "channel", "type": "string", "default": "unknown"}, {"name": "source", "type": "string""#,
    );
    // A producer on v2 writes a channel; txflow's TransactionEvent (the older reader) has no
    // such field and reads the rest.
    let v2_schema = apache_avro::Schema::parse_str(&v2).unwrap();
    let mut record = apache_avro::to_value(event()).unwrap();
    if let Value::Record(fields) = &mut record {
        fields.insert(7, ("channel".into(), Value::String("web".into())));
    }
    let mut bytes = vec![0, 0, 0, 0, 7];
    let writer = GenericDatumWriter::builder(&v2_schema).build().unwrap();
    bytes.extend(writer.write_value_to_vec(record).unwrap());
    std::fs::write(dir.join("v1.avsc"), v1).unwrap();
    std::fs::write(dir.join("v2.avsc"), &v2).unwrap();
    std::fs::write(
        dir.join(catalog::IDS_FILE),
        r#"{"1": "v1.avsc", "7": "v2.avsc"}"#,
    )
    .unwrap();
    let codec = Codec::new(Catalog::from_dir(&dir).unwrap()).unwrap();
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &bytes)
            .unwrap(),
        event()
    );
    // And the v1 schema resolves v2's records by itself.
    let v1_schema = apache_avro::Schema::parse_str(v1).unwrap();
    let reader = GenericDatumReader::builder(&v2_schema)
        .reader_schema(&v1_schema)
        .build()
        .unwrap();
    let read = reader.read_value(&mut &bytes[5..]).unwrap();
    assert_eq!(
        apache_avro::from_value::<TransactionEvent>(&read).unwrap(),
        event()
    );

    // A version that drops compatibility (a new field without a default) is refused.
    let v3 = v1.replace(
        r#"{"name": "source", "type": "string""#,
        r#"{"name": "branch", "type": "string"}, {"name": "source", "type": "string""#,
    );
    std::fs::write(dir.join("v3.avsc"), v3).unwrap();
    std::fs::write(
        dir.join(catalog::IDS_FILE),
        r#"{"1": "v1.avsc", "7": "v2.avsc", "9": "v3.avsc"}"#,
    )
    .unwrap();
    let refused = Catalog::from_dir(&dir).err().unwrap().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        refused.contains("schema ids 1 and 9 of dev.txflow.TransactionEvent are not compatible"),
        "{refused}"
    );
}

#[test]
fn the_schemas_directory_is_compatible_across_its_versions() {
    // Catalog::builtin checks it; this names the check, which fails on an incompatible change
    // to schemas/.
    let catalog = Catalog::builtin();
    assert!(catalog.newest("dev.txflow.TransactionEvent").is_some());
    assert!(catalog.newest("dev.txflow.TransactionResult").is_some());
}

#[test]
fn a_bad_catalog_says_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("txflow-bad-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Catalog::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("schema-ids.json"), "{err}");
    std::fs::write(dir.join(catalog::IDS_FILE), r#"{"x": "a.avsc"}"#).unwrap();
    assert!(Catalog::from_dir(&dir)
        .err()
        .unwrap()
        .to_string()
        .contains("\"x\" is not a schema id"));
    std::fs::write(dir.join(catalog::IDS_FILE), r#"{"1": "a.avsc"}"#).unwrap();
    std::fs::write(dir.join("a.avsc"), "{not avro").unwrap();
    assert!(Catalog::from_dir(&dir)
        .err()
        .unwrap()
        .to_string()
        .contains("a.avsc (id 1) is not a valid Avro schema"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A registry in memory: answers by id, counts the questions.
struct Answers {
    by_id: HashMap<u32, Result<String, crate::ports::RegistryError>>,
    asked: std::sync::atomic::AtomicUsize,
}

impl SchemaLookup for Answers {
    fn schema_text(&self, id: u32) -> crate::ports::schemas::Lookup<'_> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = self
            .by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Err(RegistryError::NotFound(format!("schema id {id}"))));
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn a_registry_teaches_the_codec_the_ids_it_has_not_seen() {
    let v1 = include_str!("../../../schemas/transaction_event.avsc");
    let v2 = v1.replace(
        r#"{"name": "source", "type": "string""#,
        r#"{"name": "channel", "type": "string", "default": "unknown"}, {"name": "source", "type": "string""#,
    );
    let not_ours = r#"{"type": "record", "name": "Other", "fields": []}"#;
    let unavailable = RegistryError::Unavailable {
        url: "http://registry".to_owned(),
        cause: Cause::message("connection refused"),
    };
    let registry = Arc::new(Answers {
        by_id: HashMap::from([
            (40, Ok(v2.clone())),
            (41, Ok(not_ours.to_owned())),
            (42, Err(unavailable)),
        ]),
        asked: Default::default(),
    });
    let codec = Codec::builtin().with_registry(registry.clone());

    let v2_schema = apache_avro::Schema::parse_str(&v2).unwrap();
    let mut record = apache_avro::to_value(event()).unwrap();
    if let Value::Record(fields) = &mut record {
        fields.insert(7, ("channel".into(), Value::String("web".into())));
    }
    let mut newer = vec![0, 0, 0, 0, 40];
    let writer = GenericDatumWriter::builder(&v2_schema).build().unwrap();
    newer.extend(writer.write_value_to_vec(record).unwrap());
    let foreign = [0, 0, 0, 0, 41];
    let missing = [0, 0, 0, 0, 43];
    let known = codec.encode(Record::TransactionEvent, &event()).unwrap();

    // Before it learns, an id it has not seen is simply unknown.
    assert!(matches!(
        codec.decode::<TransactionEvent>(Record::TransactionEvent, &newer),
        Err(CodecError::UnknownSchema(40))
    ));
    let batch = [
        Some(&newer[..]),
        Some(&newer[..]),
        Some(&foreign[..]),
        Some(&missing[..]),
        Some(&known[..]),
        None,
    ];
    codec.learn(batch).await.unwrap();
    assert_eq!(
        registry.asked.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "each unseen id asked once; a known id never"
    );
    assert_eq!(
        codec
            .decode::<TransactionEvent>(Record::TransactionEvent, &newer)
            .unwrap(),
        event()
    );
    let why = |bytes: &[u8]| {
        let error = codec
            .decode::<TransactionEvent>(Record::TransactionEvent, bytes)
            .unwrap_err();
        assert_eq!(error.poison().kind, FailureKind::UnknownSchema);
        error.to_string()
    };
    assert!(why(&foreign).contains("Other, not a txflow record"));
    assert!(why(&missing).contains("does not have it"));

    // Learnt and refused ids are not asked again; an unavailable registry fails the batch.
    codec.learn(batch).await.unwrap();
    assert_eq!(registry.asked.load(std::sync::atomic::Ordering::Relaxed), 3);
    let unavailable = codec.learn([Some(&[0u8, 0, 0, 0, 42][..])]).await;
    assert!(unavailable.unwrap_err().is_transient());
}
