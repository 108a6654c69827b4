//! LoRA fine-tuning of Gemma 3 on CPU: the trainable model.
//!
//! The base weights are dequantized to f32 and frozen; each target linear
//! layer gains a low-rank update `scale * B A x` whose A and B are the only
//! trained parameters. Examples are packed into one sequence per pass (no
//! padding), positions restart per example, attention runs per example,
//! and the 262k-row output head runs only on the positions whose next token
//! is a completion token (the loss needs nothing else).
//!
//! Gradient traps avoided (they stop gradients silently): QMatMul has no
//! backward, and candle's fused rms_norm / softmax_last_dim / rope have
//! none either. Training uses its own fused ops with hand-written backward
//! passes (`ops::RmsNorm`, `ops::Rope`, `ops::GeluMul`): one pass over
//! the data each way instead of a chain of elementwise ops whose
//! intermediates all stay alive until the backward pass. The
//! finite-difference gradient test guards them. Frozen linear layers use
//! `ops::Frozen`, whose backward returns only the input's gradient:
//! candle's matmul backward would also compute the frozen weight's gradient
//! (for the tied 262,144 x 640 head, a large waste).
//!
//! Here: the model itself (loading, the graph forward pass, adapters). The
//! custom ops live in `ops`, the hand-written block pass in `block`,
//! packing in `pack`, PEFT output in `peft`; the training loop that drives
//! this model is [`crate::train`], which nothing here depends on (bar the
//! temporary re-export below).

use crate::gemma3::Config;
use crate::ModelError;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

mod block;
mod ops;
mod pack;
mod peft;

use ops::{frozen, rms_norm, CausalSoftmax, GeluMul, LoraLinear, Op, Rope};
pub use pack::{pack, Packed, TrainExample};

pub use crate::gemma3::TARGETS;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Short names: q, k, v, o, gate, up, down.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["q".into(), "v".into()],
        }
    }
}

struct TLayer {
    w: HashMap<&'static str, Op>,
    /// The same frozen weights as tensors, for the fused adapter op.
    weights: HashMap<&'static str, Tensor>,
    norms: crate::gemma3::BlockNorms,
}

/// The trainable model: frozen f32 base plus LoRA variables.
pub struct LoraModel {
    pub cfg: Config,
    pub lora_cfg: LoraConfig,
    embed: Tensor,
    head: Op,
    layers: Vec<TLayer>,
    out_norm: Vec<f32>,
    /// (layer, short module name) -> (A [r, in], B [out, r]).
    pub adapters: BTreeMap<(usize, String), (Var, Var)>,
    dropout_rng: std::cell::RefCell<rand_chacha::ChaCha8Rng>,
    /// The current pass's dropout seed; each layer derives its own stream.
    dropout_seed: std::cell::Cell<u64>,
    pub training: bool,
}

/// What every layer of one pass shares.
struct PassCtx {
    rope_global: Rope,
    rope_local: Rope,
    segments: Vec<(usize, usize)>,
    t: usize,
}

