//! The advisor: keep prompting, add retrieval, fix the data, or fine-tune.
//!
//! Pure rules over measured evidence. The CLI gathers the evidence (task
//! file, `data check`, the run store, `git log`), this module turns it into
//! an [`Advice`]: a verdict, the decision table of DESIGN.md filled row by
//! row, prompt anatomy, cost, fragility, failure taxonomy, readiness, churn
//! and numbered next steps. Nothing here guesses where it could measure:
//! a row without evidence says `not measured` and why.
//!
//! Every number the rules compare against is in [`THRESHOLDS`] with its
//! default and the source of that default; a task file overrides any of
//! them under `advise:` (an unknown key is an error naming it).
//!
//! The order of the rules is the order a senior engineer would check:
//! 1. no eval set -> BUILD_EVAL_FIRST;
//! 2. expected outputs missing from the eval set -> WRITE_EXAMPLES_FIRST;
//! 3. leaking, conflicting, duplicated or contract-breaking data -> FIX_DATA
//!    (before any number measured on that data is believed);
//! 4. eval set too small to tell variants apart, or never run -> BUILD_EVAL_FIRST;
//! 5. fewer clean examples than the minimum -> WRITE_EXAMPLES_FIRST;
//! 6. the best run fails mostly on format -> TIGHTEN_CONTRACT;
//! 7. a prompt long because of reference facts, or missing-knowledge
//!    failures -> ADD_RETRIEVAL;
//! 8. the contract or the expected outputs still moving -> KEEP_PROMPTING;
//! 9. the best prompt meets the target at acceptable cost -> KEEP_PROMPTING;
//! 10. a tuning signal (plateau below target after several variants, a long
//!     few-shot prompt, fragility, a cost that tuning pays back) -> FINE_TUNE
//!     when every readiness condition holds, else CONSIDER_FINE_TUNING;
//! 11. no tuning signal -> KEEP_PROMPTING.

use crate::data::check::{CheckReport, LabelCount};
use crate::data::{FindingKind, TokenCounter};
use crate::dataset::{value_text, Case};
use crate::task::normalize_label;
use crate::stats::wilson;
use crate::task::{Price, PromptSource, Task};
use crate::template::{CompiledPrompt, Message};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Version of the JSON report; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

pub use crate::thresholds::{ThresholdDef, ThresholdValue, Thresholds, THRESHOLDS};

// ------------------------------------------------------------------ evidence

/// Facts of the task file.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TaskFacts {
    pub name: String,
    pub kind: String,
    pub labels: Vec<String>,
    pub calls_per_month: Option<u64>,
    /// Prompt ids in file order.
    pub prompts: Vec<String>,
    pub tune_prompt: Option<String>,
    pub tune_base: Option<String>,
    pub tune_epochs: Option<u32>,
    /// The task file path as the user gave it, for commands in next steps.
    pub config: String,
}

impl TaskFacts {
    pub fn from_task(task: &Task, config: &str) -> TaskFacts {
        let f = &task.file;
        TaskFacts {
            name: f.task.name.clone(),
            kind: f.task.kind.as_str().into(),
            labels: f.task.labels.clone(),
            calls_per_month: f.usage.calls_per_month,
            prompts: task.prompt_sources.iter().map(|p| p.id.clone()).collect(),
            tune_prompt: f.tune.as_ref().map(|t| t.prompt.clone()),
            tune_base: f.tune.as_ref().map(|t| t.base.clone()),
            tune_epochs: f.tune.as_ref().and_then(|t| t.epochs),
            config: config.into(),
        }
    }
}

/// What `data check` found, reduced to counts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DataFacts {
    pub eval_file: Option<String>,
    pub eval_cases: usize,
    pub eval_with_expected: usize,
    pub eval_per_label: Vec<LabelCount>,
    pub examples_file: Option<String>,
    pub examples_cases: usize,
    pub malformed_lines: usize,
    pub contract_breaks: usize,
    /// Eval cases that also (nearly) appear in the examples.
    pub leaked_eval_cases: usize,
    /// Their case ids, so the pass rate can be measured without them.
    pub leaked_eval_ids: Vec<String>,
    /// Examples in a conflicting group.
    pub conflicting_examples: usize,
    /// Groups of (near-)same inputs with different expected outputs.
    pub conflict_groups: usize,
    /// Examples that are extra copies (exact or near) of another.
    pub duplicate_examples: usize,
    /// Examples left after removing duplicates (all but one of each
    /// cluster), conflicting groups, contract breaks and examples an eval
    /// case leaks into.
    pub clean_examples: usize,
    pub clean_per_label: Vec<LabelCount>,
    /// Mean tokens of an expected output (4 characters a token).
    pub expected_tokens_mean: f64,
    /// Expected outputs people wrote with `tunegate label` (from the
    /// provenance journals beside the data sets); None without a journal.
    pub human_examples: Option<usize>,
    pub human_eval: Option<usize>,
}

/// Reduces a `data check` report and the loaded cases to [`DataFacts`].
pub fn data_facts(task: &Task, report: Option<&CheckReport>, eval: Option<&[Case]>, examples: Option<&[Case]>) -> DataFacts {
    let mut d = DataFacts {
        eval_file: task.file.data.eval.as_ref().map(|p| p.display().to_string()),
        examples_file: task.file.data.examples.as_ref().map(|p| p.display().to_string()),
        ..Default::default()
    };
    let labels = task.labels();
    let is_cls = task.kind() == crate::task::TaskKind::Classification;
    d.human_examples = task.examples_path().and_then(|p| crate::label::human_labelled(&p));
    d.human_eval = task.eval_path().and_then(|p| crate::label::human_labelled(&p));
    if let Some(ev) = eval {
        d.eval_cases = ev.len();
        d.eval_with_expected = ev.iter().filter(|c| c.expected.as_ref().map(|e| !value_text(e).trim().is_empty()).unwrap_or(false)).count();
        if is_cls {
            d.eval_per_label = crate::data::check::label_counts(labels, ev);
        }
        let exp: Vec<usize> = ev.iter().filter_map(|c| c.expected_text()).map(|t| t.chars().count().div_ceil(4)).collect();
        if !exp.is_empty() {
            d.expected_tokens_mean = exp.iter().sum::<usize>() as f64 / exp.len() as f64;
        }
    }
    let ex_path = task.examples_path();
    let mut removed: HashSet<usize> = HashSet::new();
    if let Some(r) = report {
        for f in &r.files {
            d.malformed_lines += f.malformed;
        }
        for f in &r.findings {
            let in_examples = ex_path.as_ref().map(|p| p == &f.file).unwrap_or(false);
            match f.kind {
                FindingKind::Leakage => {
                    d.leaked_eval_cases += f.lines.len().max(1);
                    if let Some(ev) = eval {
                        d.leaked_eval_ids.extend(ev.iter().filter(|c| f.lines.contains(&c.line)).map(|c| c.id.clone()));
                    }
                    if let Some(rel) = &f.related {
                        removed.extend(rel.lines.iter().copied());
                    }
                }
                FindingKind::ConflictingLabels => {
                    d.conflict_groups += 1;
                    if in_examples {
                        d.conflicting_examples += f.lines.len();
                        removed.extend(f.lines.iter().copied());
                    }
                }
                FindingKind::ExactDuplicate | FindingKind::NearDuplicate => {
                    if in_examples {
                        let extra: Vec<usize> = f.lines.iter().skip(1).copied().filter(|l| !removed.contains(l)).collect();
                        d.duplicate_examples += extra.len();
                        removed.extend(extra);
                    }
                }
                FindingKind::Contract => {
                    d.contract_breaks += f.lines.len().max(1);
                    if in_examples {
                        removed.extend(f.lines.iter().copied());
                    }
                }
                FindingKind::EmptyInput | FindingKind::EmptyOutput | FindingKind::RenderError | FindingKind::OverLong => {
                    if in_examples {
                        removed.extend(f.lines.iter().copied());
                    }
                }
                FindingKind::Malformed | FindingKind::Imbalance => {}
            }
        }
    }
    if let Some(ex) = examples {
        d.examples_cases = ex.len();
        let clean: Vec<Case> = ex.iter().filter(|c| !removed.contains(&c.line) && c.expected.is_some()).cloned().collect();
        d.clean_examples = clean.len();
        if is_cls {
            d.clean_per_label = crate::data::check::label_counts(labels, &clean);
        }
    }
    d
}

/// One block of a prompt recognised as reference facts.
#[derive(Debug, Clone, Serialize)]
pub struct FactsBlock {
    /// The block's first line, shortened.
    pub preview: String,
    pub lines: usize,
    pub tokens: usize,
}

/// Tokens of one prompt variant, in total and by part.
#[derive(Debug, Clone, Serialize)]
pub struct PromptAnatomy {
    pub prompt: String,
    /// Mean over the eval cases sampled: everything sent, framing included.
    pub total: usize,
    /// What describes the behaviour: system text, task description, label
    /// definitions, output format, chat framing.
    pub instructions: usize,
    pub few_shot: usize,
    pub reference_facts: usize,
    /// The case's own input (mean).
    pub input: usize,
    pub facts_blocks: Vec<FactsBlock>,
    pub tokenizer: String,
    pub estimate: bool,
}

/// Words that make a line describe behaviour rather than state a fact.
const DIRECTIVES: &[&str] = &[
    "answer", "respond", "reply", "route", "classify", "return", "output", "write", "use", "must", "should", "never", "always", "do", "don't",
    "if", "only", "format", "choose", "pick", "label", "extract", "you", "your", "json", "exactly", "team", "category", "summarise", "summarize",
    "rewrite", "translate", "ignore", "avoid", "include",
];

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).map(|w| w.to_lowercase())
}

fn is_behaviour(line: &str, labels: &HashSet<String>) -> bool {
    words(line).any(|w| DIRECTIVES.contains(&w.as_str()) || labels.contains(&w))
}

/// A table row: 2+ `|` or tabs, or CSV (3+ commas, most without a space
/// after them, so a prose enumeration is not a table).
fn is_table_line(line: &str) -> bool {
    let commas = line.matches(',').count();
    line.matches('|').count() >= 2 || line.matches('\t').count() >= 2 || (commas >= 3 && line.matches(", ").count() * 2 < commas)
}

fn is_fact_line(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() {
        return false;
    }
    let list_item = t.starts_with("- ") || t.starts_with("* ") || t.starts_with("• ") || t.split_once(". ").map(|(n, _)| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty()).unwrap_or(false);
    let key_value = t.split_once(':').map(|(k, v)| !k.trim().is_empty() && k.split_whitespace().count() <= 4 && !v.trim().is_empty()).unwrap_or(false);
    t.chars().any(|c| c.is_ascii_digit() || "$€£%".contains(c)) || is_table_line(t) || list_item || key_value
}

