//! The OpenAI-compatible files and fine-tuning endpoints, backed by the
//! local LoRA trainer: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET
//! .../{id}/content; POST/GET /v1/fine_tuning/jobs (`limit`, `after`), GET
//! .../{id}, .../{id}/events, .../{id}/checkpoints, POST .../{id}/cancel. A
//! finished job's model is served by name at /v1/chat/completions.
//!
//! Everything lives under the state directory, so a restart loses nothing:
//! files (`files/ID.jsonl` and `ID.json`), adapters (`adapters/JOB/`) and
//! job records (`jobs/JOB.json`, rewritten at each change of state). A job
//! that was running when the server stopped is marked failed on start,
//! with that reason, rather than shown as running forever.

use axum::extract::{Multipart, Path as UrlPath, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tunegate_tune::events::{TrainEvent, TrainSink};
use tunegate_tune::local::Run;
use tunegate_tune::{Overrides, Settings};

use crate::http::{authorize, read_body, ApiError};
use tunegate_providers::local::LocalEngine;

pub struct FtState {
    pub dir: PathBuf,
    pub model_path: PathBuf,
    counter: AtomicU64,
    files: Mutex<HashMap<String, FileRec>>,
    jobs: Mutex<Vec<Arc<Job>>>,
    /// Fine-tuned model name -> (adapter directory, when it was created).
    pub served: Mutex<HashMap<String, (PathBuf, i64)>>,
    /// The model being served and fine-tuned, its name, the server's key,
    /// the body limits.
    pub engine: Arc<LocalEngine>,
    pub model_id: String,
    pub api_key: Option<String>,
    max_body: usize,
    max_upload: usize,
    body_timeout: std::time::Duration,
    /// The fine-tuning worker's queue, started with the first job.
    worker: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Queued>>>,
    /// The command that trains one job in a child process (see
    /// [`crate::Config::trainer`]); None trains on the worker thread.
    trainer: Option<Vec<std::ffi::OsString>>,
}

#[derive(Clone)]
struct FileRec {
    id: String,
    filename: String,
    bytes: u64,
    created_at: i64,
}

impl FileRec {
    fn json(&self) -> Value {
        json!({"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at, "filename": self.filename, "purpose": "fine-tune", "status": "processed"})
    }
}

struct Job {
    id: String,
    model: String,
    training_file: String,
    created_at: i64,
    hyper: Value,
    status: Mutex<String>,
    finished_at: Mutex<Option<i64>>,
    fine_tuned_model: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
    events: Mutex<Vec<Value>>,
    checkpoints: Mutex<Vec<Value>>,
    trained_tokens: AtomicU64,
    stop: Arc<AtomicBool>,
}

const ENDED: [&str; 3] = ["succeeded", "failed", "cancelled"];

impl Job {
    fn json(&self) -> Value {
        let err = self.error.lock().unwrap().clone();
        json!({
            "id": self.id, "object": "fine_tuning.job", "model": self.model, "created_at": self.created_at,
            "finished_at": *self.finished_at.lock().unwrap(),
            "status": *self.status.lock().unwrap(), "fine_tuned_model": *self.fine_tuned_model.lock().unwrap(),
            "training_file": self.training_file, "validation_file": null, "hyperparameters": self.hyper,
            "trained_tokens": self.trained_tokens.load(Ordering::Relaxed), "result_files": [], "organization_id": "tunegate", "seed": 0,
            "error": err.map(|m| json!({"message": m, "code": "training_failed", "param": null})),
        })
    }
    fn event(&self, level: &str, message: String, data: Value) {
        let mut ev = self.events.lock().unwrap();
        let n = ev.len();
        ev.push(json!({"id": format!("ftevent-{}-{n}", self.id), "object": "fine_tuning.job.event", "created_at": chrono::Utc::now().timestamp(), "level": level, "message": message, "data": data, "type": "message"}));
    }
    /// Writes the record (atomically: a crash leaves the old one whole).
    fn save(&self, dir: &std::path::Path) {
        let rec = json!({"job": self.json(), "events": *self.events.lock().unwrap(), "checkpoints": *self.checkpoints.lock().unwrap()});
        let path = dir.join("jobs").join(format!("{}.json", self.id));
        let tmp = path.with_extension("json.partial");
        if std::fs::write(&tmp, rec.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    /// Moves to `status`; an ending sets `finished_at`. Saved at once.
    fn set_status(&self, dir: &std::path::Path, status: &str) {
        *self.status.lock().unwrap() = status.to_string();
        if ENDED.contains(&status) {
            *self.finished_at.lock().unwrap() = Some(chrono::Utc::now().timestamp());
        }
        self.save(dir);
    }
    fn load(path: &std::path::Path) -> Option<Job> {
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let j = &rec["job"];
        let s = |k: &str| j[k].as_str().map(str::to_string);
        Some(Job {
            id: s("id")?,
            model: s("model").unwrap_or_default(),
            training_file: s("training_file").unwrap_or_default(),
            created_at: j["created_at"].as_i64().unwrap_or(0),
            hyper: j["hyperparameters"].clone(),
            status: Mutex::new(s("status").unwrap_or_else(|| "failed".into())),
            finished_at: Mutex::new(j["finished_at"].as_i64()),
            fine_tuned_model: Mutex::new(s("fine_tuned_model")),
            error: Mutex::new(j["error"]["message"].as_str().map(str::to_string)),
            events: Mutex::new(rec["events"].as_array().cloned().unwrap_or_default()),
            checkpoints: Mutex::new(rec["checkpoints"].as_array().cloned().unwrap_or_default()),
            trained_tokens: AtomicU64::new(j["trained_tokens"].as_u64().unwrap_or(0)),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl FtState {
    pub fn new(cfg: &crate::Config, engine: Arc<LocalEngine>) -> std::io::Result<FtState> {
        let dir = cfg.state_dir.clone();
        for sub in ["files", "adapters", "jobs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Adapters trained earlier stay servable across restarts.
        let mut served = HashMap::new();
        for e in std::fs::read_dir(dir.join("adapters"))?.flatten() {
            if let Ok(name) = std::fs::read_to_string(e.path().join("model_name")) {
                let created = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs() as i64).unwrap_or(0);
                served.insert(name.trim().to_string(), (e.path(), created));
            }
        }
        let mut files = HashMap::new();
        for e in std::fs::read_dir(dir.join("files"))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(v) = std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
                    if let (Some(id), Some(filename)) = (v["id"].as_str(), v["filename"].as_str()) {
                        files.insert(id.to_string(), FileRec { id: id.into(), filename: filename.into(), bytes: v["bytes"].as_u64().unwrap_or(0), created_at: v["created_at"].as_i64().unwrap_or(0) });
                    }
                }
            }
        }
        let mut jobs = vec![];
        for e in std::fs::read_dir(dir.join("jobs"))?.flatten() {
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Some(j) = Job::load(&e.path()) {
                    if !ENDED.contains(&j.status.lock().unwrap().as_str()) {
                        *j.error.lock().unwrap() = Some("the server stopped while this job ran; create the job again".into());
                        j.set_status(&dir, "failed");
                    }
                    jobs.push(Arc::new(j));
                }
            }
        }
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(FtState {
            dir,
            model_path: cfg.model_path.clone(),
            counter: AtomicU64::new(chrono::Utc::now().timestamp_millis() as u64),
            files: Mutex::new(files),
            jobs: Mutex::new(jobs),
            served: Mutex::new(served),
            engine,
            model_id: cfg.model_id.clone(),
            api_key: cfg.api_key.clone(),
            max_body: cfg.max_body,
            max_upload: cfg.max_upload,
            body_timeout: cfg.body_timeout,
            worker: Default::default(),
            trainer: cfg.trainer.clone(),
        })
    }
    fn next(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
    fn job(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        self.jobs.lock().unwrap().iter().find(|j| j.id == id).cloned().ok_or_else(|| ApiError::not_found("not_found", format!("no fine-tuning job `{id}`")))
    }
    fn file(&self, id: &str) -> Result<FileRec, ApiError> {
        self.files.lock().unwrap().get(id).cloned().ok_or_else(|| ApiError::not_found("not_found", format!("no file `{id}`")))
    }
    fn file_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(format!("{id}.jsonl"))
    }
}

fn bad(m: impl Into<String>) -> Response {
    ApiError::bad(m).into_response()
}

/// `?limit=N&after=ID`: the page of a list, newest first, as OpenAI pages.
#[derive(serde::Deserialize, Default)]
pub struct Page {
    limit: Option<String>,
    after: Option<String>,
}

fn page(items: Vec<(String, Value)>, q: &Page) -> Result<Value, ApiError> {
    let limit = match &q.limit {
        None => 20,
        Some(l) => l.parse::<usize>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| ApiError::invalid("limit", "invalid_value", format!("`limit` must be an integer within 1..=100, not `{l}`")))?,
    };
    let start = match &q.after {
        None => 0,
        Some(a) => items.iter().position(|(id, _)| id == a).map(|i| i + 1).ok_or_else(|| ApiError::invalid("after", "invalid_value", format!("`after`: no item `{a}` in this list")))?,
    };
    let rest = &items[start.min(items.len())..];
    let data: Vec<Value> = rest.iter().take(limit).map(|(_, v)| v.clone()).collect();
    Ok(json!({"object": "list", "data": data, "has_more": rest.len() > limit}))
}

macro_rules! auth {
    ($ft:expr, $headers:expr) => {
        if let Err(r) = authorize($ft.api_key.as_deref(), $headers) {
            return r;
        }
    };
}

pub async fn upload(State(ft): State<Arc<FtState>>, req: Request) -> Response {
    auth!(ft, req.headers());
    // Read under the upload limit and the body deadline, then parse the
    // multipart form from memory (the limit is the upload's size anyway).
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, ft.max_upload, ft.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let mut mp = match <Multipart as axum::extract::FromRequest<()>>::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => return bad(format!("the body must be a multipart form with `purpose` and `file`: {e}")),
    };
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
        return ApiError::invalid("purpose", "invalid_value", "`purpose` must be `fine-tune`").into_response();
    }
    let Some((filename, bytes)) = file else { return ApiError::invalid("file", "missing_required_parameter", "no `file` part").into_response() };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
            return ApiError::invalid("file", "invalid_file", format!("{filename}: line {line} is not UTF-8")).into_response();
        }
    };
    if text.trim().is_empty() {
        return ApiError::invalid("file", "invalid_file", format!("{filename} holds no examples: a training file is JSONL, one {{\"messages\": [...]}} per line")).into_response();
    }
    if let Err((line, m)) = tunegate_tune::examples::check_chat_jsonl(text) {
        return ApiError::invalid("file", "invalid_file", format!("{filename}: line {line} fails {m}")).into_response();
    }
    let rec = FileRec { id: ft.next("file"), filename, bytes: bytes.len() as u64, created_at: chrono::Utc::now().timestamp() };
    let path = ft.file_path(&rec.id);
    if let Err(e) = std::fs::write(&path, &bytes).and_then(|_| std::fs::write(path.with_extension("json"), rec.json().to_string())) {
        return ApiError::server(format!("cannot store the file: {e}")).into_response();
    }
    ft.files.lock().unwrap().insert(rec.id.clone(), rec.clone());
    axum::Json(rec.json()).into_response()
}

