//! Bad task and data files: each gives one line naming file, line and
//! field, and exits 2, never a panic.

use std::path::Path;
use std::process::Command;

const GOOD_YAML: &str = "version: 1
task:
  name: triage
  kind: classification
  labels: [billing, technical]
prompts:
  - id: bare
    template: \"Message: {{ input }}\\nTeam:\"
providers:
  - id: echo
data:
  eval: data/eval.jsonl
assert:
  - type: label
";

fn eval_lines(n: usize) -> String {
    (1..=n).map(|i| format!("{{\"input\": \"message number {i}\", \"expected\": \"{}\"}}\n", if i % 2 == 0 { "billing" } else { "technical" })).collect()
}

struct Case {
    name: &'static str,
    yaml: String,
    files: Vec<(&'static str, String)>,
    /// Substrings the one-line error must contain (file:line, field, what).
    expect: Vec<&'static str>,
}

fn case(name: &'static str, yaml: &str, files: Vec<(&'static str, String)>, expect: Vec<&'static str>) -> Case {
    Case { name, yaml: yaml.to_string(), files, expect }
}

fn run_case(c: &Case) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), &c.yaml).unwrap();
    let mut has_eval = false;
    for (p, content) in &c.files {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        has_eval |= *p == "data/eval.jsonl";
    }
    if !has_eval && !c.files.iter().any(|(p, _)| p.starts_with("data/eval")) {
        std::fs::write(dir.path().join("data/eval.jsonl"), eval_lines(4)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["eval", "--no-progress", "-c"])
        .arg(dir.path().join("tunegate.yaml"))
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "[{}] exit code; stderr: {stderr}", c.name);
    assert!(!stderr.contains("panicked"), "[{}] panic: {stderr}", c.name);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "[{}] the error must be one line: {stderr}", c.name);
    for e in &c.expect {
        assert!(lines[0].contains(e), "[{}] expected {e:?} in: {}", c.name, lines[0]);
    }
    let _ = Path::new("");
}

