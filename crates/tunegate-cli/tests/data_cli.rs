//! `tunegate data check | split | export` as a user runs them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-triage/tunegate.yaml")
}

const YAML: &str = "version: 1
task:
  name: triage
  kind: classification
  labels: [billing, technical, shipping, account]
prompts:
  - id: bare
    template: \"Message: {{ input }}\\nTeam:\"
providers:
  - id: echo
data:
  eval: data/eval.jsonl
  examples: data/examples.jsonl
tune:
  base: local:gemma-3-270m
  prompt: bare
  max_seq_len: 64
";

fn line(input: &str, expected: &str) -> String {
    serde_json::json!({"input": input, "expected": expected}).to_string()
}

const LONG_SHIPPING: &str = "The courier dropped our new fridge freezer on the driveway, dented the left door, and drove off before anyone could sign for the delivery this morning";

/// The planted dataset of the core tests: 4-5 exact duplicates, 6-7 near
/// duplicates, 8-9 conflicting labels, 10 a label outside the set, 11
/// over-long, 12 malformed; eval 2 and 3 leak examples 2 and 13.
fn planted(dir: &Path) {
    let long_text = "Our office ordered forty ergonomic chairs, twelve standing desks, three whiteboards, a projector and cables for the new meeting rooms; the invoice lists every item twice, the card was charged on two separate days, and finance cannot reconcile the statement against the purchase order numbers we were given by your sales representative last quarter.";
    let examples = [
        line("My invoice shows a charge I do not recognise from March", "billing"),
        line("The mobile app crashes every time I open the settings screen", "technical"),
        line("Can I update the phone number linked to my login", "account"),
        line("Please cancel the duplicate payment on my credit card statement", "billing"),
        line("please cancel the duplicate payment on my credit card statement!", "billing"),
        line("The dishwasher shows error code E24 and will not drain any water at all after the cycle", "technical"),
        line("The dishwasher shows error code E24 and will not drain any water at all after the cycle really", "technical"),
        line("Where can I download a copy of my latest receipt", "billing"),
        line("where can i download a copy of my latest receipt?", "technical"),
        line("I would like to speak with someone about a partnership", "sales"),
        line(long_text, "billing"),
        "{\"input\": \"broken line\", \"expected\": \"billing\"".to_string(),
        line(LONG_SHIPPING, "shipping"),
        line("Tracking has said out for delivery for four days now", "shipping"),
        line("I forgot my password and the reset email never comes", "account"),
    ];
    let eval = [
        line("How do I close my account and delete my data", "account"),
        line("The mobile app crashes every time I open the settings screen", "technical"),
        line(&LONG_SHIPPING.replace("courier", "courrier").replace("morning", "morning!"), "shipping"),
        line("The oven clock resets itself whenever the power flickers", "technical"),
    ];
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/examples.jsonl"), examples.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("data/eval.jsonl"), eval.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("tunegate.yaml"), YAML).unwrap();
}

#[test]
fn check_reports_the_planted_problems_in_text_and_json_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    planted(dir.path());
    let o = tg(&["data", "check", "-c", "tunegate.yaml", "--format", "json"], dir.path());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: BTreeSet<(String, String, Vec<u64>)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = Path::new(f["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().to_string();
            (f["kind"].as_str().unwrap().to_string(), file, f["lines"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).collect())
        })
        .collect();
    let want: BTreeSet<(String, String, Vec<u64>)> = [
        ("malformed", "examples.jsonl", vec![12]),
        ("contract", "examples.jsonl", vec![10]),
        ("leakage", "eval.jsonl", vec![2]),
        ("leakage", "eval.jsonl", vec![3]),
        ("conflicting_labels", "examples.jsonl", vec![8, 9]),
        ("exact_duplicate", "examples.jsonl", vec![4, 5]),
        ("near_duplicate", "examples.jsonl", vec![6, 7]),
        ("over_long", "examples.jsonl", vec![11]),
    ]
    .into_iter()
    .map(|(k, f, l)| (k.to_string(), f.to_string(), l))
    .collect();
    assert_eq!(got, want, "{out}");
    assert_eq!(v["blocking"], 8);
    assert_eq!(v["thresholds"]["near_duplicate_jaccard"], 0.8);
    assert_eq!(v["files"][0]["role"], "examples");

    let o = tg(&["data", "check", "-c", "tunegate.yaml"], dir.path());
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    for s in [
        "exact_duplicate (1) — blocks tuning",
        "data/examples.jsonl:4, 5: the same input 2 times",
        "data/eval.jsonl:2 ~ data/examples.jsonl:2:",
        "data/eval.jsonl:3 ~ data/examples.jsonl:13:",
        "data/examples.jsonl:12: not valid JSON",
        "label `sales` is not in task.labels",
        "8 finding(s) block tuning",
    ] {
        assert!(out.contains(s), "missing `{s}` in\n{out}");
    }
}

