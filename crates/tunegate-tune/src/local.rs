//! Local LoRA training on the embedded model. [`train`] is the one driver
//! of the model crate's training loop outside that crate: task runs
//! ([`tune_task`]), serve's jobs and the benchmark all call it with their
//! examples, their [`Settings`] and their [`TrainSink`].

use crate::events::{Finished, Plan, TrainEvent, TrainSink};
use crate::examples::{render, training_cases, Example};
use crate::jobs::{self, TunedAdapter};
use crate::metric::ValidationMetric;
use crate::settings::{SelectBy, Settings};
use crate::TuneError;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tunegate_core::{Case, InputError, Task};
use tunegate_model::lora::{LoraModel, TrainExample};
use tunegate_model::train::{load_checkpoint, train_resumable, AdamState, Checkpointing, Hooks, Progress, StepInfo, TrainOptions};
use tunegate_model::ModelError;
use tunegate_store::Store;

/// The model file a `local:` base names.
pub fn model_path(settings: &Settings) -> Result<PathBuf, TuneError> {
    let name = settings
        .local_model()
        .ok_or_else(|| TuneError::Usage(format!("the local backend tunes the embedded model; tune.base is `{}` (use local:gemma-3-270m or local:PATH.gguf)", settings.base)))?;
    tunegate_model::resolve_model(name).map_err(|e| TuneError::Usage(e.to_string()))
}

/// Sizes the thread pool candle's kernels run on (`tune.threads`). Both
/// RAYON_NUM_THREADS (candle splits work by it) and rayon's global pool are
/// fixed at first use; a note comes back when the pool had already started.
pub fn apply_threads(n: Option<usize>) -> Option<String> {
    let n = n?;
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .err()
        .map(|_| format!("the thread pool was already started; tune.threads = {n} applies to the next process"))
}

/// The base model with fresh adapters, as `settings` shape them.
pub fn load_model(model_path: &Path, settings: &Settings) -> Result<LoraModel, TuneError> {
    let cfg = tunegate_model::gemma3::Config::from_file(model_path)?;
    Ok(LoraModel::load(model_path, cfg, settings.lora.clone(), settings.seed)?)
}

/// One training run's inputs beyond the settings.
pub struct Run<'a> {
    pub job_id: &'a str,
    pub train: &'a [TrainExample],
    pub validation: &'a [TrainExample],
    /// Checkpoints every `settings.checkpoint_every` steps go here.
    pub checkpoint_dir: Option<&'a Path>,
    /// Continue from a checkpoint's optimizer state and position.
    pub resumed: Option<(AdamState, Progress)>,
    /// Set from another thread to stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Measures the task metric on the validation set after each epoch.
    pub metric: Option<&'a mut ValidationMetric>,
}

/// What a run did.
pub struct Trained {
    pub log: Vec<StepInfo>,
    pub progress: Progress,
    pub seconds: f64,
    pub tokens: usize,
}

