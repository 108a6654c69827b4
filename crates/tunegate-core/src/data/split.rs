//! `tunegate data split`: a deterministic, stratified split of the examples
//! into train / validation (and eval, when the task has no eval set).
//!
//! Why clusters: if two near-identical examples land on both sides, the
//! validation (or eval) score measures recall of a training example, not
//! generalisation. So the unit that is assigned is the near-duplicate
//! cluster ([`super::near::clusters`]), never a single example.
//!
//! The algorithm, fixed so the same seed always gives the same files:
//! 1. leave out lines that cannot train (malformed, no expected output, an
//!    empty input) and examples that match a case of the task's eval set
//!    (leakage), each reported with its reason;
//! 2. cluster the rest; each cluster's stratum is its most frequent expected
//!    label (classification; ties go to the first label in sorted order), or
//!    one stratum for other kinds;
//! 3. per stratum (in sorted order), shuffle its clusters with ChaCha8 seeded
//!    by `seed`, then fill eval, then validation, up to their rounded shares of
//!    the stratum, with clusters that fit whole; everything else is train.
//!
//! Files keep each example's original JSONL line verbatim (CSV rows become
//! JSON objects), in source order.

use super::check::{label_counts, LabelCount};
use super::near::{clusters, Similarity};
use super::DataError;
use crate::dataset::{load_cases_tolerant, value_text, Case};
use crate::error::InputError;
use crate::scorers::normalize_label;
use crate::task::{Task, TaskKind};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct SplitOptions {
    /// Share of each stratum for validation (0..1).
    pub validation: f64,
    /// Share for an eval side; `None` when the task has its own eval set.
    pub eval: Option<f64>,
    pub seed: u64,
    pub near_threshold: f64,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions { validation: 0.1, eval: None, seed: 7, near_threshold: super::near::DEFAULT_NEAR_THRESHOLD }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitSide {
    /// `train`, `validation` or `eval`.
    pub name: String,
    /// The JSONL lines to write, in source order.
    #[serde(skip)]
    pub lines: Vec<String>,
    /// The source line of each example, in the same order.
    pub source_lines: Vec<usize>,
    pub labels: Vec<LabelCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitResult {
    pub sides: Vec<SplitSide>,
    /// Near-duplicate clusters of two or more examples (kept whole).
    pub multi_clusters: usize,
    pub left_out: Vec<LeftOut>,
}

/// Splits the task's `data.examples`.
pub fn split_examples(task: &Task, opts: &SplitOptions) -> Result<SplitResult, DataError> {
    let path = task.examples_path().ok_or_else(|| {
        InputError::new(&task.path, "`data split` splits data.examples, which is not set").field("data.examples").hint("add `examples: data/examples.jsonl` under data")
    })?;
    let load = load_cases_tolerant(&path)?;
    let is_csv = path.extension().map(|e| e.eq_ignore_ascii_case("csv")).unwrap_or(false);
    let src_lines: Vec<&str> = load.text.lines().collect();
    let mut left_out: Vec<LeftOut> = load
        .bad_lines
        .iter()
        .map(|e| LeftOut { line: e.line.unwrap_or(0), reason: format!("malformed: {}", e.message) })
        .collect();

    let mut usable: Vec<&Case> = vec![];
    for c in &load.cases {
        if c.expected.as_ref().map(|e| value_text(e).trim().is_empty()).unwrap_or(true) {
            left_out.push(LeftOut { line: c.line, reason: "no expected output".into() });
        } else if c.input_text().trim().is_empty() {
            left_out.push(LeftOut { line: c.line, reason: "empty input".into() });
        } else {
            usable.push(c);
        }
    }

    // Leakage: examples equal or near to a case of the task's eval set.
    if let Some(ev) = task.eval_path() {
        let eval = load_cases_tolerant(&ev)?;
        let mut texts: Vec<String> = usable.iter().map(|c| c.input_text()).collect();
        let mut answers: Vec<String> = usable.iter().map(|c| c.answer_text()).collect();
        let n = texts.len();
        let eval_cases: Vec<&Case> = eval.cases.iter().filter(|c| !c.input_text().trim().is_empty()).collect();
        texts.extend(eval_cases.iter().map(|c| c.input_text()));
        answers.extend(eval_cases.iter().map(|c| c.answer_text()));
        let eval_lines: Vec<usize> = eval_cases.iter().map(|c| c.line).collect();
        let sim = Similarity::build_cases(&texts, &answers, opts.near_threshold);
        let mut leaked: BTreeMap<usize, usize> = BTreeMap::new(); // example index -> eval line
        for g in &sim.groups {
            if let Some(e) = g.iter().find(|&&i| i >= n) {
                for &i in g.iter().filter(|&&i| i < n) {
                    leaked.entry(i).or_insert(eval_lines[e - n]);
                }
            }
        }
        for &(a, b, _) in &sim.pairs {
            for (x, y) in [(a, b), (b, a)] {
                if let Some(e) = sim.groups[y].iter().find(|&&i| i >= n) {
                    for &i in sim.groups[x].iter().filter(|&&i| i < n) {
                        leaked.entry(i).or_insert(eval_lines[e - n]);
                    }
                }
            }
        }
        for (&i, &el) in &leaked {
            left_out.push(LeftOut { line: usable[i].line, reason: format!("matches {}:{} (leakage)", ev.display(), el) });
        }
        let mut k = 0;
        usable.retain(|_| {
            k += 1;
            !leaked.contains_key(&(k - 1))
        });
    }
    left_out.sort_by_key(|l| l.line);

    // Clusters and their strata.
    let texts: Vec<String> = usable.iter().map(|c| c.input_text()).collect();
    let answers: Vec<String> = usable.iter().map(|c| c.answer_text()).collect();
    let comps = clusters(&texts, &answers, opts.near_threshold);
    let multi_clusters = comps.iter().filter(|c| c.len() > 1).count();
    let stratum = |comp: &[usize]| -> String {
        if task.kind() != TaskKind::Classification {
            return String::new();
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for &i in comp {
            *counts.entry(normalize_label(&usable[i].expected_text().unwrap_or_default())).or_default() += 1;
        }
        let max = counts.values().copied().max().unwrap_or(0);
        counts.into_iter().find(|(_, n)| *n == max).map(|(k, _)| k).unwrap_or_default()
    };
    let mut strata: BTreeMap<String, Vec<Vec<usize>>> = BTreeMap::new();
    for comp in comps {
        strata.entry(stratum(&comp)).or_default().push(comp);
    }

    // side: 0 train, 1 validation, 2 eval
    let mut side_of = vec![0usize; usable.len()];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    for comps in strata.values_mut() {
        comps.shuffle(&mut rng);
        let total: usize = comps.iter().map(|c| c.len()).sum();
        let eval_t = opts.eval.map(|e| (total as f64 * e).round() as usize).unwrap_or(0);
        let val_t = (total as f64 * opts.validation).round() as usize;
        let (mut n_eval, mut n_val) = (0usize, 0usize);
        for comp in comps.iter() {
            let s = comp.len();
            let side = if n_eval + s <= eval_t {
                n_eval += s;
                2
            } else if n_val + s <= val_t {
                n_val += s;
                1
            } else {
                0
            };
            for &i in comp {
                side_of[i] = side;
            }
        }
    }

    let mut names = vec!["train", "validation"];
    if opts.eval.is_some() {
        names.push("eval");
    }
    let labels = task.labels();
    let sides = names
        .iter()
        .enumerate()
        .map(|(si, name)| {
            let members: Vec<&Case> = (0..usable.len()).filter(|&i| side_of[i] == si).map(|i| usable[i]).collect();
            let lines = members
                .iter()
                .map(|c| if is_csv { case_json(c) } else { src_lines.get(c.line - 1).map(|l| l.trim().to_string()).unwrap_or_else(|| case_json(c)) })
                .collect();
            let counts = if task.kind() == TaskKind::Classification {
                label_counts(labels, &members.iter().map(|c| (*c).clone()).collect::<Vec<_>>())
            } else {
                vec![LabelCount { label: "(all)".into(), count: members.len() }]
            };
            SplitSide { name: name.to_string(), lines, source_lines: members.iter().map(|c| c.line).collect(), labels: counts }
        })
        .collect();
    Ok(SplitResult { sides, multi_clusters, left_out })
}

/// A case as one JSON object in the dataset format.
fn case_json(c: &Case) -> String {
    let mut o = Map::new();
    o.insert("id".into(), Value::String(c.id.clone()));
    let only_input = c.vars.len() == 1 && c.vars.contains_key("input");
    if only_input {
        o.insert("input".into(), c.vars["input"].clone());
    } else {
        o.insert("vars".into(), Value::Object(c.vars.clone()));
    }
    if let Some(e) = &c.expected {
        o.insert("expected".into(), e.clone());
    }
    if !c.tags.is_empty() {
        o.insert("tags".into(), serde_json::json!(c.tags));
    }
    Value::Object(o).to_string()
}
