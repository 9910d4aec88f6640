//! Dense layers with 16-bit weights for `--precision bf16|f16` on the CPU.
//!
//! The weights are rounded once, at load, to bf16 or f16 and packed in panels of 32
//! output columns by pairs of inputs; each product rounds the activations to the same
//! format and accumulates in f32, as `torch.autocast` does. On CPUs with AVX512-BF16
//! (Intel Cooper Lake and Sapphire Rapids, AMD Zen 4 and later) bf16 products run on
//! `vdpbf16ps`, which multiplies pairs of bf16 values into f32 sums and reads half the
//! bytes: on AMD's Zen 4 and 5 the bf16 encoders ran 1.6-2.6 times as fast as f32; on
//! an Intel Emerald Rapids the instruction gave half the products per second of f32's
//! (`bench/fma_peak.c -DBF16`), so there bf16 is slower than f32 without AMX, and
//! clipscope warns; elsewhere, and for f16, a portable loop
//! widens each panel to f32 (correct, half the weights' memory, not faster). Where the
//! CPU has AMX tiles (Intel Sapphire Rapids and later) bf16 products run on them
//! instead ([`super::amx`]), from the same panels.
//! LayerNorm, softmax, attention and activations stay f32.

use rayon::prelude::*;

/// The 16-bit formats a weight can be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfFormat {
    /// bfloat16: f32's range, 8 bits of precision.
    Bf16,
    /// IEEE half precision: 11 bits of precision, range up to 65504.
    F16,
}

impl HalfFormat {
    fn round(self, v: f32) -> u16 {
        match self {
            Self::Bf16 => half::bf16::from_f32(v).to_bits(),
            Self::F16 => half::f16::from_f32(v).to_bits(),
        }
    }

