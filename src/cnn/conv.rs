//! 2-D convolution on channel-major `(C, N, H, W)` activations, as im2col and one gemm
//! each way.
//!
//! candle's own conv2d computes the input gradient with a direct `conv_transpose2d` loop
//! and the kernel gradient as a convolution with a kernel the size of the image, which
//! makes ResNet training on the CPU about ten times slower than PyTorch. Here the network
//! keeps its activations channel-major (`C, N, H, W`): then the unfolded patches form one
//! `(C·k·k) × (N·Ho·Wo)` matrix, the output of `W · cols` is already the next layer's
//! input, and each gradient is one gemm call: `Wᵀ · dY` folded back with col2im, and
//! `cols · dYᵀ` (the transpose of `dW`, transposed back: the order in which gemm packs
//! the large patch matrix cheaply; for a batch of at most
//! [`KERNEL_LAYOUT_MAX_POSITIONS`] positions `dY · colsᵀ`, no transpose). Batch norm
//! over channel-major data reads each channel as one contiguous run. 3x3 stride-1 convolutions skip the patch matrix on
//! AVX-512 CPUs ([`super::direct`]) where that measured faster.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of one convolution of channel-major input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    /// From the input's dims `(C, N, H, W)` and the kernel.
    fn new(
        dims: (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (c, n, h, w) = dims;
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 || k == 0 {
            candle_core::bail!("conv: input {h}x{w} too small for kernel {k} with padding {pad}");
        }
        Ok(Self {
            c,
            n,
            h,
            w,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// Rows of the unfolded matrix: `C * k * k`, ordered (c, ky, kx) like the kernel.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the unfolded matrix: one per output position, `N * Ho * Wo`.
    fn cols(&self) -> usize {
        self.n * self.ho * self.wo
    }

    /// Stride 1 with the output the size of the input (3x3 with padding 1): each tap is
    /// the whole image shifted.
    fn is_same_stride_1(&self) -> bool {
        self.stride == 1 && self.ho == self.h && self.wo == self.w
    }

    /// A 1x1 convolution with stride 1 reads its input as the unfolded matrix itself.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns `ox` whose tap `kx` falls inside a row of the image.
    fn valid_ox(&self, kx: usize) -> std::ops::Range<usize> {
        // ox * stride + kx - pad must lie in [0, w).
        let lo = self.pad.saturating_sub(kx).div_ceil(self.stride);
        let hi = (self.w + self.pad)
            .saturating_sub(kx)
            .div_ceil(self.stride)
            .min(self.wo);
        lo..hi.max(lo)
    }

    /// The input row that output row `oy` reads at tap `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|y| *y < self.h)
    }

    /// For tap `(ky, kx)`: call `f(n, oy, y, ox_range)` for each image `n` and output
    /// row `oy` whose input row `y` is inside the image.
    fn for_each_row(
        &self,
        ky: usize,
        kx: usize,
        mut f: impl FnMut(usize, usize, usize, std::ops::Range<usize>),
    ) {
        let ox = self.valid_ox(kx);
        for n in 0..self.n {
            for oy in 0..self.ho {
                if let Some(y) = self.input_row(oy, ky) {
                    f(n, oy, y, ox.clone());
                }
            }
        }
    }

    /// Input column of output column `ox` at tap `kx` (inside `valid_ox(kx)`).
    fn x_of(&self, ox: usize, kx: usize) -> usize {
        ox * self.stride + kx - self.pad
    }
}

/// Unfold channel-major `x` into the `(C·k·k) × (N·Ho·Wo)` patch matrix.
fn im2col(g: &Geometry, x: &[f32]) -> Vec<f32> {
    im2col_images(g, x, 0..g.n)
}

/// The columns of `images` in the patch matrix of `x`: `(C·k·k) × (len·Ho·Wo)`.
fn im2col_images(g: &Geometry, x: &[f32], images: std::ops::Range<usize>) -> Vec<f32> {
    let (plane, out_plane) = (g.h * g.w, g.ho * g.wo);
    let m = images.len() * out_plane;
    if m == 0 || plane == 0 {
        return vec![0f32; g.rows() * m];
    }
    scratch_filled(g.rows() * m, |cols| {
        cols.par_chunks_mut(m).enumerate().for_each(|(j, row)| {
            let (c, ky, kx) = (j / (g.k * g.k), (j / g.k) % g.k, j % g.k);
            for (i, n) in images.clone().enumerate() {
                let src = &x[(c * g.n + n) * plane..][..plane];
                let dst = &mut row[i * out_plane..][..out_plane];
                if g.is_same_stride_1() {
                    shift_plane(g, ky, kx, src, dst);
                } else {
                    gather_plane(g, ky, kx, src, dst);
                }
            }
        });
    })
}

/// A vector of `len` floats, every one of which `fill` must write: large unfolded
/// matrices and products skip zeroing memory that is overwritten at once (a pass over
/// hundreds of MB per training step at 128 px).
pub(crate) fn uninit_filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    filled(scratch::uninit(Vec::with_capacity(len), len), fill)
}

/// As `uninit_filled`, for a scratch buffer that goes back to the pool after use
/// (`scratch::give`).
fn scratch_filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    filled(scratch::take(len), fill)
}

