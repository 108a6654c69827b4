//! Gemma 3 (text) inference on quantized GGUF weights, in plain candle
//! tensor code.
//!
//! Why our own file rather than candle-transformers' `quantized_gemma3`: that
//! one uses SiLU where Gemma 3 needs tanh-approximated GELU, builds 131,072
//! position RoPE tables per layer, fails on chunked prefill at a non-zero
//! position and ignores the sliding window on single-token steps.
//!
//! Design: the weights are immutable and shared; every sequence owns its
//! [`KvCache`]. One forward call takes several sequences at once, each with
//! any number of new tokens: the projections and the MLP run on all their
//! tokens together (the weights are read once per step, which is what makes
//! batched decoding pay), and attention runs per sequence.

use crate::ModelError;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base_global: f32,
    pub rope_base_local: f32,
    pub sliding_window: usize,
    /// Every `swa_pattern`-th layer is global; the others use the window.
    pub swa_pattern: usize,
    pub rms_eps: f64,
    pub attn_scale: f64,
}

impl Config {
    pub fn is_local(&self, layer: usize) -> bool {
        self.swa_pattern > 0 && (layer + 1) % self.swa_pattern != 0
    }
}


impl Config {
    /// The hyper-parameters of a Gemma 3 GGUF, from its metadata; an error
    /// naming what is missing for any other architecture.
    pub fn from_content(c: &gguf_file::Content, path: &Path) -> Result<Config, ModelError> {
        let arch = c.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if arch != "gemma3" {
            return Err(ModelError::Unsupported(format!("{}: architecture `{arch}`; tunegate runs gemma3 models", path.display())));
        }
        let need = |k: &str| md_u64(&c, &format!("gemma3.{k}")).ok_or_else(|| ModelError::Unsupported(format!("{}: missing metadata gemma3.{k}", path.display())));
        let n_head = need("attention.head_count")? as usize;
        let head_dim = md_u64(&c, "gemma3.attention.key_length").map(|x| x as usize).unwrap_or(need("embedding_length")? as usize / n_head);
        let embed_info = c.tensor_infos.get("token_embd.weight").ok_or_else(|| ModelError::Unsupported("missing tensor token_embd.weight".into()))?;
        let cfg = Config {
            n_layer: need("block_count")? as usize,
            d_model: need("embedding_length")? as usize,
            n_head,
            n_kv_head: md_u64(&c, "gemma3.attention.head_count_kv").unwrap_or(n_head as u64) as usize,
            head_dim,
            ffn_dim: need("feed_forward_length")? as usize,
            vocab_size: embed_info.shape.dims()[0],
            context_length: md_u64(&c, "gemma3.context_length").unwrap_or(32768) as usize,
            rope_base_global: md_f32(&c, "gemma3.rope.freq_base").unwrap_or(1_000_000.0),
            rope_base_local: md_f32(&c, "gemma3.rope.local.freq_base").unwrap_or(10_000.0),
            sliding_window: md_u64(&c, "gemma3.attention.sliding_window").unwrap_or(512) as usize,
            swa_pattern: 6,
            rms_eps: md_f32(&c, "gemma3.attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f64,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
        };
        Ok(cfg)
    }

    /// [`Config::from_content`] for a file.
    pub fn from_file(path: &Path) -> Result<Config, ModelError> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io(path.to_path_buf(), e))?;
        let c = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        Self::from_content(&c, path)
    }
}

struct Layer {
    wq: Proj,
    wk: Proj,
    wv: Proj,
    wo: Proj,
    gate: Proj,
    up: Proj,
    down: Proj,
    attn_norm: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    post_ffn_norm: Tensor,
}

