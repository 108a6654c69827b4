//! Fine-tuning data: check finds exactly the planted problems, split is
//! stable and keeps near-duplicate clusters whole, every export format
//! round-trips through its validator, and each OpenAI check rejects a file.

use std::collections::BTreeSet;
use std::path::Path;
use tunegate_core::data::check::{check_task, CheckOptions};
use tunegate_core::data::export::{self, ExportFormat};
use tunegate_core::data::{refuse_on_leakage, split_examples, CharEstimate, DataError, FindingKind, SplitOptions};
use tunegate_core::dataset::load_cases;
use tunegate_core::{Message, Task};

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

/// A long shipping complaint; the eval set holds a copy with a typo and other
/// punctuation: the same case (a changed word would be a look-alike).
const LONG_SHIPPING: &str = "The courier dropped our new fridge freezer on the driveway, dented the left door, and drove off before anyone could sign for the delivery this morning";

fn line(input: &str, expected: &str) -> String {
    serde_json::json!({"input": input, "expected": expected}).to_string()
}

/// Examples with one planted problem of each kind, by line:
/// 4-5 exact duplicates, 6-7 near duplicates, 8-9 conflicting labels,
/// 10 label outside the set, 11 over-long, 12 malformed JSON. Eval: line 2
/// leaks example 2 exactly, line 3 leaks example 13 nearly.
fn planted(dir: &Path) -> Task {
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
    Task::load(&dir.join("tunegate.yaml")).unwrap()
}

#[test]
fn check_reports_each_planted_problem_with_its_lines_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let task = planted(dir.path());
    let report = check_task(&task, Some(&CharEstimate), &CheckOptions::default()).unwrap();
    type Row = (FindingKind, String, Vec<usize>, Option<Vec<usize>>);
    let got: BTreeSet<Row> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.file.file_name().unwrap().to_string_lossy().to_string(), f.lines.clone(), f.related.as_ref().map(|r| r.lines.clone())))
        .collect();
    let ex = "examples.jsonl".to_string();
    let ev = "eval.jsonl".to_string();
    let want: BTreeSet<_> = [
        (FindingKind::Malformed, ex.clone(), vec![12], None),
        (FindingKind::Contract, ex.clone(), vec![10], None),
        (FindingKind::Leakage, ev.clone(), vec![2], Some(vec![2])),
        (FindingKind::Leakage, ev.clone(), vec![3], Some(vec![13])),
        (FindingKind::ConflictingLabels, ex.clone(), vec![8, 9], None),
        (FindingKind::ExactDuplicate, ex.clone(), vec![4, 5], None),
        (FindingKind::NearDuplicate, ex.clone(), vec![6, 7], None),
        (FindingKind::OverLong, ex.clone(), vec![11], None),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{:#?}", report.findings);
    assert_eq!(report.blocking, 8);
    assert!(report.blocks_tuning());
    let contract = report.findings.iter().find(|f| f.kind == FindingKind::Contract).unwrap();
    assert!(contract.message.contains("`sales`"), "{}", contract.message);
    let conflict = report.findings.iter().find(|f| f.kind == FindingKind::ConflictingLabels).unwrap();
    assert!(conflict.message.contains("`billing` (line 8)") && conflict.message.contains("`technical` (line 9)"), "{}", conflict.message);
    let tok = report.tokenizer.as_ref().unwrap();
    assert!(tok.estimate && tok.limit == 64 && tok.limit_source == "tune.max_seq_len");
    // Deterministic: the same report twice.
    let again = check_task(&task, Some(&CharEstimate), &CheckOptions::default()).unwrap();
    assert_eq!(report.findings, again.findings);
}

#[test]
fn the_leakage_guard_refuses_and_names_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let task = planted(dir.path());
    match refuse_on_leakage(&task) {
        Err(DataError::Leakage(f)) => {
            assert_eq!(f.len(), 2);
            let msg = DataError::Leakage(f).to_string();
            assert!(msg.contains("eval.jsonl:2") && msg.contains("examples.jsonl:2"), "{msg}");
        }
        other => panic!("expected leakage, got {other:?}"),
    }
}

