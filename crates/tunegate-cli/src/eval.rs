//! `tunegate eval`, `runs` and `show`: run the task, list its runs, show one.

use crate::args::{runtime, usage, Format};
use crate::output;
use crate::progress::ProgressSink;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tunegate_run::{RunOptions, Sink};
use tunegate_store::{store_path_for, Store};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// Ask each provider N times per case (measures stability).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    #[command(flatten)]
    pub run: crate::args::RunArgs,
    /// Continue an interrupted run (the latest, or RUN) instead of starting anew.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "RUN")]
    pub resume: Option<String>,
    /// Only these prompt ids (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Only these providers, by id or label (repeatable).
    #[arg(long = "provider")]
    pub providers: Vec<String>,
    /// Output format.
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::REPORT_FORMATS))]
    pub format: Format,
    /// Write the output to a file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Exit 1 unless every prompt x provider passes at least this share of cases (0..1).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// CI gate: compare with this run (same prompt@provider groups) and exit 1
    /// when the new run is significantly worse (McNemar, --alpha).
    #[arg(long, value_name = "RUN")]
    pub baseline: Option<String>,
    /// With --baseline: also exit 1 when a pass rate drops by more than this (0..1).
    #[arg(long, value_name = "X")]
    pub max_regression: Option<f64>,
    /// Significance level for --baseline.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Write the calls the cache cannot answer to FILE, one line each in
    /// OpenAI's Batch input format, and leave them pending in the run: for
    /// OpenAI's Batch API, vLLM `run-batch` or Ray Data.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["import_batch", "baseline", "threshold"])]
    pub export_batch: Option<PathBuf>,
    /// Answer a run's pending calls from an engine's output FILE (OpenAI's
    /// Batch output format, any order) and score them; the run is the one
    /// the file's ids name, or --resume RUN.
    #[arg(long, value_name = "FILE")]
    pub import_batch: Option<PathBuf>,
    /// Send the calls the cache cannot answer through the providers' batch
    /// endpoints (OpenAI's Batch API, Anthropic's Message Batches: half the
    /// price, answers within a day), wait for them and score the answers.
    #[arg(long, conflicts_with_all = ["export_batch", "import_batch", "attach"])]
    pub batch: bool,
    /// Wait again for the vendor batches of a run (the latest, or RUN)
    /// after `--batch` stopped watching, and score their answers.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "RUN", conflicts_with_all = ["export_batch", "import_batch", "resume"])]
    pub attach: Option<String>,
    /// Seconds between looks at a vendor batch.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub poll_interval: f64,
    /// Print the default grading prompt of `llm-rubric` assertions and exit.
    #[arg(long)]
    pub show_grader_prompt: bool,
}

