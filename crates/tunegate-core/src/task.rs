//! The task file, `tunegate.yaml`: the contract between a team and tunegate.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) because a typo in a
//! key that is silently ignored is a wrong evaluation nobody notices. Every
//! error names the file, line and field.

use crate::error::{find_line, InputError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Classification,
    Extraction,
    Rewrite,
    Generation,
}

impl TaskKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Extraction => "extraction",
            TaskKind::Rewrite => "rewrite",
            TaskKind::Generation => "generation",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub kind: TaskKind,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Path to a JSON Schema (relative to the task file) for extraction outputs.
    #[serde(default)]
    pub output_schema: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub calls_per_month: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShotStrategy {
    #[default]
    Stratified,
    Random,
    First,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotsSpec {
    pub k: usize,
    #[serde(default)]
    pub strategy: ShotStrategy,
    #[serde(default)]
    pub seed: u64,
    /// Which of the drawn examples to show, by position, in this order
    /// (`tunegate prompt minimize` writes it when it drops examples; `prompt
    /// vary` uses it to reorder them). Absent: all `k`, as drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub id: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub system_file: Option<PathBuf>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_file: Option<PathBuf>,
    #[serde(default)]
    pub shots: Option<ShotsSpec>,
}

/// Generation parameters sent to a provider. Known keys are typed so that a
/// typo is an error; anything provider-specific goes under `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Classification without free generation: score each label and return
    /// the most likely (local models), or constrain decoding to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// How a local model picks among `choices`: `score` (default: each
    /// label's full log-likelihood) or `decode` (constrained decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_mode: Option<ChoiceMode>,
    /// Extra JSON merged into the request body of HTTP providers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How a local model picks among `choices`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChoiceMode {
    /// Every label's log-likelihood as a continuation; the best wins.
    #[default]
    Score,
    /// Decoding restricted, token by token, to prefixes of the labels
    /// (greedy or sampled with the task's settings): one pass however many
    /// labels there are, and it honours temperature/top-k/top-p/seed.
    Decode,
}

/// Price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `echo`, `exec:CMD`, `openai:MODEL`, `openai-compatible:MODEL`,
    /// `anthropic:MODEL`, `local:NAME|PATH`.
    pub id: String,
    /// A short name for reports when the id is long (exec commands).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the API key. The key
    /// itself never appears in the task file, the store or any report.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub price: Option<Price>,
    /// Requests per second at most, for this provider.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// `local:` providers only: a LoRA adapter directory (PEFT layout:
    /// adapter_config.json, adapter_model.safetensors) applied on top of
    /// the model, relative to the task file unless absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
}

impl ProviderSpec {
    /// The name used in reports and selectors.
    pub fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    #[serde(default)]
    pub eval: Option<PathBuf>,
    #[serde(default)]
    pub examples: Option<PathBuf>,
    #[serde(default)]
    pub validation: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub weight: Option<f64>,
    /// `llm-rubric`: the grader, a provider id (`exec:python3 grade.py`,
    /// `openai:gpt-4o-mini`) or a full provider entry (for a `base_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<GraderSpec>,
    /// `llm-rubric`: the grading prompt, replacing the default
    /// (`tunegate_core::judge::DEFAULT_RUBRIC_PROMPT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric_prompt: Option<String>,
}

/// A grader named by its id alone, or configured like any provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GraderSpec {
    Id(String),
    Full(Box<ProviderSpec>),
}

/// By hand rather than `untagged`, so that a typo inside a provider entry
/// says which key is wrong instead of "did not match any variant".
impl<'de> Deserialize<'de> for GraderSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(GraderSpec::Id(s)),
            v @ serde_json::Value::Object(_) => serde_json::from_value::<ProviderSpec>(v).map(|p| GraderSpec::Full(Box::new(p))).map_err(|e| D::Error::custom(format!("provider: {e}"))),
            _ => Err(D::Error::custom("provider: give a provider id (`openai:gpt-4o-mini`) or a provider entry ({ id: ..., base_url: ... })")),
        }
    }
}

