//! `tunegate serve`: an OpenAI-compatible server for the local model, as a
//! library the CLI starts.
//!
//! What it promises a client, and where it is kept:
//! - no request waits for another's whole generation: the model thread
//!   batches continuously (tunegate-providers' `local`), and a request
//!   whose client is gone is dropped at the next decoding step;
//! - every parameter is checked for type and range and every error is
//!   OpenAI's JSON shape with `param` and `code` ([`chat`], [`http`]);
//! - slow or idle connections are closed and open connections are capped
//!   ([`serve`]), so a misbehaving client cannot exhaust the server;
//! - uploaded files and fine-tuning jobs live in the state directory and
//!   survive a restart ([`ft`]).
//!
//! Loopback only unless the caller allows otherwise; a bearer key when one
//! is set.

pub mod chat;
pub mod ft;
pub mod http;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{authorize, ApiError};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tunegate_providers::local::LocalEngine;

/// How the server runs; the CLI's flags fill it.
#[derive(Clone, Debug)]
pub struct Config {
    pub api_key: Option<String>,
    /// The base model's file and the name clients use for it.
    pub model_path: PathBuf,
    pub model_id: String,
    /// Largest JSON request body, in bytes.
    pub max_body: usize,
    /// Largest training-file upload, in bytes.
    pub max_upload: usize,
    /// Generation requests admitted at once (each choice of `n` counts);
    /// more get 503.
    pub max_concurrency: usize,
    /// Open connections at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this; it also closes a
    /// keep-alive connection that sends nothing for this long.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// `max_tokens` when a request gives none (bounded by the context
    /// left after the prompt).
    pub default_max_tokens: usize,
    /// Uploaded files, adapters and job records.
    pub state_dir: PathBuf,
    /// The command that trains one fine-tuning job in a child process
    /// (`tunegate serve-train`), so its memory is returned when the job
    /// ends; None trains on a thread of this process.
    pub trainer: Option<Vec<std::ffi::OsString>>,
}

pub struct AppState {
    pub engine: Arc<LocalEngine>,
    pub cfg: Config,
    slots: Arc<Semaphore>,
    pub ft: Arc<ft::FtState>,
}

impl AppState {
    pub fn new(cfg: Config, engine: Arc<LocalEngine>) -> std::io::Result<Arc<AppState>> {
        let ft = Arc::new(ft::FtState::new(&cfg, engine.clone())?);
        Ok(Arc::new(AppState { slots: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))), engine, cfg, ft }))
    }
}

/// Serves on `listener` until `shutdown` completes. Each connection gets
/// hyper's header timeout (which, started anew whenever a connection waits
/// for a request, also closes idle keep-alive connections); past
/// `max_connections`, a connection is answered 503 at once and closed, so
/// half-open connections cannot use up the process's file descriptors.
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conns = Arc::new(Semaphore::new(state.cfg.max_connections.max(1)));
    let header_timeout = state.cfg.header_timeout;
    let app = router(state);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of file descriptors (or a connection reset before
                // accept): wait for some to close rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            drop(permit);
        });
    }
}

/// A connection past the cap: one 503 in OpenAI's shape, then closed.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError { code: Some("too_many_connections"), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "too many open connections; retry shortly") }.body().to_string();
    let msg = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg.as_bytes())).await;
    let _ = stream.shutdown().await;
}

pub fn router(state: Arc<AppState>) -> Router {
    let ft_routes = Router::new()
        .route("/v1/files", post(ft::upload).get(ft::list_files))
        .route("/v1/files/{id}", get(ft::get_file).delete(ft::delete_file))
        .route("/v1/files/{id}/content", get(ft::file_content))
        .route("/v1/fine_tuning/jobs", post(ft::create).get(ft::list))
        .route("/v1/fine_tuning/jobs/{id}", get(ft::get))
        .route("/v1/fine_tuning/jobs/{id}/events", get(ft::events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(ft::checkpoints))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(ft::cancel))
        .with_state(state.ft.clone());
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(chat::completions))
        .with_state(state)
        .merge(ft_routes)
        .fallback(|| async { ApiError::not_found("unknown_url", "no such endpoint; see /v1/models, /v1/chat/completions, /v1/completions, /v1/files, /v1/fine_tuning/jobs") })
        .method_not_allowed_fallback(|| async { ApiError { code: Some("method_not_allowed"), ..ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "this endpoint does not take that method") } })
}

/// Liveness and load: sequences decoding and requests waiting for a place.
/// Needs no key (it says nothing about the data).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (running, waiting) = state.engine.load.get();
    axum::Json(json!({"status": "ok", "running": running, "waiting": waiting})).into_response()
}

fn model_json(state: &AppState, id: &str) -> Option<serde_json::Value> {
    if id == state.cfg.model_id {
        return Some(json!({"id": id, "object": "model", "created": 0, "owned_by": "tunegate"}));
    }
    let created = state.ft.served.lock().unwrap().get(id).map(|(_, created)| *created)?;
    Some(json!({"id": id, "object": "model", "created": created, "owned_by": "tunegate", "parent": state.cfg.model_id}))
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(state.cfg.api_key.as_deref(), &headers) {
        return r;
    }
    let names: Vec<String> = std::iter::once(state.cfg.model_id.clone()).chain(state.ft.served.lock().unwrap().keys().cloned()).collect();
    let data: Vec<_> = names.iter().filter_map(|n| model_json(&state, n)).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(State(state): State<Arc<AppState>>, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = authorize(state.cfg.api_key.as_deref(), &headers) {
        return r;
    }
    match model_json(&state, &id) {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError { param: Some("model".into()), ..ApiError::not_found("model_not_found", format!("the model `{id}` does not exist; GET /v1/models lists what is served")) }.into_response(),
    }
}
