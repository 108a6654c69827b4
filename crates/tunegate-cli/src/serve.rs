//! `tunegate serve`: an OpenAI-compatible server for the local model.
//!
//! Loopback only unless `--allow-remote`; a bearer key when `--api-key` is
//! set; request bodies and requests in flight are bounded; every error is a
//! JSON body in OpenAI's shape. Requests in flight are batched together by
//! the model thread, like the cases of an eval.

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::Semaphore;
use crate::serve_http::{authorize, error};
use tunegate_providers::local::{gen_params, LocalEngine};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer KEY` (or set TUNEGATE_API_KEY).
    #[arg(long, env = "TUNEGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address (exposes the model to the network).
    #[arg(long)]
    pub allow_remote: bool,
    /// Model name or GGUF path.
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Requests in flight at once; more get HTTP 503.
    #[arg(long, default_value_t = 64)]
    pub max_concurrency: usize,
    /// Where uploaded training files and fine-tuned adapters are kept
    /// (default: the model cache's `serve/` directory).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
    /// Largest training-file upload in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_upload: usize,
}

pub struct AppState {
    pub engine: Arc<LocalEngine>,
    pub model_id: String,
    api_key: Option<String>,
    slots: Arc<Semaphore>,
    max_body: usize,
    pub ft: Arc<crate::serve_ft::FtState>,
}


pub fn run(a: ServeArgs) -> Result<ExitCode> {
    if !a.addr.ip().is_loopback() && !a.allow_remote {
        return Err(crate::args::usage(format!("{} is not a loopback address; pass --allow-remote to expose the model to the network (and set --api-key)", a.addr)));
    }
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| crate::args::usage(e.to_string()))?;
    eprintln!("loading {} ...", path.display());
    let engine = LocalEngine::get(&path).context("loading the model")?;
    let model_id = if a.model.ends_with(".gguf") { path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default() } else { a.model.clone() };
    let state_dir = match a.state_dir.clone() {
        Some(d) => d,
        None => tunegate_model::default_model_dir()?.parent().map(|p| p.join("serve")).unwrap_or_else(|| std::path::PathBuf::from("tunegate-serve")),
    };
    let ft = Arc::new(crate::serve_ft::FtState::new(state_dir.clone(), path.clone(), engine.clone(), model_id.clone(), a.api_key.clone()).with_context(|| format!("cannot use {}", state_dir.display()))?);
    let state = Arc::new(AppState { engine, model_id, api_key: a.api_key.clone(), slots: Arc::new(Semaphore::new(a.max_concurrency.max(1))), max_body: a.max_body, ft });
    let max_upload = a.max_upload;
    let rt = crate::args::runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("cannot listen on {}", a.addr))?;
        eprintln!("serving {} on http://{}/v1 (OpenAI-compatible){}", state.model_id, listener.local_addr()?, if state.api_key.is_some() { ", bearer key required" } else { "" });
        axum::serve(listener, router(state, max_upload)).with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn router(state: Arc<AppState>, max_upload: usize) -> Router {
    use crate::serve_ft as ft;
    // Bodies are read as bytes and parsed here, so a malformed or oversized
    // body gets our JSON error rather than a framework default.
    let files = Router::new().route("/v1/files", post(ft::upload)).layer(axum::extract::DefaultBodyLimit::max(max_upload)).with_state(state.ft.clone());
    let jobs = Router::new()
        .route("/v1/fine_tuning/jobs", post(ft::create).get(ft::list))
        .route("/v1/fine_tuning/jobs/{id}", get(ft::get))
        .route("/v1/fine_tuning/jobs/{id}/events", get(ft::events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(ft::checkpoints))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(ft::cancel))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state.ft.clone());
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see /v1/models, /v1/chat/completions, /v1/completions") })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .with_state(state)
        .merge(files)
        .merge(jobs)
}


async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(state.api_key.as_deref(), &headers) {
        return r;
    }
    let mut data = vec![json!({"id": state.model_id, "object": "model", "created": 0, "owned_by": "tunegate"})];
    for name in state.ft.served.lock().unwrap().keys() {
        data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": "tunegate", "parent": state.model_id}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Parses a request body into the prompt text and sampling params.
/// A parsed request: prompt text, generation settings, streaming, the
/// adapter of a fine-tuned model, and how many top log-probabilities per
/// token to report (None: no `logprobs`).
type Parsed = (String, tunegate_core::Params, bool, Option<std::path::PathBuf>, Option<usize>);

/// `served` maps a fine-tuned model's name to its adapter; no state
/// beyond it, so the property test drives this without a model.
fn parse_request(max_body: usize, model_id: &str, served: &dyn Fn(&str) -> Option<std::path::PathBuf>, body: &[u8], chat: bool) -> Result<Parsed, Response> {
    if body.len() > max_body {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("body over {max_body} bytes")));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("body is not valid JSON: {e}")))?;
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "invalid_request_error", m.to_string());
    let mut adapter = None;
    if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
        if m != model_id {
            match served(m) {
                Some(dir) => adapter = Some(dir),
                None => return Err(error(StatusCode::NOT_FOUND, "model_not_found", format!("model `{m}` is not served here; GET /v1/models lists what is"))),
            }
        }
    }
    let text = if chat {
        let msgs = v.get("messages").and_then(|m| m.as_array()).ok_or_else(|| bad("`messages` must be an array"))?;
        if msgs.is_empty() {
            return Err(bad("`messages` is empty"));
        }
        let mut parts = vec![];
        for m in msgs {
            let role = m.get("role").and_then(|r| r.as_str()).ok_or_else(|| bad("each message needs a `role`"))?;
            if !["system", "developer", "user", "assistant"].contains(&role) {
                return Err(bad(&format!("unknown role `{role}`")));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join(""),
                _ => return Err(bad("each message needs a string `content`")),
            };
            parts.push(tunegate_core::Message::new(role, content));
        }
        tunegate_core::template::flatten_messages(&parts)
    } else {
        match v.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(bad("`prompt` must be a string")),
        }
    };
    if text.is_empty() {
        return Err(bad("the prompt is empty"));
    }
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let stop = match v.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
        _ => vec![],
    };
    let params = tunegate_core::Params {
        temperature: num("temperature"),
        max_tokens: v.get("max_completion_tokens").or(v.get("max_tokens")).and_then(|x| x.as_u64()).map(|x| x.min(4096) as u32),
        top_p: num("top_p"),
        top_k: v.get("top_k").and_then(|x| x.as_u64()).map(|x| x as u32),
        stop,
        seed: v.get("seed").and_then(|x| x.as_u64()),
        ..Default::default()
    };
    if let Some(t) = params.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad("`temperature` must be within 0..2"));
        }
    }
    let stream = v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    // Chat: `logprobs: true` and `top_logprobs: 0..=20`; completions: the
    // legacy `logprobs: 0..=5` (the number of alternatives).
    let logprobs = if chat {
        let on = match v.get("logprobs") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            _ => return Err(bad("`logprobs` must be a boolean")),
        };
        let top = match v.get("top_logprobs") {
            None | Some(Value::Null) => 0,
            Some(x) => match x.as_u64().filter(|n| *n <= 20) {
                Some(n) if on => n as usize,
                Some(_) => return Err(bad("`top_logprobs` needs `logprobs: true`")),
                None => return Err(bad("`top_logprobs` must be an integer within 0..=20")),
            },
        };
        on.then_some(top)
    } else {
        match v.get("logprobs") {
            None | Some(Value::Null) => None,
            Some(x) => match x.as_u64().filter(|n| *n <= 5) {
                Some(n) => Some(n as usize),
                None => return Err(bad("`logprobs` must be an integer within 0..=5")),
            },
        }
    };
    if stream && logprobs.is_some() {
        return Err(bad("`logprobs` with `stream: true` is not supported; request without streaming"));
    }
    Ok((text, params, stream, adapter, logprobs))
}

/// OpenAI's `logprobs` object for a completion: per-token entries for chat,
/// parallel arrays for the legacy completions endpoint.
fn logprobs_json(engine: &LocalEngine, c: &tunegate_providers::local::Completion, chat: bool) -> Value {
    let tok = &engine.model.tokenizer;
    let piece = |id: u32| -> (String, Vec<u8>) {
        let b = tok.token_to_piece(id, false).to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    };
    let top = |i: usize| -> Vec<(String, Vec<u8>, f32)> { c.top_logprobs.get(i).map(|t| t.iter().map(|&(id, lp)| { let (s, b) = piece(id); (s, b, lp) }).collect()).unwrap_or_default() };
    if chat {
        let content: Vec<Value> = c
            .tokens
            .iter()
            .zip(&c.logprobs)
            .enumerate()
            .map(|(i, (&id, &lp))| {
                let (s, b) = piece(id);
                json!({"token": s, "logprob": lp, "bytes": b, "top_logprobs": top(i).into_iter().map(|(s, b, lp)| json!({"token": s, "logprob": lp, "bytes": b})).collect::<Vec<_>>()})
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let mut offset = 0usize;
        let (mut tokens, mut offsets) = (vec![], vec![]);
        for &id in &c.tokens {
            let (s, b) = piece(id);
            offsets.push(offset);
            offset += b.len();
            tokens.push(s);
        }
        let tops: Vec<Value> = (0..c.tokens.len()).map(|i| Value::Object(top(i).into_iter().map(|(s, _, lp)| (s, json!(lp))).collect())).collect();
        json!({"tokens": tokens, "token_logprobs": c.logprobs, "top_logprobs": if c.top_logprobs.is_empty() { Value::Null } else { json!(tops) }, "text_offset": offsets})
    }
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, headers, body, true).await
}

async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, headers, body, false).await
}

async fn handle(state: Arc<AppState>, headers: HeaderMap, body: Bytes, chat: bool) -> Response {
    if let Err(r) = authorize(state.api_key.as_deref(), &headers) {
        return r;
    }
    let served = |m: &str| state.ft.served.lock().ok()?.get(m).cloned();
    let (text, params, stream, adapter, logprobs) = match parse_request(state.max_body, &state.model_id, &served, &body, chat) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A fine-tuned model: the base with its adapter (loaded once, then shared).
    let engine = match adapter {
        None => state.engine.clone(),
        Some(dir) => {
            let p = state.ft.model_path.clone();
            match tokio::task::spawn_blocking(move || LocalEngine::get_with(&p, Some(&dir))).await {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
            }
        }
    };
    let Ok(permit) = state.slots.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; retry shortly");
    };
    let id = format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, rand_id());
    let created = chrono::Utc::now().timestamp();
    let model = v_model(&state, &body);
    let mut gp = gen_params(&params);
    gp.top_logprobs = logprobs.unwrap_or(0);
    if !stream {
        let res = engine.complete(&text, gp, None, None).await;
        drop(permit);
        return match res {
            Ok(c) => {
                let lp = if logprobs.is_some() { logprobs_json(&engine, &c, chat) } else { Value::Null };
                let choice = if chat {
                    json!({"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": lp, "finish_reason": c.finish_reason})
                } else {
                    json!({"index": 0, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
                };
                axum::Json(json!({
                    "id": id, "object": if chat { "chat.completion" } else { "text_completion" }, "created": created, "model": model,
                    "choices": [choice],
                    "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens}
                }))
                .into_response()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
        };
    }
    // Streaming: server-sent events as the model produces text. When the
    // client disconnects, the body stream is dropped, the delta channel
    // closes and the model stops that sequence.
    let (dtx, mut drx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let done = tokio::spawn(async move {
        let r = engine.complete(&text, gp, None, Some(dtx)).await;
        drop(permit);
        r
    });
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |delta: Option<&str>, finish: Option<&str>| -> String {
        let choice = if chat {
            json!({"index": 0, "delta": delta.map(|d| json!({"content": d})).unwrap_or(json!({})), "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish})
        };
        format!("data: {}\n\n", json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]}))
    };
    let stream = async_stream(move |tx| async move {
        if chat {
            let first = chunk(None, None).replace("\"delta\":{}", "\"delta\":{\"role\":\"assistant\"}");
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
        }
        while let Some(d) = drx.recv().await {
            if tx.send(Ok(chunk(Some(&d), None))).await.is_err() {
                return; // client gone: dropping drx stops the model
            }
        }
        let finish = match done.await {
            Ok(Ok(c)) => c.finish_reason,
            Ok(Err(e)) => {
                let _ = tx.send(Ok(format!("data: {}\n\n", json!({"error": {"message": e.to_string(), "type": "server_error"}})))).await;
                return;
            }
            Err(_) => return,
        };
        let _ = tx.send(Ok(chunk(None, Some(&finish)))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot build the stream"))
}

/// The model name to report: the one asked for, else the base.
fn v_model(state: &AppState, body: &Bytes) -> String {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string)).unwrap_or_else(|| state.model_id.clone())
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// A stream fed by a producer task through a small channel.
fn async_stream<F, Fut>(producer: F) -> impl futures_util::Stream<Item = Result<String, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

#[cfg(test)]
#[path = "../../tunegate-core/tests/support/mutate.rs"]
mod mutate;

/// Issue 18: the request parser answers every mutated body (a request or a
/// 4xx), never panics; `TUNEGATE_FUZZ_ITERS` inputs, as the other parsers.
#[test]
fn the_request_parser_never_panics() {
    let seeds = [
        r#"{"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "stop": ["
", "."], "seed": 7, "logprobs": true, "top_logprobs": 2}"#,
        r#"{"model": "ft:m:1", "prompt": "Once", "max_completion_tokens": 3, "logprobs": 2, "stream": false, "stop": "x"}"#,
    ];
    let served = |m: &str| (m == "ft:m:1").then(|| std::path::PathBuf::from("/adapters/1"));
    mutate::fuzz("serve-request", &seeds.map(|s| s.as_bytes().to_vec()), |b| parse_request(1 << 16, "m", &served, b, true).is_ok() | parse_request(1 << 16, "m", &served, b, false).is_ok());
}
