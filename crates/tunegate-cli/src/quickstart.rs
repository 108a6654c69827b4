//! `tunegate quickstart`: the loop on the bundled example, offline.
//!
//! Today it fetches the embedded model, writes the bundled support-triage
//! task into a working directory and evaluates its prompt variants; the
//! later steps of the loop (advise, tune, compare, HTML report) join it as
//! they are built, and it says so rather than pretending.

use crate::output;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tunegate_run::{RunOptions, Sink};
use tunegate_store::{store_path_for, Store};

/// The bundled example, compiled into the binary so quickstart works from
/// any directory.
pub const EXAMPLE: &[(&str, &str)] = &[
    ("tunegate.yaml", include_str!("../../../examples/support-triage/tunegate.yaml")),
    ("README.md", include_str!("../../../examples/support-triage/README.md")),
    ("baseline.sh", include_str!("../../../examples/support-triage/baseline.sh")),
    ("prompts/instructed.j2", include_str!("../../../examples/support-triage/prompts/instructed.j2")),
    ("prompts/few_shot.j2", include_str!("../../../examples/support-triage/prompts/few_shot.j2")),
    ("data/eval.jsonl", include_str!("../../../examples/support-triage/data/eval.jsonl")),
    ("data/examples.jsonl", include_str!("../../../examples/support-triage/data/examples.jsonl")),
];

#[derive(Args)]
pub struct QuickstartArgs {
    /// Working directory for the example task (kept, so you can explore it).
    #[arg(long, default_value = "tunegate-quickstart")]
    pub dir: PathBuf,
    /// Overwrite the example files in --dir (the run store is kept).
    #[arg(long)]
    pub fresh: bool,
    /// Skip the LoRA fine-tuning step.
    #[arg(long)]
    pub no_tune: bool,
    /// Cases in flight at once (the local model batches up to 16 together).
    #[arg(long, default_value_t = crate::args::CONCURRENCY, value_parser = crate::args::at_least_one)]
    pub concurrency: usize,
}

