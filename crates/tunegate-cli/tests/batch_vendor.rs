//! `eval --batch` end to end against local servers on 127.0.0.1 that speak
//! the documented shapes of OpenAI's Batch API (files with purpose `batch`,
//! `/v1/batches`, output and error files) and Anthropic's Message Batches
//! (`/v1/messages/batches`, `results_url`): partial failures, expiry,
//! cancellation, and `--attach` after the watching process died.

#[path = "common/batch.rs"]
mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use support::{case_of, cmd, err, json_of, label, runs, tg, wrong, CASES};
use tunegate_providers::testserver::{chat_completion, Recorded, Reply, TestServer};

#[derive(Default)]
struct Vendor {
    /// ok | expire | hold (never ends until told)
    mode: String,
    url: String,
    polls: usize,
    /// Request lines (OpenAI) or requests (Anthropic) of the batch.
    requests: Vec<Value>,
    created: Option<Value>,
    upload: String,
    headers_ok: bool,
    live_calls: usize,
}

fn task(dir: &Path, provider: &str, url: &str) {
    let prompts = "  - id: a\n    template: \"Message: {{ input }}\\nTeam:\"\n";
    support::task(dir, prompts, &format!("  - id: {provider}\n    base_url: {url}\n    api_key_env: VENDOR_KEY\n    params: {{ max_tokens: 4, temperature: 0 }}\n"));
}

/// OpenAI's answer for request line k: right for most, wrong for k in
/// 14..17, a 500 for k = 17 and 18, an error line for 19; with `expire`,
/// lines from 15 on were never run.
fn openai_output(s: &Vendor) -> (String, String) {
    let (mut out, mut errs) = (String::new(), String::new());
    for (k, l) in s.requests.iter().enumerate().rev() {
        let id = l["custom_id"].as_str().unwrap();
        let n = case_of(&l["body"]);
        if s.mode == "expire" && k >= 15 {
            errs.push_str(&json!({"id": "x", "custom_id": id, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}).to_string());
            errs.push('\n');
            continue;
        }
        let line = match k {
            0..=13 => json!({"id": "x", "custom_id": id, "response": {"status_code": 200, "request_id": "r", "body": chat_completion(label(n), 100, 1)}, "error": null}),
            14..=16 => json!({"id": "x", "custom_id": id, "response": {"status_code": 200, "request_id": "r", "body": chat_completion(wrong(n), 100, 1)}, "error": null}),
            17 | 18 => json!({"id": "x", "custom_id": id, "response": {"status_code": 500, "request_id": "r", "body": {"error": {"message": "overloaded"}}}, "error": null}),
            _ => json!({"id": "x", "custom_id": id, "response": null, "error": {"code": "server_error", "message": "the batch worker crashed"}}),
        };
        let target = if k == 19 { &mut errs } else { &mut out };
        target.push_str(&line.to_string());
        target.push('\n');
    }
    (out, errs)
}

