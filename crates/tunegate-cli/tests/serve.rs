//! `tunegate serve` as a client sees it: a real server process on
//! 127.0.0.1 with the real model, raw sockets for the abuse cases, and the
//! openai-compatible provider running an eval against it.

mod common;
use common::{model_present, start_server, Server};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};


fn start(extra: &[&str]) -> Server {
    start_server(extra)
}

/// One raw HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn serve_speaks_openai_and_survives_bad_clients() {
    if !model_present() {
        return;
    }
    let srv = start(&["--api-key", "test-key", "--max-body", "4096"]);
    let p = srv.port;
    // Auth.
    assert_eq!(http(p, "GET", "/v1/models", None, "").0, 401);
    assert_eq!(http(p, "GET", "/v1/models", Some("wrong"), "").0, 401);
    let (st, body) = http(p, "GET", "/v1/models", Some("test-key"), "");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"gemma-3-270m\""), "{body}");
    // A chat completion.
    let req = r#"{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "The capital of France is"}], "max_tokens": 8, "temperature": 0}"#;
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), req);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().len() > 0);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    // Completions.
    let (st, body) = http(p, "POST", "/v1/completions", Some("test-key"), r#"{"prompt": "1, 2, 3,", "max_tokens": 4}"#);
    assert_eq!(st, 200, "{body}");
    // Malformed JSON, wrong shapes, unknown model: JSON errors, server alive.
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), "{\"messages\": [");
    assert_eq!(st, 400);
    assert!(body.contains("not valid JSON"), "{body}");
    assert_eq!(http(p, "POST", "/v1/chat/completions", Some("test-key"), r#"{"messages": "hi"}"#).0, 400);
    assert_eq!(http(p, "POST", "/v1/chat/completions", Some("test-key"), r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#).0, 404);
    // Oversized body.
    let big = format!(r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#, "x".repeat(10_000));
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), &big);
    assert_eq!(st, 413, "{body}");
    // A streaming client that disconnects after the first event.
    {
        let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        let req = r#"{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 200, "stream": true}"#;
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer test-key\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{req}", req.len()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let t0 = Instant::now();
        while !line.starts_with("data: ") {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(t0.elapsed() < Duration::from_secs(60));
        }
        assert!(line.contains("chat.completion.chunk"), "{line}");
    } // dropped mid-stream
    // A full stream ends with [DONE].
    let req = r#"{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "stream": true}"#;
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), req);
    assert_eq!(st, 200);
    assert!(body.contains("data: [DONE]"), "{body}");
    // Log-probabilities: greedy picks the most likely token, so each
    // chosen token heads its own top list with the same log-probability.
    let req = r#"{"messages": [{"role": "user", "content": "The capital of France is"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3}"#;
    let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), req);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let mut text = String::new();
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], t["token"], "{body}");
        assert!((top[0]["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(t["bytes"].as_array().unwrap().len(), t["token"].as_str().unwrap().len());
        text.push_str(t["token"].as_str().unwrap());
    }
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    let (st, body) = http(p, "POST", "/v1/completions", Some("test-key"), r#"{"prompt": "1, 2, 3,", "max_tokens": 4, "logprobs": 2}"#);
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!(n > 0);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
    assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|t| t.as_object().unwrap().len() <= 2 && !t.as_object().unwrap().is_empty()));
    // Streamed, the same log-probabilities come chunk by chunk (several
    // chunks), and together equal the whole answer's, including the
    // tokens of a stop sequence that the text never shows.
    for (path, req) in [
        ("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "The capital of France is"}], "max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 2, "stop": ["."]}"#),
        ("/v1/completions", r#"{"prompt": "1, 2, 3,", "max_tokens": 10, "logprobs": 2, "stop": [", 7"]}"#),
    ] {
        let (st, whole) = http(p, "POST", path, Some("test-key"), req);
        assert_eq!(st, 200, "{whole}");
        let whole: serde_json::Value = serde_json::from_str(&whole).unwrap();
        let (st, body) = http(p, "POST", path, Some("test-key"), &req.replacen('{', r#"{"stream": true, "#, 1));
        assert_eq!(st, 200, "{body}");
        let chunks: Vec<serde_json::Value> = body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
        let lps: Vec<&serde_json::Value> = chunks.iter().map(|c| &c["choices"][0]["logprobs"]).filter(|l| !l.is_null()).collect();
        assert!(lps.len() >= 2, "all in one chunk: {body}");
        let keys: &[&str] = if path.contains("chat") { &["content"] } else { &["tokens", "token_logprobs", "top_logprobs", "text_offset"] };
        for key in keys {
            let got: Vec<serde_json::Value> = lps.iter().flat_map(|l| l[*key].as_array().cloned().unwrap_or_default()).collect();
            assert_eq!(&got, whole["choices"][0]["logprobs"][*key].as_array().unwrap(), "{path} {key}: {body}");
        }
    }
    for bad in [r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, r#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}"#] {
        let (st, body) = http(p, "POST", "/v1/chat/completions", Some("test-key"), bad);
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body.contains("logprobs"), "{body}");
    }
    // Still serving after all that.
    assert_eq!(http(p, "GET", "/v1/models", Some("test-key"), "").0, 200);
}

#[test]
fn serve_refuses_a_non_loopback_address_without_allow_remote() {
    let out = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["serve", "--addr", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[test]
fn openai_compatible_provider_evaluates_against_serve() {
    if !model_present() {
        return;
    }
    let srv = start(&["--api-key", "serve-secret"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), "{\"input\": \"The capital of France is\", \"expected\": \"Paris\"}\n{\"input\": \"1, 2, 3,\", \"expected\": \"4\"}\n").unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: s\n  kind: generation\nprompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: openai-compatible:gemma-3-270m\n    base_url: http://127.0.0.1:{}/v1\n    api_key_env: SERVE_KEY\n    params: {{ temperature: 0, max_tokens: 6 }}\ndata:\n  eval: data/eval.jsonl\nassert:\n  - type: icontains\n",
        srv.port
    );
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "--no-progress", "--format", "json"]).current_dir(dir.path()).env("SERVE_KEY", "serve-secret").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["summary"]["errors"], 0, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert!(v["results"][0]["completion_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn fine_tuning_endpoints_train_and_serve_the_tuned_model() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(&["--api-key", "ft-key", "--state-dir", state.path().to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let ex = ["charged twice", "app crashes", "cannot log in", "parcel late", "refund please", "screen frozen", "password reset"];
    let labels = ["billing", "technical", "account", "shipping", "billing", "technical", "account"];
    let lines: String = ex.iter().zip(labels).map(|(m, l)| format!("{{\"input\": \"{m}\", \"expected\": \"{l}\"}}\n")).collect();
    std::fs::write(dir.path().join("data/examples.jsonl"), lines).unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), "{\"input\": \"my order never came\", \"expected\": \"shipping\"}\n").unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: t\n  kind: classification\n  labels: [billing, technical, account, shipping]\nprompts:\n  - id: bare\n    template: \"Message: {{{{ input }}}}\\nTeam:\"\nproviders:\n  - id: tuned:latest\n    params: {{ max_tokens: 4, stop: [\"\\n\"] }}\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\ntune:\n  base: openai-compatible:gemma-3-270m\n  prompt: bare\n  backend: remote\n  base_url: http://127.0.0.1:{}/v1\n  api_key_env: FT_KEY\n  epochs: 1\n  batch_size: 4\n",
        srv.port
    );
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["tune", "--poll-interval", "0.5"])
        .current_dir(dir.path())
        .env("FT_KEY", "ft-key")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Issue 17 (8): the job trains in a child process of the server (its
    // memory goes back to the system when it ends), which is gone after.
    let state_dir = state.path().to_str().unwrap().to_string();
    let trainer_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| std::fs::read(e.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).is_ok_and(|c| c.contains("serve-train") && c.contains(&state_dir)))
    };
    let pid = child.id();
    let mut seen = false;
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists() && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ")) {
        seen |= trainer_running();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{out}{err}");
    assert!(seen, "no `tunegate serve-train` process was seen while the job ran");
    assert!(!trainer_running(), "the training process ended with its job");
    assert!(err.contains("succeeded") && err.contains("training loss"), "{err}");
    let model = out.lines().find_map(|l| l.strip_prefix("fine-tuned model: ")).unwrap().trim().to_string();
    assert!(model.starts_with("ft:gemma-3-270m:"), "{model}");
    // Served by name, listed in /v1/models.
    let (st, body) = http(srv.port, "GET", "/v1/models", Some("ft-key"), "");
    assert_eq!(st, 200);
    assert!(body.contains(&model), "{body}");
    let (st, body) = http(srv.port, "POST", "/v1/chat/completions", Some("ft-key"), &format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "Message: parcel late\nTeam:"}}], "max_tokens": 3}}"#));
    assert_eq!(st, 200, "{body}");
    // And the eval picks it up through the store: tuned:JOB (by model name here).
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap().replace("tuned:latest", &format!("tuned:{model}"));
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "--no-progress", "--format", "json"]).current_dir(dir.path()).env("FT_KEY", "ft-key").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(v["summary"]["errors"], 0, "{v}");
    // Unknown jobs and bad uploads get JSON errors.
    assert_eq!(http(srv.port, "GET", "/v1/fine_tuning/jobs/nope", Some("ft-key"), "").0, 404);
    assert_eq!(http(srv.port, "POST", "/v1/fine_tuning/jobs", Some("ft-key"), r#"{"model": "gemma-3-270m", "training_file": "file-none"}"#).0, 400);
    // Issue 17 (7): hyper-parameters checked at creation, before the file:
    // out of range or of the wrong type is 400 with `param` naming the field.
    for (h, field) in [
        (r#"{"n_epochs": -1}"#, "hyperparameters.n_epochs"),
        (r#"{"n_epochs": 2.5}"#, "hyperparameters.n_epochs"),
        (r#"{"batch_size": 0}"#, "hyperparameters.batch_size"),
        (r#"{"learning_rate_multiplier": -5}"#, "hyperparameters.learning_rate_multiplier"),
        (r#"{"learning_rate_multiplier": "fast"}"#, "hyperparameters.learning_rate_multiplier"),
        (r#"{"warmup": 3}"#, "hyperparameters.warmup"),
    ] {
        let (st, body) = http(srv.port, "POST", "/v1/fine_tuning/jobs", Some("ft-key"), &format!(r#"{{"model": "gemma-3-270m", "training_file": "file-none", "hyperparameters": {h}}}"#));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(st == 400 && v["error"]["param"] == field, "{h}: {st} {body}");
    }
    // Issue 17 (8): job records live in the state directory, not only in
    // memory: after a restart the job, its events and its model are there.
    let (_, body) = http(srv.port, "GET", "/v1/fine_tuning/jobs?limit=1", Some("ft-key"), "");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let job = job["data"][0].clone();
    drop(srv);
    let srv = start(&["--api-key", "ft-key", "--state-dir", state.path().to_str().unwrap()]);
    let (st, body) = http(srv.port, "GET", &format!("/v1/fine_tuning/jobs/{}", job["id"].as_str().unwrap()), Some("ft-key"), "");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(st == 200 && again["status"] == "succeeded" && again["fine_tuned_model"] == model.as_str() && again["finished_at"].is_i64(), "{body}");
    let (_, body) = http(srv.port, "GET", &format!("/v1/fine_tuning/jobs/{}/events", job["id"].as_str().unwrap()), Some("ft-key"), "");
    assert!(body.contains("training loss"), "{body}");
    assert!(http(srv.port, "GET", "/v1/models", Some("ft-key"), "").1.contains(&model));
}
