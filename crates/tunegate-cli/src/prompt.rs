//! `tunegate prompt minimize | sweep | vary`: the prompt lab. Arguments,
//! the cost estimate and confirmation, and the printed reports; the search
//! and the statistics are in tunegate_run::lab and tunegate_core::lab.

use crate::args::{runtime, usage};
use crate::progress::ProgressSink;
use crate::args::Format;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tunegate_core::advise::pct;
use tunegate_core::lab::*;
use tunegate_core::task::{PromptSource, ShotStrategy};
use tunegate_core::Task;
use tunegate_run::lab::{self as rlab, Budget, Estimate, Lab, LabConfig, LabError};
use tunegate_run::Sink;
use tunegate_store::store_path_for;

#[derive(Subcommand)]
pub enum PromptCommand {
    /// Which parts of a prompt matter, and the smallest prompt not significantly worse.
    Minimize(MinimizeArgs),
    /// The few-shot learning curve: pass rate against the number of examples.
    Sweep(SweepArgs),
    /// Fragility: pass rate across reorderings, relabelings, reformattings, paraphrases.
    Vary(VaryArgs),
}

#[derive(Args)]
pub struct LabArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// The prompt to study (its id in the task file).
    #[arg(long)]
    pub prompt: String,
    /// The provider to evaluate with (id or label); default: the first in the task file.
    #[arg(long)]
    pub provider: Option<String>,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
    /// Cap on spending: provider calls (`500`) or US dollars (`$2.50`).
    #[arg(long)]
    pub budget: Option<String>,
    /// Do not ask before spending money on a priced provider.
    #[arg(long)]
    pub yes: bool,
    /// Use a stratified sample of this many eval cases instead of all.
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Seed of --sample.
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// Report format (the JSON is what `tunegate advise` reads from the store).
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::TEXT_OR_JSON))]
    pub format: Format,
    /// Write the report to a file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct MinimizeArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Significance level of "significantly worse" (one-sided exact McNemar).
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Also refuse any drop costing more than this share of pass rate (0..1),
    /// significant or not (useful on small eval sets).
    #[arg(long, value_name = "X")]
    pub max_drop: Option<f64>,
    /// Add the smallest prompt to the task file under this new id (never overwrites).
    #[arg(long, value_name = "ID")]
    pub write: Option<String>,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Numbers of examples to try.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4,8,16,32")]
    pub shots: Vec<usize>,
    /// Draws (seeds) per number of examples.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// How examples are drawn (default: the prompt's own, else stratified).
    #[arg(long, value_parser = ["stratified", "random", "first"])]
    pub strategy: Option<String>,
    /// Significance level for the curve's shape.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
}

#[derive(Args)]
pub struct VaryArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Variants per random family (example order, sentence order, label order).
    #[arg(long, default_value_t = 3)]
    pub variants: u64,
    /// A paraphrase of the prompt's instruction (repeatable).
    #[arg(long)]
    pub paraphrase: Vec<String>,
    /// A file of paraphrases, separated by lines holding only `---`.
    #[arg(long, value_name = "FILE")]
    pub paraphrases: Option<PathBuf>,
    /// Ask this provider (a task provider's id or label) for paraphrases.
    #[arg(long, value_name = "PROVIDER")]
    pub paraphrase_with: Option<String>,
    /// How many paraphrases to ask --paraphrase-with for.
    #[arg(long, default_value_t = 3)]
    pub paraphrase_count: u64,
}

pub fn run(c: PromptCommand) -> Result<ExitCode> {
    match c {
        PromptCommand::Minimize(a) => minimize(a),
        PromptCommand::Sweep(a) => sweep(a),
        PromptCommand::Vary(a) => vary(a),
    }
}

struct Setup {
    path: PathBuf,
    task: Task,
    src: PromptSource,
    lab: Lab,
    progress: Arc<ProgressSink>,
    price_note: String,
}

fn find_provider(task: &Task, name: Option<&str>) -> Result<tunegate_core::ProviderSpec> {
    match name {
        None => task.file.providers.first().cloned().ok_or_else(|| usage("the task has no provider")),
        Some(n) => task.file.providers.iter().find(|p| p.name() == n || p.id == n).cloned().ok_or_else(|| {
            usage(format!("--provider {n}: no such provider in {} (have: {})", task.path.display(), task.file.providers.iter().map(|p| p.name().to_string()).collect::<Vec<_>>().join(", ")))
        }),
    }
}