pub async fn list_files(State(ft): State<Arc<FtState>>, headers: HeaderMap, Query(q): Query<Page>) -> Response {
    auth!(ft, &headers);
    let mut files: Vec<FileRec> = ft.files.lock().unwrap().values().cloned().collect();
    files.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    page(files.iter().map(|f| (f.id.clone(), f.json())).collect(), &q).map(|v| axum::Json(v).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn get_file(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    auth!(ft, &headers);
    ft.file(&id).map(|f| axum::Json(f.json()).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn file_content(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    auth!(ft, &headers);
    if let Err(e) = ft.file(&id) {
        return e.into_response();
    }
    match std::fs::read(ft.file_path(&id)) {
        Ok(b) => ([("content-type", "application/octet-stream")], b).into_response(),
        Err(e) => ApiError::server(format!("cannot read the file: {e}")).into_response(),
    }
}

pub async fn delete_file(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    auth!(ft, &headers);
    if ft.files.lock().unwrap().remove(&id).is_none() {
        return ApiError::not_found("not_found", format!("no file `{id}`")).into_response();
    }
    let path = ft.file_path(&id);
    let _ = std::fs::remove_file(path.with_extension("json"));
    let _ = std::fs::remove_file(&path);
    axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response()
}

pub async fn create(State(ft): State<Arc<FtState>>, req: Request) -> Response {
    auth!(ft, req.headers());
    let body = match read_body(req.into_body(), ft.max_body, ft.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match create_job(&ft, &body) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn create_job(ft: &Arc<FtState>, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = &v else { return Err(ApiError::bad("the body must be a JSON object")) };
    const KEYS: &[&str] = &["model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "integrations", "metadata"];
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::invalid(k, "unknown_parameter", format!("unrecognized request argument `{k}`")));
    }
    let model = match &v["model"] {
        Value::String(m) => m.clone(),
        Value::Null => return Err(ApiError::invalid("model", "missing_required_parameter", "`model` is required")),
        x => return Err(ApiError::invalid("model", "invalid_type", format!("`model` must be a string, not {x}"))),
    };
    if model != ft.model_id {
        return Err(ApiError { param: Some("model".into()), ..ApiError::not_found("model_not_found", format!("this server fine-tunes `{}`, not `{model}`", ft.model_id)) });
    }
    let tf = v["training_file"].as_str().ok_or_else(|| ApiError::invalid("training_file", "missing_required_parameter", "`training_file` is required (an id from POST /v1/files)"))?;
    if !v["validation_file"].is_null() {
        return Err(ApiError::invalid("validation_file", "unsupported_value", "`validation_file` is not supported by this server; leave it out"));
    }
    // OpenAI's newer `method: {type: supervised, supervised: {hyperparameters}}`
    // or the older top-level `hyperparameters`.
    let (hyper, param) = match &v["method"] {
        Value::Null => (v.get("hyperparameters").cloned().unwrap_or(json!({})), "hyperparameters"),
        m if m["type"] == "supervised" => (m["supervised"]["hyperparameters"].clone(), "method.supervised.hyperparameters"),
        _ => return Err(ApiError::invalid("method", "unsupported_value", "only `{\"type\": \"supervised\"}` fine-tuning is supported")),
    };
    let hyper = if hyper.is_null() { json!({}) } else { hyper };
    let settings = settings_for(&hyper, param)?;
    ft.file(tf).map_err(|_| ApiError::invalid("training_file", "invalid_value", format!("no file `{tf}`; upload it with POST /v1/files first")))?;
    let path = ft.file_path(tf);
    let suffix = v["suffix"].as_str().unwrap_or("tunegate").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect::<String>();
    let job = Arc::new(Job {
        id: ft.next("ftjob"),
        model,
        training_file: tf.to_string(),
        created_at: chrono::Utc::now().timestamp(),
        hyper: hyper.clone(),
        status: Mutex::new("queued".into()),
        finished_at: Mutex::new(None),
        fine_tuned_model: Mutex::new(None),
        error: Mutex::new(None),
        events: Mutex::new(vec![]),
        checkpoints: Mutex::new(vec![]),
        trained_tokens: AtomicU64::new(0),
        stop: Arc::new(AtomicBool::new(false)),
    });
    ft.jobs.lock().unwrap().push(job.clone());
    job.event("info", format!("Created fine-tuning job {}", job.id), json!({}));
    job.save(&ft.dir);
    let queue = ft.worker.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let ft = ft.clone();
        std::thread::Builder::new().name("tunegate-fine-tuning".into()).spawn(move || work(&ft, rx)).ok();
        Mutex::new(tx)
    });
    queue.lock().unwrap().send((job.clone(), path, settings, suffix)).map_err(|_| ApiError::server("the fine-tuning worker stopped"))?;
    Ok(job.json())
}

/// A job waiting for the worker: the job, its training file, settings, suffix.
type Queued = (Arc<Job>, PathBuf, Settings, String);

/// The one fine-tuning thread: jobs run one after another, in the order
/// they were created (`queued` until their turn): on a CPU two at once
/// would only halve each one's speed and double the peak memory.
fn work(ft: &FtState, rx: std::sync::mpsc::Receiver<Queued>) {
    while let Ok((j, path, settings, suffix)) = rx.recv() {
        if j.stop.load(Ordering::Relaxed) {
            continue; // cancelled while queued
        }
        let ran = match &ft.trainer {
            Some(cmd) => run_job_child(ft, cmd, &j, &path, &suffix),
            None => run_job(ft, &ft.engine.model.tokenizer, &j, &path, &settings, &ft.model_id, &suffix),
        };
        if let Err(e) = ran {
            *j.error.lock().unwrap() = Some(e.clone());
            j.event("error", format!("Training failed: {e}"), json!({}));
            j.set_status(&ft.dir, "failed");
        }
    }
}

/// A job's settings: OpenAI's hyper-parameters (`n_epochs`, `batch_size`,
/// `learning_rate_multiplier` of the default rate; "auto" or absent keeps
/// the default) over the tune crate's defaults, each checked for type and
/// range before the job exists (400 naming the field).
fn settings_for(hyper: &Value, param: &str) -> Result<Settings, ApiError> {
    let Some(h) = hyper.as_object() else { return Err(ApiError::invalid(param, "invalid_type", format!("`{param}` must be an object"))) };
    if let Some(k) = h.keys().find(|k| !["n_epochs", "batch_size", "learning_rate_multiplier"].contains(&k.as_str())) {
        return Err(ApiError::invalid(&format!("{param}.{k}"), "unknown_parameter", format!("unknown hyperparameter `{k}`: use n_epochs, batch_size, learning_rate_multiplier")));
    }
    let field = |k: &str, lo: f64, hi: f64, whole: bool| -> Result<Option<f64>, ApiError> {
        let name = format!("{param}.{k}");
        match h.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "auto" => Ok(None),
            Some(x) => {
                let n = if whole { x.as_i64().map(|n| n as f64) } else { x.as_f64() };
                let n = n.ok_or_else(|| ApiError::invalid(&name, "invalid_type", format!("`{name}` must be \"auto\" or {}, not {x}", if whole { "an integer" } else { "a number" })))?;
                if !(n >= lo && n <= hi) || (!whole && n <= 0.0) {
                    return Err(ApiError::invalid(&name, "invalid_value", format!("`{name}` must be within {lo}..={hi}{}, not {n}", if whole { "" } else { " and above 0" })));
                }
                Ok(Some(n))
            }
        }
    };
    let epochs = field("n_epochs", 1.0, 50.0, true)?;
    let batch = field("batch_size", 1.0, 256.0, true)?;
    let lr_mult = field("learning_rate_multiplier", 0.0, 10.0, false)?;
    Settings::from_overrides(&Overrides {
        epochs: epochs.map(|x| x as usize),
        batch_size: batch.map(|x| x as usize),
        learning_rate: lr_mult.map(|m| tunegate_tune::settings::Recipe::for_kind(None).learning_rate * m),
        prefix: "hyperparameters.",
        ..Default::default()
    })
    .map_err(|e| ApiError::invalid(param, "invalid_value", e.to_string()))
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
    job.event("info", format!("Training started on {} examples", examples.len()), json!({}));
    job.set_status(&ft.dir, "running");
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
        job.save(&ft.dir);
        return Ok(());
    }
    model.save_peft(&dir, "google/gemma-3-270m").map_err(|e| e.to_string())?;
    drop(model);
    succeeded(ft, job, &dir, base, suffix)
}

/// A job whose adapter is saved in `dir`: named, served, recorded.
fn succeeded(ft: &FtState, job: &Job, dir: &std::path::Path, base: &str, suffix: &str) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let name = format!("ft:{base}:{suffix}:{}", job.id);
    std::fs::write(dir.join("model_name"), &name).map_err(|e| e.to_string())?;
    ft.served.lock().unwrap().insert(name.clone(), (dir, chrono::Utc::now().timestamp()));
    *job.fine_tuned_model.lock().unwrap() = Some(name.clone());
    job.event("info", format!("The job has successfully completed; model {name}"), json!({}));
    job.set_status(&ft.dir, "succeeded");
    Ok(())
}

