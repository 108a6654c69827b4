//! The prompt lab through the CLI, on planted models (exec providers whose
//! behaviour is known exactly): minimize must keep exactly the sentence the
//! model needs, vary must find exactly the cases that flip when examples
//! are reordered, sweep must see a curve that rises with examples, and the
//! advisor must cite all three.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn tg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const LABELS: [&str; 4] = ["billing", "shipping", "account", "other"];

/// 40 eval cases "ticket N about LABEL" (+ 8 "ambiguous" ones expecting
/// billing when `ambiguous`), 16 examples in label order.
fn task(dir: &Path, ambiguous: bool, model: &str, extra_prompts: &str) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut eval = String::new();
    for i in 0..40 {
        let l = LABELS[i % 4];
        eval.push_str(&format!("{{\"id\": \"c{i:02}\", \"input\": \"ticket {i} about {l}\", \"expected\": \"{l}\"}}\n"));
    }
    if ambiguous {
        for i in 0..8 {
            eval.push_str(&format!("{{\"id\": \"amb{i}\", \"input\": \"an ambiguous ticket {i}\", \"expected\": \"billing\"}}\n"));
        }
    }
    std::fs::write(dir.join("data/eval.jsonl"), eval).unwrap();
    let mut ex = String::new();
    for i in 0..16 {
        let l = LABELS[i % 4];
        ex.push_str(&format!("{{\"id\": \"x{i:02}\", \"input\": \"example {i} on {l}\", \"expected\": \"{l}\"}}\n"));
    }
    std::fs::write(dir.join("data/examples.jsonl"), ex).unwrap();
    std::fs::write(dir.join("model.sh"), model).unwrap();
    let yaml = format!(
        r#"version: 1
task:
  name: planted
  kind: classification
  labels: [billing, shipping, account, other]
usage:
  calls_per_month: 100000
prompts:
  - id: tk
    system: "You are a careful assistant. Stay polite."
    template: "Sort the ticket. Use the keyword in the message. Do not explain.\nAnswer with one of: {{{{ labels | join(', ') }}}}.\n\nMessage: {{{{ input }}}}\nLabel:"
{extra_prompts}
providers:
  - id: exec:sh model.sh
    label: planted
data:
  eval: data/eval.jsonl
  examples: data/examples.jsonl
assert:
  - type: label
"#
    );
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
}

/// Knows the labels only when told to "Use the keyword"; else says other.
/// Every call is logged, to count provider calls.
const KEYWORD_MODEL: &str = r#"p=$(cat)
echo x >> calls.log
msg=$(printf '%s\n' "$p" | sed -n 's/^Message: //p' | tail -n 1)
if printf '%s' "$p" | grep -q "Use the keyword in the message."; then
  for l in billing shipping account other; do case "$msg" in *$l*) echo $l; exit;; esac; done
fi
echo other
"#;

fn calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default().lines().count()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn minimize_keeps_exactly_the_sentence_that_matters_and_writes_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    task(dir, false, KEYWORD_MODEL, "");
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--format", "json", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    let matters: Vec<&str> = r["parts"].as_array().unwrap().iter().filter(|p| p["matters"] == true).map(|p| p["part"]["id"].as_str().unwrap()).collect();
    assert_eq!(matters, vec!["p2"], "{r:#}");
    assert_eq!(r["parts"][3]["part"]["text"], "Use the keyword in the message.");
    let dropped: Vec<&str> = r["best_dropped"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut all: Vec<&str> = r["parts"].as_array().unwrap().iter().map(|p| p["part"]["id"].as_str().unwrap()).filter(|id| *id != "p2").collect();
    all.sort();
    let mut got = dropped.clone();
    got.sort();
    assert_eq!(got, all, "everything but p2 is dropped");
    assert_eq!(r["full"]["rate"], 1.0);
    assert_eq!(r["best"]["rate"], 1.0);
    assert!(r["token_saving"].as_f64().unwrap() > 0.3, "{}", r["token_saving"]);
    // Dropping p2 costs 30 of 40 cases: significant.
    assert_eq!(r["parts"][3]["without"]["regressions"], 30);
    assert!(r["parts"][3]["without"]["p_worse"].as_f64().unwrap() < 1e-6);

    // Re-running is free (all cached), and --write adds the prompt.
    let before = calls(dir);
    assert!(before > 0);
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--write", "tk-min", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(calls(dir), before, "re-running minimize called the provider");
    let out = text(&o);
    assert!(out.contains("Smallest prompt not significantly worse") && out.contains("keeps: p2"), "{out}");
    let yaml = std::fs::read_to_string(dir.join("tunegate.yaml")).unwrap();
    assert!(yaml.contains("- id: \"tk-min\"") && yaml.contains("- id: tk\n"), "{yaml}");
    let o = tg(&["eval", "--prompt", "tk-min", "--no-progress"], dir);
    assert!(o.status.success(), "the written prompt passes everything: {}", text(&o));
    // Never overwrites.
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--write", "tk-min", "--no-progress"], dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already has a prompt `tk-min`"), "{}", text(&o));
    // The stored run is tagged with its kind and carries the report.
    let o = tg(&["runs", "--format", "json"], dir);
    let runs = json(&o);
    assert!(runs.as_array().unwrap().iter().any(|r| r["run"]["kind"] == "ablation" && r["run"]["meta"]["report"]["best_dropped"].is_array()), "{runs:#}");
}

