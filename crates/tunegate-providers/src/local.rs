//! `local:NAME|PATH`: the embedded model, in this process.
//!
//! One model per file is loaded once per process and shared. A worker
//! thread owns it and batches continuously: requests from concurrent cases
//! (or `serve`'s clients) decode together, one forward call per step for
//! all of them, and a new request joins at the next step instead of
//! waiting for the batch to end, so `--concurrency` turns into batch size.

use crate::{Provider, ProviderError, Request, Response};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tunegate_model::engine::{Decoder, GenParams, Generation, LocalModel};
use tunegate_model::sample::SamplingParams;

/// Most sequences decoded together in one batch.
const MAX_BATCH: usize = 16;

/// What a finished request returns.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `stop`, `length` or `cancelled`.
    pub finish_reason: String,
    /// The generated tokens with their log-probabilities and (when asked
    /// for with `GenParams::top_logprobs`) the most likely alternatives.
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
}

/// A piece of a streamed answer: new text, and the tokens generated since
/// the previous piece with their log-probabilities (and alternatives when
/// asked for), so a stream can carry OpenAI's per-chunk `logprobs`. Tokens
/// still held back at the end (a stop sequence) come with the completion.
#[derive(Debug, Clone, Default)]
pub struct Piece {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
}

impl Piece {
    fn new(text: &str, g: &Generation, from: usize) -> Piece {
        let from = from.min(g.tokens.len());
        Piece { text: text.to_string(), tokens: g.tokens[from..].to_vec(), logprobs: g.logprobs[from..].to_vec(), top_logprobs: g.top_logprobs.get(from..).map(<[_]>::to_vec).unwrap_or_default() }
    }
}

/// One request to the model thread.
pub struct Job {
    pub tokens: Vec<u32>,
    pub params: GenParams,
    /// Score these continuations instead of generating; the best one wins.
    pub choices: Option<Vec<String>>,
    /// Receives the answer piece by piece as it is generated (streaming);
    /// dropping the receiver stops the generation.
    pub stream: Option<tokio::sync::mpsc::UnboundedSender<Piece>>,
    pub reply: tokio::sync::oneshot::Sender<Result<Completion, String>>,
}

/// A handle on the process-wide model thread for one model file.
pub struct LocalEngine {
    tx: Mutex<mpsc::Sender<Job>>,
    pub model: Arc<LocalModel>,
    pub load: Arc<Load>,
}

type Key = (PathBuf, Option<PathBuf>);

/// Engines with an adapter kept loaded at once (default 4, enough for an
/// eval comparing several tuned models). Each holds its own copy of the
/// base weights (about 300 MB for the embedded model): past the bound the
/// least recently used is let go, and loaded again (a second or so) when
/// asked for again. `serve` lowers it (`--max-tuned-loaded`).
static MAX_ADAPTER_ENGINES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4);

/// Loaded engines with when each was last asked for, the most recently
/// used last.
type Registry = Vec<(Key, Arc<LocalEngine>, std::time::Instant)>;

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(vec![]))
}

impl LocalEngine {
    /// The engine for a model file, loading it on first use (once per process).
    pub fn get(path: &Path) -> Result<Arc<LocalEngine>, ProviderError> {
        Self::get_with(path, None)
    }

