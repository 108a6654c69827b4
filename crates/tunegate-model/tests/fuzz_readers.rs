//! Property tests of the binary readers over mutated inputs (issue 18): the
//! GGUF reader and the PEFT adapter reader (safetensors, checked against a
//! base model's shapes) return a value or an error, never panic.
//! `TUNEGATE_FUZZ_ITERS=10000 cargo test --release -p tunegate-model --test
//! fuzz_readers -- --nocapture` is the long run of BENCHMARKS.md.

#[path = "../../tunegate-core/tests/support/mutate.rs"]
mod mutate;

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tunegate_model::gemma3::{check_adapter, Config};
use tunegate_model::GgufFile;

/// A small GGUF written by hand: v3, two metadata keys (a string and an
/// array of strings) and two f32 tensors.
fn small_gguf() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, t: &str) {
        b.extend_from_slice(&(t.len() as u64).to_le_bytes());
        b.extend_from_slice(t.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "gemma3");
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    for t in ["<pad>", "a", "b"] {
        s(&mut b, t);
    }
    for (name, dims, off) in [("w.weight", [4u64, 2], 0u64), ("v.weight", [8, 1], 32)] {
        s(&mut b, name);
        b.extend_from_slice(&2u32.to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend((0..16).flat_map(|i| (i as f32).to_le_bytes()));
    b
}

#[test]
fn the_gguf_reader_never_panics() {
    let seed = small_gguf();
    let g = GgufFile::from_bytes(seed.clone(), "seed.gguf").expect("the seed is a valid GGUF");
    assert_eq!(g.tensors.len(), 2);
    mutate::fuzz("gguf", &[seed], |b| match GgufFile::from_bytes(b.to_vec(), "fuzz.gguf") {
        // Reading every tensor's data exercises the offsets too.
        Ok(g) => g.tensors.iter().all(|t| g.tensor_data(&t.name).is_ok()),
        Err(_) => false,
    });
}

fn gemma_270m() -> Config {
    Config { n_layer: 18, d_model: 640, n_head: 4, n_kv_head: 1, head_dim: 256, ffn_dim: 2048, vocab_size: 262144, context_length: 32768, rope_base_global: 1e6, rope_base_local: 1e4, sliding_window: 512, swa_pattern: 6, rms_eps: 1e-6, attn_scale: 0.0625 }
}

#[test]
fn the_adapter_reader_never_panics() {
    let mut m = HashMap::new();
    let a = "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight";
    let b = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight";
    m.insert(a.to_string(), Tensor::from_vec(vec![0.5f32; 2 * 640], (2, 640), &Device::Cpu).unwrap());
    m.insert(b.to_string(), Tensor::from_vec(vec![0.25f32; 256 * 2], (256, 2), &Device::Cpu).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("adapter_model.safetensors");
    candle_core::safetensors::save(&m, &st).unwrap();
    let seed = std::fs::read(&st).unwrap();
    let cfg = gemma_270m();
    assert!(check_adapter(&cfg, &st, 2, &candle_core::safetensors::load_buffer(&seed, &Device::Cpu).unwrap()).is_ok());
    mutate::fuzz("peft-adapter", &[seed], |bytes| match candle_core::safetensors::load_buffer(bytes, &Device::Cpu) {
        Ok(t) => check_adapter(&cfg, Path::new("fuzz.safetensors"), 2, &t).is_ok(),
        Err(_) => false,
    });
}
