//! Fine-tuning data: check it, split it, export it.
//!
//! "Fine-tuning should not be a hunch." Before any tuning the examples must be
//! clean (no duplicates that over-weight a case, no conflicting labels, no
//! eval case hiding in the training pool), split without leakage, and written
//! in the format the trainer expects. This module holds the rules; the CLI
//! only loads files, counts tokens (through [`TokenCounter`], so the core
//! needs no tokenizer or model) and prints.
//!
//! - [`near`]: normalised text, shingles, MinHash + LSH, exact Jaccard.
//! - [`check`]: `tunegate data check` — findings with file and lines.
//! - [`split`]: `tunegate data split` — stratified, cluster-preserving.
//! - [`export`]: `tunegate data export` — formats, validators, statistics.

pub mod check;
mod check_text;
pub mod export;
pub mod near;
pub mod split;

use crate::error::InputError;
use crate::template::Message;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use check::{check_task, leakage_findings, refuse_on_leakage, CheckOptions, CheckReport};
pub use export::ExportFormat;
pub use split::{split_examples, SplitOptions, SplitResult};

/// What kind of problem a finding is. The order here is the order of the
/// report: what blocks tuning first, warnings last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A line that is not a valid case (bad JSON, unknown field, duplicate id).
    Malformed,
    /// An expected output that breaks the task's contract: a label outside
    /// `task.labels`, an extraction target that is not a JSON object or fails
    /// `task.output_schema`.
    Contract,
    /// An eval case that is also (exactly or nearly) in the examples: a tuned
    /// model would be graded on what it was trained on.
    Leakage,
    /// The same or a near-same input with different expected outputs.
    ConflictingLabels,
    /// The same input (after normalisation) more than once, same output.
    ExactDuplicate,
    /// Inputs whose shingle Jaccard similarity reaches the threshold.
    NearDuplicate,
    EmptyInput,
    EmptyOutput,
    /// The rendered tune prompt plus the expected output is over the token limit.
    OverLong,
    /// The tune prompt cannot be rendered for this case (a missing variable).
    RenderError,
    /// The label distribution is lopsided (a warning: it does not block).
    Imbalance,
}

impl FindingKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FindingKind::Malformed => "malformed",
            FindingKind::Contract => "contract",
            FindingKind::Leakage => "leakage",
            FindingKind::ConflictingLabels => "conflicting_labels",
            FindingKind::ExactDuplicate => "exact_duplicate",
            FindingKind::NearDuplicate => "near_duplicate",
            FindingKind::EmptyInput => "empty_input",
            FindingKind::EmptyOutput => "empty_output",
            FindingKind::OverLong => "over_long",
            FindingKind::RenderError => "render_error",
            FindingKind::Imbalance => "imbalance",
        }
    }

    /// Whether this kind stops tuning. Imbalance alone does not: it is often
    /// the true distribution of the traffic, and the user decides.
    pub fn blocks_tuning(&self) -> bool {
        !matches!(self, FindingKind::Imbalance)
    }
}

/// Lines of another file a finding involves (leakage: the example lines an
/// eval case matches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Related {
    pub file: PathBuf,
    pub lines: Vec<usize>,
}

/// One problem in the data, with everything a person needs to find it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// `error` (blocks tuning) or `warning`.
    pub severity: String,
    pub file: PathBuf,
    /// 1-based lines involved, ascending; empty for file-wide findings.
    pub lines: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<Related>,
    pub message: String,
}

impl Finding {
    pub fn new(kind: FindingKind, file: impl Into<PathBuf>, mut lines: Vec<usize>, message: impl Into<String>) -> Self {
        lines.sort_unstable();
        lines.dedup();
        Finding {
            kind,
            severity: if kind.blocks_tuning() { "error" } else { "warning" }.into(),
            file: file.into(),
            lines,
            related: None,
            message: message.into(),
        }
    }

    pub fn blocks_tuning(&self) -> bool {
        self.kind.blocks_tuning()
    }

