//! Matrix products of k-quant weights (Q4_K, Q6_K) with activations
//! quantized per 256 values (Q8_K), with llama.cpp's float arithmetic.
//!
//! Why our own: the integer dot products of a k-quant block are exact
//! anywhere, but llama.cpp turns them into floats in two different ways,
//! and which one it uses depends on how many activation rows one call has:
//! - fewer than 8 (decode): `ggml_vec_dot_q{4,6}_K_q8_K`, which keeps 8
//!   partial sums per block (lane `l` holds positions `4l..4l+3` of every
//!   32 values, times their sub-block scale), accumulates each lane as
//!   `fma(d_x * d_w, lane, acc)` over the blocks and sums the lanes in a
//!   fixed tree at the end (Q4_K adds 4 lanes of `mins x sums` likewise);
//! - 8 or more (prefill, batched eval): its tiled kernel, which sums a
//!   block's integers first, then `acc = fma(s1 * d_w - dmin_w * s2, d_x,
//!   acc)` per block.
//!
//! Doing the same makes our products bit-identical to llama.cpp's (see
//! `numerics.rs` for why that matters). The integer part here yields the
//! 8 lane sums of a block for 16 weight rows at once (AVX-512 VNNI, or a
//! portable loop with identical results); both float paths use them.

const QK: usize = 256;
const TILE: usize = 16;
/// Activation rows from which llama.cpp takes its tiled path.
pub(crate) const TILED_MIN_ROWS: usize = 8;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Q4K,
    Q6K,
}

