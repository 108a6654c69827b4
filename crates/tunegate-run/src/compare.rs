//! Before/after: two sets of results on the same cases, matched by case
//! identity and compared with paired statistics.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tunegate_core::paired::{clustered_difference, mcnemar_exact, mcnemar_sample_size, paired_bootstrap, Clustered, Interval, BOOTSTRAP_RESAMPLES};
use tunegate_store::{ResultRow, Store, StoreError};

/// One side of a comparison: a run, optionally narrowed to one prompt x
/// provider group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Side {
    pub run_id: String,
    pub prompt: Option<String>,
    pub provider: Option<String>,
}

impl Side {
    pub fn label(&self) -> String {
        match (&self.prompt, &self.provider) {
            (Some(p), Some(v)) => format!("{}:{p}@{v}", self.run_id),
            _ => self.run_id.clone(),
        }
    }
}

/// Resolves `RUN`, `latest`, `latest~N`, `RUN:prompt@provider` or
/// `prompt@provider` (the newest run that has that group).
pub fn resolve_side(store: &Store, sel: &str) -> Result<Side, StoreError> {
    // Run ids have no ':' or '@'; provider names may contain ':'.
    let (run_part, group) = match sel.split_once(':') {
        Some((r, g)) if g.contains('@') && !r.is_empty() && !r.contains('@') && store.resolve_run(r).is_ok() => (Some(r), Some(g)),
        _ if sel.contains('@') => (None, Some(sel)),
        _ => (Some(sel), None),
    };
    let split = |g: &str| g.split_once('@').map(|(p, v)| (p.to_string(), v.to_string()));
    match (run_part, group) {
        (Some(r), None) => Ok(Side { run_id: store.resolve_run(r)?.id, prompt: None, provider: None }),
        (Some(r), Some(g)) => {
            let (p, v) = split(g).unwrap();
            Ok(Side { run_id: store.resolve_run(r)?.id, prompt: Some(p), provider: Some(v) })
        }
        (None, Some(g)) => {
            let (p, v) = split(g).unwrap();
            for run in store.list_runs(1000)? {
                let groups = groups_of(store, &run.id)?;
                if groups.contains(&(p.clone(), v.clone())) {
                    return Ok(Side { run_id: run.id, prompt: Some(p), provider: Some(v) });
                }
            }
            Err(StoreError::NoRun(sel.to_string()))
        }
        (None, None) => Err(StoreError::NoRun(sel.to_string())),
    }
}

