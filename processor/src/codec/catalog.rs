//! The schema catalog: which Avro schema each schema id names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::Schema;

/// The file that maps schema ids to schema files, in the schemas directory.
pub const IDS_FILE: &str = "schema-ids.json";

const BUILTIN_IDS: &str = include_str!("../../../schemas/schema-ids.json");
const BUILTIN_FILES: [(&str, &str); 2] = [
    (
        "transaction_event.avsc",
        include_str!("../../../schemas/transaction_event.avsc"),
    ),
    (
        "transaction_result.avsc",
        include_str!("../../../schemas/transaction_result.avsc"),
    ),
];

/// Why a schema catalog could not be loaded: a configuration error, found at start.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{IDS_FILE} must be a JSON object of schema id (a number, as a string) to file name: {0}"
    )]
    Ids(String),
    #[error("schema file {file} (id {id}) is not a valid Avro schema: {message}")]
    Parse {
        id: u32,
        file: String,
        message: String,
    },
    #[error("schema id {id} cannot be used: {message}")]
    Invalid { id: u32, message: String },
    /// Two versions of one record cannot read each other's records: a producer or a consumer
    /// on the other version would fail on them.
    #[error("schema ids {older} and {newer} of {name} are not compatible both ways (a field added or removed needs a default): {message}")]
    Incompatible {
        name: String,
        older: u32,
        newer: u32,
        message: String,
    },
}

/// Schema ids and their schemas. Schemas live as long as the process: the codec's readers
/// and writers borrow them, and a catalog is loaded once at start.
pub struct Catalog {
    schemas: BTreeMap<u32, (&'static Schema, Option<String>)>,
    /// Each schema as written, docs and defaults included: what a registry is given.
    texts: BTreeMap<u32, String>,
}

impl Catalog {
    /// The schemas of the repo's `schemas/` directory, built into this binary.
    pub fn builtin() -> Self {
        Catalog::parse(BUILTIN_IDS, |file| {
            BUILTIN_FILES
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| CatalogError::Ids(format!("no built-in schema file {file}")))
        })
        .expect("the built-in schemas are valid")
    }

    /// The schemas of a directory laid out like the repo's `schemas/`.
    pub fn from_dir(dir: &Path) -> Result<Self, CatalogError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| CatalogError::Io { path, source })
        };
        let ids = read(dir.join(IDS_FILE))?;
        Catalog::parse(&ids, |file| read(dir.join(file)))
    }

    fn parse(
        ids: &str,
        mut read: impl FnMut(&str) -> Result<String, CatalogError>,
    ) -> Result<Self, CatalogError> {
        let ids: BTreeMap<String, String> =
            serde_json::from_str(ids).map_err(|e| CatalogError::Ids(e.to_string()))?;
        let mut entries = Vec::new();
        for (id, file) in ids {
            let id: u32 = id
                .parse()
                .map_err(|_| CatalogError::Ids(format!("{id:?} is not a schema id")))?;
            let text = read(&file)?;
            entries.push((id, file, text));
        }
        Catalog::from_texts(entries)
    }

    /// The schemas `(id, where it came from, text)`.
    pub fn from_texts(
        entries: impl IntoIterator<Item = (u32, String, String)>,
    ) -> Result<Self, CatalogError> {
        let mut schemas = BTreeMap::new();
        let mut texts = BTreeMap::new();
        for (id, origin, text) in entries {
            let schema = Schema::parse_str(&text).map_err(|e| CatalogError::Parse {
                id,
                file: origin,
                message: e.to_string(),
            })?;
            let full_name = schema.name().map(|n| n.fullname(None));
            schemas.insert(id, (&*Box::leak(Box::new(schema)), full_name));
            texts.insert(id, text);
        }
        let catalog = Catalog { schemas, texts };
        catalog.check_compatible()?;
        Ok(catalog)
    }

    /// Each version of a record can read the records of each other version (full
    /// compatibility): a newer writer's records are read by an older reader and the reverse,
    /// so that producers and stages can be upgraded in any order.
    fn check_compatible(&self) -> Result<(), CatalogError> {
        let names: std::collections::BTreeSet<&str> = self
            .schemas
            .values()
            .filter_map(|(_, name)| name.as_deref())
            .collect();
        for name in names {
            let all: Vec<(u32, &Schema)> = self
                .schemas
                .iter()
                .filter(|(_, (_, n))| n.as_deref() == Some(name))
                .map(|(id, (schema, _))| (*id, *schema))
                .collect();
            for (i, (older, a)) in all.iter().enumerate() {
                for (newer, b) in &all[i + 1..] {
                    apache_avro::schema_compatibility::SchemaCompatibility::mutual_read(a, b)
                        .map_err(|e| CatalogError::Incompatible {
                            name: name.to_owned(),
                            older: *older,
                            newer: *newer,
                            message: e.to_string(),
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Every schema id with its schema, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'static Schema)> + '_ {
        self.schemas.iter().map(|(id, (schema, _))| (*id, *schema))
    }

    /// Schema `id` as written.
    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(&id).map(String::as_str)
    }

    pub fn schema(&self, id: u32) -> Option<&'static Schema> {
        self.schemas.get(&id).map(|(schema, _)| *schema)
    }

    /// The full name of the named schema `id`.
    pub fn full_name(&self, id: u32) -> Option<&str> {
        self.schemas.get(&id).and_then(|(_, name)| name.as_deref())
    }

    /// The highest id whose schema has this full name: the one new records are written with.
    pub fn newest(&self, full_name: &str) -> Option<u32> {
        self.schemas
            .iter()
            .rev()
            .find(|(_, (_, name))| name.as_deref() == Some(full_name))
            .map(|(id, _)| *id)
    }
}
