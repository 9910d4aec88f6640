//! Fused CPU ops with backward passes for training CLIP: dense layers, LayerNorm, softmax
//! over the last axis, QuickGELU, and multi-head attention.
//!
//! candle's own fused LayerNorm and softmax have no backward pass, and the same
//! arithmetic in separate differentiable ops costs a graph node, an allocation and a pass
//! over memory each (LayerNorm alone was eleven), plus candle's zero-then-add gradient
//! accumulation per node. Each op here is one node forward and one fused pass backward.
//! They run on contiguous f32 CPU tensors; elsewhere the model falls back to composed ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cnn::conv::{contiguous_f32 as slice, matmul, matmul_add, matmul_into, Mat};

mod vmath;

/// Whether the fused ops can run on `x`.
pub fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Rows of the last axis.
fn row_len(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// Mean and reciprocal standard deviation of one row (accumulated in f64).
fn stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `LayerNorm(x) * gamma + beta` over the last axis.
struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "clip-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l1);
        let (x, gamma, beta) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(out, row)| {
                let (mean, rstd) = stats(row, self.eps);
                for i in 0..d {
                    out[i] = (row[i] - mean) * rstd * gamma[i] + beta[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(gamma, &grad, &LayerNormInputGrad { eps: self.eps })?;
        let dparams = x.apply_op2_no_bwd(&grad, &LayerNormParamGrad { eps: self.eps })?;
        Ok((Some(dx), Some(dparams.get(0)?), Some(dparams.get(1)?)))
    }
}

/// `dx` of LayerNorm from `(x, gamma, dy)`:
/// `rstd * (g - mean(g) - xhat * mean(g * xhat))` with `g = dy * gamma`.
struct LayerNormInputGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormInputGrad {
    fn name(&self) -> &'static str {
        "clip-layer-norm-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l1);
        let (x, gamma, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
            .for_each(|(out, (row, g_row))| {
                let (mean, rstd) = stats(row, self.eps);
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for i in 0..d {
                    let g = f64::from(g_row[i] * gamma[i]);
                    let xhat = f64::from((row[i] - mean) * rstd);
                    sum_g += g;
                    sum_gx += g * xhat;
                }
                let (mg, mgx) = ((sum_g / d as f64) as f32, (sum_gx / d as f64) as f32);
                for i in 0..d {
                    let g = g_row[i] * gamma[i];
                    let xhat = (row[i] - mean) * rstd;
                    out[i] = rstd * (g - mg - xhat * mgx);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `(dgamma, dbeta)` of LayerNorm from `(x, dy)`, as a `(2, d)` tensor.
struct LayerNormParamGrad {
    eps: f64,
}

impl CustomOp2 for LayerNormParamGrad {
    fn name(&self) -> &'static str {
        "clip-layer-norm-dparams"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l1);
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        // Partial sums over blocks of rows in parallel, then added: f64 throughout.
        let rows_per_block = (x.len() / d).div_ceil(64).max(1);
        let partial: Vec<Vec<f64>> = x
            .par_chunks(d * rows_per_block)
            .zip(dy.par_chunks(d * rows_per_block))
            .map(|(xs, gs)| {
                let mut acc = vec![0f64; 2 * d];
                for (row, g_row) in xs.chunks(d).zip(gs.chunks(d)) {
                    let (mean, rstd) = stats(row, self.eps);
                    for i in 0..d {
                        let g = f64::from(g_row[i]);
                        acc[i] += g * f64::from((row[i] - mean) * rstd);
                        acc[d + i] += g;
                    }
                }
                acc
            })
            .collect();
        let mut total = vec![0f64; 2 * d];
        for p in partial {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        let out: Vec<f32> = total.into_iter().map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, d))))
    }
}

/// Fused LayerNorm over the last axis with a backward pass.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(gamma, beta, LayerNorm { eps })
}

/// Softmax over the last axis.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "clip-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l);
        let x = slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(out, row)| {
                out.copy_from_slice(row);
                softmax_in_place(out);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

/// `dx = y * (dy - sum(dy * y))` per row, from `(y, dy)`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "clip-softmax-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l1);
        let (y, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d)
            .zip(y.par_chunks(d).zip(dy.par_chunks(d)))
            .for_each(|(out, (ys, gs))| {
                out.copy_from_slice(gs);
                softmax_grad_in_place(ys, out);
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax of one row, in place.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    vmath::exp_shifted_in_place(row, max);
    // Summed in order after the exponentials (a loop that did both would not vectorise).
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The gradient of a softmax row `y` with respect to its input, from the output's
/// gradient `g`, in place: `g <- y * (g - sum(g * y))`.
fn softmax_grad_in_place(y: &[f32], g: &mut [f32]) {
    let dot: f32 = y.iter().zip(g.iter()).map(|(a, b)| a * b).sum();
    for (gv, &yv) in g.iter_mut().zip(y) {
        *gv = yv * (*gv - dot);
    }
}

/// Fused softmax over the last axis with a backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// OpenAI's QuickGELU, `x * sigmoid(1.702 x)`.
struct QuickGelu;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + vmath::exp(-v))
}

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "clip-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(out, xs)| vmath::quick_gelu(xs, out));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&grad, &QuickGeluGrad)?))
    }
}

