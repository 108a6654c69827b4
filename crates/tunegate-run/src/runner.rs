//! Runs a plan. Work items are (prompt, provider, case, repeat) indices and
//! are rendered when they run, so memory stays flat however large the plan.

use crate::prepare::Prepared;
use crate::RunError;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tunegate_core::scorers::GraderReply;
use tunegate_core::{ProviderSpec, ResponseFacts};
use tunegate_providers::{Provider, ProviderError, Request, Response};
use tunegate_store::{CachedResponse, ResultRow, RunInfo, Store};
use crate::batch::BatchMode;
use tunegate_providers::batch::Answer;

/// Receives each result after it is committed to the store.
pub trait Sink: Send + Sync {
    fn on_start(&self, _run_id: &str, _total: u64, _already_done: u64) {}
    fn on_result(&self, row: &ResultRow);
}

#[derive(Clone)]
pub struct RunOptions {
    pub store_path: PathBuf,
    pub concurrency: usize,
    pub repeat: u32,
    pub use_cache: bool,
    /// Resume this run: skip what it already holds.
    pub resume: Option<String>,
    /// Retries after the first attempt, unless the provider sets its own.
    pub max_retries: u32,
    /// First backoff; doubles each attempt, with jitter, capped at 60 s.
    pub backoff_base: Duration,
    /// Set to stop starting new cases (Ctrl-C); finished ones stay stored.
    pub stop: Arc<AtomicBool>,
    /// Run only these prompt ids / provider names when non-empty.
    pub only_prompts: Vec<String>,
    pub only_providers: Vec<String>,
    pub kind: String,
    pub meta: Value,
    /// With `resume`: add this plan's items to that run even though the
    /// task state differs (the prompt lab adds each round of variants to
    /// one run; items the run already holds are not asked again).
    pub append: bool,
    /// Hand the calls the cache cannot answer to a batch file (export), or
    /// answer them from one (import), instead of calling the provider.
    pub batch: Option<crate::batch::BatchMode>,
}

