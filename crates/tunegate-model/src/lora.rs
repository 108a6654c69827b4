//! LoRA fine-tuning of Gemma 3 on CPU.
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
//! passes ([`RmsNorm`], [`Rope`], [`GeluMul`]): one pass over the data each
//! way instead of a chain of elementwise ops whose intermediates all stay
//! alive until the backward pass. The finite-difference gradient test
//! guards them. Frozen linear layers use [`Frozen`], whose backward returns
//! only the input's gradient: candle's matmul backward would also compute
//! the frozen weight's gradient (for the tied 262,144 x 640 head, a large
//! waste).

use crate::gemma3::Config;
use crate::ModelError;
use candle_core::quantized::gguf_file;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

mod block;

type Op = Arc<Box<dyn CustomOp1 + Send + Sync>>;

/// y = x W^T for a frozen W [out, in]; backward gives dL/dx only.
struct Frozen {
    w: Tensor,
}

/// A row-major matrix operand for [`gemm`]: its data and the element
/// steps between rows and between columns (a transposed view is just
/// swapped steps).
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// dst (m x n, row-major) = beta * lhs (m x k) * rhs (k x n), or
/// dst += beta * ... when `accumulate`. Straight into the caller's buffer:
/// candle's matmul zero-fills a fresh output and the frozen-linear op then
/// copied its input and output once more; at these sizes those copies cost
/// about as much as the arithmetic's memory traffic.
fn gemm_into(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    gemm_checked(dst, m, n, k, lhs, rhs, beta, accumulate, true)
}

/// [`gemm_into`], on all threads or (`parallel` false, for callers that
/// run many small products in parallel themselves) on the calling one.
#[allow(clippy::too_many_arguments)]
fn gemm_checked(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool, parallel: bool) {
    assert!(dst.len() >= m * n && lhs.data.len() >= (m.max(1) - 1) * lhs.rs + (k.max(1) - 1) * lhs.cs + 1 && rhs.data.len() >= (k.max(1) - 1) * rhs.rs + (n.max(1) - 1) * rhs.cs + 1);
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 && parallel { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the bounds are asserted above; dst does not alias the inputs
    // (it is a distinct &mut).
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, accumulate, lhs.data.as_ptr(), lhs.cs as isize, lhs.rs as isize, rhs.data.as_ptr(), rhs.cs as isize, rhs.rs as isize, 1.0, beta, false, false, false, par);
    }
}

/// A fresh m x n product (not zero-filled first: gemm writes every element).
fn gemm_new(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) -> Vec<f32> {
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: f32 has no invalid bit patterns and gemm (accumulate = false)
    // writes all m * n elements before anything reads them.
    unsafe { dst.set_len(m * n) };
    gemm_into(&mut dst, m, n, k, lhs, rhs, 1.0, false);
    dst
}

/// x W^T for x [rows, inp] and W [out, inp], both row-major.
fn x_wt(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    gemm_new(rows, out, inp, Mat { data: x, rs: inp, cs: 1 }, Mat { data: w, rs: 1, cs: inp })
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_input(s, l, "frozen-linear")?;
        let dims = l.shape().dims();
        let inp = *dims.last().unwrap();
        let out = self.w.dim(0)?;
        let y = with_data(&self.w, |w| x_wt(x, w, x.len() / inp, inp, out))?;
        let mut od = dims.to_vec();
        *od.last_mut().unwrap() = out;
        Ok((CpuStorage::F32(y), Shape::from(od)))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (out, inp) = self.w.dims2()?;
        let dx = with_data(grad, |g| with_data(&self.w, |w| gemm_new(g.len() / out, inp, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: w, rs: inp, cs: 1 })))??;
        let mut dims = grad.dims().to_vec();
        *dims.last_mut().unwrap() = inp;
        Ok(Some(Tensor::from_vec(dx, dims, grad.device())?))
    }
}

fn frozen(w: Tensor) -> Op {
    Arc::new(Box::new(Frozen { w }))
}

/// Runs `f` on a tensor's f32 data, without copying when it is contiguous.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let (o1, o2) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    match &*s {
        candle_core::Storage::Cpu(c) => Ok(f(&c.as_slice::<f32>()?[o1..o2])),
        _ => Err(candle_core::Error::Msg("training runs on the CPU".into())),
    }
}

