//! txflow
