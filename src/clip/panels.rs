//! f32 dense weights packed in panels of 32 output columns, and the product by them.
//!
//! A panel holds 32 columns of the `(inputs, outputs)` weight input by input,
//! `[panel][input][32]`, so a product streams each panel front to back: 128 contiguous
//! bytes per input, whatever the layer's width. gemm reads a transposed `(in, out)`
//! weight a few lines per input with a stride of the layer's width and depends on the
//! weight's pages being huge for it; with one image's 50 tokens the kernel here ran
//! ViT-B/32's products 1.2-2.1 times as fast as gemm, at 800 rows about as fast, and
//! with 3072 inputs at 800 rows at 0.83 of gemm's rate (`examples/panel_bench.rs`,
//! numbers in `docs/benchmarks.md`).
//!
//! On CPUs with AVX-512 a micro-kernel multiplies up to 6 rows of activations by two
//! panels side by side (a lone last panel: up to 12 rows by one), 24 accumulators, the
//! activations read in place (no packing pass); each output's sum runs in the same
//! order whatever the number of rows. Two panels at a time load 4 weight vectors per 6
//! broadcast activations instead of 2 per 12: on an Intel Xeon (Emerald Rapids) the
//! products of 800 rows ran 3-10% faster (`examples/panel_bench.rs`), the image encoder
//! at batch 16 5% and the text encoder 8% (`bench/ab.sh`, ten alternated pairs, each
//! won; docs/benchmarks.md).
//!
//! CPUs with AVX2 and FMA but not AVX-512 (most laptops, AMD before Zen 4) run a kernel
//! of up to 6 rows by half a panel (12 of their 16 registers accumulate) that adds in
//! the same order, so both give the same bits. Other CPUs run gemm once per panel.
//!
//! The AVX2 kernel reads activations copied tile by tile, input-major (a tile's values
//! of one input side by side), and takes the tiles of a panel in groups of
//! `GROUP_TILES`: each block of `KC` inputs of half a panel (16 KiB) is multiplied
//! by all of a group's tiles while it sits in the L1 cache, instead of streaming the
//! whole panel from L2 once per tile. On a 2-core Zen 3 this made ViT-B/32's image
//! encoder at batch 16 16% faster and the text encoder 17% (`bench/ab.sh`, the two
//! builds alternated; docs/benchmarks.md).
//!
//! Activations whose rows lie a multiple of 4 KiB apart (3072 and 2048 inputs) are
//! first copied with one cache line of padding per row, so a tile's rows do not share
//! one set of the L1 cache; the copy changes no sum.

use rayon::prelude::*;

use crate::cnn::conv::{matmul_add_at, Mat};
use crate::util::has_avx2_fma;

/// Output columns per panel: two AVX-512 registers of f32.
pub const PANEL: usize = 32;

/// Rows of activations per AVX-512 micro-tile of a lone panel: 12 x 2 accumulators
/// leave registers for the panel's two vectors.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR: usize = 12;

/// Inputs summed in registers before the sums are added to the output: partial sums
/// of this length keep rounding error near gemm's (the full-size parity test's
/// probabilities moved 5.8e-6 from the reference with one sum over all inputs, 2.0e-6
/// with gemm).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const KC: usize = 256;

/// Inputs ahead of the one being multiplied whose panel values are fetched into the L1
/// cache: the panel streams from memory for one image's 50 rows (each weight is used
/// once per tile), and the hardware's prefetcher alone left the kernel waiting on it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH_INPUTS: usize = 8;

/// Inputs ahead whose panel row the AVX2 micro-tile fetches into the L1 cache: twice
/// [`PREFETCH_INPUTS`], as the AVX2 tile takes half as long per input; on an Intel Xeon
/// kept to AVX2 (`bench/ab.sh`, two runs of 10 pairs) the image encoder at batch 1 took
/// 0-2% less time and the text encoder 5% less than at 8 inputs, and 2% less than at 32
/// (one run).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH_ROW_INPUTS_AVX2: usize = 16;

/// Inputs ahead whose activations the AVX2 micro-tile fetches into the L1 cache (`R`
/// cache lines ahead for a tile of `R` rows; near a block's end, its next block's): a
/// group's tiles (60 KiB per block of [`KC`] inputs) are read from L2, and the
/// hardware's prefetcher alone left the kernel waiting on them a little.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PREFETCH_TILE_INPUTS: usize = 16;

/// Row strides that are a multiple of this many floats (4 KiB) map every row of a tile
/// to the same set of the L1 cache, where the rows evict each other: ViT's 3072-input
/// and the text tower's 2048-input products ran at 0.7-0.9 of the rate of 16 more
/// inputs (`examples/panel_bench.rs`). Such activations are copied with a padded stride.
const ALIASED_STRIDE: usize = 1024;

