//! The prompt lab's driver: it evaluates the variants `tunegate_core::lab`
//! builds, through the ordinary runner (cache, retries, rate limits,
//! concurrency), all rounds of one command into one stored run tagged with
//! the command's kind, and turns the verdicts into reports.
//!
//! Every provider call is counted against an optional budget before it is
//! made: the exact number of uncached calls of a round is known up front
//! (each variant is rendered and looked up in the cache), so a round that
//! would cross the budget is not started, and what was measured before it
//! stays stored and reported.

use crate::runner::{cache_key, RunOptions, Sink};
use crate::{prepare, RunError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tunegate_core::data::TokenCounter;
use tunegate_core::lab::*;
use tunegate_core::task::{PromptSource, ShotStrategy, ShotsSpec};
use tunegate_core::{Case, CompiledPrompt, Message, Price, ProviderSpec, Task};
use tunegate_providers::{Provider, Request};
use tunegate_store::{CachedResponse, Store};

/// A cap on what the lab may spend on provider calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Unlimited,
    Calls(u64),
    Usd(f64),
}

impl std::str::FromStr for Budget {
    type Err = String;
    /// `500` (provider calls), `$2.50` or `2.5usd` (US dollars).
    fn from_str(s: &str) -> Result<Budget, String> {
        let t = s.trim().to_lowercase();
        let usd = t.strip_prefix('$').or_else(|| t.strip_suffix("usd")).map(|x| x.trim().to_string());
        match usd {
            Some(x) => x.parse::<f64>().ok().filter(|v| *v >= 0.0 && v.is_finite()).map(Budget::Usd).ok_or_else(|| format!("`{s}` is not an amount of dollars (e.g. $2.50)")),
            None => t.parse::<u64>().map(Budget::Calls).map_err(|_| format!("`{s}` is neither a number of provider calls (e.g. 500) nor dollars (e.g. $2.50)")),
        }
    }
}

/// What a round (or a whole command, as an upper bound) will cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Estimate {
    pub variants: usize,
    pub cases: usize,
    pub items: u64,
    pub cached: u64,
    /// Provider calls needed (exact for known variants).
    pub calls: u64,
    /// More calls that later rounds may need, at most (greedy search).
    pub more_calls_at_most: u64,
    /// None when the provider has no price.
    pub usd: Option<f64>,
}

pub struct LabConfig {
    pub store_path: PathBuf,
    pub concurrency: usize,
    pub use_cache: bool,
    pub max_retries: u32,
    pub stop: Arc<AtomicBool>,
    /// `ablation`, `sweep` or `variation`.
    pub kind: String,
    pub budget: Budget,
    /// Evaluate on this many eval cases (a stratified sample), not all.
    pub sample: Option<usize>,
    pub price: Option<Price>,
    pub seed: u64,
}

/// The verdicts of one variant, aligned with the lab's cases.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    pub pass: Vec<Option<bool>>,
    pub prompt_tokens: Option<f64>,
    pub completion_tokens: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("the budget allows {left} more provider call(s) (or ${left_usd:.4}), this round needs {needed} (about ${usd:.4}); raise --budget")]
    Budget { needed: u64, left: u64, usd: f64, left_usd: f64 },
    #[error("interrupted: the variants measured so far are stored in run {0}")]
    Interrupted(String),
    #[error("{0}")]
    Input(String),
}

pub struct Lab {
    cfg: LabConfig,
    task: Task,
    pub cases: Arc<Vec<Case>>,
    pub examples: Option<Arc<Vec<Case>>>,
    provider: Arc<dyn Provider>,
    spec: ProviderSpec,
    counter: Box<dyn TokenCounter>,
    sinks: Vec<Arc<dyn Sink>>,
    pub run_id: Option<String>,
    pub calls: u64,
    pub usd: f64,
    done: HashMap<String, Verdicts>,
    meta: Value,
}

impl Lab {
    pub fn new(task: Task, provider: Arc<dyn Provider>, spec: ProviderSpec, counter: Box<dyn TokenCounter>, cfg: LabConfig, sinks: Vec<Arc<dyn Sink>>) -> Result<Lab, RunError> {
        let prep = prepare(task.clone())?;
        let mut cases = (*prep.eval).clone();
        if let Some(n) = cfg.sample.filter(|&n| n < cases.len()) {
            cases = stratified_sample(&cases, n, cfg.seed);
        }
        Ok(Lab { cfg, task, cases: Arc::new(cases), examples: prep.examples, provider, spec, counter, sinks, run_id: None, calls: 0, usd: 0.0, done: HashMap::new(), meta: json!({}) })
    }