impl RunOptions {
    pub fn new(store_path: PathBuf) -> Self {
        RunOptions {
            store_path,
            concurrency: 8,
            repeat: 1,
            use_cache: true,
            resume: None,
            max_retries: 4,
            backoff_base: Duration::from_millis(500),
            stop: Arc::new(AtomicBool::new(false)),
            only_prompts: vec![],
            only_providers: vec![],
            kind: "eval".into(),
            meta: json!({}),
            append: false,
            batch: None,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub planned: u64,
    /// Results this invocation added.
    pub completed: u64,
    /// Results the run already held when resumed.
    pub skipped: u64,
    pub cache_hits: u64,
    pub provider_calls: u64,
    pub retries: u64,
    pub errors: u64,
    /// Calls to `llm-rubric` graders (counted apart from the model's) and
    /// grades read from the cache.
    pub grader_calls: u64,
    pub grader_cache_hits: u64,
    pub interrupted: bool,
    pub wall_s: f64,
}

/// Spaces the start of calls to one provider to at most `rate` per second.
struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    async fn wait(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next = Instant::now().max(*next) + self.interval;
    }
}

struct ProviderSlot {
    provider: Arc<dyn Provider>,
    spec: ProviderSpec,
    limiter: Option<RateLimiter>,
}

enum WriteMsg {
    Row(Box<ResultRow>, Vec<(String, String, CachedResponse)>),
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    completed: AtomicU64,
}

/// The cache key: provider identity, generation params, the rendered
/// messages and the repeat index (so `--repeat 5` asks five times and a
/// re-run finds all five).
pub fn cache_key(provider_identity: &str, params: &tunegate_core::Params, messages: &[tunegate_core::Message], repeat: u32) -> String {
    let mut h = Sha256::new();
    h.update(provider_identity.as_bytes());
    h.update(b"\0");
    h.update(serde_json::to_string(params).unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.update(serde_json::to_string(messages).unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.update(repeat.to_le_bytes());
    hex::encode(h.finalize())
}

pub async fn run(prep: &Prepared, providers: Vec<(Arc<dyn Provider>, ProviderSpec)>, opts: RunOptions, sinks: Vec<Arc<dyn Sink>>) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let store = Store::open(&opts.store_path)?;
    let task = &prep.task;
    let prompt_idx: Vec<usize> = (0..prep.prompts.len()).filter(|&i| opts.only_prompts.is_empty() || opts.only_prompts.contains(&prep.prompts[i].id)).collect();
    let slots: Vec<Arc<ProviderSlot>> = providers
        .into_iter()
        .filter(|(p, _)| opts.only_providers.is_empty() || opts.only_providers.iter().any(|n| n == p.name()))
        .map(|(provider, spec)| {
            let limiter = spec.rate_limit.map(|r| RateLimiter { interval: Duration::from_secs_f64(1.0 / r), next: tokio::sync::Mutex::new(Instant::now()) });
            Arc::new(ProviderSlot { provider, spec, limiter })
        })
        .collect();
    if prompt_idx.is_empty() || slots.is_empty() {
        return Err(RunError::Resume("nothing to run: no prompt or provider matches the filters".into()));
    }
    let graders = Arc::new(build_graders(prep, &opts.store_path)?);
    let repeat = opts.repeat.max(1);
    let planned = (prompt_idx.len() * slots.len() * prep.eval.len()) as u64 * repeat as u64;

    // A new run, or the one we resume (which must be of the same task state).
    let (run_id, done): (String, HashSet<(String, String, String, u32)>) = match &opts.resume {
        Some(sel) => {
            let info = store.resolve_run(sel)?;
            if opts.append {
                store.set_run_status(&info.id, "running")?;
                let done = store.completed_keys(&info.id)?;
                let mut new = 0u64;
                for &pi in &prompt_idx {
                    for slot in &slots {
                        for case in prep.eval.iter() {
                            for r in 0..repeat {
                                if !done.contains(&(prep.prompts[pi].id.clone(), slot.provider.name().to_string(), case.id.clone(), r)) {
                                    new += 1;
                                }
                            }
                        }
                    }
                }
                store.set_run_planned(&info.id, info.planned + new)?;
                (info.id, done)
            } else {
            if info.config_hash != prep.config_hash {
                return Err(RunError::Resume(format!(
                    "run {} was made from a different task state (prompts, data or assertions changed since); start a new run instead of resuming",
                    info.id
                )));
            }
            if info.repeat != repeat {
                return Err(RunError::Resume(format!("run {} used --repeat {}; resume it with the same value", info.id, info.repeat)));
            }
            store.set_run_status(&info.id, "running")?;
            let done = store.completed_keys(&info.id)?;
            (info.id, done)
            }
        }
        None => {
            let id = Store::new_run_id();
            let mut meta = opts.meta.clone();
            meta["prompts"] = json!(prompt_idx.iter().map(|&i| &prep.prompts[i].id).collect::<Vec<_>>());
            meta["providers"] = json!(slots.iter().map(|s| s.provider.name()).collect::<Vec<_>>());
            meta["task_kind"] = json!(task.kind().as_str());
            meta["labels"] = json!(task.labels());
            store.create_run(&RunInfo {
                id: id.clone(),
                created_at: tunegate_store::now(),
                finished_at: None,
                status: "running".into(),
                kind: opts.kind.clone(),
                task_name: task.file.task.name.clone(),
                task_path: task.path.display().to_string(),
                config_hash: prep.config_hash.clone(),
                repeat,
                planned,
                meta,
            })?;
            (id, HashSet::new())
        }
    };
    {
        let mut store = store;
        let revs = tunegate_core::revision::revisions(task, &prep.eval, prep.examples.as_deref().map(|v| v.as_slice()));
        store.record_revisions(Some(&run_id), &revs.into_iter().map(|r| (r.kind, r.name, r.hash)).collect::<Vec<_>>())?;
    }
    for s in &sinks {
        s.on_start(&run_id, planned, done.len() as u64);
    }

    // The writer: one thread, one connection, group commits of whatever has
    // arrived. Sinks hear of a result only once it is durable.
    let (tx, rx) = std::sync::mpsc::sync_channel::<WriteMsg>(4096);
    let counters = Arc::new(Counters::default());
    let grader_counters = Arc::new(Counters::default());
    let writer = {
        let path = opts.store_path.clone();
        let sinks = sinks.clone();
        let counters = counters.clone();
        std::thread::spawn(move || -> Result<(), RunError> {
            let mut store = Store::open(&path)?;
            let mut rows = Vec::with_capacity(1024);
            let mut cache = Vec::with_capacity(1024);
            while let Ok(first) = rx.recv() {
                let push = |m: WriteMsg, rows: &mut Vec<ResultRow>, cache: &mut Vec<(String, String, CachedResponse)>| match m {
                    WriteMsg::Row(r, c) => {
                        rows.push(*r);
                        cache.extend(c);
                    }
                };
                push(first, &mut rows, &mut cache);
                while rows.len() < 2048 {
                    match rx.try_recv() {
                        Ok(m) => push(m, &mut rows, &mut cache),
                        Err(_) => break,
                    }
                }
                store.insert_results(&rows, &cache)?;
                counters.completed.fetch_add(rows.len() as u64, Ordering::Relaxed);
                for r in &rows {
                    for s in &sinks {
                        s.on_result(r);
                    }
                }
                rows.clear();
                cache.clear();
            }
            Ok(())
        })
    };

    // Cache reads share one connection; SQLite in WAL mode lets them run
    // beside the writer.
    let reader = Arc::new(Mutex::new(Store::open(&opts.store_path)?));
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let eval_path = Arc::new(task.eval_path().unwrap_or_default());
    let mut handles = tokio::task::JoinSet::new();
    let mut writer_failed = false;
    'plan: for &pi in &prompt_idx {
        for (slot_index, slot) in slots.iter().enumerate() {
            for ci in 0..prep.eval.len() {
                for r in 0..repeat {
                    let case = &prep.eval[ci];
                    if done.contains(&(prep.prompts[pi].id.clone(), slot.provider.name().to_string(), case.id.clone(), r)) {
                        continue;
                    }
                    if opts.stop.load(Ordering::Relaxed) {
                        break 'plan;
                    }
                    let permit = sem.clone().acquire_owned().await.expect("semaphore never closed");
                    // Reap finished tasks so the set stays small.
                    while let Some(res) = handles.try_join_next() {
                        if res.map(|ok: bool| !ok).unwrap_or(true) {
                            writer_failed = true;
                        }
                    }
                    if writer_failed {
                        break 'plan;
                    }
                    let job = Job {
                        prompts: prep.prompts.clone(),
                        eval: prep.eval.clone(),
                        pi,
                        ci,
                        repeat: r,
                        slot: slot.clone(),
                        slot_index,
                        scorer: prep.scorer.clone(),
                        graders: graders.clone(),
                        grader_counters: grader_counters.clone(),
                        run_id: run_id.clone(),
                        tx: tx.clone(),
                        reader: reader.clone(),
                        counters: counters.clone(),
                        opts: opts.clone(),
                        eval_path: eval_path.clone(),
                    };
                    handles.spawn(async move {
                        let ok = job.run().await;
                        drop(permit);
                        ok
                    });
                }
            }
        }
    }
    while handles.join_next().await.is_some() {}
    drop(tx);
    let write_result = writer.join().map_err(|_| RunError::Resume("the store writer panicked".into()))?;
    write_result?;

    let store = Store::open(&opts.store_path)?;
    let total = store.count_results(&run_id)?;
    let interrupted = total < store.get_run(&run_id)?.planned;
    // A run whose calls wait in a batch is pending, not interrupted.
    let status = match (interrupted, &opts.batch) {
        (false, _) => "complete",
        (true, Some(_)) if !opts.stop.load(Ordering::Relaxed) => "pending",
        (true, _) => "interrupted",
    };
    store.set_run_status(&run_id, status)?;
    Ok(RunOutcome {
        run_id,
        planned,
        completed: counters.completed.load(Ordering::Relaxed),
        skipped: done.len() as u64,
        cache_hits: counters.cache_hits.load(Ordering::Relaxed),
        provider_calls: counters.calls.load(Ordering::Relaxed),
        retries: counters.retries.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        grader_calls: grader_counters.calls.load(Ordering::Relaxed),
        grader_cache_hits: grader_counters.cache_hits.load(Ordering::Relaxed),
        interrupted,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

struct Job {
    prompts: Arc<Vec<tunegate_core::CompiledPrompt>>,
    eval: Arc<Vec<tunegate_core::Case>>,
    pi: usize,
    ci: usize,
    repeat: u32,
    slot: Arc<ProviderSlot>,
    slot_index: usize,
    scorer: tunegate_core::Scorer,
    graders: Arc<HashMap<String, Arc<ProviderSlot>>>,
    grader_counters: Arc<Counters>,
    run_id: String,
    tx: std::sync::mpsc::SyncSender<WriteMsg>,
    reader: Arc<Mutex<Store>>,
    counters: Arc<Counters>,
    opts: RunOptions,
    eval_path: Arc<PathBuf>,
}

impl Job {
    /// Returns false when the writer is gone (the run must stop).
    async fn run(self) -> bool {
        let prompt = &self.prompts[self.pi];
        let case = &self.eval[self.ci];
        let provider = &self.slot.provider;
        let mut row = ResultRow {
            run_id: self.run_id.clone(),
            prompt_id: prompt.id.clone(),
            provider: provider.name().to_string(),
            case_id: case.id.clone(),
            repeat: self.repeat,
            case_line: case.line as u64,
            input: case.input_text(),
            vars: Value::Object(case.vars.clone()),
            expected: case.expected.clone(),
            tags: case.tags.clone(),
            messages: Value::Null,
            assertions: json!([]),
            attempts: 0,
            ..Default::default()
        };
        let messages = match prompt.render(case, &self.eval_path) {
            Ok(m) => m,
            Err(e) => {
                row.error = Some(e.to_string());
                row.error_kind = Some("render".into());
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                return self.tx.send(WriteMsg::Row(Box::new(row), vec![])).is_ok();
            }
        };
        row.messages = serde_json::to_value(&messages).unwrap_or(Value::Null);
        let params = self.slot.spec.params.clone();
        let key = cache_key(&provider.identity(), &params, &messages, self.repeat);
        let id = || tunegate_providers::batch::custom_id(&self.run_id, &prompt.id, provider.name(), &case.id, self.repeat);
        // An imported answer wins over the cache: the call was exported
        // because the cache could not answer it then.
        let imported = match &self.opts.batch {
            Some(BatchMode::Import(x)) => x.take(&id()),
            _ => None,
        };
        let cached = if self.opts.use_cache && imported.is_none() { self.reader.lock().ok().and_then(|s| s.cache_get(&key).ok().flatten()) } else { None };
        let mut to_cache = None;
        let (response, latency_ms) = match cached {
            Some(c) => {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                row.cached = true;
                let resp = Response { output: c.output, prompt_tokens: c.prompt_tokens, completion_tokens: c.completion_tokens, cost_usd: c.cost_usd };
                (Ok(resp), c.latency_ms)
            }
            None => {
                let req = Request { messages, params };
                let (res, latency, attempts) = match (&self.opts.batch, imported) {
                    (None, _) => self.call_with_retries(&req).await,
                    (Some(BatchMode::Export(x)), _) => {
                        let (url, body) = provider.batch_request(&req);
                        let line = tunegate_providers::batch::request_line(&id(), url, &body);
                        x.push((self.pi, self.slot_index, self.ci, self.repeat), provider.name(), id(), req, line);
                        return true;
                    }
                    (Some(BatchMode::Import(_)), Some(Answer::Body(b))) => (provider.batch_response(&b), 0.0, 1),
                    (Some(BatchMode::Import(_)), Some(Answer::Failed(e))) => (Err(e), 0.0, 1),
                    // No answer (or one the batch never ran): still pending.
                    (Some(BatchMode::Import(_)), _) => return true,
                };
                row.attempts = attempts;
                if let Ok(r) = &res {
                    to_cache = Some((
                        key,
                        provider.name().to_string(),
                        CachedResponse { output: r.output.clone(), prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, cost_usd: r.cost_usd, latency_ms: latency },
                    ));
                }
                (res, latency)
            }
        };
        row.latency_ms = latency_ms;
        match response {
            Ok(resp) => {
                let facts = ResponseFacts { latency_ms, completion_tokens: resp.completion_tokens, cost_usd: resp.cost_usd };
                let mut cache_entries: Vec<(String, String, CachedResponse)> = to_cache.into_iter().collect();
                let grades = if self.scorer.has_graders(case) { self.grade(&resp.output, case, &mut cache_entries).await } else { HashMap::new() };
                let results = if self.scorer.has_exec() {
                    let (scorer, out, case) = (self.scorer.clone(), resp.output.clone(), case.clone());
                    tokio::task::spawn_blocking(move || scorer.score_graded(&out, &case, &facts, &grades)).await.unwrap_or_default()
                } else {
                    self.scorer.score_graded(&resp.output, case, &facts, &grades)
                };
                // A grader that failed or answered garbage has not graded:
                // the case is an error (counted apart), never a pass or a fail.
                let grader_error = results.iter().find_map(|r| r.detail.get("grader_error").and_then(|e| e.as_str()).map(|e| format!("{}: {e}", r.kind)));
                if let Some(e) = grader_error {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    row.error = Some(e);
                    row.error_kind = Some("grader".into());
                } else {
                    let (pass, score) = tunegate_core::scorers::combine(&results, &self.scorer.weights(case));
                    row.pass = Some(pass);
                    row.score = Some(score);
                }
                row.assertions = serde_json::to_value(&results).unwrap_or(Value::Null);
                row.output = Some(resp.output);
                row.prompt_tokens = resp.prompt_tokens;
                row.completion_tokens = resp.completion_tokens;
                row.cost_usd = resp.cost_usd;
                return self.tx.send(WriteMsg::Row(Box::new(row), cache_entries)).is_ok();
            }
            Err(e) => {
                // Recorded as an error, never scored as a model failure.
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                row.error = Some(e.to_string());
                row.error_kind = Some(e.kind().to_string());
            }
        }
        self.tx.send(WriteMsg::Row(Box::new(row), to_cache.into_iter().collect())).is_ok()
    }

    /// Calls the graders of this output's `llm-rubric` assertions, through
    /// the same cache and retries as the evaluated call. Their cost, tokens
    /// and cache state go into each assertion's detail.
    async fn grade(&self, output: &str, case: &tunegate_core::Case, cache_entries: &mut Vec<(String, String, CachedResponse)>) -> HashMap<usize, GraderReply> {
        let mut grades = HashMap::new();
        for req in self.scorer.grade_requests(output, case) {
            let req = match req {
                Ok(r) => r,
                Err((i, e)) => {
                    grades.insert(i, GraderReply { output: Err(e), detail: Value::Null });
                    continue;
                }
            };
            let Some(slot) = self.graders.get(&grader_key(&req.grader)) else {
                grades.insert(req.index, GraderReply { output: Err(format!("grader `{}` was not built", req.grader.id)), detail: Value::Null });
                continue;
            };
            let call = call_cached(slot, &self.reader, req.messages, 0, &self.opts, &self.grader_counters).await;
            let detail = json!({
                "grader": slot.provider.name(),
                "cached": call.cached,
                "attempts": call.attempts,
                "latency_ms": call.latency_ms,
                "prompt_tokens": call.result.as_ref().ok().and_then(|r| r.prompt_tokens),
                "completion_tokens": call.result.as_ref().ok().and_then(|r| r.completion_tokens),
                "cost_usd": call.result.as_ref().ok().and_then(|r| r.cost_usd),
            });
            // A malformed grade is not cached: the next run asks again.
            let parsed_ok = call.result.as_ref().map(|r| tunegate_core::judge::parse_grade(&r.output).is_ok()).unwrap_or(false);
            if parsed_ok {
                cache_entries.extend(call.to_cache);
            }
            grades.insert(req.index, GraderReply { output: call.result.map(|r| r.output).map_err(|e| e.to_string()), detail });
        }
        grades
    }

    async fn call_with_retries(&self, req: &Request) -> (Result<Response, ProviderError>, f64, u32) {
        call_with_retries(&self.slot, req, &self.opts, &self.counters).await
    }
}

/// One provider call with retries on transient errors, spaced by the
/// provider's rate limit.
async fn call_with_retries(slot: &ProviderSlot, req: &Request, opts: &RunOptions, counters: &Counters) -> (Result<Response, ProviderError>, f64, u32) {
    let max_retries = slot.spec.max_retries.unwrap_or(opts.max_retries);
    let mut attempt = 0u32;
    loop {
        if let Some(l) = &slot.limiter {
            l.wait().await;
        }
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let res = slot.provider.complete(req).await;
        let latency = t0.elapsed().as_secs_f64() * 1000.0;
        attempt += 1;
        match res {
            Err(e) if e.retryable() && attempt <= max_retries && !opts.stop.load(Ordering::Relaxed) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(opts.backoff_base, attempt, e.retry_after())).await;
            }
            other => return (other, latency, attempt),
        }
    }
}

/// A call made through the cache: the response, whether it came from the
/// cache, and the cache entry to write when it did not (a success only).
pub struct CallOutcome {
    pub result: Result<Response, ProviderError>,
    pub latency_ms: f64,
    pub attempts: u32,
    pub cached: bool,
    pub to_cache: Option<(String, String, CachedResponse)>,
}

async fn call_cached(slot: &ProviderSlot, reader: &Mutex<Store>, messages: Vec<tunegate_core::Message>, repeat: u32, opts: &RunOptions, counters: &Counters) -> CallOutcome {
    let params = slot.spec.params.clone();
    let key = cache_key(&slot.provider.identity(), &params, &messages, repeat);
    let cached = if opts.use_cache { reader.lock().ok().and_then(|s| s.cache_get(&key).ok().flatten()) } else { None };
    if let Some(c) = cached {
        counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        let resp = Response { output: c.output, prompt_tokens: c.prompt_tokens, completion_tokens: c.completion_tokens, cost_usd: c.cost_usd };
        return CallOutcome { result: Ok(resp), latency_ms: c.latency_ms, attempts: 0, cached: true, to_cache: None };
    }
    let req = Request { messages, params };
    let (result, latency_ms, attempts) = call_with_retries(slot, &req, opts, counters).await;
    let to_cache = result.as_ref().ok().map(|r| {
        (key, slot.provider.name().to_string(), CachedResponse { output: r.output.clone(), prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, cost_usd: r.cost_usd, latency_ms })
    });
    CallOutcome { result, latency_ms, attempts, cached: false, to_cache }
}

fn grader_key(spec: &ProviderSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// Builds every grader the task's and the cases' `llm-rubric` assertions
/// name, once per run; a grader that cannot be built (a missing API key)
/// stops the run before the first call, like any provider.
fn build_graders(prep: &Prepared, store_path: &std::path::Path) -> Result<HashMap<String, Arc<ProviderSlot>>, RunError> {
    let mut out = HashMap::new();
    let asserts = prep.task.effective_asserts();
    let all = asserts.iter().chain(prep.eval.iter().flat_map(|c| c.asserts.iter()));
    for a in all {
        let Some(g) = &a.provider else { continue };
        let spec = g.provider_spec();
        let key = grader_key(&spec);
        if out.contains_key(&key) {
            continue;
        }
        let (provider, _) = crate::build_provider(&spec, &prep.task.dir, store_path).map_err(|e| RunError::Provider(format!("{}: grader `{}`: {e}", prep.task.path.display(), spec.id)))?;
        let limiter = spec.rate_limit.map(|r| RateLimiter { interval: Duration::from_secs_f64(1.0 / r), next: tokio::sync::Mutex::new(Instant::now()) });
        out.insert(key, Arc::new(ProviderSlot { provider, spec, limiter }));
    }
    Ok(out)
}

/// A provider called the way the runner calls: rate limit, retries with
/// backoff, and the response cache of the store. Judges (`compare
/// --judge`) and suggestions (`label --suggest`) use it, so their calls are
/// cached, retried and counted like every evaluated case.
pub struct Caller {
    slot: ProviderSlot,
    reader: Mutex<Store>,
    opts: RunOptions,
    counters: Counters,
    /// (US$ of the calls made, whether a call had no known price).
    cost: Mutex<(f64, bool)>,
}

/// What a [`Caller`] did: calls made, cache hits, retries.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CallerStats {
    pub provider_calls: u64,
    pub cache_hits: u64,
    pub retries: u64,
    /// What the calls made cost (answers from the cache cost nothing);
    /// None when the provider's price is unknown.
    pub cost_usd: Option<f64>,
}

impl Caller {
    pub fn new(provider: Arc<dyn Provider>, spec: ProviderSpec, opts: RunOptions) -> Result<Caller, RunError> {
        let limiter = spec.rate_limit.map(|r| RateLimiter { interval: Duration::from_secs_f64(1.0 / r), next: tokio::sync::Mutex::new(Instant::now()) });
        let reader = Mutex::new(Store::open(&opts.store_path)?);
        Ok(Caller { slot: ProviderSlot { provider, spec, limiter }, reader, opts, counters: Counters::default(), cost: Mutex::new((0.0, false)) })
    }

    pub fn name(&self) -> &str {
        self.slot.provider.name()
    }

    /// Calls (or reads the cache) and writes a successful answer to the
    /// cache unless `cache_if` rejects it (a malformed verdict is asked again
    /// next time).
    pub async fn call(&self, messages: Vec<tunegate_core::Message>, cache_if: impl Fn(&str) -> bool) -> Result<CallOutcome, RunError> {
        let out = call_cached(&self.slot, &self.reader, messages, 0, &self.opts, &self.counters).await;
        if let (false, Ok(r)) = (out.cached, &out.result) {
            if let Ok(mut c) = self.cost.lock() {
                match r.cost_usd {
                    Some(x) => c.0 += x,
                    None => c.1 = true,
                }
            }
        }
        if let (Some(c), Ok(r)) = (&out.to_cache, &out.result) {
            if cache_if(&r.output) {
                let mut store = self.reader.lock().map_err(|_| RunError::Resume("the store lock was poisoned".into()))?;
                store.insert_results(&[], std::slice::from_ref(c))?;
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> CallerStats {
        let (cost, unknown) = self.cost.lock().map(|c| *c).unwrap_or((0.0, true));
        CallerStats {
            provider_calls: self.counters.calls.load(Ordering::Relaxed),
            cache_hits: self.counters.cache_hits.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            cost_usd: if unknown { None } else { Some(cost) },
        }
    }
}

/// Exponential backoff with full jitter in [0.5, 1.5) of the step, capped at
/// 60 s; a server's Retry-After wins when it asks for longer.
pub fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let step = base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let jittered = (step * rand::thread_rng().gen_range(0.5..1.5)).min(60.0);
    let d = Duration::from_secs_f64(jittered);
    match retry_after {
        Some(ra) if ra > d => ra,
        _ => d,
    }
}