#[test]
fn empty_values_imbalance_and_extraction_contracts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let mut ex: Vec<String> = (0..22).map(|i| line(&format!("billing question number {i} about invoice {}", i * 7919), "billing")).collect();
    ex.push(line("the app will not start on my old tablet", "technical"));
    ex.push(line("   ", "billing"));
    ex.push(serde_json::json!({"input": "no answer given for this one"}).to_string());
    std::fs::write(d.join("data/examples.jsonl"), ex.join("\n")).unwrap();
    std::fs::write(d.join("tunegate.yaml"), YAML.replace("  eval: data/eval.jsonl\n", "")).unwrap();
    let task = Task::load(&d.join("tunegate.yaml")).unwrap();
    let r = check_task(&task, None, &CheckOptions::default()).unwrap();
    let kinds: Vec<(FindingKind, Vec<usize>)> = r.findings.iter().map(|f| (f.kind, f.lines.clone())).collect();
    assert_eq!(kinds, vec![(FindingKind::EmptyInput, vec![24]), (FindingKind::EmptyOutput, vec![25]), (FindingKind::Imbalance, vec![])], "{:#?}", r.findings);
    let imb = &r.findings[2];
    assert!(imb.message.contains("`shipping`") && imb.severity == "warning", "{}", imb.message);
    assert!(r.notes.iter().any(|n| n.contains("no token counter")));

    // Ratio without a missing label: 23 billing vs 1 of each other label.
    let mut ex2 = ex[..23].to_vec();
    ex2.push(line("my parcel went to the wrong town entirely", "shipping"));
    ex2.push(line("I cannot change the name on my profile page", "account"));
    std::fs::write(d.join("data/examples.jsonl"), ex2.join("\n")).unwrap();
    let r = check_task(&task, None, &CheckOptions::default()).unwrap();
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert!(r.findings[0].message.contains("22.0 times"), "{}", r.findings[0].message);
    assert_eq!(r.blocking, 0);
    let r = check_task(&task, None, &CheckOptions { imbalance_ratio: 30.0, ..CheckOptions::default() }).unwrap();
    assert!(r.findings.is_empty());

    // Extraction: a target that is not an object, one that fails the schema.
    std::fs::write(d.join("schema.json"), r#"{"type":"object","required":["order_id"],"properties":{"order_id":{"type":"string"}}}"#).unwrap();
    let ex3 = [
        serde_json::json!({"input": "order AB-1 is late", "expected": {"order_id": "AB-1"}}).to_string(),
        serde_json::json!({"input": "where is my stuff", "expected": "AB-2"}).to_string(),
        serde_json::json!({"input": "order 7 never came", "expected": {"order_id": 7}}).to_string(),
    ];
    std::fs::write(d.join("data/examples.jsonl"), ex3.join("\n")).unwrap();
    let yaml = "version: 1\ntask:\n  name: x\n  kind: extraction\n  output_schema: schema.json\nprompts:\n  - id: p\n    template: \"{{ input }}\"\nproviders:\n  - id: echo\ndata:\n  examples: data/examples.jsonl\n";
    std::fs::write(d.join("tunegate.yaml"), yaml).unwrap();
    let task = Task::load(&d.join("tunegate.yaml")).unwrap();
    let r = check_task(&task, None, &CheckOptions::default()).unwrap();
    let got: Vec<(FindingKind, Vec<usize>)> = r.findings.iter().map(|f| (f.kind, f.lines.clone())).collect();
    assert_eq!(got, vec![(FindingKind::Contract, vec![2]), (FindingKind::Contract, vec![3])], "{:#?}", r.findings);
    assert!(r.findings[1].message.contains("output_schema"), "{}", r.findings[1].message);
}

