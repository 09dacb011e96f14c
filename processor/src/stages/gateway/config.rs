//! The `[gateway]` section, with its API keys.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::server::ConnectionLimits;
use super::tls::CertificateFiles;
use super::GatewaySettings;
use crate::config::{read_setting_file, ConfigError};
use crate::domain::is_currency_code;
use crate::limits::KeyedRateLimit;
use crate::pipeline::breaker::BreakerConfig;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the HTTP API listens.
    pub listen: String,
    /// API keys by name: each the SHA-256 of the key, in hex (`txflow api-key new NAME`
    /// makes a key and its line). Never the key itself.
    pub api_keys: BTreeMap<String, String>,
    /// A file of more API keys, a `NAME SHA256-HEX` line each (a mounted Kubernetes secret).
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second per API key, on average; past it, 429 with `Retry-After`.
    pub requests_per_second: u32,
    /// Requests an API key may make at once above its average.
    pub burst: u32,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most events in one `POST /v1/events/batch`.
    pub max_batch_events: usize,
    /// How long a request may take, the broker's acknowledgement included; past it, 503.
    pub request_timeout_ms: u64,
    /// How long a client may take to send a request's body; past it, 408 and the connection
    /// is closed. Shorter than `request_timeout_ms`.
    pub body_timeout_ms: u64,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open; past it, the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The largest request head (the target and every header), in bytes; past it, 431
    /// (414 when the target alone is too long).
    pub max_header_bytes: usize,
    /// Requests per second, per client address, that carry no known API key; past it, 429.
    pub unauthenticated_requests_per_second: u32,
    /// Such requests a client address may make at once above its average.
    pub unauthenticated_burst: u32,
    /// The currencies accepted, as ISO 4217 codes; empty accepts every ISO 4217 code.
    pub currencies: Vec<String>,
    /// How far in the past `occurred_at` may lie, in seconds.
    pub occurred_at_max_age_s: u64,
    /// How far in the future `occurred_at` may lie (clock skew), in seconds.
    pub occurred_at_max_ahead_s: u64,
    /// HTTPS, for a gateway with no ingress in front: the certificate chain and its key, in
    /// PEM, both or neither; read again when either file changes.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Failed store reads in a row that open the breaker in front of the store: while it is
    /// open, reads are answered 503 at once, with `Retry-After` saying when it lets one
    /// through.
    pub store_breaker_failure_threshold: u32,
    /// How long the open breaker refuses reads before it lets one through as a probe.
    pub store_breaker_open_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:8080".to_owned(),
            api_keys: BTreeMap::new(),
            api_keys_file: None,
            requests_per_second: 100,
            burst: 200,
            max_body_bytes: 1024 * 1024,
            max_batch_events: 500,
            request_timeout_ms: 10_000,
            body_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            unauthenticated_requests_per_second: 5,
            unauthenticated_burst: 20,
            currencies: Vec::new(),
            occurred_at_max_age_s: 30 * 24 * 3600,
            occurred_at_max_ahead_s: 300,
            tls_cert_file: None,
            tls_key_file: None,
            store_breaker_failure_threshold: 5,
            store_breaker_open_ms: 2_000,
        }
    }
}

