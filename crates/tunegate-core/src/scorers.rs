//! Scorers: each assertion turns (output, case, response facts) into a pass,
//! a score in 0..=1 and a reason a person can read. A case passes when all
//! of its assertions pass; its score is their weighted mean.

use crate::dataset::{value_text, Case};
use crate::task::{split_negation, AssertSpec, ProviderSpec, Task};
use crate::template::Message;
use std::collections::HashMap;
use crate::template::render_value;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    #[serde(rename = "type")]
    pub kind: String,
    pub pass: bool,
    pub score: f64,
    pub reason: String,
    /// Structured facts for aggregate metrics (predicted label, per-field
    /// outcomes) and for the advisor's failure taxonomy.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// Facts about the response that some assertions read.
#[derive(Debug, Clone, Default)]
pub struct ResponseFacts {
    pub latency_ms: f64,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

pub use crate::task::{check_spec, normalize_label};


/// One grader call an `llm-rubric` assertion needs before it is scored:
/// the runner makes it (through its cache, retries and cost accounting)
/// and hands the answer back to [`Scorer::score_graded`].
#[derive(Debug, Clone)]
pub struct GradeRequest {
    /// The assertion's position among the task's and the case's assertions.
    pub index: usize,
    pub grader: ProviderSpec,
    pub messages: Vec<Message>,
}

/// What came back from a grader call: its text, or the provider's error;
/// `detail` (grader, tokens, cost, cached) is stored with the assertion.
#[derive(Debug, Clone)]
pub struct GraderReply {
    pub output: Result<String, String>,
    pub detail: Value,
}

/// The assertions of a task, ready to run on many outputs.
#[derive(Clone)]
pub struct Scorer {
    asserts: Vec<AssertSpec>,
    labels: Vec<String>,
    schema: Option<Value>,
    dir: PathBuf,
}

impl Scorer {
    pub fn new(task: &Task) -> Scorer {
        Scorer { asserts: task.effective_asserts(), labels: task.labels().to_vec(), schema: task.output_schema.clone(), dir: task.dir.clone() }
    }

    /// Whether any assertion runs an external command (the runner scores
    /// such cases on a blocking thread).
    pub fn has_exec(&self) -> bool {
        self.asserts.iter().any(|a| split_negation(&a.kind).0 == "exec")
    }

    /// Scores without graders: an `llm-rubric` assertion is then an error.
    pub fn score(&self, output: &str, case: &Case, facts: &ResponseFacts) -> Vec<AssertionResult> {
        self.score_graded(output, case, facts, &HashMap::new())
    }

    /// Whether any assertion (the task's or a case's) is graded by a model.
    pub fn has_graders(&self, case: &Case) -> bool {
        self.asserts.iter().chain(case.asserts.iter()).any(|a| split_negation(&a.kind).0 == "llm-rubric")
    }

    /// The grader calls the `llm-rubric` assertions need for this output.
    /// A grading prompt that does not render is an error for that assertion.
    pub fn grade_requests(&self, output: &str, case: &Case) -> Vec<Result<GradeRequest, (usize, String)>> {
        let mut out = vec![];
        for (index, a) in self.asserts.iter().chain(case.asserts.iter()).enumerate() {
            if split_negation(&a.kind).0 != "llm-rubric" {
                continue;
            }
            let Some(grader) = &a.provider else {
                out.push(Err((index, "`llm-rubric` has no `provider`".to_string())));
                continue;
            };
            let rubric = match &a.value {
                Some(Value::String(t)) => render_value(t, case),
                Some(v) => Ok(value_text(v)),
                None => Err("`llm-rubric` has no rubric (`value`)".to_string()),
            };
            let msgs = rubric.and_then(|r| crate::judge::rubric_messages(a.rubric_prompt.as_deref(), &r, output, case));
            out.push(match msgs {
                Ok(messages) => Ok(GradeRequest { index, grader: grader.provider_spec(), messages }),
                Err(e) => Err((index, e)),
            });
        }
        out
    }

    /// Scores an output given the graders' replies, by assertion index.
    pub fn score_graded(&self, output: &str, case: &Case, facts: &ResponseFacts, grades: &HashMap<usize, GraderReply>) -> Vec<AssertionResult> {
        self.asserts
            .iter()
            .chain(case.asserts.iter())
            .enumerate()
            .map(|(i, a)| self.one(a, output, case, facts, grades.get(&i)))
            .collect()
    }

