//! Trainable layers for the CNN, on candle, where candle's own do not train correctly:
//! a batch norm whose running statistics live in the parameter store (candle-nn's copies
//! them into a private `Var`, so they are never saved) and which runs as one fused op each
//! way, and a 3x3 stride-2 max-pool with a backward pass (candle's `max_pool2d` has none
//! when kernel != stride).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarMap};
use rayon::prelude::*;

use super::conv::{contiguous_f32 as slice_f32, Mat};
use super::portable;
use super::rng::Rng;

/// Creates named variables in a `VarMap` with reproducible initial values.
pub struct Params<'a> {
    map: &'a VarMap,
    prefix: String,
    device: &'a Device,
    seed: u64,
}

impl<'a> Params<'a> {
    /// A store over `map`, initialising from `seed`.
    pub fn new(map: &'a VarMap, device: &'a Device, seed: u64) -> Self {
        Self {
            map,
            prefix: String::new(),
            device,
            seed,
        }
    }

    /// The same store under a name prefix (`layer1.0.`...).
    pub fn pp(&self, name: &str) -> Params<'a> {
        Params {
            map: self.map,
            prefix: format!("{}{name}.", self.prefix),
            device: self.device,
            seed: self.seed,
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A variable filled by `f(rng)` per element, created once; `f` takes `draws` values
    /// of the stream per element.
    fn var_with(
        &self,
        shape: &[usize],
        name: &str,
        draws: u64,
        f: impl Fn(&mut Rng) -> f64 + Sync,
    ) -> Result<Var> {
        // Elements per parallel chunk of the stream.
        const CHUNK: usize = 1 << 16;
        let path = self.path(name);
        let n: usize = shape.iter().product();
        // A stream per tensor name: adding a layer leaves the others' values unchanged.
        let rng = Rng::new(super::rng::mix(self.seed ^ super::rng::name_seed(&path)));
        // Each chunk starts its own copy of the stream where the chunk's first element
        // does, so the values are those of one pass in order (VGG16's 138 M took 9 s on
        // one thread).
        let mut values = vec![0f32; n];
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = rng.clone();
                rng.skip(draws * (c * CHUNK) as u64);
                for v in chunk {
                    *v = f(&mut rng) as f32;
                }
            });
        self.map
            .get(shape, &path, Init::Const(0.0), DType::F32, self.device)?;
        let var = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter store poisoned".into()))?
            .get(&path)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable {path}")))?;
        var.set(&Tensor::from_vec(values, shape, self.device)?)?;
        Ok(var)
    }

    /// A constant-filled variable.
    pub fn constant(&self, shape: &[usize], name: &str, value: f64) -> Result<Var> {
        self.var_with(shape, name, 0, |_| value)
    }

    /// Kaiming normal with fan-out (torchvision's ResNet convolution init).
    pub fn kaiming_fan_out(&self, shape: &[usize], name: &str) -> Result<Var> {
        let fan_out = shape[0] * shape[2..].iter().product::<usize>();
        let std = (2.0 / fan_out as f64).sqrt();
        self.var_with(shape, name, 2, |r| r.normal() * std)
    }

    /// Normal with mean 0 and standard deviation `std`.
    pub fn normal(&self, shape: &[usize], name: &str, std: f64) -> Result<Var> {
        self.var_with(shape, name, 2, |r| r.normal() * std)
    }

    /// Uniform in ±1/sqrt(fan_in) (PyTorch's `nn.Linear` init).
    pub fn linear_uniform(&self, shape: &[usize], name: &str, fan_in: usize) -> Result<Var> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        self.var_with(shape, name, 1, |r| r.range(-bound, bound))
    }
}

/// A 2-D convolution without bias.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// `out x in x k x k`, Kaiming-initialised, named `{name}.weight`.
    pub fn new(
        p: &Params,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = p.pp(name).kaiming_fan_out(&[cout, cin, k, k], "weight")?;
        Ok(Self {
            weight: weight.as_tensor().clone(),
            stride,
            padding,
        })
    }

    /// Apply to channel-major `(C, N, H, W)`; `train` prepares for a backward pass.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let weight = for_mode(&self.weight, train);
        super::conv::conv2d_cnhw(x, &weight, self.stride, self.padding, train)
    }
}

