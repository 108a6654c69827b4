//! Anthropic's Messages API.

use crate::http::{client, post_json};
use crate::{pricing, Provider, ProviderError, Request, Response};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;
use tunegate_core::Price;

pub struct AnthropicProvider {
    name: String,
    model: String,
    base_url: String,
    key: String,
    timeout: Duration,
    price: Option<Price>,
    client: reqwest::Client,
}

impl AnthropicProvider {
    pub fn new(name: &str, model: &str, base_url: &str, key: String, timeout: Duration, price: Option<Price>) -> Self {
        AnthropicProvider { name: name.into(), model: model.into(), base_url: base_url.trim_end_matches('/').into(), key, timeout, price, client: client() }
    }

    /// The Messages API request body (also the `params` of a Message Batch).
    pub fn body(&self, req: &Request) -> Value {
        let p = &req.params;
        // The Messages API takes the system prompt apart from the turns.
        let system: Vec<&str> = req.messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
        let turns: Vec<Value> = req.messages.iter().filter(|m| m.role != "system").map(|m| json!({"role": m.role, "content": m.content})).collect();
        let mut b = json!({"model": self.model, "messages": turns, "max_tokens": p.max_tokens.unwrap_or(1024)});
        if !system.is_empty() {
            b["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = p.temperature {
            b["temperature"] = json!(t.min(1.0));
        }
        if let Some(t) = p.top_p {
            b["top_p"] = json!(t);
        }
        if let Some(k) = p.top_k {
            b["top_k"] = json!(k);
        }
        if !p.stop.is_empty() {
            b["stop_sequences"] = json!(p.stop);
        }
        for (k, v) in &p.extra {
            b[k] = v.clone();
        }
        b
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> String {
        format!("anthropic|{}|{}", self.base_url, self.model)
    }
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError> {
        let rb = self
            .client
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .json(&self.body(req));
        let v = post_json(&self.client, rb, self.timeout, Some(&self.key)).await?;
        let (output, pt, ct) = parse_message(&v)?;
        Ok(Response { output, prompt_tokens: pt, completion_tokens: ct, cost_usd: pricing::cost(self.price, pt, ct) })
    }
    /// In a batch file, a chat completion for this model: the format's
    /// engines speak OpenAI's API (`--batch` sends Messages requests).
    fn batch_request(&self, req: &Request) -> (&'static str, Value) {
        ("/v1/chat/completions", crate::openai::chat_body(&self.model, req))
    }
    /// A Messages API result (a Message Batch's `message`), or a chat
    /// completion when the exported file ran on an OpenAI-format engine.
    fn batch_response(&self, body: &Value) -> Result<Response, ProviderError> {
        let (output, pt, ct) = if body.get("content").is_some() { parse_message(body)? } else { crate::batch::parse_completion(body)? };
        Ok(Response { output, prompt_tokens: pt, completion_tokens: ct, cost_usd: pricing::cost(self.price, pt, ct).map(|c| c * pricing::BATCH_PRICE_FACTOR) })
    }
    fn batch_api(&self) -> Option<&dyn crate::batch::BatchApi> {
        Some(self)
    }
}

impl AnthropicProvider {
    fn headers(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.header("x-api-key", &self.key).header("anthropic-version", "2023-06-01")
    }
}

/// Anthropic's Message Batches: `custom_id` + `params` (a Messages API
/// request) per request; results from the batch's `results_url`.
#[async_trait]
impl crate::batch::BatchApi for AnthropicProvider {
    async fn submit(&self, items: &[(String, Request)]) -> Result<String, ProviderError> {
        let requests: Vec<Value> = items.iter().map(|(id, r)| json!({"custom_id": id, "params": self.body(r)})).collect();
        let rb = self.headers(self.client.post(format!("{}/v1/messages/batches", self.base_url))).json(&json!({"requests": requests}));
        let v = post_json(&self.client, rb, self.timeout, Some(&self.key)).await?;
        Ok(crate::batch::anthropic_status(&v)?.id)
    }
    async fn status(&self, id: &str) -> Result<crate::batch::BatchStatus, ProviderError> {
        let rb = self.headers(self.client.get(format!("{}/v1/messages/batches/{id}", self.base_url)));
        crate::batch::anthropic_status(&post_json(&self.client, rb, self.timeout, Some(&self.key)).await?)
    }
    async fn results(&self, st: &crate::batch::BatchStatus) -> Result<String, ProviderError> {
        let url = st.results.first().ok_or_else(|| ProviderError::BadResponse(format!("message batch {} ended without a results_url", st.id)))?;
        let text = crate::http::send_text(&self.client, self.headers(self.client.get(url)), self.timeout, Some(&self.key)).await?;
        crate::batch::anthropic_results_as_openai(&text).map_err(|e| ProviderError::BadResponse(format!("message batch {} results, {e}", st.id)))
    }
}

/// The text and token counts of a Messages API response.
fn parse_message(v: &Value) -> Result<(String, Option<u64>, Option<u64>), ProviderError> {
    let content = v.get("content").and_then(|c| c.as_array()).ok_or_else(|| ProviderError::BadResponse("no `content` array in the response".into()))?;
    let output: String = content.iter().filter_map(|b| b.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join("");
    let pt = v.pointer("/usage/input_tokens").and_then(|x| x.as_u64());
    let ct = v.pointer("/usage/output_tokens").and_then(|x| x.as_u64());
    Ok((output, pt, ct))
}