#[test]
fn budget_and_confirmation_stop_before_spending() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    task(dir, false, KEYWORD_MODEL, "");
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--budget", "100", "--no-progress"], dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("raise --budget") && text(&o).contains("320 provider call(s)"), "{}", text(&o));
    assert_eq!(calls(dir), 0);
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--budget", "nonsense"], dir);
    assert_eq!(o.status.code(), Some(2));
    // A priced provider asks first; over a pipe that means --yes.
    let yaml = std::fs::read_to_string(dir.join("tunegate.yaml")).unwrap().replace("    label: planted\n", "    label: planted\n    price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }\n");
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    let o = tg(&["prompt", "vary", "--prompt", "tk", "--no-progress"], dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("pass --yes"), "{}", text(&o));
    assert_eq!(calls(dir), 0);
    // A dollar budget too small for the plan.
    let o = tg(&["prompt", "vary", "--prompt", "tk", "--yes", "--budget", "$0.00001", "--no-progress"], dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(calls(dir), 0);
    let o = tg(&["prompt", "vary", "--prompt", "tk", "--yes", "--budget", "$5", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(calls(dir) > 0);
}

/// Keyword model, except for "ambiguous" tickets: it answers with the
/// label of the first example in the prompt (position bias).
const ORDER_MODEL: &str = r#"p=$(cat)
msg=$(printf '%s\n' "$p" | sed -n 's/^Message: //p' | tail -n 1)
case "$msg" in
  *ambiguous*) printf '%s\n' "$p" | sed -n 's/^Answer: //p' | head -n 1; exit;;
esac
for l in billing shipping account other; do case "$msg" in *$l*) echo $l; exit;; esac; done
echo other
"#;

const FEW_SHOT: &str = r#"  - id: fs
    template: "Sort the ticket into {{ labels | join(', ') }}. Be brief. Reply with the label.\n\n{% for s in shots %}\nExample: {{ s.input }}\nAnswer: {{ s.expected }}\n{% endfor %}\nMessage: {{ input }}\nLabel:"
    shots: { k: 4, strategy: first }"#;

#[test]
fn vary_finds_exactly_the_cases_that_flip_with_example_order() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    task(dir, true, ORDER_MODEL, FEW_SHOT);
    let o = tg(&["prompt", "vary", "--prompt", "fs", "--format", "json", "--no-progress", "--paraphrase", "Route the ticket. Say only the label."], dir);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    let families: Vec<&str> = r["variants"].as_array().unwrap().iter().map(|v| v["family"].as_str().unwrap()).collect();
    for f in ["original", "shots-order", "sentence-order", "label-order", "format", "paraphrase"] {
        assert!(families.contains(&f), "no {f} variant: {families:?}");
    }
    // The original order starts with the billing example: all 48 pass.
    assert_eq!(r["variants"][0]["rate"]["passed"], 48);
    let flips: Vec<&str> = r["flips"].as_array().unwrap().iter().map(|f| f["case_id"].as_str().unwrap()).collect();
    assert_eq!(flips, vec!["amb0", "amb1", "amb2", "amb3", "amb4", "amb5", "amb6", "amb7"], "{r:#}");
    // Only the example order moves the pass rate.
    let fam: Vec<(String, f64)> = serde_json::from_value(r["family_range"].clone()).unwrap();
    for (f, range) in &fam {
        if f == "shots-order" {
            assert!((range - 8.0 / 48.0).abs() < 1e-9, "{fam:?}");
        } else {
            assert_eq!(*range, 0.0, "{f} should not matter: {fam:?}");
        }
    }
    assert!((r["range"].as_f64().unwrap() - 8.0 / 48.0).abs() < 1e-9);
    assert!(r["sd"].as_f64().unwrap() > 0.0);
    let o = tg(&["prompt", "vary", "--prompt", "fs", "--no-progress"], dir);
    assert!(text(&o).contains("8 of 48 cases flip") && text(&o).contains("shots-order"), "{}", text(&o));
}

/// Knows a label only when an example of it is in the prompt.
const LEARNER_MODEL: &str = r#"p=$(cat)
msg=$(printf '%s\n' "$p" | sed -n 's/^Message: //p' | tail -n 1)
for l in billing shipping account other; do
  case "$msg" in *$l*)
    if printf '%s\n' "$p" | grep -q "^Answer: $l\$"; then echo $l; else echo none; fi; exit;;
  esac
