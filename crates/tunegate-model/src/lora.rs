//! LoRA fine-tuning of Gemma 3 on CPU.
//!
//! The base weights are dequantized to f32 and frozen; each target linear
//! layer gains a low-rank update `scale * B A x` whose A and B are the only
//! trained parameters. Examples are packed into one sequence per step with
//! a block-diagonal causal mask (no padding), positions restart per example,
//! and the 262k-row output head runs only on the positions whose next token
//! is a completion token (the loss needs nothing else).
//!
//! Gradient traps avoided (they stop gradients silently): QMatMul has no
//! backward, and candle's fused rms_norm / softmax_last_dim / rope have
//! none either, so training uses the `*_slow` / composite versions. Frozen
//! linear layers use [`Frozen`], whose backward returns only the input's
//! gradient: candle's matmul backward would also compute the frozen
//! weight's gradient (for the tied 262,144 x 640 head, a large waste).

use crate::gemma3::Config;
use crate::ModelError;
use candle_core::quantized::gguf_file;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

type Op = Arc<Box<dyn CustomOp1 + Send + Sync>>;

/// y = x W^T for a frozen W [out, in]; backward gives dL/dx only.
struct Frozen {
    w: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (o1, o2) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("frozen-linear needs a contiguous input".into()))?;
        let x = &s.as_slice::<f32>()?[o1..o2];
        let dims = l.shape().dims();
        let inp = *dims.last().unwrap();
        let rows = x.len() / inp;
        let xt = Tensor::from_slice(x, (rows, inp), &Device::Cpu)?;
        let y = xt.matmul(&self.w.t()?)?;
        let out = self.w.dim(0)?;
        let mut od = dims.to_vec();
        *od.last_mut().unwrap() = out;
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), Shape::from(od)))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.w)?))
    }
}

fn frozen(w: Tensor) -> Op {
    Arc::new(Box::new(Frozen { w }))
}

/// The modules LoRA can adapt, with their PEFT (Hugging Face) names.
pub const TARGETS: &[(&str, &str)] = &[
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
];

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
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["q".into(), "v".into()] }
    }
}

struct TLayer {
    w: HashMap<&'static str, Op>,
    attn_norm: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    post_ffn_norm: Tensor,
}

/// The trainable model: frozen f32 base plus LoRA variables.
pub struct LoraModel {
    pub cfg: Config,
    pub lora_cfg: LoraConfig,
    embed: Tensor,
    head: Op,
    layers: Vec<TLayer>,
    out_norm: Tensor,
    /// (layer, short module name) -> (A [r, in], B [out, r]).
    pub adapters: BTreeMap<(usize, String), (Var, Var)>,
    dropout_rng: std::cell::RefCell<rand_chacha::ChaCha8Rng>,
    pub training: bool,
}

/// One packed training step: several examples in one sequence.
pub struct Packed {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    pub seq: Vec<usize>,
    /// (row whose logits predict, the token it must predict).
    pub targets: Vec<(usize, u32)>,
}

/// A tokenized example; the loss covers `tokens[loss_from..]`.
#[derive(Debug, Clone)]
pub struct TrainExample {
    pub tokens: Vec<u32>,
    pub loss_from: usize,
}

impl TrainExample {
    /// `prompt` then `answer` then end-of-sequence, the loss on the answer
    /// and the end. The answer follows a space unless one side already has
    /// whitespace there, which is how the local provider's prompts end.
    pub fn from_text(tok: &crate::Tokenizer, prompt: &str, answer: &str) -> TrainExample {
        let sep = if prompt.ends_with(char::is_whitespace) || answer.starts_with(char::is_whitespace) { "" } else { " " };
        let p = tok.encode(prompt, true, false);
        let mut ids = tok.encode(&format!("{prompt}{sep}{answer}"), true, false);
        if ids.len() < p.len() || ids[..p.len()] != p[..] {
            ids = p.clone();
            ids.extend(tok.encode(&format!("{sep}{answer}"), false, false));
        }
        ids.push(tok.eos_id().unwrap_or(1));
        TrainExample { loss_from: p.len(), tokens: ids }
    }
}

pub fn pack(examples: &[&TrainExample]) -> Packed {
    let mut p = Packed { tokens: vec![], positions: vec![], seq: vec![], targets: vec![] };
    for (si, e) in examples.iter().enumerate() {
        let base = p.tokens.len();
        for (i, &t) in e.tokens.iter().enumerate() {
            p.tokens.push(t);
            p.positions.push(i);
            p.seq.push(si);
            if i + 1 < e.tokens.len() && i + 1 >= e.loss_from {
                p.targets.push((base + i, e.tokens[i + 1]));
            }
        }
    }
    p
}