impl GatewayConfig {
    /// Every setting, and the API keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::require_positive(&[
            (
                "gateway.requests_per_second",
                self.requests_per_second.into(),
            ),
            ("gateway.burst", self.burst.into()),
            ("gateway.max_body_bytes", self.max_body_bytes as u64),
            ("gateway.max_batch_events", self.max_batch_events as u64),
            ("gateway.request_timeout_ms", self.request_timeout_ms),
            ("gateway.body_timeout_ms", self.body_timeout_ms),
            (
                "gateway.header_read_timeout_ms",
                self.header_read_timeout_ms,
            ),
            ("gateway.max_connections", self.max_connections as u64),
            ("gateway.max_header_bytes", self.max_header_bytes as u64),
            (
                "gateway.unauthenticated_requests_per_second",
                self.unauthenticated_requests_per_second.into(),
            ),
            (
                "gateway.unauthenticated_burst",
                self.unauthenticated_burst.into(),
            ),
            (
                "gateway.store_breaker_failure_threshold",
                self.store_breaker_failure_threshold.into(),
            ),
        ])?;
        if self.body_timeout_ms >= self.request_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "gateway.body_timeout_ms ({}) must be shorter than gateway.request_timeout_ms ({}): a slow body is the client's fault (408), not the gateway's (503)",
                self.body_timeout_ms, self.request_timeout_ms
            )));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::Invalid(format!(
                "gateway.max_header_bytes is {}: it must be at least {MIN_HEADER_BYTES}",
                self.max_header_bytes
            )));
        }
        if let Some(code) = self.currencies.iter().find(|c| !is_currency_code(c)) {
            return Err(ConfigError::Invalid(format!(
                "gateway.currencies: {code:?} is not an ISO 4217 currency code"
            )));
        }
        self.key_hashes()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "gateway.tls_cert_file and gateway.tls_key_file go together".to_owned(),
            ));
        }
        Ok(())
    }

    /// The files of the gateway's TLS certificate, when it serves HTTPS.
    pub fn certificate_files(&self) -> Option<CertificateFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    pub fn settings(&self) -> GatewaySettings {
        GatewaySettings {
            max_body_bytes: self.max_body_bytes,
            max_batch_events: self.max_batch_events,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            currencies: self.currencies.iter().cloned().collect(),
            occurred_at_max_age: Duration::from_secs(self.occurred_at_max_age_s),
            occurred_at_max_ahead: Duration::from_secs(self.occurred_at_max_ahead_s),
        }
    }

    /// What the gateway's connections may do.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
        }
    }

    /// The breaker in front of the store's reads.
    pub fn store_breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.store_breaker_failure_threshold,
            open_for: Duration::from_millis(self.store_breaker_open_ms),
        }
    }

    /// The limit on each API key's requests.
    pub fn rate_limit(&self) -> Result<KeyedRateLimit, ConfigError> {
        limit(
            ("gateway.requests_per_second", self.requests_per_second),
            ("gateway.burst", self.burst),
        )
    }

    /// The limit on each client address's requests that carry no known key.
    pub fn unauthenticated_rate_limit(&self) -> Result<KeyedRateLimit, ConfigError> {
        limit(
            (
                "gateway.unauthenticated_requests_per_second",
                self.unauthenticated_requests_per_second,
            ),
            ("gateway.unauthenticated_burst", self.unauthenticated_burst),
        )
    }

    /// The SHA-256 hashes of the API keys, by name: `api_keys`, then `api_keys_file`.
    pub fn key_hashes(&self) -> Result<BTreeMap<String, [u8; 32]>, ConfigError> {
        let mut entries: Vec<(String, String, String)> = self
            .api_keys
            .iter()
            .map(|(name, hash)| {
                (
                    name.clone(),
                    hash.clone(),
                    format!("gateway.api_keys.{name}"),
                )
            })
            .collect();
        if let Some(path) = &self.api_keys_file {
            entries.extend(key_file_entries(path)?);
        }
        let mut hashes = BTreeMap::new();
        for (name, hash, at) in entries {
            let bytes = decode_sha256_hex(&hash).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{at}: not the SHA-256 of a key in hex (64 hex digits); `txflow api-key new {name}` makes one"
                ))
            })?;
            if hashes.insert(name.clone(), bytes).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{at}: API key {name:?} is given twice"
                )));
            }
        }
        Ok(hashes)
    }
}

/// The least `max_header_bytes`: room for a request line and the headers every client sends.
const MIN_HEADER_BYTES: usize = 1024;

fn limit(
    (rate_name, rate): (&str, u32),
    (burst_name, burst): (&str, u32),
) -> Result<KeyedRateLimit, ConfigError> {
    let positive = |name: &str, value: u32| {
        NonZeroU32::new(value)
            .ok_or_else(|| ConfigError::Invalid(format!("{name} is 0: it must be at least 1")))
    };
    Ok(KeyedRateLimit::new(
        positive(rate_name, rate)?,
        positive(burst_name, burst)?,
    ))
}

/// The (name, hash, where) of each `NAME SHA256-HEX` line of an API keys file.
fn key_file_entries(path: &Path) -> Result<Vec<(String, String, String)>, ConfigError> {
    let text = read_setting_file(path, "gateway.api_keys_file")?;
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{} line {}", path.display(), number + 1);
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, hash] => entries.push((name.to_owned(), hash.to_owned(), at)),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{at}: expected `NAME SHA256-HEX`"
                )))
            }
        }
    }
    Ok(entries)
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}
