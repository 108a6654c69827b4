//! Remote jobs on any OpenAI-compatible fine-tuning API (`tunegate serve`,
//! self-hosted servers, hosted services). The job is recorded in the store
//! the moment the API returns it, so a crash or a lost connection never
//! loses it: [`watch`] can pick it up again at any time.

use crate::examples::{as_chat_jsonl, training_cases};
use crate::settings::Settings;
use crate::TuneError;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tunegate_core::{InputError, Task};
use tunegate_providers::finetune::{FineTuneClient, Job};
use tunegate_store::{Store, TuneJob};

/// A client for `base_url`, its key from `api_key_env` (which must then be
/// set) or else OPENAI_API_KEY when present. `env` reads the environment.
pub fn client(base_url: &str, api_key_env: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<FineTuneClient, TuneError> {
    let key = match api_key_env {
        Some(var) => Some(env(var).ok_or_else(|| TuneError::Usage(format!("the API key variable {var} (tune.api_key_env) is not set")))?),
        None => env("OPENAI_API_KEY").filter(|k| !k.is_empty()),
    };
    Ok(FineTuneClient::new(base_url, key, Duration::from_secs(60)))
}

/// The client for a recorded job, at the endpoint that runs it.
pub fn client_for_job(job: &TuneJob, env: &dyn Fn(&str) -> Option<String>) -> Result<FineTuneClient, TuneError> {
    let base = job.base_url.as_deref().ok_or_else(|| TuneError::Usage(format!("job {} has no endpoint recorded", job.id)))?;
    client(base, job.api_key_env.as_deref(), env)
}

/// Uploads the task's examples (and validation file) as chat JSONL,
/// creates the job with the hyper-parameters the task sets, and records it.
pub async fn create(task: &Task, settings: &Settings, store: &Store, env: &dyn Fn(&str) -> Option<String>, log: &mut dyn FnMut(String)) -> Result<(FineTuneClient, Job), TuneError> {
    let base_url = settings
        .base_url
        .clone()
        .ok_or_else(|| InputError::new(&task.path, "the remote backend needs tune.base_url (an OpenAI-compatible API, e.g. https://host/v1)").field("tune.base_url"))?;
    // OpenAI's fine-tuning stops taking jobs on a known date: warn before
    // it, refuse after it (and for a retired base), before anything is
    // uploaded. It binds OpenAI's API and `openai:` bases (through a proxy
    // too), not self-hosted `openai-compatible:` servers.
    if tunegate_providers::lifecycle::is_openai(&base_url) || settings.base.starts_with("openai:") {
        use tunegate_providers::lifecycle::{openai_fine_tuning, today, HostedTuning};
        match openai_fine_tuning(settings.remote_model(), today()) {
            HostedTuning::Refused(why) => return Err(TuneError::Usage(why)),
            HostedTuning::Warn(w) => log(format!("warning: {w}")),
            HostedTuning::Open => {}
        }
    }
    let examples = crate::local::examples_path(task)?;
    let cases = training_cases(task, &examples, settings.strict, &mut *log)?;
    let train = as_chat_jsonl(task, &examples, &cases)?;
    let valid = match task.file.data.validation.as_ref().map(|p| task.resolve(p)) {
        Some(p) => Some(as_chat_jsonl(task, &p, &tunegate_core::load_cases(&p)?)?),
        None => None,
    };
    let data_hash = tunegate_core::task::hash_json(&json!([train, valid]));
    let client = client(&base_url, settings.api_key_env.as_deref(), env)?;
    let model = settings.remote_model().to_string();
    log(format!("uploading {} training examples to {base_url}", train.lines().count()));
    let tf = client.upload_file("train.jsonl", train.into_bytes()).await?;
    let vf = match valid {
        Some(v) => Some(client.upload_file("validation.jsonl", v.into_bytes()).await?),
        None => None,
    };
    let suffix: String = task.file.task.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(18).collect();
    let job = client.create_job(&model, &tf, vf.as_deref(), serde_json::Value::Object(settings.remote_hyperparameters.clone()), Some(&suffix)).await?;
    // Recorded before anything else can fail.
    let now = tunegate_store::now();
    store.insert_tune_job(&TuneJob {
        id: job.id.clone(),
        backend: "remote".into(),
        task_name: task.file.task.name.clone(),
        base_url: Some(base_url),
        api_key_env: settings.api_key_env.clone(),
        base_model: model,
        status: job.status.clone(),
        fine_tuned_model: job.fine_tuned_model.clone(),
        adapter: None,
        data_hash,
        created_at: now.clone(),
        updated_at: now,
        meta: json!({"task_path": task.path}),
    })?;
    Ok((client, job))
}

/// What watching a job reports.
pub enum WatchEvent<'a> {
    Status(&'a str),
    Event { level: &'a str, message: &'a str },
    PollFailed { failures: u32, max: u32, error: String },
}

/// Polls a job until it ends, recording status changes in the store and
/// reporting new events. Lost contact is retried with backoff; after
/// `max_failures` in a row it stops watching with an error (the job goes on
/// remotely and stays recorded).
pub async fn watch(client: &FineTuneClient, store: &Store, id: &str, interval: Duration, max_failures: u32, on: &mut dyn FnMut(WatchEvent)) -> Result<Job, TuneError> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_status = String::new();
    let mut failures = 0u32;
    loop {
        match client.get_job(id).await {
            Ok(job) => {
                failures = 0;
                if job.status != last_status {
                    on(WatchEvent::Status(&job.status));
                    store.update_tune_job(id, &job.status, job.fine_tuned_model.as_deref())?;
                    last_status = job.status.clone();
                }
                if let Ok(events) = client.events(id).await {
                    for e in events {
                        if seen.insert(e.id.clone()) {
                            on(WatchEvent::Event { level: &e.level, message: &e.message });
                        }
                    }
                }
                if job.is_terminal() {
                    return Ok(job);
                }
            }
            Err(e) => {
                failures += 1;
                on(WatchEvent::PollFailed { failures, max: max_failures, error: e.to_string() });
                if failures >= max_failures {
                    return Err(TuneError::Provider(e));
                }
            }
        }
        tokio::time::sleep(interval * if failures > 0 { 2u32.pow(failures.min(5)) } else { 1 }).await;
    }
}
