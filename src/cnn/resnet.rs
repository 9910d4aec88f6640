//! ResNet18 (He et al. 2016) with torchvision's layout and parameter names, trainable.
//!
//! Names: `conv1`, `bn1`, `layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}`,
//! `layer{2..4}.0.downsample.{0,1}`, `fc`. Weights in torchvision or timm naming load
//! directly (timm's `resnet18.tv_in1k` is torchvision's IMAGENET1K_V1 checkpoint).

use std::path::Path;

use candle_core::{Device, Result, Tensor, D};
use candle_nn::VarMap;

use super::conv::swap_batch_and_channels;
use super::layers::{add_relu, linear, max_pool_3x3_s2, BatchNorm2d, Conv, Params};

/// Channels of the four stages.
const WIDTHS: [usize; 4] = [64, 128, 256, 512];
/// Width of the pooled features that the classifier reads.
pub const FEATURES: usize = 512;

#[derive(Clone, Debug)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    downsample: Option<(Conv, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(p: &Params, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            let d = p.pp("downsample");
            Some((
                Conv::new(&d, "0", cin, cout, 1, stride, 0)?,
                BatchNorm2d::new(&d, "1", cout)?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(p, "conv1", cin, cout, 3, stride, 1)?,
            bn1: BatchNorm2d::new(p, "bn1", cout)?,
            conv2: Conv::new(p, "conv2", cout, cout, 3, 1, 1)?,
            bn2: BatchNorm2d::new(p, "bn2", cout)?,
            downsample,
        })
    }

    /// Channel-major `(C, N, H, W)` in and out.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self
            .bn1
            .forward_t(&self.conv1.forward(x, train)?, train, true)?;
        let y = self
            .bn2
            .forward_t(&self.conv2.forward(&y, train)?, train, false)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x, train)?, train, false)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}

/// ResNet18 with a classifier for `num_classes`.
#[derive(Clone, Debug)]
pub struct ResNet18 {
    conv1: Conv,
    bn1: BatchNorm2d,
    stages: Vec<Vec<BasicBlock>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
    num_classes: usize,
}

impl ResNet18 {
    /// A new model whose parameters live in `map`, initialised as torchvision does
    /// (Kaiming normal convolutions, BN weight 1 and bias 0, uniform classifier) from `seed`.
    pub fn new(map: &VarMap, device: &Device, num_classes: usize, seed: u64) -> Result<Self> {
        let p = Params::new(map, device, seed);
        let mut stages = Vec::new();
        let mut cin = 64;
        for (i, &w) in WIDTHS.iter().enumerate() {
            let s = p.pp(&format!("layer{}", i + 1));
            let stride = if i == 0 { 1 } else { 2 };
            stages.push(vec![
                BasicBlock::new(&s.pp("0"), cin, w, stride)?,
                BasicBlock::new(&s.pp("1"), w, w, 1)?,
            ]);
            cin = w;
        }
        let fc = p.pp("fc");
        Ok(Self {
            conv1: Conv::new(&p, "conv1", 3, 64, 7, 2, 3)?,
            bn1: BatchNorm2d::new(&p, "bn1", 64)?,
            stages,
            fc_weight: fc
                .linear_uniform(&[num_classes, FEATURES], "weight", FEATURES)?
                .as_tensor()
                .clone(),
            fc_bias: fc
                .linear_uniform(&[num_classes], "bias", FEATURES)?
                .as_tensor()
                .clone(),
            num_classes,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Pooled features `(N, 512)` of normalised images `(N, 3, S, S)`.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Inside, activations are channel-major (C, N, H, W): see `conv`.
        let x = swap_batch_and_channels(x)?;
        let mut x = self
            .bn1
            .forward_t(&self.conv1.forward(&x, train)?, train, true)?;
        x = max_pool_3x3_s2(&x)?;
        for stage in &self.stages {
            for block in stage {
                x = block.forward_t(&x, train)?;
            }
        }
        let (c, n, h, w) = x.dims4()?;
        x.reshape((c, n, h * w))?.mean(D::Minus1)?.t()?.contiguous()
    }

    /// The classifier applied to pooled features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        linear(features, &self.fc_weight, &self.fc_bias)
    }

    /// Logits `(N, num_classes)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features(x, train)?)
    }
}

/// Whether a parameter belongs to the classifier (replaced for a new task).
pub fn is_head(name: &str) -> bool {
    name.starts_with("fc.")
}

/// Fill the variables of `map` from a safetensors file in torchvision/timm naming.
/// Every variable must be present with its exact shape, except the classifier when
/// `skip_head` (ImageNet's 1000 classes are replaced). `num_batches_tracked` and other
/// extra tensors are ignored. Errors name the tensor at fault.
pub fn load_weights(
    map: &VarMap,
    path: &Path,
    skip_head: bool,
) -> std::result::Result<usize, String> {
    super::network::load_named(map, path, |name| skip_head && is_head(name), &[])
}
