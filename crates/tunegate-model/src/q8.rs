//! Matrix products of 8-bit weights (Q8_0, and Q5_0 widened to 8 bits
//! without loss) with activations quantized per 32 values, as llama.cpp.
//!
//! Why not candle's kernels: its fast (repacked) x86 kernels quantize the
//! activations per 256 values (Q8_K) and need the input width to be a
//! multiple of 256 (Gemma 3 270M's is 640), and its per-32 kernel is the
//! portable scalar one unless the whole build targets AVX2. llama.cpp
//! quantizes the activations of a Q8_0/Q5_0 product per 32 values with an
//! f16 scale; doing the same gives the same integer dot products, which is
//! what greedy agreement with llama.cpp needs (see `numerics.rs`).
//!
//! The float arithmetic is llama.cpp's too (its `ggml_vec_dot_q8_0_q8_0`
//! and llamafile's `tinyBLAS_Q0_AVX` compute the same): each 32-value block
//! gives 8 integer partial sums of 4 products, each of the 8 is accumulated
//! in its own f32 lane as `fma(d_w * d_x, partial, acc)` block after block,
//! and the 8 lanes are summed in a fixed tree at the end. So our products
//! are bit-identical to llama.cpp's, not only close.
//!
//! Layout: rows in tiles of 16; per tile and 32-value block, the 16 rows'
//! 32 bytes interleaved 4 bytes at a time (8 x 64 bytes), so one AVX-512
//! VNNI `vpdpbusd` multiplies 4 bytes of one activation row with 4 bytes of
//! 16 weight rows and yields exactly llama.cpp's 8 partial sums, one group
//! of 4 at a time. Weights are stored as unsigned `w + 128`; the extra
//! `128 * sum(x)` of each group is subtracted through the accumulator's
//! start value, precomputed per activation group.

use half::f16;
use rayon::prelude::*;

const QK: usize = 32;
const TILE: usize = 16;

/// An [n, k] weight matrix (y = x W^T), k a multiple of 32.
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    /// [tile][block][8 groups][16 rows][4 bytes], each `w + 128`.
    qs: Vec<u8>,
    /// [tile][block][16 rows]: the row's f16 scale, as f32.
    d: Vec<f32>,
}

