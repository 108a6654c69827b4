//! OpenAI chat completions, and any server that speaks the same API (vLLM,
//! llama.cpp server, Ollama, `tunegate serve`).

use crate::http::{client, post_json};
use crate::{pricing, Provider, ProviderError, Request, Response};
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
            client: client(),
        }
    }

    pub fn body(&self, req: &Request) -> Value {
        let p = &req.params;
        let mut b = json!({"model": self.model, "messages": req.messages});
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
        b
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
        let output = v
            .pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .ok_or_else(|| ProviderError::BadResponse("no choices[0].message.content in the response".into()))?
            .to_string();
        let pt = v.pointer("/usage/prompt_tokens").and_then(|x| x.as_u64());
        let ct = v.pointer("/usage/completion_tokens").and_then(|x| x.as_u64());
        Ok(Response { output, prompt_tokens: pt, completion_tokens: ct, cost_usd: pricing::cost(self.price, pt, ct) })
    }
}
