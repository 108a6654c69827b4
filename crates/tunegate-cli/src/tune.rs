//! `tunegate tune`: fine-tuning. The remote backend drives any
//! OpenAI-compatible fine-tuning API; the job is recorded in the store the
//! moment it exists, so a crash or a lost connection never loses it
//! (`--attach JOB` resumes watching). The local backend trains LoRA adapters
//! for the embedded model on the CPU.

use crate::commands::usage;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tunegate_core::data::export::{encode, render_examples, validate, ExportFormat};
use tunegate_core::Task;
use tunegate_providers::finetune::{FineTuneClient, Job};
use tunegate_store::{store_path_for, Store, TuneJob};

#[derive(Args)]
pub struct TuneArgs {
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// `remote` (an OpenAI-compatible fine-tuning API at tune.base_url) or
    /// `local` (LoRA on the embedded model). Default: tune.backend, else
    /// local for `local:` bases and remote otherwise.
    #[arg(long, value_parser = ["local", "remote"])]
    pub backend: Option<String>,
    /// Resume watching a recorded job (after a crash, Ctrl-C or lost connection).
    #[arg(long, value_name = "JOB")]
    pub attach: Option<String>,
    /// Continue an interrupted local training run from its last checkpoint
    /// (the latest unfinished one, or JOB); the result is the same as an
    /// uninterrupted run's.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "JOB")]
    pub resume: Option<String>,
    /// Threads for local training (default: tune.threads, else all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Local training: skip the validation pass rate measured after each
    /// epoch (greedy generation on the validation cases, scored by the
    /// task's assertions); the validation loss is still measured.
    #[arg(long)]
    pub no_val_metric: bool,
    /// Cancel a job.
    #[arg(long, value_name = "JOB")]
    pub cancel: Option<String>,
    /// List a job's checkpoints.
    #[arg(long, value_name = "JOB")]
    pub checkpoints: Option<String>,
    /// List the recorded fine-tuning jobs.
    #[arg(long)]
    pub list: bool,
    /// Seconds between status polls.
    #[arg(long, default_value_t = 10.0)]
    pub poll_interval: f64,
    /// Consecutive failed polls before giving up watching (the job is kept).
    #[arg(long, default_value_t = 8)]
    pub max_poll_failures: u32,
}

fn client_for(base_url: &str, api_key_env: Option<&str>) -> Result<FineTuneClient> {
    let key = match api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            usage(format!(
                "the API key variable {var} (tune.api_key_env) is not set"
            ))
        })?),
        None => std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
    };
    Ok(FineTuneClient::new(base_url, key, Duration::from_secs(60)))
}

/// The model name an OpenAI-compatible API expects for a task's `tune.base`.
fn remote_model(base: &str) -> &str {
    for p in ["openai-compatible:", "openai:", "remote:"] {
        if let Some(m) = base.strip_prefix(p) {
            return m;
        }
    }
    base
}