    fn widen(self, bits: u16) -> f32 {
        match self {
            Self::Bf16 => f32::from_bits(u32::from(bits) << 16),
            Self::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}

/// Output columns per panel: two AVX-512 registers of f32, and two AMX tiles.
const NR: usize = 32;
const _: () = assert!(NR == super::amx::PANEL_COLUMNS);
/// Rows per micro-tile: 8 x 2 accumulators leave registers for the weights.
const MR: usize = 8;
/// Input pairs per chunk: a panel's chunk (16 KiB) stays in L1 across row tiles.
const KC: usize = 128;

/// Whether this CPU multiplies bf16 pairs natively.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::util::has_avx512f() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernel bf16 products run on here: `"amx"`, `"avx512-bf16"` or `"portable"`.
pub fn bf16_kernel() -> &'static str {
    if super::amx::ready() {
        "amx"
    } else if cpu_has_bf16() {
        "avx512-bf16"
    } else {
        "portable"
    }
}

/// A dense weight `(in, out)` stored as 16-bit values in 32-column panels, each laid out
/// by input pairs: `[panel][pair][column][2]`, the operand order of `vdpbf16ps` and of
/// AMX's weight tiles. Each panel is zero-padded to whole tile steps of pairs.
pub struct PackedHalf {
    format: HalfFormat,
    inputs: usize,
    outputs: usize,
    pairs: usize,
    /// Pair rows per panel: `pairs` rounded up to a whole AMX tile step.
    panel_pairs: usize,
    data: Vec<u16>,
}

impl PackedHalf {
    /// Round and pack a PyTorch-layout weight: `weight` is `(outputs, inputs)`, row-major.
    pub fn pack(weight: &[f32], outputs: usize, inputs: usize, format: HalfFormat) -> Self {
        let pairs = inputs.div_ceil(2);
        let panel_pairs = pairs.next_multiple_of(super::amx::STEP_PAIRS);
        let panels = outputs.div_ceil(NR);
        let mut data = vec![0u16; panels * panel_pairs * NR * 2];
        data.par_chunks_mut(panel_pairs * NR * 2)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(outputs - p * NR) {
                    let row = &weight[(p * NR + j) * inputs..][..inputs];
                    for (k, &v) in row.iter().enumerate() {
                        panel[(k / 2) * NR * 2 + j * 2 + k % 2] = format.round(v);
                    }
                }
            });
        Self {
            format,
            inputs,
            outputs,
            pairs,
            panel_pairs,
            data,
        }
    }

    /// `(inputs, outputs)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    fn panel(&self, p: usize) -> &[u16] {
        &self.data[p * self.panel_pairs * NR * 2..][..self.panel_pairs * NR * 2]
    }

    /// `out += x · W` for `x` of `rows × inputs` (row-major), `out` the row-major
    /// `rows × outputs` starting values (a bias, a residual): the sums start there, with
    /// no second pass over the output.
    pub fn matmul_onto(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inputs, "input is rows x inputs");
        assert_eq!(out.len(), rows * self.outputs, "output is rows x outputs");
        if rows == 0 || self.outputs == 0 || self.inputs == 0 {
            return; // nothing to add to the starting values
        }
        #[cfg(target_arch = "x86_64")]
        if self.format == HalfFormat::Bf16 && super::amx::ready() {
            // SAFETY: `ready` checked the CPU, the OS's grant and a product.
            unsafe { self.matmul_amx::<super::amx::Amx>(x, rows, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.format == HalfFormat::Bf16 && cpu_has_bf16() {
            // SAFETY: the CPU has AVX512F and AVX512-BF16 (checked just above).
            unsafe { self.matmul_bf16_avx512(x, rows, out) };
            return;
        }
        self.matmul_portable(x, rows, out);
    }

    /// Widen each panel chunk to f32 and multiply by activations rounded to the format.
    fn matmul_portable(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        let rounded: Vec<f32> = x
            .par_iter()
            .map(|&v| self.format.widen(self.format.round(v)))
            .collect();
        let columns: Vec<Vec<f32>> = (0..n.div_ceil(NR))
            .into_par_iter()
            .map(|p| {
                let mut c = vec![0f32; rows * NR];
                let mut b = vec![0f32; 2 * KC * NR];
                let panel = self.panel(p);
                for k0 in (0..self.pairs).step_by(KC) {
                    let kc = KC.min(self.pairs - k0);
                    // b[kk][j] for inputs 2 * k0 + kk.
                    for pair in 0..kc {
                        for j in 0..NR {
                            for half in 0..2 {
                                let bits = panel[(k0 + pair) * NR * 2 + j * 2 + half];
                                b[(2 * pair + half) * NR + j] = self.format.widen(bits);
                            }
                        }
                    }
                    let kk_end = (2 * (k0 + kc)).min(k) - 2 * k0;
                    for r in 0..rows {
                        let a = &rounded[r * k + 2 * k0..][..kk_end];
                        let acc: &mut [f32; NR] =
                            (&mut c[r * NR..][..NR]).try_into().expect("NR columns");
                        for (kk, &av) in a.iter().enumerate() {
                            let bk: &[f32; NR] = b[kk * NR..][..NR].try_into().expect("NR");
                            for j in 0..NR {
                                acc[j] += av * bk[j];
                            }
                        }
                    }
                }
                c
            })
            .collect();
        for (p, c) in columns.iter().enumerate() {
            let w = NR.min(n - p * NR);
            for r in 0..rows {
                let dst = &mut out[r * n + p * NR..][..w];
                dst.iter_mut().zip(&c[r * NR..]).for_each(|(o, v)| *o += v);
            }
        }
    }

    /// The AMX path: activations rounded to row-major bf16, zero-padded to whole blocks
    /// of rows and tile steps of inputs, then multiplied tile by tile by the panels.
    ///
    /// # Safety
    /// `U`'s tile operations must be usable here.
    unsafe fn matmul_amx<U: super::amx::TileUnit + Send>(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        let (k, width) = (self.inputs, 2 * self.panel_pairs);
        let mut a = vec![0u16; rows.next_multiple_of(super::amx::BLOCK) * width];
        a.par_chunks_mut(width)
            .zip(x.par_chunks(k))
            .for_each(|(dst, row)| round_row_bf16(row, &mut dst[..k]));
        super::amx::matmul::<U>(&a, rows, &self.data, self.panel_pairs, out, self.outputs);
    }

    /// The AVX512-BF16 path: activations packed by row tiles as bf16 pairs, then each
    /// 32-column panel runs through 8 x 32 micro-tiles, chunk by chunk of inputs.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn matmul_bf16_avx512(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (k, n, pairs) = (self.inputs, self.outputs, self.pairs);
        let tiles = rows.div_ceil(MR);
        // a[tile][pair][r]: the pair (x[r, 2p], x[r, 2p + 1]) as one 32-bit broadcast.
        let mut a = vec![0u32; tiles * pairs * MR];
        a.par_chunks_mut(pairs * MR)
            .enumerate()
            .for_each(|(t, tile)| {
                for r in 0..MR.min(rows - t * MR) {
                    let row = &x[(t * MR + r) * k..][..k];
                    // SAFETY: the CPU features are this function's.
                    unsafe { pack_row_bf16(row, &mut tile[r..]) };
                }
            });
        let out_ptr = crate::util::SharedOut(out.as_mut_ptr());
        let a = &a;
        (0..n.div_ceil(NR)).into_par_iter().for_each(move |p| {
            let panel = self.panel(p);
            let cols = NR.min(n - p * NR);
            for k0 in (0..pairs).step_by(KC) {
                let kc = KC.min(pairs - k0);
                for t in 0..tiles {
                    let tile_rows = MR.min(rows - t * MR);
                    // SAFETY: each task writes only its own panel's columns of `out`
                    // (rows t*MR.., columns p*NR..p*NR+cols), inside the buffer; the
                    // CPU features are those of this function.
                    unsafe {
                        micro_tile(
                            a.as_ptr().add((t * pairs + k0) * MR),
                            panel.as_ptr().add(k0 * NR * 2),
                            kc,
                            out_ptr.at(t * MR * n + p * NR),
                            n,
                            tile_rows,
                            cols,
                        );
                    }
                }
            }
        });
    }
}