fn openai_server(state: Arc<Mutex<Vendor>>) -> TestServer {
    TestServer::start(move |_, r: &Recorded| {
        let mut s = state.lock().unwrap();
        if r.header("authorization") != Some("Bearer sk-vendor-secret") {
            return Reply::status(401, r#"{"error":{"message":"bad key"}}"#);
        }
        let batch = |s: &Vendor, status: &str| {
            let done = if status == "in_progress" { 5 } else { s.requests.len() };
            let mut b = json!({"id": "batch_abc", "object": "batch", "endpoint": "/v1/chat/completions", "status": status, "request_counts": {"total": s.requests.len(), "completed": done, "failed": 0}});
            if matches!(status, "completed" | "expired" | "cancelled") {
                b["output_file_id"] = json!("file-out");
                b["error_file_id"] = json!("file-err");
            }
            Reply::ok(b)
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/files") => {
                s.upload = r.body.clone();
                s.requests = r.body.lines().filter(|l| l.starts_with("{\"custom_id\"") || l.starts_with("{\"body\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
                Reply::ok(json!({"id": "file-in", "object": "file", "purpose": "batch"}))
            }
            ("POST", "/v1/batches") => {
                s.created = serde_json::from_str(&r.body).ok();
                batch(&s, "validating")
            }
            ("GET", "/v1/batches/batch_abc") => {
                s.polls += 1;
                match (s.mode.as_str(), s.polls) {
                    ("hold", _) | (_, 1) => batch(&s, "in_progress"),
                    ("expire", _) => batch(&s, "expired"),
                    _ => batch(&s, "completed"),
                }
            }
            ("GET", "/v1/files/file-out/content") => Reply::Json(200, vec![], openai_output(&s).0),
            ("GET", "/v1/files/file-err/content") => Reply::Json(200, vec![], openai_output(&s).1),
            ("POST", "/v1/chat/completions") => {
                s.live_calls += 1;
                let n = case_of(&serde_json::from_str::<Value>(&r.body).unwrap());
                Reply::ok(chat_completion(label(n), 100, 1))
            }
            _ => Reply::status(404, "no such route"),
        }
    })
}

#[test]
fn openai_batch_with_partial_failures_is_scored_at_half_price() {
    let state = Arc::new(Mutex::new(Vendor { mode: "ok".into(), ..Default::default() }));
    let srv = openai_server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "openai:gpt-4o-mini", &format!("{}/v1", srv.url()));
    let o = tg(dir.path(), &["eval", "--batch", "--format", "json"]);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "failures and errors exit 1: {e}");
    assert!(e.contains("submitted batch batch_abc") && e.contains("--attach"), "{e}");
    assert!(e.contains("17 answers scored, 3 provider errors, 0 calls the batch did not run"), "{e}");
    let v = json_of(&o);
    let s = &v["summary"];
    assert_eq!((s["passed"].as_u64(), s["failed"].as_u64(), s["errors"].as_u64()), (Some(14), Some(3), Some(3)), "{s}");
    let r = v["results"].as_array().unwrap().iter().find(|r| r["pass"] == true).unwrap();
    assert!((r["cost_usd"].as_f64().unwrap() - (100.0 * 0.15 + 0.60) / 1e6 * 0.5).abs() < 1e-12, "half price: {r}");
    {
        let st = state.lock().unwrap();
        assert_eq!(st.live_calls, 0, "nothing was called live");
        assert!(st.upload.contains("name=\"purpose\"") && st.upload.contains("batch"), "{}", st.upload);
        assert_eq!(st.requests.len(), CASES);
        assert!(st.requests.iter().all(|l| l["url"] == "/v1/chat/completions" && l["body"]["model"] == "gpt-4o-mini"));
        let c = st.created.as_ref().unwrap();
        assert_eq!((c["input_file_id"].as_str(), c["endpoint"].as_str(), c["completion_window"].as_str()), (Some("file-in"), Some("/v1/chat/completions"), Some("24h")));
    }
    let r = runs(dir.path());
    assert_eq!(r[0]["run"]["status"], "complete");
    let b = &r[0]["run"]["meta"]["batches"][0];
    assert_eq!((b["batch_id"].as_str(), b["ingested"].as_bool()), (Some("batch_abc"), Some(true)), "{b}");
    assert!(!r.to_string().contains("sk-vendor-secret"));
}