/// A weight matrix [n, k] applied to activations [.., k].
///
/// Candle's fast x86 kernels (repacked tiles on AVX512-VNNI/AMX) need `k` to
/// be a multiple of 256. Gemma 3 270M's d_model is 640, so every layer weight
/// that reads the residual stream (q, k, v, gate, up) took the generic
/// per-block path: over half of all time in profiles. Those weights are
/// stored padded with zero columns to the next multiple of 256 (Q8_0 rows
/// gain zero blocks, byte for byte; Q5_0 becomes Q8_0 without loss first, see
/// [`q5_0_as_q8_0`]) and their input is padded with zeros, which leaves the
/// products unchanged. The fast kernels quantize activations per 256 values
/// (Q8_K) where the generic path and llama.cpp use blocks of 32 (Q8_0):
/// first-token logits move from ~0.8 to ~1.7 away from llama.cpp's at most,
/// greedy agreement stays at 13 of 24 prompts and the bundled example's
/// pass rate is unchanged (59/177), for 2.5x the eval throughput
/// (BENCHMARKS.md). `TUNEGATE_NO_REQUANT=1` keeps the file's tensors as
/// they are (the exact, slow path).
struct Proj {
    w: QMatMul,
    pad: usize,
}

impl Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pad == 0 {
            return self.w.forward(x);
        }
        self.w.forward(&x.pad_with_zeros(D::Minus1, 0, self.pad)?.contiguous()?)
    }
}

const PAD_TO: usize = 256;

/// Q5_0 as Q8_0 without loss: each 5-bit value x in -16..15 becomes the
/// 8-bit value x under the same scale. candle has no SIMD Q5_0 kernel, and
/// quantizing the dequantized weights afresh (scale max/127) would round
/// them away from the file's (and llama.cpp's) values.
fn q5_0_as_q8_0(t: &QTensor, device: &Device) -> Result<QTensor, ModelError> {
    let dims = t.shape().dims().to_vec();
    let data = t.data().map_err(ModelError::candle)?;
    let blocks = data.len() / 22;
    let mut out = vec![0u8; blocks * 34];
    for b in 0..blocks {
        let src = &data[b * 22..(b + 1) * 22];
        let dst = &mut out[b * 34..(b + 1) * 34];
        dst[..2].copy_from_slice(&src[..2]);
        let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
        for j in 0..16 {
            let lo = src[6 + j];
            let x0 = ((lo & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8)) as i32 - 16;
            let x1 = ((lo >> 4) | (((qh >> (j + 12)) & 0x10) as u8)) as i32 - 16;
            dst[2 + j] = x0 as i8 as u8;
            dst[2 + j + 16] = x1 as i8 as u8;
        }
    }
    drop(data);
    candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &out, dims, device).map_err(ModelError::candle)
}

/// The tensor with zero columns up to a multiple of [`PAD_TO`], and how
/// many were added (0: returned as it is).
fn pad_columns(t: QTensor, device: &Device, requant: bool) -> Result<(QTensor, usize), ModelError> {
    let (n, k) = t.shape().dims2().map_err(ModelError::candle)?;
    let kp = k.div_ceil(PAD_TO) * PAD_TO;
    if kp == k || !requant {
        return Ok((t, 0));
    }
    if t.dtype() == GgmlDType::Q8_0 {
        // 34-byte blocks of 32 values; a zero block (scale 0) is 32 zeros.
        let data = t.data().map_err(ModelError::candle)?;
        let (row_in, row_out) = (k / 32 * 34, kp / 32 * 34);
        let mut out = vec![0u8; n * row_out];
        for r in 0..n {
            out[r * row_out..r * row_out + row_in].copy_from_slice(&data[r * row_in..(r + 1) * row_in]);
        }
        drop(data);
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &out, vec![n, kp], device).map_err(ModelError::candle)?;
        return Ok((q, kp - k));
    }
    let deq = t.dequantize(device).map_err(ModelError::candle)?.pad_with_zeros(1, 0, kp - k).map_err(ModelError::candle)?;
    Ok((QTensor::quantize(&deq, GgmlDType::Q8_0).map_err(ModelError::candle)?, kp - k))
}

/// The loaded model. Cheap to share across threads behind an `Arc`.
pub struct Gemma3 {
    pub cfg: Config,
    embed: Arc<QTensor>,
    lm_head: Proj,
    layers: Vec<Layer>,
    out_norm: Tensor,
    device: Device,
    /// Per-layer ggml types as stored in the file, for `model info`.
    pub tensor_types: Vec<(String, String)>,
    /// LoRA adapters applied on top of the quantized weights:
    /// (layer, module) -> (A [r, in], B [out, r]), and alpha / r.
    lora: std::collections::BTreeMap<(usize, String), (Tensor, Tensor)>,
    lora_scale: f64,
}

