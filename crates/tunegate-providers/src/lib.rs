//! Providers: anything that turns chat messages into a completion. The
//! runner only sees the [`Provider`] trait; retries, caching and rate
//! limits live in the runner, so every provider gets them for free and a
//! provider only has to say whether an error is worth retrying.

mod anthropic;
pub mod batch;
pub mod finetune;
mod exec;
mod http;
pub mod lifecycle;
pub mod local;
mod openai;
pub mod pricing;
#[doc(hidden)]
pub mod testserver;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tunegate_core::{Message, Params, ProviderSpec};

pub use anthropic::AnthropicProvider;
pub use exec::ExecProvider;
pub use openai::OpenAiProvider;

#[derive(Debug, Clone)]
pub struct Request {
    pub messages: Vec<Message>,
    pub params: Params,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub output: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

/// Why a provider call failed. Messages never contain API keys: HTTP
/// providers scrub their key from anything a server sends back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("rate limited (HTTP 429): {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, message: String, retry_after: Option<Duration> },
    #[error("request timed out after {0:.1}s")]
    Timeout(f64),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("malformed response: {0}")]
    BadResponse(String),
    #[error("request rejected (HTTP {status}): {message}")]
    Client { status: u16, message: String },
    #[error("{0}")]
    Config(String),
    #[error("command failed: {0}")]
    Exec(String),
    /// An `error` line of a batch output file: the engine could not make the call.
    #[error("batch request failed ({code}): {message}")]
    Batch { code: String, message: String },
}

impl ProviderError {
    /// 429, 5xx, timeouts and dropped connections are transient; a 4xx, a
    /// body we cannot parse or a failing command will fail the same way again.
    pub fn retryable(&self) -> bool {
        matches!(self, ProviderError::RateLimited { .. } | ProviderError::Server { .. } | ProviderError::Timeout(_) | ProviderError::Connection(_))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } | ProviderError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short stable name stored with the result, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Server { .. } => "server",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Connection(_) => "connection",
            ProviderError::BadResponse(_) => "bad_response",
            ProviderError::Client { .. } => "client",
            ProviderError::Config(_) => "config",
            ProviderError::Exec(_) => "exec",
            ProviderError::Batch { .. } => "batch",
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The name results are filed under (the spec's label or id).
    fn name(&self) -> &str;
    /// What makes two calls interchangeable for the cache: provider kind,
    /// endpoint and model. Never includes credentials.
    fn identity(&self) -> String;
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError>;

    /// This call as one request of a batch file (OpenAI's Batch input
    /// format): the endpoint and the body. By default a chat completion for
    /// a model named after the provider; HTTP providers send their own body,
    /// the local model a text completion of exactly the prompt it reads.
    fn batch_request(&self, req: &Request) -> (&'static str, serde_json::Value) {
        ("/v1/chat/completions", openai::chat_body(self.name(), req))
    }

    /// The answer a batch engine gave for one request, as a live call would
    /// have returned it, priced at the vendor's batch price where it has one.
    fn batch_response(&self, body: &serde_json::Value) -> Result<Response, ProviderError> {
        let (output, prompt_tokens, completion_tokens) = batch::parse_completion(body)?;
        Ok(Response { output, prompt_tokens, completion_tokens, cost_usd: None })
    }

    /// The vendor's batch endpoint, for providers that have one.
    fn batch_api(&self) -> Option<&dyn batch::BatchApi> {
        None
    }
}

/// Returns the rendered prompt as the completion. Useful to see exactly what
/// a model would receive, and to benchmark the harness itself.
pub struct EchoProvider {
    name: String,
}

impl EchoProvider {
    pub fn new(name: &str) -> Self {
        EchoProvider { name: name.to_string() }
    }
}

/// A rough token count (4 characters a token) for providers that report
/// none; documented as an estimate wherever it is shown.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[async_trait]
impl Provider for EchoProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> String {
        "echo".into()
    }
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError> {
        let output = tunegate_core::template::flatten_messages(&req.messages);
        let t = estimate_tokens(&output);
        Ok(Response { output, prompt_tokens: Some(t), completion_tokens: Some(t), cost_usd: Some(0.0) })
    }
}

/// Builds the provider a task file names. `lookup_env` reads environment
/// variables (injected so tests control it). Fails when a key is missing,
/// before any case runs.
pub fn build(spec: &ProviderSpec, task_dir: &std::path::Path, lookup_env: &dyn Fn(&str) -> Option<String>) -> Result<Arc<dyn Provider>, ProviderError> {
    let (scheme, rest) = spec.id.split_once(':').unwrap_or((spec.id.as_str(), ""));
    let name = spec.name().to_string();
    let timeout = Duration::from_secs_f64(spec.timeout_s.unwrap_or(120.0));
    let key = |default: &str| -> Result<String, ProviderError> {
        let var = spec.api_key_env.clone().unwrap_or_else(|| default.to_string());
        lookup_env(&var).filter(|k| !k.is_empty()).ok_or_else(|| ProviderError::Config(format!("provider `{}` needs an API key in the environment variable {var}, which is not set", spec.id)))
    };
    Ok(match scheme {
        "echo" => Arc::new(EchoProvider::new(&name)),
        "exec" => Arc::new(ExecProvider::new(&name, rest, task_dir, timeout)),
        "openai" => {
            let base = spec.base_url.clone().unwrap_or_else(|| "https://api.openai.com/v1".into());
            Arc::new(OpenAiProvider::new(&name, rest, &base, Some(key("OPENAI_API_KEY")?), timeout, spec.price.or_else(|| pricing::lookup(rest))).with_batch_price(pricing::BATCH_PRICE_FACTOR))
        }
        "openai-compatible" => {
            let base = spec.base_url.clone().ok_or_else(|| ProviderError::Config(format!("provider `{}` needs base_url", spec.id)))?;
            // Self-hosted servers often need no key; use one when configured.
            let k = match &spec.api_key_env {
                Some(_) => Some(key("")?),
                None => None,
            };
            Arc::new(OpenAiProvider::new(&name, rest, &base, k, timeout, spec.price.or_else(|| pricing::lookup(rest))))
        }
        "anthropic" => {
            let base = spec.base_url.clone().unwrap_or_else(|| "https://api.anthropic.com".into());
            Arc::new(AnthropicProvider::new(&name, rest, &base, key("ANTHROPIC_API_KEY")?, timeout, spec.price.or_else(|| pricing::lookup(rest))))
        }
        "local" => Arc::new(local::LocalProvider::new(&name, rest, spec.adapter.as_deref(), task_dir)?),
        "tuned" => return Err(ProviderError::Config(format!("provider `{}`: tuned models are looked up in the run store by `tunegate eval`", spec.id))),
        other => return Err(ProviderError::Config(format!("unknown provider type `{other}`"))),
    })
}
