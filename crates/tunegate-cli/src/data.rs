//! `tunegate data check | split | export`: glue from arguments to
//! `tunegate_core::data`, and the printing.

use crate::args::usage;
use crate::output::table;
use crate::args::Format;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tunegate_core::data::check::{training_selection, DEFAULT_IMBALANCE_RATIO};
use tunegate_core::data::export::{self, AxolotlOptions, ExportFormat};
use tunegate_core::data::near::DEFAULT_NEAR_THRESHOLD;
use tunegate_core::data::{self as core_data, CheckOptions, DataError, SplitOptions};
use tunegate_core::dataset::{check_contract, load_cases};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Duplicates, conflicting labels, eval leakage, contract breaks, token
    /// lengths and label balance; exit 1 when anything blocks tuning.
    Check(CheckArgs),
    /// Deterministic stratified train/validation(/eval) split that keeps
    /// near-duplicate clusters on one side.
    Split(SplitArgs),
    /// Render the examples through tune.prompt into a trainer's format,
    /// validate what was written, and print token and cost statistics.
    Export(ExportArgs),
}

pub fn run(c: DataCommand) -> Result<ExitCode> {
    match c {
        DataCommand::Check(a) => check(a),
        DataCommand::Split(a) => split(a),
        DataCommand::Export(a) => export_cmd(a),
    }
}

/// Input errors keep their type (exit 2); leakage and the rest are failures.
fn data_err(e: DataError) -> anyhow::Error {
    match e {
        DataError::Input(i) => anyhow::Error::new(i),
        other => anyhow::Error::new(other),
    }
}