    pub fn task(&self) -> &Task {
        &self.task
    }
    pub fn provider_name(&self) -> String {
        self.provider.name().to_string()
    }
    pub fn tokenizer(&self) -> String {
        self.counter.name()
    }
    pub fn case_ids(&self) -> Vec<String> {
        self.cases.iter().map(|c| c.id.clone()).collect()
    }
    pub fn set_meta(&mut self, meta: Value) {
        self.meta = meta;
    }

    fn compile(&self, v: &PromptSource) -> Result<CompiledPrompt, RunError> {
        Ok(CompiledPrompt::compile(&self.task, v, self.examples.as_deref().map(|e| e.as_slice()))?)
    }

    /// Mean prompt tokens of a variant over (up to) 50 of the lab's cases.
    pub fn tokens(&self, v: &PromptSource) -> Result<f64, RunError> {
        let cp = self.compile(v)?;
        let file = self.task.eval_path().unwrap_or_default();
        let sample: Vec<&Case> = self.cases.iter().take(50).collect();
        let mut total = 0usize;
        for c in &sample {
            total += self.counter.count(&cp.render(c, &file)?);
        }
        Ok(if sample.is_empty() { 0.0 } else { total as f64 / sample.len() as f64 })
    }

    /// Cost of one call of `tokens` prompt tokens (completion tokens at the
    /// provider's max_tokens, or 16 when unset, as a ceiling for labels).
    pub fn call_usd(&self, tokens: f64) -> Option<f64> {
        let p = self.cfg.price?;
        let out = self.spec.params.max_tokens.unwrap_or(16) as f64;
        Some((tokens * p.input_per_mtok + out * p.output_per_mtok) / 1e6)
    }

    /// Exact count of the uncached calls these variants need.
    pub fn estimate(&self, variants: &[PromptSource]) -> Result<Estimate, RunError> {
        let store = Store::open(&self.cfg.store_path)?;
        let file = self.task.eval_path().unwrap_or_default();
        let mut e = Estimate { cases: self.cases.len(), ..Default::default() };
        let mut seen = BTreeSet::new();
        let mut usd = 0.0;
        for v in variants {
            if self.done.contains_key(&v.id) || !seen.insert(v.id.clone()) {
                continue;
            }
            e.variants += 1;
            let cp = self.compile(v)?;
            let mut uncached_tokens = 0.0;
            for c in self.cases.iter() {
                e.items += 1;
                let msgs = cp.render(c, &file)?;
                let key = cache_key(&self.provider.identity(), &self.spec.params, &msgs, 0);
                if self.cfg.use_cache && store.cache_get(&key)?.is_some() {
                    e.cached += 1;
                } else {
                    e.calls += 1;
                    uncached_tokens += self.counter.count(&msgs) as f64;
                }
            }
            if let Some(p) = self.cfg.price {
                usd += uncached_tokens * p.input_per_mtok / 1e6;
            }
        }
        if let Some(p) = self.cfg.price {
            // Completions at max_tokens (16 when unset): a ceiling for labels.
            usd += e.calls as f64 * self.spec.params.max_tokens.unwrap_or(16) as f64 * p.output_per_mtok / 1e6;
            e.usd = Some(usd);
        }
        Ok(e)
    }

    /// Whether the budget allows `e` more calls; an error says by how much
    /// it does not.
    pub fn check_budget(&self, e: &Estimate) -> Result<(), LabError> {
        let usd = e.usd.unwrap_or(0.0);
        let (left, left_usd) = match self.cfg.budget {
            Budget::Unlimited => return Ok(()),
            Budget::Calls(c) => (c.saturating_sub(self.calls), f64::INFINITY),
            Budget::Usd(d) => (u64::MAX, (d - self.usd).max(0.0)),
        };
        if e.calls > left || usd > left_usd + 1e-12 {
            return Err(LabError::Budget { needed: e.calls, left: left.min(1 << 40), usd, left_usd: if left_usd.is_finite() { left_usd } else { 0.0 } });
        }
        Ok(())
    }

