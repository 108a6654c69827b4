//! Prompt templates (Jinja syntax via minijinja) rendered into chat messages.
//!
//! Variables a template can use:
//! - `input` and every key of the case's `vars` (also reachable as `vars.KEY`);
//! - `shots`: the few-shot examples drawn for this prompt, a list of
//!   `{input, expected, vars}` taken only from `data.examples`, never from
//!   `data.eval` (that would leak the answers into the prompt);
//! - `labels`: the task's label list; `task`: `{name, description, kind}`.
//!
//! Undefined variables are errors, never silently empty strings: a prompt
//! that renders "Message: \nTeam:" for every case is a wrong evaluation.

use crate::dataset::{value_text, Case};
use crate::error::InputError;
use crate::task::{PromptSource, ShotStrategy, ShotsSpec, Task};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// Flattens chat messages into one text prompt for completion-style models
/// (echo, exec, base local models): the system text, a blank line, the user text.
pub fn flatten_messages(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&m.content);
    }
    out
}

/// One compiled prompt variant, its shots already drawn.
pub struct CompiledPrompt {
    pub id: String,
    env: minijinja::Environment<'static>,
    has_system: bool,
    /// Variables the templates read that tunegate does not provide itself;
    /// each case must supply them.
    case_vars: Vec<String>,
    shots: Value,
    common: Map<String, Value>,
    origin: PathBuf,
}

const BUILTIN_VARS: &[&str] = &["input", "vars", "shots", "labels", "task", "loop", "range", "namespace"];

