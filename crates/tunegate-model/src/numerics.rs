//! The forward pass's steps outside the weight matmuls (norms, RoPE, GELU,
//! attention), computed the way llama.cpp's CPU backend computes them.
//!
//! Why: a base model's greedy continuation often hangs on near-ties between
//! two tokens, so two float implementations of the same network drift apart
//! within a few dozen tokens even when both are "correct". The issue asks for
//! llama.cpp's greedy tokens, so we compute what llama.cpp computes, to the
//! last bit: where it rounds (the f16 KV cache, the f16 query and
//! accumulator of its flash attention below 64 query rows, its f16 GELU
//! table) we round the same way, and where its float order is fixed (lane
//! trees, FMA contractions of its GCC build, its tiled attention from 64
//! rows) we keep the same order. Together with `q8.rs` and `kq.rs` this
//! makes the logits identical to llama.cpp's (tests/greedy_parity.rs,
//! BENCHMARKS.md for how each difference was found).
//!
//! Every function here is plain f32 code on row-major slices. The attention
//! and the f16 conversions have AVX-512 versions (runtime-detected) that give
//! bit-identical results to the portable ones, only faster.

use half::f16;
use std::sync::OnceLock;

/// RMS norm of each row of `x` (width `w.len()`), times `w`, as ggml:
/// squares summed in f64, the scale `1/sqrt(mean + eps)` in f32.
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_norm_into(xr, w, eps, yr);
    }
    out
}

fn rms_norm_into(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place RMS norm of every `w.len()`-wide piece of `x` (per-head q/k norm).
pub(crate) fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    let mut tmp = vec![0f32; d];
    for r in x.chunks_exact_mut(d) {
        rms_norm_into(r, w, eps, &mut tmp);
        r.copy_from_slice(&tmp);
    }
}

/// RoPE (cos, sin) for positions `start..start+len`, [len][dim/2]. The angle
/// is stepped by repeated multiplication with `base^(-2/dim)` in f32, as
/// ggml's rope cache does (not `pos / base^(2i/dim)`, which rounds
/// differently).
pub(crate) fn rope_table(base: f32, dim: usize, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
    let half = dim / 2;
    let theta_scale = base.powf(-2.0 / dim as f32);
    let (mut cos, mut sin) = (Vec::with_capacity(len * half), Vec::with_capacity(len * half));
    for p in start..start + len {
        let mut theta = p as f32;
        for _ in 0..half {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= theta_scale;
        }
    }
    (cos, sin)
}

/// NeoX-style rotation of one head (`x` of `2 * cos.len()` values): the
/// first half pairs with the second. The fused multiply-adds are where
/// llama.cpp's compiled code has them (checked bit for bit on its keys).
pub(crate) fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: FMA was detected at run time.
        return unsafe { rope_neox_fma(x, cos, sin) };
    }
    rope_neox_body(x, cos, sin)
}

/// The same code compiled with FMA enabled: `mul_add` becomes one
/// instruction instead of a libm call (same result).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_neox_fma(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_neox_body(x, cos, sin)
}

#[inline(always)]
fn rope_neox_body(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (x0, x1) = (x[i], x[i + half]);
        // GCC contracts these into FMAs in ggml (first product fused).
        x[i] = x0.mul_add(cos[i], -(x1 * sin[i]));
        x[i + half] = x0.mul_add(sin[i], x1 * cos[i]);
    }
}

/// GELU (tanh approximation) of every f16 value, stored as f16: ggml looks
/// GELU up in this table by the input rounded to f16.
fn gelu_table() -> &'static [u16] {
    static T: OnceLock<Vec<u16>> = OnceLock::new();
    T.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const GELU_COEF_A: f32 = 0.044715;
        (0..=u16::MAX)
            .map(|b| {
                let x = f16::from_bits(b).to_f32();
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh());
                f16::from_f32(g).to_bits()
            })
            .collect()
    })
}

/// `gelu(gate) * up`, element-wise, as ggml's GEGLU: through the f16 table
/// inside (-10, 10), exact outside.
pub(crate) fn geglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let t = gelu_table();
    gate.iter()
        .zip(up)
        .map(|(&x, &u)| {
            if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                f16::from_bits(t[f16::from_f32(x).to_bits() as usize]).to_f32() * u
            }
        })
        .collect()
}

/// f32 -> f16 bits, round to nearest even (what the KV cache stores).
pub(crate) fn to_f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
}