    /// Evaluates the variants not yet measured (one round), then returns
    /// the verdicts of all of them.
    pub async fn evaluate(&mut self, variants: &[PromptSource]) -> Result<Vec<Verdicts>, LabError> {
        let mut todo: Vec<PromptSource> = vec![];
        for v in variants {
            if !self.done.contains_key(&v.id) && !todo.iter().any(|t| t.id == v.id) {
                todo.push(v.clone());
            }
        }
        if !todo.is_empty() {
            let e = self.estimate(&todo)?;
            self.check_budget(&e)?;
            let mut task = self.task.clone();
            task.prompt_sources = todo.clone();
            let mut prep = prepare(task).map_err(LabError::Run)?;
            prep.eval = self.cases.clone();
            let mut opts = RunOptions::new(self.cfg.store_path.clone());
            opts.concurrency = self.cfg.concurrency.max(1);
            opts.use_cache = self.cfg.use_cache;
            opts.max_retries = self.cfg.max_retries;
            opts.stop = self.cfg.stop.clone();
            opts.kind = self.cfg.kind.clone();
            opts.meta = self.meta.clone();
            opts.resume = self.run_id.clone();
            opts.append = self.run_id.is_some();
            let outcome = crate::run(&prep, vec![(self.provider.clone(), self.spec.clone())], opts, self.sinks.clone()).await?;
            self.run_id = Some(outcome.run_id.clone());
            self.calls += outcome.provider_calls;
            let ids: BTreeSet<String> = todo.iter().map(|v| v.id.clone()).collect();
            let store = Store::open(&self.cfg.store_path).map_err(RunError::from)?;
            let pos: HashMap<&str, usize> = self.cases.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
            let mut got: BTreeMap<String, (Verdicts, f64, u64, f64, u64)> = ids.iter().map(|i| (i.clone(), (Verdicts { pass: vec![None; self.cases.len()], ..Default::default() }, 0.0, 0, 0.0, 0))).collect();
            let mut spent = 0.0;
            store
                .for_each_result(&outcome.run_id, false, |r| {
                    if let (Some(g), Some(&i)) = (got.get_mut(&r.prompt_id), pos.get(r.case_id.as_str())) {
                        g.0.pass[i] = if r.error.is_some() { None } else { r.pass };
                        if let Some(t) = r.prompt_tokens {
                            g.1 += t as f64;
                            g.2 += 1;
                        }
                        if let Some(t) = r.completion_tokens {
                            g.3 += t as f64;
                            g.4 += 1;
                        }
                        if !r.cached {
                            spent += r.cost_usd.unwrap_or(0.0);
                        }
                    }
                })
                .map_err(RunError::from)?;
            self.usd += spent;
            if outcome.interrupted {
                return Err(LabError::Interrupted(outcome.run_id));
            }
            for (id, (mut v, pt, pn, ct, cn)) in got {
                v.prompt_tokens = (pn > 0).then(|| pt / pn as f64);
                v.completion_tokens = (cn > 0).then(|| ct / cn as f64);
                self.done.insert(id, v);
            }
        }
        Ok(variants.iter().map(|v| self.done.get(&v.id).cloned().unwrap_or_default()).collect())
    }

    /// Stores the report in the run's meta, where `tunegate advise` finds it.
    pub fn store_report(&self, report: &impl serde::Serialize) -> Result<(), RunError> {
        if let Some(id) = &self.run_id {
            let store = Store::open(&self.cfg.store_path)?;
            let mut meta = store.get_run(id)?.meta;
            meta["report"] = serde_json::to_value(report).unwrap_or(Value::Null);
            meta["lab"] = json!(self.cfg.kind);
            store.set_run_meta(id, &meta)?;
        }
        Ok(())
    }

    pub fn stopped(&self) -> bool {
        self.cfg.stop.load(Ordering::Relaxed)
    }

    /// Set it to stop starting new cases (Ctrl-C).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.cfg.stop.clone()
    }
}

/// `n` cases spread over expected outputs in proportion (labels keep their
/// share), deterministic for a seed.
pub fn stratified_sample(cases: &[Case], n: usize, seed: u64) -> Vec<Case> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        groups.entry(c.expected_text().unwrap_or_default()).or_default().push(i);
    }
    for g in groups.values_mut() {
        g.shuffle(&mut rng);
    }
    // Largest remainder: each group's share of n, rounded so they sum to n.
    let total = cases.len() as f64;
    let mut take: Vec<(String, usize, f64)> = groups.iter().map(|(k, v)| {
        let exact = v.len() as f64 * n as f64 / total;
        (k.clone(), exact.floor() as usize, exact - exact.floor())
    }).collect();
    let mut left = n - take.iter().map(|t| t.1).sum::<usize>();
    take.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
    for t in take.iter_mut() {
        if left == 0 {
            break;
        }
        t.1 += 1;
        left -= 1;
    }
    let mut picked: Vec<usize> = take.iter().flat_map(|(k, m, _)| groups[k].iter().take(*m).copied()).collect();
    picked.sort();
    picked.into_iter().map(|i| cases[i].clone()).collect()
}