/// The keys and values one sequence has seen, per layer: [1, n_kv, T, hd].
#[derive(Clone, Default)]
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache { k: vec![None; n_layer], v: vec![None; n_layer], len: 0 }
    }
    /// Tokens already in the cache (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Keeps the first `n` positions: a shared prompt prefix is computed once
    /// and every case continues from a truncated copy.
    pub fn truncate(&mut self, n: usize) -> candle_core::Result<()> {
        if n >= self.len {
            return Ok(());
        }
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            if let Some(x) = t.take() {
                *t = if n == 0 { None } else { Some(x.narrow(2, 0, n)?) };
            }
        }
        self.len = n;
        Ok(())
    }
}

/// One sequence's part of a forward call.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Which of the new tokens need logits: the last (generation) or all
    /// (log-likelihood of a continuation).
    pub all_logits: bool,
}

fn md_u64(c: &gguf_file::Content, k: &str) -> Option<u64> {
    c.metadata.get(k).and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)).or_else(|| v.to_i32().ok().map(|x| x as u64)))
}
fn md_f32(c: &gguf_file::Content, k: &str) -> Option<f32> {
    c.metadata.get(k).and_then(|v| v.to_f32().ok())
}

impl Gemma3 {
    /// Loads a Gemma 3 GGUF. Q5_0 weights are re-quantised to Q8_0 at load:
    /// candle has no SIMD kernel for Q5_0, and its fast k-quant kernels need
    /// input sizes divisible by 256, which 640 is not (measured: 5x faster).
    pub fn load(path: &Path) -> Result<Gemma3, ModelError> {
        // TUNEGATE_NO_REQUANT=1 keeps Q5_0 as stored: slower, but closer to
        // llama.cpp's numerics (for parity checks).
        let requant = std::env::var("TUNEGATE_NO_REQUANT").map(|v| v.is_empty() || v == "0").unwrap_or(true);
        Self::load_with(path, requant)
    }

