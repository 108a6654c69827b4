//! Gemma 3 (text) inference on quantized GGUF weights.
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
//!
//! Numerics follow llama.cpp's CPU backend (see `numerics.rs` and `q8.rs`):
//! 8-bit weights multiply activations quantized per 32 values, k-quant
//! weights (candle's kernels) activations quantized per 256, the KV cache
//! is f16, and attention, norms, RoPE and GELU round where llama.cpp does.

use crate::numerics::{self, Heads};
use crate::kq::{Kind, KqMatrix};
use crate::q8::Q8Matrix;
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
    /// (inputs, outputs) of a LoRA target module, by its short name.
    pub fn module_dims(&self, short: &str) -> Option<(usize, usize)> {
        let (d, q, kv, f) = (self.d_model, self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.ffn_dim);
        Some(match short {
            "q" => (d, q),
            "k" | "v" => (d, kv),
            "o" => (q, d),
            "gate" | "up" => (d, f),
            "down" => (f, d),
            _ => return None,
        })
    }

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
    norms: BlockNorms,
}

/// The six RMS-norm weights of a Gemma 3 block as f32 (the file stores them
/// with Gemma's +1 already added). Shared by inference and training, which
/// read the same tensors.
pub(crate) struct BlockNorms {
    pub attn_norm: Vec<f32>,
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub post_attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub post_ffn_norm: Vec<f32>,
}

impl BlockNorms {
    /// `get(name)` gives tensor `blk.N.{name}.weight` as f32.
    pub(crate) fn load(mut get: impl FnMut(&str) -> Result<Vec<f32>, ModelError>) -> Result<BlockNorms, ModelError> {
        Ok(BlockNorms {
            attn_norm: get("attn_norm")?,
            q_norm: get("attn_q_norm")?,
            k_norm: get("attn_k_norm")?,
            post_attn_norm: get("post_attention_norm")?,
            ffn_norm: get("ffn_norm")?,
            post_ffn_norm: get("post_ffw_norm")?,
        })
    }
}

/// A weight matrix [n, k] applied to activations [m, k].
///
/// 8-bit weights (Q8_0, and Q5_0, which widens to 8 bits exactly) and the
/// k-quants Q4_K and Q6_K go to our own kernels, which compute what
/// llama.cpp computes bit for bit (`q8.rs`, `kq.rs`); every other type to
/// candle's kernels (close to llama.cpp, not identical).
enum Proj {
    Q8(Arc<Q8Matrix>),
    Kq(KqMatrix),
    Candle(QMatMul),
}

impl Proj {
    fn from_qtensor(t: QTensor) -> Result<Proj, ModelError> {
        match t.dtype() {
            GgmlDType::Q8_0 | GgmlDType::Q5_0 => Ok(Proj::Q8(Arc::new(q8_matrix(&t)?))),
            GgmlDType::Q4K | GgmlDType::Q6K => {
                let (n, k) = t.shape().dims2().map_err(ModelError::candle)?;
                let kind = if t.dtype() == GgmlDType::Q4K { Kind::Q4K } else { Kind::Q6K };
                Ok(Proj::Kq(KqMatrix::from_ggml(&t.data().map_err(ModelError::candle)?, n, k, kind)))
            }
            _ => Ok(Proj::Candle(QMatMul::from_qtensor(t).map_err(ModelError::candle)?)),
        }
    }

    /// `x` [m, k] times W^T; `tiled[r]`: row `r`'s k-quant path (see
    /// [`numerics::Regime`]). Q8_0/Q5_0 products have one path; other
    /// types go through candle, whose rows may depend on `m`.
    fn forward(&self, x: &[f32], tiled: &[bool], device: &Device) -> candle_core::Result<Vec<f32>> {
        let m = tiled.len();
        match self {
            Proj::Q8(w) => Ok(w.matmul(x, m)),
            Proj::Kq(w) => Ok(w.matmul_rows(x, tiled)),
            Proj::Candle(w) => {
                let k = x.len() / m.max(1);
                w.forward(&Tensor::from_slice(x, (m, k), device)?)?.flatten_all()?.to_vec1()
            }
        }
    }
}

