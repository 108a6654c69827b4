//! Issue 17: `tunegate serve` under real clients and load. Each numbered
//! problem of the issue has a test here, against a real server process on
//! 127.0.0.1 with the real model, driven over raw sockets (the official
//! OpenAI Python SDK drives it in tests/serve_sdk.rs).

mod common;
use common::{model_present, start_server, Server};

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(state: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--state-dir", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_server(&args)
}

/// One raw HTTP/1.1 request; returns (status, content-type, body).
fn request(port: u16, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let ct = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string)).unwrap_or_default();
    (status, ct, body.to_string())
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (st, _, b) = request(port, "POST", path, "application/json", body.to_string().as_bytes());
    (st, serde_json::from_str(&b).unwrap_or_else(|_| json!({"raw": b})))
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let (st, _, b) = request(port, "GET", path, "application/json", b"");
    (st, serde_json::from_str(&b).unwrap_or_else(|_| json!({"raw": b})))
}

fn running(port: u16) -> u64 {
    get(port, "/health").1["running"].as_u64().unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A greedy prompt the model continues for as long as it is allowed.
fn counting(max_tokens: u32) -> Value {
    json!({"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": max_tokens})
}

/// (1) A 2-token request used to wait for a running 1,500-token one to end.
#[test]
fn a_short_request_answers_while_a_long_one_runs() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &[]);
    let port = srv.port;
    let long = std::thread::spawn(move || {
        let r = post(port, "/v1/completions", &counting(1500));
        (Instant::now(), r)
    });
    wait_for("the long request to start decoding", 60, || running(port) == 1);
    let t0 = Instant::now();
    let (st, v) = post(port, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    let (short_done, short_took) = (Instant::now(), t0.elapsed());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    let (long_done, (lst, lv)) = long.join().unwrap();
    assert_eq!(lst, 200, "{lv}");
    assert_eq!(lv["usage"]["completion_tokens"], 1500, "the long one must really be long: {lv}");
    assert!(short_done < long_done, "the short request waited for the long one");
    assert!(short_took < Duration::from_secs(10), "2 tokens took {short_took:?} beside a long request");
}

/// (2) A client that hangs up, streaming or not, stops its generation.
#[test]
fn a_client_that_hangs_up_stops_its_generation() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &[]);
    for stream in [false, true] {
        let mut body = counting(1500);
        body["stream"] = json!(stream);
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
        wait_for("the request to start decoding", 60, || running(srv.port) == 1);
        drop(s);
        // Gone within a few decoding steps, not after 1,500 tokens.
        wait_for("the generation to stop after the client left", 10, || running(srv.port) == 0);
    }
}

