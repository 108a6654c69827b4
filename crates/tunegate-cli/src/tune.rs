//! `tunegate tune`: flags in, `tunegate_tune` does the work, progress out.
//! Local LoRA on the embedded model, or a job on an OpenAI-compatible
//! fine-tuning API, recorded in the store the moment it exists.

use crate::args::{usage, TaskArgs};
use crate::progress::TrainProgress;
use anyhow::Result;
use clap::Args;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tunegate_store::{store_path_for, Store};
use tunegate_tune::remote::{self, WatchEvent};
use tunegate_tune::{Backend, Overrides, Settings};

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub task: TaskArgs,
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
    /// Local: try N recipes around the task kind's (default 4, at most 8),
    /// each scored on the validation set, and keep the best adapter.
    #[arg(long, num_args = 0..=1, default_missing_value = "4", value_name = "N")]
    pub search: Option<usize>,
    /// Threads for local training (default: tune.threads, else all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Local training: skip the validation pass rate measured after each
    /// epoch (greedy generation on the validation cases, scored by the
    /// task's assertions); the validation loss is still measured.
    #[arg(long)]
    pub no_val_metric: bool,
    /// Refuse when an eval case is among the examples, instead of leaving
    /// out such examples (and repeats and conflicts) and saying which.
    #[arg(long)]
    pub strict: bool,
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

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

pub fn run(a: TuneArgs) -> Result<ExitCode> {
    let path = a.task.path();
    let store_path = store_path_for(&path);
    if a.list {
        return list(&Store::open(&store_path)?);
    }
    let rt = crate::args::runtime()?;
    for (id, what) in [(&a.attach, "attach"), (&a.cancel, "cancel"), (&a.checkpoints, "checkpoints")] {
        let Some(id) = id else { continue };
        let store = Store::open(&store_path)?;
        let job = store.get_tune_job(id)?.ok_or_else(|| usage(format!("no fine-tuning job `{id}` in {} (see `tunegate tune --list`)", store_path.display())))?;
        let client = remote::client_for_job(&job, &env)?;
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
    let task = a.task.load()?;
    let overrides = Overrides { backend: a.backend.clone(), threads: a.threads.map(usize::from), val_metric: Some(!a.no_val_metric), strict: a.strict.then_some(true), prefix: "--", ..Default::default() };
    let settings = Settings::for_task(&task, &overrides)?;
    if settings.backend == Backend::Local || a.resume.is_some() || a.search.is_some() {
        let adapter = match a.search {
            Some(n) => tunegate_tune::search::search_task(&task, &settings, n, &store_path, a.resume.as_deref(), &mut TrainProgress::new())?,
            None => tunegate_tune::local::tune_task(&task, &settings, &store_path, a.resume.as_deref(), &mut TrainProgress::new())?,
        };
        eprintln!("job {} recorded in {}", adapter.job_id, store_path.display());
        println!("evaluate it: add `- id: tuned:{}` under providers (with the prompt `{}`), then `tunegate eval`", adapter.job_id, settings.prompt.as_deref().unwrap_or(""));
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&store_path)?;
    let (client, job) = rt.block_on(remote::create(&task, &settings, &store, &env, &mut |m| eprintln!("{m}")))?;
    eprintln!("created job {} ({}); recorded in {}", job.id, job.status, store_path.display());
    rt.block_on(watch(&client, &store, &job.id, &a, &path))
}

fn list(store: &Store) -> Result<ExitCode> {
    let jobs = store.list_tune_jobs()?;
    if jobs.is_empty() {
        println!("no fine-tuning jobs recorded");
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| vec![j.id.clone(), j.backend.clone(), j.status.clone(), j.base_model.clone(), j.fine_tuned_model.clone().unwrap_or_default(), j.created_at.chars().take(19).collect()])
        .collect();
    print!("{}", crate::output::table(&["job", "backend", "status", "base", "tuned model", "created (UTC)"], &rows));
    Ok(ExitCode::SUCCESS)
}

/// Watches a remote job to its end, printing status changes and events;
/// Ctrl-C stops watching (the job goes on remotely).
async fn watch(client: &tunegate_providers::finetune::FineTuneClient, store: &Store, id: &str, a: &TuneArgs, cfg: &Path) -> Result<ExitCode> {
    let attach_hint = format!("tunegate tune -c {} --attach {id}", cfg.display());
    let interval = Duration::from_secs_f64(a.poll_interval.max(0.01));
    let mut on = |e: WatchEvent| match e {
        WatchEvent::Status(s) => eprintln!("job {id}: {s}"),
        WatchEvent::Event { level, message } => eprintln!("  [{level}] {message}"),
        WatchEvent::PollFailed { failures, max, error } => eprintln!("could not poll job {id} ({failures}/{max}): {error}"),
    };
    let job = tokio::select! {
        r = remote::watch(client, store, id, interval, a.max_poll_failures, &mut on) => match r {
            Ok(job) => job,
            Err(tunegate_tune::TuneError::Provider(_)) => anyhow::bail!("lost contact with the fine-tuning API; job {id} is recorded and may still be running: resume with `{attach_hint}`"),
            Err(e) => return Err(e.into()),
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopped watching; job {id} goes on remotely: `{attach_hint}`");
            return Ok(ExitCode::from(1));
        }
    };
    Ok(match job.status.as_str() {
        "succeeded" => {
            let m = job.fine_tuned_model.clone().unwrap_or_default();
            println!("fine-tuned model: {m}");
            println!("evaluate it: add `- id: tuned:{id}` under providers (or tuned:{m}), then `tunegate eval`");
            ExitCode::SUCCESS
        }
        "failed" => {
            eprintln!("job {id} failed: {}", job.error.unwrap_or_else(|| "no reason given".into()));
            ExitCode::from(1)
        }
        _ => {
            eprintln!("job {id} was cancelled");
            ExitCode::from(1)
        }
    })
}