/// An [n, k] k-quant weight matrix (y = x W^T), k a multiple of 256.
pub(crate) struct KqMatrix {
    kind: Kind,
    n: usize,
    k: usize,
    /// Unsigned codes (Q4_K 0..15, Q6_K 0..63):
    /// [tile][block][64 groups of 4][16 rows][4 bytes].
    codes: Vec<u8>,
    /// [tile][block][16 rows]: d and dmin as f32.
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// [tile][block][16 scales (per 16 values)][16 rows]; Q4_K's per-32
    /// scales are stored twice. Q4_K mins: [tile][block][8][16 rows].
    sc: Vec<i32>,
    mins: Vec<i32>,
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

impl KqMatrix {
    pub(crate) fn from_ggml(data: &[u8], n: usize, k: usize, kind: Kind) -> KqMatrix {
        assert!(k % QK == 0, "row width {k} is not a multiple of 256");
        let nb = k / QK;
        let bsz = match kind {
            Kind::Q4K => 144,
            Kind::Q6K => 210,
        };
        assert_eq!(data.len(), n * nb * bsz, "tensor size");
        let tiles = n.div_ceil(TILE);
        let mut m = KqMatrix {
            kind,
            n,
            k,
            codes: vec![0; tiles * nb * QK * TILE],
            d: vec![0.0; tiles * nb * TILE],
            dmin: vec![0.0; tiles * nb * TILE],
            sc: vec![0; tiles * nb * 16 * TILE],
            mins: if kind == Kind::Q4K { vec![0; tiles * nb * 8 * TILE] } else { vec![] },
        };
        let mut code = [0u8; QK];
        for r in 0..n {
            let (t, lane) = (r / TILE, r % TILE);
            for b in 0..nb {
                let x = &data[(r * nb + b) * bsz..][..bsz];
                let tb = t * nb + b;
                match kind {
                    Kind::Q4K => {
                        m.d[tb * TILE + lane] = f16(&x[0..2]);
                        m.dmin[tb * TILE + lane] = f16(&x[2..4]);
                        let s = &x[4..16];
                        for j in 0..8 {
                            let (sc, mn) = if j < 4 { (s[j] & 63, s[j + 4] & 63) } else { ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)) };
                            m.sc[(tb * 16 + 2 * j) * TILE + lane] = sc as i32;
                            m.sc[(tb * 16 + 2 * j + 1) * TILE + lane] = sc as i32;
                            m.mins[(tb * 8 + j) * TILE + lane] = mn as i32;
                        }
                        let qs = &x[16..144];
                        for e in 0..QK {
                            let (j, w) = (e / 64, e % 64);
                            code[e] = if w < 32 { qs[32 * j + w] & 0xF } else { qs[32 * j + w - 32] >> 4 };
                        }
                    }
                    Kind::Q6K => {
                        let (ql, qh, sc) = (&x[0..128], &x[128..192], &x[192..208]);
                        m.d[tb * TILE + lane] = f16(&x[208..210]);
                        for (j, &s) in sc.iter().enumerate() {
                            m.sc[(tb * 16 + j) * TILE + lane] = s as i8 as i32;
                        }
                        for e in 0..QK {
                            let (c, kk, l) = (e / 128, (e % 128) / 32, e % 32);
                            let (lo, hi) = (ql[64 * c + l + 32 * (kk % 2)], qh[32 * c + l]);
                            let low = if kk < 2 { lo & 0xF } else { lo >> 4 };
                            code[e] = low | (((hi >> (2 * kk)) & 3) << 4);
                        }
                    }
                }
                for g in 0..64 {
                    m.codes[((tb * 64 + g) * TILE + lane) * 4..][..4].copy_from_slice(&code[g * 4..g * 4 + 4]);
                }
            }
        }
        m
    }

    /// `x` [m, k] times W^T: [m, n], each row by the path llama.cpp takes
    /// for a call of `m` rows.
    #[cfg(test)]
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_rows(x, &vec![m >= TILED_MIN_ROWS; m])
    }

    /// `x` [m, k] times W^T: [m, n], row `r` by the tiled path when
    /// `tiled[r]`, else by vec_dot's. Each row's result depends on its own
    /// values and path only, never on the other rows of the call.
    pub(crate) fn matmul_rows(&self, x: &[f32], tiled: &[bool]) -> Vec<f32> {
        let m = tiled.len();
        assert_eq!(x.len(), m * self.k);
        let qa = Q8K::new(x, m, self.k);
        let simd = has_vnni();
        let work = |t: usize, o: &mut [f32]| {
            for r in 0..m {
                if simd {
                    // SAFETY: the CPU features were detected at run time.
                    unsafe { vnni::tile_row(self, &qa, t, r, tiled[r], &mut o[r * TILE..(r + 1) * TILE]) };
                    continue;
                }
                let mut f = Finish::new(self.kind, tiled[r]);
                for b in 0..self.k / QK {
                    let mut lanes = [[0i32; TILE]; 8];
                    let mut mlanes = [[0i32; TILE]; 4];
                    block_lanes_portable(self, &qa, t, b, r, &mut lanes, &mut mlanes);
                    f.add_block(self, &qa, t, b, r, &lanes, &mlanes);
                }
                o[r * TILE..(r + 1) * TILE].copy_from_slice(&f.result());
            }
        };
        crate::q8::run_tiles(self.n, self.k, m, (64 / m.max(1)).clamp(1, 8), work)
    }
}

/// Activation rows quantized as ggml's `quantize_row_q8_K_ref`: per 256
/// values, the scale from the value of largest magnitude (`-127/max`),
/// round half to even, plus sums per 16 and per 32 values.
struct Q8K {
    q: Vec<i8>,
    d: Vec<f32>,
    /// [row][block][16]
    bsum16: Vec<i32>,
}

impl Q8K {
    fn new(x: &[f32], m: usize, k: usize) -> Q8K {
        let nb = k / QK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut bsum16 = vec![0i32; m * nb * 16];
        for (i, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                continue;
            }
            let iscale = -127.0 / max;
            for (o, &v) in qb.iter_mut().zip(xb) {
                *o = (crate::numerics::nearest_int(iscale * v)).min(127) as i8;
            }
            for j in 0..16 {
                bsum16[i * 16 + j] = qb[j * 16..(j + 1) * 16].iter().map(|&v| v as i32).sum();
            }
            d[i] = 1.0 / iscale;
        }
        Q8K { q, d, bsum16 }
    }
}


