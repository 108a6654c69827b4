//! `tunegate tune --backend remote` against a real HTTP server on 127.0.0.1
//! that implements the OpenAI-compatible fine-tuning endpoints: success,
//! failure, cancel, a server that errors or drops the connection mid-poll,
//! and `--attach` after losing contact.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use tunegate_providers::testserver::{chat_completion, Reply, TestServer};

#[derive(Default)]
struct State {
    /// ok | fail | flaky | dead
    mode: String,
    polls: usize,
    cancelled: bool,
    uploads: Vec<String>,
    created: Option<serde_json::Value>,
    /// Bodies of the chat requests (the tuned model answering or judging).
    chats: Vec<String>,
}

fn server(state: Arc<Mutex<State>>) -> TestServer {
    TestServer::start(move |_, r| {
        let mut s = state.lock().unwrap();
        let auth_ok = r.header("authorization") == Some("Bearer ft-secret");
        if !auth_ok {
            return Reply::status(401, r#"{"error":{"message":"bad key"}}"#);
        }
        let job = |status: &str, model: Option<&str>, err: Option<&str>| {
            Reply::ok(serde_json::json!({"id": "ftjob-1", "object": "fine_tuning.job", "model": "base-model", "status": status, "fine_tuned_model": model, "error": err.map(|m| serde_json::json!({"message": m}))}))
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/files") => {
                s.uploads.push(r.body.clone());
                Reply::ok(serde_json::json!({"id": format!("file-{}", s.uploads.len()), "object": "file", "purpose": "fine-tune"}))
            }
            ("POST", "/v1/fine_tuning/jobs") => {
                s.created = serde_json::from_str(&r.body).ok();
                job("validating_files", None, None)
            }
            ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel") => {
                s.cancelled = true;
                job("cancelled", None, None)
            }
            ("GET", p) if p.starts_with("/v1/fine_tuning/jobs/ftjob-1/events") => Reply::ok(serde_json::json!({"data": (0..s.polls.min(3)).rev().map(|i| serde_json::json!({"id": format!("ev-{i}"), "created_at": i, "level": "info", "message": format!("step {i}")})).collect::<Vec<_>>()})),
            ("GET", "/v1/fine_tuning/jobs/ftjob-1/checkpoints") => Reply::ok(serde_json::json!({"data": [{"id": "ckpt-1", "step_number": 10}]})),
            ("GET", "/v1/fine_tuning/jobs/ftjob-1") => {
                s.polls += 1;
                if s.cancelled {
                    return job("cancelled", None, None);
                }
                match s.mode.as_str() {
                    "dead" => Reply::status(500, "down"),
                    "flaky" if s.polls == 1 => Reply::status(500, "hiccup"),
                    "flaky" if s.polls == 2 => Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{\"id\": \"ftj".to_vec()),
                    "fail" if s.polls >= 2 => job("failed", None, Some("training loss diverged")),
                    _ if s.polls >= 3 => job("succeeded", Some("ft:base-model:triage:1"), None),
                    _ => job("running", None, None),
                }
            }
            ("POST", "/v1/chat/completions") => {
                s.chats.push(r.body.clone());
                // As a judge it prefers the output shown first; as a
                // classifier it answers by the prompt.
                let answer = if r.body.contains("output_A") {
                    r#"{"winner": "A", "reason": "the first is better"}"#
                } else if r.body.contains("Short:") {
                    "other"
                } else {
                    "billing"
                };
                Reply::ok(chat_completion(answer, 5, 1))
            }
            _ => Reply::status(404, "no such route"),
        }
    })
}

fn task(dir: &Path, url: &str) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let ex: String = (0..12).map(|i| format!("{{\"input\": \"training message {i}\", \"expected\": \"{}\"}}\n", if i % 2 == 0 { "billing" } else { "other" })).collect();
    std::fs::write(dir.join("data/examples.jsonl"), ex).unwrap();
    std::fs::write(dir.join("data/eval.jsonl"), "{\"input\": \"an eval message\", \"expected\": \"billing\"}\n").unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: triage\n  kind: classification\n  labels: [billing, other]\nprompts:\n  - id: bare\n    template: \"Message: {{{{ input }}}}\\nTeam:\"\nproviders:\n  - id: tuned:ftjob-1\n    params: {{ max_tokens: 4 }}\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\ntune:\n  base: openai-compatible:base-model\n  prompt: bare\n  backend: remote\n  base_url: {url}/v1\n  api_key_env: FT_KEY\n  epochs: 2\n"
    );
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
}