/// A fully connected layer in PyTorch's layout: `x (N, in) · weightᵀ + bias`, with
/// `weight (out, in)`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if portable::portable(x) {
        return portable::linear(x, weight, bias);
    }
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

/// `x · Wᵀ + b` whose backward pass computes the weight's gradient `dYᵀ · x` in the
/// weight's own `(out, in)` layout. Through candle's matmul of the transposed weight the
/// gradient came back transposed, and candle made it contiguous with an element-by-element
/// copy on one thread: VGG16's first classifier layer has 103 M weights, and that copy
/// was a quarter of a training step at 64 px.
struct Linear;

/// Rows of input up to which [`Linear`] computes dot products instead of calling gemm
/// (on AVX-512): gemm packs the whole weight on every call, which for VGG16's first
/// classifier layer (103 M weights) was more than half of an evaluation batch of 8 at
/// 64 px.
const DOT_ROWS_MAX: usize = 16;

/// `x (n, inputs) · wᵀ` for `w (outputs, inputs)`, as one dot product per row and
/// output: the weight streams through unpacked, each of its rows read once per four rows
/// of `x`. Only on AVX-512 (`util::has_avx512f`).
fn dot_products(x: &[f32], n: usize, w: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    // Outputs per task.
    const BLOCK: usize = 64;
    let mut yt = vec![0f32; outputs * n];
    if n == 0 || inputs == 0 {
        return yt;
    }
    assert_eq!(x.len(), n * inputs, "linear: input size");
    assert_eq!(w.len(), outputs * inputs, "linear: weight size");
    yt.par_chunks_mut(BLOCK * n)
        .enumerate()
        .for_each(|(block, out)| {
            for (j, out) in out.chunks_exact_mut(n).enumerate() {
                let row = &w[(block * BLOCK + j) * inputs..][..inputs];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked AVX-512F (`has_avx512f`); `x` holds
                // `out.len()` rows of `row.len()` values (asserted above).
                unsafe {
                    dots(x, row, out)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (row, out);
            }
        });
    crate::util::transpose(&yt, outputs, n)
}

/// `out[r] = x_r · w` for every row `r` of `x` (`out.len()` rows of `w.len()` values),
/// four rows at a time with two accumulators each.
///
/// # Safety
/// The CPU must have AVX-512F; `x` must hold `out.len() * w.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots(x: &[f32], w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 4;
    let (k, n) = (w.len(), out.len());
    let pairs = k / 32 * 32;
    let rest = k - pairs;
    let mask = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as __mmask16;
    let (m0, m1) = (mask(rest), mask(rest.saturating_sub(16)));
    for r0 in (0..n).step_by(ROWS) {
        let rows = (n - r0).min(ROWS);
        // A short last tile repeats its last row; those sums are dropped.
        let xs: [*const f32; ROWS] =
            std::array::from_fn(|i| x.as_ptr().wrapping_add((r0 + i.min(rows - 1)) * k));
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        let wp = w.as_ptr();
        for c in (0..pairs).step_by(32) {
            // SAFETY: c + 32 <= k: inside `w` and each row of `x`.
            unsafe {
                let (w0, w1) = (_mm512_loadu_ps(wp.add(c)), _mm512_loadu_ps(wp.add(c + 16)));
                for (acc, xr) in acc.iter_mut().zip(xs) {
                    acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(c)), w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(c + 16)), w1, acc[1]);
                }
            }
        }
        if rest > 0 {
            // SAFETY: masked to the last `rest` values of `w` and of each row (masked-off
            // lanes are not read; wrapping arithmetic forms their addresses).
            unsafe {
                let w0 = _mm512_maskz_loadu_ps(m0, wp.wrapping_add(pairs));
                let w1 = _mm512_maskz_loadu_ps(m1, wp.wrapping_add(pairs + 16));
                for (acc, xr) in acc.iter_mut().zip(xs) {
                    let x0 = _mm512_maskz_loadu_ps(m0, xr.wrapping_add(pairs));
                    let x1 = _mm512_maskz_loadu_ps(m1, xr.wrapping_add(pairs + 16));
                    acc[0] = _mm512_fmadd_ps(x0, w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x1, w1, acc[1]);
                }
            }
        }
        for (o, acc) in out[r0..r0 + rows].iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
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
        let ((n, inputs), (outputs, weight_inputs)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if inputs != weight_inputs || l3.shape().dims1()? != outputs {
            candle_core::bail!(
                "linear: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (x, w, b) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?, slice_f32(s3, l3)?);
        let mut y = if n <= DOT_ROWS_MAX && crate::util::has_avx512f() {
            dot_products(x, n, w, outputs, inputs)
        } else {
            super::conv::matmul(
                Mat::new(x, n, inputs),
                Mat::new(w, outputs, inputs).t(),
                false,
            )
        };
        if outputs > 0 {
            for row in y.chunks_exact_mut(outputs) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((n, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let grad_x = grad.matmul(&weight.detach())?;
        let grad_w = grad.t()?.matmul(&x.detach())?;
        let grad_b = grad.sum(0)?;
        Ok((Some(grad_x), Some(grad_w), Some(grad_b)))
    }
}

/// A parameter as a layer should use it: itself when training, detached otherwise.
/// Outside training a detached parameter records no graph, so each activation is freed
/// as soon as the next layer has read it.
pub fn for_mode(param: &Tensor, train: bool) -> Tensor {
    if train {
        param.clone()
    } else {
        param.detach()
    }
}

/// Batch normalisation over channel-major `(C, N, H, W)` activations, with running
/// statistics in the store and an optional ReLU fused into the same pass.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// torchvision's defaults: eps 1e-5, momentum 0.1, weight 1, bias 0.
    pub fn new(p: &Params, name: &str, c: usize) -> Result<Self> {
        let p = p.pp(name);
        Ok(Self {
            weight: p.constant(&[c], "weight", 1.0)?.as_tensor().clone(),
            bias: p.constant(&[c], "bias", 0.0)?.as_tensor().clone(),
            running_mean: p.constant(&[c], "running_mean", 0.0)?,
            running_var: p.constant(&[c], "running_var", 1.0)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Normalise `x (C, N, H, W)`, then apply a ReLU if `relu`. In training mode, use the
    /// batch's statistics and update the running ones (the variance unbiased, as PyTorch
    /// does); otherwise use the running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = x.dim(0)?;
        if portable::portable(x) {
            return self.forward_portable(x, train, relu);
        }
        if !train {
            return x.contiguous()?.apply_op1(self.folded(c, relu)?);
        }
        let stats = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let y = x.contiguous()?.apply_op3(
            &self.weight,
            &self.bias,
            BatchNormTrain {
                eps: self.eps,
                relu,
                stats: stats.clone(),
            },
        )?;
        let (mean, var): (Vec<f32>, Vec<f32>) = lock(&stats)?.iter().copied().unzip();
        let dev = x.device();
        let n = x.elem_count() / c;
        self.update_running(
            &Tensor::from_vec(mean, c, dev)?,
            &Tensor::from_vec(var, c, dev)?,
            n,
        )?;
        Ok(y)
    }

    /// Move the running statistics towards a batch's (`var` biased, over `n` values per
    /// channel; the running variance is unbiased, as in PyTorch).
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let (m, n) = (self.momentum, n as f64);
        let unbiased = (var * (n / (n - 1.0).max(1.0)))?;
        let new_mean = ((self.running_mean.as_tensor().detach() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }

    /// [`BatchNorm2d::forward_t`] on candle's own operations (off the CPU).
    fn forward_portable(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            let stats = [self.running_mean.as_tensor(), self.running_var.as_tensor()];
            let (mean, var) = (stats[0].detach(), stats[1].detach());
            let (weight, bias) = (self.weight.detach(), self.bias.detach());
            return portable::batch_norm_eval(x, [&mean, &var, &weight, &bias], self.eps, relu);
        }
        let (y, mean, var) =
            portable::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        self.update_running(&mean, &var, x.elem_count() / x.dim(0)?)?;
        Ok(y)
    }
}

impl BatchNorm2d {
    /// The running statistics, weight and bias folded into one scale and shift per
    /// channel, for evaluation.
    fn folded(&self, c: usize, relu: bool) -> Result<BatchNormEval> {
        let values = |t: &Tensor| t.detach().to_dtype(DType::F64)?.to_vec1::<f64>();
        let (mean, var) = (
            values(self.running_mean.as_tensor())?,
            values(self.running_var.as_tensor())?,
        );
        let (weight, bias) = (values(&self.weight)?, values(&self.bias)?);
        if [mean.len(), var.len(), weight.len(), bias.len()] != [c; 4] {
            candle_core::bail!(
                "batch norm: {c} channels in, parameters of {}, {}, {} and {}",
                mean.len(),
                var.len(),
                weight.len(),
                bias.len()
            );
        }
        let scale: Vec<f64> = (0..c)
            .map(|i| weight[i] / (var[i] + self.eps).sqrt())
            .collect();
        Ok(BatchNormEval {
            shift: (0..c)
                .map(|i| (bias[i] - mean[i] * scale[i]) as f32)
                .collect(),
            scale: scale.into_iter().map(|v| v as f32).collect(),
            relu,
        })
    }
}

/// Evaluation-mode batch norm (and ReLU) of contiguous channel-major data: `x · scale +
/// shift` per channel in one pass (candle's broadcast multiply, add and ReLU made three).
struct BatchNormEval {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl candle_core::CustomOp1 for BatchNormEval {
    fn name(&self) -> &'static str {
        "batch-norm-eval"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(storage, layout)?;
        let run = channel_len(layout)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(run)
            .zip(x.par_chunks(run))
            .enumerate()
            .for_each(|(c, (y, x))| {
                let (a, b) = (self.scale[c], self.shift[c]);
                if self.relu {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = (x * a + b).max(0.0);
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * a + b;
                    }
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = self.scale.len();
        let scale = Tensor::from_slice(&self.scale, (c, 1, 1, 1), grad.device())?;
        let g = grad.broadcast_mul(&scale)?;
        Ok(Some(if self.relu {
            g.contiguous()?.apply_op2_no_bwd(res, &ReluMask)?
        } else {
            g
        }))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("batch-norm state poisoned".into()))
}

/// Training-mode batch norm (and ReLU) of contiguous channel-major data with weight and
/// bias `(C)`, in one fused pass per direction (candle's elementwise ops took four
/// fifths of a ResNet training step). The batch mean and biased variance per channel are
/// left in `stats`.
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: std::sync::Arc<std::sync::Mutex<Vec<(f32, f32)>>>,
}

/// The backward pass of `BatchNormTrain` from `(x, dY, Y)`: the input gradient, with the
/// per-channel sums that give the weight and bias gradients left in `sums`.
struct BatchNormBackward {
    eps: f64,
    relu: bool,
    weight: Vec<f32>,
    /// The forward pass's batch mean and biased variance per channel.
    stats: Vec<(f32, f32)>,
    sums: std::sync::Arc<std::sync::Mutex<Vec<(f32, f32)>>>,
}

/// `Σ f(x)` in f64, summed in f32 lanes within short blocks so that the loop vectorises
/// without losing the precision of a long f32 sum.
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(512) {
        let mut lanes = [0f32; 16];
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
        total += f64::from(lanes.iter().sum::<f32>() + tail);
    }
    total
}

/// Mean and biased variance of one channel (two passes, for precision).
fn moments(x: &[f32]) -> (f64, f64) {
    let count = x.len().max(1) as f64;
    let mean = sum_by(x, |v| v) / count;
    let m = mean as f32;
    (mean, sum_by(x, |v| (v - m) * (v - m)) / count)
}

/// The output below which a fused ReLU clipped: 0, or none without a ReLU.
fn relu_floor(relu: bool) -> f32 {
    if relu {
        0.0
    } else {
        f32::NEG_INFINITY
    }
}

/// The gradient `g` of an output `y` that passes a fused ReLU with `floor`.
fn through_relu(g: f32, y: f32, floor: f32) -> f32 {
    if y > floor {
        g
    } else {
        0.0
    }
}

/// Per channel of the batch-norm backward pass: `Σ g'` and `Σ g'·(x - mean)`, where `g'`
/// is the gradient with the fused ReLU's mask applied (`y > 0`, or all when no ReLU).
fn grad_sums(g: &[f32], x: &[f32], y: &[f32], mean: f32, relu: bool) -> (f64, f64) {
    let floor = relu_floor(relu);
    let term = |gv: f32, xv: f32, yv: f32| {
        let live = through_relu(gv, yv, floor);
        (live, live * (xv - mean))
    };
    let (mut sg, mut sgx) = (0f64, 0f64);
    for ((gb, xb), yb) in g.chunks(512).zip(x.chunks(512)).zip(y.chunks(512)) {
        let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
        let (gi, xi, yi) = (
            gb.chunks_exact(16),
            xb.chunks_exact(16),
            yb.chunks_exact(16),
        );
        let (gt, xt, yt) = (gi.remainder(), xi.remainder(), yi.remainder());
        for ((gc, xc), yc) in gi.zip(xi).zip(yi) {
            for i in 0..16 {
                let (p, q) = term(gc[i], xc[i], yc[i]);
                a[i] += p;
                b[i] += q;
            }
        }
        let (mut ta, mut tb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
        for ((&gv, &xv), &yv) in gt.iter().zip(xt).zip(yt) {
            let (p, q) = term(gv, xv, yv);
            ta += p;
            tb += q;
        }
        sg += f64::from(ta);
        sgx += f64::from(tb);
    }
    (sg, sgx)
}

/// Length of one channel's run in contiguous `(C, N, H, W)` data.
fn channel_len(l: &Layout) -> Result<usize> {
    let (_, n, h, w) = l.shape().dims4()?;
    Ok((n * h * w).max(1))
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
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
        let len = channel_len(l1)?;
        let (x, weight, bias) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?, slice_f32(s3, l3)?);
        let mut y = vec![0f32; x.len()];
        let stats: Vec<(f32, f32)> = y
            .par_chunks_mut(len)
            .zip(x.par_chunks(len))
            .enumerate()
            .map(|(ch, (out, src))| {
                let (mean, var) = moments(src);
                let scale = f64::from(weight[ch]) / (var + self.eps).sqrt();
                let (a, b) = (scale as f32, (f64::from(bias[ch]) - mean * scale) as f32);
                let floor = relu_floor(self.relu);
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = (v * a + b).max(floor);
                }
                (mean as f32, var as f32)
            })
            .collect();
        *lock(&self.stats)? = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let sums = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let op = BatchNormBackward {
            eps: self.eps,
            relu: self.relu,
            weight: weight.to_vec1::<f32>()?,
            stats: lock(&self.stats)?.clone(),
            sums: sums.clone(),
        };
        let grad_x = x.apply_op3_no_bwd(&grad.contiguous()?, res, &op)?;
        let (grad_b, grad_w): (Vec<f32>, Vec<f32>) = lock(&sums)?.iter().copied().unzip();
        let dev = x.device();
        let c = grad_w.len();
        Ok((
            Some(grad_x),
            Some(Tensor::from_vec(grad_w, c, dev)?),
            Some(Tensor::from_vec(grad_b, c, dev)?),
        ))
    }
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "batch-norm-train-backward"
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
        let len = channel_len(l1)?;
        let (x, g, y) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?, slice_f32(s3, l3)?);
        if self.stats.len() != l1.dims()[0] {
            candle_core::bail!("batch-norm backward: the forward pass left no statistics");
        }
        let floor = relu_floor(self.relu);
        let mut gx = vec![0f32; x.len()];
        let sums: Vec<(f32, f32)> = gx
            .par_chunks_mut(len)
            .zip(
                x.par_chunks(len)
                    .zip(g.par_chunks(len))
                    .zip(y.par_chunks(len)),
            )
            .zip(self.stats.par_iter())
            .enumerate()
            .map(|(ch, ((out, ((xs, gs), ys)), &(mean, var)))| {
                let inv = 1.0 / (f64::from(var) + self.eps).sqrt();
                let (sg, sgxm) = grad_sums(gs, xs, ys, mean, self.relu);
                let sgx = sgxm * inv;
                // dx = w·inv/n · (n·g' - Σg' - x̂·Σg'x̂), as a·g' + b·(x - mean) + c.
                let count = len as f64;
                let k = f64::from(self.weight[ch]) * inv / count;
                let (a, b, c) = (
                    (k * count) as f32,
                    (-k * sgx * inv) as f32,
                    (-k * sg) as f32,
                );
                for (((o, &gv), &xv), &yv) in out.iter_mut().zip(gs).zip(xs).zip(ys) {
                    *o = a * through_relu(gv, yv, floor) + b * (xv - mean) + c;
                }
                (sg as f32, sgx as f32)
            })
            .collect();
        *lock(&self.sums)? = sums;
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// `relu(a + b)` of two same-shaped tensors (a residual block's exit) in one pass.
struct AddRelu;

/// `dY * (Y > 0)` from `(dY, Y)`: the gradient through a ReLU given its output.
struct ReluMask;

fn same_layout(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("shapes differ: {:?} and {:?}", l1.dims(), l2.dims());
    }
    Ok(())
}

/// `f(a[i], b[i])` over two contiguous same-shaped f32 tensors, in parallel chunks.
fn zip_map(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    same_layout(l1, l2)?;
    let (a, b) = (slice_f32(s1, l1)?, slice_f32(s2, l2)?);
    const CHUNK: usize = 1 << 14;
    let mut y = vec![0f32; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

impl candle_core::CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zip_map((s1, l1), (s2, l2), |a, b| (a + b).max(0.0))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

impl candle_core::CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zip_map((s1, l1), (s2, l2), |g, y| if y > 0.0 { g } else { 0.0 })
    }
}

/// `relu(a + b)`, with its gradient, for same-shaped tensors.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if portable::portable(a) {
        return portable::add_relu(a, b);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// Max-pool with a square `k`-window, `stride` and `pad` (padding never wins, as in
/// PyTorch's -inf padding), as one custom op each way. The forward pass records where
/// each maximum came from (the first input in its window that equals it: PyTorch's
/// choice among ties too), and the backward pass sends each output's gradient there.
struct MaxPool {
    k: usize,
    stride: usize,
    pad: usize,
    /// Per output, the index within its plane of the input it copied.
    argmax: std::sync::Mutex<Vec<u32>>,
}

/// Scatters output gradients onto the recorded inputs.
struct MaxPoolBackward {
    argmax: Vec<u32>,
    in_plane: usize,
    shape: Shape,
}

impl MaxPool {
    /// Geometry: (planes, h, w, ho, wo) of `(A, B, H, W)` data (any two leading dims).
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        let [a, b, h, w] = dims else {
            candle_core::bail!("max-pool: expected 4 dimensions, got {dims:?}")
        };
        let (h, w) = (*h, *w);
        if h + 2 * self.pad < self.k || w + 2 * self.pad < self.k || self.stride == 0 {
            candle_core::bail!("max-pool: {h}x{w} is too small for a {}x{0} window", self.k);
        }
        if 2 * self.pad >= self.k || h * w > u32::MAX as usize {
            candle_core::bail!("max-pool: unsupported padding or plane {h}x{w}");
        }
        let out = |n: usize| (n + 2 * self.pad - self.k) / self.stride + 1;
        Ok((a * b, h, w, out(h), out(w)))
    }

    /// The flat index (within a plane) of the first maximum of output (oy, ox)'s window.
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> usize {
        // The window clipped to the plane (never empty: padding is under half the window).
        let span = |o: usize, n: usize| {
            let start = o * self.stride;
            (
                start.saturating_sub(self.pad),
                (start + self.k - self.pad).min(n),
            )
        };
        let ((y0, y1), (x0, x1)) = (span(oy, h), span(ox, w));
        let mut at = y0 * w + x0;
        let mut best = plane[at];
        for y in y0..y1 {
            for (i, &v) in plane[y * w + x0..y * w + x1].iter().enumerate() {
                if v > best {
                    best = v;
                    at = y * w + x0 + i;
                }
            }
        }
        at
    }
}

impl candle_core::CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, ho, wo) = self.dims(layout.shape().dims())?;
        let x = slice_f32(storage, layout)?;
        let mut out = vec![0f32; planes * ho * wo];
        let mut argmax = vec![0u32; planes * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(argmax.par_chunks_mut(ho * wo))
            .enumerate()
            .for_each(|(p, (o, a))| {
                let plane = &x[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let at = self.argmax(plane, h, w, oy, ox);
                        o[oy * wo + ox] = plane[at];
                        a[oy * wo + ox] = at as u32;
                    }
                }
            });
        *lock(&self.argmax)? = argmax;
        let dims = layout.shape().dims();
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims[0], dims[1], ho, wo)),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _, _) = self.dims(arg.dims())?;
        let op = MaxPoolBackward {
            argmax: lock(&self.argmax)?.clone(),
            in_plane: h * w,
            shape: arg.shape().clone(),
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl candle_core::CustomOp1 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice_f32(storage, layout)?;
        if g.len() != self.argmax.len() {
            candle_core::bail!("max-pool backward: gradient does not match the forward pass");
        }
        let planes = self.shape.elem_count() / self.in_plane;
        let out_plane = (g.len() / planes.max(1)).max(1);
        let mut gx = vec![0f32; self.shape.elem_count()];
        gx.par_chunks_mut(self.in_plane)
            .zip(
                g.par_chunks(out_plane)
                    .zip(self.argmax.par_chunks(out_plane)),
            )
            .for_each(|(out, (g, at))| {
                for (&v, &i) in g.iter().zip(at) {
                    out[i as usize] += v;
                }
            });
        Ok((CpuStorage::F32(gx), self.shape.clone()))
    }
}

