//! The CLIP engine: configuration, model, tokeniser, preprocessing and zero-shot scoring.

// Only x86_64 has the tiles; elsewhere the kernel exists for its tests alone.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod amx;
pub mod cache;
pub mod config;
pub mod demo;
pub mod dense;
mod engine;
pub mod finetune;
pub mod half;
pub mod model;
pub mod ops;
pub mod panels;
pub mod pipeline;
pub mod prepared;
pub mod preprocess;
pub mod resample;
pub mod templates;
pub mod tokenizer;
pub mod train;
pub mod weights;
pub mod zeroshot;

use std::path::PathBuf;

pub use cache::EmbeddingCache;
pub use engine::{parse_device, Clip, Embedding, ModelFiles, WeightsSource, IMAGE_BATCH};
pub use model::Precision;
pub use pipeline::{PipelineOptions, PipelineStats};
pub use preprocess::PreprocessConfig;
pub use zeroshot::{LabelSet, Prediction, PromptStyle};

/// What can go wrong in the CLIP engine. Every variant names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A model file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A `config.json` is not a CLIP configuration clipscope can build.
    #[error("model config: {0}")]
    Config(String),
    /// A model folder does not exist or is not a folder.
    #[error(
        "{dir}: {why}; a model folder holds config.json, model.safetensors (or \
         pytorch_model.bin) and tokenizer.json"
    )]
    NotAModelDir {
        /// The folder given.
        dir: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A required file is missing from a model folder.
    #[error("{dir}: no {file} in the model folder")]
    MissingFile {
        /// The model folder.
        dir: PathBuf,
        /// The file that should be there.
        file: &'static str,
    },
    /// The weights do not fit the architecture (a tensor is missing or misshapen).
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Which tensor, and what is wrong with it.
        message: String,
    },
    /// A `tokenizer.json` could not be loaded or is not CLIP's.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A prompt could not be tokenised.
    #[error("cannot tokenize {text:?}: {message}")]
    Tokenize {
        /// The prompt.
        text: String,
        /// What the tokeniser said.
        message: String,
    },
    /// A prompt template is unusable.
    #[error("template {0:?} has no {{}} for the label")]
    Template(String),
    /// An ensemble name is unknown.
    #[error("unknown ensemble {0:?} (known: imagenet80, imagenet7)")]
    Ensemble(String),
    /// A device name is unknown or the device is unavailable.
    #[error("device {0}")]
    Device(String),
    /// No labels were given.
    #[error("no labels given")]
    NoLabels,
    /// Pictures to measure on are unusable (a data folder's, named in the message).
    #[error("{0}")]
    Data(String),
    /// A tensor computation failed.
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}
