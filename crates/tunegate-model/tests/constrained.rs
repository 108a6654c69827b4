//! Constrained decoding to a label set (`GenParams::allowed`) on the real
//! model: the output is always one of the labels, labels that share a
//! prefix are told apart, sampling stays inside the set, and with one-token
//! labels greedy constrained decoding picks what likelihood scoring picks.

mod common;

use tunegate_model::engine::{GenParams, LocalModel};
use tunegate_model::sample::SamplingParams;

const PROMPTS: [&str; 6] = [
    "Message: I was charged twice for my order\nTeam:",
    "Message: The app crashes when I open settings\nTeam:",
    "Message: Where is my parcel? It is a week late\nTeam:",
    "Message: Can I change the email on my account?\nTeam:",
    "Message: I want my money back\nTeam:",
    "Message: hello\nTeam:",
];

fn allowed(m: &LocalModel, labels: &[&str]) -> Vec<Vec<u32>> {
    labels.iter().map(|l| m.tokenizer.encode(&format!(" {l}"), false, false)).collect()
}

#[test]
fn output_is_always_one_of_the_labels() {
    let Some(path) = common::model_path() else { return };
    let m = LocalModel::load(&path).unwrap();
    // "technical" is a prefix of "technical support" (token 8330 then 1894).
    let labels = ["billing", "technical support", "technical", "shipping", "other"];
    let seqs = allowed(&m, &labels);
    assert_eq!(seqs[1][0], seqs[2][0], "the test needs two labels sharing a first token");
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        for temperature in [0.0, 1.5] {
            let params = GenParams { max_tokens: 8, allowed: seqs.clone(), sampling: SamplingParams { temperature, seed: i as u64, ..Default::default() }, ..Default::default() };
            let g = m.generate(p, &params).unwrap();
            let at = seqs.iter().position(|s| *s == g.tokens).unwrap_or_else(|| panic!("{p:?} at t={temperature}: {:?} ({:?}) is not a label", g.tokens, g.text));
            assert_eq!(g.text.trim(), labels[at]);
            assert_eq!(g.finish_reason, "stop");
            assert_eq!(g.logprobs.len(), g.tokens.len());
            assert!(g.logprobs.iter().all(|&lp| lp <= 0.0 && lp.is_finite()));
            seen.insert(labels[at]);
        }
    }
    eprintln!("labels chosen: {seen:?}");
    assert!(seen.len() >= 2, "every prompt gave the same label: {seen:?}");
}

#[test]
fn greedy_with_one_token_labels_agrees_with_likelihood_scoring() {
    let Some(path) = common::model_path() else { return };
    let m = LocalModel::load(&path).unwrap();
    let labels = ["billing", "technical", "shipping", "account", "refund", "other"];
    let seqs = allowed(&m, &labels);
    assert!(seqs.iter().all(|s| s.len() == 1), "labels must be single tokens: {seqs:?}");
    for p in PROMPTS {
        let g = m.generate(p, &GenParams { max_tokens: 4, allowed: seqs.clone(), ..Default::default() }).unwrap();
        let scores = m.score_choices(&m.encode(p), &labels.iter().map(|l| format!(" {l}")).collect::<Vec<_>>()).unwrap();
        let best = (0..labels.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
        assert_eq!(g.tokens, seqs[best], "{p:?}: decode chose {:?}, scoring {:?} ({scores:?})", g.text, labels[best]);
    }
}

#[test]
fn batched_scoring_matches_one_at_a_time() {
    let Some(path) = common::model_path() else { return };
    let m = LocalModel::load(&path).unwrap();
    // Multi-token labels too, so the continuation pass runs batched.
    let labels: Vec<String> = ["billing", "technical support", "shipping and delivery", "other"].iter().map(|l| format!(" {l}")).collect();
    let jobs: Vec<(Vec<u32>, Vec<String>)> = PROMPTS.iter().map(|p| (m.encode(p), labels.clone())).collect();
    let batched = m.score_choices_batch(&jobs).unwrap();
    for ((p, job), b) in PROMPTS.iter().zip(&jobs).zip(&batched) {
        let one = m.score_choices(&job.0, &job.1).unwrap();
        // A call with 8 or more rows takes llama.cpp's other k-quant float
        // path (as llama.cpp would for the same batch), and this network
        // amplifies last-bit differences: up to ~0.3 nats measured.
        for ((x, y), l) in one.iter().zip(b).zip(&job.1) {
            assert!((x - y).abs() < 0.5, "{p:?} {l:?}: {one:?} vs batched {b:?}");
        }
    }
}
