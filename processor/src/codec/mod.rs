//! Avro records in the Confluent wire format: magic byte `0`, the writer schema's id as a
//! 4-byte big-endian integer, then the Avro binary datum.
//!
//! Schema ids come from a [`Catalog`]: the repo's `schemas/` directory (built in, or read
//! from a directory at start), where `schemas/schema-ids.json` gives every schema file its
//! id — or, with a schema registry configured, from the registry: txflow's schemas are
//! registered there at start, and any other id a record carries is looked up there once
//! ([`Codec::learn`], before a batch is decoded). A record is always decoded into the newest
//! schema of its name, with Avro's reader/writer resolution when it was written with an
//! older or newer one. Readers and writers are built once per schema pair, never per record.

mod catalog;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use catalog::{Catalog, CatalogError};

use crate::domain::{FailureKind, Poison, TransactionEvent};
use crate::ports::schemas::{RegistryError, SchemaLookup};

/// The first byte of every Confluent wire-format record.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

/// The records txflow reads and writes, by Avro full name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    TransactionEvent,
    TransactionResult,
}

impl Record {
    pub fn full_name(self) -> &'static str {
        match self {
            Record::TransactionEvent => "dev.txflow.TransactionEvent",
            Record::TransactionResult => "dev.txflow.TransactionResult",
        }
    }

    const ALL: [Record; 2] = [Record::TransactionEvent, Record::TransactionResult];

    /// The record whose schemas have the full name `name`, if it is one of txflow's.
    fn named(name: Option<&str>) -> Option<Record> {
        Record::ALL
            .into_iter()
            .find(|r| Some(r.full_name()) == name)
    }
}

/// Why bytes could not become a record. Every variant is poison: the bytes will not change.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("a record of {0} bytes is too short for the Confluent wire format header (5 bytes)")]
    Truncated(usize),
    #[error("magic byte {0}, expected 0 (Confluent wire format)")]
    BadMagic(u8),
    #[error("schema id {0} is not in the schema catalog")]
    UnknownSchema(u32),
    #[error("schema id {id} cannot be read: {why}")]
    Unreadable { id: u32, why: String },
    #[error("schema id {id} is a {found}, not a {wanted}")]
    WrongRecord {
        id: u32,
        found: String,
        wanted: &'static str,
    },
    #[error("the Avro datum does not match schema id {id}: {message}")]
    Avro { id: u32, message: String },
    #[error("{remaining} bytes left over after the Avro datum of schema id {id}")]
    TrailingBytes { id: u32, remaining: usize },
    #[error("no schema in the catalog for {0}")]
    NoSchemaFor(&'static str),
}

impl CodecError {
    /// The dead-letter form of this error.
    pub fn poison(&self) -> Poison {
        let kind = match self {
            CodecError::UnknownSchema(_)
            | CodecError::Unreadable { .. }
            | CodecError::WrongRecord { .. } => FailureKind::UnknownSchema,
            _ => FailureKind::Undecodable,
        };
        Poison::new(kind, self.to_string())
    }
}

