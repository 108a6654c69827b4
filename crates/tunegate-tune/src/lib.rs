//! Fine-tuning, end to end, in one place.
//!
//! Every way tunegate trains — `tunegate tune` (local LoRA or a remote job),
//! the fine-tuning endpoints of `tunegate serve`, `tunegate bench tune` and
//! `tunegate quickstart` — goes through this crate, so "what does tune do with
//! these settings?" has one answer:
//!
//! - [`settings`]: flags over the task file's `tune:` over the recipe of the
//!   task's kind and one table of defaults, resolved and checked once (file, line and field on errors).
//! - [`examples`]: task examples and chat JSONL become training examples by
//!   one converter.
//! - [`local`]: the only caller of the model crate's training loop; training
//!   events go to a [`TrainSink`] (the CLI's progress bar, serve's event log
//!   and the benchmark are three sinks of the same events).
//! - [`metric`]: the per-epoch validation pass rate, computed through the
//!   local provider's own answering path, so it is what `eval` would measure.
//! - [`search`]: `tune --search`, a budgeted search over recipes scored on
//!   the validation set.
//! - [`remote`]: jobs on any OpenAI-compatible fine-tuning API.
//! - [`jobs`]: job records in the store, with a typed adapter reference.

pub mod events;
pub mod examples;
pub mod jobs;
pub mod local;
pub mod metric;
pub mod remote;
pub mod search;
pub mod settings;

pub use events::{NoSink, TrainEvent, TrainSink};
pub use jobs::TunedAdapter;
pub use settings::{Backend, Overrides, SelectBy, Settings};

use tunegate_core::InputError;

/// Why fine-tuning could not go on. `Input` and `Usage` are the user's to fix
/// (exit 2 at the CLI); the rest are failures of the work itself.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The task file or a data file is wrong: file, line, field.
    #[error("{0}")]
    Input(#[from] InputError),
    /// A setting from the command line or a request is out of range, or the
    /// state asked for does not exist (no job to resume, no examples left).
    #[error("{0}")]
    Usage(String),
    /// The data would make the before/after comparison meaningless (eval
    /// cases among the training examples).
    #[error("{0}; see `tunegate data check`")]
    Data(tunegate_core::data::DataError),
    #[error("{0}")]
    Model(#[from] tunegate_model::ModelError),
    #[error("{0}")]
    Store(#[from] tunegate_store::StoreError),
    /// A remote fine-tuning API failed or refused.
    #[error("{0}")]
    Provider(#[from] tunegate_providers::ProviderError),
    #[error("{0}")]
    Io(String),
}

impl TuneError {
    /// Whether the user can fix it by changing input or flags.
    pub fn is_input(&self) -> bool {
        matches!(self, TuneError::Input(_) | TuneError::Usage(_) | TuneError::Data(_))
    }
}

impl From<tunegate_core::data::DataError> for TuneError {
    fn from(e: tunegate_core::data::DataError) -> Self {
        match e {
            tunegate_core::data::DataError::Input(i) => TuneError::Input(i),
            other => TuneError::Data(other),
        }
    }
}