done
echo none
"#;

#[test]
fn sweep_draws_a_rising_curve_and_the_advisor_cites_the_lab() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    task(dir, false, LEARNER_MODEL, &FEW_SHOT.replace("strategy: first", "strategy: stratified"));
    // A budget that covers only k=0 (40 calls): the curve stops there, said so.
    let o = tg(&["prompt", "sweep", "--prompt", "fs", "--shots", "0,1,2,4", "--seeds", "2", "--budget", "50", "--format", "json", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["points"].as_array().unwrap().len(), 1, "{r:#}");
    assert!(r["stopped"].as_str().unwrap().contains("--budget before k=1"), "{r:#}");
    let o = tg(&["prompt", "sweep", "--prompt", "fs", "--shots", "0,1,2,4", "--seeds", "2", "--format", "json", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    let means: Vec<f64> = r["points"].as_array().unwrap().iter().map(|p| p["pooled"]["mean"].as_f64().unwrap()).collect();
    // Stratified draws show k distinct labels out of 4: k/4 of cases pass.
    assert_eq!(means, vec![0.0, 0.25, 0.5, 1.0], "{r:#}");
    assert_eq!(r["shape"], "rising");
    assert_eq!(r["points"][0]["seeds"].as_array().unwrap().len(), 1, "k=0 needs one draw");
    assert_eq!(r["points"][3]["seeds"].as_array().unwrap().len(), 2);
    let o = tg(&["prompt", "sweep", "--prompt", "fs", "--shots", "0,1,2,4", "--seeds", "2", "--no-progress"], dir);
    assert!(text(&o).contains("curve: rising"), "{}", text(&o));
    // A prompt without `shots` cannot be swept.
    let o = tg(&["prompt", "sweep", "--prompt", "tk", "--no-progress"], dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("does not show `shots`"), "{}", text(&o));

    // The advisor cites each lab result in its table.
    assert!(tg(&["prompt", "minimize", "--prompt", "tk", "--no-progress"], dir).status.success());
    assert!(tg(&["prompt", "vary", "--prompt", "fs", "--no-progress"], dir).status.success());
    let o = tg(&["advise", "--format", "json"], dir);
    let a = json(&o);
    let row = |name: &str| a["table"].as_array().unwrap().iter().find(|r| r["row"] == name).unwrap_or_else(|| panic!("no row {name}: {a:#}"))["evidence"].as_str().unwrap().to_string();
    assert!(row("Data").contains("few-shot curve of `fs`") && row("Data").contains("rising"), "{}", row("Data"));
    assert!(row("Cost / length").contains("prompt minimize"), "{}", row("Cost / length"));
    assert!(row("Fragility").contains("prompt vary") && row("Fragility").contains("variants of `fs`"), "{}", row("Fragility"));
}

#[test]
fn paraphrases_from_a_provider_and_a_sample_of_cases() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    task(dir, false, KEYWORD_MODEL, "");
    // A second provider that "paraphrases": it drops the keyword sentence.
    let yaml = std::fs::read_to_string(dir.join("tunegate.yaml")).unwrap().replace(
        "data:\n",
        "  - id: exec:echo x >> para.log; echo 'You are a careful assistant.'\n    label: paraphraser\ndata:\n",
    );
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    let o = tg(&["prompt", "vary", "--prompt", "tk", "--provider", "planted", "--paraphrase-with", "paraphraser", "--paraphrase-count", "2", "--sample", "20", "--format", "json", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["cases"], 20);
    // The sample keeps the labels' shares: 5 of each.
    let para: Vec<&Value> = r["variants"].as_array().unwrap().iter().filter(|v| v["family"] == "paraphrase").collect();
    assert_eq!(para.len(), 1, "two identical paraphrases count once: {r:#}");
    // The paraphrase replaced the system message; the keyword sentence is
    // in the template, so the planted model still passes everything.
    assert_eq!(para[0]["rate"]["passed"], 20);
    let asked = std::fs::read_to_string(dir.join("para.log")).unwrap().lines().count();
    assert_eq!(asked, 2);
    // Asked again: the paraphrases come from the cache.
    let o = tg(&["prompt", "vary", "--prompt", "tk", "--provider", "planted", "--paraphrase-with", "paraphraser", "--paraphrase-count", "2", "--sample", "20", "--no-progress"], dir);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(dir.join("para.log")).unwrap().lines().count(), 2);
    // Unknown prompt / provider: usage errors naming what exists.
    let o = tg(&["prompt", "vary", "--prompt", "nope"], dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("have: tk"), "{}", text(&o));
    let o = tg(&["prompt", "minimize", "--prompt", "tk", "--provider", "nope"], dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("have: planted, paraphraser"), "{}", text(&o));
}
