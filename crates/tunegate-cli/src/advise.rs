//! `tunegate advise`: gathers the evidence (task file, data check, the run
//! store, the task's git history) and prints the advisor's report. The
//! rules live in `tunegate_core::advise`; this file only measures and prints.

use crate::args::Format;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use tunegate_core::advise::{self, Advice, ChurnEvidence, Evidence, GitCommit, Outcome, ProviderPrice, RevisionEvent, RunEvidence, TaskFacts};
use tunegate_core::data::{self as core_data, CharEstimate, CheckOptions, TokenCounter};
use tunegate_core::dataset::{load_cases_tolerant, Case};
use tunegate_core::task::hash_json;
use tunegate_core::Task;
use tunegate_store::{store_path_for, Store};

#[derive(Args)]
pub struct AdviseArgs {
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// The run to judge (id, prefix, `latest`); default: the task's latest eval run.
    #[arg(long)]
    pub run: Option<String>,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(&[Format::Text, Format::Json, Format::Md, Format::Html]))]
    pub format: Format,
}

pub fn run(a: AdviseArgs) -> Result<ExitCode> {
    let path = a.task.path();
    let task = a.task.load()?;
    let ev = gather(&task, &path, a.run.as_deref())?;
    let advice = advise::advise(&ev, task.file.advise.as_ref()).map_err(|m| anyhow::Error::new(tunegate_core::InputError::new(&path, m).field("advise")))?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&advice)?),
        Format::Md => print!("{}", markdown(&advice, &path)),
        Format::Html => print!("{}", crate::html::advice_report(&advice)),
        _ => print!("{}", text(&advice, &path)),
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ evidence

fn load(p: Option<PathBuf>, notes: &mut Vec<String>) -> Option<Vec<Case>> {
    let p = p?;
    match load_cases_tolerant(&p) {
        Ok(l) => Some(l.cases),
        Err(e) => {
            notes.push(format!("cannot read {}: {}", p.display(), e.message));
            None
        }
    }
}

/// The counter for prompt anatomy: the first provider whose tokenizer
/// tunegate has (tiktoken for OpenAI models, the GGUF tokenizer for the
/// local model), else the 4-characters-a-token estimate.
fn anatomy_counter(task: &Task, notes: &mut Vec<String>) -> Box<dyn TokenCounter> {
    let ids: Vec<&str> = task.file.providers.iter().map(|p| p.id.as_str()).collect();
    if let Some(id) = ids.iter().find(|i| i.starts_with("openai:")) {
        return crate::tokens::counter_for(id).0;
    }
    if let Some(id) = ids.iter().find(|i| i.starts_with("local:")) {
        let (c, note) = crate::tokens::counter_for(id);
        if let Some(n) = note {
            notes.push(n);
        }
        return c;
    }
    notes.push("no provider with a known tokenizer: prompt token counts are estimates (4 characters a token)".into());
    Box::new(CharEstimate)
}

fn prices(task: &Task) -> Vec<ProviderPrice> {
    task.file
        .providers
        .iter()
        .map(|p| {
            let (price, source) = tunegate_providers::pricing::price_of(p);
            ProviderPrice { provider: p.name().to_string(), price, source }
        })
        .collect()
}

fn age_days(now: i64, ts: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(|t| (now - t.timestamp()) as f64 / 86400.0)
}