fn filled(mut v: Vec<MaybeUninit<f32>>, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    // Unit tests poison the buffer, so that an element `fill` forgets shows up as NaN.
    #[cfg(test)]
    v.iter_mut().for_each(|e| {
        e.write(f32::NAN);
    });
    fill(&mut v);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `fill` wrote every element (the callers' contract, checked by the unit
    // tests on poisoned buffers); MaybeUninit<f32> has f32's layout.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// Large scratch buffers (patch matrices and their gradients) reused from one training
/// step to the next: glibc maps every block over 32 MiB afresh and faulting in a few
/// hundred MB per step cost more than filling them (a tenth of a step at 128 px).
mod scratch {
    use std::mem::MaybeUninit;
    use std::sync::Mutex;

    /// Smaller buffers come from the heap quickly enough.
    const MIN_LEN: usize = 4 << 20;
    /// At most this many buffers wait in the pool (a step has at most two large ones in
    /// use at once: a patch matrix and the gradient of another).
    const MAX_POOLED: usize = 2;

    static POOL: Mutex<Vec<Vec<MaybeUninit<f32>>>> = Mutex::new(Vec::new());

    /// A vector of `len` uninitialised floats, from the pool when one is large enough
    /// (the smallest such). The layers of a network unfold patch matrices of several
    /// sizes; matching only equal sizes left ResNet18's evaluation at 128 px mapping,
    /// faulting in and unmapping seven 19-38 MB buffers per forward pass.
    pub fn take(len: usize) -> Vec<MaybeUninit<f32>> {
        let pooled = (len >= MIN_LEN)
            .then(|| POOL.lock().ok())
            .flatten()
            .and_then(|mut pool| {
                let at = smallest_fitting(&pool, len)?;
                Some(pool.swap_remove(at))
            });
        uninit(pooled.unwrap_or_else(|| Vec::with_capacity(len)), len)
    }

    /// `v` (empty) grown to `len` uninitialised floats, which costs nothing.
    pub fn uninit(mut v: Vec<MaybeUninit<f32>>, len: usize) -> Vec<MaybeUninit<f32>> {
        v.resize_with(len, MaybeUninit::uninit);
        v
    }

    /// Hand a buffer back for reuse (or free it).
    pub fn give(v: Vec<f32>) {
        if v.capacity() < MIN_LEN {
            return;
        }
        let mut v = std::mem::ManuallyDrop::new(v);
        // SAFETY: same allocation, f32 and MaybeUninit<f32> share a layout.
        let v = unsafe {
            Vec::from_raw_parts(v.as_mut_ptr().cast::<MaybeUninit<f32>>(), 0, v.capacity())
        };
        if let Ok(mut pool) = POOL.lock() {
            keep_largest(&mut pool, v);
        }
    }

    /// The index of the smallest buffer in `pool` that holds `len` floats.
    fn smallest_fitting(pool: &[Vec<MaybeUninit<f32>>], len: usize) -> Option<usize> {
        let fitting = pool.iter().enumerate().filter(|(_, b)| b.capacity() >= len);
        fitting.min_by_key(|(_, b)| b.capacity()).map(|(at, _)| at)
    }

    /// Add `v` to `pool`, or when it is full put it in place of a smaller buffer: the
    /// pool keeps the largest, which serve every smaller request.
    fn keep_largest(pool: &mut Vec<Vec<MaybeUninit<f32>>>, v: Vec<MaybeUninit<f32>>) {
        if pool.len() < MAX_POOLED {
            pool.push(v);
            return;
        }
        let smallest = pool.iter_mut().min_by_key(|b| b.capacity());
        if let Some(smallest) = smallest.filter(|b| b.capacity() < v.capacity()) {
            *smallest = v;
        }
    }

    /// Free every pooled buffer.
    pub fn release() {
        if let Ok(mut pool) = POOL.lock() {
            pool.clear();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn buffers(capacities: &[usize]) -> Vec<Vec<MaybeUninit<f32>>> {
            capacities.iter().map(|&c| Vec::with_capacity(c)).collect()
        }

        fn capacities(pool: &[Vec<MaybeUninit<f32>>]) -> Vec<usize> {
            pool.iter().map(Vec::capacity).collect()
        }

        #[test]
        fn a_request_takes_the_smallest_buffer_that_holds_it() {
            let pool = buffers(&[300, 100, 200]);
            assert_eq!(smallest_fitting(&pool, 150), Some(2));
            assert_eq!(smallest_fitting(&pool, 100), Some(1));
            assert_eq!(smallest_fitting(&pool, 300), Some(0));
            assert_eq!(smallest_fitting(&pool, 301), None);
        }

        #[test]
        fn a_full_pool_keeps_its_largest_buffers() {
            let mut pool = buffers(&[]);
            for c in [100, 300, 200, 50, 400] {
                keep_largest(&mut pool, Vec::with_capacity(c));
            }
            let mut kept = capacities(&pool);
            kept.sort_unstable();
            assert_eq!(kept, [300, 400]);
        }
    }
}

/// Free the convolution's pooled scratch memory (after training).
pub fn release_scratch() {
    scratch::release();
}

/// Writes `value` into every element of `dst`.
pub(crate) fn write_all(dst: &mut [MaybeUninit<f32>], value: f32) {
    for d in dst {
        d.write(value);
    }
}

/// Writes `src` into the start of `dst`.
pub(crate) fn copy_into(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

/// One image plane shifted by tap `(ky, kx)` of a stride-1 "same" convolution: one
/// long copy (the rows are contiguous in both), zeros where the tap falls outside the
/// image, including the entries that the long copy wrapped round a row edge.
fn shift_plane(g: &Geometry, ky: usize, kx: usize, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let (h, w) = (g.h, g.w);
    let (dy, dx) = (ky as isize - g.pad as isize, kx as isize - g.pad as isize);
    // Output rows and columns whose tap lands inside the image; empty (lo >= hi) when the
    // padding exceeds the image.
    let (oy0, oy1) = (
        (-dy).clamp(0, h as isize),
        (h as isize - dy).clamp(0, h as isize),
    );
    let (lo, hi) = (
        (-dx).clamp(0, w as isize),
        (w as isize - dx).clamp(0, w as isize),
    );
    let (oy0, oy1, lo, hi) = (oy0 as usize, oy1 as usize, lo as usize, hi as usize);
    if oy0 >= oy1 || lo >= hi {
        write_all(dst, 0.0);
        return;
    }
    let (start, end) = (oy0 * w + lo, (oy1 - 1) * w + hi);
    let from = (start as isize + dy * w as isize + dx) as usize;
    write_all(&mut dst[..start], 0.0);
    copy_into(&mut dst[start..end], &src[from..from + (end - start)]);
    write_all(&mut dst[end..], 0.0);
    for r in oy0..oy1 - 1 {
        write_all(&mut dst[r * w + hi..(r + 1) * w + lo], 0.0);
    }
}

/// One image plane's values under tap `(ky, kx)` at every output position, zero outside
/// the image (any stride).
fn gather_plane(g: &Geometry, ky: usize, kx: usize, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let ox = g.valid_ox(kx);
    for (oy, out) in dst.chunks_exact_mut(g.wo).enumerate() {
        match g.input_row(oy, ky) {
            Some(y) if !ox.is_empty() => {
                let row = &src[y * g.w + g.x_of(ox.start, kx)..(y + 1) * g.w];
                write_all(&mut out[..ox.start], 0.0);
                copy_strided(&mut out[ox.clone()], row, g.stride);
                write_all(&mut out[ox.end..], 0.0);
            }
            _ => write_all(out, 0.0),
        }
    }
}

/// `dst[i] = src[i * stride]` for every `i` of `dst` (`src` holds at least
/// `(dst.len() - 1) * stride + 1` values). Stride 2, ResNet's downsampling, as pairs:
/// LLVM vectorises that form, where `step_by` copied one value at a time.
fn copy_strided(dst: &mut [MaybeUninit<f32>], src: &[f32], stride: usize) {
    if stride == 2 {
        let pairs = dst.len().min(src.len() / 2);
        for (d, pair) in dst[..pairs].iter_mut().zip(src.chunks_exact(2)) {
            d.write(pair[0]);
        }
        if let (Some(d), Some(s)) = (dst.get_mut(pairs), src.get(pairs * 2)) {
            d.write(*s);
        }
        return;
    }
    for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
        d.write(*s);
    }
}

/// Fold a `(C·k·k) × (N·Ho·Wo)` matrix back onto channel-major `(C, N, H, W)`,
/// summing where patches overlap (the adjoint of `im2col`).
fn col2im(g: &Geometry, cols: &[f32]) -> Vec<f32> {
    let (m, plane) = (g.cols(), g.n * g.h * g.w);
    let mut out = vec![0f32; g.c * plane];
    if m == 0 || plane == 0 {
        return out;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(c, img)| {
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = &cols[((c * g.k + ky) * g.k + kx) * m..][..m];
                g.for_each_row(ky, kx, |n, oy, y, ox| {
                    let src = &row[(n * g.ho + oy) * g.wo..][..g.wo];
                    let dst = &mut img[(n * g.h + y) * g.w..][..g.w];
                    if ox.is_empty() {
                        return;
                    }
                    if g.stride == 1 {
                        let at = g.x_of(ox.start, kx);
                        for (d, s) in dst[at..at + ox.len()].iter_mut().zip(&src[ox]) {
                            *d += s;
                        }
                    } else {
                        for o in ox {
                            dst[g.x_of(o, kx)] += src[o];
                        }
                    }
                });
            }
        }
    });
    out
}

/// A strided view of a matrix in a slice: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows × cols` matrix in `data`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::with_row_stride(data, rows, cols, cols)
    }

    /// `rows × cols` with rows `rs` apart in `data` (a block of columns of a wider
    /// row-major matrix, such as one attention head's).
    pub(crate) fn with_row_stride(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `range` of the view (a block of the inner dimension of `self · b`).
    fn columns(self, range: std::ops::Range<usize>) -> Self {
        debug_assert!(range.start <= range.end && range.end <= self.cols);
        Self {
            data: &self.data[(range.start * self.cs).min(self.data.len())..],
            cols: range.len(),
            ..self
        }
    }

    /// Rows `range` of the view.
    fn rows(self, range: std::ops::Range<usize>) -> Self {
        self.t().columns(range).t()
    }

    /// Whether every element the view names lies in its slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `a · b` into a new row-major matrix, on gemm's AVX-512/AVX2 kernels and rayon. A
/// `scratch` result comes from the pool (for one used once, then recycled).
pub(crate) fn matmul(a: Mat, b: Mat, scratch: bool) -> Vec<f32> {
    let len = a.rows * b.cols;
    if len == 0 || a.cols == 0 {
        return vec![0f32; len];
    }
    // SAFETY: `dst` is exactly the m·n row-major matrix gemm_at asserts; it writes all of
    // it without reading it.
    let fill = |dst: &mut [MaybeUninit<f32>]| unsafe {
        let out = Out::new(dst.as_mut_ptr().cast::<f32>(), dst.len(), b.cols);
        gemm_at(a, b, out, Product::PARALLEL)
    };
    if scratch {
        scratch_filled(len, fill)
    } else {
        uninit_filled(len, fill)
    }
}

/// Products of at most this many rows are split in column blocks (see
/// `matmul_short_wide`).
const SHORT_ROWS: usize = 128;
/// Columns per block of a short, wide product.
const COLUMN_BLOCK: usize = 256;

/// `a · b` into a new row-major matrix, for a product of few rows and many columns (a
/// convolution's forward pass with few output channels over a whole batch: ResNet18's
/// stem at 64 px is `64 × 147 × 32768`). gemm splits such a product's columns between
/// its threads up front; blocks of `COLUMN_BLOCK` columns, one single-threaded product
/// each, go to whichever core is free, which gains most when another process slows a
/// core (the stem on 2 busy cores: 82-92 GFLOP/s threaded, 113-125 in blocks; quiet:
/// 139-141 and 164-166; `examples/gemm_shapes.rs`). Each output still sums its inner
/// dimension in gemm's order for one thread.
pub(crate) fn matmul_short_wide(a: Mat, b: Mat) -> Vec<f32> {
    let (m, n) = (a.rows, b.cols);
    if m == 0 || a.cols == 0 {
        return matmul(a, b, false);
    }
    uninit_filled(m * n, |dst| {
        // SAFETY: `dst` is exactly the m × n row-major output, written whole.
        unsafe { short_wide_at(a, b, Out::new(dst.as_mut_ptr().cast::<f32>(), m * n, n)) }
    })
}

/// Writes `a · b` to `dst` as `matmul_short_wide` computes it.
///
/// # Safety
/// `dst` must be valid for writes of its `len` floats, and no other thread may touch the
/// elements this product writes while it runs.
unsafe fn short_wide_at(a: Mat, b: Mat, dst: Out) {
    let (m, n) = (a.rows, b.cols);
    // Fewer than 8 blocks would leave threads idle at the end of the product.
    if m > SHORT_ROWS || n < 8 * COLUMN_BLOCK {
        // SAFETY: the caller's contract.
        return unsafe { gemm_at(a, b, dst, Product::PARALLEL) };
    }
    let (out, len, rs) = (crate::util::SharedOut(dst.ptr), dst.len, dst.rs);
    (0..n.div_ceil(COLUMN_BLOCK))
        .into_par_iter()
        .for_each(|block| {
            let cols = block * COLUMN_BLOCK..((block + 1) * COLUMN_BLOCK).min(n);
            let start = cols.start;
            let product = Product {
                parallel: false,
                ..Product::PARALLEL
            };
            // SAFETY: each block writes only its own columns of the output (the
            // caller's), which gemm_at asserts lie within it; nothing reads them.
            unsafe {
                let dst = Out::new(out.at(start), len - start, rs);
                gemm_at(a, b.columns(cols), dst, product)
            }
        });
}

/// Inner dimensions shorter than twice this go to one threaded gemm call; longer ones
/// are split in equal blocks at least this long (see `matmul_long_inner`).
const INNER_BLOCK: usize = 2048;
/// Results larger than this many floats are left to gemm's own threading, which spreads
/// their many rows and columns well (VGG16's `4608 × 512` weight gradients).
const SPLIT_RESULT_MAX: usize = 1 << 20;

/// The length of the inner blocks `matmul_long_inner` splits `k` into for a result of
/// `len` floats: equal blocks of at least `INNER_BLOCK`, or `None` to leave the product
/// whole. A function of the shapes alone, so the sums' order is too.
fn inner_block(k: usize, len: usize) -> Option<usize> {
    if k < 2 * INNER_BLOCK || len == 0 || len > SPLIT_RESULT_MAX {
        return None;
    }
    Some(k.div_ceil(k / INNER_BLOCK))
}

/// `a · b` into a new row-major matrix, for a small result of a long inner dimension (a
/// convolution's weight gradient sums over every output position of the batch: the stem
/// of ResNet18 at 64 px is `147 × 32768 × 64`). gemm threads such a product over the few
/// rows and columns of its result, at 40-46% of its speed for the stem on 2 cores
/// (`examples/gemm_shapes.rs`); here each block of the inner dimension (`inner_block`)
/// is its own product, single-threaded unless there are fewer blocks than threads, and
/// the partial results are summed in block order. gemm never splits an inner dimension
/// between threads, so the result does not depend on the number of threads.
pub(crate) fn matmul_long_inner(a: Mat, b: Mat) -> Vec<f32> {
    let (len, k) = (a.rows * b.cols, a.cols);
    let Some(block) = inner_block(k, len) else {
        return matmul(a, b, false);
    };
    let blocks = k.div_ceil(block);
    let product = Product {
        parallel: blocks < rayon::current_num_threads(),
        ..Product::PARALLEL
    };
    let mut partial = uninit_filled(blocks * len, |dst| {
        dst.par_chunks_mut(len).enumerate().for_each(|(i, out)| {
            let inner = i * block..((i + 1) * block).min(k);
            let out = Out::new(out.as_mut_ptr().cast::<f32>(), len, b.cols);
            // SAFETY: `out` is this block's own `len` floats, which gemm_at overwrites
            // (no accumulate) without reading.
            unsafe { gemm_at(a.columns(inner.clone()), b.rows(inner), out, product) }
        });
    });
    let (sum, rest) = partial.split_at_mut(len);
    // Chunks of the result summed in parallel, each over the blocks in order.
    const SUM_CHUNK: usize = 4096;
    sum.par_chunks_mut(SUM_CHUNK)
        .enumerate()
        .for_each(|(c, sum)| {
            for block in rest.chunks_exact(len) {
                for (s, p) in sum.iter_mut().zip(&block[c * SUM_CHUNK..]) {
                    *s += p;
                }
            }
        });
    partial.truncate(len);
    partial.shrink_to_fit();
    partial
}

/// `dst += a · b`, `dst` a row-major matrix of `a.rows × b.cols` (a dense layer's product
/// onto its bias).
pub(crate) fn matmul_add(a: Mat, b: Mat, dst: &mut [f32]) {
    assert_eq!(dst.len(), a.rows * b.cols, "matmul_add: output size");
    let out = Out::new(dst.as_mut_ptr(), dst.len(), b.cols);
    let product = Product {
        accumulate: true,
        ..Product::PARALLEL
    };
    // SAFETY: `dst` is initialised and exactly m·n long.
    unsafe { gemm_at(a, b, out, product) }
}

/// `dst = scale · a · b`, or `dst += scale · a · b` with `accumulate`, on one thread
/// (for small products inside a parallel loop); `dst` holds `a.rows × b.cols` with rows
/// `dst_rs` apart.
pub(crate) fn matmul_into(
    a: Mat,
    b: Mat,
    dst: &mut [f32],
    dst_rs: usize,
    scale: f32,
    accumulate: bool,
) {
    let out = Out::new(dst.as_mut_ptr(), dst.len(), dst_rs);
    let product = Product {
        accumulate,
        scale,
        parallel: false,
    };
    // SAFETY: `dst` is initialised; gemm_at asserts that the strided output lies in it.
    unsafe { gemm_at(a, b, out, product) }
}

/// `dst += a · b` on one thread, `dst` a raw output of `len` floats with rows `dst_rs`
/// apart, for parallel tasks that each write their own columns of one output.
///
/// # Safety
/// `dst` must be valid for reads and writes of `len` initialised floats, and no other
/// thread may touch the elements this product writes while it runs.
pub(crate) unsafe fn matmul_add_at(a: Mat, b: Mat, dst: *mut f32, len: usize, dst_rs: usize) {
    let product = Product {
        accumulate: true,
        scale: 1.0,
        parallel: false,
    };
    // SAFETY: the caller's contract; gemm_at asserts the strided output lies in `len`.
    unsafe { gemm_at(a, b, Out::new(dst, len, dst_rs), product) }
}

/// Where a product goes: `len` floats at `ptr`, rows `rs` apart.
struct Out {
    ptr: *mut f32,
    len: usize,
    rs: usize,
}

impl Out {
    fn new(ptr: *mut f32, len: usize, rs: usize) -> Self {
        Self { ptr, len, rs }
    }
}

/// How a product is written: added to the output or over it, scaled, threaded.
#[derive(Clone, Copy)]
struct Product {
    accumulate: bool,
    scale: f32,
    parallel: bool,
}

impl Product {
    const PARALLEL: Self = Self {
        accumulate: false,
        scale: 1.0,
        parallel: true,
    };
}

/// Write `scale · a · b` to `dst`, or add it with `accumulate`.
///
/// # Safety
/// `dst` must be valid for writes of its `len` floats, and with `accumulate` hold them
/// initialised.
unsafe fn gemm_at(a: Mat, b: Mat, dst: Out, p: Product) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul: view outside its slice"
    );
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst.rs + n <= dst.len, "matmul: output too small");
    if k == 0 {
        if !p.accumulate {
            for r in 0..m {
                // SAFETY: row r's n floats lie within dst (asserted above).
                unsafe { std::ptr::write_bytes(dst.ptr.add(r * dst.rs), 0, n) };
            }
        }
        return;
    }
    let signed = |v: usize| v as isize;
    // SAFETY: the asserts above keep every index gemm forms from the strides in bounds;
    // `dst` is read only with `accumulate` (the caller's contract).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            signed(dst.rs),
            p.accumulate,
            a.data.as_ptr(),
            signed(a.cs),
            signed(a.rs),
            b.data.as_ptr(),
            signed(b.cs),
            signed(b.rs),
            if p.accumulate { 1.0 } else { 0.0 },
            p.scale,
            false,
            false,
            false,
            if p.parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// The f32 data of a contiguous tensor in a custom op.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("custom op: input must be contiguous"),
    }
}

