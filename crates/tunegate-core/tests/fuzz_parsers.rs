//! Property tests of the text parsers over mutated inputs (issue 18): the
//! task-file parser and the JSONL and CSV dataset loaders return a value or
//! an error, never panic. `TUNEGATE_FUZZ_ITERS=10000 cargo test --release
//! -p tunegate-core --test fuzz_parsers -- --nocapture` is the long run of
//! BENCHMARKS.md.

#[path = "support/mutate.rs"]
mod mutate;

use std::path::Path;
use tunegate_core::dataset::parse_cases;
use tunegate_core::Task;

const TASK: &str = r#"version: 1
task:
  name: triage
  description: "Route a message"
  kind: classification
  labels: [billing, technical, "account"]
prompts:
  - id: bare
    template: "Message: {{ input }}\nTeam:"
  - id: fs
    system: "Answer with one label."
    template: "{% for s in shots %}{{ s.input }} -> {{ s.expected }}\n{% endfor %}{{ input }} ->"
    shots: { k: 2, strategy: stratified }
providers:
  - id: echo
  - id: local:gemma-3-270m
    params: { max_tokens: 8, temperature: 0, choices: [billing, technical] }
    price: { input_per_mtok: 0.1, output_per_mtok: 0.4 }
data:
  eval: data/eval.jsonl
  examples: data/examples.jsonl
assert:
  - type: label
  - type: regex
    value: "^[a-z]+$"
    weight: 0.5
usage:
  calls_per_month: 100000
tune:
  base: local:gemma-3-270m
  prompt: bare
  lora: { rank: 8, alpha: 16, target_modules: [q, v] }
  epochs: 2
"#;

const EXTRACTION: &str = "version: 1\ntask:\n  name: x\n  kind: extraction\nprompts:\n  - id: p\n    template: \"{{ input }}\"\nproviders:\n  - id: echo\ndata:\n  eval: e.jsonl\nassert:\n  - type: fields\n  - type: json-schema\n    value: { type: object, properties: { a: { type: string } } }\n";

#[test]
fn the_task_file_parser_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tunegate.yaml");
    mutate::fuzz("task-file", &[TASK.as_bytes().to_vec(), EXTRACTION.as_bytes().to_vec()], |b| Task::from_source(&path, String::from_utf8_lossy(b).into_owned()).is_ok());
}

#[test]
fn the_jsonl_loader_never_panics() {
    let seeds = [
        "{\"id\": \"a1\", \"input\": \"charged twice\", \"expected\": \"billing\", \"tags\": [\"email\"]}\n{\"input\": \"app crashes\", \"expected\": \"technical\", \"vars\": {\"lang\": \"en\"}}\n",
        "{\"input\": {\"text\": \"x\"}, \"expected\": {\"name\": \"Ann\", \"age\": 3}, \"assert\": [{\"type\": \"contains\", \"value\": \"Ann\"}]}\n\n{\"id\": 7, \"input\": \"y\", \"tags\": \"a;b\", \"metadata\": null}\n",
    ];
    let path = Path::new("eval.jsonl");
    mutate::fuzz("jsonl", &seeds.map(|s| s.as_bytes().to_vec()), |b| parse_cases(path, &String::from_utf8_lossy(b)).is_ok());
}

#[test]
fn the_csv_loader_never_panics() {
    let seeds = ["id,input,expected,tags\n1,\"charged, twice\",billing,email\n2,\"say \"\"hi\"\"\",technical,\"a;b\"\n", "input,expected\nx,y\n\"multi\nline\",z\n"];
    let path = Path::new("eval.csv");
    mutate::fuzz("csv", &seeds.map(|s| s.as_bytes().to_vec()), |b| parse_cases(path, &String::from_utf8_lossy(b)).is_ok());
}
