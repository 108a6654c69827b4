//! Every assertion type on outputs that must pass and outputs that must fail.

use serde_json::{json, Value};
use tunegate_core::dataset::Case;
use tunegate_core::scorers::{normalize_label, similarity, ResponseFacts, Scorer};
use tunegate_core::Task;

fn task_with(asserts: &str, kind: &str, extra: &str) -> (tempfile::TempDir, Task) {
    let dir = tempfile::tempdir().unwrap();
    let labels = if kind == "classification" { "  labels: [billing, technical, other]\n" } else { "" };
    let yaml = format!("version: 1\ntask:\n  name: t\n  kind: {kind}\n{labels}{extra}prompts:\n  - id: p\n    template: \"{{{{ input }}}}\"\nproviders:\n  - id: echo\nassert:\n{asserts}");
    let p = dir.path().join("tunegate.yaml");
    std::fs::write(&p, yaml).unwrap();
    let t = Task::load(&p).unwrap();
    (dir, t)
}

fn case(expected: Value) -> Case {
    let mut vars = serde_json::Map::new();
    vars.insert("input".into(), json!("hello"));
    Case { id: "c".into(), line: 1, vars, expected: Some(expected), tags: vec![], asserts: vec![] }
}

fn check(asserts: &str, kind: &str, output: &str, expected: Value, facts: ResponseFacts) -> (bool, f64, String) {
    let (_d, t) = task_with(asserts, kind, "");
    let s = Scorer::new(&t);
    let c = case(expected);
    let r = s.score(output, &c, &facts);
    let (pass, score) = tunegate_core::scorers::combine(&r, &s.weights(&c));
    (pass, score, r.iter().map(|x| x.reason.clone()).collect::<Vec<_>>().join("; "))
}

fn f() -> ResponseFacts {
    ResponseFacts { latency_ms: 120.0, completion_tokens: Some(4), cost_usd: Some(0.0001) }
}

#[test]
fn string_assertions() {
    let g = "generation";
    assert!(check("  - type: equals\n", g, " hi there ", json!("hi there"), f()).0);
    assert!(!check("  - type: equals\n", g, "hi", json!("hi there"), f()).0);
    assert!(check("  - type: contains\n    value: \"{{ expected }}\"\n", g, "well, hi there!", json!("hi there"), f()).0);
    assert!(!check("  - type: contains\n    value: there\n", g, "THERE", json!(""), f()).0);
    assert!(check("  - type: icontains\n    value: there\n", g, "THERE", json!(""), f()).0);
    assert!(check("  - type: not-icontains\n    value: sorry\n", g, "Sure!", json!(""), f()).0);
    assert!(!check("  - type: not-icontains\n    value: sorry\n", g, "Sorry, no", json!(""), f()).0);
    assert!(check("  - type: starts-with\n    value: Dear\n", g, "  Dear Ann", json!(""), f()).0);
    assert!(check("  - type: regex\n    value: \"^\\\\d{3}-\\\\d{4}$\"\n", g, "555-1234", json!(""), f()).0);
    assert!(!check("  - type: regex\n    value: \"^\\\\d{3}$\"\n", g, "55a", json!(""), f()).0);
}