/// The 8 lane sums of one block for 16 weight rows (and Q4_K's 4 lanes of
/// `mins x per-32 sums`), exactly as ggml's vec_dot lanes.
fn block_lanes_portable(w: &KqMatrix, a: &Q8K, t: usize, b: usize, r: usize, lanes: &mut [[i32; TILE]; 8], mlanes: &mut [[i32; TILE]; 4]) {
    let nb = w.k / QK;
    let tb = t * nb + b;
    let act = &a.q[r * w.k + b * QK..][..QK];
    let bs = &a.bsum16[(r * nb + b) * 16..][..16];
    for row in 0..TILE {
        for g in 0..64 {
            let c = &w.codes[((tb * 64 + g) * TILE + row) * 4..][..4];
            let p: i32 = (0..4).map(|j| c[j] as i32 * act[g * 4 + j] as i32).sum();
            // element 4g: its 16-value scale
            let s = w.sc[(tb * 16 + g / 4) * TILE + row];
            lanes[g % 8][row] += s * p;
        }
        match w.kind {
            Kind::Q6K => {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let s0 = w.sc[(tb * 16 + 2 * l) * TILE + row];
                    let s1 = w.sc[(tb * 16 + 2 * l + 1) * TILE + row];
                    lane[row] -= 32 * (bs[2 * l] * s0 + bs[2 * l + 1] * s1);
                }
            }
            Kind::Q4K => {
                for (l, ml) in mlanes.iter_mut().enumerate() {
                    let m0 = w.mins[(tb * 8 + 2 * l) * TILE + row];
                    let m1 = w.mins[(tb * 8 + 2 * l + 1) * TILE + row];
                    let s32 = |s: usize| bs[2 * s] + bs[2 * s + 1];
                    ml[row] = m0 * s32(2 * l) + m1 * s32(2 * l + 1);
                }
            }
        }
    }
}

/// The float side, per activation row and 16 weight rows.
struct Finish {
    kind: Kind,
    tiled: bool,
    acc: [[f32; TILE]; 8],
    acc_m: [[f32; TILE]; 4],
    total: [f32; TILE],
}

impl Finish {
    fn new(kind: Kind, tiled: bool) -> Finish {
        Finish { kind, tiled, acc: [[0.0; TILE]; 8], acc_m: [[0.0; TILE]; 4], total: [0.0; TILE] }
    }

    fn add_block(&mut self, w: &KqMatrix, a: &Q8K, t: usize, b: usize, r: usize, lanes: &[[i32; TILE]; 8], mlanes: &[[i32; TILE]; 4]) {
        let nb = w.k / QK;
        let tb = t * nb + b;
        let dx = a.d[r * nb + b];
        for row in 0..TILE {
            let (dw, dmin) = (w.d[tb * TILE + row], w.dmin[tb * TILE + row]);
            if self.tiled {
                // The tiled kernel (its AVX2 microtile, the one this build of
                // llama.cpp runs): integers summed per block first, then
                // `fma(s1 * d - dmin * s2, d_x, acc)`.
                let s1: i32 = lanes.iter().map(|l| l[row]).sum();
                let mut res = s1 as f32 * dw;
                if self.kind == Kind::Q4K {
                    let s2: i32 = mlanes.iter().map(|l| l[row]).sum();
                    res = (-dmin).mul_add(s2 as f32, res);
                }
                self.total[row] = res.mul_add(dx, self.total[row]);
            } else {
                let d = dx * dw;
                for (acc, lane) in self.acc.iter_mut().zip(lanes) {
                    acc[row] = d.mul_add(lane[row] as f32, acc[row]);
                }
                if self.kind == Kind::Q4K {
                    let dm = -dx * dmin;
                    for (acc, lane) in self.acc_m.iter_mut().zip(mlanes) {
                        acc[row] = dm.mul_add(lane[row] as f32, acc[row]);
                    }
                }
            }
        }
    }