/// 60 examples in three labels, with five planted clusters of three near
/// duplicates each (long texts differing in their last word).
fn clustered(dir: &Path, with_eval: bool) -> Task {
    let labels = ["billing", "technical", "shipping"];
    let words = ["apple", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "jasper", "kelp", "lumen", "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sierra", "tundra"];
    let mut ex = vec![];
    let mut seed: u64 = 12345;
    let mut word = || -> String {
        (0..6)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (b'a' + ((seed >> 33) % 26) as u8) as char
            })
            .collect()
    };
    for i in 0..45 {
        // Distinct texts: pseudo-random words share no shingles.
        let t = format!("{} {} {} {}", word(), word(), word(), word());
        ex.push(line(&t, labels[i % 3]));
    }
    for c in 0..5 {
        let base = format!("cluster {c} the {} order arrived with a cracked {} panel and the {} manual was missing from the box entirely so", words[c], words[c + 5], words[c + 10]);
        // Three forms of one case: as written, with a word added, shouted.
        for end in ["", " please", "!!"] {
            ex.push(line(&format!("{base}{end}"), labels[c % 3]));
        }
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/examples.jsonl"), ex.join("\n") + "\n").unwrap();
    let yaml = if with_eval {
        std::fs::write(dir.join("data/eval.jsonl"), line("a completely different question about refunds", "billing") + "\n").unwrap();
        YAML.to_string()
    } else {
        YAML.replace("  eval: data/eval.jsonl\n", "")
    };
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    Task::load(&dir.join("tunegate.yaml")).unwrap()
}

#[test]
fn split_is_stable_stratified_and_keeps_clusters_whole() {
    let dir = tempfile::tempdir().unwrap();
    let task = clustered(dir.path(), false);
    let opts = SplitOptions { validation: 0.1, eval: Some(0.2), seed: 7, ..SplitOptions::default() };
    let a = split_examples(&task, &opts).unwrap();
    let b = split_examples(&task, &opts).unwrap();
    assert_eq!(a.multi_clusters, 5);
    let sides = |r: &tunegate_core::data::SplitResult| r.sides.iter().map(|s| (s.name.clone(), s.lines.clone())).collect::<Vec<_>>();
    assert_eq!(sides(&a), sides(&b), "same seed, same split");
    let names: Vec<&str> = a.sides.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["train", "validation", "eval"]);
    let total: usize = a.sides.iter().map(|s| s.lines.len()).sum();
    assert_eq!(total, 60);
    // Every cluster (source lines 46-48, 49-51, ...) sits on one side.
    for c in 0..5 {
        let members: Vec<usize> = (0..3).map(|k| 46 + 3 * c + k).collect();
        let on: BTreeSet<&str> = members.iter().map(|l| a.sides.iter().find(|s| s.source_lines.contains(l)).unwrap().name.as_str()).collect();
        assert_eq!(on.len(), 1, "cluster {c} split across {on:?}");
    }
    // Stratified: every label on every side, shares near the targets.
    for s in &a.sides {
        assert!(s.labels.iter().filter(|l| l.label != "account").all(|l| l.count > 0), "{}: {:?}", s.name, s.labels);
    }
    let n = |name: &str| a.sides.iter().find(|s| s.name == name).unwrap().lines.len();
    assert!((9..=15).contains(&n("eval")), "eval {}", n("eval"));
    assert!((3..=9).contains(&n("validation")), "validation {}", n("validation"));
    // Another seed gives another split.
    let c = split_examples(&task, &SplitOptions { seed: 8, ..opts.clone() }).unwrap();
    assert_ne!(sides(&a), sides(&c));
}