/// An 8-bit GGUF tensor in the layout of our kernel.
fn q8_matrix(t: &QTensor) -> Result<Q8Matrix, ModelError> {
    let (n, k) = t.shape().dims2().map_err(ModelError::candle)?;
    let data = t.data().map_err(ModelError::candle)?;
    Ok(Q8Matrix::from_ggml(&data, n, k, t.dtype() == GgmlDType::Q5_0))
}

/// The token embedding table: rows read out of the 8-bit head it is tied
/// to (no second copy), or candle's lookup for other types.
enum Embed {
    Q8(Arc<Q8Matrix>),
    Candle(Arc<QTensor>),
}

/// The loaded model. Cheap to share across threads behind an `Arc`.
pub struct Gemma3 {
    pub cfg: Config,
    embed: Embed,
    lm_head: Proj,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    device: Device,
    /// Per-layer ggml types as stored in the file, for `model info`.
    pub tensor_types: Vec<(String, String)>,
    /// LoRA adapters applied on top of the quantized weights:
    /// (layer, module) -> (A [r, in], B [out, r]), and alpha / r.
    lora: std::collections::BTreeMap<(usize, String), LoraPair>,
    lora_scale: f32,
}

/// One adapted projection as plain rows: A [r][in] and B transposed
/// [r][out]. Applied row by row in a fixed order (not through a GEMM,
/// whose blocking can change with the number of rows), so a row's result
/// never depends on the other rows of its call.
struct LoraPair {
    a: Vec<f32>,
    bt: Vec<f32>,
    inp: usize,
    out: usize,
}

impl LoraPair {
    fn new(a: &Tensor, b: &Tensor) -> candle_core::Result<LoraPair> {
        let (_, inp) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bt = b.to_dtype(DType::F32)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(LoraPair { a, bt, inp, out })
    }

    /// Adds `scale * B A x` to each row of `y` [m, out].
    fn apply(&self, x: &[f32], scale: f32, y: &mut [f32]) {
        let row = |(xr, yr): (&[f32], &mut [f32])| {
            let u: Vec<f32> = self.a.chunks_exact(self.inp).map(|ar| dot(ar, xr)).collect();
            let mut d = vec![0f32; self.out];
            for (j, bj) in self.bt.chunks_exact(self.out).enumerate() {
                for (o, b) in d.iter_mut().zip(bj) {
                    *o += u[j] * b;
                }
            }
            for (o, v) in yr.iter_mut().zip(&d) {
                *o += v * scale;
            }
        };
        if x.len() / self.inp >= 16 {
            use rayon::prelude::*;
            x.par_chunks_exact(self.inp).zip(y.par_chunks_exact_mut(self.out)).for_each(row);
        } else {
            x.chunks_exact(self.inp).zip(y.chunks_exact_mut(self.out)).for_each(row);
        }
    }
}

/// A dot product in 16 lanes then summed in order: vectorizes, and its
/// order is fixed.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    acc.iter().sum()
}

/// The keys and values one sequence has seen, per layer, as f16 bits
/// [T][n_kv][head_dim]: llama.cpp's cache type, so the same roundings.
#[derive(Clone, Default)]
pub struct KvCache {
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    len: usize,
    /// How each position was computed: a cached prefix is only reused by
    /// a sequence that would compute those positions the same way.
    regimes: Vec<numerics::Regime>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache { k: vec![vec![]; n_layer], v: vec![vec![]; n_layer], len: 0, regimes: vec![] }
    }
    /// How many of the first positions hold what a sequence with a prompt
    /// of `prompt_len` tokens would compute there itself (see
    /// [`numerics::Regime::of_row`]), up to `n`.
    pub fn reusable_for(&self, prompt_len: usize, n: usize) -> usize {
        self.regimes.iter().take(n).enumerate().take_while(|(i, r)| **r == numerics::Regime::of_row(prompt_len, *i)).count()
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
            let width = if self.len == 0 { 0 } else { t.len() / self.len };
            t.truncate(n * width);
        }
        self.len = n;
        self.regimes.truncate(n);
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
    /// The length of the sequence's prompt: positions below it are
    /// computed as llama.cpp computes a prompt, the others as its decoding
    /// steps, however the tokens are split across calls and whatever else
    /// shares the call ([`numerics::Regime`]).
    pub prompt_len: usize,
}

