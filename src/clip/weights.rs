//! Checking a weights file against the configuration before anything is built from it,
//! and converting PyTorch's `pytorch_model.bin` to safetensors.
//!
//! candle's loader reports a missing or misshapen tensor with a backtrace and converts
//! any dtype (integers included) to f32 without a word; here every tensor the model
//! reads is looked up in the file's header first, so a wrong file is one line naming
//! the file and the tensor.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::{MmapedSafetensors, SliceSafetensors};
use safetensors::Dtype;

use super::config::ClipConfig;
use super::ClipError;

/// The weights file clipscope loads.
pub const SAFETENSORS: &str = "model.safetensors";
/// PyTorch's weights file (older Hugging Face repositories), converted before loading.
pub const PYTORCH_BIN: &str = "pytorch_model.bin";

/// Check the safetensors file at `path` against `config`.
pub fn check_file(path: &Path, config: &ClipConfig) -> Result<(), ClipError> {
    // SAFETY: the file is mapped read-only and only its header is read here; clipscope
    // never writes to model files while reading them.
    let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| unreadable(path, &e))?;
    check_views(path, &header(st.tensors()), config)
}

/// Check safetensors bytes (named `origin` in errors) against `config`.
pub fn check_bytes(bytes: &[u8], origin: &Path, config: &ClipConfig) -> Result<(), ClipError> {
    let st = SliceSafetensors::new(bytes).map_err(|e| unreadable(origin, &e))?;
    check_views(origin, &header(st.tensors()), config)
}

type Header = HashMap<String, (Dtype, Vec<usize>)>;

fn header(views: Vec<(String, safetensors::tensor::TensorView<'_>)>) -> Header {
    views
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec())))
        .collect()
}

fn unreadable(path: &Path, e: &candle_core::Error) -> ClipError {
    ClipError::Weights {
        path: path.to_path_buf(),
        message: format!(
            "not a readable safetensors file ({}); it may be truncated or corrupt: fetch it again",
            candle_message(e)
        ),
    }
}

fn check_views(path: &Path, header: &Header, config: &ClipConfig) -> Result<(), ClipError> {
    let bad = |message: String| ClipError::Weights {
        path: path.to_path_buf(),
        message,
    };
    for (name, want) in super::train::weight_shapes(config) {
        let Some((dtype, shape)) = header.get(&name) else {
            return Err(bad(format!(
                "no tensor {name} (not a Hugging Face CLIPModel checkpoint, or one for \
                 another architecture than config.json describes)"
            )));
        };
        if !matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(bad(format!(
                "tensor {name} is {dtype:?}, not a floating-point type"
            )));
        }
        if *shape != want {
            return Err(bad(format!(
                "tensor {name} is {shape:?} where config.json needs {want:?}: \
                 config.json does not match these weights"
            )));
        }
    }
    Ok(())
}

/// A candle error's message on one line, without the backtrace, path or context
/// wrappers that candle adds (the caller names the file).
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::WithPath { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Convert a PyTorch state dict (`pytorch_model.bin`, the zip format of `torch.save`)
/// to a safetensors file at `dest`. candle's pickle reader only rebuilds tensors and
/// runs no code from the file; written through a temporary file and renamed.
pub fn convert_pytorch_bin(src: &Path, dest: &Path) -> Result<(), ClipError> {
    let bad = |e: candle_core::Error| ClipError::Weights {
        path: src.to_path_buf(),
        message: format!(
            "cannot read as a PyTorch state dict ({}); it may be truncated or corrupt",
            candle_message(&e)
        ),
    };
    let tensors: HashMap<String, candle_core::Tensor> = candle_core::pickle::read_all(src)
        .map_err(bad)?
        .into_iter()
        .collect();
    if tensors.is_empty() {
        return Err(ClipError::Weights {
            path: src.to_path_buf(),
            message: "holds no tensors".into(),
        });
    }
    let tmp = dest.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| ClipError::Weights {
        path: tmp.clone(),
        message: candle_message(&e),
    })?;
    std::fs::rename(&tmp, dest).map_err(|source| ClipError::Io {
        path: dest.to_path_buf(),
        source,
    })
}
