//! The advisor's thresholds: every number its rules compare against, with
//! its default and the source of that default, and a task file's overrides
//! under `advise:`. A base module: the task file checks its `advise:` keys
//! here without reaching up into the advisor.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};


/// One advisor threshold: its name (the key under `advise:`), default,
/// meaning and where the default comes from.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ThresholdDef {
    pub name: &'static str,
    pub default: f64,
    pub meaning: &'static str,
    pub source: &'static str,
}

/// Every threshold the advisor uses. README.md reproduces this table.
pub const THRESHOLDS: &[ThresholdDef] = &[
    ThresholdDef { name: "min_eval_cases", default: 100.0, meaning: "eval cases needed to tell prompt variants apart", source: "binomial arithmetic: at 100 cases the 95% Wilson interval is about ±10 points at a 50% pass rate" },
    ThresholdDef { name: "min_readable_eval_cases", default: 30.0, meaning: "eval cases below which nothing can be read from a run (between this and min_eval_cases the intervals are wide, said so, and growing the set is the first step)", source: "binomial arithmetic: at 30 cases the 95% Wilson interval is about ±17 points at a 50% pass rate" },
    ThresholdDef { name: "min_expected_share", default: 0.95, meaning: "share of eval cases that must have an expected output", source: "tunegate default: a case without an expected output tests nothing" },
    ThresholdDef { name: "min_examples", default: 10.0, meaning: "clean examples below which the behaviour is not written down", source: "OpenAI fine-tuning guide: minimum 10 training examples" },
    ThresholdDef { name: "typical_examples", default: 50.0, meaning: "clean examples needed before FINE_TUNE (not just CONSIDER)", source: "OpenAI fine-tuning guide: clear improvements typically from 50 to 100 examples" },
    ThresholdDef { name: "min_examples_per_label", default: 10.0, meaning: "clean examples each label needs before tuning (classification)", source: "OpenAI's minimum of 10, applied per label (tunegate default)" },
    ThresholdDef { name: "max_leaked_cases", default: 0.0, meaning: "eval cases that may (nearly) appear in the examples without any further look", source: "tunegate default: any leakage is reported" },
    ThresholdDef { name: "max_leaked_share", default: 0.10, meaning: "share of eval cases leaking into the examples from which the data must be fixed before deciding, even when the pass rate on the other cases agrees", source: "tunegate default: beyond a tenth of the eval set the clean subset is a different eval set" },
    ThresholdDef { name: "max_conflicts", default: 0.0, meaning: "groups of (near-)same inputs with different expected outputs that need no further look", source: "tunegate default: any conflict is reported" },
    ThresholdDef { name: "max_conflict_share", default: 0.05, meaning: "share of examples in conflicting groups from which the data must be fixed first", source: "tunegate default: 5% noisy labels is the level label-noise studies start to see tuned accuracy drop" },
    ThresholdDef { name: "max_broken_share", default: 0.02, meaning: "share of cases with a malformed line or an expected output that breaks the contract from which the data must be fixed first", source: "tunegate default" },
    ThresholdDef { name: "max_duplicate_share", default: 0.05, meaning: "share of examples that are exact or near duplicates allowed", source: "tunegate default: duplicates over-weight a few cases" },
    ThresholdDef { name: "target_pass_rate", default: 0.95, meaning: "pass rate at which the task is good enough", source: "tunegate default quality bar; set it per task" },
    ThresholdDef { name: "format_failure_share", default: 0.5, meaning: "share of failures that are format/contract failures for TIGHTEN_CONTRACT", source: "tunegate default: 'mostly' format failures" },
    ThresholdDef { name: "knowledge_failure_share", default: 0.3, meaning: "share of failures that are missing-knowledge failures for ADD_RETRIEVAL", source: "tunegate default" },
    ThresholdDef { name: "long_prompt_tokens", default: 1024.0, meaning: "prompt tokens from which a prompt counts as long", source: "OpenAI prompt caching starts at 1,024 tokens: where prompt length starts to cost" },
    ThresholdDef { name: "facts_share", default: 0.4, meaning: "share of a long prompt in reference facts that calls for retrieval", source: "tunegate default" },
    ThresholdDef { name: "few_shot_share", default: 0.4, meaning: "share of a long prompt in few-shot examples that tuning can absorb", source: "tunegate default" },
    ThresholdDef { name: "fragile_spread", default: 0.10, meaning: "pass-rate spread across prompt variants or repeats that counts as fragile", source: "tunegate default: 10 points" },
    ThresholdDef { name: "slice_gap", default: 0.15, meaning: "a tag slice this far below the overall pass rate is flagged", source: "tunegate default: 15 points" },
    ThresholdDef { name: "min_slice_cases", default: 10.0, meaning: "cases a tag slice needs before it is flagged", source: "tunegate default" },
    ThresholdDef { name: "stable_days", default: 30.0, meaning: "days without a contract change for a stable workflow", source: "tunegate default: one monthly release cycle" },
    ThresholdDef { name: "max_changes_30d", default: 3.0, meaning: "contract + expected-output revisions in 30 days above which requirements still move", source: "tunegate default" },
    ThresholdDef { name: "min_calls_per_month", default: 10000.0, meaning: "call volume of a repeated workflow worth tuning", source: "tunegate default" },
    ThresholdDef { name: "expensive_monthly_usd", default: 1000.0, meaning: "monthly cost of the best prompt that counts as expensive", source: "tunegate default" },
    ThresholdDef { name: "max_break_even_months", default: 6.0, meaning: "months within which tuning must pay for itself", source: "tunegate default" },
    ThresholdDef { name: "training_usd_per_mtok", default: 3.0, meaning: "training price, US$ per million trained tokens", source: "OpenAI price for fine-tuning gpt-4o-mini (2025): $3.00 / 1M training tokens" },
    ThresholdDef { name: "tuned_price_multiplier", default: 2.0, meaning: "price of a tuned model relative to its base", source: "OpenAI pricing (2025): tuned gpt-4o-mini $0.30/$1.20 vs base $0.15/$0.60 per 1M tokens" },
    ThresholdDef { name: "self_hosted_usd_per_hour", default: 0.10, meaning: "price of one machine serving the tuned embedded model (self-hosted line of the cost section)", source: "tunegate default: the order of a 2-vCPU cloud VM per hour; set what your machines cost" },
    ThresholdDef { name: "self_hosted_prefill_tok_s", default: 700.0, meaning: "prompt tokens per second one such machine reads", source: "measured: tunegate on 2 cores, Gemma 3 270M Q4_K_M, prefill 736-739 tok/s (BENCHMARKS.md)" },
    ThresholdDef { name: "self_hosted_decode_tok_s", default: 160.0, meaning: "completion tokens per second one such machine writes under load", source: "measured: `tunegate serve` on 2 cores with 8 clients, 159-163 tok/s (BENCHMARKS.md)" },
    ThresholdDef { name: "epochs", default: 3.0, meaning: "training epochs for the cost estimate when tune.epochs is unset", source: "OpenAI's default of 3 epochs for small data sets" },
];

