//! Paired statistics for before/after comparisons on the same cases.
//!
//! Two runs over one eval set are not independent samples: the same hard
//! cases are hard for both. Paired tests use that, so they detect smaller
//! differences than comparing two pass rates would, and they are honest
//! about what the discordant cases alone can show.

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// McNemar's exact test: `b` = cases that passed in A and failed in B,
/// `c` = failed in A and passed in B. Under "no difference" each
/// discordant case is a fair coin, so the two-sided p-value is
/// `min(1, 2 * P(X <= min(b, c)))` for X ~ Binomial(b + c, 1/2).
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // log pmf(0) = -n ln 2; pmf(i) = pmf(i-1) * (n - i + 1) / i, in logs.
    let mut logp = -(n as f64) * std::f64::consts::LN_2;
    let mut terms = Vec::with_capacity(k as usize + 1);
    terms.push(logp);
    for i in 1..=k {
        logp += ((n - i + 1) as f64).ln() - (i as f64).ln();
        terms.push(logp);
    }
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let cdf = m.exp() * terms.iter().map(|t| (t - m).exp()).sum::<f64>();
    (2.0 * cdf).min(1.0)
}

/// P(X >= k) for X ~ Binomial(n, 1/2): the one-sided exact McNemar
/// p-value for "B is worse" when `k` of `n` discordant cases regressed.
pub fn binomial_upper_tail(n: u64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    // log pmf(i) = ln C(n, i) - n ln 2, built up from pmf(n) = 2^-n downward.
    let mut logp = -(n as f64) * std::f64::consts::LN_2;
    let mut terms = vec![logp];
    for i in (k..n).rev() {
        // pmf(i) = pmf(i + 1) * (i + 1) / (n - i)
        logp += ((i + 1) as f64).ln() - ((n - i) as f64).ln();
        terms.push(logp);
    }
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (m.exp() * terms.iter().map(|t| (t - m).exp()).sum::<f64>()).min(1.0)
}

/// Resamples used by [`paired_bootstrap`]: enough that the 2.5% and 97.5%
/// percentiles are stable to about 0.002 on typical eval sets.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Percentile bootstrap of the mean of paired differences `d_i = B_i - A_i`
/// (resampling cases, so the pairing is kept), 95% interval, seeded.
pub fn paired_bootstrap(diffs: &[f64], resamples: usize, seed: u64) -> Interval {
    let n = diffs.len();
    if n == 0 {
        return Interval { estimate: 0.0, low: 0.0, high: 0.0 };
    }
    let estimate = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..n {
                s += diffs[rng.gen_range(0..n)];
            }
            s / n as f64
        })
        .collect();
    means.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let q = |p: f64| crate::stats::percentile(&means, p).unwrap_or(estimate);
    Interval { estimate, low: q(0.025), high: q(0.975) }
}

/// The error function by its everywhere-convergent series
/// erf(x) = 2/sqrt(pi) exp(-x^2) sum 2^n x^(2n+1) / (1*3*...*(2n+1)), whose
/// terms are all positive (no cancellation): accurate to ~1e-15 for |x| < 6;
/// beyond, erf is 1 to double precision.
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    if ax >= 6.0 {
        return x.signum();
    }
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0.0;
    while term > sum * 1e-17 {
        n += 1.0;
        term *= 2.0 * ax * ax / (2.0 * n + 1.0);
        sum += term;
    }
    let v = 2.0 / std::f64::consts::PI.sqrt() * (-ax * ax).exp() * sum;
    v.min(1.0) * x.signum()
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Clustered {
    /// Mean per-case difference in pass fraction (B - A).
    pub estimate: f64,
    /// Standard error with each case as a cluster of its repeats.
    pub se: f64,
    pub low: f64,
    pub high: f64,
    pub p_value: f64,
}

/// With `--repeat`, each case gives a pass fraction per run; the test is on
/// the per-case differences of those fractions (repeats of one case are
/// correlated, so the case is the unit: a cluster-robust standard error).
pub fn clustered_difference(diffs: &[f64]) -> Clustered {
    let n = diffs.len() as f64;
    if n < 2.0 {
        return Clustered { estimate: diffs.first().copied().unwrap_or(0.0), se: f64::NAN, low: f64::NAN, high: f64::NAN, p_value: 1.0 };
    }
    let mean = diffs.iter().sum::<f64>() / n;
    let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    let z = if se > 0.0 { mean / se } else { 0.0 };
    let p = if se > 0.0 { 2.0 * (1.0 - normal_cdf(z.abs())) } else if mean == 0.0 { 1.0 } else { 0.0 };
    Clustered { estimate: mean, se, low: mean - 1.959963984540054 * se, high: mean + 1.959963984540054 * se, p_value: p.clamp(0.0, 1.0) }
}

/// Cases needed for McNemar's test to detect a pass-rate difference `d`
/// with 80% power at two-sided `alpha`, given the share of discordant
/// cases `pd` (Connor 1987's approximation). None when it cannot be
/// estimated (no discordance or no difference).
pub fn mcnemar_sample_size(d: f64, pd: f64, alpha: f64) -> Option<u64> {
    let d = d.abs();
    if d <= 0.0 || pd <= 0.0 || pd < d {
        return None;
    }
    let za = inverse_normal(1.0 - alpha / 2.0);
    let zb = inverse_normal(0.8);
    let n = (za * pd.sqrt() + zb * (pd - d * d).sqrt()).powi(2) / (d * d);
    Some(n.ceil() as u64)
}

/// Inverse of the standard normal CDF by bisection (accurate to 1e-10).
pub fn inverse_normal(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The sign test on preferences (wins vs losses, ties dropped): the same
/// exact binomial test as McNemar's.
pub fn sign_test(wins: u64, losses: u64) -> f64 {
    mcnemar_exact(wins, losses)
}

/// A p-value as people read it: 4 decimals, scientific when tiny.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-300 {
        // Below what the normal approximation can resolve.
        "< 1e-300".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}
