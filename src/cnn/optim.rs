//! Optimisers with state that can be saved and resumed: SGD with momentum and weight
//! decay (candle's SGD has neither), and AdamW (decoupled weight decay), following
//! PyTorch's `torch.optim.SGD` and `torch.optim.AdamW` update rules.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum 0.9.
    Sgd,
    /// AdamW (0.9, 0.999, eps 1e-8).
    Adamw,
}

/// A named trainable parameter.
pub struct Param {
    /// Its name in the parameter store.
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// An optimiser over named parameters.
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    betas: (f64, f64),
    eps: f64,
    step: u64,
    /// First moments (or SGD momentum buffers) by parameter name.
    m: HashMap<String, Tensor>,
    /// Second moments (AdamW) by parameter name.
    v: HashMap<String, Tensor>,
}

impl Optimizer {
    /// A new optimiser.
    pub fn new(kind: OptimizerKind, params: Vec<Param>, lr: f64, weight_decay: f64) -> Self {
        Self {
            kind,
            params,
            lr,
            weight_decay,
            momentum: 0.9,
            betas: (0.9, 0.999),
            eps: 1e-8,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// Set the learning rate (for the schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Apply one update from `grads`. Parameters without a gradient are left alone.
    ///
    /// Each update is a few fused passes that write the parameter and its state in place
    /// (a chain of candle ops allocated a new tensor per operation and took twice as long).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        // Per-step coefficients, rounded from f64 as PyTorch's Python floats are.
        let (lr, wd) = (self.lr as f32, self.weight_decay as f32);
        let mu = if t == 1 { 0.0 } else { self.momentum as f32 };
        let (b1, b2) = self.betas;
        let (a1, a2, b2f) = ((1.0 - b1) as f32, (1.0 - b2) as f32, b2 as f32);
        // In PyTorch's order: step = lr / (1 - b1^t), denominator sqrt(v) / sqrt(1 - b2^t) + eps.
        let step = (self.lr / (1.0 - b1.powi(t))) as f32;
        let c2 = (1.0 - b2.powi(t)).sqrt() as f32;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let eps = self.eps as f32;
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = &g.contiguous()?;
            let w = p.var.as_tensor();
            let m = state_for(&mut self.m, &p.name, w)?;
            if super::portable::portable(w) {
                // Off the CPU: the same update as a chain of candle operations, whose
                // results replace the state and the parameter's values.
                let (new_m, new_w) = match self.kind {
                    OptimizerKind::Sgd => {
                        let b = ((&m * f64::from(mu))? + (g + (w * f64::from(wd))?)?)?;
                        let new_w = (w - (&b * f64::from(lr))?)?;
                        (b, new_w)
                    }
                    OptimizerKind::Adamw => {
                        let v = state_for(&mut self.v, &p.name, w)?;
                        let m = (&m + ((g - &m)? * f64::from(a1))?)?;
                        let v = ((v * f64::from(b2f))? + (g.sqr()? * f64::from(a2))?)?;
                        let denominator = ((v.sqrt()? / f64::from(c2))? + f64::from(eps))?;
                        let update = ((&m / denominator)? * f64::from(step))?;
                        self.v.insert(p.name.clone(), v);
                        (m, ((w * f64::from(decay))? - update)?)
                    }
                };
                self.m.insert(p.name.clone(), new_m);
                p.var.set(&new_w)?;
                continue;
            }
            match self.kind {
                OptimizerKind::Sgd => {
                    // PyTorch: g += wd * w; buf = momentum * buf + g; w -= lr * buf.
                    m.inplace_op3(
                        g,
                        w,
                        &Zip(|b: &mut f32, [g, w]: [f32; 2]| {
                            *b = mu * *b + g + wd * w;
                        }),
                    )?;
                    w.inplace_op2(&m, &Zip(|w: &mut f32, [b]: [f32; 1]| *w -= lr * b))?;
                }
                OptimizerKind::Adamw => {
                    let v = state_for(&mut self.v, &p.name, w)?;
                    m.inplace_op2(
                        g,
                        &Zip(|m: &mut f32, [g]: [f32; 1]| {
                            *m += a1 * (g - *m);
                        }),
                    )?;
                    v.inplace_op2(
                        g,
                        &Zip(|v: &mut f32, [g]: [f32; 1]| {
                            *v = b2f * *v + a2 * (g * g);
                        }),
                    )?;
                    w.inplace_op3(
                        &m,
                        &v,
                        &Zip(|w: &mut f32, [m, v]: [f32; 2]| {
                            *w = *w * decay - step * (m / (v.sqrt() / c2 + eps));
                        }),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (for a safetensors file).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Restore the state saved by [`Optimizer::state`] after `steps` steps, each moment
    /// moved to its parameter's device. Moments of parameters this optimiser does not hold
    /// are ignored.
    pub fn restore(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        self.step = steps;
        for (k, t) in state {
            let (map, name) = match (k.strip_prefix("m."), k.strip_prefix("v.")) {
                (Some(name), _) => (&mut self.m, name),
                (None, Some(name)) => (&mut self.v, name),
                (None, None) => continue,
            };
            if let Some(p) = self.params.iter().find(|p| p.name == name) {
                map.insert(name.to_string(), t.to_device(p.var.device())?);
            }
        }
        Ok(())
    }
}

/// The state tensor of `name`, created as zeros shaped like `like` on first use.
fn state_for(map: &mut HashMap<String, Tensor>, name: &str, like: &Tensor) -> Result<Tensor> {
    if let Some(t) = map.get(name) {
        return Ok(t.clone());
    }
    let t = like.zeros_like()?;
    map.insert(name.to_string(), t.clone());
    Ok(t)
}

/// An elementwise update of a contiguous f32 tensor in place from `N` others of the same
/// length: `f(&mut dst[i], [src_0[i], ...])`, in parallel (an in-place op with one or
/// two sources).
struct Zip<F>(F);

fn zip_update<const N: usize>(
    f: &(impl Fn(&mut f32, [f32; N]) + Sync),
    dst: &mut CpuStorage,
    dst_l: &Layout,
    srcs: [(&CpuStorage, &Layout); N],
) -> Result<()> {
    let (a, b) = dst_l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("optimizer: parameter not contiguous".into()))?;
    let CpuStorage::F32(dst) = dst else {
        candle_core::bail!("optimizer: parameters must be f32")
    };
    let dst = &mut dst[a..b];
    let mut inputs = Vec::with_capacity(N);
    for (s, l) in srcs {
        match l.contiguous_offsets() {
            Some((a, b)) if b - a == dst.len() => inputs.push(&s.as_slice::<f32>()?[a..b]),
            _ => candle_core::bail!("optimizer: state does not match its parameter"),
        }
    }
    const CHUNK: usize = 1 << 14;
    dst.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let ins: [&[f32]; N] = std::array::from_fn(|k| &inputs[k][c * CHUNK..][..out.len()]);
        for (i, o) in out.iter_mut().enumerate() {
            f(o, std::array::from_fn(|k| ins[k][i]));
        }
    });
    Ok(())
}

impl<F: Fn(&mut f32, [f32; 1]) + Sync> InplaceOp2 for Zip<F> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        zip_update(&self.0, s1, l1, [(s2, l2)])
    }
}