/// A schema id's record, and a reader of its datums into that record's current schema.
type Reader = (Record, GenericDatumReader<'static>);

/// Reads and writes txflow's records against one catalog.
pub struct Codec {
    /// The id new records of each kind are written with: the newest schema of its name.
    current: HashMap<Record, u32>,
    /// The schema of each current id.
    schemas: HashMap<Record, &'static apache_avro::Schema>,
    writers: HashMap<u32, GenericDatumWriter<'static>>,
    /// Every schema id the codec knows: a reader resolving to the current schema of its
    /// record, or why it cannot be read (the registry does not have it, or its schema is no
    /// version of a txflow record). Grows as the registry is asked about new ids, each once.
    readers: RwLock<HashMap<u32, Result<Reader, String>>>,
    registry: Option<Arc<dyn SchemaLookup>>,
}

impl Codec {
    /// Builds readers and writers for every schema of the catalog.
    pub fn new(catalog: Catalog) -> Result<Self, CatalogError> {
        let mut current = HashMap::new();
        for record in Record::ALL {
            if let Some(id) = catalog.newest(record.full_name()) {
                current.insert(record, id);
            }
        }
        let schemas = current
            .iter()
            .filter_map(|(record, id)| Some((*record, catalog.schema(*id)?)))
            .collect();
        let mut writers = HashMap::new();
        let mut readers = HashMap::new();
        for (id, schema) in catalog.iter() {
            let invalid = |e: apache_avro::Error| CatalogError::Invalid {
                id,
                message: e.to_string(),
            };
            writers.insert(
                id,
                GenericDatumWriter::builder(schema)
                    .build()
                    .map_err(invalid)?,
            );
            let Some(record) = Record::named(catalog.full_name(id)) else {
                continue;
            };
            let reader_id = current[&record];
            let reader = if reader_id == id {
                GenericDatumReader::builder(schema).build()
            } else {
                let reader_schema = catalog
                    .schema(reader_id)
                    .expect("the newest id is in the catalog");
                GenericDatumReader::builder(schema)
                    .reader_schema(reader_schema)
                    .build()
            };
            readers.insert(id, Ok((record, reader.map_err(invalid)?)));
        }
        Ok(Codec {
            current,
            schemas,
            writers,
            readers: RwLock::new(readers),
            registry: None,
        })
    }

    /// This codec, looking up in `registry` the schema ids it does not know.
    pub fn with_registry(self, registry: Arc<dyn SchemaLookup>) -> Self {
        Codec {
            registry: Some(registry),
            ..self
        }
    }

    /// Fetches from the registry the writer schemas of the schema ids in `values` that the
    /// codec has not seen, so that decoding them needs no IO. Without a registry, or when it
    /// knows every id, does nothing. An id the registry does not have, or whose schema is not
    /// a readable version of a txflow record, decodes as poison saying why; an unavailable
    /// registry is an error, and the batch waits for it.
    pub async fn learn<'a>(
        &self,
        values: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> Result<(), RegistryError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let unknown: BTreeSet<u32> = {
            let readers = read(&self.readers);
            values
                .into_iter()
                .filter_map(|value| schema_id(value?).ok())
                .filter(|id| !readers.contains_key(id))
                .collect()
        };
        for id in unknown {
            let learnt = match registry.schema_text(id).await {
                Ok(text) => self.reader_for(&text),
                Err(RegistryError::NotFound(_)) => {
                    Err("the schema registry does not have it".to_owned())
                }
                Err(e) => return Err(e),
            };
            match &learnt {
                Ok((record, _)) => {
                    tracing::info!(
                        id,
                        record = record.full_name(),
                        "learnt a schema id from the registry"
                    )
                }
                Err(why) => tracing::warn!(id, "schema id cannot be read: {why}"),
            }
            write(&self.readers).insert(id, learnt);
        }
        Ok(())
    }

    /// A reader from the writer schema `text` into the current schema of its record.
    fn reader_for(&self, text: &str) -> Result<Reader, String> {
        let schema = apache_avro::Schema::parse_str(text)
            .map_err(|e| format!("its schema is not valid Avro: {e}"))?;
        let name = schema.name().map(|n| n.fullname(None));
        let record = Record::named(name.as_deref()).ok_or_else(|| {
            format!(
                "its schema is {}, not a txflow record",
                name.as_deref().unwrap_or("unnamed")
            )
        })?;
        let reader_schema = self
            .schemas
            .get(&record)
            .ok_or_else(|| format!("no schema of {} to read it into", record.full_name()))?;
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&schema, reader_schema)
            .map_err(|e| {
                format!(
                    "its {} cannot be read as this version of it: {e}",
                    record.full_name()
                )
            })?;
        // Lives as long as the process, like the catalog's: one per schema id learnt.
        let schema: &'static apache_avro::Schema = Box::leak(Box::new(schema));
        let reader = GenericDatumReader::builder(schema)
            .reader_schema(reader_schema)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((record, reader))
    }

    /// The codec of the schemas built into this binary.
    pub fn builtin() -> Self {
        Codec::new(Catalog::builtin()).expect("the built-in schemas are valid")
    }

    /// The schema id new records of `record` are written with.
    pub fn current_id(&self, record: Record) -> Result<u32, CodecError> {
        self.current
            .get(&record)
            .copied()
            .ok_or(CodecError::NoSchemaFor(record.full_name()))
    }

    /// The schema new records of `record` are written with.
    pub fn schema(&self, record: Record) -> Option<&'static apache_avro::Schema> {
        self.schemas.get(&record).copied()
    }

    /// `value` as a wire-format record of the current schema of `record`.
    pub fn encode<T: Serialize>(&self, record: Record, value: &T) -> Result<Vec<u8>, CodecError> {
        let id = self.current_id(record)?;
        self.encode_with(id, value)
    }

    /// `value` as a wire-format record of schema `id`.
    pub fn encode_with<T: Serialize>(&self, id: u32, value: &T) -> Result<Vec<u8>, CodecError> {
        let writer = self.writers.get(&id).ok_or(CodecError::UnknownSchema(id))?;
        let mut bytes = Vec::with_capacity(128);
        bytes.push(MAGIC);
        bytes.extend_from_slice(&id.to_be_bytes());
        writer
            .write_ser(&mut bytes, value)
            .map_err(|e| CodecError::Avro {
                id,
                message: e.to_string(),
            })?;
        Ok(bytes)
    }

    /// The valid transaction event in a record's value, or why the record is poison (no
    /// value, not a TransactionEvent record, a field rule broken).
    pub fn valid_event(&self, value: Option<&[u8]>) -> Result<TransactionEvent, Poison> {
        let value = value
            .ok_or_else(|| Poison::new(FailureKind::Undecodable, "the record has no value"))?;
        let event: TransactionEvent = self
            .decode(Record::TransactionEvent, value)
            .map_err(|e| e.poison())?;
        event.validate()?;
        Ok(event)
    }

    /// A wire-format record of `record`, read into its current schema.
    pub fn decode<T: DeserializeOwned>(
        &self,
        record: Record,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        let id = schema_id(bytes)?;
        let readers = read(&self.readers);
        let (found, reader) = match readers.get(&id) {
            Some(Ok(reader)) => reader,
            Some(Err(why)) => {
                return Err(CodecError::Unreadable {
                    id,
                    why: why.clone(),
                })
            }
            None => return Err(CodecError::UnknownSchema(id)),
        };
        if *found != record {
            return Err(CodecError::WrongRecord {
                id,
                found: found.full_name().to_owned(),
                wanted: record.full_name(),
            });
        }
        let avro = |e: apache_avro::Error| CodecError::Avro {
            id,
            message: e.to_string(),
        };
        let mut datum = &bytes[HEADER_LEN..];
        let value = if self.current.get(&record) == Some(&id) {
            // Written with the current schema: straight into the type, no value tree.
            reader.read_deser::<T>(&mut datum).map_err(avro)?
        } else {
            apache_avro::from_value(&reader.read_value(&mut datum).map_err(avro)?).map_err(avro)?
        };
        if !datum.is_empty() {
            return Err(CodecError::TrailingBytes {
                id,
                remaining: datum.len(),
            });
        }
        Ok(value)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The schema id of a wire-format record.
pub fn schema_id(bytes: &[u8]) -> Result<u32, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(CodecError::BadMagic(bytes[0]));
    }
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

#[cfg(test)]
mod tests;
