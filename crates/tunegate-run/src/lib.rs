//! The runner: it turns a task into a plan (prompts x providers x cases x
//! repeats), runs it with bounded concurrency, per-provider rate limits,
//! retries and the response cache, and emits every finished case into
//! sinks. The store is the first sink: a case counts as done exactly when
//! its row is committed, which is what makes `--resume` exact.

pub mod batch;
pub mod compare;
pub mod evidence;
mod factory;
pub mod lab;
pub mod judge;
pub mod prepare;
pub mod runner;
pub mod summary;
pub mod tokens;

pub use factory::{build_provider, resolve_tuned};
pub use prepare::{prepare, Prepared};
pub use runner::{run, CallOutcome, Caller, CallerStats, RunOptions, RunOutcome, Sink};
pub use summary::{summarize, GroupSummary, RunSummary};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Input(#[from] tunegate_core::InputError),
    #[error("{0}")]
    Store(#[from] tunegate_store::StoreError),
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Resume(String),
    /// A selector or option that names nothing (a run, a store).
    #[error("{0}")]
    Usage(String),
}
