//! The CNN's layers on candle's own operations, for devices other than the CPU (CUDA).
//!
//! On the CPU the layers are custom ops with CPU code only (`conv.rs`, `layers.rs`,
//! `optim.rs`: direct convolutions, fused batch norm, max-pool with a gradient, in-place
//! optimiser updates). Elsewhere each layer is the same arithmetic as a chain of candle
//! operations, which candle runs on any device and differentiates itself. The tests run
//! both on the CPU and compare them.

use std::cell::Cell;

use candle_core::{Result, Tensor};

thread_local! {
    /// Set by tests: run the portable layers on the CPU too, on this thread.
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Whether layers on `x` run on candle's own operations: off the CPU (the custom ops
/// have no code there), or on the CPU where a test asked for it.
pub(crate) fn portable(x: &Tensor) -> bool {
    !x.device().is_cpu() || FORCED.with(Cell::get)
}

/// `f` with the portable layers on the CPU (on this thread), to compare them with the
/// CPU kernels.
#[cfg(test)]
pub(crate) fn forced<R>(f: impl FnOnce() -> R) -> R {
    FORCED.with(|c| c.set(true));
    let result = f();
    FORCED.with(|c| c.set(false));
    result
}

/// Convolution of channel-major `x (C, N, H, W)` with `weight (Cout, C, k, k)`, no
/// bias: `(Cout, N, Ho, Wo)`, through candle's `conv2d` on `(N, C, H, W)`.
pub(crate) fn conv2d_cnhw(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    x.transpose(0, 1)?
        .contiguous()?
        .conv2d(&weight.contiguous()?, pad, stride, 1, 1)?
        .transpose(0, 1)?
        .contiguous()
}

/// `x (N, in) · weightᵀ + bias` with `weight (out, in)`.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// `relu(a + b)`.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a + b)?.relu()
}