fn contiguous_input<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (o1, o2) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op} needs a contiguous input")))?;
    Ok(&s.as_slice::<f32>()?[o1..o2])
}

/// Rows per parallel task in the fused ops: large enough that the split
/// costs nothing, small enough that both cores get work.
const ROWS_PER_TASK: usize = 32;

/// RMS norm with a frozen weight, forward and backward each in one pass
/// over the data. The composite version (square, mean, add, sqrt, divide,
/// multiply) kept five full-size intermediates per call alive for the
/// backward pass, and a layer has six norms: most of the activation memory.
/// Backward: with r = 1/rms(x), dx_i = r w_i g_i - x_i r^3 (sum_j g_j w_j x_j) / d.
struct RmsNorm {
    w: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "lora-rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_input(s, l, "rms-norm")?;
        Ok((CpuStorage::F32(block::rms_fwd(x, &self.w, self.eps)), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_data(arg, |x| with_data(grad, |g| block::rms_bwd(x, &self.w, self.eps, g, None)))??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

fn rms_norm(x: &Tensor, w: &[f32], eps: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm { w: w.to_vec(), eps })
}

/// Rotary embedding (halves rotated, as Gemma does) over [1, heads, t, hd],
/// in one pass; its backward is the rotation by the opposite angle (times
/// the same scale).
#[derive(Clone)]
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    t: usize,
    half: usize,
    inverse: bool,
    /// A constant factor folded in (the attention scale for queries), so the
    /// scaled copy is never a separate tensor.
    scale: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "lora-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = contiguous_input(s, l, "rope")?;
        let (h, hd) = (self.half, 2 * self.half);
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hd * ROWS_PER_TASK).zip(x.par_chunks(hd * ROWS_PER_TASK)).enumerate().for_each(|(task, (o, x))| {
            for (i, (o, x)) in o.chunks_mut(hd).zip(x.chunks(hd)).enumerate() {
                let p = (task * ROWS_PER_TASK + i) % self.t;
                let (c, sn) = (&self.cos[p * h..(p + 1) * h], &self.sin[p * h..(p + 1) * h]);
                for j in 0..h {
                    let (x1, x2, s, c) = (x[j], x[j + h], sign * sn[j] * self.scale, c[j] * self.scale);
                    o[j] = x1 * c - x2 * s;
                    o[j + h] = x2 * c + x1 * s;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Rope { inverse: !self.inverse, ..self.clone() })?))
    }
}

/// gelu_tanh(gate) * up, the Gemma MLP's gating, in one pass each way
/// (the composite kept gelu's intermediates and the product alive).
struct GeluMul;

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)

/// gelu_tanh(x) and its derivative. 0.5 (1 + tanh z) is sigmoid(2z), and
/// 0.5 (1 - tanh^2 z) is 2 s (1 - s): one exp per element instead of a
/// tanh (libm's tanhf was 8% of a training step).
fn gelu_parts(x: f32) -> (f32, f32) {
    let z = GELU_K * (x + 0.044715 * x * x * x);
    let s = 1.0 / (1.0 + (-2.0 * z).exp());
    let value = x * s;
    let slope = s + x * 2.0 * s * (1.0 - s) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
    (value, slope)
}