/// Trains a job in a child process (`tunegate serve-train`, [`train_child`]):
/// the training model and its buffers are the child's, so when the job
/// ends their memory goes back to the system, not to this server's
/// allocator (five jobs on the worker thread left the idle server 3 GB
/// larger). The child reports steps and epochs as JSON lines; cancelling
/// kills it (its checkpoints stay on disk).
fn run_job_child(ft: &FtState, cmd: &[std::ffi::OsString], job: &Job, path: &std::path::Path, suffix: &str) -> Result<(), String> {
    use std::io::BufRead;
    let dir = ft.dir.join("adapters").join(&job.id);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (exe, pre) = cmd.split_first().ok_or("no trainer command")?;
    let mut child = std::process::Command::new(exe)
        .args(pre)
        .arg(&ft.model_path)
        .arg(path)
        .arg(&dir)
        .arg(&job.id)
        .arg(job.hyper.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the training process: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let err = child.stderr.take().ok_or("no stderr")?;
    let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let (mut done, mut failure) = (false, None);
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        match v["event"].as_str() {
            Some("started") => {
                job.event("info", format!("Training started on {} examples", v["examples"]), json!({}));
                job.set_status(&ft.dir, "running");
            }
            Some("step") => {
                job.trained_tokens.fetch_add(v["tokens"].as_u64().unwrap_or(0), Ordering::Relaxed);
                job.event("info", format!("Step {}/{}: training loss={:.4}", v["step"], v["total"], v["loss"].as_f64().unwrap_or(f64::NAN)), json!({"step": v["step"], "train_loss": v["loss"]}));
            }
            Some("epoch") => {
                let mut cks = job.checkpoints.lock().unwrap();
                let n = cks.len();
                cks.push(json!({"id": format!("ftckpt-{}-{n}", job.id), "object": "fine_tuning.job.checkpoint", "fine_tuning_job_id": job.id, "step_number": v["step_number"], "created_at": chrono::Utc::now().timestamp()}));
            }
            Some("done") => done = true,
            Some("error") => failure = v["message"].as_str().map(str::to_string),
            _ => {}
        }
        if job.stop.load(Ordering::Relaxed) {
            let _ = child.kill();
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = stderr.join().unwrap_or_default();
    if job.stop.load(Ordering::Relaxed) {
        job.event("info", "Job cancelled".to_string(), json!({}));
        job.save(&ft.dir);
        return Ok(());
    }
    if !done || !status.success() {
        let tail: String = stderr.trim().chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(failure.unwrap_or_else(|| format!("the training process ended with {status}: {tail}")));
    }
    succeeded(ft, job, &dir, &ft.model_id, suffix)
}

/// The child side of [`run_job_child`]: `MODEL DATA OUT_DIR JOB_ID
/// HYPERPARAMETERS_JSON`. Trains, saves the PEFT adapter in OUT_DIR and
/// reports on stdout one JSON object a line. Returns the exit code.
pub fn train_child(args: &[String]) -> i32 {
    use std::io::Write;
    let say = |v: Value| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{v}");
        let _ = o.flush();
    };
    let run = || -> Result<(), String> {
        let [model, data, out, job_id, hyper] = args else { return Err("usage: serve-train MODEL DATA OUT_DIR JOB_ID HYPERPARAMETERS_JSON".into()) };
        let hyper: Value = serde_json::from_str(hyper).map_err(|e| format!("hyperparameters: {e}"))?;
        let settings = settings_for(&hyper, "hyperparameters").map_err(|e| e.message)?;
        let model_path = std::path::Path::new(model);
        let gguf = tunegate_model::GgufFile::open(model_path).map_err(|e| e.to_string())?;
        let tok = tunegate_model::Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(data).map_err(|e| e.to_string())?;
        let examples: Vec<_> = tunegate_tune::examples::from_chat_jsonl(&text).map_err(|(line, m)| format!("line {line}: {m}"))?.iter().map(|e| e.encode(&tok)).collect();
        say(json!({"event": "started", "examples": examples.len()}));
        let mut lora = tunegate_tune::local::load_model(model_path, &settings).map_err(|e| e.to_string())?;
        let dir = std::path::Path::new(out);
        let steps_per_epoch = examples.len().div_ceil(settings.batch_size * settings.grad_accum);
        let mut sink = ChildLog { steps_per_epoch, say: &say };
        tunegate_tune::local::train(
            &mut lora,
            &settings,
            Run { job_id, train: &examples, validation: &[], checkpoint_dir: Some(&dir.join("checkpoint")), resumed: None, stop: None, metric: None },
            &mut sink,
        )
        .map_err(|e| e.to_string())?;
        lora.save_peft(dir, "google/gemma-3-270m").map_err(|e| e.to_string())?;
        say(json!({"event": "done"}));
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(message) => {
            say(json!({"event": "error", "message": message}));
            1
        }
    }
}

/// The child's sink: training events as JSON lines for the server.
struct ChildLog<'a> {
    steps_per_epoch: usize,
    say: &'a dyn Fn(Value),
}