/// Max-pool over the last two dimensions with a `k`-window, `stride` and `pad`, as the
/// maximum of the `k * k` strided shifts of the input padded with -inf (padding never
/// wins), which candle differentiates. (candle's `max_pool2d` has no gradient when
/// `k != stride`, and a wrong one when a side is not a multiple of the stride: it maps
/// gradients back by nearest-neighbour upsampling.)
pub(crate) fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (a, b, h, w) = x.dims4()?;
    let (ho, wo) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    // Every shift reads `stride * ho` rows from row `dy < k`: pad to that extent.
    let (hp, wp) = (k - 1 + stride * ho, k - 1 + stride * wo);
    let padded = pad_with(x, f32::NEG_INFINITY, (pad, hp - h - pad), 2)?;
    let padded = pad_with(&padded, f32::NEG_INFINITY, (pad, wp - w - pad), 3)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let shifted = padded
                .narrow(2, dy, stride * ho)?
                .narrow(3, dx, stride * wo)?
                .reshape((a, b, ho, stride, wo, stride))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((a, b, ho, wo))?;
            out = Some(match out {
                Some(m) => m.maximum(&shifted)?,
                None => shifted,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max-pool: an empty window".into()))
}

/// `x` with `before` and `after` entries of `value` added along `dim` (`after` may be
/// negative in effect: a shorter tensor is cut).
fn pad_with(x: &Tensor, value: f32, (before, after): (usize, usize), dim: usize) -> Result<Tensor> {
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::full(value, dims, x.device())
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// Training-mode batch norm of channel-major `x (C, N, H, W)` with the batch's
/// statistics, then a ReLU if `relu`: the output, and the statistics per channel (mean,
/// biased variance), detached.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(0)?;
    let flat = x.reshape((c, ()))?;
    let mean = flat.mean_keepdim(1)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(1)?;
    let scale = (var.affine(1.0, eps)?.sqrt()?.recip()? * weight.reshape((c, 1))?)?;
    let y = centered
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.reshape((c, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((
        y.reshape(x.shape())?,
        mean.flatten_all()?.detach(),
        var.flatten_all()?.detach(),
    ))
}

/// Evaluation-mode batch norm of `x (C, N, H, W)` with running statistics, then a ReLU
/// if `relu`.
pub(crate) fn batch_norm_eval(
    x: &Tensor,
    [mean, var, weight, bias]: [&Tensor; 4],
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = x.dim(0)?;
    let scale = (var.affine(1.0, eps)?.sqrt()?.recip()? * weight)?;
    let shift = (bias - (mean * &scale)?)?;
    let y = x
        .broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
        .broadcast_add(&shift.reshape((c, 1, 1, 1))?)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cnn::conv::tests::random;
    use crate::cnn::layers;
    use candle_core::{Device, Var};

    /// The largest difference between two tensors, relative to the larger's scale.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = a.iter().chain(&b).fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// `f`'s output and its gradient with respect to each input, with the CPU kernels and
    /// with the portable layers, compared.
    fn same_both_ways(
        inputs: &[(&[usize], u64)],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        tolerance: f32,
    ) {
        let run = || {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|&(shape, seed)| {
                    Var::from_vec(random(shape, seed), shape, &Device::Cpu).unwrap()
                })
                .collect();
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&tensors).unwrap();
            // A weighted sum, so that every output's gradient differs.
            let weights = Tensor::from_vec(random(y.dims(), 99), y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            (y, g)
        };
        let (y_cpu, g_cpu) = run();
        let (y_portable, g_portable) = forced(run);
        let d = rel_diff(&y_cpu, &y_portable);
        assert!(d <= tolerance, "outputs differ by {d}");
        for (i, (a, b)) in g_cpu.iter().zip(&g_portable).enumerate() {
            let d = rel_diff(a, b);
            assert!(d <= tolerance, "gradient {i} differs by {d}");
        }
    }

    #[test]
    fn convolutions_match_the_cpu_kernels() {
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)] {
            same_both_ways(
                &[(&[5, 2, 13, 11], 1), (&[6, 5, k, k], 2)],
                |t| crate::cnn::conv::conv2d_cnhw(&t[0], &t[1], stride, pad, true),
                1e-5,
            );
        }
    }

    #[test]
    fn linear_and_add_relu_match_the_cpu_kernels() {
        same_both_ways(
            &[(&[4, 9], 1), (&[7, 9], 2), (&[7], 3)],
            |t| layers::linear(&t[0], &t[1], &t[2]),
            1e-5,
        );
        same_both_ways(
            &[(&[3, 2, 5, 5], 1), (&[3, 2, 5, 5], 2)],
            |t| layers::add_relu(&t[0], &t[1]),
            0.0,
        );
    }

    /// A small ResNet18's training step on seeded pictures (forward, loss, gradients,
    /// one SGD step), then an evaluation-mode pass: the logits, the loss, each
    /// parameter's gradient, and every parameter and running statistic after the step.
    fn resnet_step() -> (Vec<Tensor>, Vec<(String, Tensor)>) {
        use crate::cnn::optim::{Optimizer, OptimizerKind, Param};
        let map = candle_nn::VarMap::new();
        let model = crate::cnn::ResNet18::new(&map, &Device::Cpu, 5, 3).unwrap();
        let vars: Vec<(String, Var)> = map
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        let params = vars
            .iter()
            .filter(|(name, _)| !name.contains("running"))
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
            })
            .collect();
        let mut opt = Optimizer::new(OptimizerKind::Sgd, params, 0.05, 1e-4);
        let x = Tensor::from_vec(random(&[8, 3, 48, 48], 5), (8, 3, 48, 48), &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 3, 1, 4, 2, 2, 0, 1], &Device::Cpu).unwrap();
        let logits = model.forward_t(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        let mut named: Vec<(String, Tensor)> = vars
            .iter()
            .filter_map(|(n, v)| Some((format!("grad {n}"), grads.get(v.as_tensor())?.clone())))
            .collect();
        opt.step(&grads).unwrap();
        let eval = model.forward_t(&x, false).unwrap();
        named.extend(
            vars.iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())),
        );
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (vec![logits, loss, eval], named)
    }

    #[test]
    fn resnet18_trains_the_same_on_candle_operations() {
        let (seen_cpu, named_cpu) = resnet_step();
        let (seen_portable, named_portable) = forced(resnet_step);
        for (i, (a, b)) in seen_cpu.iter().zip(&seen_portable).enumerate() {
            let d = rel_diff(a, b);
            assert!(
                d < 1e-4,
                "output {i} (logits, loss, logits after) differs by {d}"
            );
        }
        // 62 parameters with their gradients and 40 running statistics.
        assert_eq!(named_cpu.len(), 2 * 62 + 40);
        assert_eq!(named_cpu.len(), named_portable.len());
        for ((name, a), (_, b)) in named_cpu.iter().zip(&named_portable) {
            // Gradients through training-mode batch norms differ in rounding
            // (cancellations in the variance's gradient): 1e-3 of the tensor's largest.
            let d = rel_diff(a, b);
            assert!(d < 1e-3, "{name} differs by {d}");
        }
        let map = candle_nn::VarMap::new();
        crate::cnn::ResNet18::new(&map, &Device::Cpu, 5, 3).unwrap();
        let initial = map.data().lock().unwrap();
        for name in ["conv1.weight", "layer4.1.bn2.running_var"] {
            let after = &named_cpu.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(
                rel_diff(after, initial[name].as_tensor()) > 1e-4,
                "{name} unchanged"
            );
        }
    }

    #[test]
    fn optimizer_updates_match_the_cpu_kernels() {
        use crate::cnn::optim::{Optimizer, OptimizerKind, Param};
        for kind in [OptimizerKind::Adamw, OptimizerKind::Sgd] {
            let run = || {
                let var = Var::from_vec(random(&[300], 1), 300, &Device::Cpu).unwrap();
                let param = Param {
                    name: "w".into(),
                    var: var.clone(),
                };
                let mut opt = Optimizer::new(kind, vec![param], 0.01, 0.1);
                for step in 0..3 {
                    // A loss whose gradient is `g` (seeded per step), away from zero.
                    let g = Tensor::from_vec(random(&[300], 10 + step), 300, &Device::Cpu).unwrap();
                    let loss = (var.as_tensor() * g).unwrap().sum_all().unwrap();
                    opt.step(&loss.backward().unwrap()).unwrap();
                }
                let state = opt.state();
                (
                    var.as_tensor().copy().unwrap(),
                    state["m.w"].copy().unwrap(),
                )
            };
            let (w_cpu, m_cpu) = run();
            let (w_portable, m_portable) = forced(run);
            let (dw, dm) = (rel_diff(&w_cpu, &w_portable), rel_diff(&m_cpu, &m_portable));
            assert!(
                dw < 1e-6 && dm < 1e-6,
                "{kind:?}: weights differ by {dw}, moments by {dm}"
            );
        }
    }

    #[test]
    fn max_pools_match_the_cpu_kernels() {
        for (k, stride, pad, side) in [(3, 2, 1, 9), (3, 2, 1, 8), (2, 2, 0, 8)] {
            same_both_ways(
                &[(&[3, 2, side, side + 1], 4)],
                |t| layers::max_pool(&t[0], k, stride, pad),
                0.0,
            );
        }
    }
}