#[test]
fn bad_files_give_one_line_errors_and_exit_2() {
    let g = GOOD_YAML;
    let cases = vec![
        case("bad yaml", &g.replace("labels: [billing, technical]", "labels: [billing, technical"), vec![], vec!["tunegate.yaml:", "did not find expected"]),
        case("unknown top-level field", &format!("{g}promtps: []\n"), vec![], vec!["tunegate.yaml:15", "unknown field `promtps`"]),
        case("unknown prompt field", &g.replace("    template: ", "    templat: "), vec![], vec!["tunegate.yaml:8", "prompts[0]", "unknown field `templat`"]),
        case("wrong type", &g.replace("  - id: echo", "  - id: echo\n    params: { temperature: hot }"), vec![], vec!["tunegate.yaml:11", "temperature", "invalid type"]),
        case("unknown choice mode", &g.replace("  - id: echo", "  - id: echo\n    params: { choices: [billing], choice_mode: guess }"), vec![], vec!["tunegate.yaml:11", "choice_mode", "unknown variant `guess`", "expected `score` or `decode`"]),
        case(
            "missing template variable",
            &g.replace("Message: {{ input }}", "Message: {{ input }} about {{ product }}"),
            vec![],
            vec!["eval.jsonl:1", "vars.product", "prompt `bare`"],
        ),
        case(
            "bad json on line 57",
            g,
            vec![("data/eval.jsonl", {
                let mut s = eval_lines(56);
                s.push_str("{\"input\": \"broken\", \"expected\": \n");
                s.push_str(&eval_lines(3));
                s
            })],
            vec!["eval.jsonl:57", "not valid JSON"],
        ),
        case(
            "csv with missing columns",
            &g.replace("data/eval.jsonl", "data/eval.csv"),
            vec![("data/eval.csv", "input,expected,tags\nhello,billing,a\nno label here\n".to_string())],
            vec!["eval.csv:3", "expected", "missing"],
        ),
        case("unknown assertion type", &g.replace("type: label", "type: lable"), vec![], vec!["tunegate.yaml:14", "assert[0].type", "unknown assertion type `lable`"]),
        case(
            "label outside the set",
            g,
            vec![("data/eval.jsonl", format!("{}{{\"input\": \"x\", \"expected\": \"refunds\"}}\n", eval_lines(2)))],
            vec!["eval.jsonl:3", "expected", "`refunds` is not in task.labels"],
        ),
        case("missing data file", &g.replace("data/eval.jsonl", "data/nope.jsonl"), vec![], vec!["nope.jsonl", "cannot read dataset"]),
        case("empty dataset", g, vec![("data/eval.jsonl", "\n\n".to_string())], vec!["eval.jsonl", "no cases"]),
        case(
            "duplicate prompt ids",
            &g.replace("providers:", "  - id: bare\n    template: \"{{ input }}\"\nproviders:"),
            vec![],
            vec!["tunegate.yaml:9", "prompts[1].id", "duplicate prompt id `bare`"],
        ),
        case("duplicate providers", &g.replace("  - id: echo", "  - id: echo\n  - id: echo"), vec![], vec!["tunegate.yaml:10", "providers[1].id", "duplicate provider"]),
        case("unknown provider", &g.replace("id: echo", "id: gpt:4"), vec![], vec!["tunegate.yaml:10", "providers[0].id", "unknown provider type `gpt`"]),
        case(
            "missing template file",
            &g.replace("    template: \"Message: {{ input }}\\nTeam:\"", "    template_file: prompts/missing.j2"),
            vec![],
            vec!["tunegate.yaml:8", "template_file", "missing.j2"],
        ),
        case("template syntax error", &g.replace("{{ input }}", "{{ input "), vec![], vec!["tunegate.yaml", "prompt `bare`", "syntax error"]),
        case("classification without labels", &g.replace("  labels: [billing, technical]\n", ""), vec![], vec!["tunegate.yaml:4", "task.labels"]),
        case("invalid regex", &g.replace("  - type: label", "  - type: regex\n    value: \"([a-z\""), vec![], vec!["tunegate.yaml:14", "assert[0]", "invalid regex"]),
        case(
            "unknown case field",
            g,
            vec![("data/eval.jsonl", format!("{}{{\"input\": \"x\", \"expeted\": \"billing\"}}\n", eval_lines(3)))],
            vec!["eval.jsonl:4", "expeted", "unknown field"],
        ),
        case("openai-compatible without base_url", &g.replace("id: echo", "id: openai-compatible:llama"), vec![], vec!["tunegate.yaml:10", "base_url"]),
        case(
            "duplicate case id",
            g,
            vec![("data/eval.jsonl", "{\"id\": \"a\", \"input\": \"x\", \"expected\": \"billing\"}\n{\"id\": \"a\", \"input\": \"y\", \"expected\": \"billing\"}\n".to_string())],
            vec!["eval.jsonl:2", "id", "duplicate case id `a`"],
        ),
        case("unsupported version", &g.replace("version: 1", "version: 2"), vec![], vec!["tunegate.yaml:1", "version", "unsupported version 2"]),
        case(
            "shots without examples",
            &g.replace("    template: \"Message: {{ input }}\\nTeam:\"", "    template: \"{{ input }}\"\n    shots: { k: 2 }"),
            vec![],
            vec!["tunegate.yaml:7", "prompts[0].shots", "data.examples"],
        ),
        case("missing api key", &g.replace("id: echo", "id: openai:gpt-4o-mini"), vec![], vec!["tunegate.yaml", "OPENAI_API_KEY"]),
        case("unknown epoch selection", &format!("{g}tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  select_by: accuracy\n"), vec![], vec!["tunegate.yaml:18", "tune.select_by", "unknown value `accuracy`"]),
        case("zero gradient accumulation", &format!("{g}tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  grad_accum: 0\n"), vec![], vec!["tunegate.yaml:18", "tune.grad_accum", "at least 1"]),
        case("negative learning rate", &format!("{g}tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  learning_rate: -0.01\n"), vec![], vec!["tunegate.yaml:18", "tune.learning_rate", "positive"]),
        case("zero lora rank", &format!("{g}tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  lora:\n    rank: 0\n"), vec![], vec!["tunegate.yaml:19", "tune.lora.rank", "at least 1"]),
        case("unknown lr schedule", &format!("{g}tune:\n  base: local:gemma-3-270m\n  prompt: bare\n  lr_schedule: exponential\n"), vec![], vec!["tunegate.yaml:18", "tune.lr_schedule", "unknown schedule"]),
        case("not a classification target", &g.replace("kind: classification", "kind: extraction").replace("  labels: [billing, technical]\n", "").replace("type: label", "type: fields"), vec![], vec!["eval.jsonl:1", "expected", "JSON object"]),
    ];
    assert!(cases.len() >= 15);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| std::panic::catch_unwind(|| run_case(c)).err().map(|e| e.downcast_ref::<String>().cloned().unwrap_or_default()))
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn missing_task_file_and_bad_flags_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "-c", "/nonexistent/tunegate.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/nonexistent/tunegate.yaml") && e.contains("cannot read task file"), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "--concurrency", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