fn not_worse(d: &Delta, alpha: f64, max_drop: Option<f64>) -> bool {
    d.p_worse >= alpha && max_drop.map(|m| -d.delta <= m).unwrap_or(true)
}

fn shots_shown(lab: &Lab, src: &PromptSource) -> usize {
    let avail = lab.examples.as_ref().map(|e| e.iter().filter(|c| c.expected.is_some()).count()).unwrap_or(0);
    match &src.shots {
        Some(s) => s.order.as_ref().map(|o| o.len()).unwrap_or(s.k.min(avail)),
        None => 0,
    }
}

/// The first round of `minimize`: the full prompt and each drop-one
/// variant. Later rounds are at most one variant per remaining part.
pub fn minimize_round(d: &Dissected, src: &PromptSource) -> Vec<PromptSource> {
    let mut round: Vec<PromptSource> = vec![d.without(&src.id, &BTreeSet::new())];
    for i in 0..d.parts.len() {
        let set = BTreeSet::from([i]);
        round.push(d.without(&d.variant_id(&set), &set));
    }
    round
}

/// The prompt's parts, as `minimize` sees them.
pub fn dissect(lab: &Lab, src: &PromptSource) -> Dissected {
    Dissected::new(src, shots_shown(lab, src))
}

pub struct MinimizeOptions {
    pub alpha: f64,
    pub max_drop: Option<f64>,
}

/// Drop-one ablations of every part, then a greedy search: parts whose
/// removal hurt least are dropped first, and a drop is kept while the
/// prompt stays not significantly worse than the full one (one-sided exact
/// McNemar at `alpha`, always against the full prompt, so that small
/// losses cannot accumulate step by step).
pub async fn minimize(lab: &mut Lab, src: &PromptSource, o: &MinimizeOptions, log: &dyn Fn(String)) -> Result<MinimizeReport, LabError> {
    let d = Dissected::new(src, shots_shown(lab, src));
    if d.parts.is_empty() {
        return Err(LabError::Input(format!("prompt `{}` has no part that can be dropped: its text is all template logic or case variables", src.id)));
    }
    let full_tokens = lab.tokens(src)?;
    let round = minimize_round(&d, src);
    log(format!("ablations: the full prompt and {} drop-one variants of `{}`", d.parts.len(), src.id));
    let res = lab.evaluate(&round).await?;
    let full = res[0].pass.clone();
    let mut parts = vec![];
    for (i, p) in d.parts.iter().enumerate() {
        let without = paired_delta(&full, &res[i + 1].pass, 17 + i as u64);
        let tokens = full_tokens - lab.tokens(&round[i + 1])?;
        let matters = !not_worse(&without, o.alpha, o.max_drop);
        parts.push(PartResult { part: p.clone(), tokens, without, matters });
    }
    // Least harmful first; among equals, the most tokens saved first.
    let mut order: Vec<usize> = (0..parts.len()).filter(|&i| !parts[i].matters).collect();
    order.sort_by(|&a, &b| parts[b].without.rate.partial_cmp(&parts[a].without.rate).unwrap_or(std::cmp::Ordering::Equal).then(parts[b].tokens.partial_cmp(&parts[a].tokens).unwrap_or(std::cmp::Ordering::Equal)));
    let mut current: BTreeSet<usize> = BTreeSet::new();
    let mut steps = vec![];
    let mut stopped = None;
    for &i in &order {
        let mut cand = current.clone();
        cand.insert(i);
        let v = d.without(&d.variant_id(&cand), &cand);
        log(format!("greedy: try dropping {} ({} dropped so far)", d.parts[i].id, current.len()));
        let r = match lab.evaluate(std::slice::from_ref(&v)).await {
            Ok(r) => r,
            Err(LabError::Budget { needed, left, .. }) => {
                stopped = Some(format!("stopped by --budget: the next step needed {needed} calls, {left} left"));
                break;
            }
            Err(e) => return Err(e),
        };
        let against_full = paired_delta(&full, &r[0].pass, 991 + steps.len() as u64);
        let accepted = not_worse(&against_full, o.alpha, o.max_drop);
        steps.push(GreedyStep { tried: d.parts[i].id.clone(), variant: v.id.clone(), tokens: lab.tokens(&v)?, against_full, accepted });
        if accepted {
            current = cand;
        }
    }
    let best_src = d.without(&d.variant_id(&current), &current);
    let best_pass = lab.evaluate(std::slice::from_ref(&best_src)).await?.remove(0).pass;
    let best_tokens = lab.tokens(&best_src)?;
    let calls_per_month = lab.task().file.usage.calls_per_month;
    let saved = (full_tokens - best_tokens).max(0.0);
    let monthly_saving_usd = match (calls_per_month, lab.cfg.price) {
        (Some(c), Some(p)) => Some(saved * c as f64 * p.input_per_mtok / 1e6),
        _ => None,
    };
    Ok(MinimizeReport {
        prompt: src.id.clone(),
        provider: lab.provider_name(),
        alpha: o.alpha,
        max_drop: o.max_drop,
        cases: lab.cases.len() as u64,
        tokenizer: lab.tokenizer(),
        full: rate_ci(&full),
        full_tokens,
        parts,
        steps,
        best_variant: best_src.id.clone(),
        best_dropped: current.iter().map(|&i| d.parts[i].id.clone()).collect(),
        best: rate_ci(&best_pass),
        best_tokens,
        best_against_full: (!current.is_empty()).then(|| paired_delta(&full, &best_pass, 4242)),
        token_saving: if full_tokens > 0.0 { saved / full_tokens } else { 0.0 },
        calls_per_month,
        monthly_saving_usd,
        best_system: best_src.system.clone(),
        best_template: best_src.template.clone(),
        best_shots_order: best_src.shots.as_ref().and_then(|s| s.order.clone()),
        stopped,
        written_as: None,
        run_id: lab.run_id.clone().unwrap_or_default(),
    })
}

