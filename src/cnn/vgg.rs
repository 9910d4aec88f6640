//! VGG16 (Simonyan and Zisserman 2015) with torchvision's layout and parameter names,
//! trainable: thirteen 3x3 convolutions with bias and ReLU, five 2x2 max-pools, an
//! adaptive average pool to 7x7 and a three-layer classifier with dropout.
//!
//! Names: `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` and
//! `classifier.{0,3,6}.{weight,bias}`. timm's `vgg16.tv_in1k` (torchvision's
//! IMAGENET1K_V1 weights, its classifier stored as 7x7 and 1x1 convolutions named
//! `pre_logits.fc1`, `pre_logits.fc2` and `head.fc`) loads too.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;

use super::conv::{conv2d_cnhw, swap_batch_and_channels};
use super::layers::{for_mode, linear, max_pool, Params};
use super::rng::Rng;

/// Channels of each convolution; `None` is a 2x2 max-pool (torchvision's "D" config).
const CONFIG: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];
/// Width of the features that the last classifier layer reads.
pub const FEATURES: usize = 4096;
/// The adaptive average pool's output side.
const POOLED: usize = 7;
/// Dropout probability of the classifier (torchvision's default).
pub const DROPOUT: f64 = 0.5;

#[derive(Debug)]
struct ConvLayer {
    weight: Tensor,
    bias: Tensor,
    pool_after: bool,
}

/// VGG16 with a classifier for `num_classes`.
#[derive(Debug)]
pub struct Vgg16 {
    convs: Vec<ConvLayer>,
    /// (weight, bias) of `classifier.0`, `classifier.3`, `classifier.6`.
    fc: Vec<(Tensor, Tensor)>,
    num_classes: usize,
    seed: u64,
    /// Dropout probability in training mode.
    dropout: f64,
    /// The training step, which seeds dropout (so a resumed run draws the same masks).
    step: AtomicU64,
}

