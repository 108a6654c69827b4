//! One transformer block's forward and backward pass written out by hand,
//! on plain row-major buffers, for training.
//!
//! Why not candle's autograd: its backward pass allocates a zero-filled
//! gradient for every node of the graph and adds each contribution into
//! it, and every reshape, transpose and residual add is a node of its own.
//! With the arithmetic already fused, that bookkeeping was a quarter of a
//! training step. Here the block keeps exactly the activations its backward
//! pass reads and computes each gradient once. The candle graph path
//! ([`LoraModel::loss`]) stays as the reference: tests check these gradients
//! against it and against finite differences.
//!
//! Layout: activations are [t, width] with the heads side by side in each
//! row ([t, heads * head_dim]), as the projections produce them; attention
//! runs per packed example and per head.
//!
//! `manual` chains the blocks and the head into the whole pass behind
//! [`LoraModel::loss_and_grads`].

use super::ops::{self, gelu_parts as gelu, rms_bwd, rms_fwd, softmax_bwd_rows, softmax_rows};
use super::{LoraModel, Packed, TARGETS};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;

/// What a block's backward pass needs from its forward pass.
pub(super) struct Saved {
    x: Vec<f32>,
    h1: Vec<f32>,
    /// q and k before their norms (the norms' backward reads them).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// q (scaled) and k after norm and rotation.
    qr: Vec<f32>,
    kr: Vec<f32>,
    /// Attention probabilities per (segment, head), each len x len.
    probs: Vec<Vec<f32>>,
    o: Vec<f32>,
    a_out: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    m: Vec<f32>,
    dn: Vec<f32>,
    /// Dropout masks on adapter inputs, by module.
    masks: HashMap<&'static str, Vec<f32>>,
}

/// Shared by every block of one pass.
pub(super) struct Ctx {
    pub segments: Vec<(usize, usize)>,
    pub t: usize,
    /// cos/sin tables [t, head_dim / 2] for global and local layers.
    pub global: (Vec<f32>, Vec<f32>),
    pub local: (Vec<f32>, Vec<f32>),
}

/// The adapter's trained matrices and gradients of one module.
pub(super) struct AdapterGrad {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Rotates [t, heads, hd] rows in place by the position's angles (or by
/// their negatives), times `scale`.
fn rope(x: &mut [f32], tab: &(Vec<f32>, Vec<f32>), heads: usize, hd: usize, scale: f32, inverse: bool) {
    let h = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    x.par_chunks_mut(heads * hd).enumerate().for_each(|(p, row)| {
        let (c, s) = (&tab.0[p * h..(p + 1) * h], &tab.1[p * h..(p + 1) * h]);
        for x in row.chunks_mut(hd) {
            for j in 0..h {
                let (x1, x2) = (x[j], x[j + h]);
                let (cj, sj) = (c[j] * scale, sign * s[j] * scale);
                x[j] = x1 * cj - x2 * sj;
                x[j + h] = x2 * cj + x1 * sj;
            }
        }
    });
}


/// dst += src.
fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(4096).zip(src.par_chunks(4096)).for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
}