/// `dx = dy * (s + 1.702 x s (1 - s))`, `s = sigmoid(1.702 x)`, from `(x, dy)`.
struct QuickGeluGrad;

impl CustomOp2 for QuickGeluGrad {
    fn name(&self) -> &'static str {
        "clip-quick-gelu-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
            .for_each(|(out, (xs, gs))| {
                for i in 0..out.len() {
                    let s = sigmoid(1.702 * xs[i]);
                    out[i] = gs[i] * (s + 1.702 * xs[i] * s * (1.0 - s));
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// A dense layer `x · Wᵀ + b` from `(x, W, b)`: `x` is `(rows, in)`, `W` PyTorch's
/// `(out, in)`, `b` `(out)`.
///
/// One product with the bias as its starting value, instead of candle's matmul, bias
/// broadcast and their backward passes (transposed copies of both operands, a strided sum
/// over the rows, and a zero-filled gradient accumulator per node).
struct Dense;

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "clip-dense"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((rows, inp), (out, w_in)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if inp != w_in || l3.shape().elem_count() != out {
            candle_core::bail!("dense: input width {inp}, weight {out}x{w_in}");
        }
        let (x, w, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let mut y = super::dense::starting_values(Some(b), None, rows, out);
        matmul_add(Mat::new(x, rows, inp), Mat::new(w, out, inp).t(), &mut y);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(
            w,
            &DenseProduct {
                transpose_lhs: false,
            },
        )?;
        let dw = grad.apply_op2_no_bwd(
            x,
            &DenseProduct {
                transpose_lhs: true,
            },
        )?;
        let db = grad.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `dy · W` (the input's gradient), or `dyᵀ · x` (the weight's) with `transpose_lhs`.
struct DenseProduct {
    transpose_lhs: bool,
}

impl CustomOp2 for DenseProduct {
    fn name(&self) -> &'static str {
        "clip-dense-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((r1, c1), (r2, c2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let (rows, inner) = if self.transpose_lhs {
            (c1, r1)
        } else {
            (r1, c1)
        };
        if inner != r2 {
            candle_core::bail!("dense gradient: shapes do not fit ({r1}x{c1}, {r2}x{c2})");
        }
        let a = Mat::new(slice(s1, l1)?, r1, c1);
        let a = if self.transpose_lhs { a.t() } else { a };
        let out = matmul(a, Mat::new(slice(s2, l2)?, r2, c2), false);
        Ok((CpuStorage::F32(out), Shape::from((rows, c2))))
    }
}

/// Sums of the columns of a 2-D tensor (the bias's gradient), accumulated in f64 over
/// blocks of rows in parallel.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "clip-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let data = slice(s, l)?;
        let block = rows.div_ceil(16).max(1) * cols.max(1);
        let total = data
            .par_chunks(block)
            .map(|chunk| {
                let mut acc = vec![0f64; cols];
                for row in chunk.chunks(cols.max(1)) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += f64::from(v);
                    }
                }
                acc
            })
            .reduce(
                || vec![0f64; cols],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let out: Vec<f32> = total.into_iter().map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from(cols)))
    }
}

/// Fused dense layer `x · Wᵀ + b` with a backward pass, for a 2-D `x` and PyTorch's
/// `(out, in)` weight layout.
pub fn dense(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Dense)
}

/// Fused QuickGELU with a backward pass.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QuickGelu)
}

/// QuickGELU written over `x`, for inference: the product's output becomes the
/// activation with no second buffer to allocate, zero and fill. `x` must be contiguous
/// f32 on the CPU and not shared with a tensor still in use (nothing can go backward
/// through it).
pub fn quick_gelu_in_place(x: &Tensor) -> Result<()> {
    x.inplace_op1(&QuickGeluInPlace)
}