pub struct SweepOptions {
    pub ks: Vec<usize>,
    pub seeds: u64,
    pub strategy: Option<ShotStrategy>,
    pub alpha: f64,
}

/// The few-shot learning curve: the prompt with k examples drawn from
/// data.examples, for each k and several draws (seeds).
pub async fn sweep(lab: &mut Lab, src: &PromptSource, o: &SweepOptions, log: &dyn Fn(String)) -> Result<SweepReport, LabError> {
    if !uses_shots(src) {
        return Err(LabError::Input(format!("prompt `{}` does not show `shots` in its template: a sweep has nothing to vary (add a `{{% for s in shots %}}` loop)", src.id)));
    }
    let avail = lab.examples.as_ref().map(|e| e.iter().filter(|c| c.expected.is_some()).count()).unwrap_or(0);
    if avail == 0 {
        return Err(LabError::Input("a sweep draws examples from data.examples, which is not set or has no expected outputs".into()));
    }
    let base = src.shots.clone().unwrap_or(ShotsSpec { k: 0, strategy: ShotStrategy::Stratified, seed: 0, order: None });
    let strategy = o.strategy.unwrap_or(base.strategy);
    let mut ks: Vec<usize> = o.ks.clone();
    ks.sort();
    ks.dedup();
    let mut points: Vec<SweepPoint> = vec![];
    let mut per_case: Vec<Vec<f64>> = vec![];
    let mut stopped = None;
    let mut last_shown = usize::MAX;
    for &k in &ks {
        let shown = k.min(avail);
        if shown == last_shown {
            log(format!("k={k}: only {avail} examples, same as the previous point; skipped"));
            continue;
        }
        last_shown = shown;
        let seeds: Vec<u64> = if shown == 0 || (strategy == ShotStrategy::First) { vec![base.seed] } else { (0..o.seeds.max(1)).map(|s| base.seed + s).collect() };
        let vs: Vec<PromptSource> = seeds
            .iter()
            .map(|&s| PromptSource { id: format!("{}~k{shown}~seed{s}", src.id), shots: Some(ShotsSpec { k: shown, strategy, seed: s, order: None }), ..src.clone() })
            .collect();
        log(format!("k={shown}: {} draw(s)", vs.len()));
        let r = match lab.evaluate(&vs).await {
            Ok(r) => r,
            Err(LabError::Budget { needed, left, .. }) => {
                stopped = Some(format!("stopped by --budget before k={shown}: it needed {needed} calls, {left} left"));
                break;
            }
            Err(e) => return Err(e),
        };
        let vecs: Vec<&[Option<bool>]> = r.iter().map(|v| v.pass.as_slice()).collect();
        let pooled = pooled(&vecs);
        let fr: Vec<f64> = (0..lab.cases.len())
            .map(|i| {
                let xs: Vec<f64> = r.iter().filter_map(|v| v.pass[i]).map(|b| b as u8 as f64).collect();
                if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
            })
            .collect();
        let mut tokens = 0.0;
        for v in &vs {
            tokens += lab.tokens(v)?;
        }
        tokens /= vs.len() as f64;
        let (step_gain, step_p) = match per_case.last() {
            Some(prev) => {
                let d: Vec<f64> = prev.iter().zip(&fr).filter(|(a, b)| !a.is_nan() && !b.is_nan()).map(|(a, b)| b - a).collect();
                let c = tunegate_core::paired::clustered_difference(&d);
                (Some(c.estimate), Some(c.p_value))
            }
            None => (None, None),
        };
        per_case.push(fr);
        points.push(SweepPoint {
            k,
            shown,
            seeds,
            per_seed: r.iter().map(|v| rate_ci(&v.pass)).collect(),
            pooled,
            prompt_tokens: tokens,
            cost_per_call_usd: lab.call_usd(tokens),
            step_gain,
            step_p,
        });
    }
    // NaN (errored) cases out of the shape test.
    let clean: Vec<Vec<f64>> = per_case.iter().map(|v| v.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect()).collect();
    let (shape, gain, gain_p) = curve_shape(&points, &clean, o.alpha);
    Ok(SweepReport {
        prompt: src.id.clone(),
        provider: lab.provider_name(),
        cases: lab.cases.len() as u64,
        strategy: format!("{strategy:?}").to_lowercase(),
        examples_available: avail,
        tokenizer: lab.tokenizer(),
        points,
        shape,
        gain,
        gain_p,
        alpha: o.alpha,
        stopped,
        run_id: lab.run_id.clone().unwrap_or_default(),
    })
}

