//! Paired statistics against reference values.

use tunegate_core::paired::*;

#[test]
fn mcnemar_exact_matches_exact_binomial_reference() {
    // Reference: two-sided exact binomial test at p = 1/2 (scipy.stats.binomtest),
    // computed with exact rational arithmetic (Python fractions, math.comb).
    let cases: &[(u64, u64, f64)] = &[
        (0, 0, 1.0),
        (1, 0, 1.0),
        (5, 0, 0.0625),
        (3, 7, 0.34375),
        (10, 10, 1.0),
        (12, 3, 0.03515625),
        (30, 50, 0.03299261842647618),
        (2, 20, 0.00012111663818359375),
        (100, 130, 0.055613577781392386),
        (1000, 1100, 0.030720707864242296),
        (7000, 7300, 0.012403909154548374),
    ];
    for &(b, c, want) in cases {
        let got = mcnemar_exact(b, c);
        assert!((got - want).abs() < 1e-9, "b={b} c={c}: {got} vs {want}");
        assert_eq!(mcnemar_exact(c, b), got, "symmetric");
    }
}

#[test]
fn bootstrap_is_seeded_and_agrees_with_the_normal_interval_on_large_samples() {
    // 400 paired cases: 60 improvements, 30 regressions, the rest equal.
    let mut d = vec![0.0; 310];
    d.extend(std::iter::repeat(1.0).take(60));
    d.extend(std::iter::repeat(-1.0).take(30));
    let a = paired_bootstrap(&d, BOOTSTRAP_RESAMPLES, 7);
    assert_eq!(a, paired_bootstrap(&d, BOOTSTRAP_RESAMPLES, 7));
    assert_ne!(a, paired_bootstrap(&d, BOOTSTRAP_RESAMPLES, 8));
    assert!((a.estimate - 0.075).abs() < 1e-12);
    let c = clustered_difference(&d);
    // Normal interval: mean ± 1.96 sd/sqrt(n); the bootstrap percentile
    // interval of a mean converges to it.
    assert!((a.low - c.low).abs() < 0.006, "{a:?} vs {c:?}");
    assert!((a.high - c.high).abs() < 0.006, "{a:?} vs {c:?}");
    assert!(a.low < a.estimate && a.estimate < a.high);
}

#[test]
fn clustered_difference_matches_hand_computation() {
    // Per-case differences of pass fractions over 3 repeats.
    let d = [1.0 / 3.0, 0.0, 2.0 / 3.0, -1.0 / 3.0, 1.0];
    let c = clustered_difference(&d);
    let mean = (1.0 / 3.0 + 0.0 + 2.0 / 3.0 - 1.0 / 3.0 + 1.0) / 5.0;
    let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0;
    assert!((c.estimate - mean).abs() < 1e-12);
    assert!((c.se - (var / 5.0).sqrt()).abs() < 1e-12);
    // p from the normal distribution: z = mean/se.
    let z: f64 = mean / c.se;
    assert!((c.p_value - 2.0 * (1.0 - normal_cdf(z))).abs() < 1e-12);
    assert!((normal_cdf(1.959963984540054) - 0.975).abs() < 1e-6);
    assert!((inverse_normal(0.975) - 1.959963984540054).abs() < 1e-6);
}

#[test]
fn sample_size_for_power() {
    // 10% discordant, 4-point difference: Connor's formula.
    let n = mcnemar_sample_size(0.04, 0.10, 0.05).unwrap();
    let za = 1.959963984540054f64;
    let zb = 0.8416212335729143f64;
    let want = ((za * 0.10f64.sqrt() + zb * (0.10f64 - 0.0016).sqrt()).powi(2) / 0.0016).ceil() as u64;
    assert_eq!(n, want);
    assert!(mcnemar_sample_size(0.0, 0.1, 0.05).is_none());
}

#[test]
fn bootstrap_matches_scipy_within_monte_carlo_error() {
    // Reference: scipy 1.17.1, scipy.stats.bootstrap((d,), np.mean,
    // method="percentile", n_resamples=10000, random_state=0). Different
    // random streams, so the bounds agree to Monte Carlo error, not bits.
    let mut d = vec![0.0; 310];
    d.extend(std::iter::repeat(1.0).take(60));
    d.extend(std::iter::repeat(-1.0).take(30));
    let a = paired_bootstrap(&d, BOOTSTRAP_RESAMPLES, 0);
    assert!((a.low - 0.0275).abs() <= 0.005 && (a.high - 0.12).abs() <= 0.005, "{a:?} vs scipy (0.0275, 0.12)");
    let mut d2 = vec![0.0; 40];
    d2.extend(std::iter::repeat(1.0).take(7));
    d2.extend(std::iter::repeat(-1.0).take(3));
    let b = paired_bootstrap(&d2, BOOTSTRAP_RESAMPLES, 0);
    assert!((b.low - -0.04).abs() <= 0.02 && (b.high - 0.2).abs() <= 0.02, "{b:?} vs scipy (-0.04, 0.2)");
}