#[test]
fn split_leaves_out_leaking_and_malformed_examples() {
    let dir = tempfile::tempdir().unwrap();
    let task = planted(dir.path());
    let r = split_examples(&task, &SplitOptions::default()).unwrap();
    assert_eq!(r.sides.len(), 2, "the task has an eval set: no eval side");
    let out: Vec<(usize, bool)> = r.left_out.iter().map(|l| (l.line, l.reason.contains("leakage"))).collect();
    assert_eq!(out, vec![(2, true), (12, false), (13, true)], "{:?}", r.left_out);
    for s in &r.sides {
        assert!(!s.source_lines.contains(&2) && !s.source_lines.contains(&13));
    }
}

fn sample_messages() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new("system", "Route the message."), Message::new("user", "Message: charged twice\nTeam:"), Message::new("assistant", "billing")],
        vec![Message::new("user", "Message: app crashes\nTeam:"), Message::new("assistant", "technical")],
    ]
}

#[test]
fn every_export_format_round_trips_through_its_validator() {
    for f in ExportFormat::ALL {
        let text: String = sample_messages().iter().map(|m| export::encode(f, m).to_string() + "\n").collect();
        let v = export::validate(f, &text, &CharEstimate, 2048);
        assert!(v.ok(), "{}: {:?}", f.name(), v.problems);
        assert_eq!(v.examples.len(), 2);
        // Reading back and writing again gives the same lines.
        let again: String = v.examples.iter().map(|m| export::encode(f, m).to_string() + "\n").collect();
        assert_eq!(again, text, "{}", f.name());
        if matches!(f, ExportFormat::OpenaiChat | ExportFormat::Sharegpt | ExportFormat::Axolotl | ExportFormat::Alpaca) {
            assert_eq!(v.examples, sample_messages(), "{}", f.name());
        }
    }
}

