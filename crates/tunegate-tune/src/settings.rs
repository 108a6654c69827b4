//! Fine-tuning settings, resolved once per command: a value given on the
//! command line (or in a serve request) wins over the task file's `tune:`,
//! which wins over [`DEFAULTS`]. Every value is checked here, before any
//! work starts; an error names where the value came from (the flag, or the
//! task file's line and `tune.` field). Nothing else in tunegate holds a
//! fine-tuning default.

use crate::TuneError;
use serde::Serialize;
use tunegate_core::Task;
use tunegate_model::lora::{LoraConfig, TARGETS};

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// LoRA on the embedded model, on this machine's CPU.
    Local,
    /// A job on an OpenAI-compatible fine-tuning API at `tune.base_url`.
    Remote,
}

/// What picks the best epoch and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectBy {
    /// The validation loss (lower is better).
    Loss,
    /// The validation pass rate (ties go to the lower loss). The default:
    /// the loss can prefer an epoch whose outputs pass less often (a JSON
    /// object slightly less likely token by token, yet more often right).
    /// Without a metric (an llm-rubric task, `--no-val-metric`) the loss
    /// decides.
    Metric,
}

/// The defaults that do not depend on the task's kind, in one table.
pub struct Defaults {
    pub base: &'static str,
    pub dropout: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Warmup: all steps divided by this, at least one step.
    pub warmup_divisor: usize,
    pub lr_schedule: &'static str,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
    pub max_seq_len: usize,
    pub checkpoint_every: usize,
}

pub const DEFAULTS: Defaults = Defaults {
    base: "local:gemma-3-270m",
    dropout: 0.0,
    batch_size: 8,
    grad_accum: 1,
    warmup_divisor: 20,
    lr_schedule: "cosine",
    weight_decay: 0.0,
    grad_clip: 1.0,
    seed: 0,
    max_seq_len: 512,
    checkpoint_every: 10,
};

/// What a task's kind decides about training: where the adapters go, how
/// big they are, how fast and how long they learn. Each value can still be
/// set in the task file or by a flag; `tune --search` tries variations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The table row: a task kind, or `chat` for jobs without a task.
    pub name: &'static str,
    pub rank: usize,
    pub alpha: f64,
    pub targets: &'static [&'static str],
    pub epochs: usize,
    pub learning_rate: f64,
    /// Stop after this many epochs without a better validation result.
    pub early_stopping_patience: Option<usize>,
}

/// All seven linear layers of a block.
pub const ALL_LINEAR: &[&str] = &["q", "k", "v", "o", "gate", "up", "down"];

/// One recipe per task kind, chosen from measurements on real datasets
/// (BENCHMARKS.md, "Tuning recipe per task kind"). A label is one or two
/// tokens: rank 8 on q and v learns it in 2 to 3 epochs and trains fastest.
/// A JSON object or a rewritten text is many tokens whose form and content
/// both have to be learnt: adapters on every linear layer at rank 16 and
/// more epochs learn it (extraction: 1.14x and 2.13x the eval pass rate of
/// the old r8 q,v 3-epoch recipe on two real sets, 63.0% vs 55.5% and 58.5%
/// vs 27.5%), with early stopping on the validation metric
/// so a task that learns fast does not pay for the extra epochs.
pub const RECIPES: &[Recipe] = &[
    Recipe { name: "classification", rank: 8, alpha: 16.0, targets: &["q", "v"], epochs: 3, learning_rate: 1e-3, early_stopping_patience: None },
    Recipe { name: "extraction", rank: 16, alpha: 32.0, targets: ALL_LINEAR, epochs: 5, learning_rate: 1e-3, early_stopping_patience: Some(2) },
    Recipe { name: "rewrite", rank: 16, alpha: 32.0, targets: ALL_LINEAR, epochs: 5, learning_rate: 1e-3, early_stopping_patience: Some(2) },
    Recipe { name: "generation", rank: 16, alpha: 32.0, targets: ALL_LINEAR, epochs: 5, learning_rate: 1e-3, early_stopping_patience: Some(2) },
    // Serve's fine-tuning jobs have no task kind: the cheapest recipe,
    // which a request changes through its hyperparameters.
    Recipe { name: "chat", rank: 8, alpha: 16.0, targets: &["q", "v"], epochs: 3, learning_rate: 1e-3, early_stopping_patience: None },
];

impl Recipe {
    /// The recipe of a task kind (`None`: a job without a task).
    pub fn for_kind(kind: Option<tunegate_core::task::TaskKind>) -> &'static Recipe {
        let name = kind.map(|k| k.as_str()).unwrap_or("chat");
        RECIPES.iter().find(|r| r.name == name).unwrap_or(&RECIPES[RECIPES.len() - 1])
    }
}