impl<F: Fn(&mut f32, [f32; 2]) + Sync> InplaceOp3 for Zip<F> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        zip_update(&self.0, s1, l1, [(s2, l2), (s3, l3)])
    }
}

/// Learning rate at `step` of `total`: linear warm-up over `warmup` steps from lr/100,
/// then cosine decay to 0.
pub fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        let f = (step + 1) as f64 / warmup as f64;
        return base * (0.01 + 0.99 * f);
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quadratic_descends(kind: OptimizerKind, lr: f64) {
        let var = Var::from_vec(vec![3.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(
            kind,
            vec![Param {
                name: "w".into(),
                var: var.clone(),
            }],
            lr,
            0.0,
        );
        for _ in 0..200 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!(w.iter().all(|x| x.abs() < 0.05), "{kind:?}: {w:?}");
    }

    #[test]
    fn both_optimisers_minimise_a_quadratic() {
        quadratic_descends(OptimizerKind::Sgd, 0.05);
        quadratic_descends(OptimizerKind::Adamw, 0.05);
    }

    #[test]
    fn sgd_step_matches_pytorch_by_hand() {
        // w = 1, g = 2w = 2, wd 0.1: g' = 2.1; buf = 2.1; w = 1 - 0.1 * 2.1 = 0.79.
        // Step 2: g' = 1.58 + 0.079 = 1.659; buf = 0.9 * 2.1 + 1.659 = 3.549; w = 0.79 - 0.3549.
        let var = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(
            OptimizerKind::Sgd,
            vec![Param {
                name: "w".into(),
                var: var.clone(),
            }],
            0.1,
            0.1,
        );
        for _ in 0..2 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let w = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((w - (0.79 - 0.3549)).abs() < 1e-5, "{w}");
    }

    /// Three steps on `w²` from `w = 1` with lr 0.1 and weight decay 0.1, against the
    /// values PyTorch 2.x prints for the same (`torch.optim.SGD(momentum=0.9)` and
    /// `torch.optim.AdamW`).
    #[test]
    fn three_steps_match_pytorch() {
        for (kind, expected) in [
            (OptimizerKind::Sgd, [0.79, 0.4351, 0.024_319_04]),
            (OptimizerKind::Adamw, [0.89, 0.781_571_9, 0.675_101_3]),
        ] {
            let var = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).unwrap();
            let param = Param {
                name: "w".into(),
                var: var.clone(),
            };
            let mut opt = Optimizer::new(kind, vec![param], 0.1, 0.1);
            for want in expected {
                let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
                let w = var.as_tensor().to_vec1::<f32>().unwrap()[0];
                assert!((w - want).abs() < 1e-6, "{kind:?}: {w} vs {want}");
            }
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!(cosine_lr(1.0, 0, 100, 10) < 0.2);
        assert!((cosine_lr(1.0, 9, 100, 10) - 1.0).abs() < 1e-9);
        assert!((cosine_lr(1.0, 10, 100, 10) - 1.0).abs() < 1e-9);
        assert!(cosine_lr(1.0, 55, 100, 10) < 0.6);
        assert!(cosine_lr(1.0, 99, 100, 10) < 0.01);
    }
}
