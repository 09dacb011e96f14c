//! Whether the cluster lets txflow in. A client with wrong credentials, a certificate the
//! cluster does not trust, or the wrong `security.protocol` hears only "all brokers down"
//! until its calls time out; [`check_access`] connects first and fails at once with the
//! cluster's own reason. An authorization error is said with the ACL it lacks
//! (docs/SECURITY.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use super::client::client_config;
use super::KafkaConfig;

/// The cluster refused txflow's client.
#[derive(Debug, thiserror::Error)]
#[error("the Kafka cluster at {bootstrap} refused txflow: {reason}; check kafka.properties (security.protocol, sasl.mechanisms, sasl.username, ssl.*) and kafka.property_files (sasl.password), docs/SECURITY.md")]
pub struct KafkaRefused {
    bootstrap: String,
    reason: String,
}

/// Keeps the first refusal librdkafka reports.
#[derive(Default)]
struct Refusals(Mutex<Heard>);

#[derive(Default)]
struct Heard {
    refusal: Option<String>,
    /// Connections closed by the broker before it said which API versions it speaks: what
    /// a TLS listener does to a plaintext client (once may be a broker going down).
    closed_unheard: u32,
}

/// Connections closed unheard that make a refusal (librdkafka logs the second of a series,
/// then holds back those that follow).
const CLOSED_UNHEARD: u32 = 2;

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal(&error) {
            self.heard()
                .refusal
                .get_or_insert_with(|| reason.to_owned());
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka tells a closed connection only in its log.
        if message.contains("state APIVERSION_QUERY") {
            let mut heard = self.heard();
            heard.closed_unheard += 1;
            if heard.closed_unheard >= CLOSED_UNHEARD {
                heard.refusal.get_or_insert_with(|| {
                    format!("{message}: the listener closes the connection before a word is said, as a TLS listener does to a plaintext client (security.protocol)")
                });
            }
        }
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::warn!(target: "librdkafka", "{facility}: {message}");
        } else {
            tracing::debug!(target: "librdkafka", "{facility}: {message}");
        }
    }
}

impl Refusals {
    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConsumerContext for Refusals {}

/// Whether `error` is the cluster refusing this client (authentication, TLS, SASL).
pub(super) fn is_refusal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState
        )
    )
}

/// Connects as `kafka` says and waits up to `patience` for the cluster to answer: `Err` as
/// soon as it refuses the client; `Ok` once it answers, or when it stays silent (an
/// unreachable cluster is not a refusal, and is told by the calls that follow).
pub fn check_access(kafka: &KafkaConfig, patience: Duration) -> Result<(), KafkaRefused> {
    let refused = |reason: String| KafkaRefused {
        bootstrap: kafka.bootstrap_servers.clone(),
        reason,
    };
    // Without a group: a consumer member's limits are not the probe's. A client the
    // properties cannot make is for the real client to report, in its own words.
    let Ok(probe) = client_config(kafka)
        .remove("max.poll.interval.ms")
        .remove("session.timeout.ms")
        .create_with_context::<_, BaseConsumer<Refusals>>(Refusals::default())
    else {
        return Ok(());
    };
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if probe
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok()
        {
            return Ok(());
        }
        // Errors reach the context only while the client is polled.
        let _ = probe.poll(Duration::from_millis(100));
        let refusal = probe.context().heard().refusal.take();
        if let Some(reason) = refusal {
            return Err(refused(reason));
        }
    }
    Ok(())
}

/// What to grant when `error` is an authorization failure.
pub fn acl_hint(error: &KafkaError) -> Option<&'static str> {
    let hint = match error.rdkafka_error_code()? {
        RDKafkaErrorCode::TopicAuthorizationFailed => {
            "txflow's principal lacks an ACL on a topic: Describe, and Read on the stage's inputs and Write on its outputs (docs/SECURITY.md)"
        }
        RDKafkaErrorCode::GroupAuthorizationFailed => {
            "txflow's principal lacks Read on the stage's consumer group (its group_id; docs/SECURITY.md)"
        }
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "txflow's principal lacks Write and Describe on the stage's transactional id (<group_id>-<instance_id>; docs/SECURITY.md)"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => {
            "txflow's principal lacks an ACL on the cluster (IdempotentWrite on older brokers; docs/SECURITY.md)"
        }
        _ => return None,
    };
    Some(hint)
}

/// `what` failed with `error`, with the ACL to grant when it is an authorization failure.
pub fn failed_doing(what: &str, error: &KafkaError) -> String {
    match acl_hint(error) {
        Some(hint) => format!("{what} ({hint})"),
        None => what.to_owned(),
    }
}