/// Floats of patch matrix unfolded at a time where the matrix is not kept: ResNet18's
/// stem at 224 px has 1.8 M per image, and unfolded whole for evaluation's batches of 64
/// it took 472 MB. Unit tests use small chunks, so that their batches of two images
/// are unfolded in several.
const CHUNK_FLOATS: usize = if cfg!(test) { 1 << 10 } else { 4 << 20 };

/// Images per chunk of the patch matrix of `g` (at least one).
fn images_per_chunk(g: &Geometry) -> usize {
    let per_image = g.rows() * g.ho * g.wo;
    (CHUNK_FLOATS / per_image.max(1)).clamp(1, g.n.max(1))
}

/// Unfold the patch matrix of `x` a chunk of images at a time, call `f` with each
/// chunk's images and columns, and return each chunk's buffer to the scratch pool.
fn for_each_chunk(g: &Geometry, x: &[f32], mut f: impl FnMut(std::ops::Range<usize>, &[f32])) {
    let (images, n) = (images_per_chunk(g), g.n);
    for first in (0..n).step_by(images) {
        let chunk = first..(first + images).min(n);
        let cols = im2col_images(g, x, chunk.clone());
        f(chunk, &cols);
        scratch::give(cols);
    }
}

/// The forward convolution `W · cols` without keeping the patch matrix: a pointwise
/// convolution multiplies its input as it is, any other unfolds a chunk of images at a
/// time into the output's columns for them.
fn unfold_and_multiply(g: &Geometry, x: &[f32], w: &[f32], cout: usize) -> Vec<f32> {
    let weight = Mat::new(w, cout, g.rows());
    if g.is_pointwise() {
        return matmul_short_wide(weight, Mat::new(x, g.rows(), g.cols()));
    }
    let (out_plane, total) = (g.ho * g.wo, cout * g.cols());
    if total == 0 {
        return Vec::new();
    }
    uninit_filled(total, |dst| {
        let out = dst.as_mut_ptr().cast::<f32>();
        for_each_chunk(g, x, |images, cols| {
            let start = images.start * out_plane;
            let patches = Mat::new(cols, g.rows(), images.len() * out_plane);
            // SAFETY: the product writes this chunk's columns of every output row (rows
            // `g.cols()` apart), which gemm_at asserts lie within `dst`; nothing else
            // touches them, and the chunks together write every element.
            unsafe {
                short_wide_at(
                    weight,
                    patches,
                    Out::new(out.wrapping_add(start), total - start, g.cols()),
                )
            };
        });
    })
}

