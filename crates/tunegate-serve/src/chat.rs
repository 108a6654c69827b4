//! `/v1/chat/completions` and `/v1/completions`: every parameter checked for
//! type and range before the model sees the request (400 naming the field,
//! never a silent default), the prompt checked against the context, then
//! `n` sequences handed to the model thread, answered whole or streamed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tunegate_model::engine::GenParams;
use tunegate_model::sample::SamplingParams;
use tunegate_providers::local::{Completion, Job, LocalEngine, Piece};

use crate::http::{authorize, read_body, ApiError};
use crate::AppState;

/// Most choices one request may ask for (`n`): the model thread decodes
/// 16 sequences at once.
pub const MAX_N: i64 = 16;

/// A checked request.
#[derive(Debug)]
pub struct Parsed {
    /// The model name to report back (the base's when none was given).
    pub model: String,
    /// The adapter of a fine-tuned model; None for the base.
    pub adapter: Option<PathBuf>,
    /// The prompt texts: one for chat, one or more for completions.
    pub prompts: Vec<String>,
    pub gen: GenParams,
    /// As asked; None means "what the context and the server allow".
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions: return the prompt before the generated text.
    pub echo: bool,
    /// Top alternatives per token when log-probabilities were asked for.
    pub logprobs: Option<usize>,
}

/// Parameters each endpoint knows; anything else is refused by name, as
/// OpenAI does, rather than ignored.
const CHAT_KEYS: &[&str] = &[
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "tools", "tool_choice",
];
const COMPLETION_KEYS: &[&str] = &[
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options", "logprobs", "echo", "best_of", "suffix",
    "presence_penalty", "frequency_penalty", "logit_bias", "user",
];

fn present<'a>(v: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    v.get(k).filter(|x| !x.is_null())
}

/// An integer field within `lo..=hi`.
fn int(v: &Map<String, Value>, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    let Some(x) = present(v, k) else { return Ok(None) };
    let n = x.as_i64().ok_or_else(|| ApiError::invalid(k, "invalid_type", format!("`{k}` must be an integer, not {x}")))?;
    if n < lo || n > hi {
        return Err(ApiError::invalid(k, "invalid_value", format!("`{k}` must be within {lo}..={hi}, not {n}")));
    }
    Ok(Some(n))
}

/// A number field within `lo..=hi`.
fn num(v: &Map<String, Value>, k: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    let Some(x) = present(v, k) else { return Ok(None) };
    let n = x.as_f64().ok_or_else(|| ApiError::invalid(k, "invalid_type", format!("`{k}` must be a number, not {x}")))?;
    if !(lo..=hi).contains(&n) {
        return Err(ApiError::invalid(k, "invalid_value", format!("`{k}` must be within {lo}..={hi}, not {n}")));
    }
    Ok(Some(n))
}

fn boolean(v: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match present(v, k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(ApiError::invalid(k, "invalid_type", format!("`{k}` must be a boolean, not {x}"))),
    }
}

/// Parameters this server cannot honour: refused unless they ask for
/// nothing (a zero penalty, an empty bias map, text output, no tools).
fn unsupported(v: &Map<String, Value>) -> Result<(), ApiError> {
    for k in ["presence_penalty", "frequency_penalty"] {
        if num(v, k, -2.0, 2.0)?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::invalid(k, "unsupported_value", format!("`{k}` is not supported by the local model; leave it out or set 0")));
        }
    }
    match present(v, "logit_bias") {
        None => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(Value::Object(_)) => return Err(ApiError::invalid("logit_bias", "unsupported_value", "`logit_bias` is not supported by the local model")),
        Some(x) => return Err(ApiError::invalid("logit_bias", "invalid_type", format!("`logit_bias` must be an object, not {x}"))),
    }
    if let Some(f) = present(v, "response_format") {
        if f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid("response_format", "unsupported_value", "only `{\"type\": \"text\"}` is supported: the local model has no JSON mode"));
        }
    }
    if present(v, "tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::invalid("tools", "unsupported_value", "tools are not supported by the local model"));
    }
    if let Some(x) = present(v, "best_of") {
        if x.as_i64() != Some(1) && x != present(v, "n").unwrap_or(&json!(1)) {
            return Err(ApiError::invalid("best_of", "unsupported_value", "`best_of` other than 1 (or `n`) is not supported"));
        }
    }
    if present(v, "suffix").is_some_and(|x| x.as_str() != Some("")) {
        return Err(ApiError::invalid("suffix", "unsupported_value", "`suffix` is not supported by the local model"));
    }
    Ok(())
}