fn md_u64(c: &gguf_file::Content, k: &str) -> Option<u64> {
    c.metadata.get(k).and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)).or_else(|| v.to_i32().ok().map(|x| x as u64)))
}
fn md_f32(c: &gguf_file::Content, k: &str) -> Option<f32> {
    c.metadata.get(k).and_then(|v| v.to_f32().ok())
}

impl Gemma3 {
    /// Loads a Gemma 3 GGUF: 8-bit (and Q5_0) weights into our kernel's
    /// layout, the rest as candle tensors, norms as f32.
    pub fn load(path: &Path) -> Result<Gemma3, ModelError> {
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
        let vec_of = |t: QTensor| -> Result<Vec<f32>, ModelError> { t.dequantize(&device).and_then(|x| x.flatten_all()?.to_vec1()).map_err(ModelError::candle) };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut mm = |n: &str| -> Result<Proj, ModelError> { Proj::from_qtensor(load_q(&format!("{p}.{n}.weight"))?) };
            let (wq, wk, wv, wo) = (mm("attn_q")?, mm("attn_k")?, mm("attn_v")?, mm("attn_output")?);
            let (gate, up, down) = (mm("ffn_gate")?, mm("ffn_up")?, mm("ffn_down")?);
            let norms = BlockNorms::load(|n| vec_of(load_q(&format!("{p}.{n}.weight"))?))?;
            layers.push(Layer { wq, wk, wv, wo, gate, up, down, norms });
        }
        let out_norm = vec_of(load_q("output_norm.weight")?)?;
        // Gemma ties the output head to the embedding: one 8-bit table
        // serves both (the lookup reads rows out of the head's layout).
        let embed_t = load_q("token_embd.weight")?;
        let embed_q8 = matches!(embed_t.dtype(), GgmlDType::Q8_0 | GgmlDType::Q5_0);
        let (embed, lm_head) = if c.tensor_infos.contains_key("output.weight") {
            let head = Proj::from_qtensor(load_q("output.weight")?)?;
            let embed = if embed_q8 { Embed::Q8(Arc::new(q8_matrix(&embed_t)?)) } else { Embed::Candle(Arc::new(embed_t)) };
            (embed, head)
        } else if embed_q8 {
            let m = Arc::new(q8_matrix(&embed_t)?);
            (Embed::Q8(m.clone()), Proj::Q8(m))
        } else {
            // One table for both, as the 8-bit case.
            let t = Arc::new(embed_t);
            (Embed::Candle(t.clone()), Proj::Candle(QMatMul::from_arc(t).map_err(ModelError::candle)?))
        };
        Ok(Gemma3 { cfg, embed, lm_head, layers, out_norm, device, tensor_types, lora: Default::default(), lora_scale: 0.0 })
    }

    /// Applies a PEFT LoRA adapter (adapter_config.json and
    /// adapter_model.safetensors in `dir`): each targeted projection becomes
    /// `W x + (alpha / r) B A x`, computed beside the quantized `W x`.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<(), ModelError> {
        let (r, alpha) = adapter_config(dir)?;
        let st = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&st, &self.device).map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
        let pairs = check_adapter(&self.cfg, &st, r, &tensors)?;
        self.lora = pairs.iter().map(|(k, (a, b))| Ok((k.clone(), LoraPair::new(a, b)?))).collect::<candle_core::Result<_>>().map_err(ModelError::candle)?;
        self.lora_scale = (alpha / r as f64) as f32;
        Ok(())
    }

    /// A projection of rows with its adapter, when there is one; `tiled`
    /// as in [`Proj::forward`].
    fn proj(&self, li: usize, name: &str, w: &Proj, x: &[f32], tiled: &[bool]) -> candle_core::Result<Vec<f32>> {
        let mut y = w.forward(x, tiled, &self.device)?;
        if let Some(p) = self.lora.get(&(li, name.to_string())) {
            p.apply(x, self.lora_scale, &mut y);
        }
        Ok(y)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.n_layer)
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
        let mut seqs = [SeqInput { tokens, cache: &mut cache, all_logits: true, prompt_len: tokens.len() }];
        Ok(self.forward_inner(&mut seqs, n, true).map_err(ModelError::candle)?.remove(0))
    }

    /// The embedding rows of `ids`, scaled by sqrt(d_model) in f32 as llama.cpp.
    fn embed_rows(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let scale = (self.cfg.d_model as f32).sqrt();
        let mut x = Vec::with_capacity(ids.len() * self.cfg.d_model);
        match &self.embed {
            Embed::Q8(m) => {
                for &id in ids {
                    if id as usize >= m.rows() {
                        candle_core::bail!("token id {id} is outside the vocabulary ({})", m.rows());
                    }
                    x.extend(m.row(id as usize));
                }
            }
            Embed::Candle(t) => {
                let idt = Tensor::from_slice(ids, ids.len(), &self.device)?;
                x = t.embedding(&idt)?.flatten_all()?.to_vec1()?;
            }
        }
        for v in x.iter_mut() {
            *v *= scale;
        }
        Ok(x)
    }

    fn forward_inner(&self, seqs: &mut [SeqInput], n_layers: usize, hidden: bool) -> candle_core::Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let (nh, nkv, hd, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_model);
        let eps = cfg.rms_eps as f32;
        let heads = Heads { n_head: nh, n_kv: nkv, dim: hd };
        let all: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let n = all.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let mut x = self.embed_rows(&all)?; // [n, d]
        // Per-sequence RoPE tables, shared by all layers, and each row's kernels.
        let mut per_seq = Vec::with_capacity(seqs.len());
        let mut regimes = Vec::with_capacity(n);
        let mut off = 0;
        for s in seqs.iter() {
            let (past, l) = (s.cache.len, s.tokens.len());
            per_seq.push((off, l, past, numerics::rope_table(cfg.rope_base_global, hd, past, l), numerics::rope_table(cfg.rope_base_local, hd, past, l)));
            regimes.extend((past..past + l).map(|p| numerics::Regime::of_row(s.prompt_len, p)));
            off += l;
        }
        let tiled: Vec<bool> = regimes.iter().map(|r| r.tiled_products()).collect();
        let scale = cfg.attn_scale as f32;
        for (li, layer) in self.layers.iter().enumerate().take(n_layers) {
            let local = cfg.is_local(li);
            let h = numerics::rms_norm_rows(&x, &layer.norms.attn_norm, eps);
            let mut q = self.proj(li, "q", &layer.wq, &h, &tiled)?; // [n, nh*hd]
            let mut k = self.proj(li, "k", &layer.wk, &h, &tiled)?; // [n, nkv*hd]
            let v = self.proj(li, "v", &layer.wv, &h, &tiled)?;
            numerics::rms_norm_inplace(&mut q, &layer.norms.q_norm, eps);
            numerics::rms_norm_inplace(&mut k, &layer.norms.k_norm, eps);
            let mut attn = Vec::with_capacity(n * nh * hd);
            for (si, s) in seqs.iter_mut().enumerate() {
                let (off, l, past, ref rg, ref rl) = per_seq[si];
                let (cos, sin) = if local { rl } else { rg };
                let half = hd / 2;
                let q = &mut q[off * nh * hd..(off + l) * nh * hd];
                let k = &mut k[off * nkv * hd..(off + l) * nkv * hd];
                for (i, row) in q.chunks_mut(nh * hd).enumerate() {
                    for head in row.chunks_mut(hd) {
                        numerics::rope_neox(head, &cos[i * half..][..half], &sin[i * half..][..half]);
                        for x in head.iter_mut() {
                            *x *= scale;
                        }
                    }
                }
                for (i, row) in k.chunks_mut(nkv * hd).enumerate() {
                    for head in row.chunks_mut(hd) {
                        numerics::rope_neox(head, &cos[i * half..][..half], &sin[i * half..][..half]);
                    }
                }
                s.cache.k[li].extend(numerics::to_f16_bits(k));
                s.cache.v[li].extend(numerics::to_f16_bits(&v[off * nkv * hd..(off + l) * nkv * hd]));
                let window = if local { Some(cfg.sliding_window) } else { None };
                // Runs of rows with the same attention path (a chunk can
                // straddle a micro-batch boundary, or end the prompt).
                let mut i = 0;
                while i < l {
                    let path = regimes[off + i].tiled_attention();
                    let run = regimes[off + i..off + l].iter().take_while(|r| r.tiled_attention() == path).count();
                    attn.extend(numerics::attention(&q[i * nh * hd..(i + run) * nh * hd], run, past + i, &s.cache.k[li], &s.cache.v[li], heads, window, path));
                    i += run;
                }
            }
            let o = self.proj(li, "o", &layer.wo, &attn, &tiled)?;
            let o = numerics::rms_norm_rows(&o, &layer.norms.post_attn_norm, eps);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let h = numerics::rms_norm_rows(&x, &layer.norms.ffn_norm, eps);
            let g = self.proj(li, "gate", &layer.gate, &h, &tiled)?;
            let u = self.proj(li, "up", &layer.up, &h, &tiled)?;
            let gu = numerics::geglu(&g, &u); // tanh-approximated GELU, as Gemma
            let m = self.proj(li, "down", &layer.down, &gu, &tiled)?;
            let m = numerics::rms_norm_rows(&m, &layer.norms.post_ffn_norm, eps);
            for (a, b) in x.iter_mut().zip(&m) {
                *a += b;
            }
        }
        for (si, s) in seqs.iter_mut().enumerate() {
            let (off, l, ..) = per_seq[si];
            s.cache.len += l;
            s.cache.regimes.extend_from_slice(&regimes[off..off + l]);
        }
        if hidden {
            return Ok(vec![Tensor::from_vec(x, (n, d), &self.device)?]);
        }
        // The head only where logits are wanted: the 262k-row matmul is the
        // most expensive single step.
        let mut rows = vec![];
        for (si, s) in seqs.iter().enumerate() {
            let (off, l, ..) = per_seq[si];
            if s.all_logits {
                rows.extend(off..off + l);
            } else {
                rows.push(off + l - 1);
            }
        }
        let xs: Vec<f32> = rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect();
        let xs = numerics::rms_norm_rows(&xs, &self.out_norm, eps);
        let head_tiled: Vec<bool> = rows.iter().map(|&r| tiled[r]).collect();
        let logits = self.lm_head.forward(&xs, &head_tiled, &self.device)?;
        let vocab = logits.len() / rows.len();
        let logits = Tensor::from_vec(logits, (rows.len(), vocab), &self.device)?;
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

