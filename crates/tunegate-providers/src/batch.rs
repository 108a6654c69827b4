//! Batch files: OpenAI's Batch input and output JSONL. It is the hand-off
//! format of large evaluations: OpenAI's Batch API reads and writes it, and
//! so do the offline engines (vLLM `run-batch`, Ray Data with vLLM), so one
//! exported file runs wherever the capacity is. Anthropic's Message Batches
//! carry the same `custom_id` rule (1-64 of `[A-Za-z0-9_-]`) and are
//! converted at its edge.

use crate::ProviderError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The stable id of one planned call: the run, then a hash of (prompt,
/// provider, case, repeat). 37 characters of `[0-9a-f-]`, within both
/// OpenAI's and Anthropic's rule, and the same every time the plan is
/// made, so an output file matches however its engine orders the lines.
pub fn custom_id(run_id: &str, prompt: &str, provider: &str, case: &str, repeat: u32) -> String {
    let mut h = Sha256::new();
    // Length-prefixed, so no two different tuples hash the same bytes.
    for part in [prompt, provider, case] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(repeat.to_le_bytes());
    let run: String = run_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(30).collect();
    format!("{run}_{}", &hex::encode(h.finalize())[..16])
}

/// The run a custom id belongs to (what comes before its last `_`).
pub fn run_of(custom_id: &str) -> Option<&str> {
    custom_id.rsplit_once('_').map(|(r, _)| r).filter(|r| !r.is_empty())
}

/// Whether `id` is a valid custom id for OpenAI and Anthropic batches.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One line of a batch input file.
pub fn request_line(custom_id: &str, url: &str, body: &Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
}

/// What an engine answered for one call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A 200: the response body (a chat or text completion).
    Body(Value),
    /// A non-200 status or an `error` line: stored as a provider error.
    Failed(ProviderError),
    /// Never run: the batch expired or was cancelled before it got there.
    /// The call stays pending, so `--resume` (or another batch) asks it.
    NotRun(String),
}