impl LoraModel {
    /// Loads the base from a GGUF (dequantized to f32, frozen) and creates
    /// adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default, seeded), B = 0,
    /// so training starts exactly at the base model.
    pub fn load(path: &Path, cfg: Config, lora: LoraConfig, seed: u64) -> Result<LoraModel, ModelError> {
        for t in &lora.targets {
            if !TARGETS.iter().any(|(s, _)| s == t) {
                return Err(ModelError::Input(format!("unknown LoRA target module `{t}` (known: q, k, v, o, gate, up, down)")));
            }
        }
        if lora.rank == 0 {
            return Err(ModelError::Input("LoRA rank must be at least 1".into()));
        }
        let dev = Device::Cpu;
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io(path.to_path_buf(), e))?;
        let c = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Format(e.to_string()))?;
        let mut deq = |name: &str| -> Result<Tensor, ModelError> {
            c.tensor(&mut f, name, &dev).and_then(|q| q.dequantize(&dev)).map_err(|e| ModelError::Format(format!("{name}: {e}")))
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut adapters = BTreeMap::new();
        let mut layers = vec![];
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut w = HashMap::new();
            for (short, gg) in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output"), ("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")] {
                let t = deq(&format!("{p}.{gg}.weight"))?;
                if lora.targets.iter().any(|x| x == short) {
                    let (out, inp) = t.dims2().map_err(ModelError::candle)?;
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f32> = (0..lora.rank * inp).map(|_| rng.gen_range(-bound..bound) as f32).collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (lora.rank, inp), &dev).map_err(ModelError::candle)?).map_err(ModelError::candle)?;
                    let b = Var::zeros((out, lora.rank), DType::F32, &dev).map_err(ModelError::candle)?;
                    adapters.insert((i, short.to_string()), (a, b));
                }
                w.insert(short, frozen(t));
            }
            layers.push(TLayer {
                w,
                attn_norm: deq(&format!("{p}.attn_norm.weight"))?,
                q_norm: deq(&format!("{p}.attn_q_norm.weight"))?,
                k_norm: deq(&format!("{p}.attn_k_norm.weight"))?,
                post_attn_norm: deq(&format!("{p}.post_attention_norm.weight"))?,
                ffn_norm: deq(&format!("{p}.ffn_norm.weight"))?,
                post_ffn_norm: deq(&format!("{p}.post_ffw_norm.weight"))?,
            });
        }
        let out_norm = deq("output_norm.weight")?;
        let embed = deq("token_embd.weight")?;
        let head = frozen(embed.clone());
        Ok(LoraModel { cfg, lora_cfg: lora, embed, head, layers, out_norm, adapters, dropout_rng: std::cell::RefCell::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed)), training: true })
    }

    pub fn scale(&self) -> f64 {
        self.lora_cfg.alpha / self.lora_cfg.rank as f64
    }

    pub fn vars(&self) -> Vec<Var> {
        self.adapters.values().flat_map(|(a, b)| [a.clone(), b.clone()]).collect()
    }

    fn linear(&self, li: usize, name: &'static str, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.contiguous()?.apply_op1_arc(self.layers[li].w[name].clone())?;
        match self.adapters.get(&(li, name.to_string())) {
            None => Ok(y),
            Some((a, b)) => {
                let xin = if self.training && self.lora_cfg.dropout > 0.0 {
                    // Seeded dropout on the adapter's input, as PEFT does.
                    let p = self.lora_cfg.dropout;
                    let n = x.elem_count();
                    let mut rng = self.dropout_rng.borrow_mut();
                    let keep: Vec<f32> = (0..n).map(|_| if rng.gen::<f64>() < p { 0.0 } else { (1.0 / (1.0 - p)) as f32 }).collect();
                    (x * Tensor::from_vec(keep, x.shape(), x.device())?)?
                } else {
                    x.clone()
                };
                let d = xin.broadcast_matmul(&a.as_tensor().t()?)?.broadcast_matmul(&b.as_tensor().t()?)?;
                y + (d * self.scale())?
            }
        }
    }

    fn rope(&self, base: f32, positions: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        let mut ang = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for i in 0..half {
                ang.push(p as f32 / base.powf(2.0 * i as f32 / hd as f32));
            }
        }
        let a = Tensor::from_vec(ang, (positions.len(), half), &Device::Cpu)?;
        Ok((a.cos()?, a.sin()?))
    }

    fn mask(&self, p: &Packed, window: Option<usize>) -> candle_core::Result<Tensor> {
        let t = p.tokens.len();
        let mut m = vec![0f32; t * t];
        for i in 0..t {
            for j in 0..t {
                let masked = p.seq[i] != p.seq[j] || j > i || window.map(|w| p.positions[i] - p.positions[j].min(p.positions[i]) >= w).unwrap_or(false);
                if masked {
                    m[i * t + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (1, 1, t, t), &Device::Cpu)
    }

    /// Mean cross-entropy over the packed targets.
    pub fn loss(&self, p: &Packed) -> Result<Tensor, ModelError> {
        self.loss_inner(p).map_err(ModelError::candle)
    }

    fn loss_inner(&self, p: &Packed) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let t = p.tokens.len();
        let eps = cfg.rms_eps as f32;
        let ids = Tensor::from_vec(p.tokens.clone(), t, &Device::Cpu)?;
        let mut x = (self.embed.index_select(&ids, 0)? * (cfg.d_model as f64).sqrt())?.unsqueeze(0)?;
        let (cg, sg) = self.rope(cfg.rope_base_global, &p.positions)?;
        let (cl, sl) = self.rope(cfg.rope_base_local, &p.positions)?;
        let mg = self.mask(p, None)?;
        let ml = self.mask(p, Some(cfg.sliding_window))?;
        for li in 0..self.layers.len() {
            let l = &self.layers[li];
            let local = cfg.is_local(li);
            let h = candle_nn::ops::rms_norm_slow(&x, &l.attn_norm, eps)?;
            let q = self.linear(li, "q", &h)?.reshape((1, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = self.linear(li, "k", &h)?.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = self.linear(li, "v", &h)?.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::ops::rms_norm_slow(&q, &l.q_norm, eps)?;
            let k = candle_nn::ops::rms_norm_slow(&k, &l.k_norm, eps)?;
            let (cos, sin) = if local { (&cl, &sl) } else { (&cg, &sg) };
            let q = candle_nn::rotary_emb::rope_slow(&q, cos, sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&k, cos, sin)?;
            let scores = (q * cfg.attn_scale)?.broadcast_matmul(&k.transpose(2, 3)?)?; // [1, nh, t, t]
            let scores = scores.broadcast_add(if local { &ml } else { &mg })?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let o = probs.broadcast_matmul(&v)?.transpose(1, 2)?.reshape((1, t, nh * hd))?;
            let o = self.linear(li, "o", &o)?;
            x = (x + candle_nn::ops::rms_norm_slow(&o, &l.post_attn_norm, eps)?)?;
            let h = candle_nn::ops::rms_norm_slow(&x, &l.ffn_norm, eps)?;
            let g = self.linear(li, "gate", &h)?.gelu()?;
            let u = self.linear(li, "up", &h)?;
            let m = self.linear(li, "down", &(g * u)?)?;
            x = (x + candle_nn::ops::rms_norm_slow(&m, &l.post_ffn_norm, eps)?)?;
        }
        let rows: Vec<u32> = p.targets.iter().map(|(r, _)| *r as u32).collect();
        let targets: Vec<u32> = p.targets.iter().map(|(_, t)| *t).collect();
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &Device::Cpu)?;
        let xs = x.squeeze(0)?.index_select(&idx, 0)?;
        let xs = candle_nn::ops::rms_norm_slow(&xs, &self.out_norm, eps)?;
        let logits = xs.contiguous()?.apply_op1_arc(self.head.clone())?;
        candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(targets, n, &Device::Cpu)?)
    }

    /// The adapter as PEFT writes it: tensors keyed
    /// `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`, and
    /// adapter_config.json.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for ((li, short), (a, b)) in &self.adapters {
            let module = TARGETS.iter().find(|(s, _)| s == short).map(|(_, m)| *m).unwrap();
            map.insert(format!("base_model.model.model.layers.{li}.{module}.lora_A.weight"), a.as_tensor().clone());
            map.insert(format!("base_model.model.model.layers.{li}.{module}.lora_B.weight"), b.as_tensor().clone());
        }
        // Written to a temporary name and renamed: a crash never leaves half a file.
        let tmp = dir.join("adapter_model.safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
        std::fs::rename(&tmp, dir.join("adapter_model.safetensors")).map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let modules: Vec<&str> = self.lora_cfg.targets.iter().filter_map(|s| TARGETS.iter().find(|(x, _)| x == s).map(|(_, m)| m.rsplit('.').next().unwrap())).collect();
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.lora_cfg.rank,
            "lora_alpha": self.lora_cfg.alpha,
            "lora_dropout": self.lora_cfg.dropout,
            "target_modules": modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
        });
        std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg).unwrap()).map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        Ok(())
    }
}