#[test]
fn attach_after_the_watcher_died_then_expiry_leaves_calls_for_resume() {
    let state = Arc::new(Mutex::new(Vendor { mode: "hold".into(), ..Default::default() }));
    let srv = openai_server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "openai:gpt-4o-mini", &format!("{}/v1", srv.url()));
    // The watcher dies while the batch is in progress.
    let mut child = cmd(dir.path(), &["eval", "--batch"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while state.lock().unwrap().polls < 3 {
        assert!(t0.elapsed().as_secs() < 60, "the batch was never polled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let r = runs(dir.path());
    let run_id = r[0]["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(r[0]["run"]["status"], "pending", "{r}");
    assert_eq!(r[0]["run"]["meta"]["batches"][0]["batch_id"], "batch_abc", "recorded the moment it existed");

    // The batch expires with 15 of 20 done; --attach scores those.
    state.lock().unwrap().mode = "expire".into();
    let o = tg(dir.path(), &["eval", "--attach", "--format", "json"]);
    let e = err(&o);
    assert!(e.contains("batch batch_abc expired") && e.contains("15 answers scored, 0 provider errors, 5 calls the batch did not run"), "{e}");
    assert!(e.contains("5 calls still pending"), "{e}");
    let v = json_of(&o);
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!((v["summary"]["passed"].as_u64(), v["summary"]["failed"].as_u64(), v["summary"]["errors"].as_u64()), (Some(14), Some(1), Some(0)), "{}", v["summary"]);
    assert_eq!(state.lock().unwrap().live_calls, 0);
    // Attaching again finds nothing to wait for and calls nothing.
    let o = tg(dir.path(), &["eval", "--attach", run_id.as_str()]);
    assert!(err(&o).contains("no vendor batch waiting"), "{}", err(&o));
    assert_eq!(state.lock().unwrap().live_calls, 0);
    // The expired calls run live on --resume.
    let o = tg(dir.path(), &["eval", "--resume", run_id.as_str(), "--format", "json"]);
    assert_eq!(state.lock().unwrap().live_calls, 5, "{}", err(&o));
    assert_eq!(json_of(&o)["summary"]["total"].as_u64(), Some(CASES as u64));
    assert_eq!(runs(dir.path())[0]["run"]["status"], "complete");
}

fn anthropic_server(state: Arc<Mutex<Vendor>>) -> TestServer {
    TestServer::start(move |_, r: &Recorded| {
        let mut s = state.lock().unwrap();
        if r.header("x-api-key") != Some("sk-vendor-secret") {
            return Reply::status(401, r#"{"type":"error","error":{"type":"authentication_error","message":"bad key"}}"#);
        }
        s.headers_ok = r.header("anthropic-version") == Some("2023-06-01");
        let batch = |s: &Vendor, ended: bool| {
            let n = s.requests.len();
            let counts = if ended { json!({"processing": 0, "succeeded": n - 4, "errored": 2, "canceled": 1, "expired": 1}) } else { json!({"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}) };
            let mut b = json!({"id": "msgbatch_01", "type": "message_batch", "processing_status": if ended { "ended" } else { "in_progress" }, "request_counts": counts, "results_url": null});
            if ended {
                b["results_url"] = json!(format!("{}/v1/messages/batches/msgbatch_01/results", s.url));
            }
            Reply::ok(b)
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/messages/batches") => {
                let v: Value = serde_json::from_str(&r.body).unwrap();
                s.requests = v["requests"].as_array().unwrap().clone();
                batch(&s, false)
            }
            ("GET", "/v1/messages/batches/msgbatch_01") => {
                s.polls += 1;
                let ended = s.polls >= 2;
                batch(&s, ended)
            }
            ("GET", "/v1/messages/batches/msgbatch_01/results") => {
                let mut out = String::new();
                for (k, q) in s.requests.iter().enumerate() {
                    let id = q["custom_id"].as_str().unwrap();
                    let n = case_of(&q["params"]);
                    let message = |t: &str| json!({"id": "msg", "type": "message", "role": "assistant", "content": [{"type": "text", "text": t}], "usage": {"input_tokens": 100, "output_tokens": 1}});
                    let result = match k {
                        0..=12 => json!({"type": "succeeded", "message": message(label(n))}),
                        13..=15 => json!({"type": "succeeded", "message": message(wrong(n))}),
                        16 | 17 => json!({"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}}),
                        18 => json!({"type": "canceled"}),
                        _ => json!({"type": "expired"}),
                    };
                    out.push_str(&json!({"custom_id": id, "result": result}).to_string());
                    out.push('\n');
                }
                Reply::Json(200, vec![], out)
            }
            _ => Reply::status(404, "no such route"),
        }
    })
}

#[test]
fn anthropic_message_batch_with_errors_cancellation_and_expiry() {
    let state = Arc::new(Mutex::new(Vendor::default()));
    let srv = anthropic_server(state.clone());
    state.lock().unwrap().url = srv.url();
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "anthropic:claude-haiku-4-5", &srv.url());
    let o = tg(dir.path(), &["eval", "--batch", "--format", "json"]);
    let e = err(&o);
    assert!(e.contains("submitted batch msgbatch_01"), "{e}");
    assert!(e.contains("16 answers scored, 2 provider errors, 2 calls the batch did not run"), "{e}");
    let v = json_of(&o);
    let s = &v["summary"];
    assert_eq!((s["passed"].as_u64(), s["failed"].as_u64(), s["errors"].as_u64()), (Some(13), Some(3), Some(2)), "{s}");
    let err_row = v["results"].as_array().unwrap().iter().find(|r| !r["error"].is_null()).unwrap();
    assert!(err_row["error"].as_str().unwrap().contains("invalid_request_error") && err_row["error"].as_str().unwrap().contains("too large"), "{err_row}");
    // Half of claude-haiku-4's $1 / $5 per million tokens.
    let ok = v["results"].as_array().unwrap().iter().find(|r| r["pass"] == true).unwrap();
    assert!((ok["cost_usd"].as_f64().unwrap() - (100.0 * 1.0 + 5.0) / 1e6 * 0.5).abs() < 1e-12, "{ok}");
    let st = state.lock().unwrap();
    assert!(st.headers_ok, "anthropic-version header");
    assert_eq!(st.requests.len(), CASES);
    let p = &st.requests[0]["params"];
    assert_eq!((p["model"].as_str(), p["max_tokens"].as_u64()), (Some("claude-haiku-4-5"), Some(4)), "{p}");
    assert!(st.requests.iter().all(|q| q["custom_id"].as_str().unwrap().len() <= 64));
    assert_eq!(runs(dir.path())[0]["run"]["status"], "pending", "the canceled and expired calls wait for --resume");
}

#[test]
fn providers_without_a_batch_endpoint_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "openai-compatible:m", "http://127.0.0.1:9/v1");
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), yaml.replace("  - id: openai-compatible:m\n    base_url: http://127.0.0.1:9/v1\n    api_key_env: VENDOR_KEY\n", "  - id: echo\n")).unwrap();
    let o = tg(dir.path(), &["eval", "--batch"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("has no batch endpoint") && err(&o).contains("--export-batch"), "{}", err(&o));
    assert!(!dir.path().join(".tunegate/tunegate.db").exists() || runs(dir.path()).as_array().unwrap().is_empty());
}