/// Max-pool over the last two dimensions with a `k`-window, `stride` and `pad` (under
/// `k / 2`), with a gradient (candle's `max_pool2d` has none when kernel != stride, and
/// splits it among ties).
pub fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if portable::portable(x) {
        return portable::max_pool(x, k, stride, pad);
    }
    x.contiguous()?.apply_op1(MaxPool {
        k,
        stride,
        pad,
        argmax: std::sync::Mutex::new(Vec::new()),
    })
}

/// 3x3 max-pool with stride 2 and padding 1 (ResNet's stem).
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    max_pool(x, 3, 2, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finite_difference_check(
        f: impl Fn(&Tensor) -> Result<Tensor>,
        x: Vec<f32>,
        shape: &[usize],
    ) {
        let dev = Device::Cpu;
        let var = Var::from_vec(x.clone(), shape, &dev).unwrap();
        // A fixed random projection makes the output a scalar.
        let y = f(var.as_tensor()).unwrap();
        let mut r = Rng::new(5);
        let proj: Vec<f32> = (0..y.elem_count())
            .map(|_| r.range(-1.0, 1.0) as f32)
            .collect();
        let proj = Tensor::from_vec(proj, y.shape(), &dev).unwrap();
        let loss = |t: &Tensor| -> f64 {
            f(t).unwrap()
                .mul(&proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (y.mul(&proj).unwrap().sum_all().unwrap())
            .backward()
            .unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..x.len()).step_by((x.len() / 40).max(1)) {
            let mut plus = x.clone();
            plus[i] += eps;
            let mut minus = x.clone();
            minus[i] -= eps;
            let fp = loss(&Tensor::from_vec(plus, shape, &dev).unwrap());
            let fm = loss(&Tensor::from_vec(minus, shape, &dev).unwrap());
            let numeric = (fp - fm) / (2.0 * f64::from(eps));
            assert!(
                (numeric - f64::from(g[i])).abs() < 2e-2 * (1.0 + numeric.abs()),
                "element {i}: analytic {} numeric {numeric}",
                g[i]
            );
        }
    }

    #[test]
    fn linear_matches_an_f64_sum_with_few_and_many_rows() {
        use crate::cnn::conv::tests::random;
        // Rows on the dot-product path (1, 5, 16) and on gemm's (17); inner sizes below
        // a vector, between one and two, and past whole pairs; outputs off the block.
        for (case, &(n, inputs, outputs)) in [
            (1, 7, 3),
            (5, 45, 70),
            (16, 100, 129),
            (17, 33, 65),
            (4, 0, 5),
        ]
        .iter()
        .enumerate()
        {
            let dev = Device::Cpu;
            let x = random(&[n, inputs], case as u64);
            let w = random(&[outputs, inputs], 10 + case as u64);
            let b = random(&[outputs], 20 + case as u64);
            let y = linear(
                &Tensor::from_vec(x.clone(), (n, inputs), &dev).unwrap(),
                &Tensor::from_vec(w.clone(), (outputs, inputs), &dev).unwrap(),
                &Tensor::from_vec(b.clone(), outputs, &dev).unwrap(),
            )
            .unwrap();
            let got = y.to_vec2::<f32>().unwrap();
            for (r, row) in got.iter().enumerate() {
                for (o, &g) in row.iter().enumerate() {
                    let want: f64 = b[o] as f64
                        + (0..inputs)
                            .map(|i| x[r * inputs + i] as f64 * w[o * inputs + i] as f64)
                            .sum::<f64>();
                    assert!(
                        (g as f64 - want).abs() < 1e-4,
                        "case {case} ({r}, {o}): {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn max_pool_matches_a_direct_loop() {
        let mut r = Rng::new(1);
        let (h, w) = (7, 6);
        let x: Vec<f32> = (0..2 * h * w).map(|_| r.uniform() as f32).collect();
        let t = Tensor::from_vec(x.clone(), (1, 2, h, w), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2(&t).unwrap();
        let (ho, wo) = (4, 3);
        assert_eq!(y.dims(), &[1, 2, ho, wo]);
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for c in 0..2 {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut m = 0f32;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                m = m.max(x[c * h * w + iy as usize * w + ix as usize]);
                            }
                        }
                    }
                    assert_eq!(y[c * ho * wo + oy * wo + ox], m);
                }
            }
        }
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let mut r = Rng::new(2);
        // Distinct values, so that no window has a tie (where the max has no derivative).
        let mut x: Vec<f32> = (0..2 * 9 * 8).map(|i| i as f32 * 0.37).collect();
        r.shuffle(&mut x);
        finite_difference_check(max_pool_3x3_s2, x, &[1, 2, 9, 8]);
    }

    #[test]
    fn add_relu_matches_candle_and_its_gradient_finite_differences() {
        let mut r = Rng::new(6);
        let b: Vec<f32> = (0..40).map(|_| r.range(-1.0, 1.0) as f32).collect();
        // Sums at least 0.1 from zero, where the ReLU has no derivative.
        let a: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(i, &b)| r.range(0.1, 1.0) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 } - b)
            .collect();
        let dev = Device::Cpu;
        let bt = Tensor::from_vec(b, (2, 20), &dev).unwrap();
        let at = Tensor::from_vec(a.clone(), (2, 20), &dev).unwrap();
        let ours = add_relu(&at, &bt).unwrap().to_vec2::<f32>().unwrap();
        let theirs = (&at + &bt)
            .unwrap()
            .relu()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(ours, theirs);
        finite_difference_check(|t| add_relu(t, &bt), a, &[2, 20]);
    }

    #[test]
    fn batch_norm_gradient_matches_finite_differences_and_updates_stats() {
        let map = VarMap::new();
        let dev = Device::Cpu;
        let p = Params::new(&map, &dev, 3);
        let bn = BatchNorm2d::new(&p, "bn", 3).unwrap();
        let mut r = Rng::new(4);
        let x: Vec<f32> = (0..3 * 4 * 2 * 2)
            .map(|_| r.normal() as f32 * 2.0 + 1.0)
            .collect();
        // Channel-major (C, N, H, W), with and without the fused ReLU.
        finite_difference_check(|t| bn.forward_t(t, true, false), x.clone(), &[3, 4, 2, 2]);
        finite_difference_check(|t| bn.forward_t(t, true, true), x.clone(), &[3, 4, 2, 2]);
        // The store sees the updated running mean (it moved from 0 towards ~1).
        let stat = |name: &str| {
            map.data().lock().unwrap()[name]
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap()
        };
        let saved = stat("bn.running_mean");
        assert!(saved.iter().all(|m| *m > 0.05), "{saved:?}");
        // Evaluation mode normalises with the running statistics, scales and shifts by
        // the weight and bias, in one fused pass, and passes gradients to its input.
        let (weight, bias) = ([1.5f32, -0.5, 2.0], [0.25f32, -1.0, 0.5]);
        for (name, values) in [("bn.weight", weight), ("bn.bias", bias)] {
            map.data().lock().unwrap()[name]
                .set(&Tensor::new(&values, &dev).unwrap())
                .unwrap();
        }
        let xt = Tensor::from_vec(x.clone(), (3, 4, 2, 2), &dev).unwrap();
        let (mean, var) = (stat("bn.running_mean"), stat("bn.running_var"));
        for relu in [false, true] {
            let y = bn.forward_t(&xt, false, relu).unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (&got, &xv)) in y.iter().zip(&x).enumerate() {
                let c = i / 16;
                let mut want = (xv - mean[c]) / (var[c] + 1e-5).sqrt() * weight[c] + bias[c];
                if relu {
                    want = want.max(0.0);
                }
                assert!((got - want).abs() < 1e-5, "element {i}: {got} vs {want}");
            }
            finite_difference_check(|t| bn.forward_t(t, false, relu), x.clone(), &[3, 4, 2, 2]);
        }
    }
}
