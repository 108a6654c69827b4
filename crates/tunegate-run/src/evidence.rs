//! The advisor's evidence, measured: the task file, `data check`, prompt
//! anatomy with the target model's tokenizer, the run store (results,
//! revisions, reviews, the prompt lab's reports) and the task's git
//! history. The rules that judge it are pure and live in
//! `tunegate_core::advise`; this is the part that reads files, the store
//! and git.

use crate::RunError;
use std::path::{Path, PathBuf};
use std::process::Command;
use tunegate_core::advise::{self, ChurnEvidence, Evidence, GitCommit, Outcome, ProviderPrice, RevisionEvent, RunEvidence, TaskFacts};
use tunegate_core::data::{self as core_data, CharEstimate, CheckOptions, TokenCounter};
use tunegate_core::dataset::{load_cases_tolerant, Case};
use tunegate_core::task::hash_json;
use tunegate_core::Task;
use tunegate_store::{store_path_for, Store};


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
            let model = p.id.split_once(':').map(|(_, m)| m).unwrap_or("");
            let retirement = tunegate_providers::lifecycle::model_note(model, tunegate_providers::lifecycle::today()).filter(|_| p.id.starts_with("openai:"));
            ProviderPrice { provider: p.name().to_string(), price, source, hosted_tuning: hosted_tuning(p), retirement }
        })
        .collect()
}

/// OpenAI's fine-tuning cut-off as it bears on an `openai:` provider today.
fn hosted_tuning(p: &tunegate_core::ProviderSpec) -> Option<advise::HostedTuningNote> {
    use tunegate_providers::lifecycle::{openai_fine_tuning, today, HostedTuning};
    let model = p.id.strip_prefix("openai:")?;
    match openai_fine_tuning(model, today()) {
        HostedTuning::Open => None,
        HostedTuning::Warn(note) => Some(advise::HostedTuningNote { closed: false, note }),
        HostedTuning::Refused(note) => Some(advise::HostedTuningNote { closed: true, note }),
    }
}

fn age_days(now: i64, ts: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(|t| (now - t.timestamp()) as f64 / 86400.0)
}

fn run_evidence(store: &Store, task: &Task, sel: Option<&str>) -> Result<Option<RunEvidence>, RunError> {
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

/// Everything the advisor judges, measured: the task file, the data check,
/// prompt anatomy, the chosen run (default: the latest eval run), prices,
/// churn from the store and git, the prompt lab's reports and reviews.
pub fn gather(task: &Task, path: &Path, run_sel: Option<&str>) -> Result<Evidence, RunError> {
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
    let mut tuning = advise::TuningFacts { recipe: tuning_recipe(task), last_job: None };
    let (run, store_revs, reviews) = if sp.exists() {
        let store = Store::open(&sp)?;
        match tunegate_tune::jobs::latest_tuned(&store, &task.file.task.name) {
            Ok(j) => tuning.last_job = j,
            Err(e) => notes.push(format!("tuning jobs could not be read: {e}")),
        }
        let run = run_evidence(&store, task, run_sel)?;
        let (m, s, v) = crate::lab::latest_reports(&store, &task.file.task.name)?;
        lab = advise::LabEvidence { minimize: m, sweep: s, vary: v };
        let revs = store.revisions()?.into_iter().filter_map(|r| Some(RevisionEvent { age_days: age_days(now, &r.recorded_at)?, kind: r.kind, name: r.name, hash: r.hash })).collect();
        (run, revs, review_evidence(&store)?)
    } else {
        if let Some(s) = run_sel {
            return Err(RunError::Usage(format!("--run {s}: there is no run store yet at {}", sp.display())));
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
        tuning,
        notes,
    })
}

/// The recipe a local `tunegate tune` would train with: the task kind's,
/// under the task file's `tune:` (or the kind's alone without one).
fn tuning_recipe(task: &Task) -> Option<String> {
    let o = tunegate_tune::Overrides::default();
    let s = if task.file.tune.is_some() { tunegate_tune::Settings::for_task(task, &o).ok()? } else { tunegate_tune::Settings::for_kind(task.kind(), &o).ok()? };
    (s.backend == tunegate_tune::Backend::Local).then(|| format!("{} ({} recipe)", s.recipe_text(), s.recipe))
}

/// People's reviews and judges' verdicts in the store, for the advisor.
fn review_evidence(store: &Store) -> Result<advise::ReviewEvidence, RunError> {
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