pub fn eval(a: EvalArgs) -> Result<ExitCode> {
    if a.show_grader_prompt {
        println!("{}", tunegate_core::judge::DEFAULT_RUBRIC_PROMPT);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(usage(format!("--threshold {t} is outside 0..1")));
        }
    }
    let path = a.task.path();
    let task = a.task.load()?;
    let prep = tunegate_run::prepare(task)?;
    if let Some(x) = a.max_regression {
        if !(0.0..=1.0).contains(&x) || a.baseline.is_none() {
            return Err(usage("--max-regression takes a value in 0..1 and needs --baseline"));
        }
    }
    // Resolve the baseline before running, so a typo fails in the first second.
    let base_side = match &a.baseline {
        Some(b) => {
            let sp = store_path_for(&path);
            if !sp.exists() {
                return Err(usage(format!("--baseline {b}: there is no run store yet at {}", sp.display())));
            }
            Some(tunegate_run::compare::resolve_side(&Store::open(&sp)?, b)?)
        }
        None => None,
    };
    let mut providers = vec![];
    for spec in &prep.task.file.providers {
        if !a.providers.is_empty() && !a.providers.iter().any(|n| n == spec.name() || n == &spec.id) {
            continue;
        }
        providers.push(tunegate_run::build_provider(spec, &prep.task.dir, &store_path_for(&path)).with_context(|| format!("{}: provider `{}`", prep.task.path.display(), spec.id))?);
    }
    for p in &a.prompts {
        if !prep.prompts.iter().any(|x| &x.id == p) {
            return Err(usage(format!("--prompt {p}: no such prompt in {}", path.display())));
        }
    }
    if providers.is_empty() {
        return Err(usage(format!("--provider: no such provider in {}", path.display())));
    }
    let mut opts = RunOptions::new(store_path_for(&path));
    opts.concurrency = a.run.concurrency.max(1);
    opts.repeat = a.repeat.max(1);
    opts.use_cache = !a.run.no_cache;
    opts.resume = a.resume.clone();
    opts.max_retries = a.run.max_retries;
    opts.only_prompts = a.prompts.clone();
    let rt = runtime()?;
    let batch = match a.batch || a.attach.is_some() {
        true => crate::batch::vendor(&a, &prep, &providers, &mut opts, &rt, &path)?,
        false => crate::batch::prepare(&a, &path, &mut opts)?,
    };
    // A resumed run continues its own prompts and providers, not the whole
    // task's, unless the flags name others.
    if let (Some(sel), true) = (&opts.resume, store_path_for(&path).exists()) {
        let meta = Store::open(&store_path_for(&path))?.resolve_run(sel)?.meta;
        let list = |k: &str| meta.get(k).and_then(|v| v.as_array()).map(|v| v.iter().filter_map(|x| x.as_str().map(str::to_string)).collect::<Vec<_>>()).unwrap_or_default();
        if a.prompts.is_empty() {
            opts.only_prompts = list("prompts");
        }
        if a.providers.is_empty() {
            opts.only_providers = list("providers");
        }
    }
    let stop = opts.stop.clone();
    let progress = Arc::new(ProgressSink::new(!a.run.no_progress && a.format == Format::Text || !a.run.no_progress && a.output.is_some()));
    let sinks: Vec<Arc<dyn Sink>> = vec![progress.clone()];
    let outcome = rt.block_on(async {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing cases in flight; continue with `tunegate eval --resume`");
                stop.store(true, Ordering::Relaxed);
            }
        });
        tunegate_run::run(&prep, providers, opts, sinks).await
    })?;
    progress.finish();
    let store = Store::open(&store_path_for(&path))?;
    if let Some(code) = crate::batch::finish(&batch, &store, &outcome, &path)? {
        return Ok(code);
    }
    let summary = tunegate_run::summarize(&store, &outcome.run_id)?;
    // The baseline gate: every group the two runs share, compared paired.
    let gate = match &base_side {
        Some(b) => {
            let new = tunegate_run::compare::Side { run_id: outcome.run_id.clone(), prompt: None, provider: None };
            crate::compare::comparisons(&store, b, &new, a.alpha, 0)?
        }
        None => vec![],
    };
    output::write_eval(&store, &summary, &outcome, a.format, a.output.as_deref(), &gate)?;
    let mut gate_failed = false;
    for c in &gate {
        let drop = c.pass_rate_a - c.pass_rate_b;
        let too_big = a.max_regression.map(|x| drop > x).unwrap_or(false);
        if c.better == Some(false) || too_big {
            gate_failed = true;
            eprintln!(
                "baseline gate: {} regressed against {}: {} -> {} ({} regressions, McNemar p = {}){}",
                c.b.label(),
                c.a.label(),
                output::pct(c.pass_rate_a),
                output::pct(c.pass_rate_b),
                c.mcnemar.regressions,
                tunegate_run::compare::fmt_p(c.mcnemar.p_value),
                if too_big { format!("; drop over --max-regression {}", a.max_regression.unwrap_or(0.0)) } else { String::new() }
            );
        }
    }
    if a.baseline.is_some() {
        if gate_failed {
            return Ok(ExitCode::from(1));
        }
        eprintln!("baseline gate: no significant regression against {}", a.baseline.as_deref().unwrap_or(""));
        // With a baseline the gate decides the exit code, not absolute failures.
        return Ok(if outcome.interrupted { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    let below = a.threshold.map(|t| summary.groups.iter().any(|g| g.pass_rate < t)).unwrap_or(false);
    if outcome.interrupted && batch.is_some() {
        return Ok(ExitCode::from(1));
    }
    if outcome.interrupted {
        eprintln!("run {} is incomplete ({} of {} cases); continue with: tunegate eval -c {} --resume {}", outcome.run_id, store.count_results(&outcome.run_id)?, outcome.planned, path.display(), outcome.run_id);
        return Ok(ExitCode::from(1));
    }
    if let Some(t) = a.threshold {
        if below {
            eprintln!("threshold not met: a prompt x provider passed less than {:.1}% of cases", t * 100.0);
        }
    }
    let failing = summary.failed > 0 || summary.errors > 0;
    Ok(if below || (a.threshold.is_none() && failing) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[derive(Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::REPORT_FORMATS))]
    pub format: Format,
}

pub fn runs(a: RunsArgs) -> Result<ExitCode> {
    let store = a.task.store()?;
    let runs = store.list_runs(a.limit)?;
    output::write_runs(&store, &runs, a.format)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ShowArgs {
    /// Run id (or a unique prefix), or `latest`.
    #[arg(default_value = "latest")]
    pub run: String,
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// Only failed cases and errors.
    #[arg(long)]
    pub failed: bool,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::REPORT_FORMATS))]
    pub format: Format,
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// At most this many cases in the text view.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub fn show(a: ShowArgs) -> Result<ExitCode> {
    let store = a.task.store()?;
    let run = store.resolve_run(&a.run)?;
    let summary = tunegate_run::summarize(&store, &run.id)?;
    output::write_show(&store, &summary, a.failed, a.limit, a.format, a.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