/// Floats added to an aliased stride: one cache line, so consecutive rows fall in
/// consecutive sets.
const STRIDE_PAD: usize = 16;

/// AVX2 tiles multiplied by one block of half a panel while it is in the L1 cache: 60
/// rows, whose block of [`KC`] inputs (60 KiB) stays in L2 across the panel's halves.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const GROUP_TILES: usize = 10;

/// Rows per AVX-512 micro-tile of two panels: 6 x 4 accumulators, with the four
/// vectors of weights and a broadcast 29 of the 32 registers.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR_PAIR: usize = 6;

/// Below this many multiply-adds a product runs on one thread: handing tasks to
/// rayon's workers costs more than it saves (a projection of one embedding).
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Floats a packed `(inputs, outputs)` weight takes: whole panels, the last padded.
pub fn packed_len(inputs: usize, outputs: usize) -> usize {
    outputs.div_ceil(PANEL) * inputs * PANEL
}

/// Pack PyTorch's row-major `(outputs, inputs)` weight into panels; the last panel's
/// missing columns are zeros.
pub fn pack(weight: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    assert_eq!(weight.len(), outputs * inputs, "weight is outputs x inputs");
    // Huge pages where the system gives them; every value is written below.
    let mut packed = crate::util::zeroed_floats(packed_len(inputs, outputs));
    if inputs == 0 {
        return packed;
    }
    packed
        .par_chunks_mut(inputs * PANEL)
        .enumerate()
        .for_each(|(p, panel)| {
            for j in 0..PANEL.min(outputs - p * PANEL) {
                let row = &weight[(p * PANEL + j) * inputs..][..inputs];
                for (k, &v) in row.iter().enumerate() {
                    panel[k * PANEL + j] = v;
                }
            }
        });
    packed
}

/// `out += x · W` for the packed `(inputs, outputs)` weight `w`, `x` row-major
/// `rows × inputs`, `out` row-major `rows × outputs` holding the starting values (a
/// bias, a residual).
pub fn matmul_onto(
    w: &[f32],
    inputs: usize,
    outputs: usize,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    // One kernel for every size: an image's embedding must not depend on the batch it
    // came in (sharded jobs merge to the unsharded run's results), and switching to
    // gemm above some size would change its summation order.
    product_onto(Kernel::here(), w, inputs, outputs, x, rows, out);
}

/// Which code multiplies by the panels on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Up to 6 rows by two panels side by side (a lone panel: 12 rows by it) in AVX-512
    /// registers.
    Avx512,
    /// Up to 6 rows by half a panel in AVX2 registers with FMA; the same bits as
    /// [`Kernel::Avx512`].
    Avx2,
    /// gemm once per panel (no AVX2 and FMA, or not x86-64).
    Gemm,
}

impl Kernel {
    /// The fastest kernel this CPU (and build: `util::has_avx512f`) runs.
    pub fn here() -> Kernel {
        Kernel::FASTEST_FIRST
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Kernel::Gemm)
    }

    /// Every kernel, the fastest first.
    const FASTEST_FIRST: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Gemm];

    /// Whether this CPU (and build) runs the kernel.
    fn runs_here(self) -> bool {
        match self {
            Kernel::Avx512 => crate::util::has_avx512f(),
            Kernel::Avx2 => has_avx2_fma(),
            Kernel::Gemm => true,
        }
    }

    /// Panels each task of a product with `panels` panels multiplies, on `threads`
    /// threads: two side by side on AVX-512, whose micro-tile then loads 4 weight
    /// vectors per 6 broadcasts instead of 2 per 12, unless that left a thread fewer
    /// than two tasks (768 outputs on 16 threads); one otherwise. Either way every
    /// output is summed alike.
    fn panels_per_task(self, panels: usize, threads: usize) -> usize {
        let most = self.most_panels_per_task();
        if most > 1 && panels.div_ceil(most) >= 2 * threads {
            most
        } else {
            1
        }
    }

    /// The most panels one task of this kernel multiplies side by side.
    fn most_panels_per_task(self) -> usize {
        if self == Kernel::Avx512 {
            2
        } else {
            1
        }
    }

    /// The name `clipscope bench` prints: `avx512`, `avx2` or `gemm`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Gemm => "gemm",
        }
    }
}

