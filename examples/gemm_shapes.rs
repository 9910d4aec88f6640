//! ResNet18's convolution products at batch 32 and 64 px (two at 128 px), timed as one
//! threaded gemm call and split the way `src/cnn/conv.rs` splits them: column blocks of
//! 256, one single-threaded gemm each, for the forward products of few output channels,
//! and the weight gradient's long inner dimension in equal blocks of at least 2048,
//! summed afterwards. The evidence for those two splits (docs/cnn.md). Usage:
//! `RAYON_NUM_THREADS=2 cargo run --release --example gemm_shapes`
use std::time::Instant;

use rayon::prelude::*;

/// Row-major `m × k` and `k × n` operands (`b` stored as `n × k` when `b_transposed`, as
/// the weight gradient reads `dYᵀ`) and an `m × n` output.
struct Product {
    m: usize,
    k: usize,
    n: usize,
    b_transposed: bool,
}

impl Product {
    /// gemm on `b`'s columns `j0..j0 + n` and inner indices `k0..k0 + k` into `c`
    /// (rows `ldc` apart).
    ///
    /// # Safety
    /// `c` must hold the output block; the ranges must lie inside the operands.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        &self,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        (j0, n): (usize, usize),
        (k0, k): (usize, usize),
        threads: gemm::Parallelism,
    ) {
        let (b_rs, b_cs) = if self.b_transposed {
            (1, self.k)
        } else {
            (self.n, 1)
        };
        unsafe {
            gemm::gemm(
                self.m,
                n,
                k,
                c,
                1,
                ldc as isize,
                false,
                a.as_ptr().add(k0),
                1,
                self.k as isize,
                b.as_ptr().add(k0 * b_rs + j0 * b_cs),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            );
        }
    }
}

/// Median of 9 runs of `f`, in seconds.
fn median(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..9)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[4]
}

fn main() {
    let shapes = [
        ("stem forward", 64, 147, 32768, false),
        ("stage 1 forward", 64, 576, 8192, false),
        ("stage 2 forward", 128, 1152, 2048, false),
        ("stem dW", 147, 32768, 64, true),
        ("stage 1 dW", 576, 8192, 64, true),
        ("stage 1 dW 128px", 576, 32768, 64, true),
        ("stage 2 dW 128px", 1152, 8192, 128, true),
    ];
    for (label, m, k, n, b_transposed) in shapes {
        let p = Product {
            m,
            k,
            n,
            b_transposed,
        };
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        // SAFETY (here and below): `c` and `partial` hold the m × n outputs and every
        // block's column and inner ranges lie inside the operands.
        let whole = median(|| unsafe {
            p.gemm(
                &a,
                &b,
                c.as_mut_ptr(),
                n,
                (0, n),
                (0, k),
                gemm::Parallelism::Rayon(0),
            )
        });
        let split = if b_transposed {
            // Equal inner blocks of at least 2048 into partial outputs, then summed.
            let block = k.div_ceil(k / 2048);
            let blocks = k.div_ceil(block);
            let mut partial = vec![0f32; blocks * m * n];
            median(|| {
                partial
                    .par_chunks_mut(m * n)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let (k0, kk) = (i * block, block.min(k - i * block));
                        unsafe {
                            p.gemm(
                                &a,
                                &b,
                                out.as_mut_ptr(),
                                n,
                                (0, n),
                                (k0, kk),
                                gemm::Parallelism::None,
                            )
                        }
                    });
                let (sum, rest) = partial.split_at_mut(m * n);
                for block in rest.chunks_exact(m * n) {
                    sum.iter_mut().zip(block).for_each(|(s, v)| *s += v);
                }
            })
        } else {
            // Column blocks of 256, one single-threaded gemm each.
            let out = c.as_mut_ptr() as usize;
            median(|| {
                (0..n.div_ceil(256)).into_par_iter().for_each(|i| {
                    let (j0, nn) = (i * 256, 256.min(n - i * 256));
                    let dst = (out as *mut f32).wrapping_add(j0);
                    unsafe { p.gemm(&a, &b, dst, n, (j0, nn), (0, k), gemm::Parallelism::None) }
                });
            })
        };
        let gflops = |t: f64| 2.0 * (m * k * n) as f64 / t / 1e9;
        println!(
            "{label:16} {m:5} x {k:5} x {n:5}: one gemm {:6.2} ms ({:5.1} GFLOP/s), split {:6.2} ms ({:5.1} GFLOP/s)",
            whole * 1e3,
            gflops(whole),
            split * 1e3,
            gflops(split)
        );
    }
}
