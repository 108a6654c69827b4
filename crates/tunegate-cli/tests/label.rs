//! `tunegate label` as a person uses it: the terminal UI in a real
//! pseudo-terminal (keys in, the screen read back through a VT100 parser),
//! 20 inputs with undo, back, search, quit and resume; a kill -9 in the
//! middle of typing; and the line mode over a pipe.

mod tui;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use tui::Term;

const LABELS: [&str; 3] = ["billing", "technical", "other"];


fn task(dir: &Path, kind: &str, inputs: &[String]) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/eval.jsonl"), "{\"input\": \"something else entirely\", \"expected\": \"other\"}\n").unwrap();
    let labels = if kind == "classification" { "  labels: [billing, technical, other]\n" } else { "" };
    let yaml = format!(
        "version: 1\ntask:\n  name: t\n  kind: {kind}\n{labels}prompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\n"
    );
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    let lines: String = inputs.iter().map(|t| format!("{}\n", serde_json::json!({ "input": t }))).collect();
    std::fs::write(dir.join("inputs.jsonl"), lines).unwrap();
}

fn dataset(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("data/examples.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The key that picks the right label for input `i`.
fn key(i: usize) -> String {
    (i % 3 + 1).to_string()
}

#[test]
fn tui_labels_20_inputs_with_undo_back_search_quit_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<String> = (0..20).map(|i| format!("message number {i:02}")).collect();
    task(dir.path(), "classification", &inputs);
    let args = ["label", "inputs.jsonl", "--who", "tester"];

    let mut t = Term::start(dir.path(), &args);
    t.wait_for(&["Input 1 of 20", "message number 00", "1 billing", "2 technical", "3 other"]);
    for i in 0..8 {
        t.keys(&key(i));
        t.wait_for(&[&format!("Input {} of 20", i + 2)]);
    }
    // Counts per label on screen.
    t.wait_for(&["answered 8", "billing 3, technical 3, other 2"]);
    // A slip on input 9, undone: the line leaves the file, input 9 is back.
    t.keys(if key(8) == "1" { "2" } else { "1" });
    t.wait_for(&["Input 10 of 20", "answered 9"]);
    t.keys("u");
    t.wait_for(&["Input 9 of 20", "undone", "answered 8"]);
    assert_eq!(dataset(dir.path()).len(), 8);
    t.keys(&key(8));
    t.wait_for(&["Input 10 of 20"]);
    // Quit in the middle.
    t.keys("q");
    t.wait_exit();
    assert_eq!(dataset(dir.path()).len(), 9);

    // Resume exactly where it stopped.
    let mut t = Term::start(dir.path(), &args);
    t.wait_for(&["Input 10 of 20", "message number 09", "answered 9"]);
    for i in 9..15 {
        t.keys(&key(i));
        t.wait_for(&[&format!("Input {} of 20", i + 2)]);
    }
    // Back to input 15: its saved answer is shown; the same key keeps it.
    t.keys("b");
    t.wait_for(&["Input 15 of 20", &format!("answered: {}", LABELS[14 % 3])]);
    t.keys(&key(14));
    t.wait_for(&["Input 16 of 20"]);
    // Search jumps to an input by its text.
    t.keys("/");
    t.wait_for(&["Search:"]);
    t.keys("number 03\r");
    t.wait_for(&["Input 4 of 20", "message number 03", "found"]);
    t.keys(&key(3));
    t.wait_for(&["Input 16 of 20"]);
    for i in 15..20 {
        t.keys(&key(i));
        if i < 19 {
            t.wait_for(&[&format!("Input {} of 20", i + 2)]);
        }
    }
    t.wait_for(&["Every input is answered", "answered 20 of 20"]);
    t.keys("q");
    t.wait_exit();

    // The dataset holds exactly the answers given, once each.
    let rows = dataset(dir.path());
    assert_eq!(rows.len(), 20, "{rows:?}");
    for (i, text) in inputs.iter().enumerate() {
        let found: Vec<&serde_json::Value> = rows.iter().filter(|r| r["input"] == *text).collect();
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert_eq!(found[0]["expected"], LABELS[i % 3], "{text}");
    }
    let prov = std::fs::read_to_string(dir.path().join("data/examples.jsonl.provenance.jsonl")).unwrap();
    assert!(prov.lines().all(|l| l.contains("\"who\":\"tester\"")), "{prov}");
    assert!(prov.lines().any(|l| l.contains("\"event\":\"undo\"")));
    // The task still loads and evaluates with the written examples.
    let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["data", "check"]).current_dir(dir.path()).output().unwrap();
    assert!(o.status.code() != Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn kill_9_while_typing_loses_only_the_answer_being_typed_and_line_mode_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<String> = (0..5).map(|i| format!("rewrite this {i}")).collect();
    task(dir.path(), "generation", &inputs);
    let mut t = Term::start(dir.path(), &["label", "inputs.jsonl"]);
    t.wait_for(&["Input 1 of 5", "rewrite this 0", "Ctrl-S save"]);
    // Enter makes a new line in the editor; Ctrl-S saves.
    t.keys("line a\rline b\x13");
    t.wait_for(&["Input 2 of 5"]);
    t.keys("answer one\x13");
    t.wait_for(&["Input 3 of 5"]);
    t.keys("partial ans");
    t.wait_for(&["partial ans"]);
    let pid = t.child.process_id().unwrap();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    t.wait_exit();
    let rows = dataset(dir.path());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["expected"], "line a\nline b");
    assert_eq!(rows[1]["expected"], "answer one");

    // Line mode over a pipe picks up at input 3.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["label", "inputs.jsonl", "--no-tui"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"answer two\\nwith a second line\n:s\n\n:u\n:u\nanswer two again\n:q\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("Input 3 of 5") && out.contains("nothing to accept") && out.contains("undone"), "{out}");
    let rows = dataset(dir.path());
    // :s skipped input 4, the empty line was refused, :u un-skipped it,
    // :u removed the answer to input 3, which was then answered again.
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[2]["expected"], "answer two again");
    assert_eq!(rows[2]["input"], "rewrite this 2");
}

