//! `tunegate data check`: every problem in the examples and the eval set
//! that would make tuning a hunch, each with its file and lines.
//!
//! Thresholds (defaults; the CLI can override each):
//! - near duplicates: Jaccard >= 0.8 on shingles ([`super::near`]);
//! - imbalance: flagged when the largest label has more than 10 times the
//!   examples of the smallest ([`DEFAULT_IMBALANCE_RATIO`]), or a label of
//!   the task has none. Past about 10:1 a small model tends to learn the
//!   prior ("always say billing") rather than the rule; it is a warning
//!   because the skew may be the real traffic;
//! - over-long: the rendered tune prompt plus the expected output over the
//!   target model's per-example limit ([`super::token_limit_for`]).
//!
//! Conflicts: for classification and extraction, a near-duplicate cluster
//! whose expected outputs differ is a conflict (near-same inputs should get
//! the same label). For rewrite and generation, different outputs for
//! near-same inputs are normal variety, so only inputs equal after
//! normalisation with different outputs conflict. A cluster that conflicts
//! is reported as a conflict only, not also as duplicates: resolving the
//! conflict is the first job.

use super::near::{normalize_text, Similarity, UnionFind, DEFAULT_NEAR_THRESHOLD};
use super::{DataError, Distribution, Finding, FindingKind, Related, TokenCounter};
use crate::dataset::{load_cases_tolerant, value_text, Case, TolerantLoad};
use crate::error::InputError;
use crate::task::normalize_label;
use crate::task::{Task, TaskKind};
use crate::template::{CompiledPrompt, Message};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Largest-to-smallest label count ratio above which imbalance is reported.
pub const DEFAULT_IMBALANCE_RATIO: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub near_threshold: f64,
    pub imbalance_ratio: f64,
    /// Per-example token limit; `None`: `tune.max_seq_len`, else the target
    /// model's limit.
    pub max_tokens: Option<usize>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { near_threshold: DEFAULT_NEAR_THRESHOLD, imbalance_ratio: DEFAULT_IMBALANCE_RATIO, max_tokens: None }
    }
}

/// Which of the task's datasets a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Examples,
    Eval,
}

/// A dataset read tolerantly, with its role.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub role: Role,
    pub path: PathBuf,
    pub load: TolerantLoad,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelCount {
    pub label: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub role: Role,
    pub path: PathBuf,
    /// Cases that parsed.
    pub cases: usize,
    pub malformed: usize,
    /// Classification: count per label, the task's labels first (zeros
    /// included), then any label outside the set.
    pub labels: Vec<LabelCount>,
    /// Tokens per example (tune prompt + expected), when counted.
    pub tokens: Option<Distribution>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenizerInfo {
    pub name: String,
    pub estimate: bool,
    /// The target model (`tune.base`).
    pub model: String,
    pub limit: usize,
    pub limit_source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    pub near_duplicate_jaccard: f64,
    pub imbalance_ratio: f64,
}

/// The result of `data check`. Its JSON form is the `--format json` output.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub task: PathBuf,
    pub files: Vec<FileSummary>,
    pub tokenizer: Option<TokenizerInfo>,
    pub thresholds: Thresholds,
    /// Checks that could not run, and why (no `tune:` section, ...).
    pub notes: Vec<String>,
    pub findings: Vec<Finding>,
    /// Findings that block tuning.
    pub blocking: usize,
    pub warnings: usize,
}

impl CheckReport {
    pub fn blocks_tuning(&self) -> bool {
        self.blocking > 0
    }
}

/// Loads `data.examples` and `data.eval` tolerantly.
pub fn load_task_files(task: &Task) -> Result<Vec<LoadedFile>, DataError> {
    let mut files = vec![];
    for (role, path) in [(Role::Examples, task.examples_path()), (Role::Eval, task.eval_path())] {
        if let Some(p) = path {
            let load = load_cases_tolerant(&p)?;
            files.push(LoadedFile { role, load, path: p });
        }
    }
    if files.is_empty() {
        return Err(InputError::new(&task.path, "the task has no data.examples or data.eval to check")
            .field("data")
            .hint("add `examples: data/examples.jsonl` under data")
            .into());
    }
    Ok(files)
}

