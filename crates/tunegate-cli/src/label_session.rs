//! What both front ends of `tunegate label` share: model suggestions
//! (through the runner's cache and retries), the progress line, how an
//! answer is shown, where to go next, and the session's errors as CLI errors.

use crate::args::usage;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tunegate_core::label::{suggestion_value, LabelError, Session};
use tunegate_core::{CompiledPrompt, Task};
use tunegate_store::store_path_for;

/// Turns a session error into the CLI's error: bad files are input errors
/// (exit 2), the rest stop the command (exit 1).
pub fn err(e: LabelError) -> anyhow::Error {
    match e {
        LabelError::Input(i) => anyhow::Error::new(i),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Model suggestions, asked through the runner's cache and retries and
/// remembered for the session.
pub struct Suggester {
    prompt: CompiledPrompt,
    caller: tunegate_run::Caller,
    rt: tokio::runtime::Runtime,
    inputs_path: PathBuf,
    memo: HashMap<usize, Result<String, String>>,
}

impl Suggester {
    pub fn new(task: &Task, sel: &str, inputs_path: &std::path::Path, task_path: &std::path::Path) -> Result<Suggester> {
        let (pid, prov) = sel.split_once('@').ok_or_else(|| usage(format!("--suggest {sel}: give PROMPT@PROVIDER, e.g. bare@local:gemma-3-270m")))?;
        let src = task.prompt_sources.iter().find(|p| p.id == pid).ok_or_else(|| usage(format!("--suggest {sel}: no prompt `{pid}` in {}", task.path.display())))?;
        let spec = task.file.providers.iter().find(|p| p.name() == prov || p.id == prov).cloned().ok_or_else(|| usage(format!("--suggest {sel}: no provider `{prov}` in {}", task.path.display())))?;
        let examples = match task.examples_path().filter(|p| p.exists()) {
            Some(p) => Some(tunegate_core::load_cases(&p)?),
            None => None,
        };
        let prompt = CompiledPrompt::compile(task, src, examples.as_deref())?;
        let (provider, spec) = tunegate_run::build_provider(&spec, &task.dir, &store_path_for(task_path)).with_context(|| format!("--suggest: provider `{}`", spec.id))?;
        let caller = tunegate_run::Caller::new(provider, spec, tunegate_run::RunOptions::new(store_path_for(task_path)))?;
        Ok(Suggester { prompt, caller, rt: crate::args::runtime()?, inputs_path: inputs_path.to_path_buf(), memo: HashMap::new() })
    }

    /// The model's raw output for input `i`, or why there is none.
    pub fn get(&mut self, session: &Session, i: usize) -> Result<String, String> {
        if let Some(r) = self.memo.get(&i) {
            return r.clone();
        }
        let r = (|| {
            let msgs = self.prompt.render(&session.inputs[i], &self.inputs_path).map_err(|e| e.to_string())?;
            let out = self.rt.block_on(self.caller.call(msgs, |_| true)).map_err(|e| e.to_string())?;
            out.result.map(|r| r.output).map_err(|e| e.to_string())
        })();
        self.memo.insert(i, r.clone());
        r
    }
}

/// What to pre-fill for input `i`: the saved answer, else the model's
/// suggestion, else the input file's own `expected`.
pub fn suggestion(session: &Session, suggester: &mut Option<Suggester>, i: usize) -> (Option<Value>, Option<String>) {
    if let Some(s) = suggester {
        match s.get(session, i) {
            Ok(out) => return (suggestion_value(session.kind, &session.labels, &out), None),
            Err(e) => return (session.prefill(i), Some(format!("no suggestion: {e}"))),
        }
    }
    (session.prefill(i), None)
}

/// One line: progress and per-label counts.
pub fn progress_line(session: &Session, i: usize) -> String {
    progress_with(session, &session.counts(), i)
}

/// [`progress_line`] from counts already made (a frame computes them once).
pub fn progress_with(session: &Session, c: &tunegate_core::label::Counts, i: usize) -> String {
    let mut s = format!("Input {} of {} · answered {} · skipped {}", i + 1, c.total, c.labelled, c.skipped);
    if c.blocked > 0 {
        s.push_str(&format!(" · refused {}", c.blocked));
    }
    if !c.per_label.is_empty() {
        let parts: Vec<String> = session.labels.iter().map(|l| format!("{l} {}", c.per_label.get(l).copied().unwrap_or(0))).collect();
        s.push_str(&format!(" · {}", parts.join(", ")));
    }
    s
}

pub fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where to go after an answer or a skip: the next input to do after `i`,
/// wrapping to any earlier one; None when every input is done.
pub fn after(session: &Session, i: usize) -> Option<usize> {
    session.next_pending(i + 1).or_else(|| session.next_pending(0))
}

