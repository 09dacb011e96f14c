//! Routing: EventBridge-style event patterns, compiled into one matcher for a whole rule set.
//! Pure: no IO.

mod exclusions;
pub mod matcher;
pub mod pattern;
pub mod rules;
pub mod transform;

pub use matcher::CompiledPatterns;
pub use pattern::{Pattern, PatternError};
pub use rules::{Rules, RulesError};
pub use transform::Payload;

#[cfg(test)]
mod tests;
