//! Preferences between two variants: blind side-by-side reviews by people
//! and pairwise verdicts by a judge model, and how far the two agree.
//!
//! The numbers follow one convention everywhere: the *win rate of B* is
//! B's wins over the decisive verdicts, `b / (a + b)`; ties and "both bad"
//! are reported beside it but carry no preference. That is the quantity the
//! sign test tests (ties dropped), so the interval and the p-value speak of
//! the same thing. The share with ties counted as half a win each,
//! `(b + ties/2) / n`, is reported too, because some teams read that one.

use crate::paired::sign_test;
use crate::stats::wilson;
use crate::paired::fmt_p;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A verdict about two variants, unblinded: which *run* won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    A,
    B,
    Tie,
    BothBad,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::A => "a",
            Verdict::B => "b",
            Verdict::Tie => "tie",
            Verdict::BothBad => "both_bad",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Some(match s {
            "a" => Verdict::A,
            "b" => Verdict::B,
            "tie" => Verdict::Tie,
            "both_bad" => Verdict::BothBad,
            _ => return None,
        })
    }

    /// For agreement: a judge only says A, B or tie, so a person's "both
    /// bad" is no preference, like a tie.
    pub fn preference(&self) -> Verdict {
        match self {
            Verdict::BothBad => Verdict::Tie,
            v => *v,
        }
    }
}

/// What a reviewer pressed, in screen positions: the blind choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    First,
    Second,
    Tie,
    BothBad,
}

impl Choice {
    pub fn as_str(&self) -> &'static str {
        match self {
            Choice::First => "first",
            Choice::Second => "second",
            Choice::Tie => "tie",
            Choice::BothBad => "both_bad",
        }
    }

    /// The run the choice points at, given which run was shown first.
    pub fn unblind(&self, a_first: bool) -> Verdict {
        match (self, a_first) {
            (Choice::First, true) | (Choice::Second, false) => Verdict::A,
            (Choice::First, false) | (Choice::Second, true) => Verdict::B,
            (Choice::Tie, _) => Verdict::Tie,
            (Choice::BothBad, _) => Verdict::BothBad,
        }
    }
}

/// Whether run A is shown first for a case: a hash of the session's seed
/// and the case id, so the order looks random to the reviewer, differs
/// from case to case, and is the same again after a resume.
pub fn a_first(seed: u64, case_id: &str) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(case_id.as_bytes());
    h.finalize()[0] & 1 == 0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub a: u64,
    pub b: u64,
    pub tie: u64,
    pub both_bad: u64,
}

