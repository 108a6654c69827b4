//! The HTTP providers against a real server on 127.0.0.1.

use std::time::Duration;
use tunegate_core::{Message, Params};
use tunegate_providers::testserver::{chat_completion, Reply, TestServer};
use tunegate_providers::{AnthropicProvider, OpenAiProvider, Provider, ProviderError, Request};

fn req() -> Request {
    Request { messages: vec![Message::new("system", "Be brief."), Message::new("user", "Say hi")], params: Params { temperature: Some(0.0), max_tokens: Some(5), ..Default::default() } }
}

fn openai(url: &str, timeout_ms: u64) -> OpenAiProvider {
    OpenAiProvider::new("m", "gpt-4o-mini", &format!("{url}/v1"), Some("sk-test-secret-123".into()), Duration::from_millis(timeout_ms), tunegate_providers::pricing::lookup("gpt-4o-mini"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn openai_success_sends_the_request_and_reads_usage_and_cost() {
    let srv = TestServer::start(|_, _| Reply::ok(chat_completion("hi", 12, 3)));
    let p = openai(&srv.url(), 5000);
    let r = rt().block_on(p.complete(&req())).unwrap();
    assert_eq!(r.output, "hi");
    assert_eq!(r.prompt_tokens, Some(12));
    assert_eq!(r.completion_tokens, Some(3));
    assert!((r.cost_usd.unwrap() - (12.0 * 0.15 + 3.0 * 0.6) / 1e6).abs() < 1e-15);
    let rec = srv.requests.lock().unwrap()[0].clone();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.header("authorization"), Some("Bearer sk-test-secret-123"));
    let body: serde_json::Value = serde_json::from_str(&rec.body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_tokens"], 5);
}

#[test]
fn status_429_is_retryable_and_carries_retry_after() {
    let srv = TestServer::start(|_, _| Reply::Json(429, vec![("retry-after".into(), "2".into())], r#"{"error":{"message":"slow down"}}"#.into()));
    let e = rt().block_on(openai(&srv.url(), 5000).complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::RateLimited { .. }), "{e:?}");
    assert!(e.retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert!(e.to_string().contains("slow down"));
}

#[test]
fn status_500_is_retryable_400_is_not() {
    let srv = TestServer::start(|n, _| if n == 0 { Reply::status(500, "boom") } else { Reply::status(400, r#"{"error":{"message":"bad param"}}"#) });
    let p = openai(&srv.url(), 5000);
    let rt = rt();
    let e = rt.block_on(p.complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::Server { status: 500, .. }) && e.retryable(), "{e:?}");
    let e = rt.block_on(p.complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::Client { status: 400, .. }) && !e.retryable(), "{e:?}");
    assert!(e.to_string().contains("bad param"));
}

#[test]
fn a_server_that_never_answers_times_out() {
    let srv = TestServer::start(|_, _| Reply::Hang(Duration::from_secs(5)));
    let e = rt().block_on(openai(&srv.url(), 300).complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::Timeout(_)), "{e:?}");
    assert!(e.retryable());
}

#[test]
fn malformed_body_is_an_error_not_an_output() {
    let srv = TestServer::start(|n, _| if n == 0 { Reply::status(200, "{not json") } else { Reply::ok(serde_json::json!({"choices": []})) });
    let p = openai(&srv.url(), 5000);
    let rt = rt();
    let e = rt.block_on(p.complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::BadResponse(_)) && !e.retryable(), "{e:?}");
    let e = rt.block_on(p.complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::BadResponse(_)), "{e:?}");
}

#[test]
fn truncated_body_is_a_retryable_connection_error() {
    let srv = TestServer::start(|_, _| {
        let body = chat_completion("hello there", 1, 1).to_string();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        Reply::Raw([head.as_bytes(), &body.as_bytes()[..body.len() / 2]].concat())
    });
    let e = rt().block_on(openai(&srv.url(), 5000).complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::Connection(_)), "{e:?}");
    assert!(e.retryable());
}

#[test]
fn connection_refused_is_retryable() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let e = rt().block_on(openai(&url, 2000).complete(&req())).unwrap_err();
    assert!(matches!(e, ProviderError::Connection(_)) && e.retryable(), "{e:?}");
}

#[test]
fn the_key_is_scrubbed_from_what_servers_send_back() {
    let srv = TestServer::start(|_, r| {
        let auth = r.header("authorization").unwrap_or("").to_string();
        Reply::status(401, &format!(r#"{{"error":{{"message":"Incorrect API key provided: {auth}"}}}}"#))
    });
    let e = rt().block_on(openai(&srv.url(), 5000).complete(&req())).unwrap_err();
    let s = e.to_string();
    assert!(!s.contains("sk-test-secret-123"), "{s}");
    assert!(s.contains("[REDACTED]"), "{s}");
}

#[test]
fn anthropic_messages_api() {
    let srv = TestServer::start(|_, _| Reply::ok(serde_json::json!({"content": [{"type": "text", "text": "bonjour"}], "usage": {"input_tokens": 9, "output_tokens": 2}})));
    let p = AnthropicProvider::new("a", "claude-3-5-haiku-latest", &srv.url(), "ak-secret".into(), Duration::from_secs(5), tunegate_providers::pricing::lookup("claude-3-5-haiku"));
    let r = rt().block_on(p.complete(&req())).unwrap();
    assert_eq!(r.output, "bonjour");
    assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(9), Some(2)));
    let rec = srv.requests.lock().unwrap()[0].clone();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.header("x-api-key"), Some("ak-secret"));
    let body: serde_json::Value = serde_json::from_str(&rec.body).unwrap();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(body["max_tokens"], 5);
}