impl LoraModel {
    pub(super) fn manual(&self, p: &Packed, checkpoint: bool) -> candle_core::Result<(f64, Vec<Option<Tensor>>)> {
        let mut ad: HashMap<(usize, &'static str), AdapterGrad> = HashMap::new();
        for ((li, name), (a, b)) in &self.adapters {
            let name = TARGETS.iter().find(|(s, _)| s == name).map(|(s, _)| *s).unwrap_or("q");
            ad.insert((*li, name), AdapterGrad { a: ops::with_data(a.as_tensor(), |d| d.to_vec())?, b: ops::with_data(b.as_tensor(), |d| d.to_vec())? });
        }
        let tables = |base: f32| {
            let r = self.rope(base, &p.positions);
            (r.cos.as_ref().clone(), r.sin.as_ref().clone())
        };
        let c = Ctx { segments: p.segments(), t: p.tokens.len(), global: tables(self.cfg.rope_base_global), local: tables(self.cfg.rope_base_local) };
        let mut x = ops::with_data(&self.embed_tokens(p)?, |d| d.to_vec())?;
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

    /// A linear layer (frozen weight, plus its adapter when it has one):
    /// returns y and the dropout mask drawn for the adapter's input.
    fn lin_fwd(&self, li: usize, name: &'static str, x: &[f32], rows: usize, ad: &HashMap<(usize, &'static str), AdapterGrad>) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
        let w = &self.layers[li].weights[name];
        let (out, inp) = w.dims2()?;
        let mut y = ops::with_data(w, |w| ops::x_wt(x, w, rows, inp, out))?;
        let Some(a) = ad.get(&(li, name)) else { return Ok((y, None)) };
        let r = a.a.len() / inp;
        let mask = self.dropout_mask(x.len());
        let low = match &mask {
            Some(m) => ops::x_wt(&x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<f32>>(), &a.a, rows, inp, r),
            None => ops::x_wt(x, &a.a, rows, inp, r),
        };
        ops::gemm_into(&mut y, rows, out, r, ops::Mat { data: &low, rs: r, cs: 1 }, ops::Mat { data: &a.b, rs: 1, cs: r }, self.scale() as f32, true);
        Ok((y, mask))
    }