/// Values that win over the task file: command-line flags, a benchmark's
/// fixed shape, or the hyper-parameters of a serve request. `None` leaves
/// the task file's value (or the default).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub backend: Option<String>,
    pub base: Option<String>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<Vec<String>>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub learning_rate: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub lr_schedule: Option<String>,
    pub weight_decay: Option<f64>,
    pub grad_clip: Option<f64>,
    pub seed: Option<u64>,
    pub max_seq_len: Option<usize>,
    pub threads: Option<usize>,
    pub checkpoint_every: Option<usize>,
    pub early_stopping_patience: Option<usize>,
    pub select_by: Option<String>,
    pub gradient_checkpointing: Option<bool>,
    pub strict: Option<bool>,
    /// Measure the validation pass rate after each epoch (default: yes when
    /// the task's assertions can be scored without a grader model).
    pub val_metric: Option<bool>,
    /// How an override is named in errors: `--` for flags, `hyperparameters.`
    /// for serve requests.
    pub prefix: &'static str,
}

/// Every setting of a fine-tuning run, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub backend: Backend,
    /// The row of [`RECIPES`] the unset values came from.
    pub recipe: &'static str,
    /// `local:gemma-3-270m`, `local:PATH.gguf`, or a remote model id.
    pub base: String,
    /// The prompt examples are rendered through (task runs only).
    pub prompt: Option<String>,
    pub lora: LoraConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub learning_rate: f64,
    /// None: the run's steps over [`Defaults::warmup_divisor`], at least one.
    pub warmup_steps: Option<usize>,
    pub lr_schedule: String,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub seed: u64,
    pub max_seq_len: usize,
    pub threads: Option<usize>,
    pub checkpoint_every: usize,
    pub early_stopping_patience: Option<usize>,
    pub select_by: SelectBy,
    pub gradient_checkpointing: bool,
    /// Refuse leaking data instead of leaving the spoiling examples out.
    pub strict: bool,
    pub val_metric: bool,
    pub base_url: Option<String>,
    /// The name of the variable holding the API key, never the key.
    pub api_key_env: Option<String>,
    /// Hyper-parameters the task file sets explicitly, in the names an
    /// OpenAI-compatible API takes (a remote job gets only these; the
    /// service's own defaults apply to the rest).
    #[serde(skip)]
    pub remote_hyperparameters: serde_json::Map<String, serde_json::Value>,
}

impl Settings {
    /// Settings for a task: its `tune:` section under `o`. A task without
    /// `tune:` is an input error naming the section to add.
    pub fn for_task(task: &Task, o: &Overrides) -> Result<Settings, TuneError> {
        let tune = task.file.tune.as_ref().ok_or_else(|| {
            tunegate_core::InputError::new(&task.path, "no `tune:` section").field("tune").hint("add `tune: { base: ..., prompt: PROMPT_ID }`")
        })?;
        Resolver { task: Some(task), kind: Some(task.kind()), o }.resolve(Some(tune))
    }

    /// Settings for a task kind without a `tune:` section: `o` over the
    /// kind's recipe (what the advisor shows before there is one).
    pub fn for_kind(kind: tunegate_core::TaskKind, o: &Overrides) -> Result<Settings, TuneError> {
        Resolver { task: None, kind: Some(kind), o }.resolve(None)
    }

    /// Settings without a task (serve's jobs, benchmarks): `o` over the defaults.
    pub fn from_overrides(o: &Overrides) -> Result<Settings, TuneError> {
        Resolver { task: None, kind: None, o }.resolve(None)
    }

    /// The recipe in words, as plans, searches and the advisor show it.
    pub fn recipe_text(&self) -> String {
        recipe_text(self.lora.rank, self.lora.alpha, &self.lora.targets, self.learning_rate, self.epochs)
    }

    /// Warmup steps for a run of `total` optimizer steps.
    pub fn warmup_for(&self, total: usize) -> usize {
        self.warmup_steps.unwrap_or((total / DEFAULTS.warmup_divisor).max(1))
    }

    /// The model name `local:` bases name (`gemma-3-270m` or a GGUF path).
    pub fn local_model(&self) -> Option<&str> {
        self.base.strip_prefix("local:")
    }

    /// The model name an OpenAI-compatible API expects.
    pub fn remote_model(&self) -> &str {
        ["openai-compatible:", "openai:", "remote:"].iter().find_map(|p| self.base.strip_prefix(p)).unwrap_or(&self.base)
    }
}

