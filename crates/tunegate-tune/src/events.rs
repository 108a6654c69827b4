//! Training events and the sinks that receive them. Training reports what
//! happens as it happens; who listens decides what to do with it: the CLI
//! draws a progress bar and prints epoch lines, `tunegate serve` appends to
//! a job's event log, the benchmark times the steps. One stream, many sinks
//! (the shape of ripgrep's searcher and printer).

use crate::settings::Settings;
use tunegate_model::train::{EpochInfo, StepInfo};

/// What a training run is about to do.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub job_id: &'a str,
    pub settings: &'a Settings,
    pub train_examples: usize,
    pub validation_examples: usize,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
    /// Steps already done (a resumed run).
    pub done_steps: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
}

/// How a finished run went.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub job_id: &'a str,
    pub steps: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub validation_losses: &'a [f64],
    pub validation_pass_rates: &'a [f64],
    /// 1-based; None: the last epoch was kept.
    pub best_epoch: Option<usize>,
    pub adapter: &'a std::path::Path,
    /// The run was stopped (cancelled) before its end; no adapter was kept.
    pub stopped: bool,
}

/// One event of a training run.
#[derive(Debug, Clone)]
pub enum TrainEvent<'a> {
    Plan(Plan<'a>),
    /// A remark worth showing (examples skipped, no metric and why).
    Note(String),
    /// A recorded job continues from its checkpoint.
    Resumed { job_id: &'a str, step: usize, epoch: usize },
    /// An optimizer step ended; `tokens_per_second` is the run's average so far.
    Step { info: &'a StepInfo, tokens_per_second: f64 },
    /// An epoch ended and was validated (and the best adapter kept so far).
    Epoch(&'a EpochInfo),
    Finished(Finished<'a>),
    /// A search's trial starts (1-based, of `of`).
    Trial { trial: usize, of: usize, change: &'a str },
    /// A search ended: its table of trials and the one kept.
    Searched { table: String, chosen: usize, recipe: String },
}

impl Plan<'_> {
    /// One line: the recipe and the run's shape.
    pub fn describe(&self) -> String {
        let s = self.settings;
        let accum = if s.grad_accum > 1 { format!(" x {} accumulated", s.grad_accum) } else { String::new() };
        let stop = s.early_stopping_patience.map(|p| format!(", early stop after {p} without progress")).unwrap_or_default();
        format!(
            "LoRA r={} alpha={} on {} ({} recipe): {} training / {} validation examples, up to {} epochs{stop}, best epoch by {}, batch {}{accum}, lr {} ({}), seed {}",
            s.lora.rank,
            s.lora.alpha,
            s.lora.targets.join(","),
            s.recipe,
            self.train_examples,
            self.validation_examples,
            s.epochs,
            if s.select_by == crate::SelectBy::Metric { "validation pass rate" } else { "validation loss" },
            s.batch_size,
            self.learning_rate,
            s.lr_schedule,
            s.seed
        )
    }
}

impl Finished<'_> {
    /// One line: what training did and where the adapter is.
    pub fn describe(&self) -> String {
        let rates = if self.validation_pass_rates.is_empty() { String::new() } else { format!(", pass rate {}", self.validation_pass_rates.iter().map(|x| format!("{:.1}%", 100.0 * x)).collect::<Vec<_>>().join(" -> ")) };
        let loss = match (self.first_loss, self.final_loss) {
            (Some(a), Some(b)) => format!("; loss {a:.3} -> {b:.3}"),
            (None, Some(b)) => format!("; final loss {b:.3}"),
            _ => String::new(),
        };
        format!(
            "trained {} steps in {:.0}s ({:.0} tok/s){loss}; validation loss {}{rates}; kept epoch {}; adapter: {}",
            self.steps,
            self.seconds,
            self.tokens_per_second,
            self.validation_losses.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" -> "),
            self.best_epoch.map(|e| e.to_string()).unwrap_or_else(|| "last".into()),
            self.adapter.display()
        )
    }
}

/// Receives a training run's events, in order.
pub trait TrainSink {
    fn event(&mut self, e: &TrainEvent<'_>);
}

/// Drops every event (library callers that only want the result).
pub struct NoSink;

impl TrainSink for NoSink {
    fn event(&mut self, _: &TrainEvent<'_>) {}
}