/// `dWᵀ = cols · dYᵀ` over `images`, `cols` their columns of the patch matrix: gemm then
/// packs the large patch matrix along its rows, which is four times faster here than
/// `dY · colsᵀ` (that gathers it down its columns), except over few positions
/// ([`KERNEL_LAYOUT_MAX_POSITIONS`]).
fn weight_product(
    g: &Geometry,
    cols: &[f32],
    dy: &[f32],
    cout: usize,
    images: std::ops::Range<usize>,
) -> Vec<f32> {
    let out_plane = g.ho * g.wo;
    let positions = images.start * out_plane..images.end * out_plane;
    matmul_long_inner(
        Mat::new(cols, g.rows(), positions.len()),
        Mat::new(dy, cout, g.cols()).columns(positions).t(),
    )
}

/// `dWᵀ` when the forward pass kept no patch matrix: unfolded again a chunk of images at
/// a time, the chunks' products summed in order.
fn unfolded_weight_gradient(g: &Geometry, x: &[f32], dy: &[f32], cout: usize) -> Vec<f32> {
    if g.is_pointwise() {
        return weight_product(g, x, dy, cout, 0..g.n);
    }
    let mut sum: Option<Vec<f32>> = None;
    for_each_chunk(g, x, |images, cols| {
        let part = weight_product(g, cols, dy, cout, images);
        match &mut sum {
            None => sum = Some(part),
            Some(sum) => sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p),
        }
    });
    sum.unwrap_or_else(|| vec![0f32; g.rows() * cout])
}

