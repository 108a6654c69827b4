//! Writing expected outputs by hand: the state of a labelling session over
//! a file of raw inputs, appending each answer to the task's examples or
//! eval set the moment it is given.
//!
//! Durability is the design: the dataset is the record of what is labelled
//! (each answer is one appended, fsynced JSONL line, so a crash loses at
//! most the answer being typed), and a provenance journal beside it
//! (`<dataset>.provenance.jsonl`) records who answered what and when, and
//! the skips and undos, so a session resumes exactly where it stopped.
//! Rewrites (undo, changing an answer) replace the file atomically.
//!
//! An input that is already in the other set (eval when labelling
//! examples, and the reverse) is refused: an example the model is graded
//! on is a leak, the mistake `tunegate data check` exists to catch.

use crate::data::near::normalize_text;
use crate::dataset::{load_cases, load_cases_tolerant, value_text, Case};
use crate::error::InputError;
use crate::scorers::parse_json_output;
use crate::task::normalize_label;
use crate::task::{Task, TaskKind};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which data set the answers go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Examples,
    Eval,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Examples => "examples",
            Role::Eval => "eval",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The answer does not fit the task's contract (a label outside the
    /// set, an extraction answer that is not an object, an empty text).
    #[error("{0}")]
    Invalid(String),
    /// The input is in the other data set.
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LabelError + '_ {
    move |source| LabelError::Io { path: path.to_path_buf(), source }
}

/// The identity of an input: a hash of its text as `data check` normalises
/// it, so inputs it would call exact duplicates are the same input here.
pub fn input_key(input_text: &str) -> String {
    hex::encode(&Sha256::digest(normalize_text(input_text).as_bytes())[..12])
}

/// Where an input stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pending,
    Labelled(Value),
    Skipped,
    /// In the other data set, at this line: it cannot be saved here.
    Blocked(String),
}

/// One step that can be undone, newest last.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Label { key: String },
    Relabel { key: String, previous: String },
    Skip { key: String },
}

pub struct Session {
    pub kind: TaskKind,
    pub labels: Vec<String>,
    /// Field names offered for extraction (the schema's properties, in order).
    pub fields: Vec<String>,
    pub inputs: Vec<Case>,
    pub inputs_path: PathBuf,
    pub target: PathBuf,
    pub role: Role,
    pub provenance: PathBuf,
    pub who: String,
    keys: Vec<String>,
    /// key -> the dataset line holding its answer.
    labelled: HashMap<String, String>,
    /// key -> the answer in that line, parsed once (the screen asks for
    /// every input's status at each keypress).
    answers: HashMap<String, Value>,
    /// key -> a dataset line for the input without an expected output
    /// (an eval set being completed in place): an answer replaces it.
    unanswered: HashMap<String, String>,
    skipped: HashSet<String>,
    /// key -> "path:line" of the same input in the other set.
    other: HashMap<String, String>,
    steps: Vec<Step>,
}

/// The provenance journal beside a dataset.
pub fn provenance_path(dataset: &Path) -> PathBuf {
    let mut s = dataset.as_os_str().to_os_string();
    s.push(".provenance.jsonl");
    PathBuf::from(s)
}

/// Appends one line and makes it durable before returning.
fn append_durable(path: &Path, line: &str) -> Result<(), LabelError> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io(path))?;
    // A file whose last line lacks its newline (edited by hand) must not
    // have our line glued onto it: look at its last byte only.
    let len = f.metadata().map_err(io(path))?.len();
    let mut buf = String::new();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).and_then(|_| f.read_exact(&mut last)).map_err(io(path))?;
        if last[0] != b'\n' {
            buf.push('\n');
        }
    }
    buf.push_str(line);
    buf.push('\n');
    f.write_all(buf.as_bytes()).map_err(io(path))?;
    f.sync_data().map_err(io(path))
}