impl CompiledPrompt {
    pub fn compile(task: &Task, src: &PromptSource, examples: Option<&[Case]>) -> Result<CompiledPrompt, InputError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        let field = format!("prompt `{}`", src.id);
        env.add_template_owned("user", src.template.clone())
            .map_err(|e| InputError::new(&src.origin, format!("template syntax error: {e}")).line(e.line()).field(field.clone()))?;
        if let Some(s) = &src.system {
            env.add_template_owned("system", s.clone())
                .map_err(|e| InputError::new(&src.origin, format!("system template syntax error: {e}")).line(e.line()).field(field.clone()))?;
        }
        let mut case_vars: HashSet<String> = HashSet::new();
        for name in ["user", "system"] {
            if let Ok(t) = env.get_template(name) {
                case_vars.extend(t.undeclared_variables(false));
            }
        }
        let mut case_vars: Vec<String> = case_vars.into_iter().filter(|v| !BUILTIN_VARS.contains(&v.as_str())).collect();
        case_vars.sort();
        let shots = match (&src.shots, examples) {
            (Some(spec), Some(ex)) => {
                let drawn = draw_shots(spec, ex, task.labels());
                match &spec.order {
                    Some(order) => order.iter().filter_map(|&i| drawn.get(i).cloned()).collect(),
                    None => drawn,
                }
            }
            (Some(spec), None) if spec.k > 0 => {
                return Err(InputError::new(&task.path, "shots need data.examples").field(format!("prompts.{}.shots", src.id)))
            }
            _ => vec![],
        };
        let shots = Value::Array(
            shots
                .iter()
                .map(|c| json!({"input": c.input_text(), "expected": c.expected_text().unwrap_or_default(), "vars": c.vars}))
                .collect(),
        );
        let mut common = Map::new();
        common.insert("labels".into(), json!(src.labels.as_deref().unwrap_or(task.labels())));
        common.insert(
            "task".into(),
            json!({"name": task.file.task.name, "description": task.file.task.description, "kind": task.kind().as_str()}),
        );
        Ok(CompiledPrompt { id: src.id.clone(), env, has_system: src.system.is_some(), case_vars, shots, common, origin: src.origin.clone() })
    }

    /// Renders the messages for one case. `case_file` is named in errors.
    pub fn render(&self, case: &Case, case_file: &std::path::Path) -> Result<Vec<Message>, InputError> {
        for v in &self.case_vars {
            if !case.vars.contains_key(v) {
                return Err(InputError::new(case_file, format!("prompt `{}` uses the variable `{v}`, which this case does not define", self.id))
                    .line(case.line)
                    .field(format!("vars.{v}"))
                    .hint(format!("add `{v}` to the case's vars or change the template in {}", self.origin.display())));
            }
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.common {
            ctx.insert(k.clone(), v.clone());
        }
        for (k, v) in &case.vars {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("vars".into(), Value::Object(case.vars.clone()));
        ctx.insert("shots".into(), self.shots.clone());
        let ctx = minijinja::Value::from_serialize(&ctx);
        let mut messages = Vec::with_capacity(2);
        let render = |name: &str| -> Result<String, InputError> {
            let t = self.env.get_template(name).expect("template registered at compile");
            t.render(&ctx).map_err(|e| {
                InputError::new(&self.origin, format!("cannot render prompt `{}` for case at {}:{}: {e}", self.id, case_file.display(), case.line))
                    .line(e.line())
            })
        };
        if self.has_system {
            messages.push(Message::new("system", render("system")?));
        }
        messages.push(Message::new("user", render("user")?));
        Ok(messages)
    }

    pub fn shots(&self) -> &Value {
        &self.shots
    }
}

/// Draws `k` examples, deterministically for a seed. `stratified` takes them
/// round-robin across labels (each label's pool shuffled by the seed) so a
/// prompt with 8 shots and 5 labels shows every label; `random` shuffles the
/// whole pool; `first` takes the file order.
pub fn draw_shots(spec: &ShotsSpec, examples: &[Case], labels: &[String]) -> Vec<Case> {
    let k = spec.k.min(examples.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let usable: Vec<&Case> = examples.iter().filter(|c| c.expected.is_some()).collect();
    let picked: Vec<&Case> = match spec.strategy {
        ShotStrategy::First => usable.into_iter().take(k).collect(),
        ShotStrategy::Random => {
            let mut v = usable;
            v.shuffle(&mut rng);
            v.into_iter().take(k).collect()
        }
        ShotStrategy::Stratified => {
            let mut groups: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
            for c in usable {
                groups.entry(c.expected_text().unwrap_or_default()).or_default().push(c);
            }
            // Labels in task order first, then any others, so output is stable.
            let mut order: Vec<String> = labels.iter().filter(|l| groups.contains_key(*l)).cloned().collect();
            for g in groups.keys() {
                if !order.contains(g) {
                    order.push(g.clone());
                }
            }
            for g in groups.values_mut() {
                g.shuffle(&mut rng);
            }
            let mut out = vec![];
            let mut round = 0;
            while out.len() < k {
                let mut any = false;
                for l in &order {
                    if out.len() >= k {
                        break;
                    }
                    if let Some(c) = groups[l].get(round) {
                        out.push(*c);
                        any = true;
                    }
                }
                if !any {
                    break;
                }
                round += 1;
            }
            // Interleaved order would teach "labels alternate"; shuffle it.
            out.shuffle(&mut rng);
            out
        }
    };
    picked.into_iter().cloned().collect()
}

/// Renders an assertion value template (e.g. `{{ expected }}`) over a case.
/// The common forms (`{{ expected }}`, `{{ input }}`, `{{ vars.x }}` alone)
/// are substituted directly: building a template environment per case was
/// the harness's largest cost per eval.
pub fn render_value(template: &str, case: &Case) -> Result<String, String> {
    if !template.contains("{{") && !template.contains("{%") {
        return Ok(template.to_string());
    }
    let t = template.trim();
    if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        let name = inner.trim();
        if !name.contains(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')) {
            let found = match name {
                "expected" => case.expected.as_ref().map(value_text),
                n => {
                    let key = n.strip_prefix("vars.").unwrap_or(n);
                    case.vars.get(key).map(value_text)
                }
            };
            if let Some(v) = found {
                return Ok(v);
            }
        }
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in &case.vars {
        ctx.insert(k.clone(), v.clone());
    }
    ctx.insert("vars".into(), Value::Object(case.vars.clone()));
    ctx.insert("expected".into(), case.expected.as_ref().map(|e| Value::String(value_text(e))).unwrap_or(Value::Null));
    env.render_str(template, ctx).map_err(|e| format!("assertion value template: {e}"))
}
