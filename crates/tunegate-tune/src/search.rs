//! `tune --search`: a small, budgeted search over recipes around the task
//! kind's own. Every trial trains on the same examples and is scored on the
//! same validation set by the task's metric (the pass rate at its kept
//! epoch, the validation loss breaking ties), never on the eval set, which
//! stays untouched for the before/after comparison. The best trial's adapter
//! becomes the job's; the table of trials and the chosen recipe are recorded
//! with the job.
//!
//! A search is one job: each trial trains into `trials/N/` of the job's
//! directory and leaves `result.json` when done, so `--resume` skips the
//! finished trials and continues the interrupted one from its checkpoint.

use crate::events::{Finished, TrainEvent, TrainSink};
use crate::jobs::{self, TunedAdapter};
use crate::local::{data_identity, open_job, train_into, Prepared};
use crate::settings::{Settings, ALL_LINEAR};
use crate::TuneError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tunegate_core::Task;


/// One recipe tried, and how it did on the validation set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrialResult {
    pub trial: usize,
    /// What it changes from the task's recipe.
    pub change: String,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub learning_rate: f64,
    pub epochs: usize,
    /// The epoch kept (1-based).
    pub best_epoch: Option<usize>,
    pub pass_rate: Option<f64>,
    pub val_loss: Option<f64>,
    pub seconds: f64,
}

impl TrialResult {
    /// Higher is better: the pass rate first, then the lower loss.
    fn key(&self) -> (f64, f64) {
        (self.pass_rate.unwrap_or(-1.0), -self.val_loss.unwrap_or(f64::INFINITY))
    }

    pub fn recipe(&self) -> String {
        crate::settings::recipe_text(self.rank, self.alpha, &self.targets, self.learning_rate, self.epochs)
    }
}

/// The recipes a search of `budget` trials tries, in order: the resolved
/// settings first (so a search never does worse on validation than the
/// default), then the changes that mattered most in the measurements
/// (BENCHMARKS.md): the other target set, the learning rate either way,
/// a larger rank.
pub fn trials(base: &Settings, budget: usize) -> Result<Vec<(String, Settings)>, TuneError> {
    let wide = base.lora.targets.len() >= ALL_LINEAR.len();
    let other = |s: &mut Settings| {
        let (targets, rank): (&[&str], usize) = if wide { (&["q", "v"], 8) } else { (ALL_LINEAR, 16) };
        s.lora.targets = targets.iter().map(|t| t.to_string()).collect();
        s.lora.alpha = 2.0 * rank as f64;
        s.lora.rank = rank;
    };
    let other_name = if wide { "q,v r8" } else { "all linear r16" };
    let lr = |f: f64| move |s: &mut Settings| s.learning_rate *= f;
    let rank2 = |s: &mut Settings| {
        s.lora.rank *= 2;
        s.lora.alpha *= 2.0;
    };
    type Change<'a> = (String, Box<dyn Fn(&mut Settings) + 'a>);
    let changes: Vec<Change> = vec![
        ("recipe".into(), Box::new(|_: &mut Settings| {})),
        (other_name.into(), Box::new(other)),
        ("lr x2".into(), Box::new(lr(2.0))),
        ("lr x0.5".into(), Box::new(lr(0.5))),
        ("rank x2".into(), Box::new(rank2)),
        (format!("{other_name}, lr x2"), Box::new(move |s: &mut Settings| (other(s), lr(2.0)(s)).1)),
        (format!("{other_name}, lr x0.5"), Box::new(move |s: &mut Settings| (other(s), lr(0.5)(s)).1)),
        ("rank x2, lr x0.5".into(), Box::new(move |s: &mut Settings| (rank2(s), lr(0.5)(s)).1)),
    ];
    if budget < 1 || budget > changes.len() {
        return Err(TuneError::Usage(format!("--search: the budget is the number of trials, 1 to {} ({budget} given)", changes.len())));
    }
    Ok(changes
        .into_iter()
        .take(budget)
        .map(|(name, change)| {
            let mut s = base.clone();
            change(&mut s);
            (name, s)
        })
        .collect())
}

