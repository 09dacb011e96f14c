//! Webhook signatures: HMAC-SHA256 with the endpoint's secret over `<timestamp>.<body>`,
//! sent as `txflow-signature: t=<timestamp>,v1=<hex digest>`. The timestamp (Unix seconds)
//! is signed with the body so that a captured delivery cannot be replayed later than the
//! receiver's tolerance; docs/NOTIFICATIONS.md shows a receiver's check. While a secret is
//! rotated an endpoint has two, and the header carries a `v1` digest for each.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "txflow-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds): one `v1`
/// digest per secret.
pub fn sign<S: AsRef<[u8]>>(secrets: &[S], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let digest = mac(secret.as_ref(), timestamp, body)
            .finalize()
            .into_bytes();
        header.push_str(",v1=");
        for byte in digest {
            header.push_str(&format!("{byte:02x}"));
        }
    }
    header
}

/// Why a signature was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature was made at {signed}, more than {tolerance_s} s from now ({now})")]
    Stale {
        signed: i64,
        now: i64,
        tolerance_s: i64,
    },
    #[error("no v1 signature matches the body with this secret")]
    Mismatch,
}

/// Checks a signature header against `body` as a receiver would: its timestamp within
/// `tolerance_s` of `now` (Unix seconds), and one of its `v1` digests the HMAC of the body
/// with `secret` (compared in constant time). Returns the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<i64, SignatureError> {
    let mut timestamp = None;
    let mut digests = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            Some(("v1", value)) => digests.push(from_hex(value).ok_or(SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let signed = timestamp.ok_or(SignatureError::Malformed)?;
    if digests.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - signed).abs() > tolerance_s {
        return Err(SignatureError::Stale {
            signed,
            now,
            tolerance_s,
        });
    }
    let matches = digests
        .iter()
        .any(|digest| mac(secret, signed, body).verify_slice(digest).is_ok());
    if matches {
        Ok(signed)
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_published_hmac_of_timestamp_and_body() {
        // The same digest as `echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            sign(&[b"secret"], 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn a_receiver_accepts_what_was_signed_and_nothing_else() {
        let body = br#"{"event_id":"e-1"}"#;
        let header = sign(&[b"secret"], 1000, body);
        assert_eq!(verify(b"secret", &header, body, 1100, 300), Ok(1000));
        assert_eq!(
            verify(b"other", &header, body, 1100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &header, br#"{"event_id":"e-2"}"#, 1100, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(b"secret", &header, body, 2000, 300),
            Err(SignatureError::Stale { .. })
        ));
        let forged_time = header.replace("t=1000", "t=1050");
        assert_eq!(
            verify(b"secret", &forged_time, body, 1100, 300),
            Err(SignatureError::Mismatch)
        );
        for malformed in ["", "v1=00", "t=1000", "t=x,v1=00", "t=1000,v1=zz"] {
            assert_eq!(
                verify(b"secret", malformed, body, 1100, 300),
                Err(SignatureError::Malformed),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn during_a_secret_rotation_either_digest_passes() {
        let body = b"{}";
        let both = sign(&[b"new", b"old"], 1000, body);
        assert_eq!(both.matches("v1=").count(), 2);
        assert_eq!(verify(b"new", &both, body, 1000, 300), Ok(1000));
        assert_eq!(verify(b"old", &both, body, 1000, 300), Ok(1000));
    }
}
