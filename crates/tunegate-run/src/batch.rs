//! Batch evaluation: the runner's own plan, cache and scoring, with the
//! calls handed to a file instead of made one by one. Exporting writes each
//! call the cache cannot answer as a line of OpenAI's Batch input format and
//! leaves it pending in the run; importing answers pending calls from an
//! engine's output file and scores them exactly as live answers, so a run
//! can be finished by any mix of batches and live `--resume`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tunegate_providers::batch::{read_output, Answer, BatchApi, BatchStatus, OutputFile};
use tunegate_providers::ProviderError;

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

/// One exported call: its provider, id, request and batch-file line.
#[derive(Clone)]
pub(crate) struct Item {
    provider: String,
    id: String,
    request: tunegate_providers::Request,
    line: String,
}

/// Collects the calls of an export.
#[derive(Default)]
pub struct Exporter {
    items: Mutex<Vec<(Order, Item)>>,
}

impl Exporter {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&self, order: Order, provider: &str, id: String, request: tunegate_providers::Request, line: String) {
        if let Ok(mut l) = self.items.lock() {
            l.push((order, Item { provider: provider.to_string(), id, request, line }));
        }
    }

    fn sorted(&self) -> Vec<Item> {
        let mut l = self.items.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        l.into_iter().map(|(_, i)| i).collect()
    }

    /// The batch-file lines in plan order.
    pub fn lines(&self) -> Vec<String> {
        self.sorted().into_iter().map(|i| i.line).collect()
    }

    /// The providers with exported calls, in plan order.
    pub fn providers(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for i in self.sorted() {
            if !out.contains(&i.provider) {
                out.push(i.provider);
            }
        }
        out
    }

    /// A provider's calls as (custom id, request), for its batch endpoint.
    pub fn requests(&self, provider: &str) -> Vec<(String, tunegate_providers::Request)> {
        self.sorted().into_iter().filter(|i| i.provider == provider).map(|i| (i.id, i.request)).collect()
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

/// Polls a vendor batch until it ends, reporting each status. Lost contact
/// is retried with the runner's backoff; after `max_failures` in a row it
/// stops watching with the error (the batch goes on at the vendor and stays
/// recorded in the run, so `--attach` picks it up again).
pub async fn watch(api: &dyn BatchApi, id: &str, interval: std::time::Duration, max_failures: u32, on: &mut dyn FnMut(&BatchStatus)) -> Result<BatchStatus, ProviderError> {
    let mut failures = 0u32;
    loop {
        match api.status(id).await {
            Ok(st) => {
                failures = 0;
                on(&st);
                if st.ended {
                    return Ok(st);
                }
                tokio::time::sleep(interval).await;
            }
            Err(e) if failures + 1 < max_failures && (e.retryable() || matches!(e, ProviderError::BadResponse(_))) => {
                failures += 1;
                tokio::time::sleep(crate::runner::backoff(interval, failures, e.retry_after())).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Everything the ended batches answered, as one output file.
pub async fn collect(batches: &[(&dyn BatchApi, BatchStatus)]) -> Result<OutputFile, ProviderError> {
    let mut text = String::new();
    for (api, st) in batches {
        if let Some(e) = &st.error {
            return Err(ProviderError::Batch { code: st.status.clone(), message: format!("batch {}: {e}", st.id) });
        }
        if !st.results.is_empty() {
            text.push_str(&api.results(st).await?);
        }
    }
    read_output(&text).map_err(|e| ProviderError::BadResponse(format!("batch results, {e}")))
}
