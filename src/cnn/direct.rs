//! 3x3 stride-1 "same" convolutions read straight from channel-major `(C, N, H, W)`
//! input on AVX-512, without unfolding a patch matrix.
//!
//! im2col + gemm writes every input value nine times into the patch matrix, then gemm
//! packs that matrix once more before its kernel reads it: at 224 px the unfolding and
//! the packing were a quarter of ResNet18's evaluation forward pass (docs/cnn.md). Here
//! a tile of 48 consecutive output positions x 8 output channels sums over the nine taps
//! and every input channel in 24 registers. For tap `(ky, kx)` the 48 positions read 48
//! consecutive input values shifted by `(ky - 1) * W + (kx - 1)` in each channel's plane;
//! masked loads zero the lanes whose tap falls outside the image (padding), across a row
//! edge or past the last image, so no lane needs a branch.
//!
//! The kernel's gradient (`weight_gradient`) sums over positions instead: `dy` transposed
//! so that 32 output channels are two vectors, times each input value broadcast, read
//! from a copy of the input padded with zeros (no masks).
//!
//! `conv::Conv` uses them for the forward pass (evaluation, and training wherever the
//! weight gradient is direct too or the patch matrix is too large to keep), the input
//! gradient and the weight gradient on images of 4x4 and more; measurements in
//! docs/cnn.md.

use rayon::prelude::*;

use crate::util::SharedOut;

/// Output positions per tile: three AVX-512 vectors.
const TILE_P: usize = 48;
/// Output channels per tile: 3 x 8 accumulators leave registers for the loads.
const TILE_C: usize = 8;
/// Taps of a 3x3 kernel.
const TAPS: usize = 9;

/// Whether [`conv3x3`] runs here for `cout` output channels.
pub(crate) fn available(cout: usize) -> bool {
    cout > 0 && cout.is_multiple_of(TILE_C) && crate::util::has_avx512f()
}