impl Tally {
    pub fn from_verdicts<'a>(vs: impl IntoIterator<Item = &'a Verdict>) -> Tally {
        let mut t = Tally::default();
        for v in vs {
            match v {
                Verdict::A => t.a += 1,
                Verdict::B => t.b += 1,
                Verdict::Tie => t.tie += 1,
                Verdict::BothBad => t.both_bad += 1,
            }
        }
        t
    }

    pub fn n(&self) -> u64 {
        self.a + self.b + self.tie + self.both_bad
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PreferenceStats {
    pub n: u64,
    pub a_wins: u64,
    pub b_wins: u64,
    pub ties: u64,
    pub both_bad: u64,
    /// `b / (a + b)`; None without a decisive verdict.
    pub win_rate_b: Option<f64>,
    /// 95% Wilson interval of `win_rate_b`.
    pub ci95: (f64, f64),
    /// `(b + (ties + both_bad) / 2) / n`, for those who count a tie as half a win.
    pub win_rate_b_ties_half: Option<f64>,
    /// Exact two-sided sign test on `a` vs `b` (ties dropped).
    pub sign_test_p: f64,
    pub alpha: f64,
    /// `A`, `B` or `neither` (not significant at alpha).
    pub preferred: String,
    pub verdict: String,
}

/// Win rate, its interval, the sign test and the preferred variant.
pub fn preference_stats(t: &Tally, alpha: f64) -> PreferenceStats {
    let decisive = t.a + t.b;
    let n = t.n();
    let win_rate_b = (decisive > 0).then(|| t.b as f64 / decisive as f64);
    let ci95 = wilson(t.b, decisive);
    let p = sign_test(t.a, t.b);
    let (preferred, verdict) = if decisive == 0 {
        ("neither".to_string(), "no decisive verdict yet".to_string())
    } else if p < alpha && t.b > t.a {
        ("B".to_string(), format!("B is preferred ({} of {} decisive verdicts, sign test p = {} < {alpha})", t.b, decisive, fmt_p(p)))
    } else if p < alpha && t.a > t.b {
        ("A".to_string(), format!("A is preferred ({} of {} decisive verdicts, sign test p = {} < {alpha})", t.a, decisive, fmt_p(p)))
    } else {
        ("neither".to_string(), format!("no significant preference at alpha {alpha} (A {} vs B {}, sign test p = {})", t.a, t.b, fmt_p(p)))
    };
    PreferenceStats {
        n,
        a_wins: t.a,
        b_wins: t.b,
        ties: t.tie,
        both_bad: t.both_bad,
        win_rate_b,
        ci95,
        win_rate_b_ties_half: (n > 0).then(|| (t.b as f64 + (t.tie + t.both_bad) as f64 / 2.0) / n as f64),
        sign_test_p: p,
        alpha,
        preferred,
        verdict,
    }
}

/// How often a judge agrees with people on the same pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Pairs with both a human verdict and a judge verdict.
    pub n: u64,
    pub agree: u64,
    /// `agree / n`, with people's "both bad" read as a tie.
    pub rate: Option<f64>,
    pub ci95: (f64, f64),
    /// Pairs where the person was decisive (A or B), and how often the
    /// judge picked the same side: the agreement that matters most.
    pub decisive_n: u64,
    pub decisive_agree: u64,
    pub decisive_rate: Option<f64>,
    pub decisive_ci95: (f64, f64),
    /// Cohen's kappa over {A, B, tie}: agreement beyond chance (1 perfect,
    /// 0 no better than chance). None when undefined (one category only).
    pub kappa: Option<f64>,
}