/// The best trial: the highest pass rate, then the lowest validation loss,
/// then the earliest (the task's own recipe wins a tie).
pub fn best(results: &[TrialResult]) -> Option<&TrialResult> {
    results.iter().reduce(|b, r| if r.key() > b.key() { r } else { b })
}

/// The table of trials, the chosen one marked.
pub fn table(results: &[TrialResult]) -> String {
    let chosen = best(results).map(|b| b.trial);
    let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", r.trial, if Some(r.trial) == chosen { " *" } else { "" }),
                r.change.clone(),
                format!("r{} a{} {}", r.rank, r.alpha, r.targets.join(",")),
                format!("{}", r.learning_rate),
                pct(r.pass_rate),
                r.val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
                r.best_epoch.map(|e| format!("{e}/{}", r.epochs)).unwrap_or_else(|| "-".into()),
                format!("{:.0}s", r.seconds),
            ]
        })
        .collect();
    tunegate_core::report::table(&["trial", "change", "lora", "lr", "val pass", "val loss", "epoch", "time"], &rows)
}

/// Runs the search for a task as one job (see the module's doc).
pub fn search_task(task: &Task, settings: &Settings, budget: usize, store_path: &Path, resume: Option<&str>, sink: &mut dyn TrainSink) -> Result<TunedAdapter, TuneError> {
    let plan = trials(settings, budget)?;
    let data = Prepared::new(task, settings, sink)?;
    let (store, job_id, _) = open_job(task, settings, store_path, resume, data_identity(&data.train, settings, Some(budget)))?;
    let job_dir = jobs::job_dir(store_path, &job_id);
    let mut results: Vec<TrialResult> = vec![];
    let mut metas = vec![];
    for (i, (change, s)) in plan.iter().enumerate() {
        let dir = job_dir.join("trials").join((i + 1).to_string());
        let done = dir.join("result.json");
        let io = |e: std::io::Error| TuneError::Io(format!("{}: {e}", done.display()));
        if let Ok(text) = std::fs::read_to_string(&done) {
            let (r, meta): (TrialResult, serde_json::Value) = serde_json::from_str(&text).map_err(|e| TuneError::Io(format!("{}: {e} (delete the file to rerun the trial)", done.display())))?;
            sink.event(&TrainEvent::Note(format!("trial {}/{} ({change}): done before, validation pass rate {}", i + 1, plan.len(), r.pass_rate.map(|p| format!("{:.1}%", 100.0 * p)).unwrap_or_else(|| "-".into()))));
            results.push(r);
            metas.push(meta);
            continue;
        }
        sink.event(&TrainEvent::Trial { trial: i + 1, of: plan.len(), change });
        let resumed = dir.join("checkpoint/progress.json").exists();
        let out = train_into(task, s, &data, &job_id, &dir, resumed, sink)?;
        let (pass_rate, val_loss) = out.best();
        let r = TrialResult {
            trial: i + 1,
            change: change.clone(),
            rank: s.lora.rank,
            alpha: s.lora.alpha,
            targets: s.lora.targets.clone(),
            learning_rate: s.learning_rate,
            epochs: s.epochs,
            best_epoch: out.trained.progress.best_epoch,
            pass_rate,
            val_loss,
            seconds: out.trained.seconds,
        };
        let meta = out.meta(s, &dir);
        std::fs::write(&done, serde_json::to_string(&(&r, &meta)).unwrap_or_default()).map_err(io)?;
        // The trial's optimizer state is no longer needed once it is scored.
        let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
        results.push(r);
        metas.push(meta);
    }
    let Some(win) = best(&results).cloned() else {
        return Err(TuneError::Usage("the search ran no trial".into()));
    };
    // The job's adapter is the best trial's, at the job directory's top.
    let from = job_dir.join("trials").join(win.trial.to_string());
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(from.join(f), job_dir.join(f)).map_err(|e| TuneError::Io(format!("cannot copy {} into {}: {e}", from.join(f).display(), job_dir.display())))?;
    }
    let dir = job_dir.canonicalize().unwrap_or(job_dir);
    let adapter = TunedAdapter { job_id: job_id.clone(), base: settings.base.clone(), dir: dir.clone() };
    let mut meta = metas[win.trial - 1].clone();
    meta["adapter"] = serde_json::json!(dir);
    meta["search"] = serde_json::json!({"budget": budget, "chosen": win.trial, "trials": results});
    meta["chosen_recipe"] = serde_json::json!(win.recipe());
    jobs::finish_local(&store, &adapter, &meta)?;
    sink.event(&TrainEvent::Searched { table: table(&results), chosen: win.trial, recipe: win.recipe() });
    let rates: Vec<f64> = meta["validation_pass_rates"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default();
    let losses: Vec<f64> = meta["validation_losses"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default();
    sink.event(&TrainEvent::Finished(Finished {
        job_id: &job_id,
        steps: meta["steps"].as_u64().unwrap_or(0) as usize,
        seconds: results.iter().map(|r| r.seconds).sum(),
        tokens_per_second: meta["tokens_per_second"].as_f64().unwrap_or(0.0),
        first_loss: None,
        final_loss: meta["final_loss"].as_f64(),
        validation_losses: &losses,
        validation_pass_rates: &rates,
        best_epoch: win.best_epoch,
        adapter: &dir,
        stopped: false,
    }));
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Overrides;

    fn result(trial: usize, pass: Option<f64>, loss: f64) -> TrialResult {
        TrialResult { trial, change: String::new(), rank: 8, alpha: 16.0, targets: vec!["q".into()], learning_rate: 1e-3, epochs: 3, best_epoch: Some(1), pass_rate: pass, val_loss: Some(loss), seconds: 1.0 }
    }

    #[test]
    fn the_pass_rate_picks_the_trial_and_the_loss_breaks_ties() {
        // Trial 2 has the lowest loss, trial 3 the best pass rate: 3 wins.
        let r = vec![result(1, Some(0.5), 0.30), result(2, Some(0.4), 0.10), result(3, Some(0.6), 0.40), result(4, Some(0.6), 0.45)];
        assert_eq!(best(&r).unwrap().trial, 3);
        // Equal pass rates: the lower loss; equal both: the earlier trial.
        let r = vec![result(1, Some(0.5), 0.30), result(2, Some(0.5), 0.20), result(3, Some(0.5), 0.20)];
        assert_eq!(best(&r).unwrap().trial, 2);
        // No metric: the loss alone.
        let r = vec![result(1, None, 0.30), result(2, None, 0.20)];
        assert_eq!(best(&r).unwrap().trial, 2);
        assert!(table(&r).contains("2 *"));
    }

    #[test]
    fn trials_start_with_the_recipe_and_respect_the_budget() {
        let s = Settings::from_overrides(&Overrides::default()).unwrap();
        let t = trials(&s, 4).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].1, s);
        assert_eq!(t[1].1.lora.targets.len(), ALL_LINEAR.len());
        assert_eq!(t[1].1.lora.rank, 16);
        assert_eq!(t[2].1.learning_rate, 2.0 * s.learning_rate);
        assert_eq!(t[3].1.learning_rate, 0.5 * s.learning_rate);
        let names: std::collections::BTreeSet<String> = trials(&s, 8).unwrap().into_iter().map(|t| t.0).collect();
        assert_eq!(names.len(), 8, "every trial differs");
        assert!(matches!(trials(&s, 0), Err(TuneError::Usage(_))));
        assert!(matches!(trials(&s, 9), Err(TuneError::Usage(m)) if m.contains("1 to 8")));
    }
}
