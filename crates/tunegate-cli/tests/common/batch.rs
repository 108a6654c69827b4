//! What the batch tests (`batch.rs`, `batch_vendor.rs`) share: a two-label
//! task of 20 cases "case N please", its labels, and reading the CLI's output.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub const CASES: usize = 20;

/// The right label of case N.
pub fn label(n: usize) -> &'static str {
    if n % 2 == 0 {
        "billing"
    } else {
        "other"
    }
}

/// The wrong label of case N.
pub fn wrong(n: usize) -> &'static str {
    if n % 2 == 0 {
        "other"
    } else {
        "billing"
    }
}

/// The case number a request (line, body or params) is about.
pub fn case_of(v: &Value) -> usize {
    let t = v.to_string();
    let i = t.find("case ").unwrap() + 5;
    t[i..].split(' ').next().unwrap().parse().unwrap()
}

/// Writes the task: `prompts` and `providers` are the YAML list items.
pub fn task(dir: &Path, prompts: &str, providers: &str) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let eval: String = (0..CASES).map(|n| format!("{{\"input\": \"case {n} please\", \"expected\": \"{}\"}}\n", label(n))).collect();
    std::fs::write(dir.join("data/eval.jsonl"), eval).unwrap();
    let yaml = format!("version: 1\ntask:\n  name: triage\n  kind: classification\n  labels: [billing, other]\nprompts:\n{prompts}providers:\n{providers}data:\n  eval: data/eval.jsonl\n");
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
}

/// `tunegate ARGS` in `dir` with the tests' key variables set; `eval` runs
/// without progress bars and polls vendor batches every 20 ms.
pub fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tunegate"));
    c.args(args).current_dir(dir).env("BATCH_KEY", "sk-batch-secret").env("VENDOR_KEY", "sk-vendor-secret");
    if args.first() == Some(&"eval") {
        c.args(["--no-progress", "--poll-interval", "0.02"]);
    }
    c
}

pub fn tg(dir: &Path, args: &[&str]) -> Output {
    cmd(dir, args).output().unwrap()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&o.stdout), err(o)))
}

/// `tunegate runs --format json`.
pub fn runs(dir: &Path) -> Value {
    json_of(&tg(dir, &["runs", "--format", "json"]))
}