/// [`quick_gelu_in_place`]'s op.
struct QuickGeluInPlace;

impl candle_core::InplaceOp1 for QuickGeluInPlace {
    fn name(&self) -> &'static str {
        "clip-quick-gelu-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::F32(values) = s else {
            candle_core::bail!("quick_gelu_in_place: f32 only");
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("quick_gelu_in_place: a contiguous tensor only");
        };
        values[start..end]
            .par_chunks_mut(1 << 14)
            .for_each(vmath::quick_gelu_in_place);
        Ok(())
    }
}

/// Scaled dot-product attention of `heads` heads on `(q, k, v)`, each `(B, L, D)` with
/// the heads side by side in `D` (as the projections produce them), optionally causal.
///
/// One node instead of candle's eleven (head split and merge copies, scale, two batched
/// products with their transposed copies backward, mask, softmax), and no `(B, heads, L,
/// L)` tensor kept for the backward pass: the probabilities are recomputed per head there.
/// Sequences run in parallel; each head's products are single-threaded gemm calls on
/// strided views of the head's columns.
struct Attention {
    heads: usize,
    scale: f32,
    causal: bool,
}

/// One sequence's q, k and v, each `L` rows of `D` values.
struct Sequence<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    l: usize,
    d: usize,
    /// Floats from one row of q, k or v to the next: `D` for three `(L, D)` blocks, `3D`
    /// for the three side by side in one fused projection's rows.
    stride: usize,
}

/// The sequences of `(B, L, D)` q, k and v, in parallel, in order.
fn sequences<'a>(
    [q, k, v]: [&'a [f32]; 3],
    l: usize,
    d: usize,
) -> impl IndexedParallelIterator<Item = Sequence<'a>> {
    let block = (l * d).max(1);
    q.par_chunks(block)
        .zip(k.par_chunks(block))
        .zip(v.par_chunks(block))
        .map(move |((q, k), v)| Sequence {
            q,
            k,
            v,
            l,
            d,
            stride: d,
        })
}

/// The sequences of a `(B, L, 3D)` fused projection, q, k and v side by side in each
/// row, read in place.
fn fused_sequences(
    qkv: &[f32],
    l: usize,
    d: usize,
) -> impl IndexedParallelIterator<Item = Sequence<'_>> {
    qkv.par_chunks((l * 3 * d).max(1))
        .map(move |rows| Sequence {
            q: rows,
            k: &rows[d..],
            v: &rows[2 * d..],
            l,
            d,
            stride: 3 * d,
        })
}

impl Sequence<'_> {
    /// Head `h`'s columns of `x`, this sequence's q, k or v.
    fn head<'x>(&self, x: &'x [f32], h: usize, width: usize) -> Mat<'x> {
        Mat::with_row_stride(&x[h * width..], self.l, width, self.stride)
    }
}

impl Attention {
    fn width(&self, d: usize) -> usize {
        d / self.heads
    }

    /// Head `h`'s attention probabilities, `(L, L)` row-major in `p`, zeros where the mask
    /// hides a key.
    fn probabilities(&self, x: &Sequence, h: usize, p: &mut [f32]) {
        let (l, width) = (x.l, self.width(x.d));
        let (q, k) = (x.head(x.q, h, width), x.head(x.k, h, width));
        matmul_into(q, k.t(), p, l, self.scale, false);
        for (t, row) in p.chunks_mut(l.max(1)).enumerate() {
            let n = if self.causal { t + 1 } else { l };
            let (seen, hidden) = row.split_at_mut(n);
            hidden.fill(0.0);
            softmax_in_place(seen);
        }
    }

    /// The output of one sequence, all heads, into its `(L, D)` block `y`.
    fn forward_sequence(&self, x: &Sequence, y: &mut [f32]) {
        let (l, width) = (x.l, self.width(x.d));
        let mut p = vec![0f32; l * l];
        for h in 0..self.heads {
            self.probabilities(x, h, &mut p);
            let v = x.head(x.v, h, width);
            matmul_into(Mat::new(&p, l, l), v, &mut y[h * width..], x.d, 1.0, false);
        }
    }

