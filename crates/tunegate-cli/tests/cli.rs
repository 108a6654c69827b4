//! The CLI as a user runs it: init, eval, the cache, resume after kill -9,
//! output formats, and API keys that never leak.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tunegate_providers::testserver::{chat_completion, Reply, TestServer};
use tunegate_store::{store_path_for, Store};

fn tg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn init_then_eval_runs_offline_and_the_rerun_is_all_cache_hits() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["classification", "extraction", "rewrite", "generation"] {
        let o = tg(&["init", kind, "--kind", kind], dir.path());
        assert!(o.status.success(), "{:?}", text(&o));
        let cfg = format!("{kind}/tunegate.yaml");
        // Count the baseline's invocations through a wrapper.
        let yaml_path = dir.path().join(&cfg);
        let yaml = std::fs::read_to_string(&yaml_path).unwrap().replace("id: exec:sh baseline.sh", "id: exec:echo x >> calls.log; sh baseline.sh");
        std::fs::write(&yaml_path, yaml).unwrap();
        let o = tg(&["eval", "-c", &cfg, "--no-progress"], dir.path());
        let (out, err) = text(&o);
        assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{kind}: {out} {err}");
        assert!(out.contains("pass rate"), "{out}");
        let calls = || std::fs::read_to_string(dir.path().join(kind).join("calls.log")).unwrap_or_default().lines().count();
        let first = calls();
        assert!(first > 0);
        let o = tg(&["eval", "-c", &cfg, "--no-progress"], dir.path());
        let (out, _) = text(&o);
        assert!(out.contains("(100.0%)") && out.contains("provider calls 0"), "{kind}: {out}");
        assert_eq!(calls(), first, "{kind}: the rerun called the provider");
        let o = tg(&["eval", "-c", &cfg, "--no-progress", "--no-cache"], dir.path());
        assert!(text(&o).0.contains("cache hits 0/"));
        assert_eq!(calls(), 2 * first);
    }
    // The classification scaffold actually discriminates: its baseline
    // passes some cases and fails others.
    let o = tg(&["show", "-c", "classification/tunegate.yaml", "--failed"], dir.path());
    let (out, _) = text(&o);
    assert!(out.contains("FAIL") && out.contains("expected \\ predicted"), "{out}");
    // init refuses to overwrite.
    let o = tg(&["init", "classification"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--force"));
}

fn slow_task(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let data: String = (0..n).map(|i| format!("{{\"input\": \"message {i}\", \"expected\": \"billing\"}}\n")).collect();
    std::fs::write(dir.join("data/eval.jsonl"), data).unwrap();
    // Each call logs itself, then takes 80 ms.
    std::fs::write(dir.join("model.sh"), "read line; echo \"$line\" >> calls.log; sleep 0.08; echo billing\n").unwrap();
    let yaml = "version: 1\ntask:\n  name: slow\n  kind: classification\n  labels: [billing, other]\nprompts:\n  - id: p\n    template: \"{{ input }}\"\nproviders:\n  - id: exec:sh model.sh\ndata:\n  eval: data/eval.jsonl\n";
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    dir.join("tunegate.yaml")
}

#[test]
fn kill_9_then_resume_finishes_every_case_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = slow_task(dir.path(), 60);
    let calls = |d: &Path| std::fs::read_to_string(d.join("calls.log")).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["eval", "--no-progress", "--concurrency", "2", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while calls(dir.path()).len() < 20 {
        assert!(t0.elapsed() < Duration::from_secs(60), "eval made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let run = store.resolve_run("latest").unwrap();
    let committed = store.completed_keys(&run.id).unwrap();
    assert!(committed.len() >= 10 && committed.len() < 60, "{}", committed.len());
    drop(store);
    let before = calls(dir.path()).len();
    let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "--no-progress", "--resume", "-c"]).arg(&cfg).output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out} {err}");
    assert!(out.contains(&format!("{} results were already stored", committed.len())), "{out}");
    let after = calls(dir.path());
    // Only the cases not stored at the kill were asked for again.
    assert_eq!(after.len() - before, 60 - committed.len());
    let resumed: std::collections::HashSet<&String> = after[before..].iter().collect();
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let rows = store.results(&run.id, false).unwrap();
    assert_eq!(rows.len(), 60);
    let ids: std::collections::HashSet<&String> = rows.iter().map(|r| &r.case_id).collect();
    assert_eq!(ids.len(), 60, "every case exactly once");
    for r in &rows {
        let k = (r.prompt_id.clone(), r.provider.clone(), r.case_id.clone(), r.repeat);
        if committed.contains(&k) {
            assert!(!resumed.contains(&r.input), "case {} was recomputed after it had finished", r.input);
        }
    }
    assert_eq!(store.get_run(&run.id).unwrap().status, "complete");
}