#[test]
fn line_mode_refuses_eval_inputs_and_bad_answers() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = vec!["Something else, entirely!".to_string(), "a real one".to_string()];
    task(dir.path(), "classification", &inputs);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["label", "inputs.jsonl"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"5\nrefunds\ntechnical\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    // The eval input is refused up front, so the session starts at input 2.
    assert!(out.contains("Input 2 of 2") && out.contains("refused 1"), "{out}");
    assert!(out.contains("not saved: `5` is not one of the labels") && out.contains("not saved: `refunds`"), "{out}");
    assert_eq!(dataset(dir.path()), vec![serde_json::json!({"input": "a real one", "expected": "technical"})]);
    // Labelling into a CSV data set is refused with the field to fix (exit 2).
    let y = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap().replace("examples.jsonl", "examples.csv");
    std::fs::write(dir.path().join("tunegate.yaml"), y).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["label", "inputs.jsonl"]).current_dir(dir.path()).stdin(Stdio::null()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("data.examples"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_advisor_sends_people_to_label_and_counts_what_they_wrote() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "classification", &[]);
    // Half of the eval set has no expected output.
    let eval: String = (0..10).map(|i| if i % 2 == 0 { format!("{{\"input\": \"case {i}\", \"expected\": \"billing\"}}\n") } else { format!("{{\"input\": \"case {i}\"}}\n") }).collect();
    std::fs::write(dir.path().join("data/eval.jsonl"), eval).unwrap();
    let advise = |dir: &Path| -> serde_json::Value {
        let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["advise", "--format", "json"]).current_dir(dir).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)))
    };
    let a = advise(dir.path());
    assert_eq!(a["verdict"], "WRITE_EXAMPLES_FIRST", "{a}");
    let steps = a["next_steps"].to_string();
    assert!(steps.contains("tunegate label data/eval.jsonl --to eval"), "{steps}");
    // Label two of the five in place, then ask again: the advisor counts them.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["label", "data/eval.jsonl", "--to", "eval"]).current_dir(dir.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"2\nother\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let text = std::fs::read_to_string(dir.path().join("data/eval.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 10, "answers completed lines in place: {text}");
    assert!(text.contains("{\"input\":\"case 1\",\"expected\":\"technical\"}") && text.contains("{\"input\":\"case 3\",\"expected\":\"other\"}"), "{text}");
    let a = advise(dir.path());
    assert!(a["reasons"].to_string().contains("7 of 10 eval cases have an expected output") && a["reasons"].to_string().contains("2 written by people with `tunegate label`"), "{}", a["reasons"]);
}

