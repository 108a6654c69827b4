//! The prompt lab's reports as text: the few-shot learning curve
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
