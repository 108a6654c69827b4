//! Templates, shots and datasets.

use tunegate_core::dataset::load_cases;
use tunegate_core::task::{ShotStrategy, ShotsSpec};
use tunegate_core::template::draw_shots;
use tunegate_core::{CompiledPrompt, Task};

fn setup(template: &str, shots: &str) -> (tempfile::TempDir, Task) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let mut ex = String::new();
    for (i, l) in ["a", "b", "c"].iter().cycle().take(30).enumerate() {
        ex.push_str(&format!("{{\"input\": \"example {i}\", \"expected\": \"{l}\"}}\n"));
    }
    std::fs::write(dir.path().join("data/examples.jsonl"), ex).unwrap();
    std::fs::write(dir.path().join("data/eval.csv"), "input,product,expected,tags\n\"Hi, there\",kettle,a,x;y\n").unwrap();
    let yaml = format!("version: 1\ntask:\n  name: t\n  kind: classification\n  labels: [a, b, c]\nprompts:\n  - id: p\n    system: \"Labels: {{{{ labels | join(', ') }}}}\"\n    template: {template:?}\n{shots}providers:\n  - id: echo\ndata:\n  eval: data/eval.csv\n  examples: data/examples.jsonl\n");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let t = Task::load(&dir.path().join("tunegate.yaml")).unwrap();
    (dir, t)
}

#[test]
fn renders_vars_labels_and_shots_from_examples_only() {
    let tpl = "{% for s in shots %}{{ s.input }} => {{ s.expected }}\n{% endfor %}{{ input }} ({{ vars.product }}, {{ product }})";
    let (dir, t) = setup(tpl, "    shots: { k: 6, strategy: stratified, seed: 3 }\n");
    let examples = load_cases(&dir.path().join("data/examples.jsonl")).unwrap();
    let eval = load_cases(&dir.path().join("data/eval.csv")).unwrap();
    assert_eq!(eval[0].tags, vec!["x", "y"]);
    assert_eq!(eval[0].line, 2);
    let p = CompiledPrompt::compile(&t, &t.prompt_sources[0], Some(&examples)).unwrap();
    let m = p.render(&eval[0], std::path::Path::new("data/eval.csv")).unwrap();
    assert_eq!(m[0].role, "system");
    assert_eq!(m[0].content, "Labels: a, b, c");
    let user = &m[1].content;
    assert!(user.ends_with("Hi, there (kettle, kettle)"), "{user}");
    assert_eq!(user.matches("=>").count(), 6);
    for l in ["=> a", "=> b", "=> c"] {
        assert_eq!(user.matches(l).count(), 2, "stratified: two of each label\n{user}");
    }
    assert!(user.matches("example ").count() == 6);
}

#[test]
fn shots_are_deterministic_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ex.jsonl");
    let ex: String = (0..50).map(|i| format!("{{\"input\": \"e{i}\", \"expected\": \"{}\"}}\n", ["x", "y"][i % 2])).collect();
    std::fs::write(&p, ex).unwrap();
    let cases = load_cases(&p).unwrap();
    let labels = vec!["x".to_string(), "y".to_string()];
    for strategy in [ShotStrategy::Random, ShotStrategy::Stratified] {
        let s = |seed| draw_shots(&ShotsSpec { k: 8, strategy, seed, order: None }, &cases, &labels).iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(s(1), s(1));
        assert_ne!(s(1), s(2));
        assert_eq!(s(1).len(), 8);
    }
    let first = draw_shots(&ShotsSpec { k: 3, strategy: ShotStrategy::First, seed: 0, order: None }, &cases, &labels);
    assert_eq!(first.iter().map(|c| c.input_text()).collect::<Vec<_>>(), vec!["e0", "e1", "e2"]);
}

#[test]
fn undefined_variable_names_prompt_and_variable() {
    let (dir, t) = setup("{{ input }} {{ customer }}", "");
    let eval = load_cases(&dir.path().join("data/eval.csv")).unwrap();
    let p = CompiledPrompt::compile(&t, &t.prompt_sources[0], None).unwrap();
    let e = p.render(&eval[0], std::path::Path::new("data/eval.csv")).unwrap_err().to_string();
    assert!(e.contains("prompt `p`") && e.contains("`customer`") && e.contains("data/eval.csv:2"), "{e}");
}

#[test]
fn case_ids_are_stable_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.jsonl");
    std::fs::write(&p, "{\"input\": \"same\"}\n{\"input\": \"same\"}\n{\"vars\": {\"a\": 1}}\n").unwrap();
    let a = load_cases(&p).unwrap();
    let b = load_cases(&p).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[1].id, format!("{}#2", a[0].id));
    assert_ne!(a[0].id, a[2].id);
}