/// Head layout of an attention call.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub n_head: usize,
    pub n_kv: usize,
    pub dim: usize,
}

/// From this many query rows in one call on, llama.cpp's CPU flash
/// attention takes its tiled f32 path; below it, the per-row path with an
/// f16 query and an f16 accumulator (ggml's `GGML_FA_TILE_Q`).
pub(crate) const F32_PATH_ROWS: usize = 64;

/// llama.cpp's default micro-batch (`n_ubatch`): a prompt is computed in
/// calls of at most this many rows.
pub(crate) const UBATCH: usize = 512;

/// Which of llama.cpp's kernels compute one row. llama.cpp picks them by
/// how many rows a call has (k-quant products tiled from 8 rows, attention
/// tiled from 64), so a sequence's numbers change with whatever shares its
/// call: under continuous batching, with timing. We pick per row from the
/// sequence alone ([`Regime::of_row`]): what llama.cpp does when it runs
/// that sequence by itself. A sequence's output is then the same at any
/// concurrency (an eval gives the same answers however its cases were
/// batched), and still llama.cpp's single-sequence output to the bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Regime {
    /// vec_dot products and per-row f16 attention (a call of < 8 rows).
    Vec,
    /// Tiled products, per-row f16 attention (8..64 rows).
    TiledProducts,
    /// Tiled products and tiled f32 attention (64 rows and more).
    Tiled,
}

impl Regime {
    /// The kernels llama.cpp uses for a call of `rows` rows.
    pub(crate) fn of_call(rows: usize) -> Regime {
        if rows >= F32_PATH_ROWS {
            Regime::Tiled
        } else if rows >= crate::kq::TILED_MIN_ROWS {
            Regime::TiledProducts
        } else {
            Regime::Vec
        }
    }

    /// The row at position `pos` of a sequence whose prompt has
    /// `prompt_len` tokens, as llama.cpp computes it alone: the prompt in
    /// micro-batches of [`UBATCH`] rows, then one token per call.
    pub(crate) fn of_row(prompt_len: usize, pos: usize) -> Regime {
        if pos >= prompt_len {
            return Regime::of_call(1);
        }
        let start = pos / UBATCH * UBATCH;
        Regime::of_call((prompt_len - start).min(UBATCH))
    }

    pub(crate) fn tiled_products(self) -> bool {
        self != Regime::Vec
    }

    pub(crate) fn tiled_attention(self) -> bool {
        self == Regime::Tiled
    }
}

/// Attention of `l` new query rows (positions `past..past+l`, layout
/// [l][n_head][dim], already normed, rotated and scaled) over a KV cache
/// of f16 bits [t][n_kv][dim] that holds at least the positions up to
/// `past+l`. Causal, and limited to the last `window` positions when
/// given. `tiled`: ggml's tiled f32 path, else its per-row f16 path (see
/// [`Regime`]); each row's result depends on that choice and the cache
/// only, never on `l`. Returns [l][n_head*dim].
pub(crate) fn attention(q: &[f32], l: usize, past: usize, kc: &[u16], vc: &[u16], h: Heads, window: Option<usize>, tiled: bool) -> Vec<f32> {
    if tiled {
        return attention_tiled(q, l, past, kc, vc, h, window);
    }
    let width = h.n_head * h.dim;
    let mut out = vec![0f32; l * width];
    let group = h.n_head / h.n_kv;
    let row = |r: usize, o: &mut [f32]| {
        let (i, head) = (r / h.n_head, r % h.n_head);
        let p = past + i;
        let lo = window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0);
        let kvh = head / group;
        let qr = &q[i * width + head * h.dim..][..h.dim];
        let kv = KvView { k: kc, v: vc, stride: h.n_kv * h.dim, off: kvh * h.dim, dim: h.dim };
        row_f16(qr, &kv, lo, p + 1, o);
    };
    let rows = l * h.n_head;
    // One decode step has n_head rows of a few hundred positions: not worth
    // a fork/join. Prefill rows are independent, so spread them.
    if rows * (past + l) >= 4096 {
        use rayon::prelude::*;
        out.par_chunks_mut(h.dim).enumerate().for_each(|(r, o)| row(r, o));
    } else {
        for (r, o) in out.chunks_mut(h.dim).enumerate() {
            row(r, o);
        }
    }
    out
}

struct KvView<'a> {
    k: &'a [u16],
    v: &'a [u16],
    stride: usize,
    off: usize,
    dim: usize,
}

