//! A Confluent-compatible schema registry over HTTP (Confluent Schema Registry, Apicurio
//! Registry's `/apis/ccompat/v7`, Karapace, Redpanda): register a schema under a subject,
//! look one up, read a schema by id, list a subject's versions. Schemas by id never change:
//! the codec remembers each id it learnt ([`crate::codec::Codec::learn`]), so the client keeps
//! no cache of its own.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

use crate::config::{read_setting_file, ConfigError, Secret};
use crate::domain::Cause;
use crate::ports::schemas::{Lookup, RegistryError, SchemaLookup};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The `[schemas]` section: where schema ids come from, the built-in
/// `schemas/schema-ids.json` or a Confluent-compatible schema registry.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// The registry's Confluent-compatible root (where `/subjects` is), e.g.
    /// `http://registry:8081` or Apicurio's `http://registry:8080/apis/ccompat/v7`; empty:
    /// no registry, the built-in ids.
    pub registry_url: String,
    /// HTTP basic credentials for the registry, both or neither.
    pub registry_username: Option<String>,
    pub registry_password: Option<Secret>,
    /// The password read from a file at start (a mounted secret), in place of
    /// `registry_password`.
    pub registry_password_file: Option<PathBuf>,
    /// For an `https` registry whose certificate a private CA signed: that CA (PEM), trusted
    /// beside the system's roots.
    pub registry_ca_file: Option<PathBuf>,
    /// Register txflow's schemas at start (a schema already there keeps its id); when false,
    /// they must already be registered and txflow only looks their ids up.
    pub auto_register: bool,
    /// How long one registry request may take.
    pub registry_timeout_ms: u64,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            registry_url: String::new(),
            registry_username: None,
            registry_password: None,
            registry_password_file: None,
            registry_ca_file: None,
            auto_register: true,
            registry_timeout_ms: 5000,
        }
    }
}

/// How to reach a registry: its root, HTTP basic credentials, a CA to trust (PEM).
#[derive(Clone, Debug)]
pub struct RegistryAddress {
    pub url: Url,
    pub credentials: Option<(String, Secret)>,
    pub ca_pem: Option<Vec<u8>>,
}

impl SchemasConfig {
    /// Reads `registry_password_file` into `registry_password`.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        Secret::resolve(
            &mut self.registry_password,
            &self.registry_password_file.take(),
            "schemas.registry_password",
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.registry()?;
        ConfigError::require_positive(&[("schemas.registry_timeout_ms", self.registry_timeout_ms)])
    }

    /// The registry's URL and credentials, or `None` without a registry.
    pub fn registry(&self) -> Result<Option<RegistryAddress>, ConfigError> {
        if self.registry_url.trim().is_empty() {
            return Ok(None);
        }
        let invalid = |m: String| {
            ConfigError::Invalid(format!("schemas.registry_url {:?}: {m}", self.registry_url))
        };
        let url = Url::parse(self.registry_url.trim()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("only http and https".to_owned()));
        }
        let credentials = match (&self.registry_username, &self.registry_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "schemas.registry_username and schemas.registry_password go together"
                        .to_owned(),
                ))
            }
        };
        let ca_pem = match &self.registry_ca_file {
            Some(path) => {
                let pem = read_setting_file(path, "schemas.registry_ca_file")?.into_bytes();
                reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "schemas.registry_ca_file {}: not a PEM certificate: {e}",
                        path.display()
                    ))
                })?;
                Some(pem)
            }
            None => None,
        };
        Ok(Some(RegistryAddress {
            url,
            credentials,
            ca_pem,
        }))
    }
}

/// One version of a subject.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// A registry client, its connections kept alive.
pub struct SchemaRegistry {
    client: reqwest::Client,
    base: Url,
    credentials: Option<(String, String)>,
}

impl SchemaRegistry {
    /// A client of the registry at `base` (its Confluent-compatible root, where `/subjects`
    /// is), with HTTP basic credentials if given.
    pub fn new(address: RegistryAddress, timeout: Duration) -> Result<Self, reqwest::Error> {
        let mut client = reqwest::Client::builder()
            .user_agent(concat!("txflow/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout);
        if let Some(pem) = &address.ca_pem {
            client = client.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(SchemaRegistry {
            client: client.build()?,
            base: address.url,
            credentials: address
                .credentials
                .map(|(user, Secret(password))| (user, password)),
        })
    }

    /// Registers `schema` (Avro) under `subject` and returns its id; a schema already
    /// registered there keeps its id. The registry refuses one its compatibility rule for
    /// the subject forbids.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let what = format!("schema registration under subject {subject}");
        let body = json!({ "schema": schema });
        let registered: Registered = self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                Some(body),
                &what,
            )
            .await?;
        Ok(registered.id)
    }

    /// The version of `subject` whose schema is `schema`, if it was registered there.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let what = format!("this schema under subject {subject}");
        let body = json!({ "schema": schema });
        self.call(Method::POST, &["subjects", subject], Some(body), &what)
            .await
    }