/// (3) Half-sent requests and idle connections are closed; connections
/// past the cap get a 503 at once instead of holding descriptors.
#[test]
fn slow_idle_and_surplus_connections_are_closed() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &["--header-timeout", "3", "--body-timeout", "3", "--max-connections", "3"]);
    // The start-up probe's connection must be closed (and its place freed)
    // before the three are counted.
    std::thread::sleep(Duration::from_secs(1));
    let open = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        s
    };
    // Three held: a half-sent header, an idle connection, a half-sent body.
    let body = "{\"prompt\": \"a\"";
    let mut held = vec![open(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"), open(b""), open(format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{body}").as_bytes())];
    let mut fourth = open(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut out = String::new();
    let _ = fourth.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503") && out.contains("\"too_many_connections\""), "{out}");
    // All three are let go after the 3 s timeouts: the slow body with a 408.
    let t0 = Instant::now();
    for (i, s) in held.iter_mut().enumerate() {
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if i == 2 {
            assert!(out.starts_with("HTTP/1.1 408") && out.contains("\"timeout\""), "{out}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "slow connections held for {:?}", t0.elapsed());
    // And the server serves again.
    assert_eq!(get(srv.port, "/health").0, 200);
}

/// (4) Bad values are refused by name in OpenAI's shape; `n`,
/// `stream_options.include_usage` and `echo` are honoured.
#[test]
fn parameters_are_checked_and_honoured() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &[]);
    let chat = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Hi"}]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    for (extra, param, code) in [
        (json!({"max_tokens": -5}), "max_tokens", "invalid_value"),
        (json!({"max_tokens": "abc"}), "max_tokens", "invalid_type"),
        (json!({"max_tokens": 2.5}), "max_tokens", "invalid_type"),
        (json!({"max_tokens": 0}), "max_tokens", "invalid_value"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens", "invalid_value"),
        (json!({"temperature": "hot"}), "temperature", "invalid_type"),
        (json!({"temperature": 2.5}), "temperature", "invalid_value"),
        (json!({"top_p": 1.5}), "top_p", "invalid_value"),
        (json!({"top_k": -3}), "top_k", "invalid_value"),
        (json!({"n": 0}), "n", "invalid_value"),
        (json!({"n": 99}), "n", "invalid_value"),
        (json!({"seed": "x"}), "seed", "invalid_type"),
        (json!({"stop": [1]}), "stop", "invalid_type"),
        (json!({"stream_options": {"include_usage": true}}), "stream_options", "invalid_value"),
        (json!({"echo": true}), "echo", "unknown_parameter"),
        (json!({"presence_penalty": 1}), "presence_penalty", "unsupported_value"),
        (json!({"response_format": {"type": "json_object"}}), "response_format", "unsupported_value"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role", "invalid_value"),
        (json!({"model": "nope"}), "model", "model_not_found"),
    ] {
        let (st, v) = post(srv.port, "/v1/chat/completions", &chat(extra.clone()));
        let e = &v["error"];
        assert!(st == 400 || (st == 404 && code == "model_not_found"), "{extra}: {st} {v}");
        assert!(e["param"] == param && e["code"] == code && e["message"].is_string() && e["type"] == "invalid_request_error", "{extra}: {v}");
    }
    // n choices, each with its index.
    let (st, v) = post(srv.port, "/v1/chat/completions", &chat(json!({"n": 3, "max_tokens": 3, "temperature": 1.0, "seed": 1})));
    assert_eq!(st, 200, "{v}");
    let idx: Vec<u64> = v["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [0, 1, 2], "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 9, "{v}");
    // Streaming with usage: every chunk carries `usage: null`, the last
    // before [DONE] has no choices and the totals.
    let (st, _, body) = request(srv.port, "POST", "/v1/chat/completions", "application/json", chat(json!({"n": 2, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})).to_string().as_bytes());
    assert_eq!(st, 200, "{body}");
    let chunks: Vec<Value> = body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
    let last = chunks.last().unwrap();
    assert!(last["choices"].as_array().unwrap().is_empty() && last["usage"]["completion_tokens"] == 8, "{last}");
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()), "{body}");
    let finished: Vec<u64> = chunks.iter().flat_map(|c| c["choices"].as_array().unwrap().clone()).filter(|c| !c["finish_reason"].is_null()).map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(finished.len(), 2, "{body}");
    assert!(body.contains("data: [DONE]"), "{body}");
    // echo: the prompt comes back before the completion.
    let (st, v) = post(srv.port, "/v1/completions", &json!({"prompt": "The sky is", "max_tokens": 3, "echo": true}));
    assert_eq!(st, 200, "{v}");
    assert!(v["choices"][0]["text"].as_str().unwrap().starts_with("The sky is"), "{v}");
}

/// (5) A prompt over the context is a 400 `context_length_exceeded`
/// (which SDKs do not retry), streaming or not; never a 500 or a 200 with
/// an error event.
#[test]
fn a_prompt_over_the_context_is_a_client_error() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &["--max-body", "4000000"]);
    let long = "word ".repeat(40_000);
    for stream in [false, true] {
        let (st, v) = post(srv.port, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": long}], "stream": stream}));
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["code"] == "context_length_exceeded" && v["error"]["param"] == "messages", "{v}");
    }
    let (st, v) = post(srv.port, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 40000}));
    assert!(st == 400 && v["error"]["code"] == "context_length_exceeded" && v["error"]["param"] == "max_tokens", "{v}");
}

