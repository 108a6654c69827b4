//! Datasets: eval cases and the examples pool, from JSONL or CSV.
//!
//! A case keeps the line it came from, so every later message (a template
//! variable missing for one case, a label outside the set) can point at it.

use crate::error::InputError;
use crate::task::{AssertSpec, Task, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Stable identity used to match cases across runs: the `id` field when
    /// given, else a hash of the case's variables.
    pub id: String,
    /// 1-based line in the source file (the row for CSV, header = line 1).
    pub line: usize,
    /// Template variables; `input` is one of them when the case has it.
    pub vars: Map<String, Value>,
    pub expected: Option<Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra assertions for this case alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asserts: Vec<AssertSpec>,
}

impl Case {
    /// The case's input as text: `input` when present, else the variables as
    /// JSON. Used for de-duplication, leakage checks and display.
    pub fn input_text(&self) -> String {
        match self.vars.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => Value::Object(self.vars.clone()).to_string(),
        }
    }

    /// The expected output as text (strings verbatim, JSON otherwise).
    pub fn expected_text(&self) -> Option<String> {
        self.expected.as_ref().map(value_text)
    }

    /// The words of the expected output: a label's text, or the values (not
    /// the keys) of an extraction target, joined by spaces. Near-duplicate
    /// detection uses it to tell a word that carries the answer.
    pub fn answer_text(&self) -> String {
        self.expected.as_ref().map(value_words).unwrap_or_default()
    }
}

/// The values (not the keys) of a JSON value, joined by spaces: the words
/// an extraction target or a label actually says.
pub fn value_words(v: &Value) -> String {
    fn leaves(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
            Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
            Value::Null => {}
            other => out.push(value_text(other)),
        }
    }
    let mut out = vec![];
    leaves(v, &mut out);
    out.join(" ")
}

pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const CASE_KEYS: &[&str] = &["id", "input", "vars", "expected", "tags", "assert", "metadata"];

/// Reads cases from a `.jsonl`/`.json` (one object per line) or `.csv` file.
pub fn load_cases(path: &Path) -> Result<Vec<Case>, InputError> {
    let text = crate::error::read_text(path, "dataset", "check the path under `data:` in the task file")?;
    parse_cases(path, &text)
}

/// Cases from the text of a dataset file; `path` gives the format (by its
/// extension) and the name in errors. The loader without the file system,
/// as the fuzz tests drive it.
pub fn parse_cases(path: &Path, text: &str) -> Result<Vec<Case>, InputError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut cases = match ext.as_str() {
        "csv" => parse_csv(path, text, None)?,
        "jsonl" | "json" | "ndjson" => parse_jsonl(path, text, None)?,
        other => {
            return Err(InputError::new(path, format!("unsupported dataset extension `.{other}`")).hint("use .jsonl or .csv"))
        }
    };
    if cases.is_empty() {
        return Err(InputError::new(path, "the dataset has no cases").hint("add one JSON object per line, e.g. {\"input\": \"...\", \"expected\": \"...\"}"));
    }
    assign_ids(path, &mut cases, None)?;
    Ok(cases)
}

/// A dataset read without stopping at the first bad line: the cases that
/// parsed, and one error per line that did not. `tunegate data check` uses
/// it to report every malformed line at once instead of one per run.
#[derive(Debug, Clone)]
pub struct TolerantLoad {
    pub cases: Vec<Case>,
    pub bad_lines: Vec<InputError>,
    /// The file's text, so callers can copy lines through verbatim.
    pub text: String,
}

/// Like [`load_cases`], but a malformed line (bad JSON, unknown field,
/// duplicate id, ...) is collected in `bad_lines` and reading goes on. Only a
/// file that cannot be read at all, or has an unsupported extension, is an error.
pub fn load_cases_tolerant(path: &Path) -> Result<TolerantLoad, InputError> {
    let text = crate::error::read_text(path, "dataset", "check the path under `data:` in the task file")?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut bad = vec![];
    let mut cases = match ext.as_str() {
        "csv" => parse_csv(path, &text, Some(&mut bad))?,
        "jsonl" | "json" | "ndjson" => parse_jsonl(path, &text, Some(&mut bad))?,
        other => {
            return Err(InputError::new(path, format!("unsupported dataset extension `.{other}`")).hint("use .jsonl or .csv"))
        }
    };
    assign_ids(path, &mut cases, Some(&mut bad))?;
    bad.sort_by_key(|e| e.line);
    Ok(TolerantLoad { cases, bad_lines: bad, text })
}