    /// [`Self::load`] with the re-quantisation of Q5_0 weights chosen by the caller.
    pub fn load_with(path: &Path, requant: bool) -> Result<Gemma3, ModelError> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io(path.to_path_buf(), e))?;
        let c = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let cfg = Config::from_content(&c, path)?;
        let device = Device::Cpu;
        let mut tensor_types = vec![];
        let mut load_q = |name: &str| -> Result<QTensor, ModelError> {
            let t = c.tensor(&mut f, name, &device).map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))?;
            tensor_types.push((name.to_string(), format!("{:?}", t.dtype())));
            Ok(t)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut mm = |n: &str| -> Result<Proj, ModelError> {
                let t = load_q(&format!("{p}.{n}.weight"))?;
                let t = if requant && t.dtype() == GgmlDType::Q5_0 { q5_0_as_q8_0(&t, &device)? } else { t };
                let (t, pad) = pad_columns(t, &device, requant)?;
                let t = if requant && matches!(t.dtype(), GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q4_1) {
                    let deq = t.dequantize(&device).map_err(ModelError::candle)?;
                    QTensor::quantize(&deq, GgmlDType::Q8_0).map_err(ModelError::candle)?
                } else {
                    t
                };
                Ok(Proj { w: QMatMul::from_qtensor(t).map_err(ModelError::candle)?, pad })
            };
            let (wq, wk, wv, wo) = (mm("attn_q")?, mm("attn_k")?, mm("attn_v")?, mm("attn_output")?);
            let (gate, up, down) = (mm("ffn_gate")?, mm("ffn_up")?, mm("ffn_down")?);
            let mut norm = |n: &str| -> Result<Tensor, ModelError> { load_q(&format!("{p}.{n}.weight"))?.dequantize(&device).map_err(ModelError::candle) };
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                gate,
                up,
                down,
                attn_norm: norm("attn_norm")?,
                q_norm: norm("attn_q_norm")?,
                k_norm: norm("attn_k_norm")?,
                post_attn_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                post_ffn_norm: norm("post_ffw_norm")?,
            });
        }
        let out_norm = load_q("output_norm.weight")?.dequantize(&device).map_err(ModelError::candle)?;
        let embed = Arc::new(load_q("token_embd.weight")?);
        // Gemma ties the output head to the embedding. The head gets its
        // own copy padded to 768 columns when the layers are padded: at one
        // token per step (decode) the 262k x 640 head was over half the time
        // on candle's generic Q8_0 dot product, and the repacked kernels are
        // about 3x faster per weight. It costs a second copy of the table
        // (~214 MB); in batched eval, where the head runs on few rows, it
        // gained nothing measurable.
        let head_name = if c.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        let (head, pad) = pad_columns(load_q(head_name)?, &device, requant)?;
        let lm_head = if pad == 0 && head_name == "token_embd.weight" {
            Proj { w: QMatMul::from_arc(embed.clone()).map_err(ModelError::candle)?, pad: 0 }
        } else {
            Proj { w: QMatMul::from_qtensor(head).map_err(ModelError::candle)?, pad }
        };
        Ok(Gemma3 { cfg, embed, lm_head, layers, out_norm, device, tensor_types, lora: Default::default(), lora_scale: 0.0 })
    }

    /// Applies a PEFT LoRA adapter (adapter_config.json and
    /// adapter_model.safetensors in `dir`): each targeted projection becomes
    /// `W x + (alpha / r) B A x`, computed beside the quantized `W x`.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<(), ModelError> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io(cfg_path.clone(), e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", cfg_path.display())))?;
        let r = v["r"].as_f64().ok_or_else(|| ModelError::Format(format!("{}: no `r`", cfg_path.display())))?;
        let alpha = v["lora_alpha"].as_f64().unwrap_or(r);
        let st = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&st, &self.device).map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
        let mut lora = std::collections::BTreeMap::new();
        for (k, a) in &tensors {
            let Some(stem) = k.strip_suffix(".lora_A.weight") else { continue };
            let b = tensors.get(&format!("{stem}.lora_B.weight")).ok_or_else(|| ModelError::Format(format!("{}: {stem} has lora_A but no lora_B", st.display())))?;
            let rest = stem.split(".layers.").nth(1).ok_or_else(|| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
            let (li, module) = rest.split_once('.').ok_or_else(|| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
            let li: usize = li.parse().map_err(|_| ModelError::Format(format!("{}: unexpected key {k}", st.display())))?;
            let short = crate::lora::TARGETS.iter().find(|(_, m)| *m == module).map(|(s, _)| s.to_string()).ok_or_else(|| ModelError::Format(format!("{}: unknown module {module}", st.display())))?;
            if li >= self.cfg.n_layer {
                return Err(ModelError::Format(format!("{}: layer {li} does not exist in this model", st.display())));
            }
            lora.insert((li, short), (a.to_dtype(DType::F32).map_err(ModelError::candle)?, b.to_dtype(DType::F32).map_err(ModelError::candle)?));
        }
        if lora.is_empty() {
            return Err(ModelError::Format(format!("{}: no LoRA tensors", st.display())));
        }
        self.lora = lora;
        self.lora_scale = alpha / r;
        Ok(())
    }

    /// A projection with its adapter, when there is one.
    fn proj(&self, li: usize, name: &str, w: &Proj, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = w.forward(x)?;
        match self.lora.get(&(li, name.to_string())) {
            None => Ok(y),
            Some((a, b)) => y + (x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * self.lora_scale)?,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer)
    }

    /// RoPE tables (cos, sin) of shape [len, head_dim/2] for positions
    /// start..start+len: computed per call, so there is no table to size.
    fn rope(&self, base: f32, start: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf(2.0 * i as f32 / self.cfg.head_dim as f32)).collect();
        let mut ang = Vec::with_capacity(len * half);
        for p in start..start + len {
            for f in &inv {
                ang.push(p as f32 * f);
            }
        }
        let a = Tensor::from_vec(ang, (len, half), &self.device)?;
        Ok((a.cos()?, a.sin()?))
    }

    /// Additive mask [1, 1, L, T] for L new tokens after `past` cached ones:
    /// causal, and for local layers limited to the last `window` positions
    /// (a token at p sees p-window+1..=p, as llama.cpp). None when nothing
    /// would be masked.
    fn mask(&self, past: usize, l: usize, window: Option<usize>) -> candle_core::Result<Option<Tensor>> {
        let t = past + l;
        let needed = l > 1 || window.map(|w| t > w).unwrap_or(false);
        if !needed {
            return Ok(None);
        }
        let mut m = vec![0f32; l * t];
        for i in 0..l {
            let p = past + i;
            for j in 0..t {
                let masked = j > p || window.map(|w| p - j.min(p) >= w).unwrap_or(false);
                if masked {
                    m[i * t + j] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (1, 1, l, t), &self.device)?))
    }

    /// Runs the new tokens of every sequence through the model, appends to
    /// their caches and returns one logits tensor per sequence: [vocab] for
    /// the last token, or [n_new, vocab] with `all_logits`.
    pub fn forward(&self, seqs: &mut [SeqInput]) -> Result<Vec<Tensor>, ModelError> {
        self.forward_inner(seqs, self.layers.len(), false).map_err(ModelError::candle)
    }

    /// The residual stream after the first `n` layers, [tokens, d_model]:
    /// for tests that compare the layers one by one with a reference.
    #[doc(hidden)]
    pub fn hidden_after(&self, tokens: &[u32], n: usize) -> Result<Tensor, ModelError> {
        let mut cache = self.new_cache();
        let mut seqs = [SeqInput { tokens, cache: &mut cache, all_logits: true }];
        Ok(self.forward_inner(&mut seqs, n, true).map_err(ModelError::candle)?.remove(0))
    }

    fn forward_inner(&self, seqs: &mut [SeqInput], n_layers: usize, hidden: bool) -> candle_core::Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let group = nh / nkv;
        let all: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let n = all.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let ids = Tensor::from_vec(all, n, &self.device)?;
        let mut x = (self.embed.embedding(&ids)? * (cfg.d_model as f64).sqrt())?.unsqueeze(0)?; // [1, n, d]
        // Per-sequence rope tables and masks, shared by all layers.
        let mut per_seq = Vec::with_capacity(seqs.len());
        let mut off = 0;
        for s in seqs.iter() {
            let (past, l) = (s.cache.len, s.tokens.len());
            per_seq.push((
                off,
                l,
                past,
                self.rope(cfg.rope_base_global, past, l)?,
                self.rope(cfg.rope_base_local, past, l)?,
                self.mask(past, l, None)?,
                self.mask(past, l, Some(cfg.sliding_window))?,
            ));
            off += l;
        }
        for (li, layer) in self.layers.iter().enumerate().take(n_layers) {
            let local = cfg.is_local(li);
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps as f32)?;
            let q = self.proj(li, "q", &layer.wq, &h)?; // [1, n, nh*hd]
            let k = self.proj(li, "k", &layer.wk, &h)?;
            let v = self.proj(li, "v", &layer.wv, &h)?;
            let mut outs = Vec::with_capacity(seqs.len());
            for (si, s) in seqs.iter_mut().enumerate() {
                let (off, l, past, ref rg, ref rl, ref mg, ref ml) = per_seq[si];
                let (cos, sin) = if local { rl } else { rg };
                let q = q.narrow(1, off, l)?.reshape((1, l, nh, hd))?.transpose(1, 2)?.contiguous()?;
                let k = k.narrow(1, off, l)?.reshape((1, l, nkv, hd))?.transpose(1, 2)?.contiguous()?;
                let v = v.narrow(1, off, l)?.reshape((1, l, nkv, hd))?.transpose(1, 2)?.contiguous()?;
                let q = candle_nn::ops::rms_norm(&q, &layer.q_norm, cfg.rms_eps as f32)?;
                let k = candle_nn::ops::rms_norm(&k, &layer.k_norm, cfg.rms_eps as f32)?;
                let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
                let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
                let (k, v) = match (&s.cache.k[li], &s.cache.v[li]) {
                    (Some(pk), Some(pv)) if past > 0 => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    _ => (k, v),
                };
                s.cache.k[li] = Some(k.clone());
                s.cache.v[li] = Some(v.clone());
                let t = past + l;
                // Heads sharing a KV head are contiguous: fold them into rows.
                let qg = (q.reshape((1, nkv, group * l, hd))? * cfg.attn_scale)?;
                let scores = qg.matmul(&k.transpose(2, 3)?.contiguous()?)?; // [1, nkv, g*l, t]
                let scores = scores.reshape((1, nh, l, t))?;
                let scores = match if local { ml } else { mg } {
                    Some(m) => scores.broadcast_add(m)?,
                    None => scores,
                };
                let p = candle_nn::ops::softmax_last_dim(&scores)?;
                let o = p.reshape((1, nkv, group * l, t))?.matmul(&v)?; // [1, nkv, g*l, hd]
                let o = o.reshape((1, nh, l, hd))?.transpose(1, 2)?.reshape((1, l, nh * hd))?;
                outs.push(o);
            }
            let attn = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 1)? };
            let attn = self.proj(li, "o", &layer.wo, &attn)?;
            let attn = candle_nn::ops::rms_norm(&attn, &layer.post_attn_norm, cfg.rms_eps as f32)?;
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps as f32)?;
            let g = self.proj(li, "gate", &layer.gate, &h)?.gelu()?; // tanh approximation, as Gemma
            let u = self.proj(li, "up", &layer.up, &h)?;
            let m = self.proj(li, "down", &layer.down, &(g * u)?)?;
            let m = candle_nn::ops::rms_norm(&m, &layer.post_ffn_norm, cfg.rms_eps as f32)?;
            x = (x + m)?;
        }
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        if hidden {
            return Ok(vec![x.squeeze(0)?]);
        }
        // The head only where logits are wanted: the 262k-row matmul is the
        // most expensive single step.
        let mut rows = vec![];
        for (si, s) in seqs.iter().enumerate() {
            let (off, l, ..) = per_seq[si];
            if s.all_logits {
                rows.extend((off..off + l).map(|r| r as u32));
            } else {
                rows.push((off + l - 1) as u32);
            }
        }
        let idx = Tensor::from_vec(rows.clone(), rows.len(), &self.device)?;
        let xs = x.squeeze(0)?.index_select(&idx, 0)?;
        let xs = candle_nn::ops::rms_norm(&xs, &self.out_norm, cfg.rms_eps as f32)?;
        let logits = self.lm_head.forward(&xs)?; // [rows, vocab]
        let mut out = Vec::with_capacity(seqs.len());
        let mut r = 0;
        for s in seqs.iter() {
            if s.all_logits {
                out.push(logits.narrow(0, r, s.tokens.len())?);
                r += s.tokens.len();
            } else {
                out.push(logits.get(r)?);
                r += 1;
            }
        }
        Ok(out)
    }

    /// Log-probabilities over the vocabulary from logits (any shape; last dim).
    pub fn log_softmax(logits: &Tensor) -> Result<Tensor, ModelError> {
        candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).map_err(ModelError::candle)?, D::Minus1).map_err(ModelError::candle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_converts_to_q8_0_without_loss_and_pads_with_zeros() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..4 * 640).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let t = Tensor::from_vec(vals, (4, 640), &dev).unwrap();
        let q5 = QTensor::quantize(&t, GgmlDType::Q5_0).unwrap();
        let want = q5.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
        let q8 = q5_0_as_q8_0(&q5, &dev).unwrap();
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        assert_eq!(q8.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap(), want);
        let (p, pad) = pad_columns(q8, &dev, true).unwrap();
        assert_eq!(pad, 128);
        let got = p.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(&g[..640], &w[..]);
            assert!(g[640..].iter().all(|x| *x == 0.0));
        }
    }
}