    fn result(&self) -> [f32; TILE] {
        if self.tiled {
            return self.total;
        }
        let mut out = [0f32; TILE];
        for (row, o) in out.iter_mut().enumerate() {
            let l: [f32; 8] = std::array::from_fn(|i| self.acc[i][row]);
            // hsum_float_8
            let t = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
            let mut v = (t[0] + t[2]) + (t[1] + t[3]);
            if self.kind == Kind::Q4K {
                let m: [f32; 4] = std::array::from_fn(|i| self.acc_m[i][row]);
                v += (m[0] + m[2]) + (m[1] + m[3]);
            }
            *o = v;
        }
        out
    }
}

fn has_vnni() -> bool {
    crate::cpu().vnni
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{KqMatrix, Kind, Q8K, QK, TILE};
    use std::arch::x86_64::*;

    /// One activation row against one 16-row weight tile, all blocks, both
    /// float paths (see the module doc), lanes = weight rows.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile_row(w: &KqMatrix, a: &Q8K, t: usize, r: usize, tiled: bool, out: &mut [f32]) {
        let nb = w.k / QK;
        let zero = _mm512_setzero_si512();
        let q4 = w.kind == Kind::Q4K;
        if tiled {
            let mut total = _mm512_setzero_ps();
            for b in 0..nb {
                let tb = t * nb + b;
                let act = a.q.as_ptr().add(r * w.k + b * QK) as *const i32;
                let bs = a.bsum16.as_ptr().add((r * nb + b) * 16);
                let cp = w.codes.as_ptr().add(tb * 64 * TILE * 4);
                let sp = w.sc.as_ptr().add(tb * 16 * TILE);
                let mut s1 = zero;
                // sub-blocks: Q4_K 8 x 32 values (scale stored per 16, twice), Q6_K 16 x 16
                let (nsub, gps) = if q4 { (8, 8) } else { (16, 4) };
                for sb in 0..nsub {
                    let mut raw = zero;
                    for j in 0..gps {
                        let g = sb * gps + j;
                        let c = _mm512_loadu_si512(cp.add(g * TILE * 4) as *const _);
                        raw = _mm512_dpbusd_epi32(raw, c, _mm512_set1_epi32(act.add(g).read_unaligned()));
                    }
                    if !q4 {
                        raw = _mm512_sub_epi32(raw, _mm512_set1_epi32(32 * *bs.add(sb)));
                    }
                    let sc = _mm512_loadu_si512(sp.add(if q4 { 2 * sb } else { sb } * TILE) as *const _);
                    s1 = _mm512_add_epi32(s1, _mm512_mullo_epi32(raw, sc));
                }
                let dw = _mm512_loadu_ps(w.d.as_ptr().add(tb * TILE));
                let mut res = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), dw);
                if q4 {
                    let mp = w.mins.as_ptr().add(tb * 8 * TILE);
                    let mut s2 = zero;
                    for sb in 0..8 {
                        let m = _mm512_loadu_si512(mp.add(sb * TILE) as *const _);
                        s2 = _mm512_add_epi32(s2, _mm512_mullo_epi32(m, _mm512_set1_epi32(*bs.add(2 * sb) + *bs.add(2 * sb + 1))));
                    }
                    let dmin = _mm512_loadu_ps(w.dmin.as_ptr().add(tb * TILE));
                    res = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(s2), res);
                }
                total = _mm512_fmadd_ps(res, _mm512_set1_ps(*a.d.get_unchecked(r * nb + b)), total);
            }
            _mm512_storeu_ps(out.as_mut_ptr(), total);
            return;
        }
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut acc_m = [_mm512_setzero_ps(); 4];
        let mut lanes = [[0i32; TILE]; 8];
        let mut mlanes = [[0i32; TILE]; 4];
        for b in 0..nb {
            let tb = t * nb + b;
            block_lanes(w, a, t, b, r, &mut lanes, &mut mlanes);
            let dx = *a.d.get_unchecked(r * nb + b);
            let d = _mm512_mul_ps(_mm512_set1_ps(dx), _mm512_loadu_ps(w.d.as_ptr().add(tb * TILE)));
            for (acc, lane) in acc.iter_mut().zip(&lanes) {
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_loadu_si512(lane.as_ptr() as *const _)), *acc);
            }
            if q4 {
                let dm = _mm512_mul_ps(_mm512_set1_ps(-dx), _mm512_loadu_ps(w.dmin.as_ptr().add(tb * TILE)));
                for (acc, lane) in acc_m.iter_mut().zip(&mlanes) {
                    *acc = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(_mm512_loadu_si512(lane.as_ptr() as *const _)), *acc);
                }
            }
        }
        let t4: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(acc[i + 4], acc[i]));
        let mut v = _mm512_add_ps(_mm512_add_ps(t4[0], t4[2]), _mm512_add_ps(t4[1], t4[3]));
        if q4 {
            v = _mm512_add_ps(v, _mm512_add_ps(_mm512_add_ps(acc_m[0], acc_m[2]), _mm512_add_ps(acc_m[1], acc_m[3])));
        }
        _mm512_storeu_ps(out.as_mut_ptr(), v);
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn block_lanes(w: &KqMatrix, a: &Q8K, t: usize, b: usize, r: usize, lanes: &mut [[i32; TILE]; 8], mlanes: &mut [[i32; TILE]; 4]) {
        let nb = w.k / QK;
        let tb = t * nb + b;
        let act = a.q.as_ptr().add(r * w.k + b * QK) as *const i32;
        let bs = a.bsum16.as_ptr().add((r * nb + b) * 16);
        let cp = w.codes.as_ptr().add(tb * 64 * TILE * 4);
        let sp = w.sc.as_ptr().add(tb * 16 * TILE);
        let zero = _mm512_setzero_si512();
        let low16 = _mm512_set1_epi32(0xFFFF);
        let mut acc = [zero; 8];
        for s in 0..16 {
            // one 16-value scale covers groups 4s..4s+3 (lanes (4s)%8 ..)
            // The scale as an i16 in each lane's low half, zero above:
            // `vpdpwssd` then adds exactly p * scale to the lane, in one
            // instruction instead of a 32-bit multiply and an add. Exact
            // because a group's p = 4 codes x activations fits an i16
            // (|p| <= 4 * 63 * 127 = 32004 for Q6_K, 4 * 15 * 127 for Q4_K).
            let sc = _mm512_and_si512(_mm512_loadu_si512(sp.add(s * TILE) as *const _), low16);
            for j in 0..4 {
                let g = 4 * s + j;
                let c = _mm512_loadu_si512(cp.add(g * TILE * 4) as *const _);
                let p = _mm512_dpbusd_epi32(zero, c, _mm512_set1_epi32(act.add(g).read_unaligned()));
                acc[g % 8] = _mm512_dpwssd_epi32(acc[g % 8], p, sc);
            }
        }
        match w.kind {
            Kind::Q6K => {
                for (l, a) in acc.iter_mut().enumerate() {
                    let s0 = _mm512_loadu_si512(sp.add(2 * l * TILE) as *const _);
                    let s1 = _mm512_loadu_si512(sp.add((2 * l + 1) * TILE) as *const _);
                    let c = _mm512_add_epi32(_mm512_mullo_epi32(s0, _mm512_set1_epi32(*bs.add(2 * l))), _mm512_mullo_epi32(s1, _mm512_set1_epi32(*bs.add(2 * l + 1))));
                    *a = _mm512_sub_epi32(*a, _mm512_slli_epi32::<5>(c));
                }
            }
            Kind::Q4K => {
                let mp = w.mins.as_ptr().add(tb * 8 * TILE);
                for (l, ml) in mlanes.iter_mut().enumerate() {
                    let m0 = _mm512_loadu_si512(mp.add(2 * l * TILE) as *const _);
                    let m1 = _mm512_loadu_si512(mp.add((2 * l + 1) * TILE) as *const _);
                    let s32 = |s: usize| *bs.add(2 * s) + *bs.add(2 * s + 1);
                    let v = _mm512_add_epi32(_mm512_mullo_epi32(m0, _mm512_set1_epi32(s32(2 * l))), _mm512_mullo_epi32(m1, _mm512_set1_epi32(s32(2 * l + 1))));
                    _mm512_storeu_si512(ml.as_mut_ptr() as *mut _, v);
                }
            }
        }
        for (l, a) in acc.iter().enumerate() {
            _mm512_storeu_si512(lanes[l].as_mut_ptr() as *mut _, *a);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vnni {
    pub(super) unsafe fn tile_row(_: &super::KqMatrix, _: &super::Q8K, _: usize, _: usize, _: bool, _: &mut [f32]) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
    pub(super) unsafe fn block_lanes(w: &super::KqMatrix, a: &super::Q8K, t: usize, b: usize, r: usize, lanes: &mut [[i32; 16]; 8], mlanes: &mut [[i32; 16]; 4]) {
        super::block_lanes_portable(w, a, t, b, r, lanes, mlanes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn matrix(kind: Kind, n: usize, k: usize) -> (KqMatrix, Vec<f32>) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..n * k).map(|i| (((i * 7919) % 1013) as f32 - 506.0) / 300.0).collect();
        let t = Tensor::from_vec(vals, (n, k), &dev).unwrap();
        let q = QTensor::quantize(&t, if kind == Kind::Q4K { GgmlDType::Q4K } else { GgmlDType::Q6K }).unwrap();
        let deq = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (KqMatrix::from_ggml(&q.data().unwrap(), n, k, kind), deq)
    }

    #[test]
    fn both_float_paths_compute_the_product_and_simd_matches_portable() {
        for kind in [Kind::Q4K, Kind::Q6K] {
            let (n, k) = (24, 512);
            let (w, deq) = matrix(kind, n, k);
            for m in [1usize, 9] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
                let got = w.matmul(&x, m);
                if m >= TILED_MIN_ROWS {
                    // A row computed alone by the same path is the same row.
                    let alone = w.matmul_rows(&x[k..2 * k], &[true]);
                    assert_eq!(alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), got[n..2 * n].iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                }
                for r in 0..m {
                    for c in 0..n {
                        let exact: f32 = (0..k).map(|j| x[r * k + j] * deq[c * k + j]).sum();
                        assert!((got[r * n + c] - exact).abs() < 0.02 * (1.0 + exact.abs()), "{kind:?} m={m}: {} vs {exact}", got[r * n + c]);
                    }
                }
                if has_vnni() {
                    let qa = Q8K::new(&x, m, k);
                    for t in 0..2 {
                        for r in 0..m {
                            let mut f = Finish::new(kind, m >= TILED_MIN_ROWS);
                            for b in 0..k / QK {
                                let (mut l1, mut m1) = ([[0i32; TILE]; 8], [[0i32; TILE]; 4]);
                                block_lanes_portable(&w, &qa, t, b, r, &mut l1, &mut m1);
                                f.add_block(&w, &qa, t, b, r, &l1, &m1);
                            }
                            let mut simd = [0f32; TILE];
                            unsafe { vnni::tile_row(&w, &qa, t, r, m >= TILED_MIN_ROWS, &mut simd) };
                            assert_eq!(f.result().map(f32::to_bits), simd.map(f32::to_bits), "{kind:?} m={m} tile {t} row {r}");
                        }
                    }
                    for t in 0..2 {
                        for b in 0..2 {
                            let (mut l1, mut m1) = ([[0i32; TILE]; 8], [[0i32; TILE]; 4]);
                            let (mut l2, mut m2) = ([[0i32; TILE]; 8], [[0i32; TILE]; 4]);
                            block_lanes_portable(&w, &qa, t, b, 0, &mut l1, &mut m1);
                            unsafe { vnni::block_lanes(&w, &qa, t, b, 0, &mut l2, &mut m2) };
                            assert_eq!((l1, m1), (l2, m2));
                        }
                    }
                }
            }
        }
    }
}
