//! `tunegate serve`'s OpenAI-compatible fine-tuning endpoints, backed by the
//! local LoRA trainer: POST /v1/files (purpose fine-tune), POST/GET
//! /v1/fine_tuning/jobs, GET .../{id}, .../{id}/events, .../{id}/checkpoints,
//! POST .../{id}/cancel. A finished job's model is served by name at
//! /v1/chat/completions. Files and adapters live under the state directory;
//! job records are kept in memory for the server's lifetime.

use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tunegate_tune::events::{TrainEvent, TrainSink};
use tunegate_tune::local::Run;
use tunegate_tune::{Overrides, Settings};

use crate::serve_http::{authorize, error};
use tunegate_providers::local::LocalEngine;

pub struct FtState {
    pub dir: PathBuf,
    pub model_path: PathBuf,
    counter: AtomicU64,
    files: Mutex<HashMap<String, (PathBuf, String, u64)>>,
    jobs: Mutex<Vec<Arc<Job>>>,
    /// Fine-tuned model name -> adapter directory.
    pub served: Mutex<HashMap<String, PathBuf>>,
    /// The model being served and fine-tuned, its name, the server's key.
    pub engine: Arc<LocalEngine>,
    pub model_id: String,
    pub api_key: Option<String>,
}

struct Job {
    id: String,
    model: String,
    training_file: String,
    created_at: i64,
    hyper: Value,
    status: Mutex<String>,
    fine_tuned_model: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
    events: Mutex<Vec<Value>>,
    checkpoints: Mutex<Vec<Value>>,
    trained_tokens: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Job {
    fn json(&self) -> Value {
        let err = self.error.lock().unwrap().clone();
        json!({
            "id": self.id, "object": "fine_tuning.job", "model": self.model, "created_at": self.created_at,
            "status": *self.status.lock().unwrap(), "fine_tuned_model": *self.fine_tuned_model.lock().unwrap(),
            "training_file": self.training_file, "hyperparameters": self.hyper,
            "trained_tokens": self.trained_tokens.load(Ordering::Relaxed),
            "error": err.map(|m| json!({"message": m, "code": "training_failed"})),
        })
    }
    fn event(&self, level: &str, message: String, data: Value) {
        let mut ev = self.events.lock().unwrap();
        let n = ev.len();
        ev.push(json!({"id": format!("ftevent-{}-{n}", self.id), "object": "fine_tuning.job.event", "created_at": chrono::Utc::now().timestamp(), "level": level, "message": message, "data": data}));
    }
}

impl FtState {
    pub fn new(dir: PathBuf, model_path: PathBuf, engine: Arc<LocalEngine>, model_id: String, api_key: Option<String>) -> std::io::Result<FtState> {
        std::fs::create_dir_all(dir.join("files"))?;
        std::fs::create_dir_all(dir.join("adapters"))?;
        // Adapters trained earlier stay servable across restarts.
        let mut served = HashMap::new();
        for e in std::fs::read_dir(dir.join("adapters"))?.flatten() {
            if let Ok(name) = std::fs::read_to_string(e.path().join("model_name")) {
                served.insert(name.trim().to_string(), e.path());
            }
        }
        Ok(FtState { dir, model_path, counter: AtomicU64::new(chrono::Utc::now().timestamp_millis() as u64), files: Mutex::new(HashMap::new()), jobs: Mutex::new(vec![]), served: Mutex::new(served), engine, model_id, api_key })
    }
    fn next(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
    fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap().iter().find(|j| j.id == id).cloned()
    }
}

fn bad(m: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", m)
}

pub async fn upload(State(ft): State<Arc<FtState>>, headers: HeaderMap, mut mp: Multipart) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    let (mut purpose, mut file) = (None, None);
    loop {
        match mp.next_field().await {
            Ok(Some(f)) => {
                let name = f.name().unwrap_or("").to_string();
                let filename = f.file_name().unwrap_or("upload.jsonl").to_string();
                match f.bytes().await {
                    Ok(b) if name == "purpose" => purpose = Some(String::from_utf8_lossy(&b).to_string()),
                    Ok(b) if name == "file" => file = Some((filename, b)),
                    Ok(_) => {}
                    Err(e) => return bad(format!("cannot read the upload: {e}")),
                }
            }
            Ok(None) => break,
            Err(e) => return bad(format!("malformed multipart body: {e}")),
        }
    }
    if purpose.as_deref() != Some("fine-tune") {
        return bad("`purpose` must be `fine-tune`");
    }
    let Some((filename, bytes)) = file else { return bad("no `file` part") };
    let text = String::from_utf8_lossy(&bytes).to_string();
    if let Err((line, m)) = tunegate_tune::examples::check_chat_jsonl(&text) {
        return bad(format!("{filename}: example {line} fails {m}"));
    }
    let id = ft.next("file");
    let path = ft.dir.join("files").join(format!("{id}.jsonl"));
    if let Err(e) = std::fs::write(&path, &bytes) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("cannot store the file: {e}"));
    }
    ft.files.lock().unwrap().insert(id.clone(), (path, filename.clone(), bytes.len() as u64));
    axum::Json(json!({"id": id, "object": "file", "bytes": bytes.len(), "created_at": chrono::Utc::now().timestamp(), "filename": filename, "purpose": "fine-tune"})).into_response()
}