impl KvView<'_> {
    fn k(&self, j: usize) -> &[u16] {
        &self.k[j * self.stride + self.off..][..self.dim]
    }
    fn v(&self, j: usize) -> &[u16] {
        &self.v[j * self.stride + self.off..][..self.dim]
    }
}

/// Positions per KV tile of ggml's tiled flash attention (`GGML_FA_TILE_KV`).
const KV_TILE: usize = 64;

/// ggml's tiled flash attention (used from [`F32_PATH_ROWS`] query rows
/// on), in its order: per KV tile of 64 positions, the scores as sequential
/// f32 FMA chains over the head dimension, the tile's max, `expf` of the
/// old-max difference to rescale, ggml's vectorized `exp` for the tile
/// (summed in f64 per 16), and the values accumulated as sequential FMA
/// chains over the tile's positions; the f16 cache read as f32.
fn attention_tiled(q: &[f32], l: usize, past: usize, kc: &[u16], vc: &[u16], h: Heads, window: Option<usize>) -> Vec<f32> {
    let (dim, width, t) = (h.dim, h.n_head * h.dim, past + l);
    let ntiles = t.div_ceil(KV_TILE);
    let group = h.n_head / h.n_kv;
    // Per KV head: keys transposed per tile [tile][dim][64], values [pos][dim],
    // zero beyond the cache (masked there anyway).
    let mut kt = vec![0f32; h.n_kv * ntiles * dim * KV_TILE];
    let mut vf = vec![0f32; h.n_kv * ntiles * KV_TILE * dim];
    let mut row = vec![0f32; dim];
    for kvh in 0..h.n_kv {
        for j in 0..t {
            f16_to_f32(&kc[(j * h.n_kv + kvh) * dim..][..dim], &mut row);
            let base = (kvh * ntiles + j / KV_TILE) * dim * KV_TILE;
            for (d, &x) in row.iter().enumerate() {
                kt[base + d * KV_TILE + j % KV_TILE] = x;
            }
            f16_to_f32(&vc[(j * h.n_kv + kvh) * dim..][..dim], &mut vf[(kvh * ntiles * KV_TILE + j) * dim..][..dim]);
        }
    }
    let simd = has_avx512();
    let mut out = vec![0f32; l * width];
    // Rows are independent; groups of 4 tokens of one head share the K tile loads.
    let groups: Vec<(usize, usize)> = (0..h.n_head).flat_map(|hd| (0..l).step_by(4).map(move |i| (hd, i))).collect();
    use rayon::prelude::*;
    let results: Vec<(usize, usize, Vec<f32>)> = groups
        .par_iter()
        .map(|&(head, i0)| {
            let n = 4.min(l - i0);
            let kvh = head / group;
            let qs: Vec<&[f32]> = (0..n).map(|r| &q[(i0 + r) * width + head * dim..][..dim]).collect();
            let vis: Vec<(usize, usize)> = (0..n)
                .map(|r| {
                    let p = past + i0 + r;
                    (window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0), p + 1)
                })
                .collect();
            let kt = &kt[kvh * ntiles * dim * KV_TILE..][..ntiles * dim * KV_TILE];
            let vf = &vf[kvh * ntiles * KV_TILE * dim..][..ntiles * KV_TILE * dim];
            (head, i0, tiled_rows(&qs, &vis, kt, vf, dim, ntiles, simd))
        })
        .collect();
    for (head, i0, o) in results {
        for (r, orow) in o.chunks(dim).enumerate() {
            out[(i0 + r) * width + head * dim..][..dim].copy_from_slice(orow);
        }
    }
    out
}