/// A recipe in words: "LoRA r16 alpha 32 on q,k,v, lr 0.001, up to 5 epochs".
pub fn recipe_text(rank: usize, alpha: f64, targets: &[String], lr: f64, epochs: usize) -> String {
    format!("LoRA r{rank} alpha {alpha} on {}, lr {lr}, up to {epochs} epochs", targets.join(","))
}

/// Checks a task's `tune:` section, when it has one, as tuning would: every
/// command that loads a task calls it, so a bad value fails in the first
/// second of `eval` as well as of `tune`.
pub fn check_task(task: &Task) -> Result<(), TuneError> {
    if task.file.tune.is_some() {
        Settings::for_task(task, &Overrides::default())?;
    }
    Ok(())
}

struct Resolver<'a> {
    task: Option<&'a Task>,
    kind: Option<tunegate_core::TaskKind>,
    o: &'a Overrides,
}

fn positive(x: &f64) -> Result<(), String> {
    if x.is_finite() && *x > 0.0 {
        Ok(())
    } else {
        Err(format!("{x} must be a positive number"))
    }
}

fn non_negative(x: &f64) -> Result<(), String> {
    if x.is_finite() && *x >= 0.0 {
        Ok(())
    } else {
        Err(format!("{x} must be zero or more"))
    }
}

fn at_least_one(x: &usize) -> Result<(), String> {
    if *x >= 1 {
        Ok(())
    } else {
        Err("must be at least 1".into())
    }
}

fn one_of(allowed: &'static [&'static str], what: &'static str) -> impl Fn(&String) -> Result<(), String> {
    move |s: &String| if allowed.contains(&s.as_str()) { Ok(()) } else { Err(format!("unknown {what} `{s}` (use {})", allowed.join(", "))) }
}

