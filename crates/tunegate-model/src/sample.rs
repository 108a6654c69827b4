//! Sampling: greedy, temperature, top-k, top-p, seeded.

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (the most likely token; the lowest id on ties).
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: rand_chacha::ChaCha8Rng,
}

/// log-softmax of one row, in f64 for stability.
pub fn log_probs(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| ((l as f64) - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| ((l as f64) - lse) as f32).collect()
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log(sum(exp(logits))): what a log-probability subtracts. Computed at
/// every decoding step of every sequence over the whole vocabulary, so
/// with a vectorized exp ([`crate::numerics::sum_exp`]).
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    max as f64 + crate::numerics::sum_exp(logits, max).ln()
}

/// The log-probability of `id` under the distribution of `logits`.
pub fn logprob(logits: &[f32], id: u32) -> f32 {
    ((logits[id as usize] as f64) - log_sum_exp(logits)) as f32
}

/// The `n` most likely tokens under the unmodified distribution, with
/// their log-probabilities, best first (ties to the lower id).
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let lse = log_sum_exp(logits);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &l) in logits.iter().enumerate() {
        if best.len() == n && l <= best[n - 1].1 {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(n);
    }
    best.into_iter().map(|(i, l)| (i, ((l as f64) - lse) as f32)).collect()
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token; returns it with its log-probability under the
    /// model's unmodified distribution (what OpenAI's `logprobs` reports).
    pub fn sample(&mut self, logits: &[f32]) -> (u32, f32) {
        let lp = |id: u32| logprob(logits, id);
        if self.params.temperature <= 0.0 {
            let id = argmax(logits);
            return (id, lp(id));
        }
        let t = self.params.temperature as f64;
        let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l as f64 / t)).collect();
        cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            cand.truncate(k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.params.top_p.filter(|&p| p > 0.0 && p < 1.0) {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        let r: f64 = self.rng.gen();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if r < acc {
                return (cand[i].0, lp(cand[i].0));
            }
        }
        let id = cand[probs.len() - 1].0;
        (id, lp(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = vec![0.1, 2.0, 2.0, -1.0];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&logits).0, 1, "ties go to the lowest id");
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed, ..Default::default() });
            (0..50).map(|_| s.sample(&logits).0).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: Some(1), ..Default::default() });
        assert!((0..20).all(|_| s.sample(&logits).0 == 1));
        let lp = log_probs(&logits);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn the_fast_log_probability_agrees_with_the_exact_one() {
        // A vocabulary-sized row with a wide range, plus a tail under 16.
        let logits: Vec<f32> = (0..262_147u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) % 4000) as f32 * 0.01 - 25.0).collect();
        let exact = log_probs(&logits);
        for id in [0u32, 7, 131_071, 262_146] {
            assert!((logprob(&logits, id) - exact[id as usize]).abs() < 1e-5, "{id}");
        }
        for (id, lp) in top_logprobs(&logits, 3) {
            assert!((lp - exact[id as usize]).abs() < 1e-5);
        }
    }
}
