//! tunegate-core: the task file, datasets, prompt templates, scorers and
//! statistics. Pure logic: it reads the user's files and nothing else (no
//! HTTP, no database, no model), so every rule here is testable in isolation.

pub mod advice_report;
pub mod advise;
pub mod data;
pub mod dataset;
pub mod error;
pub mod lab;
pub mod lab_report;
pub mod judge;
pub mod label;
pub mod paired;
pub mod report;
pub mod review;
pub mod revision;
pub mod scorers;
pub mod stats;
pub mod task;
pub mod template;
pub mod thresholds;

pub use dataset::{load_cases, Case};
pub use error::{CoreError, InputError};
pub use scorers::{AssertionResult, ResponseFacts, Scorer};
pub use task::{ChoiceMode, Params, Price, ProviderSpec, Task, TaskFile, TaskKind};
pub use template::{CompiledPrompt, Message};
