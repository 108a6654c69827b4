//! Each data finding weighs by what it does to the numbers, and the verdict
//! follows the strongest evidence: a few leaking cases inside the interval do
//! not make FIX_DATA, a third of the eval set leaking does; moving
//! requirements mean keep prompting even on a small eval set; a small eval
//! set replaces the verdict only when nothing can be read from it.

use tunegate_core::advise::*;

/// A classifier: `n` eval cases of which `passing` pass (the first ones),
/// `leaked` of them (the first ones) the same case as an example.
fn evidence(n: usize, passing: usize, leaked: usize) -> Evidence {
    let outcomes: Vec<Outcome> = (0..n)
        .map(|i| Outcome {
            prompt: "bare".into(),
            provider: "model".into(),
            case_id: format!("c{i}"),
            repeat: 0,
            tags: vec![],
            pass: Some(i < passing),
            error: None,
            output: Some(if i < passing { "billing" } else { "other" }.into()),
            expected: Some("billing".into()),
            prompt_text: None,
            assertions: serde_json::json!([]),
            prompt_tokens: Some(20),
            completion_tokens: Some(1),
        })
        .collect();
    Evidence {
        task: TaskFacts { name: "t".into(), kind: "classification".into(), labels: vec!["billing".into(), "other".into()], prompts: vec!["bare".into()], config: "tunegate.yaml".into(), ..Default::default() },
        data: DataFacts {
            eval_file: Some("data/eval.jsonl".into()),
            eval_cases: n,
            eval_with_expected: n,
            examples_file: Some("data/examples.jsonl".into()),
            examples_cases: 400,
            clean_examples: 400 - leaked,
            leaked_eval_cases: leaked,
            leaked_eval_ids: (0..leaked).map(|i| format!("c{i}")).collect(),
            ..Default::default()
        },
        run: Some(RunEvidence { run_id: "r1".into(), created_at: "2026-12-01T00:00:00Z".into(), repeat: 1, outcomes }),
        ..Default::default()
    }
}

#[test]
fn a_leak_inside_the_interval_is_a_warning_a_large_one_decides() {
    // 98.8% of 400 with 3 cases resembling examples (0.75%, inside ±1.2 points).
    let a = advise(&evidence(400, 395, 3), None).unwrap();
    assert_ne!(a.verdict, Verdict::FixData, "{:#?}", a.reasons);
    let w = a.reasons.iter().find(|r| r.starts_with("warning:")).unwrap_or_else(|| panic!("{:#?}", a.reasons));
    assert!(w.contains("3 of 400 eval cases (0.8%)") && w.contains("without them bare@model passes") && w.contains("within the interval"), "{w}");
    assert!(a.next_steps.iter().any(|s| s.command.as_deref() == Some("tunegate data check")), "{:#?}", a.next_steps);

    // 30% of the eval set leaking: the data must be fixed first.
    let a = advise(&evidence(400, 395, 120), None).unwrap();
    assert_eq!(a.verdict, Verdict::FixData, "{:#?}", a.reasons);
    assert!(a.reasons[0].contains("120 of 400 eval cases (30.0%)"), "{:#?}", a.reasons);

    // A small leak that moves the number (the leaking cases are the only
    // passes) decides too.
    let a = advise(&evidence(400, 20, 20), None).unwrap();
    assert_eq!(a.verdict, Verdict::FixData, "{:#?}", a.reasons);
    assert!(a.reasons[0].contains("the leak moves the number"), "{:#?}", a.reasons);

    // The share is a threshold of the one table, overridable.
    let mut o = std::collections::BTreeMap::new();
    o.insert("max_leaked_share".to_string(), 0.5);
    assert_ne!(advise(&evidence(400, 395, 120), Some(&o)).unwrap().verdict, Verdict::FixData);
}

#[test]
fn moving_requirements_win_over_a_small_eval_set_which_decides_only_when_unreadable() {
    // 80 eval cases and a contract that changed every week of the last month.
    let mut ev = evidence(80, 60, 0);
    ev.churn.store = [2.0, 9.0, 16.0, 23.0].iter().map(|&d| RevisionEvent { age_days: d, kind: "contract".into(), name: "t".into(), hash: format!("h{d}") }).collect();
    let a = advise(&ev, None).unwrap();
    assert_eq!(a.verdict, Verdict::KeepPrompting, "{:#?}", a.reasons);
    assert!(a.next_steps[0].text.starts_with("Grow data/eval.jsonl from 80"), "{:#?}", a.next_steps);
    assert!(a.reasons.iter().any(|r| r.starts_with("only 80 eval cases")), "{:#?}", a.reasons);

    // 80 stable cases: the verdict stands on the rest, with the warning.
    let a = advise(&evidence(80, 78, 0), None).unwrap();
    assert_ne!(a.verdict, Verdict::BuildEvalFirst, "{:#?}", a.reasons);
    assert!(a.next_steps[0].text.starts_with("Grow data/eval.jsonl"), "{:#?}", a.next_steps);

    // 12 cases: nothing can be read from them.
    assert_eq!(advise(&evidence(12, 10, 0), None).unwrap().verdict, Verdict::BuildEvalFirst);
}