/// Up to 4 query rows of one head through every KV tile (see [`attention_tiled`]).
fn tiled_rows(qs: &[&[f32]], vis: &[(usize, usize)], kt: &[f32], vf: &[f32], dim: usize, ntiles: usize, simd: bool) -> Vec<f32> {
    let n = qs.len();
    let mut acc = vec![0f32; n * dim];
    let mut m = vec![f32::NEG_INFINITY; n];
    let mut s = vec![0f32; n];
    let mut kq = vec![0f32; n * KV_TILE];
    for tile in 0..ntiles {
        let c = tile * KV_TILE;
        let live: Vec<bool> = vis.iter().map(|&(lo, hi)| lo < c + KV_TILE && c < hi).collect();
        if !live.iter().any(|&x| x) {
            continue;
        }
        let ktile = &kt[tile * dim * KV_TILE..][..dim * KV_TILE];
        if simd {
            // SAFETY: AVX-512F was detected at run time.
            unsafe { avx512::scores(qs, ktile, dim, &mut kq) };
        } else {
            for (r, qr) in qs.iter().enumerate() {
                for j in 0..KV_TILE {
                    let mut a = 0f32;
                    for d in 0..dim {
                        a = ktile[d * KV_TILE + j].mul_add(qr[d], a);
                    }
                    kq[r * KV_TILE + j] = a;
                }
            }
        }
        for r in 0..n {
            let row = &mut kq[r * KV_TILE..(r + 1) * KV_TILE];
            let (lo, hi) = vis[r];
            for (j, x) in row.iter_mut().enumerate() {
                if c + j < lo || c + j >= hi {
                    *x = f32::NEG_INFINITY;
                }
            }
            let tile_max = row.iter().copied().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
            if !live[r] || tile_max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let m_new = m[r].max(tile_max);
            if m_new > m[r] {
                let ms = (m[r] - m_new).exp();
                for a in &mut acc[r * dim..(r + 1) * dim] {
                    *a *= ms;
                }
                s[r] *= ms;
            }
            m[r] = m_new;
            let mut sum = 0f64;
            for chunk in row.chunks_mut(16) {
                if simd {
                    // SAFETY: AVX-512F was detected at run time.
                    unsafe { avx512::expf16(chunk, m_new) };
                } else {
                    for x in chunk.iter_mut() {
                        *x = v_expf(*x - m_new);
                    }
                }
                sum += reduce16((&*chunk).try_into().unwrap()) as f64;
            }
            s[r] = (s[r] as f64 + sum) as f32;
        }
        let vtile = &vf[c * dim..][..KV_TILE * dim];
        for r in 0..n {
            let a = &mut acc[r * dim..(r + 1) * dim];
            let p = &kq[r * KV_TILE..(r + 1) * KV_TILE];
            if simd {
                // SAFETY: AVX-512F was detected at run time.
                unsafe { avx512::accumulate(a, p, vtile, dim) };
            } else {
                for (j, &pj) in p.iter().enumerate() {
                    for (x, &v) in a.iter_mut().zip(&vtile[j * dim..(j + 1) * dim]) {
                        *x = v.mul_add(pj, *x);
                    }
                }
            }
        }
    }
    for r in 0..n {
        let inv = if s[r] == 0.0 { 0.0 } else { 1.0 / s[r] };
        for a in &mut acc[r * dim..(r + 1) * dim] {
            *a *= inv;
        }
    }
    acc
}

/// The sum of `exp(x - m)` over a row, `x <= m`: ggml's vectorized expf
/// in 16 lanes, each 16 summed in a fixed tree and added in f64. The
/// normalizer of a sampled token's log-probability, which every decoding
/// step needs for every sequence over the whole vocabulary: libm's f64
/// `exp` there took 13% of a step (262k calls); this is tens of times
/// faster, within 2e-6 relative.
pub(crate) fn sum_exp(x: &[f32], m: f32) -> f64 {
    let simd = has_avx512();
    let mut sum = 0f64;
    let mut buf = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        buf.copy_from_slice(c);
        if simd {
            // SAFETY: AVX-512F was detected at run time.
            unsafe { avx512::expf16(&mut buf, m) };
        } else {
            for v in buf.iter_mut() {
                *v = v_expf(*v - m);
            }
        }
        sum += reduce16(&buf) as f64;
    }
    sum + tail.iter().map(|&v| v_expf(v - m) as f64).sum::<f64>()
}

/// ggml's vectorized `expf` (`ggml_v_expf`, AVX-512 version), one lane:
/// same constants, same fused operations, so the same bits.
fn v_expf(x: f32) -> f32 {
    let c = |b: u32| f32::from_bits(b);
    let r = c(0x4b40_0000);
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010).mul_add(b, c(0x3d2b_9f17)).mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb))).mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // scalef: j * 2^n (n integral, |n| <= 192), rounded once.
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// ggml's per-row flash attention with an f16 cache: the query rounded to
/// f16, each score an f16 x f16 dot product summed in f32 (16 lanes x 4
/// accumulators, then a fixed tree), and the online softmax accumulating
/// the values in f16 (each update one f16 rounding, as AVX512-FP16's fused
/// multiply-add).
fn row_f16(q: &[f32], kv: &KvView, lo: usize, hi: usize, out: &mut [f32]) {
    let dim = kv.dim;
    let q16 = to_f16_bits(q);
    let mut acc = vec![0u16; dim];
    let (mut s_sum, mut m) = (0f32, f32::NEG_INFINITY);
    let simd = has_avx512();
    for j in lo..hi {
        let s = if simd && dim % 64 == 0 {
            // SAFETY: AVX-512F was detected at run time.
            unsafe { avx512::dot_f16(kv.k(j), &q16) }
        } else {
            dot_f16_portable(kv.k(j), &q16)
        };
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            let m_old = m;
            m = s;
            ms = (m_old - m).exp();
            scale_f16(&mut acc, ms, simd);
        } else {
            vs = (s - m).exp();
        }
        mad_f16(&mut acc, kv.v(j), vs, simd);
        s_sum = s_sum.mul_add(ms, vs); // contracted to an FMA in ggml's build
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = f16::from_bits(a).to_f32() * inv;
    }
}