/// Output positions of a batch up to which a kept patch matrix gives the weight gradient
/// as `dY · colsᵀ`, in the kernel's own `(Cout, C·k·k)` layout, instead of `cols · dYᵀ`
/// and a transpose. With so short an inner dimension the transpose of the large result
/// cost as much as the product. Per-op timings (`CLIPSCOPE_LOG=clipscope::cnn::conv=trace
/// examples/train_step 32 64 5`, `bench/conv_times.py`; Zen 4, 2 threads), `dY · colsᵀ`
/// against `cols · dYᵀ` + transpose: 128 positions (ResNet18's last stage at 64 px,
/// `4608 × 512`) 2.9-3.1 against 5.2-5.9 ms; 512 positions 2.1 against 1.9 ms; 2048
/// positions 4.9 against 2.3 ms (gemm gathers the transposed operand). 256 lies between
/// the measured sizes.
const KERNEL_LAYOUT_MAX_POSITIONS: usize = 256;

/// Checks the kernel `(Cout, C, k, k)` against channel-major input `(C, N, H, W)`.
fn geometry(x: &Shape, w: &Shape, stride: usize, pad: usize) -> Result<(Geometry, usize)> {
    let (cout, cin, k, k2) = w.dims4()?;
    let dims = x.dims4()?;
    if cin != dims.0 || k != k2 {
        candle_core::bail!(
            "conv: kernel {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    Ok((Geometry::new(dims, k, stride, pad)?, cout))
}

/// Patch matrices up to this size are kept from the forward pass for the weight
/// gradient instead of being unfolded again (a tenth of a training step at 64 px); larger
/// ones are recomputed, which bounds the memory this adds at large image sizes.
const KEEP_PATCHES_MAX: usize = 16 << 20;

/// Runs `op`, the convolution op `name` of geometry `g` into `cout` channels, and logs
/// its duration at TRACE level: `CLIPSCOPE_LOG=clipscope::cnn::conv=trace` times every
/// convolution of a training step (`examples/train_step`, the `clipscope` binary), which
/// is how docs/cnn.md finds the slow ones.
fn timed<T>(name: &str, g: &Geometry, cout: usize, op: impl FnOnce() -> T) -> T {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return op();
    }
    let start = std::time::Instant::now();
    let out = op();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let (c, k, stride, h, w) = (g.c, g.k, g.stride, g.h, g.w);
    tracing::trace!(name, c, cout, k, stride, h, w, ms, "convolution op");
    out
}

/// Forward convolution; its backward pass is `ConvGradWeight` and `ConvGradInput`.
struct Conv {
    stride: usize,
    pad: usize,
    /// Where the forward pass leaves its patch matrix for the backward pass, when training.
    keep: Option<std::sync::Mutex<Option<Vec<f32>>>>,
}

/// `dW` from `(dY, x)`.
struct ConvGradWeight<'a> {
    g: Geometry,
    cout: usize,
    /// The forward pass's slot for its patch matrix (taken when used).
    kept: Option<&'a std::sync::Mutex<Option<Vec<f32>>>>,
}