    /// The versions registered under `subject`, oldest first.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let what = format!("subject {subject}");
        self.call(Method::GET, &["subjects", subject, "versions"], None, &what)
            .await
    }

    /// One version of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<SubjectVersion, RegistryError> {
        let what = format!("version {version} of subject {subject}");
        let version = version.to_string();
        self.call(
            Method::GET,
            &["subjects", subject, "versions", &version],
            None,
            &what,
        )
        .await
    }

    /// The schema registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct ById {
            schema: String,
        }
        let found: ById = self
            .call(
                Method::GET,
                &["schemas", "ids", &id.to_string()],
                None,
                &format!("schema id {id}"),
            )
            .await?;
        Ok(found.schema)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<T, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::Refused {
                what: what.to_owned(),
                status: 0,
                message: format!("{} cannot be a base URL", self.base),
            })?
            .pop_if_empty()
            .extend(path);
        let unavailable = |cause: Cause| RegistryError::Unavailable {
            url: self.base.to_string(),
            cause,
        };
        let mut request = self
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(Cause::new(e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(Cause::new(e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RegistryError::Refused {
                what: what.to_owned(),
                status: status.as_u16(),
                message: format!("an answer that is not the documented JSON: {e}"),
            });
        }
        let message = error_message(&bytes);
        match status {
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound(what.to_owned())),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Err(unavailable(
                Cause::message(format!("HTTP {status}: {message}")),
            )),
            s if s.is_server_error() => Err(unavailable(Cause::message(format!(
                "HTTP {status}: {message}"
            )))),
            _ => Err(RegistryError::Refused {
                what: what.to_owned(),
                status: status.as_u16(),
                message,
            }),
        }
    }
}

impl SchemaLookup for SchemaRegistry {
    fn schema_text(&self, id: u32) -> Lookup<'_> {
        Box::pin(self.schema_by_id(id))
    }
}

/// The `message` of a registry's error body (`{"error_code": 42201, "message": "…"}`), else
/// the start of the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => error.message,
        Err(_) => String::from_utf8_lossy(body).chars().take(512).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::test_certs::self_signed;

    /// An HTTPS registry on loopback that answers one request: its versions of a subject when
    /// the request carries `user:secret`, 401 otherwise.
    async fn https_registry(cert: &[u8], key: &[u8]) -> Url {
        let chain = vec![CertificateDer::from_pem_slice(cert).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/apis/ccompat/v7", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buffer).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..n]);
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                // user:secret, in base64.
                let (status, body) = if text.contains("authorization: basic dxnlcjpzzwnyzxq=") {
                    ("200 OK", "[1,2]")
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error_code":401,"message":"who are you"}"#,
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        url.parse().unwrap()
    }

    #[tokio::test]
    async fn an_https_registry_is_reached_with_its_ca_and_credentials() {
        let (cert, key) = self_signed("registry");
        let url = https_registry(&cert, &key).await;
        let address = |ca: Option<Vec<u8>>, password: &str| RegistryAddress {
            url: url.clone(),
            credentials: Some(("user".to_owned(), Secret(password.to_owned()))),
            ca_pem: ca,
        };
        let timeout = Duration::from_secs(5);
        let trusted = SchemaRegistry::new(address(Some(cert.clone()), "secret"), timeout).unwrap();
        assert_eq!(trusted.versions("s").await.unwrap(), [1, 2]);

        let wrong_password = SchemaRegistry::new(address(Some(cert), "guess"), timeout).unwrap();
        match wrong_password.versions("s").await {
            Err(RegistryError::Refused { status: 401, .. }) => {}
            other => panic!("a wrong password: {other:?}"),
        }
        let untrusted = SchemaRegistry::new(address(None, "secret"), timeout).unwrap();
        match untrusted.versions("s").await {
            Err(RegistryError::Unavailable { cause, .. }) => {
                assert!(cause.to_string().contains("certificate"), "{cause}")
            }
            other => panic!("an untrusted certificate: {other:?}"),
        }
    }
}