fn setup(a: &LabArgs, kind: &str) -> Result<Setup> {
    let path = a.task.path();
    let task = a.task.load()?;
    let src = task.prompt_sources.iter().find(|p| p.id == a.prompt).cloned().ok_or_else(|| {
        usage(format!("--prompt {}: no such prompt in {} (have: {})", a.prompt, path.display(), task.prompt_sources.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")))
    })?;
    if a.sample == Some(0) {
        return Err(usage("--sample must be at least 1"));
    }
    let budget = match &a.budget {
        Some(b) => b.parse::<Budget>().map_err(|e| usage(format!("--budget: {e}")))?,
        None => Budget::Unlimited,
    };
    let spec = find_provider(&task, a.provider.as_deref())?;
    let (provider, spec) = tunegate_run::build_provider(&spec, &task.dir, &store_path_for(&path)).with_context(|| format!("{}: provider `{}`", task.path.display(), spec.id))?;
    let (counter, note) = tunegate_run::tokens::counter_for(&spec.id);
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let (price, price_note) = tunegate_providers::pricing::price_of(&spec);
    let progress = Arc::new(ProgressSink::new(!a.run.no_progress && std::io::stderr().is_terminal()));
    let sinks: Vec<Arc<dyn Sink>> = vec![progress.clone()];
    let cfg = LabConfig {
        store_path: store_path_for(&path),
        concurrency: a.run.concurrency.max(1),
        use_cache: !a.run.no_cache,
        max_retries: a.run.max_retries,
        stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        kind: kind.into(),
        budget,
        sample: a.sample,
        price,
        seed: a.sample_seed,
    };
    let mut lab = Lab::new(task.clone(), provider, spec, counter, cfg, sinks)?;
    lab.set_meta(serde_json::json!({"lab": kind, "source_prompt": src.id, "sample": a.sample}));
    Ok(Setup { path, task, src, lab, progress, price_note })
}

/// Prints the plan and asks before spending money: a priced provider
/// needs a yes (or --yes); free ones (local, exec) just go.
fn confirm(e: &Estimate, a: &LabArgs, s: &Setup, partial_ok: bool) -> Result<()> {
    let more = if e.more_calls_at_most > 0 { format!(" (+ at most {} more in later rounds)", e.more_calls_at_most) } else { String::new() };
    let cost = match e.usd {
        Some(u) => format!("about ${u:.4}"),
        None => format!("no cost estimate ({})", s.price_note),
    };
    eprintln!("plan: {} variant(s) x {} cases = {} items; {} cached; {} provider call(s){more}; {cost}", e.variants, e.cases, e.items, e.cached, e.calls);
    if let Err(err) = s.lab.check_budget(e) {
        if !partial_ok {
            return Err(usage(err.to_string()));
        }
        eprintln!("note: {err}; the sweep measures the points the budget covers and stops");
    }
    let paid = e.usd.map(|u| u > 0.0).unwrap_or(false) && (e.calls > 0 || e.more_calls_at_most > 0);
    if paid && !a.yes {
        if !std::io::stdin().is_terminal() {
            return Err(usage("this spends money on provider calls: pass --yes to proceed (and --budget to cap it)"));
        }
        eprint!("Proceed? [y/N] ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok();
        if !matches!(line.trim().to_lowercase().as_str(), "y" | "yes") {
            return Err(usage("cancelled: nothing was spent"));
        }
    }
    Ok(())
}

fn log_fn(enabled: bool) -> impl Fn(String) {
    move |m: String| {
        if enabled {
            eprintln!("· {m}");
        }
    }
}

/// Runs a lab future with Ctrl-C wired to a clean stop.
fn drive<T>(stop: Arc<std::sync::atomic::AtomicBool>, progress: Arc<ProgressSink>, fut: impl std::future::Future<Output = Result<T, LabError>>) -> Result<T> {
    let rt = runtime()?;
    let res = rt.block_on(async {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing cases in flight; what was measured stays in the store (re-running is free: it is cached)");
                stop.store(true, Ordering::Relaxed);
            }
        });
        fut.await
    });
    progress.finish();
    res.map_err(|e| match e {
        LabError::Run(r) => anyhow::Error::new(r),
        LabError::Input(m) => usage(m),
        LabError::Budget { .. } => usage(e.to_string()),
        LabError::Interrupted(_) => anyhow::anyhow!(e.to_string()),
    })
}