pub async fn create(State(ft): State<Arc<FtState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("body is not valid JSON: {e}")),
    };
    let model = v["model"].as_str().unwrap_or("").to_string();
    if model != ft.model_id {
        return error(StatusCode::NOT_FOUND, "model_not_found", format!("this server fine-tunes `{}`, not `{model}`", ft.model_id));
    }
    let Some(tf) = v["training_file"].as_str() else { return bad("`training_file` is required") };
    let hyper = v.get("hyperparameters").cloned().unwrap_or(json!({}));
    let settings = match settings_for(&hyper) {
        Ok(s) => s,
        Err(e) => return bad(e.to_string()),
    };
    let Some((path, _, _)) = ft.files.lock().unwrap().get(tf).cloned() else { return bad(format!("no file `{tf}`")) };
    let suffix = v["suffix"].as_str().unwrap_or("tunegate").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect::<String>();
    let job = Arc::new(Job {
        id: ft.next("ftjob"),
        model,
        training_file: tf.to_string(),
        created_at: chrono::Utc::now().timestamp(),
        hyper: hyper.clone(),
        status: Mutex::new("queued".into()),
        fine_tuned_model: Mutex::new(None),
        error: Mutex::new(None),
        events: Mutex::new(vec![]),
        checkpoints: Mutex::new(vec![]),
        trained_tokens: AtomicU64::new(0),
        stop: Arc::new(AtomicBool::new(false)),
    });
    ft.jobs.lock().unwrap().push(job.clone());
    job.event("info", format!("Created fine-tuning job {}", job.id), json!({}));
    let engine = ft.engine.clone();
    let j = job.clone();
    let base = ft.model_id.clone();
    std::thread::spawn(move || {
        if let Err(e) = run_job(&ft, &engine.model.tokenizer, &j, &path, &settings, &base, &suffix) {
            *j.status.lock().unwrap() = "failed".into();
            *j.error.lock().unwrap() = Some(e.clone());
            j.event("error", format!("Training failed: {e}"), json!({}));
        }
    });
    axum::Json(job.json()).into_response()
}

/// A job's settings: OpenAI's hyper-parameters (`n_epochs`, `batch_size`,
/// `learning_rate_multiplier` of the default rate; "auto" or absent keeps
/// the default) over the tune crate's defaults, checked before the job exists.
fn settings_for(hyper: &Value) -> Result<Settings, tunegate_tune::TuneError> {
    let n = |k: &str| hyper.get(k).and_then(|x| x.as_f64());
    let whole = |k: &str| n(k).map(|x| if x >= 1.0 { x as usize } else { 0 });
    Settings::from_overrides(&Overrides {
        epochs: whole("n_epochs"),
        batch_size: whole("batch_size"),
        learning_rate: n("learning_rate_multiplier").map(|m| tunegate_tune::settings::Recipe::for_kind(None).learning_rate * m),
        prefix: "hyperparameters.",
        ..Default::default()
    })
}

/// Serve's sink: training events become the job's event log, its trained
/// token count and a checkpoint record per epoch.
struct JobLog<'a> {
    job: &'a Job,
    steps_per_epoch: usize,
}

