//! [`Objects`] on the `object_store` crate: an S3-compatible bucket (AWS S3, versitygw, Ceph,
//! GCS's S3 API) or a local directory, as `[archiver.storage]` says.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Secret};
use crate::domain::failure::http_answer_heals;
use crate::domain::Cause;
use crate::ports::{Created, ObjectError, Objects};

/// Where the archive's objects go: `[archiver.storage]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `s3://BUCKET/PREFIX` or `file:///DIRECTORY`.
    pub url: String,
    /// An S3-compatible server's address (`http://127.0.0.1:7070`); none: AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Credentials; none: the environment's (`AWS_ACCESS_KEY_ID`, an instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// The secret key read from a file at start (a mounted secret).
    pub secret_access_key_file: Option<PathBuf>,
    /// How long one request may take, its own retries included, before the archiver takes
    /// the storage to be unavailable and tries again later.
    pub request_timeout_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            request_timeout_ms: 30_000,
        }
    }
}

/// A parsed [`StorageConfig::url`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, prefix: String },
    Directory(PathBuf),
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.is_empty() {
            self.location()?;
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(ConfigError::Invalid(
                "archiver.storage.access_key_id and archiver.storage.secret_access_key (or its _file) go together".to_owned(),
            ));
        }
        ConfigError::require_positive(&[(
            "archiver.storage.request_timeout_ms",
            self.request_timeout_ms,
        )])
    }

    /// Reads `secret_access_key_file` into `secret_access_key`.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        Secret::resolve(
            &mut self.secret_access_key,
            &self.secret_access_key_file.take(),
            "archiver.storage.secret_access_key",
        )
    }

    fn location(&self) -> Result<Location, ConfigError> {
        let invalid = || {
            ConfigError::Invalid(format!(
                "archiver.storage.url `{}` is neither s3://BUCKET[/PREFIX] nor file:///DIRECTORY",
                self.url
            ))
        };
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid());
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        match self.url.strip_prefix("file://") {
            Some(path) if path.starts_with('/') => Ok(Location::Directory(PathBuf::from(path))),
            _ => Err(invalid()),
        }
    }
}

/// A bucket and prefix, or a directory.
#[derive(Clone, Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// For messages: the configured url.
    url: String,
}

impl ObjectStorage {
    /// The storage `config` names; nothing is asked of it yet.
    pub fn new(config: &StorageConfig) -> Result<ObjectStorage, ConfigError> {
        if config.url.is_empty() {
            return Err(ConfigError::Invalid(
                "archiver.storage.url is not set: give s3://BUCKET/PREFIX or file:///DIRECTORY"
                    .to_owned(),
            ));
        }
        let store: Arc<dyn ObjectStore> = match config.location()? {
            Location::S3 { bucket, prefix } => {
                crate::tls::install_provider();
                let timeout = Duration::from_millis(config.request_timeout_ms);
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(&config.region)
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: timeout,
                        ..RetryConfig::default()
                    });
                if let Some(endpoint) = &config.endpoint {
                    // Servers of their own are addressed by path, often over plain HTTP on
                    // a private network.
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let (Some(key), Some(secret)) =
                    (&config.access_key_id, &config.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(key)
                        .with_secret_access_key(&secret.0);
                }
                let s3 = builder.build().map_err(|e| {
                    ConfigError::Invalid(format!("archiver.storage `{}`: {e}", config.url))
                })?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                }
            }
            Location::Directory(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| ConfigError::Read {
                    path: format!("{} (archiver.storage.url)", dir.display()),
                    source,
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                    ConfigError::Invalid(format!("archiver.storage `{}`: {e}", config.url))
                })?)
            }
        };
        Ok(ObjectStorage {
            store,
            url: config.url.clone(),
        })
    }

    /// Memory only: for tests of what writes and reads the archive.
    pub fn in_memory() -> ObjectStorage {
        ObjectStorage {
            store: Arc::new(object_store::memory::InMemory::new()),
            url: "memory://".to_owned(),
        }
    }

    fn error(&self, doing: &str, error: object_store::Error) -> ObjectError {
        use object_store::Error as E;
        let cause = || Cause::message(format!("{doing} at {}: {error}", self.url));
        match &error {
            E::NotFound { path, .. } => ObjectError::NotFound(path.clone()),
            E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. } => ObjectError::Refused(cause()),
            _ if refused_by_server(&error) => ObjectError::Refused(cause()),
            _ => ObjectError::Unavailable(cause()),
        }
    }
}