/// The thresholds in force: defaults with the task's overrides applied.
#[derive(Debug, Clone)]
pub struct Thresholds {
    values: BTreeMap<&'static str, f64>,
    overridden: BTreeSet<&'static str>,
}

impl Thresholds {
    /// Applies `advise:` overrides; an unknown key or a negative value is an
    /// error naming the key.
    pub fn new(overrides: Option<&BTreeMap<String, f64>>) -> Result<Thresholds, String> {
        let mut values: BTreeMap<&'static str, f64> = THRESHOLDS.iter().map(|t| (t.name, t.default)).collect();
        let mut overridden = BTreeSet::new();
        for (k, v) in overrides.into_iter().flatten() {
            let Some(def) = THRESHOLDS.iter().find(|t| t.name == k) else {
                return Err(format!("unknown advisor threshold `{k}` (known: {})", THRESHOLDS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")));
            };
            if !v.is_finite() || *v < 0.0 {
                return Err(format!("advisor threshold `{k}` must be a non-negative number, got {v}"));
            }
            values.insert(def.name, *v);
            overridden.insert(def.name);
        }
        Ok(Thresholds { values, overridden })
    }

    pub fn get(&self, name: &str) -> f64 {
        *self.values.get(name).unwrap_or_else(|| panic!("advisor threshold `{name}` is not in THRESHOLDS"))
    }

    /// Every threshold with its value in force, for the report.
    pub fn report(&self) -> Vec<ThresholdValue> {
        THRESHOLDS
            .iter()
            .map(|t| ThresholdValue { name: t.name.into(), value: self.get(t.name), default: t.default, overridden: self.overridden.contains(t.name), source: t.source.into() })
            .collect()
    }
}


#[derive(Debug, Clone, Serialize)]
pub struct ThresholdValue {
    pub name: String,
    pub value: f64,
    pub default: f64,
    pub overridden: bool,
    pub source: String,
}