fn chat_text(v: &Map<String, Value>) -> Result<String, ApiError> {
    let msgs = match present(v, "messages") {
        None => return Err(ApiError::invalid("messages", "missing_required_parameter", "`messages` is required")),
        Some(Value::Array(a)) => a,
        Some(x) => return Err(ApiError::invalid("messages", "invalid_type", format!("`messages` must be an array, not {x}"))),
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "invalid_value", "`messages` is empty"));
    }
    let mut parts = vec![];
    for (i, m) in msgs.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(&at("role"), "missing_required_parameter", format!("message {i} needs a string `role`")))?;
        if !["system", "developer", "user", "assistant"].contains(&role) {
            return Err(ApiError::invalid(&at("role"), "invalid_value", format!("unknown role `{role}`: use system, developer, user or assistant")));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => {
                let mut text = String::new();
                for (j, p) in a.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => return Err(ApiError::invalid(&format!("messages[{i}].content[{j}]"), "invalid_value", "only text parts (`{\"type\": \"text\", \"text\": ...}`) are supported")),
                    }
                }
                text
            }
            _ => return Err(ApiError::invalid(&at("content"), "invalid_type", format!("message {i} needs a string `content` (or an array of text parts)"))),
        };
        parts.push(tunegate_core::Message::new(role, content));
    }
    Ok(tunegate_core::template::flatten_messages(&parts))
}

fn completion_prompts(v: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = |m: &str| ApiError::invalid("prompt", "invalid_type", m.to_string());
    match present(v, "prompt") {
        None => Err(ApiError::invalid("prompt", "missing_required_parameter", "`prompt` is required")),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_N as usize => a.iter().map(|p| p.as_str().map(str::to_string).ok_or_else(|| bad("`prompt` must be a string or an array of strings (token arrays are not supported)"))).collect(),
        Some(Value::Array(_)) => Err(ApiError::invalid("prompt", "invalid_value", format!("`prompt` as an array must hold 1..={MAX_N} strings"))),
        Some(_) => Err(bad("`prompt` must be a string or an array of strings")),
    }
}