/// Splits rendered prompt text into the blocks that are reference facts.
///
/// The heuristic, over blocks separated by blank lines:
/// - a line *describes behaviour* when it has a directive word (answer,
///   route, must, never, output, JSON, you, ...) or names one of the task's
///   labels (label definitions are instructions);
/// - a line *states a fact* otherwise when it has a digit or a currency or
///   percent sign, is a table row (2+ `|` or tabs, 3+ commas), a list item,
///   or a `key: value` pair;
/// - a block is reference facts when it is a table (3+ table rows), or has
///   5+ lines of which at least 60% state facts, or is prose of 300+
///   characters in 3+ sentences of which at most 20% describe behaviour
///   (a policy text).
pub fn reference_facts(text: &str, labels: &[String]) -> Vec<(String, usize)> {
    let labels: HashSet<String> = labels.iter().map(|l| normalize_label(l)).collect();
    let mut out = vec![];
    for block in text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let lines: Vec<&str> = block.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let facts = lines.iter().filter(|l| !is_behaviour(l, &labels) && is_fact_line(l)).count();
        let table = lines.iter().filter(|l| is_table_line(l) && !is_behaviour(l, &labels)).count() >= 3;
        let listy = lines.len() >= 5 && facts as f64 >= 0.6 * lines.len() as f64;
        let sentences: Vec<&str> = block.split(['.', '!', '?']).map(str::trim).filter(|s| s.len() > 3).collect();
        let behaviour_sentences = sentences.iter().filter(|s| is_behaviour(s, &labels)).count();
        let policy = block.len() >= 300 && sentences.len() >= 3 && behaviour_sentences as f64 <= 0.2 * sentences.len() as f64;
        if table || listy || policy {
            out.push((block.to_string(), lines.len()));
        }
    }
    out
}

fn text_tokens(counter: &dyn TokenCounter, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let with = counter.count(&[Message::new("user", text)]);
    let without = counter.count(&[Message::new("user", "")]);
    with.saturating_sub(without)
}

fn flatten(ms: &[Message]) -> String {
    crate::template::flatten_messages(ms)
}

/// Measures one prompt variant: the total over up to 50 eval cases, the
/// few-shot part (the rendering with and without shots), reference facts
/// (the heuristic of [`reference_facts`] over the rendering without shots
/// and without the case's input), the input, and instructions as the rest.
pub fn anatomy(task: &Task, src: &PromptSource, examples: Option<&[Case]>, eval: &[Case], counter: &dyn TokenCounter) -> Result<PromptAnatomy, crate::InputError> {
    let file = task.eval_path().unwrap_or_default();
    let full = CompiledPrompt::compile(task, src, examples)?;
    let bare_src = PromptSource { shots: None, ..src.clone() };
    let bare = CompiledPrompt::compile(task, &bare_src, None)?;
    let sample: Vec<&Case> = eval.iter().take(50).collect();
    let (mut total, mut input) = (0usize, 0usize);
    for c in &sample {
        total += counter.count(&full.render(c, &file)?);
        input += text_tokens(counter, &c.input_text());
    }
    let n = sample.len().max(1);
    let (total, input) = (total / n, input / n);
    let (few_shot, facts_blocks) = match sample.first() {
        Some(c) => {
            let with = counter.count(&full.render(c, &file)?);
            let bare_ms = bare.render(c, &file)?;
            let without = counter.count(&bare_ms);
            let text = flatten(&bare_ms).replace(&c.input_text(), "");
            let blocks = reference_facts(&text, task.labels())
                .into_iter()
                .map(|(b, lines)| FactsBlock { preview: short(b.lines().next().unwrap_or(""), 48), lines, tokens: text_tokens(counter, &b) })
                .collect::<Vec<_>>();
            (with.saturating_sub(without), blocks)
        }
        None => (0, vec![]),
    };
    let reference_facts: usize = facts_blocks.iter().map(|b| b.tokens).sum();
    Ok(PromptAnatomy {
        prompt: src.id.clone(),
        total,
        instructions: total.saturating_sub(few_shot + reference_facts + input),
        few_shot,
        reference_facts,
        input,
        facts_blocks,
        tokenizer: counter.name(),
        estimate: counter.is_estimate(),
    })
}

/// One scored (or errored) case of a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub prompt: String,
    pub provider: String,
    pub case_id: String,
    pub repeat: u32,
    pub tags: Vec<String>,
    pub pass: Option<bool>,
    pub error: Option<String>,
    pub output: Option<String>,
    pub expected: Option<String>,
    /// The rendered prompt (failures only: missing-knowledge detection).
    pub prompt_text: Option<String>,
    pub assertions: Value,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct RunEvidence {
    pub run_id: String,
    pub created_at: String,
    pub repeat: u32,
    pub outcomes: Vec<Outcome>,
}

/// The price of a provider, and where it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderPrice {
    pub provider: String,
    pub price: Option<Price>,
    pub source: String,
    /// Hosted fine-tuning of this provider's model: None when it can be
    /// tuned as usual; a warning (`closed` false) before its vendor's
    /// cut-off, the refusal (`closed` true) after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_tuning: Option<HostedTuningNote>,
    /// When the model shuts down (or did: its price is then historic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retirement: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostedTuningNote {
    pub closed: bool,
    pub note: String,
}

/// The tuned embedded model served on your own machines (`tunegate serve`,
/// or vLLM with the PEFT adapter): no training fee (LoRA on a CPU), a
/// machine price instead of a token price.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SelfHostedProjection {
    pub prompt: String,
    /// Machines busy all month to keep up with the calls.
    pub machines: u64,
    pub busy_hours: f64,
    pub monthly_usd: f64,
    pub current_monthly_usd: Option<f64>,
    pub assumptions: String,
}

/// A stored task revision, aged relative to now.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionEvent {
    pub age_days: f64,
    /// `contract`, `prompt` or `expected`.
    pub kind: String,
    pub name: String,
    pub hash: String,
}

/// A git commit touching the task, aged relative to now.
#[derive(Debug, Clone, Serialize)]
pub struct GitCommit {
    pub age_days: f64,
    /// Whether it changed (not created) the contract (task section or
    /// assertions of the task file), a prompt (prompt entries or prompt
    /// files), or the data files.
    pub contract: bool,
    pub prompt: bool,
    pub data: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnEvidence {
    pub store: Vec<RevisionEvent>,
    /// None when the task is not in a git repository (or git is missing).
    pub git: Option<Vec<GitCommit>>,
    pub git_note: Option<String>,
}

/// Everything the advisor reads.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub task: TaskFacts,
    pub data: DataFacts,
    pub anatomy: Vec<PromptAnatomy>,
    pub run: Option<RunEvidence>,
    pub prices: Vec<ProviderPrice>,
    pub churn: ChurnEvidence,
    /// The latest prompt-lab results stored for the task.
    pub lab: LabEvidence,
    /// Blind reviews by people and judge verdicts in the store.
    pub reviews: ReviewEvidence,
    pub tuning: TuningFacts,
    /// What the CLI could not gather, and why.
    pub notes: Vec<String>,
}

/// What `tunegate tune` would train with, and what the latest local job for
/// the task trained with: the recipe is part of the advice to tune.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TuningFacts {
    /// The recipe a local `tunegate tune` would use now (the task kind's,
    /// under the task file's `tune:`), in words.
    pub recipe: Option<String>,
    pub last_job: Option<TunedJobFacts>,
}

/// A finished local tuning job, as the advice shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TunedJobFacts {
    pub id: String,
    /// The recipe it trained with (the chosen trial's, after a search).
    pub recipe: String,
    /// The validation pass rate at the kept epoch.
    pub validation_pass_rate: Option<f64>,
    /// Trials of its `--search`, if it was one.
    pub search_trials: Option<usize>,
}

impl TuningFacts {
    /// One line for the advice's text.
    pub fn describe(&self) -> Option<String> {
        let job = self.last_job.as_ref().map(|j| {
            let how = j.search_trials.map(|n| format!(", chosen by a {n}-trial search")).unwrap_or_default();
            let pass = j.validation_pass_rate.map(|p| format!(", validation pass rate {}", pct(p))).unwrap_or_default();
            format!("latest tuned job {}: {}{how}{pass}", j.id, j.recipe)
        });
        match (&self.recipe, job) {
            (None, None) => None,
            (Some(r), None) => Some(format!("tune would train {r} (`tune --search` tries variations on the validation set)")),
            (None, Some(j)) => Some(j),
            (Some(r), Some(j)) => Some(format!("tune would train {r}; {j}")),
        }
    }
}

/// `tunegate prompt minimize | sweep | vary` results, as stored with their runs.
#[derive(Debug, Clone, Default)]
pub struct LabEvidence {
    pub minimize: Option<crate::lab::MinimizeReport>,
    pub sweep: Option<crate::lab::SweepReport>,
    pub vary: Option<crate::lab::VaryReport>,
}

/// One line on a learning curve: its ends, its gain and its shape.
pub fn sweep_summary(sw: &crate::lab::SweepReport) -> String {
    let (Some(first), Some(last)) = (sw.points.first(), sw.points.last()) else { return "no point measured".into() };
    format!(
        "few-shot curve of `{}`@{} (prompt sweep, run {}): k={} {} -> k={} {}, best gain {} (p {}), {}",
        sw.prompt,
        sw.provider,
        sw.run_id,
        first.shown,
        pct(first.pooled.mean),
        last.shown,
        pct(last.pooled.mean),
        pts(sw.gain),
        crate::paired::fmt_p(sw.gain_p),
        sw.shape.as_str()
    )
}

/// One line on a minimization: the smallest prompt and what it saves.
pub fn minimize_summary(m: &crate::lab::MinimizeReport) -> String {
    if m.best_dropped.is_empty() {
        return format!("prompt minimize (run {}): no part of `{}` can be dropped without a significant loss on {}", m.run_id, m.prompt, m.provider);
    }
    let save = m.monthly_saving_usd.map(|u| format!(", {}/month saved", usd(u))).unwrap_or_default();
    format!(
        "prompt minimize (run {}): `{}` works on {} at {} tokens instead of {} ({} shorter, {} vs {}, not significantly worse){save}{}",
        m.run_id,
        m.prompt,
        m.provider,
        int(m.best_tokens),
        int(m.full_tokens),
        pct(m.token_saving),
        pct(m.best.rate),
        pct(m.full.rate),
        m.written_as.as_ref().map(|w| format!("; written as `{w}`")).unwrap_or_default()
    )
}

/// One line on a fragility measurement.
pub fn vary_summary(v: &crate::lab::VaryReport) -> String {
    let worst = v.family_range.iter().max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal)).map(|(f, r)| format!("; most fragile to {f} ({})", pts(*r))).unwrap_or_default();
    format!(
        "prompt vary (run {}): {} variants of `{}`@{}: {}–{} (range {}, sd {}), {} of {} cases flip{worst}",
        v.run_id,
        v.variants.len(),
        v.prompt,
        v.provider,
        pct(v.min),
        pct(v.max),
        pts(v.range),
        pts(v.sd),
        v.flipping_cases,
        v.cases
    )
}

/// People's blind side-by-side reviews (`tunegate review`) and judge
/// verdicts (`compare --judge`): evidence about quality that a reference
/// answer cannot give for free text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReviewEvidence {
    pub reviews: u64,
    pub judge_verdicts: u64,
    /// The latest review session: sides and the tally.
    pub latest: Option<ReviewTally>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReviewTally {
    pub side_a: String,
    pub side_b: String,
    pub a_wins: u64,
    pub b_wins: u64,
    pub ties: u64,
    pub both_bad: u64,
}

