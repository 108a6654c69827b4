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
use candle_core::{DType, Device};
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
/// as a llama.cpp LoRA GGUF for a base model of `architecture` (`gemma3`).
/// The file is written to a temporary name and renamed.
pub fn export_peft_as_gguf(adapter_dir: &Path, architecture: &str, out: &Path) -> Result<LoraExport, ModelError> {
    let cfg_path = adapter_dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io(cfg_path.clone(), e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", cfg_path.display())))?;
    let r = v["r"].as_f64().ok_or_else(|| ModelError::Format(format!("{}: no `r`", cfg_path.display())))?;
    let alpha = v["lora_alpha"].as_f64().unwrap_or(r) as f32;
    let st = adapter_dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
    // (gguf name, rows, cols, data), sorted for a stable file.
    let mut items: Vec<(String, usize, usize, Vec<f32>)> = vec![];
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for k in keys {
        let (stem, which) = match (k.strip_suffix(".lora_A.weight"), k.strip_suffix(".lora_B.weight")) {
            (Some(s), _) => (s, "lora_a"),
            (_, Some(s)) => (s, "lora_b"),
            _ => continue,
        };
        let rest = stem.split(".layers.").nth(1).ok_or_else(|| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
        let (li, module) = rest.split_once('.').ok_or_else(|| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
        let li: usize = li.parse().map_err(|_| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
        let base = GGUF_NAMES.iter().find(|(m, _)| *m == module).map(|(_, g)| *g).ok_or_else(|| ModelError::Format(format!("{}: module {module} has no GGUF name", st.display())))?;
        let t = tensors[k].to_dtype(DType::F32).map_err(ModelError::candle)?;
        let (rows, cols) = t.dims2().map_err(ModelError::candle)?;
        let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(ModelError::candle)?;
        items.push((format!("blk.{li}.{base}.weight.{which}"), rows, cols, data));
    }
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
        let e = export_peft_as_gguf(dir.path(), "gemma3", &out).unwrap();
        assert_eq!((e.tensors, e.rank, e.alpha), (2, 8, 16.0));
        let g = crate::GgufFile::open(&out).unwrap();
        assert_eq!(g.get("general.type").and_then(|v| v.as_str()), Some("adapter"));
        assert_eq!(g.get("adapter.type").and_then(|v| v.as_str()), Some("lora"));
        assert_eq!(g.get("adapter.lora.alpha").and_then(|v| v.as_f64()), Some(16.0));
        let names: Vec<String> = g.tensors.iter().map(|t| format!("{} {:?}", t.name, t.dims)).collect();
        assert_eq!(names, vec!["blk.3.attn_q.weight.lora_a [640, 8]", "blk.3.attn_q.weight.lora_b [8, 1024]"]);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), e.bytes);
    }
}