/// Replaces a file's content atomically (write beside it, fsync, rename):
/// a crash leaves the old file or the new one, never half of each.
fn rewrite_atomic(path: &Path, content: &str) -> Result<(), LabelError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("dataset")));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(content.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The `expected` of a dataset line (null when absent).
fn expected_of(line: &str) -> Value {
    serde_json::from_str::<Value>(line).ok().and_then(|v| v.get("expected").cloned()).unwrap_or(Value::Null)
}

/// The input key of a dataset line, when it is a case.
fn line_key(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let obj = v.as_object()?;
    let text = match (obj.get("input"), obj.get("vars")) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(v), _) => v.to_string(),
        (None, Some(Value::Object(m))) => match m.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => Value::Object(m.clone()).to_string(),
        },
        _ => return None,
    };
    Some(input_key(&text))
}

impl Session {
    /// Opens a session: reads the inputs, the target set (what is already
    /// labelled), the other set (what must not be labelled here) and the
    /// journal (skips and the undo history).
    pub fn open(task: &Task, inputs_path: &Path, role: Role, who: &str) -> Result<Session, LabelError> {
        let (target, other) = match role {
            Role::Examples => (task.examples_path(), task.eval_path()),
            Role::Eval => (task.eval_path(), task.examples_path()),
        };
        let field = format!("data.{}", role.as_str());
        let target = target.ok_or_else(|| {
            InputError::new(&task.path, format!("{field} is not set: there is no file to write the answers to")).field(field.clone()).hint(format!("add `{}: data/{}.jsonl` under data", role.as_str(), role.as_str()))
        })?;
        if target.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            return Err(InputError::new(&task.path, format!("{field} is {}: labelling appends JSONL lines", target.display())).field(field).hint("point it at a .jsonl file (CSV can be converted with `tunegate data split`)").into());
        }
        let inputs = load_cases(inputs_path)?;
        let keys: Vec<String> = inputs.iter().map(|c| input_key(&c.input_text())).collect();
        let mut labelled = HashMap::new();
        let mut unanswered = HashMap::new();
        if target.exists() {
            let text = std::fs::read_to_string(&target).map_err(io(&target))?;
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                match line_key(l) {
                    Some(k) => {
                        let answered = serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("expected").cloned()).map(|e| !e.is_null()).unwrap_or(false);
                        if answered {
                            labelled.insert(k, l.to_string());
                        } else {
                            unanswered.insert(k, l.to_string());
                        }
                    }
                    None => return Err(InputError::new(&target, "not a case (each line must be a JSON object with `input` or `vars`)").line(i + 1).hint("fix or remove the line, then label again").into()),
                }
            }
        }
        let mut other_keys = HashMap::new();
        if let Some(o) = other.filter(|o| o.exists()) {
            let t = load_cases_tolerant(&o)?;
            for c in &t.cases {
                other_keys.entry(input_key(&c.input_text())).or_insert_with(|| format!("{}:{}", o.display(), c.line));
            }
        }
        let provenance = provenance_path(&target);
        let mut steps: Vec<Step> = vec![];
        if provenance.exists() {
            let text = std::fs::read_to_string(&provenance).map_err(io(&provenance))?;
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let v: Value = match serde_json::from_str(l) {
                    Ok(v) => v,
                    // A torn last line (a crash while writing it) is ignored.
                    Err(_) if i + 1 == text.lines().count() => continue,
                    Err(e) => return Err(InputError::new(&provenance, format!("not valid JSON: {e}")).line(i + 1).into()),
                };
                let key = v["key"].as_str().unwrap_or("").to_string();
                match v["event"].as_str() {
                    Some("label") => match v["previous"].as_str() {
                        Some(p) => steps.push(Step::Relabel { key, previous: p.to_string() }),
                        None => steps.push(Step::Label { key }),
                    },
                    Some("relabel") => steps.push(Step::Relabel { key, previous: v["previous"].as_str().unwrap_or("").to_string() }),
                    Some("skip") => steps.push(Step::Skip { key }),
                    Some("undo") => {
                        steps.pop();
                    }
                    _ => {}
                }
            }
        }
        let skipped = steps.iter().filter_map(|s| if let Step::Skip { key } = s { Some(key.clone()) } else { None }).filter(|k| !labelled.contains_key(k)).collect();
        let fields = task
            .output_schema
            .as_ref()
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Session {
            kind: task.kind(),
            labels: task.labels().to_vec(),
            fields,
            inputs,
            inputs_path: inputs_path.to_path_buf(),
            target,
            role,
            provenance,
            who: who.to_string(),
            keys,
            answers: labelled.iter().map(|(k, l)| (k.clone(), expected_of(l))).collect(),
            labelled,
            unanswered,
            skipped,
            other: other_keys,
            steps,
        })
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    pub fn status(&self, i: usize) -> Status {
        let k = &self.keys[i];
        if let Some(v) = self.answers.get(k) {
            return Status::Labelled(v.clone());
        }
        if let Some(at) = self.other.get(k) {
            let other = if self.role == Role::Examples { "eval" } else { "examples" };
            return Status::Blocked(format!("this input is already in the {other} set ({at}); it cannot also be in {}", self.role.as_str()));
        }
        if self.skipped.contains(k) {
            return Status::Skipped;
        }
        Status::Pending
    }

    /// The first input at or after `from` still to do (pending), if any.
    pub fn next_pending(&self, from: usize) -> Option<usize> {
        (from..self.len()).find(|&i| self.is_pending(i))
    }

    fn is_pending(&self, i: usize) -> bool {
        let k = &self.keys[i];
        !self.answers.contains_key(k) && !self.other.contains_key(k) && !self.skipped.contains(k)
    }

    /// Where a resumed session starts: the first input neither answered,
    /// skipped nor blocked.
    pub fn resume_position(&self) -> Option<usize> {
        self.next_pending(0)
    }

    /// Answered, skipped and blocked counts, and answers per label (or per
    /// value for other kinds, first 40 characters), over this input file.
    pub fn counts(&self) -> Counts {
        // The same order of precedence as `status`, without building one.
        let mut c = Counts { total: self.len(), ..Default::default() };
        for k in &self.keys {
            if let Some(v) = self.answers.get(k) {
                c.labelled += 1;
                if self.kind == TaskKind::Classification {
                    match v {
                        Value::String(s) => match c.per_label.get_mut(s.as_str()) {
                            Some(n) => *n += 1,
                            None => {
                                c.per_label.insert(s.clone(), 1);
                            }
                        },
                        other => *c.per_label.entry(value_text(other)).or_default() += 1,
                    }
                }
            } else if self.other.contains_key(k) {
                c.blocked += 1;
            } else if self.skipped.contains(k) {
                c.skipped += 1;
            }
        }
        c
    }

    /// Checks an answer against the task's contract and returns the value
    /// to store: a canonical label, a JSON object, or a non-empty text.
    pub fn parse_answer(&self, answer: &str) -> Result<Value, LabelError> {
        match self.kind {
            TaskKind::Classification => {
                let a = answer.trim();
                // One key (1..9, 0, A..Z, as shown), or the label's number.
                let mut chars = a.chars();
                if let (Some(k), None) = (chars.next(), chars.next()) {
                    if let Some(l) = label_for_key(&self.labels, k) {
                        return Ok(Value::String(l));
                    }
                }
                if let Ok(n) = a.parse::<usize>() {
                    if n >= 1 && n <= self.labels.len() {
                        return Ok(Value::String(self.labels[n - 1].clone()));
                    }
                }
                let n = normalize_label(a);
                self.labels
                    .iter()
                    .find(|l| normalize_label(l) == n)
                    .map(|l| Value::String(l.clone()))
                    .ok_or_else(|| LabelError::Invalid(format!("`{a}` is not one of the labels: {}", self.labels.join(", "))))
            }
            TaskKind::Extraction => match parse_json_output(answer) {
                Some(v @ Value::Object(_)) => Ok(v),
                _ => Err(LabelError::Invalid("an extraction answer must be a JSON object, e.g. {\"order_id\": \"A-1\"}".into())),
            },
            TaskKind::Rewrite | TaskKind::Generation => {
                if answer.trim().is_empty() {
                    Err(LabelError::Invalid("the answer is empty".into()))
                } else {
                    Ok(Value::String(answer.to_string()))
                }
            }
        }
    }

    fn journal(&self, event: &str, i: usize, extra: Value) -> Result<(), LabelError> {
        let mut v = json!({
            "event": event,
            "key": self.keys[i],
            "input_line": self.inputs[i].line,
            "inputs": self.inputs_path.display().to_string(),
            "who": self.who,
            "when": now(),
        });
        if let (Some(m), Value::Object(x)) = (v.as_object_mut(), extra) {
            m.extend(x);
        }
        append_durable(&self.provenance, &v.to_string())
    }

    /// The dataset line for an input and its answer: `input` (or `vars`),
    /// `expected`, and the input's `id` and `tags` when it had them.
    fn case_line(&self, i: usize, expected: &Value) -> String {
        let c = &self.inputs[i];
        // Completing a line already in the file keeps everything it had.
        if let Some(Value::Object(mut m)) = self.unanswered.get(&self.keys[i]).and_then(|l| serde_json::from_str::<Value>(l).ok()) {
            m.insert("expected".into(), expected.clone());
            return Value::Object(m).to_string();
        }
        let mut m = Map::new();
        if c.vars.len() == 1 && c.vars.contains_key("input") {
            m.insert("input".into(), c.vars["input"].clone());
        } else {
            m.insert("vars".into(), Value::Object(c.vars.clone()));
        }
        m.insert("expected".into(), expected.clone());
        if !c.tags.is_empty() {
            m.insert("tags".into(), json!(c.tags));
        }
        Value::Object(m).to_string()
    }

    /// Saves an answer: appended at once, or replacing an earlier answer to
    /// the same input. `suggested` is what was offered, for provenance.
    pub fn save(&mut self, i: usize, expected: Value, suggested: Option<&Value>) -> Result<(), LabelError> {
        if let Status::Blocked(why) = self.status(i) {
            return Err(LabelError::Refused(why));
        }
        let line = self.case_line(i, &expected);
        let key = self.keys[i].clone();
        let extra = json!({"suggested": suggested.is_some(), "accepted_suggestion": suggested == Some(&expected), "dataset": self.target.display().to_string()});
        match self.labelled.get(&key).or(self.unanswered.get(&key)).cloned() {
            Some(previous) => {
                self.replace_line(&key, Some(&line))?;
                let mut e = extra;
                e["previous"] = json!(previous);
                // Completing a line without an answer is a first answer; an
                // answer replacing an answer is a relabel. Both undo to `previous`.
                self.journal(if self.labelled.contains_key(&key) { "relabel" } else { "label" }, i, e)?;
                self.steps.push(Step::Relabel { key: key.clone(), previous });
            }
            None => {
                append_durable(&self.target, &line)?;
                self.journal("label", i, extra)?;
                self.steps.push(Step::Label { key: key.clone() });
            }
        }
        self.skipped.remove(&key);
        self.set_labelled(key, line);
        Ok(())
    }

    pub fn skip(&mut self, i: usize) -> Result<(), LabelError> {
        if matches!(self.status(i), Status::Labelled(_)) {
            return Ok(());
        }
        self.journal("skip", i, json!({}))?;
        self.skipped.insert(self.keys[i].clone());
        self.steps.push(Step::Skip { key: self.keys[i].clone() });
        Ok(())
    }

    /// Undoes the last answer or skip (of this session or an earlier one):
    /// an answer's line leaves the dataset (a changed answer gets its old
    /// value back). Returns the input to show again.
    pub fn undo(&mut self) -> Result<Option<usize>, LabelError> {
        let Some(step) = self.steps.last().cloned() else { return Ok(None) };
        let key = match &step {
            Step::Label { key } | Step::Skip { key } | Step::Relabel { key, .. } => key.clone(),
        };
        let i = self.keys.iter().position(|k| *k == key);
        match &step {
            Step::Label { .. } => {
                if self.labelled.contains_key(&key) {
                    self.replace_line(&key, None)?;
                }
                self.unset_labelled(&key);
            }
            Step::Relabel { previous, .. } => {
                self.replace_line(&key, Some(previous))?;
                if self.unanswered.contains_key(&key) {
                    self.unset_labelled(&key);
                } else {
                    self.set_labelled(key.clone(), previous.clone());
                }
            }
            Step::Skip { .. } => {
                self.skipped.remove(&key);
            }
        }
        if let Some(i) = i {
            self.journal("undo", i, json!({}))?;
        } else {
            append_durable(&self.provenance, &json!({"event": "undo", "key": key, "who": self.who, "when": now()}).to_string())?;
        }
        self.steps.pop();
        Ok(i)
    }

    fn set_labelled(&mut self, key: String, line: String) {
        self.answers.insert(key.clone(), expected_of(&line));
        self.labelled.insert(key, line);
    }

    fn unset_labelled(&mut self, key: &str) {
        self.answers.remove(key);
        self.labelled.remove(key);
    }

    /// Rewrites the dataset with the line of `key` replaced (or removed).
    fn replace_line(&self, key: &str, with: Option<&str>) -> Result<(), LabelError> {
        let text = std::fs::read_to_string(&self.target).map_err(io(&self.target))?;
        let mut out = String::with_capacity(text.len());
        for l in text.lines() {
            if line_key(l).as_deref() == Some(key) {
                if let Some(w) = with {
                    out.push_str(w);
                    out.push('\n');
                }
                continue;
            }
            out.push_str(l);
            out.push('\n');
        }
        rewrite_atomic(&self.target, &out)
    }

    /// The next input after `from` (wrapping) whose text contains `query`,
    /// case-insensitively.
    pub fn search(&self, from: usize, query: &str) -> Option<usize> {
        let q = query.to_lowercase();
        let n = self.len();
        (1..=n).map(|d| (from + d) % n).find(|&i| self.inputs[i].input_text().to_lowercase().contains(&q))
    }

    /// The value to pre-fill: the input file's own `expected` when present.
    pub fn prefill(&self, i: usize) -> Option<Value> {
        self.inputs[i].expected.clone()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub total: usize,
    pub labelled: usize,
    pub skipped: usize,
    pub blocked: usize,
    pub per_label: BTreeMap<String, usize>,
}

