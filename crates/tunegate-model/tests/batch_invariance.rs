//! A sequence's output is a function of its prompt and parameters alone:
//! the same tokens and the same log-probabilities, bit for bit, whether it
//! runs alone or shares its forward calls with others, however its prompt
//! is split into chunks and whether it starts from a cached prefix.
//!
//! Why it matters: continuous batching makes which sequences share a call
//! depend on timing, and llama.cpp's kernels change with the rows of a call
//! (numerics::Regime). Before rows chose their kernels from their own
//! sequence, two runs of the same eval gave 64 and 65 of 177 correct.

mod common;

use candle_core::{Device, Tensor};
use tunegate_model::engine::Decoder;
use tunegate_model::gemma3::Config;
use tunegate_model::{GenParams, Generation, LocalModel};

/// Prompts that exercise each kernel choice: under 8 tokens (vec_dot
/// products), 8..63 (tiled products, per-row attention), 64 and more
/// (tiled attention), over llama.cpp's 512-row micro-batch with a short
/// tail, and three sharing a long prefix (the prefix cache).
fn prompts(m: &LocalModel) -> Vec<Vec<u32>> {
    let shared = "Classify the support message as billing, outage or other. Examples: \
                  'my card was charged twice' -> billing; 'the site is down again' -> outage; \
                  'where is your office' -> other; 'the invoice shows the wrong VAT number' -> billing; \
                  'login page times out for everyone' -> outage. Message: ";
    let long: String = (0..60).map(|i| format!("item {i} is {} units; ", i * 7 % 13)).collect();
    let mut p: Vec<Vec<u32>> = [
        "Hi".to_string(),
        "Translate to French: the weather is nice today and the sun is shining on the".to_string(),
        format!("{shared}'I was billed for a plan I cancelled' ->"),
        format!("{shared}'nothing loads since this morning' ->"),
        format!("{shared}'do you sell gift cards' ->"),
        long,
    ]
    .iter()
    .map(|t| m.encode(t))
    .collect();
    // Over one micro-batch by 33 tokens (p[5]) and by 8: the tail is
    // computed as a short call, whatever chunks it arrives in.
    let mut over = p[5].clone();
    over.truncate(520);
    p.push(over);
    let lens: Vec<usize> = p.iter().map(Vec::len).collect();
    assert!(lens[0] < 8 && (8..64).contains(&lens[1]) && lens[2] >= 64 && lens[5] > 512 + 8, "{lens:?}");
    p
}

fn params(seed: u64) -> GenParams {
    let mut g = GenParams { max_tokens: 10, top_logprobs: 3, ..Default::default() };
    g.sampling.seed = seed;
    g
}

fn bits(g: &Generation) -> (Vec<u32>, Vec<u32>, Vec<Vec<(u32, u32)>>) {
    (g.tokens.clone(), g.logprobs.iter().map(|x| x.to_bits()).collect(), g.top_logprobs.iter().map(|t| t.iter().map(|&(i, l)| (i, l.to_bits())).collect()).collect())
}

/// Continuous batching: sequences admitted `every` steps apart in `order`,
/// `budget` prompt tokens per step beside the decoding ones.
fn staggered(m: &LocalModel, ps: &[Vec<u32>], order: &[usize], every: usize, budget: usize) -> Vec<Generation> {
    let mut d = Decoder::default();
    let mut out: Vec<Option<Generation>> = vec![None; ps.len()];
    let mut next = 0;
    let mut step = 0;
    while next < order.len() || !d.is_empty() {
        if next < order.len() && step % every == 0 {
            let i = order[next];
            for r in m.admit(&mut d, vec![(i as u64, ps[i].clone(), params(i as u64))]) {
                r.unwrap();
            }
            next += 1;
        }
        for (k, g) in m.step(&mut d, budget, &mut |_, _, _| true).unwrap() {
            out[k as usize] = Some(g);
        }
        step += 1;
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn check(name: &str, alone: &[Generation], got: &[Generation]) {
    for (i, (a, g)) in alone.iter().zip(got).enumerate() {
        assert_eq!(bits(a), bits(g), "{name}: prompt {i} differs from its run alone ({:?} vs {:?})", a.text, g.text);
    }
}

fn arrangements(m: &LocalModel) {
    let ps = prompts(m);
    // Each alone, one after another (no prefix is shared between them).
    let alone: Vec<Generation> = ps.iter().enumerate().map(|(i, p)| m.generate_batch(&[(p.clone(), params(i as u64))]).unwrap().remove(0)).collect();
    assert!(alone.iter().all(|g| !g.tokens.is_empty()));
    let all: Vec<(Vec<u32>, GenParams)> = ps.iter().enumerate().map(|(i, p)| (p.clone(), params(i as u64))).collect();
    check("all at once (shared prefix computed first)", &alone, &m.generate_batch(&all).unwrap());
    let order: Vec<usize> = (0..ps.len()).collect();
    check("admitted 2 steps apart, 7 prompt tokens a step", &alone, &staggered(m, &ps, &order, 2, 7));
    let reverse: Vec<usize> = order.iter().rev().copied().collect();
    check("admitted together in reverse, 128 a step (prefix cache warm)", &alone, &staggered(m, &ps, &reverse, 1, 128));
    check("admitted 5 steps apart, 61 a step", &alone, &staggered(m, &ps, &[3, 6, 0, 4, 1, 5, 2], 5, 61));
}

#[test]
fn a_sequence_generates_the_same_alone_and_in_any_batch() {
    let Some(path) = common::model_path() else { return };
    arrangements(&LocalModel::load(&path).unwrap());
}

/// The same with a LoRA adapter (random, PEFT layout) on every module.
#[test]
fn with_an_adapter_too() {
    let Some(path) = common::model_path() else { return };
    let cfg = Config::from_file(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = 4;
    let mut tensors = std::collections::HashMap::new();
    for li in 0..cfg.n_layer {
        for (short, module) in tunegate_model::gemma3::TARGETS {
            let (inp, out) = cfg.module_dims(short).unwrap();
            let a = Tensor::randn(0f32, 0.05, (r, inp), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 0.05, (out, r), &Device::Cpu).unwrap();
            tensors.insert(format!("base_model.model.model.layers.{li}.{module}.lora_A.weight"), a);
            tensors.insert(format!("base_model.model.model.layers.{li}.{module}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), format!(r#"{{"r": {r}, "lora_alpha": {}}}"#, 2 * r)).unwrap();
    let m = LocalModel::load_with_adapter(&path, Some(dir.path())).unwrap();
    // The adapter changes the model (else this test would prove nothing new).
    let base = LocalModel::load(&path).unwrap();
    let p = m.encode("The capital of France is the city of");
    assert_ne!(m.generate_batch(&[(p.clone(), params(0))]).unwrap()[0].logprobs, base.generate_batch(&[(p, params(0))]).unwrap()[0].logprobs);
    drop(base);
    arrangements(&m);
}