impl Trained {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Trains `model`'s adapters: the only place the training options are
/// built from settings and the model crate's loop is called.
pub fn train(model: &mut LoraModel, settings: &Settings, run: Run, sink: &mut dyn TrainSink) -> Result<Trained, TuneError> {
    let steps = run.train.len().div_ceil(settings.batch_size * settings.grad_accum) * settings.epochs;
    let opts = TrainOptions {
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        learning_rate: settings.learning_rate,
        warmup_steps: settings.warmup_for(steps),
        schedule: settings.lr_schedule.clone(),
        weight_decay: settings.weight_decay,
        grad_clip: Some(settings.grad_clip),
        seed: settings.seed,
        max_steps: None,
        stop: run.stop.clone(),
        early_stopping_patience: settings.early_stopping_patience,
        grad_accum: settings.grad_accum,
        select_by_metric: settings.select_by == SelectBy::Metric,
        gradient_checkpointing: settings.gradient_checkpointing,
    };
    let done = run.resumed.as_ref().map(|r| r.1.step).unwrap_or(0);
    sink.event(&TrainEvent::Plan(Plan {
        job_id: run.job_id,
        settings,
        train_examples: run.train.len(),
        validation_examples: run.validation.len(),
        total_steps: steps,
        done_steps: done,
        learning_rate: opts.learning_rate,
        warmup_steps: opts.warmup_steps,
    }));
    if let Some((_, p)) = &run.resumed {
        sink.event(&TrainEvent::Resumed { job_id: run.job_id, step: p.step, epoch: p.epoch });
    }
    let t0 = Instant::now();
    let mut tokens = 0usize;
    // Steps and epochs both report to the one sink.
    let sink = std::cell::RefCell::new(sink);
    let mut on_step = |s: &StepInfo| {
        tokens += s.tokens;
        let tps = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        sink.borrow_mut().event(&TrainEvent::Step { info: s, tokens_per_second: tps });
    };
    let mut on_epoch = |e: &tunegate_model::train::EpochInfo| sink.borrow_mut().event(&TrainEvent::Epoch(e));
    let mut metric = run.metric;
    let has_metric = metric.is_some();
    let mut measure = |m: &LoraModel| -> Result<f64, ModelError> {
        match metric.as_mut() {
            Some(v) => v.measure(m),
            None => Err(ModelError::Input("no validation metric".into())),
        }
    };
    let (log, progress) = train_resumable(
        model,
        run.train,
        run.validation,
        &opts,
        run.checkpoint_dir.map(|dir| Checkpointing { dir, every: settings.checkpoint_every }),
        run.resumed,
        Hooks { on_step: &mut on_step, on_epoch: &mut on_epoch, metric: if has_metric { Some(&mut measure) } else { None } },
    )?;
    Ok(Trained { log, progress, seconds: t0.elapsed().as_secs_f64(), tokens })
}

/// A task's training data, encoded once: a search trains on it several
/// times. `data.examples` rendered through `tune.prompt`, validated on
/// `data.validation` or 10% of the examples held back by the seed (never the
/// eval set, which must stay untouched for the before/after comparison).
pub struct Prepared {
    pub model_path: PathBuf,
    pub train: Vec<TrainExample>,
    pub validation: Vec<TrainExample>,
    /// Each validation example's prompt text and case, for the metric.
    metric_rows: Vec<(String, Case)>,
}

impl Prepared {
    pub fn new(task: &Task, settings: &Settings, sink: &mut dyn TrainSink) -> Result<Prepared, TuneError> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let model_path = model_path(settings)?;
        let examples_path = examples_path(task)?;
        let cases = training_cases(task, &examples_path, settings.strict, &mut |n| sink.event(&TrainEvent::Note(n)))?;
        if let Some(note) = apply_threads(settings.threads) {
            sink.event(&TrainEvent::Note(note));
        }
        let bad_model = |e: String| TuneError::Io(format!("{}: {e}", model_path.display()));
        let gguf = tunegate_model::GgufFile::open(&model_path).map_err(|e| bad_model(e.to_string()))?;
        let tok = tunegate_model::Tokenizer::from_gguf(&gguf).map_err(|e| bad_model(e.to_string()))?;
        let mut skipped = 0;
        // Each example with its prompt text and case: the validation metric
        // generates from the one and scores against the other.
        let mut encode = |rows: Vec<(Example, Case)>| -> Vec<(TrainExample, String, Case)> {
            rows.into_iter()
                .filter_map(|(e, case)| {
                    let ex = e.encode(&tok);
                    if ex.tokens.len() > settings.max_seq_len {
                        skipped += 1;
                        return None;
                    }
                    Some((ex, e.prompt, case))
                })
                .collect()
        };
        let mut train_rows = encode(render(task, &examples_path, cases)?);
        let validation_rows = match task.file.data.validation.as_ref().map(|p| task.resolve(p)) {
            Some(p) => encode(render(task, &p, tunegate_core::load_cases(&p)?)?),
            None => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(settings.seed);
                train_rows.shuffle(&mut rng);
                let n_val = (train_rows.len() / 10).max(1).min(train_rows.len().saturating_sub(1));
                train_rows.split_off(train_rows.len() - n_val)
            }
        };
        if train_rows.is_empty() {
            return Err(TuneError::Usage("no training examples left to train on".into()));
        }
        if skipped > 0 {
            sink.event(&TrainEvent::Note(format!("skipped {skipped} examples longer than max_seq_len {}", settings.max_seq_len)));
        }
        Ok(Prepared {
            model_path,
            train: train_rows.into_iter().map(|r| r.0).collect(),
            validation: validation_rows.iter().map(|r| r.0.clone()).collect(),
            metric_rows: validation_rows.into_iter().map(|r| (r.1, r.2)).collect(),
        })
    }
}