/// Round one row of activations to bf16 pairs, `dst[p * MR]` for pair `p`.
///
/// # Safety
/// AVX512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_row_bf16(row: &[f32], dst: &mut [u32]) {
    let mut chunks = row.chunks_exact(32);
    let mut p = 0;
    for c in &mut chunks {
        let mut pairs = [0u32; 16];
        round_32_bf16(c.as_ptr(), pairs.as_mut_ptr().cast());
        for (i, &v) in pairs.iter().enumerate() {
            dst[(p + i) * MR] = v;
        }
        p += 16;
    }
    for pair in chunks.remainder().chunks(2) {
        let lo = HalfFormat::Bf16.round(pair[0]);
        let hi = pair.get(1).map_or(0, |&v| HalfFormat::Bf16.round(v));
        dst[p * MR] = u32::from(lo) | (u32::from(hi) << 16);
        p += 1;
    }
}

/// Round 32 floats at `src` to bf16 at `dst`, to nearest even as `half::bf16::from_f32`.
///
/// # Safety
/// AVX512F and AVX512-BF16; 32 values readable at `src` and writable at `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_32_bf16(src: *const f32, dst: *mut u16) {
    use std::arch::x86_64::*;
    let lo = _mm512_loadu_ps(src);
    let hi = _mm512_loadu_ps(src.add(16));
    _mm512_storeu_si512(
        dst.cast(),
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)),
    );
}

/// Round a row of activations to bf16 in place order, 32 at a time where the CPU can.
fn round_row_bf16(row: &[f32], dst: &mut [u16]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cpu_has_bf16() {
        for (src, out) in row.chunks_exact(32).zip(dst.chunks_exact_mut(32)) {
            // SAFETY: the CPU has the features; both chunks hold 32 values.
            unsafe { round_32_bf16(src.as_ptr(), out.as_mut_ptr()) };
            done += 32;
        }
    }
    for (d, &v) in dst[done..].iter_mut().zip(&row[done..]) {
        *d = HalfFormat::Bf16.round(v);
    }
}

/// Whether AMX products agree with the portable kernel on a product with ragged rows,
/// columns and inputs; [`super::amx::ready`] runs it once before trusting the tiles.
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_agrees_with_reference() -> bool {
    let (rows, k, n) = (37, 100, 45);
    let x = check_values(rows * k, 5);
    let packed = PackedHalf::pack(&check_values(n * k, 6), n, k, HalfFormat::Bf16);
    let bias = check_values(rows * n, 7);
    let (mut want, mut got) = (bias.clone(), bias);
    packed.matmul_portable(&x, rows, &mut want);
    // SAFETY: the caller established that the CPU has AMX and the OS granted its state.
    unsafe { packed.matmul_amx::<super::amx::Amx>(&x, rows, &mut got) };
    got.iter()
        .zip(&want)
        .all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs()))
}