    fn one(&self, a: &AssertSpec, output: &str, case: &Case, facts: &ResponseFacts, grade: Option<&GraderReply>) -> AssertionResult {
        let (k, negate) = split_negation(&a.kind);
        if k == "llm-rubric" {
            return graded(a, grade, negate);
        }
        let mut r = match self.eval(k, a, output, case, facts) {
            Ok(r) => r,
            Err(msg) => AssertionResult { kind: k.into(), pass: false, score: 0.0, reason: msg, detail: json!({"error": true}) },
        };
        r.kind = a.kind.clone();
        if negate {
            r.pass = !r.pass;
            r.score = 1.0 - r.score;
            r.reason = format!("not: {}", r.reason);
        }
        r
    }

    fn expected_or_value(&self, a: &AssertSpec, case: &Case) -> Result<String, String> {
        match &a.value {
            Some(Value::String(t)) => render_value(t, case),
            Some(v) => Ok(value_text(v)),
            None => case.expected_text().ok_or_else(|| "no `value` and the case has no `expected`".to_string()),
        }
    }

    fn eval(&self, k: &str, a: &AssertSpec, output: &str, case: &Case, facts: &ResponseFacts) -> Result<AssertionResult, String> {
        let res = |pass: bool, reason: String| AssertionResult { kind: k.into(), pass, score: if pass { 1.0 } else { 0.0 }, reason, detail: Value::Null };
        Ok(match k {
            "equals" => {
                let want = self.expected_or_value(a, case)?;
                let pass = output.trim() == want.trim();
                res(pass, if pass { "equal".into() } else { format!("expected {:?}, got {:?}", clip(&want), clip(output)) })
            }
            "contains" | "icontains" | "starts-with" => {
                let want = self.expected_or_value(a, case)?;
                let (o, w) = if k == "icontains" { (output.to_lowercase(), want.to_lowercase()) } else { (output.to_string(), want.clone()) };
                let pass = if k == "starts-with" { o.trim_start().starts_with(w.trim()) } else { o.contains(&w) };
                res(pass, format!("{} {:?}", if pass { k.to_string() } else { format!("does not {}", k.trim_end_matches('s')) }, clip(&want)))
            }
            "regex" => {
                let pat = self.expected_or_value(a, case)?;
                let re = regex::Regex::new(&pat).map_err(|e| format!("invalid regex: {e}"))?;
                let pass = re.is_match(output);
                res(pass, format!("{} /{}/", if pass { "matches" } else { "does not match" }, pat))
            }
            "is-json" => match parse_json_output(output) {
                Some(_) => res(true, "valid JSON".into()),
                None => AssertionResult { kind: k.into(), pass: false, score: 0.0, reason: "output is not JSON".into(), detail: json!({"format_failure": "not_json"}) },
            },
            "json-schema" => {
                let schema = match &a.value {
                    Some(Value::String(p)) => {
                        let path = resolve(&self.dir, p);
                        let t = std::fs::read_to_string(&path).map_err(|e| format!("cannot read schema {}: {e}", path.display()))?;
                        serde_json::from_str(&t).map_err(|e| format!("schema {} is not JSON: {e}", path.display()))?
                    }
                    Some(v) => v.clone(),
                    None => self.schema.clone().ok_or("no schema")?,
                };
                let Some(v) = parse_json_output(output) else {
                    return Ok(AssertionResult { kind: k.into(), pass: false, score: 0.0, reason: "output is not JSON".into(), detail: json!({"format_failure": "not_json"}) });
                };
                let validator = jsonschema::validator_for(&schema).map_err(|e| format!("invalid schema: {e}"))?;
                let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path)).take(3).collect();
                if errors.is_empty() {
                    res(true, "matches the schema".into())
                } else {
                    AssertionResult { kind: k.into(), pass: false, score: 0.0, reason: format!("schema: {}", errors.join("; ")), detail: json!({"format_failure": "schema"}) }
                }
            }
            "label" => {
                let want = self.expected_or_value(a, case)?;
                let got = normalize_label(output);
                let in_set = self.labels.iter().any(|l| normalize_label(l) == got);
                let predicted = self.labels.iter().find(|l| normalize_label(l) == got).cloned();
                let pass = got == normalize_label(&want);
                let reason = if pass {
                    format!("label {want}")
                } else if !in_set {
                    format!("output {:?} is not one of the labels (expected {want})", clip(output))
                } else {
                    format!("predicted {}, expected {want}", predicted.as_deref().unwrap_or(""))
                };
                let mut detail = json!({"expected": want, "predicted": predicted});
                if !in_set {
                    detail["format_failure"] = json!("label_outside_set");
                }
                AssertionResult { kind: k.into(), pass, score: if pass { 1.0 } else { 0.0 }, reason, detail }
            }
            "fields" => {
                let want = match &a.value {
                    Some(v @ Value::Object(_)) => v.clone(),
                    _ => case.expected.clone().ok_or("the case has no `expected` object")?,
                };
                let Value::Object(want) = want else { return Err("`fields` needs an expected JSON object".into()) };
                let Some(Value::Object(got)) = parse_json_output(output) else {
                    let detail: serde_json::Map<String, Value> = want.keys().map(|f| (f.clone(), json!("fn"))).collect();
                    return Ok(AssertionResult { kind: k.into(), pass: false, score: 0.0, reason: "output is not a JSON object".into(), detail: json!({"fields": detail, "format_failure": "not_json"}) });
                };
                field_scores(&want, &got, a.threshold.unwrap_or(1.0))
            }
            "similarity" => {
                let want = self.expected_or_value(a, case)?;
                let s = similarity(output, &want);
                let t = a.threshold.unwrap_or(0.8);
                AssertionResult { kind: k.into(), pass: s >= t, score: s, reason: format!("similarity {s:.3} {} {t}", if s >= t { ">=" } else { "<" }), detail: Value::Null }
            }
            "max-tokens" => {
                let limit = a.value.as_ref().and_then(|v| v.as_u64()).unwrap_or(0);
                match facts.completion_tokens {
                    Some(n) => res(n <= limit, format!("{n} completion tokens (max {limit})")),
                    None => return Err("the provider reported no token count".into()),
                }
            }
            "latency" => {
                let t = a.threshold.unwrap_or(f64::INFINITY);
                res(facts.latency_ms <= t, format!("{:.0} ms (max {t} ms)", facts.latency_ms))
            }
            "cost" => {
                let t = a.threshold.unwrap_or(f64::INFINITY);
                match facts.cost_usd {
                    Some(c) => res(c <= t, format!("${c:.6} (max ${t})")),
                    None => return Err("no cost is known for this provider".into()),
                }
            }
            "exec" => run_exec_assert(a.value.as_ref().and_then(|v| v.as_str()).unwrap_or(""), &self.dir, output, case, a.threshold)?,
            other => return Err(format!("unknown assertion type `{other}`")),
        })
    }
}

