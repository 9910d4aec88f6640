//! Trainable layers for the CNN, on candle, where candle's own do not train correctly:
//! a batch norm whose running statistics live in the parameter store (candle-nn's copies
//! them into a private `Var`, so they are never saved), and a 3x3 stride-2 max-pool
//! built from strided slices, which has a gradient (candle's `max_pool2d` has none when
//! kernel != stride).

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Init, VarMap};

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

    /// A variable filled by `f(rng)` per element, created once.
    fn var_with(&self, shape: &[usize], name: &str, f: impl Fn(&mut Rng) -> f64) -> Result<Var> {
        let path = self.path(name);
        let n: usize = shape.iter().product();
        // A stream per tensor name: adding a layer leaves the others' values unchanged.
        let mut rng = Rng::new(super::rng::mix(self.seed ^ super::rng::name_seed(&path)));
        let values: Vec<f32> = (0..n).map(|_| f(&mut rng) as f32).collect();
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
        self.var_with(shape, name, |_| value)
    }

    /// Kaiming normal with fan-out (torchvision's ResNet convolution init).
    pub fn kaiming_fan_out(&self, shape: &[usize], name: &str) -> Result<Var> {
        let fan_out = shape[0] * shape[2..].iter().product::<usize>();
        let std = (2.0 / fan_out as f64).sqrt();
        self.var_with(shape, name, |r| r.normal() * std)
    }

    /// Uniform in ±1/sqrt(fan_in) (PyTorch's `nn.Linear` init).
    pub fn linear_uniform(&self, shape: &[usize], name: &str, fan_in: usize) -> Result<Var> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        self.var_with(shape, name, |r| r.range(-bound, bound))
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

    /// Apply to `(N, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }
}

/// Batch normalisation over `(N, C, H, W)` with running statistics in the store.
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

    /// In training mode, normalise with the batch's statistics and update the running
    /// ones (the variance unbiased, as PyTorch does); otherwise use the running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let (mean, var) = if train {
            let n = (x.elem_count() / c) as f64;
            let mean = x
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(2)?
                .mean_keepdim(0)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred
                .sqr()?
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(2)?
                .mean_keepdim(0)?;
            let m = self.momentum;
            let new_mean = ((self.running_mean.as_tensor().detach() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
            let new_var = ((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().reshape((1, c, 1, 1))?,
                self.running_var.as_tensor().reshape((1, c, 1, 1))?,
            )
        };
        let scale = (var + self.eps)?.sqrt()?;
        x.broadcast_sub(&mean)?
            .broadcast_div(&scale)?
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// Every `stride`-th element of dimension `dim`, starting at `start`, `count` of them.
fn strided(x: &Tensor, dim: usize, start: usize, count: usize, stride: usize) -> Result<Tensor> {
    let span = x.narrow(dim, start, (count - 1) * stride + 1)?;
    let padded_len = count * stride;
    let span = if stride > 1 {
        // Pad to a multiple of the stride, fold it into a new axis, keep index 0.
        let extra = padded_len - ((count - 1) * stride + 1);
        let span = span.pad_with_zeros(dim, 0, extra)?;
        let mut dims = span.dims().to_vec();
        dims[dim] = count;
        dims.insert(dim + 1, stride);
        span.reshape(dims)?
            .narrow(dim + 1, 0, 1)?
            .squeeze(dim + 1)?
    } else {
        span
    };
    Ok(span)
}

/// 3x3 max-pool with stride 2 and padding 1 on non-negative input (it follows a ReLU in
/// ResNet, so zero padding equals PyTorch's -inf padding), with a gradient.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = strided(&padded, 2, dy, ho, 2)?;
        for dx in 0..3 {
            let win = strided(&rows, 3, dx, wo, 2)?;
            out = Some(match out {
                None => win,
                Some(o) => o.maximum(&win)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty pool".into()))
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
    fn batch_norm_gradient_matches_finite_differences_and_updates_stats() {
        let map = VarMap::new();
        let dev = Device::Cpu;
        let p = Params::new(&map, &dev, 3);
        let bn = BatchNorm2d::new(&p, "bn", 3).unwrap();
        let mut r = Rng::new(4);
        let x: Vec<f32> = (0..4 * 3 * 2 * 2)
            .map(|_| r.normal() as f32 * 2.0 + 1.0)
            .collect();
        finite_difference_check(|t| bn.forward_t(t, true), x, &[4, 3, 2, 2]);
        // The store sees the updated running mean (it moved from 0 towards ~1).
        let saved = map.data().lock().unwrap()["bn.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert!(saved.iter().all(|m| *m > 0.05), "{saved:?}");
    }
}