fn upload(port: u16, name: &str, content: &[u8]) -> (u16, Value) {
    let mut body = b"--XYZ\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--XYZ\r\n".to_vec();
    body.extend(format!("content-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\ncontent-type: application/jsonl\r\n\r\n").as_bytes());
    body.extend(content);
    body.extend(b"\r\n--XYZ--\r\n");
    let (st, _, b) = request(port, "POST", "/v1/files", "multipart/form-data; boundary=XYZ", &body);
    (st, serde_json::from_str(&b).unwrap_or_else(|_| json!({"raw": b})))
}

/// (6) Every error status has a JSON body in OpenAI's shape; the missing
/// endpoints exist; files survive a restart. (7, uploads) empty or
/// malformed training files are refused at upload, with the line.
#[test]
fn errors_are_json_and_files_and_models_have_their_endpoints() {
    if !model_present() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), &["--max-body", "1000"]);
    for (method, path, body, status) in [
        ("GET", "/nowhere", "".to_string(), 404),
        ("DELETE", "/v1/chat/completions", "".to_string(), 405),
        ("POST", "/v1/completions", format!("{{\"prompt\": \"{}\"}}", "a".repeat(2000)), 413),
        ("POST", "/v1/completions", "{not json".to_string(), 400),
        ("GET", "/v1/models/nope", "".to_string(), 404),
        ("GET", "/v1/files/file-nope", "".to_string(), 404),
        ("GET", "/v1/fine_tuning/jobs?limit=0", "".to_string(), 400),
    ] {
        let (st, ct, b) = request(srv.port, method, path, "application/json", body.as_bytes());
        assert_eq!(st, status, "{method} {path}: {b}");
        assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {b}"));
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{b}");
        assert!(e.as_object().unwrap().contains_key("param") && (e["code"].is_string() || e["code"].is_null()), "{b}");
    }
    let (st, v) = get(srv.port, "/v1/models/gemma-3-270m");
    assert!(st == 200 && v["id"] == "gemma-3-270m" && v["object"] == "model", "{v}");
    // Uploads: empty, not JSONL, a bad record (line named), then good ones.
    for (content, what) in [(&b""[..], "no examples"), (&b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\nnot json\n"[..], "line 2")] {
        let (st, v) = upload(srv.port, "train.jsonl", content);
        assert!(st == 400 && v["error"]["param"] == "file" && v["error"]["message"].as_str().unwrap().contains(what), "{v}");
    }
    let good = b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n";
    let ids: Vec<String> = (0..3).map(|i| {
        let (st, v) = upload(srv.port, &format!("t{i}.jsonl"), good);
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }).collect();
    let (_, v) = get(srv.port, "/v1/files?limit=2");
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["has_more"], true, "{v}");
    let (_, v) = get(srv.port, &format!("/v1/files/{}", ids[1]));
    assert_eq!(v["filename"], "t1.jsonl", "{v}");
    let (st, _, content) = request(srv.port, "GET", &format!("/v1/files/{}/content", ids[1]), "application/json", b"");
    assert!(st == 200 && content.as_bytes() == good, "{content}");
    let (st, _, b) = request(srv.port, "DELETE", &format!("/v1/files/{}", ids[0]), "application/json", b"");
    assert!(st == 200 && b.contains("\"deleted\":true"), "{b}");
    // After a restart the files are still there, the deleted one is not.
    drop(srv);
    let srv = start(state.path(), &[]);
    let (_, v) = get(srv.port, "/v1/files");
    let listed: Vec<&str> = v["data"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert!(listed.contains(&ids[1].as_str()) && listed.contains(&ids[2].as_str()) && !listed.contains(&ids[0].as_str()), "{v}");
}

/// (9) Exposing the model to the network with no key is refused unless
/// asked for with --no-auth, and then warned about.
#[test]
fn allow_remote_without_a_key_is_refused_or_warned() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["serve", "--addr", "0.0.0.0:0", "--allow-remote"]).env_remove("TUNEGATE_API_KEY").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--api-key") && err.contains("--no-auth"), "{err}");
    if !model_present() {
        return;
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["serve", "--addr", "0.0.0.0:0", "--allow-remote", "--no-auth", "--state-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("TUNEGATE_API_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.take().unwrap()), &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("warning:") && first.contains("no key"), "{first}");
}
