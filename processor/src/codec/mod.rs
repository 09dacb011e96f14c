//! Avro records in the Confluent wire format: magic byte `0`, the writer schema's id as a
//! 4-byte big-endian integer, then the Avro binary datum.
//!
//! Schema ids come from a [`Catalog`]: the repo's `schemas/` directory (built in, or read
//! from a directory at start), where `schemas/schema-ids.json` gives every schema file its
//! id. A record is always decoded into the newest schema of its name, with Avro's
//! reader/writer resolution when it was written with an older or newer one. Readers and
//! writers are built once per schema pair, never per record.

mod catalog;

use std::collections::HashMap;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use catalog::{Catalog, CatalogError};

use crate::domain::{FailureKind, Poison, TransactionEvent};

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
            CodecError::UnknownSchema(_) | CodecError::WrongRecord { .. } => {
                FailureKind::UnknownSchema
            }
            _ => FailureKind::Undecodable,
        };
        Poison::new(kind, self.to_string())
    }
}

/// Reads and writes txflow's records against one catalog.
pub struct Codec {
    /// The id new records of each kind are written with: the newest schema of its name.
    current: HashMap<Record, u32>,
    /// The schema of each current id.
    schemas: HashMap<Record, &'static apache_avro::Schema>,
    writers: HashMap<u32, GenericDatumWriter<'static>>,
    /// A reader for every schema id, resolving to the current schema of its record.
    readers: HashMap<u32, (Record, GenericDatumReader<'static>)>,
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
            let Some(record) = Record::ALL
                .into_iter()
                .find(|r| Some(r.full_name()) == catalog.full_name(id))
            else {
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
            readers.insert(id, (record, reader.map_err(invalid)?));
        }
        Ok(Codec {
            current,
            schemas,
            writers,
            readers,
        })
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
        let (found, reader) = self.readers.get(&id).ok_or(CodecError::UnknownSchema(id))?;
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