/// Softmax over the last dimension of [.., len, len] attention scores with
/// the causal (and sliding-window) mask applied inside: masked entries are
/// exactly 0. One pass each way; the backward needs only the output:
/// dx = y (g - sum(g y)). The composite (mask add, max, subtract, exp, sum,
/// divide) kept six score-sized tensors per head alive until the backward.
struct CausalSoftmax {
    len: usize,
    window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lora-causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let n = self.len;
        let mut out = contiguous_input(s, l, "causal-softmax")?.to_vec();
        out.par_chunks_mut(n * n).for_each(|p| block::softmax_rows(p, n, self.window));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let n = self.len;
        let dx = with_data(res, |y| {
            with_data(grad, |g| {
                let mut out = g.to_vec();
                out.par_chunks_mut(n * n).zip(y.par_chunks(n * n)).for_each(|(d, y)| block::softmax_bwd_rows(d, y, n, self.window));
                out
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

impl candle_core::CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "lora-gelu-mul"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (g, u) = (contiguous_input(s1, l1, "gelu-mul")?, contiguous_input(s2, l2, "gelu-mul")?);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((o, g), u)| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = gelu_parts(*g).0 * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (dg, du) = with_data(gate, |g| {
            with_data(up, |u| {
                with_data(grad, |d| {
                    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
                    dg.par_chunks_mut(4096).zip(du.par_chunks_mut(4096)).zip(g.par_chunks(4096).zip(u.par_chunks(4096)).zip(d.par_chunks(4096))).for_each(|((dg, du), ((g, u), d))| {
                        for i in 0..g.len() {
                            let (v, slope) = gelu_parts(g[i]);
                            dg[i] = d[i] * u[i] * slope;
                            du[i] = d[i] * v;
                        }
                    });
                    (dg, du)
                })
            })
        })???;
        Ok((Some(Tensor::from_vec(dg, gate.shape(), gate.device())?), Some(Tensor::from_vec(du, up.shape(), up.device())?)))
    }
}

/// A frozen linear layer with its adapter, fused:
/// y = x W^T + s (xd A^T) B^T with xd = x * dropout mask (or x).
/// Backward, with g = dL/dy and gb = s g B ([rows, r]):
/// dx = g W + (gb A) * mask, dA = gb^T xd, dB = s g^T (xd A^T).
/// As one op the graph keeps only x and y; the composite kept the base
/// output, the low-rank product, its scaled copy and the sum (four tensors
/// of the layer's output size, for every adapted layer).
struct LoraLinear {
    w: Tensor,
    mask: Option<Tensor>,
    scale: f64,
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let inp = *dims.last().unwrap_or(&1);
        let x = contiguous_input(s1, l1, "lora-linear")?;
        let (a, b) = (contiguous_input(s2, l2, "lora-linear")?, contiguous_input(s3, l3, "lora-linear")?);
        let (out, rows, r) = (self.w.dim(0)?, x.len() / inp, l2.shape().dims()[0]);
        let mut y = with_data(&self.w, |w| x_wt(x, w, rows, inp, out))?;
        let low = match &self.mask {
            Some(m) => with_data(m, |m| {
                let xd: Vec<f32> = x.iter().zip(m).map(|(x, m)| x * m).collect();
                x_wt(&xd, a, rows, inp, r)
            })?,
            None => x_wt(x, a, rows, inp, r),
        };
        // y += s * low B^T
        gemm_into(&mut y, rows, out, r, Mat { data: &low, rs: r, cs: 1 }, Mat { data: b, rs: 1, cs: r }, self.scale as f32, true);
        let mut od = dims.to_vec();
        *od.last_mut().unwrap() = out;
        Ok((CpuStorage::F32(y), Shape::from(od)))
    }
    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inp) = self.w.dims2()?;
        let r = a.dim(0)?;
        let s = self.scale as f32;
        let mask = match &self.mask {
            Some(m) => Some(with_data(m, |m| m.to_vec())?),
            None => None,
        };
        let (dx, da, db) = with_data(x, |x| {
            with_data(grad, |g| {
                with_data(a, |av| {
                    with_data(b, |bv| {
                        with_data(&self.w, |w| {
                            let rows = x.len() / inp;
                            let xd: std::borrow::Cow<[f32]> = match &mask {
                                Some(m) => x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<f32>>().into(),
                                None => x.into(),
                            };
                            // gb = s g B  [rows, r]
                            let mut gb = gemm_new(rows, r, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: bv, rs: r, cs: 1 });
                            gb.iter_mut().for_each(|v| *v *= s);
                            // dx = g W + (gb A) * mask
                            let mut dx = gemm_new(rows, inp, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: w, rs: inp, cs: 1 });
                            match &mask {
                                None => gemm_into(&mut dx, rows, inp, r, Mat { data: &gb, rs: r, cs: 1 }, Mat { data: av, rs: inp, cs: 1 }, 1.0, true),
                                Some(m) => {
                                    let back = gemm_new(rows, inp, r, Mat { data: &gb, rs: r, cs: 1 }, Mat { data: av, rs: inp, cs: 1 });
                                    dx.iter_mut().zip(back.iter().zip(m)).for_each(|(d, (b, m))| *d += b * m);
                                }
                            }
                            // dA = gb^T xd  [r, in]
                            let da = gemm_new(r, inp, rows, Mat { data: &gb, rs: 1, cs: r }, Mat { data: &xd, rs: inp, cs: 1 });
                            // dB = s g^T (xd A^T)  [out, r]
                            let xa = x_wt(&xd, av, rows, inp, r);
                            let mut db = gemm_new(out, r, rows, Mat { data: g, rs: 1, cs: out }, Mat { data: &xa, rs: r, cs: 1 });
                            db.iter_mut().for_each(|v| *v *= s);
                            (dx, da, db)
                        })
                    })
                })
            })
        })?????;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), Some(Tensor::from_vec(da, a.shape(), dev)?), Some(Tensor::from_vec(db, b.shape(), dev)?)))
    }
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
        let sep =
            if prompt.ends_with(char::is_whitespace) || answer.starts_with(char::is_whitespace) {
                ""
            } else {
                " "
            };
        let p = tok.encode(prompt, true, false);
        let mut ids = tok.encode(&format!("{prompt}{sep}{answer}"), true, false);
        if ids.len() < p.len() || ids[..p.len()] != p[..] {
            ids = p.clone();
            ids.extend(tok.encode(&format!("{sep}{answer}"), false, false));
        }
        ids.push(tok.eos_id().unwrap_or(1));
        TrainExample {
            loss_from: p.len(),
            tokens: ids,
        }
    }
}