/// Checks a PEFT adapter (`st`: its safetensors file, with its tensors)
/// against this base model and its own config, wherever an adapter is
/// loaded or exported: every key a known module of an existing layer, A
/// [r, in] and B [out, r] in pairs with the module's shape, r as
/// adapter_config.json says, every value finite. A wrong adapter would
/// otherwise fail every case with "shape mismatch in matmul", or export
/// without a word and fail in llama.cpp. Returns the checked pairs:
/// (layer, short module name) -> (A, B).
#[allow(clippy::type_complexity)]
pub fn check_adapter(cfg: &Config, st: &Path, r: usize, tensors: &std::collections::HashMap<String, Tensor>) -> Result<std::collections::BTreeMap<(usize, String), (Tensor, Tensor)>, ModelError> {
    let bad = |m: String| ModelError::Format(format!("{}: {m}", st.display()));
    let mut out = std::collections::BTreeMap::new();
    // Sorted, so that a broken adapter always reports the same first error
    // (a HashMap's order changes from run to run).
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for k in keys {
        let t = &tensors[k];
        let (stem, is_a) = match (k.strip_suffix(".lora_A.weight"), k.strip_suffix(".lora_B.weight")) {
            (Some(s), _) => (s, true),
            (_, Some(s)) => (s, false),
            _ => continue,
        };
        let rest = stem.split(".layers.").nth(1).ok_or_else(|| bad(format!("unexpected key {k}")))?;
        let (li, module) = rest.split_once('.').ok_or_else(|| bad(format!("unexpected key {k}")))?;
        let li: usize = li.parse().map_err(|_| bad(format!("unexpected key {k}")))?;
        let short = TARGETS.iter().find(|(_, m)| *m == module).map(|(s, _)| *s).ok_or_else(|| bad(format!("unknown module {module}")))?;
        if li >= cfg.n_layer {
            return Err(bad(format!("layer {li} does not exist in this model ({} layers)", cfg.n_layer)));
        }
        let (n_in, n_out) = cfg.module_dims(short).unwrap_or((0, 0));
        let want = if is_a { [r, n_in] } else { [n_out, r] };
        let t = t.to_dtype(DType::F32).map_err(ModelError::candle)?;
        if t.dims() != want {
            return Err(bad(format!("{k} has shape {:?}; this model and the adapter's r = {r} need {want:?} (an adapter for another model, or a config that does not match its tensors)", t.dims())));
        }
        let values = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(ModelError::candle)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("{k} holds a non-finite value ({} at index {i}): the training that wrote it diverged", values[i])));
        }
        let pair = out.entry((li, short.to_string())).or_insert((None, None));
        if is_a {
            pair.0 = Some(t);
        } else {
            pair.1 = Some(t);
        }
    }
    let mut pairs = std::collections::BTreeMap::new();
    for ((li, short), (a, b)) in out {
        match (a, b) {
            (Some(a), Some(b)) => {
                pairs.insert((li, short), (a, b));
            }
            _ => return Err(bad(format!("layer {li} {short}: lora_A and lora_B must come in pairs"))),
        }
    }
    if pairs.is_empty() {
        return Err(bad("no LoRA tensors".into()));
    }
    Ok(pairs)
}

