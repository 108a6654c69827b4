//! The custom candle ops the LoRA model's graph runs on, with hand-written
//! backward passes, and the kernels beneath them (gemm into the caller's
//! buffer, RMS norm and causal softmax over rows), which the hand-written
//! pass in `block` shares.
//!
//! Kept apart from the model: each op is a self-contained forward and
//! backward pass on raw buffers (candle's fused ops have no backward, and
//! its matmul backward would also compute the frozen weights' gradients),
//! while the model file only wires them into a Gemma block.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

pub(super) type Op = Arc<Box<dyn CustomOp1 + Send + Sync>>;

/// y = x W^T for a frozen W [out, in]; backward gives dL/dx only.
struct Frozen {
    w: Tensor,
}

/// A row-major matrix operand for [`gemm`]: its data and the element
/// steps between rows and between columns (a transposed view is just
/// swapped steps).
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// dst (m x n, row-major) = beta * lhs (m x k) * rhs (k x n), or
/// dst += beta * ... when `accumulate`. Straight into the caller's buffer:
/// candle's matmul zero-fills a fresh output and the frozen-linear op then
/// copied its input and output once more; at these sizes those copies cost
/// about as much as the arithmetic's memory traffic.
pub(super) fn gemm_into(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    gemm_checked(dst, m, n, k, lhs, rhs, beta, accumulate, true)
}

/// [`gemm_into`], on all threads or (`parallel` false, for callers that
/// run many small products in parallel themselves) on the calling one.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_checked(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool, parallel: bool) {
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
pub(super) fn gemm_new(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) -> Vec<f32> {
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: f32 has no invalid bit patterns and gemm (accumulate = false)
    // writes all m * n elements before anything reads them.
    unsafe { dst.set_len(m * n) };
    gemm_into(&mut dst, m, n, k, lhs, rhs, 1.0, false);
    dst
}

/// x W^T for x [rows, inp] and W [out, inp], both row-major.
pub(super) fn x_wt(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
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

pub(super) fn frozen(w: Tensor) -> Op {
    Arc::new(Box::new(Frozen { w }))
}

/// Runs `f` on a tensor's f32 data, without copying when it is contiguous.
pub(super) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
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
        Ok((CpuStorage::F32(rms_fwd(x, &self.w, self.eps)), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_data(arg, |x| with_data(grad, |g| rms_bwd(x, &self.w, self.eps, g, None)))??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

pub(super) fn rms_norm(x: &Tensor, w: &[f32], eps: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNorm { w: w.to_vec(), eps })
}

/// Rotary embedding (halves rotated, as Gemma does) over [1, heads, t, hd],
/// in one pass; its backward is the rotation by the opposite angle (times
/// the same scale).
#[derive(Clone)]
pub(super) struct Rope {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub t: usize,
    pub half: usize,
    pub inverse: bool,
    /// A constant factor folded in (the attention scale for queries), so the
    /// scaled copy is never a separate tensor.
    pub scale: f32,
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
pub(super) struct GeluMul;

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)

/// gelu_tanh(x) and its derivative. 0.5 (1 + tanh z) is sigmoid(2z), and
/// 0.5 (1 - tanh^2 z) is 2 s (1 - s): one exp per element instead of a
/// tanh (libm's tanhf was 8% of a training step).
pub(super) fn gelu_parts(x: f32) -> (f32, f32) {
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
pub(super) struct CausalSoftmax {
    pub len: usize,
    pub window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lora-causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let n = self.len;
        let mut out = contiguous_input(s, l, "causal-softmax")?.to_vec();
        out.par_chunks_mut(n * n).for_each(|p| softmax_rows(p, n, self.window));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let n = self.len;
        let dx = with_data(res, |y| {
            with_data(grad, |g| {
                let mut out = g.to_vec();
                out.par_chunks_mut(n * n).zip(y.par_chunks(n * n)).for_each(|(d, y)| softmax_bwd_rows(d, y, n, self.window));
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
pub(super) struct LoraLinear {
    pub w: Tensor,
    pub mask: Option<Tensor>,
    pub scale: f64,
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

pub(super) fn rms_fwd(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(o, x)| {
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        }
    });
    out
}

/// dx for y = rms_norm(x) * w given dy; added into `acc` when given.
pub(super) fn rms_bwd(x: &[f32], w: &[f32], eps: f32, gy: &[f32], acc: Option<&mut [f32]>) -> Vec<f32> {
    let d = w.len();
    let kernel = |o: &mut [f32], x: &[f32], g: &[f32], add: bool| {
        for ((o, x), g) in o.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
            let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            let gwx: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
            let c = r * r * r * gwx / d as f32;
            for (((o, x), g), w) in o.iter_mut().zip(x).zip(g).zip(w) {
                let v = r * w * g - x * c;
                *o = if add { *o + v } else { v };
            }
        }
    };
    match acc {
        Some(acc) => {
            acc.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).zip(gy.par_chunks(d * ROWS_PER_TASK)).for_each(|((o, x), g)| kernel(o, x, g, true));
            vec![]
        }
        None => {
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).zip(gy.par_chunks(d * ROWS_PER_TASK)).for_each(|((o, x), g)| kernel(o, x, g, false));
            out
        }
    }
}

pub(super) fn softmax_rows(p: &mut [f32], n: usize, window: Option<usize>) {
    for i in 0..n {
        let a = window.map(|w| (i + 1).saturating_sub(w)).unwrap_or(0);
        let row = &mut p[i * n..(i + 1) * n];
        let mx = row[a..=i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in &mut row[a..=i] {
            *v = (*v - mx).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for (j, v) in row.iter_mut().enumerate() {
            *v = if j >= a && j <= i { *v * inv } else { 0.0 };
        }
    }
}

/// dP (in place) becomes dS = P (dP - sum(dP P)) over each row's allowed keys.
pub(super) fn softmax_bwd_rows(dp: &mut [f32], p: &[f32], n: usize, window: Option<usize>) {
    for i in 0..n {
        let a = window.map(|w| (i + 1).saturating_sub(w)).unwrap_or(0);
        let (d, y) = (&mut dp[i * n..(i + 1) * n], &p[i * n..(i + 1) * n]);
        let dot: f32 = y[a..=i].iter().zip(&d[a..=i]).map(|(y, g)| y * g).sum();
        for (j, v) in d.iter_mut().enumerate() {
            *v = if j >= a && j <= i { y[j] * (*v - dot) } else { 0.0 };
        }
    }
}