/// What one training run into a directory gave.
pub struct Outcome {
    pub trained: Trained,
    pub lora: tunegate_model::lora::LoraConfig,
}

impl Outcome {
    /// The kept epoch's validation pass rate and loss.
    pub fn best(&self) -> (Option<f64>, Option<f64>) {
        let p = &self.trained.progress;
        let i = p.best_epoch.map(|e| e - 1).or(p.val_losses.len().checked_sub(1));
        (i.and_then(|i| p.val_metrics.get(i).copied()), i.and_then(|i| p.val_losses.get(i).copied()))
    }

    /// What the job record keeps of a run.
    pub fn meta(&self, s: &Settings, dir: &Path) -> serde_json::Value {
        let (log, progress) = (&self.trained.log, &self.trained.progress);
        json!({"steps": progress.step, "final_loss": log.iter().rev().map(|s| s.loss).find(|l| l.is_finite()), "validation_losses": progress.val_losses, "validation_pass_rates": progress.val_metrics, "select_by": s.select_by, "best_epoch": progress.best_epoch, "grad_accum": s.grad_accum, "train_seconds": self.trained.seconds, "tokens_per_second": self.trained.tokens_per_second(),
               "recipe": s.recipe, "epochs": s.epochs, "early_stopping_patience": s.early_stopping_patience, "batch_size": s.batch_size, "learning_rate": s.learning_rate, "seed": s.seed, "lora": self.lora, "adapter": dir})
    }
}