/// [`matmul_onto`] on a chosen kernel (tests compare them).
fn product_onto(
    kernel: Kernel,
    w: &[f32],
    inputs: usize,
    outputs: usize,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    assert_eq!(w.len(), packed_len(inputs, outputs), "packed weight size");
    assert_eq!(x.len(), rows * inputs, "input is rows x inputs");
    assert_eq!(out.len(), rows * outputs, "output is rows x outputs");
    if rows == 0 || outputs == 0 || inputs == 0 {
        return;
    }
    if kernel == Kernel::Avx2 {
        // Tiles input-major: no row stride, so no aliasing either.
        with_copy(rows * inputs, |copy| {
            copy_tiles(x, rows, inputs, copy);
            panels_onto(kernel, w, inputs, outputs, copy, inputs, rows, out)
        });
    } else if kernel != Kernel::Gemm && inputs.is_multiple_of(ALIASED_STRIDE) && rows > 1 {
        with_padded_rows(x, rows, inputs, |x, lda| {
            panels_onto(kernel, w, inputs, outputs, x, lda, rows, out)
        });
    } else {
        panels_onto(kernel, w, inputs, outputs, x, inputs, rows, out);
    }
}

/// [`product_onto`] with the rows of `x` `lda` floats apart (`inputs` for gemm; for
/// [`Kernel::Avx2`], `x` laid out by [`copy_tiles`]), every panel or pair of panels
/// ([`Kernel::panels_per_task`]) a task.
#[allow(clippy::too_many_arguments)]
fn panels_onto(
    kernel: Kernel,
    w: &[f32],
    inputs: usize,
    outputs: usize,
    x: &[f32],
    lda: usize,
    rows: usize,
    out: &mut [f32],
) {
    assert!(
        lda >= inputs && x.len() >= (rows - 1) * lda + inputs,
        "rows lda apart"
    );
    assert!(
        kernel != Kernel::Gemm || lda == inputs,
        "gemm reads rows inputs apart"
    );
    let out_ptr = crate::util::SharedOut(out.as_mut_ptr());
    let panels = outputs.div_ceil(PANEL);
    let parallel = rows * inputs * outputs >= PARALLEL_MIN_WORK;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let span = kernel.panels_per_task(panels, threads);
    let task = move |q: usize| {
        let p = q * span;
        let cols = (span * PANEL).min(outputs - p * PANEL);
        let w = &w[p * inputs * PANEL..][..cols.div_ceil(PANEL) * inputs * PANEL];
        // Each task writes only its own panels' columns of `out`, which is rows ×
        // outputs long (the caller asserted); no two calls share a column.
        let dst = out_ptr.at(p * PANEL);
        if kernel != Kernel::Gemm {
            // SAFETY: the CPU runs `kernel`; `x` holds `rows` rows `lda` apart (asserted
            // above), `w` the task's panels (two at most, on AVX-512 only), `out` `rows`
            // rows of `outputs`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                panel_kernel(kernel, x, rows, inputs, lda, w, cols, dst, outputs)
            };
        } else {
            // SAFETY: as above (one panel: span is 1 for gemm); from this panel's first
            // column of row 0, `cols` columns of each of `rows` rows `outputs` apart lie
            // in `out`.
            unsafe {
                matmul_add_at(
                    Mat::new(x, rows, inputs),
                    Mat::with_row_stride(w, inputs, cols, PANEL),
                    dst,
                    (rows - 1) * outputs + cols,
                    outputs,
                )
            };
        }
    };
    let tasks = panels.div_ceil(span);
    if parallel {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

thread_local! {
    /// This thread's buffer for the activations' copy ([`with_copy`]), kept between
    /// products: a fresh one would take megabytes of new pages from the system for
    /// every product. It holds the largest product's activations so far (10 MB at
    /// ViT-B/32's batch 16).
    static COPY: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `f` on this thread's copy buffer, at least `len` floats long.
fn with_copy<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // Taken, not borrowed: a product nested in this one on the same thread (rayon runs
    // other tasks while it waits) finds the cell empty and makes its own buffer.
    let mut copy = COPY.take();
    if copy.len() < len {
        copy = vec![0f32; len];
    }
    let result = f(&mut copy[..len]);
    COPY.set(copy);
    result
}

/// `f` on a copy of the `rows × inputs` values `x` whose rows are
/// `inputs +` [`STRIDE_PAD`] floats apart, and that stride.
fn with_padded_rows<R>(
    x: &[f32],
    rows: usize,
    inputs: usize,
    f: impl FnOnce(&[f32], usize) -> R,
) -> R {
    let lda = inputs + STRIDE_PAD;
    with_copy(rows * lda, |padded| {
        let copy_row = |(dst, src): (&mut [f32], &[f32])| dst[..inputs].copy_from_slice(src);
        if rows * inputs < PARALLEL_MIN_WORK {
            padded
                .chunks_mut(lda)
                .zip(x.chunks(inputs))
                .for_each(copy_row);
        } else {
            let pairs = padded.par_chunks_mut(lda).zip(x.par_chunks(inputs));
            pairs.for_each(copy_row);
        }
        f(padded, lda)
    })
}

/// `rows` split into tiles of at most `most` rows, evenly (50 rows in tiles of at most 12
/// as 5 × 10, not 4 × 12 + 2), as `(first row, rows)`.
fn even_tiles(rows: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = rows.div_ceil(most);
    (0..tiles).map(move |t| (t * rows / tiles, (t + 1) * rows / tiles - t * rows / tiles))
}

/// Copy the `rows × inputs` activations `x` into `dst` tile by tile ([`even_tiles`] of
/// at most [`MR_AVX2`] rows), each tile input-major: the tile starting at row `s` with
/// `h` rows holds row `s + r`'s input `i` at `s × inputs + i × h + r`, so the kernel's
/// broadcasts read one stream.
fn copy_tiles(x: &[f32], rows: usize, inputs: usize, dst: &mut [f32]) {
    let copy_tile = |(dst, (start, h)): (&mut [f32], (usize, usize))| {
        let rows = &x[start * inputs..][..h * inputs];
        match h {
            1 => interleave::<1>(rows, inputs, dst),
            2 => interleave::<2>(rows, inputs, dst),
            3 => interleave::<3>(rows, inputs, dst),
            4 => interleave::<4>(rows, inputs, dst),
            5 => interleave::<5>(rows, inputs, dst),
            6 => interleave::<6>(rows, inputs, dst),
            h => unreachable!("no tile of {h} rows"),
        }
    };
    // Each tile's own part of `dst`, so that tiles can be copied in parallel.
    let mut rest = &mut dst[..rows * inputs];
    let mut pairs = Vec::with_capacity(rows.div_ceil(MR_AVX2));
    for (start, h) in even_tiles(rows, MR_AVX2) {
        let (tile, tail) = std::mem::take(&mut rest).split_at_mut(h * inputs);
        pairs.push((tile, (start, h)));
        rest = tail;
    }
    if rows * inputs < PARALLEL_MIN_WORK {
        pairs.into_iter().for_each(copy_tile);
    } else {
        pairs.into_par_iter().for_each(copy_tile);
    }
}

/// `dst[i × H + r] = rows[r × inputs + i]`: the `H` rows of `rows`, `inputs` long,
/// interleaved input by input. With `H` fixed the rows' addresses stay in registers and
/// `dst` is written front to back; a loop over a tile's rows one at a time, writing every
/// `H`th value, took three times as long (800 x 768 values: 0.35 against 0.13 ms on two
/// threads).
fn interleave<const H: usize>(rows: &[f32], inputs: usize, dst: &mut [f32]) {
    let rows: [&[f32]; H] = std::array::from_fn(|r| &rows[r * inputs..][..inputs]);
    for (i, out) in dst.chunks_exact_mut(H).enumerate() {
        for (o, row) in out.iter_mut().zip(&rows) {
            *o = row[i];
        }
    }
}

/// `$call` with the constant `$R` set to `$rows`, one of the listed heights: each height
/// is its own function, so that its accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! by_height {
    ($rows:expr, [$($r:literal),*], $R:ident => $call:expr) => {{
        match $rows {
            $($r => {
                const $R: usize = $r;
                $call
            })*
            rows => unreachable!("no tile of {rows} rows"),
        }
    }};
}

