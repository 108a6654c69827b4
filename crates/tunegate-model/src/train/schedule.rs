//! The learning rate at each optimizer step: linear warmup, then cosine,
//! linear or constant. A pure function of the options and the step, so a
//! resumed run continues on the same curve.

use super::options::TrainOptions;

/// The learning rate of step `step` (0-based) of a run of `total` steps.
pub fn lr_at(o: &TrainOptions, step: usize, total: usize) -> f64 {
    if step < o.warmup_steps {
        return o.learning_rate * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = (total.saturating_sub(o.warmup_steps)).max(1) as f64;
    let t = ((step - o.warmup_steps) as f64 / span).min(1.0);
    match o.schedule.as_str() {
        "linear" => o.learning_rate * (1.0 - t),
        "constant" => o.learning_rate,
        _ => o.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
    }
}
