//! The advisor's report as text (for the terminal) and Markdown (for a pull
//! request or a wiki): the verdict, the decision table with its evidence,
//! and every section of [`Advice`]. Pure formatting of what the rules found.

use crate::advise::{self, Advice};
use std::path::Path;


const WIDTH: usize = 100;

/// Greedy word wrap; every line starts with `indent` (the first with `first`).
fn wrap(s: &str, first: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for w in s.split_whitespace() {
        if !empty && line.chars().count() + 1 + w.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(w);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

fn side(s: advise::Side) -> &'static str {
    match s {
        advise::Side::Prompting => "prompting",
        advise::Side::Tuning => "tuning",
        advise::Side::Retrieval => "retrieval",
        advise::Side::Neutral => "neutral",
        advise::Side::Unknown => "unknown",
    }
}

fn conf(c: advise::Confidence) -> &'static str {
    match c {
        advise::Confidence::High => "high",
        advise::Confidence::Medium => "medium",
        advise::Confidence::Low => "low",
        advise::Confidence::None => "-",
    }
}

fn ci(c: (f64, f64)) -> String {
    format!("{}–{}", advise::pct(c.0), advise::pct(c.1))
}

pub fn text(a: &Advice, path: &Path) -> String {
    use advise::{int, pct, pts, usd};
    let mut s = String::new();
    let run = a.run_id.as_deref().map(|r| format!("run {r}")).unwrap_or_else(|| "no run yet".into());
    s.push_str(&format!("tunegate advise: {} ({}, {run})\n\n", a.task, path.display()));
    s.push_str(&format!("VERDICT: {}\n", a.verdict.as_str()));
    s.push_str(&wrap(&a.summary, "  ", "  "));
    if let Some(k) = &a.keep_prompt {
        s.push_str(&wrap(&format!("Keep prompt `{k}` on top of the tuned model: the shortest one that still states the task."), "  ", "  "));
    }
    if !a.reasons.is_empty() {
        s.push_str("\nWhy\n");
        for r in &a.reasons {
            s.push_str(&wrap(r, "  - ", "    "));
        }
    }
    s.push_str("\nNext steps\n");
    for (i, st) in a.next_steps.iter().enumerate() {
        s.push_str(&wrap(&st.text, &format!("  {}. ", i + 1), "     "));
        if let Some(c) = &st.command {
            s.push_str(&format!("     $ {c}\n"));
        }
    }
    s.push_str("\nDecision table (DESIGN.md)\n");
    for r in &a.table {
        let head = format!("  {:<14}{:<10} {:<7}", r.row, side(r.points_to), conf(r.confidence));
        let pad = " ".repeat(head.chars().count() + 1);
        s.push_str(&wrap(&r.evidence, &format!("{head} "), &pad));
    }
    if !a.anatomy.is_empty() {
        let est = a.anatomy.first().map(|x| if x.estimate && !x.tokenizer.contains("estimate") { format!(" — {} (estimate)", x.tokenizer) } else { format!(" — {}", x.tokenizer) }).unwrap_or_default();
        s.push_str(&format!("\nPrompt anatomy, tokens per call{est}\n"));
        let rows: Vec<Vec<String>> = a
            .anatomy
            .iter()
            .map(|x| vec![x.prompt.clone(), int(x.total as f64), int(x.instructions as f64), int(x.few_shot as f64), int(x.reference_facts as f64), int(x.input as f64)])
            .collect();
        s.push_str(&indent(&crate::report::table(&["prompt", "total", "instructions", "few-shot", "ref. facts", "input"], &rows)));
        for x in &a.anatomy {
            for b in &x.facts_blocks {
                s.push_str(&wrap(&format!("`{}`: reference facts \"{}\" — {} lines, {} tokens", x.prompt, b.preview, b.lines, int(b.tokens as f64)), "  ", "    "));
            }
        }
    }
    s.push_str("\nCost");
    match a.cost.calls_per_month {
        Some(c) => s.push_str(&format!(" at {} calls/month\n", int(c as f64))),
        None => s.push('\n'),
    }
    if a.cost.lines.iter().any(|l| l.monthly_usd.is_some()) {
        let rows: Vec<Vec<String>> = a
            .cost
            .lines
            .iter()
            .map(|l| vec![format!("{}@{}", l.prompt, l.provider), int(l.prompt_tokens), int(l.completion_tokens), l.monthly_usd.map(usd).unwrap_or_else(|| "no price".into())])
            .collect();
        s.push_str(&indent(&crate::report::table(&["prompt@provider", "in tok", "out tok", "per month"], &rows)));
    }
    if let Some(t) = &a.cost.tuned {
        let be = t.break_even_months.map(|m| format!("break-even after {m:.1} months")).unwrap_or_else(|| "no monthly saving, no break-even".into());
        s.push_str(&wrap(
            &format!(
                "Tuned {} with prompt `{}` ({} tokens): {}/month vs {} now; training {} once ({} tokens); {be}",
                t.provider,
                t.prompt,
                int(t.prompt_tokens),
                usd(t.monthly_usd),
                usd(t.current_monthly_usd),
                usd(t.training_usd),
                int(t.training_tokens)
            ),
            "  ",
            "  ",
        ));
    }
    if let Some(h) = &a.cost.self_hosted {
        s.push_str(&wrap(&self_hosted_line(h), "  ", "  "));
    }
    for n in &a.cost.notes {
        s.push_str(&wrap(n, "  - ", "    "));
    }
    if let Some(t) = a.tuning.describe() {
        s.push_str("\nTuning\n");
        s.push_str(&wrap(&t, "  ", "  "));
    }
    let f = &a.fragility;
    if !f.groups.is_empty() {
        s.push_str("\nPass rates and fragility\n");
        let rows: Vec<Vec<String>> = f
            .groups
            .iter()
            .map(|g| {
                vec![
                    format!("{}@{}", g.prompt, g.provider),
                    format!("{}/{}", g.passed, g.n - g.errors),
                    pct(g.pass_rate),
                    ci(g.ci95),
                    if g.repeat_rates.len() > 1 { g.repeat_rates.iter().map(|r| pct(*r)).collect::<Vec<_>>().join(" ") } else { "-".into() },
                    g.errors.to_string(),
                ]
            })
            .collect();
        s.push_str(&indent(&crate::report::table(&["prompt@provider", "passed", "rate", "95% interval", "per repeat", "errors"], &rows)));
        let mut parts = vec![];
        parts.push(format!("spread across variants {}", f.variant_spread.map(pts).unwrap_or_else(|| "not measured (one variant)".into())));
        parts.push(format!("across repeats {}", f.repeat_spread.map(pts).unwrap_or_else(|| "not measured (run with --repeat 3)".into())));
        if let Some(fl) = f.flip_rate {
            parts.push(format!("{} of the best group's cases flip between repeats", pct(fl)));
        }
        s.push_str(&wrap(&parts.join("; "), "  ", "  "));
        if !f.slices.is_empty() {
            let sl: Vec<String> = f.slices.iter().map(|r| format!("{} {} (n={})", r.name, pct(r.pass_rate), r.n)).collect();
            s.push_str(&wrap(&format!("slices of the best group by tag: {}", sl.join(", ")), "  ", "  "));
        }
        for w in &f.weak_slices {
            s.push_str(&wrap(&format!("weak slice {w}"), "  ! ", "    "));
        }
    }
    if let Some(t) = &a.failures {
        s.push_str(&format!("\nFailures of the best run ({}@{})\n", t.prompt, t.provider));
        let kinds = if t.format_kinds.is_empty() { String::new() } else { format!(" ({})", t.format_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")) };
        s.push_str(&wrap(
            &format!(
                "{} failures of {} scored: format/contract {}{kinds}, content {}, missing knowledge {}, refusals {}; provider errors {} (not counted against the model)",
                t.failures, t.scored, t.format, t.content, t.missing_knowledge, t.refusals, t.provider_errors
            ),
            "  ",
            "  ",
        ));
    }
    let r = &a.readiness;
    s.push_str("\nReadiness\n");
    s.push_str(&wrap(
        &format!(
            "{} clean examples of {} (after removing {} duplicates, {} conflict groups, {} leaking, {} contract breaks); OpenAI's minimum is {}, {}-100 typical",
            r.clean_examples,
            r.examples_cases,
            r.removed.get("duplicates").unwrap_or(&0),
            r.removed.get("conflict_groups").unwrap_or(&0),
            r.removed.get("leaked_eval_cases").unwrap_or(&0),
            r.removed.get("contract_breaks").unwrap_or(&0),
            r.min_examples,
            r.typical_examples
        ),
        "  ",
        "  ",
    ));
    if !r.clean_per_label.is_empty() {
        s.push_str(&wrap(&format!("per label: {}", r.clean_per_label.iter().map(|l| format!("{} {}", l.label, l.count)).collect::<Vec<_>>().join(", ")), "  ", "  "));
    }
    s.push_str(&wrap(&format!("eval set: {} cases, 95% interval ±{}", r.eval_cases, pts(r.eval_ci_half_width)), "  ", "  "));
    let c = &a.churn;
    s.push_str("\nChurn\n");
    let age = match c.days_since_contract_change {
        Some(d) if c.at_least => format!("contract unchanged since the first record, {d:.0} days ago"),
        Some(d) => format!("contract last changed {d:.0} days ago"),
        None => "contract age not measured (no store revisions, no git history)".into(),
    };
    s.push_str(&wrap(
        &format!(
            "{age}; last 7/30 days: contract {}/{}, prompts {}/{}, expected outputs {}/{}{}",
            c.contract_changes_7d,
            c.contract_changes_30d,
            c.prompt_changes_7d,
            c.prompt_changes_30d,
            c.expected_changes_7d,
            c.expected_changes_30d,
            if c.sources.is_empty() { String::new() } else { format!(" ({})", c.sources.join("; ")) }
        ),
        "  ",
        "  ",
    ));
    if !a.notes.is_empty() {
        s.push_str("\nNot measured / notes\n");
        for n in &a.notes {
            s.push_str(&wrap(n, "  - ", "    "));
        }
    }
    let over: Vec<String> = a.thresholds.iter().filter(|t| t.overridden).map(|t| format!("{}={}", t.name, t.value)).collect();
    s.push('\n');
    s.push_str(&wrap(
        &format!(
            "Thresholds: README.md, \"The advisor\"; override under `advise:` in the task file{}.",
            if over.is_empty() { String::new() } else { format!(" (overridden here: {})", over.join(", ")) }
        ),
        "",
        "",
    ));
    s
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn markdown(a: &Advice, path: &Path) -> String {
    use advise::{int, pct, usd};
    let mut s = format!("# tunegate advise: {}\n\nTask file `{}`, {}.\n\n", a.task, path.display(), a.run_id.as_deref().map(|r| format!("run `{r}`")).unwrap_or_else(|| "no run yet".into()));
    s.push_str(&format!("## Verdict: `{}`\n\n{}\n\n", a.verdict.as_str(), a.summary));
    if let Some(k) = &a.keep_prompt {
        s.push_str(&format!("Keep prompt `{k}` on top of the tuned model.\n\n"));
    }
    for r in &a.reasons {
        s.push_str(&format!("- {r}\n"));
    }
    s.push_str("\n## Next steps\n\n");
    for (i, st) in a.next_steps.iter().enumerate() {
        s.push_str(&format!("{}. {}", i + 1, st.text));
        if let Some(c) = &st.command {
            s.push_str(&format!(": `{c}`"));
        }
        s.push('\n');
    }
    s.push_str("\n## Decision table\n\n| row | points to | confidence | evidence |\n|---|---|---|---|\n");
    for r in &a.table {
        s.push_str(&format!("| {} | {} | {} | {} |\n", r.row, side(r.points_to), conf(r.confidence), r.evidence.replace('|', "\\|")));
    }
    if !a.anatomy.is_empty() {
        s.push_str("\n## Prompt anatomy (tokens)\n\n| prompt | total | instructions | few-shot | reference facts | input |\n|---|---:|---:|---:|---:|---:|\n");
        for x in &a.anatomy {
            s.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", x.prompt, int(x.total as f64), int(x.instructions as f64), int(x.few_shot as f64), int(x.reference_facts as f64), int(x.input as f64)));
        }
    }
    if !a.cost.lines.is_empty() {
        s.push_str("\n## Cost per month\n\n| prompt@provider | in tok | out tok | per month |\n|---|---:|---:|---:|\n");
        for l in &a.cost.lines {
            s.push_str(&format!("| {}@{} | {} | {} | {} |\n", l.prompt, l.provider, int(l.prompt_tokens), int(l.completion_tokens), l.monthly_usd.map(usd).unwrap_or_else(|| "no price".into())));
        }
        if let Some(t) = &a.cost.tuned {
            s.push_str(&format!(
                "\nTuned `{}` with `{}`: {}/month vs {} now, training {}; break-even: {}.\n",
                t.provider,
                t.prompt,
                usd(t.monthly_usd),
                usd(t.current_monthly_usd),
                usd(t.training_usd),
                t.break_even_months.map(|m| format!("{m:.1} months")).unwrap_or_else(|| "none".into())
            ));
        }
        if let Some(h) = &a.cost.self_hosted {
            s.push_str(&format!("\n{}.\n", self_hosted_line(h)));
        }
        for n in &a.cost.notes {
            s.push_str(&format!("\n- {n}"));
        }
        if !a.cost.notes.is_empty() {
            s.push('\n');
        }
    }
    if let Some(t) = a.tuning.describe() {
        s.push_str(&format!("\n## Tuning\n\n{t}.\n"));
    }
    if !a.fragility.groups.is_empty() {
        s.push_str("\n## Pass rates\n\n| prompt@provider | rate | 95% interval |\n|---|---:|---|\n");
        for g in &a.fragility.groups {
            s.push_str(&format!("| {}@{} | {} | {} |\n", g.prompt, g.provider, pct(g.pass_rate), ci(g.ci95)));
        }
    }
    if !a.notes.is_empty() {
        s.push_str("\n## Not measured / notes\n\n");
        for n in &a.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

/// The self-hosted projection in one sentence.
fn self_hosted_line(h: &crate::advise::SelfHostedProjection) -> String {
    let vs = h.current_monthly_usd.map(|c| format!(" vs {} now", crate::advise::usd(c))).unwrap_or_default();
    format!(
        "Self-hosted: the tuned embedded model with prompt `{}` on your machines (`tunegate serve`, or vLLM with the PEFT adapter): {}/month{vs}, {:.0} busy machine-hours a month; {}",
        h.prompt,
        crate::advise::usd(h.monthly_usd),
        h.busy_hours,
        h.assumptions
    )
}