pub struct VaryOptions {
    /// Variants per random family (shot order, sentence order, label order).
    pub per_family: u64,
    pub paraphrases: Vec<String>,
}

/// The variants `vary` evaluates, with their family and description.
pub fn variations(lab: &Lab, src: &PromptSource, o: &VaryOptions) -> Vec<(PromptSource, String, String)> {
    let d = Dissected::new(src, shots_shown(lab, src));
    let mut out: Vec<(PromptSource, String, String)> = vec![(src.clone(), "original".into(), "the prompt as written".into())];
    let push = |v: Option<PromptSource>, fam: &str, desc: String, out: &mut Vec<(PromptSource, String, String)>| {
        if let Some(v) = v {
            // Two draws can coincide (few sentences): keep distinct texts only.
            if !out.iter().any(|(x, _, _)| x.template == v.template && x.system == v.system && x.labels == v.labels && x.shots.as_ref().map(|s| &s.order) == v.shots.as_ref().map(|s| &s.order)) {
                out.push((v, fam.into(), desc));
            }
        }
    };
    for i in 1..=o.per_family {
        push(d.shots_shuffled(&format!("{}~shots#{i}", src.id), 100 + i), "shots-order", format!("few-shot examples shuffled (seed {})", 100 + i), &mut out);
    }
    for i in 1..=o.per_family {
        push(d.reordered(&format!("{}~sentences#{i}", src.id), 200 + i), "sentence-order", format!("instruction sentences reordered (seed {})", 200 + i), &mut out);
    }
    for i in 1..=o.per_family {
        let v = labels_shuffled(src, lab.task().labels(), &format!("{}~labels#{i}", src.id), 300 + i);
        let desc = v.as_ref().and_then(|v| v.labels.clone()).map(|l| format!("labels listed as {}", l.join(", "))).unwrap_or_default();
        push(v, "label-order", desc, &mut out);
    }
    for style in ["compact", "loose", "bullets"] {
        let desc = match style {
            "compact" => "blank lines removed",
            "loose" => "a blank line between lines of text",
            _ => "`-` list markers as `*`",
        };
        push(reformatted(src, style, &format!("{}~{style}", src.id)), "format", desc.into(), &mut out);
    }
    for (i, p) in o.paraphrases.iter().enumerate() {
        push(d.paraphrased(&format!("{}~para#{}", src.id, i + 1), p), "paraphrase", format!("instruction paraphrased: \"{}\"", short(p, 80)), &mut out);
    }
    out
}