/// Training options (see `tunegate tune`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Examples per optimizer step (packed into one sequence).
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// `cosine`, `linear` or `constant` after warmup.
    pub schedule: String,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Stop after this many optimizer steps in all (the schedule still
    /// spans every epoch, so a later resume continues the same run).
    pub max_steps: Option<usize>,
    /// Set from another thread to stop after the current step (cancel).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Stop when the validation loss has not improved for this many
    /// epochs; the adapters end at the best epoch either way.
    pub early_stopping_patience: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { epochs: 3, batch_size: 8, learning_rate: 2e-4, warmup_steps: 5, schedule: "cosine".into(), weight_decay: 0.0, grad_clip: Some(1.0), seed: 0, max_steps: None, stop: None, early_stopping_patience: None }
    }
}

pub fn lr_at(o: &TrainOptions, step: usize, total: usize) -> f64 {
    if step < o.warmup_steps {
        return o.learning_rate * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = (total.saturating_sub(o.warmup_steps)).max(1) as f64;
    let t = ((step - o.warmup_steps) as f64 / span).min(1.0);
    match o.schedule.as_str() {
        "linear" => o.learning_rate * (1.0 - t),
        "constant" => o.learning_rate,
        _ => o.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StepInfo {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub tokens: usize,
    pub grad_norm: f64,
}

/// AdamW moments and step count: the optimizer state a checkpoint keeps
/// (candle's AdamW keeps its state private, so resuming needs our own).
pub struct AdamState {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub t: usize,
}

impl AdamState {
    pub fn new(vars: &[Var]) -> candle_core::Result<AdamState> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamState { m: vars.iter().map(z).collect::<candle_core::Result<_>>()?, v: vars.iter().map(z).collect::<candle_core::Result<_>>()?, t: 0 })
    }

    /// Decoupled weight decay (Loshchilov & Hutter), betas 0.9 / 0.999, eps 1e-8.
    fn step(&mut self, vars: &[Var], grads: &[Option<Tensor>], lr: f64, wd: f64) -> candle_core::Result<()> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t as i32), 1.0 - b2.powi(self.t as i32));
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + eps)?)?;
            let next = ((var.as_tensor() * (1.0 - lr * wd))? - (update * lr)?)?;
            var.set(&next)?;
        }
        Ok(())
    }
}

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub val_losses: Vec<f64>,
    /// The epoch (1-based) whose validation loss was best so far, if any.
    #[serde(default)]
    pub best_epoch: Option<usize>,
}