/// The key that picks label `i` (0-based): 1..9, 0, then A..Z.
pub fn key_for_label(i: usize) -> Option<char> {
    match i {
        0..=8 => char::from_digit(i as u32 + 1, 10),
        9 => Some('0'),
        10..=35 => Some((b'A' + (i - 10) as u8) as char),
        _ => None,
    }
}

pub fn label_for_key(labels: &[String], k: char) -> Option<String> {
    (0..labels.len()).find(|&i| key_for_label(i) == Some(k)).map(|i| labels[i].clone())
}

/// Turns a suggestion (a model's raw output) into a value for the kind:
/// the label it names, the JSON object in it, or the text.
pub fn suggestion_value(kind: TaskKind, labels: &[String], output: &str) -> Option<Value> {
    match kind {
        TaskKind::Classification => {
            let n = normalize_label(output);
            labels.iter().find(|l| normalize_label(l) == n).map(|l| Value::String(l.clone()))
        }
        TaskKind::Extraction => parse_json_output(output).filter(|v| v.is_object()),
        _ => Some(Value::String(output.trim().to_string())).filter(|v| v.as_str() != Some("")),
    }
}

/// How many expected outputs people wrote with `tunegate label`, from a
/// dataset's provenance journal: labels less undos. The advisor counts them.
pub fn human_labelled(dataset: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(provenance_path(dataset)).ok()?;
    let mut stack: Vec<&str> = vec![];
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else { continue };
        match v["event"].as_str() {
            Some("undo") => {
                stack.pop();
            }
            Some("label") => stack.push("label"),
            Some(e @ ("relabel" | "skip")) => stack.push(if e == "skip" { "skip" } else { "relabel" }),
            _ => {}
        }
    }
    Some(stack.iter().filter(|e| **e == "label").count())
}