/// Runs every check on the task's datasets. `counter` counts tokens with the
/// target model's tokenizer; without it (or without a `tune:` section) the
/// over-long check is skipped and the report says so.
pub fn check_task(task: &Task, counter: Option<&dyn TokenCounter>, opts: &CheckOptions) -> Result<CheckReport, DataError> {
    let files = load_task_files(task)?;
    Ok(check_files(task, &files, counter, opts))
}

/// The checks on files already loaded (for tests and for callers that
/// loaded them already).
pub fn check_files(task: &Task, files: &[LoadedFile], counter: Option<&dyn TokenCounter>, opts: &CheckOptions) -> CheckReport {
    let mut findings: Vec<Finding> = vec![];
    let mut notes = vec![];
    let kind = task.kind();
    let labels = task.labels();
    let norm_labels: Vec<String> = labels.iter().map(|l| normalize_label(l)).collect();
    let schema = task.output_schema.as_ref().and_then(|s| jsonschema::validator_for(s).ok());

    // Malformed lines, empty inputs and outputs, contract breaks.
    for f in files {
        for e in &f.load.bad_lines {
            let msg = match &e.field {
                Some(field) => format!("{field}: {}", e.message),
                None => e.message.clone(),
            };
            findings.push(Finding::new(FindingKind::Malformed, &f.path, e.line.into_iter().collect(), msg));
        }
        for c in &f.load.cases {
            // A record of the wrong type for the task's kind breaks the contract.
            if let Some(e) = crate::dataset::type_error(kind, &f.path, c) {
                findings.push(Finding::new(FindingKind::Contract, &f.path, vec![c.line], format!("{}: {}", e.field.as_deref().unwrap_or(""), e.message)));
                continue;
            }
            if c.input_text().trim().is_empty() || c.vars.values().all(|v| v.as_str().map(|s| s.trim().is_empty()).unwrap_or(false)) {
                findings.push(Finding::new(FindingKind::EmptyInput, &f.path, vec![c.line], "the input is empty"));
            }
            match &c.expected {
                None => findings.push(Finding::new(FindingKind::EmptyOutput, &f.path, vec![c.line], "no `expected` output")),
                Some(e) if is_empty_value(e) => {
                    findings.push(Finding::new(FindingKind::EmptyOutput, &f.path, vec![c.line], "the expected output is empty"))
                }
                Some(e) => {
                    if let Some(msg) = contract_break(kind, labels, &norm_labels, schema.as_ref(), e) {
                        findings.push(Finding::new(FindingKind::Contract, &f.path, vec![c.line], msg));
                    }
                }
            }
        }
    }

    // Duplicates, conflicts and leakage, on one similarity index over all
    // non-empty inputs of all files.
    let mut items: Vec<(usize, usize)> = vec![]; // (file, case)
    let mut texts: Vec<String> = vec![];
    let mut answers: Vec<String> = vec![];
    for (fi, f) in files.iter().enumerate() {
        for (ci, c) in f.load.cases.iter().enumerate() {
            let t = c.input_text();
            if !t.trim().is_empty() {
                items.push((fi, ci));
                texts.push(t);
                answers.push(c.answer_text());
            }
        }
    }
    let sim = Similarity::build_cases(&texts, &answers, opts.near_threshold);
    let mut near_of: HashMap<usize, Vec<(usize, f64)>> = HashMap::new();
    for &(a, b, j) in &sim.pairs {
        near_of.entry(a).or_default().push((b, j));
        near_of.entry(b).or_default().push((a, j));
    }
    let case = |item: usize| -> &Case { &files[items[item].0].load.cases[items[item].1] };
    for (fi, f) in files.iter().enumerate() {
        let mine: Vec<usize> = (0..items.len()).filter(|&i| items[i].0 == fi).collect();
        let local: HashMap<usize, usize> = mine.iter().enumerate().map(|(l, &g)| (g, l)).collect();
        let mut uf = UnionFind::new(mine.len());
        let first_in_group: Vec<Option<usize>> = sim.groups.iter().map(|g| g.iter().find(|i| items[**i].0 == fi).copied()).collect();
        for g in &sim.groups {
            let inf: Vec<usize> = g.iter().filter(|i| items[**i].0 == fi).map(|i| local[i]).collect();
            for w in inf.windows(2) {
                uf.union(w[0], w[1]);
            }
        }
        for &(a, b, _) in &sim.pairs {
            if let (Some(x), Some(y)) = (first_in_group[a], first_in_group[b]) {
                uf.union(local[&x], local[&y]);
            }
        }
        for comp in uf.components().into_iter().filter(|c| c.len() > 1) {
            let members: Vec<usize> = comp.iter().map(|&l| mine[l]).collect();
            let lines: Vec<usize> = members.iter().map(|&i| case(i).line).collect();
            // Sub-groups of inputs equal after normalisation.
            let mut exact: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &i in &members {
                exact.entry(sim.group_of[i]).or_default().push(i);
            }
            let keys = |ms: &[usize]| -> BTreeSet<String> { ms.iter().map(|&i| expected_key(kind, &case(i).expected)).collect() };
            let near_conflicts = matches!(kind, TaskKind::Classification | TaskKind::Extraction);
            if near_conflicts && keys(&members).len() > 1 {
                findings.push(Finding::new(FindingKind::ConflictingLabels, &f.path, lines, conflict_message(&members, &case, exact.len() > 1)));
                continue;
            }
            for ms in exact.values().filter(|ms| ms.len() > 1) {
                let ls: Vec<usize> = ms.iter().map(|&i| case(i).line).collect();
                if keys(ms).len() > 1 {
                    findings.push(Finding::new(FindingKind::ConflictingLabels, &f.path, ls, conflict_message(ms, &case, false)));
                } else {
                    findings.push(Finding::new(FindingKind::ExactDuplicate, &f.path, ls, format!("the same input {} times", ms.len())));
                }
            }
            if exact.len() > 1 {
                let js: Vec<f64> = sim
                    .pairs
                    .iter()
                    .filter(|(a, b, _)| exact.contains_key(a) && exact.contains_key(b))
                    .map(|p| p.2)
                    .collect();
                let min = js.iter().cloned().fold(1.0_f64, f64::min);
                findings.push(Finding::new(
                    FindingKind::NearDuplicate,
                    &f.path,
                    lines,
                    format!("{} near-identical inputs (Jaccard >= {:.2}, threshold {})", members.len(), min, opts.near_threshold),
                ));
            }
        }
    }

    // Leakage: eval cases equal or near to an example.
    let ex_file = files.iter().position(|f| f.role == Role::Examples);
    let ev_file = files.iter().position(|f| f.role == Role::Eval);
    if let (Some(xf), Some(vf)) = (ex_file, ev_file) {
        for i in (0..items.len()).filter(|&i| items[i].0 == vf) {
            let g = sim.group_of[i];
            let exact: Vec<usize> = sim.groups[g].iter().filter(|&&j| items[j].0 == xf).map(|&j| case(j).line).collect();
            let mut near: Vec<(usize, f64)> = vec![];
            for &(og, jac) in near_of.get(&g).map(|v| v.as_slice()).unwrap_or(&[]) {
                near.extend(sim.groups[og].iter().filter(|&&j| items[j].0 == xf).map(|&j| (case(j).line, jac)));
            }
            if exact.is_empty() && near.is_empty() {
                continue;
            }
            let msg = if !exact.is_empty() {
                format!("this eval case is also in the examples (same input after normalisation){}", if near.is_empty() { String::new() } else { format!(", and near {} more", near.len()) })
            } else {
                let best = near.iter().map(|n| n.1).fold(0.0_f64, f64::max);
                format!("this eval case is a near duplicate of {} example(s) (Jaccard {:.2})", near.len(), best)
            };
            let mut rel: Vec<usize> = exact.into_iter().chain(near.into_iter().map(|n| n.0)).collect();
            rel.sort_unstable();
            rel.dedup();
            let mut fnd = Finding::new(FindingKind::Leakage, &files[vf].path, vec![case(i).line], msg);
            fnd.related = Some(Related { file: files[xf].path.clone(), lines: rel });
            findings.push(fnd);
        }
    }

    // Tokens: the tune prompt rendered for each case, plus the expected output.
    let mut tokenizer = None;
    let mut token_stats: HashMap<usize, Distribution> = HashMap::new();
    match (&task.file.tune, counter) {
        (None, _) => notes.push("no `tune:` section: token counts and the over-long check need tune.prompt and tune.base".into()),
        (Some(_), None) => notes.push("no token counter: the over-long check was skipped".into()),
        (Some(tune), Some(counter)) => {
            let (limit, source) = match (opts.max_tokens, tune.max_seq_len) {
                (Some(m), _) => (m, "--max-tokens".to_string()),
                (None, Some(m)) => (m, "tune.max_seq_len".to_string()),
                (None, None) => {
                    let (l, s) = super::token_limit_for(&tune.base);
                    (l, s.to_string())
                }
            };
            tokenizer = Some(TokenizerInfo { name: counter.name(), estimate: counter.is_estimate(), model: tune.base.clone(), limit, limit_source: source });
            let examples = ex_file.map(|x| files[x].load.cases.as_slice());
            match task.prompt_sources.iter().find(|p| p.id == tune.prompt).map(|src| CompiledPrompt::compile(task, src, examples)) {
                None => notes.push(format!("tune.prompt `{}` not found", tune.prompt)),
                Some(Err(e)) => findings.push(Finding::new(FindingKind::RenderError, &e.file, e.line.into_iter().collect(), e.message.clone())),
                Some(Ok(prompt)) => {
                    for (fi, f) in files.iter().enumerate() {
                        let mut counts = vec![];
                        let mut render_errors: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                        for c in &f.load.cases {
                            match training_messages(&prompt, c, &f.path) {
                                Ok(m) => {
                                    let n = counter.count(&m);
                                    counts.push(n);
                                    if f.role == Role::Examples && n > limit {
                                        let est = if counter.is_estimate() { " (estimated)" } else { "" };
                                        findings.push(Finding::new(
                                            FindingKind::OverLong,
                                            &f.path,
                                            vec![c.line],
                                            format!("{n} tokens{est} (tune prompt `{}` + expected) over the limit of {limit} for {}", tune.prompt, tune.base),
                                        ));
                                    }
                                }
                                Err(e) => render_errors.entry(e.message).or_default().push(c.line),
                            }
                        }
                        for (msg, lines) in render_errors {
                            findings.push(Finding::new(FindingKind::RenderError, &f.path, lines, msg));
                        }
                        if let Some(d) = Distribution::of(&counts) {
                            token_stats.insert(fi, d);
                        }
                    }
                }
            }
        }
    }

    // Label distribution and imbalance (classification).
    let mut summaries = vec![];
    for (fi, f) in files.iter().enumerate() {
        let counts = if kind == TaskKind::Classification { label_counts(labels, &f.load.cases) } else { vec![] };
        if f.role == Role::Examples && kind == TaskKind::Classification && !f.load.cases.is_empty() {
            if let Some(msg) = imbalance(labels, &counts, opts.imbalance_ratio) {
                findings.push(Finding::new(FindingKind::Imbalance, &f.path, vec![], msg));
            }
        }
        summaries.push(FileSummary {
            role: f.role,
            path: f.path.clone(),
            cases: f.load.cases.len(),
            malformed: f.load.bad_lines.len(),
            labels: counts,
            tokens: token_stats.get(&fi).copied(),
        });
    }

    findings.sort_by(|a, b| (a.kind, &a.file, &a.lines).cmp(&(b.kind, &b.file, &b.lines)));
    let blocking = findings.iter().filter(|f| f.blocks_tuning()).count();
    let warnings = findings.len() - blocking;
    CheckReport {
        task: task.path.clone(),
        files: summaries,
        tokenizer,
        thresholds: Thresholds { near_duplicate_jaccard: opts.near_threshold, imbalance_ratio: opts.imbalance_ratio },
        notes,
        findings,
        blocking,
        warnings,
    }
}