#[test]
fn json_assertions() {
    let g = "generation";
    assert!(check("  - type: is-json\n", g, "```json\n{\"a\": 1}\n```", json!(""), f()).0);
    assert!(!check("  - type: is-json\n", g, "a: 1", json!(""), f()).0);
    let schema = "  - type: json-schema\n    value: {type: object, required: [name], properties: {name: {type: string}}}\n";
    assert!(check(schema, g, r#"{"name": "Ann"}"#, json!(""), f()).0);
    let (pass, _, why) = check(schema, g, r#"{"name": 3}"#, json!(""), f());
    assert!(!pass && why.contains("schema"), "{why}");
}

#[test]
fn label_normalises_and_reports_outside_the_set() {
    let a = "  - type: label\n";
    assert!(check(a, "classification", " Billing.\nextra text", json!("billing"), f()).0);
    assert!(check(a, "classification", "**technical**", json!("technical"), f()).0);
    let (p, _, why) = check(a, "classification", "other", json!("billing"), f());
    assert!(!p && why.contains("predicted other"), "{why}");
    let (p, _, why) = check(a, "classification", "the billing team", json!("billing"), f());
    assert!(!p && why.contains("not one of the labels"), "{why}");
    assert_eq!(normalize_label("  \"Account\"  "), "account");
}

#[test]
fn fields_gives_per_field_outcomes_and_f1() {
    let (_d, t) = task_with("  - type: fields\n", "extraction", "");
    let s = Scorer::new(&t);
    let c = case(json!({"order": "A-1", "email": "a@b.c", "product": null}));
    let r = &s.score(r#"{"order": "a-1", "email": "x@y.z", "product": "lamp"}"#, &c, &f())[0];
    assert!(!r.pass);
    assert_eq!(r.detail["fields"]["order"], "tp");
    assert_eq!(r.detail["fields"]["email"], "fp+fn");
    assert_eq!(r.detail["fields"]["product"], "fp");
    // tp 1, fp 2, fn 1: p = 1/3, r = 1/2, F1 = 0.4
    assert!((r.score - 0.4).abs() < 1e-12, "{}", r.score);
    let r = &s.score(r#"{"order": "A-1", "email": "a@b.c"}"#, &c, &f())[0];
    assert!(r.pass && r.score == 1.0);
    let r = &s.score("not json", &c, &f())[0];
    assert!(!r.pass && r.detail["format_failure"] == "not_json");
}

#[test]
fn similarity_and_budget_assertions() {
    assert_eq!(similarity("kitten", "sitting"), 1.0 - 3.0 / 7.0);
    assert_eq!(similarity("  a   b ", "a b"), 1.0);
    let a = "  - type: similarity\n    threshold: 0.8\n";
    let (p, s, _) = check(a, "rewrite", "Thanks for waiting!", json!("Thanks for waiting."), f());
    assert!(p && s > 0.9);
    assert!(!check(a, "rewrite", "No.", json!("Thanks for waiting."), f()).0);
    assert!(check("  - type: max-tokens\n    value: 4\n", "generation", "x", json!(""), f()).0);
    assert!(!check("  - type: max-tokens\n    value: 3\n", "generation", "x", json!(""), f()).0);
    assert!(check("  - type: latency\n    threshold: 200\n", "generation", "x", json!(""), f()).0);
    assert!(!check("  - type: latency\n    threshold: 100\n", "generation", "x", json!(""), f()).0);
    assert!(check("  - type: cost\n    threshold: 0.001\n", "generation", "x", json!(""), f()).0);
    assert!(!check("  - type: cost\n    threshold: 0.00001\n", "generation", "x", json!(""), f()).0);
}

#[test]
fn exec_assertion_runs_the_users_script() {
    let a = "  - type: exec\n    value: \"python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({\\\"pass\\\": d[\\\"output\\\"]==d[\\\"expected\\\"], \\\"score\\\": 0.7, \\\"reason\\\": \\\"checked\\\"}))'\"\n";
    let (p, s, why) = check(a, "generation", "yes", json!("yes"), f());
    assert!(p && (s - 0.7).abs() < 1e-12 && why == "checked", "{why}");
    assert!(!check(a, "generation", "no", json!("yes"), f()).0);
    assert!(check("  - type: exec\n    value: \"echo 0.9\"\n", "generation", "x", json!(""), f()).0);
    let (p, _, why) = check("  - type: exec\n    value: \"echo oops >&2; exit 3\"\n", "generation", "x", json!(""), f());
    assert!(!p && why.contains("oops"), "{why}");
}

#[test]
fn weights_combine_scores() {
    let a = "  - type: contains\n    value: a\n    weight: 3\n  - type: contains\n    value: z\n";
    let (p, s, _) = check(a, "generation", "abc", json!(""), f());
    assert!(!p);
    assert!((s - 0.75).abs() < 1e-12);
}