fn check_fraction(name: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        return Err(usage(format!("{name} {v} is outside 0..1")));
    }
    Ok(())
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::TEXT_OR_JSON))]
    pub format: Format,
    /// Jaccard similarity from which two inputs are near duplicates.
    #[arg(long, default_value_t = DEFAULT_NEAR_THRESHOLD)]
    pub near_threshold: f64,
    /// Largest/smallest label count ratio above which imbalance is reported.
    #[arg(long, default_value_t = DEFAULT_IMBALANCE_RATIO)]
    pub imbalance_ratio: f64,
    /// Per-example token limit (default: tune.max_seq_len, else the target model's).
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    if !(0.0..=1.0).contains(&a.near_threshold) || a.near_threshold == 0.0 {
        return Err(usage(format!("--near-threshold {} is outside (0, 1]", a.near_threshold)));
    }
    let task = a.task.load()?;
    let (counter, note) = match &task.file.tune {
        Some(t) => {
            let (c, n) = tunegate_run::tokens::counter_for(&t.base);
            (Some(c), n)
        }
        None => (None, None),
    };
    let opts = CheckOptions { near_threshold: a.near_threshold, imbalance_ratio: a.imbalance_ratio, max_tokens: a.max_tokens };
    let mut report = core_data::check_task(&task, counter.as_deref(), &opts).map_err(data_err)?;
    if let Some(n) = note {
        report.notes.push(n);
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", report.text()),
    }
    Ok(if report.blocks_tuning() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[derive(Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// Share of the examples for validation.
    #[arg(long, default_value_t = 0.1)]
    pub validation: f64,
    /// Share for an eval set, when the task has no data.eval (default 0.2).
    #[arg(long)]
    pub eval: Option<f64>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output directory (default: data/split/ beside the task file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    #[arg(long, default_value_t = DEFAULT_NEAR_THRESHOLD)]
    pub near_threshold: f64,
}

fn split(a: SplitArgs) -> Result<ExitCode> {
    check_fraction("--validation", a.validation)?;
    let task = a.task.load()?;
    let has_eval = task.eval_path().is_some();
    let eval = match (has_eval, a.eval) {
        (true, Some(_)) => {
            eprintln!("note: the task has data.eval; --eval is ignored (its eval set stays as it is)");
            None
        }
        (true, None) => None,
        (false, e) => Some(e.unwrap_or(0.2)),
    };
    if let Some(e) = eval {
        check_fraction("--eval", e)?;
        if e + a.validation >= 1.0 {
            return Err(usage(format!("--eval {e} plus --validation {} leave nothing to train on", a.validation)));
        }
    }
    let opts = SplitOptions { validation: a.validation, eval, seed: a.seed, near_threshold: a.near_threshold };
    let result = core_data::split_examples(&task, &opts).map_err(data_err)?;
    let out = a.out.clone().unwrap_or_else(|| task.dir.join("data").join("split"));
    let paths: Vec<PathBuf> = result.sides.iter().map(|s| out.join(format!("{}.jsonl", s.name))).collect();
    let existing: Vec<String> = paths.iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    if !existing.is_empty() && !a.force {
        return Err(usage(format!("{} already exist(s); pass --force to overwrite", existing.join(", "))));
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (side, p) in result.sides.iter().zip(&paths) {
        let mut text = side.lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    // Counts per label per side.
    let header: Vec<&str> = std::iter::once("label").chain(result.sides.iter().map(|s| s.name.as_str())).collect();
    let mut rows = tunegate_core::report::label_rows(&result.sides.iter().map(|s| s.labels.as_slice()).collect::<Vec<_>>());
    rows.push(std::iter::once("total".to_string()).chain(result.sides.iter().map(|s| s.lines.len().to_string())).collect());
    println!("split {} (seed {}, {} near-duplicate cluster(s) kept whole):\n", tunegate_core::report::show_path(&task.examples_path().unwrap_or_default()), a.seed, result.multi_clusters);
    print!("{}", table(&header, &rows));
    if !result.left_out.is_empty() {
        println!("\nleft out ({}):", result.left_out.len());
        for l in &result.left_out {
            println!("  line {}: {}", l.line, l.reason.replace("matches ./", "matches "));
        }
    }
    println!("\nwrote:");
    for p in &paths {
        println!("  {}", tunegate_core::report::show_path(p));
    }
    println!("\nThe task file was not changed. To use the split, put these lines under `data:` in {}:", task.path.display());
    for (side, p) in result.sides.iter().zip(&paths) {
        let key = match side.name.as_str() {
            "train" => "examples",
            other => other,
        };
        println!("  {key}: {}", relative_to(p, &task.dir).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `p` relative to `base` when it lies under it (as the task file wants its
/// paths), else `p` made absolute.
fn relative_to(p: &Path, base: &Path) -> PathBuf {
    if let Ok(r) = p.strip_prefix(base) {
        return r.to_path_buf();
    }
    match (std::fs::canonicalize(p), std::fs::canonicalize(base)) {
        (Ok(cp), Ok(cb)) => cp.strip_prefix(&cb).map(|r| r.to_path_buf()).unwrap_or(cp),
        _ => p.to_path_buf(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormatArg {
    OpenaiChat,
    PromptCompletion,
    Alpaca,
    Sharegpt,
    Axolotl,
}

impl From<ExportFormatArg> for ExportFormat {
    fn from(f: ExportFormatArg) -> Self {
        match f {
            ExportFormatArg::OpenaiChat => ExportFormat::OpenaiChat,
            ExportFormatArg::PromptCompletion => ExportFormat::PromptCompletion,
            ExportFormatArg::Alpaca => ExportFormat::Alpaca,
            ExportFormatArg::Sharegpt => ExportFormat::Sharegpt,
            ExportFormatArg::Axolotl => ExportFormat::Axolotl,
        }
    }
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    #[arg(long, value_enum)]
    pub format: ExportFormatArg,
    /// Output JSONL (default: data/export/train.FORMAT.jsonl beside the task file).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Epochs for the billed-token estimate (default: tune.epochs, else OpenAI's heuristic).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// The examples to export (default: data.examples), e.g. a split's train.jsonl.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Target model for token counts and price (default: tune.base), e.g. openai:gpt-4o-mini.
    #[arg(long)]
    pub model: Option<String>,
    /// Per-example token limit (default: tune.max_seq_len, else the target model's).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Training price in $ per million tokens, overriding the built-in table.
    #[arg(long)]
    pub price_per_mtok: Option<f64>,
    /// axolotl: the Hugging Face model id to train (default from tune.base).
    #[arg(long)]
    pub base_model: Option<String>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    /// Refuse when an eval case is among the examples (as `tune --strict`),
    /// instead of leaving such examples, repeats and conflicts out.
    #[arg(long)]
    pub strict: bool,
}

fn export_cmd(a: ExportArgs) -> Result<ExitCode> {
    let task = a.task.load()?;
    let format: ExportFormat = a.format.into();
    let tune = task.file.tune.clone();
    let input = match (&a.input, task.examples_path()) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => return Err(usage(format!("{}: no data.examples to export; pass --input FILE", task.path.display()))),
    };
    let cases = load_cases(&input)?;
    check_contract(&task, &input, &cases, true)?;
    // What tuning trains on: without the examples that are eval cases, the
    // repeats and the conflicts (or, strict, a refusal when an eval case leaks).
    let strict = a.strict || tune.as_ref().and_then(|t| t.strict).unwrap_or(false);
    let sel = training_selection(&task, &input, &cases).map_err(data_err)?;
    if strict && sel.left_out.values().any(|why| why.starts_with("the same case as eval")) {
        return Err(usage(format!("{}: eval cases are among the examples and --strict refuses to export them (see `tunegate data check`)", input.display())));
    }
    if let Some(s) = sel.summary(&input).filter(|_| !strict) {
        eprintln!("note: {s}");
    }
    let cases: Vec<_> = cases.into_iter().filter(|c| strict || sel.keeps(c.line)).collect();
    let examples = export::render_examples(&task, &cases, &input).map_err(data_err)?;
    let target = a.model.clone().or_else(|| tune.as_ref().map(|t| t.base.clone())).unwrap_or_default();
    let base_model = if format == ExportFormat::Axolotl {
        let m = a.base_model.clone().or_else(|| tune.as_ref().and_then(|t| export::hf_model_for(&t.base)).map(str::to_string));
        Some(m.ok_or_else(|| usage(format!("axolotl needs a Hugging Face model id for `{target}`: pass --base-model ORG/NAME")))?)
    } else {
        None
    };

    let out = a.output.clone().unwrap_or_else(|| task.dir.join("data").join("export").join(format!("train.{}.jsonl", format.name())));
    let yaml_path = out.with_file_name("axolotl.yaml");
    let mut to_write = vec![out.clone()];
    if format == ExportFormat::Axolotl {
        to_write.push(yaml_path.clone());
    }
    let existing: Vec<String> = to_write.iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    if !existing.is_empty() && !a.force {
        return Err(usage(format!("{} already exist(s); pass --force to overwrite", existing.join(", "))));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut text = String::new();
    for e in &examples {
        text.push_str(&serde_json::to_string(&export::encode(format, &e.messages))?);
        text.push('\n');
    }
    std::fs::write(&out, &text).with_context(|| format!("cannot write {}", out.display()))?;

    // Validate what is on disk, not what we meant to write.
    let (counter, note) = tunegate_run::tokens::counter_for(&target);
    let limit = a.max_tokens.or(tune.as_ref().and_then(|t| t.max_seq_len)).unwrap_or_else(|| core_data::token_limit_for(&target).0);
    let written = std::fs::read_to_string(&out).with_context(|| format!("cannot read back {}", out.display()))?;
    let v = export::validate(format, &written, counter.as_ref(), limit);
    if let Some(n) = &note {
        eprintln!("note: {n}");
    }
    if !v.ok() {
        for p in &v.problems {
            println!("{}:{}: {}: {}", out.display(), p.line, p.check, p.message);
        }
        println!("\n{} problem(s) in {} ({}): fix the data (see `tunegate data check`) and export again", v.problems.len(), out.display(), format.name());
        return Ok(ExitCode::from(1));
    }
    let epochs = match (a.epochs, tune.as_ref().and_then(|t| t.epochs)) {
        (Some(e), _) => Some((e, "--epochs")),
        (None, Some(e)) => Some((e, "tune.epochs")),
        (None, None) => None,
    };
    let price = a.price_per_mtok.or_else(|| export::training_price(&target));
    let st = export::stats(&v, counter.as_ref(), limit, epochs, price);
    println!("wrote {} examples to {} ({}); every check passed", st.examples, out.display(), format.name());
    if let (Some(base), ExportFormat::Axolotl) = (base_model, format) {
        let max_msgs = st.messages.max as usize;
        let seq = export::sequence_len(st.tokens.max as usize, max_msgs);
        let dataset = out.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let yaml = export::axolotl_config(
            &task,
            &AxolotlOptions { base_model: base, dataset, sequence_len: seq, epochs: st.epochs, output_dir: format!("./outputs/{}-lora", task.file.task.name) },
        );
        let missing = export::validate_axolotl_config(&yaml);
        if !missing.is_empty() {
            anyhow::bail!("internal: the axolotl config is incomplete: {}", missing.join(", "));
        }
        std::fs::write(&yaml_path, yaml).with_context(|| format!("cannot write {}", yaml_path.display()))?;
        println!("wrote {} (LoRA, sequence_len {seq}); train with: cd {} && axolotl train axolotl.yaml", yaml_path.display(), yaml_path.parent().map(|p| p.display().to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| ".".into()));
    }
    println!("\ntokens: {} for {target}{}, limit {limit} per example\n", counter.name(), if counter.is_estimate() { " (an estimate)" } else { "" });
    let rows = vec![
        vec!["messages per example".to_string(), st.messages.min.to_string(), format!("{:.1}", st.messages.mean), format!("{:.0}", st.messages.p90), st.messages.max.to_string()],
        vec!["tokens per example".to_string(), st.tokens.min.to_string(), format!("{:.1}", st.tokens.mean), format!("{:.0}", st.tokens.p90), st.tokens.max.to_string()],
    ];
    print!("{}", table(&["", "min", "mean", "p90", "max"], &rows));
    let heuristic = export::default_epochs(st.examples);
    let h = if st.epochs_source.starts_with("OpenAI") { String::new() } else { format!("; OpenAI's default would be {heuristic}") };
    println!("\nepochs: {} ({}{h})", st.epochs, st.epochs_source);
    println!("billed tokens: {} ({} per epoch x {})", thousands(st.billed_tokens), thousands(st.billed_tokens / st.epochs.max(1) as u64), st.epochs);
    match (st.price_per_mtok, st.cost_usd) {
        (Some(p), Some(c)) => {
            let src = if a.price_per_mtok.is_some() { "--price-per-mtok" } else if p == 0.0 { "local training" } else { "OpenAI training price, 2025-06" };
            println!("cost estimate: ${c:.2} at ${p:.2} per million training tokens ({target}; {src})");
        }
        _ => println!("cost estimate: no training price known for `{target}` (pass --price-per-mtok)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