    /// The `(B, L, D)` output of `B` sequences, in order.
    fn forward_all<'a>(
        &self,
        sequences: impl IndexedParallelIterator<Item = Sequence<'a>>,
        (b, len, d): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut y = vec![0f32; b * len * d];
        y.par_chunks_mut((len * d).max(1))
            .zip(sequences)
            .for_each(|(y, x)| self.forward_sequence(&x, y));
        y
    }

    /// The gradients of one sequence's q, k and v (`grads`, zeroed `(L, D)` blocks) from
    /// its output's gradient `dy`.
    fn backward_sequence(&self, x: &Sequence, dy: &[f32], grads: [&mut [f32]; 3]) {
        let [dq, dk, dv] = grads;
        let (l, d, width) = (x.l, x.d, self.width(x.d));
        let (mut p, mut ds) = (vec![0f32; l * l], vec![0f32; l * l]);
        for h in 0..self.heads {
            let at = h * width;
            let (q, k, v, g) = (
                x.head(x.q, h, width),
                x.head(x.k, h, width),
                x.head(x.v, h, width),
                Mat::with_row_stride(&dy[at..], l, width, d),
            );
            self.probabilities(x, h, &mut p);
            let probs = Mat::new(&p, l, l);
            matmul_into(probs.t(), g, &mut dv[at..], d, 1.0, false);
            matmul_into(g, v.t(), &mut ds, l, 1.0, false);
            // dS, with the scale of S = scale · Q Kᵀ; then dQ = dS K and dK = dSᵀ Q.
            for (pr, dr) in p.chunks(l.max(1)).zip(ds.chunks_mut(l.max(1))) {
                softmax_grad_in_place(pr, dr);
                dr.iter_mut().for_each(|g| *g *= self.scale);
            }
            let scores = Mat::new(&ds, l, l);
            matmul_into(scores, k, &mut dq[at..], d, 1.0, false);
            matmul_into(scores.t(), q, &mut dk[at..], d, 1.0, false);
        }
    }

    /// Shapes of the three inputs: `(B, L, D)` each, `D` a multiple of the heads.
    fn dims(&self, layouts: [&Layout; 3]) -> Result<(usize, usize, usize)> {
        let dims = layouts[0].shape().dims3()?;
        if layouts
            .iter()
            .any(|l| l.shape().dims() != layouts[0].shape().dims())
            || self.heads == 0
            || dims.2 % self.heads != 0
        {
            candle_core::bail!(
                "attention: q, k, v must be (B, L, D) alike, D a multiple of the heads"
            );
        }
        Ok(dims)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "clip-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, d) = self.dims([l1, l2, l3])?;
        let qkv = [slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?];
        let y = self.forward_all(sequences(qkv, l, d), (b, l, d));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (b, l, d) = q.dims3()?;
        let block = (l * d).max(1);
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let qkv = [
            slice(cpu(&sq)?, lq)?,
            slice(cpu(&sk)?, lk)?,
            slice(cpu(&sv)?, lv)?,
        ];
        let dy = slice(cpu(&sg)?, lg)?;
        let mut grads = [0; 3].map(|_| vec![0f32; b * l * d]);
        let [dq, dk, dv] = &mut grads;
        dq.par_chunks_mut(block)
            .zip(dk.par_chunks_mut(block))
            .zip(dv.par_chunks_mut(block))
            .zip(sequences(qkv, l, d).zip(dy.par_chunks(block)))
            .for_each(|(((dq, dk), dv), (x, dy))| {
                self.backward_sequence(&x, dy, [dq, dk, dv]);
            });
        let [dq, dk, dv] = grads.map(|g| Tensor::from_vec(g, (b, l, d), q.device()));
        Ok((Some(dq?), Some(dk?), Some(dv?)))
    }
}

/// The CPU storage under a tensor (custom ops' backward passes get tensors, not storage).
fn cpu(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("fused op: CPU tensors only"),
    }
}

/// Fused multi-head attention with a backward pass: `softmax(q kᵀ · scale [+ causal
/// mask]) v` per head, on `(B, L, D)` tensors with the heads side by side in `D`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Attention {
            heads,
            scale: scale as f32,
            causal,
        },
    )
}

/// [`attention`] on the query, key and value projections side by side in one
/// `(B, L, 3D)` tensor, as the fused projection makes them, read in place: no copies of
/// the three parts. Inference only (no backward pass).
pub fn attention_fused(qkv: &Tensor, heads: usize, scale: f64, causal: bool) -> Result<Tensor> {
    let op = FusedAttention(Attention {
        heads,
        scale: scale as f32,
        causal,
    });
    qkv.contiguous()?.apply_op1_no_bwd(&op)
}