impl LoraModel {
    /// Loads the base from a GGUF (dequantized to f32, frozen) and creates
    /// adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default, seeded), B = 0,
    /// so training starts exactly at the base model.
    pub fn load(
        path: &Path,
        cfg: Config,
        lora: LoraConfig,
        seed: u64,
    ) -> Result<LoraModel, ModelError> {
        for t in &lora.targets {
            if !TARGETS.iter().any(|(s, _)| s == t) {
                return Err(ModelError::Input(format!(
                    "unknown LoRA target module `{t}` (known: q, k, v, o, gate, up, down)"
                )));
            }
        }
        if lora.rank == 0 {
            return Err(ModelError::Input("LoRA rank must be at least 1".into()));
        }
        let dev = Device::Cpu;
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io(path.to_path_buf(), e))?;
        let c = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Format(e.to_string()))?;
        let mut deq = |name: &str| -> Result<Tensor, ModelError> {
            c.tensor(&mut f, name, &dev)
                .and_then(|q| q.dequantize(&dev))
                .map_err(|e| ModelError::Format(format!("{name}: {e}")))
        };
        let vec1 = |t: Tensor| t.to_vec1::<f32>().map_err(ModelError::candle);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut adapters = BTreeMap::new();
        let mut layers = vec![];
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut w = HashMap::new();
            let mut weights = HashMap::new();
            for (short, gg) in [
                ("q", "attn_q"),
                ("k", "attn_k"),
                ("v", "attn_v"),
                ("o", "attn_output"),
                ("gate", "ffn_gate"),
                ("up", "ffn_up"),
                ("down", "ffn_down"),
            ] {
                let t = deq(&format!("{p}.{gg}.weight"))?;
                if lora.targets.iter().any(|x| x == short) {
                    let (out, inp) = t.dims2().map_err(ModelError::candle)?;
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f32> = (0..lora.rank * inp)
                        .map(|_| rng.gen_range(-bound..bound) as f32)
                        .collect();
                    let a = Var::from_tensor(
                        &Tensor::from_vec(a, (lora.rank, inp), &dev).map_err(ModelError::candle)?,
                    )
                    .map_err(ModelError::candle)?;
                    let b = Var::zeros((out, lora.rank), DType::F32, &dev)
                        .map_err(ModelError::candle)?;
                    adapters.insert((i, short.to_string()), (a, b));
                }
                weights.insert(short, t.clone());
                w.insert(short, frozen(t));
            }
            layers.push(TLayer {
                w,
                weights,
                norms: crate::gemma3::BlockNorms::load(|n| vec1(deq(&format!("{p}.{n}.weight"))?))?,
            });
        }
        let out_norm = vec1(deq("output_norm.weight")?)?;
        let embed = deq("token_embd.weight")?;
        let head = frozen(embed.clone());
        Ok(LoraModel {
            cfg,
            lora_cfg: lora,
            embed,
            head,
            layers,
            out_norm,
            adapters,
            dropout_rng: std::cell::RefCell::new(rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ 0x5eed,
            )),
            dropout_seed: std::cell::Cell::new(seed ^ 0x5eed),
            training: true,
        })
    }

    /// Dropout masks are a function of (pass, layer): both training paths,
    /// and a checkpointed rerun of a layer, draw the same ones.
    fn reseed_dropout(&self, li: usize) {
        *self.dropout_rng.borrow_mut() = rand_chacha::ChaCha8Rng::seed_from_u64(self.dropout_seed.get() ^ (li as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    }

    /// Sets the seed the next pass's dropout masks derive from (the training
    /// loop sets one per step and pass).
    pub(crate) fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.set(seed);
    }

    /// Seeded dropout on an adapter's input (as PEFT does): the next mask of
    /// `n` entries, 0 or 1 / (1 - p); None when not training or p = 0.
    fn dropout_mask(&self, n: usize) -> Option<Vec<f32>> {
        if !self.training || self.lora_cfg.dropout <= 0.0 {
            return None;
        }
        let p = self.lora_cfg.dropout;
        let mut rng = self.dropout_rng.borrow_mut();
        Some((0..n).map(|_| if rng.gen::<f64>() < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 }).collect())
    }

    pub fn scale(&self) -> f64 {
        self.lora_cfg.alpha / self.lora_cfg.rank as f64
    }

    pub fn vars(&self) -> Vec<Var> {
        self.adapters
            .values()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    fn linear(&self, li: usize, name: &'static str, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let Some((a, b)) = self.adapters.get(&(li, name.to_string())) else {
            return x.apply_op1_arc(self.layers[li].w[name].clone());
        };
        let mask = match self.dropout_mask(x.elem_count()) {
            Some(keep) => Some(Tensor::from_vec(keep, x.shape(), x.device())?),
            None => None,
        };
        let w = self.layers[li].weights[name].clone();
        x.apply_op3(a.as_tensor(), b.as_tensor(), LoraLinear { w, mask, scale: self.scale() })
    }

    fn rope(&self, base: f32, positions: &[usize]) -> Rope {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(positions.len() * half), Vec::with_capacity(positions.len() * half));
        for &p in positions {
            for i in 0..half {
                let a = p as f32 / base.powf(2.0 * i as f32 / hd as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope { cos: Arc::new(cos), sin: Arc::new(sin), t: positions.len(), half, inverse: false, scale: 1.0 }
    }

    /// Mean cross-entropy over the packed targets.
    pub fn loss(&self, p: &Packed) -> Result<Tensor, ModelError> {
        self.loss_inner(p).map_err(ModelError::candle)
    }

    fn loss_inner(&self, p: &Packed) -> candle_core::Result<Tensor> {
        let ctx = self.pass_ctx(p)?;
        let mut x = self.embed_tokens(p)?;
        for li in 0..self.layers.len() {
            x = self.layer(li, &x, &ctx)?;
        }
        self.head_loss(&x, p)
    }

    /// The loss and the adapters' gradients through the hand-written
    /// blocks (see the `block` module): the same values as [`Self::loss`]
    /// and its backward pass, in less time and memory. With `checkpoint`,
    /// each block's activations are recomputed in the backward pass instead
    /// of kept: memory holds one block's activations instead of all of them,
    /// for one more forward pass of compute. The gradients come in the order
    /// of [`Self::vars`].
    pub fn loss_and_grads(&self, p: &Packed, checkpoint: bool) -> Result<(f64, Vec<Option<Tensor>>), ModelError> {
        self.manual(p, checkpoint).map_err(ModelError::candle)
    }

    /// What every layer of a pass shares.
    fn pass_ctx(&self, p: &Packed) -> candle_core::Result<PassCtx> {
        let cfg = &self.cfg;
        // Attention runs per example (the packed examples never see each
        // other): the cost is the sum of squared lengths, not the square of
        // the sum, which for 8 examples is 8x less time and memory than one
        // block-diagonal mask over the packed sequence.
        let segments = p.segments();
        Ok(PassCtx { rope_global: self.rope(cfg.rope_base_global, &p.positions), rope_local: self.rope(cfg.rope_base_local, &p.positions), segments, t: p.tokens.len() })
    }

    fn embed_tokens(&self, p: &Packed) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_vec(p.tokens.clone(), p.tokens.len(), &Device::Cpu)?;
        (self.embed.index_select(&ids, 0)? * (self.cfg.d_model as f64).sqrt())?.unsqueeze(0)
    }

    /// One transformer block.
    fn layer(&self, li: usize, x: &Tensor, c: &PassCtx) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd, t) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, c.t);
        let eps = cfg.rms_eps as f32;
        // Dropout masks are a function of (pass, layer), so a checkpointed
        // rerun of this layer draws the same ones.
        self.reseed_dropout(li);
        let l = &self.layers[li];
        let local = cfg.is_local(li);
        let h = rms_norm(x, &l.norms.attn_norm, eps)?;
        let q = self.linear(li, "q", &h)?.reshape((1, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.linear(li, "k", &h)?.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.linear(li, "v", &h)?.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let rope = if local { &c.rope_local } else { &c.rope_global };
        let q = rms_norm(&q, &l.norms.q_norm, eps)?.apply_op1(Rope { scale: cfg.attn_scale as f32, ..rope.clone() })?;
        let k = rms_norm(&k, &l.norms.k_norm, eps)?.apply_op1(rope.clone())?;
        let mut outs = Vec::with_capacity(c.segments.len());
        for &(start, len) in &c.segments {
            let qs = q.narrow(2, start, len)?;
            let ks = k.narrow(2, start, len)?;
            let vs = v.narrow(2, start, len)?;
            let scores = qs.broadcast_matmul(&ks.transpose(2, 3)?)?; // [1, nh, len, len]
            let probs = scores.apply_op1(CausalSoftmax { len, window: local.then_some(cfg.sliding_window) })?;
            outs.push(probs.broadcast_matmul(&vs)?);
        }
        let o = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 2)? };
        let o = o.transpose(1, 2)?.reshape((1, t, nh * hd))?;
        let o = self.linear(li, "o", &o)?;
        let x = (x + rms_norm(&o, &l.norms.post_attn_norm, eps)?)?;
        let h = rms_norm(&x, &l.norms.ffn_norm, eps)?;
        let g = self.linear(li, "gate", &h)?;
        let u = self.linear(li, "up", &h)?;
        let m = self.linear(li, "down", &g.apply_op2(&u, GeluMul)?)?;
        x + rms_norm(&m, &l.norms.post_ffn_norm, eps)?
    }

    /// Final norm, the head at the loss's rows only, mean cross-entropy.
    fn head_loss(&self, x: &Tensor, p: &Packed) -> candle_core::Result<Tensor> {
        let eps = self.cfg.rms_eps as f32;
        let rows: Vec<u32> = p.targets.iter().map(|(r, _)| *r as u32).collect();
        let targets: Vec<u32> = p.targets.iter().map(|(_, t)| *t).collect();
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &Device::Cpu)?;
        let xs = x.squeeze(0)?.index_select(&idx, 0)?;
        let xs = rms_norm(&xs, &self.out_norm, eps)?;
        let logits = xs.contiguous()?.apply_op1_arc(self.head.clone())?;
        candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(targets, n, &Device::Cpu)?)
    }
}