fn tg(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).args(["--poll-interval", "0.02"].iter().filter(|_| args[0] == "tune")).current_dir(dir).env("FT_KEY", "ft-secret").output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn success_records_the_model_and_eval_uses_it() {
    let state = Arc::new(Mutex::new(State { mode: "ok".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ft:base-model:triage:1"), "{out}");
    assert!(err(&o).contains("step 2"), "events are shown: {}", err(&o));
    {
        let s = state.lock().unwrap();
        assert_eq!(s.uploads.len(), 1);
        assert!(s.uploads[0].contains("fine-tune") && s.uploads[0].contains("training message 11"));
        let c = s.created.as_ref().unwrap();
        assert_eq!(c["model"], "base-model");
        assert_eq!(c["training_file"], "file-1");
        assert_eq!(c["hyperparameters"]["n_epochs"], 2);
    }
    let o = tg(dir.path(), &["tune", "--list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("succeeded"));
    let o = tg(dir.path(), &["tune", "--checkpoints", "ftjob-1"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ckpt-1"));
    // The tuned model is a provider by job id.
    let o = tg(dir.path(), &["eval", "--no-progress", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", err(&o)));
    assert_eq!(v["summary"]["passed"], 1, "{v}");
    assert_eq!(v["results"][0]["provider"], "tuned:ftjob-1");
}

#[test]
fn failure_and_cancel_paths() {
    let state = Arc::new(Mutex::new(State { mode: "fail".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("training loss diverged"), "{}", err(&o));
    let o = tg(dir.path(), &["tune", "--cancel", "ftjob-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(state.lock().unwrap().cancelled);
    let o = tg(dir.path(), &["tune", "--list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("cancelled"));
}

#[test]
fn errors_and_dropped_connections_mid_poll_do_not_lose_the_job() {
    // A 500 then a connection cut mid-body: polling carries on and succeeds.
    let state = Arc::new(Mutex::new(State { mode: "flaky".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("could not poll"), "{}", err(&o));

    // A server that stays down: tune gives up watching, the job stays
    // recorded, and --attach resumes once the server is back.
    let state = Arc::new(Mutex::new(State { mode: "dead".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let o = tg(dir.path(), &["tune", "--max-poll-failures", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--attach ftjob-1"), "{}", err(&o));
    let o = tg(dir.path(), &["tune", "--list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ftjob-1"));
    state.lock().unwrap().mode = "ok".into();
    let o = tg(dir.path(), &["tune", "--attach", "ftjob-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ft:base-model:triage:1"));
}

#[test]
fn a_leaking_example_is_left_out_and_strict_refuses() {
    // An eval case that is also an example: tuning leaves that example out,
    // says which line, and goes on; the eval set is untouched.
    let state = Arc::new(Mutex::new(State { mode: "ok".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    std::fs::write(dir.path().join("data/eval.jsonl"), "{\"input\": \"training message 3\", \"expected\": \"other\"}\n").unwrap();
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("left out 1 of 12 training examples") && err(&o).contains("line 4 (the same case as eval line 1)"), "{}", err(&o));
    {
        let s = state.lock().unwrap();
        assert_eq!(s.uploads.len(), 1);
        assert!(!s.uploads[0].contains("training message 3\\n") && !s.uploads[0].contains("training message 3\""), "the leaking example is not uploaded");
        assert!(s.uploads[0].contains("training message 4"));
    }
    // --strict (or tune.strict: true) refuses before any upload, as before.
    let state = Arc::new(Mutex::new(State { mode: "ok".into(), ..Default::default() }));
    let srv = server(state.clone());
    task(dir.path(), &srv.url());
    std::fs::write(dir.path().join("data/eval.jsonl"), "{\"input\": \"training message 3\", \"expected\": \"other\"}\n").unwrap();
    let o = tg(dir.path(), &["tune", "--strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("also appear in data.examples"), "{}", err(&o));
    assert!(state.lock().unwrap().uploads.is_empty());
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), yaml.replace("  epochs: 2\n", "  epochs: 2\n  strict: true\n")).unwrap();
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(state.lock().unwrap().uploads.is_empty());
}

/// `tuned:JOB` works wherever a provider is named: here as the pairwise
/// judge of `compare --judge` (the one provider factory resolves it).
#[test]
fn a_tuned_model_judges_a_comparison() {
    let state = Arc::new(Mutex::new(State { mode: "ok".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap();
    let yaml = yaml
        .replace("prompts:\n", "prompts:\n  - id: short\n    template: \"Short: {{ input }}\"\n")
        .replace("  - id: tuned:ftjob-1\n", "  - id: tuned:ftjob-1\n    label: tuned\n");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = tg(dir.path(), &["tune"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = tg(dir.path(), &["eval", "--no-progress"]);
    assert!(o.status.code().is_some(), "{}", err(&o));
    let o = tg(dir.path(), &["compare", "latest:bare@tuned", "latest:short@tuned", "--judge", "tuned:ftjob-1", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{} {}", String::from_utf8_lossy(&o.stdout), err(&o)));
    // The task's provider of that id (labelled `tuned`), resolved to the endpoint that trained it.
    assert_eq!(v["judge"], "tuned", "{v}");
    assert_eq!((v["judged"].as_u64(), v["errors"].as_u64()), (Some(1), Some(0)), "{v}");
    // Asked in both orders, always preferring the first shown: a tie.
    assert_eq!(v["stats"]["ties"], 1, "{v}");
    let s = state.lock().unwrap();
    let judged: Vec<&String> = s.chats.iter().filter(|b| b.contains("output_A")).collect();
    assert_eq!(judged.len(), 2, "one verdict per order");
    assert!(judged.iter().all(|b| b.contains("ft:base-model:triage:1")), "the judge is the tuned model");
    // A tuned job that does not exist is a clear input error.
    let o = tg(dir.path(), &["compare", "latest:bare@tuned", "latest:short@tuned", "--judge", "tuned:no-such-job"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("no-such-job"), "{}", err(&o));
}

/// OpenAI's fine-tuning dates, on a fixed clock (`TUNEGATE_TODAY`): an
/// `openai:` base warns before 2027-01-06 and is refused from it, before
/// any upload; a self-hosted `openai-compatible:` server is not bound.
#[test]
fn openai_fine_tuning_dates_warn_then_refuse() {
    let state = Arc::new(Mutex::new(State { mode: "ok".into(), ..Default::default() }));
    let srv = server(state.clone());
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), &srv.url());
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), yaml.replace("base: openai-compatible:base-model", "base: openai:gpt-4o-mini-2024-07-18")).unwrap();
    let on = |day: &str| Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["tune", "--poll-interval", "0.02"]).current_dir(dir.path()).env("FT_KEY", "ft-secret").env("TUNEGATE_TODAY", day).output().unwrap();
    let o = on("2027-01-06");
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("no fine-tuning jobs since 2027-01-06") && e.contains("tune.backend: local") && e.contains("tunegate serve") && e.contains("axolotl"), "{e}");
    assert!(state.lock().unwrap().uploads.is_empty(), "refused before any upload");
    let o = on("2026-12-04");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("warning: OpenAI stops creating fine-tuning jobs on 2027-01-06 (33 days") && e.contains("gpt-4o-mini-2024-07-18 shuts down on 2027-01-14"), "{e}");
    assert_eq!(state.lock().unwrap().uploads.len(), 1);
    // A self-hosted OpenAI-compatible server is not bound by OpenAI's dates.
    std::fs::remove_dir_all(dir.path().join(".tunegate")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = on("2027-06-01");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(!err(&o).contains("OpenAI stops"), "{}", err(&o));
}