fn groups_of(store: &Store, run_id: &str) -> Result<BTreeSet<(String, String)>, StoreError> {
    let mut g = BTreeSet::new();
    store.for_each_result(run_id, false, |r| {
        g.insert((r.prompt_id.clone(), r.provider.clone()));
    })?;
    Ok(g)
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseDiff {
    pub case_id: String,
    pub line: u64,
    pub input: String,
    pub expected: Option<String>,
    pub output_a: Option<String>,
    pub output_b: Option<String>,
    /// Pass fraction over repeats (0 or 1 without repeats).
    pub pass_a: f64,
    pub pass_b: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct McNemar {
    /// Passed in A, failed in B.
    pub regressions: u64,
    /// Failed in A, passed in B.
    pub improvements: u64,
    pub both_pass: u64,
    pub both_fail: u64,
    pub p_value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deltas {
    pub a: f64,
    pub b: f64,
    pub delta: f64,
}

fn deltas(a: f64, b: f64) -> Deltas {
    Deltas { a, b, delta: b - a }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub alpha: f64,
    /// Cases scored on both sides (errors excluded).
    pub paired: u64,
    pub repeats: u32,
    pub pass_rate_a: f64,
    pub pass_rate_b: f64,
    pub mcnemar: McNemar,
    /// Bootstrap 95% interval of B - A, pass rate and mean score.
    pub bootstrap: BootstrapResult,
    /// With repeats: per-case pass fractions, clustered standard errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clustered: Option<Clustered>,
    /// `B is better`, `B is worse` or `not distinguishable at alpha 0.05`.
    pub verdict: String,
    pub better: Option<bool>,
    /// Said when the difference is not significant: cases needed to detect it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_note: Option<String>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Cases with a provider error on either side: not compared.
    pub errored: Vec<String>,
    pub per_label: BTreeMap<String, Deltas>,
    pub per_field: BTreeMap<String, Deltas>,
    pub prompt_tokens: Deltas,
    pub completion_tokens: Deltas,
    pub cost_usd: Option<Deltas>,
    pub latency_p50_ms: Deltas,
    pub regressions: Vec<CaseDiff>,
    pub improvements: Vec<CaseDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapResult {
    pub resamples: usize,
    pub seed: u64,
    pub pass_rate_diff: Interval,
    pub mean_score_diff: Interval,
}

fn rows(store: &Store, side: &Side) -> Result<Vec<ResultRow>, StoreError> {
    let mut v = vec![];
    store.for_each_result(&side.run_id, false, |r| {
        if side.prompt.as_ref().map(|p| p == &r.prompt_id).unwrap_or(true) && side.provider.as_ref().map(|p| p == &r.provider).unwrap_or(true) {
            v.push(r);
        }
    })?;
    Ok(v)
}

/// The groups a side holds; a whole run must hold exactly one to be compared as one.
pub fn side_groups(store: &Store, side: &Side) -> Result<Vec<(String, String)>, StoreError> {
    let mut g: BTreeSet<(String, String)> = BTreeSet::new();
    for r in rows(store, side)? {
        g.insert((r.prompt_id, r.provider));
    }
    Ok(g.into_iter().collect())
}

struct Agg {
    line: u64,
    input: String,
    expected: Option<String>,
    output: Option<String>,
    passes: Vec<f64>,
    scores: Vec<f64>,
    errored: bool,
    label: Option<String>,
    fields: Vec<(String, String)>,
}

fn aggregate(rows: Vec<ResultRow>) -> BTreeMap<String, Agg> {
    let mut m: BTreeMap<String, Agg> = BTreeMap::new();
    for r in rows {
        let a = m.entry(r.case_id.clone()).or_insert_with(|| Agg {
            line: r.case_line,
            input: r.input.clone(),
            expected: r.expected.as_ref().map(tunegate_core::dataset::value_text),
            output: None,
            passes: vec![],
            scores: vec![],
            errored: false,
            label: None,
            fields: vec![],
        });
        if r.error.is_some() {
            a.errored = true;
            continue;
        }
        if a.output.is_none() {
            a.output = r.output.clone();
        }
        a.passes.push(if r.pass == Some(true) { 1.0 } else { 0.0 });
        a.scores.push(r.score.unwrap_or(0.0));
        if let Some(arr) = r.assertions.as_array() {
            for x in arr {
                match x.get("type").and_then(|t| t.as_str()) {
                    Some("label") => a.label = x["detail"]["expected"].as_str().map(str::to_string),
                    Some("fields") => {
                        if let Some(f) = x["detail"]["fields"].as_object() {
                            for (k, v) in f {
                                a.fields.push((k.clone(), v.as_str().unwrap_or("").to_string()));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    m
}

pub use tunegate_core::paired::fmt_p;

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn compare(store: &Store, a: &Side, b: &Side, alpha: f64, seed: u64) -> Result<Comparison, StoreError> {
    let (ra, rb) = (rows(store, a)?, rows(store, b)?);
    let repeats = ra.iter().chain(&rb).map(|r| r.repeat + 1).max().unwrap_or(1);
    let usage = |rs: &[ResultRow]| {
        let ok: Vec<&ResultRow> = rs.iter().filter(|r| r.error.is_none()).collect();
        let pt = mean(&ok.iter().filter_map(|r| r.prompt_tokens.map(|x| x as f64)).collect::<Vec<_>>());
        let ct = mean(&ok.iter().filter_map(|r| r.completion_tokens.map(|x| x as f64)).collect::<Vec<_>>());
        let cost: Option<f64> = ok.iter().map(|r| r.cost_usd).sum();
        let mut lat: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
        lat.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        (pt, ct, cost, tunegate_core::stats::percentile(&lat, 0.5).unwrap_or(0.0))
    };
    let (ua, ub) = (usage(&ra), usage(&rb));
    let (ga, gb) = (aggregate(ra), aggregate(rb));
    let only_in_a: Vec<String> = ga.keys().filter(|k| !gb.contains_key(*k)).cloned().collect();
    let only_in_b: Vec<String> = gb.keys().filter(|k| !ga.contains_key(*k)).cloned().collect();
    let mut errored = vec![];
    let mut diffs = vec![];
    let mut score_diffs = vec![];
    let (mut bp, mut bf, mut reg, mut imp) = (0u64, 0u64, 0u64, 0u64);
    let (mut regressions, mut improvements) = (vec![], vec![]);
    let (mut pa_sum, mut pb_sum) = (0.0, 0.0);
    let mut label_acc: HashMap<String, (f64, f64, f64)> = HashMap::new();
    let mut field_acc: HashMap<String, ([u64; 3], [u64; 3])> = HashMap::new();
    for (id, x) in &ga {
        let Some(y) = gb.get(id) else { continue };
        if x.errored || y.errored || x.passes.is_empty() || y.passes.is_empty() {
            errored.push(id.clone());
            continue;
        }
        let (pa, pb) = (mean(&x.passes), mean(&y.passes));
        pa_sum += pa;
        pb_sum += pb;
        diffs.push(pb - pa);
        score_diffs.push(mean(&y.scores) - mean(&x.scores));
        // McNemar on the per-case majority (exactly pass/fail without repeats).
        let (a_pass, b_pass) = (pa >= 0.5, pb >= 0.5);
        let cd = || CaseDiff { case_id: id.clone(), line: x.line, input: x.input.clone(), expected: x.expected.clone(), output_a: x.output.clone(), output_b: y.output.clone(), pass_a: pa, pass_b: pb };
        match (a_pass, b_pass) {
            (true, true) => bp += 1,
            (false, false) => bf += 1,
            (true, false) => {
                reg += 1;
                regressions.push(cd());
            }
            (false, true) => {
                imp += 1;
                improvements.push(cd());
            }
        }
        if let Some(l) = x.label.clone().or(y.label.clone()) {
            let e = label_acc.entry(l).or_default();
            e.0 += pa;
            e.1 += pb;
            e.2 += 1.0;
        }
        for (side, fields) in [(0, &x.fields), (1, &y.fields)] {
            for (f, o) in fields {
                let e = field_acc.entry(f.clone()).or_default();
                let t = if side == 0 { &mut e.0 } else { &mut e.1 };
                match o.as_str() {
                    "tp" => t[0] += 1,
                    "fp" => t[1] += 1,
                    "fn" => t[2] += 1,
                    "fp+fn" => {
                        t[1] += 1;
                        t[2] += 1
                    }
                    _ => {}
                }
            }
        }
    }
    let n = diffs.len() as u64;
    let p_value = mcnemar_exact(reg, imp);
    let boot = BootstrapResult {
        resamples: BOOTSTRAP_RESAMPLES,
        seed,
        pass_rate_diff: paired_bootstrap(&diffs, BOOTSTRAP_RESAMPLES, seed),
        mean_score_diff: paired_bootstrap(&score_diffs, BOOTSTRAP_RESAMPLES, seed.wrapping_add(1)),
    };
    let clustered = if repeats > 1 { Some(clustered_difference(&diffs)) } else { None };
    let test_p = clustered.as_ref().map(|c| c.p_value).unwrap_or(p_value);
    let diff = boot.pass_rate_diff.estimate;
    let (verdict, better) = if n == 0 {
        ("no case was scored on both sides".to_string(), None)
    } else if test_p < alpha && diff > 0.0 {
        (format!("B is better (p = {} < {alpha})", fmt_p(test_p)), Some(true))
    } else if test_p < alpha && diff < 0.0 {
        (format!("B is worse (p = {} < {alpha})", fmt_p(test_p)), Some(false))
    } else {
        (format!("not distinguishable at alpha {alpha} (p = {})", fmt_p(test_p)), None)
    };
    let power_note = if better.is_none() && n > 0 {
        let pd = (reg + imp) as f64 / n as f64;
        match mcnemar_sample_size(diff, pd, alpha) {
            Some(need) if need > n => Some(format!("the eval set ({n} cases) is too small to detect a difference of {:.1} points: about {need} cases would be needed (80% power)", diff * 100.0)),
            Some(_) => None,
            None if diff == 0.0 => Some("no difference was observed".to_string()),
            None => None,
        }
    } else {
        None
    };
    let per_label = label_acc.into_iter().map(|(l, (a, b, c))| (l, deltas(a / c, b / c))).collect();
    let f1 = |t: [u64; 3]| {
        let p = if t[0] + t[1] == 0 { 1.0 } else { t[0] as f64 / (t[0] + t[1]) as f64 };
        let r = if t[0] + t[2] == 0 { 1.0 } else { t[0] as f64 / (t[0] + t[2]) as f64 };
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    };
    let per_field = field_acc.into_iter().map(|(f, (a, b))| (f, deltas(f1(a), f1(b)))).collect();
    Ok(Comparison {
        a: a.clone(),
        b: b.clone(),
        alpha,
        paired: n,
        repeats,
        pass_rate_a: if n == 0 { 0.0 } else { pa_sum / n as f64 },
        pass_rate_b: if n == 0 { 0.0 } else { pb_sum / n as f64 },
        mcnemar: McNemar { regressions: reg, improvements: imp, both_pass: bp, both_fail: bf, p_value },
        bootstrap: boot,
        clustered,
        verdict,
        better,
        power_note,
        only_in_a,
        only_in_b,
        errored,
        per_label,
        per_field,
        prompt_tokens: deltas(ua.0, ub.0),
        completion_tokens: deltas(ua.1, ub.1),
        cost_usd: match (ua.2, ub.2) {
            (Some(x), Some(y)) => Some(deltas(x, y)),
            _ => None,
        },
        latency_p50_ms: deltas(ua.3, ub.3),
        regressions,
        improvements,
    })
}
