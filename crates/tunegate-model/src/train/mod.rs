//! The training loop over a [`LoraModel`]: seeded epochs of batches,
//! gradient accumulation and clipping, validation and the best epoch,
//! cancellation, checkpoints and resuming.
//!
//! Kept apart from [`crate::lora`], which is the model alone (forward and
//! backward on packed sequences): this module decides what runs when, and
//! `lora` does not depend on it (bar a temporary re-export). The optimizer
//! ([`AdamState`]), the schedule ([`lr_at`]), the options and the
//! checkpoints have files of their own.

use crate::lora::{pack, LoraModel, Packed, TrainExample};
use crate::ModelError;
use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;

mod checkpoint;
mod optim;
mod options;
mod schedule;

use checkpoint::{best_path, load_snapshot, restore, save_snapshot, snapshot};
pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpointing, Progress};
pub use optim::AdamState;
pub use options::TrainOptions;
pub use schedule::lr_at;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StepInfo {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub tokens: usize,
    pub grad_norm: f64,
}

/// What `on_epoch` hears at the end of each epoch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochInfo {
    /// 0-based.
    pub epoch: usize,
    pub val_loss: Option<f64>,
    pub val_metric: Option<f64>,
    /// 1-based, as in [`Progress::best_epoch`].
    pub best_epoch: Option<usize>,
}

/// The caller's view into a run: every step, every epoch, and optionally a
/// task metric measured on the validation set after each epoch (the model
/// crate knows nothing of tasks; the caller evaluates the adapters it is
/// handed, e.g. by generating and scoring as an eval would).
pub struct Hooks<'a> {
    pub on_step: &'a mut dyn FnMut(&StepInfo),
    pub on_epoch: &'a mut dyn FnMut(&EpochInfo),
    pub metric: Option<&'a mut dyn FnMut(&LoraModel) -> Result<f64, ModelError>>,
}

/// The example order of an epoch: a function of (seed, epoch) alone, so a
/// resumed run sees exactly the batches the interrupted one would have.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
    ));
    order
}

/// Trains the adapters. `on_step` hears every step; `on_epoch` every epoch.
/// The same seed on the same machine gives the same adapter, and so does a
/// run resumed from any checkpoint.
pub fn train(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    on_step: &mut dyn FnMut(&StepInfo),
    on_epoch: &mut dyn FnMut(&EpochInfo),
) -> Result<Vec<StepInfo>, ModelError> {
    train_resumable(
        model,
        examples,
        validation,
        o,
        None,
        None,
        Hooks {
            on_step,
            on_epoch,
            metric: None,
        },
    )
    .map(|(log, _)| log)
}

/// Whether epoch `e` (0-based) of `p` beats the best so far.
fn improves(p: &Progress, e: usize, by_metric: bool) -> bool {
    let Some(b) = p.best_epoch.map(|b| b - 1) else {
        return true;
    };
    let loss = |i: usize| p.val_losses.get(i).copied().unwrap_or(f64::INFINITY);
    if by_metric {
        if let (Some(m), Some(mb)) = (p.val_metrics.get(e), p.val_metrics.get(b)) {
            if m != mb {
                return m > mb;
            }
        }
    }
    loss(e) < loss(b)
}

