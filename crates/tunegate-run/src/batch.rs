//! Batch evaluation: the runner's own plan, cache and scoring, with the
//! calls handed to a file instead of made one by one. Exporting writes each
//! call the cache cannot answer as a line of OpenAI's Batch input format and
//! leaves it pending in the run; importing answers pending calls from an
//! engine's output file and scores them exactly as live answers, so a run
//! can be finished by any mix of batches and live `--resume`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tunegate_providers::batch::{Answer, OutputFile};

/// How the runner makes the calls the cache cannot answer.
#[derive(Clone)]
pub enum BatchMode {
    /// Write them to the exporter and leave them pending.
    Export(std::sync::Arc<Exporter>),
    /// Answer them from an output file; those it lacks stay pending.
    Import(std::sync::Arc<Importer>),
}

/// The plan position of a call, so the file lists calls in plan order
/// however the runner's tasks finish.
pub(crate) type Order = (usize, usize, usize, u32);

/// Collects the request lines of an export.
#[derive(Default)]
pub struct Exporter {
    lines: Mutex<Vec<(Order, String)>>,
}

impl Exporter {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&self, order: Order, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            l.push((order, line));
        }
    }

    /// The lines in plan order.
    pub fn lines(&self) -> Vec<String> {
        let mut l = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        l.into_iter().map(|(_, s)| s).collect()
    }
}

/// Hands out the answers of an output file, each at most once.
pub struct Importer {
    answers: Mutex<HashMap<String, Answer>>,
    duplicates: Vec<String>,
    answered: AtomicU64,
    failed: AtomicU64,
    not_run: AtomicU64,
}

/// What an import did, for the user.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    /// Pending calls answered with a 200 and scored.
    pub answered: u64,
    /// Pending calls answered with a non-200 status or an `error` line:
    /// stored as provider errors.
    pub errors: u64,
    /// Pending calls the batch never ran (expired, cancelled): still pending.
    pub not_run: u64,
    /// Ids in the file that match no pending call of the run (already
    /// imported, or from another run or plan).
    pub unknown: Vec<String>,
    /// Ids that came more than once (the first answer was used).
    pub duplicates: Vec<String>,
}

impl Importer {
    pub fn new(file: OutputFile) -> Self {
        Importer {
            answers: Mutex::new(file.answers),
            duplicates: file.duplicates,
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            not_run: AtomicU64::new(0),
        }
    }

    /// The answer for `id`, counted; None leaves the call pending.
    pub(crate) fn take(&self, id: &str) -> Option<Answer> {
        let a = self.answers.lock().ok()?.remove(id)?;
        let counter = match &a {
            Answer::Body(_) => &self.answered,
            Answer::Failed(_) => &self.failed,
            Answer::NotRun(_) => &self.not_run,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match a {
            Answer::NotRun(_) => None,
            other => Some(other),
        }
    }

    pub fn report(&self) -> ImportReport {
        let mut unknown: Vec<String> = self.answers.lock().map(|a| a.keys().cloned().collect()).unwrap_or_default();
        unknown.sort();
        ImportReport {
            answered: self.answered.load(Ordering::Relaxed),
            errors: self.failed.load(Ordering::Relaxed),
            not_run: self.not_run.load(Ordering::Relaxed),
            unknown,
            duplicates: self.duplicates.clone(),
        }
    }
}