    /// The engine for a model file with a LoRA adapter applied.
    pub fn get_with(path: &Path, adapter: Option<&Path>) -> Result<Arc<LocalEngine>, ProviderError> {
        let key = (path.to_path_buf(), adapter.map(Path::to_path_buf));
        let mut reg = registry().lock().unwrap();
        if let Some(i) = reg.iter().position(|(k, _, _)| *k == key) {
            let (k, w, _) = reg.remove(i);
            reg.push((k, w.clone(), std::time::Instant::now()));
            return Ok(w);
        }
        // The model is loaded on its own thread, which holds it to the end:
        // its weights are allocated and freed by one thread, so when an
        // idle tuned model is let go the allocator can give the memory back
        // (freed from another thread, it stayed with the allocator).
        let (tx, rx) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = mpsc::sync_channel(1);
        let load = Arc::new(Load::default());
        let l = load.clone();
        let (p, a) = (path.to_path_buf(), adapter.map(Path::to_path_buf));
        std::thread::Builder::new()
            .name("tunegate-local-model".into())
            .spawn(move || match LocalModel::load_with_adapter(&p, a.as_deref()) {
                Ok(m) => {
                    let m = Arc::new(m);
                    if loaded_tx.send(Ok(m.clone())).is_ok() {
                        serve(m, rx, l);
                    }
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| ProviderError::Config(format!("cannot start the model thread: {e}")))?;
        let model = loaded_rx
            .recv()
            .map_err(|_| ProviderError::Config("the model thread stopped while loading".into()))?
            .map_err(|e| ProviderError::Config(format!("cannot load the local model {}{}: {e}", path.display(), adapter.map(|a| format!(" with adapter {}", a.display())).unwrap_or_default())))?;
        let w = Arc::new(LocalEngine { tx: Mutex::new(tx), model, load });
        reg.push((key, w.clone(), std::time::Instant::now()));
        // An evicted engine's thread ends (and its weights are freed) once
        // the requests holding it are answered.
        while reg.iter().filter(|(k, _, _)| k.1.is_some()).count() > MAX_ADAPTER_ENGINES.load(std::sync::atomic::Ordering::Relaxed).max(1) {
            let oldest = reg.iter().position(|(k, _, _)| k.1.is_some()).unwrap_or(0);
            reg.remove(oldest);
        }
        Ok(w)
    }

    /// Lets go of the engines with an adapter that nobody asked for in
    /// `idle` (serve's `--tuned-keep-alive`): a tuned model trained and
    /// tried once does not hold its ~0.4 GB for the life of the server. It
    /// loads again, in about a second, when next asked for. Returns how
    /// many were let go.
    pub fn unload_idle(idle: std::time::Duration) -> usize {
        let mut reg = registry().lock().unwrap();
        let before = reg.len();
        reg.retain(|(k, _, used)| k.1.is_none() || used.elapsed() < idle);
        before - reg.len()
    }

    /// How many engines with an adapter stay loaded at once (at least 1).
    pub fn set_max_adapter_engines(n: usize) {
        MAX_ADAPTER_ENGINES.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues a job; the answer arrives on the job's `reply`.
    pub fn submit(&self, job: Job) -> Result<(), ProviderError> {
        self.tx.lock().unwrap().send(job).map_err(|_| ProviderError::Exec("the model thread stopped".into()))
    }

    /// Generates (or scores `choices`) for a text prompt.
    pub async fn complete(&self, text: &str, params: GenParams, choices: Option<Vec<String>>, stream: Option<tokio::sync::mpsc::UnboundedSender<Piece>>) -> Result<Completion, ProviderError> {
        let tokens = self.model.tokenizer.encode(text, true, false);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job { tokens, params, choices, stream, reply: tx })?;
        rx.await.map_err(|_| ProviderError::Exec("the model thread stopped".into()))?.map_err(ProviderError::Exec)
    }
}

/// Prompt tokens prefilled per decoding step while other sequences decode:
/// a long prompt delays everyone else's next token by at most one forward
/// call of this many tokens.
const PREFILL_PER_STEP: usize = 128;

/// The model thread: continuous batching. Requests join the running batch
/// at the next decoding step (at most [`MAX_BATCH`] at once, the rest
/// wait in arrival order), leave it when done, and are dropped at the next
/// step once their caller is gone (the reply's receiver dropped, or a
/// stream's). Requests that score `choices` are answered between steps.
fn serve(model: Arc<LocalModel>, rx: mpsc::Receiver<Job>, load: Arc<Load>) {
    let mut d = Decoder::default();
    let mut waiting: std::collections::VecDeque<Job> = Default::default();
    let mut live: HashMap<u64, Job> = HashMap::new();
    // Per streaming sequence: how many of its tokens went out with pieces.
    let mut streamed: HashMap<u64, usize> = HashMap::new();
    let mut next_key = 0u64;
    loop {
        if d.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => return,
            }
            // Give concurrent cases a moment to join (an eval's cases
            // arrive together and share their prompt's prefix).
            let deadline = std::time::Instant::now() + Duration::from_millis(3);
            while waiting.len() < MAX_BATCH {
                match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                    Ok(j) => waiting.push_back(j),
                    Err(_) => break,
                }
            }
        }
        while let Ok(j) = rx.try_recv() {
            waiting.push_back(j);
        }
        waiting.retain(|j| !j.reply.is_closed());
        for key in d.keys() {
            if live.get(&key).is_none_or(|j| j.reply.is_closed()) {
                d.cancel(key);
                live.remove(&key);
            }
        }
        let (mut scoring, rest): (Vec<Job>, Vec<Job>) = waiting.drain(..).partition(|j| j.choices.is_some());
        waiting.extend(rest);
        while !scoring.is_empty() {
            let chunk: Vec<Job> = scoring.drain(..scoring.len().min(MAX_BATCH)).collect();
            let asks: Vec<Ask> = chunk.iter().map(|j| Ask { tokens: j.tokens.clone(), params: j.params.clone(), choices: j.choices.clone() }).collect();
            let answers = answer_batch(&model, &asks, &mut |i: usize, delta: &str| chunk[i].stream.as_ref().is_none_or(|s| s.send(Piece { text: delta.to_string(), ..Default::default() }).is_ok()));
            for (j, r) in chunk.into_iter().zip(answers) {
                let _ = j.reply.send(r);
            }
        }
        let n = MAX_BATCH.saturating_sub(d.len()).min(waiting.len());
        let joining: Vec<Job> = waiting.drain(..n).collect();
        if !joining.is_empty() {
            let seqs = joining.iter().enumerate().map(|(i, j)| (next_key + i as u64, j.tokens.clone(), j.params.clone())).collect();
            for ((i, j), r) in joining.into_iter().enumerate().zip(model.admit(&mut d, seqs)) {
                match r {
                    Ok(()) => {
                        live.insert(next_key + i as u64, j);
                    }
                    Err(e) => {
                        let _ = j.reply.send(Err(e.to_string()));
                    }
                }
            }
            next_key += MAX_BATCH as u64;
        }
        load.set(d.len(), waiting.len());
        if d.is_empty() {
            continue;
        }
        let mut on_text = |k: u64, delta: &str, g: &Generation| {
            let Some(s) = live.get(&k).and_then(|j| j.stream.as_ref()) else { return true };
            let from = streamed.insert(k, g.tokens.len()).unwrap_or(0);
            s.send(Piece::new(delta, g, from)).is_ok()
        };
        match model.step(&mut d, PREFILL_PER_STEP, &mut on_text) {
            Ok(done) => {
                for (k, g) in done {
                    if let Some(j) = live.remove(&k) {
                        let _ = j.reply.send(completion(g));
                    }
                }
            }
            Err(e) => {
                d = Decoder::default();
                for (_, j) in live.drain() {
                    let _ = j.reply.send(Err(e.to_string()));
                }
            }
        }
        streamed.retain(|k, _| live.contains_key(k));
        load.set(d.len(), waiting.len());
    }
}

