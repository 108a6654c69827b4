//! The progress bar is a sink: it hears of each result once it is stored.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tunegate_run::Sink;
use tunegate_store::ResultRow;
use tunegate_tune::events::{TrainEvent, TrainSink};

pub struct ProgressSink {
    bar: ProgressBar,
}

impl ProgressSink {
    pub fn new(enabled: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} cases · {per_sec} · ETA {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        ProgressSink { bar }
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Sink for ProgressSink {
    fn on_start(&self, run_id: &str, total: u64, already_done: u64) {
        self.bar.set_length(total);
        self.bar.set_position(already_done);
        self.bar.reset_eta();
        self.bar.set_message(format!("run {run_id}"));
    }
    fn on_result(&self, _row: &ResultRow) {
        self.bar.inc(1);
    }
}

/// Training on the terminal: the plan, a bar over the optimizer steps with
/// the loss and tokens/s, one line per validated epoch, a summary at the end.
pub struct TrainProgress {
    bar: ProgressBar,
}

impl TrainProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("training [{bar:30}] step {pos}/{len} · {msg} · ETA {eta}").unwrap().progress_chars("=> "));
        TrainProgress { bar }
    }

    /// A line above the bar (a hidden bar, when stderr is not a terminal, drops println).
    fn line(&self, s: String) {
        if self.bar.is_hidden() {
            eprintln!("{s}");
        } else {
            self.bar.println(s);
        }
    }
}

impl TrainSink for TrainProgress {
    fn event(&mut self, e: &TrainEvent<'_>) {
        match e {
            TrainEvent::Plan(p) => {
                self.line(p.describe());
                self.bar.set_length(p.total_steps as u64);
                self.bar.set_position(p.done_steps as u64);
            }
            TrainEvent::Note(n) => self.line(format!("note: {n}")),
            TrainEvent::Resumed { job_id, step, epoch } => self.line(format!("resuming job {job_id} at step {step} (epoch {})", epoch + 1)),
            TrainEvent::Step { info, tokens_per_second } => {
                self.bar.set_message(format!("loss {:.3} · {:.0} tok/s", info.loss, tokens_per_second));
                self.bar.inc(1);
            }
            TrainEvent::Epoch(e) => {
                if let Some(v) = e.val_loss {
                    let m = e.val_metric.map(|m| format!(", pass rate {:.1}%", 100.0 * m)).unwrap_or_default();
                    let best = if e.best_epoch == Some(e.epoch + 1) { " (best so far)" } else { "" };
                    self.line(format!("epoch {}: validation loss {v:.4}{m}{best}", e.epoch + 1));
                }
            }
            TrainEvent::Finished(f) => {
                self.bar.finish_and_clear();
                eprintln!("{}", f.describe());
            }
            TrainEvent::Trial { trial, of, change } => self.line(format!("search: trial {trial} of {of} ({change})")),
            TrainEvent::Searched { table, chosen, recipe } => self.line(format!("search: trials on the validation set (never the eval set)\n{table}kept trial {chosen}: {recipe}")),
        }
    }
}