/// `dX = col2im(Wᵀ · dY)` from `(dY, W)`.
struct ConvGradInput {
    g: Geometry,
    cout: usize,
}

/// The smallest image (height x width) whose input gradient [`super::direct`] computes;
/// smaller ones take gemm's product and the fold (col2im). Measured on Zen 4, 2 threads,
/// batch 32, direct kernel against gemm and fold:
/// - per op (`CLIPSCOPE_LOG=clipscope::cnn::conv=trace examples/train_step`,
///   `bench/conv_times.py`, medians of three alternated runs): 2x2 planes, 512 channels
///   (64 px), 4.1 against 3.2 ms, so gemm; 4x4, 256 channels (64 px), 3.2 against 3.7 ms;
///   4x4, 512 channels (128 px), 14.1 against 13.8 ms; 5x5 and 7x7 (160 and 224 px), 19.9
///   against 20.3 ms and 36.9 against 37.6 ms;
/// - whole convolutions, forward and backward, earlier (`EVAL_ONLY=1 CONVS=1
///   examples/train_step 32 128 3`): 4x4, 512 channels, 16.5-21.8 against 15.4-15.5 ms;
///   16x16 15.5-16.4 against 17.1-19.2 ms; 32x32 21.8-24.3 against 25.7-27.8 ms.
///
/// At 4x4 with 512 channels gemm stays slightly ahead in both; the 256-channel layer's
/// gain decided the threshold.
const DIRECT_GRADIENT_MIN_PLANE: usize = 16;

/// Whether `g` is a convolution [`super::direct`] computes without a patch matrix (3x3,
/// stride 1, padding 1).
fn is_direct(g: &Geometry) -> bool {
    g.k == 3 && g.pad == 1 && g.is_same_stride_1()
}

/// The smallest image (height x width) whose weight gradient [`super::direct`] computes:
/// on ResNet18's 2x2 last stage (64 px) the kernel's per-row work and the transposes
/// around it cost more than the patch matrix they save (`CONVS=1 examples/train_step`:
/// backward 6.2-6.7 against 5.4-5.8 ms); from 4x4 up it is as fast or faster and the
/// forward pass then keeps no patch matrix.
const DIRECT_WEIGHT_GRADIENT_MIN_PLANE: usize = 16;

/// Whether the weight gradient of `g` into `cout` channels is computed without a patch
/// matrix ([`super::direct::weight_gradient`]).
fn has_direct_weight_gradient(g: &Geometry, cout: usize) -> bool {
    is_direct(g)
        && g.h * g.w >= DIRECT_WEIGHT_GRADIENT_MIN_PLANE
        && super::direct::weight_gradient_available(cout)
}

