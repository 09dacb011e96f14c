//! Failures, one concept (docs/FAILURES.md): where a record that failed goes — a retry tier
//! `<input>.retry.<n>` or the dead letters `<input>.dlq` — with headers that say where it came
//! from and why ([`routes`]); how an account with records on the retry tiers keeps its order
//! ([`parking`]); what an operator sees of the dead letters ([`dead_letters`]); and how they
//! are written back, exactly once, on either backend ([`redrive`]).

pub mod dead_letters;
pub mod parking;
pub mod redrive;
pub mod routes;

pub use dead_letters::{DeadLetter, Filter, Stats};
pub use routes::{dead_letter_topic, retry_topic, FailureRoutes, Retry, Routed, MAX_RETRY_TIERS};
