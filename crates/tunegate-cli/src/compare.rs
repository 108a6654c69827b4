//! `tunegate compare A B` and the `eval --baseline` gate.

use crate::args::usage;
use crate::output::{pct, table, Format};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tunegate_run::compare::{compare, fmt_p, resolve_side, side_groups, Comparison, Side};
use tunegate_store::{store_path_for, Store};

#[derive(Args)]
pub struct CompareArgs {
    /// Before: a run id, `latest`, `latest~N`, `RUN:prompt@provider` or `prompt@provider`.
    pub a: String,
    /// After: same forms.
    pub b: String,
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// Significance level.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::REPORT_FORMATS))]
    pub format: Format,
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Regressions and improvements listed at most (text).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Pairwise judge: a provider (an id such as `openai:gpt-4o-mini`, or a
    /// provider name from the task file) says which output is better, asked
    /// in both orders; inconsistent verdicts count as ties.
    #[arg(long, value_name = "PROVIDER")]
    pub judge: Option<String>,
    /// The judge's prompt template (Jinja; `input`, `output_a`, `output_b`,
    /// `criteria`, `expected`), replacing the default.
    #[arg(long, value_name = "FILE")]
    pub judge_prompt: Option<PathBuf>,
    /// What "better" means, passed to the judge's prompt.
    #[arg(long)]
    pub criteria: Option<String>,
    /// Print the judge's default prompt and exit.
    #[arg(long)]
    pub show_judge_prompt: bool,
    /// Judge calls in flight at once.
    #[arg(long, default_value_t = crate::args::CONCURRENCY, value_parser = crate::args::at_least_one)]
    pub concurrency: usize,
}

/// Pairs what to compare: two groups, or the groups two whole runs share.
pub fn comparisons(store: &Store, a: &Side, b: &Side, alpha: f64, seed: u64) -> Result<Vec<Comparison>> {
    let (ga, gb) = (side_groups(store, a)?, side_groups(store, b)?);
    let single = |s: &Side, g: &Vec<(String, String)>| s.prompt.is_some() || g.len() == 1;
    if single(a, &ga) && single(b, &gb) {
        let fix = |s: &Side, g: &Vec<(String, String)>| {
            let mut s = s.clone();
            if s.prompt.is_none() {
                s.prompt = Some(g[0].0.clone());
                s.provider = Some(g[0].1.clone());
            }
            s
        };
        return Ok(vec![compare(store, &fix(a, &ga), &fix(b, &gb), alpha, seed)?]);
    }
    let shared: Vec<&(String, String)> = ga.iter().filter(|g| gb.contains(g)).collect();
    if shared.is_empty() {
        return Err(usage(format!(
            "{} and {} share no prompt@provider group; name one on each side, e.g. {}:{}@{}",
            a.label(),
            b.label(),
            a.run_id,
            ga.first().map(|g| g.0.as_str()).unwrap_or("PROMPT"),
            ga.first().map(|g| g.1.as_str()).unwrap_or("PROVIDER")
        )));
    }
    shared
        .into_iter()
        .map(|(p, v)| {
            let sa = Side { run_id: a.run_id.clone(), prompt: Some(p.clone()), provider: Some(v.clone()) };
            let sb = Side { run_id: b.run_id.clone(), prompt: Some(p.clone()), provider: Some(v.clone()) };
            Ok(compare(store, &sa, &sb, alpha, seed)?)
        })
        .collect()
}

pub fn run(a: CompareArgs) -> Result<ExitCode> {
    if a.show_judge_prompt {
        println!("{}", tunegate_core::judge::DEFAULT_PAIRWISE_PROMPT);
        return Ok(ExitCode::SUCCESS);
    }
    if !(0.0 < a.alpha && a.alpha < 1.0) {
        return Err(usage("--alpha must be within (0, 1)"));
    }
    let path = a.task.path();
    let store = a.task.store()?;
    let (sa, sb) = (resolve_side(&store, &a.a)?, resolve_side(&store, &a.b)?);
    let cs = comparisons(&store, &sa, &sb, a.alpha, a.seed)?;
    if let Some(j) = &a.judge {
        return judge(&a, j, &path, &cs);
    }
    let mut w: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    match a.format {
        Format::Html => w.write_all(crate::html::compare_report(&cs).as_bytes())?,
        Format::Json | Format::Jsonl => {
            let v = if cs.len() == 1 { serde_json::to_value(&cs[0])? } else { serde_json::to_value(&cs)? };
            writeln!(w, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        _ => {
            for c in &cs {
                write!(w, "{}", render_text(c, a.limit))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn signed_pts(x: f64) -> String {
    format!("{:+.1} pts", x * 100.0)
}

pub fn render_text(c: &Comparison, limit: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!("A (before): {}\nB (after):  {}\n\n", c.a.label(), c.b.label()));
    s.push_str(&format!("Verdict: {}\n", c.verdict));
    s.push_str(&format!(
        "Pass rate: {} -> {} ({}; 95% bootstrap CI {} to {}, {} resamples, seed {})\n",
        pct(c.pass_rate_a),
        pct(c.pass_rate_b),
        signed_pts(c.bootstrap.pass_rate_diff.estimate),
        signed_pts(c.bootstrap.pass_rate_diff.low),
        signed_pts(c.bootstrap.pass_rate_diff.high),
        c.bootstrap.resamples,
        c.bootstrap.seed
    ));
    s.push_str(&format!(
        "McNemar exact: {} improvements vs {} regressions among {} paired cases (both pass {}, both fail {}), p = {}\n",
        c.mcnemar.improvements, c.mcnemar.regressions, c.paired, c.mcnemar.both_pass, c.mcnemar.both_fail, fmt_p(c.mcnemar.p_value)
    ));
    s.push_str(&format!(
        "Mean score: {:+.3} (95% CI {:+.3} to {:+.3})\n",
        c.bootstrap.mean_score_diff.estimate, c.bootstrap.mean_score_diff.low, c.bootstrap.mean_score_diff.high
    ));
    if let Some(cl) = &c.clustered {
        s.push_str(&format!(
            "Repeats: {} per case; per-case pass fractions, clustered SE {:.4}: {} (95% CI {} to {}), p = {}\n",
            c.repeats,
            cl.se,
            signed_pts(cl.estimate),
            signed_pts(cl.low),
            signed_pts(cl.high),
            fmt_p(cl.p_value)
        ));
    }
    if let Some(n) = &c.power_note {
        s.push_str(&format!("Note: {n}\n"));
    }
    if !c.only_in_a.is_empty() || !c.only_in_b.is_empty() {
        s.push_str(&format!("Not paired: {} case(s) only in A {:?}, {} only in B {:?}\n", c.only_in_a.len(), c.only_in_a.iter().take(10).collect::<Vec<_>>(), c.only_in_b.len(), c.only_in_b.iter().take(10).collect::<Vec<_>>()));
    }
    if !c.errored.is_empty() {
        s.push_str(&format!("Not compared: {} case(s) with a provider error on a side\n", c.errored.len()));
    }
    let mut rows = vec![
        vec!["prompt tokens (mean)".to_string(), format!("{:.1}", c.prompt_tokens.a), format!("{:.1}", c.prompt_tokens.b), format!("{:+.1}", c.prompt_tokens.delta)],
        vec!["completion tokens (mean)".to_string(), format!("{:.1}", c.completion_tokens.a), format!("{:.1}", c.completion_tokens.b), format!("{:+.1}", c.completion_tokens.delta)],
        vec!["latency p50 (ms)".to_string(), format!("{:.0}", c.latency_p50_ms.a), format!("{:.0}", c.latency_p50_ms.b), format!("{:+.0}", c.latency_p50_ms.delta)],
    ];
    if let Some(cost) = &c.cost_usd {
        rows.push(vec!["cost ($, total)".into(), format!("{:.4}", cost.a), format!("{:.4}", cost.b), format!("{:+.4}", cost.delta)]);
    }
    for (l, d) in &c.per_label {
        rows.push(vec![format!("recall `{l}`"), pct(d.a), pct(d.b), signed_pts(d.delta)]);
    }
    for (f, d) in &c.per_field {
        rows.push(vec![format!("F1 field `{f}`"), format!("{:.3}", d.a), format!("{:.3}", d.b), format!("{:+.3}", d.delta)]);
    }
    s.push('\n');
    s.push_str(&table(&["", "A", "B", "B - A"], &rows));
    let clip = |t: &Option<String>| {
        let t = t.clone().unwrap_or_default().replace('\n', "⏎");
        if t.chars().count() > 70 {
            format!("{}…", t.chars().take(70).collect::<String>())
        } else {
            t
        }
    };
    for (title, list) in [("Regressions (passed in A, failed in B)", &c.regressions), ("Improvements (failed in A, passed in B)", &c.improvements)] {
        s.push_str(&format!("\n{title}: {}\n", list.len()));
        for d in list.iter().take(limit) {
            s.push_str(&format!("  {} (line {}): {}\n    expected {:?} | A: {:?} | B: {:?}\n", d.case_id, d.line, clip(&Some(d.input.clone())), clip(&d.expected), clip(&d.output_a), clip(&d.output_b)));
        }
        if list.len() > limit {
            s.push_str(&format!("  … {} more (--limit, or --format json)\n", list.len() - limit));
        }
    }
    s.push('\n');
    s
}

/// The judge's provider: a provider of the task file by name or id (with
/// its configuration), else an id built with temperature 0.
fn judge_provider(task_path: &std::path::Path, judge: &str) -> Result<(std::sync::Arc<dyn tunegate_providers::Provider>, tunegate_core::ProviderSpec)> {
    let task = tunegate_core::Task::load(task_path).ok();
    let spec = task
        .as_ref()
        .and_then(|t| t.file.providers.iter().find(|p| p.name() == judge || p.id == judge).cloned())
        .unwrap_or_else(|| tunegate_core::task::GraderSpec::Id(judge.to_string()).provider_spec());
    let dir = task.as_ref().map(|t| t.dir.clone()).unwrap_or_else(|| task_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf());
    tunegate_run::build_provider(&spec, &dir, &store_path_for(task_path)).map_err(|e| usage(format!("--judge {judge}: {e}")))
}

fn judge(a: &CompareArgs, judge: &str, task_path: &std::path::Path, cs: &[Comparison]) -> Result<ExitCode> {
    let template = match &a.judge_prompt {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| usage(format!("--judge-prompt {}: {e}", p.display())))?),
        None => None,
    };
    let (provider, spec) = judge_provider(task_path, judge)?;
    let opts = tunegate_run::RunOptions::new(store_path_for(task_path));
    let caller = std::sync::Arc::new(tunegate_run::Caller::new(provider, spec, opts)?);
    let rt = crate::args::runtime()?;
    let o = tunegate_run::judge::PairwiseOptions { template: template.as_deref(), criteria: a.criteria.as_deref(), concurrency: a.concurrency, alpha: a.alpha };
    let mut reports = vec![];
    for c in cs {
        reports.push(rt.block_on(tunegate_run::judge::pairwise(&store_path_for(task_path), &c.a, &c.b, caller.clone(), &o))?);
    }
    let mut w: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    match a.format {
        Format::Json | Format::Jsonl => {
            let v = if reports.len() == 1 { serde_json::to_value(&reports[0])? } else { serde_json::to_value(&reports)? };
            writeln!(w, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        _ => {
            for r in &reports {
                let s = &r.stats;
                writeln!(w, "Pairwise judge `{}`: A = {}, B = {}", r.judge, r.side_a, r.side_b)?;
                writeln!(w, "Judged {} pairs in both orders ({} consistent, {} inconsistent counted as ties); {} error(s); {} unpaired", r.judged, r.consistent, r.judged - r.consistent, r.errors, r.unpaired)?;
                writeln!(w, "A wins {}, B wins {}, ties {}", s.a_wins, s.b_wins, s.ties)?;
                match s.win_rate_b {
                    Some(x) => writeln!(w, "Win rate of B: {} of decisive verdicts (95% Wilson CI {}–{}); sign test p = {}", pct(x), pct(s.ci95.0), pct(s.ci95.1), fmt_p(s.sign_test_p))?,
                    None => writeln!(w, "Win rate of B: no decisive verdict")?,
                }
                writeln!(w, "Verdict: {}", s.verdict)?;
                let cost = r.calls.cost_usd.map(|c| format!("${c:.5}")).unwrap_or_else(|| "unknown (no price for this provider)".into());
                writeln!(w, "Judge calls: {} made, {} from the cache, {} retries; cost {cost}", r.calls.provider_calls, r.calls.cache_hits, r.calls.retries)?;
                for v in r.verdicts.iter().filter(|v| v.error.is_some()).take(a.limit) {
                    writeln!(w, "  error on {}: {}", v.case_id, v.error.as_deref().unwrap_or(""))?;
                }
                writeln!(w)?;
            }
        }
    }
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