/// Checks a request body. `served` maps a fine-tuned model's name to its
/// adapter; nothing else of the server's state is needed, so the property
/// test drives this without a model.
pub fn parse_request(model_id: &str, served: &dyn Fn(&str) -> Option<PathBuf>, body: &[u8], chat: bool) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(v) = v else { return Err(ApiError::bad("the body must be a JSON object")) };
    let known = if chat { CHAT_KEYS } else { COMPLETION_KEYS };
    if let Some(k) = v.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(k, "unknown_parameter", format!("unrecognized request argument `{k}`")));
    }
    let (model, adapter) = match present(&v, "model") {
        None => (model_id.to_string(), None),
        Some(Value::String(m)) if m == model_id => (m.clone(), None),
        Some(Value::String(m)) => match served(m) {
            Some(dir) => (m.clone(), Some(dir)),
            None => return Err(ApiError { param: Some("model".into()), ..ApiError::not_found("model_not_found", format!("the model `{m}` does not exist; GET /v1/models lists what is served")) }),
        },
        Some(x) => return Err(ApiError::invalid("model", "invalid_type", format!("`model` must be a string, not {x}"))),
    };
    let prompts = if chat { vec![chat_text(&v)?] } else { completion_prompts(&v)? };
    if prompts.iter().any(String::is_empty) {
        return Err(ApiError::invalid(if chat { "messages" } else { "prompt" }, "invalid_value", "the prompt is empty"));
    }
    unsupported(&v)?;
    let mut max_tokens = int(&v, "max_tokens", 1, i64::MAX)?;
    if chat {
        max_tokens = int(&v, "max_completion_tokens", 1, i64::MAX)?.or(max_tokens);
    }
    let temperature = num(&v, "temperature", 0.0, 2.0)?;
    let top_p = num(&v, "top_p", 0.0, 1.0)?;
    let top_k = int(&v, "top_k", 0, i64::MAX)?;
    let n = int(&v, "n", 1, MAX_N)?.unwrap_or(1) as usize;
    let seed = match present(&v, "seed") {
        None => None,
        Some(x) => Some(x.as_i64().map(|s| s as u64).or(x.as_u64()).ok_or_else(|| ApiError::invalid("seed", "invalid_type", format!("`seed` must be an integer, not {x}")))?),
    };
    let stop = match present(&v, "stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
        Some(x) => return Err(ApiError::invalid("stop", "invalid_type", format!("`stop` must be a string or an array of up to 4 strings, not {x}"))),
    };
    let stream = boolean(&v, "stream")?.unwrap_or(false);
    let include_usage = match present(&v, "stream_options") {
        None => false,
        Some(_) if !stream => return Err(ApiError::invalid("stream_options", "invalid_value", "`stream_options` is only allowed with `stream: true`")),
        Some(Value::Object(o)) => boolean(o, "include_usage")?.unwrap_or(false),
        Some(x) => return Err(ApiError::invalid("stream_options", "invalid_type", format!("`stream_options` must be an object, not {x}"))),
    };
    let echo = boolean(&v, "echo")?.unwrap_or(false);
    // Chat: `logprobs: true` and `top_logprobs: 0..=20`; completions: the
    // legacy `logprobs: 0..=5` (the number of alternatives).
    let logprobs = if chat {
        let on = boolean(&v, "logprobs")?.unwrap_or(false);
        match int(&v, "top_logprobs", 0, 20)? {
            Some(_) if !on => return Err(ApiError::invalid("top_logprobs", "invalid_value", "`top_logprobs` needs `logprobs: true`")),
            top => on.then_some(top.unwrap_or(0) as usize),
        }
    } else {
        int(&v, "logprobs", 0, 5)?.map(|n| n as usize)
    };
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid("echo", "unsupported_value", "`echo` with `logprobs` is not supported (the prompt's log-probabilities are not computed)"));
    }
    let gen = GenParams {
        max_tokens: 0,
        sampling: SamplingParams { temperature: temperature.unwrap_or(0.0) as f32, top_k: top_k.map(|k| k as usize), top_p: top_p.map(|x| x as f32), seed: seed.unwrap_or(0) },
        stop,
        top_logprobs: logprobs.unwrap_or(0),
        allowed: vec![],
    };
    Ok(Parsed { model, adapter, prompts, gen, max_tokens: max_tokens.map(|m| m as usize), n, stream, include_usage, echo, logprobs })
}

/// The prompt's tokens, and the `max_tokens` it can have: what was asked
/// if it fits the context, else 400 `context_length_exceeded` (a client
/// error: an SDK does not retry it); the server's default, bounded by the
/// context left, when nothing was asked.
pub fn fit_context(engine: &LocalEngine, text: &str, asked: Option<usize>, default: usize, chat: bool) -> Result<(Vec<u32>, usize), ApiError> {
    let tokens = engine.model.tokenizer.encode(text, true, false);
    let ctx = engine.model.model.cfg.context_length;
    let param = if chat { "messages" } else { "prompt" };
    if tokens.len() >= ctx {
        return Err(ApiError::invalid(param, "context_length_exceeded", format!("this model's context is {ctx} tokens; the prompt has {} tokens. Shorten it.", tokens.len())));
    }
    let left = ctx - tokens.len();
    match asked {
        Some(m) if m > left => Err(ApiError::invalid("max_tokens", "context_length_exceeded", format!("this model's context is {ctx} tokens; the prompt has {} and `max_tokens` asks for {m} more (at most {left} fit)", tokens.len()))),
        Some(m) => Ok((tokens, m)),
        None => Ok((tokens, default.min(left))),
    }
}

