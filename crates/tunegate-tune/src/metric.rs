//! The task metric on the validation set, measured after each epoch: the
//! share of validation cases whose output passes the task's assertions (the
//! same scorers as `eval`). The outputs come from the adapters being
//! trained, applied on the quantized base and answered by the local
//! provider's own batch path (`tunegate_providers::local::answer_all`):
//! the same label scoring or constrained decoding (`choice_mode`), the same
//! batching, the same generation settings as the task's `local:` provider.
//! So the pass rate per epoch is what `eval` of that epoch's model measures.

use std::path::{Path, PathBuf};
use tunegate_core::scorers::{combine, ResponseFacts, Scorer};
use tunegate_core::{Case, Task};
use tunegate_model::lora::LoraModel;
use tunegate_model::ModelError;

pub struct ValidationMetric {
    model_path: PathBuf,
    scratch: PathBuf,
    prompts: Vec<String>,
    cases: Vec<Case>,
    params: tunegate_core::task::Params,
    scorer: Scorer,
    /// Why there is no metric (then only the loss is measured).
    pub unavailable: Option<String>,
}

impl ValidationMetric {
    /// `rows`: each validation example's prompt text and its case. The
    /// adapters are written to `scratch` for each measurement.
    pub fn new(task: &Task, model_path: &Path, rows: &[(String, Case)], scratch: PathBuf) -> ValidationMetric {
        let scorer = Scorer::new(task);
        let cases: Vec<Case> = rows.iter().map(|r| r.1.clone()).collect();
        let unavailable = if cases.is_empty() {
            Some("no validation cases".to_string())
        } else if cases.iter().any(|c| scorer.has_graders(c)) {
            Some("the task's llm-rubric assertions need a grader model".to_string())
        } else {
            None
        };
        let params = task.file.providers.iter().find(|p| p.id.starts_with("local:")).map(|p| p.params.clone()).unwrap_or_default();
        ValidationMetric { model_path: model_path.to_path_buf(), scratch, prompts: rows.iter().map(|r| r.0.clone()).collect(), cases, params, scorer, unavailable }
    }

    /// The pass rate of `model`'s current adapters on the validation cases.
    pub fn measure(&mut self, model: &LoraModel) -> Result<f64, ModelError> {
        if self.cases.is_empty() {
            return Err(ModelError::Input("no validation cases".into()));
        }
        model.save_peft(&self.scratch, "google/gemma-3-270m")?;
        let lm = tunegate_model::LocalModel::load_with_adapter(&self.model_path, Some(&self.scratch))?;
        let outputs = tunegate_providers::local::answer_all(&lm, &self.prompts, &self.params).map_err(|e| ModelError::Input(e.to_string()))?;
        let facts = ResponseFacts { latency_ms: 0.0, completion_tokens: None, cost_usd: None };
        let passed = outputs.iter().zip(&self.cases).filter(|(o, c)| combine(&self.scorer.score(o, c, &facts), &self.scorer.weights(c)).0).count();
        let _ = std::fs::remove_dir_all(&self.scratch);
        Ok(passed as f64 / self.cases.len() as f64)
    }
}
