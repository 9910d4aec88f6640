//! The exponential for the encoders' QuickGELU and attention softmax, written so that
//! the compiler vectorises it: glibc's `expf` is one call per value, and ViT-B/32 takes
//! 2.2 million of them per image (QuickGELU: 50 tokens x 3072 x 12 layers; softmax: 12
//! heads x 50 x 50 x 12 layers), 3.7% of a folder job's samples in `perf` (2026-12-03,
//! Zen 5).
//!
//! Cephes' `expf`: `exp(x) = 2^n exp(r)` with `n` the nearest integer to `x / ln 2`, `r`
//! reduced in two steps and a degree-6 polynomial; within 2 ulp of the true value (the
//! test checks it against f64). No fused multiply-adds: Rust does not contract `a * b +
//! c`, so every CPU (and the AVX-512, AVX2 and plain builds of the loops below) computes
//! the same bits.

/// Largest and smallest arguments whose exponential is a normal f32.
const MAX_ARG: f32 = 88.0;
const MIN_ARG: f32 = -87.3;

/// `e^x`, for `x` from -87.3 (below, the result is that of -87.3: about 1.2e-38) to 88
/// (above, `e^88`); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in few bits, so `x - n ln 2` loses nothing.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer, in any vector
    // width and without SSE4.1's rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2^n from its exponent bits; n lies in -126..=127 after the clamp and sits in the
    // low bits of `shifted` (a float-to-integer cast would not vectorise: Rust's
    // saturates). A NaN `x` gives a NaN `e`, which the product keeps.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e * scale
}

/// `x * sigmoid(1.702 x)`, OpenAI's QuickGELU, for the loops below to vectorise.
#[inline(always)]
fn quick_gelu_one(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `out[i] = x[i] * sigmoid(1.702 x[i])`, OpenAI's QuickGELU.
pub(crate) fn quick_gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "quick_gelu: lengths");
    on_widest_vectors(|| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = quick_gelu_one(v);
        }
    });
}

/// [`quick_gelu`] of `v`, written over it (the same bits).
pub(crate) fn quick_gelu_in_place(v: &mut [f32]) {
    on_widest_vectors(|| v.iter_mut().for_each(|o| *o = quick_gelu_one(*o)));
}

/// `row[i] = e^(row[i] - shift)`.
pub(crate) fn exp_shifted_in_place(row: &mut [f32], shift: f32) {
    on_widest_vectors(|| row.iter_mut().for_each(|v| *v = exp(*v - shift)));
}

/// Run `f` compiled for the widest vectors this CPU has (the loops in `f` vectorise to
/// 16 lanes on AVX-512, 8 on AVX2).
#[inline(always)]
fn on_widest_vectors(f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::util::has_avx512f() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { on_avx512(f) };
        }
        if crate::util::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { on_avx2(f) };
        }
    }
    f()
}

/// `f`, inlined into a function compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn on_avx512(f: impl FnOnce()) {
    f()
}

/// As [`on_avx512`] for AVX2 (8 lanes).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_avx2(f: impl FnOnce()) {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value_over_its_range() {
        let mut worst = 0;
        let steps = 400_000;
        for i in 0..=steps {
            let x = MIN_ARG + (MAX_ARG - MIN_ARG) * i as f32 / steps as f32;
            let want = f64::from(x).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        // Clamped, not infinite or zero: the callers divide by 1 + e^x and normalise sums.
        assert_eq!(exp(1000.0), exp(MAX_ARG));
        assert_eq!(exp(f32::NEG_INFINITY), exp(MIN_ARG));
        assert!(exp(MIN_ARG) > 0.0 && exp(MAX_ARG).is_finite());
    }

    #[test]
    fn the_vector_loops_give_the_scalar_bits() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let mut out = vec![0.0; x.len()];
        quick_gelu(&x, &mut out);
        for (&v, &o) in x.iter().zip(&out) {
            assert_eq!(o, v / (1.0 + exp(-1.702 * v)), "quick_gelu({v})");
        }
        let mut in_place = x.clone();
        quick_gelu_in_place(&mut in_place);
        assert_eq!(in_place, out, "quick_gelu_in_place");
        let mut row = x.clone();
        exp_shifted_in_place(&mut row, 3.0);
        for (&v, &o) in x.iter().zip(&row) {
            assert_eq!(o, exp(v - 3.0), "exp({v} - 3)");
        }
    }
}