pub async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, true).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, false).await.unwrap_or_else(IntoResponse::into_response)
}

/// One sequence of a request: which prompt and which choice it is.
struct Seq {
    prompt: usize,
    index: usize,
    tokens: Vec<u32>,
    gen: GenParams,
}

async fn handle(state: Arc<AppState>, req: Request, chat: bool) -> Result<Response, ApiError> {
    let cfg = &state.cfg;
    if let Err(r) = authorize(cfg.api_key.as_deref(), req.headers()) {
        return Ok(r);
    }
    let body = read_body(req.into_body(), cfg.max_body, cfg.body_timeout).await?;
    let served = |m: &str| state.ft.served.lock().ok()?.get(m).map(|(dir, _)| dir.clone());
    let p = parse_request(&cfg.model_id, &served, &body, chat)?;
    // A fine-tuned model: the base with its adapter (loaded once, then shared).
    let engine = match &p.adapter {
        None => state.engine.clone(),
        Some(dir) => {
            let (path, dir) = (cfg.model_path.clone(), dir.clone());
            tokio::task::spawn_blocking(move || LocalEngine::get_with(&path, Some(&dir))).await.map_err(|e| ApiError::server(e.to_string()))?.map_err(|e| ApiError::server(e.to_string()))?
        }
    };
    let mut seqs = vec![];
    let mut prompt_tokens = 0;
    for (pi, text) in p.prompts.iter().enumerate() {
        let (tokens, max_tokens) = fit_context(&engine, text, p.max_tokens, cfg.default_max_tokens, chat)?;
        prompt_tokens += tokens.len();
        for c in 0..p.n {
            let mut gen = p.gen.clone();
            gen.max_tokens = max_tokens;
            // Choices of one request differ when sampling; greedy ones agree.
            gen.sampling.seed = gen.sampling.seed.wrapping_add(c as u64);
            seqs.push(Seq { prompt: pi, index: pi * p.n + c, tokens: tokens.clone(), gen });
        }
    }
    let permits = state.slots.clone().try_acquire_many_owned(seqs.len() as u32).map_err(|_| ApiError { code: Some("overloaded"), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "too many requests in flight; retry shortly") })?;
    let meta = Meta { id: format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, rand_id()), created: chrono::Utc::now().timestamp(), model: p.model.clone(), chat };
    if !p.stream {
        let mut waits = vec![];
        for s in &seqs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            engine.submit(Job { tokens: s.tokens.clone(), params: s.gen.clone(), choices: None, stream: None, reply: tx }).map_err(|e| ApiError::server(e.to_string()))?;
            waits.push(rx);
        }
        // If the client goes away, this future is dropped with the
        // receivers, and the model thread drops the sequences.
        let mut done = vec![];
        for w in waits {
            done.push(w.await.map_err(|_| ApiError::server("the model thread stopped"))?.map_err(ApiError::server)?);
        }
        drop(permits);
        let completion_tokens: usize = done.iter().map(|c| c.completion_tokens).sum();
        let choices: Vec<Value> = seqs
            .iter()
            .zip(&done)
            .map(|(s, c)| {
                let lp = if p.logprobs.is_some() { logprobs_json(&engine, &c.tokens, &c.logprobs, &c.top_logprobs, chat, 0) } else { Value::Null };
                if chat {
                    json!({"index": s.index, "message": {"role": "assistant", "content": c.text, "refusal": null}, "logprobs": lp, "finish_reason": c.finish_reason})
                } else {
                    let text = if p.echo { format!("{}{}", p.prompts[s.prompt], c.text) } else { c.text.clone() };
                    json!({"index": s.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
                }
            })
            .collect();
        return Ok(axum::Json(json!({
            "id": meta.id, "object": if chat { "chat.completion" } else { "text_completion" }, "created": meta.created, "model": meta.model,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }))
        .into_response());
    }
    Ok(stream(engine, seqs, p, meta, prompt_tokens, permits))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// What a streamed response's chunks repeat.
struct Meta {
    id: String,
    created: i64,
    model: String,
    chat: bool,
}

impl Meta {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut c = json!({"id": self.id, "object": if self.chat { "chat.completion.chunk" } else { "text_completion" }, "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    }
    fn choice(&self, index: usize, delta: Option<Value>, logprobs: Value, finish: Option<&str>) -> Value {
        if self.chat {
            json!({"index": index, "delta": delta.unwrap_or(json!({})), "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": index, "text": delta.and_then(|d| d.get("content").cloned()).unwrap_or(json!("")), "logprobs": logprobs, "finish_reason": finish})
        }
    }
}

/// What one sequence reports to the merged stream.
enum Ev {
    Delta(Piece),
    Done(Result<Completion, String>),
}

/// Server-sent events for all the request's sequences as the model
/// produces text. When the client disconnects the body stream is dropped,
/// the forwarders' sends fail, they drop their receivers, and the model
/// thread stops those sequences at its next step.
fn stream(engine: Arc<LocalEngine>, seqs: Vec<Seq>, p: Parsed, meta: Meta, prompt_tokens: usize, permits: tokio::sync::OwnedSemaphorePermit) -> Response {
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel::<(usize, Ev)>();
    let mut failed = None;
    for s in &seqs {
        let (dtx, mut drx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        if let Err(e) = engine.submit(Job { tokens: s.tokens.clone(), params: s.gen.clone(), choices: None, stream: Some(dtx), reply: rtx }) {
            failed = Some(e.to_string());
            break;
        }
        let (etx, i) = (etx.clone(), s.index);
        tokio::spawn(async move {
            while let Some(d) = drx.recv().await {
                if etx.send((i, Ev::Delta(d))).is_err() {
                    return;
                }
            }
            let r = rrx.await.unwrap_or_else(|_| Err("the model thread stopped".into()));
            let _ = etx.send((i, Ev::Done(r)));
        });
    }
    drop(etx);
    let echo: Vec<Option<String>> = seqs.iter().map(|s| p.echo.then(|| p.prompts[s.prompt].clone())).collect();
    let seqs_n = seqs.len();
    let body = async_stream(move |tx| async move {
        let _permits = permits;
        if let Some(e) = failed {
            let _ = tx.send(Ok(format!("data: {}\n\n", ApiError::server(e).body()))).await;
            return;
        }
        let extra_usage = p.include_usage.then_some(Value::Null);
        for (i, e) in echo.into_iter().enumerate() {
            let delta = if meta.chat { Some(json!({"role": "assistant", "content": ""})) } else { e.map(|t| json!({"content": t})) };
            if delta.is_some() && tx.send(Ok(meta.chunk(json!([meta.choice(i, delta, Value::Null, None)]), extra_usage.clone()))).await.is_err() {
                return;
            }
        }
        let mut completion_tokens = 0;
        // Per choice: tokens whose log-probabilities went out, and their
        // bytes (the legacy endpoint's `text_offset`).
        let mut sent = vec![(0usize, 0usize); seqs_n];
        while let Some((i, ev)) = erx.recv().await {
            // The log-probabilities of tokens[from..], after those already sent.
            let lp = |tokens: &[u32], lps: &[f32], tops: &[Vec<(u32, f32)>], from: usize, at: &mut (usize, usize)| -> Value {
                if p.logprobs.is_none() {
                    return Value::Null;
                }
                let from = from.min(tokens.len());
                let v = logprobs_json(&engine, &tokens[from..], &lps[from..], tops.get(from..).unwrap_or_default(), meta.chat, at.1);
                at.0 += tokens.len() - from;
                at.1 += tokens[from..].iter().map(|&t| engine.model.tokenizer.token_to_piece(t, false).len()).sum::<usize>();
                v
            };
            let msg = match ev {
                Ev::Delta(d) => {
                    let l = lp(&d.tokens, &d.logprobs, &d.top_logprobs, 0, &mut sent[i]);
                    meta.chunk(json!([meta.choice(i, Some(json!({"content": d.text})), l, None)]), extra_usage.clone())
                }
                Ev::Done(Ok(c)) => {
                    completion_tokens += c.completion_tokens;
                    // Tokens no piece carried (held back for a stop sequence).
                    let mut msg = String::new();
                    if p.logprobs.is_some() && c.tokens.len() > sent[i].0 {
                        let from = sent[i].0;
                        let l = lp(&c.tokens, &c.logprobs, &c.top_logprobs, from, &mut sent[i]);
                        msg = meta.chunk(json!([meta.choice(i, Some(json!({"content": ""})), l, None)]), extra_usage.clone());
                    }
                    msg + &meta.chunk(json!([meta.choice(i, None, Value::Null, Some(&c.finish_reason))]), extra_usage.clone())
                }
                Ev::Done(Err(e)) => format!("data: {}\n\n", ApiError::server(e).body()),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return; // client gone: dropping erx stops the forwarders
            }
        }
        if p.include_usage {
            let _ = tx.send(Ok(meta.chunk(json!([]), Some(usage(prompt_tokens, completion_tokens))))).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::server("cannot build the stream").into_response())
}

/// OpenAI's `logprobs` object for generated tokens (a whole completion, or
/// the tokens of one streamed chunk): per-token entries for chat, parallel
/// arrays for the legacy completions endpoint, whose `text_offset` starts
/// at `offset` bytes into the completion.
fn logprobs_json(engine: &LocalEngine, tokens: &[u32], logprobs: &[f32], top_logprobs: &[Vec<(u32, f32)>], chat: bool, offset: usize) -> Value {
    let tok = &engine.model.tokenizer;
    let piece = |id: u32| -> (String, Vec<u8>) {
        let b = tok.token_to_piece(id, false).to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    };
    let top = |i: usize| -> Vec<(String, Vec<u8>, f32)> { top_logprobs.get(i).map(|t| t.iter().map(|&(id, lp)| { let (s, b) = piece(id); (s, b, lp) }).collect()).unwrap_or_default() };
    if chat {
        let content: Vec<Value> = tokens
            .iter()
            .zip(logprobs)
            .enumerate()
            .map(|(i, (&id, &lp))| {
                let (s, b) = piece(id);
                json!({"token": s, "logprob": lp, "bytes": b, "top_logprobs": top(i).into_iter().map(|(s, b, lp)| json!({"token": s, "logprob": lp, "bytes": b})).collect::<Vec<_>>()})
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let mut offset = offset;
        let (mut texts, mut offsets) = (vec![], vec![]);
        for &id in tokens {
            let (s, b) = piece(id);
            offsets.push(offset);
            offset += b.len();
            texts.push(s);
        }
        let tops: Vec<Value> = (0..tokens.len()).map(|i| Value::Object(top(i).into_iter().map(|(s, _, lp)| (s, json!(lp))).collect())).collect();
        json!({"tokens": texts, "token_logprobs": logprobs, "top_logprobs": if top_logprobs.is_empty() { Value::Null } else { json!(tops) }, "text_offset": offsets})
    }
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
", "."], "seed": 7, "logprobs": true, "top_logprobs": 2, "n": 2}"#,
        r#"{"model": "ft:m:1", "prompt": ["Once", "Twice"], "max_tokens": 3, "logprobs": 2, "stream": false, "stop": "x", "echo": false}"#,
        r#"{"model": "m", "prompt": "a", "stream": true, "stream_options": {"include_usage": true}, "echo": true}"#,
    ];
    let served = |m: &str| (m == "ft:m:1").then(|| std::path::PathBuf::from("/adapters/1"));
    mutate::fuzz("serve-request", &seeds.map(|s| s.as_bytes().to_vec()), |b| {
        let answers = [parse_request("m", &served, b, true), parse_request("m", &served, b, false)];
        // Whatever is refused is a 4xx in OpenAI's shape.
        for a in &answers {
            if let Err(e) = a {
                assert!(e.status.is_client_error() && e.body()["error"]["message"].is_string(), "{e:?}");
            }
        }
        answers.iter().any(Result::is_ok)
    });
}
