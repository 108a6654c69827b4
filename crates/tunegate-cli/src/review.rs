//! `tunegate review A B`: blind side-by-side review of two runs' outputs by
//! a person, one case at a time, over any terminal or a pipe. Every answer
//! is committed to the store before the next case is shown, so a session
//! that is quit or killed resumes where it stopped.

use crate::args::usage;
use crate::output::{pct, Format};
use crate::review_session::{clip_block, Reviewing, HELP};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use tunegate_core::review::{agreement, preference_stats, Choice, PreferenceStats, Tally, Verdict};
use tunegate_run::compare::{fmt_p, resolve_side, side_groups, Side};
use tunegate_run::judge::{latest_verdicts, paired_outputs, PairedOutput};
use tunegate_store::{ReviewRow, ReviewSession, Store};

#[derive(Args)]
pub struct ReviewArgs {
    /// Variant A: a run id, `latest`, `latest~N`, `RUN:prompt@provider` or `prompt@provider`.
    pub a: String,
    /// Variant B: same forms.
    pub b: String,
    #[command(flatten)]
    pub task: crate::args::TaskArgs,
    /// Print the summary of the reviews so far and exit.
    #[arg(long)]
    pub summary: bool,
    /// How often a judge's verdicts (`compare --judge`) agree with the reviews.
    #[arg(long)]
    pub agreement: bool,
    /// With --agreement: the judge to check (default: the latest one used).
    #[arg(long, value_name = "NAME")]
    pub judge: Option<String>,
    /// Who is reviewing (stored with each verdict); default $USER.
    #[arg(long)]
    pub reviewer: Option<String>,
    /// Seed of a new session's hidden order (default: random): for a
    /// reproducible session; the reviewer still cannot tell A from B.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Start a new session instead of resuming the latest for these two sides.
    #[arg(long)]
    pub new: bool,
    /// Significance level of the sign test.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Line by line on stdin/stdout instead of the side-by-side terminal UI
    /// (the default when stdin or stdout is not a terminal).
    #[arg(long)]
    pub no_tui: bool,
    #[arg(long, default_value = "text", value_parser = crate::args::formats(crate::args::REPORT_FORMATS))]
    pub format: Format,
}

/// A side narrowed to one prompt x provider group: a review compares two
/// variants, not two whole runs.
fn one_group(store: &Store, s: Side, sel: &str) -> Result<Side> {
    if s.prompt.is_some() {
        return Ok(s);
    }
    let g = side_groups(store, &s)?;
    match g.len() {
        1 => Ok(Side { prompt: Some(g[0].0.clone()), provider: Some(g[0].1.clone()), ..s }),
        0 => Err(usage(format!("{sel}: run {} has no results", s.run_id))),
        _ => Err(usage(format!(
            "{sel}: run {} holds {} prompt@provider groups; name one, e.g. {}:{}@{}",
            s.run_id,
            g.len(),
            s.run_id,
            g[0].0,
            g[0].1
        ))),
    }
}