impl Conv {
    /// Whether the forward pass leaves its patch matrix for the weight gradient: when
    /// training, for a matrix that is unfolded (not pointwise), small enough to keep,
    /// and one the gradient reads (not computed directly).
    fn keeps_patches(&self, g: &Geometry, cout: usize) -> bool {
        self.keep.is_some()
            && !g.is_pointwise()
            && g.rows() * g.cols() <= KEEP_PATCHES_MAX
            && !has_direct_weight_gradient(g, cout)
    }

    /// Whether the forward pass skips the patch matrix ([`super::direct`]): for 3x3
    /// "same" convolutions whose matrix is not kept.
    fn reads_input_directly(&self, g: &Geometry, cout: usize) -> bool {
        is_direct(g) && !self.keeps_patches(g, cout)
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-cnhw"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, cout) = geometry(xl.shape(), wl.shape(), self.stride, self.pad)?;
        timed(self.name(), &g, cout, || {
            let (x, w) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
            let shape = Shape::from((cout, g.n, g.ho, g.wo));
            if self.reads_input_directly(&g, cout) {
                if let Some(y) = super::direct::conv3x3(x, (g.c, g.n, g.h, g.w), w, cout) {
                    return Ok((CpuStorage::F32(y), shape));
                }
            }
            let keep = match &self.keep {
                Some(keep) if self.keeps_patches(&g, cout) => keep,
                _ => return Ok((CpuStorage::F32(unfold_and_multiply(&g, x, w, cout)), shape)),
            };
            let cols = im2col(&g, x);
            let y = matmul_short_wide(
                Mat::new(w, cout, g.rows()),
                Mat::new(&cols, g.rows(), g.cols()),
            );
            *keep
                .lock()
                .map_err(|_| candle_core::Error::Msg("conv cache poisoned".into()))? = Some(cols);
            Ok((CpuStorage::F32(y), shape))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, cout) = geometry(x.shape(), w.shape(), self.stride, self.pad)?;
        let grad = grad.contiguous()?;
        let kept = self.keep.as_ref();
        let grad_w = grad.apply_op2_no_bwd(x, &ConvGradWeight { g, cout, kept })?;
        // The network's input needs no gradient: skip the largest col2im of all.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &ConvGradInput { g, cout })?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_w)))
    }
}

impl CustomOp2 for ConvGradWeight<'_> {
    fn name(&self) -> &'static str {
        "conv2d-cnhw-grad-weight"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, cout) = (self.g, self.cout);
        timed(self.name(), &g, cout, || {
            let (dy, x) = (contiguous_f32(gs, gl)?, contiguous_f32(xs, xl)?);
            // The forward pass kept no patch matrix for a direct weight gradient
            // (`Conv::keeps_patches`).
            if has_direct_weight_gradient(&g, cout) {
                if let Some(dw) = super::direct::weight_gradient(dy, x, (g.c, g.n, g.h, g.w), cout)
                {
                    return Ok((CpuStorage::F32(dw), Shape::from((cout, g.c, g.k, g.k))));
                }
            }
            let kept = self.kept.and_then(|k| k.lock().ok()?.take());
            let dw = match kept {
                Some(cols) if g.cols() <= KERNEL_LAYOUT_MAX_POSITIONS => {
                    let dw = matmul(
                        Mat::new(dy, cout, g.cols()),
                        Mat::new(&cols, g.rows(), g.cols()).t(),
                        false,
                    );
                    scratch::give(cols);
                    dw
                }
                Some(cols) => {
                    let dwt = weight_product(&g, &cols, dy, cout, 0..g.n);
                    scratch::give(cols);
                    crate::util::transpose(&dwt, g.rows(), cout)
                }
                None => {
                    let dwt = unfolded_weight_gradient(&g, x, dy, cout);
                    crate::util::transpose(&dwt, g.rows(), cout)
                }
            };
            Ok((CpuStorage::F32(dw), Shape::from((cout, g.c, g.k, g.k))))
        })
    }
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-cnhw-grad-input"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, cout) = (self.g, self.cout);
        timed(self.name(), &g, cout, || {
            let (dy, w) = (contiguous_f32(gs, gl)?, contiguous_f32(ws, wl)?);
            let shape = Shape::from((g.c, g.n, g.h, g.w));
            // See DIRECT_GRADIENT_MIN_PLANE for where each way is faster.
            if is_direct(&g) && g.h * g.w >= DIRECT_GRADIENT_MIN_PLANE {
                if let Some(dx) = super::direct::input_gradient(dy, (cout, g.n, g.h, g.w), w, g.c) {
                    return Ok((CpuStorage::F32(dx), shape));
                }
            }
            let dcols = matmul(
                Mat::new(w, cout, g.rows()).t(),
                Mat::new(dy, cout, g.cols()),
                true,
            );
            let dx = if g.is_pointwise() {
                dcols
            } else {
                let dx = col2im(&g, &dcols);
                scratch::give(dcols);
                dx
            };
            Ok((CpuStorage::F32(dx), shape))
        })
    }
}

/// Convolution of channel-major `x (C, N, H, W)` with `weight (Cout, C, k, k)`, no bias:
/// `(Cout, N, Ho, Wo)`. The inputs are made contiguous. `train` keeps intermediate
/// results for the backward pass.
pub fn conv2d_cnhw(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: usize,
    train: bool,
) -> Result<Tensor> {
    if super::portable::portable(x) {
        return super::portable::conv2d_cnhw(x, weight, stride, pad);
    }
    let keep = train.then(|| std::sync::Mutex::new(None));
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv { stride, pad, keep })
}

/// `(N, C, H, W)` to channel-major `(C, N, H, W)` and back (the same swap).
pub fn swap_batch_and_channels(x: &Tensor) -> Result<Tensor> {
    x.transpose(0, 1)?.contiguous()
}

