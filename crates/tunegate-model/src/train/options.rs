//! [`TrainOptions`], on a level of its own: the loop, the schedule and the
//! checkpoints all read it, and none of them depends on another for it.

/// Training options (see `tunegate tune`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Examples per forward/backward pass (packed into one sequence).
    pub batch_size: usize,
    /// Passes whose gradients are summed before each optimizer step: a
    /// step sees `batch_size * grad_accum` examples while memory holds only
    /// `batch_size` of them. The loss is the mean over all the step's
    /// completion tokens either way, so (batch 8, accum 1) and (batch 4,
    /// accum 2) train the same model up to float rounding.
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// `cosine`, `linear` or `constant` after warmup.
    pub schedule: String,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Stop after this many optimizer steps in all (the schedule still
    /// spans every epoch, so a later resume continues the same run).
    pub max_steps: Option<usize>,
    /// Set from another thread to stop after the current step (cancel).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Stop when the validation loss has not improved for this many
    /// epochs; the adapters end at the best epoch either way.
    pub early_stopping_patience: Option<usize>,
    /// Pick the best epoch (and stop early) by the task metric instead of
    /// the validation loss; ties on the metric go to the lower loss.
    pub select_by_metric: bool,
    /// Recompute each layer's activations in the backward pass instead of
    /// keeping them all (see [`LoraModel::loss_and_grads`](crate::lora::LoraModel::loss_and_grads)).
    pub gradient_checkpointing: bool,
}