fn has_fma() -> bool {
    crate::cpu().fma
}

fn has_avx512() -> bool {
    crate::cpu().avx512
}

fn f16_to_f32(x: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(x) {
        *o = f16::from_bits(b).to_f32();
    }
}

/// The dot product in ggml's AVX-512 order: lane `i` of accumulator `j`
/// takes elements `64*s + 16*j + i`, then (a0+a2)+(a1+a3), then the
/// 16-lane tree of `_mm512_reduce_add_ps` (8, 4, then 2,3/0,1, then 0+1).
fn dot_f16_portable(x: &[u16], y: &[u16]) -> f32 {
    let n = x.len();
    let np = n - n % 64;
    let mut acc = [[0f32; 16]; 4];
    for s in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (i, lane) in a.iter_mut().enumerate() {
                let k = s + 16 * j + i;
                *lane = f16::from_bits(x[k]).to_f32().mul_add(f16::from_bits(y[k]).to_f32(), *lane);
            }
        }
    }
    let mut a = [0f32; 16];
    for i in 0..16 {
        a[i] = (acc[0][i] + acc[2][i]) + (acc[1][i] + acc[3][i]);
    }
    let mut sum = reduce16(&a) as f64;
    for k in np..n {
        sum += (f16::from_bits(x[k]).to_f32() * f16::from_bits(y[k]).to_f32()) as f64;
    }
    sum as f32
}

fn reduce16(a: &[f32; 16]) -> f32 {
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = a[i + 8] + a[i];
    }
    let mut u = [0f32; 4];
    for i in 0..4 {
        u[i] = t[i + 4] + t[i];
    }
    let (v0, v1) = (u[0] + u[2], u[1] + u[3]);
    v0 + v1
}

/// `acc *= f16(v)`, one f16 rounding per element (the product of two f16
/// values is exact in f32, so rounding it to f16 is the single rounding).
fn scale_f16(acc: &mut [u16], v: f32, simd: bool) {
    let v = f16::from_f32(v).to_f32();
    if simd {
        // SAFETY: AVX-512F was detected at run time.
        unsafe { avx512::scale_f16(acc, v) };
        return;
    }
    for a in acc.iter_mut() {
        *a = f16::from_f32(f16::from_bits(*a).to_f32() * v).to_bits();
    }
}

/// `acc += x * f16(v)`: a fused multiply-add rounded to f16. Done as an
/// f32 FMA then f16 rounding; the product of two f16 values is exact in
/// f32, so this differs from a true f16 FMA only when the f32 sum itself
/// rounds onto an f16 midpoint (corrected below with the exact error).
fn mad_f16(acc: &mut [u16], x: &[u16], v: f32, simd: bool) {
    let v = f16::from_f32(v).to_f32();
    if simd {
        // SAFETY: AVX-512F was detected at run time.
        unsafe { avx512::mad_f16(acc, x, v) };
        return;
    }
    for (a, &b) in acc.iter_mut().zip(x) {
        let c = f16::from_bits(*a).to_f32();
        let p = f16::from_bits(b).to_f32() * v;
        *a = f16::from_f32(round_odd_sum(p, c)).to_bits();
    }
}