/// Convolution of ordinary `(N, C, H, W)` input, through the channel-major kernel.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let y = conv2d_cnhw(&swap_batch_and_channels(x)?, weight, stride, pad, true)?;
    swap_batch_and_channels(&y)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cnn::rng::Rng;
    use candle_core::{DType, Device, Var};

    /// `shape`'s worth of reproducible values in [-1, 1) (also for `direct`'s tests).
    pub(crate) fn random(shape: &[usize], seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..shape.iter().product())
            .map(|_| r.range(-1.0, 1.0) as f32)
            .collect()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn forward_and_gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        // Shifted-plane (stride-1 "same") and gather paths, pointwise, tiny images, and
        // with the patch matrix kept for the backward pass or recomputed.
        let cases = [
            (3, 1, 1, 7),
            (3, 2, 1, 8),
            (1, 2, 0, 6),
            (7, 2, 3, 11),
            (1, 1, 0, 5),
            (3, 1, 1, 2),
            (5, 1, 2, 6),
            (3, 1, 0, 6),
            // Padding larger than the image.
            (5, 1, 2, 1),
            (7, 1, 3, 2),
            (7, 2, 3, 1),
            // Outputs wide enough for column blocks and an inner dimension long enough to
            // be split in the weight gradient (2 × 48 × 48 positions).
            (3, 1, 1, 48),
            (7, 2, 3, 96),
        ];
        // 8 and 16 channels take the direct kernels for the 3x3 "same" cases' forward
        // pass and input gradient; 32 output channels the weight gradient's too.
        let channels = [(3, 4), (8, 16), (5, 32)];
        let runs = cases.into_iter().flat_map(|c| [(c, true), (c, false)]);
        for (((k, stride, pad, h), train), (cin, cout)) in
            runs.flat_map(|r| channels.map(|ch| (r, ch)))
        {
            let xs = [2, cin, h, h];
            let ws = [cout, cin, k, k];
            let x = Var::from_vec(random(&xs, 1), &xs[..], &dev).unwrap();
            let w = Var::from_vec(random(&ws, 2), &ws[..], &dev).unwrap();
            let cnhw = swap_batch_and_channels(x.as_tensor()).unwrap();
            let y = conv2d_cnhw(&cnhw, w.as_tensor(), stride, pad, train).unwrap();
            let ours = swap_batch_and_channels(&y).unwrap();
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), pad, stride, 1, 1)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let diff = max_abs_diff(&ours, &theirs);
            assert!(diff < 1e-4, "forward k{k} s{stride}: {diff}");
            // Gradients of a fixed random projection of each output.
            let proj = Tensor::from_vec(random(ours.dims(), 3), ours.dims(), &dev).unwrap();
            let grads = |y: &Tensor| (y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (grads(&ours), grads(&theirs));
            for v in [&x, &w] {
                let t = v.as_tensor();
                let d = max_abs_diff(g1.get(t).unwrap(), g2.get(t).unwrap());
                assert!(d < 1e-3, "gradient k{k} s{stride}: {d}");
            }
        }
    }

    #[test]
    fn inner_blocks_are_equal_long_enough_and_only_for_small_results() {
        assert_eq!(inner_block(2 * INNER_BLOCK - 1, 100), None);
        assert_eq!(inner_block(1 << 20, SPLIT_RESULT_MAX + 1), None);
        assert_eq!(inner_block(1 << 20, 0), None);
        for k in [
            2 * INNER_BLOCK,
            3 * INNER_BLOCK + 17,
            5 * INNER_BLOCK - 1,
            401_408,
        ] {
            let block = inner_block(k, 9408).unwrap();
            let blocks = k.div_ceil(block);
            assert!(block >= INNER_BLOCK && blocks >= 2, "{k}: {block}");
            // Equal blocks but the last, which is at most `blocks` shorter.
            assert!(block * blocks - k < blocks, "{k}: {blocks} x {block}");
        }
    }

    #[test]
    fn a_long_inner_product_matches_an_exact_sum_on_any_number_of_threads() {
        // Inner lengths left whole, split in two, and in three with a shorter last block
        // (single-threaded blocks on 1 thread, threaded ones on 4); `b` read as the
        // transpose of a row-major matrix, as the weight gradient does.
        for (m, k, n) in [
            (7, 2 * INNER_BLOCK - 1, 4),
            (5, 2 * INNER_BLOCK, 3),
            (3, 3 * INNER_BLOCK + 17, 9),
        ] {
            let a = random(&[m, k], 4);
            let bt = random(&[n, k], 5);
            let (a, b) = (Mat::new(&a, m, k), Mat::new(&bt, n, k).t());
            let exact: Vec<f64> = (0..m * n)
                .map(|i| {
                    (0..k)
                        .map(|j| f64::from(a.data[i / n * k + j]) * f64::from(bt[i % n * k + j]))
                        .sum()
                })
                .collect();
            let on = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| matmul_long_inner(a, b))
            };
            let (one, four) = (on(1), on(4));
            assert_eq!(one, four, "{m}x{k}x{n}: the result depends on the threads");
            for (got, want) in one.iter().zip(&exact) {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-3,
                    "{m}x{k}x{n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn no_output_channels_give_an_empty_output_over_several_chunks() {
        let dev = Device::Cpu;
        // Two 9x9 images, 5x5 outputs: 27 x 25 = 675 floats of patches each, one chunk
        // per image in tests.
        let x = Tensor::from_vec(random(&[3, 2, 9, 9], 1), (3, 2, 9, 9), &dev).unwrap();
        let w = Tensor::zeros((0, 3, 3, 3), DType::F32, &dev).unwrap();
        for train in [false, true] {
            let y = conv2d_cnhw(&x, &w, 2, 1, train).unwrap();
            assert_eq!(y.dims(), &[0, 2, 5, 5]);
        }
    }

    #[test]
    fn an_empty_batch_gives_an_empty_output_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_vec(Vec::<f32>::new(), (3, 0, 5, 5), &dev).unwrap();
        let w = Var::from_vec(random(&[4, 3, 3, 3], 2), (4, 3, 3, 3), &dev).unwrap();
        let y = conv2d_cnhw(x.as_tensor(), w.as_tensor(), 1, 1, true).unwrap();
        assert_eq!(y.dims(), &[4, 0, 5, 5]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), &[3, 0, 5, 5]);
        let gw = grads.get(w.as_tensor()).unwrap();
        assert_eq!(
            gw.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
