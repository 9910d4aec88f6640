//! Dense layers for inference on the CPU: the weight prepared once at load (f32 panels,
//! [`super::panels`], or 16-bit panels for `--precision bf16|f16`) and one product per call written
//! onto the layer's starting values, its bias and the residual the block adds to it.
//!
//! A product, a bias broadcast and a residual add are three passes over the output and
//! two fresh tensors; on ViT-B/32 at batch 16 that is about 50 MB of memory traffic per
//! block on top of the products.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::sync::Arc;

use super::half::{HalfFormat, PackedHalf};
use super::panels;
use super::prepared::MappedMatrix;
use crate::cnn::conv::{contiguous_f32, uninit_filled};

/// The weight as the CPU multiplies by it.
enum Weight {
    /// f32 in panels of 32 output columns ([`panels::pack`]), packed at load.
    F32(Arc<Vec<f32>>),
    /// The same layout, memory-mapped from a prepared-weights file: the panels stream
    /// front to back, as fast from the page cache's pages as from huge pages (paired
    /// `clipscope bench` runs), so the weight is never copied.
    Mapped(MappedMatrix),
    /// Rounded to 16 bits and packed (`--precision bf16|f16`).
    Half(PackedHalf),
}

/// An inference dense layer on the CPU: `x · Wᵀ + b`, plus a residual when asked.
pub struct CpuDense {
    weight: Weight,
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
}

impl CpuDense {
    /// From PyTorch's `(outputs, inputs)` weight values and the bias; `half` rounds the
    /// weight to that format once, here.
    pub fn new(
        weight: &[f32],
        outputs: usize,
        inputs: usize,
        bias: Option<Vec<f32>>,
        half: Option<HalfFormat>,
    ) -> Self {
        let weight = match half {
            Some(format) => Weight::Half(PackedHalf::pack(weight, outputs, inputs, format)),
            None => Weight::F32(Arc::new(panels::pack(weight, outputs, inputs))),
        };
        Self {
            weight,
            bias,
            inputs,
            outputs,
        }
    }

    /// An f32 layer on a mapped `(inputs, outputs)` weight in panels from a
    /// prepared-weights file.
    pub fn mapped(weight: MappedMatrix, bias: Option<Vec<f32>>) -> Result<Self> {
        let (inputs, outputs) = weight.dims();
        if bias.as_ref().is_some_and(|b| b.len() != outputs) {
            candle_core::bail!("dense: a bias of the wrong length for {outputs} outputs");
        }
        if weight.values().len() != panels::packed_len(inputs, outputs) {
            candle_core::bail!("dense: a mapped weight that is not {inputs} x {outputs} in panels");
        }
        Ok(Self {
            weight: Weight::Mapped(weight),
            bias,
            inputs,
            outputs,
        })
    }

    /// `(inputs, outputs)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    /// The f32 panels this layer made at load, to save as prepared weights (`None` for
    /// a mapped or 16-bit weight).
    pub fn made_f32(&self) -> Option<Arc<Vec<f32>>> {
        match &self.weight {
            Weight::F32(w) => Some(Arc::clone(w)),
            _ => None,
        }
    }

    /// `x · Wᵀ + b (+ residual)` for a 2-D f32 CPU `x` of `(rows, inputs)`; `residual`
    /// holds `rows × outputs` values in any shape.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        match residual {
            None => x.apply_op1_no_bwd(&Onto(self)),
            Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &Onto(self)),
        }
    }

    /// The layer's output for `rows` rows of `x`.
    fn compute(&self, x: &Layout, xs: &CpuStorage, residual: Option<&[f32]>) -> Result<Vec<f32>> {
        let (rows, inputs) = x.shape().dims2()?;
        if inputs != self.inputs {
            candle_core::bail!(
                "dense: {inputs} inputs for a {} x {} weight",
                self.inputs,
                self.outputs
            );
        }
        if let Some(r) = residual.filter(|r| r.len() != rows * self.outputs) {
            candle_core::bail!(
                "dense: residual of {} values for {rows} x {}",
                r.len(),
                self.outputs
            );
        }
        let x = contiguous_f32(xs, x)?;
        let mut y = starting_values(self.bias.as_deref(), residual, rows, self.outputs);
        let f32_weight = |w: &[f32], y: &mut [f32]| {
            panels::matmul_onto(w, self.inputs, self.outputs, x, rows, y)
        };
        match &self.weight {
            Weight::F32(w) => f32_weight(w, &mut y),
            Weight::Mapped(w) => f32_weight(w.values(), &mut y),
            Weight::Half(w) => w.matmul_onto(x, rows, &mut y),
        }
        Ok(y)
    }
}