impl Q8Matrix {
    /// From GGUF rows of Q8_0 blocks (f16 scale, 32 x i8) or Q5_0 blocks
    /// (f16 scale, 32 high bits, 16 bytes of low nibbles: x = q - 16, which
    /// fits in i8 exactly under the same scale).
    pub(crate) fn from_ggml(data: &[u8], n: usize, k: usize, q5_0: bool) -> Q8Matrix {
        assert!(k % QK == 0, "row width {k} is not a multiple of 32");
        let nb = k / QK;
        let bsz = if q5_0 { 22 } else { 34 };
        assert_eq!(data.len(), n * nb * bsz, "tensor size");
        let tiles = n.div_ceil(TILE);
        let mut m = Q8Matrix { n, k, qs: vec![128; tiles * nb * TILE * QK], d: vec![0.0; tiles * nb * TILE] };
        let mut vals = [0i8; QK];
        for r in 0..n {
            let (t, lane) = (r / TILE, r % TILE);
            for b in 0..nb {
                let src = &data[(r * nb + b) * bsz..][..bsz];
                let scale = f16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
                if q5_0 {
                    let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
                    for j in 0..16 {
                        let lo = src[6 + j];
                        vals[j] = (((lo & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16) as i8;
                        vals[j + 16] = (((lo >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16) as i8;
                    }
                } else {
                    for j in 0..QK {
                        vals[j] = src[2 + j] as i8;
                    }
                }
                let tb = t * nb + b;
                m.d[tb * TILE + lane] = scale;
                for g in 0..8 {
                    let dst = &mut m.qs[(tb * 8 + g) * 64 + lane * 4..][..4];
                    for (o, &v) in dst.iter_mut().zip(&vals[g * 4..g * 4 + 4]) {
                        *o = (v as i32 + 128) as u8;
                    }
                }
            }
        }
        m
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Row `r` of the matrix as f32 (the embedding lookup of a tied head).
    pub(crate) fn row(&self, r: usize) -> Vec<f32> {
        let nb = self.k / QK;
        let (t, lane) = (r / TILE, r % TILE);
        let mut out = Vec::with_capacity(self.k);
        for b in 0..nb {
            let tb = t * nb + b;
            let d = self.d[tb * TILE + lane];
            for g in 0..8 {
                out.extend(self.qs[(tb * 8 + g) * 64 + lane * 4..][..4].iter().map(|&q| (q as i32 - 128) as f32 * d));
            }
        }
        out
    }

    /// `x` [m, k] times W^T: [m, n].
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k);
        let qa = QuantRows::new(x, m, self.k);
        let nb = self.k / QK;
        let vnni = has_vnni();
        let work = |t: usize, o: &mut [f32]| {
            if vnni {
                // SAFETY: the CPU features were detected at run time.
                unsafe { vnni::tile(self, &qa, t, nb, m, o) }
            } else {
                tile_portable(self, &qa, t, nb, m, o);
            }
        };
        // Enough tiles per task to amortize the fork/join on small matrices.
        let per_task = (256 / (m * nb).max(1)).clamp(1, 64);
        run_tiles(self.n, self.k, m, per_task, work)
    }
}

/// Runs `work(tile, out)` for every 16-row tile of an [n, k] weight matrix
/// against `m` activation rows (`out` is that tile's [m][16] block; tiles
/// in parallel, `per_task` to a task, when the product is big enough) and
/// returns the product as [m, n]. Shared by the 8-bit and k-quant kernels.
pub(crate) fn run_tiles(n: usize, k: usize, m: usize, per_task: usize, work: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let tiles = n.div_ceil(TILE);
    let mut out_t = vec![0f32; tiles * m * TILE]; // [tile][m][16]
    if tiles > 1 && m * n * k >= 1 << 18 {
        out_t.par_chunks_mut(m * TILE * per_task).enumerate().for_each(|(c, o)| {
            for (i, ot) in o.chunks_mut(m * TILE).enumerate() {
                work(c * per_task + i, ot);
            }
        });
    } else {
        for (t, ot) in out_t.chunks_mut(m * TILE).enumerate() {
            work(t, ot);
        }
    }
    let mut out = vec![0f32; m * n];
    for t in 0..tiles {
        let cols = TILE.min(n - t * TILE);
        for r in 0..m {
            out[r * n + t * TILE..][..cols].copy_from_slice(&out_t[(t * m + r) * TILE..][..cols]);
        }
    }
    out
}

/// Activation rows quantized as llama.cpp's `quantize_row_q8_0` (x86):
/// scale `amax/127` stored as f16, values `round_half_even(x * 127/amax)`
/// (`_mm256_round_ps`; done with the f32 adder, as `rintf` is a libm call
/// in a baseline x86-64 build).
struct QuantRows {
    q: Vec<i8>,
    d: Vec<f32>,
    /// Per group of 4 values: `-128 * sum`, the start value that cancels the
    /// `+128` of the stored weights.
    corr: Vec<i32>,
}

impl QuantRows {
    fn new(x: &[f32], m: usize, k: usize) -> QuantRows {
        let nb = k / QK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        for (i, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            d[i] = f16::from_f32(amax / 127.0).to_f32();
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (o, &v) in qb.iter_mut().zip(xb) {
                *o = crate::numerics::nearest_int(v * id) as i8;
            }
        }
        let corr = q.chunks_exact(4).map(|g| -128 * g.iter().map(|&v| v as i32).sum::<i32>()).collect();
        QuantRows { q, d, corr }
    }
}

/// ggml's `hsum_float_8`: (l4+l0, l5+l1, l6+l2, l7+l3), then (0+2)+(1+3).
#[inline]
fn hsum8(l: [f32; 8]) -> f32 {
    let t = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    (t[0] + t[2]) + (t[1] + t[3])
}

fn tile_portable(w: &Q8Matrix, a: &QuantRows, t: usize, nb: usize, m: usize, out: &mut [f32]) {
    let k = nb * QK;
    for r in 0..m {
        for lane in 0..TILE {
            let mut acc = [0f32; 8];
            for b in 0..nb {
                let tb = t * nb + b;
                let d = w.d[tb * TILE + lane] * a.d[r * nb + b];
                for (g, acc) in acc.iter_mut().enumerate() {
                    let ab = &a.q[r * k + b * QK + g * 4..][..4];
                    let wq = &w.qs[(tb * 8 + g) * 64 + lane * 4..][..4];
                    let mut s = a.corr[(r * k + b * QK) / 4 + g];
                    for j in 0..4 {
                        s += ab[j] as i32 * wq[j] as i32;
                    }
                    *acc = d.mul_add(s as f32, *acc);
                }
            }
            out[r * TILE + lane] = hsum8(acc);
        }
    }
}

fn has_vnni() -> bool {
    crate::cpu().vnni
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Q8Matrix, QuantRows, QK, TILE};
    use std::arch::x86_64::*;

    /// Activation rows taken together against one weight tile: the tile's
    /// bytes are loaded once per block for all of them (2 rows x 8 lane
    /// accumulators + 8 weight registers fit the 32 vector registers).
    const MR: usize = 2;

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile(w: &Q8Matrix, a: &QuantRows, t: usize, nb: usize, m: usize, out: &mut [f32]) {
        let k = nb * QK;
        let mut r0 = 0;
        while r0 < m {
            let mr = MR.min(m - r0);
            let mut acc = [[_mm512_setzero_ps(); 8]; MR];
            for b in 0..nb {
                let tb = t * nb + b;
                let wp = w.qs.as_ptr().add(tb * 8 * 64);
                let wv: [__m512i; 8] = std::array::from_fn(|g| _mm512_loadu_si512(wp.add(g * 64) as *const _));
                let dw = _mm512_loadu_ps(w.d.as_ptr().add(tb * TILE));
                for (i, acc) in acc.iter_mut().enumerate().take(mr) {
                    let r = r0 + i;
                    let ap = a.q.as_ptr().add(r * k + b * QK) as *const i32;
                    let cp = a.corr.as_ptr().add((r * k + b * QK) / 4);
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(r * nb + b)));
                    for (g, wg) in wv.iter().enumerate() {
                        // unsigned weights x signed activations: dpbusd(src, u8, i8)
                        let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(*cp.add(g)), *wg, _mm512_set1_epi32(ap.add(g).read_unaligned()));
                        acc[g] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[g]);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate().take(mr) {
                let t0 = _mm512_add_ps(acc[4], acc[0]);
                let t1 = _mm512_add_ps(acc[5], acc[1]);
                let t2 = _mm512_add_ps(acc[6], acc[2]);
                let t3 = _mm512_add_ps(acc[7], acc[3]);
                let res = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
                _mm512_storeu_ps(out.as_mut_ptr().add((r0 + i) * TILE), res);
            }
            r0 += mr;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vnni {
    pub(super) unsafe fn tile(w: &super::Q8Matrix, a: &super::QuantRows, t: usize, nb: usize, m: usize, out: &mut [f32]) {
        super::tile_portable(w, a, t, nb, m, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q8_0_bytes(n: usize, k: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
        let mut s = seed;
        let mut rnd = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let mut bytes = vec![];
        let mut deq = vec![];
        for _ in 0..n * k / QK {
            let d = f16::from_f32(0.001 + (rnd() % 1000) as f32 * 1e-5);
            bytes.extend(d.to_bits().to_le_bytes());
            for _ in 0..QK {
                let q = (rnd() % 255) as i32 - 127;
                bytes.push(q as i8 as u8);
                deq.push(q as f32 * d.to_f32());
            }
        }
        (bytes, deq)
    }

    #[test]
    fn vnni_and_portable_agree_and_match_a_direct_sum() {
        let (n, k) = (40, 96); // a partial tile, 3 blocks
        let (bytes, deq) = q8_0_bytes(n, k, 3);
        let w = Q8Matrix::from_ggml(&bytes, n, k, false);
        for m in [1usize, 3, 6] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let got = w.matmul(&x, m);
            // The reference: the same per-32 quantization, summed directly.
            let qa = QuantRows::new(&x, m, k);
            let mut port = vec![0f32; n.div_ceil(TILE) * m * TILE];
            for (t, o) in port.chunks_mut(m * TILE).enumerate() {
                tile_portable(&w, &qa, t, k / QK, m, o);
            }
            for r in 0..m {
                for c in 0..n {
                    let (t, lane) = (c / TILE, c % TILE);
                    assert_eq!(got[r * n + c].to_bits(), port[(t * m + r) * TILE + lane].to_bits(), "row {r} col {c}");
                    let mut want = 0f64;
                    for b in 0..k / QK {
                        let mut s = 0i64;
                        for j in 0..QK {
                            let qa_v = qa.q[r * k + b * QK + j] as i64;
                            let qw = (deq[c * k + b * QK + j] / w.d[(t * (k / QK) + b) * TILE + lane]).round() as i64;
                            s += qa_v * qw;
                        }
                        want += s as f64 * qa.d[r * (k / QK) + b] as f64 * w.d[(t * (k / QK) + b) * TILE + lane] as f64;
                    }
                    assert!((got[r * n + c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{} vs {want}", got[r * n + c]);
                    // and close to the unquantized product
                    let exact: f32 = (0..k).map(|j| x[r * k + j] * deq[c * k + j]).sum();
                    assert!((got[r * n + c] - exact).abs() < 0.02 * (1.0 + exact.abs()), "{} vs {exact}", got[r * n + c]);
                }
            }
        }
        assert_eq!(w.row(33), deq[33 * k..34 * k].to_vec());
    }

    #[test]
    fn activation_quantization_rounds_half_to_even_with_an_f16_scale() {
        // amax 127 -> scale 1 exactly: 2.5 rounds to 2, 3.5 to 4, -2.5 to -2.
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let q = QuantRows::new(&x, 1, 32);
        assert_eq!(q.d[0], 1.0);
        assert_eq!([q.q[1], q.q[2], q.q[3]], [2, 4, -2]);
    }
}