#[test]
fn api_keys_never_reach_the_store_reports_or_logs() {
    let key = "sk-leakcheck-4b1d9e7f2a";
    let srv = TestServer::start(move |n, r| {
        let auth = r.header("authorization").unwrap_or("").to_string();
        match n % 3 {
            0 => Reply::ok(chat_completion("billing", 7, 1)),
            1 => Reply::status(401, &format!(r#"{{"error":{{"message":"Incorrect API key provided: {auth}"}}}}"#)),
            _ => Reply::status(400, &format!(r#"{{"error":{{"message":"bad request from {auth}"}}}}"#)),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let data: String = (0..9).map(|i| format!("{{\"input\": \"m{i}\", \"expected\": \"billing\"}}\n")).collect();
    std::fs::write(dir.path().join("data/eval.jsonl"), data).unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: k\n  kind: classification\n  labels: [billing, other]\nprompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: openai-compatible:m\n    base_url: {}/v1\n    api_key_env: MY_LLM_KEY\n    max_retries: 0\ndata:\n  eval: data/eval.jsonl\n",
        srv.url()
    );
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let mut seen = String::new();
    for args in [
        vec!["eval", "--no-progress"],
        vec!["eval", "--no-progress", "--format", "json"],
        vec!["eval", "--no-progress", "--format", "jsonl"],
        vec!["eval", "--no-progress", "--format", "csv"],
        vec!["eval", "--no-progress", "--format", "junit"],
        vec!["show", "latest"],
        vec!["runs"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(&args).current_dir(dir.path()).env("MY_LLM_KEY", key).output().unwrap();
        let (out, err) = text(&o);
        seen.push_str(&out);
        seen.push_str(&err);
    }
    assert!(srv.requests.lock().unwrap().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {key}"))));
    assert!(seen.contains("[REDACTED]"), "the server's echo of the key was expected in an error: {seen}");
    assert!(!seen.contains(key), "the key leaked into output");
    for entry in std::fs::read_dir(dir.path().join(".tunegate")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "the key is in the store");
    }
}

#[test]
fn output_formats_carry_the_run_id_and_threshold_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let o = tg(&["init", "t"], dir.path());
    assert!(o.status.success());
    let o = tg(&["eval", "-c", "t/tunegate.yaml", "--format", "json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run_id = v["run_id"].as_str().unwrap().to_string();
    assert_eq!(v["results"].as_array().unwrap().len(), 42);
    assert!(v["summary"]["groups"][0]["ci95"].is_array());
    let o = tg(&["eval", "-c", "t/tunegate.yaml", "--format", "junit", "-o", "report.xml"], dir.path());
    assert!(o.stdout.is_empty());
    let xml = std::fs::read_to_string(dir.path().join("report.xml")).unwrap();
    assert!(xml.contains("<testsuites") && xml.contains("<failure"), "{xml}");
    let o = tg(&["eval", "-c", "t/tunegate.yaml", "--format", "csv"], dir.path());
    let csv = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(csv.lines().count(), 43);
    let o = tg(&["eval", "-c", "t/tunegate.yaml", "--format", "jsonl"], dir.path());
    let first: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!(first["run_id"].is_string());
    // The scaffold's baseline passes some but not all: 0.5 is met, 0.99 is not.
    assert_eq!(tg(&["eval", "-c", "t/tunegate.yaml", "--threshold", "0.5"], dir.path()).status.code(), Some(0));
    assert_eq!(tg(&["eval", "-c", "t/tunegate.yaml", "--threshold", "0.99"], dir.path()).status.code(), Some(1));
    let o = tg(&["runs", "-c", "t/tunegate.yaml"], dir.path());
    assert!(text(&o).0.contains(&run_id));
    let o = tg(&["show", &run_id, "-c", "t/tunegate.yaml", "--failed"], dir.path());
    let (out, _) = text(&o);
    assert!(out.contains(&run_id) && !out.contains("\npass "), "{out}");
}

#[test]
fn compare_and_the_baseline_gate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let data: String = (0..40).map(|i| format!("{{\"id\": \"c{i}\", \"input\": \"message {i}\", \"expected\": \"{}\"}}\n", if i % 2 == 0 { "billing" } else { "other" })).collect();
    std::fs::write(dir.path().join("data/eval.jsonl"), data).unwrap();
    // v1 answers right; v2 answers "billing" to everything (wrong on odd cases).
    std::fs::write(dir.path().join("v1.sh"), "read line; n=${line##* }; if [ $((n % 2)) -eq 0 ]; then echo billing; else echo other; fi\n").unwrap();
    std::fs::write(dir.path().join("v2.sh"), "cat > /dev/null; echo billing\n").unwrap();
    let yaml = |script: &str| format!("version: 1\ntask:\n  name: g\n  kind: classification\n  labels: [billing, other]\nprompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: exec:sh {script}\n    label: model\ndata:\n  eval: data/eval.jsonl\n");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml("v1.sh")).unwrap();
    let o = tg(&["eval", "--no-progress", "--format", "json"], dir.path());
    let base: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let base_id = base["run_id"].as_str().unwrap().to_string();
    // An unchanged model passes the gate.
    let o = tg(&["eval", "--no-progress", "--baseline", &base_id], dir.path());
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).1.contains("no significant regression"));
    // A worse model fails it, and JUnit lists the regressions.
    std::fs::write(dir.path().join("tunegate.yaml"), yaml("v2.sh")).unwrap();
    let o = tg(&["eval", "--no-progress", "--baseline", &base_id, "--format", "junit", "-o", "gate.xml"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("regressed"), "{:?}", text(&o));
    let xml = std::fs::read_to_string(dir.path().join("gate.xml")).unwrap();
    assert_eq!(xml.matches("classname=\"regression\"").count(), 20, "{xml}");
    // compare: B is worse, with plainly named JSON fields.
    let o = tg(&["compare", &base_id, "latest", "--format", "json"], dir.path());
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{:?}", text(&o)));
    assert_eq!(c["mcnemar"]["regressions"], 20);
    assert_eq!(c["mcnemar"]["improvements"], 0);
    assert!(c["mcnemar"]["p_value"].as_f64().unwrap() < 1e-5);
    assert_eq!(c["better"], false);
    assert!(c["bootstrap"]["pass_rate_diff"]["high"].as_f64().unwrap() < 0.0);
    let o = tg(&["compare", &base_id, "latest"], dir.path());
    let (out, _) = text(&o);
    assert!(out.contains("Verdict: B is worse") && out.contains("Regressions (passed in A, failed in B): 20"), "{out}");
    // A selector that names nothing is a usage error.
    assert_eq!(tg(&["compare", &base_id, "nope@none"], dir.path()).status.code(), Some(2));
}

#[test]
fn html_reports_are_self_contained_and_carry_the_data() {
    let dir = tempfile::tempdir().unwrap();
    assert!(tg(&["init", "t"], dir.path()).status.success());
    let o = tg(&["eval", "-c", "t/tunegate.yaml", "--format", "html", "-o", "r.html"], dir.path());
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{:?}", text(&o));
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for external in ["src=\"http", "href=\"http", "src=\"//", "<link", "@import", "url(", "<iframe"] {
        assert!(!html.contains(external), "the report loads something from outside: {external}");
    }
    let start = html.find(r#"<script type="application/json" id="data">"#).unwrap() + r#"<script type="application/json" id="data">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap();
    assert_eq!(data["groups"].as_array().unwrap().len(), 3);
    assert_eq!(data["cases"].as_array().unwrap().len(), 42);
    assert!(data["groups"][0]["classification"]["confusion"].is_object());
    // A case whose text would close the script tag cannot break out of it.
    std::fs::write(dir.path().join("t/data/eval.jsonl"), "{\"input\": \"</script><script>alert(1)</script>\", \"expected\": \"other\"}\n").unwrap();
    tg(&["eval", "-c", "t/tunegate.yaml", "--format", "html", "-o", "x.html"], dir.path());
    let x = std::fs::read_to_string(dir.path().join("x.html")).unwrap();
    assert_eq!(x.matches("</script>").count(), 2, "only the two real script tags close");
    // compare's report has the before/after panel.
    let runs = tg(&["runs", "-c", "t/tunegate.yaml", "--format", "json"], dir.path());
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    let id = runs[1]["run"]["id"].as_str().unwrap().to_string();
    let o = tg(&["compare", &format!("{id}:bare@keyword-baseline"), &format!("{id}:instructed@keyword-baseline"), "-c", "t/tunegate.yaml", "--format", "html", "-o", "c.html"], dir.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let c = std::fs::read_to_string(dir.path().join("c.html")).unwrap();
    assert!(c.contains("Before / after") && c.contains("\"verdict\""));
}

/// `tunegate model generate --choice ... --choice-mode decode|score` on the
/// real model: both print one of the labels; with one-token labels greedy
/// decoding and likelihood scoring agree.
#[test]
fn model_generate_picks_a_label_by_scoring_or_constrained_decoding() {
    if !common::model_present() {
        return;
    }
    let run = |mode: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunegate"))
            .args(["model", "generate", "--prompt", "Message: I was charged twice for my order\nTeam:", "--choice", "billing", "--choice", "shipping", "--choice", "other", "--choice-mode", mode, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (d, s) = (run("decode"), run("score"));
    let label = d["text"].as_str().unwrap().to_string();
    assert!(["billing", "shipping", "other"].contains(&label.as_str()), "{d}");
    assert_eq!(d["completion_tokens"], 1, "{d}");
    assert_eq!(d["finish_reason"], "stop", "{d}");
    assert_eq!(s["text"].as_str().unwrap(), label, "scoring {s} vs decoding {d}");
}

/// A local eval's answers are the same case by case at any concurrency:
/// continuous batching puts the cases into different forward calls each
/// time (by timing), and the model's rows must not care (model crate,
/// `numerics::Regime`). Free generation, prompts from 3 to 90 tokens, two
/// sharing a long prefix: before, these runs differed.
#[test]
fn local_eval_outputs_do_not_depend_on_concurrency() {
    if !common::model_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = "Continue the product note in the same style. Notes so far: the kettle boils in three minutes, the toaster has six settings, the blender is quiet at night, the fridge keeps salad crisp for a week, and the new oven";
    let inputs = ["Hi", "Once upon a time", shared, &format!("{shared} also"), "Write a haiku about rain on a tin roof in the early morning", "1, 2, 3, 5, 8, 13,", "def add(a, b):", "The capital of Japan is"];
    let data: String = inputs.iter().enumerate().map(|(i, t)| format!("{}\n", serde_json::json!({"id": format!("c{i}"), "input": t, "expected": "x"}))).collect();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), data).unwrap();
    std::fs::write(
        dir.path().join("tunegate.yaml"),
        "version: 1\ntask:\n  name: t\n  kind: generation\nprompts:\n  - id: p\n    template: \"{{ input }}\"\nproviders:\n  - id: local:gemma-3-270m\n    params: { temperature: 0, max_tokens: 12 }\ndata:\n  eval: data/eval.jsonl\nassert:\n  - type: contains\n    value: x\n",
    )
    .unwrap();
    let outputs = |concurrency: &str| -> Vec<(String, String)> {
        let o = tg(&["eval", "--no-cache", "--no-progress", "--concurrency", concurrency, "--format", "json"], dir.path());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{:?}", text(&o)));
        let mut r: Vec<(String, String)> = v["results"].as_array().unwrap().iter().map(|x| (x["case_id"].as_str().unwrap().to_string(), x["output"].as_str().unwrap_or_default().to_string())).collect();
        r.sort();
        r
    };
    let one = outputs("1");
    assert_eq!(one.len(), inputs.len());
    assert!(one.iter().all(|(_, o)| !o.is_empty()), "{one:?}");
    for c in ["8", "3"] {
        assert_eq!(outputs(c), one, "--concurrency {c} against 1");
    }
}