pub fn run(a: TuneArgs) -> Result<ExitCode> {
    let path = crate::task_path(&a.config);
    let store_path = store_path_for(&path);
    if a.list {
        let store = Store::open(&store_path)?;
        let jobs = store.list_tune_jobs()?;
        if jobs.is_empty() {
            println!("no fine-tuning jobs recorded");
        }
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.clone(),
                    j.backend.clone(),
                    j.status.clone(),
                    j.base_model.clone(),
                    j.fine_tuned_model.clone().unwrap_or_default(),
                    j.created_at.chars().take(19).collect(),
                ]
            })
            .collect();
        print!(
            "{}",
            crate::output::table(
                &[
                    "job",
                    "backend",
                    "status",
                    "base",
                    "tuned model",
                    "created (UTC)"
                ],
                &rows
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rt = crate::commands::runtime()?;
    for (id, what) in [
        (&a.attach, "attach"),
        (&a.cancel, "cancel"),
        (&a.checkpoints, "checkpoints"),
    ] {
        let Some(id) = id else { continue };
        let store = Store::open(&store_path)?;
        let job = store.get_tune_job(id)?.ok_or_else(|| {
            usage(format!(
                "no fine-tuning job `{id}` in {} (see `tunegate tune --list`)",
                store_path.display()
            ))
        })?;
        let base = job
            .base_url
            .clone()
            .ok_or_else(|| usage(format!("job {id} has no endpoint recorded")))?;
        let client = client_for(&base, job.api_key_env.as_deref())?;
        return match what {
            "attach" => rt.block_on(watch(&client, &store, &job.id, &a, &path)),
            "cancel" => {
                let j = rt.block_on(client.cancel(&job.id))?;
                store.update_tune_job(&job.id, &j.status, None)?;
                println!("job {}: {}", j.id, j.status);
                Ok(ExitCode::SUCCESS)
            }
            _ => {
                for c in rt.block_on(client.checkpoints(&job.id))? {
                    println!("{}", serde_json::to_string(&c)?);
                }
                Ok(ExitCode::SUCCESS)
            }
        };
    }
    let task = Task::load(&path)?;
    let tune = task.file.tune.clone().ok_or_else(|| {
        tunegate_core::InputError::new(&task.path, "no `tune:` section")
            .field("tune")
            .hint("add `tune: { base: ..., prompt: PROMPT_ID }`")
    })?;
    let backend = a
        .backend
        .clone()
        .or(tune.backend.clone())
        .unwrap_or_else(|| {
            if tune.base.starts_with("local:") {
                "local".into()
            } else {
                "remote".into()
            }
        });
    if backend == "local" || a.resume.is_some() {
        let (job_id, _) = local_tune_resumable(
            &task,
            &tune,
            &store_path,
            &LocalOpts {
                show: true,
                resume: a.resume.as_deref(),
                threads: a.threads.map(usize::from),
                no_metric: a.no_val_metric,
            },
        )?;
        println!("evaluate it: add `- id: tuned:{job_id}` under providers (with the prompt `{}`), then `tunegate eval`", tune.prompt);
        return Ok(ExitCode::SUCCESS);
    }
    let base_url = tune.base_url.clone().ok_or_else(|| tunegate_core::InputError::new(&task.path, "the remote backend needs tune.base_url (an OpenAI-compatible API, e.g. https://host/v1)").field("tune.base_url"))?;
    // Leakage always blocks tuning: the after-measurement would be memory.
    tunegate_core::data::refuse_on_leakage(&task)
        .map_err(|e| usage(format!("{e}; see `tunegate data check`")))?;
    let examples_path = examples_path(&task)?;
    let render = |p: &std::path::Path| -> Result<String> {
        let cases = tunegate_core::load_cases(p)?;
        let ex = render_examples(&task, &cases, p)?;
        let mut text = String::new();
        for e in &ex {
            text.push_str(&encode(ExportFormat::OpenaiChat, &e.messages).to_string());
            text.push('\n');
        }
        let v = validate(
            ExportFormat::OpenaiChat,
            &text,
            &tunegate_core::data::CharEstimate,
            65_536,
        );
        if !v.ok() {
            let p0 = &v.problems[0];
            bail!(usage(format!("{}: the training data fails the check `{}` on example {}: {} ({} problems; see `tunegate data export`)", p.display(), p0.check, p0.line, p0.message, v.problems.len())));
        }
        Ok(text)
    };
    let train = render(&examples_path)?;
    let valid = match task.file.data.validation.as_ref().map(|p| task.resolve(p)) {
        Some(p) => Some(render(&p)?),
        None => None,
    };
    let data_hash = tunegate_core::task::hash_json(&json!([train, valid]));
    let client = client_for(&base_url, tune.api_key_env.as_deref())?;
    let model = remote_model(&tune.base).to_string();
    let mut hyper = serde_json::Map::new();
    if let Some(e) = tune.epochs {
        hyper.insert("n_epochs".into(), json!(e));
    }
    if let Some(b) = tune.batch_size {
        hyper.insert("batch_size".into(), json!(b));
    }
    if let Some(lr) = tune.learning_rate {
        hyper.insert("learning_rate_multiplier".into(), json!(lr));
    }
    let store = Store::open(&store_path)?;
    let job = rt.block_on(async {
        eprintln!(
            "uploading {} training examples to {base_url}",
            train.lines().count()
        );
        let tf = client
            .upload_file("train.jsonl", train.into_bytes())
            .await?;
        let vf = match valid {
            Some(v) => Some(
                client
                    .upload_file("validation.jsonl", v.into_bytes())
                    .await?,
            ),
            None => None,
        };
        let suffix = task
            .file
            .task
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(18)
            .collect::<String>();
        Ok::<Job, anyhow::Error>(
            client
                .create_job(
                    &model,
                    &tf,
                    vf.as_deref(),
                    serde_json::Value::Object(hyper),
                    Some(&suffix),
                )
                .await?,
        )
    })?;
    // Recorded before anything else can fail.
    let now = tunegate_store::now();
    store.insert_tune_job(&TuneJob {
        id: job.id.clone(),
        backend: "remote".into(),
        task_name: task.file.task.name.clone(),
        base_url: Some(base_url.clone()),
        api_key_env: tune.api_key_env.clone(),
        base_model: model,
        status: job.status.clone(),
        fine_tuned_model: job.fine_tuned_model.clone(),
        data_hash,
        created_at: now.clone(),
        updated_at: now,
        meta: json!({"task_path": task.path}),
    })?;
    eprintln!(
        "created job {} ({}); recorded in {}",
        job.id,
        job.status,
        store_path.display()
    );
    rt.block_on(watch(&client, &store, &job.id, &a, &path))
}

/// data.examples, which every fine-tuning backend trains on.
fn examples_path(task: &Task) -> Result<PathBuf> {
    Ok(task.examples_path().ok_or_else(|| tunegate_core::InputError::new(&task.path, "fine-tuning trains on data.examples, which is not set").field("data.examples"))?)
}

/// Polls a job until it ends, printing status changes and new events. Lost
/// contact is retried; after `max_poll_failures` in a row it stops watching
/// (the job goes on remotely and stays recorded).
async fn watch(
    client: &FineTuneClient,
    store: &Store,
    id: &str,
    a: &TuneArgs,
    cfg: &std::path::Path,
) -> Result<ExitCode> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_status = String::new();
    let mut failures = 0u32;
    let attach_hint = format!("tunegate tune -c {} --attach {id}", cfg.display());
    let interval = Duration::from_secs_f64(a.poll_interval.max(0.01));
    loop {
        match client.get_job(id).await {
            Ok(job) => {
                failures = 0;
                if job.status != last_status {
                    eprintln!("job {id}: {}", job.status);
                    store.update_tune_job(id, &job.status, job.fine_tuned_model.as_deref())?;
                    last_status = job.status.clone();
                }
                if let Ok(events) = client.events(id).await {
                    for e in events {
                        if seen.insert(e.id.clone()) {
                            eprintln!("  [{}] {}", e.level, e.message);
                        }
                    }
                }
                if job.is_terminal() {
                    return Ok(match job.status.as_str() {
                        "succeeded" => {
                            let m = job.fine_tuned_model.clone().unwrap_or_default();
                            println!("fine-tuned model: {m}");
                            println!("evaluate it: add `- id: tuned:{id}` under providers (or tuned:{m}), then `tunegate eval`");
                            ExitCode::SUCCESS
                        }
                        "failed" => {
                            eprintln!(
                                "job {id} failed: {}",
                                job.error.unwrap_or_else(|| "no reason given".into())
                            );
                            ExitCode::from(1)
                        }
                        _ => {
                            eprintln!("job {id} was cancelled");
                            ExitCode::from(1)
                        }
                    });
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!(
                    "could not poll job {id} ({failures}/{}): {e}",
                    a.max_poll_failures
                );
                if failures >= a.max_poll_failures {
                    bail!("lost contact with the fine-tuning API; job {id} is recorded and may still be running: resume with `{attach_hint}`");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval * if failures > 0 { 2u32.pow(failures.min(5)) } else { 1 }) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped watching; job {id} goes on remotely: `{attach_hint}`");
                return Ok(ExitCode::from(1));
            }
        }
    }
}

/// Trains a LoRA adapter for the embedded model on data.examples rendered
/// through `tune.prompt`; returns the job id and the adapter directory.
pub fn local_tune(
    task: &Task,
    tune: &tunegate_core::task::TuneSpec,
    store_path: &std::path::Path,
    show: bool,
) -> Result<(String, PathBuf)> {
    local_tune_resumable(
        task,
        tune,
        store_path,
        &LocalOpts {
            show,
            ..Default::default()
        },
    )
}

/// How a local run is driven (the hyper-parameters live in `tune:`).
#[derive(Default)]
pub struct LocalOpts<'a> {
    /// Progress and summaries on stderr.
    pub show: bool,
    /// Continue this job (or `latest`) from its checkpoint.
    pub resume: Option<&'a str>,
    /// Overrides tune.threads.
    pub threads: Option<usize>,
    /// Skip the per-epoch validation pass rate (the loss is still measured).
    pub no_metric: bool,
}