fn now() -> String {
    // Seconds since the epoch in RFC 3339 without a date library in core.
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(dir: &Path, kind: &str) -> Task {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/eval.jsonl"), "{\"input\": \"Where is my parcel?\", \"expected\": \"shipping\"}\n").unwrap();
        let labels = if kind == "classification" { "  labels: [billing, shipping, other]\n" } else { "" };
        let y = format!("version: 1\ntask:\n  name: t\n  kind: {kind}\n{labels}prompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\n");
        std::fs::write(dir.join("tunegate.yaml"), y).unwrap();
        Task::load(&dir.join("tunegate.yaml")).unwrap()
    }

    #[test]
    fn save_undo_relabel_skip_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let t = task(dir.path(), "classification");
        let inputs = dir.path().join("inputs.jsonl");
        std::fs::write(&inputs, "{\"input\": \"I was charged twice\"}\n{\"input\": \"where is my PARCEL?\"}\n{\"input\": \"Hello\"}\n{\"input\": \"Refund please\"}\n").unwrap();
        let mut s = Session::open(&t, &inputs, Role::Examples, "ana").unwrap();
        assert_eq!(s.resume_position(), Some(0));
        // Input 1 is in the eval set (normalised): refused.
        assert!(matches!(s.status(1), Status::Blocked(_)));
        assert!(matches!(s.save(1, json!("shipping"), None), Err(LabelError::Refused(_))));
        s.save(0, s.parse_answer("1").unwrap(), Some(&json!("billing"))).unwrap();
        s.skip(2).unwrap();
        s.save(3, s.parse_answer("Billing").unwrap(), None).unwrap();
        assert!(s.parse_answer("4").is_err() && s.parse_answer("refunds").is_err());
        let ex = dir.path().join("data/examples.jsonl");
        assert_eq!(std::fs::read_to_string(&ex).unwrap().lines().count(), 2);
        // Undo the last answer: its line leaves the file.
        assert_eq!(s.undo().unwrap(), Some(3));
        assert_eq!(std::fs::read_to_string(&ex).unwrap(), "{\"input\":\"I was charged twice\",\"expected\":\"billing\"}\n");
        // Change an answer, then undo the change.
        s.save(0, json!("other"), None).unwrap();
        assert!(std::fs::read_to_string(&ex).unwrap().contains("other"));
        s.undo().unwrap();
        assert!(std::fs::read_to_string(&ex).unwrap().contains("billing"));
        // A new session resumes: 0 done, 1 blocked, 2 skipped, 3 to do.
        let s2 = Session::open(&t, &inputs, Role::Examples, "ana").unwrap();
        assert_eq!(s2.resume_position(), Some(3));
        assert_eq!(s2.counts(), Counts { total: 4, labelled: 1, skipped: 1, blocked: 1, per_label: [("billing".to_string(), 1)].into() });
        let mut s2 = s2;
        // The skip is the last undoable step left from the first session.
        assert_eq!(s2.undo().unwrap(), Some(2));
        assert_eq!(s2.resume_position(), Some(2));
        assert_eq!(human_labelled(&ex), Some(1));
        let prov = std::fs::read_to_string(provenance_path(&ex)).unwrap();
        assert!(prov.lines().all(|l| l.contains("\"who\":\"ana\"") && l.contains("\"when\":\"20")), "{prov}");
        // Labelling the eval set refuses what is in the examples.
        let e = Session::open(&t, &inputs, Role::Eval, "ana").unwrap();
        assert!(matches!(e.status(0), Status::Blocked(_)));
    }

    #[test]
    fn completes_an_eval_set_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let t = task(dir.path(), "classification");
        let ev = dir.path().join("data/eval.jsonl");
        std::fs::write(&ev, "{\"input\": \"a\", \"expected\": \"billing\", \"tags\": [\"x\"]}\n{\"id\": \"k\", \"input\": \"b\"}\n").unwrap();
        let mut s = Session::open(&t, &ev, Role::Eval, "ana").unwrap();
        assert_eq!(s.resume_position(), Some(1));
        s.save(1, json!("other"), None).unwrap();
        assert_eq!(std::fs::read_to_string(&ev).unwrap().lines().nth(1).unwrap(), "{\"id\":\"k\",\"input\":\"b\",\"expected\":\"other\"}");
        assert_eq!(s.resume_position(), None);
        s.undo().unwrap();
        assert_eq!(std::fs::read_to_string(&ev).unwrap().lines().nth(1).unwrap(), "{\"id\": \"k\", \"input\": \"b\"}");
        assert_eq!(s.resume_position(), Some(1));
    }

    #[test]
    fn keys_and_suggestions() {
        let labels: Vec<String> = (0..12).map(|i| format!("l{i}")).collect();
        assert_eq!(key_for_label(0), Some('1'));
        assert_eq!(key_for_label(9), Some('0'));
        assert_eq!(label_for_key(&labels, 'B'), Some("l11".into()));
        assert_eq!(suggestion_value(TaskKind::Classification, &labels, " L3.\n"), Some(json!("l3")));
        assert_eq!(suggestion_value(TaskKind::Extraction, &labels, "```json\n{\"a\": 1}\n```"), Some(json!({"a": 1})));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