/// Writes adapters, optimizer state and progress to `dir`, atomically (a
/// temporary directory renamed over the old checkpoint).
pub fn save_checkpoint(model: &LoraModel, state: &AdamState, progress: &Progress, dir: &Path) -> Result<(), ModelError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, ((li, name), (a, b))) in model.adapters.iter().enumerate() {
        map.insert(format!("{li}.{name}.A"), a.as_tensor().clone());
        map.insert(format!("{li}.{name}.B"), b.as_tensor().clone());
        for (k, t) in [("mA", &state.m[2 * i]), ("mB", &state.m[2 * i + 1]), ("vA", &state.v[2 * i]), ("vB", &state.v[2 * i + 1])] {
            map.insert(format!("{li}.{name}.{k}"), t.clone());
        }
    }
    candle_core::safetensors::save(&map, tmp.join("state.safetensors")).map_err(ModelError::candle)?;
    let meta = serde_json::json!({"progress": progress, "adam_t": state.t, "lora": model.lora_cfg});
    std::fs::write(tmp.join("progress.json"), meta.to_string()).map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))
}

/// Restores adapters and optimizer state; returns where to continue.
pub fn load_checkpoint(model: &LoraModel, dir: &Path) -> Result<(AdamState, Progress), ModelError> {
    let text = std::fs::read_to_string(dir.join("progress.json")).map_err(|e| ModelError::Io(dir.join("progress.json"), e))?;
    let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Format(e.to_string()))?;
    let progress: Progress = serde_json::from_value(meta["progress"].clone()).map_err(|e| ModelError::Format(e.to_string()))?;
    let lora: LoraConfig = serde_json::from_value(meta["lora"].clone()).map_err(|e| ModelError::Format(e.to_string()))?;
    if lora != model.lora_cfg {
        return Err(ModelError::Input(format!("the checkpoint in {} was made with other LoRA settings ({lora:?})", dir.display())));
    }
    let t = candle_core::safetensors::load(dir.join("state.safetensors"), &Device::Cpu).map_err(ModelError::candle)?;
    let get = |k: &str| t.get(k).cloned().ok_or_else(|| ModelError::Format(format!("checkpoint {} lacks {k}", dir.display())));
    let (mut m, mut v) = (vec![], vec![]);
    for ((li, name), (a, b)) in model.adapters.iter() {
        a.set(&get(&format!("{li}.{name}.A"))?).map_err(ModelError::candle)?;
        b.set(&get(&format!("{li}.{name}.B"))?).map_err(ModelError::candle)?;
        m.push(get(&format!("{li}.{name}.mA"))?);
        m.push(get(&format!("{li}.{name}.mB"))?);
        v.push(get(&format!("{li}.{name}.vA"))?);
        v.push(get(&format!("{li}.{name}.vB"))?);
    }
    Ok((AdamState { m, v, t: meta["adam_t"].as_u64().unwrap_or(0) as usize }, progress))
}