/// Trains fresh adapters on `data` and writes them (PEFT layout) to `dir`,
/// checkpointing to `dir/checkpoint`; `resume` continues from there.
pub fn train_into(task: &Task, settings: &Settings, data: &Prepared, job_id: &str, dir: &Path, resume: bool, sink: &mut dyn TrainSink) -> Result<Outcome, TuneError> {
    std::fs::create_dir_all(dir).map_err(|e| TuneError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let mut model = load_model(&data.model_path, settings)?;
    let ck_dir = dir.join("checkpoint");
    let resumed = if resume { Some(load_checkpoint(&model, &ck_dir).map_err(|e| TuneError::Usage(format!("job {job_id}: no usable checkpoint ({e})")))?) } else { None };
    let mut metric = ValidationMetric::new(task, &data.model_path, &data.metric_rows, dir.join("validation-adapter"));
    if settings.val_metric {
        if let Some(why) = &metric.unavailable {
            sink.event(&TrainEvent::Note(format!("no validation pass rate per epoch ({why}); the validation loss is measured")));
        }
    }
    let use_metric = settings.val_metric && metric.unavailable.is_none();
    let trained = train(
        &mut model,
        settings,
        Run { job_id, train: &data.train, validation: &data.validation, checkpoint_dir: Some(&ck_dir), resumed, stop: None, metric: if use_metric { Some(&mut metric) } else { None } },
        sink,
    )?;
    model.save_peft(dir, tunegate_core::data::export::hf_model_for(&settings.base).unwrap_or("google/gemma-3-270m"))?;
    Ok(Outcome { trained, lora: model.lora_cfg.clone() })
}

/// Trains a LoRA adapter for a task (see [`Prepared`] for the data). The
/// job is recorded before training starts; `resume` (a job id or `latest`)
/// continues one from its checkpoint, with the same result as an
/// uninterrupted run.
pub fn tune_task(task: &Task, settings: &Settings, store_path: &Path, resume: Option<&str>, sink: &mut dyn TrainSink) -> Result<TunedAdapter, TuneError> {
    let data = Prepared::new(task, settings, sink)?;
    let (store, job_id, resumed) = open_job(task, settings, store_path, resume, data_identity(&data.train, settings, None))?;
    let dir = jobs::job_dir(store_path, &job_id);
    let out = train_into(task, settings, &data, &job_id, &dir, resumed, sink)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let adapter = TunedAdapter { job_id: job_id.clone(), base: settings.base.clone(), dir: dir.clone() };
    jobs::finish_local(&store, &adapter, &out.meta(settings, &dir))?;
    let (log, progress) = (&out.trained.log, &out.trained.progress);
    sink.event(&TrainEvent::Finished(Finished {
        job_id: &job_id,
        steps: progress.step,
        seconds: out.trained.seconds,
        tokens_per_second: out.trained.tokens_per_second(),
        first_loss: log.first().map(|s| s.loss),
        final_loss: log.iter().rev().map(|s| s.loss).find(|l| l.is_finite()),
        validation_losses: &progress.val_losses,
        validation_pass_rates: &progress.val_metrics,
        best_epoch: progress.best_epoch,
        adapter: &dir,
        stopped: false,
    }));
    Ok(adapter)
}

/// The job a run trains for: a new one recorded before training starts, or
/// the unfinished one `resume` names, which must have been started on the
/// same data and settings (`identity`). Returns whether it is resumed.
pub(crate) fn open_job(task: &Task, settings: &Settings, store_path: &Path, resume: Option<&str>, identity: String) -> Result<(Store, String, bool), TuneError> {
    let store = Store::open(store_path)?;
    match resume {
        None => {
            let id = format!("lora-{}", Store::new_run_id());
            jobs::start_local(&store, &id, &task.file.task.name, &settings.base, &identity)?;
            Ok((store, id, false))
        }
        Some(sel) => {
            let job = jobs::resumable(&store, sel)?;
            if job.data_hash != identity {
                return Err(TuneError::Usage(format!("job {} was trained on other data or settings (or with/without --search); it cannot be resumed (start a new run)", job.id)));
            }
            Ok((store, job.id, true))
        }
    }
}

/// data.examples, which every fine-tuning backend trains on.
pub fn examples_path(task: &Task) -> Result<PathBuf, TuneError> {
    Ok(task.examples_path().ok_or_else(|| InputError::new(&task.path, "fine-tuning trains on data.examples, which is not set").field("data.examples"))?)
}

/// What a resumed run must share with the one it continues: the tokens
/// trained on and every setting that changes the result (and, for a search,
/// its budget).
pub(crate) fn data_identity(train_set: &[TrainExample], s: &Settings, search: Option<usize>) -> String {
    let mut identity = json!([train_set.iter().map(|e| &e.tokens).collect::<Vec<_>>(), &s.lora, s.epochs, s.batch_size, s.learning_rate, s.seed]);
    let by_metric = s.select_by == SelectBy::Metric;
    if let Some(a) = identity.as_array_mut() {
        if s.grad_accum > 1 || by_metric {
            a.push(json!({"grad_accum": s.grad_accum, "select_by_metric": by_metric}));
        }
        if let Some(p) = s.early_stopping_patience {
            a.push(json!({"early_stopping_patience": p}));
        }
        if let Some(b) = search {
            a.push(json!({"search": b}));
        }
    }
    tunegate_core::task::hash_json(&identity)
}
