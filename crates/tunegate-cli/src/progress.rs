//! The progress bar is a sink: it hears of each result once it is stored.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tunegate_run::Sink;
use tunegate_store::ResultRow;

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
