//! Batch hand-off: `eval --export-batch` writes the calls the cache cannot
//! answer in OpenAI's Batch input format; an engine's output file (here
//! planted by the test: any order, failures, expiry, unknown and duplicate
//! ids) comes back through `--import-batch`; `--resume` calls the rest live
//! against a real HTTP server on 127.0.0.1.

#[path = "common/batch.rs"]
mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use support::{case_of, err, json_of, label, runs, tg, CASES};
use tunegate_providers::testserver::{chat_completion, Reply, TestServer};

fn server(chats: Arc<Mutex<usize>>) -> TestServer {
    TestServer::start(move |_, r| {
        if r.header("authorization") != Some("Bearer sk-batch-secret") {
            return Reply::status(401, r#"{"error":{"message":"bad key"}}"#);
        }
        *chats.lock().unwrap() += 1;
        Reply::ok(chat_completion("billing", 100, 1))
    })
}

fn task(dir: &Path, url: &str) {
    let prompts = "  - id: a\n    template: \"Message: {{ input }}\\nTeam:\"\n  - id: b\n    template: \"Route this message: {{ input }}\"\n";
    support::task(dir, prompts, &format!("  - id: openai:gpt-4o-mini\n    base_url: {url}/v1\n    api_key_env: BATCH_KEY\n    params: {{ max_tokens: 4, temperature: 0 }}\n"));
}

fn ok_line(id: &str, answer: &str) -> String {
    json!({"id": format!("batch_req_{id}"), "custom_id": id, "response": {"status_code": 200, "request_id": "r", "body": chat_completion(answer, 100, 1)}, "error": null}).to_string()
}

fn group<'a>(v: &'a Value, prompt: &str) -> &'a Value {
    v["summary"]["groups"].as_array().unwrap().iter().find(|g| g["prompt"] == prompt).unwrap_or_else(|| panic!("no group {prompt}: {}", v["summary"]))
}