fn completion(g: Generation) -> Result<Completion, String> {
    Ok(Completion { text: g.text, prompt_tokens: g.prompt_tokens, completion_tokens: g.tokens.len(), finish_reason: g.finish_reason, tokens: g.tokens, logprobs: g.logprobs, top_logprobs: g.top_logprobs })
}

/// How busy a model thread is: sequences in its batch and requests
/// waiting for a place (what `serve`'s `/health` reports).
#[derive(Default)]
pub struct Load {
    running: std::sync::atomic::AtomicUsize,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Load {
    fn set(&self, running: usize, waiting: usize) {
        self.running.store(running, std::sync::atomic::Ordering::Relaxed);
        self.waiting.store(waiting, std::sync::atomic::Ordering::Relaxed);
    }
    /// (running, waiting).
    pub fn get(&self) -> (usize, usize) {
        (self.running.load(std::sync::atomic::Ordering::Relaxed), self.waiting.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One request as the model thread sees it.
pub struct Ask {
    pub tokens: Vec<u32>,
    pub params: GenParams,
    /// Score these continuations instead of generating; the best one wins.
    pub choices: Option<Vec<String>>,
}

/// Answers requests that arrived together: those with `choices` are scored
/// in one batch, the rest generated in one batch (one forward call per
/// decoding step for all). `on_text(i, delta)` hears request i's text as it
/// is produced and returns false to stop it. Answers come back in order.
/// The model thread and the validation metric of a training run both call
/// this, so both answer exactly as an eval does.
pub fn answer_batch(model: &LocalModel, asks: &[Ask], on_text: &mut dyn FnMut(usize, &str) -> bool) -> Vec<Result<Completion, String>> {
    let mut out: Vec<Option<Result<Completion, String>>> = (0..asks.len()).map(|_| None).collect();
    let (choice_idx, gen_idx): (Vec<usize>, Vec<usize>) = (0..asks.len()).partition(|&i| asks[i].choices.is_some());
    if !choice_idx.is_empty() {
        let inputs: Vec<(Vec<u32>, Vec<String>)> = choice_idx.iter().map(|&i| (asks[i].tokens.clone(), asks[i].choices.clone().unwrap_or_default())).collect();
        match model.score_choices_batch(&inputs) {
            Ok(all) => {
                for ((&i, (_, choices)), scores) in choice_idx.iter().zip(&inputs).zip(all) {
                    let best = scores.iter().enumerate().max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal)).map(|(k, _)| k).unwrap_or(0);
                    let label = choices[best].trim().to_string();
                    on_text(i, &label);
                    let n = model.tokenizer.encode(&choices[best], false, false).len();
                    out[i] = Some(Ok(Completion { text: label, prompt_tokens: asks[i].tokens.len(), completion_tokens: n, finish_reason: "stop".into(), tokens: vec![], logprobs: vec![], top_logprobs: vec![] }));
                }
            }
            Err(e) => {
                for &i in &choice_idx {
                    out[i] = Some(Err(e.to_string()));
                }
            }
        }
    }
    if !gen_idx.is_empty() {
        let inputs: Vec<(Vec<u32>, GenParams)> = gen_idx.iter().map(|&i| (asks[i].tokens.clone(), asks[i].params.clone())).collect();
        let mut on_gen = |k: usize, delta: &str| on_text(gen_idx[k], delta);
        match model.generate_batch_stream(&inputs, &mut on_gen) {
            Ok(gens) => {
                for (&i, g) in gen_idx.iter().zip(gens) {
                    out[i] = Some(completion(g));
                }
            }
            Err(e) => {
                for &i in &gen_idx {
                    out[i] = Some(Err(e.to_string()));
                }
            }
        }
    }
    out.into_iter().map(|r| r.unwrap_or_else(|| Err("no answer".into()))).collect()
}

/// The request for `text` under a task's params: free generation, or, with
/// `choices`, label scoring (default) or constrained decoding
/// (`choice_mode: decode`).
fn ask(model: &LocalModel, text: &str, p: &tunegate_core::Params) -> Ask {
    let tokens = model.tokenizer.encode(text, true, false);
    match (&p.choices, p.choice_mode.unwrap_or_default()) {
        (None, _) => Ask { tokens, params: gen_params(p), choices: None },
        (Some(labels), tunegate_core::ChoiceMode::Score) => Ask { tokens, params: gen_params(p), choices: Some(label_continuations(text, labels)) },
        (Some(labels), tunegate_core::ChoiceMode::Decode) => Ask { tokens, params: constrained(model, text, labels, gen_params(p)), choices: None },
    }
}

/// Answers prompt texts on a model the caller holds, exactly as this
/// provider answers a task's cases (the same requests, batches of the
/// model thread's size, labels trimmed): the validation metric of a
/// training run measures its epochs with it.
pub fn answer_all(model: &LocalModel, texts: &[String], p: &tunegate_core::Params) -> Result<Vec<String>, ProviderError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(MAX_BATCH) {
        let asks: Vec<Ask> = chunk.iter().map(|t| ask(model, t, p)).collect();
        for r in answer_batch(model, &asks, &mut |_, _| true) {
            let c = r.map_err(ProviderError::Exec)?;
            out.push(if p.choices.is_some() { c.text.trim().to_string() } else { c.text });
        }
    }
    Ok(out)
}

/// A completion for `text` under a task's params: free generation, or, with
/// `choices`, the label picked by scoring (default) or constrained decoding
/// (`choice_mode: decode`); a label comes back trimmed.
pub async fn complete_with_choices(engine: &LocalEngine, text: &str, p: &tunegate_core::Params) -> Result<Completion, ProviderError> {
    let a = ask(&engine.model, text, p);
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.submit(Job { tokens: a.tokens, params: a.params, choices: a.choices, stream: None, reply: tx })?;
    let mut c = rx.await.map_err(|_| ProviderError::Exec("the model thread stopped".into()))?.map_err(ProviderError::Exec)?;
    if p.choices.is_some() {
        c.text = c.text.trim().to_string();
    }
    Ok(c)
}

/// Generation settings from a task's provider params; local defaults:
/// greedy, 64 new tokens.
pub fn gen_params(p: &tunegate_core::Params) -> GenParams {
    GenParams {
        max_tokens: p.max_tokens.unwrap_or(64) as usize,
        sampling: SamplingParams { temperature: p.temperature.unwrap_or(0.0) as f32, top_k: p.top_k.map(|k| k as usize), top_p: p.top_p.map(|x| x as f32), seed: p.seed.unwrap_or(0) },
        stop: p.stop.clone(),
        top_logprobs: 0,
        allowed: vec![],
    }
}

/// The labels as a local model sees them after `prompt`: with a leading
/// space unless the prompt ends in whitespace.
pub fn label_continuations(prompt: &str, labels: &[String]) -> Vec<String> {
    let sep = if prompt.ends_with(char::is_whitespace) { "" } else { " " };
    labels.iter().map(|c| format!("{sep}{c}")).collect()
}

/// Settings for constrained decoding to `labels` (`choice_mode: decode`):
/// the labels' token sequences, and room for the longest.
pub fn constrained(model: &LocalModel, prompt: &str, labels: &[String], mut params: GenParams) -> GenParams {
    params.allowed = label_continuations(prompt, labels).iter().map(|l| model.tokenizer.encode(l, false, false)).collect();
    params.max_tokens = params.allowed.iter().map(Vec::len).max().unwrap_or(1);
    params.stop.clear();
    params
}

pub struct LocalProvider {
    name: String,
    /// The model as the task file names it (`gemma-3-270m` or a path).
    model: String,
    path: PathBuf,
    adapter: Option<PathBuf>,
    identity: String,
}

impl LocalProvider {
    /// `model` is `gemma-3-270m` (the embedded model) or a GGUF path. The
    /// file is loaded lazily, on the first call.
    /// `adapter`: a LoRA adapter directory (PEFT layout) applied on top,
    /// relative to the task's directory unless absolute.
    pub fn new(name: &str, model: &str, adapter: Option<&Path>, task_dir: &Path) -> Result<Self, ProviderError> {
        let adapter = match adapter {
            Some(a) => {
                let a = if a.is_absolute() { a.to_path_buf() } else { task_dir.join(a) };
                if !a.join("adapter_model.safetensors").is_file() {
                    return Err(ProviderError::Config(format!("no adapter at {} (expected adapter_model.safetensors and adapter_config.json)", a.display())));
                }
                Some(a)
            }
            None => None,
        };
        let candidate = task_dir.join(model);
        let path = if candidate.is_file() {
            candidate
        } else {
            tunegate_model::resolve_model(model).map_err(|e| ProviderError::Config(e.to_string()))?
        };
        // A file that is not a readable GGUF model is a configuration error
        // now, before a run is created, not one error per case later.
        tunegate_model::GgufFile::open(&path).map_err(|e| ProviderError::Config(format!("provider `{name}`: {e}")))?;
        if let Some(a) = &adapter {
            tunegate_model::gemma3::check_adapter_dir(&path, a).map_err(|e| ProviderError::Config(format!("provider `{name}`: {e}")))?;
        }
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // The adapter's content, not just its path, defines the cache identity.
        let adapter_id = adapter.as_ref().map(|a| {
            let m = std::fs::metadata(a.join("adapter_model.safetensors")).ok();
            format!("|{}|{:?}|{}", a.display(), m.as_ref().and_then(|m| m.modified().ok()), m.map(|m| m.len()).unwrap_or(0))
        });
        let model_name = Path::new(model).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| model.to_string());
        Ok(LocalProvider { name: name.into(), model: model_name, identity: format!("local|{}|{len}|numerics{}{}", path.display(), tunegate_model::NUMERICS_VERSION, adapter_id.unwrap_or_default()), path, adapter })
    }
}