/// One task's `cols` columns of all rows (one panel, or on AVX-512 two side by side when
/// `cols` exceeds [`PANEL`]): the rows in tiles of at most [`MR_PAIR`] (two panels),
/// [`MR`] (one panel on AVX-512) or [`MR_AVX2`], split evenly (50 rows as 5 × 10, not
/// 4 × 12 + 2).
///
/// # Safety
/// The CPU must run `kernel` (not [`Kernel::Gemm`]); `x` holds `rows` rows of `inputs`
/// values, `lda` apart (for [`Kernel::Avx2`]: as [`copy_tiles`] lays them out, `lda`
/// unused); `w` the task's `cols.div_ceil(PANEL)` panels of `inputs × PANEL` (one on
/// AVX2); and `dst` addresses `rows` rows of at least `cols` writable, initialised
/// floats, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_kernel(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    inputs: usize,
    lda: usize,
    w: &[f32],
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    debug_assert!(
        cols <= PANEL * kernel.most_panels_per_task()
            && w.len() >= cols.div_ceil(PANEL) * inputs * PANEL,
        "a task's columns lie in its panels"
    );
    if kernel == Kernel::Avx2 {
        // SAFETY: the caller's contract.
        unsafe { avx2_panel(x, rows, inputs, w, cols, dst, ldc) };
        return;
    }
    let pair = cols > PANEL;
    for (start, h) in even_tiles(rows, if pair { MR_PAIR } else { MR }) {
        let (a, b) = (x[start * lda..].as_ptr(), w.as_ptr());
        let c = dst.wrapping_add(start * ldc);
        // SAFETY: the tile's rows lie in x and dst, its one or two panels in w (the
        // caller's contract).
        unsafe {
            if pair {
                by_height!(h, [1, 2, 3, 4, 5, 6], R => tile::<R, 4>(a, inputs, lda, b, cols, c, ldc))
            } else {
                by_height!(h, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], R => tile::<R, 2>(a, inputs, lda, b, cols, c, ldc))
            }
        };
    }
}