/// One optimizer step's forward and backward passes over `batch`, in
/// passes of `micro` examples, each pass's gradient weighted by its share
/// of the step's completion tokens (so the sum is the gradient of the
/// step's mean loss). Returns (mean loss, gradients) or None when the
/// batch has nothing to learn.
#[allow(clippy::type_complexity)]
fn step_gradients(
    model: &LoraModel,
    vars: &[Var],
    batch: &[&TrainExample],
    micro: usize,
    seed: u64,
    step: usize,
    checkpointing: bool,
) -> Result<Option<(f64, Vec<Option<Tensor>>)>, ModelError> {
    let passes: Vec<Packed> = batch.chunks(micro.max(1)).map(pack).collect();
    let total: usize = passes.iter().map(|p| p.targets.len()).sum();
    if total == 0 {
        return Ok(None);
    }
    let mut sum: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_sum = 0f64;
    for (i, p) in passes.iter().enumerate() {
        if p.targets.is_empty() {
            continue;
        }
        // Dropout masks come from (seed, step, pass), not from a running stream.
        let mix = (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        model.set_dropout_seed(seed ^ mix);
        let w = p.targets.len() as f64 / total as f64;
        let (loss, pass) = model.loss_and_grads(p, checkpointing)?;
        loss_sum += loss * w;
        for (acc, g) in sum.iter_mut().zip(pass) {
            if let Some(g) = g {
                let g = if passes.len() == 1 { g } else { (g * w).map_err(ModelError::candle)? };
                *acc = Some(match acc.take() {
                    None => g,
                    Some(a) => (a + g).map_err(ModelError::candle)?,
                });
            }
        }
    }
    Ok(Some((loss_sum, sum)))
}

/// [`train`] with checkpoints, an optional state to continue from, and an
/// optional per-epoch task metric.
pub fn train_resumable(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    checkpoints: Option<Checkpointing>,
    resume: Option<(AdamState, Progress)>,
    hooks: Hooks,
) -> Result<(Vec<StepInfo>, Progress), ModelError> {
    let Hooks {
        on_step,
        on_epoch,
        mut metric,
    } = hooks;
    if examples.is_empty() {
        return Err(ModelError::Input("no training examples".into()));
    }
    let vars = model.vars();
    let micro = o.batch_size.max(1);
    let bs = micro * o.grad_accum.max(1);
    let steps_per_epoch = examples.len().div_ceil(bs);
    let total = steps_per_epoch * o.epochs;
    let mut best_local: Option<Vec<Tensor>> = None;
    let best_snapshot = &mut best_local;
    // A resumed run's best adapters come back from its checkpoint.
    if let (Some(c), Some((_, p))) = (&checkpoints, &resume) {
        if p.best_epoch.is_some() {
            *best_snapshot = load_snapshot(&best_path(c.dir)).ok();
        }
    }
    let (mut state, mut progress) = match resume {
        Some(r) => r,
        None => (
            AdamState::new(&vars).map_err(ModelError::candle)?,
            Progress {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                val_losses: vec![],
                val_metrics: vec![],
                best_epoch: None,
            },
        ),
    };
    let mut log = vec![];
    while progress.epoch < o.epochs {
        model.training = true;
        let order = epoch_order(examples.len(), o.seed, progress.epoch);
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        while progress.batch_in_epoch < batches.len() {
            let cancelled = o
                .stop
                .as_ref()
                .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(false);
            if cancelled || o.max_steps.map(|m| progress.step >= m).unwrap_or(false) {
                if let Some(c) = &checkpoints {
                    save_checkpoint(model, &state, &progress, c.dir)?;
                }
                model.training = false;
                return Ok((log, progress));
            }
            let chunk = batches[progress.batch_in_epoch];
            let batch: Vec<&TrainExample> = chunk.iter().map(|&i| &examples[i]).collect();
            let lr = lr_at(o, progress.step, total);
            let tokens = batch.iter().map(|e| e.tokens.len()).sum();
            let mut info = StepInfo {
                epoch: progress.epoch,
                step: progress.step,
                total_steps: total,
                loss: f64::NAN,
                lr,
                tokens,
                grad_norm: 0.0,
            };
            if let Some((loss, mut gs)) =
                step_gradients(model, &vars, &batch, micro, o.seed, progress.step, o.gradient_checkpointing)?
            {
                let mut sq = 0f64;
                for g in gs.iter().flatten() {
                    sq += g
                        .sqr()
                        .and_then(|s| s.sum_all())
                        .and_then(|s| s.to_scalar::<f32>())
                        .map_err(ModelError::candle)? as f64;
                }
                let norm = sq.sqrt();
                if let Some(c) = o.grad_clip {
                    if norm > c {
                        for g in gs.iter_mut().flatten() {
                            *g = (&*g * (c / norm)).map_err(ModelError::candle)?;
                        }
                    }
                }
                state
                    .step(&vars, &gs, lr, o.weight_decay)
                    .map_err(ModelError::candle)?;
                info.loss = loss;
                info.grad_norm = norm;
            }
            on_step(&info);
            log.push(info);
            progress.step += 1;
            progress.batch_in_epoch += 1;
            if let Some(c) = &checkpoints {
                if c.every > 0 && progress.step % c.every == 0 {
                    save_checkpoint(model, &state, &progress, c.dir)?;
                }
            }
        }
        model.training = false;
        let val = if validation.is_empty() {
            None
        } else {
            Some(eval_loss(model, validation, micro)?)
        };
        let val_metric = match metric.as_mut() {
            Some(f) if val.is_some() => Some(f(model)?),
            _ => None,
        };
        let mut stop_early = false;
        if let Some(v) = val {
            progress.val_losses.push(v);
            if let Some(m) = val_metric {
                progress.val_metrics.push(m);
            }
            let e = progress.val_losses.len() - 1;
            if improves(&progress, e, o.select_by_metric && val_metric.is_some()) {
                progress.best_epoch = Some(e + 1);
                *best_snapshot = Some(snapshot(model)?);
            } else if let (Some(p), Some(b)) = (o.early_stopping_patience, progress.best_epoch) {
                stop_early = progress.val_losses.len() - b >= p;
            }
        }
        on_epoch(&EpochInfo {
            epoch: progress.epoch,
            val_loss: val,
            val_metric,
            best_epoch: progress.best_epoch,
        });
        progress.epoch += 1;
        progress.batch_in_epoch = 0;
        if let Some(c) = &checkpoints {
            save_checkpoint(model, &state, &progress, c.dir)?;
            if let Some(b) = best_snapshot.as_ref() {
                save_snapshot(b, &best_path(c.dir))?;
            }
        }
        if stop_early {
            break;
        }
    }
    // The adapters end at the best validated epoch.
    if let (Some(b), Some(e)) = (best_snapshot.as_ref(), progress.best_epoch) {
        if e < progress.val_losses.len() {
            restore(model, b)?;
        }
    }
    model.training = false;
    Ok((log, progress))
}

/// Mean loss over examples (no update).
pub fn eval_loss(
    model: &mut LoraModel,
    examples: &[TrainExample],
    bs: usize,
) -> Result<f64, ModelError> {
    let was = model.training;
    model.training = false;
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(bs.max(1)) {
        let batch: Vec<&TrainExample> = chunk.iter().collect();
        let p = pack(&batch);
        if p.targets.is_empty() {
            continue;
        }
        let l = model
            .loss(&p)?
            .to_scalar::<f32>()
            .map_err(ModelError::candle)? as f64;
        total += l * p.targets.len() as f64;
        n += p.targets.len();
    }
    model.training = was;
    Ok(if n == 0 { 0.0 } else { total / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays epochs through `improves` as the loop does; the kept epoch.
    fn kept(losses: &[f64], metrics: &[f64], by_metric: bool) -> Option<usize> {
        let mut p = Progress { step: 0, epoch: 0, batch_in_epoch: 0, val_losses: vec![], val_metrics: vec![], best_epoch: None };
        for e in 0..losses.len() {
            p.val_losses.push(losses[e]);
            p.val_metrics.push(metrics[e]);
            if improves(&p, e, by_metric) {
                p.best_epoch = Some(e + 1);
            }
        }
        p.best_epoch
    }

    #[test]
    fn the_metric_picks_the_epoch_when_it_disagrees_with_the_loss() {
        // An extraction run (issue 20): the loss is lowest at epoch 3, the
        // pass rate still rising at epoch 4.
        let losses = [0.2140, 0.1213, 0.1077, 0.1083];
        let rates = [0.10, 0.38, 0.52, 0.58];
        assert_eq!(kept(&losses, &rates, true), Some(4));
        assert_eq!(kept(&losses, &rates, false), Some(3));
        // Equal pass rates: the lower loss breaks the tie.
        assert_eq!(kept(&[0.3, 0.2, 0.25], &[0.5, 0.5, 0.5], true), Some(2));
        // A later epoch with the same rate and a higher loss is not better.
        assert_eq!(kept(&[0.3, 0.2, 0.25], &[0.4, 0.6, 0.6], true), Some(2));
    }
}