/// Turns chat messages into the text a base model continues: the system
/// text, a blank line, the user text (base models have no chat template).
pub fn prompt_text(req: &Request) -> String {
    tunegate_core::template::flatten_messages(&req.messages)
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> String {
        self.identity.clone()
    }
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError> {
        let (path, adapter) = (self.path.clone(), self.adapter.clone());
        let engine = tokio::task::spawn_blocking(move || LocalEngine::get_with(&path, adapter.as_deref())).await.map_err(|e| ProviderError::Config(e.to_string()))??;
        let text = prompt_text(req);
        let c = complete_with_choices(&engine, &text, &req.params).await?;
        Ok(Response { output: c.text, prompt_tokens: Some(c.prompt_tokens as u64), completion_tokens: Some(c.completion_tokens as u64), cost_usd: Some(0.0) })
    }
    /// A text completion of exactly the prompt this provider reads (no
    /// chat template: the embedded model is a base model), for the model a
    /// server such as vLLM serves under this name: the base model's name,
    /// or the adapter's directory name (vLLM `--lora-modules NAME=DIR`).
    /// `choices` become vLLM's structured-output choice list.
    fn batch_request(&self, req: &Request) -> (&'static str, serde_json::Value) {
        let model = match &self.adapter {
            Some(a) => a.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            None => self.model.clone(),
        };
        let mut b = serde_json::json!({"model": model, "prompt": prompt_text(req)});
        crate::openai::sampling_fields(&mut b, &req.params);
        if let Some(c) = &req.params.choices {
            b["structured_outputs"] = serde_json::json!({"choice": c});
        }
        ("/v1/completions", b)
    }
    fn batch_response(&self, body: &serde_json::Value) -> Result<Response, ProviderError> {
        let (output, prompt_tokens, completion_tokens) = crate::batch::parse_completion(body)?;
        Ok(Response { output, prompt_tokens, completion_tokens, cost_usd: Some(0.0) })
    }
}