/// [`panel_kernel`] on AVX2: for each group of [`GROUP_TILES`] tiles, each block of
/// [`KC`] inputs and each half of the panel, every tile of the group in turn. Each
/// output still gets its blocks' sums in input order, as from the AVX-512 kernel.
///
/// # Safety
/// As [`panel_kernel`] for [`Kernel::Avx2`].
#[cfg(target_arch = "x86_64")]
unsafe fn avx2_panel(
    x: &[f32],
    rows: usize,
    inputs: usize,
    w: &[f32],
    cols: usize,
    dst: *mut f32,
    ldc: usize,
) {
    let tiles: Vec<(usize, usize)> = even_tiles(rows, MR_AVX2).collect();
    for group in tiles.chunks(GROUP_TILES) {
        for k0 in (0..inputs).step_by(KC) {
            let k = KC.min(inputs - k0);
            for half in (0..cols).step_by(16) {
                let b = w[k0 * PANEL + half..].as_ptr();
                // Floats from a value of this half of the panel to the same input's value
                // in the other half.
                let other_half = if half == 0 { 16 } else { -16 };
                for &(start, h) in group {
                    let a = x[start * inputs + k0 * h..].as_ptr();
                    let c = dst.wrapping_add(start * ldc + half);
                    // SAFETY: the tile's `h` rows of this block lie in x (copy_tiles'
                    // layout) and in dst; the block of the panel in w (the caller's
                    // contract).
                    unsafe {
                        by_height!(h, [1, 2, 3, 4, 5, 6], R => avx2_tile::<R>(a, k, b, other_half, cols - half, c, ldc))
                    }
                }
            }
        }
    }
}

/// `c[r][..cols] += a[r] · b` for `R` rows and `V` vectors of 16 columns: `V / 2` panels
/// side by side in `b`, `k × PANEL` floats apart. Each output sums each block of [`KC`]
/// inputs from zero in input order, then adds it to `c`, whatever `R` and `V`.
///
/// # Safety
/// The CPU must have AVX-512F; `a` must hold `R` rows of `k` values, `lda` apart; `b`
/// `V / 2` panels of `k × PANEL`; `c` `R` rows of `cols` initialised floats, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const V: usize>(
    a: *const f32,
    k: usize,
    lda: usize,
    b: *const f32,
    cols: usize,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    const { assert!(V.is_multiple_of(2), "whole panels of two vectors") };
    // Lanes of each vector that hold real columns (the last panel may be partial);
    // masked lanes are neither read nor written, nor can they fault.
    let lanes = |n: usize| -> __mmask16 { (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16 };
    let masks: [__mmask16; V] = std::array::from_fn(|v| lanes(cols.saturating_sub(16 * v)));
    // Vector v's columns of input 0: panel v / 2, half v % 2.
    let column = |v: usize| (v / 2) * k * PANEL + (v % 2) * 16;
    for k0 in (0..k).step_by(KC) {
        // The lines of each row's outputs (one more where the row is not aligned to a
        // line), needed when this block's sums are added.
        for r in 0..R {
            let row = c.wrapping_add(r * ldc) as *const i8;
            for line in 0..V {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * line));
            }
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * V - 4));
        }
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in k0..k.min(k0 + KC) {
            // SAFETY: input kk's values of the panels, and row r's input kk, lie in b
            // and a (the caller's contract).
            unsafe {
                for p in 0..V / 2 {
                    let ahead = b.wrapping_add(column(2 * p) + (kk + PREFETCH_INPUTS) * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16) as *const i8);
                }
                let bv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_loadu_ps(b.add(column(v) + kk * PANEL)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * lda + kk));
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, *bv, *acc);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = c.wrapping_add(r * ldc);
            for (v, (acc, &m)) in acc.iter().zip(&masks).enumerate() {
                // SAFETY: masked to this row's `cols` columns (the caller's contract).
                unsafe {
                    let at = row.wrapping_add(16 * v);
                    let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(m, at), *acc);
                    _mm512_mask_storeu_ps(at, m, sum);
                }
            }
        }
    }
}