/// [`local_tune`], continuing the job `resume` (or the latest unfinished
/// local job for `latest`) from its checkpoint.
pub fn local_tune_resumable(
    task: &Task,
    tune: &tunegate_core::task::TuneSpec,
    store_path: &std::path::Path,
    lo: &LocalOpts,
) -> Result<(String, PathBuf)> {
    let (show, resume, threads, metric_wanted) = (lo.show, lo.resume, lo.threads, !lo.no_metric);
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use tunegate_model::lora::{
        load_checkpoint, train_resumable, Checkpointing, Hooks, LoraConfig, LoraModel,
        TrainExample, TrainOptions,
    };
    tunegate_core::data::refuse_on_leakage(task)
        .map_err(|e| usage(format!("{e}; see `tunegate data check`")))?;
    let model_name = tune.base.strip_prefix("local:").ok_or_else(|| usage(format!("the local backend tunes the embedded model; tune.base is `{}` (use local:gemma-3-270m or local:PATH.gguf)", tune.base)))?;
    let model_path = tunegate_model::resolve_model(model_name).map_err(|e| usage(e.to_string()))?;
    let examples_path = examples_path(task)?;
    if let Some(n) = threads.or(tune.threads) {
        // candle sizes its work split by RAYON_NUM_THREADS and runs it on
        // rayon's global pool; both must agree, and both are fixed at first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        if rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .is_err()
            && show
        {
            eprintln!("note: the thread pool was already started; tune.threads = {n} applies to the next process");
        }
    }
    let g = tunegate_model::GgufFile::open(&model_path)?;
    let tok = tunegate_model::Tokenizer::from_gguf(&g)?;
    let max_len = tune.max_seq_len.unwrap_or(512);
    let mut skipped = 0;
    // Each example with the prompt text and the case it came from: the
    // validation metric generates from the one and scores against the other.
    let mut encode_file =
        |p: &std::path::Path| -> Result<Vec<(TrainExample, String, tunegate_core::Case)>> {
            let cases = tunegate_core::load_cases(p)?;
            let mut out = vec![];
            for (e, case) in render_examples(task, &cases, p)?.into_iter().zip(cases) {
                let prompt: Vec<tunegate_core::Message> = e
                    .messages
                    .iter()
                    .filter(|m| m.role != "assistant")
                    .cloned()
                    .collect();
                let prompt = tunegate_core::template::flatten_messages(&prompt);
                let answer = e
                    .messages
                    .iter()
                    .find(|m| m.role == "assistant")
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                let ex = TrainExample::from_text(&tok, &prompt, &answer);
                if ex.tokens.len() > max_len {
                    skipped += 1;
                    continue;
                }
                out.push((ex, prompt, case));
            }
            Ok(out)
        };
    let mut train_rows = encode_file(&examples_path)?;
    let seed = tune.seed.unwrap_or(0);
    // Validation: data.validation, else 10% held back from the examples
    // (never the eval set, which must stay untouched for before/after).
    let validation_rows = match task.file.data.validation.as_ref().map(|p| task.resolve(p)) {
        Some(p) => encode_file(&p)?,
        None => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            train_rows.shuffle(&mut rng);
            let n_val = (train_rows.len() / 10)
                .max(1)
                .min(train_rows.len().saturating_sub(1));
            train_rows.split_off(train_rows.len() - n_val)
        }
    };
    let train_set: Vec<TrainExample> = train_rows.into_iter().map(|r| r.0).collect();
    let validation: Vec<TrainExample> = validation_rows.iter().map(|r| r.0.clone()).collect();
    if train_set.is_empty() {
        bail!(usage("no training examples left to train on"));
    }
    if skipped > 0 && show {
        eprintln!("skipped {skipped} examples longer than max_seq_len {max_len}");
    }
    let lora = LoraConfig {
        rank: tune.lora.rank.unwrap_or(8),
        alpha: tune.lora.alpha.unwrap_or(16.0),
        dropout: tune.lora.dropout.unwrap_or(0.0),
        targets: tune
            .lora
            .target_modules
            .clone()
            .unwrap_or_else(|| vec!["q".into(), "v".into()]),
    };
    let batch = tune.batch_size.unwrap_or(8);
    let grad_accum = tune.grad_accum.unwrap_or(1).max(1);
    let epochs = tune.epochs.unwrap_or(3) as usize;
    let steps = train_set.len().div_ceil(batch * grad_accum) * epochs;
    let select_by_metric = tune.select_by.as_deref() == Some("metric");
    let opts = TrainOptions {
        epochs,
        batch_size: batch,
        learning_rate: tune.learning_rate.unwrap_or(1e-3),
        warmup_steps: tune
            .warmup_steps
            .map(|w| w as usize)
            .unwrap_or((steps / 20).max(1)),
        schedule: tune.lr_schedule.clone().unwrap_or_else(|| "cosine".into()),
        weight_decay: tune.weight_decay.unwrap_or(0.0),
        grad_clip: Some(tune.grad_clip.unwrap_or(1.0)),
        seed,
        max_steps: None,
        stop: None,
        early_stopping_patience: tune.early_stopping_patience.map(|p| p as usize),
        grad_accum,
        select_by_metric,
        gradient_checkpointing: tune.gradient_checkpointing.unwrap_or(false),
    };
    if show {
        eprintln!(
            "LoRA r={} alpha={} on {:?}: {} training / {} validation examples, {} epochs, batch {}{}, lr {} ({}), seed {}",
            lora.rank,
            lora.alpha,
            lora.targets,
            train_set.len(),
            validation.len(),
            epochs,
            batch,
            if grad_accum > 1 { format!(" x {grad_accum} accumulated") } else { String::new() },
            opts.learning_rate,
            opts.schedule,
            seed
        );
    }
    let mut identity = json!([
        train_set.iter().map(|e| &e.tokens).collect::<Vec<_>>(),
        &lora,
        epochs,
        batch,
        opts.learning_rate,
        seed
    ]);
    if grad_accum > 1 || select_by_metric {
        identity
            .as_array_mut()
            .unwrap()
            .push(json!({"grad_accum": grad_accum, "select_by_metric": select_by_metric}));
    }
    let data_hash = tunegate_core::task::hash_json(&identity);
    let store = Store::open(store_path)?;
    let cfg = tunegate_model::gemma3::Config::from_file(&model_path)?;
    let mut model = LoraModel::load(&model_path, cfg, lora, seed)?;
    // The job: a new one recorded before training starts, or the one resumed.
    let (job_id, resumed) = match resume {
        None => {
            let id = format!("lora-{}", Store::new_run_id());
            let now = tunegate_store::now();
            store.insert_tune_job(&TuneJob {
                id: id.clone(),
                backend: "local".into(),
                task_name: task.file.task.name.clone(),
                base_url: None,
                api_key_env: None,
                base_model: tune.base.clone(),
                status: "running".into(),
                fine_tuned_model: None,
                data_hash: data_hash.clone(),
                created_at: now.clone(),
                updated_at: now,
                meta: json!({}),
            })?;
            (id, None)
        }
        Some(sel) => {
            let job = if sel == "latest" {
                store
                    .list_tune_jobs()?
                    .into_iter()
                    .find(|j| j.backend == "local" && j.status == "running")
            } else {
                store.get_tune_job(sel)?
            }
            .ok_or_else(|| {
                usage(format!(
                    "no unfinished local tuning job `{sel}` to resume (see `tunegate tune --list`)"
                ))
            })?;
            if job.data_hash != data_hash {
                bail!(usage(format!("job {} was trained on other data or settings; it cannot be resumed (start a new run)", job.id)));
            }
            let ck = store_path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("adapters")
                .join(&job.id)
                .join("checkpoint");
            let state = load_checkpoint(&model, &ck)
                .map_err(|e| usage(format!("job {}: no usable checkpoint ({e})", job.id)))?;
            if show {
                eprintln!(
                    "resuming job {} at step {} (epoch {})",
                    job.id,
                    state.1.step,
                    state.1.epoch + 1
                );
            }
            (job.id, Some(state))
        }
    };
    let job_dir = store_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("adapters")
        .join(&job_id);
    let ck_dir = job_dir.join("checkpoint");
    std::fs::create_dir_all(&job_dir)
        .with_context(|| format!("cannot create {}", job_dir.display()))?;
    let pb = if show {
        indicatif::ProgressBar::new(steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "training [{bar:30}] step {pos}/{len} · {msg} · ETA {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let mut tokens = 0usize;
    let mut val_losses = vec![];
    let done_steps = resumed.as_ref().map(|r| r.1.step).unwrap_or(0);
    pb.set_position(done_steps as u64);
    let every = tune.checkpoint_every.map(|c| c as usize).unwrap_or(10);
    let mut metric = ValidationMetric::new(
        task,
        &model_path,
        &validation_rows,
        job_dir.join("validation-adapter"),
    )?;
    if show && metric_wanted {
        if let Some(why) = &metric.unavailable {
            eprintln!(
                "note: no validation pass rate per epoch ({why}); the validation loss is measured"
            );
        }
    }
    let use_metric = metric_wanted && metric.unavailable.is_none();
    let mut measure = |m: &LoraModel| metric.measure(m);
    let (log, progress) = train_resumable(
        &mut model,
        &train_set,
        &validation,
        &opts,
        Some(Checkpointing {
            dir: &ck_dir,
            every,
        }),
        resumed,
        Hooks {
            on_step: &mut |s| {
                tokens += s.tokens;
                pb.set_message(format!(
                    "loss {:.3} · {:.0} tok/s",
                    s.loss,
                    tokens as f64 / t0.elapsed().as_secs_f64()
                ));
                pb.inc(1);
            },
            on_epoch: &mut |e| {
                if let Some(v) = e.val_loss {
                    let m = e
                        .val_metric
                        .map(|m| format!(", pass rate {:.1}%", 100.0 * m))
                        .unwrap_or_default();
                    let best = if e.best_epoch == Some(e.epoch + 1) {
                        " (best so far)"
                    } else {
                        ""
                    };
                    let line = format!("epoch {}: validation loss {v:.4}{m}{best}", e.epoch + 1);
                    // A hidden bar (stderr not a terminal: CI, logs) drops println.
                    if pb.is_hidden() {
                        if show {
                            eprintln!("{line}");
                        }
                    } else {
                        pb.println(line);
                    }
                    val_losses.push(v);
                }
            },
            metric: if use_metric { Some(&mut measure) } else { None },
        },
    )?;
    pb.finish_and_clear();
    let val_losses = if progress.val_losses.is_empty() {
        val_losses
    } else {
        progress.val_losses.clone()
    };
    let dir = job_dir.clone();
    model.save_peft(
        &dir,
        tunegate_core::data::export::hf_model_for(&tune.base).unwrap_or("google/gemma-3-270m"),
    )?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let train_s = t0.elapsed().as_secs_f64();
    let final_loss = log.iter().rev().map(|s| s.loss).find(|l| l.is_finite());
    store.update_tune_job(
        &job_id,
        "succeeded",
        Some(&format!("{}+adapter:{}", tune.base, dir.display())),
    )?;
    store.set_tune_job_meta(
        &job_id,
        &json!({"steps": progress.step, "final_loss": final_loss, "validation_losses": val_losses, "validation_pass_rates": progress.val_metrics, "select_by": if select_by_metric { "metric" } else { "loss" }, "best_epoch": progress.best_epoch, "grad_accum": grad_accum, "train_seconds": train_s, "tokens_per_second": tokens as f64 / train_s,
                "epochs": epochs, "batch_size": batch, "learning_rate": opts.learning_rate, "seed": seed, "lora": model.lora_cfg, "adapter": dir}),
    )?;
    if show {
        eprintln!(
            "trained {} steps in {:.0}s ({:.0} tok/s); loss {:.3} -> {:.3}; validation loss {}{}; kept epoch {}; adapter: {}",
            progress.step,
            train_s,
            tokens as f64 / train_s,
            log.first().map(|s| s.loss).unwrap_or(0.0),
            final_loss.unwrap_or(0.0),
            val_losses.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" -> "),
            if progress.val_metrics.is_empty() { String::new() } else { format!(", pass rate {}", progress.val_metrics.iter().map(|v| format!("{:.1}%", 100.0 * v)).collect::<Vec<_>>().join(" -> ")) },
            progress.best_epoch.map(|e| e.to_string()).unwrap_or_else(|| "last".into()),
            dir.display()
        );
        eprintln!("job {job_id} recorded in {}", store_path.display());
    }
    Ok((job_id, dir))
}

