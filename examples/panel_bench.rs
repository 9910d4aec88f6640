//! Dev tool: ViT-B/32's and the text tower's dense-layer products through the panel
//! kernel (`src/clip/panels.rs`) against gemm on the transposed `(in, out)` weight in
//! huge-page memory (what the CPU dense layers used before), interleaved, medians.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example panel_bench [ITERS]
//!
//! `PANEL_SHAPES=120x768x2304,800x768x2304` times those (rows x inputs x outputs)
//! instead; `PANEL_OFFSET=2` (0 to 15) moves the packed weights to 2 floats past a cache
//! line (`PANEL_OFFSET=0` is a prepared store's layout since its format 3, where values
//! start on a line; 2 was format 2's, 8 bytes into one).
use clipscope::clip::panels;
use std::time::Instant;

/// (rows, inputs, outputs): one image (50 tokens), 16 images, 5 prompts of 77 tokens.
const SHAPES: [(usize, usize, usize); 10] = [
    (50, 768, 2304),
    (50, 768, 768),
    (50, 768, 3072),
    (50, 3072, 768),
    (800, 768, 2304),
    (800, 768, 3072),
    (800, 3072, 768),
    (385, 512, 1536),
    (385, 512, 2048),
    (385, 2048, 512),
];

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `y += x · w_t` by gemm, `w_t` row-major `(k, n)`, on rayon's threads.
fn gemm_onto(x: &[f32], w_t: &[f32], y: &mut [f32], (m, k, n): (usize, usize, usize)) {
    // SAFETY: the slices hold m·k, k·n and m·n values with the strides given.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w_t.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A copy of `values` starting `offset` floats past a 64-byte cache line, in huge pages
/// where the system gives them (as [`panels::pack`]'s own buffer).
fn at_line_offset(values: &[f32], offset: usize) -> AlignedCopy {
    let mut buf = clipscope::util::zeroed_floats(values.len() + 16);
    let skew = (buf.as_ptr() as usize / 4) % 16;
    let start = (16 + offset - skew) % 16;
    buf[start..start + values.len()].copy_from_slice(values);
    AlignedCopy {
        buf,
        start,
        len: values.len(),
    }
}

/// Values at a chosen place in a larger buffer.
struct AlignedCopy {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for AlignedCopy {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..][..self.len]
    }
}

/// `PANEL_SHAPES` as `(rows, inputs, outputs)`, or a message naming the entry at fault.
fn parse_shapes(list: &str) -> Result<Vec<(usize, usize, usize)>, String> {
    list.split(',')
        .map(|entry| {
            let dims: Option<Vec<usize>> = entry
                .trim()
                .split('x')
                .map(|d| d.parse().ok().filter(|&d: &usize| d > 0))
                .collect();
            match dims.as_deref() {
                Some(&[m, k, n]) => Ok((m, k, n)),
                _ => Err(format!(
                    "PANEL_SHAPES: {entry:?} is not ROWSxINPUTSxOUTPUTS (positive integers)"
                )),
            }
        })
        .collect()
}

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    // Floats past a cache line where the packed weights start (`PANEL_OFFSET=0` is a
    // prepared store of format 3, 2 one of format 2); unset, the weights stay where
    // `panels::pack` put them.
    let line_offset: Option<usize> = match std::env::var("PANEL_OFFSET") {
        Ok(s) => match s.parse() {
            Ok(o) if o < 16 => Some(o),
            _ => {
                eprintln!("panel_bench: PANEL_OFFSET={s:?} is not a number of floats from 0 to 15");
                std::process::exit(2);
            }
        },
        Err(_) => None,
    };
    let shapes = match std::env::var("PANEL_SHAPES") {
        Ok(list) => parse_shapes(&list).unwrap_or_else(|e| {
            eprintln!("panel_bench: {e}");
            std::process::exit(2);
        }),
        Err(_) => SHAPES.to_vec(),
    };
    println!(
        "{:>18}  {:>14}  {:>14}  ratio",
        "rows x in x out", "gemm GFLOP/s", "panels GFLOP/s"
    );
    for (m, k, n) in shapes {
        let x = values(m * k, 1);
        let w = values(n * k, 2); // PyTorch's (out, in)
        let mut w_t = clipscope::util::zeroed_floats(k * n); // huge pages, as the old load
        for o in 0..n {
            for i in 0..k {
                w_t[i * n + o] = w[o * k + i];
            }
        }
        let packed = panels::pack(&w, n, k);
        let moved = line_offset.map(|o| at_line_offset(&packed, o));
        let packed: &[f32] = moved.as_deref().unwrap_or(&packed);
        let (mut y0, mut y1) = (vec![0f32; m * n], vec![0f32; m * n]);
        let (mut t0, mut t1) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let s = Instant::now();
            gemm_onto(&x, &w_t, &mut y0, (m, k, n));
            t0.push(s.elapsed().as_secs_f64());
            let s = Instant::now();
            panels::matmul_onto(packed, k, n, &x, m, &mut y1);
            t1.push(s.elapsed().as_secs_f64());
        }
        let flop = 2.0 * (m * k * n) as f64 / 1e9;
        let (g0, g1) = (flop / median(t0), flop / median(t1));
        println!(
            "{:>18}  {g0:>14.1}  {g1:>14.1}  {:.2}",
            format!("{m} x {k} x {n}"),
            g1 / g0
        );
    }
}