/// The `llm-rubric` result from the grader's reply. A grader that failed
/// or answered anything but a well-formed grade gives a result marked
/// `grader_error`: the runner files the case as an error, never a pass.
fn graded(a: &AssertSpec, grade: Option<&GraderReply>, negate: bool) -> AssertionResult {
    let err = |msg: String, mut detail: Value| {
        if !detail.is_object() {
            detail = json!({});
        }
        detail["grader_error"] = json!(msg);
        detail["error"] = json!(true);
        AssertionResult { kind: a.kind.clone(), pass: false, score: 0.0, reason: msg, detail }
    };
    let Some(g) = grade else { return err("no grader was called for this assertion".into(), Value::Null) };
    let text = match &g.output {
        Ok(t) => t,
        Err(e) => return err(format!("grader call failed: {e}"), g.detail.clone()),
    };
    match crate::judge::parse_grade(text) {
        Ok(grade) => {
            let mut detail = if g.detail.is_object() { g.detail.clone() } else { json!({}) };
            detail["grader_output"] = json!(clip(text));
            let (pass, score) = if negate { (!grade.pass, 1.0 - grade.score) } else { (grade.pass, grade.score) };
            let reason = if negate { format!("not: {}", grade.reason) } else { grade.reason };
            AssertionResult { kind: a.kind.clone(), pass, score, reason, detail }
        }
        Err(e) => {
            let mut d = g.detail.clone();
            if d.is_object() {
                d["grader_output"] = json!(clip(text));
            }
            err(format!("malformed grade: {e}"), d)
        }
    }
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Parses model output as JSON, tolerating a Markdown code fence around it
/// and text before/after the outermost object, which models often add.
pub fn parse_json_output(output: &str) -> Option<Value> {
    let t = output.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let t = t.trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let (s, e) = (t.find('{')?, t.rfind('}')?);
    if e > s {
        serde_json::from_str(&t[s..=e]).ok()
    } else {
        None
    }
}

fn norm_field(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()),
        Value::Number(n) => json!(n.as_f64()),
        other => other.clone(),
    }
}