impl GraderSpec {
    /// The provider entry: an id alone gets temperature 0, since a grade
    /// that changes from call to call is not a measurement.
    pub fn provider_spec(&self) -> ProviderSpec {
        match self {
            GraderSpec::Full(p) => (**p).clone(),
            GraderSpec::Id(id) => ProviderSpec {
                id: id.clone(),
                label: None,
                base_url: None,
                api_key_env: None,
                params: Params { temperature: Some(0.0), ..Default::default() },
                price: None,
                rate_limit: None,
                timeout_s: None,
                max_retries: None,
                adapter: None,
            },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    #[serde(default)]
    pub rank: Option<usize>,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub dropout: Option<f64>,
    #[serde(default)]
    pub target_modules: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSpec {
    pub base: String,
    pub prompt: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub lora: LoraSpec,
    #[serde(default)]
    pub epochs: Option<u32>,
    #[serde(default)]
    pub learning_rate: Option<f64>,
    #[serde(default)]
    pub lr_schedule: Option<String>,
    #[serde(default)]
    pub warmup_steps: Option<u32>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub grad_accum: Option<usize>,
    #[serde(default)]
    pub max_seq_len: Option<usize>,
    #[serde(default)]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub weight_decay: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub checkpoint_every: Option<u32>,
    #[serde(default)]
    pub early_stopping_patience: Option<u32>,
    /// What picks the best epoch and drives early stopping: `metric` (the
    /// share of validation cases that pass the task's assertions; ties go to
    /// the lower loss; the default) or `loss` (the validation loss).
    #[serde(default)]
    pub select_by: Option<String>,
    /// Recompute activations in the backward pass instead of keeping them:
    /// far less memory for about a third more compute.
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
    /// Refuse to tune when an eval case is among the examples, instead of
    /// leaving such examples (and repeats and conflicts) out.
    #[serde(default)]
    pub strict: Option<bool>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    pub version: u32,
    pub task: TaskSpec,
    #[serde(default)]
    pub usage: Usage,
    pub prompts: Vec<PromptSpec>,
    pub providers: Vec<ProviderSpec>,
    #[serde(default)]
    pub data: DataSpec,
    #[serde(default, rename = "assert")]
    pub asserts: Vec<AssertSpec>,
    #[serde(default)]
    pub tune: Option<TuneSpec>,
    /// Advisor thresholds overriding the documented defaults.
    #[serde(default)]
    pub advise: Option<BTreeMap<String, f64>>,
}

/// The assertion types tunegate knows; anything else is an error at load.
pub const ASSERTION_TYPES: &[&str] = &[
    "equals",
    "contains",
    "icontains",
    "regex",
    "starts-with",
    "is-json",
    "json-schema",
    "label",
    "fields",
    "similarity",
    "max-tokens",
    "latency",
    "cost",
    "exec",
    "llm-rubric",
];

/// Splits `not-contains` into (`contains`, negated).
pub fn split_negation(kind: &str) -> (&str, bool) {
    match kind.strip_prefix("not-") {
        Some(k) => (k, true),
        None => (kind, false),
    }
}

/// A loaded, validated task: the parsed file plus the resolved paths and
/// template sources, so later stages never touch the YAML again.
#[derive(Debug, Clone)]
pub struct Task {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub source: String,
    pub file: TaskFile,
    /// Resolved (system, template) sources per prompt, in file order.
    pub prompt_sources: Vec<PromptSource>,
    pub output_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct PromptSource {
    pub id: String,
    pub system: Option<String>,
    pub template: String,
    /// Where the template text came from, for error messages.
    pub origin: PathBuf,
    pub shots: Option<ShotsSpec>,
    /// The label order `{{ labels }}` renders with; None: the task's order.
    /// Only the prompt lab sets it (label-order fragility variants).
    pub labels: Option<Vec<String>>,
}

impl Task {
    /// Reads and validates a task file. Paths inside it are relative to it.
    pub fn load(path: &Path) -> Result<Task, InputError> {
        let source = crate::error::read_text(path, "task file", "run `tunegate init` to create one, or pass -c PATH")?;
        Self::from_source(path, source)
    }

    pub fn from_source(path: &Path, source: String) -> Result<Task, InputError> {
        let mut file: TaskFile = serde_yaml_ng::from_str(&source).map_err(|e| yaml_error(path, &e))?;
        // Earlier versions spelled an adapter into the id
        // (`local:MODEL+adapter:DIR`); read it as the `adapter:` field, under
        // the name the user wrote.
        for p in &mut file.providers {
            if let Some((model, dir)) = p.id.split_once("+adapter:").filter(|_| p.id.starts_with("local:") && p.adapter.is_none()) {
                let (model, dir) = (model.to_string(), PathBuf::from(dir));
                p.label.get_or_insert_with(|| p.id.clone());
                p.id = model;
                p.adapter = Some(dir);
            }
        }
        let dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut task = Task {
            path: path.to_path_buf(),
            dir,
            source,
            file,
            prompt_sources: vec![],
            output_schema: None,
        };
        task.validate()?;
        Ok(task)
    }

    /// The line of the first occurrence of `key: value` (or `- key: value`).
    pub fn line_of(&self, key: &str, value: &str, from: usize) -> Option<usize> {
        find_line(&self.source, from, |l| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .map(|r| r.trim().trim_matches(|c| c == '"' || c == '\'') == value)
                .unwrap_or(false)
        })
    }

    fn key_line(&self, key: &str) -> Option<usize> {
        find_line(&self.source, 1, |l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{key}:"))
        })
    }

    /// An error about the value of `key` (a dotted path such as
    /// `lora.rank`), at the line of its last segment (else its first, else
    /// the line of `tune`), reported as `field`.
    pub fn error_at_key(&self, key: &str, field: &str, msg: impl Into<String>) -> InputError {
        let last = key.rsplit('.').next().unwrap_or(key);
        let first = key.split('.').next().unwrap_or(key);
        let line = self.key_line(last).or_else(|| self.key_line(first)).or_else(|| self.key_line("tune"));
        self.err(line, field, msg)
    }

    fn err(&self, line: Option<usize>, field: &str, msg: impl Into<String>) -> InputError {
        InputError::new(&self.path, msg).line(line).field(field)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn validate(&mut self) -> Result<(), InputError> {
        let f = &self.file;
        if f.version != 1 {
            return Err(self.err(self.key_line("version"), "version", format!("unsupported version {}", f.version)).hint("this tunegate reads version: 1"));
        }
        if f.task.name.trim().is_empty() {
            return Err(self.err(self.key_line("name"), "task.name", "must not be empty"));
        }
        if f.task.kind == TaskKind::Classification && f.task.labels.is_empty() {
            return Err(self.err(self.key_line("kind"), "task.labels", "a classification task needs a list of labels").hint("add `labels: [a, b, c]` under task"));
        }
        let mut seen = HashSet::new();
        for l in &f.task.labels {
            if l.trim().is_empty() {
                return Err(self.err(self.key_line("labels"), "task.labels", "a label is empty"));
            }
            if !seen.insert(normalize_label(l)) {
                return Err(self.err(self.key_line("labels"), "task.labels", format!("label `{l}` appears twice")));
            }
        }
        if let Some(schema) = &f.task.output_schema {
            let p = self.resolve(schema);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                self.err(self.key_line("output_schema"), "task.output_schema", format!("cannot read {}: {e}", p.display()))
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                InputError::new(&p, format!("not valid JSON: {e}")).line(e.line())
            })?;
            if let Err(e) = jsonschema::validator_for(&v) {
                return Err(InputError::new(&p, format!("not a valid JSON Schema: {e}")));
            }
            self.output_schema = Some(v);
        }
        if f.prompts.is_empty() {
            return Err(self.err(self.key_line("prompts"), "prompts", "at least one prompt is needed"));
        }
        let mut ids = HashSet::new();
        let mut sources = vec![];
        for (i, p) in f.prompts.iter().enumerate() {
            let line = self.line_of("id", &p.id, 1);
            let field = format!("prompts[{i}]");
            if p.id.trim().is_empty() {
                return Err(self.err(line, &format!("{field}.id"), "must not be empty"));
            }
            if p.id.contains('@') {
                return Err(self.err(line, &format!("{field}.id"), format!("`{}` contains `@`, which separates prompt and provider in selectors", p.id)));
            }
            if !ids.insert(p.id.clone()) {
                let second = self.line_of("id", &p.id, line.unwrap_or(1) + 1).or(line);
                return Err(self.err(second, &format!("{field}.id"), format!("duplicate prompt id `{}`", p.id)).hint("prompt ids must be unique"));
            }
            let (template, origin) = match (&p.template, &p.template_file) {
                (Some(t), None) => (t.clone(), self.path.clone()),
                (None, Some(tf)) => {
                    let path = self.resolve(tf);
                    let t = std::fs::read_to_string(&path).map_err(|e| {
                        self.err(self.line_of("template_file", &tf.display().to_string(), 1).or(line), &format!("{field}.template_file"), format!("cannot read {}: {e}", path.display()))
                    })?;
                    (t, path)
                }
                (Some(_), Some(_)) => return Err(self.err(line, &field, "give either `template` or `template_file`, not both")),
                (None, None) => return Err(self.err(line, &field, "missing `template` or `template_file`")),
            };
            let system = match (&p.system, &p.system_file) {
                (Some(s), None) => Some(s.clone()),
                (None, Some(sf)) => {
                    let path = self.resolve(sf);
                    Some(std::fs::read_to_string(&path).map_err(|e| self.err(line, &format!("{field}.system_file"), format!("cannot read {}: {e}", path.display())))?)
                }
                (Some(_), Some(_)) => return Err(self.err(line, &field, "give either `system` or `system_file`, not both")),
                (None, None) => None,
            };
            if let Some(s) = &p.shots {
                if let Some(bad) = s.order.as_ref().and_then(|o| o.iter().find(|&&i| i >= s.k)) {
                    return Err(self.err(line, &format!("{field}.shots.order"), format!("position {bad} is outside the {} drawn examples (0..{})", s.k, s.k)).hint("order lists positions of drawn examples, from 0"));
                }
                if s.k > 0 && f.data.examples.is_none() {
                    return Err(self.err(line, &format!("{field}.shots"), "shots are drawn from data.examples, which is not set").hint("add `examples: data/examples.jsonl` under data"));
                }
            }
            sources.push(PromptSource { id: p.id.clone(), system, template, origin, shots: p.shots.clone(), labels: None });
        }
        if f.providers.is_empty() {
            return Err(self.err(self.key_line("providers"), "providers", "at least one provider is needed").hint("e.g. `- id: echo`"));
        }
        let mut pids = HashSet::new();
        for (i, p) in f.providers.iter().enumerate() {
            let line = self.line_of("id", &p.id, 1);
            let field = format!("providers[{i}].id");
            if !pids.insert(p.name().to_string()) {
                return Err(self.err(line, &field, format!("duplicate provider `{}`", p.name())).hint("give one of them a distinct `label`"));
            }
            let (scheme, rest) = match p.id.split_once(':') {
                Some((s, r)) => (s, r),
                None => (p.id.as_str(), ""),
            };
            match scheme {
                "echo" => {}
                "exec" | "openai" | "anthropic" | "local" | "tuned" => {
                    if rest.trim().is_empty() {
                        return Err(self.err(line, &field, format!("`{}` needs a name after `{scheme}:`", p.id)));
                    }
                }
                "openai-compatible" => {
                    if rest.trim().is_empty() {
                        return Err(self.err(line, &field, "`openai-compatible:` needs a model name"));
                    }
                    if p.base_url.is_none() {
                        return Err(self.err(line, &format!("providers[{i}].base_url"), "openai-compatible providers need a base_url").hint("e.g. base_url: http://127.0.0.1:8080/v1"));
                    }
                }
                other => {
                    return Err(self.err(line, &field, format!("unknown provider type `{other}`")).hint("use echo, exec:CMD, openai:MODEL, openai-compatible:MODEL, anthropic:MODEL, local:MODEL or tuned:JOB"));
                }
            }
            if p.adapter.is_some() && scheme != "local" {
                return Err(self.err(line, &format!("providers[{i}].adapter"), format!("`{}` cannot take an adapter", p.id)).hint("adapters apply to `local:` models"));
            }
            if let Some(t) = p.params.temperature {
                if !(0.0..=2.0).contains(&t) {
                    return Err(self.err(line, &format!("providers[{i}].params.temperature"), format!("{t} is outside 0..2")));
                }
            }
            if let Some(r) = p.rate_limit {
                if r <= 0.0 {
                    return Err(self.err(line, &format!("providers[{i}].rate_limit"), "must be positive (requests per second)"));
                }
            }
        }
        for (i, a) in f.asserts.iter().enumerate() {
            let (kind, _) = split_negation(&a.kind);
            if !ASSERTION_TYPES.contains(&kind) {
                return Err(self.err(self.line_of("type", &a.kind, 1), &format!("assert[{i}].type"), format!("unknown assertion type `{}`", a.kind)).hint(format!("known types: {}", ASSERTION_TYPES.join(", "))));
            }
            check_spec(a, f.task.kind, !f.task.labels.is_empty(), self.output_schema.is_some())
                .map_err(|m| self.err(self.line_of("type", &a.kind, 1), &format!("assert[{i}]"), m))?;
        }
        if let Some(t) = &f.tune {
            if !ids.contains(&t.prompt) {
                return Err(self.err(self.line_of("prompt", &t.prompt, 1), "tune.prompt", format!("no prompt with id `{}`", t.prompt)));
            }
            // Every other `tune:` value is checked by the tune crate's
            // settings resolution, the one place that knows their ranges.
        }
        if let Some(a) = &f.advise {
            crate::thresholds::Thresholds::new(Some(a)).map_err(|m| {
                let key = a.keys().find(|k| m.contains(&format!("`{k}`"))).cloned().unwrap_or_default();
                self.err(self.key_line(&key).or(self.key_line("advise")), &format!("advise.{key}"), m).hint("the thresholds and their defaults are listed in README.md, \"The advisor\"")
            })?;
        }
        self.prompt_sources = sources;
        Ok(())
    }

    pub fn kind(&self) -> TaskKind {
        self.file.task.kind
    }

    pub fn labels(&self) -> &[String] {
        &self.file.task.labels
    }

    pub fn eval_path(&self) -> Option<PathBuf> {
        self.file.data.eval.as_ref().map(|p| self.resolve(p))
    }

    pub fn examples_path(&self) -> Option<PathBuf> {
        self.file.data.examples.as_ref().map(|p| self.resolve(p))
    }

    /// The assertions in force: the task's, or a sensible default by kind
    /// (a label check for classification, field F1 for extraction, ...).
    pub fn effective_asserts(&self) -> Vec<AssertSpec> {
        if !self.file.asserts.is_empty() {
            return self.file.asserts.clone();
        }
        let kind = match self.kind() {
            TaskKind::Classification => "label",
            TaskKind::Extraction => "fields",
            TaskKind::Rewrite => "similarity",
            TaskKind::Generation => "similarity",
        };
        vec![AssertSpec { kind: kind.into(), value: None, threshold: None, weight: None, provider: None, rubric_prompt: None }]
    }
}

fn yaml_error(path: &Path, e: &serde_yaml_ng::Error) -> InputError {
    let msg = e.to_string();
    // serde_yaml_ng appends " at line L column C"; we print the line ourselves.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    // The field path serde reports ("prompts[1]: unknown field ...") leads.
    let (field, rest) = match msg.split_once(": ") {
        Some((f, r)) if !f.contains(' ') => (Some(f.to_string()), r.to_string()),
        _ => (None, msg.clone()),
    };
    let mut err = InputError::new(path, rest).line(e.location().map(|l| l.line()));
    if let Some(f) = field {
        err = err.field(f);
    }
    err
}

/// Stable hash of any serialisable value, for revisions and cache keys.
pub fn hash_json(v: &impl Serialize) -> String {
    use sha2::{Digest, Sha256};
    let s = serde_json::to_string(v).unwrap_or_default();
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Normalises a label for comparison: first line, lower case, surrounding
/// punctuation, quotes and markdown removed, inner whitespace collapsed.
pub fn normalize_label(s: &str) -> String {
    let first = s.trim().lines().next().unwrap_or("");
    let t = first.trim_matches(|c: char| !c.is_alphanumeric());
    t.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Validates an assertion spec at load time so that a bad regex or a
/// missing threshold is an error before any provider call is made.
pub fn check_spec(a: &AssertSpec, kind: TaskKind, has_labels: bool, has_schema: bool) -> Result<(), String> {
    let (k, _) = split_negation(&a.kind);
    let value_str = a.value.as_ref().and_then(|v| v.as_str());
    match k {
        "regex" => {
            let Some(v) = value_str else { return Err("`regex` needs a string `value`".into()) };
            if !v.contains("{{") {
                regex::Regex::new(v).map_err(|e| format!("invalid regex: {e}"))?;
            }
        }
        "label" => {
            if !has_labels {
                return Err("`label` needs task.labels".into());
            }
        }
        "json-schema" => {
            if a.value.is_none() && !has_schema {
                return Err("`json-schema` needs a `value` (schema or path) or task.output_schema".into());
            }
        }
        "fields" => {
            if kind != TaskKind::Extraction && kind != TaskKind::Generation && kind != TaskKind::Rewrite {
                // Allowed anywhere expected is an object; nothing to check here.
            }
        }
        "similarity" => {
            if let Some(t) = a.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(format!("similarity threshold {t} is outside 0..1"));
                }
            }
        }
        "max-tokens" => {
            if a.value.as_ref().and_then(|v| v.as_u64()).is_none() {
                return Err("`max-tokens` needs an integer `value`".into());
            }
        }
        "latency" | "cost" => {
            if a.threshold.is_none() {
                return Err(format!("`{k}` needs a `threshold` ({})", if k == "latency" { "milliseconds" } else { "US dollars per call" }));
            }
        }
        "exec" => {
            if value_str.is_none() {
                return Err("`exec` needs a `value`: the command to run".into());
            }
        }
        "llm-rubric" => {
            if value_str.map(|v| v.trim().is_empty()).unwrap_or(true) {
                return Err("`llm-rubric` needs a `value`: the rubric the output is graded against".into());
            }
            if a.provider.is_none() {
                return Err("`llm-rubric` needs a `provider`: the grader, e.g. `provider: openai:gpt-4o-mini`".into());
            }
            if let Some(t) = &a.rubric_prompt {
                if !t.contains("{{ output }}") && !t.contains("{{output}}") {
                    return Err("`rubric_prompt` never shows the grader the output: it needs `{{ output }}`".into());
                }
            }
        }
        _ => {}
    }
    if k != "llm-rubric" && (a.provider.is_some() || a.rubric_prompt.is_some()) {
        return Err(format!("`provider` and `rubric_prompt` belong to `llm-rubric`, not `{k}`"));
    }
    if let Some(w) = a.weight {
        if w < 0.0 {
            return Err("weight must not be negative".into());
        }
    }
    Ok(())
}