#[test]
fn tui_extraction_fields_are_prefilled_from_the_suggestion_and_editable() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "extraction", &["order A-1 for 12 dollars".to_string(), "order B-2 for 5 dollars".to_string()]);
    std::fs::write(dir.path().join("schema.json"), r#"{"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}, "note": {"type": "string"}}}"#).unwrap();
    std::fs::write(dir.path().join("model.sh"), "read line; case \"$line\" in *A-1*) echo '{\"order_id\": \"A-1\", \"amount\": 12}';; *) echo '{\"order_id\": \"B-2\", \"amount\": 5}';; esac\n").unwrap();
    let y = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap().replace("  kind: extraction\n", "  kind: extraction\n  output_schema: schema.json\n").replace("  - id: echo\n", "  - id: exec:sh model.sh\n    label: model\n");
    std::fs::write(dir.path().join("tunegate.yaml"), y).unwrap();
    let mut t = Term::start(dir.path(), &["label", "inputs.jsonl", "--suggest", "p@model"]);
    t.wait_for(&["Input 1 of 2", "> order_id: A-1", "amount: 12", "note:"]);
    // Tab to `amount`, change 12 to 13, Tab to `note`, type one; save.
    t.keys("\t\x7f\x7f13\tpaid\x13");
    t.wait_for(&["Input 2 of 2", "> order_id: B-2"]);
    // Accept the second suggestion as it is.
    t.keys("\x13");
    t.wait_for(&["Every input is answered"]);
    t.keys("\x11"); // Ctrl-Q
    t.wait_exit();
    let rows = dataset(dir.path());
    assert_eq!(rows[0]["expected"], serde_json::json!({"order_id": "A-1", "amount": 13, "note": "paid"}));
    assert_eq!(rows[1]["expected"], serde_json::json!({"order_id": "B-2", "amount": 5, "note": null}));
    let prov = std::fs::read_to_string(dir.path().join("data/examples.jsonl.provenance.jsonl")).unwrap();
    let ev: Vec<serde_json::Value> = prov.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((ev[0]["accepted_suggestion"].as_bool(), ev[0]["suggested"].as_bool()), (Some(false), Some(true)));
}

#[test]
fn tui_extraction_without_a_schema_takes_a_json_object() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), "extraction", &["ship to Oslo".to_string()]);
    let mut t = Term::start(dir.path(), &["label", "inputs.jsonl"]);
    t.wait_for(&["Input 1 of 1", "type a JSON object"]);
    t.keys("not json\x13");
    t.wait_for(&["not saved: an extraction answer must be a JSON object"]);
    t.keys(&"\x7f".repeat(8));
    t.keys("{\"city\": \"Oslo\"}\x13");
    t.wait_for(&["Every input is answered"]);
    t.keys("\x11");
    t.wait_exit();
    assert_eq!(dataset(dir.path()), vec![serde_json::json!({"input": "ship to Oslo", "expected": {"city": "Oslo"}})]);
}
