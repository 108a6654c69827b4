//! Output formats: a terminal table, JSON, JSONL, CSV and JUnit XML.

use anyhow::Result;
pub use crate::args::Format;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use tunegate_run::{RunOutcome, RunSummary};
use tunegate_store::{ResultRow, RunInfo, Store};


fn sink(out: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn cost_text(c: Option<f64>) -> String {
    match c {
        None => "n/a".into(),
        Some(c) if c == 0.0 => "$0".into(),
        Some(c) if c < 0.01 => format!("${c:.5}"),
        Some(c) => format!("${c:.2}"),
    }
}

pub use tunegate_core::report::table;

pub fn summary_table(s: &RunSummary) -> String {
    let rows: Vec<Vec<String>> = s
        .groups
        .iter()
        .map(|g| {
            vec![
                g.prompt.clone(),
                g.provider.clone(),
                format!("{}/{}", g.passed, g.passed + g.failed),
                pct(g.pass_rate),
                format!("{}–{}", pct(g.ci95.0), pct(g.ci95.1)),
                format!("{:.3}", g.mean_score),
                g.classification.as_ref().map(|c| format!("{:.3}", c.macro_f1)).unwrap_or_else(|| "-".into()),
                g.errors.to_string(),
                format!("{:.0}/{:.0}", g.prompt_tokens_mean, g.completion_tokens_mean),
                cost_text(g.cost_usd),
                format!("{:.0}/{:.0}", g.latency_p50_ms, g.latency_p95_ms),
            ]
        })
        .collect();
    table(&["prompt", "provider", "passed", "pass rate", "95% CI", "score", "macro-F1", "errors", "tokens in/out", "cost", "p50/p95 ms"], &rows)
}

pub fn write_eval(store: &Store, s: &RunSummary, o: &RunOutcome, format: Format, out: Option<&Path>, baseline: &[tunegate_run::compare::Comparison]) -> Result<()> {
    let mut w = sink(out)?;
    match format {
        Format::Text | Format::Md => {
            write!(w, "{}", summary_table(s))?;
            let hit_pct = if o.completed == 0 { 0.0 } else { o.cache_hits as f64 / o.completed as f64 };
            writeln!(
                w,
                "\nrun {} · {} results ({} passed, {} failed, {} errors) · cache hits {}/{} ({}) · provider calls {} · retries {} · {:.1}s",
                s.run_id,
                s.total,
                s.passed,
                s.failed,
                s.errors,
                o.cache_hits,
                o.completed,
                pct(hit_pct),
                o.provider_calls,
                o.retries,
                o.wall_s
            )?;
            if o.skipped > 0 {
                writeln!(w, "resumed: {} results were already stored and were not recomputed", o.skipped)?;
            }
            let graded: Vec<&tunegate_run::summary::GraderUsage> = s.groups.iter().filter_map(|g| g.graders.as_ref()).collect();
            if !graded.is_empty() {
                let cost: Option<f64> = graded.iter().map(|g| g.cost_usd).sum();
                writeln!(
                    w,
                    "graders: {} grades ({} from the cache) · grader calls {} · grader cost {}",
                    graded.iter().map(|g| g.grades).sum::<u64>(),
                    graded.iter().map(|g| g.cached).sum::<u64>(),
                    o.grader_calls,
                    cost_text(cost)
                )?;
            }
            if s.failed + s.errors > 0 {
                writeln!(w, "see the failures: tunegate show {} --failed", s.run_id)?;
            }
            for c in baseline {
                writeln!(
                    w,
                    "vs baseline {}: {} -> {} · {} improvements, {} regressions · McNemar p = {} · {}",
                    c.a.label(),
                    pct(c.pass_rate_a),
                    pct(c.pass_rate_b),
                    c.mcnemar.improvements,
                    c.mcnemar.regressions,
                    tunegate_run::compare::fmt_p(c.mcnemar.p_value),
                    c.verdict
                )?;
            }
        }
        Format::Json => {
            let mut results = vec![];
            store.for_each_result(&s.run_id, true, |r| results.push(r))?;
            let v = json!({"run_id": s.run_id, "outcome": o, "summary": s, "baseline": baseline, "results": results});
            serde_json::to_writer_pretty(&mut w, &v)?;
            writeln!(w)?;
        }
        Format::Jsonl => write_rows_jsonl(store, &s.run_id, &mut w)?,
        Format::Csv => write_rows_csv(store, &s.run_id, &mut w)?,
        Format::Junit => write_junit(store, s, baseline, &mut w)?,
        Format::Html => w.write_all(crate::html::eval_report(store, s, baseline)?.as_bytes())?,
    }
    w.flush()?;
    Ok(())
}

fn write_rows_jsonl(store: &Store, run_id: &str, w: &mut dyn Write) -> Result<()> {
    let mut err = None;
    store.for_each_result(run_id, true, |r| {
        if err.is_none() {
            if let Err(e) = serde_json::to_writer(&mut *w, &r).map_err(anyhow::Error::from).and_then(|_| writeln!(w).map_err(Into::into)) {
                err = Some(e);
            }
        }
    })?;
    err.map_or(Ok(()), Err)
}

fn write_rows_csv(store: &Store, run_id: &str, w: &mut dyn Write) -> Result<()> {
    let mut cw = csv::Writer::from_writer(w);
    cw.write_record(["run_id", "prompt", "provider", "case_id", "line", "repeat", "input", "expected", "output", "pass", "score", "error", "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd", "cached", "reasons"])?;
    let mut err = None;
    store.for_each_result(run_id, false, |r| {
        let rec = vec![
            r.run_id.clone(),
            r.prompt_id.clone(),
            r.provider.clone(),
            r.case_id.clone(),
            r.case_line.to_string(),
            r.repeat.to_string(),
            r.input.clone(),
            r.expected.as_ref().map(tunegate_core::dataset::value_text).unwrap_or_default(),
            r.output.clone().unwrap_or_default(),
            r.pass.map(|p| p.to_string()).unwrap_or_default(),
            r.score.map(|s| s.to_string()).unwrap_or_default(),
            r.error.clone().unwrap_or_default(),
            format!("{:.1}", r.latency_ms),
            r.prompt_tokens.map(|x| x.to_string()).unwrap_or_default(),
            r.completion_tokens.map(|x| x.to_string()).unwrap_or_default(),
            r.cost_usd.map(|x| x.to_string()).unwrap_or_default(),
            r.cached.to_string(),
            reasons(&r),
        ];
        if err.is_none() {
            if let Err(e) = cw.write_record(&rec) {
                err = Some(e);
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    cw.flush()?;
    Ok(())
}

fn reasons(r: &ResultRow) -> String {
    r.assertions
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x.get("pass").and_then(|p| p.as_bool()) == Some(false))
                .filter_map(|x| x.get("reason").and_then(|p| p.as_str()).map(|s| s.to_string()))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn write_junit(store: &Store, s: &RunSummary, baseline: &[tunegate_run::compare::Comparison], w: &mut dyn Write) -> Result<()> {
    writeln!(w, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(w, r#"<testsuites name="tunegate {}" tests="{}" failures="{}" errors="{}">"#, xml(&s.run_id), s.total, s.failed, s.errors)?;
    let mut buf: std::collections::BTreeMap<(String, String), Vec<ResultRow>> = Default::default();
    store.for_each_result(&s.run_id, false, |r| buf.entry((r.prompt_id.clone(), r.provider.clone())).or_default().push(r))?;
    for g in &s.groups {
        let rows = buf.remove(&(g.prompt.clone(), g.provider.clone())).unwrap_or_default();
        writeln!(w, r#"  <testsuite name="{}@{}" tests="{}" failures="{}" errors="{}">"#, xml(&g.prompt), xml(&g.provider), g.n, g.failed, g.errors)?;
        for r in rows {
            let name = format!("{} (line {}){}", r.case_id, r.case_line, if r.repeat > 0 { format!(" repeat {}", r.repeat) } else { String::new() });
            write!(w, r#"    <testcase classname="{}@{}" name="{}" time="{:.3}""#, xml(&g.prompt), xml(&g.provider), xml(&name), r.latency_ms / 1000.0)?;
            if let Some(e) = &r.error {
                writeln!(w, ">\n      <error type=\"{}\" message=\"{}\"/>\n    </testcase>", xml(r.error_kind.as_deref().unwrap_or("error")), xml(e))?;
            } else if r.pass == Some(false) {
                writeln!(
                    w,
                    ">\n      <failure message=\"{}\">input: {}\nexpected: {}\noutput: {}</failure>\n    </testcase>",
                    xml(&reasons(&r)),
                    xml(&r.input),
                    xml(&r.expected.as_ref().map(tunegate_core::dataset::value_text).unwrap_or_default()),
                    xml(r.output.as_deref().unwrap_or(""))
                )?;
            } else {
                writeln!(w, "/>")?;
            }
        }
        writeln!(w, "  </testsuite>")?;
    }
    // The baseline gate: each regression (passed in the baseline, fails now) is a failure.
    for c in baseline {
        let name = format!("baseline {} vs {}", c.a.label(), c.b.label());
        writeln!(w, r#"  <testsuite name="{}" tests="{}" failures="{}">"#, xml(&name), c.paired, c.mcnemar.regressions)?;
        writeln!(w, r#"    <testcase classname="baseline" name="{}"{}"#, xml(&c.verdict), if c.better == Some(false) { ">" } else { "/>" })?;
        if c.better == Some(false) {
            writeln!(w, "      <failure message=\"{}\"/>\n    </testcase>", xml(&c.verdict))?;
        }
        for r in &c.regressions {
            writeln!(
                w,
                "    <testcase classname=\"regression\" name=\"{} (line {})\">\n      <failure message=\"passed in the baseline, fails now\">input: {}\nexpected: {}\nbaseline: {}\nnow: {}</failure>\n    </testcase>",
                xml(&r.case_id),
                r.line,
                xml(&r.input),
                xml(r.expected.as_deref().unwrap_or("")),
                xml(r.output_a.as_deref().unwrap_or("")),
                xml(r.output_b.as_deref().unwrap_or(""))
            )?;
        }
        writeln!(w, "  </testsuite>")?;
    }
    writeln!(w, "</testsuites>")?;
    Ok(())
}

pub fn write_runs(store: &Store, runs: &[RunInfo], format: Format) -> Result<()> {
    let mut w = sink(None)?;
    match format {
        Format::Json | Format::Jsonl => {
            let v: Vec<Value> = runs
                .iter()
                .map(|r| {
                    let n = store.count_results(&r.id).unwrap_or(0);
                    json!({"run": r, "results": n})
                })
                .collect();
            serde_json::to_writer_pretty(&mut w, &v)?;
            writeln!(w)?;
        }
        _ => {
            if runs.is_empty() {
                writeln!(w, "no runs yet")?;
            }
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    let s = tunegate_run::summarize(store, &r.id).ok();
                    let (p, f, e) = s.as_ref().map(|s| (s.passed, s.failed, s.errors)).unwrap_or_default();
                    vec![
                        r.id.clone(),
                        r.created_at.replace('T', " ").chars().take(19).collect(),
                        r.kind.clone(),
                        r.status.clone(),
                        format!("{}/{}", p + f + e, r.planned),
                        if p + f > 0 { pct(p as f64 / (p + f) as f64) } else { "-".into() },
                        e.to_string(),
                        r.task_name.clone(),
                    ]
                })
                .collect();
            write!(w, "{}", table(&["run", "created (UTC)", "kind", "status", "results", "pass rate", "errors", "task"], &rows))?;
        }
    }
    w.flush()?;
    Ok(())
}

pub fn write_show(store: &Store, s: &RunSummary, failed_only: bool, limit: usize, format: Format, out: Option<&Path>) -> Result<()> {
    let mut w = sink(out)?;
    if format != Format::Text {
        let o = RunOutcome { run_id: s.run_id.clone(), planned: s.run.planned, ..Default::default() };
        drop(w);
        return write_eval(store, s, &o, format, out, &[]);
    }
    writeln!(w, "run {} · {} · {} · task {} · status {}", s.run_id, s.run.created_at, s.run.kind, s.run.task_name, s.run.status)?;
    write!(w, "\n{}", summary_table(s))?;
    for g in &s.groups {
        if let Some(c) = &g.classification {
            writeln!(w, "\n{}@{}: accuracy {} · macro-F1 {:.3} · outside the label set {}", g.prompt, g.provider, pct(c.accuracy), c.macro_f1, c.outside_label_set)?;
            let mut cols: Vec<String> = c.per_label.keys().cloned().collect();
            if c.outside_label_set > 0 {
                cols.push(tunegate_core::stats::OTHER.into());
            }
            let mut header = vec!["expected \\ predicted".to_string()];
            header.extend(cols.iter().cloned());
            header.extend(["precision", "recall", "F1"].iter().map(|s| s.to_string()));
            let rows: Vec<Vec<String>> = c
                .per_label
                .iter()
                .map(|(l, m)| {
                    let mut r = vec![l.clone()];
                    for col in &cols {
                        r.push(c.confusion.get(l).and_then(|x| x.get(col)).copied().unwrap_or(0).to_string());
                    }
                    r.extend([format!("{:.2}", m.precision), format!("{:.2}", m.recall), format!("{:.2}", m.f1)]);
                    r
                })
                .collect();
            let h: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
            write!(w, "{}", table(&h, &rows))?;
        }
        if !g.fields.is_empty() {
            writeln!(w, "\n{}@{}: per-field", g.prompt, g.provider)?;
            let rows: Vec<Vec<String>> = g.fields.iter().map(|(f, m)| vec![f.clone(), format!("{:.2}", m.precision), format!("{:.2}", m.recall), format!("{:.2}", m.f1)]).collect();
            write!(w, "{}", table(&["field", "precision", "recall", "F1"], &rows))?;
        }
    }
    // Failures first: errors, then failed cases, then passes.
    let mut rows: Vec<ResultRow> = vec![];
    store.for_each_result(&s.run_id, false, |r| {
        if !failed_only || r.pass != Some(true) {
            rows.push(r)
        }
    })?;
    rows.sort_by_key(|r| match (r.error.is_some(), r.pass) {
        (true, _) => 0,
        (false, Some(false)) => 1,
        _ => 2,
    });
    writeln!(w, "\n{} case{}{}:", rows.len(), if rows.len() == 1 { "" } else { "s" }, if failed_only { " failed or errored" } else { "" })?;
    for r in rows.iter().take(limit) {
        let mark = match (r.error.is_some(), r.pass) {
            (true, _) => "ERR ",
            (false, Some(true)) => "pass",
            _ => "FAIL",
        };
        let clip = |s: &str| -> String {
            let one = s.replace('\n', "⏎");
            if one.chars().count() > 100 {
                format!("{}…", one.chars().take(100).collect::<String>())
            } else {
                one
            }
        };
        writeln!(w, "{mark} {}@{} case {} (line {}){}", r.prompt_id, r.provider, r.case_id, r.case_line, if r.repeat > 0 { format!(" repeat {}", r.repeat) } else { String::new() })?;
        writeln!(w, "     input:    {}", clip(&r.input))?;
        if let Some(e) = &r.expected {
            writeln!(w, "     expected: {}", clip(&tunegate_core::dataset::value_text(e)))?;
        }
        match &r.error {
            Some(e) => writeln!(w, "     error:    {}", clip(e))?,
            None => {
                writeln!(w, "     output:   {}", clip(r.output.as_deref().unwrap_or("")))?;
                let why = reasons(r);
                if !why.is_empty() {
                    writeln!(w, "     why:      {}", clip(&why))?;
                }
            }
        }
    }
    if rows.len() > limit {
        writeln!(w, "… {} more (use --limit, or --format jsonl)", rows.len() - limit)?;
    }
    w.flush()?;
    Ok(())
}