impl Vgg16 {
    /// A new model whose parameters live in `map`, initialised as torchvision does
    /// (Kaiming normal fan-out convolutions with zero bias, N(0, 0.01) linear layers with
    /// zero bias) from `seed`.
    pub fn new(map: &VarMap, device: &Device, num_classes: usize, seed: u64) -> Result<Self> {
        let p = Params::new(map, device, seed);
        let mut convs = Vec::new();
        let (mut cin, mut index) = (3, 0);
        for (i, layer) in CONFIG.iter().enumerate() {
            let Some(cout) = *layer else {
                index += 1;
                continue;
            };
            let f = p.pp("features").pp(&index.to_string());
            convs.push(ConvLayer {
                weight: f
                    .kaiming_fan_out(&[cout, cin, 3, 3], "weight")?
                    .as_tensor()
                    .clone(),
                bias: f.constant(&[cout], "bias", 0.0)?.as_tensor().clone(),
                pool_after: CONFIG.get(i + 1) == Some(&None),
            });
            cin = cout;
            index += 2;
        }
        let c = p.pp("classifier");
        let mut fc = Vec::new();
        for (i, (out, inp)) in [
            (FEATURES, 512 * POOLED * POOLED),
            (FEATURES, FEATURES),
            (num_classes, FEATURES),
        ]
        .into_iter()
        .enumerate()
        {
            let l = c.pp(&(3 * i).to_string());
            fc.push((
                l.normal(&[out, inp], "weight", 0.01)?.as_tensor().clone(),
                l.constant(&[out], "bias", 0.0)?.as_tensor().clone(),
            ));
        }
        Ok(Self {
            convs,
            fc,
            num_classes,
            seed,
            dropout: DROPOUT,
            step: AtomicU64::new(0),
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Change the dropout probability (0 turns it off, as for comparing gradients with a
    /// reference).
    pub fn set_dropout(&mut self, p: f64) {
        self.dropout = p.clamp(0.0, 0.99);
    }

    /// Set the training step that seeds the next dropout masks.
    pub fn begin_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// The 4096 features after `classifier.4` (ReLU) of normalised images `(N, 3, S, S)`;
    /// dropout is applied after both hidden layers in training mode.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut x = swap_batch_and_channels(x)?;
        for layer in &self.convs {
            let (w, b) = (for_mode(&layer.weight, train), for_mode(&layer.bias, train));
            let c = w.dim(0)?;
            x = conv2d_cnhw(&x, &w, 1, 1, train)?
                .broadcast_add(&b.reshape((c, 1, 1, 1))?)?
                .relu()?;
            if layer.pool_after {
                x = max_pool(&x, 2, 2, 0)?;
            }
        }
        let x = adaptive_avg_pool(&x, POOLED)?;
        // (C, N, 7, 7) to torchvision's flattening order (N, C·7·7).
        let x = x.transpose(0, 1)?.contiguous()?.reshape((n, ()))?;
        let step = self.step.load(Ordering::Relaxed);
        let mut h = x;
        for (i, (w, b)) in self.fc[..2].iter().enumerate() {
            let (w, b) = (for_mode(w, train), for_mode(b, train));
            h = linear(&h, &w, &b)?.relu()?;
            if train && self.dropout > 0.0 {
                h = dropout(&h, self.dropout, (self.seed, step, i as u64))?;
            }
        }
        Ok(h)
    }

    /// The last classifier layer applied to features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        let (w, b) = &self.fc[2];
        linear(features, w, b)
    }

    /// Logits `(N, num_classes)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features(x, train)?)
    }
}

/// torchvision's `AdaptiveAvgPool2d(out)` of `(A, B, H, W)`: window `i` covers
/// `floor(i·H/out)..ceil((i+1)·H/out)`, as one matrix product (so it has a gradient).
fn adaptive_avg_pool(x: &Tensor, out: usize) -> Result<Tensor> {
    let (a, b, h, w) = x.dims4()?;
    let windows = |n: usize| -> Vec<(usize, usize)> {
        (0..out)
            .map(|i| (i * n / out, ((i + 1) * n).div_ceil(out)))
            .collect()
    };
    let (rows, cols) = (windows(h), windows(w));
    let mut pool = vec![0f32; h * w * out * out];
    for (oy, &(y0, y1)) in rows.iter().enumerate() {
        for (ox, &(x0, x1)) in cols.iter().enumerate() {
            let share = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
            for y in y0..y1 {
                for xx in x0..x1 {
                    pool[(y * w + xx) * out * out + oy * out + ox] = share;
                }
            }
        }
    }
    let pool = Tensor::from_vec(pool, (h * w, out * out), x.device())?;
    x.reshape((a * b, h * w))?
        .matmul(&pool)?
        .reshape((a, b, out, out))
}

/// Inverted dropout with probability `p`, its mask drawn from `(seed, step, layer)`.
fn dropout(x: &Tensor, p: f64, (seed, step, layer): (u64, u64, u64)) -> Result<Tensor> {
    let stream =
        super::rng::mix(seed ^ super::rng::mix(step.wrapping_mul(31).wrapping_add(layer + 1)));
    let mut rng = Rng::new(stream);
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.uniform() < p { 0.0 } else { keep })
        .collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
}

/// Whether a parameter belongs to the last classifier layer (replaced for a new task).
pub fn is_head(name: &str) -> bool {
    name.starts_with("classifier.6.")
}

/// timm's names for torchvision's classifier layers.
const TIMM_NAMES: [(&str, &str); 3] = [
    ("classifier.0.", "pre_logits.fc1."),
    ("classifier.3.", "pre_logits.fc2."),
    ("classifier.6.", "head.fc."),
];

/// Fill the variables of `map` from a safetensors file in torchvision or timm naming.
/// Every variable must be present (timm's convolutional classifier is reshaped), except
/// the last classifier layer when `skip_head`. Errors name the tensor at fault.
pub fn load_weights(
    map: &VarMap,
    path: &Path,
    skip_head: bool,
) -> std::result::Result<usize, String> {
    super::network::load_named(map, path, |name| skip_head && is_head(name), &TIMM_NAMES)
}
