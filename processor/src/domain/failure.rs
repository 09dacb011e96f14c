//! The classes of failure. Every error that can stop an event carries its class, so that
//! the policy of what happens next (output, retry, dead letter) is decided in one place.
//!
//! Business rejections (insufficient funds, …) are not failures: they are results.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a failure means for the event that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The event itself is wrong: no retry can help, it goes straight to the dead letters.
    Poison,
    /// The event is fine but something it needs is not, for now: try again later.
    Transient,
}

/// The kinds of failure, as they appear in a dead letter's `error kind` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The bytes are not a record of any known schema.
    Undecodable,
    /// The Confluent wire-format schema id is not one txflow knows.
    UnknownSchema,
    /// A decoded event breaks a field rule (amount, currency, ids, transfer shape).
    InvalidEvent,
    /// An `event_id` already recorded with a different payload.
    IdempotencyConflict,
    /// A transfer credit whose debit was never applied: applying it would create money.
    OrphanCredit,
    /// Applying the event would take a balance past the largest representable amount.
    BalanceOverflow,
    /// The store did not answer in time, or refused for now.
    StoreUnavailable,
    /// A circuit breaker refused the call: its dependency is known to be down.
    CircuitOpen,
    /// A webhook endpoint did not answer in time, could not be reached, or answered that it
    /// cannot take the delivery for now (408, 425, 429, 5xx).
    EndpointUnavailable,
    /// A webhook endpoint refused the delivery (any other answer than 2xx): sending the same
    /// request again would be refused again.
    EndpointRejected,
    /// A notification names no webhook endpoint, or one the notifier is not configured with.
    NoEndpoint,
    /// The schema registry did not answer a lookup of a record's schema id: the batch waits
    /// for it (never a reason to move a record).
    RegistryUnavailable,
}

impl FailureKind {
    /// Whether a retry can help.
    pub fn class(self) -> FailureClass {
        match self {
            FailureKind::StoreUnavailable
            | FailureKind::CircuitOpen
            | FailureKind::EndpointUnavailable
            | FailureKind::RegistryUnavailable => FailureClass::Transient,
            FailureKind::Undecodable
            | FailureKind::UnknownSchema
            | FailureKind::InvalidEvent
            | FailureKind::IdempotencyConflict
            | FailureKind::OrphanCredit
            | FailureKind::BalanceOverflow
            | FailureKind::EndpointRejected
            | FailureKind::NoEndpoint => FailureClass::Poison,
        }
    }

    pub const ALL: [FailureKind; 12] = [
        FailureKind::Undecodable,
        FailureKind::UnknownSchema,
        FailureKind::InvalidEvent,
        FailureKind::IdempotencyConflict,
        FailureKind::OrphanCredit,
        FailureKind::BalanceOverflow,
        FailureKind::StoreUnavailable,
        FailureKind::CircuitOpen,
        FailureKind::EndpointUnavailable,
        FailureKind::EndpointRejected,
        FailureKind::NoEndpoint,
        FailureKind::RegistryUnavailable,
    ];

    /// The kind whose [`as_str`](Self::as_str) is `name`.
    pub fn from_name(name: &str) -> Option<FailureKind> {
        FailureKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// The stable name used in headers, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Undecodable => "undecodable",
            FailureKind::UnknownSchema => "unknown_schema",
            FailureKind::InvalidEvent => "invalid_event",
            FailureKind::IdempotencyConflict => "idempotency_conflict",
            FailureKind::OrphanCredit => "orphan_credit",
            FailureKind::BalanceOverflow => "balance_overflow",
            FailureKind::StoreUnavailable => "store_unavailable",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::EndpointUnavailable => "endpoint_unavailable",
            FailureKind::EndpointRejected => "endpoint_rejected",
            FailureKind::NoEndpoint => "no_endpoint",
            FailureKind::RegistryUnavailable => "registry_unavailable",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that says whether the same call can succeed later, and when: the one way every
/// port's error carries its class, decided once where the error enters (an adapter's edge).
/// A transient error is retried (the loop's backoff, the retry tiers) or answered 503 with
/// `Retry-After`; any other is final for the call that met it.
pub trait RetryClass: std::error::Error {
    fn is_transient(&self) -> bool;

    /// How long until a retry can succeed, where the error knows (an open circuit breaker
    /// knows when it lets a call through).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A circuit breaker refused a call without making it: its dependency is known to be down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the circuit breaker of the {dependency} is open; it lets a call through in {retry_after:?}"
)]
pub struct CircuitOpen {
    pub dependency: String,
    pub retry_after: Duration,
}

/// The error a failure came from, kept whole rather than flattened into a message: its
/// chain stays reachable through `source()`, and the error itself through `downcast_ref`.
#[derive(Clone, Debug)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }

