//! What every endpoint of `tunegate serve` shares: OpenAI's error shape
//! and the bearer-key check.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": {"message": message.into(), "type": kind, "code": status.as_u16()}}))).into_response()
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
        Err(error(StatusCode::UNAUTHORIZED, "invalid_api_key", "missing or wrong bearer key"))
    }
}
