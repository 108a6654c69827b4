//! Compare on a real store: pairing by case id, cases in one run only,
//! errors, per-label deltas, selectors.

use serde_json::json;
use tunegate_run::compare::{compare, resolve_side};
use tunegate_store::{ResultRow, RunInfo, Store};

fn run(store: &Store, id: &str) {
    store
        .create_run(&RunInfo {
            id: id.into(),
            created_at: tunegate_store::now(),
            finished_at: None,
            status: "complete".into(),
            kind: "eval".into(),
            task_name: "t".into(),
            task_path: "t.yaml".into(),
            config_hash: "h".into(),
            repeat: 1,
            planned: 0,
            meta: json!({}),
        })
        .unwrap();
}

fn row(run: &str, case: &str, label: &str, pass: Option<bool>, error: bool) -> ResultRow {
    ResultRow {
        run_id: run.into(),
        prompt_id: "p".into(),
        provider: "m".into(),
        case_id: case.into(),
        input: format!("input {case}"),
        expected: Some(json!(label)),
        output: Some(if pass == Some(true) { label.into() } else { "other".into() }),
        pass,
        score: pass.map(|p| if p { 1.0 } else { 0.0 }),
        error: if error { Some("HTTP 500".into()) } else { None },
        assertions: json!([{"type": "label", "pass": pass, "score": 0, "reason": "", "detail": {"expected": label}}]),
        latency_ms: 10.0,
        ..Default::default()
    }
}

#[test]
fn pairs_by_case_and_reports_what_is_not_paired() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("db")).unwrap();
    run(&s, "ra");
    run(&s, "rb");
    let mut a = vec![];
    let mut b = vec![];
    // 20 cases: 12 pass both, 1 regression, 5 improvements, 2 fail both.
    for i in 0..20 {
        let label = if i % 2 == 0 { "billing" } else { "shipping" };
        let (pa, pb) = match i {
            0..=11 => (true, true),
            12 => (true, false),
            13..=17 => (false, true),
            _ => (false, false),
        };
        a.push(row("ra", &format!("c{i}"), label, Some(pa), false));
        b.push(row("rb", &format!("c{i}"), label, Some(pb), false));
    }
    a.push(row("ra", "only-a", "billing", Some(true), false));
    b.push(row("rb", "only-b", "billing", Some(true), false));
    a.push(row("ra", "err", "billing", None, true));
    b.push(row("rb", "err", "billing", Some(true), false));
    s.insert_results(&a, &[]).unwrap();
    s.insert_results(&b, &[]).unwrap();
    let sa = resolve_side(&s, "ra").unwrap();
    let sb = resolve_side(&s, "rb:p@m").unwrap();
    let colon = resolve_side(&s, "rb:p@local:m");
    assert!(matches!(colon, Ok(ref x) if x.provider.as_deref() == Some("local:m")), "{colon:?}");
    assert_eq!(sb.prompt.as_deref(), Some("p"));
    let c = compare(&s, &sa, &sb, 0.05, 0).unwrap();
    assert_eq!(c.paired, 20);
    assert_eq!((c.mcnemar.regressions, c.mcnemar.improvements, c.mcnemar.both_pass, c.mcnemar.both_fail), (1, 5, 12, 2));
    assert!((c.mcnemar.p_value - 0.21875).abs() < 1e-12, "{}", c.mcnemar.p_value);
    assert_eq!(c.only_in_a, vec!["only-a"]);
    assert_eq!(c.only_in_b, vec!["only-b"]);
    assert_eq!(c.errored, vec!["err"]);
    assert!(c.better.is_none(), "{}", c.verdict);
    assert!(c.power_note.as_ref().unwrap().contains("too small"), "{:?}", c.power_note);
    assert_eq!(c.regressions.len(), 1);
    assert_eq!(c.regressions[0].case_id, "c12");
    assert_eq!(c.improvements.len(), 5);
    assert!((c.pass_rate_a - 13.0 / 20.0).abs() < 1e-12 && (c.pass_rate_b - 17.0 / 20.0).abs() < 1e-12);
    assert!(c.per_label.contains_key("billing") && c.per_label.contains_key("shipping"));
    let j = serde_json::to_value(&c).unwrap();
    assert!(j["mcnemar"]["p_value"].is_number());
    assert!(j["bootstrap"]["pass_rate_diff"]["low"].is_number());
    // The newest run holding the group.
    assert_eq!(resolve_side(&s, "p@m").unwrap().run_id, "rb");
}