/// The messages one example trains on: the tune prompt's system and user
/// messages, and the expected output as the assistant's reply.
pub fn training_messages(prompt: &CompiledPrompt, c: &Case, file: &Path) -> Result<Vec<Message>, InputError> {
    let mut m = prompt.render(c, file)?;
    m.push(Message::new("assistant", c.expected_text().unwrap_or_default()));
    Ok(m)
}

/// Leakage only: eval cases that are (near) duplicates of examples. Empty
/// when the task lacks either set. `tunegate tune` calls it through
/// [`refuse_on_leakage`].
pub fn leakage_findings(task: &Task, near_threshold: f64) -> Result<Vec<Finding>, DataError> {
    if task.examples_path().is_none() || task.eval_path().is_none() {
        return Ok(vec![]);
    }
    let files = load_task_files(task)?;
    let opts = CheckOptions { near_threshold, ..CheckOptions::default() };
    let report = check_files(task, &files, None, &opts);
    Ok(report.findings.into_iter().filter(|f| f.kind == FindingKind::Leakage).collect())
}

/// What tuning leaves out of a set of training examples, by line, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Line of the examples file -> the reason it is left out.
    pub left_out: BTreeMap<usize, String>,
    /// Examples considered.
    pub total: usize,
}

impl Selection {
    pub fn keeps(&self, line: usize) -> bool {
        !self.left_out.contains_key(&line)
    }

