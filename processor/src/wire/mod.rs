//! The record contract: what a record of txflow's topics is, and every `txflow.*` header a
//! stage writes or reads. Each header is named once here and parsed once, on the record
//! type, so that the stages, the log adapters and the tools agree on it.

mod headers;
mod record;
pub mod trace_context;

pub use headers::*;
pub use record::{InputRecord, OutputRecord, RetryDue};