/// Beside the checkpoint directory, which is replaced at every checkpoint.
fn best_path(checkpoint_dir: &Path) -> std::path::PathBuf {
    checkpoint_dir.with_file_name("best-epoch.safetensors")
}

fn snapshot(model: &LoraModel) -> Result<Vec<Tensor>, ModelError> {
    model.vars().iter().map(|v| v.as_tensor().copy().map_err(ModelError::candle)).collect()
}

fn restore(model: &LoraModel, snap: &[Tensor]) -> Result<(), ModelError> {
    for (v, t) in model.vars().iter().zip(snap) {
        v.set(t).map_err(ModelError::candle)?;
    }
    Ok(())
}

fn save_snapshot(snap: &[Tensor], path: &Path) -> Result<(), ModelError> {
    let map: HashMap<String, Tensor> = snap.iter().enumerate().map(|(i, t)| (format!("{i}"), t.clone())).collect();
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Io(path.to_path_buf(), e))
}

fn load_snapshot(path: &Path) -> Result<Vec<Tensor>, ModelError> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(ModelError::candle)?;
    (0..t.len()).map(|i| t.get(&format!("{i}")).cloned().ok_or_else(|| ModelError::Format(format!("{} is incomplete", path.display())))).collect()
}

/// Checkpointing: every `every` steps into `dir`.
pub struct Checkpointing<'a> {
    pub dir: &'a Path,
    pub every: usize,
}

/// The example order of an epoch: a function of (seed, epoch) alone, so a
/// resumed run sees exactly the batches the interrupted one would have.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)));
    order
}

/// Trains the adapters. `on_step` hears every step; `on_epoch(epoch,
/// val_loss)` every epoch. The same seed on the same machine gives the same
/// adapter, and so does a run resumed from any checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    on_step: &mut dyn FnMut(&StepInfo),
    on_epoch: &mut dyn FnMut(usize, Option<f64>),
) -> Result<Vec<StepInfo>, ModelError> {
    train_resumable(model, examples, validation, o, None, None, on_step, on_epoch).map(|(log, _)| log)
}

