//! A PEFT LoRA adapter written as a llama.cpp LoRA GGUF, so a model tuned
//! here also runs in llama.cpp (`--lora FILE`, llama-cpp-python
//! `lora_path`).
//!
//! The layout is the one llama.cpp's `convert_lora_to_gguf.py` writes:
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
//! and per adapted weight `<base tensor>.lora_a` (PEFT's A, [r, in]) and
//! `<base tensor>.lora_b` (PEFT's B, [out, r]), f32. GGUF lists dimensions
//! innermost first, so a row-major [rows, cols] matrix has dims [cols, rows].

use crate::ModelError;
use candle_core::Device;
use std::io::Write;
use std::path::Path;

/// GGUF tensor names of the projections PEFT names by module path.
const GGUF_NAMES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

const ALIGN: u64 = 32;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_kv_str(out: &mut Vec<u8>, k: &str, v: &str) {
    put_str(out, k);
    out.extend_from_slice(&8u32.to_le_bytes()); // GGUF_TYPE_STRING
    put_str(out, v);
}

fn put_kv_f32(out: &mut Vec<u8>, k: &str, v: f32) {
    put_str(out, k);
    out.extend_from_slice(&6u32.to_le_bytes()); // GGUF_TYPE_FLOAT32
    out.extend_from_slice(&v.to_le_bytes());
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraExport {
    pub tensors: usize,
    pub rank: usize,
    pub alpha: f32,
    pub bytes: u64,
}

/// Writes `adapter_dir` (PEFT: adapter_config.json + adapter_model.safetensors)
/// as a llama.cpp LoRA GGUF for the base model `base` (a Gemma 3 GGUF),
/// after checking every tensor against that base and the adapter's config.
/// The file is written to a temporary name and renamed.
pub fn export_peft_as_gguf(adapter_dir: &Path, base: &Path, out: &Path) -> Result<LoraExport, ModelError> {
    let cfg = crate::gemma3::Config::from_file(base)?;
    // The one architecture tunegate's base models have (Config reads Gemma 3).
    let architecture = "gemma3";
    let (r, alpha) = crate::gemma3::adapter_config(adapter_dir)?;
    let alpha = alpha as f32;
    let st = adapter_dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
    // Checked against the base before anything is written.
    let pairs = crate::gemma3::check_adapter(&cfg, &st, r, &tensors)?;
    // (gguf name, rows, cols, data), sorted for a stable file.
    let mut items: Vec<(String, usize, usize, Vec<f32>)> = vec![];
    for ((li, short), (a, b)) in &pairs {
        let module = crate::gemma3::TARGETS.iter().find(|(s, _)| s == short).map(|(_, m)| *m).unwrap_or_default();
        let base = GGUF_NAMES.iter().find(|(m, _)| *m == module).map(|(_, g)| *g).ok_or_else(|| ModelError::Format(format!("{}: module {module} has no GGUF name", st.display())))?;
        for (t, which) in [(a, "lora_a"), (b, "lora_b")] {
            let (rows, cols) = t.dims2().map_err(ModelError::candle)?;
            let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(ModelError::candle)?;
            items.push((format!("blk.{li}.{base}.weight.{which}"), rows, cols, data));
        }
    }
    items.sort_by(|x, y| x.0.cmp(&y.0));
    if items.is_empty() {
        return Err(ModelError::Format(format!("{}: no LoRA tensors", st.display())));
    }
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(items.len() as u64).to_le_bytes());
    head.extend_from_slice(&4u64.to_le_bytes());
    put_kv_str(&mut head, "general.architecture", architecture);
    put_kv_str(&mut head, "general.type", "adapter");
    put_kv_str(&mut head, "adapter.type", "lora");
    put_kv_f32(&mut head, "adapter.lora.alpha", alpha);
    let mut offset = 0u64;
    for (name, rows, cols, _) in &items {
        put_str(&mut head, name);
        head.extend_from_slice(&2u32.to_le_bytes());
        head.extend_from_slice(&(*cols as u64).to_le_bytes());
        head.extend_from_slice(&(*rows as u64).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
        head.extend_from_slice(&offset.to_le_bytes());
        offset += ((rows * cols * 4) as u64).div_ceil(ALIGN) * ALIGN;
    }
    while head.len() as u64 % ALIGN != 0 {
        head.push(0);
    }
    let tmp = out.with_extension("gguf.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| ModelError::Io(tmp.clone(), e))?);
    let io = |e| ModelError::Io(tmp.clone(), e);
    f.write_all(&head).map_err(io)?;
    let mut written = head.len() as u64;
    for (_, rows, cols, data) in &items {
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for x in data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let padded = ((rows * cols * 4) as u64).div_ceil(ALIGN) * ALIGN;
        bytes.resize(padded as usize, 0);
        f.write_all(&bytes).map_err(|e| ModelError::Io(tmp.clone(), e))?;
        written += padded;
    }
    f.flush().map_err(|e| ModelError::Io(tmp.clone(), e))?;
    drop(f);
    std::fs::rename(&tmp, out).map_err(|e| ModelError::Io(out.to_path_buf(), e))?;
    let rank = items.iter().find(|i| i.0.ends_with("lora_a")).map(|i| i.1).unwrap_or(0);
    Ok(LoraExport { tensors: items.len(), rank, alpha, bytes: written })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use std::collections::HashMap;

    #[test]
    fn writes_a_gguf_our_reader_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::from_vec((0..8 * 640).map(|i| i as f32 * 1e-3).collect::<Vec<f32>>(), (8, 640), &Device::Cpu).unwrap();
        let b = Tensor::from_vec((0..1024 * 8).map(|i| -(i as f32) * 1e-4).collect::<Vec<f32>>(), (1024, 8), &Device::Cpu).unwrap();
        let mut m = HashMap::new();
        m.insert("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight".to_string(), a);
        m.insert("base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight".to_string(), b);
        candle_core::safetensors::save(&m, dir.path().join("adapter_model.safetensors")).unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), r#"{"r": 8, "lora_alpha": 16}"#).unwrap();
        let out = dir.path().join("a.gguf");
        let Ok(base) = crate::resolve_model("gemma-3-270m") else {
            eprintln!("SKIPPED: the embedded model is absent (scripts/fetch-model.sh); the export needs it to check the adapter");
            return;
        };
        let e = export_peft_as_gguf(dir.path(), &base, &out).unwrap();
        assert_eq!((e.tensors, e.rank, e.alpha), (2, 8, 16.0));
        let g = crate::GgufFile::open(&out).unwrap();
        assert_eq!(g.get("general.type").and_then(|v| v.as_str()), Some("adapter"));
        assert_eq!(g.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
        assert_eq!(g.get("adapter.lora.alpha").and_then(|v| v.as_f64()), Some(16.0));
        let names: Vec<String> = g.tensors.iter().map(|t| format!("{} {:?}", t.name, t.dims)).collect();
        assert_eq!(names, vec!["blk.3.attn_q.weight.lora_a [640, 8]", "blk.3.attn_q.weight.lora_b [8, 1024]"]);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), e.bytes);
    }

    fn gemma_270m() -> crate::gemma3::Config {
        crate::gemma3::Config { n_layer: 18, d_model: 640, n_head: 4, n_kv_head: 1, head_dim: 256, ffn_dim: 2048, vocab_size: 262144, context_length: 32768, rope_base_global: 1e6, rope_base_local: 1e4, sliding_window: 512, swa_pattern: 6, rms_eps: 1e-6, attn_scale: 0.0625 }
    }

    fn pair(a: (usize, usize), b: (usize, usize), nan: bool) -> HashMap<String, Tensor> {
        let mut av = vec![0.01f32; a.0 * a.1];
        if nan {
            av[3] = f32::NAN;
        }
        let mut m = HashMap::new();
        m.insert("base_model.model.model.layers.2.mlp.down_proj.lora_A.weight".to_string(), Tensor::from_vec(av, a, &Device::Cpu).unwrap());
        m.insert("base_model.model.model.layers.2.mlp.down_proj.lora_B.weight".to_string(), Tensor::from_vec(vec![0.0f32; b.0 * b.1], b, &Device::Cpu).unwrap());
        m
    }

    #[test]
    fn adapters_are_checked_against_the_base_and_their_config() {
        let cfg = gemma_270m();
        let st = std::path::Path::new("adapter_model.safetensors");
        // down: 2048 in, 640 out.
        assert!(crate::gemma3::check_adapter(&cfg, st, 4, &pair((4, 2048), (640, 4), false)).is_ok());
        for (t, r, what) in [
            (pair((4, 640), (2048, 4), false), 4, "has shape [4, 640]"),
            (pair((4, 2048), (640, 4), false), 8, "r = 8"),
            (pair((4, 2048), (640, 4), true), 4, "non-finite"),
        ] {
            let e = crate::gemma3::check_adapter(&cfg, st, r, &t).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("adapter_model.safetensors"), "{e}");
        }
        let mut lone = pair((4, 2048), (640, 4), false);
        lone.retain(|k, _| k.contains("lora_A"));
        assert!(crate::gemma3::check_adapter(&cfg, st, 4, &lone).unwrap_err().to_string().contains("pairs"));
    }
}