fn write_example(dir: &Path, fresh: bool) -> Result<()> {
    for (rel, content) in EXAMPLE {
        let p = dir.join(rel);
        if p.exists() && !fresh {
            continue;
        }
        std::fs::create_dir_all(p.parent().unwrap()).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&p, content).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

pub fn run(a: QuickstartArgs) -> Result<ExitCode> {
    eprintln!("[1/5] the embedded model (Gemma 3 270M, GGUF Q4_K_M)");
    let model = crate::model::fetch(&None, false, true)?;
    eprintln!("      {}", model.display());

    eprintln!("[2/5] the bundled example task -> {}", a.dir.display());
    write_example(&a.dir, a.fresh)?;
    let cfg = a.dir.join("tunegate.yaml");

    eprintln!("[3/5] evaluating every prompt variant x provider on the eval set");
    let task = tunegate_core::Task::load(&cfg)?;
    let prep = tunegate_run::prepare(task)?;
    let mut providers = vec![];
    for spec in &prep.task.file.providers {
        providers.push(tunegate_run::build_provider(spec, &prep.task.dir, &store_path_for(&cfg))?);
    }
    let mut opts = RunOptions::new(store_path_for(&cfg));
    opts.concurrency = a.concurrency;
    let progress = Arc::new(crate::progress::ProgressSink::new(true));
    let sinks: Vec<Arc<dyn Sink>> = vec![progress.clone()];
    let rt = crate::args::runtime()?;
    let outcome = rt.block_on(tunegate_run::run(&prep, providers, opts, sinks))?;
    progress.finish();
    let store = Store::open(&store_path_for(&cfg))?;
    let summary = tunegate_run::summarize(&store, &outcome.run_id)?;
    println!("{}", output::summary_table(&summary));
    let mut comparisons = vec![];
    let best = summary.groups.iter().max_by(|x, y| x.pass_rate.partial_cmp(&y.pass_rate).unwrap_or(std::cmp::Ordering::Equal));
    if let Some(b) = best {
        println!(
            "Best: prompt `{}` on {}: {} of the eval set (95% CI {}–{}), run {}.",
            b.prompt,
            b.provider,
            output::pct(b.pass_rate),
            output::pct(b.ci95.0),
            output::pct(b.ci95.1),
            summary.run_id
        );
    }
    // The paired view of the prompt choice on the local model: the shortest
    // prompt (the one a tuned model would keep) against the best variant.
    let local: Vec<&tunegate_run::GroupSummary> = summary.groups.iter().filter(|g| g.provider.starts_with("local:")).collect();
    if let (Some(short), Some(best)) = (local.iter().find(|g| g.prompt == "bare"), local.iter().max_by(|x, y| x.pass_rate.partial_cmp(&y.pass_rate).unwrap_or(std::cmp::Ordering::Equal))) {
        if short.prompt != best.prompt {
            let side = |g: &tunegate_run::GroupSummary| tunegate_run::compare::Side { run_id: summary.run_id.clone(), prompt: Some(g.prompt.clone()), provider: Some(g.provider.clone()) };
            let c = tunegate_run::compare::compare(&store, &side(short), &side(best), 0.05, 0)?;
            println!(
                "Paired, on {}: `{}` {} vs `{}` {}: {} improvements, {} regressions, McNemar p = {}; {}.",
                short.provider,
                short.prompt,
                output::pct(c.pass_rate_a),
                best.prompt,
                output::pct(c.pass_rate_b),
                c.mcnemar.improvements,
                c.mcnemar.regressions,
                tunegate_run::compare::fmt_p(c.mcnemar.p_value),
                c.verdict
            );
            println!("Details: tunegate compare {}:{}@{} {}:{}@{} -c {}", summary.run_id, short.prompt, short.provider, summary.run_id, best.prompt, best.provider, cfg.display());
            comparisons.push(c);
        }
    }
    // The advisor on what was just measured.
    let mut advice = None;
    let mut extra = vec![];
    match tunegate_run::evidence::gather(&prep.task, &cfg, Some(&summary.run_id)).map_err(anyhow::Error::from).and_then(|ev| tunegate_core::advise::advise(&ev, prep.task.file.advise.as_ref()).map_err(anyhow::Error::msg)) {
        Ok(adv) => {
            println!("\nAdvisor: {}: {}", adv.verdict.as_str(), adv.summary);
            if let Some(k) = &adv.keep_prompt {
                println!("  keep prompt `{k}` on top of a tuned model");
            }
            println!("  full report: tunegate advise -c {}", cfg.display());
            advice = Some(adv);
        }
        Err(e) => eprintln!("advisor: {e}"),
    }
    // Tune: LoRA on the embedded model with the short prompt, then evaluate
    // the tuned model on the same eval set and compare, case by case.
    if !a.no_tune {
        if let (Some(tune), Some(base_spec)) = (prep.task.file.tune.clone(), prep.task.file.providers.iter().find(|p| p.id.starts_with("local:")).cloned()) {
            eprintln!("[4/5] fine-tuning: LoRA on the embedded model with the prompt `{}`", tune.prompt);
            let settings = tunegate_tune::Settings::for_task(&prep.task, &tunegate_tune::Overrides::default())?;
            let adapter = tunegate_tune::local::tune_task(&prep.task, &settings, &store_path_for(&cfg), None, &mut crate::progress::TrainProgress::new())?;
            let job = adapter.job_id.clone();
            eprintln!("[5/5] evaluating the tuned model with `{}` and comparing before/after", tune.prompt);
            let spec = adapter.provider_spec(&base_spec, format!("{}+lora", base_spec.name()));
            let (provider, spec) = tunegate_run::build_provider(&spec, &prep.task.dir, &store_path_for(&cfg))?;
            let mut opts = RunOptions::new(store_path_for(&cfg));
            opts.concurrency = a.concurrency;
            opts.only_prompts = vec![tune.prompt.clone()];
            opts.meta = serde_json::json!({"tuned": job});
            let progress = Arc::new(crate::progress::ProgressSink::new(true));
            let sinks: Vec<Arc<dyn Sink>> = vec![progress.clone()];
            let tuned = rt.block_on(tunegate_run::run(&prep, vec![(provider, spec.clone())], opts, sinks))?;
            progress.finish();
            let before = tunegate_run::compare::Side { run_id: summary.run_id.clone(), prompt: Some(tune.prompt.clone()), provider: Some(base_spec.name().to_string()) };
            let after = tunegate_run::compare::Side { run_id: tuned.run_id.clone(), prompt: Some(tune.prompt.clone()), provider: Some(spec.name().to_string()) };
            let c = tunegate_run::compare::compare(&store, &before, &after, 0.05, 0)?;
            extra.push(tunegate_run::summarize(&store, &tuned.run_id)?);
            println!(
                "\nBefore/after fine-tuning, prompt `{}`: base {} -> tuned {} ({:+.1} pts, 95% CI {:+.1} to {:+.1}); {} improvements, {} regressions, McNemar p = {}: {}.",
                tune.prompt,
                output::pct(c.pass_rate_a),
                output::pct(c.pass_rate_b),
                c.bootstrap.pass_rate_diff.estimate * 100.0,
                c.bootstrap.pass_rate_diff.low * 100.0,
                c.bootstrap.pass_rate_diff.high * 100.0,
                c.mcnemar.improvements,
                c.mcnemar.regressions,
                tunegate_run::compare::fmt_p(c.mcnemar.p_value),
                c.verdict
            );
            if let Some(best) = summary.groups.iter().filter(|g| g.provider == base_spec.name()).max_by(|x, y| x.pass_rate.partial_cmp(&y.pass_rate).unwrap_or(std::cmp::Ordering::Equal)) {
                let side = tunegate_run::compare::Side { run_id: summary.run_id.clone(), prompt: Some(best.prompt.clone()), provider: Some(best.provider.clone()) };
                let cb = tunegate_run::compare::compare(&store, &side, &after, 0.05, 0)?;
                println!(
                    "Tuned `{}` vs the best untuned prompt `{}`: {} vs {}, McNemar p = {}: {}.",
                    tune.prompt,
                    best.prompt,
                    output::pct(cb.pass_rate_b),
                    output::pct(cb.pass_rate_a),
                    tunegate_run::compare::fmt_p(cb.mcnemar.p_value),
                    cb.verdict
                );
                comparisons.push(cb);
            }
            comparisons.insert(0, c);
        }
    }
    let report = a.dir.join("report.html");
    std::fs::write(&report, crate::html::eval_report_with(&store, &summary, &extra, &comparisons, advice.as_ref())?).with_context(|| format!("cannot write {}", report.display()))?;
    println!("Report (one self-contained HTML file): {}", report.display());
    println!("\nExplore: tunegate show {} -c {} --failed", summary.run_id, cfg.display());
    println!(
        "Next: tunegate advise -c {} (the full decision report), tunegate show/compare for details.", cfg.display()
    );
    Ok(ExitCode::SUCCESS)
}