impl Resolver<'_> {
    /// The override, else the task file's value, else `default`, checked by
    /// `ok` with the error pointing at where the value came from.
    fn pick<T: Clone>(&self, key: &str, flag: &Option<T>, file: Option<T>, default: Option<T>, ok: impl Fn(&T) -> Result<(), String>) -> Result<Option<T>, TuneError> {
        if let Some(v) = flag {
            ok(v).map_err(|m| TuneError::Usage(format!("{}{key}: {m}", self.o.prefix)))?;
            return Ok(Some(v.clone()));
        }
        if let (Some(v), Some(task)) = (&file, self.task) {
            ok(v).map_err(|m| task.error_at_key(key, &format!("tune.{key}"), m))?;
            return Ok(file);
        }
        Ok(default)
    }

    fn resolve(&self, tune: Option<&tunegate_core::task::TuneSpec>) -> Result<Settings, TuneError> {
        let o = self.o;
        let t = tune.cloned();
        let l = t.as_ref().map(|t| t.lora.clone()).unwrap_or_default();
        let get = |f: fn(&tunegate_core::task::TuneSpec) -> Option<f64>| t.as_ref().and_then(f);
        let recipe = Recipe::for_kind(self.kind);
        let base = self.pick("base", &o.base, t.as_ref().map(|t| t.base.clone()), Some(DEFAULTS.base.to_string()), |_| Ok(()))?.unwrap_or_default();
        let backend = self
            .pick("backend", &o.backend, t.as_ref().and_then(|t| t.backend.clone()), None, one_of(&["local", "remote"], "backend"))?
            .map(|b| if b == "local" { Backend::Local } else { Backend::Remote })
            .unwrap_or(if base.starts_with("local:") { Backend::Local } else { Backend::Remote });
        let targets = self
            .pick("lora.target_modules", &o.targets, l.target_modules.clone(), Some(recipe.targets.iter().map(|s| s.to_string()).collect()), |ts: &Vec<String>| {
                if ts.is_empty() {
                    return Err("name at least one module".into());
                }
                match ts.iter().find(|m| !TARGETS.iter().any(|(short, _)| short == m)) {
                    Some(m) => Err(format!("unknown module `{m}` (use {})", TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "))),
                    None => Ok(()),
                }
            })?
            .unwrap_or_default();
        let lora = LoraConfig {
            rank: self.pick("lora.rank", &o.rank, l.rank, Some(recipe.rank), at_least_one)?.unwrap_or(recipe.rank),
            alpha: self.pick("lora.alpha", &o.alpha, l.alpha, Some(recipe.alpha), positive)?.unwrap_or(recipe.alpha),
            dropout: self
                .pick("lora.dropout", &o.dropout, l.dropout, Some(DEFAULTS.dropout), |d: &f64| if (0.0..1.0).contains(d) { Ok(()) } else { Err(format!("{d} is outside 0..1")) })?
                .unwrap_or(DEFAULTS.dropout),
            targets,
        };
        let usize_of = |f: fn(&tunegate_core::task::TuneSpec) -> Option<usize>| t.as_ref().and_then(f);
        let s = Settings {
            backend,
            recipe: recipe.name,
            prompt: t.as_ref().map(|t| t.prompt.clone()),
            lora,
            epochs: self.pick("epochs", &o.epochs, usize_of(|t| t.epochs.map(|e| e as usize)), Some(recipe.epochs), at_least_one)?.unwrap_or(recipe.epochs),
            batch_size: self.pick("batch_size", &o.batch_size, usize_of(|t| t.batch_size), Some(DEFAULTS.batch_size), at_least_one)?.unwrap_or(DEFAULTS.batch_size),
            grad_accum: self.pick("grad_accum", &o.grad_accum, usize_of(|t| t.grad_accum), Some(DEFAULTS.grad_accum), at_least_one)?.unwrap_or(DEFAULTS.grad_accum),
            learning_rate: self.pick("learning_rate", &o.learning_rate, get(|t| t.learning_rate), Some(recipe.learning_rate), positive)?.unwrap_or(recipe.learning_rate),
            warmup_steps: self.pick("warmup_steps", &o.warmup_steps, usize_of(|t| t.warmup_steps.map(|w| w as usize)), None, |_| Ok(()))?,
            lr_schedule: self
                .pick("lr_schedule", &o.lr_schedule, t.as_ref().and_then(|t| t.lr_schedule.clone()), Some(DEFAULTS.lr_schedule.to_string()), one_of(&["cosine", "linear", "constant"], "schedule"))?
                .unwrap_or_default(),
            weight_decay: self.pick("weight_decay", &o.weight_decay, get(|t| t.weight_decay), Some(DEFAULTS.weight_decay), non_negative)?.unwrap_or(DEFAULTS.weight_decay),
            grad_clip: self.pick("grad_clip", &o.grad_clip, get(|t| t.grad_clip), Some(DEFAULTS.grad_clip), positive)?.unwrap_or(DEFAULTS.grad_clip),
            seed: self.pick("seed", &o.seed, t.as_ref().and_then(|t| t.seed), Some(DEFAULTS.seed), |_| Ok(()))?.unwrap_or(DEFAULTS.seed),
            max_seq_len: self
                .pick("max_seq_len", &o.max_seq_len, usize_of(|t| t.max_seq_len), Some(DEFAULTS.max_seq_len), |n: &usize| if *n >= 2 { Ok(()) } else { Err("must be at least 2".into()) })?
                .unwrap_or(DEFAULTS.max_seq_len),
            threads: self.pick("threads", &o.threads, usize_of(|t| t.threads), None, at_least_one)?,
            checkpoint_every: self
                .pick("checkpoint_every", &o.checkpoint_every, usize_of(|t| t.checkpoint_every.map(|c| c as usize)), Some(DEFAULTS.checkpoint_every), at_least_one)?
                .unwrap_or(DEFAULTS.checkpoint_every),
            early_stopping_patience: self.pick("early_stopping_patience", &o.early_stopping_patience, usize_of(|t| t.early_stopping_patience.map(|p| p as usize)), recipe.early_stopping_patience, at_least_one)?,
            select_by: match self.pick("select_by", &o.select_by, t.as_ref().and_then(|t| t.select_by.clone()), None, |s: &String| {
                if ["loss", "metric"].contains(&s.as_str()) {
                    Ok(())
                } else {
                    Err(format!("unknown value `{s}` (use `loss` (validation loss) or `metric` (validation pass rate))"))
                }
            })? {
                Some(s) if s == "loss" => SelectBy::Loss,
                _ => SelectBy::Metric,
            },
            gradient_checkpointing: self.pick("gradient_checkpointing", &o.gradient_checkpointing, t.as_ref().and_then(|t| t.gradient_checkpointing), Some(false), |_| Ok(()))?.unwrap_or(false),
            strict: self.pick("strict", &o.strict, t.as_ref().and_then(|t| t.strict), Some(false), |_| Ok(()))?.unwrap_or(false),
            val_metric: o.val_metric.unwrap_or(true),
            base_url: t.as_ref().and_then(|t| t.base_url.clone()),
            api_key_env: t.as_ref().and_then(|t| t.api_key_env.clone()),
            remote_hyperparameters: {
                let mut h = serde_json::Map::new();
                if let Some(t) = &t {
                    if let Some(e) = t.epochs {
                        h.insert("n_epochs".into(), e.into());
                    }
                    if let Some(b) = t.batch_size {
                        h.insert("batch_size".into(), b.into());
                    }
                    if let Some(lr) = t.learning_rate {
                        h.insert("learning_rate_multiplier".into(), lr.into());
                    }
                }
                h
            },
            base,
        };
        Ok(s)
    }
}
