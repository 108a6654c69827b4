//! Job records: every fine-tuning job is in the run store from the moment
//! it exists (before training starts, or as soon as a remote API answers),
//! so a crash never loses it. A local job's adapter is recorded as a typed
//! directory beside the model it was trained on; `tuned:JOB` providers and
//! `adapter export` read that record, never a string to parse.

use crate::TuneError;
use std::path::{Path, PathBuf};
use tunegate_store::{Store, TuneJob};

/// A trained LoRA adapter: the job that made it, the base it applies to
/// (`local:gemma-3-270m`), and its PEFT directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedAdapter {
    pub job_id: String,
    pub base: String,
    pub dir: PathBuf,
}

impl TunedAdapter {
    /// The provider that evaluates this adapter: the base model's provider
    /// spec with the adapter attached, reported under `label`.
    pub fn provider_spec(&self, base_spec: &tunegate_core::ProviderSpec, label: String) -> tunegate_core::ProviderSpec {
        let mut s = base_spec.clone();
        s.adapter = Some(self.dir.clone());
        s.label = Some(label);
        s
    }
}

/// Where a store's local adapters live: `.tunegate/adapters/JOB/`.
pub fn job_dir(store_path: &Path, job_id: &str) -> PathBuf {
    store_path.parent().unwrap_or(Path::new(".")).join("adapters").join(job_id)
}

/// The name a finished local job's model is listed under (`tune --list`,
/// `tuned:NAME`): the base and the job, like OpenAI's `ft:BASE:...:ID`.
pub fn local_model_name(base: &str, job_id: &str) -> String {
    format!("{base}:{job_id}")
}

/// Records a new local job as running, before any training.
pub fn start_local(store: &Store, job_id: &str, task_name: &str, base: &str, data_hash: &str) -> Result<(), TuneError> {
    let now = tunegate_store::now();
    store.insert_tune_job(&TuneJob {
        id: job_id.into(),
        backend: "local".into(),
        task_name: task_name.into(),
        base_url: None,
        api_key_env: None,
        base_model: base.into(),
        status: "running".into(),
        fine_tuned_model: None,
        adapter: None,
        data_hash: data_hash.into(),
        created_at: now.clone(),
        updated_at: now,
        meta: serde_json::json!({}),
    })?;
    Ok(())
}

/// The unfinished local job `sel` (or the latest one for `latest`).
pub fn resumable(store: &Store, sel: &str) -> Result<TuneJob, TuneError> {
    let job = if sel == "latest" { store.list_tune_jobs()?.into_iter().find(|j| j.backend == "local" && j.status == "running") } else { store.get_tune_job(sel)? };
    job.ok_or_else(|| TuneError::Usage(format!("no unfinished local tuning job `{sel}` to resume (see `tunegate tune --list`)")))
}

/// Marks a local job succeeded with its adapter and what training measured.
pub fn finish_local(store: &Store, a: &TunedAdapter, meta: &serde_json::Value) -> Result<(), TuneError> {
    store.update_tune_job(&a.job_id, "succeeded", Some(&local_model_name(&a.base, &a.job_id)))?;
    store.set_tune_job_adapter(&a.job_id, &a.dir)?;
    store.set_tune_job_meta(&a.job_id, meta)?;
    Ok(())
}

/// The adapter of a recorded local job (by id or tuned model name).
pub fn adapter_of(store: &Store, id_or_model: &str) -> Result<TunedAdapter, TuneError> {
    let job = store.get_tune_job(id_or_model)?.ok_or_else(|| TuneError::Usage(format!("no fine-tuning job or tuned model `{id_or_model}` is recorded (see `tunegate tune --list`)")))?;
    match job.adapter {
        Some(dir) => Ok(TunedAdapter { job_id: job.id, base: job.base_model, dir }),
        None => Err(TuneError::Usage(format!("job {} has no local adapter (backend {}, status {}); only local LoRA jobs have one", job.id, job.backend, job.status))),
    }
}

/// The latest finished local job of a task, as the advisor shows it: the
/// recipe it trained with (a search's chosen trial) and its validation pass
/// rate at the kept epoch.
pub fn latest_tuned(store: &Store, task_name: &str) -> Result<Option<tunegate_core::advise::TunedJobFacts>, TuneError> {
    let Some(job) = store.list_tune_jobs()?.into_iter().find(|j| j.backend == "local" && j.status == "succeeded" && j.task_name == task_name) else {
        return Ok(None);
    };
    let m = &job.meta;
    let recipe = match m["chosen_recipe"].as_str() {
        Some(r) => r.to_string(),
        None => {
            let targets: Vec<String> = m["lora"]["targets"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect()).unwrap_or_default();
            crate::settings::recipe_text(m["lora"]["rank"].as_u64().unwrap_or(0) as usize, m["lora"]["alpha"].as_f64().unwrap_or(0.0), &targets, m["learning_rate"].as_f64().unwrap_or(0.0), m["epochs"].as_u64().unwrap_or(0) as usize)
        }
    };
    let rates = m["validation_pass_rates"].as_array();
    let kept = m["best_epoch"].as_u64().map(|e| e as usize - 1).or(rates.map(|r| r.len()).and_then(|n| n.checked_sub(1)));
    Ok(Some(tunegate_core::advise::TunedJobFacts {
        id: job.id.clone(),
        recipe,
        validation_pass_rate: kept.and_then(|i| rates.and_then(|r| r.get(i)).and_then(|v| v.as_f64())),
        search_trials: m["search"]["trials"].as_array().map(|t| t.len()),
    }))
}