/// `n` reproducible values in [-0.5, 0.5) from `seed` (a linear congruential sequence).
#[cfg(any(test, target_arch = "x86_64"))]
pub(crate) fn check_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// `c[0..rows, 0..cols] += a · b` over `pairs` input pairs: `a` holds `MR` packed pairs
/// per input pair, `b` 32 columns of pairs per input pair.
///
/// # Safety
/// AVX512F and AVX512-BF16; `a` and `b` readable for `pairs` steps; `c` writable for
/// `rows` rows of `cols` columns at row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_tile(
    a: *const u32,
    b: *const u16,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        let b0: __m512bh =
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * 64).cast()));
        let b1: __m512bh =
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * 64 + 32).cast()));
        let ap = a.add(p * MR);
        for (r, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh =
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    let masks = [column_mask(cols), column_mask(cols.saturating_sub(16))];
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (h, (&v, &m)) in acc.iter().zip(&masks).enumerate() {
            let dst = c.add(r * ldc + h * 16);
            let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v);
            _mm512_mask_storeu_ps(dst, m, sum);
        }
    }
}

/// The lane mask of the first `cols` (at most 16) of 16 lanes.
#[cfg(target_arch = "x86_64")]
fn column_mask(cols: usize) -> u16 {
    if cols >= 16 {
        u16::MAX
    } else {
        (1u16 << cols) - 1
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::check_values as values;

    /// `x · Wᵀ` in f64 after `r` rounds each operand.
    fn product(
        x: &[f32],
        w: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        r: impl Fn(f32) -> f64,
    ) -> Vec<f32> {
        let mut y = vec![0f32; rows * n];
        for i in 0..rows {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|t| r(x[i * k + t]) * r(w[j * k + t]))
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn products_match_the_rounded_operands_on_ragged_shapes() {
        // Odd inputs, rows that do not fill a tile, columns that do not fill a panel,
        // more inputs than one chunk, and whole AMX blocks (written straight to `out`).
        for (rows, k, n) in [
            (1, 7, 5),
            (9, 300, 70),
            (17, 64, 32),
            (50, 768, 96),
            (64, 96, 64),
        ] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            for f in [HalfFormat::Bf16, HalfFormat::F16] {
                let packed = PackedHalf::pack(&w, n, k, f);
                // The product of the rounded operands: what both paths must reproduce.
                let want = product(&x, &w, rows, k, n, |v| f64::from(f.widen(f.round(v))));
                // Sums start from the bias.
                let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25).collect();
                let want: Vec<f32> = want
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + bias[i % n])
                    .collect();
                let mut portable = bias.repeat(rows);
                packed.matmul_portable(&x, rows, &mut portable);
                let mut dispatched = bias.repeat(rows);
                packed.matmul_onto(&x, rows, &mut dispatched);
                // The AMX kernel's logic on the software model of its tiles.
                let mut emulated = bias.repeat(rows);
                if f == HalfFormat::Bf16 {
                    // SAFETY: the emulated unit needs no CPU feature.
                    unsafe {
                        packed.matmul_amx::<super::super::amx::Emulated>(&x, rows, &mut emulated)
                    };
                } else {
                    emulated.clone_from(&portable);
                }
                for (got, name) in [
                    (dispatched, "dispatched"),
                    (portable, "portable"),
                    (emulated, "emulated AMX"),
                ] {
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{f:?} {name} {rows}x{k}x{n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_amx_kernel_splits_long_activations_into_row_chunks() {
        // 16384 inputs: 32 rows fill a chunk, so 70 rows take three (32, 32, 6).
        let (rows, k, n) = (70, 16384, 40);
        let (x, w) = (values(rows * k, 8), values(n * k, 9));
        let packed = PackedHalf::pack(&w, n, k, HalfFormat::Bf16);
        let round = |v: f32| f64::from(HalfFormat::Bf16.widen(HalfFormat::Bf16.round(v)));
        let want = product(&x, &w, rows, k, n, round);
        let mut got = vec![0f32; rows * n];
        // SAFETY: the emulated unit needs no CPU feature.
        unsafe { packed.matmul_amx::<super::super::amx::Emulated>(&x, rows, &mut got) };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{i}: {g} vs {w}");
        }
    }

    #[test]
    fn bf16_products_stay_close_to_f32() {
        let (rows, k, n) = (8, 512, 64);
        let (x, w) = (values(rows * k, 3), values(n * k, 4));
        let mut got = vec![0f32; rows * n];
        PackedHalf::pack(&w, n, k, HalfFormat::Bf16).matmul_onto(&x, rows, &mut got);
        let exact = product(&x, &w, rows, k, n, f64::from);
        let err = got
            .iter()
            .zip(&exact)
            .map(|(g, e)| (g - e).abs())
            .fold(0f32, f32::max);
        let scale = exact.iter().map(|e| e.abs()).fold(0f32, f32::max);
        assert!(
            err < 0.02 * scale,
            "bf16 error {err} against a scale of {scale}"
        );
    }
}