impl Packed {
    /// (start, length) of each example in the packed sequence.
    pub fn segments(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = vec![];
        for (i, &s) in self.seq.iter().enumerate() {
            match out.last_mut() {
                Some((start, len)) if self.seq[*start] == s => *len += 1,
                _ => out.push((i, 1)),
            }
        }
        out
    }
}

pub fn pack(examples: &[&TrainExample]) -> Packed {
    let mut p = Packed {
        tokens: vec![],
        positions: vec![],
        seq: vec![],
        targets: vec![],
    };
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

    fn manual(&self, p: &Packed, checkpoint: bool) -> candle_core::Result<(f64, Vec<Option<Tensor>>)> {
        use block::{AdapterGrad, Ctx};
        let mut ad: HashMap<(usize, &'static str), AdapterGrad> = HashMap::new();
        for ((li, name), (a, b)) in &self.adapters {
            let name = TARGETS.iter().find(|(s, _)| s == name).map(|(s, _)| *s).unwrap_or("q");
            ad.insert((*li, name), AdapterGrad { a: with_data(a.as_tensor(), |d| d.to_vec())?, b: with_data(b.as_tensor(), |d| d.to_vec())? });
        }
        let tables = |base: f32| {
            let r = self.rope(base, &p.positions);
            (r.cos.as_ref().clone(), r.sin.as_ref().clone())
        };
        let c = Ctx { segments: p.segments(), t: p.tokens.len(), global: tables(self.cfg.rope_base_global), local: tables(self.cfg.rope_base_local) };
        let mut x = with_data(&self.embed_tokens(p)?, |d| d.to_vec())?;
        let (mut inputs, mut saved) = (vec![], vec![]);
        for li in 0..self.layers.len() {
            if checkpoint {
                inputs.push(x.clone());
            }
            let (y, s) = self.block_fwd(li, x, &c, &ad)?;
            if !checkpoint {
                saved.push(s);
            }
            x = y;
        }
        let (value, mut g) = self.head_fwd_bwd(&x, &p.targets)?;
        drop(x);
        let mut out: HashMap<(usize, &'static str), (Vec<f32>, Vec<f32>)> = HashMap::new();
        for li in (0..self.layers.len()).rev() {
            let s = if checkpoint { self.block_fwd(li, inputs.pop().unwrap(), &c, &ad)?.1 } else { saved.pop().unwrap() };
            g = self.block_bwd(li, &s, &g, &c, &ad, &mut out)?;
        }
        let mut result = vec![];
        for ((li, name), (a, b)) in &self.adapters {
            let name = TARGETS.iter().find(|(s, _)| s == name).map(|(s, _)| *s).unwrap_or("q");
            match out.remove(&(*li, name)) {
                Some((da, db)) => {
                    result.push(Some(Tensor::from_vec(da, a.as_tensor().shape(), &Device::Cpu)?));
                    result.push(Some(Tensor::from_vec(db, b.as_tensor().shape(), &Device::Cpu)?));
                }
                None => result.extend([None, None]),
            }
        }
        Ok((value, result))
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

    /// The adapter as PEFT writes it: tensors keyed
    /// `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`, and
    /// adapter_config.json.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for ((li, short), (a, b)) in &self.adapters {
            let module = TARGETS
                .iter()
                .find(|(s, _)| s == short)
                .map(|(_, m)| *m)
                .unwrap();
            map.insert(
                format!("base_model.model.model.layers.{li}.{module}.lora_A.weight"),
                a.as_tensor().clone(),
            );
            map.insert(
                format!("base_model.model.model.layers.{li}.{module}.lora_B.weight"),
                b.as_tensor().clone(),
            );
        }
        // Written to a temporary name and renamed: a crash never leaves half a file.
        let tmp = dir.join("adapter_model.safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
        std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))
            .map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        let modules: Vec<&str> = self
            .lora_cfg
            .targets
            .iter()
            .filter_map(|s| {
                TARGETS
                    .iter()
                    .find(|(x, _)| x == s)
                    .map(|(_, m)| m.rsplit('.').next().unwrap())
            })
            .collect();
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
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&cfg).unwrap(),
        )
        .map_err(|e| ModelError::Io(dir.to_path_buf(), e))?;
        Ok(())
    }
}

