//! OpenAI chat completions, and any server that speaks the same API (vLLM,
//! llama.cpp server, Ollama, `tunegate serve`).

use crate::http::{client, post_json};
use crate::{batch, pricing, Provider, ProviderError, Request, Response};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;
use tunegate_core::Price;

pub struct OpenAiProvider {
    name: String,
    model: String,
    base_url: String,
    /// Never printed: `Debug` is not derived for this type.
    key: Option<String>,
    timeout: Duration,
    price: Option<Price>,
    /// What a batch answer costs against a live one (OpenAI: half).
    batch_price: f64,
    client: reqwest::Client,
}

impl OpenAiProvider {
    pub fn new(name: &str, model: &str, base_url: &str, key: Option<String>, timeout: Duration, price: Option<Price>) -> Self {
        OpenAiProvider {
            name: name.into(),
            model: model.into(),
            base_url: base_url.trim_end_matches('/').into(),
            key,
            timeout,
            price,
            batch_price: 1.0,
            client: client(),
        }
    }

    /// Prices batch answers at `factor` of the live price (the vendor's
    /// batch discount; 1.0 for self-hosted servers).
    pub fn with_batch_price(mut self, factor: f64) -> Self {
        self.batch_price = factor;
        self
    }

    pub fn body(&self, req: &Request) -> Value {
        chat_body(&self.model, req)
    }
}

/// A chat completions request body for `model`.
pub fn chat_body(model: &str, req: &Request) -> Value {
    let mut b = json!({"model": model, "messages": req.messages});
    sampling_fields(&mut b, &req.params);
    b
}

/// The sampling parameters OpenAI's chat and text completions share.
pub fn sampling_fields(b: &mut Value, p: &tunegate_core::Params) {
    if let Some(t) = p.temperature {
        b["temperature"] = json!(t);
    }
    if let Some(m) = p.max_tokens {
        b["max_tokens"] = json!(m);
    }
    if let Some(t) = p.top_p {
        b["top_p"] = json!(t);
    }
    if !p.stop.is_empty() {
        b["stop"] = json!(p.stop);
    }
    if let Some(s) = p.seed {
        b["seed"] = json!(s);
    }
    for (k, v) in &p.extra {
        b[k] = v.clone();
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> String {
        format!("openai-chat|{}|{}", self.base_url, self.model)
    }
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError> {
        let mut rb = self.client.post(format!("{}/chat/completions", self.base_url)).json(&self.body(req));
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        let v = post_json(&self.client, rb, self.timeout, self.key.as_deref()).await?;
        let (output, pt, ct) = batch::parse_completion(&v)?;
        Ok(Response { output, prompt_tokens: pt, completion_tokens: ct, cost_usd: pricing::cost(self.price, pt, ct) })
    }
    fn batch_request(&self, req: &Request) -> (&'static str, Value) {
        ("/v1/chat/completions", self.body(req))
    }
    fn batch_response(&self, body: &Value) -> Result<Response, ProviderError> {
        let (output, pt, ct) = batch::parse_completion(body)?;
        Ok(Response { output, prompt_tokens: pt, completion_tokens: ct, cost_usd: pricing::cost(self.price, pt, ct).map(|c| c * self.batch_price) })
    }
    fn batch_api(&self) -> Option<&dyn batch::BatchApi> {
        Some(self)
    }
}

impl OpenAiProvider {
    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }
}

/// OpenAI's Batch API: the requests as a JSONL file (purpose `batch`), a
/// batch over it with a 24-hour window, its output and error files.
#[async_trait]
impl batch::BatchApi for OpenAiProvider {
    async fn submit(&self, items: &[(String, Request)]) -> Result<String, ProviderError> {
        let lines: String = items.iter().map(|(id, r)| batch::request_line(id, "/v1/chat/completions", &self.body(r)) + "\n").collect();
        let part = reqwest::multipart::Part::bytes(lines.into_bytes()).file_name("batch.jsonl").mime_str("application/jsonl").map_err(|e| ProviderError::Config(e.to_string()))?;
        let form = reqwest::multipart::Form::new().text("purpose", "batch").part("file", part);
        let key = self.key.as_deref();
        let f = post_json(&self.client, self.auth(self.client.post(format!("{}/files", self.base_url)).multipart(form)), self.timeout, key).await?;
        let file = f.get("id").and_then(|x| x.as_str()).ok_or_else(|| ProviderError::BadResponse("file upload answered without an id".into()))?;
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        let b = post_json(&self.client, self.auth(self.client.post(format!("{}/batches", self.base_url)).json(&body)), self.timeout, key).await?;
        Ok(batch::openai_status(&b)?.id)
    }
    async fn status(&self, id: &str) -> Result<batch::BatchStatus, ProviderError> {
        let v = post_json(&self.client, self.auth(self.client.get(format!("{}/batches/{id}", self.base_url))), self.timeout, self.key.as_deref()).await?;
        batch::openai_status(&v)
    }
    async fn results(&self, st: &batch::BatchStatus) -> Result<String, ProviderError> {
        let mut out = String::new();
        for file in &st.results {
            let rb = self.auth(self.client.get(format!("{}/files/{file}/content", self.base_url)));
            let text = crate::http::send_text(&self.client, rb, self.timeout, self.key.as_deref()).await?;
            out.push_str(text.trim_end());
            out.push('\n');
        }
        Ok(out)
    }
}