fn emit(a: &LabArgs, text: String, json: serde_json::Value) -> Result<()> {
    let body = match a.format {
        Format::Json => serde_json::to_string_pretty(&json)? + "\n",
        _ => text,
    };
    match &a.output {
        Some(p) => std::fs::write(p, body).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{body}"),
    }
    Ok(())
}

// ---------------------------------------------------------------- minimize

pub fn minimize(a: MinimizeArgs) -> Result<ExitCode> {
    if !(0.0 < a.alpha && a.alpha < 1.0) {
        return Err(usage(format!("--alpha {} is outside (0, 1)", a.alpha)));
    }
    if let Some(x) = a.max_drop {
        if !(0.0..=1.0).contains(&x) {
            return Err(usage(format!("--max-drop {x} is outside 0..1")));
        }
    }
    let mut s = setup(&a.lab, "ablation")?;
    if let Some(id) = &a.write {
        check_new_id(&s.task, id)?;
    }
    let d = rlab::dissect(&s.lab, &s.src);
    if d.parts.is_empty() {
        return Err(usage(format!("prompt `{}` has no part that can be dropped: its text is all template logic or case variables", s.src.id)));
    }
    let round = rlab::minimize_round(&d, &s.src);
    let mut e = s.lab.estimate(&round)?;
    e.more_calls_at_most = (d.parts.len().saturating_sub(1) * s.lab.cases.len()) as u64;
    confirm(&e, &a.lab, &s, false)?;
    let log = log_fn(!a.lab.run.no_progress);
    let src = s.src.clone();
    let o = rlab::MinimizeOptions { alpha: a.alpha, max_drop: a.max_drop };
    let (stop, prog) = (s.lab.stop_flag(), s.progress.clone());
    let mut report = drive(stop, prog, rlab::minimize(&mut s.lab, &src, &o, &log))?;
    if let Some(id) = &a.write {
        if report.best_dropped.is_empty() {
            eprintln!("--write {id}: nothing written, no part can be dropped");
        } else {
            write_variant(&s, id, &report)?;
            report.written_as = Some(id.clone());
        }
    }
    s.lab.store_report(&report)?;
    emit(&a.lab, tunegate_core::lab_report::minimize_text(&report, &s.path, &s.price_note), serde_json::to_value(&report)?)?;
    Ok(ExitCode::SUCCESS)
}

fn check_new_id(task: &Task, id: &str) -> Result<()> {
    if id.trim().is_empty() || id.contains('@') || id.contains('~') {
        return Err(usage(format!("--write {id}: a prompt id must be non-empty, without `@` or `~`")));
    }
    if task.prompt_sources.iter().any(|p| p.id == id) {
        return Err(usage(format!("--write {id}: {} already has a prompt `{id}`; choose a new id (the lab never overwrites a prompt)", task.path.display())));
    }
    Ok(())
}

