//! What every endpoint shares: OpenAI's error shape, the bearer-key check,
//! and reading a body under a size limit and a deadline.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use std::time::Duration;

/// An error as OpenAI's API returns it: `{"error": {"message", "type",
/// "param", "code"}}`, `code` a string or null. SDKs read `param` and
/// `code` to tell the user which field to fix, and retry only on 5xx and
/// 429, so a client's mistake must never come back as a 5xx.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None, code: None }
    }
    /// 400 for a request field: its name and what is wrong with it.
    pub fn invalid(param: &str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: message.into(), param: Some(param.to_string()), code: Some(code) }
    }
    /// 400 about the request as a whole.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code: Some(code), ..ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message) }
    }
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Checks `Authorization: Bearer KEY` when the server has a key.
pub fn authorize(api_key: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the key's length is the only thing a timing attack could learn.
    let ok = given.map(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0).unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ApiError { code: Some("invalid_api_key"), ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "missing or wrong bearer key") }.into_response())
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`: a
/// client that sends its body too slowly (or not at all) gets 408 and its
/// connection back, not a handler held open forever; one too large, 413.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError { code: Some("timeout"), ..ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", format!("the request body did not arrive within {} s", timeout.as_secs())) }),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError { code: Some("request_too_large"), ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("the request body is over {limit} bytes")) })
        }
        Ok(Err(e)) => Err(ApiError::bad(format!("cannot read the request body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}