/// `rows × n` starting values of a product: each row the bias (or zeros), plus that
/// row of the residual when given; written in parallel blocks of rows, never zeroed
/// first.
pub(crate) fn starting_values(
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    rows: usize,
    n: usize,
) -> Vec<f32> {
    // Every value must be written: a short bias or residual would leave some unset.
    assert!(bias.is_none_or(|b| b.len() == n), "one bias per output");
    assert!(
        residual.is_none_or(|r| r.len() == rows * n),
        "a residual value per output"
    );
    let width = n.max(1);
    // Blocks of rows big enough that a task is worth rayon's hand-off.
    let block = (ROWS_PER_TASK_ELEMS / width).max(1) * width;
    uninit_filled(rows * n, |y| {
        y.par_chunks_mut(block).enumerate().for_each(|(i, chunk)| {
            let res = residual.map(|r| &r[i * block..][..chunk.len()]);
            fill_rows(chunk, bias, res, width);
        });
    })
}

/// About this many outputs per rayon task when writing the starting values.
const ROWS_PER_TASK_ELEMS: usize = 1 << 16;

/// Write `bias (+ residual)` into rows of `n` outputs.
fn fill_rows(
    dst: &mut [MaybeUninit<f32>],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    n: usize,
) {
    for (r, row) in dst.chunks_mut(n).enumerate() {
        let res = residual.map(|res| &res[r * n..][..row.len()]);
        match (bias, res) {
            (Some(b), Some(res)) => row.iter_mut().zip(b).zip(res).for_each(|((d, b), r)| {
                d.write(r + b);
            }),
            (Some(b), None) => row.iter_mut().zip(b).for_each(|(d, b)| {
                d.write(*b);
            }),
            (None, Some(res)) => row.iter_mut().zip(res).for_each(|(d, r)| {
                d.write(*r);
            }),
            (None, None) => row.iter_mut().for_each(|d| {
                d.write(0.0);
            }),
        }
    }
}

/// The layer as a candle op on `x` (and the residual).
struct Onto<'a>(&'a CpuDense);

impl Onto<'_> {
    fn output(&self, y: Vec<f32>, x: &Layout) -> Result<(CpuStorage, Shape)> {
        let rows = x.shape().dims2()?.0;
        Ok((CpuStorage::F32(y), Shape::from((rows, self.0.outputs))))
    }
}

impl CustomOp1 for Onto<'_> {
    fn name(&self) -> &'static str {
        "cpu-dense"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output(self.0.compute(xl, xs, None)?, xl)
    }
}

impl CustomOp2 for Onto<'_> {
    fn name(&self) -> &'static str {
        "cpu-dense-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let residual = contiguous_f32(rs, rl)?;
        self.output(self.0.compute(xl, xs, Some(residual))?, xl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::half::tests::values;
    use candle_core::Device;

    /// `x · Wᵀ + b + r` in f64, `w` as `(out, in)`.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        r: &[f32],
        rows: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let start: Vec<f32> = r.iter().enumerate().map(|(i, r)| r + b[i % n]).collect();
        crate::clip::panels::tests::reference(x, w, &start, rows, k, n)
    }

    #[test]
    fn product_bias_and_residual_match_the_sum_in_f64() {
        let dev = Device::Cpu;
        // Few rows (one image's tokens) and more rows than one task's block.
        for (rows, k, n) in [(3, 5, 7), (50, 64, 96), (900, 40, 80)] {
            let (x, w, b, r) = (
                values(rows * k, 1),
                values(n * k, 2),
                values(n, 3),
                values(rows * n, 4),
            );
            let layer = CpuDense::new(&w, n, k, Some(b.clone()), None);
            let xt = Tensor::from_vec(x.clone(), (rows, k), &dev).unwrap();
            let rt = Tensor::from_vec(r.clone(), (1, rows, n), &dev).unwrap();
            let with = layer
                .forward(&xt, Some(&rt))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let without = layer
                .forward(&xt, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = reference(&x, &w, &b, &r, rows, k, n);
            let want_plain = reference(&x, &w, &b, &vec![0.0; rows * n], rows, k, n);
            for (got, want) in [(with, want), (without, want_plain)] {
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "{rows}x{k}x{n}: {worst}");
            }
        }
    }

    #[test]
    fn a_wrong_residual_or_input_width_is_an_error() {
        let dev = Device::Cpu;
        let layer = CpuDense::new(&values(12, 1), 4, 3, None, None);
        let x = Tensor::from_vec(values(6, 2), (2, 3), &dev).unwrap();
        assert!(layer
            .forward(
                &x,
                Some(&Tensor::zeros(7, candle_core::DType::F32, &dev).unwrap())
            )
            .is_err());
        let wide = Tensor::from_vec(values(8, 2), (2, 4), &dev).unwrap();
        assert!(layer.forward(&wide, None).is_err());
    }
}