impl TrainSink for JobLog<'_> {
    fn event(&mut self, e: &TrainEvent<'_>) {
        let job = self.job;
        match e {
            TrainEvent::Step { info, .. } => {
                job.trained_tokens.fetch_add(info.tokens as u64, Ordering::Relaxed);
                job.event("info", format!("Step {}/{}: training loss={:.4}", info.step + 1, info.total_steps, info.loss), json!({"step": info.step + 1, "train_loss": info.loss}));
            }
            TrainEvent::Epoch(e) => {
                let mut cks = job.checkpoints.lock().unwrap();
                let n = cks.len();
                cks.push(json!({"id": format!("ftckpt-{}-{n}", job.id), "object": "fine_tuning.job.checkpoint", "fine_tuning_job_id": job.id, "step_number": (e.epoch + 1) * self.steps_per_epoch, "created_at": chrono::Utc::now().timestamp()}));
            }
            _ => {}
        }
    }
}

fn run_job(ft: &FtState, tok: &tunegate_model::Tokenizer, job: &Job, path: &std::path::Path, settings: &Settings, base: &str, suffix: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let examples: Vec<_> = tunegate_tune::examples::from_chat_jsonl(&text).map_err(|(line, m)| format!("line {line}: {m}"))?.iter().map(|e| e.encode(tok)).collect();
    *job.status.lock().unwrap() = "running".into();
    job.event("info", format!("Training started on {} examples", examples.len()), json!({}));
    let mut model = tunegate_tune::local::load_model(&ft.model_path, settings).map_err(|e| e.to_string())?;
    let dir = ft.dir.join("adapters").join(&job.id);
    let ck = dir.join("checkpoint");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut sink = JobLog { job, steps_per_epoch: examples.len().div_ceil(settings.batch_size * settings.grad_accum) };
    let trained = tunegate_tune::local::train(
        &mut model,
        settings,
        Run { job_id: &job.id, train: &examples, validation: &[], checkpoint_dir: Some(&ck), resumed: None, stop: Some(job.stop.clone()), metric: None },
        &mut sink,
    )
    .map_err(|e| e.to_string())?;
    if job.stop.load(Ordering::Relaxed) {
        job.event("info", format!("Job cancelled at step {}", trained.progress.step), json!({}));
        return Ok(());
    }
    model.save_peft(&dir, "google/gemma-3-270m").map_err(|e| e.to_string())?;
    let name = format!("ft:{base}:{suffix}:{}", job.id);
    std::fs::write(dir.join("model_name"), &name).map_err(|e| e.to_string())?;
    ft.served.lock().unwrap().insert(name.clone(), dir);
    *job.fine_tuned_model.lock().unwrap() = Some(name.clone());
    *job.status.lock().unwrap() = "succeeded".into();
    job.event("info", format!("The job has successfully completed; model {name}"), json!({}));
    Ok(())
}

pub async fn list(State(ft): State<Arc<FtState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    let jobs: Vec<Value> = ft.jobs.lock().unwrap().iter().rev().map(|j| j.json()).collect();
    axum::Json(json!({"object": "list", "data": jobs, "has_more": false})).into_response()
}

pub async fn get(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    match ft.job(&id) {
        Some(j) => axum::Json(j.json()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no fine-tuning job `{id}`")),
    }
}

pub async fn events(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    match ft.job(&id) {
        // Newest first, as the API lists them.
        Some(j) => axum::Json(json!({"object": "list", "data": j.events.lock().unwrap().iter().rev().take(100).cloned().collect::<Vec<_>>(), "has_more": false})).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no fine-tuning job `{id}`")),
    }
}

pub async fn checkpoints(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    match ft.job(&id) {
        Some(j) => axum::Json(json!({"object": "list", "data": j.checkpoints.lock().unwrap().clone(), "has_more": false})).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no fine-tuning job `{id}`")),
    }
}

pub async fn cancel(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(ft.api_key.as_deref(), &headers) {
        return r;
    }
    let Some(j) = ft.job(&id) else { return error(StatusCode::NOT_FOUND, "not_found", format!("no fine-tuning job `{id}`")) };
    {
        let mut st = j.status.lock().unwrap();
        if matches!(st.as_str(), "succeeded" | "failed" | "cancelled") {
            return bad(format!("job `{id}` has already ended ({st})"));
        }
        j.stop.store(true, Ordering::Relaxed);
        *st = "cancelled".into();
    }
    axum::Json(j.json()).into_response()
}