/// The 3x3, stride-1, padding-1 convolution of `x (C, N, H, W)` with `weight (Cout, C, 3,
/// 3)`: `(Cout, N, H, W)`, or `None` where [`available`] is false.
pub(crate) fn conv3x3(
    x: &[f32],
    (c, n, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    cout: usize,
) -> Option<Vec<f32>> {
    let kernel = Kernel {
        weight,
        out_stride: c * TAPS,
        in_stride: TAPS,
        turned: false,
    };
    run(x, (c, n, h, w), kernel, cout)
}

/// The gradient of a 3x3 stride-1 "same" convolution's input, `(C, N, H, W)`, from the
/// gradient of its output `dy (Cout, N, H, W)`: the same kind of convolution, of `dy`
/// by the kernel turned half a turn with its input and output channels swapped (read
/// in place). Replaces a `(C·9) × (N·H·W)` product and its fold (col2im). `None` where
/// [`available`] is false for `c` channels.
pub(crate) fn input_gradient(
    dy: &[f32],
    (cout, n, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    c: usize,
) -> Option<Vec<f32>> {
    let kernel = Kernel {
        weight,
        out_stride: TAPS,
        in_stride: c * TAPS,
        turned: true,
    };
    run(dy, (cout, n, h, w), kernel, c)
}

/// A `(Cout, C, 3, 3)` kernel as the convolution reads it: output channel `o`, input
/// channel `i`, tap `t` at `weight[o * out_stride + i * in_stride + t]`, or tap `8 - t`
/// when `turned`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
struct Kernel<'a> {
    weight: &'a [f32],
    out_stride: usize,
    in_stride: usize,
    turned: bool,
}

/// The convolution of `x (C, N, H, W)` by `kernel` into `cout` channels.
fn run(
    x: &[f32],
    (c, n, h, w): (usize, usize, usize, usize),
    kernel: Kernel,
    cout: usize,
) -> Option<Vec<f32>> {
    if !available(cout) {
        return None;
    }
    let positions = n * h * w;
    assert_eq!(x.len(), c * positions, "direct conv: input size");
    assert_eq!(
        kernel.weight.len(),
        cout * c * TAPS,
        "direct conv: weight size"
    );
    let shape = Shape { c, h, w, positions };
    let out = super::conv::uninit_filled(cout * positions, |out| {
        let out = SharedOut(out.as_mut_ptr().cast::<f32>());
        let blocks = positions.div_ceil(TILE_P);
        let groups = cout / TILE_C;
        let per_task = groups_per_task(blocks, groups);
        let tasks = groups.div_ceil(per_task);
        (0..blocks * tasks).into_par_iter().for_each(|t| {
            let (b, first) = (t / tasks, (t % tasks) * per_task);
            let channels = first..(first + per_task).min(groups);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked AVX-512F; the sizes were checked above; task
            // `t` writes only its block's positions in its channels, which no other task
            // touches, and the tasks together write every element.
            unsafe {
                block(&shape, x, kernel, channels, b * TILE_P, out)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (b, channels, out, kernel, &shape, x);
        });
    });
    Some(out)
}

/// Groups of 8 output channels per parallel task: all of them (each tile's input is
/// read once) unless the image is so small that there would be fewer than 8 tasks per
/// thread (ResNet18's last stage at 64 px has 3 tiles of positions and 64 groups).
fn groups_per_task(blocks: usize, groups: usize) -> usize {
    per_task(groups, blocks, 8)
}

/// How many of `items` one task takes so that, across `others` (tasks split the work
/// both ways), there are about `tasks_per_thread` tasks per thread of rayon's pool.
fn per_task(items: usize, others: usize, tasks_per_thread: usize) -> usize {
    let wanted = tasks_per_thread * rayon::current_num_threads();
    let splits = wanted.div_ceil(others.max(1)).clamp(1, items.max(1));
    items.div_ceil(splits)
}

/// Sizes the kernel needs.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Shape {
    c: usize,
    h: usize,
    w: usize,
    positions: usize,
}

/// For each tap and each of the tile's three vectors: the lanes whose input lies inside
/// the image, and the offset of the tap in the input plane. Lane by lane, stepping the
/// row and column instead of dividing (on small images a tile's work is short, and 432
/// pairs of divisions per tile were a third of it).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn tap_masks(s: &Shape, p0: usize) -> [([u16; 3], isize); TAPS] {
    // Bit `lane` of rows[dy + 1] / cols[dx + 1]: the lane's input row / column at that
    // shift is inside the image.
    let (mut rows, mut cols) = ([0u64; 3], [0u64; 3]);
    let r = p0 % (s.h * s.w);
    let (mut y, mut x) = (r / s.w, r % s.w);
    for lane in 0..TILE_P.min(s.positions.saturating_sub(p0)) {
        for d in 0..3 {
            if (1..=s.h).contains(&(y + d)) {
                rows[d] |= 1 << lane;
            }
            if (1..=s.w).contains(&(x + d)) {
                cols[d] |= 1 << lane;
            }
        }
        x += 1;
        if x == s.w {
            x = 0;
            y += 1;
            if y == s.h {
                y = 0;
            }
        }
    }
    std::array::from_fn(|tap| {
        let (ky, kx) = (tap / 3, tap % 3);
        let lanes = rows[ky] & cols[kx];
        let mask = std::array::from_fn(|v| (lanes >> (16 * v)) as u16);
        (mask, (ky as isize - 1) * s.w as isize + kx as isize - 1)
    })
}