/// Either records a per-line error and goes on (tolerant reading) or fails.
fn on_bad(bad: &mut Option<&mut Vec<InputError>>, e: InputError) -> Result<(), InputError> {
    match bad {
        Some(v) => {
            v.push(e);
            Ok(())
        }
        None => Err(e),
    }
}

fn parse_jsonl(path: &Path, text: &str, mut bad: Option<&mut Vec<InputError>>) -> Result<Vec<Case>, InputError> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                on_bad(&mut bad, InputError::new(path, format!("not valid JSON: {e}")).line(line).hint("each line must be one JSON object"))?;
                continue;
            }
        };
        let Value::Object(obj) = v else {
            on_bad(&mut bad, InputError::new(path, "expected a JSON object").line(line))?;
            continue;
        };
        match case_from_object(path, line, obj) {
            Ok(c) => out.push(c),
            Err(e) => on_bad(&mut bad, e)?,
        }
    }
    Ok(out)
}

fn case_from_object(path: &Path, line: usize, obj: Map<String, Value>) -> Result<Case, InputError> {
    let err = |field: &str, msg: String| InputError::new(path, msg).line(line).field(field.to_string());
    for k in obj.keys() {
        if !CASE_KEYS.contains(&k.as_str()) {
            return Err(err(k, format!("unknown field `{k}`")).hint(format!("known fields: {}; put template variables under `vars`", CASE_KEYS.join(", "))));
        }
    }
    let mut vars = match obj.get("vars") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(err("vars", "must be an object".into())),
    };
    match obj.get("input") {
        None => {}
        Some(Value::Null) => return Err(err("input", "is null".into())),
        Some(v) => {
            vars.insert("input".into(), v.clone());
        }
    }
    if vars.is_empty() {
        return Err(err("input", "missing `input` (or `vars`)".into()));
    }
    let expected = match obj.get("expected") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.clone()),
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| err("tags", "must be a list of strings".into())))
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => split_tags(s),
        Some(_) => return Err(err("tags", "must be a list of strings".into())),
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(err("id", "must be a string or a number".into())),
    };
    let asserts = match obj.get("assert") {
        None => vec![],
        Some(v) => serde_json::from_value::<Vec<AssertSpec>>(v.clone()).map_err(|e| err("assert", e.to_string()))?,
    };
    Ok(Case { id, line, vars, expected, tags, asserts })
}

fn split_tags(s: &str) -> Vec<String> {
    s.split([';', ',', '|']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// The line and column where a quoted CSV field opens and never closes: the
/// CSV reader would otherwise take the rest of the file as that one field
/// and report "row has 1 fields". A quote opens a field only at its start
/// (as the reader reads it); `""` inside a quoted field is a quote.
fn unterminated_quote(text: &str) -> Option<(usize, usize)> {
    let (mut line, mut col, mut field_start, mut open) = (1, 0, true, None);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        col += 1;
        if open.is_some() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    col += 1;
                } else {
                    open = None;
                }
            }
        } else if c == '"' && field_start {
            open = Some((line, col));
        }
        if c == '\n' {
            (line, col) = (line + 1, 0);
        }
        if c != '\r' {
            field_start = open.is_none() && (c == ',' || c == '\n');
        }
    }
    open
}

fn parse_csv(path: &Path, text: &str, mut bad: Option<&mut Vec<InputError>>) -> Result<Vec<Case>, InputError> {
    if let Some((line, col)) = unterminated_quote(text) {
        return Err(InputError::new(path, format!("unterminated quote: the field quoted at column {col} never closes, so the rest of the file would be read as one field")).line(line).hint("close the quote, or write a quote inside a quoted field as \"\""));
    }
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| InputError::new(path, format!("cannot read the CSV header: {e}")).line(1))?
        .clone();
    if headers.iter().any(|h| h.trim().is_empty()) {
        return Err(InputError::new(path, "a CSV column has an empty name").line(1).field("header"));
    }
    let var_cols: Vec<&str> = headers.iter().filter(|h| !["id", "expected", "tags"].contains(h)).collect();
    if var_cols.is_empty() {
        return Err(InputError::new(path, "no input column").line(1).field("header").hint("add an `input` column (or any variable columns) beside `expected`"));
    }
    let mut out = vec![];
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize);
                on_bad(&mut bad, InputError::new(path, format!("bad CSV row: {e}")).line(line))?;
                continue;
            }
        };
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.len() == 1 && rec.get(0).map(|s| s.trim().is_empty()).unwrap_or(true) {
            continue; // blank line
        }
        if rec.len() != headers.len() {
            let missing: Vec<&str> = headers.iter().skip(rec.len()).collect();
            let msg = if rec.len() < headers.len() {
                format!("row has {} fields but the header has {}; missing {}", rec.len(), headers.len(), missing.join(", "))
            } else {
                format!("row has {} fields but the header has {}", rec.len(), headers.len())
            };
            on_bad(&mut bad, InputError::new(path, msg).line(line).field(missing.first().copied().unwrap_or("row").to_string()).hint("quote fields that contain commas"))?;
            continue;
        }
        let mut obj = Map::new();
        let mut vars = Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            match h {
                "id" | "tags" => {
                    obj.insert(h.into(), Value::String(v.into()));
                }
                "expected" => {
                    // A JSON object in the expected column is an extraction target.
                    let val = if v.trim_start().starts_with('{') {
                        serde_json::from_str(v).unwrap_or(Value::String(v.into()))
                    } else {
                        Value::String(v.into())
                    };
                    if !v.is_empty() {
                        obj.insert("expected".into(), val);
                    }
                }
                _ => {
                    vars.insert(h.into(), Value::String(v.into()));
                }
            }
        }
        obj.insert("vars".into(), Value::Object(vars));
        match case_from_object(path, line, obj) {
            Ok(c) => out.push(c),
            Err(e) => on_bad(&mut bad, e)?,
        }
    }
    Ok(out)
}