/// Training options (see `tunegate tune`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Examples per forward/backward pass (packed into one sequence).
    pub batch_size: usize,
    /// Passes whose gradients are summed before each optimizer step: a
    /// step sees `batch_size * grad_accum` examples while memory holds only
    /// `batch_size` of them. The loss is the mean over all the step's
    /// completion tokens either way, so (batch 8, accum 1) and (batch 4,
    /// accum 2) train the same model up to float rounding.
    pub grad_accum: usize,
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
    /// Pick the best epoch (and stop early) by the task metric instead of
    /// the validation loss; ties on the metric go to the lower loss.
    pub select_by_metric: bool,
    /// Recompute each layer's activations in the backward pass instead of
    /// keeping them all (see [`LoraModel::loss_and_grads`]).
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 3,
            batch_size: 8,
            learning_rate: 2e-4,
            warmup_steps: 5,
            schedule: "cosine".into(),
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            seed: 0,
            max_steps: None,
            stop: None,
            early_stopping_patience: None,
            grad_accum: 1,
            select_by_metric: false,
            gradient_checkpointing: false,
        }
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
        Ok(AdamState {
            m: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(z).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// Decoupled weight decay (Loshchilov & Hutter), betas 0.9 / 0.999, eps 1e-8.
    fn step(
        &mut self,
        vars: &[Var],
        grads: &[Option<Tensor>],
        lr: f64,
        wd: f64,
    ) -> candle_core::Result<()> {
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
    /// The task metric on the validation set per epoch (higher is better),
    /// when the caller measures one.
    #[serde(default)]
    pub val_metrics: Vec<f64>,
    /// The epoch (1-based) that was best so far (by validation loss, or by
    /// the metric with `select_by_metric`), if any.
    #[serde(default)]
    pub best_epoch: Option<usize>,
}

/// What `on_epoch` hears at the end of each epoch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochInfo {
    /// 0-based.
    pub epoch: usize,
    pub val_loss: Option<f64>,
    pub val_metric: Option<f64>,
    /// 1-based, as in [`Progress::best_epoch`].
    pub best_epoch: Option<usize>,
}

/// The caller's view into a run: every step, every epoch, and optionally a
/// task metric measured on the validation set after each epoch (the model
/// crate knows nothing of tasks; the caller evaluates the adapters it is
/// handed, e.g. by generating and scoring as an eval would).
pub struct Hooks<'a> {
    pub on_step: &'a mut dyn FnMut(&StepInfo),
    pub on_epoch: &'a mut dyn FnMut(&EpochInfo),
    pub metric: Option<&'a mut dyn FnMut(&LoraModel) -> Result<f64, ModelError>>,
}

