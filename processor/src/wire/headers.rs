//! Every `txflow.*` header, by what it says.

/// On the ledger topic: which leg of a transfer a record carries; a record without it is
/// an event on its own account.
pub const LEG: &str = "txflow.leg";
/// [`LEG`] of a transfer's credit, keyed by the counterparty.
pub const TRANSFER_CREDIT: &[u8] = b"transfer-credit";
/// [`LEG`] of a transfer's reversal, keyed by the debited account.
pub const TRANSFER_REVERSAL: &[u8] = b"transfer-reversal";

/// Set by the router: the rule that sent a record to its target.
pub const RULE: &str = "txflow.rule";
/// Set by the router on a notification: the webhook endpoint it goes to.
pub const WEBHOOK: &str = "txflow.webhook";

/// Set by the router from the record's timestamp on the events topic: when the event
/// entered txflow, in milliseconds since the Unix epoch; what end-to-end latency is measured
/// from.
pub const INGESTED_AT: &str = "txflow.ingested.at";

/// W3C trace context, carried from the gateway or a producer through every stage, in the
/// standard's form only ([`super::trace_context`]).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Where a failed record was first read.
pub const ORIGINAL_TOPIC: &str = "txflow.original.topic";
pub const ORIGINAL_PARTITION: &str = "txflow.original.partition";
pub const ORIGINAL_OFFSET: &str = "txflow.original.offset";
pub const ORIGINAL_TIMESTAMP: &str = "txflow.original.timestamp";
/// The stage and consumer group a record failed in.
pub const STAGE: &str = "txflow.stage";
pub const GROUP: &str = "txflow.group";
/// Why it failed, and how often.
pub const ERROR_KIND: &str = "txflow.error.kind";
pub const ERROR_MESSAGE: &str = "txflow.error.message";
pub const ATTEMPTS: &str = "txflow.attempts";
pub const FIRST_FAILURE: &str = "txflow.failure.first";
pub const LAST_FAILURE: &str = "txflow.failure.last";
/// When a retry record may be processed, in milliseconds since the Unix epoch; a delayed
/// topic hands no record out before it.
pub const RETRY_DUE: &str = "txflow.retry.due";
/// The retry tier a record is on.
pub const RETRY_TIER: &str = "txflow.retry.tier";
/// On a redriven dead letter: where the event was read before it was dead-lettered, as
/// `topic/partition/offset`. The stage publishes a result recorded at that position but
/// never published, once.
pub const REDRIVEN_FROM: &str = "txflow.redriven.from";
/// On a redriven record, and on the dead letter it becomes if it fails again: the redrive
/// run that wrote it, so that the run does not redrive what it wrote itself.
pub const REDRIVE_RUN: &str = "txflow.redrive.run";

/// Headers a failure sets; a record moving on carries the new ones only.
pub const FAILURE_HEADERS: [&str; 9] = [
    STAGE,
    GROUP,
    ERROR_KIND,
    ERROR_MESSAGE,
    ATTEMPTS,
    FIRST_FAILURE,
    LAST_FAILURE,
    RETRY_DUE,
    RETRY_TIER,
];

/// Headers that say where a failed record was first read.
pub const ORIGINAL_HEADERS: [&str; 4] = [
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
];

/// Every header txflow sets on a failed record: what a redrive takes off again.
pub fn is_failure_header(name: &str) -> bool {
    FAILURE_HEADERS.contains(&name) || ORIGINAL_HEADERS.contains(&name)
}