/// Per-field outcome: `tp` (right), `fn` (expected, missing), `fp` (given
/// but not expected), `fp+fn` (given with the wrong value).
fn field_scores(want: &serde_json::Map<String, Value>, got: &serde_json::Map<String, Value>, threshold: f64) -> AssertionResult {
    let mut detail = serde_json::Map::new();
    let (mut tp, mut fp, mut fnn) = (0usize, 0usize, 0usize);
    for (f, w) in want {
        let wn = !w.is_null();
        match got.get(f) {
            Some(g) if !g.is_null() => {
                if wn && norm_field(g) == norm_field(w) {
                    tp += 1;
                    detail.insert(f.clone(), json!("tp"));
                } else if wn {
                    fp += 1;
                    fnn += 1;
                    detail.insert(f.clone(), json!("fp+fn"));
                } else {
                    fp += 1;
                    detail.insert(f.clone(), json!("fp"));
                }
            }
            _ => {
                if wn {
                    fnn += 1;
                    detail.insert(f.clone(), json!("fn"));
                } else {
                    detail.insert(f.clone(), json!("tn"));
                }
            }
        }
    }
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let p = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
    let r = if tp + fnn == 0 { 1.0 } else { tp as f64 / (tp + fnn) as f64 };
    let f1 = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    let wrong: Vec<&String> = detail.iter().filter(|(_, v)| v.as_str() != Some("tp") && v.as_str() != Some("tn")).map(|(k, _)| k).collect();
    let reason = if wrong.is_empty() {
        format!("all {} fields right", want.len())
    } else {
        format!("F1 {f1:.2}; wrong or missing: {}", wrong.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
    };
    let mut d = json!({"fields": detail, "precision": p, "recall": r});
    if !extra.is_empty() {
        d["extra_fields"] = json!(extra);
    }
    AssertionResult { kind: "fields".into(), pass: f1 >= threshold, score: f1, reason, detail: d }
}

/// 1 - normalised Levenshtein distance over characters, after trimming and
/// collapsing whitespace: 1.0 identical, 0.0 nothing in common.
pub fn similarity(a: &str, b: &str) -> f64 {
    let na: Vec<char> = a.split_whitespace().collect::<Vec<_>>().join(" ").chars().collect();
    let nb: Vec<char> = b.split_whitespace().collect::<Vec<_>>().join(" ").chars().collect();
    let m = na.len().max(nb.len());
    if m == 0 {
        return 1.0;
    }
    1.0 - levenshtein(&na, &nb) as f64 / m as f64
}

pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Runs a user's checker. It gets `{"output", "vars", "expected", "tags"}`
/// as JSON on stdin and answers on stdout with `true`/`false`, a score in
/// 0..1, or `{"pass": bool, "score": f, "reason": "..."}`. A non-zero exit
/// is a failed check whose reason is the script's stderr.
fn run_exec_assert(cmd: &str, dir: &Path, output: &str, case: &Case, threshold: Option<f64>) -> Result<AssertionResult, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let input = json!({"output": output, "vars": case.vars, "expected": case.expected, "tags": case.tags, "id": case.id}).to_string();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("`{cmd}` failed: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Ok(AssertionResult { kind: "exec".into(), pass: false, score: 0.0, reason: format!("`{cmd}` exited with {}: {}", out.status, clip(&err)), detail: Value::Null });
    }
    let t = threshold.unwrap_or(0.5);
    let (pass, score, reason) = match stdout.as_str() {
        "true" | "pass" | "PASS" => (true, 1.0, "script: pass".to_string()),
        "false" | "fail" | "FAIL" => (false, 0.0, "script: fail".to_string()),
        s => {
            if let Ok(x) = s.parse::<f64>() {
                (x >= t, x, format!("script score {x}"))
            } else if let Ok(v) = serde_json::from_str::<Value>(s) {
                let score = v.get("score").and_then(|x| x.as_f64());
                let pass = v.get("pass").and_then(|x| x.as_bool()).or(score.map(|x| x >= t)).ok_or_else(|| format!("`{cmd}` printed JSON without `pass` or `score`: {}", clip(s)))?;
                let reason = v.get("reason").and_then(|x| x.as_str()).unwrap_or(if pass { "script: pass" } else { "script: fail" }).to_string();
                (pass, score.unwrap_or(if pass { 1.0 } else { 0.0 }), reason)
            } else {
                return Err(format!("`{cmd}` printed {:?}; expected true/false, a score or JSON", clip(s)));
            }
        }
    };
    Ok(AssertionResult { kind: "exec".into(), pass, score, reason, detail: Value::Null })
}

/// Combines assertion results: pass when all pass, score = weighted mean.
pub fn combine(results: &[AssertionResult], specs_weights: &[f64]) -> (bool, f64) {
    if results.is_empty() {
        return (true, 1.0);
    }
    let pass = results.iter().all(|r| r.pass);
    let mut tw = 0.0;
    let mut s = 0.0;
    for (i, r) in results.iter().enumerate() {
        let w = specs_weights.get(i).copied().unwrap_or(1.0);
        tw += w;
        s += w * r.score;
    }
    (pass, if tw > 0.0 { s / tw } else { 0.0 })
}

impl Scorer {
    pub fn weights(&self, case: &Case) -> Vec<f64> {
        self.asserts.iter().chain(case.asserts.iter()).map(|a| a.weight.unwrap_or(1.0)).collect()
    }
}