/// Checks the PEFT adapter in `dir` against the base model file `base`
/// without loading the model: for providers, before a run starts.
pub fn check_adapter_dir(base: &Path, dir: &Path) -> Result<(), ModelError> {
    let cfg = Config::from_file(base)?;
    let (r, _) = adapter_config(dir)?;
    let st = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
    check_adapter(&cfg, &st, r, &tensors).map(|_| ())
}

/// The rank and alpha of a PEFT adapter_config.json.
pub fn adapter_config(dir: &Path) -> Result<(usize, f64), ModelError> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io(cfg_path.clone(), e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", cfg_path.display())))?;
    let r = v["r"].as_u64().filter(|r| *r >= 1).ok_or_else(|| ModelError::Format(format!("{}: `r` must be a whole number of at least 1", cfg_path.display())))? as usize;
    let alpha = v["lora_alpha"].as_f64().unwrap_or(r as f64);
    if !alpha.is_finite() || alpha <= 0.0 {
        return Err(ModelError::Format(format!("{}: `lora_alpha` must be a positive number", cfg_path.display())));
    }
    Ok((r, alpha))
}

/// The linear modules of a Gemma 3 block that LoRA adapters can target,
/// with their PEFT (Hugging Face) names. A fact of the architecture: the
/// trainer and the adapter loader both read it from here.
pub const TARGETS: &[(&str, &str)] = &[
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
];