fn run_evidence(store: &Store, task: &Task, sel: Option<&str>) -> Result<Option<RunEvidence>> {
    let run = match sel {
        Some(s) => store.resolve_run(s)?,
        None => match store.list_runs(200)?.into_iter().find(|r| r.kind == "eval" && r.task_name == task.file.task.name) {
            Some(r) => r,
            None => return Ok(None),
        },
    };
    let mut outcomes = vec![];
    store.for_each_result(&run.id, true, |r| {
        let failed = r.error.is_none() && r.pass != Some(true);
        let prompt_text = failed.then(|| {
            r.messages.as_array().map(|ms| ms.iter().filter_map(|m| m.get("content").and_then(|c| c.as_str())).collect::<Vec<_>>().join("\n\n")).unwrap_or_default()
        });
        outcomes.push(Outcome {
            prompt: r.prompt_id,
            provider: r.provider,
            case_id: r.case_id,
            repeat: r.repeat,
            tags: r.tags,
            pass: r.pass,
            error: r.error,
            output: r.output,
            expected: r.expected.as_ref().map(tunegate_core::dataset::value_text),
            prompt_text,
            assertions: r.assertions,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        })
    })?;
    Ok(Some(RunEvidence { run_id: run.id, created_at: run.created_at, repeat: run.repeat, outcomes }))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// The task's git history: commits touching the task file, its prompt
/// files and its data, oldest first, each marked with what it changed.
/// A commit that creates a file is not a change; a task-file commit
/// changes the contract when the hash of its `task` and `assert` sections
/// differs from the previous version, and a prompt when `prompts` differs.
fn git_history(task: &Task, now: i64) -> (Option<Vec<GitCommit>>, Option<String>) {
    let dir = &task.dir;
    if Command::new("git").arg("--version").output().is_err() {
        return (None, Some("git is not installed: churn comes from the run store only".into()));
    }
    let Some(prefix) = git(dir, &["rev-parse", "--show-prefix"]) else {
        return (None, Some(format!("{} is not in a git repository: churn comes from the run store only", dir.display())));
    };
    let prefix = prefix.trim().to_string();
    let rel = |p: &Path| format!("{prefix}{}", p.display()).replace("/./", "/").trim_start_matches("./").to_string();
    let task_file = task.path.file_name().map(PathBuf::from).unwrap_or_default();
    let f = &task.file;
    let prompt_files: Vec<PathBuf> = f.prompts.iter().flat_map(|p| [p.template_file.clone(), p.system_file.clone()]).flatten().collect();
    let data_files: Vec<PathBuf> = [f.data.eval.clone(), f.data.examples.clone(), f.data.validation.clone()].into_iter().flatten().collect();
    let mut args: Vec<String> = ["log", "--reverse", "--max-count=500", "--format=@@ %H %ct", "--name-status", "--"].iter().map(|s| s.to_string()).collect();
    args.push(task_file.display().to_string());
    args.extend(prompt_files.iter().chain(&data_files).map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(log) = git(dir, &argv) else {
        return (None, Some("git log failed: churn comes from the run store only".into()));
    };
    let task_rel = rel(&task_file);
    let prompt_rel: Vec<String> = prompt_files.iter().map(|p| rel(p)).collect();
    let data_rel: Vec<String> = data_files.iter().map(|p| rel(p)).collect();
    let mut commits = vec![];
    let (mut prev_contract, mut prev_prompts): (Option<String>, Option<String>) = (None, None);
    for chunk in log.split("@@ ").filter(|c| !c.trim().is_empty()) {
        let mut lines = chunk.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let (Some(hash), Some(ts)) = (head.first(), head.get(1).and_then(|t| t.parse::<i64>().ok())) else { continue };
        let mut c = GitCommit { age_days: (now - ts) as f64 / 86400.0, contract: false, prompt: false, data: false };
        for l in lines.filter(|l| !l.trim().is_empty()) {
            let (status, file) = l.split_once('\t').unwrap_or(("", l));
            let modified = status.starts_with('M');
            if file == task_rel {
                if let Some(src) = git(dir, &["show", &format!("{hash}:{task_rel}")]) {
                    if let Ok(v) = serde_yaml_ng::from_str::<serde_json::Value>(&src) {
                        let ch = hash_json(&serde_json::json!([v.get("task"), v.get("assert")]));
                        let ph = hash_json(&v.get("prompts"));
                        c.contract |= prev_contract.as_ref().map(|p| p != &ch).unwrap_or(false);
                        c.prompt |= prev_prompts.as_ref().map(|p| p != &ph).unwrap_or(false);
                        prev_contract = Some(ch);
                        prev_prompts = Some(ph);
                    }
                }
            } else if prompt_rel.iter().any(|p| p == file) {
                c.prompt |= modified;
            } else if data_rel.iter().any(|p| p == file) {
                c.data |= modified;
            }
        }
        commits.push(c);
    }
    (Some(commits), None)
}

pub fn gather(task: &Task, path: &Path, run_sel: Option<&str>) -> Result<Evidence> {
    let mut notes = vec![];
    let eval = load(task.eval_path(), &mut notes);
    let examples = load(task.examples_path(), &mut notes);
    let report = match core_data::check_task(task, None, &CheckOptions::default()) {
        Ok(r) => Some(r),
        Err(e) => {
            notes.push(format!("data check could not run: {e}"));
            None
        }
    };
    let data = advise::data_facts(task, report.as_ref(), eval.as_deref(), examples.as_deref());
    let counter = anatomy_counter(task, &mut notes);
    let mut anatomy = vec![];
    if let Some(ev) = eval.as_deref().filter(|e| !e.is_empty()) {
        for src in &task.prompt_sources {
            match advise::anatomy(task, src, examples.as_deref(), ev, counter.as_ref()) {
                Ok(a) => anatomy.push(a),
                Err(e) => notes.push(format!("prompt `{}` could not be rendered: {}", src.id, e.message)),
            }
        }
    } else {
        notes.push("no eval cases: prompt anatomy needs one case to render the prompts".into());
    }
    let now = chrono::Utc::now().timestamp();
    let sp = store_path_for(path);
    let mut lab = advise::LabEvidence::default();
    let (run, store_revs, reviews) = if sp.exists() {
        let store = Store::open(&sp)?;
        let run = run_evidence(&store, task, run_sel)?;
        let (m, s, v) = tunegate_run::lab::latest_reports(&store, &task.file.task.name)?;
        lab = advise::LabEvidence { minimize: m, sweep: s, vary: v };
        let revs = store.revisions()?.into_iter().filter_map(|r| Some(RevisionEvent { age_days: age_days(now, &r.recorded_at)?, kind: r.kind, name: r.name, hash: r.hash })).collect();
        (run, revs, review_evidence(&store)?)
    } else {
        if let Some(s) = run_sel {
            return Err(crate::args::usage(format!("--run {s}: there is no run store yet at {}", sp.display())));
        }
        (None, vec![], advise::ReviewEvidence::default())
    };
    let (git, git_note) = git_history(task, now);
    Ok(Evidence {
        task: TaskFacts::from_task(task, &path.display().to_string()),
        data,
        anatomy,
        run,
        prices: prices(task),
        churn: ChurnEvidence { store: store_revs, git, git_note },
        lab,
        reviews,
        notes,
    })
}

/// People's reviews and judges' verdicts in the store, for the advisor.
fn review_evidence(store: &Store) -> Result<advise::ReviewEvidence> {
    let latest = match store.latest_review_session()? {
        Some(s) => {
            let vs: Vec<tunegate_core::review::Verdict> = store.reviews(&s.id)?.iter().filter_map(|r| tunegate_core::review::Verdict::parse(&r.verdict)).collect();
            let t = tunegate_core::review::Tally::from_verdicts(vs.iter());
            Some(advise::ReviewTally { side_a: s.side_a, side_b: s.side_b, a_wins: t.a, b_wins: t.b, ties: t.tie, both_bad: t.both_bad })
        }
        None => None,
    };
    Ok(advise::ReviewEvidence { reviews: store.review_count()?, judge_verdicts: store.judge_verdict_count()?, latest })
}

// ------------------------------------------------------------------ printing

const WIDTH: usize = 100;

/// Greedy word wrap; every line starts with `indent` (the first with `first`).
fn wrap(s: &str, first: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for w in s.split_whitespace() {
        if !empty && line.chars().count() + 1 + w.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(w);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

fn side(s: advise::Side) -> &'static str {
    match s {
        advise::Side::Prompting => "prompting",
        advise::Side::Tuning => "tuning",
        advise::Side::Retrieval => "retrieval",
        advise::Side::Neutral => "neutral",
        advise::Side::Unknown => "unknown",
    }
}

fn conf(c: advise::Confidence) -> &'static str {
    match c {
        advise::Confidence::High => "high",
        advise::Confidence::Medium => "medium",
        advise::Confidence::Low => "low",
        advise::Confidence::None => "-",
    }
}

fn ci(c: (f64, f64)) -> String {
    format!("{}–{}", advise::pct(c.0), advise::pct(c.1))
}

pub fn text(a: &Advice, path: &Path) -> String {
    use advise::{int, pct, pts, usd};
    let mut s = String::new();
    let run = a.run_id.as_deref().map(|r| format!("run {r}")).unwrap_or_else(|| "no run yet".into());
    s.push_str(&format!("tunegate advise: {} ({}, {run})\n\n", a.task, path.display()));
    s.push_str(&format!("VERDICT: {}\n", a.verdict.as_str()));
    s.push_str(&wrap(&a.summary, "  ", "  "));
    if let Some(k) = &a.keep_prompt {
        s.push_str(&wrap(&format!("Keep prompt `{k}` on top of the tuned model: the shortest one that still states the task."), "  ", "  "));
    }
    if !a.reasons.is_empty() {
        s.push_str("\nWhy\n");
        for r in &a.reasons {
            s.push_str(&wrap(r, "  - ", "    "));
        }
    }
    s.push_str("\nNext steps\n");
    for (i, st) in a.next_steps.iter().enumerate() {
        s.push_str(&wrap(&st.text, &format!("  {}. ", i + 1), "     "));
        if let Some(c) = &st.command {
            s.push_str(&format!("     $ {c}\n"));
        }
    }
    s.push_str("\nDecision table (DESIGN.md)\n");
    for r in &a.table {
        let head = format!("  {:<14}{:<10} {:<7}", r.row, side(r.points_to), conf(r.confidence));
        let pad = " ".repeat(head.chars().count() + 1);
        s.push_str(&wrap(&r.evidence, &format!("{head} "), &pad));
    }
    if !a.anatomy.is_empty() {
        let est = a.anatomy.first().map(|x| if x.estimate && !x.tokenizer.contains("estimate") { format!(" — {} (estimate)", x.tokenizer) } else { format!(" — {}", x.tokenizer) }).unwrap_or_default();
        s.push_str(&format!("\nPrompt anatomy, tokens per call{est}\n"));
        let rows: Vec<Vec<String>> = a
            .anatomy
            .iter()
            .map(|x| vec![x.prompt.clone(), int(x.total as f64), int(x.instructions as f64), int(x.few_shot as f64), int(x.reference_facts as f64), int(x.input as f64)])
            .collect();
        s.push_str(&indent(&crate::output::table(&["prompt", "total", "instructions", "few-shot", "ref. facts", "input"], &rows)));
        for x in &a.anatomy {
            for b in &x.facts_blocks {
                s.push_str(&wrap(&format!("`{}`: reference facts \"{}\" — {} lines, {} tokens", x.prompt, b.preview, b.lines, int(b.tokens as f64)), "  ", "    "));
            }
        }
    }
    s.push_str("\nCost");
    match a.cost.calls_per_month {
        Some(c) => s.push_str(&format!(" at {} calls/month\n", int(c as f64))),
        None => s.push('\n'),
    }
    if a.cost.lines.iter().any(|l| l.monthly_usd.is_some()) {
        let rows: Vec<Vec<String>> = a
            .cost
            .lines
            .iter()
            .map(|l| vec![format!("{}@{}", l.prompt, l.provider), int(l.prompt_tokens), int(l.completion_tokens), l.monthly_usd.map(usd).unwrap_or_else(|| "no price".into())])
            .collect();
        s.push_str(&indent(&crate::output::table(&["prompt@provider", "in tok", "out tok", "per month"], &rows)));
    }
    if let Some(t) = &a.cost.tuned {
        let be = t.break_even_months.map(|m| format!("break-even after {m:.1} months")).unwrap_or_else(|| "no monthly saving, no break-even".into());
        s.push_str(&wrap(
            &format!(
                "Tuned {} with prompt `{}` ({} tokens): {}/month vs {} now; training {} once ({} tokens); {be}",
                t.provider,
                t.prompt,
                int(t.prompt_tokens),
                usd(t.monthly_usd),
                usd(t.current_monthly_usd),
                usd(t.training_usd),
                int(t.training_tokens)
            ),
            "  ",
            "  ",
        ));
    }
    for n in &a.cost.notes {
        s.push_str(&wrap(n, "  - ", "    "));
    }
    let f = &a.fragility;
    if !f.groups.is_empty() {
        s.push_str("\nPass rates and fragility\n");
        let rows: Vec<Vec<String>> = f
            .groups
            .iter()
            .map(|g| {
                vec![
                    format!("{}@{}", g.prompt, g.provider),
                    format!("{}/{}", g.passed, g.n - g.errors),
                    pct(g.pass_rate),
                    ci(g.ci95),
                    if g.repeat_rates.len() > 1 { g.repeat_rates.iter().map(|r| pct(*r)).collect::<Vec<_>>().join(" ") } else { "-".into() },
                    g.errors.to_string(),
                ]
            })
            .collect();
        s.push_str(&indent(&crate::output::table(&["prompt@provider", "passed", "rate", "95% interval", "per repeat", "errors"], &rows)));
        let mut parts = vec![];
        parts.push(format!("spread across variants {}", f.variant_spread.map(pts).unwrap_or_else(|| "not measured (one variant)".into())));
        parts.push(format!("across repeats {}", f.repeat_spread.map(pts).unwrap_or_else(|| "not measured (run with --repeat 3)".into())));
        if let Some(fl) = f.flip_rate {
            parts.push(format!("{} of the best group's cases flip between repeats", pct(fl)));
        }
        s.push_str(&wrap(&parts.join("; "), "  ", "  "));
        if !f.slices.is_empty() {
            let sl: Vec<String> = f.slices.iter().map(|r| format!("{} {} (n={})", r.name, pct(r.pass_rate), r.n)).collect();
            s.push_str(&wrap(&format!("slices of the best group by tag: {}", sl.join(", ")), "  ", "  "));
        }
        for w in &f.weak_slices {
            s.push_str(&wrap(&format!("weak slice {w}"), "  ! ", "    "));
        }
    }
    if let Some(t) = &a.failures {
        s.push_str(&format!("\nFailures of the best run ({}@{})\n", t.prompt, t.provider));
        let kinds = if t.format_kinds.is_empty() { String::new() } else { format!(" ({})", t.format_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")) };
        s.push_str(&wrap(
            &format!(
                "{} failures of {} scored: format/contract {}{kinds}, content {}, missing knowledge {}, refusals {}; provider errors {} (not counted against the model)",
                t.failures, t.scored, t.format, t.content, t.missing_knowledge, t.refusals, t.provider_errors
            ),
            "  ",
            "  ",
        ));
    }
    let r = &a.readiness;
    s.push_str("\nReadiness\n");
    s.push_str(&wrap(
        &format!(
            "{} clean examples of {} (after removing {} duplicates, {} conflict groups, {} leaking, {} contract breaks); OpenAI's minimum is {}, {}-100 typical",
            r.clean_examples,
            r.examples_cases,
            r.removed.get("duplicates").unwrap_or(&0),
            r.removed.get("conflict_groups").unwrap_or(&0),
            r.removed.get("leaked_eval_cases").unwrap_or(&0),
            r.removed.get("contract_breaks").unwrap_or(&0),
            r.min_examples,
            r.typical_examples
        ),
        "  ",
        "  ",
    ));
    if !r.clean_per_label.is_empty() {
        s.push_str(&wrap(&format!("per label: {}", r.clean_per_label.iter().map(|l| format!("{} {}", l.label, l.count)).collect::<Vec<_>>().join(", ")), "  ", "  "));
    }
    s.push_str(&wrap(&format!("eval set: {} cases, 95% interval ±{}", r.eval_cases, pts(r.eval_ci_half_width)), "  ", "  "));
    let c = &a.churn;
    s.push_str("\nChurn\n");
    let age = match c.days_since_contract_change {
        Some(d) if c.at_least => format!("contract unchanged since the first record, {d:.0} days ago"),
        Some(d) => format!("contract last changed {d:.0} days ago"),
        None => "contract age not measured (no store revisions, no git history)".into(),
    };
    s.push_str(&wrap(
        &format!(
            "{age}; last 7/30 days: contract {}/{}, prompts {}/{}, expected outputs {}/{}{}",
            c.contract_changes_7d,
            c.contract_changes_30d,
            c.prompt_changes_7d,
            c.prompt_changes_30d,
            c.expected_changes_7d,
            c.expected_changes_30d,
            if c.sources.is_empty() { String::new() } else { format!(" ({})", c.sources.join("; ")) }
        ),
        "  ",
        "  ",
    ));
    if !a.notes.is_empty() {
        s.push_str("\nNot measured / notes\n");
        for n in &a.notes {
            s.push_str(&wrap(n, "  - ", "    "));
        }
    }
    let over: Vec<String> = a.thresholds.iter().filter(|t| t.overridden).map(|t| format!("{}={}", t.name, t.value)).collect();
    s.push('\n');
    s.push_str(&wrap(
        &format!(
            "Thresholds: README.md, \"The advisor\"; override under `advise:` in the task file{}.",
            if over.is_empty() { String::new() } else { format!(" (overridden here: {})", over.join(", ")) }
        ),
        "",
        "",
    ));
    s
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn markdown(a: &Advice, path: &Path) -> String {
    use advise::{int, pct, usd};
    let mut s = format!("# tunegate advise: {}\n\nTask file `{}`, {}.\n\n", a.task, path.display(), a.run_id.as_deref().map(|r| format!("run `{r}`")).unwrap_or_else(|| "no run yet".into()));
    s.push_str(&format!("## Verdict: `{}`\n\n{}\n\n", a.verdict.as_str(), a.summary));
    if let Some(k) = &a.keep_prompt {
        s.push_str(&format!("Keep prompt `{k}` on top of the tuned model.\n\n"));
    }
    for r in &a.reasons {
        s.push_str(&format!("- {r}\n"));
    }
    s.push_str("\n## Next steps\n\n");
    for (i, st) in a.next_steps.iter().enumerate() {
        s.push_str(&format!("{}. {}", i + 1, st.text));
        if let Some(c) = &st.command {
            s.push_str(&format!(": `{c}`"));
        }
        s.push('\n');
    }
    s.push_str("\n## Decision table\n\n| row | points to | confidence | evidence |\n|---|---|---|---|\n");
    for r in &a.table {
        s.push_str(&format!("| {} | {} | {} | {} |\n", r.row, side(r.points_to), conf(r.confidence), r.evidence.replace('|', "\\|")));
    }
    if !a.anatomy.is_empty() {
        s.push_str("\n## Prompt anatomy (tokens)\n\n| prompt | total | instructions | few-shot | reference facts | input |\n|---|---:|---:|---:|---:|---:|\n");
        for x in &a.anatomy {
            s.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", x.prompt, int(x.total as f64), int(x.instructions as f64), int(x.few_shot as f64), int(x.reference_facts as f64), int(x.input as f64)));
        }
    }
    if !a.cost.lines.is_empty() {
        s.push_str("\n## Cost per month\n\n| prompt@provider | in tok | out tok | per month |\n|---|---:|---:|---:|\n");
        for l in &a.cost.lines {
            s.push_str(&format!("| {}@{} | {} | {} | {} |\n", l.prompt, l.provider, int(l.prompt_tokens), int(l.completion_tokens), l.monthly_usd.map(usd).unwrap_or_else(|| "no price".into())));
        }
        if let Some(t) = &a.cost.tuned {
            s.push_str(&format!(
                "\nTuned `{}` with `{}`: {}/month vs {} now, training {}; break-even: {}.\n",
                t.provider,
                t.prompt,
                usd(t.monthly_usd),
                usd(t.current_monthly_usd),
                usd(t.training_usd),
                t.break_even_months.map(|m| format!("{m:.1} months")).unwrap_or_else(|| "none".into())
            ));
        }
    }
    if !a.fragility.groups.is_empty() {
        s.push_str("\n## Pass rates\n\n| prompt@provider | rate | 95% interval |\n|---|---:|---|\n");
        for g in &a.fragility.groups {
            s.push_str(&format!("| {}@{} | {} | {} |\n", g.prompt, g.provider, pct(g.pass_rate), ci(g.ci95)));
        }
    }
    if !a.notes.is_empty() {
        s.push_str("\n## Not measured / notes\n\n");
        for n in &a.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}