/// Agreement of (human, judge) verdict pairs.
pub fn agreement(pairs: &[(Verdict, Verdict)]) -> Agreement {
    let cats = [Verdict::A, Verdict::B, Verdict::Tie];
    let n = pairs.len() as u64;
    let agree = pairs.iter().filter(|(h, j)| h.preference() == j.preference()).count() as u64;
    let decisive: Vec<&(Verdict, Verdict)> = pairs.iter().filter(|(h, _)| matches!(h, Verdict::A | Verdict::B)).collect();
    let decisive_agree = decisive.iter().filter(|(h, j)| h == j).count() as u64;
    let kappa = if n == 0 {
        None
    } else {
        let nf = n as f64;
        let po = agree as f64 / nf;
        let pe: f64 = cats
            .iter()
            .map(|c| {
                let h = pairs.iter().filter(|(x, _)| x.preference() == *c).count() as f64 / nf;
                let j = pairs.iter().filter(|(_, y)| y.preference() == *c).count() as f64 / nf;
                h * j
            })
            .sum();
        if (1.0 - pe).abs() < 1e-12 {
            None
        } else {
            Some((po - pe) / (1.0 - pe))
        }
    };
    Agreement {
        n,
        agree,
        rate: (n > 0).then(|| agree as f64 / n as f64),
        ci95: wilson(agree, n),
        decisive_n: decisive.len() as u64,
        decisive_agree,
        decisive_rate: (!decisive.is_empty()).then(|| decisive_agree as f64 / decisive.len() as f64),
        decisive_ci95: wilson(decisive_agree, decisive.len() as u64),
        kappa,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unblinding_follows_the_order() {
        assert_eq!(Choice::First.unblind(true), Verdict::A);
        assert_eq!(Choice::First.unblind(false), Verdict::B);
        assert_eq!(Choice::Second.unblind(false), Verdict::A);
        assert_eq!(Choice::BothBad.unblind(false), Verdict::BothBad);
    }

    #[test]
    fn the_order_is_stable_and_mixed() {
        let firsts: Vec<bool> = (0..200).map(|i| a_first(42, &format!("c{i}"))).collect();
        let again: Vec<bool> = (0..200).map(|i| a_first(42, &format!("c{i}"))).collect();
        assert_eq!(firsts, again);
        let n = firsts.iter().filter(|x| **x).count();
        assert!((70..130).contains(&n), "{n} of 200 shown A first");
        let other: Vec<bool> = (0..200).map(|i| a_first(43, &format!("c{i}"))).collect();
        assert_ne!(firsts, other);
    }

    /// Reference values computed independently with scipy 1.17.1 and
    /// statsmodels 0.15.0: `scipy.stats.binomtest(b, a + b, 0.5).pvalue`
    /// and `statsmodels.stats.proportion.proportion_confint(b, a + b,
    /// alpha=0.05, method="wilson")`.
    #[test]
    fn preference_stats_match_reference_vectors() {
        // (a wins, b wins, sign-test p, wilson low, wilson high)
        let vectors: [(u64, u64, f64, f64, f64); 6] = [
            (3, 12, 0.03515625, 0.5481455128483064, 0.9295245065301845),
            (10, 10, 1.0, 0.2992980081982123, 0.7007019918017877),
            (0, 7, 0.015625, 0.6456695649333125, 0.9999999999999999),
            (25, 40, 0.08168153394154003, 0.493842028060131, 0.7240499262499791),
            (1, 0, 1.0, 0.0, 0.7934506856227627),
            (48, 52, 0.7643534344026676, 0.42316577765223967, 0.615354482419481),
        ];
        for (a, b, p, lo, hi) in vectors {
            let s = preference_stats(&Tally { a, b, tie: 2, both_bad: 1 }, 0.05);
            assert!((s.sign_test_p - p).abs() < 1e-12, "{a}/{b}: p {} vs {p}", s.sign_test_p);
            assert!((s.ci95.0 - lo).abs() < 1e-9 && (s.ci95.1 - hi).abs() < 1e-9, "{a}/{b}: {:?} vs {lo} {hi}", s.ci95);
            assert!((s.win_rate_b.unwrap() - b as f64 / (a + b) as f64).abs() < 1e-15);
        }
        let s = preference_stats(&Tally { a: 3, b: 12, tie: 4, both_bad: 1 }, 0.05);
        assert_eq!(s.n, 20);
        assert_eq!(s.preferred, "B");
        assert!((s.win_rate_b_ties_half.unwrap() - 0.725).abs() < 1e-12);
        assert_eq!(preference_stats(&Tally { a: 12, b: 3, tie: 0, both_bad: 0 }, 0.05).preferred, "A");
        assert_eq!(preference_stats(&Tally { a: 25, b: 40, tie: 0, both_bad: 0 }, 0.05).preferred, "neither");
        assert_eq!(preference_stats(&Tally::default(), 0.05).win_rate_b, None);
    }

    /// Kappa reference: statsmodels `proportion_confint(6, 10, method="wilson")`
    /// = (0.31267376973365824, 0.8318196702937638); kappa by its definition
    /// in numpy = 0.375 for these ten pairs.
    #[test]
    fn agreement_matches_reference() {
        use Verdict::*;
        let h = [A, B, Tie, A, B, Tie, A, A, B, B];
        let j = [A, B, Tie, B, B, A, A, Tie, B, A];
        let pairs: Vec<(Verdict, Verdict)> = h.into_iter().zip(j).collect();
        let g = agreement(&pairs);
        assert_eq!((g.n, g.agree), (10, 6));
        assert!((g.kappa.unwrap() - 0.375).abs() < 1e-12, "{:?}", g.kappa);
        assert!((g.ci95.0 - 0.31267376973365824).abs() < 1e-9 && (g.ci95.1 - 0.8318196702937638).abs() < 1e-9);
    }

    #[test]
    fn agreement_counts_both_bad_as_tie() {
        use Verdict::*;
        let pairs = [(A, A), (B, B), (BothBad, Tie), (A, B), (Tie, A)];
        let g = agreement(&pairs);
        assert_eq!((g.n, g.agree), (5, 3));
        assert_eq!((g.decisive_n, g.decisive_agree), (3, 2));
    }
}