/// A batch output file, read and checked.
#[derive(Debug, Default)]
pub struct OutputFile {
    pub answers: HashMap<String, Answer>,
    /// Ids that came more than once (the first answer is kept).
    pub duplicates: Vec<String>,
    pub lines: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Error codes with which OpenAI marks requests a batch never ran.
const NOT_RUN_CODES: &[&str] = &["batch_expired", "batch_cancelled", "batch_canceled"];

/// Reads OpenAI's Batch output format, one
/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`
/// a line, in any order (OpenAI's error file has the same shape). A line
/// that is not such an object is refused with its number: an output file
/// that does not parse is not half imported.
pub fn read_output(text: &str) -> Result<OutputFile, BadLine> {
    let mut out = OutputFile::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let bad = |message: String| BadLine { line, message };
        let v: Value = serde_json::from_str(raw).map_err(|e| bad(format!("not JSON ({e})")))?;
        let id = v.get("custom_id").and_then(|x| x.as_str()).ok_or_else(|| bad("no string field `custom_id`: is this a batch output file (OpenAI's Batch output format)?".into()))?;
        let answer = parse_answer(&v).map_err(|m| bad(format!("custom_id {id}: {m}")))?;
        out.lines += 1;
        if out.answers.contains_key(id) {
            out.duplicates.push(id.to_string());
            continue;
        }
        out.answers.insert(id.to_string(), answer);
    }
    Ok(out)
}

fn parse_answer(v: &Value) -> Result<Answer, String> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("error");
        let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("").to_string();
        if NOT_RUN_CODES.contains(&code) {
            return Ok(Answer::NotRun(code.to_string()));
        }
        return Ok(Answer::Failed(ProviderError::Batch { code: code.to_string(), message }));
    }
    let resp = v.get("response").filter(|r| !r.is_null()).ok_or("neither `response` nor `error`")?;
    let status = resp.get("status_code").and_then(|s| s.as_u64()).ok_or("no numeric `response.status_code`")? as u16;
    let body = resp.get("body").cloned().unwrap_or(Value::Null);
    if status == 200 {
        return Ok(Answer::Body(body));
    }
    Ok(Answer::Failed(status_error(status, &body)))
}

/// A non-200 answer as the error a live call with that status would give.
pub fn status_error(status: u16, body: &Value) -> ProviderError {
    let message = body.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| body.to_string());
    match status {
        429 => ProviderError::RateLimited { message, retry_after: None },
        s if s >= 500 => ProviderError::Server { status: s, message, retry_after: None },
        s => ProviderError::Client { status: s, message },
    }
}

/// The text and token counts of a chat completion (`choices[0].message.content`)
/// or a text completion (`choices[0].text`), the two bodies a batch line holds.
pub fn parse_completion(v: &Value) -> Result<(String, Option<u64>, Option<u64>), ProviderError> {
    let output = v
        .pointer("/choices/0/message/content")
        .or_else(|| v.pointer("/choices/0/text"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| ProviderError::BadResponse("no choices[0].message.content (or choices[0].text) in the response".into()))?
        .to_string();
    let pt = v.pointer("/usage/prompt_tokens").and_then(|x| x.as_u64());
    let ct = v.pointer("/usage/completion_tokens").and_then(|x| x.as_u64());
    Ok((output, pt, ct))
}

/// Where a vendor batch stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchStatus {
    pub id: String,
    /// The vendor's own word (`in_progress`, `completed`, `expired`, `ended`...).
    pub status: String,
    /// No more answers will come: fetch the results.
    pub ended: bool,
    pub total: u64,
    /// Requests finished so far, failed ones included.
    pub done: u64,
    pub failed: u64,
    /// Where the results are: output and error file ids (OpenAI) or the
    /// results URL (Anthropic).
    pub results: Vec<String>,
    /// Why the whole batch failed, when it did (nothing ran).
    pub error: Option<String>,
}

/// A vendor's batch endpoint: OpenAI's files + `/v1/batches`, Anthropic's
/// `/v1/messages/batches`. Half the price of live calls, answers within a
/// day; the runner treats a batch as one slow, cheap call per request.
#[async_trait::async_trait]
pub trait BatchApi: Send + Sync {
    /// Submits (custom id, request) pairs; returns the batch id.
    async fn submit(&self, items: &[(String, crate::Request)]) -> Result<String, ProviderError>;
    async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError>;
    /// The results of an ended batch, as OpenAI Batch output lines.
    async fn results(&self, st: &BatchStatus) -> Result<String, ProviderError>;
}

/// A batch status from OpenAI's `/v1/batches/{id}` object.
pub fn openai_status(v: &Value) -> Result<BatchStatus, ProviderError> {
    let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(|| ProviderError::BadResponse("batch without an `id`".into()))?.to_string();
    let status = v.get("status").and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.pointer(&format!("/request_counts/{k}")).and_then(|x| x.as_u64()).unwrap_or(0);
    let results = ["output_file_id", "error_file_id"].iter().filter_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_string)).collect();
    let error = (status == "failed").then(|| v.pointer("/errors/data/0/message").and_then(|m| m.as_str()).unwrap_or("the batch failed validation").to_string());
    Ok(BatchStatus { ended: matches!(status.as_str(), "completed" | "failed" | "expired" | "cancelled"), total: n("total"), done: n("completed") + n("failed"), failed: n("failed"), id, status, results, error })
}

/// A batch status from Anthropic's `/v1/messages/batches/{id}` object.
pub fn anthropic_status(v: &Value) -> Result<BatchStatus, ProviderError> {
    let id = v.get("id").and_then(|x| x.as_str()).ok_or_else(|| ProviderError::BadResponse("message batch without an `id`".into()))?.to_string();
    let status = v.get("processing_status").and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.pointer(&format!("/request_counts/{k}")).and_then(|x| x.as_u64()).unwrap_or(0);
    let total = ["processing", "succeeded", "errored", "canceled", "expired"].iter().map(|k| n(k)).sum();
    let results = v.get("results_url").and_then(|x| x.as_str()).map(|u| vec![u.to_string()]).unwrap_or_default();
    Ok(BatchStatus { ended: status == "ended", total, done: total - n("processing"), failed: n("errored"), id, status, results, error: None })
}

/// Anthropic's result lines as OpenAI output lines: a `succeeded` message
/// is a 200 body, `errored` an error line, `canceled` and `expired` the
/// codes of calls a batch never ran.
pub fn anthropic_results_as_openai(text: &str) -> Result<String, BadLine> {
    let mut out = String::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |message: String| BadLine { line: i + 1, message };
        let v: Value = serde_json::from_str(raw).map_err(|e| bad(format!("not JSON ({e})")))?;
        let id = v.get("custom_id").and_then(|x| x.as_str()).ok_or_else(|| bad("no `custom_id`".into()))?;
        let r = v.get("result").ok_or_else(|| bad("no `result`".into()))?;
        let line = match r.get("type").and_then(|t| t.as_str()) {
            Some("succeeded") => json!({"custom_id": id, "response": {"status_code": 200, "body": r.get("message").cloned().unwrap_or(Value::Null)}, "error": null}),
            Some("errored") => {
                let e = r.pointer("/error/error").or_else(|| r.get("error")).cloned().unwrap_or(Value::Null);
                json!({"custom_id": id, "response": null, "error": {"code": e.get("type").and_then(|t| t.as_str()).unwrap_or("errored"), "message": e.get("message").and_then(|m| m.as_str()).unwrap_or("")}})
            }
            Some("canceled") => json!({"custom_id": id, "response": null, "error": {"code": "batch_cancelled", "message": "canceled"}}),
            Some("expired") => json!({"custom_id": id, "response": null, "error": {"code": "batch_expired", "message": "expired"}}),
            other => return Err(bad(format!("unknown result type {other:?}"))),
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_are_stable_valid_and_name_their_run() {
        let a = custom_id("20261204-010203-abcd", "short", "openai:gpt-4o-mini", "case-7", 0);
        assert_eq!(a, custom_id("20261204-010203-abcd", "short", "openai:gpt-4o-mini", "case-7", 0));
        assert_ne!(a, custom_id("20261204-010203-abcd", "short", "openai:gpt-4o-mini", "case-7", 1));
        assert_ne!(custom_id("r", "a\0b", "c", "d", 0), custom_id("r", "a", "b\0c", "d", 0));
        assert!(valid_custom_id(&a), "{a}");
        assert_eq!(run_of(&a), Some("20261204-010203-abcd"));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id(&"x".repeat(65)));
        assert!(!valid_custom_id("a b"));
    }

    #[test]
    fn output_lines_become_answers_errors_and_calls_never_run() {
        let text = [
            r#"{"id":"b1","custom_id":"r_1","response":{"status_code":200,"request_id":"q","body":{"choices":[{"message":{"content":"yes"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}},"error":null}"#,
            r#"{"id":"b2","custom_id":"r_2","response":{"status_code":400,"request_id":"q","body":{"error":{"message":"bad max_tokens"}}},"error":null}"#,
            r#"{"id":"b3","custom_id":"r_3","response":null,"error":{"code":"server_error","message":"boom"}}"#,
            r#"{"id":"b4","custom_id":"r_4","response":null,"error":{"code":"batch_expired","message":"not run"}}"#,
            "",
            r#"{"id":"b5","custom_id":"r_1","response":{"status_code":500,"body":{}},"error":null}"#,
        ]
        .join("\n");
        let out = read_output(&text).unwrap();
        assert_eq!(out.lines, 5);
        assert_eq!(out.duplicates, vec!["r_1".to_string()]);
        let Answer::Body(b) = &out.answers["r_1"] else { panic!("r_1 is a body") };
        assert_eq!(parse_completion(b).unwrap(), ("yes".into(), Some(5), Some(1)));
        assert!(matches!(&out.answers["r_2"], Answer::Failed(ProviderError::Client { status: 400, message }) if message == "bad max_tokens"));
        assert!(matches!(&out.answers["r_3"], Answer::Failed(ProviderError::Batch { code, .. }) if code == "server_error"));
        assert!(matches!(&out.answers["r_4"], Answer::NotRun(_)));
    }

    #[test]
    fn a_line_that_is_not_an_output_line_is_refused_with_its_number() {
        let e = read_output("{\"custom_id\":\"a\",\"response\":{\"status_code\":200,\"body\":{}}}\n{\"custom_id\":\"b\"}\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("neither"), "{e}");
        let e = read_output("\n\nnot json\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = read_output("{\"custom_id\": 5}").unwrap_err();
        assert!(e.message.contains("custom_id"), "{e}");
    }
}