/// Resolves `tuned:JOB` (or `tuned:MODEL`) providers from the store into
/// OpenAI-compatible providers at the endpoint that trained them.
pub fn resolve_tuned(
    spec: &tunegate_core::ProviderSpec,
    store_path: &std::path::Path,
) -> Result<tunegate_core::ProviderSpec> {
    let Some(name) = spec.id.strip_prefix("tuned:") else {
        return Ok(spec.clone());
    };
    let store = Store::open(store_path).context("the run store")?;
    let job = store.get_tune_job(name)?.ok_or_else(|| usage(format!("provider `{}`: no fine-tuning job or tuned model `{name}` is recorded (see `tunegate tune --list`)", spec.id)))?;
    let model = job.fine_tuned_model.clone().ok_or_else(|| {
        usage(format!(
            "provider `{}`: job {} has not produced a model (status {})",
            spec.id, job.id, job.status
        ))
    })?;
    let mut s = spec.clone();
    if job.backend == "local" {
        s.id = model;
        s.label = Some(spec.label.clone().unwrap_or_else(|| spec.id.clone()));
        return Ok(s);
    }
    s.id = format!("openai-compatible:{model}");
    s.base_url = s.base_url.or(job.base_url.clone());
    s.api_key_env = s.api_key_env.or(job.api_key_env.clone());
    s.label = Some(spec.label.clone().unwrap_or_else(|| spec.id.clone()));
    Ok(s)
}