/// Writes adapters, optimizer state and progress to `dir`, atomically (a
/// temporary directory renamed over the old checkpoint).
pub fn save_checkpoint(
    model: &LoraModel,
    state: &AdamState,
    progress: &Progress,
    dir: &Path,
) -> Result<(), ModelError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, ((li, name), (a, b))) in model.adapters.iter().enumerate() {
        map.insert(format!("{li}.{name}.A"), a.as_tensor().clone());
        map.insert(format!("{li}.{name}.B"), b.as_tensor().clone());
        for (k, t) in [
            ("mA", &state.m[2 * i]),
            ("mB", &state.m[2 * i + 1]),
            ("vA", &state.v[2 * i]),
            ("vB", &state.v[2 * i + 1]),
        ] {
            map.insert(format!("{li}.{name}.{k}"), t.clone());
        }
    }
    candle_core::safetensors::save(&map, tmp.join("state.safetensors"))
        .map_err(ModelError::candle)?;
    let meta = serde_json::json!({"progress": progress, "adam_t": state.t, "lora": model.lora_cfg});
    std::fs::write(tmp.join("progress.json"), meta.to_string())
        .map_err(|e| ModelError::Io(tmp.clone(), e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::Io(dir.to_path_buf(), e))
}

/// Restores adapters and optimizer state; returns where to continue.
pub fn load_checkpoint(model: &LoraModel, dir: &Path) -> Result<(AdamState, Progress), ModelError> {
    let text = std::fs::read_to_string(dir.join("progress.json"))
        .map_err(|e| ModelError::Io(dir.join("progress.json"), e))?;
    let meta: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Format(e.to_string()))?;
    let progress: Progress = serde_json::from_value(meta["progress"].clone())
        .map_err(|e| ModelError::Format(e.to_string()))?;
    let lora: LoraConfig = serde_json::from_value(meta["lora"].clone())
        .map_err(|e| ModelError::Format(e.to_string()))?;
    if lora != model.lora_cfg {
        return Err(ModelError::Input(format!(
            "the checkpoint in {} was made with other LoRA settings ({lora:?})",
            dir.display()
        )));
    }
    let t = candle_core::safetensors::load(dir.join("state.safetensors"), &Device::Cpu)
        .map_err(ModelError::candle)?;
    let get = |k: &str| {
        t.get(k)
            .cloned()
            .ok_or_else(|| ModelError::Format(format!("checkpoint {} lacks {k}", dir.display())))
    };
    let (mut m, mut v) = (vec![], vec![]);
    for ((li, name), (a, b)) in model.adapters.iter() {
        a.set(&get(&format!("{li}.{name}.A"))?)
            .map_err(ModelError::candle)?;
        b.set(&get(&format!("{li}.{name}.B"))?)
            .map_err(ModelError::candle)?;
        m.push(get(&format!("{li}.{name}.mA"))?);
        m.push(get(&format!("{li}.{name}.mB"))?);
        v.push(get(&format!("{li}.{name}.vA"))?);
        v.push(get(&format!("{li}.{name}.vB"))?);
    }
    Ok((
        AdamState {
            m,
            v,
            t: meta["adam_t"].as_u64().unwrap_or(0) as usize,
        },
        progress,
    ))
}

/// Beside the checkpoint directory, which is replaced at every checkpoint.
fn best_path(checkpoint_dir: &Path) -> std::path::PathBuf {
    checkpoint_dir.with_file_name("best-epoch.safetensors")
}

fn snapshot(model: &LoraModel) -> Result<Vec<Tensor>, ModelError> {
    model
        .vars()
        .iter()
        .map(|v| v.as_tensor().copy().map_err(ModelError::candle))
        .collect()
}