    /// One paragraph for the user: how many, which lines, why, and the way
    /// to refuse instead. None when nothing is left out.
    pub fn summary(&self, file: &Path) -> Option<String> {
        if self.left_out.is_empty() {
            return None;
        }
        let shown: Vec<String> = self.left_out.iter().take(12).map(|(l, why)| format!("line {l} ({why})")).collect();
        let more = if self.left_out.len() > 12 { format!(", and {} more", self.left_out.len() - 12) } else { String::new() };
        Some(format!(
            "left out {} of {} training examples in {}: {}{more}; the eval set is untouched (`tunegate data check` lists them; --strict or `tune.strict: true` refuses instead)",
            self.left_out.len(),
            self.total,
            file.display(),
            shown.join(", ")
        ))
    }
}

/// The examples tuning trains on: `cases` (read from `examples`) minus the
/// ones that would spoil the before/after comparison or teach noise — an
/// example that is the same case as an eval case (leakage: the after
/// measurement would be memory), every repeat of an exact duplicate but the
/// first, and every example of a conflict (the same case with different
/// answers: which one is right is for a person to say). The eval set is
/// never touched.
pub fn training_selection(task: &Task, examples: &Path, cases: &[Case]) -> Result<Selection, DataError> {
    let mut files = vec![LoadedFile { role: Role::Examples, path: examples.to_path_buf(), load: TolerantLoad { cases: cases.to_vec(), bad_lines: vec![], text: String::new() } }];
    if let Some(ev) = task.eval_path() {
        files.push(LoadedFile { role: Role::Eval, path: ev.clone(), load: load_cases_tolerant(&ev)? });
    }
    let report = check_files(task, &files, None, &CheckOptions::default());
    let mut left_out = BTreeMap::new();
    for f in &report.findings {
        match f.kind {
            FindingKind::Leakage => {
                for &l in f.related.iter().flat_map(|r| &r.lines) {
                    left_out.entry(l).or_insert_with(|| format!("the same case as eval line {}", f.lines.first().copied().unwrap_or(0)));
                }
            }
            FindingKind::ExactDuplicate if f.file == examples => {
                for &l in f.lines.iter().skip(1) {
                    left_out.entry(l).or_insert_with(|| format!("a repeat of line {}", f.lines[0]));
                }
            }
            FindingKind::ConflictingLabels if f.file == examples => {
                for &l in &f.lines {
                    let others: Vec<String> = f.lines.iter().filter(|&&o| o != l).map(|o| o.to_string()).collect();
                    left_out.entry(l).or_insert_with(|| format!("conflicts with line {}", others.join(", ")));
                }
            }
            _ => {}
        }
    }
    Ok(Selection { left_out, total: cases.len() })
}