/// The task metric on the validation set, measured after each epoch: the
/// share of validation cases whose output passes the task's assertions (the
/// same scorers as `eval`; label accuracy for a classification task). The
/// output comes from the adapters being trained, applied on the quantized
/// base exactly as the `tuned:` provider serves them, with the generation
/// settings of the task's `local:` provider (greedy, its max_tokens, its
/// `choices`): what the epoch's model would score if it were evaluated.
struct ValidationMetric {
    model_path: PathBuf,
    scratch: PathBuf,
    prompts: Vec<String>,
    cases: Vec<tunegate_core::Case>,
    params: tunegate_core::task::Params,
    scorer: tunegate_core::scorers::Scorer,
    /// Why there is no metric (then only the loss is measured).
    unavailable: Option<String>,
}

impl ValidationMetric {
    fn new(
        task: &Task,
        model_path: &std::path::Path,
        rows: &[(
            tunegate_model::lora::TrainExample,
            String,
            tunegate_core::Case,
        )],
        scratch: PathBuf,
    ) -> Result<ValidationMetric> {
        let scorer = tunegate_core::scorers::Scorer::new(task);
        let cases: Vec<tunegate_core::Case> = rows.iter().map(|r| r.2.clone()).collect();
        let unavailable = if cases.is_empty() {
            Some("no validation cases".to_string())
        } else if cases.iter().any(|c| scorer.has_graders(c)) {
            Some("the task's llm-rubric assertions need a grader model".to_string())
        } else {
            None
        };
        let params = task
            .file
            .providers
            .iter()
            .find(|p| p.id.starts_with("local:"))
            .map(|p| p.params.clone())
            .unwrap_or_default();
        Ok(ValidationMetric {
            model_path: model_path.to_path_buf(),
            scratch,
            prompts: rows.iter().map(|r| r.1.clone()).collect(),
            cases,
            params,
            scorer,
            unavailable,
        })
    }

