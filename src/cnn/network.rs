//! The CNN architectures behind one interface: what training, evaluation and
//! checkpoints need from a model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::resnet::{self, ResNet18};
use super::vgg::{self, Vgg16};
use crate::clip::weights::candle_message;

/// An architecture by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// ResNet18 (11.7 M parameters, 512 pooled features).
    Resnet18,
    /// VGG16 (138 M parameters, 4096 features before the last layer).
    Vgg16,
}

impl Arch {
    /// Every architecture, for help texts and errors.
    pub const ALL: [Arch; 2] = [Arch::Resnet18, Arch::Vgg16];

    /// The name used on the command line, in checkpoints and in the registry.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Vgg16 => "vgg16",
        }
    }

    /// The architecture called `name`.
    pub fn from_name(name: &str) -> Option<Arch> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Width of the features the last layer reads.
    pub fn feature_dim(self) -> usize {
        match self {
            Arch::Resnet18 => resnet::FEATURES,
            Arch::Vgg16 => vgg::FEATURES,
        }
    }

    /// Whether a parameter belongs to the last layer (replaced for a new task, and the
    /// only one trained with a frozen backbone).
    pub fn is_head(self, name: &str) -> bool {
        match self {
            Arch::Resnet18 => resnet::is_head(name),
            Arch::Vgg16 => vgg::is_head(name),
        }
    }

    /// Image sizes the architecture accepts, or why not.
    pub fn check_image_size(self, size: u32) -> std::result::Result<(), String> {
        match self {
            Arch::Vgg16 if size < 32 => Err(format!(
                "--image-size {size}: vgg16 needs at least 32 (five 2x2 max-pools)"
            )),
            _ => Ok(()),
        }
    }

    /// Fill `map` from a safetensors file in torchvision (or timm) naming; see the
    /// architectures' `load_weights`.
    pub fn load_weights(
        self,
        map: &VarMap,
        path: &Path,
        skip_head: bool,
    ) -> std::result::Result<usize, String> {
        match self {
            Arch::Resnet18 => resnet::load_weights(map, path, skip_head),
            Arch::Vgg16 => vgg::load_weights(map, path, skip_head),
        }
    }
}

/// A model of one of the architectures.
#[derive(Debug)]
pub enum Network {
    /// ResNet18.
    Resnet18(ResNet18),
    /// VGG16.
    Vgg16(Vgg16),
}

impl Network {
    /// A new model with parameters in `map`, initialised from `seed`.
    pub fn new(
        arch: Arch,
        map: &VarMap,
        device: &Device,
        num_classes: usize,
        seed: u64,
    ) -> Result<Self> {
        Ok(match arch {
            Arch::Resnet18 => Network::Resnet18(ResNet18::new(map, device, num_classes, seed)?),
            Arch::Vgg16 => Network::Vgg16(Vgg16::new(map, device, num_classes, seed)?),
        })
    }

    /// Its architecture.
    pub fn arch(&self) -> Arch {
        match self {
            Network::Resnet18(_) => Arch::Resnet18,
            Network::Vgg16(_) => Arch::Vgg16,
        }
    }

    /// Set the training step (seeds VGG16's dropout; ResNet18 has none).
    pub fn begin_step(&self, step: u64) {
        if let Network::Vgg16(m) = self {
            m.begin_step(step);
        }
    }

    /// Features of normalised images `(N, 3, S, S)` that the last layer reads.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Network::Resnet18(m) => m.features(x, train),
            Network::Vgg16(m) => m.features(x, train),
        }
    }

    /// The last layer applied to features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        match self {
            Network::Resnet18(m) => m.head(features),
            Network::Vgg16(m) => m.head(features),
        }
    }

    /// Logits `(N, num_classes)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features(x, train)?)
    }
}

/// Fill the variables of `map` from a safetensors file, skipping those `skip` names.
/// Each variable is looked up by its own name with its exact shape, or else under an
/// alias (`aliases`: prefix in `map`, prefix in the file) with the same number of
/// elements, reshaped. Extra tensors in the file are ignored; errors name the tensor.
pub(super) fn load_named(
    map: &VarMap,
    path: &Path,
    skip: impl Fn(&str) -> bool,
    aliases: &[(&str, &str)],
) -> std::result::Result<usize, String> {
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| {
            format!(
                "{}: not a readable safetensors file ({}); it may be truncated or corrupt: \
                 fetch it again",
                path.display(),
                candle_message(&e)
            )
        })?;
    let vars = map
        .data()
        .lock()
        .map_err(|_| "parameter store poisoned".to_string())?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut loaded = 0;
    for name in names.into_iter().filter(|n| !skip(n)) {
        let var: &Var = &vars[name];
        let aliased = || {
            aliases.iter().find_map(|(ours, theirs)| {
                let rest = name.strip_prefix(ours)?;
                tensors
                    .get(&format!("{theirs}{rest}"))
                    .filter(|t| t.elem_count() == var.elem_count())
            })
        };
        let t = match tensors.get(name.as_str()) {
            Some(t) if t.dims() == var.dims() => t,
            Some(t) => {
                return Err(format!(
                    "{}: tensor {name} has shape {:?}, expected {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                ))
            }
            None => {
                aliased().ok_or_else(|| format!("{}: missing tensor {name}", path.display()))?
            }
        };
        if !t.dtype().is_float() {
            return Err(format!(
                "{}: tensor {name} is {:?}, not a floating-point type",
                path.display(),
                t.dtype()
            ));
        }
        let t = t
            .to_dtype(DType::F32)
            .and_then(|t| t.reshape(var.dims()))
            .and_then(|t| t.to_device(var.device()))
            .map_err(|e| format!("{}: {name}: {}", path.display(), candle_message(&e)))?;
        var.set(&t)
            .map_err(|e| format!("{name}: {}", candle_message(&e)))?;
        loaded += 1;
    }
    Ok(loaded)
}