/// The output channels of `groups` (groups of 8) at the 48 positions from `p0`.
///
/// # Safety
/// The CPU must have AVX-512F; `x` holds `s.c * s.positions` floats, `kernel` at least
/// `groups.end * 8` output channels of `s.c` inputs, and `out` as many rows of
/// `s.positions` floats, of which this call alone writes these channels at the tile's
/// positions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block(
    s: &Shape,
    x: &[f32],
    kernel: Kernel,
    groups: std::ops::Range<usize>,
    p0: usize,
    out: SharedOut,
) {
    use std::arch::x86_64::*;
    let masks = tap_masks(s, p0);
    let taps: [usize; TAPS] = std::array::from_fn(|t| if kernel.turned { TAPS - 1 - t } else { t });
    let store: [u16; 3] = std::array::from_fn(|v| {
        let lanes = s.positions.saturating_sub(p0 + v * 16).min(16);
        ((1u32 << lanes) - 1) as u16
    });
    for group in groups {
        let mut acc = [[_mm512_setzero_ps(); TILE_C]; 3];
        let rows: [*const f32; TILE_C] = std::array::from_fn(|j| {
            kernel
                .weight
                .as_ptr()
                .wrapping_add((group * TILE_C + j) * kernel.out_stride)
        });
        // Input channel outer, taps inner: the nine taps read the same few lines of
        // one plane, and each output channel's nine weights for it are adjacent.
        for ci in 0..s.c {
            let src = x.as_ptr().wrapping_add(ci * s.positions + p0);
            let wi = ci * kernel.in_stride;
            for (&(mask, offset), &t) in masks.iter().zip(&taps) {
                // Lanes outside the image are masked off, so their addresses (before
                // the plane or past its end) are never read; wrapping arithmetic
                // forms them.
                let base = src.wrapping_offset(offset);
                let a = [
                    _mm512_maskz_loadu_ps(mask[0], base),
                    _mm512_maskz_loadu_ps(mask[1], base.wrapping_add(16)),
                    _mm512_maskz_loadu_ps(mask[2], base.wrapping_add(32)),
                ];
                for (j, row) in rows.iter().enumerate() {
                    let b = _mm512_set1_ps(*row.add(wi + t));
                    for v in 0..3 {
                        acc[v][j] = _mm512_fmadd_ps(a[v], b, acc[v][j]);
                    }
                }
            }
        }
        for (v, row) in acc.iter().enumerate() {
            for (j, &sum) in row.iter().enumerate() {
                let at = (group * TILE_C + j) * s.positions + p0 + v * 16;
                _mm512_mask_storeu_ps(out.at(at), store[v], sum);
            }
        }
    }
}

/// Output channels per weight-gradient tile: two AVX-512 vectors, so that 2 x 9
/// accumulators, the two vectors of `dy` and the broadcast input value fit in registers.
const GRAD_TILE_O: usize = 32;
/// Positions per block of the weight gradient: the block's 32 output channels of the
/// transposed `dy` (128 KiB) stay in L2 while every input channel of a task reads them.
const GRAD_BLOCK_POSITIONS: usize = 1024;

/// Whether [`weight_gradient`] runs here for `cout` output channels.
pub(crate) fn weight_gradient_available(cout: usize) -> bool {
    cout > 0 && cout.is_multiple_of(GRAD_TILE_O) && crate::util::has_avx512f()
}