fn write_variant(s: &Setup, id: &str, r: &MinimizeReport) -> Result<()> {
    // Re-read: the file may have changed while the lab ran.
    let source = std::fs::read_to_string(&s.path).with_context(|| format!("cannot read {}", s.path.display()))?;
    let task = Task::from_source(&s.path, source.clone())?;
    check_new_id(&task, id)?;
    let shots = s.src.shots.clone().map(|sh| tunegate_core::task::ShotsSpec { order: r.best_shots_order.clone(), ..sh });
    let v = PromptSource { id: id.into(), system: r.best_system.clone(), template: r.best_template.clone(), shots, ..s.src.clone() };
    let comment = format!(
        "`{}` minimized by `tunegate prompt minimize` (run {}): dropped {}; {} tokens ({} fewer), {} vs {} on {}",
        r.prompt,
        r.run_id,
        r.best_dropped.join(", "),
        r.best_tokens.round(),
        pct(r.token_saving),
        pct(r.best.rate),
        pct(r.full.rate),
        r.provider
    );
    let text = append_prompt(&source, &v, &comment).map_err(|m| usage(format!("--write {id}: {m}")))?;
    Task::from_source(&s.path, text.clone()).context("the task file with the new prompt does not validate; nothing written")?;
    let tmp = s.path.with_extension("yaml.tunegate-tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &s.path).with_context(|| format!("cannot replace {}", s.path.display()))?;
    eprintln!("wrote prompt `{id}` to {}", s.path.display());
    Ok(())
}

// ------------------------------------------------------------------- sweep

pub fn sweep(a: SweepArgs) -> Result<ExitCode> {
    if a.shots.is_empty() {
        return Err(usage("--shots needs at least one number"));
    }
    let mut s = setup(&a.lab, "sweep")?;
    let strategy = match a.strategy.as_deref() {
        Some("random") => Some(ShotStrategy::Random),
        Some("first") => Some(ShotStrategy::First),
        Some(_) => Some(ShotStrategy::Stratified),
        None => None,
    };
    if !uses_shots(&s.src) {
        return Err(usage(format!("prompt `{}` does not show `shots` in its template: a sweep has nothing to vary (add a `{{% for s in shots %}}` loop)", s.src.id)));
    }
    let base_seed = s.src.shots.as_ref().map(|x| x.seed).unwrap_or(0);
    let strat = strategy.or(s.src.shots.as_ref().map(|x| x.strategy)).unwrap_or_default();
    let mut plan = vec![];
    for &k in &a.shots {
        let seeds = if k == 0 || strat == ShotStrategy::First { 1 } else { a.seeds.max(1) };
        for sd in 0..seeds {
            plan.push(PromptSource { id: format!("{}~k{k}~seed{}", s.src.id, base_seed + sd), shots: Some(tunegate_core::task::ShotsSpec { k, strategy: strat, seed: base_seed + sd, order: None }), ..s.src.clone() });
        }
    }
    let e = s.lab.estimate(&plan)?;
    confirm(&e, &a.lab, &s, true)?;
    let log = log_fn(!a.lab.run.no_progress);
    let src = s.src.clone();
    let o = rlab::SweepOptions { ks: a.shots.clone(), seeds: a.seeds, strategy, alpha: a.alpha };
    let (stop, prog) = (s.lab.stop_flag(), s.progress.clone());
    let report = drive(stop, prog, rlab::sweep(&mut s.lab, &src, &o, &log))?;
    s.lab.store_report(&report)?;
    emit(&a.lab, report.text(), serde_json::to_value(&report)?)?;
    Ok(ExitCode::SUCCESS)
}

// -------------------------------------------------------------------- vary

pub fn vary(a: VaryArgs) -> Result<ExitCode> {
    let mut s = setup(&a.lab, "variation")?;
    let mut paras = a.paraphrase.clone();
    if let Some(f) = &a.paraphrases {
        let t = std::fs::read_to_string(f).map_err(|e| usage(format!("--paraphrases {}: {e}", f.display())))?;
        paras.extend(t.split("\n---\n").map(|x| x.trim().trim_end_matches("---").trim().to_string()).filter(|x| !x.is_empty()));
    }
    let d = rlab::dissect(&s.lab, &s.src);
    if !paras.is_empty() || a.paraphrase_with.is_some() {
        if d.instruction().is_none() {
            return Err(usage(format!("prompt `{}` has no system message or instruction paragraph to paraphrase", s.src.id)));
        }
    }
    if let Some(pw) = &a.paraphrase_with {
        let spec = find_provider(&s.task, Some(pw))?;
        let (provider, spec) = tunegate_run::build_provider(&spec, &s.task.dir, &store_path_for(&s.path)).with_context(|| format!("provider `{}`", spec.id))?;
        let instruction = d.instruction().unwrap_or_default();
        let sp = store_path_for(&s.path);
        let n = a.paraphrase_count;
        let got = runtime()?.block_on(rlab::paraphrase(&provider, &spec, &sp, &instruction, n)).map_err(|e| usage(e.to_string()))?;
        eprintln!("· {} paraphrase(s) from {}", got.len(), spec.name());
        paras.extend(got);
    }
    let o = rlab::VaryOptions { per_family: a.variants, paraphrases: paras };
    let vars: Vec<PromptSource> = rlab::variations(&s.lab, &s.src, &o).into_iter().map(|v| v.0).collect();
    if vars.len() < 2 {
        return Err(usage(format!("prompt `{}` offers nothing to vary (no examples, sentences, labels or formatting); pass --paraphrase TEXT", s.src.id)));
    }
    let e = s.lab.estimate(&vars)?;
    confirm(&e, &a.lab, &s, false)?;
    let log = log_fn(!a.lab.run.no_progress);
    let src = s.src.clone();
    let (stop, prog) = (s.lab.stop_flag(), s.progress.clone());
    let report = drive(stop, prog, rlab::vary(&mut s.lab, &src, &o, &log))?;
    s.lab.store_report(&report)?;
    emit(&a.lab, report.text(), serde_json::to_value(&report)?)?;
    Ok(ExitCode::SUCCESS)
}
