//! Pairwise judging: a provider says which of two runs' outputs for the
//! same case is better, asked in both orders so that a judge that favours
//! a position cancels out (inconsistent verdicts count as ties). Verdicts
//! are stored, so `tunegate review --agreement` can hold them against what
//! people said about the same pairs.

use crate::compare::Side;
use crate::runner::{Caller, CallerStats};
use crate::RunError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tunegate_core::judge::{combine_orders, pairwise_messages, parse_pairwise};
use tunegate_core::review::{preference_stats, PreferenceStats, Tally, Verdict};
use tunegate_store::{JudgeVerdictRow, Store, StoreError};

/// One case both sides answered without an error.
#[derive(Debug, Clone, Serialize)]
pub struct PairedOutput {
    pub case_id: String,
    pub line: u64,
    pub input: String,
    pub expected: Option<String>,
    pub output_a: String,
    pub output_b: String,
}

/// The cases both sides answered (first repeat), in the order of A's eval
/// file, and how many cases could not be paired (missing on a side, or an
/// error on a side).
pub fn paired_outputs(store: &Store, a: &Side, b: &Side) -> Result<(Vec<PairedOutput>, usize), StoreError> {
    let collect = |s: &Side| -> Result<BTreeMap<String, tunegate_store::ResultRow>, StoreError> {
        let mut m = BTreeMap::new();
        store.for_each_result(&s.run_id, false, |r| {
            let in_group = s.prompt.as_ref().map(|p| p == &r.prompt_id).unwrap_or(true) && s.provider.as_ref().map(|p| p == &r.provider).unwrap_or(true);
            if in_group && r.repeat == 0 {
                m.insert(r.case_id.clone(), r);
            }
        })?;
        Ok(m)
    };
    let (ma, mb) = (collect(a)?, collect(b)?);
    // A row has an output to compare unless the model's call failed; a
    // case whose *grader* failed still has the model's output.
    let usable = |r: &tunegate_store::ResultRow| r.output.is_some() && (r.error.is_none() || r.error_kind.as_deref() == Some("grader"));
    let mut out = vec![];
    let mut unpaired = 0;
    for (id, ra) in &ma {
        match (mb.get(id), &ra.output, usable(ra)) {
            (Some(rb), Some(oa), true) if usable(rb) => out.push(PairedOutput {
                case_id: id.clone(),
                line: ra.case_line,
                input: ra.input.clone(),
                expected: ra.expected.as_ref().map(tunegate_core::dataset::value_text),
                output_a: oa.clone(),
                output_b: rb.output.clone().unwrap_or_default(),
            }),
            _ => unpaired += 1,
        }
    }
    unpaired += mb.keys().filter(|k| !ma.contains_key(*k)).count();
    out.sort_by(|x, y| x.line.cmp(&y.line).then(x.case_id.cmp(&y.case_id)));
    Ok((out, unpaired))
}

#[derive(Debug, Clone, Serialize)]
pub struct PairwiseReport {
    pub judge: String,
    pub side_a: String,
    pub side_b: String,
    /// Pairs judged in both orders without an error.
    pub judged: u64,
    /// Of those, the pairs where both orders named the same run.
    pub consistent: u64,
    /// Pairs with a failed call or a malformed verdict (not counted).
    pub errors: u64,
    pub unpaired: usize,
    pub stats: PreferenceStats,
    pub verdicts: Vec<JudgeVerdictRow>,
    pub calls: CallerStats,
}

/// Options of a pairwise judgement.
pub struct PairwiseOptions<'a> {
    pub template: Option<&'a str>,
    pub criteria: Option<&'a str>,
    pub concurrency: usize,
    pub alpha: f64,
}