/// Gives every case without an explicit id a content hash id; repeated
/// inputs get `#2`, `#3` so identity stays unique. Explicit ids must be unique.
/// In tolerant reading a repeated explicit id is recorded and the later
/// case dropped, as if its line were malformed.
fn assign_ids(path: &Path, cases: &mut Vec<Case>, mut bad: Option<&mut Vec<InputError>>) -> Result<(), InputError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut drop = vec![];
    for (i, c) in cases.iter_mut().enumerate() {
        if c.id.is_empty() {
            let h = Sha256::digest(Value::Object(c.vars.clone()).to_string().as_bytes());
            let base = format!("c{}", &hex::encode(h)[..12]);
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            c.id = if *n == 1 { base } else { format!("{base}#{n}") };
        } else {
            let n = seen.entry(c.id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                on_bad(&mut bad, InputError::new(path, format!("duplicate case id `{}`", c.id)).line(c.line).field("id"))?;
                drop.push(i);
            }
        }
    }
    for i in drop.into_iter().rev() {
        cases.remove(i);
    }
    Ok(())
}

/// Checks cases against the task's contract: labels in the label set,
/// extraction targets that are JSON objects.
/// A record's types against the task's kind, before any work: `input` a
/// string (or an object of variables), `expected` a label for
/// classification, a JSON object for extraction, text for rewrite and
/// generation. A record of the wrong shape would otherwise be scored as a
/// model failure.
pub fn type_error(kind: TaskKind, path: &Path, c: &Case) -> Option<InputError> {
    let what = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    let at = |field: &str, msg: String| Some(InputError::new(path, msg).line(c.line).field(field.to_string()));
    if let Some(v) = c.vars.get("input").filter(|v| !v.is_string() && !v.is_object()) {
        return at("input", format!("must be a string (or an object of variables), not {}", what(v)));
    }
    let e = c.expected.as_ref()?;
    let (ok, want) = match kind {
        TaskKind::Classification => (e.is_string() || e.is_number() || e.is_boolean(), "one label (a string)"),
        TaskKind::Extraction => (e.is_object(), "a JSON object of fields"),
        TaskKind::Rewrite | TaskKind::Generation => (e.is_string(), "the expected text (a string)"),
    };
    if ok {
        None
    } else {
        at("expected", format!("must be {want} for the task's kind ({}), not {}", kind.as_str(), what(e)))
    }
}

pub fn check_contract(task: &Task, path: &Path, cases: &[Case], require_expected: bool) -> Result<(), InputError> {
    let labels: Vec<String> = task.labels().iter().map(|l| crate::task::normalize_label(l)).collect();
    for c in cases {
        if let Some(e) = type_error(task.kind(), path, c) {
            return Err(e);
        }
        match (&c.expected, task.kind()) {
            (None, _) if require_expected => {
                return Err(InputError::new(path, "missing `expected`").line(c.line).field("expected").hint("every example needs the output you want"));
            }
            (None, _) => {}
            (Some(e), TaskKind::Classification) => {
                let text = value_text(e);
                if !labels.contains(&crate::task::normalize_label(&text)) {
                    return Err(InputError::new(path, format!("label `{text}` is not in task.labels [{}]", task.labels().join(", ")))
                        .line(c.line)
                        .field("expected")
                        .hint("fix the label or add it to task.labels"));
                }
            }
            (Some(e), TaskKind::Extraction) => {
                if !e.is_object() {
                    return Err(InputError::new(path, "an extraction target must be a JSON object").line(c.line).field("expected"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