/// [`attention_fused`]'s op.
struct FusedAttention(Attention);

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "clip-attention-fused-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, len, d3) = l.shape().dims3()?;
        let (heads, d) = (self.0.heads, d3 / 3);
        if d3 % 3 != 0 || heads == 0 || d % heads != 0 {
            candle_core::bail!(
                "attention: (B, L, 3D) q, k, v side by side, D a multiple of the heads"
            );
        }
        let qkv = slice(s, l)?;
        let y = self
            .0
            .forward_all(fused_sequences(qkv, len, d), (b, len, d));
        Ok((CpuStorage::F32(y), Shape::from((b, len, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::cnn::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward values and the gradients of every input against candle's composed ops.
    fn check(
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&ts), composed(&ts));
        let weights = rand(a.dims(), 99);
        assert!(
            max_diff(&a, &b) < 1e-5,
            "forward differs by {}",
            max_diff(&a, &b)
        );
        let ga = (a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(
                max_diff(x, y) < 1e-4,
                "input {i}: gradient differs by {}",
                max_diff(x, y)
            );
        }
    }

    #[test]
    fn layer_norm_matches_composed_ops() {
        let inputs = [rand(&[3, 5, 24], 1), rand(&[24], 2), rand(&[24], 3)];
        check(
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            |t| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            &inputs,
        );
    }

    #[test]
    fn softmax_matches_composed_ops() {
        check(
            |t| softmax_last_dim(&t[0]).unwrap(),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
            &[rand(&[2, 3, 7, 7], 4)],
        );
    }

    #[test]
    fn dense_matches_composed_ops() {
        check(
            |t| dense(&t[0], &t[1], &t[2]).unwrap(),
            |t| {
                t[0].matmul(&t[1].t().unwrap())
                    .unwrap()
                    .broadcast_add(&t[2])
                    .unwrap()
            },
            &[rand(&[37, 24], 6), rand(&[11, 24], 7), rand(&[11], 8)],
        );
    }

    #[test]
    fn quick_gelu_matches_composed_ops() {
        check(
            |t| quick_gelu(&t[0]).unwrap(),
            |t| (&t[0] * candle_nn::ops::sigmoid(&(&t[0] * 1.702).unwrap()).unwrap()).unwrap(),
            &[rand(&[4, 33], 5)],
        );
    }

    /// candle's composed attention, as the model's unfused path computes it.
    fn composed_attention(t: &[Tensor], heads: usize, causal: bool) -> Tensor {
        let (b, l, d) = t[0].dims3().unwrap();
        let split = |x: &Tensor| {
            x.reshape((b, l, heads, d / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scale = ((d / heads) as f64).powf(-0.5);
        let q = (split(&t[0]) * scale).unwrap();
        let mut att = q.matmul(&split(&t[1]).t().unwrap()).unwrap();
        if causal {
            let mask: Vec<f32> = (0..l)
                .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (1, 1, l, l), &Device::Cpu).unwrap();
            att = att.broadcast_add(&mask).unwrap();
        }
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(&split(&t[2]))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, l, d))
            .unwrap()
    }

    #[test]
    fn attention_matches_composed_ops() {
        for (causal, l) in [(false, 9), (true, 6)] {
            let inputs = [
                rand(&[3, l, 12], 11),
                rand(&[3, l, 12], 12),
                rand(&[3, l, 12], 13),
            ];
            let scale = 3f64.powf(-0.5);
            check(
                |t| attention(&t[0], &t[1], &t[2], 4, scale, causal).unwrap(),
                |t| composed_attention(t, 4, causal),
                &inputs,
            );
        }
    }

    #[test]
    fn attention_on_the_fused_projection_gives_the_separate_ops_bits() {
        // ViT-B/32's sequence and head width, and a short causal one.
        for (causal, b, l, d, heads) in [(false, 2, 50, 128, 2), (true, 3, 7, 12, 4)] {
            let qkv = rand(&[b, l, 3 * d], 21);
            let part = |i: usize| qkv.narrow(2, i * d, d).unwrap();
            let scale = ((d / heads) as f64).powf(-0.5);
            let separate = attention(&part(0), &part(1), &part(2), heads, scale, causal);
            let fused = attention_fused(&qkv, heads, scale, causal).unwrap();
            let bits = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(fused), bits(separate.unwrap()), "causal {causal}");
        }
        let odd = rand(&[1, 2, 10], 22);
        assert!(
            attention_fused(&odd, 2, 1.0, false).is_err(),
            "3D must divide"
        );
    }
}