    /// A cause that is only a message: no error underneath (a refusal txflow itself made).
    pub fn message(message: impl Into<String>) -> Self {
        Cause(Arc::new(Message(message.into())))
    }

    /// `error`, said of what was being done: "connecting to …: <error>".
    pub fn context(
        context: impl Into<String>,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Cause(Arc::new(Context {
            context: context.into(),
            error: Box::new(error),
        }))
    }

    /// The underlying error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

/// The error and every error under it, `: ` between them: the whole story in one line, for
/// logs and dead-letter headers (a client's top error alone often says only "error sending
/// request").
impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0.as_ref()))
    }
}

/// Whether a server's answer with HTTP `status` (not 2xx) may be different if the same
/// request is made again: no answer in time (408), too early (425), too many (429), or the
/// server's own failure (5xx). Any other answer would come again.
pub fn http_answer_heals(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// `error` and the errors under it, each said once: many errors already end with the text
/// of the one under them, and a cause is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    /// Causes are equal when they read the same: errors underneath rarely compare.
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

#[derive(Debug, thiserror::Error)]
#[error("{context}: {error}")]
struct Context {
    context: String,
    #[source]
    error: Box<dyn std::error::Error + Send + Sync>,
}

/// Why an event cannot be processed at all: it belongs in the dead letters, unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Poison {
    pub kind: FailureKind,
    pub message: String,
}

impl Poison {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        debug_assert_eq!(kind.class(), FailureClass::Poison);
        Poison {
            kind,
            message: message.into(),
        }
    }
}

/// What happens next to an event that failed: the one place where class and attempt decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// To retry tier `tier` (1-based), due after a pause drawn from `[0, ceiling]`.
    Retry {
        tier: usize,
        ceiling: std::time::Duration,
    },
    /// To the dead letters: poison, or a transient failure that used up every tier.
    DeadLetter,
}

/// The retry tiers' delays, shortest first; each tier is `<input>.retry.<n>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub tiers: Vec<std::time::Duration>,
}

impl RetryPolicy {
    /// Tiers whose longest pauses are `delays_ms`, in milliseconds, in order.
    pub fn from_millis(delays_ms: &[u64]) -> Self {
        RetryPolicy {
            tiers: delays_ms
                .iter()
                .map(|ms| std::time::Duration::from_millis(*ms))
                .collect(),
        }
    }

    /// Where an event goes after failing with `kind` on its `attempts`-th attempt (1 for
    /// the first): poison goes to the dead letters at once; a transient failure goes to the
    /// tier after the attempts already made, and to the dead letters once there is none.
    pub fn next_move(&self, kind: FailureKind, attempts: u32) -> Move {
        if kind.class() == FailureClass::Poison {
            return Move::DeadLetter;
        }
        let tier = attempts.max(1) as usize;
        match self.tiers.get(tier - 1) {
            Some(&ceiling) => Move::Retry { tier, ceiling },
            None => Move::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            tiers: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
        }
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_die() {
        let moves: Vec<Move> = (1..=4)
            .map(|attempt| policy().next_move(FailureKind::StoreUnavailable, attempt))
            .collect();
        assert_eq!(
            moves,
            vec![
                Move::Retry {
                    tier: 1,
                    ceiling: Duration::from_secs(1)
                },
                Move::Retry {
                    tier: 2,
                    ceiling: Duration::from_secs(10)
                },
                Move::Retry {
                    tier: 3,
                    ceiling: Duration::from_secs(60)
                },
                Move::DeadLetter,
            ]
        );
    }

    #[test]
    fn poison_never_retries() {
        for kind in [
            FailureKind::Undecodable,
            FailureKind::UnknownSchema,
            FailureKind::InvalidEvent,
            FailureKind::IdempotencyConflict,
            FailureKind::OrphanCredit,
            FailureKind::BalanceOverflow,
        ] {
            assert_eq!(policy().next_move(kind, 1), Move::DeadLetter, "{kind}");
        }
    }

    #[test]
    fn without_tiers_a_transient_failure_is_dead_at_once() {
        let policy = RetryPolicy { tiers: Vec::new() };
        assert_eq!(
            policy.next_move(FailureKind::StoreUnavailable, 1),
            Move::DeadLetter
        );
    }
}