/// The guard every tuning path calls first: an error listing the leaking
/// eval cases when there are any. Leakage always blocks tuning, because a
/// before/after comparison on cases the model was trained on measures memory,
/// not the behaviour the team wants.
pub fn refuse_on_leakage(task: &Task) -> Result<(), DataError> {
    let leaks = leakage_findings(task, DEFAULT_NEAR_THRESHOLD)?;
    if leaks.is_empty() {
        Ok(())
    } else {
        Err(DataError::Leakage(leaks))
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn contract_break(kind: TaskKind, labels: &[String], norm_labels: &[String], schema: Option<&jsonschema::Validator>, e: &Value) -> Option<String> {
    match kind {
        TaskKind::Classification => {
            let text = value_text(e);
            (!norm_labels.contains(&normalize_label(&text))).then(|| format!("label `{text}` is not in task.labels [{}]", labels.join(", ")))
        }
        TaskKind::Extraction => {
            if !e.is_object() {
                return Some("an extraction target must be a JSON object".into());
            }
            let errors: Vec<String> = schema?.iter_errors(e).map(|err| format!("{err} at `{}`", err.instance_path)).take(3).collect();
            (!errors.is_empty()).then(|| format!("fails task.output_schema: {}", errors.join("; ")))
        }
        _ => None,
    }
}

/// What "the same expected output" means for conflicts: the normalised label
/// (classification), the JSON with keys sorted and every string normalised
/// (extraction), else the normalised text. Outputs that differ only in form
/// (case, spacing, punctuation: an extraction copying its input's spelling,
/// "rosa l parks" and "rosa l. parks") are the same answer, not a conflict.
fn expected_key(kind: TaskKind, e: &Option<Value>) -> String {
    match e {
        None => String::new(),
        Some(v) => match kind {
            TaskKind::Classification => normalize_label(&value_text(v)),
            TaskKind::Extraction => canonical(v).to_string(),
            _ => normalize_text(&value_text(v)),
        },
    }
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        Value::String(s) => Value::String(normalize_text(s)),
        other => other.clone(),
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn conflict_message<'a>(members: &[usize], case: &impl Fn(usize) -> &'a Case, near: bool) -> String {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in members {
        let c = case(i);
        by.entry(short(&c.expected_text().unwrap_or_else(|| "(none)".into()), 40)).or_default().push(c.line);
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(e, ls)| format!("`{e}` (line {})", ls.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")))
        .collect();
    format!("{} input with different expected outputs: {}", if near { "near-same" } else { "the same" }, parts.join(" vs "))
}

/// Count per label: the task's labels first (zeros included, in task order),
/// then labels outside the set by first appearance.
pub fn label_counts(labels: &[String], cases: &[Case]) -> Vec<LabelCount> {
    let mut out: Vec<LabelCount> = labels.iter().map(|l| LabelCount { label: l.clone(), count: 0 }).collect();
    for c in cases {
        let Some(e) = &c.expected else { continue };
        let text = value_text(e);
        if text.trim().is_empty() {
            continue;
        }
        let n = normalize_label(&text);
        match out.iter_mut().find(|lc| normalize_label(&lc.label) == n) {
            Some(lc) => lc.count += 1,
            None => out.push(LabelCount { label: text, count: 1 }),
        }
    }
    out
}

fn imbalance(labels: &[String], counts: &[LabelCount], ratio: f64) -> Option<String> {
    let in_set: Vec<&LabelCount> = counts.iter().filter(|c| labels.contains(&c.label)).collect();
    let missing: Vec<&str> = in_set.iter().filter(|c| c.count == 0).map(|c| c.label.as_str()).collect();
    if !missing.is_empty() {
        return Some(format!("no examples for label(s) {}: a tuned model cannot learn them", missing.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")));
    }
    let max = in_set.iter().max_by_key(|c| c.count)?;
    let min = in_set.iter().min_by_key(|c| c.count)?;
    let r = max.count as f64 / min.count as f64;
    (r > ratio).then(|| {
        format!("`{}` has {} examples, {:.1} times the {} of `{}` (threshold {ratio}); consider more `{}` examples", max.label, max.count, r, min.count, min.label, min.label)
    })
}