/// `p + c` in f32, nudged off an f16 rounding midpoint toward the exact
/// sum when the f32 sum was inexact, so that the following f16 rounding is
/// the correctly rounded f16 of the exact `p + c`.
#[inline]
fn round_odd_sum(p: f32, c: f32) -> f32 {
    let r = p + c;
    // TwoSum: the exact rounding error of r.
    let pp = r - c;
    let cc = r - pp;
    let e = (p - pp) + (c - cc);
    let bits = r.to_bits();
    if e != 0.0 && bits & 0x1FFF == 0x1000 {
        let toward_larger_magnitude = (e > 0.0) == (r > 0.0);
        return f32::from_bits(if toward_larger_magnitude { bits + 1 } else { bits - 1 });
    }
    r
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::reduce16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
        let n = x.len();
        let mut acc = [_mm512_setzero_ps(); 4];
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let mut s = 0;
        while s < n {
            for (j, a) in acc.iter_mut().enumerate() {
                let ax = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(s + 16 * j) as *const __m256i));
                let ay = _mm512_cvtph_ps(_mm256_loadu_si256(yp.add(s + 16 * j) as *const __m256i));
                *a = _mm512_fmadd_ps(ax, ay, *a);
            }
            s += 64;
        }
        let a = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), a);
        reduce16(&lanes)
    }

    /// `x = ggml_v_expf(x - m)` for 16 values (ggml's AVX-512 code).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn expf16(x: &mut [f32], m: f32) {
        let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
        let xv = _mm512_sub_ps(_mm512_loadu_ps(x.as_ptr()), _mm512_set1_ps(m));
        let r = c(0x4b40_0000);
        let z = _mm512_fmadd_ps(xv, c(0x3fb8_aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), xv));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(_mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)), u, _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb))),
            u,
            _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        let out = if d == 0 {
            res
        } else {
            let alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps()), _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
            _mm512_mask_blend_ps(d, res, alt)
        };
        _mm512_storeu_ps(x.as_mut_ptr(), out);
    }

    /// Scores of up to 4 rows against one 64-position tile of transposed
    /// keys: per lane a sequential FMA chain over the head dimension.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(qs: &[&[f32]], kt: &[f32], dim: usize, kq: &mut [f32]) {
        let n = qs.len();
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let kp = kt.as_ptr();
        for d in 0..dim {
            let b: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(kp.add(d * 64 + v * 16)));
            for r in 0..n {
                let p = _mm512_set1_ps(*qs[r].get_unchecked(d));
                for v in 0..4 {
                    acc[r][v] = _mm512_fmadd_ps(b[v], p, acc[r][v]);
                }
            }
        }
        for r in 0..n {
            for v in 0..4 {
                _mm512_storeu_ps(kq.as_mut_ptr().add(r * 64 + v * 16), acc[r][v]);
            }
        }
    }

    /// `acc[d] = fma(v[j][d], p[j], acc[d])` for j = 0..64 in order.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], dim: usize) {
        let ap = acc.as_mut_ptr();
        let mut d = 0;
        while d + 64 <= dim {
            let mut a: [__m512; 4] = std::array::from_fn(|i| _mm512_loadu_ps(ap.add(d + 16 * i)));
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm512_set1_ps(pj);
                for (i, ai) in a.iter_mut().enumerate() {
                    *ai = _mm512_fmadd_ps(_mm512_loadu_ps(v.as_ptr().add(j * dim + d + 16 * i)), pv, *ai);
                }
            }
            for (i, ai) in a.iter().enumerate() {
                _mm512_storeu_ps(ap.add(d + 16 * i), *ai);
            }
            d += 64;
        }
        for dd in d..dim {
            for (j, &pj) in p.iter().enumerate() {
                acc[dd] = v[j * dim + dd].mul_add(pj, acc[dd]);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scale_f16(acc: &mut [u16], v: f32) {
        let vv = _mm512_set1_ps(v);
        let p = acc.as_mut_ptr();
        let mut i = 0;
        while i + 16 <= acc.len() {
            let a = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i) as *const __m256i));
            let r = _mm512_mul_ps(a, vv);
            _mm256_storeu_si256(p.add(i) as *mut __m256i, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r));
            i += 16;
        }
        for a in &mut acc[i..] {
            *a = half::f16::from_f32(half::f16::from_bits(*a).to_f32() * v).to_bits();
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mad_f16(acc: &mut [u16], x: &[u16], v: f32) {
        let vv = _mm512_set1_ps(v);
        let (p, xp) = (acc.as_mut_ptr(), x.as_ptr());
        let low = _mm512_set1_epi32(0x1FFF);
        let mid = _mm512_set1_epi32(0x1000);
        let zero = _mm512_setzero_ps();
        let one = _mm512_set1_epi32(1);
        let mut i = 0;
        while i + 16 <= acc.len() {
            let c = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i) as *const __m256i));
            let b = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(i) as *const __m256i));
            let pr = _mm512_mul_ps(b, vv); // exact: two f16 values
            let r = _mm512_add_ps(pr, c);
            // TwoSum error, then the midpoint nudge of `round_odd_sum`.
            let pp = _mm512_sub_ps(r, c);
            let cc = _mm512_sub_ps(r, pp);
            let e = _mm512_add_ps(_mm512_sub_ps(pr, pp), _mm512_sub_ps(c, cc));
            let bits = _mm512_castps_si512(r);
            let at_mid = _mm512_cmpeq_epi32_mask(_mm512_and_si512(bits, low), mid);
            let inexact = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(e, zero);
            let e_pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(e, zero);
            let r_pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(r, zero);
            let fix = at_mid & inexact;
            let up = fix & !(e_pos ^ r_pos);
            let down = fix & (e_pos ^ r_pos);
            let bits = _mm512_mask_add_epi32(bits, up, bits, one);
            let bits = _mm512_mask_sub_epi32(bits, down, bits, one);
            let r = _mm512_castsi512_ps(bits);
            _mm256_storeu_si256(p.add(i) as *mut __m256i, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(r));
            i += 16;
        }
        for (a, &b) in acc[i..].iter_mut().zip(&x[i..]) {
            let c = half::f16::from_bits(*a).to_f32();
            let pr = half::f16::from_bits(b).to_f32() * v;
            *a = half::f16::from_f32(super::round_odd_sum(pr, c)).to_bits();
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub(super) unsafe fn dot_f16(x: &[u16], y: &[u16]) -> f32 {
        super::dot_f16_portable(x, y)
    }
    pub(super) unsafe fn scores(_: &[&[f32]], _: &[f32], _: usize, _: &mut [f32]) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
    pub(super) unsafe fn expf16(_: &mut [f32], _: f32) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
    pub(super) unsafe fn accumulate(_: &mut [f32], _: &[f32], _: &[f32], _: usize) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
    pub(super) unsafe fn scale_f16(_: &mut [u16], _: f32) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
    pub(super) unsafe fn mad_f16(_: &mut [u16], _: &[u16], _: f32) {
        unreachable!("AVX-512 is never detected off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16s(n: usize, seed: u32) -> Vec<u16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f16::from_f32(((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 8.0).to_bits()
            })
            .collect()
    }

    #[test]
    fn simd_and_portable_f16_steps_agree_bit_for_bit() {
        if !has_avx512() {
            eprintln!("no AVX-512 here: only the portable path is exercised");
            return;
        }
        for seed in 0..50 {
            let (x, y) = (f16s(256, seed), f16s(256, seed + 1000));
            let a = unsafe { avx512::dot_f16(&x, &y) };
            assert_eq!(a.to_bits(), dot_f16_portable(&x, &y).to_bits());
            let (mut p, mut s) = (f16s(256, seed + 7), f16s(256, seed + 7));
            let v = 0.3 + seed as f32 * 0.01;
            mad_f16(&mut p, &x, v, false);
            mad_f16(&mut s, &x, v, true);
            assert_eq!(p, s);
            scale_f16(&mut p, 0.7, false);
            scale_f16(&mut s, 0.7, true);
            assert_eq!(p, s);
        }
    }

    #[test]
    fn tiled_path_is_a_softmax_and_simd_matches_portable() {
        // 70 query rows (>= 64: the tiled path) over 75 positions, window 40.
        let h = Heads { n_head: 2, n_kv: 1, dim: 64 };
        let (l, past) = (70, 5);
        let t = past + l;
        let kc = f16s(t * 64, 11);
        let vc = f16s(t * 64, 12);
        let q: Vec<f32> = f16s(l * 2 * 64, 13).iter().map(|&b| f16::from_bits(b).to_f32() * 0.2).collect();
        let out = attention(&q, l, past, &kc, &vc, h, Some(40), true);
        for i in [0usize, 33, 69] {
            let p = past + i;
            for head in 0..2 {
                let qr = &q[(i * 2 + head) * 64..][..64];
                let js: Vec<usize> = ((p + 1).saturating_sub(40)..=p).collect();
                let s: Vec<f64> = js.iter().map(|&j| (0..64).map(|d| qr[d] as f64 * f16::from_bits(kc[j * 64 + d]).to_f64()).sum()).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..64 {
                    let want: f64 = js.iter().zip(&s).map(|(&j, x)| (x - m).exp() / z * f16::from_bits(vc[j * 64 + d]).to_f64()).sum();
                    let got = out[(i * 2 + head) * 64 + d] as f64;
                    assert!((got - want).abs() < 1e-5, "row {i} head {head} dim {d}: {got} vs {want}");
                }
            }
        }
        if has_avx512() {
            let qs: Vec<&[f32]> = (0..4).map(|r| &q[r * 2 * 64..][..64]).collect();
            let vis: Vec<(usize, usize)> = (0..4).map(|r| (0, past + r + 1)).collect();
            let mut kt = vec![0f32; 2 * 64 * KV_TILE];
            let mut vf = vec![0f32; 2 * KV_TILE * 64];
            for j in 0..t {
                for d in 0..64 {
                    kt[(j / KV_TILE) * 64 * KV_TILE + d * KV_TILE + j % KV_TILE] = f16::from_bits(kc[j * 64 + d]).to_f32();
                    vf[j * 64 + d] = f16::from_bits(vc[j * 64 + d]).to_f32();
                }
            }
            let a = tiled_rows(&qs, &vis, &kt, &vf, 64, 2, true);
            let b = tiled_rows(&qs, &vis, &kt, &vf, 64, 2, false);
            assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn ggml_expf_simd_and_scalar_agree_and_approximate_exp() {
        let xs: Vec<f32> = (0..4096).map(|i| -100.0 + i as f32 * 0.0251).chain([f32::NEG_INFINITY, -200.0, 0.0]).collect();
        for chunk in xs.chunks(16).filter(|c| c.len() == 16) {
            let want: Vec<f32> = chunk.iter().map(|&x| v_expf(x - 0.5)).collect();
            for (&x, &w) in chunk.iter().zip(&want) {
                let e = ((x - 0.5) as f64).exp();
                assert!((w as f64 - e).abs() <= 2e-6 * e + 1e-30, "{x}: {w} vs {e}");
            }
            if has_avx512() {
                let mut got = chunk.to_vec();
                unsafe { avx512::expf16(&mut got, 0.5) };
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn f16_fma_is_correctly_rounded() {
        // Exhaustive over a slice of the f16 range against an f64 reference
        // (exact here: the operands are small).
        for cb in (0x3000u16..0x4400).step_by(7) {
            for xb in (0x2000u16..0x3C00).step_by(131) {
                let (c, x, v) = (f16::from_bits(cb).to_f32(), f16::from_bits(xb).to_f32(), f16::from_f32(0.37).to_f32());
                let exact = f16::from_f64(x as f64 * v as f64 + c as f64);
                let mut acc = [cb];
                mad_f16(&mut acc, &[xb], 0.37, false);
                assert_eq!(acc[0], exact.to_bits(), "c={c} x={x}");
            }
        }
    }

    #[test]
    fn attention_paths_agree_with_a_plain_softmax() {
        // Both llama.cpp paths compute softmax(q k^T) v; the f16 one to f16
        // precision. Four heads sharing one KV head, a window of 3.
        let h = Heads { n_head: 4, n_kv: 1, dim: 64 };
        let t = 7;
        let kc = f16s(t * 64, 1);
        let vc = f16s(t * 64, 2);
        let q: Vec<f32> = f16s(2 * 4 * 64, 3).iter().map(|&b| f16::from_bits(b).to_f32() * 0.1).collect();
        let out = attention(&q, 2, t - 2, &kc, &vc, h, Some(3), false);
        for i in 0..2 {
            let p = t - 2 + i;
            for head in 0..4 {
                let qr = &q[(i * 4 + head) * 64..][..64];
                let js: Vec<usize> = (p + 1 - 3..=p).collect();
                let s: Vec<f64> = js.iter().map(|&j| (0..64).map(|d| qr[d] as f64 * f16::from_bits(kc[j * 64 + d]).to_f64()).sum()).collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..64 {
                    let want: f64 = js.iter().zip(&s).map(|(&j, x)| (x - m).exp() / z * f16::from_bits(vc[j * 64 + d]).to_f64()).sum();
                    let got = out[(i * 4 + head) * 64 + d] as f64;
                    assert!((got - want).abs() < 4e-3, "row {i} head {head} dim {d}: {got} vs {want}");
                }
            }
        }
    }
}

/// ggml's `nearest_int`: round half to even through the f32 adder (|v| < 2^22).
#[inline]
pub(crate) fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}