fn restore(model: &LoraModel, snap: &[Tensor]) -> Result<(), ModelError> {
    for (v, t) in model.vars().iter().zip(snap) {
        v.set(t).map_err(ModelError::candle)?;
    }
    Ok(())
}

fn save_snapshot(snap: &[Tensor], path: &Path) -> Result<(), ModelError> {
    let map: HashMap<String, Tensor> = snap
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i}"), t.clone()))
        .collect();
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(ModelError::candle)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Io(path.to_path_buf(), e))
}

fn load_snapshot(path: &Path) -> Result<Vec<Tensor>, ModelError> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(ModelError::candle)?;
    (0..t.len())
        .map(|i| {
            t.get(&format!("{i}"))
                .cloned()
                .ok_or_else(|| ModelError::Format(format!("{} is incomplete", path.display())))
        })
        .collect()
}

/// Checkpointing: every `every` steps into `dir`.
pub struct Checkpointing<'a> {
    pub dir: &'a Path,
    pub every: usize,
}

/// The example order of an epoch: a function of (seed, epoch) alone, so a
/// resumed run sees exactly the batches the interrupted one would have.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
    ));
    order
}

/// Trains the adapters. `on_step` hears every step; `on_epoch` every epoch.
/// The same seed on the same machine gives the same adapter, and so does a
/// run resumed from any checkpoint.
pub fn train(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    on_step: &mut dyn FnMut(&StepInfo),
    on_epoch: &mut dyn FnMut(&EpochInfo),
) -> Result<Vec<StepInfo>, ModelError> {
    train_resumable(
        model,
        examples,
        validation,
        o,
        None,
        None,
        Hooks {
            on_step,
            on_epoch,
            metric: None,
        },
    )
    .map(|(log, _)| log)
}

/// Whether epoch `e` (0-based) of `p` beats the best so far.
fn improves(p: &Progress, e: usize, by_metric: bool) -> bool {
    let Some(b) = p.best_epoch.map(|b| b - 1) else {
        return true;
    };
    let loss = |i: usize| p.val_losses.get(i).copied().unwrap_or(f64::INFINITY);
    if by_metric {
        if let (Some(m), Some(mb)) = (p.val_metrics.get(e), p.val_metrics.get(b)) {
            if m != mb {
                return m > mb;
            }
        }
    }
    loss(e) < loss(b)
}