#[test]
fn check_and_export_on_the_bundled_example_pass() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bundled();
    let cfg = cfg.to_str().unwrap();
    let o = tg(&["data", "check", "-c", cfg], dir.path());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("clean: nothing blocks tuning"), "{out}");

    let dest = dir.path().join("openai.jsonl");
    let o = tg(&["data", "export", "-c", cfg, "--format", "openai-chat", "-o", dest.to_str().unwrap()], dir.path());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("wrote 354 examples") && out.contains("every check passed"), "{out}");
    assert!(out.contains("billed tokens:") && out.contains("cost estimate: $0.00"), "{out}");
    let written = std::fs::read_to_string(&dest).unwrap();
    assert_eq!(written.lines().count(), 354);
    let first: serde_json::Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(first["messages"][0]["role"], "user");
    assert_eq!(first["messages"][1]["role"], "assistant");

    // For an OpenAI target: tiktoken counts and the price table.
    let o = tg(&["data", "export", "-c", cfg, "--format", "openai-chat", "-o", dest.to_str().unwrap(), "--force", "--model", "openai:gpt-4o-mini", "--epochs", "2"], dir.path());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("o200k_base (tiktoken)") && out.contains("$3.00 per million") && out.contains("epochs: 2 (--epochs"), "{out}");

    // Every format, each validated by its own validator after writing.
    for f in ["prompt-completion", "alpaca", "sharegpt", "axolotl"] {
        let dest = dir.path().join(f).join("train.jsonl");
        let o = tg(&["data", "export", "-c", cfg, "--format", f, "-o", dest.to_str().unwrap()], dir.path());
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{f}: {out}{err}");
        assert_eq!(std::fs::read_to_string(&dest).unwrap().lines().count(), 354);
    }
    let yaml = std::fs::read_to_string(dir.path().join("axolotl/axolotl.yaml")).unwrap();
    for s in ["base_model: google/gemma-3-270m", "adapter: lora", "lora_r: 8", "lora_alpha: 16", "path: train.jsonl", "num_epochs: 2"] {
        assert!(yaml.contains(s), "missing `{s}` in\n{yaml}");
    }
    let seq: usize = yaml.lines().find_map(|l| l.strip_prefix("sequence_len: ")).unwrap().parse().unwrap();
    assert!(seq.is_power_of_two() && seq >= 64, "{seq}");
    // No overwrite without --force.
    let o = tg(&["data", "export", "-c", cfg, "--format", "openai-chat", "-o", dest.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--force"));
}

#[test]
fn export_needs_a_tune_section_and_clean_examples() {
    let dir = tempfile::tempdir().unwrap();
    planted(dir.path());
    // A malformed line is an input error naming file and line.
    let o = tg(&["data", "export", "-c", "tunegate.yaml", "--format", "openai-chat"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("examples.jsonl:12"), "{err}");
    std::fs::write(dir.path().join("tunegate.yaml"), YAML.split("tune:").next().unwrap()).unwrap();
    let o = tg(&["data", "export", "-c", "tunegate.yaml", "--format", "openai-chat", "--input", "data/eval.jsonl"], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no `tune:` section"), "{err}");
}

#[test]
fn split_is_stable_refuses_to_overwrite_and_leaves_the_task_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let labels = ["billing", "technical", "shipping"];
    let mut ex = vec![];
    let mut seed: u64 = 99;
    let mut word = || -> String {
        (0..7)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (b'a' + ((seed >> 33) % 26) as u8) as char
            })
            .collect()
    };
    for i in 0..40 {
        ex.push(line(&format!("{} {} {} {}", word(), word(), word(), word()), labels[i % 3]));
    }
    // Two clusters of near duplicates (lines 41-43, 44-46).
    for (c, label) in labels.iter().take(2).enumerate() {
        let base = format!("cluster {c} my {} order came with a cracked {} panel and the manual was missing from the box so", word(), word());
        // Three forms of one case: as written, with a word added, shouted.
        for end in ["", " please", "!!"] {
            ex.push(line(&format!("{base}{end}"), label));
        }
    }
    std::fs::write(d.join("data/examples.jsonl"), ex.join("\n") + "\n").unwrap();
    let yaml = YAML.replace("  eval: data/eval.jsonl\n", "");
    std::fs::write(d.join("tunegate.yaml"), &yaml).unwrap();

    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["data", "split", "-c", "tunegate.yaml", "--out", out, "--seed", "3"];
        args.extend_from_slice(extra);
        tg(&args, d)
    };
    let o = run("a", &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("2 near-duplicate cluster(s) kept whole"), "{out}");
    assert!(out.contains("examples: a/train.jsonl") && out.contains("validation: a/validation.jsonl") && out.contains("eval: a/eval.jsonl"), "{out}");
    assert!(out.contains("The task file was not changed"), "{out}");
    let o = run("b", &[]);
    assert_eq!(o.status.code(), Some(0));
    let mut total = 0;
    let mut side_of: Vec<(String, String)> = vec![];
    for f in ["train.jsonl", "validation.jsonl", "eval.jsonl"] {
        let a = std::fs::read_to_string(d.join("a").join(f)).unwrap();
        let b = std::fs::read_to_string(d.join("b").join(f)).unwrap();
        assert_eq!(a, b, "{f}: same seed, same files");
        total += a.lines().count();
        for l in a.lines() {
            side_of.push((l.to_string(), f.to_string()));
        }
    }
    assert_eq!(total, 46);
    for c in 0..2 {
        let sides: BTreeSet<&String> = side_of.iter().filter(|(l, _)| l.contains(&format!("cluster {c} "))).map(|(_, s)| s).collect();
        assert_eq!(sides.len(), 1, "cluster {c} on {sides:?}");
    }
    // Refuses to overwrite; --force does.
    let o = run("a", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--force"));
    assert_eq!(run("a", &["--force"]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(d.join("tunegate.yaml")).unwrap(), yaml, "the task file is never edited");
    // Bad fractions are usage errors.
    let o = run("c", &["--validation", "0.5", "--eval", "0.6"]);
    assert_eq!(o.status.code(), Some(2));
}