/// The gradient of a 3x3 stride-1 "same" convolution's kernel, `(Cout, C, 3, 3)`, from
/// its input `x (C, N, H, W)` and the gradient of its output `dy (Cout, N, H, W)`:
/// `dW[o, i, ky, kx] = Σ dy[o, n, y, x] · x[i, n, y + ky - 1, x + kx - 1]`. Replaces the
/// `(C·9) × (N·H·W)` patch matrix and its product with `dyᵀ`: the kernel reads `x` once
/// zero-padded by one pixel on every side (no tap needs a mask or a branch) and `dy`
/// transposed, so that 32 output channels are two vectors. `None` where
/// [`weight_gradient_available`] is false.
pub(crate) fn weight_gradient(
    dy: &[f32],
    x: &[f32],
    (c, n, h, w): (usize, usize, usize, usize),
    cout: usize,
) -> Option<Vec<f32>> {
    if !weight_gradient_available(cout) {
        return None;
    }
    let positions = n * h * w;
    assert_eq!(x.len(), c * positions, "direct weight gradient: input size");
    assert_eq!(
        dy.len(),
        cout * positions,
        "direct weight gradient: gradient size"
    );
    if positions == 0 || c == 0 {
        return Some(vec![0f32; cout * c * TAPS]);
    }
    let dyt = crate::util::transpose(dy, cout, positions);
    let padded = pad_planes(x, (c, n, h, w));
    let s = GradShape { n, h, w, cout };
    let tiles = cout / GRAD_TILE_O;
    let per_task = channels_per_task(tiles, c);
    let chunks = c.div_ceil(per_task);
    // Each task sums its tile's 32 output channels for its input channels in a buffer of
    // its own, laid out as the kernel reads them, and writes them into the `(Cout, C, 3,
    // 3)` result itself: 32 contiguous runs, where a shared buffer in the kernel's order
    // needed a transpose of the whole gradient afterwards (0.5 ms of a 256-channel
    // layer's 3.3).
    let row = c * TAPS;
    Some(super::conv::uninit_filled(cout * row, |dw| {
        let out = SharedOut(dw.as_mut_ptr().cast::<f32>());
        (0..tiles * chunks).into_par_iter().for_each(|t| {
            let (tile, first) = (t / chunks, (t % chunks) * per_task);
            let channels = first..(first + per_task).min(c);
            let o0 = tile * GRAD_TILE_O;
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut sums = vec![0f32; channels.len() * TAPS * GRAD_TILE_O];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `weight_gradient_available` checked AVX-512F; `dyt` and `padded`
            // have the sizes `grad_tile` reads (built above from checked sizes), and
            // `sums` holds `channels.len() · 9` rows of 32.
            unsafe {
                grad_tile(&s, &dyt, &padded, o0, channels.clone(), &mut sums)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (&s, &dyt, &padded);
            for o in 0..GRAD_TILE_O {
                // SAFETY: row `o0 + o` of the result from column `first · 9`, for this
                // task's channels: inside `dw`, and written by this task alone (tasks
                // differ in their tile or their channels).
                let dst = out.at((o0 + o) * row + first * TAPS);
                for (j, tap) in sums.chunks_exact(GRAD_TILE_O).enumerate() {
                    unsafe { dst.add(j).write(tap[o]) };
                }
            }
        });
    }))
}

/// `x (C, N, H, W)` with a border of zeros one pixel wide round each image plane:
/// `(C, N, H + 2, W + 2)`. Written once, border and all, into uninitialised memory.
fn pad_planes(x: &[f32], (c, n, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
    use super::conv::{copy_into, write_all};
    let (plane, pw) = (h * w, w + 2);
    let padded_plane = (h + 2) * pw;
    super::conv::uninit_filled(c * n * padded_plane, |out| {
        if plane == 0 {
            return write_all(out, 0.0);
        }
        out.par_chunks_mut(padded_plane)
            .zip(x.par_chunks(plane))
            // Small planes (4x4 at 64 px) are too little work for a task each.
            .with_min_len(PAD_PLANES_PER_TASK_MIN)
            .for_each(|(dst, src)| {
                write_all(&mut dst[..pw], 0.0);
                write_all(&mut dst[(h + 1) * pw..], 0.0);
                for (y, line) in src.chunks_exact(w).enumerate() {
                    let padded = &mut dst[(y + 1) * pw..][..pw];
                    padded[0].write(0.0);
                    padded[w + 1].write(0.0);
                    copy_into(&mut padded[1..=w], line);
                }
            });
    })
}

/// The fewest image planes one task pads.
const PAD_PLANES_PER_TASK_MIN: usize = 64;

/// Input channels per weight-gradient task: as many as leave 4 tasks per thread across
/// the tiles of output channels (each task reads the transposed `dy`
/// of its tile once per block, for all its channels).
fn channels_per_task(tiles: usize, c: usize) -> usize {
    per_task(c, tiles, 4)
}

/// Sizes the weight-gradient kernel needs.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct GradShape {
    n: usize,
    h: usize,
    w: usize,
    cout: usize,
}

/// Adds to `sums` (row `(i - channels.start)·9 + tap` of 32 floats) the weight gradient
/// of output channels `o0..o0 + 32` for input `channels`, summed over every position.
///
/// # Safety
/// The CPU must have AVX-512F; `dyt` holds `N·H·W` rows of `s.cout` floats, `padded`
/// the padded planes `(N, H + 2, W + 2)` of every input channel, `sums`
/// `channels.len() · 9` rows of 32 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_tile(
    s: &GradShape,
    dyt: &[f32],
    padded: &[f32],
    o0: usize,
    channels: std::ops::Range<usize>,
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (h, w, pw) = (s.h, s.w, s.w + 2);
    let rows = s.n * h;
    let rows_per_block = (GRAD_BLOCK_POSITIONS / w).max(1);
    let padded_plane = s.n * (h + 2) * pw;
    for first_row in (0..rows).step_by(rows_per_block) {
        let block = first_row..(first_row + rows_per_block).min(rows);
        for i in channels.clone() {
            let row = sums
                .as_mut_ptr()
                .add((i - channels.start) * TAPS * GRAD_TILE_O);
            let at = |t: usize, v: usize| row.add(t * GRAD_TILE_O + v * 16);
            let mut acc: [[__m512; TAPS]; 2] =
                std::array::from_fn(|v| std::array::from_fn(|t| _mm512_loadu_ps(at(t, v))));
            let plane = padded.as_ptr().add(i * padded_plane);
            for r in block.clone() {
                let (img, y) = (r / h, r % h);
                // Padded row y is the row above output row y: tap (ky, kx) of output
                // column x reads padded row y + ky, column x + kx.
                let top = plane.add((img * (h + 2) + y) * pw);
                let grads = dyt.as_ptr().add(r * w * s.cout + o0);
                for x in 0..w {
                    let g = grads.add(x * s.cout);
                    let d = [_mm512_loadu_ps(g), _mm512_loadu_ps(g.add(16))];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let b = _mm512_set1_ps(*top.add(ky * pw + x + kx));
                            for v in 0..2 {
                                acc[v][ky * 3 + kx] = _mm512_fmadd_ps(d[v], b, acc[v][ky * 3 + kx]);
                            }
                        }
                    }
                }
            }
            for (v, taps) in acc.iter().enumerate() {
                for (t, &sum) in taps.iter().enumerate() {
                    _mm512_storeu_ps(at(t, v), sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        crate::cnn::conv::tests::random(&[len], seed)
    }

    /// The convolution summed directly, in f64.
    fn reference(
        x: &[f32],
        (c, n, h, w): (usize, usize, usize, usize),
        k: &[f32],
        cout: usize,
    ) -> Vec<f64> {
        let mut out = vec![0f64; cout * n * h * w];
        for co in 0..cout {
            for img in 0..n {
                for y in 0..h {
                    for xx in 0..w {
                        let mut sum = 0f64;
                        for ci in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (y + ky, xx + kx);
                                    if iy < 1 || ix < 1 || iy > h || ix > w {
                                        continue;
                                    }
                                    let v = x[((ci * n + img) * h + iy - 1) * w + ix - 1];
                                    sum += v as f64 * k[((co * c + ci) * 3 + ky) * 3 + kx] as f64;
                                }
                            }
                        }
                        out[((co * n + img) * h + y) * w + xx] = sum;
                    }
                }
            }
        }
        out
    }

    /// Every element of `got` within `tolerance` of `want`'s.
    fn assert_close(case: usize, got: &[f32], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "case {case}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < tolerance,
                "case {case} element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_direct_sum_on_ragged_shapes() {
        if !available(8) {
            return;
        }
        // Positions not a multiple of the tile, rows shorter and longer than a vector,
        // single-pixel images, several images per tile.
        for (case, &(c, n, h, w, cout)) in [
            (3, 2, 5, 7, 8),
            (5, 1, 1, 1, 16),
            (4, 3, 9, 20, 8),
            (2, 2, 17, 3, 24),
            (16, 1, 8, 8, 8),
        ]
        .iter()
        .enumerate()
        {
            let dims = (c, n, h, w);
            let x = random(c * n * h * w, case as u64);
            let k = random(cout * c * 9, 100 + case as u64);
            let got = conv3x3(&x, dims, &k, cout).unwrap();
            assert_close(case, &got, &reference(&x, dims, &k, cout), 1e-4);
        }
    }

    #[test]
    fn input_gradient_is_the_adjoint_of_the_convolution() {
        if !available(8) {
            return;
        }
        // <conv(x), dy> = <x, input_gradient(dy)> for any x and dy.
        let (c, n, h, w, cout) = (8, 2, 5, 9, 16);
        let x = random(c * n * h * w, 1);
        let dy = random(cout * n * h * w, 2);
        let k = random(cout * c * 9, 3);
        let y = reference(&x, (c, n, h, w), &k, cout);
        let dx = input_gradient(&dy, (cout, n, h, w), &k, c).unwrap();
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        assert!(input_gradient(&dy, (cout, n, h, w), &random(cout * 12 * 9, 4), 12).is_none());
    }

    /// The kernel's gradient summed directly, in f64, laid out `(Cout, C, 3, 3)`.
    fn reference_weight_gradient(
        dy: &[f32],
        x: &[f32],
        (c, n, h, w): (usize, usize, usize, usize),
        cout: usize,
    ) -> Vec<f64> {
        let mut dw = vec![0f64; cout * c * TAPS];
        for co in 0..cout {
            for ci in 0..c {
                for tap in 0..TAPS {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let mut sum = 0f64;
                    for img in 0..n {
                        for y in 0..h {
                            for xx in 0..w {
                                let (iy, ix) = (y + ky, xx + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > w {
                                    continue;
                                }
                                let g = dy[((co * n + img) * h + y) * w + xx] as f64;
                                sum += g * x[((ci * n + img) * h + iy - 1) * w + ix - 1] as f64;
                            }
                        }
                    }
                    dw[(co * c + ci) * TAPS + tap] = sum;
                }
            }
        }
        dw
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum_on_ragged_shapes() {
        if !weight_gradient_available(32) {
            return;
        }
        // Single-pixel and single-row images, rows longer than a block of positions
        // (1100 > 1024), several blocks, channel counts that split unevenly over tasks.
        for (case, &(c, n, h, w, cout)) in [
            (3, 2, 5, 7, 32),
            (5, 1, 1, 1, 64),
            (7, 3, 9, 20, 32),
            (2, 1, 2, 1100, 32),
            (16, 4, 16, 16, 96),
        ]
        .iter()
        .enumerate()
        {
            let dims = (c, n, h, w);
            let x = random(c * n * h * w, 200 + case as u64);
            let dy = random(cout * n * h * w, 300 + case as u64);
            let got = weight_gradient(&dy, &x, dims, cout).unwrap();
            let want = reference_weight_gradient(&dy, &x, dims, cout);
            // Sums over every position: f32 rounding grows with their square root.
            let tolerance = 1e-5 * ((n * h * w) as f64).sqrt().max(1.0);
            assert_close(case, &got, &want, tolerance);
        }
    }

    #[test]
    fn weight_gradient_declines_output_channels_off_the_tile() {
        assert!(!weight_gradient_available(16));
        assert!(!weight_gradient_available(0));
        assert_eq!(
            weight_gradient(&[0.0; 48], &[0.0; 9], (1, 1, 3, 3), 16),
            None
        );
    }

    #[test]
    fn declines_channel_counts_off_the_tile() {
        assert!(!available(12));
        assert!(!available(0));
        assert_eq!(conv3x3(&[0.0; 9], (1, 1, 3, 3), &[0.0; 9 * 12], 12), None);
    }
}
