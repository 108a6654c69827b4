//! Bad task and data files: each gives one line naming file, line and
//! field, and exits 2, never a panic.

mod common;
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

fn tg(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(dir).output().unwrap()
}

fn task_dir(eval: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), GOOD_YAML).unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), eval).unwrap();
    dir
}

/// Issue 18, item 1: a run selector that is not one is refused (exit 2),
/// never read as `latest`.
#[test]
fn a_bad_run_selector_is_refused_not_read_as_latest() {
    let dir = task_dir(eval_lines(4).as_bytes());
    for _ in 0..2 {
        assert_eq!(tg(dir.path(), &["eval", "--no-progress"]).status.code(), Some(1), "echo fails the label checks");
    }
    let o = tg(dir.path(), &["compare", "latest~1", "latest"]);
    assert!(o.status.code() != Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    for sel in ["latest~x", "latest~-1", "latest~", "", "latest~18446744073709551616", "latest~ 1"] {
        let o = tg(dir.path(), &["compare", sel, "latest"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "`{sel}`: {err}");
        assert!(err.contains("is not a run") && err.contains("latest~N"), "`{sel}`: {err}");
    }
    // Far beyond the runs there are: no such run, no overflow.
    let o = tg(dir.path(), &["compare", "latest~18446744073709551615", "latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Item 7: text that is not UTF-8 is reported at its line, in the task file
/// and in a dataset.
#[test]
fn invalid_utf8_is_reported_at_its_line() {
    let mut eval = eval_lines(3).into_bytes();
    eval.extend_from_slice(b"{\"input\": \"caf\xe9\", \"expected\": \"billing\"}\n");
    let dir = task_dir(&eval);
    let o = tg(dir.path(), &["eval", "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("eval.jsonl:4") && err.contains("not UTF-8") && err.contains("0xe9") && err.contains("byte 15"), "{err}");
    let mut yaml = GOOD_YAML.as_bytes().to_vec();
    yaml.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = tg(dir.path(), &["eval", "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line = GOOD_YAML.lines().count() + 1;
    assert!(err.contains(&format!("tunegate.yaml:{line}")) && err.contains("task file is not UTF-8"), "{err}");
}

/// Item 10: a CSV quote that never closes is named as such, at the line
/// where it opens.
#[test]
fn an_unterminated_csv_quote_is_named_where_it_opens() {
    let dir = task_dir(b"");
    std::fs::write(dir.path().join("data/eval.csv"), "input,expected\nhello,billing\n\"broken, technical\nbye,billing\n").unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), GOOD_YAML.replace("data/eval.jsonl", "data/eval.csv")).unwrap();
    let o = tg(dir.path(), &["eval", "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("eval.csv:3") && err.contains("unterminated quote") && !err.contains("row has 1 fields"), "{err}");
    // Quotes that close, and doubled quotes inside them, are fine.
    std::fs::write(dir.path().join("data/eval.csv"), "input,expected\n\"say \"\"hi\"\", please\",billing\n\"two\nlines\",technical\n").unwrap();
    assert!(tg(dir.path(), &["eval", "--no-progress"]).status.code() != Some(2));
}

/// Item 8: zero repeats, zero concurrency and `init` onto a file are usage
/// errors (exit 2) before any work.
#[test]
fn zero_counts_and_init_onto_a_file_are_usage_errors() {
    let dir = task_dir(eval_lines(4).as_bytes());
    for args in [&["eval", "--repeat", "0"][..], &["eval", "--concurrency", "0"], &["prompt", "minimize", "--concurrency", "0"]] {
        let o = tg(dir.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!dir.path().join(".tunegate").exists(), "no run was started");
    let o = tg(dir.path(), &["init", "tunegate.yaml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is a file"), "{err}");
}

/// Item 9: output to a pipe closed early ends quietly, never a panic.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = task_dir(eval_lines(3000).as_bytes());
    assert!(tg(dir.path(), &["eval", "--no-progress"]).status.code().is_some());
    for _ in 0..5 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
            .args(["show", "latest"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        // The reader is gone: every later write hits a closed pipe.
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked") && o.status.code() != Some(101), "{:?}: {err}", o.status);
    }
}

/// Item 5: a record of the wrong type for the task's kind is refused at
/// load by `eval` (exit 2, file:line:field), and `data check` does not call
/// the file clean.
#[test]
fn records_of_the_wrong_type_are_refused_at_load() {
    for (record, field, what) in [
        ("{\"input\": 42, \"expected\": \"billing\"}", "input", "must be a string"),
        ("{\"input\": \"hi\", \"expected\": [\"billing\"]}", "expected", "must be one label"),
        ("{\"input\": \"hi\", \"expected\": {\"team\": \"billing\"}}", "expected", "not an object"),
    ] {
        let dir = task_dir(format!("{}{record}\n", eval_lines(2)).as_bytes());
        let o = tg(dir.path(), &["eval", "--no-progress"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{record}: {err}");
        assert!(err.contains("eval.jsonl:3") && err.contains(field) && err.contains(what), "{record}: {err}");
        assert!(!dir.path().join(".tunegate").exists(), "{record}: no run before the data is right");
        let o = tg(dir.path(), &["data", "check"]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("eval.jsonl:3") && out.contains(what), "{record}: data check: {out}");
    }
}

/// Item 6: a `local:` provider naming a file that is not a GGUF model is a
/// usage error before any case runs and before a run is stored.
#[test]
fn a_local_provider_on_a_file_that_is_not_a_model_exits_2_before_any_case() {
    let dir = task_dir(eval_lines(4).as_bytes());
    std::fs::write(dir.path().join("random.gguf"), (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let model = dir.path().join("random.gguf");
    std::fs::write(dir.path().join("tunegate.yaml"), GOOD_YAML.replace("  - id: echo", &format!("  - id: local:{}", model.display()))).unwrap();
    let o = tg(dir.path(), &["eval", "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("random.gguf") && err.contains("not a GGUF file"), "{err}");
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one error, not one per case: {err}");
    let runs = tg(dir.path(), &["runs"]);
    assert!(!String::from_utf8_lossy(&runs.stdout).contains("complete"), "no run was stored as complete");
}

/// A safetensors file by hand: (name, shape, values), F32.
fn safetensors(tensors: &[(&str, [usize; 2], f32)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, shape, v) in tensors {
        let start = data.len();
        for _ in 0..shape[0] * shape[1] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Item 4: an adapter whose tensors do not fit the base model (or its own
/// rank, or hold NaN) is refused by `adapter export` and as a provider,
/// before any case.
#[test]
fn an_adapter_that_does_not_fit_the_base_is_refused() {
    if !common::model_present() {
        return;
    }
    let q = "base_model.model.model.layers.0.self_attn.q_proj.lora_";
    for (tensors, r, what) in [
        (vec![(format!("{q}A.weight"), [4, 100], 0.01f32), (format!("{q}B.weight"), [1024, 4], 0.0)], 4, "has shape [4, 100]"),
        (vec![(format!("{q}A.weight"), [4, 640], 0.01), (format!("{q}B.weight"), [1024, 4], 0.0)], 8, "r = 8"),
        (vec![(format!("{q}A.weight"), [4, 640], f32::NAN), (format!("{q}B.weight"), [1024, 4], 0.0)], 4, "non-finite"),
    ] {
        let dir = task_dir(eval_lines(4).as_bytes());
        let ad = dir.path().join("adapter");
        std::fs::create_dir_all(&ad).unwrap();
        let t: Vec<(&str, [usize; 2], f32)> = tensors.iter().map(|(n, s, v)| (n.as_str(), *s, *v)).collect();
        std::fs::write(ad.join("adapter_model.safetensors"), safetensors(&t)).unwrap();
        std::fs::write(ad.join("adapter_config.json"), format!("{{\"r\": {r}, \"lora_alpha\": 8}}")).unwrap();
        let o = tg(dir.path(), &["adapter", "export", "adapter"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(what), "{what}: {err}");
        assert!(!ad.join("adapter.gguf").exists(), "{what}: nothing exported");
        std::fs::write(dir.path().join("tunegate.yaml"), GOOD_YAML.replace("  - id: echo", "  - id: local:gemma-3-270m\n    adapter: adapter")).unwrap();
        let o = tg(dir.path(), &["eval", "--no-progress"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(what) && err.lines().filter(|l| !l.trim().is_empty()).count() == 1, "{what}: {err}");
    }
}

/// Item 3: `model fetch --from` checks the source before anything is
/// written, copies no more than the model's size and leaves no partial file.
#[test]
fn model_fetch_from_a_bad_source_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let fetch = |from: &str| Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["model", "fetch", "--from", from]).env("TUNEGATE_HOME", home.path()).output().unwrap();
    let leftovers = || walk(home.path());
    let o = fetch("/dev/zero");
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a GGUF model file"));
    let o = fetch("/no/such/model.gguf");
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    // A GGUF header on the wrong content: fetched, refused by its sha256, removed.
    let fake = home.path().join("fake.gguf");
    std::fs::write(&fake, [b"GGUF".as_slice(), &[0u8; 4096]].concat()).unwrap();
    let o = fetch(fake.to_str().unwrap());
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sha256"));
    assert!(!leftovers().iter().any(|p| p.ends_with(".partial")), "{:?}", leftovers());
    // A missing source is an error even when the model is installed.
    if common::model_present() {
        let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["model", "fetch", "--from", "/no/such/model.gguf"]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