    /// `file:1, 7, 12` — the form terminals and editors understand.
    pub fn location(&self) -> String {
        let f = self.file.display();
        match self.lines.as_slice() {
            [] => f.to_string(),
            ls => format!("{f}:{}", ls.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// Counts the tokens of one training example (all its messages, the
/// assistant's included) with the target model's tokenizer. The core has no
/// tokenizer of its own; the CLI passes the GGUF tokenizer for local models,
/// tiktoken for OpenAI models, or [`CharEstimate`].
pub trait TokenCounter {
    fn count(&self, messages: &[Message]) -> usize;
    /// What counts, for the report ("gemma-3-270m (GGUF tokenizer)").
    fn name(&self) -> String;
    /// True when the count is an estimate rather than the model's tokenizer.
    fn is_estimate(&self) -> bool {
        false
    }
}

/// The fallback when no tokenizer for the target model is at hand: 4
/// characters a token (the usual rule of thumb for English with BPE
/// vocabularies) plus 4 tokens of chat framing per message. Always reported
/// as an estimate.
pub struct CharEstimate;

impl TokenCounter for CharEstimate {
    fn count(&self, messages: &[Message]) -> usize {
        messages.iter().map(|m| m.content.chars().count().div_ceil(4) + 4).sum()
    }
    fn name(&self) -> String {
        "estimate: 4 characters a token".into()
    }
    fn is_estimate(&self) -> bool {
        true
    }
}

/// Errors of the data commands.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Input(#[from] InputError),
    /// Eval cases that are also in the examples; tuning on them would grade
    /// the tuned model on its own training data.
    #[error("{}", leakage_message(.0))]
    Leakage(Vec<Finding>),
}

fn leakage_message(f: &[Finding]) -> String {
    let first = f.first().map(|x| {
        let rel = x.related.as_ref().map(|r| format!(" ~ {}:{}", r.file.display(), r.lines.first().copied().unwrap_or(0))).unwrap_or_default();
        format!(" (first: {}{rel})", x.location())
    });
    format!(
        "{} eval case(s) also appear in data.examples{}; remove them from one side before tuning (`tunegate data check` lists them all, `tunegate data split` writes a clean split)",
        f.len(),
        first.unwrap_or_default()
    )
}

/// Token counts summarised: min / mean / p90 / max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Distribution {
    pub min: f64,
    pub mean: f64,
    pub p90: f64,
    pub max: f64,
}

impl Distribution {
    pub fn of(values: &[usize]) -> Option<Distribution> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Some(Distribution {
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p90: crate::stats::percentile(&v, 0.9).unwrap_or(0.0),
            max: v[v.len() - 1],
        })
    }
}

/// The per-example token limit for a target model, and where it comes from.
///
/// - `local:*`: 2048, the sequence length tunegate's local LoRA trainer uses
///   by default for Gemma 3 270M (the model's context is 32k, but training
///   memory grows with sequence length; classification examples are short).
/// - OpenAI `gpt-4o-mini`, `gpt-4o`, `gpt-4.1*`: 65,536 tokens per training
///   example; `gpt-3.5-turbo`: 16,385 (OpenAI fine-tuning guide, 2025).
/// - anything else: 2048, a conservative default.
///
/// `tune.max_seq_len` in the task file overrides all of these.
pub fn token_limit_for(base: &str) -> (usize, &'static str) {
    let model = base.split_once(':').map(|(_, m)| m).unwrap_or(base);
    if base.starts_with("local:") {
        return (2048, "default sequence length for local LoRA");
    }
    if base.starts_with("openai:") {
        if model.starts_with("gpt-3.5-turbo") {
            return (16_385, "OpenAI's limit per training example for gpt-3.5-turbo");
        }
        if model.starts_with("gpt-4o") || model.starts_with("gpt-4.1") {
            return (65_536, "OpenAI's limit per training example");
        }
    }
    (2048, "default limit for models without a published one")
}
