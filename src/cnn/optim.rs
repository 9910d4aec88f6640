//! Optimisers with state that can be saved and resumed: SGD with momentum and weight
//! decay (candle's SGD has neither), and AdamW (decoupled weight decay), following
//! PyTorch's `torch.optim.SGD` and `torch.optim.AdamW` update rules.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

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
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: the state must not keep this step's graph alive into the next.
            let g = &g.detach();
            let w = &p.var.as_tensor().detach();
            match self.kind {
                OptimizerKind::Sgd => {
                    // PyTorch: g += wd * w; buf = momentum * buf + g; w -= lr * buf.
                    let g = (g + (w * self.weight_decay)?)?;
                    let buf = match self.m.get(&p.name) {
                        Some(b) => ((b * self.momentum)? + &g)?,
                        None => g,
                    };
                    p.var.set(&(w - (&buf * self.lr)?)?)?;
                    self.m.insert(p.name.clone(), buf.detach());
                }
                OptimizerKind::Adamw => {
                    let (b1, b2) = self.betas;
                    let decayed = (w * (1.0 - self.lr * self.weight_decay))?;
                    let m = match self.m.get(&p.name) {
                        Some(m) => ((m * b1)? + (g * (1.0 - b1))?)?,
                        None => (g * (1.0 - b1))?,
                    };
                    let v = match self.v.get(&p.name) {
                        Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let m_hat = (&m / (1.0 - b1.powi(t)))?;
                    let v_hat = (&v / (1.0 - b2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
                    p.var.set(&(decayed - (update * self.lr)?)?)?;
                    self.m.insert(p.name.clone(), m.detach());
                    self.v.insert(p.name.clone(), v.detach());
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

    /// Restore the state saved by [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: HashMap<String, Tensor>, steps: u64) {
        self.step = steps;
        for (k, t) in state {
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.to_string(), t);
            }
        }
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

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!(cosine_lr(1.0, 0, 100, 10) < 0.2);
        assert!((cosine_lr(1.0, 9, 100, 10) - 1.0).abs() < 1e-9);
        assert!((cosine_lr(1.0, 10, 100, 10) - 1.0).abs() < 1e-9);
        assert!(cosine_lr(1.0, 55, 100, 10) < 0.6);
        assert!(cosine_lr(1.0, 99, 100, 10) < 0.01);
    }
}
