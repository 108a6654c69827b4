//! Statistics for reports: intervals that stay honest on small eval sets.

use serde::Serialize;
use std::collections::BTreeMap;

/// The 95% Wilson score interval for `k` successes in `n` trials. Unlike the
/// normal approximation it stays inside [0, 1] and is sane at 0% and 100%,
/// which is where small eval sets often sit.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959963984540054_f64;
    let n = n as f64;
    let p = k as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Percentile by linear interpolation between closest ranks (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LabelMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_label: BTreeMap<String, LabelMetrics>,
    /// confusion[expected][predicted] = count; predictions outside the label
    /// set are counted under `(other)`.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    pub outside_label_set: u64,
    pub n: u64,
}

pub const OTHER: &str = "(other)";

/// Builds accuracy, per-label precision/recall/F1, macro-F1 and the
/// confusion matrix from (expected, predicted) pairs.
pub fn classification(labels: &[String], pairs: &[(String, Option<String>)]) -> ClassificationMetrics {
    let mut m = ClassificationMetrics { n: pairs.len() as u64, ..Default::default() };
    let mut correct = 0u64;
    for (e, p) in pairs {
        let p = p.clone().unwrap_or_else(|| OTHER.to_string());
        if p == OTHER {
            m.outside_label_set += 1;
        }
        if &p == e {
            correct += 1;
        }
        *m.confusion.entry(e.clone()).or_default().entry(p).or_default() += 1;
    }
    m.accuracy = if pairs.is_empty() { 0.0 } else { correct as f64 / pairs.len() as f64 };
    let mut f1s = vec![];
    for l in labels {
        let tp = m.confusion.get(l).and_then(|r| r.get(l)).copied().unwrap_or(0);
        let support: u64 = m.confusion.get(l).map(|r| r.values().sum()).unwrap_or(0);
        let predicted: u64 = m.confusion.values().map(|r| r.get(l).copied().unwrap_or(0)).sum();
        let precision = if predicted == 0 { 0.0 } else { tp as f64 / predicted as f64 };
        let recall = if support == 0 { 0.0 } else { tp as f64 / support as f64 };
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        // Labels absent from the eval set say nothing; keep them out of macro-F1.
        if support > 0 {
            f1s.push(f1);
        }
        m.per_label.insert(l.clone(), LabelMetrics { precision, recall, f1, support });
    }
    m.macro_f1 = if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 };
    m
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FieldMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// Aggregates per-field outcomes (`tp`, `fp`, `fn`, `fp+fn`, `tn`) into
/// per-field precision/recall/F1 (micro over cases).
pub fn field_metrics<'a>(outcomes: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, FieldMetrics> {
    let mut m: BTreeMap<String, FieldMetrics> = BTreeMap::new();
    for (field, o) in outcomes {
        let e = m.entry(field.to_string()).or_default();
        match o {
            "tp" => e.tp += 1,
            "fp" => e.fp += 1,
            "fn" => e.fn_ += 1,
            "fp+fn" => {
                e.fp += 1;
                e.fn_ += 1
            }
            _ => {}
        }
    }
    for e in m.values_mut() {
        e.precision = if e.tp + e.fp == 0 { 1.0 } else { e.tp as f64 / (e.tp + e.fp) as f64 };
        e.recall = if e.tp + e.fn_ == 0 { 1.0 } else { e.tp as f64 / (e.tp + e.fn_) as f64 };
        e.f1 = if e.precision + e.recall == 0.0 { 0.0 } else { 2.0 * e.precision * e.recall / (e.precision + e.recall) };
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference() {
        // Reference: statsmodels proportion_confint(8, 10, method="wilson").
        let (lo, hi) = wilson(8, 10);
        assert!((lo - 0.4901625).abs() < 1e-6, "{lo}");
        assert!((hi - 0.9433178).abs() < 1e-6, "{hi}");
        let (lo, hi) = wilson(0, 20);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611251).abs() < 1e-6, "{hi}");
    }

    #[test]
    fn percentile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert!((percentile(&v, 0.95).unwrap() - 3.85).abs() < 1e-12);
    }

    #[test]
    fn classification_metrics() {
        let labels: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let pairs = vec![
            ("a".to_string(), Some("a".to_string())),
            ("a".to_string(), Some("b".to_string())),
            ("b".to_string(), Some("b".to_string())),
            ("b".to_string(), None),
        ];
        let m = classification(&labels, &pairs);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.outside_label_set, 1);
        assert_eq!(m.per_label["a"].precision, 1.0);
        assert_eq!(m.per_label["a"].recall, 0.5);
        assert_eq!(m.per_label["b"].precision, 0.5);
        assert_eq!(m.confusion["b"][OTHER], 1);
    }
}