/// [`train`] with checkpoints and an optional state to continue from.
#[allow(clippy::too_many_arguments)]
pub fn train_resumable(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    checkpoints: Option<Checkpointing>,
    resume: Option<(AdamState, Progress)>,
    on_step: &mut dyn FnMut(&StepInfo),
    on_epoch: &mut dyn FnMut(usize, Option<f64>),
) -> Result<(Vec<StepInfo>, Progress), ModelError> {
    if examples.is_empty() {
        return Err(ModelError::Input("no training examples".into()));
    }
    let vars = model.vars();
    let bs = o.batch_size.max(1);
    let steps_per_epoch = examples.len().div_ceil(bs);
    let total = steps_per_epoch * o.epochs;
    let mut best_local: Option<Vec<Tensor>> = None;
    let best_snapshot = &mut best_local;
    // A resumed run's best adapters come back from its checkpoint.
    if let (Some(c), Some((_, p))) = (&checkpoints, &resume) {
        if p.best_epoch.is_some() {
            *best_snapshot = load_snapshot(&best_path(c.dir)).ok();
        }
    }
    let (mut state, mut progress) = match resume {
        Some(r) => r,
        None => (AdamState::new(&vars).map_err(ModelError::candle)?, Progress { step: 0, epoch: 0, batch_in_epoch: 0, val_losses: vec![], best_epoch: None }),
    };
    let mut log = vec![];
    while progress.epoch < o.epochs {
        model.training = true;
        let order = epoch_order(examples.len(), o.seed, progress.epoch);
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        while progress.batch_in_epoch < batches.len() {
            let cancelled = o.stop.as_ref().map(|s| s.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(false);
            if cancelled || o.max_steps.map(|m| progress.step >= m).unwrap_or(false) {
                if let Some(c) = &checkpoints {
                    save_checkpoint(model, &state, &progress, c.dir)?;
                }
                model.training = false;
                return Ok((log, progress));
            }
            let chunk = batches[progress.batch_in_epoch];
            let batch: Vec<&TrainExample> = chunk.iter().map(|&i| &examples[i]).collect();
            let p = pack(&batch);
            // Dropout masks come from (seed, step), not from a running stream.
            *model.dropout_rng.borrow_mut() = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ (progress.step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let lr = lr_at(o, progress.step, total);
            let mut info = StepInfo { epoch: progress.epoch, step: progress.step, total_steps: total, loss: f64::NAN, lr, tokens: p.tokens.len(), grad_norm: 0.0 };
            if !p.targets.is_empty() {
                let loss = model.loss(&p)?;
                let grads = loss.backward().map_err(ModelError::candle)?;
                let mut gs: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
                let mut sq = 0f64;
                for g in gs.iter().flatten() {
                    sq += g.sqr().and_then(|s| s.sum_all()).and_then(|s| s.to_scalar::<f32>()).map_err(ModelError::candle)? as f64;
                }
                let norm = sq.sqrt();
                if let Some(c) = o.grad_clip {
                    if norm > c {
                        for g in gs.iter_mut().flatten() {
                            *g = (&*g * (c / norm)).map_err(ModelError::candle)?;
                        }
                    }
                }
                state.step(&vars, &gs, lr, o.weight_decay).map_err(ModelError::candle)?;
                info.loss = loss.to_scalar::<f32>().map_err(ModelError::candle)? as f64;
                info.grad_norm = norm;
            }
            on_step(&info);
            log.push(info);
            progress.step += 1;
            progress.batch_in_epoch += 1;
            if let Some(c) = &checkpoints {
                if c.every > 0 && progress.step % c.every == 0 {
                    save_checkpoint(model, &state, &progress, c.dir)?;
                }
            }
        }
        let val = if validation.is_empty() { None } else { Some(eval_loss(model, validation, bs)?) };
        let mut stop_early = false;
        if let Some(v) = val {
            let best = progress.best_epoch.map(|e| progress.val_losses[e - 1]).unwrap_or(f64::INFINITY);
            progress.val_losses.push(v);
            if v < best {
                progress.best_epoch = Some(progress.val_losses.len());
                *best_snapshot = Some(snapshot(model)?);
            } else if let (Some(p), Some(b)) = (o.early_stopping_patience, progress.best_epoch) {
                stop_early = progress.val_losses.len() - b >= p;
            }
        }
        on_epoch(progress.epoch, val);
        progress.epoch += 1;
        progress.batch_in_epoch = 0;
        if let Some(c) = &checkpoints {
            save_checkpoint(model, &state, &progress, c.dir)?;
            if let Some(b) = best_snapshot.as_ref() {
                save_snapshot(b, &best_path(c.dir))?;
            }
        }
        if stop_early {
            break;
        }
    }
    // The adapters end at the best validated epoch.
    if let (Some(b), Some(e)) = (best_snapshot.as_ref(), progress.best_epoch) {
        if e < progress.val_losses.len() {
            restore(model, b)?;
        }
    }
    model.training = false;
    Ok((log, progress))
}

/// Mean loss over examples (no update).
pub fn eval_loss(model: &mut LoraModel, examples: &[TrainExample], bs: usize) -> Result<f64, ModelError> {
    let was = model.training;
    model.training = false;
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(bs.max(1)) {
        let batch: Vec<&TrainExample> = chunk.iter().collect();
        let p = pack(&batch);
        if p.targets.is_empty() {
            continue;
        }
        let l = model.loss(&p)?.to_scalar::<f32>().map_err(ModelError::candle)? as f64;
        total += l * p.targets.len() as f64;
        n += p.targets.len();
    }
    model.training = was;
    Ok(if n == 0 { 0.0 } else { total / n as f64 })
}
