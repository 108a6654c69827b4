//! Aggregates a stored run into the numbers reports show. It streams rows
//! from the store and keeps only per-group tallies, so a 60,000-row run is
//! summarised in constant memory per group.

use serde::Serialize;
use std::collections::BTreeMap;
use tunegate_core::stats::{classification, field_metrics, percentile, wilson, ClassificationMetrics, FieldMetrics};
use tunegate_store::{RunInfo, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub prompt: String,
    pub provider: String,
    /// Results (cases x repeats) in the group, errors included.
    pub n: u64,
    pub passed: u64,
    pub failed: u64,
    /// Provider errors: excluded from the pass rate.
    pub errors: u64,
    /// passed / (passed + failed).
    pub pass_rate: f64,
    pub ci95: (f64, f64),
    pub mean_score: f64,
    pub prompt_tokens_mean: f64,
    pub completion_tokens_mean: f64,
    /// None when the provider's price is unknown.
    pub cost_usd: Option<f64>,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub cache_hits: u64,
    /// What the `llm-rubric` graders cost for this group (they are billed
    /// apart from the model under test, whose cost stays its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graders: Option<GraderUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationMetrics>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldMetrics>,
}

/// Grader calls behind a group's `llm-rubric` assertions.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GraderUsage {
    pub grades: u64,
    /// Grades read from the response cache (no call made).
    pub cached: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// None when a grader's price is unknown.
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub run: RunInfo,
    pub groups: Vec<GroupSummary>,
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub cache_hits: u64,
}

#[derive(Default)]
struct Acc {
    n: u64,
    passed: u64,
    failed: u64,
    errors: u64,
    score_sum: f64,
    pt: (f64, u64),
    ct: (f64, u64),
    cost: Option<f64>,
    cost_unknown: bool,
    latencies: Vec<f64>,
    cache_hits: u64,
    graders: Option<GraderUsage>,
    grader_cost_unknown: bool,
    label_pairs: Vec<(String, Option<String>)>,
    field_outcomes: Vec<(String, String)>,
}

pub fn summarize(store: &Store, run_id: &str) -> Result<RunSummary, StoreError> {
    let run = store.get_run(run_id)?;
    let labels: Vec<String> = run.meta.get("labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
    let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
    // Keep the run's prompt/provider order for display.
    let order = |key: &str| -> Vec<String> { run.meta.get(key).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default() };
    let (porder, vorder) = (order("prompts"), order("providers"));
    store.for_each_result(run_id, false, |r| {
        let a = groups.entry((r.prompt_id.clone(), r.provider.clone())).or_default();
        a.n += 1;
        if r.cached {
            a.cache_hits += 1;
        }
        // Graders are paid for even when their grade was garbage.
        for x in r.assertions.as_array().into_iter().flatten() {
            let d = &x["detail"];
            if d.get("grader").is_none() {
                continue;
            }
            let g = a.graders.get_or_insert_with(GraderUsage::default);
            g.grades += 1;
            if d["cached"].as_bool() == Some(true) {
                g.cached += 1;
            }
            g.prompt_tokens += d["prompt_tokens"].as_u64().unwrap_or(0);
            g.completion_tokens += d["completion_tokens"].as_u64().unwrap_or(0);
            match d["cost_usd"].as_f64() {
                Some(c) => g.cost_usd = Some(g.cost_usd.unwrap_or(0.0) + c),
                None => a.grader_cost_unknown = true,
            }
        }
        if r.error.is_some() {
            a.errors += 1;
            return;
        }
        if r.pass == Some(true) {
            a.passed += 1;
        } else {
            a.failed += 1;
        }
        a.score_sum += r.score.unwrap_or(0.0);
        if let Some(t) = r.prompt_tokens {
            a.pt.0 += t as f64;
            a.pt.1 += 1;
        }
        if let Some(t) = r.completion_tokens {
            a.ct.0 += t as f64;
            a.ct.1 += 1;
        }
        match r.cost_usd {
            Some(c) => a.cost = Some(a.cost.unwrap_or(0.0) + c),
            None => a.cost_unknown = true,
        }
        a.latencies.push(r.latency_ms);
        if let Some(arr) = r.assertions.as_array() {
            for x in arr {
                match x.get("type").and_then(|t| t.as_str()) {
                    Some("label") => {
                        let d = &x["detail"];
                        if let Some(e) = d.get("expected").and_then(|e| e.as_str()) {
                            let p = d.get("predicted").and_then(|p| p.as_str()).map(str::to_string);
                            // Map the expected text to its canonical label.
                            let e = labels.iter().find(|l| tunegate_core::scorers::normalize_label(l) == tunegate_core::scorers::normalize_label(e)).cloned().unwrap_or(e.to_string());
                            a.label_pairs.push((e, p));
                        }
                    }
                    Some("fields") => {
                        if let Some(f) = x["detail"].get("fields").and_then(|f| f.as_object()) {
                            for (k, v) in f {
                                a.field_outcomes.push((k.clone(), v.as_str().unwrap_or("").to_string()));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    })?;
    let mut keys: Vec<(String, String)> = groups.keys().cloned().collect();
    let pos = |v: &Vec<String>, x: &String| v.iter().position(|y| y == x).unwrap_or(usize::MAX);
    keys.sort_by_key(|(p, v)| (pos(&porder, p), pos(&vorder, v), p.clone(), v.clone()));
    let mut out = vec![];
    for k in keys {
        let mut a = groups.remove(&k).unwrap();
        a.latencies.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        let scored = a.passed + a.failed;
        out.push(GroupSummary {
            prompt: k.0,
            provider: k.1,
            n: a.n,
            passed: a.passed,
            failed: a.failed,
            errors: a.errors,
            pass_rate: if scored == 0 { 0.0 } else { a.passed as f64 / scored as f64 },
            ci95: wilson(a.passed, scored),
            mean_score: if scored == 0 { 0.0 } else { a.score_sum / scored as f64 },
            prompt_tokens_mean: if a.pt.1 == 0 { 0.0 } else { a.pt.0 / a.pt.1 as f64 },
            completion_tokens_mean: if a.ct.1 == 0 { 0.0 } else { a.ct.0 / a.ct.1 as f64 },
            cost_usd: if a.cost_unknown { None } else { a.cost.or(Some(0.0)) },
            latency_p50_ms: percentile(&a.latencies, 0.5).unwrap_or(0.0),
            latency_p95_ms: percentile(&a.latencies, 0.95).unwrap_or(0.0),
            cache_hits: a.cache_hits,
            graders: a.graders.take().map(|mut g| {
                if a.grader_cost_unknown {
                    g.cost_usd = None;
                } else if g.cost_usd.is_none() {
                    g.cost_usd = Some(0.0);
                }
                g
            }),
            classification: if a.label_pairs.is_empty() { None } else { Some(classification(&labels, &a.label_pairs)) },
            fields: field_metrics(a.field_outcomes.iter().map(|(f, o)| (f.as_str(), o.as_str()))),
        });
    }
    let sum = |f: fn(&GroupSummary) -> u64| out.iter().map(f).sum::<u64>();
    Ok(RunSummary {
        run_id: run_id.to_string(),
        total: sum(|g| g.n),
        passed: sum(|g| g.passed),
        failed: sum(|g| g.failed),
        errors: sum(|g| g.errors),
        cache_hits: sum(|g| g.cache_hits),
        run,
        groups: out,
    })
}
