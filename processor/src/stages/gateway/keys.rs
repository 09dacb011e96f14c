//! API keys: callers send `Authorization: Bearer <key>`; the gateway holds only each key's
//! SHA-256, so that its configuration does not hold a usable key.

use std::collections::{BTreeMap, HashMap};

use axum::http::{header, HeaderMap, StatusCode};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::api_error::ApiError;

/// The keys the gateway accepts, by hash.
pub struct ApiKeys {
    names: HashMap<[u8; 32], String>,
}

impl ApiKeys {
    /// Keys by name, each given as its SHA-256.
    pub fn new(hashes: BTreeMap<String, [u8; 32]>) -> Self {
        ApiKeys {
            names: hashes
                .into_iter()
                .map(|(name, hash)| (hash, name))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of the key a request carries, or why it is refused.
    pub fn identify(&self, headers: &HeaderMap) -> Result<&str, ApiError> {
        let refused = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| refused("send an API key: Authorization: Bearer <key>"))?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| refused("the Authorization header must be `Bearer <key>`"))?;
        self.names
            .get(&hash(key))
            .map(String::as_str)
            .ok_or_else(|| refused("the API key is not one of this gateway's"))
    }
}

/// The SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key (256 bits) and its SHA-256 in hex, for `txflow api-key new`.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::rng().random();
    let key = format!("txf_{}", hex(&bytes));
    let hashed = hex(&hash(&key));
    (key, hashed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_key_is_known_by_its_hash_only() {
        let (key, hashed) = new_key();
        assert!(key.starts_with("txf_") && key.len() == 68);
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hashed[2 * i..2 * i + 2], 16).unwrap();
        }
        let keys = ApiKeys::new(BTreeMap::from([("partner-a".to_owned(), bytes)]));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert_eq!(
                keys.identify(&with(&format!("{scheme} {key}"))).unwrap(),
                "partner-a"
            );
        }
        for refused in [
            with("Bearer txf_wrong"),
            with(&key),
            with("Bearer "),
            with(&format!("Basic {key}")),
            HeaderMap::new(),
        ] {
            let error = keys.identify(&refused).unwrap_err();
            assert_eq!(error.status, StatusCode::UNAUTHORIZED);
            assert_eq!(error.code, "unauthorized");
        }
    }
}
