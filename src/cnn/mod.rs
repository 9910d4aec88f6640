//! The CNN baselines: ResNet18 and VGG16 in candle that train (batch norm in training
//! mode, max-pools with a gradient), their optimisers, training loop, checkpoints and
//! evaluation.

pub mod augment;
pub mod checkpoint;
pub mod conv;
mod direct;
pub mod eval;
pub mod layers;
pub mod network;
pub mod optim;
mod portable;
pub mod resnet;
pub mod rng;
pub mod train;
pub mod vgg;

pub use network::{Arch, Network};
pub use resnet::ResNet18;
pub use vgg::Vgg16;
