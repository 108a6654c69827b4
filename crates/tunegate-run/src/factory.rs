//! The one place providers are built. Every command and the runner (for
//! `llm-rubric` graders) come here, so every provider id works everywhere:
//! `tuned:JOB` (or `tuned:MODEL`) is looked up in the run store and becomes
//! the provider that serves the tuned model — the local model with the
//! job's adapter, or the OpenAI-compatible endpoint that trained it.

use std::path::Path;
use std::sync::Arc;
use tunegate_core::ProviderSpec;
use tunegate_providers::{Provider, ProviderError};
use tunegate_store::Store;

/// The provider for `spec` (with `tuned:` resolved through the store at
/// `store_path`), and the spec it was built from. API keys come from the
/// environment; a missing one fails here, before any case runs.
pub fn build_provider(spec: &ProviderSpec, task_dir: &Path, store_path: &Path) -> Result<(Arc<dyn Provider>, ProviderSpec), ProviderError> {
    let spec = resolve_tuned(spec, store_path)?;
    let env = |k: &str| std::env::var(k).ok();
    let provider = tunegate_providers::build(&spec, task_dir, &env)?;
    Ok((provider, spec))
}

/// `tuned:JOB` or `tuned:MODEL` as the spec of the provider that serves it
/// (reported under the name the user wrote); any other spec unchanged.
pub fn resolve_tuned(spec: &ProviderSpec, store_path: &Path) -> Result<ProviderSpec, ProviderError> {
    let Some(name) = spec.id.strip_prefix("tuned:") else {
        return Ok(spec.clone());
    };
    let config = |m: String| ProviderError::Config(format!("provider `{}`: {m}", spec.id));
    let store = Store::open(store_path).map_err(|e| config(format!("the run store: {e}")))?;
    let job = store.get_tune_job(name).map_err(|e| config(e.to_string()))?.ok_or_else(|| config(format!("no fine-tuning job or tuned model `{name}` is recorded (see `tunegate tune --list`)")))?;
    let mut s = spec.clone();
    s.label = Some(spec.label.clone().unwrap_or_else(|| spec.id.clone()));
    if job.backend == "local" {
        let dir = job.adapter.clone().ok_or_else(|| config(format!("job {} has not produced an adapter (status {})", job.id, job.status)))?;
        s.id = job.base_model.clone();
        s.adapter = Some(dir);
        return Ok(s);
    }
    let model = job.fine_tuned_model.clone().ok_or_else(|| config(format!("job {} has not produced a model (status {})", job.id, job.status)))?;
    s.id = format!("openai-compatible:{model}");
    s.base_url = s.base_url.or(job.base_url.clone());
    s.api_key_env = s.api_key_env.or(job.api_key_env.clone());
    Ok(s)
}