    /// dx (added into `dx` when given) and the adapter's (dA, dB).
    #[allow(clippy::too_many_arguments)]
    fn lin_bwd(&self, li: usize, name: &'static str, x: &[f32], mask: Option<&Vec<f32>>, g: &[f32], rows: usize, dx: &mut Vec<f32>, ad: &HashMap<(usize, &'static str), AdapterGrad>, grads: &mut HashMap<(usize, &'static str), (Vec<f32>, Vec<f32>)>) -> candle_core::Result<()> {
        use super::ops::{gemm_into, gemm_new, Mat};
        let w = &self.layers[li].weights[name];
        let (out, inp) = w.dims2()?;
        ops::with_data(w, |w| {
            if dx.is_empty() {
                *dx = gemm_new(rows, inp, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: w, rs: inp, cs: 1 });
            } else {
                gemm_into(dx, rows, inp, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: w, rs: inp, cs: 1 }, 1.0, true);
            }
        })?;
        let Some(a) = ad.get(&(li, name)) else { return Ok(()) };
        let r = a.a.len() / inp;
        let s = self.scale() as f32;
        let xd: std::borrow::Cow<[f32]> = match mask {
            Some(m) => x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<f32>>().into(),
            None => x.into(),
        };
        let mut gb = gemm_new(rows, r, out, Mat { data: g, rs: out, cs: 1 }, Mat { data: &a.b, rs: r, cs: 1 });
        gb.iter_mut().for_each(|v| *v *= s);
        match mask {
            None => gemm_into(dx, rows, inp, r, Mat { data: &gb, rs: r, cs: 1 }, Mat { data: &a.a, rs: inp, cs: 1 }, 1.0, true),
            Some(m) => {
                let back = gemm_new(rows, inp, r, Mat { data: &gb, rs: r, cs: 1 }, Mat { data: &a.a, rs: inp, cs: 1 });
                dx.iter_mut().zip(back.iter().zip(m)).for_each(|(d, (b, m))| *d += b * m);
            }
        }
        let da = gemm_new(r, inp, rows, Mat { data: &gb, rs: 1, cs: r }, Mat { data: &xd, rs: inp, cs: 1 });
        let xa = ops::x_wt(&xd, &a.a, rows, inp, r);
        let mut db = gemm_new(out, r, rows, Mat { data: g, rs: 1, cs: out }, Mat { data: &xa, rs: r, cs: 1 });
        db.iter_mut().for_each(|v| *v *= s);
        grads.insert((li, name), (da, db));
        Ok(())
    }

    /// The block's output, and what its backward pass needs.
    pub(super) fn block_fwd(&self, li: usize, x: Vec<f32>, c: &Ctx, ad: &HashMap<(usize, &'static str), AdapterGrad>) -> candle_core::Result<(Vec<f32>, Saved)> {
        let cfg = &self.cfg;
        let (nh, hd, t, eps) = (cfg.n_head, cfg.head_dim, c.t, cfg.rms_eps as f32);
        assert_eq!(cfg.n_kv_head, 1, "the hand-written block assumes one key/value head (Gemma 3 270M)");
        self.reseed_dropout(li);
        let l = &self.layers[li];
        let mut masks = HashMap::new();
        let h1 = rms_fwd(&x, &l.norms.attn_norm, eps);
        let mut lin = |name: &'static str, input: &[f32]| -> candle_core::Result<Vec<f32>> {
            let (y, m) = self.lin_fwd(li, name, input, t, ad)?;
            if let Some(m) = m {
                masks.insert(name, m);
            }
            Ok(y)
        };
        let q = lin("q", &h1)?;
        let k = lin("k", &h1)?;
        let v = lin("v", &h1)?;
        let tab = if cfg.is_local(li) { &c.local } else { &c.global };
        let mut qr = rms_fwd(&q, &l.norms.q_norm, eps);
        rope(&mut qr, tab, nh, hd, cfg.attn_scale as f32, false);
        let mut kr = rms_fwd(&k, &l.norms.k_norm, eps);
        rope(&mut kr, tab, 1, hd, 1.0, false);
        let window = cfg.is_local(li).then_some(cfg.sliding_window);
        // Attention per (segment, head), in parallel; each writes its own
        // columns of its own rows of o.
        let jobs: Vec<(usize, usize, usize)> = c.segments.iter().flat_map(|&(s, len)| (0..nh).map(move |h| (s, len, h))).collect();
        let results: Vec<(Vec<f32>, Vec<f32>)> = jobs
            .par_iter()
            .map(|&(s, len, h)| {
                let qh = ops::Mat { data: &qr[s * nh * hd + h * hd..], rs: nh * hd, cs: 1 };
                let kt = ops::Mat { data: &kr[s * hd..], rs: 1, cs: hd };
                let mut p = gemm_seq(len, len, hd, qh, kt);
                softmax_rows(&mut p, len, window);
                let oh = gemm_seq(len, hd, len, ops::Mat { data: &p, rs: len, cs: 1 }, ops::Mat { data: &v[s * hd..], rs: hd, cs: 1 });
                (p, oh)
            })
            .collect();
        let mut o = vec![0f32; t * nh * hd];
        let mut probs = Vec::with_capacity(jobs.len());
        for (&(s, len, h), (p, oh)) in jobs.iter().zip(results) {
            for i in 0..len {
                o[(s + i) * nh * hd + h * hd..][..hd].copy_from_slice(&oh[i * hd..(i + 1) * hd]);
            }
            probs.push(p);
        }
        let a_out = lin("o", &o)?;
        let mut x2 = rms_fwd(&a_out, &l.norms.post_attn_norm, eps);
        add_into(&mut x2, &x);
        let h2 = rms_fwd(&x2, &l.norms.ffn_norm, eps);
        let g = lin("gate", &h2)?;
        let u = lin("up", &h2)?;
        let m: Vec<f32> = g.par_iter().zip(u.par_iter()).map(|(g, u)| gelu(*g).0 * u).collect();
        let dn = lin("down", &m)?;
        let mut y = rms_fwd(&dn, &l.norms.post_ffn_norm, eps);
        add_into(&mut y, &x2);
        Ok((y, Saved { x, h1, q, k, v, qr, kr, probs, o, a_out, x2, h2, g, u, m, dn, masks }))
    }

    /// Given dL/dy, the gradient for the block's input; the adapters'
    /// gradients go into `grads`.
    pub(super) fn block_bwd(&self, li: usize, sv: &Saved, gy: &[f32], c: &Ctx, ad: &HashMap<(usize, &'static str), AdapterGrad>, grads: &mut HashMap<(usize, &'static str), (Vec<f32>, Vec<f32>)>) -> candle_core::Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (nh, hd, t, eps) = (cfg.n_head, cfg.head_dim, c.t, cfg.rms_eps as f32);
        let l = &self.layers[li];
        // y = x2 + rms(dn): the residual passes gy through.
        let g_dn = rms_bwd(&sv.dn, &l.norms.post_ffn_norm, eps, gy, None);
        let mut gm = vec![];
        self.lin_bwd(li, "down", &sv.m, sv.masks.get("down"), &g_dn, t, &mut gm, ad, grads)?;
        let (gg, gu): (Vec<f32>, Vec<f32>) = gm
            .par_iter()
            .zip(sv.g.par_iter().zip(sv.u.par_iter()))
            .map(|(d, (g, u))| {
                let (v, slope) = gelu(*g);
                (d * u * slope, d * v)
            })
            .unzip();
        let mut gh2 = vec![];
        self.lin_bwd(li, "gate", &sv.h2, sv.masks.get("gate"), &gg, t, &mut gh2, ad, grads)?;
        self.lin_bwd(li, "up", &sv.h2, sv.masks.get("up"), &gu, t, &mut gh2, ad, grads)?;
        let mut gx2 = gy.to_vec();
        rms_bwd(&sv.x2, &l.norms.ffn_norm, eps, &gh2, Some(&mut gx2));
        // x2 = x + rms(a_out)
        let g_aout = rms_bwd(&sv.a_out, &l.norms.post_attn_norm, eps, &gx2, None);
        let mut go = vec![];
        self.lin_bwd(li, "o", &sv.o, sv.masks.get("o"), &g_aout, t, &mut go, ad, grads)?;
        // Attention: per (segment, head) dq rows, and dk, dv contributions
        // summed over the heads that share the one key/value head.
        let window = cfg.is_local(li).then_some(cfg.sliding_window);
        let jobs: Vec<(usize, usize, usize, usize)> = c.segments.iter().enumerate().flat_map(|(si, &(s, len))| (0..nh).map(move |h| (si, s, len, h))).collect();
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = jobs
            .par_iter()
            .map(|&(si, s, len, h)| {
                let p = &sv.probs[si * nh + h];
                let doh = ops::Mat { data: &go[s * nh * hd + h * hd..], rs: nh * hd, cs: 1 };
                // dV = P^T dO ; dP = dO V^T
                let dv = gemm_seq(len, hd, len, ops::Mat { data: p, rs: 1, cs: len }, ops::Mat { data: &go[s * nh * hd + h * hd..], rs: nh * hd, cs: 1 });
                let mut dp = gemm_seq(len, len, hd, doh, ops::Mat { data: &sv.v[s * hd..], rs: 1, cs: hd });
                softmax_bwd_rows(&mut dp, p, len, window);
                // dQr = dS Kr ; dKr = dS^T Qr
                let dq = gemm_seq(len, hd, len, ops::Mat { data: &dp, rs: len, cs: 1 }, ops::Mat { data: &sv.kr[s * hd..], rs: hd, cs: 1 });
                let dk = gemm_seq(len, hd, len, ops::Mat { data: &dp, rs: 1, cs: len }, ops::Mat { data: &sv.qr[s * nh * hd + h * hd..], rs: nh * hd, cs: 1 });
                (dq, dk, dv)
            })
            .collect();
        let mut dqr = vec![0f32; t * nh * hd];
        let mut dkr = vec![0f32; t * hd];
        let mut dv = vec![0f32; t * hd];
        for (&(_, s, len, h), (dq, dk, dvh)) in jobs.iter().zip(parts) {
            for i in 0..len {
                dqr[(s + i) * nh * hd + h * hd..][..hd].copy_from_slice(&dq[i * hd..(i + 1) * hd]);
                for (d, x) in dkr[(s + i) * hd..][..hd].iter_mut().zip(&dk[i * hd..(i + 1) * hd]) {
                    *d += x;
                }
                for (d, x) in dv[(s + i) * hd..][..hd].iter_mut().zip(&dvh[i * hd..(i + 1) * hd]) {
                    *d += x;
                }
            }
        }
        let tab = if cfg.is_local(li) { &c.local } else { &c.global };
        rope(&mut dqr, tab, nh, hd, cfg.attn_scale as f32, true);
        rope(&mut dkr, tab, 1, hd, 1.0, true);
        let dq = rms_bwd(&sv.q, &l.norms.q_norm, eps, &dqr, None);
        let dk = rms_bwd(&sv.k, &l.norms.k_norm, eps, &dkr, None);
        let mut gh1 = vec![];
        self.lin_bwd(li, "q", &sv.h1, sv.masks.get("q"), &dq, t, &mut gh1, ad, grads)?;
        self.lin_bwd(li, "k", &sv.h1, sv.masks.get("k"), &dk, t, &mut gh1, ad, grads)?;
        self.lin_bwd(li, "v", &sv.h1, sv.masks.get("v"), &dv, t, &mut gh1, ad, grads)?;
        rms_bwd(&sv.x, &l.norms.attn_norm, eps, &gh1, Some(&mut gx2));
        Ok(gx2)
    }
}