#[test]
fn each_openai_check_rejects_its_file() {
    let ok_user = r#"{"role":"user","content":"hi"}"#;
    let cases: Vec<(&str, String)> = vec![
        ("data_type", "[1, 2]".into()),
        ("data_type", "{not json".into()),
        ("missing_messages_list", r#"{"prompt":"x"}"#.into()),
        ("missing_messages_list", r#"{"messages":[]}"#.into()),
        ("message_missing_key", format!(r#"{{"messages":[{ok_user},{{"role":"assistant"}}]}}"#)),
        ("message_unrecognized_key", format!(r#"{{"messages":[{ok_user},{{"role":"assistant","content":"a","mood":"x"}}]}}"#)),
        ("unrecognized_role", format!(r#"{{"messages":[{{"role":"customer","content":"hi"}},{ok_user},{{"role":"assistant","content":"a"}}]}}"#)),
        ("missing_content", format!(r#"{{"messages":[{ok_user},{{"role":"assistant","content":""}}]}}"#)),
        ("missing_content", format!(r#"{{"messages":[{ok_user},{{"role":"assistant","content":42}}]}}"#)),
        ("example_missing_assistant_message", format!(r#"{{"messages":[{ok_user}]}}"#)),
        ("too_many_tokens", format!(r#"{{"messages":[{{"role":"user","content":"{}"}},{{"role":"assistant","content":"a"}}]}}"#, "word ".repeat(100))),
    ];
    for (check, line) in cases {
        let text = format!("{}\n{line}\n", export::encode(ExportFormat::OpenaiChat, &sample_messages()[1]));
        let v = export::validate(ExportFormat::OpenaiChat, &text, &CharEstimate, 64);
        let got: Vec<(usize, &str)> = v.problems.iter().map(|p| (p.line, p.check)).collect();
        assert_eq!(got, vec![(2, check)], "{line}: {:?}", v.problems);
        assert_eq!(v.examples.len(), 1, "the good line still passes");
    }
    // The other formats reject their own kinds of bad lines.
    let bad = [
        (ExportFormat::PromptCompletion, r#"{"prompt":"x"}"#, "example_missing_assistant_message"),
        (ExportFormat::PromptCompletion, r#"{"prompt":"x","completion":"y","extra":1}"#, "message_unrecognized_key"),
        (ExportFormat::Alpaca, r#"{"instruction":"","output":"y"}"#, "missing_content"),
        (ExportFormat::Alpaca, r#"{"input":"x","output":"y"}"#, "message_missing_key"),
        (ExportFormat::Sharegpt, r#"{"conversations":[{"from":"human","value":"x"},{"from":"bot","value":"y"}]}"#, "unrecognized_role"),
        (ExportFormat::Sharegpt, r#"{"conversations":[{"from":"human","value":"x"}]}"#, "example_missing_assistant_message"),
        (ExportFormat::Sharegpt, r#"{"messages":[]}"#, "missing_messages_list"),
    ];
    for (f, line, check) in bad {
        let v = export::validate(f, line, &CharEstimate, 2048);
        let checks: Vec<&str> = v.problems.iter().map(|p| p.check).collect();
        assert!(checks.contains(&check), "{} {line}: {checks:?}", f.name());
    }
}

#[test]
fn export_renders_through_the_tune_prompt_and_needs_a_tune_section() {
    let dir = tempfile::tempdir().unwrap();
    let task = clustered(dir.path(), true);
    let path = dir.path().join("data/examples.jsonl");
    let cases = load_cases(&path).unwrap();
    let ex = export::render_examples(&task, &cases, &path).unwrap();
    assert_eq!(ex.len(), 60);
    assert_eq!(ex[0].messages[0].role, "user");
    assert!(ex[0].messages[0].content.starts_with("Message: ") && ex[0].messages[0].content.ends_with("\nTeam:"));
    assert_eq!(ex[0].messages[1], Message::new("assistant", "billing"));
    let pc = export::encode(ExportFormat::PromptCompletion, &ex[0].messages);
    assert_eq!(pc["completion"], " billing", "a completion continues after `Team:` with a space");

    std::fs::write(dir.path().join("tunegate.yaml"), YAML.split("tune:").next().unwrap()).unwrap();
    let task = Task::load(&dir.path().join("tunegate.yaml")).unwrap();
    let err = export::render_examples(&task, &cases, &path).unwrap_err();
    assert!(err.to_string().contains("no `tune:` section"), "{err}");
}

#[test]
fn epochs_prices_and_axolotl_config() {
    assert_eq!(export::default_epochs(2), 25);
    assert_eq!(export::default_epochs(10), 10);
    assert_eq!(export::default_epochs(20), 5);
    assert_eq!(export::default_epochs(354), 3);
    assert_eq!(export::default_epochs(10_000), 2);
    assert_eq!(export::default_epochs(100_000), 1);
    assert_eq!(export::training_price("openai:gpt-4o-mini"), Some(3.0));
    assert_eq!(export::training_price("openai:gpt-4.1-mini-2025-04-14"), Some(5.0));
    assert_eq!(export::training_price("openai:gpt-4.1"), Some(25.0));
    assert_eq!(export::training_price("local:gemma-3-270m"), Some(0.0));
    assert_eq!(export::training_price("openai-compatible:mine"), None);
    assert_eq!(export::sequence_len(118, 2), 256);
    assert_eq!(export::sequence_len(10, 2), 64);

    let dir = tempfile::tempdir().unwrap();
    let task = planted(dir.path());
    let yaml = export::axolotl_config(
        &task,
        &export::AxolotlOptions { base_model: "google/gemma-3-270m".into(), dataset: "train.jsonl".into(), sequence_len: 256, epochs: 3, output_dir: "./out".into() },
    );
    assert!(export::validate_axolotl_config(&yaml).is_empty(), "{yaml}\n{:?}", export::validate_axolotl_config(&yaml));
    assert!(yaml.contains("base_model: google/gemma-3-270m") && yaml.contains("adapter: lora") && yaml.contains("sequence_len: 256"), "{yaml}");
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(v["datasets"][0]["type"].as_str(), Some("chat_template"));
    assert_eq!(v["lora_r"].as_u64(), Some(8));
    assert_eq!(v["lora_alpha"].as_f64(), Some(16.0));
    // Gemma's turn ends with <end_of_turn>: axolotl trains it only when told.
    assert_eq!(v["eot_tokens"][0].as_str(), Some("<end_of_turn>"), "{yaml}");
    assert_eq!(export::validate_axolotl_config("adapter: lora\n").len(), 10);
}

/// Look-alikes (addresses that differ in the house number, one question
/// template over different products, the same sentence about different
/// people) are neither leakage nor conflicts; true near duplicates
/// (punctuation, casing, a typo, a word added) still are.
#[test]
fn look_alikes_are_not_leakage_or_conflicts_but_true_near_duplicates_are() {
    let dir = tempfile::tempdir().unwrap();
    let examples = [
        line("2296 COMPASS POINTE SOUTH WYND NE LELAND 28451", "shipping"),
        line("104 South Boulevard, Evanston", "billing"),
        line("How much does Plan-G1 cost per month?", "billing"),
        line("Alice Smith moved to Denver last spring with her family and wants her mail forwarded", "account"),
        line("317 Conniston Road, West Palm Beach", "shipping"),
        line("Please cancel the duplicate payment on my credit card statement", "billing"),
    ];
    let eval = [
        line("2415 COMPASS POINTE SOUTH WYND NE LELAND 28451", "shipping"),
        line("704 South Boulevard, Evanston", "shipping"),
        line("How much does Plan-D4 cost per month?", "billing"),
        line("Maria Lopez moved to Denver last spring with her family and wants her mail forwarded", "account"),
        line("317 conniston road west palm beach", "shipping"),
        line("please cancel the duplicate paymnet on my credit card statement!!", "billing"),
    ];
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/examples.jsonl"), examples.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), eval.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("tunegate.yaml"), YAML).unwrap();
    let task = Task::load(&dir.path().join("tunegate.yaml")).unwrap();
    let report = check_task(&task, None, &CheckOptions::default()).unwrap();
    let leaks: Vec<(Vec<usize>, Vec<usize>)> =
        report.findings.iter().filter(|f| f.kind == FindingKind::Leakage).map(|f| (f.lines.clone(), f.related.as_ref().unwrap().lines.clone())).collect();
    // Only the true near duplicates: the same address in other case and
    // punctuation, and the same request with a typo.
    assert_eq!(leaks, vec![(vec![5], vec![5]), (vec![6], vec![6])], "{:#?}", report.findings);
    assert!(!report.findings.iter().any(|f| f.kind == FindingKind::ConflictingLabels), "{:#?}", report.findings);

    // Extraction: outputs that copy their input's spelling are the same
    // answer; a different answer for the same case is still a conflict.
    let dir = tempfile::tempdir().unwrap();
    let ex = |input: &str, name: &str| serde_json::json!({"input": input, "expected": {"name": name}}).to_string();
    let examples = [ex("rosa l parks", "rosa l parks"), ex("Rosa L. Parks", "Rosa L. Parks"), ex("martin luther king", "martin luther king"), ex("Martin Luther King!", "Malcolm X")];
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/examples.jsonl"), examples.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("data/eval.jsonl"), ex("coretta scott king", "coretta scott king") + "\n").unwrap();
    let yaml = YAML.replace("  kind: classification\n  labels: [billing, technical, shipping, account]\n", "  kind: extraction\n");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let task = Task::load(&dir.path().join("tunegate.yaml")).unwrap();
    let report = check_task(&task, None, &CheckOptions::default()).unwrap();
    let conflicts: Vec<Vec<usize>> = report.findings.iter().filter(|f| f.kind == FindingKind::ConflictingLabels).map(|f| f.lines.clone()).collect();
    assert_eq!(conflicts, vec![vec![3, 4]], "{:#?}", report.findings);
    assert!(report.findings.iter().any(|f| f.kind == FindingKind::ExactDuplicate && f.lines == vec![1, 2]), "{:#?}", report.findings);
}