/// Whether the server answered with what asking again would meet again (a bucket that does
/// not exist, a signature it refuses, another region's address): object_store keeps the
/// status of most S3 answers only in its message ("… non-2xx status code: 403 Forbidden …").
fn refused_by_server(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = crate::domain::failure::chain(error);
    let Some((_, after)) = text.split_once("non-2xx status code: ") else {
        return false;
    };
    after
        .get(..3)
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|status| !http_answer_heals(status))
}

impl Objects for ObjectStorage {
    async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Created, ObjectError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&ObjectPath::from(key), bytes.into(), options)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Created::AlreadyThere),
            Err(e) => Err(self.error(&format!("writing {key}"), e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let read = async {
            let found = self.store.get(&ObjectPath::from(key)).await?;
            found.bytes().await
        };
        read.await
            .map(|bytes| bytes.to_vec())
            .map_err(|e| self.error(&format!("reading {key}"), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let mut keys: Vec<String> = self
            .store
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.error("listing", e))?;
        keys.sort_unstable();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> StorageConfig {
        StorageConfig {
            url: url.to_owned(),
            ..StorageConfig::default()
        }
    }

    #[test]
    fn urls_name_a_bucket_and_prefix_or_a_directory() {
        assert_eq!(
            with_url("s3://books/txflow/archive/").location().unwrap(),
            Location::S3 {
                bucket: "books".to_owned(),
                prefix: "txflow/archive".to_owned()
            }
        );
        assert_eq!(
            with_url("s3://books").location().unwrap(),
            Location::S3 {
                bucket: "books".to_owned(),
                prefix: String::new()
            }
        );
        assert_eq!(
            with_url("file:///var/archive").location().unwrap(),
            Location::Directory("/var/archive".into())
        );
        for wrong in ["s3:///prefix", "file://relative", "gs://bucket", "books"] {
            let error = with_url(wrong).validate().unwrap_err().to_string();
            assert!(error.contains("neither s3://"), "{wrong}: {error}");
        }
    }

    #[test]
    fn a_client_error_of_the_server_is_a_refusal_and_a_timeout_is_not() {
        let answered = |status: &str| {
            let error = object_store::Error::Generic {
                store: "S3",
                source: format!("Error performing list request: Error performing GET http://s3/b - Server returned non-2xx status code: {status}: <Error/>").into(),
            };
            ObjectStorage::in_memory().error("listing", error)
        };
        assert!(matches!(answered("403 Forbidden"), ObjectError::Refused(_)));
        assert!(matches!(answered("404 Not Found"), ObjectError::Refused(_)));
        assert!(matches!(
            answered("429 Too Many Requests"),
            ObjectError::Unavailable(_)
        ));
        assert!(matches!(
            answered("503 Service Unavailable"),
            ObjectError::Unavailable(_)
        ));
        let unreachable = object_store::Error::Generic {
            store: "S3",
            source: "error sending request: connection refused".into(),
        };
        assert!(matches!(
            ObjectStorage::in_memory().error("listing", unreachable),
            ObjectError::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn an_object_is_created_once_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("txflow-objects-{}", std::process::id()));
        let storage = ObjectStorage::new(&with_url(&format!("file://{}", dir.display()))).unwrap();
        for objects in [storage, ObjectStorage::in_memory()] {
            let key = "t/date=2026-11-30/hour=22/0000-00000000000000000007.avro";
            assert_eq!(
                objects.create(key, b"first".to_vec()).await.unwrap(),
                Created::New
            );
            assert_eq!(
                objects.create(key, b"second".to_vec()).await.unwrap(),
                Created::AlreadyThere
            );
            assert_eq!(objects.get(key).await.unwrap(), b"first");
            assert_eq!(objects.list("t/").await.unwrap(), vec![key.to_owned()]);
            assert!(objects.list("u/").await.unwrap().is_empty());
            assert!(matches!(
                objects.get("t/none").await,
                Err(ObjectError::NotFound(_))
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
