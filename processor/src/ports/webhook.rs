//! Webhooks: a signed JSON body POSTed to an endpoint, and the endpoint's answer read as a
//! delivery outcome with its retry class.

use std::future::Future;
use std::time::Duration;

use crate::domain::failure::http_answer_heals;
use crate::domain::{Cause, CircuitOpen, FailureKind, RetryClass};

/// One attempt at delivering a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long the endpoint has to answer, connection included.
    pub timeout: Duration,
}

/// Why a delivery did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No answer in time, no connection, or an answer that says "not now" (408, 425, 429,
    /// 5xx): the same request may succeed later.
    #[error("the endpoint is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Any other answer than 2xx (a redirect included: deliveries do not follow them).
    #[error("the endpoint refused the delivery with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// The endpoint's circuit breaker is open: nothing was sent.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
}

impl DeliveryError {
    /// The outcome of an answer with `status`: `Ok` for 2xx. `body` is the start of what the
    /// endpoint said, kept for the dead letter's message.
    pub fn from_status(status: u16, body: &str) -> Result<(), DeliveryError> {
        match status {
            200..=299 => Ok(()),
            _ if http_answer_heals(status) => Err(DeliveryError::Unavailable(Cause::message(
                format!("HTTP {status}: {body}"),
            ))),
            _ => Err(DeliveryError::Rejected {
                status,
                body: body.to_owned(),
            }),
        }
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            DeliveryError::Unavailable(_) => FailureKind::EndpointUnavailable,
            DeliveryError::Rejected { .. } => FailureKind::EndpointRejected,
            DeliveryError::CircuitOpen(_) => FailureKind::CircuitOpen,
        }
    }
}

/// Only a refusal (4xx) is final: the endpoint would refuse the same request again.
impl RetryClass for DeliveryError {
    fn is_transient(&self) -> bool {
        !matches!(self, DeliveryError::Rejected { .. })
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::CircuitOpen(open) => Some(open.retry_after),
            _ => None,
        }
    }
}

/// Sends webhook requests.
pub trait Webhooks: Send + Sync {
    fn post(
        &self,
        request: &WebhookRequest,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_outcomes_with_their_retry_class() {
        assert_eq!(DeliveryError::from_status(204, ""), Ok(()));
        for status in [408, 425, 429, 500, 502, 503, 504] {
            let error = DeliveryError::from_status(status, "busy").unwrap_err();
            assert_eq!(error.kind(), FailureKind::EndpointUnavailable, "{status}");
            assert!(error.is_transient());
        }
        for status in [301, 400, 401, 403, 404, 410, 422] {
            let error = DeliveryError::from_status(status, "no").unwrap_err();
            assert_eq!(error.kind(), FailureKind::EndpointRejected, "{status}");
            assert!(!error.is_transient());
        }
    }
}
