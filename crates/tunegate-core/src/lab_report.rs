//! The prompt lab's reports as text: the parts of a prompt and the smallest
//! one that still works (`prompt minimize`), the few-shot learning curve
//! (`prompt sweep`), the fragility table (`prompt vary`), and the pieces
//! every lab report prints (rates with intervals, paired differences).

use crate::advise::{pct, pts};
use crate::lab::*;

pub fn ci(r: &RateCi) -> String {
    format!("{} ({}–{})", pct(r.rate), pct(r.low), pct(r.high))
}

pub fn delta_text(d: &Delta) -> String {
    if d.regressions + d.improvements == 0 {
        return "0.0 pts (same verdicts)".into();
    }
    format!("{} ({} to {})", signed(d.delta), signed(d.low), signed(d.high))
}

pub fn signed(x: f64) -> String {
    let v = x * 100.0;
    if v.abs() < 0.05 {
        "0.0 pts".into()
    } else {
        format!("{v:+.1} pts")
    }
}

pub fn p(x: f64) -> String {
    crate::paired::fmt_p(x)
}

pub fn clip(s: &str, n: usize) -> String {
    let s = s.replace('\n', " / ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

impl SweepReport {
    /// The learning curve as a table, then what its shape means.
    pub fn text(&self) -> String {
        let r = self;
        let mut o = String::new();
        o.push_str(&format!(
            "prompt sweep: `{}` on {}, {} cases; examples drawn {} from {} in data.examples (run {})\n\n",
            r.prompt, r.provider, r.cases, r.strategy, r.examples_available, r.run_id
        ));
        o.push_str(&format!("{:>4}  {:<24} {:<26} {:>7}  {:>10}  {}\n", "k", "pass rate (95% CI)", "per draw", "tokens", "$/call", "step"));
        for pt in &r.points {
            let k = if pt.shown != pt.k { format!("{}*", pt.shown) } else { pt.k.to_string() };
            let seeds: Vec<String> = pt.per_seed.iter().map(|x| pct(x.rate)).collect();
            let bar = "#".repeat((pt.pooled.mean * 30.0).round() as usize);
            o.push_str(&format!(
                "{:>4}  {:<24} {:<26} {:>7.0}  {:>10}  {:<24} {bar}\n",
                k,
                format!("{} ({}–{})", pct(pt.pooled.mean), pct(pt.pooled.low), pct(pt.pooled.high)),
                seeds.join(" "),
                pt.prompt_tokens,
                pt.cost_per_call_usd.map(|c| format!("${c:.6}")).unwrap_or_else(|| "-".into()),
                match (pt.step_gain, pt.step_p) {
                    (Some(g), Some(pv)) => format!("{} (p {})", signed(g), p(pv)),
                    _ => String::new(),
                }
            ));
        }
        if r.points.iter().any(|p| p.shown != p.k) {
            o.push_str(&format!("  * capped: only {} examples are available\n", r.examples_available));
        }
        if let Some(why) = &r.stopped {
            o.push_str(&format!("  {why}\n"));
        }
        let first = r.points.first().map(|p| p.shown).unwrap_or(0);
        let meaning = match r.shape {
            CurveShape::Rising => "still rising at the largest k: the behaviour is learnable from examples, so more examples (or tuning on them) may pay",
            CurveShape::Plateau => "examples help, then level off: more examples in the prompt will not add much",
            CurveShape::Flat => "no significant gain from examples: examples are not the lever for this prompt and model",
            CurveShape::Falling => "more examples hurt past the best point (long context, distraction)",
        };
        o.push_str(&format!(
            "\ncurve: {} — best point {} over k={first} (p {}, alpha {}): {meaning}\n",
            r.shape.as_str(),
            signed(r.gain),
            p(r.gain_p),
            r.alpha
        ));
        o
    }
}

impl VaryReport {
    /// Every variant's pass rate, the spread, and the cases that flip.
    pub fn text(&self) -> String {
        let r = self;
        let mut o = String::new();
        o.push_str(&format!(
            "prompt vary: `{}` on {}, {} cases, {} variants (run {})\n\n",
            r.prompt,
            r.provider,
            r.cases,
            r.variants.len(),
            r.run_id
        ));
        o.push_str(&format!("{:<34} {:<15} {:<24} {}\n", "variant", "family", "pass rate (95% CI)", "change"));
        for v in &r.variants {
            o.push_str(&format!("{:<34} {:<15} {:<24} {}\n", clip(&v.id, 34), v.family, ci(&v.rate), clip(&v.description, 70)));
        }
        o.push_str(&format!(
            "\nspread: {}–{} (range {}, sd {}); mean over variants {} ({}–{}, cases as clusters)\n",
            pct(r.min),
            pct(r.max),
            pts(r.range),
            pts(r.sd),
            pct(r.pooled.mean),
            pct(r.pooled.low),
            pct(r.pooled.high)
        ));
        let mut fams = r.family_range.clone();
        fams.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        if !fams.is_empty() {
            o.push_str(&format!(
                "range by family (with the original): {}\n",
                fams.iter().map(|(f, x)| format!("{f} {}", pts(*x))).collect::<Vec<_>>().join(", ")
            ));
        }
        o.push_str(&format!("{} of {} cases flip between variants", r.flipping_cases, r.cases));
        if r.flips.is_empty() {
            o.push_str(": the verdicts do not depend on the variations\n");
        } else {
            o.push_str(":\n");
            for f in r.flips.iter().take(15) {
                o.push_str(&format!(
                    "  {:<14} passes {}/{}; fails with {}\n",
                    f.case_id,
                    f.passes.len(),
                    f.passes.len() + f.fails.len(),
                    clip(&f.fails.join(", "), 80)
                ));
            }
            if r.flips.len() > 15 {
                o.push_str(&format!("  … {} more (--format json lists all)\n", r.flips.len() - 15));
            }
        }
        o
    }
}

/// `prompt minimize`'s report: the parts with what dropping each costs, the
/// greedy search's steps, and the smallest prompt not significantly worse.
/// `path` is the task file (for the `--write` hint); `price_note` says why
/// there is no cost when there is none.
pub fn minimize_text(r: &MinimizeReport, path: &std::path::Path, price_note: &str) -> String {
    let mut o = String::new();
    o.push_str(&format!("prompt minimize: `{}` on {}, {} cases (run {})\n", r.prompt, r.provider, r.cases, r.run_id));
    o.push_str(&format!("full prompt: {}, {:.0} tokens per call ({})\n\n", ci(&r.full), r.full_tokens, r.tokenizer));
    o.push_str(&format!("{:<5} {:<12} {:>6}  {:<10} {:<34} {:>9}  {}\n", "part", "kind", "tokens", "without it", "change (95% CI)", "p(worse)", "text"));
    for pr in &r.parts {
        o.push_str(&format!(
            "{:<5} {:<12} {:>6.0}  {:<10} {:<34} {:>9}  {}{}\n",
            pr.part.id,
            pr.part.kind.as_str(),
            pr.tokens,
            pct(pr.without.rate),
            delta_text(&pr.without),
            p(pr.without.p_worse),
            if pr.matters { "MATTERS  " } else { "" },
            clip(&pr.part.text, 60)
        ));
    }
    o.push_str(&format!(
        "\ngreedy search: drop parts, least harmful first, while the prompt stays not significantly worse than the full one (one-sided exact McNemar, alpha {}{})\n",
        r.alpha,
        r.max_drop.map(|m| format!(", and at most {} lost", pts(m))).unwrap_or_default()
    ));
    for st in &r.steps {
        o.push_str(&format!(
            "  drop {:<4} -> {:>6} vs full {:<34} p(worse) {:<8} {}\n",
            st.tried,
            pct(st.against_full.rate),
            delta_text(&st.against_full),
            p(st.against_full.p_worse),
            if st.accepted { "dropped" } else { "kept (significantly worse)" }
        ));
    }
    if let Some(why) = &r.stopped {
        o.push_str(&format!("  {why}\n"));
    }
    o.push('\n');
    if r.best_dropped.is_empty() {
        o.push_str("No part can be dropped without a significant loss: the full prompt is already the smallest that works on this evidence.\n");
    } else {
        let d = r.best_against_full.as_ref();
        o.push_str(&format!(
            "Smallest prompt not significantly worse: `{}`\n  {:.0} tokens instead of {:.0} ({} shorter); pass rate {} vs {}: {}, p(worse) = {}\n",
            r.best_variant,
            r.best_tokens,
            r.full_tokens,
            pct(r.token_saving),
            ci(&r.best),
            pct(r.full.rate),
            d.map(delta_text).unwrap_or_default(),
            d.map(|d| p(d.p_worse)).unwrap_or_default()
        ));
        o.push_str(&format!("  keeps: {}\n", r.parts.iter().filter(|p| !r.best_dropped.contains(&p.part.id)).map(|p| p.part.id.as_str()).collect::<Vec<_>>().join(", ")));
        if r.token_saving < 0.3 {
            o.push_str(&format!("  Less than 30% shorter: the parts that matter are most of the prompt ({}).\n", pct(1.0 - r.token_saving)));
        }
        match (r.monthly_saving_usd, r.calls_per_month) {
            (Some(u), Some(c)) => o.push_str(&format!("  saves {} per month at {} calls/month\n", crate::advise::usd(u), crate::advise::int(c as f64))),
            (None, Some(c)) => o.push_str(&format!("  {:.0} tokens x {} calls/month = {} fewer prompt tokens a month; no cost: {}\n", r.full_tokens - r.best_tokens, crate::advise::int(c as f64), crate::advise::int((r.full_tokens - r.best_tokens) * c as f64), price_note)),
            (_, None) => o.push_str("  set usage.calls_per_month in the task file for the monthly saving\n"),
        }
        o.push_str("\n--- the smallest prompt ---\n");
        if let Some(sys) = &r.best_system {
            o.push_str(&format!("[system]\n{sys}\n[user]\n"));
        }
        o.push_str(&r.best_template);
        o.push_str("\n---\n");
        match &r.written_as {
            Some(id) => o.push_str(&format!("Written to {} as prompt `{id}`.\n", path.display())),
            None => o.push_str(&format!("Add it to the task file: tunegate prompt minimize -c {} --prompt {} --write {}-min\n", path.display(), r.prompt, r.prompt)),
        }
    }
    o
}
