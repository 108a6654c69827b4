//! Loading everything a run needs, and checking it all before the first
//! provider call: a template variable missing from case 9,000 must fail in
//! the first second, not after an hour of paid calls.

use crate::RunError;
use std::sync::Arc;
use tunegate_core::dataset::{check_contract, load_cases};
use tunegate_core::{Case, CompiledPrompt, Scorer, Task};

pub struct Prepared {
    pub task: Arc<Task>,
    pub eval: Arc<Vec<Case>>,
    pub examples: Option<Arc<Vec<Case>>>,
    pub prompts: Arc<Vec<CompiledPrompt>>,
    pub scorer: Scorer,
    /// Hash of everything that defines the run's results: resuming a run
    /// whose task changed since would mix two experiments.
    pub config_hash: String,
}

pub fn prepare(task: Task) -> Result<Prepared, RunError> {
    let eval_path = task.eval_path().ok_or_else(|| {
        tunegate_core::InputError::new(&task.path, "no eval set: data.eval is not set").field("data.eval").hint("add `eval: data/eval.jsonl` under data")
    })?;
    let eval = load_cases(&eval_path)?;
    check_contract(&task, &eval_path, &eval, false)?;
    let examples = match task.examples_path() {
        Some(p) => {
            let ex = load_cases(&p)?;
            check_contract(&task, &p, &ex, true)?;
            Some(ex)
        }
        None => None,
    };
    let mut prompts = vec![];
    for src in &task.prompt_sources {
        prompts.push(CompiledPrompt::compile(&task, src, examples.as_deref())?);
    }
    // Render every prompt for every case once up front: a missing variable
    // or a failing filter is an input error before anything runs.
    for p in &prompts {
        for c in &eval {
            p.render(c, &eval_path)?;
        }
    }
    let scorer = Scorer::new(&task);
    let config_hash = tunegate_core::task::hash_json(&serde_json::json!({
        "task": task.file,
        "prompts": task.prompt_sources.iter().map(|p| (&p.id, &p.system, &p.template)).collect::<Vec<_>>(),
        "eval": eval,
        "shots": prompts.iter().map(|p| p.shots()).collect::<Vec<_>>(),
    }));
    Ok(Prepared {
        task: Arc::new(task),
        eval: Arc::new(eval),
        examples: examples.map(Arc::new),
        prompts: Arc::new(prompts),
        scorer,
        config_hash,
    })
}