impl TrainSink for ChildLog<'_> {
    fn event(&mut self, e: &TrainEvent<'_>) {
        match e {
            TrainEvent::Step { info, .. } => (self.say)(json!({"event": "step", "step": info.step + 1, "total": info.total_steps, "loss": info.loss, "tokens": info.tokens})),
            TrainEvent::Epoch(e) => (self.say)(json!({"event": "epoch", "step_number": (e.epoch + 1) * self.steps_per_epoch})),
            _ => {}
        }
    }
}

pub async fn list(State(ft): State<Arc<FtState>>, headers: HeaderMap, Query(q): Query<Page>) -> Response {
    auth!(ft, &headers);
    let jobs: Vec<(String, Value)> = ft.jobs.lock().unwrap().iter().rev().map(|j| (j.id.clone(), j.json())).collect();
    page(jobs, &q).map(|v| axum::Json(v).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn get(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    auth!(ft, &headers);
    ft.job(&id).map(|j| axum::Json(j.json()).into_response()).unwrap_or_else(IntoResponse::into_response)
}

/// A page of one of a job's lists (events, checkpoints), newest first as
/// the API lists them.
fn job_list(ft: &FtState, id: &str, q: &Page, list: impl Fn(&Job) -> Vec<Value>) -> Response {
    let j = match ft.job(id) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let items: Vec<(String, Value)> = list(&j).into_iter().rev().map(|x| (x["id"].as_str().unwrap_or("").to_string(), x)).collect();
    page(items, q).map(|v| axum::Json(v).into_response()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn events(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>, Query(q): Query<Page>) -> Response {
    auth!(ft, &headers);
    job_list(&ft, &id, &q, |j| j.events.lock().unwrap().clone())
}

pub async fn checkpoints(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>, Query(q): Query<Page>) -> Response {
    auth!(ft, &headers);
    job_list(&ft, &id, &q, |j| j.checkpoints.lock().unwrap().clone())
}

pub async fn cancel(State(ft): State<Arc<FtState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    auth!(ft, &headers);
    let j = match ft.job(&id) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    {
        let st = j.status.lock().unwrap().clone();
        if ENDED.contains(&st.as_str()) {
            return bad(format!("job `{id}` has already ended ({st})"));
        }
        j.stop.store(true, Ordering::Relaxed);
    }
    j.set_status(&ft.dir, "cancelled");
    axum::Json(j.json()).into_response()
}