fn short(s: &str, n: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub async fn vary(lab: &mut Lab, src: &PromptSource, o: &VaryOptions, log: &dyn Fn(String)) -> Result<VaryReport, LabError> {
    let vars = variations(lab, src, o);
    if vars.len() < 2 {
        return Err(LabError::Input(format!("prompt `{}` offers nothing to vary (no examples, sentences, labels or formatting); pass --paraphrase TEXT", src.id)));
    }
    log(format!("{} variants of `{}`", vars.len(), src.id));
    let sources: Vec<PromptSource> = vars.iter().map(|v| v.0.clone()).collect();
    let r = lab.evaluate(&sources).await?;
    let results: Vec<(VariantResult, Vec<Option<bool>>)> = vars
        .iter()
        .zip(r)
        .map(|((v, fam, desc), res)| (VariantResult { id: v.id.clone(), family: fam.clone(), description: desc.clone(), rate: rate_ci(&res.pass) }, res.pass))
        .collect();
    let (min, max, range, sd, pooled, family_range, flips) = spread(&results, &lab.case_ids());
    Ok(VaryReport {
        prompt: src.id.clone(),
        provider: lab.provider_name(),
        cases: lab.cases.len() as u64,
        variants: results.into_iter().map(|x| x.0).collect(),
        min,
        max,
        range,
        sd,
        pooled,
        family_range,
        flipping_cases: flips.len() as u64,
        flips,
        stopped: None,
        run_id: lab.run_id.clone().unwrap_or_default(),
    })
}

/// Paraphrases of an instruction from a model, through the response cache
/// (asking again is free).
pub async fn paraphrase(provider: &Arc<dyn Provider>, spec: &ProviderSpec, store_path: &std::path::Path, instruction: &str, n: u64) -> Result<Vec<String>, LabError> {
    let mut store = Store::open(store_path).map_err(RunError::from)?;
    let mut out = vec![];
    for i in 0..n {
        let messages = vec![Message::new(
            "user",
            format!(
                "Rewrite the instruction below in different words. Keep its meaning, every rule and every label name exactly; change wording and sentence order only. Reply with the rewritten instruction and nothing else.\n\nInstruction:\n{instruction}"
            ),
        )];
        let mut params = spec.params.clone();
        params.temperature = Some(params.temperature.unwrap_or(0.9).max(0.7));
        params.seed = Some(1000 + i);
        params.max_tokens = Some(params.max_tokens.unwrap_or(0).max(400));
        params.stop.clear();
        params.choices = None;
        let key = cache_key(&provider.identity(), &params, &messages, i as u32);
        let text = match store.cache_get(&key).map_err(RunError::from)? {
            Some(c) => c.output,
            None => {
                let resp = provider.complete(&Request { messages, params }).await.map_err(|e| LabError::Input(format!("--paraphrase-with {}: {e}", provider.name())))?;
                store
                    .insert_results(&[], &[(key, provider.name().to_string(), CachedResponse { output: resp.output.clone(), prompt_tokens: resp.prompt_tokens, completion_tokens: resp.completion_tokens, cost_usd: resp.cost_usd, latency_ms: 0.0 })])
                    .map_err(RunError::from)?;
                resp.output
            }
        };
        let text = text.trim().to_string();
        if !text.is_empty() && !out.contains(&text) && text != instruction.trim() {
            out.push(text);
        }
    }
    Ok(out)
}

/// The latest stored report of each lab kind for a task, for the advisor.
pub fn latest_reports(store: &Store, task_name: &str) -> Result<(Option<MinimizeReport>, Option<SweepReport>, Option<VaryReport>), tunegate_store::StoreError> {
    let runs = store.list_runs(500)?;
    let find = |kind: &str| runs.iter().find(|r| r.kind == kind && r.task_name == task_name && r.meta.get("report").map(|v| !v.is_null()).unwrap_or(false)).map(|r| r.meta["report"].clone());
    Ok((
        find("ablation").and_then(|v| serde_json::from_value(v).ok()),
        find("sweep").and_then(|v| serde_json::from_value(v).ok()),
        find("variation").and_then(|v| serde_json::from_value(v).ok()),
    ))
}