pub fn run(a: ReviewArgs) -> Result<ExitCode> {
    if !(0.0 < a.alpha && a.alpha < 1.0) {
        return Err(usage("--alpha must be within (0, 1)"));
    }
    let store = a.task.store()?;
    let sa = one_group(&store, resolve_side(&store, &a.a)?, &a.a)?;
    let sb = one_group(&store, resolve_side(&store, &a.b)?, &a.b)?;
    let (la, lb) = (sa.label(), sb.label());
    if la == lb {
        return Err(usage(format!("both sides are {la}: review two different variants")));
    }
    if a.agreement {
        return agreement_report(&store, &la, &lb, a.judge.as_deref(), a.format);
    }
    let (pairs, unpaired) = paired_outputs(&store, &sa, &sb)?;
    if pairs.is_empty() {
        return Err(usage(format!("{la} and {lb} have no case with an output on both sides")));
    }
    let session = match store.review_session(&la, &lb)? {
        Some(s) if !a.new => s,
        _ => {
            if a.summary {
                return Err(usage(format!("no review session for {la} vs {lb} yet: run `tunegate review {} {}`", a.a, a.b)));
            }
            // The seed only hides the order; it need not be reproducible
            // across sessions, only within one (it is stored).
            let s = ReviewSession { id: format!("rev-{}", Store::new_run_id()), side_a: la.clone(), side_b: lb.clone(), seed: a.seed.unwrap_or_else(|| rand::random::<u64>()) >> 1, created_at: tunegate_store::now() };
            store.create_review_session(&s)?;
            s
        }
    };
    if !a.summary {
        let reviewer = a.reviewer.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
        use std::io::IsTerminal;
        if !a.no_tui && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            crate::review_tui::run(Reviewing::new(&store, &session, &pairs, &reviewer)?)?;
        } else {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            // With --format json, stdout carries only the JSON summary.
            let mut out: Box<dyn Write> = if matches!(a.format, Format::Json | Format::Jsonl) { Box::new(std::io::stderr().lock()) } else { Box::new(std::io::stdout().lock()) };
            interactive(&store, &session, &pairs, &reviewer, &mut input, &mut out)?;
        }
    }
    let reviews = store.reviews(&session.id)?;
    let stats = preference_stats(&Tally::from_verdicts(reviews.iter().filter_map(|r| Verdict::parse(&r.verdict)).collect::<Vec<_>>().iter()), a.alpha);
    match a.format {
        Format::Json | Format::Jsonl => {
            let v = json!({"session": session.id, "side_a": la, "side_b": lb, "cases": pairs.len(), "reviewed": reviews.len(), "unpaired": unpaired,
                           "stats": stats, "reviews": reviews});
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        _ => print!("{}", summary_text(&session, pairs.len(), unpaired, &reviews, &stats)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The line-oriented review loop: one case, one line of input. Reads until
/// every case is reviewed, `q`, or the end of the input.
pub fn interactive(store: &Store, session: &ReviewSession, pairs: &[PairedOutput], reviewer: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
    let mut r = Reviewing::new(store, session, pairs, reviewer)?;
    let total = pairs.len();
    writeln!(out, "Blind review: {} cases, {} already reviewed in session {}.\n{HELP}", total, total - r.remaining(), session.id)?;
    let mut line = String::new();
    while let Some(c) = r.current() {
        writeln!(out, "\n[{}/{}] case {} (line {})\nInput:\n{}\n── 1 ──\n{}\n── 2 ──\n{}", r.reviewed()? + 1, total, c.pair.case_id, c.pair.line, clip_block(&c.pair.input, 20), clip_block(c.first, 30), clip_block(c.second, 30))?;
        write!(out, "Which is better? [1/2/t/x, s, u, q] > ")?;
        out.flush()?;
        line.clear();
        if input.read_line(&mut line)? == 0 {
            writeln!(out, "\n(end of input: stopping; run the same command to resume)")?;
            break;
        }
        let t = line.trim();
        let (cmd, note) = match t.split_once(char::is_whitespace) {
            Some((c, n)) => (c, Some(n.trim().to_string()).filter(|n| !n.is_empty())),
            None => (t, None),
        };
        let choice = match cmd.to_ascii_lowercase().as_str() {
            "1" => Choice::First,
            "2" => Choice::Second,
            "t" | "tie" => Choice::Tie,
            "x" | "bad" => Choice::BothBad,
            "s" | "skip" => {
                r.skip();
                writeln!(out, "skipped (it comes back next session)")?;
                continue;
            }
            "u" | "undo" => {
                match r.undo()? {
                    Some(id) => writeln!(out, "undone: the answer for case {id} is removed")?,
                    None => writeln!(out, "nothing to undo")?,
                }
                continue;
            }
            "q" | "quit" => {
                writeln!(out, "stopped; run the same command to resume")?;
                break;
            }
            _ => {
                writeln!(out, "not understood: {t:?}. {HELP}")?;
                continue;
            }
        };
        r.answer(choice, note)?;
    }
    if r.remaining() == 0 {
        writeln!(out, "\nEvery case is reviewed.")?;
    }
    Ok(())
}

fn summary_text(session: &ReviewSession, cases: usize, unpaired: usize, reviews: &[ReviewRow], s: &PreferenceStats) -> String {
    let mut t = String::new();
    t.push_str(&format!("\nBlind review {}: A = {}, B = {}\n", session.id, session.side_a, session.side_b));
    t.push_str(&format!("Reviewed {} of {} paired cases", reviews.len(), cases));
    if unpaired > 0 {
        t.push_str(&format!(" ({unpaired} case(s) without an output on both sides left out)"));
    }
    t.push('\n');
    t.push_str(&format!("A wins {}, B wins {}, ties {}, both bad {}\n", s.a_wins, s.b_wins, s.ties, s.both_bad));
    match s.win_rate_b {
        Some(w) => t.push_str(&format!(
            "Win rate of B: {} of decisive verdicts (95% Wilson CI {}–{}); ties counted as half: {}\n",
            pct(w),
            pct(s.ci95.0),
            pct(s.ci95.1),
            s.win_rate_b_ties_half.map(pct).unwrap_or_default()
        )),
        None => t.push_str("Win rate of B: no decisive verdict yet\n"),
    }
    t.push_str(&format!("Sign test (exact, two-sided, ties dropped): p = {}\n", fmt_p(s.sign_test_p)));
    t.push_str(&format!("Verdict: {}\n", s.verdict));
    let notes: Vec<&ReviewRow> = reviews.iter().filter(|r| r.note.is_some()).collect();
    if !notes.is_empty() {
        t.push_str("Notes:\n");
        for r in notes {
            t.push_str(&format!("  {} ({}): {}\n", r.case_id, r.verdict, r.note.as_deref().unwrap_or("")));
        }
    }
    t
}

fn agreement_report(store: &Store, la: &str, lb: &str, judge: Option<&str>, format: Format) -> Result<ExitCode> {
    let Some(session) = store.review_session(la, lb)? else {
        return Err(usage(format!("no review of {la} vs {lb} yet: run `tunegate review` on them first")));
    };
    let verdicts = latest_verdicts(store, la, lb, judge)?;
    if verdicts.is_empty() {
        return Err(usage(format!("no judge verdict for {la} vs {lb}{}: run `tunegate compare A B --judge PROVIDER` first", judge.map(|j| format!(" from `{j}`")).unwrap_or_default())));
    }
    let judge_name = match judge {
        Some(j) => j.to_string(),
        None => store.judge_verdicts(la, lb)?.last().map(|r| r.judge.clone()).unwrap_or_default(),
    };
    let mut pairs = vec![];
    for r in store.reviews(&session.id)? {
        if let (Some(h), Some(j)) = (Verdict::parse(&r.verdict), verdicts.get(&r.case_id)) {
            pairs.push((h, *j));
        }
    }
    if pairs.is_empty() {
        return Err(usage(format!("no case has both a review and a verdict of `{judge_name}`")));
    }
    let g = agreement(&pairs);
    match format {
        Format::Json | Format::Jsonl => println!("{}", serde_json::to_string_pretty(&json!({"side_a": la, "side_b": lb, "judge": judge_name, "session": session.id, "agreement": g}))?),
        _ => {
            println!("Judge `{judge_name}` vs people on {la} vs {lb} (review session {})", session.id);
            println!(
                "Agreement: {} of {} pairs = {} (95% Wilson CI {}–{}); people's \"both bad\" counts as a tie",
                g.agree,
                g.n,
                g.rate.map(pct).unwrap_or_default(),
                pct(g.ci95.0),
                pct(g.ci95.1)
            );
            match g.decisive_rate {
                Some(r) => println!("Where people chose a side: {} of {} = {} (95% CI {}–{})", g.decisive_agree, g.decisive_n, pct(r), pct(g.decisive_ci95.0), pct(g.decisive_ci95.1)),
                None => println!("Where people chose a side: no such pair"),
            }
            match g.kappa {
                Some(k) => println!("Cohen's kappa: {k:.3} (agreement beyond chance: 1 perfect, 0 chance)"),
                None => println!("Cohen's kappa: undefined (a single category throughout)"),
            }
            let trust = match g.rate {
                Some(_) if g.n >= 30 && g.ci95.0 >= 0.8 => format!("the judge agrees with people at least 80% of the time (lower bound {}): usable in their place for this comparison", pct(g.ci95.0)),
                Some(_) if g.n < 30 => format!("only {} pairs: review more before trusting the judge", g.n),
                _ => "the judge cannot be shown to agree with people 80% of the time: keep people in the loop".to_string(),
            };
            println!("Reading: {trust}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
