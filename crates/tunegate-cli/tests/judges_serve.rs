//! Graders and judges over HTTP: `tunegate serve` with the real local
//! model as the grader of an `llm-rubric` assertion and as a pairwise
//! judge. A 270M base model does not follow the grading format, which is
//! the point: whatever it answers is either a well-formed grade or an
//! error row, never a pass by default.

mod common;
use common::{model_present, start_server, Server};

use std::path::Path;
use std::process::Command;

fn start() -> Server {
    start_server(&[])
}

fn tg(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn the_local_model_as_grader_and_judge_over_serve() {
    if !model_present() {
        return;
    }
    let srv = start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), "{\"input\": \"Paris\"}\n{\"input\": \"Rome\"}\n{\"input\": \"Berlin\"}\n").unwrap();
    let grader = format!("{{ id: \"openai-compatible:gemma-3-270m\", base_url: \"http://127.0.0.1:{}/v1\", params: {{ temperature: 0, max_tokens: 24 }} }}", srv.port);
    let yaml = format!(
        "version: 1\ntask:\n  name: g\n  kind: generation\nprompts:\n  - id: short\n    template: \"The capital city {{{{ input }}}} is in\"\n  - id: long\n    template: \"Tell me about {{{{ input }}}}.\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\nassert:\n  - type: llm-rubric\n    value: The text names a country.\n    provider: {grader}\n"
    );
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = tg(&["eval", "--no-progress", "--format", "json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let run = v["run_id"].as_str().unwrap().to_string();
    let store = tunegate_store::Store::open(&tunegate_store::store_path_for(&dir.path().join("tunegate.yaml"))).unwrap();
    let rows = store.results(&run, false).unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let a = &r.assertions[0];
        assert_eq!(a["detail"]["grader"], "openai-compatible:gemma-3-270m", "{a}");
        match &r.error_kind {
            // Not a grade: an error row, never scored.
            Some(k) => {
                assert_eq!(k, "grader");
                assert!(r.pass.is_none() && r.error.as_deref().unwrap().contains("malformed grade"), "{r:?}");
            }
            // A grade: it parsed strictly.
            None => {
                let out = a["detail"]["grader_output"].as_str().unwrap();
                assert!(tunegate_core::judge::parse_grade(&out.replace('⏎', "\n")).is_ok(), "{out}");
            }
        }
    }
    // The pairwise judge over the same server: both orders asked, every
    // pair either judged or reported as an error.
    let o = tg(&["compare", &format!("{run}:short@echo"), &format!("{run}:long@echo"), "--judge", "gemma", "--format", "json"], dir.path());
    // `gemma` is not a provider of the task file: a clear usage error.
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap().replace(
        "providers:\n  - id: echo\n",
        &format!("providers:\n  - id: echo\n  - id: openai-compatible:gemma-3-270m\n    label: gemma\n    base_url: http://127.0.0.1:{}/v1\n    params: {{ temperature: 0, max_tokens: 16 }}\n", srv.port),
    );
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = tg(&["compare", &format!("{run}:short@echo"), &format!("{run}:long@echo"), "--judge", "gemma", "--format", "json"], dir.path());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(r["judged"].as_u64().unwrap() + r["errors"].as_u64().unwrap(), 3, "{r}");
    assert_eq!(r["judge"], "gemma");
    assert_eq!(o.status.code(), Some(if r["errors"] == 0 { 0 } else { 1 }));
    assert_eq!(r["calls"]["provider_calls"].as_u64().unwrap() + r["calls"]["cache_hits"].as_u64().unwrap(), 6, "two orders per pair: {r}");
}