#[test]
fn export_then_import_gives_the_planted_counts_and_resume_finishes_the_run() {
    let chats = Arc::new(Mutex::new(0));
    let srv = server(chats.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    task(d, &srv.url());

    // Prompt `a` live: its 20 calls are in the cache afterwards.
    let o = tg(d, &["eval", "--prompt", "a"]);
    assert!(o.status.code().is_some(), "{}", err(&o));
    assert_eq!(*chats.lock().unwrap(), CASES);

    // The export skips every cached call: only prompt `b` is written.
    let o = tg(d, &["eval", "--export-batch", "requests.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("exported 20 requests") && out.contains("is pending") && out.contains("--import-batch"), "{out}");
    assert_eq!(*chats.lock().unwrap(), CASES, "an export calls nothing");
    let lines: Vec<Value> = std::fs::read_to_string(d.join("requests.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), CASES);
    let mut ids = std::collections::HashSet::new();
    for l in &lines {
        let id = l["custom_id"].as_str().unwrap();
        assert!((1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        assert!(ids.insert(id.to_string()), "ids are unique");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["url"], "/v1/chat/completions");
        assert_eq!(l["body"]["model"], "gpt-4o-mini");
        assert_eq!(l["body"]["max_tokens"], 4);
        assert!(l["body"]["messages"].to_string().contains("Route this message"), "only prompt b: {l}");
        assert!(!l.to_string().contains("sk-batch-secret"));
    }
    let listed = runs(d);
    let run_id = listed[0]["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["run"]["status"], "pending", "{listed}");

    // The engine's output, planted: newest line first, then the rest
    // rotated; 10 right, 4 wrong, 2 non-200s, 1 error line, 1 expired,
    // 2 missing; an unknown id and a duplicate besides.
    let mut planted = vec![];
    for (k, l) in lines.iter().enumerate() {
        let id = l["custom_id"].as_str().unwrap();
        let n = case_of(l);
        let wrong = if label(n) == "billing" { "other" } else { "billing" };
        match k {
            0..=9 => planted.push(ok_line(id, label(n))),
            10..=13 => planted.push(ok_line(id, wrong)),
            14 => planted.push(json!({"id": "x", "custom_id": id, "response": {"status_code": 500, "request_id": "r", "body": {"error": {"message": "engine overloaded"}}}, "error": null}).to_string()),
            15 => planted.push(json!({"id": "x", "custom_id": id, "response": {"status_code": 400, "request_id": "r", "body": {"error": {"message": "max_tokens too large"}}}, "error": null}).to_string()),
            16 => planted.push(json!({"id": "x", "custom_id": id, "response": null, "error": {"code": "server_error", "message": "the engine crashed"}}).to_string()),
            17 => planted.push(json!({"id": "x", "custom_id": id, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}).to_string()),
            _ => {}
        }
    }
    planted.push(ok_line(&format!("{run_id}_ffffffffffffffff"), "billing"));
    planted.push(ok_line(lines[0]["custom_id"].as_str().unwrap(), "other"));
    planted.rotate_left(7);
    planted.reverse();
    std::fs::write(d.join("results.jsonl"), planted.join("\n") + "\n").unwrap();

    let o = tg(d, &["eval", "--import-batch", "results.jsonl", "--format", "json"]);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "calls are still pending: {e}");
    assert!(e.contains("14 answers scored, 3 provider errors, 1 calls the batch did not run"), "{e}");
    assert!(e.contains("1 ids match no pending call") && e.contains("ffffffffffffffff"), "{e}");
    assert!(e.contains("1 ids came more than once"), "{e}");
    assert!(e.contains("3 calls still pending") && e.contains("--resume"), "{e}");
    let v = json_of(&o);
    assert_eq!(v["run_id"], run_id.as_str());
    let b = group(&v, "b");
    assert_eq!((b["passed"].as_u64(), b["failed"].as_u64(), b["errors"].as_u64()), (Some(10), Some(4), Some(3)), "{b}");
    let a = group(&v, "a");
    assert_eq!(a["n"].as_u64(), Some(CASES as u64), "prompt a came from the cache: {a}");
    // Scored as if called: tokens, and cost at the batch price (half of
    // gpt-4o-mini's $0.15 / $0.60 per million tokens).
    let r = v["results"].as_array().unwrap().iter().find(|r| r["prompt_id"] == "b" && r["error"].is_null()).unwrap();
    assert_eq!(r["prompt_tokens"], 100);
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!((cost - (100.0 * 0.15 + 0.60) / 1e6 * 0.5).abs() < 1e-12, "{cost}");
    let errors: Vec<&Value> = v["results"].as_array().unwrap().iter().filter(|r| !r["error"].is_null()).collect();
    assert!(errors.iter().any(|r| r["error"].as_str().unwrap().contains("engine overloaded")), "{errors:?}");
    assert!(errors.iter().any(|r| r["error"].as_str().unwrap().contains("the engine crashed")), "{errors:?}");
    assert_eq!(*chats.lock().unwrap(), CASES, "an import calls nothing");

    // The same file again matches nothing: every answer is stored.
    let o = tg(d, &["eval", "--import-batch", "results.jsonl"]);
    assert!(err(&o).contains("0 answers scored") && err(&o).contains("ids match no pending call"), "{}", err(&o));

    // --resume calls the three pending cases live and completes the run.
    let o = tg(d, &["eval", "--resume", &run_id, "--format", "json"]);
    let v = json_of(&o);
    assert_eq!(*chats.lock().unwrap(), CASES + 3, "{}", err(&o));
    assert_eq!(v["summary"]["total"].as_u64(), Some(2 * CASES as u64), "{}", v["summary"]);
    assert_eq!(runs(d)[0]["run"]["status"], "complete");
}

#[test]
fn bad_output_files_are_refused_before_anything_is_stored() {
    let chats = Arc::new(Mutex::new(0));
    let srv = server(chats.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    task(d, &srv.url());
    let o = tg(d, &["eval", "--export-batch", "requests.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let first: Value = serde_json::from_str(std::fs::read_to_string(d.join("requests.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let id = first["custom_id"].as_str().unwrap();
    std::fs::write(d.join("bad.jsonl"), format!("{}\n{{\"custom_id\": \"{id}\", \"oops\": 1}}\n", ok_line(id, "billing"))).unwrap();
    let o = tg(d, &["eval", "--import-batch", "bad.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("bad.jsonl: line 2") && err(&o).contains("neither `response` nor `error`"), "{}", err(&o));
    // Nothing was scored: the run still holds no result.
    let runs = runs(d);
    assert_eq!(runs[0]["results"], 0, "{runs}");
    // A file whose ids name no run of this task.
    std::fs::write(d.join("other.jsonl"), ok_line("20990101-000000-beef_0123456789abcdef", "billing") + "\n").unwrap();
    let o = tg(d, &["eval", "--import-batch", "other.jsonl"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("20990101-000000-beef"), "{}", err(&o));
}

/// A run exported for one prompt stays that prompt's: `--resume` after the
/// import calls only its pending cases, not the task's other prompts.
#[test]
fn resume_after_an_import_keeps_to_the_runs_own_prompts() {
    let chats = Arc::new(Mutex::new(0));
    let srv = server(chats.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    task(d, &srv.url());
    let o = tg(d, &["eval", "--prompt", "b", "--export-batch", "requests.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let lines: Vec<Value> = std::fs::read_to_string(d.join("requests.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), CASES);
    let answers: Vec<String> = lines.iter().skip(2).map(|l| ok_line(l["custom_id"].as_str().unwrap(), label(case_of(l)))).collect();
    std::fs::write(d.join("results.jsonl"), answers.join("\n")).unwrap();
    let o = tg(d, &["eval", "--import-batch", "results.jsonl"]);
    assert!(err(&o).contains("18 answers scored") && err(&o).contains("2 calls still pending"), "{}", err(&o));
    let run_id = runs(d)[0]["run"]["id"].as_str().unwrap().to_string();
    let o = tg(d, &["eval", "--resume", &run_id, "--format", "json"]);
    assert_eq!(*chats.lock().unwrap(), 2, "only the run's two pending calls: {}", err(&o));
    let v = json_of(&o);
    assert_eq!(v["summary"]["total"].as_u64(), Some(CASES as u64), "{}", v["summary"]);
}

/// An exported call's answer in the output file wins over a cache entry
/// written since (here by a live run before a `--no-cache` export).
#[test]
fn an_imported_answer_wins_over_the_cache() {
    let chats = Arc::new(Mutex::new(0));
    let srv = server(chats.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    task(d, &srv.url());
    tg(d, &["eval", "--prompt", "a"]);
    let o = tg(d, &["eval", "--prompt", "a", "--no-cache", "--export-batch", "requests.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let answers: Vec<String> = std::fs::read_to_string(d.join("requests.jsonl")).unwrap().lines().map(|l| ok_line(serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap(), "other")).collect();
    std::fs::write(d.join("results.jsonl"), answers.join("\n")).unwrap();
    let o = tg(d, &["eval", "--import-batch", "results.jsonl", "--format", "json"]);
    assert!(err(&o).contains("20 answers scored"), "{}", err(&o));
    let v = json_of(&o);
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["output"] == "other" && r["cached"] == false), "{}", v["summary"]);
}
