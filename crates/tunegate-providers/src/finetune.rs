//! A client for the OpenAI-compatible fine-tuning API (files with purpose
//! `fine-tune`, jobs, events, checkpoints, cancel). Several vendors and
//! self-hosted servers expose this API, so the endpoint is always given;
//! nothing here assumes OpenAI itself.

use crate::http::{client, post_json, redact};
use crate::ProviderError;
use serde_json::{json, Value};
use std::time::Duration;

pub struct FineTuneClient {
    base_url: String,
    /// Never printed: `Debug` is not derived.
    key: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    /// validating_files, queued, running, succeeded, failed or cancelled.
    pub status: String,
    pub model: String,
    pub fine_tuned_model: Option<String>,
    pub error: Option<String>,
    pub trained_tokens: Option<u64>,
}

impl Job {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
    fn from_json(v: &Value) -> Result<Job, ProviderError> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(Job {
            id: s("id").ok_or_else(|| ProviderError::BadResponse("job without an `id`".into()))?,
            status: s("status").ok_or_else(|| ProviderError::BadResponse("job without a `status`".into()))?,
            model: s("model").unwrap_or_default(),
            fine_tuned_model: s("fine_tuned_model"),
            error: v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string),
            trained_tokens: v.get("trained_tokens").and_then(|x| x.as_u64()),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub created_at: i64,
    pub level: String,
    pub message: String,
}

impl FineTuneClient {
    pub fn new(base_url: &str, key: Option<String>, timeout: Duration) -> Self {
        FineTuneClient { base_url: base_url.trim_end_matches('/').to_string(), key, timeout, client: client() }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        post_json(&self.client, self.auth(rb), self.timeout, self.key.as_deref()).await
    }

    /// Uploads a JSONL training file; returns the file id.
    pub async fn upload_file(&self, filename: &str, bytes: Vec<u8>) -> Result<String, ProviderError> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()).mime_str("application/jsonl").map_err(|e| ProviderError::Config(e.to_string()))?;
        let form = reqwest::multipart::Form::new().text("purpose", "fine-tune").part("file", part);
        let v = self.send(self.client.post(format!("{}/files", self.base_url)).multipart(form)).await?;
        v.get("id").and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| ProviderError::BadResponse(format!("file upload answered without an id: {}", redact(&v.to_string(), self.key.as_deref()))))
    }

    pub async fn create_job(&self, model: &str, training_file: &str, validation_file: Option<&str>, hyperparameters: Value, suffix: Option<&str>) -> Result<Job, ProviderError> {
        let mut body = json!({"model": model, "training_file": training_file, "hyperparameters": hyperparameters});
        if let Some(v) = validation_file {
            body["validation_file"] = json!(v);
        }
        if let Some(s) = suffix {
            body["suffix"] = json!(s);
        }
        let v = self.send(self.client.post(format!("{}/fine_tuning/jobs", self.base_url)).json(&body)).await?;
        Job::from_json(&v)
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ProviderError> {
        let v = self.send(self.client.get(format!("{}/fine_tuning/jobs/{id}", self.base_url))).await?;
        Job::from_json(&v)
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, ProviderError> {
        let v = self.send(self.client.post(format!("{}/fine_tuning/jobs/{id}/cancel", self.base_url))).await?;
        Job::from_json(&v)
    }

    /// The job's events, oldest first (the API lists newest first).
    pub async fn events(&self, id: &str) -> Result<Vec<Event>, ProviderError> {
        let v = self.send(self.client.get(format!("{}/fine_tuning/jobs/{id}/events?limit=100", self.base_url))).await?;
        let mut out: Vec<Event> = v
            .get("data")
            .and_then(|d| d.as_array())
            .ok_or_else(|| ProviderError::BadResponse("events without a `data` list".into()))?
            .iter()
            .map(|e| Event {
                id: e.get("id").and_then(|x| x.as_str()).unwrap_or("").to_string(),
                created_at: e.get("created_at").and_then(|x| x.as_i64()).unwrap_or(0),
                level: e.get("level").and_then(|x| x.as_str()).unwrap_or("info").to_string(),
                message: e.get("message").and_then(|x| x.as_str()).unwrap_or("").to_string(),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    pub async fn checkpoints(&self, id: &str) -> Result<Vec<Value>, ProviderError> {
        let v = self.send(self.client.get(format!("{}/fine_tuning/jobs/{id}/checkpoints", self.base_url))).await?;
        Ok(v.get("data").and_then(|d| d.as_array()).cloned().unwrap_or_default())
    }
}