// -------------------------------------------------------------------- advice

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    BuildEvalFirst,
    WriteExamplesFirst,
    FixData,
    TightenContract,
    AddRetrieval,
    KeepPrompting,
    ConsiderFineTuning,
    FineTune,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::BuildEvalFirst => "BUILD_EVAL_FIRST",
            Verdict::WriteExamplesFirst => "WRITE_EXAMPLES_FIRST",
            Verdict::FixData => "FIX_DATA",
            Verdict::TightenContract => "TIGHTEN_CONTRACT",
            Verdict::AddRetrieval => "ADD_RETRIEVAL",
            Verdict::KeepPrompting => "KEEP_PROMPTING",
            Verdict::ConsiderFineTuning => "CONSIDER_FINE_TUNING",
            Verdict::FineTune => "FINE_TUNE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Prompting,
    Tuning,
    Retrieval,
    Neutral,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    High,
    Medium,
    Low,
    None,
}

/// One row of DESIGN.md's decision table.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    pub row: String,
    pub measured: bool,
    /// The evidence with its numbers, or `not measured: why`.
    pub evidence: String,
    pub points_to: Side,
    pub confidence: Confidence,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    pub prompt: String,
    pub provider: String,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    /// None when the provider has no price.
    pub monthly_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TunedProjection {
    pub provider: String,
    pub prompt: String,
    pub prompt_tokens: f64,
    pub monthly_usd: f64,
    pub current_monthly_usd: f64,
    pub training_usd: f64,
    pub training_tokens: f64,
    /// None when tuning saves nothing per month.
    pub break_even_months: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CostReport {
    pub calls_per_month: Option<u64>,
    pub lines: Vec<CostLine>,
    pub tuned: Option<TunedProjection>,
    pub self_hosted: Option<SelfHostedProjection>,
    /// The hosted projection's provider can no longer be tuned (its
    /// vendor's cut-off has passed): only the self-hosted line holds.
    pub hosted_tuning_closed: bool,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub name: String,
    pub n: u64,
    pub passed: u64,
    pub pass_rate: f64,
    pub ci95: (f64, f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStat {
    pub prompt: String,
    pub provider: String,
    pub n: u64,
    pub passed: u64,
    pub errors: u64,
    pub pass_rate: f64,
    pub ci95: (f64, f64),
    /// Pass rate per repeat (one entry without --repeat).
    pub repeat_rates: Vec<f64>,
    pub prompt_tokens_mean: Option<f64>,
    pub completion_tokens_mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Fragility {
    pub groups: Vec<GroupStat>,
    /// Largest max-min pass rate across prompts for one provider.
    pub variant_spread: Option<f64>,
    /// Largest max-min pass rate across repeats of one group.
    pub repeat_spread: Option<f64>,
    /// Share of the best group's cases whose verdict differs across repeats.
    pub flip_rate: Option<f64>,
    pub slices: Vec<Rate>,
    pub weak_slices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FailureTaxonomy {
    pub prompt: String,
    pub provider: String,
    pub scored: u64,
    pub failures: u64,
    pub format: u64,
    /// Format failures by kind: not_json, schema, label_outside_set, extra_text.
    pub format_kinds: BTreeMap<String, u64>,
    pub content: u64,
    pub missing_knowledge: u64,
    pub refusals: u64,
    /// Not counted against the model.
    pub provider_errors: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Readiness {
    pub examples_cases: usize,
    pub clean_examples: usize,
    pub removed: BTreeMap<String, usize>,
    pub clean_per_label: Vec<LabelCount>,
    pub labels_short: Vec<(String, usize)>,
    pub eval_cases: usize,
    /// Half-width of the 95% interval at the best pass rate (50% when none).
    pub eval_ci_half_width: f64,
    pub min_examples: f64,
    pub typical_examples: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChurnReport {
    pub contract_changes_7d: usize,
    pub contract_changes_30d: usize,
    pub prompt_changes_7d: usize,
    pub prompt_changes_30d: usize,
    pub expected_changes_7d: usize,
    pub expected_changes_30d: usize,
    /// Days since the contract last changed; with `at_least`, no change is
    /// known and this is the age of the oldest record.
    pub days_since_contract_change: Option<f64>,
    pub at_least: bool,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}


/// The advisor's answer. Its JSON form is the `--format json` output
/// (schema in README.md, `schema_version` 1).
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub schema_version: u32,
    pub task: String,
    pub run_id: Option<String>,
    pub verdict: Verdict,
    /// One sentence: why this verdict.
    pub summary: String,
    /// The evidence behind the verdict, each with its number.
    pub reasons: Vec<String>,
    /// When tuning is advised: the short prompt to keep on the tuned model.
    pub keep_prompt: Option<String>,
    pub table: Vec<DecisionRow>,
    pub anatomy: Vec<PromptAnatomy>,
    pub cost: CostReport,
    pub fragility: Fragility,
    pub failures: Option<FailureTaxonomy>,
    pub readiness: Readiness,
    pub churn: ChurnReport,
    pub next_steps: Vec<Step>,
    pub thresholds: Vec<ThresholdValue>,
    pub tuning: TuningFacts,
    pub notes: Vec<String>,
}

// --------------------------------------------------------------- formatting

/// " (N written by people with `tunegate label`)", when a journal says so.
fn human(n: Option<usize>) -> String {
    match n {
        Some(n) => format!(" ({n} written by people with `tunegate label`)"),
        None => String::new(),
    }
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub fn pts(x: f64) -> String {
    format!("{:.1} points", x * 100.0)
}

/// 2300 -> "2,300".
pub fn int(n: f64) -> String {
    let n = n.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn usd(x: f64) -> String {
    if x >= 100.0 {
        format!("${}", int(x))
    } else {
        format!("${x:.2}")
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Half-width of the 95% Wilson interval at pass rate `p` over `n` cases.
pub fn half_width(p: f64, n: usize) -> f64 {
    let k = (p * n as f64).round() as u64;
    let (lo, hi) = wilson(k, n as u64);
    (hi - lo) / 2.0
}

// -------------------------------------------------------------- computation

fn group_stats(run: &RunEvidence) -> Vec<GroupStat> {
    #[derive(Default)]
    struct Acc {
        n: u64,
        passed: u64,
        errors: u64,
        by_repeat: BTreeMap<u32, (u64, u64)>,
        pt: (f64, u64),
        ct: (f64, u64),
    }
    let mut order: Vec<(String, String)> = vec![];
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for o in &run.outcomes {
        let key = (o.prompt.clone(), o.provider.clone());
        if !acc.contains_key(&key) {
            order.push(key.clone());
        }
        let a = acc.entry(key).or_default();
        a.n += 1;
        if o.error.is_some() {
            a.errors += 1;
            continue;
        }
        let r = a.by_repeat.entry(o.repeat).or_default();
        r.1 += 1;
        if o.pass == Some(true) {
            a.passed += 1;
            r.0 += 1;
        }
        if let Some(t) = o.prompt_tokens {
            a.pt.0 += t as f64;
            a.pt.1 += 1;
        }
        if let Some(t) = o.completion_tokens {
            a.ct.0 += t as f64;
            a.ct.1 += 1;
        }
    }
    order
        .into_iter()
        .map(|k| {
            let a = &acc[&k];
            let scored = a.n - a.errors;
            GroupStat {
                prompt: k.0.clone(),
                provider: k.1.clone(),
                n: a.n,
                passed: a.passed,
                errors: a.errors,
                pass_rate: if scored == 0 { 0.0 } else { a.passed as f64 / scored as f64 },
                ci95: wilson(a.passed, scored),
                repeat_rates: a.by_repeat.values().map(|(p, n)| if *n == 0 { 0.0 } else { *p as f64 / *n as f64 }).collect(),
                prompt_tokens_mean: (a.pt.1 > 0).then(|| a.pt.0 / a.pt.1 as f64),
                completion_tokens_mean: (a.ct.1 > 0).then(|| a.ct.0 / a.ct.1 as f64),
            }
        })
        .collect()
}

/// The best group: highest pass rate; ties go to the shorter prompt.
fn best_group<'a>(groups: &'a [GroupStat], anatomy: &[PromptAnatomy]) -> Option<&'a GroupStat> {
    let tokens = |g: &GroupStat| anatomy.iter().find(|a| a.prompt == g.prompt).map(|a| a.total).unwrap_or(usize::MAX);
    groups.iter().filter(|g| g.n > g.errors).max_by(|a, b| a.pass_rate.total_cmp(&b.pass_rate).then(tokens(b).cmp(&tokens(a))))
}

const REFUSALS: &[&str] = &["i can't help", "i cannot help", "i can't assist", "i cannot assist", "i'm sorry, but", "i am sorry, but", "as an ai", "i won't", "i will not", "i'm unable to", "i am unable to"];
const UNKNOWNS: &[&str] = &["i don't know", "i do not know", "no information", "not provided", "don't have information", "do not have information", "don't have access", "not mentioned", "cannot find", "can't find", "not sure"];

/// Facts an expected output carries: numbers and capitalised words that
/// are not the first word of a sentence.
fn fact_tokens(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut sentence_start = true;
    for w in s.split_whitespace() {
        let t = w.trim_matches(|c: char| !c.is_alphanumeric());
        if t.len() >= 2 && (t.chars().any(|c| c.is_ascii_digit()) || (!sentence_start && t.chars().next().map(char::is_uppercase).unwrap_or(false))) {
            out.push(t.to_lowercase());
        }
        sentence_start = w.ends_with(['.', '!', '?', ':']);
    }
    out
}

enum FailureClass {
    Format(String),
    Refusal,
    Knowledge,
    Content,
}

/// Classifies one failure. Order: refusal wording, then a format failure
/// the scorers flagged (`detail.format_failure`) or a label buried in extra
/// text, then missing knowledge (the output says it does not know, or —
/// outside classification — the expected output carries facts, numbers or
/// names, found neither in the rendered prompt nor in the output), else content.
fn classify(o: &Outcome, kind: &str, labels: &[String]) -> FailureClass {
    let out = o.output.as_deref().unwrap_or("");
    let low = out.to_lowercase();
    if REFUSALS.iter().any(|r| low.contains(r)) {
        return FailureClass::Refusal;
    }
    let ff = o.assertions.as_array().into_iter().flatten().find_map(|a| a.get("detail").and_then(|d| d.get("format_failure")).and_then(|f| f.as_str()).map(str::to_string));
    if let Some(f) = ff {
        if f == "label_outside_set" {
            let norm: Vec<String> = labels.iter().map(|l| normalize_label(l)).collect();
            let found: HashSet<String> = words(out).filter(|w| norm.contains(w)).collect();
            if found.len() == 1 {
                return FailureClass::Format("extra_text".into());
            }
        }
        return FailureClass::Format(f);
    }
    if UNKNOWNS.iter().any(|r| low.contains(r)) {
        return FailureClass::Knowledge;
    }
    if kind != "classification" {
        if let (Some(exp), Some(prompt)) = (&o.expected, &o.prompt_text) {
            let p = prompt.to_lowercase();
            // The facts of an extraction target are its values, not its keys
            // (`AddressNumber` is never in the prompt and no fact is missing).
            let values = match serde_json::from_str::<Value>(exp) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => crate::dataset::value_words(&v),
                _ => exp.clone(),
            };
            let missing = fact_tokens(&values).into_iter().filter(|t| !p.contains(t.as_str()) && !low.contains(t.as_str())).count();
            if missing > 0 {
                return FailureClass::Knowledge;
            }
        }
    }
    FailureClass::Content
}

fn taxonomy(run: &RunEvidence, best: &GroupStat, kind: &str, labels: &[String]) -> FailureTaxonomy {
    let mut t = FailureTaxonomy { prompt: best.prompt.clone(), provider: best.provider.clone(), ..Default::default() };
    for o in run.outcomes.iter().filter(|o| o.prompt == best.prompt && o.provider == best.provider) {
        if o.error.is_some() {
            t.provider_errors += 1;
            continue;
        }
        t.scored += 1;
        if o.pass == Some(true) {
            continue;
        }
        t.failures += 1;
        match classify(o, kind, labels) {
            FailureClass::Format(k) => {
                t.format += 1;
                *t.format_kinds.entry(k).or_default() += 1;
            }
            FailureClass::Refusal => t.refusals += 1,
            FailureClass::Knowledge => t.missing_knowledge += 1,
            FailureClass::Content => t.content += 1,
        }
    }
    t
}

fn fragility(run: &RunEvidence, groups: &[GroupStat], best: &GroupStat, th: &Thresholds) -> Fragility {
    let mut f = Fragility { groups: groups.to_vec(), ..Default::default() };
    let mut providers: Vec<&str> = groups.iter().map(|g| g.provider.as_str()).collect();
    providers.dedup();
    for p in providers {
        let rates: Vec<f64> = groups.iter().filter(|g| g.provider == p && g.n > g.errors).map(|g| g.pass_rate).collect();
        if rates.len() >= 2 {
            let spread = rates.iter().cloned().fold(f64::MIN, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min);
            f.variant_spread = Some(f.variant_spread.unwrap_or(0.0).max(spread));
        }
    }
    for g in groups.iter().filter(|g| g.repeat_rates.len() >= 2) {
        let spread = g.repeat_rates.iter().cloned().fold(f64::MIN, f64::max) - g.repeat_rates.iter().cloned().fold(f64::MAX, f64::min);
        f.repeat_spread = Some(f.repeat_spread.unwrap_or(0.0).max(spread));
    }
    let mine: Vec<&Outcome> = run.outcomes.iter().filter(|o| o.prompt == best.prompt && o.provider == best.provider && o.error.is_none()).collect();
    if best.repeat_rates.len() >= 2 {
        let mut by_case: BTreeMap<&str, BTreeSet<bool>> = BTreeMap::new();
        for o in &mine {
            by_case.entry(&o.case_id).or_default().insert(o.pass == Some(true));
        }
        let flips = by_case.values().filter(|s| s.len() > 1).count();
        f.flip_rate = Some(if by_case.is_empty() { 0.0 } else { flips as f64 / by_case.len() as f64 });
    }
    let mut tags: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for o in &mine {
        for t in &o.tags {
            let e = tags.entry(t).or_default();
            e.0 += 1;
            if o.pass == Some(true) {
                e.1 += 1;
            }
        }
    }
    for (tag, (n, p)) in tags {
        let rate = p as f64 / n as f64;
        f.slices.push(Rate { name: tag.into(), n, passed: p, pass_rate: rate, ci95: wilson(p, n) });
        if n as f64 >= th.get("min_slice_cases") && best.pass_rate - rate >= th.get("slice_gap") {
            f.weak_slices.push(format!("`{tag}`: {} over {n} cases vs {} overall ({} below)", pct(rate), pct(best.pass_rate), pts(best.pass_rate - rate)));
        }
    }
    f
}

fn churn(ev: &ChurnEvidence) -> ChurnReport {
    let mut c = ChurnReport::default();
    // Store: a revision is a hash that differs from the previous record of
    // the same (kind, name).
    let mut events: Vec<&RevisionEvent> = ev.store.iter().collect();
    events.sort_by(|a, b| b.age_days.total_cmp(&a.age_days));
    let mut last: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut store_changes: Vec<(&str, f64)> = vec![];
    let mut oldest: Option<f64> = None;
    for e in &events {
        oldest = Some(oldest.unwrap_or(0.0).max(e.age_days));
        let k = (e.kind.as_str(), e.name.as_str());
        if let Some(prev) = last.get(&k) {
            if *prev != e.hash {
                store_changes.push((e.kind.as_str(), e.age_days));
            }
        }
        last.insert(k, &e.hash);
    }
    let count = |v: &[(&str, f64)], kind: &str, days: f64| v.iter().filter(|(k, a)| *k == kind && *a <= days).count();
    if !ev.store.is_empty() {
        c.sources.push(format!("run store: {} revision records", ev.store.len()));
    }
    let mut git_changes: Vec<(&str, f64)> = vec![];
    if let Some(commits) = &ev.git {
        c.sources.push(format!("git: {} commits touching the task", commits.len()));
        for g in commits {
            for (flag, kind) in [(g.contract, "contract"), (g.prompt, "prompt"), (g.data, "expected")] {
                if flag {
                    git_changes.push((kind, g.age_days));
                }
            }
            oldest = Some(oldest.unwrap_or(0.0).max(g.age_days));
        }
    }
    // The same edit is often seen by both sources; take the larger count.
    let both = |kind: &str, days: f64| count(&store_changes, kind, days).max(count(&git_changes, kind, days));
    c.contract_changes_7d = both("contract", 7.0);
    c.contract_changes_30d = both("contract", 30.0);
    c.prompt_changes_7d = both("prompt", 7.0);
    c.prompt_changes_30d = both("prompt", 30.0);
    c.expected_changes_7d = both("expected", 7.0);
    c.expected_changes_30d = both("expected", 30.0);
    let last_change = store_changes
        .iter()
        .filter(|(k, _)| *k == "contract")
        .map(|x| x.1)
        .chain(ev.git.iter().flatten().filter(|g| g.contract).map(|g| g.age_days))
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.min(a))));
    match (last_change, oldest) {
        (Some(d), _) => c.days_since_contract_change = Some(d),
        (None, Some(o)) => {
            c.days_since_contract_change = Some(o);
            c.at_least = true;
        }
        (None, None) => {}
    }
    c
}

fn cost(ev: &Evidence, groups: &[GroupStat], best: Option<&GroupStat>, th: &Thresholds) -> CostReport {
    let mut r = CostReport { calls_per_month: ev.task.calls_per_month, ..Default::default() };
    let price_of = |p: &str| ev.prices.iter().find(|x| x.provider == p).and_then(|x| x.price);
    let tokens_of = |prompt: &str, measured: Option<f64>| -> f64 { ev.anatomy.iter().find(|a| a.prompt == prompt).map(|a| a.total as f64).or(measured).unwrap_or(0.0) };
    let completion = |g: Option<&GroupStat>| g.and_then(|g| g.completion_tokens_mean).unwrap_or(ev.data.expected_tokens_mean.max(1.0));
    let Some(calls) = ev.task.calls_per_month else {
        r.notes.push("usage.calls_per_month is not set: no monthly cost (add it under `usage:`)".into());
        return r;
    };
    let calls = calls as f64;
    let monthly = |price: Option<Price>, pt: f64, ct: f64| price.map(|p| calls * (pt * p.input_per_mtok + ct * p.output_per_mtok) / 1e6);
    if groups.is_empty() {
        for a in &ev.anatomy {
            for p in &ev.prices {
                let ct = completion(None);
                r.lines.push(CostLine { prompt: a.prompt.clone(), provider: p.provider.clone(), prompt_tokens: a.total as f64, completion_tokens: ct, monthly_usd: monthly(p.price, a.total as f64, ct) });
            }
        }
    } else {
        for g in groups {
            let (pt, ct) = (tokens_of(&g.prompt, g.prompt_tokens_mean), completion(Some(g)));
            r.lines.push(CostLine { prompt: g.prompt.clone(), provider: g.provider.clone(), prompt_tokens: pt, completion_tokens: ct, monthly_usd: monthly(price_of(&g.provider), pt, ct) });
        }
    }
    for p in ev.prices.iter().filter(|p| p.price.is_none()) {
        r.notes.push(format!("{}: {}", p.provider, p.source));
    }
    for p in &ev.prices {
        if let Some(n) = &p.retirement {
            r.notes.push(format!("{}: {n}", p.provider));
        }
    }
    // The tuned projection: the best group's provider (or the first priced
    // one), serving the short prompt at the tuned price.
    let short_prompt = short_prompt(ev);
    let base = best.filter(|g| price_of(&g.provider).is_some()).map(|g| (g.provider.clone(), g.prompt.clone(), g.completion_tokens_mean)).or_else(|| {
        r.lines.iter().filter(|l| l.monthly_usd.is_some()).max_by(|a, b| a.monthly_usd.unwrap_or(0.0).total_cmp(&b.monthly_usd.unwrap_or(0.0))).map(|l| (l.provider.clone(), l.prompt.clone(), Some(l.completion_tokens)))
    });
    if let (Some((provider, prompt, ct)), Some(sp)) = (base, short_prompt) {
        let price = price_of(&provider).expect("priced");
        let ct = ct.unwrap_or(ev.data.expected_tokens_mean.max(1.0));
        let cur_pt = tokens_of(&prompt, None);
        let sp_tokens = tokens_of(&sp, None);
        let mult = th.get("tuned_price_multiplier");
        let tuned_price = Price { input_per_mtok: price.input_per_mtok * mult, output_per_mtok: price.output_per_mtok * mult };
        let current = monthly(Some(price), cur_pt, ct).unwrap_or(0.0);
        let tuned = monthly(Some(tuned_price), sp_tokens, ct).unwrap_or(0.0);
        let epochs = ev.task.tune_epochs.map(|e| e as f64).unwrap_or(th.get("epochs"));
        let training_tokens = ev.data.clean_examples as f64 * (sp_tokens + ct) * epochs;
        let training = training_tokens * th.get("training_usd_per_mtok") / 1e6;
        let saving = current - tuned;
        r.tuned = Some(TunedProjection {
            provider,
            prompt: sp,
            prompt_tokens: sp_tokens,
            monthly_usd: tuned,
            current_monthly_usd: current,
            training_usd: training,
            training_tokens,
            break_even_months: (saving > 0.0).then(|| training / saving),
        });
    } else if r.lines.iter().all(|l| l.monthly_usd.is_none()) {
        r.notes.push("no provider has a price: the tuned projection needs one (set `price:` on a provider)".into());
    }
    // What hosted tuning of the projection's provider can still do.
    if let Some(h) = r.tuned.as_ref().and_then(|t| ev.prices.iter().find(|p| p.provider == t.provider)).and_then(|p| p.hosted_tuning.clone()) {
        r.hosted_tuning_closed = h.closed;
        r.notes.push(if h.closed { format!("the hosted tuned projection cannot be bought: {}", h.note) } else { h.note });
    }
    // Self-hosted: the short prompt on the tuned embedded model, priced by
    // the machine-hours its tokens take.
    if let Some(sp) = self::short_prompt(ev) {
        let (pt, ct) = (tokens_of(&sp, None), completion(best));
        let hours = calls * (pt / th.get("self_hosted_prefill_tok_s") + ct / th.get("self_hosted_decode_tok_s")) / 3600.0;
        const MONTH_H: f64 = 730.0;
        let machines = (hours / MONTH_H).ceil().max(1.0);
        let usd_h = th.get("self_hosted_usd_per_hour");
        let current = r.tuned.as_ref().map(|t| t.current_monthly_usd).or_else(|| best.and_then(|b| r.lines.iter().find(|l| l.prompt == b.prompt && l.provider == b.provider)).and_then(|l| l.monthly_usd));
        r.self_hosted = Some(SelfHostedProjection {
            prompt: sp,
            machines: machines as u64,
            busy_hours: hours,
            monthly_usd: machines * MONTH_H * usd_h,
            current_monthly_usd: current,
            assumptions: format!(
                "{} machine(s) at ${usd_h:.2}/hour, each reading {:.0} prompt and writing {:.0} completion tokens/s (advise: self_hosted_usd_per_hour, self_hosted_prefill_tok_s, self_hosted_decode_tok_s); training is LoRA on your CPU, no fee",
                machines,
                th.get("self_hosted_prefill_tok_s"),
                th.get("self_hosted_decode_tok_s")
            ),
        });
    }
    r
}

/// The prompt to keep on a tuned model: `tune.prompt`, else the shortest
/// prompt without few-shot examples or reference facts (it still states
/// the task), else the shortest.
fn short_prompt(ev: &Evidence) -> Option<String> {
    if let Some(p) = &ev.task.tune_prompt {
        return Some(p.clone());
    }
    if let Some(w) = ev.lab.minimize.as_ref().and_then(|m| m.written_as.clone()) {
        return Some(w);
    }
    ev.anatomy
        .iter()
        .filter(|a| a.few_shot == 0 && a.reference_facts == 0)
        .min_by_key(|a| a.total)
        .or_else(|| ev.anatomy.iter().min_by_key(|a| a.total))
        .map(|a| a.prompt.clone())
}

fn readiness(ev: &Evidence, best_rate: Option<f64>, th: &Thresholds) -> Readiness {
    let d = &ev.data;
    let per = th.get("min_examples_per_label") as usize;
    let mut removed = BTreeMap::new();
    removed.insert("duplicates".to_string(), d.duplicate_examples);
    removed.insert("conflict_groups".to_string(), d.conflict_groups);
    removed.insert("leaked_eval_cases".to_string(), d.leaked_eval_cases);
    removed.insert("contract_breaks".to_string(), d.contract_breaks);
    removed.insert("malformed_lines".to_string(), d.malformed_lines);
    Readiness {
        examples_cases: d.examples_cases,
        clean_examples: d.clean_examples,
        removed,
        clean_per_label: d.clean_per_label.clone(),
        labels_short: d.clean_per_label.iter().filter(|l| l.count < per && ev.task.labels.contains(&l.label)).map(|l| (l.label.clone(), per - l.count)).collect(),
        eval_cases: d.eval_cases,
        eval_ci_half_width: if d.eval_cases == 0 { 0.5 } else { half_width(best_rate.unwrap_or(0.5), d.eval_cases) },
        min_examples: th.get("min_examples"),
        typical_examples: th.get("typical_examples"),
    }
}

/// Runs the rules. Fails only on an unknown or invalid `advise:` threshold.
pub fn advise(ev: &Evidence, overrides: Option<&BTreeMap<String, f64>>) -> Result<Advice, String> {
    let th = Thresholds::new(overrides)?;
    let cfg = &ev.task.config;
    let c_arg = if cfg.is_empty() || cfg == "tunegate.yaml" { String::new() } else { format!(" -c {cfg}") };
    let groups = ev.run.as_ref().map(group_stats).unwrap_or_default();
    let best = best_group(&groups, &ev.anatomy);
    let failures = match (ev.run.as_ref(), best) {
        (Some(r), Some(b)) => Some(taxonomy(r, b, &ev.task.kind, &ev.task.labels)),
        _ => None,
    };
    let frag = match (ev.run.as_ref(), best) {
        (Some(r), Some(b)) => fragility(r, &groups, b, &th),
        _ => Fragility::default(),
    };
    let churn = churn(&ev.churn);
    let cost = cost(ev, &groups, best, &th);
    let ready = readiness(ev, best.map(|b| b.pass_rate), &th);
    let d = &ev.data;
    let target = th.get("target_pass_rate");
    let long = th.get("long_prompt_tokens");

    // ---- the decision table, row by row
    let mut table = vec![];
    let stable_days = th.get("stable_days");
    let changes_30d = churn.contract_changes_30d + churn.expected_changes_30d;
    // Moving: a recorded contract change younger than `stable_days`, or more
    // contract/expected changes in 30 days than allowed. A task whose history
    // is simply short (no change recorded) is not moving, but not stable yet.
    let moving = churn.days_since_contract_change.map(|d| d < stable_days && !churn.at_least).unwrap_or(false) || changes_30d as f64 > th.get("max_changes_30d");
    let stable = !moving && churn.days_since_contract_change.map(|d| d >= stable_days).unwrap_or(false);
    let volume = ev.task.calls_per_month;
    {
        let age = match churn.days_since_contract_change {
            Some(x) if churn.at_least => format!("no contract change recorded in {x:.0} days of history"),
            Some(x) => format!("contract last changed {x:.0} days ago"),
            None => String::new(),
        };
        let vol = volume.map(|v| format!("{} calls/month", int(v as f64))).unwrap_or_else(|| "call volume not set (usage.calls_per_month)".into());
        let (measured, side, conf, evidence) = if churn.days_since_contract_change.is_none() {
            (false, Side::Unknown, Confidence::None, format!("not measured: no run store revisions and no git history yet; {vol}"))
        } else if moving {
            (true, Side::Prompting, Confidence::High, format!("{age}; {changes_30d} contract/expected changes in 30 days; {vol}"))
        } else if stable && volume.map(|v| v as f64 >= th.get("min_calls_per_month")).unwrap_or(false) {
            (true, Side::Tuning, if churn.at_least { Confidence::Medium } else { Confidence::High }, format!("{age} (stable from {stable_days:.0}); {vol}, a repeated workflow"))
        } else if stable {
            (true, Side::Neutral, Confidence::Medium, format!("{age} (stable from {stable_days:.0}); {vol} (repeated from {})", int(th.get("min_calls_per_month"))))
        } else {
            (true, Side::Prompting, Confidence::Low, format!("{age}: younger than the {stable_days:.0} days of a stable workflow; {vol}"))
        };
        table.push(DecisionRow { row: "Product stage".into(), measured, evidence, points_to: side, confidence: conf });
    }
    {
        let share = if d.eval_cases == 0 { 0.0 } else { d.eval_with_expected as f64 / d.eval_cases as f64 };
        let (measured, side, conf, evidence) = if churn.days_since_contract_change.is_none() && d.eval_cases == 0 {
            (false, Side::Unknown, Confidence::None, "not measured: no revisions recorded and no eval set".to_string())
        } else {
            let ev_text = format!(
                "{} prompt / {} expected-output / {} contract changes in 30 days ({} / {} / {} in 7); {} of eval cases have an expected output",
                churn.prompt_changes_30d, churn.expected_changes_30d, churn.contract_changes_30d, churn.prompt_changes_7d, churn.expected_changes_7d, churn.contract_changes_7d, pct(share)
            );
            if churn.days_since_contract_change.is_none() {
                (true, Side::Unknown, Confidence::Low, format!("{ev_text}; no history yet"))
            } else if moving || share < th.get("min_expected_share") {
                (true, Side::Prompting, Confidence::High, ev_text)
            } else {
                (true, Side::Tuning, Confidence::Medium, format!("{ev_text}: behaviour well defined"))
            }
        };
        table.push(DecisionRow { row: "Change speed".into(), measured, evidence, points_to: side, confidence: conf });
    }
    {
        let short = if ready.labels_short.is_empty() { String::new() } else { format!("; short of {} per label: {}", th.get("min_examples_per_label"), ready.labels_short.iter().map(|(l, n)| format!("`{l}` needs {n}")).collect::<Vec<_>>().join(", ")) };
        let (measured, side, conf, evidence) = if d.examples_file.is_none() {
            (true, Side::Prompting, Confidence::High, "no examples file (data.examples): 0 examples".to_string())
        } else {
            let base = format!(
                "{} clean of {} examples (removed: {} duplicates, {} conflict groups, {} leaking into eval, {} contract breaks){short}",
                d.clean_examples, d.examples_cases, d.duplicate_examples, d.conflict_groups, d.leaked_eval_cases, d.contract_breaks
            );
            if (d.clean_examples as f64) < th.get("min_examples") {
                (true, Side::Prompting, Confidence::High, format!("{base}; below OpenAI's minimum of {}", th.get("min_examples")))
            } else if (d.clean_examples as f64) < th.get("typical_examples") || !ready.labels_short.is_empty() {
                (true, Side::Prompting, Confidence::Medium, format!("{base}; typical tuning sets have {}-100", th.get("typical_examples")))
            } else {
                (true, Side::Tuning, Confidence::High, format!("{base}; at or above the typical {}-100", th.get("typical_examples")))
            }
        };
        let (side, conf, evidence) = match &ev.lab.sweep {
            None => (side, conf, format!("{evidence}; few-shot curve not measured (`tunegate prompt sweep`)")),
            Some(sw) => {
                let line = sweep_summary(sw);
                match sw.shape {
                    crate::lab::CurveShape::Rising if side == Side::Tuning => (Side::Tuning, Confidence::High, format!("{evidence}; {line}: still rising, the behaviour is learnable from examples")),
                    crate::lab::CurveShape::Rising => (side, conf, format!("{evidence}; {line}: still rising, so more examples should pay")),
                    crate::lab::CurveShape::Flat => (Side::Prompting, Confidence::Medium, format!("{evidence}; {line}: examples are not the lever")),
                    _ => (side, conf, format!("{evidence}; {line}")),
                }
            }
        };
        table.push(DecisionRow { row: "Data".into(), measured, evidence, points_to: side, confidence: conf });
    }
    let format_share = failures.as_ref().filter(|f| f.failures > 0).map(|f| f.format as f64 / f.failures as f64);
    let knowledge_share = failures.as_ref().filter(|f| f.failures > 0).map(|f| f.missing_knowledge as f64 / f.failures as f64);
    {
        let (measured, side, conf, evidence) = match (&failures, best) {
            (Some(f), Some(b)) if f.failures == 0 => (true, Side::Prompting, Confidence::Medium, format!("best run {}@{} has no failures in {} cases", b.prompt, b.provider, f.scored)),
            (Some(f), Some(b)) => {
                let text = format!(
                    "best run {}@{}: {} failures of {}: {} format/contract, {} content, {} missing knowledge, {} refusals; {} provider errors not counted",
                    b.prompt, b.provider, f.failures, f.scored, f.format, f.content, f.missing_knowledge, f.refusals, f.provider_errors
                );
                if format_share.unwrap_or(0.0) >= th.get("format_failure_share") {
                    (true, Side::Prompting, Confidence::High, format!("{text}: mostly format, which instructions fix"))
                } else if knowledge_share.unwrap_or(0.0) >= th.get("knowledge_failure_share") {
                    (true, Side::Retrieval, Confidence::Medium, format!("{text}: knowledge the prompt does not carry"))
                } else if f.content > f.format {
                    (true, Side::Tuning, Confidence::Medium, format!("{text}: mostly content, learned behaviour"))
                } else {
                    (true, Side::Neutral, Confidence::Low, text)
                }
            }
            _ => (false, Side::Unknown, Confidence::None, "not measured: no scored run in the store (run `tunegate eval`)".to_string()),
        };
        table.push(DecisionRow { row: "Main goal".into(), measured, evidence, points_to: side, confidence: conf });
    }
    {
        let hw = ready.eval_ci_half_width;
        let (measured, side, conf, evidence) = if d.eval_cases == 0 {
            (false, Side::Unknown, Confidence::None, "not measured: no eval set (data.eval)".to_string())
        } else {
            let base = format!("{} eval cases: 95% interval ±{} at {}", d.eval_cases, pts(hw), best.map(|b| pct(b.pass_rate)).unwrap_or_else(|| "50%".into()));
            let mut disjoint = if d.examples_file.is_some() { format!("; {} eval cases leak into the examples", d.leaked_eval_cases) } else { String::new() };
            let r = &ev.reviews;
            if let Some(t) = &r.latest {
                disjoint.push_str(&format!("; {} blind reviews by people (latest {} vs {}: A {}, B {}, ties {}, both bad {})", r.reviews, t.side_a, t.side_b, t.a_wins, t.b_wins, t.ties, t.both_bad));
            } else if matches!(ev.task.kind.as_str(), "rewrite" | "generation") {
                disjoint.push_str("; no blind review by people yet (free text: `tunegate review A B`)");
            }
            if r.judge_verdicts > 0 {
                disjoint.push_str(&format!("; {} pairwise judge verdicts", r.judge_verdicts));
            }
            if (d.eval_cases as f64) < th.get("min_eval_cases") || d.leaked_eval_cases as f64 > th.get("max_leaked_cases") {
                (true, Side::Prompting, Confidence::High, format!("{base}{disjoint}: not yet a before/after yardstick"))
            } else {
                (true, Side::Neutral, Confidence::High, format!("{base}{disjoint}: fit for prompt variants and before/after"))
            }
        };
        table.push(DecisionRow { row: "Evaluation".into(), measured, evidence, points_to: side, confidence: conf });
    }
    let facts_prompt = ev.anatomy.iter().filter(|a| a.total as f64 >= long && a.reference_facts as f64 >= th.get("facts_share") * a.total as f64).max_by_key(|a| a.reference_facts);
    let shots_prompt = ev.anatomy.iter().filter(|a| a.total as f64 >= long && a.few_shot as f64 >= th.get("few_shot_share") * a.total as f64).max_by_key(|a| a.few_shot);
    let lab_fragile = ev.lab.vary.as_ref().map(|v| v.range > th.get("fragile_spread")).unwrap_or(false);
    let fragile = frag.variant_spread.map(|s| s > th.get("fragile_spread")).unwrap_or(false) || frag.repeat_spread.map(|s| s > th.get("fragile_spread")).unwrap_or(false) || lab_fragile;
    let best_cost = best.and_then(|b| cost.lines.iter().find(|l| l.prompt == b.prompt && l.provider == b.provider)).and_then(|l| l.monthly_usd);
    let expensive = best_cost.map(|c| c >= th.get("expensive_monthly_usd")).unwrap_or(false);
    // When the hosted model can no longer be tuned, only the self-hosted
    // line can pay back (it has no training fee: any monthly saving does).
    let pays_back = if cost.hosted_tuning_closed {
        cost.self_hosted.as_ref().map(|s| s.current_monthly_usd.map(|c| s.monthly_usd < c).unwrap_or(false)).unwrap_or(false)
    } else {
        cost.tuned.as_ref().and_then(|t| t.break_even_months).map(|m| m <= th.get("max_break_even_months")).unwrap_or(false)
    };
    {
        let longest = ev.anatomy.iter().max_by_key(|a| a.total);
        let (measured, side, conf, evidence) = match longest {
            None => (false, Side::Unknown, Confidence::None, "not measured: no prompt could be rendered".to_string()),
            Some(l) => {
                let mut parts = vec![format!(
                    "longest prompt `{}`: {} tokens ({} instructions, {} few-shot, {} reference facts)",
                    l.prompt,
                    int(l.total as f64),
                    int(l.instructions as f64),
                    int(l.few_shot as f64),
                    int(l.reference_facts as f64)
                )];
                if let Some(c) = best_cost {
                    parts.push(format!("best prompt {}/month", usd(c)));
                }
                if let Some(s) = frag.variant_spread {
                    parts.push(format!("spread across variants {}", pts(s)));
                }
                if let Some(s) = frag.repeat_spread {
                    parts.push(format!("across repeats {}", pts(s)));
                }
                if let Some(m) = &ev.lab.minimize {
                    parts.push(minimize_summary(m));
                }
                let text = parts.join("; ");
                if let Some(f) = facts_prompt {
                    (true, Side::Retrieval, Confidence::High, format!("{text}: `{}` is long because it carries {} tokens of reference facts", f.prompt, int(f.reference_facts as f64)))
                } else if shots_prompt.is_some() || expensive || fragile {
                    let why: Vec<&str> = [(shots_prompt.is_some(), "long from few-shot examples"), (expensive, "expensive"), (fragile, "fragile")].iter().filter(|x| x.0).map(|x| x.1).collect();
                    (true, Side::Tuning, Confidence::Medium, format!("{text}: {}", why.join(", ")))
                } else {
                    (true, Side::Prompting, Confidence::Medium, format!("{text}: short and cheap enough"))
                }
            }
        };
        table.push(DecisionRow { row: "Cost / length".into(), measured, evidence, points_to: side, confidence: conf });
    }
    {
        let fs = th.get("fragile_spread");
        let mut parts: Vec<String> = vec![];
        if let Some(s) = frag.variant_spread {
            parts.push(format!("spread across the task's prompt variants {}", pts(s)));
        }
        if let Some(s) = frag.repeat_spread {
            parts.push(format!("across repeats {}", pts(s)));
        }
        if let Some(v) = &ev.lab.vary {
            parts.push(vary_summary(v));
        }
        let (measured, side, conf, evidence) = if ev.lab.vary.is_none() && frag.repeat_spread.is_none() {
            let known = if parts.is_empty() { String::new() } else { format!("{}; ", parts.join("; ")) };
            (!parts.is_empty(), Side::Unknown, Confidence::None, format!("{known}not measured: perturbations and repeats (`tunegate prompt vary`, `tunegate eval --repeat 3`)"))
        } else if fragile {
            (true, Side::Tuning, Confidence::Medium, format!("{}: fragile (over {} between variants of the same prompt)", parts.join("; "), pts(fs)))
        } else {
            (true, Side::Prompting, Confidence::Medium, format!("{}: robust (within {})", parts.join("; "), pts(fs)))
        };
        table.push(DecisionRow { row: "Fragility".into(), measured, evidence, points_to: side, confidence: conf });
    }

    // ---- the verdict
    let mut reasons: Vec<String> = vec![];
    let mut steps: Vec<Step> = vec![];
    let step = |t: String, c: Option<String>| Step { text: t, command: c };
    let eval_file = d.eval_file.clone().unwrap_or_else(|| "data/eval.jsonl".into());
    let ex_file = d.examples_file.clone().unwrap_or_else(|| "data/examples.jsonl".into());
    let min_eval = th.get("min_eval_cases");
    let dup_share = if d.examples_cases == 0 { 0.0 } else { d.duplicate_examples as f64 / d.examples_cases as f64 };
    let expected_share = if d.eval_cases == 0 { 0.0 } else { d.eval_with_expected as f64 / d.eval_cases as f64 };
    // Data problems weigh by what they do to the numbers: a finding replaces
    // the decision only when it can change it (README, "The advisor").
    let leaked = d.leaked_eval_cases;
    let leak_share = if d.eval_cases == 0 { 0.0 } else { leaked as f64 / d.eval_cases as f64 };
    let leak_found = leaked as f64 > th.get("max_leaked_cases");
    // The best prompt's pass rate on the eval cases that do not leak.
    let clean_best: Option<(u64, u64)> = match (best, ev.run.as_ref()) {
        (Some(b), Some(r)) if leak_found => {
            let leaked_ids: HashSet<&str> = d.leaked_eval_ids.iter().map(String::as_str).collect();
            let mine = r.outcomes.iter().filter(|o| o.prompt == b.prompt && o.provider == b.provider && o.error.is_none() && !leaked_ids.contains(o.case_id.as_str()));
            let (k, n) = mine.fold((0u64, 0u64), |(k, n), o| (k + u64::from(o.pass == Some(true)), n + 1));
            (n > 0).then_some((k, n))
        }
        _ => None,
    };
    let clean_ci = clean_best.map(|(k, n)| wilson(k, n));
    let leak_moves = match (best, clean_ci) {
        (Some(b), Some((lo, hi))) => b.pass_rate < lo || b.pass_rate > hi,
        _ => false,
    };
    let leak_decisive = leak_found && (leak_share > th.get("max_leaked_share") || leak_moves);
    let leak_text = {
        let clean = match (best, clean_best, clean_ci) {
            (Some(b), Some((k, n)), Some((lo, hi))) => format!(
                "; without them {}@{} passes {} ({}–{}, {n} cases) against {} on all cases{}",
                b.prompt,
                b.provider,
                pct(k as f64 / n as f64),
                pct(lo),
                pct(hi),
                pct(b.pass_rate),
                if leak_moves { ": the leak moves the number" } else { ": within the interval" }
            ),
            _ => String::new(),
        };
        format!("{leaked} of {} eval cases ({}) are the same case as an example{clean}", d.eval_cases, pct(leak_share))
    };
    let conflict_share = if d.examples_cases == 0 { 0.0 } else { d.conflicting_examples as f64 / d.examples_cases as f64 };
    let conflict_found = d.conflict_groups as f64 > th.get("max_conflicts");
    let conflict_decisive = conflict_found && conflict_share > th.get("max_conflict_share");
    let conflict_text = format!("{} groups of the same case have different expected outputs: {} of {} examples ({})", d.conflict_groups, d.conflicting_examples, d.examples_cases, pct(conflict_share));
    let dup_decisive = dup_share > th.get("max_duplicate_share");
    let broken = d.contract_breaks + d.malformed_lines;
    let broken_share = broken as f64 / (d.eval_cases + d.examples_cases).max(1) as f64;
    let broken_decisive = broken > 0 && broken_share > th.get("max_broken_share");
    let data_bad = leak_decisive || conflict_decisive || dup_decisive || broken_decisive;
    // Findings too small to change the decision: warnings with their fix.
    let mut data_warnings: Vec<(String, Step)> = vec![];
    if leak_found && !leak_decisive {
        data_warnings.push((format!("{leak_text}; `tunegate tune` leaves those examples out"), step("See the leaking cases; tuning trains without them (--strict refuses)".into(), Some(format!("tunegate data check{c_arg}")))));
    }
    if conflict_found && !conflict_decisive {
        data_warnings.push((format!("{conflict_text}; `tunegate tune` leaves them out"), step(format!("Decide the right output for the {} conflicting groups", d.conflict_groups), Some(format!("tunegate data check{c_arg}")))));
    }
    if broken > 0 && !broken_decisive {
        data_warnings.push((format!("{} expected outputs break the contract and {} lines are malformed ({} of all cases)", d.contract_breaks, d.malformed_lines, pct(broken_share)), step("Fix the lines `data check` reports as contract breaks or malformed".into(), Some(format!("tunegate data check{c_arg}")))));
    }
    let min_readable = th.get("min_readable_eval_cases");
    let mut keep_prompt = None;
    let verdict;
    let summary;
    if d.eval_file.is_none() || d.eval_cases == 0 {
        verdict = Verdict::BuildEvalFirst;
        summary = "There is no eval set, so nothing can be measured yet: build it before touching prompts or models.".to_string();
        reasons.push("data.eval is not set or has 0 cases".into());
        steps.push(step(format!("Write at least {min_eval:.0} real inputs with their expected outputs into {eval_file} and set `data.eval`"), None));
        steps.push(step("Run every prompt variant against them".into(), Some(format!("tunegate eval{c_arg}"))));
    } else if expected_share < th.get("min_expected_share") {
        verdict = Verdict::WriteExamplesFirst;
        summary = "The wanted behaviour is not written down: many eval cases have no expected output.".into();
        reasons.push(format!("{} of {} eval cases have an expected output ({}; needed {}){}", d.eval_with_expected, d.eval_cases, pct(expected_share), pct(th.get("min_expected_share")), human(d.human_eval)));
        steps.push(step(
            format!("Write the expected output for the {} eval cases without one, in place (one key per label, resumable)", d.eval_cases - d.eval_with_expected),
            Some(format!("tunegate label {eval_file} --to eval{c_arg}")),
        ));
    } else if data_bad {
        verdict = Verdict::FixData;
        summary = "The data has problems that make any number measured on it unreliable: fix them first.".into();
        if leak_decisive {
            reasons.push(leak_text.clone());
            steps.push(step(format!("Remove the {} leaking cases from one side; `data check` lists them with their lines", d.leaked_eval_cases), Some(format!("tunegate data check{c_arg}"))));
            steps.push(step("Or write a clean split that keeps near duplicates on one side".into(), Some(format!("tunegate data split{c_arg}"))));
        }
        if conflict_decisive {
            reasons.push(conflict_text.clone());
            steps.push(step(format!("Decide the right output for each of the {} conflicting groups (same input, different labels)", d.conflict_groups), Some(format!("tunegate data check{c_arg}"))));
        }
        if dup_share > th.get("max_duplicate_share") {
            reasons.push(format!("{} of {} examples are duplicates ({}; allowed {})", d.duplicate_examples, d.examples_cases, pct(dup_share), pct(th.get("max_duplicate_share"))));
            steps.push(step(format!("Drop the {} duplicate examples from {ex_file}", d.duplicate_examples), None));
        }
        if broken_decisive {
            reasons.push(format!("{} expected outputs break the contract and {} lines are malformed ({} of all cases)", d.contract_breaks, d.malformed_lines, pct(broken_share)));
            steps.push(step("Fix the lines `data check` reports as contract breaks or malformed".into(), Some(format!("tunegate data check{c_arg}"))));
        }
        steps.push(step("Re-run the eval on the clean data".into(), Some(format!("tunegate eval{c_arg}"))));
        steps.push(step("Ask again with the new run".into(), Some(format!("tunegate advise{c_arg}"))));
    } else if moving {
        // Requirements that keep moving rule out tuning whatever else holds.
        verdict = Verdict::KeepPrompting;
        let age = churn.days_since_contract_change.map(|x| format!("the contract changed {x:.0} days ago")).unwrap_or_else(|| "the contract keeps changing".into());
        summary = format!("The task is still moving ({age}, {changes_30d} contract/expected changes in 30 days): keep prompting until it settles.");
        reasons.push(format!("{age}; stable means {stable_days:.0} days without a change and at most {} changes in 30 days", th.get("max_changes_30d")));
        match best {
            Some(b) => steps.push(step(format!("Keep iterating on prompts; the best now is {}@{} at {}", b.prompt, b.provider, pct(b.pass_rate)), Some(format!("tunegate eval{c_arg}")))),
            None => steps.push(step("Keep iterating on prompts, measured on the eval set".into(), Some(format!("tunegate eval{c_arg}")))),
        }
        steps.push(step(format!("Freeze labels and expected outputs, then ask again after {stable_days:.0} quiet days"), Some(format!("tunegate advise{c_arg}"))));
    } else if (d.eval_cases as f64) < min_readable {
        verdict = Verdict::BuildEvalFirst;
        let hw = ready.eval_ci_half_width;
        summary = format!("{} eval cases cannot tell prompt variants apart (±{} at 95%): grow the eval set first.", d.eval_cases, pts(hw));
        reasons.push(format!("{} eval cases < {min_eval:.0}: a 95% interval of ±{}; at {min_eval:.0} cases it would be ±{}", d.eval_cases, pts(hw), pts(half_width(best.map(|b| b.pass_rate).unwrap_or(0.5), min_eval as usize))));
        let add = min_eval as usize - d.eval_cases;
        let mut t = format!("Add {add} labelled cases to {eval_file} (to {min_eval:.0}), drawn from real traffic");
        let per: Vec<String> = d.eval_per_label.iter().filter(|l| ev.task.labels.contains(&l.label)).map(|l| format!("`{}` {}", l.label, l.count)).collect();
        if !per.is_empty() {
            t.push_str(&format!("; now per label: {}", per.join(", ")));
        }
        steps.push(step(t, None));
        steps.push(step("Run every prompt variant on it".into(), Some(format!("tunegate eval{c_arg}"))));
    } else if groups.is_empty() || best.is_none() {
        verdict = Verdict::BuildEvalFirst;
        summary = format!("The eval set ({} cases) has never been run: measure the prompt variants before deciding anything.", d.eval_cases);
        reasons.push("no scored run in the store".into());
        steps.push(step(format!("Run the {} prompt variant(s) against the eval set", ev.task.prompts.len()), Some(format!("tunegate eval{c_arg}"))));
        steps.push(step("Ask again with the measurements".into(), Some(format!("tunegate advise{c_arg}"))));
    } else if d.examples_file.is_none() || (d.clean_examples as f64) < th.get("min_examples") {
        verdict = Verdict::WriteExamplesFirst;
        summary = format!("Only {} clean examples of the wanted behaviour exist: write examples before any few-shot or tuning.", d.clean_examples);
        reasons.push(format!("you have {} clean expected outputs in the examples{} < OpenAI's minimum of {}", d.clean_examples, human(d.human_examples), th.get("min_examples")));
        let need = th.get("typical_examples") as usize - d.clean_examples.min(th.get("typical_examples") as usize);
        steps.push(step(
            format!(
                "Write {need} examples (input + expected output) into {ex_file}{}: label raw inputs from real traffic, pre-filled by a model with --suggest PROMPT@PROVIDER; OpenAI's minimum is {}, {}-100 is typical",
                if d.examples_file.is_none() { " and set `data.examples`" } else { "" },
                th.get("min_examples"),
                th.get("typical_examples")
            ),
            Some(format!("tunegate label RAW_INPUTS.jsonl{c_arg}")),
        ));
        for (l, n) in &ready.labels_short {
            steps.push(step(format!("Add {n} examples for label `{l}`"), None));
        }
        steps.push(step("Add a few-shot prompt variant that draws from them (`shots: { k: 8 }`) and re-run".into(), Some(format!("tunegate eval{c_arg}"))));
    } else {
        let b = best.expect("checked above");
        let f = failures.clone().unwrap_or_default();
        if format_share.unwrap_or(0.0) >= th.get("format_failure_share") && b.pass_rate < target {
            verdict = Verdict::TightenContract;
            summary = format!("Most failures of the best prompt are format failures ({} of {}): state the output contract, do not tune.", f.format, f.failures);
            let kinds: Vec<String> = f.format_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            reasons.push(format!("{}@{} passes {}; {} of {} failures are format/contract ({}; {})", b.prompt, b.provider, pct(b.pass_rate), f.format, f.failures, pct(format_share.unwrap_or(0.0)), kinds.join(", ")));
            if ev.task.kind == "classification" {
                steps.push(step(format!("End the prompt with \"Answer with exactly one of: {}.\" and nothing else", ev.task.labels.join(", ")), None));
                steps.push(step(format!("Constrain the output: `params: {{ choices: [{}] }}` (local models) or a stop sequence and a small max_tokens", ev.task.labels.join(", ")), None));
            } else {
                steps.push(step("Put the JSON Schema (task.output_schema) in the prompt and ask for JSON only; use the provider's JSON mode where it has one".into(), None));
            }
            steps.push(step("Re-run and compare with this run".into(), Some(format!("tunegate eval{c_arg} --baseline {}", ev.run.as_ref().map(|r| r.run_id.as_str()).unwrap_or("latest")))));
        } else if facts_prompt.is_some() || (knowledge_share.unwrap_or(0.0) >= th.get("knowledge_failure_share") && b.pass_rate < target) {
            verdict = Verdict::AddRetrieval;
            if let Some(fp) = facts_prompt {
                summary = format!("Prompt `{}` is long because it carries {} tokens of reference facts: move them into retrieval, not into weights.", fp.prompt, int(fp.reference_facts as f64));
                reasons.push(format!("`{}`: {} of {} tokens ({}) are reference facts (threshold {} of a prompt of {}+ tokens)", fp.prompt, int(fp.reference_facts as f64), int(fp.total as f64), pct(fp.reference_facts as f64 / fp.total.max(1) as f64), pct(th.get("facts_share")), int(long)));
                for blk in &fp.facts_blocks {
                    steps.push(step(format!("Move the {}-token block \"{}\" ({} lines) of prompt `{}` into a retrieval index; inject only the entries each message needs", int(blk.tokens as f64), blk.preview, blk.lines, fp.prompt), None));
                }
            } else {
                summary = format!("{} of {} failures of the best prompt need facts the prompt does not carry: add retrieval.", f.missing_knowledge, f.failures);
            }
            if f.missing_knowledge > 0 {
                reasons.push(format!("{} of {} failures of {}@{} are missing-knowledge failures", f.missing_knowledge, f.failures, b.prompt, b.provider));
                steps.push(step(format!("Index the documents that hold the answers of the {} missing-knowledge failures and add the retrieved passages to the prompt", f.missing_knowledge), Some(format!("tunegate show{c_arg} --failed"))));
            }
            steps.push(step("Keep the instructions in the prompt; evaluate the retrieval variant as a new prompt".into(), Some(format!("tunegate eval{c_arg}"))));
        } else {
            let good = b.pass_rate >= target;
            let plateau = !good && groups.iter().filter(|g| g.provider == b.provider).count() >= 2;
            let signals: Vec<String> = [
                (plateau, format!("plateau: the best of {} variants passes {} < target {}", groups.iter().filter(|g| g.provider == b.provider).count(), pct(b.pass_rate), pct(target))),
                (shots_prompt.is_some(), shots_prompt.map(|s| format!("`{}` is {} tokens, {} of them few-shot examples a tuned model would learn", s.prompt, int(s.total as f64), int(s.few_shot as f64))).unwrap_or_default()),
                (fragile, format!("fragile: {} across variants, {} across repeats", frag.variant_spread.map(pts).unwrap_or("n/a".into()), frag.repeat_spread.map(pts).unwrap_or("n/a".into()))),
                (expensive && pays_back, cost.tuned.as_ref().map(|t| format!("{}/month now; tuned with `{}` {}/month, training {}, break-even in {:.1} months", usd(t.current_monthly_usd), t.prompt, usd(t.monthly_usd), usd(t.training_usd), t.break_even_months.unwrap_or(0.0))).unwrap_or_default()),
            ]
            .into_iter()
            .filter(|x| x.0)
            .map(|x| x.1)
            .collect();
            if good && !(expensive && pays_back) {
                verdict = Verdict::KeepPrompting;
                let c = best_cost.map(|c| format!(" at {}/month", usd(c))).unwrap_or_default();
                summary = format!("Prompting already meets the target: {}@{} passes {} ({}){c}. Tuning would add cost and risk for little gain.", b.prompt, b.provider, pct(b.pass_rate), format!("{}–{}", pct(b.ci95.0), pct(b.ci95.1)));
                reasons.push(format!("best pass rate {} >= target {}", pct(b.pass_rate), pct(target)));
                if let Some(t) = &cost.tuned {
                    match t.break_even_months {
                        Some(m) => reasons.push(format!("tuning would save {}/month and pay back its {} training in {m:.1} months, but the prompt is not expensive ({} < {})", usd(t.current_monthly_usd - t.monthly_usd), usd(t.training_usd), usd(t.current_monthly_usd), usd(th.get("expensive_monthly_usd")))),
                        None => reasons.push(format!("a tuned model would cost {}/month vs {} now: no saving", usd(t.monthly_usd), usd(t.current_monthly_usd))),
                    }
                }
                steps.push(step(format!("Ship prompt `{}` on {}", b.prompt, b.provider), None));
                match ev.lab.minimize.as_ref().filter(|m| m.prompt == b.prompt) {
                    Some(m) if !m.best_dropped.is_empty() && m.token_saving >= 0.1 => {
                        let cmd = m.written_as.is_none().then(|| format!("tunegate prompt minimize{c_arg} --prompt {} --write {}-min", b.prompt, b.prompt));
                        steps.push(step(format!("Or ship its minimized form: {}", minimize_summary(m)), cmd));
                    }
                    None if ev.lab.minimize.is_none() => steps.push(step(format!("Find the smallest form of `{}` that still works (cheaper calls)", b.prompt), Some(format!("tunegate prompt minimize{c_arg} --prompt {}", b.prompt)))),
                    _ => {}
                }
                steps.push(step(format!("Gate every change against this run in CI"), Some(format!("tunegate eval{c_arg} --baseline {}", ev.run.as_ref().map(|r| r.run_id.as_str()).unwrap_or("latest")))));
                for w in &frag.weak_slices {
                    steps.push(step(format!("Look at the weak slice {w}"), Some(format!("tunegate show{c_arg} --failed"))));
                }
            } else if signals.is_empty() {
                verdict = Verdict::KeepPrompting;
                summary = format!("{}@{} passes {} (target {}), and nothing measured points to tuning yet: keep improving the prompt.", b.prompt, b.provider, pct(b.pass_rate), pct(target));
                reasons.push(format!("{} prompt variant(s) measured on {}; no plateau, long prompt, fragility or cost signal", groups.iter().filter(|g| g.provider == b.provider).count(), b.provider));
                steps.push(step("Add prompt variants (instructions, few-shot from the examples) and compare them".into(), Some(format!("tunegate eval{c_arg}"))));
                steps.push(step("Measure stability with repeats".into(), Some(format!("tunegate eval{c_arg} --repeat 3"))));
                if ev.lab.vary.is_none() {
                    steps.push(step(format!("Measure how fragile `{}` is to reordering, relabeling and rewording", b.prompt), Some(format!("tunegate prompt vary{c_arg} --prompt {}", b.prompt))));
                }
                if ev.lab.sweep.is_none() && ev.anatomy.iter().any(|a| a.prompt == b.prompt && a.few_shot > 0) {
                    steps.push(step("Measure the few-shot learning curve: does the behaviour keep improving with more examples?".into(), Some(format!("tunegate prompt sweep{c_arg} --prompt {}", b.prompt))));
                }
            } else {
                reasons.extend(signals);
                let mut missing: Vec<String> = vec![];
                if (d.clean_examples as f64) < th.get("typical_examples") {
                    missing.push(format!("{} clean examples < the typical {}", d.clean_examples, th.get("typical_examples")));
                }
                if !ready.labels_short.is_empty() {
                    missing.push(format!("labels short of {} examples: {}", th.get("min_examples_per_label"), ready.labels_short.iter().map(|(l, n)| format!("`{l}` needs {n}")).collect::<Vec<_>>().join(", ")));
                }
                if !stable {
                    missing.push(match churn.days_since_contract_change {
                        None => "stability not measured (no revisions in the store, not in git)".into(),
                        Some(x) if churn.at_least => format!("only {x:.0} days of history without a contract change (stable from {stable_days:.0})"),
                        Some(x) => format!("contract changed {x:.0} days ago (stable from {stable_days:.0})"),
                    });
                }
                match volume {
                    None => missing.push("call volume unknown (usage.calls_per_month)".into()),
                    Some(v) if (v as f64) < th.get("min_calls_per_month") => missing.push(format!("{} calls/month < {}", int(v as f64), int(th.get("min_calls_per_month")))),
                    _ => {}
                }
                let kp = short_prompt(ev);
                keep_prompt = kp.clone();
                let kp_text = kp.clone().unwrap_or_else(|| "the shortest prompt".into());
                let kp_tokens = ev.anatomy.iter().find(|a| Some(&a.prompt) == kp.as_ref()).map(|a| format!(" ({} tokens)", int(a.total as f64))).unwrap_or_default();
                if missing.is_empty() {
                    verdict = Verdict::FineTune;
                    summary = format!("The task is stable, repeated and backed by {} clean examples, and prompting has hit its limits: fine-tune, keeping the short prompt `{kp_text}`{kp_tokens} on top.", d.clean_examples);
                    steps.push(step("Split the examples into train/validation without leakage".into(), Some(format!("tunegate data split{c_arg}"))));
                    let recipe = ev.tuning.recipe.as_ref().map(|r| format!("; recipe: {r}")).unwrap_or_default();
                    steps.push(step(format!("Fine-tune with `tune.prompt: {kp_text}` (the short prompt that still states the task){recipe}"), Some(format!("tunegate tune{c_arg}"))));
                    steps.push(step(format!("Compare the tuned model with {}@{} on the same eval cases", b.prompt, b.provider), Some(format!("tunegate compare{c_arg} {} latest", ev.run.as_ref().map(|r| r.run_id.as_str()).unwrap_or("latest~1")))));
                } else {
                    verdict = Verdict::ConsiderFineTuning;
                    summary = format!("Prompting shows its limits, but tuning is not ready yet: {}.", missing.join("; "));
                    reasons.extend(missing.iter().map(|m| format!("not ready: {m}")));
                    for (l, n) in &ready.labels_short {
                        steps.push(step(format!("Add {n} examples for label `{l}`"), None));
                    }
                    if (d.clean_examples as f64) < th.get("typical_examples") {
                        steps.push(step(format!("Grow {ex_file} from {} to at least {} clean examples", d.clean_examples, th.get("typical_examples")), None));
                    }
                    if volume.is_none() {
                        steps.push(step("Set `usage.calls_per_month` in the task file so cost and volume can be judged".into(), None));
                    }
                    if !stable {
                        steps.push(step(format!("Keep the contract unchanged for {stable_days:.0} days, then ask again"), Some(format!("tunegate advise{c_arg}"))));
                    }
                    steps.push(step(format!("Meanwhile export the data and check what tuning with `{kp_text}` would train on"), Some(format!("tunegate data export{c_arg}"))));
                }
            }
        }
    }

    if verdict != Verdict::FixData {
        for (why, fix) in data_warnings {
            reasons.push(format!("warning: {why}; too small to change the decision"));
            steps.push(fix);
        }
    }
    // A small eval set that can still be read: the verdict stands, its
    // intervals are wide, and growing the set comes first.
    if verdict != Verdict::BuildEvalFirst && d.eval_cases > 0 && (d.eval_cases as f64) < min_eval && (d.eval_cases as f64) >= min_readable {
        reasons.push(format!("only {} eval cases: 95% intervals of ±{}; at {min_eval:.0} cases ±{}", d.eval_cases, pts(ready.eval_ci_half_width), pts(half_width(best.map(|b| b.pass_rate).unwrap_or(0.5), min_eval as usize))));
        steps.insert(0, step(format!("Grow {eval_file} from {} to at least {min_eval:.0} labelled cases from real traffic: every number above is that uncertain", d.eval_cases), None));
    }
    let mut notes = ev.notes.clone();
    if let Some(n) = &ev.churn.git_note {
        notes.push(n.clone());
    }
    Ok(Advice {
        schema_version: SCHEMA_VERSION,
        task: ev.task.name.clone(),
        run_id: ev.run.as_ref().map(|r| r.run_id.clone()),
        verdict,
        summary,
        reasons,
        keep_prompt,
        table,
        anatomy: ev.anatomy.clone(),
        cost,
        fragility: frag,
        failures,
        readiness: ready,
        churn,
        next_steps: steps,
        thresholds: th.report(),
        tuning: ev.tuning.clone(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_facts_label_definitions_are_not() {
        let labels: Vec<String> = ["billing", "shipping"].iter().map(|s| s.to_string()).collect();
        let text = "You route messages. Answer with one team.\n\nTeams:\n- billing: charges and refunds\n- shipping: deliveries\n\n\
Catalogue:\n| SKU | Name | Price |\n| A-1 | Kettle | $30 |\n| A-2 | Toaster | $45 |\n| A-3 | Fridge | $900 |";
        let f = reference_facts(text, &labels);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].0.starts_with("Catalogue"));
    }

    #[test]
    fn unknown_threshold_is_named() {
        let mut m = BTreeMap::new();
        m.insert("target_pass".to_string(), 0.9);
        let e = Thresholds::new(Some(&m)).unwrap_err();
        assert!(e.contains("`target_pass`"), "{e}");
        assert_eq!(int(2300.0), "2,300");
        assert_eq!(int(999.0), "999");
    }
}