/// One optimizer step's forward and backward passes over `batch`, in
/// passes of `micro` examples, each pass's gradient weighted by its share
/// of the step's completion tokens (so the sum is the gradient of the
/// step's mean loss). Returns (mean loss, gradients) or None when the
/// batch has nothing to learn.
#[allow(clippy::type_complexity)]
fn step_gradients(
    model: &LoraModel,
    vars: &[Var],
    batch: &[&TrainExample],
    micro: usize,
    seed: u64,
    step: usize,
    checkpointing: bool,
) -> Result<Option<(f64, Vec<Option<Tensor>>)>, ModelError> {
    let passes: Vec<Packed> = batch.chunks(micro.max(1)).map(pack).collect();
    let total: usize = passes.iter().map(|p| p.targets.len()).sum();
    if total == 0 {
        return Ok(None);
    }
    let mut sum: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_sum = 0f64;
    for (i, p) in passes.iter().enumerate() {
        if p.targets.is_empty() {
            continue;
        }
        // Dropout masks come from (seed, step, pass), not from a running stream.
        let mix = (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        model.dropout_seed.set(seed ^ mix);
        let w = p.targets.len() as f64 / total as f64;
        let (loss, pass) = model.loss_and_grads(p, checkpointing)?;
        loss_sum += loss * w;
        for (acc, g) in sum.iter_mut().zip(pass) {
            if let Some(g) = g {
                let g = if passes.len() == 1 { g } else { (g * w).map_err(ModelError::candle)? };
                *acc = Some(match acc.take() {
                    None => g,
                    Some(a) => (a + g).map_err(ModelError::candle)?,
                });
            }
        }
    }
    Ok(Some((loss_sum, sum)))
}

/// [`train`] with checkpoints, an optional state to continue from, and an
/// optional per-epoch task metric.
pub fn train_resumable(
    model: &mut LoraModel,
    examples: &[TrainExample],
    validation: &[TrainExample],
    o: &TrainOptions,
    checkpoints: Option<Checkpointing>,
    resume: Option<(AdamState, Progress)>,
    hooks: Hooks,
) -> Result<(Vec<StepInfo>, Progress), ModelError> {
    let Hooks {
        on_step,
        on_epoch,
        mut metric,
    } = hooks;
    if examples.is_empty() {
        return Err(ModelError::Input("no training examples".into()));
    }
    let vars = model.vars();
    let micro = o.batch_size.max(1);
    let bs = micro * o.grad_accum.max(1);
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
        None => (
            AdamState::new(&vars).map_err(ModelError::candle)?,
            Progress {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                val_losses: vec![],
                val_metrics: vec![],
                best_epoch: None,
            },
        ),
    };
    let mut log = vec![];
    while progress.epoch < o.epochs {
        model.training = true;
        let order = epoch_order(examples.len(), o.seed, progress.epoch);
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        while progress.batch_in_epoch < batches.len() {
            let cancelled = o
                .stop
                .as_ref()
                .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(false);
            if cancelled || o.max_steps.map(|m| progress.step >= m).unwrap_or(false) {
                if let Some(c) = &checkpoints {
                    save_checkpoint(model, &state, &progress, c.dir)?;
                }
                model.training = false;
                return Ok((log, progress));
            }
            let chunk = batches[progress.batch_in_epoch];
            let batch: Vec<&TrainExample> = chunk.iter().map(|&i| &examples[i]).collect();
            let lr = lr_at(o, progress.step, total);
            let tokens = batch.iter().map(|e| e.tokens.len()).sum();
            let mut info = StepInfo {
                epoch: progress.epoch,
                step: progress.step,
                total_steps: total,
                loss: f64::NAN,
                lr,
                tokens,
                grad_norm: 0.0,
            };
            if let Some((loss, mut gs)) =
                step_gradients(model, &vars, &batch, micro, o.seed, progress.step, o.gradient_checkpointing)?
            {
                let mut sq = 0f64;
                for g in gs.iter().flatten() {
                    sq += g
                        .sqr()
                        .and_then(|s| s.sum_all())
                        .and_then(|s| s.to_scalar::<f32>())
                        .map_err(ModelError::candle)? as f64;
                }
                let norm = sq.sqrt();
                if let Some(c) = o.grad_clip {
                    if norm > c {
                        for g in gs.iter_mut().flatten() {
                            *g = (&*g * (c / norm)).map_err(ModelError::candle)?;
                        }
                    }
                }
                state
                    .step(&vars, &gs, lr, o.weight_decay)
                    .map_err(ModelError::candle)?;
                info.loss = loss;
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
        model.training = false;
        let val = if validation.is_empty() {
            None
        } else {
            Some(eval_loss(model, validation, micro)?)
        };
        let val_metric = match metric.as_mut() {
            Some(f) if val.is_some() => Some(f(model)?),
            _ => None,
        };
        let mut stop_early = false;
        if let Some(v) = val {
            progress.val_losses.push(v);
            if let Some(m) = val_metric {
                progress.val_metrics.push(m);
            }
            let e = progress.val_losses.len() - 1;
            if improves(&progress, e, o.select_by_metric && val_metric.is_some()) {
                progress.best_epoch = Some(e + 1);
                *best_snapshot = Some(snapshot(model)?);
            } else if let (Some(p), Some(b)) = (o.early_stopping_patience, progress.best_epoch) {
                stop_early = progress.val_losses.len() - b >= p;
            }
        }
        on_epoch(&EpochInfo {
            epoch: progress.epoch,
            val_loss: val,
            val_metric,
            best_epoch: progress.best_epoch,
        });
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
pub fn eval_loss(
    model: &mut LoraModel,
    examples: &[TrainExample],
    bs: usize,
) -> Result<f64, ModelError> {
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
        let l = model
            .loss(&p)?
            .to_scalar::<f32>()
            .map_err(ModelError::candle)? as f64;
        total += l * p.targets.len() as f64;
        n += p.targets.len();
    }
    model.training = was;
    Ok(if n == 0 { 0.0 } else { total / n as f64 })
}
