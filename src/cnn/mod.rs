//! The CNN baseline: ResNet18 in candle that trains (batch norm in training mode, a
//! max-pool with a gradient), its optimisers, training loop, checkpoints and evaluation.

pub mod augment;
pub mod checkpoint;
pub mod conv;
pub mod eval;
pub mod layers;
pub mod optim;
pub mod resnet;
pub mod rng;
pub mod train;

pub use resnet::ResNet18;