/// A small product on the calling thread (the callers run many in parallel).
fn gemm_seq(m: usize, n: usize, k: usize, lhs: ops::Mat, rhs: ops::Mat) -> Vec<f32> {
    let mut dst = vec![0f32; m * n];
    // SAFETY: dst holds m * n elements; the operands are bounds-checked by
    // gemm_checked.
    ops::gemm_checked(&mut dst, m, n, k, lhs, rhs, 1.0, false, false);
    dst
}

/// Rows of the output head computed at once: 128 x 262,144 logits are
/// 128 MB, so the loss over every position of a batch never holds them all.
const HEAD_CHUNK: usize = 128;

impl LoraModel {
    /// Final norm, the tied output head and mean cross-entropy at the
    /// packed targets' rows, forward and backward together, in chunks of
    /// rows: returns the loss and dL/dx for the last block's output x.
    pub(super) fn head_fwd_bwd(&self, x: &[f32], targets: &[(usize, u32)]) -> candle_core::Result<(f64, Vec<f32>)> {
        use super::ops::{gemm_new, Mat};
        let d = self.cfg.d_model;
        let eps = self.cfg.rms_eps as f32;
        let n = targets.len();
        let mut gx = vec![0f32; x.len()];
        let mut total = 0f64;
        ops::with_data(&self.embed, |e| {
            let vocab = e.len() / d;
            for chunk in targets.chunks(HEAD_CHUNK) {
                let c = chunk.len();
                let xs: Vec<f32> = chunk.iter().flat_map(|(r, _)| x[r * d..(r + 1) * d].iter().copied()).collect();
                let xn = rms_fwd(&xs, &self.out_norm, eps);
                // logits [c, vocab] = xn E^T, turned in place into dL/dlogits.
                let mut logits = ops::x_wt(&xn, e, c, d, vocab);
                let losses: Vec<f64> = logits
                    .par_chunks_mut(vocab)
                    .zip(chunk.par_iter())
                    .map(|(row, &(_, t))| {
                        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let sum: f64 = row.iter().map(|v| ((v - mx) as f64).exp()).sum();
                        let lse = mx as f64 + sum.ln();
                        let loss = lse - row[t as usize] as f64;
                        let inv = 1.0 / n as f64;
                        for v in row.iter_mut() {
                            *v = ((*v as f64 - lse).exp() * inv) as f32;
                        }
                        row[t as usize] -= inv as f32;
                        loss
                    })
                    .collect();
                total += losses.iter().sum::<f64>();
                let gxn = gemm_new(c, d, vocab, Mat { data: &logits, rs: vocab, cs: 1 }, Mat { data: e, rs: d, cs: 1 });
                let gxs = rms_bwd(&xs, &self.out_norm, eps, &gxn, None);
                for (i, (r, _)) in chunk.iter().enumerate() {
                    for (g, v) in gx[r * d..(r + 1) * d].iter_mut().zip(&gxs[i * d..(i + 1) * d]) {
                        *g += v;
                    }
                }
            }
        })?;
        Ok((total / n.max(1) as f64, gx))
    }
}
