//! The composition root: each stage wired to its backend, as `txflow run --stage …` and
//! `txflow dev` run them; where the codec's schema ids come from; how a process stops. The
//! `txflow` binary parses the command line and calls in here; the integration tests wire
//! their stages through the same [`Backend`]s.

mod access;
mod backend;
mod check;
pub mod codec;
mod config;
mod dev;
mod error;
mod run;
pub mod shutdown;

pub use access::Access;
pub use backend::{Backend, Services};
pub use check::check;
pub use config::{AdminConfig, Config, DevConfig, ENV_PREFIX};
pub use dev::{dev, dev_archive};
pub use error::AppError;
pub use run::{run, run_stage, StageName};