/// Judges every pair in both orders, stores the verdicts and summarises them.
pub async fn pairwise(store_path: &Path, a: &Side, b: &Side, caller: Arc<Caller>, o: &PairwiseOptions<'_>) -> Result<PairwiseReport, RunError> {
    let mut store = Store::open(store_path)?;
    let (pairs, unpaired) = paired_outputs(&store, a, b)?;
    let (la, lb) = (a.label(), b.label());
    // Render everything first: a broken template fails before any call.
    let mut jobs = vec![];
    for p in &pairs {
        let m1 = pairwise_messages(o.template, &p.input, &p.output_a, &p.output_b, o.criteria, p.expected.as_deref()).map_err(RunError::Provider)?;
        let m2 = pairwise_messages(o.template, &p.input, &p.output_b, &p.output_a, o.criteria, p.expected.as_deref()).map_err(RunError::Provider)?;
        jobs.push((p.case_id.clone(), m1, m2));
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, (case_id, m1, m2)) in jobs.into_iter().enumerate() {
        let caller = caller.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore never closed");
            let ok = |t: &str| parse_pairwise(t).is_ok();
            let r1 = caller.call(m1, ok).await;
            let r2 = caller.call(m2, ok).await;
            (i, case_id, r1, r2)
        });
    }
    let mut done = vec![];
    while let Some(j) = set.join_next().await {
        done.push(j.map_err(|e| RunError::Provider(format!("judge task failed: {e}")))?);
    }
    done.sort_by_key(|d| d.0);
    let judge = caller.name().to_string();
    let mut rows = vec![];
    let mut verdicts = vec![];
    let (mut consistent, mut errors) = (0u64, 0u64);
    for (_, case_id, r1, r2) in done {
        let parse = |r: Result<crate::runner::CallOutcome, RunError>| -> Result<tunegate_core::judge::Position, String> {
            let out = r.map_err(|e| e.to_string())?;
            let resp = out.result.map_err(|e| format!("judge call failed: {e}"))?;
            parse_pairwise(&resp.output).map(|(p, _)| p).map_err(|e| format!("malformed verdict: {e}"))
        };
        let (p1, p2) = (parse(r1), parse(r2));
        let mut row = JudgeVerdictRow {
            side_a: la.clone(),
            side_b: lb.clone(),
            case_id,
            judge: judge.clone(),
            verdict: None,
            first_order: p1.as_ref().ok().map(|p| p.as_str().to_string()),
            second_order: p2.as_ref().ok().map(|p| p.as_str().to_string()),
            error: None,
            created_at: tunegate_store::now(),
        };
        match (p1, p2) {
            (Ok(x), Ok(y)) => {
                let (v, same) = combine_orders(x, y);
                consistent += same as u64;
                row.verdict = Some(v.as_str().to_string());
                verdicts.push(v);
            }
            (Err(e), _) | (_, Err(e)) => {
                errors += 1;
                row.error = Some(e);
            }
        }
        rows.push(row);
    }
    store.insert_judge_verdicts(&rows)?;
    let stats = preference_stats(&Tally::from_verdicts(verdicts.iter()), o.alpha);
    Ok(PairwiseReport { judge, side_a: la, side_b: lb, judged: verdicts.len() as u64, consistent, errors, unpaired, stats, verdicts: rows, calls: caller.stats() })
}

/// The latest verdict per case of one judge (or of any judge when `judge`
/// is None, the latest judge's) between two sides.
pub fn latest_verdicts(store: &Store, side_a: &str, side_b: &str, judge: Option<&str>) -> Result<BTreeMap<String, Verdict>, StoreError> {
    let rows = store.judge_verdicts(side_a, side_b)?;
    let judge = match judge {
        Some(j) => Some(j.to_string()),
        None => rows.last().map(|r| r.judge.clone()),
    };
    let mut m = BTreeMap::new();
    for r in rows {
        if Some(&r.judge) != judge.as_ref() {
            continue;
        }
        match r.verdict.as_deref().and_then(Verdict::parse) {
            Some(v) => {
                m.insert(r.case_id, v);
            }
            None => {
                m.remove(&r.case_id);
            }
        }
    }
    Ok(m)
}