    fn measure(
        &mut self,
        model: &tunegate_model::lora::LoraModel,
    ) -> Result<f64, tunegate_model::ModelError> {
        use tunegate_model::ModelError;
        model.save_peft(&self.scratch, "google/gemma-3-270m")?;
        let lm =
            tunegate_model::LocalModel::load_with_adapter(&self.model_path, Some(&self.scratch))?;
        let tokens: Vec<Vec<u32>> = self
            .prompts
            .iter()
            .map(|p| lm.tokenizer.encode(p, true, false))
            .collect();
        let outputs: Vec<String> = match &self.params.choices {
            Some(choices) => {
                let mut out = vec![];
                for (p, t) in self.prompts.iter().zip(&tokens) {
                    // As the local provider: a label continues after a space unless the prompt ends in one.
                    let sep = if p.ends_with(char::is_whitespace) {
                        ""
                    } else {
                        " "
                    };
                    let cs: Vec<String> = choices.iter().map(|c| format!("{sep}{c}")).collect();
                    let scores = lm.score_choices(t, &cs)?;
                    let best = scores
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    out.push(choices[best].trim().to_string());
                }
                out
            }
            None => {
                let gp = tunegate_providers::local::gen_params(&self.params);
                let mut out = vec![];
                for chunk in tokens.chunks(16) {
                    let batch: Vec<(Vec<u32>, tunegate_model::GenParams)> =
                        chunk.iter().map(|t| (t.clone(), gp.clone())).collect();
                    out.extend(lm.generate_batch(&batch)?.into_iter().map(|g| g.text));
                }
                out
            }
        };
        let facts = tunegate_core::scorers::ResponseFacts {
            latency_ms: 0.0,
            completion_tokens: None,
            cost_usd: None,
        };
        let passed = outputs
            .iter()
            .zip(&self.cases)
            .filter(|(o, c)| {
                let results = self.scorer.score(o, c, &facts);
                tunegate_core::scorers::combine(&results, &self.scorer.weights(c)).0
            })
            .count();
        let _ = std::fs::remove_dir_all(&self.scratch);
        if self.cases.is_empty() {
            return Err(ModelError::Input("no validation cases".into()));
        }
        Ok(passed as f64 / self.cases.len() as f64)
    }
}