/// Rows per AVX2 micro-tile: 6 rows x 2 accumulators of half a panel, the half's two
/// vectors and a broadcast fill 15 of the 16 registers.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR_AVX2: usize = 6;

/// `c[r][..cols] += Σ a[kk][r] · b[kk]` over `k` inputs for the `R` rows of a tile laid
/// out input-major ([`copy_tiles`]) and 16 columns of a panel `b` (its rows [`PANEL`]
/// apart), of which the first `cols` are outputs: one block of [`KC`] inputs of half a
/// panel, summed by the same fused multiply-adds as [`tile`]'s. `other_half` is the
/// offset from a value of `b` to the same input's in the panel's other half (only
/// prefetched, never read).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` must hold `k × R` values; `b` `k` rows of 16
/// values, `PANEL` apart; `c` `R` rows of `min(cols, 16)` initialised floats, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<const R: usize>(
    a: *const f32,
    k: usize,
    b: *const f32,
    other_half: isize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    // `c[..n] += acc[..n]`. Partial vectors go through a buffer: AMD documents that a
    // masked move may fault on lanes it does not touch, and the last row's lanes past
    // its columns can lie past the end of the output.
    let add_into = |c: *mut f32, acc: __m256, n: usize| {
        // SAFETY: `n` of the 8 floats at `c` lie in this row's columns (the caller's
        // contract); 8 are read only when all 8 do.
        unsafe {
            if n >= 8 {
                _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), acc));
            } else if n > 0 {
                let mut sums = [0f32; 8];
                _mm256_storeu_ps(sums.as_mut_ptr(), acc);
                for (i, s) in sums[..n].iter().enumerate() {
                    *c.add(i) += s;
                }
            }
        }
    };
    // The lines of this half's 16 outputs per row, needed when the sums are added.
    for r in 0..R {
        let row = c.wrapping_add(r * ldc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(row);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(60));
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..k {
        // SAFETY: input kk's 16 values of the half panel and the tile's R values of
        // input kk lie in b and a (the caller's contract).
        unsafe {
            // The panel's row a few inputs ahead, this half's line and the other's: at
            // batch 1 the panel streams from memory, and on an Intel Xeon kept to AVX2
            // the first prefetch took 6% off the encoder. The second (the other half's
            // line, for the group's next pass; a row fills two lines where the values
            // start on a line, as in a prepared store): aligned rows with it took 3%
            // off batch 1, without it they cost 5% (alone, on unaligned rows, 0.3%).
            // In the second half's pass it mostly names lines the first pass has just
            // read, which a prefetch finds in L1.
            let ahead = b.wrapping_add((kk + PREFETCH_ROW_INPUTS_AVX2) * PANEL);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_offset(other_half) as *const i8);
            // The tile's activations of a later input, which stream from L2: about 3%
            // off the image encoder at batch 16 on the Xeon kept to AVX2. The address
            // may lie past the tile's values (wrapping_add claims nothing of it), and a
            // prefetch never faults.
            _mm_prefetch::<_MM_HINT_T0>(
                a.wrapping_add((kk + PREFETCH_TILE_INPUTS) * R) as *const i8
            );
            let b0 = _mm256_loadu_ps(b.add(kk * PANEL));
            let b1 = _mm256_loadu_ps(b.add(kk * PANEL + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*a.add(kk * R + r));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = c.wrapping_add(r * ldc);
        add_into(row, acc[0], cols);
        add_into(row.wrapping_add(8), acc[1], cols.saturating_sub(8));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clip::half::tests::values;
    use crate::cnn::conv::matmul_into;

    /// `start + x · Wᵀ` in f64 for `w` as `(out, in)`.
    pub(crate) fn reference(
        x: &[f32],
        w: &[f32],
        start: &[f32],
        rows: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        (0..rows * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                let dot: f64 = (0..k)
                    .map(|j| f64::from(x[row * k + j]) * f64::from(w[col * k + j]))
                    .sum();
                (dot + f64::from(start[i])) as f32
            })
            .collect()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn packed_products_match_the_sum_in_f64_for_every_tile_and_panel_shape() {
        // Rows: one, a partial tile, tiles split evenly, many tiles; columns: a partial
        // panel alone, whole panels, whole and partial; inputs past one partial sum;
        // inputs copied to a padded stride (1024, 2048: in parallel, then into the same
        // thread's buffer, larger than needed).
        let shapes = [
            (1, 5, 7),
            (3, 17, 32),
            (13, 40, 50),
            (50, 64, 96),
            (50, 33, 100),
            (130, 24, 40),
            (2100, 520, 33),
            (300, 1024, 40),
            (3, 2048, 33),
        ];
        for (rows, k, n) in shapes {
            let (x, w, start) = (values(rows * k, 1), values(n * k, 2), values(rows * n, 3));
            let packed = pack(&w, n, k);
            assert_eq!(packed.len(), packed_len(k, n));
            let want = reference(&x, &w, &start, rows, k, n);
            for kernel in kernels_here() {
                let mut out = start.clone();
                product_onto(kernel, &packed, k, n, &x, rows, &mut out);
                let err = worst(&out, &want);
                assert!(err < 1e-4, "{kernel:?} {rows}x{k}x{n}: {err}");
            }
        }
    }

    /// Every kernel this CPU runs, the fastest first.
    fn kernels_here() -> Vec<Kernel> {
        let all = Kernel::FASTEST_FIRST.into_iter();
        all.filter(|k| k.runs_here()).collect()
    }

    /// The hand-written kernels this CPU runs (not gemm).
    fn own_kernels_here() -> Vec<Kernel> {
        let mut kernels = kernels_here();
        kernels.retain(|&k| k != Kernel::Gemm);
        kernels
    }

    #[test]
    fn the_avx2_kernel_gives_the_avx512_kernels_bits() {
        if !kernels_here().starts_with(&[Kernel::Avx512, Kernel::Avx2]) {
            eprintln!("skipped: this CPU does not run both kernels");
            return;
        }
        // Partial panels of up to 16 and more columns (a partial second half), tiles of
        // every AVX2 height (2 only alone), inputs past one and two partial sums; start
        // values that are not zero.
        // On AVX-512, pairs of panels in tiles of every height (1-6: rows 1, 2, 7, 13,
        // 11, 50), their second panel partial (47: one vector of 15 columns; 60: one and
        // a half) or whole with a single panel after (70, 80, 96), beside a single
        // panel alone (27, 9, 20).
        let shapes = [
            (1, 3, 1),
            (5, 300, 60),
            (1, 40, 64),
            (2, 300, 27),
            (2, 300, 70),
            (7, 300, 9),
            (7, 300, 64),
            (11, 260, 96),
            (13, 600, 47),
            (50, 96, 80),
            (9, 1024, 20),
        ];
        for (rows, k, n) in shapes {
            let (x, w, start) = (values(rows * k, 8), values(n * k, 9), values(rows * n, 10));
            let packed = pack(&w, n, k);
            let (mut wide, mut narrow) = (start.clone(), start);
            product_onto(Kernel::Avx512, &packed, k, n, &x, rows, &mut wide);
            product_onto(Kernel::Avx2, &packed, k, n, &x, rows, &mut narrow);
            assert_eq!(wide, narrow, "{rows}x{k}x{n}");
        }
    }

    /// `start + x · Wᵀ` summed as the kernels sum: per output, each block of [`KC`]
    /// inputs by fused multiply-adds in input order from zero, the blocks' sums added to
    /// the output in order.
    fn blocked(x: &[f32], w: &[f32], start: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut out = start.to_vec();
        for (i, o) in out.iter_mut().enumerate() {
            let (row, col) = (i / n, i % n);
            for k0 in (0..k).step_by(KC) {
                let block = (k0..k.min(k0 + KC))
                    .fold(0f32, |acc, j| x[row * k + j].mul_add(w[col * k + j], acc));
                *o += block;
            }
        }
        out
    }

    #[test]
    fn the_kernels_sum_in_blocks_in_input_order() {
        // What makes the AVX2 and AVX-512 kernels give the same bits, checked on either:
        // tiles of every height and groups past one (GROUP_TILES), partial halves and
        // panels, more than one block of inputs, a padded-stride copy (1024 inputs).
        let shapes = [
            (1, 3, 1),
            (7, 300, 27),
            (5, 300, 60),
            (13, 600, 47),
            (70, 96, 80),
            (9, 1024, 20),
        ];
        for kernel in own_kernels_here() {
            for (rows, k, n) in shapes {
                let (x, w, start) = (values(rows * k, 8), values(n * k, 9), values(rows * n, 10));
                let packed = pack(&w, n, k);
                let mut out = start.clone();
                product_onto(kernel, &packed, k, n, &x, rows, &mut out);
                assert_eq!(
                    out,
                    blocked(&x, &w, &start, k, n),
                    "{kernel:?} {rows}x{k}x{n}"
                );
            }
        }
    }

    #[test]
    fn the_kernels_write_only_the_panels_columns() {
        let kernels = own_kernels_here();
        // 20 columns (a partial second half: one vector of 4 columns, one of none), 7
        // (one partial vector) and, on AVX-512, 50 (two panels, the second partial);
        // guard values around each row's columns must keep their bits, and the panels'
        // padding holds values that a write past the columns would add.
        for (rows, k, n, ldc) in [(5, 40, 20, 29), (2, 300, 7, 7), (7, 40, 50, 53)] {
            let (x, w) = (values(rows * k, 11), values(n * k, 12));
            let mut packed = pack(&w, n, k);
            for (i, input) in packed.chunks_mut(PANEL).enumerate() {
                // Input i % k of panel i / k: columns from n on are padding.
                let first_column = i / k * PANEL;
                input[n.saturating_sub(first_column).min(PANEL)..].fill(1.0);
            }
            let want = reference(&x, &w, &vec![0.0; rows * n], rows, k, n);
            for &kernel in &kernels {
                if n > PANEL * kernel.most_panels_per_task() {
                    continue;
                }
                let guard = 12345.0f32;
                let mut out = vec![guard; rows * ldc + 9];
                for r in 0..rows {
                    out[r * ldc..][..n].fill(0.0);
                }
                // The AVX2 kernel reads the activations tile by tile.
                let mut tiles = vec![0.0; rows * k];
                copy_tiles(&x, rows, k, &mut tiles);
                let x = if kernel == Kernel::Avx2 { &tiles } else { &x };
                // SAFETY: this CPU runs `kernel` (kernels_here); `x` is laid out for it;
                // `out` holds `rows` rows of `n` initialised floats, `ldc` apart.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    panel_kernel(kernel, x, rows, k, k, &packed, n, out.as_mut_ptr(), ldc)
                };
                for r in 0..rows {
                    let got = &out[r * ldc..][..n];
                    assert!(worst(got, &want[r * n..][..n]) < 1e-4, "{kernel:?} row {r}");
                }
                let untouched = (0..out.len()).filter(|i| i % ldc >= n || i / ldc >= rows);
                for i in untouched {
                    assert_eq!(out[i].to_bits(), guard.to_bits(), "{kernel:?} at {i}");
                }
            }
        }
    }

    #[test]
    fn the_kernel_and_gemm_agree_on_the_same_product() {
        // Large enough for the parallel path.
        let (rows, k, n) = (50, 96, 80);
        let (x, w) = (values(rows * k, 4), values(n * k, 5));
        let packed = pack(&w, n, k);
        let mut kernel = vec![0.5; rows * n];
        matmul_onto(&packed, k, n, &x, rows, &mut kernel);
        let mut by_gemm = vec![0.5; rows * n];
        for p in 0..n.div_ceil(PANEL) {
            let cols = PANEL.min(n - p * PANEL);
            matmul_into(
                Mat::new(&x, rows, k),
                Mat::with_row_stride(&packed[p * k * PANEL..], k, cols, PANEL),
                &mut by_gemm[p * PANEL..],
                n,
                1.0,
                true,
            );
        }
        assert!(worst(&kernel, &by_gemm) < 1e-5);
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_any_batch() {
        // gemm (per panel) chooses its blocking by size; only the kernels promise this.
        let kernels = own_kernels_here();
        if kernels.is_empty() {
            eprintln!("skipped: no AVX-512 or AVX2 here");
        }
        // Up to 4 MB of activations and beyond (where gemm would block differently);
        // rows copied to a padded stride in the batch (2048 inputs), not alone.
        for kernel in kernels {
            for (rows, k, n) in [
                (50, 48, 144),
                (130, 300, 40),
                (700, 1600, 40),
                (40, 2048, 40),
            ] {
                let (x, w) = (values(rows * k, 6), values(n * k, 7));
                let packed = pack(&w, n, k);
                let mut all = vec![0.25; rows * n];
                product_onto(kernel, &packed, k, n, &x, rows, &mut all);
                for r in [0, 7, rows / 2, rows - 1] {
                    let mut one = vec![0.25; n];
                    product_onto(kernel, &packed, k, n, &x[r * k..][..k], 1, &mut one);
                    assert_eq!(one, all[r * n..][..n], "{kernel:?} {rows}x{k}x{n}, row {r}");
                }
            }
        }
    }
}
