//! What the HTTP providers share: status mapping, Retry-After, redaction.

use crate::ProviderError;
use std::time::Duration;

/// Replaces every occurrence of the key in text a server sent back, so a
/// "401: invalid key sk-..." never reaches the store or a log.
pub fn redact(text: &str, key: Option<&str>) -> String {
    let mut t = text.to_string();
    if let Some(k) = key.filter(|k| k.len() >= 4) {
        t = t.replace(k, "[REDACTED]");
    }
    if t.chars().count() > 500 {
        t = format!("{}…", t.chars().take(500).collect::<String>());
    }
    t
}

/// Reads `retry-after-ms` or `retry-after` (seconds; HTTP dates are rare
/// from API servers and are treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 600.0)));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)))
}

pub fn map_send_error(e: reqwest::Error, timeout: Duration, key: Option<&str>) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(timeout.as_secs_f64())
    } else {
        ProviderError::Connection(redact(&error_chain(&e), key))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Sends a JSON POST and returns the parsed JSON body of a 2xx answer,
/// mapping everything else to a [`ProviderError`].
pub async fn post_json(
    client: &reqwest::Client,
    req: reqwest::RequestBuilder,
    timeout: Duration,
    key: Option<&str>,
) -> Result<serde_json::Value, ProviderError> {
    let body = send_text(client, req, timeout, key).await?;
    serde_json::from_str(&body).map_err(|e| ProviderError::BadResponse(format!("body is not JSON ({e}): {}", redact(&body, key))))
}

/// Sends a request and returns the body of a 2xx answer as text (a batch's
/// JSONL results), mapping everything else to a [`ProviderError`].
pub async fn send_text(client: &reqwest::Client, req: reqwest::RequestBuilder, timeout: Duration, key: Option<&str>) -> Result<String, ProviderError> {
    let _ = client;
    let resp = req.timeout(timeout).send().await.map_err(|e| map_send_error(e, timeout, key))?;
    let status = resp.status();
    let ra = retry_after(resp.headers());
    // A body cut off mid-way surfaces here as a read error: transient.
    let body = resp.text().await.map_err(|e| map_send_error(e, timeout, key))?;
    let message = || redact(&error_message(&body), key);
    if status.as_u16() == 429 {
        return Err(ProviderError::RateLimited { message: message(), retry_after: ra });
    }
    if status.is_server_error() {
        return Err(ProviderError::Server { status: status.as_u16(), message: message(), retry_after: ra });
    }
    if !status.is_success() {
        return Err(ProviderError::Client { status: status.as_u16(), message: message() });
    }
    Ok(body)
}

/// The `error.message` of an OpenAI- or Anthropic-style error body, else the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("a TLS backend is compiled in")
}
